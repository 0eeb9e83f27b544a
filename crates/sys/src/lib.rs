//! Layer: OS. The only crate with `unsafe` and Linux I/O.
//!
//! It owns every system call the project makes:
//! - [`tap`]: TAP devices (raw `TUNSETIFF` ioctls), one Ethernet frame per read or write,
//!   optionally behind a virtio-net header with checksum/TSO offloads;
//! - [`poll`]: `poll(2)` over several descriptors;
//! - [`udp`]: a UDP socket with `recvmmsg`/`sendmmsg` batches, UDP GSO sends and GRO receives;
//! - [`netns`]: network namespaces held by fd, and running code inside one on a fresh thread;
//! - [`netlink`]: rtnetlink operations (links, addresses, routes) bound to one namespace;
//! - [`plumb`]: Weave's container attach/detach (veth pair, `ethwe`, gratuitous ARP);
//! - [`firewall`]: the iptables chains and rules of `expose`/`hide` (runs `iptables`);
//! - [`sockdiag`]: which user owns the client end of a local TCP connection (sock_diag);
//! - [`packet`]: an `AF_PACKET` socket for the ARP traffic of one interface;
//! - [`steer`]: an eBPF TAP queue steering program that gives sparse flows an express queue;
//! - [`probe`]: what the kernel offers a data plane (TAP vnet headers, TSO, UDP GSO/GRO, VXLAN
//!   external mode, eBPF), found by trying each in a scratch namespace.
//!
//! Every `unsafe` block carries a `// SAFETY:` comment.

pub mod firewall;
pub mod netlink;
pub mod netns;
pub mod packet;
pub mod plumb;
pub mod poll;
pub mod probe;
pub mod sched;
pub mod sockdiag;
pub mod steer;
pub mod tap;
pub mod udp;

use std::io;

/// Turn a libc return value of `-1` into the current `errno` as an [`io::Error`].
fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Like [`cvt`] for calls that return `ssize_t`.
fn cvt_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        // ret >= 0 was just checked, so the conversion is lossless.
        Ok(ret as usize)
    }
}
