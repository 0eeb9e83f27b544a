//! Layer: driver. The one attach path: "give this network namespace an `ethwe` on the bridge
//! with these address specs, this MTU, under this IPAM ident" — and its reverse, detach.
//!
//! Every caller goes through [`attach`] and [`detach`]: `weave attach` / `detach` (the CLI, a
//! separate process, reaching IPAM over the router's HTTP API with [`crate::client::Http`]),
//! the Docker API proxy (inside the router daemon, reaching IPAM in-process through
//! [`crate::handle::Handle`], never over HTTP) and the CNI plugin `weave-net` (a process the
//! container runtime starts: over HTTP; with another IPAM plugin such as `host-local`, through
//! [`Given`], which records nothing). What differs between them is only how IPAM is reached,
//! which is the [`IpamAccess`] trait, and how the container side looks (CNI names the
//! interface, wants hairpin mode and routes: [`AttachRequest`]). Docker's network plugin API
//! moves the interface into the container itself, so the Docker plugin uses the host half of
//! the plumbing ([`weft_sys::plumb::bridged_pair`]) and the same [`IpamAccess`].
//!
//! The steps (Weave's `attach`, weave-reference.md §2.5): refuse the host's own namespace and a
//! missing bridge; get the addresses from IPAM ([`acquire`]: `net:` specs allocate, `ip:`/CIDR
//! specs claim; without IPAM an explicit address is used as given); run the caller's hook
//! (the proxy and `--rewrite-hosts` write `/etc/hosts` there, before the interface exists, so
//! a waiting program sees both together); create or extend `ethwe`
//! ([`weft_sys::plumb::attach_with`]). If plumbing fails, the addresses this call took are
//! given back; addresses the ident already held stay (a failed re-attach must not free them).

use std::future::Future;
use std::net::Ipv4Addr;

use anyhow::{Context, bail};
use ipnet::Ipv4Net;
use weft_sys::netlink::Netlink;
use weft_sys::netns::NetNs;
use weft_sys::plumb::{self, ETHWE, Guest};

pub use weft_ipam::spec::AddrSpec;

/// What IPAM answered to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpamReply {
    /// The addresses granted (one for an allocation or claim).
    Granted(Vec<Ipv4Net>),
    /// IPAM is disabled on this router (`--ipalloc-range ""`).
    Disabled,
    /// IPAM refused; the message says why.
    Refused(String),
}

/// How a caller reaches the router's IPAM: over HTTP from another process
/// ([`crate::client::Http`]) or in-process ([`crate::handle::Handle`]).
pub trait IpamAccess {
    /// Allocates one address for `ident` in `subnet` (the default subnet when `None`), or
    /// returns the one `ident` already has there.
    fn allocate(
        &self,
        ident: &str,
        subnet: Option<Ipv4Net>,
    ) -> impl Future<Output = anyhow::Result<IpamReply>> + Send;
    /// Claims exactly `addr` for `ident`.
    fn claim(
        &self,
        ident: &str,
        addr: Ipv4Net,
    ) -> impl Future<Output = anyhow::Result<IpamReply>> + Send;
    /// Gives back `addr` of `ident`, or everything `ident` holds when `None`. Releasing what is
    /// not held, or with IPAM disabled, is not an error.
    fn release(
        &self,
        ident: &str,
        addr: Option<Ipv4Addr>,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// What `ident` holds (`None`: IPAM is disabled).
    fn lookup(
        &self,
        ident: &str,
    ) -> impl Future<Output = anyhow::Result<Option<Vec<Ipv4Net>>>> + Send;
}

/// Allocates or claims every spec for `ident`: all of them, or (on the first failure) none,
/// giving back what this call took. Without IPAM an explicit address is used as given and a
/// `net:` spec is an error.
pub async fn acquire<I: IpamAccess>(
    ipam: &I,
    ident: &str,
    specs: &[AddrSpec],
) -> anyhow::Result<Vec<Ipv4Net>> {
    let held = ipam.lookup(ident).await.ok().flatten().unwrap_or_default();
    let mut addrs: Vec<Ipv4Net> = Vec::new();
    for spec in specs {
        match acquire_one(ipam, ident, *spec).await {
            Ok(a) => {
                if !addrs.contains(&a) {
                    addrs.push(a);
                }
            }
            Err(e) => {
                give_back(ipam, ident, &addrs, &held).await;
                return Err(e);
            }
        }
    }
    Ok(addrs)
}

async fn acquire_one<I: IpamAccess>(
    ipam: &I,
    ident: &str,
    spec: AddrSpec,
) -> anyhow::Result<Ipv4Net> {
    let (reply, what) = match spec {
        AddrSpec::DefaultSubnet => (ipam.allocate(ident, None).await, "net:default".to_owned()),
        AddrSpec::Subnet(n) => (ipam.allocate(ident, Some(n)).await, format!("net:{n}")),
        AddrSpec::Address(a) => (ipam.claim(ident, a).await, a.to_string()),
    };
    match (spec, reply) {
        (AddrSpec::Address(a), Ok(IpamReply::Granted(_) | IpamReply::Disabled)) => Ok(a),
        (AddrSpec::Address(a), Err(e)) => {
            // No router to record it in: the address is still the user's to use (Weave does
            // the same when the router is not running).
            tracing::warn!("router not reachable ({e:#}); using {a} without recording it in IPAM");
            Ok(a)
        }
        (_, Ok(IpamReply::Granted(got))) => got
            .first()
            .copied()
            .with_context(|| format!("IPAM granted no address for {what}")),
        (_, Ok(IpamReply::Disabled)) => bail!(
            "IP address allocation must be enabled to use '{what}' (the router runs with \
             --ipalloc-range \"\"); give an explicit address like 10.32.0.5/12"
        ),
        (_, Ok(IpamReply::Refused(msg))) => bail!("{what}: {}", msg.trim()),
        (_, Err(e)) => Err(e.context(format!("allocating {what} needs a running router"))),
    }
}

/// Gives back the addresses in `took` that `ident` did not hold before (`held`).
async fn give_back<I: IpamAccess>(ipam: &I, ident: &str, took: &[Ipv4Net], held: &[Ipv4Net]) {
    for a in took {
        if held.iter().any(|h| h.addr() == a.addr()) {
            continue;
        }
        if let Err(e) = ipam.release(ident, Some(a.addr())).await {
            tracing::warn!(ident, "giving back {a}: {e:#}");
        }
    }
}

/// Everything [`attach`] needs besides IPAM.
#[derive(Debug)]
pub struct AttachRequest<'a> {
    /// The container's network namespace.
    pub netns: &'a NetNs,
    /// The pid the namespace was found through (names the host veth `vethwepl<pid>`), if any.
    pub pid: Option<u32>,
    /// Address specs (`net:default` when empty).
    pub specs: &'a [AddrSpec],
    /// MTU of `ethwe` (the bridge's overlay MTU).
    pub mtu: u32,
    /// The IPAM ident: a Docker container's full id, else a name for the namespace.
    pub ident: &'a str,
    /// The bridge to attach to.
    pub bridge: &'a str,
    /// Add the route `224.0.0.0/4 dev ethwe` (off: Weave's `--no-multicast-route`).
    pub multicast_route: bool,
    /// The container's interface name ([`ETHWE`] but for CNI's `CNI_IFNAME`).
    pub ifname: &'a str,
    /// Hairpin mode on the host end (CNI's `hairpinMode`).
    pub hairpin: bool,
    /// Routes to add through the interface: (destination, next hop; `None`: on-link).
    pub routes: &'a [(Ipv4Net, Option<Ipv4Addr>)],
}

impl<'a> AttachRequest<'a> {
    /// `ethwe` as `weave attach` and the proxy make it: with the multicast route, no hairpin,
    /// no other routes.
    pub fn ethwe(
        netns: &'a NetNs,
        pid: Option<u32>,
        specs: &'a [AddrSpec],
        mtu: u32,
        ident: &'a str,
        bridge: &'a str,
    ) -> Self {
        Self {
            netns,
            pid,
            specs,
            mtu,
            ident,
            bridge,
            multicast_route: true,
            ifname: ETHWE,
            hairpin: false,
            routes: &[],
        }
    }
}

/// IPAM that grants whatever address is asked for and records nothing: for addresses another
/// IPAM (a CNI IPAM plugin such as `host-local`) gave out.
#[derive(Debug, Clone, Copy, Default)]
pub struct Given;

impl IpamAccess for Given {
    async fn allocate(&self, _: &str, _: Option<Ipv4Net>) -> anyhow::Result<IpamReply> {
        Ok(IpamReply::Disabled)
    }
    async fn claim(&self, _: &str, addr: Ipv4Net) -> anyhow::Result<IpamReply> {
        Ok(IpamReply::Granted(vec![addr]))
    }
    async fn release(&self, _: &str, _: Option<Ipv4Addr>) -> anyhow::Result<()> {
        Ok(())
    }
    async fn lookup(&self, _: &str) -> anyhow::Result<Option<Vec<Ipv4Net>>> {
        Ok(None)
    }
}

/// What [`attach`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// The addresses this call asked for (in the order of the specs).
    pub addrs: Vec<Ipv4Net>,
    /// Every IPv4 address `ethwe` has now (these and earlier ones).
    pub all_addrs: Vec<Ipv4Net>,
    /// `ethwe`'s MAC.
    pub mac: [u8; 6],
}

/// Attaches `req.netns` (see the module documentation). `before_interface` runs with the
/// addresses once IPAM granted them and before `ethwe` gets them.
pub async fn attach<I: IpamAccess>(
    ipam: &I,
    req: AttachRequest<'_>,
    before_interface: impl FnOnce(&[Ipv4Net]),
) -> anyhow::Result<Attached> {
    let host = NetNs::current().context("opening this process's network namespace")?;
    if host.same_as(req.netns) {
        bail!(
            "the target shares the host's network namespace (perhaps the container was started \
             with --net=host); it cannot be attached"
        );
    }
    let nl = Netlink::new()?;
    if nl.link_index(req.bridge).await?.is_none() {
        bail!(
            "there is no bridge '{}' here; run 'weave launch' first",
            req.bridge
        );
    }
    let default = [AddrSpec::DefaultSubnet];
    let specs = if req.specs.is_empty() {
        &default[..]
    } else {
        req.specs
    };
    let held = ipam
        .lookup(req.ident)
        .await
        .ok()
        .flatten()
        .unwrap_or_default();
    let addrs = acquire(ipam, req.ident, specs).await?;
    before_interface(&addrs);
    let guest = Guest {
        ifname: req.ifname,
        multicast_route: req.multicast_route,
        hairpin: req.hairpin,
        routes: req.routes,
    };
    match plumb::attach_as(req.bridge, req.netns, req.pid, &addrs, req.mtu, &guest).await {
        Ok(a) => Ok(Attached {
            addrs,
            all_addrs: a.addrs,
            mac: a.mac,
        }),
        Err(e) => {
            give_back(ipam, req.ident, &addrs, &held).await;
            Err(anyhow::Error::from(e).context(format!("creating {}", req.ifname)))
        }
    }
}

/// Which addresses [`detach`] removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetachWhat<'a> {
    /// Every weave address (and `ethwe` itself).
    All,
    /// These specs: `ip:`/CIDR removes that address, `net:SUBNET` every address in that
    /// subnet, `net:default` those in `default_subnet`.
    Specs {
        /// The specs.
        specs: &'a [AddrSpec],
        /// The default subnet (for `net:default`); `None`: what IPAM holds for the ident.
        default_subnet: Option<Ipv4Net>,
    },
}

/// Removes addresses from `netns`'s `ethwe` (deleting it when none is left) and gives them
/// back to IPAM under `ident`. Returns the addresses removed.
pub async fn detach<I: IpamAccess>(
    ipam: &I,
    netns: &NetNs,
    ident: &str,
    what: DetachWhat<'_>,
) -> anyhow::Result<Vec<Ipv4Net>> {
    detach_if(ipam, netns, ETHWE, ident, what).await
}

/// [`detach`] for interface `ifname` (CNI's `CNI_IFNAME`).
pub async fn detach_if<I: IpamAccess>(
    ipam: &I,
    netns: &NetNs,
    ifname: &str,
    ident: &str,
    what: DetachWhat<'_>,
) -> anyhow::Result<Vec<Ipv4Net>> {
    let on_ethwe = ipv4_addrs_of(netns, ifname).await?;
    let held = ipam.lookup(ident).await.ok().flatten().unwrap_or_default();
    let chosen = match what {
        DetachWhat::All => {
            let mut all = on_ethwe.clone();
            for h in &held {
                if !all.iter().any(|a| a.addr() == h.addr()) {
                    all.push(*h);
                }
            }
            all
        }
        DetachWhat::Specs {
            specs,
            default_subnet,
        } => select(specs, &on_ethwe, &held, default_subnet),
    };
    let gone: Vec<Ipv4Net> = chosen
        .iter()
        .filter(|c| on_ethwe.iter().any(|e| e.addr() == c.addr()))
        .copied()
        .collect();
    match what {
        DetachWhat::All => plumb::detach_if(netns, ifname, None).await?,
        DetachWhat::Specs { .. } if !gone.is_empty() => {
            plumb::detach_if(netns, ifname, Some(&gone)).await?;
        }
        DetachWhat::Specs { .. } => {}
    }
    let mut first_error = None;
    if matches!(what, DetachWhat::All) {
        if let Err(e) = ipam.release(ident, None).await {
            first_error = Some(e);
        }
    } else {
        for c in &chosen {
            if let Err(e) = ipam.release(ident, Some(c.addr())).await {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        // The interface is done; IPAM will catch up (or the router is not running).
        tracing::warn!(ident, "releasing in IPAM: {e:#}");
    }
    Ok(chosen)
}

/// The addresses `specs` name, among those on `ethwe` and those IPAM holds.
pub fn select(
    specs: &[AddrSpec],
    on_ethwe: &[Ipv4Net],
    held: &[Ipv4Net],
    default_subnet: Option<Ipv4Net>,
) -> Vec<Ipv4Net> {
    let mut known: Vec<Ipv4Net> = on_ethwe.to_vec();
    for h in held {
        if !known.iter().any(|k| k.addr() == h.addr()) {
            known.push(*h);
        }
    }
    let mut out: Vec<Ipv4Net> = Vec::new();
    let mut push = |c: Ipv4Net| {
        if !out.iter().any(|o| o.addr() == c.addr()) {
            out.push(c);
        }
    };
    for spec in specs {
        match *spec {
            AddrSpec::Address(a) => push(
                known
                    .iter()
                    .find(|k| k.addr() == a.addr())
                    .copied()
                    .unwrap_or(a),
            ),
            AddrSpec::Subnet(n) => known
                .iter()
                .filter(|k| n.contains(&k.addr()))
                .for_each(|k| push(*k)),
            AddrSpec::DefaultSubnet => match default_subnet {
                Some(n) => known
                    .iter()
                    .filter(|k| n.contains(&k.addr()))
                    .for_each(|k| push(*k)),
                None => held.iter().for_each(|h| push(*h)),
            },
        }
    }
    out
}

/// The IPv4 addresses on `ethwe` in `netns` (none if it has no `ethwe`).
pub async fn ethwe_addresses(netns: &NetNs) -> anyhow::Result<Vec<Ipv4Net>> {
    ipv4_addrs_of(netns, ETHWE).await
}

async fn ipv4_addrs_of(netns: &NetNs, ifname: &str) -> anyhow::Result<Vec<Ipv4Net>> {
    Ok(plumb::inspect(netns, ifname)
        .await?
        .map(|i| i.addrs)
        .unwrap_or_default())
}

/// `ethwe`'s MAC and IPv4 addresses in `netns`, if it has one.
pub async fn ethwe(netns: &NetNs) -> anyhow::Result<Option<([u8; 6], Vec<Ipv4Net>)>> {
    let nl = Netlink::in_netns(netns)?;
    let Some(index) = nl.link_index(ETHWE).await? else {
        return Ok(None);
    };
    let Some(mac) = nl.link_mac(index).await? else {
        return Ok(None);
    };
    Ok(Some((mac, plumb::ipv4_addrs(nl.addresses(index).await?))))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    /// An in-memory IPAM: a fixed answer per allocation, and a record of releases.
    #[derive(Default)]
    struct Fake {
        held: Mutex<Vec<Ipv4Net>>,
        released: Mutex<Vec<Option<Ipv4Addr>>>,
        refuse_claims: bool,
        disabled: bool,
    }

    impl IpamAccess for Fake {
        async fn allocate(&self, _: &str, subnet: Option<Ipv4Net>) -> anyhow::Result<IpamReply> {
            if self.disabled {
                return Ok(IpamReply::Disabled);
            }
            let n = subnet.unwrap_or(net("10.32.0.0/12"));
            let a = Ipv4Net::new(n.hosts().next().unwrap(), n.prefix_len()).unwrap();
            self.held.lock().unwrap().push(a);
            Ok(IpamReply::Granted(vec![a]))
        }
        async fn claim(&self, _: &str, addr: Ipv4Net) -> anyhow::Result<IpamReply> {
            if self.disabled {
                return Ok(IpamReply::Disabled);
            }
            if self.refuse_claims {
                return Ok(IpamReply::Refused("address in use".into()));
            }
            self.held.lock().unwrap().push(addr);
            Ok(IpamReply::Granted(vec![addr]))
        }
        async fn release(&self, _: &str, addr: Option<Ipv4Addr>) -> anyhow::Result<()> {
            self.released.lock().unwrap().push(addr);
            Ok(())
        }
        async fn lookup(&self, _: &str) -> anyhow::Result<Option<Vec<Ipv4Net>>> {
            Ok((!self.disabled).then(|| self.held.lock().unwrap().clone()))
        }
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn acquire_is_all_or_nothing() {
        let ipam = Fake {
            refuse_claims: true,
            ..Fake::default()
        };
        let specs = [
            AddrSpec::Subnet(net("10.32.1.0/24")),
            AddrSpec::Address(net("10.32.2.5/24")),
        ];
        let e = block_on(acquire(&ipam, "c", &specs)).unwrap_err();
        assert!(e.to_string().contains("address in use"), "{e}");
        assert_eq!(
            *ipam.released.lock().unwrap(),
            vec![Some("10.32.1.1".parse().unwrap())],
            "the allocation made before the refusal is given back"
        );
    }

    #[test]
    fn without_ipam_only_explicit_addresses_work() {
        let ipam = Fake {
            disabled: true,
            ..Fake::default()
        };
        let got = block_on(acquire(
            &ipam,
            "c",
            &[AddrSpec::Address(net("10.40.0.2/16"))],
        ));
        assert_eq!(got.unwrap(), vec![net("10.40.0.2/16")]);
        let e = block_on(acquire(&ipam, "c", &[AddrSpec::DefaultSubnet])).unwrap_err();
        assert!(e.to_string().contains("must be enabled"), "{e}");
    }

    #[test]
    fn detach_selection() {
        let on = [
            net("10.32.1.2/24"),
            net("10.32.2.7/24"),
            net("10.40.0.2/16"),
        ];
        let held = [net("10.32.1.2/24"), net("10.32.2.7/24")];
        assert_eq!(
            select(&[AddrSpec::Subnet(net("10.32.1.0/24"))], &on, &held, None),
            vec![net("10.32.1.2/24")]
        );
        assert_eq!(
            select(&[AddrSpec::Address(net("10.40.0.2/16"))], &on, &held, None),
            vec![net("10.40.0.2/16")]
        );
        assert_eq!(
            select(&[AddrSpec::DefaultSubnet], &on, &held, None),
            held.to_vec()
        );
        assert_eq!(
            select(
                &[AddrSpec::DefaultSubnet],
                &on,
                &held,
                Some(net("10.32.2.0/24"))
            ),
            vec![net("10.32.2.7/24")]
        );
        // An address given with another prefix length matches by address.
        assert_eq!(
            select(&[AddrSpec::Address(net("10.32.1.2/12"))], &on, &held, None),
            vec![net("10.32.1.2/24")]
        );
    }
}
