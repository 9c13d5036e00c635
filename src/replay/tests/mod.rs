//! The replay driver over in-memory tiers: the real hub (its rings and the
//! hand-over to live delivery) and fakes of Redis and Kafka with random
//! contents, while a concurrent publisher appends to the hub (and evicts from
//! its small rings) during the replay.
//!
//! The property: per partition, the client receives offsets in strictly
//! increasing order, never an undeliverable one, never one inside a `gap`
//! it was sent; every deliverable offset after its cursor arrives or lies
//! inside a `gap` (a partition asked for from the beginning may skip what
//! precedes its first record); and whatever Redis or Kafka held arrives.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;
use proptest::prelude::*;

use crate::hub::log::RingLimits;
use crate::hub::{DeliveryLimits, Filter, Hub, PriorityTable};
use crate::record::decode::DecodeLimits;
use crate::record::frame::Frame;
use crate::replay::config::PageLimit;
use crate::replay::driver::{replay, ReplayContext, Sent};
use crate::replay::kafka::{fake_kafka_read, Fetched};
use crate::replay::out::{Gone, ReplayOut};
use crate::replay::slots::ReplaySlots;
use crate::replay::tiers::{RedisRows, Tiers, Unavailable};
use crate::replay::ResumeFrom;
use crate::session::cursors::{Cursors, DeliveryMetrics};

use crate::record::testing::event_frame as frame;

mod bounds;
mod late;

/// What Redis holds for one offset: its value (a tombstone for an
/// undeliverable one), or an index entry whose value expired.
#[derive(Clone, Copy, Debug)]
enum RedisEntry {
    Present,
    Expired,
}

#[derive(Clone, Debug)]
struct PartitionCase {
    /// Offsets consumed before the resume; `true`: deliverable.
    initial: Vec<bool>,
    /// Offsets appended while (and after) the client replays.
    live: usize,
    /// Whether this instance's hub has the partition (else only the lower tiers know it).
    in_hub: bool,
    /// Non-hub partitions: the high watermark is known.
    watermark: bool,
    redis: BTreeMap<usize, RedisEntry>,
    /// Kafka's earliest retained offset.
    retained_from: usize,
    /// The client's last applied offset (`None`: from the beginning).
    cursor: Option<i64>,
}

#[derive(Clone, Debug)]
struct Case {
    parts: Vec<PartitionCase>,
    ring: usize,
    page: usize,
    redis_up: bool,
    kafka_on: bool,
    kafka_up: bool,
    earliest: bool,
    /// `REPLAY_MAX_RECORDS` (`None`: the default, never reached here).
    budget: Option<u64>,
}

fn partition_case() -> impl Strategy<Value = PartitionCase> {
    (
        proptest::collection::vec(proptest::bool::weighted(0.85), 0..40),
        0usize..15,
        proptest::bool::weighted(0.8),
        any::<bool>(),
        proptest::collection::btree_map(
            0usize..40,
            prop_oneof![
                6 => Just(RedisEntry::Present),
                1 => Just(RedisEntry::Expired),
            ],
            0..30,
        ),
        0usize..45,
        proptest::option::of(-1i64..45),
    )
        .prop_map(
            |(initial, live, in_hub, watermark, redis, retained_from, cursor)| {
                let n = initial.len();
                PartitionCase {
                    redis: redis.into_iter().filter(|(o, _)| *o < n).collect(),
                    initial,
                    live,
                    in_hub,
                    watermark,
                    retained_from,
                    cursor,
                }
            },
        )
}

fn case() -> impl Strategy<Value = Case> {
    (
        proptest::collection::vec(partition_case(), 1..4),
        1usize..25,
        1usize..8,
        proptest::bool::weighted(0.8),
        proptest::bool::weighted(0.8),
        proptest::bool::weighted(0.9),
        proptest::bool::weighted(0.15),
        proptest::option::weighted(0.2, 1u64..80),
    )
        .prop_map(
            |(parts, ring, page, redis_up, kafka_on, kafka_up, earliest, budget)| Case {
                parts,
                ring,
                page,
                redis_up,
                kafka_on,
                kafka_up,
                earliest,
                budget,
            },
        )
}

/// Redis and Kafka as the case describes them. Kafka holds every offset
/// from `retained_from` up to what has been appended so far.
struct FakeTiers {
    case: Case,
    /// Next offset per partition (grows as the publisher appends).
    appended: Arc<Mutex<HashMap<i32, i64>>>,
    /// Redis lookups of one partition (`redis_last`, `redis_page`).
    redis_calls: std::sync::atomic::AtomicUsize,
    /// Kafka reader permits, when a test limits them (else always free).
    kafka_gate: Option<Arc<tokio::sync::Semaphore>>,
}

impl FakeTiers {
    fn deliverable(&self, p: i32, o: i64) -> bool {
        let c = &self.case.parts[p as usize];
        c.initial.get(o as usize).copied().unwrap_or(true)
    }
}

impl Tiers for FakeTiers {
    type Reader = ();
    type Permit = Option<tokio::sync::OwnedSemaphorePermit>;

    fn has_redis(&self) -> bool {
        true
    }

    async fn redis_partitions(&self) -> BTreeSet<i32> {
        if !self.case.redis_up {
            return BTreeSet::new();
        }
        (0..self.case.parts.len() as i32)
            .filter(|p| !self.case.parts[*p as usize].redis.is_empty())
            .collect()
    }

    async fn redis_last(&self, p: i32) -> Option<i64> {
        self.redis_calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if !self.case.redis_up {
            return None;
        }
        let c = self.case.parts.get(p as usize)?;
        c.redis.keys().next_back().map(|o| *o as i64)
    }

    async fn redis_page(
        &self,
        p: i32,
        from: i64,
        to: i64,
        limit: PageLimit,
    ) -> Result<RedisRows, Unavailable> {
        self.redis_calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if !self.case.redis_up {
            return Err(Unavailable);
        }
        let c = &self.case.parts[p as usize];
        Ok(c.redis
            .iter()
            .map(|(o, e)| (*o as i64, *e))
            .filter(|(o, _)| *o >= from && *o <= to)
            .take(limit.records)
            .map(|(o, e)| {
                let v = match e {
                    RedisEntry::Present if self.deliverable(p, o) => {
                        Some(frame(p, o).binary().to_vec())
                    }
                    RedisEntry::Present => Some(Vec::new()),
                    RedisEntry::Expired => None,
                };
                (o, v)
            })
            .collect())
    }

    fn has_kafka(&self) -> bool {
        self.case.kafka_on
    }

    async fn kafka_permit(&self) -> Option<Self::Permit> {
        match &self.kafka_gate {
            None => Some(None),
            Some(g) => g.clone().acquire_owned().await.ok().map(Some),
        }
    }

    async fn kafka_read(
        &self,
        _reader: &mut Option<()>,
        p: i32,
        from: i64,
        to: i64,
        limit: PageLimit,
    ) -> Result<Fetched, Unavailable> {
        if !self.case.kafka_up {
            return Err(Unavailable);
        }
        let low = self.case.parts[p as usize].retained_from as i64;
        let end = self.appended.lock().get(&p).copied().unwrap_or(0);
        Ok(fake_kafka_read(p, from, to, limit, low, end, |o| {
            self.deliverable(p, o)
        }))
    }
}

/// What the client received: data offsets and gap ranges, per partition.
#[derive(Default)]
struct Recorder {
    frames: Vec<(i32, i64)>,
    gaps: Vec<(i32, i64, i64)>,
    reasons: Vec<String>,
    /// `replay_queued` notices for a Kafka reader.
    kafka_queued: usize,
    /// Free Kafka permits seen at each frame write, when a test watches them.
    gate: Option<Arc<tokio::sync::Semaphore>>,
    free_at_write: Vec<usize>,
}

impl ReplayOut for Recorder {
    async fn frame(&mut self, f: &Frame) -> Result<(), Gone> {
        self.frames.push((f.cursor.partition, f.cursor.offset));
        if let Some(g) = &self.gate {
            self.free_at_write.push(g.available_permits());
        }
        Ok(())
    }

    async fn control(&mut self, text: String) -> Result<(), Gone> {
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        if v["type"] == "gap" {
            let n = |k: &str| v[k].as_i64().unwrap();
            self.gaps.push((n("partition") as i32, n("from"), n("to")));
            self.reasons
                .push(v["reason"].as_str().unwrap_or("").to_string());
        }
        if v["type"] == "replay_queued" && v["tier"] == "kafka" {
            self.kafka_queued += 1;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), Gone> {
        Ok(())
    }
}

fn test_hub(ring: usize) -> Arc<Hub> {
    Hub::new(
        DeliveryLimits {
            priorities: PriorityTable::default(),
            reader_stall: std::time::Duration::from_secs(1),
            reader_hold: std::time::Duration::from_secs(5),
        },
        RingLimits {
            max_per_partition: ring,
            max_bytes_per_partition: usize::MAX,
        },
    )
}

fn run_case(case: Case) -> Result<(), TestCaseError> {
    let (tiers, out) = replay_case(case.clone())?;
    check(&case, &tiers, &out)
}

/// Runs one resume of `case`; the tiers it read and what the client received.
fn replay_case(case: Case) -> Result<(FakeTiers, Recorder), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async move {
        let hub = test_hub(case.ring);
        let appended: Arc<Mutex<HashMap<i32, i64>>> = Default::default();
        let watermarks: crate::replay::Watermarks = Default::default();
        let mut pending = Vec::new();
        for (p, c) in case.parts.iter().enumerate() {
            let p = p as i32;
            let n = c.initial.len() as i64;
            appended.lock().insert(p, n);
            if c.in_hub {
                for (o, ok) in c.initial.iter().enumerate() {
                    if *ok {
                        hub.publish(&frame(p, o as i64));
                    } else {
                        hub.skip(p, o as i64);
                    }
                }
                pending.extend((0..c.live as i64).map(|i| (p, n + i)));
            } else if c.watermark {
                watermarks.lock().insert(p, n);
            }
        }
        // Appends race the replay: one record per turn of the scheduler.
        pending.sort_by_key(|(p, o)| (*o, *p));
        let publisher = {
            let (hub, appended) = (hub.clone(), appended.clone());
            tokio::spawn(async move {
                for (p, o) in pending {
                    appended.lock().insert(p, o + 1);
                    hub.publish(&frame(p, o));
                    tokio::task::yield_now().await;
                }
            })
        };
        let from = if case.earliest {
            ResumeFrom::Earliest
        } else {
            ResumeFrom::Cursor(
                case.parts
                    .iter()
                    .enumerate()
                    .filter_map(|(p, c)| c.cursor.map(|o| (p as i32, o)))
                    .collect(),
            )
        };
        let rc = ReplayContext {
            hub: hub.clone(),
            tiers: FakeTiers {
                case: case.clone(),
                appended: appended.clone(),
                redis_calls: Default::default(),
                kafka_gate: None,
            },
            watermarks,
            page: PageLimit::records(case.page),
            limits: DecodeLimits::default(),
            replays: ReplaySlots::new(1),
            budget: crate::replay::config::ReplayBudget {
                records: case.budget.unwrap_or(1_000_000),
                ..Default::default()
            },
        };
        let mut out = Recorder::default();
        let mut sent = Sent::default();
        let resumed = replay(&rc, &mut out, Filter::default(), from, &mut sent, 0)
            .await
            .map_err(|_| TestCaseError::fail("the recorder never goes away"))?;
        // Live delivery goes on from the replay's cursors while the publisher appends.
        let mut cursors: Cursors = Cursors::new(&hub, resumed.next);
        let m = DeliveryMetrics::new();
        let filter = Filter::default();
        loop {
            let done = publisher.is_finished();
            let pass = cursors
                .pass(&rc, &mut out, &filter, case.page.max(2), &m)
                .await
                .map_err(|_| TestCaseError::fail("the recorder never goes away"))?;
            if done && !pass.more && !cursors.has_news(&hub) {
                break;
            }
            tokio::task::yield_now().await;
        }
        publisher.await.unwrap();
        Ok((rc.tiers, out))
    })
}

fn check(case: &Case, tiers: &FakeTiers, out: &Recorder) -> Result<(), TestCaseError> {
    for (pi, c) in case.parts.iter().enumerate() {
        let p = pi as i32;
        let got: Vec<i64> = out
            .frames
            .iter()
            .filter(|(q, _)| *q == p)
            .map(|(_, o)| *o)
            .collect();
        let gaps: Vec<(i64, i64)> = out
            .gaps
            .iter()
            .filter(|(q, _, _)| *q == p)
            .map(|(_, a, b)| (*a, *b))
            .collect();
        let in_gap = |o: i64| gaps.iter().any(|(a, b)| *a <= o && o <= *b);
        // Ranges the resume's budget left out (what a tier held may be there).
        let in_budget_gap = |o: i64| {
            out.gaps
                .iter()
                .zip(&out.reasons)
                .any(|((q, a, b), r)| *q == p && r == "replay_budget" && *a <= o && o <= *b)
        };
        prop_assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "partition {p}: out of order or twice: {got:?}"
        );
        for o in &got {
            prop_assert!(
                tiers.deliverable(p, *o),
                "partition {p}: {o} is not deliverable"
            );
            prop_assert!(
                !in_gap(*o),
                "partition {p}: {o} sent and inside a gap {gaps:?}"
            );
        }
        let cursor = if case.earliest { None } else { c.cursor };
        for (a, b) in &gaps {
            prop_assert!(a <= b, "partition {p}: empty gap ({a}, {b})");
            if let Some(cur) = cursor {
                prop_assert!(
                    *a > cur,
                    "partition {p}: gap ({a}, {b}) at or below the cursor {cur}"
                );
            }
        }
        // The last offset this instance knows of for the partition.
        let n = c.initial.len() as i64;
        let known_end = if c.in_hub {
            n + c.live as i64 - 1
        } else if c.watermark {
            n - 1
        } else if case.redis_up {
            c.redis.keys().next_back().map_or(-1, |o| *o as i64)
        } else {
            -1
        };
        let first_seen = got.iter().chain(gaps.iter().map(|(a, _)| a)).min().copied();
        let lo = match cursor {
            Some(cur) => cur + 1,
            None => first_seen.unwrap_or(i64::MAX),
        };
        for o in lo.max(0)..=known_end {
            if tiers.deliverable(p, o) {
                prop_assert!(
                    got.binary_search(&o).is_ok() || in_gap(o),
                    "partition {p}: {o} neither sent nor inside a gap; got {got:?}, gaps {gaps:?}"
                );
            }
        }
        // Whatever an available lower tier held after the cursor arrives.
        let after = cursor.unwrap_or(-1);
        for o in (after + 1).max(0)..=known_end.min(n - 1) {
            if !tiers.deliverable(p, o) {
                continue;
            }
            let in_redis =
                case.redis_up && matches!(c.redis.get(&(o as usize)), Some(RedisEntry::Present));
            let in_kafka = case.kafka_on && case.kafka_up && o >= c.retained_from as i64;
            if (in_redis || in_kafka) && !in_budget_gap(o) {
                prop_assert!(
                    got.binary_search(&o).is_ok(),
                    "partition {p}: {o} held by {} but not sent; got {got:?}, gaps {gaps:?}",
                    if in_redis { "Redis" } else { "Kafka" }
                );
            }
        }
    }
    Ok(())
}

/// One partition of 30 records, the ring holding the last 10, a client at offset 4.
fn resume_at_4(redis_up: bool, kafka_on: bool, retained_from: usize) -> Case {
    Case {
        parts: vec![PartitionCase {
            initial: vec![true; 30],
            live: 0,
            in_hub: true,
            watermark: false,
            redis: (12..20).map(|o| (o, RedisEntry::Present)).collect(),
            retained_from,
            cursor: Some(4),
        }],
        ring: 10,
        page: 4,
        redis_up,
        kafka_on,
        kafka_up: true,
        earliest: false,
        budget: None,
    }
}

#[test]
fn each_tier_fills_its_part_and_gaps_say_why() {
    // Kafka from 8: 5..=7 are past retention; 8..=11 from Kafka, 12..=19 from Redis, 20.. from memory.
    let (_, out) = replay_case(resume_at_4(true, true, 8)).unwrap();
    assert_eq!(out.gaps, vec![(0, 5, 7)]);
    assert_eq!(out.reasons, vec!["kafka_retention"]);
    let got: Vec<i64> = out.frames.iter().map(|(_, o)| *o).collect();
    assert_eq!(got, (8..30).collect::<Vec<_>>());
    // Without Kafka, what Redis lacks is one exact gap, not in the replay buffer.
    let (_, out) = replay_case(resume_at_4(true, false, 0)).unwrap();
    assert_eq!(out.gaps, vec![(0, 5, 11)]);
    assert_eq!(out.reasons, vec!["not_in_replay_buffer"]);
    // Redis down and no Kafka: the whole lower range, and the reason names Redis.
    let (_, out) = replay_case(resume_at_4(false, false, 0)).unwrap();
    assert_eq!(out.gaps, vec![(0, 5, 19)]);
    assert_eq!(out.reasons, vec!["redis_unavailable"]);
    let got: Vec<i64> = out.frames.iter().map(|(_, o)| *o).collect();
    assert_eq!(got, (20..30).collect::<Vec<_>>());
}

/// Runs a resume at offset 4 (Kafka serves 5..=11) with `permits` Kafka
/// reader permits, none of them free while `held` is.
async fn resume_with_kafka_gate(permits: usize, held: usize) -> Recorder {
    let case = resume_at_4(true, true, 0);
    let hub = test_hub(case.ring);
    for o in 0..30 {
        hub.publish(&frame(0, o));
    }
    let gate = Arc::new(tokio::sync::Semaphore::new(permits));
    let _held = gate.clone().acquire_many_owned(held as u32).await.unwrap();
    let appended = Arc::new(Mutex::new(HashMap::from([(0, 30)])));
    let rc = ReplayContext {
        hub,
        tiers: FakeTiers {
            case: case.clone(),
            appended,
            redis_calls: Default::default(),
            kafka_gate: Some(gate.clone()),
        },
        watermarks: Default::default(),
        page: PageLimit::records(2),
        limits: DecodeLimits::default(),
        replays: ReplaySlots::new(1),
        budget: Default::default(),
    };
    let mut out = Recorder {
        gate: Some(gate),
        ..Default::default()
    };
    replay(
        &rc,
        &mut out,
        Filter::default(),
        ResumeFrom::Cursor(HashMap::from([(0, 4)])),
        &mut Sent::default(),
        0,
    )
    .await
    .unwrap_or_else(|_| panic!("the recorder never goes away"));
    out
}

/// A client's Kafka reader permit is held for a fetch, never while its
/// frames are written: a slow reader does not hold up the others.
#[test]
fn a_kafka_permit_is_not_held_across_writes_to_the_client() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let out = rt.block_on(resume_with_kafka_gate(1, 0));
    let from_kafka: Vec<i64> = out
        .frames
        .iter()
        .map(|(_, o)| *o)
        .filter(|o| *o < 12)
        .collect();
    assert_eq!(from_kafka, (5..12).collect::<Vec<_>>());
    assert!(
        out.free_at_write.iter().all(|free| *free == 1),
        "{:?}",
        out.free_at_write
    );
    assert_eq!(out.kafka_queued, 0, "a free reader needs no notice");
}

/// While every Kafka reader is busy, the client is told so every 5 s; after
/// 30 s the range is a `kafka_busy` gap and the replay goes on.
#[test]
fn a_replay_waits_for_a_kafka_reader_at_most_30_s_and_is_told() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let out = rt.block_on(resume_with_kafka_gate(1, 1));
    assert_eq!(out.gaps, vec![(0, 5, 11)]);
    assert_eq!(out.reasons, vec!["kafka_busy"]);
    assert_eq!(out.kafka_queued, 6, "at 0.1 s, then every 5 s until 30 s");
    let got: Vec<i64> = out.frames.iter().map(|(_, o)| *o).collect();
    assert_eq!(
        got,
        (12..30).collect::<Vec<_>>(),
        "Redis and memory still serve the rest"
    );
}

/// A cursor naming partitions the bridge does not know (not in the log,
/// the watermarks or Redis) costs no Redis lookup for them, and the client
/// keeps its cursor for them.
#[test]
fn unknown_cursor_partitions_cost_no_redis_lookup() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let case = resume_at_4(true, false, 0);
        let hub = test_hub(case.ring);
        for o in 0..30 {
            hub.publish(&frame(0, o));
        }
        let rc = ReplayContext {
            hub,
            tiers: FakeTiers {
                case: case.clone(),
                appended: Default::default(),
                redis_calls: Default::default(),
                kafka_gate: None,
            },
            watermarks: Default::default(),
            page: PageLimit::records(case.page),
            limits: DecodeLimits::default(),
            replays: ReplaySlots::new(1),
            budget: Default::default(),
        };
        let mut cursor: std::collections::BTreeMap<i32, i64> = (1..1024).map(|p| (p, 7)).collect();
        cursor.insert(0, 4);
        let mut out = Recorder::default();
        let resumed = replay(
            &rc,
            &mut out,
            Filter::default(),
            ResumeFrom::Cursor(cursor.into_iter().collect()),
            &mut Sent::default(),
            0,
        )
        .await
        .unwrap_or_else(|_| panic!("the recorder never goes away"));
        let calls = rc
            .tiers
            .redis_calls
            .load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            calls <= 4,
            "{calls} Redis lookups for one known partition and 1,023 unknown ones"
        );
        assert_eq!(resumed.next.get(&0), Some(&30));
        assert_eq!(resumed.next.get(&1023), Some(&8), "the cursor is kept");
        assert_eq!(out.frames.len(), 30 - 5 - 7, "{:?}", out.gaps);
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn every_offset_arrives_once_in_order_or_inside_an_exact_gap(case in case()) {
        run_case(case)?;
    }
}
