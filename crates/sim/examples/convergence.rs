//! Convergence bench: virtual time and gossip volume for a mesh to converge, by size.
//!
//! `cargo run --release -p weft-sim --example convergence [sizes...]` (default 10 100 1000).
//!
//! Every host i > 0 starts with one target. Up to 100 peers: host i-1 (a chain), discovery on,
//! so the mesh must discover its way to a full mesh (every pair connected directly).
//! Above 100 peers a full mesh is 500k connections, so the pattern is sparser: host i targets
//! host i-1 and host i/2 (a chain plus a binary-tree shortcut), discovery off, and convergence
//! means every host has a route to every other host and all topology views agree. The run is
//! capped at 600 s of virtual time. Seed 42, link latencies 1–20 ms, no loss. The environment
//! variable `BATCH_MS` overrides the gossip batch delay (default 100 ms; Weave uses 1000).

use std::time::{Duration, Instant as WallInstant};

use weft_mesh::{ConnMakerConfig, GossipConfig, Instant};
use weft_sim::{Sim, SimConfig};

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let batch_ms = std::env::var("BATCH_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let sizes = if sizes.is_empty() {
        vec![10, 100, 1000]
    } else {
        sizes
    };
    println!(
        "| peers | pattern | converged (virtual s) | gossip bytes total | gossip bytes/peer | of which full state | gossip msgs | msgs/peer | wall s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for n in sizes {
        let full = n <= 100;
        let config = SimConfig {
            seed: 42,
            gossip: GossipConfig {
                batch_delay: Duration::from_millis(batch_ms),
                ..GossipConfig::default()
            },
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
        let g = sim.gossip_totals();
        let (bytes, msgs) = (g.bytes_sent, g.messages_sent);
        let converged = t.map_or("not within 600".to_owned(), |t| {
            format!("{:.2}", t.since_epoch().as_secs_f64())
        });
        println!(
            "| {n} | {} | {converged} | {bytes} | {} | {} | {msgs} | {} | {:.1} |",
            if full {
                "chain, discovery"
            } else {
                "chain+tree, no discovery"
            },
            bytes / n as u64,
            g.full_bytes_sent,
            msgs / n as u64,
            wall.elapsed().as_secs_f64()
        );
    }
}
