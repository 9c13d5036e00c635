//! Reading the operations kit as Prometheus would: rule files, the PromQL
//! selectors of their expressions, scrape text, and the dashboard's queries.

use super::*;

// ---------------------------------------------------------------------------------------------------
// Rule files: the YAML subset the project's rule files are written in (Cargo.toml has no YAML crate).
// `- alert:`/`- record:` start a rule; `expr:` is a plain or quoted scalar, or a `|`/`>` block scalar.
// The parse is cross-checked against the number of rules in the file and, in the Prometheus test,
// against the rules the real Prometheus loaded.
// ---------------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Kind {
    Alert,
    Record,
}

#[derive(Debug, Clone)]
pub(super) struct Rule {
    pub(super) kind: Kind,
    pub(super) name: String,
    pub(super) expr: String,
    pub(super) severity: Option<String>,
}

pub(super) fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

pub(super) fn unquote(v: &str) -> String {
    let v = v.trim();
    if v.len() >= 2 && v.starts_with('\'') && v.ends_with('\'') {
        v[1..v.len() - 1].replace("''", "'")
    } else if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
        v[1..v.len() - 1]
            .replace("\\\"", "\"")
            .replace("\\\\", "\\")
    } else {
        v.to_string()
    }
}

pub(super) fn parse_rules(text: &str) -> Vec<Rule> {
    let lines: Vec<&str> = text.lines().collect();
    let mut rules: Vec<Rule> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let t = line.trim_start();
        i += 1;
        if t.starts_with('#') {
            continue;
        }
        for (prefix, kind) in [("- alert:", Kind::Alert), ("- record:", Kind::Record)] {
            if let Some(name) = t.strip_prefix(prefix) {
                rules.push(Rule {
                    kind,
                    name: unquote(name),
                    expr: String::new(),
                    severity: None,
                });
            }
        }
        let Some(rule) = rules.last_mut() else {
            continue;
        };
        if let Some(v) = t.strip_prefix("severity:") {
            rule.severity = Some(unquote(v));
        }
        if let Some(v) = t.strip_prefix("expr:") {
            let v = v.trim();
            if v.starts_with('|') || v.starts_with('>') {
                let key_indent = indent_of(line);
                let mut block = Vec::new();
                while i < lines.len()
                    && (lines[i].trim().is_empty() || indent_of(lines[i]) > key_indent)
                {
                    block.push(lines[i].trim());
                    i += 1;
                }
                rule.expr = block.join("\n").trim().to_string();
            } else {
                rule.expr = unquote(v);
            }
        }
    }
    rules
}

pub(super) fn project_rules() -> Vec<Rule> {
    let mut rules = Vec::new();
    for file in [ALERT_RULES, RECORDING_RULES] {
        let text = read_repo_file(file);
        let parsed = parse_rules(&text);
        let declared = text
            .lines()
            .filter(|l| {
                let t = l.trim_start();
                t.starts_with("- alert:") || t.starts_with("- record:")
            })
            .count();
        assert_eq!(parsed.len(), declared, "{file}: rules parsed vs declared");
        for r in &parsed {
            assert!(!r.expr.is_empty(), "{file}: rule {} has no expr", r.name);
            if r.kind == Kind::Alert {
                assert!(
                    r.severity.is_some(),
                    "{file}: alert {} has no severity",
                    r.name
                );
            }
        }
        rules.extend(parsed);
    }
    assert!(
        rules.iter().filter(|r| r.kind == Kind::Alert).count() >= 15,
        "expected the runbook alerts in {ALERT_RULES}"
    );
    rules
}

// ---------------------------------------------------------------------------------------------------
// PromQL: the vector selectors of an expression (metric name + label matchers). Functions, aggregation
// operators, keywords, grouping label lists, range/offset durations, numbers and strings are skipped.
// ---------------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Matcher {
    pub(super) label: String,
    pub(super) op: String,
    pub(super) value: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Selector {
    pub(super) metric: String,
    pub(super) matchers: Vec<Matcher>,
}

pub(super) const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
pub(super) const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
pub(super) const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
];

pub(super) fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c == b':'
}

pub(super) fn is_ident_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b':'
}

/// Index just past the string literal starting at `i` (quote char at `b[i]`).
pub(super) fn skip_string(b: &[u8], mut i: usize) -> usize {
    let q = b[i];
    i += 1;
    while i < b.len() && b[i] != q {
        if b[i] == b'\\' && q != b'`' {
            i += 1;
        }
        i += 1;
    }
    i + 1
}

/// Index just past the bracket group opened at `b[i]` (strings inside are skipped).
pub(super) fn skip_group(b: &[u8], mut i: usize, open: u8, close: u8) -> usize {
    let mut depth = 0;
    while i < b.len() {
        match b[i] {
            b'"' | b'\'' | b'`' => {
                i = skip_string(b, i);
                continue;
            }
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    i
}

pub(super) fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

pub(super) fn parse_matchers(inner: &str) -> Vec<Matcher> {
    let b = inner.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        i = skip_ws(b, i);
        while i < b.len() && (b[i] == b',' || b[i].is_ascii_whitespace()) {
            i += 1;
        }
        if i >= b.len() {
            return out;
        }
        let start = i;
        while i < b.len() && is_ident_char(b[i]) {
            i += 1;
        }
        let label = inner[start..i].to_string();
        i = skip_ws(b, i);
        let op_start = i;
        while i < b.len() && matches!(b[i], b'=' | b'!' | b'~') {
            i += 1;
        }
        let op = inner[op_start..i].to_string();
        i = skip_ws(b, i);
        assert!(
            i < b.len() && matches!(b[i], b'"' | b'\'' | b'`'),
            "label matcher without a quoted value in {{{inner}}}"
        );
        let end = skip_string(b, i);
        let value = inner[i + 1..end - 1]
            .replace("\\\"", "\"")
            .replace("\\\\", "\\");
        out.push(Matcher { label, op, value });
        i = end;
    }
}

pub(super) fn selectors(expr: &str) -> Vec<Selector> {
    let b = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'#' {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if matches!(c, b'"' | b'\'' | b'`') {
            i = skip_string(b, i);
        } else if c == b'[' {
            i = skip_group(b, i, b'[', b']');
        } else if c == b'{' {
            // A selector without a metric name: nothing to look up.
            i = skip_group(b, i, b'{', b'}');
        } else if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            i += 1;
            while i < b.len()
                && (b[i].is_ascii_alphanumeric()
                    || b[i] == b'.'
                    || (matches!(b[i], b'+' | b'-') && matches!(b[i - 1], b'e' | b'E')))
            {
                i += 1;
            }
        } else if is_ident_start(c) {
            let start = i;
            while i < b.len() && is_ident_char(b[i]) {
                i += 1;
            }
            let ident = &expr[start..i];
            let next = skip_ws(b, i);
            let lower = ident.to_ascii_lowercase();
            if GROUPING.contains(&lower.as_str()) {
                if b.get(next) == Some(&b'(') {
                    i = skip_group(b, next, b'(', b')');
                }
            } else if KEYWORDS.contains(&lower.as_str())
                || AGGREGATIONS.contains(&lower.as_str())
                || b.get(next) == Some(&b'(')
            {
                // keyword, aggregation operator or function call
            } else {
                let mut matchers = Vec::new();
                if b.get(next) == Some(&b'{') {
                    let end = skip_group(b, next, b'{', b'}');
                    matchers = parse_matchers(&expr[next + 1..end - 1]);
                    i = end;
                }
                out.push(Selector {
                    metric: ident.to_string(),
                    matchers,
                });
            }
        } else {
            i += 1;
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------------
// Prometheus text format: metric name -> label sets of its series.
// ---------------------------------------------------------------------------------------------------

pub(super) fn parse_labels(s: &str) -> HashMap<String, String> {
    parse_matchers(s)
        .into_iter()
        .map(|m| (m.label, m.value))
        .collect()
}

pub(super) fn parse_scrape(body: &str) -> HashMap<String, Vec<HashMap<String, String>>> {
    let mut out: HashMap<String, Vec<HashMap<String, String>>> = HashMap::new();
    for line in body.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, _value) = line.rsplit_once(' ').expect("sample line has a value");
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, parse_labels(rest.trim_end_matches('}'))),
            None => (series, HashMap::new()),
        };
        out.entry(name.to_string()).or_default().push(labels);
    }
    out
}

/// Every selector of every expression must name an exported metric, and every `=`/`=~` label matcher must
/// match an exported series. Returns the problems found.
pub(super) fn dead_references(
    exprs: &[(String, String)],
    recorded: &BTreeSet<String>,
    scrape: &HashMap<String, Vec<HashMap<String, String>>>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (owner, expr) in exprs {
        let sels = selectors(expr);
        assert!(!sels.is_empty(), "{owner}: no metric found in `{expr}`");
        for sel in sels {
            if PROMETHEUS_MADE.contains(&sel.metric.as_str()) || recorded.contains(&sel.metric) {
                continue;
            }
            let Some(series) = scrape.get(&sel.metric) else {
                problems.push(format!("{owner}: metric `{}` is not exported", sel.metric));
                continue;
            };
            for m in &sel.matchers {
                if TARGET_LABELS.contains(&m.label.as_str()) {
                    continue;
                }
                let wanted: Vec<String> = match m.op.as_str() {
                    "=" => vec![m.value.clone()],
                    "=~" => {
                        assert!(
                            !m.value.contains(|c: char| "[](){}.*+?^$\\".contains(c)),
                            "{owner}: only literal alternations (a|b) are checked, got {:?}",
                            m.value
                        );
                        m.value.split('|').map(str::to_string).collect()
                    }
                    _ => continue,
                };
                for w in wanted {
                    if !series.iter().any(|labels| labels.get(&m.label) == Some(&w)) {
                        problems.push(format!(
                            "{owner}: no series {}{{{}=\"{w}\"}} is exported",
                            sel.metric, m.label
                        ));
                    }
                }
            }
        }
    }
    problems
}

pub(super) fn dashboard_exprs() -> Vec<(String, String)> {
    fn walk(v: &serde_json::Value, title: &str, out: &mut Vec<(String, String)>) {
        match v {
            serde_json::Value::Object(map) => {
                let title = map
                    .get("title")
                    .and_then(|t| t.as_str())
                    .unwrap_or(title)
                    .to_string();
                if let Some(e) = map.get("expr").and_then(|e| e.as_str()) {
                    out.push((format!("dashboard panel '{title}'"), e.to_string()));
                }
                for child in map.values() {
                    walk(child, &title, out);
                }
            }
            serde_json::Value::Array(items) => {
                for child in items {
                    walk(child, title, out);
                }
            }
            _ => {}
        }
    }
    let json: serde_json::Value =
        serde_json::from_str(&read_repo_file(DASHBOARD)).expect("dashboard is JSON");
    let mut out = Vec::new();
    walk(&json, "", &mut out);
    assert!(out.len() >= 10, "dashboard queries found: {}", out.len());
    out
}

#[test]
fn promql_selector_extraction_understands_the_rule_syntax() {
    let s = selectors(
        r#"histogram_quantile(0.99, sum by (le) (rate(websocket_e2e_latency_ms_bucket[5m]))) > 500
           and on(instance) sum without (reason) (increase(a_total{reason=~"x|y", job="j"}[10m] offset 1h)) / clamp_min(b, 1e-9)
           or up{job="kafka-ws-bridge"} == bool 0 unless kafka_ws_bridge:x:rate5m"#,
    );
    let names: Vec<&str> = s.iter().map(|x| x.metric.as_str()).collect();
    assert_eq!(
        names,
        [
            "websocket_e2e_latency_ms_bucket",
            "a_total",
            "b",
            "up",
            "kafka_ws_bridge:x:rate5m"
        ]
    );
    assert_eq!(
        s[1].matchers,
        vec![
            Matcher {
                label: "reason".into(),
                op: "=~".into(),
                value: "x|y".into()
            },
            Matcher {
                label: "job".into(),
                op: "=".into(),
                value: "j".into()
            }
        ]
    );
    // The dead-reference check flags a missing metric and a missing label value, and nothing else.
    let scrape = parse_scrape(
        "# TYPE a_total counter\na_total{reason=\"x\"} 1\nb 0\nhist_bucket{le=\"+Inf\"} 3\n",
    );
    let recorded = BTreeSet::from(["r:x:sum".to_string()]);
    let exprs = vec![(
        "alert T".to_string(),
        r#"sum(rate(a_total{reason=~"x|y", job="j"}[5m])) / clamp_min(b, 1) + r:x:sum
           + histogram_quantile(0.9, rate(hist_bucket[5m])) + missing_total + up{job="x"}"#
            .to_string(),
    )];
    let problems = dead_references(&exprs, &recorded, &scrape);
    assert_eq!(
        problems,
        vec![
            "alert T: no series a_total{reason=\"y\"} is exported".to_string(),
            "alert T: metric `missing_total` is not exported".to_string(),
        ]
    );

    let rules = parse_rules(
        "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: |\n          sum(x)\n            > 1\n        for: 1m\n        labels:\n          severity: high\n      - record: r:x:sum\n        expr: 'sum(y{a=\"b\"})'\n",
    );
    assert_eq!(rules.len(), 2);
    assert_eq!(rules[0].expr, "sum(x)\n> 1");
    assert_eq!(rules[0].severity.as_deref(), Some("high"));
    assert_eq!(rules[1].expr, "sum(y{a=\"b\"})");
}
