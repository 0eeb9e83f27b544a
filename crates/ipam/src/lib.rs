//! Layer: pure logic. weft's IP address management (IPAM), sans-IO.
//!
//! After Weave's `ipam`: the allocation range is a [`Ring`] CRDT divided among peers; a peer
//! allocates from the ranges it owns and asks others to donate space when it runs short; the
//! initial division is agreed by consensus (or given by seeds). [`Ipam`] is the state machine
//! the router drives: no sockets, no clocks, no files; randomness comes from a seed.
//!
//! - [`ring`]: [`Ring`], [`Entry`], [`MergeError`]: the CRDT and its merge.
//! - [`ipam`](mod@ipam): [`Ipam`] with its requests, events, status and persistence
//!   ([`Snapshot`]).
//! - [`error`]: [`IpamError`], the user-facing errors.
//! - [`spec`]: Weave's address arguments (`net:default`, `net:CIDR`, `ip:CIDR`, `CIDR`).
//! - [`arpwatch`]: [`ArpWatch`], an address in use twice on the bridge's segment, found from
//!   its ARP traffic.
//!
//! Messages are postcard-encoded; the router carries them on an IPAM gossip channel.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod arpwatch;
pub mod error;
pub mod ipam;
mod msg;
pub mod ring;
pub mod spec;

#[cfg(test)]
mod tests;

pub use arpwatch::{ArpConflict, ArpSeen, ArpWatch};
pub use error::IpamError;
pub use ipam::{
    Acceptor, CLAIM_ATTEMPTS, Commit, Conflict, DEAD_TIMEOUT, Dest, FREE_BATCH_DELAY,
    GOSSIP_INTERVAL, InitMode, Ipam, IpamConfig, IpamEvent, IpamState, IpamStats, IpamStatus,
    MAX_CONFLICTS, OwnedAddress, PeerShare, RETRY_INTERVAL, RMPEER_GRACE, RangeStatus, RequestId,
    SNAPSHOT_VERSION, Snapshot,
};
pub use ring::{Entry, MergeError, Ring, TRANSFER_VERSION_BUMP};
