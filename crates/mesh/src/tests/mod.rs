//! Connection tests on an in-memory [`util::Pair`] with a virtual clock (no sockets, no root).

mod encrypted;
mod util;

use std::time::Duration;

use proptest::prelude::*;
use weft_crypto::handshake::KeyHello;
use weft_wire::control::{self, Features, Hello, Message};

use crate::{
    CloseReason, ConnConfig, ConnState, Connection, Event, Instant, PeerName, PeerUid,
    ProtocolError, SendError,
};
use util::{Pair, peer};

fn ready_pair() -> Pair {
    let mut pair = Pair::new(peer(1, 100), peer(2, 200));
    pair.drive();
    assert_eq!(pair.a.state(), ConnState::Ready);
    assert_eq!(pair.b.state(), ConnState::Ready);
    pair
}

fn versions(min_version: u8, max_version: u8) -> ConnConfig {
    ConnConfig {
        min_version,
        max_version,
        ..ConnConfig::default()
    }
}

/// What an unencrypted peer sends before its frames: hello, then a key hello without a key.
fn plain_prefix() -> Vec<u8> {
    let mut bytes = Hello::CURRENT.emit().to_vec();
    bytes.extend_from_slice(&PLAIN_KEY_HELLO.emit());
    bytes
}

const PLAIN_KEY_HELLO: KeyHello = KeyHello {
    encrypted: false,
    trusts_peer: false,
    aes: false,
    public: [0; 32],
};

/// The bytes a well-behaved peer `peer(last, uid)` sends: hello, key hello, then features.
fn peer_stream(last: u8, uid: u64, conn_id: u64) -> Vec<u8> {
    let p = peer(last, uid);
    let mut bytes = plain_prefix();
    let features = Features {
        name: p.name.get(),
        nickname: p.nickname,
        short_id: p.short_id.get(),
        uid,
        conn_id,
        data_port: p.data_port,
        fastdp_port: p.fastdp_port,
    };
    control::encode_frame(&Message::Features(features), &mut bytes);
    bytes
}

fn lone(outbound: bool) -> Connection {
    Connection::new(
        peer(1, 100),
        outbound,
        42,
        Instant::ZERO,
        ConnConfig::default(),
    )
}

fn drain_events(conn: &mut Connection) -> Vec<Event> {
    std::iter::from_fn(|| conn.poll_event()).collect()
}

#[test]
fn pair_reaches_ready() {
    let pair = ready_pair();
    let a_uid = pair.a.conn.conn_uid().unwrap();
    assert_eq!(Some(a_uid), pair.b.conn.conn_uid());
    assert_eq!(a_uid, 0x1111_2222_3333_4444 ^ 0x0f0f_0f0f_5555_6666);
    let Event::Ready {
        remote,
        conn_uid,
        version,
    } = &pair.a.events()[0]
    else {
        panic!("expected Ready, got {:?}", pair.a.events());
    };
    assert_eq!(*conn_uid, a_uid);
    assert_eq!(*version, control::PROTOCOL_MAX);
    let b = peer(2, 200);
    assert_eq!(remote.name, b.name);
    assert_eq!(remote.nickname, "host-2");
    assert_eq!(remote.short_id, b.short_id);
    assert_eq!(remote.uid, PeerUid(200));
    assert_eq!(remote.data_port, 6784);
    assert_eq!(pair.b.conn.remote().unwrap().name, peer(1, 100).name);
    assert_eq!(pair.a.conn.version(), Some(control::PROTOCOL_MAX));
    assert!(pair.a.conn.is_outbound());
    assert!(!pair.b.conn.is_outbound());
    assert_eq!(pair.a.events().len(), 1);
    assert_eq!(pair.b.events().len(), 1);
}

#[test]
fn bytes_one_at_a_time() {
    let mut pair = Pair::new(peer(1, 100), peer(2, 200));
    pair.chunk = 1;
    pair.drive();
    assert_eq!(pair.a.state(), ConnState::Ready);
    assert_eq!(pair.b.state(), ConnState::Ready);
    assert_eq!(pair.a.conn.conn_uid(), pair.b.conn.conn_uid());
    // Messages after the handshake survive byte-wise delivery too.
    let now = pair.now;
    let msg = Message::Gossip {
        channel: 1,
        payload: b"topology".to_vec(),
    };
    pair.a.conn.send(now, &msg).unwrap();
    pair.drive();
    assert_eq!(pair.b.events().last(), Some(&Event::Message(msg)));
}

#[test]
fn highest_common_version_is_chosen() {
    let mut pair = Pair::with_config(peer(1, 100), versions(1, 3), peer(2, 200), versions(2, 5));
    pair.drive();
    assert_eq!(pair.a.conn.version(), Some(3));
    assert_eq!(pair.b.conn.version(), Some(3));
    assert!(matches!(
        pair.b.events()[0],
        Event::Ready { version: 3, .. }
    ));
}

#[test]
fn version_mismatch_on_both_sides() {
    let mut pair = Pair::with_config(peer(1, 100), versions(1, 1), peer(2, 200), versions(2, 3));
    pair.drive();
    let (_, a) = pair.a.closed().unwrap();
    let (_, b) = pair.b.closed().unwrap();
    assert_eq!(
        a,
        CloseReason::VersionMismatch {
            ours: (1, 1),
            theirs: (2, 3)
        }
    );
    assert_eq!(
        a.to_string(),
        "protocol version mismatch: we speak 1..1, peer speaks 2..3"
    );
    assert_eq!(
        b.to_string(),
        "protocol version mismatch: we speak 2..3, peer speaks 1..1"
    );
    assert_eq!(pair.a.conn.version(), None);
    assert_eq!(pair.a.events().len(), 1);
}

#[test]
fn connect_to_self() {
    let me = peer(1, 100);
    let mut pair = Pair::new(me.clone(), me);
    pair.drive();
    for side in [&pair.a, &pair.b] {
        let (_, reason) = side.closed().unwrap();
        assert_eq!(reason, CloseReason::ConnectToSelf);
        assert_eq!(reason.to_string(), "cannot connect to ourself");
        assert_eq!(side.conn.remote(), None);
    }
}

#[test]
fn name_collision() {
    let mut pair = Pair::new(peer(1, 100), peer(1, 101));
    pair.drive();
    let name = peer(1, 0).name;
    for side in [&pair.a, &pair.b] {
        let (_, reason) = side.closed().unwrap();
        assert_eq!(reason, CloseReason::NameCollision { name });
        assert_eq!(
            reason.to_string(),
            "peer name collision: another peer is also called 02:00:00:00:00:01"
        );
    }
}

#[test]
fn hello_timeout_when_peer_is_silent() {
    let mut conn = lone(true);
    assert_eq!(conn.poll_timeout(), Some(Instant::from_millis(10_000)));
    conn.handle_timeout(Instant::from_millis(9_999));
    assert_eq!(conn.state(), ConnState::AwaitingHello);
    assert!(drain_events(&mut conn).is_empty());
    conn.handle_timeout(Instant::from_millis(10_000));
    assert_eq!(
        drain_events(&mut conn),
        vec![Event::Closed(CloseReason::HelloTimeout)]
    );
    assert_eq!(conn.poll_timeout(), None);
}

#[test]
fn hello_timeout_covers_features() {
    // The peer sends its hello but never its features.
    let mut pair = Pair::new(peer(1, 100), peer(2, 200));
    pair.b.mute = true;
    pair.drive();
    pair.a.conn.handle_bytes(pair.now, &Hello::CURRENT.emit());
    assert_eq!(pair.a.state(), ConnState::AwaitingKey);
    pair.a.conn.handle_bytes(pair.now, &PLAIN_KEY_HELLO.emit());
    assert_eq!(pair.a.state(), ConnState::AwaitingFeatures);
    pair.advance(Duration::from_secs(60));
    let (at, reason) = pair.a.closed().unwrap();
    assert_eq!(reason, CloseReason::HelloTimeout);
    assert_eq!(at, Instant::from_millis(10_000));
    // B got everything from A and went Ready; A never heartbeats before Ready, so B eventually
    // idles out (in real life it sees A's socket close at 10 s first).
    assert_eq!(pair.b.state(), ConnState::Closed);
    assert_eq!(
        pair.b.closed(),
        Some((Instant::from_millis(30_000), CloseReason::IdleTimeout))
    );
}

#[test]
fn idle_timeout_after_peer_stops_talking() {
    let mut pair = ready_pair();
    // Ready at 0 s; both sides heartbeat at 10 s and 20 s. B goes silent at 25 s.
    pair.advance(Duration::from_secs(25));
    pair.b.mute = true;
    pair.advance(Duration::from_secs(120));
    let (at, reason) = pair.a.closed().unwrap();
    assert_eq!(reason, CloseReason::IdleTimeout);
    // A last heard from B at 20 s, so it gives up 30 s later.
    assert_eq!(at, Instant::from_millis(50_000));
    assert_eq!(pair.a.state(), ConnState::Closed);
    assert_eq!(
        reason.to_string(),
        "peer went silent: nothing received within the idle timeout"
    );
    // B kept hearing A's heartbeats (30 s, 40 s) until A closed at 50 s, then timed out too.
    assert_eq!(
        pair.b.closed(),
        Some((Instant::from_millis(70_000), CloseReason::IdleTimeout))
    );
}

#[test]
fn heartbeats_keep_idle_pair_alive() {
    let mut pair = ready_pair();
    let before = (pair.a.sent, pair.b.sent);
    pair.advance(Duration::from_secs(600));
    assert_eq!(pair.a.state(), ConnState::Ready);
    assert_eq!(pair.b.state(), ConnState::Ready);
    assert_eq!(
        pair.a.events().len(),
        1,
        "only Ready: {:?}",
        pair.a.events()
    );
    assert_eq!(pair.b.events().len(), 1);
    // About one 5-byte heartbeat frame per 10 s from each side.
    let hb = 5;
    let a_beats = (pair.a.sent - before.0) / hb;
    let b_beats = (pair.b.sent - before.1) / hb;
    assert!((55..=61).contains(&a_beats), "{a_beats}");
    assert!((55..=61).contains(&b_beats), "{b_beats}");
    assert!(pair.a.conn.poll_timeout().unwrap() <= pair.now + Duration::from_secs(10));
}

#[test]
fn traffic_postpones_heartbeats() {
    let mut pair = ready_pair();
    let start = pair.now;
    // A sends gossip every 5 s, so it never owes a heartbeat.
    for i in 1..=10u64 {
        pair.advance_to(start + Duration::from_secs(5 * i));
        let sent = pair.a.sent;
        let msg = Message::Gossip {
            channel: 0,
            payload: vec![1],
        };
        pair.a.conn.send(pair.now, &msg).unwrap();
        pair.drive();
        assert_eq!(pair.a.sent - sent, 8, "only the gossip frame");
    }
    let gossip = pair
        .b
        .events()
        .iter()
        .filter(|e| matches!(e, Event::Message(_)))
        .count();
    assert_eq!(gossip, 10);
}

#[test]
fn data_path_ack_and_gossip_events() {
    let mut pair = ready_pair();
    let uid = pair.a.conn.conn_uid().unwrap();
    let now = pair.now;
    pair.b
        .conn
        .send(now, &Message::DataPathAck { conn_uid: uid })
        .unwrap();
    pair.b.conn.send(now, &Message::Heartbeat).unwrap();
    let gossip = Message::Gossip {
        channel: 7,
        payload: vec![0; 1000],
    };
    pair.b.conn.send(now, &gossip).unwrap();
    pair.drive();
    assert_eq!(
        pair.a.events()[1..],
        [Event::DataPathAck { conn_uid: uid }, Event::Message(gossip)]
    );
}

#[test]
fn send_rules() {
    let mut conn = lone(true);
    assert_eq!(
        conn.send(Instant::ZERO, &Message::Heartbeat),
        Err(SendError::NotReady)
    );
    let mut pair = ready_pair();
    let now = pair.now;
    let f = Features {
        name: 1,
        nickname: String::new(),
        short_id: 0,
        uid: 0,
        conn_id: 0,
        data_port: 0,
        fastdp_port: 0,
    };
    assert_eq!(
        pair.a.conn.send(now, &Message::Features(f)),
        Err(SendError::Reserved)
    );
    let huge = Message::Gossip {
        channel: 0,
        payload: vec![0; control::MAX_FRAME],
    };
    assert!(matches!(
        pair.a.conn.send(now, &huge),
        Err(SendError::TooLarge(_))
    ));
    pair.a.conn.close(CloseReason::Local);
    assert_eq!(
        pair.a.conn.send(now, &Message::Heartbeat),
        Err(SendError::NotReady)
    );
}

#[test]
fn local_close() {
    let mut pair = ready_pair();
    pair.a.conn.close(CloseReason::Local);
    pair.a.conn.close(CloseReason::IdleTimeout);
    pair.drive();
    assert_eq!(pair.a.closed().unwrap().1, CloseReason::Local);
    assert_eq!(pair.a.events().len(), 2, "Ready then exactly one Closed");
    assert_eq!(pair.a.conn.poll_timeout(), None);
    // Remote still considers itself ready; the driver closing TCP is what tells it.
    assert_eq!(pair.b.state(), ConnState::Ready);
}

#[test]
fn garbage_closes_with_bad_magic_at_first_wrong_byte() {
    let mut conn = lone(false);
    conn.handle_bytes(Instant::ZERO, b"w");
    assert_eq!(conn.state(), ConnState::AwaitingHello);
    conn.handle_bytes(Instant::ZERO, b"eave\x01\x02");
    assert_eq!(
        drain_events(&mut conn),
        vec![Event::Closed(CloseReason::BadMagic)]
    );
    // Bytes after the close are ignored, and nothing more is emitted.
    conn.handle_bytes(Instant::ZERO, &peer_stream(2, 200, 1));
    conn.handle_timeout(Instant::from_millis(1_000_000));
    assert!(drain_events(&mut conn).is_empty());
    assert_eq!(conn.state(), ConnState::Closed);

    let mut conn = lone(false);
    conn.handle_bytes(Instant::ZERO, b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(
        drain_events(&mut conn),
        vec![Event::Closed(CloseReason::BadMagic)]
    );
}

#[test]
fn invalid_hello_range_is_a_protocol_error() {
    let mut conn = lone(false);
    conn.handle_bytes(Instant::ZERO, b"weft\x05\x02");
    let err = ProtocolError::InvalidVersionRange { min: 5, max: 2 };
    assert_eq!(
        drain_events(&mut conn),
        vec![Event::Closed(CloseReason::ProtocolError(err))]
    );
}

#[test]
fn garbage_frames_close_with_malformed_or_too_large() {
    let mut conn = lone(true);
    let mut bytes = plain_prefix();
    bytes.extend_from_slice(&[0, 0, 0, 2, 0xff, 0xff]);
    conn.handle_bytes(Instant::ZERO, &bytes);
    assert_eq!(
        drain_events(&mut conn),
        vec![Event::Closed(CloseReason::Malformed)]
    );

    let mut conn = lone(true);
    let mut bytes = peer_stream(2, 200, 9);
    bytes.extend_from_slice(&0x7fff_ffffu32.to_be_bytes());
    conn.handle_bytes(Instant::ZERO, &bytes);
    let events = drain_events(&mut conn);
    assert!(matches!(events[0], Event::Ready { .. }));
    assert_eq!(events[1], Event::Closed(CloseReason::TooLarge));
    assert_eq!(
        CloseReason::TooLarge.to_string(),
        "peer sent a control frame larger than 1048576 bytes"
    );
}

#[test]
fn first_message_must_be_features() {
    let mut conn = lone(true);
    let mut bytes = plain_prefix();
    control::encode_frame(&Message::Heartbeat, &mut bytes);
    conn.handle_bytes(Instant::ZERO, &bytes);
    assert_eq!(
        drain_events(&mut conn),
        vec![Event::Closed(CloseReason::ProtocolError(
            ProtocolError::ExpectedFeatures
        ))]
    );
}

#[test]
fn features_twice_is_a_protocol_error() {
    let mut conn = lone(true);
    let mut bytes = peer_stream(2, 200, 9);
    let again = bytes[plain_prefix().len()..].to_vec();
    bytes.extend_from_slice(&again);
    conn.handle_bytes(Instant::ZERO, &bytes);
    let events = drain_events(&mut conn);
    assert_eq!(
        events[1],
        Event::Closed(CloseReason::ProtocolError(ProtocolError::DuplicateFeatures))
    );
}

#[test]
fn hello_is_queued_immediately_and_features_after_peer_hello() {
    let mut conn = lone(true);
    let mut out = Vec::new();
    assert!(conn.poll_transmit(&mut out));
    assert_eq!(out, b"weft\x04\x05");
    assert!(!conn.poll_transmit(&mut out));
    // The key hello follows the peer's hello, the features follow the peer's key hello.
    conn.handle_bytes(Instant::ZERO, &Hello::CURRENT.emit());
    assert!(conn.poll_transmit(&mut out));
    assert_eq!(out.len(), 6 + 34);
    assert_eq!(KeyHello::parse(&out[6..]), Ok(PLAIN_KEY_HELLO));
    conn.handle_bytes(Instant::ZERO, &PLAIN_KEY_HELLO.emit());
    assert!(conn.poll_transmit(&mut out));
    let mut dec = control::FrameDecoder::new();
    dec.push(&out[40..]);
    let Ok(Some(Message::Features(f))) = dec.next() else {
        panic!("expected features");
    };
    assert_eq!(f.name, peer(1, 0).name.get());
    assert_eq!(f.conn_id, 42);
    assert_eq!(f.uid, 100);
}

#[test]
fn remote_name_wider_than_48_bits_is_rejected() {
    let mut conn = lone(true);
    let mut bytes = plain_prefix();
    let f = Features {
        name: u64::MAX,
        nickname: "x".into(),
        short_id: 1,
        uid: 1,
        conn_id: 1,
        data_port: 1,
        fastdp_port: 0,
    };
    control::encode_frame(&Message::Features(f), &mut bytes);
    conn.handle_bytes(Instant::ZERO, &bytes);
    assert_eq!(
        drain_events(&mut conn),
        vec![Event::Closed(CloseReason::ProtocolError(
            ProtocolError::InvalidPeerName
        ))]
    );
    assert_eq!(PeerName::new(u64::MAX), None);
}

/// Feeds `chunks` and checks the event invariants: Ready at most once and first, Closed at
/// most once and last, and the state agrees with the events.
fn feed_and_check(outbound: bool, prefix: &[u8], chunks: &[Vec<u8>]) -> Result<(), TestCaseError> {
    let mut conn = lone(outbound);
    let mut now = Instant::ZERO;
    conn.handle_bytes(now, prefix);
    let mut events = Vec::new();
    for c in chunks {
        now += Duration::from_millis(700);
        conn.handle_bytes(now, c);
        conn.handle_timeout(now);
        let mut out = Vec::new();
        let _ = conn.poll_transmit(&mut out);
        events.extend(drain_events(&mut conn));
    }
    let closed = events
        .iter()
        .filter(|e| matches!(e, Event::Closed(_)))
        .count();
    let ready = events
        .iter()
        .filter(|e| matches!(e, Event::Ready { .. }))
        .count();
    prop_assert!(closed <= 1 && ready <= 1);
    if closed == 1 {
        let last_is_closed = matches!(events.last(), Some(Event::Closed(_)));
        prop_assert!(last_is_closed);
        prop_assert_eq!(conn.state(), ConnState::Closed);
    } else {
        prop_assert_ne!(conn.state(), ConnState::Closed);
    }
    if ready == 1 {
        let first_is_ready = matches!(events[0], Event::Ready { .. });
        prop_assert!(first_is_ready);
    }
    Ok(())
}

proptest! {
    #[test]
    fn random_bytes_after_hello_never_panic(
        outbound in any::<bool>(),
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..12),
    ) {
        feed_and_check(outbound, &Hello::CURRENT.emit(), &chunks)?;
    }

    #[test]
    fn random_bytes_after_key_hello_never_panic(
        outbound in any::<bool>(),
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..12),
    ) {
        feed_and_check(outbound, &plain_prefix(), &chunks)?;
    }

    #[test]
    fn random_bytes_after_features_never_panic(
        outbound in any::<bool>(),
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..12),
    ) {
        feed_and_check(outbound, &peer_stream(2, 200, 5), &chunks)?;
    }

    #[test]
    fn random_bytes_from_start_never_panic(
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..12),
    ) {
        feed_and_check(true, &[], &chunks)?;
    }

    #[test]
    fn any_chunking_reaches_ready(cuts in prop::collection::vec(0usize..200, 0..10)) {
        let stream = peer_stream(2, 200, 77);
        let mut conn = lone(false);
        let mut rest = &stream[..];
        for cut in cuts {
            let (head, tail) = rest.split_at(cut.min(rest.len()));
            conn.handle_bytes(Instant::ZERO, head);
            rest = tail;
        }
        conn.handle_bytes(Instant::ZERO, rest);
        prop_assert_eq!(conn.state(), ConnState::Ready);
        prop_assert_eq!(conn.conn_uid(), Some(42 ^ 77));
    }
}
