//! IPv4 headers (layer 3): the header view, its [`Repr`], and the RFC 1071 Internet checksum
//! shared by the IPv4, UDP and ICMPv4 modules.
//!
//! This module owns the fixed IPv4 header and the [`checksum`] helpers. Options are skipped, not
//! interpreted: the payload starts at `header_len()`. Fragments are readable through the
//! [`Packet`] view but are not valid [`Repr`]s (weft never reassembles).
//!
//! **Panic contract:** once [`Packet::new_checked`] (or [`Packet::check_len`]) has succeeded, no
//! getter panics, whatever the bytes. Setters and [`Repr::emit`] panic only if the caller's
//! buffer is too short for what they write.
//!
//! **Fuzzing:** under `cfg(fuzzing)`, [`Packet::verify_checksum`] always returns `true`, so a
//! fuzzer can reach the code behind it without having to guess checksums.

use std::fmt;
use std::net::Ipv4Addr;

use crate::Error;

/// Length of an IPv4 header without options.
pub const HEADER_LEN: usize = field::DST_ADDR.end;

mod field {
    pub(crate) type Field = std::ops::Range<usize>;

    pub(crate) const VER_IHL: usize = 0;
    pub(crate) const DSCP_ECN: usize = 1;
    pub(crate) const LENGTH: Field = 2..4;
    pub(crate) const IDENT: Field = 4..6;
    pub(crate) const FLG_OFF: Field = 6..8;
    pub(crate) const TTL: usize = 8;
    pub(crate) const PROTOCOL: usize = 9;
    pub(crate) const CHECKSUM: Field = 10..12;
    pub(crate) const SRC_ADDR: Field = 12..16;
    pub(crate) const DST_ADDR: Field = 16..20;
}

/// The "Don't Fragment" bit of the flags/fragment-offset word.
const FLAG_DF: u16 = 0x4000;
/// The "More Fragments" bit of the flags/fragment-offset word.
const FLAG_MF: u16 = 0x2000;
/// The fragment offset, in 8-byte units, inside the flags/fragment-offset word.
const FRAG_OFFSET_MASK: u16 = 0x1fff;

/// The IP protocol number: what the payload is. Unlisted values are kept in
/// [`Protocol::Unknown`], so every value round-trips.
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub enum Protocol {
    /// Internet Control Message Protocol, 1.
    Icmp,
    /// Transmission Control Protocol, 6.
    Tcp,
    /// User Datagram Protocol, 17.
    Udp,
    /// Any other value, kept as-is.
    Unknown(u8),
}

impl From<u8> for Protocol {
    fn from(value: u8) -> Self {
        match value {
            0x01 => Self::Icmp,
            0x06 => Self::Tcp,
            0x11 => Self::Udp,
            other => Self::Unknown(other),
        }
    }
}

impl From<Protocol> for u8 {
    fn from(value: Protocol) -> Self {
        match value {
            Protocol::Icmp => 0x01,
            Protocol::Tcp => 0x06,
            Protocol::Udp => 0x11,
            Protocol::Unknown(other) => other,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Icmp => f.write_str("ICMP"),
            Self::Tcp => f.write_str("TCP"),
            Self::Udp => f.write_str("UDP"),
            Self::Unknown(v) => write!(f, "0x{v:02x}"),
        }
    }
}

/// The Internet checksum of RFC 1071: the 16-bit one's complement of the one's complement sum of
/// the data taken as big-endian 16-bit words (an odd trailing byte is padded with zero).
pub mod checksum {
    use std::net::Ipv4Addr;

    use super::Protocol;

    /// The one's complement sum of `data` as big-endian 16-bit words, folded to 16 bits and *not*
    /// complemented. Combine partial sums with [`combine`]; complement the final sum to get the
    /// value that goes on the wire.
    pub fn data(data: &[u8]) -> u16 {
        let mut sum: u64 = 0;
        let mut chunks = data.chunks_exact(2);
        for word in &mut chunks {
            sum += u64::from(u16::from_be_bytes([word[0], word[1]]));
        }
        if let [last] = chunks.remainder() {
            sum += u64::from(u16::from_be_bytes([*last, 0]));
        }
        fold(sum)
    }

    /// Adds partial sums (from [`data`] or [`pseudo_header`]) in one's complement arithmetic.
    pub fn combine(sums: &[u16]) -> u16 {
        fold(sums.iter().map(|&s| u64::from(s)).sum())
    }

    /// The partial sum of the IPv4 pseudo-header that UDP and TCP checksums cover (RFC 768):
    /// source and destination address, zero, protocol, and the transport length.
    pub fn pseudo_header(
        src_addr: Ipv4Addr,
        dst_addr: Ipv4Addr,
        protocol: Protocol,
        length: u16,
    ) -> u16 {
        let mut buf = [0u8; 12];
        buf[0..4].copy_from_slice(&src_addr.octets());
        buf[4..8].copy_from_slice(&dst_addr.octets());
        buf[9] = protocol.into();
        buf[10..12].copy_from_slice(&length.to_be_bytes());
        data(&buf)
    }

    fn fold(mut sum: u64) -> u16 {
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        // Truncation is exact: the loop above leaves at most 16 bits.
        sum as u16
    }
}

/// A read/write view of an IPv4 packet over a buffer.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it. Getters may panic unless
    /// [`check_len`](Self::check_len) succeeds.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps a buffer, checking its lengths with [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the buffer holds a fixed header, that the IHL is at least 5 and the header
    /// fits, and that `total_len` is at least the header length and within the buffer. Trailing
    /// bytes past `total_len` (Ethernet padding) are allowed and ignored. The version is not
    /// checked here; [`Repr::parse`] does that.
    pub fn check_len(&self) -> Result<(), Error> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error);
        }
        let header_len = usize::from(self.header_len());
        let total_len = usize::from(self.total_len());
        if header_len < HEADER_LEN || header_len > len || total_len < header_len || total_len > len
        {
            return Err(Error);
        }
        Ok(())
    }

    /// Unwraps the view, returning the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The version field (4 for IPv4).
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// The header length in bytes (IHL × 4), options included.
    pub fn header_len(&self) -> u8 {
        (self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    /// The Differentiated Services Code Point (6 bits).
    pub fn dscp(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN] >> 2
    }

    /// The Explicit Congestion Notification bits (2 bits).
    pub fn ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN] & 0x03
    }

    /// The total length of the packet, header included.
    pub fn total_len(&self) -> u16 {
        self.read_u16(field::LENGTH)
    }

    /// The identification field.
    pub fn ident(&self) -> u16 {
        self.read_u16(field::IDENT)
    }

    /// Whether the "Don't Fragment" flag is set.
    pub fn dont_frag(&self) -> bool {
        self.read_u16(field::FLG_OFF) & FLAG_DF != 0
    }

    /// Whether the "More Fragments" flag is set.
    pub fn more_frags(&self) -> bool {
        self.read_u16(field::FLG_OFF) & FLAG_MF != 0
    }

    /// The fragment offset, in bytes (the field counts 8-byte units).
    pub fn frag_offset(&self) -> u16 {
        (self.read_u16(field::FLG_OFF) & FRAG_OFFSET_MASK) << 3
    }

    /// The time to live.
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    /// The protocol of the payload.
    pub fn protocol(&self) -> Protocol {
        self.buffer.as_ref()[field::PROTOCOL].into()
    }

    /// The header checksum field.
    pub fn checksum(&self) -> u16 {
        self.read_u16(field::CHECKSUM)
    }

    /// The source address.
    pub fn src_addr(&self) -> Ipv4Addr {
        self.read_addr(field::SRC_ADDR)
    }

    /// The destination address.
    pub fn dst_addr(&self) -> Ipv4Addr {
        self.read_addr(field::DST_ADDR)
    }

    /// Whether the header checksum is correct (options included). Always `true` under
    /// `cfg(fuzzing)`.
    pub fn verify_checksum(&self) -> bool {
        if cfg!(fuzzing) {
            return true;
        }
        let header = &self.buffer.as_ref()[..usize::from(self.header_len())];
        checksum::data(header) == 0xffff
    }

    fn read_u16(&self, range: field::Field) -> u16 {
        let b = &self.buffer.as_ref()[range];
        u16::from_be_bytes([b[0], b[1]])
    }

    fn read_addr(&self, range: field::Field) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[range];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The options bytes between the fixed header and `header_len()`.
    pub fn options(&self) -> &'a [u8] {
        &self.buffer.as_ref()[HEADER_LEN..usize::from(self.header_len())]
    }

    /// The payload: from `header_len()` to `total_len()` (Ethernet padding excluded).
    pub fn payload(&self) -> &'a [u8] {
        let range = usize::from(self.header_len())..usize::from(self.total_len());
        &self.buffer.as_ref()[range]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the version field (4 for IPv4).
    pub fn set_version(&mut self, version: u8) {
        let b = &mut self.buffer.as_mut()[field::VER_IHL];
        *b = (*b & 0x0f) | (version << 4);
    }

    /// Sets the header length in bytes; it is stored divided by 4 (`len` must be a multiple of
    /// 4 between 20 and 60).
    pub fn set_header_len(&mut self, len: u8) {
        let b = &mut self.buffer.as_mut()[field::VER_IHL];
        *b = (*b & 0xf0) | ((len / 4) & 0x0f);
    }

    /// Sets the DSCP (6 bits; higher bits are dropped).
    pub fn set_dscp(&mut self, dscp: u8) {
        let b = &mut self.buffer.as_mut()[field::DSCP_ECN];
        *b = (*b & 0x03) | (dscp << 2);
    }

    /// Sets the ECN bits (2 bits; higher bits are dropped).
    pub fn set_ecn(&mut self, ecn: u8) {
        let b = &mut self.buffer.as_mut()[field::DSCP_ECN];
        *b = (*b & 0xfc) | (ecn & 0x03);
    }

    /// Sets the total length.
    pub fn set_total_len(&mut self, len: u16) {
        self.write_u16(field::LENGTH, len);
    }

    /// Sets the identification field.
    pub fn set_ident(&mut self, ident: u16) {
        self.write_u16(field::IDENT, ident);
    }

    /// Clears both flags and the fragment offset.
    pub fn clear_flags(&mut self) {
        self.write_u16(field::FLG_OFF, 0);
    }

    /// Sets or clears the "Don't Fragment" flag.
    pub fn set_dont_frag(&mut self, value: bool) {
        self.set_flag(FLAG_DF, value);
    }

    /// Sets or clears the "More Fragments" flag.
    pub fn set_more_frags(&mut self, value: bool) {
        self.set_flag(FLAG_MF, value);
    }

    /// Sets the fragment offset, in bytes (must be a multiple of 8; the low 3 bits are dropped).
    pub fn set_frag_offset(&mut self, offset: u16) {
        let raw = self.read_u16(field::FLG_OFF);
        self.write_u16(
            field::FLG_OFF,
            (raw & !FRAG_OFFSET_MASK) | ((offset >> 3) & FRAG_OFFSET_MASK),
        );
    }

    /// Sets the time to live.
    pub fn set_ttl(&mut self, ttl: u8) {
        self.buffer.as_mut()[field::TTL] = ttl;
    }

    /// Sets the protocol of the payload.
    pub fn set_protocol(&mut self, protocol: Protocol) {
        self.buffer.as_mut()[field::PROTOCOL] = protocol.into();
    }

    /// Sets the header checksum field as-is.
    pub fn set_checksum(&mut self, checksum: u16) {
        self.write_u16(field::CHECKSUM, checksum);
    }

    /// Sets the source address.
    pub fn set_src_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&addr.octets());
    }

    /// Sets the destination address.
    pub fn set_dst_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&addr.octets());
    }

    /// Computes the header checksum (over `header_len()` bytes) and stores it.
    ///
    /// # Panics
    /// If the buffer is shorter than `header_len()`.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let header_len = usize::from(self.header_len());
        let sum = checksum::data(&self.buffer.as_ref()[..header_len]);
        self.set_checksum(!sum);
    }

    /// The payload, mutably: from `header_len()` to `total_len()`.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let range = usize::from(self.header_len())..usize::from(self.total_len());
        &mut self.buffer.as_mut()[range]
    }

    fn set_flag(&mut self, flag: u16, value: bool) {
        let raw = self.read_u16(field::FLG_OFF);
        let raw = if value { raw | flag } else { raw & !flag };
        self.write_u16(field::FLG_OFF, raw);
    }

    fn write_u16(&mut self, range: field::Field, value: u16) {
        self.buffer.as_mut()[range].copy_from_slice(&value.to_be_bytes());
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Packet<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// A parsed, unfragmented IPv4 header. Options are not represented: [`emit`](Self::emit)
/// writes a 20-byte header.
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub struct Repr {
    /// Source address.
    pub src_addr: Ipv4Addr,
    /// Destination address.
    pub dst_addr: Ipv4Addr,
    /// Protocol of the payload.
    pub protocol: Protocol,
    /// Length of the payload in bytes (`total_len - header_len`).
    pub payload_len: usize,
    /// Time to live.
    pub ttl: u8,
    /// Whether the "Don't Fragment" flag is set.
    pub dont_frag: bool,
}

impl Repr {
    /// Parses a checked packet. Fails if the version is not 4, the lengths are inconsistent, the
    /// packet is a fragment (MF set or a non-zero offset), or the header checksum is wrong.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Self, Error> {
        packet.check_len()?;
        if packet.version() != 4 {
            return Err(Error);
        }
        if packet.more_frags() || packet.frag_offset() != 0 {
            return Err(Error);
        }
        if !packet.verify_checksum() {
            return Err(Error);
        }
        Ok(Self {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            protocol: packet.protocol(),
            payload_len: usize::from(packet.total_len() - u16::from(packet.header_len())),
            ttl: packet.ttl(),
            dont_frag: packet.dont_frag(),
        })
    }

    /// The number of header bytes [`emit`](Self::emit) writes: [`HEADER_LEN`].
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes a 20-byte header with DSCP/ECN 0, identification 0 and the checksum filled in.
    /// `total_len` is set to `HEADER_LEN + payload_len`; the payload itself is the caller's.
    ///
    /// Identification 0 is fine for what weft sends: RFC 6864 §4.1 lets atomic datagrams (DF
    /// set, not fragmented) carry any value, and weft does not fragment.
    ///
    /// # Panics
    /// If the buffer is shorter than [`HEADER_LEN`], or if `HEADER_LEN + payload_len` exceeds
    /// 65535 (a caller bug: no IPv4 packet is that long).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]> + ?Sized>(&self, packet: &mut Packet<&mut T>) {
        let total_len = u16::try_from(HEADER_LEN + self.payload_len)
            .expect("IPv4 payload_len exceeds 65515 bytes");
        packet.set_version(4);
        packet.set_header_len(HEADER_LEN as u8);
        packet.set_dscp(0);
        packet.set_ecn(0);
        packet.set_total_len(total_len);
        packet.set_ident(0);
        packet.clear_flags();
        packet.set_dont_frag(self.dont_frag);
        packet.set_ttl(self.ttl);
        packet.set_protocol(self.protocol);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
        packet.fill_checksum();
    }
}

impl fmt::Display for Repr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "IPv4 src={} dst={} proto={} len={} ttl={}{}",
            self.src_addr,
            self.dst_addr,
            self.protocol,
            self.payload_len,
            self.ttl,
            if self.dont_frag { " DF" } else { "" }
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;

    use super::*;

    // A real IPv4/UDP packet: 192.0.2.1 -> 192.0.2.2, ttl 64, DF, ident 0x1c46, UDP 5000 -> 6784
    // carrying "hi". Header checksum 0x9a85 and UDP checksum 0xe564 computed independently of this
    // crate (a few lines of Python following RFC 1071).
    pub(crate) static PACKET_BYTES: [u8; 30] = [
        0x45, 0x00, 0x00, 0x1e, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x11, 0x9a, 0x85, 0xc0, 0x00, 0x02,
        0x01, 0xc0, 0x00, 0x02, 0x02, 0x13, 0x88, 0x1a, 0x80, 0x00, 0x0a, 0xe5, 0x64, 0x68, 0x69,
    ];

    fn repr() -> Repr {
        Repr {
            src_addr: Ipv4Addr::new(192, 0, 2, 1),
            dst_addr: Ipv4Addr::new(192, 0, 2, 2),
            protocol: Protocol::Udp,
            payload_len: 10,
            ttl: 64,
            dont_frag: true,
        }
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3 worked example: the sum of these bytes is 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum::data(&data), 0xddf2);
        assert_eq!(checksum::data(&[0xff]), 0xff00);
        assert_eq!(checksum::combine(&[0xffff, 0x0001]), 0x0001);
    }

    #[test]
    fn deconstruct() {
        let packet = Packet::new_checked(&PACKET_BYTES[..]).unwrap();
        assert_eq!(packet.version(), 4);
        assert_eq!(packet.header_len(), 20);
        assert_eq!(packet.dscp(), 0);
        assert_eq!(packet.ecn(), 0);
        assert_eq!(packet.total_len(), 30);
        assert_eq!(packet.ident(), 0x1c46);
        assert!(packet.dont_frag());
        assert!(!packet.more_frags());
        assert_eq!(packet.frag_offset(), 0);
        assert_eq!(packet.ttl(), 64);
        assert_eq!(packet.protocol(), Protocol::Udp);
        assert_eq!(packet.checksum(), 0x9a85);
        assert_eq!(packet.src_addr(), Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(packet.dst_addr(), Ipv4Addr::new(192, 0, 2, 2));
        assert!(packet.verify_checksum());
        assert!(packet.options().is_empty());
        assert_eq!(packet.payload(), &PACKET_BYTES[20..]);
    }

    #[test]
    fn construct() {
        let mut buf = [0u8; 30];
        let mut packet = Packet::new_unchecked(&mut buf[..]);
        packet.set_version(4);
        packet.set_header_len(20);
        packet.set_total_len(30);
        packet.set_ident(0x1c46);
        packet.clear_flags();
        packet.set_dont_frag(true);
        packet.set_ttl(64);
        packet.set_protocol(Protocol::Udp);
        packet.set_src_addr(Ipv4Addr::new(192, 0, 2, 1));
        packet.set_dst_addr(Ipv4Addr::new(192, 0, 2, 2));
        packet.payload_mut().copy_from_slice(&PACKET_BYTES[20..]);
        packet.fill_checksum();
        assert_eq!(buf, PACKET_BYTES);
    }

    #[test]
    fn parse_emit_round_trip() {
        let packet = Packet::new_checked(&PACKET_BYTES[..]).unwrap();
        let parsed = Repr::parse(&packet).unwrap();
        assert_eq!(parsed, repr());
        assert_eq!(
            parsed.to_string(),
            "IPv4 src=192.0.2.1 dst=192.0.2.2 proto=UDP len=10 ttl=64 DF"
        );
        let mut buf = PACKET_BYTES;
        buf[..HEADER_LEN].fill(0);
        parsed.emit(&mut Packet::new_unchecked(&mut buf[..]));
        // Identical except the identification field (emit writes 0) and so the checksum.
        let packet = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(packet.ident(), 0);
        assert!(packet.verify_checksum());
        assert_eq!(Repr::parse(&packet), Ok(parsed));
        assert_eq!(buf[..4], PACKET_BYTES[..4]);
        assert_eq!(buf[12..], PACKET_BYTES[12..]);
    }

    #[test]
    fn every_truncation_rejected() {
        for len in 0..PACKET_BYTES.len() {
            assert_eq!(
                Packet::new_checked(&PACKET_BYTES[..len]),
                Err(Error),
                "len {len}"
            );
        }
        // Trailing padding beyond total_len is fine and excluded from the payload.
        let mut padded = [0u8; 60];
        padded[..30].copy_from_slice(&PACKET_BYTES);
        let packet = Packet::new_checked(&padded[..]).unwrap();
        assert_eq!(packet.payload().len(), 10);
        assert_eq!(Repr::parse(&packet), Ok(repr()));
    }

    fn with(edit: impl FnOnce(&mut Packet<&mut [u8]>)) -> [u8; 30] {
        let mut buf = PACKET_BYTES;
        let mut packet = Packet::new_unchecked(&mut buf[..]);
        edit(&mut packet);
        if usize::from(packet.header_len()) <= PACKET_BYTES.len() {
            packet.fill_checksum();
        }
        buf
    }

    #[test]
    fn bad_headers_rejected() {
        // IHL below 5.
        for ihl in [0u8, 4, 16] {
            let buf = with(|p| p.set_header_len(ihl));
            assert_eq!(Packet::new_checked(&buf[..]), Err(Error), "ihl bytes {ihl}");
        }
        // IHL larger than the buffer (60 > 30).
        let buf = with(|p| p.set_header_len(60));
        assert_eq!(Packet::new_checked(&buf[..]), Err(Error));
        // total_len below header_len, or past the buffer.
        for total in [0u16, 19, 31, 0xffff] {
            let buf = with(|p| p.set_total_len(total));
            assert_eq!(Packet::new_checked(&buf[..]), Err(Error), "total {total}");
        }
        // Wrong version passes check_len but not Repr::parse.
        for version in [0u8, 6, 15] {
            let buf = with(|p| p.set_version(version));
            let packet = Packet::new_checked(&buf[..]).unwrap();
            assert_eq!(Repr::parse(&packet), Err(Error), "version {version}");
        }
        // Fragments are not valid Reprs.
        let buf = with(|p| p.set_more_frags(true));
        assert_eq!(Repr::parse(&Packet::new_unchecked(&buf[..])), Err(Error));
        let buf = with(|p| p.set_frag_offset(8));
        let packet = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(packet.frag_offset(), 8);
        assert_eq!(Repr::parse(&packet), Err(Error));
    }

    #[test]
    fn bad_checksum_rejected() {
        let mut buf = PACKET_BYTES;
        buf[11] ^= 1;
        let packet = Packet::new_checked(&buf[..]).unwrap();
        assert!(!packet.verify_checksum());
        assert_eq!(Repr::parse(&packet), Err(Error));
    }

    #[test]
    fn options_are_skipped() {
        // Same packet with a 4-byte option (NOP NOP NOP EOL): IHL 6, total 34.
        let mut buf = [0u8; 34];
        buf[..20].copy_from_slice(&PACKET_BYTES[..20]);
        buf[20..24].copy_from_slice(&[1, 1, 1, 0]);
        buf[24..].copy_from_slice(&PACKET_BYTES[20..]);
        let mut packet = Packet::new_unchecked(&mut buf[..]);
        packet.set_header_len(24);
        packet.set_total_len(34);
        packet.fill_checksum();
        let packet = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(packet.options(), &[1, 1, 1, 0]);
        assert_eq!(packet.payload(), &PACKET_BYTES[20..]);
        assert_eq!(Repr::parse(&packet), Ok(repr()));
    }

    #[test]
    fn protocol_round_trips() {
        for v in 0..=255u8 {
            assert_eq!(u8::from(Protocol::from(v)), v);
        }
        assert_eq!(Protocol::from(1), Protocol::Icmp);
        assert_eq!(Protocol::from(6), Protocol::Tcp);
        assert_eq!(Protocol::from(17), Protocol::Udp);
    }

    proptest! {
        #[test]
        fn repr_round_trip(
            src: [u8; 4],
            dst: [u8; 4],
            proto: u8,
            payload_len in 0usize..100,
            ttl: u8,
            dont_frag: bool,
        ) {
            let repr = Repr {
                src_addr: Ipv4Addr::from(src),
                dst_addr: Ipv4Addr::from(dst),
                protocol: Protocol::from(proto),
                payload_len,
                ttl,
                dont_frag,
            };
            let mut buf = vec![0u8; repr.buffer_len() + payload_len];
            repr.emit(&mut Packet::new_unchecked(&mut buf[..]));
            let packet = Packet::new_checked(&buf[..]).unwrap();
            prop_assert!(packet.verify_checksum());
            prop_assert_eq!(Repr::parse(&packet), Ok(repr));
            prop_assert_eq!(packet.payload().len(), payload_len);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(packet) = Packet::new_checked(&bytes[..]) {
                let _ = (
                    packet.version(), packet.dscp(), packet.ecn(), packet.ident(),
                    packet.dont_frag(), packet.more_frags(), packet.frag_offset(), packet.ttl(),
                    packet.protocol(), packet.src_addr(), packet.dst_addr(),
                    packet.verify_checksum(), packet.options(), packet.payload(),
                );
                let _ = Repr::parse(&packet);
            }
        }
    }
}
