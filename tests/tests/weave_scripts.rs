//! Integration tests (root, network namespaces, a real dockerd): Weave-style scripts, run with
//! the `weave` name against weft.
//!
//! - `attach`, `detach` and `ps` by Docker container name and by id (Docker reached through
//!   `DOCKER_HOST`), with Weave's outputs: `attach` prints the addresses, `ps c1` prints
//!   `c1 MAC CIDR`, `ps` lists every attached container by Docker's short id, a
//!   `--net=container:c1` sharer included; the IPAM ident is the container's full id;
//!   `--rewrite-hosts --add-host`, `--no-multicast-route`, `--without-dns`; `detach
//!   net:SUBNET` releases that subnet's addresses; `docker restart` + `attach net:...` keeps the
//!   address.
//! - Weave 1.x verbs (`run`, `start`, `restart`, `launch-dns`, `stop-dns`, `launch-plugin` and
//!   `stop-plugin` (on a socket of the test's own), `proxy-env`) and 2.x ones (`version`,
//!   `prime`, `config`, `dns-args`, `docker-bridge-ip`, `env --restore`, `reset [--force]`)
//!   with Weave's outputs and exit codes;
//!   an unknown command is Weave's "Unknown weave command", never a parser's complaint.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use weft_tests::docker::{Dockerd, IMAGE, launch_proxy};
use weft_tests::{Host, Output, run_test, wait_until};

/// `weave ARGS` on the host, with `DOCKER_HOST` naming the test's dockerd.
fn weave(h: &Host, weave: &Path, d: &Dockerd, args: &[&str]) -> Result<Output> {
    h.weft_cmd_with(weave, args)?
        .env("DOCKER_HOST", d.socket_url())
        .run()
}

fn weave_ok(h: &Host, w: &Path, d: &Dockerd, args: &[&str]) -> Result<String> {
    let out = weave(h, w, d, args)?;
    ensure!(
        out.success(),
        "{out}\n--- weft log ---\n{}",
        weft_tests::cmd::tail(&h.log(), 20)
    );
    Ok(out.stdout.trim().to_owned())
}

/// `ip` inside a container (straight on dockerd).
fn in_ctr(d: &Dockerd, name: &str, args: &[&str]) -> Result<String> {
    let mut v = vec!["exec", name];
    v.extend_from_slice(args);
    Ok(d.docker_ok(&v)?.trim().to_owned())
}

fn mac_of(d: &Dockerd, name: &str) -> Result<String> {
    in_ctr(d, name, &["cat", "/sys/class/net/ethwe/address"])
}

fn sleeper(d: &Dockerd, name: &str, extra: &[&str]) -> Result<String> {
    let mut v = vec!["run", "-d", "--name", name];
    v.extend_from_slice(extra);
    v.extend_from_slice(&[IMAGE, "sleep", "3600"]);
    Ok(d.docker_ok(&v)?.trim().to_owned())
}

#[test]
fn attach_detach_and_ps_by_container_name_and_id() {
    run_test("scripts", |net| {
        let h = net.host(1)?;
        let d = Dockerd::start(&h)?;
        launch_proxy(&h, &d, &[], &[])?;
        let w = net.dir().join("weave");
        std::os::unix::fs::symlink(net.weft_bin()?, &w)?;

        // Containers made straight on dockerd, attached by name and by (short) id.
        sleeper(&d, "c1", &[])?;
        let id2 = sleeper(&d, "c2", &[])?;
        let ip1 = weave_ok(&h, &w, &d, &["attach", "net:10.32.2.0/24", "c1"])?;
        ensure!(
            ip1 == "10.32.2.1",
            "weave attach net:10.32.2.0/24 c1 printed {ip1:?}"
        );
        let ip2 = weave_ok(&h, &w, &d, &["attach", "10.32.2.50/24", &id2[..12]])?;
        ensure!(ip2 == "10.32.2.50", "weave attach by id printed {ip2:?}");
        let shown = in_ctr(
            &d,
            "c1",
            &["ip", "-4", "-o", "addr", "show", "dev", "ethwe"],
        )?;
        ensure!(shown.contains("10.32.2.1/24"), "c1's ethwe: {shown}");
        // A container sharing c1's network namespace.
        let share = sleeper(&d, "c1share", &["--net=container:c1"])?;
        let id1 = d
            .docker_ok(&["inspect", "-f", "{{.Id}}", "c1"])?
            .trim()
            .to_owned();

        // IPAM owners are the containers' full ids.
        let owned = h.ipam_owned()?;
        for (id, ip) in [(&id1, "10.32.2.1/24"), (&id2, "10.32.2.50/24")] {
            ensure!(
                owned
                    .iter()
                    .any(|(o, a)| o == id && a.iter().any(|x| x == ip)),
                "GET /ip does not list {id} with {ip}: {owned:?}"
            );
        }

        // ps by name, and ps of everything.
        let mac1 = mac_of(&d, "c1")?;
        let one = weave_ok(&h, &w, &d, &["ps", "c1"])?;
        ensure!(
            one == format!("c1 {mac1} 10.32.2.1/24"),
            "weave ps c1 printed {one:?}"
        );
        let all = weave_ok(&h, &w, &d, &["ps"])?;
        let want = [
            format!("{} {mac1} 10.32.2.1/24", &id1[..12]),
            format!("{} {mac1} 10.32.2.1/24", &share[..12]),
            format!("{} {} 10.32.2.50/24", &id2[..12], mac_of(&d, "c2")?),
        ];
        for line in &want {
            ensure!(
                all.lines().any(|l| l == line),
                "weave ps lacks {line:?}:\n{all}"
            );
        }
        ensure!(
            all.lines()
                .next()
                .is_some_and(|l| l.starts_with("weave:expose ")),
            "weave ps does not start with the weave:expose line:\n{all}"
        );

        // (The sharer would keep c1's old namespace, and its ethwe, across the restart below.)
        d.docker_ok(&["rm", "-f", "c1share"])?;

        // attach options.
        sleeper(&d, "c3", &["--hostname", "db3"])?;
        let ip3 = weave_ok(
            &h,
            &w,
            &d,
            &[
                "attach",
                "net:10.32.2.0/24",
                "--rewrite-hosts",
                "--add-host",
                "master:192.0.2.99",
                "--without-dns",
                "c3",
            ],
        )?;
        let hosts = in_ctr(&d, "c3", &["cat", "/etc/hosts"])?;
        ensure!(
            hosts
                .lines()
                .any(|l| l.starts_with(&ip3) && l.contains("db3"))
                && hosts.lines().any(|l| l == "192.0.2.99\tmaster"),
            "c3's /etc/hosts after --rewrite-hosts --add-host:\n{hosts}"
        );
        sleeper(&d, "c4", &[])?;
        weave_ok(
            &h,
            &w,
            &d,
            &["attach", "--no-multicast-route", "net:10.32.2.0/24", "c4"],
        )?;
        let routes = in_ctr(&d, "c4", &["ip", "route"])?;
        ensure!(
            !routes.contains("224.0.0.0/4") && routes.contains("10.32.2.0/24 dev ethwe"),
            "c4's routes with --no-multicast-route:\n{routes}"
        );
        let routes = in_ctr(&d, "c1", &["ip", "route"])?;
        ensure!(
            routes.contains("224.0.0.0/4 dev ethwe"),
            "c1's routes:\n{routes}"
        );

        // docker restart, then attach again: the same address (its ident is its id).
        d.docker_ok(&["restart", "-t", "0", "c1"])?;
        let again = weave_ok(&h, &w, &d, &["attach", "net:10.32.2.0/24", "c1"])?;
        ensure!(
            again == ip1,
            "after docker restart c1 got {again}, had {ip1}"
        );

        // detach net:SUBNET by name, detach by full id.
        let gone = weave_ok(&h, &w, &d, &["detach", "net:10.32.2.0/24", "c1"])?;
        ensure!(
            gone == ip1,
            "weave detach net:10.32.2.0/24 c1 printed {gone:?}"
        );
        let links = in_ctr(&d, "c1", &["ip", "-o", "link"])?;
        ensure!(!links.contains("ethwe"), "c1 still has ethwe:\n{links}");
        let gone = weave_ok(&h, &w, &d, &["detach", &id2])?;
        ensure!(gone == ip2, "weave detach ID printed {gone:?}");
        let owned = h.ipam_owned()?;
        ensure!(
            !owned.iter().any(|(o, _)| o == &id1 || o == &id2),
            "detached containers still hold addresses: {owned:?}"
        );
        // The freed address is handed out again.
        sleeper(&d, "c5", &[])?;
        let ip5 = weave_ok(&h, &w, &d, &["attach", "net:10.32.2.0/24", "c5"])?;
        ensure!(ip5 == ip1, "c5 got {ip5}, the freed {ip1} was expected");
        // A name that is nothing at all.
        let out = weave(&h, &w, &d, &["attach", "nosuchcontainer"])?;
        ensure!(
            !out.success() && out.stderr.contains("No such container: nosuchcontainer"),
            "attach of a missing container: {out}"
        );
        drop(d);
        Ok(())
    });
}

#[test]
fn weave_1x_and_2x_verbs() {
    run_test("verbs", |net| {
        let h = net.host(1)?;
        let d = Dockerd::start(&h)?;
        let sock = launch_proxy(&h, &d, &[], &[])?;
        let w = net.dir().join("weave");
        std::os::unix::fs::symlink(net.weft_bin()?, &w)?;

        // An unknown command: Weave's message and exit 1.
        let out = weave(&h, &w, &d, &["frobnicate"])?;
        ensure!(
            out.status.and_then(|s| s.code()) == Some(1)
                && out.stderr.contains("Unknown weave command 'frobnicate'")
                && !out.stderr.contains("unrecognized"),
            "unknown command: {out}"
        );
        // version: Weave's two lines.
        let v = weave_ok(&h, &w, &d, &["version"])?;
        let lines: Vec<&str> = v.lines().collect();
        ensure!(
            lines.len() == 2
                && lines[0].starts_with("weave script ")
                && lines[1].starts_with("weave ")
                && !lines[1].starts_with("weave script"),
            "weave version printed {v:?}"
        );
        // prime returns once the ring exists.
        let out = weave(&h, &w, &d, &["prime"])?;
        ensure!(out.success(), "weave prime: {out}");
        // config / env / proxy-env / env --restore.
        let want = format!("unix://{}", sock.display());
        let cfg = weave_ok(&h, &w, &d, &["config"])?;
        ensure!(cfg == format!("-H={want}"), "weave config printed {cfg:?}");
        let env = weave_ok(&h, &w, &d, &["proxy-env"])?;
        ensure!(
            env == format!(
                "export DOCKER_HOST={want} ORIG_DOCKER_HOST={}",
                d.socket_url()
            ),
            "weave proxy-env printed {env:?}"
        );
        let out = h.weft_cmd_with(&w, &["env", "--restore"])?.run()?;
        ensure!(
            out.status.and_then(|s| s.code()) == Some(1)
                && out.stderr.contains("Nothing to restore"),
            "env --restore without ORIG_DOCKER_HOST: {out}"
        );
        let out = h
            .weft_cmd_with(&w, &["env", "--restore"])?
            .env("ORIG_DOCKER_HOST", "unix:///var/run/docker.sock")
            .run_ok()?;
        ensure!(
            out.stdout.trim() == "DOCKER_HOST=unix:///var/run/docker.sock",
            "{out}"
        );
        // dns-args: weaveDNS runs, but there is no Docker bridge and nothing exposed yet, so no
        // address a container could reach: it says so (and what to do) instead of printing a
        // `--dns=` that leads nowhere.
        let out = weave(&h, &w, &d, &["dns-args"])?;
        ensure!(
            !out.success() && out.stdout.is_empty() && out.stderr.contains("weft expose"),
            "weave dns-args without a reachable DNS address: {out}"
        );
        // docker-bridge-ip: the Docker bridge's address, no newline.
        h.exec(&["ip", "link", "add", "docker0", "type", "bridge"])?
            .ok()?;
        h.exec(&["ip", "addr", "add", "198.51.100.1/24", "dev", "docker0"])?
            .ok()?;
        let out = weave(&h, &w, &d, &["docker-bridge-ip"])?;
        ensure!(
            out.success() && out.stdout == "198.51.100.1",
            "docker-bridge-ip: {out}"
        );
        // ... which is where weaveDNS listens now, as Weave's does: Weave's two options.
        let out = wait_until(
            "dns-args to name the Docker bridge",
            Duration::from_secs(10),
            Duration::from_millis(200),
            || {
                let out = weave(&h, &w, &d, &["dns-args"])?;
                ensure!(
                    out.success() && out.stdout == "--dns=198.51.100.1 --dns-search=weave.local.",
                    "{out}"
                );
                Ok(out)
            },
        )?;
        eprintln!("dns-args: {}", out.stdout);

        // 1.x: weaveDNS verbs say DNS is part of the router, exit 0.
        for verb in ["launch-dns", "stop-dns"] {
            let out = weave(&h, &w, &d, &[verb])?;
            ensure!(
                out.success() && out.stderr.contains("has been removed"),
                "{verb}: {out}"
            );
        }
        // launch-plugin starts the Docker network plugin next to the router, stop-plugin stops
        // it and removes its socket. Here on a socket of this test's own: the default, Docker's
        // /run/docker/plugins, is the machine's (so this dockerd cannot find the driver; the
        // network it makes is tested on private hosts, docker_plugin.rs).
        let sock = h.run_dir().join("plugins/weave.sock");
        let sock_text = sock.display().to_string();
        let out = weave_ok(
            &h,
            &w,
            &d,
            &[
                "launch-plugin",
                "--plugin-socket",
                &sock_text,
                "--no-restart",
            ],
        )?;
        ensure!(out == sock_text, "launch-plugin printed {out:?}");
        ensure!(sock.exists(), "no plugin socket at {sock_text}");
        weave_ok(&h, &w, &d, &["stop-plugin"])?;
        ensure!(!sock.exists(), "stop-plugin left {sock_text}");
        let out = weave(&h, &w, &d, &["stop-plugin"])?;
        ensure!(
            out.success() && out.stderr.contains("Plugin is not running."),
            "second stop-plugin: {out}"
        );
        // 1.x run / start / restart.
        let r1_has_its_address = |after: &str| -> Result<()> {
            let ip = in_ctr(
                &d,
                "r1",
                &["ip", "-4", "-o", "addr", "show", "dev", "ethwe"],
            )?;
            ensure!(
                ip.contains("10.32.3.1/24"),
                "r1's ethwe after {after}: {ip}"
            );
            Ok(())
        };
        let id = weave_ok(
            &h,
            &w,
            &d,
            &[
                "run",
                "net:10.32.3.0/24",
                "-e",
                "X=1",
                "--name",
                "r1",
                IMAGE,
                "sleep",
                "3600",
            ],
        )?;
        ensure!(id.len() == 64, "weave run printed {id:?}");
        r1_has_its_address("weave run")?;
        let env = in_ctr(&d, "r1", &["sh", "-c", "echo $WEAVE_CIDR $X"])?;
        ensure!(
            env == "none 1",
            "weave run's container environment: {env:?}"
        );
        let out = weave_ok(&h, &w, &d, &["restart", "r1"])?;
        ensure!(out == "r1", "weave restart printed {out:?}");
        r1_has_its_address("weave restart")?;
        d.docker_ok(&["stop", "-t", "0", "r1"])?;
        let out = weave_ok(&h, &w, &d, &["start", "net:10.32.3.0/24", "r1"])?;
        ensure!(out == "r1", "weave start printed {out:?}");
        r1_has_its_address("weave start")?;

        // reset: refused while stopped unless --force, which removes everything.
        weave_ok(&h, &w, &d, &["stop"])?;
        let out = weave(&h, &w, &d, &["reset"])?;
        ensure!(
            out.status.and_then(|s| s.code()) == Some(1)
                && out.stderr.contains("unable to remove from cluster")
                && out.stderr.contains("--force"),
            "reset while stopped: {out}"
        );
        weave_ok(&h, &w, &d, &["reset", "--force"])?;
        let links = h.exec(&["ip", "-o", "link"])?.ok()?.stdout;
        ensure!(
            !links.contains(" weave:"),
            "the bridge is still there after reset --force"
        );
        ensure!(
            !h.state_dir().join("ipam.json").exists(),
            "IPAM state is still there after reset --force"
        );
        wait_until(
            "the proxy socket to go",
            Duration::from_secs(5),
            Duration::from_millis(50),
            || {
                ensure!(!sock.exists(), "still there");
                Ok(())
            },
        )
        .context("reset")?;
        drop(d);
        Ok(())
    });
}
