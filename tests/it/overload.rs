//! Overload against the running bridge: connection limits without leaked
//! slots, the circuit breaker opening and closing, and slow or stalled
//! clients that never hold up anyone else.

use std::time::{Duration, Instant};

use crate::common::*;
use futures_util::StreamExt;
use kafka_ws_bridge::encode_record;
use kafka_ws_bridge::proto::dash_stream_message::Message;
use kafka_ws_bridge::proto::{DashStreamMessage, Error as PbError, Header, TokenChunk};
use tokio::io::AsyncWriteExt;

async fn try_connect(url: &str) -> Result<Ws, u16> {
    match tokio_tungstenite::connect_async(url).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("unexpected connect error: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_ip_cap_admits_exactly_its_limit_and_never_leaks_slots() {
    let topic = unique("cap");
    create_topic(&topic, 1).await;
    let bridge = Bridge::start(
        &topic,
        &[
            ("WEBSOCKET_MAX_CONNECTIONS_PER_IP", "100"),
            ("RESUME_GRACE_MS", "0"),
        ],
    )
    .await;
    let url = bridge.ws_url("?resume=latest");
    let attempts = futures_util::future::join_all((0..1000).map(|_| try_connect(&url))).await;
    let (ok, refused): (Vec<_>, Vec<_>) = attempts.into_iter().partition(|r| r.is_ok());
    assert_eq!(ok.len(), 100, "exactly the per-IP cap is admitted");
    assert!(
        refused
            .iter()
            .all(|r| *r.as_ref().expect_err("refused") == 429),
        "refused with 429"
    );
    let m = bridge.metrics().await;
    assert_eq!(
        m["websocket_connections_rejected_total{reason=\"per_ip_limit\"}"],
        900.0
    );
    assert_eq!(m["websocket_max_connections_per_ip"], 100.0);
    drop(ok);

    // Malformed requests and aborted upgrades take and release slots too.
    for _ in 0..50 {
        let (code, _) = http(bridge.port, "GET", "/ws?types=nonsense")
            .await
            .expect("http");
        assert_eq!(code, 400);
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", bridge.port))
            .await
            .expect("tcp");
        let req = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        s.write_all(req.as_bytes()).await.expect("write");
        drop(s); // gone before reading the 101
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let again = loop {
        let attempts = futures_util::future::join_all((0..100).map(|_| try_connect(&url))).await;
        let ok: Vec<Ws> = attempts.into_iter().filter_map(Result::ok).collect();
        if ok.len() == 100 || Instant::now() > deadline {
            break ok;
        }
        drop(ok);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        again.len(),
        100,
        "all slots came back after closes, bad requests and aborted upgrades"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn breaker_opens_past_critical_refuses_with_1013_and_closes_again_through_half_open() {
    let topic = unique("breaker");
    create_topic(&topic, 1).await;
    let env = [
        ("WEBSOCKET_MAX_CONNECTIONS", "10"),
        (
            "BACKPRESSURE_WEIGHTS",
            "connections=1,client_queues=0,pipeline_queues=0,memory=0",
        ),
        ("BREAKER_OPEN_SECS", "1"),
        ("RESUME_GRACE_MS", "0"),
    ];
    let bridge = Bridge::start(&topic, &env).await;
    let mut clients = vec![];
    for _ in 0..10 {
        clients.push(
            connect(&bridge.ws_url("?format=json&resume=latest"))
                .await
                .0,
        );
    }
    // Level 1.0 ≥ 0.95: the breaker opens within a monitor tick.
    let deadline = Instant::now() + Duration::from_secs(5);
    while bridge.metrics().await["websocket_circuit_breaker_state"] != 2.0 {
        assert!(Instant::now() < deadline, "breaker did not open");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, body) = http(bridge.port, "GET", "/health/ready")
        .await
        .expect("ready");
    assert_eq!(code, 503);
    assert!(body.contains("circuit breaker open"), "{body}");
    let h = bridge.health().await;
    assert_eq!(h["backpressure"]["circuit_breaker"], "OPEN");
    assert_eq!(h["backpressure"]["category"], "CRITICAL");
    // A new client is told to come back later.
    let (mut refused, _) = tokio_tungstenite::connect_async(bridge.ws_url(""))
        .await
        .expect("upgrade completes");
    match refused.next().await {
        Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(c)))) => {
            assert_eq!(u16::from(c.code), 1013)
        }
        other => panic!("expected close 1013, got {other:?}"),
    }
    // Existing clients keep their stream.
    produce(
        &producer(),
        &topic,
        &[(Some("t".into()), encode_record(&token("t", 1), None))],
    )
    .await;
    let (frames, _) = collect(&mut clients[0], 1, Duration::from_secs(5)).await;
    assert_eq!(frames.len(), 1, "an existing client still receives records");
    // Load goes away: below recovery, through half-open, closed.
    clients.truncate(2);
    let deadline = Instant::now() + Duration::from_secs(10);
    while bridge.metrics().await["websocket_circuit_breaker_state"] != 0.0 {
        assert!(Instant::now() < deadline, "breaker did not close");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let m = bridge.metrics().await;
    assert_eq!(
        m["websocket_circuit_breaker_transitions_total{from=\"OPEN\",to=\"HALF_OPEN\"}"],
        1.0
    );
    assert_eq!(
        m["websocket_circuit_breaker_transitions_total{from=\"HALF_OPEN\",to=\"CLOSED\"}"],
        1.0
    );
    assert!(m["websocket_connections_rejected_total{reason=\"circuit_open\"}"] >= 1.0);
    assert_eq!(
        http(bridge.port, "GET", "/health/ready")
            .await
            .expect("ready")
            .0,
        200
    );
    connect(&bridge.ws_url("")).await;
    let (code, body) = http(bridge.port, "POST", "/admin/circuit-breaker/reset")
        .await
        .expect("reset");
    assert_eq!(code, 200, "{body}");
}

fn token(thread: &str, seq: u64) -> DashStreamMessage {
    DashStreamMessage {
        message: Some(Message::TokenChunk(TokenChunk {
            header: Some(Header {
                thread_id: thread.into(),
                sequence: seq,
                ..Default::default()
            }),
            text: "x".repeat(4000),
            ..Default::default()
        })),
    }
}

fn error_msg(thread: &str, seq: u64) -> DashStreamMessage {
    DashStreamMessage {
        message: Some(Message::Error(PbError {
            header: Some(Header {
                thread_id: thread.into(),
                sequence: seq,
                ..Default::default()
            }),
            message: "boom".into(),
            ..Default::default()
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_client_keeps_high_priority_frames_and_is_told_what_it_lost_while_a_stalled_one_is_cut_off(
) {
    let topic = unique("slow");
    create_topic(&topic, 1).await;
    let env = [
        ("WEBSOCKET_CLIENT_QUEUE_FRAMES", "256"),
        ("WEBSOCKET_WRITE_TIMEOUT_SECS", "3"),
        // Small kernel buffers: a client's backlog shows in its queue, not in the kernel.
        ("WEBSOCKET_SEND_BUFFER_BYTES", "65536"),
        // The slow reader is merely slow for this test's length; a laggard past this is cut off.
        ("WEBSOCKET_SLOW_CLIENT_DISCONNECT_SECS", "120"),
        ("RESUME_GRACE_MS", "0"),
    ];
    let bridge = Bridge::start(&topic, &env).await;
    let (mut fast, _) = connect(&bridge.ws_url("?format=json&resume=latest")).await;
    let (mut slow, _) = connect(&bridge.ws_url("?format=json&resume=latest")).await;
    let (stalled, _) = connect(&bridge.ws_url("?format=json&resume=latest")).await;
    // 3000 token chunks (low priority) with an error (high) every 100th record.
    let mut recs = vec![];
    for i in 1..=3000u64 {
        let m = if i % 100 == 0 {
            error_msg("t", i)
        } else {
            token("t", i)
        };
        recs.push((Some("t".to_string()), encode_record(&m, None)));
    }
    // About 300 records/s: a reader that keeps up gets everything; one that
    // reads 100/s falls behind; one that never reads fills its socket.
    let pacer = tokio::spawn(async move {
        let p = producer();
        for chunk in recs.chunks(3) {
            produce(&p, &topic, chunk).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let slow_task = tokio::spawn(async move {
        let (mut errors, mut data, mut lost) = (0, 0i64, 0i64);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline && data + lost < 3000 {
            match next_frame(&mut slow, Duration::from_secs(3)).await {
                Some(Frame::Data { json, .. }) => {
                    data += 1;
                    if json["message_type"] == "error" {
                        errors += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Some(Frame::Control(c)) if c["type"] == "gap" => {
                    assert_eq!(c["reason"], "slow_client");
                    lost += c["to"].as_i64().expect("to") - c["from"].as_i64().expect("from") + 1;
                }
                Some(Frame::Control(_)) => {}
                Some(Frame::Closed { code, reason }) => {
                    eprintln!(
                        "slow client closed: {code} {reason} after {data} frames, {lost} lost"
                    );
                    break;
                }
                None => {
                    eprintln!("slow client idle after {data} frames, {lost} lost");
                    break;
                }
            }
        }
        (errors, data, lost)
    });

    // The fast client gets everything.
    let (frames, control) = collect(&mut fast, 3000, Duration::from_secs(30)).await;
    assert_eq!(
        frames.len(),
        3000,
        "{:?}",
        control
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(" | ")
            .chars()
            .take(1500)
            .collect::<String>()
    );
    pacer.await.expect("producer");
    let (errors, data, lost) = slow_task.await.expect("slow reader");
    assert_eq!(
        errors, 30,
        "every high-priority frame reached the slow client"
    );
    assert!(lost > 0, "the slow client shed low-priority frames");
    assert_eq!(
        data + lost,
        3000,
        "gap notices account for every frame it did not get"
    );
    // The stalled client never read: it was cut off, not waited for.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let m = bridge.metrics().await;
        if m["websocket_connected_clients"] <= 2.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stalled client still connected: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(stalled);
    let m = bridge.metrics().await;
    assert!(m["websocket_dropped_messages_total{reason=\"lagged_receiver\"}"] > 0.0);
    assert!(
        m["websocket_slow_client_disconnects_total"] >= 1.0,
        "the stalled client's disconnect is counted"
    );
    assert!(m.contains_key("websocket_client_queue_age_seconds_count"));
}
