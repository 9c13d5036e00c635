//! What every stage's settings share: the error that names a setting, small
//! checks, and the Kafka client settings (`KafkaArgs`) every command uses
//! (`serve`, `produce`, `tail`, the DLQ tools). Each stage owns its own
//! flags and their validation (`ingest::config`, `dlq::config`, …);
//! `config` gathers them for `serve`.

use clap::{Args, ValueEnum};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum SecurityProtocol {
    Plaintext,
    Ssl,
    #[value(name = "sasl_plaintext", alias = "sasl-plaintext")]
    SaslPlaintext,
    #[value(name = "sasl_ssl", alias = "sasl-ssl")]
    SaslSsl,
}

impl SecurityProtocol {
    fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

/// Kafka connection settings shared by `serve`, `produce` and the tools.
#[derive(Args, Clone, Debug)]
pub(crate) struct KafkaArgs {
    /// Bootstrap servers, comma-separated host:port.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "localhost:9092")]
    pub(crate) kafka_brokers: String,
    /// Topic of DashStream records.
    #[arg(long, env = "KAFKA_TOPIC", default_value = "dashstream-quality")]
    pub(crate) kafka_topic: String,
    /// Extra librdkafka property, key=value (repeatable). Env: comma-separated list.
    #[arg(
        long = "kafka-property",
        env = "KAFKA_PROPERTIES",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub(crate) kafka_properties: Vec<String>,
    #[arg(
        long,
        env = "KAFKA_SECURITY_PROTOCOL",
        value_enum,
        default_value = "plaintext"
    )]
    pub(crate) kafka_security_protocol: SecurityProtocol,
    /// SASL mechanism, e.g. PLAIN, SCRAM-SHA-256, SCRAM-SHA-512.
    #[arg(long, env = "KAFKA_SASL_MECHANISM")]
    pub(crate) kafka_sasl_mechanism: Option<String>,
    #[arg(long, env = "KAFKA_SASL_USERNAME")]
    pub(crate) kafka_sasl_username: Option<String>,
    #[arg(long, env = "KAFKA_SASL_PASSWORD", hide_env_values = true)]
    pub(crate) kafka_sasl_password: Option<String>,
    #[arg(long, env = "KAFKA_SSL_CA_LOCATION")]
    pub(crate) kafka_ssl_ca_location: Option<String>,
    #[arg(long, env = "KAFKA_SSL_CERTIFICATE_LOCATION")]
    pub(crate) kafka_ssl_certificate_location: Option<String>,
    #[arg(long, env = "KAFKA_SSL_KEY_LOCATION")]
    pub(crate) kafka_ssl_key_location: Option<String>,
}

/// Pass-through properties that only a consumer understands (not given to producers).
pub(crate) const CONSUMER_ONLY_PREFIXES: &[&str] = &[
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "max.poll.interval.ms",
    "fetch.",
    "max.partition.fetch.bytes",
    "partition.assignment.strategy",
    "group.",
    "isolation.level",
    "auto.commit.interval.ms",
    "enable.partition.eof",
    "check.crcs",
    "queued.",
];

/// Properties the bridge owns: overriding them would break its delivery guarantees.
const RESERVED_PROPERTIES: &[(&str, &str)] = &[
    ("bootstrap.servers", "KAFKA_BROKERS"),
    ("group.id", "KAFKA_GROUP_ID"),
    (
        "enable.auto.offset.store",
        "none: offsets are stored only after delivery",
    ),
    (
        "enable.auto.commit",
        "none: stored offsets are committed periodically and on shutdown",
    ),
    ("auto.offset.reset", "KAFKA_AUTO_OFFSET_RESET"),
    ("security.protocol", "KAFKA_SECURITY_PROTOCOL"),
    (
        "statistics.interval.ms",
        "KAFKA_STATS_INTERVAL_MS (lag metrics depend on it)",
    ),
];

/// SASL mechanisms this binary's librdkafka supports (built with OpenSSL,
/// without libsasl2: no GSSAPI/Kerberos).
const SASL_MECHANISMS: &[&str] = &["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"];

impl KafkaArgs {
    /// The librdkafka properties every client of the bridge gets: brokers,
    /// security settings, then the validated pass-through properties.
    pub(crate) fn client_properties(&self) -> Result<Vec<(String, String)>, ConfigError> {
        if self.kafka_brokers.trim().is_empty() {
            return Err(ConfigError::new(
                "KAFKA_BROKERS (--kafka-brokers)",
                "must not be empty",
            ));
        }
        for b in self.kafka_brokers.split(',') {
            let b = b.trim();
            if b.is_empty() || !b.contains(':') {
                return Err(ConfigError::new(
                    "KAFKA_BROKERS (--kafka-brokers)",
                    format!("'{b}' is not host:port"),
                ));
            }
        }
        validate_topic("KAFKA_TOPIC (--kafka-topic)", &self.kafka_topic)?;
        let mut props = vec![
            ("bootstrap.servers".to_string(), self.kafka_brokers.clone()),
            (
                "security.protocol".to_string(),
                self.kafka_security_protocol.as_str().to_string(),
            ),
        ];
        let sasl = matches!(
            self.kafka_security_protocol,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        );
        if sasl {
            let mech = self.kafka_sasl_mechanism.clone().ok_or_else(|| {
                ConfigError::new(
                    "KAFKA_SASL_MECHANISM",
                    "required when KAFKA_SECURITY_PROTOCOL is sasl_*",
                )
            })?;
            if !SASL_MECHANISMS.contains(&mech.as_str()) {
                return Err(ConfigError::new(
                    "KAFKA_SASL_MECHANISM",
                    format!(
                        "'{mech}' is not built in; use one of {}",
                        SASL_MECHANISMS.join(", ")
                    ),
                ));
            }
            props.push(("sasl.mechanism".into(), mech));
            if let Some(u) = &self.kafka_sasl_username {
                props.push(("sasl.username".into(), u.clone()));
            }
            if let Some(p) = &self.kafka_sasl_password {
                props.push(("sasl.password".into(), p.clone()));
            }
        }
        for (value, key, name) in [
            (
                &self.kafka_ssl_ca_location,
                "ssl.ca.location",
                "KAFKA_SSL_CA_LOCATION",
            ),
            (
                &self.kafka_ssl_certificate_location,
                "ssl.certificate.location",
                "KAFKA_SSL_CERTIFICATE_LOCATION",
            ),
            (
                &self.kafka_ssl_key_location,
                "ssl.key.location",
                "KAFKA_SSL_KEY_LOCATION",
            ),
        ] {
            if let Some(path) = value {
                if !std::path::Path::new(path).exists() {
                    return Err(ConfigError::new(
                        name,
                        format!("file '{path}' does not exist"),
                    ));
                }
                props.push((key.into(), path.clone()));
            }
        }
        for (i, raw) in self.kafka_properties.iter().enumerate() {
            let raw = raw.trim();
            if raw.is_empty() {
                continue;
            }
            // Values may be passwords: an error names the entry, never its text.
            let (k, v) = raw.split_once('=').ok_or_else(|| {
                ConfigError::new(
                    "KAFKA_PROPERTIES (--kafka-property)",
                    format!(
                        "entry {} of {} is not key=value (its text is not shown: it may hold a secret)",
                        i + 1,
                        self.kafka_properties.len()
                    ),
                )
            })?;
            let k = k.trim();
            if let Some((_, instead)) = RESERVED_PROPERTIES.iter().find(|(r, _)| *r == k) {
                return Err(ConfigError::new(
                    "KAFKA_PROPERTIES (--kafka-property)",
                    format!("'{k}' is set by the bridge; use {instead}"),
                ));
            }
            props.push((k.to_string(), v.trim().to_string()));
        }
        Ok(props)
    }
}

/// A setting that failed validation; the message names it.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {setting}: {problem}")]
pub(crate) struct ConfigError {
    pub(crate) setting: &'static str,
    pub(crate) problem: String,
}

impl ConfigError {
    pub(crate) fn new(setting: &'static str, problem: impl Into<String>) -> Self {
        Self {
            setting,
            problem: problem.into(),
        }
    }
}

pub(crate) fn validate_topic(setting: &'static str, topic: &str) -> Result<(), ConfigError> {
    let ok = !topic.is_empty()
        && topic.len() <= 249
        && topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && topic != "."
        && topic != "..";
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            setting,
            format!("'{topic}' is not a valid Kafka topic name"),
        ))
    }
}

pub(crate) fn positive(setting: &'static str, v: u64) -> Result<(), ConfigError> {
    if v == 0 {
        Err(ConfigError::new(setting, "must be greater than 0"))
    } else {
        Ok(())
    }
}
