//! libFuzzer target `bloom`: see `missive_fuzz::bloom`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| missive_fuzz::bloom(data));
