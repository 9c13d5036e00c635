//! `kwb-instances-bench`: the cost of running N instances of one consumer
//! group with one Redis (N = 1, 2, 3 by default), against a running broker
//! and Redis (`KWB_TEST_BROKERS`, `KWB_TEST_REDIS_URL`, as
//! `scripts/services.sh` sets). Per N, on a new 3-partition topic:
//!
//! - N release bridges start with one group and default settings, and C
//!   binary clients connect to each instance;
//! - R records are produced as fast as the producer goes;
//! - until every client has all R: the time, frames lost per client
//!   (min / median / max), and per instance its Kafka bytes received
//!   (`websocket_kafka_received_bytes`), its CPU, the records it consumed and
//!   the ones it followed from Redis; for the whole group, Redis commands per
//!   record (writes and reads, from `INFO commandstats`) and, beside it,
//!   Redis reads per second of idle polling.
//!
//! It starts the release `kafka-ws-bridge` itself (path: next to this binary)
//! and needs `redis-cli` for the command counts.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use futures_util::StreamExt;
use kafka_ws_bridge::{Generator, SynthConfig};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
struct Args {
    #[arg(long, env = "KWB_TEST_BROKERS")]
    brokers: String,
    #[arg(long, env = "KWB_TEST_REDIS_URL")]
    redis: String,
    /// Instance counts to measure.
    #[arg(long, default_value = "1,2,3", value_delimiter = ',')]
    instances: Vec<usize>,
    /// Records produced per run.
    #[arg(long, default_value_t = 100_000)]
    records: usize,
    /// Clients per instance.
    #[arg(long, default_value_t = 2)]
    clients: usize,
    /// Seconds of idle polling measured after the run.
    #[arg(long, default_value_t = 5)]
    idle_secs: u64,
}

const PARTITIONS: i32 = 3;

/// A bridge process (killed when dropped) and its port.
struct Bridge {
    child: kwb_testkit::process::Logged,
    port: u16,
}

async fn get(port: u16, path: &str) -> String {
    kwb_testkit::http::get(port, path)
        .await
        .map(|r| r.1)
        .unwrap_or_default()
}

async fn metric(port: u16, name: &str) -> f64 {
    kwb_testkit::prom::sum(&get(port, "/metrics").await, name, "").unwrap_or(0.0)
}

fn start(a: &Args, topic: &str, group: &str) -> Result<Bridge> {
    let bin = std::env::current_exe()?.with_file_name("kafka-ws-bridge");
    let port = kwb_testkit::net::free_port()?;
    let log = std::env::temp_dir().join(format!("kwb-instances-bench-{port}.log"));
    let mut cmd = Command::new(bin);
    cmd.arg("serve")
        .env("KAFKA_BROKERS", &a.brokers)
        .env("KAFKA_TOPIC", topic)
        .env("KAFKA_GROUP_ID", group)
        .env("WEBSOCKET_HOST", "127.0.0.1")
        .env("WEBSOCKET_PORT", port.to_string())
        .env("REDIS_URL", &a.redis)
        .env("RUST_LOG", "warn");
    Ok(Bridge {
        child: kwb_testkit::process::Logged::spawn(&mut cmd, &log)
            .context("start kafka-ws-bridge (build it with --release)")?,
        port,
    })
}

/// Total calls per Redis command since the last `CONFIG RESETSTAT`.
fn redis_calls(url: &str) -> Result<BTreeMap<String, u64>> {
    let out = Command::new("redis-cli")
        .args(["-u", url, "INFO", "commandstats"])
        .output()
        .context("redis-cli")?;
    let mut m = BTreeMap::new();
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        // cmdstat_set:calls=12,usec=...
        if let Some((name, rest)) = l.strip_prefix("cmdstat_").and_then(|l| l.split_once(':')) {
            if let Some(calls) = rest
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))
                .and_then(|c| c.parse().ok())
            {
                m.insert(name.to_string(), calls);
            }
        }
    }
    Ok(m)
}

fn redis_reset(url: &str) {
    let _ = Command::new("redis-cli")
        .args(["-u", url, "CONFIG", "RESETSTAT"])
        .output();
}

const WRITES: &[&str] = &[
    "set",
    "zadd",
    "zremrangebyrank",
    "expire",
    "sadd",
    "del",
    "hset",
    "hdel",
];
const READS: &[&str] = &[
    "zrangebyscore",
    "zrange",
    "mget",
    "strlen",
    "smembers",
    "hgetall",
];

fn split(calls: &BTreeMap<String, u64>) -> (u64, u64) {
    let sum = |names: &[&str]| {
        names
            .iter()
            .map(|n| calls.get(*n).copied().unwrap_or(0))
            .sum()
    };
    (sum(WRITES), sum(READS))
}

/// CPU seconds (user + system) of `pid`.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

async fn run(a: &Args, n: usize) -> Result<serde_json::Value> {
    let topic = format!("instances-bench-{n}-{}", std::process::id());
    let dlq = format!("{topic}-dlq");
    kwb_testkit::kafka::create_topics(&a.brokers, &[(&topic, PARTITIONS), (&dlq, 1)]).await?;
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &a.brokers)
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    // One record per partition first, so every instance has a partition to own or follow.
    for p in 0..PARTITIONS {
        let _ = producer.send(
            BaseRecord::<(), [u8]>::to(&topic)
                .partition(p)
                .payload(b"warmup"),
        );
    }
    producer.flush(Duration::from_secs(10))?;
    let group = format!("bench-group-{topic}");
    let bridges: Vec<Bridge> = (0..n)
        .map(|_| start(a, &topic, &group))
        .collect::<Result<_>>()?;
    let t0 = Instant::now();
    loop {
        let mut owned = 0;
        let mut ready = 0;
        for b in &bridges {
            let h: serde_json::Value =
                serde_json::from_str(&get(b.port, "/health").await).unwrap_or_default();
            owned += h["assigned_partitions"].as_u64().unwrap_or(0);
            let r = get(b.port, "/health/ready").await;
            ready += usize::from(r.contains("\"ready\":true"));
            let followed = h["followed_partitions"].as_u64().unwrap_or(0);
            let own = h["assigned_partitions"].as_u64().unwrap_or(0);
            if own + followed < PARTITIONS as u64 {
                ready = 0;
            }
        }
        if owned == PARTITIONS as u64 && ready == n {
            break;
        }
        if t0.elapsed() > Duration::from_secs(90) {
            bail!("N={n}: the group did not settle");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("N={n}: settled in {:.1} s", t0.elapsed().as_secs_f64());
    // Clients.
    let counters: Vec<Arc<AtomicU64>> = (0..n * a.clients)
        .map(|_| Arc::new(AtomicU64::new(0)))
        .collect();
    let mut tasks = Vec::new();
    for (i, c) in counters.iter().enumerate() {
        let port = bridges[i % n].port;
        let mut ws =
            kwb_testkit::ws::connect(&format!("ws://127.0.0.1:{port}/ws?format=binary")).await?;
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(Ok(m)) = ws.next().await {
                if let Message::Binary(b) = m {
                    if kafka_ws_bridge::parse_envelope(&b).is_ok() {
                        c.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before: Vec<(f64, f64, f64, f64)> = {
        let mut v = Vec::new();
        for b in &bridges {
            v.push((
                metric(b.port, "websocket_kafka_received_bytes").await,
                metric(b.port, "websocket_kafka_messages_total").await,
                metric(b.port, "websocket_followed_records_total").await,
                cpu_secs(b.child.pid()),
            ));
        }
        v
    };
    redis_reset(&a.redis);
    let recs: Vec<_> = Generator::new(SynthConfig {
        threads: 30,
        ..Default::default()
    })
    .take(a.records)
    .collect();
    let started = Instant::now();
    for r in &recs {
        let mut rec = BaseRecord::to(&topic).key(&r.key).payload(&r.value);
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((_, back)) => {
                    rec = back;
                    producer.poll(Duration::from_millis(5));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(30))?;
    let want = a.records as u64;
    let deadline = Instant::now() + Duration::from_secs(180);
    while counters.iter().any(|c| c.load(Ordering::Relaxed) < want) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed().as_secs_f64();
    let calls = redis_calls(&a.redis)?;
    // Kafka bytes come from librdkafka's statistics (every 5 s by default).
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut per_instance = Vec::new();
    for (b, (rx0, con0, fol0, cpu0)) in bridges.iter().zip(&before) {
        per_instance.push(json!({
            "kafka_received_bytes": metric(b.port, "websocket_kafka_received_bytes").await - rx0,
            "records_consumed": metric(b.port, "websocket_kafka_messages_total").await - con0,
            "records_followed": metric(b.port, "websocket_followed_records_total").await - fol0,
            "cpu_secs": cpu_secs(b.child.pid()) - cpu0,
        }));
    }
    let (writes, reads) = split(&calls);
    // Idle polling: Redis reads per second with nothing to read.
    redis_reset(&a.redis);
    tokio::time::sleep(Duration::from_secs(a.idle_secs)).await;
    let (_, idle_reads) = split(&redis_calls(&a.redis)?);
    let mut got: Vec<u64> = counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    got.sort_unstable();
    let lost: Vec<u64> = got.iter().map(|g| want.saturating_sub(*g)).collect();
    for t in tasks {
        t.abort();
    }
    Ok(json!({
        "instances": n,
        "records": a.records,
        "clients": n * a.clients,
        "seconds_until_every_client_had_all": took,
        "frames_per_sec_delivered": (got.iter().sum::<u64>() as f64) / took,
        "lost_per_client_min_median_max": [lost[lost.len() - 1], lost[lost.len() / 2], lost[0]],
        "redis_write_commands_per_record": writes as f64 / a.records as f64,
        "redis_read_commands_per_record": reads as f64 / a.records as f64,
        "redis_calls": calls,
        "redis_idle_reads_per_sec": idle_reads as f64 / a.idle_secs as f64,
        "per_instance": per_instance,
    }))
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = Args::parse();
    let mut all = Vec::new();
    for n in a.instances.clone() {
        let r = run(&a, n).await?;
        eprintln!("{}", serde_json::to_string_pretty(&r)?);
        all.push(r);
    }
    println!("{}", json!({"kwb_instances_bench": 1, "runs": all}));
    Ok(())
}
