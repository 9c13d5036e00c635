//! The command line: `serve`, `produce`, `tail`, `dlq inspect`, `dlq redrive`;
//! the runtime and the exit code. The other subcommands live here too:
//! `produce` (synthetic records, [`synth`]) and `tail` (prints a bridge's frames).

pub(crate) mod produce;
pub(crate) mod synth;
pub(crate) mod tail;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::ServeArgs;
use crate::dlq::tools;
use crate::settings::LogFormat;
use crate::{serve, shutdown, telemetry};

#[derive(Parser)]
#[command(
    name = "kafka-ws-bridge",
    version,
    about = "Streams DashStream telemetry from Kafka to WebSocket dashboards"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
// Parsed once at start-up: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Run the bridge.
    Serve(ServeArgs),
    /// Send synthetic DashStream records to a topic.
    Produce(produce::ProduceArgs),
    /// Print frames from a bridge's WebSocket as JSON lines.
    Tail(tail::TailArgs),
    /// Read and redrive the dead-letter topic.
    #[command(subcommand)]
    Dlq(tools::DlqCommand),
}

/// Parses the command line, runs the command, and maps the result to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        // Signals first: one arriving during start-up must not be lost.
        let token = shutdown::install()?;
        match cli.command {
            Command::Serve(args) => {
                let _logs = telemetry::init_logging(args.log_format == LogFormat::Json);
                let cfg = args.validate()?;
                let listener = tokio::select! {
                    _ = token.cancelled() => return Ok(()),
                    l = serve::bind(&cfg) => l?,
                };
                serve::run(cfg, listener, token).await
            }
            Command::Produce(args) => {
                let _logs = telemetry::init_logging(false);
                produce::run(args, token).await
            }
            Command::Tail(args) => tail::run(args).await,
            Command::Dlq(tools::DlqCommand::Inspect(args)) => {
                tokio::task::spawn_blocking(move || tools::inspect(&args)).await?
            }
            Command::Dlq(tools::DlqCommand::Redrive(args)) => tools::redrive(&args).await,
        }
    });
    // Never wait on blocking tasks (e.g. a broker that does not answer) at exit.
    rt.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
