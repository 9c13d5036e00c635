//! A session's reading of the log: per partition, the next offset it reads.
//!
//! Each pass reads a bounded number of slots from the log at the cursors,
//! filters them, writes the matching ones in the client's format and flushes
//! once; then the cursors move on. Nothing is queued per client: a session
//! that reads slowly simply reads later. A cursor that the log no longer
//! reaches (its slots were evicted) catches up from Redis, then Kafka, in a
//! replay slot ([`catch_up`]), and returns to the log where the catch-up
//! ended: no hole, no duplicate. Only offsets no tier holds become `gap`
//! frames.
//!
//! The thread notices and the records released after a halt come first in a
//! pass, in their own order ([`Hub::notices_since`]).

use std::collections::HashMap;

use metrics::{Counter, Histogram};

use crate::hub::log::{Page, Slot};
use crate::hub::notices::{LateSince, Notice};
use crate::hub::readers::ReaderHandle;
use crate::hub::{Filter, Hub, Priority};
use crate::record::frame::{control, Frame};
use crate::replay::driver::{catch_up, ReplayContext};
use crate::replay::out::{Gone, ReplayOut};
use crate::replay::tiers::Tiers;
use crate::telemetry;

/// What a session counts while it writes.
pub(crate) struct DeliveryMetrics {
    pub(crate) frames_sent: Counter,
    pub(crate) e2e_latency: Histogram,
    /// Time from a record's append to the log to its write to this client.
    pub(crate) delivery_delay: Histogram,
    pub(crate) shed: Counter,
}

impl DeliveryMetrics {
    pub(crate) fn new() -> Self {
        Self {
            frames_sent: metrics::counter!(telemetry::FRAMES_SENT),
            e2e_latency: metrics::histogram!(telemetry::E2E_LATENCY_MS),
            delivery_delay: metrics::histogram!(telemetry::CLIENT_QUEUE_AGE),
            shed: metrics::counter!(telemetry::DROPPED_MESSAGES, "reason" => telemetry::DROP_BACKPRESSURE_SHED),
        }
    }
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Pass {
    /// Data frames written.
    pub(crate) frames: u64,
    /// The pass stopped at its budget: more is readable now.
    pub(crate) more: bool,
    /// How long the oldest record this session has not read yet has been
    /// in the log (0: it has read everything).
    pub(crate) behind_ms: i64,
}

/// One session's cursors and registration.
pub(crate) struct Cursors {
    next: HashMap<i32, i64>,
    /// Log version at the start of the last pass.
    seen: u64,
    notice_seq: u64,
    /// Records released after the session's start come by their notice only.
    late: LateSince,
    generation: u64,
    parts: Vec<i32>,
    /// The log epoch each partition's cursor belongs to (see `Log::reset`).
    epochs: HashMap<i32, u64>,
    handle: ReaderHandle,
    /// Frames written since the last delay sample.
    sampled: u32,
}

/// One slot in this many is sampled for the delivery-delay histogram.
const DELAY_SAMPLE_EVERY: u32 = 16;

impl Cursors {
    /// Starts reading at `next`; partitions it does not list appeared after
    /// the session started and are read from the first offset this process
    /// consumed for them (through catch-up if the log no longer holds it).
    pub(crate) fn new(hub: &Hub, next: HashMap<i32, i64>) -> Self {
        let now = crate::util::unix_ms();
        let handle = hub.readers.register(&next, now);
        Self {
            next,
            seen: u64::MAX,
            notice_seq: hub.notice_seq(),
            late: LateSince::new(hub.notice_seq()),
            generation: u64::MAX,
            parts: Vec::new(),
            epochs: HashMap::new(),
            handle,
            sampled: 0,
        }
    }

    /// Notices after this sequence number are delivered (the session's start).
    pub(crate) fn with_notices_after(mut self, seq: u64) -> Self {
        self.notice_seq = seq;
        self.late = LateSince::new(seq);
        self
    }

    /// The session has read everything and waits for more.
    pub(crate) fn idle(&self) {
        self.handle.idle();
    }

    /// Something was appended or noticed since the last pass began.
    pub(crate) fn has_news(&self, hub: &Hub) -> bool {
        hub.log.version() != self.seen
    }

    /// Reads up to `budget` slots from the log (and catches up where the log
    /// no longer reaches), writes what `filter` matches, and flushes.
    pub(crate) async fn pass<T, O>(
        &mut self,
        rc: &ReplayContext<T>,
        out: &mut O,
        filter: &Filter,
        budget: usize,
        m: &DeliveryMetrics,
    ) -> Result<Pass, Gone>
    where
        T: Tiers,
        O: ReplayOut,
    {
        let hub = &*rc.hub;
        self.handle.busy(crate::util::unix_ms());
        self.seen = hub.log.version();
        let mut pass = Pass::default();
        self.notices(hub, out, filter, &mut pass).await?;
        self.discover(hub);
        let mut remaining = budget;
        let mut samples: Vec<i64> = Vec::new();
        let shedding = hub.shedding();
        let mut shed: Vec<(i32, i64, i64)> = Vec::new();
        let mut blocked = false;
        for i in 0..self.parts.len() {
            if remaining == 0 {
                pass.more = true;
                break;
            }
            let p = self.parts[i];
            let Some(mut n) = self.next.get(&p).copied() else {
                continue;
            };
            let epoch = *self.epochs.entry(p).or_insert_with(|| hub.log.epoch(p));
            match hub
                .log
                .page_in(p, Some(epoch), n, remaining.min(rc.page.records))
            {
                Page::Missing => {}
                Page::Evicted { first, .. } => {
                    // Boxed: a catch-up's state is on the heap only while it runs.
                    let c = Box::pin(catch_up(
                        rc,
                        out,
                        filter,
                        self.late.since(),
                        p,
                        n,
                        first - 1,
                    ))
                    .await?;
                    pass.frames += c.frames;
                    n = first;
                    pass.more = true;
                }
                Page::Entries(page) => {
                    // A full page: the session is behind (more is readable now).
                    let behind = page.len() >= remaining.min(rc.page.records);
                    if behind {
                        pass.more = true;
                    }
                    remaining -= page.len().min(remaining);
                    let now_ms = crate::util::unix_ms();
                    for e in &page {
                        if e.offset > n {
                            // A hole in the log: the lower tiers say what was there.
                            let c = Box::pin(catch_up(
                                rc,
                                out,
                                filter,
                                self.late.since(),
                                p,
                                n,
                                e.offset - 1,
                            ))
                            .await?;
                            pass.frames += c.frames;
                        }
                        n = e.offset + 1;
                        let Slot::Frame(f) = &e.slot else { continue };
                        // A released record is marked late before it enters
                        // the log: only those need the notice lookup.
                        if !filter.matches(f)
                            || (f.is_late() && self.late.covers(&hub.notices, p, e.offset))
                        {
                            continue;
                        }
                        if shedding && behind && hub.priorities.of(f) == Priority::Low {
                            lose(&mut shed, p, e.offset);
                            m.shed.increment(1);
                            continue;
                        }
                        if !out.try_frame(f).await? {
                            // The client's socket is full: this frame is read
                            // again next pass, and the page is let go before
                            // the wait (a session that stopped reading holds
                            // no frames the log has evicted).
                            n = e.offset;
                            blocked = true;
                            break;
                        }
                        pass.frames += 1;
                        self.sampled += 1;
                        if self.sampled >= DELAY_SAMPLE_EVERY {
                            self.sampled = 0;
                            m.delivery_delay
                                .record((now_ms - e.at_ms).max(0) as f64 / 1000.0);
                        }
                        sample_latency(f, &mut samples);
                    }
                }
            }
            self.next.insert(p, n);
            if blocked {
                out.ready().await?;
                pass.more = true;
                break;
            }
        }
        if !shed.is_empty() {
            let dropped = shed.iter().map(|(_, a, b)| (b - a + 1) as u64).sum();
            out.control(control::lagged(dropped)).await?;
            for (p, a, b) in shed {
                out.control(control::gap(p, a, b, "backpressure")).await?;
            }
        }
        out.flush().await?;
        m.frames_sent.increment(pass.frames);
        record_latency(&samples, &m.e2e_latency);
        let now_ms = crate::util::unix_ms();
        self.handle.progressed(&self.next, now_ms);
        pass.behind_ms = self.behind_ms(hub, now_ms);
        Ok(pass)
    }

    async fn notices<O: ReplayOut>(
        &mut self,
        hub: &Hub,
        out: &mut O,
        filter: &Filter,
        pass: &mut Pass,
    ) -> Result<(), Gone> {
        if hub.notice_seq() == self.notice_seq {
            return Ok(());
        }
        let (notices, missed) = hub.notices.since(self.notice_seq);
        if let Some((seq, _)) = notices.last() {
            self.notice_seq = *seq;
        }
        if missed > 0 {
            out.control(control::lagged(missed)).await?;
        }
        for (seq, n) in notices {
            match n {
                Notice::Thread {
                    thread,
                    tenant,
                    text,
                } => {
                    if filter.wants_thread(&thread, &tenant) {
                        out.control(control::with_notices(&text, &hub.notices.cursor(seq)))
                            .await?;
                    }
                }
                Notice::Released {
                    thread,
                    tenant,
                    frames,
                } => {
                    let mine = frames.iter().filter(|f| filter.matches(f));
                    let n = mine.clone().count();
                    // Announced whenever records follow: the client applies
                    // exactly the `released` frames after it as late.
                    if n > 0 || filter.wants_thread(&thread, &tenant) {
                        let text = control::thread_resumed(&thread, n);
                        out.control(control::with_notices(&text, &hub.notices.cursor(seq)))
                            .await?;
                    }
                    for f in mine {
                        out.frame(f).await?;
                        pass.frames += 1;
                    }
                }
                Notice::OffsetsReset {
                    partition,
                    first,
                    epoch,
                } => {
                    if self.epochs.get(&partition).is_none_or(|e| *e < epoch) {
                        self.epochs.insert(partition, epoch);
                        if self.next.contains_key(&partition) {
                            self.next.insert(partition, first);
                        }
                        out.control(control::offsets_reset(partition, first))
                            .await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Picks up partitions that appeared in the log.
    fn discover(&mut self, hub: &Hub) {
        let g = hub.log.generation();
        if g == self.generation {
            return;
        }
        self.parts = hub.log.partitions();
        let mut complete = true;
        for p in &self.parts {
            if !self.next.contains_key(p) {
                match hub.log.origin(*p) {
                    Some(f) => {
                        self.next.insert(*p, f);
                    }
                    None => complete = false,
                }
            }
        }
        if complete {
            self.generation = g;
        }
    }

    fn behind_ms(&self, hub: &Hub, now_ms: i64) -> i64 {
        let mut oldest = now_ms;
        for (p, n) in &self.next {
            if let Some(t) = hub.log.unread_since_ms(*p, *n) {
                oldest = oldest.min(t);
            }
        }
        now_ms - oldest
    }
}

/// Adds `offset` to the shed ranges of this pass.
fn lose(ranges: &mut Vec<(i32, i64, i64)>, p: i32, offset: i64) {
    if let Some(last) = ranges.last_mut() {
        if last.0 == p && last.2 + 1 == offset {
            last.2 = offset;
            return;
        }
    }
    ranges.push((p, offset, offset));
}

/// Each frame's end-to-end latency is recorded once, by whichever session
/// writes it first.
fn sample_latency(f: &Frame, samples: &mut Vec<i64>) {
    if f.claim_latency_sample() {
        if let Some(ts_us) = f.summary.timestamp_us {
            samples.push(ts_us);
        }
    }
}

fn record_latency(samples: &[i64], h: &Histogram) {
    if samples.is_empty() {
        return;
    }
    let now_us = crate::util::unix_us();
    for ts_us in samples {
        h.record(((now_us - ts_us).max(0) as f64) / 1000.0);
    }
}
