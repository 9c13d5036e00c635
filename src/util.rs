//! Small helpers shared by several stages.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Truncates to at most `max` bytes without splitting a UTF-8 character.
pub(crate) fn truncate_on_char_boundary(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub(crate) fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

/// A URL fit for a log line or an error message: the password of its
/// user info and the value of every `token` query parameter are replaced by
/// `***` (`redis://user:***@host`, `ws://host/ws?token=***`).
pub(crate) fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut out = String::with_capacity(url.len());
    match base.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = match rest.find('/') {
                Some(i) => rest.split_at(i),
                None => (rest, ""),
            };
            out.push_str(scheme);
            out.push_str("://");
            match authority.rsplit_once('@') {
                Some((userinfo, host)) => {
                    match userinfo.split_once(':') {
                        Some((user, _)) => {
                            out.push_str(user);
                            out.push_str(":***");
                        }
                        // redis://secret@host: the user part is the password.
                        None => out.push_str("***"),
                    }
                    out.push('@');
                    out.push_str(host);
                }
                None => out.push_str(authority),
            }
            out.push_str(path);
        }
        None => out.push_str(base),
    }
    if let Some(q) = query {
        out.push('?');
        let parts: Vec<String> = q
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("token") => format!("{k}=***"),
                _ => kv.to_string(),
            })
            .collect();
        out.push_str(&parts.join("&"));
    }
    out
}

/// At most one log line per second for a repeated condition, from any
/// thread; tells the caller how many lines were left out since the last.
#[derive(Default)]
pub(crate) struct LogThrottle {
    last_ms: AtomicI64,
    suppressed: AtomicU64,
}

impl LogThrottle {
    /// `now_ms`: Unix ms (callers that read the clock once per batch pass theirs).
    pub(crate) fn allow(&self, now_ms: i64) -> Option<u64> {
        let now = now_ms;
        let last = self.last_ms.load(Ordering::Relaxed);
        if now - last >= 1000
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Microseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn unix_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_secrets() {
        for (url, want) in [
            (
                "redis://user:pa55@redis:6379/0",
                "redis://user:***@redis:6379/0",
            ),
            ("rediss://:pa55@redis", "rediss://:***@redis"),
            ("redis://pa55@redis", "redis://***@redis"),
            ("redis://redis:6379", "redis://redis:6379"),
            (
                "ws://h:3002/ws?format=json&token=s3cr3t&threads=a",
                "ws://h:3002/ws?format=json&token=***&threads=a",
            ),
            ("ws://h/ws?TOKEN=x", "ws://h/ws?TOKEN=***"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(redact_url(url), want);
        }
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        let mut s = "aé€😀".repeat(3);
        truncate_on_char_boundary(&mut s, 5);
        assert_eq!(s, "aé");
        let mut s = "😀".to_string();
        truncate_on_char_boundary(&mut s, 3);
        assert_eq!(s, "");
        assert_eq!(truncate_utf8("aé€", 2), "a");
        assert_eq!(truncate_utf8("aé€", 3), "aé");
    }

    #[test]
    fn the_throttle_lets_one_line_a_second_through_and_counts_the_rest() {
        let t = LogThrottle::default();
        assert_eq!(t.allow(10_000), Some(0));
        assert_eq!((0..5).filter_map(|_| t.allow(10_500)).count(), 0);
        assert_eq!(t.allow(11_000), Some(5));
    }
}
