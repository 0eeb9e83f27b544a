//! Layer: pure logic. The ring CRDT: who owns which part of the allocation range.
//!
//! The universe `[start, end)` (the `--ipalloc-range`, e.g. 10.32.0.0/12) is cut by sorted
//! tokens; [`Entry`] `i` owns the addresses from its token up to the next token (the last one up
//! to the end of the universe; the first token is always the universe's start, so there is no
//! wrap-around). Only an entry's owner changes it, bumping its version; administrative takeover
//! ([`Ring::transfer`]) bumps by [`TRANSFER_VERSION_BUMP`] so it wins. Tokens are never removed.
//!
//! Merge ([`Ring::merge`]) is a join: the union of tokens, and per token the greatest entry by
//! (version, owner, free count). That makes it commutative, associative and idempotent, so every
//! peer that has seen the same rings holds the same ring, whatever the order, also after a
//! partition in which both sides changed the same range (an rmpeer of a peer that was only cut
//! off): the higher version wins, and of two entries with the same version the larger owner
//! name. Addresses the local peer had handed out in a range it lost that way are [`crate::Ipam`]'s
//! business (it asks the winner for them and reports the ones both sides handed out). Only
//! rings that can never be reconciled are a [`MergeError`], and then the merge is not applied:
//! different universes, different seeds (two separately initialised rings), malformed rings.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use weft_mesh::PeerName;

/// Version increment of an administrative transfer (rmpeer, shutdown handover), so it wins over
/// whatever the previous owner did that we have not seen.
pub const TRANSFER_VERSION_BUMP: u32 = 100;

/// One range of the ring: from `token` to the next entry's token.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// First address of the range (as a `u32`).
    pub token: u32,
    /// The peer that owns the range.
    pub owner: PeerName,
    /// Bumped by the owner on every change (by [`TRANSFER_VERSION_BUMP`] on takeover).
    pub version: u32,
    /// Number of unallocated addresses in the range, as last reported by its owner.
    pub free: u32,
}

/// Why two rings cannot be merged. The merge is not applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    /// The rings cover different allocation ranges.
    #[error("incompatible IP allocation ranges: ours is {ours}, the peer's is {theirs}")]
    Universe {
        /// Our range.
        ours: Ipv4Net,
        /// The other ring's range.
        theirs: Ipv4Net,
    },
    /// Both rings were initialised, but for different sets of peers.
    #[error(
        "IP allocation was seeded by different peers (ours: {ours:?}, theirs: {theirs:?}); \
         one side must be reset"
    )]
    Seeds {
        /// Our seeds.
        ours: Vec<PeerName>,
        /// The other ring's seeds.
        theirs: Vec<PeerName>,
    },
    /// The ring is malformed (tokens unsorted or outside the universe, first token missing).
    #[error("invalid ring: {0}")]
    Invalid(&'static str),
}

/// The ring: the allocation range divided among peers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(try_from = "RingRepr", into = "RingRepr")]
pub struct Ring {
    universe: Ipv4Net,
    entries: Vec<Entry>,
    seeds: Vec<PeerName>,
    /// Peers removed by rmpeer, with the peer that took their ranges over (sorted by removed
    /// peer). Gossiped so a second rmpeer of the same peer elsewhere is refused.
    removed: Vec<(PeerName, PeerName)>,
}

/// The serialized form of a [`Ring`], validated on the way in.
#[derive(Serialize, Deserialize)]
struct RingRepr {
    universe: Ipv4Net,
    entries: Vec<Entry>,
    seeds: Vec<PeerName>,
    removed: Vec<(PeerName, PeerName)>,
}

impl From<Ring> for RingRepr {
    fn from(r: Ring) -> Self {
        Self {
            universe: r.universe,
            entries: r.entries,
            seeds: r.seeds,
            removed: r.removed,
        }
    }
}

impl TryFrom<RingRepr> for Ring {
    type Error = MergeError;

    fn try_from(r: RingRepr) -> Result<Self, MergeError> {
        let ring = Self {
            universe: r.universe,
            entries: r.entries,
            seeds: r.seeds,
            removed: r.removed,
        };
        ring.validate()?;
        Ok(ring)
    }
}

/// Start and end (exclusive, as u64 so a range may end at 2^32) of a network.
pub(crate) fn net_bounds(net: Ipv4Net) -> (u32, u64) {
    let start = u32::from(net.network());
    (
        start,
        u64::from(start) + (1u64 << (32 - u32::from(net.prefix_len()))),
    )
}

fn sat_u32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

impl Ring {
    /// An empty ring over `universe` (its host bits are ignored): not initialised.
    pub fn new(universe: Ipv4Net) -> Self {
        Self {
            universe: universe.trunc(),
            entries: Vec::new(),
            seeds: Vec::new(),
            removed: Vec::new(),
        }
    }

    /// True until the ring has been initialised (no entries).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The allocation range.
    pub fn universe(&self) -> Ipv4Net {
        self.universe
    }

    /// The peers the ring was initialised for (sorted).
    pub fn seeds(&self) -> &[PeerName] {
        &self.seeds
    }

    /// The entries, sorted by token.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Peers removed by rmpeer and who took them over.
    pub fn removed(&self) -> &[(PeerName, PeerName)] {
        &self.removed
    }

    pub(crate) fn start(&self) -> u32 {
        net_bounds(self.universe).0
    }

    pub(crate) fn end(&self) -> u64 {
        net_bounds(self.universe).1
    }

    /// End (exclusive) of entry `i`'s range.
    pub(crate) fn range_end(&self, i: usize) -> u64 {
        self.entries
            .get(i + 1)
            .map_or_else(|| self.end(), |e| u64::from(e.token))
    }

    /// Number of addresses in entry `i`'s range.
    pub(crate) fn range_size(&self, i: usize) -> u64 {
        self.range_end(i) - u64::from(self.entries[i].token)
    }

    /// Divides the universe among `peers` (sorted and deduplicated first) by recursive halving
    /// into CIDR-aligned pieces, and records them as the seeds. Every peer computing this for the
    /// same set gets the same ring. Does nothing if the ring is already initialised or `peers`
    /// is empty.
    pub fn claim_for_peers(&mut self, peers: &[PeerName]) {
        if !self.entries.is_empty() || peers.is_empty() {
            return;
        }
        let mut peers = peers.to_vec();
        peers.sort();
        peers.dedup();
        let (start, end) = (self.start(), self.end());
        let mut out = Vec::new();
        divide(u64::from(start), end - u64::from(start), &peers, &mut out);
        self.entries = out;
        self.seeds = peers;
    }

    /// The peer owning `addr`, or `None` if the ring is empty or `addr` is outside the universe.
    pub fn owner(&self, addr: u32) -> Option<PeerName> {
        self.index_of(addr).map(|i| self.entries[i].owner)
    }

    /// Index of the entry whose range contains `addr`.
    pub(crate) fn index_of(&self, addr: u32) -> Option<usize> {
        if self.entries.is_empty() || addr < self.start() || u64::from(addr) >= self.end() {
            return None;
        }
        let idx = self.entries.partition_point(|e| e.token <= addr);
        idx.checked_sub(1)
    }

    /// The ranges `peer` owns, `[start, end)`, adjacent ranges coalesced. An end of 2^32
    /// (a universe reaching 255.255.255.255, which [`crate::Ipam`] refuses) saturates.
    pub fn owned_ranges(&self, peer: PeerName) -> Vec<(u32, u32)> {
        self.owned_ranges_u64(peer)
            .into_iter()
            .map(|(s, e)| (s, sat_u32(e)))
            .collect()
    }

    pub(crate) fn owned_ranges_u64(&self, peer: PeerName) -> Vec<(u32, u64)> {
        let mut out: Vec<(u32, u64)> = Vec::new();
        for (i, e) in self.entries.iter().enumerate() {
            if e.owner != peer {
                continue;
            }
            let end = self.range_end(i);
            match out.last_mut() {
                Some(last) if last.1 == u64::from(e.token) => last.1 = end,
                _ => out.push((e.token, end)),
            }
        }
        out
    }

    /// Gives every range of `from` to `to`, bumping versions by [`TRANSFER_VERSION_BUMP`]
    /// (administrative takeover or shutdown handover). Returns the number of addresses moved.
    pub fn transfer(&mut self, from: PeerName, to: PeerName) -> u32 {
        let mut moved = 0u64;
        for i in 0..self.entries.len() {
            if self.entries[i].owner == from && from != to {
                moved += self.range_size(i);
                let e = &mut self.entries[i];
                e.owner = to;
                e.version = e.version.saturating_add(TRANSFER_VERSION_BUMP);
            }
        }
        sat_u32(moved)
    }

    /// Makes `token` the start of an entry (splitting the range containing it). Returns its
    /// index. `token` must be inside the universe and the ring non-empty.
    fn split_at(&mut self, token: u32) -> Option<usize> {
        let i = self.index_of(token)?;
        if self.entries[i].token == token {
            return Some(i);
        }
        let old_end = self.range_end(i);
        let e = &mut self.entries[i];
        let new_free = sat_u32(u64::from(e.free).min(old_end - u64::from(token)));
        e.free = sat_u32(u64::from(e.free).min(u64::from(token - e.token)));
        e.version = e.version.saturating_add(1);
        let owner = e.owner;
        self.entries.insert(
            i + 1,
            Entry {
                token,
                owner,
                version: 0,
                free: new_free,
            },
        );
        Some(i + 1)
    }

    /// Gives `[start, end)`, which must all be owned by `from`, to `to`: the owner's side of a
    /// donation. Returns false (and changes nothing) if the range is empty, leaves the universe
    /// or is not all `from`'s.
    pub(crate) fn give(&mut self, start: u32, end: u64, from: PeerName, to: PeerName) -> bool {
        if u64::from(start) >= end || start < self.start() || end > self.end() {
            return false;
        }
        let Some(first) = self.index_of(start) else {
            return false;
        };
        let mut i = first;
        while i < self.entries.len() && u64::from(self.entries[i].token) < end {
            if self.entries[i].owner != from {
                return false;
            }
            i += 1;
        }
        if end < self.end() {
            // end < 2^32 here, so the conversion is exact.
            self.split_at(sat_u32(end));
        }
        let Some(mut i) = self.split_at(start) else {
            return false;
        };
        while i < self.entries.len() && u64::from(self.entries[i].token) < end {
            let size = self.range_size(i);
            let e = &mut self.entries[i];
            e.owner = to;
            e.version = e.version.saturating_add(1);
            e.free = sat_u32(u64::from(e.free).min(size));
            i += 1;
        }
        true
    }

    /// Sets the free count of entry `i`, bumping its version if it changed.
    pub(crate) fn set_free(&mut self, i: usize, free: u32) -> bool {
        let e = &mut self.entries[i];
        if e.free == free {
            return false;
        }
        e.free = free;
        e.version = e.version.saturating_add(1);
        true
    }

    /// Records that `peer` was removed by `by`.
    pub(crate) fn mark_removed(&mut self, peer: PeerName, by: PeerName) {
        match self.removed.binary_search_by_key(&peer, |r| r.0) {
            Ok(i) => self.removed[i].1 = by,
            Err(i) => self.removed.insert(i, (peer, by)),
        }
    }

    /// Checks the ring's structure (used on everything deserialized).
    pub(crate) fn validate(&self) -> Result<(), MergeError> {
        if self.universe != self.universe.trunc() {
            return Err(MergeError::Invalid("universe has host bits set"));
        }
        if let Some(first) = self.entries.first() {
            if first.token != self.start() {
                return Err(MergeError::Invalid(
                    "first token is not the universe's start",
                ));
            }
        }
        let end = self.end();
        for w in self.entries.windows(2) {
            if w[0].token >= w[1].token {
                return Err(MergeError::Invalid("tokens not strictly increasing"));
            }
        }
        if self
            .entries
            .last()
            .is_some_and(|e| u64::from(e.token) >= end)
        {
            return Err(MergeError::Invalid("token outside the universe"));
        }
        if self.seeds.windows(2).any(|w| w[0] >= w[1]) {
            return Err(MergeError::Invalid("seeds not sorted"));
        }
        if self.removed.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(MergeError::Invalid("removed peers not sorted"));
        }
        Ok(())
    }

    /// Merges `other` into this ring. Returns whether anything changed. Never refuses a ring
    /// of the same universe and seeds: conflicting claims resolve the same way on every peer.
    pub fn merge(&mut self, other: &Self) -> Result<bool, MergeError> {
        if self.universe != other.universe {
            return Err(MergeError::Universe {
                ours: self.universe,
                theirs: other.universe,
            });
        }
        let removed = merge_removed(&self.removed, &other.removed);
        if other.entries.is_empty() {
            let changed = removed != self.removed;
            self.removed = removed;
            return Ok(changed);
        }
        if self.entries.is_empty() {
            let changed = *self != *other || removed != other.removed;
            self.entries = other.entries.clone();
            self.seeds = other.seeds.clone();
            self.removed = removed;
            return Ok(changed);
        }
        if self.seeds != other.seeds {
            return Err(MergeError::Seeds {
                ours: self.seeds.clone(),
                theirs: other.seeds.clone(),
            });
        }
        let mut merged = Vec::with_capacity(self.entries.len().max(other.entries.len()));
        let (mut a, mut b) = (
            self.entries.iter().peekable(),
            other.entries.iter().peekable(),
        );
        loop {
            let next = match (a.peek(), b.peek()) {
                (None, None) => break,
                (Some(_), None) => a.next(),
                (None, Some(_)) => b.next(),
                (Some(x), Some(y)) => match x.token.cmp(&y.token) {
                    Ordering::Less => a.next(),
                    Ordering::Greater => b.next(),
                    Ordering::Equal => match (a.next(), b.next()) {
                        (Some(x), Some(y)) => Some(pick(x, y)),
                        _ => None,
                    },
                },
            };
            if let Some(e) = next {
                merged.push(e.clone());
            }
        }
        let changed = merged != self.entries || removed != self.removed;
        self.entries = merged;
        self.removed = removed;
        Ok(changed)
    }
}

/// The winner of two entries with the same token: the greater by (version, owner, free), a
/// total order, so the merge is a join whatever the entries.
fn pick<'a>(x: &'a Entry, y: &'a Entry) -> &'a Entry {
    if (x.version, x.owner, x.free) >= (y.version, y.owner, y.free) {
        x
    } else {
        y
    }
}

fn merge_removed(
    a: &[(PeerName, PeerName)],
    b: &[(PeerName, PeerName)],
) -> Vec<(PeerName, PeerName)> {
    let mut m: BTreeMap<PeerName, PeerName> = a.iter().copied().collect();
    for &(p, by) in b {
        let e = m.entry(p).or_insert(by);
        *e = (*e).max(by);
    }
    m.into_iter().collect()
}

/// Recursive halving: the lower half of the peers get the lower half of the space.
fn divide(start: u64, size: u64, peers: &[PeerName], out: &mut Vec<Entry>) {
    let Some(&first) = peers.first() else {
        return;
    };
    if peers.len() == 1 || size <= 1 {
        out.push(Entry {
            token: sat_u32(start),
            owner: first,
            version: 0,
            free: sat_u32(size),
        });
        return;
    }
    let half = size / 2;
    let (lo, hi) = peers.split_at(peers.len().div_ceil(2));
    divide(start, half, lo, out);
    divide(start + half, size - half, hi, out);
}
