//! Layer: pure logic. What the send side does with a frame longer than the path to a neighbour
//! allows, as Weave's sleeve did: answer an IPv4 packet that forbids fragmentation with an ICMP
//! "fragmentation needed" to its sender, fragment an IPv4 packet that allows it, drop the rest.
//!
//! The control plane probes each neighbour's underlay path and tells the data plane the longest
//! inner Ethernet frame that fits it (`max_frame`: Ethernet header included, VXLAN header and
//! crypto overhead excluded). A frame (or each segment of a TAP super-frame) within that length
//! is sent as always. For one that is longer, [`oversize`] says which of three things to do:
//!
//! - [`Oversize::FragNeeded`]: IPv4 with DF set. [`frag_needed`] writes an Ethernet frame holding
//!   an ICMP destination-unreachable, code 4, back to the sender: Ethernet and IP addresses
//!   swapped, next-hop MTU `max_frame - 14` (RFC 1191), the original's IP header and first 8
//!   payload bytes quoted (RFC 792). The driver writes it to the TAP and drops the frame; the
//!   container's kernel lowers its path MTU and sends smaller packets. A TCP super-frame gets one
//!   message for the whole read.
//! - [`Oversize::Fragment`]: IPv4 without DF, an existing fragment included. The [`Fragmenter`]
//!   cuts it into IPv4 fragments that each fit (RFC 791: offsets in 8-byte units, MF on all but
//!   the last, the original's MF kept on the last, the identification kept, the header checksum
//!   recomputed); the receiving container reassembles them.
//! - [`Oversize::FragNeeded`] too for IPv6, which no router fragments: [`frag_needed`] writes an
//!   ICMPv6 "Packet Too Big" (RFC 4443 §3.2) with the MTU `max_frame - 14`, quoting as much of
//!   the packet as fits in 1280 bytes, from the original's destination to its source; the
//!   container's kernel then fragments at the source (RFC 8200 §5).
//! - [`Oversize::Drop`]: anything else (ARP, 802.1Q-tagged, other EtherTypes, unreadable IP),
//!   and packets that must not be answered with an ICMP error (see [`oversize`]). The driver
//!   counts it.
//!
//! Nothing here allocates: [`frag_needed`] and [`Fragmenter::next_into`] write into caller
//! buffers.
//!
//! **IP options** go whole into the first fragment and, into the others, only those with the
//! "copied" flag (RFC 791 §3.2: security, source routes); a malformed option list is not copied
//! past the first fragment at all.

use thiserror::Error;
use weft_wire::ethernet::{self, EtherType};
use weft_wire::ipv4::{self, Protocol};
use weft_wire::{icmpv4, icmpv6, ipv6};

/// Length of the Ethernet header in front of every frame this module handles.
pub const ETH_HLEN: usize = ethernet::HEADER_LEN;

/// The longest frame [`frag_needed`] writes: an ICMPv6 "Packet Too Big" of the IPv6 minimum
/// MTU in Ethernet (the IPv4 message, at most 14 + 20 + 8 + 60 + 8 bytes, is shorter).
pub const FRAG_NEEDED_MAX_LEN: usize = ETH_HLEN + ipv6::MIN_MTU;
const _: () = assert!(
    ETH_HLEN + ipv4::HEADER_LEN + icmpv4::HEADER_LEN + MAX_IP_HLEN + QUOTED_PAYLOAD
        <= FRAG_NEEDED_MAX_LEN
);

/// The longest IPv4 header (IHL 15).
const MAX_IP_HLEN: usize = 60;
/// Payload bytes of the original datagram an ICMP error quotes (RFC 792).
const QUOTED_PAYLOAD: usize = 8;
/// TTL of the ICMP messages written back to the TAP.
const ICMP_TTL: u8 = 64;
/// The largest fragment offset, in bytes (13 bits of 8-byte units).
const MAX_FRAG_OFFSET: usize = 0x1fff * 8;

/// Whether a frame of `len` bytes fits a path whose limit is `max_frame` (`None`: no limit).
pub fn fits(len: usize, max_frame: Option<u16>) -> bool {
    max_frame.is_none_or(|max| len <= usize::from(max))
}

/// What to do with a frame that does not fit the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Oversize {
    /// IPv4 with DF set: answer with [`frag_needed`] and drop the frame.
    FragNeeded,
    /// IPv4 without DF: send it as fragments cut by the [`Fragmenter`].
    Fragment,
    /// Drop it (and count it).
    Drop,
}

/// Why a frame cannot be fragmented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FragmentError {
    /// Not an Ethernet II frame carrying a readable IPv4 packet with a correct header checksum.
    #[error("not a valid IPv4 packet")]
    NotIpv4,
    /// The packet has DF set.
    #[error("the packet must not be fragmented (DF)")]
    DontFragment,
    /// The limit leaves no room for the header and 8 bytes of payload.
    #[error("the path is too small for any fragment")]
    TooSmall,
    /// The fragment offsets would not fit the 13-bit field.
    #[error("fragment offset out of range")]
    OffsetRange,
}

/// The IPv4 packet of an Ethernet II frame, checked (lengths, version 4), or `None`.
fn ipv4_of(frame: &[u8]) -> Option<ipv4::Packet<&[u8]>> {
    if ethernet::ethertype_of(frame)? != EtherType::Ipv4 {
        return None;
    }
    let ip = ipv4::Packet::new_checked(frame.get(ETH_HLEN..)?).ok()?;
    (ip.version() == 4).then_some(ip)
}

/// Decides what to do with `frame`, an Ethernet frame longer than the path allows.
///
/// A DF packet is answered only when an ICMP error about it is allowed (RFC 1122 §3.2.2): its
/// source MAC and IP are unicast, its destination MAC and IP are not broadcast or multicast, it
/// is not a non-first fragment and not itself an ICMP error. Otherwise it is dropped.
pub fn oversize(frame: &[u8]) -> Oversize {
    if let Some(ip) = ipv6_of(frame) {
        return if may_answer_v6(frame, &ip) {
            Oversize::FragNeeded
        } else {
            Oversize::Drop
        };
    }
    let Some(ip) = ipv4_of(frame) else {
        return Oversize::Drop;
    };
    if !ip.dont_frag() {
        return Oversize::Fragment;
    }
    if may_answer(frame, &ip) {
        Oversize::FragNeeded
    } else {
        Oversize::Drop
    }
}

/// The IPv6 packet of an Ethernet II frame, checked (lengths, version 6), or `None`.
fn ipv6_of(frame: &[u8]) -> Option<ipv6::Packet<&[u8]>> {
    if ethernet::ethertype_of(frame)? != EtherType::Ipv6 {
        return None;
    }
    ipv6::Packet::new_checked(frame.get(ETH_HLEN..)?).ok()
}

/// Whether both MACs of `frame` are unicast and set (an error goes back to one host).
fn unicast_macs(frame: &[u8]) -> bool {
    let (Some(src), Some(dst)) = (ethernet::src_of(frame), ethernet::dst_of(frame)) else {
        return false;
    };
    src.is_unicast() && !src.is_zero() && dst.is_unicast() && !dst.is_zero()
}

/// Whether an ICMPv6 error may be sent about `ip`, the packet of `frame` (RFC 4443 §2.4 e):
/// unicast MACs, a unicast source, a unicast destination (the answer comes from it), and not
/// itself an ICMPv6 error. Extension headers are walked to find the upper layer; a non-first
/// fragment hides it and may be answered.
fn may_answer_v6(frame: &[u8], ip: &ipv6::Packet<&[u8]>) -> bool {
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    if !unicast_macs(frame) || src.is_unspecified() || src.is_multicast() || dst.is_multicast() {
        return false;
    }
    let mut next = ip.next_header();
    let mut rest = ip.payload();
    // At most a few extension headers: a packet stacking more is dropped, not answered.
    for _ in 0..8 {
        match next {
            ipv6::NEXT_HEADER_ICMPV6 => {
                return icmpv6::msg_type_of(rest).is_some_and(|t| !icmpv6::is_error(t));
            }
            // Hop-by-hop options, routing, destination options: (length + 1) × 8 bytes.
            0 | 43 | 60 => {
                let (Some(&n), Some(&len)) = (rest.first(), rest.get(1)) else {
                    return false;
                };
                let skip = (usize::from(len) + 1) * 8;
                let Some(after) = rest.get(skip..) else {
                    return false;
                };
                (next, rest) = (n, after);
            }
            // Fragment: 8 bytes; past the first fragment the upper layer is not here.
            44 => {
                let (Some(&n), Some(off)) = (rest.first(), rest.get(2..4)) else {
                    return false;
                };
                if u16::from_be_bytes([off[0], off[1]]) >> 3 != 0 {
                    return true;
                }
                let Some(after) = rest.get(8..) else {
                    return false;
                };
                (next, rest) = (n, after);
            }
            _ => return true,
        }
    }
    false
}

/// Whether an ICMP error may be sent about `ip`, the packet of `frame`.
fn may_answer(frame: &[u8], ip: &ipv4::Packet<&[u8]>) -> bool {
    if !unicast_macs(frame) {
        return false;
    }
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    if src.is_unspecified()
        || src.is_broadcast()
        || src.is_multicast()
        || dst.is_broadcast()
        || dst.is_multicast()
    {
        return false;
    }
    if ip.frag_offset() != 0 {
        return false;
    }
    if ip.protocol() == Protocol::Icmp {
        // Only query messages (echo and the like) may be answered with an error; an empty or
        // error message may not.
        return matches!(
            ip.payload().first(),
            Some(0 | 8 | 13 | 14 | 15 | 16 | 17 | 18)
        );
    }
    true
}

/// Writes into `out` the Ethernet frame carrying an ICMP "fragmentation needed" (type 3, code 4)
/// for `frame`, an IPv4 packet with DF set that does not fit a path of `max_frame`: from the
/// original's destination (MAC and IP) to its source, with the original's DSCP, next-hop MTU
/// `max_frame - 14`, quoting the original's IP header and first 8 payload bytes. Returns its length, or `None` when
/// [`oversize`] would not say [`Oversize::FragNeeded`] for `frame`.
///
/// # Panics
/// If `out` is shorter than [`FRAG_NEEDED_MAX_LEN`].
pub fn frag_needed(frame: &[u8], max_frame: u16, out: &mut [u8]) -> Option<usize> {
    assert!(
        out.len() >= FRAG_NEEDED_MAX_LEN,
        "frag-needed buffer shorter than FRAG_NEEDED_MAX_LEN"
    );
    if let Some(ip) = ipv6_of(frame) {
        return packet_too_big(frame, &ip, max_frame, out);
    }
    let ip = ipv4_of(frame)?;
    if !ip.dont_frag() || !may_answer(frame, &ip) {
        return None;
    }
    let eth_in = ethernet::Frame::new_checked(frame).ok()?;
    let mtu = max_frame.saturating_sub(ETH_HLEN as u16);
    // Quote from the IP packet as the sender built it (Ethernet padding excluded).
    let original = &frame[ETH_HLEN..ETH_HLEN + usize::from(ip.total_len())];
    let icmp = icmpv4::Repr::frag_needed(mtu, original);
    let ip_repr = ipv4::Repr {
        src_addr: ip.dst_addr(),
        dst_addr: ip.src_addr(),
        protocol: Protocol::Icmp,
        payload_len: icmp.buffer_len(),
        ttl: ICMP_TTL,
        dont_frag: false,
    };
    let eth = ethernet::Repr {
        src_addr: eth_in.dst_addr(),
        dst_addr: eth_in.src_addr(),
        ethertype: EtherType::Ipv4,
    };
    let ip_start = ETH_HLEN;
    let icmp_start = ip_start + ip_repr.buffer_len();
    let end = icmp_start + icmp.buffer_len();
    eth.emit(&mut ethernet::Frame::new_unchecked(&mut out[..ip_start]));
    let mut ip_out = ipv4::Packet::new_unchecked(&mut out[ip_start..end]);
    ip_repr.emit(&mut ip_out);
    // The original's traffic class, as Weave's sleeve kept it (ECN not: an error is not ECT).
    ip_out.set_dscp(ip.dscp());
    ip_out.fill_checksum();
    icmp.emit(&mut icmpv4::Packet::new_unchecked(
        &mut out[icmp_start..end],
    ));
    Some(end)
}

/// [`frag_needed`] for IPv6: an ICMPv6 "Packet Too Big" for `ip`, the packet of `frame`.
fn packet_too_big(
    frame: &[u8],
    ip: &ipv6::Packet<&[u8]>,
    max_frame: u16,
    out: &mut [u8],
) -> Option<usize> {
    if !may_answer_v6(frame, ip) {
        return None;
    }
    let eth_in = ethernet::Frame::new_checked(frame).ok()?;
    let msg = icmpv6::PacketTooBig {
        mtu: u32::from(max_frame.saturating_sub(ETH_HLEN as u16)),
        invoking: ip.packet(),
    };
    let (src, dst) = (ip.dst_addr(), ip.src_addr());
    let ip_repr = ipv6::Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: ipv6::NEXT_HEADER_ICMPV6,
        // The original's DSCP (not its ECN: an error is not ECN-capable), as for IPv4.
        traffic_class: ip.traffic_class() & 0xfc,
        payload_len: msg.buffer_len() as u16,
        hop_limit: ICMP_TTL,
    };
    let eth = ethernet::Repr {
        src_addr: eth_in.dst_addr(),
        dst_addr: eth_in.src_addr(),
        ethertype: EtherType::Ipv6,
    };
    let icmp_start = ETH_HLEN + ip_repr.buffer_len();
    let end = icmp_start + msg.buffer_len();
    eth.emit(&mut ethernet::Frame::new_unchecked(&mut out[..ETH_HLEN]));
    ip_repr.emit(&mut out[ETH_HLEN..icmp_start]);
    msg.emit(src, dst, &mut out[icmp_start..end]);
    Some(end)
}

/// Cuts an IPv4 packet without DF (in an Ethernet frame) into fragments of at most `max_frame`
/// bytes each, Ethernet header included, written one at a time into caller buffers.
///
/// Every fragment carries the original Ethernet header and IP header (options included), with
/// the total length, MF flag, fragment offset and header checksum rewritten. An existing
/// fragment is cut the same way: offsets continue from its own, and its MF is kept on the last
/// piece. Ethernet padding after the IP packet is not sent.
#[derive(Debug, Clone)]
pub struct Fragmenter<'a> {
    frame: &'a [u8],
    /// End of the IP header in `frame`.
    hdr_end: usize,
    /// End of the IP packet in `frame`.
    end: usize,
    /// Offset in `frame` of the next piece of payload.
    next: usize,
    /// Payload bytes per fragment but the last (a multiple of 8).
    chunk: usize,
    /// The original's fragment offset, in bytes.
    offset0: usize,
    /// The original's MF flag.
    more0: bool,
    remaining: usize,
    /// The options of every fragment but the first: those with the "copied" flag, padded to
    /// a multiple of 4 bytes with end-of-list.
    later_opts: [u8; MAX_IP_HLEN - ipv4::HEADER_LEN],
    later_opts_len: usize,
}

/// The options of `opts` (an IPv4 header's) that RFC 791 copies into every fragment, padded
/// with end-of-list to a multiple of 4, in `out`; returns their length. Malformed lists give
/// none.
fn copied_options(opts: &[u8], out: &mut [u8; MAX_IP_HLEN - ipv4::HEADER_LEN]) -> usize {
    let mut len = 0;
    let mut i = 0;
    while i < opts.len() {
        match opts[i] {
            0 => break,  // end of list
            1 => i += 1, // no-operation: not copied
            kind => {
                let Some(&olen) = opts.get(i + 1) else {
                    return 0;
                };
                let olen = usize::from(olen);
                if olen < 2 || i + olen > opts.len() {
                    return 0;
                }
                if kind & 0x80 != 0 {
                    out[len..len + olen].copy_from_slice(&opts[i..i + olen]);
                    len += olen;
                }
                i += olen;
            }
        }
    }
    let padded = len.div_ceil(4) * 4;
    out[len..padded].fill(0);
    padded
}

impl<'a> Fragmenter<'a> {
    /// Checks `frame` (Ethernet II, IPv4, DF clear, header checksum correct) and prepares the
    /// cut for fragments of at most `max_frame` bytes.
    pub fn new(frame: &'a [u8], max_frame: u16) -> Result<Self, FragmentError> {
        let ip = ipv4_of(frame).ok_or(FragmentError::NotIpv4)?;
        if !ip.verify_checksum() {
            return Err(FragmentError::NotIpv4);
        }
        if ip.dont_frag() {
            return Err(FragmentError::DontFragment);
        }
        let hdr_end = ETH_HLEN + usize::from(ip.header_len());
        let end = ETH_HLEN + usize::from(ip.total_len());
        let room = usize::from(max_frame).saturating_sub(hdr_end);
        let chunk = room & !7;
        if chunk < 8 {
            return Err(FragmentError::TooSmall);
        }
        let payload = end - hdr_end;
        let offset0 = usize::from(ip.frag_offset());
        // The last piece starts below offset0 + payload; its offset must fit the field.
        let last_start = offset0 + payload.saturating_sub(1) / chunk * chunk;
        if last_start > MAX_FRAG_OFFSET {
            return Err(FragmentError::OffsetRange);
        }
        let mut later_opts = [0u8; MAX_IP_HLEN - ipv4::HEADER_LEN];
        let later_opts_len = copied_options(ip.options(), &mut later_opts);
        Ok(Self {
            frame,
            hdr_end,
            end,
            next: hdr_end,
            chunk,
            offset0,
            more0: ip.more_frags(),
            // A header-only packet still goes out, as one piece.
            remaining: payload.div_ceil(chunk).max(1),
            later_opts,
            later_opts_len,
        })
    }

    /// The length of the longest fragment [`next_into`](Self::next_into) writes: the size `out`
    /// needs. Never more than the `max_frame` given to [`new`](Self::new).
    pub fn fragment_len_max(&self) -> usize {
        self.hdr_end + self.chunk.min(self.end - self.hdr_end)
    }

    /// How many fragments are still to come.
    pub fn remaining(&self) -> usize {
        self.remaining
    }

    /// Writes the next fragment (Ethernet frame) into `out`; returns its length, `None` when
    /// done.
    ///
    /// # Panics
    /// If `out` is shorter than the fragment (size it with
    /// [`fragment_len_max`](Self::fragment_len_max)).
    pub fn next_into(&mut self, out: &mut [u8]) -> Option<usize> {
        if self.remaining == 0 {
            return None;
        }
        let piece = self.chunk.min(self.end - self.next);
        let offset = self.offset0 + (self.next - self.hdr_end);
        // The first fragment of the datagram keeps every option, the others the copied ones.
        let hdr_end = if offset == 0 {
            self.hdr_end
        } else {
            ETH_HLEN + ipv4::HEADER_LEN + self.later_opts_len
        };
        let len = hdr_end + piece;
        assert!(
            out.len() >= len,
            "fragment buffer shorter than fragment_len_max"
        );
        let fixed = ETH_HLEN + ipv4::HEADER_LEN;
        out[..fixed].copy_from_slice(&self.frame[..fixed]);
        if offset == 0 {
            out[fixed..hdr_end].copy_from_slice(&self.frame[fixed..hdr_end]);
        } else {
            out[fixed..hdr_end].copy_from_slice(&self.later_opts[..self.later_opts_len]);
        }
        out[hdr_end..len].copy_from_slice(&self.frame[self.next..self.next + piece]);
        let last = self.remaining == 1;
        let mut ip = ipv4::Packet::new_unchecked(&mut out[ETH_HLEN..len]);
        // At most 60: the copied options are a subset of the original's.
        ip.set_header_len((hdr_end - ETH_HLEN) as u8);
        // Both fit 16 bits: `len - ETH_HLEN` is at most the original's total length, and `new`
        // checked the offsets against the 13-bit field.
        ip.set_total_len((len - ETH_HLEN) as u16);
        ip.set_more_frags(!last || self.more0);
        ip.set_frag_offset(offset as u16);
        ip.fill_checksum();
        self.next += piece;
        self.remaining -= 1;
        Some(len)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use proptest::prelude::*;
    use weft_wire::ethernet::Address;
    use weft_wire::icmpv4::{Message, Unreachable};

    use super::*;
    use crate::offload::{GsoType, Segmenter, VnetHdr, tcp_checksum_valid};

    const SRC_MAC: Address = Address([0x02, 0, 0, 0, 0, 0x01]);
    const DST_MAC: Address = Address([0x02, 0, 0, 0, 0, 0x02]);
    const SRC_IP: Ipv4Addr = Ipv4Addr::new(10, 32, 0, 1);
    const DST_IP: Ipv4Addr = Ipv4Addr::new(10, 40, 0, 2);

    /// An Ethernet/IPv4 frame with `payload` (of protocol `proto`), ident 0x1234, options
    /// `options` (a multiple of 4 bytes), and the given DF / MF / offset (bytes).
    fn frame(
        proto: Protocol,
        payload: &[u8],
        options: &[u8],
        df: bool,
        mf: bool,
        offset: u16,
    ) -> Vec<u8> {
        let ihl = ipv4::HEADER_LEN + options.len();
        let mut f = vec![0u8; ETH_HLEN + ihl + payload.len()];
        ethernet::Repr {
            src_addr: SRC_MAC,
            dst_addr: DST_MAC,
            ethertype: EtherType::Ipv4,
        }
        .emit(&mut ethernet::Frame::new_unchecked(&mut f[..]));
        let mut ip = ipv4::Packet::new_unchecked(&mut f[ETH_HLEN..]);
        ip.set_version(4);
        ip.set_header_len(ihl as u8);
        ip.set_total_len((ihl + payload.len()) as u16);
        ip.set_ident(0x1234);
        ip.clear_flags();
        ip.set_dont_frag(df);
        ip.set_more_frags(mf);
        ip.set_frag_offset(offset);
        ip.set_ttl(63);
        ip.set_protocol(proto);
        ip.set_src_addr(SRC_IP);
        ip.set_dst_addr(DST_IP);
        f[ETH_HLEN + ipv4::HEADER_LEN..ETH_HLEN + ihl].copy_from_slice(options);
        f[ETH_HLEN + ihl..].copy_from_slice(payload);
        ipv4::Packet::new_unchecked(&mut f[ETH_HLEN..]).fill_checksum();
        f
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// Cuts `f` for `max` and checks every fragment as a receiver would; returns
    /// (offset, MF, payload) of each.
    fn fragments(f: &[u8], max: u16) -> Vec<(usize, bool, Vec<u8>)> {
        let mut cut = Fragmenter::new(f, max).unwrap();
        let count = cut.remaining();
        assert!(cut.fragment_len_max() <= usize::from(max));
        let mut buf = vec![0u8; cut.fragment_len_max()];
        let mut out = Vec::new();
        let orig = ipv4::Packet::new_checked(&f[ETH_HLEN..]).unwrap();
        while let Some(n) = cut.next_into(&mut buf) {
            let frag = &buf[..n];
            assert!(n <= usize::from(max), "fragment of {n} bytes over {max}");
            assert_eq!(frag[..ETH_HLEN], f[..ETH_HLEN], "Ethernet header kept");
            let ip = ipv4::Packet::new_checked(&frag[ETH_HLEN..]).unwrap();
            assert_eq!(usize::from(ip.total_len()), n - ETH_HLEN);
            assert!(ip.verify_checksum());
            assert!(!ip.dont_frag());
            assert_eq!(ip.ident(), orig.ident());
            assert_eq!(ip.src_addr(), orig.src_addr());
            assert_eq!(ip.dst_addr(), orig.dst_addr());
            assert_eq!(ip.protocol(), orig.protocol());
            assert_eq!(ip.ttl(), orig.ttl());
            if ip.frag_offset() == 0 {
                assert_eq!(ip.options(), orig.options());
            } else {
                let mut copied = [0u8; MAX_IP_HLEN - ipv4::HEADER_LEN];
                let n = copied_options(orig.options(), &mut copied);
                assert_eq!(
                    ip.options(),
                    &copied[..n],
                    "only copied options after the first"
                );
            }
            assert_eq!(ip.frag_offset() % 8, 0);
            out.push((
                usize::from(ip.frag_offset()),
                ip.more_frags(),
                ip.payload().to_vec(),
            ));
        }
        assert_eq!(out.len(), count);
        assert_eq!(cut.remaining(), 0);
        out
    }

    /// Reassembles pieces as a receiver would (contiguous, MF on all but the last).
    fn reassemble(pieces: &[(usize, bool, Vec<u8>)], start: usize) -> Vec<u8> {
        let mut data = Vec::new();
        for (i, (offset, more, payload)) in pieces.iter().enumerate() {
            assert_eq!(*offset, start + data.len(), "piece {i} contiguous");
            if i + 1 < pieces.len() {
                assert!(more, "MF on piece {i}");
            }
            data.extend_from_slice(payload);
        }
        data
    }

    #[test]
    fn small_frames_fit_untouched() {
        assert!(fits(1514, None));
        assert!(fits(650, Some(650)));
        assert!(!fits(651, Some(650)));
    }

    #[test]
    fn df_frame_gets_frag_needed() {
        let payload = pattern(1400);
        let mut f = frame(Protocol::Udp, &payload, &[], true, false, 0);
        let mut ip = ipv4::Packet::new_unchecked(&mut f[ETH_HLEN..]);
        ip.set_dscp(46);
        ip.fill_checksum();
        assert_eq!(oversize(&f), Oversize::FragNeeded);
        let mut out = [0u8; FRAG_NEEDED_MAX_LEN];
        let n = frag_needed(&f, 650, &mut out).unwrap();
        let reply = &out[..n];
        assert_eq!(n, ETH_HLEN + 20 + 8 + 20 + 8);

        let eth = ethernet::Frame::new_checked(reply).unwrap();
        assert_eq!(eth.src_addr(), DST_MAC);
        assert_eq!(eth.dst_addr(), SRC_MAC);
        assert_eq!(eth.ethertype(), EtherType::Ipv4);
        let ip = ipv4::Packet::new_checked(eth.payload()).unwrap();
        let ip_repr = ipv4::Repr::parse(&ip).unwrap();
        assert_eq!(ip_repr.src_addr, DST_IP);
        assert_eq!(ip_repr.dst_addr, SRC_IP);
        assert_eq!(ip_repr.protocol, Protocol::Icmp);
        assert_eq!(ip.dscp(), 46);
        assert_eq!(usize::from(ip.total_len()), n - ETH_HLEN);
        let icmp = icmpv4::Packet::new_checked(ip.payload()).unwrap();
        assert_eq!(icmp.msg_type(), Message::DstUnreachable);
        assert_eq!(icmp.msg_code(), 4);
        assert!(icmp.verify_checksum());
        assert_eq!(
            icmpv4::Repr::parse(&icmp).unwrap(),
            icmpv4::Repr::DstUnreachable {
                reason: Unreachable::FragRequired,
                next_hop_mtu: 636,
                // RFC 792: the original IP header and its first 8 payload bytes.
                data: &f[ETH_HLEN..ETH_HLEN + 28],
            }
        );
    }

    #[test]
    fn frag_needed_quotes_options() {
        let f = frame(Protocol::Tcp, &pattern(2000), &[1, 1, 1, 0], true, false, 0);
        let mut out = [0u8; FRAG_NEEDED_MAX_LEN];
        let n = frag_needed(&f, 1000, &mut out).unwrap();
        let ip = ipv4::Packet::new_checked(&out[ETH_HLEN..n]).unwrap();
        let icmp = icmpv4::Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum());
        assert_eq!(icmp.next_hop_mtu(), 986);
        assert_eq!(icmp.payload(), &f[ETH_HLEN..ETH_HLEN + 24 + 8]);
    }

    #[test]
    fn no_icmp_error_where_forbidden() {
        let big = pattern(1400);
        let mut out = [0u8; FRAG_NEEDED_MAX_LEN];
        let mut cases = Vec::new();
        // An ICMP error (destination unreachable) is not answered with another one.
        let mut unreachable = big.clone();
        unreachable[0] = 3;
        cases.push(frame(Protocol::Icmp, &unreachable, &[], true, false, 0));
        // Broadcast destination MAC, multicast destination IP, unspecified source IP.
        let mut f = frame(Protocol::Udp, &big, &[], true, false, 0);
        f[..6].fill(0xff);
        cases.push(f);
        let mut f = frame(Protocol::Udp, &big, &[], true, false, 0);
        let mut ip = ipv4::Packet::new_unchecked(&mut f[ETH_HLEN..]);
        ip.set_dst_addr(Ipv4Addr::new(224, 0, 0, 251));
        ip.fill_checksum();
        cases.push(f);
        let mut f = frame(Protocol::Udp, &big, &[], true, false, 0);
        let mut ip = ipv4::Packet::new_unchecked(&mut f[ETH_HLEN..]);
        ip.set_src_addr(Ipv4Addr::UNSPECIFIED);
        ip.fill_checksum();
        cases.push(f);
        for (i, f) in cases.iter().enumerate() {
            assert_eq!(oversize(f), Oversize::Drop, "case {i}");
            assert_eq!(frag_needed(f, 650, &mut out), None, "case {i}");
        }
        // An echo request is answered.
        let mut echo = big.clone();
        echo[0] = 8;
        let f = frame(Protocol::Icmp, &echo, &[], true, false, 0);
        assert_eq!(oversize(&f), Oversize::FragNeeded);
        assert!(frag_needed(&f, 650, &mut out).is_some());
    }

    #[test]
    fn non_df_frame_fragments_and_reassembles() {
        let payload = pattern(3000);
        let f = frame(Protocol::Udp, &payload, &[], false, false, 0);
        assert_eq!(oversize(&f), Oversize::Fragment);
        // 650 - 34 = 616 bytes of room, a multiple of 8: 616 per fragment.
        let pieces = fragments(&f, 650);
        assert_eq!(pieces.len(), 5);
        assert!(pieces[..4].iter().all(|p| p.2.len() == 616));
        assert_eq!(pieces[4].2.len(), 3000 - 4 * 616);
        assert!(!pieces.last().unwrap().1, "no MF on the last fragment");
        assert_eq!(reassemble(&pieces, 0), payload);
    }

    #[test]
    fn later_fragments_carry_only_copied_options() {
        // Record route (7, not copied, 7 bytes), a NOP, loose source route (131, copied, 7
        // bytes), end of list: 16 bytes of options.
        let opts = [7, 7, 4, 0, 0, 0, 0, 1, 131, 7, 4, 10, 0, 0, 9, 0];
        let payload = pattern(2000);
        let f = frame(Protocol::Udp, &payload, &opts, false, false, 0);
        let mut cut = Fragmenter::new(&f, 600).unwrap();
        let mut buf = vec![0u8; cut.fragment_len_max()];
        let mut headers = Vec::new();
        while let Some(n) = cut.next_into(&mut buf) {
            let ip = ipv4::Packet::new_checked(&buf[ETH_HLEN..n]).unwrap();
            assert!(ip.verify_checksum());
            headers.push((ip.frag_offset(), ip.options().to_vec()));
        }
        assert_eq!(headers[0], (0, opts.to_vec()), "the first keeps them all");
        for (offset, o) in &headers[1..] {
            assert!(*offset > 0);
            assert_eq!(
                o,
                &[131, 7, 4, 10, 0, 0, 9, 0],
                "the source route only, padded"
            );
        }
        assert_eq!(reassemble(&fragments(&f, 600), 0), payload);
        // A malformed list (an option running past the header) is not copied at all.
        let bad = [131, 12, 4, 10, 0, 0, 9, 0];
        let f = frame(Protocol::Udp, &payload, &bad, false, false, 0);
        let pieces = fragments(&f, 600);
        assert_eq!(reassemble(&pieces, 0), payload);
    }

    #[test]
    fn room_is_rounded_down_to_eight() {
        let payload = pattern(100);
        let f = frame(Protocol::Udp, &payload, &[1, 1, 1, 0], false, false, 0);
        // 14 + 24 + 45 = 83: 45 bytes of room, 40 used.
        let pieces = fragments(&f, 83);
        assert_eq!(
            pieces.iter().map(|p| p.2.len()).collect::<Vec<_>>(),
            [40, 40, 20]
        );
        assert_eq!(reassemble(&pieces, 0), payload);
    }

    #[test]
    fn existing_fragment_is_fragmented_again() {
        // A middle fragment: offset 1480, MF set. Its pieces continue from 1480 and all keep MF.
        let payload = pattern(1480);
        let f = frame(Protocol::Udp, &payload, &[], false, true, 1480);
        assert_eq!(oversize(&f), Oversize::Fragment);
        let pieces = fragments(&f, 600);
        assert!(pieces.iter().all(|p| p.1), "MF kept on every piece");
        assert_eq!(pieces[0].0, 1480);
        assert_eq!(reassemble(&pieces, 1480), payload);
        // The last fragment of a datagram: MF only on the new pieces before the last.
        let f = frame(Protocol::Udp, &payload, &[], false, false, 2960);
        let pieces = fragments(&f, 600);
        assert!(!pieces.last().unwrap().1);
        assert_eq!(reassemble(&pieces, 2960), payload);
    }

    #[test]
    fn padding_is_not_sent() {
        let mut f = frame(Protocol::Udp, &pattern(1000), &[], false, false, 0);
        f.extend_from_slice(&[0xee; 30]);
        let pieces = fragments(&f, 600);
        assert_eq!(reassemble(&pieces, 0), pattern(1000));
    }

    #[test]
    fn fragmenter_refusals() {
        let f = frame(Protocol::Udp, &pattern(1000), &[], true, false, 0);
        assert_eq!(
            Fragmenter::new(&f, 600).unwrap_err(),
            FragmentError::DontFragment
        );
        let f = frame(Protocol::Udp, &pattern(1000), &[], false, false, 0);
        // 14 + 20 + 7: no room for 8 bytes.
        assert_eq!(
            Fragmenter::new(&f, 41).unwrap_err(),
            FragmentError::TooSmall
        );
        assert!(Fragmenter::new(&f, 42).is_ok());
        let mut bad = f.clone();
        bad[ETH_HLEN + 10] ^= 0xff;
        assert_eq!(
            Fragmenter::new(&bad, 600).unwrap_err(),
            FragmentError::NotIpv4
        );
        // Offsets past the 13-bit field.
        let f = frame(Protocol::Udp, &pattern(1000), &[], false, true, 65000);
        assert_eq!(
            Fragmenter::new(&f, 300).unwrap_err(),
            FragmentError::OffsetRange
        );
    }

    #[test]
    fn non_ip_too_big_is_dropped() {
        let mut arp = vec![0u8; 1500];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        let mut ipv6 = vec![0u8; 1500];
        ipv6[12..14].copy_from_slice(&[0x86, 0xdd]);
        ipv6[14] = 0x60;
        let mut vlan = frame(Protocol::Udp, &pattern(1400), &[], false, false, 0);
        vlan[12..14].copy_from_slice(&[0x81, 0x00]);
        let mut v6_in_v4 = frame(Protocol::Udp, &pattern(1400), &[], false, false, 0);
        v6_in_v4[ETH_HLEN] = 0x65;
        for (name, f) in [
            ("arp", arp),
            ("ipv6 from nowhere (zero MACs, unspecified source)", ipv6),
            ("vlan", vlan),
            ("bad version", v6_in_v4),
            ("runt", vec![0u8; 10]),
        ] {
            assert_eq!(oversize(&f), Oversize::Drop, "{name}");
            assert!(Fragmenter::new(&f, 600).is_err(), "{name}");
            assert_eq!(
                frag_needed(&f, 600, &mut [0u8; FRAG_NEEDED_MAX_LEN]),
                None,
                "{name}"
            );
        }
    }

    /// An Ethernet frame with an IPv6 packet from fd00::1 to `dst` (unicast MACs), next header
    /// `next`, traffic class 0xb9, `payload` after the fixed header.
    fn frame_v6(dst: &str, next: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; ETH_HLEN + ipv6::HEADER_LEN + payload.len()];
        f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[12..14].copy_from_slice(&[0x86, 0xdd]);
        ipv6::Repr {
            src_addr: "fd00::1".parse().unwrap(),
            dst_addr: dst.parse().unwrap(),
            next_header: next,
            traffic_class: 0xb9,
            payload_len: payload.len() as u16,
            hop_limit: 64,
        }
        .emit(&mut f[ETH_HLEN..]);
        f[ETH_HLEN + ipv6::HEADER_LEN..].copy_from_slice(payload);
        f
    }

    #[test]
    fn ipv6_too_big_gets_packet_too_big() {
        let f = frame_v6("fd00::2", 17, &pattern(2000));
        assert_eq!(oversize(&f), Oversize::FragNeeded);
        let mut out = [0u8; FRAG_NEEDED_MAX_LEN];
        let n = frag_needed(&f, 663, &mut out).expect("answered");
        assert_eq!(
            n,
            ETH_HLEN + ipv6::MIN_MTU,
            "quotes as much as fits in 1280 bytes"
        );
        let out = &out[..n];
        assert_eq!(&out[0..6], &f[6..12], "back to the sender's MAC");
        assert_eq!(&out[6..12], &f[0..6]);
        assert_eq!(&out[12..14], &[0x86, 0xdd]);
        let ip = ipv6::Packet::new_checked(&out[ETH_HLEN..]).unwrap();
        assert_eq!(
            ip.src_addr(),
            "fd00::2".parse::<std::net::Ipv6Addr>().unwrap()
        );
        assert_eq!(
            ip.dst_addr(),
            "fd00::1".parse::<std::net::Ipv6Addr>().unwrap()
        );
        assert_eq!(ip.next_header(), ipv6::NEXT_HEADER_ICMPV6);
        assert_eq!(ip.traffic_class(), 0xb8, "DSCP kept, ECN not");
        let icmp = ip.payload();
        assert_eq!(icmp[0], icmpv6::PACKET_TOO_BIG);
        assert_eq!(
            u32::from_be_bytes([icmp[4], icmp[5], icmp[6], icmp[7]]),
            649
        );
        assert_eq!(&icmp[8..], &f[ETH_HLEN..ETH_HLEN + icmp.len() - 8]);
        let sum = ipv4::checksum::combine(&[
            ipv6::pseudo_header_sum(ip.src_addr(), ip.dst_addr(), 58, icmp.len() as u32),
            ipv4::checksum::data(icmp),
        ]);
        assert_eq!(sum, 0xffff, "checksum");
    }

    #[test]
    fn no_icmpv6_error_where_forbidden() {
        let echo = [128u8, 0, 0, 0, 0, 1, 0, 1];
        let error = [1u8, 4, 0, 0, 0, 0, 0, 0];
        // An ICMPv6 error behind a hop-by-hop header (8 bytes, next header 58).
        let mut hbh_error = vec![58u8, 0, 0, 0, 0, 0, 0, 0];
        hbh_error.extend_from_slice(&error);
        // A non-first fragment (offset 8) of anything: the upper layer is not visible.
        let later_fragment = [17u8, 0, 0, 8, 0, 0, 0, 1];
        let mut multicast_mac = frame_v6("fd00::2", 17, &pattern(2000));
        multicast_mac[0] = 0x33;
        for (name, f, answered) in [
            ("echo request", frame_v6("fd00::2", 58, &echo), true),
            ("ICMPv6 error", frame_v6("fd00::2", 58, &error), false),
            (
                "ICMPv6 error behind hop-by-hop",
                frame_v6("fd00::2", 0, &hbh_error),
                false,
            ),
            (
                "later fragment",
                frame_v6("fd00::2", 44, &later_fragment),
                true,
            ),
            (
                "multicast destination",
                frame_v6("ff02::1", 17, &pattern(100)),
                false,
            ),
            ("multicast MAC", multicast_mac, false),
            (
                "truncated extension header",
                frame_v6("fd00::2", 60, &[17u8, 9]),
                false,
            ),
        ] {
            let want = if answered {
                Oversize::FragNeeded
            } else {
                Oversize::Drop
            };
            assert_eq!(oversize(&f), want, "{name}");
            let written = frag_needed(&f, 600, &mut [0u8; FRAG_NEEDED_MAX_LEN]).is_some();
            assert_eq!(written, answered, "{name}");
        }
    }

    /// A TCP super-frame as a TAP with TSO hands it over: `data` bytes after a 20-byte TCP
    /// header (sequence number 0x01020304), and its vnet header for segments of 1000 bytes.
    fn tcp_superframe(data: &[u8], df: bool) -> (Vec<u8>, VnetHdr) {
        let mut tcp = vec![0u8; 20];
        tcp[..4].copy_from_slice(&[0x9c, 0x40, 0x14, 0x51]);
        tcp[4..8].copy_from_slice(&[1, 2, 3, 4]);
        tcp[12] = 5 << 4;
        tcp[13] = 0x18;
        tcp.extend_from_slice(data);
        let f = frame(Protocol::Tcp, &tcp, &[], df, false, 0);
        let hdr = VnetHdr {
            gso_type: GsoType::TcpV4,
            gso_size: 1000,
            hdr_len: 54,
            ..VnetHdr::NONE
        };
        (f, hdr)
    }

    #[test]
    fn df_superframe_gets_one_frag_needed_quoting_its_start() {
        let (f, hdr) = tcp_superframe(&pattern(3000), true);
        let seg = Segmenter::new(hdr, &f).unwrap();
        assert!(!fits(seg.segment_len_max(), Some(650)));
        assert_eq!(oversize(&f), Oversize::FragNeeded);
        let mut out = [0u8; FRAG_NEEDED_MAX_LEN];
        let n = frag_needed(&f, 650, &mut out).unwrap();
        let ip = ipv4::Packet::new_checked(&out[ETH_HLEN..n]).unwrap();
        let icmp = icmpv4::Packet::new_checked(ip.payload()).unwrap();
        let quote = icmp.payload();
        // The IP header and the TCP ports and sequence number: what the sender's kernel needs
        // to find the connection and check the segment is in flight.
        assert_eq!(quote.len(), 28);
        assert_eq!(quote[20..28], [0x9c, 0x40, 0x14, 0x51, 1, 2, 3, 4]);
    }

    #[test]
    fn non_df_superframe_segments_are_each_fragmented() {
        let data = pattern(3000);
        let (f, hdr) = tcp_superframe(&data, false);
        assert_eq!(oversize(&f), Oversize::Fragment);
        let mut seg = Segmenter::new(hdr, &f).unwrap();
        assert_eq!(seg.remaining(), 3);
        let mut buf = vec![0u8; seg.segment_len_max()];
        let mut stream = Vec::new();
        while let Some(n) = seg.next_into(&mut buf) {
            let segment = &buf[..n];
            let pieces = fragments(segment, 650);
            assert_eq!(pieces.len(), 2);
            let tcp = reassemble(&pieces, 0);
            // The reassembled segment is the one the segmenter wrote, checksum and all.
            assert_eq!(tcp, segment[ETH_HLEN + 20..]);
            assert_eq!(tcp_checksum_valid(segment), Ok(true));
            stream.extend_from_slice(&tcp[20..]);
        }
        assert_eq!(stream, data);
    }

    proptest! {
        #[test]
        fn any_cut_reassembles(
            len in 0usize..9000,
            max in 42u16..9100,
            opts in 0usize..10,
            offset in 0u16..4000,
            mf: bool,
        ) {
            let options = vec![1u8; opts * 4];
            let payload = pattern(len);
            let offset = offset * 8;
            let f = frame(Protocol::Udp, &payload, &options, false, mf, offset);
            match Fragmenter::new(&f, max) {
                Ok(_) => {
                    let pieces = fragments(&f, max);
                    prop_assert_eq!(pieces.last().unwrap().1, mf);
                    prop_assert_eq!(reassemble(&pieces, usize::from(offset)), payload);
                }
                Err(FragmentError::TooSmall) => {
                    prop_assert!(usize::from(max) < ETH_HLEN + 20 + options.len() + 8);
                }
                Err(e) => prop_assert!(false, "unexpected {e}"),
            }
        }
    }
}
