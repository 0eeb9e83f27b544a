//! Fuzz the forwarding engine's two entry points: datagrams from the underlay and frames from
//! the local bridge. Whatever the bytes, the engine must not panic, must deliver only a range
//! inside the datagram, and must count every datagram it drops.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::net::SocketAddr;
use weft_overlay::{DatagramDecision, Engine, EngineConfig, ForwardingTable, Instant, MacTable, PeerEntry};

fuzz_target!(|data: &[u8]| {
    let mut engine = Engine::new(EngineConfig { local_short_id: 2, mac_max_age: MacTable::DEFAULT_MAX_AGE });
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
    // The first byte picks the sender address and the split between the two inputs.
    let Some((&sel, rest)) = data.split_first() else { return };
    let from = if sel & 1 == 0 { peer } else { "192.0.2.9:6784".parse().unwrap() };
    let split = usize::from(sel >> 1).min(rest.len());
    let (frame, datagram) = rest.split_at(split);
    let now = Instant::from_millis(u64::from(sel) * 1000);
    let before = *engine.counters();
    match engine.on_datagram(datagram, from, now) {
        DatagramDecision::Forward { deliver, .. } => {
            if let Some(range) = deliver {
                assert!(range.start <= range.end && range.end <= datagram.len());
                assert!(range.len() >= 14);
            }
        }
        DatagramDecision::Heartbeat { src, .. } => assert_eq!(src, 1),
        DatagramDecision::Drop => {
            let after = engine.counters();
            let dropped = |c: &weft_overlay::Counters| {
                c.udp_rx_dropped_malformed + c.udp_rx_dropped_unknown_peer + c.udp_rx_dropped_other
            };
            assert_eq!(dropped(after), dropped(&before) + 1, "a dropped datagram is counted");
        }
    }
    let _ = engine.on_tap_frame(frame, now);
    engine.expire(now);
});
