//! One WebSocket connection: sends `hello`, optionally replays history the
//! client asks for (`resume`), then reads the log forward with its own
//! cursors (`cursors`) and writes to the socket, while reading (bounded)
//! control messages.
//!
//! A client resumes with `?resume=…` on the URL, or with a `resume` message
//! as its first message; a client that passes no `resume` parameter joins
//! live delivery at its first message or after `RESUME_GRACE_MS`, from the
//! log's head as it was at its `hello`, so a resume sent right after `hello`
//! never races live frames.
//!
//! Every write is bounded by a timeout; a client that cannot take a frame in
//! that time is disconnected (1008). A client that reads, but stays behind
//! the newest record by more than `WEBSOCKET_SLOW_CLIENT_DISCONNECT_SECS`
//! (its catch-up cannot close the distance), is disconnected with 1008 too
//! and resumes from its cursor. Nothing is queued per client: a client that
//! never reads costs its socket buffer and its cursors.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use futures_util::{FutureExt, StreamExt};
use metrics::Counter;
use tokio_util::sync::CancellationToken;

use crate::hub::{Filter, Format, Hub};
use crate::record::frame::control;
use crate::replay::driver::{self, live_start, ReplayContext, Sent};
use crate::replay::out::Gone;
use crate::replay::ResumeFrom;
use crate::telemetry;

pub(crate) mod config;
pub(crate) mod cursors;
#[cfg(test)]
mod model;
pub(crate) mod socket;
mod violation;

use cursors::{Cursors, DeliveryMetrics};
use socket::{Socket, CLOSE_GOING_AWAY, CLOSE_SLOW_CLIENT, CLOSE_TOKEN_EXPIRED};

/// What ends a session from the server's side: shutdown, or the expiry of
/// the token that opened it.
struct Stop<'a> {
    shutdown: &'a CancellationToken,
    deadline: Option<tokio::time::Instant>,
}

const GOING_AWAY: (u16, &str) = (CLOSE_GOING_AWAY, "server shutting down");
const TOKEN_EXPIRED: (u16, &str) = (CLOSE_TOKEN_EXPIRED, "token expired");

impl<'a> Stop<'a> {
    /// `expires_at`: unix seconds.
    fn new(shutdown: &'a CancellationToken, expires_at: Option<u64>) -> Self {
        let deadline = expires_at.map(|at| {
            let left = (at as i64 * 1000 - crate::util::unix_ms()).max(0) as u64;
            tokio::time::Instant::now() + Duration::from_millis(left)
        });
        Self { shutdown, deadline }
    }

    /// Waits until the session must end; the close code and reason.
    async fn wait(&self) -> (u16, &'static str) {
        match self.deadline {
            None => {
                self.shutdown.cancelled().await;
                GOING_AWAY
            }
            Some(d) => tokio::select! {
                _ = self.shutdown.cancelled() => GOING_AWAY,
                _ = tokio::time::sleep_until(d) => TOKEN_EXPIRED,
            },
        }
    }

    /// Whether the session must end now.
    fn reached(&self) -> Option<(u16, &'static str)> {
        if self.shutdown.is_cancelled() {
            Some(GOING_AWAY)
        } else if self
            .deadline
            .is_some_and(|d| tokio::time::Instant::now() >= d)
        {
            Some(TOKEN_EXPIRED)
        } else {
            None
        }
    }
}

/// Sends the close a stop asks for (and counts an expiry).
async fn close_for<S>(tx: &mut Socket<S>, (code, reason): (u16, &'static str))
where
    S: futures_util::Sink<Message> + Unpin + Send,
{
    if code == CLOSE_TOKEN_EXPIRED {
        metrics::counter!(telemetry::TOKEN_EXPIRED_DISCONNECTS).increment(1);
    }
    tx.close(code, reason).await;
}

/// Per-session limits.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SessionSettings {
    /// How long a client without `?resume=` may take to send its first message.
    pub(crate) resume_grace: Duration,
    /// Most partitions in one resume request.
    pub(crate) max_resume_partitions: usize,
    /// A client that stays this far behind the newest record is disconnected (1008).
    pub(crate) slow_client_disconnect: Duration,
    /// Longest a single socket write may take (`WEBSOCKET_WRITE_TIMEOUT_SECS`).
    pub(crate) write_timeout: Duration,
}

/// Log slots one pass reads at most before the session looks at its socket
/// again (one flush per pass).
const PASS_BUDGET: usize = 512;

/// What every session shares.
pub(crate) struct SessionContext {
    pub(crate) hub: Arc<Hub>,
    pub(crate) replay: ReplayContext,
    pub(crate) shutdown: CancellationToken,
    pub(crate) topic: String,
    pub(crate) namespace: String,
    pub(crate) settings: SessionSettings,
    delivery: DeliveryMetrics,
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
            delivery: DeliveryMetrics::new(),
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
    /// Where from, and the client's notice cursor.
    Resume(ResumeFrom, Option<String>),
    Live,
    Gone,
}

/// Waits for the client's first message (up to the grace period).
async fn first_message<R, S>(
    ctx: &SessionContext,
    stop: &Stop<'_>,
    rx: &mut R,
    tx: &mut Socket<S>,
) -> Intent
where
    R: futures_util::Stream<Item = Result<Message, axum::Error>> + Unpin,
    S: futures_util::Sink<Message> + Unpin + Send,
{
    let msg = tokio::select! {
        _ = tokio::time::sleep(ctx.settings.resume_grace) => return Intent::Live,
        _ = stop.wait() => return Intent::Live,
        m = rx.next() => m,
    };
    match msg {
        Some(Ok(Message::Text(t))) => {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&t) {
                if v["type"] == "resume" {
                    let notices = v.get("notices").map(|n| {
                        n.as_str()
                            .filter(|c| crate::hub::notices::parse_cursor(c).is_ok())
                            .map(str::to_string)
                            .ok_or_else(|| crate::hub::notices::BadCursor.to_string())
                    });
                    let from = ResumeFrom::from_message(&v, ctx.settings.max_resume_partitions)
                        .and_then(|from| notices.transpose().map(|n| (from, n)));
                    return match from {
                        Ok((from, notices)) => Intent::Resume(from, notices),
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
        Some(Ok(Message::Close(c))) => {
            answer_close(tx, c).await;
            Intent::Gone
        }
        None => Intent::Gone,
        Some(Err(e)) => {
            fail(tx, e).await;
            Intent::Gone
        }
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
    notices: Option<String>,
    expires_at: Option<u64>,
) {
    let _session = ctx.hub.enter_session();
    let stop = Stop::new(&ctx.shutdown, expires_at);
    // Notices from here on reach this session (a resume may start earlier).
    let start = ctx.hub.notice_seq();
    let hello = control::hello(
        env!("CARGO_PKG_VERSION"),
        &ctx.topic,
        &ctx.namespace,
        format.as_str(),
        filter.describe(),
        &ctx.hub.notices.cursor(start),
    );
    // Without ?resume=, live delivery starts from the log's head as of the
    // hello, once the client's first message or the grace period says it
    // does not resume. The cursors are registered now, so ingest keeps what
    // they have not read meanwhile.
    let early = resume
        .is_none()
        .then(|| Cursors::new(&ctx.hub, live_start(&ctx.hub)).with_notices_after(start));
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
        Some(from) => Intent::Resume(from, notices),
        None => first_message(&ctx, &stop, &mut rx, &mut tx).await,
    };
    let (mut cursors, held) = match (intent, early) {
        (Intent::Gone, _) => return,
        (Intent::Live, Some(early)) => (early, None),
        (Intent::Live, None) => (
            Cursors::new(&ctx.hub, live_start(&ctx.hub)).with_notices_after(start),
            None,
        ),
        (Intent::Resume(from, notices), early) => {
            drop(early);
            match replay_history(&ctx, &stop, &mut tx, &mut rx, &filter, from, notices).await {
                Some(c) => c,
                None => return,
            }
        }
    };
    // A message the client sent during its replay is answered first.
    if let Some(inc) = held {
        if let Some(close) = incoming(&mut tx, Some(inc)).await {
            if let Some((code, reason)) = close {
                tx.close(code, reason).await;
            }
            return;
        }
    }
    let close = deliver(&ctx, &stop, &mut cursors, &filter, &mut tx, &mut rx).await;
    if let Some(close) = close {
        close_for(&mut tx, close).await;
    }
}

/// Replays what the client asked for, then sends `replay_complete`; the
/// cursors live delivery reads on from. The client's messages are read
/// meanwhile: a Close or a protocol violation ends the replay and is
/// answered at once; pings are answered by the WebSocket layer; the first
/// other message waits for the replay's end (further ones stay unread until
/// then). `None`: the session is over.
async fn replay_history<R, S>(
    ctx: &SessionContext,
    stop: &Stop<'_>,
    tx: &mut Socket<S>,
    rx: &mut R,
    filter: &Filter,
    from: ResumeFrom,
    notices: Option<String>,
) -> Option<(Cursors, Option<Result<Message, axum::Error>>)>
where
    R: futures_util::Stream<Item = Result<Message, axum::Error>> + Unpin,
    S: futures_util::Sink<Message> + Unpin + Send,
{
    let started = std::time::Instant::now();
    // The client's notice cursor, where this process can honour it; else
    // notices from now on.
    let seq = notices
        .and_then(|c| ctx.hub.notices.resolve(&c).ok().flatten())
        .unwrap_or_else(|| ctx.hub.notice_seq());
    let mut sent = Sent::default();
    let mut held = None;
    let ended = {
        // Boxed: the replay's state lives on the heap only while it runs,
        // not in every session's future.
        let mut replay = Box::pin(driver::replay(
            &ctx.replay,
            &mut *tx,
            filter.clone(),
            from,
            &mut sent,
            seq,
        ));
        loop {
            tokio::select! {
                r = &mut replay => break Ok(r),
                _ = stop.wait() => break Ok(Err(Gone)),
                inc = rx.next(), if held.is_none() => match inc {
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(Message::Text(_) | Message::Binary(_))) => held = inc,
                    ending => break Err(ending),
                },
            }
        }
    };
    if let Some(close) = stop.reached() {
        close_for(tx, close).await;
        return None;
    }
    let r = match ended {
        Ok(Ok(r)) => r,
        Ok(Err(Gone)) => return None,
        Err(ending) => {
            // A Close, a violation or the end of the stream: the replay stops here.
            incoming(tx, ending).await;
            return None;
        }
    };
    tracing::debug!(
        replayed = r.replayed,
        read = r.read,
        decoded = r.decoded,
        gaps = r.gaps,
        budget_exhausted = r.budget_exhausted,
        "replay done"
    );
    let reason = if r.budget_exhausted {
        Some("replay_budget")
    } else if r.stale {
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
        &ctx.hub.notices.cursor(seq),
    );
    tx.send_text(done).await.ok()?;
    Some((Cursors::new(&ctx.hub, r.next).with_notices_after(seq), held))
}

/// Live delivery: passes over the log while there is something to read,
/// then waits for an append, a client message or shutdown. Returns the
/// close code and reason, if one is to be sent.
async fn deliver<R, S>(
    ctx: &SessionContext,
    stop: &Stop<'_>,
    cursors: &mut Cursors,
    filter: &Filter,
    tx: &mut Socket<S>,
    rx: &mut R,
) -> Option<(u16, &'static str)>
where
    R: futures_util::Stream<Item = Result<Message, axum::Error>> + Unpin,
    S: futures_util::Sink<Message> + Unpin + Send,
{
    let hub = &*ctx.hub;
    let slow_after = ctx.settings.slow_client_disconnect.as_millis() as i64;
    let mut more = false;
    loop {
        if more || cursors.has_news(hub) {
            let pass = tokio::select! {
                biased;
                close = stop.wait() => return Some(close),
                // Boxed: an idle session's future does not carry a pass's state.
                p = Box::pin(cursors.pass(&ctx.replay, tx, filter, PASS_BUDGET, &ctx.delivery)) => p,
            };
            let Ok(pass) = pass else {
                return Some((CLOSE_SLOW_CLIENT, "client too slow"));
            };
            if pass.behind_ms > slow_after {
                ctx.slow_disconnects.increment(1);
                return Some((CLOSE_SLOW_CLIENT, "slow client: stayed behind too long"));
            }
            more = pass.more;
            if more {
                // Answer what the client sent meanwhile, without waiting.
                if let Some(inc) = rx.next().now_or_never() {
                    if let Some(close) = incoming(tx, inc).await {
                        return close;
                    }
                }
                continue;
            }
        }
        let appended = hub.log.appended();
        tokio::pin!(appended);
        appended.as_mut().enable();
        hub.log.will_wait();
        if cursors.has_news(hub) {
            continue;
        }
        cursors.idle();
        tokio::select! {
            biased;
            close = stop.wait() => return Some(close),
            _ = &mut appended => {}
            inc = rx.next() => {
                if let Some(close) = incoming(tx, inc).await {
                    return close;
                }
            }
        }
    }
}

/// Handles one client message. `Some` ends the session (with a close frame
/// if it holds one).
async fn incoming<S>(
    tx: &mut Socket<S>,
    inc: Option<Result<Message, axum::Error>>,
) -> Option<Option<(u16, &'static str)>>
where
    S: futures_util::Sink<Message> + Unpin + Send,
{
    match inc {
        Some(Ok(Message::Close(c))) => {
            answer_close(tx, c).await;
            Some(None)
        }
        None => Some(None),
        Some(Err(e)) => {
            fail(tx, e).await;
            Some(None)
        }
        Some(Ok(Message::Text(t))) => {
            let reply = handle_client_text(&t);
            tx.send_text(reply).await.err().map(|_| None)
        }
        Some(Ok(Message::Binary(_))) => {
            metrics::counter!(telemetry::CLIENT_PROTOCOL_ERRORS, "reason" => "binary_from_client")
                .increment(1);
            let e = control::error("unsupported", "clients send JSON text messages only");
            tx.send_text(e).await.err().map(|_| None)
        }
        Some(Ok(_)) => None, // ping/pong are answered by the WebSocket layer
    }
}

/// Answers a client's Close (the WebSocket layer queued the reply, with the
/// client's code or 1002 for a code a client may not send).
async fn answer_close<S>(tx: &mut Socket<S>, close: Option<axum::extract::ws::CloseFrame>)
where
    S: futures_util::Sink<Message> + Unpin + Send,
{
    if close.is_some_and(|c| {
        c.code == violation::CLOSE_PROTOCOL_ERROR
            && c.reason.as_str() == violation::INVALID_CLOSE_CODE_REPLY
    }) {
        metrics::counter!(telemetry::CLIENT_PROTOCOL_ERRORS, "reason" => "invalid_close_code")
            .increment(1);
    }
    tx.answer_close().await;
}

/// Reading from the client failed: a protocol violation gets its close code
/// (1002, 1007 or 1009, RFC 6455 §7.1.7) and is counted; a socket that is
/// gone gets nothing.
async fn fail<S>(tx: &mut Socket<S>, e: axum::Error)
where
    S: futures_util::Sink<Message> + Unpin + Send,
{
    let inner = e.into_inner();
    let Some(v) = inner
        .downcast_ref::<tokio_tungstenite::tungstenite::Error>()
        .and_then(violation::classify)
    else {
        return;
    };
    violation::count(v);
    tx.close(v.code, v.text).await;
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
