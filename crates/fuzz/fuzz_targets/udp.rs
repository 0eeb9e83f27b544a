//! Fuzz `weft_wire::udp` (checksum verification is bypassed under `cfg(fuzzing)`).
//!
//! Input: 4 bytes of IPv4 source address, 4 bytes of destination address (for the
//! pseudo-header), then one UDP datagram. Checks that no getter panics after `new_checked`, and
//! that a parsed `Repr` emits a header which, with the payload copied and the checksum filled,
//! parses back to the same `Repr` and carries a genuinely correct checksum.
#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use weft_wire::ipv4::{Protocol, checksum};
use weft_wire::udp::{Packet, Repr};

fuzz_target!(|data: &[u8]| {
    let Some((addrs, data)) = data.split_first_chunk::<8>() else {
        return;
    };
    let src = Ipv4Addr::new(addrs[0], addrs[1], addrs[2], addrs[3]);
    let dst = Ipv4Addr::new(addrs[4], addrs[5], addrs[6], addrs[7]);
    let Ok(packet) = Packet::new_checked(data) else {
        return;
    };
    let _ = (packet.src_port(), packet.dst_port(), packet.checksum());
    let payload = packet.payload();
    let Ok(repr) = Repr::parse(&packet, src, dst) else {
        return;
    };
    let _ = repr.to_string();
    assert_eq!(repr.payload_len, payload.len());
    let mut buf = vec![0u8; repr.buffer_len() + repr.payload_len];
    let mut out = Packet::new_unchecked(&mut buf[..]);
    repr.emit(&mut out);
    out.payload_mut().copy_from_slice(payload);
    out.fill_checksum(src, dst);
    assert_ne!(out.checksum(), 0, "a filled checksum is never 0 (RFC 768)");
    let len = u16::try_from(buf.len()).expect("UDP length fits in u16");
    let sum = checksum::combine(&[
        checksum::pseudo_header(src, dst, Protocol::Udp, len),
        checksum::data(&buf),
    ]);
    assert_eq!(sum, 0xffff, "bad emitted checksum");
    let out = Packet::new_checked(&buf[..]).expect("emitted datagram fails check_len");
    assert_eq!(Repr::parse(&out, src, dst), Ok(repr));
    assert_eq!(out.payload(), payload);
});
