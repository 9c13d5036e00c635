//! Backpressure: one 0–1 level for the whole bridge, its category, and a
//! circuit breaker over it that stops admitting new WebSocket clients while
//! the bridge is overloaded. Existing clients keep their stream; the process
//! is never shut down by the breaker.
//!
//! Level = Σ weight × utilisation, each utilisation clamped to 0–1:
//!
//! | component | utilisation | default weight |
//! |---|---|---|
//! | connections | connected clients / `WEBSOCKET_MAX_CONNECTIONS` | 0.30 |
//! | client queues | frames queued for all clients / their total capacity | 0.25 |
//! | pipeline queues | max(DLQ sends in flight / limit, Redis writer queue / capacity) | 0.25 |
//! | memory | resident set size / `MEMORY_LIMIT_BYTES` (0 when no limit is known) | 0.20 |
//!
//! The weights follow the collaboration backpressure formula operators
//! already use (connections 30 %, channels 25 %, queues 25 %, memory 20 %)
//! and are configurable (`BACKPRESSURE_WEIGHTS`). When no memory limit is
//! known the memory weight is spread over the other components, so the
//! level can still reach 1. An idle topic has no utilisation,
//! so it never looks degraded. Categories: NORMAL < 0.70 ≤ ELEVATED < 0.85 ≤
//! HIGH < 0.95 ≤ CRITICAL.
//!
//! Breaker: CLOSED → OPEN when the level reaches `BREAKER_CRITICAL`; OPEN →
//! HALF_OPEN after `BREAKER_OPEN_SECS`; HALF_OPEN admits a few probe
//! connections per second, closes when the level falls below
//! `BREAKER_RECOVERY`, and re-opens if it reaches critical again.

use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Weights {
    pub(crate) connections: f64,
    pub(crate) client_queues: f64,
    pub(crate) pipeline_queues: f64,
    pub(crate) memory: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Self {
            connections: 0.30,
            client_queues: 0.25,
            pipeline_queues: 0.25,
            memory: 0.20,
        }
    }
}

impl Weights {
    /// Parses `connections=0.3,client_queues=0.25,pipeline_queues=0.25,memory=0.2`
    /// (missing keys keep their default; the sum must be 1 ± 0.001).
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        let mut w = Weights::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("'{part}' is not name=weight"))?;
            let v: f64 = v
                .trim()
                .parse()
                .ok()
                .filter(|v: &f64| (0.0..=1.0).contains(v))
                .ok_or_else(|| format!("weight of '{k}' must be between 0 and 1"))?;
            match k.trim() {
                "connections" => w.connections = v,
                "client_queues" => w.client_queues = v,
                "pipeline_queues" => w.pipeline_queues = v,
                "memory" => w.memory = v,
                other => return Err(format!("unknown component '{other}' (connections, client_queues, pipeline_queues, memory)")),
            }
        }
        let sum = w.connections + w.client_queues + w.pipeline_queues + w.memory;
        if (sum - 1.0).abs() > 0.001 {
            return Err(format!("weights must add up to 1 (they add up to {sum})"));
        }
        Ok(w)
    }
}

/// Utilisation of each component, 0–1.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Utilisation {
    pub(crate) connections: f64,
    pub(crate) client_queues: f64,
    pub(crate) pipeline_queues: f64,
    pub(crate) memory: f64,
}

pub(crate) fn level(w: &Weights, u: &Utilisation) -> f64 {
    let c = |x: f64| {
        if x.is_finite() {
            x.clamp(0.0, 1.0)
        } else {
            0.0
        }
    };
    (w.connections * c(u.connections)
        + w.client_queues * c(u.client_queues)
        + w.pipeline_queues * c(u.pipeline_queues)
        + w.memory * c(u.memory))
    .clamp(0.0, 1.0)
}

/// Like [`level`], for when memory cannot be measured: the memory weight is
/// spread over the other components in proportion to theirs.
pub(crate) fn level_without_memory(w: &Weights, u: &Utilisation) -> f64 {
    let rest = w.connections + w.client_queues + w.pipeline_queues;
    if rest <= 0.0 {
        return 0.0;
    }
    let scaled = Weights {
        connections: w.connections / rest,
        client_queues: w.client_queues / rest,
        pipeline_queues: w.pipeline_queues / rest,
        memory: 0.0,
    };
    level(&scaled, &Utilisation { memory: 0.0, ..*u })
}

/// 0 NORMAL, 1 ELEVATED, 2 HIGH, 3 CRITICAL.
pub(crate) fn category(level: f64) -> u8 {
    match level {
        l if l >= 0.95 => 3,
        l if l >= 0.85 => 2,
        l if l >= 0.70 => 1,
        _ => 0,
    }
}

pub(crate) fn category_name(c: u8) -> &'static str {
    ["NORMAL", "ELEVATED", "HIGH", "CRITICAL"][c.min(3) as usize]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BreakerState {
    Closed,
    HalfOpen,
    Open,
}

impl BreakerState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "CLOSED",
            BreakerState::HalfOpen => "HALF_OPEN",
            BreakerState::Open => "OPEN",
        }
    }
    /// Gauge value: 0 CLOSED, 1 HALF_OPEN, 2 OPEN.
    pub(crate) fn gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct BreakerConfig {
    pub(crate) critical: f64,
    pub(crate) recovery: f64,
    pub(crate) open_for: Duration,
    /// Probe connections admitted per second while HALF_OPEN.
    pub(crate) half_open_probes: u32,
}

/// The breaker's state machine (pure: time is passed in).
#[derive(Debug)]
pub(crate) struct Breaker {
    cfg: BreakerConfig,
    state: BreakerState,
    since: Instant,
    probe_window: Instant,
    probes: u32,
}

impl Breaker {
    pub(crate) fn new(cfg: BreakerConfig, now: Instant) -> Self {
        Self {
            cfg,
            state: BreakerState::Closed,
            since: now,
            probe_window: now,
            probes: 0,
        }
    }

    pub(crate) fn state(&self) -> BreakerState {
        self.state
    }

    fn go(&mut self, s: BreakerState, now: Instant) -> Option<(BreakerState, BreakerState)> {
        if s == self.state {
            return None;
        }
        let from = self.state;
        self.state = s;
        self.since = now;
        self.probes = 0;
        self.probe_window = now;
        Some((from, s))
    }

    /// Feeds the current level; returns a transition if one happened.
    pub(crate) fn observe(
        &mut self,
        level: f64,
        now: Instant,
    ) -> Option<(BreakerState, BreakerState)> {
        match self.state {
            BreakerState::Closed if level >= self.cfg.critical => self.go(BreakerState::Open, now),
            BreakerState::Open if now.duration_since(self.since) >= self.cfg.open_for => {
                if level >= self.cfg.critical {
                    // Still overloaded: stay open for another period.
                    self.since = now;
                    None
                } else {
                    self.go(BreakerState::HalfOpen, now)
                }
            }
            BreakerState::HalfOpen if level >= self.cfg.critical => {
                self.go(BreakerState::Open, now)
            }
            BreakerState::HalfOpen if level < self.cfg.recovery => {
                self.go(BreakerState::Closed, now)
            }
            _ => None,
        }
    }

    /// May a new connection be admitted now?
    pub(crate) fn admit(&mut self, now: Instant) -> bool {
        match self.state {
            BreakerState::Closed => true,
            BreakerState::Open => false,
            BreakerState::HalfOpen => {
                if now.duration_since(self.probe_window) >= Duration::from_secs(1) {
                    self.probe_window = now;
                    self.probes = 0;
                }
                if self.probes < self.cfg.half_open_probes {
                    self.probes += 1;
                    true
                } else {
                    false
                }
            }
        }
    }

    /// Operator reset.
    pub(crate) fn reset(&mut self, now: Instant) -> Option<(BreakerState, BreakerState)> {
        self.go(BreakerState::Closed, now)
    }
}

/// Resident set size of this process, from /proc (Linux), in bytes
/// (`VmRSS`, in kB whatever the page size).
pub(crate) fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// The container's memory limit (cgroup v2 or v1), if one is set.
pub(crate) fn cgroup_memory_limit() -> Option<u64> {
    for path in [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ] {
        if let Ok(s) = std::fs::read_to_string(path) {
            if let Ok(v) = s.trim().parse::<u64>() {
                // cgroup v1 reports "no limit" as a huge number.
                if v < (1 << 60) {
                    return Some(v);
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            critical: 0.95,
            recovery: 0.70,
            open_for: Duration::from_secs(10),
            half_open_probes: 2,
        }
    }

    #[test]
    fn level_is_the_weighted_sum_and_idle_is_zero() {
        let w = Weights::default();
        assert_eq!(
            level(&w, &Utilisation::default()),
            0.0,
            "an idle bridge is not degraded"
        );
        let full = Utilisation {
            connections: 1.0,
            client_queues: 1.0,
            pipeline_queues: 1.0,
            memory: 1.0,
        };
        assert!((level(&w, &full) - 1.0).abs() < 1e-9);
        let half_conn = Utilisation {
            connections: 0.5,
            ..Default::default()
        };
        assert!((level(&w, &half_conn) - 0.15).abs() < 1e-9);
        let nan = Utilisation {
            memory: f64::NAN,
            connections: 7.0,
            ..Default::default()
        };
        assert!(
            (level(&w, &nan) - 0.30).abs() < 1e-9,
            "clamped, NaN ignored"
        );
        assert_eq!(
            [
                category(0.69),
                category(0.70),
                category(0.85),
                category(0.95)
            ],
            [0, 1, 2, 3]
        );
    }

    #[test]
    fn without_a_memory_limit_the_other_components_can_still_reach_critical() {
        let w = Weights::default();
        let full = Utilisation {
            connections: 1.0,
            client_queues: 1.0,
            pipeline_queues: 1.0,
            memory: 0.0,
        };
        assert!((level_without_memory(&w, &full) - 1.0).abs() < 1e-9);
        let conn = Utilisation {
            connections: 1.0,
            ..Default::default()
        };
        assert!(
            (level_without_memory(&w, &conn) - 0.375).abs() < 1e-9,
            "0.30 / 0.80"
        );
    }

    #[test]
    fn weights_parse_and_must_add_up() {
        let w = Weights::parse("connections=1,client_queues=0,pipeline_queues=0,memory=0").unwrap();
        assert_eq!(w.connections, 1.0);
        assert!(Weights::parse("connections=0.5").is_err(), "sum 1.2");
        assert!(Weights::parse("disk=0.1").is_err());
        assert!(Weights::parse("connections=x").is_err());
    }

    #[test]
    fn breaker_opens_at_critical_and_closes_through_half_open_with_hysteresis() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg(), t0);
        assert_eq!(b.observe(0.90, t0), None, "high but not critical");
        assert_eq!(
            b.observe(0.96, t0),
            Some((BreakerState::Closed, BreakerState::Open))
        );
        assert!(!b.admit(t0));
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(b.observe(0.10, t1), None, "stays open for open_for");
        let t2 = t0 + Duration::from_secs(11);
        assert_eq!(
            b.observe(0.80, t2),
            Some((BreakerState::Open, BreakerState::HalfOpen))
        );
        assert!(
            b.admit(t2) && b.admit(t2) && !b.admit(t2),
            "two probes per second"
        );
        assert!(b.admit(t2 + Duration::from_secs(1)), "new probe window");
        assert_eq!(
            b.observe(0.75, t2),
            None,
            "between recovery and critical: stays half-open"
        );
        assert_eq!(
            b.observe(0.69, t2),
            Some((BreakerState::HalfOpen, BreakerState::Closed))
        );
        assert!(b.admit(t2));
    }

    #[test]
    fn half_open_reopens_on_a_spike_and_reset_closes() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg(), t0);
        b.observe(1.0, t0);
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(
            b.observe(1.0, t1),
            None,
            "still critical after open_for: stays open"
        );
        let t2 = t1 + Duration::from_secs(10);
        b.observe(0.5, t2);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(
            b.observe(0.99, t2),
            Some((BreakerState::HalfOpen, BreakerState::Open))
        );
        assert_eq!(
            b.reset(t2),
            Some((BreakerState::Open, BreakerState::Closed))
        );
    }

    #[test]
    fn rss_is_readable_here() {
        assert!(rss_bytes().is_some_and(|b| b > 0));
    }
}
