//! RFC 6455 at `/ws`, frame by frame, from a client that writes raw bytes:
//! every Close is answered (valid codes echoed, invalid ones with 1002),
//! every violation gets its close code (1002, 1007, 1009) and is counted,
//! pings get their payload back, and valid fragmented and multi-byte UTF-8
//! messages are accepted — the same in the resume grace period and live.

use std::time::Duration;

use kwb_testkit::rawws::{Ending, RawWs, OP_CLOSE, OP_CONTINUE, OP_PING, OP_PONG, OP_TEXT};

use crate::common::*;

/// The two states a client message can arrive in.
#[derive(Clone, Copy, Debug)]
enum State {
    /// Before the first message, within `RESUME_GRACE_MS`.
    Grace,
    /// Live delivery (after `?resume=latest` completed).
    Live,
}

async fn open(bridge: &Bridge, state: State) -> RawWs {
    let path = match state {
        State::Grace => "/ws?format=json",
        State::Live => "/ws?format=json&resume=latest",
    };
    let mut ws = RawWs::connect(bridge.port, path).await.expect("upgrade");
    let hello = ws.read(Duration::from_secs(5)).await.expect("hello");
    assert!(hello.text().contains("\"hello\""), "{hello:?}");
    if let State::Live = state {
        let done = ws
            .read(Duration::from_secs(10))
            .await
            .expect("replay_complete");
        assert!(done.text().contains("replay_complete"), "{done:?}");
    }
    ws
}

/// A case: what the client sends, and the close code it must get.
struct Violation {
    name: &'static str,
    code: u16,
    reason: &'static str,
    frames: Vec<(u8, Vec<u8>, bool)>,
}

fn violations() -> Vec<Violation> {
    let ping = br#"{"type":"ping"}"#.to_vec();
    let big = vec![b'x'; 65_537];
    let resume = format!(
        r#"{{"type":"resume","from":"cursor","lastOffsets":{{{}}}}}"#,
        (0..90_000)
            .map(|p| format!("\"{p}\":{p}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    assert!(resume.len() > 1_100_000);
    let v = |name, code, reason, frames| Violation {
        name,
        code,
        reason,
        frames,
    };
    let mut cases = vec![
        v(
            "rsv1 set",
            1002,
            "reserved_bits",
            vec![(0x80 | 0x40 | OP_TEXT, ping.clone(), true)],
        ),
        v(
            "rsv3 on a ping",
            1002,
            "reserved_bits",
            vec![(0x80 | 0x10 | OP_PING, b"x".to_vec(), true)],
        ),
        v(
            "reserved data opcode 0x3",
            1002,
            "reserved_opcode",
            vec![(0x83, ping.clone(), true)],
        ),
        v(
            "reserved control opcode 0xB",
            1002,
            "reserved_opcode",
            vec![(0x8B, vec![], true)],
        ),
        v(
            "fragmented ping",
            1002,
            "control_frame",
            vec![(OP_PING, b"x".to_vec(), true)],
        ),
        v(
            "ping of 126 bytes",
            1002,
            "control_frame",
            vec![(0x80 | OP_PING, vec![b'p'; 126], true)],
        ),
        v(
            "continuation without a start",
            1002,
            "fragmentation",
            vec![(0x80 | OP_CONTINUE, b"x".to_vec(), true)],
        ),
        v(
            "new message inside a fragmented one",
            1002,
            "fragmentation",
            vec![
                (OP_TEXT, b"{\"ty".to_vec(), true),
                (0x80 | OP_TEXT, b"x".to_vec(), true),
            ],
        ),
        v(
            "unmasked frame",
            1002,
            "unmasked_frame",
            vec![(0x80 | OP_TEXT, ping.clone(), false)],
        ),
        v(
            "close of one byte",
            1002,
            "invalid_close",
            vec![(0x80 | OP_CLOSE, vec![0x03], true)],
        ),
        v(
            "text not UTF-8",
            1007,
            "invalid_utf8",
            vec![(0x80 | OP_TEXT, vec![b'{', 0xff, 0xfe, b'}'], true)],
        ),
        v(
            "fragmented text ending mid-character",
            1007,
            "invalid_utf8",
            vec![
                (OP_TEXT, b"{\"a\":\"".to_vec(), true),
                (0x80 | OP_CONTINUE, vec![0xc3, 0x28, b'"', b'}'], true),
            ],
        ),
        v(
            "close reason not UTF-8",
            1007,
            "invalid_utf8",
            vec![(0x80 | OP_CLOSE, vec![0x03, 0xe8, 0xff, 0xfe], true)],
        ),
        v(
            "one frame of 65,537 bytes",
            1009,
            "message_too_big",
            vec![(0x80 | OP_TEXT, big, true)],
        ),
        v(
            "a fragmented 200 KB message",
            1009,
            "message_too_big",
            (0..4)
                .map(|i| {
                    let op = if i == 0 { OP_TEXT } else { OP_CONTINUE };
                    let fin = if i == 3 { 0x80 } else { 0 };
                    (fin | op, vec![b' '; 50_000], true)
                })
                .collect(),
        ),
        v(
            "a 1.16 MB resume message",
            1009,
            "message_too_big",
            vec![(0x80 | OP_TEXT, resume.into_bytes(), true)],
        ),
    ];
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
        cases.push(v(
            "close with a code a client may not send",
            1002,
            "invalid_close_code",
            vec![(0x80 | OP_CLOSE, code.to_be_bytes().to_vec(), true)],
        ));
    }
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_violation_gets_its_close_code_in_every_state() {
    let topic = unique("rfc6455");
    create_topic(&topic, 1).await;
    // A long grace period keeps "before the first message" a state the test
    // is sure to be in; live connections skip it with ?resume=latest.
    let bridge = Bridge::start(&topic, &[("RESUME_GRACE_MS", "3000")]).await;
    let mut expected = std::collections::BTreeMap::<&str, f64>::new();
    for state in [State::Grace, State::Live] {
        for case in violations() {
            let mut ws = open(&bridge, state).await;
            for (first, payload, masked) in &case.frames {
                // The server may close before the last frame is written.
                let _ = ws.send_raw(*first, payload, *masked).await;
            }
            let ending = ws.ending(Duration::from_secs(10)).await;
            assert_eq!(
                ending,
                Ending::Closed {
                    code: case.code,
                    tcp_closed: true
                },
                "{state:?}: {}",
                case.name
            );
            *expected.entry(case.reason).or_default() += 1.0;
        }
    }
    let m = bridge.metrics().await;
    for (reason, n) in expected {
        let key = format!("websocket_client_protocol_errors_total{{reason=\"{reason}\"}}");
        assert_eq!(m.get(&key).copied(), Some(n), "{key}");
    }
    assert_eq!(bridge.health().await["status"], "healthy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn valid_closes_pings_and_fragmented_messages_are_answered_in_every_state() {
    let topic = unique("rfc6455ok");
    create_topic(&topic, 1).await;
    let bridge = Bridge::start(&topic, &[("RESUME_GRACE_MS", "3000")]).await;
    let wait = Duration::from_secs(5);
    for state in [State::Grace, State::Live] {
        // Every code a client may send is echoed, with or without a reason.
        for (code, reason) in [
            (1000u16, &b""[..]),
            (1001, b"bye"),
            (1002, b""),
            (1003, b""),
            (1007, b""),
            (1008, "d\u{e9}j\u{e0} vu".as_bytes()),
            (1009, b""),
            (1010, b""),
            (1011, b""),
            (3000, b""),
            (3999, b""),
            (4000, b""),
            (4999, b"app-defined"),
        ] {
            let mut ws = open(&bridge, state).await;
            ws.send_close(code, reason).await.expect("send");
            assert_eq!(
                ws.ending(wait).await,
                Ending::Closed {
                    code,
                    tcp_closed: true
                },
                "{state:?}: close {code}"
            );
        }
        // A Close without a code gets a Close back.
        let mut ws = open(&bridge, state).await;
        ws.send(true, OP_CLOSE, &[]).await.expect("send");
        assert_eq!(
            ws.ending(wait).await,
            Ending::Closed {
                code: 1005,
                tcp_closed: true
            },
            "{state:?}: empty close"
        );

        // A message in three fragments, a ping between two of them, and a
        // multi-byte character split across fragments: accepted and answered
        // (as the first message, in the grace state).
        let mut ws = open(&bridge, state).await;
        let text = "{\"type\":\"ping\",\"note\":\"\u{e9}\u{20ac}\u{1F600}\"}".as_bytes();
        let cut1 = text.len() - 9; // inside the emoji's four bytes
        let cut2 = text.len() - 3;
        ws.send(false, OP_TEXT, &text[..5]).await.expect("frag");
        ws.send(false, OP_CONTINUE, &text[5..cut1])
            .await
            .expect("frag");
        ws.send(true, OP_PING, b"between").await.expect("ping");
        ws.send(false, OP_CONTINUE, &text[cut1..cut2])
            .await
            .expect("frag");
        ws.send(true, OP_CONTINUE, &text[cut2..])
            .await
            .expect("frag");
        let mut got = Vec::new();
        for _ in 0..2 {
            got.push(ws.read_control(wait).await.expect("pong and reply"));
        }
        assert!(
            got.iter()
                .any(|f| f.opcode == OP_PONG && f.payload == b"between"),
            "{state:?}: the ping inside a fragmented message is answered: {got:?}"
        );
        let reply = got
            .iter()
            .find(|f| f.opcode == OP_TEXT)
            .unwrap_or_else(|| panic!("{state:?}: a reply to the fragmented ping: {got:?}"));
        let reply: serde_json::Value = serde_json::from_slice(&reply.payload).expect("json");
        assert_eq!(reply["type"], "pong", "{state:?}: {reply}");
        // Pings are answered with their payload (empty and 125 bytes too).
        for payload in [&b"hello-123"[..], b"", &[7u8; 125]] {
            ws.send(true, OP_PING, payload).await.expect("ping");
            let pong = ws.read_control(wait).await.expect("pong");
            assert_eq!(
                (pong.opcode, pong.payload.as_slice()),
                (OP_PONG, payload),
                "{state:?}"
            );
        }
        // A message of exactly WEBSOCKET_MAX_INCOMING_BYTES is accepted (and
        // answered as the invalid JSON it is).
        ws.send(true, OP_TEXT, &vec![b' '; 65_536])
            .await
            .expect("send");
        let reply = ws.read_control(wait).await.expect("reply");
        assert!(
            reply.text().contains("invalid_message"),
            "{state:?}: {reply:?}"
        );
        ws.send_close(1000, b"").await.expect("close");
        assert_eq!(
            ws.ending(wait).await,
            Ending::Closed {
                code: 1000,
                tcp_closed: true
            }
        );
    }
    let m = bridge.metrics().await;
    assert!(
        m.keys().any(|k| k.contains("invalid_message")),
        "the metrics are read: {m:?}"
    );
    assert!(
        !m.keys()
            .any(|k| k.starts_with("websocket_client_protocol_errors_total")
                && !k.contains("invalid_message")),
        "valid frames are not counted as violations: {m:?}"
    );
}
