//! What every stage after decode needs to know of a record, computed once:
//! its kind, thread and tenant, every thread a batch touches, its producer
//! timestamp and sequence. A frame keeps this summary, not the decoded
//! message, so what it holds is the record's own bytes plus a few ids
//! (bounded by `MAX_ID_BYTES` and the batch limit), whatever it decodes to.

use compact_str::CompactString;

use crate::proto::dash_stream_message::Message;
use crate::record::decode::{DecodeError, DecodeLimits, Decoded, MessageKind, Unframed};
use crate::record::wire::{self, Light};

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Summary {
    pub(crate) kind: MessageKind,
    /// `Event.event_type` of an `event` record, else 0.
    pub(crate) event_type: i32,
    /// The record's thread: its header's, else the first batch event's.
    pub(crate) thread: CompactString,
    /// The record's tenant, found the same way.
    pub(crate) tenant: CompactString,
    /// Every other thread a batch's events carry, sorted, without duplicates.
    pub(crate) other_threads: Box<[Box<str>]>,
    pub(crate) timestamp_us: Option<i64>,
    /// The record's own sequence (0 for a batch, whose events carry theirs).
    pub(crate) sequence: u64,
    pub(crate) schema_version: u32,
}

impl Summary {
    pub(crate) fn of(d: &Decoded) -> Self {
        let thread = CompactString::from(d.thread_id());
        let mut others: Vec<&str> = d
            .batch_events()
            .iter()
            .filter_map(|e| e.header.as_ref())
            .map(|h| h.thread_id.as_str())
            .filter(|t| !t.is_empty() && *t != &*thread)
            .collect();
        others.sort_unstable();
        others.dedup();
        Self {
            kind: d.kind(),
            event_type: match &d.body {
                Message::Event(e) => e.event_type,
                _ => 0,
            },
            tenant: d.tenant_id().into(),
            other_threads: others.into_iter().map(Box::from).collect(),
            thread,
            timestamp_us: d.timestamp_us(),
            sequence: d.sequence(),
            schema_version: d.header().map_or(1, |h| h.schema_version.max(1)),
        }
    }

    /// The summary of an unframed record: read on the wire when the wire
    /// check vouches for it, else decoded in full (which also says why a
    /// record does not decode).
    pub(crate) fn read(u: &Unframed<'_>, limits: &DecodeLimits) -> Result<Self, DecodeError> {
        match wire::light(u.body()) {
            Some(l) => Ok(Self::of_light(&l)),
            None => u.decode(limits).map(|d| Self::of(&d)),
        }
    }

    /// The summary [`Summary::of`] gives, from a record read on the wire
    /// (never a batch: `wire::light` leaves those to the full decode).
    pub(crate) fn of_light(l: &Light<'_>) -> Self {
        Self {
            kind: l.kind.unwrap_or(MessageKind::Event),
            event_type: l.event_type,
            thread: l.thread.into(),
            tenant: l.tenant.into(),
            other_threads: Box::default(),
            timestamp_us: (l.timestamp_us > 0).then_some(l.timestamp_us),
            sequence: l.sequence,
            schema_version: l.schema_version.max(1),
        }
    }

    /// Every thread the record touches (its own first), without duplicates.
    pub(crate) fn threads(&self) -> impl Iterator<Item = &str> {
        std::iter::once(&*self.thread)
            .filter(|t| !t.is_empty())
            .chain(self.other_threads.iter().map(|t| &**t))
    }

    /// Heap bytes this summary holds (an id of up to 24 bytes is inline).
    pub(crate) fn heap_bytes(&self) -> usize {
        let heap = |t: &CompactString| {
            if t.is_heap_allocated() {
                t.capacity()
            } else {
                0
            }
        };
        heap(&self.thread)
            + heap(&self.tenant)
            + self.other_threads.len() * std::mem::size_of::<Box<str>>()
            + self.other_threads.iter().map(|t| t.len()).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{DashStreamMessage, Event, EventBatch, Header};
    use crate::record::decode::{decode, encode_record, DecodeLimits};

    fn ev(thread: &str, tenant: &str) -> Event {
        Event {
            header: Some(Header {
                thread_id: thread.into(),
                tenant_id: tenant.into(),
                sequence: 1,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_batch_lists_each_thread_once() {
        let m = DashStreamMessage {
            message: Some(Message::EventBatch(EventBatch {
                header: None,
                events: vec![
                    ev("b", "x"),
                    ev("c", "y"),
                    ev("a", "x"),
                    ev("c", "x"),
                    ev("b", "x"),
                ],
            })),
        };
        let d = decode(Some(&encode_record(&m, None)), &DecodeLimits::default()).unwrap();
        let s = Summary::of(&d);
        assert_eq!(&*s.thread, "b");
        assert_eq!(&*s.tenant, "x");
        assert_eq!(s.threads().collect::<Vec<_>>(), ["b", "a", "c"]);
        assert_eq!(s.kind, MessageKind::EventBatch);
        // Ids this short are held inline; the other threads' list is on the heap.
        assert_eq!(s.heap_bytes(), 2 * (16 + 1));
    }

    #[test]
    fn a_long_id_counts_on_the_heap() {
        let long = "t".repeat(40);
        let m = DashStreamMessage {
            message: Some(Message::Event(ev(&long, "x"))),
        };
        let d = decode(Some(&encode_record(&m, None)), &DecodeLimits::default()).unwrap();
        let s = Summary::of(&d);
        assert_eq!(&*s.thread, long);
        assert!(s.heap_bytes() >= 40, "{}", s.heap_bytes());
        assert_eq!(
            Summary::of(
                &decode(
                    Some(&encode_record(
                        &DashStreamMessage {
                            message: Some(Message::Event(ev("short", "x")))
                        },
                        None
                    )),
                    &DecodeLimits::default()
                )
                .unwrap()
            )
            .heap_bytes(),
            0
        );
    }
}
