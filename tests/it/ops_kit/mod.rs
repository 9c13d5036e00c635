//! The operations kit against the real service: `scripts/check-ops.sh` passes (promtool, amtool, compose,
//! dashboard, runbooks); every metric the alert rules, recording rules and the Grafana dashboard query is
//! really exported by a bridge driven through bad records, gaps, a DLQ outage, a halt, the Redis replay
//! tier with a resuming client, and an overload that opens the circuit breaker and refuses a client; and a
//! real Prometheus (the Debian `prometheus` binary) scraping a real bridge with the project's rules raises
//! HighDecodeErrorRate, WebSocketDlqBroken, SequenceGapsDetected and, with two clients in two connection
//! slots, BackpressureCritical, CircuitBreakerOpen, ConnectionsRejected and ConnectionLimitNearlyReached —
//! and nothing while the topic is idle.
//!
//! promtool and prometheus are required (scripts/install-deps.sh installs them), and the broker and Redis of
//! `scripts/services.sh` (`KWB_TEST_BROKERS`, `KWB_TEST_REDIS_URL`): without them these tests fail, they
//! never skip.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use futures_util::StreamExt;
use kafka_ws_bridge::{Generator, SynthConfig};

const ALERT_RULES: &str = "rules/kafka-ws-bridge.alerts.yml";
const RECORDING_RULES: &str = "rules/kafka-ws-bridge.recording.yml";
const DASHBOARD: &str = "deploy/grafana/dashboards/kafka-ws-bridge.json";

/// Series Prometheus makes itself; the bridge does not export them.
const PROMETHEUS_MADE: &[&str] = &["up", "ALERTS", "ALERTS_FOR_STATE"];
/// Target labels Prometheus attaches at scrape time.
const TARGET_LABELS: &[&str] = &["job", "instance"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read_repo_file(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

mod promql;
use promql::*;

// ---------------------------------------------------------------------------------------------------
// (a) scripts/check-ops.sh
// ---------------------------------------------------------------------------------------------------

#[test]
fn check_ops_script_passes() {
    let out = Command::new("bash")
        .arg("scripts/check-ops.sh")
        .current_dir(repo())
        .output()
        .expect("running bash scripts/check-ops.sh");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "scripts/check-ops.sh failed:\n{text}");
    assert!(text.contains("[check-ops] all checks passed"), "{text}");
}

// ---------------------------------------------------------------------------------------------------
// (b) no dead metrics
// ---------------------------------------------------------------------------------------------------

/// Good records over 8 threads with injected gaps, duplicates, reorders and garbage.
fn traffic(n: usize) -> Vec<(Option<String>, Vec<u8>)> {
    Generator::new(SynthConfig {
        threads: 8,
        gap_every: 7,
        duplicate_every: 11,
        reorder_every: 13,
        garbage_every: 9,
        ..Default::default()
    })
    .take(n)
    .map(|r| (Some(r.key), r.value))
    .collect()
}

fn value(m: &HashMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(0.0)
}

fn sum_of(m: &HashMap<String, f64>, name: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| *k == name || k.starts_with(&format!("{name}{{")))
        .map(|(_, v)| v)
        .sum()
}

/// A backpressure level made of connections only: with WEBSOCKET_MAX_CONNECTIONS=2, two clients are a level
/// of 1.0, past BREAKER_CRITICAL (0.95), and the circuit breaker opens within one 500 ms sample.
const OVERLOAD_WEIGHTS: &str = "connections=1,client_queues=0,pipeline_queues=0,memory=0";

async fn wait_for_breaker(bridge: &Bridge, state: f64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let m = bridge.metrics().await;
        if value(&m, "websocket_circuit_breaker_state") == state {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "circuit breaker not in state {state} after {timeout:?}: {m:?}\nlog:\n{}",
            bridge.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a new WebSocket client got.
#[derive(Debug, PartialEq, Eq)]
enum Refused {
    /// Upgraded, then closed with 1013 (circuit breaker open).
    TryAgainLater,
    /// Refused before the upgrade with this HTTP status (503 global limit, 429 per-IP limit).
    Http(u16),
    /// Admitted (it got the hello frame).
    No,
}

async fn knock(url: &str) -> Refused {
    use tokio_tungstenite::tungstenite::{Error, Message};
    match tokio_tungstenite::connect_async(url).await {
        Err(Error::Http(r)) => Refused::Http(r.status().as_u16()),
        Err(e) => panic!("connect {url}: {e}"),
        Ok((mut ws, _)) => match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Close(Some(c))))) if u16::from(c.code) == 1013 => {
                Refused::TryAgainLater
            }
            Ok(Some(Ok(Message::Text(_)))) => Refused::No,
            other => panic!("{url}: expected a hello or close 1013, got {other:?}"),
        },
    }
}

/// Reads a client's frames until `stop`, so that it never falls behind (and is never cut off as slow).
/// Returns whether it was still connected at the end.
fn drain(mut ws: Ws, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<bool> {
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            match tokio::time::timeout(Duration::from_millis(200), ws.next()).await {
                Ok(Some(Ok(_))) | Err(_) => {}
                Ok(None) | Ok(Some(Err(_))) => return false,
            }
        }
        true
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_metric_the_rules_and_dashboard_query_is_exported() {
    let rules = project_rules();
    let recorded: BTreeSet<String> = rules
        .iter()
        .filter(|r| r.kind == Kind::Record)
        .map(|r| r.name.clone())
        .collect();

    // A bridge in trouble: garbage and sequence faults, a DLQ cluster that is not there (fail-open sends
    // time out after 1 s), GAP_POLICY=halt, a client receiving frames (e2e latency and client queue age are
    // measured then), the Redis replay tier with a small memory ring, a client resuming from `earliest`
    // (replay requests, hits and the replay duration histogram), and an overload: 2 connection slots, a
    // backpressure level made of connections only, so the second client takes the level to 1.0 and opens
    // the circuit breaker (transitions to OPEN), and a third client is refused (circuit_open).
    //
    // Histograms are exported only once they hold a sample: the two the rules and the dashboard use
    // (websocket_client_queue_age_seconds, replay_duration_seconds) are recorded by this scenario.
    // app_shutdown_duration_seconds is recorded only as the process exits, after its HTTP server stopped, so
    // no scrape can see it: nothing may reference it (runbooks/README.md, SlowShutdownTime), and if anything
    // did, this test would report it as not exported.
    let redis = std::env::var("KWB_TEST_REDIS_URL").expect(
        "KWB_TEST_REDIS_URL is not set: run with scripts/test.sh (or source the env of scripts/services.sh up)",
    );
    let topic = unique("opskit-metrics");
    create_topic(&topic, 2).await;
    let closed = format!("127.0.0.1:{}", free_port());
    let bridge = Bridge::start(
        &topic,
        &[
            ("KAFKA_DLQ_BROKERS", closed.as_str()),
            ("DLQ_SEND_TIMEOUT_SECS", "1"),
            ("GAP_POLICY", "halt"),
            ("KAFKA_STATS_INTERVAL_MS", "200"),
            ("REDIS_URL", redis.as_str()),
            ("REPLAY_MEMORY_MAX_PER_PARTITION", "20"),
            ("WEBSOCKET_MAX_CONNECTIONS", "2"),
            ("BACKPRESSURE_WEIGHTS", OVERLOAD_WEIGHTS),
            ("BREAKER_OPEN_SECS", "1"),
            // tenant-0 gets a tiny quota: its surplus is rate-limited (dashstream_rate_limit_exceeded_total).
            ("TENANT_RATE_LIMITS", "tenant-0=1:5"),
        ],
    )
    .await;
    let (mut ws, _) = connect(&bridge.ws_url("?format=json")).await;
    let recs = traffic(400);
    produce(&producer(), &topic, &recs).await;
    let _ = collect(&mut ws, 50, Duration::from_secs(5)).await;
    // The second client: a resume from the beginning, and the second of two slots.
    let (mut resumed, _) = connect(&bridge.ws_url("?format=json&resume=earliest")).await;
    let _ = collect(&mut resumed, 400, Duration::from_millis(1500)).await;
    wait_for_breaker(&bridge, 2.0, Duration::from_secs(10)).await;
    assert_eq!(
        knock(&bridge.ws_url("?format=json")).await,
        Refused::TryAgainLater,
        "a third client is refused while the breaker is open"
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    let m = loop {
        let m = bridge.metrics().await;
        let ready = value(&m, "dashstream_sequence_gaps_total") > 0.0
            && sum_of(&m, "websocket_decode_errors_total") > 0.0
            && sum_of(&m, "websocket_dlq_send_failures_total") > 0.0
            && value(&m, "dashstream_halted_threads") > 0.0
            && value(&m, "websocket_e2e_latency_ms_count") > 0.0
            && m.keys()
                .any(|k| k.starts_with("websocket_kafka_consumer_lag{"))
            && value(&m, "websocket_kafka_connected") == 1.0
            && value(&m, "websocket_client_queue_age_seconds_count") > 0.0
            && value(&m, "replay_duration_seconds_count") > 0.0
            && value(&m, "replay_requests_total{from=\"earliest\"}") > 0.0
            && value(&m, "replay_buffer_memory_hits_total")
                + value(&m, "replay_buffer_redis_hits_total")
                + value(&m, "replay_buffer_kafka_hits_total")
                > 0.0
            && value(&m, "replay_buffer_redis_writes_total") > 0.0
            && value(&m, "websocket_backpressure_level") >= 0.95
            && value(&m, "websocket_circuit_breaker_state") == 2.0
            && value(
                &m,
                "websocket_circuit_breaker_transitions_total{from=\"CLOSED\",to=\"OPEN\"}",
            ) > 0.0
            && value(
                &m,
                "websocket_connections_rejected_total{reason=\"circuit_open\"}",
            ) > 0.0;
        if ready {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "scenario did not produce gaps, decode errors, DLQ failures, a halt, latency, lag, queue age, a replay \
             with hits and Redis writes, and an open breaker with a refusal within 30 s: {m:?}\nlog:\n{}",
            bridge.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(m.contains_key("websocket_connected_clients"));

    let (code, body) = http(bridge.port, "GET", "/metrics").await.expect("scrape");
    assert_eq!(code, 200);
    write_artifact("ops-kit-scrape.txt", &body);
    let scrape = parse_scrape(&body);

    let mut exprs: Vec<(String, String)> = rules
        .iter()
        .map(|r| {
            let what = match r.kind {
                Kind::Alert => "alert",
                Kind::Record => "recording rule",
            };
            (format!("{what} {}", r.name), r.expr.clone())
        })
        .collect();
    exprs.extend(dashboard_exprs());
    let problems = dead_references(&exprs, &recorded, &scrape);
    assert!(
        problems.is_empty(),
        "rules/dashboard reference series the bridge does not export (scrape saved as ops-kit-scrape.txt):\n  {}",
        problems.join("\n  ")
    );

    // Every recording rule the dashboard and alerts use is defined.
    for (owner, expr) in &exprs {
        for sel in selectors(expr) {
            if sel.metric.starts_with("kafka_ws_bridge:") {
                assert!(
                    recorded.contains(&sel.metric),
                    "{owner} uses {}, which no recording rule defines",
                    sel.metric
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// (c) a real Prometheus evaluates the project's rules against a real bridge
// ---------------------------------------------------------------------------------------------------

/// The rules wait minutes (`for: 2m`) over 5-minute windows; a test cannot. The test copy of the rules
/// shortens every `for:` to FOR_IN_TEST and every range of minutes or hours (`[5m]`, `[10m]`, `[1h]`) to
/// RANGE_IN_TEST. Expressions, thresholds, labels and annotations stay as they are.
const FOR_IN_TEST: &str = "2s";
const RANGE_IN_TEST: &str = "[20s]";

fn shorten_ranges(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(i) = rest.find('[') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let Some(j) = after.find(']') else {
            out.push_str(&rest[i..]);
            rest = "";
            break;
        };
        let inner = &after[..j];
        let is_duration = inner.len() >= 2
            && inner[..inner.len() - 1].bytes().all(|c| c.is_ascii_digit())
            && (inner.ends_with('m') || inner.ends_with('h'));
        if is_duration {
            out.push_str(RANGE_IN_TEST);
        } else {
            out.push('[');
            out.push_str(inner);
            out.push(']');
        }
        rest = &after[j + 1..];
    }
    out.push_str(rest);
    out
}

fn shorten_rules(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("for:") {
            out.push_str(&line[..line.len() - t.len()]);
            out.push_str("for: ");
            out.push_str(FOR_IN_TEST);
        } else {
            out.push_str(&shorten_ranges(line));
        }
        out.push('\n');
    }
    out
}

/// A `prometheus` process, killed when dropped.
struct Prometheus {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Prometheus {
    fn start(dir: &Path, bridge_port: u16) -> Prometheus {
        let rules_dir = dir.join("rules");
        std::fs::create_dir_all(&rules_dir).expect("rules dir");
        for file in [ALERT_RULES, RECORDING_RULES] {
            let short = shorten_rules(&read_repo_file(file));
            assert!(
                !short.contains("[5m]") && short.contains(RANGE_IN_TEST),
                "rule transform did not apply to {file}"
            );
            let name = Path::new(file).file_name().expect("file name");
            std::fs::write(rules_dir.join(name), short).expect("write test rules");
        }
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}/*.yml\n\
             scrape_configs:\n  - job_name: kafka-ws-bridge\n    static_configs:\n      - targets: ['127.0.0.1:{bridge_port}']\n",
            rules = rules_dir.display()
        );
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let port = free_port();
        let log = dir.join("prometheus.log");
        let out = std::fs::File::create(&log).expect("prometheus log");
        let err = out.try_clone().expect("prometheus log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start `prometheus` ({e}): install it with `bash scripts/install-deps.sh`")
            });
        Prometheus { child, port, log }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn get(&mut self, path: &str) -> serde_json::Value {
        if let Ok(Some(st)) = self.child.try_wait() {
            panic!("prometheus exited ({st}); log:\n{}", self.log_text());
        }
        let (code, body) = http(self.port, "GET", path)
            .await
            .unwrap_or_else(|e| panic!("GET {path} on prometheus: {e}"));
        assert_eq!(code, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    async fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("prometheus exited ({st}); log:\n{}", self.log_text());
            }
            if let Ok((200, _)) = http(self.port, "GET", "/-/ready").await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready after {timeout:?}; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Alerts currently pending or firing: alertname -> (state, labels, annotations).
    async fn active_alerts(&mut self) -> HashMap<String, serde_json::Value> {
        let v = self.get("/api/v1/alerts").await;
        v["data"]["alerts"]
            .as_array()
            .expect("alerts array")
            .iter()
            .map(|a| {
                (
                    a["labels"]["alertname"]
                        .as_str()
                        .expect("alertname")
                        .to_string(),
                    a.clone(),
                )
            })
            .collect()
    }

    async fn query(&mut self, q: &str) -> serde_json::Value {
        let enc: String = q
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        self.get(&format!("/api/v1/query?query={enc}")).await
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn real_prometheus_raises_the_record_dlq_gap_and_overload_alerts_and_nothing_while_idle() {
    let rules = project_rules();
    let topic = unique("opskit-prom");
    create_topic(&topic, 1).await;
    let closed = format!("127.0.0.1:{}", free_port());
    let bridge = Bridge::start(
        &topic,
        &[
            ("KAFKA_DLQ_BROKERS", closed.as_str()),
            ("DLQ_SEND_TIMEOUT_SECS", "1"),
            ("WEBSOCKET_MAX_CONNECTIONS", "2"),
            ("BACKPRESSURE_WEIGHTS", OVERLOAD_WEIGHTS),
            ("BREAKER_OPEN_SECS", "1"),
        ],
    )
    .await;
    // websocket_kafka_connected starts at 0 and turns 1 at the first librdkafka statistics; ready does not
    // wait for them. The idle phase below is about a settled bridge, so wait for them here.
    let deadline = Instant::now() + Duration::from_secs(20);
    while value(&bridge.metrics().await, "websocket_kafka_connected") != 1.0 {
        assert!(
            Instant::now() < deadline,
            "websocket_kafka_connected never became 1; log:\n{}",
            bridge.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique("ops-kit-prometheus"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut prom = Prometheus::start(&dir, bridge.port);
    prom.wait_ready(Duration::from_secs(20)).await;

    // The real Prometheus loaded exactly the rules this test parsed, without errors.
    let loaded = prom.get("/api/v1/rules").await;
    let mut names: BTreeSet<String> = BTreeSet::new();
    for g in loaded["data"]["groups"].as_array().expect("rule groups") {
        for r in g["rules"].as_array().expect("rules") {
            names.insert(r["name"].as_str().expect("rule name").to_string());
        }
    }
    let parsed: BTreeSet<String> = rules.iter().map(|r| r.name.clone()).collect();
    assert_eq!(names, parsed, "rules loaded by prometheus vs parsed here");

    // Idle topic: the bridge is scraped (up == 1) and evaluated for a while; nothing may be active.
    let idle_until = Instant::now() + Duration::from_secs(8);
    let mut scraped = false;
    while Instant::now() < idle_until {
        let up = prom.query("up{job=\"kafka-ws-bridge\"}").await;
        scraped |= up["data"]["result"][0]["value"][1] == "1";
        let active = prom.active_alerts().await;
        assert!(
            active.is_empty(),
            "alerts active on an idle topic: {active:#?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        scraped,
        "prometheus never scraped the bridge; log:\n{}",
        prom.log_text()
    );

    // Trouble: 10% garbage, a gap every 7 records (a garbage record carries no gap: keep the periods
    // apart), DLQ down. Produced continuously until the end.
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let stop = stop.clone();
        let topic = topic.clone();
        tokio::spawn(async move {
            let p = producer();
            let mut g = Generator::new(SynthConfig {
                threads: 10,
                gap_every: 7,
                garbage_every: 10,
                ..Default::default()
            });
            while !stop.load(Ordering::Relaxed) {
                let batch: Vec<_> = g
                    .by_ref()
                    .take(40)
                    .map(|r| (Some(r.key), r.value))
                    .collect();
                produce(&p, &topic, &batch).await;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };

    // Overload: two clients fill the two slots (level 1.0: CRITICAL, the breaker opens and stays open while
    // they stay), and a third knocks every 500 ms and is refused with 1013 (circuit_open).
    let mut clients = Vec::new();
    for _ in 0..2 {
        let (ws, _) = connect(&bridge.ws_url("?format=json")).await;
        clients.push(drain(ws, stop.clone()));
    }
    wait_for_breaker(&bridge, 2.0, Duration::from_secs(10)).await;
    let knocker = {
        let stop = stop.clone();
        let url = bridge.ws_url("?format=json");
        tokio::spawn(async move {
            let mut refused = 0;
            while !stop.load(Ordering::Relaxed) {
                assert_eq!(knock(&url).await, Refused::TryAgainLater);
                refused += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            refused
        })
    };

    let wanted = [
        "HighDecodeErrorRate",
        "WebSocketDlqBroken",
        "SequenceGapsDetected",
        "BackpressureCritical",
        "CircuitBreakerOpen",
        "ConnectionsRejected",
        "ConnectionLimitNearlyReached",
    ];
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(90);
    let active = loop {
        let active = prom.active_alerts().await;
        if wanted.iter().all(|w| active.contains_key(*w)) {
            break active;
        }
        if Instant::now() > deadline {
            stop.store(true, Ordering::Relaxed);
            panic!(
                "within 90 s only these alerts became active: {:?}\nbridge metrics: {:?}\nprometheus log:\n{}",
                active.keys().collect::<Vec<_>>(),
                bridge.metrics().await,
                prom.log_text()
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    stop.store(true, Ordering::Relaxed);
    let _ = feeder.await;
    let refused = knocker.await.expect("knocker");
    assert!(refused > 0, "no connection was refused");
    for c in clients {
        assert!(
            c.await.expect("client"),
            "a client lost its connection during the overload (existing clients keep their stream)"
        );
    }
    eprintln!(
        "alerts active after {:?}: {:?}",
        t0.elapsed(),
        active
            .iter()
            .map(|(k, v)| (k.as_str(), v["state"].as_str().unwrap_or("")))
            .collect::<Vec<_>>()
    );

    for w in wanted {
        let a = &active[w];
        let state = a["state"].as_str().expect("state");
        assert!(state == "pending" || state == "firing", "{w}: {a}");
        let rule = rules.iter().find(|r| r.name == w).expect("rule");
        assert_eq!(
            a["labels"]["severity"].as_str(),
            rule.severity.as_deref(),
            "{w}: {a}"
        );
        assert_eq!(a["labels"]["service"], "kafka-ws-bridge", "{w}: {a}");
        assert!(
            a["annotations"]["runbook_url"]
                .as_str()
                .is_some_and(|u| u.ends_with(&format!("/runbooks/{w}.md"))),
            "{w}: {a}"
        );
        for k in ["summary", "description"] {
            let text = a["annotations"][k].as_str().unwrap_or("");
            assert!(
                !text.is_empty() && !text.contains("{{") && !text.contains("<no value>"),
                "{w}: {k} not rendered: {a}"
            );
        }
    }
    assert!(
        active["WebSocketDlqBroken"]["labels"]["reason"]
            .as_str()
            .is_some_and(|r| r == "timeout" || r == "kafka_error"),
        "{}",
        active["WebSocketDlqBroken"]
    );
    assert_eq!(
        active["ConnectionsRejected"]["labels"]["reason"], "circuit_open",
        "{}",
        active["ConnectionsRejected"]
    );
    for w in ["BackpressureCritical", "CircuitBreakerOpen"] {
        assert_eq!(
            active[w]["labels"]["instance"],
            format!("127.0.0.1:{}", bridge.port),
            "{}",
            active[w]
        );
    }
    for quiet in [
        "ServiceDown",
        "KafkaBrokersDown",
        "ConsumerPausedFailClosed",
    ] {
        assert!(
            !active.contains_key(quiet),
            "{quiet} while the bridge answers, is connected and fail-open: {active:#?}"
        );
    }
    drop(prom);
    let _ = std::fs::remove_dir_all(&dir);
}
