//! Integration tests (root, network namespaces): two hosts, one container each.
//!
//! Checks the basic data path end to end with the real binary: pings both ways, ARP resolved
//! across hosts to the remote container's own MAC, and a 100 MB TCP transfer arriving intact.

use std::time::Duration;

use anyhow::ensure;
use weft_tests::mesh::transfer_intact;
use weft_tests::run_test;

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
        let took = transfer_intact(net, &p.c1, &p.c2, 100)?;
        eprintln!(
            "100 MB in {took:.1?} ({:.0} Mbit/s)",
            800.0 * 1.048_576 / took.as_secs_f64()
        );
        Ok(())
    });
}
