//! Command-line entry point; see [`kafka_ws_bridge::cli`].

fn main() -> std::process::ExitCode {
    kafka_ws_bridge::main()
}
