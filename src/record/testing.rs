//! Records and frames for in-process tests.

use std::sync::Arc;

use crate::proto::dash_stream_message::Message;
use crate::proto::{DashStreamMessage, Event, Header};
use crate::record::decode::{decode, encode_record, DecodeLimits};
use crate::record::frame::{Cursor, Frame};
use crate::record::summary::Summary;

/// The value of an `event` record of thread `t{p}` whose sequence is `o + 1`.
pub(crate) fn event_value(p: i32, o: i64) -> Vec<u8> {
    encode_record(
        &DashStreamMessage {
            message: Some(Message::Event(Event {
                header: Some(Header {
                    thread_id: format!("t{p}"),
                    sequence: o as u64 + 1,
                    ..Default::default()
                }),
                ..Default::default()
            })),
        },
        None,
    )
}

/// The frame of `value` at partition `p`, offset `o`.
pub(crate) fn frame_of(p: i32, o: i64, value: &[u8]) -> Arc<Frame> {
    let d = decode(Some(value), &DecodeLimits::default()).unwrap();
    Arc::new(Frame::new(
        Cursor {
            partition: p,
            offset: o,
        },
        None,
        value,
        Summary::of(&d),
        None,
    ))
}

/// [`event_value`] as a frame.
pub(crate) fn event_frame(p: i32, o: i64) -> Arc<Frame> {
    frame_of(p, o, &event_value(p, o))
}
