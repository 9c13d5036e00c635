//! The log: per partition, an append-only sequence of slots in offset order,
//! written once per record by ingest and read by every session with its own
//! cursor. It is also the first replay tier (see `replay`), bounded by count
//! and bytes per partition: the oldest slots are evicted first.
//!
//! Every consumed offset leaves a slot: a frame, or a tombstone for a record
//! that was not deliverable (it went to the DLQ), so a missing slot is a real
//! hole and is reported to the client as a `gap`, never skipped silently.
//!
//! Appending costs O(1) in the number of clients: one write lock on the
//! partition, then one wake-up of the sessions that wait for data (only when
//! some do). Readers take the partition's read lock for one page at a time
//! and never hold it across an await.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::RwLock;
use tokio::sync::futures::Notified;
use tokio::sync::Notify;

use crate::record::frame::{Frame, JsonMeter};

/// One offset of a partition's history.
#[derive(Clone)]
pub(crate) enum Slot {
    Frame(Arc<Frame>),
    /// A record that was consumed but is not deliverable (DLQ).
    Tombstone,
}

/// What one entry costs besides its frame (the slot in the deque).
const ENTRY_BYTES: usize = std::mem::size_of::<Entry>();

impl Slot {
    /// Bytes the slot holds, fixed when it is appended; a frame's JSON text,
    /// built later, is counted apart (`Ring::json`).
    fn bytes(&self) -> usize {
        ENTRY_BYTES
            + match self {
                Slot::Frame(f) => f.base_bytes(),
                Slot::Tombstone => 0,
            }
    }

    fn entered(&self, json: &Arc<dyn JsonMeter>) {
        if let Slot::Frame(f) = self {
            f.entered_log(json);
        }
    }

    fn left(&self) {
        if let Slot::Frame(f) = self {
            f.left_log();
        }
    }
}

/// One slot as a reader sees it: its offset and when it was appended.
#[derive(Clone)]
pub(crate) struct Entry {
    pub(crate) offset: i64,
    /// Unix ms of the append (how far behind a reader is, in time).
    pub(crate) at_ms: i64,
    pub(crate) slot: Slot,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct RingLimits {
    pub(crate) max_per_partition: usize,
    pub(crate) max_bytes_per_partition: usize,
}

/// The JSON bytes of one partition's frames. Whoever builds a frame's JSON
/// text adds to it and, when that takes the partition over its bytes,
/// evicts its oldest slots then and there, so the bound holds without
/// waiting for the next append.
#[derive(Default)]
struct PartitionMeter {
    /// Signed: an eviction may take bytes back an instant before they were added.
    json: AtomicIsize,
    ring: OnceLock<(Weak<RwLock<Ring>>, RingLimits)>,
}

impl PartitionMeter {
    fn bytes(&self) -> usize {
        self.json.load(Ordering::Relaxed).max(0) as usize
    }
}

impl JsonMeter for PartitionMeter {
    fn add(&self, n: usize, trim: bool) {
        self.json.fetch_add(n as isize, Ordering::Relaxed);
        if !trim {
            return;
        }
        if let Some((ring, limits)) = self.ring.get() {
            if let Some(ring) = ring.upgrade() {
                let mut r = ring.write();
                if r.held() > limits.max_bytes_per_partition {
                    r.evict_over(limits);
                }
            }
        }
    }

    fn sub(&self, n: usize) {
        self.json.fetch_sub(n as isize, Ordering::Relaxed);
    }
}

#[derive(Default)]
struct Ring {
    entries: VecDeque<Entry>,
    /// What the slots hold, as counted at append.
    bytes: usize,
    /// JSON text built for frames still held (added by whoever builds it).
    json: Arc<PartitionMeter>,
    /// Highest offset ever appended (kept after eviction).
    head: Option<i64>,
    /// First offset appended in this process.
    origin: Option<i64>,
    /// Changes when the partition's offsets restarted (the topic was
    /// recreated or the broker lost data): slots of another epoch are
    /// another history.
    epoch: u64,
}

impl Ring {
    /// Index of the first entry at or after `offset`.
    fn index_of(&self, offset: i64) -> usize {
        self.entries.partition_point(|e| e.offset < offset)
    }

    /// Every byte held: the slots and the JSON text built for them.
    fn held(&self) -> usize {
        self.bytes + self.json.bytes()
    }

    /// Evicts the oldest slots beyond the limits (the newest always stays).
    fn evict_over(&mut self, limits: &RingLimits) {
        while self.entries.len() > limits.max_per_partition
            || (self.held() > limits.max_bytes_per_partition && self.entries.len() > 1)
        {
            match self.entries.pop_front() {
                Some(e) => {
                    e.slot.left();
                    self.bytes -= e.slot.bytes();
                }
                None => break,
            }
        }
    }

    fn full(&self, limits: &RingLimits) -> bool {
        self.entries.len() >= limits.max_per_partition
            || self.held() >= limits.max_bytes_per_partition
    }
}

/// What a reader finds at its cursor.
pub(crate) enum Page {
    /// The log has nothing for this partition.
    Missing,
    /// The cursor is older than the log's first slot (`first`): the reader
    /// catches up from the lower tiers.
    Evicted { first: i64 },
    /// Up to the page limit from the cursor on (empty: the reader is at the head).
    Entries(Vec<Entry>),
}

/// The log of every partition this process consumes.
pub(crate) struct Log {
    partitions: RwLock<BTreeMap<i32, Arc<RwLock<Ring>>>>,
    limits: RingLimits,
    /// Changes on every append: a reader compares it to know whether to look again.
    version: AtomicU64,
    /// Changes when a partition appears.
    generation: AtomicU64,
    appended: Notify,
    /// Some reader waits for `appended`.
    waiting: AtomicBool,
    /// Some partition is at its limit (appending evicts).
    any_full: AtomicBool,
}

impl Log {
    pub(crate) fn new(limits: RingLimits) -> Self {
        Self {
            partitions: RwLock::new(BTreeMap::new()),
            limits,
            version: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            appended: Notify::new(),
            waiting: AtomicBool::new(false),
            any_full: AtomicBool::new(false),
        }
    }

    fn ring(&self, partition: i32) -> Option<Arc<RwLock<Ring>>> {
        self.partitions.read().get(&partition).cloned()
    }

    /// Appends (or, for an offset read again after a rebalance or released
    /// after a halt, replaces) one slot, evicting the oldest beyond the limits,
    /// then wakes the readers that wait.
    #[cfg(test)]
    pub(crate) fn append(&self, partition: i32, offset: i64, slot: Slot, at_ms: i64) {
        self.append_quietly(partition, offset, slot, at_ms);
        self.nudge();
    }

    /// Like [`Log::append`] without waking readers: ingest appends a batch,
    /// then wakes them once ([`Log::nudge`]).
    pub(crate) fn append_quietly(&self, partition: i32, offset: i64, slot: Slot, at_ms: i64) {
        let ring = match self.ring(partition) {
            Some(r) => r,
            None => {
                let mut parts = self.partitions.write();
                let r = parts
                    .entry(partition)
                    .or_insert_with(|| {
                        let ring = Arc::new(RwLock::new(Ring::default()));
                        let meter = ring.read().json.clone();
                        let _ = meter.ring.set((Arc::downgrade(&ring), self.limits));
                        ring
                    })
                    .clone();
                self.generation.fetch_add(1, Ordering::SeqCst);
                r
            }
        };
        let full = {
            let mut ring = ring.write();
            let size = slot.bytes();
            if ring.head.is_none_or(|h| offset > h) {
                let json: Arc<dyn JsonMeter> = ring.json.clone();
                slot.entered(&json);
                ring.entries.push_back(Entry {
                    offset,
                    at_ms,
                    slot,
                });
                ring.bytes += size;
                ring.head = Some(offset);
                ring.origin.get_or_insert(offset);
            } else {
                let i = ring.index_of(offset);
                match ring.entries.get_mut(i) {
                    Some(e) if e.offset == offset => {
                        let old = std::mem::replace(&mut e.slot, slot);
                        old.left();
                        let old = old.bytes();
                        let json: Arc<dyn JsonMeter> = ring.json.clone();
                        if let Some(e) = ring.entries.get(i) {
                            e.slot.entered(&json);
                        }
                        ring.bytes = ring.bytes - old + size;
                    }
                    // Older than the log, or an offset it never had: the lower tiers answer for it.
                    _ => return,
                }
            }
            let limits = self.limits;
            ring.evict_over(&limits);
            ring.full(&limits)
        };
        if full {
            self.any_full.store(true, Ordering::Relaxed);
        }
        self.version.fetch_add(1, Ordering::SeqCst);
    }

    /// Wakes the readers that wait, so they look again (after an append, or
    /// for a notice outside the log).
    pub(crate) fn nudge(&self) {
        self.version.fetch_add(1, Ordering::SeqCst);
        if self.waiting.swap(false, Ordering::SeqCst) {
            self.appended.notify_waiters();
        }
    }

    pub(crate) fn version(&self) -> u64 {
        self.version.load(Ordering::SeqCst)
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// A future that completes at the next append. Enable it, then check
    /// [`Log::version`], then await it: no append is missed in between.
    pub(crate) fn appended(&self) -> Notified<'_> {
        self.appended.notified()
    }

    /// Marks that a reader is about to wait (after enabling [`Log::appended`]).
    pub(crate) fn will_wait(&self) {
        self.waiting.store(true, Ordering::SeqCst);
    }

    /// Forgets a partition's history: its offsets restarted, and the new
    /// history so far is `first..=last` (read from Kafka by whoever needs
    /// it: the log holds none of it). Returns the new epoch.
    pub(crate) fn reset(&self, partition: i32, first: i64, last: i64) -> u64 {
        let Some(ring) = self.ring(partition) else {
            return 0;
        };
        let mut r = ring.write();
        for e in r.entries.drain(..) {
            e.slot.left();
        }
        r.bytes = 0;
        r.head = Some(last);
        r.origin = Some(first);
        r.epoch += 1;
        let epoch = r.epoch;
        drop(r);
        self.version.fetch_add(1, Ordering::SeqCst);
        epoch
    }

    /// The partition's epoch (see [`Log::reset`]).
    pub(crate) fn epoch(&self, partition: i32) -> u64 {
        self.ring(partition).map_or(0, |r| r.read().epoch)
    }

    /// Up to `limit` entries from `from` on.
    pub(crate) fn page(&self, partition: i32, from: i64, limit: usize) -> Page {
        self.page_in(partition, None, from, limit)
    }

    /// [`Log::page`] for a reader that knows the partition's `epoch`: a page
    /// of another epoch is `Missing` (the reader takes the reset notice first).
    pub(crate) fn page_in(
        &self,
        partition: i32,
        epoch: Option<u64>,
        from: i64,
        limit: usize,
    ) -> Page {
        let Some(ring) = self.ring(partition) else {
            return Page::Missing;
        };
        let ring = ring.read();
        if epoch.is_some_and(|e| e != ring.epoch) {
            return Page::Missing;
        }
        let Some(first) = ring.entries.front() else {
            // Emptied by a reset: what it had up to the head is below it.
            return match ring.head {
                Some(h) if from <= h => Page::Evicted { first: h + 1 },
                _ => Page::Missing,
            };
        };
        if first.offset > from {
            return Page::Evicted {
                first: first.offset,
            };
        }
        let i = ring.index_of(from);
        Page::Entries(ring.entries.range(i..).take(limit).cloned().collect())
    }

    /// Append time of the first slot at or after `from` (the oldest the
    /// reader has not read; the log's first slot if `from` was evicted), if
    /// the log holds one.
    pub(crate) fn unread_since_ms(&self, partition: i32, from: i64) -> Option<i64> {
        let ring = self.ring(partition)?;
        let ring = ring.read();
        let i = ring.index_of(from);
        ring.entries.get(i).map(|e| e.at_ms)
    }

    pub(crate) fn partitions(&self) -> Vec<i32> {
        self.partitions.read().keys().copied().collect()
    }

    /// Highest offset seen per partition.
    pub(crate) fn heads(&self) -> BTreeMap<i32, i64> {
        self.partitions
            .read()
            .iter()
            .filter_map(|(p, r)| Some((*p, r.read().head?)))
            .collect()
    }

    /// Highest offset seen for `partition`.
    pub(crate) fn head(&self, partition: i32) -> Option<i64> {
        self.ring(partition)?.read().head
    }

    /// The first offset this process appended for `partition` (where a
    /// session that started before the partition appeared begins reading).
    pub(crate) fn origin(&self, partition: i32) -> Option<i64> {
        self.ring(partition)?.read().origin
    }

    /// Lowest offset still held for `partition`.
    pub(crate) fn first(&self, partition: i32) -> Option<i64> {
        self.ring(partition)?
            .read()
            .entries
            .front()
            .map(|e| e.offset)
    }

    /// Calls `f(partition, first offset, origin)` for each partition at its
    /// limit; the first offset is what the next append evicts. One atomic
    /// load while none is; no allocation either way.
    pub(crate) fn for_each_full(&self, mut f: impl FnMut(i32, i64, i64)) {
        if !self.any_full.load(Ordering::Relaxed) {
            return;
        }
        let mut any = false;
        for (p, r) in self.partitions.read().iter() {
            let r = r.read();
            if let (true, Some(e)) = (r.full(&self.limits), r.entries.front()) {
                any = true;
                f(*p, e.offset, r.origin.unwrap_or(e.offset));
            }
        }
        if !any {
            self.any_full.store(false, Ordering::Relaxed);
        }
    }

    /// `(first, origin)` of `partition` when it is at its limit (its next
    /// append evicts), as [`Log::for_each_full`] tells of each.
    pub(crate) fn full_at(&self, partition: i32) -> Option<(i64, i64)> {
        if !self.any_full.load(Ordering::Relaxed) {
            return None;
        }
        let parts = self.partitions.read();
        let r = parts.get(&partition)?.read();
        match (r.full(&self.limits), r.entries.front()) {
            (true, Some(e)) => Some((e.offset, r.origin.unwrap_or(e.offset))),
            _ => None,
        }
    }

    #[cfg(test)]
    /// (slots, bytes) of one partition.
    pub(crate) fn partition_stats(&self, partition: i32) -> (usize, usize) {
        self.ring(partition).map_or((0, 0), |r| {
            let r = r.read();
            (r.entries.len(), r.held())
        })
    }

    /// (slots, bytes) held: each frame's envelope, summary and JSON text once built.
    pub(crate) fn stats(&self) -> (usize, usize) {
        self.partitions.read().values().fold((0, 0), |(n, b), r| {
            let r = r.read();
            (n + r.entries.len(), b + r.held())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(o: i64) -> Slot {
        Slot::Frame(crate::record::testing::event_frame(0, o))
    }

    fn offsets(p: Page) -> Vec<i64> {
        match p {
            Page::Entries(v) => v.iter().map(|e| e.offset).collect(),
            _ => panic!("entries expected"),
        }
    }

    #[test]
    fn log_is_bounded_by_count_and_keeps_its_head() {
        let log = Log::new(RingLimits {
            max_per_partition: 3,
            max_bytes_per_partition: usize::MAX,
        });
        assert!(matches!(log.page(0, 0, 10), Page::Missing));
        for o in 0..5 {
            log.append(0, o, frame(o), 1000 + o);
        }
        assert_eq!(log.first(0), Some(2));
        assert_eq!(log.heads()[&0], 4);
        assert!(
            matches!(log.page(0, 1, 10), Page::Evicted { first: 2 }),
            "offset 1 was evicted"
        );
        assert_eq!(offsets(log.page(0, 2, 2)), vec![2, 3]);
        assert_eq!(offsets(log.page(0, 5, 2)), Vec::<i64>::new(), "at the head");
        let mut full = vec![];
        log.for_each_full(|p, first, origin| full.push((p, first, origin)));
        assert_eq!(full, vec![(0, 2, 0)]);
        assert_eq!(log.unread_since_ms(0, 3), Some(1003));
        assert_eq!(
            log.unread_since_ms(0, 1),
            Some(1002),
            "evicted: the first slot's"
        );
        assert_eq!(log.unread_since_ms(0, 5), None, "at the head");
    }

    #[test]
    fn a_read_again_offset_replaces_its_slot_and_an_older_one_is_ignored() {
        let log = Log::new(RingLimits {
            max_per_partition: 10,
            max_bytes_per_partition: usize::MAX,
        });
        log.append(0, 10, Slot::Tombstone, 1);
        log.append(0, 12, frame(12), 1);
        log.append(0, 10, frame(10), 2);
        log.append(0, 5, frame(5), 2);
        log.append(0, 11, frame(11), 2);
        match log.page(0, 0, 10) {
            Page::Evicted { first: 10, .. } => {}
            _ => panic!("first is 10"),
        }
        match log.page(0, 10, 10) {
            Page::Entries(v) => {
                assert_eq!(v.iter().map(|e| e.offset).collect::<Vec<_>>(), vec![10, 12]);
                assert!(matches!(v[0].slot, Slot::Frame(_)), "tombstone replaced");
            }
            _ => panic!(),
        }
        assert_eq!(log.head(0), Some(12));
    }

    #[test]
    fn log_is_bounded_by_bytes() {
        let log = Log::new(RingLimits {
            max_per_partition: 1000,
            max_bytes_per_partition: 1000,
        });
        for o in 0..100 {
            log.append(0, o, frame(o), 0);
        }
        let (n, bytes) = log.stats();
        assert!(
            bytes <= 1000 && (1..100).contains(&n),
            "{n} slots, {bytes} bytes"
        );
        log.append(0, 100, Slot::Tombstone, 0);
        assert_eq!(log.heads()[&0], 100);
    }

    /// A ~1 KB zstd record whose body is a 1 MiB `bytes` field.
    fn inflating_frame(o: i64) -> Arc<crate::record::frame::Frame> {
        use crate::proto::dash_stream_message::Message;
        use crate::proto::{DashStreamMessage, Header, ToolExecution};
        let m = DashStreamMessage {
            message: Some(Message::ToolExecution(ToolExecution {
                header: Some(Header {
                    thread_id: "t".into(),
                    ..Default::default()
                }),
                arguments: vec![7u8; 1 << 20],
                ..Default::default()
            })),
        };
        let v = crate::record::decode::encode_record(&m, Some(3));
        assert!(v.len() < 2048, "small on the wire: {}", v.len());
        crate::record::testing::frame_of(0, o, &v)
    }

    #[test]
    fn json_text_counts_against_the_log_once_built_and_leaves_with_its_frame() {
        const LIMIT: usize = 4 << 20;
        let log = Log::new(RingLimits {
            max_per_partition: 1000,
            max_bytes_per_partition: LIMIT,
        });
        let first = inflating_frame(0);
        log.append(0, 0, Slot::Frame(first.clone()), 0);
        let (_, before) = log.stats();
        assert!(
            before < 4096,
            "the record's bytes, not its 1 MiB body: {before}"
        );
        // Base64 of 1 MiB: ~1.4 MB of JSON text, counted as soon as it exists.
        let text = first.json().len();
        assert!(text > 1_300_000, "{text}");
        assert_eq!(log.stats().1, before + text);
        assert_eq!(first.json().len(), text);
        assert_eq!(log.stats().1, before + text, "counted once");
        for o in 1..20 {
            let f = inflating_frame(2 * o);
            log.append(0, 2 * o, Slot::Frame(f.clone()), 0);
            f.json();
            log.append(0, 2 * o + 1, Slot::Tombstone, 0);
            let (n, bytes) = log.stats();
            assert!(bytes <= LIMIT, "after append {o}: {n} slots, {bytes} bytes");
        }
        assert!(log.first(0) > Some(0), "the first frame was evicted");
        // Whatever was evicted took its JSON bytes with it.
        let (_, bytes) = log.stats();
        log.append(0, 1000, Slot::Tombstone, 0);
        let tombstones = 10_000;
        for o in 1001..1001 + tombstones {
            log.append(0, o, Slot::Tombstone, 0);
        }
        let (n, after) = log.stats();
        assert_eq!(
            after,
            n * ENTRY_BYTES,
            "only tombstones left: {bytes} → {after}"
        );
        // A frame's JSON built after it left the log is not counted.
        let late = inflating_frame(5000);
        log.append(0, 5000, Slot::Frame(late.clone()), 0);
        for o in 5001..5001 + 1000 {
            log.append(0, o, Slot::Tombstone, 0);
        }
        late.json();
        assert_eq!(log.stats().1, log.stats().0 * ENTRY_BYTES);
    }

    #[tokio::test]
    async fn a_waiting_reader_is_woken_by_the_next_append() {
        let log = Arc::new(Log::new(RingLimits {
            max_per_partition: 10,
            max_bytes_per_partition: usize::MAX,
        }));
        let seen = log.version();
        let l = log.clone();
        let reader = tokio::spawn(async move {
            let appended = l.appended();
            tokio::pin!(appended);
            appended.as_mut().enable();
            l.will_wait();
            if l.version() == seen {
                appended.await;
            }
            l.head(0)
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        log.append(0, 7, Slot::Tombstone, 0);
        let head = tokio::time::timeout(std::time::Duration::from_secs(5), reader)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(head, Some(7));
    }
}
