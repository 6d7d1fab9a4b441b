//! Fuzz target: multipart/form-data frame posts (see fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| facegate_fuzz::multipart(data));
