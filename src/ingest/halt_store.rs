//! Halted threads kept in Redis (`dashstream-replay:{ns}:halted`, a hash:
//! thread → its halt), so a halt outlives the process that found the gap:
//! an instance that starts, or that is assigned a partition, restores the
//! halts it finds there and holds the records it reads again from their
//! first held offsets on, until an operator releases the thread (which
//! removes it). Without `REDIS_URL` halts live in the process.
//!
//! Writes go, in order, through a bounded queue to one task: the consumer
//! never waits for Redis (a full queue drops the write, logged).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::replay::redis::RedisTier;

/// The Redis hash of halted threads (under the namespace's prefix).
pub(crate) const HASH: &str = "halted";
/// Releases, field `{thread}:{origin}`: what an instance released, for the
/// other instances' clients (`follow::halts`).
pub(crate) const RELEASED: &str = "released";
/// Release requests, field thread: an operator asked another instance.
pub(crate) const REQUESTS: &str = "release_requests";
/// Halt writes waiting for Redis, at most.
const QUEUE: usize = 1024;

/// One halted thread as Redis keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SavedHalt {
    pub(crate) tenant: String,
    pub(crate) missing: u64,
    pub(crate) sequence: u64,
    /// (partition, first held offset).
    pub(crate) first: Vec<(i32, i64)>,
}

/// One release, as the other instances read it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Released {
    /// The releasing process (its notice boot id).
    pub(crate) origin: String,
    pub(crate) tenant: String,
    /// (partition, offset) of every released record.
    pub(crate) offsets: Vec<(i32, i64)>,
    pub(crate) at_ms: i64,
}

enum Op {
    Set(&'static str, String, String),
    Remove(&'static str, String),
}

#[derive(Clone)]
pub(crate) struct HaltStore {
    redis: Arc<RedisTier>,
    tx: mpsc::Sender<Op>,
}

impl HaltStore {
    pub(crate) fn start(redis: Arc<RedisTier>) -> Self {
        let (tx, mut rx) = mpsc::channel::<Op>(QUEUE);
        let r = redis.clone();
        tokio::spawn(async move {
            while let Some(op) = rx.recv().await {
                let (thread, res) = match op {
                    Op::Set(h, t, v) => {
                        let res = r.hash_set(h, &t, &v).await;
                        (t, res)
                    }
                    Op::Remove(h, t) => {
                        let res = r.hash_del(h, &t).await;
                        (t, res)
                    }
                };
                if let Err(e) = res {
                    tracing::warn!(thread_id = ?thread, error = %e, "halted thread not saved to Redis: it will not outlive this process");
                }
            }
        });
        Self { redis, tx }
    }

    fn send(&self, op: Op) {
        if self.tx.try_send(op).is_err() {
            tracing::warn!("halt store queue full: a halted thread change is not saved to Redis");
        }
    }

    pub(crate) fn save(&self, thread: &str, halt: &SavedHalt) {
        if let Ok(v) = serde_json::to_string(halt) {
            self.send(Op::Set(HASH, thread.to_string(), v));
        }
    }

    pub(crate) fn remove(&self, thread: &str) {
        self.send(Op::Remove(HASH, thread.to_string()));
    }

    /// Tells the other instances what this one released (after the
    /// records' own Redis writes were queued).
    pub(crate) fn released(&self, thread: &str, r: &Released) {
        if let Ok(v) = serde_json::to_string(r) {
            self.send(Op::Set(RELEASED, format!("{thread}:{}", r.origin), v));
        }
    }

    /// Every saved halt (entries that do not parse, or whose thread id is
    /// over the id limit, are skipped).
    pub(crate) async fn load(&self) -> anyhow::Result<Vec<(String, SavedHalt)>> {
        Ok(self
            .redis
            .hash_all(HASH)
            .await?
            .into_iter()
            .filter(|(t, _)| t.len() <= crate::record::decode::MAX_ID_BYTES)
            .filter_map(|(t, v)| Some((t, serde_json::from_str(&v).ok()?)))
            .collect())
    }
}
