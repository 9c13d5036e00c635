//! The live page (`/`, web/) and its client (web/client.js) in a real headless Chromium, driven by
//! playwright-core through `tests/browser/driver.mjs`, against the real bridge, Tansu and Redis.
//!
//! Needs Debian's chromium (`KWB_CHROMIUM`, default /usr/bin/chromium), node and the npm package
//! playwright-core (`bash scripts/install-deps.sh --with-browser`), plus the services of
//! `scripts/services.sh` (`KWB_TEST_BROKERS`, `KWB_TEST_REDIS_URL`). A missing piece fails the test:
//! nothing is skipped.
//!
//! No-loss/no-duplicate check across a reload: the page persists its applied-sequence record in the
//! same localStorage write as the client's cursor (client.js `getAppState`), and rebuilds
//! `window.__dashstream` from it after the reload. A cursor persisted ahead of the record would show as
//! missing sequences, one behind it as duplicates, so the final check (every thread applied exactly
//! 1..=last produced, in order) covers both page loads.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use kafka_ws_bridge::{Generator, SynthConfig};
use serde_json::{json, Value};

const THREADS: usize = 8;
/// Records per produce tick; one tick per 100 ms → about 200 msg/s.
const PER_TICK: usize = 20;

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn artifacts_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser-artifacts");
    std::fs::create_dir_all(&d).expect("artifacts dir");
    d
}

/// The Chromium binary, or a loud failure that says how to install it.
fn chromium() -> String {
    let path = std::env::var("KWB_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let ok = Command::new(&path)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "Chromium not runnable at {path} (KWB_CHROMIUM): install it with `bash scripts/install-deps.sh --with-browser`"
    );
    path
}

/// node, or a loud failure.
fn require_node() {
    let node = Command::new("node").arg("--version").output();
    assert!(
        matches!(&node, Ok(o) if o.status.success()),
        "node is not on PATH: install Node.js (>= 20), then `bash scripts/install-deps.sh --with-browser`"
    );
}

/// node and playwright-core, or a loud failure.
fn require_node_and_playwright() {
    require_node();
    let pw = manifest_dir().join("node_modules/playwright-core/package.json");
    assert!(
        pw.is_file(),
        "{} is missing: run `bash scripts/install-deps.sh --with-browser` (npm ci of package.json)",
        pw.display()
    );
}

/// A JSON-lines conversation with tests/browser/driver.mjs.
struct Driver {
    child: Child,
    stdin: ChildStdin,
    rx: tokio::sync::mpsc::UnboundedReceiver<String>,
    next_id: u64,
    log: PathBuf,
}

impl Driver {
    fn start(log: PathBuf) -> Driver {
        let _ = std::fs::remove_file(&log);
        let mut child = Command::new("node")
            .arg(manifest_dir().join("tests/browser/driver.mjs"))
            .current_dir(manifest_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn node tests/browser/driver.mjs");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Driver {
            child,
            stdin,
            rx,
            next_id: 1,
            log,
        }
    }

    async fn try_call(&mut self, cmd: &str, args: Value, limit: Duration) -> Result<Value, String> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = args;
        msg["id"] = id.into();
        msg["cmd"] = cmd.into();
        writeln!(self.stdin, "{msg}").map_err(|e| format!("driver stdin: {e}"))?;
        self.stdin.flush().map_err(|e| e.to_string())?;
        let deadline = Instant::now() + limit + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match tokio::time::timeout(left, self.rx.recv()).await {
                Err(_) => return Err(format!("driver: no answer to {cmd} in {limit:?}")),
                Ok(None) => return Err(format!("driver exited during {cmd}")),
                Ok(Some(l)) => l,
            };
            let v: Value = serde_json::from_str(&line)
                .map_err(|e| format!("driver printed a non-JSON line ({e}): {line}"))?;
            if v["fatal"] == true {
                return Err(v["error"].as_str().unwrap_or("fatal").to_string());
            }
            if v["id"] != id {
                continue;
            }
            return if v["ok"] == true {
                Ok(v["value"].clone())
            } else {
                Err(v["error"].as_str().unwrap_or("?").to_string())
            };
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    async fn eval(&mut self, expr: &str) -> Value {
        match self
            .try_call("eval", json!({ "expr": expr }), Duration::from_secs(10))
            .await
        {
            Ok(v) => v,
            Err(e) => panic!("eval {expr}: {e}\npage log:\n{}", self.log_tail()),
        }
    }

    /// Waits until `expr` is truthy in the page; panics with the page's state otherwise.
    async fn wait(&mut self, what: &str, expr: &str, limit: Duration) -> Value {
        let args = json!({ "expr": expr, "timeout_ms": limit.as_millis() as u64, "poll_ms": 100 });
        match self.try_call("wait", args, limit).await {
            Ok(v) => v,
            Err(e) => {
                let state = self
                    .try_call("eval", json!({"expr": SUMMARY}), Duration::from_secs(5))
                    .await;
                panic!(
                    "waiting for {what}: {e}\npage state: {state:?}\npage log:\n{}",
                    self.log_tail()
                )
            }
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A compact view of the page's test hook, for messages.
const SUMMARY: &str = "(() => { const d = window.__dashstream; if (!d) return null; return { status: d.status, \
     appliedCount: d.appliedCount, loads: d.loads, reconnects: d.reconnects, deduped: d.deduped, \
     cursors: d.cursors, maxSeq: d.maxSeq(), gaps: d.gaps, replayCompletes: d.replayCompletes.slice(-5), \
     notices: d.notices.slice(-10), runs: d.runs }; })()";

/// Produces about 200 msg/s over THREADS threads until stopped; returns the generator (to continue the
/// same sequences later) and the last sequence produced per thread.
struct Producing {
    stop: Arc<AtomicBool>,
    handle: tokio::task::JoinHandle<(Generator, BTreeMap<String, u64>)>,
}

fn produce_steadily(topic: &str, mut gen: Generator, mut last: BTreeMap<String, u64>) -> Producing {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let topic = topic.to_string();
    let handle = tokio::spawn(async move {
        let p = producer();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        while !flag.load(Ordering::Relaxed) {
            tick.tick().await;
            let batch: Vec<_> = gen.by_ref().take(PER_TICK).collect();
            let recs: Vec<(Option<String>, Vec<u8>)> = batch
                .iter()
                .map(|r| (Some(r.key.clone()), r.value.clone()))
                .collect();
            produce(&p, &topic, &recs).await;
            for r in batch {
                last.insert(r.thread_id, r.sequence);
            }
        }
        (gen, last)
    });
    Producing { stop, handle }
}

impl Producing {
    async fn finish(self) -> (Generator, BTreeMap<String, u64>) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.await.expect("producer task")
    }
}

/// `serve` on an explicit port (so a restarted bridge has the same origin for the page).
async fn bridge_on(topic: &str, group: &str, port: u16, env: &[(&str, &str)]) -> Bridge {
    let port_s = port.to_string();
    let mut all = env.to_vec();
    all.push(("WEBSOCKET_PORT", &port_s));
    let mut b = Bridge::spawn(topic, group, &all);
    b.port = port;
    b.wait_ready(Duration::from_secs(40)).await;
    b
}

/// The page has applied the last produced sequence of every thread.
fn caught_up_expr(last: &BTreeMap<String, u64>) -> String {
    format!(
        "(() => {{ const want = {}; const m = window.__dashstream.maxSeq(); \
         return Object.entries(want).every(([t, s]) => m[t] === s); }})()",
        serde_json::to_string(last).expect("json")
    )
}

/// Every thread applied exactly 1..=last, in order: no gap, no duplicate, no reorder.
async fn assert_exactly_once(d: &mut Driver, last: &BTreeMap<String, u64>, phase: &str) -> usize {
    let applied = d.eval("window.__dashstream.applied").await;
    let applied: HashMap<String, Vec<u64>> =
        serde_json::from_value(applied).expect("applied is {thread: [seq]}");
    let mut threads: Vec<&String> = applied.keys().collect();
    threads.sort();
    assert_eq!(
        threads,
        last.keys().collect::<Vec<_>>(),
        "{phase}: threads seen by the page"
    );
    let mut total = 0;
    for (t, want_last) in last {
        let got = &applied[t];
        let want: Vec<u64> = (1..=*want_last).collect();
        if *got != want {
            let mut count: BTreeMap<u64, usize> = BTreeMap::new();
            for s in got {
                *count.entry(*s).or_default() += 1;
            }
            let dups: Vec<u64> = count
                .iter()
                .filter(|(_, n)| **n > 1)
                .map(|(s, _)| *s)
                .collect();
            let missing: Vec<u64> = want
                .iter()
                .filter(|s| !count.contains_key(s))
                .copied()
                .collect();
            let state = d.eval(SUMMARY).await;
            panic!(
                "{phase}: {t} applied {} sequences, want 1..={want_last}; duplicates {:?}; missing {:?}\nstate: {state}\npage log:\n{}",
                got.len(),
                &dups[..dups.len().min(20)],
                &missing[..missing.len().min(20)],
                d.log_tail()
            );
        }
        total += got.len();
    }
    total
}

async fn assert_clean_resume_record(d: &mut Driver, phase: &str) {
    let s = d.eval(SUMMARY).await;
    assert_eq!(s["gaps"], json!([]), "{phase}: gap frames: {s}");
    assert_eq!(
        s["deduped"], 0,
        "{phase}: the server re-sent frames at or below the cursor: {s}"
    );
    let completes = d.eval("window.__dashstream.replayCompletes").await;
    for c in completes.as_array().expect("array") {
        assert_eq!(
            c["recovered"], true,
            "{phase}: unrecovered replay {c}; state {s}"
        );
    }
}

async fn check_asset(port: u16, path: &str, content_type: &str) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    assert!(head.starts_with("http/1.1 200"), "{path}: {head}");
    assert!(
        head.contains(&format!("content-type: {content_type}")),
        "{path}: {head}"
    );
    assert!(head.contains("cache-control: no-cache"), "{path}: {head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_live_page_resumes_without_loss_or_duplicates_across_a_bridge_kill_and_a_reload() {
    let started = Instant::now();
    let lap = |what: &str| {
        println!(
            "[browser] {:>5.1} s  {what}",
            started.elapsed().as_secs_f64()
        )
    };
    let chromium = chromium();
    require_node_and_playwright();
    let redis = std::env::var("KWB_TEST_REDIS_URL")
        .expect("KWB_TEST_REDIS_URL is not set: run with scripts/test.sh (or source the env of scripts/services.sh up)");
    let topic = unique("browser");
    create_topic(&topic, 3).await;
    let group = unique("grp");
    let port = free_port();
    let env = [
        ("REDIS_URL", redis.as_str()),
        // A small memory window, so resumes after the restart also read Redis / Kafka.
        ("REPLAY_MEMORY_MAX_PER_PARTITION", "200"),
    ];
    let mut bridge = bridge_on(&topic, &group, port, &env).await;
    lap("bridge ready");
    for (path, ct) in [
        ("/", "text/html"),
        ("/app.js", "text/javascript"),
        ("/client.js", "text/javascript"),
        ("/client.classic.js", "text/javascript"),
        ("/style.css", "text/css"),
    ] {
        check_asset(port, path, ct).await;
    }
    let (code, api) = http(port, "GET", "/api").await.expect("/api");
    assert_eq!(code, 200);
    assert!(api.contains("\"endpoints\""), "JSON index at /api: {api}");

    let gen = Generator::new(SynthConfig {
        threads: THREADS,
        ..Default::default()
    });
    let producing = produce_steadily(&topic, gen, BTreeMap::new());

    let artifacts = artifacts_dir();
    let mut d = Driver::start(artifacts.join("page-console.log"));
    let log = artifacts.join("page-console.log");
    let version = d
        .try_call(
            "launch",
            json!({"chromium": chromium, "log": log}),
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|e| panic!("launching Chromium through playwright-core: {e}"));
    lap(&format!("chromium {version} launched"));
    let base = format!("http://127.0.0.1:{port}");
    let nav = d
        .try_call(
            "goto",
            json!({"url": format!("{base}/?backoff_max_ms=1000")}),
            Duration::from_secs(15),
        )
        .await
        .expect("open the page");
    assert_eq!(nav["status"], 200, "{nav}");

    // (a) Live messages and the figures from /metrics and /health.
    d.wait(
        "live page with messages and metrics",
        "(() => { const d = window.__dashstream; return d && d.status === 'live' && d.appliedCount > 400 \
         && d.metricsPolls >= 2 && Object.keys(d.maxSeq()).length === 8; })()",
        Duration::from_secs(30),
    )
    .await;
    // Steady state (the startup replay burst out of the 5 s rate window) before the screenshot.
    let figures = d
        .wait(
            "figures",
            "(() => { const f = window.__dashstream.figures; const r = Object.values(f.threadRates || {}); \
             return f.rate > 120 && f.rate < 300 && r.length === 8 && r.every((x) => x > 10) && f.lagOffsets != null \
             && f.lagSeconds != null && f.clients >= 1 && f.consumedRate != null && f.health ? f : false; })()",
            Duration::from_secs(20),
        )
        .await;
    lap(&format!(
        "page live: {:.0} msg/s, lag {} offsets / {} s, {} client(s)",
        figures["rate"].as_f64().unwrap_or(0.0),
        figures["lagOffsets"],
        figures["lagSeconds"],
        figures["clients"]
    ));
    let dom = d
        .eval(
            "({ rows: document.querySelectorAll('#threads tbody tr').length, \
               chips: document.querySelectorAll('#threads .chip').length, \
               clients: document.getElementById('clients').textContent, \
               backpressure: document.getElementById('backpressure').textContent, \
               halted: document.getElementById('halted-count').textContent, \
               dlq: document.getElementById('dlq-sends').textContent, \
               status: document.getElementById('status').textContent })",
        )
        .await;
    assert_eq!(dom["rows"], 8, "one timeline row per thread: {dom}");
    assert!(dom["chips"].as_u64().unwrap_or(0) >= 8 * 6, "{dom}");
    assert_eq!(dom["status"], "live", "{dom}");
    // websocket_backpressure_level: "n/a" until the bridge exports it, then its value.
    let has_bp = bridge
        .metrics()
        .await
        .keys()
        .any(|k| k.starts_with("websocket_backpressure_level"));
    let bp = dom["backpressure"].as_str().unwrap_or("");
    if has_bp {
        assert!(bp.starts_with(|c: char| c.is_ascii_digit()), "{dom}");
    } else {
        assert_eq!(bp, "n/a", "{dom}");
    }
    assert_eq!(dom["halted"], "0", "{dom}");
    assert_eq!(dom["dlq"], "0", "{dom}");
    let shot = artifacts.join("page.png");
    d.try_call("screenshot", json!({"path": shot}), Duration::from_secs(15))
        .await
        .expect("screenshot");
    println!("[browser] screenshot: {}", shot.display());
    let classic = d
        .try_call(
            "classic_check",
            json!({"origin": base}),
            Duration::from_secs(15),
        )
        .await
        .expect("classic script check");
    assert_eq!(classic["type"], "function", "{classic}");
    assert_eq!(
        classic["url"],
        "ws://example.invalid/ws?format=json&threads=b%2Ca&resume=latest"
    );

    // The binary format in the browser: the envelope gives the cursor, the record stays raw bytes.
    let frames = d
        .eval(
            "new Promise((resolve) => { const got = []; \
             const c = new window.DashStreamClient({ format: 'binary', storage: null, startFrom: 'earliest', \
               onMessage: (f) => { got.push([f.partition, f.offset, f.value.length, f.value[0]]); \
                 if (got.length === 300) { c.stop(); resolve(got); } } }); \
             c.start(); setTimeout(() => { c.stop(); resolve(got); }, 8000); })",
        )
        .await;
    let frames: Vec<(i32, i64, usize, u8)> = serde_json::from_value(frames).expect("frames");
    assert_eq!(frames.len(), 300, "binary frames in the browser");
    let mut next: HashMap<i32, i64> = HashMap::new();
    for (p, o, len, first) in &frames {
        assert_eq!(
            *o,
            *next.get(p).unwrap_or(&0),
            "partition {p} in offset order from 0"
        );
        next.insert(*p, o + 1);
        assert!(
            *len > 20 && *first == 0,
            "raw DashStream record (0x00 framing): {len} {first}"
        );
    }

    // (b) SIGKILL the bridge while the page is open; restart it (same group, same port).
    let before = d.eval("window.__dashstream.appliedCount").await;
    bridge.signal("KILL");
    let _ = bridge.proc.child.wait();
    lap(&format!("bridge killed after {before} applied"));
    d.wait(
        "the page noticing the kill",
        "window.__dashstream.status === 'reconnecting' || window.__dashstream.status === 'connecting'",
        Duration::from_secs(10),
    )
    .await;
    let bridge = bridge_on(&topic, &group, port, &env).await;
    lap("bridge restarted");
    d.wait(
        "resume after the restart",
        &format!(
            "(() => {{ const d = window.__dashstream; return d.status === 'live' && d.reconnects >= 1 \
             && d.appliedCount > {before} + 300; }})()"
        ),
        Duration::from_secs(30),
    )
    .await;
    let (gen, last) = producing.finish().await;
    let produced: u64 = last.values().sum();
    lap(&format!("producer stopped at {produced} records"));
    d.wait(
        "catching up after the restart",
        &caught_up_expr(&last),
        Duration::from_secs(30),
    )
    .await;
    let n = assert_exactly_once(&mut d, &last, "after the bridge kill").await;
    assert_clean_resume_record(&mut d, "after the bridge kill").await;
    lap(&format!(
        "after kill+restart: {n} applied, each sequence exactly once"
    ));

    // (c) Reload mid-stream: the page resumes from the persisted cursor and rebuilds its record.
    let producing = produce_steadily(&topic, gen, last);
    d.wait(
        "messages before the reload",
        &format!("window.__dashstream.appliedCount > {n} + 300"),
        Duration::from_secs(20),
    )
    .await;
    let before_reload = d.eval(SUMMARY).await;
    let replays_before = d.eval("window.__dashstream.replayCompletes.length").await;
    // /app.js is held back 700 ms: about 140 records arrive while the page is away.
    d.try_call(
        "reload",
        json!({"delay_app_ms": 700}),
        Duration::from_secs(15),
    )
    .await
    .expect("reload");
    lap(&format!(
        "page reloaded at {} applied",
        before_reload["appliedCount"]
    ));
    let after = d
        .wait(
            "resume after the reload",
            &format!(
                "(() => {{ const d = window.__dashstream; return d && d.loads === 2 && d.status === 'live' \
                 && d.appliedCount > {} + 200 ? d.replayCompletes.slice({replays_before}) : false; }})()",
                before_reload["appliedCount"]
            ),
            Duration::from_secs(20),
        )
        .await;
    assert!(
        after
            .as_array()
            .is_some_and(|a| a.iter().any(|r| r["replayed"].as_u64().unwrap_or(0) > 0)),
        "the reloaded page resumed from its stored cursor (replayed what arrived meanwhile): {after}"
    );
    let urls = d.eval("window.__dashstream.connectUrls").await;
    assert!(
        urls[0]
            .as_str()
            .is_some_and(|u| u.contains("resume=cursor&last_offsets=")),
        "after the reload the first connection resumes from the stored cursor: {urls}"
    );
    let (_, last) = producing.finish().await;
    d.wait(
        "catching up after the reload",
        &caught_up_expr(&last),
        Duration::from_secs(30),
    )
    .await;
    let n = assert_exactly_once(&mut d, &last, "across the reload").await;
    assert_clean_resume_record(&mut d, "across the reload").await;
    let produced: u64 = last.values().sum();
    assert_eq!(n as u64, produced, "every produced record applied once");
    d.try_call(
        "screenshot",
        json!({"path": artifacts.join("page-final.png")}),
        Duration::from_secs(15),
    )
    .await
    .expect("screenshot");
    let m = bridge.metrics().await;
    let hits = |k: &str| m.get(k).copied().unwrap_or(0.0);
    lap(&format!(
        "across the reload: {n} applied of {produced} produced, exactly once; replay hits after restart: memory {} redis {} kafka {}",
        hits("replay_buffer_memory_hits_total"),
        hits("replay_buffer_redis_hits_total"),
        hits("replay_buffer_kafka_hits_total")
    ));
    let _ = d
        .try_call("close", json!({}), Duration::from_secs(10))
        .await;
}

#[test]
fn the_client_logic_passes_its_node_unit_tests() {
    require_node();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/client.test.mjs");
    let out = Command::new("node")
        .arg("--test")
        .arg(&script)
        .current_dir(manifest_dir())
        .output()
        .expect("run node --test");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "node --test {}:\n{text}",
        script.display()
    );
    assert!(text.contains("# fail 0"), "{text}");
}

mod auth;
