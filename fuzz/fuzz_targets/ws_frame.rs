//! libFuzzer target `ws_frame`: see `missive_fuzz::ws_frame`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| missive_fuzz::ws_frame(data));
