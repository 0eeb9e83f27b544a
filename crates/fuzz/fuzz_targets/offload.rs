//! Fuzz `weft_overlay::offload`: the TAP segmenter and coalescer (the coalescer skips checksum
//! verification under `cfg(fuzzing)`, so it merges what the fuzzer makes up).
//!
//! Input: one selector byte, then
//! - even selector: a 10-byte vnet header and a frame, as one TAP read. The segments must all be
//!   Ethernet/IP/TCP frames with correct checksums (for TCP GSO), or the frame itself with at
//!   most the checksum field changed (no GSO). The segments are then coalesced, and everything
//!   the coalescer writes is split again: the TCP payload bytes that come out are the ones that
//!   went in, in order. With bit 1 of the selector set the segmenter is asked to leave
//!   checksums partial: then TCP segments' checksums must complete (`complete_partial`) to
//!   correct ones, a single frame it agreed for must come out unchanged, and the segments are
//!   coalesced as partial.
//! - odd selector: frames, each prefixed by a little-endian u16 length, offered to a coalescer
//!   as a receive batch (as partial ones when bit 1 is set; those not merged go through
//!   `prepare_partial`). Every TCP super-frame it writes must split again without error, every
//!   UDP super-frame must be well-formed (lengths, at most 64 datagrams), and the TCP and UDP
//!   payload bytes that come out are the ones that went in.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_overlay::offload::{
    Coalescer, Csum, GsoType, Push, Segmenter, VNET_HDR_LEN, VnetHdr, complete_partial,
    prepare_partial, tcp_checksum_valid,
};
use weft_wire::ipv4::checksum;

/// The TCP or UDP payload of an Ethernet / IPv4-or-IPv6 / TCP-or-UDP frame (an independent,
/// minimal parser).
fn tcp_payload(f: &[u8]) -> Option<&[u8]> {
    let be16 = |i: usize| Some(u16::from_be_bytes([*f.get(i)?, *f.get(i + 1)?]));
    let (l3, ethertype) = match be16(12)? {
        0x8100 => (18, be16(16)?),
        t => (14, t),
    };
    let (l4, end, proto) = match ethertype {
        0x0800 => (
            l3 + usize::from(f.get(l3)? & 0x0f) * 4,
            l3 + usize::from(be16(l3 + 2)?),
            *f.get(l3 + 9)?,
        ),
        0x86dd => (l3 + 40, l3 + 40 + usize::from(be16(l3 + 4)?), *f.get(l3 + 6)?),
        _ => return None,
    };
    match proto {
        6 => {
            let doff = usize::from(f.get(l4 + 12)? >> 4) * 4;
            f.get(l4 + doff..end)
        }
        17 => f.get(l4 + 8..end),
        _ => None,
    }
}

/// Checks and collects everything a coalescer writes; GSO super-frames are split again.
fn drain(c: &mut Coalescer, wire: &mut Vec<Vec<u8>>, check_checksums: bool) {
    let Some(out) = c.take().map(<[u8]>::to_vec) else {
        return;
    };
    assert!(out.len() <= Coalescer::DEFAULT_MAX_LEN);
    assert!(c.is_empty());
    let out = &out[..];
    let hdr = VnetHdr::parse(out).expect("coalescer output has a vnet header");
    let frame = &out[VNET_HDR_LEN..];
    match hdr.gso_type {
        GsoType::TcpV4 | GsoType::TcpV6 => {
            assert_eq!(hdr.flags, VnetHdr::NEEDS_CSUM);
            let mut s = Segmenter::new(hdr, frame).expect("coalesced super-frame splits again");
            assert!(s.remaining() >= 2);
            let mut buf = vec![0u8; s.segment_len_max()];
            while let Some(n) = s.next_into(&mut buf) {
                assert_eq!(tcp_checksum_valid(&buf[..n]), Ok(true));
                wire.push(buf[..n].to_vec());
            }
        }
        GsoType::UdpL4 => {
            assert_eq!(hdr.flags, VnetHdr::NEEDS_CSUM);
            assert_eq!(hdr.csum_offset, 6);
            let (start, gso) = (usize::from(hdr.csum_start), usize::from(hdr.gso_size));
            assert_eq!(usize::from(hdr.hdr_len), start + 8);
            let udp_len = usize::from(u16::from_be_bytes([frame[start + 4], frame[start + 5]]));
            assert_eq!(udp_len, frame.len() - start, "UDP length of the super-frame");
            let payload = udp_len - 8;
            assert!(gso > 0 && payload > gso, "at least two datagrams");
            assert!(payload <= 64 * gso, "at most 64 datagrams");
            wire.push(frame.to_vec());
        }
        GsoType::None if hdr.flags == VnetHdr::NEEDS_CSUM => {
            // A held partial TCP segment or UDP datagram: the kernel completes its checksum.
            check_partial_hdr(hdr, frame);
            let mut f = frame.to_vec();
            complete_partial(&mut f).expect("a partial frame the coalescer held parses");
            if let Ok(valid) = tcp_checksum_valid(&f) {
                assert!(valid, "completed checksum");
            }
            wire.push(f);
        }
        GsoType::None => {
            assert_eq!(
                hdr,
                VnetHdr {
                    flags: VnetHdr::DATA_VALID,
                    ..VnetHdr::NONE
                }
            );
            // A held TCP segment or UDP datagram, unchanged.
            if let Ok(valid) = tcp_checksum_valid(frame) {
                assert!(valid || !check_checksums);
            }
            wire.push(frame.to_vec());
        }
        other => panic!("coalescer wrote GSO type {other:?}"),
    }
}

/// A NEEDS_CSUM header for one frame: the checksum field inside the frame, no GSO.
fn check_partial_hdr(hdr: VnetHdr, frame: &[u8]) {
    assert_eq!(hdr.gso_type, GsoType::None);
    assert!(hdr.csum_offset == 6 || hdr.csum_offset == 16);
    assert!(usize::from(hdr.csum_start) + usize::from(hdr.csum_offset) + 2 <= frame.len());
}

/// Offers frames with the protocol of `Push`, collecting what would be written to the TAP.
fn coalesce<'a>(
    frames: impl Iterator<Item = &'a [u8]>,
    csum: Csum,
    check_checksums: bool,
) -> Vec<Vec<u8>> {
    let mut c = Coalescer::new(Coalescer::DEFAULT_MAX_LEN);
    let mut wire = Vec::new();
    for f in frames {
        match c.push(f, csum) {
            Push::Merged => {}
            Push::FlushFirst => {
                drain(&mut c, &mut wire, check_checksums);
                assert_eq!(
                    c.push(f, csum),
                    Push::Merged,
                    "a flushed candidate starts a new one"
                );
            }
            Push::NotMergeable => {
                drain(&mut c, &mut wire, check_checksums);
                if csum == Csum::Partial {
                    let mut own = f.to_vec();
                    // Not TCP or UDP: the data path drops it (counted).
                    if let Ok((hdr, len)) = prepare_partial(&mut own) {
                        assert!(len <= f.len());
                        check_partial_hdr(hdr, &own[..len]);
                        complete_partial(&mut own).expect("prepared, so it parses");
                        wire.push(own[..len].to_vec());
                    }
                } else {
                    wire.push(f.to_vec());
                }
            }
        }
    }
    drain(&mut c, &mut wire, check_checksums);
    wire
}

fn segmenter(input: &[u8], partial: bool) {
    let Some(raw) = input.get(..VNET_HDR_LEN) else {
        return;
    };
    let hdr = VnetHdr::parse(raw).expect("10 bytes always parse");
    let mut again = [0u8; VNET_HDR_LEN];
    hdr.emit(&mut again);
    assert_eq!(&again[..], raw, "vnet header round trip");
    let frame = &input[VNET_HDR_LEN..];
    let Ok(mut s) = Segmenter::new(hdr, frame) else {
        return;
    };
    let asked = partial;
    let partial = asked && s.leave_checksums_partial();
    assert_eq!(s.is_partial(), partial);
    let max = s.segment_len_max();
    let count = s.remaining();
    let mut buf = vec![0u8; max];
    let mut segments = Vec::with_capacity(count);
    while let Some(n) = s.next_into(&mut buf) {
        assert!(n <= max);
        segments.push(buf[..n].to_vec());
    }
    assert_eq!(segments.len(), count);
    match hdr.gso_type {
        GsoType::None => {
            assert_eq!(segments.len(), 1);
            let out = &segments[0];
            assert_eq!(out.len(), frame.len());
            let differing: Vec<usize> = (0..out.len()).filter(|&i| out[i] != frame[i]).collect();
            if hdr.flags & VnetHdr::NEEDS_CSUM == 0 || partial {
                assert!(differing.is_empty());
            } else {
                let field = usize::from(hdr.csum_start) + usize::from(hdr.csum_offset);
                assert!(differing.iter().all(|&i| i == field || i == field + 1));
            }
        }
        GsoType::TcpV4 | GsoType::TcpV6 => {
            assert_eq!(partial, asked, "a TCP split can always leave checksums partial");
            let mut sent = Vec::new();
            for seg in &segments {
                if partial {
                    let mut done = seg.clone();
                    assert_eq!(complete_partial(&mut done), Ok(seg.len()));
                    assert_eq!(tcp_checksum_valid(&done), Ok(true), "completed checksum");
                } else {
                    assert_eq!(tcp_checksum_valid(seg), Ok(true), "segment checksum");
                }
                if hdr.gso_type == GsoType::TcpV4 {
                    let l3 = if seg[12..14] == [0x81, 0x00] { 18 } else { 14 };
                    let ihl = usize::from(seg[l3] & 0x0f) * 4;
                    assert_eq!(checksum::data(&seg[l3..l3 + ihl]), 0xffff, "IPv4 checksum");
                }
                let p = tcp_payload(seg).expect("segment parses");
                assert!(p.len() <= usize::from(hdr.gso_size));
                sent.extend_from_slice(p);
            }
            assert_eq!(&sent[..], tcp_payload(frame).expect("super-frame parses"));
            // Coalescing the segments and splitting again gives the same byte stream.
            let csum = if partial {
                Csum::Partial
            } else {
                Csum::Complete
            };
            let wire = coalesce(segments.iter().map(Vec::as_slice), csum, true);
            let mut received = Vec::new();
            for f in &wire {
                received.extend_from_slice(tcp_payload(f).expect("coalesced output parses"));
            }
            assert_eq!(received, sent);
        }
        other => panic!("segmenter accepted GSO type {other:?}"),
    }
}

fn coalescer(mut input: &[u8], csum: Csum) {
    let mut frames = Vec::new();
    while let [a, b, rest @ ..] = input {
        let len = usize::from(u16::from_le_bytes([*a, *b])).min(rest.len());
        frames.push(&rest[..len]);
        input = &rest[len..];
    }
    // Partial frames that are not TCP or UDP are dropped by the data path: not counted in.
    let inputs: usize = frames
        .iter()
        .filter(|f| csum == Csum::Complete || prepare_partial(&mut f.to_vec()).is_ok())
        .filter_map(|f| tcp_payload(f))
        .map(<[u8]>::len)
        .sum();
    let wire = coalesce(frames.into_iter(), csum, false);
    let outputs: usize = wire
        .iter()
        .filter_map(|f| tcp_payload(f))
        .map(<[u8]>::len)
        .sum();
    // Merging never invents or loses payload bytes.
    assert_eq!(inputs, outputs);
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let partial = selector & 2 != 0;
    if selector & 1 == 0 {
        segmenter(rest, partial);
    } else {
        coalescer(rest, if partial { Csum::Partial } else { Csum::Complete });
    }
});
