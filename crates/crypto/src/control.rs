//! Sealed control frames: `u32` big-endian length of the sealed body, then the body sealed with
//! ChaCha20-Poly1305 (the length is the associated data). The nonce is the frame's sequence
//! number in its direction, starting at 0 and never sent: a replayed, reordered, dropped or
//! forged frame fails authentication, and the connection must be closed.
//!
//! Control traffic is small, so it always uses ChaCha20-Poly1305, whose per-key limits are far
//! beyond any connection's life (a 64-bit counter; [`ControlSealer`] refuses at its end).

use ring::aead::{self, Aad};

use crate::{Cipher, KeyBytes, TAG_LEN, aead_key, nonce};

/// Length of the frame header (the sealed length).
pub const HEADER_LEN: usize = 4;

/// Why a frame could not be sealed or opened. Once an opener fails it keeps failing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// The header announces more than the limit.
    #[error("sealed control frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// The header announces less than a tag.
    #[error("sealed control frame of {0} bytes is shorter than a tag")]
    TooShort(usize),
    /// The frame failed authentication: forged, corrupted, replayed, reordered or after a drop.
    #[error(
        "control frame failed authentication (forged, corrupted, replayed, reordered or dropped)"
    )]
    Auth,
    /// The sequence numbers are used up (after 2^64 frames).
    #[error("control sequence numbers exhausted")]
    Exhausted,
}

/// Seals outgoing control frames.
#[derive(Debug)]
pub struct ControlSealer {
    key: aead::LessSafeKey,
    seq: u64,
}

impl ControlSealer {
    pub(crate) fn new(key: &KeyBytes) -> Self {
        Self {
            key: aead_key(Cipher::ChaCha20Poly1305, key),
            seq: 0,
        }
    }

    /// Appends the sealed frame of `body` to `out`.
    pub fn seal_frame(&mut self, body: &[u8], out: &mut Vec<u8>) -> Result<(), ControlError> {
        if self.seq == u64::MAX {
            return Err(ControlError::Exhausted);
        }
        let sealed = body.len() + TAG_LEN;
        let len = u32::try_from(sealed).map_err(|_| ControlError::TooLarge(sealed))?;
        let header = len.to_be_bytes();
        let start = out.len();
        out.extend_from_slice(&header);
        out.extend_from_slice(body);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                nonce(self.seq),
                Aad::from(header),
                &mut out[start + HEADER_LEN..],
            )
            .map_err(|_| ControlError::TooLarge(sealed))?;
        out.extend_from_slice(tag.as_ref());
        self.seq += 1;
        Ok(())
    }

    /// Frames sealed so far.
    pub fn sequence(&self) -> u64 {
        self.seq
    }
}

/// Incremental opener: push received bytes, pop opened bodies.
#[derive(Debug)]
pub struct ControlOpener {
    key: aead::LessSafeKey,
    seq: u64,
    max_body: usize,
    buf: Vec<u8>,
    error: Option<ControlError>,
}

impl ControlOpener {
    pub(crate) fn new(key: &KeyBytes, max_body: usize) -> Self {
        Self {
            key: aead_key(Cipher::ChaCha20Poly1305, key),
            seq: 0,
            max_body,
            buf: Vec::new(),
            error: None,
        }
    }

    /// Appends received bytes (dropped after an error).
    pub fn push(&mut self, data: &[u8]) {
        if self.error.is_none() {
            self.buf.extend_from_slice(data);
            if let Err(e) = self.check_header() {
                self.error = Some(e);
                self.buf = Vec::new();
            }
        }
    }

    /// Opens the next complete frame: `Ok(None)` if more bytes are needed.
    // Not an `Iterator`: it returns errors, and `Ok(None)` means "not yet".
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Vec<u8>>, ControlError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let Some(len) = self.check_header()? else {
            return Ok(None);
        };
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&self.buf[..HEADER_LEN]);
        let mut sealed: Vec<u8> = self.buf[HEADER_LEN..HEADER_LEN + len].to_vec();
        self.buf.drain(..HEADER_LEN + len);
        let opened = self
            .key
            .open_in_place(nonce(self.seq), Aad::from(header), &mut sealed)
            .map(|p| p.len());
        match opened {
            Ok(n) => {
                self.seq += 1;
                sealed.truncate(n);
                Ok(Some(sealed))
            }
            Err(_) => {
                self.error = Some(ControlError::Auth);
                self.buf = Vec::new();
                Err(ControlError::Auth)
            }
        }
    }

    /// Bytes buffered and not yet opened.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The sealed length announced by the buffered header, checked against the limits.
    fn check_header(&self) -> Result<Option<usize>, ControlError> {
        let Some(h) = self.buf.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
        if len < TAG_LEN {
            return Err(ControlError::TooShort(len));
        }
        if len > self.max_body + TAG_LEN {
            return Err(ControlError::TooLarge(len));
        }
        Ok(Some(len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (ControlSealer, ControlOpener) {
        let k = KeyBytes([9; 32]);
        (ControlSealer::new(&k), ControlOpener::new(&k, 1000))
    }

    fn sealed(s: &mut ControlSealer, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        s.seal_frame(body, &mut out).unwrap();
        out
    }

    #[test]
    fn round_trip_in_pieces() {
        let (mut s, mut o) = pair();
        let mut stream = sealed(&mut s, b"hello");
        stream.extend(sealed(&mut s, b""));
        stream.extend(sealed(&mut s, &[7; 1000]));
        assert_eq!(&stream[..4], &(5u32 + 16).to_be_bytes());
        assert!(!stream.windows(5).any(|w| w == b"hello"));
        for chunk in stream.chunks(3) {
            o.push(chunk);
        }
        assert_eq!(o.next().unwrap().unwrap(), b"hello");
        assert_eq!(o.next().unwrap().unwrap(), b"");
        assert_eq!(o.next().unwrap().unwrap(), vec![7; 1000]);
        assert_eq!(o.next(), Ok(None));
        assert_eq!(o.buffered(), 0);
    }

    #[test]
    fn replay_reorder_drop_and_forgery_fail() {
        let (mut s, _) = pair();
        let f0 = sealed(&mut s, b"zero");
        let f1 = sealed(&mut s, b"one");
        let f2 = sealed(&mut s, b"two");
        let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
            ("replay", vec![f0.clone(), f0.clone()]),
            ("reorder", vec![f1.clone(), f0.clone()]),
            ("drop", vec![f0.clone(), f2.clone()]),
            (
                "flip",
                vec![{
                    let mut f = f0.clone();
                    f[6] ^= 1;
                    f
                }],
            ),
            (
                "tag",
                vec![{
                    let mut f = f0.clone();
                    let n = f.len();
                    f[n - 1] ^= 0x80;
                    f
                }],
            ),
        ];
        for (what, frames) in cases {
            let (_, mut o) = pair();
            let mut result = Ok(None);
            for f in &frames {
                o.push(f);
                result = o.next();
                if result.is_err() {
                    break;
                }
            }
            assert_eq!(result, Err(ControlError::Auth), "{what}");
            // Sticky.
            o.push(&f0);
            assert_eq!(o.next(), Err(ControlError::Auth), "{what}");
        }
        // Another key (another connection, another direction) fails too.
        let mut o = ControlOpener::new(&KeyBytes([8; 32]), 1000);
        o.push(&f0);
        assert_eq!(o.next(), Err(ControlError::Auth));
    }

    #[test]
    fn length_limits() {
        let (_, mut o) = pair();
        o.push(&(1016u32 + 1).to_be_bytes());
        assert_eq!(o.next(), Err(ControlError::TooLarge(1017)));
        let (_, mut o) = pair();
        o.push(&15u32.to_be_bytes());
        assert_eq!(o.next(), Err(ControlError::TooShort(15)));
        let (_, mut o) = pair();
        o.push(&16u32.to_be_bytes());
        o.push(&[0; 16]);
        assert_eq!(o.next(), Err(ControlError::Auth));
    }

    #[test]
    fn exhausted_sequence_refuses() {
        let (mut s, _) = pair();
        s.seq = u64::MAX - 1;
        let mut out = Vec::new();
        s.seal_frame(b"last", &mut out).unwrap();
        assert_eq!(
            s.seal_frame(b"more", &mut out),
            Err(ControlError::Exhausted)
        );
    }
}
