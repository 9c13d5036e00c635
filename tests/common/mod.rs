//! Test harness: the real bridge binary against the real broker started by
//! `scripts/services.sh` (its address in `KWB_TEST_BROKERS`). Without the
//! services every test fails loudly; nothing here is mocked.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

pub fn brokers() -> String {
    std::env::var("KWB_TEST_BROKERS").unwrap_or_else(|_| {
        panic!("KWB_TEST_BROKERS is not set: run the suite with `bash scripts/test.sh`, which starts the broker and Redis")
    })
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this test process and call.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
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
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(n, p)| NewTopic::new(n, *p, TopicReplication::Fixed(1)))
        .collect();
    let res = admin
        .create_topics(
            &new,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create_topics request");
    for r in res {
        r.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e}"));
    }
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
    pub child: Child,
    pub log: PathBuf,
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
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
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
            .env("WEBSOCKET_PORT", port.to_string())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn bridge");
        Bridge {
            port,
            child,
            log,
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
        std::fs::read_to_string(&self.log).unwrap_or_default()
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
        let st = Command::new("kill")
            .args(["-s", sig, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(st.success());
    }

    /// Sends SIGTERM and returns how long the process took to exit, and its status.
    pub fn terminate(&mut self) -> (Duration, std::process::ExitStatus) {
        let t0 = Instant::now();
        self.signal("TERM");
        loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                return (t0.elapsed(), st);
            }
            if t0.elapsed() > Duration::from_secs(15) {
                let _ = self.child.kill();
                panic!(
                    "bridge did not exit 15 s after SIGTERM; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Minimal HTTP/1.1 client: returns (status, body).
pub async fn http(port: u16, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    http_with(port, method, path, &[]).await
}

pub async fn http_with(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, String)> {
    let mut s = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .map_err(|_| std::io::Error::other("connect timeout"))??;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: 0\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .map_err(|_| std::io::Error::other("read timeout"))??;
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    // Chunked bodies: keep the JSON/text payload lines only.
    let body = if text
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(&body)
    } else {
        body
    };
    Ok((code, body))
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// Prometheus text → map of "name{labels}" → value.
pub fn parse_metrics(body: &str) -> HashMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects and returns the socket with the hello frame already read.
pub async fn connect(url: &str) -> (Ws, serde_json::Value) {
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
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
            Ok(Some(Err(_))) => return None,
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
    ws.send(Message::Text(text.into())).await.expect("send");
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
