//! Fuzz `weft_wire::ipv4` (checksum verification is bypassed under `cfg(fuzzing)`).
//!
//! Input: one IPv4 packet. Checks that no getter panics after `new_checked`, and that a parsed
//! `Repr` emits a header (with a correct checksum) that parses back to the same `Repr`, with the
//! same payload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_wire::ipv4::{Packet, Repr, checksum};

fuzz_target!(|data: &[u8]| {
    let Ok(packet) = Packet::new_checked(data) else {
        return;
    };
    let _ = (
        packet.version(),
        packet.dscp(),
        packet.ecn(),
        packet.ident(),
        packet.dont_frag(),
        packet.more_frags(),
        packet.frag_offset(),
        packet.ttl(),
        packet.protocol(),
        packet.checksum(),
        packet.src_addr(),
        packet.dst_addr(),
        packet.verify_checksum(),
        packet.options(),
    );
    let payload = packet.payload();
    let Ok(repr) = Repr::parse(&packet) else {
        return;
    };
    let _ = repr.to_string();
    assert_eq!(repr.payload_len, payload.len());
    let mut buf = vec![0u8; repr.buffer_len() + repr.payload_len];
    let mut out = Packet::new_unchecked(&mut buf[..]);
    repr.emit(&mut out);
    out.payload_mut().copy_from_slice(payload);
    // The emitted header checksum is genuinely correct, not just accepted under fuzzing.
    assert_eq!(
        checksum::data(&buf[..repr.buffer_len()]),
        0xffff,
        "bad emitted checksum"
    );
    let out = Packet::new_checked(&buf[..]).expect("emitted packet fails check_len");
    assert_eq!(Repr::parse(&out), Ok(repr));
    assert_eq!(out.payload(), payload);
});
