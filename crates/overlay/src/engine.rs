//! Layer: pure logic. Forwarding decisions for frames from the local bridge and datagrams from
//! peers, after Weave's overlay router: learn source MACs, send unicast frames toward the peer
//! that owns the destination (relayed hop by hop through peers in between), and flood broadcast,
//! multicast and unknown destinations along the source's broadcast tree, so that every peer
//! receives a flood exactly once when the peers' views of the topology agree.
//!
//! The VXLAN VNI of every datagram names the peer that captured the frame (source) and the peer it
//! is for (destination). A peer that is not the destination relays the datagram unchanged toward
//! the destination without looking at MACs; a flooded copy is addressed to the next peer in the
//! source's tree, which delivers it and passes it on to its own children.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::time::Duration;

use weft_crypto::data::TxSession;
use weft_crypto::handshake::DataKeys;
use weft_mesh::Instant;
use weft_wire::vxlan;

use crate::heartbeat::{self, Heartbeat};
use crate::links::{Link, NoLink, Refused};
use crate::neighbours::{LinkId, LinkTraffic, Neighbours};
use crate::{Counters, Learned, MacTable, Owner};

/// Number of distinct short ids (12 bits).
const SHORT_IDS: usize = 4096;
const ETH_HEADER: usize = 14;
/// Destination of IEEE 802.1D Spanning Tree frames; never forwarded between hosts.
const STP_DST: [u8; 6] = [0x01, 0x80, 0xc2, 0x00, 0x00, 0x00];

/// Engine settings.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// Our own short id, the destination every datagram for us carries in its VNI.
    pub local_short_id: u16,
    /// How long a MAC entry lives without traffic.
    pub mac_max_age: Duration,
    /// This engine's stream: the index of the data-plane thread it runs on, written into every
    /// datagram it sends (the VXLAN header's stream byte) and the stream it seals with (see
    /// [`weft_crypto::data`]). 0 with one thread.
    pub stream: u8,
    /// Other engines (the other data-plane threads) share this host's MAC addresses: what
    /// this one learns is kept for [`Engine::take_learned`]. Off with one thread.
    pub share_macs: bool,
    /// This engine is the express lane's (sparse flows, see the data plane): every datagram
    /// it sends carries [`vxlan::EXPRESS`], so the receiving router's express lane takes it.
    pub express: bool,
}

/// A directly connected peer the data plane can send to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerEntry {
    /// The peer's 12-bit short id.
    pub short_id: u16,
    /// The peer's 48-bit name.
    pub name: u64,
    /// Where its data port is (UDP).
    pub addr: SocketAddr,
}

/// Where frames go: the routing snapshot the control plane hands the data plane whenever the
/// topology changes. Indexed by short id, so the per-frame lookups are array accesses.
#[derive(Debug, Clone)]
pub struct ForwardingTable {
    local: u16,
    /// Peers with a ready control connection (their data-path heartbeats are accepted).
    neighbours: Vec<Option<PeerEntry>>,
    /// The same neighbours, compact and in short-id order.
    neighbour_list: Vec<PeerEntry>,
    /// The same neighbours by underlay address: every received datagram looks its sender up
    /// once, by hash, not by scanning the neighbours.
    by_ip: HashMap<IpAddr, u16>,
    /// Every peer in the topology, by short id (its name).
    known: Vec<Option<u64>>,
    /// Destination short id → the neighbour to send toward it.
    next_hop: Vec<Option<PeerEntry>>,
    /// Source short id → the neighbours its broadcasts go on to from here.
    children: Vec<Vec<PeerEntry>>,
    /// Neighbours whose frames also cross the kernel fast path (by short id): their bridge's
    /// broadcasts reach ours through it.
    fastdp: Vec<bool>,
}

impl ForwardingTable {
    /// An empty table for the peer with short id `local`.
    pub fn new(local: u16) -> Self {
        Self {
            local,
            neighbours: vec![None; SHORT_IDS],
            neighbour_list: Vec::new(),
            by_ip: HashMap::new(),
            known: vec![None; SHORT_IDS],
            next_hop: vec![None; SHORT_IDS],
            children: vec![Vec::new(); SHORT_IDS],
            fastdp: vec![false; SHORT_IDS],
        }
    }

    /// A table where every peer is a direct neighbour, reached directly, and our floods go to all
    /// of them (the topology of a full mesh, or of a node that knows nothing else yet).
    pub fn direct(local: u16, neighbours: &[PeerEntry]) -> Self {
        let mut t = Self::new(local);
        for &n in neighbours {
            t.add_neighbour(n);
            t.set_next_hop(n.short_id, n.short_id);
        }
        let ids: Vec<u16> = neighbours.iter().map(|n| n.short_id).collect();
        t.set_children(local, &ids);
        t
    }

    /// The short id of the peer this table is for.
    pub fn local(&self) -> u16 {
        self.local
    }

    /// Record a directly connected peer (also makes it known).
    pub fn add_neighbour(&mut self, peer: PeerEntry) {
        let i = slot(peer.short_id);
        if let Some(old) = self.neighbours[i] {
            if self.by_ip.get(&old.addr.ip()) == Some(&peer.short_id) {
                self.by_ip.remove(&old.addr.ip());
            }
        }
        self.by_ip.insert(peer.addr.ip(), peer.short_id);
        self.neighbours[i] = Some(peer);
        self.known[i] = Some(peer.name);
        match self
            .neighbour_list
            .binary_search_by_key(&i, |n| slot(n.short_id))
        {
            Ok(at) => self.neighbour_list[at] = peer,
            Err(at) => self.neighbour_list.insert(at, peer),
        }
    }

    /// Record a peer of the topology that may be the source or destination of frames.
    pub fn add_known(&mut self, short_id: u16, name: u64) {
        self.known[slot(short_id)] = Some(name);
    }

    /// Route frames for `dest` via the neighbour `via`. Returns false (and changes nothing) if
    /// `via` is not a neighbour.
    pub fn set_next_hop(&mut self, dest: u16, via: u16) -> bool {
        match self.neighbours[slot(via)] {
            Some(n) => {
                self.next_hop[slot(dest)] = Some(n);
                true
            }
            None => false,
        }
    }

    /// Broadcasts from `source` go on from here to these neighbours (others are ignored).
    pub fn set_children(&mut self, source: u16, children: &[u16]) {
        let entries = children
            .iter()
            .filter_map(|&c| self.neighbours[slot(c)])
            .collect::<Vec<_>>();
        self.children[slot(source)] = entries;
    }

    /// The neighbour with this short id.
    pub fn neighbour(&self, short_id: u16) -> Option<PeerEntry> {
        self.neighbours[slot(short_id)]
    }

    /// The neighbour at underlay address `ip`.
    pub fn neighbour_at(&self, ip: IpAddr) -> Option<PeerEntry> {
        self.by_ip
            .get(&ip)
            .and_then(|&short| self.neighbours[slot(short)])
    }

    /// Every neighbour, in short-id order.
    pub fn neighbours(&self) -> impl Iterator<Item = PeerEntry> + '_ {
        self.neighbour_list.iter().copied()
    }

    /// The neighbour to send frames for `dest` to.
    pub fn next_hop(&self, dest: u16) -> Option<PeerEntry> {
        self.next_hop[slot(dest)]
    }

    /// The name of the known peer with this short id.
    pub fn known(&self, short_id: u16) -> Option<u64> {
        self.known[slot(short_id)]
    }

    /// Frames between us and neighbour `short_id` cross the kernel fast path too (its bridge
    /// and ours exchange known unicast, broadcast and multicast directly).
    pub fn set_fastdp(&mut self, short_id: u16, on: bool) {
        self.fastdp[slot(short_id)] = on;
    }

    /// See [`ForwardingTable::set_fastdp`].
    pub fn fastdp(&self, short_id: u16) -> bool {
        self.fastdp[slot(short_id)]
    }

    /// Where broadcasts from `source` go on to from here.
    pub fn broadcast_children(&self, source: u16) -> &[PeerEntry] {
        &self.children[slot(source)]
    }
}

fn slot(short_id: u16) -> usize {
    usize::from(short_id) % SHORT_IDS
}

/// What to do with a frame read from the local bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TapDecision {
    /// Drop it (counted).
    Drop,
    /// The destination is on our own bridge; the bridge already delivered it.
    Local,
    /// Send it, addressed to peer `dst`, to the neighbour `via` (which is `dst` itself when
    /// directly connected).
    Unicast {
        /// The destination peer's short id (goes in the VNI).
        dst: u16,
        /// The neighbour to send the datagram to.
        via: PeerEntry,
    },
    /// Send a copy to each of [`Engine::flood_targets`], each addressed to that neighbour.
    Flood,
}

/// Where a received datagram goes on to, besides (or instead of) our own bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relay {
    /// Nowhere.
    None,
    /// Unchanged (same VNI) to this neighbour: we are a hop on the way to the destination.
    Next(PeerEntry),
    /// A copy to each of `broadcast_children(source)`, each with the VNI rewritten to
    /// (source, that child).
    Tree {
        /// The peer that captured the frame.
        source: u16,
    },
}

/// What to do with a datagram received on the data port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatagramDecision {
    /// Drop it (counted).
    Drop,
    /// A data-path heartbeat from the directly connected peer with this short id.
    Heartbeat {
        /// Source short id from the VNI.
        src: u16,
        /// The heartbeat's content.
        heartbeat: Heartbeat,
    },
    /// Deliver the inner frame (this range of the datagram) to the TAP, and/or relay it.
    Forward {
        /// The inner Ethernet frame, if it is for us.
        deliver: Option<Range<usize>>,
        /// Where it goes on to.
        relay: Relay,
    },
}

/// A received datagram after [`Engine::on_received`]: where the plain VXLAN datagram is in the
/// buffer (after opening it in place), and what to do with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The plain datagram (header and frame) within the buffer: what a relay sends on.
    pub plain: Range<usize>,
    /// The decision; a range it delivers is a range of the whole buffer.
    pub decision: DatagramDecision,
}

/// The forwarding engine. One per data-plane thread; the control plane replaces its
/// [`ForwardingTable`] when the topology changes, and installs each neighbour's encryption
/// link and path limit. Everything kept per neighbour is in one record (see [`LinkId`]).
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    macs: MacTable,
    table: ForwardingTable,
    counters: Counters,
    /// A password is set: neighbours without a link get nothing and are heard from not at all.
    sealing_required: bool,
    neighbours: Neighbours,
    /// MACs of fast-path neighbours whose frames still came over the userspace path: the
    /// driver tells the bridge they are behind the neighbour's fast-path port (see
    /// [`Engine::take_fastdp_hints`]). With when each was last told, so it is told once a second
    /// at most.
    fastdp_hints: Vec<(u16, [u8; 6])>,
    fastdp_told: HashMap<[u8; 6], Instant>,
    /// With `share_macs`: addresses learned (new or moved) since [`Engine::take_learned`], and
    /// at every [`Engine::expire`] those this engine's traffic refreshed since the last one.
    learned: Vec<([u8; 6], Owner)>,
    last_shared: Instant,
}

/// How often one MAC is pointed at a fast-path port at most.
const FASTDP_HINT_EVERY: Duration = Duration::from_secs(1);

impl Engine {
    /// A new engine with no peers and an empty MAC table, without a password (every datagram
    /// in the clear).
    pub fn new(config: EngineConfig) -> Self {
        Self {
            config,
            macs: MacTable::new(config.mac_max_age),
            table: ForwardingTable::new(config.local_short_id),
            counters: Counters::default(),
            sealing_required: false,
            neighbours: Neighbours::new(SHORT_IDS),
            fastdp_hints: Vec::new(),
            fastdp_told: HashMap::new(),
            learned: Vec::new(),
            last_shared: Instant::ZERO,
        }
    }

    /// With [`EngineConfig::share_macs`]: the MAC addresses this engine learned since the last
    /// call (new, or moved to another owner), and after each [`expire`](Self::expire) also
    /// those its own traffic kept alive since the one before, for the other threads' engines
    /// ([`import_macs`](Self::import_macs)): each thread sees only its share of the traffic,
    /// but every thread must know where every address is.
    pub fn take_learned(&mut self) -> std::vec::Drain<'_, ([u8; 6], Owner)> {
        self.learned.drain(..)
    }

    /// Take in what another thread's engine learned ([`take_learned`](Self::take_learned)),
    /// as seen at `now`; it is not passed on again.
    pub fn import_macs(&mut self, macs: &[([u8; 6], Owner)], now: Instant) {
        for &(mac, owner) in macs {
            self.macs.import(mac, owner, now);
        }
    }

    /// Learn `mac` behind `owner` from this engine's own traffic.
    fn learn(&mut self, mac: [u8; 6], owner: Owner, now: Instant) {
        let learned = self.macs.learn(mac, owner, now);
        if self.config.share_macs && learned != Learned::Refreshed {
            self.learned.push((mac, owner));
        }
    }

    /// Unicast frames from fast-path neighbours that arrived over the userspace path since the
    /// last call: (neighbour's short id, source MAC). Delivered through the TAP, they taught
    /// the bridge that the MAC is behind the TAP, so its answers would keep taking the slow
    /// path; the driver points the bridge at the neighbour's fast-path port instead (once
    /// per MAC per second). The kernel path's own frames teach the bridge from then on.
    pub fn take_fastdp_hints(&mut self) -> std::vec::Drain<'_, (u16, [u8; 6])> {
        self.fastdp_hints.drain(..)
    }

    /// A new engine for a router with a password: a neighbour's datagrams are sent and accepted
    /// only once [`set_link`](Self::set_link) said how (sealed, or in the clear when trusted).
    pub fn with_sealing(config: EngineConfig) -> Self {
        Self {
            sealing_required: true,
            ..Self::new(config)
        }
    }

    /// Install a new routing snapshot. MAC entries of peers it no longer knows are forgotten.
    /// The table's local short id becomes ours (it changes when a short-id collision is resolved).
    /// Every neighbour in it gets a record (see [`link_to`](Self::link_to)).
    pub fn set_table(&mut self, table: ForwardingTable) {
        self.config.local_short_id = table.local();
        let gone: Vec<u16> = self
            .macs
            .iter()
            .filter_map(|(_, owner, _)| match owner {
                Owner::Peer(id) if table.known(id).is_none() => Some(id),
                _ => None,
            })
            .collect();
        for id in gone {
            self.macs.forget_peer(id);
        }
        self.neighbours.clear_table();
        for n in &table.neighbour_list {
            let ip = n.addr.ip();
            let id = self.neighbours.ensure(ip);
            self.neighbours.set_short(slot(n.short_id), id);
            // Two neighbours at one address: the one the table finds by address receives.
            self.neighbours.get_mut(id).peer = table.neighbour_at(ip);
        }
        self.table = table;
    }

    /// Protect traffic with the neighbour at `ip` as connection `conn_uid` agreed: sealed with
    /// `keys`, or in the clear when `None`. A sealed link replacing another connection's keeps
    /// opening that connection's datagrams still in flight, until the new keys opened one.
    /// `partial_csum`: the neighbour takes segments whose checksum is left partial (see
    /// [`takes_partial_csum`](Self::takes_partial_csum)), as that connection agreed.
    pub fn set_link(
        &mut self,
        ip: IpAddr,
        conn_uid: u64,
        keys: Option<&DataKeys>,
        partial_csum: bool,
    ) {
        let id = self.neighbours.ensure(ip);
        let r = self.neighbours.get_mut(id);
        r.link = Some(Link::new(conn_uid, keys, r.link.take(), self.config.stream));
        r.partial_csum = partial_csum;
    }

    /// Whether segments sent to `link` for the neighbour itself may leave their TCP or UDP
    /// checksum partial ([`weft_wire::vxlan::CSUM_PARTIAL`]; the segmenter's
    /// [`leave_checksums_partial`](crate::offload::Segmenter::leave_checksums_partial)): its
    /// connection agreed on it and it has a link. Frames it relays to others get complete
    /// checksums (whether the final receiver takes partial ones is not known here).
    pub fn takes_partial_csum(&self, link: Option<LinkId>) -> bool {
        link.is_some_and(|l| {
            let r = self.neighbours.get(l);
            r.partial_csum && r.link.is_some()
        })
    }

    /// What the engine was made with.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Whether a unicast read for the peer `dst`, sent to the neighbour `via`, may leave its
    /// checksums partial: only when `via` is `dst` itself (a relay would pass them on to a peer
    /// that may not take them) and takes them ([`takes_partial_csum`](Self::takes_partial_csum)).
    /// Floods never do: the broadcast tree sends them on with headers of its own.
    pub fn partial_csum_to(&self, via: &PeerEntry, dst: u16) -> bool {
        via.short_id == dst && self.takes_partial_csum(self.link_to(via))
    }

    /// Connection `conn_uid` to the neighbour at `ip` ended: its link goes (not a newer
    /// connection's).
    pub fn remove_link(&mut self, ip: IpAddr, conn_uid: u64) {
        let Some(id) = self.neighbours.at(ip) else {
            return;
        };
        let r = self.neighbours.get_mut(id);
        if r.link.as_ref().is_some_and(|l| l.conn_uid() == conn_uid) {
            r.link = None;
            r.partial_csum = false;
        }
    }

    /// From now on an inner frame longer than `max_frame` does not fit the path to the
    /// neighbour at `ip`; `None`: no limit known.
    pub fn set_path_mtu(&mut self, ip: IpAddr, max_frame: Option<u16>) {
        match max_frame {
            Some(_) => {
                let id = self.neighbours.ensure(ip);
                self.neighbours.get_mut(id).max_frame = max_frame;
            }
            None => {
                if let Some(id) = self.neighbours.at(ip) {
                    self.neighbours.get_mut(id).max_frame = None;
                }
            }
        }
    }

    /// The record of the neighbour at `ip` (one hash): look a received datagram's sender up
    /// once with this, then pass the id to [`on_received`](Self::on_received) for each datagram
    /// from it. `None`: no neighbour the control plane named.
    pub fn link_at(&self, ip: IpAddr) -> Option<LinkId> {
        self.neighbours.at(ip)
    }

    /// The record of `peer`, an entry of the current table (a next hop, a flood target, a
    /// broadcast child): an array index by its short id, no hash.
    pub fn link_to(&self, peer: &PeerEntry) -> Option<LinkId> {
        self.neighbours.by_short(slot(peer.short_id))
    }

    /// The longest inner frame the path of `link` takes, if limited.
    pub fn path_mtu(&self, link: LinkId) -> Option<u16> {
        self.neighbours.get(link).max_frame
    }

    /// How to send to `link`: `Err` if it must not be sent (a password is set and the
    /// neighbour has no link yet, or no record), `Ok(None)` in the clear, `Ok(Some)` sealed
    /// with this session ([`build`](Self::build) uses it).
    pub fn sender(&mut self, link: Option<LinkId>) -> Result<Option<&mut TxSession>, NoLink> {
        if !self.sealing_required {
            return Ok(None);
        }
        let link = link.ok_or(NoLink)?;
        match self.neighbours.get_mut(link).link.as_mut() {
            Some(l) => Ok(l.sender()),
            None => Err(NoLink),
        }
    }

    /// Write a datagram for `link` into `buf` with `f` (a VXLAN header and payload, see
    /// [`links::build`](crate::links::build)), stamped with this engine's stream and sealed if
    /// the link says so. Returns its length; 0 if it must not be sent ([`sender`](Self::sender)
    /// says `Err`) or could not be sealed.
    pub fn build(
        &mut self,
        link: Option<LinkId>,
        buf: &mut [u8],
        f: impl FnOnce(&mut [u8]) -> usize,
    ) -> usize {
        let stream = self.config.stream;
        let flags = if self.config.express {
            vxlan::EXPRESS
        } else {
            0
        };
        match self.sender(link) {
            Ok(tx) => crate::links::build(tx, stream, flags, buf, f),
            Err(NoLink) => 0,
        }
    }

    /// Count `datagrams` datagrams of `bytes` bytes in all sent to `link`.
    pub fn count_link_tx(&mut self, link: LinkId, bytes: usize, datagrams: usize) {
        let t = &mut self.neighbours.get_mut(link).traffic;
        t.tx_bytes += bytes as u64;
        t.tx_datagrams += datagrams as u64;
    }

    /// Every neighbour's traffic, by underlay address (for reports).
    pub fn link_traffic(&self) -> impl Iterator<Item = (IpAddr, LinkTraffic)> + '_ {
        self.neighbours.iter().map(|r| (r.ip, r.traffic))
    }

    /// The current routing snapshot.
    pub fn table(&self) -> &ForwardingTable {
        &self.table
    }

    /// The neighbours a frame captured here is flooded to.
    pub fn flood_targets(&self) -> &[PeerEntry] {
        self.table.broadcast_children(self.config.local_short_id)
    }

    /// Our short id.
    pub fn local_short_id(&self) -> u16 {
        self.config.local_short_id
    }

    /// The counters so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Count datagrams sent (the driver knows how many went out).
    pub fn count_sent(&mut self, n: u64) {
        self.counters.udp_tx_datagrams += n;
    }

    /// Count frames written to the TAP.
    pub fn count_delivered(&mut self, n: u64) {
        self.counters.tap_tx_frames += n;
    }

    /// Count a datagram the socket layer truncated (larger than the receive buffer).
    pub fn count_truncated(&mut self) {
        self.counters.udp_rx_datagrams += 1;
        self.counters.udp_rx_dropped_other += 1;
    }

    /// The MAC table (for status reports).
    pub fn macs(&self) -> &MacTable {
        &self.macs
    }

    /// Age out MAC entries; call every few seconds (well within the ageing time: with
    /// [`EngineConfig::share_macs`] this is also when the addresses this engine's traffic keeps
    /// alive are passed on, see [`take_learned`](Self::take_learned)).
    pub fn expire(&mut self, now: Instant) {
        self.counters.macs_expired += self.macs.expire(now) as u64;
        if self.config.share_macs {
            let since = std::mem::replace(&mut self.last_shared, now);
            self.learned.extend(self.macs.seen_here_since(since));
        }
    }

    /// Decide what to do with a frame captured from the local bridge.
    pub fn on_tap_frame(&mut self, frame: &[u8], now: Instant) -> TapDecision {
        self.counters.tap_rx_frames += 1;
        let Some((dst, src)) = macs_of(frame) else {
            self.counters.tap_rx_dropped += 1;
            return TapDecision::Drop;
        };
        if dst == STP_DST {
            self.counters.tap_rx_dropped += 1;
            return TapDecision::Drop;
        }
        // A source we know behind a peer is our own injected frame coming back: drop it
        // rather than learn a wrong owner (Weave does the same).
        if let Some(Owner::Peer(_)) = self.macs.lookup(&src, now) {
            self.counters.tap_rx_dropped += 1;
            return TapDecision::Drop;
        }
        if src[0] & 1 == 0 {
            self.learn(src, Owner::Local, now);
        }
        if dst[0] & 1 == 1 {
            self.counters.flooded_frames += 1;
            return TapDecision::Flood;
        }
        match self.macs.lookup(&dst, now) {
            Some(Owner::Local) => {
                self.counters.tap_rx_local += 1;
                TapDecision::Local
            }
            Some(Owner::Peer(id)) => match self.table.next_hop(id) {
                Some(via) => TapDecision::Unicast { dst: id, via },
                None => {
                    self.counters.flooded_frames += 1;
                    TapDecision::Flood
                }
            },
            None => {
                self.counters.flooded_frames += 1;
                TapDecision::Flood
            }
        }
    }

    /// Decide what to do with a datagram in the clear received on the data port from `from`
    /// (looks the sender up by address; see [`on_received`](Self::on_received) for the data
    /// plane's path, which also opens sealed datagrams). With a password, only a neighbour
    /// whose link is in the clear may send one.
    ///
    /// A datagram is accepted only from the address of a neighbour (anyone on the underlay can
    /// forge a VNI, not as easily the address of a connected peer); heartbeats only from the
    /// neighbour they name.
    pub fn on_datagram(
        &mut self,
        datagram: &[u8],
        from: SocketAddr,
        now: Instant,
    ) -> DatagramDecision {
        let link = self.neighbours.at(from.ip());
        if self.sealing_required {
            let refused = match link.and_then(|l| self.neighbours.get(l).link.as_ref()) {
                None => Some(Refused::Unknown),
                Some(l) if l.is_sealed() => Some(Refused::Auth),
                Some(_) => None,
            };
            if let Some(why) = refused {
                self.count_refused(why);
                return DatagramDecision::Drop;
            }
        }
        let sender = link.and_then(|l| self.neighbours.get(l).peer);
        self.decide(datagram, sender, now)
    }

    /// Take a datagram received from the neighbour `from` (found with
    /// [`link_at`](Self::link_at); `None`: from an address no neighbour has): count it on the
    /// neighbour's link, open it in place if the link is sealed, and decide what to do with it.
    /// Datagrams that fail authentication or replay checks, or come from an address without
    /// a link when a password is set, are counted and dropped.
    pub fn on_received(
        &mut self,
        from: Option<LinkId>,
        datagram: &mut [u8],
        now: Instant,
    ) -> Received {
        let drop = |plain| Received {
            plain,
            decision: DatagramDecision::Drop,
        };
        let Some(id) = from else {
            if self.sealing_required {
                self.count_refused(Refused::Unknown);
                return drop(0..0);
            }
            return Received {
                plain: 0..datagram.len(),
                decision: self.decide(datagram, None, now),
            };
        };
        let sealing_required = self.sealing_required;
        let (r, scratch) = self.neighbours.get_mut_with_scratch(id);
        r.traffic.rx_bytes += datagram.len() as u64;
        r.traffic.rx_datagrams += 1;
        let sender = r.peer;
        let opened = match (&mut r.link, sealing_required) {
            (_, false) => Ok(0..datagram.len()),
            (None, true) => Err(Refused::Unknown),
            (Some(link), true) => link.open(datagram, scratch),
        };
        let plain = match opened {
            Ok(plain) => plain,
            Err(why) => {
                self.count_refused(why);
                return drop(0..0);
            }
        };
        let decision = match self.decide(&datagram[plain.clone()], sender, now) {
            DatagramDecision::Forward {
                deliver: Some(d),
                relay,
            } => DatagramDecision::Forward {
                deliver: Some(d.start + plain.start..d.end + plain.start),
                relay,
            },
            other => other,
        };
        Received { plain, decision }
    }

    /// Count a received datagram refused before the engine looked at it.
    fn count_refused(&mut self, why: Refused) {
        let c = &mut self.counters;
        c.udp_rx_datagrams += 1;
        match why {
            Refused::Unknown => c.udp_rx_dropped_unknown_peer += 1,
            Refused::Auth => c.udp_rx_dropped_auth += 1,
            Refused::Replay => c.udp_rx_dropped_replay += 1,
        }
    }

    /// Decide what to do with a plain datagram from the neighbour `sender` (`None`: no
    /// neighbour of the current table).
    fn decide(
        &mut self,
        datagram: &[u8],
        sender: Option<PeerEntry>,
        now: Instant,
    ) -> DatagramDecision {
        self.counters.udp_rx_datagrams += 1;
        let Ok(packet) = vxlan::Packet::new_checked(datagram) else {
            self.counters.udp_rx_dropped_malformed += 1;
            return DatagramDecision::Drop;
        };
        let (src, dst) = vxlan::split_vni(packet.vni());
        let inner = vxlan::HEADER_LEN..datagram.len();
        let frame = &datagram[inner.clone()];
        let Some((frame_dst, frame_src)) = macs_of(frame) else {
            self.counters.udp_rx_dropped_malformed += 1;
            return DatagramDecision::Drop;
        };
        let Some(sender) = sender else {
            self.counters.udp_rx_dropped_unknown_peer += 1;
            return DatagramDecision::Drop;
        };
        let local = self.config.local_short_id;
        if heartbeat::is_heartbeat(frame) {
            return match Heartbeat::parse(frame) {
                Some(hb) if dst == local && src == sender.short_id && hb.sender == sender.name => {
                    self.counters.heartbeats_rx += 1;
                    DatagramDecision::Heartbeat { src, heartbeat: hb }
                }
                _ => {
                    self.counters.udp_rx_dropped_other += 1;
                    DatagramDecision::Drop
                }
            };
        }
        if self.table.known(src).is_none() {
            self.counters.udp_rx_dropped_unknown_peer += 1;
            return DatagramDecision::Drop;
        }
        if frame_src[0] & 1 == 1 {
            // A multicast source address is never valid.
            self.counters.udp_rx_dropped_malformed += 1;
            return DatagramDecision::Drop;
        }
        if dst != local {
            // We are a hop on the way: pass it on unchanged, without looking at MACs.
            return match self.table.next_hop(dst) {
                Some(next) if next.short_id != sender.short_id => {
                    self.counters.relayed_datagrams += 1;
                    DatagramDecision::Forward {
                        deliver: None,
                        relay: Relay::Next(next),
                    }
                }
                _ => {
                    self.counters.udp_rx_dropped_other += 1;
                    DatagramDecision::Drop
                }
            };
        }
        let group = frame_dst[0] & 1 == 1;
        // A broadcast or multicast captured by a fast-path neighbour's own bridge reached ours
        // through the kernel already (that bridge floods its fast-path ports); this copy only
        // goes on along the tree. Unicast is never sent both ways.
        let fast = src == sender.short_id && self.table.fastdp(src);
        let twice = group && fast;
        if !twice {
            self.learn(frame_src, Owner::Peer(src), now);
        }
        if fast && !group {
            let due = self
                .fastdp_told
                .get(&frame_src)
                .is_none_or(|&t| now.saturating_duration_since(t) >= FASTDP_HINT_EVERY);
            if due {
                if self.fastdp_told.len() >= 4096 {
                    self.fastdp_told
                        .retain(|_, t| now.saturating_duration_since(*t) < FASTDP_HINT_EVERY);
                }
                self.fastdp_told.insert(frame_src, now);
                self.fastdp_hints.push((src, frame_src));
            }
        }
        // A flood (broadcast, multicast, or a destination that is not here) goes on along the
        // source's broadcast tree.
        let goes_on = group || self.macs.lookup(&frame_dst, now) != Some(Owner::Local);
        let relay = if goes_on && !self.table.broadcast_children(src).is_empty() {
            self.counters.relayed_datagrams += 1;
            Relay::Tree { source: src }
        } else {
            Relay::None
        };
        if twice {
            self.counters.fastdp_floods_skipped += 1;
            if matches!(relay, Relay::None) {
                return DatagramDecision::Drop;
            }
        }
        DatagramDecision::Forward {
            deliver: (!twice).then_some(inner),
            relay,
        }
    }

    /// Write the VXLAN header for a datagram from us to `dst_short_id` into `out[..8]`;
    /// the frame follows it at `out[8..]`. Returns the header length.
    ///
    /// # Panics
    /// If `out` is shorter than [`vxlan::HEADER_LEN`].
    pub fn emit_header(&self, dst_short_id: u16, out: &mut [u8]) -> usize {
        emit_vxlan_header(self.config.local_short_id, dst_short_id, out)
    }

    /// Build a whole heartbeat datagram for `dst_short_id` into `out`; returns its length.
    ///
    /// # Panics
    /// If `out` is shorter than `8 + heartbeat::FRAME_LEN`.
    pub fn emit_heartbeat(&self, dst_short_id: u16, hb: Heartbeat, out: &mut [u8]) -> usize {
        emit_heartbeat_datagram(self.config.local_short_id, dst_short_id, hb, out)
    }
}

/// Write the VXLAN header of a datagram from `src_short_id` to `dst_short_id` into `out[..8]`.
///
/// # Panics
/// If `out` is shorter than [`vxlan::HEADER_LEN`].
pub fn emit_vxlan_header(src_short_id: u16, dst_short_id: u16, out: &mut [u8]) -> usize {
    let vni = vxlan::vni_for(src_short_id, dst_short_id);
    let mut packet = vxlan::Packet::new_unchecked(&mut out[..vxlan::HEADER_LEN]);
    vxlan::Repr { vni }.emit(&mut packet);
    vxlan::HEADER_LEN
}

/// Build a whole heartbeat datagram (VXLAN header and heartbeat frame) into `out`.
///
/// # Panics
/// If `out` is shorter than `8 + heartbeat::FRAME_LEN`.
fn emit_heartbeat_datagram(
    src_short_id: u16,
    dst_short_id: u16,
    hb: Heartbeat,
    out: &mut [u8],
) -> usize {
    let n = emit_vxlan_header(src_short_id, dst_short_id, out);
    n + hb.emit(&mut out[n..])
}

/// A whole heartbeat (or probe) datagram from `src_short_id` to `dst_short_id`, as the node
/// asks the data path to send it.
pub fn heartbeat_datagram(src_short_id: u16, dst_short_id: u16, hb: Heartbeat) -> Vec<u8> {
    let mut buf = vec![0u8; vxlan::HEADER_LEN + hb.frame_len()];
    let n = emit_heartbeat_datagram(src_short_id, dst_short_id, hb, &mut buf);
    buf.truncate(n);
    buf
}

/// Destination and source MAC of an Ethernet frame, if it has a whole header.
fn macs_of(frame: &[u8]) -> Option<([u8; 6], [u8; 6])> {
    if frame.len() < ETH_HEADER {
        return None;
    }
    let dst = frame[0..6].try_into().ok()?;
    let src = frame[6..12].try_into().ok()?;
    Some((dst, src))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa1];
    const CB: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb1];
    const CC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xc1];
    const NAME_A: u64 = 0x0200_0000_000a;
    const NAME_B: u64 = 0x0200_0000_000b;
    const NAME_C: u64 = 0x0200_0000_000c;

    fn entry(short_id: u16) -> PeerEntry {
        let (name, addr) = match short_id {
            1 => (NAME_A, "192.0.2.1:6784"),
            2 => (NAME_B, "192.0.2.2:6784"),
            _ => (NAME_C, "192.0.2.3:6784"),
        };
        PeerEntry {
            short_id,
            name,
            addr: addr.parse().unwrap(),
        }
    }

    fn from(short_id: u16) -> SocketAddr {
        entry(short_id).addr
    }

    #[test]
    fn neighbours_are_listed_once_in_short_id_order() {
        let mut t = ForwardingTable::new(9);
        t.add_neighbour(entry(3));
        t.add_neighbour(entry(1));
        let moved = PeerEntry {
            addr: "192.0.2.33:6784".parse().unwrap(),
            ..entry(3)
        };
        t.add_neighbour(moved);
        t.add_neighbour(entry(2));
        let ids: Vec<(u16, SocketAddr)> = t.neighbours().map(|n| (n.short_id, n.addr)).collect();
        assert_eq!(
            ids,
            vec![(1, from(1)), (2, from(2)), (3, moved.addr)],
            "sorted, the re-added peer replaced"
        );
        assert_eq!(t.neighbour(3), Some(moved));
    }

    fn engine(short: u16, table: ForwardingTable) -> Engine {
        let mut e = Engine::new(EngineConfig {
            local_short_id: short,
            mac_max_age: MacTable::DEFAULT_MAX_AGE,
            stream: 0,
            share_macs: false,
            express: false,
        });
        e.set_table(table);
        e
    }

    /// A and B, directly connected.
    fn pair() -> (Engine, Engine) {
        let a = engine(1, ForwardingTable::direct(1, &[entry(2)]));
        let b = engine(2, ForwardingTable::direct(2, &[entry(1)]));
        (a, b)
    }

    /// A – B – C in a line: A and C reach each other only through B.
    fn line() -> (Engine, Engine, Engine) {
        let mut ta = ForwardingTable::new(1);
        ta.add_neighbour(entry(2));
        ta.add_known(3, NAME_C);
        ta.set_next_hop(2, 2);
        ta.set_next_hop(3, 2);
        ta.set_children(1, &[2]);
        let mut tb = ForwardingTable::new(2);
        tb.add_neighbour(entry(1));
        tb.add_neighbour(entry(3));
        tb.set_next_hop(1, 1);
        tb.set_next_hop(3, 3);
        tb.set_children(1, &[3]);
        tb.set_children(3, &[1]);
        tb.set_children(2, &[1, 3]);
        let mut tc = ForwardingTable::new(3);
        tc.add_neighbour(entry(2));
        tc.add_known(1, NAME_A);
        tc.set_next_hop(2, 2);
        tc.set_next_hop(1, 2);
        tc.set_children(3, &[2]);
        (engine(1, ta), engine(2, tb), engine(3, tc))
    }

    fn frame(dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x08, 0x06]);
        f.extend_from_slice(&[0u8; 28]);
        f
    }

    fn encap(src: u16, dst: u16, frame: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; 8 + frame.len()];
        let n = emit_vxlan_header(src, dst, &mut out);
        out[n..].copy_from_slice(frame);
        out
    }

    fn delivered(d: &DatagramDecision) -> bool {
        matches!(
            d,
            DatagramDecision::Forward {
                deliver: Some(_),
                ..
            }
        )
    }

    #[test]
    fn broadcast_floods_then_reply_is_unicast() {
        let (mut a, mut b) = pair();
        let now = Instant::ZERO;
        let arp = frame([0xff; 6], CA);
        assert_eq!(a.on_tap_frame(&arp, now), TapDecision::Flood);
        assert_eq!(a.flood_targets(), &[entry(2)]);
        let dgram = encap(1, 2, &arp);
        let DatagramDecision::Forward {
            deliver: Some(range),
            relay: Relay::None,
        } = b.on_datagram(&dgram, from(1), now)
        else {
            panic!("not delivered")
        };
        assert_eq!(&dgram[range], &arp[..]);
        // B learned CA behind A, so the reply goes to A alone.
        let reply = frame(CA, CB);
        assert_eq!(
            b.on_tap_frame(&reply, now),
            TapDecision::Unicast {
                dst: 1,
                via: entry(1)
            }
        );
        assert!(delivered(&a.on_datagram(
            &encap(2, 1, &reply),
            from(2),
            now
        )));
        // And now A knows CB too.
        assert_eq!(
            a.on_tap_frame(&frame(CB, CA), now),
            TapDecision::Unicast {
                dst: 2,
                via: entry(2)
            }
        );
        assert_eq!(a.counters().flooded_frames, 1);
    }

    /// A–B–C in a line, A–B on the kernel fast path: B's bridge already got A's broadcast
    /// from the kernel, so the sleeve copy only goes on to C; C's own broadcasts, relayed by
    /// B, and A's unicast still arrive at B's bridge exactly once.
    #[test]
    fn a_fastdp_neighbours_own_broadcast_is_passed_on_not_delivered_twice() {
        let (_, mut b, _) = line();
        let mut tb = b.table().clone();
        tb.set_fastdp(1, true);
        b.set_table(tb);
        let now = Instant::ZERO;
        let arp = encap(1, 2, &frame([0xff; 6], CA));
        assert_eq!(
            b.on_datagram(&arp, from(1), now),
            DatagramDecision::Forward {
                deliver: None,
                relay: Relay::Tree { source: 1 }
            }
        );
        assert_eq!(b.counters().fastdp_floods_skipped, 1);
        // Without children in A's tree, nothing is left to do with it.
        let mut tb = b.table().clone();
        tb.set_children(1, &[]);
        b.set_table(tb);
        assert_eq!(b.on_datagram(&arp, from(1), now), DatagramDecision::Drop);
        // C's broadcast relayed by A (as if A–C were direct) never crossed B's kernel path.
        let from_c = encap(3, 2, &frame([0xff; 6], CC));
        assert!(delivered(&b.on_datagram(&from_c, from(1), now)));
        // Unicast from A is delivered: a bridge never sends one frame both ways. B's bridge
        // learns CA behind the TAP from it, so the driver is told to point it at A's port,
        // once a second at most.
        let uni = encap(1, 2, &frame(CB, CA));
        assert!(delivered(&b.on_datagram(&uni, from(1), now)));
        assert!(delivered(&b.on_datagram(&uni, from(1), now)));
        assert_eq!(b.counters().fastdp_floods_skipped, 2);
        assert_eq!(b.take_fastdp_hints().collect::<Vec<_>>(), [(1, CA)]);
        let later = now + Duration::from_secs(1);
        assert!(delivered(&b.on_datagram(&uni, from(1), later)));
        assert_eq!(b.take_fastdp_hints().collect::<Vec<_>>(), [(1, CA)]);
        // Not for neighbours on the userspace path.
        let from_c = encap(3, 2, &frame(CB, CC));
        assert!(delivered(&b.on_datagram(&from_c, from(3), later)));
        assert_eq!(b.take_fastdp_hints().count(), 0);
    }

    #[test]
    fn unicast_is_relayed_unchanged_through_the_middle() {
        let (mut a, mut b, mut c) = line();
        let now = Instant::ZERO;
        // C's container is learned by A from a broadcast that came through B.
        let hello = frame([0xff; 6], CC);
        assert_eq!(c.on_tap_frame(&hello, now), TapDecision::Flood);
        assert_eq!(c.flood_targets(), &[entry(2)]);
        let at_b = encap(3, 2, &hello);
        assert_eq!(
            b.on_datagram(&at_b, from(3), now),
            DatagramDecision::Forward {
                deliver: Some(8..at_b.len()),
                relay: Relay::Tree { source: 3 }
            }
        );
        assert_eq!(b.table().broadcast_children(3), &[entry(1)]);
        // B rewrites the VNI to (C, A) for its child A; A delivers and stops there.
        let at_a = encap(3, 1, &hello);
        assert_eq!(
            a.on_datagram(&at_a, from(2), now),
            DatagramDecision::Forward {
                deliver: Some(8..at_a.len()),
                relay: Relay::None
            }
        );
        // A's reply to CC is addressed to C and sent to B.
        let reply = frame(CC, CA);
        assert_eq!(
            a.on_tap_frame(&reply, now),
            TapDecision::Unicast {
                dst: 3,
                via: entry(2)
            }
        );
        let dgram = encap(1, 3, &reply);
        assert_eq!(
            b.on_datagram(&dgram, from(1), now),
            DatagramDecision::Forward {
                deliver: None,
                relay: Relay::Next(entry(3))
            }
        );
        assert!(
            b.macs().lookup(&CA, now).is_none(),
            "a relay does not learn MACs"
        );
        assert!(delivered(&c.on_datagram(&dgram, from(2), now)));
        assert_eq!(c.macs().lookup(&CA, now), Some(Owner::Peer(1)));
        assert_eq!(b.counters().relayed_datagrams, 2);
    }

    #[test]
    fn relays_never_send_back_or_into_nowhere() {
        let (_, mut b, _) = line();
        let now = Instant::ZERO;
        // For C, sent by C: the next hop would be the sender itself.
        let back = encap(3, 3, &frame(CB, CC));
        assert_eq!(b.on_datagram(&back, from(3), now), DatagramDecision::Drop);
        // For a peer B has no route to.
        let mut t = b.table().clone();
        t.add_known(9, 0x0200_0000_0009);
        b.set_table(t);
        let nowhere = encap(1, 9, &frame(CB, CA));
        assert_eq!(
            b.on_datagram(&nowhere, from(1), now),
            DatagramDecision::Drop
        );
        assert_eq!(b.counters().udp_rx_dropped_other, 2);
    }

    #[test]
    fn local_destination_and_echo_are_not_sent() {
        let (mut a, mut b) = pair();
        let now = Instant::ZERO;
        a.on_tap_frame(&frame([0xff; 6], CA), now);
        assert_eq!(
            a.on_tap_frame(&frame(CA, [0x02, 0, 0, 0, 0, 0xa2]), now),
            TapDecision::Local
        );
        // A frame whose source is known behind a peer is our own injected frame: dropped.
        assert!(delivered(&b.on_datagram(
            &encap(1, 2, &frame([0xff; 6], CA)),
            from(1),
            now
        )));
        assert_eq!(
            b.on_tap_frame(&frame([0xff; 6], CA), now),
            TapDecision::Drop
        );
        assert_eq!(b.on_tap_frame(&[0u8; 10], now), TapDecision::Drop);
        assert_eq!(b.on_tap_frame(&frame(STP_DST, CB), now), TapDecision::Drop);
        assert_eq!(b.counters().tap_rx_dropped, 3);
    }

    #[test]
    fn bad_datagrams_are_counted_not_delivered() {
        let (_, mut b) = pair();
        let now = Instant::ZERO;
        let good = encap(1, 2, &frame(CB, CA));
        for len in 0..8 + 14 {
            assert_eq!(
                b.on_datagram(&good[..len], from(1), now),
                DatagramDecision::Drop
            );
        }
        let mut no_i_flag = good.clone();
        no_i_flag[0] = 0;
        assert_eq!(
            b.on_datagram(&no_i_flag, from(1), now),
            DatagramDecision::Drop
        );
        // Source short id 9 is not a known peer.
        assert_eq!(
            b.on_datagram(&encap(9, 2, &frame(CB, CA)), from(1), now),
            DatagramDecision::Drop
        );
        // Destination 3 is not us and there is no route to it.
        assert_eq!(
            b.on_datagram(&encap(1, 3, &frame(CB, CA)), from(1), now),
            DatagramDecision::Drop
        );
        let mut multicast_src = frame(CB, CA);
        multicast_src[6] |= 1;
        assert_eq!(
            b.on_datagram(&encap(1, 2, &multicast_src), from(1), now),
            DatagramDecision::Drop
        );
        let k = b.counters();
        assert_eq!(k.udp_rx_dropped_unknown_peer, 1);
        assert_eq!(k.udp_rx_dropped_other, 1);
        assert_eq!(k.udp_rx_dropped_malformed, 8 + 14 + 1 + 1);
        assert!(b.macs().is_empty(), "nothing learned from bad input");
    }

    #[test]
    fn datagrams_from_another_address_are_refused() {
        let (_, mut b) = pair();
        let now = Instant::ZERO;
        let dgram = encap(1, 2, &frame([0xff; 6], CA));
        let spoofer: SocketAddr = "192.0.2.66:6784".parse().unwrap();
        assert_eq!(b.on_datagram(&dgram, spoofer, now), DatagramDecision::Drop);
        assert_eq!(b.counters().udp_rx_dropped_unknown_peer, 1);
        assert!(b.macs().is_empty());
        // The port may differ (NAT); the address may not.
        let other_port: SocketAddr = "192.0.2.1:40000".parse().unwrap();
        assert!(delivered(&b.on_datagram(&dgram, other_port, now)));
    }

    #[test]
    fn heartbeats_are_recognised_and_checked() {
        let (a, mut b) = pair();
        let now = Instant::ZERO;
        let mut buf = [0u8; 64];
        let hb = Heartbeat {
            conn_uid: 42,
            sender: NAME_A,
            probe: None,
        };
        let n = a.emit_heartbeat(2, hb, &mut buf);
        assert_eq!(
            b.on_datagram(&buf[..n], from(1), now),
            DatagramDecision::Heartbeat {
                src: 1,
                heartbeat: hb
            }
        );
        let forged = Heartbeat {
            conn_uid: 42,
            sender: NAME_B,
            probe: None,
        };
        let n = a.emit_heartbeat(2, forged, &mut buf);
        assert_eq!(
            b.on_datagram(&buf[..n], from(1), now),
            DatagramDecision::Drop
        );
        assert_eq!(b.counters().heartbeats_rx, 1);
    }

    #[test]
    fn a_new_table_forgets_macs_of_peers_that_left() {
        let (_, mut b) = pair();
        let now = Instant::ZERO;
        b.on_datagram(&encap(1, 2, &frame([0xff; 6], CA)), from(1), now);
        assert_eq!(b.macs().len(), 1);
        b.set_table(ForwardingTable::direct(2, &[]));
        assert!(b.macs().is_empty());
        assert_eq!(b.on_tap_frame(&frame(CA, CB), now), TapDecision::Flood);
        assert!(b.flood_targets().is_empty());
    }

    fn keys(a: u8, b: u8) -> DataKeys {
        DataKeys::from_raw(weft_crypto::Cipher::ChaCha20Poly1305, [a; 32], [b; 32])
    }

    /// A and B, directly connected, with a password; their links sealed as connection 7.
    fn sealed_pair() -> (Engine, Engine) {
        let cfg = |short| EngineConfig {
            local_short_id: short,
            mac_max_age: MacTable::DEFAULT_MAX_AGE,
            stream: 0,
            share_macs: false,
            express: false,
        };
        let mut a = Engine::with_sealing(cfg(1));
        a.set_table(ForwardingTable::direct(1, &[entry(2)]));
        let mut b = Engine::with_sealing(cfg(2));
        b.set_table(ForwardingTable::direct(2, &[entry(1)]));
        a.set_link(from(2).ip(), 7, Some(&keys(1, 2)), false);
        b.set_link(from(1).ip(), 7, Some(&keys(2, 1)), false);
        (a, b)
    }

    /// What `e` puts on the wire for `frame` to its neighbour `to` (empty: not sent).
    fn seal(e: &mut Engine, to: u16, frame: &[u8]) -> Vec<u8> {
        let src = e.local_short_id();
        let link = e.link_to(&entry(to));
        let mut buf = vec![0u8; 256];
        let n = e.build(link, &mut buf, |b| {
            let h = emit_vxlan_header(src, to, b);
            b[h..h + frame.len()].copy_from_slice(frame);
            h + frame.len()
        });
        buf.truncate(n);
        buf
    }

    fn receive(e: &mut Engine, from_short: u16, datagram: &mut [u8]) -> Received {
        let link = e.link_at(from(from_short).ip());
        e.on_received(link, datagram, Instant::ZERO)
    }

    #[test]
    fn each_thread_seals_its_own_stream_and_the_receiver_opens_them_all() {
        let (mut a0, mut b) = sealed_pair();
        // A second data-plane thread of A: the same connection's keys, stream 1.
        let mut a1 = Engine::with_sealing(EngineConfig {
            local_short_id: 1,
            mac_max_age: MacTable::DEFAULT_MAX_AGE,
            stream: 1,
            share_macs: true,
            express: false,
        });
        a1.set_table(ForwardingTable::direct(1, &[entry(2)]));
        a1.set_link(from(2).ip(), 7, Some(&keys(1, 2)), false);
        let arp = frame([0xff; 6], CA);
        let d0 = seal(&mut a0, 2, &arp);
        let d1 = seal(&mut a1, 2, &arp);
        assert_eq!((vxlan::stream_of(&d0), vxlan::stream_of(&d1)), (0, 1));
        assert_eq!(d0[8..16], d1[8..16], "both streams' counters start at 0");
        for mut d in [d1.clone(), d0, d1.clone()] {
            let _ = receive(&mut b, 1, &mut d);
        }
        assert_eq!(
            b.counters().udp_rx_dropped_replay,
            1,
            "only the repeat: {b:?}"
        );
        assert_eq!(b.counters().udp_rx_dropped_auth, 0);
        // The stream byte is authenticated: moved to another stream, it does not open.
        let mut moved = seal(&mut a1, 2, &arp);
        moved[vxlan::STREAM_OFFSET] = 0;
        assert_eq!(
            receive(&mut b, 1, &mut moved).decision,
            DatagramDecision::Drop
        );
        assert_eq!(b.counters().udp_rx_dropped_auth, 1);
        // In the clear, the stream byte is written too (the receiver steers by it).
        let mut plain = engine(1, ForwardingTable::direct(1, &[entry(2)]));
        plain.config.stream = 3;
        let mut buf = [0u8; 64];
        let n = plain.build(None, &mut buf, |b| emit_vxlan_header(1, 2, b));
        assert_eq!((n, vxlan::stream_of(&buf)), (8, 3));
        assert!(!vxlan::express(&buf));
    }

    #[test]
    fn the_express_lane_flags_all_it_sends_and_the_flag_is_authenticated() {
        let (_, mut b) = sealed_pair();
        let mut x = Engine::with_sealing(EngineConfig {
            local_short_id: 1,
            mac_max_age: MacTable::DEFAULT_MAX_AGE,
            stream: 2,
            share_macs: true,
            express: true,
        });
        x.set_table(ForwardingTable::direct(1, &[entry(2)]));
        x.set_link(from(2).ip(), 7, Some(&keys(1, 2)), false);
        let arp = frame([0xff; 6], CA);
        let mut d = seal(&mut x, 2, &arp);
        assert!(vxlan::express(&d) && vxlan::stream_of(&d) == 2);
        let mut cleared = seal(&mut x, 2, &arp);
        let r = receive(&mut b, 1, &mut d);
        assert_ne!(r.decision, DatagramDecision::Drop);
        assert!(vxlan::express(&d[r.plain]), "still flagged once opened");
        cleared[vxlan::WEFT_FLAGS_OFFSET] &= !vxlan::EXPRESS;
        assert_eq!(
            receive(&mut b, 1, &mut cleared).decision,
            DatagramDecision::Drop
        );
        assert_eq!(b.counters().udp_rx_dropped_auth, 1);
        // In the clear too.
        let mut plain = engine(1, ForwardingTable::direct(1, &[entry(2)]));
        plain.config.express = true;
        let mut buf = [0u8; 64];
        let n = plain.build(None, &mut buf, |b| emit_vxlan_header(1, 2, b));
        assert_eq!(n, 8);
        assert!(vxlan::express(&buf) && !vxlan::csum_partial(&buf));
    }

    #[test]
    fn the_partial_checksum_flag_is_per_link_and_authenticated() {
        let (mut a, mut b) = sealed_pair();
        let to_b = a.link_at(from(2).ip());
        assert!(!a.takes_partial_csum(to_b), "the pair's link said no");
        a.set_link(from(2).ip(), 7, Some(&keys(1, 2)), true);
        assert!(a.takes_partial_csum(to_b));
        assert!(!a.takes_partial_csum(None), "no record");
        // Sealed with the flag set, it opens with the flag still set.
        let arp = frame([0xff; 6], CA);
        let link = a.link_at(from(2).ip());
        let mut flagged = || {
            let mut buf = vec![0u8; 256];
            let n = a.build(link, &mut buf, |b| {
                let h = emit_vxlan_header(1, 2, b);
                vxlan::set_csum_partial(b);
                b[h..h + arp.len()].copy_from_slice(&arp);
                h + arp.len()
            });
            buf.truncate(n);
            buf
        };
        let mut buf = flagged();
        let mut flipped = flagged();
        let r = receive(&mut b, 1, &mut buf);
        assert!(vxlan::csum_partial(&buf[r.plain.clone()]));
        assert_ne!(r.decision, DatagramDecision::Drop);
        // The flag is inside what the seal covers: cleared on the way, the datagram is refused.
        flipped[vxlan::WEFT_FLAGS_OFFSET] = 0;
        let before = b.counters().udp_rx_dropped_auth;
        assert_eq!(
            receive(&mut b, 1, &mut flipped).decision,
            DatagramDecision::Drop
        );
        assert_eq!(b.counters().udp_rx_dropped_auth, before + 1);
        // The connection goes: so does what it agreed.
        a.remove_link(from(2).ip(), 7);
        assert!(!a.takes_partial_csum(to_b));
    }

    #[test]
    fn threads_share_what_they_learn_and_keep_it_alive() {
        let share = |stream| {
            let mut e = Engine::new(EngineConfig {
                local_short_id: 2,
                mac_max_age: Duration::from_secs(60),
                stream,
                share_macs: true,
                express: false,
            });
            e.set_table(ForwardingTable::direct(2, &[entry(1)]));
            e
        };
        // B's thread 0 receives A's container's frame; B's thread 1 reads the reply from its
        // TAP queue.
        let (mut b0, mut b1) = (share(0), share(1));
        let t0 = Instant::ZERO;
        let mut d = encap(1, 2, &frame([0xff; 6], CA));
        assert!(delivered(
            &b0.on_received(b0.link_at(from(1).ip()), &mut d, t0)
                .decision
        ));
        assert_eq!(b1.on_tap_frame(&frame(CA, CB), t0), TapDecision::Flood);
        let learned: Vec<_> = b0.take_learned().collect();
        assert_eq!(learned, [(CA, Owner::Peer(1))]);
        b1.import_macs(&learned, t0);
        assert!(matches!(
            b1.on_tap_frame(&frame(CA, CB), t0),
            TapDecision::Unicast { dst: 1, .. }
        ));
        // b1 learned CB (local) itself and passes it on; a refresh is not news.
        assert_eq!(b1.take_learned().collect::<Vec<_>>(), [(CB, Owner::Local)]);
        b1.on_tap_frame(&frame(CA, CB), t0 + Duration::from_secs(1));
        assert_eq!(b1.take_learned().count(), 0);
        // Traffic keeps reaching b0 only; at each expiry b0 passes on what it saw since the
        // last, so b1's copy outlives the ageing time. b1 never passes back what it was told.
        let mut now = t0;
        for _ in 0..12 {
            now += Duration::from_secs(10);
            let mut d = encap(1, 2, &frame([0xff; 6], CA));
            b0.on_received(b0.link_at(from(1).ip()), &mut d, now);
            b0.expire(now);
            b1.expire(now);
            let told: Vec<_> = b0.take_learned().collect();
            assert_eq!(told, [(CA, Owner::Peer(1))]);
            b1.import_macs(&told, now);
            assert!(b1.take_learned().all(|(mac, _)| mac != CA), "passed back");
        }
        assert!(matches!(
            b1.on_tap_frame(&frame(CA, CB), now),
            TapDecision::Unicast { dst: 1, .. }
        ));
        // Once A's container is silent, both threads forget it within the ageing time.
        let later = now + Duration::from_secs(70);
        b0.expire(later);
        b1.expire(later);
        assert_eq!(b0.take_learned().count(), 0);
        assert_eq!(b1.on_tap_frame(&frame(CA, CB), later), TapDecision::Flood);
    }

    #[test]
    fn sealed_datagrams_open_once_in_place() {
        let (mut a, mut b) = sealed_pair();
        let arp = frame([0xff; 6], CA);
        let mut d = seal(&mut a, 2, &arp);
        assert_eq!(d.len(), 8 + crate::links::MAX_OVERHEAD + arp.len());
        assert!(!d.windows(arp.len()).any(|w| w == arp), "sealed");
        let copy = d.clone();
        let r = receive(&mut b, 1, &mut d);
        let DatagramDecision::Forward {
            deliver: Some(range),
            relay: Relay::None,
        } = r.decision.clone()
        else {
            panic!("not delivered: {r:?}")
        };
        assert_eq!(&d[range], &arp[..]);
        assert_eq!(
            &d[r.plain.clone()],
            &encap(1, 2, &arp)[..],
            "a plain datagram to relay"
        );
        // The same bytes again: a replay.
        assert_eq!(
            receive(&mut b, 1, &mut copy.clone()).decision,
            DatagramDecision::Drop
        );
        // Tampered: refused.
        let mut bad = seal(&mut a, 2, &arp);
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(
            receive(&mut b, 1, &mut bad).decision,
            DatagramDecision::Drop
        );
        // In the clear from a neighbour whose link is sealed: refused too.
        let mut clear = encap(1, 2, &arp);
        assert_eq!(
            receive(&mut b, 1, &mut clear).decision,
            DatagramDecision::Drop
        );
        let k = b.counters();
        assert_eq!(
            (
                k.udp_rx_datagrams,
                k.udp_rx_dropped_replay,
                k.udp_rx_dropped_auth
            ),
            (4, 1, 2)
        );
        // Every datagram from A counted once on A's link, sealed bytes included.
        let (ip, t) = b.link_traffic().next().unwrap();
        assert_eq!(ip, from(1).ip());
        assert_eq!(t.rx_datagrams, 4);
        assert_eq!(
            t.rx_bytes,
            (copy.len() * 3 + clear.len()) as u64,
            "the tampered one is as long as the others"
        );
    }

    #[test]
    fn without_a_link_nothing_is_sent_or_heard() {
        let (mut a, mut b) = sealed_pair();
        // C is a neighbour of B's table, but no keys were agreed with it yet.
        let mut t = b.table().clone();
        t.add_neighbour(entry(3));
        b.set_table(t);
        assert!(seal(&mut b, 3, &frame([0xff; 6], CB)).is_empty());
        let c_link = b.link_to(&entry(3));
        assert!(c_link.is_some(), "every table neighbour has a record");
        assert!(b.sender(c_link).is_err());
        let mut from_c = encap(3, 2, &frame([0xff; 6], CC));
        assert_eq!(
            receive(&mut b, 3, &mut from_c).decision,
            DatagramDecision::Drop
        );
        // A stranger's address has no record at all.
        let stranger: IpAddr = "192.0.2.66".parse().unwrap();
        assert_eq!(b.link_at(stranger), None);
        let mut d = seal(&mut a, 2, &frame([0xff; 6], CA));
        assert_eq!(
            b.on_received(None, &mut d, Instant::ZERO).decision,
            DatagramDecision::Drop
        );
        assert_eq!(b.counters().udp_rx_dropped_unknown_peer, 2);
        assert_eq!(b.counters().udp_rx_datagrams, 2);
        // A trusted (plain) link: clear both ways.
        b.set_link(from(3).ip(), 9, None, false);
        assert_eq!(
            seal(&mut b, 3, &frame([0xff; 6], CB)),
            encap(2, 3, &frame([0xff; 6], CB))
        );
        assert!(delivered(&receive(&mut b, 3, &mut from_c.clone()).decision));
        // The plain entry point takes only plain links when a password is set.
        assert!(delivered(&b.on_datagram(&from_c, from(3), Instant::ZERO)));
        let clear_from_a = encap(1, 2, &frame([0xff; 6], CA));
        assert_eq!(
            b.on_datagram(&clear_from_a, from(1), Instant::ZERO),
            DatagramDecision::Drop
        );
        assert_eq!(b.counters().udp_rx_dropped_auth, 1);
    }

    #[test]
    fn a_new_connection_takes_over_the_link() {
        let (mut a, mut b) = sealed_pair();
        let a_ip = from(1).ip();
        // Sealed under connection 7, still in flight when connection 8 replaces the keys.
        let mut late = seal(&mut a, 2, &frame([0xff; 6], CA));
        b.set_link(a_ip, 8, Some(&keys(4, 3)), false);
        a.set_link(from(2).ip(), 8, Some(&keys(3, 4)), false);
        assert!(delivered(&receive(&mut b, 1, &mut late).decision));
        let mut new = seal(&mut a, 2, &frame(CB, CA));
        assert!(delivered(&receive(&mut b, 1, &mut new).decision));
        // Once the new keys opened one, the old ones are gone.
        let mut older = {
            let (mut a7, _) = sealed_pair();
            for _ in 0..5 {
                seal(&mut a7, 2, &frame([0xff; 6], CA));
            }
            seal(&mut a7, 2, &frame([0xff; 6], CA))
        };
        assert_eq!(
            receive(&mut b, 1, &mut older).decision,
            DatagramDecision::Drop
        );
        // Removing the stale connection's link leaves the newer one.
        b.remove_link(a_ip, 7);
        assert!(b.sender(b.link_at(a_ip)).unwrap().is_some());
        b.remove_link(a_ip, 8);
        assert!(b.sender(b.link_at(a_ip)).is_err());
    }

    #[test]
    fn one_record_per_neighbour_across_tables() {
        let (_, mut b, _) = line();
        let a_link = b.link_at(from(1).ip()).unwrap();
        let c_link = b.link_at(from(3).ip()).unwrap();
        assert_ne!(a_link, c_link);
        // Sends find the same record from the table entry, without the address.
        assert_eq!(b.link_to(&b.table().next_hop(1).unwrap()), Some(a_link));
        assert_eq!(b.link_to(&b.table().broadcast_children(1)[0]), Some(c_link));
        // Path limits live in the record, by address.
        assert_eq!(b.path_mtu(c_link), None);
        b.set_path_mtu(from(3).ip(), Some(1400));
        assert_eq!(b.path_mtu(c_link), Some(1400));
        b.set_path_mtu(from(3).ip(), None);
        assert_eq!(b.path_mtu(c_link), None);
        b.count_link_tx(c_link, 100, 2);
        // C leaves the table: its datagrams are refused, its record (and traffic) stays, and
        // comes back under the same id.
        b.set_table(ForwardingTable::direct(2, &[entry(1)]));
        assert_eq!(b.link_to(&entry(3)), None);
        let mut d = encap(3, 2, &frame([0xff; 6], CC));
        assert_eq!(receive(&mut b, 3, &mut d).decision, DatagramDecision::Drop);
        assert_eq!(b.counters().udp_rx_dropped_unknown_peer, 1);
        let traffic: Vec<_> = b.link_traffic().collect();
        assert_eq!(traffic.len(), 2);
        assert!(traffic.contains(&(
            from(3).ip(),
            LinkTraffic {
                tx_bytes: 100,
                tx_datagrams: 2,
                rx_bytes: d.len() as u64,
                rx_datagrams: 1,
            }
        )));
        b.set_table(ForwardingTable::direct(2, &[entry(1), entry(3)]));
        assert_eq!(b.link_to(&entry(3)), Some(c_link));
        // A limit for an address no table named yet makes its record.
        let d_ip: IpAddr = "192.0.2.4".parse().unwrap();
        b.set_path_mtu(d_ip, Some(1200));
        assert_eq!(b.link_at(d_ip).and_then(|l| b.path_mtu(l)), Some(1200));
        // Without a password every neighbour is sent to in the clear.
        assert_eq!(b.sender(Some(a_link)).map(|s| s.is_none()), Ok(true));
        assert_eq!(b.sender(None).map(|s| s.is_none()), Ok(true));
    }
}
