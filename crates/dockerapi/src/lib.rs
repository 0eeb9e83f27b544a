//! Layer: pure logic. What weft's Docker API proxy reads and changes in Docker Engine API
//! traffic, sans-IO: no sockets, no clocks; JSON bodies are `serde_json::Value`s edited in
//! place, so fields this code does not know pass through untouched.
//!
//! - [`route`]: which calls the proxy intercepts (create, start/restart, inspect, exec).
//! - [`rewrite`]: who joins the weave network (`WEAVE_CIDR`, `--no-default-ipalloc`, network
//!   mode) and the edits to create, exec and inspect bodies.
//! - [`hosts`]: the `/etc/hosts` a joined container gets.
//! - [`events`]: splitting Docker's event stream into events.
//! - [`plugin`]: Docker's network and IPAM plugin protocol (`docker network create -d weave`).
//! - [`dns`]: weaveDNS in created containers (hostname from the container's name, `--dns`,
//!   `--dns-search`) and the name a container registers.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod dns;
pub mod events;
pub mod hosts;
pub mod plugin;
pub mod rewrite;
pub mod route;
