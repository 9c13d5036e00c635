//! Fan-out stage: delivers each [`Frame`] to every connected client whose
//! filter matches, through a bounded queue per client.
//!
//! The pipeline calls [`Hub::publish`] synchronously: for each client it is one
//! filter check and one non-blocking `try_send` of a shared `Arc<Frame>`. A
//! client whose queue is full loses that frame (counted, and the client is
//! told with a `lagged` notice); neither the consumer nor other clients wait.
//! The client list lock is held only for that loop, never across an await.
//!
//! The hub also keeps the memory tier of the replay buffer: each published
//! frame is appended to its partition's ring *while the client-list read
//! lock is held*, and a resuming session joins live delivery under the
//! write lock only once it has replayed up to every ring's head
//! ([`Hub::subscribe_caught_up`]). So every frame is either in the ring the
//! session replays from, or delivered to it live: no hole at the seam.

pub(crate) mod config;
pub(crate) mod ring;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use metrics::Counter;
use parking_lot::RwLock;
use tokio::sync::mpsc;

use crate::hub::ring::{MemoryRings, RingLimits, Slot};
use crate::record::decode::MessageKind;
use crate::record::frame::Frame;
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
            if frame.decoded.tenant_id() != &**t {
                return false;
            }
        }
        if let Some(threads) = &self.threads {
            return self.matches_thread_set(threads, frame);
        }
        true
    }

    fn matches_thread_set(&self, threads: &HashSet<Box<str>>, frame: &Frame) -> bool {
        if threads.contains(frame.decoded.thread_id()) {
            return true;
        }
        frame
            .decoded
            .batch_events()
            .iter()
            .filter_map(|e| e.header.as_ref())
            .any(|h| threads.contains(h.thread_id.as_str()))
    }

    /// True if notices about `thread` concern this client.
    pub(crate) fn wants_thread(&self, thread: &str) -> bool {
        self.threads.as_ref().is_none_or(|t| t.contains(thread))
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

/// What a session task receives from the hub.
pub(crate) enum Outbound {
    /// A data frame and when it was queued (for the queue-age histogram).
    Data(Arc<Frame>, std::time::Instant),
    Control(Utf8Bytes),
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
        if let crate::proto::dash_stream_message::Message::Event(e) = &f.decoded.body {
            // GRAPH_END, GRAPH_ERROR, NODE_ERROR, LLM_ERROR, TOOL_ERROR: always kept.
            if matches!(e.event_type, 2 | 3 | 12 | 32 | 42) {
                return Priority::High;
            }
            // NODE_PROGRESS, NODE_THINKING, NODE_SUBSTEP: shed first.
            if matches!(e.event_type, 80..=82) {
                return Priority::Low;
            }
        }
        self.by_kind[f.kind() as usize]
    }
}

/// What the hub and a session share about one client.
#[derive(Default)]
pub(crate) struct ClientState {
    /// Frames dropped since the session last reported it to the client.
    pub(crate) lagged: AtomicU64,
    /// Bytes of the frames in the queue.
    pub(crate) queued_bytes: std::sync::atomic::AtomicUsize,
    /// Exact offset ranges dropped for this client, not yet reported.
    lost: parking_lot::Mutex<Vec<(i32, i64, i64)>>,
    /// When the client started losing frames (Unix ms; 0: it is keeping up).
    pub(crate) lagging_since_ms: std::sync::atomic::AtomicI64,
    /// Per partition, the last offset the client already has (set when a
    /// resumed session goes live): older frames are never queued for it.
    floor: HashMap<i32, i64>,
}

/// Ranges kept per client before older ones are merged.
const MAX_LOST_RANGES: usize = 256;

impl ClientState {
    fn lose(&self, partition: i32, offset: i64) {
        self.lagged.fetch_add(1, Ordering::Relaxed);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(1);
        let _ =
            self.lagging_since_ms
                .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        let mut lost = self.lost.lock();
        if let Some(last) = lost.last_mut() {
            if last.0 == partition && last.2 + 1 == offset {
                last.2 = offset;
                return;
            }
        }
        if lost.len() >= MAX_LOST_RANGES {
            // Keep the report bounded: widen the newest range of this partition.
            if let Some(r) = lost.iter_mut().rev().find(|r| r.0 == partition) {
                r.2 = r.2.max(offset);
                return;
            }
        }
        lost.push((partition, offset, offset));
    }

    /// Takes the ranges lost since the last call.
    pub(crate) fn take_lost(&self) -> Vec<(i32, i64, i64)> {
        std::mem::take(&mut *self.lost.lock())
    }
}

struct ClientSlot {
    filter: Filter,
    tx: mpsc::Sender<Outbound>,
    state: Arc<ClientState>,
}

/// All connected clients.
pub(crate) struct Hub {
    clients: RwLock<HashMap<u64, ClientSlot>>,
    rings: parking_lot::Mutex<MemoryRings>,
    next_id: AtomicU64,
    connected: AtomicUsize,
    queue_frames: usize,
    queue_bytes: usize,
    priorities: PriorityTable,
    dropped_full: Counter,
    client_lag: Counter,
}

/// Per-client queue bounds and the priority table.
#[derive(Clone, Debug)]
pub(crate) struct QueueLimits {
    pub(crate) frames: usize,
    pub(crate) bytes: usize,
    pub(crate) priorities: PriorityTable,
}

/// A client's end: its queue and the registration guard that removes it
/// from the hub when dropped (on every exit path of the session).
pub(crate) struct Subscription {
    pub(crate) rx: mpsc::Receiver<Outbound>,
    pub(crate) state: Arc<ClientState>,
    _guard: Registration,
}

struct Registration {
    hub: Arc<Hub>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.clients.write().remove(&self.id);
    }
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

impl Hub {
    pub(crate) fn new(queue: QueueLimits, rings: RingLimits) -> Arc<Self> {
        metrics::gauge!(telemetry::CLIENT_QUEUE_MAX_FRAMES).set(queue.frames as f64);
        metrics::gauge!(telemetry::CLIENT_QUEUE_MAX_BYTES).set(queue.bytes as f64);
        Arc::new(Self {
            clients: RwLock::new(HashMap::new()),
            rings: parking_lot::Mutex::new(MemoryRings::new(rings)),
            next_id: AtomicU64::new(1),
            connected: AtomicUsize::new(0),
            queue_frames: queue.frames,
            queue_bytes: queue.bytes,
            priorities: queue.priorities,
            dropped_full: metrics::counter!(telemetry::DROPPED_MESSAGES, "reason" => telemetry::DROP_CLIENT_QUEUE_FULL),
            client_lag: metrics::counter!(telemetry::CLIENT_LAG_MESSAGES),
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

    pub(crate) fn subscribe(self: &Arc<Self>, filter: Filter) -> Subscription {
        let mut clients = self.clients.write();
        self.insert_client(&mut clients, filter, HashMap::new())
    }

    /// Joins live delivery only if `next` (per partition, the next offset the
    /// session would replay) is past every ring's head; otherwise hands the
    /// filter back so the session replays more first.
    pub(crate) fn subscribe_caught_up(
        self: &Arc<Self>,
        filter: Filter,
        next: &HashMap<i32, i64>,
    ) -> Result<Subscription, Filter> {
        let mut clients = self.clients.write();
        let behind = self
            .rings
            .lock()
            .heads()
            .into_iter()
            .any(|(p, head)| next.get(&p).is_none_or(|n| *n <= head));
        if behind {
            return Err(filter);
        }
        let floor = next.iter().map(|(p, n)| (*p, n - 1)).collect();
        Ok(self.insert_client(&mut clients, filter, floor))
    }

    fn insert_client(
        self: &Arc<Self>,
        clients: &mut HashMap<u64, ClientSlot>,
        filter: Filter,
        floor: HashMap<i32, i64>,
    ) -> Subscription {
        let (tx, rx) = mpsc::channel(self.queue_frames);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ClientState {
            floor,
            ..Default::default()
        });
        clients.insert(
            id,
            ClientSlot {
                filter,
                tx,
                state: state.clone(),
            },
        );
        Subscription {
            rx,
            state,
            _guard: Registration {
                hub: self.clone(),
                id,
            },
        }
    }

    /// Offers `frame` to every matching client without waiting. Returns how
    /// many clients it was queued for. A client whose queue is filling up
    /// gets low-priority frames only below half its capacity, normal ones
    /// below 90 %, and high-priority ones while there is any room; what it
    /// does not get is recorded as lost offset ranges for its session to report.
    pub(crate) fn publish(&self, frame: &Arc<Frame>) -> usize {
        let clients = self.clients.read();
        self.rings.lock().insert(
            frame.cursor.partition,
            frame.cursor.offset,
            Slot::Frame(frame.clone()),
        );
        let priority = self.priorities.of(frame);
        let size = frame.binary_len();
        let now = std::time::Instant::now();
        let mut queued = 0;
        for slot in clients.values() {
            if !slot.filter.matches(frame) {
                continue;
            }
            // Already delivered to this client by its replay (e.g. re-read after a restart).
            if !frame.is_late()
                && slot
                    .state
                    .floor
                    .get(&frame.cursor.partition)
                    .is_some_and(|f| frame.cursor.offset <= *f)
            {
                continue;
            }
            let used_frames = self.queue_frames - slot.tx.capacity();
            let used_bytes = slot.state.queued_bytes.load(Ordering::Relaxed);
            let fill = (used_frames as f64 / self.queue_frames as f64)
                .max(used_bytes as f64 / self.queue_bytes as f64);
            let admit = match priority {
                Priority::Low => fill < 0.5,
                Priority::Normal => fill < 0.9,
                Priority::High => used_bytes + size <= self.queue_bytes || used_frames == 0,
            };
            if !admit {
                slot.state.lose(frame.cursor.partition, frame.cursor.offset);
                self.dropped_full.increment(1);
                self.client_lag.increment(1);
                continue;
            }
            match slot.tx.try_send(Outbound::Data(frame.clone(), now)) {
                Ok(()) => {
                    slot.state.queued_bytes.fetch_add(size, Ordering::Relaxed);
                    queued += 1;
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    slot.state.lose(frame.cursor.partition, frame.cursor.offset);
                    self.dropped_full.increment(1);
                    self.client_lag.increment(1);
                }
                // The session is ending; its guard removes the slot.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        queued
    }

    /// Sum of queued frames and of queue capacity over all live clients.
    pub(crate) fn queue_fill(&self) -> (usize, usize) {
        let clients = self.clients.read();
        let used: usize = clients
            .values()
            .map(|s| self.queue_frames - s.tx.capacity())
            .sum();
        (used, clients.len() * self.queue_frames)
    }

    /// Records an offset that is not delivered (now, or not yet: a record
    /// held for a halted thread), so replay does not report it as a hole.
    pub(crate) fn skip(&self, partition: i32, offset: i64) {
        let _clients = self.clients.read();
        self.rings.lock().insert(partition, offset, Slot::Tombstone);
    }

    /// Memory-tier page: slots from `from` on, if the ring reaches back to it.
    pub(crate) fn ring_page(
        &self,
        partition: i32,
        from: i64,
        limit: usize,
    ) -> Option<Vec<(i64, Slot)>> {
        self.rings.lock().page(partition, from, limit)
    }

    pub(crate) fn ring_first(&self, partition: i32) -> Option<i64> {
        self.rings.lock().first(partition)
    }

    pub(crate) fn ring_heads(&self) -> HashMap<i32, i64> {
        self.rings.lock().heads()
    }

    /// (slots, approximate bytes) held in memory.
    pub(crate) fn ring_stats(&self) -> (usize, usize) {
        self.rings.lock().stats()
    }

    /// Sends a control notice to the clients whose filter wants `thread`.
    pub(crate) fn notify_thread(&self, thread: &str, text: &str) {
        let msg: Utf8Bytes = text.to_string().into();
        for slot in self.clients.read().values() {
            if slot.filter.wants_thread(thread) {
                if let Err(mpsc::error::TrySendError::Full(_)) =
                    slot.tx.try_send(Outbound::Control(msg.clone()))
                {
                    slot.state.lagged.fetch_add(1, Ordering::Relaxed);
                    self.dropped_full.increment(1);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::dash_stream_message::Message;
    use crate::proto::{DashStreamMessage, Error as PbError, Event, Header};
    use crate::record::decode::{decode, encode_record, DecodeLimits};
    use crate::record::frame::Cursor;

    fn test_limits(frames: usize) -> QueueLimits {
        QueueLimits {
            frames,
            bytes: 1 << 30,
            priorities: PriorityTable::default(),
        }
    }

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
            d,
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

    #[tokio::test]
    async fn full_queue_drops_for_that_client_only_and_guard_unregisters() {
        let hub = Hub::new(
            test_limits(2),
            RingLimits {
                max_per_partition: 100,
                max_bytes_per_partition: 1 << 20,
            },
        );
        let g1 = hub.enter_session();
        let g2 = hub.enter_session();
        let mut fast = hub.subscribe(Filter::default());
        let slow = hub.subscribe(Filter::default());
        assert_eq!(hub.connected(), 2);
        for i in 0..5 {
            hub.publish(&frame("a", "x", false, i));
            // The fast client drains as it goes.
            assert!(matches!(fast.rx.try_recv(), Ok(Outbound::Data(f, _)) if f.cursor.offset == i));
        }
        assert_eq!(
            slow.state.lagged.load(Ordering::Relaxed),
            3,
            "slow client lost 3 of 5 with a queue of 2"
        );
        assert_eq!(fast.state.lagged.load(Ordering::Relaxed), 0);
        drop(slow);
        drop(g2);
        assert_eq!(hub.connected(), 1);
        drop(fast);
        drop(g1);
        assert_eq!(hub.connected(), 0);
        assert_eq!(hub.clients.read().len(), 0, "registrations released");
    }

    #[test]
    fn a_session_joins_live_only_once_caught_up_with_the_ring() {
        let hub = Hub::new(
            test_limits(10),
            RingLimits {
                max_per_partition: 100,
                max_bytes_per_partition: 1 << 20,
            },
        );
        hub.publish(&frame("a", "x", false, 0));
        hub.publish(&frame("a", "x", false, 1));
        let next: HashMap<i32, i64> = [(0, 1)].into();
        let filter = hub
            .subscribe_caught_up(Filter::default(), &next)
            .err()
            .expect("behind: offset 1 not replayed");
        let page = hub.ring_page(0, 1, 10).expect("ring reaches offset 1");
        assert_eq!(page.len(), 1);
        let next: HashMap<i32, i64> = [(0, 2)].into();
        let mut sub = hub
            .subscribe_caught_up(filter, &next)
            .unwrap_or_else(|_| panic!("caught up"));
        hub.publish(&frame("a", "x", false, 2));
        assert!(
            matches!(sub.rx.try_recv(), Ok(Outbound::Data(f, _)) if f.cursor.offset == 2),
            "next frame arrives live"
        );
    }

    #[test]
    fn a_filling_queue_sheds_low_priority_first_and_keeps_high_priority() {
        fn token(offset: i64) -> Arc<Frame> {
            let header = Some(Header {
                thread_id: "t".into(),
                sequence: 1,
                ..Default::default()
            });
            let body = Message::TokenChunk(crate::proto::TokenChunk {
                header,
                ..Default::default()
            });
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
                d,
                None,
            ))
        }
        let hub = Hub::new(
            test_limits(10),
            RingLimits {
                max_per_partition: 100,
                max_bytes_per_partition: 1 << 20,
            },
        );
        let mut sub = hub.subscribe(Filter::default());
        for o in 0..8 {
            hub.publish(&token(o));
        }
        // Low priority stops at half the queue (5 of 10).
        assert_eq!(sub.rx.len(), 5);
        for o in 8..12 {
            hub.publish(&frame("t", "x", true, o));
        }
        // Errors (high) use the rest of the room.
        assert_eq!(sub.rx.len(), 9, "4 more high-priority frames queued");
        assert_eq!(
            sub.state.take_lost(),
            vec![(0, 5, 7)],
            "exact range of the shed token chunks"
        );
        let mut offsets = vec![];
        while let Ok(Outbound::Data(f, _)) = sub.rx.try_recv() {
            offsets.push(f.cursor.offset);
        }
        assert_eq!(offsets, vec![0, 1, 2, 3, 4, 8, 9, 10, 11], "order kept");
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
