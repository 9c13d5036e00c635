//! The dead-letter stage's settings: topic, cluster, concurrency, timeout,
//! fail-open or fail-closed, and what of the original record is kept.

use std::time::Duration;

use clap::Args;

use crate::dlq::document::DlqConfig;
use crate::settings::{validate_topic, ConfigError, KafkaArgs, CONSUMER_ONLY_PREFIXES};

#[derive(Args, Clone, Debug)]
pub(crate) struct DlqArgs {
    /// Dead-letter topic (default: `${KAFKA_TOPIC}-dlq`).
    #[arg(long, env = "KAFKA_DLQ_TOPIC")]
    pub(crate) kafka_dlq_topic: Option<String>,
    /// Brokers of the DLQ topic's cluster (default: KAFKA_BROKERS).
    #[arg(long, env = "KAFKA_DLQ_BROKERS")]
    pub(crate) kafka_dlq_brokers: Option<String>,
    /// DLQ sends in flight at most; beyond, fail-open drops (and counts) the DLQ record.
    #[arg(long, env = "MAX_CONCURRENT_DLQ_SENDS", default_value_t = 100)]
    pub(crate) max_concurrent_dlq_sends: usize,
    /// Bound of one DLQ send, in seconds.
    #[arg(long, env = "DLQ_SEND_TIMEOUT_SECS", default_value_t = 5)]
    pub(crate) dlq_send_timeout_secs: u64,
    /// Hold a bad record's offset until the DLQ acknowledges it (pause while the DLQ fails).
    #[arg(long, env = "DLQ_FAIL_CLOSED", default_value_t = false, action = clap::ArgAction::Set)]
    pub(crate) dlq_fail_closed: bool,
    /// Keep the original record (base64) in the DLQ document.
    #[arg(long, env = "DLQ_INCLUDE_PAYLOAD", default_value_t = true, action = clap::ArgAction::Set)]
    pub(crate) dlq_include_payload: bool,
    /// Largest original payload kept in a DLQ document, in bytes (longer ones are truncated and flagged).
    #[arg(long, env = "DLQ_PAYLOAD_MAX_BYTES", default_value_t = 262_144)]
    pub(crate) dlq_payload_max_bytes: usize,
}

impl DlqArgs {
    /// `kafka`: the source cluster's settings, which the DLQ producer shares
    /// unless `KAFKA_DLQ_BROKERS` names another cluster.
    pub(crate) fn validate(&self, kafka: &KafkaArgs) -> Result<DlqConfig, ConfigError> {
        let dlq_topic = self
            .kafka_dlq_topic
            .clone()
            .unwrap_or_else(|| format!("{}-dlq", kafka.kafka_topic));
        validate_topic("KAFKA_DLQ_TOPIC", &dlq_topic)?;
        if dlq_topic == kafka.kafka_topic {
            return Err(ConfigError::new(
                "KAFKA_DLQ_TOPIC",
                "must differ from KAFKA_TOPIC",
            ));
        }
        if !(1..=10_000).contains(&self.max_concurrent_dlq_sends) {
            return Err(ConfigError::new(
                "MAX_CONCURRENT_DLQ_SENDS",
                "must be between 1 and 10000",
            ));
        }
        if !(1..=300).contains(&self.dlq_send_timeout_secs) {
            return Err(ConfigError::new(
                "DLQ_SEND_TIMEOUT_SECS",
                "must be between 1 and 300",
            ));
        }
        if self.dlq_payload_max_bytes > 16 * 1_048_576 {
            return Err(ConfigError::new(
                "DLQ_PAYLOAD_MAX_BYTES",
                "at most 16777216",
            ));
        }
        let mut dlq_kafka = kafka.clone();
        if let Some(b) = &self.kafka_dlq_brokers {
            dlq_kafka.kafka_brokers = b.clone();
        }
        let producer_properties = dlq_kafka
            .client_properties()
            .map_err(|e| {
                if self.kafka_dlq_brokers.is_some() && e.setting.starts_with("KAFKA_BROKERS") {
                    ConfigError::new("KAFKA_DLQ_BROKERS", e.problem)
                } else {
                    e
                }
            })?
            .into_iter()
            .filter(|(k, _)| !CONSUMER_ONLY_PREFIXES.iter().any(|p| k.starts_with(p)))
            .collect();
        Ok(DlqConfig {
            topic: dlq_topic,
            producer_properties,
            max_in_flight: self.max_concurrent_dlq_sends,
            send_timeout: Duration::from_secs(self.dlq_send_timeout_secs),
            fail_closed: self.dlq_fail_closed,
            include_payload: self.dlq_include_payload,
            payload_max_bytes: self.dlq_payload_max_bytes,
        })
    }
}
