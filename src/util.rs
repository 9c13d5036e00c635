//! Small helpers shared by several stages.

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
    fn truncation_respects_char_boundaries() {
        let mut s = "aé€😀".repeat(3);
        truncate_on_char_boundary(&mut s, 5);
        assert_eq!(s, "aé");
        let mut s = "😀".to_string();
        truncate_on_char_boundary(&mut s, 3);
        assert_eq!(s, "");
    }
}
