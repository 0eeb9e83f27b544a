//! Fuzz an encrypted control connection's handshake: a `Connection` with a password gets a
//! valid hello, then arbitrary bytes where the peer's key hello, key confirmation and sealed
//! frames belong (byte 0 bit 0: outbound; bit 1: put a well-formed encrypted key hello first, so
//! the bytes land on the confirmation and sealed-frame stages). Also parses the bytes as a
//! `KeyHello`. Checks: no panic, never `Ready` (the fuzzer cannot know the keys), `Closed` at
//! most once and last.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_crypto::Psk;
use weft_crypto::handshake::{Ephemeral, KeyHello};
use weft_mesh::{
    ConnConfig, ConnState, Connection, Encryption, Event, Instant, LocalPeer, PeerName, PeerUid,
    Security, ShortId,
};
use weft_wire::control::Hello;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    if let Ok(kh) = KeyHello::parse(rest) {
        assert_eq!(KeyHello::parse(&kh.emit()), Ok(kh));
    }
    let local = LocalPeer {
        name: PeerName::from_mac([0x02, 0, 0, 0, 0, 1]),
        nickname: "fuzz".into(),
        short_id: ShortId::from_masked(1),
        uid: PeerUid(7),
        data_port: 6783,
        fastdp_port: 6784,
    };
    let config = ConnConfig {
        security: Security {
            encryption: Some(Encryption {
                psk: Psk::from_bytes([5; 32]),
                ephemeral_random: [3; 32],
            }),
            trusts_peer: false,
            aes: true,
        },
        ..ConnConfig::default()
    };
    let now = Instant::ZERO;
    let mut conn = Connection::new(local, flags & 1 == 1, 0x5eed, now, config);
    conn.handle_bytes(now, &Hello::CURRENT.emit());
    if flags & 2 == 2 {
        let peer = KeyHello {
            encrypted: true,
            trusts_peer: false,
            aes: true,
            public: Ephemeral::from_random([4; 32]).public(),
        };
        conn.handle_bytes(now, &peer.emit());
    }
    let mut out = Vec::new();
    let mut events = Vec::new();
    for chunk in rest.chunks(usize::from(flags >> 2).max(1)) {
        conn.handle_bytes(now, chunk);
        out.clear();
        let _ = conn.poll_transmit(&mut out);
        events.extend(std::iter::from_fn(|| conn.poll_event()));
    }
    assert!(!events.iter().any(|e| matches!(e, Event::Ready { .. })));
    let closed = events
        .iter()
        .filter(|e| matches!(e, Event::Closed(_)))
        .count();
    assert!(closed <= 1);
    if closed == 1 {
        assert!(matches!(events.last(), Some(Event::Closed(_))));
        assert_eq!(conn.state(), ConnState::Closed);
    }
});
