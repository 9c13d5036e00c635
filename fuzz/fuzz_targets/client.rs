//! What a client sends after the upgrade: any text gets a JSON `pong` or
//! `error` reply of bounded size, and any first message either is a valid
//! resume request or is refused with a reason; never a panic.
#![no_main]

use kafka_ws_bridge::fuzzing;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return; // the WebSocket layer refuses non-UTF-8 text with 1007
    };
    let reply = fuzzing::client_text(text);
    let v: serde_json::Value = serde_json::from_str(&reply).expect("the reply is JSON");
    assert!(v["type"] == "pong" || v["type"] == "error", "{reply}");
    assert!(reply.len() <= 512, "{reply}");
    if let Err(reason) = fuzzing::resume_message(text) {
        assert!(!reason.is_empty());
    }
});
