//! Arbitrary bytes as one WAL stream, applied by `Follower::apply` to a
//! follower on the simulated file system. The checks live in testkit
//! (`testkit::fuzz::fuzz_apply_stream`) so that `tests/hostile.rs`
//! runs the same code over the seed corpus on stable Rust.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    testkit::fuzz::fuzz_apply_stream(data);
});
