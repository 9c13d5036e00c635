//! Replay and resume against a real broker, real Redis and real WebSocket
//! clients: a client that reconnects receives every record exactly once in
//! per-partition order, or is told exactly what it missed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use kafka_ws_bridge::{Generator, SynthConfig};
use rand::Rng;

/// A Redis server owned by one test (so it can be stopped mid-stream).
struct OwnRedis {
    child: Child,
    port: u16,
}

impl OwnRedis {
    async fn start() -> OwnRedis {
        let bin = std::env::var("KWB_REDIS_SERVER_BIN")
            .expect("KWB_REDIS_SERVER_BIN (set by scripts/services.sh)");
        let port = free_port();
        let child = Command::new(bin)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        OwnRedis { child, port }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .arg("-p")
            .arg(self.port.to_string())
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).to_string()
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a dashboard keeps: cursors, and every record it applied.
#[derive(Default)]
struct Dashboard {
    last: BTreeMap<i32, i64>,
    seen: HashSet<(i32, i64)>,
    seq: HashMap<String, u64>,
    applied: usize,
    gaps: Vec<serde_json::Value>,
    completes: Vec<serde_json::Value>,
}

impl Dashboard {
    /// Applies one frame, asserting exactly-once and order.
    fn apply(&mut self, f: Frame) {
        match f {
            Frame::Data {
                partition,
                offset,
                json,
            } => {
                assert!(
                    self.seen.insert((partition, offset)),
                    "duplicate {partition}:{offset}"
                );
                if let Some(prev) = self.last.insert(partition, offset) {
                    assert!(
                        offset > prev,
                        "partition {partition}: {offset} after {prev}"
                    );
                }
                let thread = json["thread_id"].as_str().expect("thread").to_string();
                let seq = json["sequence"].as_u64().expect("seq");
                let prev = self.seq.insert(thread.clone(), seq).unwrap_or(0);
                assert_eq!(
                    seq,
                    prev + 1,
                    "thread {thread}: sequence {seq} after {prev}"
                );
                self.applied += 1;
            }
            Frame::Control(c) if c["type"] == "gap" => self.gaps.push(c),
            Frame::Control(c) if c["type"] == "replay_complete" => self.completes.push(c),
            Frame::Control(c) if c["type"] == "lagged" => {
                panic!("the test client fell behind and lost frames: {c}")
            }
            Frame::Control(_) => {}
            Frame::Closed { .. } => {}
        }
    }

    fn cursor_query(&self) -> String {
        let list: Vec<String> = self.last.iter().map(|(p, o)| format!("{p}:{o}")).collect();
        format!("?format=json&resume=cursor&last_offsets={}", list.join(","))
    }

    /// Reads until `total` records are applied.
    async fn read_until(&mut self, ws: &mut Ws, total: usize, idle: Duration) {
        while self.applied < total {
            match next_frame(ws, idle).await {
                Some(f) => self.apply(f),
                None => panic!(
                    "stream stalled at {} of {total}; gaps {:?}",
                    self.applied, self.gaps
                ),
            }
        }
    }
}

fn records(n: usize, threads: usize) -> Vec<(Option<String>, Vec<u8>)> {
    Generator::new(SynthConfig {
        threads,
        ..Default::default()
    })
    .take(n)
    .map(|r| (Some(r.key), r.value))
    .collect()
}

/// Produces in chunks in the background, so the stream is live while clients come and go.
fn stream_in_background(
    topic: String,
    recs: Vec<(Option<String>, Vec<u8>)>,
    chunk: usize,
    pause: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let p = producer();
        for c in recs.chunks(chunk) {
            produce(&p, &topic, c).await;
            tokio::time::sleep(pause).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_disconnects_mid_stream_resumes_with_every_record_exactly_once() {
    let redis = OwnRedis::start().await;
    let topic = unique("resume");
    create_topic(&topic, 3).await;
    let url = redis.url();
    let bridge = Bridge::start(
        &topic,
        &[
            ("REDIS_URL", &url),
            ("REPLAY_MEMORY_MAX_PER_PARTITION", "300"),
            ("WEBSOCKET_CLIENT_QUEUE_FRAMES", "50000"),
        ],
    )
    .await;
    let total = 20_000;
    let (mut ws, _) = connect(&bridge.ws_url("?format=json&resume=latest")).await;
    let producer_task = stream_in_background(
        topic.clone(),
        records(total, 40),
        1000,
        Duration::from_millis(150),
    );
    let cut = rand::rng().random_range(2_000..15_000);
    let mut d = Dashboard::default();
    d.read_until(&mut ws, cut, Duration::from_secs(15)).await;
    drop(ws);
    // Away long enough for the memory window (300 per partition) to move past the cursor.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (mut ws, _) = connect(&bridge.ws_url(&d.cursor_query())).await;
    d.read_until(&mut ws, total, Duration::from_secs(20)).await;
    producer_task.await.expect("producer");
    assert!(d.gaps.is_empty(), "{:?}", d.gaps);
    assert_eq!(d.seen.len(), total, "cut at {cut}");
    // One replay_complete per connection (resume=latest gives an empty one); the
    // second may follow the last record when the whole rest was replayed.
    if d.completes.len() < 2 {
        let f = next_frame(&mut ws, Duration::from_secs(5))
            .await
            .expect("replay_complete");
        d.apply(f);
    }
    assert_eq!(d.completes.len(), 2, "{:?}", d.completes);
    assert_eq!(d.completes[1]["recovered"], true);
    assert_eq!(d.completes[1]["gaps"], 0);
    let m = bridge.metrics().await;
    assert!(m["replay_buffer_redis_hits_total"] + m["replay_buffer_memory_hits_total"] > 0.0);
    // Nothing more arrives: no duplicates after the end.
    let extra = next_frame(&mut ws, Duration::from_millis(500)).await;
    assert!(extra.is_none(), "unexpected frame after the end: {extra:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resume_survives_a_sigkilled_bridge_and_works_on_a_second_instance() {
    let redis = OwnRedis::start().await;
    let topic = unique("kill");
    create_topic(&topic, 3).await;
    let url = redis.url();
    let group = unique("grp");
    let env = [
        ("REDIS_URL", url.as_str()),
        ("REPLAY_MEMORY_MAX_PER_PARTITION", "200"),
        ("WEBSOCKET_CLIENT_QUEUE_FRAMES", "50000"),
    ];
    let mut first = Bridge::start_with_group(&topic, &group, &env).await;
    let total = 9_000;
    let recs = records(total, 30);
    let (mut ws, _) = connect(&first.ws_url("?format=json&resume=latest")).await;
    let p = producer();
    produce(&p, &topic, &recs[..3000]).await;
    let mut d = Dashboard::default();
    d.read_until(&mut ws, 2000, Duration::from_secs(15)).await;
    // Let the Redis writer catch up, then kill the bridge without any shutdown.
    tokio::time::sleep(Duration::from_millis(700)).await;
    first.signal("KILL");
    let _ = first.proc.child.wait();
    drop(ws);
    produce(&p, &topic, &recs[3000..6000]).await;

    // The same bridge restarted (same group): resumes from Redis and re-reads Kafka from its commit.
    let second = Bridge::start_with_group(&topic, &group, &env).await;
    let (mut ws, _) = connect(&second.ws_url(&d.cursor_query())).await;
    d.read_until(&mut ws, 6000, Duration::from_secs(20)).await;
    assert!(d.gaps.is_empty(), "{:?}", d.gaps);
    d.read_until(&mut ws, 6000, Duration::from_secs(1)).await;
    drop(ws);

    // A second instance (its own group, so it sees every partition) serves the same client.
    let other = Bridge::start(&topic, &env).await;
    produce(&p, &topic, &recs[6000..]).await;
    let (mut ws, hello) = connect(&other.ws_url(&d.cursor_query())).await;
    let (_, hello_second) = connect(&second.ws_url("?resume=latest")).await;
    assert_eq!(
        hello["resume_namespace"], hello_second["resume_namespace"],
        "instances share the namespace"
    );
    d.read_until(&mut ws, total, Duration::from_secs(20)).await;
    assert!(d.gaps.is_empty(), "{:?}", d.gaps);
    assert_eq!(d.seen.len(), total);
    assert!(
        next_frame(&mut ws, Duration::from_millis(500))
            .await
            .is_none(),
        "no duplicate after the end"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_outage_keeps_live_delivery_and_replay_falls_back_to_memory_and_kafka() {
    let mut redis = OwnRedis::start().await;
    let topic = unique("redisdown");
    create_topic(&topic, 1).await;
    let url = redis.url();
    let bridge = Bridge::start(
        &topic,
        &[
            ("REDIS_URL", &url),
            ("REPLAY_MEMORY_MAX_PER_PARTITION", "500"),
            ("WEBSOCKET_CLIENT_QUEUE_FRAMES", "50000"),
        ],
    )
    .await;
    let (mut live, _) = connect(&bridge.ws_url("?format=json&resume=latest")).await;
    let recs = records(3000, 5);
    let p = producer();
    produce(&p, &topic, &recs[..1000]).await;
    let mut d = Dashboard::default();
    d.read_until(&mut live, 1000, Duration::from_secs(10)).await;
    redis.stop();
    produce(&p, &topic, &recs[1000..]).await;
    d.read_until(&mut live, 3000, Duration::from_secs(10)).await;
    let m = bridge.metrics().await;
    assert!(
        m["replay_buffer_redis_write_failures_total"] > 0.0,
        "failed writes counted"
    );
    assert_eq!(bridge.health().await["replay_redis"], "degraded");

    // Inside the memory window (last 500): served from memory.
    let mut recent = Dashboard::default();
    let (mut ws, _) =
        connect(&bridge.ws_url("?format=json&resume=cursor&last_offsets=0:2600")).await;
    for s in 0..5 {
        recent.seq.insert(format!("thread-{s}"), 0);
    }
    let (frames, control) = collect(&mut ws, 399, Duration::from_secs(10)).await;
    assert_eq!(frames.len(), 399, "{control:?}");
    assert!(matches!(&frames[0], Frame::Data { offset: 2601, .. }));
    // Beyond it, with Redis down: read back from Kafka.
    let before = bridge.metrics().await["replay_buffer_kafka_hits_total"];
    let (mut ws, _) = connect(&bridge.ws_url("?format=json&resume=cursor&last_offsets=0:99")).await;
    let (frames, control) = collect(&mut ws, 2900, Duration::from_secs(15)).await;
    assert_eq!(frames.len(), 2900, "{control:?}");
    let offsets: Vec<i64> = frames
        .iter()
        .map(|f| match f {
            Frame::Data { offset, .. } => *offset,
            _ => -1,
        })
        .collect();
    assert_eq!(offsets, (100..3000).collect::<Vec<i64>>());
    assert!(bridge.metrics().await["replay_buffer_kafka_hits_total"] - before >= 2400.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_the_kafka_tier_a_redis_outage_or_a_stale_cursor_is_reported_not_hidden() {
    let topic = unique("stale");
    create_topic(&topic, 1).await;
    // Memory only (no Redis), no Kafka tier: history is the last 100 records.
    let bridge = Bridge::start(
        &topic,
        &[
            ("REPLAY_MEMORY_MAX_PER_PARTITION", "100"),
            ("REPLAY_KAFKA", "false"),
        ],
    )
    .await;
    produce(&producer(), &topic, &records(1000, 4)).await;
    bridge.wait_processed(1000, Duration::from_secs(10)).await;
    let (mut ws, _) = connect(&bridge.ws_url("?format=json&resume=cursor&last_offsets=0:10")).await;
    let (frames, control) = collect(&mut ws, 100, Duration::from_secs(5)).await;
    let gap = control
        .iter()
        .find(|c| c["type"] == "gap")
        .expect("gap frame");
    assert_eq!(
        (
            gap["partition"].as_i64(),
            gap["from"].as_i64(),
            gap["to"].as_i64()
        ),
        (Some(0), Some(11), Some(899)),
        "{gap}"
    );
    assert_eq!(gap["reason"], "not_in_replay_buffer");
    assert_eq!(frames.len(), 100, "the 100 records memory still holds");
    let done = match next_frame(&mut ws, Duration::from_secs(5)).await {
        Some(Frame::Control(c)) => c,
        other => panic!("replay_complete expected, got {other:?}"),
    };
    assert_eq!(done["type"], "replay_complete");
    assert_eq!(done["recovered"], false);
    assert_eq!(done["reason"], "cursor_stale");
    assert_eq!(done["replayed"], 100);
    assert!(bridge.metrics().await["replay_buffer_misses_total"] >= 889.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hole_in_the_middle_of_redis_history_is_reported_with_its_exact_range() {
    let redis = OwnRedis::start().await;
    let topic = unique("hole");
    create_topic(&topic, 1).await;
    let url = redis.url();
    let bridge = Bridge::start(
        &topic,
        &[
            ("REDIS_URL", &url),
            ("REPLAY_MEMORY_MAX_PER_PARTITION", "50"),
            ("REPLAY_KAFKA", "false"),
        ],
    )
    .await;
    produce(&producer(), &topic, &records(600, 3)).await;
    bridge.wait_processed(600, Duration::from_secs(10)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while bridge.metrics().await["replay_buffer_redis_writes_total"] < 600.0 {
        assert!(Instant::now() < deadline, "redis writer did not catch up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, body) = http(bridge.port, "GET", "/version").await.expect("version");
    let ns = serde_json::from_str::<serde_json::Value>(&body).expect("json")["resume_namespace"]
        .as_str()
        .expect("ns")
        .to_string();
    // Remove offsets 200..=299 from Redis, as an expiry or lost write would.
    let zset = format!("dashstream-replay:{ns}:partition:0:offsets");
    let removed = redis.cli(&["ZREMRANGEBYSCORE", &zset, "200", "299"]);
    assert_eq!(
        removed.trim(),
        "100",
        "the key layout is the documented one"
    );
    let (mut ws, _) =
        connect(&bridge.ws_url("?format=json&resume=cursor&last_offsets=0:149")).await;
    let (frames, control) = collect(&mut ws, 600 - 150 - 100, Duration::from_secs(10)).await;
    let gaps: Vec<_> = control.iter().filter(|c| c["type"] == "gap").collect();
    assert_eq!(gaps.len(), 1, "{control:?}");
    assert_eq!(
        (gaps[0]["from"].as_i64(), gaps[0]["to"].as_i64()),
        (Some(200), Some(299))
    );
    let offsets: Vec<i64> = frames
        .iter()
        .map(|f| match f {
            Frame::Data { offset, .. } => *offset,
            _ => -1,
        })
        .collect();
    assert_eq!(offsets, (150..200).chain(300..600).collect::<Vec<i64>>());
    let done = match next_frame(&mut ws, Duration::from_secs(5)).await {
        Some(Frame::Control(c)) => c,
        other => panic!("replay_complete expected, got {other:?}"),
    };
    assert_eq!(
        (done["recovered"].as_bool(), done["reason"].as_str()),
        (Some(false), Some("gaps"))
    );
    assert!(bridge.metrics().await["replay_buffer_redis_hits_total"] >= 50.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn earliest_covers_unseen_partitions_filters_apply_and_resume_can_be_a_message() {
    let topic = unique("earliest");
    create_topic(&topic, 3).await;
    let bridge = Bridge::start(&topic, &[]).await;
    let recs = records(900, 9);
    let cursors = produce(&producer(), &topic, &recs).await;
    bridge.wait_processed(900, Duration::from_secs(10)).await;
    let (mut ws, _) = connect(&bridge.ws_url("?format=json&resume=earliest")).await;
    let (frames, _) = collect(&mut ws, 900, Duration::from_secs(10)).await;
    let parts: HashSet<i32> = frames
        .iter()
        .map(|f| match f {
            Frame::Data { partition, .. } => *partition,
            _ => -1,
        })
        .collect();
    assert_eq!(frames.len(), 900);
    assert_eq!(
        parts,
        cursors.iter().map(|c| c.0).collect(),
        "every partition, none seen before"
    );

    // Resume as the first message, with a thread filter: only that thread is replayed.
    let (mut ws, _) = connect(&bridge.ws_url("?format=json&threads=thread-3")).await;
    send_text(&mut ws, r#"{"type":"resume","from":"earliest"}"#).await;
    let want = recs
        .iter()
        .filter(|r| r.0.as_deref() == Some("thread-3"))
        .count();
    let (frames, control) = collect(&mut ws, want, Duration::from_secs(10)).await;
    assert_eq!(frames.len(), want);
    assert!(frames
        .iter()
        .all(|f| matches!(f, Frame::Data { json, .. } if json["thread_id"] == "thread-3")));
    let done = match next_frame(&mut ws, Duration::from_secs(5)).await {
        Some(Frame::Control(c)) => c,
        other => panic!("replay_complete expected, got {other:?} after {control:?}"),
    };
    assert_eq!(
        (done["replayed"].as_u64(), done["recovered"].as_bool()),
        (Some(want as u64), Some(true))
    );
    // A resume after live delivery started is refused; bad parameters get a 400.
    send_text(&mut ws, r#"{"type":"resume","from":"earliest"}"#).await;
    let Some(Frame::Control(c)) = next_frame(&mut ws, Duration::from_secs(5)).await else {
        panic!("error expected")
    };
    assert_eq!(c["code"], "late_resume");
    let (code, body) = http(bridge.port, "GET", "/ws?resume=cursor&last_offsets=0:x")
        .await
        .expect("http");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("invalid_resume"));
}

/// Waits until the bridge's metric `name` equals `want`.
async fn wait_gauge(bridge: &Bridge, name: &str, want: f64) {
    wait_metric(bridge, |m| m.get(name) == Some(&want), name).await;
}

/// With one replay slot, a client that stopped reading in the middle of its
/// replay (from Redis and Kafka: the memory log holds only the last 500)
/// holds no slot while it does not read: another client's replay runs to
/// the end meanwhile, and the stalled one is still replaying.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replayer_that_stopped_reading_does_not_hold_up_the_others() {
    let topic = unique("replaybound");
    create_topic(&topic, 1).await;
    let redis = OwnRedis::start().await;
    let bridge = Bridge::start(
        &topic,
        &[
            ("REPLAY_MAX_CONCURRENT", "1"),
            ("REPLAY_MEMORY_MAX_PER_PARTITION", "500"),
            ("WEBSOCKET_SEND_BUFFER_BYTES", "65536"),
            ("REDIS_URL", &redis.url()),
        ],
    )
    .await;
    produce(&producer(), &topic, &records(5_000, 4)).await;
    bridge.wait_processed(5_000, Duration::from_secs(10)).await;
    // A replays but never reads, with a small receive buffer: its replay
    // stops at its full socket.
    let _stalled =
        kwb_testkit::ws::connect_with_recv_buffer(&bridge.ws_url("?resume=earliest"), 4096)
            .await
            .expect("connect");
    wait_gauge(&bridge, "replay_sessions_active", 1.0).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // B's replay runs to the end while A is stalled in its own.
    let (mut ws, _) = connect(&bridge.ws_url("?format=json&resume=earliest")).await;
    let (frames, control) = collect(&mut ws, 5_000, Duration::from_secs(8)).await;
    let offsets: Vec<i64> = frames
        .iter()
        .map(|f| match f {
            Frame::Data { offset, .. } => *offset,
            _ => -1,
        })
        .collect();
    assert_eq!(offsets, (0..5_000).collect::<Vec<i64>>(), "{control:?}");
    assert!(
        control.iter().all(|c| c["type"] == "replay_queued"),
        "{control:?}"
    );
    match next_frame(&mut ws, Duration::from_secs(5)).await {
        Some(Frame::Control(c)) => assert_eq!(
            (c["type"].as_str(), c["recovered"].as_bool()),
            (Some("replay_complete"), Some(true))
        ),
        other => panic!("replay_complete expected, got {other:?}"),
    }
    let m = bridge.metrics().await;
    assert_eq!(
        m.get("replay_sessions_active"),
        Some(&1.0),
        "A is still replaying"
    );
    assert_eq!(m.get("replay_sessions_waiting"), Some(&0.0));
}

/// A resume that filters out everything (`tenant=nobody`) reads no record
/// it does not need to decode, and stops at `REPLAY_MAX_RECORDS`: the rest
/// is an exact `replay_budget` gap, the replay is complete with that
/// reason, and live delivery goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resume_that_sends_nothing_stops_at_its_budget_with_a_gap() {
    let topic = unique("replaybudget");
    create_topic(&topic, 1).await;
    let bridge = Bridge::start(
        &topic,
        &[
            ("REPLAY_MAX_RECORDS", "1000"),
            ("REPLAY_MEMORY_MAX_PER_PARTITION", "200"),
        ],
    )
    .await;
    produce(&producer(), &topic, &records(3_000, 4)).await;
    bridge.wait_processed(3_000, Duration::from_secs(10)).await;
    let (mut ws, _) = connect(&bridge.ws_url("?format=json&resume=earliest&tenant=nobody")).await;
    let mut gaps = vec![];
    let done = loop {
        match next_frame(&mut ws, Duration::from_secs(10)).await {
            Some(Frame::Control(c)) if c["type"] == "gap" => gaps.push(c),
            Some(Frame::Control(c)) if c["type"] == "replay_complete" => break c,
            other => panic!("gap or replay_complete expected, got {other:?}"),
        }
    };
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert_eq!(gaps[0]["reason"], "replay_budget");
    let from = gaps[0]["from"].as_i64().unwrap();
    assert!(
        (900..=1_100).contains(&from),
        "stopped near 1,000 records read: {from}"
    );
    assert_eq!(gaps[0]["to"], 2_999);
    assert_eq!(
        (
            done["recovered"].as_bool(),
            done["reason"].as_str(),
            done["replayed"].as_u64()
        ),
        (Some(false), Some("replay_budget"), Some(0)),
        "{done}"
    );
    let body = kwb_testkit::http::get(bridge.port, "/metrics")
        .await
        .unwrap()
        .1;
    let count = |name: &str, label: &str| kwb_testkit::prom::sum(&body, name, label).unwrap_or(0.0);
    assert_eq!(
        count("replay_buffer_budget_exhausted_total", "records"),
        1.0
    );
    assert_eq!(count("replay_buffer_records_read_total", "decoded"), 0.0);
    assert!(count("replay_buffer_records_read_total", "filtered") >= 800.0);
    // Live: a ping is answered (the session left its replay).
    send_text(&mut ws, r#"{"type":"ping"}"#).await;
    match next_frame(&mut ws, Duration::from_secs(5)).await {
        Some(Frame::Control(c)) => assert_eq!(c["type"], "pong"),
        other => panic!("pong expected, got {other:?}"),
    }
}
