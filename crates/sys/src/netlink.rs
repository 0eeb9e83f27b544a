//! Layer: OS. rtnetlink operations (links, addresses, routes) bound to one network namespace.
//!
//! Owns the wrapper around `rtnetlink` (crates.md §2: pin it, keep it in one module). A
//! [`Netlink`] handle's socket is created inside its namespace by a short-lived thread
//! ([`NetNs::run_in`]) and then driven as a task on the current tokio runtime; a socket keeps
//! the namespace it was created in, so the handle can be used from any task.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};

use futures::TryStreamExt;
use ipnet::IpNet;
use ipnet::Ipv4Net;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{
    BridgePortState, InfoBridgePort, InfoPortData, LinkAttribute, LinkInfo,
};
use netlink_packet_route::route::RouteScope;
use netlink_packet_route::route::{RouteAddress, RouteAttribute};
use netlink_sys::{TokioSocket, protocols::NETLINK_ROUTE};
use rtnetlink::{
    AddressMessageBuilder, Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec,
    LinkVeth, LinkVxlan, RouteMessageBuilder,
};

use crate::netns::NetNs;

/// Errors from netlink operations. Each says which operation failed and on which interface.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel (or rtnetlink) rejected a request.
    #[error("{op} {target}: {}", describe(.source))]
    Netlink {
        /// The operation, e.g. "set mtu".
        op: &'static str,
        /// The interface or object it was applied to.
        target: String,
        /// The underlying error.
        #[source]
        source: rtnetlink::Error,
    },
    /// A system call around netlink (socket, namespace) failed.
    #[error("{op} {target}: {source}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The interface, namespace or object concerned.
        target: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An interface that must exist does not.
    #[error("{op}: no interface {name:?}")]
    NoSuchLink {
        /// The operation.
        op: &'static str,
        /// The missing interface.
        name: String,
    },
    /// The request cannot be carried out as asked.
    #[error("{op}: {reason}")]
    Invalid {
        /// The operation.
        op: &'static str,
        /// Why.
        reason: String,
    },
    /// No tokio runtime is running on this thread; a [`Netlink`] handle needs one.
    #[error("netlink needs a tokio runtime on the calling thread")]
    NoRuntime,
}

impl Error {
    /// The errno of a kernel-rejected request or failed system call, if that is what it was.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Netlink { source, .. } => errno_of(source),
            Self::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// The errno text for kernel rejections; rtnetlink's own text otherwise.
fn describe(e: &rtnetlink::Error) -> String {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io().to_string(),
        other => other.to_string(),
    }
}

fn errno_of(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()).filter(|&c| c != 0),
        _ => None,
    }
}

/// Maps an rtnetlink result into [`Error::Netlink`] with context.
trait Context<T> {
    fn ctx(self, op: &'static str, target: impl std::fmt::Display) -> Result<T, Error>;
}

impl<T> Context<T> for Result<T, rtnetlink::Error> {
    fn ctx(self, op: &'static str, target: impl std::fmt::Display) -> Result<T, Error> {
        self.map_err(|source| Error::Netlink {
            op,
            target: target.to_string(),
            source,
        })
    }
}

/// rtnetlink handle bound to one namespace.
///
/// Created inside a tokio runtime (it spawns the connection task there); dropping it stops
/// that task and closes the socket.
#[derive(Debug)]
pub struct Netlink {
    handle: Handle,
    conn: tokio::task::JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

/// Formats an interface index for error messages.
fn ifx(index: u32) -> String {
    format!("ifindex {index}")
}

impl Netlink {
    /// A handle on the calling thread's namespace.
    pub fn new() -> Result<Self, Error> {
        let sock = netlink_sys::Socket::new(NETLINK_ROUTE).map_err(|source| Error::Io {
            op: "open netlink socket",
            target: "in current namespace".into(),
            source,
        })?;
        Self::from_socket(sock)
    }

    /// A handle on namespace `ns` (its socket is opened from a thread inside `ns`).
    pub fn in_netns(ns: &NetNs) -> Result<Self, Error> {
        let io_err = |source| Error::Io {
            op: "open netlink socket",
            target: format!("in netns {}", ns.inode()),
            source,
        };
        let sock = ns
            .run_in(|| netlink_sys::Socket::new(NETLINK_ROUTE))
            .map_err(io_err)?
            .map_err(io_err)?;
        Self::from_socket(sock)
    }

    fn from_socket(sock: netlink_sys::Socket) -> Result<Self, Error> {
        let rt = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let raw = sock.into_raw_fd();
        // SAFETY: `raw` was just released by a netlink_sys::Socket that owned it, so the
        // TokioSocket becomes its sole owner. A tokio runtime is current (checked above), which
        // TokioSocket::from_raw_fd requires for registering the fd.
        let sock = unsafe { TokioSocket::from_raw_fd(raw) };
        let (conn, handle, _unsolicited) = rtnetlink::from_socket(sock);
        let conn = rt.spawn(conn);
        Ok(Self { handle, conn })
    }

    /// The index of interface `name`, or `None` if there is none.
    pub async fn link_index(&self, name: &str) -> Result<Option<u32>, Error> {
        let mut req = std::pin::pin!(self.handle.link().get().match_name(name).execute());
        match req.try_next().await {
            Ok(msg) => Ok(msg.map(|m| m.header.index)),
            Err(e) if is_no_device(&e) => Ok(None),
            Err(e) => Err(e).ctx("look up link", name),
        }
    }

    /// What the kernel reports about interface `index`, or `None` if there is none.
    pub async fn link(&self, index: u32) -> Result<Option<LinkSummary>, Error> {
        let mut req = std::pin::pin!(self.handle.link().get().match_index(index).execute());
        match req.try_next().await {
            Ok(msg) => Ok(msg.map(LinkSummary::from_message)),
            Err(e) if is_no_device(&e) => Ok(None),
            Err(e) => Err(e).ctx("look up link", ifx(index)),
        }
    }

    /// The interface's name, or `None` if there is no interface `index`.
    pub async fn link_name(&self, index: u32) -> Result<Option<String>, Error> {
        Ok(self.link(index).await?.map(|l| l.name))
    }

    /// The interface's MAC address, or `None` if there is no interface `index` (or it has no
    /// 6-byte hardware address).
    pub async fn link_mac(&self, index: u32) -> Result<Option<[u8; 6]>, Error> {
        Ok(self.link(index).await?.and_then(|l| l.mac))
    }

    /// Creates bridge `name` if missing, sets its MTU (and MAC, if given) and brings it up;
    /// returns its index.
    pub async fn ensure_bridge(
        &self,
        name: &str,
        mtu: u32,
        mac: Option<[u8; 6]>,
    ) -> Result<u32, Error> {
        let index = match self.link_index(name).await? {
            Some(i) => i,
            None => {
                let add = self
                    .handle
                    .link()
                    .add(LinkBridge::new(name).build())
                    .execute()
                    .await;
                match add {
                    Ok(()) => {}
                    Err(e) if errno_of(&e) == Some(libc::EEXIST) => {}
                    Err(e) => return Err(e).ctx("create bridge", name),
                }
                self.link_index(name)
                    .await?
                    .ok_or_else(|| Error::NoSuchLink {
                        op: "create bridge",
                        name: name.into(),
                    })?
            }
        };
        self.set_mtu(index, mtu).await?;
        if let Some(mac) = mac {
            self.set_mac(index, mac).await?;
        }
        self.set_up(index).await?;
        Ok(index)
    }

    async fn set(
        &self,
        op: &'static str,
        index: u32,
        msg: LinkMessageBuilder<LinkUnspec>,
    ) -> Result<(), Error> {
        self.handle
            .link()
            .set(msg.build())
            .execute()
            .await
            .ctx(op, ifx(index))
    }

    /// Brings the interface up.
    pub async fn set_up(&self, index: u32) -> Result<(), Error> {
        self.set("set up", index, LinkUnspec::new_with_index(index).up())
            .await
    }

    /// Takes the interface down.
    pub async fn set_down(&self, index: u32) -> Result<(), Error> {
        self.set("set down", index, LinkUnspec::new_with_index(index).down())
            .await
    }

    /// Sets the interface MTU.
    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), Error> {
        self.set("set mtu", index, LinkUnspec::new_with_index(index).mtu(mtu))
            .await
    }

    /// Sets the interface MAC address.
    pub async fn set_mac(&self, index: u32, mac: [u8; 6]) -> Result<(), Error> {
        self.set(
            "set mac",
            index,
            LinkUnspec::new_with_index(index).address(mac.to_vec()),
        )
        .await
    }

    /// Enslaves the interface to `master` (a bridge).
    pub async fn set_master(&self, index: u32, master: u32) -> Result<(), Error> {
        self.set(
            "set master",
            index,
            LinkUnspec::new_with_index(index).controller(master),
        )
        .await
    }

    /// Deletes the interface (for a veth, both ends go).
    pub async fn delete_link(&self, index: u32) -> Result<(), Error> {
        self.handle
            .link()
            .del(index)
            .execute()
            .await
            .ctx("delete link", ifx(index))
    }

    /// Creates a VXLAN device `name` in external (collect-metadata) mode on UDP `port`;
    /// returns its index.
    pub async fn add_vxlan_external(&self, name: &str, port: u16) -> Result<u32, Error> {
        self.handle
            .link()
            .add(
                LinkVxlan::new(name, 0)
                    .collect_metadata(true)
                    .port(port)
                    .build(),
            )
            .execute()
            .await
            .ctx("create vxlan (external)", name)?;
        self.link_index(name)
            .await?
            .ok_or_else(|| Error::NoSuchLink {
                op: "create vxlan (external)",
                name: name.into(),
            })
    }

    /// Creates a plain VXLAN device `name` for one peer (the kernel fast path's shape: one
    /// device per fastdp peer, all sharing the kernel's UDP socket on `port`): it receives the
    /// datagrams carrying `vni` (what that peer sends here), sourced from `local`, with the
    /// outer DF bit set (a too-small underlay path fails the MTU probes instead of fragmenting)
    /// and no learning (its forwarding database holds only what [`Netlink::add_vxlan_default`]
    /// puts there). Returns its index.
    pub async fn add_vxlan_peer(
        &self,
        name: &str,
        vni: u32,
        port: u16,
        local: Option<Ipv4Addr>,
    ) -> Result<u32, Error> {
        let mut link = LinkVxlan::new(name, vni)
            .port(port)
            .learning(false)
            .df(netlink_packet_route::link::VxlanDf::Set);
        if let Some(local) = local {
            link = link.local(local);
        }
        self.handle
            .link()
            .add(link.build())
            .execute()
            .await
            .ctx("create vxlan", name)?;
        self.link_index(name)
            .await?
            .ok_or_else(|| Error::NoSuchLink {
                op: "create vxlan",
                name: name.into(),
            })
    }

    /// Points VXLAN device `index` at its peer (`bridge fdb append 00:00:00:00:00:00 dev X dst
    /// REMOTE vni VNI self permanent`): every frame it sends goes to `remote` carrying `vni`,
    /// which may differ from the device's own (receive) VNI. An existing default entry is
    /// replaced (deleted first: the kernel refuses `NLM_F_REPLACE` for the all-zeros address).
    pub async fn add_vxlan_default(
        &self,
        index: u32,
        remote: Ipv4Addr,
        vni: u32,
    ) -> Result<(), Error> {
        use netlink_packet_route::neighbour::{NeighbourAttribute, NeighbourFlags};
        let target = || format!("{} dst {remote} vni {vni}", ifx(index));
        for attempt in 0..2 {
            let mut req = self
                .handle
                .neighbours()
                .add_bridge(index, &[0; 6])
                .destination(IpAddr::V4(remote))
                .flags(NeighbourFlags::Own);
            req.message_mut()
                .attributes
                .push(NeighbourAttribute::Vni(vni));
            match req.execute().await {
                Err(e) if attempt == 0 && errno_of(&e) == Some(libc::EEXIST) => {
                    // The whole entry (every remote of it) goes: no destination given.
                    let mut del = netlink_packet_route::neighbour::NeighbourMessage::default();
                    del.header.family = netlink_packet_route::AddressFamily::Bridge;
                    del.header.ifindex = index;
                    del.header.flags = NeighbourFlags::Own;
                    del.attributes
                        .push(NeighbourAttribute::LinkLayerAddress(vec![0; 6]));
                    self.handle
                        .neighbours()
                        .del(del)
                        .execute()
                        .await
                        .ctx("replace vxlan default entry", target())?;
                }
                r => return r.ctx("add vxlan default entry", target()),
            }
        }
        unreachable!("the second attempt returns")
    }

    /// Turns the `isolated` flag of bridge port `index` on or off: isolated ports exchange no
    /// frames with each other, only with the bridge's other ports.
    pub async fn set_isolated(&self, index: u32, on: bool) -> Result<(), Error> {
        self.handle
            .link()
            .change(LinkBridgePort::new(index).isolated(on).build())
            .execute()
            .await
            .ctx("set port isolation", ifx(index))
    }

    /// Makes interface `index` a fast-path port of bridge `master`: enslaved, `isolated` (it
    /// exchanges frames only with the bridge's non-isolated ports, the containers', so a frame
    /// from one peer never goes on to another), and no flooding of unknown unicast to it
    /// (those go through the userspace path, so no frame crosses both). Broadcast and
    /// multicast are flooded to it as to any port.
    pub async fn set_fastdp_port(&self, index: u32, master: u32) -> Result<(), Error> {
        self.set_master(index, master).await?;
        self.handle
            .link()
            .change(
                LinkBridgePort::new(index)
                    .isolated(true)
                    .flood(false)
                    .build(),
            )
            .execute()
            .await
            .ctx("set fast-path port flags", ifx(index))
    }

    /// Releases interface `index` from its bridge (its learned entries go with it).
    pub async fn set_nomaster(&self, index: u32) -> Result<(), Error> {
        self.set(
            "release from bridge",
            index,
            LinkUnspec::new_with_index(index).nocontroller(),
        )
        .await
    }

    /// Points the bridge's entry for `mac` at its port `index` (`bridge fdb replace MAC dev
    /// PORT master`, a learned-like entry that ages and moves like one).
    pub async fn set_bridge_fdb(&self, index: u32, mac: [u8; 6]) -> Result<(), Error> {
        use netlink_packet_route::neighbour::{NeighbourFlags, NeighbourState};
        self.handle
            .neighbours()
            .add_bridge(index, &mac)
            .flags(NeighbourFlags::Controller)
            .state(NeighbourState::Reachable)
            .replace()
            .execute()
            .await
            .ctx("point a MAC at a bridge port", ifx(index))
    }

    /// Creates veth pair `name`/`peer`; returns both indices.
    pub async fn add_veth(&self, name: &str, peer: &str) -> Result<(u32, u32), Error> {
        let target = format!("{name}/{peer}");
        self.handle
            .link()
            .add(LinkVeth::new(name, peer).build())
            .execute()
            .await
            .ctx("create veth", &target)?;
        let a = self.link_index(name).await?;
        let b = self.link_index(peer).await?;
        match (a, b) {
            (Some(a), Some(b)) => Ok((a, b)),
            _ => Err(Error::NoSuchLink {
                op: "create veth",
                name: target,
            }),
        }
    }

    /// Moves the interface into namespace `ns` (its index there may differ: look it up by name).
    pub async fn move_to_netns(&self, index: u32, ns: &NetNs) -> Result<(), Error> {
        self.set(
            "move to netns",
            index,
            LinkUnspec::new_with_index(index).setns_by_fd(ns.as_raw_fd()),
        )
        .await
    }

    /// Renames the interface (it must be down).
    pub async fn rename(&self, index: u32, name: &str) -> Result<(), Error> {
        self.set(
            "rename",
            index,
            LinkUnspec::new_with_index(index).name(name),
        )
        .await
    }

    /// Adds an address; an address that is already there is fine.
    pub async fn add_address(&self, index: u32, addr: IpNet) -> Result<(), Error> {
        let r = self
            .handle
            .address()
            .add(index, addr.addr(), addr.prefix_len())
            .execute()
            .await;
        match r {
            Err(e) if errno_of(&e) == Some(libc::EEXIST) => Ok(()),
            r => r.ctx("add address", format_args!("{addr} on {}", ifx(index))),
        }
    }

    /// Removes an address; an address that is not there is fine.
    pub async fn del_address(&self, index: u32, addr: IpNet) -> Result<(), Error> {
        let msg = match addr.addr() {
            IpAddr::V4(a) => AddressMessageBuilder::<Ipv4Addr>::new()
                .index(index)
                .address(a, addr.prefix_len())
                .build(),
            IpAddr::V6(a) => AddressMessageBuilder::<std::net::Ipv6Addr>::new()
                .index(index)
                .address(a, addr.prefix_len())
                .build(),
        };
        match self.handle.address().del(msg).execute().await {
            Err(e) if errno_of(&e) == Some(libc::EADDRNOTAVAIL) => Ok(()),
            r => r.ctx("delete address", format_args!("{addr} on {}", ifx(index))),
        }
    }

    /// The addresses on the interface (IPv4 and IPv6, including link-local ones).
    pub async fn addresses(&self, index: u32) -> Result<Vec<IpNet>, Error> {
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .ctx("list addresses", ifx(index))?;
        let mut out = Vec::with_capacity(msgs.len());
        for m in msgs {
            // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer's on
            // point-to-point links and equal to IFA_LOCAL otherwise (and IPv6 has only it).
            let mut local = None;
            let mut address = None;
            for a in &m.attributes {
                match a {
                    AddressAttribute::Local(ip) => local = Some(*ip),
                    AddressAttribute::Address(ip) => address = Some(*ip),
                    _ => {}
                }
            }
            if let Some(ip) = local.or(address) {
                if let Ok(net) = IpNet::new(ip, m.header.prefix_len) {
                    out.push(net);
                }
            }
        }
        Ok(out)
    }

    /// All interfaces whose master is `master`, as (index, name).
    pub async fn links_with_master(&self, master: u32) -> Result<Vec<(u32, String)>, Error> {
        let links: Vec<_> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .ctx("list links of master", ifx(master))?;
        Ok(links
            .into_iter()
            .filter(|m| {
                m.attributes
                    .iter()
                    .any(|a| matches!(a, LinkAttribute::Controller(c) if *c == master))
            })
            .map(|m| {
                let name = m
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        LinkAttribute::IfName(n) => Some(n.clone()),
                        _ => None,
                    })
                    .unwrap_or_default();
                (m.header.index, name)
            })
            .collect())
    }

    /// All interfaces in the namespace, as (index, name).
    pub async fn links(&self) -> Result<Vec<(u32, String)>, Error> {
        let links: Vec<_> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .ctx("list links", "")?;
        Ok(links
            .into_iter()
            .map(|m| {
                let name = m
                    .attributes
                    .into_iter()
                    .find_map(|a| match a {
                        LinkAttribute::IfName(n) => Some(n),
                        _ => None,
                    })
                    .unwrap_or_default();
                (m.header.index, name)
            })
            .collect())
    }

    /// Turns hairpin mode of bridge port `index` on or off (`ip link set dev X type
    /// bridge_slave hairpin on`). Sent as RTM_NEWLINK, as `ip` does: RTM_SETLINK ignores the
    /// port attributes (and answers success).
    pub async fn set_hairpin(&self, index: u32, on: bool) -> Result<(), Error> {
        self.handle
            .link()
            .change(LinkBridgePort::new(index).hairpin(on).build())
            .execute()
            .await
            .ctx("set hairpin mode", ifx(index))
    }

    /// Adds the route `dst` through interface `index`, via `gw` (scope universe) or on-link
    /// (`None`: scope link); an existing route is fine.
    pub async fn add_route(
        &self,
        index: u32,
        dst: Ipv4Net,
        gw: Option<Ipv4Addr>,
    ) -> Result<(), Error> {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.network(), dst.prefix_len())
            .output_interface(index);
        b = match gw {
            Some(g) => b.gateway(g).scope(RouteScope::Universe),
            None => b.scope(RouteScope::Link),
        };
        match self.handle.route().add(b.build()).execute().await {
            Err(e) if errno_of(&e) == Some(libc::EEXIST) => Ok(()),
            r => r.ctx(
                "add route",
                format_args!(
                    "{dst}{} dev {}",
                    gw.map(|g| format!(" via {g}")).unwrap_or_default(),
                    ifx(index)
                ),
            ),
        }
    }

    /// The IPv4 routes of the main table through interface `index`: (destination, next hop).
    pub async fn routes_v4(&self, index: u32) -> Result<Vec<(Ipv4Net, Option<Ipv4Addr>)>, Error> {
        let msgs: Vec<_> = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .ctx("list routes", ifx(index))?;
        let mut out = Vec::new();
        for m in msgs {
            const MAIN: u8 = 254;
            let mut dst = Ipv4Addr::UNSPECIFIED;
            let mut gw = None;
            let mut oif = None;
            let mut table = u32::from(m.header.table);
            for a in &m.attributes {
                match a {
                    RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = *d,
                    RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(*g),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::Table(t) => table = *t,
                    _ => {}
                }
            }
            if oif != Some(index) || table != u32::from(MAIN) {
                continue;
            }
            if let Ok(net) = Ipv4Net::new(dst, m.header.destination_prefix_length) {
                out.push((net, gw));
            }
        }
        Ok(out)
    }

    /// Adds `224.0.0.0/4 dev <index> scope link`, like Weave; an existing route is fine.
    pub async fn add_multicast_route(&self, index: u32) -> Result<(), Error> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::new(224, 0, 0, 0), 4)
            .output_interface(index)
            .scope(RouteScope::Link)
            .build();
        match self.handle.route().add(route).execute().await {
            Err(e) if errno_of(&e) == Some(libc::EEXIST) => Ok(()),
            r => r.ctx("add multicast route", ifx(index)),
        }
    }
}

/// The interesting attributes of one link.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LinkSummary {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// 6-byte hardware address, if it has one.
    pub mac: Option<[u8; 6]>,
    /// MTU.
    pub mtu: Option<u32>,
    /// Index of the master (bridge) it is enslaved to.
    pub master: Option<u32>,
    /// `IFLA_LINK`: for a veth, the peer's index (in the peer's namespace).
    pub peer_index: Option<u32>,
    /// Whether `IFLA_LINK_NETNSID` is present, i.e. the peer lives in another namespace.
    pub peer_in_other_netns: bool,
    /// Whether the interface is administratively up.
    pub up: bool,
    /// For a bridge port: whether the port is in the forwarding state.
    pub bridge_port_forwarding: Option<bool>,
    /// The link's kind (`IFLA_INFO_KIND`: "bridge", "veth", "dummy", ...), if it has one.
    pub kind: Option<String>,
    /// Its counters (`IFLA_STATS64`), if the kernel sent them.
    pub stats: Option<LinkStats>,
}

/// What an interface carried since it was created (summed with `+=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkStats {
    /// Packets received.
    pub rx_packets: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets dropped on receive.
    pub rx_dropped: u64,
    /// Packets dropped on send.
    pub tx_dropped: u64,
}

impl std::ops::AddAssign for LinkStats {
    fn add_assign(&mut self, o: Self) {
        self.rx_packets += o.rx_packets;
        self.tx_packets += o.tx_packets;
        self.rx_bytes += o.rx_bytes;
        self.tx_bytes += o.tx_bytes;
        self.rx_dropped += o.rx_dropped;
        self.tx_dropped += o.tx_dropped;
    }
}

impl LinkSummary {
    fn from_message(m: netlink_packet_route::link::LinkMessage) -> Self {
        let mut s = Self {
            index: m.header.index,
            up: m
                .header
                .flags
                .contains(netlink_packet_route::link::LinkFlags::Up),
            ..Self::default()
        };
        for a in m.attributes {
            match a {
                LinkAttribute::IfName(n) => s.name = n,
                LinkAttribute::Address(mac) => s.mac = mac.try_into().ok(),
                LinkAttribute::Mtu(v) => s.mtu = Some(v),
                LinkAttribute::Controller(c) => s.master = Some(c),
                LinkAttribute::Link(l) => s.peer_index = Some(l),
                LinkAttribute::LinkNetNsId(_) => s.peer_in_other_netns = true,
                LinkAttribute::Stats64(st) => {
                    s.stats = Some(LinkStats {
                        rx_packets: st.rx_packets,
                        tx_packets: st.tx_packets,
                        rx_bytes: st.rx_bytes,
                        tx_bytes: st.tx_bytes,
                        rx_dropped: st.rx_dropped,
                        tx_dropped: st.tx_dropped,
                    });
                }
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(kind) = &info {
                            s.kind = Some(kind.to_string());
                        }
                        if let LinkInfo::PortData(InfoPortData::BridgePort(port)) = info {
                            for p in port {
                                if let InfoBridgePort::State(st) = p {
                                    s.bridge_port_forwarding =
                                        Some(st == BridgePortState::Forwarding);
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        s
    }
}

/// Whether a link lookup failed because there is no such device.
fn is_no_device(e: &rtnetlink::Error) -> bool {
    errno_of(e) == Some(libc::ENODEV)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_text_names_op_target_and_errno() {
        let mut msg = netlink_packet_core::ErrorMessage::default();
        msg.code = std::num::NonZeroI32::new(-libc::EEXIST);
        let e = Error::Netlink {
            op: "create veth",
            target: "vethwepl1/vethwepg1".into(),
            source: rtnetlink::Error::NetlinkError(msg),
        };
        let s = e.to_string();
        assert!(s.starts_with("create veth vethwepl1/vethwepg1: "), "{s}");
        assert!(s.contains("File exists"), "{s}");
        assert_eq!(e.errno(), Some(libc::EEXIST));
    }

    /// The kernel fast path's device, built in a private network namespace: `ip -d link` and
    /// `bridge fdb` show what `ip`/`bridge` users would check (receive VNI, port, no learning,
    /// DF, isolated bridge port; the default entry's peer and send VNI).
    #[test]
    fn vxlan_peer_device_in_a_private_netns() {
        if !nix::unistd::geteuid().is_root() {
            panic!("needs root (CI runs the tests as root or through sudo)");
        }
        let out = std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let nl = Netlink::new().unwrap();
                let br = nl.ensure_bridge("weave", 1376, None).await.unwrap();
                let local = Ipv4Addr::new(192, 0, 2, 1);
                let dev = nl
                    .add_vxlan_peer("vxwe-002", 2 | 1 << 12, 6784, Some(local))
                    .await
                    .unwrap();
                nl.set_fastdp_port(dev, br).await.unwrap();
                nl.add_vxlan_default(dev, Ipv4Addr::new(192, 0, 2, 2), 1 | 2 << 12)
                    .await
                    .unwrap();
                // Replacing the entry (the peer moved) leaves one.
                nl.add_vxlan_default(dev, Ipv4Addr::new(192, 0, 2, 3), 1 | 2 << 12)
                    .await
                    .unwrap();
            });
            let run = |args: &[&str]| {
                let o = std::process::Command::new(args[0])
                    .args(&args[1..])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&o.stdout).into_owned()
            };
            (
                run(&["ip", "-d", "link", "show", "vxwe-002"]),
                run(&["bridge", "fdb", "show", "dev", "vxwe-002"]),
            )
        })
        .join()
        .unwrap();
        let (link, fdb) = out;
        for want in [
            "vxlan id 4098 ",
            "local 192.0.2.1 ",
            "dstport 6784 ",
            "nolearning ",
            "df set ",
            "master weave ",
            "isolated on ",
            "flood off ",
            "mcast_flood on ",
        ] {
            assert!(link.contains(want), "{want:?} not in {link}");
        }
        let defaults: Vec<&str> = fdb
            .lines()
            .filter(|l| l.starts_with("00:00:00:00:00:00"))
            .collect();
        assert_eq!(
            defaults,
            ["00:00:00:00:00:00 dst 192.0.2.3 vni 8193 self permanent"],
            "{fdb}"
        );
    }

    #[test]
    fn no_runtime_is_an_error() {
        assert!(matches!(Netlink::new(), Err(Error::NoRuntime)));
    }
}
