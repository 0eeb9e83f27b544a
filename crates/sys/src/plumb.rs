//! Layer: OS. Container interface injection, as Weave's `AttachContainer` (`net/veth.go`) does
//! for `weave attach` and the Docker proxy (weave-reference.md §2.5).
//!
//! Owns the veth pair between the `weave` bridge and a target namespace: host end
//! `vethwepl<id>` on the bridge, guest end renamed `ethwe` (or the name CNI asks for, see
//! [`Guest`]) inside the target, its addresses, gratuitous ARPs, routes and the multicast
//! route; and the reverse in [`detach`]. [`bridged_pair`] is the host half alone, for Docker's
//! network plugin API (Docker moves the other end into the container itself). [`attached`]
//! finds what each port of the bridge leads to (`weft ps`, and the router's start-up claim of
//! every address in use on this host).
//!
//! Not reproduced from Weave: the iptables rules that drop multicast arriving on `ethwe`
//! except from the container's own subnets and ethtool TX-checksum tweaks.

use std::io;
use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net};

use crate::netlink::{Error, Netlink};
use crate::netns::NetNs;

/// Name of the container-side interface.
pub const ETHWE: &str = "ethwe";
/// Host-side veth name prefix.
pub const HOST_PREFIX: &str = "vethwepl";
/// Guest-side veth name prefix (before the rename to [`ETHWE`]).
pub const GUEST_PREFIX: &str = "vethwepg";
/// Length of a gratuitous ARP frame: 14 bytes Ethernet + 28 bytes ARP.
pub const ARP_FRAME_LEN: usize = 42;

/// Longest Linux interface name.
const IFNAME_MAX: usize = 15;

/// Result of [`attach`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// MAC address of `ethwe`.
    pub mac: [u8; 6],
    /// All IPv4 addresses now on `ethwe` (the new ones and any that were there before).
    pub addrs: Vec<Ipv4Net>,
    /// Name of the host end of the veth pair.
    pub host_ifname: String,
}

/// The id used in veth names: the pid if known, else the low 7 decimal digits of the namespace
/// inode (so that `vethwepl<id>` fits 15 characters).
pub fn veth_id(pid: Option<u32>, netns_inode: u64) -> u32 {
    match pid {
        Some(pid) => pid,
        // The remainder is below 10^7, so it fits a u32.
        None => (netns_inode % 10_000_000) as u32,
    }
}

/// Host and guest veth names for `id`, each cut to 15 characters.
pub fn veth_names(id: u32) -> (String, String) {
    let cut = |prefix: &str| {
        let mut s = format!("{prefix}{id}");
        s.truncate(IFNAME_MAX);
        s
    };
    (cut(HOST_PREFIX), cut(GUEST_PREFIX))
}

/// A random MAC address that is locally administered and unicast.
pub fn random_mac() -> [u8; 6] {
    let mut mac: [u8; 6] = rand::random();
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}

/// A gratuitous ARP announcing that `ip` is at `mac`: a broadcast ARP request whose sender and
/// target protocol addresses are both `ip` (target hardware address zero).
pub fn gratuitous_arp(mac: [u8; 6], ip: Ipv4Addr) -> [u8; ARP_FRAME_LEN] {
    let mut f = [0u8; ARP_FRAME_LEN];
    f[0..6].copy_from_slice(&[0xff; 6]); // destination: broadcast
    f[6..12].copy_from_slice(&mac); // source
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes()); // ethertype ARP
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // htype Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // ptype IPv4
    f[18] = 6; // hlen
    f[19] = 4; // plen
    f[20..22].copy_from_slice(&1u16.to_be_bytes()); // oper: request
    f[22..28].copy_from_slice(&mac); // sender hardware address
    f[28..32].copy_from_slice(&ip.octets()); // sender protocol address
    // f[32..38]: target hardware address, zero
    f[38..42].copy_from_slice(&ip.octets()); // target protocol address
    f
}

/// Sends one gratuitous ARP per address out of interface `ifindex`, through an `AF_PACKET`
/// socket opened in the calling thread's namespace.
pub fn send_gratuitous_arps(ifindex: u32, mac: [u8; 6], ips: &[Ipv4Addr]) -> io::Result<()> {
    let sock = crate::packet::ArpSocket::open(ifindex)?;
    for ip in ips {
        sock.send(&gratuitous_arp(mac, *ip))?;
    }
    Ok(())
}

/// Best-effort write of a sysctl under `/proc/sys` (as seen from the calling thread's namespace).
fn write_sysctl(path: &str, value: &str) {
    if let Err(e) = std::fs::write(format!("/proc/sys/{path}"), value) {
        tracing::debug!(path, error = %e, "sysctl write failed");
    }
}

/// No IPv6 on interface `ifname` (best effort): a bridge port or tunnel device that carries
/// others' frames has no business sending its own router solicitations or MLD reports.
pub fn disable_ipv6(ifname: &str) {
    write_sysctl(&format!("net/ipv6/conf/{ifname}/disable_ipv6"), "1");
}

/// Weave's per-interface tuning: no IPv6 router advertisements, and quick ARP re-validation.
fn tune_interface(ifname: &str, arp: bool) {
    write_sysctl(&format!("net/ipv6/conf/{ifname}/accept_ra"), "0");
    if arp {
        write_sysctl(&format!("net/ipv4/neigh/{ifname}/base_reachable_time"), "5");
        write_sysctl(
            &format!("net/ipv4/neigh/{ifname}/delay_first_probe_time"),
            "2",
        );
        write_sysctl(&format!("net/ipv4/neigh/{ifname}/ucast_solicit"), "1");
        // Deleting the first address of a subnet must not take the others with it.
        write_sysctl(&format!("net/ipv4/conf/{ifname}/promote_secondaries"), "1");
    }
}

fn io_error(op: &'static str, target: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let target = target.into();
    move |source| Error::Io { op, target, source }
}

/// What `weft attach` / `weave attach` does (Weave's `AttachContainer`).
///
/// Creates a veth pair whose host end `vethwepl<id>` (id: `id_hint`, normally the target's pid,
/// else the namespace inode's low decimal digits) joins `bridge` with `mtu` and comes up; the
/// peer end, with a random locally administered unicast MAC, moves into `target`, is renamed
/// `ethwe`, gets `mtu` and `addrs`, and comes up together with `lo`. Then one gratuitous ARP
/// per address goes out of `ethwe`, and last the route `224.0.0.0/4 dev ethwe` is added (its
/// presence signals "fully configured"). If `ethwe` already exists in `target`, only the new
/// addresses are added (and announced). Must run in the host namespace, on a tokio runtime.
pub async fn attach(
    bridge: &str,
    target: &NetNs,
    id_hint: Option<u32>,
    addrs: &[Ipv4Net],
    mtu: u32,
) -> Result<Attached, Error> {
    attach_with(bridge, target, id_hint, addrs, mtu, true).await
}

/// [`attach`], with the last step (the route `224.0.0.0/4 dev ethwe`) only when
/// `multicast_route` is true (Weave's `--no-multicast-route` leaves it out).
pub async fn attach_with(
    bridge: &str,
    target: &NetNs,
    id_hint: Option<u32>,
    addrs: &[Ipv4Net],
    mtu: u32,
    multicast_route: bool,
) -> Result<Attached, Error> {
    let guest = Guest {
        multicast_route,
        ..Guest::ETHWE
    };
    attach_as(bridge, target, id_hint, addrs, mtu, &guest).await
}

/// How the container side of an attachment looks: its name and what it gets besides its
/// addresses. [`Guest::ETHWE`] is Weave's (`weave attach`, the proxy); CNI names the interface
/// itself (`CNI_IFNAME`), turns hairpin mode on and adds routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guest<'a> {
    /// The interface name in the target.
    pub ifname: &'a str,
    /// Add the route `224.0.0.0/4 dev IFNAME` last (its presence signals "fully configured").
    pub multicast_route: bool,
    /// Hairpin mode on the host end's bridge port (traffic may leave where it came in).
    pub hairpin: bool,
    /// Routes to add through the interface after its addresses: (destination, next hop;
    /// `None`: on-link).
    pub routes: &'a [(Ipv4Net, Option<Ipv4Addr>)],
}

impl Guest<'_> {
    /// `ethwe` with the multicast route, no hairpin, no other routes.
    pub const ETHWE: Guest<'static> = Guest {
        ifname: ETHWE,
        multicast_route: true,
        hairpin: false,
        routes: &[],
    };
}

/// [`attach`] with the container side as `guest` says (see [`Guest`]).
pub async fn attach_as(
    bridge: &str,
    target: &NetNs,
    id_hint: Option<u32>,
    addrs: &[Ipv4Net],
    mtu: u32,
    guest: &Guest<'_>,
) -> Result<Attached, Error> {
    let host = NetNs::current().map_err(io_error("open netns", "of the calling thread"))?;
    if host.same_as(target) {
        return Err(Error::Invalid {
            op: "attach",
            reason: "the target network namespace is the host's \
                     (perhaps the container was started with --net=host)"
                .into(),
        });
    }
    let host_nl = Netlink::new()?;
    let guest_nl = Netlink::in_netns(target)?;

    let (ethwe, host_ifname, host_index, created) = match guest_nl.link_index(guest.ifname).await? {
        Some(index) => {
            let (ethwe, name, host_index) = host_end(&host_nl, &guest_nl, index).await?;
            (ethwe, name, host_index, false)
        }
        None => {
            let id = veth_id(id_hint, target.inode());
            let (ethwe, name, host_index) =
                create_pair(&host_nl, &guest_nl, &host, target, bridge, id, mtu, guest).await?;
            (ethwe, name, host_index, true)
        }
    };

    let configured = configure(&host_nl, &guest_nl, target, ethwe, host_index, addrs, guest).await;
    match configured {
        Ok((mac, addrs)) => Ok(Attached {
            mac,
            addrs,
            host_ifname,
        }),
        Err(e) => {
            if created {
                // Do not leave a half-configured interface behind (this removes the host end
                // too).
                if let Err(cleanup) = guest_nl.delete_link(ethwe).await {
                    tracing::warn!(error = %cleanup, "cleaning up {} failed", guest.ifname);
                }
            }
            Err(e)
        }
    }
}

/// Addresses, up, ARPs, multicast route; returns ethwe's MAC and all its IPv4 addresses.
async fn configure(
    host_nl: &Netlink,
    guest_nl: &Netlink,
    target: &NetNs,
    ethwe: u32,
    host_index: Option<u32>,
    addrs: &[Ipv4Net],
    guest: &Guest<'_>,
) -> Result<([u8; 6], Vec<Ipv4Net>), Error> {
    for addr in addrs {
        guest_nl.add_address(ethwe, IpNet::V4(*addr)).await?;
    }
    guest_nl.set_up(ethwe).await?;
    if let Some(lo) = guest_nl.link_index("lo").await? {
        guest_nl.set_up(lo).await?;
    }
    if let Some(host_index) = host_index {
        wait_forwarding(host_nl, host_index).await?;
    }
    let mac = guest_nl
        .link_mac(ethwe)
        .await?
        .ok_or_else(|| Error::NoSuchLink {
            op: "read mac",
            name: guest.ifname.into(),
        })?;

    if !addrs.is_empty() {
        let ips: Vec<Ipv4Addr> = addrs.iter().map(Ipv4Net::addr).collect();
        let sent = target.run_in(move || {
            std::thread::sleep(Duration::from_millis(1));
            send_gratuitous_arps(ethwe, mac, &ips)
        });
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(e)) | Err(e) => {
                tracing::warn!(error = %e, "sending gratuitous ARP from {} failed", guest.ifname);
            }
        }
    }
    for (dst, gw) in guest.routes {
        guest_nl.add_route(ethwe, *dst, *gw).await?;
    }
    if guest.multicast_route {
        guest_nl.add_multicast_route(ethwe).await?;
    }

    let addrs = guest_nl
        .addresses(ethwe)
        .await?
        .into_iter()
        .filter_map(|n| match n {
            IpNet::V4(n) => Some(n),
            IpNet::V6(_) => None,
        })
        .collect();
    Ok((mac, addrs))
}

/// For an existing `ethwe`: its index, the host end's name and index (empty name and `None`
/// if the peer cannot be found in the host namespace).
async fn host_end(
    host_nl: &Netlink,
    guest_nl: &Netlink,
    ethwe: u32,
) -> Result<(u32, String, Option<u32>), Error> {
    if let Some(link) = guest_nl.link(ethwe).await? {
        if let (Some(peer), true) = (link.peer_index, link.peer_in_other_netns) {
            // The index is only meaningful if the peer is in the host namespace: check that
            // the link found there points back at ethwe.
            if let Some(h) = host_nl.link(peer).await? {
                if h.peer_index == Some(ethwe) && h.peer_in_other_netns {
                    return Ok((ethwe, h.name, Some(peer)));
                }
            }
        }
    }
    Ok((ethwe, String::new(), None))
}

/// Waits (up to 2 s) until the host end is a forwarding bridge port. The port only leaves the
/// disabled state once the kernel's link watcher has seen the veth carrier come up, a moment
/// after `ethwe` went up; a gratuitous ARP sent before that would be dropped by the bridge.
async fn wait_forwarding(host_nl: &Netlink, host_index: u32) -> Result<(), Error> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        match host_nl.link(host_index).await? {
            Some(l) if l.bridge_port_forwarding != Some(false) => return Ok(()),
            None => return Ok(()),
            Some(_) => {}
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::debug!(host_index, "bridge port not forwarding after 2 s");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A veth pair whose host end is a port of the bridge (made by [`bridged_pair`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgedPair {
    /// The host end's name.
    pub host_name: String,
    /// The host end's index.
    pub host_index: u32,
    /// The other end's name (still in the host namespace).
    pub guest_name: String,
    /// The other end's index.
    pub guest_index: u32,
    /// The other end's MAC.
    pub guest_mac: [u8; 6],
}

/// Makes a veth pair `host_name`/`guest_name` in the calling thread's namespace: the host end
/// joins `bridge` with `mtu` (hairpin mode on if asked) and comes up; the other end gets `mtu`
/// and `mac` (a random one when `None`) and stays down in this namespace, for the caller to
/// move into a container (the attach path does it itself; Docker does it for its network
/// plugins). A stale pair under the same names, whose other end never left this namespace, is
/// replaced. On failure nothing is left behind.
pub async fn bridged_pair(
    bridge: &str,
    host_name: &str,
    guest_name: &str,
    mtu: u32,
    mac: Option<[u8; 6]>,
    hairpin: bool,
) -> Result<BridgedPair, Error> {
    let nl = Netlink::new()?;
    let host = NetNs::current().map_err(io_error("open netns", "of the calling thread"))?;
    let bridge_index = bridge_index(&nl, bridge).await?;
    for name in [host_name, guest_name] {
        if let Some(index) = nl.link_index(name).await? {
            match nl.link(index).await? {
                Some(old) if old.peer_index.is_some() && !old.peer_in_other_netns => {
                    tracing::info!(name, "deleting leftover veth");
                    nl.delete_link(index).await?;
                }
                _ => {
                    return Err(Error::Invalid {
                        op: "create veth",
                        reason: format!("an interface {name} exists already"),
                    });
                }
            }
        }
    }
    wire_pair(
        &nl,
        &host,
        bridge_index,
        host_name,
        guest_name,
        mtu,
        mac,
        hairpin,
    )
    .await
}

async fn bridge_index(nl: &Netlink, bridge: &str) -> Result<u32, Error> {
    nl.link_index(bridge)
        .await?
        .ok_or_else(|| Error::NoSuchLink {
            op: "attach",
            name: bridge.into(),
        })
}

/// Creates and wires the pair (see [`bridged_pair`]); deletes it again on failure.
#[allow(clippy::too_many_arguments)]
async fn wire_pair(
    host_nl: &Netlink,
    host: &NetNs,
    bridge_index: u32,
    host_name: &str,
    guest_name: &str,
    mtu: u32,
    mac: Option<[u8; 6]>,
    hairpin: bool,
) -> Result<BridgedPair, Error> {
    let (host_index, guest_index) = host_nl.add_veth(host_name, guest_name).await?;
    let guest_mac = mac.unwrap_or_else(random_mac);
    let wired = async {
        host_nl.set_mac(guest_index, guest_mac).await?;
        host_nl.set_mtu(guest_index, mtu).await?;
        host_nl.set_mtu(host_index, mtu).await?;
        let name = host_name.to_owned();
        if let Err(e) = host.run_in(move || tune_interface(&name, false)) {
            tracing::debug!(error = %e, "tuning host veth failed");
        }
        host_nl.set_master(host_index, bridge_index).await?;
        if hairpin {
            host_nl.set_hairpin(host_index, true).await?;
        }
        host_nl.set_up(host_index).await
    }
    .await;
    match wired {
        Ok(()) => Ok(BridgedPair {
            host_name: host_name.to_owned(),
            host_index,
            guest_name: guest_name.to_owned(),
            guest_index,
            guest_mac,
        }),
        Err(e) => {
            // Deleting one end of a veth pair deletes both, wherever the peer is.
            if let Err(cleanup) = host_nl.delete_link(host_index).await {
                tracing::warn!(error = %cleanup, "cleaning up {host_name} failed");
            }
            Err(e)
        }
    }
}

/// Creates the pair, wires the host end and moves the other end in as `guest.ifname` (down, no
/// addresses yet). Returns its index in the target and the host end's name and index. On
/// failure the pair is deleted again.
#[allow(clippy::too_many_arguments)]
async fn create_pair(
    host_nl: &Netlink,
    guest_nl: &Netlink,
    host: &NetNs,
    target: &NetNs,
    bridge: &str,
    id: u32,
    mtu: u32,
    guest: &Guest<'_>,
) -> Result<(u32, String, Option<u32>), Error> {
    let bridge_index = bridge_index(host_nl, bridge).await?;

    let (mut host_name, mut guest_name) = veth_names(id);
    let existing = match host_nl.link_index(&host_name).await? {
        Some(index) => host_nl.link(index).await?,
        None => None,
    };
    if let Some(old) = existing {
        if old.peer_index.is_some() && !old.peer_in_other_netns {
            // A pair left behind by an attach that failed half-way: its peer never left the host.
            tracing::info!(name = %host_name, "deleting leftover veth");
            host_nl.delete_link(old.index).await?;
        } else {
            // In use (its peer is in some other, live, namespace): the id collides; pick another.
            let other = veth_id(None, u64::from(rand::random::<u32>()));
            (host_name, guest_name) = veth_names(other);
        }
    }
    if let Some(stale) = host_nl.link_index(&guest_name).await? {
        host_nl.delete_link(stale).await?;
    }

    let pair = wire_pair(
        host_nl,
        host,
        bridge_index,
        &host_name,
        &guest_name,
        mtu,
        None,
        guest.hairpin,
    )
    .await?;
    let moved = async {
        host_nl.move_to_netns(pair.guest_index, target).await?;
        let moved = guest_nl
            .link_index(&guest_name)
            .await?
            .ok_or_else(|| Error::NoSuchLink {
                op: "move to netns",
                name: guest_name.clone(),
            })?;
        guest_nl.rename(moved, guest.ifname).await?;
        let ifname = guest.ifname.to_owned();
        if let Err(e) = target.run_in(move || tune_interface(&ifname, true)) {
            tracing::debug!(error = %e, "tuning {} failed", guest.ifname);
        }
        Ok::<u32, Error>(moved)
    }
    .await;
    match moved {
        Ok(index) => Ok((index, host_name, Some(pair.host_index))),
        Err(e) => {
            if let Err(cleanup) = host_nl.delete_link(pair.host_index).await {
                tracing::warn!(error = %cleanup, "cleaning up {host_name} failed");
            }
            Err(e)
        }
    }
}

/// A container found at the other end of one of the bridge's `vethwepl*` ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedContainer {
    /// Name of the host end (the bridge port).
    pub port: String,
    /// The target as `weft attach` took it: the pid the port is named after, else the name of
    /// the network namespace.
    pub target: String,
    /// That pid, when the target is one.
    pub pid: Option<u32>,
    /// The Docker container (64 hex digits) the pid belongs to, from its cgroup, if any.
    pub docker_id: Option<String>,
    /// The namespace's inode.
    pub netns_inode: u64,
    /// MAC address of `ethwe`.
    pub mac: [u8; 6],
    /// IPv4 addresses on `ethwe` (link-local ones left out).
    pub addrs: Vec<Ipv4Net>,
}

/// What the ports of `bridge` lead to: the containers found (sorted by port name) and the
/// `vethwepl*` ports whose namespace could not be found. Runs in the calling thread's
/// namespace (the host's), on a tokio runtime.
pub async fn attached(bridge: &str) -> Result<(Vec<AttachedContainer>, Vec<String>), Error> {
    let nl = Netlink::new()?;
    let Some(bridge_index) = nl.link_index(bridge).await? else {
        return Ok((Vec::new(), Vec::new()));
    };
    let host = NetNs::current().map_err(io_error("open netns", "of the calling thread"))?;
    let names = named_netns();
    let mut ports = nl.links_with_master(bridge_index).await?;
    ports.sort_by(|a, b| a.1.cmp(&b.1));
    let (mut found, mut unresolved) = (Vec::new(), Vec::new());
    for (index, name) in ports {
        if !name.starts_with(HOST_PREFIX) {
            continue;
        }
        match find_container(&host, index, &name, &names).await? {
            Some(c) => found.push(c),
            None => unresolved.push(name),
        }
    }
    Ok((found, unresolved))
}

/// IPv4 addresses that are not link-local (169.254/16).
pub fn ipv4_addrs(addrs: Vec<IpNet>) -> Vec<Ipv4Net> {
    addrs
        .into_iter()
        .filter_map(|n| match n {
            IpNet::V4(n) if !n.addr().is_link_local() => Some(n),
            _ => None,
        })
        .collect()
}

/// The container end of host veth `host_index`: its `ethwe` MAC and addresses, if `ns` is it.
async fn container_end(
    ns: &NetNs,
    host_index: u32,
) -> Result<Option<([u8; 6], Vec<Ipv4Net>)>, Error> {
    let nl = Netlink::in_netns(ns)?;
    let Some(ethwe) = nl.link_index(ETHWE).await? else {
        return Ok(None);
    };
    let Some(link) = nl.link(ethwe).await? else {
        return Ok(None);
    };
    if link.peer_index != Some(host_index) || !link.peer_in_other_netns {
        return Ok(None);
    }
    let Some(mac) = link.mac else {
        return Ok(None);
    };
    Ok(Some((mac, ipv4_addrs(nl.addresses(ethwe).await?))))
}

/// Named namespaces (`/run/netns/*`), sorted.
fn named_netns() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(crate::netns::NETNS_RUN_DIR) else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

/// The Docker container process `pid` belongs to (64 hex digits), from its cgroup path
/// (`/docker/<id>` or `docker-<id>.scope`).
pub fn docker_id(pid: u32) -> Option<String> {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    docker_id_in(&cgroups).map(str::to_owned)
}

/// The 64-hex-digit segment of a `/proc/PID/cgroup` text.
pub fn docker_id_in(cgroups: &str) -> Option<&str> {
    cgroups
        .lines()
        .flat_map(|line| line.split(['/', '-', '.', ':']))
        .find(|seg| seg.len() == 64 && seg.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Finds the container behind host veth `name` (index `index`): the id in the name is the pid
/// it was attached for, or the low digits of its namespace's inode (see [`veth_id`]).
async fn find_container(
    host: &NetNs,
    index: u32,
    name: &str,
    netns_names: &[String],
) -> Result<Option<AttachedContainer>, Error> {
    let Some(id) = name
        .strip_prefix(HOST_PREFIX)
        .and_then(|s| s.parse::<u32>().ok())
    else {
        return Ok(None);
    };
    let found = |target: String, pid: Option<u32>, ns: &NetNs, (mac, addrs)| AttachedContainer {
        port: name.to_owned(),
        target,
        pid,
        docker_id: pid.and_then(docker_id),
        netns_inode: ns.inode(),
        mac,
        addrs,
    };
    if let Ok(ns) = NetNs::from_pid(id) {
        if !ns.same_as(host) {
            if let Some(end) = container_end(&ns, index).await? {
                return Ok(Some(found(id.to_string(), Some(id), &ns, end)));
            }
        }
    }
    for n in netns_names {
        let Ok(ns) = NetNs::from_name(n) else {
            continue;
        };
        if veth_id(None, ns.inode()) != id || ns.same_as(host) {
            continue;
        }
        if let Some(end) = container_end(&ns, index).await? {
            return Ok(Some(found(n.clone(), None, &ns, end)));
        }
    }
    Ok(None)
}

/// Removes `addrs` from `ethwe` in `target`; when `addrs` is `None` or no IPv4 address is left,
/// deletes `ethwe` (which also removes its host end). Nothing to do if there is no `ethwe`.
pub async fn detach(target: &NetNs, addrs: Option<&[Ipv4Net]>) -> Result<(), Error> {
    detach_if(target, ETHWE, addrs).await
}

/// [`detach`] for interface `ifname`.
pub async fn detach_if(
    target: &NetNs,
    ifname: &str,
    addrs: Option<&[Ipv4Net]>,
) -> Result<(), Error> {
    let guest_nl = Netlink::in_netns(target)?;
    let Some(ethwe) = guest_nl.link_index(ifname).await? else {
        return Ok(());
    };
    if let Some(addrs) = addrs {
        for addr in addrs {
            guest_nl.del_address(ethwe, IpNet::V4(*addr)).await?;
        }
        let left = guest_nl.addresses(ethwe).await?;
        if left.iter().any(|n| matches!(n, IpNet::V4(_))) {
            return Ok(());
        }
    }
    guest_nl.delete_link(ethwe).await
}

/// What an attached interface looks like in `target`: MAC, IPv4 addresses (link-local ones
/// left out) and IPv4 routes through it; `None` when there is no `ifname`.
pub async fn inspect(target: &NetNs, ifname: &str) -> Result<Option<Inspected>, Error> {
    let nl = Netlink::in_netns(target)?;
    let Some(index) = nl.link_index(ifname).await? else {
        return Ok(None);
    };
    let Some(mac) = nl.link_mac(index).await? else {
        return Ok(None);
    };
    let addrs = nl
        .addresses(index)
        .await?
        .into_iter()
        .filter_map(|n| match n {
            IpNet::V4(n) if !n.addr().is_link_local() => Some(n),
            _ => None,
        })
        .collect();
    let routes = nl.routes_v4(index).await?;
    Ok(Some(Inspected { mac, addrs, routes }))
}

/// What [`inspect`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspected {
    /// The MAC.
    pub mac: [u8; 6],
    /// IPv4 addresses.
    pub addrs: Vec<Ipv4Net>,
    /// IPv4 routes through the interface (main table): destination, next hop.
    pub routes: Vec<(Ipv4Net, Option<Ipv4Addr>)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            veth_names(1234),
            ("vethwepl1234".to_string(), "vethwepg1234".to_string())
        );
        let (h, g) = veth_names(4_194_304);
        assert_eq!(h, "vethwepl4194304");
        assert_eq!(g, "vethwepg4194304");
        let (h, _) = veth_names(u32::MAX);
        assert_eq!(h.len(), 15);
        assert_eq!(h, "vethwepl4294967");
        assert_eq!(veth_id(Some(42), 4026532000), 42);
        assert_eq!(veth_id(None, 4026532123), 6532123);
        let (h, _) = veth_names(veth_id(None, u64::MAX));
        assert!(h.len() <= 15);
    }

    #[test]
    fn docker_ids_from_cgroup_paths() {
        let id = "3f2a9c0d1e4b".to_owned() + &"a".repeat(52);
        let v1 = format!("12:pids:/docker/{id}\n0::/docker/{id}\n");
        assert_eq!(docker_id_in(&v1), Some(id.as_str()));
        let v2 = format!("0::/system.slice/docker-{id}.scope\n");
        assert_eq!(docker_id_in(&v2), Some(id.as_str()));
        assert_eq!(docker_id_in("0::/user.slice/session-1.scope\n"), None);
    }

    #[test]
    fn macs_are_local_unicast() {
        for _ in 0..64 {
            let m = random_mac();
            assert_eq!(m[0] & 0x01, 0, "unicast");
            assert_eq!(m[0] & 0x02, 0x02, "locally administered");
        }
    }

    #[test]
    fn garp_layout() {
        let mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
        let f = gratuitous_arp(mac, Ipv4Addr::new(10, 32, 0, 5));
        let expect: [u8; 42] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x11, 0x22, 0x33, 0x44, 0x55, 0x08,
            0x06, //
            0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01, //
            0x02, 0x11, 0x22, 0x33, 0x44, 0x55, 10, 32, 0, 5, //
            0, 0, 0, 0, 0, 0, 10, 32, 0, 5,
        ];
        assert_eq!(f, expect);
    }
}
