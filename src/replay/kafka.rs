//! Kafka tier of the replay buffer: records older than memory and Redis hold
//! are read back from the topic by offset, while retention still keeps them.
//! One reader per replaying client (a consumer with no group membership and
//! no commits), used from a blocking task; concurrent readers are bounded by
//! the caller.

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

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
        // One reader per replaying client: keep its prefetch small.
        .set("queued.max.messages.kbytes", "8192");
        Ok(Self {
            consumer: cfg.create()?,
            topic: topic.to_string(),
            position: None,
            pending: None,
        })
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

    /// Reads offsets `[from, to]` of `partition`, at most `limit` records.
    /// Blocking: call from a blocking task.
    pub(crate) fn read(
        &mut self,
        partition: i32,
        from: i64,
        to: i64,
        limit: usize,
        timeout: Duration,
    ) -> Result<Fetched, KafkaError> {
        let mut retention_gap = None;
        let mut start = from;
        let continues = matches!(self.position, Some((p, pos)) if p == partition && pos <= from && from - pos <= MAX_SKIP);
        if !continues {
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
        let mut next = start;
        while next <= to && records.len() < limit {
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
            self.position = Some((partition, rec.offset + 1));
            if rec.offset < from {
                continue; // polled forward past what Redis already served
            }
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
    limit: usize,
    low: i64,
    end: i64,
    deliverable: impl Fn(i64) -> bool,
) -> Fetched {
    let retention_gap = (from < low).then_some((from, to.min(low - 1)));
    let mut records = Vec::new();
    let mut o = from.max(low);
    while o <= to && o < end && records.len() < limit {
        records.push(KafkaRecord {
            offset: o,
            timestamp_ms: None,
            value: if deliverable(o) {
                crate::record::testing::event_value(p, o)
            } else {
                b"\xff not a record".to_vec()
            },
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
