//! Layer: pure logic. The mesh's view of who exists and who is connected to whom.
//!
//! Every peer publishes a [`PeerSummary`]: its identity, a version it bumps whenever its own
//! connection list (or short id) changes, and that connection list. A [`Topology`] holds our own
//! summary and the latest summary of every other peer we know of, and merges the updates that
//! gossip brings ([`Topology::merge`]) with Weave's rule: a higher version wins; at equal
//! versions the higher uid (a restarted peer's new incarnation) wins. Summaries about ourselves
//! from an older incarnation are never taken: we bump our version above them instead, so our
//! current record wins everywhere on the next round.
//!
//! Peers nobody (transitively) reports a connection to any more are removed by
//! [`Topology::garbage_collect`]. Routes are computed from a topology in [`crate::routes`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::identity::{PeerName, ShortId};

/// Most peers one update may carry; more is refused as invalid input.
pub const MAX_PEERS_PER_UPDATE: usize = 10_000;

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

/// A peer as gossiped: identity, version, and its connection list.
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
    /// The peer's connections, sorted by remote name.
    pub connections: Vec<ConnSummary>,
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
}

/// Our own summary and the latest known summary of every other peer.
#[derive(Clone, Debug)]
pub struct Topology {
    local_name: PeerName,
    /// Everyone known, including ourselves (invariant: `local_name` is always present).
    peers: BTreeMap<PeerName, PeerSummary>,
}

impl Topology {
    /// A topology that knows only ourselves. Our connection list is normalised (sorted).
    pub fn new(mut local: PeerSummary) -> Self {
        local.connections.sort_by_key(|c| c.remote);
        let local_name = local.name;
        let mut peers = BTreeMap::new();
        peers.insert(local_name, local);
        Self { local_name, peers }
    }

    /// Replaces the local connection list (sorted by remote name first); bumps the local
    /// version if it changed. Returns whether it changed.
    pub fn set_local_connections(&mut self, mut conns: Vec<ConnSummary>) -> bool {
        conns.sort_by(|a, b| (a.remote, &a.address).cmp(&(b.remote, &b.address)));
        let local = self.local_mut();
        if local.connections == conns {
            return false;
        }
        local.connections = conns;
        local.version += 1;
        true
    }

    /// Merges a received update.
    ///
    /// Per peer, the incoming summary is taken if its version is higher than ours, or the
    /// version is equal and its uid higher. A summary about ourselves is never taken: if it is
    /// from another incarnation (other uid) or not older than our record, we bump our version
    /// above it so we win the next round, and our own record counts as new.
    ///
    /// Returns the summaries that were new to us (to relay), in name order. Invalid input
    /// (more than [`MAX_PEERS_PER_UPDATE`] peers, a duplicate name, a peer listing itself as a
    /// connection) is refused as a whole.
    pub fn merge(&mut self, update: &[PeerSummary]) -> Result<Vec<PeerSummary>, TopologyError> {
        if update.len() > MAX_PEERS_PER_UPDATE {
            return Err(TopologyError::TooManyPeers(update.len()));
        }
        let mut seen = BTreeSet::new();
        for s in update {
            if !seen.insert(s.name) {
                return Err(TopologyError::DuplicatePeer(s.name));
            }
            if s.connections.iter().any(|c| c.remote == s.name) {
                return Err(TopologyError::SelfConnection(s.name));
            }
        }
        let mut new = BTreeMap::new();
        for s in update {
            if s.name == self.local_name {
                let local = self.local_mut();
                let echo = s.uid == local.uid && s.version <= local.version;
                let stale = s.uid != local.uid && s.version < local.version;
                if !echo && !stale {
                    local.version = s.version.saturating_add(1);
                    new.insert(s.name, local.clone());
                }
                continue;
            }
            let take = match self.peers.get(&s.name) {
                None => true,
                Some(old) => (s.version, s.uid) > (old.version, old.uid),
            };
            if take {
                let mut s = s.clone();
                s.connections
                    .sort_by(|a, b| (a.remote, &a.address).cmp(&(b.remote, &b.address)));
                new.insert(s.name, s.clone());
                self.peers.insert(s.name, s);
            }
        }
        Ok(new.into_values().collect())
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
        }
        removed
    }

    /// Changes our short id (collision resolution); bumps our version if it changed.
    pub fn set_local_short_id(&mut self, id: ShortId) {
        let local = self.local_mut();
        if local.short_id != id {
            local.short_id = id;
            local.version += 1;
        }
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
