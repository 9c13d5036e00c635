//! Decode stage: turns a Kafka record value into a validated DashStream
//! message, or a classified [`DecodeError`].
//!
//! Framing (see docs/PROTOCOL.md and the DashStream v1 wire format):
//! `0x00` + protobuf, `0x01` + zstd(protobuf), or legacy unframed values (a
//! zstd frame by its magic number, else a bare protobuf). The size limit is
//! checked before anything is copied or decompressed, and decompression
//! stops at its own output limit, whatever size the frame declares.

use std::io::Read;

use prost::Message as _;

use crate::proto::dash_stream_message::Message;
use crate::proto::{DashStreamMessage, Event, Header};

/// Highest `schema_version` this bridge understands (0 is read as 1).
pub(crate) const SUPPORTED_SCHEMA_VERSION: u32 = 1;

const FRAME_PROTOBUF: u8 = 0x00;
const FRAME_ZSTD: u8 = 0x01;
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];
/// Largest zstd window accepted (2^24 = 16 MiB): bounds decoder memory.
const ZSTD_WINDOW_LOG_MAX: u32 = 24;

/// Longest thread or tenant id accepted from a record, in bytes (the same
/// bound `/ws` filters and `/admin` paths apply).
pub(crate) const MAX_ID_BYTES: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    pub(crate) max_record_bytes: usize,
    pub(crate) max_decompressed_bytes: usize,
    /// Most events one `event_batch` may carry (counted on the wire, before
    /// anything is decoded).
    pub(crate) max_batch_events: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_record_bytes: 1_048_576,
            max_decompressed_bytes: 4 * 1_048_576,
            max_batch_events: 10_000,
        }
    }
}

impl DecodeLimits {
    /// For bytes that already passed these checks once (a frame's own
    /// record, decoded again for its JSON text).
    pub(crate) const fn validated() -> Self {
        Self {
            max_record_bytes: usize::MAX,
            max_decompressed_bytes: 1 << 30,
            max_batch_events: usize::MAX,
        }
    }
}

/// How the record value was framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    Protobuf,
    Zstd,
    LegacyBare,
    LegacyZstd,
}

/// Why a record could not be used. `error_type()` is the label operators see.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record has no value")]
    Empty,
    #[error("record value is {size} bytes, over the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("zstd decompression failed: {0}")]
    Decompression(String),
    #[error("decompressed body exceeds the {limit}-byte limit")]
    DecompressedTooLarge { limit: usize },
    #[error("invalid protobuf: {0}")]
    InvalidProtobuf(String),
    #[error("message has no body (no oneof field set)")]
    MissingBody,
    #[error("event_batch carries {count} events, over the {limit}-event limit")]
    TooManyEvents { count: usize, limit: usize },
    #[error("{field} is {len} bytes, over the {limit}-byte limit")]
    IdTooLong {
        field: &'static str,
        len: usize,
        limit: usize,
    },
    #[error("schema_version {found} is newer than supported version {supported}{}", where_.map(|i| format!(" (event_batch event #{i})")).unwrap_or_default())]
    SchemaMismatch {
        found: u32,
        supported: u32,
        where_: Option<usize>,
    },
}

impl DecodeError {
    pub(crate) fn error_type(&self) -> &'static str {
        match self {
            DecodeError::Empty => "empty_payload",
            DecodeError::TooLarge { .. } => "payload_too_large",
            DecodeError::Decompression(_) => "decompression_failure",
            DecodeError::DecompressedTooLarge { .. } => "decompressed_too_large",
            DecodeError::InvalidProtobuf(_) => "invalid_protobuf",
            DecodeError::MissingBody => "missing_body",
            DecodeError::SchemaMismatch { .. } => "schema_mismatch",
            DecodeError::TooManyEvents { .. } => "batch_too_large",
            DecodeError::IdTooLong { .. } => "id_too_long",
        }
    }

    /// The pipeline stage that rejected the record (DLQ `stage`).
    pub(crate) fn stage(&self) -> &'static str {
        match self {
            DecodeError::Empty | DecodeError::InvalidProtobuf(_) | DecodeError::MissingBody => {
                "decode"
            }
            DecodeError::TooLarge { .. } => "oversize",
            DecodeError::Decompression(_) | DecodeError::DecompressedTooLarge { .. } => {
                "decompress"
            }
            DecodeError::SchemaMismatch { .. }
            | DecodeError::TooManyEvents { .. }
            | DecodeError::IdTooLong { .. } => "validate",
        }
    }
}

/// The kind of body a message carries, named as in filters and JSON frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageKind {
    Event,
    StateDiff,
    TokenChunk,
    ToolExecution,
    Checkpoint,
    Metrics,
    Error,
    EventBatch,
    ExecutionTrace,
}

impl MessageKind {
    pub(crate) const ALL: [MessageKind; 9] = [
        MessageKind::Event,
        MessageKind::StateDiff,
        MessageKind::TokenChunk,
        MessageKind::ToolExecution,
        MessageKind::Checkpoint,
        MessageKind::Metrics,
        MessageKind::Error,
        MessageKind::EventBatch,
        MessageKind::ExecutionTrace,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Event => "event",
            MessageKind::StateDiff => "state_diff",
            MessageKind::TokenChunk => "token_chunk",
            MessageKind::ToolExecution => "tool_execution",
            MessageKind::Checkpoint => "checkpoint",
            MessageKind::Metrics => "metrics",
            MessageKind::Error => "error",
            MessageKind::EventBatch => "event_batch",
            MessageKind::ExecutionTrace => "execution_trace",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Bit for compact kind sets (filters).
    pub(crate) fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// A decoded, schema-checked record body.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub(crate) body: Message,
    pub(crate) framing: Framing,
}

/// One (thread, sequence) pair to validate: the message itself, or each event of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SequenceUnit<'a> {
    pub(crate) thread_id: &'a str,
    /// The tenant the unit's header names (notices about its thread go to it).
    pub(crate) tenant_id: &'a str,
    pub(crate) sequence: u64,
}

impl Decoded {
    pub fn kind(&self) -> MessageKind {
        kind_of(&self.body)
    }

    pub(crate) fn header(&self) -> Option<&Header> {
        header_of(&self.body)
    }

    /// Inner events of an `event_batch`, empty for other kinds.
    pub(crate) fn batch_events(&self) -> &[Event] {
        match &self.body {
            Message::EventBatch(b) => &b.events,
            _ => &[],
        }
    }

    /// The thread this record belongs to: its header's thread, else the
    /// first batch event's, else empty.
    pub fn thread_id(&self) -> &str {
        if let Some(t) = self
            .header()
            .map(|h| h.thread_id.as_str())
            .filter(|t| !t.is_empty())
        {
            return t;
        }
        self.batch_events()
            .iter()
            .filter_map(|e| e.header.as_ref())
            .map(|h| h.thread_id.as_str())
            .find(|t| !t.is_empty())
            .unwrap_or("")
    }

    /// The record's tenant: its header's, else the first batch event's.
    pub fn tenant_id(&self) -> &str {
        if let Some(t) = self
            .header()
            .map(|h| h.tenant_id.as_str())
            .filter(|t| !t.is_empty())
        {
            return t;
        }
        self.batch_events()
            .iter()
            .filter_map(|e| e.header.as_ref())
            .map(|h| h.tenant_id.as_str())
            .find(|t| !t.is_empty())
            .unwrap_or("")
    }

    /// Producer timestamp (µs since the epoch), if the producer set one.
    pub fn timestamp_us(&self) -> Option<i64> {
        let ts = self.header().map(|h| h.timestamp_us).unwrap_or(0);
        if ts > 0 {
            return Some(ts);
        }
        self.batch_events()
            .iter()
            .filter_map(|e| e.header.as_ref())
            .map(|h| h.timestamp_us)
            .find(|t| *t > 0)
    }

    /// The record's own sequence (0 for a batch, whose events carry theirs).
    pub(crate) fn sequence(&self) -> u64 {
        self.header().map(|h| h.sequence).unwrap_or(0)
    }

    /// Every (thread, sequence) to validate. Unsequenced (0) entries are skipped.
    pub(crate) fn sequence_units(&self) -> impl Iterator<Item = SequenceUnit<'_>> {
        let own = self
            .header()
            .filter(|h| h.sequence != 0)
            .map(|h| SequenceUnit {
                thread_id: h.thread_id.as_str(),
                tenant_id: h.tenant_id.as_str(),
                sequence: h.sequence,
            });
        let inner = self.batch_events().iter().filter_map(|e| {
            e.header
                .as_ref()
                .filter(|h| h.sequence != 0)
                .map(|h| SequenceUnit {
                    thread_id: h.thread_id.as_str(),
                    tenant_id: h.tenant_id.as_str(),
                    sequence: h.sequence,
                })
        });
        own.into_iter().chain(inner)
    }

    #[cfg(test)]
    /// True if this record touches `thread` (its own thread or any batch event's).
    pub(crate) fn involves_thread(&self, thread: &str) -> bool {
        self.thread_id() == thread
            || self
                .batch_events()
                .iter()
                .any(|e| e.header.as_ref().is_some_and(|h| h.thread_id == thread))
    }
}

fn kind_of(m: &Message) -> MessageKind {
    match m {
        Message::Event(_) => MessageKind::Event,
        Message::StateDiff(_) => MessageKind::StateDiff,
        Message::TokenChunk(_) => MessageKind::TokenChunk,
        Message::ToolExecution(_) => MessageKind::ToolExecution,
        Message::Checkpoint(_) => MessageKind::Checkpoint,
        Message::Metrics(_) => MessageKind::Metrics,
        Message::Error(_) => MessageKind::Error,
        Message::EventBatch(_) => MessageKind::EventBatch,
        Message::ExecutionTrace(_) => MessageKind::ExecutionTrace,
    }
}

fn header_of(m: &Message) -> Option<&Header> {
    match m {
        Message::Event(x) => x.header.as_ref(),
        Message::StateDiff(x) => x.header.as_ref(),
        Message::TokenChunk(x) => x.header.as_ref(),
        Message::ToolExecution(x) => x.header.as_ref(),
        Message::Checkpoint(x) => x.header.as_ref(),
        Message::Metrics(x) => x.header.as_ref(),
        Message::Error(x) => x.header.as_ref(),
        Message::EventBatch(x) => x.header.as_ref(),
        Message::ExecutionTrace(x) => x.header.as_ref(),
    }
}

fn check_schema(h: Option<&Header>, where_: Option<usize>) -> Result<(), DecodeError> {
    let found = h.map(|h| h.schema_version).unwrap_or(0).max(1);
    if found > SUPPORTED_SCHEMA_VERSION {
        return Err(DecodeError::SchemaMismatch {
            found,
            supported: SUPPORTED_SCHEMA_VERSION,
            where_,
        });
    }
    Ok(())
}

fn decompress(body: &[u8], limit: usize) -> Result<Vec<u8>, DecodeError> {
    let mut decoder = zstd::stream::read::Decoder::with_buffer(body)
        .map_err(|e| DecodeError::Decompression(e.to_string()))?;
    decoder
        .window_log_max(ZSTD_WINDOW_LOG_MAX)
        .map_err(|e| DecodeError::Decompression(e.to_string()))?;
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
    // Read one byte past the limit to tell "exactly at the limit" from "over it".
    let read = decoder
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| DecodeError::Decompression(e.to_string()))?;
    if read > limit {
        return Err(DecodeError::DecompressedTooLarge { limit });
    }
    Ok(out)
}

/// Decodes and validates one record value. Never panics, whatever the input.
pub fn decode(value: Option<&[u8]>, limits: &DecodeLimits) -> Result<Decoded, DecodeError> {
    decode_inner(value, limits).map_err(|(e, _)| e)
}

type Failed = (DecodeError, Option<Box<Message>>);

fn decode_inner(value: Option<&[u8]>, limits: &DecodeLimits) -> Result<Decoded, Failed> {
    let no_body = |e: DecodeError| (e, None);
    decode_body(value, limits).map_err(no_body)?.check()
}

/// A parsed body still to be checked.
struct Parsed {
    body: Message,
    framing: Framing,
}

impl Parsed {
    fn check(self) -> Result<Decoded, Failed> {
        let body = self.body;
        let checked = check_header(header_of(&body), None).and_then(|()| {
            if let Message::EventBatch(batch) = &body {
                for (i, e) in batch.events.iter().enumerate() {
                    check_header(e.header.as_ref(), Some(i))?;
                }
            }
            Ok(())
        });
        match checked {
            Ok(()) => Ok(Decoded {
                body,
                framing: self.framing,
            }),
            Err(e) => Err((e, Some(Box::new(body)))),
        }
    }
}

fn decode_body(value: Option<&[u8]>, limits: &DecodeLimits) -> Result<Parsed, DecodeError> {
    unframe(value, limits)?.parse(limits)
}

/// A record value out of its framing (decompressed within the limits), not
/// decoded yet: its body can be looked at on the wire first (`record::scan`).
pub(crate) struct Unframed<'a> {
    framing: Framing,
    body: std::borrow::Cow<'a, [u8]>,
}

/// Checks the size and framing of a record value and decompresses it.
pub(crate) fn unframe<'a>(
    value: Option<&'a [u8]>,
    limits: &DecodeLimits,
) -> Result<Unframed<'a>, DecodeError> {
    use std::borrow::Cow;
    let value = value.filter(|v| !v.is_empty()).ok_or(DecodeError::Empty)?;
    if value.len() > limits.max_record_bytes {
        return Err(DecodeError::TooLarge {
            size: value.len(),
            limit: limits.max_record_bytes,
        });
    }
    let (framing, body) = match value[0] {
        FRAME_PROTOBUF => (Framing::Protobuf, Cow::Borrowed(&value[1..])),
        FRAME_ZSTD => (
            Framing::Zstd,
            Cow::Owned(decompress(&value[1..], limits.max_decompressed_bytes)?),
        ),
        _ if value.starts_with(&ZSTD_MAGIC) => (
            Framing::LegacyZstd,
            Cow::Owned(decompress(value, limits.max_decompressed_bytes)?),
        ),
        _ => (Framing::LegacyBare, Cow::Borrowed(value)),
    };
    Ok(Unframed { framing, body })
}

impl Unframed<'_> {
    /// The protobuf body.
    pub(crate) fn body(&self) -> &[u8] {
        &self.body
    }

    pub(crate) fn framing(&self) -> Framing {
        self.framing
    }

    /// [`decode`] of the body, keeping what could be read of a body that
    /// failed a check after it decoded (no second decode for its DLQ document).
    pub(crate) fn decode_or_reject(&self, limits: &DecodeLimits) -> Result<Decoded, Rejected> {
        self.parse(limits)
            .map_err(|e| (e, None))
            .and_then(Parsed::check)
            .map_err(|(error, body)| Rejected {
                error,
                original: body.map(|b| Box::new(OriginalInfo::of(*b))),
            })
    }

    /// Decodes and checks the body, as [`decode`] does.
    pub(crate) fn decode(&self, limits: &DecodeLimits) -> Result<Decoded, DecodeError> {
        self.parse(limits)?.check().map_err(|(e, _)| e)
    }

    fn parse(&self, limits: &DecodeLimits) -> Result<Parsed, DecodeError> {
        let body = self.body();
        // Counted on the wire first: decoding a batch costs ~250 B per event,
        // however small the event is on the wire.
        let events = crate::record::scan::batch_events(body);
        if events > limits.max_batch_events {
            return Err(DecodeError::TooManyEvents {
                count: events,
                limit: limits.max_batch_events,
            });
        }
        let message = DashStreamMessage::decode(body)
            .map_err(|e| DecodeError::InvalidProtobuf(e.to_string()))?;
        let Some(body) = message.message else {
            return Err(DecodeError::MissingBody);
        };
        Ok(Parsed {
            body,
            framing: self.framing,
        })
    }
}

/// Schema version and id lengths of one header.
fn check_header(h: Option<&Header>, where_: Option<usize>) -> Result<(), DecodeError> {
    check_schema(h, where_)?;
    if let Some(h) = h {
        for (field, id) in [("thread_id", &h.thread_id), ("tenant_id", &h.tenant_id)] {
            if id.len() > MAX_ID_BYTES {
                return Err(DecodeError::IdTooLong {
                    field,
                    len: id.len(),
                    limit: MAX_ID_BYTES,
                });
            }
        }
    }
    Ok(())
}

/// Resets enum fields holding values this build does not know to 0
/// (UNSPECIFIED), so the proto3 JSON mapping can name every value.
pub(crate) fn clear_unknown_enums(body: &mut Message) {
    use crate::proto::{
        CompressionType, DiffOp, ErrorSeverity, EventType, FinishReason, MessageType, ToolStage,
        ValueEncoding,
    };
    fn fix<E: TryFrom<i32>>(v: &mut i32) {
        if E::try_from(*v).is_err() {
            *v = 0;
        }
    }
    fn header(h: &mut Option<Header>) {
        if let Some(h) = h {
            fix::<MessageType>(&mut h.r#type);
            fix::<CompressionType>(&mut h.compression);
        }
    }
    fn event(e: &mut Event) {
        header(&mut e.header);
        fix::<EventType>(&mut e.event_type);
    }
    match body {
        Message::Event(e) => event(e),
        Message::EventBatch(b) => {
            header(&mut b.header);
            b.events.iter_mut().for_each(event);
        }
        Message::TokenChunk(x) => {
            header(&mut x.header);
            fix::<FinishReason>(&mut x.finish_reason);
        }
        Message::ToolExecution(x) => {
            header(&mut x.header);
            fix::<ToolStage>(&mut x.stage);
        }
        Message::StateDiff(x) => {
            header(&mut x.header);
            for op in &mut x.operations {
                fix::<DiffOp>(&mut op.op);
                fix::<ValueEncoding>(&mut op.encoding);
            }
        }
        Message::Error(x) => {
            header(&mut x.header);
            fix::<ErrorSeverity>(&mut x.severity);
        }
        Message::Checkpoint(x) => header(&mut x.header),
        Message::Metrics(x) => header(&mut x.header),
        Message::ExecutionTrace(x) => header(&mut x.header),
    }
}

/// What we know of the original message, as far as it could be decoded.
#[derive(Clone, Debug, Default, serde::Serialize, PartialEq)]
pub(crate) struct OriginalInfo {
    pub(crate) thread_id: String,
    pub(crate) tenant_id: String,
    pub(crate) sequence: u64,
    pub(crate) message_type: String,
    pub(crate) schema_version: u32,
}

impl OriginalInfo {
    /// From a message that decoded but failed a check (ids cut to
    /// `MAX_ID_BYTES`: the DLQ document stays small whatever they were).
    fn of(body: Message) -> Self {
        let d = Decoded {
            body,
            framing: Framing::Protobuf,
        };
        let cut = |s: &str| crate::util::truncate_utf8(s, MAX_ID_BYTES).to_string();
        OriginalInfo {
            thread_id: cut(d.thread_id()),
            tenant_id: cut(d.tenant_id()),
            sequence: d.sequence(),
            message_type: d.kind().as_str().to_string(),
            schema_version: d.header().map(|h| h.schema_version.max(1)).unwrap_or(1),
        }
    }

    pub(crate) fn of_summary(s: &crate::record::summary::Summary) -> Self {
        OriginalInfo {
            thread_id: s.thread.to_string(),
            tenant_id: s.tenant.to_string(),
            sequence: s.sequence,
            message_type: s.kind.as_str().to_string(),
            schema_version: s.schema_version,
        }
    }
}

/// A record that failed decoding, with what could be read of it (for its
/// DLQ document; `None` when the body did not decode at all).
#[derive(Debug)]
pub(crate) struct Rejected {
    pub(crate) error: DecodeError,
    pub(crate) original: Option<Box<OriginalInfo>>,
}

/// Encodes a message in the current framing (`0x00` or `0x01` + zstd).
/// Used by the producer tool, tests and benchmarks.
pub fn encode_record(message: &DashStreamMessage, zstd_level: Option<i32>) -> Vec<u8> {
    let body = message.encode_to_vec();
    match zstd_level {
        None => {
            let mut out = Vec::with_capacity(body.len() + 1);
            out.push(FRAME_PROTOBUF);
            out.extend_from_slice(&body);
            out
        }
        Some(level) => {
            let mut out = vec![FRAME_ZSTD];
            // Compressing an in-memory buffer cannot fail short of OOM.
            let compressed = zstd::bulk::compress(&body, level).unwrap_or_default();
            out.extend_from_slice(&compressed);
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{EventBatch, TokenChunk};

    /// A record as ingest decodes it in full (what could be read kept for the DLQ).
    fn decode_or_reject(value: Option<&[u8]>, limits: &DecodeLimits) -> Result<Decoded, Rejected> {
        unframe(value, limits)
            .map_err(|error| Rejected {
                error,
                original: None,
            })?
            .decode_or_reject(limits)
    }

    fn header(thread: &str, seq: u64, schema: u32) -> Option<Header> {
        Some(Header {
            thread_id: thread.into(),
            sequence: seq,
            schema_version: schema,
            tenant_id: "acme".into(),
            timestamp_us: 1_700_000_000_000_000,
            ..Default::default()
        })
    }

    fn event(thread: &str, seq: u64) -> DashStreamMessage {
        DashStreamMessage {
            message: Some(Message::Event(Event {
                header: header(thread, seq, 1),
                node_id: "n".into(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn all_framings_decode_to_the_same_message() {
        let m = event("t1", 7);
        let body = m.encode_to_vec();
        let limits = DecodeLimits::default();
        let framed = encode_record(&m, None);
        let zstd = encode_record(&m, Some(3));
        let legacy_zstd = zstd::bulk::compress(&body, 3).unwrap();
        for (bytes, framing) in [
            (framed, Framing::Protobuf),
            (zstd, Framing::Zstd),
            (body.clone(), Framing::LegacyBare),
            (legacy_zstd, Framing::LegacyZstd),
        ] {
            let d = decode(Some(&bytes), &limits).unwrap();
            assert_eq!(d.framing, framing);
            assert_eq!(Some(d.body.clone()), m.message);
            assert_eq!(d.thread_id(), "t1");
            assert_eq!(d.kind(), MessageKind::Event);
        }
    }

    #[test]
    fn size_limit_is_checked_before_decoding() {
        let limits = DecodeLimits {
            max_record_bytes: 10,
            max_decompressed_bytes: 100,
            max_batch_events: 10,
        };
        let e = decode(Some(&[0u8; 11]), &limits).unwrap_err();
        assert_eq!(e.error_type(), "payload_too_large");
        assert_eq!(
            decode(Some(&[]), &limits).unwrap_err().error_type(),
            "empty_payload"
        );
        assert_eq!(
            decode(None, &limits).unwrap_err().error_type(),
            "empty_payload"
        );
    }

    #[test]
    fn zstd_bomb_stops_at_the_output_limit() {
        let zeros = vec![0u8; 50 * 1_048_576];
        let mut bomb = vec![FRAME_ZSTD];
        bomb.extend(zstd::bulk::compress(&zeros, 19).unwrap());
        assert!(
            bomb.len() < 10_000,
            "bomb is small on the wire: {}",
            bomb.len()
        );
        let e = decode(Some(&bomb), &DecodeLimits::default()).unwrap_err();
        assert_eq!(e.error_type(), "decompressed_too_large");
    }

    #[test]
    fn corrupt_zstd_and_garbage_are_classified() {
        let limits = DecodeLimits::default();
        let e = decode(Some(&[FRAME_ZSTD, 1, 2, 3, 4]), &limits).unwrap_err();
        assert_eq!(e.error_type(), "decompression_failure");
        let e = decode(Some(&[0xff, 0xff, 0xff, 0xff, 0x0f]), &limits).unwrap_err();
        assert_eq!(e.error_type(), "invalid_protobuf");
        let e = decode(Some(&[FRAME_PROTOBUF]), &limits).unwrap_err();
        assert_eq!(e.error_type(), "missing_body");
    }

    #[test]
    fn truncated_record_is_invalid_protobuf() {
        let full = encode_record(&event("t", 1), None);
        let e = decode(Some(&full[..full.len() - 3]), &DecodeLimits::default()).unwrap_err();
        assert_eq!(e.error_type(), "invalid_protobuf");
    }

    #[test]
    fn future_schema_is_rejected_also_inside_a_batch() {
        let limits = DecodeLimits::default();
        let m = DashStreamMessage {
            message: Some(Message::TokenChunk(TokenChunk {
                header: header("t", 1, 2),
                ..Default::default()
            })),
        };
        let e = decode(Some(&encode_record(&m, None)), &limits).unwrap_err();
        assert_eq!(e.error_type(), "schema_mismatch");

        let batch = DashStreamMessage {
            message: Some(Message::EventBatch(EventBatch {
                header: header("t", 0, 1),
                events: vec![
                    Event {
                        header: header("t", 1, 1),
                        ..Default::default()
                    },
                    Event {
                        header: header("t", 2, 3),
                        ..Default::default()
                    },
                ],
            })),
        };
        let e = decode(Some(&encode_record(&batch, None)), &limits).unwrap_err();
        assert!(
            matches!(
                e,
                DecodeError::SchemaMismatch {
                    found: 3,
                    where_: Some(1),
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn batch_yields_one_sequence_unit_per_sequenced_event() {
        let batch = DashStreamMessage {
            message: Some(Message::EventBatch(EventBatch {
                header: header("", 0, 1),
                events: vec![
                    Event {
                        header: header("a", 5, 1),
                        ..Default::default()
                    },
                    Event {
                        header: header("b", 0, 1),
                        ..Default::default()
                    },
                    Event {
                        header: header("b", 9, 0),
                        ..Default::default()
                    },
                ],
            })),
        };
        let d = decode(Some(&encode_record(&batch, None)), &DecodeLimits::default()).unwrap();
        let units: Vec<_> = d.sequence_units().collect();
        assert_eq!(
            units,
            vec![
                SequenceUnit {
                    thread_id: "a",
                    tenant_id: "acme",
                    sequence: 5
                },
                SequenceUnit {
                    thread_id: "b",
                    tenant_id: "acme",
                    sequence: 9
                }
            ]
        );
        assert_eq!(d.thread_id(), "a");
        assert!(d.involves_thread("b"));
    }

    #[test]
    fn a_small_zstd_record_of_many_empty_events_is_refused_before_it_is_decoded() {
        // ~2 bytes per event on the wire, ~250 B each once decoded.
        let batch = DashStreamMessage {
            message: Some(Message::EventBatch(EventBatch {
                header: header("t", 0, 1),
                events: vec![Event::default(); 2_000_000],
            })),
        };
        let v = encode_record(&batch, Some(3));
        assert!(v.len() < 4096, "{} bytes on the wire", v.len());
        let e = decode(Some(&v), &DecodeLimits::default()).unwrap_err();
        assert_eq!(e.error_type(), "batch_too_large");
        assert_eq!(e.stage(), "validate");
        assert!(e.to_string().contains("10000-event limit"), "{e}");
        let ok = DashStreamMessage {
            message: Some(Message::EventBatch(EventBatch {
                header: header("t", 0, 1),
                events: vec![Event::default(); 10_000],
            })),
        };
        decode(Some(&encode_record(&ok, Some(3))), &DecodeLimits::default()).unwrap();
    }

    #[test]
    fn ids_longer_than_256_bytes_are_refused_in_headers_and_batch_events() {
        let limits = DecodeLimits::default();
        let long = "x".repeat(MAX_ID_BYTES + 1);
        decode(
            Some(&encode_record(&event(&"x".repeat(MAX_ID_BYTES), 1), None)),
            &limits,
        )
        .unwrap();
        let e = decode(Some(&encode_record(&event(&long, 1), Some(3))), &limits).unwrap_err();
        assert_eq!(e.error_type(), "id_too_long");
        assert!(e.to_string().starts_with("thread_id is 257 bytes"), "{e}");
        let mut tenant = event("t", 1);
        if let Some(Message::Event(ev)) = &mut tenant.message {
            ev.header.as_mut().unwrap().tenant_id = long.clone();
        }
        let e = decode(Some(&encode_record(&tenant, None)), &limits).unwrap_err();
        assert!(e.to_string().starts_with("tenant_id is 257"), "{e}");
        let batch = DashStreamMessage {
            message: Some(Message::EventBatch(EventBatch {
                header: header("t", 0, 1),
                events: vec![
                    Event {
                        header: header("t", 1, 1),
                        ..Default::default()
                    },
                    Event {
                        header: header(&long, 2, 1),
                        ..Default::default()
                    },
                ],
            })),
        };
        let e = decode(Some(&encode_record(&batch, None)), &limits).unwrap_err();
        assert_eq!(e.error_type(), "id_too_long");
    }

    #[test]
    fn a_rejected_record_keeps_what_its_one_decode_read_with_ids_cut() {
        let limits = DecodeLimits::default();
        let mut future = event("t1", 7);
        if let Some(Message::Event(e)) = &mut future.message {
            e.header.as_mut().unwrap().schema_version = 9;
        }
        let r = decode_or_reject(Some(&encode_record(&future, Some(3))), &limits).unwrap_err();
        assert_eq!(r.error.error_type(), "schema_mismatch");
        let info = r.original.unwrap();
        assert_eq!(
            (info.thread_id.as_str(), info.sequence, info.schema_version),
            ("t1", 7, 9)
        );
        let long = "é".repeat(1000);
        let r =
            decode_or_reject(Some(&encode_record(&event(&long, 1), None)), &limits).unwrap_err();
        assert_eq!(r.error.error_type(), "id_too_long");
        assert_eq!(
            r.original.unwrap().thread_id.len(),
            256,
            "cut on a char boundary"
        );
        let batch = DashStreamMessage {
            message: Some(Message::EventBatch(EventBatch {
                header: header("t", 0, 1),
                events: vec![Event::default(); 20_000],
            })),
        };
        let r = decode_or_reject(Some(&encode_record(&batch, None)), &limits).unwrap_err();
        assert_eq!(r.error.error_type(), "batch_too_large");
        assert!(r.original.is_none(), "refused before it was decoded");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
            let _ = decode(Some(&bytes), &DecodeLimits { max_record_bytes: 1024, max_decompressed_bytes: 4096, max_batch_events: 100 });
        }

        #[test]
        fn arbitrary_zstd_framed_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let mut v = vec![FRAME_ZSTD];
            v.extend_from_slice(&ZSTD_MAGIC);
            v.extend(bytes);
            let _ = decode(Some(&v), &DecodeLimits::default());
        }
    }
}
