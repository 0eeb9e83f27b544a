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
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, addr.to_string())
        .header(header::ACCEPT, accept)
        .body(Full::new(Bytes::new()))?;
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
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
