//! Fuzz `weft_wire::vxlan`.
//!
//! Input: one VXLAN packet (header and inner frame). Checks that the view, the `Repr` and the
//! fast slice helpers (`parse_header`, `write_header`) agree, that emit→parse round-trips, and
//! that the VNI ↔ short-id mapping is a bijection on 24-bit VNIs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_wire::vxlan::{self, Packet, Repr};

fuzz_target!(|data: &[u8]| {
    let fast = vxlan::parse_header(data);
    let Ok(packet) = Packet::new_checked(data) else {
        assert_eq!(
            fast, None,
            "parse_header accepted what new_checked rejected"
        );
        return;
    };
    let _ = packet.flags();
    let repr = Repr::parse(&packet).expect("a checked VXLAN packet always parses");
    assert_eq!(fast, Some((repr.vni, packet.payload())));
    let _ = repr.to_string();

    let (src, dst) = vxlan::split_vni(repr.vni);
    assert_eq!(vxlan::vni_for(src, dst), repr.vni);

    let mut a = vec![0u8; repr.buffer_len()];
    repr.emit(&mut Packet::new_unchecked(&mut a[..]));
    let mut b = vec![0xffu8; vxlan::HEADER_LEN];
    vxlan::write_header(&mut b, repr.vni).expect("buffer holds a header");
    assert_eq!(a, b, "write_header and Repr::emit differ");
    let again = Repr::parse(&Packet::new_checked(&a[..]).expect("emitted header rejected"));
    assert_eq!(again, Ok(repr));
});
