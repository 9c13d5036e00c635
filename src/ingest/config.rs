//! The consumer task's settings: group, offsets, record limits, sequence
//! validation, halts and tenant rate limits.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::ingest::halt::HaltLimits;
use crate::ingest::ratelimit::{self, Rate};
use crate::ingest::sequence::{GapPolicy, ValidatorConfig};
use crate::record::decode::DecodeLimits;
use crate::settings::{positive, ConfigError, KafkaArgs};

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

/// librdkafka postpones the next fetch by `fetch.queue.backoff.ms` (1 s by
/// default) once its prefetch queue holds `queued.min.messages`; a consumer
/// that drains the queue faster than that then sits idle until the backoff
/// ends. The bridge's default keeps the fetcher close behind; KAFKA_PROPERTIES
/// can still set it.
const FETCH_QUEUE_BACKOFF: (&str, &str) = ("fetch.queue.backoff.ms", "10");

#[derive(Args, Clone, Debug)]
pub(crate) struct IngestArgs {
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
    /// Largest Kafka record value accepted, in bytes (checked before any copy).
    #[arg(long, env = "MAX_MESSAGE_BYTES", default_value_t = 1_048_576)]
    pub(crate) max_message_bytes: usize,
    /// Largest decompressed body accepted, in bytes.
    #[arg(long, env = "MAX_DECOMPRESSED_BYTES", default_value_t = 4 * 1_048_576)]
    pub(crate) max_decompressed_bytes: usize,
    /// Most events one `event_batch` record may carry (over it: DLQ `batch_too_large`).
    #[arg(long, env = "MAX_BATCH_EVENTS", default_value_t = 10_000)]
    pub(crate) max_batch_events: usize,
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
    /// Threads halted at once, at most (a gap on a further thread is counted in
    /// dashstream_halts_refused_total and delivered as under warn).
    #[arg(long, env = "HALT_MAX_THREADS", default_value_t = 1_000)]
    pub(crate) halt_max_threads: usize,
    /// Bytes held for halted threads in all, at most (beyond: a record is not held; its DLQ copy is the only one).
    #[arg(long, env = "HALT_MAX_HELD_BYTES", default_value_t = 64 * 1_048_576)]
    pub(crate) halt_max_held_bytes: usize,
    /// Default per-tenant rate limit, records per second (unset: no limit).
    #[arg(long, env = "TENANT_RATE_LIMIT")]
    pub(crate) tenant_rate_limit: Option<f64>,
    /// Default per-tenant burst (default: the rate).
    #[arg(long, env = "TENANT_RATE_BURST")]
    pub(crate) tenant_rate_burst: Option<f64>,
    /// Per-tenant overrides: `acme=100:200,beta=5:10` (tenant=rate:burst).
    #[arg(long, env = "TENANT_RATE_LIMITS", default_value = "")]
    pub(crate) tenant_rate_limits: String,
}

/// The consumer task's validated settings.
#[derive(Clone, Debug)]
pub(crate) struct IngestConfig {
    pub(crate) group_id: String,
    /// librdkafka properties of the group consumer.
    pub(crate) consumer_properties: Vec<(String, String)>,
    pub(crate) limits: DecodeLimits,
    pub(crate) gap_policy: GapPolicy,
    pub(crate) sequence: ValidatorConfig,
    pub(crate) halt: HaltLimits,
    pub(crate) tenant_default_rate: Option<Rate>,
    pub(crate) tenant_rate_overrides: BTreeMap<String, Rate>,
}

impl IngestArgs {
    pub(crate) fn validate(&self, kafka: &KafkaArgs) -> Result<IngestConfig, ConfigError> {
        let mut props = kafka.client_properties()?;
        if self.kafka_group_id.trim().is_empty() {
            return Err(ConfigError::new(
                "KAFKA_GROUP_ID (--kafka-group-id)",
                "must not be empty",
            ));
        }
        positive("KAFKA_STATS_INTERVAL_MS", self.kafka_stats_interval_ms)?;
        positive("MAX_MESSAGE_BYTES", self.max_message_bytes as u64)?;
        positive("MAX_DECOMPRESSED_BYTES", self.max_decompressed_bytes as u64)?;
        positive("MAX_BATCH_EVENTS", self.max_batch_events as u64)?;
        if self.max_batch_events > 1_000_000 {
            return Err(ConfigError::new("MAX_BATCH_EVENTS", "at most 1000000"));
        }
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
        positive("HALT_MAX_THREADS", self.halt_max_threads as u64)?;
        positive("HALT_MAX_HELD_BYTES", self.halt_max_held_bytes as u64)?;
        if self.halt_max_threads > 100_000 {
            return Err(ConfigError::new("HALT_MAX_THREADS", "at most 100000"));
        }
        let tenant_default_rate = match self.tenant_rate_limit {
            None => None,
            Some(r) => {
                let rate = Rate {
                    messages_per_second: r,
                    burst: self.tenant_rate_burst.unwrap_or(r),
                };
                rate.validate()
                    .map_err(|e| ConfigError::new("TENANT_RATE_LIMIT / TENANT_RATE_BURST", e))?;
                Some(rate)
            }
        };
        let tenant_rate_overrides = ratelimit::parse_overrides(&self.tenant_rate_limits)
            .map_err(|e| ConfigError::new("TENANT_RATE_LIMITS", e))?;
        if !props.iter().any(|(k, _)| k == FETCH_QUEUE_BACKOFF.0) {
            props.push((FETCH_QUEUE_BACKOFF.0.into(), FETCH_QUEUE_BACKOFF.1.into()));
        }
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
        Ok(IngestConfig {
            group_id: self.kafka_group_id.clone(),
            consumer_properties: props,
            limits: DecodeLimits {
                max_record_bytes: self.max_message_bytes,
                max_decompressed_bytes: self.max_decompressed_bytes,
                max_batch_events: self.max_batch_events,
            },
            gap_policy: self.gap_policy,
            sequence: ValidatorConfig {
                window: self.sequence_window,
                max_threads: self.sequence_max_threads,
                idle: Duration::from_secs(self.sequence_thread_idle_secs),
            },
            halt: HaltLimits {
                max_held: self.halt_max_held_messages,
                max_threads: self.halt_max_threads,
                max_held_bytes: self.halt_max_held_bytes,
            },
            tenant_default_rate,
            tenant_rate_overrides,
        })
    }
}
