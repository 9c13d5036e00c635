//! Process lifecycle against a real broker: restart continues from committed
//! offsets, SIGTERM closes clients with 1001 and exits in under 5 s, a signal
//! during start-up is honoured, and bad configuration names the setting.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;
use kafka_ws_bridge::{Generator, SynthConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_continues_from_committed_offsets_without_skipping() {
    let topic = unique("restart");
    create_topic(&topic, 3).await;
    let group = unique("grp");
    let p = producer();
    let mut g = Generator::new(SynthConfig {
        threads: 12,
        ..Default::default()
    });
    let first: Vec<_> = g
        .by_ref()
        .take(1500)
        .map(|r| (Some(r.key), r.value))
        .collect();
    let second: Vec<_> = g
        .by_ref()
        .take(900)
        .map(|r| (Some(r.key), r.value))
        .collect();

    let mut bridge = Bridge::start_with_group(&topic, &group, &[]).await;
    let first_cursors = produce(&p, &topic, &first).await;
    bridge
        .wait_processed(first.len() as u64, Duration::from_secs(20))
        .await;
    let (elapsed, status) = bridge.terminate();
    assert!(status.success(), "clean exit: {status:?}");
    assert!(
        elapsed < Duration::from_secs(5),
        "SIGTERM exit took {elapsed:?}"
    );
    assert!(
        bridge.log_text().contains("offsets committed on shutdown"),
        "{}",
        bridge.log_text()
    );

    // Records produced while the bridge is down.
    let second_cursors = produce(&p, &topic, &second).await;
    let bridge = Bridge::spawn(&topic, &group, &[]);
    // Connect as soon as the HTTP side is up: before the group join finishes.
    let start = Instant::now();
    let mut ws = loop {
        if let Ok((200, _)) = http(bridge.port, "GET", "/health/live").await {
            break connect(&bridge.ws_url("?format=json")).await.0;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "bridge did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        bridge.health().await["records_processed"],
        0,
        "client connected before consumption started"
    );
    let (frames, _) = collect(&mut ws, second.len(), Duration::from_secs(20)).await;
    let mut got: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for f in &frames {
        if let Frame::Data {
            partition, offset, ..
        } = f
        {
            got.entry(*partition).or_default().push(*offset);
        }
    }
    let mut want: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for (p, o) in &second_cursors {
        want.entry(*p).or_default().push(*o);
    }
    for v in want.values_mut() {
        v.sort_unstable();
    }
    assert_eq!(
        got, want,
        "exactly the records produced while down: nothing skipped, nothing re-sent"
    );
    // Sanity: the second batch starts right after the first in each partition.
    for (p, offsets) in &want {
        let last_first = first_cursors
            .iter()
            .filter(|c| c.0 == *p)
            .map(|c| c.1)
            .max()
            .unwrap_or(-1);
        assert_eq!(offsets[0], last_first + 1, "partition {p}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_closes_clients_with_1001_and_exits_in_under_five_seconds() {
    let topic = unique("sigterm");
    create_topic(&topic, 1).await;
    let mut bridge = Bridge::start(&topic, &[]).await;
    let (mut a, _) = connect(&bridge.ws_url("")).await;
    let (mut b, _) = connect(&bridge.ws_url("?format=json")).await;
    let (elapsed, status) = bridge.terminate();
    assert!(status.success(), "{status:?}");
    assert!(elapsed < Duration::from_secs(5), "exit took {elapsed:?}");
    for ws in [&mut a, &mut b] {
        match next_frame(ws, Duration::from_secs(2)).await {
            Some(Frame::Closed { code, reason }) => {
                assert_eq!(code, 1001);
                assert_eq!(reason, "server shutting down");
            }
            other => panic!("expected close 1001, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_signal_during_startup_is_not_lost() {
    // Brokers on a closed port: start-up waits for the cluster id.
    let closed = free_port();
    let mut bridge = Bridge::spawn(
        "startup-topic",
        "startup-group",
        &[("KAFKA_BROKERS", &format!("127.0.0.1:{closed}"))],
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (elapsed, status) = bridge.terminate();
    assert!(status.success(), "{status:?}: {}", bridge.log_text());
    assert!(elapsed < Duration::from_secs(5), "exit took {elapsed:?}");
}

#[test]
fn invalid_configuration_is_refused_at_startup_naming_the_setting() {
    for (var, value, expect) in [
        (
            "KAFKA_PROPERTIES",
            "enable.auto.commit=false",
            "KAFKA_PROPERTIES",
        ),
        ("KAFKA_PROPERTIES", "nonsense", "KAFKA_PROPERTIES"),
        ("GAP_POLICY", "sometimes", "GAP_POLICY"),
        ("WEBSOCKET_PORT", "70000", "WEBSOCKET_PORT"),
        ("MAX_MESSAGE_BYTES", "0", "MAX_MESSAGE_BYTES"),
        ("KAFKA_TOPIC", "no spaces allowed", "KAFKA_TOPIC"),
        ("ADMIN_TOKEN", "short", "ADMIN_TOKEN"),
        (
            "WEBSOCKET_JWT_PUBLIC_KEY_FILE",
            "/nonexistent/key.pem",
            "WEBSOCKET_JWT_PUBLIC_KEY_FILE",
        ),
        (
            "WEBSOCKET_JWT_JWKS",
            "/nonexistent/jwks.json",
            "WEBSOCKET_JWT_JWKS",
        ),
        (
            "WEBSOCKET_JWT_LEEWAY_SECS",
            "100000",
            "WEBSOCKET_JWT_LEEWAY_SECS",
        ),
    ] {
        let out = Command::new(bridge_bin())
            .arg("serve")
            .env_clear()
            .env(var, value)
            .output()
            .expect("run");
        assert!(!out.status.success(), "{var}={value} must be refused");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expect), "{var}={value}: {stderr}");
    }
}

/// RFC 6455 §5.5.1: a client's Close is answered with a Close echoing its
/// code, before the connection ends, in the grace period as when live.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_close_from_the_client_is_answered_with_its_code() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::Message;

    let topic = unique("close");
    create_topic(&topic, 1).await;
    let bridge = Bridge::start(&topic, &[]).await;
    for (wait, code) in [(0u64, 1000u16), (600, 4001)] {
        let (mut ws, _) = connect(&bridge.ws_url("?format=json")).await;
        // 0: within the resume grace period (250 ms); 600: live delivery.
        tokio::time::sleep(Duration::from_millis(wait)).await;
        ws.send(Message::Close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: "bye".into(),
        })))
        .await
        .expect("send close");
        let reply = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Close(f))) => break Ok(f),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => break Err(e.to_string()),
                    None => break Err("ended without a Close".into()),
                }
            }
        })
        .await
        .expect("an answer within 5 s");
        let frame = reply.unwrap_or_else(|e| panic!("after {wait} ms: {e}"));
        assert_eq!(
            frame.map(|f| u16::from(f.code)),
            Some(code),
            "after {wait} ms"
        );
    }
}

/// A Close sent in the middle of a long replay ends the replay and is
/// answered at once, not after the replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_close_during_a_replay_is_answered_without_waiting_for_its_end() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::Message;

    let topic = unique("closereplay");
    create_topic(&topic, 1).await;
    // A small socket buffer: the replay goes at the client's pace.
    let bridge = Bridge::start(&topic, &[("WEBSOCKET_SEND_BUFFER_BYTES", "65536")]).await;
    let recs: Vec<_> = kafka_ws_bridge::Generator::new(kafka_ws_bridge::SynthConfig {
        threads: 4,
        ..Default::default()
    })
    .take(20_000)
    .map(|r| (Some(r.key), r.value))
    .collect();
    produce(&producer(), &topic, &recs).await;
    bridge.wait_processed(20_000, Duration::from_secs(20)).await;
    // A client that reads slowly: its replay stays at the first pages.
    let mut ws =
        kwb_testkit::ws::connect_with_recv_buffer(&bridge.ws_url("?resume=earliest"), 8 * 1024)
            .await
            .expect("connect");
    for _ in 0..100 {
        ws.next().await.expect("frame").expect("frame");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::from(4002),
        reason: "bye".into(),
    })))
    .await
    .expect("send close");
    let (mut data, mut complete) = (100, false);
    let code = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
                Some(Ok(Message::Binary(_))) => data += 1,
                Some(Ok(Message::Text(t))) => complete |= t.contains("replay_complete"),
                Some(Ok(_)) => {}
                other => panic!("ended without a Close: {other:?}"),
            }
        }
    })
    .await
    .expect("an answer within 10 s");
    assert_eq!(code, Some(4002));
    assert!(!complete, "the replay was stopped, not finished");
    assert!(data < 15_000, "{data} frames arrived before the answer");
}
