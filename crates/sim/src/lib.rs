//! Layer: test harness. A deterministic simulator of many weft hosts in one process.
//!
//! Each simulated host runs the real sans-IO state machines: a [`Mesh`] (topology gossip and
//! routes), a [`ConnMaker`] (targets, discovery, backoff), one [`Connection`] per control
//! connection (hello, features, heartbeats, idle timeout: the real byte stream) and a forwarding
//! [`Engine`] fed with real VXLAN datagrams. What would be I/O is modelled:
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
//! - **Data path.** A connection counts as established (its UDP heartbeats acknowledged) one
//!   round trip after the handshake, once the link is up.
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
    GossipConfig, GossipStats, Instant, LocalPeer, Mesh, MeshEvent, PeerName, PeerSummary, PeerUid,
    ShortId, TOPOLOGY_CHANNEL,
};
use weft_overlay::{
    DatagramDecision, Engine, EngineConfig, ForwardingTable, PeerEntry, Relay, TapDecision,
};
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
    /// Control connections whose handshake completed (counted per end).
    pub connections_ready: u64,
    /// Control-stream bytes sent (all messages, counted per end).
    pub control_bytes: u64,
    /// Datagrams sent on the data path.
    pub datagrams_sent: u64,
    /// Datagrams lost (loss or cut link).
    pub datagrams_lost: u64,
    /// Gossip payloads refused by a mesh.
    pub gossip_errors: u64,
}

/// One end of a control connection.
struct HostConn {
    conn: Connection,
    remote_host: usize,
    /// The key of the other end's `HostConn` (at `remote_host`).
    remote_key: u64,
    /// The remote address as this end sees it.
    remote_addr: SocketAddr,
    /// When our last byte reaches the other end (keeps the stream in order).
    last_arrival: Instant,
    /// Bytes (or a FIN, as `None`) waiting for the link to heal.
    stalled: Vec<Option<Vec<u8>>>,
    /// The peer on the other end, once ready.
    peer: Option<PeerName>,
    /// Set when the other end's FIN arrived.
    peer_closed: bool,
}

/// One simulated host.
struct Host {
    name: PeerName,
    ip: IpAddr,
    uid: u64,
    mesh: Mesh,
    cm: ConnMaker,
    engine: Engine,
    table_dirty: bool,
    conns: BTreeMap<u64, HostConn>,
    /// The connection registered with the mesh for each peer (duplicates collapse to one).
    active: BTreeMap<PeerName, u64>,
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
    Established {
        host: usize,
        key: u64,
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
            let mesh = Mesh::new(local, config.gossip.clone(), rng.random(), now);
            let cm = ConnMaker::new(config.connmaker.clone(), rng.random());
            let engine = Engine::new(EngineConfig {
                local_short_id: short_id.get(),
                mac_max_age: Duration::from_secs(300),
            });
            by_ip.insert(ip, i);
            by_name.insert(name, i);
            hosts.push(Host {
                name,
                ip,
                uid,
                mesh,
                cm,
                engine,
                table_dirty: true,
                conns: BTreeMap::new(),
                active: BTreeMap::new(),
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
        };
        for h in 0..n {
            sim.reschedule(h);
        }
        sim
    }

    /// Gives host `host` direct targets (other hosts, by index).
    pub fn add_targets(&mut self, host: usize, targets: &[usize]) {
        let addrs: Vec<SocketAddr> = targets.iter().map(|&t| control_addr(t)).collect();
        self.hosts[host].cm.add_targets(self.now, &addrs);
        self.service(host);
    }

    /// Makes `targets` host `host`'s whole direct target list (`connect --replace`).
    pub fn replace_targets(&mut self, host: usize, targets: &[usize]) {
        let addrs: Vec<SocketAddr> = targets.iter().map(|&t| control_addr(t)).collect();
        self.hosts[host].cm.replace_targets(self.now, &addrs);
        self.service(host);
    }

    /// Host `host` forgets these direct targets.
    pub fn forget_targets(&mut self, host: usize, targets: &[usize]) {
        let addrs: Vec<SocketAddr> = targets.iter().map(|&t| control_addr(t)).collect();
        self.hosts[host].cm.forget_targets(&addrs);
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
        if let Some(&key) = self.hosts[a].active.get(&name) {
            if let Some(c) = self.hosts[a].conns.get_mut(&key) {
                c.conn.close(CloseReason::Local);
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
        self.stats
    }

    /// Host `h`'s mesh (topology, routes, gossip counters).
    pub fn mesh(&self, h: usize) -> &Mesh {
        &self.hosts[h].mesh
    }

    /// Host `h`'s connection maker.
    pub fn connmaker(&self, h: usize) -> &ConnMaker {
        &self.hosts[h].cm
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
            .active
            .keys()
            .filter_map(|n| self.host_of(*n))
            .collect();
        v.sort_unstable();
        v
    }

    /// Whether host `a` has a unicast route to host `b` (a next hop).
    pub fn routable(&self, a: usize, b: usize) -> bool {
        self.hosts[a]
            .mesh
            .routes()
            .next_hop(self.hosts[b].name)
            .is_some()
    }

    /// Whether every host has a route to every other host.
    pub fn all_routable(&self) -> bool {
        self.hosts
            .iter()
            .all(|h| h.mesh.routes().reachable().count() + 1 == self.hosts.len())
    }

    /// Whether every host knows every host, all hold the same record versions (views agree) and
    /// every host's routes are computed from its current view.
    pub fn views_agree(&self) -> bool {
        let n = self.hosts.len();
        let Some(first) = self.hosts.first() else {
            return true;
        };
        let reference: Vec<(PeerName, u64, u64)> = first
            .mesh
            .topology()
            .peers()
            .map(|p| (p.name, p.version, p.uid))
            .collect();
        reference.len() == n
            && self.hosts.iter().all(|h| {
                h.mesh.routes_current()
                    && h.mesh.topology().len() == n
                    && h.mesh
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
            h.mesh
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
            let s = h.mesh.stats();
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
            self.send_datagram(h, via, dgram);
        }
    }

    fn send_datagram(&mut self, from: usize, to: PeerEntry, data: Vec<u8>) {
        let Some(&t) = self.by_ip.get(&to.addr.ip()) else {
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

    /// Rebuilds host `h`'s forwarding table from its mesh routes, if they changed.
    fn refresh_table(&mut self, h: usize) {
        if !self.hosts[h].table_dirty {
            return;
        }
        let host = &self.hosts[h];
        let topo = host.mesh.topology();
        let routes = host.mesh.routes();
        let short = |n: PeerName| topo.peer(n).map(|p| p.short_id.get());
        let mut table = ForwardingTable::new(topo.local().short_id.get());
        for (nb, _) in host.mesh.neighbours() {
            if let (Some(short_id), Some(&t)) = (short(nb), self.by_name.get(&nb)) {
                table.add_neighbour(PeerEntry {
                    short_id,
                    name: nb.get(),
                    addr: SocketAddr::new(self.hosts[t].ip, DATA_PORT),
                });
            }
        }
        for p in topo.peers().filter(|p| p.name != host.name) {
            table.add_known(p.short_id.get(), p.name.get());
        }
        for d in routes.reachable() {
            if let (Some(ds), Some(hop)) = (short(d), routes.next_hop(d).and_then(short)) {
                table.set_next_hop(ds, hop);
            }
        }
        for p in topo.peers() {
            let children: Vec<u16> = routes
                .broadcast_children(p.name)
                .iter()
                .filter_map(|c| short(*c))
                .collect();
            table.set_children(p.short_id.get(), &children);
        }
        let host = &mut self.hosts[h];
        host.engine.set_table(table);
        host.table_dirty = false;
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
                if hst.mesh.poll_timeout().is_some_and(|t| t <= now) {
                    hst.mesh.handle_timeout(now);
                }
                for c in hst.conns.values_mut() {
                    if c.conn.poll_timeout().is_some_and(|t| t <= now) {
                        c.conn.handle_timeout(now);
                    }
                }
                self.service(host);
            }
            EventKind::Bytes { host, key, data } => {
                let now = self.now;
                if let Some(c) = self.hosts[host].conns.get_mut(&key) {
                    c.conn.handle_bytes(now, &data);
                    self.service(host);
                }
            }
            EventKind::Fin { host, key } => {
                if let Some(c) = self.hosts[host].conns.get_mut(&key) {
                    c.peer_closed = true;
                    c.conn.close(CloseReason::Local);
                    self.service(host);
                }
            }
            EventKind::DialResult { host, addr } => self.dial_result(host, addr),
            EventKind::Established { host, key } => {
                let Some(c) = self.hosts[host].conns.get(&key) else {
                    return;
                };
                let (remote_host, peer) = (c.remote_host, c.peer);
                let Some(peer) = peer else { return };
                if self.hosts[host].active.get(&peer) != Some(&key) {
                    return;
                }
                if self.link_up(host, remote_host) {
                    let now = self.now;
                    self.hosts[host].mesh.connection_established(now, peer);
                    self.service(host);
                } else {
                    let at = self.now + Duration::from_secs(1);
                    self.schedule(at, EventKind::Established { host, key });
                }
            }
            EventKind::Datagram { to, from, data } => self.datagram(to, from, data),
        }
    }

    fn datagram(&mut self, h: usize, from: SocketAddr, data: Vec<u8>) {
        self.refresh_table(h);
        let now = self.now;
        let decision = self.hosts[h].engine.on_datagram(&data, from, now);
        let DatagramDecision::Forward { deliver, relay } = decision else {
            return;
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
            Relay::Next(next) => self.send_datagram(h, next, data),
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
                    self.send_datagram(h, child, copy);
                }
            }
        }
    }

    fn dial_result(&mut self, h: usize, addr: SocketAddr) {
        let now = self.now;
        let target = self.by_ip.get(&addr.ip()).copied();
        let Some(t) = target.filter(|&t| self.link_up(h, t)) else {
            self.hosts[h]
                .cm
                .dial_failed(now, addr, "connection timed out".into());
            self.service(h);
            return;
        };
        let limit = self.config.connmaker.conn_limit;
        if limit > 0 && self.hosts[t].conns.len() >= limit {
            self.hosts[h].cm.dial_failed(
                now,
                addr,
                "connection refused: connection limit reached".into(),
            );
            self.service(h);
            return;
        }
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
            .insert(kh, HostConn::new(conn_h, t, kt, addr, now));
        let from = SocketAddr::new(self.hosts[h].ip, port);
        self.hosts[t]
            .conns
            .insert(kt, HostConn::new(conn_t, h, kh, from, now));
        self.service(h);
        self.service(t);
    }

    fn local_peer(&self, h: usize) -> LocalPeer {
        let host = &self.hosts[h];
        LocalPeer {
            name: host.name,
            nickname: format!("host{h}"),
            short_id: host.mesh.topology().local().short_id,
            uid: PeerUid(host.uid),
            data_port: DATA_PORT,
        }
    }

    /// Moves everything host `h`'s state machines want to do into the event queue.
    fn service(&mut self, h: usize) {
        loop {
            let mut progress = false;
            let keys: Vec<u64> = self.hosts[h].conns.keys().copied().collect();
            for key in keys {
                progress |= self.service_conn(h, key);
            }
            while let Some((to, payload)) = self.hosts[h].mesh.poll_transmit() {
                progress = true;
                let host = &mut self.hosts[h];
                if let Some(c) = host.active.get(&to).and_then(|k| host.conns.get_mut(k)) {
                    let msg = Message::Gossip {
                        channel: TOPOLOGY_CHANNEL,
                        payload,
                    };
                    let _ = c.conn.send(self.now, &msg);
                }
            }
            while let Some(ev) = self.hosts[h].mesh.poll_event() {
                progress = true;
                let now = self.now;
                let host = &mut self.hosts[h];
                match ev {
                    MeshEvent::TopologyChanged | MeshEvent::ShortIdChanged(_) => {
                        host.cm.update_from_topology(now, host.mesh.topology());
                        host.table_dirty = true;
                    }
                    MeshEvent::PeerRemoved(_) => host.table_dirty = true,
                }
            }
            let now = self.now;
            let current = self.hosts[h].conns.len();
            let dials = self.hosts[h].cm.poll_dial(now, current);
            for addr in dials {
                progress = true;
                self.stats.dials += 1;
                let reachable = self
                    .by_ip
                    .get(&addr.ip())
                    .is_some_and(|&t| self.link_up(h, t));
                let at = match self.by_ip.get(&addr.ip()) {
                    Some(&t) if reachable => self.now + self.latency(h, t) * 2,
                    _ => self.now + self.config.connect_timeout,
                };
                self.schedule(at, EventKind::DialResult { host: h, addr });
            }
            if !progress {
                break;
            }
        }
        self.reschedule(h);
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
                    remote, conn_uid, ..
                } => {
                    self.stats.connections_ready += 1;
                    self.conn_ready(
                        h,
                        key,
                        remote.name,
                        conn_uid,
                        (remote.nickname, remote.uid.0, remote.short_id),
                        now,
                    );
                }
                ConnEvent::Message(Message::Gossip { channel, payload }) => {
                    let peer = c.peer;
                    let host = &mut self.hosts[h];
                    if let Some(peer) = peer.filter(|p| host.active.get(p) == Some(&key)) {
                        if channel == TOPOLOGY_CHANNEL
                            && host.mesh.handle_gossip(now, peer, &payload).is_err()
                        {
                            self.stats.gossip_errors += 1;
                        }
                    }
                }
                ConnEvent::Message(_) | ConnEvent::DataPathAck { .. } => {}
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

    fn conn_ready(
        &mut self,
        h: usize,
        key: u64,
        peer: PeerName,
        conn_uid: u64,
        hint: (String, u64, ShortId),
        now: Instant,
    ) {
        let host = &mut self.hosts[h];
        let Some(c) = host.conns.get_mut(&key) else {
            return;
        };
        c.peer = Some(peer);
        let (remote_addr, remote_host, outbound) =
            (c.remote_addr, c.remote_host, c.conn.is_outbound());
        if let Some(&old) = host.active.get(&peer) {
            // Duplicate connection to the same peer: keep the smaller connection uid; both ends
            // see the same two uids, so they agree on the survivor.
            let old_uid = host
                .conns
                .get(&old)
                .and_then(|c| c.conn.conn_uid())
                .unwrap_or(u64::MAX);
            if old_uid <= conn_uid {
                if let Some(c) = host.conns.get_mut(&key) {
                    c.conn.close(CloseReason::Local);
                }
                return;
            }
            host.active.insert(peer, key);
            if let Some(c) = host.conns.get_mut(&old) {
                c.conn.close(CloseReason::Local);
            }
        } else {
            host.active.insert(peer, key);
        }
        host.cm.connected(remote_addr, peer);
        host.mesh
            .connection_up(now, peer, hint, remote_addr.to_string(), outbound);
        host.table_dirty = true;
        let at = now + self.latency(h, remote_host) * 2;
        self.schedule(at, EventKind::Established { host: h, key });
    }

    fn conn_closed(&mut self, h: usize, key: u64, reason: CloseReason) {
        let now = self.now;
        let host = &mut self.hosts[h];
        let Some(c) = host.conns.remove(&key) else {
            return;
        };
        if let Some(peer) = c.peer {
            if host.active.get(&peer) == Some(&key) {
                host.active.remove(&peer);
                host.mesh.connection_down(now, peer);
                host.table_dirty = true;
            }
        }
        let permanent = matches!(
            reason,
            CloseReason::ConnectToSelf | CloseReason::NameCollision { .. }
        );
        let error = if c.peer_closed {
            "connection closed by peer".to_owned()
        } else {
            reason.to_string()
        };
        if c.peer.is_some() {
            host.cm
                .disconnected(now, c.remote_addr, Some(error), permanent);
        } else if c.conn.is_outbound() {
            // Never got past the handshake: a failed dial.
            if permanent {
                host.cm.disconnected(now, c.remote_addr, Some(error), true);
            } else {
                host.cm.dial_failed(now, c.remote_addr, error);
            }
        }
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
        let mut next = host.mesh.poll_timeout();
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n: Instant| n.min(t)));
            }
        };
        consider(host.cm.poll_timeout());
        for c in host.conns.values() {
            consider(c.conn.poll_timeout());
        }
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
    fn new(
        conn: Connection,
        remote_host: usize,
        remote_key: u64,
        remote_addr: SocketAddr,
        now: Instant,
    ) -> Self {
        Self {
            conn,
            remote_host,
            remote_key,
            remote_addr,
            last_arrival: now,
            stalled: Vec::new(),
            peer: None,
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
