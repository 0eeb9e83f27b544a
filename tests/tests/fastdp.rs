//! Integration tests (root, network namespaces): the kernel fast path (issue 13). Between
//! hosts that reach each other directly, traffic crosses a kernel VXLAN device per peer
//! (`vxwe-*`, UDP 6784) instead of weft's userspace path (sleeve, UDP 6783); `weft status
//! connections` says which, and why not when not.
//!
//! - two hosts: the connection says `fastdp`, pings and ARP work, 100 MiB arrive intact, the
//!   router's CPU stays near idle meanwhile, and the frames on the underlay decode as VXLAN on
//!   6784 with weft's VNI (src | dst << 12) and the container's own frame inside;
//! - the fast-path port blocked: traffic falls back to sleeve with the reason shown, pings go
//!   on (< 3 s lost); unblocked: back on fastdp. An underlay smaller than the MTU: sleeve;
//! - three hosts with A–C blocked: A and C reach each other through B; one broadcast and one
//!   multicast datagram arrive exactly once at every other container;
//! - a mixed host (sleeve to a `--no-fastdp` peer, fastdp to another): everyone reaches
//!   everyone, floods from each of the three arrive exactly once;
//! - `--no-fastdp`, a password: sleeve; `reset` leaves no device; a router killed with SIGKILL
//!   and launched again replaces its devices.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use weft_tests::mesh::{block_underlay, launch_with, transfer_intact, unblock_underlay};
use weft_tests::net::{Container, Host, wait_established};
use weft_tests::status::parse_connections;
use weft_tests::{run_test, wait_until};

/// The data path word of each established connection on `h` (`fastdp` / `sleeve`), with the
/// whole text for messages.
fn overlays(h: &Host) -> Result<(Vec<String>, String)> {
    let text = h.weft_ok(&["status", "connections"])?;
    let words = parse_connections(&text)
        .into_iter()
        .filter(|c| c.state == "established")
        .map(|c| c.info.split_whitespace().next().unwrap_or("").to_owned())
        .collect();
    Ok((words, text))
}

/// Waits until every established connection on each of `hosts` says `want`.
fn wait_overlay(hosts: &[&Host], want: &str, secs: u64) -> Result<Duration> {
    let t0 = Instant::now();
    for h in hosts {
        wait_until(
            &format!("host {}'s connections to say {want}", h.n()),
            Duration::from_secs(secs),
            Duration::from_millis(100),
            || {
                let (words, text) = overlays(h)?;
                ensure!(
                    !words.is_empty() && words.iter().all(|w| w == want),
                    "status connections:\n{text}"
                );
                Ok(())
            },
        )?;
    }
    Ok(t0.elapsed())
}

/// The `vxwe-*` devices in `h`'s namespace.
fn devices(h: &Host) -> Result<Vec<String>> {
    let out = h.exec(&["ip", "-o", "link", "show"])?.ok()?;
    Ok(out
        .stdout
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or("").to_owned())
        .filter(|n| n.starts_with("vxwe-"))
        .collect())
}

/// The router's CPU time (user + system), in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').context("stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

#[test]
fn two_hosts_use_the_kernel_fast_path() {
    run_test("fdp2", |net| {
        let p = net.pair()?;
        wait_overlay(&[&p.h1, &p.h2], "fastdp", 10)?;
        for h in [&p.h1, &p.h2] {
            let d = devices(h)?;
            ensure!(d.len() == 1, "host {}: devices {d:?}", h.n());
            let status = h.weft_ok(&["status"])?;
            ensure!(
                status.contains("DataPath: fastdp (kernel VXLAN per peer, udp/6784), sleeve"),
                "host {}: weft status:\n{status}",
                h.n()
            );
        }
        let s = p.c1.ping(p.c2.ip(), 20, 0.05)?;
        ensure!(s.received == 20, "{}/20 pings answered", s.received);
        ensure!(
            p.c1.neigh(p.c2.ip())?.is_some(),
            "c1 has no ARP entry for c2"
        );
        // 100 MiB, and the router hardly works meanwhile (the kernel carries it).
        let pid = p.h1.router_pid()?;
        let before = cpu_ticks(pid)?;
        let took = transfer_intact(net, &p.c1, &p.c2, 100)?;
        let ticks = cpu_ticks(pid)? - before;
        let sleeve_sent = p.h1.settled_counter("udp_tx_datagrams")?;
        eprintln!(
            "100 MiB over fastdp in {took:.1?}; router CPU {ticks} ticks; sleeve datagrams \
             sent {sleeve_sent}"
        );
        // 100 MiB through userspace would be ~75000 datagrams; heartbeats are a few per second.
        ensure!(
            sleeve_sent < 2000,
            "{sleeve_sent} datagrams went through the userspace path"
        );
        // The fast path's counters saw it (read from the device about once a second).
        wait_until(
            "the fast path's counters to show 100 MiB sent",
            Duration::from_secs(5),
            Duration::from_millis(200),
            || {
                let sent = p.h1.counter("fastdp_tx_bytes")?;
                ensure!(sent >= 100 << 20, "fastdp_tx_bytes {sent}");
                Ok(())
            },
        )?;
        // Per link too (the topology page's rates and weft_link_* come from these).
        let v = p.h1.status_json()?;
        let h2 = p.h2.addr().to_string();
        let link = v["links"]
            .as_array()
            .and_then(|l| l.iter().find(|l| l["address"] == h2.as_str()))
            .with_context(|| format!("no link to {h2} in {}", v["links"]))?;
        ensure!(
            link["tx_bytes"].as_u64().is_some_and(|b| b >= 100 << 20),
            "link to host 2: {link}"
        );
        Ok(())
    });
}

/// Drops (`-A`) or stops dropping (`-D`) UDP to the fast-path port on `h`'s underlay, for
/// datagrams of at least `min_len` bytes (IP length; 0: all).
fn block_fastdp(h: &Host, op: &str, min_len: u32) -> Result<()> {
    let len = format!("{min_len}:65535");
    let mut args = vec![
        "iptables", "-w", op, "INPUT", "-p", "udp", "--dport", "6784",
    ];
    if min_len > 0 {
        args.extend_from_slice(&["-m", "length", "--length", &len]);
    }
    args.extend_from_slice(&["-j", "DROP"]);
    h.exec(&args)?
        .ok()
        .with_context(|| format!("iptables {op} on host {}", h.n()))?;
    Ok(())
}

/// The reason `h`'s established connections give for not using the fast path.
fn reasons(h: &Host) -> Result<String> {
    let (_, text) = overlays(h)?;
    Ok(parse_connections(&text)
        .into_iter()
        .filter(|c| c.state == "established")
        .map(|c| c.info)
        .collect::<Vec<_>>()
        .join("\n"))
}

#[test]
fn a_blocked_fast_path_falls_back_to_sleeve_and_returns() {
    run_test("fdpblk", |net| {
        let p = net.pair()?;
        wait_overlay(&[&p.h1, &p.h2], "fastdp", 10)?;
        let (c1, c2) = (&p.c1, &p.c2);
        // Pings every 100 ms across the whole episode: block, fall back, unblock, return.
        let (lost, back, returned) = std::thread::scope(|s| -> Result<_> {
            let pinger = s.spawn(|| c1.ping(c2.ip(), 200, 0.1));
            std::thread::sleep(Duration::from_secs(2));
            block_fastdp(&p.h2, "-A", 0)?;
            let back = wait_overlay(&[&p.h1, &p.h2], "sleeve", 10)?;
            let why = reasons(&p.h1)?;
            ensure!(
                why.contains("fastdp: "),
                "no reason for sleeve on host 1:\n{why}"
            );
            std::thread::sleep(Duration::from_secs(3));
            let why = reasons(&p.h1)?;
            ensure!(
                why.contains("no heartbeats through it"),
                "host 1 says, with UDP 6784 blocked:\n{why}"
            );
            block_fastdp(&p.h2, "-D", 0)?;
            let returned = wait_overlay(&[&p.h1, &p.h2], "fastdp", 10)?;
            let pings = pinger
                .join()
                .map_err(|_| anyhow::anyhow!("ping thread panicked"))??;
            Ok((pings.transmitted - pings.received, back, returned))
        })?;
        eprintln!(
            "fast path blocked: on sleeve after {back:.1?}, {lost} of 200 pings (100 ms apart) \
             lost; unblocked: fastdp again after {returned:.1?}"
        );
        ensure!(lost <= 30, "{lost} pings lost (more than 3 s)");
        let s = c1.ping(c2.ip(), 10, 0.05)?;
        ensure!(s.received == 10, "{}/10 after the return", s.received);
        Ok(())
    });
}

#[test]
fn a_path_smaller_than_the_mtu_keeps_sleeve() {
    run_test("fdpmtu", |net| {
        let h1 = net.host(1)?;
        let h2 = net.host(2)?;
        // Whole overlay frames (1376 + 14 + VXLAN/UDP/IP 50 = 1440 bytes) do not fit; small
        // ones do.
        for h in [&h1, &h2] {
            block_fastdp(h, "-A", 1200)?;
        }
        h1.launch(&[])?;
        h2.launch(&[&h1])?;
        wait_established(&[&h1, &h2], Duration::from_secs(30))?;
        let c1 = h1.container("c1", "10.32.0.1/12")?;
        let c2 = h2.container("c2", "10.32.0.2/12")?;
        c1.wait_ping(c2.ip(), Duration::from_secs(20))?;
        wait_until(
            "host 1 to say the path is too small",
            Duration::from_secs(10),
            Duration::from_millis(200),
            || {
                let why = reasons(&h1)?;
                ensure!(why.contains("smaller than the overlay MTU"), "{why}");
                Ok(())
            },
        )?;
        let (words, text) = overlays(&h1)?;
        ensure!(words == ["sleeve"], "{text}");
        // Full-size frames still cross (on sleeve).
        let out = c1.exec(&[
            "ping",
            "-c",
            "2",
            "-W",
            "2",
            "-M",
            "do",
            "-s",
            "1348",
            &c2.ip().to_string(),
        ])?;
        ensure!(out.success(), "full-size DF ping on sleeve: {out}");
        Ok(())
    });
}

#[test]
fn no_fastdp_and_passwords_stay_on_sleeve() {
    run_test("fdpoff", |net| {
        let h1 = net.host(1)?;
        let h2 = net.host(2)?;
        let h3 = net.host(3)?;
        launch_with(&h1, &["--no-fastdp"], &[])?;
        launch_with(&h2, &[], &[&h1])?;
        wait_established(&[&h1, &h2], Duration::from_secs(30))?;
        let c1 = h1.container("c1", "10.32.0.1/12")?;
        let c2 = h2.container("c2", "10.32.0.2/12")?;
        c1.wait_ping(c2.ip(), Duration::from_secs(20))?;
        std::thread::sleep(Duration::from_secs(2));
        for h in [&h1, &h2] {
            let (words, text) = overlays(h)?;
            ensure!(words == ["sleeve"], "host {}:\n{text}", h.n());
            ensure!(
                devices(h)?.is_empty(),
                "host {} made {:?}",
                h.n(),
                devices(h)?
            );
        }
        let status = h1.weft_ok(&["status"])?;
        ensure!(
            status.contains("DataPath: sleeve"),
            "host 1 (--no-fastdp): weft status:\n{status}"
        );
        let why = reasons(&h2)?;
        ensure!(why.contains("the peer has none"), "host 2 says:\n{why}");
        // WEAVE_NO_FASTDP works as the flag does, and a password keeps connections encrypted
        // on sleeve.
        let out = h3
            .weft_cmd(&["launch", "--password", "s3cret", "--nickname", "host3"])?
            .run()?;
        ensure!(out.success(), "{out}");
        let h4 = net.host(4)?;
        let out = h4
            .weft_cmd(&[
                "launch",
                "--password",
                "s3cret",
                "--nickname",
                "host4",
                &h3.addr().to_string(),
            ])?
            .run()?;
        ensure!(out.success(), "{out}");
        wait_established(&[&h3, &h4], Duration::from_secs(30))?;
        let c3 = h3.container("c3", "10.32.0.3/12")?;
        let c4 = h4.container("c4", "10.32.0.4/12")?;
        c3.wait_ping(c4.ip(), Duration::from_secs(20))?;
        std::thread::sleep(Duration::from_secs(2));
        let (words, text) = overlays(&h3)?;
        ensure!(
            text.contains("encrypted") && !text.contains("fastdp ") && words.len() == 1,
            "host 3:\n{text}"
        );
        ensure!(
            reasons(&h3)?.contains("fastdp: encrypted connection"),
            "{text}"
        );
        ensure!(devices(&h3)?.is_empty(), "{:?}", devices(&h3)?);
        let h5 = net.host(5)?;
        let out = h5
            .weft_cmd(&["launch", "--nickname", "host5"])?
            .env("WEAVE_NO_FASTDP", "1")
            .run()?;
        ensure!(out.success(), "{out}");
        let text = h5.log();
        ensure!(
            text.contains("udp/6783 (sleeve)") && !text.contains("(fastdp)"),
            "host 5 log with WEAVE_NO_FASTDP=1:\n{text}"
        );
        Ok(())
    });
}

#[test]
fn sigkill_relaunch_and_reset_leave_no_devices() {
    run_test("fdplife", |net| {
        let p = net.pair()?;
        wait_overlay(&[&p.h1, &p.h2], "fastdp", 10)?;
        p.h1.kill_router()?;
        let left = devices(&p.h1)?;
        ensure!(left.len() == 1, "after SIGKILL: {left:?}");
        p.h1.launch(&[])?;
        wait_overlay(&[&p.h1, &p.h2], "fastdp", 20)?;
        ensure!(devices(&p.h1)?.len() == 1, "{:?}", devices(&p.h1)?);
        p.c1.wait_ping(p.c2.ip(), Duration::from_secs(10))?;
        // `stop` removes them and leaves the bridge (local traffic) alone.
        p.h2.weft_ok(&["stop"])?;
        ensure!(
            devices(&p.h2)?.is_empty(),
            "after stop: {:?}",
            devices(&p.h2)?
        );
        for h in [&p.h1, &p.h2] {
            h.weft_ok(&["reset", "--force"])?;
            ensure!(devices(h)?.is_empty(), "host {}: {:?}", h.n(), devices(h)?);
            let link = h.exec(&["ip", "-d", "link", "show"])?.ok()?.stdout;
            ensure!(!link.contains("vxlan"), "host {}: {link}", h.n());
            let fdb = h.exec(&["bridge", "fdb", "show"])?.ok()?.stdout;
            ensure!(!fdb.contains("vxwe"), "host {}: {fdb}", h.n());
        }
        Ok(())
    });
}

/// Listens in `c` for UDP datagrams on port 9999 (also as a member of 239.9.9.9) until 3 s
/// pass without one (at most 20 s); prints each payload with how often it arrived. Writes
/// "ready" to stderr once listening.
const LISTENER: &str = r#"
import socket, struct, sys, time, json, collections
ip = sys.argv[1]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", 9999))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
             socket.inet_aton("239.9.9.9") + socket.inet_aton(ip))
print("ready", file=sys.stderr, flush=True)
counts = collections.Counter()
start = last = time.time()
s.settimeout(0.2)
while time.time() - start < 20 and (not counts or time.time() - last < 3):
    try:
        data, _ = s.recvfrom(2048)
    except socket.timeout:
        continue
    counts[data.decode()] += 1
    last = time.time()
print(json.dumps(counts))
"#;

/// Sends 5 broadcast and 5 multicast datagrams from `c`, 100 ms apart.
const SENDER: &str = r#"
import socket, sys, time
ip = sys.argv[1]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(ip))
for i in range(5):
    s.sendto(b"b%d" % i, ("10.47.255.255", 9999))
    s.sendto(b"m%d" % i, ("239.9.9.9", 9999))
    time.sleep(0.1)
"#;

#[test]
fn three_hosts_relay_and_flood_exactly_once() {
    run_test("fdp3", |net| {
        let hosts: Vec<Host> = (1..=3).map(|k| net.host(k)).collect::<Result<_>>()?;
        let (a, b, c) = (&hosts[0], &hosts[1], &hosts[2]);
        // A and C never reach each other directly.
        block_underlay(a, c)?;
        a.launch(&[])?;
        b.launch(&[a])?;
        c.launch(&[a, b])?;
        wait_overlay(&[a, b, c], "fastdp", 30)?;
        for (h, n) in [(a, 1), (b, 2), (c, 1)] {
            let (words, text) = overlays(h)?;
            ensure!(words.len() == n, "host {}:\n{text}", h.n());
        }
        let ctrs: Vec<Container> = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| h.container(&format!("c{}", i + 1), &format!("10.32.0.{}/12", i + 1)))
            .collect::<Result<_>>()?;
        // A's and C's containers reach each other through B (relayed in userspace).
        ctrs[0].wait_ping(ctrs[2].ip(), Duration::from_secs(20))?;
        let s = ctrs[0].ping(ctrs[2].ip(), 10, 0.05)?;
        ensure!(s.received == 10, "{}/10 A -> C through B", s.received);
        let relayed = b.settled_counter("relayed_datagrams")?;
        ensure!(relayed > 0, "B relayed nothing");
        // One broadcast and one multicast stream from A's container: every other container
        // gets each datagram exactly once (B's through the kernel, C's relayed by B).
        floods_exactly_once(net, &ctrs[0], &[&ctrs[1], &ctrs[2]])?;
        let skipped = b.settled_counter("fastdp_floods_skipped")?;
        ensure!(
            skipped > 0,
            "B never skipped a sleeve copy of A's broadcasts"
        );
        unblock_underlay(a, c)?;
        Ok(())
    });
}

/// Runs the listener in each of `receivers`, the sender in `from`, and checks every datagram
/// arrived exactly once everywhere.
fn floods_exactly_once(
    net: &weft_tests::TestNet,
    from: &Container,
    receivers: &[&Container],
) -> Result<()> {
    let dir = net.dir();
    let mut listeners = Vec::new();
    for ct in receivers {
        let out = dir.join(format!("listen-{}-{}.out", from.name(), ct.name()));
        let err = dir.join(format!("listen-{}-{}.err", from.name(), ct.name()));
        let child = weft_tests::Cmd::new("ip")
            .args([
                "netns",
                "exec",
                ct.ns(),
                "python3",
                "-c",
                LISTENER,
                &ct.ip().to_string(),
            ])
            .spawn_to(&out, &err)?;
        listeners.push((ct.name().to_owned(), child, out, err));
    }
    let result = (|| -> Result<()> {
        for (name, _, _, err) in &listeners {
            wait_until(
                &format!("the listener in {name}"),
                Duration::from_secs(10),
                Duration::from_millis(50),
                || {
                    ensure!(std::fs::read_to_string(err)?.contains("ready"), "not yet");
                    Ok(())
                },
            )?;
        }
        std::thread::sleep(Duration::from_secs(1));
        let out = from.exec(&["python3", "-c", SENDER, &from.ip().to_string()])?;
        ensure!(out.success(), "sender: {out}");
        for (name, child, out, err) in &mut listeners {
            wait_until(
                &format!("the listener in {name} to finish"),
                Duration::from_secs(30),
                Duration::from_millis(100),
                || child.try_wait()?.context("running"),
            )?;
            let text = std::fs::read_to_string(&*out)?;
            let counts: std::collections::BTreeMap<String, u64> = serde_json::from_str(text.trim())
                .with_context(|| {
                    format!(
                        "{name}: {text} / {}",
                        std::fs::read_to_string(&*err).unwrap_or_default()
                    )
                })?;
            eprintln!("{} -> {name}: {counts:?}", from.name());
            for kind in ["b", "m"] {
                for i in 0..5 {
                    let key = format!("{kind}{i}");
                    let n = counts.get(&key).copied().unwrap_or(0);
                    if n != 1 {
                        bail!(
                            "{name} got {key} {n} times from {}: {counts:?}",
                            from.name()
                        );
                    }
                }
            }
        }
        Ok(())
    })();
    for (_, child, _, _) in &mut listeners {
        let _ = child.kill();
        let _ = child.wait();
    }
    result
}

#[test]
fn a_host_with_fastdp_and_sleeve_connections_at_once() {
    run_test("fdpmix", |net| {
        let hosts: Vec<Host> = (1..=3).map(|k| net.host(k)).collect::<Result<_>>()?;
        let (a, b, c) = (&hosts[0], &hosts[1], &hosts[2]);
        // A has no fast path: B's link to A is sleeve, B's link to C fastdp.
        launch_with(a, &["--no-fastdp"], &[])?;
        launch_with(b, &[], &[a])?;
        launch_with(c, &[], &[a, b])?;
        wait_established(&[a, b, c], Duration::from_secs(30))?;
        let c_addr = c.addr().to_string();
        wait_until(
            "B: sleeve to A, fastdp to C",
            Duration::from_secs(10),
            Duration::from_millis(100),
            || {
                let text = b.weft_ok(&["status", "connections"])?;
                let conns = parse_connections(&text);
                let word = |ip: &str| {
                    conns
                        .iter()
                        .find(|l| l.address.starts_with(&format!("{ip}:")))
                        .map(|l| l.info.split_whitespace().next().unwrap_or("").to_owned())
                };
                ensure!(
                    word(&a.addr().to_string()).as_deref() == Some("sleeve")
                        && word(&c_addr).as_deref() == Some("fastdp"),
                    "{text}"
                );
                Ok(())
            },
        )?;
        let ctrs: Vec<Container> = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| h.container(&format!("c{}", i + 1), &format!("10.32.0.{}/12", i + 1)))
            .collect::<Result<_>>()?;
        for (x, y) in [(0, 1), (1, 2), (0, 2)] {
            ctrs[x].wait_ping(ctrs[y].ip(), Duration::from_secs(20))?;
            let s = ctrs[y].ping(ctrs[x].ip(), 5, 0.05)?;
            ensure!(
                s.received == 5,
                "c{} -> c{}: {}/5",
                y + 1,
                x + 1,
                s.received
            );
        }
        // Broadcast and multicast exactly once from the mixed host and from each side.
        floods_exactly_once(net, &ctrs[1], &[&ctrs[0], &ctrs[2]])?;
        floods_exactly_once(net, &ctrs[0], &[&ctrs[1], &ctrs[2]])?;
        floods_exactly_once(net, &ctrs[2], &[&ctrs[0], &ctrs[1]])?;
        Ok(())
    });
}

#[test]
fn a_mac_that_moves_to_another_host_is_followed() {
    run_test("fdpmove", |net| {
        let hosts: Vec<Host> = (1..=3).map(|k| net.host(k)).collect::<Result<_>>()?;
        let (a, b, c) = (&hosts[0], &hosts[1], &hosts[2]);
        // Addresses outside IPAM's range, so the moved workload may keep its address.
        let range = ["--ipalloc-range", "10.40.0.0/16"];
        launch_with(a, &range, &[])?;
        launch_with(b, &range, &[a])?;
        launch_with(c, &range, &[a, b])?;
        wait_overlay(&[a, b, c], "fastdp", 30)?;
        let c1 = a.container("c1", "10.32.0.1/12")?;
        let moving = b.container("c2", "10.32.0.2/12")?;
        c1.wait_ping(moving.ip(), Duration::from_secs(20))?;
        let mac = moving.mac()?;
        // The workload moves to host 3 keeping its MAC and address (a migrated VM, a
        // container restored elsewhere): the old end goes, a new one with the same MAC comes.
        weft_tests::cmd::ip(["netns", "del", moving.ns()])?;
        let moved = c.container("c2moved", "10.32.0.2/12")?;
        let set = moved.exec(&["ip", "link", "set", "dev", "ethwe", "address", &mac])?;
        ensure!(set.success(), "setting ethwe's MAC: {set}");
        ensure!(moved.mac()? == mac, "MAC not moved");
        // Its first frame (an ARP request for c1) teaches host 1's bridge the new port; c1's
        // ARP entry for 10.32.0.2 still names the same MAC.
        let t0 = Instant::now();
        moved.wait_ping(c1.ip(), Duration::from_secs(10))?;
        c1.wait_ping(moved.ip(), Duration::from_secs(10))?;
        eprintln!("moved MAC reachable again after {:.1?}", t0.elapsed());
        let s = c1.ping(moved.ip(), 10, 0.05)?;
        ensure!(s.received == 10, "{}/10 to the moved MAC", s.received);
        // Host 1's bridge has the MAC behind the fast path port to host 3 now.
        let fdb = a
            .exec(&["bridge", "fdb", "show", "br", "weave"])?
            .ok()?
            .stdout;
        let want = format!("vxwe-{:03x}", c.short_id()?);
        ensure!(
            fdb.lines()
                .any(|l| l.starts_with(&mac) && l.contains(&want)),
            "host 1's bridge does not have {mac} on {want}:\n{fdb}"
        );
        Ok(())
    });
}
