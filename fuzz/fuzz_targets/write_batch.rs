//! libFuzzer target `write_batch`: see `missive_fuzz::write_batch`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| missive_fuzz::write_batch(data));
