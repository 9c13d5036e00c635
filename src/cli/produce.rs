//! `produce`: sends synthetic DashStream records (see [`crate::cli::synth`]) to a
//! topic at a fixed rate, for demos, tests and load. Prints a JSON summary of
//! what it sent and injected.

use std::time::{Duration, Instant};

use clap::Args;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use tokio_util::sync::CancellationToken;

use crate::cli::synth::{parse_mix, Generator, SynthConfig};
use crate::settings::KafkaArgs;

#[derive(Args, Clone, Debug)]
pub(crate) struct ProduceArgs {
    #[command(flatten)]
    pub(crate) kafka: KafkaArgs,
    /// Number of DashStream threads (each keyed to keep its order).
    #[arg(long, default_value_t = 10)]
    pub(crate) threads: usize,
    #[arg(long, default_value_t = 3)]
    pub(crate) tenants: usize,
    #[arg(long, default_value = "thread")]
    pub(crate) thread_prefix: String,
    /// Records per second (0 = as fast as possible).
    #[arg(long, default_value_t = 100.0)]
    pub(crate) rate: f64,
    /// Records to send (0 = until interrupted).
    #[arg(long, default_value_t = 0)]
    pub(crate) count: u64,
    /// Message mix as type=weight pairs.
    #[arg(
        long,
        default_value = "event=5,token_chunk=3,state_diff=1,tool_execution=1,metrics=1,error=1"
    )]
    pub(crate) mix: String,
    /// zstd-compress bodies at this level (frame byte 0x01).
    #[arg(long)]
    pub(crate) zstd_level: Option<i32>,
    #[arg(long, default_value_t = 0)]
    pub(crate) gap_every: u64,
    #[arg(long, default_value_t = 0)]
    pub(crate) duplicate_every: u64,
    #[arg(long, default_value_t = 0)]
    pub(crate) reorder_every: u64,
    #[arg(long, default_value_t = 0)]
    pub(crate) garbage_every: u64,
}

pub(crate) async fn run(args: ProduceArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mix = parse_mix(&args.mix).map_err(|e| anyhow::anyhow!("--mix: {e}"))?;
    if args.threads == 0 {
        anyhow::bail!("--threads must be at least 1");
    }
    if !(args.rate >= 0.0 && args.rate.is_finite()) {
        anyhow::bail!("--rate must be a non-negative number");
    }
    let mut cfg = ClientConfig::new();
    // A short linger by default; pass-through properties may override it.
    cfg.set("linger.ms", "5");
    for (k, v) in args.kafka.client_properties()? {
        cfg.set(k, v);
    }
    let producer: ThreadedProducer<DefaultProducerContext> = cfg.create()?;
    let mut generator = Generator::new(SynthConfig {
        threads: args.threads,
        tenants: args.tenants,
        thread_prefix: args.thread_prefix.clone(),
        mix,
        zstd_level: args.zstd_level,
        gap_every: args.gap_every,
        duplicate_every: args.duplicate_every,
        reorder_every: args.reorder_every,
        garbage_every: args.garbage_every,
    });
    let started = Instant::now();
    let mut sent = 0u64;
    let interval = (args.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / args.rate));
    while (args.count == 0 || sent < args.count) && !shutdown.is_cancelled() {
        let Some(rec) = generator.next() else { break };
        loop {
            let r = BaseRecord::to(&args.kafka.kafka_topic)
                .key(rec.key.as_bytes())
                .payload(&rec.value);
            match producer.send(r) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => anyhow::bail!("produce failed: {e}"),
            }
        }
        sent += 1;
        if let Some(iv) = interval {
            let due = started + iv.mul_f64(sent as f64);
            let now = Instant::now();
            if due > now {
                tokio::select! {
                    _ = tokio::time::sleep(due - now) => {}
                    _ = shutdown.cancelled() => {}
                }
            }
        }
    }
    let p = producer;
    tokio::task::spawn_blocking(move || p.flush(Duration::from_secs(30))).await??;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"sent": sent, "seconds": secs, "rate": sent as f64 / secs.max(1e-9), "injected": generator.injected})
    );
    Ok(())
}
