//! Integration test (root, network namespaces): every kernel-feature fallback of the data plane,
//! forced, still carries traffic (issue 15).
//!
//! Two hosts, one container each, on the userspace path (`--no-fastdp`: the features are its).
//! For each case the routers are launched with features ruled
//! out, host 1 with `--disable-features`, host 2 with `WEFT_DISABLE_FEATURES` (both ways of
//! asking), then, as a user would check:
//! - `weft status` says the data path goes without them (`DataPath: ... without ...`), the JSON
//!   status marks each one unused with the reason, and the log says which fallback was taken;
//!   with `ebpf` ruled out there is no express lane (`DataPath` does not say `express lane`);
//! - the containers ping each other and a 20 MB TCP transfer arrives intact;
//! - where a fallback is visible in the counters it shows there: with the TAP's vnet header or
//!   TSO ruled out no TCP super-frame comes off the TAP, while with everything on the same
//!   transfer does produce super-frames (so the check can fail).

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use weft_tests::mesh::transfer_intact;
use weft_tests::{Container, Host, TestNet, run_test, wait_established};

/// The cases: what is ruled out, and whether TCP super-frames can still come off the TAP.
const CASES: [(&str, bool); 7] = [
    ("", true),
    ("tap-vnet-hdr", false),
    ("tso", false),
    ("udp-gso", true),
    ("udp-gro", true),
    ("vxlan-external,ebpf", true),
    (
        "tap-vnet-hdr,tso,udp-gso,udp-gro,vxlan-external,ebpf",
        false,
    ),
];

/// The userspace data path's own features (the rest is only reported).
const USERSPACE: [&str; 4] = ["tap-vnet-hdr", "tso", "udp-gso", "udp-gro"];

fn launch(h: &Host, peers: &[&Host], disabled: &str, by_env: bool) -> Result<()> {
    // These fallbacks are the userspace path's: traffic must take it, not the kernel fast
    // path.
    let mut args: Vec<String> = vec![
        "launch".into(),
        "--no-fastdp".into(),
        "--nickname".into(),
        format!("host{}", h.n()),
    ];
    if !by_env && !disabled.is_empty() {
        args.push(format!("--disable-features={disabled}"));
    }
    args.extend(peers.iter().map(|p| p.addr().to_string()));
    let mut cmd = h.weft_cmd(&args)?;
    if by_env {
        cmd = cmd.env("WEFT_DISABLE_FEATURES", disabled);
    }
    cmd.run_ok()
        .with_context(|| format!("launching host {} without {disabled:?}", h.n()))?;
    Ok(())
}

/// Checks what host `h` says about its features for the case `disabled`.
fn check_reports(h: &Host, disabled: &[&str], log_from: usize) -> Result<()> {
    let status = h.status_json()?;
    let features = status["kernel_features"]
        .as_array()
        .with_context(|| format!("no kernel_features in host {}'s status", h.n()))?;
    let find = |name: &str| -> Result<&Value> {
        features
            .iter()
            .find(|f| f["name"] == name)
            .with_context(|| format!("host {}: no {name} in {features:?}", h.n()))
    };
    for name in USERSPACE {
        let f = find(name)?;
        let off = disabled.contains(&name) || (name == "tso" && disabled.contains(&"tap-vnet-hdr"));
        ensure!(
            f["used"] == !off,
            "host {}: {name} used = {}, expected {}: {f}",
            h.n(),
            f["used"],
            !off
        );
        if disabled.contains(&name) {
            ensure!(
                f["note"] == "disabled by --disable-features",
                "host {}: {f}",
                h.n()
            );
        }
    }
    for name in ["vxlan-external", "ebpf"] {
        let f = find(name)?;
        // eBPF steers the TAP's queues for the express lane; the other is the fast path's.
        let used = name == "ebpf" && !disabled.contains(&name);
        ensure!(f["used"] == used, "host {}: {f}", h.n());
        if disabled.contains(&name) {
            ensure!(
                f["note"] == "disabled by --disable-features",
                "host {}: {f}",
                h.n()
            );
        }
    }
    let text = h.weft_ok(&["status"])?;
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("DataPath:"))
        .with_context(|| format!("no DataPath line in `weft status`:\n{text}"))?;
    ensure!(
        line.contains("express lane") != disabled.contains(&"ebpf"),
        "host {}: {line:?}: the express lane is there exactly when eBPF may be used",
        h.n()
    );
    let without = line.split("without").nth(1).unwrap_or("");
    for name in USERSPACE {
        let off = disabled.contains(&name) || (name == "tso" && disabled.contains(&"tap-vnet-hdr"));
        ensure!(
            without.split_whitespace().any(|w| w == name) == off,
            "host {}: {line:?} should {}list {name} as a fallback",
            h.n(),
            if off { "" } else { "not " }
        );
    }
    let log = h.log();
    let log = log.get(log_from..).unwrap_or("");
    for name in disabled.iter().filter(|n| USERSPACE.contains(n)) {
        ensure!(
            log.contains(&format!("data plane falls back: no {name}")),
            "host {}'s log does not say it falls back from {name}:\n{}",
            h.n(),
            weft_tests::cmd::tail(log, 20)
        );
    }
    ensure!(
        log.contains("kernel features: available:"),
        "host {}'s log does not list the kernel features",
        h.n()
    );
    Ok(())
}

fn run_case(
    net: &TestNet,
    hosts: &[Host; 2],
    ctrs: &[Container; 2],
    disabled: &str,
    superframes: bool,
) -> Result<()> {
    let [h1, h2] = hosts;
    let logs = [h1.log().len(), h2.log().len()];
    launch(h1, &[], disabled, false)?;
    launch(h2, &[h1], disabled, true)?;
    wait_established(&[h1, h2], Duration::from_secs(30))?;
    let names: Vec<&str> = disabled.split(',').filter(|s| !s.is_empty()).collect();
    for (h, from) in hosts.iter().zip(logs) {
        check_reports(h, &names, from)?;
    }
    let [c1, c2] = ctrs;
    c1.wait_ping(c2.ip(), Duration::from_secs(20))?;
    let s = c1.ping(c2.ip(), 5, 0.2)?;
    ensure!(
        s.received >= 4,
        "without {disabled:?}: {}/{} pings",
        s.received,
        s.transmitted
    );
    let before = h1.settled_counter("tap_rx_superframes")?;
    let took = transfer_intact(net, c1, c2, 20)?;
    let made = h1.settled_counter("tap_rx_superframes")? - before;
    eprintln!(
        "without {disabled:?}: 20 MB intact in {took:.1?}, {made} TCP super-frames off the TAP"
    );
    if superframes {
        ensure!(
            made > 0,
            "without {disabled:?} TSO is on, yet the transfer made no super-frame"
        );
    } else {
        ensure!(
            made == 0,
            "without {disabled:?} TSO must be off, yet {made} super-frames came off the TAP"
        );
    }
    for h in hosts {
        h.weft_ok(&["stop"])?;
    }
    Ok(())
}

#[test]
fn each_forced_fallback_still_carries_traffic() {
    run_test("fallback", |net| {
        let hosts = [net.host(1)?, net.host(2)?];
        // The containers stay attached to the bridges across the relaunches.
        launch(&hosts[0], &[], "", false)?;
        launch(&hosts[1], &[&hosts[0]], "", false)?;
        let ctrs = [
            hosts[0].container("c1", "10.32.0.1/12")?,
            hosts[1].container("c2", "10.32.0.2/12")?,
        ];
        for h in &hosts {
            h.weft_ok(&["stop"])?;
        }
        for (disabled, superframes) in CASES {
            run_case(net, &hosts, &ctrs, disabled, superframes)
                .with_context(|| format!("case: --disable-features={disabled:?}"))?;
        }
        Ok(())
    });
}

#[test]
fn an_unknown_feature_is_refused_before_anything_starts() {
    run_test("fallbad", |net| {
        let h = net.host(1)?;
        let out = h.weft(&["launch", "--disable-features=tso,warp-drive"])?;
        ensure!(!out.success(), "launch accepted an unknown feature: {out}");
        ensure!(
            out.stderr.contains("warp-drive") && out.stderr.contains("udp-gso"),
            "the refusal does not name the feature and the known ones: {out}"
        );
        if h.weft(&["status"])?.success() {
            bail!("a router runs after the refused launch");
        }
        Ok(())
    });
}
