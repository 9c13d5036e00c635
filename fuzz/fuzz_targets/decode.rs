//! Record decode: any Kafka record value gives a decoded message or a
//! classified error, never a panic, within the default limits; and a
//! replay's look at it on the wire agrees with its decoded filter, and
//! ingest's check on the wire vouches only for what the decoder accepts.
#![no_main]

use kafka_ws_bridge::{decode, DecodeLimits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = DecodeLimits::default();
    match decode(Some(data), &limits) {
        Ok(d) => {
            // What every later stage reads of a decoded record.
            let _ = (d.kind(), d.thread_id(), d.tenant_id(), d.timestamp_us());
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    kafka_ws_bridge::fuzzing::replay_filter(data);
    kafka_ws_bridge::fuzzing::wire_agrees(data);
});
