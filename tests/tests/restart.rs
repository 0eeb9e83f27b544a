//! Integration tests (root, network namespaces): a router killed with SIGKILL and launched
//! again recovers without anything being done on the other host.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use weft_tests::{cmd::pid_alive, run_test, wait_until};

#[test]
fn killed_router_recovers_after_relaunch() {
    run_test("rest", |net| {
        let p = net.pair()?;
        let h1_pid = p.h1.router_pid()?;
        p.h2.kill_router()?;
        // With host 2's router dead, nothing crosses.
        wait_until(
            "traffic to stop while host 2's router is dead",
            Duration::from_secs(10),
            Duration::from_millis(100),
            || match p.c1.ping_once(p.c2.ip()) {
                Ok(()) => bail!("ping still answered"),
                Err(_) => Ok(()),
            },
        )?;
        // Same arguments as the first launch.
        let t0 = Instant::now();
        p.h2.launch(&[&p.h1])?;
        p.c1.wait_ping(p.c2.ip(), Duration::from_secs(15))?;
        p.c2.wait_ping(p.c1.ip(), Duration::from_secs(5))?;
        let took = t0.elapsed();
        eprintln!("reachable again {took:.1?} after relaunch");
        ensure!(
            took < Duration::from_secs(15),
            "took {took:.1?} to recover (limit 15 s)"
        );
        // Host 1 was not touched: same router process, still running.
        ensure!(
            p.h1.router_pid()? == h1_pid && pid_alive(h1_pid),
            "host 1's router changed or died (pid {h1_pid} -> {:?})",
            p.h1.router_pid()
        );
        let s = p.c1.ping(p.c2.ip(), 5, 0.2)?;
        ensure!(
            s.received >= 4,
            "after recovery only {}/5 replies",
            s.received
        );
        Ok(())
    });
}
