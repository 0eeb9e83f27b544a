//! Encrypted connections: key agreement, mismatches, trust, tampering.

use weft_crypto::{Cipher, Psk};
use weft_wire::control::Message;

use super::util::{Pair, peer};
use crate::{CloseReason, ConnConfig, ConnState, Encryption, Event, Instant, Protection, Security};

fn psk(b: u8) -> Psk {
    Psk::from_bytes([b; 32])
}

fn secure(key: Option<u8>, random: u8, trusts_peer: bool, aes: bool) -> ConnConfig {
    ConnConfig {
        security: Security {
            encryption: key.map(|k| Encryption {
                psk: psk(k),
                ephemeral_random: [random; 32],
            }),
            trusts_peer,
            aes,
        },
        ..ConnConfig::default()
    }
}

fn pair(a: ConnConfig, b: ConnConfig) -> Pair {
    Pair::with_config(peer(1, 100), a, peer(2, 200), b)
}

#[test]
fn same_password_reaches_ready_with_matching_data_keys() {
    for chunk in [usize::MAX, 1, 7] {
        let mut p = pair(
            secure(Some(5), 1, false, true),
            secure(Some(5), 2, false, true),
        );
        p.chunk = chunk;
        p.drive();
        assert_eq!(p.a.state(), ConnState::Ready, "chunk {chunk}");
        assert_eq!(p.b.state(), ConnState::Ready);
        let want = Protection {
            control: true,
            data: Some(Cipher::Aes256Gcm),
        };
        assert_eq!(p.a.conn.protection(), Some(want));
        assert_eq!(p.b.conn.protection(), Some(want));
        let ka = p.a.conn.take_data_keys().unwrap();
        let kb = p.b.conn.take_data_keys().unwrap();
        assert!(p.a.conn.take_data_keys().is_none(), "handed out once");
        // A's sending half is B's receiving half.
        let (mut tx, _) = ka.sessions(0);
        let (_, mut rx) = kb.sessions(0);
        let mut d = vec![0u8; 8 + 24 + 5];
        d[16..21].copy_from_slice(b"hello");
        let n = tx.seal(&mut d, 8, 5).unwrap();
        let r = rx.open(&mut d[..n], 8, 0).unwrap();
        assert_eq!(&d[r], b"hello");
        // Messages flow after Ready.
        p.a.conn
            .send(
                p.now,
                &Message::Gossip {
                    channel: 1,
                    payload: b"gossip".to_vec(),
                },
            )
            .unwrap();
        p.drive();
        assert!(p.b.events().contains(&Event::Message(Message::Gossip {
            channel: 1,
            payload: b"gossip".to_vec()
        })));
    }
}

#[test]
fn nothing_after_the_key_hellos_is_in_the_clear() {
    let mut p = pair(
        secure(Some(5), 1, false, false),
        secure(Some(5), 2, false, false),
    );
    let mut wire = Vec::new();
    // Capture what A sends while driving by hand.
    for _ in 0..4 {
        let mut out = Vec::new();
        if p.a.conn.poll_transmit(&mut out) {
            wire.extend_from_slice(&out);
            p.b.conn.handle_bytes(p.now, &out);
        }
        let mut out = Vec::new();
        if p.b.conn.poll_transmit(&mut out) {
            p.a.conn.handle_bytes(p.now, &out);
        }
    }
    assert_eq!(p.a.state(), ConnState::Ready);
    assert!(!wire.windows(6).any(|w| w == b"host-1"), "nickname leaked");
    // No cipher for the data plane without AES on both sides: ChaCha20-Poly1305.
    assert_eq!(
        p.a.conn.protection().and_then(|x| x.data),
        Some(Cipher::ChaCha20Poly1305)
    );
}

#[test]
fn wrong_password_is_reported_on_both_sides() {
    let mut p = pair(
        secure(Some(5), 1, false, false),
        secure(Some(6), 2, false, false),
    );
    p.drive();
    assert_eq!(p.a.closed().map(|c| c.1), Some(CloseReason::WrongPassword));
    assert_eq!(p.b.closed().map(|c| c.1), Some(CloseReason::WrongPassword));
    assert!(
        CloseReason::WrongPassword
            .to_string()
            .contains("wrong password")
    );
    assert!(p.a.conn.remote().is_none());
}

#[test]
fn password_on_one_side_only_is_reported_on_both_sides() {
    for a_has in [true, false] {
        let (ka, kb) = if a_has {
            (Some(5), None)
        } else {
            (None, Some(5))
        };
        let mut p = pair(secure(ka, 1, false, false), secure(kb, 2, false, false));
        p.drive();
        let ra = p.a.closed().unwrap().1;
        let rb = p.b.closed().unwrap().1;
        assert_eq!(
            ra,
            CloseReason::EncryptionMismatch {
                we_have_password: a_has
            }
        );
        assert_eq!(
            rb,
            CloseReason::EncryptionMismatch {
                we_have_password: !a_has
            }
        );
        let (with, without) = if a_has { (ra, rb) } else { (rb, ra) };
        assert_eq!(
            with.to_string(),
            "password specified, but peer requested an unencrypted connection"
        );
        assert_eq!(
            without.to_string(),
            "peer requested an encrypted connection, but no password was specified"
        );
    }
}

#[test]
fn data_plane_is_clear_only_when_both_trust() {
    for (ta, tb, clear) in [
        (true, true, true),
        (true, false, false),
        (false, true, false),
    ] {
        let mut p = pair(secure(Some(5), 1, ta, false), secure(Some(5), 2, tb, false));
        p.drive();
        assert_eq!(p.a.state(), ConnState::Ready);
        let pa = p.a.conn.protection().unwrap();
        let pb = p.b.conn.protection().unwrap();
        assert!(pa.control && pb.control, "control is always encrypted");
        assert_eq!(pa.data.is_none(), clear, "{ta} {tb}");
        assert_eq!(pb.data.is_none(), clear);
        assert_eq!(p.a.conn.take_data_keys().is_none(), clear);
    }
    // Without passwords, nothing is encrypted.
    let mut p = pair(secure(None, 1, false, false), secure(None, 2, false, false));
    p.drive();
    assert_eq!(
        p.a.conn.protection(),
        Some(Protection {
            control: false,
            data: None
        })
    );
}

/// After the handshake, every byte of a sealed frame matters, and frames cannot be replayed.
#[test]
fn tampered_or_replayed_control_frames_close_the_connection() {
    for mode in ["flip", "replay"] {
        let mut p = pair(
            secure(Some(5), 1, false, false),
            secure(Some(5), 2, false, false),
        );
        p.drive();
        assert_eq!(p.b.state(), ConnState::Ready);
        p.a.conn.send(p.now, &Message::Heartbeat).unwrap();
        let mut frame = Vec::new();
        assert!(p.a.conn.poll_transmit(&mut frame));
        match mode {
            "flip" => {
                let last = frame.len() - 1;
                frame[last] ^= 1;
                p.b.conn.handle_bytes(p.now, &frame);
            }
            _ => {
                p.b.conn.handle_bytes(p.now, &frame);
                p.b.conn.handle_bytes(p.now, &frame);
            }
        }
        let events: Vec<Event> = std::iter::from_fn(|| p.b.conn.poll_event()).collect();
        assert!(
            events.contains(&Event::Closed(CloseReason::AuthFailed)),
            "{mode}: {events:?}"
        );
    }
}

#[test]
fn garbage_instead_of_confirmation_is_a_wrong_password() {
    let mut p = pair(
        secure(Some(5), 1, false, false),
        secure(Some(5), 2, false, false),
    );
    // A's hello reaches B; B answers with its hello and key hello; A gets those and then
    // 32 junk bytes where B's confirmation belongs.
    let mut out = Vec::new();
    assert!(p.a.conn.poll_transmit(&mut out));
    p.b.conn.handle_bytes(Instant::ZERO, &out);
    let mut from_b = Vec::new();
    assert!(p.b.conn.poll_transmit(&mut from_b));
    assert_eq!(from_b.len(), 6 + 34);
    from_b.extend_from_slice(&[0u8; 32]);
    p.a.conn.handle_bytes(Instant::ZERO, &from_b);
    let events: Vec<Event> = std::iter::from_fn(|| p.a.conn.poll_event()).collect();
    assert_eq!(events, vec![Event::Closed(CloseReason::WrongPassword)]);
}
