//! Wire-level looks at a protobuf body before it is decoded: what decoding
//! would cost is read from the field tags, without allocating.

/// `DashStreamMessage.event_batch`.
const FIELD_EVENT_BATCH: u64 = 8;
/// `EventBatch.events`.
const FIELD_EVENTS: u64 = 2;
const WIRE_VARINT: u64 = 0;
const WIRE_I64: u64 = 1;
const WIRE_LEN: u64 = 2;
const WIRE_START_GROUP: u64 = 3;
const WIRE_END_GROUP: u64 = 4;
const WIRE_I32: u64 = 5;

fn varint(b: &[u8], i: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*i)?;
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Calls `f(field, value)` for each length-delimited field of one message
/// level; stops at the first malformed field (the decoder reports it).
fn each_len_field<'a>(b: &'a [u8], mut f: impl FnMut(u64, &'a [u8])) {
    let mut i = 0;
    while i < b.len() {
        let Some(key) = varint(b, &mut i) else { return };
        let skip = match key & 7 {
            WIRE_VARINT => match varint(b, &mut i) {
                Some(_) => 0,
                None => return,
            },
            WIRE_I64 => 8,
            WIRE_I32 => 4,
            // A group's fields are read as if at this level: they can only
            // add to a count, never hide an event.
            WIRE_START_GROUP | WIRE_END_GROUP => 0,
            WIRE_LEN => {
                let Some(len) = varint(b, &mut i) else { return };
                let Some(end) = usize::try_from(len).ok().and_then(|l| i.checked_add(l)) else {
                    return;
                };
                let Some(value) = b.get(i..end) else { return };
                f(key >> 3, value);
                len as usize
            }
            _ => return,
        };
        i = match i.checked_add(skip) {
            Some(n) if n <= b.len() => n,
            _ => return,
        };
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

    proptest::proptest! {
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
