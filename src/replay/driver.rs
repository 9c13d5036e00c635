//! Resume: replays history to one client from the replay tiers, in offset
//! order per partition, and returns the cursors it reached: the session
//! reads on from the log at those cursors, so there is no duplicate and no
//! hole at the seam. A session that falls behind the log later catches up
//! through the same reading of the lower tiers ([`catch_up`]).
//!
//! Per partition the driver reads memory pages while the ring reaches back
//! far enough, else Redis pages, else Kafka by offset; an offset no tier can
//! serve is reported as a `gap` frame with its exact range, never skipped
//! silently. Pages are bounded by records and bytes and sent at the
//! client's pace. A replay reads in a replay slot (`REPLAY_MAX_CONCURRENT`
//! at once), which it keeps from page to page while its client takes the
//! pages promptly, and gives back (with its Kafka reader) as soon as one
//! page has been going out for longer than [`SLOW_PAGE`]: a slow or stalled
//! client holds nothing the others wait for. A record read back is decoded
//! only when its wire header says the client's filter may want it. A resume
//! has a budget of records read and of time (`REPLAY_MAX_RECORDS`,
//! `REPLAY_MAX_SECS`, counted from its first read: the wait for its first slot
//! is not); what is left when it runs out is sent as `replay_budget` gaps.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use metrics::Counter;

use crate::hub::log::{Page, Slot};
use crate::hub::notices::LateSince;
use crate::hub::{Filter, Hub};
use crate::record::decode::{self, DecodeLimits};
use crate::record::frame::{control, parse_envelope, Cursor, Frame};
use crate::record::scan;
use crate::record::summary::Summary;
use crate::replay::config::{PageLimit, ReplayBudget};
use crate::replay::out::{Gone, ReplayOut};
use crate::replay::slots::{ReplaySlot, ReplaySlots};
use crate::replay::tiers::{LiveTiers, Tiers};
use crate::replay::{GapReason, ResumeFrom, Watermarks};
use crate::telemetry;

/// What every replay shares.
pub(crate) struct ReplayContext<T = LiveTiers> {
    pub(crate) hub: Arc<Hub>,
    /// Redis and Kafka.
    pub(crate) tiers: T,
    pub(crate) watermarks: Watermarks,
    pub(crate) page: PageLimit,
    pub(crate) limits: DecodeLimits,
    /// Replays reading at once, at most (`REPLAY_MAX_CONCURRENT`); the rest
    /// wait their turn so a storm of resumes cannot starve live delivery.
    pub(crate) replays: ReplaySlots,
    /// What one resume may read.
    pub(crate) budget: ReplayBudget,
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
    /// The budget ended the replay (the rest went out as `replay_budget` gaps).
    pub(crate) budget_exhausted: bool,
    /// Records read from the tiers, and how many of them were decoded.
    pub(crate) read: u64,
    pub(crate) decoded: u64,
}

#[derive(Clone, Copy)]
enum Source {
    Memory,
    Redis,
    Kafka,
}

/// Why a replay stopped reading before the end of what it was asked for.
enum Stop {
    /// The client went away.
    Gone,
    /// The resume's budget ran out; `next` is the first offset of the
    /// current partition not served.
    Budget { next: i64 },
}

impl From<Gone> for Stop {
    fn from(_: Gone) -> Self {
        Stop::Gone
    }
}

type Step = Result<(), Stop>;

/// A row of a Redis page, decoded while the replay slot is held. (Rows live
/// in one page's `Vec`: boxing the frame would cost an allocation per record.)
#[allow(clippy::large_enum_variant)]
enum Row {
    Frame(Frame),
    /// A tombstone, or a record the client's filter refuses.
    Skip,
    /// Expired or unreadable: Kafka may still have it.
    Missing,
}

/// Where a resume's budget ends.
struct Limit {
    records: u64,
    time: std::time::Duration,
    /// Set at the replay's first read: waiting for a first slot is not counted.
    until: Option<tokio::time::Instant>,
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
    /// Records read from any tier, and those of them decoded.
    read: u64,
    decoded: u64,
    /// A resume's budget (a catch-up has none: it is paced by live delivery).
    limit: Option<Limit>,
    /// Records released after the session's starting notice come by their
    /// notice, not here.
    late: LateSince,
    /// The replay slot, kept while the client takes pages promptly.
    slot: Option<ReplaySlot<'a>>,
    /// The Kafka reader, kept with the slot.
    reader: Option<T::Reader>,
    /// When the current page was begun (read, then written).
    page_since: tokio::time::Instant,
    hits: [Counter; 3],
    misses: Counter,
    filtered: Counter,
    decodes: Counter,
}

/// A page that has been going out to its client for longer than this gives
/// the replay's slot (and Kafka reader) back: the client is slow, and others
/// may read meanwhile.
pub(crate) const SLOW_PAGE: std::time::Duration = std::time::Duration::from_secs(1);

/// Awaits one write to the client. Once the page has been going out for
/// [`SLOW_PAGE`], the slot and the reader are given back while the write
/// goes on.
async fn patient<'a, T: Tiers>(
    slot: &mut Option<ReplaySlot<'a>>,
    reader: &mut Option<T::Reader>,
    tiers: &T,
    page_since: tokio::time::Instant,
    write: impl std::future::Future<Output = Result<(), Gone>>,
) -> Result<(), Gone> {
    if slot.is_none() {
        return write.await;
    }
    tokio::pin!(write);
    tokio::select! {
        biased;
        r = &mut write => r,
        _ = tokio::time::sleep_until(page_since + SLOW_PAGE) => {
            *slot = None;
            if let Some(r) = reader.take() {
                tiers.kafka_release(r);
            }
            write.await
        }
    }
}

impl<T: Tiers, O> Drop for Run<'_, T, O> {
    fn drop(&mut self) {
        if let Some(r) = self.reader.take() {
            self.rc.tiers.kafka_release(r);
        }
    }
}

/// Longest a replay waits for a Kafka reader before it reports the range as
/// a `gap` (`kafka_busy`); while it waits it is told so every
/// [`KAFKA_QUEUED_NOTICE_EVERY`].
pub(crate) const KAFKA_WAIT_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);
const KAFKA_QUEUED_NOTICE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
/// A Kafka reader free within this time needs no notice.
const KAFKA_QUIET_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

impl<'a, T: Tiers, O: ReplayOut> Run<'a, T, O> {
    fn new(
        rc: &'a ReplayContext<T>,
        out: &'a mut O,
        filter: Filter,
        sent: &'a mut Sent,
        notices_since: u64,
    ) -> Self {
        Run {
            rc,
            out,
            filter,
            sent,
            replayed: 0,
            gaps: 0,
            missed: 0,
            stale: false,
            read: 0,
            decoded: 0,
            limit: None,
            late: LateSince::new(notices_since),
            slot: None,
            reader: None,
            page_since: tokio::time::Instant::now(),
            hits: [
                metrics::counter!(telemetry::REPLAY_MEMORY_HITS),
                metrics::counter!(telemetry::REPLAY_REDIS_HITS),
                metrics::counter!(telemetry::REPLAY_KAFKA_HITS),
            ],
            misses: metrics::counter!(telemetry::REPLAY_MISSES),
            filtered: metrics::counter!(telemetry::REPLAY_RECORDS_READ, "outcome" => "filtered"),
            decodes: metrics::counter!(telemetry::REPLAY_RECORDS_READ, "outcome" => "decoded"),
        }
    }

    async fn emit(&mut self, f: &Frame, source: Source) -> Step {
        self.hits[source as usize].increment(1);
        let Cursor { partition, offset } = f.cursor;
        if !self.filter.matches(f)
            || self.rc.hub.held.withholds(f)
            || self.late.covers(&self.rc.hub.notices, partition, offset)
            || !self.sent.admit(f)
        {
            return Ok(());
        }
        let rc = self.rc;
        let w = self.out.frame(f);
        patient(
            &mut self.slot,
            &mut self.reader,
            &rc.tiers,
            self.page_since,
            w,
        )
        .await?;
        self.replayed += 1;
        Ok(())
    }

    /// Ends a page: writes out what was buffered and lets live delivery run.
    async fn page_done(&mut self) -> Step {
        let rc = self.rc;
        let w = self.out.flush();
        patient(
            &mut self.slot,
            &mut self.reader,
            &rc.tiers,
            self.page_since,
            w,
        )
        .await?;
        tokio::task::yield_now().await;
        Ok(())
    }

    /// Takes this replay's slot, unless it kept it, before it reads a page.
    async fn turn(&mut self) -> Step {
        if self.slot.is_none() {
            let rc = self.rc;
            self.slot = Some(rc.replays.acquire(&mut *self.out).await?);
        }
        self.page_since = tokio::time::Instant::now();
        if let Some(l) = self.limit.as_mut() {
            l.until.get_or_insert(self.page_since + l.time);
        }
        Ok(())
    }

    /// Stops a resume whose budget ran out; `next` is where it stands.
    fn within_budget(&self, next: i64) -> Step {
        match &self.limit {
            Some(l)
                if self.read >= l.records
                    || l.until.is_some_and(|u| tokio::time::Instant::now() >= u) =>
            {
                Err(Stop::Budget { next })
            }
            _ => Ok(()),
        }
    }

    /// A record read back from Redis or Kafka, as a frame if the client's
    /// filter may want it (decided on its wire header, before decoding).
    /// `Err`: it does not decode.
    fn rebuild(
        &mut self,
        cursor: Cursor,
        kafka_timestamp_ms: Option<i64>,
        value: &[u8],
    ) -> Result<Option<Frame>, decode::DecodeError> {
        self.read += 1;
        let unframed = decode::unframe(Some(value), &self.rc.limits)?;
        if scan::peek(unframed.body()).is_some_and(|p| !self.filter.may_match(&p)) {
            self.filtered.increment(1);
            return Ok(None);
        }
        self.decoded += 1;
        self.decodes.increment(1);
        let summary = Summary::read(&unframed, &self.rc.limits)?;
        Ok(Some(Frame::new(
            cursor,
            kafka_timestamp_ms,
            value,
            summary,
            None,
        )))
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
            .await?;
        Ok(())
    }

    async fn partition(
        &mut self,
        p: i32,
        mut n: i64,
        end: i64,
        initial: Option<i64>,
        mut leading: bool,
    ) -> Result<i64, Stop> {
        let log = &self.rc.hub.log;
        loop {
            self.turn().await?;
            match log.page(p, n, self.rc.page.records) {
                Page::Entries(page) => {
                    if page.is_empty() {
                        break;
                    }
                    self.read += page.len() as u64;
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
                    self.within_budget(n)?;
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
    ) -> Result<i64, Stop> {
        let mut fallback = GapReason::NotInReplayBuffer;
        if self.rc.tiers.has_redis() {
            while n <= upper {
                let Some(rows) = self.redis_rows(p, n, upper).await? else {
                    fallback = GapReason::RedisUnavailable;
                    break;
                };
                if rows.is_empty() {
                    break;
                }
                for (o, row) in rows {
                    if o > n {
                        self.kafka_or_gap(p, n, o - 1, fallback, initial, leading)
                            .await?;
                    }
                    match row {
                        Row::Frame(f) => self.emit(&f, Source::Redis).await?,
                        Row::Skip => {}
                        Row::Missing => {
                            self.kafka_or_gap(p, o, o, fallback, initial, leading)
                                .await?
                        }
                    }
                    n = o + 1;
                    *leading = false;
                }
                self.page_done().await?;
                self.within_budget(n)?;
            }
        }
        if n <= upper {
            self.kafka_or_gap(p, n, upper, fallback, initial, leading)
                .await?;
        }
        Ok(upper + 1)
    }

    /// Reads and decodes one Redis page of `[n, upper]` in a replay slot,
    /// given back before the page is written. `None`: Redis did not answer.
    async fn redis_rows(
        &mut self,
        p: i32,
        n: i64,
        upper: i64,
    ) -> Result<Option<Vec<(i64, Row)>>, Stop> {
        let rc = self.rc;
        self.turn().await?;
        let Ok(rows) = rc.tiers.redis_page(p, n, upper, rc.page).await else {
            return Ok(None);
        };
        let rows = rows
            .into_iter()
            .map(|(o, v)| {
                let row = match v {
                    Some(v) if v.is_empty() => Row::Skip,
                    Some(v) => match parse_envelope(&v) {
                        Ok(env) => {
                            match self.rebuild(env.cursor, env.kafka_timestamp_ms, env.value) {
                                Ok(Some(f)) => Row::Frame(f),
                                Ok(None) => {
                                    self.hits[Source::Redis as usize].increment(1);
                                    Row::Skip
                                }
                                Err(_) => Row::Missing,
                            }
                        }
                        Err(_) => Row::Missing,
                    },
                    None => Row::Missing,
                };
                (o, row)
            })
            .collect();
        Ok(Some(rows))
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
            // A Kafka reader is held for one fetch and its decoding, never
            // across the writes to this client: a slow reader does not
            // block the others.
            self.turn().await?;
            let permit = match self.kafka_turn().await? {
                Ok(permit) => permit,
                Err(reason) => return self.gap(p, n, to, reason, initial, *leading).await,
            };
            let read = self
                .rc
                .tiers
                .kafka_read(&mut self.reader, p, n, to, self.rc.page)
                .await;
            let Ok(fetched) = read else {
                drop(permit);
                return self
                    .gap(p, n, to, GapReason::KafkaUnavailable, initial, *leading)
                    .await;
            };
            let mut frames = Vec::with_capacity(fetched.records.len());
            for rec in &fetched.records {
                let cursor = Cursor {
                    partition: p,
                    offset: rec.offset,
                };
                // Undecodable records went to the DLQ when first consumed.
                match self.rebuild(cursor, rec.timestamp_ms, &rec.value) {
                    Ok(Some(f)) => frames.push(f),
                    Ok(None) => self.hits[Source::Kafka as usize].increment(1),
                    Err(_) => {}
                }
            }
            drop(permit);
            if let Some((a, b)) = fetched.retention_gap {
                self.gap(p, a, b, GapReason::KafkaRetention, initial, *leading)
                    .await?;
            }
            if !fetched.records.is_empty() {
                *leading = false;
            }
            for f in &frames {
                self.emit(f, Source::Kafka).await?;
            }
            self.page_done().await?;
            if fetched.next <= n {
                break;
            }
            n = fetched.next;
            self.within_budget(n)?;
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
/// within the resume's budget, and returns the cursors reached. Records
/// released after notice `notices_since` are left to their notice. `Err`
/// means the client went away.
pub(crate) async fn replay<T: Tiers, O: ReplayOut>(
    rc: &ReplayContext<T>,
    out: &mut O,
    filter: Filter,
    from: ResumeFrom,
    sent: &mut Sent,
    notices_since: u64,
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
                budget_exhausted: false,
                read: 0,
                decoded: 0,
            });
        }
        ResumeFrom::Earliest => HashMap::new(),
        ResumeFrom::Cursor(c) => c.iter().map(|(p, o)| (*p, o.saturating_add(1))).collect(),
    };
    let _replaying = rc.replays.enter();
    next.extend(initial.iter().map(|(p, o)| (*p, *o)));
    for (p, o) in &initial {
        sent.advance(*p, o - 1);
    }
    let mut run = Run::new(rc, out, filter, sent, notices_since);
    run.limit = Some(Limit {
        records: rc.budget.records,
        time: rc.budget.time,
        until: None,
    });
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
    let mut exhausted = false;
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
        let n = if exhausted {
            start
        } else {
            match run
                .partition(p, start, end, initial.get(&p).copied(), leading)
                .await
            {
                Ok(n) => n,
                Err(Stop::Gone) => return Err(Gone),
                Err(Stop::Budget { next }) => {
                    exhausted = true;
                    next
                }
            }
        };
        let n = if exhausted && n <= end {
            run.out
                .control(control::gap(p, n, end, "replay_budget"))
                .await?;
            run.gaps += 1;
            end + 1
        } else {
            n
        };
        run.sent.advance(p, n - 1);
        next.insert(p, n);
    }
    if exhausted {
        let which = if run.read >= rc.budget.records {
            "records"
        } else {
            "time"
        };
        metrics::counter!(telemetry::REPLAY_BUDGET_EXHAUSTED, "budget" => which).increment(1);
    }
    metrics::histogram!(telemetry::REPLAY_DURATION).record(started.elapsed().as_secs_f64());
    Ok(Resumed {
        next,
        replayed: run.replayed,
        gaps: run.gaps,
        stale: run.stale,
        budget_exhausted: exhausted,
        read: run.read,
        decoded: run.decoded,
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
/// behind the log (or found a hole in it): the same reading as a resume,
/// without its budget (live delivery paces it). Offsets no tier holds
/// become `gap` frames with exact ranges.
pub(crate) async fn catch_up<T: Tiers, O: ReplayOut>(
    rc: &ReplayContext<T>,
    out: &mut O,
    filter: &Filter,
    notices_since: u64,
    p: i32,
    from: i64,
    to: i64,
) -> Result<CaughtUp, Gone> {
    if to < from {
        return Ok(CaughtUp::default());
    }
    let _catching_up = rc.hub.enter_catch_up();
    let _replaying = rc.replays.enter();
    let mut sent = Sent::default();
    sent.advance(p, from - 1);
    let mut run = Run::new(rc, out, filter.clone(), &mut sent, notices_since);
    let r = run.lower(p, from, to, None, &mut false).await;
    metrics::counter!(telemetry::CLIENT_LAG_MESSAGES).increment((to - from + 1) as u64);
    if run.missed > 0 {
        metrics::counter!(telemetry::DROPPED_MESSAGES, "reason" => telemetry::DROP_LAGGED_RECEIVER)
            .increment(run.missed);
    }
    match r {
        Ok(_) | Err(Stop::Budget { .. }) => Ok(CaughtUp {
            frames: run.replayed,
        }),
        Err(Stop::Gone) => Err(Gone),
    }
}
