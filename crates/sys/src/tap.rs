//! Layer: OS. TAP devices through raw `TUNSETIFF` ioctls on `/dev/net/tun`.
//!
//! Owns the TAP file descriptor: one [`Tap`] is one queue of a TAP device opened with
//! `IFF_TAP | IFF_NO_PI` (plus `IFF_MULTI_QUEUE` on request). Every `recv` returns exactly one
//! Ethernet frame (no packet-information prefix); every `send` writes one.
//! The device lives in the network namespace of the thread that opened it, and (not being
//! persistent) disappears when its last queue is closed.
//!
//! With [`TapOptions::vnet_hdr`] the device is opened with `IFF_VNET_HDR` and every frame,
//! in both directions, is preceded by a [`VNET_HDR_LEN`]-byte `struct virtio_net_hdr`
//! (`TUNSETVNETHDRSZ` = 10). With [`Offload`] bits (`TUNSETOFFLOAD`) the kernel may then hand
//! us checksum-less frames and TCP super-frames of up to 64 KiB (and accepts the same from us);
//! the header describes what is left to do. Splitting and coalescing those frames is the
//! overlay crate's business; this module only moves bytes. The header's multi-byte fields are
//! little-endian (the tun default on little-endian hosts; we never call `TUNSETVNETBE`).

use std::ffi::CStr;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use crate::netns::NetNs;
use crate::{cvt, cvt_size};

/// The clone device every TAP queue is opened from.
const TUN_PATH: &str = "/dev/net/tun";

/// Length of the `struct virtio_net_hdr` in front of every frame when
/// [`TapOptions::vnet_hdr`] is on (set with `TUNSETVNETHDRSZ`).
pub const VNET_HDR_LEN: usize = 10;

/// A read buffer this large holds any frame of a vnet-header TAP: the header, an Ethernet
/// header with a VLAN tag, and a 64 KiB super-frame (the kernel keeps a GSO frame for a TAP
/// within the device's `gso_max_size`, 64 KiB, counting the Ethernet header).
pub const MAX_VNET_FRAME: usize = VNET_HDR_LEN + 18 + 65_535;

/// `virtio_net_hdr.flags`: the frame's L4 checksum is not computed; `csum_start`/`csum_offset`
/// say where it goes.
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
/// `virtio_net_hdr.flags`: the checksum has been validated.
pub const VIRTIO_NET_HDR_F_DATA_VALID: u8 = 2;
/// `virtio_net_hdr.gso_type`: an ordinary frame.
pub const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
/// `virtio_net_hdr.gso_type`: a TCP/IPv4 super-frame to cut at `gso_size`.
pub const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
/// `virtio_net_hdr.gso_type`: UDP fragmentation offload (obsolete).
pub const VIRTIO_NET_HDR_GSO_UDP: u8 = 3;
/// `virtio_net_hdr.gso_type`: a TCP/IPv6 super-frame.
pub const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;
/// `virtio_net_hdr.gso_type`: a UDP (L4 segmentation) super-frame; only with `TUN_F_USO*`,
/// which [`Offload`] never asks for.
pub const VIRTIO_NET_HDR_GSO_UDP_L4: u8 = 5;
/// `virtio_net_hdr.gso_type` bit: the TCP super-frame carries ECN CWR.
pub const VIRTIO_NET_HDR_GSO_ECN: u8 = 0x80;

/// Offloads to announce with `TUNSETOFFLOAD`, i.e. what the kernel may leave undone in frames
/// it hands us (and what we may leave undone in frames we write).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Offload {
    /// `TUN_F_CSUM`: frames may carry a partial checksum (`VIRTIO_NET_HDR_F_NEEDS_CSUM`).
    pub csum: bool,
    /// `TUN_F_TSO4`: TCP/IPv4 super-frames (needs `csum`).
    pub tso4: bool,
    /// `TUN_F_TSO6`: TCP/IPv6 super-frames (needs `csum`).
    pub tso6: bool,
}

impl Offload {
    /// Checksum offload and TSO for both IP versions.
    pub const ALL: Self = Self {
        csum: true,
        tso4: true,
        tso6: true,
    };

    /// The `TUNSETOFFLOAD` argument.
    fn flags(self) -> libc::c_uint {
        let mut f = 0;
        if self.csum {
            f |= libc::TUN_F_CSUM;
        }
        if self.tso4 {
            f |= libc::TUN_F_TSO4;
        }
        if self.tso6 {
            f |= libc::TUN_F_TSO6;
        }
        f
    }

    fn any(self) -> bool {
        self.csum || self.tso4 || self.tso6
    }
}

/// How to open a TAP queue; see [`Tap::open_with`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct TapOptions {
    /// `IFF_MULTI_QUEUE`: further opens of the same name add queues.
    pub multi_queue: bool,
    /// `IFF_VNET_HDR`: every frame read or written starts with a [`VNET_HDR_LEN`]-byte
    /// `virtio_net_hdr`.
    pub vnet_hdr: bool,
    /// Offloads to enable (only with `vnet_hdr`; TSO only with `csum`).
    pub offload: Offload,
}

/// A TAP queue (`IFF_TAP | IFF_NO_PI`, optionally `IFF_MULTI_QUEUE` and `IFF_VNET_HDR`),
/// opened `O_CLOEXEC`.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    name: String,
    opts: TapOptions,
    /// The namespace the device lives in (`None` if `/proc` could not tell us).
    ns: Option<NetNs>,
}

/// Checks that `name` fits an interface name (1..=15 bytes, no NUL, `/` or whitespace),
/// and returns it as the fixed-size, NUL-terminated `ifr_name` array.
pub(crate) fn ifname_bytes(name: &str) -> io::Result<[libc::c_char; libc::IFNAMSIZ]> {
    let ok = !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b != 0 && b != b'/' && b != b':' && !b.is_ascii_whitespace());
    if !ok {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid interface name {name:?} (1..=15 bytes, no '/', ':', NUL or space)"),
        ));
    }
    let mut out = [0 as libc::c_char; libc::IFNAMSIZ];
    for (dst, src) in out.iter_mut().zip(name.bytes()) {
        // Reinterpreting the byte as c_char (i8 or u8 depending on target) is intended.
        *dst = src as libc::c_char;
    }
    Ok(out)
}

/// The `ifr_flags` value for a TAP queue.
fn tap_flags(multi_queue: bool, vnet_hdr: bool) -> libc::c_short {
    let mut flags = libc::IFF_TAP | libc::IFF_NO_PI;
    if multi_queue {
        flags |= libc::IFF_MULTI_QUEUE;
    }
    if vnet_hdr {
        flags |= libc::IFF_VNET_HDR;
    }
    // All the IFF_* tun flags used here fit in 16 bits (the largest is IFF_VNET_HDR, 0x4000),
    // so the conversion to the C short is lossless.
    flags as libc::c_short
}

/// Rejects option combinations the kernel would refuse or that make no sense.
fn check_options(opts: &TapOptions) -> io::Result<()> {
    let invalid = |msg: &str| Err(io::Error::new(io::ErrorKind::InvalidInput, msg.to_string()));
    if opts.offload.any() && !opts.vnet_hdr {
        // Without the header the kernel could not tell us what is left undone in a frame.
        return invalid("TAP offloads need vnet_hdr");
    }
    if (opts.offload.tso4 || opts.offload.tso6) && !opts.offload.csum {
        // TUNSETOFFLOAD itself refuses TSO without TUN_F_CSUM (EINVAL).
        return invalid("TAP TSO needs checksum offload (csum)");
    }
    Ok(())
}

impl Tap {
    /// Open (creating if absent) the TAP device `name` in the calling thread's namespace,
    /// without virtio headers or offloads: `open_with(name, TapOptions { multi_queue, .. })`.
    ///
    /// With `multi_queue`, each further `open` of the same name adds one queue; without it, a
    /// second open of a device that is already attached fails with `EBUSY`. Opening a device
    /// that was created with a different `multi_queue` flag fails with `EINVAL`.
    pub fn open(name: &str, multi_queue: bool) -> io::Result<Self> {
        Self::open_with(
            name,
            TapOptions {
                multi_queue,
                ..TapOptions::default()
            },
        )
    }

    /// Open (creating if absent) the TAP device `name` in the calling thread's namespace.
    ///
    /// With `opts.vnet_hdr`, `TUNSETIFF` gets `IFF_VNET_HDR`, the header size is set to
    /// [`VNET_HDR_LEN`] (`TUNSETVNETHDRSZ`), and `opts.offload` is applied with
    /// `TUNSETOFFLOAD` (`TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6` as asked; all off is also
    /// applied, so a reopened device loses earlier offloads).
    ///
    /// The header flag, header size and offloads belong to the device, not the queue. A queue
    /// added to a multi-queue device that already has one keeps the device's header flag, so
    /// opening it with a different `vnet_hdr` fails (`InvalidInput`) rather than yield a queue
    /// whose frames we would misread; the offloads asked for last apply to all queues. Open
    /// every queue of one device with the same options, as [`open_queue`](Self::open_queue)
    /// does.
    ///
    /// Errors: `InvalidInput` for a bad name, offloads without `vnet_hdr`, TSO without `csum`,
    /// or a `vnet_hdr` that differs from the device's; otherwise the ioctl's error (`EBUSY`,
    /// `EINVAL` as for [`open`](Self::open)).
    pub fn open_with(name: &str, opts: TapOptions) -> io::Result<Self> {
        check_options(&opts)?;
        let ifr_name = ifname_bytes(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(TUN_PATH)?;
        let fd: OwnedFd = file.into();

        // SAFETY: ifreq is a plain C struct (arrays and a union of integers/pointers) for which
        // all-zero bytes are a valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        ifr.ifr_name = ifr_name;
        ifr.ifr_ifru.ifru_flags = tap_flags(opts.multi_queue, opts.vnet_hdr);
        // SAFETY: `fd` is an open /dev/net/tun descriptor and TUNSETIFF reads and writes one
        // `struct ifreq`, which `ifr` is, living for the whole call.
        cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut ifr) })?;

        // The kernel writes back the final name (relevant when the name held a `%d` pattern).
        // SAFETY: ifr_name was NUL-terminated by us (name shorter than IFNAMSIZ) and the kernel
        // only writes a NUL-terminated name of at most IFNAMSIZ bytes back.
        let actual = unsafe { CStr::from_ptr(ifr.ifr_name.as_ptr()) }
            .to_string_lossy()
            .into_owned();

        // A queue added to a multi-queue device that already has queues keeps the device's
        // flags, whatever we asked for: check that the header flag is what we asked for.
        // SAFETY: as above; all-zero is a valid ifreq.
        let mut got: libc::ifreq = unsafe { std::mem::zeroed() };
        // SAFETY: TUNGETIFF writes one `struct ifreq` into `got`, which lives for the call.
        cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNGETIFF, &mut got) })?;
        // SAFETY: TUNGETIFF fills in ifru_flags; any bit pattern is a valid c_short.
        let dev_flags = libc::c_int::from(unsafe { got.ifr_ifru.ifru_flags });
        if (dev_flags & libc::IFF_VNET_HDR != 0) != opts.vnet_hdr {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "TAP {actual} has vnet_hdr {}; open its queues with the same options",
                    if opts.vnet_hdr { "off" } else { "on" }
                ),
            ));
        }

        if opts.vnet_hdr {
            let size = VNET_HDR_LEN as libc::c_int;
            // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which points to a live
            // c_int for the whole call; `fd` is the attached tun descriptor.
            cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETVNETHDRSZ, &raw const size) })?;
            // The argument is passed by value, not through a pointer.
            let flags = libc::c_ulong::from(opts.offload.flags());
            // SAFETY: TUNSETOFFLOAD takes its unsigned long argument by value and touches no
            // user memory; `fd` is the attached tun descriptor.
            cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETOFFLOAD, flags) })?;
        }
        Ok(Self {
            fd,
            name: actual,
            opts,
            ns: NetNs::current().ok(),
        })
    }

    /// Open one more queue of this (multi-queue) device, with the same options, in the
    /// device's namespace: from a thread in another namespace, the open runs on a short-lived
    /// thread inside it ([`NetNs::run_in`]).
    pub fn open_queue(&self) -> io::Result<Self> {
        let opts = TapOptions {
            multi_queue: true,
            ..self.opts
        };
        match &self.ns {
            Some(ns) if !NetNs::current().is_ok_and(|here| here.same_as(ns)) => {
                let name = self.name.clone();
                ns.run_in(move || Self::open_with(&name, opts))?
            }
            _ => Self::open_with(&self.name, opts),
        }
    }

    /// Whether frames carry a [`VNET_HDR_LEN`]-byte virtio header (`IFF_VNET_HDR`).
    pub fn vnet_hdr(&self) -> bool {
        self.opts.vnet_hdr
    }

    /// The options this queue was opened with.
    pub fn options(&self) -> TapOptions {
        self.opts
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Attach (`Some`) or detach (`None`) the device's queue steering program
    /// (`TUNSETSTEERINGEBPF`): an eBPF `SOCKET_FILTER` program the kernel runs on every frame
    /// the device transmits towards us, taking its return value modulo the number of queues
    /// as the queue to put the frame on. The program belongs to the device, not the queue
    /// (any queue's fd sets it for all) and the device holds its own reference, so `prog` may
    /// be closed afterwards. See [`crate::steer`].
    pub fn set_steering_prog(&self, prog: Option<BorrowedFd<'_>>) -> io::Result<()> {
        let fd: libc::c_int = prog.map_or(-1, |p| p.as_raw_fd());
        // SAFETY: TUNSETSTEERINGEBPF reads one int (a program fd, or -1 to detach) through the
        // pointer, which points to a live c_int for the whole call; `self.fd` is an attached
        // tun descriptor.
        cvt(unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::TUNSETSTEERINGEBPF, &raw const fd) })
            .map(drop)
    }

    /// Switch `O_NONBLOCK` on or off.
    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        let fd = self.fd.as_raw_fd();
        // SAFETY: F_GETFL on a descriptor we own takes no further argument.
        let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
        let new = if on {
            flags | libc::O_NONBLOCK
        } else {
            flags & !libc::O_NONBLOCK
        };
        if new != flags {
            // SAFETY: F_SETFL on a descriptor we own takes an int flag set.
            cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, new) })?;
        }
        Ok(())
    }

    /// Read one frame into `buf`; returns its length. A frame longer than `buf` is truncated.
    /// Blocks unless [`set_nonblocking`](Self::set_nonblocking)`(true)`, in which case an empty
    /// queue gives [`io::ErrorKind::WouldBlock`].
    ///
    /// With [`vnet_hdr`](Self::vnet_hdr) on, `buf` receives the [`VNET_HDR_LEN`]-byte
    /// `virtio_net_hdr` first and the Ethernet frame after it, and the length counts both.
    /// With offloads on, the frame may be a TCP super-frame (up to 64 KiB; size `buf` at
    /// [`MAX_VNET_FRAME`]) or lack its L4 checksum, as the header says. A `buf` shorter than
    /// the header gives `EINVAL`.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the duration of the call.
        cvt_size(unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) })
    }

    /// Write one frame; returns the bytes written.
    ///
    /// Without [`vnet_hdr`](Self::vnet_hdr), `frame` is a full Ethernet frame, no prefix.
    /// With it, `frame` must start with a [`VNET_HDR_LEN`]-byte `virtio_net_hdr` (all zero
    /// for an ordinary, fully checksummed frame), followed by the Ethernet frame; the kernel
    /// rejects a header that does not fit the frame with `EINVAL`. See
    /// [`send_vectored`](Self::send_vectored) to avoid copying the frame behind a header.
    pub fn send(&self, frame: &[u8]) -> io::Result<usize> {
        // SAFETY: `frame` is valid for reads of `frame.len()` bytes for the duration of the call.
        cvt_size(unsafe { libc::write(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) })
    }

    /// Write one frame given as a header and the rest, with one `writev`: the kernel sees
    /// `hdr` followed by `frame` as one frame. With [`vnet_hdr`](Self::vnet_hdr) on, `hdr` is
    /// the [`VNET_HDR_LEN`]-byte `virtio_net_hdr` and `frame` the Ethernet frame; without it,
    /// the two are simply concatenated (e.g. an encapsulation header and a payload). Returns
    /// the bytes written (both parts).
    pub fn send_vectored(&self, hdr: &[u8], frame: &[u8]) -> io::Result<usize> {
        // writev never writes through iov_base; the *mut casts only satisfy the C type.
        let iov = [
            libc::iovec {
                iov_base: hdr.as_ptr().cast_mut().cast(),
                iov_len: hdr.len(),
            },
            libc::iovec {
                iov_base: frame.as_ptr().cast_mut().cast(),
                iov_len: frame.len(),
            },
        ];
        // SAFETY: both iovecs describe live slices borrowed for the whole call, which the kernel
        // only reads; the count matches the array length.
        cvt_size(unsafe {
            libc::writev(self.fd.as_raw_fd(), iov.as_ptr(), iov.len() as libc::c_int)
        })
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifname_validation() {
        assert!(ifname_bytes("weave").is_ok());
        assert!(ifname_bytes("vethwepl1234567").is_ok()); // 15 bytes
        assert!(ifname_bytes("vethwepl12345678").is_err()); // 16 bytes
        assert!(ifname_bytes("").is_err());
        assert!(ifname_bytes("a/b").is_err());
        assert!(ifname_bytes("a b").is_err());
        assert!(ifname_bytes("..").is_err());
        let b = ifname_bytes("tap0").unwrap();
        assert_eq!(
            b[..5],
            [b't' as libc::c_char, b'a' as _, b'p' as _, b'0' as _, 0]
        );
    }

    #[test]
    fn flags() {
        assert_eq!(tap_flags(false, false), 0x1002);
        assert_eq!(tap_flags(true, false), 0x1102);
        assert_eq!(tap_flags(true, true), 0x5102);
        assert_eq!(Offload::default().flags(), 0);
        assert_eq!(Offload::ALL.flags(), 0x07);
        let csum = Offload {
            csum: true,
            ..Offload::default()
        };
        assert_eq!(csum.flags(), 0x01);
    }

    #[test]
    fn option_checks() {
        let mut o = TapOptions::default();
        assert!(check_options(&o).is_ok());
        o.offload.csum = true;
        assert!(check_options(&o).is_err(), "offload without vnet_hdr");
        o.vnet_hdr = true;
        assert!(check_options(&o).is_ok());
        o.offload = Offload {
            csum: false,
            tso4: true,
            tso6: false,
        };
        assert!(check_options(&o).is_err(), "tso without csum");
        o.offload = Offload::ALL;
        assert!(check_options(&o).is_ok());
        // Checked before the device is touched.
        let e = Tap::open_with(
            "x",
            TapOptions {
                offload: Offload::ALL,
                ..TapOptions::default()
            },
        )
        .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}
