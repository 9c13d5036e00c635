//! kafka-ws-bridge: streams DashStream v1 telemetry from Kafka to WebSocket
//! dashboards. See docs/ARCHITECTURE.md for the map of stages.

pub mod cli;
pub mod config;
pub mod dlq;
pub mod http;
pub mod hub;
pub mod ingest;
pub mod record;
pub mod replay;
pub mod serve;
pub mod session;
pub mod shutdown;
pub mod telemetry;
pub mod util;

/// Generated DashStream v1 types (prost) with proto3-JSON serde impls (pbjson).
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/dashstream.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/dashstream.v1.serde.rs"));
}
