//! libFuzzer target `transport_frame`: see `missive_fuzz::transport_frame`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| missive_fuzz::transport_frame(data));
