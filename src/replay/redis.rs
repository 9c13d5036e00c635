//! Redis tier of the replay buffer, shared by every bridge instance that uses
//! the same namespace.
//!
//! Keys (namespace from `/version` `resume_namespace`):
//! - `dashstream-replay:{ns}:partition:{p}:offsets` — sorted set, score = member = offset
//! - `dashstream-replay:{ns}:partition:{p}:offset:{o}` — the binary envelope
//!   (`frame.rs`), or an empty value for a record that was not deliverable
//! - `dashstream-replay:{ns}:thread:{t}:sequences` — sorted set, score =
//!   sequence, member = `{p}:{o}`
//! - `dashstream-replay:{ns}:partitions` — set of partitions written
//! - `dashstream-replay:{ns}:halted` — hash of halted threads (`ingest::halt_store`)
//! - `dashstream-replay:{ns}:heads` — hash partition → the last offset its owner handled
//! - `dashstream-replay:{ns}:released`, `…:release_requests`, `…:rate_limits` — shared
//!   operator state of several instances (`follow`)
//!
//! Writes go through a bounded queue to one background task that sends them
//! in pipelines; a full queue drops (and counts) instead of waiting, and a
//! failed pipeline is counted, so Redis latency or an outage never reaches
//! the consumer. Reads are bounded pages, by count and by bytes (ZRANGEBYSCORE … LIMIT, STRLEN, MGET); no
//! SCAN anywhere.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_redis::redis;
use deadpool_redis::{Pool, PoolConfig, Runtime, Timeouts};
use metrics::Counter;
use tokio::sync::mpsc;

use crate::record::frame::Frame;
use crate::replay::config::PageLimit;
use crate::telemetry;

/// The hash of how far each partition's owner has handled it (partition →
/// offset), written once a second, read by followers (`follow`).
pub(crate) const HEADS: &str = "heads";

/// Entries per write pipeline.
pub(crate) const WRITE_BATCH: usize = 500;
/// Limit of one Redis operation (a read, or one write pipeline).
pub(crate) const OP_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Debug)]
pub(crate) struct RedisTierConfig {
    pub(crate) url: String,
    pub(crate) namespace: String,
    pub(crate) ttl_secs: u64,
    pub(crate) max_per_partition: u64,
    pub(crate) queue: usize,
    /// Record bytes queued or in a pipeline, at most.
    pub(crate) queue_bytes: usize,
    pub(crate) batch: usize,
    pub(crate) op_timeout: Duration,
}

/// One write for the background writer.
struct Write {
    partition: i32,
    offset: i64,
    /// Empty for a tombstone.
    value: bytes::Bytes,
    thread: Option<(compact_str::CompactString, u64)>,
    /// Not a record: the partition's offsets restarted; drop its index.
    reset: bool,
}

fn key_prefix(ns: &str) -> String {
    format!("dashstream-replay:{ns}")
}

pub(crate) struct RedisTier {
    pool: Pool,
    cfg: RedisTierConfig,
    tx: mpsc::Sender<Write>,
    dropped: Counter,
    healthy: Arc<AtomicBool>,
    /// Record bytes queued or in a pipeline not yet settled.
    queued_bytes: AtomicUsize,
}

impl RedisTier {
    /// Connects lazily: Redis does not need to be up at start-up.
    pub(crate) fn start(cfg: RedisTierConfig) -> anyhow::Result<Arc<Self>> {
        let mut pc = deadpool_redis::Config::from_url(cfg.url.clone());
        pc.pool = Some(PoolConfig {
            max_size: 16,
            timeouts: Timeouts {
                wait: Some(cfg.op_timeout),
                create: Some(cfg.op_timeout),
                recycle: Some(cfg.op_timeout),
            },
            ..Default::default()
        });
        let pool = pc
            .create_pool(Some(Runtime::Tokio1))
            .map_err(|e| anyhow::anyhow!("REDIS_URL: {e}"))?;
        let (tx, rx) = mpsc::channel(cfg.queue);
        let tier = Arc::new(Self {
            pool,
            cfg,
            tx,
            dropped: metrics::counter!(telemetry::REPLAY_REDIS_WRITE_DROPPED),
            healthy: Arc::new(AtomicBool::new(true)),
            queued_bytes: AtomicUsize::new(0),
        });
        tokio::spawn(writer(tier.clone(), rx));
        Ok(tier)
    }

    pub(crate) fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub(crate) fn queue_len(&self) -> usize {
        self.cfg.queue - self.tx.capacity()
    }

    /// Queues a delivered frame; never waits.
    pub(crate) fn offer(&self, frame: &Frame) {
        let s = &frame.summary;
        let thread =
            (!s.thread.is_empty() && s.sequence > 0).then(|| (s.thread.clone(), s.sequence));
        self.push(Write {
            partition: frame.cursor.partition,
            offset: frame.cursor.offset,
            value: frame.binary(),
            thread,
            reset: false,
        });
    }

    /// Queues a tombstone for a record that was not deliverable.
    pub(crate) fn offer_tombstone(&self, partition: i32, offset: i64) {
        self.push(Write {
            partition,
            offset,
            value: bytes::Bytes::new(),
            thread: None,
            reset: false,
        });
    }

    /// The partition's offsets restarted: its offset index is dropped (after
    /// every write queued before), so replays never mix two histories. The
    /// old values expire with their TTL; new records overwrite theirs.
    pub(crate) fn reset_partition(&self, partition: i32) {
        let w = Write {
            partition,
            offset: -1,
            value: bytes::Bytes::new(),
            thread: None,
            reset: true,
        };
        if self.tx.try_send(w).is_err() {
            self.dropped.increment(1);
        }
    }

    /// Record bytes queued or being written.
    pub(crate) fn queue_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Relaxed)
    }

    /// Queues a write unless the queue is full by entries or by bytes (the
    /// queue keeps envelopes the memory log may already have let go).
    fn push(&self, w: Write) {
        let n = w.value.len();
        let before = self.queued_bytes.fetch_add(n, Ordering::Relaxed);
        if before + n > self.cfg.queue_bytes && before > 0 {
            self.queued_bytes.fetch_sub(n, Ordering::Relaxed);
            self.dropped.increment(1);
            return;
        }
        if self.tx.try_send(w).is_err() {
            self.queued_bytes.fetch_sub(n, Ordering::Relaxed);
            self.dropped.increment(1);
        }
    }

    fn written(&self, bytes: usize) {
        self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    fn offsets_key(&self, p: i32) -> String {
        format!("{}:partition:{p}:offsets", key_prefix(&self.cfg.namespace))
    }

    fn value_key(&self, p: i32, o: i64) -> String {
        format!(
            "{}:partition:{p}:offset:{o}",
            key_prefix(&self.cfg.namespace)
        )
    }

    async fn conn(&self) -> anyhow::Result<deadpool_redis::Connection> {
        Ok(self.pool.get().await?)
    }

    /// Runs one read on a pooled connection, bounded by the operation timeout.
    async fn bounded<T>(
        &self,
        read: impl std::future::Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        tokio::time::timeout(self.cfg.op_timeout, read)
            .await
            .map_err(|_| anyhow::anyhow!("redis read timed out"))?
    }

    /// Offsets in `[from, to]`, within `limit`, with their values (`None`:
    /// the value expired; empty: a tombstone). The values' sizes are asked
    /// first (`STRLEN`), so a page of large records is cut by bytes before
    /// anything is copied.
    pub(crate) async fn page(
        &self,
        p: i32,
        from: i64,
        to: i64,
        limit: PageLimit,
    ) -> anyhow::Result<Vec<(i64, Option<Vec<u8>>)>> {
        self.bounded(async {
            let mut c = self.conn().await?;
            let offsets: Vec<i64> = redis::cmd("ZRANGEBYSCORE")
                .arg(self.offsets_key(p))
                .arg(from)
                .arg(to)
                .arg("LIMIT")
                .arg(0)
                .arg(limit.records)
                .query_async(&mut c)
                .await?;
            if offsets.is_empty() {
                return Ok(vec![]);
            }
            let keys: Vec<String> = offsets.iter().map(|o| self.value_key(p, *o)).collect();
            let mut sizes = redis::pipe();
            for k in &keys {
                sizes.cmd("STRLEN").arg(k);
            }
            let sizes: Vec<usize> = sizes.query_async(&mut c).await?;
            let take = within(sizes, limit.bytes);
            let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                .arg(&keys[..take])
                .query_async(&mut c)
                .await?;
            // A value may have grown since its size was asked (a tombstone
            // replaced by a released record): cut again by what arrived.
            let take = within(
                values.iter().map(|v| v.as_ref().map_or(0, Vec::len)),
                limit.bytes,
            );
            Ok(offsets.into_iter().zip(values).take(take).collect())
        })
        .await
    }

    /// Sets `field` of the namespace's hash `name` (small operator state,
    /// such as halted threads), bounded by the operation timeout.
    pub(crate) async fn hash_set(
        &self,
        name: &str,
        field: &str,
        value: &str,
    ) -> anyhow::Result<()> {
        self.bounded(async {
            let mut c = self.conn().await?;
            let _: i64 = redis::cmd("HSET")
                .arg(format!("{}:{name}", key_prefix(&self.cfg.namespace)))
                .arg(field)
                .arg(value)
                .query_async(&mut c)
                .await?;
            Ok(())
        })
        .await
    }

    /// Removes `field` of the namespace's hash `name`.
    pub(crate) async fn hash_del(&self, name: &str, field: &str) -> anyhow::Result<()> {
        self.bounded(async {
            let mut c = self.conn().await?;
            let _: i64 = redis::cmd("HDEL")
                .arg(format!("{}:{name}", key_prefix(&self.cfg.namespace)))
                .arg(field)
                .query_async(&mut c)
                .await?;
            Ok(())
        })
        .await
    }

    /// Every field of the namespace's hash `name`.
    pub(crate) async fn hash_all(&self, name: &str) -> anyhow::Result<Vec<(String, String)>> {
        self.bounded(async {
            let mut c = self.conn().await?;
            let v: Vec<(String, String)> = redis::cmd("HGETALL")
                .arg(format!("{}:{name}", key_prefix(&self.cfg.namespace)))
                .query_async(&mut c)
                .await?;
            Ok(v)
        })
        .await
    }

    /// Highest offset Redis holds for `p`.
    pub(crate) async fn last(&self, p: i32) -> anyhow::Result<Option<i64>> {
        self.bounded(async {
            let mut c = self.conn().await?;
            let v: Vec<i64> = redis::cmd("ZRANGE")
                .arg(self.offsets_key(p))
                .arg(-1)
                .arg(-1)
                .query_async(&mut c)
                .await?;
            Ok(v.first().copied())
        })
        .await
    }

    /// Partitions Redis holds history for.
    pub(crate) async fn partitions(&self) -> anyhow::Result<BTreeSet<i32>> {
        self.bounded(async {
            let mut c = self.conn().await?;
            let v: Vec<i32> = redis::cmd("SMEMBERS")
                .arg(format!("{}:partitions", key_prefix(&self.cfg.namespace)))
                .query_async(&mut c)
                .await?;
            Ok(v.into_iter().collect())
        })
        .await
    }
}

/// How many of `sizes` fit in `bytes`, at least one.
fn within(sizes: impl IntoIterator<Item = usize>, bytes: usize) -> usize {
    let mut sum = 0usize;
    let mut n = 0;
    for s in sizes {
        sum = sum.saturating_add(s);
        if n > 0 && sum > bytes {
            break;
        }
        n += 1;
    }
    n
}

/// Pipelines in flight at once (the pool has room for them and for reads).
const WRITER_PIPELINES: usize = 4;

/// One batch as a pipeline: per entry a SET with TTL and a ZADD (plus the
/// thread's sequence index); per partition and thread, one trim and TTL.
fn pipeline(tier: &RedisTier, prefix: &str, batch: &[Write]) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    let mut partitions: BTreeSet<i32> = BTreeSet::new();
    let mut threads: BTreeSet<&str> = BTreeSet::new();
    for w in batch {
        if w.reset {
            pipe.cmd("DEL").arg(tier.offsets_key(w.partition)).ignore();
            continue;
        }
        pipe.cmd("SET")
            .arg(tier.value_key(w.partition, w.offset))
            .arg(&w.value[..])
            .arg("EX")
            .arg(tier.cfg.ttl_secs)
            .ignore();
        pipe.cmd("ZADD")
            .arg(tier.offsets_key(w.partition))
            .arg(w.offset)
            .arg(w.offset)
            .ignore();
        if let Some((t, seq)) = &w.thread {
            pipe.cmd("ZADD")
                .arg(format!("{prefix}:thread:{t}:sequences"))
                .arg(*seq)
                .arg(format!("{}:{}", w.partition, w.offset))
                .ignore();
            threads.insert(t);
        }
        partitions.insert(w.partition);
    }
    // Keep the newest max_per_partition entries of each index; older value keys expire by TTL.
    let keep = -(tier.cfg.max_per_partition as i64) - 1;
    let ttl = tier.cfg.ttl_secs;
    for t in threads {
        trim(
            &mut pipe,
            &format!("{prefix}:thread:{t}:sequences"),
            keep,
            ttl,
        );
    }
    for p in partitions {
        trim(&mut pipe, &tier.offsets_key(p), keep, ttl);
        pipe.cmd("SADD")
            .arg(format!("{prefix}:partitions"))
            .arg(p)
            .ignore();
    }
    pipe.cmd("EXPIRE")
        .arg(format!("{prefix}:partitions"))
        .arg(tier.cfg.ttl_secs)
        .ignore();
    pipe
}

/// Trims a sorted-set index to its newest entries and renews its TTL.
fn trim(pipe: &mut redis::Pipeline, key: &str, keep: i64, ttl: u64) {
    pipe.cmd("ZREMRANGEBYRANK")
        .arg(key)
        .arg(0)
        .arg(keep)
        .ignore();
    pipe.cmd("EXPIRE").arg(key).arg(ttl).ignore();
}

async fn writer(tier: Arc<RedisTier>, mut rx: mpsc::Receiver<Write>) {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    let failures = metrics::counter!(telemetry::REPLAY_REDIS_WRITE_FAILURES);
    let written = metrics::counter!(telemetry::REPLAY_REDIS_WRITES);
    let prefix = key_prefix(&tier.cfg.namespace);
    let mut batch = Vec::with_capacity(tier.cfg.batch);
    let mut last_error_log: Option<std::time::Instant> = None;
    let mut settle = |(n, bytes, result): (usize, usize, anyhow::Result<()>)| {
        tier.written(bytes);
        match result {
            Ok(()) => {
                written.increment(n as u64);
                if !tier.healthy.swap(true, Ordering::Relaxed) {
                    tracing::info!("redis replay writes recovered");
                }
            }
            Err(e) => {
                failures.increment(n as u64);
                tier.healthy.store(false, Ordering::Relaxed);
                let now = std::time::Instant::now();
                if last_error_log.is_none_or(|t| now.duration_since(t) > Duration::from_secs(10)) {
                    tracing::warn!(error = %e, lost = n, "redis replay write failed; delivery continues");
                    last_error_log = Some(now);
                }
            }
        }
    };
    // Pipelines run concurrently inside this task; each yields its entry count and result.
    let send = |pipe: redis::Pipeline, n: usize, bytes: usize| {
        let t = tier.clone();
        async move {
            let result = tokio::time::timeout(t.cfg.op_timeout, async {
                let mut c = t.conn().await?;
                pipe.query_async::<()>(&mut c).await?;
                anyhow::Ok(())
            })
            .await
            .map_err(|_| anyhow::anyhow!("timed out"))
            .and_then(|r| r);
            (n, bytes, result)
        }
    };
    let mut in_flight = FuturesUnordered::new();
    loop {
        batch.clear();
        // Settle finished pipelines while waiting for the next batch.
        let n = tokio::select! {
            n = rx.recv_many(&mut batch, tier.cfg.batch) => n,
            Some(r) = in_flight.next(), if !in_flight.is_empty() => {
                settle(r);
                continue;
            }
        };
        if n == 0 {
            break;
        }
        // A reset runs after every write queued before it has settled.
        let limit = if batch.iter().any(|w| w.reset) {
            1
        } else {
            WRITER_PIPELINES
        };
        while in_flight.len() >= limit {
            if let Some(r) = in_flight.next().await {
                settle(r);
            }
        }
        // The pipeline holds its own copy of the values: they count until it settles.
        let bytes = batch.iter().map(|w| w.value.len()).sum();
        in_flight.push(send(pipeline(&tier, &prefix, &batch), n, bytes));
    }
    while let Some(r) = in_flight.next().await {
        settle(r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::dash_stream_message::Message;
    use crate::proto::{DashStreamMessage, Event};

    /// With Redis accepting connections but never answering, what waits for
    /// the writer stays within `queue_bytes`, however many entries fit.
    #[tokio::test]
    async fn a_blackholed_redis_holds_at_most_the_queue_bytes() {
        let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = hole.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut conns = vec![];
            while let Ok((c, _)) = hole.accept().await {
                conns.push(c);
            }
        });
        const LIMIT: usize = 1 << 20;
        let tier = RedisTier::start(RedisTierConfig {
            url: format!("redis://{addr}"),
            namespace: "t".into(),
            ttl_secs: 60,
            max_per_partition: 1000,
            queue: 50_000,
            queue_bytes: LIMIT,
            batch: 4,
            op_timeout: Duration::from_secs(30),
        })
        .unwrap();
        let value = crate::record::decode::encode_record(
            &DashStreamMessage {
                message: Some(Message::Event(Event {
                    node_id: "n".repeat(100_000),
                    ..Default::default()
                })),
            },
            None,
        );
        for o in 0..200 {
            tier.offer(&crate::record::testing::frame_of(0, o, &value));
            assert!(
                tier.queue_bytes() <= LIMIT,
                "after {o}: {}",
                tier.queue_bytes()
            );
            tokio::task::yield_now().await;
        }
        assert!(tier.queue_bytes() > LIMIT / 2, "{}", tier.queue_bytes());
        assert!(tier.queue_len() < 20, "{} entries", tier.queue_len());
        held.abort();
    }

    /// Against the suite's Redis (`scripts/test.sh`): a page of large
    /// records is cut by bytes, however many records it may hold, and the
    /// next page goes on from there.
    #[tokio::test]
    async fn a_page_is_bounded_by_bytes_as_well_as_records() {
        let url = std::env::var("KWB_TEST_REDIS_URL")
            .expect("KWB_TEST_REDIS_URL is not set: run with scripts/test.sh");
        let tier = RedisTier::start(RedisTierConfig {
            url,
            namespace: kwb_testkit::net::unique("pagebytes"),
            ttl_secs: 60,
            max_per_partition: 1000,
            queue: 100,
            queue_bytes: 64 << 20,
            batch: 100,
            op_timeout: Duration::from_secs(5),
        })
        .unwrap();
        const BIG: usize = 300_000;
        let mut c = tier.conn().await.unwrap();
        for o in 0..20i64 {
            let size = if o == 10 { 10 } else { BIG };
            let _: () = redis::pipe()
                .cmd("SET")
                .arg(tier.value_key(0, o))
                .arg(vec![7u8; size])
                .ignore()
                .cmd("ZADD")
                .arg(tier.offsets_key(0))
                .arg(o)
                .arg(o)
                .ignore()
                .query_async(&mut c)
                .await
                .unwrap();
        }
        let limit = PageLimit {
            records: 500,
            bytes: 1 << 20,
        };
        let page = tier.page(0, 0, 19, limit).await.unwrap();
        let offsets: Vec<i64> = page.iter().map(|(o, _)| *o).collect();
        assert_eq!(
            offsets,
            [0, 1, 2],
            "3 × 300 KB fit in 1 MiB, a fourth does not"
        );
        assert!(page
            .iter()
            .all(|(_, v)| v.as_ref().is_some_and(|v| v.len() == BIG)));
        let page = tier.page(0, 3, 19, limit).await.unwrap();
        assert_eq!(page.first().map(|(o, _)| *o), Some(3));
        // One record over the bound still makes a page.
        let tiny = PageLimit {
            records: 500,
            bytes: 1000,
        };
        let page = tier.page(0, 4, 19, tiny).await.unwrap();
        assert_eq!(page.iter().map(|(o, _)| *o).collect::<Vec<_>>(), [4]);
        // Small records fill the page by count.
        let page = tier.page(0, 10, 10, limit).await.unwrap();
        assert_eq!(page.len(), 1);
    }
}
