//! Layer: OS. Which user owns the other end of a local TCP connection, as the kernel records
//! it: the socket's owner uid from `NETLINK_SOCK_DIAG` (an exact `inet_diag` lookup of one
//! 4-tuple), or from `/proc/net/tcp[6]` when sock_diag is unavailable.
//!
//! The uid is the one the kernel stored when the client created its socket; the client cannot
//! choose it. It is only reported for a live socket: a connection whose client end is already
//! closed (a TIME_WAIT or orphaned socket, which the kernel reports with uid 0 and inode 0) has
//! no owner here, so a client cannot close its socket to pass for root.

use std::io;
use std::net::{IpAddr, SocketAddr};

use netlink_sys::{Socket, SocketAddr as NlAddr, protocols::NETLINK_SOCK_DIAG};

/// `SOCK_DIAG_BY_FAMILY`.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
/// `TCP_TIME_WAIT` and `TCP_CLOSE` in the kernel's numbering.
const TCP_TIME_WAIT: u8 = 6;
const TCP_CLOSE: u8 = 7;

/// What the kernel says about a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    /// The uid that created the socket.
    pub uid: u32,
    /// The socket's inode (0: no file holds it any more).
    pub inode: u32,
    /// TCP state (kernel numbering: 1 established, ...).
    pub state: u8,
}

impl Owner {
    /// Whether the uid means something: a live socket some process still holds.
    pub fn is_live(&self) -> bool {
        self.inode != 0 && self.state != TCP_TIME_WAIT && self.state != TCP_CLOSE
    }
}

/// A `NETLINK_SOCK_DIAG` socket for repeated lookups.
#[derive(Debug)]
pub struct SockDiag {
    socket: Option<Socket>,
    seq: u32,
}

impl SockDiag {
    /// Opens the netlink socket, and checks that the kernel answers lookups through it (the
    /// `tcp_diag` module may be missing, and "no handler" and "no such socket" are the same
    /// error); otherwise every lookup reads `/proc/net/tcp`.
    pub fn new() -> Self {
        let socket = Socket::new(NETLINK_SOCK_DIAG).ok().and_then(|mut s| {
            s.bind_auto().ok()?;
            s.set_non_blocking(true).ok()?;
            Some(s)
        });
        let mut d = Self { socket, seq: 0 };
        if !d.self_test() {
            d.socket = None;
        }
        d
    }

    /// Looks up a loopback connection of our own through netlink.
    fn self_test(&mut self) -> bool {
        let Some(sock) = &self.socket else {
            return false;
        };
        let probe = || -> io::Result<Owner> {
            let server = std::net::TcpListener::bind("127.0.0.1:0")?;
            let _client = std::net::TcpStream::connect(server.local_addr()?)?;
            let (_accepted, peer) = server.accept()?;
            query(sock, 0, peer, server.local_addr()?)
        };
        probe().is_ok_and(|o| o.is_live())
    }

    /// Whether lookups go through netlink (else through `/proc/net/tcp`).
    pub fn uses_netlink(&self) -> bool {
        self.socket.is_some()
    }

    /// The owner of the TCP socket whose own address is `local` and whose peer is `remote`
    /// (for the client end of a connection accepted at `server` from `client`: pass
    /// `local = client`, `remote = server`). `None` when no such socket exists.
    pub fn tcp_owner(
        &mut self,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> io::Result<Option<Owner>> {
        if let Some(sock) = &self.socket {
            self.seq = self.seq.wrapping_add(1);
            match query(sock, self.seq, local, remote) {
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                other => return other.map(Some),
            }
        }
        proc_net_tcp(local, remote)
    }
}

impl Default for SockDiag {
    fn default() -> Self {
        Self::new()
    }
}

/// The `inet_diag_sockid` of a 4-tuple: ports big-endian, addresses as four big-endian words
/// (IPv4 in the first), no interface, no cookie.
fn sockid(local: SocketAddr, remote: SocketAddr) -> [u8; 48] {
    let mut id = [0u8; 48];
    id[0..2].copy_from_slice(&local.port().to_be_bytes());
    id[2..4].copy_from_slice(&remote.port().to_be_bytes());
    let put = |buf: &mut [u8], ip: IpAddr| match ip {
        IpAddr::V4(a) => buf[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => buf.copy_from_slice(&a.octets()),
    };
    put(&mut id[4..20], local.ip());
    put(&mut id[20..36], remote.ip());
    // idiag_if = 0; idiag_cookie = INET_DIAG_NOCOOKIE (all ones).
    id[40..48].copy_from_slice(&[0xff; 8]);
    id
}

/// The request: `nlmsghdr` + `inet_diag_req_v2` (exact lookup, any state).
fn request(seq: u32, local: SocketAddr, remote: SocketAddr) -> Vec<u8> {
    let family = if local.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let mut m = Vec::with_capacity(72);
    m.extend_from_slice(&72u32.to_ne_bytes());
    m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.push(u8::try_from(family).unwrap_or(2));
    m.push(u8::try_from(libc::IPPROTO_TCP).unwrap_or(6));
    m.push(0); // idiag_ext
    m.push(0); // pad
    m.extend_from_slice(&u32::MAX.to_ne_bytes()); // idiag_states: all
    m.extend_from_slice(&sockid(local, remote));
    m
}

/// Parses the answer: an `inet_diag_msg` or an `NLMSG_ERROR` (as an `io::Error`).
fn parse_reply(buf: &[u8]) -> io::Result<Owner> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "short sock_diag reply");
    let word = |at: usize| -> io::Result<u32> {
        let b: [u8; 4] = buf
            .get(at..at + 4)
            .ok_or_else(bad)?
            .try_into()
            .map_err(|_| bad())?;
        Ok(u32::from_ne_bytes(b))
    };
    let kind = u16::from_ne_bytes(
        buf.get(4..6)
            .ok_or_else(bad)?
            .try_into()
            .map_err(|_| bad())?,
    );
    if kind == NLMSG_ERROR {
        let errno = i32::from_ne_bytes(word(16)?.to_ne_bytes());
        return Err(io::Error::from_raw_os_error(-errno));
    }
    if kind != SOCK_DIAG_BY_FAMILY {
        return Err(bad());
    }
    // nlmsghdr (16) + family, state, timer, retrans (4) + id (48) + expires, rqueue,
    // wqueue (12) + uid + inode.
    let state = *buf.get(17).ok_or_else(bad)?;
    Ok(Owner {
        uid: word(16 + 4 + 48 + 12)?,
        inode: word(16 + 4 + 48 + 16)?,
        state,
    })
}

fn query(sock: &Socket, seq: u32, local: SocketAddr, remote: SocketAddr) -> io::Result<Owner> {
    sock.send_to(&request(seq, local, remote), &NlAddr::new(0, 0), 0)?;
    let (buf, _) = sock.recv_from_full()?;
    parse_reply(&buf)
}

/// The same lookup through `/proc/net/tcp` or `/proc/net/tcp6`.
fn proc_net_tcp(local: SocketAddr, remote: SocketAddr) -> io::Result<Option<Owner>> {
    let file = if local.is_ipv4() {
        "/proc/net/tcp"
    } else {
        "/proc/net/tcp6"
    };
    let text = std::fs::read_to_string(file)?;
    Ok(text
        .lines()
        .skip(1)
        .find_map(|line| parse_proc_line(line, local, remote)))
}

/// One line of `/proc/net/tcp[6]`, if it is the socket `local` -> `remote`.
fn parse_proc_line(line: &str, local: SocketAddr, remote: SocketAddr) -> Option<Owner> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 10 || proc_addr(f[1])? != local || proc_addr(f[2])? != remote {
        return None;
    }
    Some(Owner {
        state: u8::from_str_radix(f[3], 16).ok()?,
        uid: f[7].parse().ok()?,
        inode: f[9].parse().ok()?,
    })
}

/// `0100007F:1F90` (the address's words as the kernel prints them, in host order) as an
/// address.
fn proc_addr(s: &str) -> Option<SocketAddr> {
    let (a, p) = s.split_once(':')?;
    let port = u16::from_str_radix(p, 16).ok()?;
    let mut bytes = Vec::with_capacity(16);
    for k in 0..a.len() / 8 {
        let w = u32::from_str_radix(a.get(k * 8..k * 8 + 8)?, 16).ok()?;
        bytes.extend_from_slice(&w.to_ne_bytes());
    }
    let ip = match bytes.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?),
        16 => IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout() {
        let local: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let remote: SocketAddr = "127.0.0.1:6784".parse().unwrap();
        let m = request(7, local, remote);
        assert_eq!(m.len(), 72);
        assert_eq!(&m[16..20], &[2, 6, 0, 0]);
        assert_eq!(&m[24..26], &40000u16.to_be_bytes());
        assert_eq!(&m[26..28], &6784u16.to_be_bytes());
        assert_eq!(&m[28..32], &[127, 0, 0, 1]);
        assert_eq!(&m[44..48], &[127, 0, 0, 1]);
        assert_eq!(&m[64..72], &[0xff; 8]);
    }

    #[test]
    fn replies() {
        let mut r = vec![0u8; 88];
        r[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        r[17] = 1;
        r[84..88].copy_from_slice(&4242u32.to_ne_bytes());
        r[80..84].copy_from_slice(&65534u32.to_ne_bytes());
        let o = parse_reply(&r).unwrap();
        assert_eq!(
            o,
            Owner {
                uid: 65534,
                inode: 4242,
                state: 1
            }
        );
        assert!(o.is_live());
        let tw = Owner {
            uid: 0,
            inode: 0,
            state: TCP_TIME_WAIT,
        };
        assert!(!tw.is_live());
        let mut e = vec![0u8; 36];
        e[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        e[16..20].copy_from_slice(&(-libc::ENOENT).to_ne_bytes());
        assert_eq!(
            parse_reply(&e).unwrap_err().raw_os_error(),
            Some(libc::ENOENT)
        );
        assert!(parse_reply(&r[..40]).is_err());
    }

    #[test]
    fn proc_lines() {
        let line = "   3: 0100007F:9C40 0100007F:1A80 01 00000000:00000000 00:00000000 \
                    00000000 65534        0 123456 1 0000000000000000 20 4 30 10 -1";
        let local: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let remote: SocketAddr = "127.0.0.1:6784".parse().unwrap();
        if cfg!(target_endian = "little") {
            assert_eq!(
                parse_proc_line(line, local, remote),
                Some(Owner {
                    uid: 65534,
                    inode: 123456,
                    state: 1
                })
            );
        }
        assert_eq!(parse_proc_line(line, remote, local), None);
    }

    /// A real connection on loopback: the client end belongs to us.
    #[test]
    fn finds_our_own_socket() {
        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(server.local_addr().unwrap()).unwrap();
        let (_accepted, peer) = server.accept().unwrap();
        let mut d = SockDiag::new();
        assert!(d.uses_netlink(), "sock_diag answers (tcp_diag available)");
        let o = d
            .tcp_owner(peer, server.local_addr().unwrap())
            .unwrap()
            .expect("our socket");
        assert!(o.is_live());
        let uid = std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|u| u.parse::<u32>().ok())
            .unwrap();
        assert_eq!(o.uid, uid);
        assert_eq!(
            proc_net_tcp(peer, server.local_addr().unwrap()).unwrap(),
            Some(o)
        );
        drop(client);
    }
}
