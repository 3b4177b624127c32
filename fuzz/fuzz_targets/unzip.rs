//! Arbitrary bytes through `codec::unzip` (what qdb-unzip and the daemon's
//! decode stage run) in every mode, into an output capped at 4 MiB. The
//! checks live in testkit (`testkit::fuzz::fuzz_unzip`) so
//! that `tests/unzip_fuzz.rs` replays the seeds on stable Rust.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    testkit::fuzz::fuzz_unzip(data);
});
