//! Layer: tests. Ring unit and property tests, and a deterministic multi-peer harness for
//! [`Ipam`]: N instances, a seeded message shuffler with delay, loss and partitions
//! ([`Dest::Broadcast`] goes to every reachable peer, [`Dest::Unicast`] to the one peer).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;
use proptest::prelude::*;
use weft_mesh::{Instant, PeerName};

use crate::*;
use weft_mesh::rng::Rng;

fn pn(i: u64) -> PeerName {
    PeerName::new(0x0200_0000_0000 + i).expect("48-bit")
}

fn cidr(s: &str) -> Ipv4Net {
    s.parse().expect("cidr")
}

// ---------------------------------------------------------------------------------------------
// Ring

#[test]
fn claim_for_peers_divides_cidr_aligned() {
    let mut r = Ring::new(cidr("10.32.0.0/12"));
    r.claim_for_peers(&[pn(3), pn(1), pn(2), pn(1)]);
    assert_eq!(r.seeds(), &[pn(1), pn(2), pn(3)]);
    let e = r.entries();
    assert_eq!(e.len(), 3);
    let size = 1u64 << 20;
    let mut total = 0u64;
    for p in [pn(1), pn(2), pn(3)] {
        for (s, en) in r.owned_ranges(p) {
            let len = u64::from(en) - u64::from(s);
            assert!(len.is_power_of_two());
            assert_eq!(u64::from(s) % len, 0, "CIDR-aligned");
            total += len;
        }
    }
    assert_eq!(total, size);
    assert_eq!(r.owner(u32::from(Ipv4Addr::new(10, 32, 0, 1))), Some(pn(1)));
    assert_eq!(
        r.owner(u32::from(Ipv4Addr::new(10, 47, 255, 255))),
        Some(pn(3))
    );
    assert_eq!(r.owner(u32::from(Ipv4Addr::new(10, 48, 0, 0))), None);
}

#[test]
fn merge_refuses_only_what_cannot_be_reconciled() {
    let u = cidr("10.32.0.0/24");
    let mut a = Ring::new(u);
    a.claim_for_peers(&[pn(1), pn(2)]);
    let mut other_seed = Ring::new(u);
    other_seed.claim_for_peers(&[pn(1), pn(3)]);
    assert!(matches!(
        a.clone().merge(&other_seed),
        Err(MergeError::Seeds { .. })
    ));
    let other_u = Ring::new(cidr("10.33.0.0/24"));
    assert!(matches!(
        a.clone().merge(&other_u),
        Err(MergeError::Universe { .. })
    ));
    let before = a.clone();
    let _ = a.merge(&other_seed);
    assert_eq!(a, before, "a refused merge changes nothing");
}

#[test]
fn conflicting_claims_resolve_the_same_way_everywhere() {
    let u = cidr("10.32.0.0/24");
    let mut a = Ring::new(u);
    a.claim_for_peers(&[pn(1), pn(2), pn(3)]);
    // Two different takeovers of peer 2 at the same version (two sides of a partition): the
    // larger owner name wins, whichever ring is merged into which.
    let (mut b, mut c) = (a.clone(), a.clone());
    b.transfer(pn(2), pn(1));
    c.transfer(pn(2), pn(3));
    let (mut bc, mut cb) = (b.clone(), c.clone());
    assert_eq!(bc.merge(&c), Ok(true));
    assert_eq!(cb.merge(&b), Ok(false), "c's entries won already");
    assert_eq!(bc, cb);
    assert!(bc.owned_ranges(pn(2)).is_empty());
    assert_eq!(bc.owned_ranges(pn(3)).len(), 1, "{bc:?}");
    // A takeover of a range its owner kept using meanwhile: the higher version wins on both.
    let mut owner = a.clone();
    let i = owner.index_of(0x0a20_0000).unwrap();
    for k in 0..3 {
        owner.set_free(i, 80 - k);
    }
    let mut taker = a.clone();
    taker.transfer(pn(1), pn(2));
    let (mut ot, mut to) = (owner.clone(), taker.clone());
    ot.merge(&taker).unwrap();
    to.merge(&owner).unwrap();
    assert_eq!(ot, to);
    assert!(
        ot.owned_ranges(pn(1)).is_empty(),
        "the takeover's +100 wins"
    );
}

#[test]
fn ring_decode_validates() {
    let mut r = Ring::new(cidr("10.32.0.0/24"));
    r.claim_for_peers(&[pn(1), pn(2)]);
    let bytes = postcard::to_allocvec(&r).unwrap();
    let back: Ring = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(back, r);
    // Swap the two entries: tokens no longer increasing.
    let mut bad = r.clone();
    bad.give(0x0a20_0080, 0x0a20_0100, pn(2), pn(1));
    let mut repr = postcard::to_allocvec(&bad).unwrap();
    // Corrupt arbitrary bytes: must be refused or decode into a valid ring, never panic.
    for i in 0..repr.len() {
        repr[i] ^= 0x5a;
        if let Ok(x) = postcard::from_bytes::<Ring>(&repr) {
            x.validate().unwrap();
        }
        repr[i] ^= 0x5a;
    }
}

/// A ring over 10.0.0.0/24 with random entries (tokens multiples of 8 plus the start; owners,
/// versions and free counts independent, so rings conflict in every possible way).
fn arb_ring() -> impl Strategy<Value = Ring> {
    proptest::collection::btree_map(1u32..32, (0u32..4, 0u64..5, 0u32..7), 0..12).prop_flat_map(
        |m| {
            (Just(m), (0u32..4, 0u64..5, 0u32..7)).prop_map(|(m, e0)| {
                let u = cidr("10.0.0.0/24");
                let base = 0x0a00_0000u32;
                let mut entries = vec![entry_for(base, e0)];
                entries.extend(m.iter().map(|(&t, &e)| entry_for(base + t * 8, e)));
                let repr = (
                    u,
                    entries,
                    vec![pn(1), pn(2)],
                    Vec::<(PeerName, PeerName)>::new(),
                );
                let bytes = postcard::to_allocvec(&repr).unwrap();
                postcard::from_bytes::<Ring>(&bytes).unwrap()
            })
        },
    )
}

fn entry_for(token: u32, (version, owner, free): (u32, u64, u32)) -> Entry {
    Entry {
        token,
        owner: pn(owner),
        version,
        free,
    }
}

proptest! {
    #[test]
    fn merge_laws(a in arb_ring(), b in arb_ring(), c in arb_ring()) {
        let m = |x: &Ring, y: &Ring| { let mut x = x.clone(); x.merge(y).unwrap(); x };
        prop_assert_eq!(m(&a, &b), m(&b, &a));
        prop_assert_eq!(m(&m(&a, &b), &c), m(&a, &m(&b, &c)));
        prop_assert_eq!(m(&a, &a), a.clone());
        let mut x = m(&a, &b);
        prop_assert_eq!(x.merge(&b), Ok(false));
        prop_assert_eq!(x.merge(&Ring::new(cidr("10.0.0.0/24"))), Ok(false));
        prop_assert_eq!(m(&Ring::new(cidr("10.0.0.0/24")), &a), a.clone());
    }
}

// ---------------------------------------------------------------------------------------------
// Harness

struct Sim {
    peers: Vec<Ipam>,
    names: Vec<PeerName>,
    alive: Vec<bool>,
    group: Vec<u8>,
    queue: BTreeMap<(Instant, u64), (usize, usize, Vec<u8>)>,
    rng: Rng,
    loss_permille: u64,
    max_delay_ms: u64,
    now: Instant,
    seq: u64,
    results: BTreeMap<(usize, RequestId), Result<Vec<Ipv4Net>, IpamError>>,
    delivered: u64,
    msg_errors: Vec<IpamError>,
    configs: Vec<IpamConfig>,
    /// What each peer last stored ("the disk"): a restart starts from it.
    disk: Vec<Option<Snapshot>>,
    /// So many of each peer's next stores fail.
    fail_stores: Vec<u32>,
    store_failures: u64,
    /// Requests the sim made and their ident, to track what clients hold.
    reqs: BTreeMap<(usize, RequestId), Req>,
    /// What clients were told they hold: address -> (peer, ident). Only tracked when `strict`.
    held: BTreeMap<Ipv4Addr, (usize, String)>,
    /// Check on every completion that no address is handed out twice (off for the forced
    /// rmpeer of live peers, which creates duplicates on purpose).
    strict: bool,
    conflicts: Vec<(usize, Conflict)>,
}

#[derive(Clone, Debug)]
enum Req {
    Alloc(String),
    /// Release of all of an ident's addresses, answered once stored.
    Release(String),
}

impl Sim {
    fn new(n: usize, seed: u64, universe: Ipv4Net, init: impl Fn(usize) -> InitMode) -> Self {
        let names: Vec<PeerName> = (0..n as u64).map(|i| pn(i + 1)).collect();
        let configs: Vec<IpamConfig> = (0..n)
            .map(|i| IpamConfig {
                universe,
                default_subnet: universe,
                init: init(i),
            })
            .collect();
        let peers = (0..n)
            .map(|i| {
                Ipam::new(
                    names[i],
                    format!("host{i}"),
                    configs[i].clone(),
                    seed ^ (i as u64) << 8,
                    Instant::ZERO,
                )
                .unwrap()
            })
            .collect();
        let mut sim = Self {
            peers,
            names,
            alive: vec![true; n],
            group: vec![0; n],
            queue: BTreeMap::new(),
            rng: Rng::new(seed),
            loss_permille: 0,
            max_delay_ms: 20,
            now: Instant::ZERO,
            seq: 0,
            results: BTreeMap::new(),
            delivered: 0,
            msg_errors: Vec::new(),
            configs,
            disk: vec![None; n],
            fail_stores: vec![0; n],
            store_failures: 0,
            reqs: BTreeMap::new(),
            held: BTreeMap::new(),
            strict: true,
            conflicts: Vec::new(),
        };
        sim.topology_changed();
        sim
    }

    fn reachable(&self, a: usize, b: usize) -> bool {
        a != b && self.alive[a] && self.alive[b] && self.group[a] == self.group[b]
    }

    fn topology_changed(&mut self) {
        for i in 0..self.peers.len() {
            if !self.alive[i] {
                continue;
            }
            let reach: Vec<PeerName> = (0..self.peers.len())
                .filter(|&j| self.reachable(i, j))
                .map(|j| self.names[j])
                .collect();
            let names = self.names.clone();
            self.peers[i].peers_changed(self.now, &names, &reach);
        }
        self.pump_all();
    }

    fn pump_all(&mut self) {
        for i in 0..self.peers.len() {
            self.pump(i);
        }
    }

    fn pump(&mut self, i: usize) {
        // Store first (as the router does): that releases what depends on it.
        while let Some(c) = self.peers[i].poll_commit() {
            if self.fail_stores[i] > 0 {
                self.fail_stores[i] -= 1;
                self.store_failures += 1;
                let why = "No space left on device (os error 28)".to_owned();
                self.peers[i].stored(self.now, c.id, Err(why));
            } else {
                self.disk[i] = Some(c.snapshot);
                self.peers[i].stored(self.now, c.id, Ok(()));
            }
        }
        while let Some((dest, bytes)) = self.peers[i].poll_transmit() {
            if !self.alive[i] {
                continue;
            }
            let targets: Vec<usize> = match dest {
                Dest::Broadcast => (0..self.peers.len())
                    .filter(|&j| self.reachable(i, j))
                    .collect(),
                Dest::Unicast(p) => {
                    let j = self.names.iter().position(|n| *n == p).expect("known peer");
                    if self.reachable(i, j) {
                        vec![j]
                    } else {
                        vec![]
                    }
                }
            };
            for j in targets {
                if self.rng.below(1000) < self.loss_permille {
                    continue;
                }
                let at = self.now + Duration::from_millis(1 + self.rng.below(self.max_delay_ms));
                self.seq += 1;
                self.queue.insert((at, self.seq), (i, j, bytes.clone()));
            }
        }
        while let Some(ev) = self.peers[i].poll_event() {
            match ev {
                IpamEvent::Done { id, result } => {
                    self.client_sees(i, id, &result);
                    self.results.insert((i, id), result);
                }
                IpamEvent::Conflict(c) => self.conflicts.push((i, c)),
            }
        }
    }

    /// A client of peer `i` got `result` for request `id`.
    fn client_sees(&mut self, i: usize, id: RequestId, result: &Result<Vec<Ipv4Net>, IpamError>) {
        let (Some(req), Ok(addrs)) = (self.reqs.remove(&(i, id)), result) else {
            return;
        };
        match req {
            Req::Alloc(ident) => {
                for a in addrs {
                    let holder = (i, ident.clone());
                    if let Some(prev) = self.held.insert(a.addr(), holder.clone()) {
                        assert!(
                            !self.strict || prev == holder,
                            "{} handed out twice: to {prev:?} and to {holder:?}",
                            a.addr()
                        );
                    }
                }
            }
            Req::Release(ident) => self.held.retain(|_, h| *h != (i, ident.clone())),
        }
    }

    /// Allocates for `ident` on peer `i` in `subnet` (the default if `None`).
    fn alloc_in(&mut self, i: usize, ident: &str, subnet: Option<Ipv4Net>) -> RequestId {
        let id = self.peers[i].allocate(self.now, ident, subnet);
        self.reqs.insert((i, id), Req::Alloc(ident.to_owned()));
        self.pump(i);
        id
    }

    /// Releases everything of `ident` on peer `i`; the client hears back once it is stored.
    fn release(&mut self, i: usize, ident: &str) {
        self.peers[i].release(ident, None);
        let id = self.peers[i].sync();
        self.reqs.insert((i, id), Req::Release(ident.to_owned()));
        self.pump(i);
    }

    /// The router of peer `i` is killed and started again from what it stored. Everything a
    /// client was told it holds there must be in that state.
    fn restart(&mut self, i: usize, seed: u64) {
        let disk = self.disk[i].clone();
        for (addr, (p, ident)) in &self.held {
            if *p != i {
                continue;
            }
            let kept = disk.as_ref().is_some_and(|d| {
                d.owned
                    .iter()
                    .any(|o| o.addr.addr() == *addr && o.ident == *ident)
            });
            assert!(kept, "{addr} of {ident} was handed out but not stored");
        }
        let mut fresh = Ipam::new(
            self.names[i],
            format!("host{i}"),
            self.configs[i].clone(),
            seed,
            self.now,
        )
        .unwrap();
        if let Some(d) = disk {
            fresh.restore(d).unwrap();
        }
        self.peers[i] = fresh;
        self.fail_stores[i] = 0;
        // Requests in flight died with the router (their clients got an error).
        self.reqs.retain(|(p, _), _| *p != i);
        self.results.retain(|(p, _), _| *p != i);
        self.topology_changed();
    }

    /// Advances to the next event, if it is at or before `until`.
    fn step(&mut self, until: Instant) -> bool {
        let next_msg = self.queue.keys().next().map(|k| k.0);
        let next_timer = (0..self.peers.len())
            .filter(|&i| self.alive[i])
            .filter_map(|i| self.peers[i].poll_timeout())
            .min();
        let Some(next) = [next_msg, next_timer].into_iter().flatten().min() else {
            return false;
        };
        if next > until {
            return false;
        }
        self.now = self.now.max(next);
        while let Some(entry) = self.queue.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let (from, to, bytes) = entry.remove();
            if !self.reachable(from, to) {
                continue;
            }
            self.delivered += 1;
            if let Err(e) = self.peers[to].handle_message(self.now, self.names[from], &bytes) {
                self.msg_errors.push(e);
            }
            self.pump(to);
        }
        for i in 0..self.peers.len() {
            if self.alive[i] && self.peers[i].poll_timeout().is_some_and(|t| t <= self.now) {
                self.peers[i].handle_timeout(self.now);
                self.pump(i);
            }
        }
        true
    }

    fn run_until(&mut self, until: Instant) {
        while self.step(until) {
            if self.strict {
                self.check_invariants();
            }
        }
        self.now = self.now.max(until);
    }

    fn allocate(&mut self, i: usize, ident: &str) -> RequestId {
        self.alloc_in(i, ident, None)
    }

    /// No address handed out twice; no address owned by two live peers; every allocation
    /// inside the universe lies in a range its peer owns (or is one it is asking back).
    fn check_invariants(&self) {
        let mut seen: BTreeMap<Ipv4Addr, usize> = BTreeMap::new();
        let mut ranges: Vec<(u32, u32, usize)> = Vec::new();
        for (i, p) in self.peers.iter().enumerate() {
            if !self.alive[i] {
                continue;
            }
            let owned = p.ring().owned_ranges(self.names[i]);
            for addrs in p.owned().values() {
                for a in addrs {
                    if let Some(prev) = seen.insert(a.addr(), i) {
                        panic!("{} handed out by peers {prev} and {i}", a.addr());
                    }
                    let x = u32::from(a.addr());
                    assert!(
                        owned.iter().any(|&(s, e)| s <= x && x < e) || p.is_orphan(a.addr()),
                        "peer {i} has {a} outside its ranges"
                    );
                }
            }
            ranges.extend(owned.into_iter().map(|(s, e)| (s, e, i)));
        }
        ranges.sort();
        for w in ranges.windows(2) {
            assert!(
                w[0].1 <= w[1].0,
                "peers {} and {} both own {:?}/{:?}",
                w[0].2,
                w[1].2,
                w[0],
                w[1]
            );
        }
    }

    /// After heal and quiescence: identical rings covering the universe, free counts right.
    fn check_converged(&self) {
        let live: Vec<usize> = (0..self.peers.len()).filter(|&i| self.alive[i]).collect();
        let ring = self.peers[live[0]].ring();
        assert!(!ring.is_empty());
        let mut total = 0u64;
        let mut owners = BTreeSet::new();
        for e in ring.entries() {
            owners.insert(e.owner);
        }
        for o in &owners {
            for (s, e) in ring.owned_ranges(*o) {
                total += u64::from(e) - u64::from(s);
            }
        }
        let u = ring.universe();
        assert_eq!(
            total,
            1u64 << (32 - u.prefix_len()),
            "all space accounted for"
        );
        for &i in &live {
            assert_eq!(self.peers[i].ring(), ring, "peer {i} converged");
            assert_eq!(
                self.peers[i].status().orphans,
                0,
                "peer {i} settled its orphans"
            );
        }
        let allocated: usize = live.iter().map(|&i| self.peers[i].status().allocated).sum();
        let free: u64 = ring.entries().iter().map(|e| u64::from(e.free)).sum();
        assert_eq!(free + allocated as u64, total, "free counts add up");
    }
}

fn consensus(n: usize) -> impl Fn(usize) -> InitMode {
    move |_| InitMode::Consensus { quorum: Some(n) }
}

/// Peers allocate concurrently through a partition and heal, with loss.
fn concurrent(n: usize, per_peer: usize, seed: u64) -> Sim {
    let mut sim = Sim::new(n, seed, cidr("10.32.0.0/22"), consensus(n));
    sim.loss_permille = 10;
    let mut rng = Rng::new(seed ^ 0xabc);
    let mut schedule: Vec<(u64, usize, usize)> = Vec::new();
    for i in 0..n {
        for k in 0..per_peer {
            schedule.push((rng.below(60_000), i, k));
        }
    }
    schedule.sort();
    let mut ids = Vec::new();
    let (part_at, heal_at) = (Instant::from_millis(20_000), Instant::from_millis(50_000));
    let mut parted = false;
    for (t, i, k) in schedule {
        let t = Instant::from_millis(t);
        if !parted && t >= part_at {
            sim.run_until(part_at);
            for g in 0..n {
                sim.group[g] = u8::from(rng.below(3) == 0);
            }
            sim.topology_changed();
            parted = true;
        }
        if parted && t >= heal_at && sim.group.iter().any(|&g| g != 0) {
            sim.run_until(heal_at);
            sim.group.iter_mut().for_each(|g| *g = 0);
            sim.topology_changed();
        }
        sim.run_until(t);
        ids.push((i, sim.allocate(i, &format!("c{i}-{k}"))));
    }
    sim.group.iter_mut().for_each(|g| *g = 0);
    sim.topology_changed();
    sim.run_until(Instant::from_millis(300_000));
    for (i, id) in &ids {
        match sim.results.get(&(*i, *id)) {
            Some(Ok(a)) => assert_eq!(a.len(), 1),
            other => panic!("peer {i} request {id}: {other:?}"),
        }
    }
    sim.check_invariants();
    sim.check_converged();
    assert!(sim.msg_errors.is_empty(), "{:?}", sim.msg_errors);
    sim
}

#[test]
fn concurrent_3_peers() {
    for seed in 0..4 {
        concurrent(3, 20, seed);
    }
}

#[test]
fn concurrent_12_peers() {
    concurrent(12, 15, 7);
}

#[test]
fn concurrent_50_peers() {
    concurrent(50, 8, 11);
}

/// Virtual time and messages from the first allocation until every peer has the ring.
fn time_to_consensus(n: usize, seed: u64) -> (Duration, u64) {
    let mut sim = Sim::new(n, seed, cidr("10.32.0.0/12"), consensus(n));
    for i in 0..n {
        sim.allocate(i, "first");
    }
    let start = sim.now;
    while (0..n).any(|i| sim.peers[i].ring().is_empty()) {
        assert!(
            sim.step(Instant::from_millis(120_000)),
            "consensus not reached"
        );
        sim.check_invariants();
    }
    let t = sim.now.saturating_duration_since(start);
    let msgs = sim.delivered;
    sim.run_until(Instant::from_millis(60_000));
    for i in 0..n {
        assert!(sim.peers[i].ring().seeds().len() > n / 2);
        assert!(matches!(sim.results.get(&(i, 1)), Some(Ok(_))), "peer {i}");
    }
    sim.check_converged();
    (t, msgs)
}

#[test]
fn consensus_3_and_12() {
    for seed in 0..5 {
        let (t3, m3) = time_to_consensus(3, seed);
        let (t12, m12) = time_to_consensus(12, seed);
        eprintln!("seed {seed}: 3 peers {t3:?} {m3} msgs; 12 peers {t12:?} {m12} msgs");
        assert!(t3 < Duration::from_secs(1) && t12 < Duration::from_secs(20));
    }
}

#[test]
fn consensus_two_of_three_with_one_down() {
    let mut sim = Sim::new(3, 1, cidr("10.32.0.0/12"), consensus(3));
    sim.alive[2] = false;
    sim.topology_changed();
    sim.alive[1] = false;
    sim.topology_changed();
    let id = sim.allocate(0, "a");
    sim.run_until(Instant::from_millis(12_000));
    assert_eq!(
        sim.peers[0].status().state,
        IpamState::AwaitingConsensus {
            quorum: 2,
            known: 1
        }
    );
    assert_eq!(
        sim.peers[0].status().state.to_string(),
        "awaiting consensus: quorum 2, known 1"
    );
    // Status lists the waiting request (Weave's PendingAllocates) and no ring ranges yet.
    let st = sim.peers[0].status();
    assert_eq!(
        st.pending_allocates,
        vec![("a".to_owned(), cidr("10.32.0.0/12"))]
    );
    assert!(st.pending_claims.is_empty() && st.ranges.is_empty());
    assert!(!sim.results.contains_key(&(0, id)));
    sim.alive[1] = true;
    sim.topology_changed();
    sim.run_until(Instant::from_millis(30_000));
    assert!(matches!(sim.results.get(&(0, id)), Some(Ok(_))));
    assert_eq!(sim.peers[0].ring().seeds(), &[sim.names[0], sim.names[1]]);
    assert_eq!(sim.peers[1].ring(), sim.peers[0].ring());
    // The third peer comes back and adopts the ring.
    sim.alive[2] = true;
    sim.topology_changed();
    let id = sim.allocate(2, "c");
    sim.run_until(Instant::from_millis(60_000));
    assert!(matches!(sim.results.get(&(2, id)), Some(Ok(_))));
    sim.check_converged();
}

#[test]
fn seed_mode_needs_no_messages() {
    let seeds: Vec<PeerName> = (1..=3).map(pn).collect();
    let mut sim = Sim::new(3, 2, cidr("10.32.0.0/12"), |_| {
        InitMode::Seed((1..=3).map(pn).collect())
    });
    for i in 0..3 {
        assert_eq!(sim.peers[i].status().state, IpamState::Ready);
        assert_eq!(sim.peers[i].ring().seeds(), &seeds[..]);
        let id = sim.allocate(i, "x");
        assert!(matches!(sim.results.get(&(i, id)), Some(Ok(_))));
    }
    assert_eq!(sim.peers[0].ring().entries().len(), 3);
    // Status ranges (Weave's IPAM.Entries) tile the universe in address order.
    let st = sim.peers[0].status();
    assert_eq!(st.ranges.len(), 3);
    assert_eq!(st.ranges.iter().map(|r| r.size).sum::<u64>(), 1 << 20);
    assert_eq!(st.ranges[0].start, Ipv4Addr::new(10, 32, 0, 0));
    for w in st.ranges.windows(2) {
        assert_eq!(
            u64::from(u32::from(w[0].start)) + w[0].size,
            u64::from(u32::from(w[1].start))
        );
    }
    assert!(st.ranges.iter().all(|r| seeds.contains(&r.owner)));
    assert!(st.pending_allocates.is_empty());
    sim.run_until(Instant::from_millis(5_000));
    sim.check_converged();
}

#[test]
fn observer_gets_a_ring_and_space() {
    let mut sim = Sim::new(3, 3, cidr("10.32.0.0/16"), |i| {
        if i == 2 {
            InitMode::Observer
        } else {
            InitMode::Consensus { quorum: Some(2) }
        }
    });
    let id = sim.allocate(2, "obs");
    assert_eq!(sim.peers[2].status().state, IpamState::Priming);
    sim.run_until(Instant::from_millis(30_000));
    assert!(
        matches!(sim.results.get(&(2, id)), Some(Ok(_))),
        "{:?}",
        sim.results
    );
    assert!(
        !sim.peers[2].ring().seeds().contains(&sim.names[2]),
        "observer never votes"
    );
    sim.check_converged();
}

#[test]
fn exhausted_subnet_is_an_error() {
    let mut sim = Sim::new(2, 4, cidr("10.32.0.0/28"), |_| {
        InitMode::Seed(vec![pn(1), pn(2)])
    });
    let subnet = cidr("10.32.0.0/29");
    let mut got = BTreeSet::new();
    for k in 0..7 {
        let i = k % 2;
        let id = sim.peers[i].allocate(sim.now, &format!("c{k}"), Some(subnet));
        sim.pump(i);
        sim.run_until(sim.now + Duration::from_secs(10));
        match sim.results.get(&(i, id)) {
            Some(Ok(a)) => assert!(got.insert(a[0])),
            Some(Err(IpamError::Exhausted { subnet: s })) => {
                assert_eq!(*s, subnet);
                assert_eq!(k, 6, "exhausted only when all 6 hosts are used");
                assert_eq!(
                    IpamError::Exhausted { subnet }.to_string(),
                    "no free addresses left in 10.32.0.0/29"
                );
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got.len(), 6);
    assert!(!got.iter().any(
        |a| a.addr() == Ipv4Addr::new(10, 32, 0, 0) || a.addr() == Ipv4Addr::new(10, 32, 0, 7)
    ));
    sim.run_until(sim.now + Duration::from_secs(60));
    sim.check_converged();
}

fn single(universe: &str) -> Ipam {
    let config = IpamConfig {
        universe: cidr(universe),
        default_subnet: cidr(universe),
        init: InitMode::Seed(vec![pn(1)]),
    };
    Ipam::new(pn(1), "one".into(), config, 1, Instant::ZERO).unwrap()
}

/// Stores whatever `ipam` wants stored (always successfully).
fn store(ipam: &mut Ipam) {
    while let Some(c) = ipam.poll_commit() {
        ipam.stored(Instant::ZERO, c.id, Ok(()));
    }
}

fn done(ipam: &mut Ipam, id: RequestId) -> Result<Vec<Ipv4Net>, IpamError> {
    store(ipam);
    let mut found = None;
    while let Some(ev) = ipam.poll_event() {
        if let IpamEvent::Done { id: i, result } = ev {
            if i == id {
                found = Some(result);
            }
        }
    }
    found.expect("completed")
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let mut ipam = single("10.32.0.0/12");
    let now = Instant::ZERO;
    let id = ipam.allocate(now, "a", None);
    assert_eq!(done(&mut ipam, id), Ok(vec![cidr("10.32.0.1/12")]));
    let id = ipam.allocate(now, "a", None);
    assert_eq!(
        done(&mut ipam, id),
        Ok(vec![cidr("10.32.0.1/12")]),
        "idempotent"
    );
    let before = ipam.snapshot();
    let id = ipam.allocate(now, "b", Some(cidr("10.48.0.0/12")));
    let e = done(&mut ipam, id).unwrap_err();
    assert_eq!(
        e.to_string(),
        "10.48.0.0/12 is outside the allocation range 10.32.0.0/12"
    );
    let id = ipam.claim(now, "b", cidr("10.32.0.1/12"));
    assert!(matches!(
        done(&mut ipam, id),
        Err(IpamError::AddressInUse { .. })
    ));
    let id = ipam.allocate(now, "b", Some(cidr("10.32.1.0/31")));
    assert!(matches!(
        done(&mut ipam, id),
        Err(IpamError::SubnetTooSmall { .. })
    ));
    let id = ipam.allocate(now, "b", Some(cidr("10.32.1.5/24")));
    assert!(matches!(
        done(&mut ipam, id),
        Err(IpamError::NotNetwork { .. })
    ));
    for junk in [
        &b""[..],
        b"\xff\xff\xff",
        b"\x00\x01\x02garbage",
        &[0u8; 64],
    ] {
        assert!(ipam.handle_message(now, pn(2), junk).is_err());
    }
    assert_eq!(ipam.snapshot(), before, "nothing allocated, nothing lost");
    // A ring from a peer with another range is refused.
    let mut other = single("10.33.0.0/16");
    other.handle_timeout(Instant::from_millis(31_000));
    let (_, bytes) = other.poll_transmit().unwrap();
    assert!(matches!(
        ipam.handle_message(now, pn(2), &bytes),
        Err(IpamError::Merge(MergeError::Universe { .. }))
    ));
    assert_eq!(ipam.snapshot(), before);
    // Config errors.
    let bad = IpamConfig {
        universe: cidr("10.32.0.0/12"),
        default_subnet: cidr("10.64.0.0/16"),
        init: InitMode::Observer,
    };
    assert!(matches!(
        Ipam::new(pn(1), "x".into(), bad, 0, now),
        Err(IpamError::DefaultSubnetOutside { .. })
    ));
}

#[test]
fn dead_containers_keep_addresses_until_claimed_or_expired() {
    let mut ipam = single("10.32.0.0/12");
    let t0 = Instant::ZERO;
    let id = ipam.allocate(t0, "c2", Some(cidr("10.32.1.0/24")));
    assert_eq!(done(&mut ipam, id), Ok(vec![cidr("10.32.1.1/24")]));
    let id = ipam.allocate(t0, "c1", Some(cidr("10.32.1.0/24")));
    assert_eq!(done(&mut ipam, id), Ok(vec![cidr("10.32.1.2/24")]));

    // c2 dies: its address is held, not handed out by allocation...
    ipam.container_died(t0, "c2");
    assert!(ipam.is_dead("c2"));
    let id = ipam.allocate(t0, "c4", Some(cidr("10.32.1.0/24")));
    assert_eq!(done(&mut ipam, id), Ok(vec![cidr("10.32.1.3/24")]));
    // ... but an explicit claim by another container takes it at once.
    let id = ipam.claim(t0, "c3", cidr("10.32.1.1/24"));
    assert_eq!(done(&mut ipam, id), Ok(vec![cidr("10.32.1.1/24")]));
    assert_eq!(ipam.lookup("c2"), Vec::new());
    assert_eq!(ipam.lookup("c3"), vec![cidr("10.32.1.1/24")]);
    assert!(!ipam.is_dead("c2"), "nothing left to hold for c2");
    // A live container's address is still refused.
    let id = ipam.claim(t0, "c5", cidr("10.32.1.2/24"));
    assert!(matches!(
        done(&mut ipam, id),
        Err(IpamError::AddressInUse { .. })
    ));

    // c1 dies and restarts within the timeout: it keeps its address.
    ipam.container_died(t0, "c1");
    assert_eq!(
        ipam.poll_timeout().map(|t| t <= t0 + DEAD_TIMEOUT),
        Some(true)
    );
    ipam.container_started("c1");
    ipam.handle_timeout(t0 + DEAD_TIMEOUT + Duration::from_secs(1));
    assert_eq!(ipam.lookup("c1"), vec![cidr("10.32.1.2/24")]);

    // c4 dies and stays down: released after the timeout, not before.
    ipam.container_died(t0, "c4");
    ipam.handle_timeout(t0 + (DEAD_TIMEOUT - Duration::from_secs(1)));
    assert_eq!(ipam.lookup("c4"), vec![cidr("10.32.1.3/24")]);
    ipam.handle_timeout(t0 + DEAD_TIMEOUT);
    assert_eq!(ipam.lookup("c4"), Vec::new());

    // A new request by a dead ident revives it.
    ipam.container_died(t0, "c3");
    let id = ipam.allocate(t0, "c3", Some(cidr("10.32.1.0/24")));
    assert_eq!(done(&mut ipam, id), Ok(vec![cidr("10.32.1.1/24")]));
    assert!(!ipam.is_dead("c3"));

    // Destroyed: released at once.
    assert_eq!(ipam.container_destroyed("c1"), vec![cidr("10.32.1.2/24")]);
    assert_eq!(ipam.lookup("c1"), Vec::new());
    // Dying without addresses marks nothing.
    ipam.container_died(t0, "nobody");
    assert!(!ipam.is_dead("nobody"));
}

#[test]
fn release_and_reuse() {
    let mut ipam = single("10.32.0.0/24");
    let now = Instant::ZERO;
    let a = ipam.allocate(now, "a", None);
    let b = ipam.allocate(now, "b", None);
    assert_eq!(done(&mut ipam, b), Ok(vec![cidr("10.32.0.2/24")]));
    let _ = a;
    assert_eq!(ipam.release("a", None), vec![cidr("10.32.0.1/24")]);
    assert_eq!(ipam.release("a", None), vec![]);
    let c = ipam.allocate(now, "c", None);
    assert_eq!(done(&mut ipam, c), Ok(vec![cidr("10.32.0.1/24")]));
    assert_eq!(ipam.ring().entries()[0].free, 256 - 2);
    let outside = ipam.claim(now, "d", cidr("192.168.1.5/24"));
    assert_eq!(done(&mut ipam, outside), Ok(vec![cidr("192.168.1.5/24")]));
    assert_eq!(ipam.lookup("d"), vec![cidr("192.168.1.5/24")]);
    assert_eq!(ipam.owned().len(), 3);
}

#[test]
fn snapshot_restore() {
    let mut ipam = single("10.32.0.0/16");
    let id = ipam.allocate(Instant::ZERO, "a", None);
    done(&mut ipam, id).unwrap();
    let snap = ipam.snapshot();
    let config = |u: &str| IpamConfig {
        universe: cidr(u),
        default_subnet: cidr(u),
        init: InitMode::Consensus { quorum: None },
    };
    let mut fresh = Ipam::new(
        pn(1),
        "one".into(),
        config("10.32.0.0/16"),
        2,
        Instant::ZERO,
    )
    .unwrap();
    fresh.restore(snap.clone()).unwrap();
    assert_eq!(fresh.lookup("a"), vec![cidr("10.32.0.1/16")]);
    assert_eq!(fresh.status().state, IpamState::Ready);
    let id = fresh.allocate(Instant::ZERO, "b", None);
    assert_eq!(done(&mut fresh, id), Ok(vec![cidr("10.32.0.2/16")]));
    let mut other_name = Ipam::new(
        pn(2),
        "two".into(),
        config("10.32.0.0/16"),
        2,
        Instant::ZERO,
    )
    .unwrap();
    let e = other_name.restore(snap.clone()).unwrap_err();
    assert!(matches!(e, IpamError::WrongPeer { .. }), "{e}");
    let mut other_range = Ipam::new(
        pn(1),
        "one".into(),
        config("10.32.0.0/12"),
        2,
        Instant::ZERO,
    )
    .unwrap();
    assert!(matches!(
        other_range.restore(snap),
        Err(IpamError::WrongUniverse { .. })
    ));
    assert!(other_range.ring().is_empty() && other_range.owned().is_empty());
}

#[test]
fn claims_across_peers() {
    let mut sim = Sim::new(2, 5, cidr("10.32.0.0/24"), |_| {
        InitMode::Seed(vec![pn(1), pn(2)])
    });
    // 10.32.0.200 belongs to peer 2: peer 1 gets it by single-address donation.
    let id = sim.peers[0].claim(sim.now, "x", cidr("10.32.0.200/24"));
    sim.pump(0);
    sim.run_until(Instant::from_millis(2_000));
    assert_eq!(
        sim.results.get(&(0, id)),
        Some(&Ok(vec![cidr("10.32.0.200/24")]))
    );
    // Peer 2 allocates 10.32.0.128 and peer 1 cannot claim it.
    let a = sim.peers[1].allocate(sim.now, "y", None);
    sim.pump(1);
    sim.run_until(Instant::from_millis(4_000));
    assert_eq!(
        sim.results.get(&(1, a)),
        Some(&Ok(vec![cidr("10.32.0.128/24")]))
    );
    let id = sim.peers[0].claim(sim.now, "z", cidr("10.32.0.128/24"));
    sim.pump(0);
    sim.run_until(Instant::from_millis(6_000));
    assert!(matches!(
        sim.results.get(&(0, id)),
        Some(Err(IpamError::OwnedByOther { .. }))
    ));
    // Peer 2 never hands out .200.
    for k in 0..126 {
        sim.peers[1].allocate(sim.now, &format!("f{k}"), None);
        sim.pump(1);
        sim.run_until(sim.now + Duration::from_millis(500));
    }
    sim.run_until(sim.now + Duration::from_secs(60));
    sim.check_invariants();
    sim.check_converged();
}

#[test]
fn rmpeer_and_its_refusals() {
    let seeds: Vec<PeerName> = (1..=4).map(pn).collect();
    let mut sim = Sim::new(4, 6, cidr("10.32.0.0/16"), move |_| {
        InitMode::Seed(seeds.clone())
    });
    let now = sim.now;
    assert_eq!(
        sim.peers[0].rmpeer(now, pn(2), true),
        Err(IpamError::PeerReachable(pn(2)))
    );
    assert_eq!(
        sim.peers[0].rmpeer(now, pn(1), true),
        Err(IpamError::RemoveSelf)
    );
    assert_eq!(
        sim.peers[0].rmpeer(now, pn(77), true),
        Err(IpamError::UnknownPeer(pn(77)))
    );
    sim.alive[3] = false;
    sim.topology_changed();
    // Just gone: it may only be partitioned away. Refused unless forced...
    sim.run_until(Instant::from_millis(40_000));
    let e = sim.peers[0].rmpeer(sim.now, pn(4), false).unwrap_err();
    assert_eq!(
        e,
        IpamError::RecentlySeen {
            peer: pn(4),
            secs: 40
        }
    );
    assert!(e.to_string().contains("--force"), "{e}");
    // ...or once it has been gone for longer than the grace period.
    let mut later = Sim::new(2, 6, cidr("10.32.0.0/16"), |_| {
        InitMode::Seed(vec![pn(1), pn(2)])
    });
    later.alive[1] = false;
    later.topology_changed();
    later.run_until(Instant::ZERO + RMPEER_GRACE + Duration::from_secs(1));
    assert_eq!(later.peers[0].rmpeer(later.now, pn(2), false), Ok(1 << 15));
    assert_eq!(sim.peers[0].rmpeer(sim.now, pn(4), true), Ok(1 << 14));
    sim.pump(0);
    sim.run_until(Instant::from_millis(42_000));
    let e = sim.peers[1].rmpeer(sim.now, pn(4), true).unwrap_err();
    assert_eq!(
        e,
        IpamError::AlreadyTakenOver {
            peer: pn(4),
            by: pn(1)
        }
    );
    assert!(e.to_string().contains("already removed"));
    sim.check_converged();
    assert!(sim.peers[1].ring().owned_ranges(pn(4)).is_empty());
}

#[test]
fn shutdown_hands_ranges_to_a_live_peer() {
    let mut sim = Sim::new(3, 8, cidr("10.32.0.0/16"), |_| {
        InitMode::Seed(vec![pn(1), pn(2), pn(3)])
    });
    let heir = sim.peers[2].shutdown(sim.now);
    assert_eq!(heir, Some(pn(1)));
    sim.pump(2);
    sim.run_until(Instant::from_millis(2_000));
    sim.alive[2] = false;
    sim.topology_changed();
    assert!(sim.peers[0].ring().owned_ranges(pn(3)).is_empty());
    assert_eq!(sim.peers[1].ring(), sim.peers[0].ring());
    let id = sim.peers[2].allocate(sim.now, "late", None);
    assert!(matches!(
        done(&mut sim.peers[2], id),
        Err(IpamError::NotReady(_))
    ));
}

// Random sequences of allocations, releases, donations (via shortage), partitions, peer deaths
// with takeovers, merges, stores that fail (full or read-only disk) and routers killed and
// restarted from what they stored: no address is ever handed out twice, no two live peers ever
// own the same address, and whatever a client was told it holds survives a restart.
#[derive(Clone, Debug)]
enum Op {
    Alloc(usize, u8),
    Release(usize),
    Run(u16),
    Partition(u8),
    Heal,
    Kill(usize),
    Rmpeer(usize, usize),
    /// The next N stores of a peer fail.
    FailStores(usize, u8),
    /// A peer's router is killed and started again from its disk.
    Restart(usize),
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0usize..5, 0u8..3).prop_map(|(p, s)| Op::Alloc(p, s)),
        1 => (0usize..5).prop_map(Op::Release),
        4 => (1u16..8000).prop_map(Op::Run),
        1 => any::<u8>().prop_map(Op::Partition),
        1 => Just(Op::Heal),
        1 => (0usize..5).prop_map(Op::Kill),
        1 => (0usize..5, 0usize..5).prop_map(|(a, b)| Op::Rmpeer(a, b)),
        2 => (0usize..5, 1u8..6).prop_map(|(p, n)| Op::FailStores(p, n)),
        1 => (0usize..5).prop_map(Op::Restart),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn never_a_duplicate(ops in proptest::collection::vec(arb_op(), 1..60), seed in any::<u64>()) {
        let subnets = [cidr("10.32.0.0/26"), cidr("10.32.0.64/26"), cidr("10.32.0.0/25")];
        let mut sim = Sim::new(5, seed, cidr("10.32.0.0/25"), consensus(5));
        sim.loss_permille = 50;
        let mut n = 0;
        let mut removed = BTreeSet::new();
        for op in ops {
            match op {
                Op::Alloc(p, s) => {
                    if sim.alive[p] {
                        n += 1;
                        sim.alloc_in(p, &format!("c{n}"), Some(subnets[usize::from(s)]));
                    }
                }
                Op::Release(p) => {
                    let ident = sim.peers[p].owned().keys().next().cloned();
                    if let (Some(ident), true) = (ident, sim.alive[p]) {
                        sim.release(p, &ident);
                    }
                }
                Op::Run(ms) => {
                    let t = sim.now + Duration::from_millis(u64::from(ms));
                    sim.run_until(t);
                }
                Op::Partition(mask) => {
                    for i in 0..5 {
                        sim.group[i] = (mask >> i) & 1;
                    }
                    sim.topology_changed();
                }
                Op::Heal => {
                    sim.group = vec![0; 5];
                    sim.topology_changed();
                }
                Op::Kill(p) => {
                    if sim.alive.iter().filter(|a| **a).count() > 1 {
                        sim.alive[p] = false;
                        // The host is gone, and its containers with it.
                        sim.held.retain(|_, (h, _)| *h != p);
                        sim.topology_changed();
                    }
                }
                Op::Rmpeer(by, dead) => {
                    // Only of dead peers (a live one would still hand out its addresses), and
                    // only once: that is what the refusals are for.
                    // The remover must have seen everything the dead peer did (Weave's
                    // documented precondition): heal and let gossip settle first.
                    if sim.alive[by] && !sim.alive[dead] && removed.insert(dead) {
                        sim.group = vec![0; 5];
                        sim.topology_changed();
                        let t = sim.now + Duration::from_secs(65);
                        sim.run_until(t);
                        let live: Vec<usize> = (0..5).filter(|&i| sim.alive[i]).collect();
                        if live.iter().all(|&i| sim.peers[i].ring() == sim.peers[by].ring()) {
                            // Dead for 65 s only: within the grace period, so forced.
                            let _ = sim.peers[by].rmpeer(sim.now, sim.names[dead], true);
                            sim.pump(by);
                        }
                    }
                }
                Op::FailStores(p, k) => sim.fail_stores[p] += u32::from(k),
                Op::Restart(p) => {
                    if sim.alive[p] {
                        sim.restart(p, seed ^ 0x5eed ^ n);
                    }
                }
            }
            sim.check_invariants();
        }
        // Whatever was handed out is owned by its peer, in memory and on disk.
        for (addr, (p, ident)) in &sim.held {
            prop_assert!(sim.peers[*p].lookup(ident).iter().any(|a| a.addr() == *addr));
        }
    }
}

/// A failed store hands nothing out and releases nothing; the status says why until a store
/// succeeds; what was held back is answered with the reason.
#[test]
fn a_failed_store_is_undone_and_reported() {
    let mut ipam = single("10.32.0.0/24");
    let now = Instant::ZERO;
    let a = ipam.allocate(now, "a", None);
    assert_eq!(done(&mut ipam, a), Ok(vec![cidr("10.32.0.1/24")]));
    let before = ipam.snapshot();
    let b = ipam.allocate(now, "b", None);
    assert_eq!(ipam.poll_event(), None, "held until stored");
    let c = ipam.poll_commit().expect("a commit");
    assert!(ipam.poll_commit().is_none(), "one in flight at a time");
    // More changes while the write is under way: they go down with it.
    let d = ipam.allocate(now, "d", None);
    ipam.release("a", None);
    let sync = ipam.sync();
    ipam.stored(
        now,
        c.id,
        Err("No space left on device (os error 28)".into()),
    );
    let mut results = BTreeMap::new();
    while let Some(ev) = ipam.poll_event() {
        if let IpamEvent::Done { id, result } = ev {
            results.insert(id, result);
        }
    }
    for id in [b, d, sync] {
        let e = results[&id].clone().unwrap_err();
        assert!(matches!(e, IpamError::NotStored(_)), "{e}");
        assert!(e.to_string().contains("No space left"), "{e}");
    }
    assert_eq!(ipam.snapshot(), before, "back to what was stored");
    assert_eq!(
        ipam.lookup("a"),
        vec![cidr("10.32.0.1/24")],
        "release undone"
    );
    let st = ipam.status();
    assert_eq!(
        st.store_error.as_deref(),
        Some("No space left on device (os error 28)")
    );
    assert_eq!(ipam.stats().store_failures, 1);
    // The disk is back: the next allocation gets the address b did not get.
    let e = ipam.allocate(now, "e", None);
    assert_eq!(done(&mut ipam, e), Ok(vec![cidr("10.32.0.2/24")]));
    assert_eq!(ipam.status().store_error, None);
}

// A peer cut off by a partition is removed with rmpeer --force while it keeps allocating; both
// sides hand out addresses in its ranges. After the heal every peer holds the same ring, no
// address is allocated by two peers, and every address both sides handed out was reported
// and released on the side that lost the range.
proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn forced_rmpeer_of_a_partitioned_peer_heals_to_one_ring(
        seed in any::<u64>(),
        before in 0usize..6,
        during in proptest::collection::vec((0usize..3, 0u8..2), 0..40),
        victim in 0usize..3,
    ) {
        let seeds: Vec<PeerName> = (1..=3).map(pn).collect();
        let mut sim = Sim::new(3, seed, cidr("10.32.0.0/26"), move |_| InitMode::Seed(seeds.clone()));
        sim.strict = false;
        sim.loss_permille = 20;
        let subnets = [cidr("10.32.0.0/26"), cidr("10.32.0.32/27")];
        for k in 0..before {
            sim.allocate(k % 3, &format!("b{k}"));
        }
        sim.run_until(sim.now + Duration::from_secs(5));
        sim.group[victim] = 1;
        sim.topology_changed();
        let remover = (victim + 1) % 3;
        let r = sim.peers[remover].rmpeer(sim.now, sim.names[victim], false);
        prop_assert!(matches!(r, Err(IpamError::RecentlySeen { .. })), "{:?}", r);
        prop_assert!(sim.peers[remover].rmpeer(sim.now, sim.names[victim], true).is_ok());
        sim.pump(remover);
        for (k, (p, s)) in during.iter().enumerate() {
            sim.alloc_in(*p, &format!("d{k}"), Some(subnets[usize::from(*s)]));
            sim.run_until(sim.now + Duration::from_millis(300));
        }
        sim.run_until(sim.now + Duration::from_secs(10));
        // Addresses both sides hold now.
        let side = |sim: &Sim, i: usize| -> BTreeSet<Ipv4Addr> {
            sim.peers[i].owned().values().flatten().map(|a| a.addr()).collect()
        };
        let cut = side(&sim, victim);
        let mut rest = BTreeSet::new();
        for i in (0..3).filter(|&i| i != victim) {
            rest.extend(side(&sim, i));
        }
        let dups: BTreeSet<Ipv4Addr> = cut.intersection(&rest).copied().collect();
        sim.group = vec![0; 3];
        sim.topology_changed();
        sim.run_until(sim.now + Duration::from_secs(120));
        sim.check_invariants();
        sim.check_converged();
        let reported: BTreeSet<Ipv4Addr> = sim.conflicts.iter().map(|(_, c)| c.addr).collect();
        prop_assert!(dups.is_subset(&reported), "duplicates {:?}, reported {:?}", dups, reported);
        for (i, c) in &sim.conflicts {
            prop_assert!(!side(&sim, *i).contains(&c.addr), "peer {} still has {}", i, c.addr);
            prop_assert!(sim.peers[*i].status().conflicts.contains(c));
        }
        prop_assert!(sim.msg_errors.is_empty(), "{:?}", sim.msg_errors);
    }
}

/// Writes valid messages as seeds for the `ipam` fuzz target:
/// `WEFT_IPAM_CORPUS=crates/fuzz/corpus/ipam cargo test -p weft-ipam -- --ignored write_fuzz_corpus`.
#[test]
#[ignore = "writes files; run by hand"]
fn write_fuzz_corpus() {
    use crate::msg::{Ballot, Envelope, Message};
    let Ok(dir) = std::env::var("WEFT_IPAM_CORPUS") else {
        return;
    };
    let u = cidr("10.32.0.0/24");
    let mut ring = Ring::new(u);
    ring.claim_for_peers(&[pn(1), pn(2)]);
    let ballot = Ballot {
        round: 3,
        proposer: pn(2),
    };
    let msgs = [
        Message::Ring {
            nickname: "two".into(),
            ring: ring.clone(),
        },
        Message::RingRequest {
            nickname: "two".into(),
        },
        Message::Prepare { ballot },
        Message::Promise {
            ballot,
            accepted: Some((ballot, vec![pn(1), pn(2)])),
        },
        Message::Accept {
            ballot,
            value: vec![pn(1), pn(2)],
        },
        Message::Accepted {
            ballot,
            value: vec![pn(1), pn(2)],
        },
        Message::SpaceRequest {
            subnet: cidr("10.32.0.0/25"),
        },
        Message::Donated { ring: ring.clone() },
        Message::SpaceDenied {
            subnet: u,
            ring: ring.clone(),
        },
        Message::ClaimRequest {
            addr: Ipv4Addr::new(10, 32, 0, 5),
        },
        Message::ClaimDenied {
            addr: Ipv4Addr::new(10, 32, 0, 200),
            in_use: true,
            ring,
        },
    ];
    std::fs::create_dir_all(&dir).unwrap();
    for (i, msg) in msgs.into_iter().enumerate() {
        let mut bytes = vec![0u8];
        bytes.extend(Envelope { universe: u, msg }.encode());
        std::fs::write(format!("{dir}/seed-{i:02}"), bytes).unwrap();
    }
}

/// Allocations per second on one peer (release build):
/// `cargo test -p weft-ipam --release -- --ignored --nocapture alloc_rate`.
#[test]
#[ignore = "measurement"]
fn alloc_rate() {
    let mut ipam = single("10.32.0.0/12");
    for n in [10_000usize, 100_000] {
        let start = std::time::Instant::now();
        for k in 0..n {
            let id = ipam.allocate(Instant::ZERO, &format!("m{n}-{k}"), None);
            store(&mut ipam);
            while let Some(ev) = ipam.poll_event() {
                if let IpamEvent::Done { id: i, result } = ev {
                    assert_eq!(i, id);
                    assert!(result.is_ok());
                }
            }
        }
        let dt = start.elapsed();
        eprintln!(
            "{n} allocations in {dt:?}: {:.0}/s",
            n as f64 / dt.as_secs_f64()
        );
        let start = std::time::Instant::now();
        for k in 0..n {
            ipam.release(&format!("m{n}-{k}"), None);
        }
        eprintln!("{n} releases in {:?}", start.elapsed());
    }
}
