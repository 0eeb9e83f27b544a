//! Layer: pure logic. Unicast and broadcast routes, as pure functions of a [`Topology`].
//!
//! Routes use only links that are established *and* symmetric: both ends report the connection
//! to the other as established. That makes the graph undirected and identical for every peer
//! whose topology view agrees.
//!
//! - Unicast: a breadth-first search from us, each level processed in peer-name order, gives
//!   every reachable destination its first hop (fewest hops; ties broken by name).
//! - Broadcast: for a frame from source S, every peer computes the same BFS tree rooted at S
//!   (same tie-breaking: a peer's parent is the first peer, in name order, of the previous
//!   level that links to it) and forwards S's broadcasts to its own children in that tree. Each
//!   peer other than S has exactly one parent, so when views agree every reachable peer gets a
//!   broadcast exactly once.
//!
//! The unicast table is computed eagerly by [`Routes::compute`] (one BFS). Our children in
//! every source's broadcast tree are computed lazily, all at once on first use (one
//! bit-parallel BFS per 64 sources), and cached in the (immutable) [`Routes`] value, which
//! stays `Send + Sync` so a data-plane thread can share a snapshot.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use crate::identity::{PeerName, ShortId};
use crate::topology::{PeerSummary, Topology};

/// Marks "no parent" in a BFS parent array.
const NONE: u32 = u32::MAX;

/// Routes computed from one topology snapshot.
#[derive(Debug)]
pub struct Routes {
    local: PeerName,
    /// Every known peer, in name order; indices below refer to this list.
    names: Vec<PeerName>,
    short_ids: Vec<ShortId>,
    /// Established-and-symmetric neighbours of each peer, in name order.
    adjacency: Vec<Vec<u32>>,
    /// BFS parent of each peer in the tree rooted at us (`NONE` if unreachable or us).
    parent: Vec<u32>,
    /// First hop toward each peer (`NONE` if unreachable or us).
    first_hop: Vec<u32>,
    /// Lazily computed (all sources at once, on first use): our children in each source's
    /// broadcast tree, indexed like `names`.
    children: OnceLock<Vec<Vec<PeerName>>>,
    by_short_id: BTreeMap<ShortId, PeerName>,
    /// (version, uid) of each peer's record these routes were computed from.
    records: Vec<(u64, u64)>,
}

impl Routes {
    /// Computes the unicast routes (eagerly) and prepares the broadcast trees (lazily).
    pub fn compute(topology: &Topology) -> Self {
        let peers: Vec<&PeerSummary> = topology.peers().collect();
        let names: Vec<PeerName> = peers.iter().map(|p| p.name).collect();
        let adjacency = (0..peers.len()).map(|i| links(&peers, &names, i)).collect();
        Self::finish(topology, &peers, names, adjacency)
    }

    /// The routes of `topology`, which these routes were computed from an earlier version
    /// of: the same result as [`Routes::compute`], but when the set of peers is unchanged
    /// only the links of peers whose record changed (by version and incarnation) are read
    /// again.
    pub fn update(&self, topology: &Topology) -> Self {
        let peers: Vec<&PeerSummary> = topology.peers().collect();
        let same_peers = self.local == topology.local_name()
            && peers.len() == self.names.len()
            && peers.iter().zip(&self.names).all(|(p, n)| p.name == *n);
        if !same_peers {
            return Self::compute(topology);
        }
        let changed: Vec<usize> = (0..peers.len())
            .filter(|&i| (peers[i].version, peers[i].uid) != self.records[i])
            .collect();
        // A link depends only on the records of its two ends: links of unchanged peers to
        // unchanged peers stay; every link touching a changed peer is read again.
        let mut adjacency = self.adjacency.clone();
        for &i in &changed {
            for j in std::mem::take(&mut adjacency[i]) {
                let row = &mut adjacency[j as usize];
                if let Ok(k) = row.binary_search(&(i as u32)) {
                    row.remove(k);
                }
            }
        }
        for &i in &changed {
            let row = links(&peers, &self.names, i);
            for &j in &row {
                let other = &mut adjacency[j as usize];
                if let Err(k) = other.binary_search(&(i as u32)) {
                    other.insert(k, i as u32);
                }
            }
            adjacency[i] = row;
        }
        Self::finish(topology, &peers, self.names.clone(), adjacency)
    }

    /// Unicast routes and the rest, from the links.
    fn finish(
        topology: &Topology,
        peers: &[&PeerSummary],
        names: Vec<PeerName>,
        adjacency: Vec<Vec<u32>>,
    ) -> Self {
        let local = topology.local_name();
        // Invariant: the topology always contains the local peer.
        let local_idx = names.binary_search(&local).unwrap_or(0) as u32;
        let parent = bfs(&adjacency, local_idx);
        let mut first_hop = vec![NONE; names.len()];
        // Walk each reachable peer up to the child of the root; cheap enough for our sizes
        // (the BFS order would allow a single pass, but this is clearer).
        for v in 0..names.len() {
            let mut u = v as u32;
            if u == local_idx || parent[v] == NONE {
                continue;
            }
            while parent[u as usize] != local_idx {
                u = parent[u as usize];
            }
            first_hop[v] = u;
        }
        let mut by_short_id = BTreeMap::new();
        let short_ids: Vec<ShortId> = peers.iter().map(|p| p.short_id).collect();
        let records = peers.iter().map(|p| (p.version, p.uid)).collect();
        for p in peers {
            // On a collision the smaller name keeps the id (the larger one is about to move).
            by_short_id.entry(p.short_id).or_insert(p.name);
        }
        Self {
            local,
            children: OnceLock::new(),
            names,
            short_ids,
            adjacency,
            parent,
            first_hop,
            by_short_id,
            records,
        }
    }

    /// First hop toward `dest`; `None` if unreachable, unknown, or `dest` is us.
    pub fn next_hop(&self, dest: PeerName) -> Option<PeerName> {
        let i = self.index(dest)?;
        let hop = self.first_hop[i];
        (hop != NONE).then(|| self.names[hop as usize])
    }

    /// Our children in `source`'s broadcast tree: where to forward a broadcast that `source`
    /// originated. Empty if `source` is unknown or not connected to us. For `source` == us,
    /// our neighbours in our own tree (all of them).
    pub fn broadcast_children(&self, source: PeerName) -> &[PeerName] {
        let Some(s) = self.index(source) else {
            return &[];
        };
        &self.children.get_or_init(|| self.all_children())[s]
    }

    /// Our children in every source's tree, by source index.
    ///
    /// In the BFS tree rooted at source S, a peer's parent is its smallest-named neighbour one
    /// level closer to S (levels are processed in name order and a peer takes the first parent
    /// that reaches it). So our neighbour `v` is our child iff `d(S, v) = d(S, us) + 1` and no
    /// neighbour of `v` named below us is at `d(S, us)`. That needs only distances from every
    /// source, found by one bit-parallel BFS per 64 sources (the graph is undirected) instead
    /// of one BFS per source.
    fn all_children(&self) -> Vec<Vec<PeerName>> {
        const INF: u32 = u32::MAX;
        let n = self.names.len();
        let mut out = vec![Vec::new(); n];
        let Some(l) = self.index(self.local) else {
            return out;
        };
        let adj = &self.adjacency;
        let mut dist = vec![INF; n * 64];
        let mut visited = vec![0u64; n];
        let mut frontier = vec![0u64; n];
        let mut next = vec![0u64; n];
        for first in (0..n).step_by(64) {
            let batch = first..(first + 64).min(n);
            dist.fill(INF);
            visited.fill(0);
            frontier.fill(0);
            for s in batch.clone() {
                let bit = 1u64 << (s - first);
                visited[s] |= bit;
                frontier[s] |= bit;
                dist[s * 64 + (s - first)] = 0;
            }
            let mut level = 0;
            loop {
                level += 1;
                let mut any = false;
                for x in 0..n {
                    let mut reached = 0u64;
                    for &y in &adj[x] {
                        reached |= frontier[y as usize];
                    }
                    reached &= !visited[x];
                    next[x] = reached;
                    if reached != 0 {
                        any = true;
                        visited[x] |= reached;
                        let mut bits = reached;
                        while bits != 0 {
                            let i = bits.trailing_zeros() as usize;
                            dist[x * 64 + i] = level;
                            bits &= bits - 1;
                        }
                    }
                }
                if !any {
                    break;
                }
                std::mem::swap(&mut frontier, &mut next);
            }
            for s in batch {
                let i = s - first;
                let d = |x: u32| dist[x as usize * 64 + i];
                if s == l {
                    out[s] = adj[l].iter().map(|&v| self.names[v as usize]).collect();
                    continue;
                }
                let dl = d(l as u32);
                if dl == INF {
                    continue;
                }
                out[s] = adj[l]
                    .iter()
                    .filter(|&&v| d(v) == dl + 1)
                    .filter(|&&v| {
                        !adj[v as usize]
                            .iter()
                            .take_while(|&&u| (u as usize) < l)
                            .any(|&u| d(u) == dl)
                    })
                    .map(|&v| self.names[v as usize])
                    .collect();
            }
        }
        out
    }

    /// Every peer we can reach (ourselves excluded), in name order.
    pub fn reachable(&self) -> impl Iterator<Item = PeerName> + '_ {
        self.names
            .iter()
            .zip(&self.first_hop)
            .filter(|(_, hop)| **hop != NONE)
            .map(|(n, _)| *n)
    }

    /// The path from us to `dest` (the peers after us, `dest` last; empty for us); `None` if
    /// unreachable.
    pub fn path(&self, dest: PeerName) -> Option<Vec<PeerName>> {
        let mut v = self.index(dest)?;
        let local = self.index(self.local)?;
        if v != local && self.first_hop[v] == NONE {
            return None;
        }
        let mut path = Vec::new();
        while v != local {
            path.push(self.names[v]);
            v = self.parent[v] as usize;
        }
        path.reverse();
        Some(path)
    }

    /// Number of destinations whose first hop is `neighbour` (gossip target weighting).
    pub fn destinations_via(&self, neighbour: PeerName) -> usize {
        match self.index(neighbour) {
            Some(i) => self.first_hop.iter().filter(|&&h| h == i as u32).count(),
            None => 0,
        }
    }

    /// The peer using `short_id` (the smallest name, while a collision is being resolved).
    pub fn peer_by_short_id(&self, short_id: ShortId) -> Option<PeerName> {
        self.by_short_id.get(&short_id).copied()
    }

    /// The short id of a known peer.
    pub fn short_id(&self, name: PeerName) -> Option<ShortId> {
        self.index(name).map(|i| self.short_ids[i])
    }

    /// Our own name.
    pub fn local(&self) -> PeerName {
        self.local
    }

    fn index(&self, name: PeerName) -> Option<usize> {
        self.names.binary_search(&name).ok()
    }
}

/// Peer `i`'s established-and-symmetric links, in index (= name) order. `peers` is in name
/// order and `names` are their names.
fn links(peers: &[&PeerSummary], names: &[PeerName], i: usize) -> Vec<u32> {
    let p = peers[i];
    let mut row = Vec::new();
    for c in p.connections.iter().filter(|c| c.established) {
        let Ok(j) = names.binary_search(&c.remote) else {
            continue;
        };
        // Connection lists are sorted by remote name (the topology keeps them so).
        let conns = &peers[j].connections;
        let start = conns.partition_point(|rc| rc.remote < p.name);
        let symmetric = conns[start..]
            .iter()
            .take_while(|rc| rc.remote == p.name)
            .any(|rc| rc.established);
        if symmetric {
            row.push(j as u32);
        }
    }
    row.sort_unstable();
    row.dedup();
    row
}

/// BFS from `root`; levels in index (= name) order; returns each node's parent (`NONE` for the
/// root and unreachable nodes). A node's parent is the first node of the previous level, in
/// name order, adjacent to it.
fn bfs(adjacency: &[Vec<u32>], root: u32) -> Vec<u32> {
    let n = adjacency.len();
    let mut parent = vec![NONE; n];
    let mut seen = vec![false; n];
    seen[root as usize] = true;
    let mut level = vec![root];
    let mut next = Vec::new();
    while !level.is_empty() {
        for &u in &level {
            for &v in &adjacency[u as usize] {
                if !seen[v as usize] {
                    seen[v as usize] = true;
                    parent[v as usize] = u;
                    next.push(v);
                }
            }
        }
        next.sort_unstable();
        std::mem::swap(&mut level, &mut next);
        next.clear();
    }
    parent
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;
    use crate::topology::tests::{conn, name, summary};
    use crate::topology::{ConnSummary, PeerSummary};

    /// Full topology views (as every peer would hold them) for an undirected edge list.
    fn view(local: u64, n: u64, edges: &[(u64, u64)]) -> Topology {
        let record = |p: u64| {
            let mut conns: Vec<u64> = edges
                .iter()
                .filter_map(|&(a, b)| (a == p).then_some(b).or((b == p).then_some(a)))
                .collect();
            conns.sort_unstable();
            conns.dedup();
            summary(p, p * 10, 1, &conns)
        };
        let mut t = Topology::new(record(local));
        let others: Vec<PeerSummary> = (1..=n).filter(|&p| p != local).map(record).collect();
        t.merge(&others).unwrap();
        t
    }

    #[test]
    fn unicast_shortest_path_with_name_tie_break() {
        // 1-2, 1-3, 2-4, 3-4, 4-5: to 4 via 2 (smaller name), to 5 via 2.
        let t = view(1, 5, &[(1, 2), (1, 3), (2, 4), (3, 4), (4, 5)]);
        let r = Routes::compute(&t);
        assert_eq!(r.next_hop(name(2)), Some(name(2)));
        assert_eq!(r.next_hop(name(4)), Some(name(2)));
        assert_eq!(r.next_hop(name(5)), Some(name(2)));
        assert_eq!(r.next_hop(name(1)), None);
        assert_eq!(r.next_hop(name(9)), None);
        assert_eq!(r.path(name(5)), Some(vec![name(2), name(4), name(5)]));
        assert_eq!(r.path(name(1)), Some(vec![]));
        assert_eq!(
            r.reachable().collect::<Vec<_>>(),
            vec![name(2), name(3), name(4), name(5)]
        );
        assert_eq!(r.destinations_via(name(2)), 3);
        assert_eq!(r.destinations_via(name(3)), 1);
        assert_eq!(r.short_id(name(3)), Some(ShortId::from_masked(3)));
        assert_eq!(r.peer_by_short_id(ShortId::from_masked(5)), Some(name(5)));
    }

    #[test]
    fn only_established_symmetric_links() {
        let mut t = Topology::new(summary(1, 10, 1, &[2, 3]));
        let mut s2 = summary(2, 20, 1, &[1, 4]);
        s2.connections[0].established = false; // 2 says 2-1 is not established yet
        let s3 = summary(3, 30, 1, &[]); // 3 does not report 3-1 at all
        let s4 = summary(4, 40, 1, &[2]);
        t.merge(&[s2, s3, s4]).unwrap();
        let r = Routes::compute(&t);
        assert_eq!(r.reachable().count(), 0);
        t.merge(&[summary(2, 20, 2, &[1, 4])]).unwrap();
        let r = Routes::compute(&t);
        assert_eq!(r.reachable().collect::<Vec<_>>(), vec![name(2), name(4)]);
        assert_eq!(r.next_hop(name(3)), None);
        // The local side not established is enough to refuse it too.
        let mut local: Vec<ConnSummary> = t.local().connections.clone();
        local[0] = conn(2, false);
        t.set_local_connections(local);
        assert_eq!(Routes::compute(&t).reachable().count(), 0);
    }

    #[test]
    fn deterministic() {
        let edges = [(1, 2), (2, 3), (3, 4), (4, 1), (2, 5), (4, 5), (5, 6)];
        let a = Routes::compute(&view(1, 6, &edges));
        let b = Routes::compute(&view(1, 6, &edges));
        for d in 1..=6 {
            assert_eq!(a.next_hop(name(d)), b.next_hop(name(d)));
            assert_eq!(a.broadcast_children(name(d)), b.broadcast_children(name(d)));
        }
        // Tie: 1->5 via 2 or 4: the smaller name wins.
        assert_eq!(a.next_hop(name(5)), Some(name(2)));
        // Source 5's tree: 5 -> {2,4,6}; 2 -> 1 and 3 (first in name order at level 1), so 1
        // has no children in 5's tree.
        assert_eq!(a.broadcast_children(name(5)), &[] as &[PeerName]);
        assert_eq!(a.broadcast_children(name(1)), &[name(2), name(4)]);
        let at2 = Routes::compute(&view(2, 6, &edges));
        assert_eq!(at2.broadcast_children(name(5)), &[name(1), name(3)]);
        assert_eq!(at2.broadcast_children(name(99)), &[] as &[PeerName]);
    }

    /// Simulates a flood from `source` using each peer's own `broadcast_children`; returns how
    /// many times each peer received it (the source counts as receiving it once).
    fn flood(routes: &[Routes], source: usize) -> Vec<usize> {
        let mut got = vec![0; routes.len()];
        got[source] = 1;
        let mut queue = vec![source];
        while let Some(p) = queue.pop() {
            for child in routes[p].broadcast_children(routes[source].local()) {
                let c = (child.get() - 1) as usize;
                got[c] += 1;
                queue.push(c);
            }
        }
        got
    }

    fn components(n: usize, edges: &[(u64, u64)]) -> Vec<BTreeSet<usize>> {
        let mut comp: Vec<usize> = (0..n).collect();
        fn find(c: &mut [usize], x: usize) -> usize {
            if c[x] != x {
                let r = find(c, c[x]);
                c[x] = r;
            }
            c[x]
        }
        for &(a, b) in edges {
            let (ra, rb) = (
                find(&mut comp, a as usize - 1),
                find(&mut comp, b as usize - 1),
            );
            comp[ra] = rb;
        }
        let mut out: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
        for x in 0..n {
            let r = find(&mut comp, x);
            out.entry(r).or_default().insert(x);
        }
        out.into_values().collect()
    }

    /// Our children in `source`'s tree by the definition: a BFS from `source`, then the peers
    /// whose parent we are.
    fn children_by_bfs(r: &Routes, source: PeerName) -> Vec<PeerName> {
        let (Some(s), Some(l)) = (r.index(source), r.index(r.local)) else {
            return Vec::new();
        };
        let parent = bfs(&r.adjacency, s as u32);
        if s != l && parent[l] == NONE {
            return Vec::new();
        }
        (0..r.names.len())
            .filter(|&v| parent[v] == l as u32)
            .map(|v| r.names[v])
            .collect()
    }

    /// More than 64 peers (several bit-parallel batches), a long chain with shortcuts: the
    /// children computed for all sources at once are those of one BFS per source.
    #[test]
    fn all_sources_children_match_one_bfs_per_source() {
        let n = 150u64;
        let mut edges: Vec<(u64, u64)> = (1..n).map(|i| (i, i + 1)).collect();
        edges.extend((1..n / 3).map(|i| (i, 3 * i)));
        edges.extend((1..n / 7).map(|i| (i * 7, n - i)));
        for p in [1, 2, 40, 64, 65, 100, 150] {
            let r = Routes::compute(&view(p, n, &edges));
            for s in 1..=n {
                assert_eq!(
                    r.broadcast_children(name(s)),
                    children_by_bfs(&r, name(s)).as_slice(),
                    "local {p}, source {s}"
                );
            }
        }
    }

    /// A view like [`view`] whose records carry a version derived from their content (as
    /// gossip guarantees: the same version of a record is the same record).
    fn versioned_view(local: u64, n: u64, edges: &[(u64, u64)], down: &[u64]) -> Topology {
        let record = |p: u64| {
            let mut conns: Vec<u64> = edges
                .iter()
                .filter_map(|&(a, b)| (a == p).then_some(b).or((b == p).then_some(a)))
                .collect();
            conns.sort_unstable();
            conns.dedup();
            let mut s = summary(p, p * 10, 1, &conns);
            for c in &mut s.connections {
                // Peers in `down` report their links to smaller peers as not established.
                c.established = !(down.contains(&p) && c.remote.get() < p);
            }
            s.version = 1 + s.connections.iter().fold(0u64, |h, c| {
                h.wrapping_mul(31)
                    .wrapping_add(c.remote.get() * 2 + u64::from(c.established))
            }) % 1_000_000;
            s
        };
        let mut t = Topology::new(record(local));
        let others: Vec<PeerSummary> = (1..=n).filter(|&p| p != local).map(record).collect();
        t.merge(&others).unwrap();
        t
    }

    fn same(a: &Routes, b: &Routes) -> bool {
        a.local == b.local
            && a.names == b.names
            && a.short_ids == b.short_ids
            && a.adjacency == b.adjacency
            && a.parent == b.parent
            && a.first_hop == b.first_hop
            && a.by_short_id == b.by_short_id
            && a.records == b.records
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Routes updated from the previous ones as the topology changes (links coming and
        /// going, going down, peers appearing) equal routes computed from scratch.
        #[test]
        fn update_matches_compute(
            n in 2u64..40,
            steps in proptest::collection::vec(
                (proptest::collection::vec((1u64..40, 1u64..40), 0..80),
                 proptest::collection::vec(1u64..40, 0..6),
                 0u64..40),
                1..8)
        ) {
            let mut prev: Option<Routes> = None;
            for (raw, down, grow) in steps {
                // Some steps know fewer peers (the set of names changes too).
                let m = if grow % 3 == 0 { n.min(grow.max(2)) } else { n };
                let edges: Vec<(u64, u64)> = raw.into_iter()
                    .map(|(a, b)| (1 + (a - 1) % m, 1 + (b - 1) % m))
                    .filter(|(a, b)| a != b)
                    .collect();
                let t = versioned_view(1, m, &edges, &down);
                let fresh = Routes::compute(&t);
                if let Some(p) = &prev {
                    let updated = p.update(&t);
                    prop_assert!(same(&updated, &fresh));
                }
                prev = Some(fresh);
            }
        }

        /// On random graphs, the children computed for all sources at once are those of one
        /// BFS per source.
        #[test]
        fn children_match_bfs(n in 2u64..90, raw in proptest::collection::vec((1u64..90, 1u64..90), 0..300)) {
            let edges: Vec<(u64, u64)> = raw.into_iter()
                .map(|(a, b)| (1 + (a - 1) % n, 1 + (b - 1) % n))
                .filter(|(a, b)| a != b)
                .collect();
            for p in [1, n / 2 + 1, n] {
                let r = Routes::compute(&view(p, n, &edges));
                for s in 1..=n {
                    let want = children_by_bfs(&r, name(s));
                    prop_assert_eq!(r.broadcast_children(name(s)), want.as_slice());
                }
            }
        }

        /// On random graphs (connected or not), a flood from every source reaches every peer
        /// of its component exactly once and nobody else; unicast next hops lead to the
        /// destination in BFS distance.
        #[test]
        fn broadcast_exactly_once(n in 2u64..24, raw in proptest::collection::vec((1u64..24, 1u64..24), 0..60)) {
            let edges: Vec<(u64, u64)> = raw.into_iter()
                .map(|(a, b)| (1 + (a - 1) % n, 1 + (b - 1) % n))
                .filter(|(a, b)| a != b)
                .collect();
            let routes: Vec<Routes> = (1..=n).map(|p| Routes::compute(&view(p, n, &edges))).collect();
            let comps = components(n as usize, &edges);
            for comp in &comps {
                for &s in comp {
                    let got = flood(&routes, s);
                    for (p, &count) in got.iter().enumerate() {
                        let expected = usize::from(comp.contains(&p));
                        prop_assert_eq!(count, expected, "source {} peer {}", s + 1, p + 1);
                    }
                    // Unicast: following next hops from s reaches every member.
                    for &d in comp {
                        if d == s { continue; }
                        let mut at = s;
                        let mut hops = 0;
                        while at != d {
                            let hop = routes[at].next_hop(name(d as u64 + 1));
                            prop_assert!(hop.is_some());
                            at = (hop.unwrap().get() - 1) as usize;
                            hops += 1;
                            prop_assert!(hops <= n);
                        }
                        prop_assert_eq!(routes[s].path(name(d as u64 + 1)).unwrap().len() as u64, hops);
                    }
                }
            }
        }
    }
}
