//! Layer: pure logic. The forwarding engine of weft's data plane, sans-IO.
//!
//! The router's data-plane thread reads Ethernet frames from the TAP on the `weave` bridge and
//! VXLAN datagrams from UDP 6784, and asks the [`Engine`] what to do with each: the engine
//! learns MAC addresses (source MAC → local or the sending peer), ages them out, and answers with
//! a [`TapDecision`] or a [`DatagramDecision`]. It also writes the VXLAN header in front of a frame
//! in a caller-owned buffer. It never touches a socket, a device or a clock: `now` is an argument,
//! and nothing on the per-frame path allocates.
//!
//! Peers are known to the engine by their 12-bit short id (the one carried in the VNI) once their
//! control connection is ready; the control plane adds and removes them.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod counters;
mod engine;
pub mod heartbeat;
pub mod links;
mod mac_table;
mod neighbours;
pub mod offload;
pub mod pmtu;

pub use counters::Counters;
pub use engine::{
    DatagramDecision, Engine, EngineConfig, ForwardingTable, PeerEntry, Received, Relay,
    TapDecision, emit_vxlan_header, heartbeat_datagram,
};
pub use mac_table::{Learned, MacTable, Owner};
pub use neighbours::{LinkId, LinkTraffic};
pub use weft_mesh::Instant;
