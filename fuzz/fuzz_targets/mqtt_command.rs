//! Fuzz target: MQTT command messages, as received and signed with the right secret (see fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| facegate_fuzz::mqtt_command(data));
