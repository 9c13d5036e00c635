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
    /// Kafka fetches for replays at once, at most.
    #[arg(long, env = "REPLAY_KAFKA_MAX_CONCURRENT", default_value_t = 4)]
    pub(crate) replay_kafka_max_concurrent: usize,
    /// Replays reading at once, at most; further ones wait their turn (a slow client gives its slot back).
    #[arg(long, env = "REPLAY_MAX_CONCURRENT", default_value_t = 8)]
    pub(crate) replay_max_concurrent: usize,
    /// Records per replay page (memory, Redis or Kafka).
    #[arg(long, env = "REPLAY_PAGE_SIZE", default_value_t = 500)]
    pub(crate) replay_page_size: usize,
    /// Record bytes per replay page read from Redis or Kafka, at most (a page holds at least one record).
    #[arg(long, env = "REPLAY_PAGE_BYTES", default_value_t = 1_048_576)]
    pub(crate) replay_page_bytes: usize,
    /// Records one resume may read from the tiers (matching its filter or not) before the rest is a `replay_budget` gap.
    #[arg(long, env = "REPLAY_MAX_RECORDS", default_value_t = 1_000_000)]
    pub(crate) replay_max_records: u64,
    /// Seconds one resume may run, from its first read (not its wait for a slot), before the rest is a `replay_budget` gap.
    #[arg(long, env = "REPLAY_MAX_SECS", default_value_t = 300)]
    pub(crate) replay_max_secs: u64,
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
    pub(crate) page_bytes: usize,
    pub(crate) budget: ReplayBudget,
    pub(crate) resume_grace: Duration,
}

/// How much one page read from Redis or Kafka may hold: at most `records`
/// records and `bytes` record bytes, and always at least one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PageLimit {
    pub(crate) records: usize,
    pub(crate) bytes: usize,
}

impl PageLimit {
    /// `records` per page and the default 1 MiB.
    #[cfg(test)]
    pub(crate) fn records(records: usize) -> Self {
        Self {
            records,
            bytes: 1_048_576,
        }
    }
}

/// What one resume may read from the tiers before the rest of what it asked
/// for is reported as a `replay_budget` gap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ReplayBudget {
    /// Records read, whether they matched the client's filter or not.
    pub(crate) records: u64,
    /// Time from the replay's first read.
    pub(crate) time: Duration,
}

impl Default for ReplayBudget {
    fn default() -> Self {
        Self {
            records: 1_000_000,
            time: Duration::from_secs(300),
        }
    }
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
        if !(1024..=64 * 1_048_576).contains(&self.replay_page_bytes) {
            return Err(ConfigError::new(
                "REPLAY_PAGE_BYTES",
                "must be between 1024 and 67108864",
            ));
        }
        positive("REPLAY_MAX_RECORDS", self.replay_max_records)?;
        positive("REPLAY_MAX_SECS", self.replay_max_secs)?;
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
            page_bytes: self.replay_page_bytes,
            budget: ReplayBudget {
                records: self.replay_max_records,
                time: Duration::from_secs(self.replay_max_secs),
            },
            resume_grace: Duration::from_millis(self.resume_grace_ms),
        })
    }
}
