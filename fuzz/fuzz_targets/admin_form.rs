//! Fuzz target: the admin page's URL-encoded forms, cookies and multipart uploads (see fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| facegate_fuzz::admin_form(data));
