//! Fuzz target: gallery exports, as received and signed with the building key (see fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| facegate_fuzz::gallery_bundle(data));
