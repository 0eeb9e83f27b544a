//! Layer: pure logic. Forwarding decisions for frames from the local bridge and datagrams from
//! peers, after Weave's overlay router (learn, then unicast to the owner or flood).

use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use weft_mesh::Instant;
use weft_wire::vxlan;

use crate::heartbeat::{self, Heartbeat};
use crate::{Counters, MacTable, Owner};

/// Number of distinct short ids (12 bits).
const SHORT_IDS: usize = 4096;
const ETH_HEADER: usize = 14;
/// Destination of IEEE 802.1D Spanning Tree frames; never forwarded between hosts.
const STP_DST: [u8; 6] = [0x01, 0x80, 0xc2, 0x00, 0x00, 0x00];

/// Engine settings.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// Our own short id, the destination every datagram for us carries in its VNI.
    pub local_short_id: u16,
    /// How long a MAC entry lives without traffic.
    pub mac_max_age: Duration,
}

/// A peer the data plane can send to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerEntry {
    /// The peer's 12-bit short id.
    pub short_id: u16,
    /// The peer's 48-bit name.
    pub name: u64,
    /// Where its data port is (UDP).
    pub addr: SocketAddr,
}

/// What to do with a frame read from the local bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TapDecision {
    /// Drop it (counted).
    Drop,
    /// The destination is on our own bridge; the bridge already delivered it.
    Local,
    /// Send it to one peer.
    Unicast(PeerEntry),
    /// Send a copy to every peer ([`Engine::peers`]).
    Flood,
}

/// What to do with a datagram received on the data port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatagramDecision {
    /// Drop it (counted).
    Drop,
    /// Write this range of the datagram (the inner Ethernet frame) to the TAP.
    Deliver(Range<usize>),
    /// A data-path heartbeat from the peer with this short id.
    Heartbeat {
        /// Source short id from the VNI.
        src: u16,
        /// The heartbeat's content.
        heartbeat: Heartbeat,
    },
}

/// The forwarding engine. One per data-plane thread; the control plane adds and removes peers.
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    macs: MacTable,
    by_short_id: Vec<Option<PeerEntry>>,
    peers: Vec<PeerEntry>,
    counters: Counters,
}

impl Engine {
    /// A new engine with no peers and an empty MAC table.
    pub fn new(config: EngineConfig) -> Self {
        Self {
            config,
            macs: MacTable::new(config.mac_max_age),
            by_short_id: vec![None; SHORT_IDS],
            peers: Vec::new(),
            counters: Counters::default(),
        }
    }

    /// Add a peer, or replace the one with the same short id.
    pub fn add_peer(&mut self, peer: PeerEntry) {
        let slot = usize::from(peer.short_id) % SHORT_IDS;
        self.by_short_id[slot] = Some(peer);
        self.peers.retain(|p| p.short_id != peer.short_id);
        self.peers.push(peer);
    }

    /// Remove the peer with this short id (if its name matches) and forget its MAC entries.
    pub fn remove_peer(&mut self, short_id: u16, name: u64) {
        let slot = usize::from(short_id) % SHORT_IDS;
        if self.by_short_id[slot].is_some_and(|p| p.name == name) {
            self.by_short_id[slot] = None;
            self.peers.retain(|p| p.short_id != short_id);
            self.macs.forget_peer(short_id);
        }
    }

    /// The peers a flooded frame goes to.
    pub fn peers(&self) -> &[PeerEntry] {
        &self.peers
    }

    /// The peer with this short id, if connected.
    pub fn peer(&self, short_id: u16) -> Option<PeerEntry> {
        self.by_short_id
            .get(usize::from(short_id))
            .copied()
            .flatten()
    }

    /// The counters so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Count datagrams sent (the driver knows how many went out).
    pub fn count_sent(&mut self, n: u64) {
        self.counters.udp_tx_datagrams += n;
    }

    /// Count frames written to the TAP.
    pub fn count_delivered(&mut self, n: u64) {
        self.counters.tap_tx_frames += n;
    }

    /// Count a datagram the socket layer truncated (larger than the receive buffer).
    pub fn count_truncated(&mut self) {
        self.counters.udp_rx_datagrams += 1;
        self.counters.udp_rx_dropped_other += 1;
    }

    /// The MAC table (for status reports).
    pub fn macs(&self) -> &MacTable {
        &self.macs
    }

    /// Age out MAC entries; call every few seconds.
    pub fn expire(&mut self, now: Instant) {
        self.counters.macs_expired += self.macs.expire(now) as u64;
    }

    /// Decide what to do with a frame captured from the local bridge.
    pub fn on_tap_frame(&mut self, frame: &[u8], now: Instant) -> TapDecision {
        self.counters.tap_rx_frames += 1;
        let Some((dst, src)) = macs_of(frame) else {
            self.counters.tap_rx_dropped += 1;
            return TapDecision::Drop;
        };
        if dst == STP_DST {
            self.counters.tap_rx_dropped += 1;
            return TapDecision::Drop;
        }
        // A source we know behind a peer is our own injected frame coming back: drop it
        // rather than learn a wrong owner (Weave does the same).
        if let Some(Owner::Peer(_)) = self.macs.lookup(&src, now) {
            self.counters.tap_rx_dropped += 1;
            return TapDecision::Drop;
        }
        if src[0] & 1 == 0 {
            self.macs.learn(src, Owner::Local, now);
        }
        if dst[0] & 1 == 1 {
            self.counters.flooded_frames += 1;
            return TapDecision::Flood;
        }
        match self.macs.lookup(&dst, now) {
            Some(Owner::Local) => {
                self.counters.tap_rx_local += 1;
                TapDecision::Local
            }
            Some(Owner::Peer(id)) => match self.peer(id) {
                Some(peer) => TapDecision::Unicast(peer),
                None => {
                    self.counters.flooded_frames += 1;
                    TapDecision::Flood
                }
            },
            None => {
                self.counters.flooded_frames += 1;
                TapDecision::Flood
            }
        }
    }

    /// Decide what to do with a datagram received on the data port from `from`.
    ///
    /// A datagram is accepted only from the address of the peer its VNI names as the source:
    /// anyone on the underlay can forge a VNI, not (as easily) the address of a connected peer.
    pub fn on_datagram(
        &mut self,
        datagram: &[u8],
        from: SocketAddr,
        now: Instant,
    ) -> DatagramDecision {
        self.counters.udp_rx_datagrams += 1;
        let Ok(packet) = vxlan::Packet::new_checked(datagram) else {
            self.counters.udp_rx_dropped_malformed += 1;
            return DatagramDecision::Drop;
        };
        let (src, dst) = vxlan::split_vni(packet.vni());
        let inner = vxlan::HEADER_LEN..datagram.len();
        let frame = &datagram[inner.clone()];
        let Some((_, frame_src)) = macs_of(frame) else {
            self.counters.udp_rx_dropped_malformed += 1;
            return DatagramDecision::Drop;
        };
        let Some(peer) = self.peer(src).filter(|p| p.addr.ip() == from.ip()) else {
            self.counters.udp_rx_dropped_unknown_peer += 1;
            return DatagramDecision::Drop;
        };
        if dst != self.config.local_short_id {
            // Relaying toward another peer comes with the mesh; until then it is not ours.
            self.counters.udp_rx_dropped_other += 1;
            return DatagramDecision::Drop;
        }
        if heartbeat::is_heartbeat(frame) {
            return match Heartbeat::parse(frame) {
                Some(hb) if hb.sender == peer.name => {
                    self.counters.heartbeats_rx += 1;
                    DatagramDecision::Heartbeat { src, heartbeat: hb }
                }
                _ => {
                    self.counters.udp_rx_dropped_other += 1;
                    DatagramDecision::Drop
                }
            };
        }
        if frame_src[0] & 1 == 1 {
            // A multicast source address is never valid.
            self.counters.udp_rx_dropped_malformed += 1;
            return DatagramDecision::Drop;
        }
        self.macs.learn(frame_src, Owner::Peer(src), now);
        DatagramDecision::Deliver(inner)
    }

    /// Write the VXLAN header for a datagram from us to `dst_short_id` into `out[..8]`;
    /// the frame follows it at `out[8..]`. Returns the header length.
    ///
    /// # Panics
    /// If `out` is shorter than [`vxlan::HEADER_LEN`].
    pub fn emit_header(&self, dst_short_id: u16, out: &mut [u8]) -> usize {
        emit_vxlan_header(self.config.local_short_id, dst_short_id, out)
    }

    /// Build a whole heartbeat datagram for `dst_short_id` into `out`; returns its length.
    ///
    /// # Panics
    /// If `out` is shorter than `8 + heartbeat::FRAME_LEN`.
    pub fn emit_heartbeat(&self, dst_short_id: u16, hb: Heartbeat, out: &mut [u8]) -> usize {
        emit_heartbeat_datagram(self.config.local_short_id, dst_short_id, hb, out)
    }
}

/// Write the VXLAN header of a datagram from `src_short_id` to `dst_short_id` into `out[..8]`.
///
/// # Panics
/// If `out` is shorter than [`vxlan::HEADER_LEN`].
pub fn emit_vxlan_header(src_short_id: u16, dst_short_id: u16, out: &mut [u8]) -> usize {
    let vni = vxlan::vni_for(src_short_id, dst_short_id);
    let mut packet = vxlan::Packet::new_unchecked(&mut out[..vxlan::HEADER_LEN]);
    vxlan::Repr { vni }.emit(&mut packet);
    vxlan::HEADER_LEN
}

/// Build a whole heartbeat datagram (VXLAN header and heartbeat frame) into `out`.
///
/// # Panics
/// If `out` is shorter than `8 + heartbeat::FRAME_LEN`.
pub fn emit_heartbeat_datagram(
    src_short_id: u16,
    dst_short_id: u16,
    hb: Heartbeat,
    out: &mut [u8],
) -> usize {
    let n = emit_vxlan_header(src_short_id, dst_short_id, out);
    n + hb.emit(&mut out[n..])
}

/// Destination and source MAC of an Ethernet frame, if it has a whole header.
fn macs_of(frame: &[u8]) -> Option<([u8; 6], [u8; 6])> {
    if frame.len() < ETH_HEADER {
        return None;
    }
    let dst = frame[0..6].try_into().ok()?;
    let src = frame[6..12].try_into().ok()?;
    Some((dst, src))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa1];
    const CB: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb1];
    const NAME_A: u64 = 0x0200_0000_000a;
    const NAME_B: u64 = 0x0200_0000_000b;

    fn from_a() -> SocketAddr {
        "192.0.2.1:6784".parse().unwrap()
    }

    fn from_b() -> SocketAddr {
        "192.0.2.2:6784".parse().unwrap()
    }

    fn engine(short: u16) -> Engine {
        Engine::new(EngineConfig {
            local_short_id: short,
            mac_max_age: MacTable::DEFAULT_MAX_AGE,
        })
    }

    fn pair() -> (Engine, Engine) {
        let mut a = engine(1);
        let mut b = engine(2);
        a.add_peer(PeerEntry {
            short_id: 2,
            name: NAME_B,
            addr: "192.0.2.2:6784".parse().unwrap(),
        });
        b.add_peer(PeerEntry {
            short_id: 1,
            name: NAME_A,
            addr: "192.0.2.1:6784".parse().unwrap(),
        });
        (a, b)
    }

    fn frame(dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x08, 0x06]);
        f.extend_from_slice(&[0u8; 28]);
        f
    }

    fn encap(e: &Engine, dst: u16, frame: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; 8 + frame.len()];
        let n = e.emit_header(dst, &mut out);
        out[n..].copy_from_slice(frame);
        out
    }

    #[test]
    fn broadcast_floods_then_reply_is_unicast() {
        let (mut a, mut b) = pair();
        let now = Instant::ZERO;
        let arp = frame([0xff; 6], CA);
        assert_eq!(a.on_tap_frame(&arp, now), TapDecision::Flood);
        let dgram = encap(&a, 2, &arp);
        let DatagramDecision::Deliver(range) = b.on_datagram(&dgram, from_a(), now) else {
            panic!("not delivered")
        };
        assert_eq!(&dgram[range], &arp[..]);
        // B learned CA behind A, so the reply goes to A alone.
        let reply = frame(CA, CB);
        match b.on_tap_frame(&reply, now) {
            TapDecision::Unicast(p) => assert_eq!(p.short_id, 1),
            other => panic!("expected unicast, got {other:?}"),
        }
        let dgram = encap(&b, 1, &reply);
        assert!(matches!(
            a.on_datagram(&dgram, from_b(), now),
            DatagramDecision::Deliver(_)
        ));
        // And now A knows CB too.
        assert!(
            matches!(a.on_tap_frame(&frame(CB, CA), now), TapDecision::Unicast(p) if p.short_id == 2)
        );
        assert_eq!(a.counters().flooded_frames, 1);
    }

    #[test]
    fn local_destination_and_echo_are_not_sent() {
        let (mut a, _) = pair();
        let now = Instant::ZERO;
        a.on_tap_frame(&frame([0xff; 6], CA), now);
        assert_eq!(
            a.on_tap_frame(&frame(CA, [0x02, 0, 0, 0, 0, 0xa2]), now),
            TapDecision::Local
        );
        // A frame whose source is known behind a peer is our own injected frame: dropped.
        let mut b_side = engine(2);
        b_side.add_peer(PeerEntry {
            short_id: 1,
            name: NAME_A,
            addr: "192.0.2.1:6784".parse().unwrap(),
        });
        let dgram = encap(&a, 2, &frame([0xff; 6], CA));
        assert!(matches!(
            b_side.on_datagram(&dgram, from_a(), now),
            DatagramDecision::Deliver(_)
        ));
        assert_eq!(
            b_side.on_tap_frame(&frame([0xff; 6], CA), now),
            TapDecision::Drop
        );
        assert_eq!(b_side.on_tap_frame(&[0u8; 10], now), TapDecision::Drop);
        let stp = frame(STP_DST, CB);
        assert_eq!(b_side.on_tap_frame(&stp, now), TapDecision::Drop);
        assert_eq!(b_side.counters().tap_rx_dropped, 3);
    }

    #[test]
    fn bad_datagrams_are_counted_not_delivered() {
        let (a, mut b) = pair();
        let now = Instant::ZERO;
        let good = encap(&a, 2, &frame(CB, CA));
        for len in 0..good.len().min(8 + 14) {
            assert_eq!(
                b.on_datagram(&good[..len], from_a(), now),
                DatagramDecision::Drop
            );
        }
        let mut no_i_flag = good.clone();
        no_i_flag[0] = 0;
        assert_eq!(
            b.on_datagram(&no_i_flag, from_a(), now),
            DatagramDecision::Drop
        );
        let c = engine(9);
        assert_eq!(
            b.on_datagram(&encap(&c, 2, &frame(CB, CA)), from_a(), now),
            DatagramDecision::Drop
        );
        assert_eq!(
            b.on_datagram(&encap(&a, 3, &frame(CB, CA)), from_a(), now),
            DatagramDecision::Drop
        );
        let k = b.counters();
        assert_eq!(k.udp_rx_dropped_unknown_peer, 1);
        assert_eq!(k.udp_rx_dropped_other, 1);
        assert_eq!(k.udp_rx_dropped_malformed, 8 + 14 + 1);
        assert!(b.macs().is_empty(), "nothing learned from bad input");
    }

    #[test]
    fn datagrams_from_another_address_are_refused() {
        let (a, mut b) = pair();
        let now = Instant::ZERO;
        let dgram = encap(&a, 2, &frame([0xff; 6], CA));
        let spoofer: SocketAddr = "192.0.2.66:6784".parse().unwrap();
        assert_eq!(b.on_datagram(&dgram, spoofer, now), DatagramDecision::Drop);
        assert_eq!(b.counters().udp_rx_dropped_unknown_peer, 1);
        assert!(b.macs().is_empty());
        // The port may differ (NAT); the address may not.
        let other_port: SocketAddr = "192.0.2.1:40000".parse().unwrap();
        assert!(matches!(
            b.on_datagram(&dgram, other_port, now),
            DatagramDecision::Deliver(_)
        ));
    }

    #[test]
    fn heartbeats_are_recognised_and_checked() {
        let (a, mut b) = pair();
        let now = Instant::ZERO;
        let mut buf = [0u8; 64];
        let hb = Heartbeat {
            conn_uid: 42,
            sender: NAME_A,
        };
        let n = a.emit_heartbeat(2, hb, &mut buf);
        assert_eq!(
            b.on_datagram(&buf[..n], from_a(), now),
            DatagramDecision::Heartbeat {
                src: 1,
                heartbeat: hb
            }
        );
        let forged = Heartbeat {
            conn_uid: 42,
            sender: NAME_B,
        };
        let n = a.emit_heartbeat(2, forged, &mut buf);
        assert_eq!(
            b.on_datagram(&buf[..n], from_a(), now),
            DatagramDecision::Drop
        );
        assert_eq!(b.counters().heartbeats_rx, 1);
    }

    #[test]
    fn removing_a_peer_forgets_its_macs() {
        let (a, mut b) = pair();
        let now = Instant::ZERO;
        b.on_datagram(&encap(&a, 2, &frame([0xff; 6], CA)), from_a(), now);
        assert_eq!(b.macs().len(), 1);
        b.remove_peer(1, 0xdead);
        assert_eq!(b.macs().len(), 1, "a name mismatch removes nothing");
        b.remove_peer(1, NAME_A);
        assert!(b.macs().is_empty());
        assert_eq!(b.on_tap_frame(&frame(CA, CB), now), TapDecision::Flood);
        assert!(b.peers().is_empty());
    }
}
