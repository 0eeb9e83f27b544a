//! Fuzz `weft_wire::ethernet`, then dissect the whole stack below it.
//!
//! Input: one raw Ethernet frame. Checks that no getter or free helper panics, that the header
//! round-trips (emit reproduces the input header bytes exactly), and then walks the payload the
//! way the data plane would: ARP or IPv4, then UDP or ICMP, then VXLAN on port 6784 and the
//! inner frame, printing every `Repr` (tcpdump-style `Display`) along the way. The flow hash
//! (`weft_wire::flow`) of every frame: no panic, and for IPv4 the same hash with the
//! addresses and the ports swapped (the frame's other direction).
#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use weft_wire::ethernet::{self, EtherType, Frame, Repr};
use weft_wire::{arp, icmpv4, ipv4, udp, vxlan};

fuzz_target!(|data: &[u8]| {
    dissect(data, 0);
});

fn dissect(data: &[u8], depth: u32) {
    check_flow_hash(data);
    let (dst, src, ty) = (
        ethernet::dst_of(data),
        ethernet::src_of(data),
        ethernet::ethertype_of(data),
    );
    let Ok(frame) = Frame::new_checked(data) else {
        assert!(dst.is_none() && src.is_none() && ty.is_none());
        return;
    };
    assert_eq!(dst, Some(frame.dst_addr()));
    assert_eq!(src, Some(frame.src_addr()));
    assert_eq!(ty, Some(frame.ethertype()));
    let repr = Repr::parse(&frame).expect("a checked frame always parses");
    let _ = repr.to_string();
    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(&mut Frame::new_unchecked(&mut buf[..]));
    assert_eq!(
        &buf[..],
        &data[..ethernet::HEADER_LEN],
        "header bytes differ"
    );
    let again = Repr::parse(&Frame::new_checked(&buf[..]).expect("emitted header is too short"));
    assert_eq!(again, Ok(repr));

    let payload = frame.payload();
    match repr.ethertype {
        EtherType::Arp => {
            if let Ok(arp) = arp::Packet::new_checked(payload).and_then(|p| arp::Repr::parse(&p)) {
                let _ = arp.to_string();
            }
        }
        EtherType::Ipv4 => dissect_ipv4(payload, depth),
        _ => {}
    }
}

fn dissect_ipv4(data: &[u8], depth: u32) {
    let Ok(packet) = ipv4::Packet::new_checked(data) else {
        return;
    };
    let _ = packet.options();
    let Ok(ip) = ipv4::Repr::parse(&packet) else {
        return;
    };
    let _ = ip.to_string();
    match ip.protocol {
        ipv4::Protocol::Udp => dissect_udp(packet.payload(), ip.src_addr, ip.dst_addr, depth),
        ipv4::Protocol::Icmp => {
            let icmp =
                icmpv4::Packet::new_checked(packet.payload()).and_then(|p| icmpv4::Repr::parse(&p));
            if let Ok(icmp) = icmp {
                let _ = icmp.to_string();
            }
        }
        _ => {}
    }
}

fn dissect_udp(data: &[u8], src: Ipv4Addr, dst: Ipv4Addr, depth: u32) {
    let Ok(packet) = udp::Packet::new_checked(data) else {
        return;
    };
    let Ok(udp) = udp::Repr::parse(&packet, src, dst) else {
        return;
    };
    let _ = udp.to_string();
    if udp.dst_port != vxlan::PORT {
        return;
    }
    let Ok(packet) = vxlan::Packet::new_checked(packet.payload()) else {
        return;
    };
    let Ok(vx) = vxlan::Repr::parse(&packet) else {
        return;
    };
    let _ = vx.to_string();
    // One level of encapsulation is all weft produces; don't recurse forever on nested inputs.
    if depth < 2 {
        dissect(packet.payload(), depth + 1);
    }
}

/// The flow hash never panics, and an IPv4 frame's other direction (addresses swapped, and the
/// ports where they are read) hashes alike.
fn check_flow_hash(data: &[u8]) {
    let Some(h) = weft_wire::flow::hash(data) else {
        return;
    };
    // (An IHL below 5 would put the "ports" inside the IPv4 header: not a frame to swap.)
    if data.len() < 34 || data[12..14] != [8, 0] || data[14] & 0xf < 5 {
        return;
    }
    let mut back = data.to_vec();
    back[26..30].copy_from_slice(&data[30..34]);
    back[30..34].copy_from_slice(&data[26..30]);
    let l4 = 14 + usize::from(data[14] & 0xf) * 4;
    if data.len() >= l4 + 4 {
        back[l4..l4 + 2].copy_from_slice(&data[l4 + 2..l4 + 4]);
        back[l4 + 2..l4 + 4].copy_from_slice(&data[l4..l4 + 2]);
    }
    assert_eq!(weft_wire::flow::hash(&back), Some(h), "the other direction");
}
