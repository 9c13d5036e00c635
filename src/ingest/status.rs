//! What the consumer task tells the rest of the bridge about itself: the
//! Kafka connection state, assignment, whether it consumes, the halted
//! threads. Written on rare events (and two relaxed atomics per record), read
//! by `/health` and `/health/ready` (`http::health`).

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, AtomicUsize, Ordering};

use std::collections::BTreeMap;

use parking_lot::RwLock;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum KafkaState {
    Starting = 0,
    Connected = 1,
    Disconnected = 2,
}

impl KafkaState {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => KafkaState::Connected,
            2 => KafkaState::Disconnected,
            _ => KafkaState::Starting,
        }
    }
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            KafkaState::Starting => "starting",
            KafkaState::Connected => "connected",
            KafkaState::Disconnected => "disconnected",
        }
    }
}

/// One halted thread as `/health` and `/admin/threads/halted` show it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub(crate) struct HaltedThread {
    pub(crate) thread_id: String,
    /// The tenant of the record whose gap halted the thread: only its
    /// clients (and clients without a tenant filter) hear about the halt.
    pub(crate) tenant_id: String,
    pub(crate) held_messages: usize,
    pub(crate) dropped_messages: u64,
    pub(crate) missing: u64,
    pub(crate) at_sequence: u64,
    pub(crate) halted_at_unix_ms: i64,
}

#[derive(Default)]
pub(crate) struct IngestStatus {
    kafka: AtomicU8,
    assigned_partitions: AtomicUsize,
    consuming: AtomicBool,
    shutting_down: AtomicBool,
    pub(crate) records_processed: AtomicU64,
    pub(crate) last_record_unix_ms: AtomicI64,
    /// Updated one thread at a time (never rebuilt per record).
    halted: RwLock<BTreeMap<String, HaltedThread>>,
    held_messages: AtomicUsize,
    /// The partitions the consumer group assigned to this instance.
    owned: RwLock<std::collections::BTreeSet<i32>>,
    /// Partitions another instance owns that this one follows (`follow`).
    following: AtomicUsize,
    /// The follower has not looked at Redis yet.
    follower_starting: AtomicBool,
    /// Threads another instance halted (from Redis), not held here.
    remote_halted: RwLock<BTreeMap<String, HaltedThread>>,
}

impl IngestStatus {
    pub(crate) fn kafka(&self) -> KafkaState {
        KafkaState::from_u8(self.kafka.load(Ordering::Relaxed))
    }
    pub(crate) fn set_kafka(&self, s: KafkaState) {
        self.kafka.store(s as u8, Ordering::Relaxed);
    }
    pub(crate) fn assigned_partitions(&self) -> usize {
        self.assigned_partitions.load(Ordering::Relaxed)
    }
    pub(crate) fn set_assigned_partitions(&self, n: usize) {
        self.assigned_partitions.store(n, Ordering::Relaxed);
    }
    /// The partitions this instance owns.
    pub(crate) fn owned(&self) -> std::collections::BTreeSet<i32> {
        self.owned.read().clone()
    }
    pub(crate) fn set_owned(&self, owned: std::collections::BTreeSet<i32>) {
        self.set_assigned_partitions(owned.len());
        *self.owned.write() = owned;
    }
    pub(crate) fn following(&self) -> usize {
        self.following.load(Ordering::Relaxed)
    }
    pub(crate) fn set_following(&self, n: usize) {
        self.following.store(n, Ordering::Relaxed);
    }
    pub(crate) fn follower_starting(&self) -> bool {
        self.follower_starting.load(Ordering::Relaxed)
    }
    pub(crate) fn set_follower_starting(&self, v: bool) {
        self.follower_starting.store(v, Ordering::Relaxed);
    }
    pub(crate) fn set_consuming(&self, v: bool) {
        self.consuming.store(v, Ordering::Relaxed);
    }
    pub(crate) fn consuming(&self) -> bool {
        self.consuming.load(Ordering::Relaxed)
    }
    pub(crate) fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }
    pub(crate) fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }
    /// Adds or replaces one halted thread.
    pub(crate) fn put_halted(&self, h: &HaltedThread) {
        self.halted.write().insert(h.thread_id.clone(), h.clone());
    }
    /// Updates one halted thread's counts (no allocation).
    pub(crate) fn count_halted(&self, h: &HaltedThread) {
        if let Some(e) = self.halted.write().get_mut(&h.thread_id) {
            e.held_messages = h.held_messages;
            e.dropped_messages = h.dropped_messages;
        }
    }
    pub(crate) fn remove_halted(&self, thread: &str) {
        self.halted.write().remove(thread);
    }
    pub(crate) fn set_held_messages(&self, n: usize) {
        self.held_messages.store(n, Ordering::Relaxed);
    }
    pub(crate) fn held_messages(&self) -> usize {
        self.held_messages.load(Ordering::Relaxed)
    }
    /// Whether this instance's pipeline holds `thread`.
    pub(crate) fn holds(&self, thread: &str) -> bool {
        self.halted.read().contains_key(thread)
    }
    /// A thread another instance halted.
    pub(crate) fn put_remote_halted(&self, h: HaltedThread) {
        self.remote_halted.write().insert(h.thread_id.clone(), h);
    }
    pub(crate) fn remove_remote_halted(&self, thread: &str) -> bool {
        self.remote_halted.write().remove(thread).is_some()
    }
    pub(crate) fn remote_halted(&self) -> Vec<String> {
        self.remote_halted.read().keys().cloned().collect()
    }
    pub(crate) fn halted_count(&self) -> usize {
        self.halted().len()
    }
    /// The halted threads, sorted by id: this instance's, and those other
    /// instances halted (with their counts as of the halt).
    pub(crate) fn halted(&self) -> Vec<HaltedThread> {
        let mut all = self.remote_halted.read().clone();
        all.extend(
            self.halted
                .read()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        all.into_values().collect()
    }
}
