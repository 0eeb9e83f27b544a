//! Layer: driver. The kernel fast path ("fastdp", issue 13): between two hosts that reach
//! each other directly, frames cross in the kernel, as with Weave's fastdp: no copy into
//! userspace, GSO/GRO and checksums offloaded, the router's CPU near zero. weft's userspace
//! path ("sleeve") stays the fallback per connection (blocked port, a path smaller than the
//! MTU, encryption, a peer without one) and carries relayed traffic. Which connection uses
//! which is the node's rule ([`weft_node::FastMode`]); this module only does what it says.
//!
//! # The shape: one plain VXLAN device per fastdp peer
//!
//! weft's VNI names both ends (`src | dst << 12`), so it differs by direction. A plain
//! (non-`external`) VXLAN device receives one VNI, but each forwarding-database entry may carry
//! its own VNI for what the device sends. So one device per peer serves both directions with
//! weft's VNIs unchanged:
//!
//! ```text
//! host A (short id 1), peer B (short id 2) at 192.0.2.2:
//!   ip link add vxwe-002 type vxlan id 4098 dstport 6784 nolearning df set
//!       (4098 = 2 | 1 << 12: what B sends to A)
//!   bridge fdb append 00:00:00:00:00:00 dev vxwe-002 dst 192.0.2.2 vni 8193 self permanent
//!       (8193 = 1 | 2 << 12: what A sends to B)
//!   ip link set vxwe-002 mtu <overlay MTU> up
//! and while the connection uses it (FastMode::Use):
//!   ip link set vxwe-002 master weave; bridge link set dev vxwe-002 isolated on flood off
//! ```
//!
//! All such devices share the kernel's one UDP socket on 6784 (Weave's fastdp port),
//! demultiplexed by VNI; sleeve listens on 6783/udp (Weave's), announced in the handshake.
//! This needs neither Open vSwitch nor tc flower nor `act_tunnel_key` (absent on these
//! kernels) nor eBPF; it is the kernel code of the `kvxlan` netbench target.
//!
//! # Frames: each exactly once
//!
//! - The bridge learns which port a MAC is behind. A fastdp peer's frames arrive on its
//!   device, so unicast to its containers goes straight into the kernel path; MACs of peers
//!   reached through userspace are behind the TAP.
//! - Every `vxwe-*` port and the TAP are `isolated`: they exchange frames only with the
//!   containers' ports, never with each other. So the bridge never passes a frame from one
//!   peer on to another (relaying stays in userspace), and frames the kernel delivered never
//!   reach userspace.
//! - Unknown unicast is not flooded to the `vxwe-*` ports (`flood off`): it goes through the
//!   TAP only, and the userspace engine sends it where its MAC table says. Broadcast and
//!   multicast are flooded to them and to the TAP; the engine's copy to a fastdp neighbour
//!   only goes on along the broadcast tree there, it is not delivered again
//!   (`ForwardingTable::set_fastdp`).
//! - A unicast frame from a fastdp neighbour that still came over sleeve (its bridge had our
//!   MAC behind its TAP, from before the switch) taught our bridge its source MAC behind our
//!   TAP; the engine reports it ([`weft_overlay::Engine::take_fastdp_hints`]) and this module
//!   points the bridge at the neighbour's device instead, so the answer goes the fast way and
//!   teaches the other bridge in turn.
//!
//! # Heartbeats through the kernel path
//!
//! The node's fast-path probes (full overlay-MTU frames, DF set outside) and their
//! acknowledgements go as Ethernet frames to the IEEE link-local group address
//! `01:80:c2:00:00:0f` with EtherType 0x88b5, written to an `AF_PACKET` socket on the peer's
//! device (they are encapsulated like traffic and fail like it) and read from one bound to that
//! EtherType on the same device: a bridge never forwards such frames but passes them up the
//! port they came in on, device enslaved or not.
//!
//! # Lifecycle
//!
//! Devices live in the router's network namespace, so two routers never share one. At start
//! the router deletes every `vxwe-*` it finds (a SIGKILLed router's leftovers); when it stops,
//! and on `weft reset`, they are deleted too. A connection that ends removes its device.
//! Encrypted connections stay on sleeve: these kernels have no ESP/GCM in XFRM and no
//! WireGuard; where present, a per-peer XFRM policy keyed from the handshake's data keys (or a
//! WireGuard device per peer) would be a third implementation of the same node actions.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use tokio::sync::mpsc;
use weft_mesh::PeerName;
use weft_node::FastMode;
use weft_overlay::heartbeat::{FASTDP_ETHERTYPE, Heartbeat};
use weft_sys::netlink::Netlink;
use weft_sys::packet::{AsyncPacketSocket, PacketSocket};

use crate::dataplane::DpEvent;

/// Name prefix of the fast path's devices.
pub const DEVICE_PREFIX: &str = "vxwe-";

/// What the node task asks of the fast path.
#[derive(Debug)]
pub enum FastCmd {
    /// See [`weft_node::Action::FastPath`].
    Set {
        /// The neighbour.
        peer: PeerName,
        /// Our short id.
        local: u16,
        /// Its short id.
        remote: u16,
        /// Its fast path's address.
        addr: SocketAddr,
        /// What to do.
        mode: FastMode,
    },
    /// Send a heartbeat through the path to `peer`.
    Send {
        /// The neighbour.
        peer: PeerName,
        /// The heartbeat.
        heartbeat: Heartbeat,
    },
    /// `mac` belongs to a container behind the neighbour with this short id.
    PointMac {
        /// The neighbour's short id.
        remote: u16,
        /// The MAC.
        mac: [u8; 6],
    },
    /// Remove every device, then reply.
    Shutdown(tokio::sync::oneshot::Sender<()>),
}

/// What the fast path is made with.
#[derive(Debug, Clone)]
pub struct FastConfig {
    /// The bridge the devices join.
    pub bridge: u32,
    /// The kernel VXLAN port (6784).
    pub port: u16,
    /// The overlay MTU (each device's).
    pub mtu: u32,
    /// The address the devices send from (`None`: as the routes say).
    pub local: Option<Ipv4Addr>,
}

/// The device name for the peer with short id `remote`.
pub fn device_name(remote: u16) -> String {
    format!("{DEVICE_PREFIX}{remote:03x}")
}

/// Deletes every fast-path device in this network namespace (a killed router's leftovers, or
/// `weft reset`); returns how many.
pub async fn remove_leftovers(nl: &Netlink) -> anyhow::Result<usize> {
    let mut n = 0;
    for (index, name) in nl.links().await? {
        if name.starts_with(DEVICE_PREFIX) {
            nl.delete_link(index).await?;
            n += 1;
        }
    }
    Ok(n)
}

#[derive(Debug)]
struct Device {
    name: String,
    index: u32,
    mac: [u8; 6],
    /// (our short id, its short id, its address): a change makes a new device.
    key: (u16, u16, SocketAddr),
    mode: FastMode,
    sock: Arc<AsyncPacketSocket>,
    reader: tokio::task::JoinHandle<()>,
}

/// How often the devices' counters are read.
const STATS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Starts the fast-path task on commands from `rx`; heartbeats it receives go to `events`,
/// its devices' counters to `shared` (about once a second).
pub fn spawn(
    nl: Netlink,
    config: FastConfig,
    events: mpsc::UnboundedSender<DpEvent>,
    rx: mpsc::UnboundedReceiver<FastCmd>,
    shared: Arc<crate::state::Shared>,
) {
    tokio::spawn(run(nl, config, events, rx, shared));
}

async fn run(
    nl: Netlink,
    config: FastConfig,
    events: mpsc::UnboundedSender<DpEvent>,
    mut rx: mpsc::UnboundedReceiver<FastCmd>,
    shared: Arc<crate::state::Shared>,
) {
    let mut devices: HashMap<PeerName, Device> = HashMap::new();
    let mut frame = vec![0u8; config.mtu as usize + 14];
    let mut stats_tick = tokio::time::interval(STATS_EVERY);
    stats_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let cmd = tokio::select! {
            cmd = rx.recv() => cmd,
            _ = stats_tick.tick() => {
                publish_stats(&nl, &devices, &shared).await;
                continue;
            }
        };
        let Some(cmd) = cmd else { break };
        match cmd {
            FastCmd::Set {
                peer,
                local,
                remote,
                addr,
                mode,
            } => {
                if let Err(e) = set(
                    &nl,
                    &config,
                    &events,
                    &mut devices,
                    peer,
                    (local, remote, addr),
                    mode,
                )
                .await
                {
                    tracing::warn!("fast path to {peer}: {e:#} (traffic stays on sleeve)");
                }
            }
            FastCmd::Send { peer, heartbeat } => {
                let Some(d) = devices.get(&peer) else {
                    continue;
                };
                if frame.len() < heartbeat.frame_len() {
                    frame.resize(heartbeat.frame_len(), 0);
                }
                let n = heartbeat.emit_fastdp(d.mac, &mut frame);
                if let Err(e) = d.sock.send(&frame[..n]) {
                    tracing::debug!("fast path heartbeat to {peer}: {e}");
                }
            }
            FastCmd::PointMac { remote, mac } => {
                let Some(d) = devices
                    .values()
                    .find(|d| d.key.1 == remote && d.mode == FastMode::Use)
                else {
                    continue;
                };
                if let Err(e) = nl.set_bridge_fdb(d.index, mac).await {
                    tracing::debug!("pointing a MAC at {}: {e}", d.name);
                }
            }
            FastCmd::Shutdown(reply) => {
                for (_, d) in devices.drain() {
                    remove(&nl, d).await;
                }
                let _ = reply.send(());
            }
        }
    }
    for (_, d) in devices.drain() {
        remove(&nl, d).await;
    }
}

/// Reads every device's counters into `shared` (a removed device's vanish with it).
async fn publish_stats(
    nl: &Netlink,
    devices: &HashMap<PeerName, Device>,
    shared: &crate::state::Shared,
) {
    let mut now = HashMap::new();
    for d in devices.values() {
        if let Ok(Some(l)) = nl.link(d.index).await
            && let Some(s) = l.stats
        {
            now.insert(d.key.2.ip(), s);
        }
    }
    shared.published().fastdp_traffic = now;
}

async fn remove(nl: &Netlink, d: Device) {
    d.reader.abort();
    if let Err(e) = nl.delete_link(d.index).await {
        tracing::warn!("removing {}: {e}", d.name);
    }
}

async fn set(
    nl: &Netlink,
    config: &FastConfig,
    events: &mpsc::UnboundedSender<DpEvent>,
    devices: &mut HashMap<PeerName, Device>,
    peer: PeerName,
    key: (u16, u16, SocketAddr),
    mode: FastMode,
) -> anyhow::Result<()> {
    if devices
        .get(&peer)
        .is_some_and(|d| d.key != key || mode == FastMode::Off)
    {
        if let Some(d) = devices.remove(&peer) {
            remove(nl, d).await;
        }
    }
    if mode == FastMode::Off {
        return Ok(());
    }
    let d = match devices.entry(peer) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(e) => {
            e.insert(create(nl, config, events, peer, key).await?)
        }
    };
    if d.mode != mode {
        if mode == FastMode::Use {
            nl.set_fastdp_port(d.index, config.bridge).await?;
            tracing::info!("fast path to {peer} in use ({})", d.name);
        } else {
            nl.set_nomaster(d.index).await?;
            if d.mode == FastMode::Use {
                tracing::info!("fast path to {peer} left: traffic on sleeve");
            }
        }
        d.mode = mode;
    }
    Ok(())
}

async fn create(
    nl: &Netlink,
    config: &FastConfig,
    events: &mpsc::UnboundedSender<DpEvent>,
    peer: PeerName,
    key: (u16, u16, SocketAddr),
) -> anyhow::Result<Device> {
    let (local, remote, addr) = key;
    let IpAddr::V4(dst) = addr.ip() else {
        anyhow::bail!("an IPv6 underlay has no fast path yet");
    };
    let name = device_name(remote);
    // A device of that name may be left from an earlier connection to the same short id.
    if let Some(old) = nl.link_index(&name).await? {
        nl.delete_link(old).await?;
    }
    let vni_in = u32::from(remote) | u32::from(local) << 12;
    let vni_out = u32::from(local) | u32::from(remote) << 12;
    let index = nl
        .add_vxlan_peer(&name, vni_in, config.port, config.local)
        .await?;
    let made = async {
        // Up, unenslaved (probing), the device would autoconfigure IPv6 and send its own
        // solicitations to the peer's bridge.
        weft_sys::plumb::disable_ipv6(&name);
        nl.set_mtu(index, config.mtu).await?;
        nl.add_vxlan_default(index, dst, vni_out).await?;
        nl.set_up(index).await?;
        let mac = nl
            .link_mac(index)
            .await?
            .ok_or_else(|| anyhow::anyhow!("{name} has no MAC"))?;
        let sock = PacketSocket::open_ethertype(index, FASTDP_ETHERTYPE)?;
        let sock = Arc::new(AsyncPacketSocket::new(sock)?);
        anyhow::Ok((mac, sock))
    }
    .await;
    let (mac, sock) = match made {
        Ok(v) => v,
        Err(e) => {
            let _ = nl.delete_link(index).await;
            return Err(e);
        }
    };
    let reader = tokio::spawn(read(sock.clone(), peer, events.clone()));
    tracing::debug!("fast path device {name} for {peer}: vni in {vni_in}, out {vni_out} to {dst}");
    Ok(Device {
        name,
        index,
        mac,
        key,
        mode: FastMode::Probe,
        sock,
        reader,
    })
}

/// Reads the heartbeats arriving on one device.
async fn read(
    sock: Arc<AsyncPacketSocket>,
    peer: PeerName,
    events: mpsc::UnboundedSender<DpEvent>,
) {
    let mut buf = vec![0u8; 65536];
    loop {
        match sock.recv(&mut buf).await {
            Ok(n) => {
                if let Some(heartbeat) = Heartbeat::parse_fastdp(&buf[..n]) {
                    if events
                        .send(DpEvent::FastHeartbeat {
                            from: peer,
                            heartbeat,
                        })
                        .is_err()
                    {
                        return;
                    }
                }
            }
            Err(e) => {
                tracing::debug!("fast path socket for {peer}: {e}");
                return;
            }
        }
    }
}
