//! The hub's settings: the priority of message types (used only at CRITICAL
//! backpressure), how long ingest waits for a reader that stopped reading,
//! and the per-client queue settings that the log replaced.

use std::time::Duration;

use clap::Args;

use crate::hub::{DeliveryLimits, PriorityTable};
use crate::settings::{positive, ConfigError};

#[derive(Args, Clone, Debug)]
pub(crate) struct HubArgs {
    /// No effect: sessions read the shared log with their own cursor; there is no per-client queue.
    #[arg(long, env = "WEBSOCKET_CLIENT_QUEUE_FRAMES", hide = true)]
    pub(crate) websocket_client_queue_frames: Option<usize>,
    /// No effect (see WEBSOCKET_CLIENT_QUEUE_FRAMES).
    #[arg(long, env = "WEBSOCKET_CLIENT_QUEUE_BYTES", hide = true)]
    pub(crate) websocket_client_queue_bytes: Option<usize>,
    /// Ingest waits for a client about to fall out of the memory log only while that client made progress within this time; one that stopped reading is left behind (it catches up from Redis or Kafka, or is disconnected).
    #[arg(long, env = "WEBSOCKET_READER_STALL_MS", default_value_t = 1000)]
    pub(crate) websocket_reader_stall_ms: u64,
    /// At the live edge, ingest waits for one client that reads, but slower than records arrive, at most this long in all (while other clients wait at the head for new records) before leaving it to catch up from Redis or Kafka; reset when it catches up with the head. Reading a backlog (records older than this), ingest waits for the slowest reader without this limit.
    #[arg(long, env = "WEBSOCKET_READER_HOLD_MS", default_value_t = 1000)]
    pub(crate) websocket_reader_hold_ms: u64,
    /// Priority of message types, shed at CRITICAL backpressure, e.g. `token_chunk=low,error=high`.
    #[arg(long, env = "MESSAGE_PRIORITIES", default_value = "")]
    pub(crate) message_priorities: String,
}

impl HubArgs {
    pub(crate) fn validate(&self) -> Result<DeliveryLimits, ConfigError> {
        positive("WEBSOCKET_READER_STALL_MS", self.websocket_reader_stall_ms)?;
        positive("WEBSOCKET_READER_HOLD_MS", self.websocket_reader_hold_ms)?;
        let priorities = PriorityTable::parse(&self.message_priorities)
            .map_err(|e| ConfigError::new("MESSAGE_PRIORITIES", e))?;
        Ok(DeliveryLimits {
            priorities,
            reader_stall: Duration::from_millis(self.websocket_reader_stall_ms),
            reader_hold: Duration::from_millis(self.websocket_reader_hold_ms),
        })
    }

    /// Settings that are accepted but no longer do anything, for a start-up warning.
    pub(crate) fn ignored(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.websocket_client_queue_frames.is_some() {
            v.push("WEBSOCKET_CLIENT_QUEUE_FRAMES");
        }
        if self.websocket_client_queue_bytes.is_some() {
            v.push("WEBSOCKET_CLIENT_QUEUE_BYTES");
        }
        v
    }
}
