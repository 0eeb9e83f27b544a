//! Layer: pure logic. The mesh's view of who exists and who is connected to whom.
//!
//! Every peer publishes a [`PeerSummary`]: its identity, a version it bumps whenever its own
//! connection list (or short id) changes, and that connection list. A [`Topology`] holds our own
//! summary and the latest summary of every other peer we know of, and merges what gossip brings
//! with Weave's rule: a higher version wins; at equal versions the higher uid (a restarted peer's
//! new incarnation) wins. Summaries about ourselves from an older incarnation are never taken:
//! we bump our version above them instead, so our current record wins everywhere on the next
//! round.
//!
//! Gossip carries [`Record`]s: either a peer's full record, or a *delta* that turns any version
//! of it in `base..version` (same incarnation) into `version`, listing only the connections that
//! were added, changed their established flag, or went away since `base` ([`Change`]). For this
//! the topology remembers, per peer, at which version each connection entry last changed and
//! which were removed (tombstones), from the version of the last full record it took (the
//! history's floor) on. A delta a receiver cannot apply (it holds an older version than the
//! base, another incarnation, or nothing) is reported in [`Merged::want`]: the sender is asked
//! for the full record.
//!
//! Peers nobody (transitively) reports a connection to any more are removed by
//! [`Topology::garbage_collect`]. Routes are computed from a topology in [`crate::routes`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::identity::{PeerName, ShortId};

/// Most peers one update may carry; more is refused as invalid input.
pub const MAX_PEERS_PER_UPDATE: usize = 10_000;

/// Most connection changes one record may carry; more is refused as invalid input.
pub const MAX_CHANGES_PER_RECORD: usize = 10_000;

/// One connection as its owner reports it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ConnSummary {
    /// The peer at the other end.
    pub remote: PeerName,
    /// The remote's TCP address as the owner sees it, `ip:port`.
    pub address: String,
    /// Whether the owner dialled this connection.
    pub outbound: bool,
    /// Whether the connection's data path works (its UDP heartbeats are acknowledged).
    pub established: bool,
}

/// A peer as we know it: identity, version, and its connection list.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PeerSummary {
    /// The peer's stable name.
    pub name: PeerName,
    /// Its human-friendly name.
    pub nickname: String,
    /// Random id of the peer's current incarnation.
    pub uid: u64,
    /// Bumped by the peer on every change to its record. Version 0 marks a placeholder we made
    /// from a handshake, never gossiped.
    pub version: u64,
    /// The peer's short id (VXLAN VNIs).
    pub short_id: ShortId,
    /// The peer's connections, sorted by remote name, at most one per remote.
    pub connections: Vec<ConnSummary>,
}

impl PeerSummary {
    /// The connection to `remote`, if this peer reports one.
    pub fn connection(&self, remote: PeerName) -> Option<&ConnSummary> {
        self.connections
            .binary_search_by_key(&remote, |c| c.remote)
            .ok()
            .map(|i| &self.connections[i])
    }
}

/// A peer's nickname and short id, sent when they changed (always in a full record).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Ident {
    /// The peer's human-friendly name.
    pub nickname: String,
    /// The peer's short id.
    pub short_id: ShortId,
}

/// One change to a peer's connection list.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A connection (new, or its address or direction changed): the whole entry.
    Add {
        /// The peer at the other end.
        remote: PeerName,
        /// The remote's address as the owner sees it, `ip:port`.
        address: String,
        /// Whether the owner dialled it.
        outbound: bool,
        /// Whether its data path works.
        established: bool,
    },
    /// An existing connection's data path now works.
    Up(PeerName),
    /// An existing connection's data path stopped working.
    Down(PeerName),
    /// The connection is gone.
    Remove(PeerName),
}

impl Change {
    fn remote(&self) -> PeerName {
        match self {
            Self::Add { remote, .. } => *remote,
            Self::Up(r) | Self::Down(r) | Self::Remove(r) => *r,
        }
    }
}

/// A peer's record as gossiped: full, or a delta against an earlier version.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The peer.
    pub name: PeerName,
    /// Its incarnation.
    pub uid: u64,
    /// The version this record brings the receiver to.
    pub version: u64,
    /// 0 for a full record (`ident` set, only `Add` changes: the whole connection list);
    /// otherwise a delta that applies to the same incarnation at any version from `base` up.
    pub base: u64,
    /// Nickname and short id, if they changed since `base` (always in a full record).
    pub ident: Option<Ident>,
    /// What changed since `base` (everything, for a full record), by remote name.
    pub changes: Vec<Change>,
}

impl Record {
    /// The full record of a summary.
    pub fn full(p: &PeerSummary) -> Self {
        Self {
            name: p.name,
            uid: p.uid,
            version: p.version,
            base: 0,
            ident: Some(Ident {
                nickname: p.nickname.clone(),
                short_id: p.short_id,
            }),
            changes: p
                .connections
                .iter()
                .map(|c| Change::Add {
                    remote: c.remote,
                    address: c.address.clone(),
                    outbound: c.outbound,
                    established: c.established,
                })
                .collect(),
        }
    }

    /// Whether this is a full record (not a delta).
    pub fn is_full(&self) -> bool {
        self.base == 0
    }
}

/// What a merge did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Merged {
    /// Peers whose record changed (to relay), in name order.
    pub new: Vec<PeerName>,
    /// Peers whose delta we could not apply: ask the sender for their full records.
    pub want: Vec<PeerName>,
}

/// Why an update was refused (nothing of it was merged).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    /// The update carried more than [`MAX_PEERS_PER_UPDATE`] peers.
    #[error("update carries {0} peers, more than the limit of {MAX_PEERS_PER_UPDATE}")]
    TooManyPeers(usize),
    /// The same peer appeared twice in one update.
    #[error("peer {0} appears twice in one update")]
    DuplicatePeer(PeerName),
    /// A peer listed a connection to itself.
    #[error("peer {0} lists a connection to itself")]
    SelfConnection(PeerName),
    /// A record is malformed: a full record without identity or with something other than
    /// whole entries, the same remote changed twice, too many changes, or a delta whose base
    /// is not below its version.
    #[error("malformed record for peer {0}")]
    BadRecord(PeerName),
}

/// A small map by peer name kept as a sorted vector with exact capacity: a topology holds
/// one or two per known peer, each with about as many entries as the peer has connections,
/// so a tree's nodes and a vector's doubling would cost more than the entries themselves.
#[derive(Clone, Debug)]
struct NameMap<V>(Vec<(PeerName, V)>);

impl<V> Default for NameMap<V> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<V: Copy> NameMap<V> {
    fn get(&self, k: &PeerName) -> Option<&V> {
        self.0
            .binary_search_by_key(k, |e| e.0)
            .ok()
            .map(|i| &self.0[i].1)
    }

    /// The value of `k`, inserted as `v` first if absent.
    fn get_or_insert(&mut self, k: PeerName, v: V) -> &mut V {
        let i = match self.0.binary_search_by_key(&k, |e| e.0) {
            Ok(i) => i,
            Err(i) => {
                self.0.reserve_exact(1);
                self.0.insert(i, (k, v));
                i
            }
        };
        &mut self.0[i].1
    }

    fn insert(&mut self, k: PeerName, v: V) {
        *self.get_or_insert(k, v) = v;
    }

    fn remove(&mut self, k: &PeerName) {
        if let Ok(i) = self.0.binary_search_by_key(k, |e| e.0) {
            self.0.remove(i);
        }
    }

    fn iter(&self) -> impl Iterator<Item = (&PeerName, &V)> {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl<V> FromIterator<(PeerName, V)> for NameMap<V> {
    /// From entries in name order.
    fn from_iter<I: IntoIterator<Item = (PeerName, V)>>(iter: I) -> Self {
        let mut v: Vec<(PeerName, V)> = iter.into_iter().collect();
        v.shrink_to_fit();
        Self(v)
    }
}

/// Per peer: which versions changed what, so deltas can be built.
#[derive(Clone, Debug, Default)]
struct History {
    /// Deltas can be built from any base at or above this version (except inside `gap`).
    floor: u64,
    /// Bases strictly between these versions are not served (full record instead): we went
    /// from the first to the second by a full record, so we never saw the versions between.
    gap: Option<(u64, u64)>,
    /// Version at which the nickname or short id last changed.
    ident: u64,
    /// Per present connection: (version its entry was added or replaced, version it last
    /// changed).
    entries: NameMap<(u64, u64)>,
    /// Removed connections and the version they went away at.
    removed: NameMap<u64>,
}

impl History {
    fn full(p: &PeerSummary) -> Self {
        Self {
            floor: p.version,
            ident: p.version,
            entries: p
                .connections
                .iter()
                .map(|c| (c.remote, (p.version, p.version)))
                .collect(),
            removed: NameMap::default(),
            gap: None,
        }
    }

    /// Whether deltas can be built from `base`.
    fn serves(&self, base: u64) -> bool {
        base >= self.floor && self.gap.is_none_or(|(lo, hi)| base <= lo || base >= hi)
    }

    /// The history after a full record `new` replaced our older version `old` of the same
    /// incarnation: the differences between the two are stamped with `new`'s version, the
    /// rest keeps its stamps, so holders of versions we saw still get deltas (only the
    /// versions in between, which we never saw, get the full record).
    fn rebased(mut self, old: &PeerSummary, new: &PeerSummary) -> Self {
        let v = new.version;
        if let Some((_, hi)) = self.gap {
            // One gap is kept: the older one's bases and those below it are given up.
            self.floor = self.floor.max(hi);
        }
        self.gap = Some((old.version, v));
        if old.nickname != new.nickname || old.short_id != new.short_id {
            self.ident = v;
        }
        let mut entries = Vec::with_capacity(new.connections.len());
        for c in &new.connections {
            let was = self.entries.get(&c.remote).copied();
            let stamp = match (old.connection(c.remote), was) {
                (Some(o), Some(w)) if o == c => w,
                (Some(o), Some((added, _)))
                    if o.address == c.address && o.outbound == c.outbound =>
                {
                    (added, v)
                }
                _ => (v, v),
            };
            entries.push((c.remote, stamp));
            self.removed.remove(&c.remote);
        }
        for o in &old.connections {
            if new.connection(o.remote).is_none() {
                self.removed.insert(o.remote, v);
            }
        }
        self.entries = NameMap(entries);
        self
    }
}

/// Our own summary and the latest known summary of every other peer.
#[derive(Clone, Debug)]
pub struct Topology {
    local_name: PeerName,
    /// Everyone known, including ourselves (invariant: `local_name` is always present).
    peers: BTreeMap<PeerName, PeerSummary>,
    /// Delta history of every gossiped peer (not of placeholders).
    history: BTreeMap<PeerName, History>,
}

fn sort_dedup(conns: &mut Vec<ConnSummary>) {
    conns.sort_by(|a, b| (a.remote, &a.address).cmp(&(b.remote, &b.address)));
    conns.dedup_by_key(|c| c.remote);
}

impl Topology {
    /// A topology that knows only ourselves. Our connection list is normalised (sorted, one
    /// entry per remote).
    pub fn new(mut local: PeerSummary) -> Self {
        sort_dedup(&mut local.connections);
        let local_name = local.name;
        let mut history = BTreeMap::new();
        history.insert(local_name, History::full(&local));
        let mut peers = BTreeMap::new();
        peers.insert(local_name, local);
        Self {
            local_name,
            peers,
            history,
        }
    }

    /// Replaces the local connection list (sorted by remote name first, one entry per remote);
    /// bumps the local version if it changed. Returns whether it changed.
    pub fn set_local_connections(&mut self, mut conns: Vec<ConnSummary>) -> bool {
        sort_dedup(&mut conns);
        let local_name = self.local_name;
        let local = self.local_mut();
        if local.connections == conns {
            return false;
        }
        let v = local.version + 1;
        let old = std::mem::replace(&mut local.connections, conns);
        local.version = v;
        let new = local.connections.clone();
        let h = self.history.entry(local_name).or_default();
        for c in &new {
            match old.binary_search_by_key(&c.remote, |o| o.remote) {
                Ok(i) if old[i] == *c => {}
                Ok(i) if old[i].address == c.address && old[i].outbound == c.outbound => {
                    h.entries.get_or_insert(c.remote, (v, v)).1 = v;
                }
                _ => {
                    h.entries.insert(c.remote, (v, v));
                    h.removed.remove(&c.remote);
                }
            }
        }
        for o in &old {
            if new.binary_search_by_key(&o.remote, |c| c.remote).is_err() {
                h.entries.remove(&o.remote);
                h.removed.insert(o.remote, v);
            }
        }
        true
    }

    /// Merges received summaries as full records (see [`Topology::merge_records`]). Returns
    /// the summaries that were new to us, in name order.
    pub fn merge(&mut self, update: &[PeerSummary]) -> Result<Vec<PeerSummary>, TopologyError> {
        let records: Vec<Record> = update.iter().map(Record::full).collect();
        let merged = self.merge_records(&records)?;
        Ok(merged
            .new
            .iter()
            .filter_map(|n| self.peers.get(n))
            .cloned()
            .collect())
    }

    /// Merges received records.
    ///
    /// Per peer, the incoming record is taken if its version is higher than ours, or the
    /// version is equal and its uid higher. A delta is applied only to our record of the same
    /// incarnation at a version of at least its base; otherwise the peer is listed in
    /// [`Merged::want`]. A record about ourselves is never taken: if it is from another
    /// incarnation (other uid) or not older than our record, we bump our version above it so
    /// we win the next round, and our own record counts as new.
    ///
    /// Invalid input (more than [`MAX_PEERS_PER_UPDATE`] records, a duplicate name, a peer
    /// listing itself as a connection, a malformed record) is refused as a whole.
    pub fn merge_records(&mut self, update: &[Record]) -> Result<Merged, TopologyError> {
        if update.len() > MAX_PEERS_PER_UPDATE {
            return Err(TopologyError::TooManyPeers(update.len()));
        }
        let mut seen = BTreeSet::new();
        for r in update {
            if !seen.insert(r.name) {
                return Err(TopologyError::DuplicatePeer(r.name));
            }
            validate(r)?;
        }
        let mut merged = Merged::default();
        for r in update {
            if r.name == self.local_name {
                if self.outbid_local(r.version, r.uid) {
                    merged.new.push(r.name);
                }
                continue;
            }
            let old = self.peers.get(&r.name);
            if old.is_some_and(|o| (r.version, r.uid) <= (o.version, o.uid)) {
                continue;
            }
            if r.is_full() {
                let mut p = PeerSummary {
                    name: r.name,
                    nickname: String::new(),
                    uid: r.uid,
                    version: r.version,
                    short_id: ShortId::from_masked(0),
                    connections: Vec::with_capacity(r.changes.len()),
                };
                if let Some(ident) = &r.ident {
                    p.nickname.clone_from(&ident.nickname);
                    p.short_id = ident.short_id;
                }
                for c in &r.changes {
                    if let Change::Add {
                        remote,
                        address,
                        outbound,
                        established,
                    } = c
                    {
                        p.connections.push(ConnSummary {
                            remote: *remote,
                            address: address.clone(),
                            outbound: *outbound,
                            established: *established,
                        });
                    }
                }
                p.connections.sort_by_key(|c| c.remote);
                // Over an older version of the same incarnation, keep what our history knows
                // (holders of the versions we saw still get deltas from us).
                let h = match (old, self.history.remove(&r.name)) {
                    (Some(o), Some(h)) if o.uid == r.uid && o.version > 0 => h.rebased(o, &p),
                    _ => History::full(&p),
                };
                self.history.insert(r.name, h);
                self.peers.insert(r.name, p);
                merged.new.push(r.name);
                continue;
            }
            let applicable = old.is_some_and(|o| o.uid == r.uid && o.version >= r.base)
                && self.history.contains_key(&r.name);
            if !applicable || !self.apply_delta(r) {
                merged.want.push(r.name);
                continue;
            }
            merged.new.push(r.name);
        }
        merged.new.sort_unstable();
        merged.new.dedup();
        Ok(merged)
    }

    /// Applies a validated delta to our record of the same incarnation at a version of at
    /// least its base. Returns false (changing nothing) if it does not fit our record (an
    /// `Up`/`Down` of a connection we do not know).
    fn apply_delta(&mut self, r: &Record) -> bool {
        let (Some(p), Some(h)) = (self.peers.get_mut(&r.name), self.history.get_mut(&r.name))
        else {
            return false;
        };
        let fits = r.changes.iter().all(|c| match c {
            Change::Up(x) | Change::Down(x) => p.connection(*x).is_some(),
            _ => true,
        });
        if !fits {
            return false;
        }
        let v = r.version;
        p.version = v;
        if let Some(ident) = &r.ident {
            p.nickname.clone_from(&ident.nickname);
            p.short_id = ident.short_id;
            h.ident = v;
        }
        for c in &r.changes {
            let remote = c.remote();
            let at = p.connections.binary_search_by_key(&remote, |c| c.remote);
            match (c, at) {
                (
                    Change::Add {
                        address,
                        outbound,
                        established,
                        ..
                    },
                    at,
                ) => {
                    let entry = ConnSummary {
                        remote,
                        address: address.clone(),
                        outbound: *outbound,
                        established: *established,
                    };
                    match at {
                        Ok(i) => p.connections[i] = entry,
                        Err(i) => {
                            // Exact capacity: 1000 peers' records of ~30 connections, in every
                            // node, would waste a third of their memory on doubling.
                            p.connections.reserve_exact(1);
                            p.connections.insert(i, entry);
                        }
                    }
                    h.entries.insert(remote, (v, v));
                    h.removed.remove(&remote);
                }
                (Change::Up(_) | Change::Down(_), Ok(i)) => {
                    p.connections[i].established = matches!(c, Change::Up(_));
                    h.entries.get_or_insert(remote, (v, v)).1 = v;
                }
                (Change::Remove(_), Ok(i)) => {
                    p.connections.remove(i);
                    h.entries.remove(&remote);
                    h.removed.insert(remote, v);
                }
                (Change::Remove(_), Err(_)) => {
                    h.removed.insert(remote, v);
                }
                (Change::Up(_) | Change::Down(_), Err(_)) => {} // excluded by `fits`
            }
        }
        true
    }

    /// The record that brings a holder of `name`'s record at `base` (version, uid) up to date:
    /// a delta if our history reaches back to that version of the same incarnation, else the
    /// full record. `None` if `name` is unknown, a placeholder, or `base` is not older.
    pub fn record_since(&self, name: PeerName, base: Option<(u64, u64)>) -> Option<Record> {
        let p = self.peers.get(&name).filter(|p| p.version > 0)?;
        let h = self.history.get(&name)?;
        let b = match base {
            Some((v, uid)) if uid == p.uid && v >= p.version => return None,
            Some((v, uid)) if uid == p.uid && h.serves(v) && v > 0 => v,
            _ => return Some(Record::full(p)),
        };
        let mut changes = Vec::new();
        for c in &p.connections {
            let Some(&(added, changed)) = h.entries.get(&c.remote) else {
                continue;
            };
            if added > b {
                changes.push(Change::Add {
                    remote: c.remote,
                    address: c.address.clone(),
                    outbound: c.outbound,
                    established: c.established,
                });
            } else if changed > b {
                changes.push(if c.established {
                    Change::Up(c.remote)
                } else {
                    Change::Down(c.remote)
                });
            }
        }
        for (&remote, &at) in h.removed.iter() {
            if at > b && p.connection(remote).is_none() {
                changes.push(Change::Remove(remote));
            }
        }
        changes.sort_by_key(Change::remote);
        Some(Record {
            name,
            uid: p.uid,
            version: p.version,
            base: b,
            ident: (h.ident > b).then(|| Ident {
                nickname: p.nickname.clone(),
                short_id: p.short_id,
            }),
            changes,
        })
    }

    /// Whether [`record_since`](Self::record_since) would give a delta (not the full record,
    /// not `None`) for a holder of `name`'s record at `base`, without building it.
    pub fn has_delta_since(&self, name: PeerName, base: Option<(u64, u64)>) -> bool {
        let Some(p) = self.peers.get(&name).filter(|p| p.version > 0) else {
            return false;
        };
        let Some(h) = self.history.get(&name) else {
            return false;
        };
        matches!(base, Some((v, uid)) if uid == p.uid && v < p.version && h.serves(v) && v > 0)
    }

    /// Records a placeholder for a peer we just completed a handshake with but have no
    /// summary for yet (version 0: any gossiped summary replaces it). Returns whether it was
    /// added.
    pub fn add_placeholder(
        &mut self,
        name: PeerName,
        nickname: String,
        uid: u64,
        short_id: ShortId,
    ) -> bool {
        if self.peers.contains_key(&name) {
            return false;
        }
        self.peers.insert(
            name,
            PeerSummary {
                name,
                nickname,
                uid,
                version: 0,
                short_id,
                connections: Vec::new(),
            },
        );
        true
    }

    /// Removes peers we cannot reach by following reported connections from ourselves, and
    /// returns their names.
    ///
    /// As in Weave, the search follows every connection a reached peer reports (outbound and
    /// inbound, established or not), from that peer's own record. A peer that died keeps
    /// listing its old neighbours in its last record, but nobody lists it any more, so it goes.
    /// Peers our own connections reference are always reached.
    pub fn garbage_collect(&mut self) -> Vec<PeerName> {
        let mut reached = BTreeSet::new();
        let mut queue = VecDeque::new();
        reached.insert(self.local_name);
        queue.push_back(self.local_name);
        while let Some(name) = queue.pop_front() {
            let Some(peer) = self.peers.get(&name) else {
                continue;
            };
            for c in &peer.connections {
                if reached.insert(c.remote) {
                    queue.push_back(c.remote);
                }
            }
        }
        let removed: Vec<PeerName> = self
            .peers
            .keys()
            .filter(|n| !reached.contains(n))
            .copied()
            .collect();
        for n in &removed {
            self.peers.remove(n);
            self.history.remove(n);
        }
        removed
    }

    /// Someone holds a record of ourselves at (`version`, `uid`): if it is from another
    /// incarnation and not older than ours, or newer than ours, bump our version above it so
    /// our record wins. Returns whether we bumped.
    pub fn outbid_local(&mut self, version: u64, uid: u64) -> bool {
        let local = self.local_mut();
        let echo = uid == local.uid && version <= local.version;
        let stale = uid != local.uid && version < local.version;
        if echo || stale {
            return false;
        }
        local.version = version.saturating_add(1);
        true
    }

    /// Changes our short id (collision resolution); bumps our version if it changed.
    pub fn set_local_short_id(&mut self, id: ShortId) {
        let local_name = self.local_name;
        let local = self.local_mut();
        if local.short_id != id {
            local.short_id = id;
            local.version += 1;
            let v = local.version;
            self.history.entry(local_name).or_default().ident = v;
        }
    }

    /// An order-independent hash of (name, version, uid) of every gossiped record: two
    /// topologies holding the same records hash the same.
    pub fn summary_hash(&self) -> u64 {
        self.peers
            .values()
            .filter(|p| p.version > 0)
            .fold(0u64, |acc, p| {
                acc.wrapping_add(mix(mix(p.name.get() ^ mix(p.version)) ^ p.uid))
            })
    }

    /// Our own summary.
    pub fn local(&self) -> &PeerSummary {
        // Invariant: the local record is inserted in `new` and never removed (GC always
        // reaches it, merge never replaces it).
        self.peers
            .get(&self.local_name)
            .expect("local peer is always in the topology")
    }

    /// Our own name.
    pub fn local_name(&self) -> PeerName {
        self.local_name
    }

    /// The summary of `name`, if known (ourselves included).
    pub fn peer(&self, name: PeerName) -> Option<&PeerSummary> {
        self.peers.get(&name)
    }

    /// Every known peer, ourselves included, in name order.
    pub fn peers(&self) -> impl Iterator<Item = &PeerSummary> {
        self.peers.values()
    }

    /// Number of known peers, ourselves included.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Always false: a topology knows at least ourselves.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Short ids in use by more than one known peer: `(short_id, names in name order)`.
    pub fn short_id_collisions(&self) -> Vec<(ShortId, Vec<PeerName>)> {
        let mut by_id: BTreeMap<ShortId, Vec<PeerName>> = BTreeMap::new();
        for p in self.peers.values() {
            by_id.entry(p.short_id).or_default().push(p.name);
        }
        by_id
            .into_iter()
            .filter(|(_, names)| names.len() > 1)
            .collect()
    }

    /// Whether any known peer other than `except` uses `id`.
    pub fn short_id_in_use(&self, id: ShortId, except: PeerName) -> bool {
        self.peers
            .values()
            .any(|p| p.short_id == id && p.name != except)
    }

    fn local_mut(&mut self) -> &mut PeerSummary {
        // Invariant: see `local`.
        self.peers
            .get_mut(&self.local_name)
            .expect("local peer is always in the topology")
    }
}

/// Checks one record on its own (see [`TopologyError::BadRecord`]).
fn validate(r: &Record) -> Result<(), TopologyError> {
    if r.changes.len() > MAX_CHANGES_PER_RECORD {
        return Err(TopologyError::BadRecord(r.name));
    }
    if r.changes.iter().any(|c| c.remote() == r.name) {
        return Err(TopologyError::SelfConnection(r.name));
    }
    let mut remotes = BTreeSet::new();
    if !r.changes.iter().all(|c| remotes.insert(c.remote())) {
        return Err(TopologyError::BadRecord(r.name));
    }
    let ok = if r.is_full() {
        r.ident.is_some() && r.changes.iter().all(|c| matches!(c, Change::Add { .. }))
    } else {
        r.base < r.version
    };
    if ok {
        Ok(())
    } else {
        Err(TopologyError::BadRecord(r.name))
    }
}

/// SplitMix64's finaliser.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn name(n: u64) -> PeerName {
        PeerName::new(n).unwrap()
    }

    pub(crate) fn conn(remote: u64, established: bool) -> ConnSummary {
        ConnSummary {
            remote: name(remote),
            address: format!("192.0.2.{remote}:6783"),
            outbound: true,
            established,
        }
    }

    pub(crate) fn summary(n: u64, uid: u64, version: u64, conns: &[u64]) -> PeerSummary {
        PeerSummary {
            name: name(n),
            nickname: format!("host{n}"),
            uid,
            version,
            short_id: ShortId::from_masked(n as u16),
            connections: conns.iter().map(|&r| conn(r, true)).collect(),
        }
    }

    #[test]
    fn set_local_connections_bumps_only_on_change() {
        let mut t = Topology::new(summary(1, 10, 1, &[]));
        assert!(t.set_local_connections(vec![conn(3, false), conn(2, false)]));
        assert_eq!(t.local().version, 2);
        assert_eq!(t.local().connections[0].remote, name(2), "sorted");
        assert!(!t.set_local_connections(vec![conn(2, false), conn(3, false)]));
        assert_eq!(t.local().version, 2);
        assert!(t.set_local_connections(vec![conn(2, true), conn(3, false)]));
        assert_eq!(t.local().version, 3);
    }

    #[test]
    fn merge_takes_newer_and_is_idempotent() {
        let mut t = Topology::new(summary(1, 10, 1, &[2]));
        let u = vec![summary(2, 20, 3, &[1]), summary(3, 30, 1, &[2])];
        let new = t.merge(&u).unwrap();
        assert_eq!(new, u);
        assert_eq!(t.merge(&u).unwrap(), vec![], "idempotent");
        assert_eq!(t.merge(&[summary(2, 20, 2, &[])]).unwrap(), vec![], "older");
        assert_eq!(t.peer(name(2)).unwrap().version, 3);
        let newer = summary(2, 20, 4, &[1, 3]);
        assert_eq!(
            t.merge(std::slice::from_ref(&newer)).unwrap(),
            vec![newer.clone()]
        );
        assert_eq!(t.peer(name(2)), Some(&newer));
        // Equal version, higher uid (a restarted peer) wins; lower uid does not.
        let restarted = summary(2, 21, 4, &[]);
        assert_eq!(t.merge(std::slice::from_ref(&restarted)).unwrap().len(), 1);
        assert_eq!(t.merge(&[summary(2, 19, 4, &[1])]).unwrap().len(), 0);
        assert_eq!(t.peer(name(2)), Some(&restarted));
    }

    #[test]
    fn merge_order_does_not_matter() {
        let a = vec![summary(2, 20, 3, &[1]), summary(3, 30, 1, &[])];
        let b = vec![summary(2, 20, 4, &[]), summary(4, 40, 1, &[3])];
        let c = vec![summary(2, 21, 4, &[3]), summary(3, 30, 2, &[4])];
        let orders = [[&a, &b, &c], [&c, &b, &a], [&b, &a, &c], [&c, &a, &b]];
        let mut results = Vec::new();
        for order in orders {
            let mut t = Topology::new(summary(1, 10, 1, &[]));
            for u in order {
                t.merge(u).unwrap();
            }
            results.push(t.peers().cloned().collect::<Vec<_>>());
        }
        assert!(results.windows(2).all(|w| w[0] == w[1]));
    }

    #[test]
    fn old_incarnation_of_ourselves_makes_us_bump() {
        let mut t = Topology::new(summary(1, 10, 1, &[2]));
        // Our own record echoed back: ignored.
        assert_eq!(t.merge(&[t.local().clone()]).unwrap(), vec![]);
        assert_eq!(t.local().version, 1);
        // An old incarnation (other uid) with a high version: we bump above it, never take it.
        let new = t.merge(&[summary(1, 9, 50, &[3])]).unwrap();
        assert_eq!(t.local().version, 51);
        assert_eq!(t.local().uid, 10);
        assert_eq!(t.local().connections, vec![conn(2, true)]);
        assert_eq!(new, vec![t.local().clone()]);
        // An old incarnation that is already older than us: nothing to do.
        assert_eq!(t.merge(&[summary(1, 9, 20, &[])]).unwrap(), vec![]);
        // A restarted peer: everyone else then takes the bumped record over the old one.
        let mut other = Topology::new(summary(5, 50, 1, &[]));
        other.merge(&[summary(1, 9, 50, &[3])]).unwrap();
        other.merge(&[t.local().clone()]).unwrap();
        assert_eq!(other.peer(name(1)).unwrap().uid, 10);
    }

    #[test]
    fn invalid_updates_merge_nothing() {
        let mut t = Topology::new(summary(1, 10, 1, &[]));
        let dup = vec![
            summary(2, 20, 1, &[]),
            summary(3, 30, 1, &[]),
            summary(2, 20, 2, &[]),
        ];
        assert_eq!(t.merge(&dup), Err(TopologyError::DuplicatePeer(name(2))));
        let selfish = vec![summary(3, 30, 1, &[]), summary(2, 20, 1, &[2])];
        assert_eq!(
            t.merge(&selfish),
            Err(TopologyError::SelfConnection(name(2)))
        );
        let many: Vec<_> = (2..(MAX_PEERS_PER_UPDATE as u64 + 3))
            .map(|n| summary(n, 1, 1, &[]))
            .collect();
        assert_eq!(
            t.merge(&many),
            Err(TopologyError::TooManyPeers(MAX_PEERS_PER_UPDATE + 1))
        );
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn gc_removes_unreachable_only() {
        // 1 -> 2 -> 3 (3 reports nothing back: still reachable), 4 <-> 5 (island), 6 -> 1
        // (6 lists us but nobody reachable lists 6: removed, as in Weave).
        let mut t = Topology::new(summary(1, 10, 1, &[2]));
        t.merge(&[
            summary(2, 20, 1, &[3]),
            summary(3, 30, 1, &[]),
            summary(4, 40, 1, &[5]),
            summary(5, 50, 1, &[4]),
            summary(6, 60, 1, &[1]),
        ])
        .unwrap();
        assert_eq!(t.garbage_collect(), vec![name(4), name(5), name(6)]);
        assert_eq!(
            t.peers().map(|p| p.name).collect::<Vec<_>>(),
            vec![name(1), name(2), name(3)]
        );
        assert_eq!(t.garbage_collect(), vec![]);
        // A peer only our own connection list references (not even gossiped) stays.
        t.set_local_connections(vec![conn(2, true), conn(7, false)]);
        assert!(t.add_placeholder(name(7), "h7".into(), 70, ShortId::from_masked(7)));
        assert!(!t.add_placeholder(name(7), "h7".into(), 70, ShortId::from_masked(7)));
        assert_eq!(t.garbage_collect(), vec![]);
        // A dead peer whose last record still lists its neighbours goes once they drop it.
        t.merge(&[summary(2, 20, 2, &[])]).unwrap();
        assert_eq!(t.garbage_collect(), vec![name(3)]);
    }

    /// Our record at a version, as a receiver would hold it.
    fn holder_at(t: &Topology) -> Topology {
        let mut h = Topology::new(summary(99, 990, 1, &[]));
        h.merge(&[t.local().clone()]).unwrap();
        h
    }

    #[test]
    fn deltas_carry_only_what_changed_and_rebuild_the_record() {
        let mut t = Topology::new(summary(1, 10, 1, &[]));
        t.set_local_connections(vec![conn(2, false), conn(3, false)]);
        let mut old = holder_at(&t); // holds v2
        assert_eq!(old.peer(name(1)).unwrap().version, 2);
        t.set_local_connections(vec![conn(2, true), conn(3, false)]); // v3: 2 up
        t.set_local_connections(vec![conn(2, true), conn(4, false)]); // v4: 3 gone, 4 new
        t.set_local_short_id(ShortId::from_masked(77)); // v5
        let r = t.record_since(name(1), Some((2, 10))).unwrap();
        assert_eq!((r.base, r.version), (2, 5));
        assert_eq!(
            r.changes,
            vec![
                Change::Up(name(2)),
                Change::Remove(name(3)),
                Change::Add {
                    remote: name(4),
                    address: "192.0.2.4:6783".into(),
                    outbound: true,
                    established: false,
                },
            ],
            "no address for the connection that only came up"
        );
        assert_eq!(
            r.ident.as_ref().map(|i| i.short_id),
            Some(ShortId::from_masked(77))
        );
        let merged = old.merge_records(&[r]).unwrap();
        assert_eq!(merged.new, vec![name(1)]);
        assert_eq!(old.peer(name(1)), Some(t.local()));
        // From v4 only the short id changed.
        let r = t.record_since(name(1), Some((4, 10))).unwrap();
        assert!(r.changes.is_empty());
        assert!(r.ident.is_some());
        // Up to date, or another incarnation / nothing: nothing, or the full record.
        assert_eq!(t.record_since(name(1), Some((5, 10))), None);
        assert_eq!(
            t.record_since(name(1), Some((4, 11))),
            Some(Record::full(t.local()))
        );
        assert_eq!(t.record_since(name(1), None), Some(Record::full(t.local())));
        assert_eq!(t.record_since(name(7), None), None, "unknown");
    }

    #[test]
    fn relayed_deltas_rebuild_the_record_and_history_starts_at_the_full_record() {
        let mut origin = Topology::new(summary(1, 10, 1, &[]));
        origin.set_local_connections(vec![conn(2, false)]); // v2
        let mut relay = holder_at(&origin);
        let mut far = holder_at(&origin);
        origin.set_local_connections(vec![conn(2, true), conn(3, false)]); // v3
        let d = origin.record_since(name(1), Some((2, 10))).unwrap();
        relay.merge_records(&[d]).unwrap();
        // The relay rebuilds the same delta for a holder of v2.
        let d = relay.record_since(name(1), Some((2, 10))).unwrap();
        far.merge_records(std::slice::from_ref(&d)).unwrap();
        assert_eq!(far.peer(name(1)), Some(origin.local()));
        // The relay took v2 as a full record: it cannot build a delta from before that.
        assert_eq!(
            relay.record_since(name(1), Some((1, 10))),
            Some(Record::full(origin.local()))
        );
        // A delta from a base the receiver has not reached is not applied but wanted.
        let mut behind = Topology::new(summary(5, 50, 1, &[]));
        behind.merge(&[summary(1, 10, 1, &[])]).unwrap();
        let merged = behind.merge_records(&[d]).unwrap();
        assert_eq!(
            merged,
            Merged {
                new: vec![],
                want: vec![name(1)]
            }
        );
        assert_eq!(behind.peer(name(1)).unwrap().version, 1);
    }

    #[test]
    fn a_full_record_over_an_older_version_keeps_serving_deltas_from_it() {
        let mut origin = Topology::new(summary(1, 10, 1, &[]));
        origin.set_local_connections(vec![conn(2, false), conn(3, false), conn(5, false)]); // v2
        let mut relay = holder_at(&origin);
        let mut low = holder_at(&origin);
        origin.set_local_connections(vec![conn(2, true), conn(3, false), conn(5, false)]); // v3
        let mut mid = holder_at(&origin);
        origin.set_local_connections(vec![conn(2, true), conn(4, false), conn(5, false)]); // v4
        // The relay, at v2, is sent v4 in full (its sender could not build a delta).
        relay
            .merge_records(&[Record::full(origin.local())])
            .unwrap();
        assert_eq!(relay.peer(name(1)), Some(origin.local()));
        // A holder of v2, which the relay saw, still gets a delta: 2 up, 3 gone, 4 new.
        let d = relay.record_since(name(1), Some((2, 10))).unwrap();
        assert!(!d.is_full(), "{d:?}");
        assert_eq!(d.changes.len(), 3, "{d:?}");
        low.merge_records(&[d]).unwrap();
        assert_eq!(low.peer(name(1)), Some(origin.local()));
        // v3 the relay never saw: the full record.
        let r = relay.record_since(name(1), Some((3, 10))).unwrap();
        assert!(r.is_full());
        mid.merge_records(&[r]).unwrap();
        assert_eq!(mid.peer(name(1)), Some(origin.local()));
        // Another incarnation's full record starts a new history.
        let mut restarted = summary(1, 11, 9, &[2]);
        restarted.connections[0].established = true;
        relay.merge(&[restarted.clone()]).unwrap();
        assert_eq!(
            relay.record_since(name(1), Some((4, 10))),
            Some(Record::full(&restarted))
        );
    }

    /// One to four random changes to `origin`'s connections (drop, add, flip established).
    fn random_change(rng: &mut crate::rng::Rng, origin: &mut Topology) {
        let mut conns = origin.local().connections.clone();
        for _ in 0..=rng.below(3) {
            let r = 2 + rng.below(12);
            match rng.below(3) {
                0 => conns.retain(|c| c.remote != name(r)),
                1 => conns.push(conn(r, rng.below(2) == 0)),
                _ => conns.iter_mut().for_each(|c| {
                    if c.remote == name(r) {
                        c.established = !c.established;
                    }
                }),
            }
        }
        origin.set_local_connections(conns);
    }

    #[test]
    fn random_changes_through_deltas_match_the_origin() {
        // An origin changes its connections at random; holders at random older versions catch
        // up by delta and end with exactly the origin's record.
        let mut rng = crate::rng::Rng::new(7);
        let mut origin = Topology::new(summary(1, 10, 1, &[]));
        let mut holders: Vec<Topology> = vec![holder_at(&origin)];
        for _ in 0..300 {
            random_change(&mut rng, &mut origin);
            if rng.below(4) == 0 {
                holders.push(holder_at(&origin));
            }
            let i = rng.below(holders.len() as u64) as usize;
            let h = &mut holders[i];
            let held = h.peer(name(1)).map(|p| (p.version, p.uid));
            if let Some(r) = origin.record_since(name(1), held) {
                assert!(!r.is_full());
                h.merge_records(&[r]).unwrap();
            }
            assert_eq!(h.peer(name(1)), Some(origin.local()));
        }
    }

    #[test]
    fn random_changes_through_a_relay_fed_full_records_match_the_origin() {
        // As above, but holders catch up from a relay that is itself brought up to date
        // sometimes by delta, sometimes by a full record over what it held.
        let mut rng = crate::rng::Rng::new(11);
        let mut origin = Topology::new(summary(1, 10, 1, &[]));
        let mut relay = holder_at(&origin);
        let mut holders: Vec<Topology> = vec![holder_at(&origin)];
        let mut deltas = 0;
        for _ in 0..400 {
            random_change(&mut rng, &mut origin);
            if rng.below(4) == 0 {
                holders.push(holder_at(&origin));
            }
            if rng.below(2) == 0 {
                let held = relay.peer(name(1)).map(|p| (p.version, p.uid));
                let r = if rng.below(3) == 0 {
                    Some(Record::full(origin.local()))
                } else {
                    origin.record_since(name(1), held)
                };
                if let Some(r) = r {
                    relay.merge_records(&[r]).unwrap();
                }
            }
            let i = rng.below(holders.len() as u64) as usize;
            let h = &mut holders[i];
            let held = h.peer(name(1)).map(|p| (p.version, p.uid));
            if held.is_some_and(|(v, _)| v >= relay.peer(name(1)).unwrap().version) {
                continue;
            }
            let r = relay.record_since(name(1), held).unwrap();
            deltas += u32::from(!r.is_full());
            h.merge_records(&[r]).unwrap();
            assert_eq!(h.peer(name(1)), relay.peer(name(1)));
        }
        assert!(deltas > 50, "{deltas} deltas");
    }

    #[test]
    fn short_id_collisions_listed() {
        let mut t = Topology::new(summary(1, 10, 1, &[]));
        let mut s2 = summary(2, 20, 1, &[]);
        s2.short_id = ShortId::from_masked(1);
        let mut s3 = summary(3, 30, 1, &[]);
        s3.short_id = ShortId::from_masked(1);
        t.merge(&[s2, s3, summary(4, 40, 1, &[])]).unwrap();
        assert_eq!(
            t.short_id_collisions(),
            vec![(ShortId::from_masked(1), vec![name(1), name(2), name(3)])]
        );
        assert!(t.short_id_in_use(ShortId::from_masked(1), name(1)));
        assert!(!t.short_id_in_use(ShortId::from_masked(4), name(4)));
        t.set_local_short_id(ShortId::from_masked(9));
        assert_eq!(t.local().version, 2);
        t.set_local_short_id(ShortId::from_masked(9));
        assert_eq!(t.local().version, 2);
        assert_eq!(
            t.short_id_collisions(),
            vec![(ShortId::from_masked(1), vec![name(2), name(3)])]
        );
    }
}
