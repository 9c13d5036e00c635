//! Offset book: per partition, the last processed record and the records
//! still held back (halted threads), from which the offset that is safe to
//! commit follows.
//!
//! Commit point of a partition = the lowest held offset if any record is held,
//! else last processed + 1. Storing only that point keeps at-least-once
//! delivery: a restart re-reads everything not yet handed to clients.

use std::collections::BTreeMap;

#[derive(Debug, Default)]
struct PartitionBook {
    last_processed: Option<i64>,
    last_timestamp_ms: Option<i64>,
    /// Held offsets, with how many holders each (a halt, a pending DLQ send).
    held: BTreeMap<i64, u32>,
}

#[derive(Debug, Default)]
pub(crate) struct OffsetBook {
    /// A few partitions per instance: ordered, no hashing per record.
    partitions: BTreeMap<i32, PartitionBook>,
}

/// Progress of one partition, for lag computation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Progress {
    pub(crate) last_processed: Option<i64>,
    pub(crate) last_timestamp_ms: Option<i64>,
}

impl OffsetBook {
    pub(crate) fn processed(&mut self, partition: i32, offset: i64, timestamp_ms: Option<i64>) {
        let p = self.partitions.entry(partition).or_default();
        if p.last_processed.is_none_or(|l| offset > l) {
            p.last_processed = Some(offset);
            p.last_timestamp_ms = timestamp_ms;
        }
    }

    pub(crate) fn hold(&mut self, partition: i32, offset: i64) {
        *self
            .partitions
            .entry(partition)
            .or_default()
            .held
            .entry(offset)
            .or_insert(0) += 1;
    }

    pub(crate) fn release(&mut self, partition: i32, offset: i64) {
        if let Some(p) = self.partitions.get_mut(&partition) {
            if let Some(n) = p.held.get_mut(&offset) {
                *n -= 1;
                if *n == 0 {
                    p.held.remove(&offset);
                }
            }
        }
    }

    /// The next offset to consume after a restart (what to commit), if known.
    pub(crate) fn commit_point(&self, partition: i32) -> Option<i64> {
        let p = self.partitions.get(&partition)?;
        p.held
            .keys()
            .next()
            .copied()
            .or(p.last_processed.map(|o| o + 1))
    }

    pub(crate) fn progress(&self, partition: i32) -> Progress {
        let p = self.partitions.get(&partition);
        Progress {
            last_processed: p.and_then(|p| p.last_processed),
            last_timestamp_ms: p.and_then(|p| p.last_timestamp_ms),
        }
    }

    /// Forgets a partition (revoked, or newly assigned: its position comes from Kafka).
    pub(crate) fn reset(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }

    pub(crate) fn partitions(&self) -> impl Iterator<Item = i32> + '_ {
        self.partitions.keys().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_point_is_next_offset_or_lowest_held() {
        let mut b = OffsetBook::default();
        assert_eq!(b.commit_point(0), None);
        b.processed(0, 10, None);
        assert_eq!(b.commit_point(0), Some(11), "no off-by-one: next to read");
        b.hold(0, 11);
        b.processed(0, 11, None);
        b.processed(0, 12, None);
        b.hold(0, 13);
        b.processed(0, 13, None);
        assert_eq!(b.commit_point(0), Some(11), "never past a held record");
        b.release(0, 11);
        assert_eq!(b.commit_point(0), Some(13));
        b.release(0, 13);
        assert_eq!(b.commit_point(0), Some(14));
        b.hold(0, 14);
        b.hold(0, 14);
        b.release(0, 14);
        assert_eq!(
            b.commit_point(0),
            Some(14),
            "held until every holder released it"
        );
        b.release(0, 14);
        assert_eq!(b.commit_point(0), Some(14), "next to read after 13");
        assert_eq!(b.commit_point(1), None, "partitions are independent");
    }
}
