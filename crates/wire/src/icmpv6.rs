//! ICMPv6 (RFC 4443), as far as weft needs it: the message type of a packet (to tell error
//! messages, which must never be answered with another error, from informational ones) and the
//! "Packet Too Big" message weft writes back to a container whose IPv6 packet does not fit the
//! path to a peer (type 2, code 0, the MTU, and as much of the invoking packet as fits in the
//! IPv6 minimum MTU).
//!
//! **Panic contract:** [`msg_type_of`] reads any bytes. [`PacketTooBig::emit`] panics only if
//! the caller's buffer is shorter than [`PacketTooBig::buffer_len`].

use std::net::Ipv6Addr;

use crate::ipv4::checksum;
use crate::ipv6;

/// Length of the ICMPv6 header of the messages weft writes (type, code, checksum and four
/// type-specific bytes).
pub const HEADER_LEN: usize = 8;

/// Type of "Packet Too Big".
pub const PACKET_TOO_BIG: u8 = 2;

/// The message type of the ICMPv6 message `payload` (an upper-layer payload), if it has one.
pub fn msg_type_of(payload: &[u8]) -> Option<u8> {
    payload.first().copied()
}

/// Whether ICMPv6 type `t` is an error message (types 0–127, RFC 4443 §2.1).
pub const fn is_error(t: u8) -> bool {
    t < 128
}

/// A "Packet Too Big" message (RFC 4443 §3.2) quoting `invoking` (the start of the packet
/// that did not fit), to be sent from `src` to `dst`.
#[derive(Debug, Clone, Copy)]
pub struct PacketTooBig<'a> {
    /// The MTU of the next hop.
    pub mtu: u32,
    /// The invoking packet, IPv6 header first; quoted as far as the message stays within
    /// [`ipv6::MIN_MTU`].
    pub invoking: &'a [u8],
}

impl PacketTooBig<'_> {
    /// The quoted part of the invoking packet.
    fn quoted(&self) -> &[u8] {
        let room = ipv6::MIN_MTU - ipv6::HEADER_LEN - HEADER_LEN;
        &self.invoking[..self.invoking.len().min(room)]
    }

    /// Length of the ICMPv6 message.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + self.quoted().len()
    }

    /// Writes the message into `buf`, its checksum over the pseudo-header of `src` to `dst`.
    pub fn emit(&self, src: Ipv6Addr, dst: Ipv6Addr, buf: &mut [u8]) {
        let len = self.buffer_len();
        let b = &mut buf[..len];
        b[0] = PACKET_TOO_BIG;
        b[1] = 0;
        b[2..4].fill(0);
        b[4..8].copy_from_slice(&self.mtu.to_be_bytes());
        b[HEADER_LEN..].copy_from_slice(self.quoted());
        let sum = checksum::combine(&[
            ipv6::pseudo_header_sum(src, dst, ipv6::NEXT_HEADER_ICMPV6, len as u32),
            checksum::data(b),
        ]);
        b[2..4].copy_from_slice(&(!sum).to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_too_big_checksums_to_zero_and_quotes_within_the_minimum_mtu() {
        let src: Ipv6Addr = "fd00::2".parse().unwrap();
        let dst: Ipv6Addr = "fd00::1".parse().unwrap();
        let invoking: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let msg = PacketTooBig {
            mtu: 1376,
            invoking: &invoking,
        };
        assert_eq!(
            ipv6::HEADER_LEN + msg.buffer_len(),
            ipv6::MIN_MTU,
            "as big as allowed, no bigger"
        );
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.emit(src, dst, &mut buf);
        assert_eq!(buf[0], PACKET_TOO_BIG);
        assert_eq!(u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]), 1376);
        assert_eq!(&buf[HEADER_LEN..], &invoking[..buf.len() - HEADER_LEN]);
        // The receiver's check: the sum over pseudo-header and message is all ones.
        let sum = checksum::combine(&[
            ipv6::pseudo_header_sum(src, dst, ipv6::NEXT_HEADER_ICMPV6, buf.len() as u32),
            checksum::data(&buf),
        ]);
        assert_eq!(sum, 0xffff);
        // A short invoking packet is quoted whole.
        let short = PacketTooBig {
            mtu: 1280,
            invoking: &invoking[..100],
        };
        assert_eq!(short.buffer_len(), HEADER_LEN + 100);
    }

    #[test]
    fn error_types() {
        assert!(is_error(1) && is_error(2) && is_error(127));
        assert!(!is_error(128) && !is_error(129));
        assert_eq!(msg_type_of(&[]), None);
    }
}
