//! Integration tests (root, network namespaces): what happens to IPAM state when a peer
//! leaves with `weft reset` (its ranges go to a live peer first) and when the state directory
//! holds IPAM state that belongs to another peer (set aside with a warning, never mixed in).

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use weft_tests::{Host, run_test, wait_until};

fn ipam_status(h: &Host) -> Result<Value> {
    let out = h.weft_ok(&["status", "ipam", "--json"])?;
    serde_json::from_str(&out).with_context(|| format!("status ipam --json: {out}"))
}

/// Percent of the range `h` believes the peer `name` owns.
fn share(h: &Host, name: &str) -> Result<f64> {
    let v = ipam_status(h)?;
    Ok(v["peers"]
        .as_array()
        .context("no peers in status ipam")?
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["percent"].as_f64())
        .unwrap_or(0.0))
}

#[test]
fn reset_hands_the_ranges_to_a_live_peer() {
    run_test("ipreset", |net| {
        let a = net.host(1)?;
        let b = net.host(2)?;
        a.launch(&[&b])?;
        b.launch(&[&a])?;
        // One allocation on each side: consensus divides the range between the two.
        let ca = a.container_alloc("ca", &["net:default"])?;
        let _cb = b.container_alloc("cb", &["net:default"])?;
        let (a_name, b_name) = (a.peer_name()?, b.peer_name()?);
        wait_until(
            "both peers to own part of the range",
            Duration::from_secs(20),
            Duration::from_millis(200),
            || {
                ensure!(share(&a, &b_name)? > 0.0, "A sees B owning nothing");
                Ok(())
            },
        )?;
        // B leaves for good.
        let out = b.weft(&["reset"])?;
        ensure!(out.success(), "weft reset failed:\n{out}");
        ensure!(
            out.stderr.contains("handed over"),
            "reset did not report the hand-over:\n{out}"
        );
        wait_until(
            "A to own the whole range",
            Duration::from_secs(20),
            Duration::from_millis(200),
            || {
                let mine = share(&a, &a_name)?;
                ensure!(mine > 99.99, "A owns {mine}%");
                Ok(())
            },
        )?;
        // A's own allocation is untouched, and A can allocate in what was B's space.
        let v = a.weft_ok(&["status", "ipam", "--json"])?;
        ensure!(v.contains("ready"), "A's IPAM is not ready: {v}");
        let again = a.container_alloc("ca2", &["net:default"])?;
        ensure!(again.ip() != ca.ip(), "A handed out {} twice", ca.ip());
        Ok(())
    });
}

#[test]
fn another_peers_state_is_set_aside_not_mixed_in() {
    run_test("ipaside", |net| {
        let a = net.host(1)?;
        let b = net.host(2)?;
        a.launch(&[&b])?;
        b.launch(&[&a])?;
        let ca = a.container_alloc("ca", &["net:10.32.1.0/24"])?;
        a.weft_ok(&["stop"])?;
        // Give A's state directory a snapshot that claims to be another peer's.
        let file = a.state_dir().join("ipam.json");
        let text = std::fs::read_to_string(&file).context("A kept no ipam.json")?;
        let mut snapshot: Value = serde_json::from_str(&text)?;
        ensure!(snapshot["peer"].is_u64(), "ipam.json names no peer: {text}");
        // 02:de:ad:be:ef:01 as the 48-bit number the snapshot stores.
        snapshot["peer"] = Value::from(0x02de_adbe_ef01_u64);
        std::fs::write(&file, serde_json::to_vec(&snapshot)?)?;
        a.launch(&[&b])?;
        let log = a.log();
        ensure!(
            log.contains("set aside"),
            "no warning about the foreign IPAM state in A's log:\n{}",
            weft_tests::cmd::tail(&log, 20)
        );
        let aside: Vec<_> = std::fs::read_dir(a.state_dir())?
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("ipam.json.discarded")
            })
            .collect();
        ensure!(
            aside.len() == 1,
            "expected one set-aside file, found {}",
            aside.len()
        );
        // Nothing of the foreign state leaked in: the name never shows up.
        let st = a.weft_ok(&["status", "ipam"])?;
        ensure!(
            !st.contains("02:de:ad:be:ef:01"),
            "foreign peer in status:\n{st}"
        );
        // A relearns the ring from B and keeps allocating without duplicates.
        let c2 = a.container_alloc("ca2", &["net:10.32.1.0/24"])?;
        let cb = b.container_alloc("cb", &["net:10.32.1.0/24"])?;
        ensure!(
            c2.ip() != cb.ip(),
            "the same address {} was handed out twice",
            cb.ip()
        );
        let _ = ca;
        Ok(())
    });
}

#[test]
fn several_addresses_on_one_ethwe_and_detach_releases_them() {
    run_test("ipmulti", |net| {
        let a = net.host(1)?;
        let b = net.host(2)?;
        a.launch(&[&b])?;
        b.launch(&[&a])?;
        // One container, two subnets: both addresses on the same ethwe.
        let ca = a.container_alloc("ca", &["net:10.32.1.0/24", "net:10.32.2.0/24"])?;
        let shown = a.exec(&["ip", "-n", ca.ns(), "-4", "-o", "addr", "show", "ethwe"])?;
        let addrs: Vec<&str> = shown
            .stdout
            .split_whitespace()
            .filter(|w| w.starts_with("10.32.") && w.contains('/'))
            .collect();
        ensure!(
            addrs
                .iter()
                .any(|a| a.ends_with("/24") && a.starts_with("10.32.1."))
                && addrs
                    .iter()
                    .any(|a| a.ends_with("/24") && a.starts_with("10.32.2.")),
            "ethwe has {addrs:?}"
        );
        // A container in each subnet on the other host reaches the matching address.
        let b1 = b.container_alloc("b1", &["net:10.32.1.0/24"])?;
        let b2 = b.container_alloc("b2", &["net:10.32.2.0/24"])?;
        for (from, prefix) in [(&b1, "10.32.1."), (&b2, "10.32.2.")] {
            let addr = addrs
                .iter()
                .find(|a| a.starts_with(prefix))
                .context("no address")?;
            let ip: std::net::Ipv4Addr = addr.split('/').next().unwrap_or("").parse()?;
            from.wait_ping(ip, Duration::from_secs(10))?;
        }
        // detach without addresses removes the interface and releases both in IPAM.
        a.weft_ok(&["detach", ca.ns()])?;
        let gone = a.exec(&["ip", "-n", ca.ns(), "link", "show", "ethwe"])?;
        ensure!(!gone.success(), "ethwe still exists after detach");
        let left = a.weft_ok(&["status", "ipam", "--json"])?;
        let v: Value = serde_json::from_str(&left)?;
        ensure!(
            v["allocated"] == 0,
            "A still holds addresses after detach: {left}"
        );
        Ok(())
    });
}
