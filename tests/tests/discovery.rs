//! Integration tests (root, network namespaces): peer discovery.
//!
//! A launched alone, B with A, C with B only. With discovery (the default) A and C learn each
//! other's address from gossip and connect directly within seconds. With `--no-discovery` on
//! all three they never do, yet containers on A and C still reach each other through B.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use weft_tests::mesh::{connections, launch_with, lines_for, peer_entry, wait_established_with};
use weft_tests::{Host, run_test, wait_until};

/// Fails if `h` lists any connection (live or being dialled) with `other`'s address.
fn no_connection(h: &Host, other: &Host) -> Result<()> {
    let (conns, text) = connections(h)?;
    let found = lines_for(&conns, other.addr());
    ensure!(
        found.is_empty(),
        "host {} lists a connection with host {} ({}) although discovery is off:\n{text}",
        h.n(),
        other.n(),
        other.addr()
    );
    Ok(())
}

#[test]
fn discovery_connects_a_and_c_directly() {
    run_test("disc", |net| {
        let a = net.host(1)?;
        let b = net.host(2)?;
        let c = net.host(3)?;
        a.launch(&[])?;
        b.launch(&[&a])?;
        wait_established_with(&a, &b, Duration::from_secs(20))?;
        let t0 = Instant::now();
        c.launch(&[&b])?;
        wait_established_with(&c, &b, Duration::from_secs(20))?;
        // Neither A nor C was given the other's address; gossip through B tells them.
        wait_established_with(&a, &c, Duration::from_secs(10))?;
        wait_established_with(&c, &a, Duration::from_secs(10))?;
        eprintln!("A <-> C established {:.1?} after C's launch", t0.elapsed());
        for h in [&a, &c] {
            let v = h.status_json()?;
            ensure!(
                v["discovery"] == true,
                "discovery not reported on: {}",
                v["discovery"]
            );
            // Discovered peers are not direct targets.
            let t = v["targets"].as_array().map_or(0, Vec::len);
            ensure!(
                t <= 1,
                "host {} has {t} direct targets, expected at most its launch argument: {}",
                h.n(),
                v["targets"]
            );
        }
        // Routes: C becomes a direct peer of A once A has C's report of the link too.
        let c_name = c.peer_name()?;
        wait_until(
            "A's path to C to become direct",
            Duration::from_secs(5),
            Duration::from_millis(100),
            || {
                let v = a.status_json()?;
                let pc = peer_entry(&v, &c_name)
                    .with_context(|| format!("C missing from A's peers: {}", v["peers"]))?;
                ensure!(pc["path"] == "direct", "A's path to C is {}", pc["path"]);
                Ok(())
            },
        )?;
        Ok(())
    });
}

#[test]
fn no_discovery_keeps_a_and_c_apart_but_relays() {
    run_test("nodisc", |net| {
        let a = net.host(1)?;
        let b = net.host(2)?;
        let c = net.host(3)?;
        let t0 = Instant::now();
        launch_with(&a, &["--no-discovery"], &[])?;
        launch_with(&b, &["--no-discovery"], &[&a])?;
        launch_with(&c, &["--no-discovery"], &[&b])?;
        wait_established_with(&a, &b, Duration::from_secs(20))?;
        wait_established_with(&c, &b, Duration::from_secs(20))?;
        for h in [&a, &b, &c] {
            let v = h.status_json()?;
            ensure!(
                v["discovery"] == false,
                "host {}: discovery reported as {}",
                h.n(),
                v["discovery"]
            );
        }
        let ca = a.container("ca", "10.32.0.1/12")?;
        let cc = c.container("cc", "10.32.0.3/12")?;
        ca.wait_ping(cc.ip(), Duration::from_secs(30))?;
        cc.wait_ping(ca.ip(), Duration::from_secs(10))?;
        // Both know each other from gossip, reached via B.
        let b_name = b.peer_name()?;
        for (x, y) in [(&a, &c), (&c, &a)] {
            let y_name = y.peer_name()?;
            let v = x.status_json()?;
            let p = peer_entry(&v, &y_name).with_context(|| {
                format!(
                    "host {} does not know host {}: {}",
                    x.n(),
                    y.n(),
                    v["peers"]
                )
            })?;
            let path = p["path"].as_str().unwrap_or("");
            ensure!(
                path.starts_with("via ") && path.contains(&b_name),
                "host {}'s path to host {} is {path:?}, expected via B ({b_name})",
                x.n(),
                y.n()
            );
        }
        // Give discovery every chance: 10 s after the launches, still no A <-> C connection.
        if let Some(rest) = Duration::from_secs(10).checked_sub(t0.elapsed()) {
            std::thread::sleep(rest);
        }
        no_connection(&a, &c)?;
        no_connection(&c, &a)?;
        let s = ca.ping(cc.ip(), 10, 0.1)?;
        ensure!(
            s.received >= 9,
            "A -> C through B: only {}/{} replies",
            s.received,
            s.transmitted
        );
        ensure!(
            b.counter("relayed_datagrams")? > 0,
            "B relayed nothing although A and C talk only through it"
        );
        Ok(())
    });
}
