//! Fuzz target: request bodies and image bytes through parse_frame_post, decode_base64, read_header,
//! plan_decode and decode_image (see fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| facegate_fuzz::frame_body(data));
