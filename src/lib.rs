//! kafka-ws-bridge: streams DashStream v1 telemetry from Kafka to WebSocket
//! dashboards. See docs/ARCHITECTURE.md for the map of stages.
//!
//! The crate is the `kafka-ws-bridge` binary; what it exports here is what
//! that binary, the benchmarks and the tests use: the command line, the wire
//! format (encode, decode, the binary envelope), the synthetic producer and
//! the signed-token helper.

mod cli;
mod config;
mod dlq;
mod http;
mod hub;
mod ingest;
mod record;
mod replay;
mod serve;
mod session;
mod settings;
mod shutdown;
mod telemetry;
mod util;

pub use cli::main;
pub use cli::synth::{now_us, Generator, Injected, SynthConfig, SynthRecord};
pub use http::auth::sign;
pub use record::decode::MessageKind;
pub use record::decode::{decode, encode_record, DecodeError, DecodeLimits, Decoded};
pub use record::frame::{envelope_to_json, parse_envelope, Cursor, Envelope, EnvelopeError};

/// Metric names the benchmarks read from `/metrics` (the catalog is `telemetry`).
pub mod metric_names {
    pub use crate::telemetry::{
        CLIENT_LAG_MESSAGES, DROPPED_MESSAGES, DROP_LAGGED_RECEIVER, FRAMES_SENT, REPLAY_KAFKA_HITS,
    };
}

/// Generated DashStream v1 types (prost) with proto3-JSON serde impls (pbjson).
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/dashstream.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/dashstream.v1.serde.rs"));
}
