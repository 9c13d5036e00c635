//! The WebSocket clients: connecting them, counting their frames, and
//! checking a sample of what they received.

use super::*;

/// Connects one client and reads its `hello`.
pub(crate) async fn connect_client(port: u16) -> Result<Ws> {
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

pub(crate) async fn connect_clients(port: u16, n: usize) -> Result<Vec<Ws>> {
    futures_util::future::try_join_all((0..n).map(|_| connect_client(port))).await
}

/// What one ingest client saw.
#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) frames: u64,
    pub(crate) first: Option<Instant>,
    pub(crate) nth: Option<Instant>,
    pub(crate) lagged_dropped: u64,
    pub(crate) samples: Vec<Bytes>,
    pub(crate) end: String,
}

/// Counts binary data frames until `stop`. Keeps every `sample_every`-th frame.
pub(crate) async fn count_frames(
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
pub(crate) fn verify_samples(samples: &[Bytes], partitions: i32) -> (u64, u64, Option<String>) {
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
