//! What reaches sessions outside the log's offset order: thread notices
//! (halted, resumed), the records released after a halt, and offsets that
//! restart, in one ordered list of the newest [`MAX_NOTICES`].
//!
//! A session delivers every notice after the one it started from, once. A
//! *notice cursor* (`BOOT:SEQ`, in `hello`, `replay_complete` and each thread
//! notice) names a place in this list: a client that reconnects to the same
//! process with its cursor gets what it missed meanwhile, released records
//! included, even those below its offsets. Within a session, a released
//! record is delivered by its notice only, never also in offset order from
//! the log or a replay tier ([`LateSince`]).

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use parking_lot::Mutex;

use crate::record::frame::Frame;

/// Notices kept for sessions that have not read them yet.
pub(crate) const MAX_NOTICES: usize = 1024;

/// Longest notice cursor a client may send.
pub(crate) const MAX_CURSOR_LEN: usize = 64;

/// One notice.
#[derive(Clone)]
pub(crate) enum Notice {
    /// A control frame about one thread (`thread_halted`).
    Thread {
        thread: Box<str>,
        tenant: Box<str>,
        text: Utf8Bytes,
    },
    /// An operator released a halted thread: `thread_resumed`, then its
    /// held records, in their order (sessions past their offsets get them too).
    Released {
        thread: Box<str>,
        tenant: Box<str>,
        frames: Arc<[Arc<Frame>]>,
    },
    /// The partition's offsets restarted at `first` (epoch `epoch` of the log).
    OffsetsReset {
        partition: i32,
        first: i64,
        epoch: u64,
    },
}

/// The ordered list and this process's cursor space.
pub(crate) struct Notices {
    list: Mutex<VecDeque<(u64, Notice)>>,
    seq: AtomicU64,
    /// Tells this process's cursors from another's (or a restarted one's).
    boot: u64,
}

/// A notice cursor a client sent that is not of the form `BOOT:SEQ`.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("notices: expected the cursor the bridge sent (BOOT:SEQ)")]
pub(crate) struct BadCursor;

impl Notices {
    pub(crate) fn new() -> Self {
        Self {
            list: Mutex::new(VecDeque::new()),
            seq: AtomicU64::new(0),
            boot: rand::random(),
        }
    }

    /// Appends `n`; its sequence number.
    pub(crate) fn push(&self, n: Notice) -> u64 {
        let mut q = self.list.lock();
        let seq = self.seq.load(Ordering::SeqCst) + 1;
        q.push_back((seq, n));
        while q.len() > MAX_NOTICES {
            q.pop_front();
        }
        self.seq.store(seq, Ordering::SeqCst);
        seq
    }

    /// Sequence number of the newest notice.
    pub(crate) fn seq(&self) -> u64 {
        self.seq.load(Ordering::SeqCst)
    }

    /// Notices after `seq`, and how many of them are gone unread.
    pub(crate) fn since(&self, seq: u64) -> (Vec<(u64, Notice)>, u64) {
        let q = self.list.lock();
        let oldest = q.front().map_or(seq + 1, |(s, _)| *s);
        let missed = oldest.saturating_sub(seq + 1);
        let v = q.iter().filter(|(s, _)| *s > seq).cloned().collect();
        (v, missed)
    }

    /// The cursor a client keeps for `seq`.
    /// This process's boot id (the first half of its notice cursors).
    pub(crate) fn boot(&self) -> u64 {
        self.boot
    }

    pub(crate) fn cursor(&self, seq: u64) -> String {
        format!("{:016x}:{seq}", self.boot)
    }

    /// Where a client's cursor points in this process's list: `None` when it
    /// comes from another process (or is ahead of this one), so only what
    /// follows from now on can be delivered.
    pub(crate) fn resolve(&self, cursor: &str) -> Result<Option<u64>, BadCursor> {
        let (boot, seq) = parse_cursor(cursor)?;
        Ok((boot == self.boot && seq <= self.seq()).then_some(seq))
    }

    /// (partition, offset) of every record released after `seq` that is
    /// still in the list.
    fn released_since(&self, seq: u64) -> HashSet<(i32, i64)> {
        let q = self.list.lock();
        q.iter()
            .filter(|(s, _)| *s > seq)
            .filter_map(|(_, n)| match n {
                Notice::Released { frames, .. } => Some(frames),
                _ => None,
            })
            .flat_map(|frames| frames.iter().map(|f| (f.cursor.partition, f.cursor.offset)))
            .collect()
    }
}

/// Reads a notice cursor, `BOOT:SEQ` (hexadecimal, decimal).
pub(crate) fn parse_cursor(cursor: &str) -> Result<(u64, u64), BadCursor> {
    if cursor.len() > MAX_CURSOR_LEN {
        return Err(BadCursor);
    }
    let (boot, seq) = cursor.split_once(':').ok_or(BadCursor)?;
    let boot = u64::from_str_radix(boot, 16).map_err(|_| BadCursor)?;
    let seq: u64 = seq.parse().map_err(|_| BadCursor)?;
    Ok((boot, seq))
}

/// The records released after a session's starting notice: it gets them by
/// their notice, so it skips them where it reads in offset order (the log,
/// where a released record replaced its tombstone, and Redis or Kafka).
pub(crate) struct LateSince {
    since: u64,
    /// The newest notice `released` was built from.
    seen: u64,
    released: HashSet<(i32, i64)>,
}

impl LateSince {
    pub(crate) fn new(since: u64) -> Self {
        Self {
            since,
            seen: since,
            released: HashSet::new(),
        }
    }

    /// The session's starting notice.
    pub(crate) fn since(&self) -> u64 {
        self.since
    }

    /// True if the record at `offset` of `partition` was released after the
    /// session's start (one atomic load while no notice came).
    pub(crate) fn covers(&mut self, notices: &Notices, partition: i32, offset: i64) -> bool {
        let now = notices.seq();
        if now != self.seen {
            self.released = notices.released_since(self.since);
            self.seen = now;
        }
        !self.released.is_empty() && self.released.contains(&(partition, offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::testing::event_frame;

    fn released(offsets: &[i64]) -> Notice {
        Notice::Released {
            thread: "t0".into(),
            tenant: "".into(),
            frames: offsets.iter().map(|o| event_frame(0, *o)).collect(),
        }
    }

    #[test]
    fn cursors_name_a_place_in_this_process_only() {
        let n = Notices::new();
        n.push(released(&[1]));
        let c = n.cursor(1);
        assert_eq!(n.resolve(&c), Ok(Some(1)));
        assert_eq!(n.resolve(&n.cursor(0)), Ok(Some(0)));
        assert_eq!(n.resolve(&n.cursor(2)), Ok(None), "ahead of this process");
        let other = Notices::new();
        assert_eq!(other.resolve(&c), Ok(None), "another process");
        for bad in ["", "1", "zz:1", "1:x", &"1".repeat(65)] {
            assert_eq!(n.resolve(bad), Err(BadCursor), "{bad}");
        }
    }

    #[test]
    fn a_session_skips_in_order_copies_of_what_was_released_after_its_start() {
        let n = Notices::new();
        n.push(released(&[1]));
        let mut late = LateSince::new(n.seq());
        assert!(
            !late.covers(&n, 0, 1),
            "released before the session: read in order"
        );
        n.push(released(&[4, 5]));
        assert!(late.covers(&n, 0, 4));
        assert!(late.covers(&n, 0, 5));
        assert!(!late.covers(&n, 0, 6));
        assert!(!late.covers(&n, 1, 4));
    }

    #[test]
    fn the_list_is_ordered_and_bounded() {
        let n = Notices::new();
        let seen = n.seq();
        for _ in 0..MAX_NOTICES + 7 {
            n.push(released(&[0]));
        }
        let (v, missed) = n.since(seen);
        assert_eq!(v.len(), MAX_NOTICES);
        assert_eq!(missed, 7);
        assert!(v.windows(2).all(|w| w[0].0 + 1 == w[1].0));
    }
}
