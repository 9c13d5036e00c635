//! Kafka tier of the replay buffer: records older than memory and Redis hold
//! are read back from the topic by offset, while retention still keeps them.
//! A reader is a consumer with no group membership and no commits, used from
//! a blocking task; readers are pooled, one per permit (`replay::tiers`).

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::replay::config::PageLimit;

/// One record read back.
pub(crate) struct KafkaRecord {
    pub(crate) offset: i64,
    pub(crate) timestamp_ms: Option<i64>,
    pub(crate) value: Vec<u8>,
}

/// What one read returned.
pub(crate) struct Fetched {
    pub(crate) records: Vec<KafkaRecord>,
    /// Offsets below the topic's earliest retained offset: `[from, to]`.
    pub(crate) retention_gap: Option<(i64, i64)>,
    /// The next offset to read after this page.
    pub(crate) next: i64,
}

/// Farthest a reader polls forward (discarding) rather than seeking.
const MAX_SKIP: i64 = 5_000;

pub(crate) struct KafkaReader {
    consumer: BaseConsumer,
    topic: String,
    /// Where the assigned consumer continues (partition, lowest offset it can
    /// still return), and a record already polled past the previous read's end. Holes in Redis
    /// are usually close together, so the next read polls forward from here
    /// instead of seeking (a broker round trip and a fresh fetch).
    position: Option<(i32, i64)>,
    pending: Option<KafkaRecord>,
}

impl KafkaReader {
    pub(crate) fn new(props: &[(String, String)], topic: &str) -> Result<Self, KafkaError> {
        let mut cfg = ClientConfig::new();
        for (k, v) in props {
            cfg.set(k, v);
        }
        cfg.set(
            "group.id",
            format!("kafka-ws-bridge-replay-{}", std::process::id()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        // One reader per permit: keep its prefetch small.
        .set("queued.max.messages.kbytes", "8192");
        Ok(Self {
            consumer: cfg.create()?,
            topic: topic.to_string(),
            position: None,
            pending: None,
        })
    }

    /// True if a read of `partition` from `from` continues where this reader
    /// stands (polls forward instead of seeking).
    fn continues_at(&self, partition: i32, from: i64) -> bool {
        matches!(self.position, Some((p, pos)) if p == partition && pos <= from && from - pos <= MAX_SKIP)
    }

    /// Assigns `partition` at `from` (or at the earliest retained offset).
    fn seek(
        &mut self,
        partition: i32,
        from: i64,
        to: i64,
        timeout: Duration,
    ) -> Result<(i64, Option<(i64, i64)>), KafkaError> {
        self.position = None;
        self.pending = None;
        let (low, _) = self
            .consumer
            .fetch_watermarks(&self.topic, partition, timeout)?;
        let mut start = from;
        let mut retention_gap = None;
        if from < low {
            retention_gap = Some((from, (low - 1).min(to)));
            start = low;
        }
        if start <= to {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&self.topic, partition, Offset::Offset(start))?;
            self.consumer.assign(&tpl)?;
            self.position = Some((partition, start));
        }
        Ok((start, retention_gap))
    }

    /// Reads offsets `[from, to]` of `partition`, a page within `limit`
    /// (records and their value bytes; at least one record).
    /// Blocking: call from a blocking task.
    pub(crate) fn read(
        &mut self,
        partition: i32,
        from: i64,
        to: i64,
        limit: PageLimit,
        timeout: Duration,
    ) -> Result<Fetched, KafkaError> {
        let mut retention_gap = None;
        let mut start = from;
        if !self.continues_at(partition, from) {
            (start, retention_gap) = self.seek(partition, from, to, timeout)?;
            if start > to {
                return Ok(Fetched {
                    records: vec![],
                    retention_gap,
                    next: to + 1,
                });
            }
        }
        let deadline = Instant::now() + timeout;
        let mut records = Vec::new();
        let mut bytes = 0usize;
        let mut next = start;
        while next <= to && records.len() < limit.records {
            let rec = match self.pending.take() {
                Some(r) => r,
                None => {
                    let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                        self.position = None;
                        return Err(KafkaError::MessageConsumption(
                            rdkafka::types::RDKafkaErrorCode::OperationTimedOut,
                        ));
                    };
                    match self.consumer.poll(left.min(Duration::from_millis(200))) {
                        None => continue,
                        Some(Err(KafkaError::PartitionEOF(_))) => {
                            // Nothing more on the partition: the rest of the range does not exist (yet).
                            // The end-of-partition event comes once per assignment: seek next time.
                            self.position = None;
                            next = to + 1;
                            break;
                        }
                        Some(Err(e)) => {
                            self.position = None;
                            return Err(e);
                        }
                        Some(Ok(m)) => KafkaRecord {
                            offset: m.offset(),
                            timestamp_ms: m.timestamp().to_millis(),
                            value: m.payload().unwrap_or_default().to_vec(),
                        },
                    }
                }
            };
            if rec.offset > to {
                next = to + 1;
                self.position = Some((partition, rec.offset));
                self.pending = Some(rec);
                break;
            }
            if rec.offset < from {
                self.position = Some((partition, rec.offset + 1));
                continue; // polled forward past what Redis already served
            }
            if !records.is_empty() && bytes + rec.value.len() > limit.bytes {
                // The page is full by bytes: this record starts the next one.
                self.position = Some((partition, rec.offset));
                self.pending = Some(rec);
                break;
            }
            self.position = Some((partition, rec.offset + 1));
            bytes += rec.value.len();
            next = rec.offset + 1;
            records.push(rec);
        }
        Ok(Fetched {
            records,
            retention_gap,
            next,
        })
    }
}

#[cfg(test)]
/// What a Kafka read of `[from, to]` returns from a topic whose partition
/// ends at `end` and retains offsets from `low`: an undeliverable offset is a
/// value that does not decode (it went to the DLQ when first consumed).
pub(crate) fn fake_kafka_read(
    p: i32,
    from: i64,
    to: i64,
    limit: PageLimit,
    low: i64,
    end: i64,
    deliverable: impl Fn(i64) -> bool,
) -> Fetched {
    let retention_gap = (from < low).then_some((from, to.min(low - 1)));
    let mut records = Vec::new();
    let mut o = from.max(low);
    let mut bytes = 0;
    while o <= to && o < end && records.len() < limit.records {
        let value = if deliverable(o) {
            crate::record::testing::event_value(p, o)
        } else {
            b"\xff not a record".to_vec()
        };
        if !records.is_empty() && bytes + value.len() > limit.bytes {
            break;
        }
        bytes += value.len();
        records.push(KafkaRecord {
            offset: o,
            timestamp_ms: None,
            value,
        });
        o += 1;
    }
    // Past the partition's end the rest of the range does not exist (yet).
    let next = if o >= end || o > to { to + 1 } else { o };
    Fetched {
        records,
        retention_gap,
        next,
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::producer::{FutureProducer, FutureRecord};

    use super::*;

    /// Against the suite's broker (`scripts/test.sh`): a page of large
    /// records is cut by bytes, and the next read goes on from there
    /// without a hole.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_page_is_bounded_by_bytes_as_well_as_records() {
        let brokers = std::env::var("KWB_TEST_BROKERS")
            .expect("KWB_TEST_BROKERS is not set: run with scripts/test.sh");
        let topic = kwb_testkit::net::unique("replaypagebytes");
        kwb_testkit::kafka::create_topics(&brokers, &[(&topic, 1)])
            .await
            .unwrap();
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("message.max.bytes", "2000000")
            .create()
            .unwrap();
        const BIG: usize = 300_000;
        for _ in 0..8 {
            producer
                .send(
                    FutureRecord::<(), _>::to(&topic).payload(&vec![7u8; BIG]),
                    Duration::from_secs(10),
                )
                .await
                .unwrap();
        }
        let props = vec![("bootstrap.servers".to_string(), brokers)];
        let pages = tokio::task::spawn_blocking(move || {
            let mut r = KafkaReader::new(&props, &topic).unwrap();
            let limit = PageLimit {
                records: 500,
                bytes: 1 << 20,
            };
            let mut pages = vec![];
            let mut n = 0;
            while n <= 7 {
                let f = r.read(0, n, 7, limit, Duration::from_secs(10)).unwrap();
                pages.push(f.records.iter().map(|r| r.offset).collect::<Vec<_>>());
                n = f.next;
            }
            pages
        })
        .await
        .unwrap();
        assert_eq!(pages, [vec![0, 1, 2], vec![3, 4, 5], vec![6, 7]]);
    }
}
