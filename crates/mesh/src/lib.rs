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
//!
//! The wire format (hello bytes, frames, [`Message`](weft_wire::control::Message)) lives in
//! `weft_wire::control`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod connection;
pub mod handshake;
pub mod identity;
pub mod time;

#[cfg(test)]
mod tests;

pub use connection::{
    CloseReason, ConnConfig, ConnState, Connection, Event, ProtocolError, SendError,
};
pub use identity::{LocalPeer, PeerName, PeerNameError, PeerUid, RemotePeer, ShortId};
pub use time::Instant;
