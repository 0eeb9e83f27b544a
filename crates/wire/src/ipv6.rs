//! IPv6 (layer 3, RFC 8200): the fixed header's view and a [`Repr`] for the packets weft writes
//! (ICMPv6 errors back to a container). Extension headers are not parsed here; [`Packet::payload`]
//! is whatever follows the fixed header, of the length the header states.
//!
//! **Panic contract:** once [`Packet::new_checked`] (or [`Packet::check_len`]) has succeeded, no
//! getter panics, whatever the bytes. Setters and [`Repr::emit`] panic only if the caller's
//! buffer is too short for what they write.

use std::net::Ipv6Addr;

use crate::Error;

/// Length of the fixed IPv6 header.
pub const HEADER_LEN: usize = field::DST.end;

/// The smallest MTU every IPv6 link must carry (RFC 8200 §5).
pub const MIN_MTU: usize = 1280;

/// Next-header value of ICMPv6.
pub const NEXT_HEADER_ICMPV6: u8 = 58;

mod field {
    pub(crate) type Field = std::ops::Range<usize>;

    pub(crate) const PAYLOAD_LEN: Field = 4..6;
    pub(crate) const NEXT_HEADER: usize = 6;
    pub(crate) const HOP_LIMIT: usize = 7;
    pub(crate) const SRC: Field = 8..24;
    pub(crate) const DST: Field = 24..40;
}

/// A read/write view of an IPv6 packet.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps `buffer` without checking it.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps `buffer` after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// The buffer holds the fixed header, says version 6, and holds the payload length it
    /// states (more bytes, link-layer padding, are allowed).
    pub fn check_len(&self) -> Result<(), Error> {
        let b = self.buffer.as_ref();
        if b.len() < HEADER_LEN || b[0] >> 4 != 6 {
            return Err(Error);
        }
        if b.len() < HEADER_LEN + usize::from(self.payload_len()) {
            return Err(Error);
        }
        Ok(())
    }

    /// The traffic class (DSCP and ECN).
    pub fn traffic_class(&self) -> u8 {
        let b = self.buffer.as_ref();
        (b[0] << 4) | (b[1] >> 4)
    }

    /// The payload length (extension headers included).
    pub fn payload_len(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[field::PAYLOAD_LEN.start], b[field::PAYLOAD_LEN.start + 1]])
    }

    /// The next header (the first extension header's, or the upper layer's, protocol number).
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NEXT_HEADER]
    }

    /// The hop limit.
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    /// The source address.
    pub fn src_addr(&self) -> Ipv6Addr {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.buffer.as_ref()[field::SRC]);
        Ipv6Addr::from(a)
    }

    /// The destination address.
    pub fn dst_addr(&self) -> Ipv6Addr {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.buffer.as_ref()[field::DST]);
        Ipv6Addr::from(a)
    }

    /// The header and payload, without link-layer padding.
    pub fn packet(&self) -> &[u8] {
        &self.buffer.as_ref()[..HEADER_LEN + usize::from(self.payload_len())]
    }

    /// What follows the fixed header, of the stated length.
    pub fn payload(&self) -> &[u8] {
        &self.packet()[HEADER_LEN..]
    }
}

/// The fixed header of a packet weft writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// Source address.
    pub src_addr: Ipv6Addr,
    /// Destination address.
    pub dst_addr: Ipv6Addr,
    /// Next header (no extension headers: the upper layer's protocol).
    pub next_header: u8,
    /// Traffic class.
    pub traffic_class: u8,
    /// Payload length.
    pub payload_len: u16,
    /// Hop limit.
    pub hop_limit: u8,
}

impl Repr {
    /// Length of what [`emit`](Self::emit) writes: the fixed header.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the fixed header into the first [`HEADER_LEN`] bytes of `buf` (flow label 0).
    pub fn emit(&self, buf: &mut [u8]) {
        let b = &mut buf[..HEADER_LEN];
        b[0] = 0x60 | (self.traffic_class >> 4);
        b[1] = self.traffic_class << 4;
        b[2] = 0;
        b[3] = 0;
        b[field::PAYLOAD_LEN].copy_from_slice(&self.payload_len.to_be_bytes());
        b[field::NEXT_HEADER] = self.next_header;
        b[field::HOP_LIMIT] = self.hop_limit;
        b[field::SRC].copy_from_slice(&self.src_addr.octets());
        b[field::DST].copy_from_slice(&self.dst_addr.octets());
    }
}

/// The partial checksum (folded, not complemented; see [`crate::ipv4::checksum`]) of the IPv6
/// pseudo-header upper-layer checksums cover (RFC 8200 §8.1).
pub fn pseudo_header_sum(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, length: u32) -> u16 {
    let mut buf = [0u8; 40];
    buf[0..16].copy_from_slice(&src.octets());
    buf[16..32].copy_from_slice(&dst.octets());
    buf[32..36].copy_from_slice(&length.to_be_bytes());
    buf[39] = next_header;
    crate::ipv4::checksum::data(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let repr = Repr {
            src_addr: "fd00::1".parse().unwrap(),
            dst_addr: "fd00::2".parse().unwrap(),
            next_header: 17,
            traffic_class: 0xb8,
            payload_len: 4,
            hop_limit: 64,
        };
        let mut buf = vec![0u8; HEADER_LEN + 4 + 3];
        repr.emit(&mut buf);
        buf[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&[1, 2, 3, 4]);
        buf
    }

    #[test]
    fn emit_then_read_back() {
        let buf = sample();
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.src_addr(), "fd00::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(p.dst_addr(), "fd00::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(p.next_header(), 17);
        assert_eq!(p.traffic_class(), 0xb8);
        assert_eq!(p.hop_limit(), 64);
        assert_eq!(p.payload(), &[1, 2, 3, 4]);
        assert_eq!(
            p.packet().len(),
            HEADER_LEN + 4,
            "padding is not part of it"
        );
    }

    #[test]
    fn short_wrong_version_or_truncated_is_refused() {
        let buf = sample();
        assert!(Packet::new_checked(&buf[..HEADER_LEN - 1]).is_err());
        assert!(Packet::new_checked(&buf[..HEADER_LEN + 3]).is_err());
        let mut v4 = buf.clone();
        v4[0] = 0x45;
        assert!(Packet::new_checked(&v4[..]).is_err());
    }
}
