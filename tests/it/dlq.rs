//! The dead-letter topic on a real broker: one record per failure with the
//! documented fields and headers, fail-open under outage and backpressure,
//! fail-closed durability across an outage and a restart, and the operator
//! tools (`dlq inspect`, `dlq redrive`).

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;
use kafka_ws_bridge::encode_record;
use kafka_ws_bridge::proto::dash_stream_message::Message;
use kafka_ws_bridge::proto::{DashStreamMessage, Event, Header};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

fn event(thread: &str, seq: u64, schema: u32, pad: usize) -> Vec<u8> {
    encode_record(
        &DashStreamMessage {
            message: Some(Message::Event(Event {
                header: Some(Header {
                    thread_id: thread.into(),
                    tenant_id: "acme".into(),
                    sequence: seq,
                    schema_version: schema,
                    ..Default::default()
                }),
                node_id: "x".repeat(pad),
                ..Default::default()
            })),
        },
        None,
    )
}

fn good(thread: &str, seq: u64) -> (Option<String>, Vec<u8>) {
    (Some(thread.into()), event(thread, seq, 1, 1))
}

/// Runs the CLI and returns stdout lines; panics with stderr on failure.
fn cli(args: &[&str]) -> Vec<String> {
    let out = Command::new(bridge_bin())
        .args(args)
        .output()
        .expect("run cli");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{args:?} failed:\n{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.lines().map(String::from).collect()
}

/// Every DLQ record of `topic` as JSON (with dlq_partition/dlq_offset).
fn dlq_records(brokers: &str, topic: &str) -> Vec<serde_json::Value> {
    cli(&[
        "dlq",
        "inspect",
        "--kafka-brokers",
        brokers,
        "--kafka-topic",
        topic,
        "--format",
        "jsonl",
    ])
    .iter()
    .map(|l| serde_json::from_str(l).expect("jsonl"))
    .collect()
}

/// A DLQ record's key and headers.
type KeyAndHeaders = (Option<Vec<u8>>, HashMap<String, String>);

/// Headers of DLQ records, read with a plain consumer.
fn dlq_headers(brokers: &str, dlq_topic: &str, n: usize) -> Vec<KeyAndHeaders> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("hdr"))
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(dlq_topic, 0, Offset::Beginning)
        .expect("tpl");
    c.assign(&tpl).expect("assign");
    drop(tpl);
    let mut out = vec![];
    let deadline = Instant::now() + Duration::from_secs(15);
    while out.len() < n && Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            use rdkafka::message::{Headers, Message};
            let h = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|x| {
                            (
                                x.key.to_string(),
                                String::from_utf8_lossy(x.value.unwrap_or_default()).to_string(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push((m.key().map(<[u8]>::to_vec), h));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_failure_kind_yields_exactly_one_dlq_record_with_documented_fields_and_headers() {
    let topic = unique("dlqkinds");
    create_topic(&topic, 1).await;
    let bridge = Bridge::start(
        &topic,
        &[
            ("MAX_MESSAGE_BYTES", "4096"),
            ("MAX_DECOMPRESSED_BYTES", "65536"),
            ("GAP_POLICY", "halt"),
        ],
    )
    .await;
    let (mut ws, _) = connect(&bridge.ws_url("?format=json&threads=ok")).await;
    let p = producer();
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let bomb = {
        let mut v = vec![0x01];
        v.extend(zstd::bulk::compress(&vec![0u8; 5 * 1_048_576], 19).expect("zstd"));
        v
    };
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        (
            "invalid_protobuf",
            "decode",
            b"\x00\xff\xff\xff\xff".to_vec(),
        ),
        (
            "decompression_failure",
            "decompress",
            vec![0x01, 0x28, 0xb5, 0x2f, 0xfd, 9, 9, 9],
        ),
        ("decompressed_too_large", "decompress", bomb),
        ("payload_too_large", "oversize", event("big", 1, 1, 5000)),
        ("schema_mismatch", "validate", event("future", 1, 9, 1)),
    ];
    let mut cursor_of = HashMap::new();
    for (i, (kind, _, value)) in cases.iter().enumerate() {
        produce(&p, &topic, &[good("ok", i as u64 + 1)]).await;
        let c = produce_with_header(
            &p,
            &topic,
            &format!("key-{kind}"),
            value,
            ("traceparent", tp),
        )
        .await;
        cursor_of.insert(*kind, c);
    }
    // A halted thread: h/1, h/3 (gap → halt), h/4 → two held records, two DLQ copies.
    produce(
        &p,
        &topic,
        &[
            good("h", 1),
            good("h", 3),
            good("h", 4),
            good("ok", cases.len() as u64 + 1),
        ],
    )
    .await;

    let (frames, _) = collect(&mut ws, cases.len() + 1, Duration::from_secs(10)).await;
    assert_eq!(
        frames.len(),
        cases.len() + 1,
        "the main stream keeps flowing"
    );
    let total = cases.len() as u64 * 2 + 4;
    bridge.wait_processed(total, Duration::from_secs(10)).await;
    // Each DLQ send is counted when the DLQ broker acknowledges it: wait for all of them.
    let m = wait_metric(
        &bridge,
        |m| {
            m["websocket_dlq_sends_total{error_type=\"thread_halted\"}"] >= 2.0
                && cases.iter().all(|(kind, _, _)| {
                    m.get(&format!(
                        "websocket_dlq_sends_total{{error_type=\"{kind}\"}}"
                    ))
                    .is_some_and(|v| *v >= 1.0)
                })
        },
        "DLQ sends",
    )
    .await;

    let records = dlq_records(&brokers(), &topic);
    assert_eq!(records.len(), cases.len() + 2, "{records:#?}");
    for (kind, stage, value) in &cases {
        let found: Vec<_> = records
            .iter()
            .filter(|r| r["error_type"] == *kind)
            .collect();
        assert_eq!(found.len(), 1, "exactly one {kind} record");
        let r = found[0];
        let (part, off) = cursor_of[kind];
        assert_eq!(r["stage"], *stage, "{kind}");
        assert_eq!(r["source"]["topic"], topic.as_str());
        assert_eq!(r["source"]["partition"], part);
        assert_eq!(r["source"]["offset"], off);
        assert_eq!(r["source"]["key"], format!("key-{kind}"));
        assert!(r["source"]["timestamp_ms"].as_i64().is_some());
        assert_eq!(r["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(r["payload_size"], value.len());
        assert_eq!(r["payload_sha256"].as_str().map(str::len), Some(64));
        assert!(r["error"].as_str().is_some_and(|e| !e.is_empty()));
        assert_eq!(
            m[&format!("websocket_dlq_sends_total{{error_type=\"{kind}\"}}")],
            1.0,
            "{kind}"
        );
    }
    let schema = records
        .iter()
        .find(|r| r["error_type"] == "schema_mismatch")
        .expect("schema record");
    assert_eq!(
        schema["original_message"]["thread_id"], "future",
        "header decoded as far as possible"
    );
    assert_eq!(schema["original_message"]["schema_version"], 9);
    let big = records
        .iter()
        .find(|r| r["error_type"] == "payload_too_large")
        .expect("big");
    assert_eq!(
        big["payload_truncated"], false,
        "5 KiB fits the default payload cap"
    );
    let halted: Vec<_> = records
        .iter()
        .filter(|r| r["error_type"] == "thread_halted")
        .collect();
    assert_eq!(halted.len(), 2);
    assert!(halted
        .iter()
        .all(|r| r["original_message"]["thread_id"] == "h" && r["stage"] == "sequence"));

    let headers = dlq_headers(&brokers(), &format!("{topic}-dlq"), records.len());
    let (key, h) = headers
        .iter()
        .find(|(_, h)| {
            h.get("__connect.errors.exception.class.name")
                .map(String::as_str)
                == Some("invalid_protobuf")
        })
        .expect("headers");
    assert_eq!(
        key.as_deref(),
        Some(&b"key-invalid_protobuf"[..]),
        "original key kept"
    );
    assert_eq!(h["__connect.errors.topic"], topic);
    assert_eq!(
        h["__connect.errors.partition"],
        cursor_of["invalid_protobuf"].0.to_string()
    );
    assert_eq!(
        h["__connect.errors.offset"],
        cursor_of["invalid_protobuf"].1.to_string()
    );
    assert_eq!(h["__connect.errors.stage"], "decode");
    assert!(!h["__connect.errors.exception.message"].is_empty());
    assert_eq!(h["traceparent"], tp, "original headers copied through");

    // The operator's summary agrees.
    let summary: serde_json::Value = serde_json::from_str(
        &cli(&[
            "dlq",
            "inspect",
            "--kafka-brokers",
            &brokers(),
            "--kafka-topic",
            &topic,
            "--format",
            "json",
        ])
        .join("\n"),
    )
    .expect("summary json");
    assert_eq!(summary["selected"], records.len());
    assert_eq!(summary["by_error_type"]["thread_halted"], 2);
    assert_eq!(summary["by_thread"]["h"], 2);
    let only = cli(&[
        "dlq",
        "inspect",
        "--kafka-brokers",
        &brokers(),
        "--kafka-topic",
        &topic,
        "--format",
        "jsonl",
        "--error-type",
        "schema_mismatch",
    ]);
    assert_eq!(only.len(), 1);
    let text = cli(&[
        "dlq",
        "inspect",
        "--kafka-brokers",
        &brokers(),
        "--kafka-topic",
        &topic,
    ])
    .join("\n");
    assert!(
        text.contains("by error_type") && text.contains("thread_halted"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unreachable_dlq_is_fail_open_counted_and_reported_while_delivery_continues() {
    let topic = unique("dlqdown");
    create_topic(&topic, 1).await;
    let closed = format!("127.0.0.1:{}", free_port());
    let bridge = Bridge::start(
        &topic,
        &[
            ("KAFKA_DLQ_BROKERS", &closed),
            ("DLQ_SEND_TIMEOUT_SECS", "1"),
        ],
    )
    .await;
    let (mut ws, _) = connect(&bridge.ws_url("?format=json")).await;
    let mut recs = vec![];
    for i in 1..=200u64 {
        recs.push(good("t", i));
        if i % 20 == 0 {
            recs.push((Some("t".into()), b"\x00\xff\xff\xff".to_vec()));
        }
    }
    let t0 = Instant::now();
    produce(&producer(), &topic, &recs).await;
    let (frames, _) = collect(&mut ws, 200, Duration::from_secs(10)).await;
    assert_eq!(frames.len(), 200, "full delivery while the DLQ is down");
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "delivery was not slowed: {:?}",
        t0.elapsed()
    );
    let m = wait_metric(
        &bridge,
        |m| {
            m["websocket_dlq_send_failures_total{reason=\"timeout\"}"]
                + m["websocket_dlq_send_failures_total{reason=\"kafka_error\"}"]
                >= 10.0
        },
        "10 DLQ failures",
    )
    .await;
    assert_eq!(
        m["websocket_dlq_sends_total{error_type=\"invalid_protobuf\"}"],
        0.0
    );
    let h = bridge.health().await;
    assert_eq!(h["dlq_health"], "degraded", "{h}");
    assert_eq!(h["status"], "degraded");
    assert!(
        h["alert"].as_str().is_some_and(|a| a.contains("DLQ")),
        "{h}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dlq_backpressure_drops_and_counts_without_blocking() {
    let topic = unique("dlqbp");
    create_topic(&topic, 1).await;
    let closed = format!("127.0.0.1:{}", free_port());
    let bridge = Bridge::start(
        &topic,
        &[
            ("KAFKA_DLQ_BROKERS", &closed),
            ("DLQ_SEND_TIMEOUT_SECS", "5"),
            ("MAX_CONCURRENT_DLQ_SENDS", "1"),
        ],
    )
    .await;
    let (mut ws, _) = connect(&bridge.ws_url("?format=json")).await;
    let mut recs: Vec<_> = (0..50)
        .map(|_| (Some("t".to_string()), b"\x00\xff\xff\xff".to_vec()))
        .collect();
    recs.extend((1..=100).map(|i| good("t", i)));
    let t0 = Instant::now();
    produce(&producer(), &topic, &recs).await;
    let (frames, _) = collect(&mut ws, 100, Duration::from_secs(10)).await;
    assert_eq!(frames.len(), 100);
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "nothing blocked: {:?}",
        t0.elapsed()
    );
    let m = bridge.metrics().await;
    assert!(
        m["websocket_dlq_send_failures_total{reason=\"backpressure\"}"] >= 49.0,
        "one send in flight, the rest dropped: {}",
        m["websocket_dlq_send_failures_total{reason=\"backpressure\"}"]
    );
    assert!(m["websocket_dlq_in_flight"] <= 1.0);
}

/// A DLQ record the producer can never send (over `message.max.bytes`)
/// ends as counted and lost, and fail-closed consumption goes on past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fail_closed_gives_up_on_a_record_the_dlq_refuses_for_good_and_moves_on() {
    let topic = unique("dlqtoobig");
    create_topic(&topic, 1).await;
    let group = unique("grp");
    let bridge = Bridge::start_with_group(
        &topic,
        &group,
        &[
            ("DLQ_FAIL_CLOSED", "true"),
            // The DLQ producer's own request limit: a 6 KB document is over it.
            ("KAFKA_PROPERTIES", "message.max.bytes=4000"),
        ],
    )
    .await;
    let (mut ws, _) = connect(&bridge.ws_url("?format=json")).await;
    let mut bad = vec![0u8, 0xff, 0xff, 0xff];
    bad.extend(std::iter::repeat_n(b'z', 6000));
    let cursors = produce(
        &producer(),
        &topic,
        &[
            good("t", 1),
            (Some("t".into()), bad),
            good("t", 2),
            good("t", 3),
        ],
    )
    .await;
    let (frames, _) = collect(&mut ws, 3, Duration::from_secs(15)).await;
    assert_eq!(frames.len(), 3, "delivery goes on past the record");
    let m = wait_metric(
        &bridge,
        |m| m["websocket_dlq_records_lost_total{error_type=\"invalid_protobuf\"}"] >= 1.0,
        "the refused DLQ record counted as lost",
    )
    .await;
    assert!(m["websocket_dlq_send_failures_total{reason=\"permanent\"}"] >= 1.0);
    assert_eq!(
        m["websocket_dlq_sends_total{error_type=\"invalid_protobuf\"}"],
        0.0
    );
    // Its offset was released: the commit point moves past it.
    let deadline = Instant::now() + Duration::from_secs(15);
    while committed(&topic, &group).is_none_or(|c| c <= cursors[1].1) {
        assert!(
            Instant::now() < deadline,
            "commit stuck at {:?}",
            committed(&topic, &group)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Fail-closed with the DLQ down: no more than MAX_CONCURRENT_DLQ_SENDS
/// bad records wait, and the bridge takes no record beyond them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fail_closed_takes_no_record_while_every_dlq_permit_waits() {
    let topic = unique("dlqpending");
    create_topic(&topic, 1).await;
    let closed = format!("127.0.0.1:{}", free_port());
    let bridge = Bridge::start(
        &topic,
        &[
            ("KAFKA_DLQ_BROKERS", &closed),
            ("DLQ_SEND_TIMEOUT_SECS", "1"),
            ("DLQ_FAIL_CLOSED", "true"),
            ("MAX_CONCURRENT_DLQ_SENDS", "2"),
        ],
    )
    .await;
    let recs: Vec<_> = (0..40)
        .map(|_| (Some("t".to_string()), b"\x00\xff\xff\xff".to_vec()))
        .collect();
    produce(&producer(), &topic, &recs).await;
    bridge.wait_processed(2, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let h = bridge.health().await;
    assert_eq!(h["records_processed"], 2, "{h}");
    let m = bridge.metrics().await;
    assert!(
        m["websocket_dlq_in_flight"] <= 2.0,
        "{}",
        m["websocket_dlq_in_flight"]
    );
}

fn committed(topic: &str, group: &str) -> Option<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, 0);
    let got = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed");
    let off = match got.find_partition(topic, 0).map(|e| e.offset()) {
        Some(Offset::Offset(o)) => Some(o),
        _ => None,
    };
    // Drop the list before the consumer (a live list blocks the consumer's drop).
    drop(got);
    off
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fail_closed_keeps_the_bad_offset_uncommitted_through_an_outage_and_a_restart() {
    let topic = unique("failclosed");
    create_topic(&topic, 1).await;
    let group = unique("grp");
    let dlq_port = free_port();
    let env = [
        ("KAFKA_DLQ_BROKERS", format!("127.0.0.1:{dlq_port}")),
        ("DLQ_SEND_TIMEOUT_SECS", "1".to_string()),
        ("DLQ_FAIL_CLOSED", "true".to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut bridge = Bridge::start_with_group(&topic, &group, &env).await;
    let p = producer();
    let cursors = produce(
        &p,
        &topic,
        &[
            good("t", 1),
            good("t", 2),
            (Some("t".into()), b"\x00\xff\xff\xff".to_vec()),
            good("t", 3),
            good("t", 4),
        ],
    )
    .await;
    let bad_offset = cursors[2].1;
    bridge.wait_processed(3, Duration::from_secs(10)).await;
    wait_metric(
        &bridge,
        |m| {
            m["websocket_dlq_send_failures_total{reason=\"timeout\"}"]
                + m["websocket_dlq_send_failures_total{reason=\"kafka_error\"}"]
                >= 1.0
        },
        "a failed DLQ attempt",
    )
    .await;
    let h = bridge.health().await;
    assert_eq!(h["dlq_mode"], "fail_closed");
    assert_eq!(h["dlq_health"], "degraded");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let c = committed(&topic, &group);
    assert!(
        c.is_none_or(|c| c <= bad_offset),
        "committed {c:?} must not pass the unacknowledged record at {bad_offset}"
    );

    // Restart while the DLQ is still down: the offset stays uncommitted.
    let (elapsed, status) = bridge.terminate();
    assert!(
        status.success() && elapsed < Duration::from_secs(5),
        "{elapsed:?} {status:?}"
    );
    let c = committed(&topic, &group);
    assert!(
        c.is_some_and(|c| c == bad_offset),
        "after shutdown the group resumes at the bad record: {c:?} vs {bad_offset}"
    );

    // The DLQ comes back; the restarted bridge re-reads the bad record, gets it acknowledged, and moves on.
    let _dlq = PrivateBroker::start(dlq_port).await;
    create_topics_on(
        &format!("127.0.0.1:{dlq_port}"),
        &[(&format!("{topic}-dlq"), 1)],
    )
    .await;
    let bridge = Bridge::start_with_group(&topic, &group, &env).await;
    bridge.wait_processed(3, Duration::from_secs(20)).await;
    wait_metric(
        &bridge,
        |m| m["websocket_dlq_sends_total{error_type=\"invalid_protobuf\"}"] >= 1.0,
        "the DLQ acknowledgement",
    )
    .await;
    produce(&p, &topic, &[good("t", 5)]).await;
    bridge.wait_processed(4, Duration::from_secs(10)).await;
    let records = dlq_records(&format!("127.0.0.1:{dlq_port}"), &topic);
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0]["source"]["offset"], bad_offset);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        // Auto-commit runs every 5 s: the group moves past the bad record.
        if committed(&topic, &group).is_some_and(|c| c > bad_offset + 1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "consumption did not resume past the bad record"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redrive_delivers_a_fixed_up_record_and_stops_at_the_attempt_limit() {
    let topic = unique("redrive");
    create_topic(&topic, 1).await;
    let group = unique("grp");
    let b = brokers();
    // Too large for this bridge's limit: goes to the DLQ with its payload.
    let mut strict =
        Bridge::start_with_group(&topic, &group, &[("MAX_MESSAGE_BYTES", "2048")]).await;
    let p = producer();
    produce(
        &p,
        &topic,
        &[
            (Some("big".into()), event("big", 1, 1, 3000)),
            (Some("junk".into()), b"\x00\xff\xff\xff".to_vec()),
        ],
    )
    .await;
    strict.wait_processed(2, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    strict.terminate();

    // The fix: a bridge with a larger limit. Redrive the oversized record.
    let bridge = Bridge::start_with_group(&topic, &group, &[]).await;
    let (mut ws, _) = connect(&bridge.ws_url("?format=json")).await;
    let dry = cli(&[
        "dlq",
        "redrive",
        "--kafka-brokers",
        &b,
        "--kafka-topic",
        &topic,
        "--error-type",
        "payload_too_large",
        "--dry-run",
    ]);
    let summary: serde_json::Value =
        serde_json::from_str(dry.last().expect("summary")).expect("json");
    assert_eq!(summary["would_redrive"], 1);
    assert_eq!(summary["redriven"], 0);
    let out = cli(&[
        "dlq",
        "redrive",
        "--kafka-brokers",
        &b,
        "--kafka-topic",
        &topic,
        "--error-type",
        "payload_too_large",
    ]);
    let summary: serde_json::Value =
        serde_json::from_str(out.last().expect("summary")).expect("json");
    assert_eq!(summary["redriven"], 1, "{out:?}");
    let (frames, _) = collect(&mut ws, 1, Duration::from_secs(10)).await;
    assert!(
        matches!(&frames[..], [Frame::Data { json, .. }] if json["thread_id"] == "big"),
        "{frames:?}"
    );

    // The junk record fails every time: redriven twice, then refused.
    for attempt in 1..=3u64 {
        let records = dlq_records(&b, &topic);
        let newest = records
            .iter()
            .filter(|r| r["error_type"] == "invalid_protobuf")
            .max_by_key(|r| r["source"]["offset"].as_i64())
            .expect("junk record");
        assert_eq!(newest["redrive_attempts"], attempt - 1);
        let off = newest["source"]["offset"].to_string();
        let range = format!("{off}-{off}");
        let before = bridge.health().await["records_processed"]
            .as_u64()
            .unwrap_or(0);
        let out = cli(&[
            "dlq",
            "redrive",
            "--kafka-brokers",
            &b,
            "--kafka-topic",
            &topic,
            "--error-type",
            "invalid_protobuf",
            "--source-offsets",
            &range,
            "--max-attempts",
            "2",
        ]);
        let summary: serde_json::Value =
            serde_json::from_str(out.last().expect("summary")).expect("json");
        if attempt <= 2 {
            assert_eq!(summary["redriven"], 1, "attempt {attempt}: {out:?}");
            bridge
                .wait_processed(before + 1, Duration::from_secs(10))
                .await;
            wait_metric(
                &bridge,
                |m| {
                    m["websocket_dlq_sends_total{error_type=\"invalid_protobuf\"}"]
                        >= attempt as f64
                },
                "the record back in the DLQ",
            )
            .await;
        } else {
            assert_eq!(summary["redriven"], 0, "{out:?}");
            assert_eq!(summary["refused"]["attempt_limit_reached"], 1, "{out:?}");
        }
    }
}
