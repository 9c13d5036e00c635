//! What the bridge's integration tests (`tests/it`) and benchmarks (`bench/`)
//! share, and nothing bridge-specific: free ports and unique names, an HTTP
//! client, Prometheus text, topic creation, WebSocket connections, and child
//! processes whose output goes to a log file and which are killed when dropped.

pub mod http;
pub mod kafka;
pub mod net;
pub mod process;
pub mod prom;
pub mod rawws;
pub mod ws;
