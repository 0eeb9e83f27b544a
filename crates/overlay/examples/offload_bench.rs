//! Micro benchmark of the TAP offload logic: how fast one core splits 64 KiB TCP super-frames
//! into 1448-byte segments, and coalesces such segments back, with checksums computed and
//! verified, then with checksums left partial between two routers.
//!
//!     cargo run --release -p weft-overlay --example offload_bench [SECONDS]
//!
//! Reports payload throughput in GB/s (10^9 bytes per second) and frames per second. The
//! numbers bound what offloads cost per byte; the TAP and UDP syscalls are not included.

use std::hint::black_box;
use std::time::{Duration, Instant};

use weft_overlay::offload::{Coalescer, Csum, GsoType, Push, Segmenter, VnetHdr};

const MSS: usize = 1448;
const L3: usize = 14;
const L4: usize = L3 + 20;
const HDR: usize = L4 + 32;

/// A 64 KiB TCP/IPv4 super-frame as the kernel hands it over (NEEDS_CSUM, TSO4).
fn super_frame() -> (VnetHdr, Vec<u8>) {
    let payload = 45 * MSS;
    let mut f = vec![0u8; HDR + payload];
    f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[L3..L4];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + 32 + payload) as u16).to_be_bytes());
    ip[6] = 0x40;
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&[10, 32, 0, 1]);
    ip[16..20].copy_from_slice(&[10, 32, 0, 2]);
    let tcp = &mut f[L4..HDR];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&5201u16.to_be_bytes());
    tcp[12] = 8 << 4;
    tcp[13] = 0x18;
    tcp[14..16].copy_from_slice(&512u16.to_be_bytes());
    tcp[20..32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
    for (i, b) in f[HDR..].iter_mut().enumerate() {
        *b = (i * 7 + 3) as u8;
    }
    let hdr = VnetHdr {
        flags: VnetHdr::NEEDS_CSUM,
        gso_type: GsoType::TcpV4,
        ecn: false,
        hdr_len: HDR as u16,
        gso_size: MSS as u16,
        csum_start: L4 as u16,
        csum_offset: 16,
    };
    (hdr, f)
}

fn report(what: &str, bytes: u64, frames: u64, elapsed: Duration) {
    let secs = elapsed.as_secs_f64();
    println!(
        "{what:<20} {:6.2} GB/s payload  {:7.2} M segments/s  ({:.2} Gbit/s)",
        bytes as f64 / secs / 1e9,
        frames as f64 / secs / 1e6,
        bytes as f64 * 8.0 / secs / 1e9,
    );
}

fn main() {
    let seconds: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let budget = Duration::from_secs_f64(seconds);
    for csum in [Csum::Complete, Csum::Partial] {
        run(budget, csum);
    }
}

/// Segments and coalesces with checksums computed and verified (`Complete`), or left partial
/// between the two routers (`Partial`).
fn run(budget: Duration, csum: Csum) {
    let (hdr, frame) = super_frame();
    let payload = (frame.len() - HDR) as u64;
    let partial = csum == Csum::Partial;
    let segmenter = || {
        let mut s = Segmenter::new(black_box(hdr), black_box(&frame)).expect("valid super-frame");
        if partial {
            assert!(s.leave_checksums_partial());
        }
        s
    };

    // Segmenting.
    let mut out = vec![0u8; 65536];
    let mut segments: Vec<Vec<u8>> = Vec::new();
    {
        let mut s = segmenter();
        while let Some(n) = s.next_into(&mut out) {
            segments.push(out[..n].to_vec());
        }
    }
    let (mut bytes, mut frames) = (0u64, 0u64);
    let start = Instant::now();
    while start.elapsed() < budget {
        for _ in 0..100 {
            let mut s = segmenter();
            while let Some(n) = s.next_into(&mut out) {
                black_box(&out[..n]);
                frames += 1;
            }
            bytes += payload;
        }
    }
    report(
        &format!("segment ({csum:?})"),
        bytes,
        frames,
        start.elapsed(),
    );

    // Coalescing the same segments back (checksum verification included when complete).
    let mut c = Coalescer::new(Coalescer::DEFAULT_MAX_LEN);
    let (mut bytes, mut frames) = (0u64, 0u64);
    let start = Instant::now();
    while start.elapsed() < budget {
        for _ in 0..100 {
            for seg in &segments {
                let r = c.push(black_box(seg), csum);
                assert_eq!(r, Push::Merged);
                frames += 1;
            }
            let taken = c.take().expect("one super-frame").len();
            black_box(taken);
            bytes += payload;
        }
    }
    report(
        &format!("coalesce ({csum:?})"),
        bytes,
        frames,
        start.elapsed(),
    );
}
