//! Halts across instances (`GAP_POLICY=halt` with Redis). The instance that
//! owns a thread's partition holds its records (they are tombstones in
//! Redis, so no follower delivers them) and keeps the halt in the
//! `halted` hash. Every other instance:
//! - tells its own clients (`thread_halted`) and lists the thread in
//!   `/health` and `/admin/threads/halted`;
//! - serves a release asked of it by forwarding it through Redis
//!   (`release_requests`) to the instances that hold the thread;
//! - delivers what such an instance released (`released`: the offsets) to
//!   its clients as late records, once Redis holds them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::hub::Hub;
use crate::ingest::consume::AdminCommand;
use crate::ingest::halt_store::{Released, SavedHalt, HASH, RELEASED, REQUESTS};
use crate::ingest::status::{HaltedThread, IngestStatus};
use crate::record::decode::DecodeLimits;
use crate::record::frame::control;
use crate::replay::config::PageLimit;
use crate::replay::redis::RedisTier;

/// How often the shared halt state is read.
pub(crate) const WATCH_EVERY: Duration = Duration::from_millis(250);
/// How long a release waits for its records to reach Redis before what is
/// there is delivered.
const RELEASE_WAIT: Duration = Duration::from_secs(10);
/// Releases older than this when first seen are history, not news.
const RELEASE_FRESH_MS: i64 = 60_000;
/// Releases are removed from Redis this long after they happened.
const RELEASE_KEEP_MS: i64 = 3_600_000;
/// How long an operator's release waits for the instances that hold the thread.
pub(crate) const FORWARD_WAIT: Duration = Duration::from_secs(10);
/// A release request older than this is stale (its asker is gone).
const REQUEST_TTL_MS: i64 = 20_000;

pub(crate) struct HaltWatch {
    pub(crate) redis: Arc<RedisTier>,
    pub(crate) hub: Arc<Hub>,
    pub(crate) status: Arc<IngestStatus>,
    pub(crate) admin_tx: mpsc::Sender<AdminCommand>,
    pub(crate) limits: DecodeLimits,
}

/// A release of another instance not yet delivered here.
struct Pending {
    thread: String,
    release: Released,
    since: tokio::time::Instant,
}

impl HaltWatch {
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let origin = format!("{:016x}", self.hub.notices.boot());
        let started_ms = crate::util::unix_ms();
        let mut seen: BTreeSet<String> = BTreeSet::new();
        let mut pending: Vec<Pending> = Vec::new();
        let mut served: BTreeSet<(String, i64)> = BTreeSet::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(WATCH_EVERY) => {}
            }
            self.halts().await;
            self.serve_requests(&mut served).await;
            if let Ok(all) = self.redis.hash_all(RELEASED).await {
                let now_ms = crate::util::unix_ms();
                for (field, v) in all {
                    let parsed = serde_json::from_str::<Released>(&v).ok();
                    // Old releases are history: removed, so the hash stays small.
                    if parsed
                        .as_ref()
                        .is_none_or(|r| r.at_ms < now_ms - RELEASE_KEEP_MS)
                    {
                        let _ = self.redis.hash_del(RELEASED, &field).await;
                        seen.remove(&field);
                        continue;
                    }
                    if seen.contains(&field) {
                        continue;
                    }
                    let Some(r) = parsed else {
                        continue;
                    };
                    seen.insert(field.clone());
                    let thread = field
                        .rsplit_once(':')
                        .map_or(field.as_str(), |(t, _)| t)
                        .to_string();
                    if r.origin != origin && r.at_ms >= started_ms - RELEASE_FRESH_MS {
                        pending.push(Pending {
                            thread,
                            release: r,
                            since: tokio::time::Instant::now(),
                        });
                    }
                }
            }
            let mut still = Vec::new();
            for p in pending {
                if !self.deliver(&p).await {
                    still.push(p);
                }
            }
            pending = still;
        }
    }

    /// Threads other instances halted: told to this instance's clients once,
    /// and listed while halted.
    async fn halts(&self) {
        let Ok(all) = self.redis.hash_all(HASH).await else {
            return;
        };
        let mut now: BTreeMap<String, SavedHalt> = BTreeMap::new();
        for (t, v) in all {
            if let Ok(h) = serde_json::from_str::<SavedHalt>(&v) {
                now.insert(t, h);
            }
        }
        let known: BTreeSet<String> = self.status.remote_halted().into_iter().collect();
        for (t, h) in &now {
            if self.status.holds(t) || known.contains(t) {
                continue;
            }
            self.hub.notify_thread(
                t,
                &h.tenant,
                &control::thread_halted(t, h.missing, h.sequence),
            );
            self.status.put_remote_halted(HaltedThread {
                thread_id: t.clone(),
                tenant_id: h.tenant.clone(),
                held_messages: 0,
                dropped_messages: 0,
                missing: h.missing,
                at_sequence: h.sequence,
                halted_at_unix_ms: crate::util::unix_ms(),
            });
        }
        for t in known {
            if !now.contains_key(&t) || self.status.holds(&t) {
                self.status.remove_remote_halted(&t);
            }
        }
    }

    /// Releases asked through Redis of threads this instance holds. Every
    /// instance that holds the thread releases its part (halts restored from
    /// Redis at a rebalance are held by several); the asker removes the
    /// request when it is done, and one older than `REQUEST_TTL_MS` is stale.
    async fn serve_requests(&self, served: &mut BTreeSet<(String, i64)>) {
        let Ok(all) = self.redis.hash_all(REQUESTS).await else {
            return;
        };
        let now_ms = crate::util::unix_ms();
        let live: BTreeSet<(String, i64)> = all
            .into_iter()
            .filter_map(|(t, v)| Some((t, v.parse::<i64>().ok()?)))
            .collect();
        served.retain(|k| live.contains(k));
        for (thread, asked) in live {
            if asked < now_ms - REQUEST_TTL_MS {
                let _ = self.redis.hash_del(REQUESTS, &thread).await;
                continue;
            }
            if served.contains(&(thread.clone(), asked)) || !self.status.holds(&thread) {
                continue;
            }
            served.insert((thread.clone(), asked));
            let (reply, rx) = oneshot::channel();
            let cmd = AdminCommand::ReleaseThread {
                thread: thread.clone(),
                reply,
            };
            if self.admin_tx.send(cmd).await.is_err() {
                return;
            }
            match rx.await {
                Ok(Ok(n)) => {
                    tracing::info!(thread_id = ?thread, released = n, "thread released at an operator's request to another instance")
                }
                Ok(Err(e)) => tracing::debug!(thread_id = ?thread, error = %e, "release request"),
                Err(_) => return,
            }
        }
    }

    /// Delivers a release of another instance once Redis holds its records
    /// (or `RELEASE_WAIT` passed). `false`: not yet.
    async fn deliver(&self, p: &Pending) -> bool {
        let mut by_part: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
        for (part, o) in &p.release.offsets {
            by_part.entry(*part).or_default().push(*o);
        }
        let mut frames = Vec::new();
        let mut missing = 0usize;
        for (part, offs) in by_part {
            let (lo, hi) = (offs[0], offs[offs.len() - 1]);
            let want: BTreeSet<i64> = offs.iter().copied().collect();
            let limit = PageLimit {
                records: (hi - lo + 1).clamp(1, 100_000) as usize,
                bytes: usize::MAX,
            };
            let Ok(rows) = self.redis.page(part, lo, hi, limit).await else {
                return false;
            };
            let mut found = 0;
            for (o, v) in rows {
                if !want.contains(&o) {
                    continue;
                }
                let frame = v
                    .as_deref()
                    .and_then(|v| super::frame_of_envelope(&self.limits, v));
                if let Some(f) = frame {
                    f.mark_late();
                    frames.push(Arc::new(f));
                    found += 1;
                }
            }
            missing += want.len() - found;
        }
        if missing > 0 && p.since.elapsed() < RELEASE_WAIT {
            return false;
        }
        if missing > 0 {
            tracing::warn!(thread_id = ?p.thread, missing, "released records not found in Redis: this instance's clients get them on their next resume, if a tier holds them");
        }
        frames.sort_by_key(|f| (f.cursor.partition, f.cursor.offset));
        self.hub.release(&p.thread, &p.release.tenant, &frames);
        self.status.remove_remote_halted(&p.thread);
        tracing::info!(thread_id = ?p.thread, released = frames.len(), "thread released by another instance: its records delivered here as late");
        true
    }
}

/// An operator's release at this instance, for every instance: `local` is
/// what this instance released itself (`None`: it did not hold the thread).
/// The request goes through Redis to every instance that holds the thread
/// (one found the gap; others restored the halt at a rebalance), and this
/// waits until no instance lists it as halted and each had a chance to see
/// the request. `Ok(None)`: halted nowhere; `Ok(Some(n))`: `n` records
/// released in all; `Err`: an instance that holds it did not release it in
/// time (`local` released records are released all the same).
pub(crate) async fn release_everywhere(
    redis: &RedisTier,
    thread: &str,
    local: Option<usize>,
    origin: &str,
) -> anyhow::Result<Option<usize>> {
    let halted = redis.hash_all(HASH).await?;
    if local.is_none() && !halted.iter().any(|(t, _)| t == thread) {
        return Ok(None);
    }
    let asked = crate::util::unix_ms();
    redis.hash_set(REQUESTS, thread, &asked.to_string()).await?;
    let started = tokio::time::Instant::now();
    let prefix = format!("{thread}:");
    let result = loop {
        tokio::time::sleep(WATCH_EVERY / 2).await;
        let still = redis.hash_all(HASH).await?.iter().any(|(t, _)| t == thread);
        // Every watcher polls at WATCH_EVERY: two rounds let each see the request.
        if !still && started.elapsed() >= WATCH_EVERY * 2 {
            let others: usize = redis
                .hash_all(RELEASED)
                .await?
                .into_iter()
                .filter(|(f, _)| f.starts_with(&prefix))
                .filter_map(|(_, v)| serde_json::from_str::<Released>(&v).ok())
                .filter(|r| r.at_ms >= asked && r.origin != origin)
                .map(|r| r.offsets.len())
                .sum();
            break Ok(Some(local.unwrap_or(0) + others));
        }
        if started.elapsed() >= FORWARD_WAIT {
            break Err(anyhow::anyhow!("an instance that holds thread '{thread}' did not release it within {FORWARD_WAIT:?}"));
        }
    };
    let _ = redis.hash_del(REQUESTS, thread).await;
    result
}
