//! libFuzzer target `log_segment`: see `missive_fuzz::log_segment`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| missive_fuzz::log_segment(data));
