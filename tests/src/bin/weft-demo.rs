//! weft demo (driver layer, needs root): three "slave" hosts in network namespaces, each running
//! a weft router with one container whose address IPAM allocates in 10.32.1.0/24, a ping
//! matrix between the containers, a "master" host that runs `weft expose net:10.32.1.0/24` and
//! reaches them, `weft status`, `status ipam`, `ps` of one host; then everything is removed.
//!
//! With Docker installed (Debian's `docker.io` and `busybox-static`, as `.ci/install` does) each
//! slave also runs its own dockerd, the containers are busybox `httpd`s started with the real
//! docker CLI through weft's proxy (`WEAVE_CIDR=net:10.32.1.0/24`), and the master GETs `/ping`
//! from each, as Marathon's health check would. `--no-docker` (or no Docker) uses plain
//! namespaces attached with `weft attach` instead.
//!
//! Run: `cargo build --release -p weft-cli && cargo run --release -p weft-tests --bin weft-demo`
//! (the weft binary is taken from `$WEFT_BIN` or the same cargo profile directory).

use std::time::Duration;

use anyhow::Result;
use weft_tests::docker::{Dockerd, IMAGE, docker_via, launch_proxy};
use weft_tests::{TestNet, find_weft_bin};

fn main() {
    if let Err(e) = run() {
        eprintln!("weft-demo: {e:?}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let bin = find_weft_bin()?;
    println!("weft binary: {}", bin.display());
    let net = TestNet::new("demo")?;
    println!(
        "namespaces: {p}ul (underlay bridge), {p}h1..h4 (hosts 192.0.2.11-14, h4 = master), \
         {p}c1..c3 (containers)\n",
        p = net.prefix()
    );
    let docker = if std::env::args().any(|a| a == "--no-docker") {
        false
    } else {
        match weft_tests::docker::require_docker() {
            Ok(_) => true,
            Err(e) => {
                println!("(no Docker, so plain namespaces instead: {e:#})\n");
                false
            }
        }
    };
    let res = if docker {
        demo_docker(&net)
    } else {
        demo(&net)
    };
    if res.is_err() {
        net.dump_logs();
    }
    println!("\ncleaning up");
    res
}

fn demo(net: &TestNet) -> Result<()> {
    // The motivating setup: three Mesos slaves, each with a Chronos container on one flat
    // network, and a master that must reach them.
    println!(
        "launching routers: host1 alone, host2 -> host1, host3 -> host1 host2, master -> host1"
    );
    let h1 = net.host(1)?;
    let h2 = net.host(2)?;
    let h3 = net.host(3)?;
    let master = net.host(4)?;
    h1.launch(&[])?;
    h2.launch(&[&h1])?;
    h3.launch(&[&h1, &h2])?;
    master.launch(&[&h1])?;

    println!(
        "\nattaching one container per slave with `weft attach net:10.32.1.0/24` (IPAM allocates):"
    );
    let mut ctrs = Vec::new();
    for (i, h) in [&h1, &h2, &h3].into_iter().enumerate() {
        let c = h.container_alloc(&format!("c{}", i + 1), &["net:10.32.1.0/24"])?;
        println!(
            "  {} on host{} = {} ({})",
            c.name(),
            h.n(),
            c.cidr(),
            c.mac()?
        );
        ctrs.push(c);
    }

    println!("\nping matrix (3 pings each, replies/sent, median RTT):\n");
    print!("| from \\ to |");
    for c in &ctrs {
        print!(" {} {} |", c.name(), c.ip());
    }
    println!();
    println!("|---|{}", "---|".repeat(ctrs.len()));
    for a in &ctrs {
        print!("| {} {} |", a.name(), a.ip());
        for b in &ctrs {
            if a.ns() == b.ns() {
                print!(" – |");
                continue;
            }
            // The first packet may wait for ARP across the overlay.
            let _ = a.wait_ping(b.ip(), Duration::from_secs(10));
            let s = a.ping(b.ip(), 3, 0.2)?;
            match weft_tests::median(&s.rtts_ms) {
                Some(m) => print!(" {}/{} {m:.2} ms |", s.received, s.transmitted),
                None => print!(" {}/{} FAIL |", s.received, s.transmitted),
            }
        }
        println!();
    }

    println!("\n$ weft expose net:10.32.1.0/24   (master)");
    let exposed = master.weft_ok(&["expose", "net:10.32.1.0/24"])?;
    println!("{}", exposed.trim());
    for c in &ctrs {
        let out = master.exec(&["ping", "-n", "-c", "2", "-W", "2", &c.ip().to_string()])?;
        let verdict = if out.success() {
            "reachable"
        } else {
            "NOT reachable"
        };
        println!("  master -> {} {}: {verdict}", c.name(), c.ip());
    }

    println!(
        "\n$ weft status ipam   (host1)\n{}",
        h1.weft_ok(&["status", "ipam"])?
    );
    println!("$ weft status   (host1)\n{}", h1.weft_ok(&["status"])?);
    println!(
        "$ weft status connections   (host1)\n{}",
        h1.weft_ok(&["status", "connections"])?
    );
    println!("$ weft ps   (host1)\n{}", h1.weft_ok(&["ps"])?);
    Ok(())
}

/// The seed scenario with real Docker: Chronos-like containers started through the proxy.
fn demo_docker(net: &TestNet) -> Result<()> {
    println!(
        "launching three slaves (dockerd + weft router + proxy with --rewrite-inspect \
         --no-default-ipalloc) and a master (weft only)"
    );
    let h1 = net.host(1)?;
    let h2 = net.host(2)?;
    let h3 = net.host(3)?;
    let master = net.host(4)?;
    // Declared after the hosts and before anything can fail: dropped (containers removed,
    // daemons stopped) before the namespaces go.
    let mut dockerds = Vec::new();
    let mut socks = Vec::new();
    for (h, peers) in [(&h1, vec![]), (&h2, vec![&h1]), (&h3, vec![&h1, &h2])] {
        let d = Dockerd::start(h)?;
        socks.push(launch_proxy(h, &d, &[], &peers)?);
        dockerds.push(d);
    }
    master.launch(&[&h1])?;

    println!("\non each slave, through its proxy:");
    println!(
        "  docker run -d --name chronosN -h chronosN -e WEAVE_CIDR=net:10.32.1.0/24 {IMAGE} \
         httpd -f -p 80 -h /www"
    );
    let mut ips = Vec::new();
    for (i, sock) in socks.iter().enumerate() {
        let name = format!("chronos{}", i + 1);
        docker_via(
            sock,
            &[
                "run",
                "-d",
                "--name",
                &name,
                "-h",
                &name,
                "-e",
                "WEAVE_CIDR=net:10.32.1.0/24",
                IMAGE,
                "httpd",
                "-f",
                "-p",
                "80",
                "-h",
                "/www",
            ],
        )?
        .ok()?;
        let ip = docker_via(
            sock,
            &["inspect", "-f", "{{.NetworkSettings.IPAddress}}", &name],
        )?
        .ok()?
        .stdout
        .trim()
        .to_owned();
        println!("  {name} on host{}: docker inspect says {ip}", i + 1);
        ips.push((name, ip));
    }

    println!("\nping matrix (docker exec NAME ping -c 3 IP; received/sent, avg RTT):\n");
    print!("| from \\ to |");
    for (n, ip) in &ips {
        print!(" {n} {ip} |");
    }
    println!("\n|---|{}", "---|".repeat(ips.len()));
    for (i, (from, from_ip)) in ips.iter().enumerate() {
        print!("| {from} {from_ip} |");
        for (to, ip) in &ips {
            if to == from {
                print!(" – |");
                continue;
            }
            let out = docker_via(&socks[i], &["exec", from, "ping", "-c", "3", "-W", "2", ip])?;
            print!(" {} |", busybox_ping_summary(&out.stdout));
        }
        println!();
    }

    println!("\n$ weft expose net:10.32.1.0/24   (master)");
    println!(
        "{}",
        master.weft_ok(&["expose", "net:10.32.1.0/24"])?.trim()
    );
    for (name, ip) in &ips {
        let url = format!("http://{ip}/ping");
        let get = "import sys, urllib.request as u; print(u.urlopen(sys.argv[1], timeout=3).read().decode())";
        let out = master.exec(&["python3", "-c", get, &url])?;
        let answer = if out.success() {
            format!("answered {:?}", out.stdout.trim())
        } else {
            let why = out
                .stderr
                .trim()
                .lines()
                .last()
                .unwrap_or_default()
                .to_owned();
            format!("NO answer ({why})")
        };
        println!("  master: GET {url} ({name}) {answer}");
    }

    let (name, ip) = &ips[0];
    docker_via(&socks[0], &["restart", "-t", "1", name])?.ok()?;
    let after = docker_via(
        &socks[0],
        &["inspect", "-f", "{{.NetworkSettings.IPAddress}}", name],
    )?
    .ok()?;
    println!(
        "\n$ docker restart {name}: address before {ip}, after {}",
        after.stdout.trim()
    );

    println!(
        "\n$ weft status ipam   (host1)\n{}",
        h1.weft_ok(&["status", "ipam"])?
    );
    println!("$ weft status   (host1)\n{}", h1.weft_ok(&["status"])?);
    println!(
        "$ weft status connections   (host1)\n{}",
        h1.weft_ok(&["status", "connections"])?
    );
    println!("$ weft ps   (host1)\n{}", h1.weft_ok(&["ps"])?);
    println!("$ weft env   (host1)\n{}", h1.weft_ok(&["env"])?);
    drop(dockerds);
    Ok(())
}

/// "3/3 0.123 ms" from busybox ping's summary lines.
fn busybox_ping_summary(out: &str) -> String {
    // "3 packets transmitted, 3 packets received, 0% packet loss"
    let words: Vec<&str> = out.split_whitespace().collect();
    let count = |key: &str| -> Option<String> {
        let i = words.windows(3).position(|w| w[2].starts_with(key))?;
        Some(words[i].to_owned())
    };
    let sent = count("transmitted").unwrap_or_else(|| "?".into());
    let received = count("received").unwrap_or_else(|| "0".into());
    let avg = out
        .lines()
        .find(|l| l.contains("round-trip"))
        .and_then(|l| l.split('=').nth(1))
        .and_then(|v| v.trim().split('/').nth(1))
        .map(|a| format!("{a} ms"))
        .unwrap_or_else(|| "FAIL".into());
    format!("{received}/{sent} {avg}")
}
