//! Layer: pure logic. The forwarding engine's per-neighbour encryption state: which
//! neighbours' datagrams are sealed (and with which [`TxSession`]/[`RxSession`]), which may
//! travel in the clear (trusted subnets, or no password at all), and opening/sealing datagrams
//! in the data plane's own buffers without copying the payload. The control plane installs
//! and removes links only through the node's `SetLink`/`RemoveLink` actions.
//!
//! A sealed datagram is `[VXLAN header][counter][ciphertext][tag]` (see
//! [`weft_crypto::data`]); the VXLAN header stays in the clear as associated data. After
//! opening, the header is moved next to the plaintext so the engine sees an ordinary VXLAN
//! datagram.

use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::Range;

use weft_crypto::data::{COUNTER_LEN, OVERHEAD, OpenError, RxSession, TxSession};
use weft_crypto::handshake::DataKeys;
use weft_wire::vxlan::HEADER_LEN as VXLAN_HLEN;

/// How traffic with one neighbour is protected.
// One per neighbour, looked up per datagram: kept inline rather than boxed.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Link {
    /// In the clear (both sides trust each other).
    Plain { conn_uid: u64 },
    /// Sealed.
    Sealed {
        conn_uid: u64,
        tx: TxSession,
        rx: RxSession,
        /// The previous connection's receiving session, for datagrams still in flight when a
        /// connection to the same peer replaced it; dropped once the new keys opened one.
        old_rx: Option<RxSession>,
    },
}

/// Why a received datagram was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// From an address with no link: not a neighbour (yet).
    Unknown,
    /// Failed authentication (forged, corrupted, or unsealed where sealing is required).
    Auth,
    /// A replay.
    Replay,
}

/// A password is set and the neighbour has no keys (yet): do not send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoLink;

/// Every neighbour's link, by underlay address.
#[derive(Debug, Default)]
pub struct Links {
    /// A password is set: neighbours without a link get nothing and are heard from not at all.
    required: bool,
    links: HashMap<IpAddr, Link>,
    /// A copy of a datagram while it is tried under the new keys (a failed open may have
    /// overwritten it), so the old keys can try it too.
    scratch: Vec<u8>,
}

impl Links {
    /// Links for a router with (`required`) or without a password.
    pub fn new(required: bool) -> Self {
        Self {
            required,
            links: HashMap::new(),
            scratch: Vec::new(),
        }
    }

    /// Install the link of connection `conn_uid` to the neighbour at `ip`: sealed with `keys`,
    /// or in the clear when `keys` is `None`.
    pub fn set(&mut self, ip: IpAddr, conn_uid: u64, keys: Option<&DataKeys>) {
        let old_rx = match self.links.remove(&ip) {
            Some(Link::Sealed {
                conn_uid: old, rx, ..
            }) if old != conn_uid => Some(rx),
            _ => None,
        };
        let link = match keys {
            Some(k) => {
                let (tx, rx) = k.sessions();
                Link::Sealed {
                    conn_uid,
                    tx,
                    rx,
                    old_rx,
                }
            }
            None => Link::Plain { conn_uid },
        };
        self.links.insert(ip, link);
    }

    /// Remove the link of connection `conn_uid` (not a newer connection's).
    pub fn remove(&mut self, ip: IpAddr, conn_uid: u64) {
        let current = match self.links.get(&ip) {
            Some(Link::Plain { conn_uid: c } | Link::Sealed { conn_uid: c, .. }) => *c,
            None => return,
        };
        if current == conn_uid {
            self.links.remove(&ip);
        }
    }

    /// Extra bytes a datagram to anyone may need.
    pub const MAX_OVERHEAD: usize = OVERHEAD;

    /// Open a received datagram from `ip` in place; returns the range of `datagram` that holds
    /// the plain VXLAN datagram (header and frame).
    pub fn open(&mut self, ip: IpAddr, datagram: &mut [u8]) -> Result<Range<usize>, Refused> {
        if !self.required {
            return Ok(0..datagram.len());
        }
        let (rx, old_rx) = match self.links.get_mut(&ip) {
            Some(Link::Plain { .. }) => return Ok(0..datagram.len()),
            Some(Link::Sealed { rx, old_rx, .. }) => (rx, old_rx),
            None => return Err(Refused::Unknown),
        };
        let opened = match old_rx {
            None => rx.open(datagram, VXLAN_HLEN),
            Some(old) => {
                self.scratch.clear();
                self.scratch.extend_from_slice(datagram);
                match rx.open(datagram, VXLAN_HLEN) {
                    Ok(r) => {
                        *old_rx = None;
                        Ok(r)
                    }
                    Err(OpenError::Auth) => {
                        datagram.copy_from_slice(&self.scratch);
                        old.open(datagram, VXLAN_HLEN)
                    }
                    Err(e) => Err(e),
                }
            }
        };
        match opened {
            Ok(payload) => {
                // [hdr][ctr][payload] -> [..][hdr][payload]
                datagram.copy_within(0..VXLAN_HLEN, COUNTER_LEN);
                Ok(COUNTER_LEN..payload.end)
            }
            Err(OpenError::Replay) => Err(Refused::Replay),
            Err(OpenError::Auth | OpenError::Truncated) => Err(Refused::Auth),
        }
    }

    /// How to send to `ip`: `Err` if it must not be sent (a password is set and the neighbour
    /// has no link yet), `Ok(None)` in the clear, `Ok(Some)` sealed with this session.
    pub fn sender(&mut self, ip: IpAddr) -> Result<Option<&mut TxSession>, NoLink> {
        if !self.required {
            return Ok(None);
        }
        match self.links.get_mut(&ip) {
            Some(Link::Plain { .. }) => Ok(None),
            Some(Link::Sealed { tx, .. }) => Ok(Some(tx)),
            None => Err(NoLink),
        }
    }
}

/// Write a datagram into `buf` with `f` (which writes a VXLAN header and payload at the start of
/// the slice it gets and returns the length), sealing it with `tx` if given. Returns the
/// datagram's length; 0 if it could not be sealed.
pub fn build(
    tx: Option<&mut TxSession>,
    buf: &mut [u8],
    f: impl FnOnce(&mut [u8]) -> usize,
) -> usize {
    let Some(tx) = tx else {
        return f(buf);
    };
    let Some(inner) = buf.len().checked_sub(OVERHEAD) else {
        return 0;
    };
    // Write [hdr][payload] shifted by the counter's length, then move the header in front:
    // [hdr][(counter)][payload] is the layout the sealer wants.
    let n = f(&mut buf[COUNTER_LEN..COUNTER_LEN + inner]);
    if n < VXLAN_HLEN {
        return 0;
    }
    buf.copy_within(COUNTER_LEN..COUNTER_LEN + VXLAN_HLEN, 0);
    tx.seal(buf, VXLAN_HLEN, n - VXLAN_HLEN).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_crypto::Cipher;

    fn keys(a: u8, b: u8) -> DataKeys {
        DataKeys::from_raw(Cipher::ChaCha20Poly1305, [a; 32], [b; 32])
    }

    fn datagram(links: &mut Links, ip: IpAddr, frame: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; 256];
        let tx = links.sender(ip).unwrap();
        let n = build(tx, &mut buf, |b| {
            b[..8].copy_from_slice(b"VXLANHDR");
            b[8..8 + frame.len()].copy_from_slice(frame);
            8 + frame.len()
        });
        buf.truncate(n);
        buf
    }

    #[test]
    fn seal_open_replay_and_plain_links() {
        let ip: IpAddr = "192.0.2.2".parse().unwrap();
        let other: IpAddr = "192.0.2.3".parse().unwrap();
        let mut a = Links::new(true);
        let mut b = Links::new(true);
        a.set(ip, 7, Some(&keys(1, 2)));
        b.set(ip, 7, Some(&keys(2, 1)));
        let mut d = datagram(&mut a, ip, b"frame with marker");
        assert_eq!(d.len(), 8 + OVERHEAD + 17);
        assert!(!d.windows(6).any(|w| w == b"marker"));
        let copy = d.clone();
        let r = b.open(ip, &mut d).unwrap();
        assert_eq!(&d[r.clone()][..8], b"VXLANHDR");
        assert_eq!(&d[r][8..], b"frame with marker");
        assert_eq!(b.open(ip, &mut copy.clone()), Err(Refused::Replay));
        // Unknown sender, and no link to send to: refused when a password is set.
        assert_eq!(b.open(other, &mut copy.clone()), Err(Refused::Unknown));
        assert!(a.sender(other).is_err());
        // A plain (trusted) link passes datagrams unchanged both ways.
        a.set(other, 9, None);
        let d = datagram(&mut a, other, b"clear");
        assert_eq!(&d[8..], b"clear");
        // A newer connection replaces the keys; the old one's datagrams in flight still open.
        let mut late = datagram(&mut a, ip, b"late");
        b.set(ip, 8, Some(&keys(4, 3)));
        assert!(b.open(ip, &mut late).is_ok());
        // Removing a stale connection's link does not remove the newer one.
        b.remove(ip, 7);
        assert!(b.sender(ip).unwrap().is_some());
        b.remove(ip, 8);
        assert!(b.sender(ip).is_err());
        // Without a password everything is in the clear.
        let mut open = Links::new(false);
        assert!(open.sender(ip).unwrap().is_none());
        let mut d = b"anything".to_vec();
        assert_eq!(open.open(ip, &mut d), Ok(0..8));
    }
}
