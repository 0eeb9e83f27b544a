//! Layer: pure logic. The data-path heartbeat: a special frame sent inside VXLAN on every
//! connection so that both ends learn that UDP works in their direction.
//!
//! Layout of the inner frame: an Ethernet header whose destination and source are both
//! `00:00:00:00:00:00` and whose EtherType is `0x0000` (no real frame looks like that), then the
//! connection UID (u64, big-endian), then the sender's peer name (u64, big-endian).

/// Length of a heartbeat frame (without the VXLAN header).
pub const FRAME_LEN: usize = 14 + 8 + 8;

/// A parsed heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// The UID of the control connection it belongs to (same on both ends).
    pub conn_uid: u64,
    /// The peer name of the sender.
    pub sender: u64,
}

/// True when an inner frame has the heartbeat's reserved header (zero MACs and EtherType).
pub fn is_heartbeat(frame: &[u8]) -> bool {
    frame.len() >= 14 && frame[..14].iter().all(|&b| b == 0)
}

impl Heartbeat {
    /// Parse a heartbeat frame; `None` if it is not one or is truncated.
    pub fn parse(frame: &[u8]) -> Option<Self> {
        if !is_heartbeat(frame) || frame.len() < FRAME_LEN {
            return None;
        }
        let conn_uid = u64::from_be_bytes(frame[14..22].try_into().ok()?);
        let sender = u64::from_be_bytes(frame[22..30].try_into().ok()?);
        Some(Self { conn_uid, sender })
    }

    /// Write the heartbeat frame into `out`; returns the length written.
    ///
    /// # Panics
    /// If `out` is shorter than [`FRAME_LEN`].
    pub fn emit(&self, out: &mut [u8]) -> usize {
        out[..14].fill(0);
        out[14..22].copy_from_slice(&self.conn_uid.to_be_bytes());
        out[22..30].copy_from_slice(&self.sender.to_be_bytes());
        FRAME_LEN
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
}
