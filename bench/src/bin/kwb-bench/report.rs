//! The tables on stdout and the JSON line.

use super::*;

pub(crate) fn fmt_opt(v: Option<f64>, prec: usize) -> String {
    v.map_or("-".to_string(), |x| format!("{x:.prec$}"))
}

pub(crate) fn print_report(
    ctx: &Ctx,
    produced: &Produced,
    ceiling: &Ceiling,
    ingest: &[Ingest],
    lat: &Latency,
    idle: Option<&Idle>,
) {
    print_tables(ctx, produced, ceiling, ingest, lat);
    if let Some(i) = idle {
        println!(
            "\nidle connections: {} clients, bridge RSS {} KiB -> {} KiB: {:.0} B per connection",
            i.connections,
            i.rss_before_kb,
            i.rss_after_kb,
            i.per_connection_bytes()
        );
    }
}

fn print_tables(
    ctx: &Ctx,
    produced: &Produced,
    ceiling: &Ceiling,
    ingest: &[Ingest],
    lat: &Latency,
) {
    let a = &ctx.args;
    println!();
    println!(
        "kwb-bench: {} records (avg value {:.0} B), {} partitions, broker {}; produced at {:.0} records/s",
        a.records,
        produced.avg_value_bytes(),
        a.partitions,
        a.brokers,
        produced.rate()
    );
    println!();
    print_throughput(ceiling, ingest);
    println!();
    print_latency(lat);
    warn_if_busy(ceiling, ingest);
    println!();
}

/// Other processes competing for the CPU make every figure an underestimate: say so.
pub(crate) fn warn_if_busy(ceiling: &Ceiling, ingest: &[Ingest]) {
    let phases = std::iter::once(("ceiling".to_string(), &ceiling.cpu)).chain(
        ingest
            .iter()
            .map(|r| (format!("{} client(s)", r.clients), &r.cpu)),
    );
    for (name, cpu) in phases {
        if let Some(p) = cpu.pct(cpu.other).filter(|&p| p > 20.0) {
            println!(
                "WARNING: other processes used {p:.0}% of a core during the {name} run: its figures are too low"
            );
        }
    }
}

pub(crate) const THROUGHPUT_ROW: usize = 9;

pub(crate) fn throughput_row(cells: [String; THROUGHPUT_ROW]) {
    let [a, b, c, d, e, f, g, h, i] = cells;
    println!("{a:<22} {b:>10} {c:>9} {d:>8} {e:>15} {f:>7} {g:>10} {h:>9} {i:>18}");
}

pub(crate) fn print_throughput(ceiling: &Ceiling, ingest: &[Ingest]) {
    let pct = |c: &CpuUse, v: Option<f64>| c.pct(v).map_or("-".to_string(), |p| format!("{p:.0}%"));
    let cpu = |c: &CpuUse| [c.bridge, c.bench, c.broker, c.other].map(|v| pct(c, v));
    throughput_row(
        [
            "throughput",
            "records/s",
            "frames/s",
            "seconds",
            "frames/client",
            "dropped",
            "bridge CPU",
            "bench CPU",
            "broker (other) CPU",
        ]
        .map(String::from),
    );
    let [_, bench, broker, other] = cpu(&ceiling.cpu);
    throughput_row([
        "ceiling (librdkafka)".into(),
        format!("{:.0}", ceiling.rate()),
        "-".into(),
        format!("{:.2}", ceiling.transfer.as_secs_f64()),
        ceiling.records.to_string(),
        "-".into(),
        "-".into(),
        bench,
        format!("{broker} (other {other})"),
    ]);
    for r in ingest {
        let [bridge, bench, broker, other] = cpu(&r.cpu);
        let frames = if r.frames_min == r.frames_max {
            r.frames_min.to_string()
        } else {
            format!("{}..{}", r.frames_min, r.frames_max)
        };
        throughput_row([
            format!("bridge, {} client(s)", r.clients),
            fmt_opt(r.rate(), 0),
            fmt_opt(r.rate().map(|x| x * r.clients as f64), 0),
            fmt_opt(r.transfer.map(|d| d.as_secs_f64()), 2),
            frames,
            fmt_opt(r.counters.dropped_all, 0),
            bridge,
            bench,
            format!("{broker} (other {other})"),
        ]);
    }
    println!(
        "CPU: share of one core over the measured window (2 cores = 200%); the ceiling consumer runs inside the bench; other = rest of the machine."
    );
    for r in ingest {
        println!(
            "  {} client(s): {}/{} complete, frames lost per client min/median/max {}/{}/{}, bridge CPU {} µs/record, attempts {}, records_processed {}, frames_sent {}, caught up from Redis/Kafka {} (Kafka hits {}), dropped (lagged receiver) {}, lagged notices {}, samples parsed {}/{}{}, first-to-last client finish {} s, client ends {:?}",
            r.clients,
            r.complete_clients,
            r.clients,
            r.lost.0,
            r.lost.1,
            r.lost.2,
            fmt_opt(r.cpu_us_per_record(), 2),
            r.attempts,
            r.records_processed,
            fmt_opt(r.counters.frames_sent, 0),
            fmt_opt(r.counters.caught_up, 0),
            fmt_opt(r.counters.kafka_hits, 0),
            fmt_opt(r.counters.dropped_client_queue, 0),
            r.lagged_notices,
            r.samples_ok,
            r.samples_ok + r.samples_bad,
            r.sample_error
                .as_ref()
                .map_or(String::new(), |e| format!(" (first error: {e})")),
            fmt_opt(r.first_to_last_finish.map(|d| d.as_secs_f64()), 3),
            r.client_ends,
        );
    }
}

pub(crate) fn print_latency(lat: &Latency) {
    println!(
        "latency at {:.0} records/s for {} s: produced {} in {:.2} s; bridge client received {} (dropped {}); baseline consumer received {}",
        lat.rate,
        lat.secs,
        lat.produced,
        lat.produce_secs,
        lat.received,
        fmt_opt(lat.counters.dropped_all, 0),
        lat.bare_received
    );
    println!(
        "{:<42} {:>9} {:>9} {:>9} {:>9}",
        "latency", "p50 ms", "p99 ms", "p99.9 ms", "max ms"
    );
    for (name, d) in [
        ("producer stamp → bridge client", &lat.bridge),
        ("producer stamp → bare librdkafka consumer", &lat.bare),
        ("producer send → broker ack", &lat.ack),
    ] {
        println!(
            "{:<42} {:>9} {:>9} {:>9} {:>9}",
            name,
            fmt_opt(d.pct_ms(50.0), 2),
            fmt_opt(d.pct_ms(99.0), 2),
            fmt_opt(d.pct_ms(99.9), 2),
            fmt_opt(d.max_ms(), 2),
        );
    }
    if lat.decode_errors > 0 {
        println!(
            "  {} latency records could not be decoded",
            lat.decode_errors
        );
    }
}

pub(crate) fn report_json(
    ctx: &Ctx,
    topic: &str,
    produced: &Produced,
    ceiling: &Ceiling,
    ingest: &[Ingest],
    lat: &Latency,
    idle: Option<&Idle>,
) -> Value {
    let a = &ctx.args;
    let ingest: Vec<Value> = ingest
        .iter()
        .map(|r| {
            json!({
                "clients": r.clients,
                "records_per_s": r.rate(),
                "frames_per_s": r.rate().map(|x| x * r.clients as f64),
                "transfer_s": r.transfer.map(|d| d.as_secs_f64()),
                "complete_clients": r.complete_clients,
                "frames_min": r.frames_min,
                "frames_max": r.frames_max,
                "lost_per_client": {"min": r.lost.0, "median": r.lost.1, "max": r.lost.2},
                "bridge_cpu_us_per_record": r.cpu_us_per_record(),
                "metrics": r.counters.json(),
                "lagged_notices_dropped": r.lagged_notices,
                "bridge_records_processed": r.records_processed,
                "sample_frames_ok": r.samples_ok,
                "sample_frames_bad": r.samples_bad,
                "first_to_last_client_finish_s": r.first_to_last_finish.map(|d| d.as_secs_f64()),
                "attempts": r.attempts,
                "client_ends": r.client_ends,
                "cpu": r.cpu.json(),
                "bridge_log": r.log,
            })
        })
        .collect();
    json!({
        "kwb_bench": 1,
        "unix_ms": unix_ms() as u64,
        "brokers": a.brokers,
        "topic": topic,
        "records": a.records,
        "partitions": a.partitions,
        "avg_value_bytes": produced.avg_value_bytes(),
        "produce_records_per_s": produced.rate(),
        "ceiling": {
            "records_per_s": ceiling.rate(),
            "transfer_s": ceiling.transfer.as_secs_f64(),
            "first_record_after_s": ceiling.first_after.as_secs_f64(),
            "cpu": ceiling.cpu.json(),
        },
        "ingest": ingest,
        "idle": idle.map(Idle::json),
        "latency": {
            "rate": lat.rate,
            "secs": lat.secs,
            "producer_linger_ms": a.latency_linger_ms,
            "produced": lat.produced,
            "produce_s": lat.produce_secs,
            "received": lat.received,
            "decode_errors": lat.decode_errors,
            "metrics": lat.counters.json(),
            "bare_received": lat.bare_received,
            "bridge_client": lat.bridge.json(),
            "bare_consumer": lat.bare.json(),
            "producer_ack": lat.ack.json(),
            "bridge_log": lat.log,
        },
        "bridge_settings": "defaults",
        "session_timeout_ms": a.session_timeout_ms,
        "bridge_kafka_properties": a.bridge_kafka_properties,
    })
}
