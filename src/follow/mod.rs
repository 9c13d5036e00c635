//! Follow: the partitions another instance owns, read from the shared Redis
//! tier into this instance's log, so that every instance behind a load
//! balancer serves every partition while each record's side effects
//! (sequence checks and their counters, DLQ records, Redis writes, offset
//! commits, halts) happen once, on the instance that owns its partition in
//! the shared consumer group.
//!
//! The owner writes every offset it handled to Redis, in order: the record
//! (its binary envelope), or a tombstone for one it did not deliver (decode
//! error, halted thread, over its tenant's rate). The follower appends
//! exactly that: a halted thread is held, a rate-limited record is not
//! delivered, on every instance alike. An offset missing from Redis while a
//! later one is there (the owner's write queue was full, or its pipelines
//! landed out of order) is waited for `HOLE_WAIT`, then read from Kafka
//! (such a record is delivered if it decodes: its owner's decision is not
//! known). Nothing is committed, validated or sent to the DLQ here.
//!
//! Cost per instance: one pipelined round trip per partition every
//! `FOLLOW_POLL` while idle, and per record one `ZRANGEBYSCORE` entry and one
//! `MGET` value, plus a decode; no Kafka fetches but for holes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use metrics::Counter;
use tokio_util::sync::CancellationToken;

use crate::hub::Hub;
use crate::ingest::status::IngestStatus;
use crate::record::decode::{self, DecodeLimits};
use crate::record::frame::{parse_envelope, Cursor, Frame};
use crate::record::summary::Summary;
use crate::replay::config::PageLimit;
use crate::replay::tiers::{LiveTiers, Tiers};
use crate::telemetry;

pub(crate) mod halts;
pub(crate) mod limits;
#[cfg(test)]
mod tests;

/// How often an idle follower looks for new records.
pub(crate) const FOLLOW_POLL: Duration = Duration::from_millis(10);
/// How long an offset missing below a present one is waited for in Redis.
pub(crate) const HOLE_WAIT: Duration = Duration::from_secs(1);
/// How often the partitions Redis holds are listed again.
const PARTITIONS_EVERY: Duration = Duration::from_secs(1);

/// What the follower needs.
pub(crate) struct Follower<T: Tiers = LiveTiers> {
    pub(crate) hub: Arc<Hub>,
    /// Redis (required), and Kafka for holes.
    pub(crate) tiers: T,
    /// The partitions this instance owns (its consumer's assignment).
    pub(crate) status: Arc<IngestStatus>,
    pub(crate) limits: DecodeLimits,
    pub(crate) page: PageLimit,
}

/// One followed partition.
struct Followed<R> {
    /// The next offset to append.
    next: i64,
    /// Offsets missing from Redis while a later one is there: the first
    /// missing offset of each hole, and when it was first seen.
    holes: BTreeMap<i64, Instant>,
    reader: Option<R>,
}

/// Counters of what was followed.
struct Counts {
    frames: Counter,
    skipped: Counter,
    from_kafka: Counter,
    undecodable: Counter,
    missing: Counter,
}

impl Counts {
    fn new() -> Self {
        let c = |outcome: &'static str| metrics::counter!(telemetry::FOLLOWED_RECORDS, "outcome" => outcome);
        Self {
            frames: c("delivered"),
            skipped: c("not_delivered"),
            from_kafka: c("from_kafka"),
            undecodable: c("undecodable"),
            missing: c("missing"),
        }
    }
}

/// Where following `p` starts: after what the log holds; else, for a
/// partition Redis held when the follower started, after what it holds
/// (live from there: older records are for replays); else, for one that
/// appeared since, at its first offset (everything in it is new).
async fn start_of<T: Tiers>(hub: &Hub, tiers: &T, p: i32, at_start: bool) -> i64 {
    if let Some(h) = hub.log.head(p) {
        return h + 1;
    }
    if at_start {
        return tiers.redis_last(p).await.map_or(0, |l| l + 1);
    }
    let first = PageLimit {
        records: 1,
        bytes: usize::MAX,
    };
    match tiers.redis_page(p, 0, i64::MAX, first).await {
        Ok(rows) => rows.first().map_or(0, |(o, _)| *o),
        Err(_) => 0,
    }
}

/// A frame from a value as Redis holds it (a binary envelope), if it
/// decodes; `None` for a tombstone or anything else.
pub(crate) fn frame_of_envelope(limits: &DecodeLimits, bytes: &[u8]) -> Option<Frame> {
    let env = parse_envelope(bytes).ok()?;
    frame_of(limits, env.cursor, env.kafka_timestamp_ms, env.value)
}

/// A frame from a record value, if it decodes.
fn frame_of(limits: &DecodeLimits, cursor: Cursor, ts: Option<i64>, value: &[u8]) -> Option<Frame> {
    let summary = decode::unframe(Some(value), limits)
        .and_then(|u| Summary::read(&u, limits))
        .ok()?;
    Some(Frame::new(cursor, ts, value, summary, None))
}

impl<T: Tiers> Follower<T> {
    /// Follows until `shutdown`.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let counts = Counts::new();
        let mut parts: BTreeMap<i32, Followed<T::Reader>> = BTreeMap::new();
        let mut known: BTreeSet<i32> = BTreeSet::new();
        let mut heads: BTreeMap<i32, i64> = BTreeMap::new();
        let mut listed: Option<Instant> = None;
        let mut more = false;
        let mut first_round = true;
        loop {
            if !more {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(FOLLOW_POLL) => {}
                }
            } else if shutdown.is_cancelled() {
                break;
            }
            more = false;
            if listed.is_none_or(|t| t.elapsed() >= PARTITIONS_EVERY) {
                known = self.tiers.redis_partitions().await;
                heads = self.tiers.redis_heads().await;
                listed = Some(Instant::now());
            }
            let owned = self.status.owned();
            // A partition this instance now owns is appended by its consumer.
            let gone: Vec<i32> = parts
                .keys()
                .filter(|p| owned.contains(p) || !known.contains(p))
                .copied()
                .collect();
            for p in gone {
                if let Some(r) = parts.remove(&p).and_then(|f| f.reader) {
                    self.tiers.kafka_release(r);
                }
            }
            for p in known.difference(&owned) {
                if !parts.contains_key(p) {
                    let next = start_of(&self.hub, &self.tiers, *p, first_round).await;
                    tracing::info!(
                        partition = *p,
                        next,
                        "following a partition another instance owns"
                    );
                    parts.insert(
                        *p,
                        Followed {
                            next,
                            holes: BTreeMap::new(),
                            reader: None,
                        },
                    );
                }
            }
            self.status.set_following(parts.len());
            metrics::gauge!(telemetry::FOLLOWED_PARTITIONS).set(parts.len() as f64);
            let mut appended = false;
            for (p, f) in parts.iter_mut() {
                // Redis is the buffer: never evict what a reading session has not read.
                if self
                    .hub
                    .readers
                    .must_wait(&self.hub.log, crate::util::unix_ms())
                {
                    break;
                }
                let (n, full) = self.step(*p, f, heads.get(p).copied(), &counts).await;
                appended |= n > 0;
                more |= full;
            }
            if appended {
                self.hub.wake();
            }
            if first_round {
                first_round = false;
                self.status.set_follower_starting(false);
            }
        }
        for (_, f) in parts {
            if let Some(r) = f.reader {
                self.tiers.kafka_release(r);
            }
        }
    }

    /// Appends what Redis holds for `p` from `f.next` on; (appended, page
    /// full). `head`: the last offset the owner says it handled, so that
    /// missing offsets at the end are found too.
    async fn step(
        &self,
        p: i32,
        f: &mut Followed<T::Reader>,
        head: Option<i64>,
        counts: &Counts,
    ) -> (usize, bool) {
        let Ok(rows) = self.tiers.redis_page(p, f.next, i64::MAX, self.page).await else {
            return (0, false);
        };
        let full = rows.len() >= self.page.records;
        let now_ms = crate::util::unix_ms();
        // Every hole this page shows is timed from when it was first seen.
        let now = Instant::now();
        let mut expect = f.next;
        for (o, _) in &rows {
            if *o > expect {
                f.holes.entry(expect).or_insert(now);
            }
            expect = expect.max(*o + 1);
        }
        let mut n = 0;
        for (o, v) in rows {
            if o < f.next {
                continue;
            }
            if o > f.next {
                let since = f.holes.get(&f.next).copied().unwrap_or(now);
                if since.elapsed() < HOLE_WAIT {
                    return (n, false);
                }
                if !self.tiers.has_kafka() {
                    tracing::warn!(partition = p, from = f.next, to = o - 1, "offsets missing from Redis and REPLAY_KAFKA=false: not delivered by this instance");
                    counts.missing.increment((o - f.next) as u64);
                    f.next = o;
                }
                n += self.fill(p, f, o - 1, counts).await;
                if f.next < o {
                    // Kafka could not answer: try again later.
                    return (n, false);
                }
            }
            match v.as_deref() {
                Some([]) | None => {
                    self.hub.skip_at(p, o, now_ms);
                    counts.skipped.increment(1);
                }
                Some(bytes) => match frame_of_envelope(&self.limits, bytes) {
                    Some(fr) => {
                        self.hub.publish_at(&Arc::new(fr), now_ms);
                        counts.frames.increment(1);
                    }
                    None => {
                        self.hub.skip_at(p, o, now_ms);
                        counts.undecodable.increment(1);
                    }
                },
            }
            f.next = o + 1;
            n += 1;
            f.holes = f.holes.split_off(&f.next);
        }
        // Nothing more in Redis, but the owner handled more: a hole at the end.
        if let Some(h) = head.filter(|h| !full && f.next <= *h) {
            let since = *f.holes.entry(f.next).or_insert(now);
            if since.elapsed() >= HOLE_WAIT && self.tiers.has_kafka() {
                n += self.fill(p, f, h, counts).await;
                f.holes = f.holes.split_off(&f.next);
            }
        }
        (n, full)
    }

    /// Reads `[f.next, to]` from Kafka (the offsets Redis does not hold);
    /// advances `f.next` past what Kafka answered for.
    async fn fill(&self, p: i32, f: &mut Followed<T::Reader>, to: i64, counts: &Counts) -> usize {
        let mut n = 0;
        while f.next <= to {
            let Some(_permit) = self.tiers.kafka_permit().await else {
                return n;
            };
            let Ok(fetched) = self
                .tiers
                .kafka_read(&mut f.reader, p, f.next, to, self.page)
                .await
            else {
                return n;
            };
            let now_ms = crate::util::unix_ms();
            for r in &fetched.records {
                let cursor = Cursor {
                    partition: p,
                    offset: r.offset,
                };
                match frame_of(&self.limits, cursor, r.timestamp_ms, &r.value) {
                    Some(fr) => self.hub.publish_at(&Arc::new(fr), now_ms),
                    None => self.hub.skip_at(p, r.offset, now_ms),
                }
                counts.from_kafka.increment(1);
                n += 1;
            }
            if fetched.next <= f.next {
                return n;
            }
            f.next = fetched.next.min(to + 1);
        }
        n
    }
}
