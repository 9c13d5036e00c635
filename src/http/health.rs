//! Shared service status read by `/health` and `/health/ready`, written by the
//! consumer (rare events: connection state, assignment, halts), never per record
//! except two relaxed atomics.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::OnceLock;

use parking_lot::RwLock;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum KafkaState {
    Starting = 0,
    Connected = 1,
    Disconnected = 2,
}

impl KafkaState {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => KafkaState::Connected,
            2 => KafkaState::Disconnected,
            _ => KafkaState::Starting,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            KafkaState::Starting => "starting",
            KafkaState::Connected => "connected",
            KafkaState::Disconnected => "disconnected",
        }
    }
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct HaltedThread {
    pub thread_id: String,
    pub held_messages: usize,
    pub dropped_messages: u64,
    pub missing: u64,
    pub at_sequence: u64,
    pub halted_at_unix_ms: i64,
}

pub struct Status {
    dlq: std::sync::Arc<crate::dlq::sink::DlqHealth>,
    dlq_fail_closed: bool,
    kafka: AtomicU8,
    assigned_partitions: AtomicUsize,
    consuming: AtomicBool,
    shutting_down: AtomicBool,
    pub records_processed: AtomicU64,
    pub last_record_unix_ms: AtomicI64,
    halted: RwLock<Vec<HaltedThread>>,
    namespace: OnceLock<String>,
    redis: OnceLock<Option<std::sync::Arc<crate::replay::redis::RedisTier>>>,
    admission: OnceLock<std::sync::Arc<crate::http::admission::Admission>>,
}

impl Default for Status {
    fn default() -> Self {
        Self::new(Default::default(), false)
    }
}

impl Status {
    pub fn new(dlq: std::sync::Arc<crate::dlq::sink::DlqHealth>, dlq_fail_closed: bool) -> Self {
        Self {
            dlq,
            dlq_fail_closed,
            kafka: AtomicU8::new(0),
            assigned_partitions: AtomicUsize::new(0),
            consuming: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            records_processed: AtomicU64::new(0),
            last_record_unix_ms: AtomicI64::new(0),
            halted: RwLock::new(Vec::new()),
            namespace: OnceLock::new(),
            redis: OnceLock::new(),
            admission: OnceLock::new(),
        }
    }

    pub fn kafka(&self) -> KafkaState {
        KafkaState::from_u8(self.kafka.load(Ordering::Relaxed))
    }
    pub fn set_kafka(&self, s: KafkaState) {
        self.kafka.store(s as u8, Ordering::Relaxed);
    }
    pub fn assigned_partitions(&self) -> usize {
        self.assigned_partitions.load(Ordering::Relaxed)
    }
    pub fn set_assigned_partitions(&self, n: usize) {
        self.assigned_partitions.store(n, Ordering::Relaxed);
    }
    pub fn set_consuming(&self, v: bool) {
        self.consuming.store(v, Ordering::Relaxed);
    }
    pub fn consuming(&self) -> bool {
        self.consuming.load(Ordering::Relaxed)
    }
    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }
    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }
    pub fn set_halted(&self, v: Vec<HaltedThread>) {
        *self.halted.write() = v;
    }
    pub fn halted(&self) -> Vec<HaltedThread> {
        self.halted.read().clone()
    }
    pub fn set_namespace(&self, ns: String) {
        let _ = self.namespace.set(ns);
    }
    pub fn set_admission(&self, a: std::sync::Arc<crate::http::admission::Admission>) {
        let _ = self.admission.set(a);
    }

    pub fn set_redis(&self, r: Option<std::sync::Arc<crate::replay::redis::RedisTier>>) {
        let _ = self.redis.set(r);
    }

    /// `not_configured`, `healthy`, or `degraded` while Redis writes fail.
    pub fn redis_state(&self) -> &'static str {
        match self.redis.get().and_then(|r| r.as_ref()) {
            None => "not_configured",
            Some(r) if r.healthy() => "healthy",
            Some(_) => "degraded",
        }
    }

    pub fn namespace(&self) -> &str {
        self.namespace.get().map(String::as_str).unwrap_or("")
    }

    /// Why the bridge is not ready to serve, if it is not.
    pub fn not_ready_reason(&self) -> Option<&'static str> {
        if self.shutting_down() {
            Some("shutting down")
        } else if !self.consuming() {
            Some("consumer not started")
        } else if self.kafka() == KafkaState::Disconnected {
            Some("kafka brokers unreachable")
        } else if self
            .admission
            .get()
            .is_some_and(|a| a.breaker_state() == crate::http::backpressure::BreakerState::Open)
        {
            Some("circuit breaker open: backpressure critical, new clients refused (1013)")
        } else if self.assigned_partitions() == 0 {
            Some("no partitions assigned to this consumer yet")
        } else {
            None
        }
    }

    /// The `/health` document. An idle topic is healthy: health never depends
    /// on how recently a record arrived.
    pub fn health_json(&self, connected_clients: usize) -> serde_json::Value {
        let halted = self.halted();
        let kafka = self.kafka();
        let dlq = self.dlq.state();
        let (status, alert) = if kafka == KafkaState::Disconnected {
            ("unhealthy", Some("kafka brokers unreachable".to_string()))
        } else if dlq == "degraded" {
            let effect = if self.dlq_fail_closed {
                "DLQ_FAIL_CLOSED: consumption pauses until it recovers"
            } else {
                "records that fail are not reaching the DLQ topic"
            };
            ("degraded", Some(format!("DLQ writes failing: {effect}")))
        } else if self
            .admission
            .get()
            .is_some_and(|a| a.breaker_state() == crate::http::backpressure::BreakerState::Open)
        {
            ("degraded", Some("circuit breaker open: new WebSocket clients are refused with 1013 until the backpressure level recovers".to_string()))
        } else if !halted.is_empty() {
            ("degraded", Some(format!("{} thread(s) halted by GAP_POLICY=halt; resume with POST /admin/threads/<id>/resume", halted.len())))
        } else {
            ("healthy", None)
        };
        let last = self.last_record_unix_ms.load(Ordering::Relaxed);
        let mut doc = serde_json::json!({
            "status": status,
            "kafka_status": kafka.as_str(),
            "websocket_status": if self.shutting_down() { "closing" } else { "serving" },
            "dlq_health": dlq,
            "dlq_mode": if self.dlq_fail_closed { "fail_closed" } else { "fail_open" },
            "dlq_in_flight": self.dlq.in_flight.load(Ordering::Relaxed),
            "connected_clients": connected_clients,
            "assigned_partitions": self.assigned_partitions(),
            "records_processed": self.records_processed.load(Ordering::Relaxed),
            "last_record_unix_ms": (last > 0).then_some(last),
            "halted_threads": halted,
            "replay_redis": self.redis_state(),
            "backpressure": self.admission.get().map(|a| {
                let level = a.level();
                serde_json::json!({
                    "level": level,
                    "category": crate::http::backpressure::category_name(crate::http::backpressure::category(level)),
                    "circuit_breaker": a.breaker_state().as_str(),
                })
            }),
        });
        if let Some(a) = alert {
            doc["alert"] = a.into();
        }
        doc
    }
}
