//! Scale probe: `n` peers with a connection limit and discovery from a random start (as the
//! 1000-peer gossip_scale test), printing per interval what the connections and gossip did.
//!
//! `cargo run --release -p weft-sim --example scale_probe -- [peers] [conn_limit] [max_virtual_s]`

use std::time::{Duration, Instant as WallInstant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use weft_mesh::{ConnMakerConfig, Instant};
use weft_sim::{Sim, SimConfig};

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = args.first().copied().unwrap_or(1000) as usize;
    let limit = args.get(1).copied().unwrap_or(30) as usize;
    let max_s = args.get(2).copied().unwrap_or(20);
    let cfg = SimConfig {
        seed: 9,
        connmaker: ConnMakerConfig {
            discovery: true,
            conn_limit: limit,
            ..ConnMakerConfig::default()
        },
        check_every: Duration::from_millis(50),
        ..SimConfig::default()
    };
    let wall = WallInstant::now();
    let mut sim = Sim::new(n, cfg);
    let mut rng = StdRng::seed_from_u64(9);
    for i in 1..n {
        let j = rng.random_range(0..i);
        sim.add_targets(i, &[j]);
    }
    println!(
        "t | events | dials refused failed opened ready closed | dup hsfail | gossip: total push announce digest answer request | versions(sum,max) conns(avg,max) | routable views | wall"
    );
    let step = Duration::from_millis(500);
    let mut prev = sim.stats();
    let mut prevg = sim.gossip_totals();
    let mut t = Instant::ZERO;
    let mut dup0 = 0;
    let mut hs0 = 0;
    while t < Instant::from_duration(Duration::from_secs(max_s)) {
        t += step;
        sim.run_until(t);
        let s = sim.stats();
        let g = sim.gossip_totals();
        let (mut dup, mut hs) = (0, 0);
        let mut vsum = 0;
        let mut vmax = 0;
        let mut csum = 0;
        let mut cmax = 0;
        for h in 0..n {
            let ns = sim.node(h).stats();
            dup += ns.duplicates;
            hs += ns.handshake_failures;
            let v = sim.mesh(h).topology().local().version;
            vsum += v;
            vmax = vmax.max(v);
            let c = sim.node(h).connection_count();
            csum += c;
            cmax = cmax.max(c);
        }
        println!(
            "{:.1} | {} | {} {} {} {} {} {} | {} {} | {} {} {} {} {} {} | {} {} {:.1} {} | {} {} | {:.1}",
            t.since_epoch().as_secs_f64(),
            s.events - prev.events,
            s.dials - prev.dials,
            s.dials_refused - prev.dials_refused,
            s.dials_failed - prev.dials_failed,
            s.connections_opened - prev.connections_opened,
            s.connections_ready - prev.connections_ready,
            s.connections_closed - prev.connections_closed,
            dup - dup0,
            hs - hs0,
            g.bytes_sent - prevg.bytes_sent,
            g.push_bytes_sent - prevg.push_bytes_sent,
            g.announce_bytes_sent - prevg.announce_bytes_sent,
            g.digest_bytes_sent - prevg.digest_bytes_sent,
            g.answer_bytes_sent - prevg.answer_bytes_sent,
            g.request_bytes_sent - prevg.request_bytes_sent,
            vsum,
            vmax,
            csum as f64 / n as f64,
            cmax,
            sim.all_routable(),
            sim.views_agree(),
            wall.elapsed().as_secs_f64()
        );
        prev = s;
        prevg = g;
        dup0 = dup;
        hs0 = hs;
        if sim.all_routable() && sim.views_agree() {
            println!(
                "converged by {t}; full state {} B",
                sim.mesh(0).full_state_size()
            );
            break;
        }
    }
    println!("{:?}", sim.gossip_totals());
}
