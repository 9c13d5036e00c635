//! Threads halted by `GAP_POLICY=halt` as every reading path sees them: per
//! thread, the first offset held in each partition. A record of a halted
//! thread at or past that offset is withheld from every client until an
//! operator releases the thread: live readers find its tombstone in the log,
//! replays find it in memory and Redis, and the Kafka tier, which holds the
//! record itself, asks here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::RwLock;

use crate::record::frame::Frame;

/// Per halted thread, each partition's first held offset.
type FirstHeld = HashMap<Box<str>, Vec<(i32, i64)>>;

#[derive(Default)]
pub(crate) struct HeldThreads {
    /// Any thread halted (one load on the replay path while none is).
    any: AtomicBool,
    /// Thread → (partition, first held offset).
    threads: RwLock<FirstHeld>,
}

impl HeldThreads {
    /// A record of `thread` at `offset` of `partition` is held. True when
    /// that changed the thread's first held offsets.
    pub(crate) fn hold(&self, thread: &str, partition: i32, offset: i64) -> bool {
        let mut t = self.threads.write();
        let parts = t.entry(thread.into()).or_default();
        self.any.store(true, Ordering::Release);
        match parts.iter_mut().find(|(p, _)| *p == partition) {
            Some((_, first)) if *first <= offset => false,
            Some((_, first)) => {
                *first = offset;
                true
            }
            None => {
                parts.push((partition, offset));
                true
            }
        }
    }

    /// `thread`'s first held offset per partition.
    pub(crate) fn first(&self, thread: &str) -> Vec<(i32, i64)> {
        self.threads.read().get(thread).cloned().unwrap_or_default()
    }

    /// False for a record of a halted `thread` below its first held offset
    /// in `partition`: it was delivered before the halt (read again after a
    /// restart or a rebalance), so it is not held now.
    pub(crate) fn holds_from(&self, thread: &str, partition: i32, offset: i64) -> bool {
        let t = self.threads.read();
        t.get(thread)
            .and_then(|parts| parts.iter().find(|(p, _)| *p == partition))
            .is_none_or(|(_, first)| offset >= *first)
    }

    /// `thread` was released: its records are delivered again.
    pub(crate) fn release(&self, thread: &str) {
        let mut t = self.threads.write();
        t.remove(thread);
        self.any.store(!t.is_empty(), Ordering::Release);
    }

    /// True if `f` belongs to a halted thread at or past its first held
    /// offset in `f`'s partition (a batch: any of its threads).
    pub(crate) fn withholds(&self, f: &Frame) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        let t = self.threads.read();
        f.summary.threads().any(|thread| {
            t.get(thread).is_some_and(|parts| {
                parts
                    .iter()
                    .any(|(p, first)| *p == f.cursor.partition && f.cursor.offset >= *first)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::testing::event_frame;

    #[test]
    fn a_halted_threads_records_are_withheld_from_its_first_held_offset_until_release() {
        let h = HeldThreads::default();
        // event_frame(p, o) belongs to thread `t{p}`.
        assert!(!h.withholds(&event_frame(0, 5)));
        assert!(h.holds_from("t0", 0, 1), "no hold in the partition yet");
        assert!(h.hold("t0", 0, 5), "a first held offset");
        assert!(!h.hold("t0", 0, 9), "not a new first");
        assert_eq!(h.first("t0"), vec![(0, 5)]);
        assert!(
            !h.holds_from("t0", 0, 4),
            "re-read from before the halt: delivered"
        );
        assert!(h.holds_from("t0", 0, 5));
        assert!(!h.withholds(&event_frame(0, 4)), "before the halt");
        assert!(h.withholds(&event_frame(0, 5)));
        assert!(h.withholds(&event_frame(0, 12)));
        assert!(!h.withholds(&event_frame(1, 12)), "another thread");
        h.release("t0");
        assert!(!h.withholds(&event_frame(0, 5)));
    }
}
