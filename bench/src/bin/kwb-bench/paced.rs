//! Live fan-out at a steady rate: C clients connected to a bridge with its
//! default settings while R records/s are produced for S seconds (10,000/s
//! × 10 s to 50 clients by default). What a user would see: frames lost per
//! client and how many clients got every record.

use super::*;

pub(crate) struct Paced {
    pub(crate) clients: usize,
    pub(crate) rate: f64,
    pub(crate) secs: u64,
    pub(crate) produced: u64,
    pub(crate) produce_secs: f64,
    pub(crate) complete_clients: usize,
    /// Frames lost per client: min, median, max.
    pub(crate) lost: (u64, u64, u64),
    pub(crate) counters: Counters,
    pub(crate) cpu: CpuUse,
    pub(crate) client_ends: Vec<String>,
}

impl Paced {
    pub(crate) fn json(&self) -> Value {
        json!({
            "clients": self.clients,
            "rate": self.rate,
            "secs": self.secs,
            "produced": self.produced,
            "produce_s": self.produce_secs,
            "complete_clients": self.complete_clients,
            "lost_per_client": {"min": self.lost.0, "median": self.lost.1, "max": self.lost.2},
            "metrics": self.counters.json(),
            "bridge_cpu_pct": self.cpu.pct(self.cpu.bridge),
            "bridge_cpu_us_per_record": self.cpu.bridge.map(|s| s * 1e6 / self.produced.max(1) as f64),
            "client_ends": self.client_ends,
        })
    }

    pub(crate) fn print(&self) {
        println!(
            "\nlive fan-out: {} clients, {} records/s for {} s (produced {} in {:.2} s): {}/{} clients got every record; frames lost per client min/median/max {}/{}/{}; caught up from Redis/Kafka {}; bridge CPU {}%; client ends {:?}",
            self.clients,
            self.rate,
            self.secs,
            self.produced,
            self.produce_secs,
            self.complete_clients,
            self.clients,
            self.lost.0,
            self.lost.1,
            self.lost.2,
            fmt_opt(self.counters.caught_up, 0),
            fmt_opt(self.cpu.pct(self.cpu.bridge), 0),
            self.client_ends,
        );
    }
}

pub(crate) async fn paced_run(ctx: &Ctx, topic: &str) -> Result<Paced> {
    let (clients, rate, secs) = (
        ctx.args.paced_clients,
        ctx.args.paced_rate,
        ctx.args.paced_secs,
    );
    let group = format!("{topic}-paced");
    let spec = BridgeSpec {
        topic,
        group: &group,
        session_timeout_ms: ctx.args.session_timeout_ms,
        log_name: "bridge-paced.log".into(),
    };
    let mut bridge = Bridge::spawn(ctx, &spec)?;
    bridge.wait_http(Duration::from_secs(30)).await?;
    let conns = connect_clients(bridge.port, clients).await?;
    wait_ready(&mut bridge, Duration::from_secs(60)).await?;
    // Let the consumer reach the (empty) end of the partitions.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let expected = (rate * secs as f64).round() as u64;
    let stop = CancellationToken::new();
    let mut seen = Vec::with_capacity(clients);
    let mut tasks = Vec::with_capacity(clients);
    for ws in conns {
        let s = Arc::new(AtomicU64::new(0));
        seen.push(s.clone());
        tasks.push(tokio::spawn(count_frames(
            ws,
            expected,
            None,
            s,
            stop.clone(),
        )));
    }
    progress(format!(
        "live fan-out: producing {expected} records at {rate} records/s to {clients} clients"
    ));
    let probe = CpuProbe::start(ctx.clk_tck, Some(bridge.pid()), ctx.args.broker_pid);
    let (produced, produce_secs, _) = produce_paced(ctx, topic, expected, rate).await?;
    // Every client gets a moment to read what is still on its way.
    let deadline = Instant::now() + Duration::from_secs(ctx.args.stall_secs.min(15));
    while Instant::now() < deadline && seen.iter().any(|s| s.load(Ordering::Relaxed) < expected) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cpu = probe.finish();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    let mut tallies = Vec::with_capacity(clients);
    for t in tasks {
        tallies.push(t.await?);
    }
    let counters = bridge.counters().await?;
    bridge.stop().await;
    let mut client_ends: Vec<String> = tallies.iter().map(|t| t.end.clone()).collect();
    client_ends.sort();
    client_ends.dedup();
    Ok(Paced {
        clients,
        rate,
        secs,
        produced,
        produce_secs,
        complete_clients: tallies.iter().filter(|t| t.frames >= expected).count(),
        lost: lost_per_client(expected, tallies.iter().map(|t| t.frames)),
        counters,
        cpu,
        client_ends,
    })
}
