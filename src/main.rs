//! Command-line entry point; see [`kafka_ws_bridge::cli`].

/// Many small, short-lived allocations cross threads here (frames appended
/// by ingest, freed by whichever thread evicts them); glibc's allocator
/// spends a fifth of ingest consolidating its free lists under that load.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    kafka_ws_bridge::main()
}
