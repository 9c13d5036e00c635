//! What operators see: consumer lag from librdkafka statistics during a real
//! catch-up, trace ids carried from `traceparent`, JSON logs, admin auth.

use std::time::{Duration, Instant};

use crate::common::*;
use kafka_ws_bridge::{Generator, SynthConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consumer_lag_in_offsets_and_seconds_rises_during_catch_up_and_returns_to_zero() {
    let topic = unique("lag");
    create_topic(&topic, 2).await;
    let recs: Vec<_> = Generator::new(SynthConfig {
        threads: 20,
        ..Default::default()
    })
    .take(150_000)
    .map(|r| (Some(r.key), r.value))
    .collect();
    produce(&producer(), &topic, &recs).await;
    // The records are a few seconds old by the time the bridge reads them.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let bridge = Bridge::spawn(
        &topic,
        &unique("grp"),
        &[("KAFKA_STATS_INTERVAL_MS", "100")],
    );
    let (mut max_lag, mut max_secs) = (0.0f64, 0.0f64);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok((200, body)) = http(bridge.port, "GET", "/metrics").await {
            let m = parse_metrics(&body);
            let lag: f64 = m
                .iter()
                .filter(|(k, _)| k.starts_with("websocket_kafka_consumer_lag{"))
                .map(|(_, v)| v)
                .sum();
            let secs = m
                .iter()
                .filter(|(k, _)| k.starts_with("websocket_kafka_consumer_lag_seconds{"))
                .map(|(_, v)| *v)
                .fold(0.0, f64::max);
            max_lag = max_lag.max(lag);
            max_secs = max_secs.max(secs);
            let partitions = m
                .keys()
                .filter(|k| k.starts_with("websocket_kafka_consumer_lag{"))
                .count();
            let processed = m
                .get("websocket_kafka_messages_total{status=\"success\"}")
                .copied()
                .unwrap_or(0.0);
            if processed >= recs.len() as f64 && partitions == 2 && lag == 0.0 && max_lag > 0.0 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "lag never rose and drained (max {max_lag}); log:\n{}",
            bridge.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        max_lag > 0.0 && max_lag <= recs.len() as f64,
        "offset lag seen during catch-up: {max_lag}"
    );
    assert!(max_secs > 0.0, "time lag seen during catch-up: {max_secs}");
    // Caught up: every partition reports 0 in offsets and seconds.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let m = bridge.metrics().await;
    for p in ["0", "1"] {
        assert_eq!(
            m[&format!("websocket_kafka_consumer_lag{{partition=\"{p}\"}}")],
            0.0
        );
        assert_eq!(
            m[&format!("websocket_kafka_consumer_lag_seconds{{partition=\"{p}\"}}")],
            0.0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn trace_ids_from_traceparent_reach_json_frames_and_logs_can_be_json() {
    let topic = unique("trace");
    create_topic(&topic, 1).await;
    let bridge = Bridge::start(&topic, &[("LOG_FORMAT", "json")]).await;
    let (mut ws, _) = connect(&bridge.ws_url("?format=json")).await;
    let value = Generator::new(SynthConfig::default())
        .next()
        .expect("record")
        .value;
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    produce_with_header(&producer(), &topic, "thread-0", &value, ("traceparent", tp)).await;
    produce_with_header(
        &producer(),
        &topic,
        "thread-0",
        b"\x00\xff\xff\xff",
        ("traceparent", tp),
    )
    .await;
    let (frames, _) = collect(&mut ws, 1, Duration::from_secs(10)).await;
    let Some(Frame::Data { json, .. }) = frames.first() else {
        panic!("no frame")
    };
    assert_eq!(json["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    bridge.wait_processed(2, Duration::from_secs(10)).await;
    let log = bridge.log_text();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("every log line is JSON"))
        .collect();
    assert!(!lines.is_empty());
    let skipped = lines
        .iter()
        .find(|l| l["fields"]["error_type"] == "invalid_protobuf")
        .expect("a log line for the bad record");
    assert_eq!(
        skipped["fields"]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736",
        "the bad record's trace id is logged"
    );
}

/// Without `ADMIN_TOKEN` on a loopback bind, a web page in the operator's
/// browser cannot reach `/admin`: a simple cross-site request lacks the
/// `X-Bridge-Admin` header, a DNS-rebound one names a foreign `Host`, and a
/// cross-origin `fetch` carries its `Origin`. A local tool that sends the
/// header gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_calls_without_a_token_need_a_local_host_and_the_admin_header() {
    let topic = unique("csrf");
    create_topic(&topic, 1).await;
    let bridge = Bridge::start(&topic, &[]).await;
    let port = bridge.port;
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], u16, &'a str);
    let cases: &[Case] = &[
        // A cross-site form POST: no custom header.
        (
            "POST",
            "/admin/circuit-breaker/reset",
            &[
                ("Origin", "http://evil.example"),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            403,
            "cross_origin",
        ),
        (
            "POST",
            "/admin/circuit-breaker/reset",
            &[("Content-Type", "text/plain")],
            403,
            "admin_header_required",
        ),
        (
            "POST",
            "/admin/threads/a/resume",
            &[],
            403,
            "admin_header_required",
        ),
        (
            "GET",
            "/admin/threads/halted",
            &[],
            403,
            "admin_header_required",
        ),
        // DNS rebinding: the header is same-origin now, the Host is the attacker's.
        (
            "GET",
            "/admin/threads/halted",
            &[
                ("Host", "rebind.evil.example:1234"),
                ("x-bridge-admin", "1"),
            ],
            403,
            "host_not_allowed",
        ),
        (
            "GET",
            "/admin/tenants/rate-limits",
            &[("x-bridge-admin", "1"), ("Origin", "https://evil.example")],
            403,
            "cross_origin",
        ),
        (
            "GET",
            "/admin/threads/halted",
            &[("x-bridge-admin", "1")],
            200,
            "halted_threads",
        ),
        (
            "GET",
            "/admin/threads/halted",
            &[("Host", "localhost"), ("x-bridge-admin", "1")],
            200,
            "halted_threads",
        ),
        (
            "POST",
            "/admin/circuit-breaker/reset",
            &[("x-bridge-admin", "1")],
            200,
            "CLOSED",
        ),
    ];
    for (method, path, headers, status, text) in cases {
        let (code, body) = http_with(port, method, path, headers).await.expect("http");
        assert_eq!(code, *status, "{method} {path} {headers:?}: {body}");
        assert!(body.contains(text), "{method} {path} {headers:?}: {body}");
    }
    // /health tells how many threads are halted, never which.
    let h = bridge.health().await;
    assert!(h["halted_threads"].is_number(), "{h}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_endpoints_require_the_bearer_token_when_one_is_configured() {
    let topic = unique("admin");
    create_topic(&topic, 1).await;
    let token = "s3cret-token-0123456789";
    let bridge = Bridge::start(&topic, &[("ADMIN_TOKEN", token)]).await;
    let (code, _) = http(bridge.port, "GET", "/admin/threads/halted")
        .await
        .expect("http");
    assert_eq!(code, 401);
    let (code, _) = http_with(
        bridge.port,
        "GET",
        "/admin/threads/halted",
        &[("Authorization", "Bearer wrong-token-0123456789")],
    )
    .await
    .expect("http");
    assert_eq!(code, 401);
    let (code, body) = http_with(
        bridge.port,
        "GET",
        "/admin/threads/halted",
        &[("Authorization", &format!("Bearer {token}"))],
    )
    .await
    .expect("http");
    assert_eq!(code, 200, "{body}");
    let long = "x".repeat(300);
    let (code, _) = http_with(
        bridge.port,
        "POST",
        &format!("/admin/threads/{long}/resume"),
        &[("Authorization", &format!("Bearer {token}"))],
    )
    .await
    .expect("http");
    assert_eq!(code, 400, "over-long thread id");
    // /version names the resume namespace; /health/live always answers.
    let (code, body) = http(bridge.port, "GET", "/version").await.expect("http");
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert!(
        v["resume_namespace"]
            .as_str()
            .is_some_and(|s| s.starts_with(&topic)),
        "{v}"
    );
    assert_eq!(
        http(bridge.port, "GET", "/health/live")
            .await
            .expect("http")
            .0,
        200
    );
}
