//! `tail`: a WebSocket client that prints every frame as one JSON line
//! (binary data frames are decoded to the same JSON a `?format=json` client gets).

use std::time::Duration;

use clap::Args;
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

use crate::record::decode::DecodeLimits;
use crate::record::frame::envelope_to_json;

#[derive(Args, Clone, Debug)]
pub(crate) struct TailArgs {
    /// WebSocket URL, e.g. ws://127.0.0.1:3002/ws?format=json&threads=thread-1
    #[arg(long, default_value = "ws://127.0.0.1:3002/ws")]
    pub(crate) url: String,
    /// Exit after this many data frames (0 = never).
    #[arg(long, default_value_t = 0)]
    pub(crate) count: u64,
    /// Exit after this many seconds (0 = never).
    #[arg(long, default_value_t = 0)]
    pub(crate) timeout_secs: u64,
}

pub(crate) async fn run(args: TailArgs) -> anyhow::Result<()> {
    let (mut ws, _) = tokio_tungstenite::connect_async(args.url.as_str())
        .await
        .map_err(|e| {
            anyhow::anyhow!("connecting to {}: {e}", crate::util::redact_url(&args.url))
        })?;
    let limits = DecodeLimits {
        max_record_bytes: usize::MAX,
        max_decompressed_bytes: 64 * 1_048_576,
        max_batch_events: usize::MAX,
    };
    let deadline = (args.timeout_secs > 0)
        .then(|| tokio::time::Instant::now() + Duration::from_secs(args.timeout_secs));
    let mut data = 0u64;
    loop {
        let next = match deadline {
            Some(d) => match tokio::time::timeout_at(d, ws.next()).await {
                Ok(n) => n,
                Err(_) => break,
            },
            None => ws.next().await,
        };
        let Some(msg) = next else { break };
        match msg? {
            Message::Text(t) => {
                if t.as_str().starts_with("{\"type\":\"message\"") {
                    data += 1;
                }
                println!("{}", t.as_str());
            }
            Message::Binary(b) => {
                data += 1;
                match envelope_to_json(&b, &limits) {
                    Ok(j) => println!("{j}"),
                    Err(e) => println!(
                        "{}",
                        serde_json::json!({"type": "tail_error", "error": e.to_string()})
                    ),
                }
            }
            Message::Close(c) => {
                let (code, reason) = c
                    .map(|c| (u16::from(c.code), c.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                println!(
                    "{}",
                    serde_json::json!({"type": "closed", "code": code, "reason": reason})
                );
                break;
            }
            _ => {}
        }
        if args.count > 0 && data >= args.count {
            break;
        }
    }
    Ok(())
}
