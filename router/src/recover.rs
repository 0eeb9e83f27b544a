//! Layer: driver. What is in use on this host, claimed in IPAM at router start before anything
//! is answered, as Weave does: so that even with no stored state (a first start on a host with
//! containers, `--ipam-recover` after a corrupt `ipam.json`) no address in use is handed out
//! again.
//!
//! Sources, in this order:
//! - the bridge's own addresses and the remembered exposed ones, as `weave:expose`;
//! - every container at the other end of a `vethwepl*` port of the bridge (found through the
//!   port's peer interface in the namespace it leads to, [`weft_sys::plumb::attached`]), under
//!   the identifier its attacher used: the Docker container id for Docker's containers (asked
//!   from Docker's API when its socket is there, else read from the process's cgroup), else the
//!   target as `weft attach` took it (pid or namespace name).
//!
//! An address IPAM already records (under any identifier) is left alone. The claims complete
//! like any other (inside the range they may wait for the ring, or ask its owner); a claim that
//! fails is logged with what holds the address here.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::{Request, header};
use hyper_util::rt::TokioIo;
use ipnet::Ipv4Net;
use tokio::sync::oneshot;
use weft_sys::netlink::Netlink;

use crate::config::Config;
use crate::ipam::{EXPOSE_IDENT, IpamDriver};

/// Docker's API socket when none is configured.
pub const DEFAULT_DOCKER_API: &str = "/var/run/docker.sock";

/// The IPAM identifier `weft attach` uses for a target (netns name or pid): characters IPAM
/// does not take in identifiers become `_`.
pub fn ident(target: &str) -> String {
    target
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.:-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Finds the addresses in use on this host and claims the ones IPAM does not record yet.
pub async fn claim_in_use(drv: &mut IpamDriver, config: &Config) {
    let found = in_use(config).await;
    let recorded: BTreeMap<Ipv4Addr, String> = drv
        .ipam
        .owned()
        .into_iter()
        .flat_map(|(id, addrs)| addrs.into_iter().map(move |a| (a.addr(), id.clone())))
        .collect();
    let (mut claimed, mut known) = (0, 0);
    for (ident, addr) in found {
        match recorded.get(&addr.addr()) {
            Some(holder) => {
                known += 1;
                if *holder != ident {
                    tracing::debug!("{addr} of {ident} is recorded for {holder}; left as it is");
                }
            }
            None => {
                claimed += 1;
                let (tx, rx) = oneshot::channel();
                let id = drv.ipam.claim(weft_mesh::Instant::ZERO, &ident, addr);
                drv.pending.insert(id, tx);
                tokio::spawn(async move {
                    match rx.await {
                        Ok(Ok(_)) => tracing::info!("claimed {addr}, in use by {ident} here"),
                        Ok(Err(e)) => {
                            tracing::warn!("{addr} is in use by {ident} here, but: {e}");
                        }
                        Err(_) => {}
                    }
                });
            }
        }
    }
    if claimed > 0 || known > 0 {
        tracing::info!(
            "addresses in use on this host: {claimed} claimed, {known} already recorded"
        );
    }
}

/// (identifier, address) of everything in use on this host.
async fn in_use(config: &Config) -> Vec<(String, Ipv4Net)> {
    let mut out = Vec::new();
    match bridge_addresses(&config.bridge).await {
        Ok(addrs) => out.extend(addrs.into_iter().map(|a| (EXPOSE_IDENT.to_owned(), a))),
        Err(e) => tracing::warn!("reading the addresses of {}: {e:#}", config.bridge),
    }
    match crate::expose::load(&crate::expose::exposed_file(&config.state_dir)) {
        Ok(list) => out.extend(list.into_iter().map(|e| (EXPOSE_IDENT.to_owned(), e.cidr))),
        Err(e) => tracing::warn!("{e:#}"),
    }
    let docker = config
        .docker_api
        .clone()
        .unwrap_or_else(|| DEFAULT_DOCKER_API.into());
    let by_netns = docker_containers(&docker).await;
    match weft_sys::plumb::attached(&config.bridge).await {
        Ok((containers, unresolved)) => {
            for c in containers {
                let id = by_netns
                    .get(&c.netns_inode)
                    .cloned()
                    .or(c.docker_id)
                    .unwrap_or_else(|| ident(&c.target));
                out.extend(c.addrs.into_iter().map(|a| (id.clone(), a)));
            }
            for port in unresolved {
                tracing::warn!(
                    "bridge port {port} leads to no namespace found here; its addresses \
                     cannot be claimed"
                );
            }
        }
        Err(e) => tracing::warn!("listing the containers on {}: {e}", config.bridge),
    }
    out.sort();
    out.dedup();
    out
}

async fn bridge_addresses(bridge: &str) -> anyhow::Result<Vec<Ipv4Net>> {
    let nl = Netlink::new()?;
    let Some(index) = nl.link_index(bridge).await? else {
        return Ok(Vec::new());
    };
    Ok(weft_sys::plumb::ipv4_addrs(nl.addresses(index).await?))
}

/// Running Docker containers by the inode of their network namespace (empty when Docker's
/// socket is absent or does not answer within a few seconds).
async fn docker_containers(socket: &Path) -> HashMap<u64, String> {
    if !socket.exists() {
        return HashMap::new();
    }
    let listed = tokio::time::timeout(Duration::from_secs(5), async {
        let list = docker_get(socket, "/containers/json").await?;
        let mut out = HashMap::new();
        for c in list.as_array().into_iter().flatten() {
            let Some(id) = c["Id"].as_str() else { continue };
            let inspect = docker_get(socket, &format!("/containers/{id}/json")).await?;
            let Some(pid) = inspect["State"]["Pid"].as_u64().filter(|p| *p > 0) else {
                continue;
            };
            let Ok(pid) = u32::try_from(pid) else {
                continue;
            };
            if let Ok(ns) = weft_sys::netns::NetNs::from_pid(pid) {
                out.insert(ns.inode(), id.to_owned());
            }
        }
        anyhow::Ok(out)
    })
    .await;
    match listed {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => {
            tracing::warn!(
                "asking Docker at {} for its containers: {e:#}",
                socket.display()
            );
            HashMap::new()
        }
        Err(_) => {
            tracing::warn!("Docker at {} did not answer in time", socket.display());
            HashMap::new()
        }
    }
}

/// One `GET` to Docker's API over its unix socket, as JSON.
async fn docker_get(socket: &Path, path: &str) -> anyhow::Result<serde_json::Value> {
    let stream = tokio::net::UnixStream::connect(socket).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header(header::HOST, "docker")
        .body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    anyhow::ensure!(status.is_success(), "{path}: {status}");
    Ok(serde_json::from_slice(&body)?)
}
