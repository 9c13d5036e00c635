//! Model-based test of the log and the sessions' cursors: random
//! interleavings of appends (with eviction from a small log), readers that
//! read fast, slowly or not at all for a while, catch-up reads from fakes of
//! Redis and Kafka, and restarts of the bridge (a new, empty log; every
//! client resumes from the cursor it computed from what it received).
//!
//! The property, per client and partition: offsets arrive in strictly
//! increasing order, each at most once, never one that was not deliverable
//! and never one inside a `gap` it was sent; every deliverable offset
//! arrives or lies inside a `gap`; a `gap` covers only offsets that no tier
//! held; and when Kafka retains everything, no `gap` at all.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;
use proptest::prelude::*;

use crate::hub::log::RingLimits;
use crate::hub::{DeliveryLimits, Filter, Hub, PriorityTable};
use crate::record::decode::{encode_record, DecodeLimits};
use crate::record::frame::Frame;
use crate::replay::config::PageLimit;
use crate::replay::driver::{replay, ReplayContext, Sent};
use crate::replay::kafka::{fake_kafka_read, Fetched};
use crate::replay::out::{Gone, ReplayOut};
use crate::replay::slots::ReplaySlots;
use crate::replay::tiers::{RedisRows, Tiers, Unavailable};
use crate::replay::ResumeFrom;
use crate::session::cursors::{Cursors, DeliveryMetrics};

const PARTITIONS: i32 = 2;

use crate::record::testing::{event_frame as frame, frame_of};

/// What the topic and Redis hold.
#[derive(Default)]
struct World {
    /// Per partition, per offset: deliverable, and whether Redis holds it.
    records: HashMap<i32, Vec<(bool, bool)>>,
}

struct ModelTiers {
    world: Arc<Mutex<World>>,
    /// Kafka's earliest retained offset (every partition).
    retained_from: i64,
    kafka_on: bool,
}

impl Tiers for ModelTiers {
    type Reader = ();
    type Permit = ();

    fn has_redis(&self) -> bool {
        true
    }

    async fn redis_partitions(&self) -> BTreeSet<i32> {
        self.world.lock().records.keys().copied().collect()
    }

    async fn redis_last(&self, p: i32) -> Option<i64> {
        let w = self.world.lock();
        let r = w.records.get(&p)?;
        r.iter().rposition(|(_, redis)| *redis).map(|i| i as i64)
    }

    async fn redis_page(
        &self,
        p: i32,
        from: i64,
        to: i64,
        limit: PageLimit,
    ) -> Result<RedisRows, Unavailable> {
        let w = self.world.lock();
        let Some(r) = w.records.get(&p) else {
            return Ok(Vec::new());
        };
        Ok((from.max(0)..=to.min(r.len() as i64 - 1))
            .filter(|o| r[*o as usize].1)
            .take(limit.records)
            .map(|o| {
                let v = if r[o as usize].0 {
                    frame(p, o).binary().to_vec()
                } else {
                    Vec::new()
                };
                (o, Some(v))
            })
            .collect())
    }

    fn has_kafka(&self) -> bool {
        self.kafka_on
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
        let w = self.world.lock();
        let end = w.records.get(&p).map_or(0, |r| r.len() as i64);
        Ok(fake_kafka_read(
            p,
            from,
            to,
            limit,
            self.retained_from,
            end,
            |o| w.records[&p][o as usize].0,
        ))
    }
}

/// One client: what it received, across restarts.
#[derive(Default)]
struct Client {
    frames: Vec<(i32, i64)>,
    gaps: Vec<(i32, i64, i64)>,
    resets: Vec<(i32, i64)>,
    /// Data frames its socket takes in the live pass before it is full
    /// (`None`: it never fills).
    room: Option<usize>,
}

impl Client {
    /// The cursor the client resumes from: per partition, the last offset
    /// it received or was told is gone.
    fn cursor(&self) -> HashMap<i32, i64> {
        let mut c: HashMap<i32, i64> = (0..PARTITIONS).map(|p| (p, -1)).collect();
        for (p, o) in &self.frames {
            let e = c.entry(*p).or_insert(-1);
            *e = (*e).max(*o);
        }
        for (p, _, b) in &self.gaps {
            let e = c.entry(*p).or_insert(-1);
            *e = (*e).max(*b);
        }
        c
    }
}

impl ReplayOut for Client {
    async fn frame(&mut self, f: &Frame) -> Result<(), Gone> {
        self.frames.push((f.cursor.partition, f.cursor.offset));
        Ok(())
    }

    async fn control(&mut self, text: String) -> Result<(), Gone> {
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        if v["type"] == "gap" {
            let n = |k: &str| v[k].as_i64().unwrap();
            self.gaps.push((n("partition") as i32, n("from"), n("to")));
        }
        if v["type"] == "offsets_reset" {
            let n = |k: &str| v[k].as_i64().unwrap();
            self.resets.push((n("partition") as i32, n("first_offset")));
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), Gone> {
        Ok(())
    }

    async fn try_frame(&mut self, f: &Frame) -> Result<bool, Gone> {
        match &mut self.room {
            Some(0) => Ok(false),
            Some(n) => {
                *n -= 1;
                self.frame(f).await.map(|()| true)
            }
            None => self.frame(f).await.map(|()| true),
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// Ingest appends the next offset of a partition (deliverable or not;
    /// written to Redis or not).
    Append {
        p: i32,
        deliverable: bool,
        redis: bool,
    },
    /// A client reads one pass with this budget (small: a slow reader);
    /// its socket takes `room` data frames before it is full.
    Read {
        client: usize,
        budget: usize,
        room: Option<usize>,
    },
    /// The bridge restarts: a new log; every client resumes from its cursor.
    Restart,
}

fn op(clients: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..PARTITIONS, proptest::bool::weighted(0.9), proptest::bool::weighted(0.5))
            .prop_map(|(p, deliverable, redis)| Op::Append { p, deliverable, redis }),
        4 => (0..clients, 1usize..12, proptest::option::weighted(0.3, 0usize..6))
            .prop_map(|(client, budget, room)| Op::Read { client, budget, room }),
        1 => Just(Op::Restart),
    ]
}

#[derive(Clone, Debug)]
struct Model {
    ops: Vec<Op>,
    ring: usize,
    page: usize,
    retained_from: i64,
    kafka_on: bool,
}

fn model() -> impl Strategy<Value = Model> {
    (
        proptest::collection::vec(op(3), 1..160),
        1usize..12,
        1usize..6,
        prop_oneof![3 => Just(0i64), 1 => 0i64..30],
        proptest::bool::weighted(0.8),
    )
        .prop_map(|(ops, ring, page, retained_from, kafka_on)| Model {
            ops,
            ring,
            page,
            retained_from,
            kafka_on,
        })
}

fn context(m: &Model, world: &Arc<Mutex<World>>) -> ReplayContext<ModelTiers> {
    ReplayContext {
        hub: Hub::new(
            DeliveryLimits {
                priorities: PriorityTable::default(),
                reader_stall: std::time::Duration::from_secs(1),
                reader_hold: std::time::Duration::from_secs(5),
            },
            RingLimits {
                max_per_partition: m.ring,
                max_bytes_per_partition: usize::MAX,
            },
        ),
        tiers: ModelTiers {
            world: world.clone(),
            retained_from: m.retained_from,
            kafka_on: m.kafka_on,
        },
        watermarks: Default::default(),
        page: PageLimit::records(m.page),
        limits: DecodeLimits::default(),
        replays: ReplaySlots::new(1),
        budget: Default::default(),
    }
}

fn run_model(m: &Model) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let world: Arc<Mutex<World>> = Default::default();
        let filter = Filter::default();
        let metrics = DeliveryMetrics::new();
        let mut rc = context(m, &world);
        let mut clients: Vec<Client> = (0..3).map(|_| Client::default()).collect();
        let from_zero: HashMap<i32, i64> = (0..PARTITIONS).map(|p| (p, 0)).collect();
        let mut cursors: Vec<Cursors> = (0..3)
            .map(|_| Cursors::new(&rc.hub, from_zero.clone()))
            .collect();
        let fail = |_| TestCaseError::fail("a client never goes away");
        for op in &m.ops {
            match op {
                Op::Append {
                    p,
                    deliverable,
                    redis,
                } => {
                    let o = {
                        let mut w = world.lock();
                        let r = w.records.entry(*p).or_default();
                        r.push((*deliverable, *redis));
                        r.len() as i64 - 1
                    };
                    if *deliverable {
                        rc.hub.publish(&frame(*p, o));
                    } else {
                        rc.hub.skip(*p, o);
                    }
                }
                Op::Read {
                    client,
                    budget,
                    room,
                } => {
                    clients[*client].room = *room;
                    cursors[*client]
                        .pass(&rc, &mut clients[*client], &filter, *budget, &metrics)
                        .await
                        .map_err(fail)?;
                    clients[*client].room = None;
                }
                Op::Restart => {
                    drop(std::mem::take(&mut cursors));
                    rc = context(m, &world);
                    // The new process knows the topic's end from the broker.
                    for (p, r) in &world.lock().records {
                        rc.watermarks.lock().insert(*p, r.len() as i64);
                    }
                    for c in clients.iter_mut() {
                        let from = ResumeFrom::Cursor(c.cursor());
                        let r = replay(&rc, c, filter.clone(), from, &mut Sent::default(), 0)
                            .await
                            .map_err(fail)?;
                        cursors.push(Cursors::new(&rc.hub, r.next));
                    }
                }
            }
        }
        // Everyone reads to the end.
        for (c, cur) in clients.iter_mut().zip(cursors.iter_mut()) {
            for _ in 0..10_000 {
                let pass = cur.pass(&rc, c, &filter, 7, &metrics).await.map_err(fail)?;
                if !pass.more && !cur.has_news(&rc.hub) {
                    break;
                }
            }
        }
        let w = world.lock();
        check(m, &w, &clients)
    })
}

fn check(m: &Model, world: &World, clients: &[Client]) -> Result<(), TestCaseError> {
    for (ci, c) in clients.iter().enumerate() {
        for p in 0..PARTITIONS {
            let records = world.records.get(&p).cloned().unwrap_or_default();
            let got: Vec<i64> = c
                .frames
                .iter()
                .filter(|(q, _)| *q == p)
                .map(|(_, o)| *o)
                .collect();
            let gaps: Vec<(i64, i64)> = c
                .gaps
                .iter()
                .filter(|(q, _, _)| *q == p)
                .map(|(_, a, b)| (*a, *b))
                .collect();
            let in_gap = |o: i64| gaps.iter().any(|(a, b)| *a <= o && o <= *b);
            prop_assert!(
                got.windows(2).all(|w| w[0] < w[1]),
                "client {ci} partition {p}: out of order or twice: {got:?}"
            );
            for o in &got {
                prop_assert!(
                    records[*o as usize].0,
                    "client {ci}: {p}/{o} is not deliverable"
                );
                prop_assert!(
                    !in_gap(*o),
                    "client {ci}: {p}/{o} sent and inside a gap {gaps:?}"
                );
            }
            for (a, b) in &gaps {
                prop_assert!(a <= b, "client {ci}: empty gap");
                for o in *a..=*b {
                    let (deliverable, redis) =
                        records.get(o as usize).copied().unwrap_or((false, false));
                    let in_kafka = m.kafka_on && o >= m.retained_from;
                    prop_assert!(
                        !(deliverable && (redis || in_kafka)),
                        "client {ci}: {p}/{o} reported as a gap but a tier held it; gaps {gaps:?}"
                    );
                }
            }
            for (o, (deliverable, _)) in records.iter().enumerate() {
                let o = o as i64;
                if *deliverable {
                    prop_assert!(
                        got.binary_search(&o).is_ok() || in_gap(o),
                        "client {ci}: {p}/{o} neither sent nor inside a gap; got {got:?}, gaps {gaps:?}"
                    );
                }
            }
            if m.kafka_on && m.retained_from == 0 {
                prop_assert!(
                    gaps.is_empty(),
                    "client {ci}: Kafka held everything, yet gaps {gaps:?}"
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn every_client_gets_every_offset_once_in_order_or_inside_an_exact_gap(m in model()) {
        run_model(&m)?;
    }
}

#[test]
fn a_reader_that_fell_behind_the_log_catches_up_from_kafka_without_a_hole() {
    let m = Model {
        ops: (0..30)
            .map(|_| Op::Append {
                p: 0,
                deliverable: true,
                redis: false,
            })
            .chain([Op::Read {
                client: 0,
                budget: 100,
                room: None,
            }])
            .collect(),
        ring: 5,
        page: 4,
        retained_from: 0,
        kafka_on: true,
    };
    run_model(&m).unwrap();
    let m = Model {
        kafka_on: false,
        ..m
    };
    // Without Kafka or Redis, offsets 0..=24 are one exact gap.
    run_model(&m).unwrap();
}

/// The partition's offsets restart: a reader that had the old history gets
/// `offsets_reset`, then the new history once, in order: what ingest read
/// before the reset was noticed from Kafka, the rest from the log.
#[test]
fn offsets_that_restart_reach_a_reader_as_a_reset_then_the_new_history() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let m = Model {
            ops: vec![],
            ring: 100,
            page: 4,
            retained_from: 0,
            kafka_on: true,
        };
        let world: Arc<Mutex<World>> = Default::default();
        let rc = context(&m, &world);
        let (filter, metrics) = (Filter::default(), DeliveryMetrics::new());
        let mut client = Client::default();
        let mut cursors: Cursors = Cursors::new(&rc.hub, HashMap::from([(0, 0)]));
        world.lock().records.insert(0, vec![(true, false); 20]);
        for o in 0..20 {
            rc.hub.publish(&frame(0, o));
        }
        for _ in 0..10 {
            cursors
                .pass(&rc, &mut client, &filter, 100, &metrics)
                .await
                .unwrap();
        }
        assert_eq!(client.frames.len(), 20);
        // The topic is recreated: 5 records; ingest read 0..=2 before it noticed.
        world.lock().records.insert(0, vec![(true, false); 5]);
        rc.hub.reset_partition(0, 0, 2);
        for o in 3..5 {
            rc.hub.publish(&frame(0, o));
        }
        for _ in 0..10 {
            cursors
                .pass(&rc, &mut client, &filter, 100, &metrics)
                .await
                .unwrap();
        }
        assert_eq!(client.resets, vec![(0, 0)]);
        assert_eq!(
            client.frames[20..],
            [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4)]
        );
        assert!(client.gaps.is_empty(), "{:?}", client.gaps);
        // A reader that starts after the reset reads the new history only.
        let mut late = Client::default();
        let mut c2: Cursors = Cursors::new(&rc.hub, HashMap::from([(0, 0)]));
        for _ in 0..10 {
            c2.pass(&rc, &mut late, &filter, 100, &metrics)
                .await
                .unwrap();
        }
        assert_eq!(late.frames, [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4)]);
    });
}

#[test]
fn at_critical_backpressure_a_reader_that_is_behind_skips_low_priority_frames_with_exact_gaps() {
    use crate::proto::dash_stream_message::Message;
    use crate::proto::{DashStreamMessage, Header, TokenChunk};
    let token = |o: i64| {
        let v = encode_record(
            &DashStreamMessage {
                message: Some(Message::TokenChunk(TokenChunk {
                    header: Some(Header {
                        thread_id: "t".into(),
                        sequence: o as u64 + 1,
                        ..Default::default()
                    }),
                    ..Default::default()
                })),
            },
            None,
        );
        frame_of(0, o, &v)
    };
    let m = Model {
        ops: vec![],
        ring: 100,
        page: 4,
        retained_from: 0,
        kafka_on: true,
    };
    let world: Arc<Mutex<World>> = Default::default();
    let rc = context(&m, &world);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let metrics = DeliveryMetrics::new();
        let filter = Filter::default();
        let mut client = Client::default();
        let mut cursors: Cursors = Cursors::new(&rc.hub, [(0, 0)].into());
        // 0..=5 token chunks (low), 6 an event (normal), 7 a token chunk.
        for o in 0..8 {
            if o == 6 {
                rc.hub.publish(&frame(0, o));
            } else {
                rc.hub.publish(&token(o));
            }
        }
        rc.hub.set_shedding(true);
        // Pages of 4: both are full, so the reader counts as behind for each.
        for _ in 0..3 {
            cursors
                .pass(&rc, &mut client, &filter, 4, &metrics)
                .await
                .unwrap();
        }
        assert_eq!(
            client.frames,
            vec![(0, 6)],
            "only the normal-priority frame while behind"
        );
        assert_eq!(
            client.gaps,
            vec![(0, 0, 3), (0, 4, 5), (0, 7, 7)],
            "exact ranges of what was skipped while behind"
        );
        // At the head the reader is not behind: nothing is skipped any more.
        rc.hub.publish(&token(8));
        cursors
            .pass(&rc, &mut client, &filter, 4, &metrics)
            .await
            .unwrap();
        assert_eq!(client.frames.last(), Some(&(0, 8)));
        // Without shedding nothing is skipped, behind or not.
        rc.hub.set_shedding(false);
        for o in 9..20 {
            rc.hub.publish(&token(o));
        }
        for _ in 0..4 {
            cursors
                .pass(&rc, &mut client, &filter, 4, &metrics)
                .await
                .unwrap();
        }
        assert_eq!(client.frames.len(), 2 + 11);
    });
}
