//! Fuzz the forwarding engine's entry points: datagrams from the underlay (in the clear, and
//! through a neighbour's record with a password: opened in place) and frames from the local
//! bridge. Whatever the bytes, the engine must not panic, must deliver only a range inside the
//! datagram, and must count every datagram it drops.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::net::SocketAddr;
use std::ops::Range;
use weft_crypto::Cipher;
use weft_crypto::handshake::DataKeys;
use weft_overlay::{Counters, DatagramDecision, Engine, EngineConfig, ForwardingTable, Instant, MacTable, PeerEntry};

fuzz_target!(|data: &[u8]| {
    let config = EngineConfig {
        local_short_id: 2,
        mac_max_age: MacTable::DEFAULT_MAX_AGE,
        stream: 0,
        share_macs: false,
        express: false,
    };
    // Bit 7 of the first byte: a password is set (peer 1's link sealed, peer 3's in the clear).
    let sealed = data.first().is_some_and(|b| b & 0x80 != 0);
    let mut engine = if sealed { Engine::with_sealing(config) } else { Engine::new(config) };
    let peer: SocketAddr = "192.0.2.1:6784".parse().unwrap();
    let mut table = ForwardingTable::new(2);
    table.add_neighbour(PeerEntry { short_id: 1, name: 0x0200_0000_0001, addr: peer });
    table.add_neighbour(PeerEntry { short_id: 3, name: 0x0200_0000_0003, addr: "192.0.2.3:6784".parse().unwrap() });
    table.add_known(4, 0x0200_0000_0004);
    table.set_next_hop(1, 1);
    table.set_next_hop(3, 3);
    table.set_next_hop(4, 3);
    table.set_children(1, &[3]);
    table.set_children(2, &[1, 3]);
    engine.set_table(table);
    if sealed {
        let keys = DataKeys::from_raw(Cipher::ChaCha20Poly1305, [2; 32], [1; 32]);
        engine.set_link(peer.ip(), 7, Some(&keys), true);
        engine.set_link("192.0.2.3".parse().unwrap(), 8, None, false);
    }
    // The first byte picks the sender address and the split between the two inputs.
    let Some((&sel, rest)) = data.split_first() else { return };
    let from = match sel & 3 {
        0 => peer,
        1 => "192.0.2.3:6784".parse().unwrap(),
        _ => "192.0.2.9:6784".parse().unwrap(),
    };
    let split = usize::from((sel >> 2) & 0x1f).min(rest.len());
    let (frame, datagram) = rest.split_at(split);
    let now = Instant::from_millis(u64::from(sel) * 1000);
    let before = *engine.counters();
    let decision = engine.on_datagram(datagram, from, now);
    check(&decision, 0..datagram.len(), &before, engine.counters());
    // The data plane's path: the sender looked up once, the datagram opened in place.
    let link = engine.link_at(from.ip());
    let mut buf = datagram.to_vec();
    let before = *engine.counters();
    let received = engine.on_received(link, &mut buf, now);
    assert!(received.plain.start <= received.plain.end && received.plain.end <= buf.len());
    check(&received.decision, received.plain.clone(), &before, engine.counters());
    let _ = engine.on_tap_frame(frame, now);
    engine.expire(now);
});

/// A decision about a datagram whose plain part is `plain`: a delivered frame lies inside it,
/// a heartbeat names a neighbour, a drop is counted exactly once.
fn check(decision: &DatagramDecision, plain: Range<usize>, before: &Counters, after: &Counters) {
    match decision {
        DatagramDecision::Forward { deliver, .. } => {
            if let Some(range) = deliver {
                assert!(range.start >= plain.start && range.end <= plain.end);
                assert!(range.len() >= 14);
            }
        }
        DatagramDecision::Heartbeat { src, .. } => assert!(*src == 1 || *src == 3),
        DatagramDecision::Drop => {
            let dropped = |c: &Counters| {
                c.udp_rx_dropped_malformed
                    + c.udp_rx_dropped_unknown_peer
                    + c.udp_rx_dropped_other
                    + c.udp_rx_dropped_auth
                    + c.udp_rx_dropped_replay
            };
            assert_eq!(dropped(after), dropped(before) + 1, "a dropped datagram is counted");
        }
    }
}
