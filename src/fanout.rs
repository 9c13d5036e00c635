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

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use metrics::Counter;
use parking_lot::RwLock;
use tokio::sync::mpsc;

use crate::decode::MessageKind;
use crate::frame::Frame;
use crate::replay::{MemoryRings, RingLimits, Slot};
use crate::telemetry;

/// Wire format chosen per connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Binary,
    Json,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Binary => "binary",
            Format::Json => "json",
        }
    }
}

/// Server-side filter of one connection. Empty parts match everything.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub threads: Option<HashSet<Box<str>>>,
    pub tenant: Option<Box<str>>,
    /// Bit set of [`MessageKind::bit`].
    pub kinds: Option<u16>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FilterError {
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
pub const MAX_FILTER_VALUE_BYTES: usize = 256;

impl Filter {
    /// Parses the `threads`, `tenant` and `types` query parameters.
    pub fn parse(
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

    pub fn matches(&self, frame: &Frame) -> bool {
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
    pub fn wants_thread(&self, thread: &str) -> bool {
        self.threads.as_ref().is_none_or(|t| t.contains(thread))
    }

    pub fn describe(&self) -> serde_json::Value {
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
pub enum Outbound {
    Data(Arc<Frame>),
    Control(Utf8Bytes),
}

struct ClientSlot {
    filter: Filter,
    tx: mpsc::Sender<Outbound>,
    /// Frames dropped since the session last reported it to the client.
    lagged: Arc<AtomicU64>,
}

/// All connected clients.
pub struct Hub {
    clients: RwLock<HashMap<u64, ClientSlot>>,
    rings: parking_lot::Mutex<MemoryRings>,
    next_id: AtomicU64,
    connected: AtomicUsize,
    queue_frames: usize,
    dropped_full: Counter,
    client_lag: Counter,
}

/// A client's end: its queue and the registration guard that removes it
/// from the hub when dropped (on every exit path of the session).
pub struct Subscription {
    pub rx: mpsc::Receiver<Outbound>,
    pub lagged: Arc<AtomicU64>,
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
pub struct SessionGuard {
    hub: Arc<Hub>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let n = self.hub.connected.fetch_sub(1, Ordering::Relaxed) - 1;
        metrics::gauge!(telemetry::CONNECTED_CLIENTS).set(n as f64);
    }
}

impl Hub {
    pub fn new(queue_frames: usize, rings: RingLimits) -> Arc<Self> {
        Arc::new(Self {
            clients: RwLock::new(HashMap::new()),
            rings: parking_lot::Mutex::new(MemoryRings::new(rings)),
            next_id: AtomicU64::new(1),
            connected: AtomicUsize::new(0),
            queue_frames,
            dropped_full: metrics::counter!(telemetry::DROPPED_MESSAGES, "reason" => telemetry::DROP_CLIENT_QUEUE_FULL),
            client_lag: metrics::counter!(telemetry::CLIENT_LAG_MESSAGES),
        })
    }

    /// Registers a new WebSocket session (connected count, connections total).
    pub fn enter_session(self: &Arc<Self>) -> SessionGuard {
        let n = self.connected.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!(telemetry::CONNECTED_CLIENTS).set(n as f64);
        metrics::counter!(telemetry::CONNECTIONS_OPENED).increment(1);
        SessionGuard { hub: self.clone() }
    }

    pub fn connected(&self) -> usize {
        self.connected.load(Ordering::Relaxed)
    }

    pub fn subscribe(self: &Arc<Self>, filter: Filter) -> Subscription {
        let mut clients = self.clients.write();
        self.insert_client(&mut clients, filter)
    }

    /// Joins live delivery only if `next` (per partition, the next offset the
    /// session would replay) is past every ring's head; otherwise hands the
    /// filter back so the session replays more first.
    pub fn subscribe_caught_up(
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
        Ok(self.insert_client(&mut clients, filter))
    }

    fn insert_client(
        self: &Arc<Self>,
        clients: &mut HashMap<u64, ClientSlot>,
        filter: Filter,
    ) -> Subscription {
        let (tx, rx) = mpsc::channel(self.queue_frames);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let lagged = Arc::new(AtomicU64::new(0));
        clients.insert(
            id,
            ClientSlot {
                filter,
                tx,
                lagged: lagged.clone(),
            },
        );
        Subscription {
            rx,
            lagged,
            _guard: Registration {
                hub: self.clone(),
                id,
            },
        }
    }

    /// Offers `frame` to every matching client without waiting. Returns how
    /// many clients it was queued for.
    pub fn publish(&self, frame: &Arc<Frame>) -> usize {
        let clients = self.clients.read();
        self.rings.lock().insert(
            frame.cursor.partition,
            frame.cursor.offset,
            Slot::Frame(frame.clone()),
        );
        let mut queued = 0;
        for slot in clients.values() {
            if !slot.filter.matches(frame) {
                continue;
            }
            match slot.tx.try_send(Outbound::Data(frame.clone())) {
                Ok(()) => queued += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    slot.lagged.fetch_add(1, Ordering::Relaxed);
                    self.dropped_full.increment(1);
                    self.client_lag.increment(1);
                }
                // The session is ending; its guard removes the slot.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        queued
    }

    /// Records an offset that is not delivered (now, or not yet: a record
    /// held for a halted thread), so replay does not report it as a hole.
    pub fn skip(&self, partition: i32, offset: i64) {
        let _clients = self.clients.read();
        self.rings.lock().insert(partition, offset, Slot::Tombstone);
    }

    /// Memory-tier page: slots from `from` on, if the ring reaches back to it.
    pub fn ring_page(&self, partition: i32, from: i64, limit: usize) -> Option<Vec<(i64, Slot)>> {
        self.rings.lock().page(partition, from, limit)
    }

    pub fn ring_first(&self, partition: i32) -> Option<i64> {
        self.rings.lock().first(partition)
    }

    pub fn ring_heads(&self) -> HashMap<i32, i64> {
        self.rings.lock().heads()
    }

    /// (slots, approximate bytes) held in memory.
    pub fn ring_stats(&self) -> (usize, usize) {
        self.rings.lock().stats()
    }

    /// Sends a control notice to the clients whose filter wants `thread`.
    pub fn notify_thread(&self, thread: &str, text: &str) {
        let msg: Utf8Bytes = text.to_string().into();
        for slot in self.clients.read().values() {
            if slot.filter.wants_thread(thread)
                && slot.tx.try_send(Outbound::Control(msg.clone())).is_err()
            {
                slot.lagged.fetch_add(1, Ordering::Relaxed);
                self.dropped_full.increment(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{decode, encode_record, DecodeLimits};
    use crate::frame::Cursor;
    use crate::proto::dash_stream_message::Message;
    use crate::proto::{DashStreamMessage, Error as PbError, Event, Header};

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
            2,
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
            assert!(matches!(fast.rx.try_recv(), Ok(Outbound::Data(f)) if f.cursor.offset == i));
        }
        assert_eq!(
            slow.lagged.load(Ordering::Relaxed),
            3,
            "slow client lost 3 of 5 with a queue of 2"
        );
        assert_eq!(fast.lagged.load(Ordering::Relaxed), 0);
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
            10,
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
            matches!(sub.rx.try_recv(), Ok(Outbound::Data(f)) if f.cursor.offset == 2),
            "next frame arrives live"
        );
    }
}
