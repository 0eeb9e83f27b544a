//! Layer: driver. A tiny HTTP/1.1 client for the router's API (loopback only), and the address
//! arguments every attaching caller shares (`weft attach`, the Docker proxy's `WEAVE_CIDR`).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use ipnet::Ipv4Net;
use tokio::net::TcpStream;
pub use weft_ipam::spec::{AddrSpec, parse_specs};

/// Send one request to the API and return the status and body.
pub async fn request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    json: bool,
) -> anyhow::Result<(StatusCode, String)> {
    send(addr, method, path, json, None).await
}

/// POST an `application/x-www-form-urlencoded` body.
pub async fn post_form(
    addr: SocketAddr,
    path: &str,
    form: String,
) -> anyhow::Result<(StatusCode, String)> {
    send(addr, Method::POST, path, false, Some(form)).await
}

/// Percent-encode a form value.
pub fn form_escape(value: &str) -> String {
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
pub async fn get(addr: SocketAddr, path: &str, json: bool) -> anyhow::Result<(StatusCode, String)> {
    request(addr, Method::GET, path, json).await
}

/// Allocate or claim every spec with the router's IPAM; returns the addresses to configure.
pub async fn acquire(
    api: SocketAddr,
    id: &str,
    specs: &[AddrSpec],
) -> anyhow::Result<Vec<Ipv4Net>> {
    let mut addrs = Vec::new();
    for spec in specs {
        let result = acquire_one(api, id, *spec).await;
        match result {
            Ok(a) => addrs.push(a),
            Err(e) => {
                // Give back what this call already took, so nothing is left half-made.
                for a in &addrs {
                    let path = format!("/ip/{id}/{}", a.addr());
                    let _ = request(api, Method::DELETE, &path, false).await;
                }
                return Err(e);
            }
        }
    }
    Ok(addrs)
}

async fn acquire_one(api: SocketAddr, id: &str, spec: AddrSpec) -> anyhow::Result<Ipv4Net> {
    let (method, path) = match spec {
        AddrSpec::DefaultSubnet => (Method::POST, format!("/ip/{id}")),
        AddrSpec::Subnet(n) => (
            Method::POST,
            format!("/ip/{id}/{}/{}", n.addr(), n.prefix_len()),
        ),
        AddrSpec::Address(a) => (
            Method::PUT,
            format!("/ip/{id}/{}/{}", a.addr(), a.prefix_len()),
        ),
    };
    let reply = request(api, method, &path, false).await;
    match (spec, reply) {
        (AddrSpec::Address(a), Ok((code, _))) if code.is_success() => Ok(a),
        (AddrSpec::Address(a), Ok((StatusCode::NOT_FOUND, _))) => Ok(a), // IPAM disabled
        (AddrSpec::Address(a), Err(_)) => {
            eprintln!("weft: router not reachable; using {a} without recording it in IPAM");
            Ok(a)
        }
        (_, Ok((code, body))) if code.is_success() => body
            .trim()
            .parse::<Ipv4Net>()
            .with_context(|| format!("the router answered '{}' to an allocation", body.trim())),
        (_, Ok((_, body))) => bail!("{}", body.trim()),
        (_, Err(e)) => Err(e.context("allocating an address needs a running router")),
    }
}

/// Gives back the addresses `id` holds (all when `addrs` is empty). Every one is tried; the
/// first failure is returned.
pub async fn release(api: SocketAddr, id: &str, addrs: &[Ipv4Net]) -> anyhow::Result<()> {
    let paths: Vec<String> = if addrs.is_empty() {
        vec![format!("/ip/{id}")]
    } else {
        addrs
            .iter()
            .map(|a| format!("/ip/{id}/{}", a.addr()))
            .collect()
    };
    let mut first_error = None;
    for path in paths {
        let result = match request(api, Method::DELETE, &path, false).await {
            Ok((code, _)) if code.is_success() || code == StatusCode::NOT_FOUND => Ok(()),
            Ok((_, body)) => Err(anyhow::anyhow!("releasing {path}: {}", body.trim())),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            first_error.get_or_insert(e);
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    Ok(())
}

/// The running router's overlay MTU (from `/status`), if it answers.
pub async fn mtu(api: SocketAddr) -> Option<u32> {
    let (code, body) = get(api, "/status", true).await.ok()?;
    if !code.is_success() {
        return None;
    }
    let status: serde_json::Value = serde_json::from_str(&body).ok()?;
    status["mtu"].as_u64().and_then(|m| u32::try_from(m).ok())
}
