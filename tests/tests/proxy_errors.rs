//! Integration tests (root, network namespaces, a real dockerd): the Docker API proxy under bad
//! input and failures, driven with the real docker CLI through the proxy socket.
//!
//! - a bad `WEAVE_CIDR` (a bare IP without prefix length, garbage, a subnet outside the
//!   allocation range): `docker run` exits non-zero saying what is wrong, and no container is
//!   left running with a weave interface;
//! - dockerd down: a call through the proxy fails saying the Docker daemon cannot be reached;
//!   once dockerd is back the proxy serves again (calls, joining, releasing on removal);
//! - weft killed and launched again: running containers keep their address, the address of one
//!   removed meanwhile is free again;
//! - clients that vanish mid-stream (`logs -f`, `events`, a busy `exec -i`) disturb no one else:
//!   a concurrent `logs -f` keeps receiving, `ps`, `exec` and `run` keep working.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use weft_tests::docker::{Dockerd, IMAGE, docker_cmd, docker_via, ethwe_cidrs, launch_proxy};
use weft_tests::{Host, Output, TestNet, run_test, wait_until};

const CIDR_ENV: &str = "WEAVE_CIDR=net:10.32.1.0/24";

/// One host with dockerd and weft (router + proxy); the dockerd drops first.
struct Single {
    dockerd: Dockerd,
    host: Host,
    sock: PathBuf,
}

fn single(net: &TestNet) -> Result<Single> {
    let host = net.host(1)?;
    let dockerd = Dockerd::start(&host)?;
    let sock = launch_proxy(&host, &dockerd, &[], &[])?;
    Ok(Single {
        dockerd,
        host,
        sock,
    })
}

impl Single {
    fn docker(&self, args: &[&str]) -> Result<Output> {
        docker_via(&self.sock, args)
    }

    fn docker_ok(&self, args: &[&str]) -> Result<String> {
        Ok(self.docker(args)?.ok()?.stdout.trim().to_owned())
    }

    /// Fails if any container is running, or if a stopped one has an `ethwe` or an address in
    /// IPAM.
    fn nothing_left_running(&self, case: &str) -> Result<()> {
        let running = self.docker_ok(&["ps", "-q"])?;
        ensure!(
            running.is_empty(),
            "{case}: containers left running: {running}"
        );
        for id in self.docker_ok(&["ps", "-aq"])?.split_whitespace() {
            // A created or exited container: it must not hold an address.
            let owned = self.host.weft_ok(&["ps"])?;
            ensure!(
                !owned.contains(id),
                "{case}: `weft ps` lists the failed container {id}:\n{owned}"
            );
        }
        Ok(())
    }
}

#[test]
fn bad_weave_cidr_fails_the_run_and_leaves_nothing_running() {
    run_test("pxbad", |net| {
        let s = single(net)?;
        // (WEAVE_CIDR, words the error must contain)
        let cases: [(&str, &[&str]); 3] = [
            ("10.32.1.5", &["WEAVE_CIDR", "10.32.1.5", "prefix length"]),
            ("bogus!", &["WEAVE_CIDR", "bogus!"]),
            (
                "net:10.99.0.0/24",
                &["10.99.0.0/24", "outside the allocation range"],
            ),
        ];
        for (value, words) in cases {
            let env = format!("WEAVE_CIDR={value}");
            let out = s.docker(&["run", "-d", "-e", &env, IMAGE, "sleep", "300"])?;
            ensure!(!out.success(), "docker run with {env} succeeded: {out}");
            for w in words {
                ensure!(
                    out.stderr.contains(w),
                    "docker run with {env}: the error does not say {w:?}: {out}"
                );
            }
            s.nothing_left_running(&env)?;
        }
        // The proxy still joins good requests afterwards.
        s.docker_ok(&[
            "run", "-d", "--name", "good", "-e", CIDR_ENV, IMAGE, "sleep", "300",
        ])?;
        let cidrs = ethwe_cidrs(&s.sock, "good")?;
        ensure!(
            cidrs.len() == 1 && cidrs[0].starts_with("10.32.1."),
            "good container has {cidrs:?}"
        );
        Ok(())
    });
}

#[test]
fn dockerd_down_is_reported_and_the_proxy_serves_once_it_is_back() {
    run_test("pxdown", |net| {
        let mut s = single(net)?;
        s.docker_ok(&["ps"])?;
        s.dockerd.stop()?;
        let upstream = s.dockerd.socket().display().to_string();
        for args in [
            &["ps"][..],
            &["run", "--rm", "-e", CIDR_ENV, IMAGE, "true"][..],
        ] {
            let out = s.docker(args)?;
            ensure!(
                !out.success(),
                "docker {args:?} with dockerd down succeeded: {out}"
            );
            let msg = out.stderr.to_lowercase();
            ensure!(
                msg.contains(&upstream)
                    && msg.contains("docker daemon")
                    && (msg.contains("cannot connect") || msg.contains("cannot be reached")),
                "docker {args:?} with dockerd down: the error does not say that the Docker \
                 daemon at {upstream} cannot be reached: {out}"
            );
        }
        // The router and the proxy are still there.
        s.host.weft_ok(&["status"])?;

        s.dockerd.restart()?;
        wait_until(
            "docker ps through the proxy to work again",
            Duration::from_secs(20),
            Duration::from_millis(100),
            || s.docker_ok(&["ps"]),
        )?;
        // Joining works, and so does giving the address back on removal (the proxy follows
        // the new daemon's events).
        let id = s.docker_ok(&[
            "run", "-d", "--name", "after", "-e", CIDR_ENV, IMAGE, "sleep", "300",
        ])?;
        let cidrs = ethwe_cidrs(&s.sock, "after")?;
        ensure!(
            cidrs.len() == 1 && cidrs[0].starts_with("10.32.1."),
            "container started after the dockerd restart has {cidrs:?}"
        );
        let ps = s.host.weft_ok(&["ps"])?;
        ensure!(
            ps.contains(&id[..12]),
            "`weft ps` lacks {}:\n{ps}",
            &id[..12]
        );
        s.docker_ok(&["rm", "-f", "after"])?;
        wait_until(
            "the removed container to leave `weft ps`",
            Duration::from_secs(10),
            Duration::from_millis(100),
            || {
                let ps = s.host.weft_ok(&["ps"])?;
                ensure!(!ps.contains(&id[..12]), "`weft ps` still lists it:\n{ps}");
                Ok(())
            },
        )?;
        wait_until(
            "the next container to get the freed address",
            Duration::from_secs(10),
            Duration::from_millis(200),
            || {
                let out = s.docker_ok(&[
                    "run", "--rm", "-e", CIDR_ENV, IMAGE, "ip", "-4", "addr", "show", "dev",
                    "ethwe",
                ])?;
                let got = weft_tests::docker::inet_cidrs(&out);
                ensure!(
                    got == cidrs,
                    "it got {got:?}, the removed one had {cidrs:?}"
                );
                Ok(())
            },
        )?;
        Ok(())
    });
}

#[test]
fn weft_killed_and_relaunched_reattaches_and_releases_what_was_removed() {
    run_test("pxrel", |net| {
        let s = single(net)?;
        let gone = s.docker_ok(&["run", "-d", "-e", CIDR_ENV, IMAGE, "sleep", "300"])?;
        let gone_cidrs = ethwe_cidrs(&s.sock, &gone)?;
        let stopped = s.docker_ok(&["run", "-d", "-e", CIDR_ENV, IMAGE, "sleep", "300"])?;
        let kept = s.docker_ok(&[
            "run", "-d", "--name", "kept", "-e", CIDR_ENV, IMAGE, "sleep", "300",
        ])?;
        let kept_cidrs = ethwe_cidrs(&s.sock, "kept")?;
        ensure!(
            gone_cidrs.len() == 1 && kept_cidrs.len() == 1 && gone_cidrs != kept_cidrs,
            "addresses before the kill: {gone_cidrs:?} and {kept_cidrs:?}"
        );

        // weft dies (router and proxy); meanwhile a container is removed behind its back.
        s.host.kill_router()?;
        s.dockerd.docker_ok(&["rm", "-f", &gone])?;
        // ... and another one stops (its `die` is never seen: no 30 s hold applies).
        s.dockerd.docker_ok(&["stop", "-t", "0", &stopped])?;
        let sock = launch_proxy(&s.host, &s.dockerd, &[], &[])?;
        ensure!(sock == s.sock, "the proxy moved to {}", sock.display());

        // The running container is still on the network with its address ...
        wait_until(
            "`weft ps` to list the running container again",
            Duration::from_secs(20),
            Duration::from_millis(100),
            || {
                let ps = s.host.weft_ok(&["ps"])?;
                let line = ps
                    .lines()
                    .find(|l| l.starts_with(&kept[..12]))
                    .with_context(|| format!("no line for {}:\n{ps}", &kept[..12]))?;
                ensure!(line.contains(&kept_cidrs[0]), "{line}");
                Ok(())
            },
        )?;
        ensure!(
            ethwe_cidrs(&s.sock, "kept")? == kept_cidrs,
            "kept's ethwe changed over the relaunch"
        );
        // ... and the removed one's address is free again: the next container gets it.
        wait_until(
            "a new container to get the removed one's address",
            Duration::from_secs(10),
            Duration::from_millis(200),
            || {
                let out = s.docker_ok(&[
                    "run", "--rm", "-e", CIDR_ENV, IMAGE, "ip", "-4", "addr", "show", "dev",
                    "ethwe",
                ])?;
                let got = weft_tests::docker::inet_cidrs(&out);
                ensure!(
                    got == gone_cidrs,
                    "it got {got:?}, the removed one had {gone_cidrs:?}"
                );
                Ok(())
            },
        )?;
        // The stopped one holds no address any more; the running one still does.
        let get = "import urllib.request as u; print(u.urlopen('http://127.0.0.1:6784/ip').read().decode())";
        let owned = s.host.exec(&["python3", "-c", get])?.ok()?.stdout;
        ensure!(
            !owned.contains(stopped.as_str()),
            "the container stopped while weft was down still holds an address: {owned}"
        );
        ensure!(
            owned.contains(kept.as_str()),
            "the running one lost its address: {owned}"
        );
        Ok(())
    });
}

/// `docker ARGS` through `sock` in the background, stdout and stderr into files under `dir`.
fn spawn(
    sock: &Path,
    args: &[&str],
    dir: &Path,
    tag: &str,
    stdin: Option<&Path>,
) -> Result<(Child, PathBuf)> {
    let out = dir.join(format!("{tag}.out"));
    let mut c = docker_cmd(sock, args);
    if let Some(p) = stdin {
        c = c.stdin_file(p);
    }
    let child = c.spawn_to(&out, &dir.join(format!("{tag}.err")))?;
    Ok((child, out))
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len())
}

fn count_lines(p: &Path) -> usize {
    std::fs::read_to_string(p).map_or(0, |t| t.lines().count())
}

/// Kills and reaps our own child.
fn stop_child(c: &mut Child) {
    let _ = c.kill();
    let _ = c.wait();
}

#[test]
fn clients_dropping_mid_stream_disturb_no_one() {
    run_test("pxdrop", |net| {
        let s = single(net)?;
        let dir = net.dir();
        s.docker_ok(&[
            "run",
            "-d",
            "--name",
            "chatty",
            "-e",
            CIDR_ENV,
            IMAGE,
            "sh",
            "-c",
            "i=0; while true; do echo line-$i; i=$((i+1)); usleep 50000; done",
        ])?;
        let mut children: Vec<Child> = Vec::new();
        let res = (|| {
            let (keeper, keeper_out) =
                spawn(&s.sock, &["logs", "-f", "chatty"], dir, "keeper", None)?;
            children.push(keeper);
            let (quitter, quitter_out) =
                spawn(&s.sock, &["logs", "-f", "chatty"], dir, "quitter", None)?;
            children.push(quitter);
            let (events, _) = spawn(&s.sock, &["events"], dir, "events", None)?;
            children.push(events);
            // A hijacked, busy, two-way stream: zeros in, zeros out.
            let (pump, pump_out) = spawn(
                &s.sock,
                &["exec", "-i", "chatty", "cat"],
                dir,
                "pump",
                Some(Path::new("/dev/zero")),
            )?;
            children.push(pump);
            for (p, what) in [(&keeper_out, "keeper"), (&quitter_out, "quitter")] {
                wait_until(
                    &format!("logs -f ({what}) to receive lines"),
                    Duration::from_secs(20),
                    Duration::from_millis(50),
                    || {
                        if count_lines(p) >= 3 {
                            Ok(())
                        } else {
                            bail!("{} lines", count_lines(p))
                        }
                    },
                )?;
            }
            wait_until(
                "exec -i cat to echo 4 MiB",
                Duration::from_secs(30),
                Duration::from_millis(20),
                || {
                    if file_len(&pump_out) >= 4 << 20 {
                        Ok(())
                    } else {
                        bail!("{} bytes", file_len(&pump_out))
                    }
                },
            )?;
            // Drop three of the four clients mid-stream (SIGKILL: no goodbye).
            for c in children.iter_mut().skip(1) {
                stop_child(c);
            }
            // The remaining follower keeps receiving new lines.
            let base = count_lines(&keeper_out);
            wait_until(
                "the remaining logs -f to keep receiving",
                Duration::from_secs(20),
                Duration::from_millis(50),
                || {
                    let n = count_lines(&keeper_out);
                    if n >= base + 10 {
                        Ok(())
                    } else {
                        bail!("{n} lines (had {base})")
                    }
                },
            )?;
            ensure!(
                children[0].try_wait()?.is_none(),
                "the remaining logs -f exited"
            );
            // Everything else still works.
            let ps = s.docker_ok(&["ps", "--format", "{{.Names}}"])?;
            ensure!(
                ps.lines().any(|l| l == "chatty"),
                "docker ps printed {ps:?}"
            );
            let echo = s.docker_ok(&["exec", "chatty", "echo", "still-here"])?;
            ensure!(echo == "still-here", "exec printed {echo:?}");
            let out = s.docker_ok(&[
                "run", "--rm", "-e", CIDR_ENV, IMAGE, "ip", "-4", "addr", "show", "dev", "ethwe",
            ])?;
            ensure!(
                out.contains("inet 10.32.1."),
                "a new container got no address: {out}"
            );
            let logs = s.docker_ok(&["logs", "--tail", "1", "chatty"])?;
            ensure!(
                logs.starts_with("line-"),
                "docker logs --tail 1 printed {logs:?}"
            );
            Ok(())
        })();
        for c in &mut children {
            stop_child(c);
        }
        res.context("with clients dropping mid-stream")
    });
}
