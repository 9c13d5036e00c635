//! Test harness: the real bridge binary against the real broker started by
//! `scripts/services.sh` (its address in `KWB_TEST_BROKERS`). Without the
//! services every test fails loudly; nothing here is mocked.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use kwb_testkit::process::Logged;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_tungstenite::tungstenite::Message;

pub fn brokers() -> String {
    std::env::var("KWB_TEST_BROKERS").unwrap_or_else(|_| {
        panic!("KWB_TEST_BROKERS is not set: run the suite with `bash scripts/test.sh`, which starts the broker and Redis")
    })
}

/// A name unique to this test process and call.
pub fn unique(prefix: &str) -> String {
    kwb_testkit::net::unique(prefix)
}

pub fn free_port() -> u16 {
    kwb_testkit::net::free_port().expect("free port")
}

/// Creates `name` and its dead-letter topic `name-dlq` (1 partition).
pub async fn create_topic(name: &str, partitions: i32) {
    create_topics_on(
        &brokers(),
        &[(name, partitions), (&format!("{name}-dlq"), 1)],
    )
    .await;
}

pub async fn create_topics_on(brokers: &str, topics: &[(&str, i32)]) {
    kwb_testkit::kafka::create_topics(brokers, topics)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
}

pub fn producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("linger.ms", "2")
        .set("message.timeout.ms", "10000")
        .create()
        .expect("producer")
}

/// Produces records in order and returns each one's (partition, offset).
pub async fn produce(
    p: &FutureProducer,
    topic: &str,
    records: &[(Option<String>, Vec<u8>)],
) -> Vec<(i32, i64)> {
    let mut futs = Vec::with_capacity(records.len());
    for (key, value) in records {
        let mut r = FutureRecord::to(topic).payload(value);
        if let Some(k) = key {
            r = r.key(k);
        }
        futs.push(p.send_result(r).map_err(|(e, _)| e).expect("enqueue"));
    }
    let mut out = Vec::with_capacity(futs.len());
    for f in futs {
        let d = f.await.expect("delivery future").expect("delivered");
        out.push((d.partition, d.offset));
    }
    out
}

pub async fn produce_with_header(
    p: &FutureProducer,
    topic: &str,
    key: &str,
    value: &[u8],
    header: (&str, &str),
) -> (i32, i64) {
    let headers = OwnedHeaders::new().insert(Header {
        key: header.0,
        value: Some(header.1),
    });
    let r = FutureRecord::to(topic)
        .key(key)
        .payload(value)
        .headers(headers);
    let d = p.send(r, Duration::from_secs(10)).await.expect("delivered");
    (d.partition, d.offset)
}

pub struct Bridge {
    pub port: u16,
    /// The process, its log, killed when the `Bridge` is dropped.
    pub proc: Logged,
    pub group: String,
    pub topic: String,
}

pub fn bridge_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kafka-ws-bridge")
}

pub fn log_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bridge-logs");
    std::fs::create_dir_all(&d).expect("log dir");
    d
}

impl Bridge {
    /// Starts `serve` on `topic` with a fresh group and waits until it is ready.
    pub async fn start(topic: &str, env: &[(&str, &str)]) -> Bridge {
        let group = unique("grp");
        Self::start_with_group(topic, &group, env).await
    }

    pub async fn start_with_group(topic: &str, group: &str, env: &[(&str, &str)]) -> Bridge {
        let b = Self::spawn(topic, group, env);
        b.wait_ready(Duration::from_secs(40)).await;
        b
    }

    pub fn spawn(topic: &str, group: &str, env: &[(&str, &str)]) -> Bridge {
        let port = free_port();
        let log = log_dir().join(format!("{}.log", unique(topic)));
        let mut cmd = Command::new(bridge_bin());
        cmd.arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info,rdkafka=warn")
            .env("KAFKA_BROKERS", brokers())
            .env("KAFKA_TOPIC", topic)
            .env("KAFKA_GROUP_ID", group)
            .env(
                "KAFKA_PROPERTIES",
                "session.timeout.ms=6000,heartbeat.interval.ms=500",
            )
            .env("WEBSOCKET_HOST", "127.0.0.1")
            .env("WEBSOCKET_PORT", port.to_string());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let proc = Logged::spawn(&mut cmd, &log).expect("spawn bridge");
        Bridge {
            port,
            proc,
            group: group.to_string(),
            topic: topic.to_string(),
        }
    }

    pub async fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok((200, _)) = http(self.port, "GET", "/health/ready").await {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "bridge not ready after {timeout:?}; log:\n{}",
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log_text(&self) -> String {
        self.proc.log_text()
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://127.0.0.1:{}/ws{query}", self.port)
    }

    pub async fn metrics(&self) -> HashMap<String, f64> {
        let (code, body) = http(self.port, "GET", "/metrics").await.expect("metrics");
        assert_eq!(code, 200);
        parse_metrics(&body)
    }

    pub async fn health(&self) -> serde_json::Value {
        let (_, body) = http(self.port, "GET", "/health").await.expect("health");
        serde_json::from_str(&body).expect("health json")
    }

    /// Waits until the bridge has processed `n` records in total.
    pub async fn wait_processed(&self, n: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let h = self.health().await;
            if h["records_processed"].as_u64().unwrap_or(0) >= n {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "processed {} of {n} records; log:\n{}",
                    h["records_processed"],
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn signal(&self, sig: &str) {
        self.proc.signal(sig).expect("kill");
    }

    /// Sends SIGTERM and returns how long the process took to exit, and its status.
    pub fn terminate(&mut self) -> (Duration, std::process::ExitStatus) {
        let t0 = Instant::now();
        self.signal("TERM");
        match self.proc.wait_exit(Duration::from_secs(15)) {
            Some(st) => (t0.elapsed(), st),
            None => panic!(
                "bridge did not exit 15 s after SIGTERM; log:\n{}",
                self.log_text()
            ),
        }
    }
}

/// `method path` on the bridge's port: (status, body).
pub async fn http(port: u16, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    kwb_testkit::http::request(port, method, path, &[]).await
}

/// An admin call on a loopback bridge without `ADMIN_TOKEN`: it sends the
/// `X-Bridge-Admin` header such calls need.
pub async fn admin(port: u16, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    kwb_testkit::http::request(port, method, path, &[("x-bridge-admin", "1")]).await
}

pub async fn http_with(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, String)> {
    kwb_testkit::http::request(port, method, path, headers).await
}

pub use kwb_testkit::prom::parse as parse_metrics;

pub use kwb_testkit::ws::Ws;

/// Connects and returns the socket with the hello frame already read.
pub async fn connect(url: &str) -> (Ws, serde_json::Value) {
    let mut ws = kwb_testkit::ws::connect(url)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let hello: serde_json::Value =
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => serde_json::from_str(t.as_str()).expect("hello json"),
            other => panic!("expected hello, got {other:?}"),
        };
    assert_eq!(hello["type"], "hello");
    (ws, hello)
}

/// One frame as a test sees it.
#[derive(Debug, Clone)]
pub enum Frame {
    /// A data frame: cursor plus the decoded JSON data frame.
    Data {
        partition: i32,
        offset: i64,
        json: serde_json::Value,
    },
    Control(serde_json::Value),
    Closed {
        code: u16,
        reason: String,
    },
}

pub async fn next_frame(ws: &mut Ws, timeout: Duration) -> Option<Frame> {
    loop {
        let msg = match tokio::time::timeout(timeout, ws.next()).await {
            Err(_) | Ok(None) => return None,
            Ok(Some(Err(e))) => {
                eprintln!("websocket error: {e}");
                return None;
            }
            Ok(Some(Ok(m))) => m,
        };
        return Some(match msg {
            Message::Binary(b) => {
                let limits = kafka_ws_bridge::DecodeLimits::default();
                let text =
                    kafka_ws_bridge::envelope_to_json(&b, &limits).expect("binary frame decodes");
                let json: serde_json::Value = serde_json::from_str(&text).expect("json");
                let env = kafka_ws_bridge::parse_envelope(&b).expect("envelope");
                Frame::Data {
                    partition: env.cursor.partition,
                    offset: env.cursor.offset,
                    json,
                }
            }
            Message::Text(t) => {
                let v: serde_json::Value =
                    serde_json::from_str(t.as_str()).expect("text frames are JSON");
                if v["type"] == "message" {
                    Frame::Data {
                        partition: v["partition"].as_i64().expect("partition") as i32,
                        offset: v["offset"].as_i64().expect("offset"),
                        json: v,
                    }
                } else {
                    Frame::Control(v)
                }
            }
            Message::Close(c) => {
                let (code, reason) = c
                    .map(|c| (u16::from(c.code), c.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                Frame::Closed { code, reason }
            }
            _ => continue,
        });
    }
}

/// Reads until `n` data frames arrived (or `timeout` passes without one);
/// returns data frames and control frames seen.
pub async fn collect(
    ws: &mut Ws,
    n: usize,
    idle_timeout: Duration,
) -> (Vec<Frame>, Vec<serde_json::Value>) {
    let mut data = Vec::new();
    let mut control = Vec::new();
    while data.len() < n {
        match next_frame(ws, idle_timeout).await {
            Some(f @ Frame::Data { .. }) => data.push(f),
            Some(Frame::Control(c)) => control.push(c),
            Some(Frame::Closed { .. }) | None => break,
        }
    }
    (data, control)
}

pub async fn send_text(ws: &mut Ws, text: &str) {
    kwb_testkit::ws::send_text(ws, text).await.expect("send");
}

pub fn write_artifact(name: &str, content: &str) -> PathBuf {
    let p = log_dir().join(name);
    let mut f = std::fs::File::create(&p).expect("artifact");
    f.write_all(content.as_bytes()).expect("write");
    p
}

/// Waits (up to 30 s) until the bridge's metrics satisfy `pred`; returns them.
pub async fn wait_metric(
    bridge: &Bridge,
    pred: impl Fn(&HashMap<String, f64>) -> bool,
    what: &str,
) -> HashMap<String, f64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = bridge.metrics().await;
        if pred(&m) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; log:\n{}",
            bridge.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A broker of the test's own (memory storage), beside the shared one: a DLQ
/// cluster, or one to restart.
pub struct PrivateBroker {
    child: Child,
}

impl PrivateBroker {
    pub async fn start(port: u16) -> PrivateBroker {
        let bin =
            std::env::var("KWB_TANSU_BIN").expect("KWB_TANSU_BIN (set by scripts/services.sh)");
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ])
            .env_remove("CLUSTER_ID")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start second broker");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "second broker did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        PrivateBroker { child }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An `event` record of `thread` at `seq` (tenant `acme`) with this schema version.
pub fn event(thread: &str, seq: u64, schema: u32) -> kafka_ws_bridge::proto::DashStreamMessage {
    use kafka_ws_bridge::proto::dash_stream_message::Message;
    use kafka_ws_bridge::proto::{DashStreamMessage, Event, Header};
    DashStreamMessage {
        message: Some(Message::Event(Event {
            header: Some(Header {
                thread_id: thread.into(),
                sequence: seq,
                schema_version: schema,
                tenant_id: "acme".into(),
                ..Default::default()
            }),
            node_id: "n".into(),
            ..Default::default()
        })),
    }
}

/// A good record of `thread` at `seq`, keyed by its thread.
pub fn good(thread: &str, seq: u64) -> (Option<String>, Vec<u8>) {
    (
        Some(thread.into()),
        kafka_ws_bridge::encode_record(&event(thread, seq, 1), None),
    )
}

/// (thread, sequence) of the data frames among `frames`, in order.
pub fn sequences(frames: &[Frame]) -> Vec<(String, u64)> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Data { json, .. } => Some((
                json["thread_id"].as_str()?.to_string(),
                json["sequence"].as_u64()?,
            )),
            _ => None,
        })
        .collect()
}
