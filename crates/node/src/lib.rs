//! Layer: pure logic. [`Node`]: the rules that make one weft host, as one sans-IO state machine
//! that the router and the simulator both drive.
//!
//! # Design
//!
//! **Why.** The rules below used to live in the router's control plane behind one
//! `Mutex<State>` (untested by unit tests) and, a second time and drifted, in the simulator.
//! A `Node` holds them once. It never touches a socket, a task or a clock: like quinn-proto's
//! `Endpoint`, it takes input through `handle_*(…, now)` methods and hands back work through
//! [`Node::poll_action`] and the next time it wants to be woken through [`Node::poll_timeout`].
//!
//! **What it owns.**
//! - The *connection registry*: every control connection the driver runs, from TCP up
//!   (`handle_connecting`) through the handshake (`handle_ready`) to its end (`handle_closed`).
//!   Connections are named by a driver-chosen [`ConnId`]; the [`weft_mesh::Connection`] state
//!   machine (bytes, hello, keys) stays with the driver, which reports its events here.
//! - *Duplicate resolution*: when both ends dial at once, two connections to one peer become
//!   ready. Both ends keep the one with the smaller connection UID (the UID is the same on both
//!   ends, so they agree without talking) and close the other.
//! - *Establishment*: a ready connection is `established` once we received the remote's
//!   data-path heartbeat and the remote acknowledged ours (a `DataPathAck` on the control
//!   connection). Only then does the mesh gossip the link as usable.
//! - *Handover on close*: when the connection that carries a peer closes while another ready
//!   connection to the same peer is still open, the peer moves to that one (its keys are
//!   installed again, the mesh hears about it) instead of disappearing.
//! - *The forwarding table*: built from the mesh's routes plus our own neighbours, handed to
//!   the data path whenever it changes ([`Action::TableChanged`]: the driver installs
//!   [`Node::forwarding_table`]; a table has 4096 slots per map, so building one per change
//!   is left to the driver, which may coalesce).
//! - *Data-path heartbeats and liveness*: every [`NodeConfig::heartbeat_interval`] (one tick
//!   for all connections, so a node has one timer, not one per neighbour) every carrying
//!   connection sends a heartbeat through the data path, and a direct path from which no
//!   heartbeat arrived for [`NodeConfig::down_after`] is *down*: the link is withdrawn from
//!   our gossip (routes everywhere, ours included, go around it) while the control connection
//!   may stay up. It comes back after [`NodeConfig::up_after`] heartbeats in a row, each within
//!   two intervals of the last. Hysteresis: with the defaults (300 ms, 2 s, 2) a path goes
//!   down only after six heartbeats in a row are lost, which 5 % random loss makes about a
//!   one-in-sixty-million event per heartbeat, and comes back within about a second. A cut
//!   path is routed around within about 2.5 s (detection plus one gossip hop).
//! - *Gossip dispatch*: the topology channel is handled inside (the [`weft_mesh::Mesh`]);
//!   other channels (IPAM, DNS) are delivered as [`Action::Gossip`] only if registered with
//!   [`Node::register_channel`]; anything else is counted and dropped.
//!
//! **The data-path seam.** Everything the node wants from the data path is an action:
//! [`Action::TableChanged`] (install [`Node::forwarding_table`]), [`Action::SetLink`]/[`Action::RemoveLink`]
//! (per-neighbour keys, installed before the peer can appear in a table) and
//! [`Action::Heartbeat`] (always sent through the data path, so it is sealed like traffic and
//! fails exactly when traffic does). What the data path reports back is
//! [`Node::handle_heartbeat`]. A kernel fast path implements the same four verbs.
//!
//! **What stays with the driver.** Sockets, TLS-free byte streams, tasks, the per-connection
//! [`weft_mesh::Connection`], persistence (it gets [`Action::PersistShortId`]), IPAM and DNS
//! state machines (they get their channel's gossip and [`Action::PeersChanged`]).
//!
//! **Ownership in the router.** One task owns the `Node`; connection tasks and the data plane
//! send it messages, and the HTTP API reads snapshots it publishes, so nothing on the control
//! path takes a global lock. IPAM and DNS keep their own locks, each taken alone and briefly
//! (the node task hands them their channel's gossip; the API hands them requests).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use weft_crypto::handshake::DataKeys;
use weft_mesh::{
    ConnMaker, ConnMakerConfig, GossipConfig, Instant, Mesh, MeshEvent, PeerName, PeerSummary,
    ShortId, TOPOLOGY_CHANNEL, Topology,
};
use weft_overlay::heartbeat::{Heartbeat, PROBE_MIN_LEN, Probe};
use weft_overlay::{ForwardingTable, PeerEntry};
use weft_wire::control::{Message, PARTIAL_CSUM_SINCE};

#[cfg(test)]
mod tests;

/// A control connection, as the driver names it (any number unique among its live
/// connections).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// Timers and settings of a [`Node`].
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// How often a data-path heartbeat goes out on every ready connection.
    pub heartbeat_interval: Duration,
    /// A direct path with no heartbeat for this long is down (taken out of the routes).
    pub down_after: Duration,
    /// Heartbeats in a row (each within two intervals of the last) that bring a down path back.
    pub up_after: u32,
    /// Path MTU discovery: the largest inner frame (Ethernet header included) the overlay
    /// sends, i.e. the overlay MTU + 14; 0 turns probing off. How the rounds go is described
    /// at `PathMtu` in the source.
    pub pmtu_max_frame: u16,
    /// How long a round of path MTU probes waits for its acknowledgements.
    pub pmtu_round: Duration,
    /// How often a settled path is probed again (to see it shrink or grow back).
    pub pmtu_every: Duration,
    /// Use the kernel fast path with peers that offer one (unencrypted connections only); see
    /// [`FastMode`].
    pub fastdp: bool,
    /// Topology gossip settings.
    pub gossip: GossipConfig,
    /// Which addresses to dial (targets, discovery, backoff, limit).
    pub connmaker: ConnMakerConfig,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_millis(300),
            down_after: Duration::from_secs(2),
            up_after: 2,
            pmtu_max_frame: 0,
            pmtu_round: Duration::from_millis(500),
            pmtu_every: Duration::from_secs(3),
            fastdp: false,
            gossip: GossipConfig::default(),
            connmaker: ConnMakerConfig::default(),
        }
    }
}

/// Who is at the other end of a ready connection (from its handshake).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    /// Peer name.
    pub name: PeerName,
    /// Nickname.
    pub nickname: String,
    /// The incarnation's UID.
    pub uid: u64,
    /// The short id it announced (the topology's may be newer).
    pub short_id: ShortId,
    /// Where its data path listens.
    pub data_addr: SocketAddr,
    /// Where its kernel fast path listens, if it has one.
    pub fastdp_addr: Option<SocketAddr>,
    /// The control-protocol version the connection settled on.
    pub version: u8,
}

/// What the driver's kernel fast path does for one neighbour ([`Action::FastPath`]).
///
/// A connection may use the fast path when both ends have one, the connection is not
/// encrypted (the kernel path carries frames in the clear) and [`NodeConfig::fastdp`] is on.
/// Then the driver sets the path up for probing ([`FastMode::Probe`]: a device that can send
/// and receive heartbeats but carries no traffic) and every heartbeat tick a full-size probe
/// (an overlay-MTU frame) goes through it ([`Action::FastHeartbeat`]); the peer acknowledges
/// each one that arrived whole, through the fast path too. After [`NodeConfig::up_after`]
/// acknowledgements in a row, while the peer's own full-size probes arrive here, traffic moves
/// onto it ([`FastMode::Use`]); when acknowledgements or the peer's probes stop for
/// [`NodeConfig::down_after`] (the port was blocked, the path shrank below the MTU), traffic
/// goes back to the userspace path ("sleeve") and probing goes on, so it returns by itself.
/// The userspace path keeps its own heartbeats throughout: it carries relayed traffic and
/// decides, as without a fast path, whether the peer is reachable directly at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FastMode {
    /// No fast path for this neighbour (remove what there is).
    Off,
    /// A fast path that carries probes only.
    Probe,
    /// A fast path that carries the traffic to and from this neighbour.
    Use,
}

/// Something the driver must do.
#[derive(Debug)]
#[must_use]
pub enum Action {
    /// Send `message` on control connection `conn`.
    Send {
        /// The connection.
        conn: ConnId,
        /// What to send.
        message: Message,
    },
    /// Close control connection `conn`.
    Close {
        /// The connection.
        conn: ConnId,
        /// Why, for logs.
        reason: &'static str,
    },
    /// Open a control connection to this address, then [`Node::handle_connecting`] (or
    /// [`Node::handle_dial_failed`]).
    Dial(SocketAddr),
    /// Data path: protect traffic with the neighbour at `ip` as connection `conn_uid` agreed
    /// (sealed with `keys`, or in the clear when `None`).
    SetLink {
        /// The neighbour's underlay address.
        ip: IpAddr,
        /// The connection whose keys these are.
        conn_uid: u64,
        /// The keys.
        keys: Option<DataKeys>,
        /// Segments to it may leave their checksum partial: its connection settled on a
        /// protocol version that has them (`weft_wire::control::PARTIAL_CSUM_SINCE`).
        partial_csum: bool,
    },
    /// Data path: connection `conn_uid` to the neighbour at `ip` is gone.
    RemoveLink {
        /// The neighbour's underlay address.
        ip: IpAddr,
        /// The connection.
        conn_uid: u64,
    },
    /// Data path: an inner frame longer than `max_frame` does not reach the neighbour at `ip`
    /// (`None`: the full size does). The data path answers or fragments bigger ones.
    SetPathMtu {
        /// The neighbour's underlay address.
        ip: IpAddr,
        /// The largest inner frame (Ethernet header included) that arrives.
        max_frame: Option<u16>,
    },
    /// Kernel fast path: set the path to neighbour `remote` (short id; its fast path listens
    /// at `addr`) to `mode`; frames from us carry VNI `local | remote << 12`, frames from it
    /// `remote | local << 12`. `local` may change (a short-id collision): the driver follows.
    FastPath {
        /// The neighbour.
        peer: PeerName,
        /// Our short id.
        local: u16,
        /// The neighbour's short id.
        remote: u16,
        /// Where its fast path listens.
        addr: SocketAddr,
        /// What to do.
        mode: FastMode,
    },
    /// Kernel fast path: send this heartbeat (a probe or an acknowledgement) through the path
    /// to neighbour `peer`.
    FastHeartbeat {
        /// The neighbour.
        peer: PeerName,
        /// The heartbeat.
        heartbeat: Heartbeat,
    },
    /// Data path: the forwarding table changed; install [`Node::forwarding_table`] (now, or
    /// at the latest before the next frame is forwarded).
    TableChanged,
    /// Data path: send this heartbeat to `to` in a VXLAN datagram from `src` to `dst`.
    Heartbeat {
        /// The neighbour's data address.
        to: SocketAddr,
        /// Our short id.
        src: u16,
        /// The neighbour's short id.
        dst: u16,
        /// The heartbeat.
        heartbeat: Heartbeat,
    },
    /// Gossip for a registered channel from neighbour `from`.
    Gossip {
        /// The channel.
        channel: u8,
        /// The neighbour it came from.
        from: PeerName,
        /// The channel's bytes.
        payload: Vec<u8>,
    },
    /// A neighbour's connection became ready (channels may greet it).
    NeighbourUp(PeerName),
    /// Known or reachable peers changed (IPAM and DNS look again).
    PeersChanged,
    /// Our short id changed (a collision was resolved): keep it across restarts.
    PersistShortId(ShortId),
}

/// A connection's progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// TCP up, handshake under way.
    Connecting,
    /// Handshake done, data path not yet confirmed both ways.
    Pending,
    /// Heartbeat received and ours acknowledged.
    Established,
}

/// A read-only view of one connection.
#[derive(Debug, Clone)]
pub struct ConnView<'a> {
    /// The driver's name for it.
    pub id: ConnId,
    /// The remote control address.
    pub address: SocketAddr,
    /// We dialled it.
    pub outbound: bool,
    /// Its progress.
    pub state: ConnState,
    /// The remote, once the handshake is done.
    pub remote: Option<&'a Remote>,
    /// Its UID (same at both ends), once the handshake is done.
    pub conn_uid: Option<u64>,
    /// It carries its peer (the survivor of duplicates).
    pub carrier: bool,
    /// Heartbeats arrive (false once they stopped for [`NodeConfig::down_after`]).
    pub path_up: bool,
    /// The path MTU found by probing (the largest IP packet a container can send over it),
    /// once a probe came back.
    pub path_mtu: Option<u16>,
    /// Traffic crosses the kernel fast path.
    pub fastdp: bool,
    /// Why it does not (`None` while it does, and before the handshake).
    pub fastdp_reason: Option<&'static str>,
}

/// Counters of a [`Node`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Connections closed before their handshake finished.
    pub handshake_failures: u64,
    /// Topology gossip refused.
    pub gossip_errors: u64,
    /// Gossip on channels nobody registered.
    pub unknown_channel: u64,
    /// Heartbeats that matched no connection.
    pub stray_heartbeats: u64,
    /// Direct paths marked down.
    pub paths_down: u64,
    /// Direct paths back up.
    pub paths_up: u64,
    /// Duplicate connections closed.
    pub duplicates: u64,
    /// Peers handed to another connection when theirs closed.
    pub handovers: u64,
    /// Connections whose traffic moved onto the kernel fast path.
    pub fastdp_up: u64,
    /// Connections whose traffic fell back from the fast path to the userspace path.
    pub fastdp_down: u64,
}

#[derive(Debug)]
struct Conn {
    address: SocketAddr,
    outbound: bool,
    ready: Option<Ready>,
}

#[derive(Debug)]
struct Ready {
    remote: Remote,
    conn_uid: u64,
    keys: Option<DataKeys>,
    heartbeat_seen: bool,
    ack_seen: bool,
    established: bool,
    path_up: bool,
    last_heard: Option<Instant>,
    streak: u32,
    pmtu: PathMtu,
    fast: Fast,
}

/// The fast path of one carrying connection (see [`FastMode`]).
#[derive(Debug)]
struct Fast {
    /// What the driver was told (`Off` also for a connection that may not use it).
    mode: FastMode,
    /// Why traffic does not use it.
    reason: Option<&'static str>,
    /// The connection may use a fast path (both ends have one, not encrypted, enabled here).
    eligible: bool,
    /// What the driver was last told: (our short id, its short id, mode).
    told: Option<(u16, u16, FastMode)>,
    /// When the last acknowledgement of our full-size probe came back.
    last_ack: Option<Instant>,
    /// Acknowledgements in a row (each within two intervals of the last).
    acks: u32,
    /// When the peer's last full-size probe arrived.
    last_probe: Option<Instant>,
    /// When the last acknowledgement of a small probe came back (the path works, if only
    /// for small frames).
    last_small_ack: Option<Instant>,
    /// When probing started (or traffic left the fast path).
    probing_since: Option<Instant>,
}

/// Why a connection does not use the fast path when this node has none
/// ([`NodeConfig::fastdp`] off).
pub const FASTDP_OFF_HERE: &str = "fastdp: off here";
/// Why a fast-path-capable connection is not on it yet.
const FAST_PROBING: &str = "fastdp: probing";
/// Why traffic is not on the fast path after probing for a while: nothing comes back.
const FAST_SILENT: &str = "fastdp: no heartbeats through it (its UDP port blocked?)";
/// Why traffic is not on the fast path after probing for a while: small frames cross, whole
/// overlay frames do not.
const FAST_TOO_SMALL: &str = "fastdp: the path is smaller than the overlay MTU";

/// Path MTU discovery on one carrying connection, through the data path itself.
///
/// Weave's sleeve found out per link how big a datagram gets through; so does this. Probes are
/// heartbeats padded to a size (a peer that knows no probes takes them for heartbeats); the
/// receiver acknowledges each one that arrived whole with a small heartbeat back. A *round*
/// sends a few sizes at once: a small one (is the path alive at all?), the largest size known
/// to work (does it still?), and up to fifteen between that and the smallest size known to
/// fail. After [`NodeConfig::pmtu_round`] the acknowledged sizes move the bounds; the next
/// round follows at once until the bounds are within 8 bytes (only then is the result used),
/// then after
/// [`NodeConfig::pmtu_every`] (when the upper bound is reset to the full size, so a path
/// that grew is used again). A round with nothing acknowledged (the path is down, or the
/// remote does not answer probes) changes nothing. The largest working size is handed to the
/// data path whenever it changes ([`Action::SetPathMtu`]).
///
/// Lost probes must not shrink a good path (containers keep a lowered path MTU for minutes):
/// the two sizes that matter most (the largest known to work, the top of the search) go twice
/// per round; a lost probe of the working size only starts a search, which finds the same
/// size again; and a settled result smaller than what the data path has is only taken when
/// the next round, at once, says the same while the size in use, probed again (three times), does
/// not come back either. (Without that last probe, losing both full-size probes of one round
/// was enough: the rounds after it search below the lost size and find it one byte smaller.)
#[derive(Debug, Default)]
struct PathMtu {
    /// Largest frame known to arrive (0: none yet).
    lo: u16,
    /// Smallest frame known not to arrive (the full size + 1 while none is).
    hi: u16,
    /// The round under way: each size sent and whether it came back.
    round: Vec<(u16, bool)>,
    /// When the round under way ends.
    round_ends: Option<Instant>,
    /// When the next round starts.
    next_round: Option<Instant>,
    /// The last round pointed at a smaller path than the data path has; this one confirms.
    confirming: bool,
    /// The largest working size as of the last settled search (0: none yet); the data path
    /// was told [`limit_for`] it.
    settled: u16,
}

/// The limit for the data path when frames of `size` bytes are the largest that arrive on a
/// path whose full size is `max` (`None`: no limit, or nothing known).
fn limit_for(size: u16, max: u16) -> Option<u16> {
    (size > 0 && size < max).then_some(size)
}

/// The smallest probe: a frame any path carries (a minimal IPv4 packet in Ethernet).
const PMTU_FLOOR: u16 = 64;
/// A round cuts the search interval into this many parts (a 1390-byte path is found to 8
/// bytes in two rounds after the first).
const PMTU_STEPS: u32 = 16;
/// The search stops when the bounds are this close.
const PMTU_PRECISION: u16 = 8;

impl PathMtu {
    /// The sizes of the next round, for a path whose full size is `max`.
    fn plan(&mut self, max: u16) -> Vec<u16> {
        let floor = PMTU_FLOOR.max(PROBE_MIN_LEN as u16).min(max);
        if self.hi == 0 || self.hi > max + 1 {
            self.hi = max + 1;
        }
        let top = self.hi - 1;
        let mut sizes = vec![floor, top];
        if self.lo > 0 {
            sizes.push(self.lo);
        }
        if self.confirming {
            sizes.push(self.in_use(max));
        }
        let base = self.lo.max(floor);
        if top > base {
            let span = u32::from(top - base);
            for k in 1..PMTU_STEPS {
                sizes.push(base + (span * k / PMTU_STEPS) as u16);
            }
        }
        sizes.sort_unstable();
        sizes.dedup();
        sizes
    }

    /// The largest frame the data path sends now on a path whose full size is `max`.
    fn in_use(&self, max: u16) -> u16 {
        limit_for(self.settled, max).unwrap_or(max)
    }

    /// The round is over: move the bounds. Returns whether the search is settled.
    fn conclude(&mut self) -> bool {
        let round = std::mem::take(&mut self.round);
        let Some(good) = round.iter().filter(|(_, ok)| *ok).map(|(n, _)| *n).max() else {
            return true; // Nothing came back: nothing learnt, try again later.
        };
        let lost_above = |bound: u16| {
            round
                .iter()
                .filter(|(n, ok)| !ok && *n > bound)
                .map(|(n, _)| *n)
                .min()
        };
        if self.lo > good {
            // What worked no longer does: the path shrank.
            self.lo = good;
            self.hi = lost_above(good).unwrap_or(self.hi);
        } else {
            self.lo = good;
            if let Some(bad) = lost_above(good) {
                self.hi = self.hi.min(bad);
            }
        }
        self.hi <= self.lo.saturating_add(PMTU_PRECISION)
    }
}

/// One weft host's protocol state. See the crate documentation.
#[derive(Debug)]
pub struct Node {
    config: NodeConfig,
    name: PeerName,
    mesh: Mesh,
    connmaker: ConnMaker,
    conns: BTreeMap<ConnId, Conn>,
    /// The connection carrying each peer.
    carriers: BTreeMap<PeerName, ConnId>,
    channels: BTreeSet<u8>,
    actions: VecDeque<Action>,
    table_dirty: bool,
    /// The next heartbeat tick (every ready connection's heartbeat goes out, liveness is
    /// checked); `None` while no connection is ready.
    tick_at: Option<Instant>,
    /// The connection maker may have something to dial (its inputs changed or its timer
    /// fired); heartbeats, acks and gossip leave it alone, so they do not ask it.
    dial_check: bool,
    /// The connection maker's timer, as of its last change.
    connmaker_at: Option<Instant>,
    stats: NodeStats,
}

impl Node {
    /// A node for the peer described by `local` (its own summary: name, nickname, uid, short
    /// id), with `seed` driving every random choice.
    pub fn new(local: PeerSummary, config: NodeConfig, seed: u64, now: Instant) -> Self {
        let name = local.name;
        let mesh = Mesh::new(local, config.gossip.clone(), seed, now);
        let connmaker = ConnMaker::new(config.connmaker.clone(), seed ^ 0x5eed);
        Self {
            config,
            name,
            mesh,
            connmaker,
            conns: BTreeMap::new(),
            carriers: BTreeMap::new(),
            channels: BTreeSet::new(),
            actions: VecDeque::new(),
            table_dirty: true,
            tick_at: None,
            dial_check: true,
            connmaker_at: None,
            stats: NodeStats::default(),
        }
    }

    /// Deliver gossip on `channel` as [`Action::Gossip`] from now on.
    pub fn register_channel(&mut self, channel: u8) {
        if channel != TOPOLOGY_CHANNEL {
            self.channels.insert(channel);
        }
    }

    // ----- targets -----

    /// Add direct targets.
    pub fn add_targets(&mut self, now: Instant, targets: &[SocketAddr]) {
        self.connmaker.add_targets(now, targets);
        self.dial_check = true;
        self.flush(now);
    }

    /// Make `targets` the whole direct target list.
    pub fn replace_targets(&mut self, now: Instant, targets: &[SocketAddr]) {
        self.connmaker.replace_targets(now, targets);
        self.dial_check = true;
        self.flush(now);
    }

    /// Forget direct targets.
    pub fn forget_targets(&mut self, now: Instant, targets: &[SocketAddr]) {
        self.connmaker.forget_targets(targets);
        self.dial_check = true;
        self.flush(now);
    }

    // ----- input -----

    /// A control connection exists (accepted, or a dial's TCP connect succeeded); its
    /// handshake is under way.
    pub fn handle_connecting(
        &mut self,
        now: Instant,
        id: ConnId,
        address: SocketAddr,
        outbound: bool,
    ) {
        self.conns.insert(
            id,
            Conn {
                address,
                outbound,
                ready: None,
            },
        );
        self.dial_check = true;
        self.flush(now);
    }

    /// A dial to `addr` failed before a connection existed.
    pub fn handle_dial_failed(&mut self, now: Instant, addr: SocketAddr, reason: String) {
        self.connmaker.dial_failed(now, addr, reason);
        self.dial_check = true;
        self.flush(now);
    }

    /// Connection `id` finished its handshake with `remote`; `keys` are the data-plane keys it
    /// agreed (`None`: in the clear).
    ///
    /// Of two ready connections to one peer, the one with the smaller `conn_uid` survives (at
    /// both ends); the other gets an [`Action::Close`].
    pub fn handle_ready(
        &mut self,
        now: Instant,
        id: ConnId,
        remote: Remote,
        conn_uid: u64,
        keys: Option<DataKeys>,
    ) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let peer = remote.name;
        let address = conn.address;
        self.dial_check = true;
        conn.ready = Some(Ready {
            remote,
            conn_uid,
            keys,
            heartbeat_seen: false,
            ack_seen: false,
            established: false,
            path_up: false,
            last_heard: None,
            streak: 0,
            pmtu: PathMtu::default(),
            fast: Fast {
                mode: FastMode::Off,
                reason: None,
                eligible: false,
                told: None,
                last_ack: None,
                acks: 0,
                last_probe: None,
                last_small_ack: None,
                probing_since: None,
            },
        });
        let fastdp = self.config.fastdp;
        if let Some(r) = self.ready_mut(id) {
            r.fast.reason = Some(if !fastdp {
                FASTDP_OFF_HERE
            } else if r.remote.fastdp_addr.is_none() {
                "fastdp: the peer has none"
            } else if r.keys.is_some() {
                "fastdp: encrypted connection"
            } else {
                r.fast.eligible = true;
                FAST_PROBING
            });
        }
        if let Some(&old) = self.carriers.get(&peer) {
            let old_uid = self.ready(old).map_or(u64::MAX, |r| r.conn_uid);
            self.stats.duplicates += 1;
            if old_uid <= conn_uid {
                self.actions.push_back(Action::Close {
                    conn: id,
                    reason: "duplicate connection (keeping the other one)",
                });
                self.flush(now);
                return;
            }
            self.actions.push_back(Action::Close {
                conn: old,
                reason: "duplicate connection (keeping the other one)",
            });
        }
        self.connmaker.connected(address, peer);
        self.carry(now, id);
        self.actions.push_back(Action::NeighbourUp(peer));
        self.flush(now);
    }

    /// Start heartbeats on carrying connection `id`: the first at once (after its link is
    /// installed, so it is sealed like traffic), later ones with everyone's at the tick.
    fn start_heartbeats(&mut self, now: Instant, id: ConnId) {
        self.push_heartbeat(id);
        if let Some(r) = self.ready_mut(id) {
            // The first round of path MTU probes goes once the connection is established.
            r.pmtu.next_round = Some(now);
        }
        if self.tick_at.is_none() {
            self.tick_at = Some(now + self.config.heartbeat_interval);
        }
    }

    /// The remote acknowledged our heartbeats on connection `id`.
    pub fn handle_ack(&mut self, now: Instant, id: ConnId, conn_uid: u64) {
        if let Some(r) = self.ready_mut(id).filter(|r| r.conn_uid == conn_uid) {
            r.ack_seen = true;
            self.check_established(now, id);
        }
        self.flush(now);
    }

    /// The data path received a heartbeat (the data path checked it came from the address of
    /// the neighbour it names).
    pub fn handle_heartbeat(&mut self, now: Instant, heartbeat: Heartbeat) {
        let found = self.conns.iter().find_map(|(&id, c)| {
            c.ready
                .as_ref()
                .filter(|r| {
                    r.conn_uid == heartbeat.conn_uid && r.remote.name.get() == heartbeat.sender
                })
                .map(|_| id)
        });
        let Some(id) = found else {
            self.stats.stray_heartbeats += 1;
            return;
        };
        match heartbeat.probe {
            Some(Probe::Probe(len)) => {
                // Answer through the data path, the way the probe came.
                self.push_probe(id, Probe::Ack(len));
            }
            Some(Probe::Ack(len)) => {
                if let Some(r) = self.ready_mut(id) {
                    for (size, ok) in &mut r.pmtu.round {
                        if *size == len {
                            *ok = true;
                        }
                    }
                }
            }
            None => {}
        }
        let interval = self.config.heartbeat_interval;
        let up_after = self.config.up_after.max(1);
        let Some(r) = self.ready_mut(id) else { return };
        let previous = r.last_heard.replace(now);
        if !r.heartbeat_seen {
            r.heartbeat_seen = true;
            let message = Message::DataPathAck {
                conn_uid: r.conn_uid,
            };
            self.actions.push_back(Action::Send { conn: id, message });
            self.check_established(now, id);
        } else if r.established && !r.path_up {
            let in_a_row =
                previous.is_some_and(|p| now.saturating_duration_since(p) <= interval * 2);
            r.streak = if in_a_row { r.streak + 1 } else { 1 };
            if r.streak >= up_after {
                r.path_up = true;
                r.streak = 0;
                self.stats.paths_up += 1;
                if self.is_carrier(id) {
                    self.announce(now, id);
                }
            }
        }
        self.flush(now);
    }

    /// The kernel fast path received a heartbeat (a probe or an acknowledgement) on the path
    /// to neighbour `from` (the driver knows which device it came in on).
    pub fn handle_fast_heartbeat(&mut self, now: Instant, from: PeerName, heartbeat: Heartbeat) {
        let full = self.fast_frame();
        let interval = self.config.heartbeat_interval;
        let id = self.carriers.get(&from).copied().filter(|&id| {
            self.ready(id).is_some_and(|r| {
                r.fast.eligible
                    && r.conn_uid == heartbeat.conn_uid
                    && r.remote.name.get() == heartbeat.sender
            })
        });
        let Some(id) = id else {
            self.stats.stray_heartbeats += 1;
            return;
        };
        match heartbeat.probe {
            Some(Probe::Probe(len)) => {
                if len == full
                    && let Some(r) = self.ready_mut(id)
                {
                    r.fast.last_probe = Some(now);
                }
                self.push_fast(id, Probe::Ack(len));
            }
            Some(Probe::Ack(len)) if len < full => {
                if let Some(r) = self.ready_mut(id) {
                    r.fast.last_small_ack = Some(now);
                }
            }
            Some(Probe::Ack(len)) if len == full => {
                if let Some(r) = self.ready_mut(id) {
                    let in_a_row = r
                        .fast
                        .last_ack
                        .is_some_and(|p| now.saturating_duration_since(p) <= interval * 2);
                    r.fast.acks = if in_a_row { r.fast.acks + 1 } else { 1 };
                    r.fast.last_ack = Some(now);
                }
                self.fast_judge(now, id);
            }
            _ => {}
        }
        self.flush(now);
    }

    /// The size of a fast-path probe: a whole overlay-MTU frame.
    fn fast_frame(&self) -> u16 {
        self.config.pmtu_max_frame.max(PROBE_MIN_LEN as u16)
    }

    /// At a tick: the fast path's probe goes out, and its state is judged.
    fn fast_step(&mut self, now: Instant, id: ConnId) {
        if !self.ready(id).is_some_and(|r| r.fast.eligible) {
            return;
        }
        let full = self.fast_frame();
        self.push_fast(id, Probe::Probe(full));
        // A small one too: when only it comes back, the path is too small, not blocked.
        if self
            .ready(id)
            .is_some_and(|r| r.fast.mode == FastMode::Probe)
        {
            self.push_fast(id, Probe::Probe(PROBE_MIN_LEN as u16));
        }
        self.fast_judge(now, id);
    }

    /// Move connection `id`'s traffic onto the fast path or off it (see [`FastMode`]).
    fn fast_judge(&mut self, now: Instant, id: ConnId) {
        let (interval, down_after) = (self.config.heartbeat_interval, self.config.down_after);
        let up_after = self.config.up_after.max(1);
        let Some(r) = self.ready_mut(id) else { return };
        let f = &mut r.fast;
        let recent = |t: Option<Instant>, within: Duration| {
            t.is_some_and(|t| now.saturating_duration_since(t) < within)
        };
        let next = match f.mode {
            FastMode::Probe
                if f.acks >= up_after
                    && recent(f.last_ack, interval * 2)
                    && recent(f.last_probe, interval * 2) =>
            {
                FastMode::Use
            }
            FastMode::Use
                if !recent(f.last_ack, down_after) || !recent(f.last_probe, down_after) =>
            {
                FastMode::Probe
            }
            m => m,
        };
        if next == f.mode {
            // Still probing after a while: say why, as far as the probes tell.
            if f.mode == FastMode::Probe
                && f.probing_since
                    .is_some_and(|t| now.saturating_duration_since(t) >= down_after)
            {
                f.reason = Some(if recent(f.last_small_ack, down_after) {
                    FAST_TOO_SMALL
                } else {
                    FAST_SILENT
                });
            }
            return;
        }
        f.mode = next;
        if next == FastMode::Use {
            f.reason = None;
            self.stats.fastdp_up += 1;
        } else {
            f.reason = Some(FAST_PROBING);
            f.acks = 0;
            f.probing_since = Some(now);
            self.stats.fastdp_down += 1;
        }
        self.fast_tell(id);
        self.table_dirty = true;
    }

    /// Tell the driver connection `id`'s fast path as it should be now, if that changed (its
    /// mode, or a short id).
    fn fast_tell(&mut self, id: ConnId) {
        let topo = self.mesh.topology();
        let local = topo.local().short_id.get();
        let Some(r) = self.conns.get(&id).and_then(|c| c.ready.as_ref()) else {
            return;
        };
        let (Some(addr), mode) = (r.remote.fastdp_addr, r.fast.mode) else {
            return;
        };
        let want = (local, short_of(topo, &r.remote), mode);
        if r.fast.told == Some(want) || (r.fast.told.is_none() && mode == FastMode::Off) {
            return;
        }
        let peer = r.remote.name;
        self.actions.push_back(Action::FastPath {
            peer,
            local: want.0,
            remote: want.1,
            addr,
            mode,
        });
        if let Some(r) = self.ready_mut(id) {
            r.fast.told = Some(want);
        }
    }

    /// Queue a fast-path probe or acknowledgement on connection `id`.
    fn push_fast(&mut self, id: ConnId, probe: Probe) {
        let Some(r) = self.ready(id) else { return };
        let heartbeat = Heartbeat {
            conn_uid: r.conn_uid,
            sender: self.name.get(),
            probe: Some(probe),
        };
        let peer = r.remote.name;
        self.actions
            .push_back(Action::FastHeartbeat { peer, heartbeat });
    }

    /// Gossip arrived on connection `id`.
    pub fn handle_gossip(&mut self, now: Instant, id: ConnId, channel: u8, payload: Vec<u8>) {
        let Some(from) = self.ready(id).map(|r| r.remote.name) else {
            return;
        };
        if channel == TOPOLOGY_CHANNEL {
            if self.mesh.handle_gossip(now, from, &payload).is_err() {
                self.stats.gossip_errors += 1;
            }
        } else if self.channels.contains(&channel) {
            self.actions.push_back(Action::Gossip {
                channel,
                from,
                payload,
            });
        } else {
            self.stats.unknown_channel += 1;
        }
        self.flush(now);
    }

    /// Connection `id` ended (`reason` for the connection maker; `permanent`: never dial this
    /// address again, e.g. it was ourselves).
    pub fn handle_closed(&mut self, now: Instant, id: ConnId, reason: String, permanent: bool) {
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        self.dial_check = true;
        let Some(ready) = conn.ready else {
            self.stats.handshake_failures += 1;
            if conn.outbound && !permanent {
                self.connmaker.dial_failed(now, conn.address, reason);
            } else if conn.outbound {
                self.connmaker
                    .disconnected(now, conn.address, Some(reason), true);
            }
            self.flush(now);
            return;
        };
        self.connmaker
            .disconnected(now, conn.address, Some(reason), permanent);
        let peer = ready.remote.name;
        if self.carriers.get(&peer) != Some(&id) {
            self.flush(now);
            return;
        }
        self.carriers.remove(&peer);
        if let Some((local, remote, mode)) = ready.fast.told
            && mode != FastMode::Off
            && let Some(addr) = ready.remote.fastdp_addr
        {
            self.actions.push_back(Action::FastPath {
                peer,
                local,
                remote,
                addr,
                mode: FastMode::Off,
            });
            if mode == FastMode::Use {
                self.stats.fastdp_down += 1;
            }
        }
        self.actions.push_back(Action::RemoveLink {
            ip: ready.remote.data_addr.ip(),
            conn_uid: ready.conn_uid,
        });
        if limit_for(ready.pmtu.settled, self.config.pmtu_max_frame).is_some() {
            self.actions.push_back(Action::SetPathMtu {
                ip: ready.remote.data_addr.ip(),
                max_frame: None,
            });
        }
        self.mesh.connection_down(now, peer);
        // Hand the peer to another ready connection to it (the smallest UID), if any.
        let next = self
            .conns
            .iter()
            .filter_map(|(&k, c)| c.ready.as_ref().map(|r| (k, r)))
            .filter(|(_, r)| r.remote.name == peer)
            .min_by_key(|(_, r)| r.conn_uid)
            .map(|(k, _)| k);
        if let Some(next) = next {
            self.stats.handovers += 1;
            if let Some(c) = self.conns.get(&next) {
                self.connmaker.connected(c.address, peer);
            }
            self.carry(now, next);
        }
        self.table_dirty = true;
        self.flush(now);
    }

    /// Fire the timers due at `now`: gossip, heartbeats, liveness, dials.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.mesh.poll_timeout().is_some_and(|t| t <= now) {
            self.mesh.handle_timeout(now);
        }
        if self.connmaker_at.is_some_and(|t| t <= now) {
            self.dial_check = true;
        }
        if self.tick_at.is_some_and(|t| t <= now) {
            self.tick(now);
        }
        self.flush(now);
    }

    /// Every ready connection's heartbeat goes out; silent paths go down.
    fn tick(&mut self, now: Instant) {
        let interval = self.config.heartbeat_interval.max(Duration::from_millis(1));
        let down_after = self.config.down_after;
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        let mut any = false;
        for id in ids {
            // Heartbeats go on the connections that carry their peer (a duplicate is being
            // closed and needs none).
            if !self.is_carrier(id) {
                continue;
            }
            any = true;
            self.push_heartbeat(id);
            self.pmtu_step(now, id);
            self.fast_step(now, id);
            let Some(r) = self.conns.get_mut(&id).and_then(|c| c.ready.as_mut()) else {
                continue;
            };
            let silent = r
                .last_heard
                .is_none_or(|t| now.saturating_duration_since(t) >= down_after);
            if r.established && r.path_up && silent {
                r.path_up = false;
                r.streak = 0;
                self.stats.paths_down += 1;
                let peer = r.remote.name;
                self.mesh.connection_down(now, peer);
                self.table_dirty = true;
            }
        }
        self.tick_at = any.then_some(now + interval);
    }

    /// Path MTU discovery on carrying connection `id` (at a tick): end the round under way,
    /// start the next one when due. See [`PathMtu`].
    fn pmtu_step(&mut self, now: Instant, id: ConnId) {
        let max = self.config.pmtu_max_frame;
        let (round, every) = (self.config.pmtu_round, self.config.pmtu_every);
        if max == 0 {
            return;
        }
        let Some(r) = self.ready_mut(id).filter(|r| r.established) else {
            return;
        };
        let ip = r.remote.data_addr.ip();
        let p = &mut r.pmtu;
        let mut install = None;
        if p.round_ends.is_some_and(|t| t <= now) {
            p.round_ends = None;
            let before = (p.lo, p.hi);
            if !p.conclude() {
                // Still searching: the data path keeps what it has meanwhile.
                p.next_round = Some(now);
            } else {
                let limit = limit_for(p.lo, max);
                let installed = limit_for(p.settled, max);
                let smaller = limit.unwrap_or(max) < installed.unwrap_or(max);
                if smaller && !p.confirming {
                    // Ask again before believing it.
                    p.confirming = true;
                    (p.lo, p.hi) = before;
                    p.next_round = Some(now);
                } else {
                    p.confirming = false;
                    p.settled = p.lo;
                    p.hi = 0; // The next round looks up to the full size again.
                    p.next_round = Some(now + every);
                    if limit != installed {
                        install = Some(limit);
                    }
                }
            }
        }
        let mut probes = Vec::new();
        if p.round_ends.is_none() && p.next_round.is_some_and(|t| t <= now) {
            let sizes = p.plan(max);
            p.round = sizes.iter().map(|&n| (n, false)).collect();
            p.round_ends = Some(now + round);
            p.next_round = None;
            let (lo, top) = (p.lo, p.hi.saturating_sub(1));
            let in_use = p.confirming.then(|| p.in_use(max));
            for n in sizes {
                probes.push(n);
                if n == lo || n == top || Some(n) == in_use {
                    probes.push(n);
                }
                if Some(n) == in_use {
                    probes.push(n);
                }
            }
        }
        if let Some(max_frame) = install {
            self.actions.push_back(Action::SetPathMtu { ip, max_frame });
        }
        for n in probes {
            self.push_probe(id, Probe::Probe(n));
        }
    }

    /// Queue connection `id`'s data-path heartbeat.
    fn push_heartbeat(&mut self, id: ConnId) {
        self.push_heartbeat_frame(id, None);
    }

    /// Queue a path MTU probe (or acknowledgement) on connection `id`.
    fn push_probe(&mut self, id: ConnId, probe: Probe) {
        self.push_heartbeat_frame(id, Some(probe));
    }

    fn push_heartbeat_frame(&mut self, id: ConnId, probe: Option<Probe>) {
        let topo = self.mesh.topology();
        let src = topo.local().short_id.get();
        let Some(r) = self.conns.get(&id).and_then(|c| c.ready.as_ref()) else {
            return;
        };
        self.actions.push_back(Action::Heartbeat {
            to: r.remote.data_addr,
            src,
            dst: short_of(topo, &r.remote),
            heartbeat: Heartbeat {
                conn_uid: r.conn_uid,
                sender: self.name.get(),
                probe,
            },
        });
    }

    // ----- output -----

    /// When [`handle_timeout`](Self::handle_timeout) is due next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.mesh.poll_timeout(), self.connmaker_at, self.tick_at]
            .into_iter()
            .flatten()
            .min()
    }

    /// The next thing to do.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Send `payload` on `channel` to neighbour `to`; false if `to` is not a neighbour.
    pub fn send_gossip(&mut self, channel: u8, to: PeerName, payload: Vec<u8>) -> bool {
        let Some(&conn) = self.carriers.get(&to) else {
            return false;
        };
        self.actions.push_back(Action::Send {
            conn,
            message: Message::Gossip { channel, payload },
        });
        true
    }

    // ----- views -----

    /// Our peer name.
    pub fn name(&self) -> PeerName {
        self.name
    }

    /// Our short id as it is now (a collision may change it).
    pub fn short_id(&self) -> ShortId {
        self.mesh.topology().local().short_id
    }

    /// The topology gossip state (topology, routes, counters).
    pub fn mesh(&self) -> &Mesh {
        &self.mesh
    }

    /// The connection maker (targets and their state).
    pub fn connmaker(&self) -> &ConnMaker {
        &self.connmaker
    }

    /// Counters.
    pub fn stats(&self) -> NodeStats {
        self.stats
    }

    /// Live control connections (handshake under way included), the number the connection
    /// limit counts.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Every live connection.
    pub fn connections(&self) -> impl Iterator<Item = ConnView<'_>> {
        self.conns.iter().map(|(&id, c)| {
            let r = c.ready.as_ref();
            ConnView {
                id,
                address: c.address,
                outbound: c.outbound,
                state: match r {
                    None => ConnState::Connecting,
                    Some(r) if r.established => ConnState::Established,
                    Some(_) => ConnState::Pending,
                },
                remote: r.map(|r| &r.remote),
                conn_uid: r.map(|r| r.conn_uid),
                carrier: r.is_some_and(|r| self.carriers.get(&r.remote.name) == Some(&id)),
                path_up: r.is_some_and(|r| r.path_up),
                path_mtu: r
                    .filter(|r| r.pmtu.settled > 0)
                    .map(|r| r.pmtu.settled.saturating_sub(14)),
                fastdp: r.is_some_and(|r| r.fast.mode == FastMode::Use),
                fastdp_reason: r.and_then(|r| r.fast.reason),
            }
        })
    }

    /// The peers we have a carrying connection with (gossip goes to them).
    pub fn neighbours(&self) -> Vec<PeerName> {
        self.carriers.keys().copied().collect()
    }

    /// The forwarding table for the data path as of now.
    pub fn forwarding_table(&self) -> ForwardingTable {
        let topo = self.mesh.topology();
        let routes = self.mesh.routes();
        let short_of_name = |name: PeerName| topo.peer(name).map(|p| p.short_id.get());
        let mut table = ForwardingTable::new(topo.local().short_id.get());
        // Neighbours whose data path works, reached directly while the routes know no way to
        // them (the peer's own gossip about the link has not arrived yet). Once the routes
        // know a way, they decide: a link one end has taken down is not used.
        let mut direct = Vec::new();
        for (&peer, &id) in &self.carriers {
            let Some(r) = self.ready(id) else { continue };
            let short = short_of(topo, &r.remote);
            table.add_neighbour(PeerEntry {
                short_id: short,
                name: peer.get(),
                addr: r.remote.data_addr,
            });
            if r.established && r.path_up && routes.next_hop(peer).is_none() {
                direct.push(short);
            }
            table.set_fastdp(short, r.fast.mode == FastMode::Use);
        }
        for peer in topo.peers().filter(|p| p.name != self.name) {
            table.add_known(peer.short_id.get(), peer.name.get());
            if let Some(via) = routes.next_hop(peer.name).and_then(short_of_name) {
                table.set_next_hop(peer.short_id.get(), via);
            }
        }
        for &short in &direct {
            table.set_next_hop(short, short);
        }
        for peer in topo.peers() {
            let mut children: Vec<u16> = routes
                .broadcast_children(peer.name)
                .iter()
                .filter_map(|&c| short_of_name(c))
                .collect();
            if peer.name == self.name {
                for &short in &direct {
                    if !children.contains(&short) {
                        children.push(short);
                    }
                }
            }
            table.set_children(peer.short_id.get(), &children);
        }
        table
    }

    // ----- internals -----

    fn ready(&self, id: ConnId) -> Option<&Ready> {
        self.conns.get(&id).and_then(|c| c.ready.as_ref())
    }

    fn ready_mut(&mut self, id: ConnId) -> Option<&mut Ready> {
        self.conns.get_mut(&id).and_then(|c| c.ready.as_mut())
    }

    fn is_carrier(&self, id: ConnId) -> bool {
        self.ready(id)
            .is_some_and(|r| self.carriers.get(&r.remote.name) == Some(&id))
    }

    /// Make `id` the connection carrying its peer: install its link, tell the mesh.
    fn carry(&mut self, now: Instant, id: ConnId) {
        let Some(r) = self.ready(id) else { return };
        let (peer, ip, conn_uid, keys, partial_csum) = (
            r.remote.name,
            r.remote.data_addr.ip(),
            r.conn_uid,
            r.keys.clone(),
            r.remote.version >= PARTIAL_CSUM_SINCE,
        );
        self.carriers.insert(peer, id);
        // Keys first: the peer must not appear in a table before its link exists.
        self.actions.push_back(Action::SetLink {
            ip,
            conn_uid,
            keys,
            partial_csum,
        });
        if let Some(r) = self.ready_mut(id).filter(|r| r.fast.eligible) {
            r.fast.mode = FastMode::Probe;
            r.fast.reason = Some(FAST_PROBING);
            r.fast.acks = 0;
            r.fast.probing_since = Some(now);
            self.fast_tell(id);
        }
        self.start_heartbeats(now, id);
        self.announce(now, id);
    }

    /// Tell the mesh about carrying connection `id` as it is (up; established if so).
    fn announce(&mut self, now: Instant, id: ConnId) {
        let Some(c) = self.conns.get(&id) else { return };
        let Some(r) = c.ready.as_ref() else { return };
        let peer = r.remote.name;
        let hint = (r.remote.nickname.clone(), r.remote.uid, r.remote.short_id);
        let usable = r.established && r.path_up;
        self.mesh
            .connection_up(now, peer, hint, c.address.to_string(), c.outbound);
        if usable {
            self.mesh.connection_established(now, peer);
        }
        self.table_dirty = true;
    }

    fn check_established(&mut self, now: Instant, id: ConnId) {
        let Some(r) = self.ready_mut(id) else { return };
        if r.established || !(r.heartbeat_seen && r.ack_seen) {
            return;
        }
        r.established = true;
        r.path_up = true;
        let peer = r.remote.name;
        if self.is_carrier(id) {
            self.mesh.connection_established(now, peer);
            self.table_dirty = true;
        }
    }

    /// After any input: send what the mesh queued, act on its events, start dials, publish
    /// the table if it changed.
    fn flush(&mut self, now: Instant) {
        while let Some((to, payload)) = self.mesh.poll_transmit() {
            let _ = self.send_gossip(TOPOLOGY_CHANNEL, to, payload);
        }
        let mut changed = false;
        while let Some(event) = self.mesh.poll_event() {
            changed = true;
            if let MeshEvent::ShortIdChanged(id) = event {
                self.actions.push_back(Action::PersistShortId(id));
            }
        }
        if changed {
            let carriers: Vec<ConnId> = self.carriers.values().copied().collect();
            for id in carriers {
                self.fast_tell(id);
            }
            self.connmaker
                .update_from_topology(now, self.mesh.topology());
            self.actions.push_back(Action::PeersChanged);
            self.table_dirty = true;
            self.dial_check = true;
        }
        if std::mem::take(&mut self.dial_check) {
            for addr in self.connmaker.poll_dial(now, self.conns.len()) {
                self.actions.push_back(Action::Dial(addr));
            }
            self.connmaker_at = self.connmaker.poll_timeout();
        }
        if self.table_dirty {
            self.table_dirty = false;
            self.actions.push_back(Action::TableChanged);
        }
    }
}

/// The short id of `remote` as the topology knows it now (else as its handshake said).
fn short_of(topo: &Topology, remote: &Remote) -> u16 {
    topo.peer(remote.name)
        .map_or(remote.short_id.get(), |p| p.short_id.get())
}
