//! Where ingest writes the binary envelopes of the frames it builds: one
//! buffer per partition, [`CHUNK`] bytes at a time, each envelope a shared
//! slice of it. A record then costs no allocation of its own for its bytes,
//! and the log frees a chunk at once when it has evicted every frame in it.
//!
//! A partition's frames leave the log in offset order, so what a chunk keeps
//! beyond the frames still held is at most one chunk per partition. A frame
//! that may stay long (held for a halted thread) or a large one gets its own
//! allocation ([`Frame::new`]) and pins no chunk.

use std::collections::BTreeMap;

use bytes::BytesMut;

use crate::record::frame::{Cursor, Frame, ENVELOPE_HEADER_LEN};
use crate::record::summary::Summary;

/// Bytes allocated at a time for a partition's envelopes.
pub(crate) const CHUNK: usize = 16 * 1024;
/// Envelopes larger than this get their own allocation.
pub(crate) const SHARED_MAX: usize = 1024;

#[derive(Default)]
pub(crate) struct Envelopes {
    buffers: BTreeMap<i32, BytesMut>,
}

impl Envelopes {
    /// A frame whose envelope is written into `cursor.partition`'s chunk
    /// (its own allocation when larger than [`SHARED_MAX`]).
    pub(crate) fn frame(
        &mut self,
        cursor: Cursor,
        kafka_timestamp_ms: Option<i64>,
        value: &[u8],
        summary: Summary,
        trace_id: Option<Box<str>>,
    ) -> Frame {
        let len = ENVELOPE_HEADER_LEN + value.len();
        if len > SHARED_MAX {
            return Frame::new(cursor, kafka_timestamp_ms, value, summary, trace_id);
        }
        let buf = self.buffers.entry(cursor.partition).or_default();
        if buf.capacity() < len {
            *buf = BytesMut::with_capacity(CHUNK);
        }
        Frame::written_into(buf, cursor, kafka_timestamp_ms, value, summary, trace_id)
    }

    /// The partition left this process: its chunk is no longer written.
    pub(crate) fn forget(&mut self, partition: i32) {
        self.buffers.remove(&partition);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::frame::parse_envelope;
    use crate::record::testing;

    fn summary() -> Summary {
        testing::event_frame(0, 0).summary.clone()
    }

    #[test]
    fn envelopes_share_a_chunk_per_partition_and_read_back_whole() {
        let mut e = Envelopes::default();
        let mut frames = Vec::new();
        for o in 0..500 {
            let p = (o % 3) as i32;
            let value = vec![o as u8; 40 + (o as usize % 7)];
            let f = e.frame(
                Cursor {
                    partition: p,
                    offset: o,
                },
                Some(o),
                &value,
                summary(),
                None,
            );
            frames.push((p, o, value, f));
        }
        for (p, o, value, f) in &frames {
            let b = f.binary();
            let u = parse_envelope(&b).expect("envelope");
            assert_eq!((u.cursor.partition, u.cursor.offset), (*p, *o));
            assert_eq!(u.kafka_timestamp_ms, Some(*o));
            assert_eq!(u.value, &value[..]);
        }
        // Consecutive envelopes of one partition are neighbours in one chunk.
        let (a, b) = (frames[0].3.binary(), frames[3].3.binary());
        assert_eq!(a.as_ptr() as usize + a.len(), b.as_ptr() as usize);
        // Another partition's are not.
        let c = frames[1].3.binary();
        assert_ne!(a.as_ptr() as usize + a.len(), c.as_ptr() as usize);
    }

    #[test]
    fn a_large_envelope_gets_its_own_allocation() {
        let mut e = Envelopes::default();
        let at = |o| Cursor {
            partition: 0,
            offset: o,
        };
        let small = e.frame(at(0), None, &[1; 10], summary(), None);
        let large = e.frame(at(1), None, &[2; SHARED_MAX], summary(), None);
        let next = e.frame(at(2), None, &[3; 10], summary(), None);
        let (s, l, n) = (small.binary(), large.binary(), next.binary());
        assert_eq!(s.as_ptr() as usize + s.len(), n.as_ptr() as usize);
        assert_eq!(l.len(), ENVELOPE_HEADER_LEN + SHARED_MAX);
        assert_eq!(
            parse_envelope(&l).expect("envelope").value,
            &[2; SHARED_MAX][..]
        );
    }

    #[test]
    fn a_full_chunk_is_followed_by_a_new_one() {
        let mut e = Envelopes::default();
        let value = [7u8; 1000];
        let frames: Vec<Frame> = (0..40)
            .map(|o| {
                e.frame(
                    Cursor {
                        partition: 0,
                        offset: o,
                    },
                    None,
                    &value,
                    summary(),
                    None,
                )
            })
            .collect();
        for (o, f) in frames.iter().enumerate() {
            let b = f.binary();
            let u = parse_envelope(&b).expect("envelope");
            assert_eq!((u.cursor.offset, u.value), (o as i64, &value[..]));
        }
    }
}
