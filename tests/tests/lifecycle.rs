//! Integration tests (root, network namespaces, a real dockerd): addresses over a container's
//! life, as Weave users rely on it.
//!
//! - a stopped container's address is held for its restart, but a container that claims it
//!   explicitly (`WEAVE_CIDR=ip:...`) gets it at once, and the stopped one loses it;
//! - containers attached with `weave attach <name>` (not through the proxy) are released on
//!   `docker rm`, keep their address over `docker restart` + `attach net:...`, lose it 30 s
//!   after they stopped, and, removed while weft was down, at the next launch;
//! - IPAM requests cross a peer launched with `--ipalloc-range ""` (IPAM off);
//! - a `docker run` with `WEAVE_CIDR` while no router runs waits for one a bounded time, then
//!   fails saying so (and succeeds when the router comes within the wait).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use weft_tests::docker::{Dockerd, IMAGE, docker_cmd, docker_via, ethwe_cidrs, launch_proxy};
use weft_tests::mesh::{block_underlay, launch_with};
use weft_tests::{Host, run_test, wait_until};

fn holds(h: &Host, id: &str) -> Result<Vec<String>> {
    Ok(h.ipam_owned()?
        .into_iter()
        .find(|(o, _)| o == id)
        .map(|(_, a)| a)
        .unwrap_or_default())
}

/// `weft ARGS` with `DOCKER_HOST` naming the test's dockerd.
fn weft_d(h: &Host, d: &Dockerd, args: &[&str]) -> Result<String> {
    Ok(h.weft_cmd(args)?
        .env("DOCKER_HOST", d.socket_url())
        .run_ok()?
        .stdout
        .trim()
        .to_owned())
}

#[test]
fn a_dead_containers_address_goes_to_an_explicit_claim_at_once() {
    run_test("lcclaim", |net| {
        let h = net.host(1)?;
        let d = Dockerd::start(&h)?;
        let sock = launch_proxy(&h, &d, &[], &[])?;
        let run = |name: &str, cidr: &str| -> Result<String> {
            Ok(docker_via(
                &sock,
                &[
                    "run",
                    "-d",
                    "--name",
                    name,
                    "-e",
                    &format!("WEAVE_CIDR={cidr}"),
                    IMAGE,
                    "sleep",
                    "3600",
                ],
            )?
            .ok()?
            .stdout
            .trim()
            .to_owned())
        };
        let id2 = run("c2", "net:10.32.1.0/24")?;
        let addr = ethwe_cidrs(&sock, "c2")?
            .first()
            .cloned()
            .context("c2 has no address")?;
        d.docker_ok(&["stop", "-t", "0", "c2"])?;
        // Held for c2's restart...
        ensure!(
            holds(&h, &id2)? == [addr.clone()],
            "the stopped c2 does not hold {addr}: {:?}",
            h.ipam_owned()?
        );
        // ... but c3 claiming it explicitly gets it at once.
        let started = Instant::now();
        let id3 = run("c3", &format!("ip:{addr}"))?;
        ensure!(
            started.elapsed() < Duration::from_secs(10),
            "the claim took {:?}",
            started.elapsed()
        );
        ensure!(
            ethwe_cidrs(&sock, "c3")? == [addr.clone()],
            "c3 did not get {addr}"
        );
        ensure!(
            holds(&h, &id3)? == [addr.clone()],
            "IPAM: {:?}",
            h.ipam_owned()?
        );
        ensure!(
            holds(&h, &id2)?.is_empty(),
            "the stopped c2 still holds an address: {:?}",
            h.ipam_owned()?
        );
        // c2 comes back with another address.
        d.docker_ok(&["start", "c2"])?;
        let again = wait_until(
            "c2 to be attached again",
            Duration::from_secs(20),
            Duration::from_millis(100),
            || {
                let c = ethwe_cidrs(&sock, "c2")?;
                c.first().cloned().context("no address yet")
            },
        )?;
        ensure!(again != addr, "c2 got {addr} back while c3 has it");
        drop(d);
        Ok(())
    });
}

#[test]
fn attached_containers_follow_dockers_lifecycle() {
    run_test("lcattach", |net| {
        let h = net.host(1)?;
        let d = Dockerd::start(&h)?;
        launch_proxy(&h, &d, &[], &[])?;
        let sleeper = |name: &str| -> Result<String> {
            Ok(
                d.docker_ok(&["run", "-d", "--name", name, IMAGE, "sleep", "3600"])?
                    .trim()
                    .to_owned(),
            )
        };
        // Removed: released at once.
        let a1 = sleeper("a1")?;
        let ip1 = weft_d(&h, &d, &["attach", "net:10.32.2.0/24", "a1"])?;
        ensure!(
            holds(&h, &a1)? == [format!("{ip1}/24")],
            "{:?}",
            h.ipam_owned()?
        );
        d.docker_ok(&["rm", "-f", "a1"])?;
        wait_until(
            "a1's address to be released after docker rm",
            Duration::from_secs(10),
            Duration::from_millis(100),
            || {
                ensure!(holds(&h, &a1)?.is_empty(), "{:?}", h.ipam_owned()?);
                Ok(())
            },
        )?;
        // Restarted, attached again: the same address.
        let a2 = sleeper("a2")?;
        let ip2 = weft_d(&h, &d, &["attach", "net:10.32.2.0/24", "a2"])?;
        d.docker_ok(&["restart", "-t", "0", "a2"])?;
        let again = weft_d(&h, &d, &["attach", "net:10.32.2.0/24", "a2"])?;
        ensure!(again == ip2, "a2 had {ip2}, after restart + attach {again}");
        ensure!(
            holds(&h, &a2)? == [format!("{ip2}/24")],
            "{:?}",
            h.ipam_owned()?
        );
        // Stopped for good: released after 30 s, not before.
        let a3 = sleeper("a3")?;
        weft_d(&h, &d, &["attach", "net:10.32.2.0/24", "a3"])?;
        d.docker_ok(&["stop", "-t", "0", "a3"])?;
        let stopped = Instant::now();
        std::thread::sleep(Duration::from_secs(5));
        ensure!(
            !holds(&h, &a3)?.is_empty(),
            "a3 lost its address 5 s after stopping"
        );
        wait_until(
            "a3's address to be released 30 s after it stopped",
            Duration::from_secs(45),
            Duration::from_millis(500),
            || {
                ensure!(holds(&h, &a3)?.is_empty(), "still held");
                Ok(())
            },
        )?;
        ensure!(
            stopped.elapsed() >= Duration::from_secs(28),
            "released after {:?}",
            stopped.elapsed()
        );
        // Removed while weft was down: released at the next launch; a running one is kept.
        let a4 = sleeper("a4")?;
        weft_d(&h, &d, &["attach", "net:10.32.2.0/24", "a4"])?;
        let owned_before = h.ipam_owned()?;
        h.weft_ok(&["stop"])?;
        d.docker_ok(&["rm", "-f", "a4"])?;
        launch_proxy(&h, &d, &[], &[])?;
        wait_until(
            "a4 (removed while weft was down) to be released",
            Duration::from_secs(15),
            Duration::from_millis(200),
            || {
                ensure!(holds(&h, &a4)?.is_empty(), "{:?}", h.ipam_owned()?);
                Ok(())
            },
        )?;
        ensure!(
            holds(&h, &a2)? == [format!("{ip2}/24")],
            "the running a2 lost its address over the relaunch (before: {owned_before:?}, \
             after: {:?})",
            h.ipam_owned()?
        );
        drop(d);
        Ok(())
    });
}

#[test]
fn ipam_requests_cross_a_peer_without_ipam() {
    run_test("lcrelay", |net| {
        let (a, r, b) = (net.host(1)?, net.host(2)?, net.host(3)?);
        block_underlay(&a, &b)?;
        let name_a = "02:00:00:00:0a:01";
        let seed = format!("--ipalloc-init=seed={name_a}");
        launch_with(&a, &["--name", name_a, &seed, "--proxy=false"], &[&r])?;
        launch_with(&r, &["--ipalloc-range=", "--proxy=false"], &[&a, &b])?;
        launch_with(
            &b,
            &["--name", "02:00:00:00:0b:01", &seed, "--proxy=false"],
            &[&r],
        )?;
        weft_tests::mesh::wait_established_with(&a, &r, Duration::from_secs(30))?;
        weft_tests::mesh::wait_established_with(&b, &r, Duration::from_secs(30))?;
        // All of the range is A's: B's allocation needs A to donate, through R.
        let started = Instant::now();
        let cb = b.container_alloc("cb", &["net:default"])?;
        let o = cb.ip().octets();
        ensure!(
            o[0] == 10 && (32..48).contains(&o[1]),
            "B allocated {}, outside 10.32.0.0/12",
            cb.ip()
        );
        let ca = a.container_alloc("ca", &["net:default"])?;
        ensure!(ca.ip() != cb.ip(), "A and B both have {}", ca.ip());
        // R has no IPAM of its own (its /ip API says so), but relayed without complaint.
        let ip_api = r
            .exec(&[
                "python3",
                "-c",
                "import urllib.request, urllib.error\ntry:\n    urllib.request.urlopen('http://127.0.0.1:6784/ip', timeout=5)\nexcept urllib.error.HTTPError as e:\n    print(e.code)",
            ])?
            .ok()?;
        ensure!(ip_api.stdout.trim() == "404", "R's GET /ip: {ip_api}");
        ensure!(
            !r.log().contains("IPAM message from"),
            "R refused IPAM messages:\n{}",
            r.log()
        );
        eprintln!("B's allocation through R took {:?}", started.elapsed());
        // The overlay works across R for the addresses IPAM handed out.
        ca.wait_ping(cb.ip(), Duration::from_secs(20))?;
        Ok(())
    });
}

#[test]
fn a_weave_cidr_run_waits_for_a_router_then_fails_clearly() {
    run_test("lcwait", |net| {
        let h = net.host(1)?;
        let d = Dockerd::start(&h)?;
        let sock = weft_tests::docker::proxy_socket(&h);
        h.weft_ok(&[
            "launch-proxy",
            "-H",
            &format!("unix://{}", sock.display()),
            "--docker-api",
            &d.socket_url(),
        ])?;
        let started = Instant::now();
        let out = docker_via(
            &sock,
            &[
                "run",
                "-d",
                "--name",
                "early",
                "-e",
                "WEAVE_CIDR=net:default",
                IMAGE,
                "sleep",
                "60",
            ],
        )?;
        let waited = started.elapsed();
        ensure!(
            !out.success() && out.stderr.contains("no weft router is running"),
            "docker run with no router: {out}"
        );
        ensure!(
            waited >= Duration::from_secs(15) && waited < Duration::from_secs(60),
            "it failed after {waited:?}, not after a bounded wait"
        );
        let running = d.docker_ok(&["ps", "-q", "--filter", "name=early"])?;
        ensure!(running.trim().is_empty(), "the failed container still runs");
        // A run that starts before the router and sees it come within the wait succeeds.
        let out_file = net.dir().join("late.out");
        let err_file = net.dir().join("late.err");
        let mut late = docker_cmd(
            &sock,
            &[
                "run",
                "-d",
                "--name",
                "late",
                "-e",
                "WEAVE_CIDR=net:10.32.6.0/24",
                IMAGE,
                "sleep",
                "60",
            ],
        )
        .spawn_to(&out_file, &err_file)?;
        std::thread::sleep(Duration::from_secs(3));
        h.weft_ok(&["launch-router"])?;
        let status = wait_until(
            "the waiting docker run to finish",
            Duration::from_secs(40),
            Duration::from_millis(100),
            || late.try_wait()?.context("running"),
        )?;
        if !status.success() {
            bail!(
                "docker run waiting for the router failed: {}",
                std::fs::read_to_string(&err_file).unwrap_or_default()
            );
        }
        let cidrs = ethwe_cidrs(&sock, "late")?;
        ensure!(
            cidrs.len() == 1 && cidrs[0].starts_with("10.32.6."),
            "late's ethwe: {cidrs:?}"
        );
        drop(d);
        Ok(())
    });
}
