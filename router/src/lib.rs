//! Layer: driver. The weft router daemon, one per host.
//!
//! A thin driver around the sans-IO crates: it owns the sockets, the TAP, the threads and the
//! clock, and feeds them to [`weft_mesh`] (control connections) and [`weft_overlay`] (forwarding).
//!
//! - [`dataplane`]: one OS thread that owns the TAP queue, the UDP data socket and their
//!   buffers, and runs the forwarding engine over batches of frames.
//! - [`control`]: tokio tasks for the TCP control connections (listener, dialers with backoff,
//!   one task per connection driving a [`weft_mesh::Connection`]).
//! - [`api`]: the HTTP API on 127.0.0.1:6784 (`/status`, `/metrics`).
//! - [`client`]: the client side of that API (used by the CLI and the Docker proxy).
//! - [`identity`]: peer name and short id, derived or loaded from the state directory.
//! - [`links`]: the data plane's per-neighbour encryption (sealing and opening datagrams).
//!
//! The entry point is [`run()`], which takes the configuration and a shutdown future
//! (mini-redis style), so tests and the CLI drive it the same way.
#![forbid(unsafe_code)]

pub mod api;
pub mod client;
pub mod config;
pub mod control;
pub mod dataplane;
pub mod expose;
pub mod identity;
pub mod ipam;
pub mod links;
pub mod run;
pub mod state;

pub use config::Config;
pub use run::run;
