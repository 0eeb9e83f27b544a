//! weft demo (driver layer, needs root): three "slave" hosts in network namespaces, each running
//! a weft router with one "container" whose address IPAM allocates in 10.32.1.0/24, a ping
//! matrix between the containers, a "master" host that runs `weft expose net:10.32.1.0/24` and
//! reaches them, `weft status`, `status ipam`, `ps` of one host; then everything is removed.
//!
//! Run: `cargo build --release -p weft-cli && cargo run --release -p weft-tests --bin weft-demo`
//! (the weft binary is taken from `$WEFT_BIN` or the same cargo profile directory).

use std::time::Duration;

use anyhow::Result;
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
    let res = demo(&net);
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
