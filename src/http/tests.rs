//! The HTTP surface in process, without Kafka: the router is served on a
//! port-0 listener over an in-memory hub with no Redis and no Kafka tier, and
//! the consumer task is a channel the test answers. Each test checks what a
//! client sees: the status, the error code, the close code.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use futures_util::StreamExt;
use metrics_exporter_prometheus::PrometheusBuilder;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{self, protocol::frame::coding::CloseCode};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::admin_auth::AdminAuth;
use super::admission::Admission;
use super::backpressure::Utilisation;
use super::health::Health;
use super::router;
use super::state::AppState;
use crate::config::ServeArgs;
use crate::dlq::sink::DlqHealth;
use crate::hub::Hub;
use crate::ingest::consume::AdminCommand;
use crate::ingest::halt::ReleaseError;
use crate::ingest::status::{IngestStatus, KafkaState};
use crate::replay::config::PageLimit;
use crate::replay::driver::ReplayContext;
use crate::replay::slots::ReplaySlots;
use crate::replay::tiers::LiveTiers;
use crate::session::{SessionContext, SessionSettings};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
}

struct Harness {
    addr: SocketAddr,
    admission: Arc<Admission>,
    ingest: Arc<IngestStatus>,
    admin_rx: Option<mpsc::Receiver<AdminCommand>>,
    shutdown: CancellationToken,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Serves the router with the settings `serve` would have for `flags`.
async fn start(flags: &[&str]) -> Harness {
    let mut argv = vec!["t"];
    argv.extend_from_slice(flags);
    let cfg = Cli::try_parse_from(argv)
        .expect("flags parse")
        .serve
        .validate()
        .expect("valid settings");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let hub = Hub::new(cfg.delivery.clone(), cfg.replay.memory);
    let admission = Admission::new(cfg.http.admission.clone());
    let ingest = Arc::new(IngestStatus::default());
    let replay = ReplayContext {
        hub: hub.clone(),
        tiers: LiveTiers {
            redis: None,
            kafka: None,
        },
        watermarks: Default::default(),
        page: PageLimit {
            records: cfg.replay.page,
            bytes: cfg.replay.page_bytes,
        },
        limits: cfg.ingest.limits,
        replays: ReplaySlots::new(cfg.replay.max_concurrent),
        budget: cfg.replay.budget,
    };
    let sessions = Arc::new(SessionContext::new(
        hub,
        replay,
        shutdown.clone(),
        cfg.topic.clone(),
        "ns".into(),
        SessionSettings {
            resume_grace: cfg.replay.resume_grace,
            max_resume_partitions: 1024,
            slow_client_disconnect: cfg.slow_clients.slow_client_disconnect,
            write_timeout: cfg.slow_clients.write_timeout,
        },
    ));
    let (admin_tx, admin_rx) = mpsc::channel(16);
    let state = AppState {
        health: Arc::new(Health {
            ingest: ingest.clone(),
            dlq: Arc::new(DlqHealth::default()),
            dlq_fail_closed: false,
            redis: None,
            admission: admission.clone(),
            namespace: "ns".into(),
        }),
        sessions,
        tracker: TaskTracker::new(),
        metrics: PrometheusBuilder::new().build_recorder().handle(),
        admin_tx,
        admin: AdminAuth::new(cfg.http.admin_token.clone(), addr),
        admission: admission.clone(),
        auth: Arc::new(cfg.http.auth.clone()),
        max_incoming_bytes: cfg.http.max_incoming_bytes,
        max_filter_values: cfg.http.max_filter_values,
        group_id: cfg.ingest.group_id.clone(),
        shared_limits: Default::default(),
    };
    let app = router(state);
    let stop = shutdown.clone();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
    });
    Harness {
        addr,
        admission,
        ingest,
        admin_rx: Some(admin_rx),
        shutdown,
    }
}

impl Harness {
    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Status and JSON body of a plain HTTP request.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, serde_json::Value) {
        let mut req = reqwest::Client::new().request(method, self.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("HTTP request");
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&body).unwrap_or_default())
    }

    async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        self.call(reqwest::Method::GET, path, &[]).await
    }

    /// A WebSocket handshake: `Ok` with the socket, or the HTTP refusal.
    async fn ws(
        &self,
        query: &str,
    ) -> Result<
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        (u16, Option<String>),
    > {
        let url = format!("ws://{}/ws{}", self.addr, query);
        match tokio_tungstenite::connect_async(url).await {
            Ok((ws, _)) => Ok(ws),
            Err(tungstenite::Error::Http(resp)) => Err((
                resp.status().as_u16(),
                resp.headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
            )),
            Err(e) => panic!("handshake failed: {e}"),
        }
    }
}

#[tokio::test]
async fn bad_ws_queries_get_400_naming_the_problem_before_any_upgrade() {
    let h = start(&[]).await;
    let many = vec!["t"; 257].join(",");
    for (query, code) in [
        ("?format=xml", "invalid_format"),
        (&*format!("?threads={many}"), "invalid_filter"),
        ("?threads=", "invalid_filter"),
        ("?resume=sometime", "invalid_resume"),
        ("?resume=cursor", "invalid_resume"),
        ("?last_offsets=0:x", "invalid_resume"),
        ("?last_offsets=-1:3", "invalid_resume"),
        ("?resume=earliest&notices=zz:1", "invalid_resume"),
    ] {
        let (status, body) = h.get(&format!("/ws{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"], code, "{query}: {body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // A valid query without the upgrade headers is told what it needs.
    let (status, body) = h.get("/ws?format=json&resume=earliest").await;
    assert_eq!(status, 426, "{body}");
    assert_eq!(body["error"], "websocket_required");
}

#[tokio::test]
async fn access_refusals_are_401_for_tokens_and_403_for_origins_and_claims() {
    let secret = "s".repeat(32);
    let h = start(&[
        "--websocket-auth-tokens",
        "static-token-0123456789",
        "--websocket-auth-hmac-secret",
        &secret,
        "--websocket-allowed-origins",
        "https://dash.example",
    ])
    .await;
    let (s, b) = h.get("/ws").await;
    assert_eq!((s, b["error"].as_str()), (401, Some("unauthorized")), "{b}");
    let (s, _) = h.get("/ws?token=wrong-token-0123456789").await;
    assert_eq!(s, 401);
    let bearer = [("authorization", "Bearer static-token-0123456789")];
    let (s, b) = h
        .call(
            reqwest::Method::GET,
            "/ws",
            &[bearer[0], ("origin", "https://evil.example")],
        )
        .await;
    assert_eq!((s, b["error"].as_str()), (403, Some("forbidden")), "{b}");
    // Past access, the missing upgrade is the only problem left.
    let (s, _) = h
        .call(
            reqwest::Method::GET,
            "/ws",
            &[bearer[0], ("origin", "https://dash.example")],
        )
        .await;
    assert_eq!(s, 426);
    // A signed token's tenant claim narrows the filter: asking for another is refused.
    let exp = crate::util::unix_ms() / 1000 + 600;
    let token = crate::http::auth::sign(
        secret.as_bytes(),
        &format!(r#"{{"tenant":"acme","exp":{exp}}}"#),
    );
    let (s, _) = h.get(&format!("/ws?tenant=acme&token={token}")).await;
    assert_eq!(s, 426);
    let (s, b) = h.get(&format!("/ws?tenant=other&token={token}")).await;
    assert_eq!(s, 403, "{b}");
    let expired = crate::http::auth::sign(secret.as_bytes(), r#"{"tenant":"acme","exp":1}"#);
    let (s, _) = h.get(&format!("/ws?token={expired}")).await;
    assert_eq!(s, 401);
}

#[tokio::test]
async fn admission_refuses_with_429_503_and_1013_and_frees_slots() {
    let h = start(&["--websocket-max-connections-per-ip", "1"]).await;
    let mut first = h.ws("").await.expect("first client admitted");
    let hello = first.next().await.expect("hello").expect("frame");
    assert!(hello.to_text().unwrap().contains("\"hello\""), "{hello}");
    assert_eq!(h.ws("").await.err(), Some((429, Some("5".into()))));
    drop(first);
    // The slot comes back once the first session has ended.
    let mut admitted = None;
    for _ in 0..50 {
        if let Ok(ws) = h.ws("").await {
            admitted = Some(ws);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(admitted.is_some(), "the slot was not released");

    let h = start(&["--websocket-max-connections", "1"]).await;
    let _only = h.ws("").await.expect("admitted");
    assert_eq!(h.ws("").await.err(), Some((503, Some("5".into()))));

    // Backpressure critical: the breaker opens and the handshake ends in 1013.
    let h = start(&[]).await;
    h.admission.observe(&Utilisation {
        connections: 1.0,
        client_queues: 1.0,
        pipeline_queues: 1.0,
        memory: 1.0,
    });
    let mut ws = h.ws("").await.expect("handshake completes");
    match ws.next().await {
        Some(Ok(tungstenite::Message::Close(Some(f)))) => {
            assert_eq!(f.code, CloseCode::Again)
        }
        other => panic!("expected close 1013, got {other:?}"),
    }
    let (s, b) = h.get("/health/ready").await;
    assert_eq!(s, 503);
    assert!(b["reason"].as_str().unwrap().contains("not started"), "{b}");
}

#[tokio::test]
async fn admin_api_checks_its_token_and_asks_the_consumer_task() {
    let mut h = start(&["--admin-token", "admin-token-0123456789"]).await;
    let post = reqwest::Method::POST;
    let path = "/admin/threads/t-1/resume";
    let (s, _) = h.call(post.clone(), path, &[]).await;
    assert_eq!(s, 401);
    let (s, _) = h
        .call(post.clone(), path, &[("authorization", "Bearer nope")])
        .await;
    assert_eq!(s, 401);
    let auth = [("authorization", "Bearer admin-token-0123456789")];
    let long = format!("/admin/threads/{}/resume", "x".repeat(257));
    let (s, b) = h.call(post.clone(), &long, &auth).await;
    assert_eq!((s, b["error"].as_str()), (400, Some("invalid_thread_id")));
    let (s, b) = h
        .call(
            reqwest::Method::PUT,
            "/admin/tenants/acme/rate-limit",
            &auth,
        )
        .await;
    assert_eq!((s, b["error"].as_str()), (400, Some("invalid_body")));

    // The consumer task answers: not halted (404), then released (200).
    let mut rx = h.admin_rx.take().unwrap();
    let consumer = tokio::spawn(async move {
        let mut answered = 0;
        while let Some(cmd) = rx.recv().await {
            if let AdminCommand::ReleaseThread { thread, reply } = cmd {
                let _ = reply.send(if answered == 0 {
                    Err(ReleaseError::NotHalted(thread))
                } else {
                    Ok(3)
                });
                answered += 1;
            }
            if answered == 2 {
                break;
            }
        }
    });
    let (s, b) = h.call(post.clone(), path, &auth).await;
    assert_eq!((s, b["error"].as_str()), (404, Some("not_halted")), "{b}");
    let (s, b) = h.call(post.clone(), path, &auth).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["released"], 3);
    consumer.await.unwrap();
    // The consumer task is gone: 503, not a hang.
    let (s, b) = h.call(post, path, &auth).await;
    assert_eq!((s, b["error"].as_str()), (503, Some("consumer_stopped")));
}

#[tokio::test]
async fn readiness_and_health_follow_the_consumer() {
    let h = start(&[]).await;
    let (s, _) = h.get("/health/ready").await;
    assert_eq!(s, 503);
    h.ingest.set_consuming(true);
    h.ingest.set_kafka(KafkaState::Connected);
    let (s, b) = h.get("/health/ready").await;
    assert_eq!(s, 503);
    assert!(
        b["reason"].as_str().unwrap().contains("no partitions"),
        "{b}"
    );
    h.ingest.set_assigned_partitions(3);
    assert_eq!(h.get("/health/ready").await.0, 200);
    h.ingest.set_kafka(KafkaState::Disconnected);
    let (s, b) = h.get("/health").await;
    assert_eq!((s, b["status"].as_str()), (503, Some("unhealthy")), "{b}");
    let (s, b) = h.get("/version").await;
    assert_eq!((s, b["resume_namespace"].as_str()), (200, Some("ns")));
}
