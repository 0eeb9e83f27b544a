//! Fuzz `weft_overlay::pmtu`: what the send side does with a frame too big for the path.
//!
//! Input: a little-endian u16 limit (`max_frame`), then an Ethernet frame. Whatever the bytes:
//! nothing panics; a "fragmentation needed" is written only when `oversize` says so, and it is
//! a well-formed Ethernet/IPv4/ICMP frame (checksums correct, addresses swapped, MTU
//! `max_frame - 14`), or for IPv6 a well-formed ICMPv6 "Packet Too Big" (checksum over the
//! pseudo-header, addresses swapped, at most 1280 bytes, quoting the original); fragments are only cut when `oversize` says so, each fits the limit, has a
//! correct header checksum, and together they carry exactly the original payload at the right
//! offsets. (IPv4 and ICMP `verify_checksum` always pass under `cfg(fuzzing)`, so checksums are
//! checked here with `checksum::data`.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_overlay::pmtu::{
    ETH_HLEN, FRAG_NEEDED_MAX_LEN, FragmentError, Fragmenter, Oversize, frag_needed, oversize,
};
use weft_wire::ipv4::{self, checksum};
use weft_wire::{icmpv4, ipv6};

fn header_checksum_ok(ip: &ipv4::Packet<&[u8]>) -> bool {
    checksum::data(&ip.as_ref()[..usize::from(ip.header_len())]) == 0xffff
}

fuzz_target!(|data: &[u8]| {
    let [a, b, frame @ ..] = data else {
        return;
    };
    let max = u16::from_le_bytes([*a, *b]);
    let verdict = oversize(frame);

    let mut out = [0u8; FRAG_NEEDED_MAX_LEN];
    match frag_needed(frame, max, &mut out) {
        Some(n) => {
            assert_eq!(verdict, Oversize::FragNeeded);
            assert!(n <= FRAG_NEEDED_MAX_LEN);
            let reply = &out[..n];
            assert_eq!(reply[..6], frame[6..12], "to the sender's MAC");
            assert_eq!(reply[6..12], frame[..6], "from the destination MAC");
            if reply[12..14] == [0x86, 0xdd] {
                let ip = ipv6::Packet::new_checked(&reply[ETH_HLEN..]).expect("reply is IPv6");
                assert_eq!(ETH_HLEN + ipv6::HEADER_LEN + usize::from(ip.payload_len()), n);
                assert!(n - ETH_HLEN <= ipv6::MIN_MTU);
                let orig = ipv6::Packet::new_checked(&frame[ETH_HLEN..]).expect("original is IPv6");
                assert_eq!(ip.src_addr(), orig.dst_addr());
                assert_eq!(ip.dst_addr(), orig.src_addr());
                assert_eq!(ip.next_header(), ipv6::NEXT_HEADER_ICMPV6);
                let icmp = ip.payload();
                let sum = checksum::combine(&[
                    ipv6::pseudo_header_sum(ip.src_addr(), ip.dst_addr(), 58, icmp.len() as u32),
                    checksum::data(icmp),
                ]);
                assert_eq!(sum, 0xffff, "ICMPv6 checksum");
                assert_eq!(icmp[0], 2, "Packet Too Big");
                let mtu = u32::from_be_bytes([icmp[4], icmp[5], icmp[6], icmp[7]]);
                assert_eq!(mtu, u32::from(max.saturating_sub(ETH_HLEN as u16)));
                assert!(orig.packet().starts_with(&icmp[8..]), "quotes the original");
            } else {
                let ip = ipv4::Packet::new_checked(&reply[ETH_HLEN..]).expect("reply is IPv4");
                assert!(header_checksum_ok(&ip));
                assert_eq!(usize::from(ip.total_len()), n - ETH_HLEN);
                let orig = ipv4::Packet::new_checked(&frame[ETH_HLEN..]).expect("original is IPv4");
                assert_eq!(ip.src_addr(), orig.dst_addr());
                assert_eq!(ip.dst_addr(), orig.src_addr());
                let icmp = icmpv4::Packet::new_checked(ip.payload()).expect("reply is ICMP");
                assert_eq!(checksum::data(icmp.as_ref()), 0xffff, "ICMP checksum");
                assert_eq!(u8::from(icmp.msg_type()), 3);
                assert_eq!(icmp.msg_code(), 4);
                assert_eq!(icmp.next_hop_mtu(), max.saturating_sub(ETH_HLEN as u16));
                let quote = icmp.payload();
                assert!(orig.as_ref().starts_with(quote), "quotes the original");
            }
        }
        None => assert_ne!(verdict, Oversize::FragNeeded),
    }

    match Fragmenter::new(frame, max) {
        Ok(mut cut) => {
            assert_eq!(verdict, Oversize::Fragment);
            let orig = ipv4::Packet::new_checked(&frame[ETH_HLEN..]).expect("original is IPv4");
            let count = cut.remaining();
            let len_max = cut.fragment_len_max();
            assert!(len_max <= usize::from(max));
            let mut buf = vec![0u8; len_max];
            let mut data = Vec::new();
            let mut pieces = 0;
            while let Some(n) = cut.next_into(&mut buf) {
                pieces += 1;
                assert!(n <= len_max);
                let ip = ipv4::Packet::new_checked(&buf[ETH_HLEN..n]).expect("fragment is IPv4");
                assert!(header_checksum_ok(&ip));
                assert!(!ip.dont_frag());
                assert_eq!(
                    usize::from(ip.frag_offset()),
                    usize::from(orig.frag_offset()) + data.len()
                );
                let last = pieces == count;
                assert_eq!(ip.more_frags(), !last || orig.more_frags());
                data.extend_from_slice(ip.payload());
            }
            assert_eq!(pieces, count);
            assert_eq!(&data[..], orig.payload());
        }
        Err(FragmentError::DontFragment | FragmentError::NotIpv4) => {
            assert_ne!(verdict, Oversize::Fragment);
        }
        Err(FragmentError::TooSmall | FragmentError::OffsetRange) => {
            assert_eq!(verdict, Oversize::Fragment);
        }
    }
});
