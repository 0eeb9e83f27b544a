//! Convergence bench: virtual time and gossip volume for a mesh to converge, by size.
//!
//! `cargo run --release -p weft-sim --example convergence [sizes...]` (default 10 100 1000).
//!
//! Every host i > 0 starts with one target. Up to 100 peers: host i-1 (a chain), discovery on,
//! so the mesh must discover its way to a full mesh (every pair connected directly).
//! Above 100 peers a full mesh is 500k connections, so the pattern is sparser: host i targets
//! host i-1 and host i/2 (a chain plus a binary-tree shortcut), discovery off, and convergence
//! means every host has a route to every other host and all topology views agree. The run is
//! capped at 600 s of virtual time.

use std::time::{Duration, Instant as WallInstant};

use weft_mesh::{ConnMakerConfig, Instant};
use weft_sim::{Sim, SimConfig};

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![10, 100, 1000]
    } else {
        sizes
    };
    println!(
        "| peers | pattern | converged (virtual s) | gossip bytes total | gossip bytes/peer | gossip msgs | msgs/peer | control bytes | wall s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for n in sizes {
        let full = n <= 100;
        let config = SimConfig {
            seed: 42,
            connmaker: ConnMakerConfig {
                discovery: full,
                ..ConnMakerConfig::default()
            },
            check_every: if n > 200 {
                Duration::from_millis(500)
            } else {
                Duration::from_millis(100)
            },
            ..SimConfig::default()
        };
        let wall = WallInstant::now();
        let mut sim = Sim::new(n, config);
        for i in 1..n {
            if full {
                sim.add_targets(i, &[i - 1]);
            } else if i / 2 != i - 1 {
                sim.add_targets(i, &[i - 1, i / 2]);
            } else {
                sim.add_targets(i, &[i - 1]);
            }
        }
        let cap = Instant::from_duration(Duration::from_secs(600));
        let t = sim.drive_until(
            |s| s.all_routable() && s.views_agree() && (!full || s.full_mesh()),
            cap,
        );
        let (bytes, msgs) = sim.gossip_totals();
        let converged = t.map_or("not within 600".to_owned(), |t| {
            format!("{:.2}", t.since_epoch().as_secs_f64())
        });
        println!(
            "| {n} | {} | {converged} | {bytes} | {} | {msgs} | {} | {} | {:.1} |",
            if full {
                "chain, discovery"
            } else {
                "chain+tree, no discovery"
            },
            bytes / n as u64,
            msgs / n as u64,
            sim.stats().control_bytes,
            wall.elapsed().as_secs_f64()
        );
    }
}
