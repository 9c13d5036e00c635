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

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt, StreamExt};
use metrics::{Counter, Histogram};
use tokio_util::sync::CancellationToken;

use crate::hub::{Filter, Format, Hub, Outbound, Subscription};
use crate::record::frame::control;
use crate::replay::driver::{self, ReplayContext, Sent};
use crate::replay::ResumeFrom;
use crate::telemetry;

/// Close code sent when the server shuts down ("going away").
pub(crate) const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code for a client that cannot keep up with writes (policy violation).
pub(crate) const CLOSE_SLOW_CLIENT: u16 = 1008;
/// Close code for a new client refused while the circuit breaker is open.
pub(crate) const CLOSE_TRY_AGAIN_LATER: u16 = 1013;
/// Close code for a client message over the size limit.
pub(crate) const CLOSE_MESSAGE_TOO_BIG: u16 = 1009;

/// Per-session limits.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SessionSettings {
    /// How long a client without `?resume=` may take to send its first message.
    pub(crate) resume_grace: Duration,
    /// Most partitions in one resume request.
    pub(crate) max_resume_partitions: usize,
    /// A client losing frames for longer than this is disconnected (1008).
    pub(crate) slow_client_disconnect: Duration,
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
async fn first_message<R, S>(ctx: &SessionContext, rx: &mut R, tx: &mut S) -> Intent
where
    R: futures_util::Stream<Item = Result<Message, axum::Error>> + Unpin,
    S: futures_util::Sink<Message> + Unpin,
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
                    return match driver::parse_resume_message(
                        &v,
                        ctx.settings.max_resume_partitions,
                    ) {
                        Ok(from) => Intent::Resume(from),
                        Err(e) => {
                            metrics::counter!(telemetry::CLIENT_PROTOCOL_ERRORS, "reason" => "invalid_resume").increment(1);
                            let err = control::error("invalid_resume", &e);
                            if send(tx, Message::Text(err.into())).await.is_err() {
                                Intent::Gone
                            } else {
                                Intent::Live
                            }
                        }
                    };
                }
            }
            if send(tx, Message::Text(handle_client_text(&t).into()))
                .await
                .is_err()
            {
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
            if send(tx, Message::Text(e.into())).await.is_err() {
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
    let (mut tx, mut rx) = socket.split();
    if send(&mut tx, Message::Text(hello.into())).await.is_err() {
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
                r = driver::replay(&ctx.replay, &mut tx, format, filter, from, &mut sent) => r,
                _ = ctx.shutdown.cancelled() => Err(()),
            };
            if ctx.shutdown.is_cancelled() {
                let frame = CloseFrame {
                    code: CLOSE_GOING_AWAY,
                    reason: Utf8Bytes::from_static("server shutting down"),
                };
                let _ = tokio::time::timeout(
                    Duration::from_millis(500),
                    tx.send(Message::Close(Some(frame))),
                )
                .await;
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
            if send(&mut tx, Message::Text(done.into())).await.is_err() {
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
                    verdict = relay(&ctx, &mut sub, &mut sent, &mut tx, &mut batch, format, out).await;
                    if verdict.is_err() || batch.full() {
                        break;
                    }
                    next = sub.rx.try_recv().ok();
                }
                if let Err(close) = verdict {
                    break Some(close);
                }
                if flush(&mut tx).await.is_err() {
                    break Some((CLOSE_SLOW_CLIENT, "client too slow"));
                }
                batch.sent(&ctx);
            }
            inc = rx.next() => match inc {
                None | Some(Ok(Message::Close(_))) => break None,
                Some(Err(e)) => break close_for_read_error(e),
                Some(Ok(Message::Text(t))) => {
                    let reply = handle_client_text(&t);
                    if send(&mut tx, Message::Text(reply.into())).await.is_err() {
                        break None;
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    metrics::counter!(telemetry::CLIENT_PROTOCOL_ERRORS, "reason" => "binary_from_client").increment(1);
                    let e = control::error("unsupported", "clients send JSON text messages only");
                    if send(&mut tx, Message::Text(e.into())).await.is_err() {
                        break None;
                    }
                }
                Some(Ok(_)) => {} // ping/pong are answered by the WebSocket layer
            }
        }
    };
    if let Some((code, reason)) = close {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        };
        let _ = tokio::time::timeout(
            Duration::from_millis(500),
            tx.send(Message::Close(Some(frame))),
        )
        .await;
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
    tx: &mut S,
    batch: &mut Batch,
    format: Format,
    out: Outbound,
) -> Result<(), (u16, &'static str)>
where
    S: SinkExt<Message> + Unpin,
{
    const TOO_SLOW: (u16, &str) = (CLOSE_SLOW_CLIENT, "client too slow");
    // Tell the client exactly what it lost while it was behind.
    let lagged = sub.state.lagged.swap(0, Ordering::Relaxed);
    if lagged > 0 {
        feed(tx, Message::Text(control::lagged(lagged).into()))
            .await
            .map_err(|_| TOO_SLOW)?;
        for (p, a, b) in sub.state.take_lost() {
            let gap = control::gap(p, a, b, "slow_client");
            feed(tx, Message::Text(gap.into()))
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
            let m = match format {
                Format::Binary => Message::Binary(f.binary()),
                Format::Json => Message::Text(f.json()),
            };
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
    feed(tx, msg).await.map_err(|_| TOO_SLOW)
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

static WRITE_TIMEOUT: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();

/// Sets the per-write bound for every session (once, at start-up).
pub(crate) fn set_write_timeout(d: Duration) {
    let _ = WRITE_TIMEOUT.set(d);
}

/// Writes and flushes one message within the write timeout.
pub(crate) async fn send<S>(tx: &mut S, msg: Message) -> Result<(), ()>
where
    S: SinkExt<Message> + Unpin,
{
    bounded_write(tx.send(msg)).await
}

/// Buffers one message (written out when the buffer fills or on [`flush`]).
pub(crate) async fn feed<S>(tx: &mut S, msg: Message) -> Result<(), ()>
where
    S: SinkExt<Message> + Unpin,
{
    bounded_write(tx.feed(msg)).await
}

/// Writes out what [`feed`] buffered.
pub(crate) async fn flush<S>(tx: &mut S) -> Result<(), ()>
where
    S: SinkExt<Message> + Unpin,
{
    bounded_write(tx.flush()).await
}

async fn bounded_write<E>(
    write: impl std::future::Future<Output = Result<(), E>>,
) -> Result<(), ()> {
    match tokio::time::timeout(
        *WRITE_TIMEOUT.get_or_init(|| Duration::from_secs(10)),
        write,
    )
    .await
    {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(()),
        Err(_) => {
            // The client stopped reading: its session ends (close 1008).
            metrics::counter!(telemetry::SLOW_CLIENT_DISCONNECTS).increment(1);
            Err(())
        }
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
            truncate_on_char_boundary(&mut msg, 200);
            control::error("invalid_message", &msg)
        }
    }
}

/// Truncates to at most `max` bytes without splitting a UTF-8 character.
pub(crate) fn truncate_on_char_boundary(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
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

    #[test]
    fn truncation_respects_char_boundaries() {
        let mut s = "aé€😀".repeat(3);
        truncate_on_char_boundary(&mut s, 5);
        assert_eq!(s, "aé");
        let mut s = "😀".to_string();
        truncate_on_char_boundary(&mut s, 3);
        assert_eq!(s, "");
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
            if let Err(e) = crate::replay::driver::parse_offsets_param(&a, 1024) {
                proptest::prop_assert!(!e.is_empty());
            }
            let _ = crate::http::admission::IpNet::parse(&b);
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&c) {
                let _ = crate::replay::driver::parse_resume_message(&v, 1024);
            }
        }

        /// Resume messages built from arbitrary partition/offset values.
        #[test]
        fn resume_messages_validate_every_entry(p in proptest::collection::vec(("[-0-9a-z]{0,12}", proptest::num::i64::ANY), 0..40)) {
            let obj: serde_json::Map<String, serde_json::Value> = p.into_iter().map(|(k, v)| (k, serde_json::Value::from(v))).collect();
            let v = serde_json::json!({"type": "resume", "from": "cursor", "lastOffsets": obj});
            match crate::replay::driver::parse_resume_message(&v, 1024) {
                Ok(crate::replay::ResumeFrom::Cursor(m)) => proptest::prop_assert!(m.iter().all(|(p, o)| *p >= 0 && *o >= -1)),
                Ok(_) => proptest::prop_assert!(false, "cursor expected"),
                Err(e) => proptest::prop_assert!(!e.is_empty()),
            }
        }
    }
}
