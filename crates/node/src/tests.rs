//! Unit tests of [`Node`]: a few nodes wired together in memory (control messages and
//! heartbeats delivered at once, unless a link is blocked or a heartbeat is lost).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use weft_mesh::{Instant, PeerName, PeerSummary, ShortId, TOPOLOGY_CHANNEL};
use weft_wire::control::Message;

use super::*;

fn name(i: usize) -> PeerName {
    PeerName::from_mac([2, 0, 0, 0, 0, i as u8 + 1])
}

fn ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, i as u8 + 1))
}

fn remote(i: usize) -> Remote {
    Remote {
        name: name(i),
        nickname: format!("n{i}"),
        uid: 100 + i as u64,
        short_id: ShortId::from_masked(10 + i as u16),
        data_addr: SocketAddr::new(ip(i), 6783),
        fastdp_addr: Some(SocketAddr::new(ip(i), 6784)),
        version: weft_wire::control::PROTOCOL_MAX,
    }
}

fn node(i: usize, now: Instant) -> Node {
    let local = PeerSummary {
        name: name(i),
        nickname: format!("n{i}"),
        uid: 100 + i as u64,
        version: 1,
        short_id: ShortId::from_masked(10 + i as u16),
        connections: Vec::new(),
    };
    Node::new(local, NodeConfig::default(), i as u64 + 7, now)
}

/// One control connection: (node, its id there) at each end.
#[derive(Clone, Copy)]
struct Link {
    ends: [(usize, ConnId); 2],
    open: bool,
}

/// Nodes wired in memory. Deterministic: loss is drawn from a fixed-seed generator.
struct Net {
    now: Instant,
    nodes: Vec<Node>,
    links: Vec<Link>,
    /// Pairs whose heartbeats (the data path) do not get through.
    blocked: HashSet<(usize, usize)>,
    /// Probability a heartbeat is lost.
    loss: f64,
    /// Pairs whose path carries frames of at most this many bytes.
    max_frame: HashMap<(usize, usize), usize>,
    /// Per node: how many of its next probes of this many bytes are lost, (bytes, count).
    lose_probes: HashMap<usize, (usize, usize)>,
    /// Pairs whose kernel fast path carries nothing.
    fast_blocked: HashSet<(usize, usize)>,
    /// Pairs whose kernel fast path carries frames of at most this many bytes.
    fast_max_frame: HashMap<(usize, usize), usize>,
    rng: u64,
    next_id: u64,
    /// Actions of kinds the tests look at, per node.
    log: Vec<Vec<String>>,
    tables: Vec<Option<ForwardingTable>>,
}

impl Net {
    fn new(n: usize) -> Self {
        let now = Instant::ZERO;
        Self {
            now,
            nodes: (0..n).map(|i| node(i, now)).collect(),
            links: Vec::new(),
            blocked: HashSet::new(),
            loss: 0.0,
            max_frame: HashMap::new(),
            lose_probes: HashMap::new(),
            fast_blocked: HashSet::new(),
            fast_max_frame: HashMap::new(),
            rng: 0x9e37_79b9_7f4a_7c15,
            next_id: 1,
            log: vec![Vec::new(); n],
            tables: vec![None; n],
        }
    }

    fn random(&mut self) -> f64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Gives every node `config` (before any connection).
    fn configure(&mut self, config: &NodeConfig) {
        let now = self.now;
        for (i, n) in self.nodes.iter_mut().enumerate() {
            let local = n.mesh().topology().local().clone();
            *n = Node::new(local, config.clone(), i as u64 + 7, now);
        }
    }

    /// Opens a connection from `a` to `b` (both ends register it); returns its index.
    fn open(&mut self, a: usize, b: usize) -> usize {
        let (ia, ib) = (ConnId(self.next_id), ConnId(self.next_id + 1));
        self.next_id += 2;
        let now = self.now;
        let addr_b = SocketAddr::new(ip(b), 6783);
        let addr_a = SocketAddr::new(ip(a), 40000 + self.next_id as u16);
        self.nodes[a].handle_connecting(now, ia, addr_b, true);
        self.nodes[b].handle_connecting(now, ib, addr_a, false);
        self.links.push(Link {
            ends: [(a, ia), (b, ib)],
            open: true,
        });
        self.links.len() - 1
    }

    /// The handshake of connection `link` completes at end `end` (0: dialler).
    fn ready(&mut self, link: usize, end: usize, conn_uid: u64) {
        let (here, id) = self.links[link].ends[end];
        let (there, _) = self.links[link].ends[1 - end];
        let now = self.now;
        self.nodes[here].handle_ready(now, id, remote(there), conn_uid, None);
        self.pump();
    }

    fn connect(&mut self, a: usize, b: usize, conn_uid: u64) -> usize {
        let l = self.open(a, b);
        self.ready(l, 0, conn_uid);
        self.ready(l, 1, conn_uid);
        l
    }

    fn other_end(&self, node: usize, id: ConnId) -> Option<(usize, ConnId)> {
        self.links.iter().filter(|l| l.open).find_map(|l| {
            if l.ends[0] == (node, id) {
                Some(l.ends[1])
            } else if l.ends[1] == (node, id) {
                Some(l.ends[0])
            } else {
                None
            }
        })
    }

    /// Carries out every queued action until nothing is left.
    fn pump(&mut self) {
        let now = self.now;
        loop {
            let mut progress = false;
            for h in 0..self.nodes.len() {
                while let Some(action) = self.nodes[h].poll_action() {
                    progress = true;
                    self.act(h, action, now);
                }
            }
            if !progress {
                break;
            }
        }
    }

    fn act(&mut self, h: usize, action: Action, now: Instant) {
        match action {
            Action::Send { conn, message } => {
                let Some((t, tid)) = self.other_end(h, conn) else {
                    return;
                };
                match message {
                    Message::Gossip { channel, payload } => {
                        self.nodes[t].handle_gossip(now, tid, channel, payload);
                    }
                    Message::DataPathAck { conn_uid } => {
                        self.log[h].push(format!("ack {conn_uid}"));
                        self.nodes[t].handle_ack(now, tid, conn_uid);
                    }
                    _ => {}
                }
            }
            Action::Close { conn, reason } => {
                self.log[h].push(format!("close {}", conn.0));
                let other = self.other_end(h, conn);
                self.nodes[h].handle_closed(now, conn, reason.into(), false);
                if let Some((t, tid)) = other {
                    self.nodes[t].handle_closed(now, tid, "closed by peer".into(), false);
                }
                for l in &mut self.links {
                    if l.ends[0] == (h, conn) || l.ends[1] == (h, conn) {
                        l.open = false;
                    }
                }
            }
            Action::Heartbeat { to, heartbeat, .. } => {
                let Some(t) = (0..self.nodes.len()).find(|&t| ip(t) == to.ip()) else {
                    return;
                };
                let mut lost = self.loss > 0.0 && self.random() < self.loss;
                if let Some((len, n)) = self.lose_probes.get_mut(&h) {
                    if *n > 0 && heartbeat.probe.is_some() && heartbeat.frame_len() == *len {
                        *n -= 1;
                        lost = true;
                    }
                }
                let pair = (h.min(t), h.max(t));
                let too_big = self
                    .max_frame
                    .get(&pair)
                    .is_some_and(|&m| heartbeat.frame_len() > m);
                if !lost && !too_big && !self.blocked.contains(&pair) {
                    self.nodes[t].handle_heartbeat(now, heartbeat);
                }
            }
            Action::FastHeartbeat { peer, heartbeat } => {
                let Some(t) = (0..self.nodes.len()).find(|&t| name(t) == peer) else {
                    return;
                };
                let lost = self.loss > 0.0 && self.random() < self.loss;
                let pair = (h.min(t), h.max(t));
                let too_big = self
                    .fast_max_frame
                    .get(&pair)
                    .is_some_and(|&m| heartbeat.frame_len() > m);
                if !lost && !too_big && !self.fast_blocked.contains(&pair) {
                    self.nodes[t].handle_fast_heartbeat(now, name(h), heartbeat);
                }
            }
            Action::FastPath {
                remote, mode, addr, ..
            } => self.log[h].push(format!("fast {remote} {} {mode:?}", addr.port())),
            Action::SetLink { conn_uid, .. } => self.log[h].push(format!("link {conn_uid}")),
            Action::RemoveLink { conn_uid, .. } => {
                self.log[h].push(format!("unlink {conn_uid}"));
            }
            Action::SetPathMtu { max_frame, .. } => {
                self.log[h].push(format!("pmtu {max_frame:?}"));
            }
            Action::TableChanged => self.tables[h] = Some(self.nodes[h].forwarding_table()),
            Action::Gossip {
                channel, payload, ..
            } => self.log[h].push(format!("gossip {channel} {payload:?}")),
            Action::Dial(_)
            | Action::NeighbourUp(_)
            | Action::PeersChanged
            | Action::PersistShortId(_) => {}
        }
    }

    /// Runs every node's timers for `d` of virtual time, in 10 ms steps.
    fn run(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.now += Duration::from_millis(10);
            let now = self.now;
            for n in &mut self.nodes {
                if n.poll_timeout().is_some_and(|t| t <= now) {
                    n.handle_timeout(now);
                }
            }
            self.pump();
        }
    }

    /// Runs until `pred` holds (checked every 10 ms); the time it took.
    fn run_until(&mut self, max: Duration, pred: impl Fn(&Self) -> bool) -> Option<Duration> {
        let start = self.now;
        while self.now.saturating_duration_since(start) < max {
            if pred(self) {
                return Some(self.now.saturating_duration_since(start));
            }
            self.run(Duration::from_millis(10));
        }
        None
    }

    fn carrier_uid(&self, h: usize, peer: usize) -> Option<u64> {
        self.nodes[h]
            .connections()
            .find(|c| c.carrier && c.remote.is_some_and(|r| r.name == name(peer)))
            .and_then(|c| c.conn_uid)
    }

    fn state(&self, h: usize, peer: usize) -> Option<ConnState> {
        self.nodes[h]
            .connections()
            .find(|c| c.carrier && c.remote.is_some_and(|r| r.name == name(peer)))
            .map(|c| c.state)
    }

    /// The short id of the next hop `h`'s data path uses for `dest`.
    fn next_hop(&self, h: usize, dest: usize) -> Option<u16> {
        let table = self.tables[h].as_ref()?;
        table.next_hop(10 + dest as u16).map(|p| p.short_id)
    }

    fn established_in_mesh(&self, h: usize, peer: usize) -> bool {
        self.nodes[h]
            .mesh()
            .neighbours()
            .any(|(n, est)| n == name(peer) && est)
    }
}

#[test]
fn duplicate_connections_from_both_ends_keep_exactly_one() {
    // Both ends dial at once: connection 0 (0 -> 1, uid 5) and connection 1 (1 -> 0, uid 3).
    // Each end sees the two become ready in the opposite order.
    let mut net = Net::new(2);
    let c0 = net.open(0, 1);
    let c1 = net.open(1, 0);
    // All four handshakes complete before either end hears of the other's close.
    let ready = |net: &mut Net, link: usize, end: usize, uid: u64| {
        let (here, id) = net.links[link].ends[end];
        let there = net.links[link].ends[1 - end].0;
        let now = net.now;
        net.nodes[here].handle_ready(now, id, remote(there), uid, None);
    };
    ready(&mut net, c0, 0, 5); // node 0: uid 5 first ...
    ready(&mut net, c1, 0, 3); // node 1: uid 3 first ...
    ready(&mut net, c1, 1, 3); // node 0: ... then uid 3: replaces 5
    ready(&mut net, c0, 1, 5); // node 1: ... then uid 5: refused
    net.pump();
    net.run(Duration::from_secs(2));
    for (h, peer) in [(0, 1), (1, 0)] {
        let ready: Vec<_> = net.nodes[h]
            .connections()
            .filter(|c| c.remote.is_some())
            .collect();
        assert_eq!(ready.len(), 1, "node {h} keeps one connection");
        assert_eq!(net.carrier_uid(h, peer), Some(3), "node {h} keeps uid 3");
        assert_eq!(net.nodes[h].neighbours(), vec![name(peer)]);
        assert_eq!(net.state(h, peer), Some(ConnState::Established));
    }
    let open: Vec<bool> = net.links.iter().map(|l| l.open).collect();
    assert_eq!(
        open,
        vec![false, true],
        "exactly one connection (uid 3) survives"
    );
    assert_eq!(net.nodes[0].stats().duplicates, 1);
    assert_eq!(net.nodes[1].stats().duplicates, 1);
}

#[test]
fn handover_on_close_keeps_the_peer() {
    let mut net = Net::new(2);
    // Node 0 has two ready connections to 1 at once: uid 9 carries, uid 4 replaces it, and
    // the carrier (uid 4) breaks before uid 9 finished closing.
    let c9 = net.open(0, 1);
    let c4 = net.open(0, 1);
    let (_, id9) = net.links[c9].ends[0];
    let (_, id4) = net.links[c4].ends[0];
    let now = net.now;
    net.nodes[0].handle_ready(now, id9, remote(1), 9, None);
    net.nodes[0].handle_ready(now, id4, remote(1), 4, None);
    // Not pumped yet: the close of uid 9 is queued. The carrier goes first.
    assert_eq!(net.carrier_uid(0, 1), Some(4));
    net.nodes[0].handle_closed(now, id4, "connection reset".into(), false);
    let mut actions = Vec::new();
    while let Some(a) = net.nodes[0].poll_action() {
        actions.push(a);
    }
    assert_eq!(net.carrier_uid(0, 1), Some(9), "peer handed to uid 9");
    assert_eq!(net.nodes[0].neighbours(), vec![name(1)]);
    assert!(net.nodes[0].mesh().neighbours().any(|(n, _)| n == name(1)));
    // Its keys were installed again after the carrier's were removed.
    let removed = actions
        .iter()
        .position(|a| matches!(a, Action::RemoveLink { conn_uid: 4, .. }));
    let installed = actions
        .iter()
        .rposition(|a| matches!(a, Action::SetLink { conn_uid: 9, .. }));
    assert!(removed.is_some() && installed > removed, "{actions:?}");
    // And the data path still knows the neighbour.
    assert!(actions.iter().any(|a| matches!(a, Action::TableChanged)));
    assert!(net.nodes[0].forwarding_table().neighbour(11).is_some());
    assert_eq!(net.nodes[0].stats().handovers, 1);
    // Without another connection, closing the carrier removes the peer.
    net.nodes[0].handle_closed(now, id9, "connection reset".into(), false);
    assert!(net.nodes[0].neighbours().is_empty());
    assert!(net.nodes[0].mesh().neighbours().next().is_none());
}

#[test]
fn established_only_after_heartbeat_and_ack() {
    let mut net = Net::new(2);
    // Heartbeats from 1 to 0 do not get through yet.
    net.blocked.insert((0, 1));
    let c = net.open(0, 1);
    net.ready(c, 0, 7);
    net.ready(c, 1, 7);
    net.run(Duration::from_secs(2));
    assert_eq!(net.state(0, 1), Some(ConnState::Pending));
    assert_eq!(net.state(1, 0), Some(ConnState::Pending));
    assert!(!net.established_in_mesh(0, 1));
    assert!(net.log[0].iter().all(|l| !l.starts_with("ack")));
    // The data path works: each end gets a heartbeat (and acknowledges it), then the ack.
    net.blocked.clear();
    let t = net.run_until(Duration::from_secs(2), |n| {
        n.state(0, 1) == Some(ConnState::Established)
            && n.state(1, 0) == Some(ConnState::Established)
    });
    assert!(t.is_some());
    assert!(net.log[0].contains(&"ack 7".to_owned()));
    assert!(net.log[1].contains(&"ack 7".to_owned()));
    assert!(net.established_in_mesh(0, 1) && net.established_in_mesh(1, 0));

    // Heartbeats one way only: the end that hears nothing never acknowledges, so neither end
    // is established.
    let mut one_way = Net::new(2);
    // Heartbeats are injected by hand below.
    one_way.blocked.insert((0, 1));
    let c = one_way.open(0, 1);
    one_way.ready(c, 0, 8);
    one_way.ready(c, 1, 8);
    let (_, id0) = one_way.links[c].ends[0];
    let now = one_way.now;
    one_way.nodes[0].handle_heartbeat(
        now,
        Heartbeat {
            conn_uid: 8,
            sender: name(1).get(),
            probe: None,
        },
    );
    let acked = std::iter::from_fn(|| one_way.nodes[0].poll_action()).any(|a| {
        matches!(a, Action::Send { conn, message: Message::DataPathAck { conn_uid: 8 } } if conn == id0)
    });
    assert!(acked, "a heartbeat is acknowledged on its connection");
    assert_eq!(one_way.state(0, 1), Some(ConnState::Pending));
    // An ack alone (no heartbeat heard) does not establish either.
    let (_, id1) = one_way.links[c].ends[1];
    one_way.nodes[1].handle_ack(now, id1, 8);
    assert_eq!(one_way.state(1, 0), Some(ConnState::Pending));
    // A heartbeat for another connection UID, or naming another sender, counts for nothing.
    one_way.nodes[1].handle_heartbeat(
        now,
        Heartbeat {
            conn_uid: 99,
            sender: name(0).get(),
            probe: None,
        },
    );
    one_way.nodes[1].handle_heartbeat(
        now,
        Heartbeat {
            conn_uid: 8,
            sender: name(1).get(),
            probe: None,
        },
    );
    assert_eq!(one_way.nodes[1].stats().stray_heartbeats, 2);
    assert_eq!(one_way.state(1, 0), Some(ConnState::Pending));
}

/// A, B, C fully connected and established.
fn triangle() -> Net {
    let mut net = Net::new(3);
    net.connect(0, 1, 1);
    net.connect(1, 2, 2);
    net.connect(0, 2, 3);
    let t = net.run_until(Duration::from_secs(5), |n| {
        n.next_hop(0, 2) == Some(12) && n.next_hop(2, 0) == Some(10)
    });
    assert!(t.is_some(), "triangle did not converge");
    net
}

#[test]
fn heartbeat_loss_takes_the_path_down_and_back() {
    let mut net = triangle();
    // The data path between 0 and 2 breaks (the control connection stays up).
    net.blocked.insert((0, 2));
    let down = net.run_until(Duration::from_secs(10), |n| {
        n.next_hop(0, 2) == Some(11) && n.next_hop(2, 0) == Some(11)
    });
    let down = down.expect("no reroute through 1");
    // Down after `down_after` (2 s) of silence, not before: hysteresis.
    assert!(down <= Duration::from_secs(3), "rerouted after {down:?}");
    assert!(down >= Duration::from_secs(2), "rerouted early: {down:?}");
    assert_eq!(net.nodes[0].stats().paths_down, 1);
    // The control connection is still there; the mesh no longer offers the link.
    assert_eq!(net.nodes[0].neighbours(), vec![name(1), name(2)]);
    assert!(!net.nodes[0].mesh().neighbours().any(|(n, _)| n == name(2)));
    let path = net.nodes[1].mesh().routes().path(name(2));
    assert_eq!(path.map(|p| p.len()), Some(1), "1 still reaches 2 directly");
    // Heartbeats return: the direct path is used again.
    net.blocked.clear();
    let up = net.run_until(Duration::from_secs(10), |n| {
        n.next_hop(0, 2) == Some(12) && n.next_hop(2, 0) == Some(10)
    });
    let up = up.expect("never back on the direct path");
    assert!(up <= Duration::from_secs(3), "back after {up:?}");
    assert_eq!(net.nodes[0].stats().paths_up, 1);
}

#[test]
fn five_percent_heartbeat_loss_never_flaps() {
    let mut net = triangle();
    net.loss = 0.05;
    net.run(Duration::from_secs(120));
    for h in 0..3 {
        let s = net.nodes[h].stats();
        assert_eq!((s.paths_down, s.paths_up), (0, 0), "node {h} flapped");
    }
    assert_eq!(net.next_hop(0, 2), Some(12));
    // The same run with the paths cut for good does go down (the test can fail).
    net.blocked.insert((0, 2));
    net.run(Duration::from_secs(5));
    assert_eq!(net.nodes[0].stats().paths_down, 1);
}

#[test]
fn gossip_goes_to_registered_channels_only() {
    let mut net = Net::new(2);
    net.connect(0, 1, 1);
    net.nodes[1].register_channel(3);
    assert!(net.nodes[0].send_gossip(3, name(1), b"ipam".to_vec()));
    assert!(net.nodes[0].send_gossip(4, name(1), b"nobody".to_vec()));
    assert!(!net.nodes[0].send_gossip(3, name(5), b"not a neighbour".to_vec()));
    net.pump();
    let gossip: Vec<&String> = net.log[1]
        .iter()
        .filter(|l| l.starts_with("gossip"))
        .collect();
    assert_eq!(gossip, vec![&format!("gossip 3 {:?}", b"ipam".to_vec())]);
    assert_eq!(net.nodes[1].stats().unknown_channel, 1);
    // Topology gossip is the node's own: never handed out, and garbage is counted.
    let (_, id) = net.links[0].ends[1];
    let now = net.now;
    net.nodes[1].handle_gossip(now, id, TOPOLOGY_CHANNEL, vec![0xff, 0xff, 0xff]);
    net.pump();
    assert_eq!(net.nodes[1].stats().gossip_errors, 1);
    assert!(!net.log[1].iter().any(|l| l.starts_with("gossip 0")));
    // Registering the topology channel does not take it away from the mesh.
    net.nodes[1].register_channel(TOPOLOGY_CHANNEL);
    net.nodes[1].handle_gossip(now, id, TOPOLOGY_CHANNEL, vec![0xff]);
    net.pump();
    assert_eq!(net.nodes[1].stats().gossip_errors, 2);
}

/// Two nodes probing their path up to 1390-byte frames (MTU 1376).
fn probing_pair() -> Net {
    let mut net = Net::new(2);
    net.configure(&NodeConfig {
        pmtu_max_frame: 1390,
        ..NodeConfig::default()
    });
    net.connect(0, 1, 5);
    net
}

fn path_mtu(net: &Net, h: usize) -> Option<u16> {
    net.nodes[h].connections().find_map(|c| c.path_mtu)
}

#[test]
fn path_mtu_is_found_by_probing_and_follows_the_path() {
    let mut net = probing_pair();
    // A full-size path: found, and nothing installed (no limit).
    let t = net.run_until(Duration::from_secs(5), |n| path_mtu(n, 0) == Some(1376));
    assert!(
        t.is_some(),
        "full path MTU not found: {:?}",
        path_mtu(&net, 0)
    );
    assert!(net.log[0].iter().all(|l| !l.starts_with("pmtu")));

    // The underlay now carries only 700-byte IP packets: 663-byte inner frames (700 less IP,
    // UDP and VXLAN headers). Within one re-probe period plus a few rounds, both ends know
    // it to within 8 bytes and told their data path.
    net.max_frame.insert((0, 1), 663);
    let t = net.run_until(Duration::from_secs(12), |n| {
        (0..2).all(|h| path_mtu(n, h).is_some_and(|m| (641..=649).contains(&m)))
    });
    assert!(
        t.is_some(),
        "reduced MTU not found: {:?}",
        path_mtu(&net, 0)
    );
    let installed = net.log[0]
        .iter()
        .rev()
        .find(|l| l.starts_with("pmtu"))
        .cloned();
    let want = format!("pmtu Some({})", path_mtu(&net, 0).unwrap() + 14);
    assert_eq!(installed, Some(want));
    // The connection never went down for it: small heartbeats kept flowing.
    assert_eq!(net.nodes[0].stats().paths_down, 0);

    // Settled: probing costs a round per period, and the estimate does not wander.
    let before = path_mtu(&net, 0);
    net.run(Duration::from_secs(20));
    assert_eq!(path_mtu(&net, 0), before);

    // The limit is lifted: the full size is used again, and the data path told so.
    net.max_frame.clear();
    let t = net.run_until(Duration::from_secs(12), |n| {
        (0..2).all(|h| path_mtu(n, h) == Some(1376))
    });
    assert!(
        t.is_some(),
        "full MTU not restored: {:?}",
        path_mtu(&net, 0)
    );
    assert_eq!(
        net.log[0].iter().rev().find(|l| l.starts_with("pmtu")),
        Some(&"pmtu None".to_owned())
    );

    // A path that loses everything (down) teaches nothing: the estimate stays.
    net.blocked.insert((0, 1));
    net.run(Duration::from_secs(8));
    assert_eq!(path_mtu(&net, 0), Some(1376));
}

#[test]
fn random_loss_never_shrinks_the_path_mtu() {
    let mut net = probing_pair();
    let t = net.run_until(Duration::from_secs(5), |n| {
        (0..2).all(|h| path_mtu(n, h) == Some(1376))
    });
    assert!(t.is_some());
    // Five minutes of 5 % loss on every heartbeat and probe: some probes are lost, yet no
    // smaller path MTU is ever handed to the data path.
    net.loss = 0.05;
    net.run(Duration::from_secs(300));
    for h in 0..2 {
        assert!(
            net.log[h].iter().all(|l| !l.starts_with("pmtu")),
            "node {h}: {:?}",
            net.log[h]
                .iter()
                .filter(|l| l.starts_with("pmtu"))
                .collect::<Vec<_>>()
        );
        assert_eq!(path_mtu(&net, h), Some(1376));
    }
}

#[test]
fn one_round_losing_the_full_size_shrinks_nothing() {
    // The full-size probes of one re-probe round are both lost (bad luck under loss; the path
    // is as good as ever). The next rounds find everything up to one byte below the full size
    // working; believing that would make every container lower its path MTU for ten minutes.
    let mut net = probing_pair();
    let t = net.run_until(Duration::from_secs(5), |n| {
        (0..2).all(|h| path_mtu(n, h) == Some(1376))
    });
    assert!(t.is_some());
    net.lose_probes.insert(0, (1390, 2));
    net.run(Duration::from_secs(10));
    assert_eq!(net.lose_probes[&0].1, 0, "the full size was probed");
    assert!(
        net.log[0].iter().all(|l| !l.starts_with("pmtu")),
        "{:?}",
        net.log[0]
            .iter()
            .filter(|l| l.starts_with("pmtu"))
            .collect::<Vec<_>>()
    );
    assert_eq!(path_mtu(&net, 0), Some(1376));
}

/// Two nodes with fast paths (overlay frames of 1390 bytes), connected.
fn fast_pair() -> Net {
    let mut net = Net::new(2);
    net.configure(&fast_config());
    net.connect(0, 1, 5);
    net
}

/// Fast paths on, overlay frames of 1390 bytes.
fn fast_config() -> NodeConfig {
    NodeConfig {
        pmtu_max_frame: 1390,
        fastdp: true,
        ..NodeConfig::default()
    }
}

fn fastdp(net: &Net, h: usize) -> (bool, Option<&'static str>) {
    let c = net.nodes[h].connections().find(|c| c.carrier).unwrap();
    (c.fastdp, c.fastdp_reason)
}

fn table_fastdp(net: &Net, h: usize, peer: usize) -> bool {
    net.tables[h]
        .as_ref()
        .is_some_and(|t| t.fastdp(10 + peer as u16))
}

#[test]
fn traffic_moves_onto_the_fast_path_and_off_it_when_its_heartbeats_stop() {
    let mut net = fast_pair();
    // Probing first, with the device set up to carry probes only.
    assert_eq!(fastdp(&net, 0), (false, Some(FAST_PROBING)));
    assert!(
        net.log[0].contains(&"fast 11 6784 Probe".to_owned()),
        "{:?}",
        net.log[0]
    );
    let up = net.run_until(Duration::from_secs(3), |n| {
        fastdp(n, 0).0 && fastdp(n, 1).0 && table_fastdp(n, 0, 1) && table_fastdp(n, 1, 0)
    });
    let up = up.expect("both ends on the fast path");
    assert!(up <= Duration::from_secs(1), "took {up:?}");
    assert!(net.log[0].contains(&"fast 11 6784 Use".to_owned()));
    assert_eq!(fastdp(&net, 1), (true, None));
    // The fast path's port is blocked: both ends fall back; the userspace path stays up.
    net.fast_blocked.insert((0, 1));
    let down = net.run_until(Duration::from_secs(5), |n| {
        !fastdp(n, 0).0 && !fastdp(n, 1).0 && !table_fastdp(n, 0, 1) && !table_fastdp(n, 1, 0)
    });
    let down = down.expect("back on sleeve");
    assert!(
        down >= Duration::from_millis(1700) && down <= Duration::from_millis(2700),
        "fell back after {down:?} (down_after is 2 s)"
    );
    assert_eq!(fastdp(&net, 0), (false, Some(FAST_PROBING)));
    // Still nothing after another down_after (and a tick): it says what it knows.
    net.run(Duration::from_millis(2400));
    assert_eq!(fastdp(&net, 0), (false, Some(FAST_SILENT)));
    assert_eq!(
        net.log[0].last().map(String::as_str),
        Some("fast 11 6784 Probe")
    );
    assert_eq!(net.state(0, 1), Some(ConnState::Established));
    assert!(net.nodes[0].connections().all(|c| c.path_up));
    // Unblocked: probing brings it back by itself.
    net.fast_blocked.clear();
    let back = net.run_until(Duration::from_secs(3), |n| fastdp(n, 0).0 && fastdp(n, 1).0);
    assert!(back.expect("back on fastdp") <= Duration::from_secs(1));
    assert_eq!(net.nodes[0].stats().fastdp_up, 2);
    assert_eq!(net.nodes[0].stats().fastdp_down, 1);
}

#[test]
fn a_path_smaller_than_the_mtu_keeps_traffic_on_sleeve() {
    let mut net = Net::new(2);
    net.fast_max_frame.insert((0, 1), 1389);
    net.configure(&fast_config());
    net.connect(0, 1, 5);
    net.run(Duration::from_secs(5));
    assert_eq!(fastdp(&net, 0), (false, Some(FAST_TOO_SMALL)));
    assert!(!table_fastdp(&net, 0, 1));
    assert_eq!(net.state(0, 1), Some(ConnState::Established));
}

#[test]
fn five_percent_loss_never_moves_traffic_off_the_fast_path() {
    let mut net = fast_pair();
    net.run(Duration::from_secs(2));
    assert!(fastdp(&net, 0).0);
    net.loss = 0.05;
    net.run(Duration::from_secs(120));
    assert_eq!(net.nodes[0].stats().fastdp_down, 0);
    assert_eq!(net.nodes[1].stats().fastdp_down, 0);
}

#[test]
fn who_may_not_use_the_fast_path_says_why() {
    // Off here (the default configuration): no fast-path action at all.
    let mut net = Net::new(2);
    net.connect(0, 1, 5);
    net.run(Duration::from_secs(2));
    assert_eq!(fastdp(&net, 0), (false, Some("fastdp: off here")));
    assert!(!net.log[0].iter().any(|l| l.starts_with("fast")));
    // A peer without one, and an encrypted connection.
    let mut net = fast_pair();
    let l = net.open(0, 1);
    let (here, id) = net.links[l].ends[0];
    let mut bare = remote(1);
    bare.fastdp_addr = None;
    let now = net.now;
    net.nodes[here].handle_closed(now, net.links[0].ends[0].1, "test".into(), false);
    net.nodes[here].handle_ready(now, id, bare, 9, None);
    net.pump();
    assert_eq!(fastdp(&net, 0), (false, Some("fastdp: the peer has none")));
    let keys = DataKeys::from_raw(weft_crypto::Cipher::ChaCha20Poly1305, [1; 32], [2; 32]);
    let l = net.open(0, 1);
    let (_, id) = net.links[l].ends[0];
    let now = net.now;
    net.nodes[0].handle_closed(now, net.links[1].ends[0].1, "test".into(), false);
    net.nodes[0].handle_ready(now, id, remote(1), 11, Some(keys));
    net.pump();
    assert_eq!(
        fastdp(&net, 0),
        (false, Some("fastdp: encrypted connection"))
    );
}

#[test]
fn closing_the_connection_removes_its_fast_path() {
    let mut net = fast_pair();
    net.run(Duration::from_secs(2));
    assert!(fastdp(&net, 0).0);
    let (h, id) = net.links[0].ends[0];
    net.act(
        h,
        Action::Close {
            conn: id,
            reason: "test",
        },
        net.now,
    );
    net.pump();
    let at = |h: usize, what: &str| net.log[h].iter().position(|l| l == what);
    // Removed before the link's keys go (nothing is sent through it in the meantime).
    assert!(
        at(0, "fast 11 6784 Off") < at(0, "unlink 5"),
        "{:?}",
        net.log[0]
    );
    assert!(at(0, "fast 11 6784 Off").is_some());
    assert_eq!(net.log[1].iter().filter(|l| l.ends_with("Off")).count(), 1);
}
