//! Joining containers to the network: once per start, get their addresses and give them
//! `ethwe` through the one attach path ([`weft_router::attach::attach`], IPAM reached
//! in-process through the router's [`weft_router::Handle`], never over HTTP).
//!
//! The router may not be running (the proxy was launched first, or `weave stop-router` ran): an
//! attach then waits up to [`ROUTER_WAIT`] for one, and fails saying so. Addresses outlive a
//! container's death in IPAM (the router keeps them 30 s for a restart, see
//! [`crate::lifecycle`]), so a restart gets them back.
//!
//! Every operation on one container holds that container's lock, so a start call, the `start`
//! event for it and an inspect waiting for the address never interleave.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use ipnet::Ipv4Net;
use serde_json::Value;
use weft_router::Handle;
use weft_router::attach::{AttachRequest, IpamAccess};
use weft_sys::netns::NetNs;

use crate::RouterSlot;
use crate::upstream::Docker;
use weft_dockerapi::rewrite as create;

/// How long an attach waits for a router to come up before it fails.
pub const ROUTER_WAIT: Duration = Duration::from_secs(20);

/// The running router in `slot`, waiting up to [`ROUTER_WAIT`] for one (the proxy's attach and
/// the network plugin's calls alike).
pub(crate) async fn wait_router(slot: &RouterSlot) -> anyhow::Result<Handle> {
    let mut rx = slot.clone();
    let up = tokio::time::timeout(
        ROUTER_WAIT,
        rx.wait_for(|h| h.as_ref().is_some_and(|h| !h.is_stopped())),
    )
    .await;
    match up {
        Ok(Ok(h)) => h
            .clone()
            .context("the router slot emptied while it was read"),
        _ => bail!(
            "no weft router is running on this host (waited {} s for one); start it with \
             'weave launch-router' (or 'weave launch')",
            ROUTER_WAIT.as_secs()
        ),
    }
}

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
    router: RouterSlot,
    no_default_ipalloc: bool,
    rewrite_hosts: bool,
    without_dns: bool,
    multicast_route: bool,
    state: Arc<Mutex<State>>,
}

impl Attacher {
    /// An attacher using this Docker daemon and the router in `router`.
    pub fn new(docker: Docker, config: &crate::Config, router: RouterSlot) -> Self {
        Self {
            docker,
            router,
            no_default_ipalloc: config.no_default_ipalloc,
            rewrite_hosts: config.rewrite_hosts,
            without_dns: config.without_dns,
            multicast_route: config.multicast_route,
            state: Arc::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn lock_for(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.state().locks.entry(id.to_owned()).or_default().clone()
    }

    /// The running router, waiting up to [`ROUTER_WAIT`] for one.
    async fn router(&self) -> anyhow::Result<Handle> {
        wait_router(&self.router).await
    }

    /// The router if it runs now (no waiting).
    pub(crate) fn router_now(&self) -> Option<Handle> {
        self.router
            .borrow()
            .as_ref()
            .filter(|h| !h.is_stopped())
            .cloned()
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
        let multicast_route =
            self.multicast_route && create::waiter_of(&inspect) != Some(create::WAITER_NOMCAST);
        let joined = self
            .plumb(&inspect, &id, pid, &specs, multicast_route)
            .await?;
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
        specs: &[weft_router::attach::AddrSpec],
        multicast_route: bool,
    ) -> anyhow::Result<Joined> {
        let ns = NetNs::from_pid(pid).with_context(|| format!("opening the netns of pid {pid}"))?;
        let router = self.router().await?;
        let req = AttachRequest {
            multicast_route,
            ..AttachRequest::ethwe(&ns, Some(pid), specs, router.mtu(), id, router.bridge())
        };
        let rewrite_hosts = self.rewrite_hosts;
        // Before the interface: the waiter lets the program start once ethwe is complete, and
        // by then its name must resolve to the weave address.
        let attached = weft_router::attach::attach(&router, req, |addrs| {
            if !rewrite_hosts {
                return;
            }
            if let Some(path) = inspect["HostsPath"].as_str().filter(|p| !p.is_empty()) {
                let text = weft_dockerapi::hosts::hosts_file(inspect, addrs);
                // In place: the container sees this inode through a bind mount.
                if let Err(e) = std::fs::write(path, text) {
                    tracing::warn!(container = %short(id), "rewriting {path}: {e}");
                }
            }
        })
        .await?;
        if !self.without_dns {
            // The container's name (hostname.domainname) on each address; a name the router
            // refuses (outside the domain) is only logged.
            if let Some(fqdn) = weft_dockerapi::dns::container_fqdn(inspect) {
                for a in &attached.all_addrs {
                    if let Err(e) = router.dns_register(id, a.addr(), &fqdn) {
                        tracing::info!(container = %short(id), "not in weaveDNS: {e:#}");
                    }
                }
            }
        }
        Ok(Joined {
            id: id.to_owned(),
            pid,
            addrs: attached.all_addrs,
            mac: attached.mac,
        })
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
                if let Some(router) = self.router_now() {
                    if let Err(e) = router.release(id, None).await {
                        tracing::warn!(container = %short(id), "releasing: {e:#}");
                    }
                }
            }
        }
    }

    /// Docker reported `die`: the container has no network namespace any more. (Its addresses
    /// stay in IPAM for a restart; see [`crate::lifecycle`].)
    pub fn died(&self, id: &str) {
        if let Some(j) = self.state().joined.get_mut(id) {
            j.pid = 0;
        }
    }

    /// Docker reported `destroy`: forget it (IPAM releases its addresses).
    pub async fn destroyed(&self, id: &str) {
        let lock = self.lock_for(id);
        let _held = lock.lock().await;
        let mut st = self.state();
        st.joined.remove(id);
        st.locks.remove(id);
    }

    /// Attaches every running joined container (proxy or router (re)start), retrying each
    /// with backoff (2 s, ×1.5, at most 1 min) while the router or Docker is not ready.
    pub async fn reattach_all(&self) {
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

/// Docker's short id (12 characters).
pub fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}
