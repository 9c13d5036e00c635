//! The memory rings: per partition, the most recent history (bounded by
//! count and bytes), appended by the hub as frames are published. They are
//! the first replay tier (see `replay`).
//!
//! Every consumed offset leaves a slot: a frame, or a tombstone for a record
//! that was not deliverable (it went to the DLQ), so a missing slot is a real
//! hole and is reported to the client as a `gap`, never skipped silently.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::record::frame::Frame;

/// One offset of a partition's history.
#[derive(Clone)]
pub(crate) enum Slot {
    Frame(Arc<Frame>),
    /// A record that was consumed but is not deliverable (DLQ).
    Tombstone,
}

impl Slot {
    fn bytes(&self) -> usize {
        match self {
            // The envelope plus an estimate of the decoded message.
            Slot::Frame(f) => f.binary_len() * 2 + 256,
            Slot::Tombstone => 32,
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct RingLimits {
    pub(crate) max_per_partition: usize,
    pub(crate) max_bytes_per_partition: usize,
}

#[derive(Default)]
struct Ring {
    slots: BTreeMap<i64, Slot>,
    bytes: usize,
    /// Highest offset ever appended (kept after eviction).
    head: Option<i64>,
}

/// The memory tier: one ring per partition.
pub(crate) struct MemoryRings {
    rings: HashMap<i32, Ring>,
    limits: RingLimits,
}

impl MemoryRings {
    pub(crate) fn new(limits: RingLimits) -> Self {
        Self {
            rings: HashMap::new(),
            limits,
        }
    }

    pub(crate) fn insert(&mut self, partition: i32, offset: i64, slot: Slot) {
        let ring = self.rings.entry(partition).or_default();
        let size = slot.bytes();
        if let Some(old) = ring.slots.insert(offset, slot) {
            ring.bytes -= old.bytes();
        }
        ring.bytes += size;
        ring.head = Some(ring.head.map_or(offset, |h| h.max(offset)));
        while ring.slots.len() > self.limits.max_per_partition
            || (ring.bytes > self.limits.max_bytes_per_partition && ring.slots.len() > 1)
        {
            match ring.slots.pop_first() {
                Some((_, s)) => ring.bytes -= s.bytes(),
                None => break,
            }
        }
    }

    /// Highest offset seen per partition.
    pub(crate) fn heads(&self) -> HashMap<i32, i64> {
        self.rings
            .iter()
            .filter_map(|(p, r)| Some((*p, r.head?)))
            .collect()
    }

    /// Lowest offset still held for `partition`.
    pub(crate) fn first(&self, partition: i32) -> Option<i64> {
        self.rings.get(&partition)?.slots.keys().next().copied()
    }

    /// Up to `limit` slots from `from` on, if the ring reaches back to `from`.
    pub(crate) fn page(&self, partition: i32, from: i64, limit: usize) -> Option<Vec<(i64, Slot)>> {
        let ring = self.rings.get(&partition)?;
        let first = *ring.slots.keys().next()?;
        if first > from {
            return None;
        }
        Some(
            ring.slots
                .range(from..)
                .take(limit)
                .map(|(o, s)| (*o, s.clone()))
                .collect(),
        )
    }

    pub(crate) fn stats(&self) -> (usize, usize) {
        self.rings
            .values()
            .fold((0, 0), |(n, b), r| (n + r.slots.len(), b + r.bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::dash_stream_message::Message;
    use crate::proto::{DashStreamMessage, Event, Header};
    use crate::record::decode::{decode, encode_record, DecodeLimits};
    use crate::record::frame::Cursor;

    fn frame(o: i64) -> Slot {
        let v = encode_record(
            &DashStreamMessage {
                message: Some(Message::Event(Event {
                    header: Some(Header {
                        thread_id: "t".into(),
                        sequence: 1,
                        ..Default::default()
                    }),
                    ..Default::default()
                })),
            },
            None,
        );
        let d = decode(Some(&v), &DecodeLimits::default()).unwrap();
        Slot::Frame(Arc::new(Frame::new(
            Cursor {
                partition: 0,
                offset: o,
            },
            None,
            &v,
            d,
            None,
        )))
    }

    #[test]
    fn ring_is_bounded_by_count_and_keeps_its_head() {
        let mut r = MemoryRings::new(RingLimits {
            max_per_partition: 3,
            max_bytes_per_partition: usize::MAX,
        });
        for o in 0..5 {
            r.insert(0, o, frame(o));
        }
        assert_eq!(r.first(0), Some(2));
        assert_eq!(r.heads()[&0], 4);
        assert!(r.page(0, 1, 10).is_none(), "offset 1 was evicted");
        let page = r.page(0, 2, 2).unwrap();
        assert_eq!(page.iter().map(|(o, _)| *o).collect::<Vec<_>>(), vec![2, 3]);
    }

    #[test]
    fn ring_is_bounded_by_bytes() {
        let mut r = MemoryRings::new(RingLimits {
            max_per_partition: 1000,
            max_bytes_per_partition: 1000,
        });
        for o in 0..100 {
            r.insert(0, o, frame(o));
        }
        let (n, bytes) = r.stats();
        assert!(
            bytes <= 1000 && (1..100).contains(&n),
            "{n} slots, {bytes} bytes"
        );
        r.insert(0, 100, Slot::Tombstone);
        assert_eq!(r.heads()[&0], 100);
    }
}
