//! Tests of `weft_overlay::offload`: TCP super-frames built by hand with `weft_wire`'s emitters,
//! every produced segment checked with `weft_wire`'s parsers and an independent checksum
//! computation (`weft_wire::ipv4::checksum`, not the module's own fast sum).

use std::net::{Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use weft_overlay::offload::{
    Coalescer, Csum, GsoType, OffloadError, Push, Segmenter, VNET_HDR_LEN, VnetHdr,
    complete_partial, prepare_partial, tcp_checksum_valid,
};
use weft_wire::ethernet::{self, Address, EtherType};
use weft_wire::ipv4::{self, Protocol, checksum};
use weft_wire::udp;

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;
const URG: u8 = 0x20;
const ECE: u8 = 0x40;
const CWR: u8 = 0x80;

const SRC4: Ipv4Addr = Ipv4Addr::new(10, 32, 0, 1);
const DST4: Ipv4Addr = Ipv4Addr::new(10, 32, 0, 2);
const SRC6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
const DST6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);

/// Everything that describes a TCP flow and its headers.
#[derive(Clone, Debug)]
struct Flow {
    v6: bool,
    vlan: Option<u16>,
    src_mac: Address,
    dst_mac: Address,
    src4: Ipv4Addr,
    dst4: Ipv4Addr,
    tos: u8,
    ttl: u8,
    ip_id: u16,
    src_port: u16,
    dst_port: u16,
    ack: u32,
    window: u16,
    /// TCP options (a multiple of 4 bytes).
    options: Vec<u8>,
}

impl Flow {
    fn v4() -> Self {
        Self {
            v6: false,
            vlan: None,
            src_mac: Address([0x02, 0, 0, 0, 0, 1]),
            dst_mac: Address([0x02, 0, 0, 0, 0, 2]),
            src4: SRC4,
            dst4: DST4,
            tos: 0,
            ttl: 64,
            ip_id: 0x1234,
            src_port: 40000,
            dst_port: 5201,
            ack: 0x0102_0304,
            window: 512,
            // NOP NOP Timestamps(10 bytes): the options a Linux data segment carries.
            options: vec![1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2],
        }
    }

    fn v6() -> Self {
        Self {
            v6: true,
            ..Self::v4()
        }
    }

    fn l3(&self) -> usize {
        14 + if self.vlan.is_some() { 4 } else { 0 }
    }

    fn ip_hlen(&self) -> usize {
        if self.v6 { 40 } else { 20 }
    }

    fn l4(&self) -> usize {
        self.l3() + self.ip_hlen()
    }

    fn tcp_hlen(&self) -> usize {
        20 + self.options.len()
    }

    fn hdr_len(&self) -> usize {
        self.l4() + self.tcp_hlen()
    }

    /// A frame of this flow. With `partial`, the TCP checksum field holds the folded
    /// pseudo-header sum, as in a super-frame read from a TAP (`NEEDS_CSUM`); otherwise the
    /// complete checksum.
    fn frame(&self, seq: u32, flags: u8, payload: &[u8], partial: bool) -> Vec<u8> {
        let (l3, l4, hdr_len) = (self.l3(), self.l4(), self.hdr_len());
        let mut f = vec![0u8; hdr_len + payload.len()];
        let ethertype = if self.v6 {
            EtherType::Ipv6
        } else {
            EtherType::Ipv4
        };
        let eth = ethernet::Repr {
            src_addr: self.src_mac,
            dst_addr: self.dst_mac,
            ethertype: if self.vlan.is_some() {
                EtherType::Vlan
            } else {
                ethertype
            },
        };
        eth.emit(&mut ethernet::Frame::new_unchecked(&mut f[..]));
        if let Some(tci) = self.vlan {
            f[14..16].copy_from_slice(&tci.to_be_bytes());
            f[16..18].copy_from_slice(&u16::from(ethertype).to_be_bytes());
        }
        let tcp_len = self.tcp_hlen() + payload.len();
        if self.v6 {
            let ip = &mut f[l3..l4];
            ip[0] = 0x60 | (self.tos >> 4);
            ip[1] = self.tos << 4;
            ip[4..6].copy_from_slice(&(tcp_len as u16).to_be_bytes());
            ip[6] = 6;
            ip[7] = self.ttl;
            ip[8..24].copy_from_slice(&SRC6.octets());
            ip[24..40].copy_from_slice(&DST6.octets());
        } else {
            let repr = ipv4::Repr {
                src_addr: self.src4,
                dst_addr: self.dst4,
                protocol: Protocol::Tcp,
                payload_len: tcp_len,
                ttl: self.ttl,
                dont_frag: true,
            };
            let mut ip = ipv4::Packet::new_unchecked(&mut f[l3..]);
            repr.emit(&mut ip);
            ip.set_ident(self.ip_id);
            ip.set_dscp(self.tos >> 2);
            ip.set_ecn(self.tos & 3);
            ip.fill_checksum();
        }
        let tcp = &mut f[l4..];
        tcp[0..2].copy_from_slice(&self.src_port.to_be_bytes());
        tcp[2..4].copy_from_slice(&self.dst_port.to_be_bytes());
        tcp[4..8].copy_from_slice(&seq.to_be_bytes());
        tcp[8..12].copy_from_slice(&self.ack.to_be_bytes());
        tcp[12] = ((self.tcp_hlen() / 4) as u8) << 4;
        tcp[13] = flags;
        tcp[14..16].copy_from_slice(&self.window.to_be_bytes());
        tcp[20..self.tcp_hlen()].copy_from_slice(&self.options);
        f[hdr_len..].copy_from_slice(payload);
        let pseudo = self.pseudo(tcp_len);
        let value = if partial {
            pseudo
        } else {
            !checksum::combine(&[pseudo, checksum::data(&f[l4..])])
        };
        f[l4 + 16..l4 + 18].copy_from_slice(&value.to_be_bytes());
        f
    }

    /// The folded pseudo-header sum, computed with `weft_wire`'s helpers.
    fn pseudo(&self, tcp_len: usize) -> u16 {
        if self.v6 {
            let mut buf = [0u8; 40];
            buf[..16].copy_from_slice(&SRC6.octets());
            buf[16..32].copy_from_slice(&DST6.octets());
            buf[32..36].copy_from_slice(&(tcp_len as u32).to_be_bytes());
            buf[39] = 6;
            checksum::data(&buf)
        } else {
            checksum::pseudo_header(self.src4, self.dst4, Protocol::Tcp, tcp_len as u16)
        }
    }

    /// A super-frame as the kernel hands it over: full-length IP header, partial checksum.
    fn super_frame(&self, seq: u32, flags: u8, payload: &[u8], mss: u16) -> (VnetHdr, Vec<u8>) {
        let hdr = VnetHdr {
            flags: VnetHdr::NEEDS_CSUM,
            gso_type: if self.v6 {
                GsoType::TcpV6
            } else {
                GsoType::TcpV4
            },
            ecn: false,
            hdr_len: self.hdr_len() as u16,
            gso_size: mss,
            csum_start: self.l4() as u16,
            csum_offset: 16,
        };
        (hdr, self.frame(seq, flags, payload, true))
    }

    /// Checks one frame of this flow with `weft_wire`'s parsers and an independent checksum;
    /// returns (seq, flags, IPv4 identification, payload).
    fn check<'a>(&self, f: &'a [u8]) -> (u32, u8, u16, &'a [u8]) {
        let (l3, l4, hdr_len) = (self.l3(), self.l4(), self.hdr_len());
        let eth = ethernet::Frame::new_checked(f).expect("ethernet");
        assert_eq!(eth.src_addr(), self.src_mac);
        assert_eq!(eth.dst_addr(), self.dst_mac);
        let tcp_len;
        let mut ident = 0;
        if self.v6 {
            assert_eq!(f[l3] >> 4, 6);
            tcp_len = usize::from(u16::from_be_bytes([f[l3 + 4], f[l3 + 5]]));
            assert_eq!(l4 + tcp_len, f.len(), "IPv6 payload length");
        } else {
            let ip = ipv4::Packet::new_checked(&f[l3..]).expect("ipv4 lengths");
            let repr = ipv4::Repr::parse(&ip).expect("ipv4 header (checksum included)");
            assert_eq!(
                usize::from(ip.total_len()),
                f.len() - l3,
                "IPv4 total length"
            );
            assert_eq!((repr.src_addr, repr.dst_addr), (self.src4, self.dst4));
            assert_eq!(repr.protocol, Protocol::Tcp);
            assert!(repr.dont_frag);
            assert_eq!((ip.dscp() << 2) | ip.ecn(), self.tos);
            assert_eq!(repr.ttl, self.ttl);
            ident = ip.ident();
            tcp_len = repr.payload_len;
        }
        let tcp = &f[l4..];
        assert_eq!(tcp.len(), tcp_len);
        assert_eq!(
            checksum::combine(&[self.pseudo(tcp_len), checksum::data(tcp)]),
            0xffff,
            "TCP checksum"
        );
        assert_eq!(tcp_checksum_valid(f), Ok(true));
        assert_eq!(u16::from_be_bytes([tcp[0], tcp[1]]), self.src_port);
        assert_eq!(u16::from_be_bytes([tcp[2], tcp[3]]), self.dst_port);
        assert_eq!(
            u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]),
            self.ack
        );
        assert_eq!(usize::from(tcp[12] >> 4) * 4, self.tcp_hlen());
        assert_eq!(u16::from_be_bytes([tcp[14], tcp[15]]), self.window);
        assert_eq!(&tcp[20..self.tcp_hlen()], &self.options[..]);
        let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
        (seq, tcp[13], ident, &f[hdr_len..])
    }
}

fn payload(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt) ^ (i >> 8) as u8)
        .collect()
}

fn data_valid() -> VnetHdr {
    VnetHdr {
        flags: VnetHdr::DATA_VALID,
        ..VnetHdr::NONE
    }
}

/// Runs a segmenter to the end, returning the segments.
fn segment(hdr: VnetHdr, frame: &[u8]) -> Result<Vec<Vec<u8>>, OffloadError> {
    let mut s = Segmenter::new(hdr, frame)?;
    let mut out = vec![0u8; s.segment_len_max()];
    let mut segs = Vec::new();
    let expected = s.remaining();
    while let Some(n) = s.next_into(&mut out) {
        assert!(n <= s.segment_len_max());
        segs.push(out[..n].to_vec());
    }
    assert_eq!(segs.len(), expected);
    assert_eq!(s.remaining(), 0);
    assert_eq!(s.next_into(&mut out), None);
    Ok(segs)
}

/// Segments a super-frame of `flow` and checks every segment against it.
fn segment_and_check(flow: &Flow, seq: u32, flags: u8, data: &[u8], mss: u16) -> Vec<Vec<u8>> {
    let (hdr, frame) = flow.super_frame(seq, flags, data, mss);
    let segs = segment(hdr, &frame).expect("segments");
    let mss = usize::from(mss);
    assert_eq!(segs.len(), data.len().div_ceil(mss).max(1));
    let mut offset = 0;
    for (i, seg) in segs.iter().enumerate() {
        let (s, f, ident, chunk) = flow.check(seg);
        let last = i == segs.len() - 1;
        assert_eq!(s, seq.wrapping_add(offset as u32), "seq of segment {i}");
        if !flow.v6 {
            assert_eq!(
                ident,
                flow.ip_id.wrapping_add(i as u16),
                "IP id of segment {i}"
            );
        }
        let mut want = flags;
        if !last {
            want &= !(FIN | PSH);
            assert_eq!(chunk.len(), mss, "size of segment {i}");
        }
        if i != 0 {
            want &= !CWR;
        }
        assert_eq!(f, want, "flags of segment {i}");
        assert_eq!(chunk, &data[offset..offset + chunk.len()]);
        offset += chunk.len();
    }
    assert_eq!(offset, data.len());
    segs
}

#[test]
fn exact_multiple_of_mss() {
    let data = payload(3 * 1448, 1);
    let segs = segment_and_check(&Flow::v4(), 1000, ACK | PSH, &data, 1448);
    assert_eq!(segs.len(), 3);
    assert!(segs.iter().all(|s| s.len() == 66 + 1448));
}

#[test]
fn one_byte_more_than_a_multiple() {
    let data = payload(3 * 1448 + 1, 2);
    let segs = segment_and_check(&Flow::v4(), 1000, ACK | PSH | FIN, &data, 1448);
    assert_eq!(segs.len(), 4);
    assert_eq!(segs[3].len(), 66 + 1);
}

#[test]
fn single_segment() {
    for len in [1, 100, 1448] {
        let segs = segment_and_check(&Flow::v4(), 7, ACK | PSH | CWR, &payload(len, 3), 1448);
        assert_eq!(segs.len(), 1);
    }
    // Headers only: one header-only segment.
    let segs = segment_and_check(&Flow::v4(), 7, ACK, &[], 1448);
    assert_eq!(segs[0].len(), Flow::v4().hdr_len());
}

#[test]
fn full_64k_super_frame_ipv4_and_ipv6() {
    for flow in [Flow::v4(), Flow::v6()] {
        let max = 65535 - flow.ip_hlen() - flow.tcp_hlen();
        let max = if flow.v6 { max + 40 } else { max };
        let data = payload(max, 4);
        let segs = segment_and_check(&flow, u32::MAX - 5000, ACK | PSH, &data, 1448);
        assert_eq!(segs.len(), max.div_ceil(1448));
    }
}

#[test]
fn flags_fin_psh_last_cwr_first() {
    let data = payload(3000, 5);
    segment_and_check(&Flow::v4(), 1, ACK | PSH | FIN | CWR | ECE, &data, 1000);
    segment_and_check(&Flow::v6(), 1, ACK | PSH | FIN | CWR | ECE, &data, 1000);
}

#[test]
fn identification_and_sequence_wrap() {
    let flow = Flow {
        ip_id: 0xfffe,
        ..Flow::v4()
    };
    let data = payload(4000, 6);
    let segs = segment_and_check(&flow, u32::MAX - 1500, ACK, &data, 1000);
    assert_eq!(flow.check(&segs[2]).2, 0);
    assert_eq!(flow.check(&segs[2]).0, 499);
}

#[test]
fn vlan_tag_tos_and_no_options() {
    let flow = Flow {
        vlan: Some(42),
        tos: 0xb8 | 2,
        options: Vec::new(),
        ..Flow::v4()
    };
    segment_and_check(&flow, 9, ACK, &payload(5000, 7), 1460);
    let flow = Flow {
        vlan: Some(42),
        tos: 0xb8,
        ..Flow::v6()
    };
    segment_and_check(&flow, 9, ACK, &payload(5000, 7), 1440);
}

#[test]
fn hdr_len_is_not_trusted() {
    let flow = Flow::v4();
    let data = payload(4000, 8);
    let (hdr, frame) = flow.super_frame(100, ACK, &data, 1448);
    let want = segment(hdr, &frame).unwrap();
    // Linux may report the linear part (longer than the headers), or anything at all.
    for lie in [0u16, 14, 34, 65, 67, 200, frame.len() as u16, u16::MAX] {
        let got = segment(
            VnetHdr {
                hdr_len: lie,
                ..hdr
            },
            &frame,
        )
        .unwrap();
        assert_eq!(got, want, "hdr_len {lie}");
    }
}

#[test]
fn bad_headers_are_errors() {
    let flow = Flow::v4();
    let data = payload(4000, 9);
    let (hdr, frame) = flow.super_frame(100, ACK, &data, 1448);
    let err = |h: VnetHdr, f: &[u8]| Segmenter::new(h, f).err();
    assert_eq!(
        err(VnetHdr { gso_size: 0, ..hdr }, &frame),
        Some(OffloadError::ZeroGsoSize)
    );
    assert_eq!(
        err(
            VnetHdr {
                csum_start: 35,
                ..hdr
            },
            &frame
        ),
        Some(OffloadError::BadChecksumOffset)
    );
    assert_eq!(
        err(
            VnetHdr {
                csum_offset: 6,
                ..hdr
            },
            &frame
        ),
        Some(OffloadError::BadChecksumOffset)
    );
    // Without NEEDS_CSUM the offsets are not used; the segments are still right.
    let no_csum = VnetHdr {
        flags: 0,
        csum_start: 0,
        csum_offset: 0,
        ..hdr
    };
    assert_eq!(
        segment(no_csum, &frame).unwrap(),
        segment(hdr, &frame).unwrap()
    );
    // The IP version must match the GSO type.
    assert_eq!(
        err(
            VnetHdr {
                gso_type: GsoType::TcpV6,
                ..hdr
            },
            &frame
        ),
        Some(OffloadError::Malformed)
    );
    for gso_type in [GsoType::UdpL4, GsoType::Other(3), GsoType::Other(0x7f)] {
        assert_eq!(
            err(VnetHdr { gso_type, ..hdr }, &frame),
            Some(OffloadError::UnsupportedGso(gso_type.to_raw()))
        );
    }
    // Not TCP.
    let mut udp_frame = frame.clone();
    udp_frame[14 + 9] = 17;
    assert_eq!(err(hdr, &udp_frame), Some(OffloadError::Malformed));
    // A fragment.
    let mut frag = frame.clone();
    frag[14 + 6] |= 0x20;
    assert_eq!(err(hdr, &frag), Some(OffloadError::Malformed));
    // TCP data offset below 5.
    let mut doff = frame.clone();
    doff[34 + 12] = 4 << 4;
    assert_eq!(err(hdr, &doff), Some(OffloadError::Malformed));
    // IPv6 with an extension header.
    let (hdr6, mut frame6) = Flow::v6().super_frame(1, ACK, &data, 1448);
    frame6[14 + 6] = 0; // hop-by-hop options
    assert_eq!(err(hdr6, &frame6), Some(OffloadError::Malformed));
}

#[test]
fn every_truncation_is_an_error() {
    for flow in [Flow::v4(), Flow::v6()] {
        let (hdr, frame) = flow.super_frame(100, ACK, &payload(3000, 10), 1448);
        for len in 0..frame.len() {
            assert!(
                Segmenter::new(hdr, &frame[..len]).is_err(),
                "len {len} v6 {}",
                flow.v6
            );
        }
    }
    // Trailing bytes after the IP packet are ignored, not segmented.
    let flow = Flow::v4();
    let data = payload(3000, 11);
    let (hdr, mut frame) = flow.super_frame(100, ACK, &data, 1448);
    let want = segment(hdr, &frame).unwrap();
    frame.extend_from_slice(&[0xee; 7]);
    assert_eq!(segment(hdr, &frame).unwrap(), want);
}

#[test]
fn vnet_hdr_parse_errors() {
    for len in 0..VNET_HDR_LEN {
        assert_eq!(
            VnetHdr::parse(&[0; 10][..len]),
            Err(OffloadError::Truncated)
        );
    }
    assert_eq!(VnetHdr::parse(&[0; 10]), Ok(VnetHdr::NONE));
}

/// A UDP/IPv4 frame whose checksum field holds the pseudo-header sum (NEEDS_CSUM).
fn udp_partial(data: &[u8]) -> (VnetHdr, Vec<u8>) {
    let mut f = vec![0u8; 42 + data.len()];
    ethernet::Repr {
        src_addr: Address([2, 0, 0, 0, 0, 1]),
        dst_addr: Address([2, 0, 0, 0, 0, 2]),
        ethertype: EtherType::Ipv4,
    }
    .emit(&mut ethernet::Frame::new_unchecked(&mut f[..]));
    ipv4::Repr {
        src_addr: SRC4,
        dst_addr: DST4,
        protocol: Protocol::Udp,
        payload_len: 8 + data.len(),
        ttl: 64,
        dont_frag: true,
    }
    .emit(&mut ipv4::Packet::new_unchecked(&mut f[14..]));
    let mut u = udp::Packet::new_unchecked(&mut f[34..]);
    udp::Repr {
        src_port: 5000,
        dst_port: 6000,
        payload_len: data.len(),
    }
    .emit(&mut u);
    u.payload_mut().copy_from_slice(data);
    let pseudo = checksum::pseudo_header(SRC4, DST4, Protocol::Udp, (8 + data.len()) as u16);
    u.set_checksum(pseudo);
    let hdr = VnetHdr {
        flags: VnetHdr::NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 6,
        ..VnetHdr::NONE
    };
    (hdr, f)
}

#[test]
fn no_gso_completes_the_checksum() {
    let data = payload(1000, 12);
    let (hdr, frame) = udp_partial(&data);
    let segs = segment(hdr, &frame).unwrap();
    assert_eq!(segs.len(), 1);
    let out = &segs[0];
    assert_eq!(out.len(), frame.len());
    let u = udp::Packet::new_checked(&out[34..]).unwrap();
    assert_ne!(u.checksum(), 0);
    assert_eq!(
        udp::Repr::parse(&u, SRC4, DST4).map(|r| r.payload_len),
        Ok(1000)
    );
    // Everything but the checksum field is unchanged.
    assert_eq!(out[..40], frame[..40]);
    assert_eq!(out[42..], frame[42..]);
    // TCP with NEEDS_CSUM and no GSO (a small segment).
    let flow = Flow::v4();
    let (mut hdr, frame) = flow.super_frame(5, ACK | PSH, &payload(100, 13), 1448);
    hdr.gso_type = GsoType::None;
    hdr.gso_size = 0;
    let segs = segment(hdr, &frame).unwrap();
    flow.check(&segs[0]);
    // Without NEEDS_CSUM: copied as is.
    let arp = [0xffu8; 60];
    assert_eq!(segment(VnetHdr::NONE, &arp).unwrap(), vec![arp.to_vec()]);
    // Checksum field outside the frame.
    let bad = VnetHdr {
        csum_start: 34,
        csum_offset: 1000,
        ..hdr
    };
    assert_eq!(
        Segmenter::new(bad, &frame).err(),
        Some(OffloadError::BadChecksumOffset)
    );
    assert_eq!(
        Segmenter::new(VnetHdr::NONE, &arp[..13]).err(),
        Some(OffloadError::Truncated)
    );
}

#[test]
fn udp_checksum_zero_goes_out_as_ffff() {
    // Choose the last two payload bytes so that the complete checksum computes to 0.
    let mut data = payload(64, 14);
    data[62..].fill(0);
    let (hdr, frame) = udp_partial(&data);
    let sum_without_field = checksum::combine(&[
        checksum::pseudo_header(SRC4, DST4, Protocol::Udp, 72),
        checksum::data(&frame[34..40]),
        checksum::data(&frame[42..]),
    ]);
    // Make pseudo + data sum to 0xffff: the complement (the checksum) is then 0.
    data[62..].copy_from_slice(&(!sum_without_field).to_be_bytes());
    let (hdr2, frame2) = udp_partial(&data);
    assert_eq!(hdr, hdr2);
    let segs = segment(hdr2, &frame2).unwrap();
    let u = udp::Packet::new_checked(&segs[0][34..]).unwrap();
    assert_eq!(u.checksum(), 0xffff);
    assert!(u.verify_checksum(SRC4, DST4));
}

// --------------------------------------------------------------------------------------------
// Coalescing.

/// Offers every frame, following the protocol of `Push`; returns what would be written to the
/// TAP: (vnet header, frame) pairs.
fn coalesce_all(c: &mut Coalescer, frames: &[Vec<u8>]) -> Vec<(VnetHdr, Vec<u8>)> {
    let mut out = Vec::new();
    let take = |c: &mut Coalescer, out: &mut Vec<(VnetHdr, Vec<u8>)>| {
        if let Some(b) = c.take() {
            assert!(b.len() <= Coalescer::DEFAULT_MAX_LEN);
            out.push((VnetHdr::parse(b).unwrap(), b[VNET_HDR_LEN..].to_vec()));
        }
        assert!(c.is_empty());
    };
    for f in frames {
        match c.push(f, Csum::Complete) {
            Push::Merged => {}
            Push::FlushFirst => {
                take(c, &mut out);
                assert_eq!(
                    c.push(f, Csum::Complete),
                    Push::Merged,
                    "re-offer after a flush"
                );
            }
            Push::NotMergeable => {
                take(c, &mut out);
                out.push((VnetHdr::NONE, f.clone()));
            }
        }
    }
    take(c, &mut out);
    out
}

/// What the kernel would do with a NEEDS_CSUM frame: complete the checksum.
fn complete(hdr: &VnetHdr, frame: &[u8]) -> Vec<u8> {
    let mut f = frame.to_vec();
    let start = usize::from(hdr.csum_start);
    let field = start + usize::from(hdr.csum_offset);
    let sum = checksum::data(&f[start..]);
    f[field..field + 2].copy_from_slice(&(!sum).to_be_bytes());
    f
}

#[test]
fn segments_coalesce_back_into_the_super_frame() {
    for flow in [
        Flow::v4(),
        Flow::v6(),
        Flow {
            vlan: Some(7),
            ..Flow::v4()
        },
    ] {
        let data = payload(20_000, 15);
        let (hdr, original) = flow.super_frame(12345, ACK | PSH, &data, 1448);
        let segs = segment(hdr, &original).unwrap();
        let mut c = Coalescer::new(Coalescer::DEFAULT_MAX_LEN);
        let out = coalesce_all(&mut c, &segs);
        assert_eq!(out.len(), 1);
        let (got_hdr, got) = &out[0];
        assert_eq!(got_hdr, &hdr, "vnet header");
        // Byte for byte the super-frame the kernel gave: same id, same partial checksum, PSH.
        assert_eq!(got, &original);
        flow.check(&complete(got_hdr, got));
        // And it splits again into the same segments.
        assert_eq!(segment(*got_hdr, got).unwrap(), segs);
    }
}

#[test]
fn a_single_segment_is_passed_unchanged_as_data_valid() {
    let flow = Flow::v4();
    let seg = flow.frame(1, ACK, &payload(100, 16), false);
    let mut c = Coalescer::new(Coalescer::DEFAULT_MAX_LEN);
    let out = coalesce_all(&mut c, std::slice::from_ref(&seg));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0.flags, VnetHdr::DATA_VALID);
    assert_eq!(out[0].0.gso_type, GsoType::None);
    assert_eq!(out[0].1, seg);
    assert!(c.take().is_none());
}

#[test]
fn refuses_out_of_order_and_gaps() {
    let flow = Flow::v4();
    let d = payload(3000, 17);
    let s = |seq: u32, r: std::ops::Range<usize>| flow.frame(seq, ACK, &d[r], false);
    let mut c = Coalescer::new(Coalescer::DEFAULT_MAX_LEN);
    assert_eq!(c.push(&s(0, 0..1000), Csum::Complete), Push::Merged);
    assert_eq!(
        c.push(&s(2000, 2000..3000), Csum::Complete),
        Push::FlushFirst,
        "gap"
    );
    assert_eq!(
        c.push(&s(0, 0..1000), Csum::Complete),
        Push::FlushFirst,
        "retransmission"
    );
    assert_eq!(c.push(&s(1000, 1000..2000), Csum::Complete), Push::Merged);
    assert_eq!(c.pending_segments(), 2);
    let frames = [
        s(1000, 1000..2000),
        s(0, 0..1000),
        s(2000, 2000..3000),
        s(3000, 0..1),
    ];
    let out = coalesce_all(&mut Coalescer::new(Coalescer::DEFAULT_MAX_LEN), &frames);
    // 1000.. alone, 0.. alone (2000 does not follow it), then 2000.. and 3000.. merged.
    assert_eq!(out.len(), 3, "{out:?}");
    assert_eq!(out[0], (data_valid(), frames[0].clone()));
    assert_eq!(out[1], (data_valid(), frames[1].clone()));
    assert_eq!(out[2].0.gso_type, GsoType::TcpV4);
    assert_eq!(
        flow.check(&complete(&out[2].0, &out[2].1)).3,
        &[&d[2000..], &d[..1]].concat()[..]
    );
}

#[test]
fn refuses_different_flows() {
    let base = Flow::v4();
    let d = payload(1000, 18);
    let first = base.frame(0, ACK, &d, false);
    let variants: Vec<(&str, Vec<u8>)> = vec![
        (
            "src port",
            Flow {
                src_port: 1,
                ..base.clone()
            }
            .frame(1000, ACK, &d, false),
        ),
        (
            "dst addr",
            Flow {
                dst4: Ipv4Addr::new(10, 32, 0, 9),
                ..base.clone()
            }
            .frame(1000, ACK, &d, false),
        ),
        (
            "ack",
            Flow {
                ack: 9,
                ..base.clone()
            }
            .frame(1000, ACK, &d, false),
        ),
        (
            "window",
            Flow {
                window: 9,
                ..base.clone()
            }
            .frame(1000, ACK, &d, false),
        ),
        (
            "ttl",
            Flow {
                ttl: 9,
                ..base.clone()
            }
            .frame(1000, ACK, &d, false),
        ),
        (
            "tos",
            Flow {
                tos: 4,
                ..base.clone()
            }
            .frame(1000, ACK, &d, false),
        ),
        (
            "mac",
            Flow {
                src_mac: Address([2, 9, 9, 9, 9, 9]),
                ..base.clone()
            }
            .frame(1000, ACK, &d, false),
        ),
        (
            "vlan",
            Flow {
                vlan: Some(3),
                ..base.clone()
            }
            .frame(1000, ACK, &d, false),
        ),
        (
            "options",
            Flow {
                options: vec![1, 1, 8, 10, 0, 0, 0, 2, 0, 0, 0, 2],
                ..base.clone()
            }
            .frame(1000, ACK, &d, false),
        ),
        (
            "no options",
            Flow {
                options: vec![],
                ..base.clone()
            }
            .frame(1000, ACK, &d, false),
        ),
        ("ipv6", Flow::v6().frame(1000, ACK, &d, false)),
        ("ece", base.frame(1000, ACK | ECE, &d, false)),
        ("larger", base.frame(1000, ACK, &payload(1001, 1), false)),
    ];
    for (what, frame) in variants {
        let mut c = Coalescer::new(Coalescer::DEFAULT_MAX_LEN);
        assert_eq!(c.push(&first, Csum::Complete), Push::Merged);
        assert_eq!(c.push(&frame, Csum::Complete), Push::FlushFirst, "{what}");
        assert_eq!(
            c.take().map(<[u8]>::to_vec).unwrap()[VNET_HDR_LEN..],
            first[..]
        );
        assert_eq!(
            c.push(&frame, Csum::Complete),
            Push::Merged,
            "{what} starts its own"
        );
    }
    // DF differs.
    let mut no_df = base.frame(1000, ACK, &d, false);
    no_df[14 + 6] &= !0x40;
    let mut ip = ipv4::Packet::new_unchecked(&mut no_df[14..]);
    ip.fill_checksum();
    let mut c = Coalescer::new(Coalescer::DEFAULT_MAX_LEN);
    assert_eq!(c.push(&first, Csum::Complete), Push::Merged);
    assert_eq!(c.push(&no_df, Csum::Complete), Push::FlushFirst);
}

#[test]
fn refuses_bad_checksums_and_control_segments() {
    let flow = Flow::v4();
    let d = payload(1000, 19);
    let mut c = Coalescer::new(Coalescer::DEFAULT_MAX_LEN);
    assert_eq!(
        c.push(&flow.frame(0, ACK, &d, false), Csum::Complete),
        Push::Merged
    );
    // A flipped payload bit: the TCP checksum fails, so the frame is not merged.
    let mut bad = flow.frame(1000, ACK, &d, false);
    bad[500] ^= 0x10;
    assert_eq!(tcp_checksum_valid(&bad), Ok(false));
    assert_eq!(c.push(&bad, Csum::Complete), Push::NotMergeable);
    // A corrupted IPv4 header checksum.
    let mut bad_ip = flow.frame(1000, ACK, &d, false);
    bad_ip[14 + 10] ^= 1;
    assert_eq!(c.push(&bad_ip, Csum::Complete), Push::NotMergeable);
    // The partial checksum of an unsegmented super-frame is not a valid checksum either.
    assert_eq!(
        c.push(&flow.frame(1000, ACK, &d, true), Csum::Complete),
        Push::NotMergeable
    );
    for flags in [ACK | SYN, ACK | FIN, ACK | RST, ACK | URG, ACK | CWR, SYN] {
        assert_eq!(
            c.push(&flow.frame(1000, flags, &d, false), Csum::Complete),
            Push::NotMergeable,
            "flags {flags:#x}"
        );
    }
    // A pure ACK (no payload).
    assert_eq!(
        c.push(&flow.frame(1000, ACK, &[], false), Csum::Complete),
        Push::NotMergeable
    );
    // IPv4 options.
    let mut with_opts = flow.frame(1000, ACK, &d, false);
    with_opts.splice(34..34, [1, 1, 1, 0]);
    let mut ip = ipv4::Packet::new_unchecked(&mut with_opts[14..]);
    ip.set_header_len(24);
    ip.set_total_len(ip.total_len() + 4);
    ip.fill_checksum();
    assert!(ipv4::Repr::parse(&ipv4::Packet::new_checked(&with_opts[14..]).unwrap()).is_ok());
    assert_eq!(c.push(&with_opts, Csum::Complete), Push::NotMergeable);
    // A fragment.
    let mut frag = flow.frame(1000, ACK, &d, false);
    let mut ip = ipv4::Packet::new_unchecked(&mut frag[14..]);
    ip.set_more_frags(true);
    ip.fill_checksum();
    assert_eq!(c.push(&frag, Csum::Complete), Push::NotMergeable);
    // A UDP datagram whose checksum is only the pseudo-header's (wrong), and garbage.
    let (_, udp_frame) = udp_partial(&d);
    assert_eq!(c.push(&udp_frame, Csum::Complete), Push::NotMergeable);
    for len in 0..80 {
        assert_eq!(
            c.push(&flow.frame(1000, ACK, &d, false)[..len], Csum::Complete),
            Push::NotMergeable
        );
    }
    // Still only the first segment pending, untouched.
    assert_eq!(c.pending_segments(), 1);
    let out = c.take().unwrap();
    assert_eq!(out[VNET_HDR_LEN..], flow.frame(0, ACK, &d, false)[..]);
}

/// A complete Ethernet / IPv4 / UDP datagram (ports 5000 -> `dst_port`, DF, identification
/// `id`) with a correct UDP checksum.
fn udp_datagram(dst_port: u16, id: u16, data: &[u8]) -> Vec<u8> {
    let (_, mut f) = udp_partial(data);
    let mut ip = ipv4::Packet::new_unchecked(&mut f[14..]);
    ip.set_ident(id);
    ip.fill_checksum();
    udp::Packet::new_unchecked(&mut f[34..]).set_dst_port(dst_port);
    fill_udp_checksum(&mut f);
    f
}

/// Sets the complete UDP checksum of an Ethernet / IPv4 (no options, `SRC4` -> `DST4`) / UDP
/// frame whose UDP length is right.
fn fill_udp_checksum(f: &mut [u8]) {
    let mut u = udp::Packet::new_unchecked(&mut f[34..]);
    u.set_checksum(0);
    let len = (f.len() - 34) as u16;
    let sum = checksum::combine(&[
        checksum::pseudo_header(SRC4, DST4, Protocol::Udp, len),
        checksum::data(&f[34..]),
    ]);
    let sum = if !sum == 0 { 0xffff } else { !sum };
    udp::Packet::new_unchecked(&mut f[34..]).set_checksum(sum);
}

/// What the kernel does with a UDP super-frame (`__udp_gso_segment`): one datagram per
/// `gso_size` bytes of payload, each with its own lengths, the identification counting up from
/// the super-frame's, and complete checksums.
fn split_udp(hdr: &VnetHdr, f: &[u8]) -> Vec<Vec<u8>> {
    assert_eq!(hdr.gso_type, GsoType::UdpL4);
    assert_eq!(hdr.flags, VnetHdr::NEEDS_CSUM);
    assert_eq!((hdr.csum_start, hdr.csum_offset), (34, 6));
    let hl = usize::from(hdr.hdr_len);
    assert_eq!(hl, 42);
    // The kernel expects the super-frame's UDP checksum field to hold the pseudo-header sum
    // over the whole UDP length, and the IPv4 header to be valid.
    let udp_len = f.len() - 34;
    assert_eq!(usize::from(u16::from_be_bytes([f[38], f[39]])), udp_len);
    assert_eq!(
        u16::from_be_bytes([f[40], f[41]]),
        checksum::pseudo_header(SRC4, DST4, Protocol::Udp, udp_len as u16)
    );
    assert_eq!(checksum::data(&f[14..34]), 0xffff, "IPv4 header checksum");
    let id0 = ipv4::Packet::new_unchecked(&f[14..]).ident();
    f[hl..]
        .chunks(usize::from(hdr.gso_size))
        .enumerate()
        .map(|(i, chunk)| {
            let mut seg = f[..hl].to_vec();
            seg.extend_from_slice(chunk);
            let mut ip = ipv4::Packet::new_unchecked(&mut seg[14..]);
            ip.set_total_len((28 + chunk.len()) as u16);
            ip.set_ident(id0.wrapping_add(i as u16));
            ip.fill_checksum();
            udp::Packet::new_unchecked(&mut seg[34..]).set_len((8 + chunk.len()) as u16);
            fill_udp_checksum(&mut seg);
            seg
        })
        .collect()
}

#[test]
fn udp_datagrams_of_one_flow_become_one_udp_super_frame() {
    // Five 64-byte datagrams and a shorter last one, identifications counting up as Linux
    // sends them.
    let sizes = [64, 64, 64, 64, 64, 30];
    let frames: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            udp_datagram(
                6000,
                0xfffe_u16.wrapping_add(i as u16),
                &payload(n, i as u8),
            )
        })
        .collect();
    let mut c = Coalescer::new(Coalescer::DEFAULT_MAX_LEN);
    assert_eq!(c.push(&frames[0], Csum::Complete), Push::Merged);
    assert!(!c.holds_udp_run(), "one datagram is not a run");
    assert_eq!(c.push(&frames[1], Csum::Complete), Push::Merged);
    assert!(c.holds_udp_run());
    let mut out = vec![];
    for f in &frames[2..] {
        assert_eq!(c.push(f, Csum::Complete), Push::Merged);
    }
    if let Some(b) = c.take() {
        out.push((VnetHdr::parse(b).unwrap(), b[VNET_HDR_LEN..].to_vec()));
    }
    assert_eq!(out.len(), 1);
    let (hdr, merged) = &out[0];
    assert_eq!(hdr.gso_size, 64);
    assert_eq!(merged.len(), 42 + sizes.iter().sum::<usize>());
    // Split as the kernel splits it: the very datagrams that came in, byte for byte.
    assert_eq!(split_udp(hdr, merged), frames);
}

#[test]
fn udp_runs_end_at_other_flows_short_datagrams_bad_checksums_and_64_datagrams() {
    let d = payload(64, 9);
    let mut c = Coalescer::new(Coalescer::DEFAULT_MAX_LEN);
    // Another destination port: another flow.
    let a = udp_datagram(6000, 1, &d);
    let b = udp_datagram(6001, 2, &d);
    assert_eq!(c.push(&a, Csum::Complete), Push::Merged);
    assert_eq!(c.push(&b, Csum::Complete), Push::FlushFirst);
    c.take();
    // A shorter datagram closes the run; a longer one may not join.
    assert_eq!(
        c.push(&udp_datagram(6000, 1, &d), Csum::Complete),
        Push::Merged
    );
    assert_eq!(
        c.push(&udp_datagram(6000, 2, &d[..40]), Csum::Complete),
        Push::Merged
    );
    assert_eq!(
        c.push(&udp_datagram(6000, 3, &d[..40]), Csum::Complete),
        Push::FlushFirst
    );
    c.take();
    assert_eq!(
        c.push(&udp_datagram(6000, 1, &d[..40]), Csum::Complete),
        Push::Merged
    );
    assert_eq!(
        c.push(&udp_datagram(6000, 2, &d), Csum::Complete),
        Push::FlushFirst
    );
    c.take();
    // A wrong checksum, and IPv4's "no checksum" (nothing to verify): not merged, and what is
    // pending stays.
    assert_eq!(c.push(&a, Csum::Complete), Push::Merged);
    let mut bad = udp_datagram(6000, 2, &d);
    bad[60] ^= 1;
    assert_eq!(c.push(&bad, Csum::Complete), Push::NotMergeable);
    let mut none = udp_datagram(6000, 2, &d);
    none[40..42].fill(0);
    assert_eq!(c.push(&none, Csum::Complete), Push::NotMergeable);
    assert_eq!(c.pending_segments(), 1);
    c.take();
    // A TCP segment after a UDP run (and the other way round) starts its own.
    let flow = Flow::v4();
    assert_eq!(c.push(&a, Csum::Complete), Push::Merged);
    let tcp = flow.frame(1, ACK, &payload(100, 3), false);
    assert_eq!(c.push(&tcp, Csum::Complete), Push::FlushFirst);
    c.take();
    assert_eq!(c.push(&tcp, Csum::Complete), Push::Merged);
    assert_eq!(c.push(&a, Csum::Complete), Push::FlushFirst);
    c.take();
    // At most 64 datagrams in one super-frame.
    let frames: Vec<Vec<u8>> = (0..65).map(|i| udp_datagram(6000, i, &d)).collect();
    let out = coalesce_all(&mut c, &frames);
    assert_eq!(out.len(), 2);
    assert_eq!(split_udp(&out[0].0, &out[0].1), frames[..64]);
    assert_eq!(out[1].1, frames[64]);
    // Turned off (a kernel that refuses UDP super-frames): every datagram goes alone.
    c.set_udp(false);
    assert_eq!(c.push(&a, Csum::Complete), Push::NotMergeable);
    assert!(c.is_empty());
}

#[test]
fn psh_or_a_short_segment_ends_the_super_frame() {
    let flow = Flow::v4();
    let d = payload(4000, 20);
    let frames = [
        flow.frame(0, ACK, &d[..1000], false),
        flow.frame(1000, ACK | PSH, &d[1000..2000], false),
        flow.frame(2000, ACK, &d[2000..3000], false),
        flow.frame(3000, ACK, &d[3000..3500], false),
        flow.frame(3500, ACK, &d[3500..4000], false),
    ];
    let out = coalesce_all(&mut Coalescer::new(Coalescer::DEFAULT_MAX_LEN), &frames);
    assert_eq!(out.len(), 3);
    // 0..2000 with PSH (from the last segment), then 2000..3500 (the short one closes), then the rest.
    let (h, f) = &out[0];
    assert_eq!((h.gso_type, h.gso_size), (GsoType::TcpV4, 1000));
    let whole = complete(h, f);
    let (_, flags, _, p) = flow.check(&whole);
    assert_eq!(flags, ACK | PSH);
    assert_eq!(p, &d[..2000]);
    let (h, f) = &out[1];
    let whole = complete(h, f);
    let (seq, flags, _, p) = flow.check(&whole);
    assert_eq!((seq, flags), (2000, ACK));
    assert_eq!(p, &d[2000..3500]);
    assert_eq!(out[2].1, frames[4]);
}

#[test]
fn never_exceeds_the_buffer() {
    let flow = Flow::v4();
    let mss = 1448;
    let d = payload(mss * 100, 21);
    let frames: Vec<Vec<u8>> = (0..100)
        .map(|i| flow.frame((i * mss) as u32, ACK, &d[i * mss..(i + 1) * mss], false))
        .collect();
    for max in [Coalescer::DEFAULT_MAX_LEN, 9000 + VNET_HDR_LEN, 100] {
        let out = coalesce_all(&mut Coalescer::new(max), &frames);
        let mut all = Vec::new();
        for (h, f) in &out {
            let f = if h.flags & VnetHdr::NEEDS_CSUM != 0 {
                assert!(f.len() + VNET_HDR_LEN <= max);
                complete(h, f)
            } else {
                f.clone()
            };
            all.extend_from_slice(flow.check(&f).3);
        }
        assert_eq!(all, d, "max {max}");
        if max == Coalescer::DEFAULT_MAX_LEN {
            // 45 segments of 1448 fill 64 KiB.
            assert_eq!(
                out.len(),
                3,
                "{:?}",
                out.iter().map(|o| o.1.len()).collect::<Vec<_>>()
            );
        }
        if max == 100 {
            assert_eq!(out.len(), 100, "nothing fits: every frame passed through");
        }
    }
}

#[test]
fn ethernet_padding_is_ignored() {
    // 54 bytes of headers and 2 of payload: padded to the 60-byte Ethernet minimum.
    let flow = Flow {
        options: Vec::new(),
        ..Flow::v4()
    };
    let mut a = flow.frame(0, ACK, b"ab", false);
    let mut b = flow.frame(2, ACK, b"cd", false);
    a.resize(60, 0);
    b.resize(60, 0xee);
    let out = coalesce_all(&mut Coalescer::new(Coalescer::DEFAULT_MAX_LEN), &[a, b]);
    assert_eq!(out.len(), 1);
    let (h, f) = &out[0];
    assert_eq!(f.len(), flow.hdr_len() + 4);
    assert_eq!(flow.check(&complete(h, f)).3, b"abcd");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Segment a random super-frame, coalesce the segments: one super-frame comes back, equal to
    /// the original byte for byte (headers, partial checksum and payload), with the same vnet
    /// header (or, for a single segment, the segment itself).
    #[test]
    fn segment_then_coalesce_round_trips(
        len in 1usize..=60_000,
        mss in 1u16..=9000,
        seq: u32,
        ip_id: u16,
        v6: bool,
        vlan: bool,
        options: bool,
        psh: bool,
        salt: u8,
    ) {
        let flow = Flow {
            v6,
            vlan: vlan.then_some(100),
            ip_id,
            options: if options { Flow::v4().options } else { Vec::new() },
            ..Flow::v4()
        };
        let data = payload(len, salt);
        let flags = if psh { ACK | PSH } else { ACK };
        let (hdr, original) = flow.super_frame(seq, flags, &data, mss);
        let segs = segment_and_check(&flow, seq, flags, &data, mss);
        let out = coalesce_all(&mut Coalescer::new(Coalescer::DEFAULT_MAX_LEN), &segs);
        prop_assert_eq!(out.len(), 1);
        let (got_hdr, got) = &out[0];
        if segs.len() == 1 {
            prop_assert_eq!(got_hdr.flags, VnetHdr::DATA_VALID);
            prop_assert_eq!(got, &segs[0]);
        } else {
            prop_assert_eq!(got_hdr, &hdr);
            prop_assert_eq!(got, &original);
            prop_assert_eq!(&segment(*got_hdr, got).unwrap(), &segs);
        }
    }

    /// Arbitrary bytes never panic either side.
    #[test]
    fn arbitrary_input_never_panics(
        hdr in proptest::array::uniform10(any::<u8>()),
        frame in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let hdr = VnetHdr::parse(&hdr).unwrap();
        if let Ok(mut s) = Segmenter::new(hdr, &frame) {
            let mut out = vec![0u8; s.segment_len_max()];
            while s.next_into(&mut out).is_some() {}
        }
        let mut c = Coalescer::new(Coalescer::DEFAULT_MAX_LEN);
        let _ = c.push(&frame, Csum::Complete);
        let _ = c.take();
    }
}

/// Writes the seed corpus of the `offload` fuzz target (crates/fuzz/corpus/offload/):
/// `cargo test -p weft-overlay --test offload -- --ignored write_fuzz_seeds`.
#[test]
#[ignore = "writes the fuzz seed corpus; run by hand"]
fn write_fuzz_seeds() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/offload");
    std::fs::create_dir_all(&dir).unwrap();
    let tap_read = |hdr: VnetHdr, frame: &[u8]| {
        let mut v = vec![0u8];
        let mut raw = [0u8; VNET_HDR_LEN];
        hdr.emit(&mut raw);
        v.extend_from_slice(&raw);
        v.extend_from_slice(frame);
        v
    };
    let batch = |frames: &[Vec<u8>]| {
        let mut v = vec![1u8];
        for f in frames {
            v.extend_from_slice(&(f.len() as u16).to_le_bytes());
            v.extend_from_slice(f);
        }
        v
    };
    let mut seeds: Vec<(&str, Vec<u8>)> = Vec::new();
    let (h, f) = Flow::v4().super_frame(1, ACK | PSH, &payload(3000, 1), 1000);
    seeds.push(("tso4", tap_read(h, &f)));
    let (h, f) = Flow::v6().super_frame(1, ACK | FIN | CWR, &payload(2500, 2), 700);
    seeds.push(("tso6", tap_read(h, &f)));
    let vlan = Flow {
        vlan: Some(5),
        options: Vec::new(),
        ..Flow::v4()
    };
    let (h, f) = vlan.super_frame(u32::MAX - 10, ACK, &payload(1200, 3), 536);
    seeds.push(("tso4-vlan", tap_read(h, &f)));
    let (h, f) = udp_partial(&payload(300, 4));
    seeds.push(("csum-udp", tap_read(h, &f)));
    seeds.push(("plain", tap_read(VnetHdr::NONE, &[0xff; 60])));
    let flow = Flow::v4();
    let d = payload(4000, 5);
    let segs: Vec<Vec<u8>> = (0..4)
        .map(|i| flow.frame(i * 1000, ACK, &d[i as usize * 1000..][..1000], false))
        .collect();
    seeds.push(("gro4", batch(&segs)));
    seeds.push((
        "gro4-reorder",
        batch(&[
            segs[1].clone(),
            segs[0].clone(),
            segs[2].clone(),
            segs[3].clone(),
        ]),
    ));
    let flow = Flow::v6();
    let segs: Vec<Vec<u8>> = (0..3)
        .map(|i| flow.frame(i * 1000, ACK, &d[i as usize * 1000..][..1000], false))
        .collect();
    seeds.push(("gro6", batch(&segs)));
    for (name, bytes) in seeds {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

// --------------------------------------------------------------------------------------------
// Partial checksums between two routers (`CSUM_PARTIAL`).

/// Runs a segmenter that was asked to leave checksums partial to the end.
fn segment_partial(hdr: VnetHdr, frame: &[u8]) -> (bool, Vec<Vec<u8>>) {
    let mut s = Segmenter::new(hdr, frame).expect("segments");
    let partial = s.leave_checksums_partial();
    assert_eq!(s.is_partial(), partial);
    let mut out = vec![0u8; s.segment_len_max()];
    let mut segs = Vec::new();
    while let Some(n) = s.next_into(&mut out) {
        segs.push(out[..n].to_vec());
    }
    (partial, segs)
}

#[test]
fn partial_tcp_segments_hold_the_pseudo_header_sum_and_complete_to_the_full_split() {
    for flow in [Flow::v4(), Flow::v6()] {
        let data = payload(10_000, 40);
        let (hdr, frame) = flow.super_frame(777, ACK | PSH, &data, 1448);
        let full = segment(hdr, &frame).unwrap();
        let (partial, segs) = segment_partial(hdr, &frame);
        assert!(partial, "a TCP split can always leave checksums partial");
        assert_eq!(segs.len(), full.len());
        let l4 = flow.l4();
        for (p, f) in segs.iter().zip(&full) {
            // Only the checksum field differs, and it holds the folded pseudo-header sum.
            assert_eq!(p[..l4 + 16], f[..l4 + 16]);
            assert_eq!(p[l4 + 18..], f[l4 + 18..]);
            let pseudo = flow.pseudo(p.len() - l4);
            assert_eq!(u16::from_be_bytes([p[l4 + 16], p[l4 + 17]]), pseudo);
            assert_eq!(tcp_checksum_valid(p), Ok(false), "not a complete checksum");
            // What the receiving router does for a TAP without vnet headers.
            let mut done = p.clone();
            assert_eq!(complete_partial(&mut done), Ok(p.len()));
            assert_eq!(&done, f);
            // What it does for one written on its own: NEEDS_CSUM at the TCP header.
            let mut own = p.clone();
            own[l4 + 16..l4 + 18].copy_from_slice(&[0xde, 0xad]);
            let (h, len) = prepare_partial(&mut own).unwrap();
            assert_eq!(len, p.len());
            assert_eq!(
                (h.flags, h.gso_type, h.csum_start, h.csum_offset),
                (VnetHdr::NEEDS_CSUM, GsoType::None, l4 as u16, 16)
            );
            assert_eq!(&own, p, "the seed is worked out, not taken from the sender");
            assert_eq!(&complete(&h, &own), f, "what the kernel makes of it");
        }
    }
}

#[test]
fn a_single_frame_is_left_partial_only_if_it_is_tcp_or_udp_with_needs_csum_in_place() {
    // A small TCP segment with NEEDS_CSUM (an ACK carrying data): copied as it came.
    let flow = Flow::v4();
    let (mut hdr, frame) = flow.super_frame(5, ACK | PSH, &payload(100, 41), 1448);
    hdr.gso_type = GsoType::None;
    hdr.gso_size = 0;
    assert_eq!(segment_partial(hdr, &frame), (true, vec![frame.clone()]));
    // A UDP datagram with NEEDS_CSUM: likewise.
    let (uhdr, uframe) = udp_partial(&payload(64, 42));
    assert_eq!(segment_partial(uhdr, &uframe), (true, vec![uframe.clone()]));
    // Without NEEDS_CSUM the checksum is whatever the sender wrote: complete, not partial.
    let full = flow.frame(5, ACK, &payload(100, 41), false);
    assert_eq!(
        segment_partial(VnetHdr::NONE, &full),
        (false, vec![full.clone()])
    );
    // NEEDS_CSUM somewhere else than the TCP checksum field: completed as before.
    let odd = VnetHdr {
        csum_offset: 6,
        ..hdr
    };
    let (partial, segs) = segment_partial(odd, &frame);
    assert!(!partial);
    assert_eq!(segs, segment(odd, &frame).unwrap());
    // Not TCP or UDP (an ICMP echo with NEEDS_CSUM): completed as before.
    let mut icmp = uframe.clone();
    icmp[14 + 9] = 1;
    let mut ip = ipv4::Packet::new_unchecked(&mut icmp[14..]);
    ip.fill_checksum();
    let ihdr = VnetHdr {
        csum_offset: 2,
        ..uhdr
    };
    let (partial, segs) = segment_partial(ihdr, &icmp);
    assert!(!partial);
    assert_eq!(segs, segment(ihdr, &icmp).unwrap());
    let mut copy = icmp.clone();
    assert_eq!(
        prepare_partial(&mut copy).err(),
        complete_partial(&mut copy).err()
    );
    assert!(prepare_partial(&mut copy).is_err(), "not TCP or UDP");
}

#[test]
fn partial_segments_merge_unverified_and_a_lone_one_is_written_with_needs_csum() {
    let flow = Flow::v4();
    let data = payload(8 * 1448, 43);
    let (hdr, original) = flow.super_frame(9000, ACK, &data, 1448);
    let (_, segs) = segment_partial(hdr, &original);
    // As complete frames their checksums are wrong: nothing merges.
    let mut c = Coalescer::new(Coalescer::DEFAULT_MAX_LEN);
    assert_eq!(c.push(&segs[0], Csum::Complete), Push::NotMergeable);
    // As partial ones they merge into the super-frame the sending kernel gave.
    for s in &segs {
        assert_eq!(c.push(s, Csum::Partial), Push::Merged);
    }
    let b = c.take().unwrap();
    assert_eq!(VnetHdr::parse(b).unwrap(), hdr);
    assert_eq!(&b[VNET_HDR_LEN..], &original[..]);
    // One alone: NEEDS_CSUM and no GSO, the seed recomputed (here the sender's was garbage).
    let mut lone = segs[3].clone();
    let l4 = flow.l4();
    lone[l4 + 16..l4 + 18].copy_from_slice(&[0, 0]);
    assert_eq!(c.push(&lone, Csum::Partial), Push::Merged);
    let b = c.take().unwrap().to_vec();
    let h = VnetHdr::parse(&b).unwrap();
    assert_eq!(
        (h.flags, h.gso_type, h.gso_size, h.csum_start, h.csum_offset),
        (VnetHdr::NEEDS_CSUM, GsoType::None, 0, l4 as u16, 16)
    );
    assert_eq!(&b[VNET_HDR_LEN..], &segs[3][..]);
    let full = segment(hdr, &original).unwrap();
    assert_eq!(complete(&h, &b[VNET_HDR_LEN..]), full[3]);
    // A partial pure ACK is not mergeable; the data path writes it with prepare_partial.
    let mut ack = flow.frame(1, ACK, &[], true);
    assert_eq!(c.push(&ack, Csum::Partial), Push::NotMergeable);
    let (h, len) = prepare_partial(&mut ack).unwrap();
    assert_eq!(len, ack.len());
    flow.check(&complete(&h, &ack));
    // Partial UDP datagrams merge like complete ones.
    let d = payload(64, 44);
    let mut c = Coalescer::new(Coalescer::DEFAULT_MAX_LEN);
    for id in 1..=3u16 {
        let (_, mut f) = udp_partial(&d);
        let mut ip = ipv4::Packet::new_unchecked(&mut f[14..]);
        ip.set_ident(id);
        ip.fill_checksum();
        assert_eq!(c.push(&f, Csum::Partial), Push::Merged);
    }
    let b = c.take().unwrap().to_vec();
    let h = VnetHdr::parse(&b).unwrap();
    assert_eq!(h.gso_type, GsoType::UdpL4);
    let split = split_udp(&h, &b[VNET_HDR_LEN..]);
    assert_eq!(split.len(), 3);
    for (i, s) in split.iter().enumerate() {
        assert_eq!(s, &udp_datagram(6000, i as u16 + 1, &d));
    }
}

#[test]
fn completing_and_preparing_trim_bytes_after_the_ip_packet_and_refuse_what_does_not_parse() {
    let flow = Flow::v4();
    let seg = flow.frame(1, ACK, &payload(10, 45), true);
    let mut padded = seg.clone();
    padded.extend_from_slice(&[0xaa; 6]);
    let mut a = padded.clone();
    assert_eq!(complete_partial(&mut a), Ok(seg.len()));
    flow.check(&a[..seg.len()]);
    let mut b = padded.clone();
    assert_eq!(prepare_partial(&mut b).map(|(_, n)| n), Ok(seg.len()));
    // A UDP datagram whose complete checksum is 0 goes out as 0xffff.
    let mut data = payload(64, 14);
    data[62..].fill(0);
    let (_, frame) = udp_partial(&data);
    let sum_without_field = checksum::combine(&[
        checksum::pseudo_header(SRC4, DST4, Protocol::Udp, 72),
        checksum::data(&frame[34..40]),
        checksum::data(&frame[42..]),
    ]);
    data[62..].copy_from_slice(&(!sum_without_field).to_be_bytes());
    let (_, mut frame) = udp_partial(&data);
    assert_eq!(complete_partial(&mut frame), Ok(frame.len()));
    assert_eq!(frame[40..42], [0xff, 0xff]);
    // Truncated and non-IP frames are errors, never panics.
    for n in 0..seg.len() {
        let mut t = seg[..n].to_vec();
        assert!(complete_partial(&mut t).is_err(), "{n} bytes");
        assert!(prepare_partial(&mut t).is_err(), "{n} bytes");
    }
    let mut arp = [0xffu8; 60];
    assert!(prepare_partial(&mut arp).is_err());
}
