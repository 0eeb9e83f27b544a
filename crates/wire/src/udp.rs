//! UDP datagrams (layer 4) over IPv4: the 8-byte header view, its [`Repr`], and the checksum
//! with the IPv4 pseudo-header.
//!
//! This module owns the UDP header only; weft carries VXLAN (see [`crate::vxlan`]) in the
//! payload. A zero checksum means "no checksum" over IPv4, and is what VXLAN senders should use
//! (RFC 7348 §5), so [`Repr::emit`] writes zero and [`Packet::fill_checksum`] is a separate step.
//!
//! **Panic contract:** once [`Packet::new_checked`] (or [`Packet::check_len`]) has succeeded, no
//! getter panics, whatever the bytes. Setters and [`Repr::emit`] panic only if the caller's
//! buffer is too short for what they write.
//!
//! **Fuzzing:** under `cfg(fuzzing)`, [`Packet::verify_checksum`] always returns `true`.

use std::fmt;
use std::net::Ipv4Addr;

use crate::Error;
use crate::ipv4::{Protocol, checksum};

/// Length of a UDP header.
pub const HEADER_LEN: usize = field::CHECKSUM.end;

mod field {
    pub(crate) type Field = std::ops::Range<usize>;

    pub(crate) const SRC_PORT: Field = 0..2;
    pub(crate) const DST_PORT: Field = 2..4;
    pub(crate) const LENGTH: Field = 4..6;
    pub(crate) const CHECKSUM: Field = 6..8;
}

/// A read/write view of a UDP datagram over a buffer.
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

    /// Checks that the buffer holds a header, and that the length field is at least
    /// [`HEADER_LEN`] and within the buffer. Trailing bytes past the length field are ignored.
    pub fn check_len(&self) -> Result<(), Error> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error);
        }
        let field_len = usize::from(self.len());
        if field_len < HEADER_LEN || field_len > len {
            return Err(Error);
        }
        Ok(())
    }

    /// Unwraps the view, returning the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The source port.
    pub fn src_port(&self) -> u16 {
        self.read_u16(field::SRC_PORT)
    }

    /// The destination port.
    pub fn dst_port(&self) -> u16 {
        self.read_u16(field::DST_PORT)
    }

    /// The length field: header plus payload.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u16 {
        self.read_u16(field::LENGTH)
    }

    /// The checksum field; 0 means the sender computed none.
    pub fn checksum(&self) -> u16 {
        self.read_u16(field::CHECKSUM)
    }

    /// Whether the checksum is correct for the given IPv4 addresses. A zero checksum ("none")
    /// is accepted. Always `true` under `cfg(fuzzing)`.
    pub fn verify_checksum(&self, src_addr: Ipv4Addr, dst_addr: Ipv4Addr) -> bool {
        if cfg!(fuzzing) || self.checksum() == 0 {
            return true;
        }
        let len = self.len();
        let data = &self.buffer.as_ref()[..usize::from(len)];
        let sum = checksum::combine(&[
            checksum::pseudo_header(src_addr, dst_addr, Protocol::Udp, len),
            checksum::data(data),
        ]);
        sum == 0xffff
    }

    fn read_u16(&self, range: field::Field) -> u16 {
        let b = &self.buffer.as_ref()[range];
        u16::from_be_bytes([b[0], b[1]])
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The payload: from the end of the header to the length field.
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[HEADER_LEN..usize::from(self.len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the source port.
    pub fn set_src_port(&mut self, port: u16) {
        self.write_u16(field::SRC_PORT, port);
    }

    /// Sets the destination port.
    pub fn set_dst_port(&mut self, port: u16) {
        self.write_u16(field::DST_PORT, port);
    }

    /// Sets the length field (header plus payload).
    pub fn set_len(&mut self, len: u16) {
        self.write_u16(field::LENGTH, len);
    }

    /// Sets the checksum field as-is.
    pub fn set_checksum(&mut self, checksum: u16) {
        self.write_u16(field::CHECKSUM, checksum);
    }

    /// Computes the checksum over the pseudo-header, header and payload (up to the length
    /// field) and stores it. Write the payload first.
    ///
    /// # Panics
    /// If the buffer is shorter than the length field.
    pub fn fill_checksum(&mut self, src_addr: Ipv4Addr, dst_addr: Ipv4Addr) {
        self.set_checksum(0);
        let len = self.len();
        let sum = checksum::combine(&[
            checksum::pseudo_header(src_addr, dst_addr, Protocol::Udp, len),
            checksum::data(&self.buffer.as_ref()[..usize::from(len)]),
        ]);
        // RFC 768: "If the computed checksum is zero, it is transmitted as all ones (the
        // equivalent in one's complement arithmetic). An all zero transmitted checksum value
        // means that the transmitter generated no checksum."
        let value = match !sum {
            0 => 0xffff,
            v => v,
        };
        self.set_checksum(value);
    }

    /// The payload, mutably: from the end of the header to the length field.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = usize::from(self.len());
        &mut self.buffer.as_mut()[HEADER_LEN..end]
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

/// A parsed UDP header.
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub struct Repr {
    /// Source port (0 means "none", which RFC 768 allows).
    pub src_port: u16,
    /// Destination port; never 0.
    pub dst_port: u16,
    /// Length of the payload in bytes.
    pub payload_len: usize,
}

impl Repr {
    /// Parses a checked datagram carried from `src_addr` to `dst_addr`. Fails if the
    /// destination port is 0 or the checksum is present and wrong.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(
        packet: &Packet<&T>,
        src_addr: Ipv4Addr,
        dst_addr: Ipv4Addr,
    ) -> Result<Self, Error> {
        packet.check_len()?;
        if packet.dst_port() == 0 {
            return Err(Error);
        }
        if !packet.verify_checksum(src_addr, dst_addr) {
            return Err(Error);
        }
        Ok(Self {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            payload_len: usize::from(packet.len()) - HEADER_LEN,
        })
    }

    /// The number of header bytes [`emit`](Self::emit) writes: [`HEADER_LEN`].
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header with checksum 0 ("none", as VXLAN uses). To send a checksum, write the
    /// payload and then call [`Packet::fill_checksum`].
    ///
    /// # Panics
    /// If the buffer is shorter than [`HEADER_LEN`], or if `HEADER_LEN + payload_len` exceeds
    /// 65535 (a caller bug).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]> + ?Sized>(&self, packet: &mut Packet<&mut T>) {
        let len =
            u16::try_from(HEADER_LEN + self.payload_len).expect("UDP payload_len exceeds 65527");
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_len(len);
        packet.set_checksum(0);
    }
}

impl fmt::Display for Repr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "UDP src={} dst={} len={}",
            self.src_port, self.dst_port, self.payload_len
        )
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const DST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

    // UDP 5000 -> 6784 carrying "hi", sent 192.0.2.1 -> 192.0.2.2. Checksum 0xe564 computed
    // independently of this crate (a few lines of Python following RFC 1071 and RFC 768).
    static PACKET_BYTES: [u8; 10] = [0x13, 0x88, 0x1a, 0x80, 0x00, 0x0a, 0xe5, 0x64, 0x68, 0x69];

    #[test]
    fn deconstruct() {
        let packet = Packet::new_checked(&PACKET_BYTES[..]).unwrap();
        assert_eq!(packet.src_port(), 5000);
        assert_eq!(packet.dst_port(), 6784);
        assert_eq!(packet.len(), 10);
        assert_eq!(packet.checksum(), 0xe564);
        assert_eq!(packet.payload(), b"hi");
        assert!(packet.verify_checksum(SRC, DST));
        assert!(!packet.verify_checksum(DST, Ipv4Addr::new(192, 0, 2, 3)));
    }

    #[test]
    fn construct() {
        let mut buf = [0u8; 10];
        let mut packet = Packet::new_unchecked(&mut buf[..]);
        packet.set_src_port(5000);
        packet.set_dst_port(6784);
        packet.set_len(10);
        packet.payload_mut().copy_from_slice(b"hi");
        packet.fill_checksum(SRC, DST);
        assert_eq!(buf, PACKET_BYTES);
    }

    #[test]
    fn inside_ipv4_fixture() {
        // The same datagram is the payload of the IPv4 fixture.
        let ip = crate::ipv4::Packet::new_checked(&crate::ipv4::tests::PACKET_BYTES[..]).unwrap();
        assert_eq!(ip.payload(), &PACKET_BYTES);
        let udp = Packet::new_checked(ip.payload()).unwrap();
        assert!(Repr::parse(&udp, ip.src_addr(), ip.dst_addr()).is_ok());
    }

    #[test]
    fn parse_emit_round_trip() {
        let packet = Packet::new_checked(&PACKET_BYTES[..]).unwrap();
        let repr = Repr::parse(&packet, SRC, DST).unwrap();
        assert_eq!(
            repr,
            Repr {
                src_port: 5000,
                dst_port: 6784,
                payload_len: 2
            }
        );
        assert_eq!(repr.to_string(), "UDP src=5000 dst=6784 len=2");
        let mut buf = [0u8; 10];
        let mut packet = Packet::new_unchecked(&mut buf[..]);
        repr.emit(&mut packet);
        assert_eq!(packet.checksum(), 0);
        packet.payload_mut().copy_from_slice(b"hi");
        packet.fill_checksum(SRC, DST);
        assert_eq!(buf, PACKET_BYTES);
    }

    #[test]
    fn zero_checksum_means_none() {
        let mut buf = PACKET_BYTES;
        buf[6..8].fill(0);
        let packet = Packet::new_checked(&buf[..]).unwrap();
        assert!(packet.verify_checksum(SRC, DST));
        assert!(packet.verify_checksum(DST, SRC));
    }

    #[test]
    fn computed_zero_is_sent_as_ffff() {
        // Choose a payload word that makes the one's complement sum 0xffff, so the computed
        // checksum is 0 and must go out as 0xffff.
        let mut buf = [0u8; 10];
        let mut packet = Packet::new_unchecked(&mut buf[..]);
        packet.set_src_port(5000);
        packet.set_dst_port(6784);
        packet.set_len(10);
        let partial = checksum::combine(&[
            checksum::pseudo_header(SRC, DST, Protocol::Udp, 10),
            checksum::data(&packet.as_ref()[..8]),
        ]);
        packet
            .payload_mut()
            .copy_from_slice(&(!partial).to_be_bytes());
        packet.fill_checksum(SRC, DST);
        assert_eq!(packet.checksum(), 0xffff);
        assert!(packet.verify_checksum(SRC, DST));
    }

    #[test]
    fn bad_checksum_rejected() {
        let mut buf = PACKET_BYTES;
        buf[9] ^= 0x40;
        let packet = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(Repr::parse(&packet, SRC, DST), Err(Error));
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
    }

    #[test]
    fn bad_lengths_rejected() {
        for field_len in [0u16, 7, 11, 0xffff] {
            let mut buf = PACKET_BYTES;
            buf[4..6].copy_from_slice(&field_len.to_be_bytes());
            assert_eq!(Packet::new_checked(&buf[..]), Err(Error), "len {field_len}");
        }
        // A length field shorter than the buffer is fine: trailing bytes are ignored.
        let mut buf = [0u8; 16];
        buf[..10].copy_from_slice(&PACKET_BYTES);
        let packet = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(packet.payload(), b"hi");
        assert!(Repr::parse(&packet, SRC, DST).is_ok());
    }

    #[test]
    fn zero_dst_port_rejected() {
        let mut buf = PACKET_BYTES;
        buf[2..4].fill(0);
        buf[6..8].fill(0);
        let packet = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(Repr::parse(&packet, SRC, DST), Err(Error));
    }

    proptest! {
        #[test]
        fn repr_round_trip(
            src_port: u16,
            dst_port in 1u16..,
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            src: [u8; 4],
            dst: [u8; 4],
            with_checksum: bool,
        ) {
            let (src, dst) = (Ipv4Addr::from(src), Ipv4Addr::from(dst));
            let repr = Repr { src_port, dst_port, payload_len: payload.len() };
            let mut buf = vec![0u8; repr.buffer_len() + payload.len()];
            let mut packet = Packet::new_unchecked(&mut buf[..]);
            repr.emit(&mut packet);
            packet.payload_mut().copy_from_slice(&payload);
            if with_checksum {
                packet.fill_checksum(src, dst);
                prop_assert_ne!(packet.checksum(), 0);
            }
            let packet = Packet::new_checked(&buf[..]).unwrap();
            prop_assert_eq!(Repr::parse(&packet, src, dst), Ok(repr));
            prop_assert_eq!(packet.payload(), &payload[..]);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..32)) {
            if let Ok(packet) = Packet::new_checked(&bytes[..]) {
                let _ = (packet.src_port(), packet.dst_port(), packet.payload());
                let _ = Repr::parse(&packet, Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST);
            }
        }
    }
}
