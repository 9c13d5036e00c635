//! Outgoing WebSocket frames: data frames (one Kafka record each, with its
//! cursor) in the binary envelope or JSON, and JSON control frames.
//!
//! A [`Frame`] is built once per record and shared (`Arc`) by every client.
//! The binary envelope is built eagerly (it is a single copy of the record);
//! the JSON text is encoded on first use by a JSON client, once, and the
//! bytes are shared with every other JSON client. A frame keeps the record's
//! [`Summary`], never its decoded message, so what it holds in memory is
//! [`Frame::held_bytes`], whatever the record decompresses or decodes to.
//!
//! Binary envelope v1, big-endian (see docs/PROTOCOL.md):
//! `u8 version=1 | i32 partition | i64 offset | i64 kafka_timestamp_ms (-1: none) | record value`.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

use axum::extract::ws::Utf8Bytes;
use bytes::{BufMut, Bytes, BytesMut};
use serde::ser::{Serialize, Serializer};

use crate::proto::dash_stream_message::Message;
use crate::record::decode::{DecodeError, DecodeLimits, Decoded, MessageKind};
use crate::record::summary::Summary;

pub(crate) const ENVELOPE_VERSION: u8 = 1;
pub(crate) const ENVELOPE_HEADER_LEN: usize = 21;

/// Where a record came from: its Kafka partition and offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub partition: i32,
    pub offset: i64,
}

/// One record, ready for every client.
pub(crate) struct Frame {
    pub(crate) cursor: Cursor,
    pub(crate) kafka_timestamp_ms: Option<i64>,
    pub(crate) summary: Summary,
    pub(crate) trace_id: Option<Box<str>>,
    binary: Bytes,
    json: OnceLock<Utf8Bytes>,
    /// Where the JSON text is counted once built (the log partition holding the frame).
    meter: OnceLock<Arc<dyn JsonMeter>>,
    held: AtomicU8,
    latency_recorded: AtomicBool,
    /// Released after a halt: delivered below offsets a client already has.
    late: AtomicBool,
}

/// Counts the JSON text of the frames a log partition holds.
pub(crate) trait JsonMeter: Send + Sync {
    /// `n` more bytes; `trim`: the holder may evict to stay within its bound
    /// (false while the holder's own lock is taken).
    fn add(&self, n: usize, trim: bool);
    fn sub(&self, n: usize);
}

/// `Frame::held`: not in the log / in the log / in the log with its JSON
/// text counted / evicted from the log.
const OUTSIDE: u8 = 0;
const IN_LOG: u8 = 1;
const IN_LOG_JSON_COUNTED: u8 = 2;
const EVICTED: u8 = 3;

/// What a frame costs besides its heap parts (the struct and its `Arc`).
const FRAME_OVERHEAD: usize = std::mem::size_of::<Frame>() + 16;

impl Frame {
    pub(crate) fn new(
        cursor: Cursor,
        kafka_timestamp_ms: Option<i64>,
        value: &[u8],
        summary: Summary,
        trace_id: Option<Box<str>>,
    ) -> Self {
        let mut buf = BytesMut::with_capacity(ENVELOPE_HEADER_LEN + value.len());
        Self::written_into(
            &mut buf,
            cursor,
            kafka_timestamp_ms,
            value,
            summary,
            trace_id,
        )
    }

    /// Like [`Frame::new`], the envelope written at the end of `buf` (empty:
    /// every earlier envelope taken) and taken from it: frames built from
    /// one buffer share its allocation, freed with the last of them.
    pub(crate) fn written_into(
        buf: &mut BytesMut,
        cursor: Cursor,
        kafka_timestamp_ms: Option<i64>,
        value: &[u8],
        summary: Summary,
        trace_id: Option<Box<str>>,
    ) -> Self {
        debug_assert!(buf.is_empty());
        buf.put_u8(ENVELOPE_VERSION);
        buf.put_i32(cursor.partition);
        buf.put_i64(cursor.offset);
        buf.put_i64(kafka_timestamp_ms.unwrap_or(-1));
        buf.put_slice(value);
        Self {
            cursor,
            kafka_timestamp_ms,
            summary,
            trace_id,
            binary: buf.split().freeze(),
            json: OnceLock::new(),
            meter: OnceLock::new(),
            held: AtomicU8::new(OUTSIDE),
            latency_recorded: AtomicBool::new(false),
            late: AtomicBool::new(false),
        }
    }

    pub(crate) fn kind(&self) -> MessageKind {
        self.summary.kind
    }

    /// The binary envelope (shared bytes, no copy).
    pub(crate) fn binary(&self) -> Bytes {
        self.binary.clone()
    }

    /// What the frame holds besides its JSON text (fixed once built): the
    /// envelope, the summary and the struct itself.
    pub(crate) fn base_bytes(&self) -> usize {
        FRAME_OVERHEAD
            + self.binary.len()
            + self.summary.heap_bytes()
            + self.trace_id.as_ref().map_or(0, |t| t.len())
    }

    #[cfg(test)]
    /// Length of the JSON text, if built.
    pub(crate) fn json_len(&self) -> Option<usize> {
        self.json.get().map(|j| j.len())
    }

    #[cfg(test)]
    /// The original Kafka record value.
    pub(crate) fn record_value(&self) -> &[u8] {
        &self.binary[ENVELOPE_HEADER_LEN..]
    }

    /// The JSON text, encoded on first call (decoding the record again:
    /// a frame keeps its bytes, not the decoded message) and shared
    /// afterwards. Once built, its size counts against the log partition
    /// holding the frame.
    pub(crate) fn json(&self) -> Utf8Bytes {
        if let Some(j) = self.json.get() {
            return j.clone();
        }
        let mut built = false;
        let j = self
            .json
            .get_or_init(|| {
                built = true;
                let value = &self.binary[ENVELOPE_HEADER_LEN..];
                match crate::record::decode::decode(Some(value), &DecodeLimits::validated()) {
                    Ok(d) => encode_json(
                        self.cursor,
                        self.kafka_timestamp_ms,
                        &d,
                        self.trace_id.as_deref(),
                    ),
                    Err(e) => control::error("encode_failed", &e.to_string()),
                }
                .into()
            })
            .clone();
        if built {
            self.count_json(j.len(), true);
        }
        j
    }

    /// Counts `n` JSON bytes against the log partition holding the frame,
    /// if it is still there (`trim`: the partition may evict to stay within
    /// its bound).
    fn count_json(&self, n: usize, trim: bool) {
        let Some(meter) = self.meter.get() else {
            return;
        };
        if self
            .held
            .compare_exchange(
                IN_LOG,
                IN_LOG_JSON_COUNTED,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
        {
            // If the frame leaves the log meanwhile, `left_log` takes the
            // bytes back, before or after this add: the meter is signed.
            meter.add(n, trim);
        }
    }

    /// The log took the frame: its JSON text, when built, counts on `meter`.
    /// Called under the log partition's lock (so never trims).
    pub(crate) fn entered_log(&self, meter: &Arc<dyn JsonMeter>) {
        if self.meter.set(meter.clone()).is_ok() {
            self.held.store(IN_LOG, Ordering::Release);
            if let Some(j) = self.json.get() {
                self.count_json(j.len(), false);
            }
        }
    }

    /// The log let the frame go: takes its JSON bytes back off the meter.
    pub(crate) fn left_log(&self) {
        if self.held.swap(EVICTED, Ordering::AcqRel) == IN_LOG_JSON_COUNTED {
            if let (Some(m), Some(j)) = (self.meter.get(), self.json.get()) {
                m.sub(j.len());
            }
        }
    }

    pub(crate) fn mark_late(&self) {
        self.late.store(true, Ordering::Relaxed);
    }

    /// A record released by an operator after a halt (out of offset order).
    pub(crate) fn is_late(&self) -> bool {
        self.late.load(Ordering::Relaxed)
    }

    /// True exactly once per frame: the caller records end-to-end latency.
    pub(crate) fn claim_latency_sample(&self) -> bool {
        !self.latency_recorded.swap(true, Ordering::Relaxed)
    }
}

/// Serializes the body message itself (proto3 JSON mapping via pbjson).
struct Body<'a>(&'a Message);

impl Serialize for Body<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Message::Event(m) => m.serialize(s),
            Message::StateDiff(m) => m.serialize(s),
            Message::TokenChunk(m) => m.serialize(s),
            Message::ToolExecution(m) => m.serialize(s),
            Message::Checkpoint(m) => m.serialize(s),
            Message::Metrics(m) => m.serialize(s),
            Message::Error(m) => m.serialize(s),
            Message::EventBatch(m) => m.serialize(s),
            Message::ExecutionTrace(m) => m.serialize(s),
        }
    }
}

#[derive(serde::Serialize)]
struct JsonData<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    partition: i32,
    offset: i64,
    timestamp_ms: Option<i64>,
    thread_id: &'a str,
    tenant_id: &'a str,
    sequence: u64,
    message_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<&'a str>,
    data: Body<'a>,
}

/// The JSON data frame for one record.
pub(crate) fn encode_json(
    cursor: Cursor,
    kafka_timestamp_ms: Option<i64>,
    d: &Decoded,
    trace_id: Option<&str>,
) -> String {
    let frame = |body| JsonData {
        ty: "message",
        partition: cursor.partition,
        offset: cursor.offset,
        timestamp_ms: kafka_timestamp_ms,
        thread_id: d.thread_id(),
        tenant_id: d.tenant_id(),
        sequence: d.sequence(),
        message_type: d.kind().as_str(),
        trace_id,
        data: Body(body),
    };
    match serde_json::to_string(&frame(&d.body)) {
        Ok(s) => s,
        // The proto3 JSON mapping has no name for an enum value this build
        // does not know (a newer producer): show it as UNSPECIFIED (0) here;
        // the binary format still carries the original value.
        Err(_) => {
            let mut body = d.body.clone();
            crate::record::decode::clear_unknown_enums(&mut body);
            serde_json::to_string(&frame(&body))
                .unwrap_or_else(|e| control::error("encode_failed", &e.to_string()))
        }
    }
}

/// A parsed binary envelope (used by `tail` and tests).
#[derive(Debug, PartialEq, Eq)]
pub struct Envelope<'a> {
    pub cursor: Cursor,
    pub kafka_timestamp_ms: Option<i64>,
    pub value: &'a [u8],
}

#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("binary frame shorter than the {ENVELOPE_HEADER_LEN}-byte envelope header")]
    Short,
    #[error("unsupported envelope version {0}")]
    Version(u8),
    #[error("record value: {0}")]
    Decode(#[from] DecodeError),
}

pub fn parse_envelope(b: &[u8]) -> Result<Envelope<'_>, EnvelopeError> {
    if b.len() < ENVELOPE_HEADER_LEN {
        return Err(EnvelopeError::Short);
    }
    if b[0] != ENVELOPE_VERSION {
        return Err(EnvelopeError::Version(b[0]));
    }
    let be_i64 = |r: std::ops::Range<usize>| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[r]);
        i64::from_be_bytes(a)
    };
    let mut p = [0u8; 4];
    p.copy_from_slice(&b[1..5]);
    let ts = be_i64(13..21);
    Ok(Envelope {
        cursor: Cursor {
            partition: i32::from_be_bytes(p),
            offset: be_i64(5..13),
        },
        kafka_timestamp_ms: (ts >= 0).then_some(ts),
        value: &b[ENVELOPE_HEADER_LEN..],
    })
}

/// Turns a binary data frame into the JSON data frame a JSON client would get.
pub fn envelope_to_json(b: &[u8], limits: &DecodeLimits) -> Result<String, EnvelopeError> {
    let env = parse_envelope(b)?;
    let decoded = crate::record::decode::decode(Some(env.value), limits)?;
    Ok(encode_json(
        env.cursor,
        env.kafka_timestamp_ms,
        &decoded,
        None,
    ))
}

/// JSON control frames (text messages in both formats).
pub(crate) mod control {
    use serde_json::json;

    pub(crate) fn hello(
        version: &str,
        topic: &str,
        namespace: &str,
        format: &str,
        filters: serde_json::Value,
        notices: &str,
    ) -> String {
        json!({
            "type": "hello",
            "server": "kafka-ws-bridge",
            "version": version,
            "protocol": 1,
            "topic": topic,
            "resume_namespace": namespace,
            "format": format,
            "filters": filters,
            "notices": notices,
        })
        .to_string()
    }

    /// A thread notice with the notice cursor a client keeps once it has it
    /// (and, for `thread_resumed`, the records that follow it).
    pub(crate) fn with_notices(text: &str, cursor: &str) -> String {
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(mut v) if v.is_object() => {
                v["notices"] = cursor.into();
                v.to_string()
            }
            _ => text.to_string(),
        }
    }

    pub(crate) fn error(code: &str, message: &str) -> String {
        json!({"type": "error", "code": code, "message": message}).to_string()
    }

    pub(crate) fn lagged(dropped: u64) -> String {
        json!({"type": "lagged", "dropped": dropped}).to_string()
    }

    pub(crate) fn thread_halted(thread_id: &str, missing: u64, sequence: u64) -> String {
        json!({"type": "thread_halted", "thread_id": thread_id, "missing": missing, "sequence": sequence}).to_string()
    }

    pub(crate) fn thread_resumed(thread_id: &str, released: usize) -> String {
        json!({"type": "thread_resumed", "thread_id": thread_id, "released": released}).to_string()
    }

    pub(crate) fn gap(partition: i32, from: i64, to: i64, reason: &str) -> String {
        json!({"type": "gap", "partition": partition, "from": from, "to": to, "reason": reason})
            .to_string()
    }

    /// The partition's offsets restarted (topic recreated, broker data lost):
    /// what the client holds for it belongs to another history; records
    /// follow from `first` on.
    pub(crate) fn offsets_reset(partition: i32, first: i64) -> String {
        json!({"type": "offsets_reset", "partition": partition, "first_offset": first}).to_string()
    }

    /// A resume waits for a replay slot (`REPLAY_MAX_CONCURRENT` replays run at once).
    pub(crate) fn replay_queued(waiting: usize, max_concurrent: usize) -> String {
        json!({"type": "replay_queued", "waiting": waiting, "max_concurrent": max_concurrent})
            .to_string()
    }

    /// A replay waits for a Kafka reader (`REPLAY_KAFKA_MAX_CONCURRENT` read at once).
    pub(crate) fn kafka_queued(max_concurrent: usize, waited_ms: u64, limit_ms: u64) -> String {
        json!({"type": "replay_queued", "tier": "kafka", "max_concurrent": max_concurrent, "waited_ms": waited_ms, "limit_ms": limit_ms})
            .to_string()
    }

    pub(crate) fn replay_complete(
        replayed: u64,
        recovered: bool,
        reason: Option<&str>,
        gaps: u64,
        duration_ms: u64,
        notices: &str,
    ) -> String {
        let mut v = json!({"type": "replay_complete", "replayed": replayed, "recovered": recovered, "gaps": gaps, "duration_ms": duration_ms, "notices": notices});
        if let Some(r) = reason {
            v["reason"] = r.into();
        }
        v.to_string()
    }

    pub(crate) fn pong() -> String {
        json!({"type": "pong"}).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{DashStreamMessage, Event, Header};
    use crate::record::decode::{decode, encode_record};

    fn record() -> Vec<u8> {
        encode_record(
            &DashStreamMessage {
                message: Some(Message::Event(Event {
                    header: Some(Header {
                        thread_id: "th".into(),
                        sequence: 3,
                        tenant_id: "acme".into(),
                        ..Default::default()
                    }),
                    node_id: "planner".into(),
                    ..Default::default()
                })),
            },
            None,
        )
    }

    #[test]
    fn envelope_round_trips_cursor_timestamp_and_bytes() {
        let v = record();
        let d = decode(Some(&v), &DecodeLimits::default()).unwrap();
        let f = Frame::new(
            Cursor {
                partition: 2,
                offset: 1 << 40,
            },
            Some(1234),
            &v,
            Summary::of(&d),
            None,
        );
        let b = f.binary();
        let env = parse_envelope(&b).unwrap();
        assert_eq!(
            env.cursor,
            Cursor {
                partition: 2,
                offset: 1 << 40
            }
        );
        assert_eq!(env.kafka_timestamp_ms, Some(1234));
        assert_eq!(env.value, &v[..]);
        assert_eq!(f.record_value(), &v[..]);
    }

    #[test]
    fn json_frame_carries_cursor_and_decoded_data() {
        let v = record();
        let d = decode(Some(&v), &DecodeLimits::default()).unwrap();
        let f = Frame::new(
            Cursor {
                partition: 1,
                offset: 42,
            },
            None,
            &v,
            Summary::of(&d),
            Some("abc".into()),
        );
        let j: serde_json::Value = serde_json::from_str(f.json().as_str()).unwrap();
        assert_eq!(j["type"], "message");
        assert_eq!(j["partition"], 1);
        assert_eq!(j["offset"], 42);
        assert_eq!(j["thread_id"], "th");
        assert_eq!(j["sequence"], 3);
        assert_eq!(j["message_type"], "event");
        assert_eq!(j["trace_id"], "abc");
        assert_eq!(j["data"]["nodeId"], "planner");
        // Same bytes on the second call: encoded once.
        assert_eq!(f.json().as_str().as_ptr(), f.json().as_str().as_ptr());
        // The binary path gives the same JSON as the server would have sent.
        let via_binary: serde_json::Value =
            serde_json::from_str(&envelope_to_json(&f.binary(), &DecodeLimits::default()).unwrap())
                .unwrap();
        assert_eq!(via_binary["data"], j["data"]);
    }

    #[test]
    fn unknown_enum_values_still_give_a_json_frame() {
        let m = DashStreamMessage {
            message: Some(Message::Event(Event {
                header: Some(Header {
                    thread_id: "th".into(),
                    sequence: 1,
                    r#type: 99,
                    ..Default::default()
                }),
                event_type: 12345,
                ..Default::default()
            })),
        };
        let v = encode_record(&m, None);
        let d = decode(Some(&v), &DecodeLimits::default()).unwrap();
        let j: serde_json::Value = serde_json::from_str(&encode_json(
            Cursor {
                partition: 0,
                offset: 1,
            },
            None,
            &d,
            None,
        ))
        .unwrap();
        assert_eq!(j["type"], "message", "{j}");
        assert_eq!(j["thread_id"], "th");
        assert_eq!(
            j["data"]["eventType"],
            serde_json::Value::Null,
            "unknown value shown as unspecified (default, omitted)"
        );
    }

    #[test]
    fn short_or_unknown_envelopes_are_errors() {
        assert!(matches!(
            parse_envelope(&[1, 2, 3]),
            Err(EnvelopeError::Short)
        ));
        assert!(matches!(
            parse_envelope(&[9; 30]),
            Err(EnvelopeError::Version(9))
        ));
    }

    #[test]
    fn latency_sample_is_claimed_once() {
        let v = record();
        let d = decode(Some(&v), &DecodeLimits::default()).unwrap();
        let f = Frame::new(
            Cursor {
                partition: 0,
                offset: 0,
            },
            None,
            &v,
            Summary::of(&d),
            None,
        );
        assert!(f.claim_latency_sample());
        assert!(!f.claim_latency_sample());
    }
}
