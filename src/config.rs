//! Configuration: every setting in one typed place, read from flags or the
//! environment (each flag has an env var of the same meaning), and validated
//! once at start-up with errors that name the setting.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::ingest::sequence::GapPolicy;

/// Where consumption starts when the group has no committed offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum OffsetReset {
    Earliest,
    Latest,
}

impl OffsetReset {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            OffsetReset::Earliest => "earliest",
            OffsetReset::Latest => "latest",
        }
    }
}

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
        value_delimiter = ','
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
const CONSUMER_ONLY_PREFIXES: &[&str] = &[
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
        for raw in &self.kafka_properties {
            let raw = raw.trim();
            if raw.is_empty() {
                continue;
            }
            let (k, v) = raw.split_once('=').ok_or_else(|| {
                ConfigError::new(
                    "KAFKA_PROPERTIES (--kafka-property)",
                    format!("'{raw}' is not key=value"),
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

/// Settings of the `serve` subcommand.
#[derive(Args, Clone, Debug)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    pub(crate) kafka: KafkaArgs,
    #[arg(long, env = "KAFKA_GROUP_ID", default_value = "kafka-ws-bridge")]
    pub(crate) kafka_group_id: String,
    #[arg(
        long,
        env = "KAFKA_AUTO_OFFSET_RESET",
        value_enum,
        default_value = "earliest"
    )]
    pub(crate) kafka_auto_offset_reset: OffsetReset,
    /// How often librdkafka reports statistics (the source of offset lag).
    #[arg(long, env = "KAFKA_STATS_INTERVAL_MS", default_value_t = 1000)]
    pub(crate) kafka_stats_interval_ms: u64,
    #[arg(long, env = "WEBSOCKET_HOST", default_value = "0.0.0.0")]
    pub(crate) websocket_host: IpAddr,
    #[arg(long, env = "WEBSOCKET_PORT", default_value_t = 3002)]
    pub(crate) websocket_port: u16,
    /// Largest Kafka record value accepted, in bytes (checked before any copy).
    #[arg(long, env = "MAX_MESSAGE_BYTES", default_value_t = 1_048_576)]
    pub(crate) max_message_bytes: usize,
    /// Largest decompressed body accepted, in bytes.
    #[arg(long, env = "MAX_DECOMPRESSED_BYTES", default_value_t = 4 * 1_048_576)]
    pub(crate) max_decompressed_bytes: usize,
    #[arg(long, env = "GAP_POLICY", value_enum, default_value = "warn")]
    pub(crate) gap_policy: GapPolicy,
    /// Recent sequences remembered per thread to tell duplicates from reorders.
    #[arg(long, env = "SEQUENCE_WINDOW", default_value_t = 1024)]
    pub(crate) sequence_window: u32,
    /// Threads whose sequence state is tracked; the least recently seen is evicted beyond this.
    #[arg(long, env = "SEQUENCE_MAX_THREADS", default_value_t = 100_000)]
    pub(crate) sequence_max_threads: usize,
    /// A thread not seen for this long is forgotten (its next message sets a new baseline).
    #[arg(long, env = "SEQUENCE_THREAD_IDLE_SECS", default_value_t = 3600)]
    pub(crate) sequence_thread_idle_secs: u64,
    /// Records held per halted thread before further ones are dropped (and counted).
    #[arg(long, env = "HALT_MAX_HELD_MESSAGES", default_value_t = 10_000)]
    pub(crate) halt_max_held_messages: usize,
    /// Frames queued per client before the client is considered behind.
    #[arg(long, env = "WEBSOCKET_CLIENT_QUEUE_FRAMES", default_value_t = 4096)]
    pub(crate) websocket_client_queue_frames: usize,
    /// Largest message a client may send (control frames), in bytes.
    #[arg(long, env = "WEBSOCKET_MAX_INCOMING_BYTES", default_value_t = 65_536)]
    pub(crate) websocket_max_incoming_bytes: usize,
    /// Most values in one filter list (?threads=, ?types=).
    #[arg(long, env = "WEBSOCKET_MAX_FILTER_VALUES", default_value_t = 256)]
    pub(crate) websocket_max_filter_values: usize,
    /// Bearer token for /admin endpoints. Without it, admin endpoints only answer on a loopback bind.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub(crate) admin_token: Option<String>,
    /// Overrides the resume namespace (default: topic + Kafka cluster id).
    #[arg(long, env = "RESUME_NAMESPACE")]
    pub(crate) resume_namespace: Option<String>,
    /// Upper bound for a graceful shutdown, in seconds.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECS", default_value_t = 4)]
    pub(crate) shutdown_timeout_secs: u64,
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub(crate) log_format: LogFormat,
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
    /// Redis for the shared replay tier (unset: memory and Kafka tiers only).
    #[arg(long, env = "REDIS_URL")]
    pub(crate) redis_url: Option<String>,
    #[arg(long, env = "REPLAY_REDIS_TTL_SECS", default_value_t = 3600)]
    pub(crate) replay_redis_ttl_secs: u64,
    #[arg(
        long,
        env = "REPLAY_REDIS_MAX_PER_PARTITION",
        default_value_t = 100_000
    )]
    pub(crate) replay_redis_max_per_partition: u64,
    /// Entries waiting for the Redis writer before new ones are dropped (and counted).
    #[arg(long, env = "REPLAY_REDIS_QUEUE", default_value_t = 50_000)]
    pub(crate) replay_redis_queue: usize,
    #[arg(
        long,
        env = "REPLAY_MEMORY_MAX_PER_PARTITION",
        default_value_t = 10_000
    )]
    pub(crate) replay_memory_max_per_partition: usize,
    #[arg(long, env = "REPLAY_MEMORY_MAX_BYTES_PER_PARTITION", default_value_t = 32 * 1_048_576)]
    pub(crate) replay_memory_max_bytes_per_partition: usize,
    /// Read records older than memory and Redis back from Kafka by offset.
    #[arg(long, env = "REPLAY_KAFKA", default_value_t = true, action = clap::ArgAction::Set)]
    pub(crate) replay_kafka: bool,
    /// Clients replaying from Kafka at once, at most.
    #[arg(long, env = "REPLAY_KAFKA_MAX_CONCURRENT", default_value_t = 4)]
    pub(crate) replay_kafka_max_concurrent: usize,
    /// Clients replaying at once, at most; further resumes wait their turn.
    #[arg(long, env = "REPLAY_MAX_CONCURRENT", default_value_t = 8)]
    pub(crate) replay_max_concurrent: usize,
    /// Records per replay page (memory, Redis or Kafka).
    #[arg(long, env = "REPLAY_PAGE_SIZE", default_value_t = 500)]
    pub(crate) replay_page_size: usize,
    /// How long a client without ?resume= may take to send its first message before live delivery starts.
    #[arg(long, env = "RESUME_GRACE_MS", default_value_t = 250)]
    pub(crate) resume_grace_ms: u64,
    /// WebSocket clients at most (new ones get HTTP 503 beyond it).
    #[arg(long, env = "WEBSOCKET_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub(crate) websocket_max_connections: usize,
    /// WebSocket clients per client IP at most (new ones get HTTP 429 beyond it).
    #[arg(
        long,
        env = "WEBSOCKET_MAX_CONNECTIONS_PER_IP",
        default_value_t = 1_000
    )]
    pub(crate) websocket_max_connections_per_ip: usize,
    /// Proxies whose X-Forwarded-For is believed: comma-separated IPs or networks (10.0.0.0/8).
    #[arg(long, env = "WEBSOCKET_TRUSTED_PROXY_IPS", value_delimiter = ',')]
    pub(crate) websocket_trusted_proxy_ips: Vec<String>,
    /// Bytes queued per client at most (with WEBSOCKET_CLIENT_QUEUE_FRAMES).
    #[arg(long, env = "WEBSOCKET_CLIENT_QUEUE_BYTES", default_value_t = 16 * 1_048_576)]
    pub(crate) websocket_client_queue_bytes: usize,
    /// A client that keeps losing frames for this long is disconnected with close code 1008.
    #[arg(
        long,
        env = "WEBSOCKET_SLOW_CLIENT_DISCONNECT_SECS",
        default_value_t = 30
    )]
    pub(crate) websocket_slow_client_disconnect_secs: u64,
    /// Priority of message types for slow clients, e.g. `token_chunk=low,error=high`.
    #[arg(long, env = "MESSAGE_PRIORITIES", default_value = "")]
    pub(crate) message_priorities: String,
    /// Weights of the backpressure level: `connections=0.3,client_queues=0.25,pipeline_queues=0.25,memory=0.2`.
    #[arg(long, env = "BACKPRESSURE_WEIGHTS", default_value = "")]
    pub(crate) backpressure_weights: String,
    /// Level at which the circuit breaker opens.
    #[arg(long, env = "BREAKER_CRITICAL", default_value_t = 0.95)]
    pub(crate) breaker_critical: f64,
    /// Level below which a half-open breaker closes.
    #[arg(long, env = "BREAKER_RECOVERY", default_value_t = 0.70)]
    pub(crate) breaker_recovery: f64,
    /// Seconds an open breaker waits before probing (half-open).
    #[arg(long, env = "BREAKER_OPEN_SECS", default_value_t = 10)]
    pub(crate) breaker_open_secs: u64,
    /// New connections admitted per second while half-open.
    #[arg(long, env = "BREAKER_HALF_OPEN_PROBES", default_value_t = 5)]
    pub(crate) breaker_half_open_probes: u32,
    /// A write to a client that takes longer than this ends its session (close 1008).
    #[arg(long, env = "WEBSOCKET_WRITE_TIMEOUT_SECS", default_value_t = 10)]
    pub(crate) websocket_write_timeout_secs: u64,
    /// Kernel send buffer per client socket, in bytes (default: the OS's autotuning). Bounds
    /// what a stalled client holds in the kernel; its backlog then shows in its queue.
    #[arg(long, env = "WEBSOCKET_SEND_BUFFER_BYTES")]
    pub(crate) websocket_send_buffer_bytes: Option<usize>,
    /// Static tokens accepted for /ws (comma-separated); unset with no HMAC secret: no token needed.
    #[arg(
        long,
        env = "WEBSOCKET_AUTH_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub(crate) websocket_auth_tokens: Vec<String>,
    /// Secret for HMAC-SHA256-signed /ws tokens with tenant/thread claims.
    #[arg(long, env = "WEBSOCKET_AUTH_HMAC_SECRET", hide_env_values = true)]
    pub(crate) websocket_auth_hmac_secret: Option<String>,
    /// Origins allowed to open /ws from a browser (comma-separated); unset: any.
    #[arg(long, env = "WEBSOCKET_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub(crate) websocket_allowed_origins: Vec<String>,
    /// Default per-tenant rate limit, records per second (unset: no limit).
    #[arg(long, env = "TENANT_RATE_LIMIT")]
    pub(crate) tenant_rate_limit: Option<f64>,
    /// Default per-tenant burst (default: the rate).
    #[arg(long, env = "TENANT_RATE_BURST")]
    pub(crate) tenant_rate_burst: Option<f64>,
    /// Per-tenant overrides: `acme=100:200,beta=5:10` (tenant=rate:burst).
    #[arg(long, env = "TENANT_RATE_LIMITS", default_value = "")]
    pub(crate) tenant_rate_limits: String,
    /// Memory the process may use, for the backpressure level (default: the cgroup limit, if any).
    #[arg(long, env = "MEMORY_LIMIT_BYTES")]
    pub(crate) memory_limit_bytes: Option<u64>,
}

/// Replay settings (validated).
#[derive(Clone, Debug)]
pub(crate) struct ReplayConfig {
    pub(crate) redis_url: Option<String>,
    pub(crate) redis_ttl_secs: u64,
    pub(crate) redis_max_per_partition: u64,
    pub(crate) redis_queue: usize,
    pub(crate) memory: crate::hub::ring::RingLimits,
    pub(crate) kafka: bool,
    pub(crate) kafka_max_concurrent: usize,
    pub(crate) max_concurrent: usize,
    pub(crate) page: usize,
    pub(crate) resume_grace: Duration,
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

/// The validated configuration the bridge runs with.
#[derive(Clone, Debug)]
pub(crate) struct BridgeConfig {
    pub(crate) brokers: String,
    pub(crate) topic: String,
    pub(crate) group_id: String,
    pub(crate) consumer_properties: Vec<(String, String)>,
    pub(crate) listen: SocketAddr,
    pub(crate) limits: crate::record::decode::DecodeLimits,
    pub(crate) gap_policy: GapPolicy,
    pub(crate) sequence: crate::ingest::sequence::ValidatorConfig,
    pub(crate) halt_max_held: usize,
    pub(crate) max_incoming_bytes: usize,
    pub(crate) max_filter_values: usize,
    pub(crate) admin_token: Option<String>,
    pub(crate) resume_namespace: Option<String>,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) dlq: crate::dlq::sink::DlqConfig,
    pub(crate) replay: ReplayConfig,
    pub(crate) queue: crate::hub::QueueLimits,
    pub(crate) admission: crate::http::admission::AdmissionConfig,
    pub(crate) slow_client_disconnect: Duration,
    pub(crate) write_timeout: Duration,
    pub(crate) send_buffer: Option<usize>,
    pub(crate) auth: crate::http::auth::AuthConfig,
    pub(crate) tenant_default_rate: Option<crate::ingest::ratelimit::Rate>,
    pub(crate) tenant_rate_overrides:
        std::collections::BTreeMap<String, crate::ingest::ratelimit::Rate>,
}

fn validate_topic(setting: &'static str, topic: &str) -> Result<(), ConfigError> {
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

fn positive(setting: &'static str, v: u64) -> Result<(), ConfigError> {
    if v == 0 {
        Err(ConfigError::new(setting, "must be greater than 0"))
    } else {
        Ok(())
    }
}

impl ServeArgs {
    pub(crate) fn validate(&self) -> Result<BridgeConfig, ConfigError> {
        let mut props = self.kafka.client_properties()?;
        if self.kafka_group_id.trim().is_empty() {
            return Err(ConfigError::new(
                "KAFKA_GROUP_ID (--kafka-group-id)",
                "must not be empty",
            ));
        }
        positive("KAFKA_STATS_INTERVAL_MS", self.kafka_stats_interval_ms)?;
        positive("MAX_MESSAGE_BYTES", self.max_message_bytes as u64)?;
        positive("MAX_DECOMPRESSED_BYTES", self.max_decompressed_bytes as u64)?;
        if self.max_message_bytes > 256 * 1_048_576 {
            return Err(ConfigError::new(
                "MAX_MESSAGE_BYTES",
                "at most 268435456 (256 MiB)",
            ));
        }
        if self.max_decompressed_bytes > 1024 * 1_048_576 {
            return Err(ConfigError::new(
                "MAX_DECOMPRESSED_BYTES",
                "at most 1073741824 (1 GiB)",
            ));
        }
        if !(64..=1 << 20).contains(&self.sequence_window) {
            return Err(ConfigError::new(
                "SEQUENCE_WINDOW",
                "must be between 64 and 1048576",
            ));
        }
        positive("SEQUENCE_MAX_THREADS", self.sequence_max_threads as u64)?;
        positive("SEQUENCE_THREAD_IDLE_SECS", self.sequence_thread_idle_secs)?;
        positive("HALT_MAX_HELD_MESSAGES", self.halt_max_held_messages as u64)?;
        positive(
            "WEBSOCKET_CLIENT_QUEUE_FRAMES",
            self.websocket_client_queue_frames as u64,
        )?;
        if self.websocket_max_incoming_bytes < 256 {
            return Err(ConfigError::new(
                "WEBSOCKET_MAX_INCOMING_BYTES",
                "must be at least 256",
            ));
        }
        positive(
            "WEBSOCKET_MAX_FILTER_VALUES",
            self.websocket_max_filter_values as u64,
        )?;
        positive("SHUTDOWN_TIMEOUT_SECS", self.shutdown_timeout_secs)?;
        if let Some(t) = &self.admin_token {
            if t.len() < 16 {
                return Err(ConfigError::new(
                    "ADMIN_TOKEN",
                    "must be at least 16 characters",
                ));
            }
        }
        if let Some(ns) = &self.resume_namespace {
            if ns.is_empty() || ns.len() > 128 || ns.chars().any(|c| c.is_whitespace() || c == ':')
            {
                return Err(ConfigError::new(
                    "RESUME_NAMESPACE",
                    "1-128 characters, no whitespace or ':'",
                ));
            }
        }
        let dlq_topic = self
            .kafka_dlq_topic
            .clone()
            .unwrap_or_else(|| format!("{}-dlq", self.kafka.kafka_topic));
        validate_topic("KAFKA_DLQ_TOPIC", &dlq_topic)?;
        if dlq_topic == self.kafka.kafka_topic {
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
        let mut dlq_kafka = self.kafka.clone();
        if let Some(b) = &self.kafka_dlq_brokers {
            dlq_kafka.kafka_brokers = b.clone();
        }
        let dlq_props = dlq_kafka
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
        if let Some(u) = self.redis_url.as_ref().filter(|u| !u.is_empty()) {
            if !(u.starts_with("redis://")
                || u.starts_with("rediss://")
                || u.starts_with("redis+unix://")
                || u.starts_with("unix://"))
            {
                return Err(ConfigError::new(
                    "REDIS_URL",
                    "must start with redis://, rediss://, redis+unix:// or unix://",
                ));
            }
        }
        positive("REPLAY_REDIS_TTL_SECS", self.replay_redis_ttl_secs)?;
        positive(
            "REPLAY_REDIS_MAX_PER_PARTITION",
            self.replay_redis_max_per_partition,
        )?;
        positive("REPLAY_REDIS_QUEUE", self.replay_redis_queue as u64)?;
        positive(
            "REPLAY_MEMORY_MAX_PER_PARTITION",
            self.replay_memory_max_per_partition as u64,
        )?;
        positive(
            "REPLAY_MEMORY_MAX_BYTES_PER_PARTITION",
            self.replay_memory_max_bytes_per_partition as u64,
        )?;
        positive(
            "REPLAY_KAFKA_MAX_CONCURRENT",
            self.replay_kafka_max_concurrent as u64,
        )?;
        positive("REPLAY_MAX_CONCURRENT", self.replay_max_concurrent as u64)?;
        if self.memory_limit_bytes == Some(0) {
            return Err(ConfigError::new(
                "MEMORY_LIMIT_BYTES",
                "must be > 0 (unset it to use the cgroup limit)",
            ));
        }
        if !(1..=10_000).contains(&self.replay_page_size) {
            return Err(ConfigError::new(
                "REPLAY_PAGE_SIZE",
                "must be between 1 and 10000",
            ));
        }
        if self.resume_grace_ms > 10_000 {
            return Err(ConfigError::new("RESUME_GRACE_MS", "at most 10000"));
        }
        positive(
            "WEBSOCKET_MAX_CONNECTIONS",
            self.websocket_max_connections as u64,
        )?;
        positive(
            "WEBSOCKET_MAX_CONNECTIONS_PER_IP",
            self.websocket_max_connections_per_ip as u64,
        )?;
        positive(
            "WEBSOCKET_CLIENT_QUEUE_BYTES",
            self.websocket_client_queue_bytes as u64,
        )?;
        positive(
            "WEBSOCKET_SLOW_CLIENT_DISCONNECT_SECS",
            self.websocket_slow_client_disconnect_secs,
        )?;
        positive("BREAKER_OPEN_SECS", self.breaker_open_secs)?;
        positive(
            "BREAKER_HALF_OPEN_PROBES",
            u64::from(self.breaker_half_open_probes),
        )?;
        positive(
            "WEBSOCKET_WRITE_TIMEOUT_SECS",
            self.websocket_write_timeout_secs,
        )?;
        let trusted_proxies = self
            .websocket_trusted_proxy_ips
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .map(crate::http::admission::IpNet::parse)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ConfigError::new("WEBSOCKET_TRUSTED_PROXY_IPS", e))?;
        let priorities = crate::hub::PriorityTable::parse(&self.message_priorities)
            .map_err(|e| ConfigError::new("MESSAGE_PRIORITIES", e))?;
        let weights = if self.backpressure_weights.trim().is_empty() {
            crate::http::backpressure::Weights::default()
        } else {
            crate::http::backpressure::Weights::parse(&self.backpressure_weights)
                .map_err(|e| ConfigError::new("BACKPRESSURE_WEIGHTS", e))?
        };
        if !(0.0 < self.breaker_recovery
            && self.breaker_recovery < self.breaker_critical
            && self.breaker_critical <= 1.0)
        {
            return Err(ConfigError::new(
                "BREAKER_RECOVERY / BREAKER_CRITICAL",
                "need 0 < recovery < critical ≤ 1",
            ));
        }
        if self
            .websocket_auth_tokens
            .iter()
            .any(|t| !t.trim().is_empty() && t.trim().len() < 16)
        {
            return Err(ConfigError::new(
                "WEBSOCKET_AUTH_TOKENS",
                "each token must be at least 16 characters",
            ));
        }
        if self
            .websocket_auth_hmac_secret
            .as_ref()
            .is_some_and(|s| s.len() < 32)
        {
            return Err(ConfigError::new(
                "WEBSOCKET_AUTH_HMAC_SECRET",
                "must be at least 32 characters",
            ));
        }
        let tenant_default_rate = match self.tenant_rate_limit {
            None => None,
            Some(r) => {
                let rate = crate::ingest::ratelimit::Rate {
                    messages_per_second: r,
                    burst: self.tenant_rate_burst.unwrap_or(r),
                };
                rate.validate()
                    .map_err(|e| ConfigError::new("TENANT_RATE_LIMIT / TENANT_RATE_BURST", e))?;
                Some(rate)
            }
        };
        let tenant_rate_overrides =
            crate::ingest::ratelimit::parse_overrides(&self.tenant_rate_limits)
                .map_err(|e| ConfigError::new("TENANT_RATE_LIMITS", e))?;
        props.push(("group.id".into(), self.kafka_group_id.clone()));
        props.push((
            "auto.offset.reset".into(),
            self.kafka_auto_offset_reset.as_str().into(),
        ));
        props.push(("enable.auto.offset.store".into(), "false".into()));
        props.push(("enable.auto.commit".into(), "true".into()));
        props.push((
            "statistics.interval.ms".into(),
            self.kafka_stats_interval_ms.to_string(),
        ));
        // Pass-through properties come last so users can tune anything not reserved.
        props.sort_by_key(|(k, _)| {
            !matches!(
                k.as_str(),
                "bootstrap.servers"
                    | "security.protocol"
                    | "group.id"
                    | "auto.offset.reset"
                    | "enable.auto.offset.store"
                    | "enable.auto.commit"
                    | "statistics.interval.ms"
            )
        });
        Ok(BridgeConfig {
            brokers: self.kafka.kafka_brokers.clone(),
            topic: self.kafka.kafka_topic.clone(),
            group_id: self.kafka_group_id.clone(),
            consumer_properties: props,
            listen: SocketAddr::new(self.websocket_host, self.websocket_port),
            limits: crate::record::decode::DecodeLimits {
                max_record_bytes: self.max_message_bytes,
                max_decompressed_bytes: self.max_decompressed_bytes,
            },
            gap_policy: self.gap_policy,
            sequence: crate::ingest::sequence::ValidatorConfig {
                window: self.sequence_window,
                max_threads: self.sequence_max_threads,
                idle: Duration::from_secs(self.sequence_thread_idle_secs),
            },
            halt_max_held: self.halt_max_held_messages,
            max_incoming_bytes: self.websocket_max_incoming_bytes,
            max_filter_values: self.websocket_max_filter_values,
            admin_token: self.admin_token.clone(),
            resume_namespace: self.resume_namespace.clone(),
            shutdown_timeout: Duration::from_secs(self.shutdown_timeout_secs),
            queue: crate::hub::QueueLimits {
                frames: self.websocket_client_queue_frames,
                bytes: self.websocket_client_queue_bytes,
                priorities,
            },
            admission: crate::http::admission::AdmissionConfig {
                max_connections: self.websocket_max_connections,
                max_per_ip: self.websocket_max_connections_per_ip,
                trusted_proxies,
                weights,
                breaker: crate::http::backpressure::BreakerConfig {
                    critical: self.breaker_critical,
                    recovery: self.breaker_recovery,
                    open_for: Duration::from_secs(self.breaker_open_secs),
                    half_open_probes: self.breaker_half_open_probes,
                },
                memory_limit: self
                    .memory_limit_bytes
                    .or_else(crate::http::backpressure::cgroup_memory_limit),
            },
            slow_client_disconnect: Duration::from_secs(self.websocket_slow_client_disconnect_secs),
            write_timeout: Duration::from_secs(self.websocket_write_timeout_secs.max(1)),
            send_buffer: self.websocket_send_buffer_bytes,
            tenant_default_rate,
            tenant_rate_overrides,
            auth: crate::http::auth::AuthConfig {
                static_tokens: self
                    .websocket_auth_tokens
                    .iter()
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty())
                    .collect(),
                hmac_secret: self
                    .websocket_auth_hmac_secret
                    .clone()
                    .map(String::into_bytes),
                allowed_origins: self
                    .websocket_allowed_origins
                    .iter()
                    .map(|o| o.trim().to_string())
                    .filter(|o| !o.is_empty())
                    .collect(),
            },
            replay: ReplayConfig {
                // Empty means unset: memory (and Kafka) only.
                redis_url: self.redis_url.clone().filter(|u| !u.is_empty()),
                redis_ttl_secs: self.replay_redis_ttl_secs,
                redis_max_per_partition: self.replay_redis_max_per_partition,
                redis_queue: self.replay_redis_queue,
                memory: crate::hub::ring::RingLimits {
                    max_per_partition: self.replay_memory_max_per_partition,
                    max_bytes_per_partition: self.replay_memory_max_bytes_per_partition,
                },
                kafka: self.replay_kafka,
                kafka_max_concurrent: self.replay_kafka_max_concurrent,
                max_concurrent: self.replay_max_concurrent,
                page: self.replay_page_size,
                resume_grace: Duration::from_millis(self.resume_grace_ms),
            },
            dlq: crate::dlq::sink::DlqConfig {
                topic: dlq_topic,
                producer_properties: dlq_props,
                max_in_flight: self.max_concurrent_dlq_sends,
                send_timeout: Duration::from_secs(self.dlq_send_timeout_secs),
                fail_closed: self.dlq_fail_closed,
                include_payload: self.dlq_include_payload,
                payload_max_bytes: self.dlq_payload_max_bytes,
            },
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
            for (k, v) in &c.consumer_properties {
                cfg.set(k, v);
            }
            cfg.set("group.id", "t");
            let made: Result<rdkafka::consumer::BaseConsumer, _> = cfg.create();
            assert!(made.is_ok(), "{args:?}: {:?}", made.err());
            assert!(c
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
            .consumer_properties
            .contains(&("session.timeout.ms".into(), "6000".into())));
        assert!(c
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
        let e = parse(&["--kafka-property", "nonsense"])
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("KAFKA_PROPERTIES"), "{e}");
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
