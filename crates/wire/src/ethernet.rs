//! Ethernet II frames (layer 2): MAC addresses, EtherTypes, and the 14-byte header view.
//!
//! This module owns the Ethernet header only; the payload is an opaque byte slice. It provides
//! the [`Frame`] view, the [`Repr`] of a header, the [`Address`] type used everywhere in weft for
//! MACs, and allocation-free helpers ([`dst_of`], [`src_of`], [`ethertype_of`]) for the data
//! plane, which only ever reads the MACs of the frames it forwards.
//!
//! **Panic contract:** once [`Frame::new_checked`] (or [`Frame::check_len`]) has succeeded, no
//! getter panics, whatever the bytes. Setters and [`Repr::emit`] panic only if the buffer is
//! shorter than [`HEADER_LEN`], which the caller controls.

use std::fmt;
use std::str::FromStr;

use crate::Error;

/// Length of an Ethernet II header: destination, source, EtherType.
pub const HEADER_LEN: usize = field::PAYLOAD.start;

mod field {
    pub(crate) type Field = std::ops::Range<usize>;
    pub(crate) type Rest = std::ops::RangeFrom<usize>;

    pub(crate) const DESTINATION: Field = 0..6;
    pub(crate) const SOURCE: Field = 6..12;
    pub(crate) const ETHERTYPE: Field = 12..14;
    pub(crate) const PAYLOAD: Rest = 14..;
}

/// A 48-bit Ethernet (MAC) address.
#[derive(Clone, Copy, Debug, Default, Eq, Hash, Ord, PartialEq, PartialOrd)]
pub struct Address(pub [u8; 6]);

impl Address {
    /// The broadcast address `ff:ff:ff:ff:ff:ff`.
    pub const BROADCAST: Self = Self([0xff; 6]);
    /// The all-zero address `00:00:00:00:00:00` (used by weft's data-path heartbeat frame).
    pub const ZERO: Self = Self([0; 6]);

    /// Builds an address from its six bytes.
    pub const fn from_bytes(bytes: [u8; 6]) -> Self {
        Self(bytes)
    }

    /// Builds an address from a slice of exactly six bytes; `None` for any other length.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 6]>::try_from(bytes).ok().map(Self)
    }

    /// The six bytes of the address, in wire order.
    pub const fn as_bytes(&self) -> &[u8; 6] {
        &self.0
    }

    /// Whether this is the broadcast address.
    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    /// Whether the group bit (least significant bit of the first byte) is set. Broadcast is
    /// multicast too.
    pub const fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// Whether this is an individual (unicast) address: the group bit is clear.
    pub const fn is_unicast(&self) -> bool {
        !self.is_multicast()
    }

    /// Whether the locally administered bit (second least significant bit of the first byte) is
    /// set, as it is for the random MACs weft and container runtimes generate.
    pub const fn is_local(&self) -> bool {
        self.0[0] & 0x02 != 0
    }

    /// Whether this is `00:00:00:00:00:00`.
    pub fn is_zero(&self) -> bool {
        *self == Self::ZERO
    }
}

impl From<[u8; 6]> for Address {
    fn from(bytes: [u8; 6]) -> Self {
        Self(bytes)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for Address {
    type Err = Error;

    /// Parses `aa:bb:cc:dd:ee:ff`: six groups of exactly two hex digits (either case) separated
    /// by colons.
    fn from_str(s: &str) -> Result<Self, Error> {
        let mut out = [0u8; 6];
        let mut groups = s.split(':');
        for byte in out.iter_mut() {
            let group = groups.next().ok_or(Error)?;
            if group.len() != 2 || !group.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(Error);
            }
            *byte = u8::from_str_radix(group, 16).map_err(|_| Error)?;
        }
        if groups.next().is_some() {
            return Err(Error);
        }
        Ok(Self(out))
    }
}

/// The EtherType field: what the payload of a frame is. Unlisted values are kept in
/// [`EtherType::Unknown`], so every value round-trips.
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub enum EtherType {
    /// Address Resolution Protocol, `0x0806`.
    Arp,
    /// Internet Protocol version 4, `0x0800`.
    Ipv4,
    /// Internet Protocol version 6, `0x86DD`.
    Ipv6,
    /// IEEE 802.1Q VLAN tag, `0x8100`.
    Vlan,
    /// Any other value, kept as-is.
    Unknown(u16),
}

impl From<u16> for EtherType {
    fn from(value: u16) -> Self {
        match value {
            0x0800 => Self::Ipv4,
            0x0806 => Self::Arp,
            0x86DD => Self::Ipv6,
            0x8100 => Self::Vlan,
            other => Self::Unknown(other),
        }
    }
}

impl From<EtherType> for u16 {
    fn from(value: EtherType) -> Self {
        match value {
            EtherType::Ipv4 => 0x0800,
            EtherType::Arp => 0x0806,
            EtherType::Ipv6 => 0x86DD,
            EtherType::Vlan => 0x8100,
            EtherType::Unknown(other) => other,
        }
    }
}

impl fmt::Display for EtherType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ipv4 => f.write_str("IPv4"),
            Self::Arp => f.write_str("ARP"),
            Self::Ipv6 => f.write_str("IPv6"),
            Self::Vlan => f.write_str("VLAN"),
            Self::Unknown(v) => write!(f, "0x{v:04x}"),
        }
    }
}

/// The destination MAC of a raw frame, or `None` if it is shorter than a header.
pub fn dst_of(frame: &[u8]) -> Option<Address> {
    if frame.len() < HEADER_LEN {
        return None;
    }
    frame.get(field::DESTINATION).and_then(Address::from_slice)
}

/// The source MAC of a raw frame, or `None` if it is shorter than a header.
pub fn src_of(frame: &[u8]) -> Option<Address> {
    if frame.len() < HEADER_LEN {
        return None;
    }
    frame.get(field::SOURCE).and_then(Address::from_slice)
}

/// The EtherType of a raw frame, or `None` if it is shorter than a header.
pub fn ethertype_of(frame: &[u8]) -> Option<EtherType> {
    let b = frame.get(field::ETHERTYPE)?;
    Some(u16::from_be_bytes([b[0], b[1]]).into())
}

/// A read/write view of an Ethernet II frame over a buffer.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Wraps a buffer without checking its length. Getters may panic unless
    /// [`check_len`](Self::check_len) succeeds.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps a buffer, checking that it holds at least a full header.
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let frame = Self::new_unchecked(buffer);
        frame.check_len()?;
        Ok(frame)
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

    /// The length of the header, always [`HEADER_LEN`].
    pub const fn header_len() -> usize {
        HEADER_LEN
    }

    /// The destination address.
    pub fn dst_addr(&self) -> Address {
        let mut a = [0u8; 6];
        a.copy_from_slice(&self.buffer.as_ref()[field::DESTINATION]);
        Address(a)
    }

    /// The source address.
    pub fn src_addr(&self) -> Address {
        let mut a = [0u8; 6];
        a.copy_from_slice(&self.buffer.as_ref()[field::SOURCE]);
        Address(a)
    }

    /// The EtherType.
    pub fn ethertype(&self) -> EtherType {
        let b = &self.buffer.as_ref()[field::ETHERTYPE];
        u16::from_be_bytes([b[0], b[1]]).into()
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Frame<&'a T> {
    /// The payload: everything after the header.
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    /// Sets the destination address.
    pub fn set_dst_addr(&mut self, addr: Address) {
        self.buffer.as_mut()[field::DESTINATION].copy_from_slice(&addr.0);
    }

    /// Sets the source address.
    pub fn set_src_addr(&mut self, addr: Address) {
        self.buffer.as_mut()[field::SOURCE].copy_from_slice(&addr.0);
    }

    /// Sets the EtherType.
    pub fn set_ethertype(&mut self, ethertype: EtherType) {
        let v: u16 = ethertype.into();
        self.buffer.as_mut()[field::ETHERTYPE].copy_from_slice(&v.to_be_bytes());
    }

    /// The payload, mutably.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Frame<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// A parsed Ethernet II header.
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub struct Repr {
    /// Source MAC.
    pub src_addr: Address,
    /// Destination MAC.
    pub dst_addr: Address,
    /// What the payload is.
    pub ethertype: EtherType,
}

impl Repr {
    /// Parses the header of a checked frame. Fails only if the frame is too short.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(frame: &Frame<&T>) -> Result<Self, Error> {
        frame.check_len()?;
        Ok(Self {
            src_addr: frame.src_addr(),
            dst_addr: frame.dst_addr(),
            ethertype: frame.ethertype(),
        })
    }

    /// The number of bytes [`emit`](Self::emit) writes: [`HEADER_LEN`].
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header into `frame`.
    ///
    /// # Panics
    /// If the buffer is shorter than [`HEADER_LEN`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]> + ?Sized>(&self, frame: &mut Frame<&mut T>) {
        frame.set_src_addr(self.src_addr);
        frame.set_dst_addr(self.dst_addr);
        frame.set_ethertype(self.ethertype);
    }
}

impl fmt::Display for Repr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Ethernet src={} dst={} type={}",
            self.src_addr, self.dst_addr, self.ethertype
        )
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    // dst 02:00:00:00:00:01, src 02:00:00:00:00:02, IPv4, payload aa bb cc dd.
    static FRAME_BYTES: [u8; 18] = [
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x08, 0x00, 0xaa,
        0xbb, 0xcc, 0xdd,
    ];

    #[test]
    fn deconstruct() {
        let frame = Frame::new_checked(&FRAME_BYTES[..]).unwrap();
        assert_eq!(frame.dst_addr(), Address([2, 0, 0, 0, 0, 1]));
        assert_eq!(frame.src_addr(), Address([2, 0, 0, 0, 0, 2]));
        assert_eq!(frame.ethertype(), EtherType::Ipv4);
        assert_eq!(frame.payload(), &[0xaa, 0xbb, 0xcc, 0xdd]);
        assert_eq!(dst_of(&FRAME_BYTES), Some(Address([2, 0, 0, 0, 0, 1])));
        assert_eq!(src_of(&FRAME_BYTES), Some(Address([2, 0, 0, 0, 0, 2])));
        assert_eq!(ethertype_of(&FRAME_BYTES), Some(EtherType::Ipv4));
    }

    #[test]
    fn construct() {
        let mut buf = [0u8; 18];
        let mut frame = Frame::new_unchecked(&mut buf[..]);
        frame.set_dst_addr(Address([2, 0, 0, 0, 0, 1]));
        frame.set_src_addr(Address([2, 0, 0, 0, 0, 2]));
        frame.set_ethertype(EtherType::Ipv4);
        frame
            .payload_mut()
            .copy_from_slice(&[0xaa, 0xbb, 0xcc, 0xdd]);
        assert_eq!(buf, FRAME_BYTES);
    }

    #[test]
    fn parse_emit_round_trip() {
        let frame = Frame::new_checked(&FRAME_BYTES[..]).unwrap();
        let repr = Repr::parse(&frame).unwrap();
        assert_eq!(
            repr.to_string(),
            "Ethernet src=02:00:00:00:00:02 dst=02:00:00:00:00:01 type=IPv4"
        );
        let mut buf = FRAME_BYTES;
        buf[..HEADER_LEN].fill(0);
        repr.emit(&mut Frame::new_unchecked(&mut buf[..]));
        assert_eq!(buf, FRAME_BYTES);
    }

    #[test]
    fn every_truncation_rejected() {
        for len in 0..HEADER_LEN {
            assert_eq!(Frame::new_checked(&FRAME_BYTES[..len]), Err(Error));
            assert_eq!(dst_of(&FRAME_BYTES[..len]), None);
            assert_eq!(src_of(&FRAME_BYTES[..len]), None);
            assert_eq!(ethertype_of(&FRAME_BYTES[..len]), None);
        }
        let frame = Frame::new_checked(&FRAME_BYTES[..HEADER_LEN]).unwrap();
        assert!(frame.payload().is_empty());
    }

    #[test]
    fn address_classes() {
        assert!(Address::BROADCAST.is_broadcast());
        assert!(Address::BROADCAST.is_multicast());
        assert!(!Address::BROADCAST.is_unicast());
        let mcast = Address([0x01, 0x00, 0x5e, 0, 0, 1]);
        assert!(mcast.is_multicast() && !mcast.is_broadcast() && !mcast.is_local());
        let local = Address([0x02, 0x42, 0xac, 0x11, 0, 2]);
        assert!(local.is_unicast() && local.is_local());
        let global = Address([0x00, 0x1b, 0x21, 0, 0, 1]);
        assert!(global.is_unicast() && !global.is_local());
        assert!(Address::ZERO.is_zero());
        assert_eq!(Address::from_slice(&[1, 2, 3]), None);
    }

    #[test]
    fn address_text() {
        let a = Address([0xaa, 0xbb, 0x0c, 0xdd, 0xee, 0x0f]);
        assert_eq!(a.to_string(), "aa:bb:0c:dd:ee:0f");
        assert_eq!("aa:bb:0c:dd:ee:0f".parse(), Ok(a));
        assert_eq!("AA:BB:0C:DD:EE:0F".parse(), Ok(a));
        for bad in [
            "",
            "aa:bb:cc:dd:ee",
            "aa:bb:cc:dd:ee:ff:00",
            "aa:bb:cc:dd:ee:f",
            "aa:bb:cc:dd:ee:fff",
            "aa-bb-cc-dd-ee-ff",
            "aa:bb:cc:dd:ee:+f",
            "gg:bb:cc:dd:ee:ff",
            "aa:bb:cc:dd:ee:ff:",
        ] {
            assert_eq!(bad.parse::<Address>(), Err(Error), "{bad:?}");
        }
    }

    #[test]
    fn ethertype_round_trips() {
        for v in [0x0800u16, 0x0806, 0x86DD, 0x8100, 0x0000, 0x88cc] {
            assert_eq!(u16::from(EtherType::from(v)), v);
        }
        assert_eq!(EtherType::from(0x0806), EtherType::Arp);
        assert_eq!(EtherType::Unknown(0x88cc).to_string(), "0x88cc");
    }

    proptest! {
        #[test]
        fn repr_round_trip(src: [u8; 6], dst: [u8; 6], ty: u16, payload_len in 0usize..64) {
            let repr = Repr {
                src_addr: Address(src),
                dst_addr: Address(dst),
                ethertype: EtherType::from(ty),
            };
            let mut buf = vec![0u8; repr.buffer_len() + payload_len];
            repr.emit(&mut Frame::new_unchecked(&mut buf[..]));
            let frame = Frame::new_checked(&buf[..]).unwrap();
            prop_assert_eq!(Repr::parse(&frame), Ok(repr));
            prop_assert_eq!(frame.payload().len(), payload_len);
        }

        #[test]
        fn address_text_round_trip(bytes: [u8; 6]) {
            let a = Address(bytes);
            prop_assert_eq!(a.to_string().parse::<Address>(), Ok(a));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..32)) {
            if let Ok(frame) = Frame::new_checked(&bytes[..]) {
                let _ = (frame.dst_addr(), frame.src_addr(), frame.ethertype(), frame.payload());
                prop_assert!(Repr::parse(&frame).is_ok());
            }
        }
    }
}
