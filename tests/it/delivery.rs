//! Delivery over a real broker to real WebSocket clients: completeness,
//! order, cursors, both formats, and server-side filters.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use crate::common::*;
use kafka_ws_bridge::{Generator, SynthConfig};

fn seq_of(json: &serde_json::Value) -> (String, u64) {
    (
        json["thread_id"].as_str().expect("thread_id").to_string(),
        json["sequence"].as_u64().expect("sequence"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_records_over_three_partitions_reach_binary_and_json_clients_complete_and_in_order(
) {
    let topic = unique("deliver");
    create_topic(&topic, 3).await;
    let bridge = Bridge::start(&topic, &[]).await;
    let (mut bin, hello) = connect(&bridge.ws_url("")).await;
    assert_eq!(hello["format"], "binary");
    assert_eq!(hello["topic"], topic.as_str());
    assert!(hello["resume_namespace"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
    let (mut json, hello) = connect(&bridge.ws_url("?format=json")).await;
    assert_eq!(hello["format"], "json");

    let records: Vec<_> = Generator::new(SynthConfig {
        threads: 50,
        ..Default::default()
    })
    .take(10_000)
    .map(|r| (Some(r.key), r.value, r.thread_id, r.sequence))
    .collect();
    let to_send: Vec<_> = records
        .iter()
        .map(|(k, v, _, _)| (k.clone(), v.clone()))
        .collect();
    let cursors = produce(&producer(), &topic, &to_send).await;
    // Where each (thread, sequence) landed, according to the broker.
    let expected: HashMap<(String, u64), (i32, i64)> = records
        .iter()
        .zip(&cursors)
        .map(|((_, _, t, s), c)| ((t.clone(), *s), *c))
        .collect();
    assert_eq!(
        cursors.iter().map(|c| c.0).collect::<HashSet<_>>().len(),
        3,
        "records spread over 3 partitions"
    );

    for (name, ws) in [("binary", &mut bin), ("json", &mut json)] {
        let (frames, _) = collect(ws, 10_000, Duration::from_secs(20)).await;
        assert_eq!(frames.len(), 10_000, "{name} client got every record");
        let mut last_offset: BTreeMap<i32, i64> = BTreeMap::new();
        let mut last_seq: HashMap<String, u64> = HashMap::new();
        let mut seen = HashSet::new();
        for f in &frames {
            let Frame::Data {
                partition,
                offset,
                json,
            } = f
            else {
                unreachable!()
            };
            let key = seq_of(json);
            assert_eq!(
                expected.get(&key),
                Some(&(*partition, *offset)),
                "{name}: cursor of {key:?} matches the broker's"
            );
            if let Some(prev) = last_offset.insert(*partition, *offset) {
                assert!(
                    *offset > prev,
                    "{name}: partition {partition} in offset order ({prev} then {offset})"
                );
            }
            let prev = last_seq.insert(key.0.clone(), key.1).unwrap_or(0);
            assert_eq!(
                key.1,
                prev + 1,
                "{name}: thread {} in sequence order",
                key.0
            );
            assert!(seen.insert((*partition, *offset)), "{name}: no duplicate");
            assert_eq!(
                json["data"]["header"]["threadId"],
                key.0.as_str(),
                "{name}: data is the decoded message"
            );
        }
    }
    let m = bridge.metrics().await;
    assert_eq!(
        m["websocket_kafka_messages_total{status=\"success\"}"],
        10_000.0
    );
    assert_eq!(
        m["websocket_dropped_messages_total{reason=\"lagged_receiver\"}"],
        0.0
    );
    assert!(
        m["websocket_e2e_latency_ms_count"] >= 10_000.0,
        "e2e latency is a histogram with one sample per record"
    );
    assert!(m.contains_key("websocket_e2e_latency_ms_bucket{le=\"1\"}"));
    assert!(m.contains_key("websocket_e2e_latency_ms_bucket{le=\"60000\"}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn filters_select_threads_tenant_and_types_and_bad_filters_get_400() {
    let topic = unique("filters");
    create_topic(&topic, 2).await;
    let bridge = Bridge::start(&topic, &[]).await;
    let (mut by_thread, hello) =
        connect(&bridge.ws_url("?format=json&threads=thread-1,thread-2")).await;
    assert_eq!(
        hello["filters"]["threads"],
        serde_json::json!(["thread-1", "thread-2"])
    );
    let (mut by_tenant, _) = connect(&bridge.ws_url("?format=json&tenant=tenant-0")).await;
    let (mut by_type, _) = connect(&bridge.ws_url("?types=error,token_chunk")).await;

    let recs: Vec<_> = Generator::new(SynthConfig {
        threads: 6,
        tenants: 3,
        ..Default::default()
    })
    .take(600)
    .collect();
    let decoded: Vec<_> = recs
        .iter()
        .map(|r| kafka_ws_bridge::decode(Some(&r.value), &Default::default()).expect("decodes"))
        .collect();
    let want_thread = decoded
        .iter()
        .filter(|d| ["thread-1", "thread-2"].contains(&d.thread_id()))
        .count();
    let want_tenant = decoded
        .iter()
        .filter(|d| d.tenant_id() == "tenant-0")
        .count();
    let want_type = decoded
        .iter()
        .filter(|d| ["error", "token_chunk"].contains(&d.kind().as_str()))
        .count();
    assert!(want_thread > 0 && want_tenant > 0 && want_type > 0);
    produce(
        &producer(),
        &topic,
        &recs
            .iter()
            .map(|r| (Some(r.key.clone()), r.value.clone()))
            .collect::<Vec<_>>(),
    )
    .await;

    let (f, _) = collect(&mut by_thread, usize::MAX, Duration::from_secs(3)).await;
    assert_eq!(f.len(), want_thread);
    assert!(f.iter().all(|f| matches!(f, Frame::Data { json, .. } if json["thread_id"] == "thread-1" || json["thread_id"] == "thread-2")));
    let (f, _) = collect(&mut by_tenant, usize::MAX, Duration::from_secs(1)).await;
    assert_eq!(f.len(), want_tenant);
    assert!(f
        .iter()
        .all(|f| matches!(f, Frame::Data { json, .. } if json["tenant_id"] == "tenant-0")));
    let (f, _) = collect(&mut by_type, usize::MAX, Duration::from_secs(1)).await;
    assert_eq!(f.len(), want_type);
    assert!(f.iter().all(|f| matches!(f, Frame::Data { json, .. } if json["message_type"] == "error" || json["message_type"] == "token_chunk")));

    for (query, code) in [
        ("?types=event,nonsense", "invalid_filter"),
        ("?format=xml", "invalid_format"),
        ("?threads=,,,", "invalid_filter"),
    ] {
        let (status, body) = http(bridge.port, "GET", &format!("/ws{query}"))
            .await
            .expect("http");
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.contains(code), "{query}: {body}");
    }
    let many = (0..300)
        .map(|i| format!("t{i}"))
        .collect::<Vec<_>>()
        .join(",");
    let (status, body) = http(bridge.port, "GET", &format!("/ws?threads={many}"))
        .await
        .expect("http");
    assert_eq!(status, 400, "too many thread values: {body}");
    let (status, body) = http(bridge.port, "GET", "/ws?format=json")
        .await
        .expect("http");
    assert_eq!(status, 426, "valid query without an upgrade: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_messages_are_answered_and_garbage_gets_an_error_frame() {
    let topic = unique("control");
    create_topic(&topic, 1).await;
    let bridge = Bridge::start(&topic, &[]).await;
    let (mut ws, _) = connect(&bridge.ws_url("?format=json")).await;
    send_text(&mut ws, r#"{"type":"ping"}"#).await;
    let Some(Frame::Control(c)) = next_frame(&mut ws, Duration::from_secs(5)).await else {
        panic!("pong expected")
    };
    assert_eq!(c["type"], "pong");
    send_text(&mut ws, "not json \u{1F600}").await;
    let Some(Frame::Control(c)) = next_frame(&mut ws, Duration::from_secs(5)).await else {
        panic!("error expected")
    };
    assert_eq!(c["type"], "error");
    assert_eq!(c["code"], "invalid_message");
    // A message over the incoming size limit closes the connection, and the server stays up.
    send_text(&mut ws, &"x".repeat(200_000)).await;
    match next_frame(&mut ws, Duration::from_secs(5)).await {
        Some(Frame::Closed { code, reason }) => {
            assert_eq!(code, 1009, "message too big");
            assert_eq!(reason, "message too big");
        }
        other => panic!("expected close 1009, got {other:?}"),
    }
    let (_ws2, _) = connect(&bridge.ws_url("")).await;
    assert_eq!(bridge.health().await["status"], "healthy");
}
