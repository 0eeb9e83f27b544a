//! Layer: OS. An `AF_PACKET` socket for the frames of one EtherType on one interface: the ARP
//! frames of the bridge (what it receives: broadcasts from every port, frames to its MAC; what
//! it sends: probes), or the fast path's heartbeats on a VXLAN device. Whole Ethernet frames.
//! Non-blocking; the caller polls its descriptor.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A raw socket bound to one interface for one EtherType.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: libc::c_int,
    ethertype: u16,
}

/// The bridge's ARP socket.
pub type ArpSocket = PacketSocket;

impl PacketSocket {
    /// Opens an `ETH_P_ARP` socket on interface `ifindex` (see [`PacketSocket::open_ethertype`]).
    pub fn open(ifindex: u32) -> io::Result<Self> {
        Self::open_ethertype(ifindex, libc::ETH_P_ARP as u16)
    }

    /// Opens it on interface `ifindex` (in the calling thread's namespace) for frames of
    /// `ethertype`, non-blocking, not seeing the frames the host itself sends.
    pub fn open_ethertype(ifindex: u32, ethertype: u16) -> io::Result<Self> {
        let proto = ethertype.to_be();
        let ifindex = libc::c_int::try_from(ifindex)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "ifindex out of range"))?;
        // SAFETY: plain socket(2) call with constant arguments; the result is checked below.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::c_int::from(proto),
            )
        };
        let raw = crate::cvt(raw)?;
        // SAFETY: `raw` is a freshly created descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_ll is plain integer data; all-zero is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as libc::c_ushort;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex;
        // SAFETY: `sll` is a valid sockaddr_ll for the duration of the call and its size is
        // passed.
        let bound = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const sll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        crate::cvt(bound)?;
        let one: libc::c_int = 1;
        // SAFETY: `one` lives across the call and its size is passed. Failure (kernels before
        // 4.20) only means our own frames come back too; the caller ignores those by MAC.
        let _ = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_IGNORE_OUTGOING,
                (&raw const one).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        Ok(Self {
            fd,
            ifindex,
            ethertype,
        })
    }

    /// Reads one frame into `buf`; `WouldBlock` when there is none.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of its length for the duration of the call.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        crate::cvt_size(n)
    }

    /// Sends one whole Ethernet frame out of the interface.
    pub fn send(&self, frame: &[u8]) -> io::Result<usize> {
        // SAFETY: sockaddr_ll is plain integer data; all-zero is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as libc::c_ushort;
        sll.sll_protocol = self.ethertype.to_be();
        sll.sll_ifindex = self.ifindex;
        sll.sll_halen = 6;
        if let Some(dst) = frame.get(..6) {
            sll.sll_addr[..6].copy_from_slice(dst);
        }
        // SAFETY: `frame` and `sll` are live for the call, and the lengths passed are theirs.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const sll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        crate::cvt_size(n)
    }
}

impl AsRawFd for PacketSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// A [`PacketSocket`] registered with the tokio reactor.
#[derive(Debug)]
pub struct AsyncPacketSocket(tokio::io::unix::AsyncFd<PacketSocket>);

/// The bridge's ARP socket, registered with the tokio reactor.
pub type AsyncArpSocket = AsyncPacketSocket;

impl AsyncPacketSocket {
    /// Registers `sock` (on a tokio runtime).
    pub fn new(sock: PacketSocket) -> io::Result<Self> {
        // SAFETY: `PacketSocket` owns its descriptor (an `OwnedFd`) for its whole lifetime, never
        // replaces it, and `as_raw_fd` always returns that same descriptor.
        let fd = unsafe { tokio::io::unix::AsyncFd::register(sock) }.map_err(io::Error::from)?;
        Ok(Self(fd))
    }

    /// Waits for a frame and reads it into `buf`.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.0
            .async_io(tokio::io::Interest::READABLE, |s| s.recv(buf))
            .await
    }

    /// Sends one whole Ethernet frame (without waiting; a full queue is an error).
    pub fn send(&self, frame: &[u8]) -> io::Result<usize> {
        self.0.get_ref().send(frame)
    }
}
