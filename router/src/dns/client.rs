//! Layer: driver. The client side of the DNS API, for `weft attach`/`dns-*` and the Docker
//! proxy: registering and removing names, and what a container needs to use weaveDNS.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::bail;
use hyper::{Method, StatusCode};

use crate::client::{form_escape, get, request};

/// `PUT /name/{container}/{ip}?fqdn=NAME`.
pub async fn register(
    api: SocketAddr,
    container: &str,
    ip: Ipv4Addr,
    fqdn: &str,
) -> anyhow::Result<()> {
    let path = format!(
        "/name/{}/{ip}?fqdn={}",
        form_escape(container),
        form_escape(fqdn)
    );
    let (code, body) = request(api, Method::PUT, &path, false).await?;
    if !code.is_success() {
        bail!("registering {fqdn} -> {ip}: {}", body.trim());
    }
    Ok(())
}

/// `DELETE /name/{container}[/{ip}][?fqdn=NAME]`: removes this peer's names of `container`
/// (only those at `ip`, only `fqdn`, when given). A router without DNS is not an error.
pub async fn deregister(
    api: SocketAddr,
    container: &str,
    ip: Option<Ipv4Addr>,
    fqdn: Option<&str>,
) -> anyhow::Result<()> {
    let mut path = format!("/name/{}", form_escape(container));
    if let Some(ip) = ip {
        path.push_str(&format!("/{ip}"));
    }
    if let Some(f) = fqdn {
        path.push_str(&format!("?fqdn={}", form_escape(f)));
    }
    let (code, body) = request(api, Method::DELETE, &path, false).await?;
    if !code.is_success() && code != StatusCode::NOT_FOUND {
        bail!("removing names of {container}: {}", body.trim());
    }
    Ok(())
}

/// The DNS domain (`weave.local.`); `None` when the router runs without DNS (`--no-dns`).
pub async fn domain(api: SocketAddr) -> anyhow::Result<Option<String>> {
    let (code, domain) = get(api, "/domain", false).await?;
    if code == StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !code.is_success() {
        bail!("{}", domain.trim());
    }
    Ok(Some(domain.trim().to_owned()))
}

/// The address containers use as their nameserver (`path` `/dns-address`, or
/// `/dns-address-port` for `ip:port`).
pub async fn address(api: SocketAddr, path: &str) -> anyhow::Result<String> {
    let (code, addr) = get(api, path, false).await?;
    if !code.is_success() {
        bail!("{}", addr.trim());
    }
    Ok(addr.trim().to_owned())
}
