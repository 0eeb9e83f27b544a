//! Fuzz `weft_mesh::Connection`: feed arbitrary bytes to one end of a control connection.
//!
//! Input layout: byte 0 picks inbound/outbound (bit 0), whether to prepend a valid hello
//! (bit 1) and the chunking seed (upper bits); byte 1 picks how many milliseconds pass between
//! chunks. Checks: no panic, `Ready` at most once and before anything else, `Closed` at most
//! once and last, and the state agrees with the events.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use weft_mesh::{
    ConnConfig, ConnState, Connection, Event, Instant, LocalPeer, PeerName, PeerUid, ShortId,
};
use weft_wire::control::Hello;

fuzz_target!(|data: &[u8]| {
    let [flags, step, rest @ ..] = data else {
        return;
    };
    let local = LocalPeer {
        name: PeerName::from_mac([0x02, 0, 0, 0, 0, 1]),
        nickname: "fuzz".into(),
        short_id: ShortId::from_masked(1),
        uid: PeerUid(7),
        data_port: 6783,
        fastdp_port: 6784,
    };
    let mut now = Instant::ZERO;
    let mut conn = Connection::new(local, flags & 1 == 1, 0x5eed, now, ConnConfig::default());
    if flags & 2 == 2 {
        conn.handle_bytes(now, &Hello::CURRENT.emit());
    }
    let mut out = Vec::new();
    let mut events = Vec::new();
    let mut state = u32::from(*flags) | 1;
    let mut input = rest;
    while !input.is_empty() {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let size = ((state >> 16) as usize % 32 + 1).min(input.len());
        let (chunk, tail) = input.split_at(size);
        input = tail;
        conn.handle_bytes(now, chunk);
        now += Duration::from_millis(u64::from(*step) * 100);
        if conn.poll_timeout().is_some_and(|t| t <= now) {
            conn.handle_timeout(now);
        }
        out.clear();
        let _ = conn.poll_transmit(&mut out);
        events.extend(std::iter::from_fn(|| conn.poll_event()));
    }
    let closed = events
        .iter()
        .filter(|e| matches!(e, Event::Closed(_)))
        .count();
    let ready = events
        .iter()
        .filter(|e| matches!(e, Event::Ready { .. }))
        .count();
    assert!(closed <= 1 && ready <= 1);
    if closed == 1 {
        assert!(matches!(events.last(), Some(Event::Closed(_))));
        assert_eq!(conn.state(), ConnState::Closed);
        assert_eq!(conn.poll_timeout(), None);
    } else {
        assert_ne!(conn.state(), ConnState::Closed);
    }
    if ready == 1 {
        assert!(matches!(events[0], Event::Ready { .. }));
        assert!(conn.conn_uid().is_some());
    }
});
