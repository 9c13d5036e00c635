//! A WebSocket client that writes frames byte by byte (RFC 6455 §5.2), so a
//! test can send what no well-behaved library sends: reserved bits and
//! opcodes, fragmented or oversized control frames, invalid UTF-8, invalid
//! close codes, unmasked frames.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const OP_CONTINUE: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// One frame as read from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl RawFrame {
    /// The close code of a Close frame (1005 when it carries none).
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == OP_CLOSE).then(|| match self.payload.as_slice() {
            [a, b, ..] => u16::from_be_bytes([*a, *b]),
            _ => 1005,
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// What the server did once the test stopped sending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// A Close frame with this code, then the TCP connection ended.
    Closed { code: u16, tcp_closed: bool },
    /// The TCP connection ended without a Close frame.
    Dropped,
    /// Nothing happened within the time allowed.
    Silent,
}

pub struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawWs {
    /// Connects to `127.0.0.1:port` and upgrades `path_and_query`.
    pub async fn connect(port: u16, path_and_query: &str) -> anyhow::Result<RawWs> {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        let request = format!(
            "GET {path_and_query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut buf = Vec::new();
        let head_end = loop {
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk)).await??;
            anyhow::ensure!(n > 0, "connection closed during the handshake");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            anyhow::ensure!(buf.len() < 16 * 1024, "response headers too long");
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        anyhow::ensure!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
        buf.drain(..head_end);
        Ok(RawWs { stream, buf })
    }

    /// Writes one frame: `first` holds FIN, RSV1–3 and the opcode (byte 0).
    pub async fn send_raw(
        &mut self,
        first: u8,
        payload: &[u8],
        masked: bool,
    ) -> anyhow::Result<()> {
        let mut frame = Vec::with_capacity(payload.len() + 14);
        frame.push(first);
        let mask_bit = if masked { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => frame.push(mask_bit | n as u8),
            n if n <= u16::MAX as usize => {
                frame.push(mask_bit | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(mask_bit | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if masked {
            let key = [0x37, 0xfa, 0x21, 0x3d];
            frame.extend_from_slice(&key);
            frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            frame.extend_from_slice(payload);
        }
        self.stream.write_all(&frame).await?;
        Ok(())
    }

    /// Writes one masked frame with no reserved bits.
    pub async fn send(&mut self, fin: bool, opcode: u8, payload: &[u8]) -> anyhow::Result<()> {
        let first = if fin { 0x80 } else { 0 } | (opcode & 0x0f);
        self.send_raw(first, payload, true).await
    }

    /// Writes a Close frame with `code` and `reason` bytes.
    pub async fn send_close(&mut self, code: u16, reason: &[u8]) -> anyhow::Result<()> {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason);
        self.send(true, OP_CLOSE, &payload).await
    }

    /// Reads the next frame; `None` when the connection ended or `timeout` passed.
    pub async fn read(&mut self, timeout: Duration) -> Option<RawFrame> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some((frame, used)) = parse(&self.buf) {
                self.buf.drain(..used);
                return Some(frame);
            }
            let mut chunk = vec![0u8; 64 * 1024];
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads the next frame that is not a data frame of the bridge's own
    /// (hello, data): pings' pongs, errors and closes are what tests look at.
    pub async fn read_control(&mut self, timeout: Duration) -> Option<RawFrame> {
        loop {
            let f = self.read(timeout).await?;
            if f.opcode != OP_BINARY {
                return Some(f);
            }
        }
    }

    /// Reads until a Close frame (skipping other frames), then checks that
    /// the server ended the TCP connection.
    pub async fn ending(&mut self, timeout: Duration) -> Ending {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let frame = match tokio::time::timeout(left, self.next_or_eof()).await {
                Err(_) => return Ending::Silent,
                Ok(None) => return Ending::Dropped,
                Ok(Some(f)) => f,
            };
            if let Some(code) = frame.close_code() {
                let tcp_closed = self.eof_within(Duration::from_secs(3)).await;
                return Ending::Closed { code, tcp_closed };
            }
        }
    }

    async fn next_or_eof(&mut self) -> Option<RawFrame> {
        self.read(Duration::from_secs(3600)).await
    }

    async fn eof_within(&mut self, timeout: Duration) -> bool {
        let mut chunk = [0u8; 1024];
        loop {
            match tokio::time::timeout(timeout, self.stream.read(&mut chunk)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
            }
        }
    }
}

/// Parses one server frame (unmasked) from the front of `buf`.
fn parse(buf: &[u8]) -> Option<(RawFrame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let fin = buf[0] & 0x80 != 0;
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut at) = match buf[1] & 0x7f {
        126 => (
            u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let key = if masked {
        let k: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
        at += 4;
        Some(k)
    } else {
        None
    };
    let mut payload = buf.get(at..at + len)?.to_vec();
    if let Some(k) = key {
        payload
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b ^= k[i % 4]);
    }
    Some((
        RawFrame {
            fin,
            opcode,
            payload,
        },
        at + len,
    ))
}
