//! Any bearer token (static or signed) is accepted with its claims, or
//! refused with a reason, and its claims narrow a filter or refuse it;
//! never a panic.
#![no_main]

use kafka_ws_bridge::fuzzing;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (token, tenant) = match text.split_once('\n') {
        Some((t, q)) => (t, Some(q)),
        None => (text, None),
    };
    if let Err(reason) = fuzzing::token(token, tenant) {
        assert!(!reason.is_empty());
    }
});
