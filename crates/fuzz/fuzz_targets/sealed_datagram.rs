//! Fuzz the data plane's sealed-datagram opener (`weft_crypto::data::RxSession::open`).
//!
//! Byte 0: bit 0 picks the cipher; bit 1 = 0 opens the rest as a received datagram; bit 1 = 1
//! seals the first half of the rest as a payload, applies the second half as (position, xor)
//! mutations, and opens the result. Bits 2..5 move the sender's counter forward, bits 6..7 pick
//! the sender's stream, which goes in the header's last byte (weft's stream byte); the opener is
//! given the stream the (possibly mutated) header says, as the data plane does. Checks: no
//! panic; an opened payload lies inside the datagram; an unmodified datagram opens to its payload
//! exactly once (a second open is a replay); a modified one never opens.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_crypto::Cipher;
use weft_crypto::data::{COUNTER_LEN, OVERHEAD, OpenError};
use weft_crypto::handshake::DataKeys;

const H: usize = 8;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let cipher = if mode & 1 == 0 {
        Cipher::Aes256Gcm
    } else {
        Cipher::ChaCha20Poly1305
    };
    let stream = mode >> 6;
    let (mut tx, _) = DataKeys::from_raw(cipher, [1; 32], [2; 32]).sessions(stream);
    let (_, mut rx) = DataKeys::from_raw(cipher, [2; 32], [1; 32]).sessions(0);
    if mode & 2 == 0 {
        let mut buf = rest.to_vec();
        let s = buf.get(H - 1).copied().unwrap_or(0);
        if let Ok(r) = rx.open(&mut buf, H, s) {
            assert!(r.start == H + COUNTER_LEN && r.end <= buf.len());
        }
        return;
    }
    tx.skip_to(u64::from((mode >> 2) & 15) << 20);
    let (payload, mutations) = rest.split_at(rest.len() / 2);
    let mut d = vec![0u8; H + OVERHEAD + payload.len()];
    d[..H].copy_from_slice(b"\x08\0\0\0\0\x01\x20\0");
    d[H - 1] = stream;
    d[H + COUNTER_LEN..H + COUNTER_LEN + payload.len()].copy_from_slice(payload);
    let n = tx.seal(&mut d, H, payload.len()).expect("room for the seal");
    assert_eq!(n, d.len());
    let original = d.clone();
    for pair in mutations.chunks_exact(2) {
        let at = usize::from(pair[0]) % d.len();
        d[at] ^= pair[1];
    }
    let modified = d != original;
    let mut copy = d.clone();
    let s = d[H - 1];
    match rx.open(&mut d, H, s) {
        Ok(r) => {
            assert!(!modified, "a modified datagram opened");
            assert_eq!(&d[r], payload);
            assert_eq!(rx.open(&mut copy, H, s), Err(OpenError::Replay));
        }
        Err(_) => assert!(modified, "an authentic datagram was refused"),
    }
});
