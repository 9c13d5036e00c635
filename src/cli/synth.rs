//! Synthetic DashStream traffic for demos, tests and load: a deterministic
//! generator of records over N threads with a configurable message mix and
//! optional injected faults (gaps, duplicates, reorders, garbage).
//!
//! Injections are counted per generated record `n` (1-based, all threads):
//! - `gap_every`: record `n` skips one sequence on its thread → one gap.
//! - `duplicate_every`: record `n` is sent twice → one duplicate.
//! - `reorder_every`: record `n` and the next of its thread swap places →
//!   one gap (the later one arrives first) and one reorder.
//! - `garbage_every`: record `n` is replaced by bytes that are not DashStream.

use std::collections::{HashMap, VecDeque};

use crate::proto::dash_stream_message::Message;
use crate::proto::{
    attribute_value, AttributeValue, DashStreamMessage, Error as PbError, Event, Header,
    MetricValue, Metrics, StateDiff, TokenChunk, ToolExecution,
};
use crate::record::decode::{encode_record, MessageKind};

#[derive(Clone, Debug)]
pub struct SynthConfig {
    pub threads: usize,
    pub tenants: usize,
    pub thread_prefix: String,
    pub mix: Vec<(MessageKind, u32)>,
    pub zstd_level: Option<i32>,
    pub gap_every: u64,
    pub duplicate_every: u64,
    pub reorder_every: u64,
    pub garbage_every: u64,
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            threads: 10,
            tenants: 3,
            thread_prefix: "thread".into(),
            mix: default_mix(),
            zstd_level: None,
            gap_every: 0,
            duplicate_every: 0,
            reorder_every: 0,
            garbage_every: 0,
        }
    }
}

pub(crate) fn default_mix() -> Vec<(MessageKind, u32)> {
    vec![
        (MessageKind::Event, 5),
        (MessageKind::TokenChunk, 3),
        (MessageKind::StateDiff, 1),
        (MessageKind::ToolExecution, 1),
        (MessageKind::Metrics, 1),
        (MessageKind::Error, 1),
    ]
}

/// Parses `event=5,token_chunk=3`.
pub(crate) fn parse_mix(s: &str) -> Result<Vec<(MessageKind, u32)>, String> {
    let mut v = vec![];
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, w) = part
            .split_once('=')
            .ok_or_else(|| format!("'{part}' is not type=weight"))?;
        let kind =
            MessageKind::parse(k.trim()).ok_or_else(|| format!("unknown message type '{k}'"))?;
        if kind == MessageKind::EventBatch
            || kind == MessageKind::Checkpoint
            || kind == MessageKind::ExecutionTrace
        {
            return Err(format!("'{k}' is not generated; use event, token_chunk, state_diff, tool_execution, metrics, error"));
        }
        let w: u32 = w
            .trim()
            .parse()
            .map_err(|_| format!("weight of '{k}' is not a whole number"))?;
        v.push((kind, w));
    }
    if v.iter().all(|(_, w)| *w == 0) {
        return Err("the mix needs at least one positive weight".into());
    }
    Ok(v)
}

/// One generated Kafka record.
#[derive(Clone, Debug, PartialEq)]
pub struct SynthRecord {
    pub key: String,
    pub value: Vec<u8>,
    pub thread_id: String,
    /// 0 for garbage.
    pub sequence: u64,
    pub garbage: bool,
}

/// What the generator injected, for checking counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Injected {
    pub records: u64,
    pub gaps: u64,
    pub duplicates: u64,
    pub reorders: u64,
    pub garbage: u64,
}

pub struct Generator {
    cfg: SynthConfig,
    n: u64,
    next_seq: Vec<u64>,
    pending: VecDeque<SynthRecord>,
    /// Threads whose next record must be emitted before the held-back one.
    deferred: HashMap<usize, SynthRecord>,
    total_weight: u32,
    pub injected: Injected,
}

impl Generator {
    pub fn new(cfg: SynthConfig) -> Self {
        let total_weight = cfg.mix.iter().map(|(_, w)| *w).sum::<u32>().max(1);
        Self {
            next_seq: vec![1; cfg.threads.max(1)],
            cfg,
            n: 0,
            pending: VecDeque::new(),
            deferred: HashMap::new(),
            total_weight,
            injected: Injected::default(),
        }
    }

    /// Reorders injected whose swapped partner has not been emitted yet.
    pub fn pending_reorders(&self) -> usize {
        self.deferred.len()
    }

    fn thread_name(&self, t: usize) -> String {
        format!("{}-{t}", self.cfg.thread_prefix)
    }

    fn kind_for(&self, n: u64) -> MessageKind {
        let mut x = (n.wrapping_mul(2654435761) % u64::from(self.total_weight)) as u32;
        for (k, w) in &self.cfg.mix {
            if x < *w {
                return *k;
            }
            x -= w;
        }
        MessageKind::Event
    }

    fn build(&self, t: usize, seq: u64, n: u64) -> SynthRecord {
        let thread_id = self.thread_name(t);
        let header = Some(Header {
            message_id: n.to_be_bytes().repeat(2),
            timestamp_us: now_us(),
            tenant_id: format!("tenant-{}", t % self.cfg.tenants.max(1)),
            thread_id: thread_id.clone(),
            sequence: seq,
            r#type: 0,
            schema_version: 1,
            ..Default::default()
        });
        let body = match self.kind_for(n) {
            MessageKind::TokenChunk => Message::TokenChunk(TokenChunk {
                header,
                request_id: format!("req-{t}"),
                text: format!("token {seq} "),
                chunk_index: seq as u32,
                model: "demo-model".into(),
                ..Default::default()
            }),
            MessageKind::StateDiff => Message::StateDiff(StateDiff {
                header,
                full_state: format!("{{\"step\":{seq}}}").into_bytes(),
                ..Default::default()
            }),
            MessageKind::ToolExecution => Message::ToolExecution(ToolExecution {
                header,
                call_id: format!("call-{n}"),
                tool_name: "search".into(),
                stage: 3,
                duration_us: 1200,
                ..Default::default()
            }),
            MessageKind::Metrics => Message::Metrics(Metrics {
                header,
                scope: "node".into(),
                scope_id: "planner".into(),
                metrics: [(
                    "tokens".to_string(),
                    MetricValue {
                        value: Some(crate::proto::metric_value::Value::Counter(seq as i64)),
                    },
                )]
                .into(),
                ..Default::default()
            }),
            MessageKind::Error => Message::Error(PbError {
                header,
                error_code: "E_DEMO".into(),
                message: "synthetic error".into(),
                severity: 3,
                ..Default::default()
            }),
            _ => Message::Event(Event {
                header,
                event_type: [1, 10, 11, 30, 31, 40, 41][(seq % 7) as usize],
                node_id: ["planner", "researcher", "writer"][t % 3].into(),
                attributes: [(
                    "step".to_string(),
                    AttributeValue {
                        value: Some(attribute_value::Value::IntValue(seq as i64)),
                    },
                )]
                .into(),
                duration_us: 1000,
                ..Default::default()
            }),
        };
        SynthRecord {
            key: thread_id.clone(),
            value: encode_record(
                &DashStreamMessage {
                    message: Some(body),
                },
                self.cfg.zstd_level,
            ),
            thread_id,
            sequence: seq,
            garbage: false,
        }
    }

    fn step(&mut self) {
        self.n += 1;
        let n = self.n;
        let every = |k: u64| k > 0 && n % k == 0;
        let t = ((n - 1) % self.cfg.threads.max(1) as u64) as usize;
        if every(self.cfg.garbage_every) {
            self.injected.garbage += 1;
            let thread_id = self.thread_name(t);
            // 0xff.. is a truncated varint: never a valid DashStream body.
            let value = vec![0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, (n & 0x7f) as u8];
            self.pending.push_back(SynthRecord {
                key: thread_id.clone(),
                value,
                thread_id,
                sequence: 0,
                garbage: true,
            });
            return;
        }
        // No gap on a thread with a held-back record: the swap already shows as one.
        let gap_now = every(self.cfg.gap_every) && !self.deferred.contains_key(&t);
        if gap_now {
            self.next_seq[t] += 1;
            self.injected.gaps += 1;
        }
        let seq = self.next_seq[t];
        self.next_seq[t] += 1;
        let rec = self.build(t, seq, n);
        if let Some(held) = self.deferred.remove(&t) {
            // Emit this one first, then the held-back earlier sequence.
            self.pending.push_back(rec);
            self.pending.push_back(held);
            return;
        }
        if every(self.cfg.reorder_every) {
            self.injected.reorders += 1;
            // The swap shows as a gap, merged with one injected just before it.
            if !gap_now {
                self.injected.gaps += 1;
            }
            self.deferred.insert(t, rec);
            return;
        }
        if every(self.cfg.duplicate_every) {
            self.injected.duplicates += 1;
            self.pending.push_back(rec.clone());
        }
        self.pending.push_back(rec);
    }
}

impl Iterator for Generator {
    type Item = SynthRecord;
    fn next(&mut self) -> Option<SynthRecord> {
        while self.pending.is_empty() {
            self.step();
        }
        let r = self.pending.pop_front();
        if r.is_some() {
            self.injected.records += 1;
        }
        r
    }
}

/// Microseconds since the Unix epoch (the stamp records carry).
pub fn now_us() -> i64 {
    crate::util::unix_us()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::decode::{decode, DecodeLimits};

    #[test]
    fn clean_stream_has_consecutive_sequences_per_thread() {
        let g = Generator::new(SynthConfig {
            threads: 3,
            ..Default::default()
        });
        let mut last: HashMap<String, u64> = HashMap::new();
        for r in g.take(300) {
            let d = decode(Some(&r.value), &DecodeLimits::default()).unwrap();
            assert_eq!(d.thread_id(), r.thread_id);
            let prev = last.insert(r.thread_id.clone(), r.sequence).unwrap_or(0);
            assert_eq!(r.sequence, prev + 1);
        }
    }

    #[test]
    fn injected_faults_are_what_the_validator_sees() {
        use crate::ingest::sequence::{SequenceValidator, ValidatorConfig, Verdict};
        let mut g = Generator::new(SynthConfig {
            threads: 4,
            gap_every: 17,
            duplicate_every: 13,
            reorder_every: 29,
            garbage_every: 31,
            ..Default::default()
        });
        let mut v = SequenceValidator::new(ValidatorConfig::default());
        let now = std::time::Instant::now();
        let (mut gaps, mut dups, mut reorders, mut garbage) = (0, 0, 0, 0);
        for r in g.by_ref().take(2000) {
            match decode(Some(&r.value), &DecodeLimits::default()) {
                Err(_) => garbage += 1,
                Ok(d) => {
                    for u in d.sequence_units() {
                        match v.observe(u.thread_id, u.sequence, now).0 {
                            Verdict::Gap { .. } => gaps += 1,
                            Verdict::Duplicate => dups += 1,
                            Verdict::Reorder => reorders += 1,
                            _ => {}
                        }
                    }
                }
            }
        }
        // A reorder whose partner was not generated yet within the first 2000 is pending.
        let pending = g.deferred.len() as u64;
        assert_eq!(garbage, g.injected.garbage);
        assert_eq!(dups, g.injected.duplicates);
        assert_eq!(reorders + pending, g.injected.reorders);
        assert_eq!(gaps + pending, g.injected.gaps);
    }
}
