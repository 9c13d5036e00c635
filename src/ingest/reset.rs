//! Offsets going backwards: when a topic is deleted and recreated, or a
//! broker loses its data, a partition's offsets restart under the same
//! namespace, and what the bridge holds for the old offsets (memory log,
//! Redis) belongs to another history.
//!
//! A record at or below the highest offset this process has seen for its
//! partition makes the partition *suspect*; a re-read after a rebalance or a
//! restart looks the same at first. The next librdkafka statistics tell them
//! apart: in the same history the high watermark is above the old highest
//! offset; after a reset it is not. Only then is the partition reset (the
//! log and the Redis index dropped, sessions told with `offsets_reset` and
//! restarted at the first offset of the new history, which they catch up
//! from Kafka). Detected while the new history is shorter than the old one.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

struct Suspect {
    /// The highest offset of the old history.
    head: i64,
    /// The lowest offset seen since the partition went backwards.
    first: i64,
    /// The highest offset seen since.
    last: i64,
    since: Instant,
}

#[derive(Default)]
pub(crate) struct ResetWatch {
    /// Highest offset seen per partition (kept across rebalances).
    highest: BTreeMap<i32, i64>,
    suspects: BTreeMap<i32, Suspect>,
}

impl ResetWatch {
    /// A record at `offset` of `partition` was read at `now`.
    pub(crate) fn observe(&mut self, partition: i32, offset: i64, now: Instant) {
        if let Some(s) = self.suspects.get_mut(&partition) {
            s.first = s.first.min(offset);
            s.last = s.last.max(offset);
            if offset > s.head {
                // The history went on past the old head: it was a re-read.
                self.suspects.remove(&partition);
                self.highest.insert(partition, offset);
            }
            return;
        }
        match self.highest.get_mut(&partition) {
            Some(h) if offset <= *h => {
                self.suspects.insert(
                    partition,
                    Suspect {
                        head: *h,
                        first: offset,
                        last: offset,
                        since: now,
                    },
                );
            }
            Some(h) => *h = offset,
            None => {
                self.highest.insert(partition, offset);
            }
        }
    }

    /// With each partition's high watermark and when librdkafka reported
    /// it: the partitions whose offsets restarted, with the first offset of
    /// their new history. From then on the new history is the one watched.
    /// Each reset is (partition, first, last offset read so far).
    pub(crate) fn check(
        &mut self,
        watermarks: &HashMap<i32, (i64, Instant)>,
    ) -> Vec<(i32, i64, i64)> {
        let mut reset = Vec::new();
        let highest = &mut self.highest;
        self.suspects.retain(|p, s| {
            let Some((hi, at)) = watermarks.get(p) else {
                return true;
            };
            if *at <= s.since {
                return true;
            }
            if *hi <= s.head {
                reset.push((*p, s.first, s.last));
                highest.insert(*p, s.last);
            }
            false
        });
        reset
    }

    #[cfg(test)]
    fn suspect(&self, p: i32) -> bool {
        self.suspects.contains_key(&p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_re_read_is_not_a_reset_and_a_restart_is() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(1);
        let mut w = ResetWatch::default();
        for o in 0..100 {
            w.observe(0, o, t0);
        }
        // A rebalance re-reads from the committed offset 90.
        w.observe(0, 90, t0);
        assert!(w.suspect(0));
        let hi = HashMap::from([(0, (100, later))]);
        assert_eq!(w.check(&hi), vec![], "the watermark is past the old head");
        assert!(!w.suspect(0));
        // Stale statistics (from before the suspicion) decide nothing.
        w.observe(0, 0, later);
        assert_eq!(w.check(&HashMap::from([(0, (100, t0))])), vec![]);
        assert!(w.suspect(0));
        // The topic was recreated: 30 records, watermark 30.
        for o in 1..30 {
            w.observe(0, o, later);
        }
        let hi = HashMap::from([(0, (30, later + Duration::from_secs(1)))]);
        assert_eq!(w.check(&hi), vec![(0, 0, 29)]);
        w.observe(0, 30, later);
        assert!(!w.suspect(0), "the new history goes on");
    }

    #[test]
    fn a_re_read_that_goes_past_the_old_head_clears_itself() {
        let t0 = Instant::now();
        let mut w = ResetWatch::default();
        for o in 0..10 {
            w.observe(1, o, t0);
        }
        w.observe(1, 5, t0);
        for o in 6..12 {
            w.observe(1, o, t0);
        }
        assert!(!w.suspect(1));
        assert_eq!(
            w.check(&HashMap::from([(1, (0, t0 + Duration::from_secs(1)))])),
            vec![]
        );
    }
}
