//! Who reads the log, and where: each session's cursors and when it last
//! made progress. Ingest asks before appending whether an append would push
//! a slot out of the log that a session which is still reading has not read
//! yet; if so it waits (Kafka is the buffer, consumer lag shows it) instead
//! of sending that session into catch-up.
//!
//! Decided by time, so that no one client slows ingest for long: a session
//! that made no progress for `stall` (it stopped reading) is not waited for,
//! and neither is one that has held ingest back for `hold` in all, while
//! other sessions waited at the head for new records, since it last caught
//! up with the head itself (it reads, but slower than records arrive).
//! Those fall behind the log and catch up from Redis and Kafka, or are
//! closed by the slow-client rule.
//!
//! Ingest asks about the partition of the record it is about to append
//! ([`Readers::must_wait_at`]). The check costs one atomic load while no
//! partition of the log is full; when one is, a read of that partition's
//! first slot and a scan of the readers at most once per slot that the
//! slowest reader still needs (the answer is cached until then).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::hub::log::Log;

/// What a session shares about its reading.
#[derive(Default)]
pub(crate) struct ReaderShared {
    /// Per partition, the next offset the session reads.
    next: Mutex<Vec<(i32, i64)>>,
    /// Unix ms of its last progress (a page read and written).
    progress_ms: AtomicI64,
    /// It has read everything and waits for more: it is keeping up, however
    /// long ago its last page was.
    idle: AtomicBool,
    /// How long ingest has waited for it since it was last at the head (ms).
    held_ms: AtomicI64,
    /// The gate last left it out (stalled): when it reads again, the gate's
    /// cached answer no longer holds.
    left_out: AtomicBool,
}

impl ReaderShared {
    /// Records the session's cursors after a page was written.
    pub(crate) fn progressed(&self, next: &HashMap<i32, i64>, now_ms: i64) {
        let mut v = self.next.lock();
        v.clear();
        v.extend(next.iter().map(|(p, o)| (*p, *o)));
        drop(v);
        self.progress_ms.store(now_ms, Ordering::Relaxed);
    }

    /// The session waits for more (it has read everything).
    /// Returns true if it was not idle before.
    pub(crate) fn idle(&self) -> bool {
        self.held_ms.store(0, Ordering::Relaxed);
        !self.idle.swap(true, Ordering::SeqCst)
    }

    /// The session starts reading again: it counts as making progress from
    /// now. Returns true if it was idle before.
    pub(crate) fn busy(&self, now_ms: i64) -> bool {
        if self.idle.load(Ordering::Relaxed) {
            self.progress_ms.store(now_ms, Ordering::SeqCst);
            self.idle.store(false, Ordering::SeqCst);
            return true;
        }
        false
    }

    /// Not waited for: it stopped reading, or it has held ingest back long enough.
    fn stalled(&self, now_ms: i64, stall_ms: i64, hold_ms: i64) -> bool {
        !self.idle.load(Ordering::SeqCst)
            && (now_ms - self.progress_ms.load(Ordering::SeqCst) > stall_ms
                || self.held_ms.load(Ordering::Relaxed) > hold_ms)
    }
}

/// The registered readers and the ingest gate.
pub(crate) struct Readers {
    list: Mutex<HashMap<u64, Arc<ReaderShared>>>,
    next_id: AtomicU64,
    stall_ms: i64,
    hold_ms: i64,
    /// Ingest waits for progress.
    ingest_waiting: AtomicBool,
    room: Notify,
    /// Per partition, offsets below this may be evicted without a rescan.
    free_below: Mutex<BTreeMap<i32, i64>>,
    /// The sessions the last `must_wait` found ingest waiting for.
    holding: Mutex<Vec<Arc<ReaderShared>>>,
    /// Sessions waiting at the head for more.
    idle: AtomicUsize,
}

/// A session's registration: removed when dropped (every exit path).
pub(crate) struct ReaderHandle {
    readers: Arc<Readers>,
    id: u64,
    pub(crate) shared: Arc<ReaderShared>,
}

impl Drop for ReaderHandle {
    fn drop(&mut self) {
        self.readers.list.lock().remove(&self.id);
        if self.shared.idle.load(Ordering::SeqCst) {
            self.readers.idle.fetch_sub(1, Ordering::Relaxed);
        }
        self.readers.wake_ingest();
    }
}

impl ReaderHandle {
    pub(crate) fn idle(&self) {
        if self.shared.idle() {
            self.readers.idle.fetch_add(1, Ordering::Relaxed);
        }
        self.rejoin();
    }

    pub(crate) fn busy(&self, now_ms: i64) {
        if self.shared.busy(now_ms) {
            self.readers.idle.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The session read and wrote a page: records it, and lets ingest on if it waits.
    pub(crate) fn progressed(&self, next: &HashMap<i32, i64>, now_ms: i64) {
        self.shared.progressed(next, now_ms);
        self.rejoin();
        self.readers.wake_ingest();
    }

    /// A session the gate left out reads again: the gate looks at it anew.
    fn rejoin(&self) {
        if self.shared.left_out.swap(false, Ordering::Relaxed) {
            self.readers.free_below.lock().clear();
        }
    }
}

impl Readers {
    pub(crate) fn new(stall: Duration, hold: Duration) -> Arc<Self> {
        Arc::new(Self {
            list: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            stall_ms: stall.as_millis() as i64,
            hold_ms: hold.as_millis() as i64,
            ingest_waiting: AtomicBool::new(false),
            room: Notify::new(),
            free_below: Mutex::new(BTreeMap::new()),
            holding: Mutex::new(Vec::new()),
            idle: AtomicUsize::new(0),
        })
    }

    /// How long ingest waits in all for one session that reads too slowly.
    pub(crate) fn hold(&self) -> Duration {
        Duration::from_millis(self.hold_ms as u64)
    }

    pub(crate) fn register(
        self: &Arc<Self>,
        next: &HashMap<i32, i64>,
        now_ms: i64,
    ) -> ReaderHandle {
        let shared = Arc::new(ReaderShared::default());
        shared.progressed(next, now_ms);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.list.lock().insert(id, shared.clone());
        // A new reader may need what was free before.
        self.free_below.lock().clear();
        ReaderHandle {
            readers: self.clone(),
            id,
            shared,
        }
    }

    fn wake_ingest(&self) {
        if self.ingest_waiting.load(Ordering::SeqCst) {
            self.free_below.lock().clear();
            self.room.notify_one();
        }
    }

    /// True when the next append to some full partition of `log` would evict
    /// a slot that a reader still reading has not read.
    pub(crate) fn must_wait(&self, log: &Log, now_ms: i64) -> bool {
        let mut free = self.free_below.lock();
        // Only partitions whose first slot a cached answer does not cover (allocates only then).
        let mut rescan: Vec<(i32, i64, i64)> = Vec::new();
        log.for_each_full(|p, first, origin| {
            if free.get(&p).is_none_or(|f| first >= *f) {
                rescan.push((p, first, origin));
            }
        });
        self.rescan(&mut free, &rescan, now_ms)
    }

    /// [`Readers::must_wait`] for the next append to `partition` alone: what
    /// ingest asks before each record (it knows the record's partition).
    pub(crate) fn must_wait_at(&self, log: &Log, partition: i32, now_ms: i64) -> bool {
        let Some((first, origin)) = log.full_at(partition) else {
            return false;
        };
        let mut free = self.free_below.lock();
        if free.get(&partition).is_some_and(|f| first < *f) {
            return false;
        }
        self.rescan(&mut free, &[(partition, first, origin)], now_ms)
    }

    /// Finds, for each full partition `(p, first, origin)`, the lowest
    /// cursor of a reader still reading, and caches it in `free`: true when
    /// one of them is at `first` (the slot the next append would evict).
    fn rescan(
        &self,
        free: &mut BTreeMap<i32, i64>,
        rescan: &[(i32, i64, i64)],
        now_ms: i64,
    ) -> bool {
        if rescan.is_empty() {
            return false;
        }
        let mut blocked = false;
        let list = self.list.lock();
        let mut holding = self.holding.lock();
        holding.clear();
        for &(p, first, origin) in rescan {
            // The lowest cursor still inside the log, among readers still reading.
            let mut lowest = i64::MAX;
            for r in list.values() {
                if r.stalled(now_ms, self.stall_ms, self.hold_ms) {
                    r.left_out.store(true, Ordering::Relaxed);
                    continue;
                }
                // A partition the session has not seen yet: it reads it from its origin.
                let n = r
                    .next
                    .lock()
                    .iter()
                    .find(|(q, _)| *q == p)
                    .map_or(origin, |(_, n)| *n);
                if n >= first {
                    lowest = lowest.min(n);
                }
                if n == first {
                    holding.push(r.clone());
                }
            }
            if lowest == first {
                blocked = true;
            }
            free.insert(p, lowest);
        }
        blocked
    }

    /// Waits until a reader makes progress or leaves, or `at_most`; returns
    /// at once if there is room by now. `live`: the records held back are
    /// recent (ingest is at the live edge, not reading a backlog), so the
    /// wait delays the sessions waiting at the head.
    pub(crate) async fn wait_for_room(&self, log: &Log, at_most: Duration, live: bool) {
        // The readers waited for must see everything appended so far.
        log.nudge();
        let room = self.room.notified();
        tokio::pin!(room);
        room.as_mut().enable();
        self.ingest_waiting.store(true, Ordering::SeqCst);
        // Progress made since the caller looked is not missed: it is seen
        // here, or it notifies the enabled waiter.
        self.free_below.lock().clear();
        if self.must_wait(log, crate::util::unix_ms()) {
            let started = std::time::Instant::now();
            let _ = tokio::time::timeout(at_most, room).await;
            // While every session is behind, or ingest reads a backlog (its
            // records are old already), waiting costs none of them anything.
            // While some wait at the head for recent records, the wait counts
            // against the sessions it was for.
            let ms = started.elapsed().as_millis() as i64;
            let others_wait = live && self.idle.load(Ordering::Relaxed) > 0;
            for r in self.holding.lock().drain(..) {
                if others_wait {
                    r.held_ms.fetch_add(ms.max(1), Ordering::Relaxed);
                }
            }
        }
        self.ingest_waiting.store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::log::{RingLimits, Slot};

    #[test]
    fn a_record_waits_only_when_its_own_partition_would_evict_unread() {
        let log = Log::new(RingLimits {
            max_per_partition: 2,
            max_bytes_per_partition: usize::MAX,
        });
        let readers = Readers::new(Duration::from_millis(1000), Duration::from_millis(1000));
        for p in 0..2 {
            for o in 0..2 {
                log.append(p, o, Slot::Tombstone, 0);
            }
        }
        // Behind on partition 0, done with partition 1.
        let r = readers.register(&[(0, 0), (1, 2)].into(), 10_000);
        assert!(readers.must_wait(&log, 10_000), "some partition is blocked");
        assert!(
            readers.must_wait_at(&log, 0, 10_000),
            "partition 0's first is unread"
        );
        assert!(
            !readers.must_wait_at(&log, 1, 10_000),
            "partition 1 was read"
        );
        assert!(
            !readers.must_wait_at(&log, 2, 10_000),
            "a partition the log lacks"
        );
        // The answer cached for partition 1 holds as it evicts what was read.
        log.append(1, 2, Slot::Tombstone, 0);
        assert!(!readers.must_wait_at(&log, 1, 10_000));
        log.append(1, 3, Slot::Tombstone, 0);
        assert!(
            readers.must_wait_at(&log, 1, 10_000),
            "partition 1's first (2) is the reader's next"
        );
        r.progressed(&[(0, 1), (1, 4)].into(), 10_100);
        assert!(!readers.must_wait_at(&log, 0, 10_100), "offset 0 was read");
        assert!(!readers.must_wait_at(&log, 1, 10_100));
        assert!(
            !readers.must_wait_at(&log, 0, 11_101),
            "a reader without progress for the stall time is not waited for"
        );
    }

    #[test]
    fn ingest_waits_only_for_a_reader_that_is_reading_and_about_to_fall_out() {
        let log = Log::new(RingLimits {
            max_per_partition: 3,
            max_bytes_per_partition: usize::MAX,
        });
        let readers = Readers::new(Duration::from_millis(1000), Duration::from_millis(1000));
        for o in 0..3 {
            log.append(0, o, Slot::Tombstone, 0);
        }
        assert!(!readers.must_wait(&log, 0), "no reader");
        let r = readers.register(&[(0, 0)].into(), 10_000);
        assert!(readers.must_wait(&log, 10_000), "offset 0 is unread");
        r.progressed(&[(0, 2)].into(), 10_100);
        assert!(!readers.must_wait(&log, 10_100), "offset 0 was read");
        log.append(0, 3, Slot::Tombstone, 0);
        assert!(!readers.must_wait(&log, 10_100), "first is 1, reader at 2");
        log.append(0, 4, Slot::Tombstone, 0);
        assert!(
            readers.must_wait(&log, 10_100),
            "first is 2: the reader's next"
        );
        assert!(
            !readers.must_wait(&log, 11_101),
            "a reader without progress for the stall time is not waited for"
        );
        let waiting = readers.register(&[(0, 2)].into(), 0);
        waiting.idle();
        assert!(
            readers.must_wait(&log, 11_101),
            "a reader that waits for data is keeping up, however old its last page"
        );
        drop(waiting);
        drop(r);
        assert!(
            !readers.must_wait(&log, 10_100),
            "a reader that left is not waited for"
        );
        let behind = readers.register(&[(0, 0)].into(), 10_100);
        assert!(
            !readers.must_wait(&log, 10_100),
            "a reader already behind the log catches up from the lower tiers"
        );
        drop(behind);
        let new = readers.register(&HashMap::new(), 10_100);
        let log = Log::new(RingLimits {
            max_per_partition: 2,
            max_bytes_per_partition: usize::MAX,
        });
        log.append(1, 0, Slot::Tombstone, 0);
        log.append(1, 1, Slot::Tombstone, 0);
        assert!(
            readers.must_wait(&log, 10_100),
            "a partition the session has not seen yet is read from its origin"
        );
        drop(new);
    }

    #[tokio::test]
    async fn a_reader_that_keeps_ingest_waiting_for_the_stall_time_is_no_longer_waited_for() {
        let log = Log::new(RingLimits {
            max_per_partition: 2,
            max_bytes_per_partition: usize::MAX,
        });
        log.append(0, 0, Slot::Tombstone, 0);
        log.append(0, 1, Slot::Tombstone, 0);
        let readers = Readers::new(Duration::from_secs(10), Duration::from_millis(100));
        let slow = readers.register(&[(0, 0)].into(), crate::util::unix_ms());
        // Another session keeps up: it waits at the head.
        let fast = readers.register(&[(0, 2)].into(), crate::util::unix_ms());
        fast.idle();
        let started = std::time::Instant::now();
        let mut waits = 0;
        // It keeps making progress (on other partitions), but never past offset 0 here.
        while readers.must_wait(&log, crate::util::unix_ms()) {
            slow.shared
                .progress_ms
                .store(crate::util::unix_ms(), Ordering::SeqCst);
            readers
                .wait_for_room(&log, Duration::from_millis(20), true)
                .await;
            waits += 1;
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "ingest waited too long"
            );
        }
        assert!(
            waits >= 3,
            "it was waited for a while first ({waits} waits)"
        );
        assert!(started.elapsed() >= Duration::from_millis(100));
        // Once it catches up with the head, it is waited for again.
        slow.progressed(&[(0, 2)].into(), crate::util::unix_ms());
        slow.idle();
        log.append(0, 2, Slot::Tombstone, 0);
        assert!(
            !readers.must_wait(&log, crate::util::unix_ms()),
            "first is 1, it reads 2"
        );
        slow.busy(crate::util::unix_ms());
        log.append(0, 3, Slot::Tombstone, 0);
        assert!(
            readers.must_wait(&log, crate::util::unix_ms()),
            "first is 2: waited for again"
        );
        drop(slow);
        drop(fast);
        // While every session is behind, waiting is held against none of them;
        // nor while ingest reads a backlog.
        let behind = readers.register(&[(0, 2)].into(), crate::util::unix_ms());
        for _ in 0..8 {
            behind
                .shared
                .progress_ms
                .store(crate::util::unix_ms(), Ordering::SeqCst);
            readers
                .wait_for_room(&log, Duration::from_millis(20), true)
                .await;
        }
        assert!(
            readers.must_wait(&log, crate::util::unix_ms()),
            "still waited for after 160 ms with no session at the head"
        );
        drop(behind);
        let slow = readers.register(&[(0, 2)].into(), crate::util::unix_ms());
        let fast = readers.register(&[(0, 4)].into(), crate::util::unix_ms());
        fast.idle();
        for _ in 0..8 {
            slow.shared
                .progress_ms
                .store(crate::util::unix_ms(), Ordering::SeqCst);
            readers
                .wait_for_room(&log, Duration::from_millis(20), false)
                .await;
        }
        assert!(
            readers.must_wait(&log, crate::util::unix_ms()),
            "reading a backlog, the slowest session is still waited for"
        );
    }
}
