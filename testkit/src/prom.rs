//! Prometheus text exposition, as scraped from `/metrics`.

use std::collections::HashMap;

/// `name{labels}` → value, one entry per sample line.
pub fn parse(body: &str) -> HashMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// The sum of every sample of `name` whose labels contain `label` (empty:
/// every sample); `None` when there is none.
pub fn sum(body: &str, name: &str, label: &str) -> Option<f64> {
    let mut total = None;
    for (k, v) in parse(body) {
        let (metric, labels) = k.split_once('{').unwrap_or((k.as_str(), ""));
        if metric == name && labels.contains(label) {
            *total.get_or_insert(0.0) += v;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_summed_by_name_and_label() {
        let body = "# HELP x help\nx{reason=\"a\"} 2\nx{reason=\"b\"} 3\nxy 7\ny 1\n";
        assert_eq!(sum(body, "x", ""), Some(5.0));
        assert_eq!(sum(body, "x", "reason=\"b\""), Some(3.0));
        assert_eq!(sum(body, "xy", ""), Some(7.0));
        assert_eq!(sum(body, "z", ""), None);
        assert_eq!(parse(body)["y"], 1.0);
    }
}
