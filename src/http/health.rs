//! `/health` and `/health/ready`: one document built from what each stage
//! reports (the consumer's [`IngestStatus`], DLQ health, the Redis writer,
//! admission). Built once at start-up with everything it reads.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::dlq::sink::DlqHealth;
use crate::http::admission::Admission;
use crate::http::backpressure::{self, BreakerState};
use crate::ingest::status::{HaltedThread, IngestStatus, KafkaState};
use crate::replay::redis::RedisTier;

pub(crate) struct Health {
    pub(crate) ingest: Arc<IngestStatus>,
    pub(crate) dlq: Arc<DlqHealth>,
    pub(crate) dlq_fail_closed: bool,
    pub(crate) redis: Option<Arc<RedisTier>>,
    pub(crate) admission: Arc<Admission>,
    pub(crate) namespace: String,
}

impl Health {
    pub(crate) fn shutting_down(&self) -> bool {
        self.ingest.shutting_down()
    }

    pub(crate) fn halted(&self) -> Vec<HaltedThread> {
        self.ingest.halted()
    }

    /// `not_configured`, `healthy`, or `degraded` while Redis writes fail.
    pub(crate) fn redis_state(&self) -> &'static str {
        match self.redis.as_deref() {
            None => "not_configured",
            Some(r) if r.healthy() => "healthy",
            Some(_) => "degraded",
        }
    }

    /// Why the bridge is not ready to serve, if it is not.
    pub(crate) fn not_ready_reason(&self) -> Option<&'static str> {
        if self.ingest.shutting_down() {
            Some("shutting down")
        } else if !self.ingest.consuming() {
            Some("consumer not started")
        } else if self.ingest.kafka() == KafkaState::Disconnected {
            Some("kafka brokers unreachable")
        } else if self.admission.breaker_state() == BreakerState::Open {
            Some("circuit breaker open: backpressure critical, new clients refused (1013)")
        } else if self.ingest.follower_starting() {
            Some("looking up the partitions other instances own in Redis")
        } else if self.ingest.assigned_partitions() == 0 && self.ingest.following() == 0 {
            Some("no partitions assigned to this consumer yet, and none followed from Redis")
        } else {
            None
        }
    }

    /// The `/health` document. An idle topic is healthy: health never depends
    /// on how recently a record arrived.
    pub(crate) fn health_json(&self, connected_clients: usize) -> serde_json::Value {
        let halted = self.ingest.halted_count();
        let kafka = self.ingest.kafka();
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
        } else if self.admission.breaker_state() == BreakerState::Open {
            ("degraded", Some("circuit breaker open: new WebSocket clients are refused with 1013 until the backpressure level recovers".to_string()))
        } else if halted > 0 {
            ("degraded", Some(format!("{halted} thread(s) halted by GAP_POLICY=halt; GET /admin/threads/halted lists them; resume with POST /admin/threads/<id>/resume")))
        } else {
            ("healthy", None)
        };
        let last = self.ingest.last_record_unix_ms.load(Ordering::Relaxed);
        let level = self.admission.level();
        let mut doc = serde_json::json!({
            "status": status,
            "kafka_status": kafka.as_str(),
            "websocket_status": if self.ingest.shutting_down() { "closing" } else { "serving" },
            "dlq_health": dlq,
            "dlq_mode": if self.dlq_fail_closed { "fail_closed" } else { "fail_open" },
            "dlq_in_flight": self.dlq.in_flight.load(Ordering::Relaxed),
            "connected_clients": connected_clients,
            "assigned_partitions": self.ingest.assigned_partitions(),
            "followed_partitions": self.ingest.following(),
            "records_processed": self.ingest.records_processed.load(Ordering::Relaxed),
            "last_record_unix_ms": (last > 0).then_some(last),
            "halted_threads": halted,
            "held_messages": self.ingest.held_messages(),
            "replay_redis": self.redis_state(),
            "backpressure": {
                "level": level,
                "category": backpressure::category_name(backpressure::category(level)),
                "circuit_breaker": self.admission.breaker_state().as_str(),
            },
        });
        if let Some(a) = alert {
            doc["alert"] = a.into();
        }
        doc
    }
}
