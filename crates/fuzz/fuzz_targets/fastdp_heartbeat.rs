//! Fuzz the kernel fast path's heartbeat parser (`Heartbeat::parse_fastdp`): whatever frame
//! arrives on a fast-path device's socket, it must not panic; a frame taken for a heartbeat
//! must be at least as long as the heartbeat says, a probe exactly as long, and writing the
//! parsed heartbeat again must parse back to the same.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weft_overlay::heartbeat::{Heartbeat, Probe};

fuzz_target!(|data: &[u8]| {
    let Some(hb) = Heartbeat::parse_fastdp(data) else {
        return;
    };
    assert!(data.len() >= hb.frame_len(), "shorter than the heartbeat it holds");
    if let Some(Probe::Probe(n)) = hb.probe {
        assert_eq!(usize::from(n), data.len(), "a probe arrived whole");
    }
    let src: [u8; 6] = data[6..12].try_into().unwrap();
    let mut buf = vec![0u8; hb.frame_len()];
    let n = hb.emit_fastdp(src, &mut buf);
    assert_eq!(Heartbeat::parse_fastdp(&buf[..n]), Some(hb));
    // Never mistaken for a sleeve heartbeat.
    assert_eq!(Heartbeat::parse(data), None);
});
