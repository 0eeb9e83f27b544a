//! Integration tests (root, network namespaces): a local user who opens thousands of idle or
//! slow connections to the HTTP API cannot lock root out or exhaust the router. Root's
//! `weft status` and `weft attach` keep working during the flood, the router holds only a
//! bounded number of descriptors, idle and slow (slowloris) connections are closed, and the
//! router's memory is back below 64 MB afterwards. The Docker API proxy's listener is capped
//! and times idle connections out the same way.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use weft_tests::cmd::Cmd;
use weft_tests::local::{AS_NOBODY, flood_bin, open_fds, rss_kib};
use weft_tests::{Host, TestNet, run_test};

/// Starts `weft-conn-flood MODE 127.0.0.1:6784 COUNT SECS` as nobody in `h`'s namespace.
fn flood(
    net: &TestNet,
    h: &Host,
    mode: &str,
    count: usize,
    secs: u64,
) -> Result<(std::process::Child, PathBuf)> {
    let out = net.dir().join(format!("flood-{mode}.json"));
    let err = net.dir().join(format!("flood-{mode}.err"));
    let tool = flood_bin()?;
    let child = Cmd::new("ip")
        .args(["netns", "exec", h.ns()])
        .args(AS_NOBODY)
        .arg(tool)
        .args([
            mode,
            "127.0.0.1:6784",
            &count.to_string(),
            &secs.to_string(),
        ])
        .spawn_to(&out, &err)?;
    Ok((child, out))
}

/// Waits for a flood to end and returns its report.
fn report(mut child: std::process::Child, out: &PathBuf) -> Result<Value> {
    let status = child.wait()?;
    let text = std::fs::read_to_string(out)?;
    ensure!(status.success(), "flood tool failed ({status}): {text}");
    serde_json::from_str(text.trim()).with_context(|| format!("flood report {text:?}"))
}

#[test]
fn thousands_of_idle_connections_from_nobody_do_not_lock_root_out() {
    run_test("apilim", |net| {
        let h = net.host(1)?;
        h.launch_args(&["--nickname", "host1"])?;
        let pid = h.router_pid()?;
        let rss_before = rss_kib(pid)?;
        let fds_before = open_fds(pid)?;
        let (child, out) = flood(net, &h, "idle", 2000, 25)?;
        std::thread::sleep(Duration::from_secs(4));
        // Root is served while nobody holds its connections open.
        let started = Instant::now();
        let st = h.weft_ok(&["status"])?;
        ensure!(st.contains("Version"), "{st}");
        let status_secs = started.elapsed().as_secs_f64();
        let c1 = h.container_alloc("c1", &["net:default"])?;
        let fds_during = open_fds(pid)?;
        let rss_during = rss_kib(pid)?;
        eprintln!(
            "during the flood: weft status in {status_secs:.2} s, c1 attached as {}, router \
             fds {fds_before} -> {fds_during}, RSS {rss_before} -> {rss_during} KiB",
            c1.ip()
        );
        ensure!(status_secs < 5.0, "weft status took {status_secs:.1} s");
        ensure!(
            fds_during < fds_before + 400,
            "the router holds {fds_during} descriptors during the flood (from {fds_before})"
        );
        let idle = report(child, &out)?;
        eprintln!("idle flood: {idle}");
        ensure!(
            idle["opened"].as_u64() >= Some(1500),
            "the flood did not get going: {idle}"
        );
        ensure!(
            idle["open_at_end"] == 0,
            "idle connections still open after 25 s: {idle}"
        );
        // Slowloris: request heads that trickle in a byte a second are cut off too.
        let (child, out) = flood(net, &h, "slowloris", 1000, 25)?;
        let slow = report(child, &out)?;
        eprintln!("slowloris flood: {slow}");
        ensure!(slow["opened"].as_u64() >= Some(500), "{slow}");
        ensure!(
            slow["open_at_end"] == 0,
            "slowloris connections still open after 25 s: {slow}"
        );
        // Everything is given back.
        std::thread::sleep(Duration::from_secs(2));
        let rss_after = rss_kib(pid)?;
        let fds_after = open_fds(pid)?;
        eprintln!("after: RSS {rss_after} KiB, fds {fds_after}");
        ensure!(
            rss_after < 64 * 1024,
            "router RSS {rss_after} KiB after the flood"
        );
        ensure!(
            fds_after <= fds_before + 8,
            "{fds_after} fds after, {fds_before} before"
        );
        let c2 = h.container_alloc("c2", &["net:default"])?;
        ensure!(c2.ip() != c1.ip());
        ensure!(h.weft_ok(&["status"])?.contains("Version"));
        Ok(())
    });
}

/// Whether the other end closed this unix connection.
fn unix_closed(s: &std::os::unix::net::UnixStream) -> bool {
    use std::io::Read as _;
    let mut buf = [0u8; 64];
    let mut r = s;
    s.set_nonblocking(true).is_ok()
        && match r.read(&mut buf) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        }
}

#[test]
fn the_proxy_listener_is_capped_and_times_idle_connections_out() {
    run_test("pxlim", |net| {
        let h = net.host(1)?;
        let sock = net.dir().join("weave.sock");
        let docker = net.dir().join("no-docker.sock");
        let listen = format!("unix://{}", sock.display());
        let upstream = format!("unix://{}", docker.display());
        h.launch_args(&[
            "--nickname",
            "host1",
            "--proxy",
            "-H",
            &listen,
            "--docker-api",
            &upstream,
        ])?;
        let pid = h.router_pid()?;
        let fds_before = open_fds(pid)?;
        let conns: Vec<_> = (0..1100)
            .map(|_| std::os::unix::net::UnixStream::connect(&sock))
            .collect::<std::io::Result<_>>()
            .context("connecting to the proxy")?;
        std::thread::sleep(Duration::from_secs(2));
        let fds_during = open_fds(pid)?;
        let refused = conns.iter().filter(|c| unix_closed(c)).count();
        eprintln!(
            "proxy: {refused} of 1100 closed at once, router fds {fds_before} -> {fds_during}"
        );
        ensure!(
            refused >= 1100 - 1024,
            "only {refused} connections over the cap were closed"
        );
        ensure!(
            fds_during <= fds_before + 1024 + 16,
            "{fds_during} fds held"
        );
        std::thread::sleep(Duration::from_secs(32));
        let open = conns.iter().filter(|c| !unix_closed(c)).count();
        ensure!(
            open == 0,
            "{open} idle proxy connections still open after 34 s"
        );
        Ok(())
    });
}
