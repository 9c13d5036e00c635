//! kafka-ws-bridge: streams DashStream v1 telemetry from Kafka to WebSocket
//! dashboards. See docs/ARCHITECTURE.md for the map of stages.

pub mod admission;
pub mod auth;
pub mod backpressure;
pub mod config;
pub mod consume;
pub mod decode;
pub mod dlq;
pub mod dlq_tools;
pub mod fanout;
pub mod frame;
pub mod health;
pub mod http;
pub mod offsets;
pub mod pipeline;
pub mod produce;
pub mod ratelimit;
pub mod replay;
pub mod replay_kafka;
pub mod replay_redis;
pub mod resume;
pub mod sequence;
pub mod serve;
pub mod session;
pub mod shutdown;
pub mod synth;
pub mod tail;
pub mod telemetry;
pub mod web;

/// Generated DashStream v1 types (prost) with proto3-JSON serde impls (pbjson).
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/dashstream.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/dashstream.v1.serde.rs"));
}
