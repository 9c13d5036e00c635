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
use crate::record::frame::{control, parse_envelope};
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
/// How long an operator's release asked of a non-owner waits for the owner.
pub(crate) const FORWARD_WAIT: Duration = Duration::from_secs(10);

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
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(WATCH_EVERY) => {}
            }
            self.halts().await;
            self.serve_requests().await;
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

    /// Releases asked through Redis of threads this instance holds.
    async fn serve_requests(&self) {
        let Ok(all) = self.redis.hash_all(REQUESTS).await else {
            return;
        };
        for (thread, _) in all {
            if !self.status.holds(&thread) {
                continue;
            }
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
                    tracing::info!(thread_id = ?thread, released = n, "thread released at another instance's request")
                }
                Ok(Err(e)) => tracing::debug!(thread_id = ?thread, error = %e, "release request"),
                Err(_) => return,
            }
            let _ = self.redis.hash_del(REQUESTS, &thread).await;
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
                let frame = v.as_deref().filter(|v| !v.is_empty()).and_then(|v| {
                    let env = parse_envelope(v).ok()?;
                    let d = crate::record::decode::unframe(Some(env.value), &self.limits)
                        .and_then(|u| u.decode(&self.limits))
                        .ok()?;
                    Some(crate::record::frame::Frame::new(
                        env.cursor,
                        env.kafka_timestamp_ms,
                        env.value,
                        crate::record::summary::Summary::of(&d),
                        None,
                    ))
                });
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

/// An operator asked this instance to release a thread it does not hold:
/// if another instance does (Redis says it is halted), asks it through
/// Redis and waits for its release. `Ok(None)`: halted nowhere; `Ok(Some(n))`:
/// released, `n` records; `Err`: the owner did not answer in time.
pub(crate) async fn release_elsewhere(
    redis: &RedisTier,
    thread: &str,
) -> anyhow::Result<Option<usize>> {
    let halted = redis.hash_all(HASH).await?;
    if !halted.iter().any(|(t, _)| t == thread) {
        return Ok(None);
    }
    let asked = crate::util::unix_ms();
    redis.hash_set(REQUESTS, thread, &asked.to_string()).await?;
    let deadline = tokio::time::Instant::now() + FORWARD_WAIT;
    let prefix = format!("{thread}:");
    loop {
        tokio::time::sleep(WATCH_EVERY / 2).await;
        let still = redis.hash_all(HASH).await?.iter().any(|(t, _)| t == thread);
        let released: usize = redis
            .hash_all(RELEASED)
            .await?
            .into_iter()
            .filter(|(f, _)| f.starts_with(&prefix))
            .filter_map(|(_, v)| serde_json::from_str::<Released>(&v).ok())
            .filter(|r| r.at_ms >= asked)
            .map(|r| r.offsets.len())
            .sum();
        if !still {
            return Ok(Some(released));
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = redis.hash_del(REQUESTS, thread).await;
            anyhow::bail!("the instance that holds thread '{thread}' did not release it within {FORWARD_WAIT:?}");
        }
    }
}
