//! Multi-host behaviour of the mesh in the deterministic simulator (ordinary user, no sockets).
//!
//! The 100-peer scenario is one test (converging a 100-peer full mesh from a chain is the costly
//! part, see `gossip_scale.rs` for its gossip volume), reused for the link-cut and broadcast checks.

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

fn converged(s: &Sim) -> bool {
    s.all_routable() && s.views_agree()
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

/// Everything observable about a run, for the determinism check.
fn fingerprint(sim: &Sim) -> String {
    let mut out = format!(
        "{:?} {:?} {:?}\n",
        sim.now(),
        sim.stats(),
        sim.gossip_totals()
    );
    for h in 0..sim.len() {
        let t = sim.mesh(h).topology();
        out += &format!("{h}: {:?} {:?}\n", sim.connected_peers(h), t.local());
    }
    out
}

#[test]
fn hundred_peer_chain_becomes_full_mesh_and_survives_cuts_and_partitions() {
    let n = 100;
    let mut sim = chain(n, 1, true);
    let t = sim.drive_until(|s| s.full_mesh() && converged(s), secs(120));
    let t = t.expect("100 peers did not converge to a full mesh within 120 s");
    assert!(t <= secs(30), "converged late: {t}");
    for h in 0..n {
        assert_eq!(sim.connected_peers(h).len(), n - 1);
    }
    assert_eq!(sim.stats().gossip_errors, 0);

    assert_broadcast_exactly_once(&mut sim, 1_000);

    // Cut single links (several, one at a time): every pair stays routable both ways.
    for (i, (a, b)) in [(0, 1), (17, 42), (98, 99), (5, 60)]
        .into_iter()
        .enumerate()
    {
        sim.cut(a, b);
        let deadline = sim.now() + Duration::from_secs(120);
        // The cut connection times out (idle timeout) and the topology reflects it.
        let t = sim.drive_until(
            |s| !s.connected_peers(a).contains(&b) && !s.connected_peers(b).contains(&a),
            deadline,
        );
        assert!(t.is_some(), "cut {a}-{b} never noticed");
        let deadline = sim.now() + Duration::from_secs(30);
        assert!(
            sim.drive_until(converged, deadline).is_some(),
            "cut {a}-{b}"
        );
        for x in 0..n {
            for y in 0..n {
                if x != y {
                    assert!(sim.routable(x, y), "cut {a}-{b}: {x} cannot reach {y}");
                }
            }
        }
        // a and b now talk through a third peer.
        assert_eq!(
            sim.mesh(a).routes().path(sim.name(b)).map(|p| p.len()),
            Some(2)
        );
        assert_broadcast_exactly_once(&mut sim, 10_000 * (i as u32 + 1));
        sim.heal();
    }
}

#[test]
fn partition_into_halves_then_heal() {
    // 40 peers (the 100-peer version works too but re-forming 2500 connections at once costs
    // minutes of CPU; see the report).
    let n = 40;
    let mut sim = chain(n, 2, true);
    let t = sim.drive_until(|s| s.full_mesh() && converged(s), secs(120));
    assert!(t.is_some(), "did not converge");
    // Partition into two halves for long enough that every cross connection times out and
    // garbage collection runs, then heal: routes converge again and nobody is lost for good.
    let half: Vec<usize> = (0..n / 2).collect();
    sim.partition(&half);
    let deadline = sim.now() + Duration::from_secs(120);
    let split = sim.drive_until(
        |s| (0..n).all(|h| s.mesh(h).routes().reachable().count() == n / 2 - 1),
        deadline,
    );
    assert!(split.is_some(), "partition never noticed");
    for h in 0..n {
        let other_side = if h < n / 2 { n / 2 } else { 0 };
        assert!(!sim.routable(h, other_side));
    }
    sim.run_until(sim.now() + Duration::from_secs(10));
    sim.heal();
    let deadline = sim.now() + Duration::from_secs(600);
    let healed = sim.drive_until(|s| s.full_mesh() && converged(s), deadline);
    assert!(
        healed.is_some(),
        "did not reconverge after the partition healed"
    );
    for h in 0..n {
        assert_eq!(sim.mesh(h).topology().len(), n, "host {h} lost peers");
    }
    assert_broadcast_exactly_once(&mut sim, 100_000);
}

#[test]
fn twelve_peer_chain_without_discovery_stays_a_chain_but_routes_multi_hop() {
    let n = 12;
    let mut sim = chain(n, 3, false);
    let t = sim.drive_until(converged, secs(60));
    assert!(t.is_some(), "did not converge");
    sim.run_until(sim.now() + Duration::from_secs(30));
    for h in 0..n {
        let expected: Vec<usize> = [h.checked_sub(1), (h + 1 < n).then_some(h + 1)]
            .into_iter()
            .flatten()
            .collect();
        assert_eq!(sim.connected_peers(h), expected, "host {h}");
    }
    assert_eq!(
        sim.mesh(0).routes().path(sim.name(11)).map(|p| p.len()),
        Some(11)
    );
    assert_broadcast_exactly_once(&mut sim, 1);
    // Unicast end to end: 11 broadcast above, so 0 has learned its MAC; the frame is relayed
    // by 1..=10 (by short id, not MAC) and delivered once, at 11 only.
    sim.unicast(0, 11, 77);
    sim.run_until(sim.now() + Duration::from_secs(1));
    for h in 0..n {
        assert_eq!(sim.received(h, 77), u32::from(h == 11), "host {h}");
    }
    assert!(sim.engine(5).counters().relayed_datagrams > 0);
}

/// `Sim::disconnect` is a close the node hears of at once (as when it detects the link is
/// down): its record drops the connection right away, and the other end's within a one-way
/// latency (the FIN), not at some later timer of the connection.
#[test]
fn disconnect_closes_at_once_at_both_ends() {
    let mut sim = chain(3, 4, false);
    assert!(sim.drive_until(converged, secs(30)).is_some());
    sim.run_until(sim.now() + Duration::from_secs(10));
    let (n0, n1) = (sim.name(0), sim.name(1));
    let lists = |s: &Sim, h: usize, remote| {
        s.mesh(h)
            .topology()
            .local()
            .connections
            .iter()
            .any(|c| c.remote == remote)
    };
    let v1 = sim.mesh(1).topology().local().version;
    sim.disconnect(1, 0);
    assert_eq!(sim.connected_peers(1), vec![2]);
    assert!(!lists(&sim, 1, n0));
    assert!(sim.mesh(1).topology().local().version > v1);
    // Latencies are at most 20 ms one way.
    sim.run_until(sim.now() + Duration::from_millis(25));
    assert_eq!(sim.connected_peers(0), Vec::<usize>::new());
    assert!(!lists(&sim, 0, n1));
}

#[test]
fn same_seed_same_run_other_seed_other_run() {
    let run = |seed| {
        let mut sim = chain(20, seed, true);
        let t = sim.drive_until(|s| s.full_mesh() && converged(s), secs(60));
        assert!(t.is_some());
        sim.cut(3, 4);
        sim.run_until(sim.now() + Duration::from_secs(45));
        sim.heal();
        sim.run_until(sim.now() + Duration::from_secs(30));
        fingerprint(&sim)
    };
    let a = run(11);
    assert_eq!(a, run(11));
    assert_ne!(a, run(12));
}

#[test]
fn forget_stops_redialling_and_replace_switches_targets() {
    let mut sim = Sim::new(4, config(5, false));
    sim.add_targets(1, &[0]);
    sim.add_targets(2, &[1]);
    let t = sim.drive_until(|s| s.connected_peers(1) == vec![0, 2], secs(30));
    assert!(t.is_some());
    // Replace 2's targets: it dials 3 as well; the live connection to 1 stays.
    sim.replace_targets(2, &[3]);
    let t = sim.drive_until(
        |s| s.connected_peers(2) == vec![1, 3],
        sim.now() + Duration::from_secs(30),
    );
    assert!(t.is_some());
    // 1 forgets 0 and the link breaks: 1 never redials 0.
    sim.forget_targets(1, &[0]);
    sim.cut(0, 1);
    sim.run_until(sim.now() + Duration::from_secs(60));
    sim.heal();
    let dials = sim.stats().dials;
    sim.run_until(sim.now() + Duration::from_secs(600));
    assert!(!sim.connected_peers(1).contains(&0));
    assert_eq!(sim.stats().dials, dials, "something redialled");
    assert!(sim.connmaker(1).targets().is_empty());
}

/// Sends a unicast test frame from `from` to `to` every 100 ms for `d`; returns, for each
/// frame, (time sent, delivered).
fn stream(
    sim: &mut Sim,
    from: usize,
    to: usize,
    d: Duration,
    tag: &mut u32,
) -> Vec<(Instant, bool)> {
    let mut sent = Vec::new();
    let end = sim.now() + d;
    while sim.now() < end {
        *tag += 1;
        sim.unicast(from, to, *tag);
        sent.push((sim.now(), *tag));
        sim.run_until(sim.now() + Duration::from_millis(100));
    }
    // Let the last frames arrive.
    sim.run_until(sim.now() + Duration::from_millis(200));
    sent.into_iter()
        .map(|(t, tag)| (t, sim.received(to, tag) == 1))
        .collect()
}

#[test]
fn cutting_a_link_under_traffic_reroutes_within_3_s_and_heals_back() {
    let n = 3;
    let mut sim = Sim::new(n, config(4, false));
    sim.add_targets(1, &[0]);
    sim.add_targets(2, &[0, 1]);
    let t = sim.drive_until(|s| s.full_mesh() && converged(s), secs(30));
    assert!(t.is_some(), "did not converge");
    // Everyone learns everyone's MAC.
    assert_broadcast_exactly_once(&mut sim, 1);
    let mut tag = 100;
    let before = stream(&mut sim, 0, 2, Duration::from_secs(1), &mut tag);
    assert!(before.iter().all(|&(_, ok)| ok), "direct path lost frames");
    let relayed = sim.engine(1).counters().relayed_datagrams;

    // Cut 0-2 (data and control) while 0 keeps sending to 2.
    sim.cut(0, 2);
    let cut_at = sim.now();
    let during = stream(&mut sim, 0, 2, Duration::from_secs(6), &mut tag);
    let first_ok = during
        .iter()
        .position(|&(_, ok)| ok)
        .expect("traffic never came back after the cut");
    let back_after = during[first_ok].0.saturating_duration_since(cut_at);
    eprintln!("cut 0-2 under traffic: frames delivered again {back_after:?} after the cut");
    assert!(
        back_after <= Duration::from_secs(3),
        "rerouted after {back_after:?}"
    );
    assert!(
        during[first_ok..].iter().all(|&(_, ok)| ok),
        "frames lost after the reroute"
    );
    assert!(
        sim.engine(1).counters().relayed_datagrams > relayed,
        "not relayed by host 1"
    );
    // The control connection may still be up: the data path decided.
    assert_eq!(
        sim.mesh(0).routes().path(sim.name(2)).map(|p| p.len()),
        Some(2)
    );

    // Heal: back on the direct path within 3 s, no frame lost on the way.
    sim.heal();
    let healed_at = sim.now();
    let t = sim.drive_until(
        |s| s.mesh(0).routes().path(s.name(2)).map(|p| p.len()) == Some(1),
        healed_at + Duration::from_secs(10),
    );
    let t = t.expect("never back on the direct path");
    eprintln!(
        "healed: direct again after {:?}",
        t.saturating_duration_since(healed_at)
    );
    assert!(
        t.saturating_duration_since(healed_at) <= Duration::from_secs(3),
        "direct again after {:?}",
        t.saturating_duration_since(healed_at)
    );
    let relayed = sim.engine(1).counters().relayed_datagrams;
    let after = stream(&mut sim, 0, 2, Duration::from_secs(1), &mut tag);
    assert!(after.iter().all(|&(_, ok)| ok));
    assert_eq!(
        sim.engine(1).counters().relayed_datagrams,
        relayed,
        "still relayed"
    );
}

#[test]
fn five_percent_datagram_loss_does_not_flap_paths() {
    let n = 5;
    let mut config = config(5, true);
    config.datagram_loss = 0.05;
    let mut sim = Sim::new(n, config);
    for i in 1..n {
        sim.add_targets(i, &[i - 1]);
    }
    let t = sim.drive_until(|s| s.full_mesh() && converged(s), secs(60));
    assert!(t.is_some(), "did not converge");
    sim.run_until(sim.now() + Duration::from_secs(120));
    assert_eq!(sim.stats().paths_down, 0, "a path flapped under 5 % loss");
    assert!(sim.full_mesh());
}
