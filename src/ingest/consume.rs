//! Consume stage: the Kafka consumer, its client context (statistics →
//! lag, rebalances → assignment, errors → connection state), and the loop
//! that feeds records to the [`Pipeline`] and stores offsets after delivery.
//!
//! Offsets: `enable.auto.offset.store=false`, so librdkafka commits (every
//! `auto.commit.interval.ms`, on revoke, and synchronously on shutdown) only
//! what this loop stored: the pipeline's commit point, i.e. the next record
//! that has not been handed to delivery. At-least-once, no off-by-one.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::dlq::document::{build_record, Failure, SourceRecord};
use crate::dlq::sink::{DlqSink, FailClosedEvent};
use crate::hub::Hub;
use crate::ingest::halt::ReleaseError;
use crate::ingest::offsets::Progress;
use crate::ingest::pipeline::{trace_id_from_traceparent, Pipeline, RecordView};
use crate::ingest::reset::ResetWatch;
use crate::ingest::status::{IngestStatus, KafkaState};
use crate::replay::Watermarks;
use crate::telemetry;

/// Per-partition figures from the latest librdkafka statistics.
#[derive(Clone, Copy, Debug)]
struct PartitionStats {
    hi_offset: i64,
    consumer_lag: i64,
    /// When librdkafka reported them.
    at: Instant,
}

pub(crate) enum RebalanceEvent {
    Assigned(Vec<i32>),
    Revoked(Vec<i32>),
}

/// Librdkafka callbacks. They run on librdkafka's threads and only touch
/// small shared state (no per-record work).
pub(crate) struct BridgeContext {
    topic: String,
    status: Arc<IngestStatus>,
    stats: Mutex<HashMap<i32, PartitionStats>>,
    /// High watermarks shared with the replay driver.
    watermarks: Watermarks,
    assigned: Mutex<HashSet<i32>>,
    rebalance_tx: mpsc::UnboundedSender<RebalanceEvent>,
}

impl ClientContext for BridgeContext {
    fn stats(&self, s: Statistics) {
        let up = s.brokers.values().any(|b| b.nodeid >= 0 && b.state == "UP");
        self.status.set_kafka(if up {
            KafkaState::Connected
        } else {
            KafkaState::Disconnected
        });
        metrics::gauge!(telemetry::KAFKA_CONNECTED).set(if up { 1.0 } else { 0.0 });
        let received: u64 = s.brokers.values().map(|b| b.rxbytes).sum();
        metrics::gauge!(telemetry::KAFKA_RECEIVED_BYTES).set(received as f64);
        if let Some(t) = s.topics.get(&self.topic) {
            let mut m = self.stats.lock();
            let mut w = self.watermarks.lock();
            for (p, ps) in &t.partitions {
                if *p >= 0 && ps.hi_offset >= 0 {
                    w.insert(*p, ps.hi_offset);
                    m.insert(
                        *p,
                        PartitionStats {
                            hi_offset: ps.hi_offset,
                            consumer_lag: ps.consumer_lag,
                            at: Instant::now(),
                        },
                    );
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        metrics::counter!(telemetry::INFRA_ERRORS, "kind" => "kafka").increment(1);
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.status.set_kafka(KafkaState::Disconnected);
            metrics::gauge!(telemetry::KAFKA_CONNECTED).set(0.0);
        }
        tracing::warn!(error = %error, reason, "kafka client error");
    }
}

impl ConsumerContext for BridgeContext {
    fn post_rebalance(&self, _c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let parts = |tpl: &rdkafka::TopicPartitionList| -> Vec<i32> {
            tpl.elements()
                .iter()
                .filter(|e| e.topic() == self.topic)
                .map(|e| e.partition())
                .collect()
        };
        let mut assigned = self.assigned.lock();
        let event = match rebalance {
            Rebalance::Assign(tpl) => {
                let p = parts(tpl);
                assigned.extend(p.iter().copied());
                tracing::info!(partitions = ?p, "partitions assigned");
                RebalanceEvent::Assigned(p)
            }
            Rebalance::Revoke(tpl) => {
                let p = parts(tpl);
                for x in &p {
                    assigned.remove(x);
                }
                tracing::info!(partitions = ?p, "partitions revoked");
                RebalanceEvent::Revoked(p)
            }
            Rebalance::Error(e) => {
                tracing::warn!(error = %e, "rebalance error");
                metrics::counter!(telemetry::INFRA_ERRORS, "kind" => "kafka").increment(1);
                return;
            }
        };
        self.status.set_owned(assigned.iter().copied().collect());
        metrics::gauge!(telemetry::ASSIGNED_PARTITIONS).set(assigned.len() as f64);
        let _ = self.rebalance_tx.send(event);
    }
}

pub(crate) type BridgeConsumer = StreamConsumer<BridgeContext>;

/// Creates the consumer and subscribes it to `topic`.
pub(crate) fn create_consumer(
    props: &[(String, String)],
    topic: &str,
    status: Arc<IngestStatus>,
    watermarks: Watermarks,
) -> Result<(BridgeConsumer, mpsc::UnboundedReceiver<RebalanceEvent>), KafkaError> {
    let mut cfg = ClientConfig::new();
    for (k, v) in props {
        cfg.set(k, v);
    }
    let (rebalance_tx, rebalance_rx) = mpsc::unbounded_channel();
    let ctx = BridgeContext {
        topic: topic.to_string(),
        status,
        stats: Mutex::new(HashMap::new()),
        watermarks,
        assigned: Mutex::new(HashSet::new()),
        rebalance_tx,
    };
    let consumer: BridgeConsumer = cfg.create_with_context(ctx)?;
    consumer.subscribe(&[topic])?;
    Ok((consumer, rebalance_rx))
}

/// Operator commands executed by the consumer task (which owns the pipeline).
pub(crate) enum AdminCommand {
    RateLimits {
        reply: oneshot::Sender<serde_json::Value>,
    },
    SetRateLimit {
        tenant: String,
        rate: Option<crate::ingest::ratelimit::Rate>,
        reply: oneshot::Sender<serde_json::Value>,
    },
    ReleaseThread {
        thread: String,
        reply: oneshot::Sender<Result<usize, ReleaseError>>,
    },
}

/// Records handled between two yields of the consume loop.
const YIELD_EVERY: u32 = 64;

/// Records taken from librdkafka at once, when that many are waiting: the
/// loop's other inputs (shutdown, rebalances, operator commands, the DLQ)
/// are looked at once per batch rather than once per record.
const BATCH: usize = 64;

/// While ingest waits for a reader, it looks again at least this often (a
/// reader may stop reading without telling).
const READER_RECHECK: Duration = Duration::from_millis(50);

/// What the consume loop works with besides the consumer itself.
pub(crate) struct Runner {
    pub(crate) consumer: Arc<BridgeConsumer>,
    /// The log: ingest waits while appending would push out what a reading session has not read.
    pub(crate) hub: Arc<Hub>,
    pub(crate) pipeline: Pipeline,
    pub(crate) rebalance_rx: mpsc::UnboundedReceiver<RebalanceEvent>,
    pub(crate) admin_rx: mpsc::Receiver<AdminCommand>,
    pub(crate) status: Arc<IngestStatus>,
    pub(crate) dlq: Arc<DlqSink>,
    pub(crate) group_id: String,
    pub(crate) shutdown: CancellationToken,
    /// Shutdown budget for flushing DLQ sends and committing offsets.
    pub(crate) stop_budget: Duration,
}

/// Runs until `shutdown` fires, then flushes the DLQ and commits stored
/// offsets (bounded).
/// Returns when shutdown began, so the caller can keep to the overall bound.
/// Restores the halted threads kept in Redis (`GAP_POLICY=halt` with
/// Redis), bounded by the Redis operation timeout.
async fn restore_halts(pipeline: &mut Pipeline) {
    let Some(store) = pipeline.halt_store() else {
        return;
    };
    match store.load().await {
        Ok(saved) => pipeline.restore_halts(saved),
        Err(e) => {
            tracing::warn!(error = %e, "halted threads could not be read from Redis: halts of an earlier process are not restored")
        }
    }
}

pub(crate) async fn run(r: Runner) -> Instant {
    let Runner {
        consumer,
        hub,
        mut pipeline,
        mut rebalance_rx,
        mut admin_rx,
        status,
        dlq,
        group_id,
        shutdown,
        stop_budget,
    } = r;
    let topic = consumer.context().topic.clone();
    let mut stored: HashMap<i32, i64> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_error_log: Option<Instant> = None;
    let (fc_tx, mut fc_rx) = mpsc::unbounded_channel::<FailClosedEvent>();
    let mut fc_pending = 0usize;
    let mut resets = ResetWatch::default();
    let mut paused = false;
    // Halts an earlier process kept in Redis, before any record is read.
    restore_halts(&mut pipeline).await;
    status.set_consuming(true);
    // A broker fetch hands over hundreds of records at once; yielding between
    // slices of them lets client sessions on this worker drain their queues
    // during the burst instead of after it.
    let mut since_yield = 0u32;
    let mut waiting = false;
    let waiting_gauge = metrics::gauge!(telemetry::INGEST_WAITING_FOR_READERS);
    waiting_gauge.set(0.0);
    // One message stream for the whole loop (a `recv()` per record would
    // register and drop a waker slot each time).
    let mut stream = consumer.stream();
    // The clock is read once per batch of records that were already
    // waiting in librdkafka's queue, and again after anything else.
    let mut clock = Clock::now();
    let mut last_record_ms: Option<i64> = None;
    // Records taken from librdkafka and not handled yet (a batch, or what
    // is left of it while a reader or the DLQ holds ingest back).
    let mut pending: VecDeque<KafkaResult<BorrowedMessage<'_>>> = VecDeque::with_capacity(BATCH);
    // The first pending record was checked against the readers already.
    let mut pending_checked = false;

    let stop_started = loop {
        if since_yield >= YIELD_EVERY {
            since_yield = 0;
            // Sessions are woken and offsets stored once per batch, not per record.
            hub.wake();
            store_all(&consumer, &topic, &pipeline, &mut stored);
            tokio::task::yield_now().await;
            clock = Clock::now();
        }
        // Kafka is the buffer: rather than evict a slot a session that is
        // still reading has not read, wait for it (consumer lag shows it).
        let wait = must_wait(&hub, &pending, clock.unix_ms);
        // At the live edge (the last record is recent), waiting delays the
        // sessions that keep up; reading a backlog, it does not.
        let live = last_record_ms
            .is_none_or(|t| clock.unix_ms - t <= hub.readers.hold().as_millis() as i64);
        if wait != waiting {
            waiting = wait;
            waiting_gauge.set(if wait { 1.0 } else { 0.0 });
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                status.set_shutting_down();
                break Instant::now();
            }
            Some(cmd) = admin_rx.recv() => { clock = Clock::now(); match cmd {
                AdminCommand::RateLimits { reply } => {
                    let _ = reply.send(pipeline.rate_limits_mut().describe());
                }
                AdminCommand::SetRateLimit { tenant, rate, reply } => {
                    pipeline.rate_limits_mut().set(&tenant, rate);
                    tracing::info!(tenant_id = ?tenant, ?rate, "tenant rate limit changed by operator");
                    let _ = reply.send(pipeline.rate_limits_mut().describe());
                }
                AdminCommand::ReleaseThread { thread, reply } => {
                    let r = pipeline.release_thread(&thread);
                    store_all(&consumer, &topic, &pipeline, &mut stored);
                    let _ = reply.send(r);
                }
            }},
            Some(ev) = rebalance_rx.recv() => { clock = Clock::now(); match ev {
                RebalanceEvent::Assigned(ps) => {
                    pending.retain(|r| r.as_ref().is_ok_and(|m| !ps.contains(&m.partition())));
                    for p in ps {
                        pipeline.forget_partition(p);
                        stored.remove(&p);
                    }
                    // Another instance may have halted threads of these partitions.
                    restore_halts(&mut pipeline).await;
                }
                RebalanceEvent::Revoked(ps) => {
                    // Taken before the revocation: the next owner reads them again.
                    pending.retain(|r| r.as_ref().is_ok_and(|m| !ps.contains(&m.partition())));
                    for p in ps {
                        pipeline.forget_partition(p);
                        stored.remove(&p);
                        // No longer ours: stop reporting a stale lag for it.
                        let label = p.to_string();
                        metrics::gauge!(telemetry::CONSUMER_LAG, "partition" => label.clone()).set(0.0);
                        metrics::gauge!(telemetry::CONSUMER_LAG_SECONDS, "partition" => label).set(0.0);
                    }
                }
            }},
            Some(ev) = fc_rx.recv() => { clock = Clock::now(); match ev {
                FailClosedEvent::Acked { partition, offset } => {
                    fc_pending = fc_pending.saturating_sub(1);
                    pipeline.offsets_mut().release(partition, offset);
                    store(&consumer, &topic, &pipeline, &mut stored, partition);
                    if fc_pending == 0 && paused {
                        paused = !set_paused(&consumer, false);
                        tracing::info!("DLQ acknowledged every held record: consumption resumed");
                    }
                }
                FailClosedEvent::GaveUp { partition, offset } => {
                    // Counted and logged by the sink: the offset is released, as if acknowledged.
                    fc_pending = fc_pending.saturating_sub(1);
                    pipeline.offsets_mut().release(partition, offset);
                    store(&consumer, &topic, &pipeline, &mut stored, partition);
                    if fc_pending == 0 && paused {
                        paused = !set_paused(&consumer, false);
                    }
                }
                FailClosedEvent::Failing => {
                    if fc_pending > 0 && !paused {
                        paused = set_paused(&consumer, true);
                        tracing::warn!(pending = fc_pending, "DLQ failing with DLQ_FAIL_CLOSED=true: consumption paused until it recovers");
                    }
                }
            }},
            _ = tick.tick() => {
                hub.wake();
                store_all(&consumer, &topic, &pipeline, &mut stored);
                clock = Clock::now();
                pipeline.tick(clock.at);
                let watermarks: HashMap<i32, (i64, Instant)> = consumer.context().stats.lock().iter().map(|(p, s)| (*p, (s.hi_offset, s.at))).collect();
                for (p, first, last) in resets.check(&watermarks) {
                    tracing::warn!(partition = p, first_offset = first, "partition offsets restarted (topic recreated or broker data lost): its memory and Redis history is dropped and clients restart it with an offsets_reset frame");
                    metrics::counter!(telemetry::OFFSET_RESETS).increment(1);
                    pipeline.reset_partition(p, first, last);
                }
                dlq.export_gauges();
                pipeline.export_replay_gauges();
                export_lag(consumer.context(), &pipeline);
            }
            _ = hub.readers.wait_for_room(&hub.log, READER_RECHECK, live), if wait => clock = Clock::now(),
            // Fail-closed: no record is taken while every DLQ permit has one waiting.
            more = next_batch(&mut stream, &mut clock, &hub, &mut pending, BATCH.min(dlq.max_in_flight() - fc_pending)), if pending.is_empty() && !wait && fc_pending < dlq.max_in_flight() => {
                if !more {
                    break Instant::now();
                }
                pending_checked = true;
            }
        }
        // The records taken, one by one, while neither a reader nor the DLQ holds ingest back.
        while !pending.is_empty() {
            if fc_pending >= dlq.max_in_flight() {
                break;
            }
            if !pending_checked && must_wait(&hub, &pending, clock.unix_ms) {
                break;
            }
            pending_checked = false;
            let Some(r) = pending.pop_front() else { break };
            match r {
                Ok(msg) => {
                    since_yield += 1;
                    last_record_ms = msg.timestamp().to_millis();
                    let step = Step {
                        pipeline: &mut pipeline,
                        dlq: &dlq,
                        topic: &topic,
                        group_id: &group_id,
                        fc_tx: &fc_tx,
                        fc_pending,
                        paused,
                    };
                    if step.handle(&msg, &mut resets, clock) {
                        fc_pending += 1;
                    }
                }
                Err(e) => {
                    metrics::counter!(telemetry::INFRA_ERRORS, "kind" => "kafka").increment(1);
                    let now = Instant::now();
                    if last_error_log.is_none_or(|t| now.duration_since(t) > Duration::from_secs(5))
                    {
                        tracing::warn!(error = %e, "kafka consume error");
                        last_error_log = Some(now);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    clock = Clock::now();
                }
            }
        }
    };

    drop(pending);
    drop(stream);
    status.set_consuming(false);
    // In-flight DLQ sends get part of the budget first; fail-closed records
    // still unacknowledged keep their offsets uncommitted.
    dlq.shutdown(stop_budget / 3).await;
    // Acknowledgements that arrived during the flush still release their offsets.
    while let Ok(ev) = fc_rx.try_recv() {
        if let FailClosedEvent::Acked { partition, offset } = ev {
            pipeline.offsets_mut().release(partition, offset);
        }
    }
    store_all(&consumer, &topic, &pipeline, &mut stored);
    let c = consumer.clone();
    let commit = tokio::task::spawn_blocking(move || c.commit_consumer_state(CommitMode::Sync));
    let commit_timeout = stop_budget / 3;
    match tokio::time::timeout(commit_timeout, commit).await {
        Ok(Ok(Ok(()))) => tracing::info!(offsets = ?stored, "offsets committed on shutdown"),
        Ok(Ok(Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)))) => {
            tracing::info!("nothing to commit on shutdown")
        }
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "offset commit on shutdown failed"),
        Ok(Err(e)) => tracing::warn!(error = %e, "offset commit task failed"),
        Err(_) => tracing::warn!(?commit_timeout, "offset commit on shutdown timed out"),
    }
    // Closing the consumer (leaving the group) can block; never let it hold up exit.
    let close = tokio::task::spawn_blocking(move || drop(consumer));
    if tokio::time::timeout(Duration::from_millis(1000), close)
        .await
        .is_err()
    {
        tracing::warn!("consumer close timed out; exiting anyway");
    }
    stop_started
}

/// Kafka is the buffer: whether the next record waits for a session still
/// reading, rather than evict a slot it has not read (consumer lag shows
/// it). Only the record's own partition matters; with no record taken yet,
/// any partition does.
fn must_wait(hub: &Hub, pending: &VecDeque<KafkaResult<BorrowedMessage<'_>>>, now_ms: i64) -> bool {
    match pending.front() {
        Some(Ok(m)) => hub.readers.must_wait_at(&hub.log, m.partition(), now_ms),
        Some(Err(_)) => false,
        None => hub.readers.must_wait(&hub.log, now_ms),
    }
}

/// A moment, read once for a batch of records.
#[derive(Clone, Copy)]
struct Clock {
    at: Instant,
    unix_ms: i64,
}

impl Clock {
    fn now() -> Self {
        Self {
            at: Instant::now(),
            unix_ms: crate::util::unix_ms(),
        }
    }
}

/// Takes up to `max` records that librdkafka holds ready (at least one,
/// waiting for it if none is). If it had to wait, wakes the sessions for the
/// batch just appended first, and reads the clock again once a record
/// arrives (so a record never carries a moment from before an idle spell).
/// False when the stream ended.
async fn next_batch<'a>(
    stream: &mut rdkafka::consumer::MessageStream<'a, BridgeContext>,
    clock: &mut Clock,
    hub: &Hub,
    into: &mut VecDeque<KafkaResult<BorrowedMessage<'a>>>,
    max: usize,
) -> bool {
    use futures_util::StreamExt;
    use std::task::Poll;
    let mut waited = false;
    let more = std::future::poll_fn(|cx| loop {
        if into.len() >= max.max(1) {
            return Poll::Ready(true);
        }
        match stream.poll_next_unpin(cx) {
            Poll::Ready(Some(r)) => into.push_back(r),
            Poll::Ready(None) => return Poll::Ready(false),
            Poll::Pending if !into.is_empty() => return Poll::Ready(true),
            Poll::Pending => {
                if !waited {
                    waited = true;
                    // The batch ended: sessions get what was appended.
                    hub.wake();
                }
                return Poll::Pending;
            }
        }
    })
    .await;
    if waited {
        *clock = Clock::now();
    }
    more
}

/// What handling one record needs besides the record.
struct Step<'s> {
    pipeline: &'s mut Pipeline,
    dlq: &'s DlqSink,
    topic: &'s str,
    group_id: &'s str,
    fc_tx: &'s mpsc::UnboundedSender<FailClosedEvent>,
    /// Records already waiting for a fail-closed DLQ send.
    fc_pending: usize,
    paused: bool,
}

impl Step<'_> {
    /// Hands one record to the pipeline and what it could not use to the
    /// DLQ. True when the record now waits for a fail-closed DLQ send.
    fn handle(self, msg: &BorrowedMessage<'_>, resets: &mut ResetWatch, clock: Clock) -> bool {
        let traceparent = msg.headers().and_then(|h| {
            h.iter()
                .find(|x| x.key.eq_ignore_ascii_case("traceparent"))
                .and_then(|x| x.value)
        });
        let view = RecordView {
            partition: msg.partition(),
            offset: msg.offset(),
            timestamp_ms: msg.timestamp().to_millis(),
            key: msg.key(),
            value: msg.payload(),
            traceparent,
        };
        resets.observe(view.partition, view.offset, clock.at);
        let outcome = self.pipeline.handle(view, clock.at, clock.unix_ms);
        let Some(failure) = Failure::of(outcome) else {
            return false;
        };
        let dlq = self.dlq;
        let held = dlq.fail_closed();
        // Fail-open: capacity first; without it the record costs nothing more.
        let permit = if held {
            None
        } else {
            match dlq.reserve(view.partition, view.offset, failure.error_type) {
                Some(p) => Some(p),
                None => return false,
            }
        };
        let trace = traceparent.and_then(trace_id_from_traceparent);
        let src = SourceRecord {
            topic: self.topic,
            partition: view.partition,
            offset: view.offset,
            timestamp_ms: view.timestamp_ms,
            key: view.key,
            value: view.value,
            headers: msg
                .headers()
                .map(|h| h.iter().map(|x| (x.key, x.value)).collect())
                .unwrap_or_default(),
            trace_id: trace.as_deref(),
        };
        let rec = build_record(&src, &failure, dlq.config(), self.group_id);
        match permit {
            Some(permit) => {
                dlq.send_fail_open(rec, permit);
                false
            }
            None => {
                self.pipeline
                    .offsets_mut()
                    .hold(view.partition, view.offset);
                let pending = self.fc_pending + 1;
                dlq.send_fail_closed(rec, self.fc_tx.clone());
                if pending >= dlq.max_in_flight() && !self.paused {
                    tracing::warn!(pending, "DLQ_FAIL_CLOSED: MAX_CONCURRENT_DLQ_SENDS records wait for the DLQ: no record is taken until one is acknowledged");
                }
                true
            }
        }
    }
}

/// Pauses or resumes every assigned partition. Returns true on success.
fn set_paused(consumer: &BridgeConsumer, pause: bool) -> bool {
    let result = consumer.assignment().and_then(|tpl| {
        if pause {
            consumer.pause(&tpl)
        } else {
            consumer.resume(&tpl)
        }
    });
    match result {
        Ok(()) => {
            metrics::gauge!(telemetry::CONSUMER_PAUSED).set(if pause { 1.0 } else { 0.0 });
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, pause, "could not change the paused state of the assignment");
            false
        }
    }
}

fn store(
    consumer: &BridgeConsumer,
    topic: &str,
    pipeline: &Pipeline,
    stored: &mut HashMap<i32, i64>,
    partition: i32,
) {
    let Some(next) = pipeline.offsets().commit_point(partition) else {
        return;
    };
    if stored.get(&partition) == Some(&next) {
        return;
    }
    // rd_kafka_offset_store stores `offset + 1`: pass the last delivered offset.
    match consumer.store_offset(topic, partition, next - 1) {
        Ok(()) => {
            stored.insert(partition, next);
        }
        Err(e) => {
            tracing::debug!(partition, error = %e, "offset not stored (partition no longer assigned?)")
        }
    }
}

fn store_all(
    consumer: &BridgeConsumer,
    topic: &str,
    pipeline: &Pipeline,
    stored: &mut HashMap<i32, i64>,
) {
    let parts: Vec<i32> = pipeline.offsets().partitions().collect();
    for p in parts {
        store(consumer, topic, pipeline, stored, p);
    }
}

fn export_lag(ctx: &BridgeContext, pipeline: &Pipeline) {
    let stats = ctx.stats.lock().clone();
    let assigned: Vec<i32> = ctx.assigned.lock().iter().copied().collect();
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    for p in assigned {
        let Some(st) = stats.get(&p) else { continue };
        let (lag, seconds) = lag_of(
            st.hi_offset,
            st.consumer_lag,
            pipeline.offsets().progress(p),
            now_ms,
        );
        let label = p.to_string();
        metrics::gauge!(telemetry::CONSUMER_LAG, "partition" => label.clone()).set(lag as f64);
        metrics::gauge!(telemetry::CONSUMER_LAG_SECONDS, "partition" => label).set(seconds);
    }
}

/// Offset lag = high watermark - (last processed + 1); before the first
/// record, librdkafka's own lag (from the committed offset). Time lag = age of
/// the last processed record while offset lag > 0, else 0.
pub(crate) fn lag_of(
    hi_offset: i64,
    librdkafka_lag: i64,
    progress: Progress,
    now_ms: i64,
) -> (i64, f64) {
    let lag = match progress.last_processed {
        Some(last) => hi_offset - (last + 1),
        None => librdkafka_lag,
    }
    .max(0);
    let seconds = match (lag > 0, progress.last_timestamp_ms) {
        (true, Some(ts)) => ((now_ms - ts).max(0) as f64) / 1000.0,
        _ => 0.0,
    };
    (lag, seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(last: Option<i64>, ts: Option<i64>) -> Progress {
        Progress {
            last_processed: last,
            last_timestamp_ms: ts,
        }
    }

    #[test]
    fn lag_is_distance_to_the_high_watermark() {
        assert_eq!(
            lag_of(100, 0, progress(Some(99), Some(1_000)), 5_000),
            (0, 0.0),
            "caught up"
        );
        assert_eq!(
            lag_of(100, 0, progress(Some(89), Some(1_000)), 5_000),
            (10, 4.0),
            "10 behind, last record 4 s old"
        );
        assert_eq!(
            lag_of(100, 0, progress(Some(99), Some(1_000)), 5_000).1,
            0.0,
            "no time lag when caught up"
        );
        assert_eq!(
            lag_of(100, 42, progress(None, None), 5_000),
            (42, 0.0),
            "before the first record: librdkafka's lag"
        );
        assert_eq!(
            lag_of(90, 0, progress(Some(99), None), 5_000),
            (0, 0.0),
            "stale watermark never goes negative"
        );
    }
}
