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
pub struct KafkaRecord {
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub value: Vec<u8>,
}

/// What one read returned.
pub struct Fetched {
    pub records: Vec<KafkaRecord>,
    /// Offsets below the topic's earliest retained offset: `[from, to]`.
    pub retention_gap: Option<(i64, i64)>,
    /// The next offset to read after this page.
    pub next: i64,
}

pub struct KafkaReader {
    consumer: BaseConsumer,
    topic: String,
}

impl KafkaReader {
    pub fn new(props: &[(String, String)], topic: &str) -> Result<Self, KafkaError> {
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
        .set("auto.offset.reset", "earliest");
        Ok(Self {
            consumer: cfg.create()?,
            topic: topic.to_string(),
        })
    }

    /// Reads offsets `[from, to]` of `partition`, at most `limit` records.
    /// Blocking: call from a blocking task.
    pub fn read(
        &self,
        partition: i32,
        from: i64,
        to: i64,
        limit: usize,
        timeout: Duration,
    ) -> Result<Fetched, KafkaError> {
        let (low, _) = self
            .consumer
            .fetch_watermarks(&self.topic, partition, timeout)?;
        let mut start = from;
        let mut retention_gap = None;
        if from < low {
            retention_gap = Some((from, (low - 1).min(to)));
            start = low;
        }
        if start > to {
            return Ok(Fetched {
                records: vec![],
                retention_gap,
                next: to + 1,
            });
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, partition, Offset::Offset(start))?;
        self.consumer.assign(&tpl)?;
        drop(tpl);
        let deadline = Instant::now() + timeout;
        let mut records = Vec::new();
        let mut next = start;
        while next <= to && records.len() < limit {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return Err(KafkaError::MessageConsumption(
                    rdkafka::types::RDKafkaErrorCode::OperationTimedOut,
                ));
            };
            match self.consumer.poll(left.min(Duration::from_millis(200))) {
                None => {}
                Some(Err(KafkaError::PartitionEOF(_))) => {
                    // Nothing more on the partition: the rest of the range does not exist (yet).
                    next = to + 1;
                    break;
                }
                Some(Err(e)) => return Err(e),
                Some(Ok(m)) => {
                    if m.offset() > to {
                        next = to + 1;
                        break;
                    }
                    next = m.offset() + 1;
                    records.push(KafkaRecord {
                        offset: m.offset(),
                        timestamp_ms: m.timestamp().to_millis(),
                        value: m.payload().unwrap_or_default().to_vec(),
                    });
                }
            }
        }
        Ok(Fetched {
            records,
            retention_gap,
            next,
        })
    }
}
