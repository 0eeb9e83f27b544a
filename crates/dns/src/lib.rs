//! Layer: pure logic (sans-IO). weaveDNS: every container's name, gossiped between peers with
//! no external store, and the answers a DNS server gives from it.
//!
//! # Design
//!
//! - [`Names`] holds the cluster's entries {hostname, container id, origin peer, address,
//!   version, tombstone}. Only the origin peer changes its own entries: adding bumps nothing
//!   (version 0) or revives a tombstone (version + 1), deleting turns a live entry into a
//!   tombstone (version + 1, stamped with the wall-clock second). Merging two copies of an entry
//!   keeps the larger (version, tombstone) pair, so merge is commutative, associative and
//!   idempotent ([`merge_entry`], property-tested). Tombstones are kept 30 minutes
//!   ([`TOMBSTONE_TIMEOUT`], measured on the local clock from when this peer learned them) so a
//!   late copy of the live entry cannot bring it back.
//! - Gossip rides its own channel: on a new connection each side sends the other its whole
//!   state ([`Names::neighbour_up`]); every local change is broadcast as a delta; whatever a
//!   full state taught a peer it broadcasts in turn, so a newly joined part of the mesh learns
//!   everything. An entry claiming to come from us that we do not hold (we restarted without
//!   it, or it changed behind our back) is overruled with a higher version, as Weave does.
//! - Peers that leave: `rmpeer` drops their entries here and tells everyone
//!   ([`Names::forget_peer`]); a peer gone from the topology for longer than the tombstone time
//!   loses its entries too ([`Names::peers_changed`]).
//! - [`query`] answers DNS messages (hickory-proto's wire format) from [`Names`]: A and PTR for
//!   the domain, case-insensitive, shuffled, NXDOMAIN for unknown names, empty answers for other
//!   types of known names, truncation to the client's size; everything else is for the upstream
//!   servers, whose replies it checks and relays. [`limit`] bounds the work one client can cause;
//!   [`resolv`] reads the upstream servers out of a resolv.conf text.
//!
//! Nothing here does I/O or reads a clock: time comes in as a [`Now`], randomness as a seed.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod entry;
pub mod limit;
pub mod names;
pub mod query;
pub mod resolv;

pub use entry::{Entry, merge_entry};
pub use names::{DnsError, Names, Outgoing, TOMBSTONE_TIMEOUT};
pub use query::{Decision, Responder};

/// The time as the state machine needs it: the driver's monotonic instant (timers) and the
/// wall-clock second (tombstone stamps, comparable between peers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time since the driver's epoch.
    pub mono: weft_mesh::Instant,
    /// Seconds since the Unix epoch.
    pub unix: u64,
}

/// Weave's default domain.
pub const DEFAULT_DOMAIN: &str = "weave.local.";
/// Weave's default TTL of answers, in seconds.
pub const DEFAULT_TTL: u32 = 1;
