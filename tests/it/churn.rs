//! Connections that go away at every stage, and clients that never finish
//! their request headers, cost the bridge nothing once they are gone: slots,
//! pending connections and memory return to their baseline, and a client
//! that stays receives every record meanwhile.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;
use kafka_ws_bridge::{Generator, SynthConfig};

const UPGRADE: &str = "GET /ws?format=json HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
                       Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                       Sec-WebSocket-Version: 13\r\n\r\n";

/// Where a connection goes away.
#[derive(Clone, Copy, Debug)]
enum Stage {
    /// Right after TCP connect.
    BeforeRequest,
    /// Halfway through the request headers.
    MidHeaders,
    /// The upgrade request sent, the response not read.
    DuringUpgrade,
    /// Upgraded, `hello` read, then the socket dropped without a Close.
    AfterUpgrade,
    /// Upgraded, then a proper Close.
    Closed,
}

async fn churn_one(port: u16, stage: Stage) {
    if let Stage::AfterUpgrade | Stage::Closed = stage {
        let mut ws = kwb_testkit::rawws::RawWs::connect(port, "/ws?format=json")
            .await
            .expect("upgrade");
        let hello = ws.read(Duration::from_secs(10)).await.expect("hello");
        assert!(hello.text().contains("hello"));
        if let Stage::Closed = stage {
            ws.send_close(1000, b"").await.expect("close");
            let _ = ws.ending(Duration::from_secs(5)).await;
        }
        return;
    }
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    match stage {
        Stage::BeforeRequest => {}
        Stage::MidHeaders => {
            s.write_all(&UPGRADE.as_bytes()[..60]).await.expect("write");
        }
        Stage::DuringUpgrade => {
            s.write_all(UPGRADE.as_bytes()).await.expect("write");
        }
        Stage::AfterUpgrade | Stage::Closed => unreachable!(),
    }
    drop(s);
}

/// A client that sends its headers one byte every 400 ms and never ends
/// them; returns how long the server took to close it.
async fn slow_header_client(port: u16) -> Duration {
    let started = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";
    s.write_all(head).await.expect("write");
    let mut buf = [0u8; 512];
    loop {
        tokio::select! {
            r = s.read(&mut buf) => match r {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {} // a 408 before the close
            },
            _ = tokio::time::sleep(Duration::from_millis(400)) => {
                if s.write_all(b"a").await.is_err() {
                    return started.elapsed();
                }
            }
        }
        if started.elapsed() > Duration::from_secs(30) {
            return started.elapsed();
        }
    }
}

async fn gauge(bridge: &Bridge, name: &str) -> f64 {
    bridge
        .metrics()
        .await
        .get(name)
        .copied()
        .unwrap_or(f64::NAN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_dropped_at_every_stage_and_slow_headers_leave_nothing_behind() {
    let topic = unique("churn");
    create_topic(&topic, 1).await;
    // Small limits, so that a leaked slot shows: 40 WebSocket slots, 2 s to send headers.
    let bridge = Bridge::start(
        &topic,
        &[
            ("WEBSOCKET_MAX_CONNECTIONS", "40"),
            ("HTTP_HEADER_TIMEOUT_SECS", "2"),
        ],
    )
    .await;
    let port = bridge.port;
    let (mut steady, _) = connect(&bridge.ws_url("?format=json")).await;
    // It reads throughout (until 5 s pass without a record).
    let reader = tokio::spawn(async move {
        let (frames, _) = collect(&mut steady, usize::MAX, Duration::from_secs(5)).await;
        frames
    });

    // Records flow for the whole test; the steady client must get every one.
    let producing = {
        let topic = topic.clone();
        tokio::spawn(async move {
            let p = producer();
            let mut g = Generator::new(SynthConfig {
                threads: 4,
                ..Default::default()
            });
            let mut sent = 0usize;
            let until = Instant::now() + Duration::from_secs(12);
            while Instant::now() < until {
                let batch: Vec<_> = g
                    .by_ref()
                    .take(50)
                    .map(|r| (Some(r.key), r.value))
                    .collect();
                produce(&p, &topic, &batch).await;
                sent += batch.len();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            sent
        })
    };

    // Warm up (allocator arenas, first sessions), then take the baseline.
    for stage in [Stage::AfterUpgrade, Stage::Closed, Stage::DuringUpgrade] {
        for _ in 0..20 {
            churn_one(port, stage).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline_kb = kwb_testkit::process::rss_kb(bridge.proc.pid());

    let slow: Vec<_> = (0..50)
        .map(|_| tokio::spawn(slow_header_client(port)))
        .collect();
    let stages = [
        Stage::BeforeRequest,
        Stage::MidHeaders,
        Stage::DuringUpgrade,
        Stage::AfterUpgrade,
        Stage::Closed,
    ];
    for round in 0..20 {
        let batch: Vec<_> = stages
            .iter()
            .cycle()
            .skip(round)
            .take(25)
            .map(|s| tokio::spawn(churn_one(port, *s)))
            .collect();
        for t in batch {
            t.await.expect("churn");
        }
    }
    for t in slow {
        let took = t.await.expect("slow client");
        assert!(
            took >= Duration::from_millis(1500) && took < Duration::from_secs(6),
            "a client that never ends its headers is closed after HTTP_HEADER_TIMEOUT_SECS (2 s), took {took:?}"
        );
    }

    // Everything is back to the baseline.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let clients = gauge(&bridge, "websocket_connected_clients").await;
        // The scrape itself is one pending connection.
        let pending = gauge(&bridge, "websocket_http_pending_connections").await;
        if clients == 1.0 && pending <= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "clients {clients} (want 1), pending {pending} (want ≤ 1)"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let m = bridge.metrics().await;
    assert!(
        m["websocket_http_header_timeouts_total"] >= 50.0,
        "slow clients counted: {}",
        m["websocket_http_header_timeouts_total"]
    );
    let after_kb = kwb_testkit::process::rss_kb(bridge.proc.pid());
    eprintln!(
        "rss: baseline {baseline_kb} kB, after 500 connections and 50 slow clients {after_kb} kB"
    );
    assert!(
        after_kb < baseline_kb + 16 * 1024,
        "memory back near its baseline: {baseline_kb} kB → {after_kb} kB"
    );
    // Every WebSocket slot but the steady client's is free again.
    let mut held = Vec::new();
    for _ in 0..39 {
        held.push(connect(&bridge.ws_url("?format=json")).await.0);
    }
    let (code, _) = http(port, "GET", "/ws?format=json").await.expect("http");
    assert_eq!(code, 426, "the server still answers");
    drop(held);

    // The steady client got every record, in order, with no hole.
    let sent = producing.await.expect("producer");
    let frames = reader.await.expect("reader");
    let offsets: Vec<i64> = frames
        .iter()
        .filter_map(|f| match f {
            Frame::Data { offset, .. } => Some(*offset),
            _ => None,
        })
        .collect();
    assert_eq!(offsets.len(), sent, "the steady client received everything");
    assert!(
        offsets.windows(2).all(|w| w[1] == w[0] + 1),
        "in order, no hole"
    );
}

/// Beyond `HTTP_MAX_PENDING_CONNECTIONS`, a new connection gets a 503 at
/// once; when the idle ones time out, connections are served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_beyond_the_pending_limit_get_503() {
    let topic = unique("pending");
    create_topic(&topic, 1).await;
    let bridge = Bridge::start(
        &topic,
        &[
            ("HTTP_MAX_PENDING_CONNECTIONS", "20"),
            ("HTTP_HEADER_TIMEOUT_SECS", "2"),
        ],
    )
    .await;
    let port = bridge.port;
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(
            TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect"),
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let mut answer = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut answer)).await;
    assert!(
        answer.starts_with("HTTP/1.1 503") && answer.contains("too_many_pending_connections"),
        "{answer:?}"
    );
    // The idle connections are closed after the header timeout; then the
    // bridge serves again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (code, _) = http(port, "GET", "/health/live").await.expect("http");
    assert_eq!(code, 200);
    let m = bridge.metrics().await;
    assert!(m["websocket_connections_rejected_total{reason=\"pending_limit\"}"] >= 1.0);
    assert_eq!(m["websocket_http_max_pending_connections"], 20.0);
}
