//! Fuzz the sealed control-frame opener (`weft_crypto::control::ControlOpener`) with keys from a
//! real key agreement.
//!
//! Byte 0: bit 0 = 0 pushes the rest as received bytes (chunked by byte 1); bit 0 = 1 seals the
//! rest as frames (split at every 0xff byte), flips the bit given by byte 1 if bit 1 is set, and
//! pushes the stream. Checks: no panic; unmodified frames open to exactly what was sealed, in
//! order; a modified stream never opens a frame that differs from what was sealed, and once an
//! error is returned it stays.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_crypto::Psk;
use weft_crypto::handshake::{Ephemeral, KeyHello, Transcript, derive};

fuzz_target!(|data: &[u8]| {
    let [mode, knob, rest @ ..] = data else {
        return;
    };
    let psk = Psk::from_bytes([5; 32]);
    let (ea, eb) = (Ephemeral::from_random([1; 32]), Ephemeral::from_random([2; 32]));
    let kh = |e: &Ephemeral| KeyHello {
        encrypted: true,
        trusts_peer: false,
        aes: false,
        public: e.public(),
    };
    let (ka, kb) = (kh(&ea), kh(&eb));
    let (ba, bb) = (ka.emit(), kb.emit());
    let hello = *b"weft\x02\x02";
    let t = Transcript {
        hello_out: &hello,
        hello_in: &hello,
        key_out: &ba,
        key_in: &bb,
    };
    let a = derive(true, &psk, &ea, &kb, &ka, &t).expect("valid keys");
    let b = derive(false, &psk, &eb, &ka, &kb, &t).expect("valid keys");
    let (mut sealer, _) = a.control(1 << 16);
    let (_, mut opener) = b.control(1 << 16);
    let chunk = usize::from(*knob).max(1);
    if mode & 1 == 0 {
        let mut failed = None;
        for piece in rest.chunks(chunk) {
            opener.push(piece);
            loop {
                match opener.next() {
                    Ok(Some(body)) => {
                        assert!(failed.is_none(), "opened a frame after an error");
                        assert!(body.len() <= 1 << 16);
                    }
                    Ok(None) => {
                        assert!(failed.is_none(), "an error went away");
                        break;
                    }
                    Err(e) => {
                        assert!(failed.is_none_or(|f| f == e), "errors are sticky");
                        failed = Some(e);
                        break;
                    }
                }
            }
        }
        return;
    }
    let bodies: Vec<&[u8]> = rest.split(|&b| b == 0xff).collect();
    let mut stream = Vec::new();
    for body in &bodies {
        sealer.seal_frame(body, &mut stream).expect("sealable");
    }
    let modified = mode & 2 == 2 && !stream.is_empty();
    if modified {
        let bit = usize::from(*knob) % (stream.len() * 8);
        stream[bit / 8] ^= 1 << (bit % 8);
    }
    opener.push(&stream);
    let mut opened = Vec::new();
    while let Ok(Some(body)) = opener.next() {
        opened.push(body);
    }
    for (got, want) in opened.iter().zip(&bodies) {
        assert_eq!(got.as_slice(), *want, "a frame opened to something else");
    }
    if !modified {
        assert_eq!(opened.len(), bodies.len());
    } else {
        assert!(opened.len() < bodies.len(), "a modified stream opened completely");
    }
});
