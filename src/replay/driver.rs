//! Resume: replays history to one client from the replay tiers, in offset
//! order per partition, then hands it over to live delivery with no
//! duplicate and no hole at the seam (see [`Hub::subscribe_caught_up`]).
//!
//! Per partition the driver reads memory pages while the ring reaches back
//! far enough, else Redis pages, else Kafka by offset; an offset no tier can
//! serve is reported as a `gap` frame with its exact range, never skipped
//! silently. Pages are bounded and sent at the client's pace, so a long
//! replay holds a bounded amount of memory.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::Message;
use futures_util::Sink;
use metrics::Counter;
use parking_lot::Mutex;
use tokio::sync::Semaphore;

use crate::hub::ring::Slot;
use crate::hub::{Filter, Format, Hub, Subscription};
use crate::record::decode::{self, DecodeLimits};
use crate::record::frame::{control, Cursor, Frame};
use crate::replay::kafka::KafkaReader;
use crate::replay::redis::RedisTier;
use crate::replay::{GapReason, ResumeFrom};
use crate::session::{feed, flush, send};
use crate::telemetry;

/// High watermarks per partition from the consumer's statistics.
pub(crate) type Watermarks = Arc<Mutex<HashMap<i32, i64>>>;

/// Reading back from Kafka: client properties and a bound on concurrent readers.
pub(crate) struct KafkaTier {
    pub(crate) props: Vec<(String, String)>,
    pub(crate) topic: String,
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) timeout: Duration,
}

pub(crate) struct ReplayContext {
    pub(crate) hub: Arc<Hub>,
    pub(crate) redis: Option<Arc<RedisTier>>,
    pub(crate) kafka: Option<KafkaTier>,
    pub(crate) watermarks: Watermarks,
    pub(crate) page: usize,
    pub(crate) limits: DecodeLimits,
    /// Replays running at once, at most (`REPLAY_MAX_CONCURRENT`); the rest
    /// wait their turn so a storm of resumes cannot starve live delivery.
    pub(crate) replays: ReplaySlots,
}

/// The replay slots, and how many resumes hold or wait for one.
pub(crate) struct ReplaySlots {
    permits: Semaphore,
    max: usize,
    active: AtomicUsize,
    waiting: AtomicUsize,
}

/// While a resume waits for a slot it is told so, now and then again at this
/// interval, so a client that watches for silence does not give up its turn.
const QUEUED_NOTICE_EVERY: Duration = Duration::from_secs(5);

/// A replay slot, counted in `replay_sessions_active` until dropped.
pub(crate) struct ReplaySlot<'a> {
    _permit: tokio::sync::SemaphorePermit<'a>,
    _active: Counted<'a>,
}

impl ReplaySlots {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            permits: Semaphore::new(max),
            max,
            active: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
        }
    }

    /// Takes a slot; while none is free, sends `replay_queued` notices.
    /// `Err`: the client went away.
    async fn acquire<S>(&self, tx: &mut S) -> Result<ReplaySlot<'_>, ()>
    where
        S: Sink<Message> + Unpin,
    {
        let permit = match self.permits.try_acquire() {
            Ok(p) => p,
            Err(_) => {
                // Counted as waiting until this returns or is dropped (shutdown).
                let _waiting = Counted::enter(&self.waiting, telemetry::REPLAY_WAITING);
                let acquire = self.permits.acquire();
                tokio::pin!(acquire);
                loop {
                    let waiting = self.waiting.load(Ordering::Relaxed);
                    send(
                        tx,
                        Message::Text(control::replay_queued(waiting, self.max).into()),
                    )
                    .await?;
                    tokio::select! {
                        p = &mut acquire => break p.map_err(|_| ())?,
                        _ = tokio::time::sleep(QUEUED_NOTICE_EVERY) => {}
                    }
                }
            }
        };
        Ok(ReplaySlot {
            _permit: permit,
            _active: Counted::enter(&self.active, telemetry::REPLAY_ACTIVE),
        })
    }
}

/// Counted in `count` and in the gauge `name` while it lives (every exit path).
struct Counted<'a>(&'a AtomicUsize, metrics::Gauge);

impl<'a> Counted<'a> {
    fn enter(count: &'a AtomicUsize, name: &'static str) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        let g = metrics::gauge!(name);
        g.increment(1.0);
        Self(count, g)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
        self.1.decrement(1.0);
    }
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
    pub(crate) subscription: Subscription,
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

struct Run<'a, S> {
    rc: &'a ReplayContext,
    tx: &'a mut S,
    format: Format,
    filter: Filter,
    sent: &'a mut Sent,
    replayed: u64,
    gaps: u64,
    stale: bool,
    reader: Option<KafkaReader>,
    hits: [Counter; 3],
    misses: Counter,
}

type Step = Result<(), ()>;

impl<S> Run<'_, S>
where
    S: Sink<Message> + Unpin,
{
    async fn emit(&mut self, f: &Frame, source: Source) -> Step {
        self.hits[source as usize].increment(1);
        if !self.filter.matches(f) || !self.sent.admit(f) {
            return Ok(());
        }
        let msg = match self.format {
            Format::Binary => Message::Binary(f.binary()),
            Format::Json => Message::Text(f.json()),
        };
        feed(self.tx, msg).await?;
        self.replayed += 1;
        Ok(())
    }

    /// Ends a page: writes out what was buffered and lets live delivery run.
    async fn page_done(&mut self) -> Step {
        flush(self.tx).await?;
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
        self.misses.increment((to - from + 1) as u64);
        if initial == Some(from) {
            self.stale = true;
        }
        feed(
            self.tx,
            Message::Text(control::gap(p, from, to, reason.as_str()).into()),
        )
        .await
    }

    async fn partition(
        &mut self,
        p: i32,
        mut n: i64,
        end: i64,
        initial: Option<i64>,
        mut leading: bool,
    ) -> Result<i64, ()> {
        loop {
            if let Some(page) = self.rc.hub.ring_page(p, n, self.rc.page) {
                if page.is_empty() {
                    break;
                }
                for (o, slot) in page {
                    if o > n {
                        self.lower(p, n, o - 1, initial, &mut leading).await?;
                    }
                    if let Slot::Frame(f) = slot {
                        self.emit(&f, Source::Memory).await?;
                    }
                    n = o + 1;
                    leading = false;
                }
                self.page_done().await?;
                continue;
            }
            if n > end {
                break;
            }
            let upper = self.rc.hub.ring_first(p).map_or(end, |f| f - 1).min(end);
            n = self.lower(p, n, upper, initial, &mut leading).await?;
            if self.rc.hub.ring_first(p).is_none() && n > end {
                break;
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
    ) -> Result<i64, ()> {
        let mut fallback = GapReason::NotInReplayBuffer;
        if let Some(redis) = self.rc.redis.clone() {
            while n <= upper {
                match redis.page(p, n, upper, self.rc.page).await {
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
                    Err(e) => {
                        tracing::debug!(error = %e, partition = p, "redis replay read failed");
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
        let Some(k) = &self.rc.kafka else {
            return self.gap(p, from, to, fallback, initial, *leading).await;
        };
        let Ok(_permit) = k.permits.clone().acquire_owned().await else {
            return self
                .gap(p, from, to, GapReason::KafkaUnavailable, initial, *leading)
                .await;
        };
        let mut n = from;
        while n <= to {
            let mut reader = match self.reader.take() {
                Some(r) => r,
                None => {
                    let (props, topic) = (k.props.clone(), k.topic.clone());
                    match tokio::task::spawn_blocking(move || KafkaReader::new(&props, &topic))
                        .await
                    {
                        Ok(Ok(r)) => r,
                        _ => {
                            return self
                                .gap(p, n, to, GapReason::KafkaUnavailable, initial, *leading)
                                .await
                        }
                    }
                }
            };
            let (page, timeout) = (self.rc.page, k.timeout);
            let res = tokio::task::spawn_blocking(move || {
                let r = reader.read(p, n, to, page, timeout);
                (reader, r)
            })
            .await;
            let fetched = match res {
                Ok((reader, Ok(f))) => {
                    self.reader = Some(reader);
                    f
                }
                Ok((reader, Err(e))) => {
                    self.reader = Some(reader);
                    tracing::debug!(error = %e, partition = p, "kafka replay read failed");
                    return self
                        .gap(p, n, to, GapReason::KafkaUnavailable, initial, *leading)
                        .await;
                }
                Err(_) => {
                    return self
                        .gap(p, n, to, GapReason::KafkaUnavailable, initial, *leading)
                        .await
                }
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
                        d,
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

/// Replays what `from` asks for, then joins live delivery. `Err` means the
/// client went away.
pub(crate) async fn replay<S>(
    rc: &ReplayContext,
    tx: &mut S,
    format: Format,
    filter: Filter,
    from: ResumeFrom,
    sent: &mut Sent,
) -> Result<Resumed, ()>
where
    S: Sink<Message> + Unpin,
{
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
            let subscription = rc.hub.subscribe(filter);
            return Ok(Resumed {
                subscription,
                replayed: 0,
                gaps: 0,
                stale: false,
            });
        }
        ResumeFrom::Earliest => HashMap::new(),
        ResumeFrom::Cursor(c) => c.iter().map(|(p, o)| (*p, o.saturating_add(1))).collect(),
    };
    let _slot = rc.replays.acquire(tx).await?;
    next.extend(initial.iter().map(|(p, o)| (*p, *o)));
    for (p, o) in &initial {
        sent.advance(*p, o - 1);
    }
    let mut run = Run {
        rc,
        tx,
        format,
        filter: filter.clone(),
        sent,
        replayed: 0,
        gaps: 0,
        stale: false,
        reader: None,
        hits: [
            metrics::counter!(telemetry::REPLAY_MEMORY_HITS),
            metrics::counter!(telemetry::REPLAY_REDIS_HITS),
            metrics::counter!(telemetry::REPLAY_KAFKA_HITS),
        ],
        misses: metrics::counter!(telemetry::REPLAY_MISSES),
    };
    let mut filter = filter;
    let mut redis_parts: BTreeSet<i32> = BTreeSet::new();
    if let Some(r) = &rc.redis {
        redis_parts = r.partitions().await.unwrap_or_default();
    }
    let subscription = loop {
        let heads = rc.hub.ring_heads();
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
            if end.is_none() {
                if let Some(r) = &rc.redis {
                    end = r.last(p).await.ok().flatten();
                }
            }
            let Some(end) = end else { continue };
            let n = run
                .partition(p, start, end, initial.get(&p).copied(), leading)
                .await?;
            run.sent.advance(p, n - 1);
            next.insert(p, n);
        }
        match rc.hub.subscribe_caught_up(filter, &next) {
            Ok(s) => break s,
            Err(f) => filter = f,
        }
    };
    metrics::histogram!(telemetry::REPLAY_DURATION).record(started.elapsed().as_secs_f64());
    Ok(Resumed {
        subscription,
        replayed: run.replayed,
        gaps: run.gaps,
        stale: run.stale,
    })
}

/// Parses `0:12,1:40` (partition:last applied offset).
pub(crate) fn parse_offsets_param(s: &str, max: usize) -> Result<HashMap<i32, i64>, String> {
    let mut m = HashMap::new();
    for part in s.split(',').map(str::trim).filter(|x| !x.is_empty()) {
        let (p, o) = part
            .split_once(':')
            .ok_or_else(|| format!("'{part}' is not partition:offset"))?;
        let p: i32 = p
            .trim()
            .parse()
            .ok()
            .filter(|p| *p >= 0)
            .ok_or_else(|| format!("'{p}' is not a partition"))?;
        let o: i64 = o
            .trim()
            .parse()
            .ok()
            .filter(|o| *o >= -1)
            .ok_or_else(|| format!("'{o}' is not an offset"))?;
        m.insert(p, o);
        if m.len() > max {
            return Err(format!("at most {max} partitions"));
        }
    }
    Ok(m)
}

/// Parses the `resume` client message:
/// `{"type":"resume","from":"cursor"|"earliest"|"latest","lastOffsets":{"0":12}}`.
pub(crate) fn parse_resume_message(
    v: &serde_json::Value,
    max: usize,
) -> Result<ResumeFrom, String> {
    match v.get("from").and_then(|f| f.as_str()).unwrap_or("cursor") {
        "earliest" => Ok(ResumeFrom::Earliest),
        "latest" => Ok(ResumeFrom::Latest),
        "cursor" => {
            let obj = v
                .get("lastOffsets")
                .and_then(|o| o.as_object())
                .ok_or("lastOffsets: expected an object of partition → offset")?;
            if obj.len() > max {
                return Err(format!("lastOffsets: at most {max} partitions"));
            }
            let mut m = HashMap::new();
            for (k, o) in obj {
                let p: i32 = k
                    .parse()
                    .ok()
                    .filter(|p| *p >= 0)
                    .ok_or_else(|| format!("lastOffsets: '{k}' is not a partition"))?;
                let o = o.as_i64().filter(|o| *o >= -1).ok_or_else(|| {
                    format!("lastOffsets: offset of partition {p} is not an integer ≥ -1")
                })?;
                m.insert(p, o);
            }
            Ok(ResumeFrom::Cursor(m))
        }
        other => Err(format!("from: '{other}' is not cursor, earliest or latest")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_inputs_are_validated() {
        assert_eq!(
            parse_offsets_param("0:12, 1:-1", 8),
            Ok([(0, 12), (1, -1)].into())
        );
        assert!(parse_offsets_param("0:x", 8).is_err());
        assert!(parse_offsets_param("-1:3", 8).is_err());
        assert!(parse_offsets_param("0:1,1:1,2:1", 2).is_err());
        let v = serde_json::json!({"type":"resume","from":"cursor","lastOffsets":{"0":5,"2":7}});
        assert_eq!(
            parse_resume_message(&v, 8),
            Ok(ResumeFrom::Cursor([(0, 5), (2, 7)].into()))
        );
        assert_eq!(
            parse_resume_message(&serde_json::json!({"from":"earliest"}), 8),
            Ok(ResumeFrom::Earliest)
        );
        assert!(parse_resume_message(&serde_json::json!({"from":"cursor"}), 8).is_err());
        assert!(parse_resume_message(
            &serde_json::json!({"from":"cursor","lastOffsets":{"a":1}}),
            8
        )
        .is_err());
        assert!(parse_resume_message(&serde_json::json!({"from":"sometime"}), 8).is_err());
    }
}
