//! Integration test (root, network namespaces): `rmpeer` of a peer that is only partitioned
//! away. A plain rmpeer is refused (the peer was seen moments ago); forced, both sides hand out
//! addresses in the same range. After the heal both peers hold one and the same ring, no
//! address is held by both, every address both sides handed out is reported (status, metric,
//! log) and released on the side that lost the range, and the addresses only the cut-off side
//! handed out stay with it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use weft_tests::local::curl;
use weft_tests::mesh::{block_underlay, unblock_underlay};
use weft_tests::{Host, run_test, wait_established, wait_until};

fn get_json(h: &Host, path: &str) -> Result<Value> {
    let (code, body) = curl(h, false, "GET", path, None)?;
    ensure!(code == 200, "GET {path} on host {}: {code} {body}", h.n());
    serde_json::from_str(&body).with_context(|| format!("GET {path}: {body}"))
}

/// `POST path` on `h`: the address handed out.
fn alloc(h: &Host, path: &str) -> Result<Ipv4Addr> {
    let (code, body) = curl(h, false, "POST", path, None)?;
    ensure!(code == 200, "POST {path} on host {}: {code} {body}", h.n());
    let a = body.split('/').next().unwrap_or("").trim();
    a.parse()
        .with_context(|| format!("POST {path} answered {body:?}"))
}

/// Address -> identifier of everything `h` holds.
fn owned(h: &Host) -> Result<BTreeMap<Ipv4Addr, String>> {
    let v = get_json(h, "/ip")?;
    let mut out = BTreeMap::new();
    for o in v["owned"].as_array().context("no owned list")? {
        let id = o["containerid"].as_str().unwrap_or("").to_owned();
        for a in o["addrs"].as_array().into_iter().flatten() {
            let ip = a
                .as_str()
                .unwrap_or("")
                .split('/')
                .next()
                .unwrap_or("")
                .parse()?;
            out.insert(ip, id.clone());
        }
    }
    Ok(out)
}

fn metric(h: &Host, name: &str) -> Result<u64> {
    let (_, body) = curl(h, false, "GET", "/metrics", None)?;
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no {name} on host {}", h.n()))
}

#[test]
fn forced_rmpeer_of_a_partitioned_peer_heals_to_one_ring_without_duplicates() {
    run_test("partrm", |net| {
        let h1 = net.host(1)?;
        let h2 = net.host(2)?;
        h1.launch(&[&h2])?;
        h2.launch(&[&h1])?;
        wait_established(&[&h1, &h2], Duration::from_secs(30))?;
        alloc(&h1, "/ip/first1")?;
        // Host 2's first address is the start of its part of the ring (a /13 or more): the
        // /24 after the one it lies in is wholly host 2's.
        let first2 = alloc(&h2, "/ip/first2")?;
        let h2_name = h2.peer_name()?;
        let subnet = Ipv4Addr::from((u32::from(first2) & 0xffff_ff00) + 256);
        let in_subnet = |id: &str| format!("/ip/{id}/{subnet}/24");
        let mut h2_before = Vec::new();
        for k in 0..3 {
            h2_before.push(alloc(&h2, &in_subnet(&format!("b{k}")))?);
        }
        // The partition.
        block_underlay(&h1, &h2)?;
        wait_until(
            "host 1 to see host 2 unreachable",
            Duration::from_secs(60),
            Duration::from_millis(200),
            || {
                let text = h1.weft_ok(&["status", "ipam", "--json"])?;
                let v: Value = serde_json::from_str(&text)?;
                let p = v["peers"].as_array().context("no peers")?;
                ensure!(
                    p.iter()
                        .any(|x| x["name"] == h2_name.as_str() && x["reachable"] == false),
                    "{v}"
                );
                Ok(())
            },
        )?;
        let out = h1.weft(&["rmpeer", "host2"])?;
        ensure!(
            !out.success() && out.stderr.contains("--force"),
            "rmpeer of a peer seen moments ago was not refused: {out}"
        );
        let out = h1.weft_ok(&["rmpeer", "--force", "host2"])?;
        ensure!(out.contains("taken over"), "{out}");
        // Both sides hand out addresses in host 2's old range.
        let mut h1_during = Vec::new();
        for k in 0..3 {
            h1_during.push(alloc(&h1, &in_subnet(&format!("a{k}")))?);
        }
        let mut h2_during = Vec::new();
        for k in 3..5 {
            h2_during.push(alloc(&h2, &in_subnet(&format!("b{k}")))?);
        }
        let dups: BTreeSet<Ipv4Addr> = h1_during
            .iter()
            .filter(|a| h2_before.contains(a) || h2_during.contains(a))
            .copied()
            .collect();
        eprintln!("host 1 {h1_during:?}, host 2 {h2_before:?} {h2_during:?}; twice: {dups:?}");
        ensure!(
            !dups.is_empty(),
            "the partition produced no duplicate to resolve"
        );
        // The heal: one ring on both, no address held twice.
        unblock_underlay(&h1, &h2)?;
        wait_until(
            "both peers to hold the same ring and no orphan",
            Duration::from_secs(120),
            Duration::from_millis(500),
            || {
                let (a, b) = (get_json(&h1, "/ipam")?, get_json(&h2, "/ipam")?);
                ensure!(a["entries"] == b["entries"], "rings differ:\n{a}\n{b}");
                ensure!(a["orphans"] == 0 && b["orphans"] == 0, "orphans:\n{a}\n{b}");
                let (o1, o2) = (owned(&h1)?, owned(&h2)?);
                let both: Vec<_> = o1.keys().filter(|a| o2.contains_key(a)).collect();
                ensure!(both.is_empty(), "held by both: {both:?}");
                Ok(())
            },
        )?;
        let (o1, o2) = (owned(&h1)?, owned(&h2)?);
        // Each duplicate stayed with one side and was reported by the other.
        for a in &dups {
            let (loser, kept_by) = if o1.contains_key(a) {
                (&h2, &h1)
            } else {
                (&h1, &h2)
            };
            ensure!(
                o1.contains_key(a) || o2.contains_key(a),
                "{a} was released on both sides"
            );
            let st = loser.weft_ok(&["status", "ipam"])?;
            ensure!(
                st.contains(&format!("Duplicate: {a} ")),
                "host {} (kept by host {}) does not report {a}:\n{st}",
                loser.n(),
                kept_by.n()
            );
            ensure!(
                loser.log().contains(&format!("duplicate address {a}")),
                "no log line about {a} on host {}",
                loser.n()
            );
            ensure!(metric(loser, "weft_ipam_duplicates_total")? >= 1);
        }
        // What only one side handed out is still held there.
        for a in h1_during.iter().chain(&h2_before).chain(&h2_during) {
            ensure!(
                dups.contains(a) || o1.contains_key(a) || o2.contains_key(a),
                "{a} was lost"
            );
        }
        Ok(())
    });
}
