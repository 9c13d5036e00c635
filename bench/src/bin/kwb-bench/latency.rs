//! End-to-end latency at a fixed rate, beside a bare consumer of the same records.

use super::*;

/// A latency distribution (µs, sorted).
pub(crate) struct Dist(Vec<i64>);

impl Dist {
    pub(crate) fn new(mut v: Vec<i64>) -> Self {
        v.sort_unstable();
        Self(v)
    }

    /// Nearest-rank percentile, in ms.
    pub(crate) fn pct_ms(&self, p: f64) -> Option<f64> {
        let n = self.0.len();
        let rank = ((p / 100.0) * n as f64).ceil() as usize;
        let i = rank.clamp(1, n.max(1)) - 1;
        self.0.get(i).map(|&us| us as f64 / 1000.0)
    }

    pub(crate) fn max_ms(&self) -> Option<f64> {
        self.0.last().map(|&us| us as f64 / 1000.0)
    }

    pub(crate) fn json(&self) -> Value {
        json!({
            "count": self.0.len(),
            "p50_ms": self.pct_ms(50.0), "p99_ms": self.pct_ms(99.0),
            "p999_ms": self.pct_ms(99.9), "max_ms": self.max_ms(),
        })
    }
}

pub(crate) struct Latency {
    pub(crate) rate: f64,
    pub(crate) secs: u64,
    pub(crate) produced: u64,
    pub(crate) produce_secs: f64,
    pub(crate) received: u64,
    pub(crate) decode_errors: u64,
    pub(crate) counters: Counters,
    /// Producer stamp → bridge client.
    pub(crate) bridge: Dist,
    /// Producer stamp → a bare librdkafka consumer (same topic, same time).
    pub(crate) bare: Dist,
    pub(crate) bare_received: u64,
    /// Producer send → delivery report.
    pub(crate) ack: Dist,
    pub(crate) log: PathBuf,
}

/// What a latency reader saw: (receive time µs, latency µs) per record.
#[derive(Default)]
pub(crate) struct LatencyTally {
    pub(crate) frames: u64,
    pub(crate) decode_errors: u64,
    pub(crate) samples: Vec<(i64, i64)>,
}

impl LatencyTally {
    pub(crate) fn record(&mut self, value: Option<&[u8]>) {
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

    pub(crate) fn dist(&self) -> Dist {
        Dist::new(self.samples.iter().map(|s| s.1).collect())
    }
}

/// Bridge client: latency of every binary data frame until `expected` or `stop`.
pub(crate) async fn bridge_latencies(
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
pub(crate) fn bare_consumer(
    ctx: &Ctx,
    topic: &str,
) -> Result<BaseConsumer<DefaultConsumerContext>> {
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

pub(crate) fn bare_latencies(
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

pub(crate) async fn latency_run(ctx: &Ctx, topic: &str) -> Result<Latency> {
    let group = format!("{topic}-group");
    let spec = BridgeSpec {
        topic,
        group: &group,
        session_timeout_ms: ctx.args.session_timeout_ms,
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
    let (produced, produce_secs, ack) =
        produce_paced(ctx, topic, expected, ctx.args.latency_rate).await?;
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
pub(crate) fn dump_latencies(
    path: &Path,
    bridge: &LatencyTally,
    bare: &LatencyTally,
) -> Result<()> {
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
pub(crate) async fn wait_ready(bridge: &mut Bridge, timeout: Duration) -> Result<()> {
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
pub(crate) async fn produce_paced(
    ctx: &Ctx,
    topic: &str,
    count: u64,
    rate: f64,
) -> Result<(u64, f64, Dist)> {
    let p = producer(&ctx.args.brokers, ctx.args.latency_linger_ms, true)?;
    let interval = Duration::from_secs_f64(1.0 / rate);
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
pub(crate) async fn wait_for_count(seen: &AtomicU64, n: u64, stall: Duration) {
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
