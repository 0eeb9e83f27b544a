//! Integration test (root, network namespaces): path MTU discovery on the userspace path
//! (issue 14).
//!
//! Two hosts, one container each, the overlay MTU the default 1376. Then the underlay between
//! the hosts is made to carry only UDP datagrams of less than 700 bytes (an iptables length
//! match inside both host namespaces on weft's data port, each host's underlay device cutting
//! GSO batches first), as a tunnel or a misconfigured link would. A user checks that:
//! - within 10 s, `ping -s 10000` between the containers gets through (weft fragments what has
//!   no DF bit and answers DF packets with ICMP "fragmentation needed", as Weave's sleeve did),
//!   and a 20 MiB TCP transfer arrives intact;
//! - `weave status connections` shows the connection's reduced MTU (`mtu=`), and the JSON
//!   status its `path_mtu`;
//! - once the limit is lifted, the status shows the full MTU again and, with the container's
//!   learnt path MTU flushed, a full-size DF ping goes through;
//! - a relay whose next link is the narrow one answers for it: A–B–C with A↔C blocked and only
//!   B↔C narrow, containers on A and C still exchange 10000-byte pings and 20 MiB over TCP
//!   (B fragments, or sends the ICMP back to A's container as if from C's);
//! - IPv6 between the containers (which no router fragments) over a path narrower than the
//!   overlay but within IPv6's minimum: a 3000-byte `ping -6` gets through (weft answers with
//!   ICMPv6 "Packet Too Big", the container's kernel fragments at the source) and the
//!   container's route to the other shows the path's MTU.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use weft_tests::mesh::transfer_intact;
use weft_tests::net::{Container, UNDERLAY_DEV};
use weft_tests::{Host, run_test, wait_until};

/// The largest IP packet on the underlay, plus one: iptables drops UDP packets this long or
/// longer on the data port.
const LIMIT: u32 = 700;
/// IP + UDP + VXLAN headers around an inner frame, and the inner Ethernet header.
const OUTER: u32 = 20 + 8 + 8;
const ETH: u32 = 14;
/// The container MTU the limit allows: 700 - 1 - 36 - 14 = 649.
const REDUCED: u32 = LIMIT - 1 - OUTER - ETH;
const FULL: u32 = 1376;

/// Adds (`-A`) or deletes (`-D`) the length limit on host `h` (its incoming datagrams; both
/// hosts get it, so both directions are limited).
///
/// Netfilter sees a UDP GSO batch as one large packet (on the sender's OUTPUT and, since veth
/// passes GSO packets through whole, on the receiver's INPUT), so a length rule would drop whole
/// batches of small datagrams, which no real path does: [`per_packet`] makes the underlay
/// devices cut batches into single datagrams first.
fn limit(h: &Host, op: &str) -> Result<()> {
    limit_at(h, op, LIMIT)
}

/// [`limit`] at `at` bytes.
fn limit_at(h: &Host, op: &str, at: u32) -> Result<()> {
    limit_rule(h, op, at, None)
}

/// [`limit`] at `at` bytes, for datagrams from `from` only (all when `None`).
fn limit_rule(h: &Host, op: &str, at: u32, from: Option<&Host>) -> Result<()> {
    let len = format!("{at}:65535");
    let mut args = vec![
        "iptables",
        "-w",
        op,
        "INPUT",
        "-p",
        "udp",
        "-m",
        "multiport",
        "--dports",
        "6783,6784",
    ];
    let src = from.map(|f| f.addr().to_string());
    if let Some(src) = &src {
        args.extend_from_slice(&["-s", src.as_str()]);
    }
    args.extend_from_slice(&["-m", "length", "--length", &len, "-j", "DROP"]);
    h.exec(&args)?
        .ok()
        .with_context(|| format!("iptables {op} INPUT on host {}", h.n()))?;
    Ok(())
}

/// Makes host `h`'s underlay device segment every GSO batch before it leaves (see [`limit`]).
fn per_packet(h: &Host) -> Result<()> {
    h.exec(&[
        "ip",
        "link",
        "set",
        "dev",
        UNDERLAY_DEV,
        "gso_max_segs",
        "1",
    ])?
    .ok()
    .with_context(|| format!("gso_max_segs on host {}", h.n()))?;
    Ok(())
}

/// The `mtu=` of the first established connection in `weave status connections`.
fn status_mtu(h: &Host) -> Result<u32> {
    let text = h.weft_ok(&["status", "connections"])?;
    let line = text
        .lines()
        .find(|l| l.contains("established"))
        .with_context(|| format!("no established connection:\n{text}"))?;
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("mtu="))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no mtu= in {line:?}"))
}

/// Waits up to `secs` until every host's status shows the full MTU.
fn wait_full_mtu(hosts: &[&Host], what: &str, secs: u64) -> Result<()> {
    wait_until(
        what,
        Duration::from_secs(secs),
        Duration::from_millis(200),
        || {
            for h in hosts {
                let m = status_mtu(h)?;
                ensure!(m == FULL, "host {}: mtu={m}", h.n());
            }
            Ok(())
        },
    )
}

/// `path_mtu` of the connection in the JSON status.
fn json_path_mtu(h: &Host) -> Result<Option<u64>> {
    let v = h.status_json()?;
    Ok(v["connections"]
        .as_array()
        .and_then(|cs| cs.iter().find_map(|c| c["path_mtu"].as_u64())))
}

/// One `ping -c 1 -s size` (extra args before the address); true if answered.
fn ping_size(from: &Container, to: &Container, size: u32, extra: &[&str]) -> Result<bool> {
    let mut args = vec![
        "ping".to_owned(),
        "-n".into(),
        "-c".into(),
        "1".into(),
        "-W".into(),
        "1".into(),
        "-s".into(),
        size.to_string(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args.push(to.ip().to_string());
    Ok(from.exec(&args)?.success())
}

#[test]
fn a_narrow_underlay_path_is_discovered_and_used() {
    run_test("pmtu", |net| {
        let p = net.pair()?;
        let (h1, h2, c1, c2) = (&p.h1, &p.h2, &p.c1, &p.c2);
        wait_full_mtu(&[h1, h2], "both ends to know the full path MTU", 10)?;
        ensure!(
            ping_size(c1, c2, 10000, &[])?,
            "a 10000-byte ping fails before any limit"
        );

        for h in [h1, h2] {
            per_packet(h)?;
            limit(h, "-A")?;
        }
        let t0 = Instant::now();
        // Big pings until one is answered (the first ones may be lost while weft finds out).
        let through = wait_until(
            "a 10000-byte ping through the narrow path",
            Duration::from_secs(20),
            Duration::from_millis(100),
            || {
                ensure!(ping_size(c1, c2, 10000, &[])?, "no answer");
                Ok(t0.elapsed())
            },
        )?;
        eprintln!("narrow path: 10000-byte ping answered {through:.1?} after the limit");
        ensure!(
            through <= Duration::from_secs(10),
            "the 10000-byte ping got through only after {through:.1?}"
        );
        for h in [h1, h2] {
            let m = status_mtu(h)?;
            eprintln!("host {}: status says mtu={m}", h.n());
            ensure!(
                (REDUCED - 8..=REDUCED).contains(&m),
                "host {}: status says mtu={m}, the path carries {REDUCED}",
                h.n()
            );
            ensure!(
                json_path_mtu(h)? == Some(u64::from(m)),
                "host {}: JSON path_mtu {:?} differs from mtu={m}",
                h.n(),
                json_path_mtu(h)?
            );
        }
        // TCP (DF set by the container) learns the path MTU from weft's ICMP and gets through.
        let took = transfer_intact(net, c1, c2, 20)?;
        eprintln!("narrow path: 20 MiB intact in {took:.1?}");
        ensure!(
            h1.settled_counter("pmtu_frag_needed_sent")? > 0,
            "no ICMP fragmentation-needed was sent to the container"
        );
        // Pings in both directions, several sizes, all answered now.
        for size in [600, 1400, 4000, 10000] {
            ensure!(ping_size(c1, c2, size, &[])?, "c1 -> c2, {size} bytes");
            ensure!(ping_size(c2, c1, size, &[])?, "c2 -> c1, {size} bytes");
        }

        for h in [h1, h2] {
            limit(h, "-D")?;
        }
        let t1 = Instant::now();
        wait_full_mtu(&[h1, h2], "the full path MTU to come back", 20)?;
        eprintln!("limit lifted: full MTU again after {:.1?}", t1.elapsed());
        // The container keeps what it learnt for minutes; flushed, it sends full size again,
        // with DF, and that goes through.
        for c in [c1, c2] {
            c.exec(&["ip", "route", "flush", "cache"])?
                .ok()
                .context("flushing the container's route cache")?;
        }
        let full_payload = FULL - 28;
        ensure!(
            ping_size(c1, c2, full_payload, &["-M", "do"])?,
            "a full-size DF ping ({full_payload} bytes) fails after the limit was lifted"
        );
        Ok(())
    });
}

/// The underlay limit for the IPv6 case: inner frames up to 1303 bytes, a container MTU of
/// 1289, above IPv6's minimum of 1280.
const LIMIT_V6: u32 = 1340;

#[test]
fn ipv6_learns_a_narrow_path_from_packet_too_big() {
    run_test("pmtu6", |net| {
        let p = net.pair()?;
        let (h1, h2, c1, c2) = (&p.h1, &p.h2, &p.c1, &p.c2);
        for (c, a) in [(c1, "fd00:77::1/64"), (c2, "fd00:77::2/64")] {
            // The test harness makes namespaces with IPv6 off; this test wants it on ethwe.
            c.exec(&["sysctl", "-qw", "net.ipv6.conf.ethwe.disable_ipv6=0"])?
                .ok()
                .context("enabling IPv6 on ethwe")?;
            c.exec(&["ip", "-6", "addr", "add", a, "dev", "ethwe", "nodad"])?
                .ok()
                .context("adding an IPv6 address")?;
        }
        let ping6 = |size: u32| -> Result<bool> {
            let size = size.to_string();
            Ok(c1
                .exec(&[
                    "ping",
                    "-6",
                    "-n",
                    "-c",
                    "1",
                    "-W",
                    "1",
                    "-s",
                    &size,
                    "fd00:77::2",
                ])?
                .success())
        };
        wait_until(
            "IPv6 between the containers",
            Duration::from_secs(10),
            Duration::from_millis(200),
            || {
                ensure!(ping6(56)?, "no answer");
                Ok(())
            },
        )?;
        wait_full_mtu(&[h1, h2], "both ends to know the full path MTU", 10)?;
        for h in [h1, h2] {
            per_packet(h)?;
            limit_at(h, "-A", LIMIT_V6)?;
        }
        let reduced = LIMIT_V6 - 1 - OUTER - ETH;
        wait_until(
            "both ends to find the narrower path",
            Duration::from_secs(15),
            Duration::from_millis(200),
            || {
                for h in [h1, h2] {
                    let m = status_mtu(h)?;
                    ensure!(
                        (reduced - 8..=reduced).contains(&m),
                        "host {}: mtu={m}",
                        h.n()
                    );
                }
                Ok(())
            },
        )?;
        let t0 = Instant::now();
        wait_until(
            "a 3000-byte IPv6 ping through the narrow path",
            Duration::from_secs(10),
            Duration::from_millis(100),
            || {
                ensure!(ping6(3000)?, "no answer");
                Ok(())
            },
        )?;
        eprintln!(
            "IPv6: 3000-byte ping answered {:.1?} after the path was known",
            t0.elapsed()
        );
        ensure!(
            h1.settled_counter("pmtu_frag_needed_sent")? > 0,
            "no Packet Too Big was sent to the container"
        );
        let route = c1
            .exec(&["ip", "-6", "route", "get", "fd00:77::2"])?
            .ok()?
            .stdout;
        let mtu = route
            .split_whitespace()
            .skip_while(|w| *w != "mtu")
            .nth(1)
            .and_then(|m| m.parse::<u32>().ok())
            .with_context(|| format!("no learnt mtu in {route:?}"))?;
        eprintln!("IPv6: the container's route says mtu {mtu}");
        ensure!(
            (reduced - 8..=reduced).contains(&mtu),
            "the container learnt mtu {mtu}, the path carries {reduced}"
        );
        Ok(())
    });
}

#[test]
fn a_relay_answers_for_its_narrower_next_link() {
    run_test("pmtur", |net| {
        let (a, b, c) = (net.host(1)?, net.host(2)?, net.host(3)?);
        weft_tests::mesh::block_underlay(&a, &c)?;
        a.launch(&[])?;
        b.launch(&[&a])?;
        c.launch(&[&b])?;
        weft_tests::mesh::wait_established_with(&a, &b, Duration::from_secs(20))?;
        weft_tests::mesh::wait_established_with(&c, &b, Duration::from_secs(20))?;
        let ca = a.container("ca", "10.32.0.1/12")?;
        let cc = c.container("cc", "10.32.0.3/12")?;
        ca.wait_ping(cc.ip(), Duration::from_secs(30))?;
        // Only B–C narrows; A–B keeps the full size, so A sends B frames that B cannot pass on.
        for (h, other) in [(&b, &c), (&c, &b)] {
            per_packet(h)?;
            limit_rule(h, "-A", LIMIT, Some(other))?;
        }
        let c_addr = c.addr().to_string();
        wait_until(
            "B to find its narrower path to C",
            Duration::from_secs(15),
            Duration::from_millis(200),
            || {
                let text = b.weft_ok(&["status", "connections"])?;
                let line = text
                    .lines()
                    .find(|l| l.contains(&c_addr) && l.contains("established"))
                    .with_context(|| format!("no connection to C:\n{text}"))?;
                ensure!(
                    line.contains(&format!("mtu={}", REDUCED))
                        || (REDUCED - 8..REDUCED).any(|m| line.contains(&format!("mtu={m}"))),
                    "{line}"
                );
                Ok(())
            },
        )?;
        ensure!(status_mtu(&a)? == FULL, "A–B narrowed too");
        let t0 = Instant::now();
        wait_until(
            "a 10000-byte ping from A's container to C's through B",
            Duration::from_secs(10),
            Duration::from_millis(100),
            || {
                ensure!(ping_size(&ca, &cc, 10000, &[])?, "no answer");
                Ok(())
            },
        )?;
        eprintln!(
            "relayed narrow path: 10000-byte ping answered after {:.1?}",
            t0.elapsed()
        );
        let took = transfer_intact(net, &ca, &cc, 20)?;
        eprintln!("relayed narrow path: 20 MiB intact in {took:.1?}");
        for counter in ["pmtu_fragments_sent", "pmtu_frag_needed_sent"] {
            let n = b.settled_counter(counter)?;
            eprintln!("B: {counter} = {n}");
            ensure!(n > 0, "B's {counter} is 0");
        }
        Ok(())
    });
}
