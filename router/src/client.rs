//! Layer: driver. A tiny HTTP/1.1 client for the router's API (loopback only), and [`Http`],
//! the router's IPAM reached over that API (for [`crate::attach`] callers in other processes).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use ipnet::Ipv4Net;
use tokio::net::TcpStream;
pub use weft_ipam::spec::{AddrSpec, parse_specs};

use crate::attach::{IpamAccess, IpamReply};

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

/// Send an `application/x-www-form-urlencoded` body with any method (Weave's
/// `PUT /name/{id}/{ip}` with `fqdn=...`).
pub async fn send_form(
    addr: SocketAddr,
    method: Method,
    path: &str,
    form: String,
) -> anyhow::Result<(StatusCode, String)> {
    send(addr, method, path, false, Some(form)).await
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
    tracing::debug!("+ {method} http://{addr}{path}");
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
    let limit = if path.starts_with("/ip") || path == "/ring" {
        120
    } else {
        10
    };
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

/// The router's IPAM over its HTTP API (Weave's `/ip` paths), for callers in another process
/// (the CLI, a CNI plugin). Callers inside the router daemon use
/// [`crate::handle::Handle`] instead.
#[derive(Debug, Clone, Copy)]
pub struct Http {
    /// The router's API address.
    pub api: SocketAddr,
}

/// Maps an `/ip` answer: 2xx grants (the body's CIDRs, or `granted` for a claim's empty 204),
/// 404 means IPAM is off, anything else is a refusal with the body as the reason.
fn ipam_reply(code: StatusCode, body: &str, granted: Option<Ipv4Net>) -> anyhow::Result<IpamReply> {
    if code.is_success() {
        if let Some(a) = granted {
            return Ok(IpamReply::Granted(vec![a]));
        }
        let addrs = body
            .split_whitespace()
            .map(|c| c.parse::<Ipv4Net>())
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("the router answered '{}' to an allocation", body.trim()))?;
        return Ok(IpamReply::Granted(addrs));
    }
    if code == StatusCode::NOT_FOUND {
        return Ok(IpamReply::Disabled);
    }
    Ok(IpamReply::Refused(body.trim().to_owned()))
}

impl IpamAccess for Http {
    async fn allocate(&self, ident: &str, subnet: Option<Ipv4Net>) -> anyhow::Result<IpamReply> {
        let path = match subnet {
            None => format!("/ip/{ident}"),
            Some(n) => format!("/ip/{ident}/{}/{}", n.addr(), n.prefix_len()),
        };
        let (code, body) = request(self.api, Method::POST, &path, false).await?;
        ipam_reply(code, &body, None)
    }

    async fn claim(&self, ident: &str, addr: Ipv4Net) -> anyhow::Result<IpamReply> {
        let path = format!("/ip/{ident}/{}/{}", addr.addr(), addr.prefix_len());
        let (code, body) = request(self.api, Method::PUT, &path, false).await?;
        ipam_reply(code, &body, Some(addr))
    }

    async fn release(&self, ident: &str, addr: Option<Ipv4Addr>) -> anyhow::Result<()> {
        let path = match addr {
            None => format!("/ip/{ident}"),
            Some(a) => format!("/ip/{ident}/{a}"),
        };
        match request(self.api, Method::DELETE, &path, false).await? {
            (code, _) if code.is_success() || code == StatusCode::NOT_FOUND => Ok(()),
            (_, body) => bail!("releasing {path}: {}", body.trim()),
        }
    }

    async fn lookup(&self, ident: &str) -> anyhow::Result<Option<Vec<Ipv4Net>>> {
        let (code, body) = get(self.api, &format!("/ip/{ident}"), false).await?;
        match ipam_reply(code, &body, None)? {
            IpamReply::Granted(a) => Ok(Some(a)),
            IpamReply::Disabled => Ok(None),
            IpamReply::Refused(msg) => bail!("looking up {ident}: {msg}"),
        }
    }
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
