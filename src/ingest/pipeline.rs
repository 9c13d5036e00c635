//! The per-record path, owned by the consumer task: decode → validate
//! sequences → apply the gap policy → hand the frame to the fan-out (or hold
//! it for a halted thread) → advance the offset book.
//!
//! Nothing here touches Kafka or sockets, so the whole path is testable with
//! plain values; `consume` feeds it records and stores the offsets it reports.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crate::hub::Hub;
use crate::ingest::halt::{BufferFull, HaltLimits, Halts, ReleaseError};
use crate::ingest::halt_store::{HaltStore, SavedHalt};
use crate::ingest::offsets::OffsetBook;
use crate::ingest::ratelimit::TenantRateLimiter;
use crate::ingest::sequence::{GapPolicy, SequenceValidator, ValidatorConfig, Verdict};
use crate::ingest::status::IngestStatus;
use crate::record::decode::{self, DecodeLimits, Framing, OriginalInfo, Rejected};
use crate::record::envelope::Envelopes;
use crate::record::frame::{control, Cursor, Frame};
use crate::record::summary::Summary;
use crate::record::wire;
use crate::replay::redis::RedisTier;
use crate::telemetry::{self, PipelineMetrics};
use crate::util::LogThrottle;

/// One Kafka record, borrowed from the client.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RecordView<'a> {
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) timestamp_ms: Option<i64>,
    pub(crate) key: Option<&'a [u8]>,
    pub(crate) value: Option<&'a [u8]>,
    pub(crate) traceparent: Option<&'a [u8]>,
}

/// What happened to a record.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    /// Appended to the log (and offered to Redis).
    Delivered,
    /// For a halted thread; `buffered: false` when its buffer was full.
    Held {
        thread: String,
        buffered: bool,
        summary: Box<Summary>,
    },
    Rejected {
        error: decode::DecodeError,
        original: Option<Box<OriginalInfo>>,
    },
    /// Over its tenant's rate limit: not delivered (sent to the DLQ).
    RateLimited { summary: Box<Summary> },
}

pub(crate) struct PipelineConfig {
    pub(crate) limits: DecodeLimits,
    pub(crate) gap_policy: GapPolicy,
    pub(crate) sequence: ValidatorConfig,
    pub(crate) halt: HaltLimits,
}

pub(crate) struct Pipeline {
    cfg: PipelineConfig,
    rate_limits: TenantRateLimiter,
    redis: Option<Arc<RedisTier>>,
    /// Halted threads kept in Redis (`GAP_POLICY=halt` with Redis).
    halt_store: Option<HaltStore>,
    /// The last head written to Redis per partition, and whether a write runs.
    heads_sent: std::collections::HashMap<i32, i64>,
    heads_in_flight: Arc<std::sync::atomic::AtomicBool>,
    validator: SequenceValidator,
    halts: Halts,
    offsets: OffsetBook,
    /// Where the envelopes of delivered frames are written, per partition.
    envelopes: Envelopes,
    hub: Arc<Hub>,
    status: Arc<IngestStatus>,
    m: PipelineMetrics,
    log_throttle: LogThrottle,
    gap_log: LogThrottle,
    halt_log: LogThrottle,
    /// Unix ms of the record being handled (read once per batch by the caller).
    now_ms: i64,
}

impl Pipeline {
    pub(crate) fn new(cfg: PipelineConfig, hub: Arc<Hub>, status: Arc<IngestStatus>) -> Self {
        Self {
            rate_limits: TenantRateLimiter::new(None, Default::default()),
            redis: None,
            halt_store: None,
            heads_sent: Default::default(),
            heads_in_flight: Default::default(),
            validator: SequenceValidator::new(cfg.sequence),
            halts: Halts::new(cfg.halt),
            cfg,
            offsets: OffsetBook::default(),
            envelopes: Envelopes::default(),
            hub,
            status,
            m: PipelineMetrics::new(),
            log_throttle: LogThrottle::default(),
            gap_log: LogThrottle::default(),
            halt_log: LogThrottle::default(),
            now_ms: 0,
        }
    }

    pub(crate) fn with_rate_limits(mut self, limits: TenantRateLimiter) -> Self {
        self.rate_limits = limits;
        self
    }

    pub(crate) fn rate_limits_mut(&mut self) -> &mut TenantRateLimiter {
        &mut self.rate_limits
    }

    /// Also write every delivered record (and a tombstone for every skipped
    /// one) to the Redis replay tier.
    pub(crate) fn with_redis(mut self, redis: Option<Arc<RedisTier>>) -> Self {
        self.halt_store = redis
            .clone()
            .filter(|_| self.cfg.gap_policy == GapPolicy::Halt)
            .map(HaltStore::start);
        self.redis = redis;
        self
    }

    /// Where halts are kept across restarts, if anywhere (`GAP_POLICY=halt`
    /// with Redis).
    pub(crate) fn halt_store(&self) -> Option<HaltStore> {
        self.halt_store.clone()
    }

    /// Halts saved by an earlier process (or another instance): each thread
    /// is halted again, its records from the first held offsets on are held
    /// as they are read again. Beyond `HALT_MAX_THREADS` the rest are left.
    pub(crate) fn restore_halts(&mut self, saved: Vec<(String, SavedHalt)>) {
        let mut restored = 0;
        for (thread, h) in saved {
            if self.halts.is_halted(&thread) {
                continue;
            }
            if self
                .halts
                .halt(thread.clone(), &h.tenant, h.missing, h.sequence)
                .is_err()
            {
                self.m.halts_refused.increment(1);
                continue;
            }
            for (p, o) in &h.first {
                self.hub.held.hold(&thread, *p, *o);
            }
            if let Some(info) = self.halts.info(&thread) {
                self.status.put_halted(info);
            }
            restored += 1;
        }
        if restored > 0 {
            tracing::warn!(
                restored,
                "halted threads restored from Redis: their records stay held until released"
            );
            self.export_halt_gauges();
        }
    }

    /// Saves `thread`'s halt (its first held offsets changed).
    fn save_halt(&self, thread: &str) {
        let (Some(store), Some(info)) = (&self.halt_store, self.halts.info(thread)) else {
            return;
        };
        store.save(
            thread,
            &SavedHalt {
                tenant: info.tenant_id.clone(),
                missing: info.missing,
                sequence: info.at_sequence,
                first: self.hub.held.first(thread),
            },
        );
    }

    fn deliver(&self, frame: &Arc<Frame>) {
        self.hub.publish_at(frame, self.now_ms);
        if let Some(r) = &self.redis {
            r.offer(frame);
        }
    }

    fn skip(&self, partition: i32, offset: i64) {
        self.hub.skip_at(partition, offset, self.now_ms);
        if let Some(r) = &self.redis {
            r.offer_tombstone(partition, offset);
        }
    }

    pub(crate) fn export_replay_gauges(&self) {
        let (entries, bytes) = self.hub.ring_stats();
        metrics::gauge!(telemetry::REPLAY_MEMORY_ENTRIES).set(entries as f64);
        metrics::gauge!(telemetry::REPLAY_MEMORY_BYTES).set(bytes as f64);
        if let Some(r) = &self.redis {
            metrics::gauge!(telemetry::REPLAY_REDIS_QUEUE).set(r.queue_len() as f64);
            metrics::gauge!(telemetry::REPLAY_REDIS_QUEUE_BYTES).set(r.queue_bytes() as f64);
        }
    }

    pub(crate) fn offsets(&self) -> &OffsetBook {
        &self.offsets
    }

    pub(crate) fn offsets_mut(&mut self) -> &mut OffsetBook {
        &mut self.offsets
    }

    /// Handles one record at `now` (`now_ms`: the same moment, Unix ms).
    pub(crate) fn handle(&mut self, rec: RecordView<'_>, now: Instant, now_ms: i64) -> Outcome {
        self.now_ms = now_ms;
        let outcome = self.process(rec, now);
        self.offsets
            .processed(rec.partition, rec.offset, rec.timestamp_ms);
        self.status
            .records_processed
            .fetch_add(1, Ordering::Relaxed);
        self.status
            .last_record_unix_ms
            .store(now_ms, Ordering::Relaxed);
        outcome
    }

    fn process(&mut self, rec: RecordView<'_>, now: Instant) -> Outcome {
        let trace_id = rec.traceparent.and_then(trace_id_from_traceparent);
        let read = decode::unframe(rec.value, &self.cfg.limits).map_err(|error| Rejected {
            error,
            original: None,
        });
        let mut newly_halted: Vec<(String, String, u64, u64)> = Vec::new();
        // Read on the wire when it can be vouched for; else decoded in full.
        let read = read.and_then(|u| match wire::light(u.body()) {
            Some(l) => {
                if l.sequence != 0 {
                    self.observe(l.thread, l.tenant, l.sequence, rec, now, &mut newly_halted);
                }
                Ok((Summary::of_light(&l), u.framing()))
            }
            None => {
                let d = u.decode_or_reject(&self.cfg.limits)?;
                // Validate every (thread, sequence) the record carries.
                for unit in d.sequence_units() {
                    self.observe(
                        unit.thread_id,
                        unit.tenant_id,
                        unit.sequence,
                        rec,
                        now,
                        &mut newly_halted,
                    );
                }
                Ok((Summary::of(&d), d.framing))
            }
        });
        let summary = match read {
            Ok((summary, framing)) => {
                self.m.success.increment(1);
                match framing {
                    Framing::LegacyBare => self.m.legacy_bare.increment(1),
                    Framing::LegacyZstd => self.m.legacy_zstd.increment(1),
                    _ => {}
                }
                summary
            }
            Err(Rejected { error: e, original }) => {
                let error_type = e.error_type();
                self.m.error.increment(1);
                PipelineMetrics::decode_error(error_type);
                if let Some(suppressed) = self.log_throttle.allow(self.now_ms) {
                    tracing::warn!(
                        partition = rec.partition,
                        offset = rec.offset,
                        error_type,
                        stage = e.stage(),
                        trace_id = trace_id.as_deref().unwrap_or(""),
                        suppressed,
                        "record skipped: {e}"
                    );
                }
                self.skip(rec.partition, rec.offset);
                return Outcome::Rejected { error: e, original };
            }
        };
        self.halt_new(newly_halted);

        let cursor = Cursor {
            partition: rec.partition,
            offset: rec.offset,
        };
        let value = rec.value.unwrap_or_default();
        // A halted thread's record below its first held offset was delivered
        // before the halt (read again after a restart or rebalance).
        let halted = self
            .halts
            .thread_of(&summary)
            .filter(|t| self.hub.held.holds_from(t, rec.partition, rec.offset));
        // Over its rate limit, a record costs no copy: only its DLQ document.
        if halted.is_none()
            && self.rate_limits.enabled()
            && !self.rate_limits.allow(&summary.tenant, now)
        {
            self.skip(rec.partition, rec.offset);
            return Outcome::RateLimited {
                summary: Box::new(summary),
            };
        }
        // A held frame may stay long: it gets its own allocation.
        let frame = Arc::new(match halted {
            None => self
                .envelopes
                .frame(cursor, rec.timestamp_ms, value, summary, trace_id),
            Some(_) => Frame::new(cursor, rec.timestamp_ms, value, summary, trace_id),
        });
        if let Some(thread) = halted {
            self.skip(frame.cursor.partition, frame.cursor.offset);
            // Every halted thread it touches withholds it (a release of one
            // moves it to the next one's hold).
            for t in frame.summary.threads().filter(|t| self.halts.is_halted(t)) {
                if self
                    .hub
                    .held
                    .hold(t, frame.cursor.partition, frame.cursor.offset)
                {
                    self.save_halt(t);
                }
            }
            let summary = Box::new(frame.summary.clone());
            let buffered = self.hold(&thread, frame);
            if let Some(info) = self.halts.info(&thread) {
                self.status.count_halted(info);
            }
            self.export_halt_gauges();
            return Outcome::Held {
                thread,
                buffered,
                summary,
            };
        }
        self.deliver(&frame);
        Outcome::Delivered
    }

    /// Validates one (thread, sequence) of the record; a thread that a gap
    /// halts is added to `newly_halted`.
    fn observe(
        &mut self,
        thread: &str,
        tenant: &str,
        sequence: u64,
        rec: RecordView<'_>,
        now: Instant,
        newly_halted: &mut Vec<(String, String, u64, u64)>,
    ) {
        let (verdict, ev) = self.validator.observe(thread, sequence, now);
        if ev.capacity > 0 {
            metrics::counter!(telemetry::SEQ_EVICTED_THREADS, "reason" => "capacity")
                .increment(ev.capacity);
        }
        match verdict {
            Verdict::Gap { missing } => {
                self.m.gaps.increment(1);
                self.m.gap_size.record(missing as f64);
                match self.cfg.gap_policy {
                    GapPolicy::Continue => {}
                    GapPolicy::Warn => {
                        if let Some(suppressed) = self.gap_log.allow(self.now_ms) {
                            tracing::warn!(
                                thread_id = ?thread,
                                sequence,
                                missing,
                                partition = rec.partition,
                                offset = rec.offset,
                                suppressed,
                                "sequence gap (at most one line per second; `suppressed` gaps since the last)"
                            )
                        }
                    }
                    GapPolicy::Halt => {
                        if !self.halts.is_halted(thread) {
                            newly_halted.push((
                                thread.to_string(),
                                tenant.to_string(),
                                missing,
                                sequence,
                            ));
                        }
                    }
                }
            }
            Verdict::Duplicate => self.m.duplicates.increment(1),
            Verdict::Reorder => self.m.reorders.increment(1),
            Verdict::Baseline | Verdict::InOrder => {}
        }
    }

    /// Halts the threads a gap of this record halted (`GAP_POLICY=halt`).
    fn halt_new(&mut self, newly_halted: Vec<(String, String, u64, u64)>) {
        for (thread, tenant, missing, seq) in newly_halted {
            if self
                .halts
                .halt(thread.clone(), &tenant, missing, seq)
                .is_err()
            {
                self.m.halts_refused.increment(1);
                if let Some(suppressed) = self.halt_log.allow(self.now_ms) {
                    tracing::error!(thread_id = ?thread, sequence = seq, missing, suppressed, "sequence gap NOT halted: HALT_MAX_THREADS threads are halted already; the thread is delivered as under GAP_POLICY=warn (at most one line per second; `suppressed` since the last)");
                }
                continue;
            }
            if let Some(suppressed) = self.halt_log.allow(self.now_ms) {
                tracing::error!(thread_id = ?thread, sequence = seq, missing, suppressed, "HALTED thread due to sequence gap (GAP_POLICY=halt); resume with POST /admin/threads/{{thread}}/resume (at most one line per second; `suppressed` since the last)");
            }
            self.hub.notify_thread(
                &thread,
                &tenant,
                &control::thread_halted(&thread, missing, seq),
            );
            if let Some(info) = self.halts.info(&thread) {
                self.status.put_halted(info);
            }
            self.export_halt_gauges();
        }
    }

    /// Holds `frame` for its halted thread; false when the thread's buffer is
    /// full (the record is then only in the DLQ copy, never released).
    fn hold(&mut self, thread: &str, frame: Arc<Frame>) -> bool {
        match self.halts.hold(thread, frame, &mut self.offsets) {
            Ok(()) => true,
            Err(BufferFull) => {
                self.m.halt_buffer_full.increment(1);
                false
            }
        }
    }

    /// Operator action: releases a halted thread's held records to clients,
    /// in order, and resumes live delivery for it. Returns how many records
    /// were delivered.
    pub(crate) fn release_thread(&mut self, thread: &str) -> Result<usize, ReleaseError> {
        let tenant = self
            .halts
            .info(thread)
            .map(|i| i.tenant_id.clone())
            .unwrap_or_default();
        let release = self.halts.release(thread, &mut self.offsets)?;
        self.hub.held.release(thread);
        self.status.remove_halted(thread);
        let released = release.len();
        tracing::info!(thread_id = ?thread, released, "thread resumed by operator");
        // One notice: `thread_resumed`, then the records, late.
        for frame in &release {
            frame.mark_late();
        }
        self.hub.release(thread, &tenant, &release);
        if let Some(r) = &self.redis {
            for frame in &release {
                r.offer(frame);
            }
        }
        if let Some(store) = &self.halt_store {
            store.released(
                thread,
                &crate::ingest::halt_store::Released {
                    origin: format!("{:016x}", self.hub.notices.boot()),
                    tenant: tenant.clone(),
                    offsets: release
                        .iter()
                        .map(|f| (f.cursor.partition, f.cursor.offset))
                        .collect(),
                    at_ms: crate::util::unix_ms(),
                },
            );
            // After the release is written: whoever sees the halt gone finds it.
            store.remove(thread);
        }
        self.publish_halts();
        Ok(released)
    }

    /// Every halted thread's status again (after a release or revocation
    /// moved held records between threads).
    fn publish_halts(&self) {
        for info in self.halts.all() {
            self.status.put_halted(info);
        }
        self.export_halt_gauges();
    }

    fn export_halt_gauges(&self) {
        let (held, _) = self.halts.held();
        self.status.set_held_messages(held);
        metrics::gauge!(telemetry::HALTED_THREADS).set(self.halts.halted_threads() as f64);
        metrics::gauge!(telemetry::HELD_MESSAGES).set(held as f64);
    }

    /// Periodic upkeep: idle thread eviction and gauges.
    pub(crate) fn tick(&mut self, now: Instant) {
        let idle = self.validator.evict_idle(now);
        if idle > 0 {
            metrics::counter!(telemetry::SEQ_EVICTED_THREADS, "reason" => "idle").increment(idle);
        }
        metrics::gauge!(telemetry::SEQ_TRACKED_THREADS)
            .set(self.validator.tracked_threads() as f64);
        self.publish_heads();
    }

    /// Tells the instances that follow this one's partitions how far it has
    /// handled each (`heads` in Redis), so that a record whose Redis write was
    /// dropped at the end of a burst is found missing (and read from Kafka)
    /// even when no later record follows. Once per tick, never waited for.
    fn publish_heads(&mut self) {
        let Some(r) = &self.redis else {
            return;
        };
        let heads: Vec<(i32, i64)> = self
            .offsets
            .partitions()
            .filter_map(|p| Some((p, self.offsets.progress(p).last_processed?)))
            .filter(|(p, o)| self.heads_sent.get(p) != Some(o))
            .collect();
        if heads.is_empty()
            || self
                .heads_in_flight
                .load(std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        for (p, o) in &heads {
            self.heads_sent.insert(*p, *o);
        }
        let (r, flag) = (r.clone(), self.heads_in_flight.clone());
        flag.store(true, std::sync::atomic::Ordering::Relaxed);
        tokio::spawn(async move {
            for (p, o) in heads {
                if r.hash_set(crate::replay::redis::HEADS, &p.to_string(), &o.to_string())
                    .await
                    .is_err()
                {
                    break;
                }
            }
            flag.store(false, std::sync::atomic::Ordering::Relaxed);
        });
    }

    /// The partition's offsets restarted at `first`: its log and Redis
    /// history are dropped and sessions restart it there.
    pub(crate) fn reset_partition(&mut self, partition: i32, first: i64, last: i64) {
        self.hub.reset_partition(partition, first, last);
        if let Some(r) = &self.redis {
            r.reset_partition(partition);
        }
    }

    /// Held frames of a partition are dropped when it is revoked: the next
    /// owner re-reads them from the committed offset, which never passed them.
    pub(crate) fn forget_partition(&mut self, partition: i32) {
        self.heads_sent.remove(&partition);
        self.halts.forget_partition(partition);
        self.offsets.reset(partition);
        self.envelopes.forget(partition);
        self.publish_halts();
    }
}

/// Extracts the 32-hex-digit trace id from a W3C `traceparent` header.
pub(crate) fn trace_id_from_traceparent(v: &[u8]) -> Option<Box<str>> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let mut parts = s.split('-');
    let (version, trace, span) = (parts.next()?, parts.next()?, parts.next()?);
    let hex = |x: &str, n: usize| x.len() == n && x.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex(version, 2) || !hex(trace, 32) || !hex(span, 16) || trace.bytes().all(|b| b == b'0') {
        return None;
    }
    Some(trace.to_ascii_lowercase().into_boxed_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::log::{Page, Slot};
    use crate::proto::dash_stream_message::Message;
    use crate::proto::{DashStreamMessage, Event, Header};
    use crate::record::decode::encode_record;

    fn rec(thread: &str, seq: u64) -> Vec<u8> {
        encode_record(
            &DashStreamMessage {
                message: Some(Message::Event(Event {
                    header: Some(Header {
                        thread_id: thread.into(),
                        sequence: seq,
                        ..Default::default()
                    }),
                    ..Default::default()
                })),
            },
            None,
        )
    }

    fn pipeline(policy: GapPolicy) -> (Pipeline, Arc<Hub>) {
        let (p, hub, _) = pipeline_with(
            policy,
            HaltLimits {
                max_held: 100,
                max_threads: 1000,
                max_held_bytes: 1 << 30,
            },
        );
        (p, hub)
    }

    fn pipeline_with(
        policy: GapPolicy,
        halt: HaltLimits,
    ) -> (Pipeline, Arc<Hub>, Arc<IngestStatus>) {
        let status = Arc::new(IngestStatus::default());
        let hub = Hub::new(
            crate::hub::DeliveryLimits {
                priorities: Default::default(),
                reader_stall: std::time::Duration::from_secs(1),
                reader_hold: std::time::Duration::from_secs(5),
            },
            crate::hub::log::RingLimits {
                max_per_partition: 1000,
                max_bytes_per_partition: 1 << 24,
            },
        );
        let p = Pipeline::new(
            PipelineConfig {
                limits: DecodeLimits::default(),
                gap_policy: policy,
                sequence: ValidatorConfig::default(),
                halt,
            },
            hub.clone(),
            status.clone(),
        );
        (p, hub, status)
    }

    fn view(offset: i64, v: &[u8]) -> RecordView<'_> {
        RecordView {
            partition: 0,
            offset,
            timestamp_ms: None,
            key: None,
            value: Some(v),
            traceparent: None,
        }
    }

    /// Offsets of the frames the log holds (tombstones left out), and of
    /// the records released as late notices since `seq`.
    fn delivered(hub: &Hub, seq: u64) -> (Vec<i64>, Vec<i64>) {
        let frames = match hub.log.page(0, 0, 1000) {
            Page::Entries(v) => v
                .into_iter()
                .filter(|e| matches!(e.slot, Slot::Frame(_)))
                .map(|e| e.offset)
                .collect(),
            _ => vec![],
        };
        let late = hub
            .notices
            .since(seq)
            .0
            .into_iter()
            .filter_map(|(_, n)| match n {
                crate::hub::notices::Notice::Released { frames, .. } => Some(frames),
                _ => None,
            })
            .flat_map(|frames| frames.iter().map(|f| f.cursor.offset).collect::<Vec<_>>())
            .collect();
        (frames, late)
    }

    #[test]
    fn halt_holds_the_thread_and_release_delivers_in_order() {
        let (mut p, hub) = pipeline(GapPolicy::Halt);
        let seq = hub.notice_seq();
        let now = Instant::now();
        let records = [("a", 1), ("b", 1), ("a", 2), ("a", 5), ("b", 2), ("a", 6)];
        let bytes: Vec<Vec<u8>> = records.iter().map(|(t, s)| rec(t, *s)).collect();
        let outcomes: Vec<Outcome> = bytes
            .iter()
            .enumerate()
            .map(|(i, b)| p.handle(view(i as i64, b), now, 0))
            .collect();
        assert!(matches!(outcomes[3], Outcome::Held { ref thread, .. } if thread == "a"));
        assert!(
            matches!(outcomes[4], Outcome::Delivered),
            "other threads keep flowing"
        );
        assert!(matches!(outcomes[5], Outcome::Held { .. }));
        assert_eq!(delivered(&hub, seq), (vec![0, 1, 2, 4], vec![]));
        assert_eq!(
            p.offsets().commit_point(0),
            Some(3),
            "commit stops at the first held record"
        );
        assert_eq!(p.release_thread("a"), Ok(2));
        assert_eq!(
            delivered(&hub, seq),
            (vec![0, 1, 2, 3, 4, 5], vec![3, 5]),
            "released in order, as late notices and in the log"
        );
        assert_eq!(p.offsets().commit_point(0), Some(6));
        assert_eq!(
            p.release_thread("a"),
            Err(ReleaseError::NotHalted("a".into()))
        );
    }

    #[test]
    fn halts_are_bounded_by_thread_count_and_held_bytes() {
        let one = Frame::new(
            Cursor {
                partition: 0,
                offset: 0,
            },
            None,
            &rec("t0", 6),
            Summary::of(&decode::decode(Some(&rec("t0", 6)), &DecodeLimits::default()).unwrap()),
            None,
        )
        .base_bytes();
        let (mut p, hub, status) = pipeline_with(
            GapPolicy::Halt,
            HaltLimits {
                max_held: 100,
                max_threads: 3,
                max_held_bytes: 4 * one,
            },
        );
        let now = Instant::now();
        let mut o = 0;
        let mut next = |p: &mut Pipeline, t: &str, seq: u64| {
            o += 1;
            p.handle(view(o, &rec(t, seq)), now, 0)
        };
        for t in 0..5 {
            next(&mut p, &format!("t{t}"), 1);
            let gap = next(&mut p, &format!("t{t}"), 5);
            if t < 3 {
                assert!(matches!(gap, Outcome::Held { .. }), "t{t}: {gap:?}");
            } else {
                assert_eq!(
                    gap,
                    Outcome::Delivered,
                    "t{t}: over HALT_MAX_THREADS, delivered"
                );
            }
        }
        assert_eq!(status.halted_count(), 3);
        let ids: Vec<String> = status.halted().into_iter().map(|h| h.thread_id).collect();
        assert_eq!(ids, ["t0", "t1", "t2"]);
        // t0..t2 hold one record each; one more fits, the rest are not held.
        let held: Vec<bool> = (6..10)
            .map(|s| match next(&mut p, "t0", s) {
                Outcome::Held { buffered, .. } => buffered,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(held, [true, false, false, false]);
        assert_eq!(status.held_messages(), 4);
        let t0 = status.halted().into_iter().next().unwrap();
        assert_eq!((t0.held_messages, t0.dropped_messages), (2, 3));
        assert_eq!(p.release_thread("t0"), Ok(2));
        assert_eq!((status.halted_count(), status.held_messages()), (2, 2));
        // Room again: a new halt is taken.
        next(&mut p, "t9", 1);
        assert!(matches!(
            next(&mut p, "t9", 3),
            Outcome::Held { buffered: true, .. }
        ));
        assert_eq!(status.halted_count(), 3);
        drop(hub);
    }

    #[test]
    fn bad_records_are_skipped_and_offsets_move_on() {
        let (mut p, hub) = pipeline(GapPolicy::Warn);
        let good = rec("a", 1);
        let now = Instant::now();
        assert!(matches!(
            p.handle(view(0, b"\x00\xff\xff"), now, 0),
            Outcome::Rejected { error, original: None } if error.error_type() == "invalid_protobuf"
        ));
        assert!(matches!(
            p.handle(view(1, &good), now, 0),
            Outcome::Delivered
        ));
        assert_eq!(delivered(&hub, 0).0, vec![1]);
        assert_eq!(p.offsets().commit_point(0), Some(2));
    }

    #[test]
    fn traceparent_is_parsed_strictly() {
        let tp = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            trace_id_from_traceparent(tp).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(trace_id_from_traceparent(b"garbage"), None);
        assert_eq!(
            trace_id_from_traceparent(b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(trace_id_from_traceparent(&[0xff, 0xfe]), None);
    }
}
