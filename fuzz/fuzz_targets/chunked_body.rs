//! Fuzz target: chunked request bodies, whole, in two pieces and byte by byte (see fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| facegate_fuzz::chunked_body(data));
