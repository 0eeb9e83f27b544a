//! The flow hash: which flow an Ethernet frame belongs to, the same for both directions of a
//! connection.
//!
//! The express lane's TAP steering program (`weft_sys::steer`) computes this hash in eBPF for
//! every frame the TAP transmits and keys its per-flow state with it; the router's data
//! plane computes it here for the frames it delivers, to pin their flows to a thread
//! (`FlowPins`). The two must agree bit for bit: the program is built from the constants
//! below, and `weft_sys`'s tests check it against [`hash`] on every kind of frame.
//!
//! What goes in, in this order, each 32-bit word mixed as `h = (h ^ w) * MUL; h ^= h >> 15`
//! starting from [`SEED`]: the ethertype; for IPv4 the source and destination addresses, the
//! protocol, and for TCP and UDP that is not a fragment (MF clear, offset 0; the L4 header
//! found with IHL) the two ports; for IPv6 the addresses (word by word), the next header and
//! for TCP and UDP the ports (extension headers are not followed); for anything else the
//! ethertype alone. VLAN tags are not looked through. The addresses (and the ports) go in as
//! an **unordered pair**, their XOR and then their sum, so the two directions of a connection
//! hash alike. The result is finished with murmur3's `fmix32`.
//!
//! ```
//! // An IPv4 TCP frame from 10.0.0.1:40000 to 10.0.0.2:80, and its reply.
//! let mut f = [0u8; 38];
//! f[12..14].copy_from_slice(&[8, 0]);
//! f[14] = 0x45;
//! f[23] = 6;
//! f[26..30].copy_from_slice(&[10, 0, 0, 1]);
//! f[30..34].copy_from_slice(&[10, 0, 0, 2]);
//! f[34..38].copy_from_slice(&[0x9c, 0x40, 0, 80]);
//! let mut back = f;
//! back[26..34].copy_from_slice(&[10, 0, 0, 2, 10, 0, 0, 1]);
//! back[34..38].copy_from_slice(&[0, 80, 0x9c, 0x40]);
//! assert_eq!(weft_wire::flow::hash(&f), weft_wire::flow::hash(&back));
//! assert_eq!(weft_wire::flow::hash(&f[..36]), None); // the ports cut off
//! ```

/// The hash's starting value ("WEFT").
pub const SEED: u32 = 0x5745_4654;
/// The multiplier of each word's mixing step.
pub const MUL: u32 = 0x9e37_79b1;
/// murmur3 `fmix32`'s first multiplier.
pub const FMIX_1: u32 = 0x85eb_ca6b;
/// murmur3 `fmix32`'s second multiplier.
pub const FMIX_2: u32 = 0xc2b2_ae35;

/// The flow hash of the Ethernet frame `f`, or `None` where a field it needs is cut off (the
/// steering program then gives up too). Never panics, whatever the bytes.
pub fn hash(f: &[u8]) -> Option<u32> {
    let b = |o: usize| f.get(o).map(|&x| u32::from(x));
    let h16 = |o: usize| {
        Some(u32::from(u16::from_be_bytes(
            f.get(o..o + 2)?.try_into().ok()?,
        )))
    };
    let w = |o: usize| Some(u32::from_be_bytes(f.get(o..o + 4)?.try_into().ok()?));
    let et = h16(12)?;
    let mut h = mix(SEED, et);
    match et {
        0x0800 => {
            h = pair(h, w(26)?, w(30)?);
            let proto = b(23)?;
            h = mix(h, proto);
            if (proto == 6 || proto == 17) && h16(20)? & 0x3fff == 0 {
                let ihl = (b(14)? & 0xf) as usize * 4;
                let ports = w(14 + ihl)?;
                h = pair(h, ports >> 16, ports & 0xffff);
            }
        }
        0x86dd => {
            for i in 0..4 {
                h = pair(h, w(22 + 4 * i)?, w(38 + 4 * i)?);
            }
            let nh = b(20)?;
            h = mix(h, nh);
            if nh == 6 || nh == 17 {
                let ports = w(54)?;
                h = pair(h, ports >> 16, ports & 0xffff);
            }
        }
        _ => {}
    }
    Some(fmix(h))
}

fn mix(h: u32, w: u32) -> u32 {
    let h = (h ^ w).wrapping_mul(MUL);
    h ^ h >> 15
}

fn pair(h: u32, a: u32, b: u32) -> u32 {
    mix(mix(h, a ^ b), a.wrapping_add(b))
}

fn fmix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(FMIX_1);
    h ^= h >> 13;
    h = h.wrapping_mul(FMIX_2);
    h ^ h >> 16
}
