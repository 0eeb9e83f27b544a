//! Fuzz `weft_wire::icmpv4` (checksum verification is bypassed under `cfg(fuzzing)`).
//!
//! Input: one ICMPv4 message. Checks that no getter panics after `new_checked`, and that a parsed
//! `Repr` emits a message with a genuinely correct checksum that parses back to itself. Also
//! builds a "fragmentation needed" reply quoting the input and checks it round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_wire::icmpv4::{Packet, Repr};
use weft_wire::ipv4::checksum;

fuzz_target!(|data: &[u8]| {
    // Whatever the bytes, a frag-needed reply quoting them round-trips.
    let quoted = Repr::frag_needed(1376, data);
    round_trip(&quoted);

    let Ok(packet) = Packet::new_checked(data) else {
        return;
    };
    let _ = (
        packet.msg_type(),
        packet.msg_code(),
        packet.checksum(),
        packet.echo_ident(),
        packet.echo_seq_no(),
        packet.next_hop_mtu(),
        packet.verify_checksum(),
        packet.payload(),
    );
    let Ok(repr) = Repr::parse(&packet) else {
        return;
    };
    assert_eq!(repr.buffer_len(), data.len());
    round_trip(&repr);
});

fn round_trip(repr: &Repr<'_>) {
    let _ = repr.to_string();
    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(&mut Packet::new_unchecked(&mut buf[..]));
    assert_eq!(checksum::data(&buf), 0xffff, "bad emitted checksum");
    let out = Packet::new_checked(&buf[..]).expect("emitted message fails check_len");
    assert_eq!(Repr::parse(&out).as_ref(), Ok(repr));
}
