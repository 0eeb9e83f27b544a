//! ARP packets (layer 2.5, RFC 826): the packet view, the Ethernet/IPv4 [`Repr`], and a builder
//! for gratuitous ARP announcements.
//!
//! The [`Packet`] view reads any hardware/protocol address lengths; [`Repr`] accepts only
//! Ethernet (htype 1, hlen 6) with IPv4 (ptype `0x0800`, plen 4), the only kind weft speaks.
//! weft uses ARP to announce a container's MAC on the overlay ([`emit_gratuitous`]) and to
//! recognise ARP traffic it forwards.
//!
//! **Panic contract:** once [`Packet::new_checked`] (or [`Packet::check_len`]) has succeeded, no
//! getter panics, whatever the bytes. Setters and [`Repr::emit`] panic only if the caller's
//! buffer is too short for what they write.

use std::fmt;
use std::net::Ipv4Addr;

use crate::Error;
use crate::ethernet::{self, Address, EtherType};

mod field {
    pub(crate) type Field = std::ops::Range<usize>;

    pub(crate) const HTYPE: Field = 0..2;
    pub(crate) const PTYPE: Field = 2..4;
    pub(crate) const HLEN: usize = 4;
    pub(crate) const PLEN: usize = 5;
    pub(crate) const OPER: Field = 6..8;

    pub(crate) const fn sha(hlen: u8, _plen: u8) -> Field {
        let start = OPER.end;
        start..start + hlen as usize
    }

    pub(crate) const fn spa(hlen: u8, plen: u8) -> Field {
        let start = sha(hlen, plen).end;
        start..start + plen as usize
    }

    pub(crate) const fn tha(hlen: u8, plen: u8) -> Field {
        let start = spa(hlen, plen).end;
        start..start + hlen as usize
    }

    pub(crate) const fn tpa(hlen: u8, plen: u8) -> Field {
        let start = tha(hlen, plen).end;
        start..start + plen as usize
    }
}

/// Length of the fixed part of an ARP header (before the addresses).
pub const FIXED_HEADER_LEN: usize = field::OPER.end;
/// Length of an Ethernet/IPv4 ARP packet.
pub const ETHERNET_IPV4_LEN: usize = field::tpa(6, 4).end;
/// Length of a gratuitous ARP frame built by [`emit_gratuitous`]: Ethernet header plus ARP.
pub const GRATUITOUS_FRAME_LEN: usize = ethernet::HEADER_LEN + ETHERNET_IPV4_LEN;

/// The hardware type for Ethernet.
const HTYPE_ETHERNET: u16 = 1;

/// The ARP operation. Unlisted values are kept in [`Operation::Unknown`].
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub enum Operation {
    /// A request, 1.
    Request,
    /// A reply, 2.
    Reply,
    /// Any other value, kept as-is.
    Unknown(u16),
}

impl From<u16> for Operation {
    fn from(value: u16) -> Self {
        match value {
            1 => Self::Request,
            2 => Self::Reply,
            other => Self::Unknown(other),
        }
    }
}

impl From<Operation> for u16 {
    fn from(value: Operation) -> Self {
        match value {
            Operation::Request => 1,
            Operation::Reply => 2,
            Operation::Unknown(other) => other,
        }
    }
}

/// A read/write view of an ARP packet over a buffer.
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

    /// Wraps a buffer, checking its length with [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the buffer holds the fixed header and all four addresses, as sized by the
    /// hardware and protocol length fields. Trailing bytes (Ethernet padding) are ignored.
    pub fn check_len(&self) -> Result<(), Error> {
        let len = self.buffer.as_ref().len();
        if len < FIXED_HEADER_LEN {
            return Err(Error);
        }
        if len < field::tpa(self.hardware_len(), self.protocol_len()).end {
            return Err(Error);
        }
        Ok(())
    }

    /// Unwraps the view, returning the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The hardware type (1 for Ethernet).
    pub fn hardware_type(&self) -> u16 {
        self.read_u16(field::HTYPE)
    }

    /// The protocol type, an EtherType (IPv4 for weft).
    pub fn protocol_type(&self) -> EtherType {
        self.read_u16(field::PTYPE).into()
    }

    /// The hardware address length in bytes.
    pub fn hardware_len(&self) -> u8 {
        self.buffer.as_ref()[field::HLEN]
    }

    /// The protocol address length in bytes.
    pub fn protocol_len(&self) -> u8 {
        self.buffer.as_ref()[field::PLEN]
    }

    /// The operation.
    pub fn operation(&self) -> Operation {
        self.read_u16(field::OPER).into()
    }

    /// The sender hardware address bytes.
    pub fn source_hardware_addr(&self) -> &[u8] {
        &self.buffer.as_ref()[field::sha(self.hardware_len(), self.protocol_len())]
    }

    /// The sender protocol address bytes.
    pub fn source_protocol_addr(&self) -> &[u8] {
        &self.buffer.as_ref()[field::spa(self.hardware_len(), self.protocol_len())]
    }

    /// The target hardware address bytes.
    pub fn target_hardware_addr(&self) -> &[u8] {
        &self.buffer.as_ref()[field::tha(self.hardware_len(), self.protocol_len())]
    }

    /// The target protocol address bytes.
    pub fn target_protocol_addr(&self) -> &[u8] {
        &self.buffer.as_ref()[field::tpa(self.hardware_len(), self.protocol_len())]
    }

    fn read_u16(&self, range: field::Field) -> u16 {
        let b = &self.buffer.as_ref()[range];
        u16::from_be_bytes([b[0], b[1]])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the hardware type.
    pub fn set_hardware_type(&mut self, value: u16) {
        self.write_u16(field::HTYPE, value);
    }

    /// Sets the protocol type.
    pub fn set_protocol_type(&mut self, value: EtherType) {
        self.write_u16(field::PTYPE, value.into());
    }

    /// Sets the hardware address length. Set the lengths before the addresses.
    pub fn set_hardware_len(&mut self, value: u8) {
        self.buffer.as_mut()[field::HLEN] = value;
    }

    /// Sets the protocol address length. Set the lengths before the addresses.
    pub fn set_protocol_len(&mut self, value: u8) {
        self.buffer.as_mut()[field::PLEN] = value;
    }

    /// Sets the operation.
    pub fn set_operation(&mut self, value: Operation) {
        self.write_u16(field::OPER, value.into());
    }

    /// Sets the sender hardware address.
    ///
    /// # Panics
    /// If `addr` is not `hardware_len()` bytes long.
    pub fn set_source_hardware_addr(&mut self, addr: &[u8]) {
        let range = field::sha(self.hardware_len(), self.protocol_len());
        self.buffer.as_mut()[range].copy_from_slice(addr);
    }

    /// Sets the sender protocol address.
    ///
    /// # Panics
    /// If `addr` is not `protocol_len()` bytes long.
    pub fn set_source_protocol_addr(&mut self, addr: &[u8]) {
        let range = field::spa(self.hardware_len(), self.protocol_len());
        self.buffer.as_mut()[range].copy_from_slice(addr);
    }

    /// Sets the target hardware address.
    ///
    /// # Panics
    /// If `addr` is not `hardware_len()` bytes long.
    pub fn set_target_hardware_addr(&mut self, addr: &[u8]) {
        let range = field::tha(self.hardware_len(), self.protocol_len());
        self.buffer.as_mut()[range].copy_from_slice(addr);
    }

    /// Sets the target protocol address.
    ///
    /// # Panics
    /// If `addr` is not `protocol_len()` bytes long.
    pub fn set_target_protocol_addr(&mut self, addr: &[u8]) {
        let range = field::tpa(self.hardware_len(), self.protocol_len());
        self.buffer.as_mut()[range].copy_from_slice(addr);
    }

    fn write_u16(&mut self, range: field::Field, value: u16) {
        self.buffer.as_mut()[range].copy_from_slice(&value.to_be_bytes());
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// Whatever follows the last address (usually Ethernet padding; ARP has no payload).
    pub fn payload(&self) -> &'a [u8] {
        let end = field::tpa(self.hardware_len(), self.protocol_len()).end;
        &self.buffer.as_ref()[end..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Whatever follows the last address, mutably.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = field::tpa(self.hardware_len(), self.protocol_len()).end;
        &mut self.buffer.as_mut()[end..]
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Packet<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// A parsed ARP packet. Only Ethernet/IPv4 exists.
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub enum Repr {
    /// ARP for IPv4 over Ethernet.
    EthernetIpv4 {
        /// Request, reply, or another operation code.
        operation: Operation,
        /// Sender MAC.
        source_hardware_addr: Address,
        /// Sender IPv4 address.
        source_protocol_addr: Ipv4Addr,
        /// Target MAC (zero in requests).
        target_hardware_addr: Address,
        /// Target IPv4 address.
        target_protocol_addr: Ipv4Addr,
    },
}

impl Repr {
    /// Parses a checked packet. Fails unless it is Ethernet (htype 1, hlen 6) over IPv4 (ptype
    /// `0x0800`, plen 4).
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Self, Error> {
        packet.check_len()?;
        if packet.hardware_type() != HTYPE_ETHERNET
            || packet.protocol_type() != EtherType::Ipv4
            || packet.hardware_len() != 6
            || packet.protocol_len() != 4
        {
            return Err(Error);
        }
        let ip = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
        let mac = |b: &[u8]| Address::from_slice(b).ok_or(Error);
        Ok(Self::EthernetIpv4 {
            operation: packet.operation(),
            source_hardware_addr: mac(packet.source_hardware_addr())?,
            source_protocol_addr: ip(packet.source_protocol_addr()),
            target_hardware_addr: mac(packet.target_hardware_addr())?,
            target_protocol_addr: ip(packet.target_protocol_addr()),
        })
    }

    /// The number of bytes [`emit`](Self::emit) writes: [`ETHERNET_IPV4_LEN`].
    pub const fn buffer_len(&self) -> usize {
        match self {
            Self::EthernetIpv4 { .. } => ETHERNET_IPV4_LEN,
        }
    }

    /// Writes the packet into `packet`.
    ///
    /// # Panics
    /// If the buffer is shorter than [`buffer_len`](Self::buffer_len).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]> + ?Sized>(&self, packet: &mut Packet<&mut T>) {
        match *self {
            Self::EthernetIpv4 {
                operation,
                source_hardware_addr,
                source_protocol_addr,
                target_hardware_addr,
                target_protocol_addr,
            } => {
                packet.set_hardware_type(HTYPE_ETHERNET);
                packet.set_protocol_type(EtherType::Ipv4);
                packet.set_hardware_len(6);
                packet.set_protocol_len(4);
                packet.set_operation(operation);
                packet.set_source_hardware_addr(source_hardware_addr.as_bytes());
                packet.set_source_protocol_addr(&source_protocol_addr.octets());
                packet.set_target_hardware_addr(target_hardware_addr.as_bytes());
                packet.set_target_protocol_addr(&target_protocol_addr.octets());
            }
        }
    }
}

impl fmt::Display for Repr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EthernetIpv4 {
                operation: Operation::Request,
                source_hardware_addr,
                source_protocol_addr,
                target_protocol_addr,
                ..
            } => write!(
                f,
                "ARP request who-has {target_protocol_addr} tell {source_protocol_addr} \
                 ({source_hardware_addr})"
            ),
            Self::EthernetIpv4 {
                operation: Operation::Reply,
                source_hardware_addr,
                source_protocol_addr,
                ..
            } => write!(
                f,
                "ARP reply {source_protocol_addr} is-at {source_hardware_addr}"
            ),
            Self::EthernetIpv4 {
                operation,
                source_hardware_addr,
                source_protocol_addr,
                target_hardware_addr,
                target_protocol_addr,
            } => write!(
                f,
                "ARP op={} sha={source_hardware_addr} spa={source_protocol_addr} \
                 tha={target_hardware_addr} tpa={target_protocol_addr}",
                u16::from(*operation)
            ),
        }
    }
}

/// Writes a gratuitous ARP announcement for `ip` at `mac` into the front of `buf`, Ethernet
/// header included, and returns the number of bytes written ([`GRATUITOUS_FRAME_LEN`]).
///
/// The frame goes to the broadcast MAC from `mac`. It is a request whose sender and target IP
/// are both `ip` and whose target MAC is zero: the "ARP Announcement" of RFC 5227 §2.3, which
/// makes neighbours update their caches without anyone replying. No Ethernet padding is added
/// (TAP devices and the overlay do not need it).
///
/// Fails if `buf` is shorter than [`GRATUITOUS_FRAME_LEN`].
///
/// ```
/// use std::net::Ipv4Addr;
/// use weft_wire::{arp, ethernet::Address};
///
/// let mut buf = [0u8; 1500];
/// let mac: Address = "02:42:0a:20:00:01".parse().unwrap();
/// let len = arp::emit_gratuitous(&mut buf, mac, Ipv4Addr::new(192, 0, 2, 1)).unwrap();
/// assert_eq!(len, arp::GRATUITOUS_FRAME_LEN);
/// ```
pub fn emit_gratuitous(buf: &mut [u8], mac: Address, ip: Ipv4Addr) -> Result<usize, Error> {
    emit_request(buf, mac, ip, ip)
}

/// Writes a broadcast ARP request from `mac` asking who has `target`, with `sender` as the
/// sender address, into the front of `buf` (Ethernet header included); returns the number of
/// bytes written ([`GRATUITOUS_FRAME_LEN`]). With `sender` 0.0.0.0 it is the "ARP Probe" of
/// RFC 5227 §2.1.1: every holder of `target` answers it (to `mac`), and nobody's cache
/// changes. With `sender == target` it is [`emit_gratuitous`]'s announcement.
///
/// Fails if `buf` is shorter than [`GRATUITOUS_FRAME_LEN`].
pub fn emit_request(
    buf: &mut [u8],
    mac: Address,
    sender: Ipv4Addr,
    target: Ipv4Addr,
) -> Result<usize, Error> {
    let buf = buf.get_mut(..GRATUITOUS_FRAME_LEN).ok_or(Error)?;
    let eth = ethernet::Repr {
        src_addr: mac,
        dst_addr: Address::BROADCAST,
        ethertype: EtherType::Arp,
    };
    let mut frame = ethernet::Frame::new_unchecked(&mut *buf);
    eth.emit(&mut frame);
    let arp = Repr::EthernetIpv4 {
        operation: Operation::Request,
        source_hardware_addr: mac,
        source_protocol_addr: sender,
        target_hardware_addr: Address::ZERO,
        target_protocol_addr: target,
    };
    arp.emit(&mut Packet::new_unchecked(frame.payload_mut()));
    Ok(GRATUITOUS_FRAME_LEN)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    // "who-has 192.0.2.2 tell 192.0.2.1" from 02:00:00:00:00:01.
    static REQUEST_BYTES: [u8; 28] = [
        0x00, 0x01, // htype Ethernet
        0x08, 0x00, // ptype IPv4
        0x06, 0x04, // hlen, plen
        0x00, 0x01, // request
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01, // sha
        0xc0, 0x00, 0x02, 0x01, // spa
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // tha
        0xc0, 0x00, 0x02, 0x02, // tpa
    ];

    fn request() -> Repr {
        Repr::EthernetIpv4 {
            operation: Operation::Request,
            source_hardware_addr: Address([2, 0, 0, 0, 0, 1]),
            source_protocol_addr: Ipv4Addr::new(192, 0, 2, 1),
            target_hardware_addr: Address::ZERO,
            target_protocol_addr: Ipv4Addr::new(192, 0, 2, 2),
        }
    }

    #[test]
    fn deconstruct() {
        let packet = Packet::new_checked(&REQUEST_BYTES[..]).unwrap();
        assert_eq!(packet.hardware_type(), 1);
        assert_eq!(packet.protocol_type(), EtherType::Ipv4);
        assert_eq!(packet.hardware_len(), 6);
        assert_eq!(packet.protocol_len(), 4);
        assert_eq!(packet.operation(), Operation::Request);
        assert_eq!(packet.source_hardware_addr(), &[2, 0, 0, 0, 0, 1]);
        assert_eq!(packet.source_protocol_addr(), &[192, 0, 2, 1]);
        assert_eq!(packet.target_hardware_addr(), &[0; 6]);
        assert_eq!(packet.target_protocol_addr(), &[192, 0, 2, 2]);
        assert!(packet.payload().is_empty());
    }

    #[test]
    fn construct() {
        let mut buf = [0xa5u8; 28];
        let mut packet = Packet::new_unchecked(&mut buf[..]);
        packet.set_hardware_type(1);
        packet.set_protocol_type(EtherType::Ipv4);
        packet.set_hardware_len(6);
        packet.set_protocol_len(4);
        packet.set_operation(Operation::Request);
        packet.set_source_hardware_addr(&[2, 0, 0, 0, 0, 1]);
        packet.set_source_protocol_addr(&[192, 0, 2, 1]);
        packet.set_target_hardware_addr(&[0; 6]);
        packet.set_target_protocol_addr(&[192, 0, 2, 2]);
        assert_eq!(buf, REQUEST_BYTES);
    }

    #[test]
    fn parse_emit_round_trip() {
        let packet = Packet::new_checked(&REQUEST_BYTES[..]).unwrap();
        let repr = Repr::parse(&packet).unwrap();
        assert_eq!(repr, request());
        assert_eq!(
            repr.to_string(),
            "ARP request who-has 192.0.2.2 tell 192.0.2.1 (02:00:00:00:00:01)"
        );
        let mut buf = [0xa5u8; 28];
        repr.emit(&mut Packet::new_unchecked(&mut buf[..]));
        assert_eq!(buf, REQUEST_BYTES);
    }

    #[test]
    fn reply_display() {
        let Repr::EthernetIpv4 {
            source_hardware_addr,
            source_protocol_addr,
            ..
        } = request();
        let reply = Repr::EthernetIpv4 {
            operation: Operation::Reply,
            source_hardware_addr: Address([2, 0, 0, 0, 0, 2]),
            source_protocol_addr: Ipv4Addr::new(192, 0, 2, 2),
            target_hardware_addr: source_hardware_addr,
            target_protocol_addr: source_protocol_addr,
        };
        assert_eq!(
            reply.to_string(),
            "ARP reply 192.0.2.2 is-at 02:00:00:00:00:02"
        );
    }

    #[test]
    fn every_truncation_rejected() {
        for len in 0..REQUEST_BYTES.len() {
            assert_eq!(
                Packet::new_checked(&REQUEST_BYTES[..len]),
                Err(Error),
                "len {len}"
            );
        }
    }

    #[test]
    fn non_ethernet_ipv4_rejected() {
        let edits: [(usize, u8); 6] = [(1, 6), (2, 0x86), (3, 0x01), (4, 8), (5, 16), (0, 1)];
        for (at, value) in edits {
            let mut buf = [0u8; 64];
            buf[..28].copy_from_slice(&REQUEST_BYTES);
            buf[at] = value;
            let packet = Packet::new_checked(&buf[..]).unwrap();
            assert_eq!(Repr::parse(&packet), Err(Error), "byte {at} = {value}");
        }
        // A longer hardware length makes the same 28 bytes too short.
        let mut buf = REQUEST_BYTES;
        buf[4] = 8;
        assert_eq!(Packet::new_checked(&buf[..]), Err(Error));
        // Maximum lengths never index out of bounds.
        let mut buf = [0u8; 8 + 2 * (255 + 255)];
        buf[4] = 255;
        buf[5] = 255;
        assert!(Packet::new_checked(&buf[..buf.len() - 1]).is_err());
        let packet = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(packet.target_protocol_addr().len(), 255);
        assert_eq!(Repr::parse(&packet), Err(Error));
    }

    #[test]
    fn gratuitous() {
        let mac = Address([0x02, 0x42, 0, 0, 0, 7]);
        let ip = Ipv4Addr::new(192, 0, 2, 7);
        let mut buf = [0u8; 64];
        assert_eq!(emit_gratuitous(&mut buf, mac, ip), Ok(42));
        let frame = ethernet::Frame::new_checked(&buf[..42]).unwrap();
        assert_eq!(frame.dst_addr(), Address::BROADCAST);
        assert_eq!(frame.src_addr(), mac);
        assert_eq!(frame.ethertype(), EtherType::Arp);
        let packet = Packet::new_checked(frame.payload()).unwrap();
        assert_eq!(
            Repr::parse(&packet),
            Ok(Repr::EthernetIpv4 {
                operation: Operation::Request,
                source_hardware_addr: mac,
                source_protocol_addr: ip,
                target_hardware_addr: Address::ZERO,
                target_protocol_addr: ip,
            })
        );
        assert!(buf[42..].iter().all(|&b| b == 0));
        let mut short = [0u8; 41];
        assert_eq!(emit_gratuitous(&mut short, mac, ip), Err(Error));
    }

    proptest! {
        #[test]
        fn repr_round_trip(
            op: u16,
            sha: [u8; 6],
            spa: [u8; 4],
            tha: [u8; 6],
            tpa: [u8; 4],
            padding in 0usize..20,
        ) {
            let repr = Repr::EthernetIpv4 {
                operation: Operation::from(op),
                source_hardware_addr: Address(sha),
                source_protocol_addr: Ipv4Addr::from(spa),
                target_hardware_addr: Address(tha),
                target_protocol_addr: Ipv4Addr::from(tpa),
            };
            let mut buf = vec![0u8; repr.buffer_len() + padding];
            repr.emit(&mut Packet::new_unchecked(&mut buf[..]));
            let packet = Packet::new_checked(&buf[..]).unwrap();
            prop_assert_eq!(Repr::parse(&packet), Ok(repr));
            prop_assert_eq!(packet.payload().len(), padding);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(packet) = Packet::new_checked(&bytes[..]) {
                let _ = (
                    packet.operation(), packet.source_hardware_addr(),
                    packet.source_protocol_addr(), packet.target_hardware_addr(),
                    packet.target_protocol_addr(), packet.payload(),
                );
                let _ = Repr::parse(&packet);
            }
        }
    }
}
