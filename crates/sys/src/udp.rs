//! Layer: OS. A UDP socket with `recvmmsg`/`sendmmsg` batches.
//!
//! Owns the data-path UDP socket and the caller-owned batch buffers. [`RecvBatch`] and
//! [`SendBatch`] allocate once, in `new`; a receive or send call only fills in `mmsghdr`/`iovec`
//! arrays on the stack (in chunks of [`BATCH`]) that point into those buffers, so the batches stay
//! plain `Send` data with no self-referential pointers.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use crate::cvt;

/// Datagrams per `recvmmsg`/`sendmmsg` call.
pub const BATCH: usize = 64;

/// Socket buffer size requested for both directions.
const SOCKET_BUFFER: libc::c_int = 4 << 20;

/// A UDP socket with `recvmmsg`/`sendmmsg` batches.
///
/// [`bind`](Self::bind) sets `SO_REUSEADDR`, 4 MiB `SO_RCVBUF`/`SO_SNDBUF` (the `*FORCE`
/// variants first, which work as root and go beyond `rmem_max`/`wmem_max`), and disables path
/// MTU discovery (`IP_PMTUDISC_DONT`: no DF bit, the kernel may fragment), like Weave's sleeve.
#[derive(Debug)]
pub struct BatchUdp {
    sock: Socket,
}

/// Outcome of [`BatchUdp::send_batch_report`].
#[derive(Debug, Default)]
pub struct SendReport {
    /// Datagrams the kernel accepted.
    pub sent: usize,
    /// Datagrams skipped because sending them failed (e.g. `EHOSTUNREACH` for their destination).
    pub failed: usize,
    /// The last per-datagram error seen, if any.
    pub last_error: Option<io::Error>,
}

/// Sets an `int` socket option through libc.
fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the option value points to a live c_int and the length passed is its size.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

impl BatchUdp {
    /// Creates a UDP socket bound to `addr` (close-on-exec), with the options described on the type.
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        sock.set_reuse_address(true)?;
        let fd = sock.as_raw_fd();
        if setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, SOCKET_BUFFER).is_err() {
            sock.set_recv_buffer_size(SOCKET_BUFFER as usize)?;
        }
        if setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, SOCKET_BUFFER).is_err() {
            sock.set_send_buffer_size(SOCKET_BUFFER as usize)?;
        }
        match addr {
            SocketAddr::V4(_) => setsockopt_int(
                fd,
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                libc::IP_PMTUDISC_DONT,
            )?,
            SocketAddr::V6(_) => {
                setsockopt_int(
                    fd,
                    libc::IPPROTO_IPV6,
                    libc::IPV6_MTU_DISCOVER,
                    libc::IPV6_PMTUDISC_DONT,
                )?;
                // For IPv4-mapped traffic on a dual-stack socket; not fatal if refused.
                let _ = setsockopt_int(
                    fd,
                    libc::IPPROTO_IP,
                    libc::IP_MTU_DISCOVER,
                    libc::IP_PMTUDISC_DONT,
                );
            }
        }
        sock.bind(&addr.into())?;
        Ok(Self { sock })
    }

    /// Another handle on the same socket (a `dup`ed, close-on-exec descriptor).
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            sock: self.sock.try_clone()?,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "socket address is not IP"))
    }

    /// `SO_RCVTIMEO`: a blocking receive gives up after `t` with `WouldBlock` (`None`: never).
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.sock.set_read_timeout(t)
    }

    /// `SO_SNDTIMEO`: a blocking send gives up after `t` with `WouldBlock` (`None`: never).
    pub fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.sock.set_write_timeout(t)
    }

    /// Switch `O_NONBLOCK` on or off.
    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        self.sock.set_nonblocking(on)
    }

    /// Sends one datagram.
    pub fn send_to(&self, buf: &[u8], addr: SocketAddr) -> io::Result<usize> {
        self.sock.send_to(buf, &addr.into())
    }

    /// Receives one datagram (slow path; the data path uses [`recv_batch`](Self::recv_batch)).
    pub fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let mut storage = empty_storage();
        let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: `buf` is valid for `buf.len()` bytes of writes; `storage`/`len` describe a
        // writable sockaddr_storage; all live across the call.
        let n = crate::cvt_size(unsafe {
            libc::recvfrom(
                self.sock.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&raw mut storage).cast(),
                &mut len,
            )
        })?;
        Ok((n, from_storage(&storage).unwrap_or(UNSPECIFIED)))
    }

    /// `recvmmsg` into `batch`: blocks until at least one datagram is there (or the read
    /// timeout passes: an error of kind `WouldBlock`), then takes whatever else is queued, up
    /// to the batch size, without blocking again. Returns the count, also kept in the batch.
    /// `EINTR` is retried.
    pub fn recv_batch(&self, batch: &mut RecvBatch) -> io::Result<usize> {
        batch.count = 0;
        let n = batch.lens.len();
        let fd = self.sock.as_raw_fd();
        while batch.count < n {
            let start = batch.count;
            let chunk = (n - start).min(BATCH);
            // SAFETY: mmsghdr and iovec are plain C structs; all-zero (null pointers, zero
            // lengths) is a valid value.
            let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
            // SAFETY: as above.
            let mut iovs: [libc::iovec; BATCH] = unsafe { mem::zeroed() };
            let size = batch.buf_size;
            let bufs = batch.bufs.as_mut_ptr();
            for j in 0..chunk {
                let slot = start + j;
                // SAFETY: slot < n and bufs holds n * size bytes, so the offset is in bounds.
                iovs[j].iov_base = unsafe { bufs.add(slot * size) }.cast();
                iovs[j].iov_len = size;
                let h = &mut hdrs[j].msg_hdr;
                h.msg_name = (&raw mut batch.addrs[slot]).cast();
                h.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                h.msg_iov = &raw mut iovs[j];
                h.msg_iovlen = 1;
            }
            // The first chunk waits for one datagram; later chunks only take what is queued.
            let flags = if start == 0 {
                libc::MSG_WAITFORONE
            } else {
                libc::MSG_DONTWAIT
            };
            // SAFETY: hdrs[..chunk] each point at one iovec covering a distinct, in-bounds region
            // of batch.bufs and at a distinct sockaddr_storage of batch.addrs; both are
            // exclusively borrowed (&mut batch) and outlive the call. A null timeout is allowed.
            let r = unsafe {
                libc::recvmmsg(
                    fd,
                    hdrs.as_mut_ptr(),
                    chunk as libc::c_uint,
                    flags,
                    std::ptr::null_mut(),
                )
            };
            if r < 0 {
                let err = io::Error::last_os_error();
                match err.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock if start > 0 => break,
                    _ => return Err(err),
                }
            }
            // r >= 0 and r <= chunk.
            let got = r as usize;
            for (j, h) in hdrs.iter().enumerate().take(got) {
                let slot = start + j;
                batch.lens[slot] = (h.msg_len as usize).min(size);
                batch.truncated[slot] = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            }
            batch.count += got;
            if got < chunk {
                break;
            }
        }
        Ok(batch.count)
    }

    /// `sendmmsg` the whole batch (in chunks of [`BATCH`], looping over partial sends); returns
    /// the datagrams sent. A datagram whose send fails for a reason tied to it (its destination
    /// unreachable or refused, too big, no buffer space, ...) is skipped and counted, and the
    /// rest still goes out; see [`send_batch_report`](Self::send_batch_report) for the counts.
    /// Errors about the socket itself are returned. On a non-blocking socket (or after a write
    /// timeout) a full send queue stops the batch early: the result is then below `batch.len()`,
    /// or `WouldBlock` if nothing went out.
    pub fn send_batch(&self, batch: &SendBatch) -> io::Result<usize> {
        self.send_batch_report(batch).map(|r| r.sent)
    }

    /// [`send_batch`](Self::send_batch), also reporting the skipped datagrams.
    pub fn send_batch_report(&self, batch: &SendBatch) -> io::Result<SendReport> {
        let mut report = SendReport::default();
        let fd = self.sock.as_raw_fd();
        let mut next = 0;
        while next < batch.count {
            let chunk = (batch.count - next).min(BATCH);
            // SAFETY: mmsghdr and iovec are plain C structs; all-zero is a valid value.
            let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
            // SAFETY: as above.
            let mut iovs: [libc::iovec; BATCH] = unsafe { mem::zeroed() };
            for j in 0..chunk {
                let slot = next + j;
                let data = batch.datagram(slot);
                // sendmmsg never writes through iov_base or msg_name; the *mut casts only
                // satisfy the C struct types.
                iovs[j].iov_base = data.as_ptr().cast_mut().cast();
                iovs[j].iov_len = data.len();
                let h = &mut hdrs[j].msg_hdr;
                h.msg_name = (&raw const batch.dests[slot]).cast_mut().cast();
                h.msg_namelen = batch.dest_lens[slot];
                h.msg_iov = &raw mut iovs[j];
                h.msg_iovlen = 1;
            }
            // SAFETY: hdrs[..chunk] point at iovecs covering in-bounds slices of batch.bufs and
            // at initialised socket addresses in batch.dests, all borrowed for the whole call;
            // the kernel only reads them (and writes msg_len into hdrs, which we own).
            let r = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), chunk as libc::c_uint, 0) };
            if r > 0 {
                // 0 < r <= chunk.
                report.sent += r as usize;
                next += r as usize;
                continue;
            }
            let err = if r == 0 {
                io::Error::new(io::ErrorKind::WriteZero, "sendmmsg sent nothing")
            } else {
                io::Error::last_os_error()
            };
            match send_error_class(&err) {
                SendErrorClass::Retry => {}
                SendErrorClass::Stop => {
                    if report.sent == 0 && report.failed == 0 {
                        return Err(err);
                    }
                    break;
                }
                SendErrorClass::Fatal => return Err(err),
                SendErrorClass::SkipDatagram => {
                    tracing::trace!(dest = ?batch.dest(next), error = %err, "udp send failed");
                    report.failed += 1;
                    report.last_error = Some(err);
                    next += 1;
                }
            }
        }
        Ok(report)
    }
}

/// What to do after `sendmmsg` failed on the first datagram of a chunk.
#[derive(Debug, PartialEq, Eq)]
enum SendErrorClass {
    /// `EINTR`: try again.
    Retry,
    /// Send queue full (`EAGAIN`): stop the batch here.
    Stop,
    /// The socket itself is unusable: report the error.
    Fatal,
    /// Anything tied to this datagram: skip it, count it, and go on.
    SkipDatagram,
}

fn send_error_class(err: &io::Error) -> SendErrorClass {
    match err.raw_os_error() {
        Some(libc::EINTR) => SendErrorClass::Retry,
        Some(libc::EAGAIN) => SendErrorClass::Stop,
        Some(libc::EBADF | libc::ENOTSOCK | libc::EFAULT | libc::EOPNOTSUPP) => {
            SendErrorClass::Fatal
        }
        Some(_) => SendErrorClass::SkipDatagram,
        None => SendErrorClass::Fatal,
    }
}

impl AsFd for BatchUdp {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl AsRawFd for BatchUdp {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

/// The address reported for a slot whose source could not be decoded.
const UNSPECIFIED: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));

fn empty_storage() -> libc::sockaddr_storage {
    // SAFETY: sockaddr_storage is plain integer data; all-zero (AF_UNSPEC) is a valid value.
    unsafe { mem::zeroed() }
}

/// Encodes `addr` into `storage`; returns the length to pass to the kernel.
fn to_storage(addr: SocketAddr, storage: &mut libc::sockaddr_storage) -> libc::socklen_t {
    *storage = empty_storage();
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned at least as strictly as
            // sockaddr_in, so writing one at its start is in bounds and aligned.
            unsafe { (&raw mut *storage).cast::<libc::sockaddr_in>().write(sin) };
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo().to_be(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { (&raw mut *storage).cast::<libc::sockaddr_in6>().write(sin6) };
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// Decodes an `AF_INET`/`AF_INET6` address; `None` for any other family.
fn from_storage(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, and sockaddr_storage is
            // large and aligned enough to be read as one.
            let sin = unsafe { (&raw const *storage).cast::<libc::sockaddr_in>().read() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { (&raw const *storage).cast::<libc::sockaddr_in6>().read() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                u32::from_be(sin6.sin6_flowinfo),
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Caller-owned receive buffers: `n` buffers of `buf_size` bytes, plus per-slot length, source
/// address and truncation flag. Allocated once; [`BatchUdp::recv_batch`] does not allocate.
#[derive(Clone)]
pub struct RecvBatch {
    buf_size: usize,
    bufs: Vec<u8>,
    addrs: Vec<libc::sockaddr_storage>,
    lens: Vec<usize>,
    truncated: Vec<bool>,
    count: usize,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("slots", &self.lens.len())
            .field("buf_size", &self.buf_size)
            .field("count", &self.count)
            .finish()
    }
}

impl RecvBatch {
    /// `n` slots of `buf_size` bytes each (`n` and `buf_size` at least 1).
    pub fn new(n: usize, buf_size: usize) -> Self {
        let n = n.max(1);
        let buf_size = buf_size.max(1);
        Self {
            buf_size,
            bufs: vec![0; n * buf_size],
            addrs: vec![empty_storage(); n],
            lens: vec![0; n],
            truncated: vec![false; n],
            count: 0,
        }
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.lens.len()
    }

    /// Datagrams filled by the last [`BatchUdp::recv_batch`].
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the last receive filled nothing.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The bytes of datagram `i` (cut to the slot size if it was [`truncated`](Self::truncated)).
    ///
    /// # Panics
    /// If `i` is not below [`capacity`](Self::capacity).
    pub fn datagram(&self, i: usize) -> &[u8] {
        let start = i * self.buf_size;
        &self.bufs[start..start + self.lens[i]]
    }

    /// Mutable bytes of datagram `i`, e.g. for decrypting in place.
    ///
    /// # Panics
    /// If `i` is not below [`capacity`](Self::capacity).
    pub fn datagram_mut(&mut self, i: usize) -> &mut [u8] {
        let start = i * self.buf_size;
        &mut self.bufs[start..start + self.lens[i]]
    }

    /// Source address of datagram `i` (`0.0.0.0:0` if it was not an IP address).
    ///
    /// # Panics
    /// If `i` is not below [`capacity`](Self::capacity).
    pub fn source(&self, i: usize) -> SocketAddr {
        from_storage(&self.addrs[i]).unwrap_or(UNSPECIFIED)
    }

    /// Whether datagram `i` was longer than the slot and got cut.
    ///
    /// # Panics
    /// If `i` is not below [`capacity`](Self::capacity).
    pub fn truncated(&self, i: usize) -> bool {
        self.truncated[i]
    }
}

/// Caller-owned send buffers: `n` slots of `buf_size` bytes with a destination each.
/// [`push_with`](Self::push_with) hands a closure a whole slot buffer; the closure writes the
/// datagram and returns its length.
#[derive(Clone)]
pub struct SendBatch {
    buf_size: usize,
    bufs: Vec<u8>,
    lens: Vec<usize>,
    dests: Vec<libc::sockaddr_storage>,
    dest_lens: Vec<libc::socklen_t>,
    count: usize,
}

impl std::fmt::Debug for SendBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendBatch")
            .field("slots", &self.lens.len())
            .field("buf_size", &self.buf_size)
            .field("count", &self.count)
            .finish()
    }
}

impl SendBatch {
    /// `n` slots of `buf_size` bytes each (`n` and `buf_size` at least 1).
    pub fn new(n: usize, buf_size: usize) -> Self {
        let n = n.max(1);
        let buf_size = buf_size.max(1);
        Self {
            buf_size,
            bufs: vec![0; n * buf_size],
            lens: vec![0; n],
            dests: vec![empty_storage(); n],
            dest_lens: vec![0; n],
            count: 0,
        }
    }

    /// Forget all queued datagrams (keeps the buffers).
    pub fn clear(&mut self) {
        self.count = 0;
    }

    /// Queued datagrams.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether every slot is used.
    pub fn is_full(&self) -> bool {
        self.count == self.lens.len()
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.lens.len()
    }

    /// Size of each slot buffer.
    pub fn buf_size(&self) -> usize {
        self.buf_size
    }

    /// Queue a datagram for `dest`: `f` gets the whole slot buffer (`buf_size` bytes, holding
    /// stale data) and returns how many bytes it wrote (values above `buf_size` are clamped).
    /// Returns `false`, without calling `f`, when the batch is full.
    pub fn push_with(&mut self, dest: SocketAddr, f: impl FnOnce(&mut [u8]) -> usize) -> bool {
        if self.is_full() {
            return false;
        }
        let i = self.count;
        let start = i * self.buf_size;
        let len = f(&mut self.bufs[start..start + self.buf_size]).min(self.buf_size);
        self.lens[i] = len;
        self.dest_lens[i] = to_storage(dest, &mut self.dests[i]);
        self.count += 1;
        true
    }

    /// Queue a copy of `data` for `dest`; `false` when full or `data` is larger than a slot.
    pub fn push(&mut self, dest: SocketAddr, data: &[u8]) -> bool {
        if data.len() > self.buf_size {
            return false;
        }
        self.push_with(dest, |buf| {
            buf[..data.len()].copy_from_slice(data);
            data.len()
        })
    }

    /// The bytes of queued datagram `i`.
    ///
    /// # Panics
    /// If `i` is not below [`capacity`](Self::capacity).
    pub fn datagram(&self, i: usize) -> &[u8] {
        let start = i * self.buf_size;
        &self.bufs[start..start + self.lens[i]]
    }

    /// The destination of queued datagram `i`.
    ///
    /// # Panics
    /// If `i` is not below [`capacity`](Self::capacity).
    pub fn dest(&self, i: usize) -> SocketAddr {
        from_storage(&self.dests[i]).unwrap_or(UNSPECIFIED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_roundtrip() {
        for a in [
            "192.0.2.7:6784".parse::<SocketAddr>().unwrap(),
            "0.0.0.0:0".parse().unwrap(),
            "[2001:db8::1]:6783".parse().unwrap(),
            SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 9, 0x12345, 3)),
        ] {
            let mut s = empty_storage();
            let len = to_storage(a, &mut s);
            assert!(len as usize <= size_of::<libc::sockaddr_storage>());
            assert_eq!(from_storage(&s), Some(a));
        }
        assert_eq!(from_storage(&empty_storage()), None);
    }

    #[test]
    fn send_batch_slots() {
        let mut b = SendBatch::new(2, 4);
        assert!(b.is_empty() && !b.is_full());
        let d: SocketAddr = "192.0.2.1:1".parse().unwrap();
        assert!(b.push_with(d, |buf| {
            assert_eq!(buf.len(), 4);
            buf[..2].copy_from_slice(b"hi");
            2
        }));
        assert!(b.push_with(d, |_| 99)); // clamped
        assert!(b.is_full());
        assert!(!b.push_with(d, |_| unreachable!()));
        assert_eq!(b.datagram(0), b"hi");
        assert_eq!(b.datagram(1).len(), 4);
        assert_eq!(b.dest(1), d);
        b.clear();
        assert!(b.is_empty());
        assert!(!b.push(d, b"toolong"));
        assert!(b.push(d, b"ok"));
        assert_eq!(b.datagram(0), b"ok");
    }

    #[test]
    fn error_classes() {
        let e = |n| io::Error::from_raw_os_error(n);
        assert_eq!(send_error_class(&e(libc::EINTR)), SendErrorClass::Retry);
        assert_eq!(send_error_class(&e(libc::EAGAIN)), SendErrorClass::Stop);
        assert_eq!(send_error_class(&e(libc::EBADF)), SendErrorClass::Fatal);
        for n in [
            libc::ECONNREFUSED,
            libc::EHOSTUNREACH,
            libc::ENETUNREACH,
            libc::EMSGSIZE,
        ] {
            assert_eq!(send_error_class(&e(n)), SendErrorClass::SkipDatagram);
        }
    }

    /// Loopback in the current namespace needs no privileges.
    #[test]
    fn loopback_batch_roundtrip() {
        let Ok(rx) = BatchUdp::bind("127.0.0.1:0".parse().unwrap()) else {
            eprintln!("no IPv4 loopback here; skipping");
            return;
        };
        let tx = BatchUdp::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let to = rx.local_addr().unwrap();
        let mut sb = SendBatch::new(100, 64);
        for i in 0..100u8 {
            assert!(sb.push(to, &[i; 10]));
        }
        assert_eq!(tx.send_batch(&sb).unwrap(), 100);
        let mut rb = RecvBatch::new(80, 8);
        let mut seen = Vec::new();
        while seen.len() < 100 {
            let n = tx_recv(&rx, &mut rb);
            for i in 0..n {
                assert!(rb.truncated(i));
                assert_eq!(rb.datagram(i).len(), 8);
                assert_eq!(rb.source(i), tx.local_addr().unwrap());
                seen.push(rb.datagram(i)[0]);
            }
        }
        assert_eq!(seen, (0..100u8).collect::<Vec<_>>());
        rx.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let err = rx.recv_batch(&mut rb).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }

    fn tx_recv(rx: &BatchUdp, rb: &mut RecvBatch) -> usize {
        let n = rx.recv_batch(rb).unwrap();
        assert!(n > 0);
        assert_eq!(rb.len(), n);
        n
    }
}
