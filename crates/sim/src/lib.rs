//! Layer: test harness. A deterministic simulator of many weft hosts in one process.
//!
//! Each simulated host runs the product's sans-IO state machines: a [`Node`] (the router's
//! rules: connection registry, duplicate resolution, establishment, handover, forwarding table,
//! data-path heartbeats and liveness, topology gossip through its [`Mesh`], dialling through
//! its [`ConnMaker`]), one [`Connection`] per control connection (hello, features, heartbeats,
//! idle timeout: the real byte stream) and a forwarding [`Engine`] fed with real VXLAN
//! datagrams, heartbeats included. The simulator is only a driver, like the router: it carries
//! out the node's actions. What would be I/O is modelled:
//!
//! - **Virtual clock and event queue.** Nothing reads a clock; events are processed in
//!   (time, sequence) order, so a seed fully determines a run.
//! - **Links.** Every pair of hosts has a one-way latency drawn once from the seed in
//!   [`SimConfig::latency`]. Datagrams are lost with probability [`SimConfig::datagram_loss`].
//! - **Control channels** behave like TCP: reliable and in order. A lost segment (probability
//!   [`SimConfig::control_loss`]) is delivered one retransmission timeout late, and later bytes
//!   wait for it. While a link is cut, bytes queue up in the sender's stream and flow once it
//!   heals, unless an end gave up first (idle timeout) and closed its side.
//! - **Dialling.** A dial to a reachable host opens a connection pair after one round trip; to
//!   an unreachable address it fails after [`SimConfig::connect_timeout`]. An accepting host
//!   refuses connections beyond its connection limit.
//! - **Data path.** Datagrams (frames and the nodes' heartbeats) cross a link after its
//!   latency, unless lost or the link is cut; a connection is established, and a direct path
//!   is up or down, exactly as the node decides from the heartbeats it gets.
//! - **Partitions.** [`Sim::cut`] a link, [`Sim::partition`] a set of hosts from the rest,
//!   [`Sim::heal`] everything.
//!
//! Hosts are numbered from 0; host `i` is peer name `02:00:00:00:hi:lo` (i + 1) at underlay
//! address `[2001:db8::i+1]` (documentation prefix: these addresses never leave the process).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use weft_mesh::{
    CloseReason, ConnConfig, ConnMaker, ConnMakerConfig, Connection, Event as ConnEvent,
    GossipConfig, GossipStats, Instant, LocalPeer, Mesh, PeerName, PeerSummary, PeerUid, ShortId,
};
use weft_node::{Action, ConnId, Node, NodeConfig, Remote};
use weft_overlay::{DatagramDecision, Engine, EngineConfig, PeerEntry, Relay, TapDecision};
use weft_wire::control::Message;
use weft_wire::vxlan;

/// The control port every simulated host listens on.
pub const CONTROL_PORT: u16 = 6783;
/// The data (VXLAN) port of every simulated host.
pub const DATA_PORT: u16 = 6784;
/// Ethertype of the test frames the simulator injects (IEEE local experimental).
const TEST_ETHERTYPE: [u8; 2] = [0x88, 0xb5];
/// Retransmission timeout added to a lost control segment.
const RTO: Duration = Duration::from_millis(200);

/// Simulator settings.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Seed for everything random (latencies, loss, uids, short ids, the mesh PRNGs).
    pub seed: u64,
    /// One-way link latency range; each link's latency is drawn once.
    pub latency: (Duration, Duration),
    /// Probability a data-plane datagram is lost.
    pub datagram_loss: f64,
    /// Probability a control-stream segment needs a retransmission.
    pub control_loss: f64,
    /// How long a dial to an unreachable host takes to fail.
    pub connect_timeout: Duration,
    /// Gossip settings for every host.
    pub gossip: GossipConfig,
    /// Connection-maker settings for every host.
    pub connmaker: ConnMakerConfig,
    /// Control-connection settings for every host.
    pub conn: ConnConfig,
    /// Data-path heartbeat interval of every node.
    pub heartbeat_interval: Duration,
    /// How long a node's direct path may stay silent before it is down.
    pub down_after: Duration,
    /// How often [`Sim::drive_until`] evaluates its predicate (virtual time).
    pub check_every: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            latency: (Duration::from_millis(1), Duration::from_millis(20)),
            datagram_loss: 0.0,
            control_loss: 0.0,
            connect_timeout: Duration::from_secs(3),
            gossip: GossipConfig::default(),
            connmaker: ConnMakerConfig::default(),
            conn: ConnConfig::default(),
            heartbeat_interval: NodeConfig::default().heartbeat_interval,
            down_after: NodeConfig::default().down_after,
            check_every: Duration::from_millis(100),
        }
    }
}

/// Totals over the whole run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Events processed.
    pub events: u64,
    /// Dials started.
    pub dials: u64,
    /// Dials refused by the accepting host (at its connection limit).
    pub dials_refused: u64,
    /// Dials that found nobody (cut link, unknown address).
    pub dials_failed: u64,
    /// Control connections opened (TCP up; one per dial that got through).
    pub connections_opened: u64,
    /// Control connections whose handshake completed (counted per end).
    pub connections_ready: u64,
    /// Control connection ends closed (counted per end).
    pub connections_closed: u64,
    /// Control-stream bytes sent (all messages, counted per end).
    pub control_bytes: u64,
    /// Datagrams sent on the data path.
    pub datagrams_sent: u64,
    /// Datagrams lost (loss or cut link).
    pub datagrams_lost: u64,
    /// Gossip payloads refused by a mesh.
    pub gossip_errors: u64,
    /// Direct paths the nodes took down (heartbeats stopped).
    pub paths_down: u64,
    /// Direct paths the nodes brought back.
    pub paths_up: u64,
}

/// One end of a control connection.
struct HostConn {
    conn: Connection,
    remote_host: usize,
    /// The key of the other end's `HostConn` (at `remote_host`).
    remote_key: u64,
    /// When our last byte reaches the other end (keeps the stream in order).
    last_arrival: Instant,
    /// Bytes (or a FIN, as `None`) waiting for the link to heal.
    stalled: Vec<Option<Vec<u8>>>,
    /// Set when the other end's FIN arrived.
    peer_closed: bool,
}

/// One simulated host.
struct Host {
    name: PeerName,
    ip: IpAddr,
    uid: u64,
    node: Node,
    engine: Engine,
    /// The node changed its forwarding table since the engine got one.
    table_dirty: bool,
    /// When the engine last got a table.
    table_at: Instant,
    /// The earliest timer of the control connections, as of their last input.
    conns_at: Option<Instant>,
    conns: BTreeMap<u64, HostConn>,
    wake_at: Option<Instant>,
    /// Test frames delivered to this host's bridge, by tag.
    received: BTreeMap<u32, u32>,
    next_port: u16,
}

#[derive(Debug)]
enum EventKind {
    Wake {
        host: usize,
    },
    Bytes {
        host: usize,
        key: u64,
        data: Vec<u8>,
    },
    Fin {
        host: usize,
        key: u64,
    },
    DialResult {
        host: usize,
        addr: SocketAddr,
    },
    Datagram {
        to: usize,
        from: SocketAddr,
        data: Vec<u8>,
    },
}

struct Scheduled {
    at: Instant,
    seq: u64,
    kind: EventKind,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// The simulator.
pub struct Sim {
    config: SimConfig,
    now: Instant,
    rng: StdRng,
    queue: BinaryHeap<Reverse<Scheduled>>,
    seq: u64,
    hosts: Vec<Host>,
    by_ip: HashMap<IpAddr, usize>,
    by_name: HashMap<PeerName, usize>,
    /// Hosts in different groups cannot reach each other.
    group: Vec<u32>,
    cuts: HashSet<(usize, usize)>,
    next_key: u64,
    stats: SimStats,
    /// Connections of the host being serviced whose state machine got input.
    touched: Vec<u64>,
}

impl Sim {
    /// `n` hosts, none started dialling yet; see [`Sim::add_targets`].
    pub fn new(n: usize, config: SimConfig) -> Self {
        let mut rng = StdRng::seed_from_u64(config.seed);
        let now = Instant::ZERO;
        let mut hosts = Vec::with_capacity(n);
        let mut by_ip = HashMap::new();
        let mut by_name = HashMap::new();
        for i in 0..n {
            let name = host_name(i);
            let ip = host_ip(i);
            let uid = rng.random::<u64>();
            let short_id = ShortId::from_masked(rng.random::<u16>());
            let local = PeerSummary {
                name,
                nickname: format!("host{i}"),
                uid,
                version: 1,
                short_id,
                connections: Vec::new(),
            };
            let node_config = NodeConfig {
                heartbeat_interval: config.heartbeat_interval,
                down_after: config.down_after,
                gossip: config.gossip.clone(),
                connmaker: config.connmaker.clone(),
                ..NodeConfig::default()
            };
            let node = Node::new(local, node_config, rng.random(), now);
            let engine = Engine::new(EngineConfig {
                local_short_id: short_id.get(),
                mac_max_age: Duration::from_secs(300),
                stream: 0,
                share_macs: false,
                express: false,
            });
            by_ip.insert(ip, i);
            by_name.insert(name, i);
            hosts.push(Host {
                name,
                ip,
                uid,
                node,
                engine,
                table_dirty: true,
                table_at: now,
                conns_at: None,
                conns: BTreeMap::new(),
                wake_at: None,
                received: BTreeMap::new(),
                next_port: 40000,
            });
        }
        let mut sim = Self {
            config,
            now,
            rng,
            queue: BinaryHeap::new(),
            seq: 0,
            hosts,
            by_ip,
            by_name,
            group: vec![0; n],
            cuts: HashSet::new(),
            next_key: 1,
            stats: SimStats::default(),
            touched: Vec::new(),
        };
        for h in 0..n {
            sim.service(h);
        }
        sim
    }

    /// Gives host `host` direct targets (other hosts, by index).
    pub fn add_targets(&mut self, host: usize, targets: &[usize]) {
        let addrs: Vec<SocketAddr> = targets.iter().map(|&t| control_addr(t)).collect();
        self.hosts[host].node.add_targets(self.now, &addrs);
        self.service(host);
    }

    /// Makes `targets` host `host`'s whole direct target list (`connect --replace`).
    pub fn replace_targets(&mut self, host: usize, targets: &[usize]) {
        let addrs: Vec<SocketAddr> = targets.iter().map(|&t| control_addr(t)).collect();
        self.hosts[host].node.replace_targets(self.now, &addrs);
        self.service(host);
    }

    /// Host `host` forgets these direct targets.
    pub fn forget_targets(&mut self, host: usize, targets: &[usize]) {
        let addrs: Vec<SocketAddr> = targets.iter().map(|&t| control_addr(t)).collect();
        self.hosts[host].node.forget_targets(self.now, &addrs);
        self.service(host);
    }

    /// Cuts the link between `a` and `b` (both directions).
    pub fn cut(&mut self, a: usize, b: usize) {
        self.cuts.insert((a.min(b), a.max(b)));
    }

    /// Separates `side` from every other host.
    pub fn partition(&mut self, side: &[usize]) {
        let g = self.group.iter().max().copied().unwrap_or(0) + 1;
        for &h in side {
            self.group[h] = g;
        }
    }

    /// Restores every link; streams stalled by the cuts flow again.
    pub fn heal(&mut self) {
        self.cuts.clear();
        self.group.iter_mut().for_each(|g| *g = 0);
        for h in 0..self.hosts.len() {
            let keys: Vec<u64> = self.hosts[h].conns.keys().copied().collect();
            for key in keys {
                let stalled = match self.hosts[h].conns.get_mut(&key) {
                    Some(c) => std::mem::take(&mut c.stalled),
                    None => continue,
                };
                for chunk in stalled {
                    self.stream_send(h, key, chunk);
                }
            }
        }
    }

    /// Host `a` closes its control connection to host `b` (if any), as when it detects the
    /// link is down; the connection makers may dial again later.
    pub fn disconnect(&mut self, a: usize, b: usize) {
        let name = self.hosts[b].name;
        let carrier = self.hosts[a]
            .node
            .connections()
            .find(|c| c.carrier && c.remote.is_some_and(|r| r.name == name))
            .map(|c| c.id.0);
        if let Some(key) = carrier {
            if let Some(c) = self.hosts[a].conns.get_mut(&key) {
                c.conn.close(CloseReason::Local);
                // The close is an input to that connection: service it now (its FIN goes out
                // and the node learns the connection is gone), not at its next timer.
                self.touched.push(key);
            }
            self.service(a);
        }
    }

    /// Whether `a` and `b` can currently reach each other.
    pub fn link_up(&self, a: usize, b: usize) -> bool {
        self.group[a] == self.group[b] && !self.cuts.contains(&(a.min(b), a.max(b)))
    }

    /// Processes the next event; false if the queue is empty.
    pub fn step(&mut self) -> bool {
        let Some(Reverse(ev)) = self.queue.pop() else {
            return false;
        };
        self.now = self.now.max(ev.at);
        self.stats.events += 1;
        self.handle(ev.kind);
        true
    }

    /// Runs until `pred` holds (checked every [`SimConfig::check_every`] of virtual time and
    /// when the queue runs dry) or `max_time` is reached. Returns the virtual time at which
    /// `pred` was seen to hold, or `None`.
    pub fn drive_until(
        &mut self,
        mut pred: impl FnMut(&Self) -> bool,
        max_time: Instant,
    ) -> Option<Instant> {
        let every = self.config.check_every.max(Duration::from_millis(1));
        let mut next_check = self.now;
        loop {
            if self.now >= next_check {
                if pred(self) {
                    return Some(self.now);
                }
                next_check = self.now + every;
            }
            let next_event = self.queue.peek().map(|Reverse(e)| e.at);
            match next_event {
                Some(t) if t <= max_time && t <= next_check => {
                    self.step();
                }
                Some(t) if t <= max_time => self.now = next_check.min(t),
                _ => {
                    // Nothing more before the deadline: one last look, then stop.
                    self.now = self.now.max(max_time.min(next_check));
                    if pred(self) {
                        return Some(self.now);
                    }
                    if self.now >= max_time {
                        return None;
                    }
                    next_check = self.now + every;
                }
            }
        }
    }

    /// Runs every event up to `until` (virtual time).
    pub fn run_until(&mut self, until: Instant) {
        while self.queue.peek().is_some_and(|Reverse(e)| e.at <= until) {
            self.step();
        }
        self.now = self.now.max(until);
    }

    /// Current virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Number of hosts.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// Whether there are no hosts.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Totals so far.
    pub fn stats(&self) -> SimStats {
        let mut stats = self.stats;
        for h in &self.hosts {
            let s = h.node.stats();
            stats.gossip_errors += s.gossip_errors;
            stats.paths_down += s.paths_down;
            stats.paths_up += s.paths_up;
        }
        stats
    }

    /// Host `h`'s node.
    pub fn node(&self, h: usize) -> &Node {
        &self.hosts[h].node
    }

    /// Host `h`'s mesh (topology, routes, gossip counters).
    pub fn mesh(&self, h: usize) -> &Mesh {
        self.hosts[h].node.mesh()
    }

    /// Host `h`'s connection maker.
    pub fn connmaker(&self, h: usize) -> &ConnMaker {
        self.hosts[h].node.connmaker()
    }

    /// Host `h`'s forwarding engine.
    pub fn engine(&self, h: usize) -> &Engine {
        &self.hosts[h].engine
    }

    /// Host `h`'s peer name.
    pub fn name(&self, h: usize) -> PeerName {
        self.hosts[h].name
    }

    /// The host index of a peer name.
    pub fn host_of(&self, name: PeerName) -> Option<usize> {
        self.by_name.get(&name).copied()
    }

    /// The hosts `h` has a ready control connection to (one per peer), in index order.
    pub fn connected_peers(&self, h: usize) -> Vec<usize> {
        let mut v: Vec<usize> = self.hosts[h]
            .node
            .neighbours()
            .into_iter()
            .filter_map(|n| self.host_of(n))
            .collect();
        v.sort_unstable();
        v
    }

    /// Whether host `a` has a unicast route to host `b` (a next hop).
    pub fn routable(&self, a: usize, b: usize) -> bool {
        self.mesh(a).routes().next_hop(self.hosts[b].name).is_some()
    }

    /// Whether every host has a route to every other host.
    pub fn all_routable(&self) -> bool {
        self.hosts
            .iter()
            .all(|h| h.node.mesh().routes().reachable().count() + 1 == self.hosts.len())
    }

    /// Whether every host knows every host, all hold the same record versions (views agree) and
    /// every host's routes are computed from its current view.
    pub fn views_agree(&self) -> bool {
        let n = self.hosts.len();
        let Some(first) = self.hosts.first() else {
            return true;
        };
        let reference: Vec<(PeerName, u64, u64)> = first
            .node
            .mesh()
            .topology()
            .peers()
            .map(|p| (p.name, p.version, p.uid))
            .collect();
        reference.len() == n
            && self.hosts.iter().all(|h| {
                let mesh = h.node.mesh();
                mesh.routes_current()
                    && mesh.topology().len() == n
                    && mesh
                        .topology()
                        .peers()
                        .map(|p| (p.name, p.version, p.uid))
                        .eq(reference.iter().copied())
            })
    }

    /// Whether every host has an established connection to every other host.
    pub fn full_mesh(&self) -> bool {
        let n = self.hosts.len();
        self.hosts.iter().all(|h| {
            h.node
                .mesh()
                .neighbours()
                .filter(|(_, established)| *established)
                .count()
                + 1
                == n
        })
    }

    /// Gossip counters summed over all hosts.
    pub fn gossip_totals(&self) -> GossipStats {
        self.hosts.iter().fold(GossipStats::default(), |mut t, h| {
            let s = h.node.mesh().stats();
            t.bytes_sent += s.bytes_sent;
            t.bytes_received += s.bytes_received;
            t.messages_sent += s.messages_sent;
            t.messages_received += s.messages_received;
            t.full_sent += s.full_sent;
            t.full_bytes_sent += s.full_bytes_sent;
            t.records_merged += s.records_merged;
            t.errors += s.errors;
            t.deltas_sent += s.deltas_sent;
            t.full_records_sent += s.full_records_sent;
            t.wants_sent += s.wants_sent;
            t.digest_bytes_sent += s.digest_bytes_sent;
            t.announce_bytes_sent += s.announce_bytes_sent;
            t.push_bytes_sent += s.push_bytes_sent;
            t.answer_bytes_sent += s.answer_bytes_sent;
            t.request_bytes_sent += s.request_bytes_sent;
            t
        })
    }

    /// Test frames tagged `tag` delivered to host `h`'s bridge so far.
    pub fn received(&self, h: usize, tag: u32) -> u32 {
        self.hosts[h].received.get(&tag).copied().unwrap_or(0)
    }

    /// Host `h` sends a broadcast test frame tagged `tag` (delivered to peers via the engine).
    pub fn broadcast(&mut self, h: usize, tag: u32) {
        self.inject(h, [0xff; 6], tag);
    }

    /// Host `h` sends a unicast test frame tagged `tag` to host `to`'s MAC address (flooded if
    /// `h` has not learned it yet).
    pub fn unicast(&mut self, h: usize, to: usize, tag: u32) {
        self.inject(h, host_mac(to), tag);
    }

    fn inject(&mut self, h: usize, dst: [u8; 6], tag: u32) {
        self.refresh_table(h);
        let mut frame = Vec::with_capacity(64);
        frame.extend_from_slice(&dst);
        frame.extend_from_slice(&host_mac(h));
        frame.extend_from_slice(&TEST_ETHERTYPE);
        frame.extend_from_slice(&tag.to_be_bytes());
        frame.resize(60, 0);
        let now = self.now;
        let host = &mut self.hosts[h];
        let local = host.engine.local_short_id();
        let targets: Vec<(u16, PeerEntry)> = match host.engine.on_tap_frame(&frame, now) {
            TapDecision::Unicast { dst, via } => vec![(dst, via)],
            TapDecision::Flood => host
                .engine
                .flood_targets()
                .iter()
                .map(|p| (p.short_id, *p))
                .collect(),
            TapDecision::Drop | TapDecision::Local => Vec::new(),
        };
        for (dst, via) in targets {
            let mut dgram = vec![0u8; vxlan::HEADER_LEN + frame.len()];
            weft_overlay::emit_vxlan_header(local, dst, &mut dgram);
            dgram[vxlan::HEADER_LEN..].copy_from_slice(&frame);
            self.send_datagram(h, via.addr, dgram);
        }
    }

    fn send_datagram(&mut self, from: usize, to: SocketAddr, data: Vec<u8>) {
        let Some(&t) = self.by_ip.get(&to.ip()) else {
            return;
        };
        self.stats.datagrams_sent += 1;
        let lost =
            self.config.datagram_loss > 0.0 && self.rng.random::<f64>() < self.config.datagram_loss;
        if lost || !self.link_up(from, t) {
            self.stats.datagrams_lost += 1;
            return;
        }
        let at = self.now + self.latency(from, t);
        let src = SocketAddr::new(self.hosts[from].ip, DATA_PORT);
        self.schedule(
            at,
            EventKind::Datagram {
                to: t,
                from: src,
                data,
            },
        );
    }

    fn handle(&mut self, kind: EventKind) {
        match kind {
            EventKind::Wake { host } => {
                if self.hosts[host].wake_at != Some(self.now) {
                    return; // Superseded by an earlier wake-up that rescheduled.
                }
                self.hosts[host].wake_at = None;
                let now = self.now;
                let hst = &mut self.hosts[host];
                if hst.node.poll_timeout().is_some_and(|t| t <= now) {
                    hst.node.handle_timeout(now);
                }
                if hst.conns_at.is_some_and(|t| t <= now) {
                    for (&key, c) in &mut hst.conns {
                        if c.conn.poll_timeout().is_some_and(|t| t <= now) {
                            c.conn.handle_timeout(now);
                            self.touched.push(key);
                        }
                    }
                    hst.conns_at = hst
                        .conns
                        .values()
                        .filter_map(|c| c.conn.poll_timeout())
                        .min();
                }
                self.service(host);
            }
            EventKind::Bytes { host, key, data } => {
                let now = self.now;
                if let Some(c) = self.hosts[host].conns.get_mut(&key) {
                    c.conn.handle_bytes(now, &data);
                    self.touched.push(key);
                    self.service(host);
                }
            }
            EventKind::Fin { host, key } => {
                if let Some(c) = self.hosts[host].conns.get_mut(&key) {
                    c.peer_closed = true;
                    c.conn.close(CloseReason::Local);
                    self.touched.push(key);
                    self.service(host);
                }
            }
            EventKind::DialResult { host, addr } => self.dial_result(host, addr),
            EventKind::Datagram { to, from, data } => self.datagram(to, from, data),
        }
    }

    /// Gives host `h`'s engine the node's forwarding table, if it changed.
    fn refresh_table(&mut self, h: usize) {
        let now = self.now;
        let host = &mut self.hosts[h];
        if std::mem::take(&mut host.table_dirty) {
            let table = host.node.forwarding_table();
            host.engine.set_table(table);
            host.table_at = now;
        }
    }

    fn datagram(&mut self, h: usize, from: SocketAddr, data: Vec<u8>) {
        // A table has 4096 slots per map: for heartbeats (a hundred neighbours' every 300 ms)
        // it is rebuilt at most every 100 ms, like the router's data plane takes new tables
        // between polls; frames always see the current one.
        let heartbeat = data
            .get(vxlan::HEADER_LEN..)
            .is_some_and(weft_overlay::heartbeat::is_heartbeat);
        let stale_ok = heartbeat
            && self.now.saturating_duration_since(self.hosts[h].table_at)
                < Duration::from_millis(100);
        if !stale_ok {
            self.refresh_table(h);
        }
        let now = self.now;
        let decision = self.hosts[h].engine.on_datagram(&data, from, now);
        let (deliver, relay) = match decision {
            DatagramDecision::Forward { deliver, relay } => (deliver, relay),
            DatagramDecision::Heartbeat { heartbeat, .. } => {
                self.hosts[h].node.handle_heartbeat(now, heartbeat);
                self.service(h);
                return;
            }
            DatagramDecision::Drop => return,
        };
        if let Some(range) = deliver {
            let frame = &data[range];
            if frame.len() >= 18 && frame[12..14] == TEST_ETHERTYPE {
                let tag = u32::from_be_bytes([frame[14], frame[15], frame[16], frame[17]]);
                *self.hosts[h].received.entry(tag).or_insert(0) += 1;
            }
        }
        match relay {
            Relay::None => {}
            Relay::Next(next) => self.send_datagram(h, next.addr, data),
            Relay::Tree { source } => {
                let children: Vec<PeerEntry> = self.hosts[h]
                    .engine
                    .table()
                    .broadcast_children(source)
                    .to_vec();
                for child in children {
                    let mut copy = data.clone();
                    if let Ok(mut packet) = vxlan::Packet::new_checked(&mut copy[..]) {
                        packet.set_vni(vxlan::vni_for(source, child.short_id));
                    }
                    self.send_datagram(h, child.addr, copy);
                }
            }
        }
    }

    fn dial_result(&mut self, h: usize, addr: SocketAddr) {
        let now = self.now;
        let target = self.by_ip.get(&addr.ip()).copied();
        let Some(t) = target.filter(|&t| self.link_up(h, t)) else {
            self.stats.dials_failed += 1;
            self.hosts[h]
                .node
                .handle_dial_failed(now, addr, "connection timed out".into());
            self.service(h);
            return;
        };
        let limit = self.config.connmaker.conn_limit;
        if limit > 0 && self.hosts[t].node.connection_count() >= limit {
            self.stats.dials_refused += 1;
            self.hosts[h].node.handle_dial_failed(
                now,
                addr,
                "connection refused: connection limit reached".into(),
            );
            self.service(h);
            return;
        }
        self.stats.connections_opened += 1;
        let (kh, kt) = (self.next_key, self.next_key + 1);
        self.next_key += 2;
        let port = self.hosts[h].next_port;
        self.hosts[h].next_port = port.checked_add(1).unwrap_or(40000);
        let (id_h, id_t) = (self.rng.random(), self.rng.random());
        let local_h = self.local_peer(h);
        let local_t = self.local_peer(t);
        let conn_h = Connection::new(local_h, true, id_h, now, self.config.conn.clone());
        let conn_t = Connection::new(local_t, false, id_t, now, self.config.conn.clone());
        self.hosts[h]
            .conns
            .insert(kh, HostConn::new(conn_h, t, kt, now));
        self.hosts[h]
            .node
            .handle_connecting(now, ConnId(kh), addr, true);
        let from = SocketAddr::new(self.hosts[h].ip, port);
        self.hosts[t]
            .conns
            .insert(kt, HostConn::new(conn_t, h, kh, now));
        self.hosts[t]
            .node
            .handle_connecting(now, ConnId(kt), from, false);
        self.touched.push(kh);
        self.service(h);
        self.touched.push(kt);
        self.service(t);
    }

    fn local_peer(&self, h: usize) -> LocalPeer {
        let host = &self.hosts[h];
        LocalPeer {
            name: host.name,
            nickname: format!("host{h}"),
            short_id: host.node.short_id(),
            uid: PeerUid(host.uid),
            data_port: DATA_PORT,
            fastdp_port: 0,
        }
    }

    /// Moves everything host `h`'s state machines want to do into the event queue: the
    /// node's actions, and the output and events of the connections in `touched` (those that
    /// got input), until nothing more happens.
    fn service(&mut self, h: usize) {
        let mut conns_changed = false;
        loop {
            let mut progress = false;
            while let Some(action) = self.hosts[h].node.poll_action() {
                progress = true;
                self.act(h, action);
            }
            let mut touched = std::mem::take(&mut self.touched);
            touched.sort_unstable();
            touched.dedup();
            conns_changed |= !touched.is_empty();
            for key in touched {
                progress |= self.service_conn(h, key);
            }
            if !progress {
                break;
            }
        }
        if conns_changed {
            let host = &mut self.hosts[h];
            host.conns_at = host
                .conns
                .values()
                .filter_map(|c| c.conn.poll_timeout())
                .min();
        }
        self.reschedule(h);
    }

    /// Carries out one of host `h`'s node's actions.
    fn act(&mut self, h: usize, action: Action) {
        let now = self.now;
        match action {
            Action::Send { conn, message } => {
                if let Some(c) = self.hosts[h].conns.get_mut(&conn.0) {
                    let _ = c.conn.send(now, &message);
                    self.touched.push(conn.0);
                }
            }
            Action::Close { conn, .. } => {
                if let Some(c) = self.hosts[h].conns.get_mut(&conn.0) {
                    c.conn.close(CloseReason::Local);
                    self.touched.push(conn.0);
                }
            }
            Action::Dial(addr) => {
                self.stats.dials += 1;
                let reachable = self
                    .by_ip
                    .get(&addr.ip())
                    .is_some_and(|&t| self.link_up(h, t));
                let at = match self.by_ip.get(&addr.ip()) {
                    Some(&t) if reachable => now + self.latency(h, t) * 2,
                    _ => now + self.config.connect_timeout,
                };
                self.schedule(at, EventKind::DialResult { host: h, addr });
            }
            // Built lazily, before the engine next forwards (a table per change is costly).
            Action::TableChanged => self.hosts[h].table_dirty = true,
            Action::Heartbeat {
                to,
                src,
                dst,
                heartbeat,
            } => {
                let datagram = weft_overlay::heartbeat_datagram(src, dst, heartbeat);
                self.send_datagram(h, to, datagram);
            }
            // Links are in the clear in the simulator; no channel but topology is registered.
            // Path MTU probing is off in the simulator (its paths carry any size).
            // The simulator's hosts have no kernel fast path (NodeConfig::fastdp is off).
            Action::SetLink { .. }
            | Action::FastPath { .. }
            | Action::FastHeartbeat { .. }
            | Action::RemoveLink { .. }
            | Action::SetPathMtu { .. }
            | Action::Gossip { .. }
            | Action::NeighbourUp(_)
            | Action::PeersChanged
            | Action::PersistShortId(_) => {}
        }
    }

    /// Handles one connection's events and output; returns whether anything happened.
    fn service_conn(&mut self, h: usize, key: u64) -> bool {
        let mut progress = false;
        loop {
            let now = self.now;
            let Some(c) = self.hosts[h].conns.get_mut(&key) else {
                return progress;
            };
            let mut out = Vec::new();
            if c.conn.poll_transmit(&mut out) {
                progress = true;
                self.stats.control_bytes += out.len() as u64;
                self.stream_send(h, key, Some(out));
                continue;
            }
            let Some(ev) = c.conn.poll_event() else {
                return progress;
            };
            progress = true;
            match ev {
                ConnEvent::Ready {
                    remote,
                    conn_uid,
                    version,
                } => {
                    self.stats.connections_ready += 1;
                    let t = c.remote_host;
                    let remote = Remote {
                        name: remote.name,
                        nickname: remote.nickname,
                        uid: remote.uid.0,
                        short_id: remote.short_id,
                        data_addr: SocketAddr::new(self.hosts[t].ip, remote.data_port),
                        fastdp_addr: None,
                        version,
                    };
                    self.hosts[h]
                        .node
                        .handle_ready(now, ConnId(key), remote, conn_uid, None);
                }
                ConnEvent::DataPathAck { conn_uid } => {
                    self.hosts[h].node.handle_ack(now, ConnId(key), conn_uid);
                }
                ConnEvent::Message(Message::Gossip { channel, payload }) => {
                    self.hosts[h]
                        .node
                        .handle_gossip(now, ConnId(key), channel, payload);
                }
                ConnEvent::Message(_) => {}
                ConnEvent::Closed(reason) => {
                    // Flush what was queued before the close, then tell the other end.
                    let mut out = Vec::new();
                    if c.conn.poll_transmit(&mut out) {
                        self.stream_send(h, key, Some(out));
                    }
                    self.stream_send(h, key, None);
                    self.conn_closed(h, key, reason);
                    return true;
                }
            }
        }
    }

    fn conn_closed(&mut self, h: usize, key: u64, reason: CloseReason) {
        self.stats.connections_closed += 1;
        let now = self.now;
        let host = &mut self.hosts[h];
        let Some(c) = host.conns.remove(&key) else {
            return;
        };
        let permanent = matches!(
            reason,
            CloseReason::ConnectToSelf | CloseReason::NameCollision { .. }
        );
        let error = if c.peer_closed {
            "connection closed by peer".to_owned()
        } else {
            reason.to_string()
        };
        host.node.handle_closed(now, ConnId(key), error, permanent);
    }

    /// Sends bytes (or a FIN, `None`) on host `h`'s end of connection `key`.
    fn stream_send(&mut self, h: usize, key: u64, chunk: Option<Vec<u8>>) {
        let Some(c) = self.hosts[h].conns.get(&key) else {
            return;
        };
        let (t, tkey) = (c.remote_host, c.remote_key);
        if !self.link_up(h, t) {
            if let Some(c) = self.hosts[h].conns.get_mut(&key) {
                c.stalled.push(chunk);
            }
            return;
        }
        let mut at = self.now + self.latency(h, t);
        while self.config.control_loss > 0.0 && self.rng.random::<f64>() < self.config.control_loss
        {
            at += RTO;
        }
        let Some(c) = self.hosts[h].conns.get_mut(&key) else {
            return;
        };
        at = at.max(c.last_arrival);
        c.last_arrival = at;
        let kind = match chunk {
            Some(data) => EventKind::Bytes {
                host: t,
                key: tkey,
                data,
            },
            None => EventKind::Fin { host: t, key: tkey },
        };
        self.schedule(at, kind);
    }

    /// The FIN of a closed connection must be sent before the `HostConn` is removed; it is
    /// looked up by key, so `stream_send` is called first (see `service_conn`).
    fn schedule(&mut self, at: Instant, kind: EventKind) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at,
            seq: self.seq,
            kind,
        }));
    }

    /// Schedules host `h`'s next wake-up from its state machines' timers.
    fn reschedule(&mut self, h: usize) {
        let host = &self.hosts[h];
        let next = [host.node.poll_timeout(), host.conns_at]
            .into_iter()
            .flatten()
            .min();
        let Some(next) = next else { return };
        // Never in the past, never busy-looping on "due now".
        let next = next.max(self.now + Duration::from_millis(1));
        if host.wake_at.is_none_or(|w| next < w || w < self.now) {
            self.hosts[h].wake_at = Some(next);
            self.schedule(next, EventKind::Wake { host: h });
        }
    }

    /// The fixed one-way latency of the link between `a` and `b`, drawn from the seed.
    fn latency(&self, a: usize, b: usize) -> Duration {
        let (lo, hi) = self.config.latency;
        let (a, b) = (a.min(b) as u64, a.max(b) as u64);
        let mut x = self.config.seed ^ (a << 32) ^ b ^ 0x5851_f42d_4c95_7f2d;
        x = (x ^ (x >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
        x = (x ^ (x >> 33)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        x ^= x >> 33;
        let span = hi.saturating_sub(lo).as_micros() as u64;
        lo + Duration::from_micros(if span == 0 { 0 } else { x % (span + 1) })
    }
}

impl HostConn {
    fn new(conn: Connection, remote_host: usize, remote_key: u64, now: Instant) -> Self {
        Self {
            conn,
            remote_host,
            remote_key,
            last_arrival: now,
            stalled: Vec::new(),
            peer_closed: false,
        }
    }
}

/// Host `i`'s peer name: `02:00:00:00:hi:lo` with (hi, lo) = i + 1.
pub fn host_name(i: usize) -> PeerName {
    let [hi, lo] = ((i + 1) as u16).to_be_bytes();
    PeerName::from_mac([0x02, 0, 0, 0, hi, lo])
}

/// Host `i`'s underlay address, `2001:db8::i+1` (documentation prefix, never on a real link).
pub fn host_ip(i: usize) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(
        0x2001,
        0x0db8,
        0,
        0,
        0,
        0,
        (((i + 1) >> 16) & 0xffff) as u16,
        ((i + 1) & 0xffff) as u16,
    ))
}

/// Host `i`'s control address.
pub fn control_addr(i: usize) -> SocketAddr {
    SocketAddr::new(host_ip(i), CONTROL_PORT)
}

/// The MAC address of host `i`'s test "container".
pub fn host_mac(i: usize) -> [u8; 6] {
    let [hi, lo] = ((i + 1) as u16).to_be_bytes();
    [0x02, 0xaa, 0, 0, hi, lo]
}
