//! A session's limits on a client that does not keep up: how long it may
//! lose frames, and how long one socket write may take.

use std::time::Duration;

use clap::Args;

use crate::settings::{positive, ConfigError};

#[derive(Args, Clone, Debug)]
pub(crate) struct SessionArgs {
    /// A client that keeps losing frames for this long is disconnected with close code 1008.
    #[arg(
        long,
        env = "WEBSOCKET_SLOW_CLIENT_DISCONNECT_SECS",
        default_value_t = 30
    )]
    pub(crate) websocket_slow_client_disconnect_secs: u64,
    /// A write to a client that takes longer than this ends its session (close 1008).
    #[arg(long, env = "WEBSOCKET_WRITE_TIMEOUT_SECS", default_value_t = 10)]
    pub(crate) websocket_write_timeout_secs: u64,
}

/// Validated slow-client limits.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SlowClientLimits {
    pub(crate) slow_client_disconnect: Duration,
    pub(crate) write_timeout: Duration,
}

impl SessionArgs {
    pub(crate) fn validate(&self) -> Result<SlowClientLimits, ConfigError> {
        positive(
            "WEBSOCKET_SLOW_CLIENT_DISCONNECT_SECS",
            self.websocket_slow_client_disconnect_secs,
        )?;
        positive(
            "WEBSOCKET_WRITE_TIMEOUT_SECS",
            self.websocket_write_timeout_secs,
        )?;
        Ok(SlowClientLimits {
            slow_client_disconnect: Duration::from_secs(self.websocket_slow_client_disconnect_secs),
            write_timeout: Duration::from_secs(self.websocket_write_timeout_secs.max(1)),
        })
    }
}
