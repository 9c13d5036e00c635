//! Sequence stage: per-thread validation of DashStream sequence numbers.
//!
//! For each `thread_id` the validator keeps the highest accepted sequence and
//! a bit window of the `window` sequences at and below it, so it can tell a
//! *duplicate* (seen before) from a *reorder* (fills an earlier gap):
//!
//! - first sequence seen for a thread → baseline (a bridge restart is not a gap);
//! - `seq == highest + 1` → in order;
//! - `seq > highest + 1` → gap of `seq - highest - 1` messages;
//! - `seq <= highest`, inside the window: seen → duplicate, unseen → reorder;
//! - `seq <= highest - window` (older than the window): duplicate. The
//!   validator cannot know any more, and Kafka's at-least-once redelivery is
//!   by far the usual cause.
//!
//! Memory is bounded: at most `max_threads` threads are tracked. When a new
//! thread arrives at capacity the least recently seen thread is evicted, and
//! threads idle for longer than `idle` are evicted by [`SequenceValidator::evict_idle`].
//! An evicted thread's next message sets a new baseline.

use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use lru::LruCache;

/// What happens to a thread when a gap is detected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum GapPolicy {
    /// Accept and move on silently (counted in metrics only).
    Continue,
    /// Accept, log a warning, count (default).
    Warn,
    /// Hold the thread's records back from clients until an operator resumes it.
    Halt,
}

impl GapPolicy {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            GapPolicy::Continue => "continue",
            GapPolicy::Warn => "warn",
            GapPolicy::Halt => "halt",
        }
    }
}

/// The validator's judgement of one (thread, sequence).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// First sequence seen for this thread: it sets the baseline.
    Baseline,
    InOrder,
    /// `missing` sequences were skipped before this one.
    Gap {
        missing: u64,
    },
    Duplicate,
    Reorder,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct ValidatorConfig {
    pub(crate) window: u32,
    pub(crate) max_threads: usize,
    pub(crate) idle: Duration,
}

impl Default for ValidatorConfig {
    fn default() -> Self {
        Self {
            window: 1024,
            max_threads: 100_000,
            idle: Duration::from_secs(3600),
        }
    }
}

struct ThreadState {
    highest: u64,
    /// Bit `s % window` is set when sequence `s` (within the window) was seen.
    seen: Box<[u64]>,
    last_seen: Instant,
}

impl ThreadState {
    fn new(seq: u64, window: u64, now: Instant) -> Self {
        let mut s = Self {
            highest: seq,
            seen: vec![0u64; (window / 64) as usize].into_boxed_slice(),
            last_seen: now,
        };
        s.set(seq, window);
        s
    }

    fn bit(seq: u64, window: u64) -> (usize, u64) {
        let i = seq % window;
        ((i / 64) as usize, 1u64 << (i % 64))
    }

    fn set(&mut self, seq: u64, window: u64) {
        let (w, b) = Self::bit(seq, window);
        self.seen[w] |= b;
    }

    /// Clears the bits of sequences `from..to` (fewer than `window`), a
    /// word at a time: at most `window / 64 + 1` word writes, whatever the
    /// jump.
    fn clear_range(&mut self, from: u64, to: u64, window: u64) {
        let mut s = from;
        while s < to {
            let i = s % window;
            let bit = i % 64;
            // The window is a whole number of words: a run never wraps mid-word.
            let n = (64 - bit).min(to - s);
            let mask = if n == 64 {
                !0
            } else {
                ((1u64 << n) - 1) << bit
            };
            self.seen[(i / 64) as usize] &= !mask;
            s += n;
        }
    }

    fn is_set(&self, seq: u64, window: u64) -> bool {
        let (w, b) = Self::bit(seq, window);
        self.seen[w] & b != 0
    }
}

/// Tracks sequences for a bounded set of threads. Owned by the pipeline task:
/// no locks, no sharing.
pub(crate) struct SequenceValidator {
    /// Keyed with foldhash, seeded per process: a thread id costs a few
    /// nanoseconds to hash (SipHash took about 5 % of the consumer thread).
    threads: LruCache<Box<str>, ThreadState, foldhash::fast::RandomState>,
    window: u64,
    idle: Duration,
}

/// Threads evicted by one call, by reason, for metrics.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Evictions {
    pub(crate) idle: u64,
    pub(crate) capacity: u64,
}

impl SequenceValidator {
    pub(crate) fn new(cfg: ValidatorConfig) -> Self {
        // The window is a whole number of 64-bit words.
        let window = u64::from(cfg.window.max(64)).div_ceil(64) * 64;
        let cap = NonZeroUsize::new(cfg.max_threads.max(1)).unwrap_or(NonZeroUsize::MIN);
        Self {
            threads: LruCache::with_hasher(cap, foldhash::fast::RandomState::default()),
            window,
            idle: cfg.idle,
        }
    }

    pub(crate) fn tracked_threads(&self) -> usize {
        self.threads.len()
    }

    /// Judges `seq` for `thread` and records it. `seq` must be non-zero
    /// (0 means "not sequenced" and is never validated).
    pub(crate) fn observe(&mut self, thread: &str, seq: u64, now: Instant) -> (Verdict, Evictions) {
        let w = self.window;
        let mut ev = Evictions::default();
        let Some(st) = self.threads.get_mut(thread) else {
            if self.threads.len() == self.threads.cap().get() {
                self.threads.pop_lru();
                ev.capacity = 1;
            }
            self.threads
                .put(thread.into(), ThreadState::new(seq, w, now));
            return (Verdict::Baseline, ev);
        };
        st.last_seen = now;
        let verdict = if seq > st.highest {
            let jump = seq - st.highest;
            if jump >= w {
                st.seen.iter_mut().for_each(|x| *x = 0);
            } else {
                st.clear_range(st.highest + 1, seq, w);
            }
            st.highest = seq;
            st.set(seq, w);
            if jump == 1 {
                Verdict::InOrder
            } else {
                Verdict::Gap { missing: jump - 1 }
            }
        } else if st.highest - seq >= w || st.is_set(seq, w) {
            // Older than the window: cannot tell, counted as a duplicate (see module docs).
            Verdict::Duplicate
        } else {
            st.set(seq, w);
            Verdict::Reorder
        };
        (verdict, ev)
    }

    /// Forgets threads not seen for longer than the idle timeout.
    pub(crate) fn evict_idle(&mut self, now: Instant) -> u64 {
        let mut n = 0;
        while let Some((_, st)) = self.threads.peek_lru() {
            if now.saturating_duration_since(st.last_seen) <= self.idle {
                break;
            }
            self.threads.pop_lru();
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{HashMap, HashSet};

    fn v(window: u32, max_threads: usize) -> SequenceValidator {
        SequenceValidator::new(ValidatorConfig {
            window,
            max_threads,
            idle: Duration::from_secs(60),
        })
    }

    #[test]
    fn classifies_the_documented_cases() {
        let now = Instant::now();
        let mut s = v(64, 10);
        let mut o = |seq| s.observe("t", seq, now).0;
        assert_eq!(o(5), Verdict::Baseline);
        assert_eq!(o(6), Verdict::InOrder);
        assert_eq!(o(9), Verdict::Gap { missing: 2 });
        assert_eq!(o(7), Verdict::Reorder);
        assert_eq!(o(7), Verdict::Duplicate);
        assert_eq!(o(9), Verdict::Duplicate);
        assert_eq!(o(8), Verdict::Reorder);
        assert_eq!(o(10), Verdict::InOrder);
        assert_eq!(o(1000), Verdict::Gap { missing: 989 });
        assert_eq!(o(999), Verdict::Reorder);
        assert_eq!(
            o(10),
            Verdict::Duplicate,
            "older than the window counts as duplicate"
        );
    }

    #[test]
    fn capacity_evicts_the_least_recently_seen_thread() {
        let now = Instant::now();
        let mut s = v(64, 2);
        s.observe("a", 1, now);
        s.observe("b", 1, now);
        s.observe("a", 2, now);
        let (verdict, ev) = s.observe("c", 1, now);
        assert_eq!((verdict, ev.capacity), (Verdict::Baseline, 1));
        assert_eq!(
            s.observe("a", 3, now).0,
            Verdict::InOrder,
            "a was recently seen and kept"
        );
        assert_eq!(
            s.observe("b", 5, now).0,
            Verdict::Baseline,
            "b was evicted: new baseline"
        );
    }

    #[test]
    fn idle_threads_expire() {
        let t0 = Instant::now();
        let mut s = v(64, 10);
        s.observe("old", 1, t0);
        s.observe("new", 1, t0 + Duration::from_secs(50));
        assert_eq!(s.evict_idle(t0 + Duration::from_secs(70)), 1);
        assert_eq!(s.tracked_threads(), 1);
        assert_eq!(
            s.observe("old", 9, t0 + Duration::from_secs(71)).0,
            Verdict::Baseline
        );
    }

    /// Reference model: unbounded memory of every sequence seen.
    fn model(seqs: &[u64]) -> Vec<Verdict> {
        let mut seen = HashSet::new();
        let mut highest: Option<u64> = None;
        seqs.iter()
            .map(|&s| {
                let v = match highest {
                    None => Verdict::Baseline,
                    Some(h) if s == h + 1 => Verdict::InOrder,
                    Some(h) if s > h => Verdict::Gap { missing: s - h - 1 },
                    Some(_) if seen.contains(&s) => Verdict::Duplicate,
                    Some(_) => Verdict::Reorder,
                };
                seen.insert(s);
                highest = Some(highest.map_or(s, |h| h.max(s)));
                v
            })
            .collect()
    }

    proptest! {
        /// Within the window the validator agrees exactly with unbounded memory.
        #[test]
        fn matches_the_unbounded_model_within_the_window(
            start in 1u64..1_000_000,
            steps in proptest::collection::vec(-40i64..40, 1..300),
        ) {
            let mut seqs = vec![start];
            for d in steps {
                let last = *seqs.last().unwrap() as i64;
                seqs.push((last + d).max(1) as u64);
            }
            // Keep every sequence within 64 of the running maximum: inside the window.
            let mut max = 0u64;
            let seqs: Vec<u64> = seqs.into_iter().filter(|&s| { let ok = s + 64 > max; max = max.max(s); ok }).collect();
            let now = Instant::now();
            let mut val = v(128, 10);
            let got: Vec<Verdict> = seqs.iter().map(|&s| val.observe("t", s, now).0).collect();
            prop_assert_eq!(got, model(&seqs));
        }

        /// For any jumps, the validator agrees with a model that remembers
        /// every sequence but judges only within the window.
        #[test]
        fn matches_a_windowed_model_for_any_jump(
            start in 1u64..1_000_000,
            steps in proptest::collection::vec(-300i64..300, 1..300),
        ) {
            let w = 128u64;
            let mut seqs = vec![start];
            for d in steps {
                let last = *seqs.last().unwrap() as i64;
                seqs.push((last + d).max(1) as u64);
            }
            let (mut seen, mut highest) = (HashSet::new(), None::<u64>);
            let want: Vec<Verdict> = seqs.iter().map(|&s| {
                let v = match highest {
                    None => Verdict::Baseline,
                    Some(h) if s == h + 1 => Verdict::InOrder,
                    Some(h) if s > h => Verdict::Gap { missing: s - h - 1 },
                    Some(h) if h - s >= w || seen.contains(&s) => Verdict::Duplicate,
                    Some(_) => Verdict::Reorder,
                };
                seen.insert(s);
                highest = Some(highest.map_or(s, |h| h.max(s)));
                v
            }).collect();
            let now = Instant::now();
            let mut val = v(w as u32, 10);
            let got: Vec<Verdict> = seqs.iter().map(|&s| val.observe("t", s, now).0).collect();
            prop_assert_eq!(got, want);
        }

        /// Counts for a producer stream with injected faults are exact.
        #[test]
        fn injected_faults_are_counted_exactly(n in 10u64..500, gap_every in 3u64..50, dup_every in 3u64..50) {
            let now = Instant::now();
            let mut val = v(1024, 10);
            let (mut gaps, mut dups) = (0, 0);
            let mut seq = 0;
            let mut expect_gaps = 0;
            let mut expect_dups = 0;
            for i in 1..=n {
                seq += 1;
                if i % gap_every == 0 { seq += 1; expect_gaps += 1; }
                let verdicts = if i % dup_every == 0 { expect_dups += 1; vec![seq, seq] } else { vec![seq] };
                for s in verdicts {
                    match val.observe("t", s, now).0 {
                        Verdict::Gap { missing } => { gaps += 1; prop_assert_eq!(missing, 1); }
                        Verdict::Duplicate => dups += 1,
                        Verdict::Reorder => prop_assert!(false, "no reorders injected"),
                        _ => {}
                    }
                }
            }
            // The first message is the baseline, so a gap injected at i == 1 is invisible.
            let invisible = if gap_every == 1 { 1 } else { 0 };
            prop_assert_eq!(gaps, expect_gaps - invisible);
            prop_assert_eq!(dups, expect_dups);
        }

        /// Threads are independent.
        #[test]
        fn threads_do_not_interfere(order in proptest::collection::vec(0usize..4, 1..200)) {
            let now = Instant::now();
            let mut val = v(64, 10);
            let mut next: HashMap<usize, u64> = HashMap::new();
            for t in order {
                let s = next.entry(t).or_insert(1);
                let verdict = val.observe(&format!("t{t}"), *s, now).0;
                prop_assert!(matches!(verdict, Verdict::Baseline | Verdict::InOrder));
                *s += 1;
            }
        }
    }
}
