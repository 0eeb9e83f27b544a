//! Integration tests (root, network namespaces): two hosts, one container each.
//!
//! Checks the basic data path end to end with the real binary: pings both ways, ARP resolved
//! across hosts to the remote container's own MAC, and a 100 MB TCP transfer arriving intact.

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use weft_tests::{Cmd, cmd::ns_sh, run_test, wait_until};

#[test]
fn ping_both_ways_and_arp_across_hosts() {
    run_test("ping", |net| {
        let p = net.pair()?;
        p.c2.wait_ping(p.c1.ip(), Duration::from_secs(20))?;
        for (a, b) in [(&p.c1, &p.c2), (&p.c2, &p.c1)] {
            let s = a.ping(b.ip(), 5, 0.2)?;
            ensure!(
                s.received >= 4,
                "{} -> {}: only {}/{} replies",
                a.name(),
                b.name(),
                s.received,
                s.transmitted
            );
        }
        // ARP went across the overlay: each side learned the other's ethwe MAC.
        for (a, b) in [(&p.c1, &p.c2), (&p.c2, &p.c1)] {
            let want = b.mac()?;
            let got = a.neigh(b.ip())?;
            ensure!(
                got.as_deref() == Some(want.as_str()),
                "{}'s neighbour entry for {} is {got:?}, expected {}'s ethwe MAC {want}",
                a.name(),
                b.ip(),
                b.name()
            );
        }
        for c in [&p.c1, &p.c2] {
            ensure!(
                c.mtu()? == 1376,
                "{} ethwe MTU is {}, expected 1376",
                c.name(),
                c.mtu()?
            );
        }
        Ok(())
    });
}

#[test]
fn tcp_transfer_100mb_arrives_intact() {
    run_test("tcp", |net| {
        let p = net.pair()?;
        let dir = net.dir();
        let src = dir.join("payload.bin");
        let dst = dir.join("received.bin");
        Cmd::new("sh")
            .args([
                "-c",
                &format!("head -c 100M /dev/urandom > '{}'", src.display()),
            ])
            .run_ok()?;
        let port = "5001";
        // Receiver in c2: -d (never read stdin), exits when the sender closes.
        let server =
            Cmd::new("ip").args(["netns", "exec", p.c2.ns(), "nc", "-d", "-l", "-p", port]);
        let mut child = server.spawn_to(&dst, &dir.join("nc-server.err"))?;
        let c2ns = p.c2.ns().to_owned();
        wait_until(
            "nc to listen in c2",
            Duration::from_secs(10),
            Duration::from_millis(50),
            || {
                let out = ns_sh(
                    &c2ns,
                    &format!("ss -ltnH 'sport = :{port}'"),
                    Duration::from_secs(5),
                )?;
                if out.trim().is_empty() {
                    bail!("not listening yet")
                }
                Ok(())
            },
        )?;
        let send = Cmd::new("ip")
            .args(["netns", "exec", p.c1.ns(), "nc", "-N"])
            .args([p.c2.ip().to_string().as_str(), port])
            .stdin_file(&src)
            .timeout(Duration::from_secs(240))
            .run()?;
        let server_status = wait_until(
            "the receiving nc to exit",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || child.try_wait()?.context("still running"),
        );
        if server_status.is_err() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let send = send.ok().context("sending 100 MB with nc")?;
        let server_status = server_status?;
        ensure!(
            server_status.success(),
            "receiving nc exited with {server_status}"
        );
        let sums = Cmd::new("sha256sum").arg(&src).arg(&dst).run_ok()?.stdout;
        let hashes: Vec<&str> = sums
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        let got_len = std::fs::metadata(&dst)?.len();
        ensure!(
            hashes.len() == 2 && hashes[0] == hashes[1],
            "checksums differ (received {got_len} of 104857600 bytes in {:.1?}):\n{sums}",
            send.elapsed
        );
        ensure!(got_len == 100 * 1024 * 1024, "received {got_len} bytes");
        eprintln!(
            "100 MB in {:.1?} ({:.0} Mbit/s)",
            send.elapsed,
            800.0 * 1.048_576 / send.elapsed.as_secs_f64()
        );
        Ok(())
    });
}
