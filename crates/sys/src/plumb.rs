//! Layer: OS. Container interface injection, as Weave's `AttachContainer` (`net/veth.go`) does
//! for `weave attach` and the Docker proxy (weave-reference.md §2.5).
//!
//! Owns the veth pair between the `weave` bridge and a target namespace: host end
//! `vethwepl<id>` on the bridge, guest end renamed `ethwe` inside the target, its addresses,
//! gratuitous ARPs and the multicast route; and the reverse in [`detach`].
//!
//! Not reproduced from Weave: the iptables rules that drop multicast arriving on `ethwe`
//! except from the container's own subnets, hairpin mode and ethtool TX-checksum tweaks.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
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
    let proto = (libc::ETH_P_ARP as u16).to_be();
    // SAFETY: plain socket(2) call with constant arguments; the result is checked below.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::c_int::from(proto),
        )
    };
    let raw = crate::cvt(raw)?;
    // SAFETY: `raw` is a freshly created descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_ll is plain integer data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as libc::c_ushort;
    sll.sll_protocol = proto;
    sll.sll_ifindex = libc::c_int::try_from(ifindex)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "ifindex out of range"))?;
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    for ip in ips {
        let frame = gratuitous_arp(mac, *ip);
        // SAFETY: `frame` and `sll` are live for the call, and the lengths passed are theirs.
        let sent = unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const sll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        crate::cvt_size(sent)?;
    }
    Ok(())
}

/// Best-effort write of a sysctl under `/proc/sys` (as seen from the calling thread's namespace).
fn write_sysctl(path: &str, value: &str) {
    if let Err(e) = std::fs::write(format!("/proc/sys/{path}"), value) {
        tracing::debug!(path, error = %e, "sysctl write failed");
    }
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

    let (ethwe, host_ifname, host_index, created) = match guest_nl.link_index(ETHWE).await? {
        Some(index) => {
            let (ethwe, name, host_index) = host_end(&host_nl, &guest_nl, index).await?;
            (ethwe, name, host_index, false)
        }
        None => {
            let id = veth_id(id_hint, target.inode());
            let (ethwe, name, host_index) =
                create_pair(&host_nl, &guest_nl, &host, target, bridge, id, mtu).await?;
            (ethwe, name, host_index, true)
        }
    };

    let configured = configure(&host_nl, &guest_nl, target, ethwe, host_index, addrs).await;
    match configured {
        Ok((mac, addrs)) => Ok(Attached {
            mac,
            addrs,
            host_ifname,
        }),
        Err(e) => {
            if created {
                // Do not leave a half-configured ethwe behind (this removes the host end too).
                if let Err(cleanup) = guest_nl.delete_link(ethwe).await {
                    tracing::warn!(error = %cleanup, "cleaning up {ETHWE} failed");
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
            name: ETHWE.into(),
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
                tracing::warn!(error = %e, "sending gratuitous ARP from {ETHWE} failed");
            }
        }
    }
    guest_nl.add_multicast_route(ethwe).await?;

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

/// Creates the pair, wires the host end and moves the guest end in as `ethwe` (down, no
/// addresses yet). Returns `ethwe`'s index in the target and the host end's name and index. On failure
/// the pair is deleted again.
async fn create_pair(
    host_nl: &Netlink,
    guest_nl: &Netlink,
    host: &NetNs,
    target: &NetNs,
    bridge: &str,
    id: u32,
    mtu: u32,
) -> Result<(u32, String, Option<u32>), Error> {
    let bridge_index = host_nl
        .link_index(bridge)
        .await?
        .ok_or_else(|| Error::NoSuchLink {
            op: "attach",
            name: bridge.into(),
        })?;

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

    let (host_index, guest_index) = host_nl.add_veth(&host_name, &guest_name).await?;
    let wired = async {
        host_nl.set_mac(guest_index, random_mac()).await?;
        host_nl.set_mtu(guest_index, mtu).await?;
        host_nl.set_mtu(host_index, mtu).await?;
        let name = host_name.clone();
        if let Err(e) = host.run_in(move || tune_interface(&name, false)) {
            tracing::debug!(error = %e, "tuning host veth failed");
        }
        host_nl.set_master(host_index, bridge_index).await?;
        host_nl.set_up(host_index).await?;
        host_nl.move_to_netns(guest_index, target).await?;
        let moved = guest_nl
            .link_index(&guest_name)
            .await?
            .ok_or_else(|| Error::NoSuchLink {
                op: "move to netns",
                name: guest_name.clone(),
            })?;
        guest_nl.rename(moved, ETHWE).await?;
        if let Err(e) = target.run_in(|| tune_interface(ETHWE, true)) {
            tracing::debug!(error = %e, "tuning {ETHWE} failed");
        }
        Ok::<u32, Error>(moved)
    }
    .await;
    match wired {
        Ok(ethwe) => Ok((ethwe, host_name, Some(host_index))),
        Err(e) => {
            // Deleting one end of a veth pair deletes both, wherever the peer is.
            if let Err(cleanup) = host_nl.delete_link(host_index).await {
                tracing::warn!(error = %cleanup, "cleaning up {host_name} failed");
            }
            Err(e)
        }
    }
}

/// Removes `addrs` from `ethwe` in `target`; when `addrs` is `None` or no IPv4 address is left,
/// deletes `ethwe` (which also removes its host end). Nothing to do if there is no `ethwe`.
pub async fn detach(target: &NetNs, addrs: Option<&[Ipv4Net]>) -> Result<(), Error> {
    let guest_nl = Netlink::in_netns(target)?;
    let Some(ethwe) = guest_nl.link_index(ETHWE).await? else {
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
