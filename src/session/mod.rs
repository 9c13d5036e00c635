//! One WebSocket connection: sends `hello`, optionally replays history the
//! client asks for (`resume`), then relays frames from the client's hub
//! queue to the socket while reading (bounded) control messages.
//!
//! A client resumes with `?resume=…` on the URL, or with a `resume` message
//! as its first message; a client that passes no `resume` parameter joins
//! live delivery at its first message or after `RESUME_GRACE_MS`, so a
//! resume sent right after `hello` never races live frames.
//!
//! Every write is bounded by a timeout; a client that cannot take a frame in
//! that time is disconnected. Its queue meanwhile fills and the hub drops
//! frames for it alone. The hub registration is a guard: it is released on
//! every exit path.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::ws::{Message, WebSocket};
use futures_util::StreamExt;
use metrics::{Counter, Histogram};
use tokio_util::sync::CancellationToken;

use crate::hub::{Filter, Format, Hub, Outbound, Subscription};
use crate::record::frame::control;
use crate::replay::driver::{self, ReplayContext, Sent};
use crate::replay::out::Gone;
use crate::replay::ResumeFrom;
use crate::telemetry;

pub(crate) mod config;
pub(crate) mod socket;

use socket::{Socket, CLOSE_GOING_AWAY, CLOSE_MESSAGE_TOO_BIG, CLOSE_SLOW_CLIENT};

/// Per-session limits.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SessionSettings {
    /// How long a client without `?resume=` may take to send its first message.
    pub(crate) resume_grace: Duration,
    /// Most partitions in one resume request.
    pub(crate) max_resume_partitions: usize,
    /// A client losing frames for longer than this is disconnected (1008).
    pub(crate) slow_client_disconnect: Duration,
    /// Longest a single socket write may take (`WEBSOCKET_WRITE_TIMEOUT_SECS`).
    pub(crate) write_timeout: Duration,
    /// Frames per client queue.
    pub(crate) queue_frames: usize,
}

/// What every session shares.
pub(crate) struct SessionContext {
    pub(crate) hub: Arc<Hub>,
    pub(crate) replay: ReplayContext,
    pub(crate) shutdown: CancellationToken,
    pub(crate) topic: String,
    pub(crate) namespace: String,
    pub(crate) settings: SessionSettings,
    e2e_latency: Histogram,
    queue_age: Histogram,
    frames_sent: Counter,
    slow_disconnects: Counter,
}

impl SessionContext {
    pub(crate) fn new(
        hub: Arc<Hub>,
        replay: ReplayContext,
        shutdown: CancellationToken,
        topic: String,
        namespace: String,
        settings: SessionSettings,
    ) -> Self {
        Self {
            hub,
            replay,
            shutdown,
            topic,
            namespace,
            settings,
            e2e_latency: metrics::histogram!(telemetry::E2E_LATENCY_MS),
            queue_age: metrics::histogram!(telemetry::CLIENT_QUEUE_AGE),
            frames_sent: metrics::counter!(telemetry::FRAMES_SENT),
            slow_disconnects: metrics::counter!(telemetry::SLOW_CLIENT_DISCONNECTS),
        }
    }
}

/// Messages a client may send. Unknown types get an `error` frame.
#[derive(serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientMessage {
    Ping,
}

/// What the client said before live delivery started.
enum Intent {
    Resume(ResumeFrom),
    Live,
    Gone,
}

/// Waits for the client's first message (up to the grace period).
async fn first_message<R, S>(ctx: &SessionContext, rx: &mut R, tx: &mut Socket<S>) -> Intent
where
    R: futures_util::Stream<Item = Result<Message, axum::Error>> + Unpin,
    S: futures_util::Sink<Message> + Unpin + Send,
{
    let msg = tokio::select! {
        _ = tokio::time::sleep(ctx.settings.resume_grace) => return Intent::Live,
        _ = ctx.shutdown.cancelled() => return Intent::Live,
        m = rx.next() => m,
    };
    match msg {
        Some(Ok(Message::Text(t))) => {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&t) {
                if v["type"] == "resume" {
                    return match ResumeFrom::from_message(&v, ctx.settings.max_resume_partitions) {
                        Ok(from) => Intent::Resume(from),
                        Err(e) => {
                            metrics::counter!(telemetry::CLIENT_PROTOCOL_ERRORS, "reason" => "invalid_resume").increment(1);
                            let err = control::error("invalid_resume", &e);
                            if tx.send_text(err).await.is_err() {
                                Intent::Gone
                            } else {
                                Intent::Live
                            }
                        }
                    };
                }
            }
            if tx.send_text(handle_client_text(&t)).await.is_err() {
                Intent::Gone
            } else {
                Intent::Live
            }
        }
        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => Intent::Gone,
        Some(Ok(Message::Binary(_))) => {
            metrics::counter!(telemetry::CLIENT_PROTOCOL_ERRORS, "reason" => "binary_from_client")
                .increment(1);
            let e = control::error("unsupported", "clients send JSON text messages only");
            if tx.send_text(e).await.is_err() {
                Intent::Gone
            } else {
                Intent::Live
            }
        }
        Some(Ok(_)) => Intent::Live,
    }
}

pub(crate) async fn run(
    socket: WebSocket,
    ctx: Arc<SessionContext>,
    format: Format,
    filter: Filter,
    resume: Option<ResumeFrom>,
) {
    let hello = control::hello(
        env!("CARGO_PKG_VERSION"),
        &ctx.topic,
        &ctx.namespace,
        format.as_str(),
        filter.describe(),
    );
    let _session = ctx.hub.enter_session();
    // Without ?resume=, live frames are queued from the hello on (not sent)
    // until the client's first message or the grace period says whether it
    // resumes; if it does, this queue is dropped: replay covers those frames.
    let early = resume.is_none().then(|| ctx.hub.subscribe(filter.clone()));
    let (tx, mut rx) = socket.split();
    let mut tx = Socket::new(
        tx,
        format,
        ctx.settings.write_timeout,
        ctx.slow_disconnects.clone(),
    );
    if tx.send_text(hello).await.is_err() {
        return;
    }
    let intent = match resume {
        Some(from) => Intent::Resume(from),
        None => first_message(&ctx, &mut rx, &mut tx).await,
    };
    let mut sent = Sent::default();
    let mut sub: Subscription = match (intent, early) {
        (Intent::Gone, _) => return,
        (Intent::Live, Some(early)) => early,
        (Intent::Live, None) => ctx.hub.subscribe(filter),
        (Intent::Resume(from), early) => {
            drop(early);
            let started = std::time::Instant::now();
            let replayed = tokio::select! {
                // Boxed: the replay's state lives on the heap only while it runs,
                // not in every session's future.
                r = Box::pin(driver::replay(&ctx.replay, &mut tx, filter, from, &mut sent)) => r,
                _ = ctx.shutdown.cancelled() => Err(Gone),
            };
            if ctx.shutdown.is_cancelled() {
                tx.close(CLOSE_GOING_AWAY, "server shutting down").await;
                return;
            }
            let Ok(r) = replayed else { return };
            let reason = if r.stale {
                Some("cursor_stale")
            } else if r.gaps > 0 {
                Some("gaps")
            } else {
                None
            };
            let done = control::replay_complete(
                r.replayed,
                r.gaps == 0,
                reason,
                r.gaps,
                started.elapsed().as_millis() as u64,
            );
            if tx.send_text(done).await.is_err() {
                return;
            }
            r.subscription
        }
    };
    let mut batch = Batch::default();
    let close = loop {
        tokio::select! {
            biased;
            _ = ctx.shutdown.cancelled() => break Some((CLOSE_GOING_AWAY, "server shutting down")),
            out = sub.rx.recv() => {
                let Some(out) = out else { break None };
                // Everything already queued goes out in one write (one flush),
                // bounded so a busy client still lets others run.
                let mut next = Some(out);
                let mut verdict = Ok(());
                while let Some(out) = next.take() {
                    verdict = relay(&ctx, &mut sub, &mut sent, &mut tx, &mut batch, out).await;
                    if verdict.is_err() || batch.full() {
                        break;
                    }
                    next = sub.rx.try_recv().ok();
                }
                if let Err(close) = verdict {
                    break Some(close);
                }
                if tx.flush().await.is_err() {
                    break Some((CLOSE_SLOW_CLIENT, "client too slow"));
                }
                batch.sent(&ctx);
            }
            inc = rx.next() => match inc {
                None | Some(Ok(Message::Close(_))) => break None,
                Some(Err(e)) => break close_for_read_error(e),
                Some(Ok(Message::Text(t))) => {
                    let reply = handle_client_text(&t);
                    if tx.send_text(reply).await.is_err() {
                        break None;
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    metrics::counter!(telemetry::CLIENT_PROTOCOL_ERRORS, "reason" => "binary_from_client").increment(1);
                    let e = control::error("unsupported", "clients send JSON text messages only");
                    if tx.send_text(e).await.is_err() {
                        break None;
                    }
                }
                Some(Ok(_)) => {} // ping/pong are answered by the WebSocket layer
            }
        }
    };
    if let Some((code, reason)) = close {
        tx.close(code, reason).await;
    }
}

/// Frames written since the last flush: at most this many, or this many
/// bytes, go out in one write.
const BATCH_FRAMES: usize = 64;
const BATCH_BYTES: usize = 256 * 1024;

/// What one write batch holds until it is flushed.
#[derive(Default)]
struct Batch {
    /// Data frames this session took from its queue (samples the queue age).
    dequeued: u64,
    frames: u64,
    bytes: usize,
    /// Producer timestamps (µs) of the frames whose end-to-end latency this
    /// session records (each frame once, by whichever session sends it first).
    samples: Vec<i64>,
}

impl Batch {
    fn full(&self) -> bool {
        self.frames as usize >= BATCH_FRAMES || self.bytes >= BATCH_BYTES
    }

    /// The batch reached the socket: count it and record the latency samples.
    fn sent(&mut self, ctx: &SessionContext) {
        ctx.frames_sent.increment(self.frames);
        if !self.samples.is_empty() {
            let now_us = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_micros() as i64)
                .unwrap_or(0);
            for ts_us in self.samples.drain(..) {
                ctx.e2e_latency
                    .record(((now_us - ts_us).max(0) as f64) / 1000.0);
            }
        }
        self.frames = 0;
        self.bytes = 0;
    }
}

/// Writes one queued item (without flushing), preceded by the `lagged` and
/// `gap` notices for whatever the hub dropped for this client. `Err` carries
/// the close code and reason that end the session.
async fn relay<S>(
    ctx: &SessionContext,
    sub: &mut Subscription,
    sent: &mut Sent,
    tx: &mut Socket<S>,
    batch: &mut Batch,
    out: Outbound,
) -> Result<(), (u16, &'static str)>
where
    S: futures_util::Sink<Message> + Unpin + Send,
{
    const TOO_SLOW: (u16, &str) = (CLOSE_SLOW_CLIENT, "client too slow");
    // Tell the client exactly what it lost while it was behind.
    let lagged = sub.state.lagged.swap(0, Ordering::Relaxed);
    if lagged > 0 {
        tx.feed(Message::Text(control::lagged(lagged).into()))
            .await
            .map_err(|_| TOO_SLOW)?;
        for (p, a, b) in sub.state.take_lost() {
            let gap = control::gap(p, a, b, "slow_client");
            tx.feed(Message::Text(gap.into()))
                .await
                .map_err(|_| TOO_SLOW)?;
        }
    }
    let since = sub.state.lagging_since_ms.load(Ordering::Relaxed);
    if since > 0 {
        if sub.rx.len() * 2 < ctx.settings.queue_frames {
            // Caught up to below half its queue: no longer lagging.
            sub.state.lagging_since_ms.store(0, Ordering::Relaxed);
        } else if crate::util::unix_ms() - since
            > ctx.settings.slow_client_disconnect.as_millis() as i64
        {
            ctx.slow_disconnects.increment(1);
            return Err((CLOSE_SLOW_CLIENT, "slow client: stayed behind too long"));
        }
    }
    let msg = match out {
        Outbound::Data(f, queued_at) => {
            let len = f.binary_len();
            sub.state.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            // One frame in 16 per session: no shared counter on the hot path.
            batch.dequeued = batch.dequeued.wrapping_add(1);
            if batch.dequeued % 16 == 1 {
                ctx.queue_age.record(queued_at.elapsed().as_secs_f64());
            }
            if !sent.admit(&f) {
                return Ok(());
            }
            let m = tx.message(&f);
            batch.frames += 1;
            batch.bytes += len;
            if f.claim_latency_sample() {
                if let Some(ts_us) = f.decoded.timestamp_us() {
                    batch.samples.push(ts_us);
                }
            }
            m
        }
        Outbound::Control(t) => {
            batch.bytes += t.len();
            Message::Text(t)
        }
    };
    tx.feed(msg).await.map_err(|_| TOO_SLOW)
}

/// A message over WEBSOCKET_MAX_INCOMING_BYTES gets close code 1009; other
/// read errors end the session without a close frame (the socket is gone).
fn close_for_read_error(e: axum::Error) -> Option<(u16, &'static str)> {
    use tokio_tungstenite::tungstenite::Error as WsError;
    let inner = e.into_inner();
    match inner.downcast_ref::<WsError>() {
        Some(WsError::Capacity(_)) => {
            metrics::counter!(telemetry::CLIENT_PROTOCOL_ERRORS, "reason" => "message_too_big")
                .increment(1);
            Some((CLOSE_MESSAGE_TOO_BIG, "message too big"))
        }
        _ => None,
    }
}

/// Replies to one client text message. Never panics on any input.
pub(crate) fn handle_client_text(text: &str) -> String {
    match serde_json::from_str::<ClientMessage>(text) {
        Ok(ClientMessage::Ping) => control::pong(),
        Err(_)
            if serde_json::from_str::<serde_json::Value>(text)
                .is_ok_and(|v| v["type"] == "resume") =>
        {
            metrics::counter!(telemetry::CLIENT_PROTOCOL_ERRORS, "reason" => "late_resume")
                .increment(1);
            control::error("late_resume", "resume must be the first message (or ?resume= on the URL); live delivery has started")
        }
        Err(e) => {
            metrics::counter!(telemetry::CLIENT_PROTOCOL_ERRORS, "reason" => "invalid_message")
                .increment(1);
            let mut msg = e.to_string();
            crate::util::truncate_on_char_boundary(&mut msg, 200);
            control::error("invalid_message", &msg)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_get_a_reply_never_a_panic() {
        assert!(handle_client_text(r#"{"type":"ping"}"#).contains("pong"));
        for bad in [
            "",
            "{",
            "null",
            r#"{"type":"nope"}"#,
            "\u{1F600}",
            &"é".repeat(10_000),
        ] {
            let r: serde_json::Value = serde_json::from_str(&handle_client_text(bad)).unwrap();
            assert_eq!(r["type"], "error");
            assert!(r["message"].as_str().unwrap().len() <= 200);
        }
    }

    proptest::proptest! {
        /// Any client text, including multi-byte characters and huge or
        /// malformed JSON, gets a JSON reply and never a panic.
        #[test]
        fn any_client_text_gets_a_json_reply(text in "(?s).{0,2000}") {
            let reply: serde_json::Value = serde_json::from_str(&handle_client_text(&text)).expect("reply is JSON");
            proptest::prop_assert!(reply["type"] == "pong" || reply["type"] == "error");
            if reply["type"] == "error" {
                proptest::prop_assert!(reply["message"].as_str().is_some_and(|m| m.len() <= 200));
            }
        }

        /// Handshake inputs (query values, resume messages) never panic and
        /// either parse or give a reason.
        #[test]
        fn handshake_inputs_never_panic(a in "(?s).{0,600}", b in "(?s).{0,600}", c in "(?s).{0,600}") {
            let _ = crate::hub::Filter::parse(Some(&a), Some(&b), Some(&c), 256);
            if let Err(e) = ResumeFrom::from_query(Some("cursor"), Some(&a), 1024) {
                proptest::prop_assert!(!e.is_empty());
            }
            let _ = crate::http::admission::IpNet::parse(&b);
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&c) {
                let _ = ResumeFrom::from_message(&v, 1024);
            }
        }

        /// Resume messages built from arbitrary partition/offset values.
        #[test]
        fn resume_messages_validate_every_entry(p in proptest::collection::vec(("[-0-9a-z]{0,12}", proptest::num::i64::ANY), 0..40)) {
            let obj: serde_json::Map<String, serde_json::Value> = p.into_iter().map(|(k, v)| (k, serde_json::Value::from(v))).collect();
            let v = serde_json::json!({"type": "resume", "from": "cursor", "lastOffsets": obj});
            match ResumeFrom::from_message(&v, 1024) {
                Ok(crate::replay::ResumeFrom::Cursor(m)) => proptest::prop_assert!(m.iter().all(|(p, o)| *p >= 0 && *o >= -1)),
                Ok(_) => proptest::prop_assert!(false, "cursor expected"),
                Err(e) => proptest::prop_assert!(!e.is_empty()),
            }
        }
    }
}
