//! Integration tests (root, network namespaces): first-run checks fail with what was found and
//! change nothing; a failed launch prints its own log lines, not older runs'.
//!
//! - not root: `weave launch` says it needs root / CAP_NET_ADMIN, and nothing is made;
//! - a link `weave` that is not a bridge (a veth here), or a bridge weft did not make with another MTU and
//!   addresses of its own: refused, saying what was found; the link is left as it was;
//! - the default range overlapping a route of the host: refused as Weave does ("overlaps with
//!   existing route on host"), naming `--ipalloc-range`; an explicit overlapping range only
//!   warns and launches;
//! - two launches failing for different reasons: each prints its own reason and log lines.

use anyhow::{Result, ensure};
use weft_tests::{Host, run_test};

/// `ip -o link` and `ip -o addr` of the host, for "nothing changed" comparisons.
fn snapshot(h: &Host) -> Result<String> {
    let links = h.exec(&["ip", "-o", "link"])?.ok()?.stdout;
    let addrs = h.exec(&["ip", "-o", "addr"])?.ok()?.stdout;
    let routes = h.exec(&["ip", "route"])?.ok()?.stdout;
    // Counters change; keep names, kinds, MTUs and addresses.
    let links: Vec<String> = links
        .lines()
        .map(|l| {
            l.split_whitespace()
                .take_while(|w| *w != "qdisc")
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    Ok(format!("{}\n{addrs}\n{routes}", links.join("\n")))
}

fn no_router_files(h: &Host) -> Result<()> {
    for f in ["weft.pid", "control.sock"] {
        ensure!(
            !h.run_dir().join(f).exists(),
            "{f} exists after a refused launch"
        );
    }
    ensure!(
        !h.state_dir().join("ipam.json").exists(),
        "IPAM state made by a refused launch"
    );
    Ok(())
}

/// `weft launch` fails saying all of `words`, and the host's links, addresses, routes and
/// weft's files are as before; then the link `weave` is removed for the next case.
fn refused_without_change(h: &Host, words: &[&str]) -> Result<()> {
    let before = snapshot(h)?;
    let out = h.weft(&["launch"])?;
    ensure!(
        !out.success() && words.iter().all(|w| out.stderr.contains(w)),
        "launch should be refused saying {words:?}: {out}"
    );
    ensure!(
        snapshot(h)? == before,
        "the refused launch changed something"
    );
    no_router_files(h)?;
    h.exec(&["ip", "link", "del", "weave"])?.ok()?;
    Ok(())
}

#[test]
fn not_root_is_refused_and_changes_nothing() {
    run_test("noroot", |net| {
        let h = net.host(1)?;
        let before = snapshot(&h)?;
        // The binary must be reachable by nobody.
        let bin = net.dir().join("weft-copy");
        std::fs::copy(net.weft_bin()?, &bin)?;
        let as_nobody = || {
            weft_tests::Cmd::new("ip")
                .args(["netns", "exec", h.ns(), "setpriv", "--reuid=65534"])
                .args(["--regid=65534", "--clear-groups", "--inh-caps=-all"])
                .arg("--bounding-set=-all")
        };
        let out = as_nobody()
            .args(["env"])
            .arg(format!("WEFT_RUN_DIR={}", h.run_dir().display()))
            .arg(format!("WEFT_STATE_DIR={}", h.state_dir().display()))
            .arg(&bin)
            .arg("launch")
            .run()?;
        ensure!(
            out.status.and_then(|s| s.code()) == Some(1)
                && out.stderr.contains("must be run as 'root'")
                && out.stderr.contains("CAP_NET_ADMIN"),
            "launch as nobody: {out}"
        );
        ensure!(
            snapshot(&h)? == before,
            "a refused launch changed the network"
        );
        ensure!(
            std::fs::read_dir(h.run_dir())?.next().is_none(),
            "a refused launch wrote into the run directory"
        );
        // Read-only verbs do not need root (they say the router is not running instead).
        let out = as_nobody().arg(&bin).arg("version").run_ok()?;
        ensure!(out.stdout.starts_with("weave script "), "{out}");
        Ok(())
    });
}

#[test]
fn a_weave_link_that_is_not_weft_s_bridge_is_refused() {
    run_test("badbr", |net| {
        let h = net.host(1)?;
        // Not a bridge.
        h.exec(&[
            "ip",
            "link",
            "add",
            "weave",
            "type",
            "veth",
            "peer",
            "name",
            "weavepeer",
        ])?
        .ok()?;
        refused_without_change(&h, &["'weave'", "not a bridge", "veth"])?;

        // A bridge someone else made, with another MTU and an address.
        h.exec(&["ip", "link", "add", "weave", "type", "bridge"])?
            .ok()?;
        h.exec(&["ip", "link", "set", "weave", "mtu", "1500"])?
            .ok()?;
        h.exec(&["ip", "addr", "add", "198.51.100.7/24", "dev", "weave"])?
            .ok()?;
        refused_without_change(&h, &["did not make", "MTU 1500", "198.51.100.7/24"])?;

        // weft's own bridge (left by `stop`) is taken again.
        h.weft_ok(&["launch"])?;
        h.weft_ok(&["expose", "10.32.4.1/24"])?;
        h.weft_ok(&["stop"])?;
        h.weft_ok(&["launch"])?;
        h.weft_ok(&["stop"])?;
        Ok(())
    });
}

#[test]
fn default_range_overlapping_a_route_is_refused() {
    run_test("overlap", |net| {
        let h = net.host(1)?;
        h.exec(&["ip", "route", "add", "10.40.0.0/16", "dev", "ul0"])?
            .ok()?;
        let before = snapshot(&h)?;
        let out = h.weft(&["launch"])?;
        ensure!(
            !out.success()
                && out.stderr.contains(
                    "Default --ipalloc-range 10.32.0.0/12 overlaps with existing route on host"
                )
                && out.stderr.contains("10.40.0.0/16")
                && out.stderr.contains("--ipalloc-range CIDR"),
            "launch with an overlapping route: {out}"
        );
        ensure!(
            snapshot(&h)? == before,
            "the refused launch changed something"
        );
        no_router_files(&h)?;
        // Given explicitly, the same range only warns.
        let out = h.weft(&["launch", "--ipalloc-range", "10.32.0.0/12"])?;
        ensure!(
            out.success() && out.stderr.contains("WARNING: Specified --ipalloc-range"),
            "launch with an explicit overlapping range: {out}"
        );
        h.weft_ok(&["stop"])?;
        // Another range: no warning at all.
        let out = h.weft(&["launch", "--ipalloc-range", "10.96.0.0/12"])?;
        ensure!(out.success() && !out.stderr.contains("WARNING"), "{out}");
        h.weft_ok(&["stop"])?;
        Ok(())
    });
}

#[test]
fn a_failed_launch_prints_its_own_log_lines() {
    run_test("faillog", |net| {
        let h = net.host(1)?;
        // A port held by another program, until the child is killed.
        let busy = |port: u16| -> Result<std::process::Child> {
            let script = format!(
                "import socket, time\n\
                 s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
                 s.bind(('0.0.0.0', {port})); s.listen(1); open('{dir}/up{port}', 'w').close(); time.sleep(60)",
                dir = net.dir().display()
            );
            let child = std::process::Command::new("ip")
                .args(["netns", "exec", h.ns(), "python3", "-c", &script])
                .spawn()?;
            weft_tests::wait_until(
                "the port holder",
                std::time::Duration::from_secs(5),
                std::time::Duration::from_millis(20),
                || {
                    ensure!(net.dir().join(format!("up{port}")).exists(), "not yet");
                    Ok(())
                },
            )?;
            Ok(child)
        };
        // First failure: the control port is taken.
        let mut c1 = busy(6783)?;
        let out = h.weft(&["launch"])?;
        ensure!(
            !out.success()
                && out.stderr.contains("6783")
                && out.stderr.contains("log of this launch"),
            "launch with TCP 6783 taken: {out}"
        );
        let _ = c1.kill();
        let _ = c1.wait();
        // Second failure, another reason: its output names only its own.
        let mut c2 = busy(6784)?;
        let out = h.weft(&["launch"])?;
        ensure!(
            !out.success()
                && out.stderr.contains("HTTP API")
                && out.stderr.contains("log of this launch"),
            "launch with the API port taken: {out}"
        );
        ensure!(
            !out.stderr.contains("TCP 0.0.0.0:6783"),
            "the second failure shows the first run's lines: {out}"
        );
        let _ = c2.kill();
        let _ = c2.wait();
        // And with both free, it launches.
        h.weft_ok(&["launch"])?;
        h.weft_ok(&["stop"])?;
        Ok(())
    });
}
