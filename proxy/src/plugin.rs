//! Layer: driver. The Docker network plugin (Weave's `--plugin`, `weave launch-plugin`): a
//! legacy "remote" network driver and IPAM driver named `weave`, on
//! `/run/docker/plugins/weave.sock`, where Docker finds it. `docker network create -d weave
//! weave` (made at launch, as Weave did) and `docker run --net=weave` then put containers on the
//! weft network.
//!
//! What Docker posts and what is answered is [`weft_dockerapi::plugin`] (sans-IO); here are the
//! socket, the plumbing and IPAM. It runs in the weft daemon: IPAM is the router's, reached
//! in-process through [`weft_router::Handle`] (never over HTTP), the same [`IpamAccess`] the
//! attach path uses; while no router runs, a call waits a bounded time for one. Docker, not
//! weft, moves the interface into the container and sets its address, so the plugin does the
//! host half of the attach path only ([`weft_sys::plumb::bridged_pair`]):
//!
//! - `RequestPool`: the pool asked for, or weft's default subnet; `RequestAddress`: an address
//!   allocated in the pool's range (or the one asked for, claimed), under an identifier of its
//!   own (`docker-plugin:<nonce>`); `ReleaseAddress` gives it back (found by address).
//! - `CreateEndpoint`: a veth pair with its host end on the bridge; `Join`: its other end, for
//!   Docker to move in as `ethwe<N>` (with the multicast route when the network has
//!   `works.weave.multicast`); `DeleteEndpoint`: the pair goes.
//! - Container start (from Docker's events): the container's names go into weaveDNS on its
//!   address in this network, as Weave's plugin registered them.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use ipnet::Ipv4Net;
use serde_json::Value;
use tokio::net::UnixListener;
use weft_dockerapi::plugin::{self as proto, Call, Pool};
use weft_router::Handle;
use weft_router::attach::{IpamAccess, IpamReply};

use crate::RouterSlot;
use crate::attach::short;
use crate::upstream::Docker;

/// Where Docker looks for the plugin.
pub const DEFAULT_SOCKET: &str = "/run/docker/plugins/weave.sock";
/// The name of the network made at launch.
pub const DEFAULT_NETWORK: &str = "weave";
/// Largest body Docker sends.
const BODY_LIMIT: usize = 1 << 20;

/// The plugin's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The socket (its file name, less `.sock`, is the driver's name).
    pub socket: PathBuf,
    /// The Docker daemon (network lookups, making the default network, events).
    pub docker: Docker,
    /// The network to make at launch (`None`: none).
    pub network: Option<String>,
}

/// A bound plugin, ready to serve.
#[derive(Debug)]
pub struct Plugin {
    inner: Arc<Inner>,
    listener: UnixListener,
}

/// What the plugin's calls share; also what the daemon's event follower hands container starts
/// to ([`Hook::container_started`]).
#[derive(Debug)]
struct Inner {
    config: Config,
    driver: String,
    router: RouterSlot,
    /// Multicast setting of the networks of this driver, by network id.
    networks: Mutex<HashMap<String, bool>>,
}

/// A cheap handle on a running plugin for the daemon's Docker event follower.
#[derive(Debug, Clone)]
pub struct Hook(Arc<Inner>);

/// The driver name a socket path gives (`/run/docker/plugins/weave.sock`: `weave`).
pub fn driver_name(socket: &Path) -> String {
    socket
        .file_name()
        .map(|n| n.to_string_lossy().trim_end_matches(".sock").to_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "weave".to_owned())
}

/// Binds the plugin socket (replacing a stale socket file, never anything else).
pub fn bind(config: Config, router: RouterSlot) -> anyhow::Result<Plugin> {
    let path = &config.socket;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt as _;
        if !meta.file_type().is_socket() {
            bail!("{} exists and is not a socket", path.display());
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "a plugin already answers on {} (another weft or Weave?)",
                path.display()
            );
        }
        std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("listening on {}", path.display()))?;
    let driver = driver_name(path);
    Ok(Plugin {
        inner: Arc::new(Inner {
            config,
            driver,
            router,
            networks: Mutex::default(),
        }),
        listener,
    })
}

impl Plugin {
    /// The handle the event follower uses.
    pub fn hook(&self) -> Hook {
        Hook(self.inner.clone())
    }

    /// Serves until `shutdown` completes (making the launch network meanwhile), then removes
    /// the launch network (Docker refuses while containers use it) and the socket.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let inner = self.inner;
        tracing::info!(
            "Docker network plugin '{}' listening on {}",
            inner.driver,
            inner.config.socket.display()
        );
        let accept = tokio::spawn(accept_loop(self.listener, inner.clone()));
        let made = inner
            .config
            .network
            .clone()
            .map(|name| tokio::spawn(ensure_network(inner.clone(), name)));
        shutdown.await;
        if let Some(m) = made {
            m.abort();
        }
        if let Some(name) = &inner.config.network {
            // As Weave's `stop`: the network made at launch goes (Docker asks the plugin, so it
            // still serves meanwhile); with containers still on it Docker refuses, which is fine.
            let r = inner
                .config
                .docker
                .call(
                    Method::DELETE,
                    &format!("/networks/{name}"),
                    None,
                    Duration::from_secs(10),
                )
                .await;
            match r {
                Ok((s, _)) if s.is_success() => tracing::info!("removed Docker network '{name}'"),
                Ok((s, v)) => tracing::info!(
                    "Docker network '{name}' stays: {s} {}",
                    crate::upstream::message(&v)
                ),
                Err(e) => tracing::info!("Docker network '{name}' stays: {e:#}"),
            }
        }
        accept.abort();
        let _ = std::fs::remove_file(&inner.config.socket);
        tracing::info!("Docker network plugin stopped");
        Ok(())
    }
}

/// Makes the launch network (`docker network create -d weave --ipam-driver weave --opt
/// works.weave.multicast=true NAME`), retrying while Docker is not answering; an existing one
/// is fine.
async fn ensure_network(inner: Arc<Inner>, name: String) {
    let body = proto::default_network(&name, &inner.driver);
    let mut delay = Duration::from_millis(200);
    loop {
        let r = inner
            .config
            .docker
            .call(
                Method::POST,
                "/networks/create",
                Some(&body),
                Duration::from_secs(60),
            )
            .await;
        match r {
            Ok((s, _)) if s.is_success() => {
                tracing::info!("created Docker network '{name}' (driver {})", inner.driver);
                return;
            }
            Ok((StatusCode::CONFLICT, _)) => {
                tracing::info!("Docker network '{name}' exists");
                return;
            }
            Ok((s, v)) => {
                tracing::warn!(
                    "creating Docker network '{name}': {s} {} (retry in {delay:?})",
                    crate::upstream::message(&v)
                );
            }
            Err(e) => tracing::debug!("creating Docker network '{name}': {e:#}"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

async fn accept_loop(listener: UnixListener, inner: Arc<Inner>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("plugin accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let inner = inner.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let inner = inner.clone();
                async move { Ok::<_, Infallible>(handle(&inner, req).await) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!("plugin connection: {e}");
            }
        });
    }
}

fn answer(status: StatusCode, v: &Value) -> Response<crate::Body> {
    let mut resp = Response::new(crate::full(v.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(proto::CONTENT_TYPE),
    );
    resp
}

async fn handle(inner: &Inner, req: Request<Incoming>) -> Response<crate::Body> {
    let path = req.uri().path().to_owned();
    let body = match Limited::new(req.into_body(), BODY_LIMIT).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return answer(
                StatusCode::BAD_REQUEST,
                &proto::error(&format!("reading the request: {e}")),
            );
        }
    };
    let call = match proto::parse(&path, &body) {
        Ok(c) => c,
        Err(msg) => {
            tracing::warn!("plugin {path}: {msg}");
            return answer(StatusCode::BAD_REQUEST, &proto::error(&msg));
        }
    };
    tracing::debug!(?call, "plugin call");
    match inner.call(call).await {
        Ok(v) => answer(StatusCode::OK, &v),
        Err(e) => {
            let msg = format!("{e:#}");
            tracing::warn!("plugin {path}: {msg}");
            answer(StatusCode::INTERNAL_SERVER_ERROR, &proto::error(&msg))
        }
    }
}

impl Inner {
    /// The running router, waiting up to [`ROUTER_WAIT`](crate::attach::ROUTER_WAIT) for one.
    async fn router(&self) -> anyhow::Result<Handle> {
        crate::attach::wait_router(&self.router).await
    }

    async fn call(&self, call: Call) -> anyhow::Result<Value> {
        Ok(match call {
            Call::Activate => proto::activate(),
            Call::NetCapabilities => proto::net_capabilities(),
            Call::IpamCapabilities => proto::ipam_capabilities(),
            Call::AddressSpaces => proto::address_spaces(),
            Call::CreateNetwork {
                network_id,
                multicast,
            } => {
                self.lock_networks()
                    .insert(network_id, multicast.unwrap_or(false));
                proto::empty()
            }
            Call::DeleteNetwork { network_id } => {
                self.lock_networks().remove(&network_id);
                proto::empty()
            }
            Call::RequestPool { pool, sub_pool } => {
                let subnet = match pool {
                    Some(p) => p,
                    None => self
                        .router()
                        .await?
                        .default_subnet()
                        .context("IPAM is disabled on this router (--ipalloc-range \"\")")?,
                };
                let range = sub_pool.unwrap_or(subnet);
                if !subnet.contains(&range) {
                    bail!("the sub-pool {range} is not inside the pool {subnet}");
                }
                proto::pool(subnet, range)
            }
            Call::ReleasePool | Call::Leave | Call::Ignored => proto::empty(),
            Call::RequestAddress { pool, address } => {
                let addr = self.request_address(&pool, address).await?;
                proto::address(addr, &pool)
            }
            Call::ReleaseAddress { pool, address } => {
                self.release_address(&pool, address).await?;
                proto::empty()
            }
            Call::CreateEndpoint {
                endpoint_id, mac, ..
            } => {
                let router = self.router().await?;
                let (host, guest) = proto::veth_names(&endpoint_id);
                let pair = weft_sys::plumb::bridged_pair(
                    router.bridge(),
                    &host,
                    &guest,
                    router.mtu(),
                    mac,
                    false,
                )
                .await
                .with_context(|| format!("creating the veth pair {host}/{guest}"))?;
                proto::create_endpoint(mac.is_none().then_some(pair.guest_mac))
            }
            Call::EndpointInfo => proto::endpoint_info(),
            Call::Join {
                network_id,
                endpoint_id,
            } => {
                let (_, guest) = proto::veth_names(&endpoint_id);
                let multicast = self.multicast(&network_id).await?;
                proto::join(&guest, multicast)
            }
            Call::DeleteEndpoint { endpoint_id } => {
                let (host, _) = proto::veth_names(&endpoint_id);
                delete_link(&host).await?;
                proto::empty()
            }
        })
    }

    fn lock_networks(&self) -> std::sync::MutexGuard<'_, HashMap<String, bool>> {
        self.networks.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn request_address(
        &self,
        pool: &Pool,
        address: Option<Ipv4Addr>,
    ) -> anyhow::Result<Ipv4Addr> {
        if let Some(a) = address.filter(|a| pool.is_fake_gateway(*a)) {
            return Ok(a);
        }
        let router = self.router().await?;
        let ident = proto::ident(rand::random());
        let reply = match address {
            Some(a) => {
                let cidr = Ipv4Net::new(a, pool.subnet.prefix_len())?;
                router.claim(&ident, cidr).await?
            }
            None => router.allocate(&ident, Some(pool.range)).await?,
        };
        match reply {
            IpamReply::Granted(a) => Ok(a
                .first()
                .map(Ipv4Net::addr)
                .context("IPAM granted no address")?),
            IpamReply::Disabled => bail!("IPAM is disabled on this router (--ipalloc-range \"\")"),
            IpamReply::Refused(msg) => bail!("{}", msg.trim()),
        }
    }

    async fn release_address(&self, pool: &Pool, address: Ipv4Addr) -> anyhow::Result<()> {
        if pool.is_fake_gateway(address) {
            return Ok(());
        }
        let router = self.router().await?;
        let owner = router.owned().and_then(|owned| {
            owned.into_iter().find_map(|(ident, addrs)| {
                (ident.starts_with(proto::IDENT_PREFIX)
                    && addrs.iter().any(|a| a.addr() == address))
                .then_some(ident)
            })
        });
        if let Some(ident) = owner {
            router.release(&ident, Some(address)).await?;
        }
        Ok(())
    }

    /// Whether network `id` asks for the multicast route (from `CreateNetwork`, else Docker).
    async fn multicast(&self, id: &str) -> anyhow::Result<bool> {
        if let Some(m) = self.lock_networks().get(id) {
            return Ok(*m);
        }
        let v = self.inspect_network(id).await?;
        let m = proto::multicast_option(&v["Options"])
            .map_err(anyhow::Error::msg)?
            .unwrap_or(false);
        self.lock_networks().insert(id.to_owned(), m);
        Ok(m)
    }

    /// Whether network `id` is one of this driver's.
    async fn is_ours(&self, id: &str) -> bool {
        if self.lock_networks().contains_key(id) {
            return true;
        }
        match self.inspect_network(id).await {
            Ok(v) => v["Driver"].as_str() == Some(&self.driver),
            Err(_) => false,
        }
    }

    /// Docker's view of network `id` (`GET /networks/ID`).
    async fn inspect_network(&self, id: &str) -> anyhow::Result<Value> {
        let (status, v) = self
            .config
            .docker
            .call(
                Method::GET,
                &format!("/networks/{id}"),
                None,
                Duration::from_secs(10),
            )
            .await?;
        if !status.is_success() {
            bail!(
                "inspecting network {id}: {status} {}",
                crate::upstream::message(&v)
            );
        }
        Ok(v)
    }
}

impl Hook {
    /// Docker started container `id`: on each network of this driver it is in, its names
    /// (`hostname.domainname` when in the domain, and `name.<domain>`) go into weaveDNS on its
    /// address there.
    pub async fn container_started(&self, router: &Handle, id: &str) {
        let inner = &self.0;
        let Some(domain) = router.dns_domain() else {
            return;
        };
        let Ok(Some(inspect)) = inner.config.docker.inspect(id).await else {
            return;
        };
        let Some(nets) = inspect["NetworkSettings"]["Networks"].as_object() else {
            return;
        };
        let mut names: Vec<String> = weft_dockerapi::dns::container_fqdn(&inspect)
            .into_iter()
            .collect();
        if let Some(n) = inspect["Name"].as_str().and_then(|n| n.strip_prefix('/')) {
            names.push(format!("{n}.{domain}"));
        }
        for net in nets.values() {
            let Some(net_id) = net["NetworkID"].as_str() else {
                continue;
            };
            let Some(ip) = net["IPAddress"]
                .as_str()
                .and_then(|a| a.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            if !inner.is_ours(net_id).await {
                continue;
            }
            for name in &names {
                if let Err(e) = router.dns_register(id, ip, name) {
                    tracing::info!(container = %short(id), "not in weaveDNS: {e:#}");
                }
            }
        }
    }
}

/// Deletes interface `name` of this namespace (both ends of a veth go); a missing one is fine.
async fn delete_link(name: &str) -> anyhow::Result<()> {
    let nl = weft_sys::netlink::Netlink::new()?;
    if let Some(index) = nl.link_index(name).await? {
        nl.delete_link(index).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_from_socket() {
        assert_eq!(driver_name(Path::new(DEFAULT_SOCKET)), "weave");
        assert_eq!(driver_name(Path::new("/x/weavemesh.sock")), "weavemesh");
    }
}
