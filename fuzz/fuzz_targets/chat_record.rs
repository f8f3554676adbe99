//! libFuzzer target `chat_record`: see `missive_fuzz::chat_record`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| missive_fuzz::chat_record(data));
