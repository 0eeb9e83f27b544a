//! Integration tests (root, network namespaces): failover by data-path liveness (issue 12).
//!
//! Hosts A, B, C fully connected; a container on A pings one on C every 100 ms.
//!
//! - Blocking everything between A and C (UDP and TCP, iptables inside both host namespaces)
//!   stops the data-path heartbeats; the direct path is taken out of the routes and the pings
//!   resume through B within 3 s, while the control connection may stay up. Unblocking brings
//!   the direct path back within 3 s.
//! - 5 % random loss on every host's input from the underlay (iptables `statistic`, this
//!   kernel has no netem) for 60 s changes no route: no path goes down, no host's path to
//!   another ever changes, and no link's path MTU shrinks.
//! - The reroute time, measured as the longest run of lost pings, over ten cuts: the median
//!   is printed for the report and every one of them is within 3 s.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use weft_tests::mesh::{block_underlay, peer_entry, unblock_underlay};
use weft_tests::net::Container;
use weft_tests::{Host, median, run_test, wait_until};

/// Pings sent every 100 ms.
const INTERVAL: f64 = 0.1;
/// The longest outage a cut may cause.
const REROUTE_MAX: Duration = Duration::from_secs(3);

/// `ping -i 0.1 -c count -W 1` from `from` to `to`; the sequence numbers that got a reply.
fn ping_seqs(from: &Container, to: &Container, count: u32) -> Result<BTreeSet<u32>> {
    let out = from.exec(&[
        "ping".to_owned(),
        "-n".into(),
        "-c".into(),
        count.to_string(),
        "-i".into(),
        INTERVAL.to_string(),
        "-W".into(),
        "1".into(),
        to.ip().to_string(),
    ])?;
    let seqs: BTreeSet<u32> = out
        .stdout
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("icmp_seq="))
                .and_then(|s| s.parse().ok())
        })
        .collect();
    ensure!(!seqs.is_empty(), "no reply at all:\n{out}");
    Ok(seqs)
}

/// The longest run of sequence numbers in `1..=count` without a reply, as time.
fn longest_outage(seqs: &BTreeSet<u32>, count: u32) -> Duration {
    let (mut longest, mut run) = (0u32, 0u32);
    for seq in 1..=count {
        if seqs.contains(&seq) {
            run = 0;
        } else {
            run += 1;
            longest = longest.max(run);
        }
    }
    Duration::from_secs_f64(f64::from(longest) * INTERVAL)
}

/// A's path to `peer` as `/status` shows it ("direct", "via NAME(NICK)", "unreachable").
fn path_to(a: &Host, peer: &str) -> Result<String> {
    let v = a.status_json()?;
    let p = peer_entry(&v, peer).with_context(|| format!("{peer} unknown to host {}", a.n()))?;
    Ok(p["path"].as_str().unwrap_or("").to_owned())
}

/// Waits until A's path to `peer` satisfies `want`; returns how long that took.
fn wait_path(a: &Host, peer: &str, what: &str, want: impl Fn(&str) -> bool) -> Result<Duration> {
    let t0 = Instant::now();
    wait_until(
        &format!("host {}'s path to {peer} to be {what}", a.n()),
        Duration::from_secs(15),
        Duration::from_millis(50),
        || {
            let path = path_to(a, peer)?;
            ensure!(want(&path), "path {path:?}");
            Ok(())
        },
    )?;
    Ok(t0.elapsed())
}

/// Waits until every host routes directly to every other host (a link is direct only once
/// its data-path heartbeats went both ways, which can take a moment after the first ping).
fn wait_all_direct(hosts: &[Host]) -> Result<()> {
    let names: Vec<String> = hosts.iter().map(Host::peer_name).collect::<Result<_>>()?;
    for (i, h) in hosts.iter().enumerate() {
        for (j, n) in names.iter().enumerate() {
            if i != j {
                wait_path(h, n, "direct", |p| p == "direct")?;
            }
        }
    }
    Ok(())
}

/// One cut: pings from `ca` to `cc` while A–C is blocked for `hold`, then unblocked.
/// Returns (longest ping outage, time until A routes via B, time until A is direct again).
fn cut_once(
    hosts: &[Host],
    ca: &Container,
    cc: &Container,
    hold: Duration,
) -> Result<(Duration, Duration, Duration)> {
    let (a, b, c) = (&hosts[0], &hosts[1], &hosts[2]);
    let b_name = b.peer_name()?;
    let c_name = c.peer_name()?;
    wait_path(a, &c_name, "direct before the cut", |p| p == "direct")?;
    let count = ((hold.as_secs_f64() + 6.0) / INTERVAL) as u32;
    std::thread::scope(|s| {
        let pinger = s.spawn(|| ping_seqs(ca, cc, count));
        std::thread::sleep(Duration::from_secs(2));
        block_underlay(a, c)?;
        let via = wait_path(a, &c_name, "via B", |p| p.contains(&b_name));
        std::thread::sleep(hold.saturating_sub(via.as_ref().copied().unwrap_or_default()));
        unblock_underlay(a, c)?;
        let back = wait_path(a, &c_name, "direct", |p| p == "direct");
        let seqs = pinger
            .join()
            .map_err(|_| anyhow::anyhow!("ping thread panicked"))??;
        Ok((longest_outage(&seqs, count), via?, back?))
    })
}

/// The tests, in a module so that their names start with `failover::`: `.ci/run` skips them in
/// its main pass (`--skip failover::`) and runs this binary beside the fuzz run, where its
/// minutes of waiting cost no time.
mod failover {
    use super::*;

    #[test]
    fn blocked_direct_path_fails_over_through_b_and_back() {
        run_test("failover", |net| {
            let (hosts, ctrs) = net.mesh(3)?;
            let (a, c) = (&hosts[0], &hosts[2]);
            let (ca, cc) = (&ctrs[0], &ctrs[2]);
            ca.wait_ping(cc.ip(), Duration::from_secs(20))?;
            let relayed_before = hosts[1].counter("relayed_datagrams")?;
            let (outage, via, back) = cut_once(&hosts, ca, cc, Duration::from_secs(8))?;
            eprintln!(
                "A-C blocked: longest ping outage {outage:.1?}, A via B after {via:.1?}; \
             unblocked: A direct after {back:.1?}"
            );
            ensure!(
                outage <= REROUTE_MAX,
                "pings stopped for {outage:.1?} (more than {REROUTE_MAX:?}) when A-C was blocked"
            );
            ensure!(via <= REROUTE_MAX, "A routed via B only after {via:.1?}");
            ensure!(
                back <= REROUTE_MAX,
                "A was back on the direct path only after {back:.1?}"
            );
            ensure!(
                hosts[1].counter("relayed_datagrams")? > relayed_before,
                "B relayed nothing while A-C was blocked"
            );
            // The data path decided: each end counted one path down and one back up.
            for h in [a, c] {
                ensure!(
                    h.counter("data_paths_down")? == 1 && h.counter("data_paths_up")? == 1,
                    "host {}: data_paths_down {} data_paths_up {}",
                    h.n(),
                    h.counter("data_paths_down")?,
                    h.counter("data_paths_up")?
                );
            }
            // Traffic flows directly again (B relays nothing more).
            let relayed = hosts[1].counter("relayed_datagrams")?;
            let s = ca.ping(cc.ip(), 20, INTERVAL)?;
            ensure!(
                s.received >= 19,
                "A -> C after the unblock: {}/20",
                s.received
            );
            let relayed_after = hosts[1].counter("relayed_datagrams")?;
            ensure!(
                relayed_after < relayed + 5,
                "B still relays A-C traffic: {relayed} -> {relayed_after}"
            );
            Ok(())
        });
    }

    #[test]
    fn five_percent_loss_for_a_minute_changes_no_route() {
        run_test("lossy", |net| {
            let (hosts, ctrs) = net.mesh(3)?;
            let (ca, cc) = (&ctrs[0], &ctrs[2]);
            ca.wait_ping(cc.ip(), Duration::from_secs(20))?;
            // Measure from a settled mesh: every path direct before the loss starts.
            wait_all_direct(&hosts)?;
            let names: Vec<String> = hosts.iter().map(Host::peer_name).collect::<Result<_>>()?;
            for h in &hosts {
                h.exec(&[
                    "iptables",
                    "-w",
                    "-A",
                    "INPUT",
                    "!",
                    "-i",
                    "lo",
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    "0.05",
                    "-j",
                    "DROP",
                ])?
                .ok()
                .with_context(|| format!("adding the loss rule on host {}", h.n()))?;
            }
            // Every host's view of every other host's path, polled for 60 s; each change counts.
            let mut last: Vec<Vec<String>> = Vec::new();
            let mut changes = Vec::new();
            let t0 = Instant::now();
            let pings = std::thread::scope(|s| -> Result<_> {
                let pinger = s.spawn(|| ca.ping(cc.ip(), 300, 0.2));
                while t0.elapsed() < Duration::from_secs(60) {
                    let mut now = Vec::new();
                    for (i, h) in hosts.iter().enumerate() {
                        let mut paths = Vec::new();
                        for (j, n) in names.iter().enumerate() {
                            if i != j {
                                paths.push(path_to(h, n)?);
                            }
                        }
                        now.push(paths);
                    }
                    if !last.is_empty() && now != last {
                        changes.push(format!("{:.1?}: {last:?} -> {now:?}", t0.elapsed()));
                    }
                    last = now;
                    std::thread::sleep(Duration::from_millis(250));
                }
                pinger
                    .join()
                    .map_err(|_| anyhow::anyhow!("ping thread panicked"))?
            })?;
            eprintln!(
                "60 s of 5 % loss: {}/{} pings answered, {} path changes",
                pings.received,
                pings.transmitted,
                changes.len()
            );
            ensure!(
                changes.is_empty(),
                "paths changed under 5 % loss:\n{changes:#?}"
            );
            ensure!(
                last.iter().flatten().all(|p| p == "direct"),
                "not every path is direct: {last:?}"
            );
            for h in &hosts {
                let down = h.counter("data_paths_down")?;
                ensure!(down == 0, "host {} took a path down {down} times", h.n());
                // Lost path MTU probes did not shrink any link's MTU either.
                let conns = h.weft_ok(&["status", "connections"])?;
                ensure!(
                    conns
                        .lines()
                        .filter(|l| l.contains("established"))
                        .all(|l| l.contains("mtu=1376")),
                    "host {}: a link's MTU changed under 5 % loss:\n{conns}",
                    h.n()
                );
            }
            // The loss was real: about 10 % of round trips lost (5 % each way), not none.
            ensure!(
                pings.received < pings.transmitted,
                "no ping lost: the loss rules did not apply"
            );
            ensure!(
                pings.received * 100 >= pings.transmitted * 75,
                "only {}/{} pings answered",
                pings.received,
                pings.transmitted
            );
            Ok(())
        });
    }

    #[test]
    fn reroute_time_over_ten_cuts() {
        run_test("reroute", |net| {
            let (hosts, ctrs) = net.mesh(3)?;
            let (ca, cc) = (&ctrs[0], &ctrs[2]);
            ca.wait_ping(cc.ip(), Duration::from_secs(20))?;
            let mut outages = Vec::new();
            let mut backs = Vec::new();
            for i in 0..10 {
                let (outage, via, back) = cut_once(&hosts, ca, cc, Duration::from_secs(4))?;
                eprintln!(
                    "cut {i}: outage {outage:.1?}, via B after {via:.1?}, direct after {back:.1?}"
                );
                outages.push(outage.as_secs_f64());
                backs.push(back.as_secs_f64());
            }
            let m = median(&outages).unwrap_or(f64::NAN);
            eprintln!(
                "reroute (longest ping outage) over 10 cuts: median {m:.2} s, all {outages:?}; \
             back direct: median {:.2} s",
                median(&backs).unwrap_or(f64::NAN)
            );
            for (i, o) in outages.iter().enumerate() {
                ensure!(
                    *o <= REROUTE_MAX.as_secs_f64(),
                    "cut {i}: pings stopped for {o:.1} s"
                );
            }
            for (i, b) in backs.iter().enumerate() {
                ensure!(
                    *b <= REROUTE_MAX.as_secs_f64(),
                    "cut {i}: direct again only after {b:.1} s"
                );
            }
            Ok(())
        });
    }
}
