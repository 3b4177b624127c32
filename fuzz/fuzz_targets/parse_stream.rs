//! Arbitrary bytes through the WAL stream reader alone (no apply), compared
//! with the independent parser in `testkit::stream::StreamIndex`: both must see the
//! same CRC-valid records, in the same order, up to the same point.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    testkit::fuzz::fuzz_parse_stream(data);
});
