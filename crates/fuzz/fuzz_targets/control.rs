//! Fuzz `weft_wire::control::FrameDecoder`: arbitrary bytes, pushed in arbitrary chunks.
//!
//! Input layout: the first byte seeds the chunk sizes, the rest is the byte stream. Checks that
//! the decoder never panics, that its error is sticky, and that every message it yields
//! re-encodes into a frame that decodes to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_wire::control::{FrameDecoder, encode_frame};

fuzz_target!(|data: &[u8]| {
    let Some((&seed, mut rest)) = data.split_first() else {
        return;
    };
    let mut dec = FrameDecoder::new();
    let mut error = None;
    let mut state = u32::from(seed) | 1;
    while !rest.is_empty() {
        // A cheap LCG picks chunk sizes 1..=64 from the seed.
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let size = ((state >> 16) as usize % 64 + 1).min(rest.len());
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        dec.push(chunk);
        loop {
            match dec.next() {
                Ok(Some(msg)) => {
                    assert!(error.is_none(), "message after error");
                    let mut frame = Vec::new();
                    encode_frame(&msg, &mut frame);
                    let mut again = FrameDecoder::new();
                    again.push(&frame);
                    assert_eq!(again.next(), Ok(Some(msg)));
                }
                Ok(None) => break,
                Err(e) => {
                    if let Some(prev) = error {
                        assert_eq!(prev, e, "error changed");
                    }
                    error = Some(e);
                    assert_eq!(dec.next(), Err(e), "error not sticky");
                    break;
                }
            }
        }
    }
});
