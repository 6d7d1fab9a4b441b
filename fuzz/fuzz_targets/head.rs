//! Fuzz target: request heads through the front's parser and what the front derives from them (see fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| facegate_fuzz::head(data));
