//! Joining containers to the network: allocate their addresses with the router's IPAM and give
//! them `ethwe`, once per start; keep the addresses 30 s after the container dies (a restart
//! gets the same ones back), release them when it is destroyed.
//!
//! Every operation on one container holds that container's lock, so a start call, the `start`
//! event for it and an inspect waiting for the address never interleave.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use ipnet::Ipv4Net;
use serde_json::Value;
use weft_router::client::{self, AddrSpec};
use weft_sys::netns::NetNs;

use crate::upstream::Docker;
use weft_dockerapi::rewrite as create;

/// How long a dead container's addresses are kept for a restart.
pub const KEEP_AFTER_DIE: Duration = Duration::from_secs(30);

/// A container the proxy attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// Full container id (the IPAM identifier).
    pub id: String,
    /// The pid whose namespace has `ethwe` (0 once the container died).
    pub pid: u32,
    /// `ethwe`'s addresses.
    pub addrs: Vec<Ipv4Net>,
    /// `ethwe`'s MAC.
    pub mac: [u8; 6],
}

#[derive(Debug, Default)]
struct State {
    joined: HashMap<String, Joined>,
    locks: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
    /// Container id → generation of its pending release.
    pending: HashMap<String, u64>,
    generation: u64,
    /// Containers whose start a client is waiting on (the start call attaches them, not the
    /// `start` event), with how many such calls are in flight.
    api_starts: HashMap<String, usize>,
}

/// Marks a container as started through the API while alive; see [`Attacher::api_start`].
#[derive(Debug)]
pub struct ApiStart {
    attacher: Attacher,
    id: String,
}

impl Drop for ApiStart {
    fn drop(&mut self) {
        let mut st = self.attacher.state();
        if let Some(n) = st.api_starts.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                st.api_starts.remove(&self.id);
            }
        }
    }
}

/// Attaches and detaches containers; cheap to clone.
#[derive(Debug, Clone)]
pub struct Attacher {
    docker: Docker,
    api: SocketAddr,
    bridge: String,
    no_default_ipalloc: bool,
    rewrite_hosts: bool,
    state: Arc<Mutex<State>>,
}

impl Attacher {
    /// An attacher using this Docker daemon and router API.
    pub fn new(docker: Docker, config: &crate::Config) -> Self {
        Self {
            docker,
            api: config.router_api,
            bridge: config.bridge.clone(),
            no_default_ipalloc: config.no_default_ipalloc,
            rewrite_hosts: config.rewrite_hosts,
            state: Arc::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_for(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.state().locks.entry(id.to_owned()).or_default().clone()
    }

    /// Notes that a client's start call for container `id` (full id) is in flight, so the
    /// `start` event leaves the attach (and its error) to that call.
    pub fn api_start(&self, id: &str) -> ApiStart {
        *self.state().api_starts.entry(id.to_owned()).or_default() += 1;
        ApiStart {
            attacher: self.clone(),
            id: id.to_owned(),
        }
    }

    /// Whether a client's start call for `id` is in flight.
    pub fn in_api_start(&self, id: &str) -> bool {
        self.state().api_starts.contains_key(id)
    }

    /// What the proxy knows of a container (waiting for an attach in progress).
    pub async fn joined(&self, id: &str) -> Option<Joined> {
        let lock = self.lock_for(id);
        let _held = lock.lock().await;
        self.state().joined.get(id).filter(|j| j.pid != 0).cloned()
    }

    /// Attaches container `name_or_id` if it was created to join and is running. Returns what
    /// it has now (`None`: not a joined container, or not running). Idempotent.
    pub async fn attach(&self, name_or_id: &str) -> anyhow::Result<Option<Joined>> {
        let Some(inspect) = self.docker.inspect(name_or_id).await? else {
            bail!("no such container: {name_or_id}");
        };
        let Some(id) = inspect["Id"].as_str().map(str::to_owned) else {
            bail!("Docker's inspect of {name_or_id} has no Id");
        };
        let specs = match create::decide_inspected(&inspect, self.no_default_ipalloc) {
            Ok(Some(specs)) => specs,
            Ok(None) => return Ok(None),
            Err(msg) => bail!("{msg}"),
        };
        let lock = self.lock_for(&id);
        let _held = lock.lock().await;
        self.state().pending.remove(&id);
        // Inspect again under the lock: the container may have died or restarted meanwhile.
        let Some(inspect) = self.docker.inspect(&id).await? else {
            bail!("container {name_or_id} went away");
        };
        let pid = inspect["State"]["Pid"].as_u64().unwrap_or(0);
        if inspect["State"]["Running"].as_bool() != Some(true) || pid == 0 {
            return Ok(None);
        }
        let pid = u32::try_from(pid).context("pid out of range")?;
        if let Some(j) = self.state().joined.get(&id) {
            if j.pid == pid {
                return Ok(Some(j.clone()));
            }
        }
        let joined = self.plumb(&inspect, &id, pid, &specs).await?;
        tracing::info!(
            container = %short(&id),
            addrs = ?joined.addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "attached"
        );
        self.state().joined.insert(id, joined.clone());
        Ok(Some(joined))
    }

    async fn plumb(
        &self,
        inspect: &Value,
        id: &str,
        pid: u32,
        specs: &[AddrSpec],
    ) -> anyhow::Result<Joined> {
        let ns = NetNs::from_pid(pid).with_context(|| format!("opening the netns of pid {pid}"))?;
        if ns.same_as(&NetNs::current()?) {
            bail!("the container shares the host's network namespace (--net=host?)");
        }
        let addrs = client::acquire(self.api, id, specs).await?;
        // Before the interface: the waiter lets the program start once ethwe is complete, and
        // by then its name must resolve to the weave address.
        if self.rewrite_hosts {
            if let Some(path) = inspect["HostsPath"].as_str().filter(|p| !p.is_empty()) {
                let text = weft_dockerapi::hosts::hosts_file(inspect, &addrs);
                // In place: the container sees this inode through a bind mount.
                if let Err(e) = std::fs::write(path, text) {
                    tracing::warn!(container = %short(id), "rewriting {path}: {e}");
                }
            }
        }
        let mtu = self.mtu().await;
        match weft_sys::plumb::attach(&self.bridge, &ns, Some(pid), &addrs, mtu).await {
            Ok(a) => Ok(Joined {
                id: id.to_owned(),
                pid,
                addrs: a.addrs,
                mac: a.mac,
            }),
            Err(e) => Err(anyhow::Error::from(e).context("creating ethwe")),
        }
    }

    async fn mtu(&self) -> u32 {
        client::mtu(self.api)
            .await
            .unwrap_or(weft_router::config::DEFAULT_MTU)
    }

    /// After a failed attach for a start the client waits on: the container is killed and the
    /// addresses it got are given back.
    pub async fn fail(&self, name_or_id: &str) {
        if let Err(e) = self.docker.kill(name_or_id).await {
            tracing::warn!(
                container = name_or_id,
                "killing after a failed attach: {e:#}"
            );
        }
        if let Ok(Some(inspect)) = self.docker.inspect(name_or_id).await {
            if let Some(id) = inspect["Id"].as_str() {
                self.state().joined.remove(id);
                if let Err(e) = client::release(self.api, id, &[]).await {
                    tracing::warn!(container = %short(id), "releasing: {e:#}");
                }
            }
        }
    }

    /// Docker reported `die`: keep the addresses for [`KEEP_AFTER_DIE`], then release them
    /// unless the container started again.
    pub fn died(&self, id: &str) {
        let generation = {
            let mut st = self.state();
            st.generation += 1;
            let g = st.generation;
            st.pending.insert(id.to_owned(), g);
            if let Some(j) = st.joined.get_mut(id) {
                j.pid = 0;
            }
            g
        };
        let this = self.clone();
        let id = id.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(KEEP_AFTER_DIE).await;
            let lock = this.lock_for(&id);
            let _held = lock.lock().await;
            let due = this.state().pending.get(&id) == Some(&generation);
            if due {
                this.release(&id).await;
            }
        });
    }

    /// Docker reported `destroy`: release at once.
    pub async fn destroyed(&self, id: &str) {
        let lock = self.lock_for(id);
        let _held = lock.lock().await;
        self.release(id).await;
        self.state().locks.remove(id);
    }

    async fn release(&self, id: &str) {
        let had = {
            let mut st = self.state();
            st.pending.remove(id);
            st.joined.remove(id).is_some()
        };
        match client::release(self.api, id, &[]).await {
            Ok(()) if had => tracing::info!(container = %short(id), "addresses released"),
            Ok(()) => {}
            Err(e) => tracing::warn!(container = %short(id), "releasing its addresses: {e:#}"),
        }
    }

    /// Attaches every running joined container (proxy or router restart), retrying each with
    /// backoff (2 s, ×1.5, at most 1 min) while the router or Docker is not ready.
    pub async fn reattach_all(&self) {
        // The router starts beside the proxy; give its API a moment before the first try.
        let start = std::time::Instant::now();
        while client::get(self.api, "/status", true).await.is_err()
            && start.elapsed() < Duration::from_secs(30)
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.release_stale().await;
        let ids = match self.docker.running().await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!("listing running containers to re-attach: {e:#}");
                return;
            }
        };
        for id in ids {
            let this = self.clone();
            tokio::spawn(async move {
                let mut delay = Duration::from_secs(2);
                loop {
                    match this.attach(&id).await {
                        Ok(_) => return,
                        Err(_) if matches!(this.docker.inspect(&id).await, Ok(None)) => return,
                        Err(e) => {
                            tracing::warn!(container = %short(&id), "re-attaching (retry in {delay:?}): {e:#}");
                        }
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 3 / 2).min(Duration::from_secs(60));
                }
            });
        }
    }
}

impl Attacher {
    /// Releases the addresses of containers that stopped or were destroyed while the proxy
    /// was not running (their `die`/`destroy` events were missed), as Weave prunes at start:
    /// IPAM identifiers that are Docker container ids of containers not running now. Each is
    /// checked again under its lock, so a container starting meanwhile keeps its addresses.
    /// Other identifiers (`weft attach` targets) are never touched.
    async fn release_stale(&self) {
        let (running, owned) = match (
            self.docker.running().await,
            client::get(self.api, "/ip", true).await,
        ) {
            (Ok(ids), Ok((code, body))) if code.is_success() => (ids, body),
            _ => return,
        };
        let Ok(owned) = serde_json::from_str::<Value>(&owned) else {
            return;
        };
        for entry in owned["owned"].as_array().into_iter().flatten() {
            let Some(id) = entry["containerid"].as_str() else {
                continue;
            };
            let is_container_id = id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit());
            if !is_container_id || running.iter().any(|r| r == id) {
                continue;
            }
            let lock = self.lock_for(id);
            let _held = lock.lock().await;
            let still_down = match self.docker.inspect(id).await {
                Ok(None) => true,
                Ok(Some(i)) => i["State"]["Running"].as_bool() != Some(true),
                Err(_) => false,
            };
            if still_down {
                tracing::info!(container = %short(id), "container stopped or removed while the proxy was down");
                self.release(id).await;
            }
        }
    }
}

/// Docker's short id (12 characters).
pub fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}
