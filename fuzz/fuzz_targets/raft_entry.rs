//! libFuzzer target `raft_entry`: see `missive_fuzz::raft_entry`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| missive_fuzz::raft_entry(data));
