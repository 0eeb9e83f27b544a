//! Layer: driver. Docker's container lifecycle, as Weave's router follows it for IPAM and the
//! proxy for its joined containers (weave-reference.md §4.4). The daemon runs [`follow`]
//! whenever its router or proxy runs, and [`router_started`] each time its router (re)starts.
//!
//! IPAM idents of containers are their full Docker ids, whoever attached them (the proxy or
//! `weave attach <container>`), so all of them get the same rules:
//!
//! - `die`: the router keeps the addresses 30 s for a restart; meanwhile an explicit claim by
//!   another container takes one at once ([`weft_router::Handle::container_died`]);
//! - `start`: the container keeps its addresses; a proxy-joined one is attached again (unless
//!   a client's start call through the proxy does that itself); one on a network of the
//!   network plugin gets its names in weaveDNS ([`crate::plugin::Hook`]);
//! - `destroy`: the addresses are released at once;
//! - router start: addresses of containers that stopped or were removed while the router was
//!   down (their events were missed) are released, then the proxy re-attaches the running
//!   joined containers.

use std::time::Duration;

use http_body_util::BodyExt;
use serde_json::Value;
use tokio::sync::watch;
use weft_dockerapi::events::split_json_stream;
use weft_router::Handle;

use crate::RouterSlot;
use crate::attach::{Attacher, short};
use crate::upstream::Docker;

/// The proxy's attacher while the proxy runs.
pub type ProxySlot = watch::Receiver<Option<Attacher>>;

/// The network plugin while it runs.
pub type PluginSlot = watch::Receiver<Option<crate::plugin::Hook>>;

/// Follows Docker's container events until dropped (resubscribing with backoff when Docker
/// goes away), passing each to the router, the proxy and the network plugin that run at that
/// moment.
pub async fn follow(docker: Docker, router: RouterSlot, proxy: ProxySlot, plugin: PluginSlot) {
    let mut delay = Duration::from_millis(500);
    loop {
        match docker.events().await {
            Ok(mut body) => {
                delay = Duration::from_millis(500);
                let mut buf = Vec::new();
                while let Some(frame) = body.frame().await {
                    let Ok(frame) = frame else { break };
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    buf.extend_from_slice(&data);
                    for ev in split_json_stream(&mut buf) {
                        on_event(&router, &proxy, &plugin, &ev).await;
                    }
                }
                tracing::info!("Docker event stream ended; resubscribing");
            }
            Err(e) => tracing::debug!("Docker events: {e:#}"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

fn running_router(router: &RouterSlot) -> Option<Handle> {
    router
        .borrow()
        .as_ref()
        .filter(|h| !h.is_stopped())
        .cloned()
}

async fn on_event(router: &RouterSlot, proxy: &ProxySlot, plugin: &PluginSlot, ev: &Value) {
    let action = ev["Action"]
        .as_str()
        .or(ev["status"].as_str())
        .unwrap_or_default();
    let Some(id) = ev["Actor"]["ID"].as_str().or(ev["id"].as_str()) else {
        return;
    };
    let id = id.to_owned();
    let router = running_router(router);
    let attacher = proxy.borrow().clone();
    match action {
        "start" => {
            if let Some(r) = &router {
                r.container_started(&id);
                if let Some(p) = plugin.borrow().clone() {
                    let (r, id) = (r.clone(), id.clone());
                    tokio::spawn(async move { p.container_started(&r, &id).await });
                }
            }
            if let Some(a) = attacher.filter(|a| !a.in_api_start(&id)) {
                tokio::spawn(async move {
                    if let Err(e) = a.attach(&id).await {
                        tracing::warn!(container = %short(&id), "attach after start failed, stopping it: {e:#}");
                        a.fail(&id).await;
                    }
                });
            }
        }
        "die" => {
            if let Some(r) = &router {
                r.container_died(&id);
            }
            if let Some(a) = &attacher {
                a.died(&id);
            }
        }
        "destroy" => {
            if let Some(r) = &router {
                let freed = r.container_destroyed(&id);
                if !freed.is_empty() {
                    tracing::info!(container = %short(&id), ?freed, "removed: addresses released");
                }
            }
            if let Some(a) = attacher {
                tokio::spawn(async move { a.destroyed(&id).await });
            }
        }
        _ => {}
    }
}

/// Whether an IPAM ident is a Docker container id (64 hex digits).
pub fn is_container_id(ident: &str) -> bool {
    ident.len() == 64 && ident.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The router (re)started: release what containers that stopped or were removed meanwhile
/// held, then have the proxy (if it runs) attach the running joined containers again.
pub async fn router_started(docker: &Docker, router: &Handle, proxy: Option<&Attacher>) {
    prune(docker, router, proxy).await;
    if let Some(a) = proxy {
        a.reattach_all().await;
    }
}

/// Releases the addresses of containers that are not running now (Weave's `PruneOwned` at
/// router start). Each is checked again under the proxy's lock for it, so a container starting
/// meanwhile keeps its addresses. Idents that are not container ids (`weave:expose`, named
/// namespaces) are never touched; nothing is released when Docker cannot be asked.
pub async fn prune(docker: &Docker, router: &Handle, proxy: Option<&Attacher>) {
    let Some(owned) = router.owned() else {
        return;
    };
    let running = match docker.running().await {
        Ok(ids) => ids,
        Err(e) => {
            tracing::debug!("not pruning IPAM: listing Docker's containers: {e:#}");
            return;
        }
    };
    for id in owned.keys() {
        if !is_container_id(id) || running.iter().any(|r| r == id) {
            continue;
        }
        let lock = proxy.map(|a| a.lock_for(id));
        let _held = match &lock {
            Some(l) => Some(l.lock().await),
            None => None,
        };
        let still_down = match docker.inspect(id).await {
            Ok(None) => true,
            Ok(Some(i)) => i["State"]["Running"].as_bool() != Some(true),
            Err(_) => false,
        };
        if still_down {
            let freed = router.container_destroyed(id);
            tracing::info!(container = %short(id), ?freed, "container stopped or removed while weft was down: addresses released");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids() {
        assert!(is_container_id(&"ab".repeat(32)));
        assert!(!is_container_id("weave:expose"));
        assert!(!is_container_id(&"ab".repeat(6)));
        assert!(!is_container_id(&"xy".repeat(32)));
    }
}
