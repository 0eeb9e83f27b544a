//! Layer: driver. State shared between the router's tasks and the HTTP API: IPAM and DNS
//! (behind one lock), the last copy of the data-plane counters, and the latest snapshot of the
//! [`weft_node::Node`] that the control task owns ([`NodeView`]; read without touching the
//! node). Also the status report types the API serialises (the CLI reads them back).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use weft_mesh::{GossipStats, PeerName, TargetState, Topology};
use weft_node::NodeStats;
use weft_overlay::Counters;

use crate::control::NodeInput;

/// What a connection task can be told to do.
#[derive(Debug)]
pub enum ConnCommand {
    /// Send this message (gossip, data-path acknowledgement).
    Send(weft_wire::control::Message),
    /// Close the connection with this reason (e.g. a duplicate).
    Close(&'static str),
}

/// A connection's life, as `weft status connections` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnState {
    /// Dialling, or TCP up and the handshake under way.
    Connecting,
    /// The last attempt failed; another one is scheduled.
    Retrying,
    /// Handshake done, data path not yet confirmed both ways.
    Pending,
    /// Handshake done and UDP heartbeats confirmed in both directions.
    Established,
    /// Failed and will not be retried.
    Failed,
}

/// One live control connection in a [`NodeView`].
#[derive(Debug, Clone)]
pub struct ConnView {
    /// The remote TCP address.
    pub address: SocketAddr,
    /// We dialled it.
    pub outbound: bool,
    /// Current state.
    pub state: ConnState,
    /// The remote peer, once the handshake is done.
    pub remote: Option<PeerName>,
    /// The remote's nickname.
    pub nickname: String,
    /// It carries its peer (false: a duplicate being closed).
    pub carrier: bool,
    /// Data-path heartbeats arrive.
    pub path_up: bool,
    /// The path MTU probing found (largest IP packet), once known.
    pub path_mtu: Option<u16>,
    /// Its traffic crosses the kernel fast path.
    pub fastdp: bool,
    /// Why it does not (see [`weft_node::ConnView::fastdp_reason`]).
    pub fastdp_reason: Option<&'static str>,
    /// How the connection is protected, once its handshake completed.
    pub protection: Option<weft_mesh::Protection>,
}

/// The routes as of a snapshot.
#[derive(Debug, Clone, Default)]
pub struct RoutesView {
    /// For each reachable peer, the path to it (first hop first).
    pub paths: BTreeMap<PeerName, Vec<PeerName>>,
    /// For each peer (ourselves included), the neighbours its broadcasts go on to.
    pub broadcast: BTreeMap<PeerName, Vec<PeerName>>,
}

impl RoutesView {
    /// The reachable peers.
    pub fn reachable(&self) -> impl Iterator<Item = PeerName> + '_ {
        self.paths.keys().copied()
    }

    /// The path to `dest`, if reachable.
    pub fn path(&self, dest: PeerName) -> Option<&[PeerName]> {
        self.paths.get(&dest).map(Vec::as_slice)
    }

    /// The next hop to `dest`.
    pub fn next_hop(&self, dest: PeerName) -> Option<PeerName> {
        self.paths.get(&dest).and_then(|p| p.first().copied())
    }

    /// The neighbours `source`'s broadcasts go on to.
    pub fn broadcast_children(&self, source: PeerName) -> &[PeerName] {
        self.broadcast.get(&source).map_or(&[], Vec::as_slice)
    }
}

/// A snapshot of the node, published by the control task after every change.
#[derive(Debug, Clone)]
pub struct NodeView {
    /// The topology.
    pub topology: Topology,
    /// The routes computed from it.
    pub routes: RoutesView,
    /// Live control connections.
    pub conns: Vec<ConnView>,
    /// Every target: (address, direct, state).
    pub targets: Vec<(SocketAddr, bool, TargetState)>,
    /// The direct targets.
    pub direct_targets: Vec<SocketAddr>,
    /// Connections that ended since the start.
    pub terminations: u64,
    /// The node's counters.
    pub stats: NodeStats,
    /// Gossip counters.
    pub gossip: GossipStats,
}

/// IPAM's part of the router, shared by the node task (gossip, timers), the API handlers
/// (requests) and the persister. Its own lock: nothing else waits while IPAM works.
#[derive(Debug, Default)]
pub struct IpamState {
    /// IPAM, unless disabled with `--ipalloc-range ""`.
    pub ipam: Option<crate::ipam::IpamDriver>,
    /// IPAM messages refused as malformed or invalid.
    pub ipam_errors: u64,
    /// With IPAM off: still floods and routes other peers' IPAM messages across this peer.
    pub ipam_relay: Option<weft_mesh::ChannelRouter>,
}

/// weaveDNS's part of the router, shared by the node task and the API handlers. Its own lock.
#[derive(Debug, Default)]
pub struct DnsState {
    /// weaveDNS, unless disabled with `--no-dns`.
    pub dns: Option<crate::dns::DnsDriver>,
    /// DNS gossip refused as malformed or invalid.
    pub dns_errors: u64,
}

/// What the data-plane thread publishes every 200 ms for the API to read.
#[derive(Debug, Default)]
pub struct Published {
    /// Last copy of the data-plane counters.
    pub counters: Counters,
    /// Last copy of the data plane's per-link traffic.
    pub link_traffic: crate::traffic::LinkTraffic,
    /// What each neighbour's kernel fast-path device carried (by the neighbour's underlay
    /// address), as of its last reading (about once a second).
    pub fastdp_traffic: std::collections::HashMap<std::net::IpAddr, weft_sys::netlink::LinkStats>,
    /// Each data-plane thread's last counters and traffic, of which the two above are the sums.
    threads: Vec<(Counters, crate::traffic::LinkTraffic)>,
}

impl Published {
    /// Data-plane thread `i` counted `counters` and `traffic` so far.
    pub fn set_thread(
        &mut self,
        i: usize,
        counters: &Counters,
        traffic: &crate::traffic::LinkTraffic,
    ) {
        if self.threads.len() <= i {
            self.threads.resize_with(i + 1, Default::default);
        }
        self.threads[i].0 = *counters;
        self.threads[i].1.clone_from(traffic);
        let mut sum = Counters::default();
        let mut links = crate::traffic::LinkTraffic::default();
        for (c, t) in &self.threads {
            sum.add(c);
            links.add(t);
        }
        self.counters = sum;
        self.link_traffic = links;
    }
}

/// Everything the tasks share.
#[derive(Debug)]
pub struct Shared {
    /// Static facts about this router.
    pub info: RouterInfo,
    /// IPAM (its own lock; never held together with another of these locks).
    pub ipam: Mutex<IpamState>,
    /// weaveDNS (its own lock; never held together with another of these locks).
    pub dns: Mutex<DnsState>,
    /// The data plane's latest counters.
    pub published: Mutex<Published>,
    /// The node's latest snapshot.
    pub view: Mutex<Arc<NodeView>>,
    /// Input for the control task that owns the node.
    pub node: mpsc::UnboundedSender<NodeInput>,
    /// Commands to the data-plane threads.
    pub dataplane: crate::dataplane::Commands,
    /// Commands to the kernel fast path (`None`: off).
    pub fastdp: Option<mpsc::UnboundedSender<crate::fastdp::FastCmd>>,
    /// Wakes the control loop after IPAM or DNS got input.
    pub wake: tokio::sync::Notify,
    /// Where the target list is kept.
    pub targets_file: std::path::PathBuf,
    /// The state directory (identity, targets).
    pub state_dir: std::path::PathBuf,
    /// The run directory (pid file, log; the proxy's `proxy.json`).
    pub run_dir: std::path::PathBuf,
    /// The router's clock.
    pub clock: crate::dataplane::Clock,
}

impl Shared {
    /// Lock IPAM. A poisoned lock means a task panicked while holding it; the state is still
    /// the best information there is, so keep serving it. Take one of these locks at a time
    /// (the node itself is behind none: the control task owns it).
    pub fn ipam(&self) -> std::sync::MutexGuard<'_, IpamState> {
        self.ipam.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lock weaveDNS (see [`Shared::ipam`]).
    pub fn dns(&self) -> std::sync::MutexGuard<'_, DnsState> {
        self.dns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lock the data plane's published counters (see [`Shared::ipam`]).
    pub fn published(&self) -> std::sync::MutexGuard<'_, Published> {
        self.published.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The node's latest snapshot.
    pub fn view(&self) -> Arc<NodeView> {
        self.view.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Publish a new snapshot.
    pub fn set_view(&self, view: NodeView) {
        *self.view.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(view);
    }
}

/// Static facts about this router.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouterInfo {
    /// Peer name, printed as a MAC.
    pub name: String,
    /// Nickname.
    pub nickname: String,
    /// Short id.
    pub short_id: u16,
    /// Process UID.
    pub uid: u64,
    /// TCP control port.
    pub port: u16,
    /// UDP data port (sleeve).
    pub data_port: u16,
    /// UDP port of the kernel fast path (0: off).
    pub fastdp_port: u16,
    /// Overlay MTU.
    pub mtu: u32,
    /// weft's version.
    pub version: String,
    /// Protocol versions spoken.
    pub protocol_min: u8,
    /// Protocol versions spoken.
    pub protocol_max: u8,
    /// Peer discovery is on.
    pub discovery: bool,
    /// A password is set.
    #[serde(default)]
    pub encryption: bool,
    /// `--trusted-subnets`, as given.
    #[serde(default)]
    pub trusted_subnets: Vec<String>,
    /// Kernel features: found, used, or why not.
    #[serde(default)]
    pub kernel_features: Vec<crate::features::FeatureReport>,
    /// Threads of the userspace data path (`--datapath-threads`, resolved).
    #[serde(default)]
    pub datapath_threads: usize,
    /// The userspace data path has an express lane for sparse flows (one more thread).
    #[serde(default)]
    pub express_lane: bool,
}

/// `GET /status` as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    /// Peer name.
    pub name: String,
    /// Nickname.
    pub nickname: String,
    /// Short id.
    pub short_id: u16,
    /// Process UID.
    pub uid: u64,
    /// weft's version.
    pub version: String,
    /// Protocol range.
    pub protocol: String,
    /// TCP control port.
    pub port: u16,
    /// UDP data port (sleeve).
    pub data_port: u16,
    /// UDP port of the kernel fast path (0: off).
    pub fastdp_port: u16,
    /// Overlay MTU.
    pub mtu: u32,
    /// Whether a password is set (connections are encrypted).
    pub encryption: bool,
    /// Known peers, ourselves first.
    pub peers: Vec<PeerReport>,
    /// Connections and dialling targets.
    pub connections: Vec<ConnectionReport>,
    /// Direct targets (persisted; `weft connect` / `weft forget`).
    pub targets: Vec<String>,
    /// Peer discovery (dialling addresses learned from gossip) is on.
    pub discovery: bool,
    /// Data-plane and control-plane counters.
    pub counters: BTreeMap<String, u64>,
    /// Lowest protocol version spoken.
    #[serde(default)]
    pub protocol_min: u8,
    /// Highest protocol version spoken.
    #[serde(default)]
    pub protocol_max: u8,
    /// Peers in these subnets are trusted with the data plane in the clear.
    #[serde(default)]
    pub trusted_subnets: Vec<String>,
    /// Control connections that ended since the router started.
    #[serde(default)]
    pub terminations: u64,
    /// For each peer we reach, the neighbour we send its traffic to.
    #[serde(default)]
    pub unicast_routes: Vec<RouteReport>,
    /// For each peer we reach (ourselves included), the neighbours we pass its broadcasts to.
    #[serde(default)]
    pub broadcast_routes: Vec<BroadcastRouteReport>,
    /// IPAM, unless it is disabled.
    #[serde(default)]
    pub ipam: Option<IpamReport>,
    /// weaveDNS, when it runs.
    #[serde(default)]
    pub dns: Option<DnsReport>,
    /// Where the Docker API proxy listens, when one runs.
    #[serde(default)]
    pub proxy: Option<Vec<String>>,
    /// Kernel features: found, used by the data plane, or why not.
    #[serde(default)]
    pub kernel_features: Vec<crate::features::FeatureReport>,
    /// Threads of the userspace data path.
    #[serde(default)]
    pub datapath_threads: usize,
    /// The userspace data path has an express lane for sparse flows.
    #[serde(default)]
    pub express_lane: bool,
    /// Traffic with each neighbour since the router started.
    #[serde(default)]
    pub links: Vec<crate::traffic::LinkReport>,
}

/// A unicast route.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouteReport {
    /// The destination peer.
    pub dest: String,
    /// The neighbour its traffic goes to.
    pub via: String,
}

/// A broadcast route.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BroadcastRouteReport {
    /// The peer whose broadcasts these are.
    pub source: String,
    /// The neighbours we pass them to.
    pub via: Vec<String>,
}

/// IPAM's state (`weft status ipam --json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IpamReport {
    /// `idle`, `ready`, `awaiting consensus: ...`, ...
    pub status: String,
    /// The allocation range.
    pub range: String,
    /// Addresses in the range.
    #[serde(default)]
    pub range_size: u64,
    /// The subnet `net:default` allocates in.
    pub default_subnet: String,
    /// Requests waiting.
    pub pending: usize,
    /// Addresses allocated on this peer.
    pub allocated: usize,
    /// While the initial ring is being agreed: whether we vote, the quorum, electors heard.
    #[serde(default)]
    pub consensus: Option<ConsensusReport>,
    /// Each ring owner's share, largest first.
    pub peers: Vec<IpamPeerReport>,
    /// The ring's ranges in address order.
    #[serde(default)]
    pub entries: Vec<IpamEntryReport>,
    /// Allocations waiting, as `IDENT SUBNET`.
    #[serde(default)]
    pub pending_allocates: Vec<String>,
    /// Claims waiting.
    #[serde(default)]
    pub pending_claims: Vec<ClaimReport>,
    /// Why storing the state fails, while it does (requests are refused meanwhile).
    #[serde(default)]
    pub store_error: Option<String>,
    /// Our allocations in ranges another peer now owns, being asked back.
    #[serde(default)]
    pub orphans: usize,
    /// Addresses found in use twice, most recent last.
    #[serde(default)]
    pub conflicts: Vec<ConflictReport>,
}

/// An address found in use twice.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConflictReport {
    /// The address.
    pub addr: String,
    /// What happened.
    pub detail: String,
}

/// Consensus on the initial ring, while it runs.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ConsensusReport {
    /// We vote (an observer waits for a ring instead).
    pub elector: bool,
    /// Votes needed.
    pub quorum: usize,
    /// Electors heard from, ourselves included.
    pub known: usize,
}

/// One ring owner's share.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IpamPeerReport {
    /// Peer name.
    pub name: String,
    /// Nickname, if known.
    pub nickname: Option<String>,
    /// Addresses owned.
    pub owned: u64,
    /// Of those, free.
    pub free: u64,
    /// Share of the range, in percent.
    pub percent: f64,
    /// Ourselves or reachable.
    pub reachable: bool,
}

/// One range of the ring.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IpamEntryReport {
    /// First address.
    pub token: String,
    /// Addresses in it.
    pub size: u64,
    /// Owner.
    pub peer: String,
    /// Owner's nickname ("" if unknown).
    pub nickname: String,
    /// The owner is ourselves or reachable.
    pub reachable: bool,
    /// Version of the range.
    pub version: u32,
    /// Free addresses, as the owner last reported.
    pub free: u32,
}

/// A claim waiting for its address.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClaimReport {
    /// The container (or other ident).
    pub ident: String,
    /// The address, with its prefix length.
    pub cidr: String,
}

/// weaveDNS's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DnsReport {
    /// The domain answered for (`weave.local.`).
    pub domain: String,
    /// Upstream servers other names are forwarded to.
    pub upstream: Vec<String>,
    /// Where the DNS server listens.
    pub address: String,
    /// TTL of answers, in seconds.
    pub ttl: u32,
    /// The records known (tombstones included).
    pub entries: Vec<DnsEntryReport>,
}

/// One DNS record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DnsEntryReport {
    /// Host name, fully qualified.
    pub hostname: String,
    /// The peer that added it.
    pub origin: String,
    /// The container it belongs to.
    pub container_id: String,
    /// The address.
    pub address: String,
    /// Version of the record.
    pub version: u64,
    /// When it was deleted (wall-clock second; 0: live).
    pub tombstone: u64,
}

/// A peer in the status report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerReport {
    /// Peer name.
    pub name: String,
    /// Nickname.
    pub nickname: String,
    /// Short id.
    pub short_id: u16,
    /// Process UID.
    pub uid: u64,
    /// Topology version of the peer's record.
    pub version: u64,
    /// The peer's connections as it reports them.
    pub connections: Vec<PeerConnReport>,
    /// How we reach it: empty for ourselves, "direct", "via NAME(NICK)", or "unreachable".
    pub path: String,
}

/// A connection as a peer reports it in its gossip.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerConnReport {
    /// The remote peer.
    pub name: String,
    /// Its nickname, if known.
    pub nickname: String,
    /// The address as the reporting peer sees it.
    pub address: String,
    /// The reporting peer dialled it.
    pub outbound: bool,
    /// Data path confirmed both ways.
    pub established: bool,
}

/// A connection in the status report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectionReport {
    /// Remote TCP address.
    pub address: String,
    /// We dialled it.
    pub outbound: bool,
    /// State.
    pub state: ConnState,
    /// Error or detail.
    pub info: String,
    /// Remote peer name, once known.
    pub name: String,
    /// Remote nickname, once known.
    pub nickname: String,
    /// How the remote peer is reached: "direct", "via NAME(NICK)", or empty when unknown.
    pub path: String,
    /// The data plane with this peer is encrypted (once the handshake completed).
    #[serde(default)]
    pub encrypted: Option<bool>,
    /// Control traffic with this peer is encrypted (once the handshake completed).
    #[serde(default)]
    pub control_encrypted: Option<bool>,
    /// The data plane's cipher, if encrypted.
    #[serde(default)]
    pub cipher: String,
    /// The overlay carrying the data plane once the handshake is done: `sleeve` for weft's
    /// userspace path (Weave's word for its userspace encapsulation), `fastdp` for a kernel
    /// path; empty before.
    #[serde(default)]
    pub overlay: String,
    /// The path MTU found by probing the underlay (the largest IP packet a container can send
    /// to this peer), once known; smaller than the overlay MTU where the path is.
    #[serde(default)]
    pub path_mtu: Option<u16>,
}
