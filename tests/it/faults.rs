//! Faulty input over a real broker: injected sequence faults give exact
//! counters; every kind of bad record is counted and skipped without
//! disturbing its neighbours; the halt policy holds a thread and releases it.

use std::time::Duration;

use crate::common::*;
use kafka_ws_bridge::encode_record;
use kafka_ws_bridge::proto::dash_stream_message::Message;
use kafka_ws_bridge::proto::{DashStreamMessage, Event, EventBatch, Header};
use kafka_ws_bridge::{Generator, SynthConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn injected_gaps_duplicates_reorders_and_garbage_give_exact_counters() {
    let topic = unique("inject");
    create_topic(&topic, 3).await;
    let bridge = Bridge::start(&topic, &[]).await;
    let mut g = Generator::new(SynthConfig {
        threads: 7,
        gap_every: 37,
        duplicate_every: 23,
        reorder_every: 41,
        garbage_every: 53,
        ..Default::default()
    });
    let mut recs: Vec<_> = g.by_ref().take(3000).collect();
    // Complete any swap still held back, so every injection is on the wire.
    while g.pending_reorders() > 0 {
        recs.push(g.next().expect("generator is endless"));
        assert!(recs.len() < 3500, "generator keeps deferring");
    }
    let inj = g.injected.clone();
    assert!(
        inj.gaps > 0 && inj.duplicates > 0 && inj.reorders > 0 && inj.garbage > 0,
        "{inj:?}"
    );
    produce(
        &producer(),
        &topic,
        &recs
            .iter()
            .map(|r| (Some(r.key.clone()), r.value.clone()))
            .collect::<Vec<_>>(),
    )
    .await;
    bridge
        .wait_processed(recs.len() as u64, Duration::from_secs(30))
        .await;
    let m = bridge.metrics().await;
    assert_eq!(
        m["dashstream_sequence_gaps_total"], inj.gaps as f64,
        "{inj:?}"
    );
    assert_eq!(
        m["dashstream_sequence_duplicates_total"], inj.duplicates as f64,
        "{inj:?}"
    );
    assert_eq!(
        m["dashstream_sequence_reorders_total"], inj.reorders as f64,
        "{inj:?}"
    );
    assert_eq!(
        m["websocket_decode_errors_total{error_type=\"invalid_protobuf\"}"],
        inj.garbage as f64
    );
    assert_eq!(
        m["websocket_kafka_messages_total{status=\"error\"}"],
        inj.garbage as f64
    );
    assert_eq!(
        m["websocket_kafka_messages_total{status=\"success\"}"],
        (recs.len() as u64 - inj.garbage) as f64
    );
    assert_eq!(
        m["dashstream_sequence_gap_size_count"], inj.gaps as f64,
        "gap sizes are a histogram"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_records_of_every_kind_are_counted_and_skipped_without_disturbing_others() {
    let topic = unique("bad");
    create_topic(&topic, 1).await;
    let bridge = Bridge::start(
        &topic,
        &[
            ("MAX_MESSAGE_BYTES", "4096"),
            ("MAX_DECOMPRESSED_BYTES", "65536"),
        ],
    )
    .await;
    let (mut ws, _) = connect(&bridge.ws_url("?format=json")).await;

    let full = encode_record(&event("t", 99, 1), None);
    let bomb = {
        let mut v = vec![0x01];
        v.extend(zstd::bulk::compress(&vec![0u8; 10 * 1_048_576], 19).expect("compress"));
        v
    };
    let future_batch = DashStreamMessage {
        message: Some(Message::EventBatch(EventBatch {
            header: Some(Header {
                thread_id: "t".into(),
                ..Default::default()
            }),
            events: vec![Event {
                header: Some(Header {
                    thread_id: "t".into(),
                    sequence: 50,
                    schema_version: 7,
                    ..Default::default()
                }),
                ..Default::default()
            }],
        })),
    };
    let bad: Vec<(&str, Vec<u8>)> = vec![
        (
            "invalid_protobuf",
            b"\x00this is not protobuf \xff\xff\xff\xff".to_vec(),
        ),
        ("invalid_protobuf", full[..full.len() - 2].to_vec()),
        ("payload_too_large", {
            let mut v = vec![0x00];
            v.extend(vec![b'x'; 5000]);
            v
        }),
        ("decompressed_too_large", bomb),
        (
            "decompression_failure",
            vec![0x01, 0x28, 0xb5, 0x2f, 0xfd, 1, 2, 3],
        ),
        ("schema_mismatch", encode_record(&event("t", 60, 2), None)),
        ("schema_mismatch", encode_record(&future_batch, Some(3))),
        ("missing_body", vec![0x00]),
        ("empty_payload", vec![]),
    ];
    let mut records = vec![];
    let mut seq = 0;
    for (_, b) in &bad {
        seq += 1;
        records.push(good("t", seq));
        records.push((Some("t".to_string()), b.clone()));
    }
    seq += 1;
    records.push(good("t", seq));
    produce(&producer(), &topic, &records).await;

    let (frames, _) = collect(&mut ws, seq as usize, Duration::from_secs(15)).await;
    let seqs: Vec<u64> = frames
        .iter()
        .map(|f| match f {
            Frame::Data { json, .. } => json["sequence"].as_u64().expect("seq"),
            _ => 0,
        })
        .collect();
    assert_eq!(
        seqs,
        (1..=seq).collect::<Vec<_>>(),
        "every good record arrives, in order"
    );
    bridge
        .wait_processed(records.len() as u64, Duration::from_secs(10))
        .await;
    let m = bridge.metrics().await;
    for t in [
        "invalid_protobuf",
        "payload_too_large",
        "decompressed_too_large",
        "decompression_failure",
        "schema_mismatch",
        "missing_body",
        "empty_payload",
    ] {
        let want = bad.iter().filter(|(k, _)| *k == t).count() as f64;
        assert_eq!(
            m[&format!("websocket_decode_errors_total{{error_type=\"{t}\"}}")],
            want,
            "{t}"
        );
    }
    assert_eq!(
        m["websocket_kafka_messages_total{status=\"error\"}"],
        bad.len() as f64
    );
    assert_eq!(
        m["dashstream_sequence_gaps_total"], 0.0,
        "skipped records are not sequence gaps"
    );
    assert_eq!(bridge.health().await["status"], "healthy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn halt_policy_holds_a_thread_and_the_admin_call_releases_it_with_nothing_lost() {
    let topic = unique("halt");
    create_topic(&topic, 1).await;
    let bridge = Bridge::start(&topic, &[("GAP_POLICY", "halt")]).await;
    let (mut ws, _) = connect(&bridge.ws_url("?format=json")).await;
    // Notices about a thread go to its tenant's clients only.
    let (mut mine, _) = connect(&bridge.ws_url("?format=json&tenant=acme")).await;
    let (mut other, _) = connect(&bridge.ws_url("?format=json&tenant=globex")).await;
    let p = producer();

    // a: 1 2 [gap] 5 6 7 ; b flows throughout.
    let recs = vec![
        good("a", 1),
        good("b", 1),
        good("a", 2),
        good("a", 5),
        good("b", 2),
        good("a", 6),
        good("b", 3),
        good("a", 7),
    ];
    produce(&p, &topic, &recs).await;
    let (frames, control) = collect(&mut ws, 5, Duration::from_secs(10)).await;
    let got = sequences(&frames);
    assert_eq!(
        got,
        vec![
            ("a".into(), 1),
            ("b".into(), 1),
            ("a".into(), 2),
            ("b".into(), 2),
            ("b".into(), 3)
        ]
    );
    assert!(
        control
            .iter()
            .any(|c| c["type"] == "thread_halted" && c["thread_id"] == "a" && c["missing"] == 2),
        "{control:?}"
    );
    // Nothing more arrives while halted.
    assert!(next_frame(&mut ws, Duration::from_millis(800))
        .await
        .is_none());

    // A thread id over 256 bytes never halts (it could not be released
    // through /admin): its records go to the DLQ as id_too_long.
    let long = "L".repeat(300);
    produce(&p, &topic, &[good(&long, 1), good(&long, 9)]).await;
    bridge.wait_processed(10, Duration::from_secs(10)).await;

    let h = bridge.health().await;
    assert_eq!(h["status"], "degraded");
    assert_eq!(h["halted_threads"], 1, "a count: ids are for /admin only");
    assert_eq!(h["held_messages"], 3);
    assert!(h["alert"].as_str().is_some_and(|a| a.contains("halted")));
    let m = bridge.metrics().await;
    assert_eq!(m["dashstream_halted_threads"], 1.0);
    assert_eq!(m["dashstream_halted_messages_held"], 3.0);
    let (code, body) = admin(bridge.port, "GET", "/admin/threads/halted")
        .await
        .expect("http");
    assert_eq!(code, 200, "{body}");
    let listed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(listed["halted_threads"][0]["thread_id"], "a", "{body}");
    assert_eq!(listed["halted_threads"][0]["held_messages"], 3, "{body}");
    assert_eq!(
        listed["halted_threads"].as_array().unwrap().len(),
        1,
        "{body}"
    );
    assert_eq!(
        m["websocket_decode_errors_total{error_type=\"id_too_long\"}"], 2.0,
        "{m:?}"
    );

    let (code, _) = admin(bridge.port, "POST", "/admin/threads/zzz/resume")
        .await
        .expect("http");
    assert_eq!(code, 404, "resuming a thread that is not halted");
    let (code, body) = admin(bridge.port, "POST", "/admin/threads/a/resume")
        .await
        .expect("http");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"released\":3"), "{body}");
    let (frames, control) = collect(&mut ws, 3, Duration::from_secs(5)).await;
    let got: Vec<u64> = frames
        .iter()
        .filter_map(|f| match f {
            Frame::Data { json, .. } => json["sequence"].as_u64(),
            _ => None,
        })
        .collect();
    assert_eq!(got, vec![5, 6, 7], "held records released in order");
    assert!(
        control.iter().any(|c| c["type"] == "thread_resumed"),
        "{control:?}"
    );
    produce(&p, &topic, &[good("a", 8)]).await;
    let (frames, _) = collect(&mut ws, 1, Duration::from_secs(5)).await;
    assert!(
        matches!(&frames[..], [Frame::Data { json, .. }] if json["sequence"] == 8),
        "live delivery resumed"
    );
    let (frames, control) = collect(&mut mine, 9, Duration::from_secs(5)).await;
    assert_eq!(frames.len(), 9, "the tenant's client gets every record");
    for kind in ["thread_halted", "thread_resumed"] {
        assert!(
            control.iter().any(|c| c["type"] == kind),
            "{kind}: {control:?}"
        );
    }
    let (frames, control) = collect(&mut other, 1, Duration::from_millis(500)).await;
    assert!(frames.is_empty(), "{frames:?}");
    assert!(
        !control
            .iter()
            .any(|c| c["type"].as_str().is_some_and(|t| t.starts_with("thread_"))),
        "another tenant's client hears nothing of the halt: {control:?}"
    );
    assert_eq!(bridge.health().await["status"], "healthy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn halted_records_survive_a_restart_because_their_offsets_are_not_committed() {
    let topic = unique("haltrestart");
    create_topic(&topic, 1).await;
    let group = unique("grp");
    let mut bridge = Bridge::start_with_group(&topic, &group, &[("GAP_POLICY", "halt")]).await;
    produce(
        &producer(),
        &topic,
        &[good("a", 1), good("a", 3), good("b", 1), good("a", 4)],
    )
    .await;
    bridge.wait_processed(4, Duration::from_secs(10)).await;
    let (elapsed, status) = bridge.terminate();
    assert!(
        status.success() && elapsed < Duration::from_secs(5),
        "{elapsed:?} {status:?}"
    );

    // Restart with the default policy: the held records (offsets 1..=3) are
    // read again from Kafka; offset 0 (a/1), delivered before, is not.
    let bridge = Bridge::start_with_group(&topic, &group, &[]).await;
    bridge.wait_processed(3, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let h = bridge.health().await;
    assert_eq!(
        h["records_processed"], 3,
        "restart re-read exactly the held records: {h}"
    );
}

/// The late-records contract (docs/PROTOCOL.md, Late records): a held record
/// reaches nobody before its release, not even a replay that reads it back
/// from Kafka; a client that was away at the release gets it after its
/// replay when it resumes with its notice cursor; afterwards a replay returns
/// it in offset order, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn released_records_reach_a_client_that_was_away_and_held_ones_no_replay() {
    let topic = unique("halted-away");
    create_topic(&topic, 1).await;
    // A small memory log: replays of the early offsets read Kafka.
    let bridge = Bridge::start(
        &topic,
        &[
            ("GAP_POLICY", "halt"),
            ("REPLAY_MEMORY_MAX_PER_PARTITION", "5"),
        ],
    )
    .await;
    let (mut ws, _) = connect(&bridge.ws_url("?format=json")).await;
    let p = producer();
    // a: 1 2 [gap] 5 6 7 (held from 5 on); b: 1..=12 flows throughout.
    let mut recs = vec![
        good("a", 1),
        good("b", 1),
        good("a", 2),
        good("a", 5),
        good("a", 6),
        good("a", 7),
    ];
    recs.extend((2..=12).map(|s| good("b", s)));
    produce(&p, &topic, &recs).await;
    let (frames, control) = collect(&mut ws, 14, Duration::from_secs(10)).await;
    assert_eq!(frames.len(), 14, "{control:?}");
    let last_offset = match frames.last() {
        Some(Frame::Data { offset, .. }) => *offset,
        other => panic!("{other:?}"),
    };
    assert_eq!(last_offset, 16);
    let halted = control
        .iter()
        .find(|c| c["type"] == "thread_halted")
        .unwrap_or_else(|| panic!("{control:?}"));
    let cursor = halted["notices"]
        .as_str()
        .expect("a notice cursor")
        .to_string();
    drop(ws);

    // A replay from the start while the thread is halted: Kafka holds a 5..7,
    // but they are held: not one of them.
    let (mut early, _) = connect(&bridge.ws_url("?format=json&resume=earliest")).await;
    let (frames, _) = collect(&mut early, 14, Duration::from_secs(10)).await;
    assert!(
        !sequences(&frames).iter().any(|(t, s)| t == "a" && *s >= 5),
        "{:?}",
        sequences(&frames)
    );
    drop(early);

    let (code, body) = admin(bridge.port, "POST", "/admin/threads/a/resume")
        .await
        .expect("http");
    assert_eq!(code, 200, "{body}");

    // Away at the release, back with its offsets and notice cursor: the
    // released records come after the replay, announced.
    let q = format!("?format=json&resume=cursor&last_offsets=0:{last_offset}&notices={cursor}");
    let (mut back, _) = connect(&bridge.ws_url(&q)).await;
    let (frames, control) = collect(&mut back, 3, Duration::from_secs(10)).await;
    assert_eq!(
        sequences(&frames),
        vec![("a".into(), 5), ("a".into(), 6), ("a".into(), 7)],
        "{control:?}"
    );
    let kinds: Vec<&str> = control.iter().filter_map(|c| c["type"].as_str()).collect();
    assert_eq!(kinds, ["replay_complete", "thread_resumed"], "{control:?}");
    assert_eq!(control[1]["released"], 3);
    assert_eq!(
        control[0]["notices"],
        cursor.as_str(),
        "the session went on from the client's cursor"
    );
    // Without its notice cursor, a client resumes past them (documented).
    let q = format!("?format=json&resume=cursor&last_offsets=0:{last_offset}");
    let (mut forgetful, _) = connect(&bridge.ws_url(&q)).await;
    let (frames, _) = collect(&mut forgetful, 1, Duration::from_millis(1500)).await;
    assert!(frames.is_empty(), "{frames:?}");

    // Released records are history now: a replay from the start returns every
    // record once, in offset order.
    let (mut later, _) = connect(&bridge.ws_url("?format=json&resume=earliest")).await;
    let (frames, control) = collect(&mut later, 17, Duration::from_secs(10)).await;
    let offsets: Vec<i64> = frames
        .iter()
        .filter_map(|f| match f {
            Frame::Data { offset, .. } => Some(*offset),
            _ => None,
        })
        .collect();
    assert_eq!(offsets, (0..17).collect::<Vec<_>>(), "{control:?}");
}

/// With Redis, a halt outlives the process that found the gap: the instance
/// that reads the partition next holds the thread's records again (none
/// reaches a client, live or replaying), lists the halt, and its release
/// delivers them and removes the halt from Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_redis_a_halt_survives_a_restart_until_it_is_released() {
    let redis = std::env::var("KWB_TEST_REDIS_URL")
        .expect("KWB_TEST_REDIS_URL is not set: run with scripts/test.sh");
    let topic = unique("halt-kept");
    create_topic(&topic, 1).await;
    let group = unique("grp");
    let env = [("GAP_POLICY", "halt"), ("REDIS_URL", redis.as_str())];
    let mut first = Bridge::start_with_group(&topic, &group, &env).await;
    // a: 1 2 [gap] 5 6 (held from offset 2 on); b flows.
    let recs = [
        good("a", 1),
        good("a", 2),
        good("a", 5),
        good("a", 6),
        good("b", 1),
        good("b", 2),
    ];
    produce(&producer(), &topic, &recs).await;
    first.wait_processed(6, Duration::from_secs(10)).await;
    assert_eq!(first.health().await["halted_threads"], 1);
    let (_, status) = first.terminate();
    assert!(status.success(), "{status:?}");

    let second = Bridge::start_with_group(&topic, &group, &env).await;
    // The commit point stayed at the first held record: offsets 2..=5 again.
    second.wait_processed(4, Duration::from_secs(20)).await;
    let (code, body) = admin(second.port, "GET", "/admin/threads/halted")
        .await
        .expect("http");
    assert_eq!(code, 200, "{body}");
    let listed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(listed["halted_threads"][0]["thread_id"], "a", "{body}");
    assert_eq!(listed["halted_threads"][0]["held_messages"], 2, "{body}");
    // A client replaying everything gets a/1, a/2 and b, never a/5 or a/6.
    let (mut ws, _) = connect(&second.ws_url("?format=json&resume=earliest")).await;
    let (frames, control) = collect(&mut ws, 4, Duration::from_secs(10)).await;
    assert_eq!(
        sequences(&frames),
        vec![
            ("a".into(), 1),
            ("a".into(), 2),
            ("b".into(), 1),
            ("b".into(), 2)
        ],
        "{control:?}"
    );
    while let Some(f) = next_frame(&mut ws, Duration::from_millis(800)).await {
        assert!(!matches!(f, Frame::Data { .. }), "held: {f:?}");
    }

    let (code, body) = admin(second.port, "POST", "/admin/threads/a/resume")
        .await
        .expect("http");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"released\":2"), "{body}");
    let (frames, _) = collect(&mut ws, 2, Duration::from_secs(5)).await;
    assert_eq!(sequences(&frames), vec![("a".into(), 5), ("a".into(), 6)]);
    // Released: gone from Redis too.
    let (_, version) = http(second.port, "GET", "/version").await.expect("http");
    let ns = serde_json::from_str::<serde_json::Value>(&version).unwrap()["resume_namespace"]
        .as_str()
        .unwrap()
        .to_string();
    let key = format!("dashstream-replay:{ns}:halted");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let out = std::process::Command::new("redis-cli")
            .args(["-u", &redis, "HLEN", &key])
            .output()
            .expect("redis-cli");
        if String::from_utf8_lossy(&out.stdout).trim() == "0" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the halt stayed in Redis"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// With Redis, a halt moves with its partition: when the instance that
/// halted the thread leaves the group, the instance assigned the partition
/// restores the halt from Redis and holds the re-read records.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_redis_a_halt_moves_with_its_partition_on_rebalance() {
    let redis = std::env::var("KWB_TEST_REDIS_URL")
        .expect("KWB_TEST_REDIS_URL is not set: run with scripts/test.sh");
    let topic = unique("halt-moves");
    create_topic(&topic, 1).await;
    let group = unique("grp");
    let env = [("GAP_POLICY", "halt"), ("REDIS_URL", redis.as_str())];
    // Two instances in one group, one partition: one of them reads it (the
    // other is never ready: it has nothing assigned).
    let mut a = Bridge::spawn(&topic, &group, &env);
    let mut b = Bridge::spawn(&topic, &group, &env);
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    let (owner, other) = loop {
        if assigned(&a).await == Some(1.0) && assigned(&b).await == Some(0.0) {
            break (&mut a, &mut b);
        }
        if assigned(&b).await == Some(1.0) && assigned(&a).await == Some(0.0) {
            break (&mut b, &mut a);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the partition was not assigned to one of the two"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Settled: the group's membership no longer changes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(assigned(owner).await, Some(1.0));
    let recs = [good("a", 1), good("a", 4), good("a", 5), good("b", 1)];
    produce(&producer(), &topic, &recs).await;
    owner.wait_processed(4, Duration::from_secs(10)).await;
    assert_eq!(owner.health().await["halted_threads"], 1);
    let (_, status) = owner.terminate();
    assert!(status.success(), "{status:?}");
    // The other instance is assigned the partition and reads on from the
    // committed offset (the first held record): the halt comes with it.
    other.wait_processed(3, Duration::from_secs(30)).await;
    let (code, body) = admin(other.port, "GET", "/admin/threads/halted")
        .await
        .expect("http");
    assert_eq!(code, 200, "{body}");
    let listed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(listed["halted_threads"][0]["thread_id"], "a", "{body}");
    assert_eq!(listed["halted_threads"][0]["held_messages"], 2, "{body}");
    let (code, body) = admin(other.port, "POST", "/admin/threads/a/resume")
        .await
        .expect("http");
    assert_eq!(code, 200, "{body}");
}

/// Partitions a bridge reads now (`None` while it does not answer).
async fn assigned(b: &Bridge) -> Option<f64> {
    match http(b.port, "GET", "/metrics").await {
        Ok((200, body)) => kwb_testkit::prom::parse(&body)
            .get("websocket_kafka_assigned_partitions")
            .copied(),
        _ => None,
    }
}
