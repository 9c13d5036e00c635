//! Wire-level looks at a protobuf body before it is decoded: what decoding
//! would cost is read from the field tags, and what a replay's filter needs
//! (the kind and the ids) from the headers, without allocating.

use crate::record::decode::MessageKind;
use crate::record::wire::{
    varint, END_GROUP as WIRE_END_GROUP, I32 as WIRE_I32, I64 as WIRE_I64, LEN as WIRE_LEN,
    START_GROUP as WIRE_START_GROUP, VARINT as WIRE_VARINT,
};

/// `DashStreamMessage.event_batch`.
const FIELD_EVENT_BATCH: u64 = 8;
/// `EventBatch.events`.
const FIELD_EVENTS: u64 = 2;
/// `header` of every body message.
const FIELD_HEADER: u64 = 1;
/// `Header.tenant_id` and `Header.thread_id`.
const FIELD_TENANT: u64 = 3;
const FIELD_THREAD: u64 = 4;
/// One field of one message level.
enum Field<'a> {
    /// Length-delimited: its number and bytes.
    Len(u64, &'a [u8]),
    /// A varint or fixed-size scalar.
    Scalar,
    /// A group marker (deprecated wire type).
    Group,
}

/// The fields of one message level, in wire order; stops at the first
/// malformed one and says so ([`Fields::malformed`]).
struct Fields<'a> {
    b: &'a [u8],
    i: usize,
    malformed: bool,
}

impl<'a> Fields<'a> {
    fn of(b: &'a [u8]) -> Self {
        Self {
            b,
            i: 0,
            malformed: false,
        }
    }

    fn next_field(&mut self) -> Option<Field<'a>> {
        let b = self.b;
        let key = varint(b, &mut self.i)?;
        let (field, skip) = match key & 7 {
            WIRE_VARINT => {
                varint(b, &mut self.i)?;
                (Field::Scalar, 0)
            }
            WIRE_I64 => (Field::Scalar, 8),
            WIRE_I32 => (Field::Scalar, 4),
            WIRE_START_GROUP | WIRE_END_GROUP => (Field::Group, 0),
            WIRE_LEN => {
                let len = usize::try_from(varint(b, &mut self.i)?).ok()?;
                let end = self.i.checked_add(len)?;
                (Field::Len(key >> 3, b.get(self.i..end)?), len)
            }
            _ => return None,
        };
        self.i = self.i.checked_add(skip).filter(|n| *n <= b.len())?;
        Some(field)
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Field<'a>;

    fn next(&mut self) -> Option<Field<'a>> {
        if self.i >= self.b.len() || self.malformed {
            return None;
        }
        let f = self.next_field();
        self.malformed = f.is_none();
        f
    }
}

/// Calls `f(field, value)` for each length-delimited field of one message
/// level; stops at the first malformed field (the decoder reports it).
fn each_len_field<'a>(b: &'a [u8], mut f: impl FnMut(u64, &'a [u8])) {
    // A group's fields are read as if at this level: they can only add to a
    // count, never hide an event.
    for field in Fields::of(b) {
        if let Field::Len(n, value) = field {
            f(n, value);
        }
    }
}

/// How many events the body's `event_batch` carries (every occurrence of
/// the field counts: protobuf merges them). 0 for other kinds.
pub(crate) fn batch_events(body: &[u8]) -> usize {
    let mut n = 0usize;
    each_len_field(body, |field, batch| {
        if field == FIELD_EVENT_BATCH {
            each_len_field(batch, |f, _| n += usize::from(f == FIELD_EVENTS));
        }
    });
    n
}

/// The thread and tenant of one header, as the decoder would read them (the
/// last occurrence of a field wins, repeated headers merge).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Ids<'a> {
    pub(crate) thread: &'a str,
    pub(crate) tenant: &'a str,
}

/// What a filter looks at in a record, read from the wire: the kind, the
/// body's header ids and (for a batch) each event's. Built only for bodies
/// whose reading is certain: one body field, no groups, nothing malformed,
/// ids in UTF-8; anything else is left to the decoder.
pub(crate) struct Peek<'a> {
    pub(crate) kind: MessageKind,
    pub(crate) header: Ids<'a>,
    /// The body message, for its batch events.
    body: &'a [u8],
}

/// The header ids of one body message (or batch event).
fn header_ids(message: &[u8]) -> Option<Ids<'_>> {
    let mut ids = Ids::default();
    let mut fields = Fields::of(message);
    for f in fields.by_ref() {
        match f {
            Field::Len(FIELD_HEADER, h) => {
                let mut hf = Fields::of(h);
                for g in hf.by_ref() {
                    match g {
                        Field::Len(FIELD_TENANT, v) => ids.tenant = std::str::from_utf8(v).ok()?,
                        Field::Len(FIELD_THREAD, v) => ids.thread = std::str::from_utf8(v).ok()?,
                        Field::Group => return None,
                        _ => {}
                    }
                }
                if hf.malformed {
                    return None;
                }
            }
            Field::Group => return None,
            _ => {}
        }
    }
    (!fields.malformed).then_some(ids)
}

/// Reads the kind and header ids of a body; `None` where only the decoder
/// can tell.
pub(crate) fn peek(body: &[u8]) -> Option<Peek<'_>> {
    let mut found: Option<(u64, &[u8])> = None;
    let mut fields = Fields::of(body);
    for f in fields.by_ref() {
        match f {
            Field::Len(n @ 1..=9, m) => {
                if found.is_some() {
                    return None; // merged or replaced: the decoder's business
                }
                found = Some((n, m));
            }
            Field::Group => return None,
            _ => {}
        }
    }
    if fields.malformed {
        return None;
    }
    let (n, body) = found?;
    Some(Peek {
        kind: MessageKind::ALL[(n - 1) as usize],
        header: header_ids(body)?,
        body,
    })
}

impl<'a> Peek<'a> {
    /// Each batch event's header ids, in order (nothing for other kinds);
    /// `None` marks an event only the decoder can read. (The body level was
    /// read whole by [`peek`]: nothing there is malformed.)
    pub(crate) fn events(&self) -> impl Iterator<Item = Option<Ids<'a>>> + 'a {
        let batch = self.kind == MessageKind::EventBatch;
        Fields::of(self.body).filter_map(move |f| match f {
            Field::Len(FIELD_EVENTS, e) if batch => Some(header_ids(e)),
            _ => None,
        })
    }

    /// The record's tenant as the decoder reads it: the header's, else the
    /// first batch event's (`None`: only the decoder can tell).
    pub(crate) fn tenant(&self) -> Option<&'a str> {
        if !self.header.tenant.is_empty() {
            return Some(self.header.tenant);
        }
        for e in self.events() {
            match e {
                None => return None,
                Some(ids) if !ids.tenant.is_empty() => return Some(ids.tenant),
                Some(_) => {}
            }
        }
        Some("")
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::proto::dash_stream_message::Message;
    use crate::proto::{DashStreamMessage, Event, EventBatch, Header, TokenChunk};

    fn batch(n: usize) -> Vec<u8> {
        DashStreamMessage {
            message: Some(Message::EventBatch(EventBatch {
                header: Some(Header {
                    thread_id: "t".into(),
                    ..Default::default()
                }),
                events: vec![Event::default(); n],
            })),
        }
        .encode_to_vec()
    }

    #[test]
    fn counts_the_events_of_a_batch_and_nothing_else() {
        assert_eq!(batch_events(&batch(0)), 0);
        assert_eq!(batch_events(&batch(3)), 3);
        assert_eq!(batch_events(&batch(70_000)), 70_000);
        let chunk = DashStreamMessage {
            message: Some(Message::TokenChunk(TokenChunk {
                text: "x".repeat(100),
                ..Default::default()
            })),
        }
        .encode_to_vec();
        assert_eq!(batch_events(&chunk), 0);
        // Two occurrences of the field merge into one batch on decode.
        let mut twice = batch(2);
        twice.extend(batch(5));
        assert_eq!(batch_events(&twice), 7);
        let d = DashStreamMessage::decode(&twice[..]).unwrap();
        let Some(Message::EventBatch(b)) = d.message else {
            panic!()
        };
        assert_eq!(b.events.len(), 7);
    }

    fn header(ids: (&str, &str)) -> Option<Header> {
        Some(Header {
            thread_id: ids.0.into(),
            tenant_id: ids.1.into(),
            sequence: 1,
            ..Default::default()
        })
    }

    /// A record of `kind` (0: event, 1: token chunk, 2: batch) with its
    /// header ids and (for a batch) its events' ids.
    fn record(kind: u8, own: (&str, &str), events: &[(&str, &str)]) -> Vec<u8> {
        let message = match kind {
            0 => Message::Event(Event {
                header: header(own),
                ..Default::default()
            }),
            1 => Message::TokenChunk(TokenChunk {
                header: header(own),
                ..Default::default()
            }),
            _ => Message::EventBatch(EventBatch {
                header: header(own),
                events: events
                    .iter()
                    .map(|e| Event {
                        header: header(*e),
                        ..Default::default()
                    })
                    .collect(),
            }),
        };
        DashStreamMessage {
            message: Some(message),
        }
        .encode_to_vec()
    }

    fn id() -> impl proptest::strategy::Strategy<Value = &'static str> {
        proptest::sample::select(vec!["", "a", "b", "c"])
    }

    proptest::proptest! {
        /// Read on the wire, a filter refuses only what it would refuse
        /// once decoded: for any kind, ids, batch and filter, and for any
        /// damage that still decodes.
        #[test]
        fn the_wire_filter_never_refuses_what_the_decoded_filter_takes(
            kind in 0u8..3,
            own in (id(), id()),
            events in proptest::collection::vec((id(), id()), 0..4),
            threads in proptest::option::of(proptest::collection::vec(id(), 1..3)),
            tenant in proptest::option::of(id()),
            types in proptest::option::of(proptest::sample::select(vec!["event", "token_chunk", "event_batch", "event,event_batch"])),
            cut in proptest::option::of(0usize..200),
            junk in proptest::collection::vec(proptest::num::u8::ANY, 0..8),
        ) {
            let mut body = record(kind, own, &events);
            if let Some(cut) = cut {
                body.truncate(cut.min(body.len()));
                body.extend(junk);
            }
            let threads = threads.map(|t| t.join(",")).filter(|t| !t.replace(',', "").is_empty());
            let tenant = tenant.filter(|t| !t.is_empty());
            let filter = crate::hub::Filter::parse(threads.as_deref(), tenant, types, 10).unwrap();
            let mut value = vec![0u8];
            value.extend(&body);
            crate::fuzzing::replay_filter(&value);
            let decoded = crate::record::decode::decode(Some(&value), &crate::record::decode::DecodeLimits::default());
            let Some(p) = peek(&body) else {
                // Only damaged bodies are left to the decoder.
                proptest::prop_assert!(cut.is_some());
                return Ok(());
            };
            if let Ok(d) = decoded {
                let frame = crate::record::testing::frame_of(0, 0, &value);
                proptest::prop_assert_eq!(frame.summary.kind, d.kind());
                if filter.matches(&frame) {
                    proptest::prop_assert!(filter.may_match(&p), "{:?} refused on the wire", filter);
                }
                if cut.is_none() {
                    // Undamaged, the wire reading is exact.
                    proptest::prop_assert_eq!(filter.matches(&frame), filter.may_match(&p));
                }
            }
        }

        #[test]
        fn never_undercounts_what_prost_decodes(n in 0usize..50, cut in 0usize..400, junk in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let mut b = batch(n);
            b.truncate(cut.min(b.len()));
            b.extend(junk);
            if let Ok(DashStreamMessage { message: Some(Message::EventBatch(eb)) }) = DashStreamMessage::decode(&b[..]) {
                proptest::prop_assert!(batch_events(&b) >= eb.events.len());
            }
        }
    }
}
