//! The cluster's name entries and their gossip (see the crate docs for the design).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::Ipv4Addr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use weft_mesh::{Instant, PeerName};

use crate::Now;
use crate::entry::{Entry, MAX_CONTAINER, fqdn, in_domain, merge_entry, valid_hostname};

/// How long a deletion is remembered, and how long a peer may be gone from the topology
/// before its entries are dropped (Weave's 30 minutes).
pub const TOMBSTONE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// How often expired tombstones and departed peers are swept.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// Most entries held (a bound on what gossip can make us store).
pub const MAX_ENTRIES: usize = 200_000;
/// Entries per gossip message (a full state goes out in several).
const CHUNK: usize = 200;

/// What travels on the DNS gossip channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Message {
    /// Entries: a delta, or (`full`) part of the sender's whole state for a new neighbour.
    Entries { full: bool, entries: Vec<Entry> },
    /// The sender ran `rmpeer` on this peer: drop its entries.
    Forget(PeerName),
}

/// A gossip message to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outgoing {
    /// To every peer (flooded).
    Broadcast(Vec<u8>),
    /// To this neighbour only.
    Unicast(PeerName, Vec<u8>),
}

/// Why a request or a gossip message was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// The name is not inside the DNS domain.
    #[error("'{name}' is not in the domain {domain}")]
    NotInDomain {
        /// The name given.
        name: String,
        /// The domain served.
        domain: String,
    },
    /// The name is not a valid hostname.
    #[error("'{0}' is not a valid hostname")]
    InvalidName(String),
    /// The container identifier is empty or too long.
    #[error("invalid container identifier")]
    InvalidContainer,
    /// The gossip payload does not decode.
    #[error("malformed DNS gossip message")]
    Malformed,
    /// The table is full.
    #[error("too many DNS entries (at most {MAX_ENTRIES})")]
    Full,
}

/// An entry and, for a tombstone, when this peer drops it.
#[derive(Clone, Debug)]
struct Slot {
    entry: Entry,
    expires: Option<Instant>,
}

/// weaveDNS state of one peer: every entry in the cluster, its own included.
#[derive(Debug)]
pub struct Names {
    local: PeerName,
    domain: String,
    /// Lowercased hostname → the entries of that name, in key order.
    by_name: BTreeMap<String, Vec<Slot>>,
    count: usize,
    known: HashSet<PeerName>,
    /// Origins absent from the topology, since when.
    gone: HashMap<PeerName, Instant>,
    /// Peers removed with `rmpeer`, until when their entries are refused.
    forgotten: HashMap<PeerName, Instant>,
    out: VecDeque<Outgoing>,
    own_changed: bool,
    next_sweep: Instant,
    refused: u64,
}

impl Names {
    /// Empty state for peer `local` serving `domain` (e.g. `weave.local.`).
    pub fn new(local: PeerName, domain: &str, now: Now) -> Result<Self, DnsError> {
        let domain = fqdn(domain).to_ascii_lowercase();
        if !valid_hostname(&domain) {
            return Err(DnsError::InvalidName(domain));
        }
        Ok(Self {
            local,
            domain,
            by_name: BTreeMap::new(),
            count: 0,
            known: HashSet::new(),
            gone: HashMap::new(),
            forgotten: HashMap::new(),
            out: VecDeque::new(),
            own_changed: false,
            next_sweep: now.mono + SWEEP_INTERVAL,
            refused: 0,
        })
    }

    /// The domain served (lowercase, trailing dot).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// This peer's name.
    pub fn local(&self) -> PeerName {
        self.local
    }

    /// Registers `hostname` → `addr` for `container` as this peer's entry and broadcasts it.
    /// Returns whether anything changed (adding a live entry twice changes nothing).
    pub fn add(
        &mut self,
        now: Now,
        hostname: &str,
        container: &str,
        addr: Ipv4Addr,
    ) -> Result<bool, DnsError> {
        let hostname = fqdn(hostname);
        if !valid_hostname(&hostname) {
            return Err(DnsError::InvalidName(hostname));
        }
        if !in_domain(&hostname, &self.domain) {
            return Err(DnsError::NotInDomain {
                name: hostname,
                domain: self.domain.clone(),
            });
        }
        if container.is_empty() || container.len() > MAX_CONTAINER {
            return Err(DnsError::InvalidContainer);
        }
        let probe = Entry {
            hostname,
            container: container.to_owned(),
            origin: self.local,
            addr,
            version: 0,
            tombstone: 0,
        };
        let changed = match self.slot_mut(&probe) {
            Some(slot) if slot.entry.is_tombstone() => {
                slot.entry.version += 1;
                slot.entry.tombstone = 0;
                slot.expires = None;
                Some(slot.entry.clone())
            }
            Some(_) => None,
            None => {
                self.insert(probe.clone(), now)?;
                Some(probe)
            }
        };
        match changed {
            Some(e) => {
                self.own_changed = true;
                self.broadcast(vec![e]);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Deletes this peer's live entries matching every given criterion (a hostname compared
    /// case-insensitively, a container, an address; `None` matches all) and broadcasts the
    /// tombstones. Returns how many were deleted.
    pub fn delete(
        &mut self,
        now: Now,
        hostname: Option<&str>,
        container: Option<&str>,
        addr: Option<Ipv4Addr>,
    ) -> usize {
        let lower = hostname.map(|h| fqdn(h).to_ascii_lowercase());
        let local = self.local;
        let mut dead = Vec::new();
        for (name, slots) in &mut self.by_name {
            if lower.as_ref().is_some_and(|l| l != name) {
                continue;
            }
            for slot in slots.iter_mut() {
                let e = &mut slot.entry;
                if e.origin != local
                    || e.is_tombstone()
                    || container.is_some_and(|c| c != e.container)
                    || addr.is_some_and(|a| a != e.addr)
                {
                    continue;
                }
                e.version += 1;
                e.tombstone = now.unix.max(1);
                slot.expires = Some(now.mono + TOMBSTONE_TIMEOUT);
                dead.push(e.clone());
            }
        }
        let n = dead.len();
        if n > 0 {
            self.own_changed = true;
            self.broadcast(dead);
        }
        n
    }

    /// A connection to neighbour `peer` came up: send it our whole state.
    pub fn neighbour_up(&mut self, peer: PeerName) {
        if peer == self.local {
            return;
        }
        let all: Vec<Entry> = self.entries().cloned().collect();
        if all.is_empty() {
            return;
        }
        for chunk in all.chunks(CHUNK) {
            let msg = Message::Entries {
                full: true,
                entries: chunk.to_vec(),
            };
            if let Ok(bytes) = postcard::to_allocvec(&msg) {
                self.out.push_back(Outgoing::Unicast(peer, bytes));
            }
        }
    }

    /// Handles a message from the DNS channel, sent first by peer `origin`.
    pub fn handle_message(
        &mut self,
        now: Now,
        origin: PeerName,
        bytes: &[u8],
    ) -> Result<(), DnsError> {
        let msg: Message = postcard::from_bytes(bytes).map_err(|_| DnsError::Malformed)?;
        match msg {
            Message::Entries { full, entries } => {
                let mut learned = Vec::new();
                for e in entries {
                    self.merge_incoming(now, e, &mut learned);
                }
                // What a full state taught us, the peers on our side of the new link do not
                // know either.
                if full && !learned.is_empty() {
                    self.broadcast(learned);
                }
            }
            Message::Forget(peer) => {
                if peer != self.local && origin != peer {
                    self.drop_peer(now, peer);
                }
            }
        }
        Ok(())
    }

    /// `rmpeer`: drops every entry of `peer` here, refuses them for the tombstone time and
    /// tells every other peer to do the same. Returns how many entries were dropped.
    pub fn forget_peer(&mut self, now: Now, peer: PeerName) -> usize {
        if peer == self.local {
            return 0;
        }
        let n = self.drop_peer(now, peer);
        if let Ok(bytes) = postcard::to_allocvec(&Message::Forget(peer)) {
            self.out.push_back(Outgoing::Broadcast(bytes));
        }
        n
    }

    /// The topology changed: `known` are the peers in it, `reachable` those we can reach. A
    /// peer absent from the topology for [`TOMBSTONE_TIMEOUT`] loses its entries; a forgotten
    /// peer that is reachable again is welcome again.
    pub fn peers_changed(&mut self, now: Now, known: &[PeerName], reachable: &[PeerName]) {
        self.known = known.iter().copied().collect();
        for p in reachable {
            self.forgotten.remove(p);
        }
        let origins = self.origins();
        self.gone.retain(|p, _| origins.contains(p));
        for o in origins {
            if o == self.local || self.known.contains(&o) {
                self.gone.remove(&o);
            } else {
                self.gone.entry(o).or_insert(now.mono);
            }
        }
    }

    /// Runs the periodic sweep when it is due.
    pub fn handle_timeout(&mut self, now: Now) {
        if now.mono < self.next_sweep {
            return;
        }
        self.next_sweep = now.mono + SWEEP_INTERVAL;
        let expired: HashSet<PeerName> = self
            .gone
            .iter()
            .filter(|(_, since)| now.mono.saturating_duration_since(**since) >= TOMBSTONE_TIMEOUT)
            .map(|(p, _)| *p)
            .collect();
        let mut removed = 0;
        let mut own = false;
        for slots in self.by_name.values_mut() {
            slots.retain(|s| {
                let keep =
                    s.expires.is_none_or(|t| t > now.mono) && !expired.contains(&s.entry.origin);
                if !keep {
                    removed += 1;
                    own |= s.entry.origin == self.local;
                }
                keep
            });
        }
        self.by_name.retain(|_, v| !v.is_empty());
        self.count -= removed;
        self.own_changed |= own;
        for p in expired {
            self.gone.remove(&p);
        }
        self.forgotten.retain(|_, until| *until > now.mono);
    }

    /// When [`Names::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        Some(self.next_sweep)
    }

    /// The next gossip message to send.
    pub fn poll_transmit(&mut self) -> Option<Outgoing> {
        self.out.pop_front()
    }

    /// Whether this peer's own entries changed since the last call (time to keep them).
    pub fn take_own_changed(&mut self) -> bool {
        std::mem::take(&mut self.own_changed)
    }

    /// This peer's own entries, tombstones included (what the driver keeps across restarts).
    pub fn own_entries(&self) -> Vec<Entry> {
        self.entries()
            .filter(|e| e.origin == self.local)
            .cloned()
            .collect()
    }

    /// Puts back own entries kept by an earlier run (others' are ignored: gossip brings them).
    /// Returns how many were taken.
    pub fn restore(&mut self, now: Now, entries: Vec<Entry>) -> usize {
        let mut n = 0;
        for e in entries {
            if e.origin != self.local || !e.is_valid() || !in_domain(&e.hostname, &self.domain) {
                continue;
            }
            if self.slot_mut(&e).is_some() {
                continue;
            }
            if self.insert(e, now).is_ok() {
                n += 1;
            }
        }
        n
    }

    /// The live addresses of a fully qualified name, any case.
    pub fn lookup(&self, name: &str) -> Vec<Ipv4Addr> {
        let lower = fqdn(name).to_ascii_lowercase();
        self.by_name
            .get(&lower)
            .into_iter()
            .flatten()
            .filter(|s| !s.entry.is_tombstone())
            .map(|s| s.entry.addr)
            .collect()
    }

    /// The name of the first live entry with address `addr`.
    pub fn reverse(&self, addr: Ipv4Addr) -> Option<&str> {
        self.entries()
            .find(|e| e.addr == addr && !e.is_tombstone())
            .map(|e| e.hostname.as_str())
    }

    /// Every entry (tombstones included), by lowercased hostname.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.by_name.values().flatten().map(|s| &s.entry)
    }

    /// How many entries are held, tombstones included.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Live entries registered by `origin` (Weave's `weave_dns_entries` counts the local ones).
    pub fn live_from(&self, origin: PeerName) -> usize {
        self.entries()
            .filter(|e| e.origin == origin && !e.is_tombstone())
            .count()
    }

    /// Entries from gossip refused as invalid, from a forgotten peer, or over the limit.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    fn origins(&self) -> HashSet<PeerName> {
        self.entries().map(|e| e.origin).collect()
    }

    fn slot_mut(&mut self, e: &Entry) -> Option<&mut Slot> {
        let key = e.key();
        self.by_name
            .get_mut(&key.lower)?
            .iter_mut()
            .find(|s| s.entry.key() == key)
    }

    fn insert(&mut self, entry: Entry, now: Now) -> Result<(), DnsError> {
        if self.count >= MAX_ENTRIES {
            return Err(DnsError::Full);
        }
        let key = entry.key();
        let expires = entry.is_tombstone().then(|| now.mono + TOMBSTONE_TIMEOUT);
        if entry.origin != self.local && !self.known.contains(&entry.origin) {
            self.gone.entry(entry.origin).or_insert(now.mono);
        }
        let slots = self.by_name.entry(key.lower.clone()).or_default();
        let at = slots.partition_point(|s| s.entry.key() < key);
        slots.insert(at, Slot { entry, expires });
        self.count += 1;
        Ok(())
    }

    fn drop_peer(&mut self, now: Now, peer: PeerName) -> usize {
        let mut removed = 0;
        for slots in self.by_name.values_mut() {
            let before = slots.len();
            slots.retain(|s| s.entry.origin != peer);
            removed += before - slots.len();
        }
        self.by_name.retain(|_, v| !v.is_empty());
        self.count -= removed;
        self.gone.remove(&peer);
        self.forgotten.insert(peer, now.mono + TOMBSTONE_TIMEOUT);
        removed
    }

    fn broadcast(&mut self, entries: Vec<Entry>) {
        for chunk in entries.chunks(CHUNK) {
            let msg = Message::Entries {
                full: false,
                entries: chunk.to_vec(),
            };
            if let Ok(bytes) = postcard::to_allocvec(&msg) {
                self.out.push_back(Outgoing::Broadcast(bytes));
            }
        }
    }

    /// Merges one entry from gossip; what changed here goes into `learned`.
    fn merge_incoming(&mut self, now: Now, e: Entry, learned: &mut Vec<Entry>) {
        if !e.is_valid() || (e.origin != self.local && self.forgotten.contains_key(&e.origin)) {
            self.refused += 1;
            return;
        }
        if e.origin == self.local {
            self.merge_own(now, e);
            return;
        }
        match self.slot_mut(&e) {
            Some(slot) => {
                if merge_entry(&mut slot.entry, &e) {
                    slot.expires = slot
                        .entry
                        .is_tombstone()
                        .then(|| now.mono + TOMBSTONE_TIMEOUT);
                    learned.push(slot.entry.clone());
                }
            }
            None => {
                if self.insert(e.clone(), now).is_ok() {
                    learned.push(e);
                } else {
                    self.refused += 1;
                }
            }
        }
    }

    /// An entry claiming to be ours. Ours is the truth: a newer or different copy is overruled
    /// by ours with a higher version; a live copy we do not hold at all is deleted.
    fn merge_own(&mut self, now: Now, e: Entry) {
        let overrule = match self.slot_mut(&e) {
            Some(ours) => {
                let differs = ours.entry.version < e.version
                    || (ours.entry.version == e.version && ours.entry.tombstone != e.tombstone);
                if differs {
                    ours.entry.version = e.version + 1;
                }
                differs.then(|| ours.entry.clone())
            }
            None if e.is_tombstone() => {
                let _ = self.insert(e, now);
                None
            }
            None => {
                let mut dead = e;
                dead.version += 1;
                dead.tombstone = now.unix.max(1);
                match self.insert(dead.clone(), now) {
                    Ok(()) => Some(dead),
                    Err(_) => None,
                }
            }
        };
        if let Some(e) = overrule {
            self.own_changed = true;
            self.broadcast(vec![e]);
        }
    }
}

#[cfg(test)]
mod tests;
