//! The DLQ record: a JSON document about one failed record, with Kafka
//! Connect-style headers (see docs/DLQ.md).
//!
//! A document always fits in one producer request: whatever the original
//! record carries (a long key, many headers, a large payload), each part is
//! capped and the cut is flagged, and the whole stays under
//! [`MAX_DOCUMENT_BYTES`] (librdkafka's default `message.max.bytes` is
//! 1,000,000) by leaving the payload out last.

use std::time::Duration;

use base64::Engine as _;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::record::decode::OriginalInfo;
use crate::util::truncate_utf8;

/// Header a redriven record carries: how many times it was redriven.
pub(crate) const REDRIVE_ATTEMPT_HEADER: &str = "x-dlq-redrive-attempt";
/// Longest `__connect.errors.exception.message` header value, in bytes.
pub(crate) const MAX_ERROR_MESSAGE_BYTES: usize = 1024;
/// Longest DLQ record (document, key and headers), in bytes.
pub(crate) const MAX_DOCUMENT_BYTES: usize = 900_000;
/// Longest key kept, as the DLQ record's key and (as text) in the document.
pub(crate) const MAX_KEY_BYTES: usize = 16 * 1024;
/// Original headers copied, in bytes in all (names and values).
pub(crate) const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Settings of the DLQ stage (validated by `config`).
#[derive(Clone, Debug)]
pub(crate) struct DlqConfig {
    pub(crate) topic: String,
    pub(crate) producer_properties: Vec<(String, String)>,
    pub(crate) max_in_flight: usize,
    pub(crate) send_timeout: Duration,
    pub(crate) fail_closed: bool,
    pub(crate) include_payload: bool,
    pub(crate) payload_max_bytes: usize,
}

/// The record that could not be delivered, as read from Kafka.
pub(crate) struct SourceRecord<'a> {
    pub(crate) topic: &'a str,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) timestamp_ms: Option<i64>,
    pub(crate) key: Option<&'a [u8]>,
    pub(crate) value: Option<&'a [u8]>,
    pub(crate) headers: Vec<(&'a str, Option<&'a [u8]>)>,
    pub(crate) trace_id: Option<&'a str>,
}

/// Why a record goes to the DLQ.
#[derive(Clone, Debug)]
pub(crate) struct Failure {
    pub(crate) error_type: &'static str,
    pub(crate) stage: &'static str,
    pub(crate) message: String,
    pub(crate) original: Option<Box<OriginalInfo>>,
}

/// A ready-to-send DLQ record.
#[derive(Clone, Debug)]
pub(crate) struct DlqRecord {
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) value: Vec<u8>,
    pub(crate) headers: Vec<(String, Vec<u8>)>,
    pub(crate) error_type: &'static str,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
}

impl Failure {
    /// Why the record at this outcome goes to the DLQ (`None`: delivered).
    pub(crate) fn of(outcome: crate::ingest::pipeline::Outcome) -> Option<Failure> {
        use crate::ingest::pipeline::Outcome;
        Some(match outcome {
            Outcome::Delivered => return None,
            Outcome::Rejected { error, original } => Failure {
                error_type: error.error_type(),
                stage: error.stage(),
                message: error.to_string(),
                original,
            },
            Outcome::RateLimited { summary } => Failure {
                error_type: "rate_limited",
                stage: "rate_limit",
                message: format!(
                    "tenant {:?} is over its rate limit",
                    truncate_utf8(&summary.tenant, 256)
                ),
                original: Some(Box::new(OriginalInfo::of_summary(&summary))),
            },
            Outcome::Held {
                thread,
                buffered,
                summary,
            } => Failure {
                error_type: "thread_halted",
                stage: "sequence",
                message: if buffered {
                    format!("thread {thread:?} is halted by GAP_POLICY=halt; the record is held for release and copied here")
                } else {
                    format!("thread {thread:?} is halted and its buffer (HALT_MAX_HELD_MESSAGES, HALT_MAX_HELD_BYTES) is full: this copy is the only one; it will not be released")
                },
                original: Some(Box::new(OriginalInfo::of_summary(&summary))),
            },
        })
    }
}

impl DlqRecord {
    /// Bytes the producer sends for it.
    pub(crate) fn size(&self) -> usize {
        self.value.len()
            + self.key.as_ref().map_or(0, Vec::len)
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// Builds the DLQ document and headers for one failed record.
pub(crate) fn build_record(
    src: &SourceRecord<'_>,
    failure: &Failure,
    cfg: &DlqConfig,
    group_id: &str,
) -> DlqRecord {
    let value = src.value.unwrap_or_default();
    let sha_hex = hex(&Sha256::digest(value));
    let key = src.key.map(|k| &k[..k.len().min(MAX_KEY_BYTES)]);
    let key_truncated = src.key.is_some_and(|k| k.len() > MAX_KEY_BYTES);
    let key_text = key.map(|k| {
        let text = String::from_utf8_lossy(k);
        truncate_utf8(&text, MAX_KEY_BYTES).to_string()
    });
    let attempts = src
        .headers
        .iter()
        .find(|(k, _)| *k == REDRIVE_ATTEMPT_HEADER)
        .and_then(|(_, v)| std::str::from_utf8((*v)?).ok()?.trim().parse::<u32>().ok())
        .unwrap_or(0);
    let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
    let mut header_bytes = 0;
    let mut headers_truncated = false;
    for (k, v) in src
        .headers
        .iter()
        .filter(|(k, _)| !k.starts_with("__connect.errors."))
    {
        let v = v.unwrap_or_default();
        header_bytes += k.len() + v.len();
        if header_bytes > MAX_HEADER_BYTES {
            headers_truncated = true;
            break;
        }
        headers.push((k.to_string(), v.to_vec()));
    }
    let connect = [
        ("__connect.errors.topic", src.topic.to_string()),
        ("__connect.errors.partition", src.partition.to_string()),
        ("__connect.errors.offset", src.offset.to_string()),
        (
            "__connect.errors.exception.class.name",
            failure.error_type.to_string(),
        ),
        (
            "__connect.errors.exception.message",
            truncate_utf8(&failure.message, MAX_ERROR_MESSAGE_BYTES).to_string(),
        ),
        ("__connect.errors.stage", failure.stage.to_string()),
    ];
    headers.extend(
        connect
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.into_bytes())),
    );
    let render = |payload: Option<&[u8]>, dropped: Option<&str>| {
        let (b64, truncated) = match payload {
            Some(p) => (
                Some(base64::engine::general_purpose::STANDARD.encode(p)),
                p.len() < value.len(),
            ),
            None => (None, false),
        };
        let doc = json!({
            "error_type": failure.error_type,
            "error": truncate_utf8(&failure.message, MAX_ERROR_MESSAGE_BYTES),
            "stage": failure.stage,
            "source": {
                "topic": src.topic,
                "partition": src.partition,
                "offset": src.offset,
                "timestamp_ms": src.timestamp_ms,
                "key": key_text,
                "key_truncated": key_truncated,
            },
            "original_message": failure.original,
            "trace_id": src.trace_id,
            "payload_sha256": sha_hex,
            "payload_size": value.len(),
            "payload_base64": b64,
            "payload_included": payload.is_some(),
            "payload_truncated": truncated,
            "payload_left_out": dropped,
            "headers_truncated": headers_truncated,
            "redrive_attempts": attempts,
            "consumer_group": group_id,
            "bridge_version": env!("CARGO_PKG_VERSION"),
            "dlq_timestamp_ms": crate::util::unix_ms(),
        });
        // Serializing a json! value cannot fail.
        serde_json::to_vec(&doc).unwrap_or_default()
    };
    let kept = cfg
        .include_payload
        .then(|| &value[..value.len().min(cfg.payload_max_bytes)]);
    let mut rec = DlqRecord {
        key: key.map(<[u8]>::to_vec),
        value: render(
            kept,
            (!cfg.include_payload).then_some("DLQ_INCLUDE_PAYLOAD=false"),
        ),
        headers,
        error_type: failure.error_type,
        partition: src.partition,
        offset: src.offset,
    };
    if rec.size() > MAX_DOCUMENT_BYTES && kept.is_some() {
        rec.value = render(None, Some("document_size"));
    }
    rec
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(include: bool, max: usize) -> DlqConfig {
        DlqConfig {
            topic: "t-dlq".into(),
            producer_properties: vec![],
            max_in_flight: 1,
            send_timeout: Duration::from_secs(1),
            fail_closed: false,
            include_payload: include,
            payload_max_bytes: max,
        }
    }

    #[test]
    fn a_document_fits_one_request_whatever_the_record_carries() {
        let key = vec![b'k'; 2_000_000];
        let value = vec![7u8; 1_048_576];
        let big = vec![1u8; 4096];
        let names: Vec<String> = (0..1000).map(|i| format!("h{i}")).collect();
        let src = SourceRecord {
            topic: "t",
            partition: 0,
            offset: 9,
            timestamp_ms: None,
            key: Some(&key),
            value: Some(&value),
            headers: names.iter().map(|n| (n.as_str(), Some(&big[..]))).collect(),
            trace_id: None,
        };
        let f = Failure {
            error_type: "invalid_protobuf",
            stage: "decode",
            message: "m".repeat(100_000),
            original: None,
        };
        let rec = build_record(&src, &f, &cfg(true, 16 * 1_048_576), "g");
        assert!(rec.size() <= MAX_DOCUMENT_BYTES, "{}", rec.size());
        let v: serde_json::Value = serde_json::from_slice(&rec.value).unwrap();
        assert_eq!(v["payload_included"], false);
        assert_eq!(v["payload_left_out"], "document_size");
        assert_eq!(v["payload_size"], 1_048_576, "the size and hash stay");
        assert_eq!(v["source"]["key_truncated"], true);
        assert_eq!(v["headers_truncated"], true);
        assert_eq!(rec.key.as_ref().unwrap().len(), MAX_KEY_BYTES);
        assert!(v["error"].as_str().unwrap().len() <= MAX_ERROR_MESSAGE_BYTES);
        // A payload that fits is kept.
        let rec = build_record(&src, &f, &cfg(true, 262_144), "g");
        let v: serde_json::Value = serde_json::from_slice(&rec.value).unwrap();
        assert_eq!(v["payload_included"], true, "{}", rec.size());
        assert_eq!(v["payload_truncated"], true);
        assert!(rec.size() <= MAX_DOCUMENT_BYTES);
    }

    #[test]
    fn the_hash_is_lowercase_hex() {
        assert_eq!(hex(&[0x00, 0xab, 0x0f, 0xf0]), "00ab0ff0");
    }

    #[test]
    fn record_carries_documented_fields_and_connect_headers() {
        let tp = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let src = SourceRecord {
            topic: "t",
            partition: 2,
            offset: 77,
            timestamp_ms: Some(123),
            key: Some(b"thread-1"),
            value: Some(b"\x00garbage"),
            headers: vec![
                ("traceparent", Some(tp)),
                (REDRIVE_ATTEMPT_HEADER, Some(b"2")),
            ],
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736"),
        };
        let failure = Failure {
            error_type: "invalid_protobuf",
            stage: "decode",
            message: "é".repeat(2000),
            original: None,
        };
        let rec = build_record(&src, &failure, &cfg(true, 4), "g");
        let v: serde_json::Value = serde_json::from_slice(&rec.value).unwrap();
        assert_eq!(v["error_type"], "invalid_protobuf");
        assert_eq!(v["stage"], "decode");
        assert_eq!(v["source"]["partition"], 2);
        assert_eq!(v["source"]["offset"], 77);
        assert_eq!(v["source"]["key"], "thread-1");
        assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(v["payload_size"], 8);
        assert_eq!(v["payload_truncated"], true, "cap of 4 bytes < 8");
        assert_eq!(
            v["payload_base64"],
            base64::engine::general_purpose::STANDARD.encode(b"\x00gar")
        );
        assert_eq!(v["payload_sha256"].as_str().unwrap().len(), 64);
        assert_eq!(v["redrive_attempts"], 2);
        let h: std::collections::HashMap<_, _> = rec
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        assert_eq!(h["__connect.errors.topic"], b"t");
        assert_eq!(h["__connect.errors.partition"], b"2");
        assert_eq!(h["__connect.errors.offset"], b"77");
        assert_eq!(
            h["__connect.errors.exception.class.name"],
            b"invalid_protobuf"
        );
        assert_eq!(h["__connect.errors.stage"], b"decode");
        assert_eq!(h["traceparent"], tp.to_vec(), "original headers copied");
        let msg = std::str::from_utf8(&h["__connect.errors.exception.message"])
            .expect("capped on a char boundary");
        assert!(msg.len() <= MAX_ERROR_MESSAGE_BYTES);
        assert_eq!(rec.key.as_deref(), Some(&b"thread-1"[..]));
    }

    #[test]
    fn payload_can_be_left_out_but_the_hash_stays() {
        let src = SourceRecord {
            topic: "t",
            partition: 0,
            offset: 0,
            timestamp_ms: None,
            key: None,
            value: Some(b"abc"),
            headers: vec![],
            trace_id: None,
        };
        let f = Failure {
            error_type: "x",
            stage: "decode",
            message: "m".into(),
            original: None,
        };
        let v: serde_json::Value =
            serde_json::from_slice(&build_record(&src, &f, &cfg(false, 10), "g").value).unwrap();
        assert!(v["payload_base64"].is_null());
        assert_eq!(v["payload_included"], false);
        assert_eq!(
            v["payload_sha256"],
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
