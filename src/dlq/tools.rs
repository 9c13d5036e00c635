//! Operator tools for the dead-letter topic: `dlq inspect` summarises or
//! prints DLQ records; `dlq redrive` re-produces selected records' original
//! bytes to their source topic (or another), rate-limited, with an attempt
//! count so a record that keeps failing is not redriven forever.
//!
//! Both read the DLQ topic from the beginning to its current end (detected by
//! partition EOF, which works on every broker), without joining a group or
//! committing anything.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use clap::{Args, Subcommand, ValueEnum};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

use crate::dlq::document::REDRIVE_ATTEMPT_HEADER;
use crate::settings::KafkaArgs;

#[derive(Subcommand, Clone, Debug)]
pub(crate) enum DlqCommand {
    /// Summarise DLQ records, or print them as JSON lines.
    Inspect(InspectArgs),
    /// Re-produce selected DLQ records' original bytes to a topic.
    Redrive(RedriveArgs),
}

#[derive(Args, Clone, Debug)]
pub(crate) struct Selection {
    #[command(flatten)]
    pub(crate) kafka: KafkaArgs,
    /// DLQ topic (default: `${KAFKA_TOPIC}-dlq`).
    #[arg(long, env = "KAFKA_DLQ_TOPIC")]
    pub(crate) dlq_topic: Option<String>,
    /// Brokers of the DLQ topic's cluster, when it is not the main one (KAFKA_BROKERS).
    #[arg(long, env = "KAFKA_DLQ_BROKERS")]
    pub(crate) dlq_brokers: Option<String>,
    /// Only these error types (repeatable).
    #[arg(long = "error-type")]
    pub(crate) error_types: Vec<String>,
    /// Only records of this thread (original_message.thread_id).
    #[arg(long)]
    pub(crate) thread: Option<String>,
    /// Only records from this source partition.
    #[arg(long)]
    pub(crate) source_partition: Option<i32>,
    /// Only source offsets in this inclusive range, e.g. 100-200.
    #[arg(long, value_parser = parse_range)]
    pub(crate) source_offsets: Option<(i64, i64)>,
    /// Only records written to the DLQ at or after this time (Unix ms, or RFC 3339 UTC like 2026-01-02T03:04:05Z).
    #[arg(long, value_parser = parse_time)]
    pub(crate) since: Option<i64>,
    /// Only records written to the DLQ before this time (same formats).
    #[arg(long, value_parser = parse_time)]
    pub(crate) until: Option<i64>,
    /// Give up reading after this long without a record.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) idle_timeout_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum InspectFormat {
    /// Human-readable summary.
    Summary,
    /// Summary as one JSON document.
    Json,
    /// Every selected record as a JSON line.
    Jsonl,
}

#[derive(Args, Clone, Debug)]
pub(crate) struct InspectArgs {
    #[command(flatten)]
    pub(crate) select: Selection,
    #[arg(long, value_enum, default_value = "summary")]
    pub(crate) format: InspectFormat,
}

#[derive(Args, Clone, Debug)]
pub(crate) struct RedriveArgs {
    #[command(flatten)]
    pub(crate) select: Selection,
    /// Target topic (default: each record's source topic).
    #[arg(long)]
    pub(crate) to_topic: Option<String>,
    /// Show what would be redriven without producing anything.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Records per second at most.
    #[arg(long, default_value_t = 100.0)]
    pub(crate) rate: f64,
    /// Refuse records already redriven this many times.
    #[arg(long, default_value_t = 3)]
    pub(crate) max_attempts: u32,
}

fn parse_range(s: &str) -> Result<(i64, i64), String> {
    let (a, b) = s.split_once('-').ok_or("expected FROM-TO, e.g. 100-200")?;
    let a: i64 = a
        .trim()
        .parse()
        .map_err(|_| format!("'{a}' is not an offset"))?;
    let b: i64 = b
        .trim()
        .parse()
        .map_err(|_| format!("'{b}' is not an offset"))?;
    if a > b {
        return Err("FROM must not exceed TO".into());
    }
    Ok((a, b))
}

/// Unix milliseconds, or `YYYY-MM-DDTHH:MM:SSZ`.
fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    let bad = || format!("'{s}' is neither Unix milliseconds nor YYYY-MM-DDTHH:MM:SSZ");
    let b = s.as_bytes();
    if b.len() != 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'Z'
    {
        return Err(bad());
    }
    let n =
        |r: std::ops::Range<usize>| s.get(r).and_then(|x| x.parse::<i64>().ok()).ok_or_else(bad);
    let (y, mo, d, h, mi, se) = (
        n(0..4)?,
        n(5..7)?,
        n(8..10)?,
        n(11..13)?,
        n(14..16)?,
        n(17..19)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return Err(bad());
    }
    // Days from civil date (proleptic Gregorian), after H. Hinnant.
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * (if mo > 2 { mo - 3 } else { mo + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(((days * 86_400) + h * 3600 + mi * 60 + se) * 1000)
}

/// One DLQ record as read back.
pub(crate) struct Entry {
    pub(crate) doc: Value,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) headers: Vec<(String, Vec<u8>)>,
    pub(crate) dlq_partition: i32,
    pub(crate) dlq_offset: i64,
    pub(crate) timestamp_ms: Option<i64>,
}

impl Selection {
    fn dlq_topic(&self) -> String {
        self.dlq_topic
            .clone()
            .unwrap_or_else(|| format!("{}-dlq", self.kafka.kafka_topic))
    }

    fn matches(&self, e: &Entry) -> bool {
        let d = &e.doc;
        if !self.error_types.is_empty()
            && !self
                .error_types
                .iter()
                .any(|t| d["error_type"] == t.as_str())
        {
            return false;
        }
        if let Some(t) = &self.thread {
            if d["original_message"]["thread_id"] != t.as_str() {
                return false;
            }
        }
        if let Some(p) = self.source_partition {
            if d["source"]["partition"].as_i64() != Some(i64::from(p)) {
                return false;
            }
        }
        if let Some((a, b)) = self.source_offsets {
            match d["source"]["offset"].as_i64() {
                Some(o) if o >= a && o <= b => {}
                _ => return false,
            }
        }
        let ts = d["dlq_timestamp_ms"]
            .as_i64()
            .or(e.timestamp_ms)
            .unwrap_or(0);
        self.since.is_none_or(|s| ts >= s) && self.until.is_none_or(|u| ts < u)
    }
}

/// Reads the DLQ topic from the beginning to its end, calling `f` for every
/// selected record. Returns (read, selected).
pub(crate) fn read(sel: &Selection, mut f: impl FnMut(Entry)) -> anyhow::Result<(u64, u64)> {
    let topic = sel.dlq_topic();
    let mut cfg = ClientConfig::new();
    let mut kafka = sel.kafka.clone();
    if let Some(b) = &sel.dlq_brokers {
        kafka.kafka_brokers = b.clone();
    }
    for (k, v) in kafka.client_properties()? {
        cfg.set(k, v);
    }
    cfg.set(
        "group.id",
        format!("kafka-ws-bridge-dlq-tool-{}", std::process::id()),
    )
    .set("enable.auto.commit", "false")
    .set("enable.partition.eof", "true");
    let consumer: BaseConsumer = cfg.create()?;
    let md = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
    let partitions: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        anyhow::bail!("DLQ topic '{topic}' not found (set --dlq-topic or KAFKA_DLQ_TOPIC)");
    }
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(&topic, *p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    drop(tpl);
    let mut at_end: BTreeMap<i32, bool> = partitions.iter().map(|p| (*p, false)).collect();
    let (mut read, mut selected) = (0u64, 0u64);
    let mut last = Instant::now();
    while at_end.values().any(|e| !e) {
        match consumer.poll(Duration::from_millis(200)) {
            None => {
                if last.elapsed() > Duration::from_millis(sel.idle_timeout_ms) {
                    eprintln!(
                        "warning: no record for {} ms before the end of every partition; stopping",
                        sel.idle_timeout_ms
                    );
                    break;
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p, true);
            }
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(m)) => {
                last = Instant::now();
                at_end.insert(m.partition(), false);
                read += 1;
                let doc: Value = match m.payload().map(serde_json::from_slice) {
                    Some(Ok(v)) => v,
                    _ => {
                        eprintln!(
                            "warning: DLQ record {}:{} is not a JSON document; skipped",
                            m.partition(),
                            m.offset()
                        );
                        continue;
                    }
                };
                let entry = Entry {
                    doc,
                    key: m.key().map(<[u8]>::to_vec),
                    headers: m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|x| (x.key.to_string(), x.value.unwrap_or_default().to_vec()))
                                .collect()
                        })
                        .unwrap_or_default(),
                    dlq_partition: m.partition(),
                    dlq_offset: m.offset(),
                    timestamp_ms: m.timestamp().to_millis(),
                };
                if sel.matches(&entry) {
                    selected += 1;
                    f(entry);
                }
            }
        }
    }
    Ok((read, selected))
}

#[derive(Default, serde::Serialize)]
struct Summary {
    read: u64,
    selected: u64,
    by_error_type: BTreeMap<String, u64>,
    by_stage: BTreeMap<String, u64>,
    by_source_partition: BTreeMap<String, u64>,
    by_thread: BTreeMap<String, u64>,
    payload_kept: u64,
    first_dlq_timestamp_ms: Option<i64>,
    last_dlq_timestamp_ms: Option<i64>,
}

pub(crate) fn inspect(args: &InspectArgs) -> anyhow::Result<()> {
    let mut s = Summary::default();
    let jsonl = args.format == InspectFormat::Jsonl;
    let (read, selected) = read(&args.select, |e| {
        if jsonl {
            let mut doc = e.doc;
            doc["dlq_partition"] = e.dlq_partition.into();
            doc["dlq_offset"] = e.dlq_offset.into();
            out(&doc.to_string());
            return;
        }
        let d = &e.doc;
        let name = |v: &Value| v.as_str().unwrap_or("(unknown)").to_string();
        *s.by_error_type.entry(name(&d["error_type"])).or_default() += 1;
        *s.by_stage.entry(name(&d["stage"])).or_default() += 1;
        *s.by_source_partition
            .entry(d["source"]["partition"].to_string())
            .or_default() += 1;
        let thread = d["original_message"]["thread_id"]
            .as_str()
            .filter(|t| !t.is_empty())
            .unwrap_or("(undecodable)");
        *s.by_thread.entry(thread.to_string()).or_default() += 1;
        if d["payload_base64"].is_string() && d["payload_truncated"] != true {
            s.payload_kept += 1;
        }
        if let Some(ts) = d["dlq_timestamp_ms"].as_i64() {
            s.first_dlq_timestamp_ms = Some(s.first_dlq_timestamp_ms.map_or(ts, |f| f.min(ts)));
            s.last_dlq_timestamp_ms = Some(s.last_dlq_timestamp_ms.map_or(ts, |l| l.max(ts)));
        }
    })?;
    s.read = read;
    s.selected = selected;
    match args.format {
        InspectFormat::Jsonl => {}
        InspectFormat::Json => out(&serde_json::to_string_pretty(&s)?),
        InspectFormat::Summary => print_summary(&s),
    }
    Ok(())
}

/// Prints a line; exits quietly when stdout is closed (e.g. `| head`).
fn out(line: &str) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    if writeln!(o, "{line}").is_err() {
        std::process::exit(0);
    }
}

macro_rules! out {
    ($($t:tt)*) => { out(&format!($($t)*)) };
}

fn print_summary(s: &Summary) {
    out!(
        "DLQ records read: {}, selected: {} (original payload kept for {})",
        s.read,
        s.selected,
        s.payload_kept
    );
    if let (Some(a), Some(b)) = (s.first_dlq_timestamp_ms, s.last_dlq_timestamp_ms) {
        out!("written between {a} and {b} (Unix ms)");
    }
    let table = |title: &str, m: &BTreeMap<String, u64>| {
        out!("\n{title}:");
        let mut v: Vec<_> = m.iter().collect();
        v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (k, n) in v.iter().take(20) {
            out!("  {n:>8}  {k}");
        }
        if v.len() > 20 {
            out!("  ... {} more", v.len() - 20);
        }
    };
    table("by error_type", &s.by_error_type);
    table("by stage", &s.by_stage);
    table("by source partition", &s.by_source_partition);
    table("by thread", &s.by_thread);
}

/// Why a selected record was not redriven.
fn refusal(doc: &Value, max_attempts: u32) -> Option<&'static str> {
    if !doc["payload_base64"].is_string() {
        return Some("payload_not_kept");
    }
    if doc["payload_truncated"] == true {
        return Some("payload_truncated");
    }
    if doc["redrive_attempts"].as_u64().unwrap_or(0) >= u64::from(max_attempts) {
        return Some("attempt_limit_reached");
    }
    None
}

pub(crate) async fn redrive(args: &RedriveArgs) -> anyhow::Result<()> {
    if !(args.rate > 0.0 && args.rate.is_finite()) {
        anyhow::bail!("--rate must be a positive number");
    }
    let sel = args.select.clone();
    let max = args.max_attempts;
    let (read, selected, todo, mut refused) = tokio::task::spawn_blocking(move || {
        let mut todo = Vec::new();
        let mut refused: BTreeMap<&'static str, u64> = BTreeMap::new();
        let r = read(&sel, |e| match refusal(&e.doc, max) {
            Some(why) => {
                eprintln!(
                    "refused {}:{} (source {}:{}): {why}",
                    e.dlq_partition,
                    e.dlq_offset,
                    e.doc["source"]["partition"],
                    e.doc["source"]["offset"]
                );
                *refused.entry(why).or_default() += 1;
            }
            None => todo.push(e),
        });
        r.map(|(a, b)| (a, b, todo, refused))
    })
    .await??;

    let producer: Option<FutureProducer> = if args.dry_run {
        None
    } else {
        let mut cfg = ClientConfig::new();
        for (k, v) in args.select.kafka.client_properties()? {
            cfg.set(k, v);
        }
        cfg.set("message.timeout.ms", "30000");
        Some(cfg.create()?)
    };
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let started = Instant::now();
    let (mut redriven, mut failed) = (0u64, 0u64);
    for (i, e) in todo.iter().enumerate() {
        let target = args
            .to_topic
            .clone()
            .or_else(|| e.doc["source"]["topic"].as_str().map(String::from));
        let Some(target) = target else {
            *refused.entry("no_source_topic").or_default() += 1;
            continue;
        };
        let Some(payload) = e.doc["payload_base64"]
            .as_str()
            .and_then(|p| base64::engine::general_purpose::STANDARD.decode(p).ok())
        else {
            *refused.entry("payload_not_base64").or_default() += 1;
            continue;
        };
        let attempt = e.doc["redrive_attempts"].as_u64().unwrap_or(0) + 1;
        let line = serde_json::json!({
            "dlq_partition": e.dlq_partition, "dlq_offset": e.dlq_offset, "to_topic": target,
            "source": e.doc["source"], "error_type": e.doc["error_type"], "attempt": attempt, "dry_run": args.dry_run,
        });
        out(&line.to_string());
        let Some(p) = &producer else { continue };
        let due = started + interval.mul_f64(i as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        let mut headers = OwnedHeaders::new();
        for (k, v) in e
            .headers
            .iter()
            .filter(|(k, _)| !k.starts_with("__connect.errors.") && k != REDRIVE_ATTEMPT_HEADER)
        {
            headers = headers.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        let attempt_text = attempt.to_string();
        headers = headers.insert(Header {
            key: REDRIVE_ATTEMPT_HEADER,
            value: Some(&attempt_text),
        });
        let mut rec = FutureRecord::to(&target).payload(&payload).headers(headers);
        if let Some(k) = &e.key {
            rec = rec.key(k);
        }
        match p.send(rec, Duration::from_secs(30)).await {
            Ok(_) => redriven += 1,
            Err((err, _)) => {
                failed += 1;
                eprintln!(
                    "failed to redrive {}:{}: {err}",
                    e.dlq_partition, e.dlq_offset
                );
            }
        }
    }
    let summary = serde_json::json!({
        "read": read, "selected": selected, "redriven": redriven, "failed": failed,
        "would_redrive": if args.dry_run { todo.len() } else { 0 },
        "refused": refused, "dry_run": args.dry_run,
    });
    out(&summary.to_string());
    if failed > 0 {
        anyhow::bail!("{failed} record(s) could not be redriven");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_ranges_parse() {
        assert_eq!(parse_time("1700000000000"), Ok(1_700_000_000_000));
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_time("2026-01-02T03:04:05Z"), Ok(1_767_323_045_000));
        assert!(parse_time("2026-13-02T03:04:05Z").is_err());
        assert!(parse_time("yesterday").is_err());
        assert_eq!(parse_range("5-9"), Ok((5, 9)));
        assert!(parse_range("9-5").is_err());
    }

    #[test]
    fn redrive_refuses_what_it_cannot_or_must_not_send() {
        let ok = serde_json::json!({"payload_base64": "AA==", "payload_truncated": false, "redrive_attempts": 0});
        assert_eq!(refusal(&ok, 3), None);
        assert_eq!(
            refusal(&serde_json::json!({"payload_base64": null}), 3),
            Some("payload_not_kept")
        );
        assert_eq!(
            refusal(
                &serde_json::json!({"payload_base64": "AA==", "payload_truncated": true}),
                3
            ),
            Some("payload_truncated")
        );
        assert_eq!(
            refusal(
                &serde_json::json!({"payload_base64": "AA==", "redrive_attempts": 3}),
                3
            ),
            Some("attempt_limit_reached")
        );
    }
}
