//! Integration tests (root, network namespaces): killing one peer of a fully connected
//! triangle.
//!
//! A continuous ping between the containers of A and C runs while B's router is SIGKILLed: the
//! direct A–C path does not depend on B, so at most a couple of replies may go missing. A
//! drops the unreachable B from its peers, C (which named B) keeps redialling it. B
//! relaunched with the same arguments rejoins: its connections are established again and its
//! container reaches A's and C's.

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use weft_tests::mesh::{
    connections, established_with, lines_for, peer_entry, wait_established_with,
};
use weft_tests::net::parse_ping;
use weft_tests::{Cmd, cmd::pid_alive, run_test, wait_until};

#[test]
fn killing_b_does_not_interrupt_a_to_c_and_b_rejoins() {
    run_test("kill", |net| {
        let (hosts, ctrs) = net.mesh(3)?;
        let (a, b, c) = (&hosts[0], &hosts[1], &hosts[2]);
        let (ca, cb, cc) = (&ctrs[0], &ctrs[1], &ctrs[2]);
        for (x, y) in [(ca, cc), (cc, ca), (cb, ca), (cb, cc)] {
            x.wait_ping(y.ip(), Duration::from_secs(20))?;
        }
        let (a_pid, c_pid) = (a.router_pid()?, c.router_pid()?);
        let b_name = b.peer_name()?;

        // 100 pings over 10 s, B killed 3 s in.
        let out_path = net.dir().join("ping.out");
        let err_path = net.dir().join("ping.err");
        let mut ping = Cmd::new("ip")
            .args([
                "netns",
                "exec",
                ca.ns(),
                "ping",
                "-n",
                "-i",
                "0.1",
                "-c",
                "100",
                "-W",
                "1",
            ])
            .arg(cc.ip().to_string())
            .spawn_to(&out_path, &err_path)?;
        std::thread::sleep(Duration::from_secs(3));
        let killed = b.kill_router();
        let status = wait_until(
            "the ping run to end",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || ping.try_wait()?.context("still running"),
        );
        if status.is_err() {
            // Our own child, killed by its id.
            let _ = ping.kill();
            let _ = ping.wait();
        }
        let killed_pid = killed?;
        status?;
        let text = std::fs::read_to_string(&out_path)?;
        let s = parse_ping(&text).with_context(|| text.clone())?;
        eprintln!(
            "A -> C while B (pid {killed_pid}) was killed: {}/{} replies",
            s.received, s.transmitted
        );
        ensure!(
            s.transmitted >= 95 && s.received * 100 >= s.transmitted * 90,
            "A -> C lost too much while B was killed: {}/{} replies\n{text}",
            s.received,
            s.transmitted
        );
        ensure!(
            pid_alive(a_pid) && pid_alive(c_pid),
            "A's or C's router died when B was killed"
        );
        // A and C still hold their direct connection; B is gone from their connection lists
        // or being redialled.
        ensure!(established_with(a, c)?, "A lost its connection to C");
        ensure!(established_with(c, a)?, "C lost its connection to A");

        // Nobody reaches B any more: A drops it from its peers (or marks it unreachable), and
        // C, which named B at launch, keeps redialling it.
        wait_until(
            "A to drop the dead B from its peers",
            Duration::from_secs(10),
            Duration::from_millis(100),
            || {
                let v = a.status_json()?;
                match peer_entry(&v, &b_name) {
                    None => Ok(()),
                    Some(p) if p["path"] == "unreachable" => Ok(()),
                    Some(p) => bail!("A still lists B as {p}"),
                }
            },
        )?;
        wait_until(
            "C to redial B",
            Duration::from_secs(10),
            Duration::from_millis(100),
            || {
                let (conns, text) = connections(c)?;
                ensure!(
                    lines_for(&conns, b.addr()).iter().any(
                        |l| l.outbound && matches!(l.state.as_str(), "retrying" | "connecting")
                    ),
                    "no retrying line for B:\n{text}"
                );
                Ok(())
            },
        )?;

        // B comes back with the same arguments and rejoins.
        let t0 = Instant::now();
        b.launch(&[a])?;
        for (x, y) in [(b, a), (b, c), (a, b), (c, b)] {
            wait_established_with(x, y, Duration::from_secs(30))?;
        }
        cb.wait_ping(ca.ip(), Duration::from_secs(20))?;
        cb.wait_ping(cc.ip(), Duration::from_secs(20))?;
        ca.wait_ping(cb.ip(), Duration::from_secs(5))?;
        cc.wait_ping(cb.ip(), Duration::from_secs(5))?;
        eprintln!(
            "B rejoined and reachable {:.1?} after relaunch",
            t0.elapsed()
        );
        weft_tests::wait_established(&[a, b, c], Duration::from_secs(20))?;
        for (x, y) in [(cb, ca), (cb, cc), (ca, cc)] {
            let s = x.ping(y.ip(), 5, 0.2)?;
            ensure!(
                s.received >= 4,
                "{} -> {} after B rejoined: {}/5 replies",
                x.name(),
                y.name(),
                s.received
            );
        }
        Ok(())
    });
}
