//! The seam between the replay driver and the tiers below the memory rings.
//!
//! The driver reads the rings through the hub itself (they are in memory);
//! Redis and Kafka are reached through [`Tiers`], so the driver's ordering,
//! gap and hand-over rules run unchanged over an in-memory fake in tests.
//! [`LiveTiers`] is the real one: the Redis tier and Kafka readers, used from
//! blocking tasks. A replay keeps its reader while it holds its replay slot
//! (so a run of holes is read by polling forward, not by a seek each) and
//! closes it when it gives the slot up: readers, and their prefetch buffers,
//! are bounded by the slots, not by the clients. (A fresh reader is faster
//! than one moved from another replay's partition and offset.) Fetches take
//! a permit each (`REPLAY_KAFKA_MAX_CONCURRENT`).

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::replay::config::PageLimit;
use crate::replay::kafka::{Fetched, KafkaReader};
use crate::replay::redis::RedisTier;

/// A tier could not answer (timeout, connection, broker error).
#[derive(Debug)]
pub(crate) struct Unavailable;

/// Offsets with their values as Redis returns them (`None`: the value
/// expired; empty: a tombstone).
pub(crate) type RedisRows = Vec<(i64, Option<Vec<u8>>)>;

/// Redis and Kafka as the replay driver sees them.
pub(crate) trait Tiers: Sync {
    /// A Kafka reader and its position, kept by a replay while it holds its slot.
    type Reader: Send;
    /// Held while a replay reads one page from Kafka (`REPLAY_KAFKA_MAX_CONCURRENT`).
    type Permit: Send;

    fn has_redis(&self) -> bool;
    /// Partitions Redis holds history for (none without Redis or on error).
    fn redis_partitions(&self) -> impl Future<Output = BTreeSet<i32>> + Send;
    /// Highest offset Redis holds for `p`.
    fn redis_last(&self, p: i32) -> impl Future<Output = Option<i64>> + Send;
    /// Offsets in `[from, to]`, within `limit`.
    fn redis_page(
        &self,
        p: i32,
        from: i64,
        to: i64,
        limit: PageLimit,
    ) -> impl Future<Output = Result<RedisRows, Unavailable>> + Send;

    /// How far each partition's owner has handled it (`follow`); empty
    /// without Redis or on error.
    fn redis_heads(&self) -> impl Future<Output = std::collections::BTreeMap<i32, i64>> + Send {
        async { std::collections::BTreeMap::new() }
    }

    fn has_kafka(&self) -> bool;
    /// Waits for a Kafka reader permit (`None`: the tier is closed).
    fn kafka_permit(&self) -> impl Future<Output = Option<Self::Permit>> + Send;
    /// Kafka reads that may run at once (`REPLAY_KAFKA_MAX_CONCURRENT`).
    fn kafka_readers(&self) -> usize {
        0
    }
    /// Reads a page of `[from, to]` within `limit` (a permit held), with
    /// `reader`, or a new one.
    fn kafka_read(
        &self,
        reader: &mut Option<Self::Reader>,
        p: i32,
        from: i64,
        to: i64,
        limit: PageLimit,
    ) -> impl Future<Output = Result<Fetched, Unavailable>> + Send;
    /// A replay gave up its slot (or ended): its reader is closed.
    fn kafka_release(&self, _reader: Self::Reader) {}
}

/// Reading back from Kafka: client properties and a bound on concurrent readers.
pub(crate) struct KafkaTier {
    pub(crate) props: Vec<(String, String)>,
    pub(crate) topic: String,
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) max_concurrent: usize,
    /// Limit of one read.
    pub(crate) timeout: Duration,
}

/// Consumer properties the replay reader sets itself.
const REPLAY_READER_SKIPS: &[&str] = &[
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "statistics.interval.ms",
];

/// How long one Kafka read may wait for the broker.
const KAFKA_READ_TIMEOUT: Duration = Duration::from_secs(10);

impl KafkaTier {
    /// Readers use the consumer's client properties (brokers, TLS, SASL),
    /// without group membership; at most `max_concurrent` read at once.
    pub(crate) fn new(
        consumer_props: &[(String, String)],
        topic: &str,
        max_concurrent: usize,
    ) -> Self {
        Self {
            props: consumer_props
                .iter()
                .filter(|(k, _)| !REPLAY_READER_SKIPS.contains(&k.as_str()))
                .cloned()
                .collect(),
            topic: topic.to_string(),
            permits: Arc::new(Semaphore::new(max_concurrent)),
            max_concurrent,
            timeout: KAFKA_READ_TIMEOUT,
        }
    }
}

/// The real tiers: Redis when configured, Kafka unless `REPLAY_KAFKA=false`.
pub(crate) struct LiveTiers {
    pub(crate) redis: Option<Arc<RedisTier>>,
    pub(crate) kafka: Option<KafkaTier>,
}

impl Tiers for LiveTiers {
    type Reader = KafkaReader;
    type Permit = OwnedSemaphorePermit;

    fn has_redis(&self) -> bool {
        self.redis.is_some()
    }

    async fn redis_partitions(&self) -> BTreeSet<i32> {
        match &self.redis {
            Some(r) => r.partitions().await.unwrap_or_default(),
            None => BTreeSet::new(),
        }
    }

    async fn redis_last(&self, p: i32) -> Option<i64> {
        self.redis.as_ref()?.last(p).await.ok().flatten()
    }

    async fn redis_page(
        &self,
        p: i32,
        from: i64,
        to: i64,
        limit: PageLimit,
    ) -> Result<RedisRows, Unavailable> {
        let Some(r) = &self.redis else {
            return Ok(Vec::new());
        };
        r.page(p, from, to, limit).await.map_err(|e| {
            tracing::debug!(error = %e, partition = p, "redis replay read failed");
            Unavailable
        })
    }

    async fn redis_heads(&self) -> std::collections::BTreeMap<i32, i64> {
        let Some(r) = &self.redis else {
            return Default::default();
        };
        r.hash_all(crate::replay::redis::HEADS)
            .await
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(p, o)| Some((p.parse().ok()?, o.parse().ok()?)))
            .collect()
    }

    fn has_kafka(&self) -> bool {
        self.kafka.is_some()
    }

    fn kafka_readers(&self) -> usize {
        self.kafka.as_ref().map_or(0, |k| k.max_concurrent)
    }

    async fn kafka_permit(&self) -> Option<OwnedSemaphorePermit> {
        let k = self.kafka.as_ref()?;
        k.permits.clone().acquire_owned().await.ok()
    }

    async fn kafka_read(
        &self,
        reader: &mut Option<KafkaReader>,
        p: i32,
        from: i64,
        to: i64,
        limit: PageLimit,
    ) -> Result<Fetched, Unavailable> {
        let k = self.kafka.as_ref().ok_or(Unavailable)?;
        let r = match reader.take() {
            Some(r) => r,
            None => {
                let (props, topic) = (k.props.clone(), k.topic.clone());
                match tokio::task::spawn_blocking(move || KafkaReader::new(&props, &topic)).await {
                    Ok(Ok(r)) => r,
                    _ => return Err(Unavailable),
                }
            }
        };
        let timeout = k.timeout;
        let res = tokio::task::spawn_blocking(move || {
            let mut r = r;
            let fetched = r.read(p, from, to, limit, timeout);
            (r, fetched)
        })
        .await;
        match res {
            Ok((r, fetched)) => {
                *reader = Some(r);
                fetched.map_err(|e| {
                    tracing::debug!(error = %e, partition = p, "kafka replay read failed");
                    Unavailable
                })
            }
            Err(_) => Err(Unavailable),
        }
    }

    fn kafka_release(&self, reader: KafkaReader) {
        // Closing a consumer waits for its threads: not on an async worker.
        tokio::task::spawn_blocking(move || drop(reader));
    }
}
