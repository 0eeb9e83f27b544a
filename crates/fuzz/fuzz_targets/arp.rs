//! Fuzz `weft_wire::arp`.
//!
//! Input: one ARP packet (no Ethernet header). Checks that no getter panics after
//! `new_checked`, and that a parsed `Repr` emits exactly the input's first 28 bytes (Ethernet/IPv4
//! ARP has no free fields) and parses back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_wire::arp::{Packet, Repr};

fuzz_target!(|data: &[u8]| {
    let Ok(packet) = Packet::new_checked(data) else {
        return;
    };
    let _ = (
        packet.hardware_type(),
        packet.protocol_type(),
        packet.operation(),
        packet.source_hardware_addr(),
        packet.source_protocol_addr(),
        packet.target_hardware_addr(),
        packet.target_protocol_addr(),
        packet.payload(),
    );
    let Ok(repr) = Repr::parse(&packet) else {
        return;
    };
    let _ = repr.to_string();
    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(&mut Packet::new_unchecked(&mut buf[..]));
    assert_eq!(&buf[..], &data[..repr.buffer_len()], "emitted bytes differ");
    let again = Repr::parse(&Packet::new_checked(&buf[..]).expect("emitted packet too short"));
    assert_eq!(again, Ok(repr));
});
