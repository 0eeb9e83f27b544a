//! Integration tests (root, network namespaces): relaying through a third peer.
//!
//! Hosts A–B–C where the underlay between A and C drops everything (iptables in both host
//! namespaces): containers on A and C still ping each other and move 50 MB intact, because B
//! forwards the datagrams (VNI = source and destination short ids). A's status shows C as
//! reached via B, and B's `relayed_datagrams` counter grows.

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
        let peers_text = a.weft_ok(&["status", "peers"])?;
        ensure!(
            peers_text
                .lines()
                .any(|l| l.starts_with(&c_name) && l.contains(&format!("via {b_name}"))),
            "`weft status peers` on A does not show C via B:\n{peers_text}"
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
