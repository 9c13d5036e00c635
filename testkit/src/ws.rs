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

/// Opens `url` over a socket whose receive buffer is `recv_buffer` bytes:
/// a client that reads slowly is then behind at the server, not in its own
/// kernel buffer.
pub async fn connect_with_recv_buffer(url: &str, recv_buffer: usize) -> anyhow::Result<Ws> {
    let authority = url
        .strip_prefix("ws://")
        .ok_or_else(|| anyhow::anyhow!("{url}: ws:// URLs only"))?
        .split('/')
        .next()
        .unwrap_or_default();
    let addr: std::net::SocketAddr = tokio::net::lookup_host(authority)
        .await?
        .next()
        .ok_or_else(|| anyhow::anyhow!("no address for {authority}"))?;
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_recv_buffer_size(recv_buffer)?;
    socket.set_nonblocking(true)?;
    let socket = tokio::net::TcpSocket::from_std_stream(socket.into());
    let stream = socket.connect(addr).await?;
    let (ws, _) =
        tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await
            .map_err(|e| anyhow::anyhow!("connect {url}: {e}"))?;
    Ok(ws)
}
