use std::time::Duration;
use weft_mesh::{ConnMakerConfig, GossipConfig, Instant};
use weft_sim::{Sim, SimConfig};

#[test]
fn debug_misses() {
    let n = 30;
    let cfg = SimConfig {
        seed: 6,
        connmaker: ConnMakerConfig { discovery: true, ..ConnMakerConfig::default() },
        gossip: GossipConfig { settle_delay: Duration::from_secs(100), ..Default::default() },
        ..SimConfig::default()
    };
    let mut sim = Sim::new(n, cfg);
    for i in 1..n {
        sim.add_targets(i, &[i - 1]);
    }
    sim.run_until(Instant::from_millis(5000));
    println!("full_mesh {}", sim.full_mesh());
    for h in 0..n {
        for x in 0..n {
            let own = sim.mesh(x).topology().local().clone();
            let seen = sim.mesh(h).topology().peer(sim.name(x)).map(|p| p.version).unwrap_or(0);
            if seen != own.version {
                let conn = sim.mesh(h).topology().local().connection(sim.name(x)).is_some();
                // who are h's neighbours that are x's neighbours
                println!("host {h} has {x}@{seen}, current {}; direct {conn}", own.version);
            }
        }
    }
}
