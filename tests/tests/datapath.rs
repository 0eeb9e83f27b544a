//! Integration tests (root, network namespaces): the data path's life cycle and shape.
//!
//! - A connection whose UDP path is blocked in one direction stays `pending` and becomes
//!   `established` once the path opens.
//! - `weft stop` ends the router but leaves the bridge, so containers on one host still talk.
//! - `weft reset` removes the bridge, the TAP, every container interface and the stored
//!   identity, and a fresh `weft launch` works afterwards.
//! - The overlay MTU (default 1376, `WEAVE_MTU` otherwise) is what the bridge and `ethwe` get,
//!   and a don't-fragment ping of exactly that size crosses hosts while one byte more fails
//!   inside the container.
//! - Learned MACs: once ARP has been answered, unicast frames go only to the owning peer (a
//!   third host's underlay sees the flooded ARP request but none of the ICMP).
//! - `--datapath-priority N` (or `WEFT_DATAPATH_PRIORITY`) puts the data-plane threads (one per
//!   CPU by default), and only them, on SCHED_FIFO with priority N, as `chrt -p` shows; traffic still flows; a priority
//!   outside 0-99 is refused before anything starts.
//! - `--datapath-threads N` (or `WEFT_DATAPATH_THREADS`), encrypted: the router runs N
//!   data-plane threads and the express lane's, the TAP has N + 1 queues; a single TCP stream between containers is never
//!   reordered (the sender's kernel detects no reordering, the receiver queues nothing out of
//!   order unless something was lost and retransmitted); parallel streams keep every thread
//!   busy on both hosts; files arrive intact; no datagram fails authentication or is taken
//!   for a replay.
//! - The express lane, encrypted: while a bulk TCP stream runs between two containers, their
//!   pings all come back, and each host's express lane read and received them (its counters
//!   grow by at least the pings) while the stream's data did not take it; `weave status`
//!   says `express lane`, the thread runs at nice -20; a router launched with
//!   `WEFT_NO_EXPRESS` has no express thread and still talks to one that has.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use weft_tests::status::parse_connections;
use weft_tests::{Container, Host, Output, cmd, cmd::pid_alive, run_test, wait_until};

/// Names of the links in namespace `ns`.
fn links(ns: &str) -> Result<Vec<String>> {
    let out = cmd::ip(["-j", "-n", ns, "link", "show"])?;
    let v: Value = serde_json::from_str(&out).with_context(|| format!("ip -j link: {out}"))?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
        .collect())
}

/// MTU of link `dev` in namespace `ns`.
fn link_mtu(ns: &str, dev: &str) -> Result<u64> {
    let out = cmd::ip(["-j", "-n", ns, "link", "show", "dev", dev])?;
    let v: Value = serde_json::from_str(&out)?;
    v[0]["mtu"]
        .as_u64()
        .with_context(|| format!("no mtu for {dev} in {ns}: {out}"))
}

/// The states of every line of `weft status connections` on `h`, and the raw text.
fn conn_states(h: &Host) -> Result<(Vec<String>, String)> {
    let text = h.weft_ok(&["status", "connections"])?;
    Ok((
        parse_connections(&text)
            .into_iter()
            .map(|c| c.state)
            .collect(),
        text,
    ))
}

/// `ping -M do -s SIZE -c COUNT -W 2 dst` from container `c`.
fn ping_df(c: &Container, dst: &Container, size: u32, count: u32) -> Result<Output> {
    c.exec(&[
        "ping".to_owned(),
        "-n".into(),
        "-M".into(),
        "do".into(),
        "-s".into(),
        size.to_string(),
        "-c".into(),
        count.to_string(),
        "-i".into(),
        "0.2".into(),
        "-W".into(),
        "2".into(),
        dst.ip().to_string(),
    ])
}

/// Checks that a DF ping of `mtu - 28` bytes of payload crosses from `a` to `b` and one byte
/// more fails with a local "message too long" error.
fn check_df_limit(a: &Container, b: &Container, mtu: u32) -> Result<()> {
    let fits = mtu - 28;
    let out = ping_df(a, b, fits, 3)?;
    let s = weft_tests::net::parse_ping(&out.stdout).with_context(|| format!("{out}"))?;
    ensure!(
        s.received == 3,
        "DF ping with -s {fits} (packet = MTU {mtu}) from {} to {}: {}/3 replies\n{out}",
        a.name(),
        b.name(),
        s.received
    );
    let too_big = fits + 1;
    let out = ping_df(a, b, too_big, 1)?;
    let all = format!("{}\n{}", out.stdout, out.stderr).to_ascii_lowercase();
    ensure!(
        !out.success() && all.contains("message too long"),
        "DF ping with -s {too_big} (one byte over MTU {mtu}) did not fail locally with \
         \"message too long\":\n{out}"
    );
    ensure!(
        all.contains(&format!("mtu={mtu}")) || all.contains(&format!("mtu = {mtu}")),
        "the local error does not name MTU {mtu}:\n{out}"
    );
    Ok(())
}

#[test]
fn blocked_udp_keeps_connection_pending_until_unblocked() {
    run_test("udpblk", |net| {
        let h1 = net.host(1)?;
        let h2 = net.host(2)?;
        // Host 2 drops every datagram to the data port: host 1's heartbeats never arrive,
        // host 2's do (so host 1 acknowledges them, host 2 never can).
        // Sleeve's port: the connection is established by its heartbeats (the kernel fast
        // path on 6784 is only tried on an established connection).
        let rule = ["INPUT", "-p", "udp", "--dport", "6783", "-j", "DROP"];
        let iptables = |op: &str| -> Result<()> {
            let mut args = vec!["iptables", "-w", op];
            args.extend_from_slice(&rule);
            h2.exec(&args)?.ok()?;
            Ok(())
        };
        iptables("-A")?;
        h1.launch(&[])?;
        h2.launch(&[&h1])?;
        for h in [&h1, &h2] {
            wait_until(
                &format!("a pending connection on host {}", h.n()),
                Duration::from_secs(20),
                Duration::from_millis(200),
                || {
                    let (st, text) = conn_states(h)?;
                    ensure!(st == ["pending"], "`weft status connections`:\n{text}");
                    Ok(())
                },
            )?;
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(6) {
            for h in [&h1, &h2] {
                let (st, text) = conn_states(h)?;
                ensure!(
                    st == ["pending"],
                    "host {} left `pending` after {:.1?} with UDP 6783 blocked:\n{text}",
                    h.n(),
                    start.elapsed()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let c1 = h1.container("c1", "10.32.0.1/12")?;
        let c2 = h2.container("c2", "10.32.0.2/12")?;
        iptables("-D")?;
        let t0 = Instant::now();
        weft_tests::wait_established(&[&h1, &h2], Duration::from_secs(15))?;
        eprintln!("established {:.1?} after unblocking", t0.elapsed());
        c1.wait_ping(c2.ip(), Duration::from_secs(10))?;
        c2.wait_ping(c1.ip(), Duration::from_secs(5))?;
        Ok(())
    });
}

#[test]
fn stop_keeps_local_traffic() {
    run_test("stop", |net| {
        let p = net.pair()?;
        // A second container on host 1.
        let c3 = p.h1.container("c3", "10.32.0.3/12")?;
        c3.wait_ping(p.c1.ip(), Duration::from_secs(10))?;
        c3.wait_ping(p.c2.ip(), Duration::from_secs(10))?;
        let pid = p.h1.router_pid()?;
        let out = p.h1.weft(&["stop"])?.ok()?;
        ensure!(
            !out.stderr.contains("not running"),
            "weft stop said the router was not running:\n{out}"
        );
        ensure!(!pid_alive(pid), "router pid {pid} still alive after stop");
        let status = p.h1.weft(&["status"])?;
        ensure!(
            !status.success(),
            "the API still answers after stop:\n{status}"
        );
        ensure!(
            links(p.h1.ns())?.iter().any(|l| l == "weave"),
            "bridge weave is gone after stop: {:?}",
            links(p.h1.ns())?
        );
        // Local traffic through the bridge alone.
        for (a, b) in [(&p.c1, &c3), (&c3, &p.c1)] {
            let s = a.ping(b.ip(), 5, 0.2)?;
            ensure!(
                s.received == 5,
                "{} -> {} on the same host after stop: {}/5 replies",
                a.name(),
                b.name(),
                s.received
            );
        }
        // Nothing crosses to the other host any more.
        for (a, b) in [(&p.c1, &p.c2), (&p.c2, &p.c1), (&c3, &p.c2)] {
            let s = a.ping(b.ip(), 3, 0.2)?;
            ensure!(
                s.received == 0,
                "{} -> {} across hosts still answered after stop: {}/3",
                a.name(),
                b.name(),
                s.received
            );
        }
        Ok(())
    });
}

#[test]
fn reset_removes_everything_and_launch_works_again() {
    run_test("reset", |net| {
        let p = net.pair()?;
        let c4 = p.h2.container("c4", "10.32.0.4/12")?;
        c4.wait_ping(p.c1.ip(), Duration::from_secs(10))?;
        let before = links(p.h2.ns())?;
        ensure!(
            before.iter().any(|l| l == "weave")
                && before.iter().any(|l| l == "vethwe-tap")
                && before.iter().filter(|l| l.starts_with("vethwepl")).count() == 2,
            "before reset host 2 should have weave, vethwe-tap and two vethwepl*: {before:?}"
        );
        let state_files = ["peer-name", "short-id"];
        for f in state_files {
            let path = p.h2.state_dir().join(f);
            ensure!(path.exists(), "{} missing before reset", path.display());
        }
        let pid = p.h2.router_pid()?;
        p.h2.weft_ok(&["reset"])?;
        ensure!(!pid_alive(pid), "router pid {pid} still alive after reset");
        let after = links(p.h2.ns())?;
        let left: Vec<&String> = after
            .iter()
            .filter(|l| *l == "weave" || *l == "vethwe-tap" || l.starts_with("vethwepl"))
            .collect();
        ensure!(
            left.is_empty(),
            "after reset host 2 still has {left:?} (all links: {after:?})"
        );
        for c in [&p.c2, &c4] {
            let l = links(c.ns())?;
            ensure!(
                !l.iter().any(|n| n == weft_tests::net::CONTAINER_DEV),
                "{} still has ethwe after reset: {l:?}",
                c.name()
            );
        }
        let stored: Vec<PathBuf> = state_files
            .iter()
            .map(|f| p.h2.state_dir().join(f))
            .filter(|p| p.exists())
            .collect();
        ensure!(
            stored.is_empty(),
            "state files left after reset: {stored:?}"
        );
        // Host 1 and its container are untouched.
        ensure!(
            links(p.c1.ns())?
                .iter()
                .any(|n| n == weft_tests::net::CONTAINER_DEV),
            "host 1's container lost ethwe"
        );

        // A fresh start: launch, attach the same namespace again, traffic flows.
        p.h2.launch(&[&p.h1])?;
        weft_tests::wait_established(&[&p.h1, &p.h2], Duration::from_secs(30))?;
        p.h2.weft_ok(&["attach", p.c2.cidr(), p.c2.ns()])
            .context("attaching c2 again after reset")?;
        p.c1.wait_ping(p.c2.ip(), Duration::from_secs(20))?;
        p.c2.wait_ping(p.c1.ip(), Duration::from_secs(5))?;
        for f in state_files {
            let path = p.h2.state_dir().join(f);
            ensure!(path.exists(), "{} not written again", path.display());
        }
        Ok(())
    });
}

#[test]
fn mtu_default_1376() {
    run_test("mtudef", |net| {
        let p = net.pair()?;
        for h in [&p.h1, &p.h2] {
            let m = link_mtu(h.ns(), "weave")?;
            ensure!(m == 1376, "bridge weave on host {} has MTU {m}", h.n());
        }
        for c in [&p.c1, &p.c2] {
            let m = c.mtu()?;
            ensure!(m == 1376, "{} ethwe MTU {m}", c.name());
        }
        check_df_limit(&p.c1, &p.c2, 1376)?;
        check_df_limit(&p.c2, &p.c1, 1376)?;
        Ok(())
    });
}

#[test]
fn mtu_from_weave_mtu_env() {
    run_test("mtuenv", |net| {
        let h1 = net.host(1)?;
        let h2 = net.host(2)?;
        let env_weft = |h: &Host, args: &[&str]| -> Result<String> {
            let out = h.weft_cmd(args)?.env("WEAVE_MTU", "1400").run()?;
            if !out.success() {
                bail!("on host {}: {out}\n{}", h.n(), cmd::tail(&h.log(), 20));
            }
            Ok(out.stdout)
        };
        env_weft(&h1, &["launch", "--nickname", "host1"])?;
        env_weft(
            &h2,
            &["launch", "--nickname", "host2", &h1.addr().to_string()],
        )?;
        weft_tests::wait_established(&[&h1, &h2], Duration::from_secs(30))?;
        let mut ctrs = Vec::new();
        for (h, k) in [(&h1, 1), (&h2, 2)] {
            let ns = net.netns(&format!("cm{k}"))?;
            let cidr = format!("10.32.0.{k}/12");
            env_weft(h, &["attach", &cidr, &ns])?;
            ctrs.push(Container::from_ns(&format!("c{k}"), &ns, &cidr)?);
        }
        for h in [&h1, &h2] {
            let m = link_mtu(h.ns(), "weave")?;
            ensure!(m == 1400, "bridge weave on host {} has MTU {m}", h.n());
            let v = h.status_json()?;
            ensure!(
                v["mtu"].as_u64() == Some(1400),
                "host {} reports mtu {}",
                h.n(),
                v["mtu"]
            );
        }
        for c in &ctrs {
            let m = c.mtu()?;
            ensure!(m == 1400, "{} ethwe MTU {m}", c.name());
        }
        ctrs[0].wait_ping(ctrs[1].ip(), Duration::from_secs(20))?;
        check_df_limit(&ctrs[0], &ctrs[1], 1400)?;
        check_df_limit(&ctrs[1], &ctrs[0], 1400)?;
        Ok(())
    });
}

/// A running tshark writing tab-separated fields to a file.
struct Capture {
    child: Child,
    out: PathBuf,
    err: PathBuf,
    ns: String,
    probe: String,
}

/// Probe rows carry only outer values (no field has an "outer,inner" pair), as long as the
/// fields include `eth.dst`, which every VXLAN datagram has twice.
fn probe_rows(text: &str) -> usize {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.contains(','))
        .count()
}

impl Capture {
    /// Starts tshark in `ns` on `dev` (the data port decoded as VXLAN: 6784, the kernel fast
    /// path, or 6783, sleeve, in the `--no-fastdp` pass) and waits until it captures:
    /// "Capturing on" can come before packets are seen (under load), so probe datagrams go
    /// from `ns` to `probe_to` on that port until one shows in the output. The probe rows have no inner
    /// fields.
    fn start(
        ns: &str,
        dev: &str,
        dir: &std::path::Path,
        fields: &[&str],
        probe_to: Ipv4Addr,
    ) -> Result<Self> {
        let out = dir.join("tshark.out");
        let err = dir.join("tshark.err");
        let port = if weft_tests::net::no_fastdp_pass() {
            6783
        } else {
            6784
        };
        let (filter, decode) = (
            format!("udp port {port}"),
            format!("udp.port=={port},vxlan"),
        );
        let mut c = weft_tests::Cmd::new("ip").args([
            "netns",
            "exec",
            ns,
            "tshark",
            "-l",
            "-n",
            "-i",
            dev,
            "-f",
            &filter,
            "-d",
            &decode,
            "-a",
            "duration:90",
            "-T",
            "fields",
            "-E",
            "separator=/t",
        ]);
        for f in fields {
            c = c.args(["-e", f]);
        }
        let child = c.spawn_to(&out, &err)?;
        let probe = format!(
            "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\
             .sendto(b'weft-capture-probe', ('{probe_to}', {port}))"
        );
        let mut cap = Self {
            child,
            out,
            err,
            ns: ns.to_string(),
            probe,
        };
        let started = wait_until(
            "tshark to start capturing",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || {
                let e = std::fs::read_to_string(&cap.err).unwrap_or_default();
                if e.contains("Capturing on") {
                    return Ok(());
                }
                if let Some(st) = cap.child.try_wait()? {
                    bail!("tshark exited early with {st}: {e}");
                }
                bail!("not yet: {e}")
            },
        );
        let started = started.and_then(|()| cap.sync());
        if let Err(e) = started {
            cap.kill();
            return Err(e);
        }
        Ok(cap)
    }

    /// Sends probe datagrams until a new probe row is in tshark's output. Packets are written
    /// in the order they were captured, so everything sent before the probe is in the output
    /// then (tshark and dumpcap buffer; stopping them right after traffic can lose its tail).
    fn sync(&self) -> Result<()> {
        let before = probe_rows(&std::fs::read_to_string(&self.out).unwrap_or_default());
        wait_until(
            "tshark to write a probe datagram",
            Duration::from_secs(20),
            Duration::from_millis(200),
            || {
                cmd::ns_exec(
                    &self.ns,
                    ["python3", "-c", &self.probe],
                    Duration::from_secs(5),
                )?
                .ok()?;
                std::thread::sleep(Duration::from_millis(100));
                let seen = std::fs::read_to_string(&self.out).unwrap_or_default();
                ensure!(probe_rows(&seen) > before, "no new probe row yet");
                Ok(())
            },
        )
    }

    /// Waits until everything sent so far is in the output ([`Capture::sync`]), stops tshark
    /// (SIGINT) and returns its output lines, each split into fields, each field split at
    /// commas (outer, inner) and lower-cased.
    fn finish(mut self) -> Result<(Vec<Vec<Vec<String>>>, String)> {
        // `ip netns exec` execs tshark, so this pid is tshark itself.
        let res = (|| -> Result<String> {
            self.sync()?;
            cmd::kill(self.child.id(), "INT")?;
            wait_until(
                "tshark to exit",
                Duration::from_secs(15),
                Duration::from_millis(50),
                || self.child.try_wait()?.context("running"),
            )?;
            Ok(std::fs::read_to_string(&self.out)?)
        })();
        self.kill();
        let text = res?;
        let rows = text
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                l.split('\t')
                    .map(|f| {
                        f.split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_ascii_lowercase)
                            .collect()
                    })
                    .collect()
            })
            .collect();
        Ok((rows, text))
    }

    fn kill(&mut self) {
        // Our own child, killed by its id.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.kill();
    }
}

#[test]
fn learned_macs_keep_unicast_off_other_peers() {
    run_test("maclrn", |net| {
        let (hosts, ctrs) = net.mesh(3)?;
        let (c1, c2, c3) = (&ctrs[0], &ctrs[1], &ctrs[2]);
        // Inner fields are the second value of each (outer,inner) pair.
        const FIELDS: [&str; 7] = [
            "ip.src",
            "ip.dst",
            "eth.dst",
            "arp.opcode",
            "arp.dst.proto_ipv4",
            "icmp.type",
            "arp.src.proto_ipv4",
        ];
        let cap = Capture::start(hosts[2].ns(), "ul0", net.dir(), &FIELDS, hosts[0].addr())?;
        // The very first frames between c1 and c2: c1's ARP request (broadcast, so flooded to
        // every peer), c2's reply, then the echo requests and replies.
        let s12 = c1.ping(c2.ip(), 10, 0.2)?;
        let s13 = c1.ping(c3.ip(), 3, 0.2)?;
        let (rows, text) = cap.finish()?;
        ensure!(
            s12.received >= 9 && s13.received >= 2,
            "pings failed: c1->c2 {}/10, c1->c3 {}/3",
            s12.received,
            s13.received
        );
        let inner = |row: &Vec<Vec<String>>, i: usize| -> Option<String> {
            // ARP and ICMP fields have only an inner value; ip/eth have outer then inner.
            let f = row.get(i)?;
            match i {
                0..=2 => f.get(1).cloned(),
                _ => f.first().cloned(),
            }
        };
        let (ip1, ip2, ip3) = (
            c1.ip().to_string(),
            c2.ip().to_string(),
            c3.ip().to_string(),
        );
        let is_icmp = |r: &Vec<Vec<String>>| inner(r, 5).is_some();
        let between = |r: &Vec<Vec<String>>, a: &str, b: &str| {
            let (s, d) = (inner(r, 0), inner(r, 1));
            (s.as_deref() == Some(a) && d.as_deref() == Some(b))
                || (s.as_deref() == Some(b) && d.as_deref() == Some(a))
        };
        let arp_request_for_c2 = rows.iter().any(|r| {
            inner(r, 3).as_deref() == Some("1")
                && inner(r, 4).as_deref() == Some(ip2.as_str())
                && inner(r, 2).as_deref() == Some("ff:ff:ff:ff:ff:ff")
        });
        let arp_replies_12: Vec<&Vec<Vec<String>>> = rows
            .iter()
            .filter(|r| {
                inner(r, 3).as_deref() == Some("2")
                    && inner(r, 4).as_deref() == Some(ip1.as_str())
                    && inner(r, 6).as_deref() == Some(ip2.as_str())
            })
            .collect();
        let icmp_12 = rows
            .iter()
            .filter(|r| is_icmp(r) && between(r, &ip1, &ip2))
            .count();
        let icmp_13 = rows
            .iter()
            .filter(|r| is_icmp(r) && between(r, &ip1, &ip3))
            .count();
        eprintln!(
            "host 3 saw {} datagrams: ARP request for c2 flooded: {arp_request_for_c2}, \
             ARP replies to c1: {}, ICMP c1<->c2: {icmp_12}, ICMP c1<->c3: {icmp_13}",
            rows.len(),
            arp_replies_12.len()
        );
        let dump = cmd::tail(&text, 60);
        ensure!(
            arp_request_for_c2,
            "host 3 never saw c1's broadcast ARP request for c2 (flooding broken, or the capture \
             saw nothing):\n{dump}"
        );
        ensure!(
            icmp_13 >= 4,
            "host 3 saw only {icmp_13} ICMP packets of c1<->c3 (capture not working?):\n{dump}"
        );
        ensure!(
            icmp_12 == 0,
            "host 3 saw {icmp_12} ICMP packets between c1 and c2, which live on hosts 1 and 2: \
             learned unicast was flooded:\n{dump}"
        );
        ensure!(
            arp_replies_12.is_empty(),
            "host 3 saw c2's unicast ARP reply to c1:\n{dump}"
        );
        Ok(())
    });
}

/// `chrt -p` of every thread of `pid`: (thread name, what chrt says).
fn thread_policies(pid: u32) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let tid = entry?.file_name().to_string_lossy().into_owned();
        let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")) else {
            continue; // the thread ended
        };
        let chrt = cmd::Cmd::new("chrt").args(["-p", &tid]).run()?;
        if chrt.success() {
            out.push((comm.trim().to_owned(), chrt.stdout));
        }
    }
    Ok(out)
}

/// `c1` (10.32.0.1) on `h1` and `c2` (10.32.0.2) on `h2`, once `c1` pings `c2`.
fn containers_pinging(h1: &Host, h2: &Host) -> Result<(Container, Container)> {
    let c1 = h1.container("c1", "10.32.0.1/12")?;
    let c2 = h2.container("c2", "10.32.0.2/12")?;
    c1.wait_ping(c2.ip(), Duration::from_secs(20))?;
    Ok((c1, c2))
}

/// CPU time (user + system, clock ticks) of each data-plane thread of `pid`, by thread id.
fn dataplane_ticks(pid: u32) -> Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let tid = entry?.file_name().to_string_lossy().into_owned();
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")) else {
            continue;
        };
        let Some((name, rest)) = stat.split_once(" (").and_then(|(_, r)| r.rsplit_once(") "))
        else {
            continue;
        };
        if name != "weft-dataplane" {
            continue;
        }
        // After the name: state is field 3, utime and stime fields 14 and 15.
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
        out.push((tid, ticks));
    }
    out.sort();
    Ok(out)
}

#[test]
fn datapath_threads_keep_each_flow_in_order_and_all_threads_busy() {
    run_test("dthr", |net| {
        let h1 = net.host(1)?;
        let h2 = net.host(2)?;
        let pw = ["--password", "threads and streams"];
        h1.weft_ok(&[
            "launch",
            "--no-fastdp",
            "--datapath-threads",
            "2",
            pw[0],
            pw[1],
        ])?;
        h2.weft_cmd(&[
            "launch",
            "--no-fastdp",
            pw[0],
            pw[1],
            &h1.addr().to_string(),
        ])?
        .env("WEFT_DATAPATH_THREADS", "2")
        .run_ok()?;
        weft_tests::wait_established(&[&h1, &h2], Duration::from_secs(30))?;
        for h in [&h1, &h2] {
            let dp = dataplane_ticks(h.router_pid()?)?;
            ensure!(dp.len() == 2, "host {}: data-plane threads {dp:?}", h.n());
            // The TAP's queues, seen from its namespace.
            let queues = cmd::Cmd::new("ip")
                .args([
                    "netns",
                    "exec",
                    h.ns(),
                    "ls",
                    "/sys/class/net/vethwe-tap/queues",
                ])
                .run_ok()?;
            let mut queues: Vec<&str> = queues.stdout.split_whitespace().collect();
            queues.sort_unstable();
            // Two for the bulk threads, one for the express lane.
            ensure!(
                queues == ["rx-0", "rx-1", "rx-2", "tx-0", "tx-1", "tx-2"],
                "host {}: TAP queues {queues:?}",
                h.n()
            );
        }
        let (c1, c2) = containers_pinging(&h1, &h2)?;
        weft_tests::mesh::transfer_intact(net, &c1, &c2, 20)?;
        weft_tests::mesh::transfer_intact(net, &c2, &c1, 20)?;
        // One second of one-way UDP from c2 to c1 (iperf3 -u; nothing comes back on that
        // flow): a busy flow for host 2 only, which then has handed out one more bulk queue
        // in turn than host 1. The stream below is on one thread per host only if host 2
        // follows host 1's choice for it (its pin), not its own turn.
        let dir = net.dir();
        let mut udp_srv = cmd::Cmd::new("ip")
            .args(["netns", "exec", c1.ns(), "iperf3", "-s", "-1", "-p", "5202"])
            .spawn_to(&dir.join("iperf3-u.out"), &dir.join("iperf3-u.err"))?;
        std::thread::sleep(Duration::from_millis(300));
        let c1_ip = c1.ip().to_string();
        let out = c2.exec(&[
            "iperf3", "-c", &c1_ip, "-p", "5202", "-u", "-b", "200M", "-t", "1",
        ]);
        let _ = udp_srv.kill();
        let _ = udp_srv.wait();
        let out = out?;
        ensure!(out.success(), "one-way UDP from c2: {out}");

        // One stream for 4 s: no reordering.
        let server =
            cmd::Cmd::new("ip").args(["netns", "exec", c2.ns(), "iperf3", "-s", "-p", "5201"]);
        let mut srv = server.spawn_to(&dir.join("iperf3-s.out"), &dir.join("iperf3-s.err"))?;
        // iperf3 from c1 to c2's server with `opts`.
        let iperf3 = |opts: &[&str]| -> Result<Output> {
            let c2_ip = c2.ip().to_string();
            let mut args = vec!["iperf3", "-c", &c2_ip, "-p", "5201"];
            args.extend_from_slice(opts);
            let out = c1.exec(&args)?;
            ensure!(out.success(), "iperf3 {opts:?}: {out}");
            Ok(out)
        };
        // Data-plane thread ticks on both hosts while `f` runs (per host, per thread), and
        // what `f` gave.
        let ticks_during = |f: &dyn Fn() -> Result<Output>| -> Result<(Vec<Vec<u64>>, Output)> {
            let ticks = || -> Result<Vec<Vec<(String, u64)>>> {
                [&h1, &h2]
                    .iter()
                    .map(|h| dataplane_ticks(h.router_pid()?))
                    .collect()
            };
            let before = ticks()?;
            let out = f()?;
            let after = ticks()?;
            let busy = before
                .iter()
                .zip(&after)
                .map(|(b, a)| b.iter().zip(a).map(|((_, t0), (_, t1))| t1 - t0).collect())
                .collect();
            Ok((busy, out))
        };
        let res = (|| {
            std::thread::sleep(Duration::from_millis(500));
            let (before_tx, before_rx) = (cmd::nstat(c1.ns())?, cmd::nstat(c2.ns())?);
            let (one, out) = ticks_during(&|| iperf3(&["-t", "4", "--json"]))?;
            let (after_tx, after_rx) = (cmd::nstat(c1.ns())?, cmd::nstat(c2.ns())?);
            let delta = |a: &std::collections::HashMap<String, u64>,
                         b: &std::collections::HashMap<String, u64>,
                         k: &str| {
                a.get(k).copied().unwrap_or(0) - b.get(k).copied().unwrap_or(0)
            };
            let reorder: u64 = [
                "TcpExtTCPSACKReorder",
                "TcpExtTCPTSReorder",
                "TcpExtTCPRenoReorder",
            ]
            .iter()
            .map(|k| delta(&after_tx, &before_tx, k))
            .sum();
            let retrans = delta(&after_tx, &before_tx, "TcpRetransSegs");
            let segs = delta(&after_tx, &before_tx, "TcpOutSegs");
            let ofo = delta(&after_rx, &before_rx, "TcpExtTCPOFOQueue");
            let v: Value = serde_json::from_str(&out.stdout)?;
            let gbits = v["end"]["sum_received"]["bits_per_second"]
                .as_f64()
                .unwrap_or(0.0)
                / 1e9;
            eprintln!(
                "one stream: {gbits:.2} Gbit/s, {segs} segments, reordering seen by the sender \
                 {reorder}, retransmitted {retrans}, receiver's out-of-order queue {ofo}"
            );
            // A flow split across threads is reordered all the time (steering by the wrong
            // header byte gave 11 130 reorderings in such a run). A flow kept on one thread
            // still shows a rare one: 2-9 in 2 million segments, mostly with a loss, with this
            // build and the one before UDP super-frames alike (not traced further; a writing
            // thread that changes CPU between two TAP writes can do it, each CPU draining its
            // own backlog towards the veth). So the bound is 1 in 100 000.
            ensure!(segs > 10_000, "the stream sent only {segs} segments");
            ensure!(
                reorder * 100_000 <= segs,
                "the sender saw {reorder} reorderings in {segs} segments ({retrans} retransmits)"
            );
            ensure!(
                retrans > 0 || ofo * 100_000 <= segs,
                "the receiver queued {ofo} of {segs} segments out of order with nothing lost"
            );

            // One stream is one thread's work on each host: the sending router's thread
            // took the stream's data, and the receiving router pinned the flow to the thread
            // that delivered it, so the ACKs come back through that thread too (crossed,
            // each host's other thread would read or write the ACKs: a tenth of the work).
            eprintln!("one stream: ticks per data-plane thread (host 1, host 2): {one:?}");
            for (h, t) in one.iter().enumerate() {
                let (lo, hi) = (t.iter().min().unwrap_or(&0), t.iter().max().unwrap_or(&0));
                ensure!(
                    *hi >= 20 && lo * 10 <= *hi,
                    "host {}: one stream kept data-plane threads busy as {t:?} ticks (one \
                     thread expected)",
                    h + 1
                );
            }

            // Parallel streams: the bulk queues are handed out in turn, so 4 flows are 2 and
            // 2 on the 2 threads of each host. The 4 flows' client ports are chosen so that
            // the flow hash puts all 4 on one queue: steering by the hash alone (as before,
            // and as the kernel's own TAP steering does) leaves a thread idle here; it did so
            // by chance 1 time in 8 with any 4 flows, and put 3 on one thread half the time.
            let cport = same_hash_parity_ports(c1.ip(), c2.ip(), 5201, 4);
            eprintln!("4 streams from ports {cport}.. (one hash parity)");
            let (busy, _) =
                ticks_during(&|| iperf3(&["-t", "2", "-P", "4", "--cport", &cport.to_string()]))?;
            eprintln!("4 streams: ticks per data-plane thread (host 1, host 2): {busy:?}");
            for (h, t) in busy.iter().enumerate() {
                let (lo, hi) = (t.iter().min().unwrap_or(&0), t.iter().max().unwrap_or(&0));
                ensure!(
                    *lo >= 5 && lo * 5 >= hi * 2,
                    "host {}: 4 parallel streams kept data-plane threads busy as {t:?} ticks \
                     (2 flows each expected)",
                    h + 1
                );
            }
            for h in [&h1, &h2] {
                let auth = h.settled_counter("udp_rx_dropped_auth")?;
                let replay = h.counter("udp_rx_dropped_replay")?;
                ensure!(
                    auth == 0 && replay == 0,
                    "host {}: {auth} datagrams failed authentication, {replay} replays",
                    h.n()
                );
            }
            Ok(())
        })();
        let _ = srv.kill();
        let _ = srv.wait();
        res
    });
}

/// The first client port `p` from 40 000 on such that the TCP flows from `client` ports
/// `p..p + n` to `server:port` all have flow hashes of one parity (the express lane's
/// steering program's hash, [`weft_wire::flow::hash`]): on one of 2 queues by the hash.
fn same_hash_parity_ports(client: Ipv4Addr, server: Ipv4Addr, port: u16, n: u16) -> u16 {
    let hash = |sport: u16| {
        let mut f = [0u8; 38];
        f[12..14].copy_from_slice(&[8, 0]);
        f[14] = 0x45;
        f[23] = 6;
        f[26..30].copy_from_slice(&client.octets());
        f[30..34].copy_from_slice(&server.octets());
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&port.to_be_bytes());
        weft_wire::flow::hash(&f).expect("a whole frame") % 2
    };
    (40_000..60_000)
        .find(|&p| (p..p + n).all(|q| hash(q) == hash(p)))
        .expect("1 in 8 runs of ports qualify")
}

/// The nice value of thread `name` of process `pid`, if it has one.
fn thread_nice(pid: u32, name: &str) -> Result<Option<i64>> {
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let tid = entry?.file_name().to_string_lossy().into_owned();
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")) else {
            continue;
        };
        let Some((comm, rest)) = stat.split_once(" (").and_then(|(_, r)| r.rsplit_once(") "))
        else {
            continue;
        };
        if comm == name {
            // After the name: state is field 3, nice field 19.
            let f: Vec<&str> = rest.split_whitespace().collect();
            return Ok(Some(f[16].parse()?));
        }
    }
    Ok(None)
}

#[test]
fn the_express_lane_carries_pings_past_a_bulk_stream() {
    run_test("dexp", |net| {
        let h1 = net.host(1)?;
        let h2 = net.host(2)?;
        let pw = ["--password", "sparse flows first"];
        h1.weft_ok(&["launch", "--no-fastdp", pw[0], pw[1]])?;
        h2.weft_ok(&[
            "launch",
            "--no-fastdp",
            pw[0],
            pw[1],
            &h1.addr().to_string(),
        ])?;
        weft_tests::wait_established(&[&h1, &h2], Duration::from_secs(30))?;
        for h in [&h1, &h2] {
            let text = h.weft_ok(&["status"])?;
            ensure!(
                text.lines()
                    .any(|l| l.contains("DataPath:") && l.contains("express lane")),
                "host {}: no express lane in `weft status`:\n{text}",
                h.n()
            );
            let nice = thread_nice(h.router_pid()?, "weft-express")?;
            ensure!(
                nice == Some(-20),
                "host {}: express thread nice {nice:?}",
                h.n()
            );
        }
        let (c1, c2) = containers_pinging(&h1, &h2)?;
        let counters = |h: &Host| -> Result<[u64; 3]> {
            Ok([
                h.settled_counter("express_tap_rx_frames")?,
                h.counter("express_udp_rx_datagrams")?,
                h.counter("tap_rx_frames")?,
            ])
        };
        let server =
            cmd::Cmd::new("ip").args(["netns", "exec", c2.ns(), "iperf3", "-s", "-p", "5201"]);
        let dir = net.dir();
        let mut srv = server.spawn_to(&dir.join("iperf3-s.out"), &dir.join("iperf3-s.err"))?;
        let res = (|| {
            std::thread::sleep(Duration::from_millis(500));
            let before = [counters(&h1)?, counters(&h2)?];
            let c2_ip = c2.ip().to_string();
            let stream = cmd::Cmd::new("ip").args([
                "netns",
                "exec",
                c1.ns(),
                "iperf3",
                "-c",
                &c2_ip,
                "-p",
                "5201",
                "-t",
                "5",
            ]);
            let mut stream =
                stream.spawn_to(&dir.join("iperf3-c.out"), &dir.join("iperf3-c.err"))?;
            std::thread::sleep(Duration::from_millis(1000));
            // 100 pings, 20 ms apart, during the stream.
            let ping = c1.exec(&["ping", "-c", "100", "-i", "0.02", "-W", "1", &c2_ip])?;
            let status = stream.wait()?;
            ensure!(status.success(), "iperf3 client: {status}");
            ensure!(
                ping.stdout.contains("100 received"),
                "pings lost during the stream: {}",
                ping.stdout
            );
            let after = [counters(&h1)?, counters(&h2)?];
            let d = |h: usize, i: usize| after[h][i] - before[h][i];
            eprintln!(
                "express lane read/received: host 1 {}/{}, host 2 {}/{}; TAP frames read: host \
                 1 {}, host 2 {}",
                d(0, 0),
                d(0, 1),
                d(1, 0),
                d(1, 1),
                d(0, 2),
                d(1, 2)
            );
            // Host 1's express lane read the requests and received the replies; host 2's
            // received the requests and read the replies.
            for (h, i) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                ensure!(
                    d(h, i) >= 100,
                    "host {}: express counter {i} grew by {} for 100 pings",
                    h + 1,
                    d(h, i)
                );
            }
            // The stream did not take it: a few frames of its start (the handshake) at most,
            // out of tens of thousands.
            ensure!(d(0, 2) > 10_000, "host 1 read only {} frames", d(0, 2));
            ensure!(
                d(0, 0) < 100 + 200,
                "host 1's express lane read {} frames: the stream took it",
                d(0, 0)
            );
            Ok(())
        })();
        let _ = srv.kill();
        let _ = srv.wait();
        res?;

        // Without it on host 2: no express thread, and the two still talk (host 1's flagged
        // datagrams go to host 2's ordinary threads).
        h2.weft_ok(&["stop"])?;
        h2.weft_cmd(&[
            "launch",
            "--no-fastdp",
            pw[0],
            pw[1],
            &h1.addr().to_string(),
        ])?
        .env("WEFT_NO_EXPRESS", "1")
        .run_ok()?;
        weft_tests::wait_established(&[&h1, &h2], Duration::from_secs(30))?;
        ensure!(
            thread_nice(h2.router_pid()?, "weft-express")?.is_none(),
            "host 2 runs an express thread with WEFT_NO_EXPRESS"
        );
        let text = h2.weft_ok(&["status"])?;
        ensure!(!text.contains("express lane"), "host 2:\n{text}");
        c1.wait_ping(c2.ip(), Duration::from_secs(20))?;
        let ping = c1.exec(&[
            "ping",
            "-c",
            "20",
            "-i",
            "0.02",
            "-W",
            "1",
            &c2.ip().to_string(),
        ])?;
        ensure!(ping.stdout.contains("20 received"), "{}", ping.stdout);
        ensure!(
            h2.settled_counter("express_udp_rx_datagrams")? == 0,
            "host 2 counted express datagrams without an express lane"
        );
        Ok(())
    });
}

#[test]
fn datapath_priority_puts_only_the_data_plane_on_sched_fifo() {
    run_test("dprio", |net| {
        let h1 = net.host(1)?;
        let h2 = net.host(2)?;
        // The userspace path: the thread this option is about carries the traffic.
        h1.weft_ok(&["launch", "--no-fastdp", "--datapath-priority", "7"])?;
        h2.weft_cmd(&["launch", "--no-fastdp", &h1.addr().to_string()])?
            .env("WEFT_DATAPATH_PRIORITY", "3")
            .run_ok()?;
        weft_tests::wait_established(&[&h1, &h2], Duration::from_secs(30))?;
        for (h, prio) in [(&h1, 7), (&h2, 3)] {
            let threads = thread_policies(h.router_pid()?)?;
            let dp: Vec<_> = threads
                .iter()
                .filter(|(name, _)| name == "weft-dataplane")
                .collect();
            // One data-plane thread per CPU by default (at most 8).
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
            ensure!(
                dp.len() == cpus,
                "host {}: data-plane threads {threads:?}, {cpus} CPUs",
                h.n()
            );
            for (_, said) in &dp {
                ensure!(
                    said.contains("SCHED_FIFO") && said.contains(&format!("priority: {prio}")),
                    "host {}: chrt says of a data-plane thread: {said} (ps: {})",
                    h.n(),
                    cmd::Cmd::new("ps")
                        .args([
                            "-L",
                            "-o",
                            "tid,comm,cls,rtprio",
                            "-p",
                            &h.router_pid()?.to_string()
                        ])
                        .run()?
                        .stdout
                );
            }
            // The express lane is a data-plane thread too.
            let express: Vec<_> = threads
                .iter()
                .filter(|(name, _)| name == "weft-express")
                .collect();
            ensure!(
                express.len() == 1
                    && express[0].1.contains("SCHED_FIFO")
                    && express[0].1.contains(&format!("priority: {prio}")),
                "host {}: express lane {express:?}",
                h.n()
            );
            let others: Vec<_> = threads
                .iter()
                .filter(|(name, said)| {
                    name != "weft-dataplane"
                        && name != "weft-express"
                        && !said.contains("SCHED_OTHER")
                })
                .collect();
            ensure!(
                others.is_empty(),
                "host {}: other threads not ordinary: {others:?}",
                h.n()
            );
        }
        let (c1, c2) = containers_pinging(&h1, &h2)?;
        weft_tests::mesh::transfer_intact(net, &c1, &c2, 20)?;

        // Without the option: the ordinary scheduler.
        h2.weft_ok(&["stop"])?;
        h2.weft_ok(&["launch", "--no-fastdp", &h1.addr().to_string()])?;
        let threads = thread_policies(h2.router_pid()?)?;
        ensure!(
            threads
                .iter()
                .any(|(name, said)| name == "weft-dataplane" && said.contains("SCHED_OTHER")),
            "host 2 relaunched without the option: {threads:?}"
        );

        let out = h1.weft(&["launch", "--datapath-priority", "100"])?;
        ensure!(
            !out.success() && out.stderr.contains("100"),
            "priority 100 accepted: {out}"
        );
        Ok(())
    });
}

/// The receiver of the small-datagram test: counts datagrams on UDP 7000 until none came for
/// 2 s (or 60 s in all), checks each one's content against its sequence number, and prints
/// `received in_order intact`.
const SMALL_UDP_RECEIVER: &str = r#"
import socket, struct, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, 33, 32 << 20)  # SO_RCVBUFFORCE
s.bind(("0.0.0.0", 7000))
s.settimeout(30)
received, in_order, intact, last = 0, True, True, -1
start = time.time()
try:
    while time.time() - start < 60:
        d = s.recv(2048)
        s.settimeout(2)
        (i,) = struct.unpack("!I", d[:4])
        received += 1
        intact = intact and len(d) == 64 and d[4:] == bytes([i % 251]) * 60
        in_order = in_order and i > last
        last = i
except socket.timeout:
    pass
print(received, in_order, intact)
"#;

/// The sender: `count` 64-byte datagrams to `addr`:7000 in bursts of 50, 2 ms apart, each its
/// sequence number and a filler derived from it.
const SMALL_UDP_SENDER: &str = r#"
import socket, struct, sys, time
addr, count = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(count):
    s.sendto(struct.pack("!I", i) + bytes([i % 251]) * 60, (addr, 7000))
    if i % 50 == 49:
        time.sleep(0.002)
"#;

/// A `weft_*_total` counter from the host's `/metrics`.
fn metric(h: &Host, name: &str) -> Result<u64> {
    let out = h
        .exec(&["curl", "-sf", "http://127.0.0.1:6784/metrics"])?
        .ok()?;
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .with_context(|| format!("no {name} in /metrics"))
}

#[test]
fn small_udp_datagrams_arrive_whole_and_in_order_in_udp_super_frames() {
    run_test("sudp", |net| {
        small_udp_between(net, 1, 2, &[])?;
        small_udp_between(net, 3, 4, &["--password", "small datagrams"])
    });
}

/// Launches hosts `a` and `b` (with `extra` launch arguments) and sends the small datagrams
/// from a container on `a` to one on `b`.
fn small_udp_between(net: &weft_tests::TestNet, a: u8, b: u8, extra: &[&str]) -> Result<()> {
    let h1 = net.host(a)?;
    let h2 = net.host(b)?;
    let launch = |h: &Host, peer: Option<String>| {
        let mut args = vec!["launch", "--no-fastdp"];
        args.extend_from_slice(extra);
        args.extend(peer.as_deref());
        h.weft_ok(&args).map(drop)
    };
    launch(&h1, None)?;
    launch(&h2, Some(h1.addr().to_string()))?;
    weft_tests::wait_established(&[&h1, &h2], Duration::from_secs(30))?;
    let c1 = h1.container(&format!("c{a}"), &format!("10.32.0.{a}/12"))?;
    let c2 = h2.container(&format!("c{b}"), &format!("10.32.0.{b}/12"))?;
    c1.wait_ping(c2.ip(), Duration::from_secs(20))?;
    let out_file = net.dir().join(format!("sudp-{b}.out"));
    let before = (
        metric(&h2, "weft_tap_tx_superframes_total")?,
        metric(&h2, "weft_tap_tx_coalesced_total")?,
        h2.settled_counter("tap_tx_csum_partial")?,
    );
    let receiver = cmd::Cmd::new("ip")
        .args([
            "netns",
            "exec",
            c2.ns(),
            "python3",
            "-c",
            SMALL_UDP_RECEIVER,
        ])
        .spawn_to(&out_file, &net.dir().join(format!("sudp-{b}.err")))?;
    let mut receiver = KillOnDrop(receiver);
    wait_until(
        "the receiver to listen on UDP 7000",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            let out = c2.exec(&["ss", "-Hnlu", "sport = :7000"])?.ok()?;
            ensure!(!out.stdout.trim().is_empty(), "not yet");
            Ok(())
        },
    )?;
    const COUNT: u32 = 10_000;
    c1.exec(&[
        "python3",
        "-c",
        SMALL_UDP_SENDER,
        &c2.ip().to_string(),
        &COUNT.to_string(),
    ])?
    .ok()?;
    let status = wait_until(
        "the receiver to finish",
        Duration::from_secs(70),
        Duration::from_millis(200),
        || receiver.0.try_wait()?.context("still running"),
    )?;
    let out = std::fs::read_to_string(&out_file)?;
    ensure!(status.success(), "the receiver failed: {out}");
    let f: Vec<&str> = out.split_whitespace().collect();
    ensure!(f.len() == 3, "the receiver printed {out:?}");
    let received: u32 = f[0].parse()?;
    let superframes = metric(&h2, "weft_tap_tx_superframes_total")? - before.0;
    let coalesced = metric(&h2, "weft_tap_tx_coalesced_total")? - before.1;
    let partial = h2.settled_counter("tap_tx_csum_partial")? - before.2;
    eprintln!(
        "{extra:?}: received {received}/{COUNT} (in order: {}, intact: {}); host {b} wrote \
         {coalesced} datagrams in {superframes} UDP super-frames, {partial} with checksums \
         left to its kernel",
        f[1], f[2]
    );
    ensure!(f[2] == "True", "a datagram arrived changed");
    ensure!(f[1] == "True", "datagrams arrived out of order");
    ensure!(
        received >= COUNT * 99 / 100,
        "only {received} of {COUNT} datagrams arrived"
    );
    // Bursts of 50 leave the sender as runs and arrive as runs: most of them must reach the
    // container through UDP super-frames (no TCP runs in this test).
    ensure!(
        superframes > 0 && coalesced >= u64::from(COUNT) / 4,
        "host 2 wrote only {coalesced} datagrams in {superframes} super-frames: UDP is not \
         coalesced"
    );
    // The sender's kernel left their checksums partial; so did its router (protocol 5).
    ensure!(
        partial >= u64::from(received),
        "only {partial} of {received} datagrams came with partial checksums"
    );
    Ok(())
}

#[test]
fn tcp_crosses_with_checksums_left_to_the_receiving_kernel_and_arrives_intact() {
    run_test("pcsum", |net| {
        partial_tcp_between(net, 1, 2, &[], false)?;
        partial_tcp_between(net, 3, 4, &["--password", "partial checksums"], false)?;
        // A router that speaks only protocol 4 (as before partial checksums) gets complete ones.
        partial_tcp_between(net, 5, 6, &[], true)
    });
}

/// Hosts `a` and `b` (userspace path, `extra` launch arguments; `b` speaking at most
/// protocol 4 if `old_b`): 20 MiB each way between a container on each arrive intact, and the
/// receiving router wrote (nearly) every segment with its checksum left to its kernel, as
/// protocol 5 allows; with `old_b`, none.
fn partial_tcp_between(
    net: &weft_tests::TestNet,
    a: u8,
    b: u8,
    extra: &[&str],
    old_b: bool,
) -> Result<()> {
    let h1 = net.host(a)?;
    let h2 = net.host(b)?;
    let launch = |h: &Host, peer: Option<String>, protocol_max: &str| {
        let mut args = vec!["launch", "--no-fastdp"];
        args.extend_from_slice(extra);
        args.extend(peer.as_deref());
        h.weft_cmd(&args)?
            .env("WEFT_PROTOCOL_MAX", protocol_max)
            .run_ok()
            .map(drop)
    };
    launch(&h1, None, "5")?;
    launch(
        &h2,
        Some(h1.addr().to_string()),
        if old_b { "4" } else { "5" },
    )?;
    weft_tests::wait_established(&[&h1, &h2], Duration::from_secs(30))?;
    let protocol = if old_b { "protocol 4" } else { "protocol 5" };
    for h in [&h1, &h2] {
        ensure!(
            h.log().contains(protocol),
            "host {}: the connection did not settle on {protocol}:\n{}",
            h.n(),
            cmd::tail(&h.log(), 20)
        );
    }
    let c1 = h1.container(&format!("c{a}"), &format!("10.32.0.{a}/12"))?;
    let c2 = h2.container(&format!("c{b}"), &format!("10.32.0.{b}/12"))?;
    c1.wait_ping(c2.ip(), Duration::from_secs(20))?;
    const MIB: u32 = 20;
    // At most a 1376-byte MTU: more segments than this per transfer.
    let segments = u64::from(MIB) * 1024 * 1024 / 1400;
    for (from, to, rx) in [(&c1, &c2, &h2), (&c2, &c1, &h1)] {
        // Counters are published a few times a second and the transfer may take less: read
        // them once they stop moving.
        let before = rx.settled_counter("tap_tx_csum_partial")?;
        weft_tests::mesh::transfer_intact(net, from, to, MIB)?;
        let partial = rx.settled_counter("tap_tx_csum_partial")? - before;
        eprintln!(
            "{extra:?}: {MIB} MiB {} -> {} intact; host {} wrote {partial} frames with checksums \
             left to its kernel",
            from.name(),
            to.name(),
            rx.n()
        );
        if old_b {
            ensure!(
                partial == 0,
                "host {}: {partial} frames with partial checksums from or to a protocol-4 peer",
                rx.n()
            );
        } else {
            ensure!(
                partial >= segments,
                "host {} wrote only {partial} frames with partial checksums for {MIB} MiB",
                rx.n()
            );
        }
    }
    for h in [&h1, &h2] {
        let malformed = h.counter("udp_rx_dropped_malformed")?;
        ensure!(malformed == 0, "host {}: {malformed} malformed", h.n());
    }
    Ok(())
}

/// Kills the child when dropped (the receiver, if the test fails before it ends).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
