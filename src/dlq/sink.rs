//! Dead-letter stage: every record the bridge cannot deliver is written to
//! the DLQ topic as a JSON document with Kafka Connect-style headers, for the
//! operator who reads it later (see docs/DLQ.md).
//!
//! Fail-open (default): a send never blocks the consumer. At most
//! `MAX_CONCURRENT_DLQ_SENDS` are in flight; beyond that the DLQ record is
//! dropped and counted (`reason="backpressure"`); each send is bounded by
//! `DLQ_SEND_TIMEOUT_SECS`. The main topic's offset moves on regardless.
//!
//! Fail-closed (`DLQ_FAIL_CLOSED=true`): the record's offset is held (not
//! committed) until the DLQ acknowledges it; sends are retried with backoff
//! and the consumer pauses while the DLQ is failing. Availability is traded
//! for durability: a DLQ outage becomes consumer lag, never a lost record.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use metrics::Counter;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::record::decode::OriginalInfo;
use crate::telemetry;

/// Header a redriven record carries: how many times it was redriven.
pub(crate) const REDRIVE_ATTEMPT_HEADER: &str = "x-dlq-redrive-attempt";
/// Longest `__connect.errors.exception.message` header value, in bytes.
pub(crate) const MAX_ERROR_MESSAGE_BYTES: usize = 1024;

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
    pub(crate) original: Option<OriginalInfo>,
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

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

/// Builds the DLQ document and headers for one failed record.
pub(crate) fn build_record(
    src: &SourceRecord<'_>,
    failure: &Failure,
    cfg: &DlqConfig,
    group_id: &str,
) -> DlqRecord {
    let value = src.value.unwrap_or_default();
    let sha = Sha256::digest(value);
    let sha_hex: String = sha.iter().map(|b| format!("{b:02x}")).collect();
    let key_text = src.key.map(|k| String::from_utf8_lossy(k).into_owned());
    let (payload, truncated) = if cfg.include_payload {
        let kept = &value[..value.len().min(cfg.payload_max_bytes)];
        (
            Some(base64::engine::general_purpose::STANDARD.encode(kept)),
            kept.len() < value.len(),
        )
    } else {
        (None, false)
    };
    let attempts = src
        .headers
        .iter()
        .find(|(k, _)| *k == REDRIVE_ATTEMPT_HEADER)
        .and_then(|(_, v)| std::str::from_utf8((*v)?).ok()?.trim().parse::<u32>().ok())
        .unwrap_or(0);
    let doc = json!({
        "error_type": failure.error_type,
        "error": failure.message,
        "stage": failure.stage,
        "source": {
            "topic": src.topic,
            "partition": src.partition,
            "offset": src.offset,
            "timestamp_ms": src.timestamp_ms,
            "key": key_text,
        },
        "original_message": failure.original,
        "trace_id": src.trace_id,
        "payload_sha256": sha_hex,
        "payload_size": value.len(),
        "payload_base64": payload,
        "payload_included": cfg.include_payload,
        "payload_truncated": truncated,
        "redrive_attempts": attempts,
        "consumer_group": group_id,
        "bridge_version": env!("CARGO_PKG_VERSION"),
        "dlq_timestamp_ms": now_ms(),
    });
    let mut headers: Vec<(String, Vec<u8>)> = src
        .headers
        .iter()
        .filter(|(k, _)| !k.starts_with("__connect.errors."))
        .map(|(k, v)| (k.to_string(), v.unwrap_or_default().to_vec()))
        .collect();
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
    DlqRecord {
        key: src.key.map(<[u8]>::to_vec),
        // Serializing a json! value cannot fail.
        value: serde_json::to_vec(&doc).unwrap_or_default(),
        headers,
        error_type: failure.error_type,
        partition: src.partition,
        offset: src.offset,
    }
}

/// DLQ health as `/health` reports it.
#[derive(Default)]
pub(crate) struct DlqHealth {
    last_success_ms: AtomicI64,
    last_failure_ms: AtomicI64,
    pub(crate) in_flight: AtomicU64,
}

/// A failure counts against health for this long after it happened.
const DEGRADED_WINDOW_MS: i64 = 60_000;

impl DlqHealth {
    fn success(&self) {
        self.last_success_ms.store(now_ms(), Ordering::Relaxed);
    }
    fn failure(&self) {
        self.last_failure_ms.store(now_ms(), Ordering::Relaxed);
    }
    /// `healthy`, or `degraded` while the latest outcome within the last
    /// minute was a failure.
    pub(crate) fn state(&self) -> &'static str {
        let f = self.last_failure_ms.load(Ordering::Relaxed);
        let s = self.last_success_ms.load(Ordering::Relaxed);
        if f > 0 && f >= s && now_ms() - f < DEGRADED_WINDOW_MS {
            "degraded"
        } else {
            "healthy"
        }
    }
}

/// Fail-closed progress reported back to the consumer loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailClosedEvent {
    /// The DLQ acknowledged the record at (partition, offset).
    Acked { partition: i32, offset: i64 },
    /// An attempt failed; the record will be retried.
    Failing,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SendError {
    Timeout,
    Kafka,
}

impl SendError {
    fn reason(self) -> &'static str {
        match self {
            SendError::Timeout => "timeout",
            SendError::Kafka => "kafka_error",
        }
    }
}

/// Classifies a producer error by its code, never by its text.
fn classify(e: &KafkaError) -> SendError {
    match e.rdkafka_error_code() {
        Some(
            RDKafkaErrorCode::MessageTimedOut
            | RDKafkaErrorCode::RequestTimedOut
            | RDKafkaErrorCode::OperationTimedOut,
        ) => SendError::Timeout,
        _ => SendError::Kafka,
    }
}

struct Inner {
    producer: FutureProducer,
    topic: String,
    timeout: Duration,
    health: Arc<DlqHealth>,
    backpressure: Counter,
}

impl Inner {
    async fn send_once(&self, rec: &DlqRecord) -> Result<(), SendError> {
        let mut headers = OwnedHeaders::new_with_capacity(rec.headers.len());
        for (k, v) in &rec.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        let mut fr = FutureRecord::to(&self.topic)
            .payload(&rec.value)
            .headers(headers);
        if let Some(k) = &rec.key {
            fr = fr.key(k);
        }
        let result =
            match tokio::time::timeout(self.timeout, self.producer.send(fr, self.timeout)).await {
                Err(_) => Err(SendError::Timeout),
                Ok(Err((e, _))) => Err(classify(&e)),
                Ok(Ok(_)) => Ok(()),
            };
        match result {
            Ok(()) => {
                self.health.success();
                metrics::counter!(telemetry::DLQ_SENDS, "error_type" => rec.error_type)
                    .increment(1);
            }
            Err(e) => {
                self.health.failure();
                metrics::counter!(telemetry::DLQ_SEND_FAILURES, "reason" => e.reason())
                    .increment(1);
                tracing::warn!(
                    partition = rec.partition,
                    offset = rec.offset,
                    error_type = rec.error_type,
                    reason = e.reason(),
                    "DLQ send failed"
                );
            }
        }
        result
    }
}

/// The DLQ producer and its bounds. Cheap to share.
pub(crate) struct DlqSink {
    cfg: DlqConfig,
    inner: Arc<Inner>,
    permits: Arc<Semaphore>,
    max_in_flight: usize,
    fail_closed: bool,
    tracker: TaskTracker,
    cancel: CancellationToken,
}

impl DlqSink {
    pub(crate) fn new(cfg: &DlqConfig, health: Arc<DlqHealth>) -> Result<Self, KafkaError> {
        let mut c = ClientConfig::new();
        for (k, v) in &cfg.producer_properties {
            c.set(k, v);
        }
        // Every send is bounded, whatever the broker does.
        c.set(
            "message.timeout.ms",
            cfg.send_timeout.as_millis().max(1).to_string(),
        );
        c.set(
            "queue.buffering.max.messages",
            (cfg.max_in_flight * 2).max(16).to_string(),
        );
        c.set("linger.ms", "5");
        let producer: FutureProducer = c.create()?;
        let inner = Inner {
            producer,
            topic: cfg.topic.clone(),
            timeout: cfg.send_timeout,
            health,
            backpressure: metrics::counter!(telemetry::DLQ_SEND_FAILURES, "reason" => "backpressure"),
        };
        Ok(Self {
            cfg: cfg.clone(),
            inner: Arc::new(inner),
            permits: Arc::new(Semaphore::new(cfg.max_in_flight)),
            max_in_flight: cfg.max_in_flight,
            fail_closed: cfg.fail_closed,
            tracker: TaskTracker::new(),
            cancel: CancellationToken::new(),
        })
    }

    pub(crate) fn config(&self) -> &DlqConfig {
        &self.cfg
    }

    pub(crate) fn fail_closed(&self) -> bool {
        self.fail_closed
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.max_in_flight - self.permits.available_permits()
    }

    pub(crate) fn export_gauges(&self) {
        let n = self.in_flight();
        self.inner
            .health
            .in_flight
            .store(n as u64, Ordering::Relaxed);
        metrics::gauge!(telemetry::DLQ_IN_FLIGHT).set(n as f64);
    }

    /// Fail-open send: returns at once. Dropped and counted when the
    /// in-flight limit is reached.
    pub(crate) fn send_fail_open(&self, rec: DlqRecord) {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            self.inner.backpressure.increment(1);
            self.inner.health.failure();
            tracing::warn!(
                partition = rec.partition,
                offset = rec.offset,
                error_type = rec.error_type,
                "DLQ record dropped: MAX_CONCURRENT_DLQ_SENDS in flight"
            );
            return;
        };
        let inner = self.inner.clone();
        self.export_gauges();
        self.tracker.spawn(async move {
            let _ = inner.send_once(&rec).await;
            drop(permit);
        });
    }

    /// Fail-closed send: retried with backoff until acknowledged (or the
    /// bridge stops: then the record's offset stays uncommitted and it is
    /// read again after a restart). Progress goes to `events`.
    pub(crate) fn send_fail_closed(
        &self,
        rec: DlqRecord,
        events: mpsc::UnboundedSender<FailClosedEvent>,
    ) {
        let inner = self.inner.clone();
        let permits = self.permits.clone();
        let cancel = self.cancel.clone();
        self.tracker.spawn(async move {
            let Ok(permit) = permits.acquire_owned().await else {
                return;
            };
            let mut backoff = Duration::from_millis(200);
            loop {
                if cancel.is_cancelled() {
                    metrics::counter!(telemetry::DLQ_SEND_FAILURES, "reason" => "shutdown")
                        .increment(1);
                    break;
                }
                match inner.send_once(&rec).await {
                    Ok(()) => {
                        let _ = events.send(FailClosedEvent::Acked {
                            partition: rec.partition,
                            offset: rec.offset,
                        });
                        break;
                    }
                    Err(_) => {
                        let _ = events.send(FailClosedEvent::Failing);
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = cancel.cancelled() => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
            drop(permit);
        });
        self.export_gauges();
    }

    /// Waits for in-flight sends up to `budget`; counts what is abandoned.
    pub(crate) async fn shutdown(&self, budget: Duration) {
        // Fail-closed retries stop now: their offsets were never committed.
        self.cancel.cancel();
        self.tracker.close();
        if tokio::time::timeout(budget, self.tracker.wait())
            .await
            .is_err()
        {
            let abandoned = self.tracker.len() as u64;
            metrics::counter!(telemetry::DLQ_SEND_FAILURES, "reason" => "shutdown")
                .increment(abandoned);
            tracing::warn!(abandoned, "DLQ sends abandoned at shutdown");
        }
        let p = self.inner.producer.clone();
        let _ = tokio::task::spawn_blocking(move || p.flush(Duration::from_millis(200))).await;
    }
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

    #[test]
    fn errors_are_classified_by_code() {
        assert_eq!(
            classify(&KafkaError::MessageProduction(
                RDKafkaErrorCode::MessageTimedOut
            )),
            SendError::Timeout
        );
        assert_eq!(
            classify(&KafkaError::MessageProduction(
                RDKafkaErrorCode::UnknownTopicOrPartition
            )),
            SendError::Kafka
        );
    }
}
