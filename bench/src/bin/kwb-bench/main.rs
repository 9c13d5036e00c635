//! `kwb-bench`: one-shot throughput and latency benchmark of the bridge
//! against a real Kafka-protocol broker, all on this machine.
//!
//! What one run measures:
//! 1. **Ceiling.** N synthetic DashStream records are produced once to a new
//!    topic. A bare librdkafka `BaseConsumer` (fresh group, from earliest, no
//!    work per record) counts them. Rate = N / (time from its first to its
//!    Nth record): what broker + librdkafka deliver to one consumer here.
//! 2. **Bridge ingest.** For each client count C (default 1 and 100) the
//!    bridge binary runs as a subprocess with a fresh consumer group, so each
//!    run re-reads the same N records. C `?format=binary` WebSocket clients
//!    connect while the group join is still pending; `/health` must show all
//!    C connected and `assigned_partitions == 0`, otherwise the run restarts
//!    with a new group (and a longer session timeout, i.e. a slower join).
//!    Rate = N / (first data frame at any client → Nth data frame at the
//!    slowest client). Clients only count frames; a sample of one client's
//!    frames is parsed (envelope + DashStream record). Drops are read from
//!    `/metrics` and from `lagged` notices.
//! 3. **Latency.** A new, empty topic; the bridge with one binary client;
//!    records are produced at a fixed rate, each stamped with the producer's
//!    wall clock (µs) in its DashStream header. Latency = client receive
//!    time − that stamp (same machine, same clock): p50/p99/p99.9/max.
//!    Beside it, as a baseline on the same records at the same time: a bare
//!    librdkafka consumer's latency (same stamp → its poll), and the
//!    producer's ack latency (send → delivery report).
//!
//! CPU seconds of the bridge, of this process (the clients) and, with
//! `--broker-pid`, of the broker are read from /proc around each phase.
//! Output: tables on stdout, then one JSON line `{"kwb_bench":1,...}`.
//! Progress goes to stderr; bridge logs go to `--log-dir`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use clap::Parser;
use futures_util::StreamExt;
use kafka_ws_bridge::metric_names as telemetry;
use kafka_ws_bridge::parse_envelope;
use kafka_ws_bridge::{decode, DecodeLimits};
use kafka_ws_bridge::{Generator, SynthConfig};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, DefaultConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{DeliveryResult, Message as _};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::Offset;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

mod bridge;
mod clients;
mod idle;
mod ingest;
mod kafka;
mod latency;
mod paced;
mod report;

use bridge::*;
use clients::*;
use idle::*;
use ingest::*;
use kafka::*;
use latency::*;
use paced::*;
use report::*;

pub(crate) use kwb_testkit::ws::Ws;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "kwb-bench",
    about = "Kafka ceiling, bridge ingest (1 and 100 clients) and Kafka→client latency, in one run"
)]
pub(crate) struct Args {
    /// Bootstrap servers of the broker.
    #[arg(long, env = "KWB_TEST_BROKERS")]
    pub(crate) brokers: String,
    /// Records pre-produced and read by the ceiling and ingest runs.
    #[arg(long, default_value_t = 200_000)]
    pub(crate) records: u64,
    #[arg(long, default_value_t = 3)]
    pub(crate) partitions: i32,
    /// Client counts of the ingest runs, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,100")]
    pub(crate) clients: Vec<usize>,
    /// Records per second produced during the latency run.
    #[arg(long, default_value_t = 2000.0)]
    pub(crate) latency_rate: f64,
    /// Length of the latency run, in seconds.
    #[arg(long, default_value_t = 10)]
    pub(crate) latency_secs: u64,
    /// linger.ms of the latency run's producer (librdkafka's default, 5; with 0,
    /// Tansu's memory engine cannot ack 2,000 single-record requests/s).
    #[arg(long, default_value_t = 5)]
    pub(crate) latency_linger_ms: u64,
    /// The bridge binary (default: `kafka-ws-bridge` next to this binary).
    #[arg(long)]
    pub(crate) bridge_bin: Option<PathBuf>,
    /// session.timeout.ms of every consumer group (the join takes about half of it on Tansu).
    #[arg(long, default_value_t = 6000)]
    pub(crate) session_timeout_ms: u64,
    /// Extra librdkafka properties for the bridge's consumer, comma-separated key=value.
    #[arg(long, default_value = "")]
    pub(crate) bridge_kafka_properties: String,
    /// Pid of the broker, to report its CPU time per phase.
    #[arg(long)]
    pub(crate) broker_pid: Option<u32>,
    /// Write every latency sample (`source receive_unix_us latency_us`) to this file.
    #[arg(long)]
    pub(crate) latency_dump: Option<PathBuf>,
    /// Directory for the bridge logs (default: a new one under the temp dir).
    #[arg(long)]
    pub(crate) log_dir: Option<PathBuf>,
    /// Idle WebSocket connections for the memory-per-connection phase (0: skip it).
    #[arg(long, default_value_t = 1000)]
    pub(crate) idle_connections: usize,
    /// Clients of the live fan-out phase (0: skip it).
    #[arg(long, default_value_t = 50)]
    pub(crate) paced_clients: usize,
    /// Records per second produced during the live fan-out phase.
    #[arg(long, default_value_t = 10_000.0)]
    pub(crate) paced_rate: f64,
    /// Length of the live fan-out phase, in seconds.
    #[arg(long, default_value_t = 10)]
    pub(crate) paced_secs: u64,
    /// Give up on a phase when no record arrives for this many seconds.
    #[arg(long, default_value_t = 30)]
    pub(crate) stall_secs: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    check_args(&args)?;
    let bridge_bin = bridge_bin(&args)?;
    let log_dir = args
        .log_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("kwb-bench-{}", std::process::id())));
    std::fs::create_dir_all(&log_dir)
        .with_context(|| format!("creating log dir {}", log_dir.display()))?;
    let run_id = format!("{}-{}", std::process::id(), unix_ms());
    let ctx = Ctx {
        args,
        bridge_bin,
        log_dir,
        clk_tck: clock_ticks_per_second(),
    };
    progress(format!(
        "bridge {}, logs in {}",
        ctx.bridge_bin.display(),
        ctx.log_dir.display()
    ));

    let topic = format!("kwb-bench-{run_id}");
    let created_with = create_topic(&ctx.args.brokers, &topic, ctx.args.partitions).await?;
    progress(format!("topic {topic} created ({created_with})"));
    let produced = pre_produce(&ctx, &topic).await?;
    progress(format!(
        "produced {} records ({:.0} records/s, avg value {:.0} B)",
        produced.acked,
        produced.rate(),
        produced.avg_value_bytes()
    ));

    let ceiling = ceiling_run(&ctx, &topic).await?;
    progress(format!("ceiling: {:.0} records/s", ceiling.rate()));

    let mut ingest = Vec::new();
    for &c in &ctx.args.clients {
        let r = ingest_run(&ctx, &topic, c).await?;
        progress(format!(
            "ingest, {c} client(s): {}",
            r.rate()
                .map_or("incomplete".to_string(), |x| format!("{x:.0} records/s"))
        ));
        ingest.push(r);
    }

    let latency_topic = format!("kwb-bench-{run_id}-latency");
    create_topic(&ctx.args.brokers, &latency_topic, ctx.args.partitions).await?;
    let latency = latency_run(&ctx, &latency_topic).await?;

    let paced = if ctx.args.paced_clients > 0 {
        let paced_topic = format!("kwb-bench-{run_id}-paced");
        create_topic(&ctx.args.brokers, &paced_topic, ctx.args.partitions).await?;
        let r = paced_run(&ctx, &paced_topic).await?;
        progress(format!(
            "live fan-out: {}/{} clients complete, lost per client min/median/max {}/{}/{}",
            r.complete_clients, r.clients, r.lost.0, r.lost.1, r.lost.2
        ));
        Some(r)
    } else {
        None
    };

    let idle = if ctx.args.idle_connections > 0 {
        let idle_topic = format!("kwb-bench-{run_id}-idle");
        create_topic(&ctx.args.brokers, &idle_topic, ctx.args.partitions).await?;
        let r = idle_run(&ctx, &idle_topic, ctx.args.idle_connections).await?;
        progress(format!(
            "idle: {} connections, {:.0} B of resident memory each",
            r.connections,
            r.per_connection_bytes()
        ));
        Some(r)
    } else {
        None
    };

    print_report(&ctx, &produced, &ceiling, &ingest, &latency, idle.as_ref());
    if let Some(p) = &paced {
        p.print();
    }
    let mut json = report_json(
        &ctx,
        &topic,
        &produced,
        &ceiling,
        &ingest,
        &latency,
        idle.as_ref(),
    );
    json["paced"] = paced.as_ref().map_or(Value::Null, Paced::json);
    println!("{json}");
    Ok(())
}

/// What every phase needs.
pub(crate) struct Ctx {
    pub(crate) args: Args,
    pub(crate) bridge_bin: PathBuf,
    pub(crate) log_dir: PathBuf,
    pub(crate) clk_tck: f64,
}

pub(crate) fn check_args(a: &Args) -> Result<()> {
    if a.records == 0 {
        bail!("--records must be at least 1");
    }
    if a.partitions < 1 {
        bail!("--partitions must be at least 1");
    }
    if a.clients.is_empty() || a.clients.contains(&0) {
        bail!("--clients must list positive client counts");
    }
    if !(a.latency_rate > 0.0 && a.latency_rate.is_finite()) || a.latency_secs == 0 {
        bail!("--latency-rate and --latency-secs must be positive");
    }
    Ok(())
}

pub(crate) fn bridge_bin(args: &Args) -> Result<PathBuf> {
    let path = match &args.bridge_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("locating this binary")?
            .parent()
            .context("this binary has no parent directory")?
            .join("kafka-ws-bridge"),
    };
    if !path.is_file() {
        bail!(
            "bridge binary {} not found (build it, or pass --bridge-bin)",
            path.display()
        );
    }
    Ok(path)
}

pub(crate) fn progress(msg: impl AsRef<str>) {
    eprintln!("[kwb-bench] {}", msg.as_ref());
}

pub(crate) fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

pub(crate) fn now_us() -> i64 {
    kafka_ws_bridge::now_us()
}

// ---------------------------------------------------------------------------
// Kafka: topics, producing, the ceiling consumer
// ---------------------------------------------------------------------------
