//! Replay stage: the history a reconnecting client resumes from, in three
//! tiers, and the reading of it in offset order per partition.
//!
//! 1. Memory: a bounded ring per partition (by count and bytes), filled by the
//!    hub as frames are published (`hub::ring`).
//! 2. Redis: written by a batching background writer (bounded queue, never
//!    blocks the consumer); shared by every bridge instance on the same
//!    namespace ([`redis`]).
//! 3. Kafka itself: records older than Redis holds are fetched by offset
//!    while the topic still retains them ([`kafka`]).
//!
//! [`driver`] reads them for one client and hands it over to live delivery.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

pub(crate) mod config;
pub(crate) mod driver;
pub(crate) mod kafka;
pub(crate) mod out;
pub(crate) mod redis;
pub(crate) mod request;
pub(crate) mod slots;
pub(crate) mod tiers;

#[cfg(test)]
mod tests;

/// High watermarks per partition from the consumer's statistics: the end of
/// a partition this instance has not read yet.
pub(crate) type Watermarks = Arc<Mutex<HashMap<i32, i64>>>;

/// Where a client asks to resume from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ResumeFrom {
    /// After each partition's last applied offset; partitions not listed
    /// start at the earliest record any tier holds.
    Cursor(HashMap<i32, i64>),
    Earliest,
    Latest,
}

/// Why a range could not be replayed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GapReason {
    /// Not in memory or Redis, and the Kafka tier is off.
    NotInReplayBuffer,
    RedisUnavailable,
    /// Older than the topic's retention.
    KafkaRetention,
    KafkaUnavailable,
    /// Every Kafka reader was busy for longer than the replay may wait.
    KafkaBusy,
}

impl GapReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            GapReason::NotInReplayBuffer => "not_in_replay_buffer",
            GapReason::RedisUnavailable => "redis_unavailable",
            GapReason::KafkaRetention => "kafka_retention",
            GapReason::KafkaUnavailable => "kafka_unavailable",
            GapReason::KafkaBusy => "kafka_busy",
        }
    }
}
