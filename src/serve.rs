//! `serve`: wires the stages together and runs them until shutdown.
//!
//! consume → pipeline (decode → sequence → hold/deliver) → fanout → sessions,
//! with the HTTP server beside it. Shutdown: stop consuming, commit offsets,
//! close every client with 1001, exit — all within `SHUTDOWN_TIMEOUT_SECS`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::Consumer;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::BridgeConfig;
use crate::dlq::sink::{DlqHealth, DlqSink};
use crate::http;
use crate::http::admin_auth::AdminAuth;
use crate::http::admission::{self, Admission};
use crate::http::backpressure::Utilisation;
use crate::http::health::Health;
use crate::http::state::AppState;
use crate::hub::Hub;
use crate::ingest::consume;
use crate::ingest::pipeline::{Pipeline, PipelineConfig};
use crate::ingest::ratelimit::TenantRateLimiter;
use crate::ingest::status::IngestStatus;
use crate::replay::config::PageLimit;
use crate::replay::driver::ReplayContext;
use crate::replay::redis::{self, RedisTier, RedisTierConfig};
use crate::replay::request::MAX_RESUME_PARTITIONS;
use crate::replay::slots::ReplaySlots;
use crate::replay::tiers::{KafkaTier, LiveTiers};
use crate::replay::Watermarks;
use crate::session::{SessionContext, SessionSettings};
use crate::telemetry;

/// Binds `WEBSOCKET_HOST:WEBSOCKET_PORT` (the error names the setting).
pub(crate) async fn bind(cfg: &BridgeConfig) -> anyhow::Result<TcpListener> {
    TcpListener::bind(cfg.http.listen).await.with_context(|| {
        format!(
            "binding WEBSOCKET_HOST:WEBSOCKET_PORT = {}",
            cfg.http.listen
        )
    })
}

/// Runs the bridge on `listener` until `shutdown` is cancelled and every
/// stage has stopped within `SHUTDOWN_TIMEOUT_SECS`.
pub(crate) async fn run(
    cfg: BridgeConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let metrics = telemetry::install_recorder()?;
    telemetry::spawn_upkeep(metrics.clone());
    let dlq_health = Arc::new(DlqHealth::default());
    let status = Arc::new(IngestStatus::default());
    let dlq = Arc::new(
        DlqSink::new(&cfg.dlq, dlq_health.clone())
            .context("creating the DLQ producer (check KAFKA_DLQ_BROKERS and KAFKA_PROPERTIES)")?,
    );
    for name in &cfg.ignored {
        tracing::warn!(
            setting = name,
            "{name} has no effect: sessions read the shared log with their own cursors (no per-client queue)"
        );
    }
    let hub = Hub::new(cfg.delivery.clone(), cfg.replay.memory);
    let admission = Admission::new(cfg.http.admission.clone());
    let watermarks: Watermarks = Default::default();

    let (consumer, rebalance_rx) = consume::create_consumer(
        &cfg.ingest.consumer_properties,
        &cfg.topic,
        status.clone(),
        watermarks.clone(),
    )
    .context("creating the Kafka consumer (check KAFKA_BROKERS and KAFKA_PROPERTIES)")?;
    let consumer = Arc::new(consumer);

    let namespace = match &cfg.resume_namespace {
        Some(ns) => ns.clone(),
        None => {
            // The cluster id makes the namespace identical on every instance,
            // whatever broker addresses each one was given.
            let c = consumer.clone();
            let fetch = tokio::task::spawn_blocking(move || {
                c.client().fetch_cluster_id(Duration::from_secs(5))
            });
            let cluster = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                id = fetch => id.ok().flatten(),
            };
            resume_namespace(&cfg.topic, cluster.as_deref(), &cfg.brokers)
        }
    };

    let local = listener.local_addr()?;
    tracing::info!(listen = %local, topic = %cfg.topic, group = %cfg.ingest.group_id, namespace = %namespace, gap_policy = cfg.ingest.gap_policy.as_str(), dlq_topic = %cfg.dlq.topic, dlq_fail_closed = cfg.dlq.fail_closed, "kafka-ws-bridge serving");

    let redis = match &cfg.replay.redis_url {
        None => None,
        Some(url) => Some(RedisTier::start(RedisTierConfig {
            url: url.clone(),
            namespace: namespace.clone(),
            ttl_secs: cfg.replay.redis_ttl_secs,
            max_per_partition: cfg.replay.redis_max_per_partition,
            queue: cfg.replay.redis_queue,
            queue_bytes: cfg.replay.redis_queue_bytes,
            batch: redis::WRITE_BATCH,
            op_timeout: redis::OP_TIMEOUT,
        })?),
    };
    let health = Arc::new(Health {
        ingest: status.clone(),
        dlq: dlq_health,
        dlq_fail_closed: cfg.dlq.fail_closed,
        redis: redis.clone(),
        admission: admission.clone(),
        namespace: namespace.clone(),
    });
    let kafka_tier = cfg.replay.kafka.then(|| {
        KafkaTier::new(
            &cfg.ingest.consumer_properties,
            &cfg.topic,
            cfg.replay.kafka_max_concurrent,
        )
    });
    let replay = ReplayContext {
        hub: hub.clone(),
        tiers: LiveTiers {
            redis: redis.clone(),
            kafka: kafka_tier,
        },
        watermarks,
        page: PageLimit {
            records: cfg.replay.page,
            bytes: cfg.replay.page_bytes,
        },
        limits: cfg.ingest.limits,
        replays: ReplaySlots::new(cfg.replay.max_concurrent),
        budget: cfg.replay.budget,
    };
    let tracker = TaskTracker::new();
    let sessions = Arc::new(SessionContext::new(
        hub.clone(),
        replay,
        shutdown.clone(),
        cfg.topic.clone(),
        namespace,
        SessionSettings {
            resume_grace: cfg.replay.resume_grace,
            max_resume_partitions: MAX_RESUME_PARTITIONS,
            slow_client_disconnect: cfg.slow_clients.slow_client_disconnect,
            write_timeout: cfg.slow_clients.write_timeout,
        },
    ));
    spawn_admission_monitor(
        &cfg,
        admission.clone(),
        hub.clone(),
        dlq.clone(),
        redis.clone(),
        shutdown.clone(),
    );
    let (admin_tx, admin_rx) = mpsc::channel(ADMIN_QUEUE);
    let state = AppState {
        health,
        sessions,
        tracker: tracker.clone(),
        metrics,
        admin_tx: admin_tx.clone(),
        admin: AdminAuth::new(cfg.http.admin_token.clone(), local),
        admission: admission.clone(),
        auth: Arc::new(cfg.http.auth.clone()),
        max_incoming_bytes: cfg.http.max_incoming_bytes,
        max_filter_values: cfg.http.max_filter_values,
        group_id: cfg.ingest.group_id.clone(),
        shared_limits: Arc::default(),
    };
    // Several instances in one consumer group: the partitions others own
    // come from Redis, where their owners write every record they handle.
    if let Some(r) = &redis {
        let follower = crate::follow::Follower {
            hub: hub.clone(),
            tiers: LiveTiers {
                redis: Some(r.clone()),
                kafka: cfg
                    .replay
                    .kafka
                    .then(|| KafkaTier::new(&cfg.ingest.consumer_properties, &cfg.topic, 1)),
            },
            status: status.clone(),
            limits: cfg.ingest.limits,
            page: PageLimit {
                records: cfg.replay.page,
                bytes: cfg.replay.page_bytes,
            },
        };
        status.set_follower_starting(true);
        tokio::spawn(follower.run(shutdown.clone()));
        let limits = crate::follow::limits::LimitWatch {
            redis: r.clone(),
            applied: state.shared_limits.clone(),
            admin_tx: admin_tx.clone(),
        };
        tokio::spawn(limits.run(shutdown.clone()));
        if cfg.ingest.gap_policy == crate::ingest::sequence::GapPolicy::Halt {
            let watch = crate::follow::halts::HaltWatch {
                redis: r.clone(),
                hub: hub.clone(),
                status: status.clone(),
                admin_tx: admin_tx.clone(),
                limits: cfg.ingest.limits,
            };
            tokio::spawn(watch.run(shutdown.clone()));
        }
    }
    if let Some(jwt) = &cfg.http.auth.jwt {
        tokio::spawn(jwt.clone().refresh_loop(shutdown.clone()));
    }
    let app = http::router(state);
    let server = tokio::spawn(http::server::serve(
        listener,
        app,
        http::server::ServerLimits {
            header_timeout: cfg.http.header_timeout,
            max_pending: cfg.http.max_pending,
            send_buffer: cfg.http.send_buffer,
        },
        shutdown.clone(),
    ));

    let pipeline = Pipeline::new(
        PipelineConfig {
            limits: cfg.ingest.limits,
            gap_policy: cfg.ingest.gap_policy,
            sequence: cfg.ingest.sequence,
            halt: cfg.ingest.halt,
        },
        hub.clone(),
        status.clone(),
    )
    .with_redis(redis)
    .with_rate_limits(TenantRateLimiter::new(
        cfg.ingest.tenant_default_rate,
        cfg.ingest.tenant_rate_overrides.clone(),
    ));
    tracing::info!(
        startup_ms = started.elapsed().as_millis() as u64,
        "consumer starting"
    );
    let budget = cfg.shutdown_timeout;
    // DLQ flush and offset commit get part of the shutdown budget; closing clients the rest.
    let stop_started = consume::run(consume::Runner {
        consumer,
        hub: hub.clone(),
        pipeline,
        rebalance_rx,
        admin_rx,
        status: status.clone(),
        dlq,
        group_id: cfg.ingest.group_id.clone(),
        shutdown: shutdown.clone(),
        stop_budget: budget * 2 / 3,
    })
    .await;

    status.set_shutting_down();
    tracker.close();
    let remaining = budget
        .saturating_sub(stop_started.elapsed())
        .max(Duration::from_millis(500));
    if tokio::time::timeout(remaining, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = tracker.len(),
            "some client sessions did not close in time"
        );
    }
    let _ = tokio::time::timeout(Duration::from_millis(300), server).await;
    let took = stop_started.elapsed();
    metrics::histogram!(telemetry::SHUTDOWN_DURATION).record(took.as_secs_f64());
    tracing::info!(shutdown_ms = took.as_millis() as u64, "stopped");
    Ok(())
}

/// Operator commands waiting for the consumer task, at most.
const ADMIN_QUEUE: usize = 16;

/// Samples utilisation every 500 ms for the backpressure level and the breaker.
fn spawn_admission_monitor(
    cfg: &BridgeConfig,
    admission: Arc<Admission>,
    hub: Arc<Hub>,
    dlq: Arc<DlqSink>,
    redis: Option<Arc<RedisTier>>,
    shutdown: CancellationToken,
) {
    let (max_conn, dlq_max, redis_cap) = (
        cfg.http.admission.max_connections,
        cfg.dlq.max_in_flight,
        cfg.replay.redis_queue,
    );
    let adm = admission.clone();
    admission::spawn_monitor(
        admission,
        move || {
            // Priority shedding happens only at CRITICAL (seed 000/003).
            hub.set_shedding(crate::http::backpressure::category(adm.level()) >= 3);
            let dlq_u = dlq.in_flight() as f64 / dlq_max as f64;
            let redis_u = redis
                .as_ref()
                .map_or(0.0, |r| r.queue_len() as f64 / redis_cap as f64);
            Utilisation {
                connections: hub.connected() as f64 / max_conn as f64,
                client_queues: hub.catch_up_share(),
                pipeline_queues: dlq_u.max(redis_u),
                memory: 0.0,
            }
        },
        shutdown,
    );
}

/// `{topic}.{cluster id}`, or `{topic}.b{hash of the sorted broker list}` when
/// the cluster id is not available.
pub(crate) fn resume_namespace(topic: &str, cluster_id: Option<&str>, brokers: &str) -> String {
    let clean = |s: &str| {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect::<String>()
    };
    match cluster_id.filter(|c| !c.is_empty()) {
        Some(c) => format!("{}.{}", clean(topic), clean(c)),
        None => {
            let mut b: Vec<&str> = brokers.split(',').map(str::trim).collect();
            b.sort_unstable();
            let mut h: u64 = 0xcbf29ce484222325;
            for byte in b.join(",").bytes() {
                h ^= u64::from(byte);
                h = h.wrapping_mul(0x100000001b3);
            }
            format!("{}.b{:016x}", clean(topic), h)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_is_stable_across_broker_order() {
        assert_eq!(resume_namespace("t", Some("abc:1"), "x"), "t.abc_1");
        assert_eq!(
            resume_namespace("t", None, "b:1,a:2"),
            resume_namespace("t", None, "a:2, b:1")
        );
        assert_ne!(
            resume_namespace("t", None, "a:1"),
            resume_namespace("u", None, "a:1")
        );
    }
}
