//! Bridge ingest with C clients over the same pre-produced records.

use super::*;

pub(crate) struct Ingest {
    pub(crate) clients: usize,
    pub(crate) records: u64,
    pub(crate) attempts: u32,
    pub(crate) transfer: Option<Duration>,
    pub(crate) frames_min: u64,
    pub(crate) frames_max: u64,
    /// Frames lost per client (N − frames received): min, median, max.
    pub(crate) lost: (u64, u64, u64),
    pub(crate) complete_clients: usize,
    pub(crate) first_to_last_finish: Option<Duration>,
    pub(crate) counters: Counters,
    pub(crate) lagged_notices: u64,
    pub(crate) records_processed: u64,
    pub(crate) samples_ok: u64,
    pub(crate) samples_bad: u64,
    pub(crate) sample_error: Option<String>,
    pub(crate) client_ends: Vec<String>,
    pub(crate) cpu: CpuUse,
    pub(crate) log: PathBuf,
}

impl Ingest {
    pub(crate) fn rate(&self) -> Option<f64> {
        self.transfer
            .map(|d| self.records as f64 / d.as_secs_f64().max(1e-9))
    }
}

pub(crate) const MAX_ATTEMPTS: u32 = 3;

/// One ingest measurement with `clients` clients; restarts (new group, slower
/// join) if the consumer got its partitions before every client was connected.
pub(crate) async fn ingest_run(ctx: &Ctx, topic: &str, clients: usize) -> Result<Ingest> {
    for attempt in 1..=MAX_ATTEMPTS {
        let group = format!("{topic}-ingest-{clients}-{attempt}");
        let spec = BridgeSpec {
            topic,
            group: &group,
            session_timeout_ms: ctx.args.session_timeout_ms * u64::from(attempt),
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
pub(crate) async fn drive_ingest(ctx: &Ctx, bridge: &mut Bridge, conns: Vec<Ws>) -> Result<Ingest> {
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
pub(crate) async fn wait_until_done(
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

pub(crate) fn summarize(
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
        lost: lost_per_client(n, tallies.iter().map(|t| t.frames)),
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

/// Frames each client did not receive of `n`: (min, median, max).
pub(crate) fn lost_per_client(n: u64, frames: impl Iterator<Item = u64>) -> (u64, u64, u64) {
    let mut lost: Vec<u64> = frames.map(|f| n.saturating_sub(f)).collect();
    lost.sort_unstable();
    match lost.len() {
        0 => (0, 0, 0),
        k => (lost[0], lost[k / 2], lost[k - 1]),
    }
}

impl Ingest {
    /// Bridge CPU per record, in µs, over the measured window.
    pub(crate) fn cpu_us_per_record(&self) -> Option<f64> {
        self.cpu
            .bridge
            .map(|s| s * 1e6 / self.records.max(1) as f64)
    }
}
