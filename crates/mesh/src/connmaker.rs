//! Layer: pure logic. Which addresses to dial, and when (Weave's connection maker), sans-IO.
//!
//! A [`ConnMaker`] keeps the target list: direct targets (launch arguments, `weft connect`) and,
//! with discovery on, addresses learned from the topology (the addresses our peers report for
//! their own connections). The driver asks [`ConnMaker::poll_dial`] what to dial, reports the
//! outcome ([`connected`](ConnMaker::connected), [`dial_failed`](ConnMaker::dial_failed),
//! [`disconnected`](ConnMaker::disconnected)) and wakes it at [`ConnMaker::poll_timeout`].
//!
//! Rules (Weave's `connection_maker.go`):
//!
//! - A target whose IP we already have a connection with (either direction) is not dialled.
//! - The first try is immediate. After a failure the next try is a random time in
//!   `[i/2, 3i/2]` later, where `i` starts at [`ConnMakerConfig::backoff_start`] and grows ×1.5
//!   per failure up to [`ConnMakerConfig::backoff_max`].
//! - A connection that drops after having been up for more than a minute since its dial is
//!   retried at once with the backoff reset; one that drops sooner continues the backoff.
//! - Connect-to-self and name collisions are permanent: never retried.
//! - [`ConnMakerConfig::conn_limit`] caps current connections plus dials in flight.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::identity::PeerName;
use crate::rng::Rng;
use crate::time::Instant;
use crate::topology::Topology;

/// A connection that lasted longer than this (from its dial) resets the backoff.
const RESET_AFTER: Duration = Duration::from_secs(60);

/// Connection-maker settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnMakerConfig {
    /// Also dial addresses learned from the topology.
    pub discovery: bool,
    /// Most connections (current plus being dialled); 0 means unlimited.
    pub conn_limit: usize,
    /// The control port: used for discovered peers we only know an inbound address of.
    pub port: u16,
    /// First backoff interval.
    pub backoff_start: Duration,
    /// Largest backoff interval.
    pub backoff_max: Duration,
}

impl Default for ConnMakerConfig {
    /// Weave's defaults: discovery on, 200 connections, port 6783, backoff 2 s to 6 min.
    fn default() -> Self {
        Self {
            discovery: true,
            conn_limit: 200,
            port: 6783,
            backoff_start: Duration::from_secs(2),
            backoff_max: Duration::from_secs(360),
        }
    }
}

/// Where a target is, for status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetState {
    /// Waiting to be dialled (now, unless suspended by a live connection to its IP).
    Idle,
    /// A dial is in progress.
    Connecting,
    /// A connection we dialled to this address is up.
    Connected,
    /// The last attempt failed; the next is scheduled.
    Retrying {
        /// Why the last attempt failed.
        error: String,
        /// When the next attempt is due.
        next: Instant,
    },
    /// Never retried (connect-to-self, name collision).
    Failed {
        /// Why.
        error: String,
    },
}

#[derive(Clone, Debug)]
struct Target {
    direct: bool,
    discovered: bool,
    state: TargetState,
    /// Current backoff interval `i`.
    interval: Duration,
    /// When we last dialled.
    last_dial: Option<Instant>,
}

/// The connection maker.
#[derive(Debug)]
pub struct ConnMaker {
    config: ConnMakerConfig,
    rng: Rng,
    targets: BTreeMap<SocketAddr, Target>,
    /// Live connections by the remote address the driver reported.
    connections: BTreeMap<SocketAddr, PeerName>,
    /// Set when the last `poll_dial` stopped at the connection limit (so `poll_timeout` does
    /// not report idle targets as due); cleared when a connection goes away.
    limited: bool,
    /// Connections that ended (Weave's `TerminationCount`).
    terminations: u64,
    /// What discovery has read from the topology so far.
    discovery: Discovery,
}

/// The addresses discovery found, kept up to date record by record.
#[derive(Debug, Default)]
struct Discovery {
    /// Per known peer (not us): the (version, uid) of its record we read, and its connections
    /// to peers other than us with their dial addresses.
    peers: BTreeMap<PeerName, ReadRecord>,
    /// Per remote name: the (reporter, address) entries that name it, whether the remote is
    /// known or not (an entry counts only while its remote is a known peer).
    by_remote: HashMap<PeerName, Vec<(PeerName, DialAddr)>>,
    /// Per address: how many entries whose remote is known report it (> 0: discovered).
    counts: HashMap<SocketAddr, u32>,
}

#[derive(Debug)]
struct ReadRecord {
    version: u64,
    uid: u64,
    /// The record's connections to peers other than us, in remote-name order.
    entries: Vec<Entry>,
}

/// One connection of a record as discovery read it: the remote and a fingerprint of how it
/// was reported (address and direction), to see whether a newer version of the record changed
/// it. Where to dial for it is in [`Discovery::by_remote`] (absent if the address did not
/// parse). Kept this small on purpose: a node holds one per connection in the mesh (30 000
/// for 1000 peers of 30 connections).
#[derive(Debug)]
struct Entry {
    remote: PeerName,
    fingerprint: u64,
}

/// A dial address as discovery keeps it: 16 bytes for IPv4 (half a `SocketAddr`), which
/// matters at one per connection in the mesh, per node.
#[derive(Clone, Debug, PartialEq, Eq)]
enum DialAddr {
    V4([u8; 4], u16),
    Other(Box<SocketAddr>),
}

impl DialAddr {
    fn new(a: SocketAddr) -> Self {
        match a {
            SocketAddr::V4(v4) => Self::V4(v4.ip().octets(), v4.port()),
            other => Self::Other(Box::new(other)),
        }
    }

    fn get(&self) -> SocketAddr {
        match self {
            Self::V4(ip, port) => SocketAddr::from((*ip, *port)),
            Self::Other(a) => **a,
        }
    }
}

/// A 64-bit fingerprint of a reported connection's address and direction. Two different
/// reports colliding (odds 2^-64 per change) would leave the older dial address in use.
fn fingerprint(address: &str, outbound: bool) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    address.hash(&mut h);
    outbound.hash(&mut h);
    h.finish()
}

impl Discovery {
    /// Brings the counts up to date with `topology`; pushes every address whose count may
    /// have crossed zero onto `changed`.
    fn sync(
        &mut self,
        topology: &Topology,
        local: PeerName,
        port: u16,
        changed: &mut Vec<SocketAddr>,
    ) {
        // One merge pass over two name-ordered lists: peers gone, peers new or changed.
        let mut gone = Vec::new();
        let mut fresh = Vec::new();
        let mut read = self.peers.iter().peekable();
        for p in topology.peers().filter(|p| p.name != local) {
            while let Some((&n, _)) = read.next_if(|(n, _)| **n < p.name) {
                gone.push(n);
            }
            match read.next_if(|(n, _)| **n == p.name) {
                Some((_, r)) if (r.version, r.uid) == (p.version, p.uid) => {}
                Some(_) => fresh.push((p, true)),
                None => fresh.push((p, false)),
            }
        }
        gone.extend(read.map(|(n, _)| *n));
        // Peers that went away: their entries go, and entries naming them stop counting.
        for name in gone {
            if let Some(r) = self.peers.remove(&name) {
                self.drop_entries(name, &r.entries, changed);
            }
            for addr in self.addrs_naming(name) {
                self.count(addr, false, changed);
            }
        }
        // New peers count from now on as remotes of entries already read.
        for &(p, _) in fresh.iter().filter(|(_, old)| !old) {
            for addr in self.addrs_naming(p.name) {
                self.count(addr, true, changed);
            }
            self.peers.insert(
                p.name,
                ReadRecord {
                    version: 0,
                    uid: 0,
                    entries: Vec::new(),
                },
            );
        }
        for (p, _) in fresh {
            let mut old = self
                .peers
                .insert(
                    p.name,
                    ReadRecord {
                        version: p.version,
                        uid: p.uid,
                        entries: Vec::new(),
                    },
                )
                .map(|r| r.entries)
                .unwrap_or_default()
                .into_iter()
                .peekable();
            // Both lists are in remote-name order: keep unchanged entries as read (no
            // parsing), drop the others, read the new ones.
            let mut entries = Vec::with_capacity(p.connections.len());
            let mut dropped = Vec::new();
            let mut added = Vec::new();
            for c in p.connections.iter().filter(|c| c.remote != local) {
                while let Some(e) = old.next_if(|e| e.remote < c.remote) {
                    dropped.push(e);
                }
                let print = fingerprint(&c.address, c.outbound);
                if let Some(e) = old.next_if(|e| e.remote == c.remote) {
                    if e.fingerprint == print {
                        entries.push(e);
                        continue;
                    }
                    dropped.push(e);
                }
                let target = c.address.parse::<SocketAddr>().ok().map(|addr| {
                    if c.outbound {
                        addr
                    } else {
                        SocketAddr::new(addr.ip(), port)
                    }
                });
                if let Some(addr) = target {
                    added.push((c.remote, addr));
                }
                entries.push(Entry {
                    remote: c.remote,
                    fingerprint: print,
                });
            }
            dropped.extend(old);
            self.drop_entries(p.name, &dropped, changed);
            for (remote, addr) in added {
                let list = self.by_remote.entry(remote).or_default();
                list.reserve_exact(1); // One list per known peer, per node: no doubling.
                list.push((p.name, DialAddr::new(addr)));
                if self.peers.contains_key(&remote) {
                    self.count(addr, true, changed);
                }
            }
            if let Some(r) = self.peers.get_mut(&p.name) {
                r.entries = entries;
            }
        }
    }

    /// The addresses of the entries that name `remote`.
    fn addrs_naming(&self, remote: PeerName) -> Vec<SocketAddr> {
        self.by_remote
            .get(&remote)
            .map_or_else(Vec::new, |l| l.iter().map(|(_, a)| a.get()).collect())
    }

    /// Forgets `reporter`'s `entries` (those of remotes still known stop counting).
    fn drop_entries(
        &mut self,
        reporter: PeerName,
        entries: &[Entry],
        changed: &mut Vec<SocketAddr>,
    ) {
        for e in entries {
            let remote = e.remote;
            // A record lists one connection per remote: its dial address is the one entry of
            // `reporter` naming `remote` (none if the address did not parse).
            let Some(list) = self.by_remote.get_mut(&remote) else {
                continue;
            };
            let Some(i) = list.iter().position(|(r, _)| *r == reporter) else {
                continue;
            };
            let addr = list.swap_remove(i).1.get();
            if list.is_empty() {
                self.by_remote.remove(&remote);
            }
            if self.peers.contains_key(&remote) {
                self.count(addr, false, changed);
            }
        }
    }

    fn count(&mut self, addr: SocketAddr, up: bool, changed: &mut Vec<SocketAddr>) {
        let c = self.counts.entry(addr).or_insert(0);
        if up {
            *c += 1;
            if *c == 1 {
                changed.push(addr);
            }
        } else {
            *c = c.saturating_sub(1);
            if *c == 0 {
                self.counts.remove(&addr);
                changed.push(addr);
            }
        }
    }
}

impl ConnMaker {
    /// A connection maker with no targets. `seed` drives the backoff jitter.
    pub fn new(config: ConnMakerConfig, seed: u64) -> Self {
        Self {
            config,
            rng: Rng::new(seed),
            targets: BTreeMap::new(),
            connections: BTreeMap::new(),
            limited: false,
            terminations: 0,
            discovery: Discovery::default(),
        }
    }

    /// Adds direct targets (already resolved by the driver); existing ones become direct.
    pub fn add_targets(&mut self, _now: Instant, targets: &[SocketAddr]) {
        for addr in targets {
            let start = self.config.backoff_start;
            let t = self.targets.entry(*addr).or_insert_with(|| Target {
                direct: true,
                discovered: false,
                state: TargetState::Idle,
                interval: start,
                last_dial: None,
            });
            t.direct = true;
            // A user asking again for a failed target means "try again".
            if matches!(t.state, TargetState::Failed { .. }) {
                t.state = TargetState::Idle;
                t.interval = start;
            }
        }
    }

    /// Makes `targets` the direct target list (`connect --replace`): others are forgotten.
    pub fn replace_targets(&mut self, now: Instant, targets: &[SocketAddr]) {
        let old: Vec<SocketAddr> = self
            .targets
            .iter()
            .filter(|(a, t)| t.direct && !targets.contains(a))
            .map(|(a, _)| *a)
            .collect();
        self.forget_targets(&old);
        self.add_targets(now, targets);
    }

    /// Stops (re)dialling these direct targets; live connections stay up. An address that is
    /// also discovered stays a discovered target.
    pub fn forget_targets(&mut self, targets: &[SocketAddr]) {
        for addr in targets {
            if let Some(t) = self.targets.get_mut(addr) {
                t.direct = false;
                if !t.discovered {
                    self.targets.remove(addr);
                }
            }
        }
    }

    /// Refreshes discovered targets from the topology: for every connection a known peer
    /// reports to another known peer (not us), its outbound address as is, or for an inbound
    /// one the remote IP with our control port. Discovered targets no longer reported (and not
    /// connected or being dialled) are dropped. With discovery off, nothing is discovered.
    ///
    /// Incremental: only the records that changed since the last call (by version and
    /// incarnation) are read again, so a call costs one pass over the peer names plus the
    /// changed records' connections.
    pub fn update_from_topology(&mut self, _now: Instant, topology: &Topology) {
        let local = topology.local_name();
        let mut changed: Vec<SocketAddr> = Vec::new();
        if self.config.discovery {
            self.discovery
                .sync(topology, local, self.config.port, &mut changed);
        }
        changed.sort_unstable();
        changed.dedup();
        let start = self.config.backoff_start;
        for addr in changed {
            let found = self.discovery.counts.get(&addr).is_some_and(|&c| c > 0);
            if found {
                self.targets
                    .entry(addr)
                    .or_insert_with(|| Target {
                        direct: false,
                        discovered: true,
                        state: TargetState::Idle,
                        interval: start,
                        last_dial: None,
                    })
                    .discovered = true;
            } else if let Some(t) = self.targets.get_mut(&addr) {
                t.discovered = false;
            }
        }
        self.targets.retain(|_, t| {
            t.direct
                || t.discovered
                || matches!(t.state, TargetState::Connecting | TargetState::Connected)
        });
    }

    /// A connection (either direction) with `addr` is up.
    pub fn connected(&mut self, addr: SocketAddr, peer: PeerName) {
        self.connections.insert(addr, peer);
        if let Some(t) = self.targets.get_mut(&addr) {
            t.state = TargetState::Connected;
        }
    }

    /// The connection with `addr` is gone (`error`: why, if known). `permanent` (connect to
    /// self, name collision) means never dial this target again.
    pub fn disconnected(
        &mut self,
        now: Instant,
        addr: SocketAddr,
        error: Option<String>,
        permanent: bool,
    ) {
        self.connections.remove(&addr);
        self.limited = false;
        if !permanent {
            self.terminations += 1;
        }
        let error = error.unwrap_or_else(|| "connection closed".to_owned());
        let Some(t) = self.targets.get_mut(&addr) else {
            return;
        };
        if permanent {
            t.state = TargetState::Failed { error };
        } else if t
            .last_dial
            .is_none_or(|d| now.saturating_duration_since(d) > RESET_AFTER)
        {
            t.interval = self.config.backoff_start;
            t.state = TargetState::Idle;
        } else {
            Self::retry_later(&mut self.rng, &self.config, t, now, error);
        }
    }

    /// A dial to `addr` failed before any connection existed.
    pub fn dial_failed(&mut self, now: Instant, addr: SocketAddr, error: String) {
        self.limited = false;
        if let Some(t) = self.targets.get_mut(&addr) {
            Self::retry_later(&mut self.rng, &self.config, t, now, error);
        }
    }

    /// Addresses to dial now; marks them `Connecting`. Skips targets whose IP we already have a
    /// connection with, targets not yet due, and stops at the connection limit (counting
    /// `current_connections` plus dials in flight).
    pub fn poll_dial(&mut self, now: Instant, current_connections: usize) -> Vec<SocketAddr> {
        let in_flight = self
            .targets
            .values()
            .filter(|t| t.state == TargetState::Connecting)
            .count();
        let mut count = current_connections + in_flight;
        let mut dial = Vec::new();
        self.limited = false;
        let connected_ips = self.connected_ips();
        for (addr, t) in &mut self.targets {
            let due = match &t.state {
                TargetState::Idle => true,
                TargetState::Retrying { next, .. } => *next <= now,
                _ => false,
            };
            if !due || connected_ips.binary_search(&addr.ip()).is_ok() {
                continue;
            }
            if self.config.conn_limit > 0 && count >= self.config.conn_limit {
                self.limited = true;
                break;
            }
            t.state = TargetState::Connecting;
            t.last_dial = Some(now);
            count += 1;
            dial.push(*addr);
        }
        dial
    }

    /// When [`poll_dial`](Self::poll_dial) should be called next (a retry falls due, or idle
    /// targets wait); `None` if nothing is scheduled. Call it also after any other input.
    ///
    /// At the connection limit nothing is scheduled: a target falling due could not be dialled
    /// anyway, and what frees a slot (a connection or dial ending) is an input, after which the
    /// driver calls [`poll_dial`](Self::poll_dial) again.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.limited {
            return None;
        }
        let connected_ips = self.connected_ips();
        self.targets
            .iter()
            .filter(|(addr, _)| connected_ips.binary_search(&addr.ip()).is_err())
            .filter_map(|(_, t)| match &t.state {
                TargetState::Idle => Some(Instant::ZERO),
                TargetState::Retrying { next, .. } => Some(*next),
                _ => None,
            })
            .min()
    }

    /// Direct targets, sorted (for persistence and status).
    pub fn direct_targets(&self) -> Vec<SocketAddr> {
        self.targets
            .iter()
            .filter(|(_, t)| t.direct)
            .map(|(a, _)| *a)
            .collect()
    }

    /// Every target with whether it is direct and its state, sorted by address.
    pub fn targets(&self) -> Vec<(SocketAddr, bool, TargetState)> {
        self.targets
            .iter()
            .map(|(a, t)| (*a, t.direct, t.state.clone()))
            .collect()
    }

    /// How many connections have ended (those refused for good, such as a connection to
    /// ourselves, not counted), as Weave's `TerminationCount`.
    pub fn terminations(&self) -> u64 {
        self.terminations
    }

    /// Live connections the driver reported, by remote address.
    pub fn connections(&self) -> impl Iterator<Item = (SocketAddr, PeerName)> + '_ {
        self.connections.iter().map(|(a, p)| (*a, *p))
    }

    /// The IPs we have a connection with, sorted.
    fn connected_ips(&self) -> Vec<IpAddr> {
        let mut ips: Vec<IpAddr> = self.connections.keys().map(SocketAddr::ip).collect();
        ips.sort_unstable();
        ips.dedup();
        ips
    }

    fn retry_later(
        rng: &mut Rng,
        config: &ConnMakerConfig,
        t: &mut Target,
        now: Instant,
        error: String,
    ) {
        let i = t.interval;
        let jitter_ns = rng.below(u64::try_from(i.as_nanos()).unwrap_or(u64::MAX));
        let next = now + i / 2 + Duration::from_nanos(jitter_ns);
        t.state = TargetState::Retrying { error, next };
        t.interval = i.mul_f64(1.5).min(config.backoff_max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::tests::{name, summary};
    use crate::topology::{ConnSummary, PeerSummary};

    fn t(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn cm(discovery: bool, conn_limit: usize) -> ConnMaker {
        ConnMaker::new(
            ConnMakerConfig {
                discovery,
                conn_limit,
                ..ConnMakerConfig::default()
            },
            42,
        )
    }

    #[test]
    fn first_dial_immediate_then_backoff_sequence() {
        let a = addr("192.0.2.1:6783");
        let mut c = cm(true, 0);
        c.add_targets(t(0), &[a]);
        assert_eq!(c.poll_timeout(), Some(Instant::ZERO));
        assert_eq!(c.poll_dial(t(0), 0), vec![a]);
        assert_eq!(c.poll_dial(t(0), 0), vec![], "in flight");
        let mut now = t(0);
        let mut i = Duration::from_secs(2);
        for attempt in 0..30 {
            c.dial_failed(now, a, "refused".into());
            let Some(next) = c.poll_timeout() else {
                panic!("no retry scheduled");
            };
            let wait = next.saturating_duration_since(now);
            assert!(
                wait >= i / 2 && wait <= i * 3 / 2,
                "attempt {attempt}: {wait:?} vs {i:?}"
            );
            assert!(
                matches!(&c.targets()[0].2, TargetState::Retrying { error, .. } if error == "refused")
            );
            assert_eq!(c.poll_dial(next, 0), vec![a]);
            now = next;
            i = i.mul_f64(1.5).min(Duration::from_secs(360));
        }
        assert_eq!(i, Duration::from_secs(360), "capped at 6 min");
    }

    #[test]
    fn not_before_due() {
        let a = addr("192.0.2.1:6783");
        let mut c = cm(true, 0);
        c.add_targets(t(0), &[a]);
        c.poll_dial(t(0), 0);
        c.dial_failed(t(0), a, "x".into());
        let next = c.poll_timeout().unwrap();
        assert!(next >= t(1_000));
        assert_eq!(c.poll_dial(t(999), 0), vec![]);
        assert_eq!(c.poll_dial(next, 0), vec![a]);
    }

    #[test]
    fn connection_up_long_enough_resets_backoff() {
        let a = addr("192.0.2.1:6783");
        let mut c = cm(true, 0);
        c.add_targets(t(0), &[a]);
        c.poll_dial(t(0), 0);
        c.connected(a, name(2));
        assert_eq!(c.targets()[0].2, TargetState::Connected);
        assert_eq!(c.poll_timeout(), None);
        c.disconnected(t(120_000), a, None, false);
        assert_eq!(c.poll_dial(t(120_000), 0), vec![a], "immediate");
        c.connected(a, name(2));
        // Dropped right after the dial: back off.
        c.disconnected(t(121_000), a, Some("reset".into()), false);
        assert_eq!(c.poll_dial(t(121_000), 0), vec![]);
        // Connect-to-self or a collision: never again.
        let next = c.poll_timeout().unwrap();
        assert_eq!(c.poll_dial(next, 0), vec![a]);
        c.disconnected(next, a, Some("cannot connect to ourself".into()), true);
        assert!(matches!(c.targets()[0].2, TargetState::Failed { .. }));
        assert_eq!(c.poll_timeout(), None);
        assert_eq!(c.poll_dial(t(10_000_000), 0), vec![]);
        // Two connections ended; the refusal for good is not a termination.
        assert_eq!(c.terminations(), 2);
    }

    #[test]
    fn skips_ips_already_connected_any_direction() {
        let a = addr("192.0.2.1:6783");
        let mut c = cm(true, 0);
        c.connected(addr("192.0.2.1:40000"), name(2)); // inbound from that IP
        c.add_targets(t(0), &[a, addr("192.0.2.2:6783")]);
        assert_eq!(c.poll_dial(t(0), 1), vec![addr("192.0.2.2:6783")]);
        c.disconnected(t(1), addr("192.0.2.1:40000"), None, false);
        assert_eq!(c.poll_dial(t(1), 0), vec![a]);
    }

    #[test]
    fn conn_limit() {
        let mut c = cm(true, 3);
        let targets: Vec<SocketAddr> = (1..=5)
            .map(|i| addr(&format!("192.0.2.{i}:6783")))
            .collect();
        c.add_targets(t(0), &targets);
        assert_eq!(c.poll_dial(t(0), 1).len(), 2);
        assert_eq!(c.poll_timeout(), None, "limited: no busy wake-ups");
        assert_eq!(c.poll_dial(t(0), 1).len(), 0, "dials in flight count");
        c.dial_failed(t(1), targets[0], "x".into());
        assert_eq!(c.poll_dial(t(1), 1), vec![targets[2]]);
        // At the limit with targets due (idle, or retries falling due): no wake-ups at all;
        // the dial that ends frees a slot and is an input.
        c.dial_failed(t(2), targets[1], "refused".into());
        assert_eq!(c.poll_dial(t(2), 1), vec![targets[3]]);
        assert_eq!(c.poll_timeout(), None, "limited: no busy wake-ups");
        assert_eq!(
            c.poll_dial(t(10_000), 1),
            vec![],
            "retries due, still limited"
        );
        assert_eq!(
            c.poll_timeout(),
            None,
            "limited: no busy wake-ups for due retries"
        );
        c.dial_failed(t(10_001), targets[3], "refused".into());
        assert_eq!(c.poll_dial(t(10_001), 1).len(), 1, "a freed slot is used");
        let mut unlimited = cm(true, 0);
        unlimited.add_targets(t(0), &targets);
        assert_eq!(unlimited.poll_dial(t(0), 1000).len(), 5);
    }

    fn with_conns(n: u64, conns: Vec<ConnSummary>) -> PeerSummary {
        let mut s = summary(n, n, 1, &[]);
        s.connections = conns;
        s
    }

    fn c_to(remote: u64, address: &str, outbound: bool) -> ConnSummary {
        ConnSummary {
            remote: name(remote),
            address: address.into(),
            outbound,
            established: true,
        }
    }

    fn topology() -> Topology {
        // We are 1, connected to 2. 2 dialled 3 at 192.0.2.3:7000 and accepted 4 from
        // 192.0.2.4:5555 (its ephemeral port). 3 reports us (skipped) and unknown 9 (skipped).
        let mut t = Topology::new(with_conns(1, vec![c_to(2, "192.0.2.2:6783", true)]));
        t.merge(&[
            with_conns(
                2,
                vec![
                    c_to(1, "192.0.2.1:33333", false),
                    c_to(3, "192.0.2.3:7000", true),
                    c_to(4, "192.0.2.4:5555", false),
                ],
            ),
            with_conns(
                3,
                vec![
                    c_to(1, "192.0.2.1:6783", true),
                    c_to(9, "192.0.2.9:6783", true),
                ],
            ),
            with_conns(4, vec![]),
        ])
        .unwrap();
        t
    }

    #[test]
    fn discovery_on_and_off() {
        let topo = topology();
        let mut c = cm(true, 0);
        c.update_from_topology(t(0), &topo);
        let found: Vec<SocketAddr> = c.targets().into_iter().map(|(a, _, _)| a).collect();
        assert_eq!(found, vec![addr("192.0.2.3:7000"), addr("192.0.2.4:6783")]);
        assert!(c.targets().iter().all(|(_, direct, _)| !direct));
        assert!(c.direct_targets().is_empty());
        // A peer that disappears from the topology stops being a target (unless dialling).
        c.poll_dial(t(0), 0);
        let only_us = Topology::new(with_conns(1, vec![]));
        c.update_from_topology(t(1), &only_us);
        assert_eq!(c.targets().len(), 2, "dials in flight stay");
        c.dial_failed(t(2), addr("192.0.2.3:7000"), "x".into());
        c.update_from_topology(t(3), &only_us);
        assert_eq!(c.targets().len(), 1);

        let mut off = cm(false, 0);
        off.update_from_topology(t(0), &topo);
        assert!(off.targets().is_empty());
        off.add_targets(t(0), &[addr("192.0.2.2:6783")]);
        off.update_from_topology(t(0), &topo);
        assert_eq!(off.direct_targets(), vec![addr("192.0.2.2:6783")]);
        assert_eq!(off.poll_dial(t(0), 0), vec![addr("192.0.2.2:6783")]);
    }

    /// A record's content as a function of (peer, version), as gossip guarantees: a few
    /// connections to peers 1..=9 at one of a few addresses, either direction.
    fn record(peer: u64, version: u64) -> PeerSummary {
        let mut x = peer * 7919 + version * 104_729;
        let mut conns = Vec::new();
        for remote in (1..=9).filter(|&r| r != peer) {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            if (x >> 33) % 3 == 0 {
                let host = 1 + (x >> 40) % 4;
                let port = [6783, 7000, 5555][((x >> 50) % 3) as usize];
                let bad = (x >> 60) % 8 == 0;
                let address = if bad {
                    "not an address".to_owned()
                } else {
                    format!("192.0.2.{host}:{port}")
                };
                conns.push(ConnSummary {
                    remote: name(remote),
                    address,
                    outbound: (x >> 45) % 2 == 0,
                    established: true,
                });
            }
        }
        let mut s = summary(peer, 100 + peer, version, &[]);
        s.connections = conns;
        s
    }

    proptest::proptest! {
        /// Reading the topology change by change finds the same targets as reading each
        /// state from scratch: peers appearing, changing, going away, and remotes becoming
        /// known or unknown.
        #[test]
        fn incremental_discovery_matches_a_fresh_read(
            steps in proptest::collection::vec(
                proptest::collection::btree_map(2u64..=9, 1u64..=4, 0..8), 1..12)
        ) {
            let mut c = cm(true, 0);
            for (i, peers) in steps.iter().enumerate() {
                let mut topo = Topology::new(with_conns(1, vec![]));
                let records: Vec<PeerSummary> =
                    peers.iter().map(|(&p, &v)| record(p, v)).collect();
                topo.merge(&records).unwrap();
                c.update_from_topology(t(i as u64), &topo);
                let mut fresh = cm(true, 0);
                fresh.update_from_topology(t(i as u64), &topo);
                proptest::prop_assert_eq!(c.targets(), fresh.targets(), "step {}", i);
            }
        }
    }

    #[test]
    fn forget_stops_redialling_and_replace() {
        let a = addr("192.0.2.1:6783");
        let b = addr("192.0.2.2:6783");
        let mut c = cm(false, 0);
        c.add_targets(t(0), &[a, b]);
        assert_eq!(c.poll_dial(t(0), 0), vec![a, b]);
        c.dial_failed(t(0), a, "x".into());
        c.connected(b, name(2));
        c.forget_targets(&[a, b]);
        assert!(c.targets().is_empty());
        assert_eq!(c.poll_timeout(), None);
        assert_eq!(c.poll_dial(t(1_000_000), 0), vec![]);
        // The live connection is still tracked (and suspends dialling that IP if re-added).
        assert_eq!(c.connections().count(), 1);
        c.disconnected(t(1_000_001), b, None, false);
        assert_eq!(c.poll_dial(t(1_000_002), 0), vec![]);

        let d = addr("192.0.2.4:6783");
        c.add_targets(t(0), &[a, b]);
        c.replace_targets(t(0), &[b, d]);
        assert_eq!(c.direct_targets(), vec![b, d]);
        // A forgotten address that discovery also reports stays, as a discovered target.
        let mut c = cm(true, 0);
        let disc = addr("192.0.2.3:7000");
        c.add_targets(t(0), &[disc]);
        c.update_from_topology(t(0), &topology());
        c.forget_targets(&[disc]);
        assert_eq!(
            c.targets()
                .iter()
                .filter(|(a, direct, _)| *a == disc && !direct)
                .count(),
            1
        );
        // Asking again for a failed target retries it.
        let mut c = cm(false, 0);
        c.add_targets(t(0), &[a]);
        c.poll_dial(t(0), 0);
        c.disconnected(t(1), a, None, true);
        c.add_targets(t(2), &[a]);
        assert_eq!(c.poll_dial(t(2), 0), vec![a]);
    }
}
