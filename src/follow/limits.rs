//! Tenant rate-limit overrides shared by every instance through Redis (the
//! `rate_limits` hash: tenant → `{"messages_per_second", "burst"}`). An
//! operator's change at any instance is written there and applied by each
//! instance's consumer within `WATCH_EVERY`; a cleared override is removed
//! everywhere. They also outlive restarts: an instance that starts applies
//! what the hash holds over `TENANT_RATE_LIMITS`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::ingest::consume::AdminCommand;
use crate::ingest::ratelimit::Rate;
use crate::replay::redis::RedisTier;

/// The Redis hash (under the namespace's prefix).
pub(crate) const HASH: &str = "rate_limits";
/// How often the shared overrides are read.
pub(crate) const WATCH_EVERY: Duration = Duration::from_secs(1);

/// The shared overrides this instance has applied, by the watch or by an
/// operator here. The watch compares Redis with it: an override cleared at
/// another instance is cleared here too, even one set here that the watch
/// never read.
#[derive(Default)]
pub(crate) struct Applied {
    inner: parking_lot::Mutex<AppliedInner>,
}

#[derive(Default)]
struct AppliedInner {
    overrides: BTreeMap<String, Rate>,
    /// Operator changes made here: one during a read of Redis makes the read stale.
    changes: u64,
}

impl Applied {
    fn record(&self, tenant: &str, rate: Option<Rate>) {
        let mut a = self.inner.lock();
        match rate {
            Some(r) => a.overrides.insert(tenant.to_string(), r),
            None => a.overrides.remove(tenant),
        };
        a.changes += 1;
    }

    fn changes(&self) -> u64 {
        self.inner.lock().changes
    }

    /// What makes this instance hold `now` (Redis, read while the count of
    /// local changes was `seen`), which it records as applied; nothing when
    /// an operator changed an override here meanwhile (read again).
    fn sync_to(&self, now: BTreeMap<String, Rate>, seen: u64) -> Vec<(String, Option<Rate>)> {
        let mut a = self.inner.lock();
        if a.changes != seen {
            return Vec::new();
        }
        let mut changes: Vec<(String, Option<Rate>)> = now
            .iter()
            .filter(|(t, r)| a.overrides.get(*t) != Some(r))
            .map(|(t, r)| (t.clone(), Some(*r)))
            .collect();
        changes.extend(
            a.overrides
                .keys()
                .filter(|t| !now.contains_key(*t))
                .map(|t| (t.clone(), None)),
        );
        a.overrides = now;
        changes
    }
}

/// Writes an operator's change for every instance (`None`: cleared), and
/// records it as applied here.
pub(crate) async fn publish(
    redis: &RedisTier,
    applied: &Applied,
    tenant: &str,
    rate: Option<Rate>,
) -> anyhow::Result<()> {
    match rate {
        Some(r) => {
            redis
                .hash_set(HASH, tenant, &serde_json::to_string(&r)?)
                .await?
        }
        None => redis.hash_del(HASH, tenant).await?,
    }
    applied.record(tenant, rate);
    Ok(())
}

pub(crate) struct LimitWatch {
    pub(crate) redis: Arc<RedisTier>,
    pub(crate) applied: Arc<Applied>,
    pub(crate) admin_tx: mpsc::Sender<AdminCommand>,
}

impl LimitWatch {
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        loop {
            let seen = self.applied.changes();
            if let Ok(all) = self.redis.hash_all(HASH).await {
                let now: BTreeMap<String, Rate> = all
                    .into_iter()
                    .filter_map(|(t, v)| Some((t, serde_json::from_str::<Rate>(&v).ok()?)))
                    .filter(|(t, r)| r.validate().is_ok() && !t.is_empty() && t.len() <= 256)
                    .collect();
                for (tenant, rate) in self.applied.sync_to(now, seen) {
                    let (reply, rx) = oneshot::channel();
                    let cmd = AdminCommand::SetRateLimit {
                        tenant: tenant.clone(),
                        rate,
                        reply,
                    };
                    if self.admin_tx.send(cmd).await.is_err() || rx.await.is_err() {
                        return;
                    }
                    tracing::info!(tenant_id = ?tenant, ?rate, "tenant rate limit from the shared overrides");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(WATCH_EVERY) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(burst: f64) -> Rate {
        Rate {
            messages_per_second: 5.0,
            burst,
        }
    }

    #[test]
    fn an_override_set_here_and_cleared_elsewhere_before_any_read_is_cleared_here() {
        let applied = Applied::default();
        // An operator here sets it (Redis written); another instance clears it
        // before this instance's watch ever read Redis with it.
        applied.record("acme", Some(rate(7.0)));
        let seen = applied.changes();
        assert_eq!(
            applied.sync_to(BTreeMap::new(), seen),
            vec![("acme".to_string(), None)]
        );
        assert!(
            applied.sync_to(BTreeMap::new(), seen).is_empty(),
            "applied once"
        );
    }

    #[test]
    fn a_read_that_a_change_here_overtook_changes_nothing() {
        let applied = Applied::default();
        let seen = applied.changes();
        // Redis was read before the operator's change here was written.
        applied.record("acme", Some(rate(7.0)));
        assert!(applied.sync_to(BTreeMap::new(), seen).is_empty());
        let now: BTreeMap<String, Rate> = [("acme".to_string(), rate(7.0))].into();
        assert!(
            applied.sync_to(now.clone(), applied.changes()).is_empty(),
            "already applied"
        );
        let changed: BTreeMap<String, Rate> = [("acme".to_string(), rate(9.0))].into();
        assert_eq!(
            applied.sync_to(changed, applied.changes()),
            vec![("acme".to_string(), Some(rate(9.0)))]
        );
    }
}
