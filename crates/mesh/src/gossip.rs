//! Layer: pure logic. The topology gossip protocol (channel [`TOPOLOGY_CHANNEL`]), sans-IO.
//!
//! A [`Mesh`] owns our [`Topology`], the [`Routes`] computed from it, the set of direct
//! neighbours (control connections whose handshake completed), a seeded PRNG, its timers and a
//! queue of outgoing gossip. Its driver reports connections coming and going, hands it gossip
//! payloads that arrived, wakes it at [`Mesh::poll_timeout`], and sends what
//! [`Mesh::poll_transmit`] yields as `Message::Gossip { channel: TOPOLOGY_CHANNEL, payload }`.
//!
//! What travels is per-peer versioned deltas ([`Record`]): what changed in a peer's connection
//! list since a version the receiver holds, not the whole list again (the address of a
//! connection goes out once, when it is added). The rules:
//!
//! - **What each neighbour has.** For every neighbour we track the newest (version, uid) of
//!   each peer's record it is known to hold: it sent it to us, listed it in a digest, or we
//!   sent it (control connections are reliable and ordered). A neighbour only ever gets what
//!   it lacks, as a delta from the version it holds when our history reaches back that far.
//! - **New connection: digests, then the missing records.** When a connection comes up, both
//!   sides send a [`TopologyGossip::Digest`] (name, version, uid per peer) and each answers the
//!   other's with exactly the records (or deltas) it lacks: the outcome of a full-state
//!   exchange without resending what the neighbour already has.
//! - **Changes are batched** for [`GossipConfig::batch_delay`] and then sent, never back to
//!   the neighbour they came from. The origin of a record pushes it to all its neighbours; a
//!   relay forwards a peer's record only to neighbours that are not that peer's own neighbours
//!   (it reaches them directly), and a neighbour two hops from the origin is pushed to by one
//!   relay only: the origin's neighbour with the smallest name that the receiver is connected
//!   to. Peers farther out, which several relays may reach, get an announcement (name and
//!   version) and pull the record once. When views agree, every peer gets every change about
//!   once. One addition: when a link reappears established (a path that was down came back),
//!   that relay also announces the record's new version to the link's other end, since the
//!   origin's own push may sit in TCP retransmission backoff on that very link, and the other
//!   end routes over it only once it holds the record. The announcement costs a few bytes;
//!   the other end pulls the record only if the origin's push has not come after
//!   [`GossipConfig::pull_delay`].
//! - **Pulls.** A peer asks ([`TopologyGossip::Want`]) for a record it lacks from the first
//!   neighbour that shows it, and asks nobody else while that request is out
//!   ([`REQUEST_TIMEOUT`]). A newer version of a record it holds is asked for at once if it
//!   is more than two hops from the record's origin (nobody pushes to it), but not again
//!   within [`GossipConfig::pull_delay`]: a record still changing (a peer making its
//!   connections) is announced at every version, and one pull after the delay brings all of
//!   them as one delta. Closer to the origin, it is asked for only if no delta brought it
//!   after [`GossipConfig::pull_delay`], except when no delta is coming: we are close only
//!   through a link of the origin that the link's other end no longer reports (the link went
//!   down; the origin's new record, which we are about to learn, has it gone too, and the
//!   relays no longer count us as close), or the announcement is from the peer that would
//!   push it to us (the origin, or one of its neighbours when we are not one: it did not know
//!   which version we hold, so it could not build a delta) about a record that had not
//!   changed for the pull delay (a lone change, such as a link going down, is asked for at
//!   once; a record in the middle of a burst of changes is still left to one later pull).
//! - **Repair, then silence.** A delta a receiver cannot apply (it holds too old a version, or
//!   none) is answered with [`TopologyGossip::Want`]; the sender sends the full record. Once
//!   our topology has not changed for [`GossipConfig::settle_delay`], we send each neighbour a
//!   [`TopologyGossip::Summary`] (a hash of every (name, version, uid) we hold). A settled
//!   neighbour whose hash differs answers with its digest, which starts a digest exchange that
//!   carries only what is missing. Nothing is sent periodically: a quiet mesh sends 0 B/s.
//! - Garbage collection runs [`GossipConfig::gc_delay`] after a change; route recalculation
//!   [`ROUTES_DELAY`] after one (coalesced), then [`MeshEvent::TopologyChanged`] is emitted.
//! - Short-id collisions: when we share a short id with a peer whose name is smaller, we move
//!   to a random id no known peer uses ([`MeshEvent::ShortIdChanged`]).
//!
//! Bad payloads surface as [`GossipError`]s (the driver counts them and may close the
//! connection); nothing here panics on network input.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::identity::{PeerName, ShortId};
use crate::rng::Rng;
use crate::routes::Routes;
use crate::time::Instant;
use crate::topology::{ConnSummary, PeerSummary, Record, Topology, TopologyError};

/// The gossip channel topology updates travel on.
pub const TOPOLOGY_CHANNEL: u8 = 0;

/// Route recalculation is coalesced: it runs this long after the first change it covers, so a
/// burst of updates costs one recalculation ([`MeshEvent::TopologyChanged`] follows it).
pub const ROUTES_DELAY: Duration = Duration::from_millis(50);

/// Largest payload we build on purpose (records are split into several messages above this),
/// comfortably below the 1 MiB control-frame limit.
pub const MAX_PAYLOAD: usize = 512 * 1024;

/// A record asked for from one neighbour is not asked for from another for this long (the
/// answer normally arrives within a round trip on the ordered connection).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Above this many records at once, who-lists-whom questions are answered from one pass over
/// the topology rather than a lookup each.
const LISTING_MIN: usize = 16;

/// Most entries one digest or want message may carry; more is refused as invalid input.
pub const MAX_DIGEST: usize = 16 * 1024;

/// A topology gossip payload, postcard-encoded.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum TopologyGossip {
    /// Peer records: deltas pushed as changes spread, and full records or deltas sent in
    /// answer to a [`TopologyGossip::Want`].
    Records(Vec<Record>),
    /// Records the sender holds, as (name, version, uid) per peer: all of them when a
    /// connection comes up or summaries differ, or announcements of records the receiver may
    /// lack. The receiver asks ([`TopologyGossip::Want`]) for those it lacks, each from one
    /// neighbour only. With `reply` (the list is complete), the receiver also sends its own
    /// complete digest back if the sender lacks something it holds.
    Digest {
        /// (name, version) of records the sender holds. Incarnations (uids) are left out to
        /// halve the size: a restarted peer's record outbids its old one by version, and
        /// a delta built for the wrong incarnation is refused and answered with a want.
        entries: Vec<(PeerName, u64)>,
        /// Answer with our own complete digest if the sender lacks records we hold.
        reply: bool,
    },
    /// Send these records: (name, version, uid) of what the sender holds, (0, 0) for nothing:
    /// the receiver answers with a delta from there, or the full record.
    Want(Vec<(PeerName, u64, u64)>),
    /// The sender's topology has settled; this is [`Topology::summary_hash`] of it.
    Summary(u64),
}

/// Gossip tunables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GossipConfig {
    /// Unused since gossip became deterministic (kept so configurations still build): the
    /// origin and designated relays reach every peer.
    pub fanout_min: usize,
    /// How long changes are collected before an update goes out.
    pub batch_delay: Duration,
    /// How long our topology must stay unchanged before we compare summaries with our
    /// neighbours (should exceed `gc_delay`, so both sides have garbage collected).
    pub settle_delay: Duration,
    /// Delay between a change and the garbage collection it triggers.
    pub gc_delay: Duration,
    /// How long we wait for a delta to bring an older record up to date, once a neighbour
    /// showed a newer version, before asking for it.
    pub pull_delay: Duration,
}

impl Default for GossipConfig {
    /// Weave's values, except a 100 ms batch delay (Weave: 1 s) and no periodic full state
    /// (summaries after 2 s of quiet instead).
    fn default() -> Self {
        Self {
            fanout_min: 2,
            batch_delay: Duration::from_millis(100),
            settle_delay: Duration::from_secs(2),
            gc_delay: Duration::from_secs(1),
            pull_delay: Duration::from_millis(500),
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
    /// A digest or want list longer than [`MAX_DIGEST`].
    #[error("digest or want list of {0} entries, more than {MAX_DIGEST}")]
    TooLong(usize),
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
    /// Of the messages sent, those carrying at least one full record.
    pub full_sent: u64,
    /// Of the bytes sent, those in messages carrying at least one full record.
    pub full_bytes_sent: u64,
    /// Peer records received that were new to us.
    pub records_merged: u64,
    /// Payloads refused ([`GossipError`]).
    pub errors: u64,
    /// Records sent as deltas.
    pub deltas_sent: u64,
    /// Records sent in full.
    pub full_records_sent: u64,
    /// Peers whose full record we asked for because a delta did not apply.
    pub wants_sent: u64,
    /// Bytes of complete digests sent (connection up, summaries that differed).
    pub digest_bytes_sent: u64,
    /// Bytes of announcements sent (records a neighbour may lack, for it to ask for).
    pub announce_bytes_sent: u64,
    /// Bytes of records pushed as changes spread.
    pub push_bytes_sent: u64,
    /// Bytes of records sent in answer to a want.
    pub answer_bytes_sent: u64,
    /// Bytes of wants and summaries sent.
    pub request_bytes_sent: u64,
}

#[derive(Clone, Debug)]
struct Neighbour {
    address: String,
    outbound: bool,
    established: bool,
    /// The newest (version, uid) of each record this neighbour is known to hold (it sent it
    /// to us, listed it in its digest, or we sent it). Records it holds are not sent again.
    known: Known,
}

/// Per peer name, a (version, uid): two sorted vectors, not a hash map. A node keeps one per
/// neighbour with an entry per peer (30 000 entries for 30 neighbours in a 1000-peer mesh),
/// and a hash map's buckets cost about twice the entries. New names go to a short sorted
/// vector that is merged into the main one every [`Known::MERGE_AT`] names, so inserting
/// does not move half the main vector each time.
#[derive(Clone, Debug, Default)]
struct Known {
    main: Vec<(PeerName, (u64, u64))>,
    recent: Vec<(PeerName, (u64, u64))>,
}

impl Known {
    const MERGE_AT: usize = 64;

    fn get_mut(&mut self, name: PeerName) -> Option<&mut (u64, u64)> {
        if let Ok(i) = self.main.binary_search_by_key(&name, |e| e.0) {
            return Some(&mut self.main[i].1);
        }
        match self.recent.binary_search_by_key(&name, |e| e.0) {
            Ok(i) => Some(&mut self.recent[i].1),
            Err(_) => None,
        }
    }

    fn get(&self, name: PeerName) -> Option<(u64, u64)> {
        let find = |v: &[(PeerName, (u64, u64))]| {
            v.binary_search_by_key(&name, |e| e.0).ok().map(|i| v[i].1)
        };
        find(&self.main).or_else(|| find(&self.recent))
    }

    /// Inserts a name not present.
    fn insert(&mut self, name: PeerName, value: (u64, u64)) {
        let i = self
            .recent
            .binary_search_by_key(&name, |e| e.0)
            .unwrap_or_else(|i| i);
        self.recent.insert(i, (name, value));
        if self.recent.len() < Self::MERGE_AT {
            return;
        }
        // Merge from the back, in place: both are sorted and share no name.
        let (m, r) = (self.main.len(), self.recent.len());
        self.main.reserve_exact(r);
        self.main.extend_from_slice(&self.recent);
        let (mut i, mut j) = (m, r);
        while j > 0 {
            let k = i + j - 1;
            if i > 0 && self.main[i - 1].0 > self.recent[j - 1].0 {
                self.main[k] = self.main[i - 1];
                i -= 1;
            } else {
                self.main[k] = self.recent[j - 1];
                j -= 1;
            }
        }
        self.recent.clear();
    }
}

impl Neighbour {
    fn learn(&mut self, name: PeerName, version: u64, uid: u64) {
        match self.known.get_mut(name) {
            Some(e) => {
                if (version, uid) > *e {
                    *e = (version, uid);
                }
            }
            None => self.known.insert(name, (version, uid)),
        }
    }

    fn has(&self, p: &PeerSummary) -> bool {
        self.base(p.name).is_some_and(|k| k >= (p.version, p.uid))
    }

    /// What we may build a delta from: the version it holds of that incarnation.
    fn base(&self, name: PeerName) -> Option<(u64, u64)> {
        self.known.get(name)
    }
}

/// How a record goes to a neighbour at a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Relay {
    /// As a delta (or an announcement if it would have to be the full record).
    Push,
    /// As an announcement: the neighbour pulls it if nobody pushes it.
    Announce,
    /// Not at all: someone else delivers it.
    Skip,
}

#[derive(Clone, Copy, Debug)]
struct Request {
    from: PeerName,
    at: Instant,
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
    /// For pending records of other peers: the remotes whose link in that record just came
    /// back (reappeared established). The origin's own push to such a remote may be stuck (a
    /// path that was down is exactly the one whose TCP connection sits in retransmission
    /// backoff), and the remote routes over the link only once it holds this record, so one
    /// relay announces it too (the remote pulls it if the push does not come).
    touched: BTreeMap<PeerName, BTreeSet<PeerName>>,
    batch_at: Option<Instant>,
    gc_at: Option<Instant>,
    routes_at: Option<Instant>,
    /// When to send summaries (our topology has been quiet for `settle_delay`); `None` once
    /// sent, until the next change.
    summary_at: Option<Instant>,
    /// Records we asked for: who we asked and when.
    requested: BTreeMap<PeerName, Request>,
    /// Records a neighbour holds a newer version of than we do, and when to ask for them if
    /// no delta brought us up to date by then.
    lagging: BTreeMap<PeerName, Instant>,
    /// When we last asked, at once, for a newer version of a record we hold (far from its
    /// origin); entries older than the pull delay are dropped as lagging records are asked
    /// for.
    pulled: BTreeMap<PeerName, Instant>,
    /// When we last took a new version of a peer's record, for records that changed within
    /// the pull delay (older entries are dropped at each batch).
    changed: BTreeMap<PeerName, Instant>,
    /// The earliest time in `lagging` (or earlier: removals do not move it), so that
    /// `poll_timeout`, called after every input, does not scan `lagging`.
    lagging_at: Option<Instant>,
    outgoing: VecDeque<(PeerName, Vec<u8>)>,
    events: VecDeque<MeshEvent>,
    stats: GossipStats,
}

impl Mesh {
    /// A mesh that knows only ourselves. `seed` drives every random choice.
    pub fn new(local: PeerSummary, config: GossipConfig, seed: u64, _now: Instant) -> Self {
        let topology = Topology::new(local);
        let routes = Routes::compute(&topology);
        Self {
            config,
            topology,
            routes,
            neighbours: BTreeMap::new(),
            rng: Rng::new(seed),
            pending: BTreeMap::new(),
            touched: BTreeMap::new(),
            batch_at: None,
            gc_at: None,
            routes_at: None,
            summary_at: None,
            requested: BTreeMap::new(),
            lagging: BTreeMap::new(),
            pulled: BTreeMap::new(),
            changed: BTreeMap::new(),
            lagging_at: None,
            outgoing: VecDeque::new(),
            events: VecDeque::new(),
            stats: GossipStats::default(),
        }
    }

    /// A control connection to `remote` finished its handshake (data path not yet
    /// established): record it in our connection list and start the digest exchange.
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
        let replaced = self
            .neighbours
            .insert(
                remote,
                Neighbour {
                    address,
                    outbound,
                    established: false,
                    known: Known::default(),
                },
            )
            .is_some();
        if replaced {
            // A new connection to the same peer: what we asked for on the old one may be lost.
            self.forget_requests_to(now, remote);
        }
        self.local_connections_changed(now);
        self.resolve_short_id_collision(now);
        self.send_digest(remote, false);
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
            self.forget_requests_to(now, remote);
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
        match msg {
            TopologyGossip::Records(records) => self.handle_records(now, from, &records),
            TopologyGossip::Digest { entries, reply } => {
                if entries.len() > MAX_DIGEST {
                    self.stats.errors += 1;
                    return Err(GossipError::TooLong(entries.len()));
                }
                self.handle_digest(now, from, &entries, reply);
                Ok(())
            }
            TopologyGossip::Want(entries) => {
                if entries.len() > MAX_DIGEST {
                    self.stats.errors += 1;
                    return Err(GossipError::TooLong(entries.len()));
                }
                let mut seen = BTreeSet::new();
                let records: Vec<Record> = entries
                    .iter()
                    .filter(|(n, _, _)| seen.insert(*n))
                    .filter_map(|&(n, v, u)| {
                        self.topology.record_since(n, (v > 0).then_some((v, u)))
                    })
                    .collect();
                if !records.is_empty() {
                    let before = self.stats.bytes_sent;
                    self.queue_records(from, records);
                    self.stats.answer_bytes_sent += self.stats.bytes_sent - before;
                }
                Ok(())
            }
            TopologyGossip::Summary(hash) => {
                // Only a settled side compares: an unsettled one sends its own summary later.
                if self.summary_at.is_none()
                    && self.neighbours.contains_key(&from)
                    && hash != self.topology.summary_hash()
                {
                    self.send_digest(from, true);
                }
                Ok(())
            }
        }
    }

    fn handle_records(
        &mut self,
        now: Instant,
        from: PeerName,
        records: &[Record],
    ) -> Result<(), GossipError> {
        let held: Vec<(u64, u64)> = records.iter().map(|r| self.held(r.name)).collect();
        let links_before: Vec<Vec<PeerName>> =
            records.iter().map(|r| self.remotes_of(r.name)).collect();
        let merged = match self.topology.merge_records(records) {
            Ok(m) => m,
            Err(e) => {
                self.stats.errors += 1;
                return Err(e.into());
            }
        };
        let mut want_names = merged.want.clone();
        want_names.sort_unstable();
        let wanted = |name: &PeerName| want_names.binary_search(name).is_ok();
        if let Some(nb) = self.neighbours.get_mut(&from) {
            for r in records.iter().filter(|r| !wanted(&r.name)) {
                nb.learn(r.name, r.version, r.uid);
            }
        }
        let mut answered = Vec::new();
        for r in records {
            if self.requested.get(&r.name).is_some_and(|q| q.from == from) {
                self.requested.remove(&r.name);
                answered.push(r.name);
            }
        }
        // Deltas that did not fit what we hold: ask the sender for a delta from what we hold
        // (we are behind its base), or the full record (anything else).
        let mut wants = Vec::new();
        for (r, &ours) in records.iter().zip(&held) {
            if !wanted(&r.name) {
                continue;
            }
            if ours.1 == r.uid && ours.0 > 0 && ours.0 < r.base {
                wants.push((r.name, ours.0, ours.1));
            } else {
                wants.push((r.name, 0, 0));
            }
            self.requested.insert(r.name, Request { from, at: now });
        }
        self.send_wants(from, wants);
        // A newer version may have been announced while we waited for an answer: ask for it,
        // but not again within the pull delay of asking (see `handle_digest`).
        for name in answered {
            let recent = self.pulled.get(&name).map(|&t| t + self.config.pull_delay);
            match recent.filter(|&t| t > now) {
                Some(at) => {
                    let at = *self.lagging.entry(name).or_insert(at);
                    self.lagging_at = Some(self.lagging_at.map_or(at, |t| t.min(at)));
                }
                None => self.request_from_best(now, name),
            }
        }
        if merged.new.is_empty() {
            return Ok(());
        }
        self.stats.records_merged += merged.new.len() as u64;
        let local = self.topology.local_name();
        for name in &merged.new {
            let origin = (*name != local).then_some(from);
            self.pending.insert(*name, origin);
            if origin.is_some() {
                self.changed.insert(*name, now);
            }
        }
        for (r, before) in records.iter().zip(links_before) {
            if r.name == local || merged.new.binary_search(&r.name).is_err() {
                continue;
            }
            // A link that reappears established at once is a path that came back (a new
            // connection first shows up unestablished); its other end needs this record to
            // route over it again.
            let back: Vec<PeerName> = self.topology.peer(r.name).map_or_else(Vec::new, |p| {
                p.connections
                    .iter()
                    .filter(|c| c.established && before.binary_search(&c.remote).is_err())
                    .map(|c| c.remote)
                    .collect()
            });
            if !back.is_empty() {
                self.touched.entry(r.name).or_default().extend(back);
            }
        }
        self.schedule_batch(now);
        self.topology_changed(now);
        // We hold no smaller-named peer with our short id before this merge (we would have
        // moved), unless no free id existed: only the merged records can collide.
        let ours = self.topology.local();
        let collides = self.topology.len() > usize::from(ShortId::MAX)
            || merged.new.iter().any(|n| {
                *n < ours.name
                    && self
                        .topology
                        .peer(*n)
                        .is_some_and(|p| p.short_id == ours.short_id)
            });
        if collides {
            self.resolve_short_id_collision(now);
        }
        Ok(())
    }

    /// Fires the timers due at `now`: batched updates, garbage collection, route
    /// recalculation, summaries once settled.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.batch_at.is_some_and(|t| t <= now) {
            self.batch_at = None;
            self.flush_pending();
            let delay = self.config.pull_delay;
            self.changed.retain(|_, t| *t + delay > now);
        }
        if self.gc_at.is_some_and(|t| t <= now) {
            self.gc_at = None;
            let removed = self.topology.garbage_collect();
            if !removed.is_empty() {
                for name in &removed {
                    self.pending.remove(name);
                    self.requested.remove(name);
                    self.lagging.remove(name);
                    self.pulled.remove(name);
                    self.changed.remove(name);
                    self.events.push_back(MeshEvent::PeerRemoved(*name));
                }
                self.routes_at = Some(now);
                self.summary_at = Some(now + self.config.settle_delay);
            }
        }
        if self.routes_at.is_some_and(|t| t <= now) {
            self.routes_at = None;
            self.routes = self.routes.update(&self.topology);
            self.events.push_back(MeshEvent::TopologyChanged);
        }
        if self.lagging_at.is_some_and(|t| t <= now) {
            let due: Vec<PeerName> = self
                .lagging
                .iter()
                .filter(|(_, t)| **t <= now)
                .map(|(n, _)| *n)
                .collect();
            for name in due {
                self.lagging.remove(&name);
                if !self.outstanding(now, name) {
                    self.request_from_best(now, name);
                }
            }
            self.lagging_at = self.lagging.values().min().copied();
            let delay = self.config.pull_delay;
            self.pulled.retain(|_, t| *t + delay > now);
        }
        if self.summary_at.is_some_and(|t| t <= now) {
            self.summary_at = None;
            let hash = self.topology.summary_hash();
            let to: Vec<PeerName> = self.neighbours.keys().copied().collect();
            for nb in to {
                let before = self.stats.bytes_sent;
                self.queue_payload(nb, &TopologyGossip::Summary(hash), false);
                self.stats.request_bytes_sent += self.stats.bytes_sent - before;
            }
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) is due next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let lagging = self.lagging_at;
        [
            self.batch_at,
            self.gc_at,
            self.routes_at,
            self.summary_at,
            lagging,
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
        let records: Vec<Record> = self
            .topology
            .peers()
            .filter(|p| p.version > 0)
            .map(Record::full)
            .collect();
        postcard::to_allocvec(&TopologyGossip::Records(records)).map_or(0, |v| v.len())
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
        self.summary_at = Some(now + self.config.settle_delay);
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

    /// The remotes of `name`'s connections, in name order; empty if unknown.
    fn remotes_of(&self, name: PeerName) -> Vec<PeerName> {
        self.topology.peer(name).map_or_else(Vec::new, |p| {
            p.connections.iter().map(|c| c.remote).collect()
        })
    }

    /// Whether we forward `origin`'s record to neighbour `to` (see the module docs): the
    /// origin sends its own to everyone; relays skip the origin's own neighbours and, two hops
    /// out, leave the receiver to the origin's smallest-named neighbour connected to it.
    ///
    /// `listing_to`, if given, is [`Mesh::listing`] of `to` (saves a lookup per question
    /// when many records are relayed at once).
    fn relay(&self, origin: PeerName, to: PeerName, listing_to: Option<&[PeerName]>) -> Relay {
        let local = self.topology.local_name();
        // Whether peer `m`'s record lists a connection to `to`.
        let lists_to = |m: PeerName| match listing_to {
            Some(l) => l.binary_search(&m).is_ok(),
            None => self
                .topology
                .peer(m)
                .is_some_and(|m| m.connection(to).is_some()),
        };
        if origin == local {
            return Relay::Push;
        }
        let Some(o) = self.topology.peer(origin) else {
            return Relay::Skip;
        };
        if o.connection(to).is_some() {
            // The origin reaches `to` directly, unless this change is about that very link:
            // then the smallest-named peer connected to both announces it as well.
            let touched = self.touched.get(&origin).is_some_and(|t| t.contains(&to));
            let smaller_relay = o
                .connections
                .iter()
                .take_while(|c| c.remote < local)
                .any(|c| c.remote != to && lists_to(c.remote));
            return if touched && o.connection(local).is_some() && !smaller_relay {
                Relay::Announce
            } else {
                Relay::Skip
            };
        }
        let two_hops = |below: Option<PeerName>| {
            o.connections
                .iter()
                .take_while(|c| below.is_none_or(|b| c.remote < b))
                .any(|c| lists_to(c.remote))
        };
        if o.connection(local).is_none() {
            // Two or more hops from the origin: peers two hops out are left to the origin's
            // neighbours; farther ones get an announcement (several of us may reach them, and
            // a pushed delta would arrive several times; they pull it once).
            return if two_hops(None) {
                Relay::Skip
            } else {
                Relay::Announce
            };
        }
        // We are one hop from the origin and `to` is two: the smallest-named peer among the
        // origin's neighbours that `to` is connected to relays.
        if two_hops(Some(local)) {
            Relay::Skip
        } else {
            Relay::Push
        }
    }

    /// Sends every neighbour the pending records it lacks, never back to where they came
    /// from, following the relay rule: as deltas from what it holds, or, where only a full
    /// record would do, as an announcement it pulls from one neighbour.
    fn flush_pending(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        if pending.is_empty() || self.neighbours.is_empty() {
            self.touched.clear();
            return;
        }
        let targets: Vec<PeerName> = self.neighbours.keys().copied().collect();
        for to in targets {
            let Some(nb) = self.neighbours.get(&to) else {
                continue;
            };
            // One pass over the topology beats a lookup per relay question for big batches
            // (built on first use).
            let mut listing: Option<Vec<PeerName>> = None;
            let mut deltas = Vec::new();
            let mut announce = Vec::new();
            for (&name, from) in &pending {
                if *from == Some(to) || name == to {
                    continue;
                }
                let Some(p) = self.topology.peer(name) else {
                    continue;
                };
                if p.version == 0 || nb.has(p) {
                    continue;
                }
                if listing.is_none() && pending.len() > LISTING_MIN {
                    listing = Some(self.listing(to));
                }
                let how = self.relay(name, to, listing.as_deref());
                if how == Relay::Skip {
                    continue;
                }
                // `nb` lacks this version, so there is always something to send: a delta
                // if one can be built from what it holds, else an announcement.
                let base = nb.base(name);
                let delta = (how == Relay::Push && self.topology.has_delta_since(name, base))
                    .then(|| self.topology.record_since(name, base))
                    .flatten();
                match delta {
                    Some(r) => deltas.push(r),
                    None => announce.push((name, p.version)),
                }
            }
            if !deltas.is_empty() {
                let before = self.stats.bytes_sent;
                self.queue_records(to, deltas);
                self.stats.push_bytes_sent += self.stats.bytes_sent - before;
            }
            for chunk in announce.chunks(MAX_DIGEST) {
                let msg = TopologyGossip::Digest {
                    entries: chunk.to_vec(),
                    reply: false,
                };
                let before = self.stats.bytes_sent;
                self.queue_payload(to, &msg, false);
                self.stats.announce_bytes_sent += self.stats.bytes_sent - before;
            }
        }
        self.touched.clear();
    }

    /// Learns what `from` holds and asks it for what we lack and nobody is already sending
    /// us; with `reply` (a complete digest), sends ours back if it lacks anything we hold.
    fn handle_digest(
        &mut self,
        now: Instant,
        from: PeerName,
        entries: &[(PeerName, u64)],
        reply: bool,
    ) {
        if !self.neighbours.contains_key(&from) {
            return;
        }
        // Without uids in digests we assume the incarnation we hold (0: unknown).
        let entries: Vec<(PeerName, u64, u64)> = entries
            .iter()
            .map(|&(n, v)| (n, v, self.topology.peer(n).map_or(0, |p| p.uid)))
            .collect();
        if let Some(nb) = self.neighbours.get_mut(&from) {
            for &(n, v, u) in &entries {
                nb.learn(n, v, u);
            }
        }
        let local = self.topology.local_name();
        // Built on first use, for long lists only.
        let mut listing: Option<Vec<PeerName>> = None;
        let mut wants = Vec::new();
        for &(n, v, u) in &entries {
            if n == local {
                if v > self.topology.local().version && self.topology.outbid_local(v, u) {
                    self.pending.insert(local, None);
                    self.schedule_batch(now);
                    self.topology_changed(now);
                }
                continue;
            }
            let ours = self.held(n);
            if v <= ours.0 || self.outstanding(now, n) {
                continue;
            }
            if !reply && ours.0 > 0 {
                // We hold an older version. Close to the origin, the origin or one of its
                // neighbours pushes changes to us: the delta is most likely on its way, ask
                // only if it has not come after the pull delay. But an announcement from the
                // very peer that would push to us (the origin, or a neighbour of an origin we
                // are not connected to) means it had no delta for us (it did not know which
                // version we hold): nothing is on its way. For a lone change (the record had
                // not changed for the pull delay) that counts as far; a record in a burst of
                // changes (a peer making its connections) is still left to one pull after
                // the delay. Farther out, ask at once, but not again within the pull delay:
                // a record still changing is announced at every version, and one pull then
                // brings them all as one delta instead of one delta per version.
                let at_once = self.pusher(n, from)
                    && self
                        .changed
                        .get(&n)
                        .is_none_or(|&t| t + self.config.pull_delay <= now);
                let near = !at_once && {
                    if listing.is_none() && entries.len() > LISTING_MIN {
                        listing = Some(self.listing(local));
                    }
                    self.within_two_hops(n, listing.as_deref())
                };
                let recent = self.pulled.get(&n).map(|&t| t + self.config.pull_delay);
                let later = if near {
                    Some(now + self.config.pull_delay)
                } else {
                    recent.filter(|&t| t > now)
                };
                if let Some(at) = later {
                    let at = *self.lagging.entry(n).or_insert(at);
                    self.lagging_at = Some(self.lagging_at.map_or(at, |t| t.min(at)));
                    continue;
                }
                self.pulled.insert(n, now);
            }
            wants.push((n, ours.0, ours.1));
            self.requested.insert(n, Request { from, at: now });
        }
        self.send_wants(from, wants);
        if reply {
            let theirs: BTreeMap<PeerName, u64> = entries.iter().map(|&(n, v, _)| (n, v)).collect();
            let lacking = self
                .topology
                .peers()
                .filter(|p| p.version > 0)
                .any(|p| theirs.get(&p.name).is_none_or(|&t| t < p.version));
            if lacking {
                self.send_digest(from, false);
            }
        }
    }

    /// Whether `from` is the peer that pushes `origin`'s changes to us, as far as we know:
    /// the origin itself, or one of its neighbours when we are not one (see [`Mesh::relay`]).
    /// Our own neighbours we know exactly; the origin's, as of the record we hold.
    fn pusher(&self, origin: PeerName, from: PeerName) -> bool {
        from == origin
            || (!self.neighbours.contains_key(&origin)
                && self
                    .topology
                    .peer(origin)
                    .is_some_and(|o| o.connection(from).is_some()))
    }

    /// Whether, as far as we know, we are a neighbour of `origin` or of one of its
    /// neighbours (so its changes are pushed to us rather than announced).
    ///
    /// `listing_local`, if given, is [`Mesh::listing`] of ourselves.
    fn within_two_hops(&self, origin: PeerName, listing_local: Option<&[PeerName]>) -> bool {
        let local = self.topology.local_name();
        let lists_local = |m: PeerName| match listing_local {
            Some(l) => l.binary_search(&m).is_ok(),
            None => self
                .topology
                .peer(m)
                .is_some_and(|m| m.connection(local).is_some()),
        };
        // The origin pushes to its neighbours, which we know exactly. A link of the origin
        // counts only while both ends report it: a link that just went down is still in the
        // origin's record we hold (that is what we are about to learn), but no longer in the
        // other end's, and nobody pushes to us through it.
        self.neighbours.contains_key(&origin)
            || self.topology.peer(origin).is_some_and(|o| {
                o.connections.iter().any(|c| {
                    lists_local(c.remote)
                        && self
                            .topology
                            .peer(c.remote)
                            .is_some_and(|m| m.connection(origin).is_some())
                })
            })
    }

    /// The known peers whose record lists a connection to `to`, in name order.
    fn listing(&self, to: PeerName) -> Vec<PeerName> {
        self.topology
            .peers()
            .filter(|p| p.connection(to).is_some())
            .map(|p| p.name)
            .collect()
    }

    /// (version, uid) of our gossiped record of `name`; (0, 0) if none.
    fn held(&self, name: PeerName) -> (u64, u64) {
        self.topology
            .peer(name)
            .filter(|p| p.version > 0)
            .map_or((0, 0), |p| (p.version, p.uid))
    }

    fn outstanding(&self, now: Instant, name: PeerName) -> bool {
        self.requested
            .get(&name)
            .is_some_and(|r| r.at + REQUEST_TIMEOUT > now)
    }

    /// Asks the neighbour known to hold the newest version of `name` for it, if that is newer
    /// than ours.
    fn request_from_best(&mut self, now: Instant, name: PeerName) {
        let ours = self.held(name);
        let best = self
            .neighbours
            .iter()
            .filter_map(|(nb, n)| n.known.get(name).map(|k| (k, *nb)))
            .filter(|(k, _)| *k > ours)
            .max();
        if let Some((_, from)) = best {
            self.requested.insert(name, Request { from, at: now });
            self.send_wants(from, vec![(name, ours.0, ours.1)]);
        }
    }

    /// Our requests to `remote` may never be answered: ask someone else (or nobody yet).
    fn forget_requests_to(&mut self, now: Instant, remote: PeerName) {
        let lost: Vec<PeerName> = self
            .requested
            .iter()
            .filter(|(_, r)| r.from == remote)
            .map(|(n, _)| *n)
            .collect();
        for name in lost {
            self.requested.remove(&name);
            self.request_from_best(now, name);
        }
    }

    fn send_wants(&mut self, to: PeerName, wants: Vec<(PeerName, u64, u64)>) {
        self.stats.wants_sent += wants.len() as u64;
        for chunk in wants.chunks(MAX_DIGEST) {
            let before = self.stats.bytes_sent;
            self.queue_payload(to, &TopologyGossip::Want(chunk.to_vec()), false);
            self.stats.request_bytes_sent += self.stats.bytes_sent - before;
        }
    }

    fn send_digest(&mut self, to: PeerName, reply: bool) {
        let digest = self
            .topology
            .peers()
            .filter(|p| p.version > 0)
            .map(|p| (p.name, p.version))
            .collect::<Vec<_>>();
        // A digest is ~10 bytes per peer: far below the payload limit for any sane mesh, but
        // split it anyway so no frame can exceed the limit.
        for chunk in digest.chunks(MAX_DIGEST) {
            let msg = TopologyGossip::Digest {
                entries: chunk.to_vec(),
                reply,
            };
            let before = self.stats.bytes_sent;
            self.queue_payload(to, &msg, false);
            self.stats.digest_bytes_sent += self.stats.bytes_sent - before;
        }
    }

    /// Queues `records` for `to`, split into payloads of at most about [`MAX_PAYLOAD`] bytes,
    /// and notes that `to` now holds them.
    fn queue_records(&mut self, to: PeerName, records: Vec<Record>) {
        if let Some(nb) = self.neighbours.get_mut(&to) {
            for r in &records {
                nb.learn(r.name, r.version, r.uid);
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
            let full = chunk.iter().filter(|r| r.is_full()).count() as u64;
            self.stats.full_records_sent += full;
            self.stats.deltas_sent += chunk.len() as u64 - full;
            self.queue_payload(to, &TopologyGossip::Records(chunk), full > 0);
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
    use crate::topology::Change;
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

    fn encode(msg: &TopologyGossip) -> Vec<u8> {
        postcard::to_allocvec(msg).unwrap()
    }

    /// Full records of these summaries, as one payload.
    fn records(summaries: Vec<PeerSummary>) -> Vec<u8> {
        encode(&TopologyGossip::Records(
            summaries.iter().map(Record::full).collect(),
        ))
    }

    fn digest(entries: &[(u64, u64)], reply: bool) -> Vec<u8> {
        encode(&TopologyGossip::Digest {
            entries: entries.iter().map(|&(n, v)| (name(n), v)).collect(),
            reply,
        })
    }

    #[test]
    fn known_versions_keep_every_name_in_any_insertion_order() {
        let mut k = Known::default();
        let mut reference = BTreeMap::new();
        let mut x: u64 = 7;
        for step in 0..2000u64 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let n = name(1 + (x >> 33) % 700);
            let v = (step, x >> 40);
            match k.get_mut(n) {
                Some(e) => *e = v,
                None => k.insert(n, v),
            }
            reference.insert(n, v);
        }
        for n in 0..=701 {
            assert_eq!(k.get(name(n)), reference.get(&name(n)).copied(), "{n}");
        }
        assert!(k.main.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(k.main.len() + k.recent.len(), reference.len());
    }

    #[test]
    fn connection_up_exchanges_digests_and_pulls_only_what_is_missing() {
        let mut m = mesh(1);
        up(&mut m, t(0), 9);
        m.handle_gossip(
            t(0),
            name(9),
            &records(vec![
                summary(3, 30, 2, &[9]),
                summary(4, 40, 1, &[9]),
                summary(9, 90, 1, &[1, 3, 4]),
            ]),
        )
        .unwrap();
        m.handle_timeout(t(100));
        drain(&mut m);
        up(&mut m, t(200), 2);
        let sent = drain(&mut m);
        // The new neighbour gets our digest (name and version of every gossiped record; not
        // the placeholder of 2).
        let [(to, TopologyGossip::Digest { entries, reply })] = &sent[..] else {
            panic!("expected one digest: {sent:?}");
        };
        assert_eq!(*to, name(2));
        assert!(!reply);
        assert_eq!(
            entries,
            &vec![
                (name(1), m.topology().local().version),
                (name(3), 2),
                (name(4), 1),
                (name(9), 1)
            ]
        );
        // Its digest: 3 at v2 (as ours), 4 at v3 (newer), 7 at v1 (unknown to us). We ask at
        // once for what we lack entirely; 4 is two hops from us (via 9), so its newer version
        // is probably on its way as a delta and is asked for only if it has not come after
        // pull_delay.
        m.handle_gossip(t(210), name(2), &digest(&[(3, 2), (4, 3), (7, 1)], false))
            .unwrap();
        let sent = drain(&mut m);
        assert_eq!(
            sent,
            vec![(name(2), TopologyGossip::Want(vec![(name(7), 0, 0)]))]
        );
        // Another neighbour announcing 7 while the request is out does not cause a second.
        up(&mut m, t(220), 5);
        drain(&mut m);
        m.handle_gossip(t(230), name(5), &digest(&[(7, 1)], false))
            .unwrap();
        assert!(drain(&mut m).is_empty());
        m.handle_timeout(m.poll_timeout().unwrap());
        let mut now = t(230);
        let mut wants = Vec::new();
        while now < t(1000) {
            now = m
                .poll_timeout()
                .unwrap()
                .max(now + Duration::from_millis(1));
            m.handle_timeout(now);
            wants.extend(
                drain(&mut m)
                    .into_iter()
                    .filter(|(_, msg)| matches!(msg, TopologyGossip::Want(_))),
            );
        }
        assert_eq!(
            wants,
            vec![(name(2), TopologyGossip::Want(vec![(name(4), 1, 40)]))],
            "4 is pulled as a delta from the version we hold, after pull_delay"
        );
    }

    #[test]
    fn wants_are_answered_with_deltas_or_full_records() {
        let mut m = mesh(1);
        up(&mut m, t(0), 2);
        m.handle_timeout(t(100));
        drain(&mut m);
        let ours = m.topology().local().clone();
        assert_eq!(ours.version, 2);
        // A neighbour holding our v1 gets only the connection added since.
        let want = encode(&TopologyGossip::Want(vec![
            (name(1), 1, 10),
            (name(2), 0, 0),
        ]));
        m.handle_gossip(t(200), name(2), &want).unwrap();
        let sent = drain(&mut m);
        let [(_, TopologyGossip::Records(rs))] = &sent[..] else {
            panic!("{sent:?}");
        };
        // 2 is a placeholder to us: nothing to send for it.
        assert_eq!(rs.len(), 1);
        assert_eq!(rs[0].base, 1);
        assert_eq!(rs[0].version, 2);
        assert_eq!(rs[0].ident, None);
        assert_eq!(
            rs[0].changes,
            vec![Change::Add {
                remote: name(2),
                address: "192.0.2.2:6783".into(),
                outbound: true,
                established: false,
            }]
        );
        // Nothing (0, 0) or another incarnation: the full record.
        let want = encode(&TopologyGossip::Want(vec![(name(1), 1, 11)]));
        m.handle_gossip(t(300), name(2), &want).unwrap();
        let sent = drain(&mut m);
        let [(_, TopologyGossip::Records(rs))] = &sent[..] else {
            panic!("{sent:?}");
        };
        assert!(rs[0].is_full());
        assert_eq!(rs[0], Record::full(&ours));
        assert_eq!(m.stats().full_records_sent, 1);
        assert_eq!(m.stats().deltas_sent, 1);
    }

    #[test]
    fn changes_go_out_as_deltas_batched_never_back_to_the_sender() {
        let mut m = mesh(1);
        for r in [2, 3, 4] {
            up(&mut m, t(0), r);
            // Each neighbour shows it holds nothing yet.
            m.handle_gossip(t(0), name(r), &digest(&[], false)).unwrap();
        }
        m.handle_timeout(t(100));
        let sent = drain(&mut m);
        // Our own record (new to them): announced, then pulled.
        assert!(sent.iter().all(|(_, msg)| matches!(
            msg,
            TopologyGossip::Digest { .. } | TopologyGossip::Want(_)
        )));
        let s2 = summary(2, 20, 3, &[1, 9]);
        let s9 = summary(9, 90, 5, &[2]);
        m.handle_gossip(t(200), name(2), &records(vec![s2.clone(), s9.clone()]))
            .unwrap();
        assert_eq!(m.topology().peer(name(9)), Some(&s9));
        m.handle_timeout(t(300));
        let sent = drain(&mut m);
        // 3 and 4 lack both records entirely: announced (not pushed), never to 2.
        let targets: Vec<PeerName> = sent.iter().map(|(to, _)| *to).collect();
        assert_eq!(targets, vec![name(3), name(4)], "all but the sender");
        for (_, msg) in &sent {
            assert_eq!(
                msg,
                &TopologyGossip::Digest {
                    entries: vec![(name(2), 3), (name(9), 5)],
                    reply: false
                }
            );
        }
        // 3 pulls them; later 2 adds a connection: 3 gets just that, as a delta.
        let want = encode(&TopologyGossip::Want(vec![
            (name(2), 0, 0),
            (name(9), 0, 0),
        ]));
        m.handle_gossip(t(310), name(3), &want).unwrap();
        let sent = drain(&mut m);
        assert_eq!(sent.len(), 1);
        let mut s2b = summary(2, 20, 4, &[1, 5, 9]);
        s2b.connections[1].established = false;
        let delta = Record {
            name: name(2),
            uid: 20,
            version: 4,
            base: 3,
            ident: None,
            changes: vec![Change::Add {
                remote: name(5),
                address: "192.0.2.5:6783".into(),
                outbound: true,
                established: false,
            }],
        };
        m.handle_gossip(
            t(400),
            name(2),
            &encode(&TopologyGossip::Records(vec![delta.clone()])),
        )
        .unwrap();
        assert_eq!(m.topology().peer(name(2)), Some(&s2b));
        m.handle_timeout(t(500));
        let sent = drain(&mut m);
        assert_eq!(
            sent,
            vec![
                (name(3), TopologyGossip::Records(vec![delta])),
                (
                    name(4),
                    TopologyGossip::Digest {
                        entries: vec![(name(2), 4)],
                        reply: false
                    }
                ),
            ]
        );
        // The same records again: nothing new, nothing relayed.
        m.handle_gossip(t(600), name(3), &records(vec![s2b, s9]))
            .unwrap();
        m.handle_timeout(t(700));
        assert!(drain(&mut m).is_empty());
    }

    #[test]
    fn relays_leave_the_origins_neighbours_and_designated_peers_alone() {
        // 2 (the origin) is connected to 1, 3 and 4; 5 is connected to 1 and 4 (not to 2);
        // 6 only to us. A change of 2's record, seen from 4 (one hop from 2): 3 gets it from
        // 2 directly; 5 from 1 (the smaller name of 2's neighbours connected to 5); 6 from us.
        let mut m = mesh(4);
        for r in [2, 3, 5, 6] {
            up(&mut m, t(0), r);
        }
        let world = vec![
            summary(1, 10, 1, &[2, 5]),
            summary(3, 30, 1, &[2, 4]),
            summary(5, 50, 1, &[1, 4]),
            summary(6, 60, 1, &[4]),
        ];
        for r in [3, 5, 6] {
            m.handle_gossip(t(0), name(r), &records(world.clone()))
                .unwrap();
            m.handle_gossip(t(0), name(r), &records(vec![summary(2, 20, 1, &[1, 3, 4])]))
                .unwrap();
        }
        m.handle_timeout(t(100));
        drain(&mut m);
        m.handle_gossip(
            t(200),
            name(2),
            &records(vec![summary(2, 20, 2, &[1, 3, 4, 7])]),
        )
        .unwrap();
        m.handle_timeout(t(300));
        let to: Vec<PeerName> = drain(&mut m).into_iter().map(|(to, _)| to).collect();
        assert_eq!(to, vec![name(6)]);

        // The same from 1's point of view: 1 is the designated relay for 5.
        let mut m = mesh(1);
        for r in [2, 5] {
            up(&mut m, t(0), r);
        }
        let world = vec![
            summary(2, 20, 1, &[1, 3, 4]),
            summary(3, 30, 1, &[2, 4]),
            summary(4, 40, 1, &[2, 3, 5]),
            summary(5, 50, 1, &[1, 4]),
        ];
        m.handle_gossip(t(0), name(5), &records(world)).unwrap();
        m.handle_timeout(t(100));
        drain(&mut m);
        m.handle_gossip(
            t(200),
            name(2),
            &records(vec![summary(2, 20, 2, &[1, 3, 4, 7])]),
        )
        .unwrap();
        m.handle_timeout(t(300));
        let to: Vec<PeerName> = drain(&mut m).into_iter().map(|(to, _)| to).collect();
        assert_eq!(to, vec![name(5)]);
    }

    #[test]
    fn a_link_that_comes_back_is_announced_to_its_other_end() {
        // 1, 2, 3 fully connected, and 4 connected to all. When 2's link to 3 comes back
        // (reappears established after 2 had taken it out), 2's own push to 3 may sit in TCP
        // backoff on that very link, and 3 routes over the link only once it holds 2's
        // record: so the smallest-named peer connected to both (1) announces 2's new version
        // to 3 (name and version, not the record: 3 pulls it only if 2's push does not come),
        // and 4 leaves it to 1. A new link (first seen unestablished) reaches 3 from 2 alone.
        let world = |v2: u64, conns2: &[u64]| {
            vec![
                summary(1, 10, 1, &[2, 3, 4]),
                summary(2, 20, v2, conns2),
                summary(3, 30, 1, &[1, 2, 4]),
                summary(4, 40, 1, &[1, 2, 3]),
            ]
        };
        let sent = |m: &mut Mesh, at: u64, record: PeerSummary| {
            m.handle_gossip(t(at), name(2), &records(vec![record]))
                .unwrap();
            m.handle_timeout(t(at + 100));
            drain(m)
        };
        for (local, others, relays) in [(1, [2, 3, 4], true), (4, [1, 2, 3], false)] {
            let mut m = mesh(local);
            for r in others {
                up(&mut m, t(0), r);
                m.connection_established(t(0), name(r));
            }
            m.handle_gossip(t(0), name(others[0]), &records(world(1, &[1, 3, 4])))
                .unwrap();
            m.handle_timeout(t(100));
            drain(&mut m);
            // Without the link, 3 is two hops from 2 and the usual relay rule applies.
            sent(&mut m, 200, summary(2, 20, 2, &[1, 4]));
            let to_3: Vec<TopologyGossip> = sent(&mut m, 400, summary(2, 20, 3, &[1, 3, 4]))
                .into_iter()
                .filter(|(to, _)| *to == name(3))
                .map(|(_, msg)| msg)
                .collect();
            let announced = vec![TopologyGossip::Digest {
                entries: vec![(name(2), 3)],
                reply: false,
            }];
            if relays {
                assert_eq!(to_3, announced, "seen from {local}, 2-3 back");
            } else {
                assert_eq!(to_3, vec![], "seen from {local}, 2-3 back");
            }
            let mut new_link = summary(2, 20, 4, &[1, 3, 4, 5]);
            new_link.connections[3].established = false;
            let to = sent(&mut m, 600, new_link);
            assert!(
                to.iter().all(|(to, _)| *to != name(3)),
                "seen from {local}, 2-5 new: {to:?}"
            );
        }
    }

    #[test]
    fn the_other_end_of_a_link_that_came_back_pulls_it_unless_the_push_comes() {
        // We are 3, connected to 1, 2 and 4; 2 took its link to us out (v2). 1 announces that
        // 2 is at v3 (the link is back): we ask 1 for it after the pull delay, unless 2's own
        // delta arrives first.
        for push_comes in [false, true] {
            let mut m = mesh(3);
            for r in [1, 2, 4] {
                up(&mut m, t(0), r);
                m.connection_established(t(0), name(r));
            }
            m.handle_gossip(
                t(0),
                name(1),
                &records(vec![
                    summary(1, 10, 1, &[2, 3, 4]),
                    summary(2, 20, 2, &[1, 4]),
                    summary(4, 40, 1, &[1, 2, 3]),
                ]),
            )
            .unwrap();
            m.handle_timeout(t(100));
            drain(&mut m);
            m.handle_gossip(t(200), name(1), &digest(&[(2, 3)], false))
                .unwrap();
            m.handle_timeout(t(300));
            assert_eq!(drain(&mut m), vec![], "no pull before the delay");
            if push_comes {
                let delta = Record {
                    name: name(2),
                    uid: 20,
                    version: 3,
                    base: 2,
                    ident: None,
                    changes: vec![Change::Add {
                        remote: name(3),
                        address: "192.0.2.3:6783".into(),
                        outbound: true,
                        established: true,
                    }],
                };
                m.handle_gossip(
                    t(400),
                    name(2),
                    &encode(&TopologyGossip::Records(vec![delta])),
                )
                .unwrap();
            }
            let pull_at = 200 + GossipConfig::default().pull_delay.as_millis() as u64;
            m.handle_timeout(t(pull_at));
            let wants: Vec<_> = drain(&mut m)
                .into_iter()
                .filter(|(_, msg)| matches!(msg, TopologyGossip::Want(_)))
                .collect();
            if push_comes {
                assert_eq!(wants, vec![]);
                assert_eq!(m.topology().peer(name(2)).unwrap().version, 3);
            } else {
                assert_eq!(
                    wants,
                    vec![(name(1), TopologyGossip::Want(vec![(name(2), 2, 20)]))]
                );
            }
        }
    }

    #[test]
    fn near_the_origin_an_announcement_is_pulled_at_once_when_no_push_is_coming() {
        let wants = |m: &mut Mesh| -> Vec<_> {
            drain(m)
                .into_iter()
                .filter(|(_, msg)| matches!(msg, TopologyGossip::Want(_)))
                .collect()
        };
        let delay = GossipConfig::default().pull_delay.as_millis() as u64;
        // We are 5, connected to 1 and 6; 2 (the origin) is connected to 1 and 3. 1 pushes
        // 2's changes to us; an announcement from it means it had no delta for us (it did not
        // know which version we hold). For a lone change (2's record had not changed for the
        // pull delay) we ask it at once. The same announcement from 6 (not a neighbour of 2)
        // may run ahead of 1's push, and in a burst of changes (2's record changed within the
        // pull delay) one pull later brings them all: then we wait the pull delay.
        for (from, quiet, at_once) in [(1, true, true), (6, true, false), (1, false, false)] {
            let mut m = mesh(5);
            up(&mut m, t(0), 1);
            up(&mut m, t(0), 6);
            m.handle_gossip(
                t(0),
                name(1),
                &records(vec![
                    summary(1, 10, 1, &[2, 5]),
                    summary(2, 20, 1, &[1, 3]),
                    summary(3, 30, 1, &[2]),
                    summary(6, 60, 1, &[3, 5]),
                ]),
            )
            .unwrap();
            m.handle_timeout(t(100));
            drain(&mut m);
            // 2's record last changed at 0 (when we took it).
            let at = if quiet { delay } else { delay - 1 };
            m.handle_gossip(t(at), name(from), &digest(&[(2, 2)], false))
                .unwrap();
            let asked = vec![(name(from), TopologyGossip::Want(vec![(name(2), 1, 20)]))];
            let case = format!("from {from}, quiet {quiet}");
            if at_once {
                assert_eq!(wants(&mut m), asked, "{case}");
            } else {
                assert_eq!(wants(&mut m), vec![], "{case}: not before the delay");
                m.handle_timeout(t(at + delay));
                assert_eq!(wants(&mut m), asked, "{case}: after the delay");
            }
        }
        // We are 5, connected to 3 and 6; 2 is connected to 3 and 7, 7 to 6. The link 2-3
        // goes down: 3's record without it has reached us, 2's has not. We were two hops
        // from 2 only through that link: nobody pushes 2's new record to us, so 6's
        // announcement of it is pulled at once. While 3 still reports the link, we wait.
        for (link_down, at_once) in [(true, true), (false, false)] {
            let mut m = mesh(5);
            up(&mut m, t(0), 3);
            up(&mut m, t(0), 6);
            m.handle_gossip(
                t(0),
                name(3),
                &records(vec![
                    summary(2, 20, 1, &[3, 7]),
                    summary(3, 30, 1, &[2, 5]),
                    summary(6, 60, 1, &[5, 7]),
                    summary(7, 70, 1, &[2, 6]),
                ]),
            )
            .unwrap();
            m.handle_timeout(t(100));
            drain(&mut m);
            if link_down {
                m.handle_gossip(t(150), name(3), &records(vec![summary(3, 30, 2, &[5])]))
                    .unwrap();
                drain(&mut m);
            }
            m.handle_gossip(t(200), name(6), &digest(&[(2, 2)], false))
                .unwrap();
            let asked = vec![(name(6), TopologyGossip::Want(vec![(name(2), 1, 20)]))];
            if at_once {
                assert_eq!(wants(&mut m), asked, "link down");
            } else {
                assert_eq!(wants(&mut m), vec![], "link up: not before the delay");
                m.handle_timeout(t(200 + delay));
                assert_eq!(wants(&mut m), asked, "link up: after the delay");
            }
        }
    }

    #[test]
    fn far_from_the_origin_changes_are_announced_and_pulled_at_most_once_per_delay() {
        // 2 - 1 - 6 - 7 - 8: we are 7, three hops from 2; 8 is four.
        let world = vec![
            summary(1, 10, 1, &[2, 6]),
            summary(2, 20, 1, &[1]),
            summary(6, 60, 1, &[1, 7]),
            summary(8, 80, 1, &[7]),
        ];
        let mut m = mesh(7);
        up(&mut m, t(0), 6);
        up(&mut m, t(0), 8);
        m.handle_gossip(t(0), name(6), &records(world.clone()))
            .unwrap();
        // 8 holds 2 at v1 too (it says so in its digest).
        m.handle_gossip(t(0), name(8), &digest(&[(2, 1), (8, 1)], false))
            .unwrap();
        m.handle_timeout(t(100));
        drain(&mut m);
        let delta = Record {
            name: name(2),
            uid: 20,
            version: 2,
            base: 1,
            ident: None,
            changes: vec![Change::Down(name(1))],
        };
        m.handle_gossip(
            t(200),
            name(6),
            &encode(&TopologyGossip::Records(vec![delta.clone()])),
        )
        .unwrap();
        m.handle_timeout(t(300));
        // Several peers two hops from 2 may reach 8: we announce rather than push.
        assert_eq!(
            drain(&mut m),
            vec![(
                name(8),
                TopologyGossip::Digest {
                    entries: vec![(name(2), 2)],
                    reply: false
                }
            )]
        );
        // 8 (four hops from 2, nobody pushes to it) asks at once; a newer version announced
        // meanwhile is asked for once the pull delay since the first ask has passed (all
        // versions since in one delta), not as soon as the first answer is in.
        let mut far = mesh(8);
        up(&mut far, t(0), 7);
        let mut world = world;
        world.push(summary(7, 70, 1, &[6, 8]));
        world.retain(|p| p.name != name(8));
        far.handle_gossip(t(0), name(7), &records(world)).unwrap();
        drain(&mut far);
        let wants = |m: &mut Mesh| -> Vec<_> {
            drain(m)
                .into_iter()
                .filter(|(_, msg)| matches!(msg, TopologyGossip::Want(_)))
                .collect()
        };
        far.handle_gossip(t(300), name(7), &digest(&[(2, 2)], false))
            .unwrap();
        assert_eq!(
            wants(&mut far),
            vec![(name(7), TopologyGossip::Want(vec![(name(2), 1, 20)]))]
        );
        far.handle_gossip(t(400), name(7), &digest(&[(2, 3)], false))
            .unwrap();
        far.handle_gossip(
            t(450),
            name(7),
            &encode(&TopologyGossip::Records(vec![delta])),
        )
        .unwrap();
        assert_eq!(far.topology().peer(name(2)).unwrap().version, 2);
        assert_eq!(wants(&mut far), vec![], "not again at once");
        let pull_at = 300 + GossipConfig::default().pull_delay.as_millis() as u64;
        far.handle_timeout(t(pull_at - 1));
        assert_eq!(wants(&mut far), vec![], "not before the delay");
        far.handle_timeout(t(pull_at));
        assert_eq!(
            wants(&mut far),
            vec![(name(7), TopologyGossip::Want(vec![(name(2), 2, 20)]))]
        );
        // A record it does not hold at all is asked for at once.
        far.handle_gossip(t(900), name(7), &digest(&[(9, 4)], false))
            .unwrap();
        assert_eq!(
            wants(&mut far),
            vec![(name(7), TopologyGossip::Want(vec![(name(9), 0, 0)]))]
        );
    }

    #[test]
    fn undeliverable_deltas_are_asked_for() {
        let mut m = mesh(1);
        up(&mut m, t(0), 2);
        m.handle_gossip(t(0), name(2), &records(vec![summary(3, 30, 2, &[2])]))
            .unwrap();
        drain(&mut m);
        // A delta from v5 of 3 (we hold v2) and one of 8 (unknown to us).
        let delta = |n: u64, uid: u64, base: u64| Record {
            name: name(n),
            uid,
            version: base + 1,
            base,
            ident: None,
            changes: vec![Change::Remove(name(2))],
        };
        let msg = TopologyGossip::Records(vec![delta(3, 30, 5), delta(8, 80, 5)]);
        m.handle_gossip(t(10), name(2), &encode(&msg)).unwrap();
        assert_eq!(
            m.topology().peer(name(3)).unwrap().version,
            2,
            "not applied"
        );
        assert_eq!(
            drain(&mut m),
            vec![(
                name(2),
                TopologyGossip::Want(vec![(name(3), 2, 30), (name(8), 0, 0)])
            )]
        );
        assert_eq!(m.stats().wants_sent, 2);
    }

    #[test]
    fn settled_mesh_is_silent_and_summaries_repair_a_miss() {
        let mut a = mesh(1);
        let mut b = mesh(2);
        let deliver = |from: &mut Mesh, to: &mut Mesh, now: Instant, drop_records: bool| {
            let mut moved = false;
            while let Some((dest, payload)) = from.poll_transmit() {
                moved = true;
                if dest != to.topology().local_name() {
                    continue; // 3 is not simulated.
                }
                if drop_records && matches!(decode(&payload), TopologyGossip::Records(_)) {
                    continue;
                }
                to.handle_gossip(now, from.topology().local_name(), &payload)
                    .unwrap();
            }
            moved
        };
        let run = |a: &mut Mesh, b: &mut Mesh, from: Instant, until: Instant, lossy: bool| {
            let mut now = from;
            let mut bytes = 0;
            loop {
                while deliver(a, b, now, lossy) | deliver(b, a, now, false) {}
                let next = [a.poll_timeout(), b.poll_timeout()]
                    .into_iter()
                    .flatten()
                    .min();
                match next {
                    Some(n) if n <= until => {
                        now = n.max(now);
                        a.handle_timeout(now);
                        b.handle_timeout(now);
                    }
                    _ => break,
                }
                bytes = a.stats().bytes_sent + b.stats().bytes_sent;
            }
            bytes
        };
        up(&mut a, t(0), 2);
        up(&mut b, t(0), 1);
        a.connection_established(t(10), name(2));
        b.connection_established(t(10), name(1));
        let settled = run(&mut a, &mut b, t(0), t(60_000), false);
        assert_eq!(a.topology().summary_hash(), b.topology().summary_hash());
        assert_eq!(a.poll_timeout(), None, "nothing scheduled once settled");
        assert_eq!(b.poll_timeout(), None);
        assert!(settled > 0);

        // a connects to 3 and learns its record; the records a sends b meanwhile are lost.
        up(&mut a, t(60_000), 3);
        a.handle_gossip(t(60_000), name(3), &records(vec![summary(3, 30, 4, &[1])]))
            .unwrap();
        run(&mut a, &mut b, t(60_000), t(60_500), true);
        assert!(b.topology().peer(name(3)).is_none());
        // After settle_delay the summaries differ; digests and a want repair it, then silence.
        run(&mut a, &mut b, t(60_500), t(120_000), false);
        assert_eq!(a.topology().summary_hash(), b.topology().summary_hash());
        assert_eq!(b.topology().peer(name(3)).unwrap().version, 4);
        assert_eq!(a.poll_timeout(), None);
    }

    #[test]
    fn gc_after_connection_down() {
        let mut m = mesh(1);
        up(&mut m, t(0), 2);
        m.connection_established(t(0), name(2));
        m.handle_gossip(
            t(10),
            name(2),
            &records(vec![summary(2, 20, 2, &[1, 3]), summary(3, 30, 1, &[2])]),
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
        m.handle_gossip(t(10), name(2), &records(vec![s2.clone()]))
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
        // The new id travels in the next delta of our record.
        let r = m.topology().record_since(name(5), Some((2, 50))).unwrap();
        assert_eq!(r.ident.map(|i| i.short_id), Some(new));
        // The smaller name keeps its id.
        let mut m = mesh(1);
        up(&mut m, t(0), 2);
        let mut s2 = summary(2, 20, 1, &[1]);
        s2.short_id = ShortId::from_masked(1);
        m.handle_gossip(t(10), name(2), &records(vec![s2])).unwrap();
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
        let dup = records(vec![summary(3, 30, 1, &[]), summary(3, 30, 2, &[])]);
        assert_eq!(
            m.handle_gossip(t(1), name(2), &dup),
            Err(GossipError::Invalid(TopologyError::DuplicatePeer(name(3))))
        );
        // A full record without identity, a delta whose base is not below its version.
        let mut full = Record::full(&summary(3, 30, 1, &[]));
        full.ident = None;
        let bad_delta = Record {
            name: name(4),
            uid: 40,
            version: 3,
            base: 3,
            ident: None,
            changes: vec![],
        };
        for r in [full, bad_delta] {
            let name = r.name;
            assert_eq!(
                m.handle_gossip(t(1), name_of(2), &encode(&TopologyGossip::Records(vec![r]))),
                Err(GossipError::Invalid(TopologyError::BadRecord(name)))
            );
        }
        let long = digest(&vec![(3, 1); MAX_DIGEST + 1], false);
        assert_eq!(
            m.handle_gossip(t(1), name(2), &long),
            Err(GossipError::TooLong(MAX_DIGEST + 1))
        );
        // A short id wider than 12 bits or a name wider than 48 fails to decode.
        let mut bad = records(vec![summary(3, 30, 1, &[])]);
        let good_len = bad.len();
        bad.truncate(good_len - 1);
        assert_eq!(
            m.handle_gossip(t(1), name(2), &bad),
            Err(GossipError::Decode)
        );
        assert_eq!(m.stats().errors, 7);
        assert_eq!(m.topology().len(), 2);
    }

    fn name_of(n: u64) -> PeerName {
        name(n)
    }

    /// Drives meshes wired back to back (every pair connected) until quiet: all views agree,
    /// then nothing more is sent.
    #[test]
    fn small_full_mesh_converges_then_goes_quiet() {
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
        for m in &mut meshes {
            assert_eq!(m.topology().peers().cloned().collect::<Vec<_>>(), first);
            assert_eq!(m.routes().reachable().count(), n as usize - 1);
            assert_eq!(m.poll_timeout(), None);
            assert!(m.poll_transmit().is_none());
        }
    }
}
