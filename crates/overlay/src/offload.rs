//! Layer: pure logic. TAP offloads, sans-IO: the `virtio_net_hdr` a TAP opened with
//! `IFF_VNET_HDR` puts in front of every frame, TCP segmentation of the super-frames the kernel
//! hands us ("TSO"/"GSO", the [`Segmenter`]), and coalescing of received TCP segments, and of
//! UDP datagrams, into super-frames ("GRO", the [`Coalescer`]).
//!
//! This module owns the 10-byte [`VnetHdr`] codec and the per-frame rewriting of Ethernet / IPv4
//! or IPv6 / TCP headers and checksums. It never touches the device (`crates/sys` does the
//! `TUNSETIFF`/`TUNSETOFFLOAD` calls and the reads and writes) and never allocates per frame: the
//! [`Segmenter`] writes into caller buffers, the [`Coalescer`] owns one buffer allocated once.
//!
//! Why: with `TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)` one TAP read returns up to
//! 64 KiB of one TCP flow, and one TAP write can deliver as much, so the per-syscall cost is
//! paid once per ~45 segments instead of once per segment (how wireguard-go and Tailscale went
//! past 10 Gbit/s). Only TCP is segmented: UDP segmentation offload on reads (`TUN_F_USO*`) is
//! not enabled, so [`GsoType::UdpL4`] from the kernel is an error. Writes are another matter: a
//! TAP takes a UDP super-frame (`VIRTIO_NET_HDR_GSO_UDP_L4`) since Linux 6.2 without any
//! offload flag, and the kernel splits it again only where it must (at the receiving socket),
//! so a run of small datagrams costs one trip through the bridge, veth and netfilter instead of
//! one per datagram.
//!
//! Frames are Ethernet II, optionally with one IEEE 802.1Q tag, carrying IPv4 or IPv6. IPv6
//! extension headers are not walked: a GSO super-frame with one is refused (an error, the caller
//! drops it), and such segments are never coalesced.
//!
//! **Byte order of the vnet header.** The kernel reads and writes the 16-bit fields of
//! `struct virtio_net_hdr` in the *legacy virtio* byte order, which is the host's native order
//! unless `TUNSETVNETLE`/`TUNSETVNETBE` changed it (weft never does); on x86-64 and aarch64 that
//! is little-endian. [`VnetHdr::parse`] and [`VnetHdr::emit`] therefore use native endianness.
//! Everything inside the frame is network order (big-endian), as always.
//!
//! **Fuzzing:** under `cfg(fuzzing)` the [`Coalescer`] skips TCP, UDP and IPv4 header checksum
//! verification (as `weft_wire`'s `verify_checksum`s do), so a fuzzer reaches the merge path
//! without guessing checksums. [`tcp_checksum_valid`] always verifies for real.

use thiserror::Error;

/// Length of `struct virtio_net_hdr` (without the `num_buffers` field of the mergeable-buffers
/// variant, which a TAP does not use unless `TUNSETVNETHDRSZ` asks for 12).
pub const VNET_HDR_LEN: usize = 10;

/// Length of an Ethernet II header.
const ETH_HLEN: usize = 14;
/// Length of an IEEE 802.1Q tag.
const VLAN_HLEN: usize = 4;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const IPV4_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const UDP_HLEN: usize = 8;
/// Where the UDP checksum is, from the start of the UDP header.
const UDP_CSUM_OFFSET: usize = 6;
/// The most datagrams one UDP super-frame written to the TAP holds (the kernel's
/// `UDP_MAX_SEGMENTS` was 64 before Linux 6.15).
const UDP_MAX_SEGMENTS: u32 = 64;
const TCP_HLEN: usize = 20;
/// Offset of the checksum field inside a TCP header (virtio's `csum_offset` for TCP).
const TCP_CSUM_OFFSET: usize = 16;
/// Largest IPv4 total length / IPv6 payload length (no jumbograms).
const IP_MAX_LEN: usize = 65535;

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_PSH: u8 = 0x08;
const TCP_URG: u8 = 0x20;
const TCP_CWR: u8 = 0x80;

/// Why a frame could not be split (the caller counts and drops it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum OffloadError {
    /// The buffer is shorter than the vnet header, or a header or length field points past the
    /// end of the frame.
    #[error("truncated frame or header")]
    Truncated,
    /// The GSO type is not one weft segments (UDP fragmentation or segmentation offload, or an
    /// unknown value); the raw value is kept, without the ECN bit.
    #[error("unsupported GSO type {0}")]
    UnsupportedGso(u8),
    /// A GSO frame that is not Ethernet / IPv4 or IPv6 / TCP as its GSO type says: wrong
    /// EtherType, IP version or protocol, an IPv4 fragment, an IPv6 extension header, or a
    /// header length field out of range.
    #[error("frame headers do not match the GSO type")]
    Malformed,
    /// `csum_start`/`csum_offset` disagree with the parsed headers, or put the checksum field
    /// outside the frame.
    #[error("checksum offsets out of range or inconsistent with the headers")]
    BadChecksumOffset,
    /// A GSO frame with `gso_size` 0.
    #[error("GSO frame with gso_size 0")]
    ZeroGsoSize,
}

/// The kind of segmentation a [`VnetHdr`] asks for (`gso_type` without its ECN bit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GsoType {
    /// `VIRTIO_NET_HDR_GSO_NONE` (0): an ordinary frame.
    None,
    /// `VIRTIO_NET_HDR_GSO_TCPV4` (1).
    TcpV4,
    /// `VIRTIO_NET_HDR_GSO_TCPV6` (4).
    TcpV6,
    /// `VIRTIO_NET_HDR_GSO_UDP_L4` (5): UDP segmentation; weft does not enable it.
    UdpL4,
    /// Anything else, such as 3 (UDP fragmentation offload), kept as-is (without the ECN bit).
    Other(u8),
}

impl GsoType {
    /// The ECN bit of the raw `gso_type` byte (`VIRTIO_NET_HDR_GSO_ECN`).
    pub const ECN_BIT: u8 = 0x80;

    /// Decodes the raw value with the ECN bit already removed.
    pub const fn from_raw(raw: u8) -> Self {
        match raw {
            0 => Self::None,
            1 => Self::TcpV4,
            4 => Self::TcpV6,
            5 => Self::UdpL4,
            other => Self::Other(other),
        }
    }

    /// The raw value, without the ECN bit.
    pub const fn to_raw(self) -> u8 {
        match self {
            Self::None => 0,
            Self::TcpV4 => 1,
            Self::TcpV6 => 4,
            Self::UdpL4 => 5,
            Self::Other(other) => other & !Self::ECN_BIT,
        }
    }
}

/// `struct virtio_net_hdr`: what a TAP with `IFF_VNET_HDR` puts in front of every frame read,
/// and expects in front of every frame written. The 16-bit fields are in native byte order (see
/// the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VnetHdr {
    /// [`Self::NEEDS_CSUM`] and/or [`Self::DATA_VALID`].
    pub flags: u8,
    /// The segmentation asked for.
    pub gso_type: GsoType,
    /// The `VIRTIO_NET_HDR_GSO_ECN` bit of `gso_type`: the super-frame's first segment carries
    /// TCP CWR (the [`Segmenter`] keeps CWR on the first segment only in any case).
    pub ecn: bool,
    /// Length of the headers (Ethernet + IP + TCP) for GSO frames. A hint only: Linux reports
    /// the linear part of the buffer, which may be longer than the headers, so the [`Segmenter`]
    /// uses the header lengths it parses instead.
    pub hdr_len: u16,
    /// Payload bytes per segment (the MSS) for GSO frames.
    pub gso_size: u16,
    /// With [`Self::NEEDS_CSUM`]: where the checksummed data starts (the L4 header).
    pub csum_start: u16,
    /// With [`Self::NEEDS_CSUM`]: where the checksum field is, relative to `csum_start`
    /// (16 for TCP, 6 for UDP).
    pub csum_offset: u16,
}

impl VnetHdr {
    /// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the L4 checksum field holds only the folded pseudo-header
    /// sum; the rest must be summed from `csum_start` on.
    pub const NEEDS_CSUM: u8 = 1;
    /// `VIRTIO_NET_HDR_F_DATA_VALID`: the checksum has been verified (written frames only).
    pub const DATA_VALID: u8 = 2;
    /// An all-zero header: an ordinary frame, checksum complete, nothing verified.
    pub const NONE: Self = Self {
        flags: 0,
        gso_type: GsoType::None,
        ecn: false,
        hdr_len: 0,
        gso_size: 0,
        csum_start: 0,
        csum_offset: 0,
    };

    /// Parses the first [`VNET_HDR_LEN`] bytes of `buf` (the frame follows them).
    pub fn parse(buf: &[u8]) -> Result<Self, OffloadError> {
        let b: &[u8; VNET_HDR_LEN] = buf
            .get(..VNET_HDR_LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or(OffloadError::Truncated)?;
        let u16_at = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        Ok(Self {
            flags: b[0],
            gso_type: GsoType::from_raw(b[1] & !GsoType::ECN_BIT),
            ecn: b[1] & GsoType::ECN_BIT != 0,
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        })
    }

    /// Writes the header in the kernel's layout.
    pub fn emit(&self, out: &mut [u8; VNET_HDR_LEN]) {
        out[0] = self.flags;
        out[1] = self.gso_type.to_raw() | if self.ecn { GsoType::ECN_BIT } else { 0 };
        out[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        out[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        out[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        out[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
    }
}

// ---------------------------------------------------------------------------------------------
// Checksums.

/// The one's complement sum of `data` as big-endian 16-bit words, *unfolded* (an odd trailing
/// byte is padded with zero), at most 34 bits wide. Folds to the same value as
/// `weft_wire::ipv4::checksum::data`: a big-endian 64-bit word is congruent to the sum of its
/// four 16-bit halves modulo 0xffff (2^16 ≡ 1), so the data is summed 8 bytes at a time into a
/// 128-bit accumulator and the end-around carries are folded in at the end. A checksum pass
/// over every TCP segment the data path sends or coalesces, so it is worth being fast.
fn sum_words(data: &[u8]) -> u64 {
    let mut acc: u128 = 0;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        acc += u128::from(u64::from_be_bytes(w));
    }
    let mut words = chunks.remainder().chunks_exact(2);
    for w in &mut words {
        acc += u128::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        acc += u128::from(*last) << 8;
    }
    // 2^64 ≡ 1 and 2^32 ≡ 1 (mod 0xffff): fold to 64, then to at most 34 bits.
    let mut sum = (acc as u64 as u128) + (acc >> 64);
    sum = (sum & 0xffff_ffff_ffff_ffff) + (sum >> 64);
    let sum = sum as u64;
    (sum & 0xffff_ffff) + (sum >> 32)
}

/// Folds an unfolded sum to 16 bits (not complemented).
fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // Exact: the loop leaves at most 16 bits.
    sum as u16
}

/// The unfolded pseudo-header sum for TCP over IPv4 or IPv6, given the L3 header and the TCP
/// length (header + payload).
fn pseudo_sum(ip_header: &[u8], v6: bool, proto: u8, l4_len: usize) -> u64 {
    let addrs = if v6 {
        &ip_header[8..IPV6_HLEN]
    } else {
        &ip_header[12..IPV4_HLEN]
    };
    // IPv4: zero, protocol, 16-bit length. IPv6: 32-bit length, three zero bytes, next header.
    // The length is below 2^32 in both, so its two 16-bit halves are summed.
    sum_words(addrs) + u64::from(proto) + (l4_len as u64 >> 16) + (l4_len as u64 & 0xffff)
}

/// Recomputes an IPv4 header checksum in place.
fn fill_ipv4_checksum(header: &mut [u8]) {
    header[10..12].fill(0);
    let sum = fold(sum_words(header));
    header[10..12].copy_from_slice(&(!sum).to_be_bytes());
}

// ---------------------------------------------------------------------------------------------
// Header parsing.

/// Where the headers of an Ethernet / IP / TCP frame are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TcpLayout {
    /// Offset of the IP header (14, or 18 with a VLAN tag).
    l3: usize,
    /// IPv6 rather than IPv4.
    v6: bool,
    /// Offset of the TCP header.
    l4: usize,
    /// Offset of the payload: all headers included.
    hdr_len: usize,
    /// End of the IP packet (`l3` + total length); bytes after it are Ethernet padding.
    end: usize,
}

/// The offset of the L3 header and the EtherType, after at most one 802.1Q tag.
fn l3_of(frame: &[u8]) -> Option<(usize, u16)> {
    let be16 = |i: usize| -> Option<u16> {
        Some(u16::from_be_bytes([*frame.get(i)?, *frame.get(i + 1)?]))
    };
    match be16(12)? {
        ETHERTYPE_VLAN => Some((ETH_HLEN + VLAN_HLEN, be16(16)?)),
        ethertype => Some((ETH_HLEN, ethertype)),
    }
}

/// The end of the IP packet in an IPv4 or IPv6 frame (before any Ethernet padding), or `None`
/// if the frame is neither or its length fields do not fit.
fn ip_end(frame: &[u8]) -> Option<usize> {
    let (l3, ethertype) = l3_of(frame)?;
    let ip = frame.get(l3..)?;
    let end = match ethertype {
        ETHERTYPE_IPV4 if ip.len() >= IPV4_HLEN && ip[0] >> 4 == 4 => {
            l3 + usize::from(u16::from_be_bytes([ip[2], ip[3]]))
        }
        ETHERTYPE_IPV6 if ip.len() >= IPV6_HLEN && ip[0] >> 4 == 6 => {
            l3 + IPV6_HLEN + usize::from(u16::from_be_bytes([ip[4], ip[5]]))
        }
        _ => return None,
    };
    (end <= frame.len()).then_some(end)
}

/// Parses an Ethernet / IPv4-or-IPv6 / TCP frame. `want_v6` restricts the IP version.
fn parse_tcp(frame: &[u8], want_v6: Option<bool>) -> Result<TcpLayout, OffloadError> {
    parse_l4(frame, want_v6, IPPROTO_TCP)
}

/// [`parse_tcp`] for `proto` TCP or UDP (a UDP header is 8 bytes and its length field must be
/// the IP payload's).
fn parse_l4(frame: &[u8], want_v6: Option<bool>, proto: u8) -> Result<TcpLayout, OffloadError> {
    use OffloadError::{Malformed, Truncated};
    let (l3, ethertype) = l3_of(frame).ok_or(Truncated)?;
    let v6 = match ethertype {
        ETHERTYPE_IPV4 => false,
        ETHERTYPE_IPV6 => true,
        _ => return Err(Malformed),
    };
    if want_v6.is_some_and(|w| w != v6) {
        return Err(Malformed);
    }
    let ip = frame.get(l3..).ok_or(Truncated)?;
    let (ip_hlen, end) = if v6 {
        if ip.len() < IPV6_HLEN {
            return Err(Truncated);
        }
        if ip[0] >> 4 != 6 || ip[6] != proto {
            return Err(Malformed);
        }
        let payload_len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
        (IPV6_HLEN, l3 + IPV6_HLEN + payload_len)
    } else {
        if ip.len() < IPV4_HLEN {
            return Err(Truncated);
        }
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        let frag = u16::from_be_bytes([ip[6], ip[7]]);
        // More Fragments or a fragment offset: not a whole TCP segment.
        if ip[0] >> 4 != 4 || ihl < IPV4_HLEN || total < ihl || ip[9] != proto || frag & 0x3fff != 0
        {
            return Err(Malformed);
        }
        (ihl, l3 + total)
    };
    if end > frame.len() {
        return Err(Truncated);
    }
    let l4 = l3 + ip_hlen;
    if proto == IPPROTO_UDP {
        if l4 + UDP_HLEN > end {
            return Err(Truncated);
        }
        if usize::from(u16::from_be_bytes([frame[l4 + 4], frame[l4 + 5]])) != end - l4 {
            return Err(Malformed);
        }
        return Ok(TcpLayout {
            l3,
            v6,
            l4,
            hdr_len: l4 + UDP_HLEN,
            end,
        });
    }
    if l4 + TCP_HLEN > end {
        return Err(Truncated);
    }
    let tcp_hlen = usize::from(frame[l4 + 12] >> 4) * 4;
    if tcp_hlen < TCP_HLEN {
        return Err(Malformed);
    }
    if l4 + tcp_hlen > end {
        return Err(Truncated);
    }
    Ok(TcpLayout {
        l3,
        v6,
        l4,
        hdr_len: l4 + tcp_hlen,
        end,
    })
}

/// Whether the TCP checksum of a parsed frame verifies (always computed, even when fuzzing).
fn tcp_checksum_ok(frame: &[u8], layout: &TcpLayout) -> bool {
    l4_checksum_ok(frame, layout, IPPROTO_TCP)
}

/// Whether the `proto` (TCP or UDP) checksum of a parsed frame verifies.
fn l4_checksum_ok(frame: &[u8], layout: &TcpLayout, proto: u8) -> bool {
    let l4 = &frame[layout.l4..layout.end];
    let sum = pseudo_sum(&frame[layout.l3..layout.l4], layout.v6, proto, l4.len()) + sum_words(l4);
    fold(sum) == 0xffff
}

/// The IP header checks both kinds of candidate share: IPv6, or IPv4 without options whose
/// header checksum is right (not verified under `cfg(fuzzing)`).
fn plain_ip_header(frame: &[u8], layout: &TcpLayout) -> bool {
    let TcpLayout { l3, v6, l4, .. } = *layout;
    v6 || (l4 - l3 == IPV4_HLEN && (cfg!(fuzzing) || fold(sum_words(&frame[l3..l4])) == 0xffff))
}

/// The frames whose checksum may be left partial between routers: TCP or UDP over IPv4 or
/// IPv6 (no extension headers). Returns the layout, the protocol and the checksum field's
/// offset in the L4 header.
fn partial_layout(frame: &[u8]) -> Result<(TcpLayout, u8, usize), OffloadError> {
    match parse_tcp(frame, None) {
        Ok(layout) => Ok((layout, IPPROTO_TCP, TCP_CSUM_OFFSET)),
        Err(_) => parse_l4(frame, None, IPPROTO_UDP).map(|l| (l, IPPROTO_UDP, UDP_CSUM_OFFSET)),
    }
}

/// Makes a received frame whose checksum the sender left partial
/// ([`Csum::Partial`]) ready to be written to the TAP on its own: its checksum field gets the
/// folded pseudo-header sum, worked out here (what the sender left there is not used), and
/// the returned vnet header says [`VnetHdr::NEEDS_CSUM`] at the TCP or UDP header, so the
/// kernel completes the checksum (or never needs it, for a local socket). Also returns the
/// length to write: the frame up to the end of its IP packet. `Err` if the frame is not TCP
/// or UDP over IPv4 or IPv6: the caller drops it.
pub fn prepare_partial(frame: &mut [u8]) -> Result<(VnetHdr, usize), OffloadError> {
    let (layout, proto, offset) = partial_layout(frame)?;
    let TcpLayout {
        l3, v6, l4, end, ..
    } = layout;
    let pseudo = fold(pseudo_sum(&frame[l3..l4], v6, proto, end - l4));
    frame[l4 + offset..l4 + offset + 2].copy_from_slice(&pseudo.to_be_bytes());
    // Offsets within one received frame (at most a datagram): they fit 16 bits.
    let hdr = VnetHdr {
        flags: VnetHdr::NEEDS_CSUM,
        csum_start: l4 as u16,
        csum_offset: offset as u16,
        ..VnetHdr::NONE
    };
    Ok((hdr, end))
}

/// Completes, in place, the checksum of a received frame whose checksum the sender left
/// partial, for a TAP without vnet headers (where the kernel cannot be asked to). Returns the
/// length to write, as [`prepare_partial`] does; `Err` likewise.
pub fn complete_partial(frame: &mut [u8]) -> Result<usize, OffloadError> {
    let (layout, proto, offset) = partial_layout(frame)?;
    let TcpLayout {
        l3, v6, l4, end, ..
    } = layout;
    frame[l4 + offset..l4 + offset + 2].fill(0);
    let sum = pseudo_sum(&frame[l3..l4], v6, proto, end - l4) + sum_words(&frame[l4..end]);
    let csum = match !fold(sum) {
        // UDP's zero means "no checksum"; for TCP the two are equivalent.
        0 => 0xffff,
        c => c,
    };
    frame[l4 + offset..l4 + offset + 2].copy_from_slice(&csum.to_be_bytes());
    Ok(end)
}

/// Whether `frame` is Ethernet / IPv4 or IPv6 / TCP (IPv6 without extension headers) with a
/// correct TCP checksum. `Err` if it does not parse as such. The IPv4 header checksum is not
/// looked at. Meant for tests, fuzzing and diagnostics; the data path does not need it.
pub fn tcp_checksum_valid(frame: &[u8]) -> Result<bool, OffloadError> {
    let layout = parse_tcp(frame, None)?;
    Ok(tcp_checksum_ok(frame, &layout))
}

// ---------------------------------------------------------------------------------------------
// Segmentation (TAP read -> wire).

/// Splits what one TAP read returned into wire-ready Ethernet frames, each written into a caller
/// buffer.
///
/// - [`GsoType::None`]: one frame, copied as is. With [`VnetHdr::NEEDS_CSUM`], the checksum at
///   `csum_start + csum_offset` is completed: that field holds the folded pseudo-header sum, the
///   data from `csum_start` to the end of the IP packet is summed and the complement stored
///   (a result of 0 is stored as 0xffff, as UDP requires and as is equivalent for TCP).
/// - [`GsoType::TcpV4`] / [`GsoType::TcpV6`]: the TCP payload is cut into `gso_size` chunks; each
///   segment is the headers followed by one chunk, with the IPv4 total length, identification
///   (+ i) and header checksum (or the IPv6 payload length) rewritten, the TCP sequence number
///   advanced, FIN and PSH only on the last segment, CWR only on the first, and the TCP checksum
///   computed from scratch. The header length is parsed, not taken from `hdr_len` (see
///   [`VnetHdr::hdr_len`]); `csum_start`/`csum_offset` must match the parsed TCP header when
///   [`VnetHdr::NEEDS_CSUM`] is set. Bytes after the IP packet's length are ignored.
/// - Anything else: [`Segmenter::new`] returns an error.
///
/// **Partial checksums** ([`leave_checksums_partial`](Self::leave_checksums_partial)): for a
/// receiver that has its own kernel complete them, a TCP split writes each segment's folded
/// pseudo-header sum (not complemented) in the checksum field instead of computing the whole
/// checksum, and a single TCP or UDP frame with [`VnetHdr::NEEDS_CSUM`] is copied as it came:
/// one pass over every byte saved on each side (the receiver does not verify them either).
#[derive(Debug, Clone)]
pub struct Segmenter<'a> {
    frame: &'a [u8],
    mode: Mode,
    /// Checksums are left partial (see above).
    partial: bool,
}

#[derive(Debug, Clone)]
enum Mode {
    /// One frame; `csum` is `(csum_start, field offset, end of checksummed data)`.
    Single {
        csum: Option<(usize, usize, usize)>,
        done: bool,
    },
    Tcp(TcpSplit),
}

#[derive(Debug, Clone)]
struct TcpSplit {
    layout: TcpLayout,
    gso_size: usize,
    /// Offset in the frame of the next chunk of payload.
    next: usize,
    /// Index of the next segment.
    index: u32,
    remaining: usize,
    seq0: u32,
    ip_id0: u16,
    /// Unfolded sum of the source and destination addresses (the varying part of the
    /// pseudo-header is added per segment).
    addr_sum: u64,
}

impl<'a> Segmenter<'a> {
    /// Checks `hdr` against `frame` (the bytes after the vnet header) and prepares the split.
    pub fn new(hdr: VnetHdr, frame: &'a [u8]) -> Result<Self, OffloadError> {
        match hdr.gso_type {
            GsoType::None => Self::single(hdr, frame),
            GsoType::TcpV4 => Self::tcp(hdr, frame, false),
            GsoType::TcpV6 => Self::tcp(hdr, frame, true),
            other => Err(OffloadError::UnsupportedGso(other.to_raw())),
        }
    }

    fn single(hdr: VnetHdr, frame: &'a [u8]) -> Result<Self, OffloadError> {
        if frame.len() < ETH_HLEN {
            return Err(OffloadError::Truncated);
        }
        let csum = if hdr.flags & VnetHdr::NEEDS_CSUM != 0 {
            let end = ip_end(frame).unwrap_or(frame.len());
            let start = usize::from(hdr.csum_start);
            let field = start + usize::from(hdr.csum_offset);
            if start < ETH_HLEN || field + 2 > end {
                return Err(OffloadError::BadChecksumOffset);
            }
            Some((start, field, end))
        } else {
            None
        };
        Ok(Self {
            frame,
            mode: Mode::Single { csum, done: false },
            partial: false,
        })
    }

    fn tcp(hdr: VnetHdr, frame: &'a [u8], v6: bool) -> Result<Self, OffloadError> {
        let layout = parse_tcp(frame, Some(v6))?;
        if hdr.flags & VnetHdr::NEEDS_CSUM != 0
            && (usize::from(hdr.csum_start) != layout.l4
                || usize::from(hdr.csum_offset) != TCP_CSUM_OFFSET)
        {
            return Err(OffloadError::BadChecksumOffset);
        }
        if hdr.gso_size == 0 {
            return Err(OffloadError::ZeroGsoSize);
        }
        let gso_size = usize::from(hdr.gso_size);
        let payload = layout.end - layout.hdr_len;
        // A header-only super-frame is passed on as one header-only segment.
        let remaining = payload.div_ceil(gso_size).max(1);
        let l4 = layout.l4;
        let ip = &frame[layout.l3..l4];
        let addr_sum = if v6 {
            sum_words(&ip[8..IPV6_HLEN])
        } else {
            sum_words(&ip[12..IPV4_HLEN])
        };
        Ok(Self {
            frame,
            mode: Mode::Tcp(TcpSplit {
                layout,
                gso_size,
                next: layout.hdr_len,
                index: 0,
                remaining,
                seq0: u32::from_be_bytes([
                    frame[l4 + 4],
                    frame[l4 + 5],
                    frame[l4 + 6],
                    frame[l4 + 7],
                ]),
                ip_id0: if v6 {
                    0
                } else {
                    u16::from_be_bytes([ip[4], ip[5]])
                },
                addr_sum,
            }),
            partial: false,
        })
    }

    /// The length of the longest segment [`next_into`](Self::next_into) will write: the size
    /// `out` needs.
    pub fn segment_len_max(&self) -> usize {
        match &self.mode {
            Mode::Single { .. } => self.frame.len(),
            Mode::Tcp(t) => t.layout.hdr_len + t.gso_size.min(t.layout.end - t.layout.hdr_len),
        }
    }

    /// From the next segment on, leave the TCP or UDP checksum partial if this read allows it
    /// (see the type's doc): always for a TCP super-frame; for a single frame when it has
    /// [`VnetHdr::NEEDS_CSUM`] and is TCP or UDP over IPv4 or IPv6 with the checksum where
    /// `csum_start`/`csum_offset` say. Returns whether they will be; if not, checksums are
    /// completed as usual.
    pub fn leave_checksums_partial(&mut self) -> bool {
        self.partial = match &self.mode {
            Mode::Tcp(_) => true,
            Mode::Single {
                csum: Some((start, field, end)),
                ..
            } => partial_layout(self.frame)
                .is_ok_and(|(l, _, off)| l.l4 == *start && l.l4 + off == *field && l.end == *end),
            Mode::Single { csum: None, .. } => false,
        };
        self.partial
    }

    /// Whether the segments' checksums are left partial.
    pub fn is_partial(&self) -> bool {
        self.partial
    }

    /// How many segments are still to come.
    pub fn remaining(&self) -> usize {
        match &self.mode {
            Mode::Single { done, .. } => usize::from(!done),
            Mode::Tcp(t) => t.remaining,
        }
    }

    /// Writes the next segment into `out` (which must hold
    /// [`segment_len_max`](Self::segment_len_max) bytes); returns its length, `None` when done.
    ///
    /// # Panics
    /// If `out` is shorter than the segment (a caller bug: size it with `segment_len_max`).
    pub fn next_into(&mut self, out: &mut [u8]) -> Option<usize> {
        match &mut self.mode {
            Mode::Single { csum, done } => {
                if *done {
                    return None;
                }
                *done = true;
                let len = self.frame.len();
                out[..len].copy_from_slice(self.frame);
                if let Some((start, field, end)) = csum.filter(|_| !self.partial) {
                    let sum = !fold(sum_words(&out[start..end]));
                    let value = if sum == 0 { 0xffff } else { sum };
                    out[field..field + 2].copy_from_slice(&value.to_be_bytes());
                }
                Some(len)
            }
            Mode::Tcp(t) => t.next_into(self.frame, out, self.partial),
        }
    }
}

impl TcpSplit {
    fn next_into(&mut self, frame: &[u8], out: &mut [u8], partial: bool) -> Option<usize> {
        if self.remaining == 0 {
            return None;
        }
        let TcpLayout {
            l3,
            v6,
            l4,
            hdr_len,
            end,
        } = self.layout;
        let chunk = self.gso_size.min(end - self.next);
        let len = hdr_len + chunk;
        assert!(
            out.len() >= len,
            "segment buffer shorter than segment_len_max"
        );
        out[..hdr_len].copy_from_slice(&frame[..hdr_len]);
        out[hdr_len..len].copy_from_slice(&frame[self.next..self.next + chunk]);
        let first = self.index == 0;
        let last = self.remaining == 1;
        let tcp_len = len - l4;

        // Lengths fit 16 bits: a segment is never longer than the IP packet it came from.
        if v6 {
            out[l3 + 4..l3 + 6].copy_from_slice(&((tcp_len) as u16).to_be_bytes());
        } else {
            out[l3 + 2..l3 + 4].copy_from_slice(&((len - l3) as u16).to_be_bytes());
            // Truncation intended: the identification wraps.
            let id = self.ip_id0.wrapping_add(self.index as u16);
            out[l3 + 4..l3 + 6].copy_from_slice(&id.to_be_bytes());
            fill_ipv4_checksum(&mut out[l3..l4]);
        }

        // Truncation intended: sequence numbers are modulo 2^32.
        let seq = self.seq0.wrapping_add((self.next - hdr_len) as u32);
        out[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
        let mut flags = out[l4 + 13];
        if !last {
            flags &= !(TCP_FIN | TCP_PSH);
        }
        if !first {
            flags &= !TCP_CWR;
        }
        out[l4 + 13] = flags;
        let pseudo = self.addr_sum + u64::from(IPPROTO_TCP) + tcp_len as u64;
        let csum = if partial {
            fold(pseudo)
        } else {
            out[l4 + 16..l4 + 18].fill(0);
            !fold(pseudo + sum_words(&out[l4..len]))
        };
        out[l4 + 16..l4 + 18].copy_from_slice(&csum.to_be_bytes());

        self.next += chunk;
        self.index += 1;
        self.remaining -= 1;
        Some(len)
    }
}

// ---------------------------------------------------------------------------------------------
// Coalescing (wire -> TAP write).

/// How a received frame's TCP or UDP checksum stands, as its datagram said
/// ([`weft_wire::vxlan::CSUM_PARTIAL`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Csum {
    /// Complete, as anywhere else: verified before the frame is merged with others.
    Complete,
    /// Left partial by the sending router, for this host's kernel to complete: not verified
    /// (between the two routers the outer UDP checksum, or the seal, covered the frame), and
    /// written to the TAP only ever with [`VnetHdr::NEEDS_CSUM`] (merged, or on its own with
    /// [`prepare_partial`]).
    Partial,
}

/// What [`Coalescer::push`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// The frame is held in the pending super-frame (it started it or was appended to it).
    Merged,
    /// The frame could be coalesced but not with what is pending: [`Coalescer::take`] the
    /// pending super-frame, write it, then offer the frame again.
    FlushFirst,
    /// The frame is not coalescable (not TCP, a control segment, a bad checksum, ...): take and
    /// write any pending super-frame, then write this frame as is with [`VnetHdr::NONE`] (or,
    /// for a [`Csum::Partial`] one, as [`prepare_partial`] says).
    NotMergeable,
}

/// The pending flow.
#[derive(Debug, Clone, Copy)]
struct Pending {
    layout: TcpLayout,
    /// Payload bytes of the first segment; later ones may not be longer.
    gso_size: usize,
    next_seq: u32,
    segments: u32,
    /// Nothing may be appended any more: the last segment was short or carried PSH.
    closed: bool,
    /// The last segment carried PSH.
    psh: bool,
    /// UDP datagrams rather than TCP segments.
    udp: bool,
    /// The first frame's checksum is partial (what matters when it stays alone).
    partial: bool,
}

/// A TCP segment that passed every per-frame check.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    layout: TcpLayout,
    seq: u32,
    payload: usize,
    psh: bool,
    /// A UDP datagram (`seq` and `psh` unused).
    udp: bool,
}

/// Receive-side coalescing ("GRO") of the TCP segments received from peers, so a run of them
/// reaches the TAP in one write.
///
/// Consecutive frames of one TCP flow are merged when they have: the same Ethernet header; the
/// same IP source, destination, TOS/traffic class (and IPv6 flow label), TTL/hop limit and DF;
/// no IPv4 options, no fragments, no IPv6 extension headers; the same TCP ports, ack, window,
/// flags (apart from PSH) and options; contiguous sequence numbers; a non-empty payload, all
/// but the last of the same size (the first one's); none of SYN, FIN, RST, URG or CWR; a correct
/// IPv4 header checksum; and a correct TCP checksum. Verifying every segment is what makes this
/// safe: the merged frame is written with [`VnetHdr::NEEDS_CSUM`], which the kernel trusts
/// (`CHECKSUM_PARTIAL`) and completes itself, so a corrupted segment that got merged would
/// become valid; a segment that fails is [`Push::NotMergeable`] and reaches the receiver's stack
/// unchanged, which drops it. A frame pushed as [`Csum::Partial`] is not verified: its sender
/// left the checksum for this host's kernel to complete (and the way between the routers was
/// covered by the outer UDP checksum or the seal), so merging it makes nothing valid that was
/// not; on its own it is written with [`VnetHdr::NEEDS_CSUM`] too.
///
/// The merged frame gets a [`VnetHdr`] { NEEDS_CSUM, TcpV4/TcpV6, `hdr_len` = all headers,
/// `gso_size` = the first segment's payload size, `csum_start` = the TCP header, `csum_offset` =
/// 16 }, the TCP checksum field set to the folded (not complemented) pseudo-header sum for the
/// merged length, the IPv4 total length and header checksum (or IPv6 payload length) fixed, and
/// PSH taken from the last segment. A pending "super-frame" of a single segment is written
/// unchanged with [`VnetHdr::DATA_VALID`], since both of its checksums were verified (a hint the
/// kernel may ignore; harmless either way); a partial one as [`prepare_partial`] would write
/// it. Frames that are not merged are written by the caller with [`VnetHdr::NONE`], so the
/// receiving stack verifies them itself (partial ones: see [`Push::NotMergeable`]).
///
/// **UDP** (unless [`Self::set_udp`] turned it off): consecutive datagrams of one flow (the same
/// Ethernet header, IP fields as for TCP, the same ports) are merged when each has a payload,
/// no IPv4 options or fragments, a correct IPv4 header checksum and a correct, non-zero UDP
/// checksum, all but the last of the first one's size, at most 64 of them. The merged frame
/// gets { NEEDS_CSUM, UdpL4, `hdr_len` = all headers, `gso_size` = the first datagram's payload
/// size, `csum_start` = the UDP header, `csum_offset` = 6 }, the UDP length and the IP lengths
/// of the whole, and the folded pseudo-header sum over the whole UDP length in the checksum
/// field: what `__udp_gso_segment` expects, and it gives back the datagrams that came in (the
/// IPv4 identification counting up from the first one's).
#[derive(Debug, Clone)]
pub struct Coalescer {
    /// The vnet header, then the pending frame.
    buf: Vec<u8>,
    /// Length of the pending frame (after the vnet header).
    len: usize,
    pending: Option<Pending>,
    /// UDP datagrams are merged too (see [`Self::set_udp`]).
    udp: bool,
}

impl Coalescer {
    /// The buffer size to use: the largest IP packet plus the vnet header.
    pub const DEFAULT_MAX_LEN: usize = IP_MAX_LEN + VNET_HDR_LEN;

    /// A coalescer whose super-frames, vnet header included, are at most `max_len` bytes
    /// ([`Self::DEFAULT_MAX_LEN`] = 65535 + [`VNET_HDR_LEN`]). Allocates that buffer once.
    pub fn new(max_len: usize) -> Self {
        Self {
            buf: vec![0; max_len.max(VNET_HDR_LEN)],
            len: 0,
            pending: None,
            udp: true,
        }
    }

    /// Whether UDP datagrams are merged (on by default). A kernel before Linux 6.2 refuses a
    /// UDP super-frame (`VIRTIO_NET_HDR_GSO_UDP_L4`) written to a TAP; the writer turns this off
    /// then, and every UDP datagram is [`Push::NotMergeable`].
    pub fn set_udp(&mut self, on: bool) {
        self.udp = on;
    }

    /// Whether the pending super-frame is UDP datagrams (two or more) rather than TCP.
    pub fn holds_udp_run(&self) -> bool {
        self.pending.is_some_and(|p| p.udp && p.segments > 1)
    }

    /// Whether no super-frame is pending.
    pub fn is_empty(&self) -> bool {
        self.pending.is_none()
    }

    /// How many segments the pending super-frame holds (0 when empty).
    pub fn pending_segments(&self) -> u32 {
        self.pending.map_or(0, |p| p.segments)
    }

    /// Offers a received frame whose checksum stands as `csum` says (see [`Push`] for what the
    /// caller does next).
    pub fn push(&mut self, frame: &[u8], csum: Csum) -> Push {
        let Some(c) = candidate(frame, csum).filter(|c| self.udp || !c.udp) else {
            return Push::NotMergeable;
        };
        let data_len = c.layout.end;
        let capacity = self.buf.len() - VNET_HDR_LEN;
        if data_len > capacity {
            return Push::NotMergeable;
        }
        let Some(p) = self.pending.as_mut() else {
            self.buf[VNET_HDR_LEN..VNET_HDR_LEN + data_len].copy_from_slice(&frame[..data_len]);
            self.len = data_len;
            self.pending = Some(Pending {
                layout: c.layout,
                gso_size: c.payload,
                next_seq: c.seq.wrapping_add(c.payload as u32),
                segments: 1,
                closed: c.psh,
                psh: c.psh,
                udp: c.udp,
                partial: csum == Csum::Partial,
            });
            return Push::Merged;
        };
        let held = &self.buf[VNET_HDR_LEN..VNET_HDR_LEN + self.len];
        let fits =
            self.len + c.payload <= capacity && self.len - p.layout.l3 + c.payload <= IP_MAX_LEN;
        let follows = if c.udp {
            p.udp && p.segments < UDP_MAX_SEGMENTS && same_udp_flow(held, frame, &c.layout)
        } else {
            !p.udp && c.seq == p.next_seq && same_flow(held, frame, &c.layout)
        };
        if p.closed
            || c.payload > p.gso_size
            || !fits
            || c.layout.l3 != p.layout.l3
            || c.layout.v6 != p.layout.v6
            || c.layout.hdr_len != p.layout.hdr_len
            || !follows
        {
            return Push::FlushFirst;
        }
        let payload = &frame[c.layout.hdr_len..c.layout.end];
        self.buf[VNET_HDR_LEN + self.len..VNET_HDR_LEN + self.len + c.payload]
            .copy_from_slice(payload);
        self.len += c.payload;
        p.next_seq = p.next_seq.wrapping_add(c.payload as u32);
        p.segments += 1;
        p.psh = c.psh;
        p.closed = c.psh || c.payload < p.gso_size;
        Push::Merged
    }

    /// The pending super-frame with its vnet header in front, ready for one TAP write; clears
    /// it. `None` if nothing is pending.
    pub fn take(&mut self) -> Option<&[u8]> {
        let p = self.pending.take()?;
        let (hdr_bytes, frame) = self.buf.split_at_mut(VNET_HDR_LEN);
        let frame = &mut frame[..self.len];
        let hdr = if p.segments == 1 && !p.partial {
            VnetHdr {
                flags: VnetHdr::DATA_VALID,
                ..VnetHdr::NONE
            }
        } else {
            let TcpLayout {
                l3,
                v6,
                l4,
                hdr_len,
                ..
            } = p.layout;
            let l4_len = self.len - l4;
            // Lengths fit 16 bits: push() keeps the IP packet within IP_MAX_LEN.
            if v6 {
                frame[l3 + 4..l3 + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            } else {
                frame[l3 + 2..l3 + 4].copy_from_slice(&((self.len - l3) as u16).to_be_bytes());
                fill_ipv4_checksum(&mut frame[l3..l4]);
            }
            let (proto, csum_offset, gso_type) = if p.udp {
                frame[l4 + 4..l4 + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
                (IPPROTO_UDP, UDP_CSUM_OFFSET, GsoType::UdpL4)
            } else {
                if p.psh {
                    frame[l4 + 13] |= TCP_PSH;
                }
                let gso_type = if v6 { GsoType::TcpV6 } else { GsoType::TcpV4 };
                (IPPROTO_TCP, TCP_CSUM_OFFSET, gso_type)
            };
            let pseudo = fold(pseudo_sum(&frame[l3..l4], v6, proto, l4_len));
            frame[l4 + csum_offset..l4 + csum_offset + 2].copy_from_slice(&pseudo.to_be_bytes());
            // A lone partial frame: the kernel only completes its checksum.
            let (gso_type, hdr_len, gso_size) = if p.segments == 1 {
                (GsoType::None, 0, 0)
            } else {
                (gso_type, hdr_len, p.gso_size)
            };
            // All offsets are below IP_MAX_LEN + 18, and gso_size below IP_MAX_LEN: they fit.
            VnetHdr {
                flags: VnetHdr::NEEDS_CSUM,
                gso_type,
                ecn: false,
                hdr_len: hdr_len as u16,
                gso_size: gso_size as u16,
                csum_start: l4 as u16,
                csum_offset: csum_offset as u16,
            }
        };
        let hdr_bytes: &mut [u8; VNET_HDR_LEN] = hdr_bytes
            .try_into()
            .expect("split_at_mut(VNET_HDR_LEN) yields VNET_HDR_LEN bytes");
        hdr.emit(hdr_bytes);
        let len = VNET_HDR_LEN + self.len;
        self.len = 0;
        Some(&self.buf[..len])
    }
}

/// The per-frame checks of [`Coalescer::push`]: parses, no IPv4 options, a payload, no control
/// flags, checksums right (the TCP or UDP one only if `csum` says it is complete).
fn candidate(frame: &[u8], csum: Csum) -> Option<Candidate> {
    let verify = csum == Csum::Complete && !cfg!(fuzzing);
    let Ok(layout) = parse_tcp(frame, None) else {
        return udp_candidate(frame, verify);
    };
    let TcpLayout {
        l4, hdr_len, end, ..
    } = layout;
    let payload = end - hdr_len;
    let flags = frame[l4 + 13];
    if payload == 0 || flags & (TCP_SYN | TCP_FIN | TCP_RST | TCP_URG | TCP_CWR) != 0 {
        return None;
    }
    if !plain_ip_header(frame, &layout) || (verify && !tcp_checksum_ok(frame, &layout)) {
        return None;
    }
    Some(Candidate {
        layout,
        seq: u32::from_be_bytes([frame[l4 + 4], frame[l4 + 5], frame[l4 + 6], frame[l4 + 7]]),
        payload,
        psh: flags & TCP_PSH != 0,
        udp: false,
    })
}

/// The per-frame checks for a UDP datagram: parses, no IPv4 options, a payload, and, when
/// `verify`, a checksum (IPv4's optional zero is refused: nothing to verify) that is right.
fn udp_candidate(frame: &[u8], verify: bool) -> Option<Candidate> {
    let layout = parse_l4(frame, None, IPPROTO_UDP).ok()?;
    let TcpLayout {
        l4, hdr_len, end, ..
    } = layout;
    let payload = end - hdr_len;
    if payload == 0 || !plain_ip_header(frame, &layout) {
        return None;
    }
    let zero = frame[l4 + UDP_CSUM_OFFSET..l4 + UDP_CSUM_OFFSET + 2] == [0, 0];
    if verify && (zero || !l4_checksum_ok(frame, &layout, IPPROTO_UDP)) {
        return None;
    }
    Some(Candidate {
        layout,
        seq: 0,
        payload,
        psh: false,
        udp: true,
    })
}

/// Whether the UDP datagram `frame` belongs to the held flow: the same Ethernet header, IP
/// version, TOS/traffic class (and flow label), DF, TTL/hop limit, protocol and addresses, and
/// the same ports.
fn same_udp_flow(held: &[u8], frame: &[u8], layout: &TcpLayout) -> bool {
    let l4 = layout.l4;
    same_ip_flow(held, frame, layout) && held[l4..l4 + 4] == frame[l4..l4 + 4]
}

/// Whether `held` and `frame` have the same Ethernet header and the same IP fields but length,
/// identification, checksum (and, for IPv6, payload length): version, TOS/traffic class, flow
/// label, DF, TTL/hop limit, protocol, addresses.
fn same_ip_flow(held: &[u8], frame: &[u8], layout: &TcpLayout) -> bool {
    let TcpLayout { l3, v6, l4, .. } = *layout;
    if held[..l3] != frame[..l3] {
        return false;
    }
    let (a, b) = (&held[l3..l4], &frame[l3..l4]);
    if v6 {
        // Version, traffic class, flow label; next header, hop limit; addresses.
        a[..4] == b[..4] && a[6..] == b[6..]
    } else {
        // Version/IHL, TOS; DF; TTL, protocol; addresses.
        a[..2] == b[..2] && (a[6] ^ b[6]) & 0x40 == 0 && a[8..10] == b[8..10] && a[12..] == b[12..]
    }
}

/// Whether `frame` (a candidate with the same layout as `held`) belongs to the held flow and may
/// follow it: every header byte equal except the IP length, identification, checksum, the TCP
/// sequence number, PSH and the TCP checksum.
fn same_flow(held: &[u8], frame: &[u8], layout: &TcpLayout) -> bool {
    let TcpLayout { l4, hdr_len, .. } = *layout;
    let (a, b) = (&held[l4..hdr_len], &frame[l4..hdr_len]);
    // Ports; ack, data offset; flags but PSH; window; urgent pointer and options.
    same_ip_flow(held, frame, layout)
        && a[..4] == b[..4]
        && a[8..13] == b[8..13]
        && (a[13] ^ b[13]) & !TCP_PSH == 0
        && a[14..16] == b[14..16]
        && a[18..] == b[18..]
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use weft_wire::ipv4::checksum;

    use super::*;

    #[test]
    fn vnet_hdr_round_trip() {
        // The header from the TAP experiment in crates.md: a 28,000-byte UDP_SEGMENT send.
        let raw = [0x01, 0x05, 0x2a, 0x00, 0x78, 0x05, 0x22, 0x00, 0x06, 0x00];
        if cfg!(target_endian = "little") {
            let hdr = VnetHdr::parse(&raw).unwrap();
            assert_eq!(
                hdr,
                VnetHdr {
                    flags: VnetHdr::NEEDS_CSUM,
                    gso_type: GsoType::UdpL4,
                    ecn: false,
                    hdr_len: 42,
                    gso_size: 1400,
                    csum_start: 34,
                    csum_offset: 6,
                }
            );
            let mut out = [0u8; VNET_HDR_LEN];
            hdr.emit(&mut out);
            assert_eq!(out, raw);
        }
        let ecn = [0x01, 0x81, 0, 0, 0, 0, 0, 0, 0, 0];
        let hdr = VnetHdr::parse(&ecn).unwrap();
        assert_eq!((hdr.gso_type, hdr.ecn), (GsoType::TcpV4, true));
        let mut out = [0u8; VNET_HDR_LEN];
        hdr.emit(&mut out);
        assert_eq!(out, ecn);
        assert_eq!(VnetHdr::parse(&raw[..9]), Err(OffloadError::Truncated));
        for raw in 0..=0x7fu8 {
            assert_eq!(GsoType::from_raw(raw).to_raw(), raw);
        }
        let mut out = [0xffu8; VNET_HDR_LEN];
        VnetHdr::NONE.emit(&mut out);
        assert_eq!(out, [0; VNET_HDR_LEN]);
    }

    #[test]
    fn fast_sum_carries_wrap_around() {
        // Words that overflow 64 bits many times over, and all-ones data (sum 0xffff, not 0).
        for data in [
            vec![0xff; 64 * 1024],
            vec![0xff; 9],
            vec![0; 16],
            vec![0xff, 0xff],
        ] {
            assert_eq!(
                fold(sum_words(&data)),
                checksum::data(&data),
                "{} bytes",
                data.len()
            );
            assert!(sum_words(&data) < 1 << 34);
        }
    }

    proptest! {
        #[test]
        fn fast_sum_matches_wire_checksum(data in proptest::collection::vec(any::<u8>(), 0..3000)) {
            prop_assert_eq!(fold(sum_words(&data)), checksum::data(&data));
        }
    }
}
