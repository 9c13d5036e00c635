//! Property: whatever records producers send (valid, corrupt, zstd, batches,
//! long ids, huge fields), the pipeline never panics, the memory log and the
//! halt buffers stay within their configured bytes, and what they count is
//! never less than what they really hold.

use std::sync::Arc;
use std::time::Instant;

use proptest::prelude::*;

use crate::hub::log::{Page, RingLimits, Slot};
use crate::hub::{DeliveryLimits, Hub};
use crate::ingest::halt::HaltLimits;
use crate::ingest::pipeline::{Pipeline, PipelineConfig, RecordView};
use crate::ingest::sequence::{GapPolicy, ValidatorConfig};
use crate::ingest::status::IngestStatus;
use crate::proto::dash_stream_message::Message;
use crate::proto::{DashStreamMessage, Event, EventBatch, Header, ToolExecution};
use crate::record::decode::{encode_record, DecodeLimits};

const LOG_BYTES: usize = 256 * 1024;
const HELD_BYTES: usize = 64 * 1024;

#[derive(Clone, Debug)]
enum Rec {
    Event {
        thread_len: usize,
        seq: u64,
        zstd: bool,
    },
    Batch {
        events: usize,
        threads: usize,
        zstd: bool,
    },
    /// A small zstd record with a large `bytes` field (JSON text ~4/3 of it).
    Inflating {
        kib: usize,
    },
    Corrupt(Vec<u8>),
}

fn rec() -> impl Strategy<Value = Rec> {
    prop_oneof![
        (0usize..400, 1u64..40, any::<bool>()).prop_map(|(thread_len, seq, zstd)| Rec::Event {
            thread_len,
            seq,
            zstd
        }),
        (0usize..120, 1usize..20, any::<bool>()).prop_map(|(events, threads, zstd)| Rec::Batch {
            events,
            threads,
            zstd
        }),
        (1usize..300).prop_map(|kib| Rec::Inflating { kib }),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Rec::Corrupt),
    ]
}

fn header(thread: String, seq: u64) -> Option<Header> {
    Some(Header {
        thread_id: thread,
        tenant_id: "t".into(),
        sequence: seq,
        ..Default::default()
    })
}

fn bytes(r: &Rec) -> Vec<u8> {
    let (m, zstd) = match r {
        Rec::Event {
            thread_len,
            seq,
            zstd,
        } => (
            Message::Event(Event {
                header: header("x".repeat(*thread_len), *seq),
                ..Default::default()
            }),
            *zstd,
        ),
        Rec::Batch {
            events,
            threads,
            zstd,
        } => (
            Message::EventBatch(EventBatch {
                header: None,
                events: (0..*events)
                    .map(|i| Event {
                        header: header(format!("b{}", i % threads), i as u64 + 1),
                        ..Default::default()
                    })
                    .collect(),
            }),
            *zstd,
        ),
        Rec::Inflating { kib } => (
            Message::ToolExecution(ToolExecution {
                header: header("big".into(), 1),
                result: vec![1u8; kib * 1024],
                ..Default::default()
            }),
            true,
        ),
        Rec::Corrupt(b) => return b.clone(),
    };
    encode_record(&DashStreamMessage { message: Some(m) }, zstd.then_some(1))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn memory_stays_within_its_bounds_for_any_records(
        recs in proptest::collection::vec((rec(), any::<bool>(), 0i32..2), 1..60),
        halt in any::<bool>(),
    ) {
        let hub = Hub::new(
            DeliveryLimits {
                priorities: Default::default(),
                reader_stall: std::time::Duration::from_secs(1),
                reader_hold: std::time::Duration::from_secs(1),
            },
            RingLimits { max_per_partition: 1000, max_bytes_per_partition: LOG_BYTES },
        );
        let status = Arc::new(IngestStatus::default());
        let mut p = Pipeline::new(
            PipelineConfig {
                limits: DecodeLimits { max_batch_events: 100, ..DecodeLimits::default() },
                gap_policy: if halt { GapPolicy::Halt } else { GapPolicy::Warn },
                sequence: ValidatorConfig::default(),
                halt: HaltLimits { max_held: 20, max_threads: 3, max_held_bytes: HELD_BYTES },
            },
            hub.clone(),
            status.clone(),
        );
        let now = Instant::now();
        let mut next = [0i64; 2];
        for (r, json, partition) in &recs {
            let v = bytes(r);
            let offset = next[*partition as usize];
            next[*partition as usize] += 1;
            p.handle(RecordView { partition: *partition, offset, timestamp_ms: None, key: None, value: Some(&v), traceparent: None }, now, 0);
            // The bound holds at every append (JSON built after it counts from then on, up to the next append).
            for part in 0..2 {
                let (n, counted) = per_partition(&hub, part);
                prop_assert!(counted <= LOG_BYTES || n <= 1, "partition {part}: {n} slots, {counted} bytes");
            }
            for part in 0..2 {
                // A JSON client asks for some frames: building their text may evict.
                if *json {
                    if let Page::Entries(entries) = hub.log.page(part, 0, 10_000) {
                        for e in &entries {
                            if let Slot::Frame(f) = &e.slot {
                                f.json();
                            }
                        }
                    }
                }
                let Page::Entries(entries) = hub.log.page(part, 0, 10_000) else { continue };
                let real: usize = entries
                    .iter()
                    .filter_map(|e| match &e.slot {
                        Slot::Frame(f) => Some(f.binary().len() + f.json_len().unwrap_or(0)),
                        Slot::Tombstone => None,
                    })
                    .sum();
                let (n, counted) = per_partition(&hub, part);
                prop_assert!(counted >= real, "partition {part}: counted {counted} < held {real}");
                prop_assert!(counted <= LOG_BYTES || n <= 1, "partition {part} after JSON: {n} slots, {counted} bytes");
            }
        }
        let held = status.held_messages();
        prop_assert!(held <= 3 * 20);
        prop_assert!(status.halted_count() <= 3);
    }
}

/// (slots, bytes) of one partition, as the log counts them.
fn per_partition(hub: &Hub, p: i32) -> (usize, usize) {
    hub.log.partition_stats(p)
}
