//! What a client controls before the upgrade: the `/ws` query string
//! (format, filters, resume cursor) is accepted or refused with a reason,
//! and any `X-Forwarded-For` value gives an address; never a panic.
#![no_main]

use kafka_ws_bridge::fuzzing;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|b| *b == 0).unwrap_or(data.len());
    let (query, forwarded) = data.split_at(split);
    if let Ok(q) = std::str::from_utf8(query) {
        if let Err(reason) = fuzzing::ws_query(q) {
            assert!(!reason.is_empty());
        }
    }
    let _ = fuzzing::forwarded_for(forwarded.get(1..).unwrap_or_default());
});
