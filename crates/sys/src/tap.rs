//! Layer: OS. TAP devices through raw `TUNSETIFF` ioctls on `/dev/net/tun`.
//!
//! Owns the TAP file descriptor: one [`Tap`] is one queue of a TAP device opened with
//! `IFF_TAP | IFF_NO_PI` (plus `IFF_MULTI_QUEUE` on request). Every `recv` returns exactly one
//! Ethernet frame (no packet-information prefix, no virtio header); every `send` writes one.
//! The device lives in the network namespace of the thread that opened it, and (not being
//! persistent) disappears when its last queue is closed.

use std::ffi::CStr;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use crate::{cvt, cvt_size};

/// The clone device every TAP queue is opened from.
const TUN_PATH: &str = "/dev/net/tun";

/// A TAP queue (`IFF_TAP | IFF_NO_PI`, optionally `IFF_MULTI_QUEUE`), opened `O_CLOEXEC`.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    name: String,
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
fn tap_flags(multi_queue: bool) -> libc::c_short {
    let mut flags = libc::IFF_TAP | libc::IFF_NO_PI;
    if multi_queue {
        flags |= libc::IFF_MULTI_QUEUE;
    }
    // All the IFF_* tun flags fit in 16 bits (the largest used here is 0x1000).
    flags as libc::c_short
}

impl Tap {
    /// Open (creating if absent) the TAP device `name` in the calling thread's namespace.
    ///
    /// With `multi_queue`, each further `open` of the same name adds one queue; without it, a
    /// second open of a device that is already attached fails with `EBUSY`. Opening a device
    /// that was created with different flags fails with `EINVAL`.
    pub fn open(name: &str, multi_queue: bool) -> io::Result<Self> {
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
        ifr.ifr_ifru.ifru_flags = tap_flags(multi_queue);
        // SAFETY: `fd` is an open /dev/net/tun descriptor and TUNSETIFF reads and writes one
        // `struct ifreq`, which `ifr` is, living for the whole call.
        cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut ifr) })?;

        // The kernel writes back the final name (relevant when the name held a `%d` pattern).
        // SAFETY: ifr_name was NUL-terminated by us (name shorter than IFNAMSIZ) and the kernel
        // only writes a NUL-terminated name of at most IFNAMSIZ bytes back.
        let actual = unsafe { CStr::from_ptr(ifr.ifr_name.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        Ok(Self { fd, name: actual })
    }

    /// Open one more queue of this (multi-queue) device.
    pub fn open_queue(&self) -> io::Result<Self> {
        Self::open(&self.name, true)
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
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
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the duration of the call.
        cvt_size(unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) })
    }

    /// Write one frame (a full Ethernet frame, no prefix); returns the bytes written.
    pub fn send(&self, frame: &[u8]) -> io::Result<usize> {
        // SAFETY: `frame` is valid for reads of `frame.len()` bytes for the duration of the call.
        cvt_size(unsafe { libc::write(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) })
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
        assert_eq!(tap_flags(false), 0x1002);
        assert_eq!(tap_flags(true), 0x1102);
    }
}
