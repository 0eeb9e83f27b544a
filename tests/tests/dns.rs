//! Integration tests (root, network namespaces; a real dockerd per host for the first): weaveDNS,
//! checked with the real `dig` (bind9-dnsutils) and busybox `nslookup` inside containers. The
//! upstream resolver is always a fake one inside the test's own namespaces.
//!
//! - `three_hosts_find_each_other_by_name`: three hosts with dockerd and the proxy. A container
//!   started on host 1 as `-h chronos1.weave.local` resolves from a container on host 3 within
//!   2 s; removing it makes the name NXDOMAIN on every host within 2 s; two containers with one
//!   name give both addresses in varying order over 20 queries; a router restarted with
//!   `stop`/`launch` keeps serving (its own names and the others'); a router killed with SIGKILL
//!   keeps its names until `rmpeer`, which drops them on every other host. Along the way: the
//!   proxy sets the created containers' resolver, a container named but without hostname is
//!   `NAME.weave.local` (rewritten by `--hostname-match`/`--hostname-replacement` on host 3),
//!   reverse and case-insensitive lookups, other names through the fake upstream; `weft dns-add
//!   CONTAINER -h FQDN` / `dns-remove`, and `weft attach` of a Docker container registering it.
//! - `names_reverse_external_and_upstream`: the Docker bridge's address as the default listen
//!   address, the weave bridge's exposed address without one (`dns-args`); `dns-add` /
//!   `dns-remove` of an external address seen from another host; case-insensitive A, PTR,
//!   empty AAAA, NXDOMAIN; truncation over UDP and the full answer over TCP, for weave names and
//!   forwarded ones; other names answered through the fake upstream (UDP and TCP); upstream
//!   down gives SERVFAIL after the fallback timeout; `status dns`, the report's `DNS` section,
//!   `weave_dns_entries`; `--no-dns` turns it all off.
//! - `bad_input_and_a_flood_leave_it_answering`: malformed, truncated, oversized and looping
//!   queries over UDP and TCP, then a query flood from another namespace: real queries from a
//!   third namespace keep being answered, the drops are counted, the router never panics and
//!   loses no entry.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use weft_tests::dns::{FakeUpstream, UPSTREAM_ANSWER, dns_address, flood, query};
use weft_tests::docker::{Dockerd, IMAGE, docker_via, ethwe_cidrs, launch_proxy};
use weft_tests::mesh::launch_with;
use weft_tests::{Cmd, Host, TestNet, run_test, wait_established, wait_until};

const CIDR_ENV: &str = "WEAVE_CIDR=net:10.32.1.0/24";

/// Writes a resolv.conf naming only the fake upstream (host 200, `192.0.2.210`).
fn resolv_conf(net: &TestNet) -> Result<String> {
    let path = net.dir().join("resolv.conf");
    std::fs::write(&path, "search example.test\nnameserver 192.0.2.210\n")?;
    Ok(path.display().to_string())
}

/// The fake upstream on host 200 of the underlay.
fn fake_upstream(net: &TestNet) -> Result<(Host, FakeUpstream)> {
    let h = net.host(200)?;
    let up = FakeUpstream::start(h.ns(), net.dir(), "127.0.0.1")?;
    Ok((h, up))
}

/// Waits until `name` gives exactly `want` (sorted addresses; empty: NXDOMAIN) at `server`,
/// asked from `ns`; returns the time it took.
fn wait_answer(
    ns: &str,
    server: &str,
    name: &str,
    want: &[&str],
    limit: Duration,
) -> Result<Duration> {
    let started = Instant::now();
    wait_until(
        &format!("{name} at {server} to give {want:?}"),
        limit,
        Duration::from_millis(50),
        || {
            let a = query(ns, server, name, &[])?;
            let mut got = a.answers.clone();
            got.sort();
            let ok = if want.is_empty() {
                a.status == "NXDOMAIN"
            } else {
                a.status == "NOERROR" && got == want
            };
            if ok {
                Ok(())
            } else {
                bail!("{} {:?}", a.status, got)
            }
        },
    )?;
    Ok(started.elapsed())
}

/// `weft dns-args` on `h`.
fn dns_args(h: &Host) -> Result<String> {
    Ok(h.weft_ok(&["dns-args"])?.trim().to_owned())
}

/// GET a path of `h`'s router API (python3 urllib inside the namespace).
fn api_get(h: &Host, path: &str) -> Result<String> {
    let script = format!(
        "import urllib.request\n\
         print(urllib.request.urlopen('http://127.0.0.1:6784{path}', timeout=5).read().decode(), end='')"
    );
    Ok(h.exec(&["python3", "-c", &script])?.ok()?.stdout)
}

/// One host with dockerd and weft (router + proxy). Field order = drop order: the dockerd goes
/// first, before the test net.
struct Node {
    dockerd: Dockerd,
    host: Host,
    sock: std::path::PathBuf,
}

impl Node {
    /// `docker ARGS` through the proxy; fails unless it exits 0; stdout trimmed.
    fn docker_ok(&self, args: &[&str]) -> Result<String> {
        let out = docker_via(&self.sock, args)?
            .ok()
            .with_context(|| format!("through the proxy on host {}", self.host.n()))?;
        Ok(out.stdout.trim().to_owned())
    }

    /// The single weave address of container `name`.
    fn ip_of(&self, name: &str) -> Result<String> {
        let cidrs = ethwe_cidrs(&self.sock, name)?;
        match cidrs.as_slice() {
            [c] => Ok(c.split('/').next().unwrap_or(c).to_owned()),
            _ => bail!(
                "{name} on host {} has ethwe addresses {cidrs:?}",
                self.host.n()
            ),
        }
    }

    /// `docker run -d` of a sleeping joined container `name`, with `extra` options.
    fn run(&self, name: &str, extra: &[&str]) -> Result<String> {
        let mut args = vec!["run", "-d", "--name", name, "-e", CIDR_ENV];
        args.extend_from_slice(extra);
        args.extend([IMAGE, "sleep", "600"]);
        self.docker_ok(&args)
    }
}

/// Launches weft with the proxy on `h` (again, after a stop). Host 3 makes hostnames from
/// container names with `--hostname-match`/`--hostname-replacement`.
fn launch_node(
    h: &Host,
    dockerd: &Dockerd,
    resolv: &str,
    peers: &[&Host],
) -> Result<std::path::PathBuf> {
    let mut opts = vec!["--resolv-conf", resolv];
    if h.n() == 3 {
        opts.extend([
            "--hostname-match",
            "^aws-[0-9]+-(.*)$",
            "--hostname-replacement",
            "my-app-$1",
        ]);
    }
    launch_proxy(h, dockerd, &opts, peers)
}

#[test]
fn three_hosts_find_each_other_by_name() {
    run_test("dns3", |net| {
        let hosts: Vec<Host> = (1..=3).map(|k| net.host(k)).collect::<Result<_>>()?;
        let (_uh, _upstream) = fake_upstream(net)?;
        let resolv = resolv_conf(net)?;
        let mut nodes = Vec::new();
        for h in &hosts {
            let peers: Vec<&Host> = hosts.iter().filter(|o| o.n() != h.n()).collect();
            let dockerd = Dockerd::start(h)?;
            let sock = launch_node(h, &dockerd, &resolv, &peers)?;
            nodes.push(Node {
                dockerd,
                host: h.clone(),
                sock,
            });
        }
        let refs: Vec<&Host> = hosts.iter().collect();
        wait_established(&refs, Duration::from_secs(30))?;
        // No Docker bridge here: each host exposes itself on the containers' subnet, and its
        // DNS server listens there.
        let mut dns = Vec::new();
        for n in &nodes {
            n.host.weft_ok(&["expose", "net:10.32.1.0/24"])?;
            let addr = wait_until(
                &format!(
                    "DNS on host {} to listen on its exposed address",
                    n.host.n()
                ),
                Duration::from_secs(10),
                Duration::from_millis(100),
                || {
                    let a = dns_address(&n.host)?;
                    query(n.host.ns(), &a, "nobody.weave.local", &[])?;
                    Ok(a)
                },
            )?;
            dns.push(addr);
        }
        let all = |name: &str, want: &[&str], limit: Duration| -> Result<Vec<Duration>> {
            hosts
                .iter()
                .zip(&dns)
                .map(|(h, d)| wait_answer(h.ns(), d, name, want, limit))
                .collect()
        };

        // A probe on host 3: the proxy made weaveDNS its resolver.
        nodes[2].run("probe", &[])?;
        let resolv_in = nodes[2].docker_ok(&["exec", "probe", "cat", "/etc/resolv.conf"])?;
        ensure!(
            resolv_in.contains(&format!("nameserver {}", dns[2])),
            "the probe's /etc/resolv.conf:\n{resolv_in}"
        );
        let sock3 = nodes[2].sock.clone();
        let nslookup = |name: &str| -> Result<String> {
            let out = docker_via(&sock3, &["exec", "probe", "nslookup", name])?;
            Ok(out.stdout)
        };

        // chronos1 on host 1 resolves from the probe on host 3 within 2 s.
        nodes[0].run("c1", &["-h", "chronos1.weave.local"])?;
        let started = Instant::now();
        let seen = wait_until(
            "the probe on host 3 to resolve chronos1.weave.local",
            Duration::from_secs(10),
            Duration::from_millis(20),
            || {
                let out = nslookup("chronos1.weave.local")?;
                // busybox: "Name:\tchronos1.weave.local" then "Address: 10.32.1.x".
                let answer = out
                    .split("Name:")
                    .nth(1)
                    .and_then(|rest| rest.split("Address:").nth(1))
                    .and_then(|a| a.split_whitespace().next())
                    .map(str::to_owned);
                answer.with_context(|| format!("nslookup printed:\n{out}"))
            },
        )?;
        let took = started.elapsed();
        eprintln!("docker run on host 1 -> resolvable in a container on host 3: {took:?}");
        ensure!(
            took <= Duration::from_secs(2),
            "chronos1 took {took:?} to resolve on host 3"
        );
        let c1 = nodes[0].ip_of("c1")?;
        ensure!(seen == c1, "chronos1 resolved to {seen}, c1 has {c1}");

        // Removed on host 1: NXDOMAIN everywhere within 2 s.
        nodes[0].docker_ok(&["rm", "-f", "c1"])?;
        let gone = all("chronos1.weave.local", &[], Duration::from_secs(10))?;
        ensure!(
            gone.iter().all(|t| *t <= Duration::from_secs(2)),
            "NXDOMAIN after {gone:?}"
        );
        let out = nslookup("chronos1.weave.local")?;
        ensure!(
            !out.contains(&c1),
            "the probe still resolves the removed container:\n{out}"
        );

        // Two containers, one name: both addresses, in varying order.
        nodes[0].run("c2a", &["-h", "chronos2.weave.local"])?;
        nodes[1].run("c2b", &["-h", "chronos2.weave.local"])?;
        let (a, b) = (nodes[0].ip_of("c2a")?, nodes[1].ip_of("c2b")?);
        let mut both = vec![a.as_str(), b.as_str()];
        both.sort();
        all("chronos2.weave.local", &both, Duration::from_secs(5))?;
        let mut orders = std::collections::HashSet::new();
        for _ in 0..20 {
            let q = query(hosts[2].ns(), &dns[2], "chronos2.weave.local", &[])?;
            let mut sorted = q.answers.clone();
            sorted.sort();
            ensure!(sorted == both, "{q:?}");
            orders.insert(q.answers);
        }
        ensure!(
            orders.len() == 2,
            "20 answers, always in the order {orders:?}"
        );
        // Any case; and back from the address.
        let q = query(hosts[2].ns(), &dns[2], "CHRONOS2.Weave.Local", &[])?;
        ensure!(q.answers.len() == 2, "{q:?}");
        let arpa: Vec<&str> = a.split('.').rev().collect();
        let ptr = query(
            hosts[2].ns(),
            &dns[2],
            &format!("{}.in-addr.arpa", arpa.join(".")),
            &["PTR"],
        )?;
        ensure!(ptr.answers == ["chronos2.weave.local."], "{ptr:?}");
        // A container with a name and no hostname is NAME.weave.local.
        nodes[2].run("web3", &[])?;
        let web3 = nodes[2].ip_of("web3")?;
        all("web3.weave.local", &[web3.as_str()], Duration::from_secs(5))?;
        // The CLI with Docker: `dns-add CONTAINER -h FQDN` (its ethwe address) and
        // `dns-remove`; `weft attach` of a Docker container (by pid) registers its hostname.
        let weft3 = |args: &[&str]| -> Result<String> {
            let out = hosts[2]
                .weft_cmd(args)?
                .env("DOCKER_HOST", nodes[2].dockerd.socket_url())
                .run()?;
            Ok(out.ok()?.stdout)
        };
        weft3(&["dns-add", "probe", "-h", "alias.weave.local"])?;
        let probe = nodes[2].ip_of("probe")?;
        all(
            "alias.weave.local",
            &[probe.as_str()],
            Duration::from_secs(5),
        )?;
        weft3(&["dns-remove", "probe", "-h", "alias.weave.local"])?;
        all("alias.weave.local", &[], Duration::from_secs(5))?;
        all(
            "probe.weave.local",
            &[probe.as_str()],
            Duration::from_secs(5),
        )?;
        let plain = nodes[2].docker_ok(&[
            "run",
            "-d",
            "--name",
            "plain",
            "-h",
            "att.weave.local",
            "-e",
            "WEAVE_CIDR=none",
            IMAGE,
            "sleep",
            "600",
        ])?;
        let pid = nodes[2].docker_ok(&["inspect", "-f", "{{.State.Pid}}", &plain])?;
        let att = weft3(&["attach", "net:10.32.1.0/24", &pid])?;
        let att = att.trim();
        all("att.weave.local", &[att], Duration::from_secs(5))?;
        // Host 3 rewrites names: aws-12-db is my-app-db.
        nodes[2].run("aws-12-db", &[])?;
        let db = nodes[2].ip_of("aws-12-db")?;
        all(
            "my-app-db.weave.local",
            &[db.as_str()],
            Duration::from_secs(5),
        )?;
        // Other names through the fake upstream, from inside the container.
        let out = nslookup("www.example.test")?;
        ensure!(
            out.contains(UPSTREAM_ANSWER),
            "nslookup www.example.test:\n{out}"
        );

        // Host 2 restarted with stop/launch keeps serving: its own names and the others'.
        nodes[1].host.weft_ok(&["stop"])?;
        let peers: Vec<&Host> = vec![&hosts[0], &hosts[2]];
        nodes[1].sock = launch_node(&hosts[1], &nodes[1].dockerd, &resolv, &peers)?;
        wait_established(&refs, Duration::from_secs(30))?;
        wait_answer(
            hosts[1].ns(),
            &dns[1],
            "chronos2.weave.local",
            &both,
            Duration::from_secs(10),
        )?;
        wait_answer(
            hosts[1].ns(),
            &dns[1],
            "web3.weave.local",
            &[web3.as_str()],
            Duration::from_secs(10),
        )?;
        std::thread::sleep(Duration::from_secs(1));
        all("chronos2.weave.local", &both, Duration::from_secs(5))?;

        // Host 3 killed: its names stay until rmpeer, which drops them on every host.
        let h3_name = hosts[2].peer_name()?;
        hosts[2].kill_router()?;
        for (n, d) in nodes.iter().zip(&dns).take(2) {
            let q = query(n.host.ns(), d, "web3.weave.local", &[])?;
            ensure!(
                q.answers == [web3.as_str()],
                "host {} right after the kill: {q:?}",
                n.host.n()
            );
        }
        wait_until(
            "rmpeer of the killed host 3 on host 1",
            Duration::from_secs(30),
            Duration::from_millis(500),
            // It was reachable moments ago, so rmpeer wants --force (it is gone for good).
            || hosts[0].weft_ok(&["rmpeer", "--force", &h3_name]),
        )?;
        for (n, d) in nodes.iter().zip(&dns).take(2) {
            wait_answer(
                n.host.ns(),
                d,
                "web3.weave.local",
                &[],
                Duration::from_secs(5),
            )?;
            wait_answer(
                n.host.ns(),
                d,
                "probe.weave.local",
                &[],
                Duration::from_secs(5),
            )?;
            let q = query(n.host.ns(), d, "chronos2.weave.local", &[])?;
            ensure!(q.answers.len() == 2, "host {}: {q:?}", n.host.n());
        }
        drop(nodes);
        Ok(())
    });
}

#[test]
fn names_reverse_external_and_upstream() {
    run_test("dnsup", |net| {
        let (h1, h2, h3) = (net.host(1)?, net.host(2)?, net.host(3)?);
        let (uh, mut upstream) = fake_upstream(net)?;
        let resolv = resolv_conf(net)?;
        // Host 2 has a Docker bridge: DNS listens on its address by default.
        for args in [
            vec!["link", "add", "docker0", "type", "bridge"],
            vec!["addr", "add", "198.51.100.1/24", "dev", "docker0"],
            vec!["link", "set", "docker0", "up"],
        ] {
            let mut full = vec!["-n", h2.ns()];
            full.extend(args);
            Cmd::new("ip").args(full).run_ok()?;
        }
        let opts = [
            "--no-proxy",
            "--resolv-conf",
            &resolv,
            "--dns-fallback-timeout",
            "1s",
        ];
        launch_with(&h1, &opts, &[])?;
        launch_with(&h2, &opts, &[&h1])?;
        launch_with(&h3, &["--no-proxy", "--no-dns"], &[&h1])?;
        wait_established(&[&h1, &h2, &h3], Duration::from_secs(30))?;

        // No Docker bridge and nothing exposed: containers could not reach DNS yet.
        let early = h1.weft(&["dns-args"])?;
        ensure!(
            !early.success() && early.stderr.contains("weft expose"),
            "dns-args before expose: {early}"
        );
        h1.weft_ok(&["expose", "10.32.9.1/24"])?;
        let a1 = wait_until(
            "DNS to listen on host 1's exposed address",
            Duration::from_secs(10),
            Duration::from_millis(100),
            || {
                let args = dns_args(&h1)?;
                ensure!(
                    args == "--dns=10.32.9.1 --dns-search=weave.local.",
                    "{args}"
                );
                query(h1.ns(), "10.32.9.1", "nothing.weave.local", &[])
            },
        )?;
        ensure!(a1.status == "NXDOMAIN", "{a1:?}");
        ensure!(
            dns_args(&h2)? == "--dns=198.51.100.1 --dns-search=weave.local.",
            "host 2 dns-args: {}",
            dns_args(&h2)?
        );
        // --no-dns: no arguments, no DNS API, `status dns` fails as Weave's script does
        // (its 404 ends in the usage text and exit 1).
        ensure!(dns_args(&h3)?.is_empty(), "dns-args with --no-dns");
        let st = h3.weft(&["status", "dns"])?;
        ensure!(st.status.and_then(|s| s.code()) == Some(1), "{st}");
        let q = query(h3.ns(), "127.0.0.1", "x.weave.local", &[]);
        ensure!(q.is_err(), "something answers DNS on host 3: {q:?}");

        // An external name registered on host 1 resolves on host 2, any case, both ways.
        h1.weft_ok(&["dns-add", "10.32.9.50", "-h", "ext.weave.local"])?;
        let took = wait_answer(
            h2.ns(),
            "198.51.100.1",
            "ext.weave.local",
            &["10.32.9.50"],
            Duration::from_secs(5),
        )?;
        eprintln!("dns-add on host 1 resolvable on host 2 after {took:?}");
        let a = query(h2.ns(), "198.51.100.1", "EXT.Weave.LOCAL", &[])?;
        ensure!(
            a.answers == ["10.32.9.50"] && a.flags.contains(&"aa".to_owned()),
            "{a:?}"
        );
        let ptr = query(h2.ns(), "198.51.100.1", "50.9.32.10.in-addr.arpa", &["PTR"])?;
        ensure!(ptr.answers == ["ext.weave.local."], "{ptr:?}");
        let aaaa = query(h2.ns(), "198.51.100.1", "ext.weave.local", &["AAAA"])?;
        ensure!(
            aaaa.status == "NOERROR" && aaaa.answers.is_empty(),
            "{aaaa:?}"
        );
        // An unqualified name is looked up in the domain (dns-lookup too).
        let short = query(h2.ns(), "198.51.100.1", "ext", &[])?;
        ensure!(short.answers == ["10.32.9.50"], "{short:?}");
        ensure!(
            h2.weft_ok(&["dns-lookup", "ext"])?.trim() == "10.32.9.50",
            "dns-lookup"
        );

        // Many addresses: truncated over UDP, complete over TCP (dig retries by itself).
        let many: Vec<String> = (1..=60).map(|i| format!("10.32.8.{i}")).collect();
        let mut args: Vec<&str> = vec!["dns-add"];
        args.extend(many.iter().map(String::as_str));
        args.extend(["-h", "many.weave.local"]);
        h1.weft_ok(&args)?;
        let cut = query(
            h1.ns(),
            "10.32.9.1",
            "many.weave.local",
            &["+noedns", "+ignore"],
        )?;
        ensure!(
            cut.flags.contains(&"tc".to_owned()) && cut.answers.len() < 60,
            "UDP answer for 60 addresses: {cut:?}"
        );
        let full = query(h1.ns(), "10.32.9.1", "many.weave.local", &["+noedns"])?;
        ensure!(
            full.answers.len() == 60,
            "after the TCP retry: {} answers",
            full.answers.len()
        );

        // Other names go to the fake upstream, over UDP and TCP, truncation included.
        let before = upstream.answered();
        let fw = query(h1.ns(), "10.32.9.1", "www.example.test", &[])?;
        ensure!(
            fw.answers == [UPSTREAM_ANSWER] && fw.status == "NOERROR",
            "{fw:?}"
        );
        let fwt = query(h2.ns(), "198.51.100.1", "www.example.test", &["+tcp"])?;
        ensure!(fwt.answers == [UPSTREAM_ANSWER], "over TCP: {fwt:?}");
        let big = query(h1.ns(), "10.32.9.1", "big.example.test", &["+noedns"])?;
        ensure!(big.answers.len() == 60, "forwarded big answer: {big:?}");
        ensure!(
            upstream.answered() > before,
            "the fake upstream was never asked"
        );

        // Removal is seen on the other host.
        h1.weft_ok(&["dns-remove", "10.32.9.50", "-h", "ext.weave.local"])?;
        let took = wait_answer(
            h2.ns(),
            "198.51.100.1",
            "ext.weave.local",
            &[],
            Duration::from_secs(5),
        )?;
        ensure!(
            took <= Duration::from_secs(2),
            "removal took {took:?} to reach host 2"
        );

        // Status, report, metrics.
        let st = h1.weft_ok(&["status", "dns"])?;
        ensure!(
            st.lines().filter(|l| l.starts_with("many ")).count() == 60,
            "{st}"
        );
        ensure!(!st.contains("ext "), "a removed name in status dns:\n{st}");
        let summary = h1.weft_ok(&["status"])?;
        ensure!(
            summary.contains("Service: dns")
                && summary.contains("Domain: weave.local.")
                && summary.contains("Upstream: 192.0.2.210")
                && summary.contains("Entries: 60"),
            "{summary}"
        );
        let report: serde_json::Value = serde_json::from_str(&h2.weft_ok(&["report"])?)?;
        ensure!(
            report["DNS"]["Domain"] == "weave.local." && report["DNS"]["TTL"] == 1,
            "{}",
            report["DNS"]
        );
        let metrics = api_get(&h1, "/metrics")?;
        ensure!(metrics.contains("\nweave_dns_entries 60\n"), "{metrics}");
        ensure!(metrics.contains("weft_dns_forwarded_total"), "{metrics}");

        // Upstream silent (its packets dropped): SERVFAIL after the fallback timeout (1 s),
        // not a hang.
        uh.exec(&[
            "iptables", "-w", "-A", "INPUT", "-p", "udp", "--dport", "53", "-j", "DROP",
        ])?
        .ok()?;
        let t = Instant::now();
        let sf = query(h1.ns(), "10.32.9.1", "down.example.test", &["+time=10"])?;
        let took = t.elapsed();
        ensure!(sf.status == "SERVFAIL", "{sf:?}");
        ensure!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(4),
            "SERVFAIL after {took:?} with --dns-fallback-timeout 1s"
        );
        // Upstream gone (nothing listens): SERVFAIL at once.
        upstream.stop();
        uh.exec(&["iptables", "-w", "-F", "INPUT"])?.ok()?;
        let t = Instant::now();
        let sf = query(h1.ns(), "10.32.9.1", "gone.example.test", &["+time=10"])?;
        ensure!(
            sf.status == "SERVFAIL" && t.elapsed() < Duration::from_secs(1),
            "{sf:?} after {:?}",
            t.elapsed()
        );
        // Weave names still answer.
        ensure!(
            query(h1.ns(), "10.32.9.1", "many.weave.local", &["+tcp"])?
                .answers
                .len()
                == 60,
            "after the upstream died"
        );
        Ok(())
    });
}

/// Sends each payload as one UDP datagram from namespace `ns` to `server`:53 and prints what
/// came back (python3).
fn send_raw(ns: &str, server: &str, payloads_hex: &[String]) -> Result<String> {
    let list = payloads_hex
        .iter()
        .map(|h| format!("'{h}'"))
        .collect::<Vec<_>>()
        .join(",");
    let script = format!(
        "import socket\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.settimeout(0.5)\n\
         for h in [{list}]:\n\
         \u{20}   s.sendto(bytes.fromhex(h), ('{server}', 53))\n\
         \u{20}   try:\n\
         \u{20}       print(s.recv(65535).hex())\n\
         \u{20}   except socket.timeout:\n\
         \u{20}       print('-')\n"
    );
    Ok(Cmd::new("ip")
        .args(["netns", "exec", ns, "python3", "-c", &script])
        .timeout(Duration::from_secs(60))
        .run_ok()?
        .stdout)
}

/// Bad TCP clients: a length promising more than is sent, a zero length, garbage.
fn bad_tcp(ns: &str, server: &str) -> Result<()> {
    let script = format!(
        "import socket, time\n\
         for data in [b'\\xff\\xff' + b'x' * 10, b'\\x00\\x00', b'\\x00\\x05hello', b'\\x00']:\n\
         \u{20}   c = socket.create_connection(('{server}', 53), timeout=2)\n\
         \u{20}   c.sendall(data)\n\
         \u{20}   time.sleep(0.05)\n\
         \u{20}   c.close()\n"
    );
    Cmd::new("ip")
        .args(["netns", "exec", ns, "python3", "-c", &script])
        .timeout(Duration::from_secs(30))
        .run_ok()?;
    Ok(())
}

/// A header plus a question for `name` (hex), with the given id and flags.
fn raw_query(id: u16, flags: u16, name: &str) -> String {
    let mut b = Vec::new();
    b.extend_from_slice(&id.to_be_bytes());
    b.extend_from_slice(&flags.to_be_bytes());
    b.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    for l in name.split('.').filter(|l| !l.is_empty()) {
        b.push(l.len() as u8);
        b.extend_from_slice(l.as_bytes());
    }
    b.extend_from_slice(&[0, 0, 1, 0, 1]);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn bad_input_and_a_flood_leave_it_answering() {
    run_test("dnsbad", |net| {
        let (h1, h2, h3) = (net.host(1)?, net.host(2)?, net.host(3)?);
        let server = h1.addr().to_string();
        launch_with(
            &h1,
            &[
                "--no-proxy",
                "--dns-listen-address",
                &format!("{server}:53"),
                "--resolv-conf",
                "/dev/null",
            ],
            &[],
        )?;
        h1.weft_ok(&["dns-add", "10.32.9.9", "-h", "keep.weave.local"])?;
        let pid = h1.router_pid()?;
        wait_answer(
            h3.ns(),
            &server,
            "keep.weave.local",
            &["10.32.9.9"],
            Duration::from_secs(5),
        )?;

        // Malformed, truncated, oversized, looping, and answers sent as queries.
        let good = raw_query(0x4242, 0x0100, "keep.weave.local");
        let mut bad: Vec<String> = vec![
            String::new(),
            "00".into(),
            "0102030405".into(),
            good[..24].to_owned(), // header only, one question promised
            good[..good.len() - 6].to_owned(), // question cut short
            raw_query(0x4343, 0x8100, "keep.weave.local"), // a response
            // A name that points at itself (compression loop).
            "444401000001000000000000c00c00010001".into(),
            "ab".repeat(60_000), // oversized junk
            format!(
                "{}{}",
                raw_query(0x4545, 0x0100, "keep.weave.local"),
                "00".repeat(3000)
            ),
        ];
        for i in 0..20u8 {
            bad.push(
                (0..(i as usize * 7 + 3))
                    .map(|k| format!("{:02x}", (k as u8).wrapping_mul(31) ^ i))
                    .collect(),
            );
        }
        let replies = send_raw(h2.ns(), &server, &bad)?;
        let lines: Vec<&str> = replies.lines().collect();
        ensure!(lines.len() == bad.len(), "{replies}");
        // The truncated question gets FORMERR under its id; the response gets nothing.
        ensure!(
            lines[4].starts_with("4242") && lines[4][6..8].ends_with('1'),
            "truncated: {}",
            lines[4]
        );
        ensure!(lines[5] == "-", "a response was answered: {}", lines[5]);
        bad_tcp(h2.ns(), &server)?;
        let malformed = h1.counter("dns_malformed")?;
        ensure!(malformed >= 5, "dns_malformed = {malformed}");
        ensure!(
            query(h3.ns(), &server, "keep.weave.local", &[])?.answers == ["10.32.9.9"],
            "after bad input"
        );

        // A flood from host 2 while host 3 keeps asking.
        let flood_ns = h2.ns().to_owned();
        let target = server.clone();
        let flooder =
            std::thread::spawn(move || flood(&flood_ns, &target, "keep.weave.local", 300_000));
        let mut answered = 0;
        let mut failed = Vec::new();
        std::thread::sleep(Duration::from_millis(200));
        while !flooder.is_finished() {
            // A real resolver retries (glibc: 2 attempts); dig is told to try 3 times.
            match query(
                h3.ns(),
                &server,
                "keep.weave.local",
                &["+tries=3", "+time=1"],
            ) {
                Ok(a) if a.answers == ["10.32.9.9"] => answered += 1,
                other => failed.push(format!("{other:?}")),
            }
        }
        let took = flooder
            .join()
            .map_err(|_| anyhow::anyhow!("flood thread panicked"))??;
        let dropped = h1.counter("dns_dropped")?;
        eprintln!(
            "flood of 300000 queries took {took:?}; {answered} real queries answered meanwhile; \
             dns_queries = {}, dns_dropped = {dropped}",
            h1.counter("dns_queries")?
        );
        ensure!(
            failed.is_empty(),
            "real queries failed during the flood: {failed:?}"
        );
        ensure!(
            answered >= 3,
            "only {answered} real queries ran during the flood ({took:?})"
        );
        ensure!(dropped > 0, "the flood dropped nothing (dns_dropped = 0)");
        // Same router, nothing lost.
        ensure!(
            h1.router_pid()? == pid && weft_tests::cmd::pid_alive(pid),
            "the router restarted"
        );
        ensure!(
            !h1.log().contains("panicked"),
            "the router log shows a panic"
        );
        ensure!(
            query(h3.ns(), &server, "keep.weave.local", &[])?.answers == ["10.32.9.9"],
            "after the flood"
        );
        let names = api_get(&h1, "/name")?;
        ensure!(names.contains("keep.weave.local."), "GET /name: {names}");
        Ok(())
    });
}
