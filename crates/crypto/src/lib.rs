//! Layer: pure logic. weft's cryptography, sans-IO: no sockets, no clock, no randomness of its
//! own (the caller passes the random bytes in, so tests are deterministic).
//!
//! - [`stretch`]: the network password is stretched once at start with Argon2id into a 32-byte
//!   pre-shared key ([`Psk`]), so a captured handshake is costly to brute-force.
//! - [`handshake`]: per connection, each side sends a [`KeyHello`](handshake::KeyHello) with a
//!   fresh X25519 public key and its flags; both derive per-direction keys with HKDF-SHA256 over
//!   the X25519 shared secret, the PSK and the hash of the whole handshake transcript, then
//!   prove they hold the same keys with a confirmation MAC (a wrong password is detected here).
//! - [`control`]: TCP control frames sealed with ChaCha20-Poly1305 under implicit sequence
//!   numbers: a replayed, reordered, dropped or forged frame fails authentication.
//! - [`data`]: UDP datagrams sealed per hop with AES-256-GCM or ChaCha20-Poly1305 under a
//!   transmitted 64-bit counter nonce, a sliding [`ReplayWindow`] checked after authentication,
//!   and a key ratchet every 2^24 datagrams.
//!
//! **Panic contract:** nothing here panics on any input; bad input is an error.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod control;
pub mod data;
pub mod handshake;
mod password;
mod replay;

pub use password::{Psk, StretchError, StretchParams, stretch};
pub use replay::ReplayWindow;

use ring::aead;

/// Length of an AEAD authentication tag (both ciphers).
pub const TAG_LEN: usize = 16;

/// Length of every symmetric key.
pub const KEY_LEN: usize = 32;

/// The AEAD sealing data-plane datagrams on a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cipher {
    /// AES-256-GCM: chosen when both ends have AES and carry-less multiply instructions
    /// (about 2 GB/s per core with them, far slower without).
    Aes256Gcm,
    /// ChaCha20-Poly1305: fast in software everywhere (about 850 MB/s per core); the default.
    ChaCha20Poly1305,
}

impl Cipher {
    fn algorithm(self) -> &'static aead::Algorithm {
        match self {
            Self::Aes256Gcm => &aead::AES_256_GCM,
            Self::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }

    /// A short name for logs and status.
    pub fn name(self) -> &'static str {
        match self {
            Self::Aes256Gcm => "aes-256-gcm",
            Self::ChaCha20Poly1305 => "chacha20-poly1305",
        }
    }
}

/// 32 bytes of key material; never printed.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct KeyBytes(pub(crate) [u8; KEY_LEN]);

impl std::fmt::Debug for KeyBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyBytes(..)")
    }
}

/// The 96-bit nonce of message `counter`: four zero bytes, then the counter big-endian. Each
/// key is used in one direction only, so counters alone keep nonces unique.
pub(crate) fn nonce(counter: u64) -> aead::Nonce {
    let mut n = [0u8; aead::NONCE_LEN];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    aead::Nonce::assume_unique_for_key(n)
}

/// A ring AEAD key. Key lengths are fixed at 32 bytes for both ciphers, so this cannot fail.
pub(crate) fn aead_key(cipher: Cipher, key: &KeyBytes) -> aead::LessSafeKey {
    let unbound = aead::UnboundKey::new(cipher.algorithm(), &key.0)
        .unwrap_or_else(|_| unreachable!("32-byte keys fit both AEADs"));
    aead::LessSafeKey::new(unbound)
}

/// HKDF-SHA256 expand of `prk` with `info` into 32 bytes.
pub(crate) fn expand(prk: &ring::hkdf::Prk, info: &[&[u8]]) -> KeyBytes {
    let mut out = [0u8; KEY_LEN];
    prk.expand(info, ring::hkdf::HKDF_SHA256)
        .and_then(|okm| okm.fill(&mut out))
        .unwrap_or_else(|_| unreachable!("32 bytes is a valid HKDF-SHA256 output length"));
    KeyBytes(out)
}
