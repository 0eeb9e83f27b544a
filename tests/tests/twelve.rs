//! Integration tests (root, network namespaces): twelve hosts launched as a chain (host i names
//! only host i-1) converge to a full mesh through discovery, and every container pair pings.
//!
//! Prints the convergence time and the gossip bytes each router sent, for the issue's
//! measurements.

use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use weft_tests::mesh::connections;
use weft_tests::{Container, Host, run_test, wait_until};

const N: u8 = 12;

/// Pings `dst` from `src` once, retrying up to three times (the first may wait for ARP).
fn ping_with_retry(src: &Container, dst: &Container) -> Result<()> {
    let mut last = None;
    for _ in 0..4 {
        match src.ping_once(dst.ip()) {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    match last {
        Some(e) => Err(e),
        None => bail!("no ping attempted"),
    }
}

/// Number of hosts (other than `h`) with which `h` lists an established connection, and the
/// status text.
fn established_peers(h: &Host, hosts: &[Host]) -> Result<(usize, String)> {
    let (conns, text) = connections(h)?;
    let n = hosts
        .iter()
        .filter(|o| o.n() != h.n())
        .filter(|o| {
            let ip = o.addr().to_string();
            conns
                .iter()
                .any(|c| c.state == "established" && weft_tests::mesh::addr_ip(&c.address) == ip)
        })
        .count();
    Ok((n, text))
}

#[test]
fn twelve_hosts_in_a_chain_converge_to_full_mesh() {
    run_test("twelve", |net| {
        let mut hosts: Vec<Host> = Vec::new();
        for k in 1..=N {
            hosts.push(net.host(k)?);
        }
        let t0 = Instant::now();
        for i in 0..hosts.len() {
            let peers: Vec<&Host> = if i == 0 { vec![] } else { vec![&hosts[i - 1]] };
            hosts[i].launch(&peers)?;
        }
        let launched = t0.elapsed();
        let t1 = Instant::now();
        let want = usize::from(N) - 1;
        wait_until(
            &format!("all {N} hosts to have {want} established connections"),
            Duration::from_secs(60),
            Duration::from_millis(250),
            || {
                for h in &hosts {
                    let (n, text) = established_peers(h, &hosts)?;
                    if n != want {
                        bail!("host {} has {n}/{want} established:\n{text}", h.n());
                    }
                }
                Ok(())
            },
        )?;
        let converged = t1.elapsed();
        eprintln!(
            "{N} hosts: launches took {launched:.1?}; full mesh {converged:.1?} after the last \
             launch ({:.1?} after the first)",
            t0.elapsed()
        );
        // No duplicates left over: exactly one line per peer, all established.
        for h in &hosts {
            let (conns, text) = connections(h)?;
            ensure!(
                conns.len() == want && conns.iter().all(|c| c.state == "established"),
                "host {}: expected {want} established connections and nothing else:\n{text}",
                h.n()
            );
            let v = h.status_json()?;
            let peers = v["peers"].as_array().map_or(0, Vec::len);
            ensure!(
                peers == usize::from(N),
                "host {} knows {peers} peers",
                h.n()
            );
        }
        let mut gossip = Vec::new();
        for h in &hosts {
            gossip.push(h.counter("gossip_bytes_sent")?);
        }
        let total: u64 = gossip.iter().sum();
        eprintln!(
            "gossip_bytes_sent per host at convergence: {gossip:?} (total {total}, mean {})",
            total / u64::from(N)
        );
        // Steady state: what the converged mesh keeps sending.
        let idle = Duration::from_secs(5);
        std::thread::sleep(idle);
        let mut later = 0;
        for h in &hosts {
            later += h.counter("gossip_bytes_sent")?;
        }
        eprintln!(
            "steady-state gossip: {:.0} bytes/s in total over {idle:?} ({:.0} per host)",
            (later - total) as f64 / idle.as_secs_f64(),
            (later - total) as f64 / idle.as_secs_f64() / f64::from(N)
        );

        let mut ctrs = Vec::new();
        for (i, h) in hosts.iter().enumerate() {
            let k = i + 1;
            ctrs.push(h.container(&format!("c{k}"), &format!("10.32.0.{k}/12"))?);
        }
        let t2 = Instant::now();
        let mut failures = Vec::new();
        for src in &ctrs {
            let results: Vec<(String, Result<()>)> = std::thread::scope(|s| {
                let handles: Vec<_> = ctrs
                    .iter()
                    .filter(|d| d.ns() != src.ns())
                    .map(|dst| {
                        s.spawn(move || {
                            (
                                format!("{} -> {}", src.name(), dst.name()),
                                ping_with_retry(src, dst),
                            )
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| match h.join() {
                        Ok(r) => r,
                        Err(_) => ("?".to_owned(), Err(anyhow::anyhow!("ping thread panicked"))),
                    })
                    .collect()
            });
            for (pair, r) in results {
                if let Err(e) = r {
                    failures.push(format!("{pair}: {e:#}"));
                }
            }
        }
        let pairs = ctrs.len() * (ctrs.len() - 1);
        eprintln!(
            "{pairs} ordered container pairs pinged in {:.1?}, {} failed",
            t2.elapsed(),
            failures.len()
        );
        ensure!(
            failures.is_empty(),
            "{} of {pairs} container pairs do not ping:\n{}",
            failures.len(),
            failures.join("\n")
        );
        Ok(())
    });
}
