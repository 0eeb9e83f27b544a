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
//! Docker's event stream drives the rest of the lifecycle (attach on restarts Docker does by
//! itself, addresses kept 30 s after `die`, released on `destroy`), and at start every running
//! joined container is attached again.
#![forbid(unsafe_code)]

pub mod attach;
pub mod server;
pub mod upstream;
pub mod waiter;

use std::net::SocketAddr;
use std::path::PathBuf;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;

pub use server::{Proxy, bind};

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
/// Default upstream Docker socket.
pub const DEFAULT_DOCKER_API: &str = "/var/run/docker.sock";

/// What the proxy needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Unix sockets to listen on.
    pub listen: Vec<PathBuf>,
    /// The Docker daemon's socket.
    pub docker_api: PathBuf,
    /// Show the weave address in `docker inspect`.
    pub rewrite_inspect: bool,
    /// Containers without `WEAVE_CIDR` are left alone.
    pub no_default_ipalloc: bool,
    /// Write a joined container's `/etc/hosts` with its name on its weave address.
    pub rewrite_hosts: bool,
    /// The router's HTTP API (IPAM, MTU).
    pub router_api: SocketAddr,
    /// Directory holding the waiter (`w`), bind-mounted into joined containers at `/w`.
    pub waiter_dir: PathBuf,
    /// The bridge containers are attached to.
    pub bridge: String,
}

/// Parses a `-H` / `--docker-api` address: `unix:///path` or a plain absolute path. TCP
/// addresses are refused with a clear message.
pub fn parse_unix_addr(addr: &str) -> anyhow::Result<PathBuf> {
    if let Some(path) = addr.strip_prefix("unix://") {
        if path.starts_with('/') {
            return Ok(PathBuf::from(path));
        }
        anyhow::bail!("'{addr}': a unix address needs an absolute path (unix:///path)");
    }
    if addr.starts_with('/') {
        return Ok(PathBuf::from(addr));
    }
    if addr.starts_with("tcp://") {
        anyhow::bail!(
            "'{addr}': the weft proxy listens on unix sockets only (unix:///path); \
             put a TLS-terminating forwarder in front of it for remote clients"
        );
    }
    anyhow::bail!("'{addr}' is not a unix:///path address")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_addresses() {
        assert_eq!(
            parse_unix_addr("unix:///var/run/weave/weave.sock").unwrap(),
            PathBuf::from("/var/run/weave/weave.sock")
        );
        assert_eq!(
            parse_unix_addr("/tmp/x.sock").unwrap(),
            PathBuf::from("/tmp/x.sock")
        );
        let tcp = parse_unix_addr("tcp://0.0.0.0:12375")
            .unwrap_err()
            .to_string();
        assert!(tcp.contains("unix sockets only"), "{tcp}");
        assert!(parse_unix_addr("unix://relative").is_err());
        assert!(parse_unix_addr("weave.sock").is_err());
    }
}
