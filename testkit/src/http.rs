//! HTTP requests to a local server: status and body as text, bounded in time.

use std::time::Duration;

/// How long one request may take, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// `method path` on `127.0.0.1:port` with `headers`; returns (status, body).
pub async fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, String)> {
    let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(std::io::Error::other)?;
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(std::io::Error::other)?;
    let mut req = client.request(method, format!("http://127.0.0.1:{port}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.map_err(std::io::Error::other)?;
    let status = resp.status().as_u16();
    let body = resp.text().await.map_err(std::io::Error::other)?;
    Ok((status, body))
}

/// `GET path`; returns (status, body).
pub async fn get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    request(port, "GET", path, &[]).await
}
