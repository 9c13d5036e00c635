//! The HTTP/1.1 accept loop: every connection must finish its request
//! headers within `HTTP_HEADER_TIMEOUT_SECS`, and at most
//! `HTTP_MAX_PENDING_CONNECTIONS` connections may be open without having
//! become a WebSocket (waiting for headers, being answered, idle between
//! keep-alive requests). Beyond that, a new connection gets a bare 503 and
//! is closed, so clients that never finish their headers (slowloris) cannot
//! hold memory or file descriptors without bound. An upgraded connection
//! leaves this count for the WebSocket admission slots (`/ws`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_service::Service;

use crate::telemetry;

#[derive(Clone, Copy, Debug)]
pub(crate) struct ServerLimits {
    /// Longest a connection may take to send a request's headers.
    pub(crate) header_timeout: Duration,
    /// Connections open at most before their upgrade (or without one).
    pub(crate) max_pending: usize,
    /// `WEBSOCKET_SEND_BUFFER_BYTES`, applied to every accepted socket.
    pub(crate) send_buffer: Option<usize>,
}

/// Bytes a connection buffers while reading a request (its head included).
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Written, without waiting, to a connection over the pending limit.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nContent-Type: application/json\r\nContent-Length: 92\r\nConnection: close\r\n\r\n{\"error\":\"too_many_pending_connections\",\"message\":\"HTTP_MAX_PENDING_CONNECTIONS is reached\"}";

/// Counts one connection that has not upgraded, for as long as it is so.
struct Pending {
    count: Arc<AtomicUsize>,
    gauge: metrics::Gauge,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let n = self.count.fetch_sub(1, Ordering::AcqRel) - 1;
        self.gauge.set(n as f64);
    }
}

/// Serves `app` on `listener` until `shutdown`.
pub(crate) async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: ServerLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let pending = Arc::new(AtomicUsize::new(0));
    let pending_gauge = metrics::gauge!(telemetry::HTTP_PENDING_CONNECTIONS);
    pending_gauge.set(0.0);
    metrics::gauge!(telemetry::HTTP_MAX_PENDING_CONNECTIONS).set(limits.max_pending as f64);
    let refused = metrics::counter!(telemetry::CONNECTIONS_REJECTED, "reason" => "pending_limit");
    let header_timeouts = metrics::counter!(telemetry::HTTP_HEADER_TIMEOUTS);
    refused.increment(0);
    header_timeouts.increment(0);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            a = listener.accept() => a,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let open = pending.fetch_add(1, Ordering::AcqRel);
        if open >= limits.max_pending {
            pending.fetch_sub(1, Ordering::AcqRel);
            refused.increment(1);
            let _ = tcp.try_write(BUSY);
            continue;
        }
        pending_gauge.set((open + 1) as f64);
        let guard = Pending {
            count: pending.clone(),
            gauge: pending_gauge.clone(),
        };
        // Loopback and LAN peers get small writes out at once.
        let _ = tcp.set_nodelay(true);
        if let Some(bytes) = limits.send_buffer {
            let _ = socket2::SockRef::from(&tcp).set_send_buffer_size(bytes);
        }
        let app = app.clone();
        let shutdown = shutdown.clone();
        let header_timeouts = header_timeouts.clone();
        tokio::spawn(async move {
            let _guard = guard;
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                let mut app = app.clone();
                async move { app.call(req).await }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                // Request line and headers: at most 64 KiB (hyper's default is ~400 KiB).
                .max_buf_size(MAX_HEAD_BYTES)
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades();
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                if e.is_timeout() {
                    header_timeouts.increment(1);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busy_answer_is_well_formed() {
        let text = std::str::from_utf8(BUSY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"], "too_many_pending_connections");
    }
}
