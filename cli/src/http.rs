//! Layer: driver. A tiny HTTP/1.1 client for the router's API (loopback only).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Send one request to the API and return the status and body.
pub(crate) async fn request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    json: bool,
) -> anyhow::Result<(StatusCode, String)> {
    send(addr, method, path, json, None).await
}

/// POST an `application/x-www-form-urlencoded` body.
pub(crate) async fn post_form(
    addr: SocketAddr,
    path: &str,
    form: String,
) -> anyhow::Result<(StatusCode, String)> {
    send(addr, Method::POST, path, false, Some(form)).await
}

/// Percent-encode a form value.
pub(crate) fn form_escape(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn send(
    addr: SocketAddr,
    method: Method,
    path: &str,
    json: bool,
    form: Option<String>,
) -> anyhow::Result<(StatusCode, String)> {
    let stream = tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow::anyhow!("timed out connecting to the weft API on {addr}"))?
        .with_context(|| format!("cannot reach the weft API on {addr}; is the router running?"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let accept = if json {
        "application/json"
    } else {
        "text/plain"
    };
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, addr.to_string())
        .header(header::ACCEPT, accept);
    if form.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    }
    let req = req.body(Full::new(Bytes::from(form.unwrap_or_default())))?;
    // Allocations may wait for consensus or for another peer to donate space.
    let limit = if path.starts_with("/ip") { 120 } else { 10 };
    let resp = tokio::time::timeout(Duration::from_secs(limit), sender.send_request(req))
        .await
        .map_err(|_| anyhow::anyhow!("the weft API on {addr} did not answer"))??;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// GET a path.
pub(crate) async fn get(
    addr: SocketAddr,
    path: &str,
    json: bool,
) -> anyhow::Result<(StatusCode, String)> {
    request(addr, Method::GET, path, json).await
}
