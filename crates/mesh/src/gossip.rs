//! Layer: pure logic. The topology gossip protocol (channel [`TOPOLOGY_CHANNEL`]), sans-IO.
//!
//! A [`Mesh`] owns our [`Topology`], the [`Routes`] computed from it, the set of direct
//! neighbours (control connections whose handshake completed), a seeded PRNG, its timers and a
//! queue of outgoing gossip. Its driver reports connections coming and going, hands it gossip
//! payloads that arrived, wakes it at [`Mesh::poll_timeout`], and sends what
//! [`Mesh::poll_transmit`] yields as `Message::Gossip { channel: TOPOLOGY_CHANNEL, payload }`.
//!
//! Behaviour, after Weave's `mesh`:
//!
//! - A neighbour gets our full state as soon as its connection is up, and one random neighbour
//!   gets it every [`GossipConfig::full_state_interval`]. On connection up, both sides first
//!   exchange a [`TopologyGossip::Digest`] (name, version, uid per peer) and each then sends
//!   the other exactly the records it lacks: the outcome of a full-state exchange without
//!   resending what the neighbour already has (in a mesh that forms all at once, full states
//!   would otherwise dominate the gossip volume, growing with the fourth power of its size).
//! - Changes (our own record, and whatever a received update taught us) are collected for
//!   [`GossipConfig::batch_delay`], then sent as one [`TopologyGossip::Update`] to a random,
//!   topology-weighted subset of neighbours: `max(fanout_min, 2·⌈log2 n⌉)` of them (n = known
//!   peers), each weighted by 1 + the number of destinations routed through it. A record is
//!   never sent back to the neighbour it came from; records are relayed only when they were new.
//! - Garbage collection runs [`GossipConfig::gc_delay`] after a change; route recalculation
//!   [`ROUTES_DELAY`] after one (coalesced), then [`MeshEvent::TopologyChanged`] is emitted.
//! - Short-id collisions: when we share a short id with a peer whose name is smaller, we move
//!   to a random id no known peer uses ([`MeshEvent::ShortIdChanged`]).
//!
//! Bad payloads surface as [`GossipError`]s (the driver counts them and may close the
//! connection); nothing here panics on network input.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::identity::{PeerName, ShortId};
use crate::rng::Rng;
use crate::routes::Routes;
use crate::time::Instant;
use crate::topology::{ConnSummary, PeerSummary, Topology, TopologyError};

/// The gossip channel topology updates travel on.
pub const TOPOLOGY_CHANNEL: u8 = 0;

/// Route recalculation is coalesced: it runs this long after the first change it covers, so a
/// burst of updates costs one recalculation ([`MeshEvent::TopologyChanged`] follows it).
pub const ROUTES_DELAY: Duration = Duration::from_millis(50);

/// Largest payload we build on purpose (full state is split into several messages above this),
/// comfortably below the 1 MiB control-frame limit.
pub const MAX_PAYLOAD: usize = 512 * 1024;

/// A topology gossip payload, postcard-encoded.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum TopologyGossip {
    /// Everything the sender knows (possibly one of several messages).
    Full(Vec<PeerSummary>),
    /// Records that changed recently.
    Update(Vec<PeerSummary>),
    /// What the sender knows, as (name, version, uid) per peer, sent when a connection comes
    /// up. The receiver answers with an `Update` of every record the sender lacks or holds an
    /// older version of: a full-state exchange that only carries what is missing.
    Digest(Vec<(PeerName, u64, u64)>),
}

/// Gossip tunables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GossipConfig {
    /// Least number of neighbours an update goes to (all of them if we have fewer).
    pub fanout_min: usize,
    /// How long changes are collected before an update goes out.
    pub batch_delay: Duration,
    /// How often a random neighbour gets our full state.
    pub full_state_interval: Duration,
    /// Delay between a change and the garbage collection it triggers.
    pub gc_delay: Duration,
}

impl Default for GossipConfig {
    /// Weave's values, except a 100 ms batch delay (Weave: 1 s).
    fn default() -> Self {
        Self {
            fanout_min: 2,
            batch_delay: Duration::from_millis(100),
            full_state_interval: Duration::from_secs(30),
            gc_delay: Duration::from_secs(1),
        }
    }
}

/// What the driver should know about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MeshEvent {
    /// The topology changed and the routes were recomputed ([`Mesh::routes`]); also the time to
    /// refresh the connection maker's discovered targets.
    TopologyChanged,
    /// A peer nobody can reach any more was removed; forget what hangs off it.
    PeerRemoved(PeerName),
    /// We changed our short id to resolve a collision.
    ShortIdChanged(ShortId),
}

/// Why a gossip payload was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GossipError {
    /// The payload is not a valid postcard-encoded [`TopologyGossip`].
    #[error("malformed topology gossip payload")]
    Decode,
    /// The payload decoded but its content is invalid.
    #[error("invalid topology update: {0}")]
    Invalid(#[from] TopologyError),
}

/// Counters for the convergence bench and status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GossipStats {
    /// Payload bytes handed to the driver.
    pub bytes_sent: u64,
    /// Payload bytes received.
    pub bytes_received: u64,
    /// Messages handed to the driver.
    pub messages_sent: u64,
    /// Messages received (valid or not).
    pub messages_received: u64,
    /// Of the messages sent, those carrying full state.
    pub full_sent: u64,
    /// Of the bytes sent, those in full-state messages.
    pub full_bytes_sent: u64,
    /// Peer records received that were new to us.
    pub records_merged: u64,
    /// Payloads refused ([`GossipError`]).
    pub errors: u64,
}

#[derive(Clone, Debug)]
struct Neighbour {
    address: String,
    outbound: bool,
    established: bool,
    /// The newest (version, uid) of each record this neighbour is known to hold (it sent it
    /// to us, listed it in its digest, or we sent it). Records it holds are not sent again.
    known: HashMap<PeerName, (u64, u64)>,
}

impl Neighbour {
    fn learn(&mut self, name: PeerName, version: u64, uid: u64) {
        let e = self.known.entry(name).or_insert((0, 0));
        if (version, uid) > *e {
            *e = (version, uid);
        }
    }

    fn has(&self, p: &PeerSummary) -> bool {
        self.known
            .get(&p.name)
            .is_some_and(|&k| k >= (p.version, p.uid))
    }
}

/// The topology gossip state machine for the local peer.
#[derive(Debug)]
pub struct Mesh {
    config: GossipConfig,
    topology: Topology,
    routes: Routes,
    neighbours: BTreeMap<PeerName, Neighbour>,
    rng: Rng,
    /// Records to send at the next batch, each with the neighbour it came from (not sent back
    /// there); `None` for our own record.
    pending: BTreeMap<PeerName, Option<PeerName>>,
    batch_at: Option<Instant>,
    gc_at: Option<Instant>,
    routes_at: Option<Instant>,
    full_state_at: Instant,
    outgoing: VecDeque<(PeerName, Vec<u8>)>,
    events: VecDeque<MeshEvent>,
    stats: GossipStats,
}

impl Mesh {
    /// A mesh that knows only ourselves. `seed` drives every random choice.
    pub fn new(local: PeerSummary, config: GossipConfig, seed: u64, now: Instant) -> Self {
        let topology = Topology::new(local);
        let routes = Routes::compute(&topology);
        Self {
            full_state_at: now + config.full_state_interval,
            config,
            topology,
            routes,
            neighbours: BTreeMap::new(),
            rng: Rng::new(seed),
            pending: BTreeMap::new(),
            batch_at: None,
            gc_at: None,
            routes_at: None,
            outgoing: VecDeque::new(),
            events: VecDeque::new(),
            stats: GossipStats::default(),
        }
    }

    /// A control connection to `remote` finished its handshake (data path not yet
    /// established): record it in our connection list and send our full state to it.
    ///
    /// `remote_summary_hint` is (nickname, uid, short id) from the handshake; it makes a
    /// placeholder record until the peer's own summary arrives. Calling this again for a
    /// remote that is already up replaces the connection's details.
    pub fn connection_up(
        &mut self,
        now: Instant,
        remote: PeerName,
        remote_summary_hint: (String, u64, ShortId),
        address: String,
        outbound: bool,
    ) {
        if remote == self.topology.local_name() {
            return;
        }
        let (nickname, uid, short_id) = remote_summary_hint;
        self.topology
            .add_placeholder(remote, nickname, uid, short_id);
        self.neighbours.insert(
            remote,
            Neighbour {
                address,
                outbound,
                established: false,
                known: HashMap::new(),
            },
        );
        self.local_connections_changed(now);
        self.resolve_short_id_collision(now);
        self.send_digest(remote);
    }

    /// The data path of the connection to `remote` works: mark it established.
    pub fn connection_established(&mut self, now: Instant, remote: PeerName) {
        if let Some(n) = self.neighbours.get_mut(&remote) {
            if !n.established {
                n.established = true;
                self.local_connections_changed(now);
            }
        }
    }

    /// The connection to `remote` is gone.
    pub fn connection_down(&mut self, now: Instant, remote: PeerName) {
        if self.neighbours.remove(&remote).is_some() {
            self.pending.retain(|_, from| *from != Some(remote));
            self.outgoing.retain(|(to, _)| *to != remote);
            self.local_connections_changed(now);
        }
    }

    /// Handles a `Gossip { channel: TOPOLOGY_CHANNEL }` payload from direct neighbour `from`.
    pub fn handle_gossip(
        &mut self,
        now: Instant,
        from: PeerName,
        payload: &[u8],
    ) -> Result<(), GossipError> {
        self.stats.messages_received += 1;
        self.stats.bytes_received += payload.len() as u64;
        let msg: TopologyGossip = match postcard::from_bytes(payload) {
            Ok(msg) => msg,
            Err(_) => {
                self.stats.errors += 1;
                return Err(GossipError::Decode);
            }
        };
        let update = match msg {
            TopologyGossip::Full(update) | TopologyGossip::Update(update) => update,
            TopologyGossip::Digest(digest) => {
                if let Some(nb) = self.neighbours.get_mut(&from) {
                    for &(n, v, u) in &digest {
                        nb.learn(n, v, u);
                    }
                }
                self.answer_digest(from, &digest);
                return Ok(());
            }
        };
        if let Some(nb) = self.neighbours.get_mut(&from) {
            for p in &update {
                nb.learn(p.name, p.version, p.uid);
            }
        }
        let new = match self.topology.merge(&update) {
            Ok(new) => new,
            Err(e) => {
                self.stats.errors += 1;
                return Err(e.into());
            }
        };
        if new.is_empty() {
            return Ok(());
        }
        self.stats.records_merged += new.len() as u64;
        let local = self.topology.local_name();
        for s in &new {
            let origin = (s.name != local).then_some(from);
            self.pending.insert(s.name, origin);
        }
        self.schedule_batch(now);
        self.topology_changed(now);
        self.resolve_short_id_collision(now);
        Ok(())
    }

    /// Fires the timers due at `now`: batched updates, garbage collection, periodic full state.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.batch_at.is_some_and(|t| t <= now) {
            self.batch_at = None;
            self.flush_pending();
        }
        if self.gc_at.is_some_and(|t| t <= now) {
            self.gc_at = None;
            let removed = self.topology.garbage_collect();
            if !removed.is_empty() {
                for name in &removed {
                    self.pending.remove(name);
                    self.events.push_back(MeshEvent::PeerRemoved(*name));
                }
                self.routes_at = Some(now);
            }
        }
        if self.routes_at.is_some_and(|t| t <= now) {
            self.routes_at = None;
            self.routes = Routes::compute(&self.topology);
            self.events.push_back(MeshEvent::TopologyChanged);
        }
        if self.full_state_at <= now {
            self.full_state_at = now
                + self
                    .config
                    .full_state_interval
                    .max(Duration::from_millis(1));
            let n = self.neighbours.len() as u64;
            if n > 0 {
                let pick = self.rng.below(n) as usize;
                if let Some(&to) = self.neighbours.keys().nth(pick) {
                    self.send_full(to);
                }
            }
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) is due next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.batch_at,
            self.gc_at,
            self.routes_at,
            Some(self.full_state_at),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The next message to send: (neighbour, payload for `Message::Gossip { channel:
    /// TOPOLOGY_CHANNEL, payload }`).
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<(PeerName, Vec<u8>)> {
        self.outgoing.pop_front()
    }

    /// The next event, if any.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<MeshEvent> {
        self.events.pop_front()
    }

    /// The current topology.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The routes, as of the last recalculation (at most [`ROUTES_DELAY`] behind the topology).
    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    /// The direct neighbours (handshake complete), in name order, with whether each is
    /// established.
    pub fn neighbours(&self) -> impl Iterator<Item = (PeerName, bool)> + '_ {
        self.neighbours.iter().map(|(n, i)| (*n, i.established))
    }

    /// Whether [`routes`](Self::routes) reflects the current topology (no recalculation is
    /// pending).
    pub fn routes_current(&self) -> bool {
        self.routes_at.is_none()
    }

    /// Counters so far.
    pub fn stats(&self) -> GossipStats {
        self.stats
    }

    /// Encoded size, in bytes, of our whole topology as full state (every gossiped record):
    /// what one peer must receive at least once, the floor of gossip redundancy.
    pub fn full_state_size(&self) -> usize {
        let records: Vec<PeerSummary> = self
            .topology
            .peers()
            .filter(|p| p.version > 0)
            .cloned()
            .collect();
        postcard::to_allocvec(&TopologyGossip::Full(records)).map_or(0, |v| v.len())
    }

    /// Rebuilds our connection list from the neighbour set; on change, schedules an update.
    fn local_connections_changed(&mut self, now: Instant) {
        let conns = self
            .neighbours
            .iter()
            .map(|(remote, n)| ConnSummary {
                remote: *remote,
                address: n.address.clone(),
                outbound: n.outbound,
                established: n.established,
            })
            .collect();
        self.topology.set_local_connections(conns);
        // Our record, even if unchanged, goes with the next batch; an added neighbour's
        // placeholder never does (version 0).
        self.pending.insert(self.topology.local_name(), None);
        self.schedule_batch(now);
        self.topology_changed(now);
    }

    fn topology_changed(&mut self, now: Instant) {
        if self.routes_at.is_none() {
            self.routes_at = Some(now + ROUTES_DELAY);
        }
        if self.gc_at.is_none() {
            self.gc_at = Some(now + self.config.gc_delay);
        }
    }

    fn schedule_batch(&mut self, now: Instant) {
        if self.batch_at.is_none() {
            self.batch_at = Some(now + self.config.batch_delay);
        }
    }

    /// If we share our short id with a peer of smaller name, move to an unused random id.
    fn resolve_short_id_collision(&mut self, now: Instant) {
        let local = self.topology.local();
        let (name, id) = (local.name, local.short_id);
        let loses = self
            .topology
            .peers()
            .any(|p| p.short_id == id && p.name < name);
        if !loses {
            return;
        }
        let used = self.topology.len();
        if used > usize::from(ShortId::MAX) {
            return; // No free id exists; nothing sensible to do.
        }
        // Random probes first, then a scan, so this always terminates.
        let mut new = None;
        for _ in 0..64 {
            let candidate = ShortId::from_masked(self.rng.next_u64() as u16);
            if !self.topology.short_id_in_use(candidate, name) && candidate != id {
                new = Some(candidate);
                break;
            }
        }
        let new = new.or_else(|| {
            (0..=ShortId::MAX)
                .filter_map(ShortId::new)
                .find(|c| *c != id && !self.topology.short_id_in_use(*c, name))
        });
        if let Some(new) = new {
            self.topology.set_local_short_id(new);
            self.events.push_back(MeshEvent::ShortIdChanged(new));
            self.pending.insert(name, None);
            self.schedule_batch(now);
            self.topology_changed(now);
        }
    }

    /// Sends the pending records to a weighted random subset of the neighbours that have
    /// something to receive (records never go back to where they came from).
    fn flush_pending(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        if pending.is_empty() || self.neighbours.is_empty() {
            return;
        }
        let mut per_target: BTreeMap<PeerName, Vec<PeerSummary>> = BTreeMap::new();
        for (&to, nb) in &self.neighbours {
            let records: Vec<PeerSummary> = pending
                .iter()
                .filter(|(_, from)| **from != Some(to))
                .filter_map(|(name, _)| self.topology.peer(*name))
                .filter(|p| p.version > 0 && !nb.has(p))
                .cloned()
                .collect();
            if !records.is_empty() {
                per_target.insert(to, records);
            }
        }
        let candidates: Vec<PeerName> = per_target.keys().copied().collect();
        for to in self.pick_targets(candidates) {
            if let Some(records) = per_target.remove(&to) {
                self.queue_chunks(to, records, false);
            }
        }
    }

    /// `max(fanout_min, 2·⌈log2 n⌉)` of `candidates`, sampled without replacement with weight
    /// 1 + destinations routed via each.
    fn pick_targets(&mut self, candidates: Vec<PeerName>) -> Vec<PeerName> {
        let n = self.topology.len().max(2);
        let log2 = usize::BITS - (n - 1).leading_zeros(); // ceil(log2 n) for n >= 2
        let k = self.config.fanout_min.max(2 * log2 as usize);
        let mut candidates: Vec<(PeerName, u64)> = candidates
            .into_iter()
            .map(|nb| (nb, 1 + self.routes.destinations_via(nb) as u64))
            .collect();
        if candidates.len() <= k {
            return candidates.into_iter().map(|(nb, _)| nb).collect();
        }
        let mut chosen = Vec::with_capacity(k);
        for _ in 0..k {
            let total: u64 = candidates.iter().map(|(_, w)| w).sum();
            let mut x = self.rng.below(total);
            let mut idx = candidates.len() - 1;
            for (i, (_, w)) in candidates.iter().enumerate() {
                if x < *w {
                    idx = i;
                    break;
                }
                x -= w;
            }
            chosen.push(candidates.swap_remove(idx).0);
        }
        chosen.sort_unstable();
        chosen
    }

    fn send_digest(&mut self, to: PeerName) {
        let digest = self
            .topology
            .peers()
            .filter(|p| p.version > 0)
            .map(|p| (p.name, p.version, p.uid))
            .collect::<Vec<_>>();
        // A digest is ~20 bytes per peer: far below the payload limit for any sane mesh, but
        // split it anyway so no frame can exceed the limit.
        for chunk in digest.chunks(16 * 1024) {
            self.queue_payload(to, &TopologyGossip::Digest(chunk.to_vec()), false);
        }
    }

    /// Sends `to` every record its digest shows it lacks or holds an older version of.
    fn answer_digest(&mut self, to: PeerName, digest: &[(PeerName, u64, u64)]) {
        let theirs: BTreeMap<PeerName, (u64, u64)> =
            digest.iter().map(|&(n, v, u)| (n, (v, u))).collect();
        let records: Vec<PeerSummary> = self
            .topology
            .peers()
            .filter(|p| p.version > 0)
            .filter(|p| {
                theirs
                    .get(&p.name)
                    .is_none_or(|&theirs| (p.version, p.uid) > theirs)
            })
            .cloned()
            .collect();
        if !records.is_empty() {
            self.queue_chunks(to, records, false);
        }
    }

    fn send_full(&mut self, to: PeerName) {
        let records: Vec<PeerSummary> = self
            .topology
            .peers()
            .filter(|p| p.version > 0)
            .cloned()
            .collect();
        self.queue_chunks(to, records, true);
    }

    /// Queues `records` for `to`, split into payloads of at most about [`MAX_PAYLOAD`] bytes.
    fn queue_chunks(&mut self, to: PeerName, records: Vec<PeerSummary>, full: bool) {
        if let Some(nb) = self.neighbours.get_mut(&to) {
            for p in &records {
                nb.learn(p.name, p.version, p.uid);
            }
        }
        let mut chunk = Vec::new();
        let mut size = 0;
        let mut chunks = Vec::new();
        for r in records {
            let len = postcard::experimental::serialized_size(&r).unwrap_or(MAX_PAYLOAD);
            if !chunk.is_empty() && size + len > MAX_PAYLOAD {
                chunks.push(std::mem::take(&mut chunk));
                size = 0;
            }
            size += len;
            chunk.push(r);
        }
        if !chunk.is_empty() {
            chunks.push(chunk);
        }
        for chunk in chunks {
            let msg = if full {
                TopologyGossip::Full(chunk)
            } else {
                TopologyGossip::Update(chunk)
            };
            self.queue_payload(to, &msg, full);
        }
    }

    fn queue_payload(&mut self, to: PeerName, msg: &TopologyGossip, full: bool) {
        // Serializing plain data into a Vec cannot fail (no maps with non-string keys, no
        // unsupported types); skip the message rather than panic if it ever did.
        let Ok(payload) = postcard::to_allocvec(msg) else {
            return;
        };
        self.stats.messages_sent += 1;
        self.stats.bytes_sent += payload.len() as u64;
        if full {
            self.stats.full_sent += 1;
            self.stats.full_bytes_sent += payload.len() as u64;
        }
        self.outgoing.push_back((to, payload));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::tests::{name, summary};

    fn t(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    fn mesh(n: u64) -> Mesh {
        Mesh::new(summary(n, n * 10, 1, &[]), GossipConfig::default(), n, t(0))
    }

    fn up(m: &mut Mesh, now: Instant, remote: u64) {
        let hint = (
            format!("host{remote}"),
            remote * 10,
            ShortId::from_masked(remote as u16),
        );
        m.connection_up(
            now,
            name(remote),
            hint,
            format!("192.0.2.{remote}:6783"),
            true,
        );
    }

    fn decode(payload: &[u8]) -> TopologyGossip {
        postcard::from_bytes(payload).unwrap()
    }

    fn drain(m: &mut Mesh) -> Vec<(PeerName, TopologyGossip)> {
        std::iter::from_fn(|| m.poll_transmit())
            .map(|(to, p)| (to, decode(&p)))
            .collect()
    }

    fn update(records: Vec<PeerSummary>) -> Vec<u8> {
        postcard::to_allocvec(&TopologyGossip::Update(records)).unwrap()
    }

    #[test]
    fn full_state_on_connection_up_then_batched_update() {
        let mut m = mesh(1);
        // We know 3 (v2) and 4 (v1) already.
        up(&mut m, t(0), 9);
        m.handle_gossip(
            t(0),
            name(9),
            &update(vec![summary(3, 30, 2, &[9]), summary(4, 40, 1, &[9])]),
        )
        .unwrap();
        drain(&mut m);
        up(&mut m, t(0), 2);
        let sent = drain(&mut m);
        // The new neighbour first gets our digest (name, version, uid of everything we know).
        assert_eq!(sent.len(), 1);
        let (to, TopologyGossip::Digest(digest)) = &sent[0] else {
            panic!("expected a digest: {sent:?}");
        };
        assert_eq!(*to, name(2));
        let names: Vec<PeerName> = digest.iter().map(|d| d.0).collect();
        assert_eq!(
            names,
            vec![name(1), name(3), name(4)],
            "not the placeholders of 2 and 9"
        );
        // Its digest says it has 3 at v2 and 4 at v1 but an old version of us: it gets exactly
        // what it lacks (our record), i.e. the result of a full-state exchange.
        let theirs =
            TopologyGossip::Digest(vec![(name(1), 1, 10), (name(3), 2, 30), (name(4), 1, 40)]);
        m.handle_gossip(t(1), name(2), &postcard::to_allocvec(&theirs).unwrap())
            .unwrap();
        let sent = drain(&mut m);
        assert_eq!(sent.len(), 1);
        let (_, TopologyGossip::Update(records)) = &sent[0] else {
            panic!("expected the missing records");
        };
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].name, name(1));
        assert_eq!(records[0].connections[0].remote, name(2));
        assert!(!records[0].connections[0].established);
        // A neighbour that knows nothing gets everything we know.
        up(&mut m, t(2), 5);
        drain(&mut m);
        let empty = postcard::to_allocvec(&TopologyGossip::Digest(vec![])).unwrap();
        m.handle_gossip(t(2), name(5), &empty).unwrap();
        let sent = drain(&mut m);
        let TopologyGossip::Update(records) = &sent[0].1 else {
            panic!("expected records");
        };
        assert_eq!(
            records.iter().map(|r| r.name).collect::<Vec<_>>(),
            vec![name(1), name(3), name(4)]
        );

        // Routes are recalculated (coalesced) after ROUTES_DELAY, then the batched update goes
        // out after batch_delay, to neighbours that do not have our latest record yet.
        while m.poll_event().is_some() {}
        m.connection_established(t(50), name(2));
        m.handle_timeout(t(50));
        assert_eq!(m.poll_event(), Some(MeshEvent::TopologyChanged));
        assert_eq!(m.poll_timeout(), Some(t(100)));
        m.handle_timeout(t(100));
        let sent = drain(&mut m);
        assert!(!sent.is_empty());
        for (_, msg) in &sent {
            let TopologyGossip::Update(records) = msg else {
                panic!("expected update");
            };
            assert_eq!(
                records.len(),
                1,
                "only our record: the others know the rest"
            );
            assert!(
                records[0]
                    .connections
                    .iter()
                    .any(|c| c.remote == name(2) && c.established)
            );
        }
        assert_eq!(m.stats().full_sent, 0);
    }

    #[test]
    fn relays_only_new_records_never_back_to_sender() {
        let mut m = mesh(1);
        for r in [2, 3, 4] {
            up(&mut m, t(0), r);
        }
        m.handle_timeout(t(100));
        drain(&mut m);
        let x = summary(9, 90, 5, &[2]);
        let s2 = summary(2, 20, 3, &[1, 9]);
        m.handle_gossip(t(200), name(2), &update(vec![s2.clone(), x.clone()]))
            .unwrap();
        assert_eq!(m.topology().peer(name(9)), Some(&x));
        m.handle_timeout(t(300));
        let sent = drain(&mut m);
        let targets: Vec<PeerName> = sent.iter().map(|(to, _)| *to).collect();
        assert_eq!(targets, vec![name(3), name(4)], "all but the sender");
        for (_, msg) in &sent {
            assert_eq!(msg, &TopologyGossip::Update(vec![s2.clone(), x.clone()]));
        }
        // The same update again: nothing new, nothing relayed.
        m.handle_gossip(t(400), name(3), &update(vec![s2, x]))
            .unwrap();
        m.handle_timeout(t(500));
        assert!(drain(&mut m).is_empty());
        assert_eq!(m.stats().records_merged, 2);
    }

    #[test]
    fn fanout_is_bounded_and_excludes_sender() {
        let mut m = mesh(1);
        for r in 2..=41 {
            up(&mut m, t(0), r);
        }
        m.handle_timeout(t(100));
        drain(&mut m);
        // 41 known peers (+ the new one = 42): 2 * ceil(log2 42) = 12 targets.
        let x = summary(99, 990, 1, &[2]);
        m.handle_gossip(t(200), name(2), &update(vec![x])).unwrap();
        m.handle_timeout(t(300));
        let sent = drain(&mut m);
        let mut targets: Vec<PeerName> = sent.iter().map(|(to, _)| *to).collect();
        targets.dedup();
        assert!(
            targets.len() == 12 || targets.len() == 11,
            "{}",
            targets.len()
        );
        assert!(!targets.contains(&name(2)));
        // With few neighbours, all of them (but the sender).
        let mut small = mesh(1);
        up(&mut small, t(0), 2);
        up(&mut small, t(0), 3);
        small.handle_timeout(t(100));
        drain(&mut small);
        small
            .handle_gossip(t(200), name(2), &update(vec![summary(7, 70, 1, &[2])]))
            .unwrap();
        small.handle_timeout(t(300));
        let sent: Vec<PeerName> = drain(&mut small).into_iter().map(|(to, _)| to).collect();
        assert_eq!(sent, vec![name(3)]);
    }

    #[test]
    fn periodic_full_state_to_a_neighbour() {
        let mut m = mesh(1);
        up(&mut m, t(0), 2);
        up(&mut m, t(0), 3);
        m.handle_timeout(t(100));
        drain(&mut m);
        m.handle_timeout(t(30_000));
        let sent = drain(&mut m);
        assert_eq!(sent.len(), 1);
        assert!(matches!(sent[0].1, TopologyGossip::Full(_)));
        assert_eq!(m.poll_timeout(), Some(t(60_000)));
    }

    #[test]
    fn gc_after_connection_down() {
        let mut m = mesh(1);
        up(&mut m, t(0), 2);
        m.connection_established(t(0), name(2));
        m.handle_gossip(
            t(10),
            name(2),
            &update(vec![summary(2, 20, 2, &[1, 3]), summary(3, 30, 1, &[2])]),
        )
        .unwrap();
        m.handle_timeout(t(2_000));
        assert_eq!(m.topology().len(), 3);
        assert_eq!(m.routes().next_hop(name(3)), Some(name(2)));
        while m.poll_event().is_some() {}
        m.connection_down(t(3_000), name(2));
        assert_eq!(m.poll_timeout(), Some(t(3_050)));
        m.handle_timeout(t(3_050));
        assert_eq!(m.routes().next_hop(name(3)), None);
        assert_eq!(m.poll_event(), Some(MeshEvent::TopologyChanged));
        m.handle_timeout(t(3_100));
        assert_eq!(m.topology().len(), 3, "not before gc_delay");
        m.handle_timeout(t(4_000));
        let events: Vec<MeshEvent> = std::iter::from_fn(|| m.poll_event()).collect();
        assert!(events.contains(&MeshEvent::PeerRemoved(name(2))));
        assert!(events.contains(&MeshEvent::PeerRemoved(name(3))));
        assert_eq!(m.topology().len(), 1);
    }

    #[test]
    fn short_id_collision_larger_name_moves() {
        let mut m = mesh(5); // short id 5
        up(&mut m, t(0), 2);
        let mut s2 = summary(2, 20, 1, &[5]);
        s2.short_id = ShortId::from_masked(5);
        m.handle_gossip(t(10), name(2), &update(vec![s2.clone()]))
            .unwrap();
        let events: Vec<MeshEvent> = std::iter::from_fn(|| m.poll_event()).collect();
        let Some(MeshEvent::ShortIdChanged(new)) = events
            .iter()
            .find(|e| matches!(e, MeshEvent::ShortIdChanged(_)))
            .cloned()
        else {
            panic!("no ShortIdChanged in {events:?}");
        };
        assert_ne!(new, ShortId::from_masked(5));
        assert_eq!(m.topology().local().short_id, new);
        assert!(m.topology().short_id_collisions().is_empty());
        // The smaller name keeps its id.
        let mut m = mesh(1);
        up(&mut m, t(0), 2);
        let mut s2 = summary(2, 20, 1, &[1]);
        s2.short_id = ShortId::from_masked(1);
        m.handle_gossip(t(10), name(2), &update(vec![s2])).unwrap();
        assert!(
            std::iter::from_fn(|| m.poll_event())
                .all(|e| !matches!(e, MeshEvent::ShortIdChanged(_)))
        );
        assert_eq!(m.topology().local().short_id, ShortId::from_masked(1));
    }

    #[test]
    fn bad_payloads_are_errors() {
        let mut m = mesh(1);
        up(&mut m, t(0), 2);
        assert_eq!(
            m.handle_gossip(t(1), name(2), &[0xff, 0xff, 0xff]),
            Err(GossipError::Decode)
        );
        assert_eq!(
            m.handle_gossip(t(1), name(2), &[]),
            Err(GossipError::Decode)
        );
        let dup = update(vec![summary(3, 30, 1, &[]), summary(3, 30, 2, &[])]);
        assert_eq!(
            m.handle_gossip(t(1), name(2), &dup),
            Err(GossipError::Invalid(TopologyError::DuplicatePeer(name(3))))
        );
        // A short id wider than 12 bits or a name wider than 48 fails to decode.
        let mut bad =
            postcard::to_allocvec(&TopologyGossip::Update(vec![summary(3, 30, 1, &[])])).unwrap();
        let good_len = bad.len();
        bad.truncate(good_len - 1);
        assert_eq!(
            m.handle_gossip(t(1), name(2), &bad),
            Err(GossipError::Decode)
        );
        assert_eq!(m.stats().errors, 4);
        assert_eq!(m.topology().len(), 2);
    }

    /// Drives meshes wired back to back (every pair connected) until quiet: all views agree.
    #[test]
    fn small_full_mesh_converges() {
        let n = 6u64;
        let mut meshes: Vec<Mesh> = (1..=n).map(mesh).collect();
        for a in 1..=n {
            for b in 1..=n {
                if a != b {
                    up(&mut meshes[a as usize - 1], t(0), b);
                    meshes[a as usize - 1].connection_established(t(0), name(b));
                }
            }
        }
        let mut now = t(0);
        for _ in 0..200 {
            let mut moved = false;
            for i in 0..meshes.len() {
                while let Some((to, payload)) = meshes[i].poll_transmit() {
                    moved = true;
                    let from = meshes[i].topology().local_name();
                    meshes[to.get() as usize - 1]
                        .handle_gossip(now, from, &payload)
                        .unwrap();
                }
            }
            if !moved {
                now += Duration::from_millis(100);
                for m in &mut meshes {
                    m.handle_timeout(now);
                }
            }
        }
        let first: Vec<PeerSummary> = meshes[0].topology().peers().cloned().collect();
        assert_eq!(first.len(), n as usize);
        for m in &meshes {
            assert_eq!(m.topology().peers().cloned().collect::<Vec<_>>(), first);
            assert_eq!(m.routes().reachable().count(), n as usize - 1);
        }
    }
}
