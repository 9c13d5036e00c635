//! The follower against fake tiers: what an owner wrote to Redis (records,
//! tombstones, in whatever order its pipelines land, some dropped) reaches
//! the log once per offset, in order; holes wait, then come from Kafka.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use proptest::prelude::*;

use super::*;
use crate::hub::log::{Page, RingLimits, Slot};
use crate::hub::DeliveryLimits;
use crate::record::testing::{event_frame, event_value};
use crate::replay::kafka::{Fetched, KafkaRecord};
use crate::replay::tiers::{RedisRows, Unavailable};

/// Redis as the owner left it, and Kafka holding every record.
#[derive(Default)]
struct World {
    /// partition → offset → value (empty: a tombstone).
    redis: Mutex<BTreeMap<i32, BTreeMap<i64, Vec<u8>>>>,
    /// partition → offsets Kafka holds (up to `kafka_end`).
    kafka_end: Mutex<BTreeMap<i32, i64>>,
    kafka_reads: AtomicUsize,
}

struct FakeTiers(Arc<World>);

impl Tiers for FakeTiers {
    type Reader = ();
    type Permit = ();

    fn has_redis(&self) -> bool {
        true
    }

    async fn redis_partitions(&self) -> BTreeSet<i32> {
        self.0.redis.lock().keys().copied().collect()
    }

    async fn redis_last(&self, p: i32) -> Option<i64> {
        self.0.redis.lock().get(&p)?.keys().next_back().copied()
    }

    async fn redis_page(
        &self,
        p: i32,
        from: i64,
        to: i64,
        limit: PageLimit,
    ) -> Result<RedisRows, Unavailable> {
        let r = self.0.redis.lock();
        Ok(r.get(&p)
            .map(|m| {
                m.range(from..=to)
                    .take(limit.records)
                    .map(|(o, v)| (*o, Some(v.clone())))
                    .collect()
            })
            .unwrap_or_default())
    }

    fn has_kafka(&self) -> bool {
        true
    }

    async fn kafka_permit(&self) -> Option<()> {
        Some(())
    }

    async fn kafka_read(
        &self,
        _reader: &mut Option<()>,
        p: i32,
        from: i64,
        to: i64,
        limit: PageLimit,
    ) -> Result<Fetched, Unavailable> {
        self.0.kafka_reads.fetch_add(1, Ordering::Relaxed);
        let end = self.0.kafka_end.lock().get(&p).copied().unwrap_or(0);
        let upto = to.min(end - 1).min(from + limit.records as i64 - 1);
        let records = (from..=upto)
            .map(|o| KafkaRecord {
                offset: o,
                timestamp_ms: Some(1),
                value: event_value(p, o),
            })
            .collect();
        Ok(Fetched {
            records,
            retention_gap: None,
            next: upto + 1,
        })
    }
}

fn follower(world: &Arc<World>) -> Follower<FakeTiers> {
    Follower {
        hub: Hub::new(
            DeliveryLimits {
                priorities: Default::default(),
                reader_stall: Duration::from_secs(1),
                reader_hold: Duration::from_secs(5),
            },
            RingLimits {
                max_per_partition: 100_000,
                max_bytes_per_partition: 1 << 28,
            },
        ),
        tiers: FakeTiers(world.clone()),
        status: Arc::new(IngestStatus::default()),
        limits: DecodeLimits::default(),
        page: PageLimit {
            records: 7,
            bytes: 1 << 20,
        },
    }
}

/// What the owner writes for offset `o`: the envelope, or a tombstone.
fn written(p: i32, o: i64, deliverable: bool) -> Vec<u8> {
    if deliverable {
        event_frame(p, o).binary().to_vec()
    } else {
        Vec::new()
    }
}

/// The log of `p`: (offset, is a frame).
fn log_of(hub: &Hub, p: i32) -> Vec<(i64, bool)> {
    match hub.log.page(p, 0, 1_000_000) {
        Page::Entries(e) => e
            .iter()
            .map(|e| (e.offset, matches!(e.slot, Slot::Frame(_))))
            .collect(),
        _ => vec![],
    }
}

fn fresh() -> Followed<()> {
    Followed {
        next: 0,
        holes: BTreeMap::new(),
        reader: None,
    }
}

#[tokio::test(start_paused = true)]
async fn records_and_tombstones_are_appended_in_order_and_a_hole_waits_then_comes_from_kafka() {
    let world = Arc::new(World::default());
    let fo = follower(&world);
    let counts = Counts::new();
    world.kafka_end.lock().insert(0, 10);
    {
        let mut r = world.redis.lock();
        let m = r.entry(0).or_default();
        for o in [0, 1, 2, 5, 6] {
            m.insert(o, written(0, o, o != 1));
        }
    }
    let mut f = fresh();
    let (n, _) = fo.step(0, &mut f, None, &counts).await;
    assert_eq!(n, 3, "0..=2, then the hole at 3");
    assert_eq!(log_of(&fo.hub, 0), vec![(0, true), (1, false), (2, true)]);
    // The owner's later pipeline lands: the hole fills from Redis, Kafka is not read.
    world
        .redis
        .lock()
        .get_mut(&0)
        .unwrap()
        .insert(3, written(0, 3, false));
    tokio::time::advance(Duration::from_millis(500)).await;
    fo.step(0, &mut f, None, &counts).await;
    assert_eq!(f.next, 4);
    assert_eq!(world.kafka_reads.load(Ordering::Relaxed), 0);
    // Offset 4 never comes to Redis (a dropped write): after HOLE_WAIT it comes from Kafka.
    fo.step(0, &mut f, None, &counts).await;
    assert_eq!(f.next, 4, "waiting for the hole");
    tokio::time::advance(HOLE_WAIT).await;
    fo.step(0, &mut f, None, &counts).await;
    assert_eq!(f.next, 7);
    assert_eq!(world.kafka_reads.load(Ordering::Relaxed), 1);
    let log = log_of(&fo.hub, 0);
    assert_eq!(
        log,
        vec![
            (0, true),
            (1, false),
            (2, true),
            (3, false),
            (4, true),
            (5, true),
            (6, true)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn writes_dropped_at_the_end_are_found_by_the_owners_head_and_read_from_kafka() {
    let world = Arc::new(World::default());
    let fo = follower(&world);
    let counts = Counts::new();
    world.kafka_end.lock().insert(0, 6);
    world
        .redis
        .lock()
        .insert(0, (0..3).map(|o| (o, written(0, o, true))).collect());
    let mut f = fresh();
    fo.step(0, &mut f, Some(5), &counts).await;
    assert_eq!(f.next, 3, "no later record in Redis: waits");
    tokio::time::advance(HOLE_WAIT).await;
    fo.step(0, &mut f, Some(5), &counts).await;
    assert_eq!(f.next, 6, "3..=5 from Kafka");
    assert_eq!(log_of(&fo.hub, 0).len(), 6);
    fo.step(0, &mut f, Some(5), &counts).await;
    assert_eq!(
        world.kafka_reads.load(Ordering::Relaxed),
        1,
        "nothing more to read"
    );
}

#[tokio::test(start_paused = true)]
async fn a_partition_redis_held_at_start_is_followed_live_and_a_new_one_from_its_first_offset() {
    let world = Arc::new(World::default());
    let fo = follower(&world);
    world
        .redis
        .lock()
        .insert(0, (0..50).map(|o| (o, written(0, o, true))).collect());
    assert_eq!(
        start_of(&fo.hub, &fo.tiers, 0, true).await,
        50,
        "live from what Redis held"
    );
    world
        .redis
        .lock()
        .insert(1, (20..30).map(|o| (o, written(1, o, true))).collect());
    assert_eq!(
        start_of(&fo.hub, &fo.tiers, 1, false).await,
        20,
        "everything since it appeared"
    );
    fo.hub.publish_at(&event_frame(2, 7), 0);
    assert_eq!(
        start_of(&fo.hub, &fo.tiers, 2, false).await,
        8,
        "after what the log holds"
    );
}

/// One step of the model: the owner writes a run of offsets (its pipeline
/// may land late or never), or the follower steps, or time passes.
#[derive(Clone, Debug)]
enum Op {
    /// The owner's next `n` offsets; each lands in Redis unless dropped.
    Write {
        n: u8,
        dropped: u8,
        late: bool,
    },
    /// A late pipeline lands.
    Land,
    Step,
    Wait,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1u8..12, 0u8..4, proptest::bool::weighted(0.3)).prop_map(|(n, dropped, late)| Op::Write {
            n,
            dropped,
            late
        }),
        Just(Op::Land),
        Just(Op::Step),
        Just(Op::Step),
        Just(Op::Wait),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Every offset the owner handled reaches the follower's log exactly
    /// once, in order, as what the owner decided (a frame or a tombstone);
    /// a dropped write as the record Kafka holds.
    #[test]
    fn every_offset_once_in_order_as_its_owner_decided(ops in proptest::collection::vec(op(), 1..60)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        rt.block_on(async {
            let world = Arc::new(World::default());
            let fo = follower(&world);
            let counts = Counts::new();
            let mut f = fresh();
            let mut next = 0i64;
            let mut late: Vec<(i64, Vec<u8>)> = Vec::new();
            let mut decided: BTreeMap<i64, bool> = BTreeMap::new();
            let mut dropped: BTreeSet<i64> = BTreeSet::new();
            // Writes that landed late: the follower may have read them from Kafka first.
            let mut slow: BTreeSet<i64> = BTreeSet::new();
            // In the end every pipeline has landed, and time passes: each hole is waited for once.
            let tail = std::iter::once(Op::Land).chain(std::iter::repeat_n([Op::Wait, Op::Step], 40).flatten());
            for op in ops.iter().cloned().chain(tail) {
                match op {
                    Op::Write { n, dropped: d, late: is_late } => {
                        for i in 0..n as i64 {
                            let o = next + i;
                            let deliverable = o % 3 != 1;
                            decided.insert(o, deliverable);
                            if i < d as i64 && i % 2 == 1 {
                                dropped.insert(o);
                                continue;
                            }
                            let v = written(0, o, deliverable);
                            if is_late {
                                slow.insert(o);
                                late.push((o, v));
                            } else {
                                world.redis.lock().entry(0).or_default().insert(o, v);
                            }
                        }
                        next += n as i64;
                        world.kafka_end.lock().insert(0, next);
                    }
                    Op::Land => {
                        let mut r = world.redis.lock();
                        for (o, v) in late.drain(..) {
                            r.entry(0).or_default().insert(o, v);
                        }
                    }
                    Op::Step => {
                        // The owner's head, as it publishes it.
                        let head = (next > 0).then_some(next - 1);
                        for _ in 0..10 {
                            let (_, full) = fo.step(0, &mut f, head, &counts).await;
                            if !full { break; }
                        }
                    }
                    Op::Wait => tokio::time::advance(HOLE_WAIT).await,
                }
            }
            let log = log_of(&fo.hub, 0);
            let offsets: Vec<i64> = log.iter().map(|(o, _)| *o).collect();
            prop_assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1), "in order, no hole, no repeat: {offsets:?}");
            prop_assert_eq!(offsets.first().copied().unwrap_or(0), 0);
            for (o, is_frame) in &log {
                // A write that never reached Redis comes from Kafka, as a record;
                // one that came later than HOLE_WAIT may have too.
                if dropped.contains(o) {
                    prop_assert!(*is_frame, "offset {} from Kafka", o);
                } else if !slow.contains(o) {
                    prop_assert_eq!(*is_frame, decided[o], "offset {}", o);
                }
            }
            // Everything the owner handled is in, dropped writes at the end included.
            prop_assert_eq!(f.next, next, "followed up to {} of {}", f.next, next);
            Ok(())
        })?;
    }
}
