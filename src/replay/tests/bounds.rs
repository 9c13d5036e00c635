//! What bounds a replay, over the fake tiers: slots given back by slow
//! clients, the budget of records and time, and records the filter refuses
//! on their header.

use super::*;

/// The hub of [`resume_at_4`] (30 records, the log holding the last 10) and
/// a context over it with `page` records per page and `budget`.
pub(super) fn context_at_4(
    case: &Case,
    page: usize,
    budget: crate::replay::config::ReplayBudget,
) -> ReplayContext<FakeTiers> {
    let hub = test_hub(case.ring);
    for o in 0..30 {
        hub.publish(&frame(0, o));
    }
    ReplayContext {
        hub,
        tiers: FakeTiers {
            case: case.clone(),
            appended: Arc::new(Mutex::new(HashMap::from([(0, 30)]))),
            redis_calls: Default::default(),
            kafka_gate: None,
        },
        watermarks: Default::default(),
        page: PageLimit::records(page),
        limits: DecodeLimits::default(),
        replays: ReplaySlots::new(1),
        budget,
    }
}

/// A resume at offset 4 with `filter` (notices from the first).
pub(super) async fn resume4<O: ReplayOut>(
    rc: &ReplayContext<FakeTiers>,
    out: &mut O,
    filter: Filter,
) -> crate::replay::driver::Resumed {
    replay(rc, out, filter, at_4(), &mut Sent::default(), 0)
        .await
        .unwrap_or_else(|_| panic!("the client never goes away"))
}

pub(super) fn at_4() -> ResumeFrom {
    ResumeFrom::Cursor(HashMap::from([(0, 4)]))
}

pub(super) fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

/// A client that takes nothing: its first data frame never goes out.
struct Stalled;

impl ReplayOut for Stalled {
    async fn frame(&mut self, _: &Frame) -> Result<(), Gone> {
        std::future::pending().await
    }

    async fn control(&mut self, _: String) -> Result<(), Gone> {
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), Gone> {
        Ok(())
    }
}

/// A client that takes `delay` per frame; the free replay slots seen at each
/// write.
struct SlotWatch<'a> {
    slots: &'a ReplaySlots,
    delay: std::time::Duration,
    free_at_write: Vec<usize>,
}

impl ReplayOut for SlotWatch<'_> {
    async fn frame(&mut self, _: &Frame) -> Result<(), Gone> {
        self.free_at_write.push(self.slots.free());
        tokio::time::sleep(self.delay).await;
        Ok(())
    }

    async fn control(&mut self, _: String) -> Result<(), Gone> {
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), Gone> {
        Ok(())
    }
}

/// A replay keeps its slot while its client takes pages promptly, and gives
/// it back once a page has been going out for longer than `SLOW_PAGE`: here
/// during the first write of each page, so the slot is free at every other.
#[test]
fn a_slow_client_gives_its_replay_slot_back_while_it_reads() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let case = resume_at_4(true, true, 0);
        let rc = context_at_4(&case, 2, Default::default());
        let mut out = SlotWatch {
            slots: &rc.replays,
            delay: std::time::Duration::from_millis(1500),
            free_at_write: vec![],
        };
        let r = resume4(&rc, &mut out, Filter::default()).await;
        assert_eq!(r.replayed, 25);
        // Pages of (at most) 2: a page's first write holds the slot, a second
        // one (1.5 s later) finds it given back.
        let given_back = out.free_at_write.iter().filter(|f| **f == 1).count();
        let held = out.free_at_write.iter().filter(|f| **f == 0).count();
        assert!(given_back >= 10 && held >= 10, "{:?}", out.free_at_write);
    });
}

/// A fast client keeps its slot from page to page.
#[test]
fn a_fast_client_keeps_its_replay_slot() {
    current_thread().block_on(async {
        let case = resume_at_4(true, true, 0);
        let rc = context_at_4(&case, 2, Default::default());
        let mut out = SlotWatch {
            slots: &rc.replays,
            delay: std::time::Duration::ZERO,
            free_at_write: vec![],
        };
        let r = resume4(&rc, &mut out, Filter::default()).await;
        assert_eq!(r.replayed, 25);
        assert_eq!(out.free_at_write, vec![0; 25], "held throughout");
        assert_eq!(rc.replays.free(), 1, "given back at the end");
    });
}

/// With one replay slot, a client that stopped reading mid-replay does not
/// hold up another client's replay.
#[test]
fn a_stalled_replayer_does_not_hold_up_another() {
    current_thread().block_on(async {
        let case = resume_at_4(true, true, 0);
        let rc = context_at_4(&case, 2, Default::default());
        let mut stalled = Stalled;
        let mut out = Recorder::default();
        let (mut sent_a, mut sent_b) = (Sent::default(), Sent::default());
        let done = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            tokio::select! {
                biased;
                _ = replay(&rc, &mut stalled, Filter::default(), at_4(), &mut sent_a, 0) => {
                    panic!("the stalled client's replay cannot end")
                }
                r = replay(&rc, &mut out, Filter::default(), at_4(), &mut sent_b, 0) => r,
            }
        })
        .await
        .expect("the second replay ends while the first one is stalled");
        assert!(done.is_ok());
        let got: Vec<i64> = out.frames.iter().map(|(_, o)| *o).collect();
        assert_eq!(got, (5..30).collect::<Vec<_>>());
    });
}

/// A resume reads at most `REPLAY_MAX_RECORDS` records; the rest of what it
/// asked for is one exact `replay_budget` gap, and the session goes on live
/// after it.
#[test]
fn a_resume_stops_at_its_record_budget_with_an_exact_gap() {
    current_thread().block_on(async {
        let case = resume_at_4(true, true, 0);
        let budget = crate::replay::config::ReplayBudget {
            records: 6,
            time: std::time::Duration::from_secs(300),
        };
        let rc = context_at_4(&case, 2, budget);
        let mut out = Recorder::default();
        let r = resume4(&rc, &mut out, Filter::default()).await;
        assert!(r.budget_exhausted);
        assert!(r.read >= 6 && r.read < 10, "read {}", r.read);
        let got: Vec<i64> = out.frames.iter().map(|(_, o)| *o).collect();
        let last = *got.last().expect("some records before the budget ran out");
        assert_eq!(got, (5..=last).collect::<Vec<_>>());
        assert_eq!(out.gaps, vec![(0, last + 1, 29)]);
        assert_eq!(out.reasons, vec!["replay_budget"]);
        assert_eq!(
            r.next.get(&0),
            Some(&30),
            "live delivery goes on after the gap"
        );
    });
}

/// A resume runs at most `REPLAY_MAX_SECS`: here none, so one page goes out
/// and the rest is a `replay_budget` gap.
#[test]
fn a_resume_stops_at_its_time_budget() {
    current_thread().block_on(async {
        let case = resume_at_4(true, true, 0);
        let budget = crate::replay::config::ReplayBudget {
            records: 1_000_000,
            time: std::time::Duration::ZERO,
        };
        let rc = context_at_4(&case, 2, budget);
        let mut out = Recorder::default();
        let r = resume4(&rc, &mut out, Filter::default()).await;
        assert!(r.budget_exhausted);
        let got: Vec<i64> = out.frames.iter().map(|(_, o)| *o).collect();
        assert_eq!(got, vec![5, 6], "one Kafka page of 2");
        assert_eq!(out.gaps, vec![(0, 7, 29)]);
        assert_eq!(out.reasons, vec!["replay_budget"]);
    });
}

/// Records read back from Redis and Kafka that the client's filter refuses
/// by their wire header are not decoded; those it may want are.
#[test]
fn records_the_filter_refuses_are_not_decoded() {
    current_thread().block_on(async {
        let case = resume_at_4(true, true, 0);
        let rc = context_at_4(&case, 4, Default::default());
        for (threads, decoded, replayed) in
            [(Some("nobody"), 0, 0), (Some("t0"), 15, 25), (None, 15, 25)]
        {
            let filter = Filter::parse(threads, None, None, 10).unwrap();
            let mut out = Recorder::default();
            let r = resume4(&rc, &mut out, filter).await;
            // 5..=11 from Kafka, 12..=19 from Redis, 20..=29 from memory.
            assert_eq!(
                (r.read, r.decoded, r.replayed),
                (25, decoded, replayed),
                "{threads:?}"
            );
        }
    });
}

/// The time budget counts from a resume's first read: two minutes waiting
/// for its first slot (in a storm) do not use up a one-minute budget.
#[test]
fn the_time_budget_starts_at_the_first_read_not_at_the_wait_for_a_slot() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let case = resume_at_4(true, true, 0);
        let budget = crate::replay::config::ReplayBudget {
            records: 1_000_000,
            time: std::time::Duration::from_secs(60),
        };
        let rc = context_at_4(&case, 2, budget);
        let taken = rc
            .replays
            .acquire(&mut Recorder::default())
            .await
            .expect("the only slot");
        let mut out = Recorder::default();
        let (r, ()) = tokio::join!(resume4(&rc, &mut out, Filter::default()), async {
            tokio::time::sleep(std::time::Duration::from_secs(120)).await;
            drop(taken);
        });
        assert!(!r.budget_exhausted, "{:?}", out.gaps);
        assert_eq!(r.replayed, 25);
    });
}
