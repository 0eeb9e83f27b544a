//! Sealed data-plane datagrams.
//!
//! ```text
//! [clear header: header_len bytes, authenticated as associated data]
//! [counter: u64 big-endian, the nonce]
//! [ciphertext of the payload]
//! [tag: 16 bytes]
//! ```
//!
//! Each direction of each connection has its own key, so the sender's counter alone makes every
//! nonce unique: it starts at 0, goes up by one per datagram and is never reused; the sender
//! refuses to seal once it reaches `u64::MAX`. The key is replaced every 2^[`EPOCH_BITS`]
//! datagrams (`key[e] = HKDF-Expand(connection key, "weft data epoch" ‖ e)`), well within
//! AES-GCM's usage limits, with no message exchanged: the epoch of a datagram is its counter's
//! top bits. The receiver keeps the previous epoch's key for stragglers.
//!
//! The receiver checks a [`ReplayWindow`] before opening (cheap, changes nothing) and records the
//! counter only after the datagram authenticated, so forgeries cannot move the window.
//!
//! **Streams.** A router with several data-plane threads seals on each with its own
//! [`TxSession`], one *stream* per thread, so no two threads ever share a counter. Stream `s`
//! has its own key (`HKDF-Expand(connection key, "weft data stream" ‖ s)`; stream 0 uses the
//! connection key itself, so a single-threaded sender is unchanged), hence its own counters,
//! epochs and replay window. The stream travels in the clear header (weft writes it into the
//! VXLAN header's last reserved byte), which is authenticated: a datagram whose stream was
//! changed fails to open. One [`RxSession`] opens every stream of a connection and keeps each
//! stream's state apart, created when its first datagram arrives; at most [`MAX_STREAMS`].

use std::ops::Range;

use ring::aead::{self, Aad};
use ring::hkdf;

use crate::{Cipher, KeyBytes, ReplayWindow, TAG_LEN, aead_key, expand, nonce};

/// Length of the transmitted counter.
pub const COUNTER_LEN: usize = 8;
/// Bytes sealing adds to a datagram: counter and tag.
pub const OVERHEAD: usize = COUNTER_LEN + TAG_LEN;
/// Datagrams per key: the key is ratcheted when the counter crosses a multiple of 2^EPOCH_BITS.
pub const EPOCH_BITS: u32 = 24;
/// Streams one receiving session accepts (0 to `MAX_STREAMS - 1`); a datagram of another
/// stream fails authentication.
pub const MAX_STREAMS: u8 = 64;

/// Why a datagram could not be sealed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The buffer has no room for the counter and tag.
    #[error("no room to seal the datagram")]
    NoRoom,
    /// Every counter was used: the connection must be re-established for new keys.
    #[error("datagram counters exhausted: reconnect for new keys")]
    Exhausted,
}

/// Why a received datagram was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Shorter than header, counter and tag.
    #[error("sealed datagram truncated")]
    Truncated,
    /// It failed authentication (forged or corrupted, or sealed under another key).
    #[error("datagram failed authentication")]
    Auth,
    /// Its counter was already accepted, or is too far behind the newest.
    #[error("replayed datagram")]
    Replay,
}

/// The key of stream `stream` under the connection's key `base` (stream 0: `base` itself).
fn stream_key(base: &KeyBytes, stream: u8) -> KeyBytes {
    if stream == 0 {
        return base.clone();
    }
    let prk = hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, &base.0);
    expand(&prk, &[b"weft data stream", &[stream]])
}

/// The AEAD key of `epoch` under the connection's key `base`.
fn epoch_key(cipher: Cipher, base: &KeyBytes, epoch: u64) -> aead::LessSafeKey {
    let prk = hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, &base.0);
    aead_key(
        cipher,
        &expand(&prk, &[b"weft data epoch", &epoch.to_be_bytes()]),
    )
}

/// The sending half of a data-plane session.
#[derive(Debug)]
pub struct TxSession {
    cipher: Cipher,
    key: aead::LessSafeKey,
    bytes: KeyBytes,
    stream: u8,
    epoch: u64,
    next: u64,
}

impl TxSession {
    /// The session sealing stream `stream` under the connection's sending key `key`.
    pub(crate) fn new(cipher: Cipher, key: &KeyBytes, stream: u8) -> Self {
        let bytes = stream_key(key, stream);
        Self {
            cipher,
            key: epoch_key(cipher, &bytes, 0),
            bytes,
            stream,
            epoch: 0,
            next: 0,
        }
    }

    /// The stream it seals (to be sent in the datagram's clear header).
    pub fn stream(&self) -> u8 {
        self.stream
    }

    /// Seals a datagram in place. `buf` holds the clear header in `[..header_len]` and the payload
    /// at `[header_len + COUNTER_LEN..][..payload_len]`; the counter and the tag are written
    /// around it. Returns the sealed datagram's length, `header_len + OVERHEAD + payload_len`.
    pub fn seal(
        &mut self,
        buf: &mut [u8],
        header_len: usize,
        payload_len: usize,
    ) -> Result<usize, SealError> {
        let total = header_len + OVERHEAD + payload_len;
        if buf.len() < total {
            return Err(SealError::NoRoom);
        }
        let counter = self.next;
        if counter == u64::MAX {
            return Err(SealError::Exhausted);
        }
        let epoch = counter >> EPOCH_BITS;
        if self.epoch != epoch {
            self.epoch = epoch;
            self.key = epoch_key(self.cipher, &self.bytes, epoch);
        }
        self.next += 1;
        let (header, rest) = buf[..total].split_at_mut(header_len);
        let (ctr, rest) = rest.split_at_mut(COUNTER_LEN);
        ctr.copy_from_slice(&counter.to_be_bytes());
        let (payload, tag_space) = rest.split_at_mut(payload_len);
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(counter), Aad::from(&*header), payload)
            .map_err(|_| SealError::NoRoom)?;
        tag_space.copy_from_slice(tag.as_ref());
        Ok(total)
    }

    /// The counter the next datagram gets.
    pub fn next_counter(&self) -> u64 {
        self.next
    }

    /// Moves the counter forward to `counter` (never back): for tests of the epoch and
    /// exhaustion paths.
    pub fn skip_to(&mut self, counter: u64) {
        self.next = self.next.max(counter);
    }

    /// The cipher.
    pub fn cipher(&self) -> Cipher {
        self.cipher
    }
}

/// The receiving half of a data-plane session: every stream of the connection.
#[derive(Debug)]
pub struct RxSession {
    cipher: Cipher,
    bytes: KeyBytes,
    /// Each stream heard from so far, by stream number (few: one per sending thread).
    streams: Vec<(u8, StreamRx)>,
}

/// One stream's receiving state.
#[derive(Debug)]
struct StreamRx {
    epoch: u64,
    key: aead::LessSafeKey,
    bytes: KeyBytes,
    previous: Option<aead::LessSafeKey>,
    /// The next epoch's key, derived when a datagram of that epoch first arrives.
    upcoming: Option<aead::LessSafeKey>,
    window: ReplayWindow,
}

impl RxSession {
    pub(crate) fn new(cipher: Cipher, key: &KeyBytes) -> Self {
        Self {
            cipher,
            bytes: key.clone(),
            streams: vec![(0, StreamRx::new(cipher, key.clone()))],
        }
    }

    /// Opens a sealed datagram of stream `stream` in place; returns where the plaintext
    /// payload is in `datagram`. On error the session is unchanged (the window only moves for
    /// authentic datagrams), but `datagram`'s bytes may have been overwritten.
    pub fn open(
        &mut self,
        datagram: &mut [u8],
        header_len: usize,
        stream: u8,
    ) -> Result<Range<usize>, OpenError> {
        if datagram.len() < header_len + OVERHEAD {
            return Err(OpenError::Truncated);
        }
        let state = match self.streams.iter().position(|(s, _)| *s == stream) {
            Some(i) => &mut self.streams[i].1,
            None if stream < MAX_STREAMS => {
                let bytes = stream_key(&self.bytes, stream);
                self.streams
                    .push((stream, StreamRx::new(self.cipher, bytes)));
                let last = self.streams.len() - 1;
                &mut self.streams[last].1
            }
            None => return Err(OpenError::Auth),
        };
        state.open(self.cipher, datagram, header_len)
    }

    /// The cipher.
    pub fn cipher(&self) -> Cipher {
        self.cipher
    }
}

impl StreamRx {
    fn new(cipher: Cipher, bytes: KeyBytes) -> Self {
        Self {
            epoch: 0,
            key: epoch_key(cipher, &bytes, 0),
            bytes,
            previous: None,
            upcoming: None,
            window: ReplayWindow::new(),
        }
    }

    fn open(
        &mut self,
        cipher: Cipher,
        datagram: &mut [u8],
        header_len: usize,
    ) -> Result<Range<usize>, OpenError> {
        let (header, rest) = datagram.split_at_mut(header_len);
        let (ctr, sealed) = rest.split_at_mut(COUNTER_LEN);
        let mut c = [0u8; COUNTER_LEN];
        c.copy_from_slice(ctr);
        let counter = u64::from_be_bytes(c);
        if !self.window.check(counter) {
            return Err(OpenError::Replay);
        }
        let epoch = counter >> EPOCH_BITS;
        let key = if epoch == self.epoch {
            &self.key
        } else if epoch + 1 == self.epoch {
            self.previous.as_ref().ok_or(OpenError::Auth)?
        } else if epoch == self.epoch + 1 {
            let (base, next) = (&self.bytes, self.epoch + 1);
            self.upcoming
                .get_or_insert_with(|| epoch_key(cipher, base, next))
        } else {
            return Err(OpenError::Auth);
        };
        let plain_len = key
            .open_in_place(nonce(counter), Aad::from(&*header), sealed)
            .map_err(|_| OpenError::Auth)?
            .len();
        if !self.window.update(counter) {
            return Err(OpenError::Replay);
        }
        if epoch == self.epoch + 1 {
            if let Some(key) = self.upcoming.take() {
                let old = std::mem::replace(&mut self.key, key);
                self.previous = Some(old);
                self.epoch = epoch;
            }
        }
        let start = header_len + COUNTER_LEN;
        Ok(start..start + plain_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::DataKeys;

    const H: usize = 8;

    fn sessions(cipher: Cipher) -> (TxSession, RxSession) {
        let a = DataKeys::from_raw(cipher, [1; 32], [2; 32]);
        let b = DataKeys::from_raw(cipher, [2; 32], [1; 32]);
        (a.sessions(0).0, b.sessions(0).1)
    }

    fn seal(tx: &mut TxSession, payload: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; H + OVERHEAD + payload.len()];
        buf[..H].copy_from_slice(b"VXLANHDR");
        buf[H + COUNTER_LEN..H + COUNTER_LEN + payload.len()].copy_from_slice(payload);
        let n = tx.seal(&mut buf, H, payload.len()).unwrap();
        assert_eq!(n, buf.len());
        buf
    }

    fn open(rx: &mut RxSession, mut d: Vec<u8>) -> Result<Vec<u8>, OpenError> {
        let r = rx.open(&mut d, H, 0)?;
        Ok(d[r].to_vec())
    }

    #[test]
    fn round_trip_both_ciphers() {
        for cipher in [Cipher::Aes256Gcm, Cipher::ChaCha20Poly1305] {
            let (mut tx, mut rx) = sessions(cipher);
            let d = seal(&mut tx, b"marker payload");
            assert!(!d.windows(6).any(|w| w == b"marker"));
            assert_eq!(&d[..H], b"VXLANHDR");
            assert_eq!(open(&mut rx, d).unwrap(), b"marker payload");
            let empty = seal(&mut tx, b"");
            assert_eq!(open(&mut rx, empty).unwrap(), b"");
        }
    }

    #[test]
    fn nonces_never_repeat_across_many_frames_and_epochs() {
        let (mut tx, mut rx) = sessions(Cipher::Aes256Gcm);
        let mut counters = std::collections::HashSet::new();
        let mut ciphertexts = std::collections::HashSet::new();
        let mut check = |tx: &mut TxSession, rx: &mut RxSession| {
            let d = seal(tx, b"same plaintext every time");
            let ctr = u64::from_be_bytes(d[H..H + 8].try_into().unwrap());
            assert!(counters.insert(ctr), "counter {ctr} reused");
            assert!(
                ciphertexts.insert(d[H + 8..].to_vec()),
                "ciphertext repeated"
            );
            assert_eq!(open(rx, d).unwrap(), b"same plaintext every time");
        };
        for _ in 0..50_000 {
            check(&mut tx, &mut rx);
        }
        // Across two key ratchets.
        for boundary in [1u64 << EPOCH_BITS, 2 << EPOCH_BITS] {
            tx.skip_to(boundary - 3);
            for _ in 0..6 {
                check(&mut tx, &mut rx);
            }
        }
        // skip_to never goes back.
        tx.skip_to(5);
        assert!(tx.next_counter() > 2 << EPOCH_BITS);
    }

    #[test]
    fn stragglers_of_the_previous_epoch_still_open_older_ones_do_not() {
        let (mut tx, mut rx) = sessions(Cipher::ChaCha20Poly1305);
        tx.skip_to((1 << EPOCH_BITS) - 2);
        let old1 = seal(&mut tx, b"old1");
        let old2 = seal(&mut tx, b"old2");
        let new1 = seal(&mut tx, b"new1");
        assert_eq!(open(&mut rx, new1).unwrap(), b"new1");
        assert_eq!(open(&mut rx, old2).unwrap(), b"old2");
        assert_eq!(open(&mut rx, old1).unwrap(), b"old1");
        // Two epochs ahead is refused (the sender never skips a whole epoch).
        tx.skip_to(3 << EPOCH_BITS);
        let far = seal(&mut tx, b"far");
        assert_eq!(open(&mut rx, far), Err(OpenError::Auth));
    }

    #[test]
    fn replays_forgeries_and_truncation_are_refused() {
        let (mut tx, mut rx) = sessions(Cipher::Aes256Gcm);
        let d0 = seal(&mut tx, b"frame zero");
        let d1 = seal(&mut tx, b"frame one");
        assert!(open(&mut rx, d1.clone()).is_ok());
        assert_eq!(open(&mut rx, d1.clone()), Err(OpenError::Replay));
        // Each byte flipped, in the header, counter, ciphertext or tag: refused, and the window
        // did not move (d0 still opens afterwards).
        for i in 0..d0.len() {
            let mut bad = d0.clone();
            bad[i] ^= 0x01;
            assert!(open(&mut rx, bad).is_err(), "flip at {i}");
        }
        // A forged counter far ahead does not advance the window.
        let mut forged = d0.clone();
        forged[H..H + 8].copy_from_slice(&1_000_000u64.to_be_bytes());
        assert_eq!(open(&mut rx, forged), Err(OpenError::Auth));
        assert_eq!(open(&mut rx, d0.clone()).unwrap(), b"frame zero");
        assert_eq!(open(&mut rx, d0), Err(OpenError::Replay));
        let mut short = vec![0u8; H + OVERHEAD - 1];
        assert_eq!(rx.open(&mut short, H, 0), Err(OpenError::Truncated));
        // The other direction's key does not open it.
        let (_, mut wrong) = sessions(Cipher::Aes256Gcm);
        let (mut tx2, _) = {
            let k = DataKeys::from_raw(Cipher::Aes256Gcm, [2; 32], [1; 32]);
            k.sessions(0)
        };
        let d = seal(&mut tx2, b"x");
        assert_eq!(open(&mut wrong, d), Err(OpenError::Auth));
        // A ChaCha session does not open an AES datagram under the same key bytes.
        let (mut aes_tx, _) = sessions(Cipher::Aes256Gcm);
        let (_, mut chacha_rx) = sessions(Cipher::ChaCha20Poly1305);
        assert_eq!(
            open(&mut chacha_rx, seal(&mut aes_tx, b"y")),
            Err(OpenError::Auth)
        );
    }

    #[test]
    fn streams_have_their_own_counters_keys_and_windows() {
        let a = DataKeys::from_raw(Cipher::Aes256Gcm, [1; 32], [2; 32]);
        let b = DataKeys::from_raw(Cipher::Aes256Gcm, [2; 32], [1; 32]);
        let (mut tx0, _) = a.sessions(0);
        let (mut tx1, _) = a.sessions(1);
        let (mut tx5, _) = a.sessions(5);
        assert_eq!((tx0.stream(), tx1.stream(), tx5.stream()), (0, 1, 5));
        let (_, mut rx) = b.sessions(0);
        let open_s = |rx: &mut RxSession, mut d: Vec<u8>, s: u8| {
            let r = rx.open(&mut d, H, s)?;
            Ok::<_, OpenError>(d[r].to_vec())
        };
        // Both streams start at counter 0, under different keys: the same plaintext seals
        // differently, and each opens only as its own stream.
        let d0 = seal(&mut tx0, b"same");
        let d1 = seal(&mut tx1, b"same");
        assert_eq!(d0[H..H + 8], d1[H..H + 8], "both counters start at 0");
        assert_ne!(d0[H + 8..], d1[H + 8..]);
        assert_eq!(open_s(&mut rx, d1.clone(), 0), Err(OpenError::Auth));
        assert_eq!(open_s(&mut rx, d0.clone(), 1), Err(OpenError::Auth));
        assert_eq!(open_s(&mut rx, d1.clone(), 1).unwrap(), b"same");
        assert_eq!(open_s(&mut rx, d0.clone(), 0).unwrap(), b"same");
        // Each stream has its own replay window: a replay is refused in its own stream, and
        // stream 5 far ahead does not push stream 0's stragglers out.
        assert_eq!(open_s(&mut rx, d1, 1), Err(OpenError::Replay));
        tx5.skip_to(100_000);
        assert!(open_s(&mut rx, seal(&mut tx5, b"five"), 5).is_ok());
        let late = seal(&mut tx0, b"late");
        let later = seal(&mut tx0, b"later");
        assert_eq!(open_s(&mut rx, later, 0).unwrap(), b"later");
        assert_eq!(open_s(&mut rx, late, 0).unwrap(), b"late");
        // Streams beyond MAX_STREAMS are refused.
        let (mut far, _) = a.sessions(MAX_STREAMS);
        assert_eq!(
            open_s(&mut rx, seal(&mut far, b"x"), MAX_STREAMS),
            Err(OpenError::Auth)
        );
    }

    #[test]
    fn exhausted_counter_refuses_to_seal() {
        let (mut tx, _) = sessions(Cipher::ChaCha20Poly1305);
        tx.skip_to(u64::MAX - 1);
        let mut buf = vec![0u8; H + OVERHEAD + 4];
        assert!(tx.seal(&mut buf, H, 4).is_ok());
        assert_eq!(tx.seal(&mut buf, H, 4), Err(SealError::Exhausted));
        let mut small = vec![0u8; H + OVERHEAD + 3];
        let (mut tx, _) = sessions(Cipher::ChaCha20Poly1305);
        assert_eq!(tx.seal(&mut small, H, 4), Err(SealError::NoRoom));
        assert_eq!(tx.next_counter(), 0, "a refused seal uses no counter");
    }
}
