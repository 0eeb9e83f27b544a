//! ICMPv4 messages (layer 3, RFC 792): the packet view and a [`Repr`] for the messages weft
//! handles: echo request/reply and destination unreachable, including "fragmentation needed"
//! with the next-hop MTU of RFC 1191 that path-MTU discovery relies on.
//!
//! The view reads any message type; [`Repr`] parses only those three. The ICMP message is the
//! whole buffer handed to the view (the IPv4 payload), and its checksum covers all of it.
//!
//! **Panic contract:** once [`Packet::new_checked`] (or [`Packet::check_len`]) has succeeded, no
//! getter panics, whatever the bytes. Setters and [`Repr::emit`] panic only if the caller's
//! buffer is too short for what they write.
//!
//! **Fuzzing:** under `cfg(fuzzing)`, [`Packet::verify_checksum`] always returns `true`.

use std::fmt;

use crate::Error;
use crate::ipv4::{self, checksum};

/// Length of the ICMP header common to the messages weft handles (type, code, checksum and
/// four type-specific bytes).
pub const HEADER_LEN: usize = field::HEADER_END;

mod field {
    pub(crate) type Field = std::ops::Range<usize>;

    pub(crate) const TYPE: usize = 0;
    pub(crate) const CODE: usize = 1;
    pub(crate) const CHECKSUM: Field = 2..4;
    pub(crate) const ECHO_IDENT: Field = 4..6;
    pub(crate) const ECHO_SEQNO: Field = 6..8;
    pub(crate) const UNUSED: Field = 4..6;
    pub(crate) const MTU: Field = 6..8;
    pub(crate) const HEADER_END: usize = 8;
}

/// The ICMP message type. Unlisted values are kept in [`Message::Unknown`].
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub enum Message {
    /// Destination unreachable, 3.
    DstUnreachable,
    /// Echo reply, 0.
    EchoReply,
    /// Echo request, 8.
    EchoRequest,
    /// Time exceeded, 11.
    TimeExceeded,
    /// Any other value, kept as-is.
    Unknown(u8),
}

impl From<u8> for Message {
    fn from(value: u8) -> Self {
        match value {
            0 => Self::EchoReply,
            3 => Self::DstUnreachable,
            8 => Self::EchoRequest,
            11 => Self::TimeExceeded,
            other => Self::Unknown(other),
        }
    }
}

impl From<Message> for u8 {
    fn from(value: Message) -> Self {
        match value {
            Message::EchoReply => 0,
            Message::DstUnreachable => 3,
            Message::EchoRequest => 8,
            Message::TimeExceeded => 11,
            Message::Unknown(other) => other,
        }
    }
}

/// The code of a destination-unreachable message. Unlisted values are kept in
/// [`Unreachable::Unknown`].
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub enum Unreachable {
    /// Net unreachable, 0.
    NetUnreachable,
    /// Host unreachable, 1.
    HostUnreachable,
    /// Protocol unreachable, 2.
    ProtoUnreachable,
    /// Port unreachable, 3.
    PortUnreachable,
    /// Fragmentation needed and DF set, 4; carries the next-hop MTU (RFC 1191).
    FragRequired,
    /// Source route failed, 5.
    SrcRouteFailed,
    /// Any other value, kept as-is.
    Unknown(u8),
}

impl From<u8> for Unreachable {
    fn from(value: u8) -> Self {
        match value {
            0 => Self::NetUnreachable,
            1 => Self::HostUnreachable,
            2 => Self::ProtoUnreachable,
            3 => Self::PortUnreachable,
            4 => Self::FragRequired,
            5 => Self::SrcRouteFailed,
            other => Self::Unknown(other),
        }
    }
}

impl From<Unreachable> for u8 {
    fn from(value: Unreachable) -> Self {
        match value {
            Unreachable::NetUnreachable => 0,
            Unreachable::HostUnreachable => 1,
            Unreachable::ProtoUnreachable => 2,
            Unreachable::PortUnreachable => 3,
            Unreachable::FragRequired => 4,
            Unreachable::SrcRouteFailed => 5,
            Unreachable::Unknown(other) => other,
        }
    }
}

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NetUnreachable => f.write_str("net"),
            Self::HostUnreachable => f.write_str("host"),
            Self::ProtoUnreachable => f.write_str("protocol"),
            Self::PortUnreachable => f.write_str("port"),
            Self::FragRequired => f.write_str("frag-needed"),
            Self::SrcRouteFailed => f.write_str("source-route-failed"),
            Self::Unknown(code) => write!(f, "code={code}"),
        }
    }
}

/// A read/write view of an ICMPv4 message over a buffer.
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

    /// Checks that the buffer holds the 8-byte header.
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

    /// The message type.
    pub fn msg_type(&self) -> Message {
        self.buffer.as_ref()[field::TYPE].into()
    }

    /// The message code (meaning depends on the type).
    pub fn msg_code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    /// The checksum field.
    pub fn checksum(&self) -> u16 {
        self.read_u16(field::CHECKSUM)
    }

    /// The identifier of an echo request or reply.
    pub fn echo_ident(&self) -> u16 {
        self.read_u16(field::ECHO_IDENT)
    }

    /// The sequence number of an echo request or reply.
    pub fn echo_seq_no(&self) -> u16 {
        self.read_u16(field::ECHO_SEQNO)
    }

    /// The next-hop MTU of a "fragmentation needed" message (RFC 1191); 0 from routers that
    /// predate that RFC.
    pub fn next_hop_mtu(&self) -> u16 {
        self.read_u16(field::MTU)
    }

    /// Whether the checksum over the whole message is correct. Always `true` under
    /// `cfg(fuzzing)`.
    pub fn verify_checksum(&self) -> bool {
        if cfg!(fuzzing) {
            return true;
        }
        checksum::data(self.buffer.as_ref()) == 0xffff
    }

    fn read_u16(&self, range: field::Field) -> u16 {
        let b = &self.buffer.as_ref()[range];
        u16::from_be_bytes([b[0], b[1]])
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The data after the 8-byte header: echo data, or the start of the offending datagram.
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the message type.
    pub fn set_msg_type(&mut self, value: Message) {
        self.buffer.as_mut()[field::TYPE] = value.into();
    }

    /// Sets the message code.
    pub fn set_msg_code(&mut self, value: u8) {
        self.buffer.as_mut()[field::CODE] = value;
    }

    /// Sets the checksum field as-is.
    pub fn set_checksum(&mut self, value: u16) {
        self.write_u16(field::CHECKSUM, value);
    }

    /// Sets the echo identifier.
    pub fn set_echo_ident(&mut self, value: u16) {
        self.write_u16(field::ECHO_IDENT, value);
    }

    /// Sets the echo sequence number.
    pub fn set_echo_seq_no(&mut self, value: u16) {
        self.write_u16(field::ECHO_SEQNO, value);
    }

    /// Sets the next-hop MTU, and zeroes the unused half of that word.
    pub fn set_next_hop_mtu(&mut self, value: u16) {
        self.write_u16(field::UNUSED, 0);
        self.write_u16(field::MTU, value);
    }

    /// Computes the checksum over the whole buffer and stores it. Write the payload first.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let sum = checksum::data(self.buffer.as_ref());
        self.set_checksum(!sum);
    }

    /// The data after the header, mutably.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
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

/// A parsed ICMPv4 message of a kind weft handles. Data borrows from the parsed buffer.
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub enum Repr<'a> {
    /// Echo request ("ping").
    EchoRequest {
        /// Identifier.
        ident: u16,
        /// Sequence number.
        seq_no: u16,
        /// Echo data.
        data: &'a [u8],
    },
    /// Echo reply.
    EchoReply {
        /// Identifier (copied from the request).
        ident: u16,
        /// Sequence number (copied from the request).
        seq_no: u16,
        /// Echo data (copied from the request).
        data: &'a [u8],
    },
    /// Destination unreachable.
    DstUnreachable {
        /// Why.
        reason: Unreachable,
        /// Next-hop MTU for [`Unreachable::FragRequired`]; always 0 for other reasons.
        next_hop_mtu: u16,
        /// The start of the datagram that could not be delivered (its IP header and at least 8
        /// bytes of its payload, per RFC 792). Kept as bytes, not parsed.
        data: &'a [u8],
    },
}

impl<'a> Repr<'a> {
    /// Builds the "fragmentation needed" message to send back for `original`, an IPv4 datagram
    /// too big for a link of `next_hop_mtu` bytes. Quotes its IP header and first 8 payload
    /// bytes, as RFC 792 asks; if `original` is not a readable IPv4 header, quotes at most 28
    /// bytes of it.
    pub fn frag_needed(next_hop_mtu: u16, original: &'a [u8]) -> Self {
        let quoted = match ipv4::Packet::new_checked(original) {
            Ok(ip) => usize::from(ip.header_len()) + 8,
            Err(_) => ipv4::HEADER_LEN + 8,
        };
        Self::DstUnreachable {
            reason: Unreachable::FragRequired,
            next_hop_mtu,
            data: &original[..quoted.min(original.len())],
        }
    }

    /// Parses a checked message. Fails on a bad checksum, an echo with a non-zero code, or any
    /// message type other than echo request/reply and destination unreachable.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&'a T>) -> Result<Self, Error> {
        packet.check_len()?;
        if !packet.verify_checksum() {
            return Err(Error);
        }
        match (packet.msg_type(), packet.msg_code()) {
            (Message::EchoRequest, 0) => Ok(Self::EchoRequest {
                ident: packet.echo_ident(),
                seq_no: packet.echo_seq_no(),
                data: packet.payload(),
            }),
            (Message::EchoReply, 0) => Ok(Self::EchoReply {
                ident: packet.echo_ident(),
                seq_no: packet.echo_seq_no(),
                data: packet.payload(),
            }),
            (Message::DstUnreachable, code) => {
                let reason = Unreachable::from(code);
                let next_hop_mtu = match reason {
                    Unreachable::FragRequired => packet.next_hop_mtu(),
                    _ => 0,
                };
                Ok(Self::DstUnreachable {
                    reason,
                    next_hop_mtu,
                    data: packet.payload(),
                })
            }
            _ => Err(Error),
        }
    }

    /// The number of bytes [`emit`](Self::emit) writes: the header plus the data.
    pub const fn buffer_len(&self) -> usize {
        match self {
            Self::EchoRequest { data, .. }
            | Self::EchoReply { data, .. }
            | Self::DstUnreachable { data, .. } => HEADER_LEN + data.len(),
        }
    }

    /// Writes the message, data included, and fills the checksum. The checksum covers the
    /// whole buffer, so pass a buffer exactly [`buffer_len`](Self::buffer_len) long.
    ///
    /// # Panics
    /// If the buffer is shorter than [`buffer_len`](Self::buffer_len).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]> + ?Sized>(&self, packet: &mut Packet<&mut T>) {
        let data = match *self {
            Self::EchoRequest {
                ident,
                seq_no,
                data,
            } => {
                packet.set_msg_type(Message::EchoRequest);
                packet.set_msg_code(0);
                packet.set_echo_ident(ident);
                packet.set_echo_seq_no(seq_no);
                data
            }
            Self::EchoReply {
                ident,
                seq_no,
                data,
            } => {
                packet.set_msg_type(Message::EchoReply);
                packet.set_msg_code(0);
                packet.set_echo_ident(ident);
                packet.set_echo_seq_no(seq_no);
                data
            }
            Self::DstUnreachable {
                reason,
                next_hop_mtu,
                data,
            } => {
                packet.set_msg_type(Message::DstUnreachable);
                packet.set_msg_code(reason.into());
                let mtu = match reason {
                    Unreachable::FragRequired => next_hop_mtu,
                    _ => 0,
                };
                packet.set_next_hop_mtu(mtu);
                data
            }
        };
        packet.payload_mut()[..data.len()].copy_from_slice(data);
        packet.fill_checksum();
    }
}

impl fmt::Display for Repr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EchoRequest {
                ident,
                seq_no,
                data,
            } => write!(
                f,
                "ICMP echo request id={ident} seq={seq_no} len={}",
                data.len()
            ),
            Self::EchoReply {
                ident,
                seq_no,
                data,
            } => write!(
                f,
                "ICMP echo reply id={ident} seq={seq_no} len={}",
                data.len()
            ),
            Self::DstUnreachable {
                reason: Unreachable::FragRequired,
                next_hop_mtu,
                ..
            } => write!(f, "ICMP unreachable frag-needed mtu={next_hop_mtu}"),
            Self::DstUnreachable { reason, .. } => write!(f, "ICMP unreachable {reason}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    // Echo request id 0x1234 seq 1, data "abcd". Checksum 0x2104 computed independently of this
    // crate (a few lines of Python following RFC 1071).
    static ECHO_BYTES: [u8; 12] = [
        0x08, 0x00, 0x21, 0x04, 0x12, 0x34, 0x00, 0x01, 0x61, 0x62, 0x63, 0x64,
    ];

    // Fragmentation needed, next-hop MTU 1376, quoting a 20-byte IPv4 header (192.0.2.1 ->
    // 192.0.2.2, UDP, total 1500, DF) and 8 bytes of UDP header. Checksum computed as above.
    static FRAG_NEEDED_BYTES: [u8; 36] = [
        0x03, 0x04, 0x74, 0xd9, 0x00, 0x00, 0x05, 0x60, // type 3 code 4, mtu 1376
        0x45, 0x00, 0x05, 0xdc, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0x00, 0x02,
        0x01, 0xc0, 0x00, 0x02, 0x02, // quoted IPv4 header
        0x13, 0x88, 0x1a, 0x80, 0x05, 0xc8, 0x00, 0x00, // quoted UDP header
    ];

    #[test]
    fn deconstruct_echo() {
        let packet = Packet::new_checked(&ECHO_BYTES[..]).unwrap();
        assert_eq!(packet.msg_type(), Message::EchoRequest);
        assert_eq!(packet.msg_code(), 0);
        assert_eq!(packet.checksum(), 0x2104);
        assert_eq!(packet.echo_ident(), 0x1234);
        assert_eq!(packet.echo_seq_no(), 1);
        assert_eq!(packet.payload(), b"abcd");
        assert!(packet.verify_checksum());
    }

    #[test]
    fn construct_echo() {
        let mut buf = [0u8; 12];
        let mut packet = Packet::new_unchecked(&mut buf[..]);
        packet.set_msg_type(Message::EchoRequest);
        packet.set_msg_code(0);
        packet.set_echo_ident(0x1234);
        packet.set_echo_seq_no(1);
        packet.payload_mut().copy_from_slice(b"abcd");
        packet.fill_checksum();
        assert_eq!(buf, ECHO_BYTES);
    }

    #[test]
    fn echo_round_trip() {
        let packet = Packet::new_checked(&ECHO_BYTES[..]).unwrap();
        let repr = Repr::parse(&packet).unwrap();
        assert_eq!(
            repr,
            Repr::EchoRequest {
                ident: 0x1234,
                seq_no: 1,
                data: b"abcd"
            }
        );
        assert_eq!(repr.to_string(), "ICMP echo request id=4660 seq=1 len=4");
        let mut buf = [0u8; 12];
        assert_eq!(repr.buffer_len(), 12);
        repr.emit(&mut Packet::new_unchecked(&mut buf[..]));
        assert_eq!(buf, ECHO_BYTES);
    }

    #[test]
    fn frag_needed_round_trip() {
        let packet = Packet::new_checked(&FRAG_NEEDED_BYTES[..]).unwrap();
        assert_eq!(packet.next_hop_mtu(), 1376);
        let repr = Repr::parse(&packet).unwrap();
        assert_eq!(
            repr,
            Repr::DstUnreachable {
                reason: Unreachable::FragRequired,
                next_hop_mtu: 1376,
                data: &FRAG_NEEDED_BYTES[8..]
            }
        );
        assert_eq!(repr.to_string(), "ICMP unreachable frag-needed mtu=1376");
        let mut buf = [0u8; 36];
        repr.emit(&mut Packet::new_unchecked(&mut buf[..]));
        assert_eq!(buf, FRAG_NEEDED_BYTES);
    }

    #[test]
    fn frag_needed_builder_quotes_header_and_8_bytes() {
        let mut original = [0u8; 100];
        original[..28].copy_from_slice(&FRAG_NEEDED_BYTES[8..]);
        // Make the quoted header's total_len fit this buffer so it is readable.
        original[2..4].copy_from_slice(&100u16.to_be_bytes());
        let repr = Repr::frag_needed(1376, &original);
        assert_eq!(
            repr,
            Repr::DstUnreachable {
                reason: Unreachable::FragRequired,
                next_hop_mtu: 1376,
                data: &original[..28],
            }
        );
        // Unreadable or short originals are quoted as far as they go.
        assert_eq!(repr.buffer_len(), 36);
        let Repr::DstUnreachable { data, .. } = Repr::frag_needed(1376, &original[..10]) else {
            panic!("not unreachable");
        };
        assert_eq!(data.len(), 10);
    }

    #[test]
    fn other_unreachable_ignores_mtu_field() {
        let mut buf = FRAG_NEEDED_BYTES;
        buf[1] = 3; // port unreachable
        Packet::new_unchecked(&mut buf[..]).fill_checksum();
        let repr = Repr::parse(&Packet::new_checked(&buf[..]).unwrap()).unwrap();
        assert_eq!(
            repr,
            Repr::DstUnreachable {
                reason: Unreachable::PortUnreachable,
                next_hop_mtu: 0,
                data: &FRAG_NEEDED_BYTES[8..]
            }
        );
        assert_eq!(repr.to_string(), "ICMP unreachable port");
        let mut out = [0u8; 36];
        repr.emit(&mut Packet::new_unchecked(&mut out[..]));
        assert_eq!(&out[4..8], &[0; 4]);
    }

    #[test]
    fn every_truncation_rejected() {
        for len in 0..HEADER_LEN {
            assert_eq!(
                Packet::new_checked(&ECHO_BYTES[..len]),
                Err(Error),
                "len {len}"
            );
        }
        // Truncating the data breaks the checksum.
        for len in HEADER_LEN..ECHO_BYTES.len() {
            let packet = Packet::new_checked(&ECHO_BYTES[..len]).unwrap();
            assert_eq!(Repr::parse(&packet), Err(Error), "len {len}");
        }
    }

    #[test]
    fn bad_messages_rejected() {
        let mut bad_sum = ECHO_BYTES;
        bad_sum[9] ^= 0x01;
        assert_eq!(
            Repr::parse(&Packet::new_unchecked(&bad_sum[..])),
            Err(Error)
        );
        for (ty, code) in [(8u8, 1u8), (0, 5), (11, 0), (5, 0), (42, 0)] {
            let mut buf = ECHO_BYTES;
            buf[0] = ty;
            buf[1] = code;
            Packet::new_unchecked(&mut buf[..]).fill_checksum();
            let packet = Packet::new_checked(&buf[..]).unwrap();
            assert!(packet.verify_checksum());
            assert_eq!(Repr::parse(&packet), Err(Error), "type {ty} code {code}");
        }
    }

    #[test]
    fn codes_round_trip() {
        for v in 0..=255u8 {
            assert_eq!(u8::from(Message::from(v)), v);
            assert_eq!(u8::from(Unreachable::from(v)), v);
        }
    }

    fn build_repr(kind: u8, a: u16, b: u16, code: u8, data: &[u8]) -> Repr<'_> {
        match kind % 3 {
            0 => Repr::EchoRequest {
                ident: a,
                seq_no: b,
                data,
            },
            1 => Repr::EchoReply {
                ident: a,
                seq_no: b,
                data,
            },
            _ => {
                let reason = Unreachable::from(code);
                let next_hop_mtu = if reason == Unreachable::FragRequired {
                    a
                } else {
                    0
                };
                Repr::DstUnreachable {
                    reason,
                    next_hop_mtu,
                    data,
                }
            }
        }
    }

    proptest! {
        #[test]
        fn repr_round_trip(
            kind: u8,
            a: u16,
            b: u16,
            code: u8,
            data in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let repr = build_repr(kind, a, b, code, &data);
            let mut buf = vec![0u8; repr.buffer_len()];
            repr.emit(&mut Packet::new_unchecked(&mut buf[..]));
            let packet = Packet::new_checked(&buf[..]).unwrap();
            prop_assert!(packet.verify_checksum());
            prop_assert_eq!(Repr::parse(&packet), Ok(repr));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(packet) = Packet::new_checked(&bytes[..]) {
                let _ = (
                    packet.msg_type(), packet.msg_code(), packet.echo_ident(),
                    packet.echo_seq_no(), packet.next_hop_mtu(), packet.payload(),
                );
                let _ = Repr::parse(&packet);
            }
        }
    }
}
