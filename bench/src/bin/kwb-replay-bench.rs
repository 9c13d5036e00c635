//! `kwb-replay-bench`: measures, in one run against a running broker and Redis
//! (`KWB_TEST_BROKERS`, `KWB_TEST_REDIS_URL`, as `scripts/services.sh` sets):
//!
//! 1. replay: N pre-produced records replayed to one client (`resume=earliest`,
//!    binary): time to `replay_complete`, records/s, and the bridge's peak RSS;
//! 2. resume storm: a live reader's latency (producer timestamp → receive) at a
//!    fixed rate, without and then with M clients resuming at once;
//! 3. stalled client: R readers' latency at a fixed rate, without and then
//!    with one client that never reads;
//! 4. silent clients: what K clients that never read cost the bridge while a
//!    reader gets the same rate: its RSS per client (idle, then blocked on a
//!    full socket) and the kernel send queue of their sockets (`ss`).
//!
//! It starts the release `kafka-ws-bridge` itself (path: next to this binary).

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use futures_util::StreamExt;
use kafka_ws_bridge::parse_envelope;
use kafka_ws_bridge::{decode, DecodeLimits};
use kafka_ws_bridge::{now_us, Generator, SynthConfig};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
struct Args {
    #[arg(long, env = "KWB_TEST_BROKERS")]
    brokers: String,
    #[arg(long, env = "KWB_TEST_REDIS_URL")]
    redis: String,
    /// Records replayed to one client.
    #[arg(long, default_value_t = 100_000)]
    replay_records: usize,
    /// Clients resuming at once in the storm.
    #[arg(long, default_value_t = 200)]
    storm_clients: usize,
    /// How far back (records per partition) storm clients resume.
    #[arg(long, default_value_t = 1000)]
    storm_back: i64,
    /// Live rate during the storm phase, records/s.
    #[arg(long, default_value_t = 1000.0)]
    storm_rate: f64,
    /// Readers in the stalled-client phase.
    #[arg(long, default_value_t = 50)]
    readers: usize,
    /// Rate in the stalled-client phase, records/s.
    #[arg(long, default_value_t = 10_000.0)]
    stall_rate: f64,
    /// Which parts to run: replay, storm, stall, silent (comma-separated).
    #[arg(
        long,
        default_value = "replay,storm,stall,silent",
        value_delimiter = ','
    )]
    parts: Vec<String>,
    /// Stalled-client rounds: each round runs without and then with the stalled client.
    #[arg(long, default_value_t = 2)]
    stall_rounds: usize,
    /// Clients that never read, in the silent part.
    #[arg(long, default_value_t = 100)]
    silent_clients: usize,
    /// Seconds per measured phase.
    #[arg(long, default_value_t = 8)]
    secs: u64,
}

/// How long storm clients have, from the first resume, to finish their replay.
const STORM_DEADLINE_SECS: u64 = 120;

use kwb_testkit::ws::Ws;

/// A bridge process (killed when dropped) and its port.
struct Bridge {
    child: kwb_testkit::process::Logged,
    port: u16,
}

fn free_port() -> Result<u16> {
    Ok(kwb_testkit::net::free_port()?)
}

async fn http_get(port: u16, path: &str) -> Result<String> {
    Ok(kwb_testkit::http::get(port, path).await?.1)
}

/// The sum of every sample of `name` (0 when there is none).
async fn metric(port: u16, name: &str) -> f64 {
    let body = http_get(port, "/metrics").await.unwrap_or_default();
    kwb_testkit::prom::sum(&body, name, "").unwrap_or(0.0)
}

fn start_bridge(a: &Args, topic: &str, extra: &[(&str, &str)]) -> Result<Bridge> {
    let bin = std::env::current_exe()?.with_file_name("kafka-ws-bridge");
    let port = free_port()?;
    let log = std::env::temp_dir().join(format!("kwb-replay-bench-{port}.log"));
    let mut cmd = Command::new(bin);
    cmd.arg("serve")
        .env("KAFKA_BROKERS", &a.brokers)
        .env("KAFKA_TOPIC", topic)
        .env("KAFKA_GROUP_ID", format!("bench-{topic}-{port}"))
        .env("KAFKA_PROPERTIES", "session.timeout.ms=6000")
        .env("WEBSOCKET_HOST", "127.0.0.1")
        .env("WEBSOCKET_PORT", port.to_string())
        .env("REDIS_URL", &a.redis)
        .env("RUST_LOG", "warn");
    for (k, v) in extra {
        cmd.env(k, v);
    }
    Ok(Bridge {
        child: kwb_testkit::process::Logged::spawn(&mut cmd, &log)
            .context("start kafka-ws-bridge (build it with --release)")?,
        port,
    })
}

async fn wait_ready(port: u16) -> Result<()> {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(60) {
        if http_get(port, "/health/ready")
            .await
            .is_ok_and(|b| b.contains("\"ready\":true"))
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("bridge not ready")
}

fn producer(brokers: &str) -> Result<ThreadedProducer<DefaultProducerContext>> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .create()?)
}

async fn create_topic(a: &Args, name: &str, partitions: i32) -> Result<()> {
    kwb_testkit::kafka::create_topics(&a.brokers, &[(name, partitions)]).await
}

use kwb_testkit::process::rss_kb;

async fn connect(port: u16, query: &str) -> Result<Ws> {
    kwb_testkit::ws::connect(&format!("ws://127.0.0.1:{port}/ws{query}")).await
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Reads binary data frames for `secs`, returning latencies in ms: from the
/// producer's event timestamp (µs, decoded) or, with `cheap`, from the Kafka
/// record timestamp in the envelope (ms; no decoding, for many readers).
async fn read_latencies(mut ws: Ws, secs: u64, cheap: bool) -> Vec<f64> {
    let limits = DecodeLimits::default();
    let mut out = Vec::new();
    let end = Instant::now() + Duration::from_secs(secs);
    while let Ok(Some(Ok(m))) = tokio::time::timeout_at(end.into(), ws.next()).await {
        if let Message::Binary(b) = m {
            let now = now_us();
            if let Ok(env) = parse_envelope(&b) {
                if cheap {
                    if let Some(ts) = env.kafka_timestamp_ms {
                        out.push((now / 1000 - ts) as f64);
                    }
                    continue;
                }
                if let Ok(d) = decode(Some(env.value), &limits) {
                    if let Some(ts) = d.timestamp_us() {
                        out.push((now - ts) as f64 / 1000.0);
                    }
                }
            }
        }
    }
    out
}

/// Produces at `rate` records/s for `secs` on a blocking thread.
fn produce_at(
    brokers: String,
    topic: String,
    rate: f64,
    secs: u64,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let Ok(p) = producer(&brokers) else { return 0 };
        let mut g = Generator::new(SynthConfig {
            threads: 16,
            ..Default::default()
        });
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < Duration::from_secs(secs) {
            let due = start + Duration::from_secs_f64(n as f64 / rate);
            if let Some(w) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(w);
            }
            let Some(r) = g.next() else { break };
            while p
                .send(BaseRecord::to(&topic).key(&r.key).payload(&r.value))
                .is_err()
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            n += 1;
        }
        let _ = p.flush(Duration::from_secs(10));
        n
    })
}

/// One client replays everything (`resume=earliest`, binary): time, rate,
/// the bridge's RSS before and at peak, and where the records came from.
async fn replay_once(bridge: &Bridge) -> Result<serde_json::Value> {
    let (pid, port) = (bridge.child.pid(), bridge.port);
    let rss_before = rss_kb(pid);
    let mut ws = connect(port, "?resume=earliest").await?;
    let t0 = Instant::now();
    let (mut frames, mut peak) = (0u64, rss_before);
    let mut last_sample = Instant::now();
    let done = loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Binary(_)))) => frames += 1,
            Ok(Some(Ok(Message::Text(t)))) if t.as_str().contains("replay_complete") => {
                break t.to_string()
            }
            Ok(Some(Ok(_))) => {}
            _ => bail!("replay stalled after {frames} frames"),
        }
        if last_sample.elapsed() > Duration::from_millis(50) {
            peak = peak.max(rss_kb(pid));
            last_sample = Instant::now();
        }
    };
    let secs = t0.elapsed().as_secs_f64();
    Ok(serde_json::json!({
        "records": frames, "seconds": secs, "records_per_sec": frames as f64 / secs,
        "bridge_rss_kb_before": rss_before, "bridge_rss_kb_peak": peak,
        "memory_hits": metric(port, "replay_buffer_memory_hits_total").await, "redis_hits": metric(port, "replay_buffer_redis_hits_total").await,
        "kafka_hits": metric(port, "replay_buffer_kafka_hits_total").await,
        "redis_writes": metric(port, "replay_buffer_redis_writes_total").await,
        "redis_write_dropped": metric(port, "replay_buffer_redis_write_dropped_total").await, "replay_complete": serde_json::from_str::<serde_json::Value>(&done)?,
    }))
}

/// What a client that stopped reading finally sees when it reads again: the
/// frames the kernel buffered, the `gap`/`lagged` notices, and how it was closed.
async fn stalled_fate(mut ws: Ws) -> serde_json::Value {
    let (mut frames, mut gaps, mut lagged) = (0u64, 0u64, 0u64);
    let mut close = serde_json::Value::Null;
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(20), ws.next()).await {
        match m {
            Ok(Message::Binary(_)) => frames += 1,
            Ok(Message::Text(t)) if t.as_str().contains("\"gap\"") => gaps += 1,
            Ok(Message::Text(t)) if t.as_str().contains("\"lagged\"") => lagged += 1,
            Ok(Message::Close(c)) => {
                close = serde_json::json!({
                    "code": c.as_ref().map(|c| u16::from(c.code)),
                    "reason": c.as_ref().map(|c| c.reason.to_string()),
                });
                break;
            }
            Ok(_) => {}
            Err(e) => {
                close = serde_json::json!({"error": e.to_string()});
                break;
            }
        }
    }
    serde_json::json!({"frames_buffered": frames, "gap_notices": gaps, "lagged_notices": lagged, "close": close})
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = Args::parse();
    let mut report = serde_json::Map::new();

    // 1. One client replays N records.
    let topic = format!("replay-bench-{}", std::process::id());
    create_topic(&a, &topic, 3).await?;
    create_topic(&a, &format!("{topic}-dlq"), 1).await?;
    {
        let p = producer(&a.brokers)?;
        for r in Generator::new(SynthConfig {
            threads: 30,
            ..Default::default()
        })
        .take(a.replay_records)
        {
            while p
                .send(BaseRecord::to(&topic).key(&r.key).payload(&r.value))
                .is_err()
            {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        p.flush(Duration::from_secs(60))?;
    }
    let bridge = start_bridge(&a, &topic, &[])?;
    wait_ready(bridge.port).await?;
    // Every record is written to Redis or, when the writer queue is full during this catch-up, dropped (counted).
    while metric(bridge.port, "replay_buffer_redis_writes_total").await
        + metric(bridge.port, "replay_buffer_redis_write_dropped_total").await
        < a.replay_records as f64
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if a.parts.iter().any(|p| p == "replay") {
        let r = replay_once(&bridge).await?;
        eprintln!("replay (memory, Redis, Kafka): {r}");
        report.insert("replay".into(), r);
        // The same history without Redis: what memory does not hold comes from Kafka.
        let no_redis = start_bridge(&a, &topic, &[("REDIS_URL", "")])?;
        wait_ready(no_redis.port).await?;
        while metric(no_redis.port, "websocket_kafka_messages_total").await
            < a.replay_records as f64
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let r = replay_once(&no_redis).await?;
        eprintln!("replay (memory, Kafka): {r}");
        report.insert("replay_without_redis".into(), r);
    }

    // 2. Resume storm vs a live reader.
    let heads: Vec<i64> = vec![(a.replay_records / 3) as i64; 3];
    let phase = |label: &'static str, storm: bool| {
        let a_brokers = a.brokers.clone();
        let topic = topic.clone();
        let port = bridge.port;
        let (clients, back, rate, secs) = (a.storm_clients, a.storm_back, a.storm_rate, a.secs);
        let heads = heads.clone();
        async move {
            let live = connect(port, "?resume=latest").await?;
            let prod = produce_at(a_brokers, topic, rate, secs);
            let reader = tokio::spawn(read_latencies(live, secs + 1, false));
            let mut storm_tasks = vec![];
            if storm {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let q = format!(
                    "?resume=cursor&last_offsets={}",
                    (0..3)
                        .map(|p| format!("{p}:{}", (heads[p] - back).max(0)))
                        .collect::<Vec<_>>()
                        .join(",")
                );
                let storm_start = Instant::now();
                for _ in 0..clients {
                    let q = q.clone();
                    storm_tasks.push(tokio::spawn(async move {
                        let Ok(mut ws) = connect(port, &q).await else {
                            return (0u64, None);
                        };
                        let mut n = 0u64;
                        // Resumes beyond REPLAY_MAX_CONCURRENT wait their turn: allow for it.
                        let end = storm_start + Duration::from_secs(STORM_DEADLINE_SECS);
                        while let Ok(Some(Ok(m))) =
                            tokio::time::timeout_at(end.into(), ws.next()).await
                        {
                            match m {
                                Message::Binary(_) => n += 1,
                                Message::Text(t) if t.as_str().contains("replay_complete") => {
                                    return (n, Some(storm_start.elapsed().as_secs_f64()))
                                }
                                _ => {}
                            }
                        }
                        (n, None)
                    }));
                }
            }
            let mut lat = reader.await?;
            let sent = prod.join().unwrap_or(0);
            let mut done_secs = vec![];
            let mut replayed = 0;
            for t in storm_tasks {
                let (n, done) = t.await?;
                replayed += n;
                done_secs.extend(done);
            }
            let completed = done_secs.len();
            anyhow::Ok(serde_json::json!({
                "phase": label, "live_records_sent": sent, "live_received": lat.len(),
                "p50_ms": pct(&mut lat, 0.5), "p99_ms": pct(&mut lat, 0.99), "p999_ms": pct(&mut lat, 0.999),
                "storm_clients_completed": completed, "storm_records_replayed": replayed,
                "storm_done_p50_secs": pct(&mut done_secs, 0.5), "storm_done_max_secs": pct(&mut done_secs, 1.0),
            }))
        }
    };
    if a.parts.iter().any(|p| p == "storm") {
        let quiet = phase("live only", false).await?;
        eprintln!("storm baseline: {quiet}");
        let stormy = phase("live + resume storm", true).await?;
        eprintln!("storm: {stormy}");
        report.insert("resume_storm".into(), serde_json::json!([quiet, stormy]));
    }
    drop(bridge);

    if a.parts.iter().any(|p| p == "stall") {
        // 3. Readers with and without one stalled client.
        let topic2 = format!("stall-bench-{}", std::process::id());
        create_topic(&a, &topic2, 3).await?;
        create_topic(&a, &format!("{topic2}-dlq"), 1).await?;
        let bridge = start_bridge(&a, &topic2, &[])?;
        wait_ready(bridge.port).await?;
        let mut stall_phases = vec![];
        // Latencies pooled per condition over all rounds (rounds alternate, so drift cancels).
        let mut pooled: [Vec<f64>; 2] = [vec![], vec![]];
        let mut stalled_fates = vec![];
        for stalled in (0..a.stall_rounds).flat_map(|_| [false, true]) {
            let mut readers = vec![];
            for _ in 0..a.readers {
                readers.push(connect(bridge.port, "?resume=latest").await?);
            }
            let stalled_ws = if stalled {
                Some(connect(bridge.port, "?resume=latest").await?)
            } else {
                None
            };
            let dropped_before = metric(bridge.port, "websocket_dropped_messages_total").await;
            let prod = produce_at(a.brokers.clone(), topic2.clone(), a.stall_rate, a.secs);
            let tasks: Vec<_> = readers
                .into_iter()
                .map(|w| tokio::spawn(read_latencies(w, a.secs + 1, true)))
                .collect();
            let mut all = vec![];
            let mut least = usize::MAX;
            for t in tasks {
                let l = t.await?;
                least = least.min(l.len());
                all.extend(l);
            }
            let sent = prod.join().unwrap_or(0);
            let per_reader = all.len() as f64 / a.readers as f64;
            let rss = rss_kb(bridge.child.pid());
            let dropped =
                metric(bridge.port, "websocket_dropped_messages_total").await - dropped_before;
            let mut v = serde_json::json!({
                "stalled_client": stalled, "readers": a.readers, "records_sent": sent, "avg_received_per_reader": per_reader,
                "least_received_by_a_reader": least,
                "p50_ms": pct(&mut all, 0.5), "p99_ms": pct(&mut all, 0.99), "bridge_rss_kb": rss,
                "frames_dropped_all_clients": dropped,
            });
            pooled[usize::from(stalled)].extend(all);
            if let Some(ws) = stalled_ws {
                let fate = stalled_fate(ws).await;
                v["stalled_client_fate"] = fate.clone();
                stalled_fates.push(fate);
            }
            eprintln!("stall phase: {v}");
            stall_phases.push(v);
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let [mut without, mut with] = pooled;
        let (p99_without, p99_with) = (pct(&mut without, 0.99), pct(&mut with, 0.99));
        let summary = serde_json::json!({
            "rate": a.stall_rate, "readers": a.readers, "rounds": a.stall_rounds,
            "p50_ms_without": pct(&mut without, 0.5), "p50_ms_with": pct(&mut with, 0.5),
            "p99_ms_without": p99_without, "p99_ms_with": p99_with,
            "p99_change_percent": (p99_with / p99_without - 1.0) * 100.0,
        });
        eprintln!("stall summary: {summary}");
        report.insert(
            "stalled_client".into(),
            serde_json::json!({"phases": stall_phases, "summary": summary}),
        );
    }
    if a.parts.iter().any(|p| p == "silent") {
        let v = silent_clients(&a).await?;
        eprintln!("silent clients: {v}");
        report.insert("silent_clients".into(), v);
    }
    println!("{}", serde_json::Value::Object(report));
    Ok(())
}

/// Part 4: K clients that never read. A reader and the producer run first
/// alone (the log fills as it will later), then with the K clients, until
/// their sockets are full (before `WEBSOCKET_WRITE_TIMEOUT_SECS` ends their
/// sessions). The bridge's RSS is read after each step.
async fn silent_clients(a: &Args) -> Result<serde_json::Value> {
    let topic = format!("silent-bench-{}", std::process::id());
    create_topic(a, &topic, 3).await?;
    create_topic(a, &format!("{topic}-dlq"), 1).await?;
    let bridge = start_bridge(a, &topic, &[])?;
    wait_ready(bridge.port).await?;
    let pid = bridge.child.pid();
    // Short of the 10 s write timeout, so every silent session is still blocked when measured.
    let secs = a.secs.min(6);
    let phase = |label: &'static str| {
        let (brokers, topic, rate, port) =
            (a.brokers.clone(), topic.clone(), a.stall_rate, bridge.port);
        async move {
            let reader = connect(port, "?format=binary&resume=latest").await?;
            let read = tokio::spawn(read_latencies(reader, secs + 1, true));
            let sent = produce_at(brokers, topic, rate, secs).join().unwrap_or(0);
            let received = read.await?.len();
            anyhow::Ok((label, sent, received))
        }
    };
    let warm = phase("reader alone").await?;
    let rss_warm = kwb_testkit::process::rss_kb(pid);
    let mut silent = Vec::with_capacity(a.silent_clients);
    for _ in 0..a.silent_clients {
        silent.push(connect(bridge.port, "?format=binary&resume=latest").await?);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_idle = kwb_testkit::process::rss_kb(pid);
    let blocked = phase("reader + silent clients").await?;
    let rss_blocked = kwb_testkit::process::rss_kb(pid);
    let (send_q, sndbuf) = send_queues(bridge.port);
    let k = a.silent_clients.max(1) as f64;
    drop(silent);
    let phases: Vec<_> = [warm, blocked]
        .iter()
        .map(|(l, s, r)| serde_json::json!({"phase": l, "sent": s, "reader_received": r}))
        .collect();
    Ok(serde_json::json!({
        "silent_clients": a.silent_clients, "rate": a.stall_rate, "secs": secs,
        "phases": phases,
        "bridge_rss_kb": {"reader_alone": rss_warm, "silent_connected": rss_idle, "silent_blocked": rss_blocked},
        "rss_bytes_per_silent_client_idle": (rss_idle as f64 - rss_warm as f64) * 1024.0 / k,
        "rss_bytes_per_silent_client_blocked": (rss_blocked as f64 - rss_warm as f64) * 1024.0 / k,
        "rss_bytes_per_silent_client_growth_while_blocked": (rss_blocked as f64 - rss_idle as f64) * 1024.0 / k,
        "kernel_send_queue_bytes": send_q, "kernel_send_buffer_bytes_max": sndbuf,
    }))
}

/// (Send-Q of every socket, sorted; the largest kernel send buffer) of the
/// bridge's established connections on `port`, from `ss -tmn`.
fn send_queues(port: u16) -> (Vec<u64>, u64) {
    let out = Command::new("ss")
        .args([
            "-tmnH",
            "state",
            "established",
            &format!("( sport = :{port} )"),
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let (mut queues, mut sndbuf) = (Vec::new(), 0u64);
    for line in out.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if let Some(q) = cols.get(1).and_then(|q| q.parse::<u64>().ok()) {
            queues.push(q);
        }
        if let Some(tb) = line
            .split([',', '(', ')'])
            .find_map(|f| f.strip_prefix("tb")?.parse::<u64>().ok())
        {
            sndbuf = sndbuf.max(tb);
        }
    }
    queues.sort_unstable();
    (queues, sndbuf)
}
