//! Layer: driver. Resolving a container argument, as every verb that takes one does
//! (`attach`, `detach`, `ps`, `start`, `restart`, and the `dns-*` verbs): a **Docker container
//! name or id** (asked of Docker on `--docker-api` / `DOCKER_HOST`, through
//! [`weft_proxy::upstream::Docker::container`]), else a **network namespace name**
//! (`/run/netns/NAME`), else a **pid**.
//!
//! [`resolve`] gives the namespace to act on, the pid it was found through, the IPAM ident
//! (a Docker container's full id, so the proxy, `weave attach` and Docker's lifecycle events
//! agree on who owns an address; otherwise the name or pid) and the Docker container itself.
//! Docker being unreachable is not an error here: the argument is then a namespace or a pid.

use anyhow::{Context, bail};
use weft_proxy::upstream::{Container, Docker};
use weft_router::recover::ident;
use weft_sys::netns::NetNs;

use crate::Global;

/// A resolved container argument.
#[derive(Debug)]
pub(crate) struct Target {
    /// Its network namespace.
    pub(crate) netns: NetNs,
    /// The pid it was found through (a Docker container's, or the pid given).
    pub(crate) pid: Option<u32>,
    /// The IPAM ident.
    pub(crate) ident: String,
    /// The Docker container, when the argument named one.
    pub(crate) container: Option<Container>,
}

/// The Docker client for `global` (`--docker-api`, `DOCKER_HOST`, Docker's socket).
pub(crate) fn docker(global: &Global) -> anyhow::Result<Docker> {
    Ok(Docker::new(global.docker()?))
}

/// The Docker container `arg` names, if Docker answers and knows it.
pub(crate) async fn docker_container(
    global: &Global,
    arg: &str,
) -> anyhow::Result<Option<Container>> {
    let docker = docker(global)?;
    match docker.container(arg).await {
        Ok(c) => Ok(c),
        Err(e)
            if e.downcast_ref::<weft_proxy::upstream::Unreachable>()
                .is_some() =>
        {
            tracing::debug!("Docker not reachable: {e:#}");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Resolves `arg` (see the module documentation). A Docker container must be running.
pub(crate) async fn resolve(global: &Global, arg: &str) -> anyhow::Result<Target> {
    if let Some(c) = docker_container(global, arg).await? {
        let Some(pid) = c.pid else {
            bail!("{arg} container is not running.");
        };
        let netns = NetNs::from_pid(pid)
            .with_context(|| format!("opening the network namespace of container {arg}"))?;
        return Ok(Target {
            netns,
            pid: Some(pid),
            ident: c.id.clone(),
            container: Some(c),
        });
    }
    let netns = NetNs::from_target(arg).map_err(|e| {
        anyhow::anyhow!(
            "Error: No such container: {arg} (no Docker container, network namespace or \
             process by that name: {e})"
        )
    })?;
    Ok(Target {
        netns,
        pid: arg.parse::<u32>().ok(),
        ident: ident(arg),
        container: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idents_are_path_safe() {
        assert_eq!(ident("wt1-c1"), "wt1-c1");
        assert_eq!(ident("a b/c"), "a_b_c");
        assert_eq!(ident("1234"), "1234");
    }
}
