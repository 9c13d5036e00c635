//! Fan-out stage: the log every session reads, and what sessions share.
//!
//! Ingest appends each record once to its partition's [`log::Log`]
//! ([`Hub::publish`], [`Hub::skip`]): O(1) in the number of clients. Each
//! session reads forward from the log with its own cursor per partition
//! (`session::cursors`), filtering and writing in its own task, so fan-out
//! runs on every core and a slow client costs nobody else anything.
//!
//! Besides the log, the hub carries the thread notices (halted, resumed)
//! and the records released after a halt, which reach sessions already past
//! their offsets, in one small ordered side list ([`notices`]), and the
//! halted threads every reading path withholds ([`held`]).

pub(crate) mod config;
pub(crate) mod held;
pub(crate) mod log;
pub(crate) mod notices;
pub(crate) mod readers;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::hub::log::{Log, RingLimits, Slot};
use crate::hub::notices::{Notice, Notices};
use crate::hub::readers::Readers;
use crate::record::decode::MessageKind;
use crate::record::frame::Frame;
use crate::record::scan::Peek;
use crate::telemetry;

/// Wire format chosen per connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    Binary,
    Json,
}

impl Format {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Format::Binary => "binary",
            Format::Json => "json",
        }
    }
}

/// Server-side filter of one connection. Empty parts match everything.
#[derive(Clone, Debug, Default)]
pub(crate) struct Filter {
    pub(crate) threads: Option<HashSet<Box<str>>>,
    pub(crate) tenant: Option<Box<str>>,
    /// Bit set of [`MessageKind::bit`].
    pub(crate) kinds: Option<u16>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub(crate) enum FilterError {
    #[error("{param}: at most {max} values")]
    TooMany { param: &'static str, max: usize },
    #[error("{param}: value longer than {max} bytes")]
    TooLong { param: &'static str, max: usize },
    #[error("types: unknown message type '{0}' (known: event, state_diff, token_chunk, tool_execution, checkpoint, metrics, error, event_batch, execution_trace)")]
    UnknownType(String),
    #[error("{param}: empty value")]
    Empty { param: &'static str },
}

/// Longest thread or tenant id accepted in a filter.
pub(crate) const MAX_FILTER_VALUE_BYTES: usize = 256;

impl Filter {
    /// Parses the `threads`, `tenant` and `types` query parameters.
    pub(crate) fn parse(
        threads: Option<&str>,
        tenant: Option<&str>,
        types: Option<&str>,
        max_values: usize,
    ) -> Result<Self, FilterError> {
        let list = |param: &'static str, raw: &str| -> Result<Vec<String>, FilterError> {
            let values: Vec<String> = raw
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            if values.is_empty() {
                return Err(FilterError::Empty { param });
            }
            if values.len() > max_values {
                return Err(FilterError::TooMany {
                    param,
                    max: max_values,
                });
            }
            if values.iter().any(|v| v.len() > MAX_FILTER_VALUE_BYTES) {
                return Err(FilterError::TooLong {
                    param,
                    max: MAX_FILTER_VALUE_BYTES,
                });
            }
            Ok(values)
        };
        let mut f = Filter::default();
        if let Some(raw) = threads {
            f.threads = Some(
                list("threads", raw)?
                    .into_iter()
                    .map(String::into_boxed_str)
                    .collect(),
            );
        }
        if let Some(raw) = tenant {
            let t = raw.trim();
            if t.is_empty() {
                return Err(FilterError::Empty { param: "tenant" });
            }
            if t.len() > MAX_FILTER_VALUE_BYTES {
                return Err(FilterError::TooLong {
                    param: "tenant",
                    max: MAX_FILTER_VALUE_BYTES,
                });
            }
            f.tenant = Some(t.into());
        }
        if let Some(raw) = types {
            let mut bits = 0u16;
            for v in list("types", raw)? {
                bits |= MessageKind::parse(&v)
                    .ok_or(FilterError::UnknownType(v))?
                    .bit();
            }
            f.kinds = Some(bits);
        }
        Ok(f)
    }

    pub(crate) fn matches(&self, frame: &Frame) -> bool {
        if let Some(bits) = self.kinds {
            if bits & frame.kind().bit() == 0 {
                return false;
            }
        }
        if let Some(t) = &self.tenant {
            if frame.summary.tenant != *t {
                return false;
            }
        }
        if let Some(threads) = &self.threads {
            return self.matches_thread_set(threads, frame);
        }
        true
    }

    /// What a replay asks of a record read back from Redis or Kafka before
    /// decoding it: false only when its wire headers say for certain that
    /// [`Filter::matches`] would refuse it (kind, tenant, threads read as
    /// the decoder reads them).
    pub(crate) fn may_match(&self, p: &Peek<'_>) -> bool {
        if self.kinds.is_some_and(|bits| bits & p.kind.bit() == 0) {
            return false;
        }
        if let Some(t) = &self.tenant {
            if p.tenant().is_some_and(|tenant| tenant != &**t) {
                return false;
            }
        }
        match &self.threads {
            None => true,
            Some(threads) => {
                threads.contains(p.header.thread)
                    || p.events()
                        .any(|e| e.is_none_or(|ids| threads.contains(ids.thread)))
            }
        }
    }

    /// A frame's threads were listed once at ingest, so this costs at most
    /// one lookup per distinct thread the record touches.
    fn matches_thread_set(&self, threads: &HashSet<Box<str>>, frame: &Frame) -> bool {
        frame.summary.threads().any(|t| threads.contains(t))
    }

    /// True if notices about `thread` of `tenant` concern this client: a
    /// client filtered (or restricted by its token) to one tenant never
    /// hears about another tenant's threads.
    pub(crate) fn wants_thread(&self, thread: &str, tenant: &str) -> bool {
        self.tenant.as_deref().is_none_or(|t| t == tenant)
            && self.threads.as_ref().is_none_or(|t| t.contains(thread))
    }

    pub(crate) fn describe(&self) -> serde_json::Value {
        let mut threads: Option<Vec<&str>> = self
            .threads
            .as_ref()
            .map(|t| t.iter().map(|s| &**s).collect());
        if let Some(t) = threads.as_mut() {
            t.sort_unstable();
        }
        let types: Option<Vec<&str>> = self.kinds.map(|bits| {
            MessageKind::ALL
                .iter()
                .filter(|k| bits & k.bit() != 0)
                .map(|k| k.as_str())
                .collect()
        });
        serde_json::json!({"threads": threads, "tenant": self.tenant.as_deref(), "types": types})
    }
}

/// Delivery priority of a record for a client that falls behind: low ones
/// are shed first, high ones are kept while there is any room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Priority {
    Low,
    Normal,
    High,
}

/// Message kind → priority (`MESSAGE_PRIORITIES`), plus the event types that
/// matter most or least whatever the kind's setting.
#[derive(Clone, Debug)]
pub(crate) struct PriorityTable {
    by_kind: [Priority; 9],
}

impl Default for PriorityTable {
    fn default() -> Self {
        let mut by_kind = [Priority::Normal; 9];
        by_kind[MessageKind::TokenChunk as usize] = Priority::Low;
        by_kind[MessageKind::Metrics as usize] = Priority::Low;
        by_kind[MessageKind::Error as usize] = Priority::High;
        by_kind[MessageKind::ExecutionTrace as usize] = Priority::High;
        Self { by_kind }
    }
}

impl PriorityTable {
    /// Parses `token_chunk=low,error=high` over the defaults.
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        let mut t = PriorityTable::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("'{part}' is not type=low|normal|high"))?;
            let kind = MessageKind::parse(k.trim())
                .ok_or_else(|| format!("unknown message type '{k}'"))?;
            t.by_kind[kind as usize] = match v.trim() {
                "low" => Priority::Low,
                "normal" => Priority::Normal,
                "high" => Priority::High,
                other => return Err(format!("'{other}' is not low, normal or high")),
            };
        }
        Ok(t)
    }

    pub(crate) fn of(&self, f: &Frame) -> Priority {
        if f.kind() == MessageKind::Event {
            // GRAPH_END, GRAPH_ERROR, NODE_ERROR, LLM_ERROR, TOOL_ERROR: always kept.
            if matches!(f.summary.event_type, 2 | 3 | 12 | 32 | 42) {
                return Priority::High;
            }
            // NODE_PROGRESS, NODE_THINKING, NODE_SUBSTEP: shed first.
            if matches!(f.summary.event_type, 80..=82) {
                return Priority::Low;
            }
        }
        self.by_kind[f.kind() as usize]
    }
}

/// Delivery settings: the priority table (used at CRITICAL backpressure)
/// and how long ingest waits for a reader that stopped making progress.
#[derive(Clone, Debug)]
pub(crate) struct DeliveryLimits {
    pub(crate) priorities: PriorityTable,
    pub(crate) reader_stall: Duration,
    /// How long ingest waits in all for one reading session while others wait at the head.
    pub(crate) reader_hold: Duration,
}

/// The log, the readers, and what every session shares.
pub(crate) struct Hub {
    pub(crate) log: Log,
    pub(crate) readers: Arc<Readers>,
    /// Halted threads: what no reading path may deliver yet.
    pub(crate) held: held::HeldThreads,
    pub(crate) notices: Notices,
    connected: AtomicUsize,
    /// Sessions reading from Redis or Kafka because they fell behind the log.
    catching_up: AtomicUsize,
    pub(crate) priorities: PriorityTable,
    /// CRITICAL backpressure: sessions that are behind skip low-priority frames.
    shedding: AtomicBool,
}

/// Counts one connected WebSocket session for as long as it lives (on every
/// exit path), whether it is replaying or live.
pub(crate) struct SessionGuard {
    hub: Arc<Hub>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let n = self.hub.connected.fetch_sub(1, Ordering::Relaxed) - 1;
        metrics::gauge!(telemetry::CONNECTED_CLIENTS).set(n as f64);
    }
}

/// Counted in [`Hub::catching_up`] while it lives.
pub(crate) struct CatchingUp<'a>(&'a Hub);

impl Drop for CatchingUp<'_> {
    fn drop(&mut self) {
        self.0.catching_up.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Hub {
    pub(crate) fn new(delivery: DeliveryLimits, rings: RingLimits) -> Arc<Self> {
        Arc::new(Self {
            log: Log::new(rings),
            readers: Readers::new(delivery.reader_stall, delivery.reader_hold),
            held: Default::default(),
            notices: Notices::new(),
            connected: AtomicUsize::new(0),
            catching_up: AtomicUsize::new(0),
            priorities: delivery.priorities,
            shedding: AtomicBool::new(false),
        })
    }

    /// Registers a new WebSocket session (connected count, connections total).
    pub(crate) fn enter_session(self: &Arc<Self>) -> SessionGuard {
        let n = self.connected.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!(telemetry::CONNECTED_CLIENTS).set(n as f64);
        metrics::counter!(telemetry::CONNECTIONS_OPENED).increment(1);
        SessionGuard { hub: self.clone() }
    }

    pub(crate) fn connected(&self) -> usize {
        self.connected.load(Ordering::Relaxed)
    }

    /// Appends `frame` to its partition's log.
    pub(crate) fn publish(&self, frame: &Arc<Frame>) {
        self.publish_at(frame, crate::util::unix_ms());
    }

    /// Appends `frame`, stamped `at_ms` (ingest reads the clock once per
    /// batch), without waking sessions: ingest calls [`Hub::wake`] after
    /// the batch.
    pub(crate) fn publish_at(&self, frame: &Arc<Frame>, at_ms: i64) {
        self.log.append_quietly(
            frame.cursor.partition,
            frame.cursor.offset,
            Slot::Frame(frame.clone()),
            at_ms,
        );
    }

    /// An operator released a halted thread: its held records reach every
    /// session as one notice (`thread_resumed`, then the records), and then
    /// replace their tombstones in the log, for replays. In that order: a
    /// session that finds one in the log knows of its notice already.
    pub(crate) fn release(&self, thread: &str, tenant: &str, frames: &[Arc<Frame>]) {
        self.notice(Notice::Released {
            thread: thread.into(),
            tenant: tenant.into(),
            frames: frames.into(),
        });
        for f in frames {
            self.publish(f);
        }
        self.wake();
    }

    /// Records an offset that is not delivered (now, or not yet: a record
    /// held for a halted thread), so readers do not report it as a hole.
    #[cfg(test)]
    pub(crate) fn skip(&self, partition: i32, offset: i64) {
        self.skip_at(partition, offset, crate::util::unix_ms());
    }

    pub(crate) fn skip_at(&self, partition: i32, offset: i64, at_ms: i64) {
        self.log
            .append_quietly(partition, offset, Slot::Tombstone, at_ms);
    }

    /// The partition's offsets went backwards (topic recreated, broker data
    /// lost): its history is dropped and sessions restart it at `first`,
    /// told by an `offsets_reset` frame.
    pub(crate) fn reset_partition(&self, partition: i32, first: i64, last: i64) {
        let epoch = self.log.reset(partition, first, last);
        self.notice(Notice::OffsetsReset {
            partition,
            first,
            epoch,
        });
    }

    /// Wakes the sessions waiting for what ingest appended since the last wake.
    pub(crate) fn wake(&self) {
        self.log.nudge();
    }

    /// Sends a control notice to the sessions whose filter wants `thread` of `tenant`.
    pub(crate) fn notify_thread(&self, thread: &str, tenant: &str, text: &str) {
        self.notice(Notice::Thread {
            thread: thread.into(),
            tenant: tenant.into(),
            text: text.to_string().into(),
        });
    }

    fn notice(&self, n: Notice) {
        self.notices.push(n);
        // Wake the sessions that wait for data.
        self.log.nudge();
    }

    /// Sequence number of the newest notice.
    pub(crate) fn notice_seq(&self) -> u64 {
        self.notices.seq()
    }

    /// (slots, approximate bytes) held in memory.
    pub(crate) fn ring_stats(&self) -> (usize, usize) {
        self.log.stats()
    }

    pub(crate) fn enter_catch_up(&self) -> CatchingUp<'_> {
        self.catching_up.fetch_add(1, Ordering::Relaxed);
        CatchingUp(self)
    }

    /// Share of connected sessions catching up from Redis or Kafka (0–1),
    /// the `client_queues` part of the backpressure level.
    pub(crate) fn catch_up_share(&self) -> f64 {
        let n = self.connected();
        if n == 0 {
            0.0
        } else {
            (self.catching_up.load(Ordering::Relaxed) as f64 / n as f64).min(1.0)
        }
    }

    pub(crate) fn set_shedding(&self, on: bool) {
        self.shedding.store(on, Ordering::Relaxed);
    }

    pub(crate) fn shedding(&self) -> bool {
        self.shedding.load(Ordering::Relaxed)
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::dash_stream_message::Message;
    use crate::proto::{DashStreamMessage, Error as PbError, Event, Header};
    use crate::record::decode::{decode, encode_record, DecodeLimits};
    use crate::record::frame::Cursor;
    use crate::record::summary::Summary;

    fn frame(thread: &str, tenant: &str, error: bool, offset: i64) -> Arc<Frame> {
        let header = Some(Header {
            thread_id: thread.into(),
            tenant_id: tenant.into(),
            sequence: 1,
            ..Default::default()
        });
        let body = if error {
            Message::Error(PbError {
                header,
                ..Default::default()
            })
        } else {
            Message::Event(Event {
                header,
                ..Default::default()
            })
        };
        let v = encode_record(
            &DashStreamMessage {
                message: Some(body),
            },
            None,
        );
        let d = decode(Some(&v), &DecodeLimits::default()).unwrap();
        Arc::new(Frame::new(
            Cursor {
                partition: 0,
                offset,
            },
            None,
            &v,
            Summary::of(&d),
            None,
        ))
    }

    #[test]
    fn filters_select_by_thread_tenant_and_type() {
        let f = Filter::parse(Some("a,b"), None, None, 10).unwrap();
        assert!(f.matches(&frame("a", "x", false, 0)));
        assert!(!f.matches(&frame("c", "x", false, 0)));
        let f = Filter::parse(None, Some("x"), Some("error"), 10).unwrap();
        assert!(f.matches(&frame("a", "x", true, 0)));
        assert!(!f.matches(&frame("a", "x", false, 0)));
        assert!(!f.matches(&frame("a", "y", true, 0)));
    }

    #[test]
    fn bad_filters_are_refused_with_a_reason() {
        assert!(
            matches!(Filter::parse(None, None, Some("event,bogus"), 10), Err(FilterError::UnknownType(t)) if t == "bogus")
        );
        assert!(matches!(
            Filter::parse(Some("a,b,c"), None, None, 2),
            Err(FilterError::TooMany { .. })
        ));
        assert!(matches!(
            Filter::parse(Some(","), None, None, 2),
            Err(FilterError::Empty { .. })
        ));
        let long = "é".repeat(200);
        assert!(matches!(
            Filter::parse(None, Some(&long), None, 2),
            Err(FilterError::TooLong { .. })
        ));
    }

    fn hub() -> Arc<Hub> {
        Hub::new(
            DeliveryLimits {
                priorities: PriorityTable::default(),
                reader_stall: Duration::from_secs(1),
                reader_hold: Duration::from_secs(5),
            },
            RingLimits {
                max_per_partition: 100,
                max_bytes_per_partition: 1 << 20,
            },
        )
    }

    #[test]
    fn publishing_appends_once_and_a_release_is_noticed_before_it_replaces_its_tombstone() {
        let hub = hub();
        let _g = hub.enter_session();
        assert_eq!(hub.connected(), 1);
        hub.publish(&frame("a", "x", false, 0));
        hub.skip(0, 1);
        assert_eq!(hub.log.head(0), Some(1));
        let seen = hub.notice_seq();
        hub.notify_thread("a", "t", "halted");
        let late = frame("a", "x", false, 1);
        late.mark_late();
        hub.release("a", "t", &[late]);
        let (n, missed) = hub.notices.since(seen);
        assert_eq!(missed, 0);
        assert!(matches!(&n[0].1, Notice::Thread { thread, .. } if &**thread == "a"));
        assert!(
            matches!(&n[1].1, Notice::Released { frames, .. } if frames.len() == 1 && frames[0].cursor.offset == 1)
        );
        match hub.log.page(0, 1, 10) {
            log::Page::Entries(v) => assert!(
                matches!(v[0].slot, Slot::Frame(_)),
                "released record replaced its tombstone"
            ),
            _ => panic!(),
        }
    }

    #[test]
    fn priorities_parse_over_the_defaults() {
        let t = PriorityTable::parse("event=low,token_chunk=high").unwrap();
        assert_eq!(t.by_kind[MessageKind::Event as usize], Priority::Low);
        assert_eq!(t.by_kind[MessageKind::TokenChunk as usize], Priority::High);
        assert_eq!(t.by_kind[MessageKind::Error as usize], Priority::High);
        assert!(PriorityTable::parse("event=urgent").is_err());
        assert!(PriorityTable::parse("nope=low").is_err());
    }
}
