//! The bridge under test as a subprocess: its spec, `/health` and
//! `/metrics` readings, and CPU accounting from /proc.

use super::*;

/// A running bridge. Killed on drop if still alive.
pub(crate) struct Bridge {
    pub(crate) child: Child,
    pub(crate) port: u16,
    pub(crate) log: PathBuf,
}

pub(crate) struct BridgeSpec<'a> {
    pub(crate) topic: &'a str,
    pub(crate) group: &'a str,
    pub(crate) session_timeout_ms: u64,
    pub(crate) log_name: String,
}

impl Bridge {
    pub(crate) fn spawn(ctx: &Ctx, spec: &BridgeSpec<'_>) -> Result<Self> {
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
        if let Ok(v) = std::env::var("RUST_LOG") {
            cmd.env("RUST_LOG", v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", ctx.bridge_bin.display()))?;
        Ok(Self { child, port, log })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits until `/health/live` answers.
    pub(crate) async fn wait_http(&mut self, timeout: Duration) -> Result<()> {
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

    pub(crate) async fn health(&self) -> Result<Health> {
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
    pub(crate) async fn counters(&self) -> Result<Counters> {
        let (_, body) = http_get(self.port, "/metrics").await?;
        let client_label = format!("reason=\"{}\"", telemetry::DROP_LAGGED_RECEIVER);
        Ok(Counters {
            dropped_client_queue: sum_metric(&body, telemetry::DROPPED_MESSAGES, &client_label),
            dropped_all: sum_metric(&body, telemetry::DROPPED_MESSAGES, ""),
            frames_sent: sum_metric(&body, telemetry::FRAMES_SENT, ""),
            caught_up: sum_metric(&body, telemetry::CLIENT_LAG_MESSAGES, ""),
            kafka_hits: sum_metric(&body, telemetry::REPLAY_KAFKA_HITS, ""),
        })
    }

    /// SIGTERM, up to 10 s for a clean exit, then SIGKILL.
    pub(crate) async fn stop(&mut self) -> Option<ExitStatus> {
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
pub(crate) struct Counters {
    /// `websocket_dropped_messages_total{reason=<client queue full>}`.
    pub(crate) dropped_client_queue: Option<f64>,
    /// `websocket_dropped_messages_total`, every reason.
    pub(crate) dropped_all: Option<f64>,
    pub(crate) frames_sent: Option<f64>,
    /// `websocket_client_lag_messages_total`: records sessions read back from Redis or Kafka.
    pub(crate) caught_up: Option<f64>,
    /// `replay_buffer_kafka_hits_total`.
    pub(crate) kafka_hits: Option<f64>,
}

impl Counters {
    pub(crate) fn json(&self) -> Value {
        json!({
            "dropped_client_queue_full": self.dropped_client_queue,
            "dropped_all_reasons": self.dropped_all,
            "frames_sent": self.frames_sent,
            "caught_up": self.caught_up,
            "kafka_hits": self.kafka_hits,
        })
    }
}

pub(crate) struct Health {
    pub(crate) connected_clients: u64,
    pub(crate) assigned_partitions: u64,
    pub(crate) records_processed: u64,
}

pub(crate) fn free_port() -> Result<u16> {
    Ok(kwb_testkit::net::free_port()?)
}

pub(crate) async fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    kwb_testkit::http::get(port, path)
        .await
        .with_context(|| format!("GET {path}"))
}

pub(crate) use kwb_testkit::prom::sum as sum_metric;

// ---------------------------------------------------------------------------
// CPU accounting from /proc
// ---------------------------------------------------------------------------

pub(crate) fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of a process, in clock ticks.
pub(crate) fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = stat.rsplit_once(") ")?.1;
    let f: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields 14 and 15 of stat; after "pid (comm) " they are at 11 and 12.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Busy ticks of the whole machine (all cores), from /proc/stat.
pub(crate) fn system_busy_ticks() -> Option<u64> {
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
pub(crate) struct CpuUse {
    pub(crate) bridge: Option<f64>,
    pub(crate) bench: Option<f64>,
    pub(crate) broker: Option<f64>,
    pub(crate) other: Option<f64>,
    pub(crate) wall_secs: f64,
}

impl CpuUse {
    /// Share of one core over the window (2 cores = 200 %).
    pub(crate) fn pct(&self, secs: Option<f64>) -> Option<f64> {
        secs.map(|s| 100.0 * s / self.wall_secs.max(1e-9))
    }
    pub(crate) fn json(&self) -> Value {
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
pub(crate) struct CpuProbe {
    pub(crate) clk: f64,
    pub(crate) pids: [Option<String>; 3],
    pub(crate) start: [Option<u64>; 3],
    pub(crate) system_start: Option<u64>,
    pub(crate) started: Instant,
}

impl CpuProbe {
    pub(crate) fn start(clk: f64, bridge_pid: Option<u32>, broker_pid: Option<u32>) -> Self {
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

    pub(crate) fn finish(&self) -> CpuUse {
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
