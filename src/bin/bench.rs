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
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, DefaultConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{DeliveryResult, Message as _};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::Offset;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "kwb-bench",
    about = "Kafka ceiling, bridge ingest (1 and 100 clients) and Kafka→client latency, in one run"
)]
struct Args {
    /// Bootstrap servers of the broker.
    #[arg(long, env = "KWB_TEST_BROKERS")]
    brokers: String,
    /// Records pre-produced and read by the ceiling and ingest runs.
    #[arg(long, default_value_t = 200_000)]
    records: u64,
    #[arg(long, default_value_t = 3)]
    partitions: i32,
    /// Client counts of the ingest runs, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,100")]
    clients: Vec<usize>,
    /// Records per second produced during the latency run.
    #[arg(long, default_value_t = 2000.0)]
    latency_rate: f64,
    /// Length of the latency run, in seconds.
    #[arg(long, default_value_t = 10)]
    latency_secs: u64,
    /// linger.ms of the latency run's producer (librdkafka's default, 5; with 0,
    /// Tansu's memory engine cannot ack 2,000 single-record requests/s).
    #[arg(long, default_value_t = 5)]
    latency_linger_ms: u64,
    /// The bridge binary (default: `kafka-ws-bridge` next to this binary).
    #[arg(long)]
    bridge_bin: Option<PathBuf>,
    /// WEBSOCKET_CLIENT_QUEUE_FRAMES of the bridge in ingest runs; 0 = 2 × records + 1024,
    /// so that a client holding every record stays below the bridge's 50 % shedding
    /// threshold for low-priority kinds. WEBSOCKET_CLIENT_QUEUE_BYTES is set to 1 KiB per frame.
    #[arg(long, default_value_t = 0)]
    queue_frames: usize,
    /// session.timeout.ms of every consumer group (the join takes about half of it on Tansu).
    #[arg(long, default_value_t = 6000)]
    session_timeout_ms: u64,
    /// Extra librdkafka properties for the bridge's consumer, comma-separated key=value.
    #[arg(long, default_value = "")]
    bridge_kafka_properties: String,
    /// Pid of the broker, to report its CPU time per phase.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Write every latency sample (`source receive_unix_us latency_us`) to this file.
    #[arg(long)]
    latency_dump: Option<PathBuf>,
    /// Directory for the bridge logs (default: a new one under the temp dir).
    #[arg(long)]
    log_dir: Option<PathBuf>,
    /// Give up on a phase when no record arrives for this many seconds.
    #[arg(long, default_value_t = 30)]
    stall_secs: u64,
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

    print_report(&ctx, &produced, &ceiling, &ingest, &latency);
    println!(
        "{}",
        report_json(&ctx, &topic, &produced, &ceiling, &ingest, &latency)
    );
    Ok(())
}

/// What every phase needs.
struct Ctx {
    args: Args,
    bridge_bin: PathBuf,
    log_dir: PathBuf,
    clk_tck: f64,
}

fn check_args(a: &Args) -> Result<()> {
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

fn bridge_bin(args: &Args) -> Result<PathBuf> {
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

fn progress(msg: impl AsRef<str>) {
    eprintln!("[kwb-bench] {}", msg.as_ref());
}

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

fn now_us() -> i64 {
    kafka_ws_bridge::now_us()
}

// ---------------------------------------------------------------------------
// Kafka: topics, producing, the ceiling consumer
// ---------------------------------------------------------------------------

/// Creates `name` with the AdminClient, or with scripts/create-topic.sh if
/// that fails; then waits until the metadata shows all partitions.
async fn create_topic(brokers: &str, name: &str, partitions: i32) -> Result<&'static str> {
    let how = match create_topic_admin(brokers, name, partitions).await {
        Ok(()) => "AdminClient",
        Err(e) => {
            progress(format!(
                "AdminClient could not create {name} ({e:#}); trying scripts/create-topic.sh"
            ));
            let (b, n) = (brokers.to_string(), name.to_string());
            tokio::task::spawn_blocking(move || create_topic_script(&b, &n, partitions)).await??;
            "scripts/create-topic.sh"
        }
    };
    wait_for_partitions(brokers, name, partitions).await?;
    Ok(how)
}

async fn create_topic_admin(brokers: &str, name: &str, partitions: i32) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = tokio::time::timeout(
        Duration::from_secs(15),
        admin.create_topics([&topic], &opts),
    )
    .await
    .context("CreateTopics timed out")??;
    for r in results {
        if let Err((t, code)) = r {
            bail!("CreateTopics {t}: {code}");
        }
    }
    Ok(())
}

fn create_topic_script(brokers: &str, name: &str, partitions: i32) -> Result<()> {
    let in_repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/create-topic.sh");
    let script = if in_repo.is_file() {
        in_repo
    } else {
        PathBuf::from("scripts/create-topic.sh")
    };
    let status = Command::new("bash")
        .arg(&script)
        .args([name, &partitions.to_string(), brokers])
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    if !status.success() {
        bail!("{} failed: {status}", script.display());
    }
    Ok(())
}

async fn wait_for_partitions(brokers: &str, topic: &str, want: i32) -> Result<()> {
    let (b, t) = (brokers.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || -> Result<()> {
        let client: BaseConsumer<DefaultConsumerContext> = ClientConfig::new()
            .set("bootstrap.servers", &b)
            .set("allow.auto.create.topics", "false")
            .create()?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let md = client.fetch_metadata(Some(&t), Duration::from_secs(5))?;
            let have = md
                .topics()
                .iter()
                .find(|x| x.name() == t && x.error().is_none())
                .map_or(0, |x| x.partitions().len());
            if have == want as usize {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("topic {t} shows {have} partition(s), expected {want}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    })
    .await?
}

/// Counts delivery reports of a producer and, when asked, keeps each
/// record's ack latency (send → delivery report, µs).
#[derive(Default)]
struct DeliveryCounter {
    acked: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
    keep_ack_latency: bool,
    ack_latency_us: Mutex<Vec<i64>>,
}

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    /// The send time, µs since the epoch.
    type DeliveryOpaque = usize;
    fn delivery(&self, result: &DeliveryResult<'_>, sent_us: usize) {
        match result {
            Ok(_) => {
                self.acked.fetch_add(1, Ordering::Relaxed);
                if self.keep_ack_latency {
                    if let Ok(mut v) = self.ack_latency_us.lock() {
                        v.push(now_us() - sent_us as i64);
                    }
                }
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut first) = self.first_error.lock() {
                    first.get_or_insert_with(|| e.to_string());
                }
            }
        }
    }
}

fn producer(
    brokers: &str,
    linger_ms: u64,
    keep_ack_latency: bool,
) -> Result<ThreadedProducer<DeliveryCounter>> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", linger_ms.to_string())
        .set("message.timeout.ms", "60000")
        .create_with_context(DeliveryCounter {
            keep_ack_latency,
            ..Default::default()
        })?)
}

/// Hands one record to the producer, waiting while its queue is full.
async fn send_record(
    p: &ThreadedProducer<DeliveryCounter>,
    topic: &str,
    key: &[u8],
    value: &[u8],
) -> Result<()> {
    loop {
        let sent_us = now_us().max(0) as usize;
        match p.send(
            BaseRecord::with_opaque_to(topic, sent_us)
                .key(key)
                .payload(value),
        ) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err((e, _)) => bail!("produce to {topic} failed: {e}"),
        }
    }
}

/// Waits for every delivery report; fails if any record was not acknowledged.
async fn flush(p: ThreadedProducer<DeliveryCounter>, expected: u64) -> Result<u64> {
    let p2 = p.clone();
    tokio::task::spawn_blocking(move || p2.flush(Duration::from_secs(60))).await??;
    let c = p.context();
    let (acked, failed) = (
        c.acked.load(Ordering::Relaxed),
        c.failed.load(Ordering::Relaxed),
    );
    if failed > 0 || acked != expected {
        let first = c.first_error.lock().ok().and_then(|f| f.clone());
        bail!(
            "producer: {acked} of {expected} records acknowledged, {failed} failed (first error: {})",
            first.unwrap_or_else(|| "none".into())
        );
    }
    Ok(acked)
}

struct Produced {
    acked: u64,
    value_bytes: u64,
    secs: f64,
}

impl Produced {
    fn rate(&self) -> f64 {
        self.acked as f64 / self.secs.max(1e-9)
    }
    fn avg_value_bytes(&self) -> f64 {
        self.value_bytes as f64 / (self.acked.max(1)) as f64
    }
}

/// Produces the N records every ceiling and ingest run reads.
async fn pre_produce(ctx: &Ctx, topic: &str) -> Result<Produced> {
    let n = ctx.args.records;
    let p = producer(&ctx.args.brokers, 5, false)?;
    let started = Instant::now();
    let mut value_bytes = 0u64;
    for rec in Generator::new(SynthConfig::default()).take(n as usize) {
        value_bytes += rec.value.len() as u64;
        send_record(&p, topic, rec.key.as_bytes(), &rec.value).await?;
    }
    let acked = flush(p, n).await?;
    Ok(Produced {
        acked,
        value_bytes,
        secs: started.elapsed().as_secs_f64(),
    })
}

struct Ceiling {
    records: u64,
    first_after: Duration,
    transfer: Duration,
    cpu: CpuUse,
}

impl Ceiling {
    fn rate(&self) -> f64 {
        self.records as f64 / self.transfer.as_secs_f64().max(1e-9)
    }
}

/// Bare librdkafka consumer: fresh group, from earliest, counts to N.
async fn ceiling_run(ctx: &Ctx, topic: &str) -> Result<Ceiling> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &ctx.args.brokers)
        .set("group.id", format!("{topic}-ceiling"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set(
            "session.timeout.ms",
            ctx.args.session_timeout_ms.to_string(),
        );
    let consumer: BaseConsumer<DefaultConsumerContext> = cfg.create()?;
    consumer.subscribe(&[topic])?;
    let n = ctx.args.records;
    let stall = Duration::from_secs(ctx.args.stall_secs);
    let (clk, broker) = (ctx.clk_tck, ctx.args.broker_pid);
    let counted = tokio::task::spawn_blocking(move || {
        let r = count_records(&consumer, n, stall, || CpuProbe::start(clk, None, broker));
        // Leaving the group can take a while: never wait for it.
        std::thread::spawn(move || drop(consumer));
        r
    })
    .await??;
    let (records, first_after, transfer, cpu) = counted;
    Ok(Ceiling {
        records,
        first_after,
        transfer,
        cpu,
    })
}

/// Polls until `n` records arrived. Returns (records, time to the first one,
/// time from the first to the nth, CPU use from the first to the nth).
fn count_records(
    consumer: &BaseConsumer<DefaultConsumerContext>,
    n: u64,
    stall: Duration,
    probe: impl FnOnce() -> CpuProbe,
) -> Result<(u64, Duration, Duration, CpuUse)> {
    let started = Instant::now();
    let mut first: Option<Instant> = None;
    let mut probe = Some(probe);
    let mut running: Option<CpuProbe> = None;
    let mut last_progress = Instant::now();
    let mut count = 0u64;
    let join_allowance = Duration::from_secs(60);
    while count < n {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                if m.payload().is_none() {
                    bail!("record without value at {}:{}", m.partition(), m.offset());
                }
                count += 1;
                if let Some(start) = probe.take() {
                    running = Some(start());
                }
                let now = Instant::now();
                first.get_or_insert(now);
                last_progress = now;
            }
            Some(Err(e)) => progress(format!("ceiling consumer: {e}")),
            None => {}
        }
        let waited = last_progress.elapsed();
        if (first.is_some() && waited > stall) || waited > join_allowance + stall {
            bail!("ceiling consumer stalled at {count} of {n} records");
        }
    }
    let first = first.context("no record consumed")?;
    let transfer = first.elapsed();
    let cpu = running.map(|p| p.finish()).unwrap_or_default();
    Ok((count, first - started, transfer, cpu))
}

// ---------------------------------------------------------------------------
// The bridge subprocess and its HTTP endpoints
// ---------------------------------------------------------------------------

/// A running bridge. Killed on drop if still alive.
struct Bridge {
    child: Child,
    port: u16,
    log: PathBuf,
}

struct BridgeSpec<'a> {
    topic: &'a str,
    group: &'a str,
    session_timeout_ms: u64,
    queue_frames: Option<usize>,
    log_name: String,
}

impl Bridge {
    fn spawn(ctx: &Ctx, spec: &BridgeSpec<'_>) -> Result<Self> {
        let port = free_port()?;
        let log = ctx.log_dir.join(&spec.log_name);
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut props = format!("session.timeout.ms={}", spec.session_timeout_ms);
        if !ctx.args.bridge_kafka_properties.trim().is_empty() {
            props.push(',');
            props.push_str(ctx.args.bridge_kafka_properties.trim());
        }
        let mut cmd = Command::new(&ctx.bridge_bin);
        cmd.arg("serve")
            .env_clear()
            .env("KAFKA_BROKERS", &ctx.args.brokers)
            .env("KAFKA_TOPIC", spec.topic)
            .env("KAFKA_GROUP_ID", spec.group)
            .env("KAFKA_PROPERTIES", props)
            .env("KAFKA_AUTO_OFFSET_RESET", "earliest")
            .env("WEBSOCKET_HOST", "127.0.0.1")
            .env("WEBSOCKET_PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        if let Some(q) = spec.queue_frames {
            cmd.env("WEBSOCKET_CLIENT_QUEUE_FRAMES", q.to_string())
                .env("WEBSOCKET_CLIENT_QUEUE_BYTES", (q * 1024).to_string());
        }
        if let Ok(v) = std::env::var("RUST_LOG") {
            cmd.env("RUST_LOG", v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", ctx.bridge_bin.display()))?;
        Ok(Self { child, port, log })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits until `/health/live` answers.
    async fn wait_http(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.exited() {
                bail!(
                    "bridge exited during start-up ({st}); see {}",
                    self.log.display()
                );
            }
            if let Ok((200, _)) = http_get(self.port, "/health/live").await {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "bridge HTTP not up after {timeout:?}; see {}",
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn health(&self) -> Result<Health> {
        let (code, body) = http_get(self.port, "/health").await?;
        let v: Value =
            serde_json::from_str(&body).with_context(|| format!("/health ({code}): {body}"))?;
        let num = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
        Ok(Health {
            connected_clients: num("connected_clients"),
            assigned_partitions: num("assigned_partitions"),
            records_processed: num("records_processed"),
        })
    }

    /// Delivery counters from `/metrics`.
    async fn counters(&self) -> Result<Counters> {
        let (_, body) = http_get(self.port, "/metrics").await?;
        let client_label = format!("reason=\"{}\"", telemetry::DROP_CLIENT_QUEUE_FULL);
        Ok(Counters {
            dropped_client_queue: sum_metric(&body, telemetry::DROPPED_MESSAGES, &client_label),
            dropped_all: sum_metric(&body, telemetry::DROPPED_MESSAGES, ""),
            frames_sent: sum_metric(&body, telemetry::FRAMES_SENT, ""),
        })
    }

    /// SIGTERM, up to 10 s for a clean exit, then SIGKILL.
    async fn stop(&mut self) -> Option<ExitStatus> {
        if let Some(st) = self.exited() {
            return Some(st);
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(st) = self.exited() {
                return Some(st);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        progress(format!(
            "bridge pid {} did not stop in 10 s: killing",
            self.pid()
        ));
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Counters read from `/metrics` (None: not exported).
#[derive(Clone, Copy, Default)]
struct Counters {
    /// `websocket_dropped_messages_total{reason=<client queue full>}`.
    dropped_client_queue: Option<f64>,
    /// `websocket_dropped_messages_total`, every reason.
    dropped_all: Option<f64>,
    frames_sent: Option<f64>,
}

impl Counters {
    fn json(&self) -> Value {
        json!({
            "dropped_client_queue_full": self.dropped_client_queue,
            "dropped_all_reasons": self.dropped_all,
            "frames_sent": self.frames_sent,
        })
    }
}

struct Health {
    connected_clients: u64,
    assigned_partitions: u64,
    records_processed: u64,
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// A minimal HTTP/1.1 GET on 127.0.0.1 (the bench has no HTTP client dependency).
async fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    let exchange = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
        let req =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .with_context(|| format!("GET {path} timed out"))??;
    parse_http_response(&buf)
}

fn parse_http_response(buf: &[u8]) -> Result<(u16, String)> {
    let text = String::from_utf8_lossy(buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("HTTP response without end of headers")?;
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .context("HTTP response without status")?
        .parse()
        .context("HTTP status is not a number")?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_string()
    };
    Ok((code, body))
}

fn dechunk(mut rest: &str) -> Result<String> {
    let mut out = String::new();
    loop {
        let (size_line, after) = rest.split_once("\r\n").context("bad chunk header")?;
        let size_hex = size_line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16).context("bad chunk size")?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(after.get(..size).context("short chunk")?);
        rest = after.get(size..).context("short chunk")?;
        rest = rest.strip_prefix("\r\n").unwrap_or(rest);
    }
}

/// Sum of a metric's samples whose labels contain `label`; None if it has none.
fn sum_metric(body: &str, name: &str, label: &str) -> Option<f64> {
    let values: Vec<f64> = body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter(|l| l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().fold(0.0, |a, b| a + b))
}

// ---------------------------------------------------------------------------
// CPU accounting from /proc
// ---------------------------------------------------------------------------

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = stat.rsplit_once(") ")?.1;
    let f: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields 14 and 15 of stat; after "pid (comm) " they are at 11 and 12.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Busy ticks of the whole machine (all cores), from /proc/stat.
fn system_busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().next()?.strip_prefix("cpu ")?;
    let f: Vec<u64> = cpu
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    Some(f.get(..8)?.iter().sum::<u64>() - f[3] - f[4])
}

/// CPU seconds used during a window, per process, and the rest of the
/// machine ("other": anything else running, e.g. a build).
#[derive(Clone, Copy, Default)]
struct CpuUse {
    bridge: Option<f64>,
    bench: Option<f64>,
    broker: Option<f64>,
    other: Option<f64>,
    wall_secs: f64,
}

impl CpuUse {
    /// Share of one core over the window (2 cores = 200 %).
    fn pct(&self, secs: Option<f64>) -> Option<f64> {
        secs.map(|s| 100.0 * s / self.wall_secs.max(1e-9))
    }
    fn json(&self) -> Value {
        json!({
            "window_s": self.wall_secs,
            "bridge_cpu_s": self.bridge, "bench_cpu_s": self.bench,
            "broker_cpu_s": self.broker, "other_cpu_s": self.other,
            "bridge_cpu_pct": self.pct(self.bridge), "bench_cpu_pct": self.pct(self.bench),
            "broker_cpu_pct": self.pct(self.broker), "other_cpu_pct": self.pct(self.other),
        })
    }
}

/// Reads /proc at the start and the end of a measured window.
struct CpuProbe {
    clk: f64,
    pids: [Option<String>; 3],
    start: [Option<u64>; 3],
    system_start: Option<u64>,
    started: Instant,
}

impl CpuProbe {
    fn start(clk: f64, bridge_pid: Option<u32>, broker_pid: Option<u32>) -> Self {
        let pids = [
            bridge_pid.map(|p| p.to_string()),
            Some("self".to_string()),
            broker_pid.map(|p| p.to_string()),
        ];
        let start = pids.clone().map(|p| p.as_deref().and_then(cpu_ticks));
        Self {
            clk,
            pids,
            start,
            system_start: system_busy_ticks(),
            started: Instant::now(),
        }
    }

    fn finish(&self) -> CpuUse {
        let used = |i: usize| -> Option<f64> {
            let end = cpu_ticks(self.pids[i].as_deref()?)?;
            Some(end.saturating_sub(self.start[i]?) as f64 / self.clk)
        };
        let (bridge, bench, broker) = (used(0), used(1), used(2));
        let system = system_busy_ticks()
            .zip(self.system_start)
            .map(|(e, s)| e.saturating_sub(s) as f64 / self.clk);
        let known = bridge.unwrap_or(0.0) + bench.unwrap_or(0.0) + broker.unwrap_or(0.0);
        CpuUse {
            bridge,
            bench,
            broker,
            other: system.map(|s| (s - known).max(0.0)),
            wall_secs: self.started.elapsed().as_secs_f64(),
        }
    }
}

// ---------------------------------------------------------------------------
// WebSocket clients
// ---------------------------------------------------------------------------

/// Connects one client and reads its `hello`.
async fn connect_client(port: u16) -> Result<Ws> {
    let url = format!("ws://127.0.0.1:{port}/ws?format=binary");
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(url.as_str()),
    )
    .await
    .context("WebSocket connect timed out")??;
    let first = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .context("no hello within 10 s")?
        .context("connection closed before hello")??;
    let Message::Text(t) = first else {
        bail!("first message is not the JSON hello");
    };
    let hello: Value = serde_json::from_str(t.as_str()).context("hello is not JSON")?;
    if hello.get("type").and_then(Value::as_str) != Some("hello") {
        bail!("first message is not a hello: {}", t.as_str());
    }
    Ok(ws)
}

async fn connect_clients(port: u16, n: usize) -> Result<Vec<Ws>> {
    futures_util::future::try_join_all((0..n).map(|_| connect_client(port))).await
}

/// What one ingest client saw.
#[derive(Default)]
struct Tally {
    frames: u64,
    first: Option<Instant>,
    nth: Option<Instant>,
    lagged_dropped: u64,
    samples: Vec<Bytes>,
    end: String,
}

/// Counts binary data frames until `stop`. Keeps every `sample_every`-th frame.
async fn count_frames(
    mut ws: Ws,
    n: u64,
    sample_every: Option<u64>,
    seen: Arc<AtomicU64>,
    stop: CancellationToken,
) -> Tally {
    let mut t = Tally::default();
    t.end = loop {
        let msg = tokio::select! {
            biased;
            _ = stop.cancelled() => break "stopped".to_string(),
            m = ws.next() => m,
        };
        match msg {
            None => break "connection ended".to_string(),
            Some(Err(e)) => break format!("error: {e}"),
            Some(Ok(Message::Binary(b))) => {
                t.frames += 1;
                let now = Instant::now();
                t.first.get_or_insert(now);
                if t.frames == n {
                    t.nth = Some(now);
                }
                if sample_every.is_some_and(|k| (t.frames - 1) % k == 0) {
                    t.samples.push(b);
                }
                seen.store(t.frames, Ordering::Relaxed);
            }
            Some(Ok(Message::Text(s))) => {
                if let Ok(v) = serde_json::from_str::<Value>(s.as_str()) {
                    if v.get("type").and_then(Value::as_str) == Some("lagged") {
                        t.lagged_dropped += v.get("dropped").and_then(Value::as_u64).unwrap_or(0);
                    }
                }
            }
            Some(Ok(Message::Close(c))) => {
                break format!("closed by server: {c:?}");
            }
            Some(Ok(_)) => {}
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(200), ws.close(None)).await;
    t
}

/// Parses sampled frames as envelope + DashStream record. Returns (ok, failed, first error).
fn verify_samples(samples: &[Bytes], partitions: i32) -> (u64, u64, Option<String>) {
    let (mut ok, mut bad, mut first_err) = (0, 0, None);
    for b in samples {
        let r = parse_envelope(b)
            .map_err(|e| e.to_string())
            .and_then(|env| {
                if !(0..partitions).contains(&env.cursor.partition) || env.cursor.offset < 0 {
                    return Err(format!("bad cursor {:?}", env.cursor));
                }
                let d =
                    decode(Some(env.value), &DecodeLimits::default()).map_err(|e| e.to_string())?;
                d.timestamp_us()
                    .map(|_| ())
                    .ok_or_else(|| "record has no producer timestamp".to_string())
            });
        match r {
            Ok(()) => ok += 1,
            Err(e) => {
                bad += 1;
                first_err.get_or_insert(e);
            }
        }
    }
    (ok, bad, first_err)
}

// ---------------------------------------------------------------------------
// Ingest runs
// ---------------------------------------------------------------------------

struct Ingest {
    clients: usize,
    records: u64,
    attempts: u32,
    transfer: Option<Duration>,
    frames_min: u64,
    frames_max: u64,
    complete_clients: usize,
    first_to_last_finish: Option<Duration>,
    counters: Counters,
    lagged_notices: u64,
    records_processed: u64,
    samples_ok: u64,
    samples_bad: u64,
    sample_error: Option<String>,
    client_ends: Vec<String>,
    cpu: CpuUse,
    log: PathBuf,
}

impl Ingest {
    fn rate(&self) -> Option<f64> {
        self.transfer
            .map(|d| self.records as f64 / d.as_secs_f64().max(1e-9))
    }
}

const MAX_ATTEMPTS: u32 = 3;

fn ingest_queue_frames(a: &Args) -> usize {
    if a.queue_frames > 0 {
        a.queue_frames
    } else {
        2 * a.records as usize + 1024
    }
}

/// One ingest measurement with `clients` clients; restarts (new group, slower
/// join) if the consumer got its partitions before every client was connected.
async fn ingest_run(ctx: &Ctx, topic: &str, clients: usize) -> Result<Ingest> {
    for attempt in 1..=MAX_ATTEMPTS {
        let group = format!("{topic}-ingest-{clients}-{attempt}");
        let spec = BridgeSpec {
            topic,
            group: &group,
            session_timeout_ms: ctx.args.session_timeout_ms * u64::from(attempt),
            queue_frames: Some(ingest_queue_frames(&ctx.args)),
            log_name: format!("bridge-ingest-{clients}-{attempt}.log"),
        };
        let mut bridge = Bridge::spawn(ctx, &spec)?;
        bridge.wait_http(Duration::from_secs(30)).await?;
        let conns = connect_clients(bridge.port, clients).await?;
        let h = bridge.health().await?;
        if h.connected_clients != clients as u64 || h.assigned_partitions != 0 {
            progress(format!(
                "attempt {attempt}: {} of {clients} client(s) connected, {} partition(s) already assigned: restarting with a new group",
                h.connected_clients, h.assigned_partitions
            ));
            drop(conns);
            bridge.stop().await;
            continue;
        }
        progress(format!(
            "ingest, {clients} client(s): all connected before the group join; consuming"
        ));
        let mut r = drive_ingest(ctx, &mut bridge, conns).await?;
        r.attempts = attempt;
        if let Some(st) = bridge.stop().await {
            if !st.success() {
                progress(format!("bridge exited with {st}; see {}", r.log.display()));
            }
        }
        return Ok(r);
    }
    bail!("every client could not connect before the consumer joined, {MAX_ATTEMPTS} times")
}

/// Runs the clients until each has N frames (or progress stalls), then
/// collects the figures from the clients, /health and /metrics.
async fn drive_ingest(ctx: &Ctx, bridge: &mut Bridge, conns: Vec<Ws>) -> Result<Ingest> {
    let n = ctx.args.records;
    let clients = conns.len();
    let stop = CancellationToken::new();
    let mut seen = Vec::with_capacity(clients);
    let mut tasks = Vec::with_capacity(clients);
    for (i, ws) in conns.into_iter().enumerate() {
        let s = Arc::new(AtomicU64::new(0));
        seen.push(s.clone());
        let sample_every = (i == 0).then_some((n / 20).max(1));
        tasks.push(tokio::spawn(count_frames(
            ws,
            n,
            sample_every,
            s,
            stop.clone(),
        )));
    }
    let cpu = wait_until_done(ctx, bridge, &seen, n).await;
    // Let duplicates, if any, arrive before stopping.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    let mut tallies = Vec::with_capacity(clients);
    for t in tasks {
        tallies.push(t.await?);
    }
    let health = bridge.health().await?;
    let counters = bridge.counters().await?;
    Ok(summarize(ctx, bridge, tallies, health, counters, cpu))
}

/// Returns when every client has `n` frames, progress stalls, or the bridge
/// exits; with the CPU use from the first frames (±100 ms) to then.
async fn wait_until_done(
    ctx: &Ctx,
    bridge: &mut Bridge,
    seen: &[Arc<AtomicU64>],
    n: u64,
) -> CpuUse {
    let mut probe: Option<CpuProbe> = None;
    let finish = |p: &Option<CpuProbe>| p.as_ref().map(CpuProbe::finish).unwrap_or_default();
    let stall = Duration::from_secs(ctx.args.stall_secs);
    let join_allowance = Duration::from_millis(ctx.args.session_timeout_ms * MAX_ATTEMPTS as u64);
    let mut last_total = 0;
    let mut last_change = Instant::now();
    let mut started = false;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let counts: Vec<u64> = seen.iter().map(|s| s.load(Ordering::Relaxed)).collect();
        if counts.iter().all(|&c| c >= n) {
            return finish(&probe);
        }
        let total: u64 = counts.iter().sum();
        if total != last_total {
            last_total = total;
            last_change = Instant::now();
            started = true;
            if probe.is_none() {
                probe = Some(CpuProbe::start(
                    ctx.clk_tck,
                    Some(bridge.pid()),
                    ctx.args.broker_pid,
                ));
            }
        }
        let limit = if started {
            stall
        } else {
            stall + join_allowance
        };
        if last_change.elapsed() > limit {
            progress(format!(
                "no progress for {:?}: stopping at {total} frames in all",
                limit
            ));
            return finish(&probe);
        }
        if let Some(st) = bridge.exited() {
            progress(format!("bridge exited ({st}) during the run"));
            return finish(&probe);
        }
    }
}

fn summarize(
    ctx: &Ctx,
    bridge: &Bridge,
    tallies: Vec<Tally>,
    health: Health,
    counters: Counters,
    cpu: CpuUse,
) -> Ingest {
    let n = ctx.args.records;
    let clients = tallies.len();
    let first = tallies.iter().filter_map(|t| t.first).min();
    let nth: Vec<Instant> = tallies.iter().filter_map(|t| t.nth).collect();
    let complete_clients = nth.len();
    let all_done = complete_clients == clients;
    let transfer = match (first, nth.iter().max()) {
        (Some(f), Some(&l)) if all_done => Some(l - f),
        _ => None,
    };
    let first_to_last_finish = match (nth.iter().min(), nth.iter().max()) {
        (Some(&a), Some(&b)) if all_done => Some(b - a),
        _ => None,
    };
    let (samples_ok, samples_bad, sample_error) = tallies.first().map_or((0, 0, None), |t| {
        verify_samples(&t.samples, ctx.args.partitions)
    });
    let mut client_ends: Vec<String> = tallies.iter().map(|t| t.end.clone()).collect();
    client_ends.sort();
    client_ends.dedup();
    Ingest {
        clients,
        records: n,
        attempts: 1,
        transfer,
        frames_min: tallies.iter().map(|t| t.frames).min().unwrap_or(0),
        frames_max: tallies.iter().map(|t| t.frames).max().unwrap_or(0),
        complete_clients,
        first_to_last_finish,
        counters,
        lagged_notices: tallies.iter().map(|t| t.lagged_dropped).sum(),
        records_processed: health.records_processed,
        samples_ok,
        samples_bad,
        sample_error,
        client_ends,
        cpu,
        log: bridge.log.clone(),
    }
}

// ---------------------------------------------------------------------------
// Latency run
// ---------------------------------------------------------------------------

/// A latency distribution (µs, sorted).
struct Dist(Vec<i64>);

impl Dist {
    fn new(mut v: Vec<i64>) -> Self {
        v.sort_unstable();
        Self(v)
    }

    /// Nearest-rank percentile, in ms.
    fn pct_ms(&self, p: f64) -> Option<f64> {
        let n = self.0.len();
        let rank = ((p / 100.0) * n as f64).ceil() as usize;
        let i = rank.clamp(1, n.max(1)) - 1;
        self.0.get(i).map(|&us| us as f64 / 1000.0)
    }

    fn max_ms(&self) -> Option<f64> {
        self.0.last().map(|&us| us as f64 / 1000.0)
    }

    fn json(&self) -> Value {
        json!({
            "count": self.0.len(),
            "p50_ms": self.pct_ms(50.0), "p99_ms": self.pct_ms(99.0),
            "p999_ms": self.pct_ms(99.9), "max_ms": self.max_ms(),
        })
    }
}

struct Latency {
    rate: f64,
    secs: u64,
    produced: u64,
    produce_secs: f64,
    received: u64,
    decode_errors: u64,
    counters: Counters,
    /// Producer stamp → bridge client.
    bridge: Dist,
    /// Producer stamp → a bare librdkafka consumer (same topic, same time).
    bare: Dist,
    bare_received: u64,
    /// Producer send → delivery report.
    ack: Dist,
    log: PathBuf,
}

/// What a latency reader saw: (receive time µs, latency µs) per record.
#[derive(Default)]
struct LatencyTally {
    frames: u64,
    decode_errors: u64,
    samples: Vec<(i64, i64)>,
}

impl LatencyTally {
    fn record(&mut self, value: Option<&[u8]>) {
        let received_us = now_us();
        self.frames += 1;
        match value
            .and_then(|v| decode(Some(v), &DecodeLimits::default()).ok())
            .and_then(|d| d.timestamp_us())
        {
            Some(ts) => self.samples.push((received_us, received_us - ts)),
            None => self.decode_errors += 1,
        }
    }

    fn dist(&self) -> Dist {
        Dist::new(self.samples.iter().map(|s| s.1).collect())
    }
}

/// Bridge client: latency of every binary data frame until `expected` or `stop`.
async fn bridge_latencies(
    mut ws: Ws,
    expected: u64,
    seen: Arc<AtomicU64>,
    stop: CancellationToken,
) -> LatencyTally {
    let mut t = LatencyTally::default();
    while t.frames < expected {
        let msg = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            m = ws.next() => m,
        };
        let Some(Ok(msg)) = msg else { break };
        let Message::Binary(b) = msg else { continue };
        t.record(parse_envelope(&b).ok().map(|env| env.value));
        seen.store(t.frames, Ordering::Relaxed);
    }
    let _ = tokio::time::timeout(Duration::from_millis(200), ws.close(None)).await;
    t
}

/// The baseline reader: a bare librdkafka consumer assigned every partition
/// from the beginning (no group join), with the bridge's extra properties.
fn bare_consumer(ctx: &Ctx, topic: &str) -> Result<BaseConsumer<DefaultConsumerContext>> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &ctx.args.brokers)
        .set("group.id", format!("{topic}-bare"))
        .set("enable.auto.commit", "false");
    for kv in ctx.args.bridge_kafka_properties.split(',') {
        if let Some((k, v)) = kv.split_once('=') {
            cfg.set(k.trim(), v.trim());
        }
    }
    let consumer: BaseConsumer<DefaultConsumerContext> = cfg.create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..ctx.args.partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    Ok(consumer)
}

fn bare_latencies(
    consumer: &BaseConsumer<DefaultConsumerContext>,
    expected: u64,
    stop: &CancellationToken,
) -> LatencyTally {
    let mut t = LatencyTally::default();
    while t.frames < expected && !stop.is_cancelled() {
        match consumer.poll(Duration::from_millis(50)) {
            Some(Ok(m)) => t.record(m.payload()),
            Some(Err(e)) => progress(format!("baseline consumer: {e}")),
            None => {}
        }
    }
    t
}

async fn latency_run(ctx: &Ctx, topic: &str) -> Result<Latency> {
    let group = format!("{topic}-group");
    let spec = BridgeSpec {
        topic,
        group: &group,
        session_timeout_ms: ctx.args.session_timeout_ms,
        queue_frames: None,
        log_name: "bridge-latency.log".into(),
    };
    let mut bridge = Bridge::spawn(ctx, &spec)?;
    bridge.wait_http(Duration::from_secs(30)).await?;
    let ws = connect_client(bridge.port).await?;
    wait_ready(&mut bridge, Duration::from_secs(60)).await?;

    let expected = (ctx.args.latency_rate * ctx.args.latency_secs as f64).round() as u64;
    let stop = CancellationToken::new();
    let seen = Arc::new(AtomicU64::new(0));
    let client = tokio::spawn(bridge_latencies(ws, expected, seen.clone(), stop.clone()));
    let consumer = bare_consumer(ctx, topic)?;
    let bare_stop = stop.clone();
    let bare = tokio::task::spawn_blocking(move || {
        let t = bare_latencies(&consumer, expected, &bare_stop);
        std::thread::spawn(move || drop(consumer));
        t
    });
    // Let both fetchers reach the (empty) end of the partitions.
    tokio::time::sleep(Duration::from_secs(1)).await;

    progress(format!(
        "latency: producing {expected} records at {} records/s",
        ctx.args.latency_rate
    ));
    let (produced, produce_secs, ack) = produce_paced(ctx, topic, expected).await?;
    wait_for_count(
        &seen,
        expected,
        Duration::from_secs(ctx.args.stall_secs.min(10)),
    )
    .await;
    // The baseline consumer gets a moment to catch up too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    let (tally, bare) = (client.await?, bare.await?);
    let counters = bridge.counters().await?;
    bridge.stop().await;
    if let Some(path) = &ctx.args.latency_dump {
        dump_latencies(path, &tally, &bare)?;
    }
    Ok(Latency {
        rate: ctx.args.latency_rate,
        secs: ctx.args.latency_secs,
        produced,
        produce_secs,
        received: tally.frames,
        decode_errors: tally.decode_errors + bare.decode_errors,
        counters,
        bridge: tally.dist(),
        bare: bare.dist(),
        bare_received: bare.frames,
        ack,
        log: bridge.log.clone(),
    })
}

/// Writes `source receive_unix_us latency_us` lines, in arrival order.
fn dump_latencies(path: &Path, bridge: &LatencyTally, bare: &LatencyTally) -> Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    for (name, t) in [("bridge", bridge), ("bare", bare)] {
        for (at, lat) in &t.samples {
            writeln!(f, "{name} {at} {lat}")?;
        }
    }
    f.flush()?;
    Ok(())
}

/// Waits until `/health/ready` says the consumer has partitions.
async fn wait_ready(bridge: &mut Bridge, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok((200, _)) = http_get(bridge.port, "/health/ready").await {
            return Ok(());
        }
        if let Some(st) = bridge.exited() {
            bail!("bridge exited ({st}); see {}", bridge.log.display());
        }
        if Instant::now() > deadline {
            bail!(
                "bridge not ready after {timeout:?}; see {}",
                bridge.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Produces `count` fresh records at the configured rate; each carries its
/// creation time (µs) in its DashStream header. Returns (acknowledged,
/// seconds, ack latencies).
async fn produce_paced(ctx: &Ctx, topic: &str, count: u64) -> Result<(u64, f64, Dist)> {
    let p = producer(&ctx.args.brokers, ctx.args.latency_linger_ms, true)?;
    let interval = Duration::from_secs_f64(1.0 / ctx.args.latency_rate);
    let mut gen = Generator::new(SynthConfig {
        thread_prefix: "latency".into(),
        ..Default::default()
    });
    let started = Instant::now();
    for i in 1..=count {
        let due = started + interval.mul_f64(i as f64);
        let now = Instant::now();
        if due > now {
            tokio::time::sleep(due - now).await;
        }
        let rec = gen.next().ok_or_else(|| anyhow!("generator ended"))?;
        send_record(&p, topic, rec.key.as_bytes(), &rec.value).await?;
    }
    let secs = started.elapsed().as_secs_f64();
    let acked = flush(p.clone(), count).await?;
    let ack = p
        .context()
        .ack_latency_us
        .lock()
        .map(|v| v.clone())
        .unwrap_or_default();
    Ok((acked, secs, Dist::new(ack)))
}

/// Waits until `seen` reaches `n`, or no progress for `stall`.
async fn wait_for_count(seen: &AtomicU64, n: u64, stall: Duration) {
    let mut last = seen.load(Ordering::Relaxed);
    let mut last_change = Instant::now();
    while last < n && last_change.elapsed() < stall {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = seen.load(Ordering::Relaxed);
        if now != last {
            last = now;
            last_change = Instant::now();
        }
    }
}

// ---------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------

fn fmt_opt(v: Option<f64>, prec: usize) -> String {
    v.map_or("-".to_string(), |x| format!("{x:.prec$}"))
}

fn print_report(
    ctx: &Ctx,
    produced: &Produced,
    ceiling: &Ceiling,
    ingest: &[Ingest],
    lat: &Latency,
) {
    let a = &ctx.args;
    println!();
    println!(
        "kwb-bench: {} records (avg value {:.0} B), {} partitions, broker {}; produced at {:.0} records/s",
        a.records,
        produced.avg_value_bytes(),
        a.partitions,
        a.brokers,
        produced.rate()
    );
    println!();
    print_throughput(ceiling, ingest);
    println!();
    print_latency(lat);
    warn_if_busy(ceiling, ingest);
    println!();
}

/// Other processes competing for the CPU make every figure an underestimate: say so.
fn warn_if_busy(ceiling: &Ceiling, ingest: &[Ingest]) {
    let phases = std::iter::once(("ceiling".to_string(), &ceiling.cpu)).chain(
        ingest
            .iter()
            .map(|r| (format!("{} client(s)", r.clients), &r.cpu)),
    );
    for (name, cpu) in phases {
        if let Some(p) = cpu.pct(cpu.other).filter(|&p| p > 20.0) {
            println!(
                "WARNING: other processes used {p:.0}% of a core during the {name} run: its figures are too low"
            );
        }
    }
}

const THROUGHPUT_ROW: usize = 9;

fn throughput_row(cells: [String; THROUGHPUT_ROW]) {
    let [a, b, c, d, e, f, g, h, i] = cells;
    println!("{a:<22} {b:>10} {c:>9} {d:>8} {e:>15} {f:>7} {g:>10} {h:>9} {i:>18}");
}

fn print_throughput(ceiling: &Ceiling, ingest: &[Ingest]) {
    let pct = |c: &CpuUse, v: Option<f64>| c.pct(v).map_or("-".to_string(), |p| format!("{p:.0}%"));
    let cpu = |c: &CpuUse| [c.bridge, c.bench, c.broker, c.other].map(|v| pct(c, v));
    throughput_row(
        [
            "throughput",
            "records/s",
            "frames/s",
            "seconds",
            "frames/client",
            "dropped",
            "bridge CPU",
            "bench CPU",
            "broker (other) CPU",
        ]
        .map(String::from),
    );
    let [_, bench, broker, other] = cpu(&ceiling.cpu);
    throughput_row([
        "ceiling (librdkafka)".into(),
        format!("{:.0}", ceiling.rate()),
        "-".into(),
        format!("{:.2}", ceiling.transfer.as_secs_f64()),
        ceiling.records.to_string(),
        "-".into(),
        "-".into(),
        bench,
        format!("{broker} (other {other})"),
    ]);
    for r in ingest {
        let [bridge, bench, broker, other] = cpu(&r.cpu);
        let frames = if r.frames_min == r.frames_max {
            r.frames_min.to_string()
        } else {
            format!("{}..{}", r.frames_min, r.frames_max)
        };
        throughput_row([
            format!("bridge, {} client(s)", r.clients),
            fmt_opt(r.rate(), 0),
            fmt_opt(r.rate().map(|x| x * r.clients as f64), 0),
            fmt_opt(r.transfer.map(|d| d.as_secs_f64()), 2),
            frames,
            fmt_opt(r.counters.dropped_all, 0),
            bridge,
            bench,
            format!("{broker} (other {other})"),
        ]);
    }
    println!(
        "CPU: share of one core over the measured window (2 cores = 200%); the ceiling consumer runs inside the bench; other = rest of the machine."
    );
    for r in ingest {
        println!(
            "  {} client(s): {}/{} complete, attempts {}, records_processed {}, frames_sent {}, dropped (queue full) {}, lagged notices {}, samples parsed {}/{}{}, first-to-last client finish {} s, client ends {:?}",
            r.clients,
            r.complete_clients,
            r.clients,
            r.attempts,
            r.records_processed,
            fmt_opt(r.counters.frames_sent, 0),
            fmt_opt(r.counters.dropped_client_queue, 0),
            r.lagged_notices,
            r.samples_ok,
            r.samples_ok + r.samples_bad,
            r.sample_error
                .as_ref()
                .map_or(String::new(), |e| format!(" (first error: {e})")),
            fmt_opt(r.first_to_last_finish.map(|d| d.as_secs_f64()), 3),
            r.client_ends,
        );
    }
}

fn print_latency(lat: &Latency) {
    println!(
        "latency at {:.0} records/s for {} s: produced {} in {:.2} s; bridge client received {} (dropped {}); baseline consumer received {}",
        lat.rate,
        lat.secs,
        lat.produced,
        lat.produce_secs,
        lat.received,
        fmt_opt(lat.counters.dropped_all, 0),
        lat.bare_received
    );
    println!(
        "{:<42} {:>9} {:>9} {:>9} {:>9}",
        "latency", "p50 ms", "p99 ms", "p99.9 ms", "max ms"
    );
    for (name, d) in [
        ("producer stamp → bridge client", &lat.bridge),
        ("producer stamp → bare librdkafka consumer", &lat.bare),
        ("producer send → broker ack", &lat.ack),
    ] {
        println!(
            "{:<42} {:>9} {:>9} {:>9} {:>9}",
            name,
            fmt_opt(d.pct_ms(50.0), 2),
            fmt_opt(d.pct_ms(99.0), 2),
            fmt_opt(d.pct_ms(99.9), 2),
            fmt_opt(d.max_ms(), 2),
        );
    }
    if lat.decode_errors > 0 {
        println!(
            "  {} latency records could not be decoded",
            lat.decode_errors
        );
    }
}

fn report_json(
    ctx: &Ctx,
    topic: &str,
    produced: &Produced,
    ceiling: &Ceiling,
    ingest: &[Ingest],
    lat: &Latency,
) -> Value {
    let a = &ctx.args;
    let ingest: Vec<Value> = ingest
        .iter()
        .map(|r| {
            json!({
                "clients": r.clients,
                "records_per_s": r.rate(),
                "frames_per_s": r.rate().map(|x| x * r.clients as f64),
                "transfer_s": r.transfer.map(|d| d.as_secs_f64()),
                "complete_clients": r.complete_clients,
                "frames_min": r.frames_min,
                "frames_max": r.frames_max,
                "metrics": r.counters.json(),
                "lagged_notices_dropped": r.lagged_notices,
                "bridge_records_processed": r.records_processed,
                "sample_frames_ok": r.samples_ok,
                "sample_frames_bad": r.samples_bad,
                "first_to_last_client_finish_s": r.first_to_last_finish.map(|d| d.as_secs_f64()),
                "attempts": r.attempts,
                "client_ends": r.client_ends,
                "cpu": r.cpu.json(),
                "bridge_log": r.log,
            })
        })
        .collect();
    json!({
        "kwb_bench": 1,
        "unix_ms": unix_ms() as u64,
        "brokers": a.brokers,
        "topic": topic,
        "records": a.records,
        "partitions": a.partitions,
        "avg_value_bytes": produced.avg_value_bytes(),
        "produce_records_per_s": produced.rate(),
        "ceiling": {
            "records_per_s": ceiling.rate(),
            "transfer_s": ceiling.transfer.as_secs_f64(),
            "first_record_after_s": ceiling.first_after.as_secs_f64(),
            "cpu": ceiling.cpu.json(),
        },
        "ingest": ingest,
        "latency": {
            "rate": lat.rate,
            "secs": lat.secs,
            "producer_linger_ms": a.latency_linger_ms,
            "produced": lat.produced,
            "produce_s": lat.produce_secs,
            "received": lat.received,
            "decode_errors": lat.decode_errors,
            "metrics": lat.counters.json(),
            "bare_received": lat.bare_received,
            "bridge_client": lat.bridge.json(),
            "bare_consumer": lat.bare.json(),
            "producer_ack": lat.ack.json(),
            "bridge_log": lat.log,
        },
        "ingest_queue_frames": ingest_queue_frames(a),
        "session_timeout_ms": a.session_timeout_ms,
        "bridge_kafka_properties": a.bridge_kafka_properties,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_responses_plain_and_chunked() {
        let r = parse_http_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!(r, (200, "{}".to_string()));
        let r = parse_http_response(
            b"HTTP/1.1 503 X\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r, (503, "abcde".to_string()));
        assert!(parse_http_response(b"garbage").is_err());
    }

    #[test]
    fn metric_sum_matches_name_and_label() {
        let body = "# TYPE x counter\nx{reason=\"client_queue_full\"} 3\nx{reason=\"other\"} 5\nx_total 9\n";
        assert_eq!(sum_metric(body, "x", "client_queue_full"), Some(3.0));
        assert_eq!(sum_metric(body, "x", ""), Some(8.0));
        assert_eq!(sum_metric(body, "y", ""), None);
    }
}
