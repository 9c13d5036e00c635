//! Dead-letter stage: every record the bridge cannot deliver is written to
//! the DLQ topic as a JSON document with Kafka Connect-style headers, for the
//! operator who reads it later (see docs/DLQ.md; the document is built in
//! [`crate::dlq::document`]).
//!
//! Fail-open (default): a send never blocks the consumer. At most
//! `MAX_CONCURRENT_DLQ_SENDS` are in flight; the consumer takes a permit
//! ([`DlqSink::reserve`]) before it builds a document, so beyond the limit a
//! DLQ record costs a counter (`reason="backpressure"`) and nothing else.
//! Each send is bounded by `DLQ_SEND_TIMEOUT_SECS`. The main topic's offset
//! moves on regardless.
//!
//! Fail-closed (`DLQ_FAIL_CLOSED=true`): the record's offset is held (not
//! committed) until the DLQ acknowledges it; sends are retried with backoff,
//! the consumer pauses while the DLQ is failing and takes no record while
//! `MAX_CONCURRENT_DLQ_SENDS` are pending. A DLQ outage becomes consumer
//! lag. A *permanent* producer error (the record is too large for the
//! broker, the topic is not authorized, or it stays unknown after
//! `UNKNOWN_TOPIC_ATTEMPTS`) is the one final outcome besides success: the
//! record is counted in `websocket_dlq_records_lost_total`, logged with its
//! offset, and its offset is released, so one record can never wedge the
//! bridge.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metrics::Counter;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub(crate) use crate::dlq::document::{DlqConfig, DlqRecord};
use crate::telemetry;
use crate::util::{unix_ms as now_ms, LogThrottle};

/// Attempts before an unknown DLQ topic counts as a permanent error
/// (librdkafka creates it on first use where the broker allows).
pub(crate) const UNKNOWN_TOPIC_ATTEMPTS: u32 = 10;

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
    /// The DLQ can never take this record (a permanent error): counted as
    /// lost, its offset is released.
    GaveUp { partition: i32, offset: i64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SendError {
    Timeout,
    Kafka,
    /// The topic does not exist (yet): retried a few times, then permanent.
    UnknownTopic,
    /// Retrying cannot help: too large, not authorized, invalid.
    Permanent,
}

impl SendError {
    fn reason(self) -> &'static str {
        match self {
            SendError::Timeout => "timeout",
            SendError::Kafka | SendError::UnknownTopic => "kafka_error",
            SendError::Permanent => "permanent",
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
        Some(
            RDKafkaErrorCode::UnknownTopicOrPartition
            | RDKafkaErrorCode::UnknownTopic
            | RDKafkaErrorCode::UnknownPartition,
        ) => SendError::UnknownTopic,
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::MessageBatchTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::InvalidTopic,
        ) => SendError::Permanent,
        _ => SendError::Kafka,
    }
}

struct Inner {
    producer: FutureProducer,
    topic: String,
    timeout: Duration,
    health: Arc<DlqHealth>,
    backpressure: Counter,
    failure_log: LogThrottle,
    drop_log: LogThrottle,
    lost_log: LogThrottle,
}

impl Inner {
    /// Counts a record the DLQ can never take.
    fn lost(&self, rec: &DlqRecord) {
        metrics::counter!(telemetry::DLQ_RECORDS_LOST, "error_type" => rec.error_type).increment(1);
        if let Some(suppressed) = self.lost_log.allow(now_ms()) {
            tracing::error!(
                partition = rec.partition,
                offset = rec.offset,
                error_type = rec.error_type,
                bytes = rec.size(),
                suppressed,
                "DLQ record LOST: the DLQ producer refuses it for good (too large, not authorized or no such topic); the original record's offset is released (see docs/DLQ.md)"
            );
        }
    }

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
                if let Some(suppressed) = self.failure_log.allow(now_ms()) {
                    tracing::warn!(
                        partition = rec.partition,
                        offset = rec.offset,
                        error_type = rec.error_type,
                        reason = e.reason(),
                        suppressed,
                        "DLQ send failed (at most one line per second; `suppressed` since the last)"
                    );
                }
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
            failure_log: LogThrottle::default(),
            drop_log: LogThrottle::default(),
            lost_log: LogThrottle::default(),
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

    /// Sends in flight at once, at most (`MAX_CONCURRENT_DLQ_SENDS`).
    pub(crate) fn max_in_flight(&self) -> usize {
        self.max_in_flight
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

    /// A permit for one fail-open send, taken before the document is
    /// built. `None` at the in-flight limit: the record is counted as
    /// dropped (`reason="backpressure"`) and costs nothing more.
    pub(crate) fn reserve(
        &self,
        partition: i32,
        offset: i64,
        error_type: &'static str,
    ) -> Option<OwnedSemaphorePermit> {
        match self.permits.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                self.inner.backpressure.increment(1);
                self.inner.health.failure();
                if let Some(suppressed) = self.inner.drop_log.allow(now_ms()) {
                    tracing::warn!(
                        partition,
                        offset,
                        error_type,
                        suppressed,
                        "DLQ record dropped: MAX_CONCURRENT_DLQ_SENDS in flight (at most one line per second; `suppressed` since the last)"
                    );
                }
                None
            }
        }
    }

    /// Fail-open send with a permit from [`DlqSink::reserve`]: returns at once.
    pub(crate) fn send_fail_open(&self, rec: DlqRecord, permit: OwnedSemaphorePermit) {
        let inner = self.inner.clone();
        self.export_gauges();
        self.tracker.spawn(async move {
            if let Err(SendError::Permanent) = inner.send_once(&rec).await {
                inner.lost(&rec);
            }
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
            let mut unknown_topic = 0;
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
                    Err(e) => {
                        unknown_topic += u32::from(e == SendError::UnknownTopic);
                        if e == SendError::Permanent || unknown_topic >= UNKNOWN_TOPIC_ATTEMPTS {
                            inner.lost(&rec);
                            let _ = events.send(FailClosedEvent::GaveUp {
                                partition: rec.partition,
                                offset: rec.offset,
                            });
                            break;
                        }
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

    #[tokio::test]
    async fn fail_open_capacity_is_taken_before_a_document_is_built() {
        let recorder = metrics_util::debugging::DebuggingRecorder::new();
        let snap = recorder.snapshotter();
        let _local = metrics::set_default_local_recorder(&recorder);
        let sink = DlqSink::new(
            &DlqConfig {
                topic: "t-dlq".into(),
                producer_properties: vec![("bootstrap.servers".into(), "127.0.0.1:1".into())],
                max_in_flight: 2,
                send_timeout: Duration::from_secs(1),
                fail_closed: false,
                include_payload: true,
                payload_max_bytes: 10,
            },
            Arc::new(DlqHealth::default()),
        )
        .unwrap();
        let a = sink.reserve(0, 1, "invalid_protobuf");
        let b = sink.reserve(0, 2, "invalid_protobuf");
        assert!(a.is_some() && b.is_some());
        assert!(
            sink.reserve(0, 3, "invalid_protobuf").is_none(),
            "at the limit"
        );
        drop(a);
        assert!(
            sink.reserve(0, 4, "invalid_protobuf").is_some(),
            "a permit came back"
        );
        let dropped: u64 = telemetry::test_counters(&snap, telemetry::DLQ_SEND_FAILURES)
            .iter()
            .filter(|(reason, _)| reason == "backpressure")
            .map(|(_, n)| n)
            .sum();
        assert_eq!(dropped, 1);
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
            SendError::UnknownTopic
        );
        for code in [
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::TopicAuthorizationFailed,
        ] {
            assert_eq!(
                classify(&KafkaError::MessageProduction(code)),
                SendError::Permanent,
                "{code:?}"
            );
        }
        assert_eq!(
            classify(&KafkaError::MessageProduction(
                RDKafkaErrorCode::BrokerTransportFailure
            )),
            SendError::Kafka,
            "a broker going away is retried"
        );
    }
}
