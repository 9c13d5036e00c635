//! The JSON mapping: any record value, framed as a data frame, gives either
//! a decode error or valid JSON text with the frame's cursor (unknown enum
//! values included), never a panic.
#![no_main]

use kafka_ws_bridge::{envelope_to_json, DecodeLimits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut frame = vec![1u8];
    frame.extend_from_slice(&3i32.to_be_bytes());
    frame.extend_from_slice(&42i64.to_be_bytes());
    frame.extend_from_slice(&(-1i64).to_be_bytes());
    frame.extend_from_slice(data);
    if let Ok(text) = envelope_to_json(&frame, &DecodeLimits::default()) {
        let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        assert!(v["type"] == "message" || v["type"] == "error", "{text}");
        if v["type"] == "message" {
            assert_eq!(v["partition"], 3);
            assert_eq!(v["offset"], 42);
        }
    }
});
