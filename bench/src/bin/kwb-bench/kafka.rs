//! The broker side: topics, the synthetic producer, and the ceiling (a bare
//! librdkafka consumer counting the same records).

use super::*;

/// Creates `name` with the AdminClient, or with scripts/create-topic.sh if
/// that fails; then waits until the metadata shows all partitions.
pub(crate) async fn create_topic(
    brokers: &str,
    name: &str,
    partitions: i32,
) -> Result<&'static str> {
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

pub(crate) async fn create_topic_admin(brokers: &str, name: &str, partitions: i32) -> Result<()> {
    tokio::time::timeout(
        Duration::from_secs(15),
        kwb_testkit::kafka::create_topics(brokers, &[(name, partitions)]),
    )
    .await
    .context("CreateTopics timed out")?
}

pub(crate) fn create_topic_script(brokers: &str, name: &str, partitions: i32) -> Result<()> {
    let in_repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/create-topic.sh");
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

pub(crate) async fn wait_for_partitions(brokers: &str, topic: &str, want: i32) -> Result<()> {
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
pub(crate) struct DeliveryCounter {
    pub(crate) acked: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) first_error: Mutex<Option<String>>,
    pub(crate) keep_ack_latency: bool,
    pub(crate) ack_latency_us: Mutex<Vec<i64>>,
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

pub(crate) fn producer(
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
pub(crate) async fn send_record(
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
pub(crate) async fn flush(p: ThreadedProducer<DeliveryCounter>, expected: u64) -> Result<u64> {
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

pub(crate) struct Produced {
    pub(crate) acked: u64,
    pub(crate) value_bytes: u64,
    pub(crate) secs: f64,
}

impl Produced {
    pub(crate) fn rate(&self) -> f64 {
        self.acked as f64 / self.secs.max(1e-9)
    }
    pub(crate) fn avg_value_bytes(&self) -> f64 {
        self.value_bytes as f64 / (self.acked.max(1)) as f64
    }
}

/// Produces the N records every ceiling and ingest run reads.
pub(crate) async fn pre_produce(ctx: &Ctx, topic: &str) -> Result<Produced> {
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

pub(crate) struct Ceiling {
    pub(crate) records: u64,
    pub(crate) first_after: Duration,
    pub(crate) transfer: Duration,
    pub(crate) cpu: CpuUse,
}

impl Ceiling {
    pub(crate) fn rate(&self) -> f64 {
        self.records as f64 / self.transfer.as_secs_f64().max(1e-9)
    }
}

/// Bare librdkafka consumer: fresh group, from earliest, counts to N.
pub(crate) async fn ceiling_run(ctx: &Ctx, topic: &str) -> Result<Ceiling> {
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
pub(crate) fn count_records(
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
