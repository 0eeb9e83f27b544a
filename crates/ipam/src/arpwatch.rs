//! Layer: pure logic. Finding an address in use twice on the bridge's segment from the ARP
//! traffic the bridge sees (sans-IO: the driver passes parsed ARP packets and `now`, sends the
//! probes [`ArpWatch::poll_probe`] asks for, and reports what [`ArpWatch::poll_conflict`]
//! yields).
//!
//! The rule, after RFC 5227's address conflict detection: when an address is announced (a
//! gratuitous ARP, as every attach sends) or shows up from a MAC other than the one last seen
//! for it, the bridge asks who has it with an ARP probe (sender 0.0.0.0; the same MAC
//! announcing again is probed for at most every [`PROBE_INTERVAL`]). Every holder, on this
//! host or across the overlay, answers the probe to the bridge's MAC. Two different MACs
//! answering one probe is a conflict. A container that was re-attached with a new MAC answers
//! alone, so that is not one. An address of the bridge itself (`weave:expose`) announced or
//! answered by another MAC is a conflict at once. Each conflict (address and MACs) is reported
//! once per [`REPORT_AGAIN`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::Ipv4Addr;
use std::time::Duration;

use weft_mesh::Instant;

/// How long replies to a probe are collected.
pub const PROBE_WAIT: Duration = Duration::from_secs(1);
/// An address is probed at most this often.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(10);
/// The same conflict is reported again after this long.
pub const REPORT_AGAIN: Duration = Duration::from_secs(600);
/// Addresses remembered (the oldest are forgotten first).
pub const MAX_ADDRESSES: usize = 4096;
/// Probes under way at once (more announcements wait for the next one).
pub const MAX_PROBES: usize = 256;

/// A MAC address.
pub type Mac = [u8; 6];

/// What an ARP packet seen on the bridge says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpSeen {
    /// Sender MAC.
    pub sender_mac: Mac,
    /// Sender IPv4 address (0.0.0.0 in probes).
    pub sender_ip: Ipv4Addr,
    /// Target IPv4 address.
    pub target_ip: Ipv4Addr,
}

/// An address two MACs answer for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArpConflict {
    /// The address.
    pub addr: Ipv4Addr,
    /// The MACs that claim it (sorted).
    pub macs: Vec<Mac>,
}

#[derive(Clone, Debug)]
struct Probe {
    until: Instant,
    responders: BTreeSet<Mac>,
}

/// The watcher (see the module documentation).
#[derive(Clone, Debug, Default)]
pub struct ArpWatch {
    bridge_mac: Option<Mac>,
    bridge_addrs: BTreeSet<Ipv4Addr>,
    /// Last MAC seen per address, and when.
    seen: BTreeMap<Ipv4Addr, (Mac, Instant)>,
    probes: BTreeMap<Ipv4Addr, Probe>,
    last_probe: BTreeMap<Ipv4Addr, Instant>,
    to_probe: VecDeque<Ipv4Addr>,
    reported: BTreeMap<(Ipv4Addr, Vec<Mac>), Instant>,
    conflicts: VecDeque<ArpConflict>,
}

impl ArpWatch {
    /// A watcher that knows nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The bridge's own MAC and addresses (its frames are ignored; its addresses are guarded).
    pub fn set_bridge(&mut self, mac: Mac, addrs: &[Ipv4Addr]) {
        self.bridge_mac = Some(mac);
        self.bridge_addrs = addrs.iter().copied().collect();
    }

    /// An ARP packet seen on the bridge.
    pub fn observe(&mut self, now: Instant, p: ArpSeen) {
        let (mac, ip) = (p.sender_mac, p.sender_ip);
        if ip.is_unspecified() || Some(mac) == self.bridge_mac || mac[0] & 1 == 1 {
            return;
        }
        if self.bridge_addrs.contains(&ip) {
            if let Some(bridge) = self.bridge_mac {
                self.conflict(now, ip, [bridge, mac].into_iter().collect());
            }
            return;
        }
        if let Some(probe) = self.probes.get_mut(&ip) {
            if now < probe.until {
                probe.responders.insert(mac);
                if probe.responders.len() >= 2 {
                    let macs = probe.responders.clone();
                    self.conflict(now, ip, macs);
                }
            }
        }
        let announced = ip == p.target_ip;
        let moved = self.seen.get(&ip).is_some_and(|(m, _)| *m != mac);
        if (announced || moved) && !self.probes.contains_key(&ip) {
            // A MAC other than the last one seen is probed for at once; the same one
            // announcing again at most every PROBE_INTERVAL.
            let due = moved
                || self
                    .last_probe
                    .get(&ip)
                    .is_none_or(|t| now >= *t + PROBE_INTERVAL);
            if due && !self.to_probe.contains(&ip) && self.to_probe.len() < MAX_PROBES {
                self.to_probe.push_back(ip);
            }
        }
        self.seen.insert(ip, (mac, now));
        if self.seen.len() > MAX_ADDRESSES {
            if let Some((&oldest, _)) = self.seen.iter().min_by_key(|(_, (_, t))| *t) {
                self.seen.remove(&oldest);
            }
        }
    }

    fn conflict(&mut self, now: Instant, addr: Ipv4Addr, macs: BTreeSet<Mac>) {
        let macs: Vec<Mac> = macs.into_iter().collect();
        let key = (addr, macs.clone());
        if self
            .reported
            .get(&key)
            .is_some_and(|t| now < *t + REPORT_AGAIN)
        {
            return;
        }
        self.reported.insert(key, now);
        self.conflicts.push_back(ArpConflict { addr, macs });
    }

    /// The next address to probe: send an ARP request for it from the bridge's MAC with sender
    /// address 0.0.0.0, now.
    pub fn poll_probe(&mut self, now: Instant) -> Option<Ipv4Addr> {
        if self.probes.len() >= MAX_PROBES {
            return None;
        }
        let ip = self.to_probe.pop_front()?;
        self.last_probe.insert(ip, now);
        self.probes.insert(
            ip,
            Probe {
                until: now + PROBE_WAIT,
                responders: BTreeSet::new(),
            },
        );
        Some(ip)
    }

    /// The next conflict found.
    pub fn poll_conflict(&mut self) -> Option<ArpConflict> {
        self.conflicts.pop_front()
    }

    /// Ends the probes whose time is up and forgets old bookkeeping.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.probes.retain(|_, p| now < p.until);
        self.last_probe.retain(|_, t| now < *t + PROBE_INTERVAL);
        self.reported.retain(|_, t| now < *t + REPORT_AGAIN);
    }

    /// When [`ArpWatch::handle_timeout`] has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.probes.values().map(|p| p.until).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BRIDGE: Mac = [2, 0, 0, 0, 0, 1];
    const M1: Mac = [2, 0, 0, 0, 0, 0x11];
    const M2: Mac = [2, 0, 0, 0, 0, 0x22];

    fn t(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn garp(mac: Mac, a: &str) -> ArpSeen {
        ArpSeen {
            sender_mac: mac,
            sender_ip: ip(a),
            target_ip: ip(a),
        }
    }

    fn reply(mac: Mac, a: &str) -> ArpSeen {
        ArpSeen {
            sender_mac: mac,
            sender_ip: ip(a),
            target_ip: Ipv4Addr::UNSPECIFIED,
        }
    }

    #[test]
    fn two_holders_answering_a_probe_are_a_conflict() {
        let mut w = ArpWatch::new();
        w.set_bridge(BRIDGE, &[ip("10.32.0.254")]);
        w.observe(t(0), garp(M2, "10.32.0.5"));
        assert_eq!(w.poll_probe(t(0)), Some(ip("10.32.0.5")));
        assert_eq!(w.poll_probe(t(0)), None);
        w.observe(t(3), reply(M1, "10.32.0.5"));
        assert_eq!(w.poll_conflict(), None);
        w.observe(t(4), reply(M2, "10.32.0.5"));
        assert_eq!(
            w.poll_conflict(),
            Some(ArpConflict {
                addr: ip("10.32.0.5"),
                macs: vec![M1, M2]
            })
        );
        // Reported once, however often it shows.
        w.handle_timeout(t(2_000));
        w.observe(t(20_000), garp(M1, "10.32.0.5"));
        assert_eq!(w.poll_probe(t(20_000)), Some(ip("10.32.0.5")));
        w.observe(t(20_001), reply(M1, "10.32.0.5"));
        w.observe(t(20_002), reply(M2, "10.32.0.5"));
        assert_eq!(w.poll_conflict(), None);
    }

    #[test]
    fn a_new_mac_for_a_reattached_container_is_not_a_conflict() {
        let mut w = ArpWatch::new();
        w.observe(t(0), garp(M1, "10.32.0.5"));
        assert!(w.poll_probe(t(0)).is_some());
        w.observe(t(2), reply(M1, "10.32.0.5"));
        w.handle_timeout(t(1_500));
        // Detached; later the address goes to a container with another MAC.
        w.observe(t(60_000), garp(M2, "10.32.0.5"));
        assert!(w.poll_probe(t(60_000)).is_some());
        w.observe(t(60_002), reply(M2, "10.32.0.5"));
        w.handle_timeout(t(61_500));
        assert_eq!(w.poll_conflict(), None);
        // Replies after the probe ended are not counted.
        w.observe(t(61_600), reply(M1, "10.32.0.5"));
        assert_eq!(w.poll_conflict(), None);
    }

    #[test]
    fn the_bridges_own_addresses_and_probing_limits() {
        let mut w = ArpWatch::new();
        w.set_bridge(BRIDGE, &[ip("10.32.0.254")]);
        // Our own frames and probes from others are ignored.
        w.observe(t(0), garp(BRIDGE, "10.32.0.254"));
        w.observe(t(0), reply(M1, "0.0.0.0"));
        assert_eq!(w.poll_probe(t(0)), None);
        // Another MAC claiming the bridge's address is a conflict at once.
        w.observe(t(1), garp(M1, "10.32.0.254"));
        assert_eq!(w.poll_conflict().map(|c| c.addr), Some(ip("10.32.0.254")));
        // An address is probed at most every PROBE_INTERVAL.
        w.observe(t(10), garp(M1, "10.32.0.7"));
        assert!(w.poll_probe(t(10)).is_some());
        w.handle_timeout(t(1_100));
        w.observe(t(2_000), garp(M1, "10.32.0.7"));
        assert_eq!(w.poll_probe(t(2_000)), None);
        w.observe(t(10_011), garp(M1, "10.32.0.7"));
        assert!(w.poll_probe(t(10_011)).is_some());
        assert_eq!(w.poll_timeout(), Some(t(11_011)));
        // Another MAC announcing it is probed for at once, even within the interval.
        w.handle_timeout(t(12_000));
        w.observe(t(12_000), garp(M2, "10.32.0.7"));
        assert_eq!(w.poll_probe(t(12_000)), Some(ip("10.32.0.7")));
        w.observe(t(12_001), reply(M1, "10.32.0.7"));
        w.observe(t(12_002), reply(M2, "10.32.0.7"));
        assert_eq!(w.poll_conflict().map(|c| c.macs), Some(vec![M1, M2]));
    }
}
