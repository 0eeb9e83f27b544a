//! Layer: pure logic. Plain counters kept by the data-plane thread; the router copies them out
//! for `/status` and `/metrics`, so the packet path needs no atomics.

/// What the forwarding engine counted. Plain `u64`s owned by one thread.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames read from the TAP (the local bridge).
    pub tap_rx_frames: u64,
    /// Frames written to the TAP (delivered from peers). Each segment of a coalesced
    /// super-frame counts as one frame.
    pub tap_tx_frames: u64,
    /// TAP frames dropped: too short, STP, or already owned by a remote peer (our own echo).
    pub tap_rx_dropped: u64,
    /// TAP frames whose destination is local (the bridge delivers them itself).
    pub tap_rx_local: u64,
    /// Datagrams received on the data port.
    pub udp_rx_datagrams: u64,
    /// Datagrams sent on the data port (each copy of a flooded frame counts).
    pub udp_tx_datagrams: u64,
    /// Received datagrams that were not valid VXLAN carrying an Ethernet frame (or flagged
    /// `CSUM_PARTIAL` with a frame that is not TCP or UDP over IPv4 or IPv6).
    pub udp_rx_dropped_malformed: u64,
    /// Received datagrams whose source short id belongs to no connected peer.
    pub udp_rx_dropped_unknown_peer: u64,
    /// Received datagrams dropped for another reason: addressed to another peer, truncated by the
    /// receive buffer, or a heartbeat that does not parse.
    pub udp_rx_dropped_other: u64,
    /// Data-path heartbeats received.
    pub heartbeats_rx: u64,
    /// Frames flooded (broadcast, multicast, unknown unicast).
    pub flooded_frames: u64,
    /// MAC entries removed by ageing.
    pub macs_expired: u64,
    /// Broadcast or multicast frames received over the userspace path from a neighbour whose
    /// own bridge already sent them through the kernel fast path: passed on along the tree,
    /// not delivered here a second time.
    pub fastdp_floods_skipped: u64,
    /// Received datagrams passed on toward other peers (relays and broadcast-tree copies).
    pub relayed_datagrams: u64,
    /// TCP super-frames (TSO) read from the TAP and cut into segments by the driver.
    pub tap_rx_superframes: u64,
    /// Segments cut from those super-frames.
    pub tap_rx_segments: u64,
    /// TAP frames dropped because their offload header could not be honoured (a GSO type weft
    /// does not segment, inconsistent checksum offsets, a segment too large for a send slot).
    pub tap_rx_offload_dropped: u64,
    /// Coalesced super-frames (two or more received segments) written to the TAP.
    pub tap_tx_superframes: u64,
    /// Received frames written to the TAP inside coalesced super-frames.
    pub tap_tx_coalesced: u64,
    /// Frames that could not be written to the TAP (all segments of a failed super-frame count).
    pub tap_tx_dropped: u64,
    /// Received frames whose TCP or UDP checksum the sending router left partial
    /// (`CSUM_PARTIAL`), written to the TAP for this host's kernel to complete (merged or not).
    pub tap_tx_csum_partial: u64,
    /// Received datagrams dropped because they failed authentication (forged, corrupted, sealed
    /// under another key) or arrived unsealed from a peer whose traffic must be encrypted.
    pub udp_rx_dropped_auth: u64,
    /// Received datagrams that authenticated but were replays (or too far behind the window).
    pub udp_rx_dropped_replay: u64,
    /// Datagrams not sent because they could not be sealed (no key for the peer yet).
    pub udp_tx_dropped_crypto: u64,
    /// Datagrams dropped because the UDP socket's send queue stayed full for a whole wait for
    /// room (the underlay does not drain it).
    pub udp_tx_dropped_queue_full: u64,
    /// Datagrams the kernel refused to send (destination unreachable, no route, ...).
    pub udp_tx_dropped_error: u64,
    /// ICMP "fragmentation needed" messages written to the TAP for IPv4 packets with DF set that
    /// do not fit the path to their neighbour (one per TAP read; the packet is dropped).
    pub pmtu_frag_needed_sent: u64,
    /// IPv4 packets without DF fragmented to fit the path to their neighbour.
    pub pmtu_frames_fragmented: u64,
    /// Fragments sent for those packets (each its own datagram).
    pub pmtu_fragments_sent: u64,
    /// Frames dropped because they do not fit the path to their neighbour and could be neither
    /// answered nor fragmented (not IPv4, a DF packet no ICMP error may answer, a path too small).
    pub pmtu_dropped: u64,
    /// Frames of sparse flows read from the TAP's express queue by the express lane (also in
    /// `tap_rx_frames`).
    pub express_tap_rx_frames: u64,
    /// Datagrams received by the express lane, sent by a neighbour's express lane (also in
    /// `udp_rx_datagrams`).
    pub express_udp_rx_datagrams: u64,
}

impl Counters {
    /// Add `other`'s counts to these (one set of counters per data-plane thread, summed for
    /// the router's).
    pub fn add(&mut self, other: &Self) {
        let Self {
            tap_rx_frames,
            tap_tx_frames,
            tap_rx_dropped,
            tap_rx_local,
            udp_rx_datagrams,
            udp_tx_datagrams,
            udp_rx_dropped_malformed,
            udp_rx_dropped_unknown_peer,
            udp_rx_dropped_other,
            heartbeats_rx,
            flooded_frames,
            macs_expired,
            fastdp_floods_skipped,
            relayed_datagrams,
            tap_rx_superframes,
            tap_rx_segments,
            tap_rx_offload_dropped,
            tap_tx_superframes,
            tap_tx_coalesced,
            tap_tx_dropped,
            tap_tx_csum_partial,
            udp_rx_dropped_auth,
            udp_rx_dropped_replay,
            udp_tx_dropped_crypto,
            udp_tx_dropped_queue_full,
            udp_tx_dropped_error,
            pmtu_frag_needed_sent,
            pmtu_frames_fragmented,
            pmtu_fragments_sent,
            pmtu_dropped,
            express_tap_rx_frames,
            express_udp_rx_datagrams,
        } = *other;
        self.tap_rx_frames += tap_rx_frames;
        self.tap_tx_frames += tap_tx_frames;
        self.tap_rx_dropped += tap_rx_dropped;
        self.tap_rx_local += tap_rx_local;
        self.udp_rx_datagrams += udp_rx_datagrams;
        self.udp_tx_datagrams += udp_tx_datagrams;
        self.udp_rx_dropped_malformed += udp_rx_dropped_malformed;
        self.udp_rx_dropped_unknown_peer += udp_rx_dropped_unknown_peer;
        self.udp_rx_dropped_other += udp_rx_dropped_other;
        self.heartbeats_rx += heartbeats_rx;
        self.flooded_frames += flooded_frames;
        self.macs_expired += macs_expired;
        self.fastdp_floods_skipped += fastdp_floods_skipped;
        self.relayed_datagrams += relayed_datagrams;
        self.tap_rx_superframes += tap_rx_superframes;
        self.tap_rx_segments += tap_rx_segments;
        self.tap_rx_offload_dropped += tap_rx_offload_dropped;
        self.tap_tx_superframes += tap_tx_superframes;
        self.tap_tx_coalesced += tap_tx_coalesced;
        self.tap_tx_dropped += tap_tx_dropped;
        self.tap_tx_csum_partial += tap_tx_csum_partial;
        self.udp_rx_dropped_auth += udp_rx_dropped_auth;
        self.udp_rx_dropped_replay += udp_rx_dropped_replay;
        self.udp_tx_dropped_crypto += udp_tx_dropped_crypto;
        self.udp_tx_dropped_queue_full += udp_tx_dropped_queue_full;
        self.udp_tx_dropped_error += udp_tx_dropped_error;
        self.pmtu_frag_needed_sent += pmtu_frag_needed_sent;
        self.pmtu_frames_fragmented += pmtu_frames_fragmented;
        self.pmtu_fragments_sent += pmtu_fragments_sent;
        self.pmtu_dropped += pmtu_dropped;
        self.express_tap_rx_frames += express_tap_rx_frames;
        self.express_udp_rx_datagrams += express_udp_rx_datagrams;
    }

    /// Every counter with its Prometheus-style name and help text, for exporters.
    pub fn fields(&self) -> [(&'static str, &'static str, u64); 32] {
        [
            (
                "tap_rx_frames",
                "Frames read from the TAP.",
                self.tap_rx_frames,
            ),
            (
                "tap_tx_frames",
                "Frames written to the TAP.",
                self.tap_tx_frames,
            ),
            ("tap_rx_dropped", "TAP frames dropped.", self.tap_rx_dropped),
            (
                "tap_rx_local",
                "TAP frames for a local destination.",
                self.tap_rx_local,
            ),
            (
                "udp_rx_datagrams",
                "Datagrams received on the data port.",
                self.udp_rx_datagrams,
            ),
            (
                "udp_tx_datagrams",
                "Datagrams sent on the data port.",
                self.udp_tx_datagrams,
            ),
            (
                "udp_rx_dropped_malformed",
                "Received datagrams that were not VXLAN carrying an Ethernet frame.",
                self.udp_rx_dropped_malformed,
            ),
            (
                "udp_rx_dropped_unknown_peer",
                "Received datagrams from an unknown source short id.",
                self.udp_rx_dropped_unknown_peer,
            ),
            (
                "udp_rx_dropped_other",
                "Received datagrams dropped for another reason.",
                self.udp_rx_dropped_other,
            ),
            (
                "heartbeats_rx",
                "Data-path heartbeats received.",
                self.heartbeats_rx,
            ),
            (
                "flooded_frames",
                "Frames flooded to every peer.",
                self.flooded_frames,
            ),
            (
                "fastdp_floods_skipped",
                "Broadcasts from a fast-path neighbour received over sleeve too: passed on, not delivered twice.",
                self.fastdp_floods_skipped,
            ),
            (
                "macs_expired",
                "MAC entries removed by ageing.",
                self.macs_expired,
            ),
            (
                "relayed_datagrams",
                "Datagrams passed on toward other peers.",
                self.relayed_datagrams,
            ),
            (
                "tap_rx_superframes",
                "TCP super-frames read from the TAP and segmented.",
                self.tap_rx_superframes,
            ),
            (
                "tap_rx_segments",
                "Segments cut from TAP super-frames.",
                self.tap_rx_segments,
            ),
            (
                "tap_rx_offload_dropped",
                "TAP frames dropped because their offload header could not be honoured.",
                self.tap_rx_offload_dropped,
            ),
            (
                "tap_tx_superframes",
                "Coalesced super-frames (TCP or UDP) written to the TAP.",
                self.tap_tx_superframes,
            ),
            (
                "tap_tx_coalesced",
                "Received frames (TCP segments, UDP datagrams) written to the TAP inside coalesced super-frames.",
                self.tap_tx_coalesced,
            ),
            (
                "tap_tx_dropped",
                "Frames that could not be written to the TAP.",
                self.tap_tx_dropped,
            ),
            (
                "tap_tx_csum_partial",
                "Received frames whose checksum the sending router left for this host's kernel to complete.",
                self.tap_tx_csum_partial,
            ),
            (
                "udp_rx_dropped_auth",
                "Received datagrams that failed authentication or should have been sealed.",
                self.udp_rx_dropped_auth,
            ),
            (
                "udp_rx_dropped_replay",
                "Received datagrams dropped as replays.",
                self.udp_rx_dropped_replay,
            ),
            (
                "udp_tx_dropped_crypto",
                "Datagrams not sent because they could not be sealed.",
                self.udp_tx_dropped_crypto,
            ),
            (
                "udp_tx_dropped_queue_full",
                "Datagrams dropped because the UDP send queue stayed full.",
                self.udp_tx_dropped_queue_full,
            ),
            (
                "udp_tx_dropped_error",
                "Datagrams the kernel refused to send (unreachable, no route).",
                self.udp_tx_dropped_error,
            ),
            (
                "pmtu_frag_needed_sent",
                "ICMP fragmentation-needed messages sent to local containers for DF packets too big for the path.",
                self.pmtu_frag_needed_sent,
            ),
            (
                "pmtu_frames_fragmented",
                "IPv4 packets fragmented to fit the path to a neighbour.",
                self.pmtu_frames_fragmented,
            ),
            (
                "pmtu_fragments_sent",
                "IPv4 fragments sent for packets too big for the path.",
                self.pmtu_fragments_sent,
            ),
            (
                "pmtu_dropped",
                "Frames too big for the path to a neighbour that could be neither answered nor fragmented.",
                self.pmtu_dropped,
            ),
            (
                "express_tap_rx_frames",
                "Frames of sparse flows read from the TAP by the express lane.",
                self.express_tap_rx_frames,
            ),
            (
                "express_udp_rx_datagrams",
                "Datagrams received by the express lane from a neighbour's express lane.",
                self.express_udp_rx_datagrams,
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_sums_every_counter() {
        let mut ones = Counters::default();
        let n = ones.fields().len();
        let mut sum = Counters::default();
        for _ in 0..3 {
            ones = Counters {
                tap_rx_frames: 1,
                pmtu_dropped: 2,
                udp_rx_dropped_replay: 3,
                ..ones
            };
            sum.add(&ones);
        }
        let f = sum.fields();
        assert_eq!(f.len(), n);
        let get = |name| f.iter().find(|(k, _, _)| *k == name).map(|x| x.2);
        assert_eq!(get("tap_rx_frames"), Some(3));
        assert_eq!(get("pmtu_dropped"), Some(6));
        assert_eq!(get("udp_rx_dropped_replay"), Some(9));
        assert_eq!(f.iter().map(|x| x.2).sum::<u64>(), 18);
    }
}
