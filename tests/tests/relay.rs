//! Integration tests (root, network namespaces): relaying through a third peer.
//!
//! Hosts A–B–C where the underlay between A and C drops everything (iptables in both host
//! namespaces): containers on A and C still ping each other and move 50 MB intact, because B
//! forwards the datagrams (VNI = source and destination short ids). A's status shows C as
//! reached via B, and B's `relayed_datagrams` counter grows.
//!
//! Also: when the underlay between A and C breaks under an established direct connection, the
//! connection times out (control idle timeout, 30 s; Weave allows 60 s) and A–C traffic moves
//! to the path through B.
//!
//! And: two peers starting with the same short id (A and C, stored in their state dirs) end
//! up with distinct ids that all peers agree on (the larger name moves), and relaying through
//! B still works with the resolved ids.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use weft_tests::mesh::{
    block_underlay, connections, lines_for, peer_entry, transfer_intact, wait_established_with,
};
use weft_tests::{Host, run_test, wait_until};

/// Waits until `h`'s `weft status connections` has a line for `target`'s address that names
/// `via <via_name>(...)`; returns that line.
fn wait_via_line(h: &Host, target: &Host, via_name: &str, timeout: Duration) -> Result<String> {
    wait_until(
        &format!(
            "host {} to show host {} ({}) reached via {via_name}",
            h.n(),
            target.n(),
            target.addr()
        ),
        timeout,
        Duration::from_millis(200),
        || {
            let (conns, text) = connections(h)?;
            let want = format!("via {via_name}(");
            lines_for(&conns, target.addr())
                .into_iter()
                .find(|c| c.line.contains(&want))
                .map(|c| c.line.clone())
                .with_context(|| format!("`weft status connections` printed:\n{text}"))
        },
    )
}

#[test]
fn a_and_c_talk_through_b_when_underlay_is_blocked() {
    run_test("relay", |net| {
        let a = net.host(1)?;
        let b = net.host(2)?;
        let c = net.host(3)?;
        block_underlay(&a, &c)?;
        // The block really holds on the underlay.
        let out = a.exec(&["ping", "-n", "-c", "1", "-W", "1", &c.addr().to_string()])?;
        ensure!(
            !out.success(),
            "A reaches C's underlay address despite the block:\n{out}"
        );

        a.launch(&[])?;
        b.launch(&[&a])?;
        c.launch(&[&b])?;
        wait_established_with(&a, &b, Duration::from_secs(20))?;
        wait_established_with(&c, &b, Duration::from_secs(20))?;

        let ca = a.container("ca", "10.32.0.1/12")?;
        let cc = c.container("cc", "10.32.0.3/12")?;
        let t0 = Instant::now();
        ca.wait_ping(cc.ip(), Duration::from_secs(30))?;
        cc.wait_ping(ca.ip(), Duration::from_secs(10))?;
        eprintln!("A <-> C ping through B after {:.1?}", t0.elapsed());

        // No direct connection can exist between A and C.
        let (conns, text) = connections(&a)?;
        ensure!(
            !lines_for(&conns, c.addr())
                .iter()
                .any(|l| l.state == "established" || l.state == "pending"),
            "A lists a live connection to C although the underlay is blocked:\n{text}"
        );

        // Status on A: C reached via B, in the text view (discovery makes C a target of A)
        // and in the JSON peers list.
        let b_name = b.peer_name()?;
        let c_name = c.peer_name()?;
        let line = wait_via_line(&a, &c, &b_name, Duration::from_secs(15))?;
        eprintln!("A's line for C: {line}");
        let v = a.status_json()?;
        let pc = peer_entry(&v, &c_name)
            .with_context(|| format!("C ({c_name}) missing from A's peers: {}", v["peers"]))?;
        let path = pc["path"].as_str().unwrap_or("");
        ensure!(
            path.starts_with("via ") && path.contains(&b_name),
            "A's path to C is {path:?}, expected \"via {b_name}(host2)\""
        );
        let pb = peer_entry(&v, &b_name)
            .with_context(|| format!("B missing from A's peers: {}", v["peers"]))?;
        ensure!(pb["path"] == "direct", "A's path to B is {}", pb["path"]);
        // `weft status peers` lists C, in Weave's shape (name(nick), no path).
        let peers_text = a.weft_ok(&["status", "peers"])?;
        ensure!(
            peers_text.lines().any(|l| l == format!("{c_name}(host3)")),
            "`weft status peers` on A does not list C:\n{peers_text}"
        );

        // Traffic: pings both ways, then 50 MB intact, and B counted what it relayed.
        let relayed_before = b.counter("relayed_datagrams")?;
        for (x, y) in [(&ca, &cc), (&cc, &ca)] {
            let s = x.ping(y.ip(), 10, 0.1)?;
            ensure!(
                s.received >= 9,
                "{} -> {}: only {}/{} replies through B",
                x.name(),
                y.name(),
                s.received,
                s.transmitted
            );
        }
        let took = transfer_intact(net, &ca, &cc, 50)?;
        eprintln!(
            "50 MiB A -> C through B in {took:.1?} ({:.0} Mbit/s)",
            50.0 * 8.0 * 1.048_576 / took.as_secs_f64()
        );
        let relayed_after = b.counter("relayed_datagrams")?;
        eprintln!("B relayed_datagrams: {relayed_before} -> {relayed_after}");
        // 50 MiB at ≤ 1376-byte frames is > 38000 data datagrams A -> C alone.
        ensure!(
            relayed_after >= relayed_before + 38_000,
            "B's relayed_datagrams grew only from {relayed_before} to {relayed_after} while \
             50 MiB went from A to C"
        );
        // A and C relayed nothing: they are the endpoints.
        for h in [&a, &c] {
            let n = h.counter("relayed_datagrams")?;
            if n > 1000 {
                bail!(
                    "host {} relayed {n} datagrams although it is an endpoint",
                    h.n()
                );
            }
        }
        Ok(())
    });
}

#[test]
fn traffic_moves_to_b_when_direct_underlay_breaks() {
    run_test("relbrk", |net| {
        let (hosts, ctrs) = net.mesh(3)?;
        let (a, b, c) = (&hosts[0], &hosts[1], &hosts[2]);
        let (ca, cc) = (&ctrs[0], &ctrs[2]);
        ca.wait_ping(cc.ip(), Duration::from_secs(20))?;
        let b_name = b.peer_name()?;
        let c_name = c.peer_name()?;
        let relayed_before = b.counter("relayed_datagrams")?;
        // The direct path breaks under an established connection.
        block_underlay(a, c)?;
        let t0 = Instant::now();
        wait_until(
            "A's route to C to go via B",
            Duration::from_secs(60),
            Duration::from_millis(200),
            || {
                let v = a.status_json()?;
                let p = peer_entry(&v, &c_name).context("C unknown")?;
                let path = p["path"].as_str().unwrap_or("");
                ensure!(path.contains(&b_name), "path {path:?}");
                Ok(())
            },
        )?;
        let rerouted = t0.elapsed();
        ca.wait_ping(cc.ip(), Duration::from_secs(20))?;
        eprintln!(
            "route A -> C via B {rerouted:.1?} after the block, ping through {:.1?}",
            t0.elapsed()
        );
        let s = ca.ping(cc.ip(), 10, 0.1)?;
        ensure!(s.received >= 9, "A -> C via B: {}/10 replies", s.received);
        ensure!(
            b.counter("relayed_datagrams")? > relayed_before,
            "B relayed nothing after the direct path broke"
        );
        Ok(())
    });
}

#[test]
fn short_id_collision_is_resolved_and_relaying_still_works() {
    run_test("shortid", |net| {
        let a = net.host(1)?;
        let b = net.host(2)?;
        let c = net.host(3)?;
        // A and C start with the same short id (kept in their state dirs); B has its own.
        for (h, name, short) in [
            (&a, "02:00:00:00:00:0a", 77u16),
            (&b, "02:00:00:00:00:0b", 78),
            (&c, "02:00:00:00:00:0c", 77),
        ] {
            std::fs::create_dir_all(h.state_dir())?;
            std::fs::write(h.state_dir().join("peer-name"), format!("{name}\n"))?;
            std::fs::write(h.state_dir().join("short-id"), format!("{short}\n"))?;
        }
        block_underlay(&a, &c)?;
        a.launch(&[])?;
        b.launch(&[&a])?;
        c.launch(&[&b])?;
        wait_established_with(&a, &b, Duration::from_secs(20))?;
        wait_established_with(&c, &b, Duration::from_secs(20))?;

        // Every peer ends up agreeing on three distinct short ids.
        let ids = wait_until(
            "all three peers to agree on distinct short ids",
            Duration::from_secs(20),
            Duration::from_millis(200),
            || {
                let mut views = Vec::new();
                for h in [&a, &b, &c] {
                    let v = h.status_json()?;
                    let mut ids: Vec<(String, u64)> = v["peers"]
                        .as_array()
                        .context("no peers")?
                        .iter()
                        .map(|p| {
                            (
                                p["name"].as_str().unwrap_or("").to_owned(),
                                p["short_id"].as_u64().unwrap_or(0),
                            )
                        })
                        .collect();
                    ids.sort();
                    views.push(ids);
                }
                ensure!(views[0].len() == 3, "A knows {} peers", views[0].len());
                ensure!(
                    views.iter().all(|v| *v == views[0]),
                    "views differ: {views:?}"
                );
                let mut shorts: Vec<u64> = views[0].iter().map(|(_, s)| *s).collect();
                shorts.dedup();
                ensure!(shorts.len() == 3, "short ids still collide: {:?}", views[0]);
                Ok(views[0].clone())
            },
        )?;
        eprintln!("resolved short ids: {ids:?}");
        // The peer with the larger name moved: C keeps nothing of 77 unless A moved instead.
        let c_short = ids
            .iter()
            .find(|(n, _)| n == "02:00:00:00:00:0c")
            .map(|(_, s)| *s);
        ensure!(
            c_short != Some(77),
            "C (the larger name) kept the colliding id: {ids:?}"
        );

        // The mover keeps its new id on disk, so a restart does not bring the collision back.
        let (mover, mover_name) = if c_short == Some(77) {
            (&a, "02:00:00:00:00:0a")
        } else {
            (&c, "02:00:00:00:00:0c")
        };
        let stored = std::fs::read_to_string(mover.state_dir().join("short-id"))?;
        let expected = ids.iter().find(|(n, _)| n == mover_name).map(|(_, s)| *s);
        ensure!(
            stored.trim().parse::<u64>().ok() == expected,
            "{mover_name} stored short id {stored:?}, uses {expected:?}"
        );
        // Both connections to B become established (heartbeats carry the new id).
        wait_established_with(&b, &c, Duration::from_secs(20))?;
        let ca = a.container("ca", "10.32.0.1/12")?;
        let cc = c.container("cc", "10.32.0.3/12")?;
        ca.wait_ping(cc.ip(), Duration::from_secs(30))?;
        let s = cc.ping(ca.ip(), 10, 0.1)?;
        ensure!(
            s.received >= 9,
            "C -> A through B: {}/10 replies",
            s.received
        );
        Ok(())
    });
}
