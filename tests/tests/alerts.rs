//! The example Prometheus alert file, `router/prometheus/alerts.yml` (issue 15): `promtool
//! check rules` accepts it, `promtool test rules` shows each alert firing on the failure it is
//! for (and not before its `for:` or on a healthy host), and every metric it names is one a
//! live weft serves (root, network namespaces: two hosts with IPAM), so the file cannot drift
//! from the exposition.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use weft_tests::cmd::Cmd;
use weft_tests::{run_test, wait_established};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../router/prometheus")
}

fn promtool(args: &[&str]) -> Result<String> {
    let out = Cmd::new("promtool")
        .args(args)
        .timeout(Duration::from_secs(60))
        .run()
        .context("running promtool (Debian's prometheus package; .ci/install installs it)")?
        .ok()?;
    Ok(format!("{}{}", out.stdout, out.stderr))
}

#[test]
fn promtool_checks_and_tests_the_alert_rules() -> Result<()> {
    let d = dir();
    let checked = promtool(&[
        "check",
        "rules",
        &d.join("alerts.yml").display().to_string(),
    ])?;
    ensure!(checked.contains("SUCCESS: 6 rules found"), "{checked}");
    let tested = promtool(&[
        "test",
        "rules",
        &d.join("alerts.test.yml").display().to_string(),
    ])?;
    ensure!(tested.contains("SUCCESS"), "{tested}");
    Ok(())
}

/// The metric names an expression in the rule file refers to.
fn names_in_rules(rules: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in rules
        .lines()
        .filter(|l| l.trim_start().starts_with("expr:") || l.contains("rate("))
    {
        let mut rest = line;
        while let Some(i) = rest.find("weave_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[i + name.len()..];
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names
}

#[test]
fn every_metric_the_alerts_use_is_served() {
    run_test("alerts", |net| {
        let rules = std::fs::read_to_string(dir().join("alerts.yml"))?;
        let mut wanted = names_in_rules(&rules);
        ensure!(wanted.len() >= 4, "found only {wanted:?} in the rules");
        // What WeftDropsRising's name pattern is meant to match, each one checked here.
        let pattern = "weft_(udp_rx_dropped_(auth|replay|malformed|unknown_peer)|\
                       udp_tx_dropped_(crypto|queue_full|error)|tap_tx_dropped|\
                       tap_rx_offload_dropped|pmtu_dropped)_total";
        ensure!(
            rules.contains(pattern),
            "the drop alert's pattern changed: update this test"
        );
        for n in [
            "weft_udp_rx_dropped_auth_total",
            "weft_udp_rx_dropped_replay_total",
            "weft_udp_rx_dropped_malformed_total",
            "weft_udp_rx_dropped_unknown_peer_total",
            "weft_udp_tx_dropped_crypto_total",
            "weft_udp_tx_dropped_queue_full_total",
            "weft_udp_tx_dropped_error_total",
            "weft_tap_tx_dropped_total",
            "weft_tap_rx_offload_dropped_total",
            "weft_pmtu_dropped_total",
        ] {
            wanted.push(n.to_owned());
        }
        let h1 = net.host(1)?;
        let h2 = net.host(2)?;
        h1.launch(&[])?;
        h2.launch(&[&h1])?;
        wait_established(&[&h1, &h2], Duration::from_secs(30))?;
        // IPAM's families appear once it has a ring: one allocation makes it.
        h1.container_alloc("c1", &["net:default"])?;
        let metrics = h1
            .exec(&["curl", "-sf", "http://127.0.0.1:6784/metrics"])?
            .ok()?
            .stdout;
        for n in &wanted {
            let served = metrics
                .lines()
                .any(|l| l.starts_with(n.as_str()) && l[n.len()..].starts_with([' ', '{']));
            ensure!(
                served,
                "the alerts use {n}, which /metrics does not serve:\n{metrics}"
            );
        }
        Ok(())
    });
}
