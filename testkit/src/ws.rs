//! WebSocket clients of a local server.

use tokio_tungstenite::tungstenite::Message;

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens `url` (the handshake only).
pub async fn connect(url: &str) -> anyhow::Result<Ws> {
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .map_err(|e| anyhow::anyhow!("connect {url}: {e}"))?;
    Ok(ws)
}

/// Sends one text message.
pub async fn send_text(ws: &mut Ws, text: &str) -> anyhow::Result<()> {
    use futures_util::SinkExt;
    ws.send(Message::Text(text.into())).await?;
    Ok(())
}
