//! Layer: driver. The Docker Engine API proxy (weave-reference.md §2).
//!
//! Docker clients (the docker CLI, Mesos' Docker containerizer) talk to the proxy's unix socket
//! instead of Docker's. Every call passes through to the real daemon byte for byte — streams,
//! hijacked and upgraded connections, large bodies — except these:
//!
//! - `containers/create`: a container that joins the weave network (decided from `WEAVE_CIDR`
//!   and `--no-default-ipalloc`, see [`weft_dockerapi::rewrite::decide`]) gets weft's static waiter bind-mounted
//!   at `/w` and put in front of its entrypoint, so its process starts only once `ethwe` is up.
//! - `containers/{id}/start` and `/restart`: after Docker has started the container, its
//!   addresses are allocated and `ethwe` is attached ([`attach::Attacher`]); the call returns
//!   only then, and if that fails the container is killed and the client gets the reason.
//! - `containers/{id}/json` (with `--rewrite-inspect`): the weave address in `NetworkSettings`.
//! - `containers/{id}/exec`: the waiter in front of the command.
//!
//! weaveDNS: a joining container without a hostname gets its name in the DNS domain and
//! weaveDNS as its resolver (unless `--without-dns`); its name is registered once it is
//! attached, and removed when it dies (by the router, see [`weft_router::Handle`]).
//!
//! Docker's event stream drives the rest of the lifecycle ([`lifecycle`]: attach on restarts
//! Docker does by itself, addresses kept 30 s after `die`, released on `destroy`), and when the
//! router (re)starts every running joined container is attached again.
//!
//! [`plugin`] is the other way in: Docker's network plugin API (`docker run --net=weave`).
//!
//! The proxy runs inside the weft daemon, beside the router or before it: it reaches IPAM
//! through the router's in-process [`weft_router::Handle`] ([`RouterSlot`]), and waits a
//! bounded time for a router when none runs.
#![forbid(unsafe_code)]

pub mod attach;
pub mod lifecycle;
pub mod plugin;
pub mod server;
pub mod upstream;
pub mod waiter;

use std::net::SocketAddr;
use std::path::PathBuf;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;

pub use server::{Proxy, bind};
pub use weft_dockerapi::dns::HostnameRule;

/// Error type of response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Body type of everything the proxy sends (upstream bodies pass through boxed).
pub type Body = BoxBody<Bytes, BoxError>;

/// A complete body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|n| match n {}).boxed()
}

/// Default listening socket (Weave's).
pub const DEFAULT_LISTEN: &str = "/var/run/weave/weave.sock";
/// Default TCP port, when the Docker client itself talks TCP (Weave's `PROXY_PORT`).
pub const DEFAULT_TCP_PORT: u16 = 12375;
/// Default upstream Docker socket.
pub const DEFAULT_DOCKER_API: &str = "/var/run/docker.sock";

/// A Docker API endpoint: where the proxy listens (`-H`), or where Docker is (`--docker-api`,
/// `DOCKER_HOST`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// A unix socket.
    Unix(PathBuf),
    /// A TCP address (plain HTTP, as Docker's own unencrypted TCP socket).
    Tcp(SocketAddr),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix://{}", p.display()),
            Self::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

/// Parses an endpoint as Weave's `-H` takes it: `[unix://]/path/to/socket` or
/// `[tcp://][IP]:PORT` (no IP: every address).
pub fn parse_endpoint(addr: &str) -> anyhow::Result<Endpoint> {
    if let Some(path) = addr.strip_prefix("unix://") {
        if path.starts_with('/') {
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        anyhow::bail!("'{addr}': a unix socket must be given as an absolute path (unix:///path)");
    }
    if addr.starts_with('/') {
        return Ok(Endpoint::Unix(PathBuf::from(addr)));
    }
    weft_router::config::parse_socket_addr(addr)
        .map(Endpoint::Tcp)
        .map_err(|_| {
            anyhow::anyhow!(
                "'{addr}' is not a Docker endpoint: write [unix://]/path/to/socket or \
                 [tcp://][IP]:PORT"
            )
        })
}

/// The Docker endpoint `DOCKER_HOST` names, else Docker's default socket.
pub fn default_docker_api() -> anyhow::Result<Endpoint> {
    match std::env::var("DOCKER_HOST") {
        Ok(h) if !h.is_empty() => parse_endpoint(&h).map_err(|e| e.context("DOCKER_HOST")),
        _ => Ok(Endpoint::Unix(PathBuf::from(DEFAULT_DOCKER_API))),
    }
}

/// Where the router is for the proxy: a [`weft_router::Handle`] once the router in this
/// daemon runs, `None` while it does not (the proxy then waits, bounded, for one).
pub type RouterSlot = tokio::sync::watch::Receiver<Option<weft_router::Handle>>;

/// What the proxy needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen.
    pub listen: Vec<Endpoint>,
    /// The Docker daemon.
    pub docker_api: Endpoint,
    /// Show the weave address in `docker inspect`.
    pub rewrite_inspect: bool,
    /// Containers without `WEAVE_CIDR` are left alone.
    pub no_default_ipalloc: bool,
    /// Write a joined container's `/etc/hosts` with its name on its weave address.
    pub rewrite_hosts: bool,
    /// Add the multicast route on `ethwe` (off: `--no-multicast-route`; the waiter then waits
    /// for `ethwe`'s addresses instead).
    pub multicast_route: bool,
    /// Directory holding the waiter (`w`), bind-mounted into joined containers at `/w`.
    pub waiter_dir: PathBuf,
    /// Leave created containers' resolver alone and register no names (`--without-dns`).
    pub without_dns: bool,
    /// How a container's name becomes its hostname (`--hostname-*`).
    pub hostname: HostnameRule,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            parse_endpoint("unix:///var/run/weave/weave.sock").unwrap(),
            Endpoint::Unix(PathBuf::from("/var/run/weave/weave.sock"))
        );
        assert_eq!(
            parse_endpoint("/tmp/x.sock").unwrap(),
            Endpoint::Unix(PathBuf::from("/tmp/x.sock"))
        );
        assert_eq!(
            parse_endpoint("tcp://0.0.0.0:12375").unwrap(),
            Endpoint::Tcp("0.0.0.0:12375".parse().unwrap())
        );
        assert_eq!(
            parse_endpoint("127.0.0.1:2375").unwrap(),
            Endpoint::Tcp("127.0.0.1:2375".parse().unwrap())
        );
        assert_eq!(
            parse_endpoint(":12375").unwrap(),
            Endpoint::Tcp("0.0.0.0:12375".parse().unwrap())
        );
        assert!(parse_endpoint("unix://relative").is_err());
        assert!(parse_endpoint("weave.sock").is_err());
        assert_eq!(
            parse_endpoint("tcp://127.0.0.1:1").unwrap().to_string(),
            "tcp://127.0.0.1:1"
        );
    }
}
