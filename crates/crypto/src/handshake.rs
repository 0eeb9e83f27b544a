//! The per-connection key agreement.
//!
//! After the 6-byte control hellos, each side writes a [`KeyHello`] of [`KEY_HELLO_LEN`] bytes:
//!
//! ```text
//! byte 0   flags: bit 0 encrypted (a password is set), bit 1 "I trust your address" (trusted
//!          subnets), bit 2 "I have AES hardware"; other bits must be 0
//! byte 1   reserved, 0
//! 2..34    a fresh X25519 public key (zeros when not encrypted)
//! ```
//!
//! With a password on both sides, each derives (see [`derive()`]):
//!
//! ```text
//! th   = SHA-256("weft handshake v1" ‖ hello_out ‖ hello_in ‖ keyhello_out ‖ keyhello_in)
//! prk  = HKDF-Extract(salt = PSK, ikm = X25519(own secret, peer public))
//! keys = HKDF-Expand(prk, label ‖ th) for: control out→in, control in→out,
//!        data out→in, data in→out, confirm out→in, confirm in→out
//! ```
//!
//! where "out" is the side that dialled. Each side then sends
//! `HMAC-SHA256(confirm key of its direction, th)` ([`CONFIRM_LEN`] bytes) and checks the
//! peer's: a different password (or any change to the transcript by a man in the middle) fails
//! here, before any sealed frame, so it is reported as such. Forward secrecy comes from the
//! ephemeral keys: nothing derived outlives the connection.

use ring::{digest, hkdf, hmac};
use x25519_dalek::{PublicKey, StaticSecret};

use crate::control::{ControlOpener, ControlSealer};
use crate::data::{RxSession, TxSession};
use crate::{Cipher, KEY_LEN, KeyBytes, Psk, expand};

/// Length of a [`KeyHello`] on the wire.
pub const KEY_HELLO_LEN: usize = 34;
/// Length of the key confirmation each side sends after the key hellos.
pub const CONFIRM_LEN: usize = 32;

const FLAG_ENCRYPTED: u8 = 1;
const FLAG_TRUSTS_PEER: u8 = 2;
const FLAG_AES: u8 = 4;
const FLAGS_KNOWN: u8 = FLAG_ENCRYPTED | FLAG_TRUSTS_PEER | FLAG_AES;

/// The transcript hash's domain string.
const TRANSCRIPT_LABEL: &[u8] = b"weft handshake v1";

/// What each side announces right after the hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyHello {
    /// The sender has a password and wants the connection encrypted.
    pub encrypted: bool,
    /// The sender trusts the receiver's address (`--trusted-subnets`): if both trust each other,
    /// the data plane between them is not encrypted.
    pub trusts_peer: bool,
    /// The sender has AES hardware instructions; AES-256-GCM is used if both have them.
    pub aes: bool,
    /// The sender's ephemeral X25519 public key.
    pub public: [u8; 32],
}

/// Why a key hello was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyHelloError {
    /// Fewer than [`KEY_HELLO_LEN`] bytes.
    #[error("key hello truncated")]
    Truncated,
    /// Flag bits or the reserved byte this version does not know are set.
    #[error("key hello has unknown flags {0:#04x}")]
    UnknownFlags(u8),
}

impl KeyHello {
    /// Parses the first [`KEY_HELLO_LEN`] bytes of `data`.
    pub fn parse(data: &[u8]) -> Result<Self, KeyHelloError> {
        let Some(bytes) = data.get(..KEY_HELLO_LEN) else {
            return Err(KeyHelloError::Truncated);
        };
        let flags = bytes[0];
        if flags & !FLAGS_KNOWN != 0 || bytes[1] != 0 {
            return Err(KeyHelloError::UnknownFlags(flags | bytes[1]));
        }
        let mut public = [0u8; 32];
        public.copy_from_slice(&bytes[2..KEY_HELLO_LEN]);
        Ok(Self {
            encrypted: flags & FLAG_ENCRYPTED != 0,
            trusts_peer: flags & FLAG_TRUSTS_PEER != 0,
            aes: flags & FLAG_AES != 0,
            public,
        })
    }

    /// The bytes to send.
    pub fn emit(&self) -> [u8; KEY_HELLO_LEN] {
        let mut out = [0u8; KEY_HELLO_LEN];
        for (on, flag) in [
            (self.encrypted, FLAG_ENCRYPTED),
            (self.trusts_peer, FLAG_TRUSTS_PEER),
            (self.aes, FLAG_AES),
        ] {
            if on {
                out[0] |= flag;
            }
        }
        out[2..].copy_from_slice(&self.public);
        out
    }
}

/// A per-connection X25519 key pair made from 32 random bytes the caller supplies.
#[derive(Clone)]
pub struct Ephemeral {
    secret: StaticSecret,
    public: [u8; 32],
}

impl std::fmt::Debug for Ephemeral {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ephemeral")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl Ephemeral {
    /// The key pair whose secret is `random` (clamped by X25519). `random` must be fresh,
    /// uniformly random bytes for every connection.
    pub fn from_random(random: [u8; 32]) -> Self {
        let secret = StaticSecret::from(random);
        let public = PublicKey::from(&secret).to_bytes();
        Self { secret, public }
    }

    /// The public half, sent in the [`KeyHello`].
    pub fn public(&self) -> [u8; 32] {
        self.public
    }
}

/// Why the key agreement failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The peer's public key is a low-order point: the shared secret would be predictable.
    #[error("peer sent a weak (low-order) public key")]
    WeakKey,
    /// The peer's key confirmation does not match ours.
    #[error(
        "authentication failed: the peer's password differs from ours (or the handshake was tampered with)"
    )]
    WrongPassword,
}

/// The two hellos and two key hellos of one connection, in the order both sides hash them.
#[derive(Clone, Copy, Debug)]
pub struct Transcript<'a> {
    /// The dialling side's 6-byte hello.
    pub hello_out: &'a [u8],
    /// The accepting side's 6-byte hello.
    pub hello_in: &'a [u8],
    /// The dialling side's key hello.
    pub key_out: &'a [u8],
    /// The accepting side's key hello.
    pub key_in: &'a [u8],
}

impl Transcript<'_> {
    /// SHA-256 over the domain string and every part, each behind its length.
    pub fn hash(&self) -> [u8; 32] {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(TRANSCRIPT_LABEL);
        for part in [self.hello_out, self.hello_in, self.key_out, self.key_in] {
            ctx.update(&(part.len() as u32).to_be_bytes());
            ctx.update(part);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }
}

/// The keys of one connection, from our side's point of view.
#[derive(Debug)]
pub struct SessionKeys {
    control_tx: KeyBytes,
    control_rx: KeyBytes,
    data_tx: KeyBytes,
    data_rx: KeyBytes,
    confirm_tx: KeyBytes,
    confirm_rx: KeyBytes,
    transcript: [u8; 32],
    cipher: Cipher,
    data_encrypted: bool,
}

/// Derives the connection's keys. `outbound` is whether we dialled; `ours` and `theirs` are
/// the parsed key hellos (both must say `encrypted`, the caller checks that first).
pub fn derive(
    outbound: bool,
    psk: &Psk,
    ephemeral: &Ephemeral,
    theirs: &KeyHello,
    ours: &KeyHello,
    transcript: &Transcript<'_>,
) -> Result<SessionKeys, HandshakeError> {
    let shared = ephemeral
        .secret
        .diffie_hellman(&PublicKey::from(theirs.public));
    if !shared.was_contributory() {
        return Err(HandshakeError::WeakKey);
    }
    let th = transcript.hash();
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &psk.0).extract(shared.as_bytes());
    let key = |label: &[u8]| expand(&prk, &[b"weft v1 ", label, &th]);
    let (c_out, c_in) = (key(b"control o2i"), key(b"control i2o"));
    let (d_out, d_in) = (key(b"data o2i"), key(b"data i2o"));
    let (k_out, k_in) = (key(b"confirm o2i"), key(b"confirm i2o"));
    let swap = |o: KeyBytes, i: KeyBytes| if outbound { (o, i) } else { (i, o) };
    let (control_tx, control_rx) = swap(c_out, c_in);
    let (data_tx, data_rx) = swap(d_out, d_in);
    let (confirm_tx, confirm_rx) = swap(k_out, k_in);
    let cipher = if ours.aes && theirs.aes {
        Cipher::Aes256Gcm
    } else {
        Cipher::ChaCha20Poly1305
    };
    Ok(SessionKeys {
        control_tx,
        control_rx,
        data_tx,
        data_rx,
        confirm_tx,
        confirm_rx,
        transcript: th,
        cipher,
        data_encrypted: !(ours.trusts_peer && theirs.trusts_peer),
    })
}

impl SessionKeys {
    /// The confirmation we send: proof that we derived the same keys.
    pub fn confirmation(&self) -> [u8; CONFIRM_LEN] {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.confirm_tx.0);
        let tag = hmac::sign(&key, &self.transcript);
        let mut out = [0u8; CONFIRM_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Checks the peer's confirmation (in constant time).
    pub fn check_confirmation(&self, theirs: &[u8]) -> Result<(), HandshakeError> {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.confirm_rx.0);
        hmac::verify(&key, &self.transcript, theirs).map_err(|_| HandshakeError::WrongPassword)
    }

    /// The sealer and opener of control frames.
    pub fn control(&self, max_body: usize) -> (ControlSealer, ControlOpener) {
        (
            ControlSealer::new(&self.control_tx),
            ControlOpener::new(&self.control_rx, max_body),
        )
    }

    /// The data-plane keys, unless both sides trust each other (then the data plane is clear).
    pub fn data(&self) -> Option<DataKeys> {
        self.data_encrypted.then(|| DataKeys {
            cipher: self.cipher,
            tx: self.data_tx.clone(),
            rx: self.data_rx.clone(),
        })
    }

    /// The cipher the data plane uses (if it is encrypted).
    pub fn cipher(&self) -> Cipher {
        self.cipher
    }

    /// The transcript hash both sides computed.
    pub fn transcript_hash(&self) -> [u8; 32] {
        self.transcript
    }
}

/// One connection's data-plane keys, to hand to the data plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataKeys {
    cipher: Cipher,
    tx: KeyBytes,
    rx: KeyBytes,
}

impl DataKeys {
    /// The cipher.
    pub fn cipher(&self) -> Cipher {
        self.cipher
    }

    /// The sending session of stream `stream` (one per data-plane thread; see
    /// [`crate::data`]) and the receiving session (every stream).
    pub fn sessions(&self, stream: u8) -> (TxSession, RxSession) {
        (
            TxSession::new(self.cipher, &self.tx, stream),
            RxSession::new(self.cipher, &self.rx),
        )
    }

    /// Keys from raw bytes (tests and benchmarks).
    pub fn from_raw(cipher: Cipher, tx: [u8; KEY_LEN], rx: [u8; KEY_LEN]) -> Self {
        Self {
            cipher,
            tx: KeyBytes(tx),
            rx: KeyBytes(rx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{StretchParams, stretch};

    struct Side {
        eph: Ephemeral,
        kh: KeyHello,
    }

    fn side(seed: u8, trusts: bool, aes: bool) -> Side {
        let eph = Ephemeral::from_random([seed; 32]);
        let kh = KeyHello {
            encrypted: true,
            trusts_peer: trusts,
            aes,
            public: eph.public(),
        };
        Side { eph, kh }
    }

    const HELLO: [u8; 6] = *b"weft\x02\x02";

    fn run(a: &Side, pa: &Psk, b: &Side, pb: &Psk) -> (SessionKeys, SessionKeys) {
        let (ka, kb) = (a.kh.emit(), b.kh.emit());
        let t = Transcript {
            hello_out: &HELLO,
            hello_in: &HELLO,
            key_out: &ka,
            key_in: &kb,
        };
        let sa = derive(true, pa, &a.eph, &b.kh, &a.kh, &t).unwrap();
        let sb = derive(false, pb, &b.eph, &a.kh, &b.kh, &t).unwrap();
        (sa, sb)
    }

    #[test]
    fn key_hello_round_trip_and_rejects() {
        let kh = KeyHello {
            encrypted: true,
            trusts_peer: false,
            aes: true,
            public: [7; 32],
        };
        let bytes = kh.emit();
        assert_eq!(bytes[0], 0b101);
        assert_eq!(KeyHello::parse(&bytes), Ok(kh));
        assert_eq!(KeyHello::parse(&bytes[..33]), Err(KeyHelloError::Truncated));
        let mut bad = bytes;
        bad[0] |= 0x80;
        assert!(matches!(
            KeyHello::parse(&bad),
            Err(KeyHelloError::UnknownFlags(_))
        ));
        let mut bad = bytes;
        bad[1] = 1;
        assert!(KeyHello::parse(&bad).is_err());
    }

    #[test]
    fn same_password_agrees_and_directions_differ() {
        let psk = stretch(b"pw", StretchParams::TEST).unwrap();
        let (a, b) = (side(1, false, true), side(2, false, true));
        let (sa, sb) = run(&a, &psk, &b, &psk);
        assert_eq!(sa.transcript_hash(), sb.transcript_hash());
        sa.check_confirmation(&sb.confirmation()).unwrap();
        sb.check_confirmation(&sa.confirmation()).unwrap();
        // Our confirmation is not what we expect from the peer (no reflection).
        assert!(sa.check_confirmation(&sa.confirmation()).is_err());
        assert_eq!(sa.control_tx, sb.control_rx);
        assert_eq!(sa.data_tx, sb.data_rx);
        assert_ne!(sa.control_tx, sa.control_rx);
        assert_ne!(sa.data_tx, sa.data_rx);
        assert_ne!(sa.control_tx, sa.data_tx);
        assert_eq!(sa.cipher(), Cipher::Aes256Gcm);
        assert!(sa.data().is_some());
    }

    #[test]
    fn wrong_password_fails_confirmation_both_ways() {
        let p1 = stretch(b"pw1", StretchParams::TEST).unwrap();
        let p2 = stretch(b"pw2", StretchParams::TEST).unwrap();
        let (a, b) = (side(1, false, false), side(2, false, false));
        let (sa, sb) = run(&a, &p1, &b, &p2);
        assert_eq!(
            sa.check_confirmation(&sb.confirmation()),
            Err(HandshakeError::WrongPassword)
        );
        assert_eq!(
            sb.check_confirmation(&sa.confirmation()),
            Err(HandshakeError::WrongPassword)
        );
    }

    /// Any change to any part of the transcript (a flag flipped by a man in the middle, a
    /// substituted key, a different hello) changes every key and fails confirmation.
    #[test]
    fn transcript_binds_every_part() {
        let psk = stretch(b"pw", StretchParams::TEST).unwrap();
        let (a, b) = (side(1, true, true), side(2, true, true));
        let (ka, kb) = (a.kh.emit(), b.kh.emit());
        let good = Transcript {
            hello_out: &HELLO,
            hello_in: &HELLO,
            key_out: &ka,
            key_in: &kb,
        };
        let sa = derive(true, &psk, &a.eph, &b.kh, &a.kh, &good).unwrap();
        assert!(sa.data().is_none(), "both trust: data plane in the clear");
        // B sees A's "trusts you" flag cleared by an attacker.
        let mut ka_t = ka;
        ka_t[0] &= !FLAG_TRUSTS_PEER;
        let other_hello = *b"weft\x01\x02";
        let variants: [Transcript<'_>; 3] = [
            Transcript {
                key_out: &ka_t,
                ..good
            },
            Transcript {
                hello_in: &other_hello,
                ..good
            },
            Transcript {
                key_in: &ka,
                ..good
            },
        ];
        for t in &variants {
            assert_ne!(t.hash(), good.hash());
            let sb = derive(false, &psk, &b.eph, &a.kh, &b.kh, t).unwrap();
            assert!(sa.check_confirmation(&sb.confirmation()).is_err());
            assert!(sb.check_confirmation(&sa.confirmation()).is_err());
            assert_ne!(sb.data_rx, sa.data_tx);
        }
        // Part boundaries count: moving a byte from one part to the next changes the hash.
        let t1 = Transcript {
            hello_out: b"ab",
            hello_in: b"c",
            key_out: b"",
            key_in: b"",
        };
        let t2 = Transcript {
            hello_out: b"a",
            hello_in: b"bc",
            ..t1
        };
        assert_ne!(t1.hash(), t2.hash());
    }

    #[test]
    fn man_in_the_middle_without_password_gets_other_keys() {
        // Mallory runs one handshake with A and one with B, each with her own key pair, and a
        // guessed password. Neither session's keys match A's or B's.
        let psk = stretch(b"pw", StretchParams::TEST).unwrap();
        let guess = stretch(b"guess", StretchParams::TEST).unwrap();
        let (a, b, m) = (
            side(1, false, false),
            side(2, false, false),
            side(3, false, false),
        );
        let (sa, sm1) = run(&a, &psk, &m, &guess);
        let (sm2, sb) = run(&m, &guess, &b, &psk);
        assert!(sa.check_confirmation(&sm1.confirmation()).is_err());
        assert!(sb.check_confirmation(&sm2.confirmation()).is_err());
        assert_ne!(sa.data_tx, sm1.data_rx);
    }

    #[test]
    fn fresh_ephemerals_give_fresh_keys_and_weak_keys_are_refused() {
        let psk = stretch(b"pw", StretchParams::TEST).unwrap();
        let (s1, _) = run(&side(1, false, false), &psk, &side(2, false, false), &psk);
        let (s2, _) = run(&side(1, false, false), &psk, &side(4, false, false), &psk);
        assert_ne!(s1.data_tx, s2.data_tx);
        assert_ne!(s1.control_tx, s2.control_tx);
        let a = side(1, false, false);
        let weak = KeyHello {
            public: [0; 32],
            ..a.kh
        };
        let (ka, kw) = (a.kh.emit(), weak.emit());
        let t = Transcript {
            hello_out: &HELLO,
            hello_in: &HELLO,
            key_out: &ka,
            key_in: &kw,
        };
        assert_eq!(
            derive(true, &psk, &a.eph, &weak, &a.kh, &t).unwrap_err(),
            HandshakeError::WeakKey
        );
    }

    #[test]
    fn cipher_negotiation() {
        let psk = stretch(b"pw", StretchParams::TEST).unwrap();
        for (x, y, want) in [
            (true, true, Cipher::Aes256Gcm),
            (true, false, Cipher::ChaCha20Poly1305),
            (false, true, Cipher::ChaCha20Poly1305),
            (false, false, Cipher::ChaCha20Poly1305),
        ] {
            let (sa, sb) = run(&side(1, false, x), &psk, &side(2, false, y), &psk);
            assert_eq!(sa.cipher(), want);
            assert_eq!(sb.cipher(), want);
        }
        // Trust must be mutual for a clear data plane.
        let (sa, _) = run(&side(1, true, false), &psk, &side(2, false, false), &psk);
        assert!(sa.data().is_some());
    }
}
