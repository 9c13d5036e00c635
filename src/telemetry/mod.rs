//! The one catalog of metric names, their help texts, and the process-wide
//! recorder and log setup.
//!
//! Every metric the bridge exports is named here and nowhere else; alert rules
//! and dashboards are written against these names. Hot paths hold pre-built
//! handles (see [`PipelineMetrics`]) instead of looking names up per record.

mod logs;

#[cfg(test)]
/// Counters a test's local recorder holds under `name`: (first label value, count).
pub(crate) fn test_counters(
    snap: &metrics_util::debugging::Snapshotter,
    name: &str,
) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = snap
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(k, ..)| k.key().name() == name)
        .filter_map(|(k, _, _, v)| match v {
            metrics_util::debugging::DebugValue::Counter(n) => Some((
                k.key()
                    .labels()
                    .next()
                    .map(|l| l.value().to_string())
                    .unwrap_or_default(),
                n,
            )),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

use std::time::Duration;

use metrics::{describe_counter, describe_gauge, describe_histogram, Counter, Histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub(crate) const KAFKA_MESSAGES: &str = "websocket_kafka_messages_total";
pub(crate) const DECODE_ERRORS: &str = "websocket_decode_errors_total";
pub(crate) const LEGACY_FRAMES: &str = "websocket_legacy_frames_total";
pub(crate) const INFRA_ERRORS: &str = "websocket_infrastructure_errors_total";
pub(crate) const CONSUMER_LAG: &str = "websocket_kafka_consumer_lag";
pub(crate) const CONSUMER_LAG_SECONDS: &str = "websocket_kafka_consumer_lag_seconds";
pub(crate) const ASSIGNED_PARTITIONS: &str = "websocket_kafka_assigned_partitions";
pub(crate) const E2E_LATENCY_MS: &str = "websocket_e2e_latency_ms";
pub(crate) const CONNECTED_CLIENTS: &str = "websocket_connected_clients";
pub(crate) const CONNECTIONS_OPENED: &str = "websocket_connections_total";
pub const FRAMES_SENT: &str = "websocket_frames_sent_total";
pub const DROPPED_MESSAGES: &str = "websocket_dropped_messages_total";
pub const CLIENT_LAG_MESSAGES: &str = "websocket_client_lag_messages_total";
pub(crate) const CLIENT_PROTOCOL_ERRORS: &str = "websocket_client_protocol_errors_total";
/// Replays that gave up waiting for a Kafka reader (the range became a `kafka_busy` gap).
pub(crate) const REPLAY_KAFKA_WAIT_TIMEOUTS: &str = "replay_buffer_kafka_wait_timeouts_total";
/// HTTP connections open that have not become WebSockets (gauge).
pub(crate) const HTTP_PENDING_CONNECTIONS: &str = "websocket_http_pending_connections";
/// `HTTP_MAX_PENDING_CONNECTIONS` (gauge).
pub(crate) const HTTP_MAX_PENDING_CONNECTIONS: &str = "websocket_http_max_pending_connections";
/// Connections closed because their request headers took longer than `HTTP_HEADER_TIMEOUT_SECS`.
pub(crate) const HTTP_HEADER_TIMEOUTS: &str = "websocket_http_header_timeouts_total";
pub(crate) const SEQ_GAPS: &str = "dashstream_sequence_gaps_total";
pub(crate) const SEQ_DUPLICATES: &str = "dashstream_sequence_duplicates_total";
pub(crate) const SEQ_REORDERS: &str = "dashstream_sequence_reorders_total";
pub(crate) const SEQ_GAP_SIZE: &str = "dashstream_sequence_gap_size";
pub(crate) const SEQ_TRACKED_THREADS: &str = "dashstream_sequence_tracked_threads";
pub(crate) const SEQ_EVICTED_THREADS: &str = "dashstream_sequence_evicted_threads_total";
pub(crate) const HALTED_THREADS: &str = "dashstream_halted_threads";
pub(crate) const HELD_MESSAGES: &str = "dashstream_halted_messages_held";
pub(crate) const OFFSET_RESETS: &str = "websocket_partition_offset_resets_total";
pub(crate) const LOG_LINES_DROPPED: &str = "websocket_log_lines_dropped_total";
pub(crate) const HALTS_REFUSED: &str = "dashstream_halts_refused_total";
pub(crate) const DLQ_SENDS: &str = "websocket_dlq_sends_total";
pub(crate) const DLQ_SEND_FAILURES: &str = "websocket_dlq_send_failures_total";
pub(crate) const DLQ_RECORDS_LOST: &str = "websocket_dlq_records_lost_total";
pub(crate) const DLQ_IN_FLIGHT: &str = "websocket_dlq_in_flight";
pub(crate) const REPLAY_MEMORY_HITS: &str = "replay_buffer_memory_hits_total";
pub(crate) const REPLAY_REDIS_HITS: &str = "replay_buffer_redis_hits_total";
pub const REPLAY_KAFKA_HITS: &str = "replay_buffer_kafka_hits_total";
pub(crate) const REPLAY_MISSES: &str = "replay_buffer_misses_total";
pub(crate) const REPLAY_RECORDS_READ: &str = "replay_buffer_records_read_total";
pub(crate) const REPLAY_BUDGET_EXHAUSTED: &str = "replay_buffer_budget_exhausted_total";
pub(crate) const REPLAY_REDIS_WRITES: &str = "replay_buffer_redis_writes_total";
pub(crate) const REPLAY_REDIS_WRITE_FAILURES: &str = "replay_buffer_redis_write_failures_total";
pub(crate) const REPLAY_REDIS_WRITE_DROPPED: &str = "replay_buffer_redis_write_dropped_total";
pub(crate) const REPLAY_REDIS_QUEUE: &str = "replay_buffer_redis_queue_depth";
pub(crate) const REPLAY_REDIS_QUEUE_BYTES: &str = "replay_buffer_redis_queue_bytes";
pub(crate) const REPLAY_MEMORY_ENTRIES: &str = "replay_buffer_memory_entries";
pub(crate) const REPLAY_MEMORY_BYTES: &str = "replay_buffer_memory_bytes";
pub(crate) const REPLAY_REQUESTS: &str = "replay_requests_total";
pub(crate) const REPLAY_DURATION: &str = "replay_duration_seconds";
pub(crate) const REPLAY_ACTIVE: &str = "replay_sessions_active";
pub(crate) const REPLAY_WAITING: &str = "replay_sessions_waiting";
pub(crate) const MAX_CONNECTIONS: &str = "websocket_max_connections";
pub(crate) const MAX_CONNECTIONS_PER_IP: &str = "websocket_max_connections_per_ip";
pub(crate) const CONNECTIONS_REJECTED: &str = "websocket_connections_rejected_total";
pub(crate) const BACKPRESSURE_LEVEL: &str = "websocket_backpressure_level";
pub(crate) const BACKPRESSURE_CATEGORY: &str = "websocket_backpressure_category";
pub(crate) const BREAKER_STATE: &str = "websocket_circuit_breaker_state";
pub(crate) const BREAKER_TRANSITIONS: &str = "websocket_circuit_breaker_transitions_total";
pub(crate) const CLIENT_QUEUE_AGE: &str = "websocket_client_queue_age_seconds";
pub(crate) const SLOW_CLIENT_DISCONNECTS: &str = "websocket_slow_client_disconnects_total";
pub(crate) const TOKEN_EXPIRED_DISCONNECTS: &str = "websocket_token_expired_disconnects_total";
pub(crate) const FOLLOWED_RECORDS: &str = "websocket_followed_records_total";
pub(crate) const FOLLOWED_PARTITIONS: &str = "websocket_followed_partitions";
pub(crate) const KAFKA_RECEIVED_BYTES: &str = "websocket_kafka_received_bytes";
pub(crate) const KAFKA_CONNECTED: &str = "websocket_kafka_connected";
pub(crate) const CONSUMER_PAUSED: &str = "websocket_consumer_paused";
pub(crate) const INGEST_WAITING_FOR_READERS: &str = "websocket_ingest_waiting_for_readers";
pub(crate) const RATE_LIMIT_EXCEEDED: &str = "dashstream_rate_limit_exceeded_total";
pub(crate) const SHUTDOWN_DURATION: &str = "app_shutdown_duration_seconds";
pub(crate) const PROCESS_RSS: &str = "process_resident_memory_bytes";
pub(crate) const MEMORY_LIMIT: &str = "websocket_memory_limit_bytes";
pub(crate) const BUILD_INFO: &str = "websocket_build_info";

/// Reasons for `websocket_dlq_send_failures_total{reason}`.
pub(crate) const DLQ_FAILURE_REASONS: &[&str] = &[
    "timeout",
    "kafka_error",
    "permanent",
    "backpressure",
    "shutdown",
];
/// error_type values of DLQ records that are not decode errors.
pub(crate) const DLQ_EXTRA_ERROR_TYPES: &[&str] = &["thread_halted", "rate_limited"];

/// Decode error kinds, as exported in `websocket_decode_errors_total{error_type}`.
pub(crate) const DECODE_ERROR_TYPES: &[&str] = &[
    "empty_payload",
    "payload_too_large",
    "decompression_failure",
    "decompressed_too_large",
    "invalid_protobuf",
    "missing_body",
    "schema_mismatch",
    "batch_too_large",
    "id_too_long",
];

/// Reasons for `websocket_dropped_messages_total{reason}`.
/// A client fell behind every replay tier: offsets it never received, each
/// range reported to it as a `gap` frame (the name operators' alerts use).
pub const DROP_LAGGED_RECEIVER: &str = "lagged_receiver";
pub(crate) const DROP_HALT_BUFFER_FULL: &str = "halt_buffer_full";
/// Low-priority frames a session skipped at CRITICAL backpressure.
pub(crate) const DROP_BACKPRESSURE_SHED: &str = "backpressure_shed";

/// E2E latency buckets in milliseconds: resolve 1 ms, reach 60 s.
pub(crate) const E2E_BUCKETS_MS: &[f64] = &[
    1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 25.0, 50.0, 75.0, 100.0, 150.0, 250.0, 500.0, 750.0,
    1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0,
];

/// Queue age buckets in seconds.
pub(crate) const QUEUE_AGE_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Shutdown duration buckets in seconds.
pub(crate) const SHUTDOWN_BUCKETS: &[f64] = &[0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 30.0];

/// Replay duration buckets in seconds.
pub(crate) const REPLAY_DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Gap size buckets (messages missing per detected gap).
pub(crate) const GAP_SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 1000.0, 10000.0];

/// Installs the Prometheus recorder as the global `metrics` recorder and
/// returns the handle `/metrics` renders from. Call once per process.
pub(crate) fn install_recorder() -> anyhow::Result<PrometheusHandle> {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(E2E_LATENCY_MS.into()), E2E_BUCKETS_MS)?
        .set_buckets_for_metric(Matcher::Full(SEQ_GAP_SIZE.into()), GAP_SIZE_BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Full(REPLAY_DURATION.into()),
            REPLAY_DURATION_BUCKETS,
        )?
        .set_buckets_for_metric(Matcher::Full(CLIENT_QUEUE_AGE.into()), QUEUE_AGE_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(SHUTDOWN_DURATION.into()), SHUTDOWN_BUCKETS)?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)
        .map_err(|e| anyhow::anyhow!("metrics recorder already installed: {e}"))?;
    describe_all();
    Ok(handle)
}

/// Drains histogram samples into their buckets regularly so memory stays flat
/// between scrapes.
pub(crate) fn spawn_upkeep(handle: PrometheusHandle) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            handle.run_upkeep();
        }
    });
}

fn describe_all() {
    describe_counter!(
        KAFKA_MESSAGES,
        "Kafka records processed, by status (success | error: could not be decoded or validated)."
    );
    describe_counter!(
        DECODE_ERRORS,
        "Records that failed to decode, by error_type."
    );
    describe_counter!(
        LEGACY_FRAMES,
        "Records accepted in the legacy unframed format, by kind (bare | zstd)."
    );
    describe_counter!(
        INFRA_ERRORS,
        "Broker and network errors reported by the Kafka client, by kind."
    );
    describe_gauge!(
        CONSUMER_LAG,
        "Offset lag per partition: high watermark - (last processed offset + 1)."
    );
    describe_gauge!(CONSUMER_LAG_SECONDS, Unit::Seconds, "Time lag per partition: now - Kafka timestamp of the last processed record while offset lag > 0, else 0.");
    describe_gauge!(
        ASSIGNED_PARTITIONS,
        "Partitions currently assigned to this bridge's consumer."
    );
    describe_histogram!(
        E2E_LATENCY_MS,
        Unit::Milliseconds,
        "Producer timestamp to the first write of the frame to a client socket."
    );
    describe_gauge!(CONNECTED_CLIENTS, "WebSocket clients currently connected.");
    describe_counter!(
        CONNECTIONS_OPENED,
        "WebSocket connections accepted since start."
    );
    describe_counter!(FRAMES_SENT, "Data frames written to WebSocket clients.");
    describe_gauge!(
        INGEST_WAITING_FOR_READERS,
        "1 while ingest waits for a reading client that would otherwise fall out of the memory log (Kafka buffers meanwhile)."
    );
    describe_counter!(
        DROPPED_MESSAGES,
        "Records not delivered to a client, by reason."
    );
    describe_counter!(
        CLIENT_LAG_MESSAGES,
        "Records clients read back from Redis or Kafka because they fell behind the memory log (catch-up)."
    );
    describe_counter!(
        CLIENT_PROTOCOL_ERRORS,
        "Client frames rejected by the server, by reason."
    );
    describe_counter!(
        REPLAY_KAFKA_WAIT_TIMEOUTS,
        "Replays that waited longer than 30 s for a Kafka reader; the range was sent as a kafka_busy gap."
    );
    describe_gauge!(
        HTTP_PENDING_CONNECTIONS,
        "HTTP connections open that have not become WebSockets (headers pending, being answered, idle keep-alive)."
    );
    describe_gauge!(
        HTTP_MAX_PENDING_CONNECTIONS,
        "HTTP_MAX_PENDING_CONNECTIONS: pending connections at most; beyond it a new connection gets 503."
    );
    describe_counter!(
        HTTP_HEADER_TIMEOUTS,
        "Connections closed because their request headers took longer than HTTP_HEADER_TIMEOUT_SECS."
    );
    describe_counter!(
        SEQ_GAPS,
        "Sequence gaps detected (one per gap, not per missing message)."
    );
    describe_counter!(
        SEQ_DUPLICATES,
        "Messages whose sequence was already seen for their thread."
    );
    describe_counter!(
        SEQ_REORDERS,
        "Messages that arrived after a higher sequence and filled an earlier gap."
    );
    describe_histogram!(SEQ_GAP_SIZE, "Messages missing per detected gap.");
    describe_gauge!(
        SEQ_TRACKED_THREADS,
        "Threads whose sequence state is tracked."
    );
    describe_counter!(
        SEQ_EVICTED_THREADS,
        "Thread states evicted, by reason (idle | capacity)."
    );
    describe_gauge!(
        HALTED_THREADS,
        "Threads halted by the halt gap policy, waiting for an operator."
    );
    describe_gauge!(
        HELD_MESSAGES,
        "Records held back from clients because their thread is halted."
    );
    describe_counter!(
        OFFSET_RESETS,
        "Partitions whose offsets restarted (topic recreated, broker data lost): their history was dropped and clients got offsets_reset."
    );
    describe_counter!(
        LOG_LINES_DROPPED,
        "Log lines dropped because stdout did not keep up (the bridge never waits for its logs)."
    );
    describe_counter!(
        HALTS_REFUSED,
        "Sequence gaps under GAP_POLICY=halt that did not halt their thread because HALT_MAX_THREADS threads are halted already (the thread is delivered as under warn)."
    );
    describe_gauge!(BUILD_INFO, "Always 1; labels carry the version.");
    describe_histogram!(
        CLIENT_QUEUE_AGE,
        Unit::Seconds,
        "Time from a record's append to the memory log to its write to a client (one frame in 16 sampled)."
    );
    describe_counter!(
        SLOW_CLIENT_DISCONNECTS,
        "Clients disconnected (close 1008) for staying behind."
    );
    describe_counter!(
        FOLLOWED_RECORDS,
        "Offsets of partitions another instance owns, appended to this instance's log from Redis (outcome: delivered, not_delivered, undecodable) or read from Kafka for a hole in Redis (from_kafka, missing)."
    );
    describe_gauge!(
        KAFKA_RECEIVED_BYTES,
        Unit::Bytes,
        "Bytes the consumer received from the brokers since start (fetches and metadata), from librdkafka's statistics every KAFKA_STATS_INTERVAL_MS."
    );
    describe_gauge!(
        FOLLOWED_PARTITIONS,
        "Partitions another instance owns that this instance follows from Redis."
    );
    describe_counter!(
        TOKEN_EXPIRED_DISCONNECTS,
        "Clients disconnected (close 4001) because the token that opened the connection expired."
    );
    describe_gauge!(
        KAFKA_CONNECTED,
        "1 while at least one broker is up (librdkafka statistics), else 0."
    );
    describe_gauge!(
        CONSUMER_PAUSED,
        "1 while consumption is paused (DLQ_FAIL_CLOSED waiting for the DLQ), else 0."
    );
    describe_counter!(RATE_LIMIT_EXCEEDED, "Records over their tenant's rate limit (sent to the DLQ as rate_limited), by tenant_id (at most 100 named, the rest 'other').");
    describe_gauge!(MAX_CONNECTIONS, "Configured WEBSOCKET_MAX_CONNECTIONS.");
    describe_gauge!(
        MAX_CONNECTIONS_PER_IP,
        "Configured WEBSOCKET_MAX_CONNECTIONS_PER_IP."
    );
    describe_counter!(
        CONNECTIONS_REJECTED,
        "WebSocket connections refused, by reason (circuit_open | global_limit | per_ip_limit | unauthorized)."
    );
    describe_gauge!(
        BACKPRESSURE_LEVEL,
        "Weighted backpressure level, 0-1 (see backpressure.rs for the weights)."
    );
    describe_gauge!(
        BACKPRESSURE_CATEGORY,
        "0 NORMAL (<0.70), 1 ELEVATED (<0.85), 2 HIGH (<0.95), 3 CRITICAL."
    );
    describe_gauge!(
        BREAKER_STATE,
        "Circuit breaker state: 0 CLOSED, 1 HALF_OPEN, 2 OPEN."
    );
    describe_counter!(
        BREAKER_TRANSITIONS,
        "Circuit breaker state changes, by from and to."
    );
    describe_histogram!(
        SHUTDOWN_DURATION,
        Unit::Seconds,
        "Time from the shutdown signal to the end of the graceful shutdown."
    );
    describe_counter!(
        REPLAY_MEMORY_HITS,
        "Records replayed to resuming clients from the memory ring."
    );
    describe_counter!(REPLAY_REDIS_HITS, "Records replayed from Redis.");
    describe_counter!(
        REPLAY_KAFKA_HITS,
        "Records replayed by reading Kafka by offset."
    );
    describe_counter!(
        REPLAY_MISSES,
        "Offsets no tier could replay (reported to clients as gap frames)."
    );
    describe_counter!(
        REPLAY_RECORDS_READ,
        "Records replays read back from Redis or Kafka, by outcome: decoded (the client's filter may want it), filtered (its wire header says the filter refuses it: not decoded)."
    );
    describe_counter!(
        REPLAY_BUDGET_EXHAUSTED,
        "Resumes ended by their budget (budget: records = REPLAY_MAX_RECORDS, time = REPLAY_MAX_SECS); the rest was sent as replay_budget gaps."
    );
    describe_counter!(REPLAY_REDIS_WRITES, "Replay entries written to Redis.");
    describe_counter!(
        REPLAY_REDIS_WRITE_FAILURES,
        "Replay entries lost because a Redis write failed (delivery is unaffected)."
    );
    describe_counter!(
        REPLAY_REDIS_WRITE_DROPPED,
        "Replay entries dropped because the Redis writer queue was full."
    );
    describe_gauge!(REPLAY_REDIS_QUEUE, "Entries waiting for the Redis writer.");
    describe_gauge!(
        REPLAY_REDIS_QUEUE_BYTES,
        "Record bytes waiting for the Redis writer or in its pipelines (bounded by REPLAY_REDIS_QUEUE_BYTES)."
    );
    describe_gauge!(REPLAY_MEMORY_ENTRIES, "Entries in the memory replay rings.");
    describe_gauge!(
        REPLAY_MEMORY_BYTES,
        "Bytes held by the memory log: record envelopes, their summaries and JSON text once built."
    );
    describe_counter!(
        REPLAY_REQUESTS,
        "Resume requests, by from (cursor | earliest | latest)."
    );
    describe_histogram!(
        REPLAY_DURATION,
        Unit::Seconds,
        "Time from a resume request to joining live delivery."
    );
    describe_gauge!(
        PROCESS_RSS,
        Unit::Bytes,
        "Resident set size of the bridge process (read every 500 ms)."
    );
    describe_gauge!(
        MEMORY_LIMIT,
        Unit::Bytes,
        "Memory limit the backpressure level measures against: MEMORY_LIMIT_BYTES, else the cgroup limit; 0 when none is known."
    );
    describe_gauge!(
        REPLAY_ACTIVE,
        "Replays running now: resumes, and live sessions catching up from Redis or Kafka (at most REPLAY_MAX_CONCURRENT of them hold a replay slot)."
    );
    describe_gauge!(
        REPLAY_WAITING,
        "Replays waiting for a replay slot to read their next page."
    );
    describe_counter!(
        DLQ_SENDS,
        "Records written to the DLQ topic, by error_type."
    );
    describe_counter!(DLQ_SEND_FAILURES, "DLQ send attempts that failed, by reason (timeout | kafka_error | permanent | backpressure | shutdown).");
    describe_counter!(DLQ_RECORDS_LOST, "DLQ records the DLQ producer refused for good (too large, not authorized, no such topic), by error_type: no DLQ copy exists and the original offset was released.");
    describe_gauge!(
        DLQ_IN_FLIGHT,
        "DLQ sends in flight (bounded by MAX_CONCURRENT_DLQ_SENDS)."
    );
}

/// Pre-built handles for the per-record path.
#[derive(Clone)]
pub(crate) struct PipelineMetrics {
    pub(crate) success: Counter,
    pub(crate) error: Counter,
    pub(crate) gaps: Counter,
    pub(crate) duplicates: Counter,
    pub(crate) reorders: Counter,
    pub(crate) gap_size: Histogram,
    pub(crate) legacy_bare: Counter,
    pub(crate) legacy_zstd: Counter,
    pub(crate) halt_buffer_full: Counter,
    pub(crate) halts_refused: Counter,
}

impl PipelineMetrics {
    pub(crate) fn new() -> Self {
        let m = Self {
            success: metrics::counter!(KAFKA_MESSAGES, "status" => "success"),
            error: metrics::counter!(KAFKA_MESSAGES, "status" => "error"),
            gaps: metrics::counter!(SEQ_GAPS),
            duplicates: metrics::counter!(SEQ_DUPLICATES),
            reorders: metrics::counter!(SEQ_REORDERS),
            gap_size: metrics::histogram!(SEQ_GAP_SIZE),
            legacy_bare: metrics::counter!(LEGACY_FRAMES, "kind" => "bare"),
            legacy_zstd: metrics::counter!(LEGACY_FRAMES, "kind" => "zstd"),
            halt_buffer_full: metrics::counter!(DROPPED_MESSAGES, "reason" => DROP_HALT_BUFFER_FULL),
            halts_refused: metrics::counter!(HALTS_REFUSED),
        };
        // Export every series from the start so rate() and alerts see zeros, not absence.
        for c in [
            &m.success,
            &m.error,
            &m.gaps,
            &m.duplicates,
            &m.reorders,
            &m.legacy_bare,
            &m.legacy_zstd,
            &m.halt_buffer_full,
            &m.halts_refused,
        ] {
            c.increment(0);
        }
        for t in DECODE_ERROR_TYPES {
            metrics::counter!(DECODE_ERRORS, "error_type" => *t).increment(0);
        }
        metrics::counter!(INFRA_ERRORS, "kind" => "kafka").increment(0);
        for t in DECODE_ERROR_TYPES.iter().chain(DLQ_EXTRA_ERROR_TYPES) {
            metrics::counter!(DLQ_SENDS, "error_type" => *t).increment(0);
        }
        for t in DECODE_ERROR_TYPES.iter().chain(DLQ_EXTRA_ERROR_TYPES) {
            metrics::counter!(DLQ_RECORDS_LOST, "error_type" => *t).increment(0);
        }
        for r in DLQ_FAILURE_REASONS {
            metrics::counter!(DLQ_SEND_FAILURES, "reason" => *r).increment(0);
        }
        metrics::gauge!(DLQ_IN_FLIGHT).set(0.0);
        for c in [
            REPLAY_MEMORY_HITS,
            REPLAY_REDIS_HITS,
            REPLAY_KAFKA_HITS,
            REPLAY_MISSES,
            REPLAY_REDIS_WRITES,
            REPLAY_REDIS_WRITE_FAILURES,
            REPLAY_REDIS_WRITE_DROPPED,
        ] {
            metrics::counter!(c).increment(0);
        }
        metrics::gauge!(REPLAY_REDIS_QUEUE).set(0.0);
        metrics::gauge!(REPLAY_REDIS_QUEUE_BYTES).set(0.0);
        metrics::gauge!(REPLAY_ACTIVE).set(0.0);
        metrics::gauge!(REPLAY_WAITING).set(0.0);
        for outcome in ["decoded", "filtered"] {
            metrics::counter!(REPLAY_RECORDS_READ, "outcome" => outcome).increment(0);
        }
        for budget in ["records", "time"] {
            metrics::counter!(REPLAY_BUDGET_EXHAUSTED, "budget" => budget).increment(0);
        }
        metrics::counter!(DROPPED_MESSAGES, "reason" => DROP_LAGGED_RECEIVER).increment(0);
        metrics::counter!(DROPPED_MESSAGES, "reason" => DROP_BACKPRESSURE_SHED).increment(0);
        metrics::counter!(CLIENT_LAG_MESSAGES).increment(0);
        metrics::counter!(SLOW_CLIENT_DISCONNECTS).increment(0);
        metrics::counter!(TOKEN_EXPIRED_DISCONNECTS).increment(0);
        metrics::gauge!(KAFKA_CONNECTED).set(0.0);
        metrics::gauge!(CONSUMER_PAUSED).set(0.0);
        metrics::counter!(CONNECTIONS_OPENED).increment(0);
        metrics::counter!(FRAMES_SENT).increment(0);
        metrics::gauge!(CONNECTED_CLIENTS).set(0.0);
        metrics::gauge!(HALTED_THREADS).set(0.0);
        metrics::gauge!(HELD_MESSAGES).set(0.0);
        metrics::counter!(LOG_LINES_DROPPED).increment(0);
        metrics::counter!(OFFSET_RESETS).increment(0);
        metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        m
    }

    pub(crate) fn decode_error(error_type: &'static str) {
        metrics::counter!(DECODE_ERRORS, "error_type" => error_type).increment(1);
    }
}

impl Default for PipelineMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Structured logs to stdout through a bounded, non-blocking queue
/// ([`logs`]); `RUST_LOG` filters, `json` switches the format. Keep the
/// guard until exit: dropping it flushes what is queued.
pub(crate) fn init_logging(json: bool) -> logs::LogGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rdkafka=warn"));
    use std::io::IsTerminal;
    let (writer, guard) = logs::non_blocking(std::io::stdout(), logs::BUFFER_LINES);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal())
        .with_writer(writer);
    if json {
        builder.json().with_current_span(false).init();
    } else {
        builder.init();
    }
    guard
}
