//! Layer: driver. [`Handle`]: the running router as seen by other parts of the same daemon
//! process (the Docker API proxy, the Docker lifecycle follower, the Docker network plugin).
//!
//! They reach IPAM through it directly, never over the router's own HTTP API: it implements
//! [`IpamAccess`] on the shared state (the same request path the `/ip` handlers use, so both
//! wait for consensus or donations alike), and forwards Docker's container lifecycle
//! (`die`, `start`, `destroy`) to the IPAM state machine, which keeps a dead container's
//! addresses for its restart and lets an explicit claim take them.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::Ipv4Net;

use crate::attach::{IpamAccess, IpamReply};
use crate::state::Shared;

/// A cheap, cloneable handle on a running router (see the module documentation). Once the
/// router stopped, IPAM requests fail at once (also those waiting at that moment) instead of
/// waiting for a control loop that no longer runs.
#[derive(Debug, Clone)]
pub struct Handle {
    shared: Arc<Shared>,
    bridge: String,
    stopped: tokio::sync::watch::Receiver<bool>,
}

impl Handle {
    pub(crate) fn new(
        shared: Arc<Shared>,
        bridge: String,
        stopped: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        Self {
            shared,
            bridge,
            stopped,
        }
    }

    /// Whether the router this handle belongs to has stopped.
    pub fn is_stopped(&self) -> bool {
        *self.stopped.borrow()
    }

    /// Completes once the router has stopped.
    pub async fn stopped(&self) {
        let mut rx = self.stopped.clone();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Runs an IPAM request unless (or until) the router stops.
    async fn until_stopped(
        &self,
        f: impl Future<Output = Result<crate::ipam::Outcome, crate::ipam::Refusal>>,
    ) -> anyhow::Result<IpamReply> {
        tokio::select! {
            outcome = f => Ok(reply(outcome)),
            () = self.stopped() => anyhow::bail!("the weft router stopped"),
        }
    }

    /// The overlay MTU (the bridge's and every `ethwe`'s).
    pub fn mtu(&self) -> u32 {
        self.shared.info.mtu
    }

    /// The bridge containers are attached to.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The peer name, as printed (`aa:bb:cc:dd:ee:ff`).
    pub fn peer_name(&self) -> &str {
        &self.shared.info.name
    }

    /// Whether IPAM is enabled on this router.
    pub fn ipam_enabled(&self) -> bool {
        self.shared.ipam().ipam.is_some()
    }

    /// The subnet `net:default` allocates in (`None`: IPAM is disabled).
    pub fn default_subnet(&self) -> Option<Ipv4Net> {
        self.shared
            .ipam()
            .ipam
            .as_ref()
            .map(|d| d.ipam.status().default_subnet)
    }

    /// Every allocation on this peer by ident (`None`: IPAM is disabled).
    pub fn owned(&self) -> Option<BTreeMap<String, Vec<Ipv4Net>>> {
        self.shared.ipam().ipam.as_ref().map(|d| d.ipam.owned())
    }

    /// Docker reported that container `id` died: its addresses are kept for a restart (see
    /// [`weft_ipam::DEAD_TIMEOUT`]); its names leave weaveDNS at once (as in Weave).
    pub fn container_died(&self, id: &str) {
        self.with_ipam(|ipam, now| ipam.container_died(now, id));
        self.dns_deregister(id);
    }

    /// Docker reported that container `id` started (again).
    pub fn container_started(&self, id: &str) {
        self.with_ipam(|ipam, _| ipam.container_started(id));
    }

    /// Docker reported that container `id` was removed: its addresses are released now.
    /// Returns them.
    pub fn container_destroyed(&self, id: &str) -> Vec<Ipv4Net> {
        self.dns_deregister(id);
        self.with_ipam(|ipam, _| ipam.container_destroyed(id))
            .unwrap_or_default()
    }

    /// weaveDNS, when it runs.
    fn dns(&self) -> Option<Arc<crate::dns::DnsService>> {
        self.shared.dns().dns.as_ref().map(|d| d.service.clone())
    }

    /// weaveDNS's domain (`weave.local.`), when DNS runs.
    pub fn dns_domain(&self) -> Option<String> {
        self.dns().map(|svc| svc.names().domain().to_owned())
    }

    /// The address containers use as their nameserver, when DNS runs and listens somewhere
    /// they can reach.
    pub async fn dns_address(&self) -> Option<std::net::SocketAddr> {
        crate::dns::server::advertised(self.dns()?.as_ref()).await
    }

    /// Puts `fqdn` on `addr` for container `id` in weaveDNS (nothing when DNS is off). A name
    /// outside the domain is refused with the reason.
    pub fn dns_register(&self, id: &str, addr: Ipv4Addr, fqdn: &str) -> anyhow::Result<()> {
        let Some(svc) = self.dns() else {
            return Ok(());
        };
        let r = svc.names().add(svc.now(), fqdn, id, addr);
        self.shared.wake.notify_one();
        r.map(|_| ()).map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// Removes every weaveDNS name of container `id`.
    pub fn dns_deregister(&self, id: &str) {
        if let Some(svc) = self.dns() {
            svc.names().delete(svc.now(), None, Some(id), None);
            self.shared.wake.notify_one();
        }
    }

    fn with_ipam<T>(
        &self,
        f: impl FnOnce(&mut weft_ipam::Ipam, weft_mesh::Instant) -> T,
    ) -> Option<T> {
        let out = {
            let mut state = self.shared.ipam();
            let now = self.shared.clock.now();
            state.ipam.as_mut().map(|drv| f(&mut drv.ipam, now))
        };
        // The control loop sends what IPAM queued, persists, and re-arms its timers.
        self.shared.wake.notify_one();
        out
    }
}

fn reply(outcome: Result<crate::ipam::Outcome, crate::ipam::Refusal>) -> IpamReply {
    match outcome {
        Ok(Ok(addrs)) => IpamReply::Granted(addrs),
        Ok(Err(e)) => IpamReply::Refused(e.to_string()),
        Err(_) => IpamReply::Disabled,
    }
}

impl IpamAccess for Handle {
    async fn allocate(&self, ident: &str, subnet: Option<Ipv4Net>) -> anyhow::Result<IpamReply> {
        self.until_stopped(crate::ipam::ipam_request(&self.shared, |ipam, now| {
            ipam.allocate(now, ident, subnet)
        }))
        .await
    }

    async fn claim(&self, ident: &str, addr: Ipv4Net) -> anyhow::Result<IpamReply> {
        let r = self
            .until_stopped(crate::ipam::ipam_request(&self.shared, |ipam, now| {
                ipam.claim(now, ident, addr)
            }))
            .await?;
        Ok(match r {
            IpamReply::Granted(_) => IpamReply::Granted(vec![addr]),
            other => other,
        })
    }

    async fn release(&self, ident: &str, addr: Option<Ipv4Addr>) -> anyhow::Result<()> {
        self.with_ipam(|ipam, _| ipam.release(ident, addr));
        Ok(())
    }

    async fn lookup(&self, ident: &str) -> anyhow::Result<Option<Vec<Ipv4Net>>> {
        Ok(self
            .shared
            .ipam()
            .ipam
            .as_ref()
            .map(|d| d.ipam.lookup(ident)))
    }
}
