//! Layer: driver. Exposing the overlay to the host (weave-reference.md §3): the HTTP routes
//! `POST /expose/{ip}/{len}[?skipNAT=true]`, `DELETE /expose/{ip}/{len}` and `GET /expose`,
//! and [`reexpose`] for router start.
//!
//! Exposing an address puts it on the bridge (the kernel adds the connected route), announces
//! it with a gratuitous ARP from the bridge, and adds the iptables rules of
//! [`weft_sys::firewall`] (masquerading unless `skipNAT`, and the `WEAVE-EXPOSE` accept). The
//! exposed addresses are kept in `<state-dir>/exposed.json`, so a restarted router (or one
//! whose rules were flushed) puts everything back.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};
use weft_sys::firewall;
use weft_sys::netlink::Netlink;

use crate::config::BRIDGE;
use crate::state::Shared;

/// File in the state directory listing the exposed addresses.
pub const EXPOSED_FILE: &str = "exposed.json";

/// One exposed address, as kept in [`EXPOSED_FILE`] and listed by `GET /expose`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exposed {
    /// The address on the bridge, with its prefix length (e.g. `10.32.0.3/12`).
    pub cidr: Ipv4Net,
    /// Exposed with `--without-masquerade`: no NAT rules.
    #[serde(rename = "skipNAT", default)]
    pub skip_nat: bool,
}

/// Serialises changes to the bridge, the rules and the file within this process.
static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The routes of this module; the API merges them (`.merge(crate::expose::routes())`).
pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/expose", get(list))
        .route("/expose/{ip}/{len}", post(expose).delete(hide))
}

/// Query of `POST /expose`.
#[derive(Debug, Default, Deserialize)]
struct ExposeQuery {
    #[serde(rename = "skipNAT", default)]
    skip_nat: Option<String>,
}

/// Parses the `{ip}/{len}` path segments into an IPv4 address with prefix length.
pub fn parse_cidr(ip: &str, len: &str) -> Result<Ipv4Net, String> {
    let addr: Ipv4Addr = ip
        .parse()
        .map_err(|_| format!("'{ip}' is not an IPv4 address"))?;
    let len: u8 = len
        .parse()
        .map_err(|_| format!("'{len}' is not a prefix length"))?;
    Ipv4Net::new(addr, len).map_err(|_| format!("prefix length {len} is out of range (0..=32)"))
}

fn error(code: StatusCode, e: &anyhow::Error) -> Response {
    (code, format!("{e:#}\n")).into_response()
}

async fn expose(
    State(shared): State<Arc<Shared>>,
    UrlPath((ip, len)): UrlPath<(String, String)>,
    Query(q): Query<ExposeQuery>,
) -> Response {
    let cidr = match parse_cidr(&ip, &len) {
        Ok(c) => c,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let skip_nat = q
        .skip_nat
        .as_deref()
        .is_some_and(|v| v == "true" || v == "1");
    let _guard = LOCK.lock().await;
    let was_there = bridge_addresses().await.is_ok_and(|a| a.contains(&cidr));
    if let Err(e) = apply(cidr, skip_nat).await {
        // Leave nothing half done behind (but keep an address that was there before).
        if !was_there {
            if let Err(undo) = unapply(cidr).await {
                tracing::warn!(%cidr, "undoing a failed expose: {undo:#}");
            }
        }
        return error(StatusCode::INTERNAL_SERVER_ERROR, &e);
    }
    let path = exposed_file(&shared.state_dir);
    let saved = async {
        let mut list = load(&path)?;
        list.retain(|e| e.cidr != cidr);
        list.push(Exposed { cidr, skip_nat });
        save(&path, &list)
    }
    .await;
    match saved {
        Ok(()) => {
            tracing::info!(%cidr, skip_nat, "exposed");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e),
    }
}

async fn hide(
    State(shared): State<Arc<Shared>>,
    UrlPath((ip, len)): UrlPath<(String, String)>,
) -> Response {
    let cidr = match parse_cidr(&ip, &len) {
        Ok(c) => c,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let _guard = LOCK.lock().await;
    let path = exposed_file(&shared.state_dir);
    let result = async {
        let mut list = load(&path)?;
        let on_bridge = bridge_addresses().await?.contains(&cidr);
        let known = list.iter().any(|e| e.cidr == cidr);
        if !on_bridge && !known {
            return Ok(false);
        }
        unapply(cidr).await?;
        list.retain(|e| e.cidr != cidr);
        save(&path, &list)?;
        Ok(true)
    }
    .await;
    match result {
        Ok(true) => {
            tracing::info!(%cidr, "hidden");
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(false) => (StatusCode::NOT_FOUND, format!("{cidr} is not exposed\n")).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e),
    }
}

/// `GET /expose`: JSON (`[{"cidr":..,"skipNAT":..}]`) when asked with `Accept:
/// application/json`, else one address per line. Lists the remembered addresses and any other
/// address on the bridge.
async fn list(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let result = async {
        let mut list = load(&exposed_file(&shared.state_dir))?;
        for cidr in bridge_addresses().await? {
            if !list.iter().any(|e| e.cidr == cidr) {
                list.push(Exposed {
                    cidr,
                    skip_nat: false,
                });
            }
        }
        anyhow::Ok(list)
    }
    .await;
    let list = match result {
        Ok(l) => l,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e),
    };
    let json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"));
    if json {
        match serde_json::to_string(&list) {
            Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        }
    } else {
        list.iter()
            .map(|e| format!("{}\n", e.cidr))
            .collect::<String>()
            .into_response()
    }
}

/// Re-applies every exposed address: those in `<state-dir>/exposed.json` (with their
/// `skipNAT`) and every other IPv4 address already on the bridge (with NAT, as Weave does),
/// then records them all in the file. Call it once at router start, after the bridge exists.
/// An address that fails is logged and skipped; the error returned is the first failure.
pub async fn reexpose(shared: &Shared) -> anyhow::Result<()> {
    let _guard = LOCK.lock().await;
    let path = exposed_file(&shared.state_dir);
    let mut list = load(&path)?;
    for cidr in bridge_addresses().await? {
        if !list.iter().any(|e| e.cidr == cidr) {
            list.push(Exposed {
                cidr,
                skip_nat: false,
            });
        }
    }
    let mut first_error = None;
    for e in &list {
        match apply(e.cidr, e.skip_nat).await {
            Ok(()) => tracing::info!(cidr = %e.cidr, skip_nat = e.skip_nat, "re-exposed"),
            Err(err) => {
                tracing::warn!(cidr = %e.cidr, "re-exposing failed: {err:#}");
                first_error.get_or_insert(err);
            }
        }
    }
    if !list.is_empty() {
        save(&path, &list)?;
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// `<state-dir>/exposed.json`.
pub fn exposed_file(state_dir: &Path) -> PathBuf {
    state_dir.join(EXPOSED_FILE)
}

/// The remembered list (empty if there is no file).
pub fn load(path: &Path) -> anyhow::Result<Vec<Exposed>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a list of exposed addresses", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes the list atomically.
pub fn save(path: &Path, list: &[Exposed]) -> anyhow::Result<()> {
    let json = serde_json::to_vec_pretty(list)?;
    crate::identity::write_atomic(path, &json)
        .with_context(|| format!("writing {}", path.display()))
}

/// The bridge's index, or an error saying there is no bridge.
async fn bridge_index(nl: &Netlink) -> anyhow::Result<u32> {
    nl.link_index(BRIDGE)
        .await?
        .with_context(|| format!("there is no bridge '{BRIDGE}'"))
}

/// The IPv4 addresses on the bridge, link-local ones (169.254/16) left out.
async fn bridge_addresses() -> anyhow::Result<Vec<Ipv4Net>> {
    let nl = Netlink::new()?;
    let Some(index) = nl.link_index(BRIDGE).await? else {
        return Ok(Vec::new());
    };
    Ok(weft_sys::plumb::ipv4_addrs(nl.addresses(index).await?))
}

/// Address on the bridge, gratuitous ARP, rules.
async fn apply(cidr: Ipv4Net, skip_nat: bool) -> anyhow::Result<()> {
    let nl = Netlink::new()?;
    let index = bridge_index(&nl).await?;
    nl.add_address(index, IpNet::V4(cidr)).await?;
    match nl.link_mac(index).await? {
        Some(mac) => {
            let sent = tokio::task::spawn_blocking(move || {
                weft_sys::plumb::send_gratuitous_arps(index, mac, &[cidr.addr()])
            })
            .await?;
            if let Err(e) = sent {
                // The bridge may still be down or without ports; the address works anyway.
                tracing::debug!(%cidr, "gratuitous ARP from {BRIDGE} failed: {e}");
            }
        }
        None => tracing::debug!("{BRIDGE} has no MAC address; no gratuitous ARP"),
    }
    tokio::task::spawn_blocking(move || firewall::expose(BRIDGE, cidr, skip_nat))
        .await?
        .with_context(|| format!("adding the iptables rules for {cidr}"))?;
    Ok(())
}

/// Rules off, address off the bridge.
async fn unapply(cidr: Ipv4Net) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || firewall::hide(cidr))
        .await?
        .with_context(|| format!("removing the iptables rules for {cidr}"))?;
    let nl = Netlink::new()?;
    if let Some(index) = nl.link_index(BRIDGE).await? {
        nl.del_address(index, IpNet::V4(cidr)).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_from_path_segments() {
        assert_eq!(
            parse_cidr("10.32.1.254", "24"),
            Ok("10.32.1.254/24".parse().unwrap())
        );
        assert!(parse_cidr("10.32.1.254", "33").is_err());
        assert!(parse_cidr("fe80::1", "64").is_err());
        assert!(parse_cidr("10.32.1.254", "x").is_err());
    }

    #[test]
    fn file_round_trip() {
        let dir = std::env::temp_dir().join(format!("weft-expose-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = exposed_file(&dir);
        assert_eq!(load(&path).unwrap(), Vec::new());
        let list = vec![
            Exposed {
                cidr: "10.32.1.254/24".parse().unwrap(),
                skip_nat: false,
            },
            Exposed {
                cidr: "10.40.0.1/16".parse().unwrap(),
                skip_nat: true,
            },
        ];
        save(&path, &list).unwrap();
        assert_eq!(load(&path).unwrap(), list);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"skipNAT\": true"), "{text}");
        std::fs::write(&path, "not json").unwrap();
        assert!(load(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
