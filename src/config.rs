//! `serve`'s configuration: every stage's flags (each flag has an env var of
//! the same meaning), gathered here and validated once at start-up by the
//! stage that owns them, with errors that name the setting. Only checks that
//! span stages live here.

use std::time::Duration;

use clap::Args;

use crate::dlq::config::DlqArgs;
use crate::dlq::document::DlqConfig;
use crate::http::config::{HttpArgs, HttpConfig};
use crate::hub::config::HubArgs;
use crate::hub::DeliveryLimits;
use crate::ingest::config::{IngestArgs, IngestConfig};
use crate::replay::config::{ReplayArgs, ReplayConfig};
use crate::session::config::{SessionArgs, SlowClientLimits};
use crate::settings::{positive, ConfigError, KafkaArgs, LogFormat};

/// Settings of the `serve` subcommand.
#[derive(Args, Clone, Debug)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    pub(crate) kafka: KafkaArgs,
    #[command(flatten)]
    pub(crate) ingest: IngestArgs,
    #[command(flatten)]
    pub(crate) http: HttpArgs,
    #[command(flatten)]
    pub(crate) hub: HubArgs,
    #[command(flatten)]
    pub(crate) session: SessionArgs,
    #[command(flatten)]
    pub(crate) replay: ReplayArgs,
    #[command(flatten)]
    pub(crate) dlq: DlqArgs,
    /// Overrides the resume namespace (default: topic + Kafka cluster id).
    #[arg(long, env = "RESUME_NAMESPACE")]
    pub(crate) resume_namespace: Option<String>,
    /// Upper bound for a graceful shutdown, in seconds.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECS", default_value_t = 4)]
    pub(crate) shutdown_timeout_secs: u64,
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub(crate) log_format: LogFormat,
}

/// The validated configuration the bridge runs with.
#[derive(Clone, Debug)]
pub(crate) struct BridgeConfig {
    pub(crate) brokers: String,
    pub(crate) topic: String,
    pub(crate) ingest: IngestConfig,
    pub(crate) http: HttpConfig,
    pub(crate) delivery: DeliveryLimits,
    /// Settings given that no longer have an effect (warned about at start-up).
    pub(crate) ignored: Vec<&'static str>,
    pub(crate) slow_clients: SlowClientLimits,
    pub(crate) replay: ReplayConfig,
    pub(crate) dlq: DlqConfig,
    pub(crate) resume_namespace: Option<String>,
    pub(crate) shutdown_timeout: Duration,
}

impl ServeArgs {
    pub(crate) fn validate(&self) -> Result<BridgeConfig, ConfigError> {
        let ingest = self.ingest.validate(&self.kafka)?;
        let delivery = self.hub.validate()?;
        let http = self.http.validate()?;
        positive("SHUTDOWN_TIMEOUT_SECS", self.shutdown_timeout_secs)?;
        if let Some(ns) = &self.resume_namespace {
            if ns.is_empty() || ns.len() > 128 || ns.chars().any(|c| c.is_whitespace() || c == ':')
            {
                return Err(ConfigError::new(
                    "RESUME_NAMESPACE",
                    "1-128 characters, no whitespace or ':'",
                ));
            }
        }
        let dlq = self.dlq.validate(&self.kafka)?;
        let replay = self.replay.validate()?;
        let slow_clients = self.session.validate()?;
        Ok(BridgeConfig {
            brokers: self.kafka.kafka_brokers.clone(),
            topic: self.kafka.kafka_topic.clone(),
            ingest,
            http,
            delivery,
            ignored: self.hub.ignored(),
            slow_clients,
            replay,
            dlq,
            resume_namespace: self.resume_namespace.clone(),
            shutdown_timeout: Duration::from_secs(self.shutdown_timeout_secs),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn parse(args: &[&str]) -> ServeArgs {
        let mut v = vec!["t"];
        v.extend_from_slice(args);
        T::try_parse_from(v).expect("parse").serve
    }

    /// TLS and every listed SASL mechanism are compiled into librdkafka: a
    /// client with those settings is created (it connects lazily).
    #[test]
    fn tls_and_sasl_settings_build_real_kafka_clients() {
        let sasl = |protocol: &'static str, mechanism: &'static str| {
            vec![
                "--kafka-security-protocol",
                protocol,
                "--kafka-sasl-mechanism",
                mechanism,
                "--kafka-sasl-username",
                "u",
                "--kafka-sasl-password",
                "p",
            ]
        };
        let cases = [
            vec!["--kafka-security-protocol", "ssl"],
            sasl("sasl_ssl", "SCRAM-SHA-512"),
            sasl("sasl_ssl", "SCRAM-SHA-256"),
            sasl("sasl_plaintext", "PLAIN"),
            sasl("sasl_ssl", "OAUTHBEARER"),
        ];
        for args in &cases {
            let c = parse(args).validate().expect("valid");
            let mut cfg = rdkafka::ClientConfig::new();
            for (k, v) in &c.ingest.consumer_properties {
                cfg.set(k, v);
            }
            cfg.set("group.id", "t");
            let made: Result<rdkafka::consumer::BaseConsumer, _> = cfg.create();
            assert!(made.is_ok(), "{args:?}: {:?}", made.err());
            assert!(c
                .ingest
                .consumer_properties
                .iter()
                .any(|(k, _)| k == "security.protocol"));
        }
        let e = parse(&[
            "--kafka-security-protocol",
            "sasl_ssl",
            "--kafka-sasl-mechanism",
            "GSSAPI",
        ])
        .validate()
        .expect_err("GSSAPI is not built in");
        assert_eq!(e.setting, "KAFKA_SASL_MECHANISM");
    }

    #[test]
    fn pass_through_properties_are_appended() {
        let c = parse(&[
            "--kafka-property",
            "session.timeout.ms=6000",
            "--kafka-property",
            "fetch.min.bytes=1",
        ])
        .validate()
        .expect("valid");
        assert!(c
            .ingest
            .consumer_properties
            .contains(&("session.timeout.ms".into(), "6000".into())));
        assert!(c
            .ingest
            .consumer_properties
            .contains(&("fetch.min.bytes".into(), "1".into())));
    }

    #[test]
    fn reserved_property_is_refused_with_the_setting_named() {
        let e = parse(&["--kafka-property", "enable.auto.offset.store=true"])
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("KAFKA_PROPERTIES"), "{e}");
        assert!(e.to_string().contains("enable.auto.offset.store"), "{e}");
    }

    #[test]
    fn dlq_defaults_follow_the_topic_and_can_point_at_another_cluster() {
        let c = parse(&[
            "--kafka-topic",
            "events",
            "--kafka-property",
            "session.timeout.ms=6000",
        ])
        .validate()
        .unwrap();
        assert_eq!(c.dlq.topic, "events-dlq");
        assert!(!c.dlq.fail_closed);
        assert!(
            c.dlq
                .producer_properties
                .iter()
                .all(|(k, _)| k != "session.timeout.ms"),
            "consumer-only props stay with the consumer"
        );
        let c = parse(&[
            "--kafka-dlq-brokers",
            "other:9093",
            "--dlq-fail-closed",
            "true",
        ])
        .validate()
        .unwrap();
        assert!(c
            .dlq
            .producer_properties
            .contains(&("bootstrap.servers".into(), "other:9093".into())));
        assert!(c.dlq.fail_closed);
        let e = parse(&["--kafka-dlq-brokers", "nohostport"])
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("KAFKA_DLQ_BROKERS"), "{e}");
        let e = parse(&["--max-concurrent-dlq-sends", "0"])
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("MAX_CONCURRENT_DLQ_SENDS"), "{e}");
    }

    #[test]
    fn malformed_property_names_the_setting() {
        let e = parse(&["--kafka-property", "sasl.password:hunter2"])
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("KAFKA_PROPERTIES"), "{e}");
        assert!(e.to_string().contains("entry 1 of 1"), "{e}");
        assert!(
            !e.to_string().contains("hunter2"),
            "a value is never echoed: {e}"
        );
    }

    #[test]
    fn bad_topic_and_zero_limits_are_named() {
        let e = parse(&["--kafka-topic", "bad topic"])
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("KAFKA_TOPIC"), "{e}");
        let e = parse(&["--max-message-bytes", "0"]).validate().unwrap_err();
        assert!(e.to_string().contains("MAX_MESSAGE_BYTES"), "{e}");
        let e = parse(&["--kafka-security-protocol", "sasl_ssl"])
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("KAFKA_SASL_MECHANISM"), "{e}");
        let e = parse(&["--memory-limit-bytes", "0"])
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("MEMORY_LIMIT_BYTES"), "{e}");
        let e = parse(&["--replay-max-concurrent", "0"])
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("REPLAY_MAX_CONCURRENT"), "{e}");
    }
}
