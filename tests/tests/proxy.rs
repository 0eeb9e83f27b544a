//! Integration tests (root, network namespaces, a real dockerd per host): the Docker API proxy
//! on one host, driven with the real docker CLI (`/usr/bin/docker`) through the proxy socket.
//!
//! - the harness itself: a dockerd with a running container is gone without a trace (processes,
//!   mounts, directories, namespaces) after a test that panics;
//! - `docker run` joins a container to the weave network only when it asks (`WEAVE_CIDR`), and
//!   its entrypoint already sees `ethwe` with its address at its first instruction;
//!   `WEAVE_CIDR=none`, no `WEAVE_CIDR` under `--no-default-ipalloc` and `--net=host` are left
//!   alone; `weft ps`
//!   lists the container by short id with its address; `eval $(weft env)` points the docker
//!   client at the proxy and `weft env --restore` back; the proxy socket has dockerd's owner
//!   and mode;
//! - interactive and streaming calls pass through: `run -i` / `exec -i` with piped stdin,
//!   `run -it` / `exec -it` on a terminal, `logs -f` and `events` receive what happens after they
//!   started;
//! - big bodies: `docker cp` both ways keeps the content, and `cp` to stdout, `export` and
//!   `import` give the same bytes and layers through the proxy as straight from dockerd;
//! - the proxy's flags from `WEAVEPROXY_OPTIONS`, several `-H` sockets, all in `weft status`.

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use weft_tests::docker::{
    self, DOCKER, Dockerd, IMAGE, docker_cmd, docker_to_file, docker_via, ethwe_cidrs, inet_cidrs,
    launch_proxy, link_names, run_in_pty, sha256_file,
};
use weft_tests::{Cmd, Host, TestNet, run_test, wait_until};

const CIDR_ENV: &str = "WEAVE_CIDR=net:10.32.1.0/24";

/// True if `cidr` (`a.b.c.d/len`) is a host address in 10.32.1.0/24 with prefix length 24.
fn in_subnet(cidr: &str) -> bool {
    let Some((ip, len)) = cidr.split_once('/') else {
        return false;
    };
    let Ok(ip) = ip.parse::<std::net::Ipv4Addr>() else {
        return false;
    };
    let o = ip.octets();
    len == "24" && o[..3] == [10, 32, 1] && o[3] != 0 && o[3] != 255
}

/// One host with dockerd and weft (router + proxy). Field order = drop order: the dockerd goes
/// first, before the test net.
struct Single {
    dockerd: Dockerd,
    host: Host,
    sock: std::path::PathBuf,
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
    /// `docker ARGS` through the proxy.
    fn docker(&self, args: &[&str]) -> Result<weft_tests::Output> {
        docker_via(&self.sock, args)
    }

    /// `docker ARGS` through the proxy; fails unless it exits 0; stdout trimmed.
    fn docker_ok(&self, args: &[&str]) -> Result<String> {
        Ok(self.docker(args)?.ok()?.stdout.trim().to_owned())
    }
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let line = String::from_utf8_lossy(&raw).replace('\0', " ");
        if line.contains(needle) {
            found.push(format!("{pid}: {line}"));
        }
    }
    found
}

#[test]
fn dockerd_harness_cleans_up_after_a_panicking_test() {
    /// What the test saw before it panicked.
    #[derive(Clone)]
    struct Seen {
        net_dir: String,
        dockerd_dir: String,
        prefix: String,
        container_pid: u32,
    }
    let seen: Arc<Mutex<Option<Seen>>> = Arc::new(Mutex::new(None));
    let seen2 = seen.clone();
    let res = std::panic::catch_unwind(move || {
        run_test("dkh", |net| {
            let h = net.host(1)?;
            let d = Dockerd::start(&h)?;
            let id = d.docker_ok(&["run", "-d", IMAGE, "sleep", "300"])?;
            let id = id.trim();
            let pid: u32 = d
                .docker_ok(&["inspect", "-f", "{{.State.Pid}}", id])?
                .trim()
                .parse()?;
            ensure!(
                pid > 0 && weft_tests::cmd::pid_alive(pid),
                "container pid {pid}"
            );
            // The container runs busybox from the image and sees only its own loopback.
            let links = d.docker_ok(&["exec", id, "ip", "-o", "link"])?;
            let names = link_names(&links);
            ensure!(names == ["lo"], "container links {names:?}: {links}");
            *seen2.lock().unwrap() = Some(Seen {
                net_dir: net.dir().display().to_string(),
                dockerd_dir: d.dir().display().to_string(),
                prefix: net.prefix().to_owned(),
                container_pid: pid,
            });
            panic!(
                "deliberate panic with dockerd {} running",
                d.pid().unwrap_or(0)
            );
        });
    });
    assert!(res.is_err(), "the test body was meant to panic");
    let Seen {
        net_dir,
        dockerd_dir,
        prefix,
        container_pid: pid,
    } =
        seen.lock().unwrap().clone().expect(
            "the test body failed before its deliberate panic (its error is printed above)",
        );
    let procs = processes_mentioning(&dockerd_dir);
    assert!(procs.is_empty(), "processes left behind: {procs:#?}");
    assert!(
        !weft_tests::cmd::pid_alive(pid),
        "container process {pid} still alive"
    );
    let mounts: Vec<String> = std::fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&net_dir))
        .map(str::to_owned)
        .collect();
    assert!(mounts.is_empty(), "mounts left behind: {mounts:#?}");
    assert!(!Path::new(&net_dir).exists(), "{net_dir} still exists");
    let ns = Cmd::new("ip")
        .args(["netns", "list"])
        .run_ok()
        .unwrap()
        .stdout;
    assert!(
        !ns.lines().any(|l| l.starts_with(&prefix)),
        "namespaces left: {ns}"
    );
}

#[test]
fn run_joins_only_containers_that_ask() {
    run_test("pxrun", |net| {
        let s = single(net)?;

        // The entrypoint's first instruction already sees ethwe with its address.
        let out = s.docker_ok(&[
            "run", "--rm", "-e", CIDR_ENV, IMAGE, "ip", "-4", "addr", "show", "dev", "ethwe",
        ])?;
        let cidrs = inet_cidrs(&out);
        ensure!(
            cidrs.len() == 1 && in_subnet(&cidrs[0]),
            "a container started with {CIDR_ENV} printed as its first output:\n{out}"
        );

        // Not asked: no WEAVE_CIDR under --no-default-ipalloc, and WEAVE_CIDR=none.
        for env in [None, Some("WEAVE_CIDR=none")] {
            let mut args = vec!["run", "--rm"];
            if let Some(e) = env {
                args.extend(["-e", e]);
            }
            args.extend([IMAGE, "ip", "-o", "link"]);
            let out = s.docker_ok(&args)?;
            let names = link_names(&out);
            ensure!(
                names == ["lo"],
                "container with {env:?} shows links {names:?}:\n{out}"
            );
        }

        // --net=host: the host's own interfaces, nothing added.
        let out = s.docker_ok(&[
            "run",
            "--rm",
            "--net=host",
            "-e",
            CIDR_ENV,
            IMAGE,
            "ip",
            "-o",
            "link",
        ])?;
        let names = link_names(&out);
        let host_links = link_names(&s.host.exec(&["ip", "-o", "link"])?.ok()?.stdout);
        ensure!(
            names == host_links
                && names.iter().any(|n| n == "ul0")
                && !names.iter().any(|n| n == "ethwe"),
            "--net=host container shows links {names:?}, the host {host_links:?}"
        );

        // A detached joined container: weft ps lists it by short id with its address, inspect
        // shows the address, and the proxy leaves its command alone.
        let id = s.docker_ok(&[
            "run", "-d", "--name", "web1", "-e", CIDR_ENV, IMAGE, "httpd", "-f", "-p", "80", "-h",
            "/www",
        ])?;
        ensure!(id.len() == 64, "docker run -d printed {id:?}");
        let cidrs = ethwe_cidrs(&s.sock, "web1")?;
        ensure!(
            cidrs.len() == 1 && in_subnet(&cidrs[0]),
            "web1 ethwe: {cidrs:?}"
        );
        let ps = s.host.weft_ok(&["ps"])?;
        let line = ps
            .lines()
            .find(|l| l.split_whitespace().next() == Some(&id[..12]))
            .with_context(|| format!("`weft ps` has no line for {}:\n{ps}", &id[..12]))?;
        ensure!(
            line.split_whitespace().any(|w| w == cidrs[0]),
            "`weft ps` line for web1 lacks {}: {line}",
            cidrs[0]
        );
        let shown = s.docker_ok(&[
            "inspect",
            "-f",
            "{{.NetworkSettings.IPAddress}}/{{.NetworkSettings.IPPrefixLen}}",
            "web1",
        ])?;
        ensure!(
            shown == cidrs[0],
            "docker inspect shows {shown}, ethwe has {}",
            cidrs[0]
        );
        let cmdline = s.docker_ok(&["exec", "web1", "cat", "/proc/1/cmdline"])?;
        ensure!(
            cmdline.replace('\0', " ").trim() == "httpd -f -p 80 -h /www",
            "web1's pid 1 runs {cmdline:?}"
        );
        let served = s.docker_ok(&[
            "exec",
            "web1",
            "wget",
            "-q",
            "-O",
            "-",
            "http://127.0.0.1/ping",
        ])?;
        ensure!(served == docker::PING_BODY, "httpd served {served:?}");

        // `eval $(weft env)` points the docker client at the proxy (inspect then shows the
        // weave address), `eval $(weft env --restore)` back at what it was.
        let before = "unix:///var/run/before-weft.sock";
        let env = s
            .host
            .weft_cmd(&["env"])?
            .env("DOCKER_HOST", before)
            .run_ok()?
            .stdout;
        let script = format!(
            "DOCKER_HOST={before}; eval \"$1\"; echo \"$DOCKER_HOST\"; echo \"$ORIG_DOCKER_HOST\"; \
             exec {DOCKER} inspect -f '{{{{.NetworkSettings.IPAddress}}}}' web1"
        );
        let out = Cmd::new("sh").args(["-c", &script, "sh", &env]).run_ok()?;
        let lines: Vec<&str> = out.stdout.lines().collect();
        let want_host = format!("unix://{}", s.sock.display());
        let want_ip = cidrs[0].split('/').next().unwrap_or_default();
        ensure!(
            lines.len() == 3 && lines[0] == want_host && lines[2] == want_ip,
            "after eval of `weft env` ({env:?}): DOCKER_HOST, ORIG_DOCKER_HOST and inspect gave \
             {lines:?}, want {want_host} and {want_ip}"
        );
        let restore = s
            .host
            .weft_cmd(&["env", "--restore"])?
            .env("DOCKER_HOST", &want_host)
            .env("ORIG_DOCKER_HOST", lines[1])
            .run_ok()?
            .stdout;
        let out = Cmd::new("sh")
            .args(["-c", "eval \"$1\"; echo \"$DOCKER_HOST\"", "sh", &restore])
            .run_ok()?;
        ensure!(
            out.stdout.trim() == before,
            "after eval of `weft env --restore` ({restore:?}) DOCKER_HOST is {:?}, want {before}",
            out.stdout.trim()
        );

        // The proxy socket has the owner and mode of dockerd's.
        let (up, px) = (
            std::fs::metadata(s.dockerd.socket())?,
            std::fs::metadata(&s.sock)?,
        );
        ensure!(
            (px.uid(), px.gid(), px.mode() & 0o7777) == (up.uid(), up.gid(), up.mode() & 0o7777),
            "proxy socket {}:{} {:o}, dockerd's {}:{} {:o}",
            px.uid(),
            px.gid(),
            px.mode() & 0o7777,
            up.uid(),
            up.gid(),
            up.mode() & 0o7777
        );
        Ok(())
    });
}

/// `docker ARGS` through `sock` in the background with stdout/stderr in files under `dir`.
fn spawn_docker(
    sock: &Path,
    args: &[&str],
    dir: &Path,
    tag: &str,
) -> Result<(Child, std::path::PathBuf)> {
    let out = dir.join(format!("{tag}.out"));
    let child = docker_cmd(sock, args).spawn_to(&out, &dir.join(format!("{tag}.err")))?;
    Ok((child, out))
}

/// Kills and reaps our own child.
fn stop_child(c: &mut Child) {
    let _ = c.kill();
    let _ = c.wait();
}

/// Waits until the file `p` contains `needle`.
fn wait_file_contains(p: &Path, needle: &str, what: &str) -> Result<String> {
    wait_until(
        what,
        Duration::from_secs(20),
        Duration::from_millis(50),
        || {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            if text.contains(needle) {
                Ok(text)
            } else {
                bail!(
                    "{} holds {:?}",
                    p.display(),
                    weft_tests::cmd::tail(&text, 10)
                )
            }
        },
    )
}

#[test]
fn interactive_and_streaming_calls_pass_through() {
    run_test("pxstr", |net| {
        let s = single(net)?;
        let dir = net.dir();
        let payload = dir.join("stdin.bin");
        Cmd::new("sh")
            .args([
                "-c",
                &format!("head -c 3M /dev/urandom > '{}'", payload.display()),
            ])
            .run_ok()?;
        let want = sha256_file(&payload)?;

        // run -i with piped stdin (joined container: the waiter passes stdin on).
        let out = docker_cmd(
            &s.sock,
            &["run", "-i", "--rm", "-e", CIDR_ENV, IMAGE, "sha256sum"],
        )
        .stdin_file(&payload)
        .run()?
        .ok()?;
        ensure!(
            out.stdout.split_whitespace().next() == Some(want.as_str()),
            "run -i: container hashed stdin to {:?}, want {want}",
            out.stdout
        );

        // run -it on a terminal: a shell that computes what we type.
        let argv = |args: &[&str]| -> Vec<String> {
            let mut v = vec![
                DOCKER.to_owned(),
                "-H".into(),
                format!("unix://{}", s.sock.display()),
            ];
            v.extend(args.iter().map(|a| (*a).to_owned()));
            v
        };
        let out = run_in_pty(
            &argv(&["run", "-it", "--rm", "-e", CIDR_ENV, IMAGE, "sh"]),
            "# ",
            "tty; ip -4 addr show dev ethwe; echo sum-$((6*7)); exit 3\n",
            Duration::from_secs(40),
        )?;
        ensure!(
            out.status.and_then(|s| s.code()) == Some(3)
                && out.stdout.contains("/dev/pts/")
                && out.stdout.contains("sum-42")
                && inet_cidrs(&out.stdout).iter().any(|c| in_subnet(c)),
            "run -it: {out}"
        );

        // A long-running joined container for exec, logs and events.
        s.docker_ok(&[
            "run",
            "-d",
            "--name",
            "box",
            "-e",
            CIDR_ENV,
            IMAGE,
            "sh",
            "-c",
            "echo ready; touch /tmp/log; exec tail -f /tmp/log",
        ])?;
        let out = docker_cmd(&s.sock, &["exec", "-i", "box", "sha256sum"])
            .stdin_file(&payload)
            .run()?
            .ok()?;
        ensure!(
            out.stdout.split_whitespace().next() == Some(want.as_str()),
            "exec -i: hashed stdin to {:?}, want {want}",
            out.stdout
        );
        let out = run_in_pty(
            &argv(&["exec", "-it", "box", "sh"]),
            "# ",
            "tty; echo sum-$((7*8)); exit 4\n",
            Duration::from_secs(30),
        )?;
        ensure!(
            out.status.and_then(|s| s.code()) == Some(4)
                && out.stdout.contains("/dev/pts/")
                && out.stdout.contains("sum-56"),
            "exec -it: {out}"
        );

        // logs -f gets a line written after it started.
        let (mut logs, logs_out) = spawn_docker(&s.sock, &["logs", "-f", "box"], dir, "logs")?;
        let res = (|| {
            wait_file_contains(&logs_out, "ready", "logs -f to show the first line")?;
            s.docker_ok(&["exec", "box", "sh", "-c", "echo later-line >> /tmp/log"])?;
            wait_file_contains(
                &logs_out,
                "later-line",
                "logs -f to show a line written later",
            )?;
            ensure!(logs.try_wait()?.is_none(), "docker logs -f exited early");
            Ok(())
        })();
        stop_child(&mut logs);
        res?;

        // events sees a container created and started while it runs.
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)?
            .as_secs()
            .to_string();
        let (mut events, events_out) = spawn_docker(
            &s.sock,
            &[
                "events",
                "--since",
                &since,
                "--filter",
                "type=container",
                "--format",
                "{{.Action}} {{.Actor.ID}}",
            ],
            dir,
            "events",
        )?;
        let res = (|| {
            let id = s.docker_ok(&["run", "-d", "-e", CIDR_ENV, IMAGE, "sleep", "300"])?;
            wait_file_contains(
                &events_out,
                &format!("start {id}"),
                "events to show the start",
            )?;
            let text = std::fs::read_to_string(&events_out)?;
            ensure!(text.contains(&format!("create {id}")), "events: {text}");
            ensure!(events.try_wait()?.is_none(), "docker events exited early");
            Ok(())
        })();
        stop_child(&mut events);
        res
    });
}

#[test]
fn copy_import_export_match_direct() {
    run_test("pxcp", |net| {
        let s = single(net)?;
        let dir = net.dir();
        let direct = s.dockerd.socket().to_path_buf();
        let payload = dir.join("payload.bin");
        Cmd::new("sh")
            .args([
                "-c",
                &format!("head -c 24M /dev/urandom > '{}'", payload.display()),
            ])
            .run_ok()?;
        let want = sha256_file(&payload)?;
        s.docker_ok(&[
            "run", "-d", "--name", "store", "-e", CIDR_ENV, IMAGE, "sleep", "600",
        ])?;

        // cp into the container and back out.
        s.docker_ok(&[
            "cp",
            &payload.display().to_string(),
            "store:/tmp/payload.bin",
        ])?;
        let inside = s.docker_ok(&["exec", "store", "sha256sum", "/tmp/payload.bin"])?;
        ensure!(
            inside.split_whitespace().next() == Some(want.as_str()),
            "after docker cp in, the container hashes it to {inside:?}, want {want}"
        );
        let back = dir.join("back.bin");
        s.docker_ok(&["cp", "store:/tmp/payload.bin", &back.display().to_string()])?;
        ensure!(
            sha256_file(&back)? == want,
            "docker cp out changed the content"
        );

        // The same commands through the proxy and straight to dockerd give the same bytes.
        let same = |args: &[&str], what: &str| -> Result<()> {
            let (a, b) = (
                dir.join(format!("{what}-proxy")),
                dir.join(format!("{what}-direct")),
            );
            docker_to_file(&s.sock, args, &a, Duration::from_secs(120))?.ok()?;
            docker_to_file(&direct, args, &b, Duration::from_secs(120))?.ok()?;
            let (ha, hb) = (sha256_file(&a)?, sha256_file(&b)?);
            let len = std::fs::metadata(&a)?.len();
            ensure!(
                ha == hb && len > 24 << 20,
                "{what}: through the proxy {ha} ({len} bytes), direct {hb} ({} bytes)",
                std::fs::metadata(&b)?.len()
            );
            Ok(())
        };
        same(&["cp", "store:/tmp/payload.bin", "-"], "cp-stdout")?;
        same(&["export", "store"], "export")?;

        // import of that export: the same layer through the proxy as direct, and it runs.
        let tar = dir.join("export-proxy").display().to_string();
        s.docker_ok(&["import", &tar, "weft-imp:proxy"])?;
        docker_via(&direct, &["import", &tar, "weft-imp:direct"])?.ok()?;
        let layers = |sock: &Path, tag: &str| -> Result<String> {
            Ok(docker_via(
                sock,
                &["image", "inspect", "-f", "{{json .RootFS.Layers}}", tag],
            )?
            .ok()?
            .stdout
            .trim()
            .to_owned())
        };
        let (lp, ld) = (
            layers(&s.sock, "weft-imp:proxy")?,
            layers(&direct, "weft-imp:direct")?,
        );
        ensure!(lp == ld, "imported layers differ: proxy {lp}, direct {ld}");
        let sum = s.docker_ok(&[
            "run",
            "--rm",
            "weft-imp:proxy",
            "sha256sum",
            "/tmp/payload.bin",
        ])?;
        ensure!(
            sum.split_whitespace().next() == Some(want.as_str()),
            "the imported image holds {sum:?}"
        );
        Ok(())
    });
}

/// `weft launch` takes the proxy's flags from `WEAVEPROXY_OPTIONS` too (the seed's ansible sets
/// it), and listens on every `-H` given; `weft status` lists them.
#[test]
fn weaveproxy_options_and_several_sockets() {
    run_test("pxopt", |net| {
        let host = net.host(1)?;
        let dockerd = Dockerd::start(&host)?;
        let a = host.run_dir().join("a.sock");
        let b = host.run_dir().join("b.sock");
        let opts = format!(
            "--rewrite-inspect --no-default-ipalloc -H unix://{} --docker-api {}",
            a.display(),
            dockerd.socket_url()
        );
        let b_url = format!("unix://{}", b.display());
        host.weft_cmd(&["launch", "-H", &b_url])?
            .env("WEAVEPROXY_OPTIONS", &opts)
            .run_ok()?;
        // Weave's shape: one `Address:` line, the addresses comma-separated.
        let status = host.weft_ok(&["status"])?;
        let line = status
            .lines()
            .find(|l| l.starts_with("        Address: "))
            .with_context(|| format!("no proxy Address line in `weft status`:\n{status}"))?;
        for s in [&a, &b] {
            ensure!(
                line.split(": ").nth(1).is_some_and(|l| l
                    .split(", ")
                    .any(|x| x == format!("unix://{}", s.display()))),
                "`weft status` does not list {}:\n{status}",
                s.display()
            );
        }
        // --no-default-ipalloc from the variable: no WEAVE_CIDR, no ethwe (through either socket).
        for s in [&a, &b] {
            let links = docker_via(s, &["run", "--rm", IMAGE, "ip", "-o", "link"])?.ok()?;
            ensure!(
                !link_names(&links.stdout).iter().any(|l| l == "ethwe"),
                "a container without WEAVE_CIDR got ethwe via {}: {}",
                s.display(),
                links.stdout
            );
        }
        // --rewrite-inspect from the variable: inspect through the other socket shows the address.
        let id = docker_via(&a, &["run", "-d", "-e", CIDR_ENV, IMAGE, "sleep", "300"])?
            .ok()?
            .stdout
            .trim()
            .to_owned();
        let cidrs = ethwe_cidrs(&b, &id)?;
        let shown = docker_via(
            &b,
            &["inspect", "-f", "{{.NetworkSettings.IPAddress}}", &id],
        )?
        .ok()?
        .stdout
        .trim()
        .to_owned();
        ensure!(
            cidrs.len() == 1 && cidrs[0].split('/').next() == Some(shown.as_str()),
            "inspect shows '{shown}', ethwe has {cidrs:?}"
        );
        docker_via(&a, &["rm", "-f", &id])?.ok()?;
        drop(dockerd);
        Ok(())
    });
}
