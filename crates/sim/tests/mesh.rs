//! Multi-host behaviour of the mesh in the deterministic simulator (ordinary user, no sockets).

use std::time::Duration;

use weft_mesh::{ConnMakerConfig, Instant};
use weft_sim::{Sim, SimConfig};

fn secs(s: u64) -> Instant {
    Instant::from_duration(Duration::from_secs(s))
}

fn config(seed: u64, discovery: bool) -> SimConfig {
    SimConfig {
        seed,
        control_loss: 0.01,
        connmaker: ConnMakerConfig {
            discovery,
            ..ConnMakerConfig::default()
        },
        ..SimConfig::default()
    }
}

/// `n` hosts where host i targets host i-1.
fn chain(n: usize, seed: u64, discovery: bool) -> Sim {
    let mut sim = Sim::new(n, config(seed, discovery));
    for i in 1..n {
        sim.add_targets(i, &[i - 1]);
    }
    sim
}

/// Broadcasts from every host; each host must receive each other host's frame exactly once.
fn assert_broadcast_exactly_once(sim: &mut Sim, tag_base: u32) {
    let n = sim.len();
    for s in 0..n {
        sim.broadcast(s, tag_base + s as u32);
    }
    let end = sim.now() + Duration::from_secs(2);
    sim.run_until(end);
    for s in 0..n {
        for h in 0..n {
            let expected = u32::from(h != s);
            assert_eq!(
                sim.received(h, tag_base + s as u32),
                expected,
                "broadcast from {s} at {h}"
            );
        }
    }
}

#[test]
fn small_chain_converges() {
    let mut sim = chain(3, 7, true);
    let t = sim.drive_until(
        |s| s.full_mesh() && s.views_agree() && s.all_routable(),
        secs(60),
    );
    assert!(t.is_some(), "did not converge");
}
