#![no_main]
use libfuzzer_sys::fuzz_target;

// The IDX reader must return Ok or a clean error for any bytes, never panic or over-allocate.
fuzz_target!(|data: &[u8]| {
    let _ = distillery::data::idx::parse_idx(data, "fuzz.idx");
});
