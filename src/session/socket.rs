//! The writing half of one client's WebSocket: every write bounded by the
//! session's write timeout (`WEBSOCKET_WRITE_TIMEOUT_SECS`), data frames in
//! the client's format, and the close codes the bridge sends.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use futures_util::{Sink, SinkExt};
use metrics::Counter;

use crate::hub::Format;
use crate::record::frame::Frame;
use crate::replay::out::{Gone, ReplayOut};

/// Close code sent when the server shuts down ("going away").
pub(crate) const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code for a client that cannot keep up with writes (policy violation).
pub(crate) const CLOSE_SLOW_CLIENT: u16 = 1008;
/// Close code for a new client refused while the circuit breaker is open.
pub(crate) const CLOSE_TRY_AGAIN_LATER: u16 = 1013;
/// The token that opened the connection expired: get a fresh one and
/// resume with the cursor (private-use range, RFC 6455 §7.4.2).
pub(crate) const CLOSE_TOKEN_EXPIRED: u16 = 4001;

/// How long a close frame may take to go out before the socket is dropped.
const CLOSE_WRITE_LIMIT: Duration = Duration::from_millis(500);

pub(crate) struct Socket<S> {
    tx: S,
    format: Format,
    write_timeout: Duration,
    /// Counts a write that timed out: the client stopped reading.
    slow_disconnects: Counter,
}

impl<S> Socket<S>
where
    S: Sink<Message> + Unpin + Send,
{
    pub(crate) fn new(
        tx: S,
        format: Format,
        write_timeout: Duration,
        slow_disconnects: Counter,
    ) -> Self {
        Self {
            tx,
            format,
            write_timeout,
            slow_disconnects,
        }
    }

    /// A data frame as this client reads it (encoded once, shared).
    pub(crate) fn message(&self, f: &Frame) -> Message {
        match self.format {
            Format::Binary => Message::Binary(f.binary()),
            Format::Json => Message::Text(f.json()),
        }
    }

    /// Writes and flushes one message.
    pub(crate) async fn send(&mut self, msg: Message) -> Result<(), Gone> {
        bounded(
            self.write_timeout,
            &self.slow_disconnects,
            self.tx.send(msg),
        )
        .await
    }

    /// Writes one text message and flushes.
    pub(crate) async fn send_text(&mut self, text: String) -> Result<(), Gone> {
        self.send(Message::Text(text.into())).await
    }

    /// Buffers one message (written out when the buffer fills or on [`Socket::flush`]).
    pub(crate) async fn feed(&mut self, msg: Message) -> Result<(), Gone> {
        bounded(
            self.write_timeout,
            &self.slow_disconnects,
            self.tx.feed(msg),
        )
        .await
    }

    /// Buffers one message if the socket takes it without a wait: `false`
    /// (the message dropped, nothing written) when the client's socket is
    /// full.
    pub(crate) async fn try_feed(&mut self, msg: Message) -> Result<bool, Gone> {
        let mut write = std::pin::pin!(self.tx.feed(msg));
        // A feed that is not ready has not taken its message: dropping it loses nothing.
        match poll_once(write.as_mut()).await {
            Some(Ok(())) => Ok(true),
            Some(Err(_)) => Err(Gone),
            None => Ok(false),
        }
    }

    /// Waits until the socket takes a message, bounded by the write timeout.
    pub(crate) async fn ready(&mut self) -> Result<(), Gone> {
        let tx = &mut self.tx;
        bounded(
            self.write_timeout,
            &self.slow_disconnects,
            std::future::poll_fn(|cx| std::pin::Pin::new(&mut *tx).poll_ready(cx)),
        )
        .await
    }

    /// Writes out what [`Socket::feed`] buffered.
    pub(crate) async fn flush(&mut self) -> Result<(), Gone> {
        bounded(self.write_timeout, &self.slow_disconnects, self.tx.flush()).await
    }

    /// The client sent a Close: the WebSocket layer queued the reply (its
    /// code echoed, RFC 6455 §5.5.1); writing it out takes a flush, bounded
    /// like [`Socket::close`]. Then the connection ends.
    pub(crate) async fn answer_close(&mut self) {
        let _ = tokio::time::timeout(CLOSE_WRITE_LIMIT, self.tx.flush()).await;
    }

    /// Sends a close frame, waiting at most 500 ms for it to go out.
    pub(crate) async fn close(&mut self, code: u16, reason: &'static str) {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        };
        let _ = tokio::time::timeout(CLOSE_WRITE_LIMIT, self.tx.send(Message::Close(Some(frame))))
            .await;
    }
}

async fn bounded<E>(
    limit: Duration,
    slow_disconnects: &Counter,
    write: impl std::future::Future<Output = Result<(), E>>,
) -> Result<(), Gone> {
    // Most writes only fill the buffer and are done at once: no timer for those.
    let mut write = std::pin::pin!(write);
    let first = poll_once(write.as_mut()).await.map(|r| r.is_ok());
    let done = match first {
        Some(ok) => Some(ok),
        None => tokio::time::timeout(limit, write)
            .await
            .ok()
            .map(|r| r.is_ok()),
    };
    match done {
        Some(true) => Ok(()),
        Some(false) => Err(Gone),
        None => {
            // The client stopped reading: its session ends (close 1008).
            slow_disconnects.increment(1);
            Err(Gone)
        }
    }
}

impl<S> ReplayOut for Socket<S>
where
    S: Sink<Message> + Unpin + Send,
{
    async fn frame(&mut self, f: &Frame) -> Result<(), Gone> {
        let msg = self.message(f);
        self.feed(msg).await
    }

    async fn control(&mut self, text: String) -> Result<(), Gone> {
        self.feed(Message::Text(text.into())).await
    }

    async fn flush(&mut self) -> Result<(), Gone> {
        Socket::flush(self).await
    }

    async fn try_frame(&mut self, f: &Frame) -> Result<bool, Gone> {
        let msg = self.message(f);
        self.try_feed(msg).await
    }

    async fn ready(&mut self) -> Result<(), Gone> {
        Socket::ready(self).await
    }
}

/// Polls `fut` once: its output if it is ready at once, else `None` (the
/// future stays as it is, to be polled again or dropped).
async fn poll_once<F: std::future::Future>(mut fut: std::pin::Pin<&mut F>) -> Option<F::Output> {
    use std::task::Poll;
    std::future::poll_fn(|cx| {
        Poll::Ready(match fut.as_mut().poll(cx) {
            Poll::Ready(r) => Some(r),
            Poll::Pending => None,
        })
    })
    .await
}
