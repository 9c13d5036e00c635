//! The replay tiers' settings: Redis, the memory rings, the Kafka tier,
//! concurrency, page size and the resume grace period.

use std::time::Duration;

use clap::Args;

use crate::hub::log::RingLimits;
use crate::settings::{positive, ConfigError};

#[derive(Args, Clone, Debug)]
pub(crate) struct ReplayArgs {
    /// Redis for the shared replay tier (unset: memory and Kafka tiers only).
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
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
    /// Record bytes waiting for (or being written by) the Redis writer before new ones are dropped (and counted).
    #[arg(long, env = "REPLAY_REDIS_QUEUE_BYTES", default_value_t = 64 * 1_048_576)]
    pub(crate) replay_redis_queue_bytes: usize,
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
}

/// Replay settings (validated).
#[derive(Clone, Debug)]
pub(crate) struct ReplayConfig {
    pub(crate) redis_url: Option<String>,
    pub(crate) redis_ttl_secs: u64,
    pub(crate) redis_max_per_partition: u64,
    pub(crate) redis_queue: usize,
    pub(crate) redis_queue_bytes: usize,
    pub(crate) memory: RingLimits,
    pub(crate) kafka: bool,
    pub(crate) kafka_max_concurrent: usize,
    pub(crate) max_concurrent: usize,
    pub(crate) page: usize,
    pub(crate) resume_grace: Duration,
}

impl ReplayArgs {
    pub(crate) fn validate(&self) -> Result<ReplayConfig, ConfigError> {
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
            "REPLAY_REDIS_QUEUE_BYTES",
            self.replay_redis_queue_bytes as u64,
        )?;
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
        if !(1..=10_000).contains(&self.replay_page_size) {
            return Err(ConfigError::new(
                "REPLAY_PAGE_SIZE",
                "must be between 1 and 10000",
            ));
        }
        if self.resume_grace_ms > 10_000 {
            return Err(ConfigError::new("RESUME_GRACE_MS", "at most 10000"));
        }
        Ok(ReplayConfig {
            // Empty means unset: memory (and Kafka) only.
            redis_url: self.redis_url.clone().filter(|u| !u.is_empty()),
            redis_ttl_secs: self.replay_redis_ttl_secs,
            redis_max_per_partition: self.replay_redis_max_per_partition,
            redis_queue: self.replay_redis_queue,
            redis_queue_bytes: self.replay_redis_queue_bytes,
            memory: RingLimits {
                max_per_partition: self.replay_memory_max_per_partition,
                max_bytes_per_partition: self.replay_memory_max_bytes_per_partition,
            },
            kafka: self.replay_kafka,
            kafka_max_concurrent: self.replay_kafka_max_concurrent,
            max_concurrent: self.replay_max_concurrent,
            page: self.replay_page_size,
            resume_grace: Duration::from_millis(self.resume_grace_ms),
        })
    }
}
