//! Resume: replays history to one client from the replay tiers, in offset
//! order per partition, and returns the cursors it reached: the session
//! reads on from the log at those cursors, so there is no duplicate and no
//! hole at the seam. A session that falls behind the log later catches up
//! through the same reading of the lower tiers ([`catch_up`]).
//!
//! Per partition the driver reads memory pages while the ring reaches back
//! far enough, else Redis pages, else Kafka by offset; an offset no tier can
//! serve is reported as a `gap` frame with its exact range, never skipped
//! silently. Pages are bounded and sent at the client's pace, so a long
//! replay holds a bounded amount of memory.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::Counter;

use crate::hub::log::{Page, Slot};
use crate::hub::{Filter, Hub};
use crate::record::decode::{self, DecodeLimits};
use crate::record::frame::{control, Cursor, Frame};
use crate::record::summary::Summary;
use crate::replay::out::{Gone, ReplayOut};
use crate::replay::slots::ReplaySlots;
use crate::replay::tiers::{LiveTiers, Tiers};
use crate::replay::{GapReason, ResumeFrom, Watermarks};
use crate::telemetry;

/// What every replay shares.
pub(crate) struct ReplayContext<T = LiveTiers> {
    pub(crate) hub: Arc<Hub>,
    /// Redis and Kafka.
    pub(crate) tiers: T,
    pub(crate) watermarks: Watermarks,
    pub(crate) page: usize,
    pub(crate) limits: DecodeLimits,
    /// Replays running at once, at most (`REPLAY_MAX_CONCURRENT`); the rest
    /// wait their turn so a storm of resumes cannot starve live delivery.
    pub(crate) replays: ReplaySlots,
}

/// The last data offset a session sent per partition: nothing at or below
/// it is sent again (records released after a halt excepted).
#[derive(Default)]
pub(crate) struct Sent(HashMap<i32, i64>);

impl Sent {
    pub(crate) fn admit(&mut self, f: &Frame) -> bool {
        if f.is_late() {
            return true;
        }
        let Cursor { partition, offset } = f.cursor;
        match self.0.get(&partition) {
            Some(last) if offset <= *last => false,
            _ => {
                self.0.insert(partition, offset);
                true
            }
        }
    }

    fn advance(&mut self, partition: i32, upto: i64) {
        let e = self.0.entry(partition).or_insert(upto);
        *e = (*e).max(upto);
    }
}

/// The result of a resume.
pub(crate) struct Resumed {
    /// Per partition, the next offset to read from the log.
    pub(crate) next: HashMap<i32, i64>,
    pub(crate) replayed: u64,
    pub(crate) gaps: u64,
    /// Some partition's cursor was older than every tier.
    pub(crate) stale: bool,
}

#[derive(Clone, Copy)]
enum Source {
    Memory,
    Redis,
    Kafka,
}

struct Run<'a, T: Tiers, O> {
    rc: &'a ReplayContext<T>,
    out: &'a mut O,
    filter: Filter,
    sent: &'a mut Sent,
    replayed: u64,
    gaps: u64,
    /// Offsets inside the gaps.
    missed: u64,
    stale: bool,
    reader: Option<T::Reader>,
    hits: [Counter; 3],
    misses: Counter,
}

type Step = Result<(), Gone>;

/// Longest a replay waits for a Kafka reader before it reports the range as
/// a `gap` (`kafka_busy`); while it waits it is told so every
/// [`KAFKA_QUEUED_NOTICE_EVERY`].
pub(crate) const KAFKA_WAIT_LIMIT: Duration = Duration::from_secs(30);
const KAFKA_QUEUED_NOTICE_EVERY: Duration = Duration::from_secs(5);
/// A Kafka reader free within this time needs no notice.
const KAFKA_QUIET_WAIT: Duration = Duration::from_millis(100);

impl<'a, T: Tiers, O: ReplayOut> Run<'a, T, O> {
    fn new(rc: &'a ReplayContext<T>, out: &'a mut O, filter: Filter, sent: &'a mut Sent) -> Self {
        Run {
            rc,
            out,
            filter,
            sent,
            replayed: 0,
            gaps: 0,
            missed: 0,
            stale: false,
            reader: None,
            hits: [
                metrics::counter!(telemetry::REPLAY_MEMORY_HITS),
                metrics::counter!(telemetry::REPLAY_REDIS_HITS),
                metrics::counter!(telemetry::REPLAY_KAFKA_HITS),
            ],
            misses: metrics::counter!(telemetry::REPLAY_MISSES),
        }
    }

    async fn emit(&mut self, f: &Frame, source: Source) -> Step {
        self.hits[source as usize].increment(1);
        if !self.filter.matches(f) || !self.sent.admit(f) {
            return Ok(());
        }
        self.out.frame(f).await?;
        self.replayed += 1;
        Ok(())
    }

    /// Ends a page: writes out what was buffered and lets live delivery run.
    async fn page_done(&mut self) -> Step {
        self.out.flush().await?;
        tokio::task::yield_now().await;
        Ok(())
    }

    /// Reports `[from, to]` as missing, unless it lies before the first record
    /// of a partition the client asked for from the beginning (`leading`).
    async fn gap(
        &mut self,
        p: i32,
        from: i64,
        to: i64,
        reason: GapReason,
        initial: Option<i64>,
        leading: bool,
    ) -> Step {
        if leading || to < from {
            return Ok(());
        }
        self.gaps += 1;
        self.missed += (to - from + 1) as u64;
        self.misses.increment((to - from + 1) as u64);
        if initial == Some(from) {
            self.stale = true;
        }
        self.out
            .control(control::gap(p, from, to, reason.as_str()))
            .await
    }

    async fn partition(
        &mut self,
        p: i32,
        mut n: i64,
        end: i64,
        initial: Option<i64>,
        mut leading: bool,
    ) -> Result<i64, Gone> {
        let log = &self.rc.hub.log;
        loop {
            match log.page(p, n, self.rc.page) {
                Page::Entries(page) => {
                    if page.is_empty() {
                        break;
                    }
                    for e in page {
                        if e.offset > n {
                            self.lower(p, n, e.offset - 1, initial, &mut leading)
                                .await?;
                        }
                        if let Slot::Frame(f) = &e.slot {
                            self.emit(f, Source::Memory).await?;
                        }
                        n = e.offset + 1;
                        leading = false;
                    }
                    self.page_done().await?;
                    if n > end {
                        break;
                    }
                }
                Page::Evicted { first, .. } => {
                    n = self.lower(p, n, first - 1, initial, &mut leading).await?;
                }
                Page::Missing => {
                    if n <= end {
                        n = self.lower(p, n, end, initial, &mut leading).await?;
                    }
                    if log.first(p).is_none() {
                        break;
                    }
                }
            }
        }
        Ok(n)
    }

    /// Serves `[n, upper]` from Redis, then Kafka; returns `upper + 1`.
    async fn lower(
        &mut self,
        p: i32,
        mut n: i64,
        upper: i64,
        initial: Option<i64>,
        leading: &mut bool,
    ) -> Result<i64, Gone> {
        let mut fallback = GapReason::NotInReplayBuffer;
        if self.rc.tiers.has_redis() {
            while n <= upper {
                match self.rc.tiers.redis_page(p, n, upper, self.rc.page).await {
                    Ok(rows) if rows.is_empty() => break,
                    Ok(rows) => {
                        for (o, v) in rows {
                            if o > n {
                                self.kafka_or_gap(p, n, o - 1, fallback, initial, leading)
                                    .await?;
                            }
                            match v {
                                Some(v) if v.is_empty() => {}
                                Some(v) => match Frame::from_envelope(&v, &self.rc.limits) {
                                    Ok(f) => self.emit(&f, Source::Redis).await?,
                                    Err(_) => {
                                        self.kafka_or_gap(p, o, o, fallback, initial, leading)
                                            .await?
                                    }
                                },
                                None => {
                                    self.kafka_or_gap(p, o, o, fallback, initial, leading)
                                        .await?
                                }
                            }
                            n = o + 1;
                            *leading = false;
                        }
                        self.page_done().await?;
                    }
                    Err(_) => {
                        fallback = GapReason::RedisUnavailable;
                        break;
                    }
                }
            }
        }
        if n <= upper {
            self.kafka_or_gap(p, n, upper, fallback, initial, leading)
                .await?;
        }
        Ok(upper + 1)
    }

    async fn kafka_or_gap(
        &mut self,
        p: i32,
        from: i64,
        to: i64,
        fallback: GapReason,
        initial: Option<i64>,
        leading: &mut bool,
    ) -> Step {
        if !self.rc.tiers.has_kafka() {
            return self.gap(p, from, to, fallback, initial, *leading).await;
        }
        let mut n = from;
        while n <= to {
            // A Kafka reader permit is held for one fetch, never across the
            // writes to this client: a slow reader does not block the others.
            let permit = match self.kafka_turn().await? {
                Ok(permit) => permit,
                Err(reason) => return self.gap(p, n, to, reason, initial, *leading).await,
            };
            let read = self
                .rc
                .tiers
                .kafka_read(&mut self.reader, p, n, to, self.rc.page)
                .await;
            drop(permit);
            let Ok(fetched) = read else {
                return self
                    .gap(p, n, to, GapReason::KafkaUnavailable, initial, *leading)
                    .await;
            };
            if let Some((a, b)) = fetched.retention_gap {
                self.gap(p, a, b, GapReason::KafkaRetention, initial, *leading)
                    .await?;
            }
            for rec in fetched.records {
                // Undecodable records went to the DLQ when first consumed.
                if let Ok(d) = decode::decode(Some(&rec.value), &self.rc.limits) {
                    let f = Frame::new(
                        Cursor {
                            partition: p,
                            offset: rec.offset,
                        },
                        rec.timestamp_ms,
                        &rec.value,
                        Summary::of(&d),
                        None,
                    );
                    self.emit(&f, Source::Kafka).await?;
                }
                *leading = false;
            }
            self.page_done().await?;
            if fetched.next <= n {
                break;
            }
            n = fetched.next;
        }
        Ok(())
    }
}

impl<'a, T: Tiers, O: ReplayOut> Run<'a, T, O> {
    /// Waits for a Kafka reader permit, at most [`KAFKA_WAIT_LIMIT`], telling
    /// the client while it waits (`replay_queued` with `tier: kafka`).
    async fn kafka_turn(&mut self) -> Result<Result<T::Permit, GapReason>, Gone> {
        let started = tokio::time::Instant::now();
        let wait = self.rc.tiers.kafka_permit();
        tokio::pin!(wait);
        let mut next_notice = KAFKA_QUIET_WAIT;
        loop {
            let left = KAFKA_WAIT_LIMIT.saturating_sub(started.elapsed());
            let nap = next_notice.saturating_sub(started.elapsed()).min(left);
            tokio::select! {
                p = &mut wait => return Ok(p.ok_or(GapReason::KafkaUnavailable)),
                _ = tokio::time::sleep(nap) => {}
            }
            if started.elapsed() >= KAFKA_WAIT_LIMIT {
                metrics::counter!(telemetry::REPLAY_KAFKA_WAIT_TIMEOUTS).increment(1);
                return Ok(Err(GapReason::KafkaBusy));
            }
            if started.elapsed() >= next_notice {
                let waited = started.elapsed().as_millis() as u64;
                self.out
                    .control(control::kafka_queued(
                        self.rc.tiers.kafka_readers(),
                        waited,
                        KAFKA_WAIT_LIMIT.as_millis() as u64,
                    ))
                    .await?;
                self.out.flush().await?;
                next_notice = started.elapsed() + KAFKA_QUEUED_NOTICE_EVERY;
            }
        }
    }
}

/// Replays what `from` asks for, up to what the tiers held when it started,
/// and returns the cursors reached. `Err` means the client went away.
pub(crate) async fn replay<T: Tiers, O: ReplayOut>(
    rc: &ReplayContext<T>,
    out: &mut O,
    filter: Filter,
    from: ResumeFrom,
    sent: &mut Sent,
) -> Result<Resumed, Gone> {
    let started = Instant::now();
    let label = match &from {
        ResumeFrom::Cursor(_) => "cursor",
        ResumeFrom::Earliest => "earliest",
        ResumeFrom::Latest => "latest",
    };
    metrics::counter!(telemetry::REPLAY_REQUESTS, "from" => label).increment(1);
    let mut next: HashMap<i32, i64> = HashMap::new();
    let initial: HashMap<i32, i64> = match &from {
        ResumeFrom::Latest => {
            return Ok(Resumed {
                next: live_start(&rc.hub),
                replayed: 0,
                gaps: 0,
                stale: false,
            });
        }
        ResumeFrom::Earliest => HashMap::new(),
        ResumeFrom::Cursor(c) => c.iter().map(|(p, o)| (*p, o.saturating_add(1))).collect(),
    };
    let _slot = rc.replays.acquire(out).await?;
    next.extend(initial.iter().map(|(p, o)| (*p, *o)));
    for (p, o) in &initial {
        sent.advance(*p, o - 1);
    }
    let mut run = Run::new(rc, out, filter, sent);
    let redis_parts: BTreeSet<i32> = rc.tiers.redis_partitions().await;
    let heads = rc.hub.log.heads();
    let marks = rc.watermarks.lock().clone();
    let parts: BTreeSet<i32> = heads
        .keys()
        .chain(marks.keys())
        .chain(next.keys())
        .chain(redis_parts.iter())
        .copied()
        .collect();
    for p in parts {
        let (start, leading) = match next.get(&p) {
            Some(n) => (*n, false),
            None => (0, true),
        };
        let mut end = heads
            .get(&p)
            .copied()
            .or_else(|| marks.get(&p).map(|h| h - 1));
        // Only partitions Redis holds are looked up there: a cursor may name
        // up to 1,024 partitions the bridge has never seen, and those cost
        // nothing (the client keeps its cursor for them).
        if end.is_none() && redis_parts.contains(&p) {
            end = rc.tiers.redis_last(p).await;
        }
        let Some(end) = end else { continue };
        let n = run
            .partition(p, start, end, initial.get(&p).copied(), leading)
            .await?;
        run.sent.advance(p, n - 1);
        next.insert(p, n);
    }
    metrics::histogram!(telemetry::REPLAY_DURATION).record(started.elapsed().as_secs_f64());
    Ok(Resumed {
        next,
        replayed: run.replayed,
        gaps: run.gaps,
        stale: run.stale,
    })
}

/// Cursors of a session that starts live: past every partition's head.
pub(crate) fn live_start(hub: &Hub) -> HashMap<i32, i64> {
    hub.log
        .heads()
        .into_iter()
        .map(|(p, h)| (p, h + 1))
        .collect()
}

/// What a catch-up delivered.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct CaughtUp {
    pub(crate) frames: u64,
}

/// Serves `[from, to]` of `p` from Redis, then Kafka, to a session that fell
/// behind the log (or found a hole in it), in a replay slot: the same reading
/// as a resume. Offsets no tier holds become `gap` frames with exact ranges.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn catch_up<T: Tiers, O: ReplayOut>(
    rc: &ReplayContext<T>,
    out: &mut O,
    filter: &Filter,
    reader: &mut Option<T::Reader>,
    p: i32,
    from: i64,
    to: i64,
) -> Result<CaughtUp, Gone> {
    if to < from {
        return Ok(CaughtUp::default());
    }
    let _catching_up = rc.hub.enter_catch_up();
    let _slot = rc.replays.acquire(out).await?;
    let mut sent = Sent::default();
    sent.advance(p, from - 1);
    let mut run = Run::new(rc, out, filter.clone(), &mut sent);
    run.reader = reader.take();
    let r = run.lower(p, from, to, None, &mut false).await;
    *reader = run.reader.take();
    metrics::counter!(telemetry::CLIENT_LAG_MESSAGES).increment((to - from + 1) as u64);
    if run.missed > 0 {
        metrics::counter!(telemetry::DROPPED_MESSAGES, "reason" => telemetry::DROP_LAGGED_RECEIVER)
            .increment(run.missed);
    }
    r?;
    Ok(CaughtUp {
        frames: run.replayed,
    })
}
