//! Memory per idle connection: the bridge's resident memory before and after
//! N WebSocket clients connect (each reads its `hello`, then nothing more),
//! on an empty topic, with the bridge's default settings.

use super::*;

/// What the idle phase measured.
pub(crate) struct Idle {
    pub(crate) connections: usize,
    pub(crate) rss_before_kb: u64,
    pub(crate) rss_after_kb: u64,
}

impl Idle {
    /// Resident bytes added per connection.
    pub(crate) fn per_connection_bytes(&self) -> f64 {
        (self.rss_after_kb.saturating_sub(self.rss_before_kb) * 1024) as f64
            / self.connections.max(1) as f64
    }

    pub(crate) fn json(&self) -> Value {
        json!({
            "connections": self.connections,
            "rss_before_kb": self.rss_before_kb,
            "rss_after_kb": self.rss_after_kb,
            "rss_per_connection_bytes": self.per_connection_bytes(),
        })
    }
}

use kwb_testkit::process::rss_kb;

/// Connects `n` idle clients (in waves of 100) to a bridge on the empty `topic`.
pub(crate) async fn idle_run(ctx: &Ctx, topic: &str, n: usize) -> Result<Idle> {
    let group = format!("{topic}-idle");
    let spec = BridgeSpec {
        topic,
        group: &group,
        session_timeout_ms: ctx.args.session_timeout_ms,
        log_name: "bridge-idle.log".into(),
    };
    let mut bridge = Bridge::spawn(ctx, &spec)?;
    bridge.wait_http(Duration::from_secs(30)).await?;
    // Let start-up allocations settle (consumer join, first statistics).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_before_kb = rss_kb(bridge.pid());
    let mut conns = Vec::with_capacity(n);
    while conns.len() < n {
        let wave = (n - conns.len()).min(100);
        conns.extend(connect_clients(bridge.port, wave).await?);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after_kb = rss_kb(bridge.pid());
    drop(conns);
    bridge.stop().await;
    Ok(Idle {
        connections: n,
        rss_before_kb,
        rss_after_kb,
    })
}
