//! Layer: pure logic. Peer identity and the control-connection state machines (sans-IO).
//!
//! `weft-mesh` is weft's counterpart of Weave's `mesh` library, written in the style of
//! quinn-proto: no sockets, no threads, no clocks. Each state machine takes input bytes and the
//! current [`Instant`] as arguments and hands back bytes to send, events and the next time it
//! wants to be woken.
//!
//! - [`identity`]: [`PeerName`] (48-bit, printed like a MAC), [`ShortId`] (12-bit), [`PeerUid`],
//!   [`LocalPeer`] and [`RemotePeer`].
//! - [`handshake`]: version negotiation and the checks on a peer's features, as pure functions.
//! - [`connection`]: [`Connection`], the state machine for one TCP control connection (hello,
//!   features, heartbeats, idle timeout).
//! - [`time`]: [`Instant`], time as the driver sees it.
//! - [`topology`]: [`Topology`], the gossiped [`PeerSummary`] of every known peer and the merge
//!   rule.
//! - [`routes`]: [`Routes`], unicast next hops and per-source broadcast trees computed from a
//!   topology.
//! - [`gossip`]: [`Mesh`], the topology gossip state machine (batching, fan-out, relays, full
//!   state, garbage collection, short-id collisions).
//! - [`connmaker`]: [`ConnMaker`], which addresses to dial and when (discovery, backoff, limits).
//! - [`admission`]: caps on connections per caller and in total, rates of new connections,
//!   and rate-limited log lines with summaries (for the listeners untrusted callers reach).
//!
//! The wire format (hello bytes, frames, [`Message`](weft_wire::control::Message)) lives in
//! `weft_wire::control`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admission;
pub mod channel;
pub mod connection;
pub mod connmaker;
pub mod gossip;
pub mod handshake;
pub mod identity;
pub mod rng;
pub mod routes;
pub mod time;
pub mod topology;

#[cfg(test)]
mod tests;

pub use channel::{ChannelError, ChannelRouter, Envelope, Handled};
pub use connection::{
    CloseReason, ConnConfig, ConnState, Connection, Encryption, Event, Protection, ProtocolError,
    Security, SendError,
};
pub use connmaker::{ConnMaker, ConnMakerConfig, TargetState};
pub use gossip::{
    GossipConfig, GossipError, GossipStats, Mesh, MeshEvent, ROUTES_DELAY, TOPOLOGY_CHANNEL,
    TopologyGossip,
};
pub use identity::{LocalPeer, OutOfRange, PeerName, PeerNameError, PeerUid, RemotePeer, ShortId};
pub use routes::Routes;
pub use time::Instant;
pub use topology::{
    Change, ConnSummary, Ident, Merged, PeerSummary, Record, Topology, TopologyError,
};
