//! Fuzz target: config file text through Config::parse and validate (see fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| facegate_fuzz::config(data));
