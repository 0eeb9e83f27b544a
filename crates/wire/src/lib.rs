//! `weft-wire`: the bytes weft puts on the wire, and nothing else.
//!
//! This crate is sans-IO: no sockets, no clocks, no allocation on the packet path. Each protocol
//! module follows one shape (after smoltcp): a `Packet<T: AsRef<[u8]>>` view with a private
//! `field` module of byte ranges, `new_unchecked`/`new_checked`/`check_len`, getters, `set_*`
//! setters when `T: AsMut<[u8]>`, and a `Repr` holding only valid states with `parse`,
//! `buffer_len` and `emit`.
//!
//! **Panic contract:** once `new_checked` (or `check_len`) has succeeded on a view, no getter
//! can panic, whatever the bytes. Network input never causes a panic; it yields [`Error`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod arp;
pub mod control;
pub mod ethernet;
pub mod flow;
pub mod icmpv4;
pub mod icmpv6;
pub mod ipv4;
pub mod ipv6;
pub mod udp;
pub mod vxlan;

mod error;
pub use error::Error;
