//! Records of halted threads and records released after a halt, as replays
//! and live sessions read them (docs/PROTOCOL.md, Late records).

use super::bounds::{at_4, context_at_4, current_thread, resume4};
use super::*;

/// The value of an `event` record of thread `thread`.
fn thread_value(thread: &str) -> Vec<u8> {
    use crate::proto::dash_stream_message::Message;
    use crate::proto::{DashStreamMessage, Event, Header};
    crate::record::decode::encode_record(
        &DashStreamMessage {
            message: Some(Message::Event(Event {
                header: Some(Header {
                    thread_id: thread.into(),
                    ..Default::default()
                }),
                ..Default::default()
            })),
        },
        None,
    )
}

/// A replay never delivers the records of a halted thread from its first
/// held offset on, from any tier, Kafka included (which holds the records
/// themselves): here thread `t0` (every record) is halted at offset 8.
#[test]
fn a_halted_threads_records_are_withheld_by_every_tier() {
    current_thread().block_on(async {
        let case = resume_at_4(true, true, 0);
        let rc = context_at_4(&case, 2, Default::default());
        rc.hub.held.hold("t0", 0, 8);
        let mut out = Recorder::default();
        resume4(&rc, &mut out, Filter::default()).await;
        let got: Vec<i64> = out.frames.iter().map(|(_, o)| *o).collect();
        assert_eq!(
            got,
            vec![5, 6, 7],
            "Kafka 5..=11, Redis 12..=19, memory 20..=29"
        );
        rc.hub.held.release("t0");
        let mut out = Recorder::default();
        resume4(&rc, &mut out, Filter::default()).await;
        assert_eq!(out.frames.len(), 25, "released: every record again");
    });
}

/// A record released after a session's starting notice reaches it once,
/// by its notice, although the log now holds it in offset order too; one
/// released before the session started comes in offset order.
#[test]
fn a_released_record_reaches_a_replaying_session_exactly_once() {
    current_thread().block_on(async {
        for released_before_start in [false, true] {
            let case = resume_at_4(true, true, 0);
            let rc = context_at_4(&case, 4, Default::default());
            // Offset 30 is a record of halted thread `h`, held (a tombstone).
            rc.hub.skip(0, 30);
            rc.hub.publish(&frame(0, 31));
            let held = crate::record::testing::frame_of(0, 30, &thread_value("h"));
            held.mark_late();
            if released_before_start {
                rc.hub.release("h", "", std::slice::from_ref(&held));
            }
            let start = rc.hub.notice_seq();
            if !released_before_start {
                rc.hub.release("h", "", std::slice::from_ref(&held));
            }
            let mut out = Recorder::default();
            let r = replay(
                &rc,
                &mut out,
                Filter::default(),
                at_4(),
                &mut Sent::default(),
                start,
            )
            .await
            .unwrap_or_else(|_| panic!("the client never goes away"));
            let mut cursors = Cursors::new(&rc.hub, r.next).with_notices_after(start);
            cursors
                .pass(
                    &rc,
                    &mut out,
                    &Filter::default(),
                    100,
                    &DeliveryMetrics::new(),
                )
                .await
                .unwrap_or_else(|_| panic!("the client never goes away"));
            let thirty = out.frames.iter().filter(|(_, o)| *o == 30).count();
            assert_eq!(
                thirty, 1,
                "released before the start: {released_before_start}"
            );
            let got: Vec<i64> = out.frames.iter().map(|(_, o)| *o).collect();
            if released_before_start {
                assert_eq!(got, (5..32).collect::<Vec<_>>(), "in offset order");
            } else {
                assert_eq!(got.last(), Some(&30), "by its notice, after the replay");
            }
        }
    });
}

/// A live session still behind a record when it is released gets it once,
/// by its notice, not again when its cursor reaches it in the log.
#[test]
fn a_released_record_reaches_a_live_session_behind_it_exactly_once() {
    current_thread().block_on(async {
        let case = resume_at_4(true, true, 0);
        let rc = context_at_4(&case, 4, Default::default());
        rc.hub.skip(0, 30);
        rc.hub.publish(&frame(0, 31));
        let mut cursors =
            Cursors::new(&rc.hub, HashMap::from([(0, 25)])).with_notices_after(rc.hub.notice_seq());
        let held = crate::record::testing::frame_of(0, 30, &thread_value("h"));
        held.mark_late();
        rc.hub.release("h", "", &[held]);
        let mut out = Recorder::default();
        while cursors
            .pass(
                &rc,
                &mut out,
                &Filter::default(),
                100,
                &DeliveryMetrics::new(),
            )
            .await
            .unwrap_or_else(|_| panic!("the client never goes away"))
            .more
        {}
        let got: Vec<i64> = out.frames.iter().map(|(_, o)| *o).collect();
        assert_eq!(got, vec![30, 25, 26, 27, 28, 29, 31]);
    });
}
