//! Layer: pure logic. What weft's CNI plugins (`weave-net`, `weave-ipam`) read from a container
//! runtime and what they answer, sans-IO: no files, sockets, processes or clocks. The driver
//! (`cli/src/cni.rs`) reads the environment and stdin, calls these functions, does the
//! plumbing and IPAM, and prints what they build.
//!
//! CNI (spec 1.0.0, also 0.3.0, 0.3.1, 0.4.0 and 1.1.0 configurations): a runtime runs the
//! plugin binary with `CNI_COMMAND` (`ADD`, `DEL`, `CHECK`, `VERSION`, `GC`, `STATUS`) and the
//! other `CNI_*` variables in the environment ([`env`](mod@env)) and the network configuration
//! on stdin ([`conf`]); the plugin prints a result ([`result`]) or an error ([`error`]) on stdout.
//!
//! - [`version`]: the versions weft speaks, the `VERSION` answer, which commands a version has.
//! - [`env`](mod@env): the `CNI_*` variables, checked per command.
//! - [`conf`]: Weave's `weave-net` configuration (`bridge`, `hairpinMode`, `mtu`, `ipam`, `dns`,
//!   `prevResult`, GC's `cni.dev/valid-attachments`).
//! - [`result`]: results, parsed from any supported version (another IPAM plugin's, or a
//!   `prevResult`) and written in the configuration's version.
//! - [`plan`]: decisions: the IPAM identifier of an attachment, the routes a container gets
//!   (Weave's default route through the bridge), what CHECK compares and what GC releases.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod conf;
pub mod env;
pub mod error;
pub mod plan;
pub mod result;
pub mod version;

pub use error::{CniError, Code};
