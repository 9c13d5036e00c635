//! Per-tenant rate limits: a token bucket per `tenant_id` (messages per
//! second and burst), with a default and per-tenant overrides that operators
//! can change at run time. Records over quota are not broadcast; they go to
//! the DLQ as `rate_limited`, so nothing is lost silently.
//!
//! Memory is bounded: at most `MAX_TENANTS` buckets (least recently seen
//! evicted, which only refills it; ids are at most `MAX_ID_BYTES`), and
//! `dashstream_rate_limit_exceeded_total` names only tenants an operator gave
//! an override (at most `MAX_TENANT_LABELS`); every other tenant counts as
//! `other`, so tenant ids from records never create label values.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroUsize;
use std::time::Instant;

use lru::LruCache;
use metrics::Counter;

use crate::telemetry;

pub(crate) const MAX_TENANTS: usize = 100_000;
pub(crate) const MAX_TENANT_LABELS: usize = 100;

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Rate {
    pub(crate) messages_per_second: f64,
    pub(crate) burst: f64,
}

impl Rate {
    pub(crate) fn validate(&self) -> Result<(), String> {
        let ok = |x: f64| x.is_finite() && x > 0.0 && x <= 10_000_000.0;
        if !ok(self.messages_per_second) || !ok(self.burst) {
            return Err(
                "messages_per_second and burst must be numbers above 0 (at most 1e7)".into(),
            );
        }
        if self.burst < 1.0 {
            return Err("burst must be at least 1 (a record takes one token)".into());
        }
        Ok(())
    }
}

/// Parses `acme=100:200,beta=5:10` (tenant=rate:burst).
pub(crate) fn parse_overrides(s: &str) -> Result<BTreeMap<String, Rate>, String> {
    let mut m = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (t, r) = part
            .split_once('=')
            .ok_or_else(|| format!("'{part}' is not tenant=rate:burst"))?;
        let (rate, burst) = r.split_once(':').unwrap_or((r, r));
        let rate = Rate {
            messages_per_second: rate
                .trim()
                .parse()
                .map_err(|_| format!("'{part}': rate is not a number"))?,
            burst: burst
                .trim()
                .parse()
                .map_err(|_| format!("'{part}': burst is not a number"))?,
        };
        rate.validate().map_err(|e| format!("'{part}': {e}"))?;
        m.insert(t.trim().to_string(), rate);
    }
    Ok(m)
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

pub(crate) struct TenantRateLimiter {
    default: Option<Rate>,
    overrides: BTreeMap<String, Rate>,
    buckets: LruCache<Box<str>, Bucket>,
    /// Counters of tenants named in the metric (ones with an override).
    labelled: HashMap<Box<str>, Counter>,
    other: Counter,
}

impl TenantRateLimiter {
    pub(crate) fn new(default: Option<Rate>, overrides: BTreeMap<String, Rate>) -> Self {
        let cap = NonZeroUsize::new(MAX_TENANTS).unwrap_or(NonZeroUsize::MIN);
        Self {
            default,
            overrides,
            buckets: LruCache::new(cap),
            labelled: HashMap::new(),
            other: metrics::counter!(telemetry::RATE_LIMIT_EXCEEDED, "tenant_id" => "other"),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.default.is_some() || !self.overrides.is_empty()
    }

    fn rate_of(&self, tenant: &str) -> Option<Rate> {
        self.overrides.get(tenant).copied().or(self.default)
    }

    /// True if a record of `tenant` may be delivered now (takes a token).
    pub(crate) fn allow(&mut self, tenant: &str, now: Instant) -> bool {
        let Some(rate) = self.rate_of(tenant) else {
            return true;
        };
        let b = match self.buckets.get_mut(tenant) {
            Some(b) => b,
            None => {
                self.buckets.put(
                    tenant.into(),
                    Bucket {
                        tokens: rate.burst,
                        at: now,
                    },
                );
                match self.buckets.get_mut(tenant) {
                    Some(b) => b,
                    None => return true,
                }
            }
        };
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate.messages_per_second).min(rate.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return true;
        }
        match self.labelled.get(tenant) {
            Some(c) => c.increment(1),
            None if self.labelled.len() < MAX_TENANT_LABELS
                && self.overrides.contains_key(tenant) =>
            {
                let c = metrics::counter!(telemetry::RATE_LIMIT_EXCEEDED, "tenant_id" => tenant.to_string());
                c.increment(1);
                self.labelled.insert(tenant.into(), c);
            }
            None => self.other.increment(1),
        }
        false
    }

    /// Sets (Some) or removes (None) a tenant's override.
    pub(crate) fn set(&mut self, tenant: &str, rate: Option<Rate>) {
        match rate {
            Some(r) => {
                self.overrides.insert(tenant.to_string(), r);
            }
            None => {
                self.overrides.remove(tenant);
            }
        }
        // A changed limit starts from a full bucket.
        self.buckets.pop(tenant);
    }

    pub(crate) fn describe(&self) -> serde_json::Value {
        serde_json::json!({"default": self.default, "overrides": self.overrides})
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_burst_then_rate() {
        let t0 = Instant::now();
        let mut l = TenantRateLimiter::new(
            Some(Rate {
                messages_per_second: 10.0,
                burst: 5.0,
            }),
            BTreeMap::new(),
        );
        assert_eq!((0..8).filter(|_| l.allow("a", t0)).count(), 5, "burst");
        assert!(
            l.allow("a", t0 + Duration::from_millis(100)),
            "one token after 100 ms at 10/s"
        );
        assert!(!l.allow("a", t0 + Duration::from_millis(100)));
        assert_eq!(
            (0..8).filter(|_| l.allow("b", t0)).count(),
            5,
            "tenants are independent"
        );
    }

    #[test]
    fn overrides_apply_and_can_change_at_run_time() {
        let t0 = Instant::now();
        let o = parse_overrides("noisy=1:1").unwrap();
        let mut l = TenantRateLimiter::new(None, o);
        assert!(
            l.allow("quiet", t0) && l.allow("quiet", t0),
            "no default: unlimited"
        );
        assert!(l.allow("noisy", t0));
        assert!(!l.allow("noisy", t0));
        l.set(
            "noisy",
            Some(Rate {
                messages_per_second: 100.0,
                burst: 100.0,
            }),
        );
        assert!(l.allow("noisy", t0));
        l.set("noisy", None);
        assert!(l.allow("noisy", t0) && l.allow("noisy", t0));
    }

    #[test]
    fn only_tenants_with_an_override_are_named_in_the_metric() {
        let recorder = metrics_util::debugging::DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let t0 = Instant::now();
            let mut l = TenantRateLimiter::new(
                Some(Rate {
                    messages_per_second: 0.001,
                    burst: 1.0,
                }),
                parse_overrides("vip=0.001:1").unwrap(),
            );
            for i in 0..300 {
                let junk = format!("junk-{i}");
                l.allow(&junk, t0);
                l.allow(&junk, t0);
            }
            l.allow("vip", t0);
            l.allow("vip", t0);
            let labels = telemetry::test_counters(&snapshotter, telemetry::RATE_LIMIT_EXCEEDED);
            assert_eq!(labels, vec![("other".into(), 300), ("vip".into(), 1)]);
        });
    }

    #[test]
    fn overrides_are_validated() {
        assert!(parse_overrides("a=0:1").is_err());
        assert!(
            parse_overrides("a=0.5").is_err(),
            "a burst below 1 would block the tenant for good"
        );
        assert!(parse_overrides("a=0.5:1").is_ok());
        assert!(parse_overrides("a=x").is_err());
        assert!(parse_overrides("nope").is_err());
        assert_eq!(
            parse_overrides("a=5").unwrap()["a"],
            Rate {
                messages_per_second: 5.0,
                burst: 5.0
            }
        );
    }
}
