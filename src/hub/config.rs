//! The hub's settings: each client's queue bounds and the priority of
//! message types for slow clients.

use clap::Args;

use crate::hub::{PriorityTable, QueueLimits};
use crate::settings::{positive, ConfigError};

#[derive(Args, Clone, Debug)]
pub(crate) struct HubArgs {
    /// Frames queued per client before the client is considered behind.
    #[arg(long, env = "WEBSOCKET_CLIENT_QUEUE_FRAMES", default_value_t = 4096)]
    pub(crate) websocket_client_queue_frames: usize,
    /// Bytes queued per client at most (with WEBSOCKET_CLIENT_QUEUE_FRAMES).
    #[arg(long, env = "WEBSOCKET_CLIENT_QUEUE_BYTES", default_value_t = 16 * 1_048_576)]
    pub(crate) websocket_client_queue_bytes: usize,
    /// Priority of message types for slow clients, e.g. `token_chunk=low,error=high`.
    #[arg(long, env = "MESSAGE_PRIORITIES", default_value = "")]
    pub(crate) message_priorities: String,
}

impl HubArgs {
    pub(crate) fn validate(&self) -> Result<QueueLimits, ConfigError> {
        positive(
            "WEBSOCKET_CLIENT_QUEUE_FRAMES",
            self.websocket_client_queue_frames as u64,
        )?;
        positive(
            "WEBSOCKET_CLIENT_QUEUE_BYTES",
            self.websocket_client_queue_bytes as u64,
        )?;
        let priorities = PriorityTable::parse(&self.message_priorities)
            .map_err(|e| ConfigError::new("MESSAGE_PRIORITIES", e))?;
        Ok(QueueLimits {
            frames: self.websocket_client_queue_frames,
            bytes: self.websocket_client_queue_bytes,
            priorities,
        })
    }
}
