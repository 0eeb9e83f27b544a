//! VXLAN headers (overlay encapsulation, RFC 7348): the 8-byte header view, its [`Repr`], the
//! fast slice helpers the data plane uses, and weft's mapping between VNIs and peer short ids.
//!
//! A VXLAN packet is this header followed by a whole inner Ethernet frame, carried in UDP to
//! port [`PORT`]. weft puts the sending and receiving peers' 12-bit short ids into the 24-bit
//! VNI ([`vni_for`], [`split_vni`]), so a receiver knows which connection a frame came over
//! without any lookup by address.
//!
//! ```
//! use weft_wire::vxlan;
//!
//! // Encapsulate: the header goes in front of the inner frame, in the caller's buffer.
//! let inner = [0u8; 14];
//! let mut buf = [0u8; vxlan::HEADER_LEN + 14];
//! vxlan::write_header(&mut buf, vxlan::vni_for(1, 2)).unwrap();
//! buf[vxlan::HEADER_LEN..].copy_from_slice(&inner);
//!
//! // Decapsulate: who sent it to whom, and the inner frame.
//! let (vni, frame) = vxlan::parse_header(&buf).unwrap();
//! assert_eq!(vxlan::split_vni(vni), (1, 2));
//! assert_eq!(frame, &inner);
//! ```
//!
//! **The I flag.** RFC 7348 §5 says the I flag "MUST be set to 1 for a valid VXLAN Network ID"
//! and that receivers ignore the other reserved bits. A header without the I flag has no VNI, so
//! it is invalid here: [`Packet::new_checked`], [`Repr::parse`] and [`parse_header`] all reject
//! it with [`Error`]. Reserved bits are ignored on receipt and written as zero, except for one
//! use weft makes of the last reserved byte between its own routers: the sender's **stream**
//! ([`STREAM_OFFSET`], [`stream_of`], [`Packet::set_stream`]), the index of the data-plane
//! thread that sent the datagram. A receiving router steers datagrams to its own threads by it
//! and keeps one encryption stream per sending thread; stream 0 is what a single-threaded
//! sender (and any other VXLAN implementation) writes.
//!
//! The first reserved byte carries weft's own flags ([`WEFT_FLAGS_OFFSET`]), between weft
//! routers that agreed on them (control protocol 5 and later): [`CSUM_PARTIAL`] says the inner
//! TCP or UDP segment's checksum field holds only the pseudo-header sum, the rest left to the
//! receiving host's kernel ([`csum_partial`], [`set_csum_partial`]). [`EXPRESS`] says the
//! sender's express lane sent it (a sparse flow: a ping, a health check, a handshake), and the
//! receiving router steers it to its own express lane ([`express`], [`set_express`]); a router
//! without one ignores it. Any other VXLAN implementation writes zero there and ignores it.
//!
//! **Panic contract:** once [`Packet::new_checked`] (or [`Packet::check_len`]) has succeeded, no
//! getter panics, whatever the bytes. Setters and [`Repr::emit`] panic only if the caller's
//! buffer is shorter than [`HEADER_LEN`].

use std::fmt;

use crate::Error;

/// Length of a VXLAN header.
pub const HEADER_LEN: usize = field::PAYLOAD.start;

/// The UDP port weft carries VXLAN on: the control port 6783 plus one.
pub const PORT: u16 = 6784;

/// The "VNI is valid" flag, in the flags byte.
pub const FLAG_I: u8 = 0x08;

/// The largest VNI: VNIs are 24 bits.
pub const MAX_VNI: u32 = 0x00ff_ffff;

/// Offset of the stream byte (the last reserved byte) in the header; also its offset in the
/// UDP payload, where a socket filter reads it.
pub const STREAM_OFFSET: usize = field::RESERVED2;

/// Offset of weft's flags byte (the first reserved byte) in the header.
pub const WEFT_FLAGS_OFFSET: usize = field::RESERVED1.start;

/// weft flag: the inner frame is a TCP or UDP segment whose checksum field holds the folded
/// pseudo-header sum only, like a frame the kernel hands over with `CHECKSUM_PARTIAL`: the
/// receiver has it completed (by its kernel, or itself) instead of verifying it. Sent only to
/// a neighbour that announced it takes such segments.
pub const CSUM_PARTIAL: u8 = 0x01;

/// weft flag: the datagram carries a frame of a sparse flow, sent by the sender's express
/// lane; the receiving router hands it to its own express lane, ahead of bulk traffic. Needs
/// no agreement: a receiver that does not know it steers by the stream byte as usual.
pub const EXPRESS: u8 = 0x02;

/// The largest short id; short ids are 12 bits.
const SHORT_ID_MASK: u16 = 0x0fff;

mod field {
    pub(crate) type Field = std::ops::Range<usize>;
    pub(crate) type Rest = std::ops::RangeFrom<usize>;

    pub(crate) const FLAGS: usize = 0;
    pub(crate) const RESERVED1: Field = 1..4;
    pub(crate) const VNI: Field = 4..7;
    pub(crate) const RESERVED2: usize = 7;
    pub(crate) const PAYLOAD: Rest = 8..;
}

/// The VNI weft uses for frames from the peer with short id `src_short` to the peer with short id
/// `dst_short`: `src | dst << 12`, each masked to 12 bits.
pub const fn vni_for(src_short: u16, dst_short: u16) -> u32 {
    (src_short & SHORT_ID_MASK) as u32 | (((dst_short & SHORT_ID_MASK) as u32) << 12)
}

/// Splits a VNI made by [`vni_for`] into `(src_short, dst_short)`. Bits above 24 are ignored.
pub const fn split_vni(vni: u32) -> (u16, u16) {
    let src = (vni & SHORT_ID_MASK as u32) as u16;
    let dst = ((vni >> 12) & SHORT_ID_MASK as u32) as u16;
    (src, dst)
}

/// Reads a VXLAN header at the start of `buf`: returns the VNI and the inner frame that follows,
/// or `None` if `buf` is shorter than [`HEADER_LEN`] or the I flag is clear.
pub fn parse_header(buf: &[u8]) -> Option<(u32, &[u8])> {
    let (header, inner) = buf.split_first_chunk::<HEADER_LEN>()?;
    if header[field::FLAGS] & FLAG_I == 0 {
        return None;
    }
    let vni = u32::from_be_bytes([0, header[4], header[5], header[6]]);
    Some((vni, inner))
}

/// The sender's stream (see the module doc) of a datagram that starts with a VXLAN header;
/// 0 if it is too short to have one.
pub fn stream_of(buf: &[u8]) -> u8 {
    buf.get(STREAM_OFFSET).copied().unwrap_or(0)
}

/// Whether the datagram (header first) in `buf` has [`CSUM_PARTIAL`] set; `false` if `buf` is
/// shorter than the header.
pub fn csum_partial(buf: &[u8]) -> bool {
    has_flag(buf, CSUM_PARTIAL)
}

/// Whether the datagram (header first) in `buf` has [`EXPRESS`] set; `false` if `buf` is
/// shorter than the header.
pub fn express(buf: &[u8]) -> bool {
    has_flag(buf, EXPRESS)
}

/// Sets [`EXPRESS`] in the header at the start of `buf` (nothing if `buf` is shorter than the
/// header).
pub fn set_express(buf: &mut [u8]) {
    set_flag(buf, EXPRESS);
}

/// Sets [`CSUM_PARTIAL`] in the header at the start of `buf` (nothing if `buf` is shorter than
/// the header).
pub fn set_csum_partial(buf: &mut [u8]) {
    set_flag(buf, CSUM_PARTIAL);
}

/// Whether the header at the start of `buf` has weft flag `flag`; `false` if `buf` is shorter
/// than the header.
fn has_flag(buf: &[u8], flag: u8) -> bool {
    buf.len() >= HEADER_LEN && buf[WEFT_FLAGS_OFFSET] & flag != 0
}

/// Sets weft flag `flag` in the header at the start of `buf` (nothing if `buf` is shorter than
/// the header).
fn set_flag(buf: &mut [u8], flag: u8) {
    if buf.len() >= HEADER_LEN {
        buf[WEFT_FLAGS_OFFSET] |= flag;
    }
}

/// Writes a VXLAN header carrying `vni` (I flag set, reserved bits zero) into the first
/// [`HEADER_LEN`] bytes of `buf`, in front of the frame the caller places after it. Bits of
/// `vni` above 24 are dropped. Fails if `buf` is shorter than [`HEADER_LEN`].
pub fn write_header(buf: &mut [u8], vni: u32) -> Result<(), Error> {
    let (header, _) = buf.split_first_chunk_mut::<HEADER_LEN>().ok_or(Error)?;
    let v = (vni & MAX_VNI).to_be_bytes();
    *header = [FLAG_I, 0, 0, 0, v[1], v[2], v[3], 0];
    Ok(())
}

/// A read/write view of a VXLAN packet (header plus inner frame) over a buffer.
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

    /// Wraps a buffer, checking its length and that the I flag is set (see the module docs).
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        if !packet.has_vni() {
            return Err(Error);
        }
        Ok(packet)
    }

    /// Checks that the buffer holds at least [`HEADER_LEN`] bytes; after this no getter panics.
    pub fn check_len(&self) -> Result<(), Error> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(Error)
        } else {
            Ok(())
        }
    }

    /// Unwraps the view, returning the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The whole flags byte.
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// Whether the I flag is set, i.e. the VNI is valid.
    pub fn has_vni(&self) -> bool {
        self.flags() & FLAG_I != 0
    }

    /// The 24-bit VXLAN Network Identifier.
    pub fn vni(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::VNI];
        u32::from_be_bytes([0, b[0], b[1], b[2]])
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The inner Ethernet frame after the header.
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the whole flags byte.
    pub fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[field::FLAGS] = flags;
    }

    /// Sets the VNI; bits above 24 are dropped.
    pub fn set_vni(&mut self, vni: u32) {
        let v = (vni & MAX_VNI).to_be_bytes();
        self.buffer.as_mut()[field::VNI].copy_from_slice(&v[1..]);
    }

    /// Sets the stream byte (the last reserved byte; see the module doc).
    pub fn set_stream(&mut self, stream: u8) {
        self.buffer.as_mut()[field::RESERVED2] = stream;
    }

    /// Zeroes both reserved fields.
    pub fn clear_reserved(&mut self) {
        let buf = self.buffer.as_mut();
        buf[field::RESERVED1].fill(0);
        buf[field::RESERVED2] = 0;
    }

    /// The inner frame after the header, mutably.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Packet<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// A parsed VXLAN header: only the VNI carries meaning.
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub struct Repr {
    /// The 24-bit VXLAN Network Identifier (at most [`MAX_VNI`]).
    pub vni: u32,
}

impl Repr {
    /// Parses a header. Fails if the buffer is too short or the I flag is clear.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Self, Error> {
        packet.check_len()?;
        if !packet.has_vni() {
            return Err(Error);
        }
        Ok(Self { vni: packet.vni() })
    }

    /// The number of bytes [`emit`](Self::emit) writes: [`HEADER_LEN`].
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header: I flag set, reserved bits zero, the VNI (bits above 24 dropped).
    ///
    /// # Panics
    /// If the buffer is shorter than [`HEADER_LEN`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]> + ?Sized>(&self, packet: &mut Packet<&mut T>) {
        packet.set_flags(FLAG_I);
        packet.clear_reserved();
        packet.set_vni(self.vni);
    }
}

impl fmt::Display for Repr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (src, dst) = split_vni(self.vni);
        write!(f, "VXLAN vni=0x{:06x} (short ids {src}->{dst})", self.vni)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    // I flag, VNI 0x123456, then a 14-byte inner Ethernet header (heartbeat-style zero MACs).
    static PACKET_BYTES: [u8; 22] = [
        0x08, 0x00, 0x00, 0x00, 0x12, 0x34, 0x56, 0x00, // VXLAN
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x00, // inner Ethernet
    ];

    #[test]
    fn deconstruct() {
        let packet = Packet::new_checked(&PACKET_BYTES[..]).unwrap();
        assert_eq!(packet.flags(), 0x08);
        assert!(packet.has_vni());
        assert_eq!(packet.vni(), 0x123456);
        assert_eq!(packet.payload(), &PACKET_BYTES[8..]);
        assert_eq!(
            parse_header(&PACKET_BYTES),
            Some((0x123456, &PACKET_BYTES[8..]))
        );
    }

    #[test]
    fn construct() {
        let mut buf = [0xffu8; 22];
        let mut packet = Packet::new_unchecked(&mut buf[..]);
        packet.set_flags(FLAG_I);
        packet.clear_reserved();
        packet.set_vni(0x123456);
        packet.payload_mut().fill(0);
        assert_eq!(buf, PACKET_BYTES);

        let mut buf = [0xffu8; 22];
        write_header(&mut buf, 0xab12_3456).unwrap();
        buf[8..].fill(0);
        assert_eq!(buf, PACKET_BYTES);
        assert_eq!(write_header(&mut [0u8; 7], 1), Err(Error));
    }

    #[test]
    fn the_stream_byte_is_the_last_reserved_byte_and_ignored_by_parsing() {
        let mut buf = PACKET_BYTES;
        assert_eq!(stream_of(&buf), 0);
        Packet::new_unchecked(&mut buf[..]).set_stream(3);
        assert_eq!(buf[7], 3);
        assert_eq!(stream_of(&buf), 3);
        assert_eq!(parse_header(&buf), Some((0x123456, &PACKET_BYTES[8..])));
        assert_eq!(stream_of(&buf[..7]), 0, "too short for a header");
    }

    #[test]
    fn csum_partial_is_bit_0_of_the_first_reserved_byte_and_ignored_by_parsing() {
        let mut buf = PACKET_BYTES;
        assert!(
            !csum_partial(&buf),
            "written as zero by write_header and Repr::emit"
        );
        set_csum_partial(&mut buf);
        assert_eq!(buf[..4], [FLAG_I, CSUM_PARTIAL, 0, 0]);
        assert!(csum_partial(&buf));
        assert_eq!(parse_header(&buf), Some((0x123456, &PACKET_BYTES[8..])));
        assert_eq!(stream_of(&buf), 0, "the stream byte is another byte");
        // Another bit of that byte is another flag.
        buf[WEFT_FLAGS_OFFSET] = EXPRESS;
        assert!(!csum_partial(&buf));
        assert!(!csum_partial(&buf[..7]), "too short for a header");
        let mut short = [FLAG_I; 7];
        set_csum_partial(&mut short);
        assert_eq!(short, [FLAG_I; 7], "too short: left alone");
    }

    #[test]
    fn express_is_bit_1_of_the_first_reserved_byte_and_ignored_by_parsing() {
        let mut buf = PACKET_BYTES;
        assert!(!express(&buf));
        set_express(&mut buf);
        set_csum_partial(&mut buf);
        assert_eq!(buf[..4], [FLAG_I, EXPRESS | CSUM_PARTIAL, 0, 0]);
        assert!(express(&buf) && csum_partial(&buf));
        assert_eq!(parse_header(&buf), Some((0x123456, &PACKET_BYTES[8..])));
        buf[WEFT_FLAGS_OFFSET] = CSUM_PARTIAL;
        assert!(!express(&buf));
        assert!(!express(&buf[..7]), "too short for a header");
        let mut short = [FLAG_I; 7];
        set_express(&mut short);
        assert_eq!(short, [FLAG_I; 7], "too short: left alone");
    }

    #[test]
    fn parse_emit_round_trip() {
        let packet = Packet::new_checked(&PACKET_BYTES[..]).unwrap();
        let repr = Repr::parse(&packet).unwrap();
        assert_eq!(repr, Repr { vni: 0x123456 });
        assert_eq!(repr.to_string(), "VXLAN vni=0x123456 (short ids 1110->291)");
        let mut buf = [0xffu8; 8];
        repr.emit(&mut Packet::new_unchecked(&mut buf[..]));
        assert_eq!(buf, PACKET_BYTES[..8]);
    }

    #[test]
    fn reserved_bits_ignored() {
        let mut buf = PACKET_BYTES;
        buf[0] = 0xff;
        buf[1..4].fill(0xaa);
        buf[7] = 0x55;
        let packet = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(Repr::parse(&packet), Ok(Repr { vni: 0x123456 }));
        assert_eq!(parse_header(&buf).map(|(vni, _)| vni), Some(0x123456));
    }

    #[test]
    fn missing_i_flag_rejected() {
        let mut buf = PACKET_BYTES;
        buf[0] = 0xf7;
        assert_eq!(Packet::new_checked(&buf[..]), Err(Error));
        assert_eq!(Repr::parse(&Packet::new_unchecked(&buf[..])), Err(Error));
        assert_eq!(parse_header(&buf), None);
    }

    #[test]
    fn every_truncation_rejected() {
        for len in 0..HEADER_LEN {
            assert_eq!(
                Packet::new_checked(&PACKET_BYTES[..len]),
                Err(Error),
                "len {len}"
            );
            assert_eq!(parse_header(&PACKET_BYTES[..len]), None);
        }
        let packet = Packet::new_checked(&PACKET_BYTES[..HEADER_LEN]).unwrap();
        assert!(packet.payload().is_empty());
    }

    #[test]
    fn vni_mapping() {
        assert_eq!(vni_for(0x001, 0x002), 0x002001);
        assert_eq!(vni_for(0xfff, 0xfff), MAX_VNI);
        assert_eq!(vni_for(0xf123, 0xf456), 0x456123);
        assert_eq!(split_vni(0x456123), (0x123, 0x456));
        assert_eq!(split_vni(0xff00_0000), (0, 0));
    }

    proptest! {
        #[test]
        fn repr_round_trip(vni in 0u32..=MAX_VNI, inner in proptest::collection::vec(any::<u8>(), 0..32)) {
            let repr = Repr { vni };
            let mut buf = vec![0u8; repr.buffer_len() + inner.len()];
            let mut packet = Packet::new_unchecked(&mut buf[..]);
            repr.emit(&mut packet);
            packet.payload_mut().copy_from_slice(&inner);
            let packet = Packet::new_checked(&buf[..]).unwrap();
            prop_assert_eq!(Repr::parse(&packet), Ok(repr));
            prop_assert_eq!(packet.payload(), &inner[..]);
            prop_assert_eq!(parse_header(&buf), Some((vni, &inner[..])));
        }

        #[test]
        fn write_header_matches_emit(vni: u32) {
            let mut a = [0u8; HEADER_LEN];
            let mut b = [0xffu8; HEADER_LEN];
            Repr { vni }.emit(&mut Packet::new_unchecked(&mut a[..]));
            write_header(&mut b, vni).unwrap();
            prop_assert_eq!(a, b);
        }

        #[test]
        fn vni_split_round_trip(src in 0u16..4096, dst in 0u16..4096) {
            let vni = vni_for(src, dst);
            prop_assert!(vni <= MAX_VNI);
            prop_assert_eq!(split_vni(vni), (src, dst));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
            if let Ok(packet) = Packet::new_checked(&bytes[..]) {
                let _ = (packet.flags(), packet.vni(), packet.payload());
                prop_assert!(Repr::parse(&packet).is_ok());
            }
            let _ = parse_header(&bytes);
        }
    }
}
