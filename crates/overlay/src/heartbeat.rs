//! Layer: pure logic. The data-path heartbeat: a special frame sent inside VXLAN on every
//! connection so that both ends learn that UDP works in their direction.
//!
//! Layout of the inner frame: an Ethernet header whose destination and source are both
//! `00:00:00:00:00:00` and whose EtherType is `0x0000` (no real frame looks like that), then the
//! connection UID (u64, big-endian), then the sender's peer name (u64, big-endian).
//!
//! Path MTU probes are heartbeats too (so a peer that does not know them still takes them for
//! one): after the sender, a kind byte ([`PROBE`] or [`PROBE_ACK`]) and a u16 (big-endian):
//! for a probe its own length, padded with zeros to that length; for an acknowledgement the
//! length of the probe that arrived.
//!
//! Through the kernel fast path (a VXLAN device per peer, attached to the bridge) the same
//! frame goes with another Ethernet header: destination [`FASTDP_DST`] (an IEEE 802.1
//! link-local group address, which a bridge never forwards but passes up the port it arrived
//! on), the sending device's MAC as source (a bridge drops frames from an invalid source before
//! anything else sees them), and EtherType [`FASTDP_ETHERTYPE`] (IEEE "local experimental"), so
//! an `AF_PACKET` socket bound to that EtherType on the device receives exactly these.
//! [`Heartbeat::emit_fastdp`] and [`Heartbeat::parse_fastdp`] write and read that form; the
//! body and the lengths (a probe's length counts the whole frame) are the same.

/// Length of a heartbeat frame (without the VXLAN header).
pub const FRAME_LEN: usize = 14 + 8 + 8;

/// Kind byte of a path MTU probe.
pub const PROBE: u8 = 1;
/// Kind byte of a probe's acknowledgement.
pub const PROBE_ACK: u8 = 2;
/// Length of a probe acknowledgement frame, and the smallest probe.
pub const PROBE_MIN_LEN: usize = FRAME_LEN + 3;

/// Destination MAC of a heartbeat through the kernel fast path (IEEE 802.1 reserved group
/// address 0x0F: bridges never forward it).
pub const FASTDP_DST: [u8; 6] = [0x01, 0x80, 0xc2, 0x00, 0x00, 0x0f];
/// EtherType of a heartbeat through the kernel fast path (IEEE 802 local experimental 1).
pub const FASTDP_ETHERTYPE: u16 = 0x88b5;

/// A parsed heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// The UID of the control connection it belongs to (same on both ends).
    pub conn_uid: u64,
    /// The peer name of the sender.
    pub sender: u64,
    /// A path MTU probe or its acknowledgement, if it is one.
    pub probe: Option<Probe>,
}

/// The path MTU part of a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// A probe: this heartbeat's frame is this long (the receiver checks it arrived whole).
    Probe(u16),
    /// A probe of this length (the whole inner frame) arrived.
    Ack(u16),
}

/// True when an inner frame has the heartbeat's reserved header (zero MACs and EtherType).
pub fn is_heartbeat(frame: &[u8]) -> bool {
    frame.len() >= 14 && frame[..14].iter().all(|&b| b == 0)
}

impl Heartbeat {
    /// Parse a heartbeat frame; `None` if it is not one or is truncated.
    pub fn parse(frame: &[u8]) -> Option<Self> {
        if !is_heartbeat(frame) {
            return None;
        }
        Self::parse_body(frame)
    }

    /// The heartbeat in `frame` after its (already checked) Ethernet header.
    fn parse_body(frame: &[u8]) -> Option<Self> {
        if frame.len() < FRAME_LEN {
            return None;
        }
        let conn_uid = u64::from_be_bytes(frame[14..22].try_into().ok()?);
        let sender = u64::from_be_bytes(frame[22..30].try_into().ok()?);
        let probe = match frame.get(FRAME_LEN..PROBE_MIN_LEN) {
            Some(&[kind, hi, lo]) => {
                let n = u16::from_be_bytes([hi, lo]);
                match kind {
                    // A probe that did not arrive whole is no probe (nor a heartbeat).
                    PROBE if usize::from(n) != frame.len() => return None,
                    PROBE => Some(Probe::Probe(n)),
                    PROBE_ACK => Some(Probe::Ack(n)),
                    _ => None,
                }
            }
            _ => None,
        };
        Some(Self {
            conn_uid,
            sender,
            probe,
        })
    }

    /// The length of this heartbeat's frame: a probe's own length, else the fixed one.
    pub fn frame_len(&self) -> usize {
        match self.probe {
            None => FRAME_LEN,
            Some(Probe::Ack(_)) => PROBE_MIN_LEN,
            Some(Probe::Probe(n)) => usize::from(n).max(PROBE_MIN_LEN),
        }
    }

    /// Write the heartbeat frame into `out` (a probe padded with zeros to its length);
    /// returns the length written.
    ///
    /// # Panics
    /// If `out` is shorter than [`Heartbeat::frame_len`].
    pub fn emit(&self, out: &mut [u8]) -> usize {
        let len = self.frame_len();
        out[..14].fill(0);
        out[14..22].copy_from_slice(&self.conn_uid.to_be_bytes());
        out[22..30].copy_from_slice(&self.sender.to_be_bytes());
        let (kind, n) = match self.probe {
            None => return FRAME_LEN,
            Some(Probe::Probe(_)) => (PROBE, len as u16),
            Some(Probe::Ack(n)) => (PROBE_ACK, n),
        };
        out[FRAME_LEN] = kind;
        out[FRAME_LEN + 1..PROBE_MIN_LEN].copy_from_slice(&n.to_be_bytes());
        out[PROBE_MIN_LEN..len].fill(0);
        len
    }
}

impl Heartbeat {
    /// Write the heartbeat as a fast-path frame from device MAC `src` into `out` (see the
    /// module documentation); returns the length written.
    ///
    /// # Panics
    /// If `out` is shorter than [`Heartbeat::frame_len`].
    pub fn emit_fastdp(&self, src: [u8; 6], out: &mut [u8]) -> usize {
        let n = self.emit(out);
        out[..6].copy_from_slice(&FASTDP_DST);
        out[6..12].copy_from_slice(&src);
        out[12..14].copy_from_slice(&FASTDP_ETHERTYPE.to_be_bytes());
        n
    }

    /// Parse a fast-path heartbeat frame; `None` if it is not one or is truncated.
    pub fn parse_fastdp(frame: &[u8]) -> Option<Self> {
        if frame.len() < FRAME_LEN
            || frame[..6] != FASTDP_DST
            || frame[12..14] != FASTDP_ETHERTYPE.to_be_bytes()
        {
            return None;
        }
        Self::parse_body(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        let hb = Heartbeat {
            conn_uid: 0x0102_0304_0506_0708,
            sender: 0x00aa_bbcc_ddee_ff00,
            probe: None,
        };
        let mut buf = [0xffu8; 40];
        let n = hb.emit(&mut buf);
        assert_eq!(Heartbeat::parse(&buf[..n]), Some(hb));
        for len in 0..n {
            assert_eq!(Heartbeat::parse(&buf[..len]), None);
        }
        buf[0] = 1;
        assert_eq!(Heartbeat::parse(&buf[..n]), None);
    }

    #[test]
    fn probes_are_padded_heartbeats_and_must_arrive_whole() {
        let probe = Heartbeat {
            conn_uid: 9,
            sender: 7,
            probe: Some(Probe::Probe(1000)),
        };
        let mut buf = [0xffu8; 1100];
        let n = probe.emit(&mut buf);
        assert_eq!(n, 1000);
        assert!(buf[PROBE_MIN_LEN..n].iter().all(|&b| b == 0));
        assert_eq!(Heartbeat::parse(&buf[..n]), Some(probe));
        // Cut short (or grown) on the way: not taken.
        assert_eq!(Heartbeat::parse(&buf[..n - 1]), None);
        assert_eq!(Heartbeat::parse(&buf[..n + 1]), None);
        // A peer that knows no probes still reads the heartbeat in it.
        assert!(is_heartbeat(&buf[..n]));

        let ack = Heartbeat {
            probe: Some(Probe::Ack(1000)),
            ..probe
        };
        let n = ack.emit(&mut buf);
        assert_eq!(n, PROBE_MIN_LEN);
        assert_eq!(Heartbeat::parse(&buf[..n]), Some(ack));
        // An unknown kind is a plain heartbeat.
        buf[FRAME_LEN] = 9;
        assert_eq!(
            Heartbeat::parse(&buf[..n]),
            Some(Heartbeat { probe: None, ..ack })
        );
    }

    #[test]
    fn fastdp_frames_round_trip_and_are_told_apart() {
        let src = [0x02, 1, 2, 3, 4, 5];
        for probe in [None, Some(Probe::Ack(1390)), Some(Probe::Probe(1390))] {
            let hb = Heartbeat {
                conn_uid: 0xffff_0000_0000_0001,
                sender: 7,
                probe,
            };
            let mut buf = [0xeeu8; 1500];
            let n = hb.emit_fastdp(src, &mut buf);
            assert_eq!(n, hb.frame_len());
            assert_eq!(&buf[..6], &FASTDP_DST);
            assert_eq!(&buf[6..12], &src);
            assert_eq!(Heartbeat::parse_fastdp(&buf[..n]), Some(hb));
            // Not a sleeve heartbeat, and a sleeve heartbeat is not a fast-path one.
            assert_eq!(Heartbeat::parse(&buf[..n]), None);
            let m = hb.emit(&mut buf);
            assert_eq!(Heartbeat::parse_fastdp(&buf[..m]), None);
        }
        // A probe cut short on the way is no heartbeat.
        let probe = Heartbeat {
            conn_uid: 1,
            sender: 2,
            probe: Some(Probe::Probe(1000)),
        };
        let mut buf = [0u8; 1000];
        probe.emit_fastdp(src, &mut buf);
        assert_eq!(Heartbeat::parse_fastdp(&buf[..999]), None);
        for len in 0..FRAME_LEN {
            assert_eq!(Heartbeat::parse_fastdp(&buf[..len]), None);
        }
    }
}
