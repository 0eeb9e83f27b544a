//! Integration tests (root, network namespaces): an address is never handed out twice, whatever
//! happens to the state directory. An allocation is stored (written and synced) before it is
//! answered, so a read-only or full state directory makes requests fail with a message (and
//! shows in `weft status ipam` and `/metrics`) instead of handing out what a restart would
//! forget; an unreadable `ipam.json` stops the router unless told to recover; and addresses in
//! use on the host are claimed at start, so even without any state nothing in use is reused.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use anyhow::{Context, Result, ensure};
use weft_tests::cmd::ip;
use weft_tests::local::{Tmpfs, curl};
use weft_tests::{Host, TestNet, run_test};

/// A fresh namespace attached with `weft attach net:default`: the address, or the failed
/// command's output.
fn attach(net: &TestNet, h: &Host, tag: &str) -> Result<(String, Result<Ipv4Addr, String>)> {
    let ns = net.netns(tag)?;
    let out = h.weft(&["attach", "net:default", &ns])?;
    if !out.success() {
        return Ok((ns, Err(format!("{out}"))));
    }
    let addr = out
        .stdout
        .split_whitespace()
        .next()
        .context("weft attach printed no address")?
        .parse()?;
    Ok((ns, Ok(addr)))
}

/// `attach` that must succeed.
fn attach_ok(net: &TestNet, h: &Host, tag: &str) -> Result<(String, Ipv4Addr)> {
    let (ns, r) = attach(net, h, tag)?;
    let a = r.map_err(anyhow::Error::msg)?;
    Ok((ns, a))
}

/// The IPv4 addresses on `ethwe` in `ns` (none if it has no `ethwe`).
fn ethwe(ns: &str) -> Vec<Ipv4Addr> {
    ip(["-n", ns, "-4", "-o", "addr", "show", "dev", "ethwe"])
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|w| w.split_once('/').and_then(|(a, _)| a.parse().ok()))
        .collect()
}

/// Every address on the given containers' interfaces, failing on the first one seen twice.
fn all_distinct(nss: &[&str]) -> Result<BTreeSet<Ipv4Addr>> {
    let mut seen = BTreeSet::new();
    for ns in nss {
        for a in ethwe(ns) {
            ensure!(seen.insert(a), "{a} is in use twice (again in {ns})");
        }
    }
    Ok(seen)
}

fn status_ipam(h: &Host) -> Result<String> {
    h.weft_ok(&["status", "ipam"])
}

fn metric(h: &Host, name: &str) -> Result<String> {
    let (code, body) = curl(h, false, "GET", "/metrics", None)?;
    ensure!(code == 200, "/metrics answered {code}");
    body.lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .map(|l| l[name.len() + 1..].trim().to_owned())
        .with_context(|| format!("no {name} in /metrics:\n{body}"))
}

/// Kills the router with SIGKILL and starts it again the same way.
fn kill_and_relaunch(h: &Host, args: &[&str]) -> Result<()> {
    h.kill_router()?;
    h.launch_args(args)
}

#[test]
fn read_only_state_dir_refuses_allocations_and_nothing_is_reused_after_restart() {
    run_test("durro", |net| {
        let h = net.host(1)?;
        let disk = Tmpfs::mount(h.state_dir(), "1m")?;
        let launch = ["--nickname", "host1"];
        h.launch_args(&launch)?;
        let (c1, a1) = attach_ok(net, &h, "c1")?;
        disk.set_read_only(true)?;
        // The allocation cannot be stored: refused with the reason, nothing configured.
        let (c2, r2) = attach(net, &h, "c2")?;
        let err = r2.err().with_context(|| {
            format!(
                "attach succeeded with a read-only state directory: {:?}",
                ethwe(&c2)
            )
        })?;
        ensure!(
            err.contains("could not be stored") && err.contains("Read-only file system"),
            "attach with a read-only state directory failed without saying why:\n{err}"
        );
        ensure!(ethwe(&c2).is_empty(), "c2 got {:?}", ethwe(&c2));
        // The API answers 503 with the message; status and metrics say the store fails.
        let (code, body) = curl(&h, false, "POST", "/ip/probe", None)?;
        ensure!(code == 503, "POST /ip/probe answered {code}: {body}");
        ensure!(body.contains("Read-only file system"), "{body}");
        let st = status_ipam(&h)?;
        ensure!(st.contains("FAILING"), "weft status ipam:\n{st}");
        ensure!(metric(&h, "weft_ipam_store_failing")? == "1");
        // The directory is writable again: allocations work, the status is clean.
        disk.set_read_only(false)?;
        let (c3, _) = attach_ok(net, &h, "c3")?;
        let st = status_ipam(&h)?;
        ensure!(!st.contains("FAILING"), "still failing:\n{st}");
        ensure!(metric(&h, "weft_ipam_store_failing")? == "0");
        // Killed and restarted: nothing handed out before is handed out again.
        kill_and_relaunch(&h, &launch)?;
        let (c4, a4) = attach_ok(net, &h, "c4")?;
        ensure!(a4 != a1, "{a1} handed out twice");
        all_distinct(&[&c1, &c2, &c3, &c4])?;
        Ok(())
    });
}

#[test]
fn full_state_dir_refuses_allocations_and_nothing_is_reused_after_restart() {
    run_test("durfull", |net| {
        let h = net.host(1)?;
        let disk = Tmpfs::mount(h.state_dir(), "64k")?;
        let launch = ["--nickname", "host1"];
        h.launch_args(&launch)?;
        let (c1, _) = attach_ok(net, &h, "c1")?;
        let (c2, _) = attach_ok(net, &h, "c2")?;
        let filled = disk.fill("filler")?;
        eprintln!("state directory filled with {filled} bytes");
        let (c3, r3) = attach(net, &h, "c3")?;
        let err = r3.err().with_context(|| {
            format!(
                "attach succeeded on a full state directory: {:?}",
                ethwe(&c3)
            )
        })?;
        ensure!(
            err.contains("could not be stored") && err.contains("No space left on device"),
            "attach on a full disk failed without saying why:\n{err}"
        );
        ensure!(ethwe(&c3).is_empty(), "c3 got {:?}", ethwe(&c3));
        let (code, body) = curl(&h, false, "POST", "/ip/probe", None)?;
        ensure!(
            code == 503 && body.contains("No space left"),
            "{code} {body}"
        );
        ensure!(status_ipam(&h)?.contains("FAILING"));
        ensure!(metric(&h, "weft_ipam_store_failing")? == "1");
        ensure!(
            !h.state_dir().join("ipam.json.tmp").exists(),
            "a half-written ipam.json.tmp was left behind"
        );
        let stored = std::fs::read_to_string(h.state_dir().join("ipam.json"))?;
        ensure!(
            serde_json::from_str::<serde_json::Value>(&stored).is_ok(),
            "ipam.json is no longer valid: {stored:?}"
        );
        // Space again; the router is killed and restarted.
        std::fs::remove_file(h.state_dir().join("filler"))?;
        kill_and_relaunch(&h, &launch)?;
        let (c4, _) = attach_ok(net, &h, "c4")?;
        let (c5, _) = attach_ok(net, &h, "c5")?;
        all_distinct(&[&c1, &c2, &c3, &c4, &c5])?;
        Ok(())
    });
}

#[test]
fn truncated_state_file_stops_the_router_and_recovery_reuses_nothing() {
    run_test("durtrunc", |net| {
        let h = net.host(1)?;
        h.launch_args(&["--nickname", "host1"])?;
        let mut nss = Vec::new();
        let mut before = BTreeSet::new();
        for k in 1..=3 {
            let (ns, a) = attach_ok(net, &h, &format!("c{k}"))?;
            before.insert(a);
            nss.push(ns);
        }
        h.weft_ok(&["expose", "net:default"])?;
        h.weft_ok(&["stop"])?;
        // The state file is cut in half, and the previous one is lost too.
        let file = h.state_dir().join("ipam.json");
        let text = std::fs::read(&file)?;
        std::fs::write(&file, &text[..text.len() / 2])?;
        let _ = std::fs::remove_file(h.state_dir().join("ipam.json.prev"));
        // Refused, with a message that says what to do.
        let out = h.weft(&["launch", "--nickname", "host1"])?;
        let said = format!("{}{}{}", out.stdout, out.stderr, h.log());
        ensure!(
            !out.success(),
            "launch with a truncated ipam.json succeeded"
        );
        ensure!(
            said.contains("ipam.json") && said.contains("--ipam-recover"),
            "the refusal does not name the file and --ipam-recover:\n{said}"
        );
        // Told to recover: the file is kept aside, and what is in use is claimed again.
        h.launch_args(&["--nickname", "host1", "--ipam-recover"])?;
        let kept = std::fs::read_dir(h.state_dir())?
            .filter_map(|e| e.ok())
            .any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("ipam.json.corrupt")
            });
        ensure!(kept, "the unreadable state file was not kept");
        for k in 4..=6 {
            let (ns, a) = attach_ok(net, &h, &format!("c{k}"))?;
            ensure!(!before.contains(&a), "{a} handed out again to c{k}");
            nss.push(ns);
        }
        let refs: Vec<&str> = nss.iter().map(String::as_str).collect();
        let addrs = all_distinct(&refs)?;
        ensure!(addrs.len() == 6, "{addrs:?}");
        let exposed = h.weft_ok(&["ps", "weave:expose"])?;
        for a in &addrs {
            ensure!(
                !exposed.contains(&format!(" {a}/")),
                "{a} is also on the bridge"
            );
        }
        Ok(())
    });
}

#[test]
fn without_any_state_the_addresses_in_use_are_not_handed_out() {
    run_test("durnone", |net| {
        let h = net.host(1)?;
        h.launch_args(&["--nickname", "host1"])?;
        let (c1, a1) = attach_ok(net, &h, "c1")?;
        let (c2, a2) = attach_ok(net, &h, "c2")?;
        h.weft_ok(&["stop"])?;
        for f in ["ipam.json", "ipam.json.prev"] {
            let _ = std::fs::remove_file(h.state_dir().join(f));
        }
        h.launch_args(&["--nickname", "host1"])?;
        let (c3, a3) = attach_ok(net, &h, "c3")?;
        ensure!(a3 != a1 && a3 != a2, "{a3} handed out again");
        all_distinct(&[&c1, &c2, &c3])?;
        // IPAM knows the containers under their attach identifiers again (so `weft detach`
        // releases them).
        let (code, body) = curl(&h, false, "GET", "/ip", None)?;
        ensure!(code == 200, "{body}");
        for (ns, a) in [(&c1, a1), (&c2, a2)] {
            ensure!(
                body.contains(ns.as_str()) && body.contains(&a.to_string()),
                "{ns} {a} not in GET /ip: {body}"
            );
        }
        Ok(())
    });
}
