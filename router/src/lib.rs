//! Layer: driver. The weft router daemon, one per host.
//!
//! A thin driver around the sans-IO crates: it owns the sockets, the TAP, the threads and the
//! clock, and feeds them to [`weft_node`] (the node's rules: connections, establishment,
//! liveness, routes), [`weft_mesh`] (control connections) and [`weft_overlay`] (forwarding).
//!
//! - [`dataplane`]: one OS thread that owns the TAP queue, the UDP data socket and their
//!   buffers, and runs the forwarding engine over batches of frames.
//! - [`control`]: the task that owns the [`weft_node::Node`] and does its actions, and tokio
//!   tasks for the TCP control connections (listener, dialers, one task per connection
//!   driving a [`weft_mesh::Connection`]) that report to it by message.
//! - [`api`]: the HTTP API on 127.0.0.1:6784 (`/status`, `/report`, `/metrics`, ...) and the
//!   read-only status listener; [`report`] and [`metrics`] give its outputs Weave's shapes.
//! - [`client`]: the client side of that API (used by the CLI).
//! - [`attach`]: the one attach/detach path (netns + address specs + MTU + ident) every caller
//!   shares; IPAM is reached over HTTP ([`client::Http`]) or in-process ([`Handle`]).
//! - [`handle`]: [`Handle`], the running router for other parts of the daemon process.
//!   [`guard`] serves it: only root may change the network, callers' connections are capped
//!   and timed out.
//! - [`identity`]: peer name and short id, derived or loaded from the state directory.
//! - [`traffic`]: per-link traffic counted by the data plane; [`topology`]: the page on
//!   `GET /` that draws the mesh live.
//! - [`dns`]: weaveDNS (gossiped names, the DNS server, its HTTP API).
//! - [`features`]: which kernel features (offloads, VXLAN, eBPF) the data plane uses.
//!
//! The entry point is [`run()`], which takes the configuration and a shutdown future
//! (mini-redis style), so tests and the CLI drive it the same way; [`run_with`] also hands
//! the daemon a [`Handle`] once the router serves.
#![forbid(unsafe_code)]

pub mod api;
pub mod arpwatch;
pub mod attach;
pub mod client;
pub mod config;
pub mod control;
pub mod dataplane;
pub mod dns;
pub mod expose;
pub mod fastdp;
pub mod features;
pub mod gate;
pub mod guard;
pub mod handle;
pub mod identity;
pub mod ipam;
pub mod metrics;
pub mod recover;
pub mod report;
pub mod run;
pub mod state;
pub mod topology;
pub mod traffic;

pub use config::Config;
pub use handle::Handle;
pub use run::{run, run_with};
