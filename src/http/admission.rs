//! Admission of new WebSocket clients: global and per-IP connection slots,
//! the client address (with `X-Forwarded-For` honoured only from trusted
//! proxies), and the circuit breaker (see [`crate::http::backpressure`]).
//!
//! A slot is a [`ConnectionPermit`] guard, taken before the upgrade and moved
//! into the session: it is released on every path (refused request, failed or
//! aborted upgrade, error, panic, normal close), so slots cannot leak.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::http::backpressure::{self, Breaker, BreakerConfig, BreakerState, Utilisation, Weights};
use crate::telemetry;

/// An IP network (`10.0.0.0/8`, `::1/128`, or a bare address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .trim()
            .parse()
            .map_err(|_| format!("'{s}' is not an IP address or network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("'{s}': bad prefix length"))?,
        };
        Ok(Self { addr, prefix })
    }

    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let bits = |a: IpAddr| -> (u128, u8) {
            match a {
                IpAddr::V4(v) => (u128::from(u32::from(v)), 32),
                IpAddr::V6(v) => (u128::from(v), 128),
            }
        };
        let ip = match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => return false,
            },
            (IpAddr::V6(_), IpAddr::V4(_)) => return false,
            _ => ip,
        };
        let (a, width) = bits(self.addr);
        let (b, _) = bits(ip);
        if self.prefix == 0 {
            return true;
        }
        let shift = width - self.prefix;
        (a >> shift) == (b >> shift)
    }
}

#[derive(Clone, Debug)]
pub(crate) struct AdmissionConfig {
    pub(crate) max_connections: usize,
    pub(crate) max_per_ip: usize,
    /// IPv6 addresses count per network of this prefix length.
    pub(crate) ipv6_prefix: u8,
    pub(crate) trusted_proxies: Vec<IpNet>,
    pub(crate) weights: Weights,
    pub(crate) breaker: BreakerConfig,
    pub(crate) memory_limit: Option<u64>,
}

/// Why a connection was refused (`websocket_connections_rejected_total{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    CircuitOpen,
    GlobalLimit,
    PerIpLimit,
}

impl Refusal {
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Refusal::CircuitOpen => "circuit_open",
            Refusal::GlobalLimit => "global_limit",
            Refusal::PerIpLimit => "per_ip_limit",
        }
    }
}

/// What per-IP slots are counted by: an IPv4 address, or the IPv6 network
/// of `WEBSOCKET_IPV6_PREFIX` holding the address (IPv4-mapped IPv6
/// addresses count as their IPv4 address).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct IpBucket {
    addr: IpAddr,
    prefix: u8,
}

impl IpBucket {
    pub(crate) fn of(ip: IpAddr, ipv6_prefix: u8) -> Self {
        match ip {
            IpAddr::V4(_) => Self {
                addr: ip,
                prefix: 32,
            },
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self {
                    addr: IpAddr::V4(v4),
                    prefix: 32,
                },
                None => {
                    let prefix = ipv6_prefix.min(128);
                    let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                    Self {
                        addr: IpAddr::V6((u128::from(v6) & mask).into()),
                        prefix,
                    }
                }
            },
        }
    }
}

impl std::fmt::Display for IpBucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.addr, self.prefix) {
            (IpAddr::V4(_), _) | (IpAddr::V6(_), 128) => write!(f, "{}", self.addr),
            (a, p) => write!(f, "{a}/{p}"),
        }
    }
}

pub(crate) struct Admission {
    cfg: AdmissionConfig,
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpBucket, usize>>,
    breaker: Mutex<Breaker>,
    level_bits: AtomicU64,
}

/// One admitted connection's slots; dropping it frees them.
pub(crate) struct ConnectionPermit {
    adm: Arc<Admission>,
    ip: IpBucket,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.adm.total.fetch_sub(1, Ordering::AcqRel);
        let mut m = self.adm.per_ip.lock();
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

impl Admission {
    pub(crate) fn new(cfg: AdmissionConfig) -> Arc<Self> {
        metrics::gauge!(telemetry::MAX_CONNECTIONS).set(cfg.max_connections as f64);
        metrics::gauge!(telemetry::MAX_CONNECTIONS_PER_IP).set(cfg.max_per_ip as f64);
        for r in [
            Refusal::CircuitOpen,
            Refusal::GlobalLimit,
            Refusal::PerIpLimit,
        ] {
            metrics::counter!(telemetry::CONNECTIONS_REJECTED, "reason" => r.reason()).increment(0);
        }
        metrics::counter!(telemetry::CONNECTIONS_REJECTED, "reason" => "unauthorized").increment(0);
        metrics::gauge!(telemetry::BREAKER_STATE).set(0.0);
        metrics::gauge!(telemetry::MEMORY_LIMIT).set(cfg.memory_limit.unwrap_or(0) as f64);
        if let Some(rss) = backpressure::rss_bytes() {
            metrics::gauge!(telemetry::PROCESS_RSS).set(rss as f64);
        }
        metrics::gauge!(telemetry::BACKPRESSURE_LEVEL).set(0.0);
        metrics::gauge!(telemetry::BACKPRESSURE_CATEGORY).set(0.0);
        let breaker = Mutex::new(Breaker::new(cfg.breaker, Instant::now()));
        Arc::new(Self {
            cfg,
            total: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            breaker,
            level_bits: AtomicU64::new(0),
        })
    }

    /// The client's slot bucket: its address (see [`Admission::client_ip`])
    /// in its IPv6 network.
    pub(crate) fn client_bucket(&self, peer: SocketAddr, headers: &HeaderMap) -> IpBucket {
        IpBucket::of(self.client_ip(peer, headers), self.cfg.ipv6_prefix)
    }

    /// The client's address (see [`client_ip`]).
    pub(crate) fn client_ip(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        client_ip(&self.cfg.trusted_proxies, peer, headers)
    }

    /// Takes a slot for `ip`, or says why not.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpBucket) -> Result<ConnectionPermit, Refusal> {
        if !self.breaker.lock().admit(Instant::now()) {
            return Err(self.refuse(Refusal::CircuitOpen));
        }
        let total = self.total.fetch_add(1, Ordering::AcqRel);
        if total >= self.cfg.max_connections {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(self.refuse(Refusal::GlobalLimit));
        }
        let mut m = self.per_ip.lock();
        let n = m.entry(ip).or_insert(0);
        if *n >= self.cfg.max_per_ip {
            drop(m);
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(self.refuse(Refusal::PerIpLimit));
        }
        *n += 1;
        Ok(ConnectionPermit {
            adm: self.clone(),
            ip,
        })
    }

    fn refuse(&self, r: Refusal) -> Refusal {
        metrics::counter!(telemetry::CONNECTIONS_REJECTED, "reason" => r.reason()).increment(1);
        r
    }

    pub(crate) fn level(&self) -> f64 {
        f64::from_bits(self.level_bits.load(Ordering::Relaxed))
    }

    pub(crate) fn breaker_state(&self) -> BreakerState {
        self.breaker.lock().state()
    }

    /// Operator reset of the breaker.
    pub(crate) fn reset_breaker(&self) -> BreakerState {
        let mut b = self.breaker.lock();
        let before = b.state();
        if let Some((from, to)) = b.reset(Instant::now()) {
            record_transition(from, to, "operator reset");
        }
        before
    }

    /// Feeds a new utilisation sample: level, category, breaker.
    pub(crate) fn observe(&self, u: &Utilisation) {
        let level = if self.cfg.memory_limit.is_some() {
            backpressure::level(&self.cfg.weights, u)
        } else {
            backpressure::level_without_memory(&self.cfg.weights, u)
        };
        self.level_bits.store(level.to_bits(), Ordering::Relaxed);
        metrics::gauge!(telemetry::BACKPRESSURE_LEVEL).set(level);
        metrics::gauge!(telemetry::BACKPRESSURE_CATEGORY)
            .set(f64::from(backpressure::category(level)));
        let mut b = self.breaker.lock();
        if let Some((from, to)) = b.observe(level, Instant::now()) {
            record_transition(from, to, &format!("backpressure level {level:.3}"));
        }
        metrics::gauge!(telemetry::BREAKER_STATE).set(b.state().gauge());
    }

    /// Resident set size against the memory limit (0 without a limit); also
    /// exports the resident set size.
    pub(crate) fn memory_utilisation(&self) -> f64 {
        let rss = backpressure::rss_bytes();
        if let Some(b) = rss {
            metrics::gauge!(telemetry::PROCESS_RSS).set(b as f64);
        }
        match (self.cfg.memory_limit, rss) {
            (Some(limit), Some(rss)) if limit > 0 => rss as f64 / limit as f64,
            _ => 0.0,
        }
    }
}

/// [`client_ip`] of a peer in 10.0.0.0/8 (trusted) sending `value`, for the fuzz targets.
pub(crate) fn fuzz_client_ip(value: &[u8], peer: SocketAddr) -> IpAddr {
    let trusted = [IpNet::parse("10.0.0.0/8").expect("a valid network")];
    let mut h = HeaderMap::new();
    if let Ok(v) = axum::http::HeaderValue::from_bytes(value) {
        h.insert("x-forwarded-for", v);
    }
    client_ip(&trusted, peer, &h)
}

/// The client's address: the peer, or for a trusted proxy the nearest
/// untrusted address in `X-Forwarded-For`, read from the right (the
/// entries the trusted proxies appended). An entry that is not an
/// address (garbage, `unknown`, an obfuscated name) is skipped, so a
/// client cannot move itself into its proxy's bucket with one; an
/// address with a port (`1.2.3.4:5`, `[::1]:5`) counts as the address.
/// Only the first 64 entries from the right are looked at.
pub(crate) fn client_ip(
    trusted_proxies: &[IpNet],
    peer: SocketAddr,
    headers: &HeaderMap,
) -> IpAddr {
    const MAX_HOPS: usize = 64;
    let peer_ip = peer.ip();
    let trusted = |ip: IpAddr| trusted_proxies.iter().any(|n| n.contains(ip));
    if !trusted(peer_ip) {
        return peer_ip;
    }
    let values: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let mut farthest_trusted = None;
    let entries = values
        .iter()
        .rev()
        .flat_map(|v| v.rsplit(','))
        .take(MAX_HOPS)
        .filter_map(forwarded_addr);
    for ip in entries {
        if !trusted(ip) {
            return ip;
        }
        farthest_trusted = Some(ip);
    }
    farthest_trusted.unwrap_or(peer_ip)
}

/// One `X-Forwarded-For` entry as an address, if it is one.
fn forwarded_addr(entry: &str) -> Option<IpAddr> {
    let e = entry.trim();
    if let Ok(ip) = e.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = e.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    None
}

fn record_transition(from: BreakerState, to: BreakerState, why: &str) {
    metrics::counter!(telemetry::BREAKER_TRANSITIONS, "from" => from.as_str(), "to" => to.as_str())
        .increment(1);
    metrics::gauge!(telemetry::BREAKER_STATE).set(to.gauge());
    if to == BreakerState::Open {
        tracing::warn!(
            from = from.as_str(),
            to = to.as_str(),
            why,
            "circuit breaker opened: new WebSocket clients get 1013 until it closes"
        );
    } else {
        tracing::info!(
            from = from.as_str(),
            to = to.as_str(),
            why,
            "circuit breaker state changed"
        );
    }
}

/// Samples utilisation every 500 ms until shutdown.
pub(crate) fn spawn_monitor(
    adm: Arc<Admission>,
    sample: impl Fn() -> Utilisation + Send + 'static,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {
                    let mut u = sample();
                    u.memory = adm.memory_utilisation();
                    adm.observe(&u);
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adm(max: usize, per_ip: usize, trusted: &[&str]) -> Arc<Admission> {
        Admission::new(AdmissionConfig {
            max_connections: max,
            max_per_ip: per_ip,
            ipv6_prefix: 64,
            trusted_proxies: trusted.iter().map(|t| IpNet::parse(t).unwrap()).collect(),
            weights: Weights::default(),
            breaker: BreakerConfig {
                critical: 0.95,
                recovery: 0.7,
                open_for: Duration::from_secs(60),
                half_open_probes: 1,
            },
            memory_limit: None,
        })
    }

    #[test]
    fn per_ip_and_global_limits_with_slots_released_on_drop() {
        let a = adm(3, 2, &[]);
        let ip1 = IpBucket::of("10.0.0.1".parse().unwrap(), 64);
        let ip2 = IpBucket::of("10.0.0.2".parse().unwrap(), 64);
        let p1 = a.admit(ip1).unwrap();
        let _p2 = a.admit(ip1).unwrap();
        assert_eq!(a.admit(ip1).err(), Some(Refusal::PerIpLimit));
        let _p3 = a.admit(ip2).unwrap();
        assert_eq!(a.admit(ip2).err(), Some(Refusal::GlobalLimit));
        drop(p1);
        assert!(a.admit(ip1).is_ok(), "slot released");
    }

    #[test]
    fn forwarded_for_is_honoured_only_from_trusted_proxies() {
        let a = adm(10, 10, &["10.1.0.0/16"]);
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.9, 10.1.2.3".parse().unwrap());
        let proxy: SocketAddr = "10.1.0.5:4000".parse().unwrap();
        let stranger: SocketAddr = "198.51.100.7:4000".parse().unwrap();
        assert_eq!(
            a.client_ip(proxy, &h),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            a.client_ip(stranger, &h),
            stranger.ip(),
            "spoofed header ignored"
        );
        h.insert("x-forwarded-for", "not-an-ip".parse().unwrap());
        assert_eq!(a.client_ip(proxy, &h), proxy.ip());
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // Read from the right: a malformed entry the client wrote does not
        // move it into its proxy's bucket.
        for (header, want) in [
            ("garbage, 203.0.113.9, 10.1.2.3", "203.0.113.9"),
            ("203.0.113.9, garbage, 10.1.2.3", "203.0.113.9"),
            ("198.51.100.1, 203.0.113.9, unknown", "203.0.113.9"),
            ("203.0.113.9:5555, 10.1.2.3", "203.0.113.9"),
            ("[2001:db8::7]:443", "2001:db8::7"),
            ("10.1.9.9, 10.1.2.3", "10.1.9.9"),
            ("", "10.1.0.5"),
        ] {
            h.insert("x-forwarded-for", header.parse().unwrap());
            assert_eq!(a.client_ip(proxy, &h), ip(want), "{header}");
        }
        // Several header lines read as one list, the last line rightmost.
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "203.0.113.1".parse().unwrap());
        h.append("x-forwarded-for", "203.0.113.2, 10.1.2.3".parse().unwrap());
        assert_eq!(a.client_ip(proxy, &h), ip("203.0.113.2"));
    }

    #[test]
    fn ipv6_clients_count_per_network_and_v4_mapped_as_v4() {
        let a = adm(100, 2, &[]);
        let b = |s: &str, p| IpBucket::of(s.parse().unwrap(), p);
        let _p1 = a.admit(b("2001:db8:1:2::1", 64)).unwrap();
        let _p2 = a.admit(b("2001:db8:1:2:ffff::9", 64)).unwrap();
        assert_eq!(
            a.admit(b("2001:db8:1:2:abcd::1", 64)).err(),
            Some(Refusal::PerIpLimit),
            "one /64 is one host"
        );
        assert!(a.admit(b("2001:db8:1:3::1", 64)).is_ok(), "another /64");
        assert_eq!(b("2001:db8:1:2::1", 64).to_string(), "2001:db8:1:2::/64");
        assert_eq!(b("2001:db8::1", 128).to_string(), "2001:db8::1");
        assert_eq!(b("::ffff:10.0.0.1", 64), b("10.0.0.1", 64));
        assert_eq!(b("::ffff:10.0.0.1", 64).to_string(), "10.0.0.1");
        assert_ne!(b("2001:db8::1", 128), b("2001:db8::2", 128));
    }

    #[test]
    fn networks_match_v4_v6_and_mapped() {
        let n = IpNet::parse("127.0.0.0/8").unwrap();
        assert!(n.contains("127.9.9.9".parse().unwrap()));
        assert!(n.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!n.contains("128.0.0.1".parse().unwrap()));
        assert!(IpNet::parse("::1")
            .unwrap()
            .contains("::1".parse().unwrap()));
        assert!(IpNet::parse("10.0.0.0/33").is_err());
        assert!(IpNet::parse("nope").is_err());
    }

    #[test]
    fn an_open_breaker_refuses_and_reset_closes_it() {
        let a = adm(10, 10, &[]);
        a.observe(&Utilisation {
            connections: 1.0,
            client_queues: 1.0,
            pipeline_queues: 1.0,
            memory: 1.0,
        });
        assert_eq!(a.breaker_state(), BreakerState::Open);
        let ip = IpBucket::of("10.0.0.1".parse().unwrap(), 64);
        assert_eq!(a.admit(ip).err(), Some(Refusal::CircuitOpen));
        assert_eq!(a.reset_breaker(), BreakerState::Open);
        assert!(a.admit(ip).is_ok());
    }
}
