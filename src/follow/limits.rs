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

/// Writes an operator's change for every instance (`None`: cleared).
pub(crate) async fn publish(
    redis: &RedisTier,
    tenant: &str,
    rate: Option<Rate>,
) -> anyhow::Result<()> {
    match rate {
        Some(r) => {
            redis
                .hash_set(HASH, tenant, &serde_json::to_string(&r)?)
                .await
        }
        None => redis.hash_del(HASH, tenant).await,
    }
}

pub(crate) struct LimitWatch {
    pub(crate) redis: Arc<RedisTier>,
    pub(crate) admin_tx: mpsc::Sender<AdminCommand>,
}

impl LimitWatch {
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let mut applied: BTreeMap<String, Rate> = BTreeMap::new();
        loop {
            if let Ok(all) = self.redis.hash_all(HASH).await {
                let now: BTreeMap<String, Rate> = all
                    .into_iter()
                    .filter_map(|(t, v)| Some((t, serde_json::from_str::<Rate>(&v).ok()?)))
                    .filter(|(t, r)| r.validate().is_ok() && !t.is_empty() && t.len() <= 256)
                    .collect();
                let mut changes: Vec<(String, Option<Rate>)> = now
                    .iter()
                    .filter(|(t, r)| applied.get(*t) != Some(r))
                    .map(|(t, r)| (t.clone(), Some(*r)))
                    .collect();
                changes.extend(
                    applied
                        .keys()
                        .filter(|t| !now.contains_key(*t))
                        .map(|t| (t.clone(), None)),
                );
                for (tenant, rate) in changes {
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
                applied = now;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(WATCH_EVERY) => {}
            }
        }
    }
}
