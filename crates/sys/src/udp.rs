//! Layer: OS. A UDP socket with `recvmmsg`/`sendmmsg` batches, UDP GSO and UDP GRO.
//!
//! Owns the data-path UDP socket and the caller-owned batch buffers. [`RecvBatch`],
//! [`SendBatch`] and [`GsoBatch`] allocate once, in `new`; a receive or send call only fills in
//! `mmsghdr`/`iovec` arrays on the stack (in chunks of [`BATCH`]) that point into those
//! buffers, so the batches stay plain `Send` data with no self-referential pointers.
//!
//! Segmentation offload (GSO, Linux ≥ 4.18): [`BatchUdp::send_gso`] hands the kernel one
//! buffer with a `UDP_SEGMENT` control message and the kernel cuts it into equal datagrams
//! (the last may be shorter). Receive offload (GRO, Linux ≥ 5.0): after
//! [`BatchUdp::set_gro`]`(true)` one [`RecvBatch`] slot may hold several datagrams of one
//! sender glued together; [`RecvBatch::stride`] and [`RecvBatch::segments`] take them apart.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use crate::cvt;

/// Datagrams per `recvmmsg`/`sendmmsg` call.
pub const BATCH: usize = 64;

/// Socket buffer size requested for both directions.
const SOCKET_BUFFER: libc::c_int = 4 << 20;

/// Segments per GSO send that every GSO-capable kernel accepts (`UDP_MAX_SEGMENTS` was 64
/// until Linux 6.x raised it to 128; 6.18 accepts 128 and refuses 129 with `EINVAL`).
/// [`BatchUdp::max_gso_segments`] reports this value when `UDP_SEGMENT` is supported.
pub const GSO_MAX_SEGMENTS: usize = 64;

/// Largest GSO buffer over IPv4: the whole run must fit one 64 KiB IP packet,
/// 65535 - 20 (IP header) - 8 (UDP header). One byte more fails with `EMSGSIZE`.
pub const GSO_MAX_BYTES_V4: usize = 65_507;

/// Largest GSO buffer over IPv6: 65535 (payload length) - 8 (UDP header).
pub const GSO_MAX_BYTES_V6: usize = 65_527;

/// The receive slot size to use with GRO on: the kernel coalesces at most 64 datagrams and
/// 64 KiB into one read; a shorter slot truncates the run ([`RecvBatch::truncated`]).
pub const GRO_BUF_SIZE: usize = 65_536;

/// Control-message buffer per receive slot (a `UDP_GRO` message needs 20 bytes; room is left
/// for a few more should other options be enabled on the socket).
const RECV_CMSG_LEN: usize = 64;

/// A control-message buffer aligned for `cmsghdr`.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct CmsgBuf([u8; RECV_CMSG_LEN]);

impl CmsgBuf {
    const ZERO: Self = Self([0; RECV_CMSG_LEN]);
}

// SAFETY: CMSG_SPACE is pure arithmetic on its argument (no pointers involved).
const GSO_CMSG_SPACE: usize =
    unsafe { libc::CMSG_SPACE(size_of::<u16>() as libc::c_uint) } as usize;
// SAFETY: as above.
const GSO_CMSG_LEN: usize = unsafe { libc::CMSG_LEN(size_of::<u16>() as libc::c_uint) } as usize;
const _: () = assert!(GSO_CMSG_SPACE <= RECV_CMSG_LEN);

/// A UDP socket with `recvmmsg`/`sendmmsg` batches.
///
/// [`bind`](Self::bind) sets `SO_REUSEADDR`, 4 MiB `SO_RCVBUF`/`SO_SNDBUF` (the `*FORCE`
/// variants first, which work as root and go beyond `rmem_max`/`wmem_max`), and disables path
/// MTU discovery (`IP_PMTUDISC_DONT`: no DF bit, the kernel may fragment), like Weave's sleeve.
///
/// It also probes `UDP_SEGMENT` (see [`max_gso_segments`](Self::max_gso_segments)); GRO stays
/// off until [`set_gro`](Self::set_gro).
#[derive(Debug)]
pub struct BatchUdp {
    sock: Socket,
    /// Segments allowed per GSO send; 1 = no GSO. Shared by `try_clone`d handles, since they
    /// are the same socket.
    gso_segments: Arc<AtomicUsize>,
    /// GRO was ruled out ([`disable_gro`](Self::disable_gro)): `set_gro(true)` leaves it off.
    gro_disabled: Arc<AtomicBool>,
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

/// Whether the kernel knows the `UDP_SEGMENT` option: reading it (the socket's default
/// segment size, 0) succeeds from Linux 4.18 on, and changes nothing.
fn gso_supported(fd: RawFd) -> bool {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the option buffer points to a live c_int and `len` holds its size; the kernel
    // writes at most `len` bytes and updates `len`.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    r == 0
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

/// How a [`BatchUdp::bind_group`] shares received datagrams among its sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Steering {
    /// Offset in the UDP payload of the byte that picks one of the `n` ordinary sockets
    /// (`payload[stream_at] % n`).
    pub stream_at: u32,
    /// An express socket after the `n` ordinary ones: a datagram whose byte at offset `.0` has
    /// a bit of `.1` set goes to it, whatever its stream byte.
    pub express: Option<(u32, u8)>,
}

/// Attach to the reuseport group of `fd` the classic BPF program that picks a socket as
/// `steer` says for `n` ordinary sockets: `payload[flags] & bit ? n : payload[stream] % n`.
fn attach_steering(fd: RawFd, steer: Steering, n: u32) -> io::Result<()> {
    // Classic BPF opcodes (linux/bpf_common.h): BPF_LD (0) | BPF_B | BPF_ABS,
    // BPF_JMP | BPF_JSET | BPF_K, BPF_ALU | BPF_MOD | BPF_K (0), BPF_RET | BPF_A / BPF_K.
    // A load beyond the payload ends the program with 0: socket 0.
    const LD_B_ABS: u16 = 0x10 | 0x20;
    const JSET_K: u16 = 0x05 | 0x40;
    const ALU_MOD_K: u16 = 0x04 | 0x90;
    const RET_A: u16 = 0x06 | 0x10;
    const RET_K: u16 = 0x06;
    let insn = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let mut program = Vec::with_capacity(6);
    if let Some((flags_at, bit)) = steer.express {
        program.push(insn(LD_B_ABS, 0, 0, flags_at));
        // Bit set: the next instruction (return n); clear: skip it.
        program.push(insn(JSET_K, 0, 1, u32::from(bit)));
        program.push(insn(RET_K, 0, 0, n));
    }
    program.push(insn(LD_B_ABS, 0, 0, steer.stream_at));
    program.push(insn(ALU_MOD_K, 0, 0, n));
    program.push(insn(RET_A, 0, 0, 0));
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: `fprog` points to `program`, which lives until the call returns (the kernel
    // copies the program), and the length passed is `fprog`'s size.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&raw const fprog).cast(),
            size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    })
    .map(drop)
}

impl BatchUdp {
    /// Creates a UDP socket bound to `addr` (close-on-exec), with the options described on the type.
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        Self::bind_with(addr, false)
    }

    /// `n` sockets bound to the same `addr` (`SO_REUSEPORT`), each as [`bind`](Self::bind)
    /// makes it, for `n` threads, and with `steer.express` one more, the express socket (index
    /// `n`). The kernel gives a received datagram to socket `payload[steer.stream_at] % n`, or
    /// to the express socket if the express byte has the express bit (a classic BPF program,
    /// `SO_ATTACH_REUSEPORT_CBPF`, reading bytes of the UDP payload; a payload too short for
    /// them goes to socket 0), so the sender decides which thread receives. With port 0 the
    /// first socket picks the port and the others join it. One socket and no express: an
    /// ordinary bind.
    pub fn bind_group(addr: SocketAddr, n: usize, steer: Steering) -> io::Result<Vec<Self>> {
        let total = n.max(1) + usize::from(steer.express.is_some());
        if total == 1 {
            return Ok(vec![Self::bind(addr)?]);
        }
        let n_u32 =
            u32::try_from(n.max(1)).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let first = Self::bind_with(addr, true)?;
        let addr = first.local_addr()?;
        let mut group = vec![first];
        for _ in 1..total {
            group.push(Self::bind_with(addr, true)?);
        }
        attach_steering(group[0].sock.as_raw_fd(), steer, n_u32)?;
        Ok(group)
    }

    fn bind_with(addr: SocketAddr, reuse_port: bool) -> io::Result<Self> {
        let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        sock.set_reuse_address(true)?;
        if reuse_port {
            setsockopt_int(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
        }
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
        let gso = if gso_supported(fd) {
            GSO_MAX_SEGMENTS
        } else {
            1
        };
        Ok(Self {
            sock,
            gso_segments: Arc::new(AtomicUsize::new(gso)),
            gro_disabled: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Another handle on the same socket (a `dup`ed, close-on-exec descriptor). It shares the
    /// GSO state: a send that disables GSO disables it for both.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            sock: self.sock.try_clone()?,
            gso_segments: Arc::clone(&self.gso_segments),
            gro_disabled: Arc::clone(&self.gro_disabled),
        })
    }

    /// Never use UDP GSO on this socket (and its clones): every [`send_gso`](Self::send_gso)
    /// goes out as single datagrams with `sendmmsg`, as on a kernel without `UDP_SEGMENT`.
    pub fn disable_gso(&self) {
        self.gso_segments.store(1, Ordering::Relaxed);
    }

    /// Never use UDP GRO on this socket (and its clones): [`set_gro`](Self::set_gro) then
    /// switches it off and reports `Ok(false)`, as on a kernel without `UDP_GRO`.
    pub fn disable_gro(&self) {
        self.gro_disabled.store(true, Ordering::Relaxed);
    }

    /// How many datagrams one [`send_gso`](Self::send_gso) system call may carry:
    /// [`GSO_MAX_SEGMENTS`] if the kernel knows `UDP_SEGMENT` (probed at bind with a
    /// `getsockopt`, which changes nothing), else 1. Drops to 1 for good after the kernel
    /// refused a GSO send with `EIO` or `EINVAL` (e.g. the route's device cannot checksum).
    pub fn max_gso_segments(&self) -> usize {
        self.gso_segments.load(Ordering::Relaxed)
    }

    /// Switch UDP receive offload (`UDP_GRO`) on or off. With it on, the kernel may deliver
    /// several datagrams from one sender, all of one size but the last, in one read: size the
    /// [`RecvBatch`] slots at [`GRO_BUF_SIZE`] and split them with [`RecvBatch::segments`].
    /// Returns whether GRO is now on: `Ok(false)` if the kernel does not support it
    /// (`ENOPROTOOPT`) or it was ruled out with [`disable_gro`](Self::disable_gro).
    pub fn set_gro(&self, on: bool) -> io::Result<bool> {
        let on = on && !self.gro_disabled.load(Ordering::Relaxed);
        match setsockopt_int(
            self.sock.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_GRO,
            libc::c_int::from(on),
        ) {
            Ok(()) => Ok(on),
            Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Sends `buf` to `dest` as datagrams of `segment_size` bytes (the last may be shorter),
    /// with as few system calls as possible; returns the bytes sent (all of `buf` unless a
    /// non-blocking socket's queue filled up part-way).
    ///
    /// Each `sendmsg` carries a `UDP_SEGMENT` control message and up to
    /// [`max_gso_segments`](Self::max_gso_segments) segments, and at most [`GSO_MAX_BYTES_V4`]
    /// (IPv4) or [`GSO_MAX_BYTES_V6`] (IPv6) bytes; a longer `buf` takes several calls.
    /// When `segment_size` plus the IP and UDP headers exceeds the route's device MTU, the
    /// kernel refuses the GSO send (`EMSGSIZE` on Linux 6.x): those datagrams then go out one
    /// by one (fragmented, as the socket allows) and GSO stays on. When the kernel refuses GSO
    /// with `EIO` or `EINVAL` (no checksum offload on the route, `SO_NO_CHECK`, too many
    /// segments), GSO is disabled for this socket (as quinn-udp does) and the datagrams go out
    /// one by one with `sendmmsg`, now and from then on.
    ///
    /// Errors: `InvalidInput` if `segment_size` is 0 or above 65535; `WouldBlock` if nothing
    /// could be queued; otherwise the error of the first failing call (datagrams before it
    /// were sent). `EINTR` is retried.
    pub fn send_gso(&self, dest: SocketAddr, buf: &[u8], segment_size: usize) -> io::Result<usize> {
        if segment_size == 0 || segment_size > usize::from(u16::MAX) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("GSO segment size {segment_size} not in 1..=65535"),
            ));
        }
        let mut storage = empty_storage();
        let addr_len = to_storage(dest, &mut storage);
        let max_bytes = match dest {
            SocketAddr::V4(_) => GSO_MAX_BYTES_V4,
            SocketAddr::V6(_) => GSO_MAX_BYTES_V6,
        };
        let mut sent = 0;
        loop {
            let rest = &buf[sent..];
            let per_call = self.max_gso_segments().min(max_bytes / segment_size);
            let result = if rest.len() <= segment_size {
                // One datagram (possibly empty): no need for a control message.
                self.sendmsg_one(&storage, addr_len, rest, None)
            } else if per_call <= 1 {
                // No GSO (or segments too big to pair up): one datagram per mmsghdr.
                return match self.send_each(&storage, addr_len, rest, segment_size) {
                    Ok(n) => Ok(sent + n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock && sent > 0 => Ok(sent),
                    Err(e) => Err(e),
                };
            } else {
                let chunk = rest.len().min(per_call * segment_size);
                // segment_size <= u16::MAX was checked above.
                let seg = segment_size as u16;
                self.sendmsg_one(&storage, addr_len, &rest[..chunk], Some(seg))
            };
            match result {
                Ok(n) => {
                    // A UDP sendmsg takes all its bytes or fails.
                    sent += n;
                    if sent >= buf.len() {
                        return Ok(sent);
                    }
                }
                Err(e) => match e.raw_os_error() {
                    Some(libc::EINTR) => {}
                    Some(libc::EMSGSIZE) if rest.len() > segment_size && per_call > 1 => {
                        // The segments do not fit the route's MTU (Linux 6.x says EMSGSIZE
                        // here; older kernels EINVAL). GSO itself works: send this call's
                        // datagrams one by one (they may be fragmented) and go on with GSO.
                        let chunk = rest.len().min(per_call * segment_size);
                        match self.send_each(&storage, addr_len, &rest[..chunk], segment_size) {
                            Ok(n) if n == chunk => sent += n,
                            Ok(n) => return Ok(sent + n),
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock && sent > 0 => {
                                return Ok(sent);
                            }
                            Err(e) => return Err(e),
                        }
                        if sent >= buf.len() {
                            return Ok(sent);
                        }
                    }
                    Some(libc::EIO | libc::EINVAL) if rest.len() > segment_size => {
                        tracing::debug!(%dest, segment_size, error = %e,
                            "UDP GSO send refused; disabling GSO on this socket");
                        self.gso_segments.store(1, Ordering::Relaxed);
                    }
                    _ if e.kind() == io::ErrorKind::WouldBlock && sent > 0 => return Ok(sent),
                    _ => return Err(e),
                },
            }
        }
    }

    /// One `sendmsg` of `data` to an encoded address, with a `UDP_SEGMENT` message if `seg`.
    fn sendmsg_one(
        &self,
        dest: &libc::sockaddr_storage,
        dest_len: libc::socklen_t,
        data: &[u8],
        seg: Option<u16>,
    ) -> io::Result<usize> {
        // sendmsg never writes through iov_base or msg_name; the *mut casts only satisfy the C
        // struct types.
        let mut iov = libc::iovec {
            iov_base: data.as_ptr().cast_mut().cast(),
            iov_len: data.len(),
        };
        let mut ctrl = CmsgBuf::ZERO;
        // SAFETY: msghdr is a plain C struct; all-zero (null pointers, zero lengths) is valid.
        let mut msg: libc::msghdr = unsafe { mem::zeroed() };
        msg.msg_name = (&raw const *dest).cast_mut().cast();
        msg.msg_namelen = dest_len;
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        if let Some(seg) = seg {
            msg.msg_control = ctrl.0.as_mut_ptr().cast();
            msg.msg_controllen = GSO_CMSG_SPACE as _;
            // SAFETY: msg_control points at `ctrl`, which is aligned for cmsghdr and
            // GSO_CMSG_SPACE (<= its size) bytes long, so CMSG_FIRSTHDR returns a non-null
            // pointer to its start, and the header plus CMSG_DATA's u16 lie within `ctrl`.
            // The data pointer may be unaligned for u16, hence write_unaligned.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
                (*cmsg).cmsg_level = libc::SOL_UDP;
                (*cmsg).cmsg_type = libc::UDP_SEGMENT;
                (*cmsg).cmsg_len = GSO_CMSG_LEN as _;
                libc::CMSG_DATA(cmsg).cast::<u16>().write_unaligned(seg);
            }
        }
        // SAFETY: `msg` points at one iovec over `data`, at `dest` and (maybe) at `ctrl`, all
        // alive for the whole call; the kernel only reads them.
        crate::cvt_size(unsafe { libc::sendmsg(self.sock.as_raw_fd(), &raw const msg, 0) })
    }

    /// Sends `data` cut into `seg`-byte datagrams without GSO, `sendmmsg` in chunks of
    /// [`BATCH`]; returns the bytes sent (less than `data.len()` only after `EAGAIN`).
    fn send_each(
        &self,
        dest: &libc::sockaddr_storage,
        dest_len: libc::socklen_t,
        data: &[u8],
        seg: usize,
    ) -> io::Result<usize> {
        let fd = self.sock.as_raw_fd();
        let mut sent = 0;
        while sent < data.len() {
            // SAFETY: mmsghdr and iovec are plain C structs; all-zero is a valid value.
            let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
            // SAFETY: as above.
            let mut iovs: [libc::iovec; BATCH] = unsafe { mem::zeroed() };
            let mut count = 0;
            let mut ends = [0usize; BATCH];
            let mut at = sent;
            for (h, iov) in hdrs.iter_mut().zip(iovs.iter_mut()) {
                if at >= data.len() {
                    break;
                }
                let end = (at + seg).min(data.len());
                let piece = &data[at..end];
                // sendmmsg never writes through iov_base or msg_name.
                iov.iov_base = piece.as_ptr().cast_mut().cast();
                iov.iov_len = piece.len();
                h.msg_hdr.msg_name = (&raw const *dest).cast_mut().cast();
                h.msg_hdr.msg_namelen = dest_len;
                h.msg_hdr.msg_iov = &raw mut *iov;
                h.msg_hdr.msg_iovlen = 1;
                ends[count] = end;
                count += 1;
                at = end;
            }
            // SAFETY: hdrs[..count] point at iovecs over in-bounds pieces of `data` and at
            // `dest`, all alive for the call; the kernel only reads them and writes msg_len
            // into hdrs, which we own.
            let r = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), count as libc::c_uint, 0) };
            if r > 0 {
                // 0 < r <= count.
                sent = ends[r as usize - 1];
                continue;
            }
            let err = if r == 0 {
                io::Error::new(io::ErrorKind::WriteZero, "sendmmsg sent nothing")
            } else {
                io::Error::last_os_error()
            };
            match err.raw_os_error() {
                Some(libc::EINTR) => {}
                Some(libc::EAGAIN) if sent > 0 => return Ok(sent),
                _ => return Err(err),
            }
        }
        Ok(sent)
    }

    /// Sends the run held by `batch` with [`send_gso`](Self::send_gso) and then
    /// [`clear`](GsoBatch::clear)s it (also on error: the run is dropped, as a lossy data path
    /// wants). Returns the datagrams sent; 0 for an empty batch.
    pub fn send_gso_batch(&self, batch: &mut GsoBatch) -> io::Result<usize> {
        let Some(dest) = batch.dest() else {
            batch.clear();
            return Ok(0);
        };
        let result = self.send_gso(dest, batch.data(), batch.segment_size());
        let segments = batch.segments();
        let seg = batch.segment_size().max(1);
        let data_len = batch.data().len();
        batch.clear();
        let bytes = result?;
        Ok(if bytes >= data_len {
            segments
        } else {
            bytes / seg
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
    /// to the batch size, without blocking again. Returns the count of filled slots, also kept
    /// in the batch. `EINTR` is retried.
    ///
    /// With GRO on ([`set_gro`](Self::set_gro)) a slot may hold several datagrams; the
    /// `UDP_GRO` control message received with it sets [`RecvBatch::stride`].
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
                h.msg_control = batch.ctrl[slot].0.as_mut_ptr().cast();
                h.msg_controllen = RECV_CMSG_LEN as _;
            }
            // The first chunk waits for one datagram; later chunks only take what is queued.
            let flags = if start == 0 {
                libc::MSG_WAITFORONE
            } else {
                libc::MSG_DONTWAIT
            };
            // SAFETY: hdrs[..chunk] each point at one iovec covering a distinct, in-bounds region
            // of batch.bufs, at a distinct sockaddr_storage of batch.addrs and at a distinct
            // RECV_CMSG_LEN-byte control buffer of batch.ctrl; all are exclusively borrowed
            // (&mut batch) and outlive the call. A null timeout is allowed.
            let r = unsafe {
                libc::recvmmsg(
                    fd,
                    hdrs.as_mut_ptr(),
                    chunk as libc::c_uint,
                    // glibc declares the flags `int`, musl `unsigned int`; both hold these bits.
                    flags as _,
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
                let len = (h.msg_len as usize).min(size);
                batch.lens[slot] = len;
                batch.truncated[slot] = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
                let gro = gro_segment_size(&h.msg_hdr);
                batch.strides[slot] = match gro {
                    Some(s) if s > 0 && s < len => s,
                    _ => len,
                };
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
        let mut next = 0;
        match self.send_slots(batch, &mut next, &mut report) {
            Ok(()) => Ok(report),
            Err(e)
                if e.raw_os_error() == Some(libc::EAGAIN)
                    && (report.sent > 0 || report.failed > 0) =>
            {
                Ok(report)
            }
            Err(e) => Err(e),
        }
    }

    /// Sends all of `batch` on a non-blocking socket and [`clear`](SendBatch::clear)s it. When
    /// the send queue is full, waits (`poll` for `POLLOUT`) up to `wait` for room and goes on,
    /// as often as the room comes back; what is left when a whole wait brought no room is
    /// dropped and counted in [`Flushed::dropped_full`]. Datagrams whose send fails (their
    /// destination unreachable, ...), and the rest of the batch after an error about the socket
    /// itself, are counted in [`Flushed::failed`].
    pub fn flush_batch(&self, batch: &mut SendBatch, wait: Duration) -> Flushed {
        let mut report = SendReport::default();
        let mut next = 0;
        let mut out = Flushed::default();
        let mut stalls = 0;
        loop {
            let before = next;
            match self.send_slots(batch, &mut next, &mut report) {
                Ok(()) => break,
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                    if !self.wait_for_room(wait, next > before, &mut stalls) {
                        out.dropped_full = batch.count - next;
                        break;
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "udp send failed");
                    out.failed += batch.count - next;
                    break;
                }
            }
        }
        out.sent = report.sent;
        out.failed += report.failed;
        batch.clear();
        out
    }

    /// Sends the run held by `batch` (and then a datagram it set aside, see [`GsoBatch`]) on a
    /// non-blocking socket, waiting for room like [`flush_batch`](Self::flush_batch), and
    /// leaves the batch empty.
    pub fn flush_gso_batch(&self, batch: &mut GsoBatch, wait: Duration) -> Flushed {
        let mut out = Flushed::default();
        while let Some(dest) = batch.dest() {
            let seg = batch.segment_size();
            let segments = batch.segments();
            let len = batch.data().len();
            let mut done = 0;
            let mut stalls = 0;
            let lost = loop {
                let before = done;
                match self.send_gso(dest, &batch.data()[done..], seg) {
                    Ok(n) => {
                        done += n;
                        if done >= len {
                            break None;
                        }
                    }
                    Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {}
                    Err(e) => {
                        tracing::debug!(%dest, error = %e, "udp GSO send failed");
                        break Some(Lost::Failed);
                    }
                }
                if !self.wait_for_room(wait, done > before, &mut stalls) {
                    break Some(Lost::Full);
                }
            };
            // A partial send ends on a segment boundary.
            let sent = if done >= len {
                segments
            } else {
                done / seg.max(1)
            };
            out.sent += sent;
            match lost {
                None => {}
                Some(Lost::Full) => out.dropped_full += segments - sent,
                Some(Lost::Failed) => out.failed += segments - sent,
            }
            batch.clear();
        }
        out
    }

    /// After a send found the queue full: wait up to `wait` for room. `false`: no room came,
    /// or the queue said it had room three times in a row without anything going out.
    fn wait_for_room(&self, wait: Duration, progress: bool, stalls: &mut u32) -> bool {
        if progress {
            *stalls = 0;
        } else {
            *stalls += 1;
            if *stalls > 2 {
                return false;
            }
        }
        match crate::poll::wait_writable(self.as_fd(), wait) {
            Ok(room) => room,
            Err(e) => {
                tracing::debug!(error = %e, "poll for POLLOUT failed");
                false
            }
        }
    }

    /// `sendmmsg` slots `*next..` of `batch`, advancing `*next` past every datagram sent or
    /// skipped (counted in `report`). Stops with `EAGAIN` when the send queue is full, with
    /// another error about the socket itself.
    fn send_slots(
        &self,
        batch: &SendBatch,
        next: &mut usize,
        report: &mut SendReport,
    ) -> io::Result<()> {
        let fd = self.sock.as_raw_fd();
        while *next < batch.count {
            let start = *next;
            let chunk = (batch.count - start).min(BATCH);
            // SAFETY: mmsghdr and iovec are plain C structs; all-zero is a valid value.
            let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
            // SAFETY: as above.
            let mut iovs: [libc::iovec; BATCH] = unsafe { mem::zeroed() };
            for j in 0..chunk {
                let slot = start + j;
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
                *next += r as usize;
                continue;
            }
            let err = if r == 0 {
                io::Error::new(io::ErrorKind::WriteZero, "sendmmsg sent nothing")
            } else {
                io::Error::last_os_error()
            };
            match send_error_class(&err) {
                SendErrorClass::Retry => {}
                SendErrorClass::Stop | SendErrorClass::Fatal => return Err(err),
                SendErrorClass::SkipDatagram => {
                    tracing::trace!(dest = ?batch.dest(start), error = %err, "udp send failed");
                    report.failed += 1;
                    report.last_error = Some(err);
                    *next += 1;
                }
            }
        }
        Ok(())
    }
}

/// Why the rest of a GSO run was not sent.
enum Lost {
    Full,
    Failed,
}

/// Outcome of [`BatchUdp::flush_batch`] and [`BatchUdp::flush_gso_batch`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Flushed {
    /// Datagrams the kernel accepted.
    pub sent: usize,
    /// Datagrams dropped because the send queue stayed full for a whole wait.
    pub dropped_full: usize,
    /// Datagrams dropped because sending them failed.
    pub failed: usize,
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

/// The `UDP_GRO` segment size from a received message's control data, if there is one.
/// `msg` must be a header just filled in by `recvmsg`/`recvmmsg`, whose `msg_control` still
/// points at a live buffer of at least `msg_controllen` bytes.
fn gro_segment_size(msg: &libc::msghdr) -> Option<usize> {
    if msg.msg_control.is_null() || msg.msg_controllen == 0 {
        return None;
    }
    // SAFETY: the kernel set msg_controllen to the bytes of control data it wrote into the
    // buffer msg_control points at (which the caller keeps alive); CMSG_FIRSTHDR/CMSG_NXTHDR
    // only return headers lying entirely within those bytes (or null), and CMSG_DATA of such a
    // header with cmsg_len >= CMSG_LEN(4) has 4 readable bytes, read unaligned.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            let c = &*cmsg;
            if c.cmsg_level == libc::SOL_UDP
                && c.cmsg_type == libc::UDP_GRO
                && c.cmsg_len as usize >= libc::CMSG_LEN(size_of::<libc::c_int>() as _) as usize
            {
                let v = libc::CMSG_DATA(cmsg).cast::<libc::c_int>().read_unaligned();
                return usize::try_from(v).ok();
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    None
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
/// address, truncation flag, GRO stride and control-message buffer. Allocated once;
/// [`BatchUdp::recv_batch`] does not allocate.
///
/// With GRO on ([`BatchUdp::set_gro`]) one slot can hold up to 64 datagrams (64 KiB) from
/// one sender: make `buf_size` [`GRO_BUF_SIZE`] then, or coalesced runs get truncated.
#[derive(Clone)]
pub struct RecvBatch {
    buf_size: usize,
    bufs: Vec<u8>,
    addrs: Vec<libc::sockaddr_storage>,
    lens: Vec<usize>,
    truncated: Vec<bool>,
    strides: Vec<usize>,
    ctrl: Vec<CmsgBuf>,
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
            strides: vec![0; n],
            ctrl: vec![CmsgBuf::ZERO; n],
            count: 0,
        }
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.lens.len()
    }

    /// Size of each slot buffer.
    pub fn buf_size(&self) -> usize {
        self.buf_size
    }

    /// Slots filled by the last [`BatchUdp::recv_batch`] (with GRO on, a slot may hold
    /// several datagrams: see [`segments`](Self::segments)).
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

    /// The size of each datagram in slot `i`: the `UDP_GRO` segment size when the kernel
    /// coalesced several datagrams into the slot, else the slot's length. Every datagram of
    /// the slot has this size except the last, which may be shorter.
    ///
    /// # Panics
    /// If `i` is not below [`capacity`](Self::capacity).
    pub fn stride(&self, i: usize) -> usize {
        self.strides[i]
    }

    /// The datagrams in slot `i`: [`datagram`](Self::datagram)`(i)` cut every
    /// [`stride`](Self::stride)`(i)` bytes. Yields exactly one item (possibly empty) when the
    /// slot holds one datagram. If the slot was [`truncated`](Self::truncated), the last item
    /// may be a cut-off datagram.
    ///
    /// # Panics
    /// If `i` is not below [`capacity`](Self::capacity).
    pub fn segments(&self, i: usize) -> Segments<'_> {
        Segments {
            rest: self.datagram(i),
            stride: self.strides[i],
            done: false,
        }
    }
}

/// Iterator over the datagrams of one [`RecvBatch`] slot; see [`RecvBatch::segments`].
#[derive(Debug, Clone)]
pub struct Segments<'a> {
    rest: &'a [u8],
    stride: usize,
    done: bool,
}

impl<'a> Iterator for Segments<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.done {
            return None;
        }
        if self.rest.len() <= self.stride || self.stride == 0 {
            self.done = true;
            return Some(self.rest);
        }
        let (head, tail) = self.rest.split_at(self.stride);
        self.rest = tail;
        Some(head)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = if self.done {
            0
        } else if self.stride == 0 || self.rest.len() <= self.stride {
            1
        } else {
            self.rest.len().div_ceil(self.stride)
        };
        (n, Some(n))
    }
}

impl ExactSizeIterator for Segments<'_> {}

/// A run of equal-size datagrams for one destination, written in place into one contiguous
/// buffer and sent with one [`BatchUdp::send_gso_batch`] (one `sendmsg` with `UDP_SEGMENT`).
///
/// [`push_with`](Self::push_with) appends one datagram. The first fixes the destination and
/// the segment size; every later one must be as long, except a last, shorter one. The batch
/// *closes* ([`is_closed`](Self::is_closed): send it now) when
/// - it holds `max_segments` datagrams, or one more could exceed [`GSO_MAX_BYTES_V4`];
/// - a datagram is shorter than the segment size (it ends the run);
/// - a datagram turns out longer than the segment size: it is kept aside, not sent with this
///   run, and becomes the first datagram of the next run after [`clear`](Self::clear) (so
///   the caller's work is never lost).
///
/// A push for another destination, or to a closed batch, is refused without calling the
/// closure: send the batch, then push again.
#[derive(Clone)]
pub struct GsoBatch {
    buf: Vec<u8>,
    seg_cap: usize,
    max_segments: usize,
    dest: Option<SocketAddr>,
    seg_size: usize,
    segments: usize,
    len: usize,
    closed: bool,
    /// A datagram pushed after the run, at `buf[len..len + pending.1]`, for `pending.0`.
    pending: Option<(SocketAddr, usize)>,
}

impl std::fmt::Debug for GsoBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GsoBatch")
            .field("dest", &self.dest)
            .field("segment_size", &self.seg_size)
            .field("segments", &self.segments)
            .field("len", &self.len)
            .field("closed", &self.closed)
            .field("pending", &self.pending)
            .finish()
    }
}

impl GsoBatch {
    /// Room for `max_segments` datagrams (at least 1; pass
    /// [`BatchUdp::max_gso_segments`]) of up to `segment_capacity` bytes each (at least 1).
    pub fn new(max_segments: usize, segment_capacity: usize) -> Self {
        let max_segments = max_segments.max(1);
        let seg_cap = segment_capacity.max(1);
        Self {
            buf: vec![0; max_segments * seg_cap],
            seg_cap,
            max_segments,
            dest: None,
            seg_size: 0,
            segments: 0,
            len: 0,
            closed: false,
            pending: None,
        }
    }

    /// Appends a datagram for `dest`: `f` gets a `segment_capacity`-byte buffer (stale data)
    /// and returns how many bytes it wrote (clamped to the buffer). Returns `false`, without
    /// calling `f`, when the batch is closed or holds a run for another destination. See the
    /// type's docs for when the batch closes.
    pub fn push_with(&mut self, dest: SocketAddr, f: impl FnOnce(&mut [u8]) -> usize) -> bool {
        if self.closed || self.dest.is_some_and(|d| d != dest) {
            return false;
        }
        // Open and holding fewer than max_segments datagrams of at most seg_cap bytes each, so
        // this slice is in bounds.
        let start = self.len;
        let n = f(&mut self.buf[start..start + self.seg_cap]).min(self.seg_cap);
        if self.segments == 0 {
            self.dest = Some(dest);
            self.seg_size = n;
        } else if n > self.seg_size {
            self.pending = Some((dest, n));
            self.closed = true;
            return true;
        }
        self.len += n;
        self.segments += 1;
        if n < self.seg_size
            || n == 0
            || self.segments == self.max_segments
            || self.len + self.seg_size > GSO_MAX_BYTES_V4
        {
            self.closed = true;
        }
        true
    }

    /// Whether the batch takes no more datagrams and should be sent.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Whether no run is held (a set-aside datagram may still wait: see the type's docs).
    pub fn is_empty(&self) -> bool {
        self.segments == 0
    }

    /// The destination of the run, if any.
    pub fn dest(&self) -> Option<SocketAddr> {
        self.dest
    }

    /// The run's segment size (the first datagram's length); 0 when empty.
    pub fn segment_size(&self) -> usize {
        self.seg_size
    }

    /// Datagrams in the run.
    pub fn segments(&self) -> usize {
        self.segments
    }

    /// The run's bytes: all its datagrams back to back.
    pub fn data(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Drops the run; a datagram set aside by [`push_with`](Self::push_with) becomes the
    /// first of the next run.
    pub fn clear(&mut self) {
        let pending = self.pending.take();
        let old_len = self.len;
        self.dest = None;
        self.seg_size = 0;
        self.segments = 0;
        self.len = 0;
        self.closed = false;
        if let Some((dest, n)) = pending {
            self.buf.copy_within(old_len..old_len + n, 0);
            self.dest = Some(dest);
            self.seg_size = n;
            self.segments = 1;
            self.len = n;
            self.closed = self.max_segments == 1 || n == 0 || n + n > GSO_MAX_BYTES_V4;
        }
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
    fn a_group_steers_each_datagram_by_its_byte() {
        let group = BatchUdp::bind_group("127.0.0.1:0".parse().unwrap(), 3, BY_STREAM).unwrap();
        assert_eq!(group.len(), 3);
        let port = group[0].local_addr().unwrap();
        assert!(group.iter().all(|s| s.local_addr().unwrap() == port));
        for s in &group {
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
        }
        let sender = BatchUdp::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        // One source address and port for all: only the byte decides.
        for b in 0u8..12 {
            let mut d = [0u8; 16];
            d[7] = b;
            d[15] = b;
            sender.send_to(&d, port).unwrap();
        }
        sender.send_to(&[1, 2, 3], port).unwrap();
        for (i, s) in group.iter().enumerate() {
            let mut got = Vec::new();
            let mut buf = [0u8; 64];
            while let Ok((n, _)) = s.recv_from(&mut buf) {
                got.push(if n == 16 { buf[15] } else { 255 });
                if got.len() == 5 {
                    break;
                }
            }
            let mut want: Vec<u8> = (0u8..12).filter(|b| usize::from(*b) % 3 == i).collect();
            if i == 0 {
                want.push(255); // too short: socket 0
            }
            assert_eq!(got, want, "socket {i}");
        }
        // One socket: an ordinary bind.
        assert_eq!(
            BatchUdp::bind_group("127.0.0.1:0".parse().unwrap(), 1, BY_STREAM)
                .unwrap()
                .len(),
            1
        );
    }

    const BY_STREAM: Steering = Steering {
        stream_at: 7,
        express: None,
    };

    #[test]
    fn an_express_socket_takes_what_has_the_express_bit_whatever_the_stream() {
        for n in [1, 2] {
            let steer = Steering {
                stream_at: 7,
                express: Some((1, 0x02)),
            };
            let group = BatchUdp::bind_group("127.0.0.1:0".parse().unwrap(), n, steer).unwrap();
            assert_eq!(group.len(), n + 1);
            let port = group[0].local_addr().unwrap();
            for s in &group {
                s.set_read_timeout(Some(Duration::from_millis(300)))
                    .unwrap();
            }
            let sender = BatchUdp::bind("127.0.0.1:0".parse().unwrap()).unwrap();
            // (flags byte, stream byte, tag)
            let sent = [
                (0x00, 0, 1),
                (0x00, 1, 2),
                (0x02, 0, 3),
                (0x03, 1, 4),
                (0x01, 3, 5),
            ];
            for (flags, stream, tag) in sent {
                let mut d = [0u8; 16];
                d[1] = flags;
                d[7] = stream;
                d[15] = tag;
                sender.send_to(&d, port).unwrap();
            }
            let mut got = vec![Vec::new(); n + 1];
            for (i, s) in group.iter().enumerate() {
                let mut buf = [0u8; 64];
                while let Ok((16, _)) = s.recv_from(&mut buf) {
                    got[i].push(buf[15]);
                }
            }
            let want: Vec<Vec<u8>> = if n == 1 {
                vec![vec![1, 2, 5], vec![3, 4]]
            } else {
                vec![vec![1], vec![2, 5], vec![3, 4]]
            };
            assert_eq!(got, want, "{n} ordinary socket(s)");
        }
    }

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

    /// A non-blocking socket's flushes send everything queued, count a datagram the kernel
    /// refuses, and leave the batches empty. (Loopback needs no privileges.)
    #[test]
    fn nonblocking_flushes() {
        let Ok(rx) = BatchUdp::bind("127.0.0.1:0".parse().unwrap()) else {
            eprintln!("no IPv4 loopback here; skipping");
            return;
        };
        let tx = BatchUdp::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        tx.set_nonblocking(true).unwrap();
        rx.set_nonblocking(true).unwrap();
        let to = rx.local_addr().unwrap();
        let mut sb = SendBatch::new(100, 64);
        for i in 0..100u8 {
            // The broadcast address without SO_BROADCAST: refused (EACCES).
            let dest = if i == 40 {
                "255.255.255.255:9".parse().unwrap()
            } else {
                to
            };
            assert!(sb.push(dest, &[i; 10]));
        }
        let wait = Duration::from_millis(20);
        let done = tx.flush_batch(&mut sb, wait);
        assert_eq!(
            done,
            Flushed {
                sent: 99,
                dropped_full: 0,
                failed: 1
            }
        );
        assert!(sb.is_empty());
        let mut gso = GsoBatch::new(tx.max_gso_segments(), 64);
        for i in 0..8u8 {
            assert!(gso.push_with(to, |b| {
                b[..32].fill(100 + i);
                32
            }));
        }
        // Longer than the run: set aside, sent as the next run by the same flush.
        assert!(gso.push_with(to, |b| {
            b[..48].fill(200);
            48
        }));
        let done = tx.flush_gso_batch(&mut gso, wait);
        assert_eq!(done.sent, 9);
        assert_eq!((done.dropped_full, done.failed), (0, 0));
        assert!(gso.is_empty() && gso.dest().is_none());
        let mut rb = RecvBatch::new(128, 64);
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while seen.len() < 108 && std::time::Instant::now() < deadline {
            match rx.recv_batch(&mut rb) {
                Ok(n) => {
                    for i in 0..n {
                        let stride = rb.stride(i).max(1);
                        seen.extend(rb.datagram(i).chunks(stride).map(|d| d[0]));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("{e}"),
            }
        }
        let mut want: Vec<u8> = (0..100u8).filter(|&i| i != 40).collect();
        want.extend(100..108u8);
        want.push(200);
        assert_eq!(seen, want, "all sent, in order");
        assert_eq!(
            rx.recv_batch(&mut rb).unwrap_err().kind(),
            io::ErrorKind::WouldBlock,
            "a non-blocking receive with nothing queued returns at once"
        );
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

    #[test]
    fn segments_split() {
        let split = |data: &[u8], stride: usize| -> Vec<Vec<u8>> {
            let it = Segments {
                rest: data,
                stride,
                done: false,
            };
            let n = it.len();
            let v: Vec<Vec<u8>> = it.map(<[u8]>::to_vec).collect();
            assert_eq!(v.len(), n, "size_hint");
            v
        };
        assert_eq!(
            split(b"abcdefg", 3),
            vec![b"abc".to_vec(), b"def".to_vec(), b"g".to_vec()]
        );
        assert_eq!(split(b"abcdef", 3), vec![b"abc".to_vec(), b"def".to_vec()]);
        assert_eq!(split(b"abc", 3), vec![b"abc".to_vec()]);
        assert_eq!(split(b"abc", 7), vec![b"abc".to_vec()]);
        assert_eq!(split(b"", 0), vec![Vec::<u8>::new()]);
        assert_eq!(split(b"abc", 0), vec![b"abc".to_vec()]);
        // A fresh batch: one empty segment per slot, stride 0.
        let rb = RecvBatch::new(2, 16);
        assert_eq!(rb.stride(0), 0);
        assert_eq!(rb.segments(0).count(), 1);
    }

    fn seg(n: usize, fill: u8) -> impl FnOnce(&mut [u8]) -> usize {
        move |buf: &mut [u8]| {
            buf[..n].fill(fill);
            n
        }
    }

    #[test]
    fn gso_batch_runs() {
        let a: SocketAddr = "192.0.2.1:6784".parse().unwrap();
        let b: SocketAddr = "192.0.2.2:6784".parse().unwrap();
        let mut g = GsoBatch::new(4, 100);
        assert!(g.is_empty() && !g.is_closed() && g.dest().is_none());
        assert!(g.push_with(a, seg(10, 1)));
        assert!(g.push_with(a, seg(10, 2)));
        assert_eq!((g.segments(), g.segment_size(), g.dest()), (2, 10, Some(a)));
        // Another destination is refused without calling the closure.
        assert!(!g.push_with(b, |_| unreachable!()));
        // A shorter one ends the run.
        assert!(g.push_with(a, seg(4, 3)));
        assert!(g.is_closed());
        assert!(!g.push_with(a, |_| unreachable!()));
        let mut want = vec![1u8; 10];
        want.extend([2u8; 10]);
        want.extend([3u8; 4]);
        assert_eq!(g.data(), &want[..]);
        g.clear();
        assert!(g.is_empty() && !g.is_closed() && g.data().is_empty());

        // Full after max_segments.
        for i in 0..4 {
            assert!(g.push_with(b, seg(7, i)));
        }
        assert!(g.is_closed());
        assert_eq!(g.data().len(), 28);
        g.clear();

        // A longer one is set aside and starts the next run.
        assert!(g.push_with(a, seg(5, 9)));
        assert!(g.push_with(a, seg(50, 8)));
        assert!(g.is_closed());
        assert_eq!((g.segments(), g.data()), (1, &[9u8; 5][..]));
        g.clear();
        assert_eq!((g.segments(), g.segment_size(), g.dest()), (1, 50, Some(a)));
        assert_eq!(g.data(), &[8u8; 50][..]);
        assert!(!g.is_closed());
        assert!(g.push_with(a, seg(50, 7)));
        assert_eq!(g.data().len(), 100);
        // Clamped to the segment capacity.
        let mut g = GsoBatch::new(2, 8);
        assert!(g.push_with(a, |_| 1000));
        assert_eq!(g.segment_size(), 8);

        // Closes before exceeding the 64 KiB limit.
        let mut g = GsoBatch::new(64, 9000);
        let mut n = 0;
        while !g.is_closed() {
            assert!(g.push_with(a, seg(9000, 0)));
            n += 1;
        }
        assert_eq!(n, GSO_MAX_BYTES_V4 / 9000);
    }

    /// GSO and GRO on loopback in the current namespace (no privileges needed).
    #[test]
    fn loopback_gso_gro() {
        let Ok(rx) = BatchUdp::bind("127.0.0.1:0".parse().unwrap()) else {
            eprintln!("no IPv4 loopback here; skipping");
            return;
        };
        let tx = BatchUdp::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let to = rx.local_addr().unwrap();
        let mut data = vec![0u8; 10 * 100 + 37];
        for (i, c) in data.chunks_mut(100).enumerate() {
            c.fill(i as u8);
        }
        assert_eq!(tx.send_gso(to, &data, 100).unwrap(), data.len());
        let mut rb = RecvBatch::new(16, GRO_BUF_SIZE);
        let mut got = Vec::new();
        while got.len() < data.len() {
            let n = rx.recv_batch(&mut rb).unwrap();
            for i in 0..n {
                for d in rb.segments(i) {
                    got.extend_from_slice(d);
                }
            }
        }
        assert_eq!(got, data);
    }

    fn tx_recv(rx: &BatchUdp, rb: &mut RecvBatch) -> usize {
        let n = rx.recv_batch(rb).unwrap();
        assert!(n > 0);
        assert_eq!(rb.len(), n);
        n
    }
}
