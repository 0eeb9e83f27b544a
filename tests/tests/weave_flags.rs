//! Integration tests (root, network namespaces): every launch flag of Weave 2.8.1 parses, in
//! Weave's spellings (Go booleans with `=false`, single-dash long forms, `--log-level=warning`
//! that does not silence the log); flags weft has no use for are accepted and noted in the log;
//! Weave's environment variables are read; the proxy listens on `-H tcp://ADDR:PORT` and on a
//! bare path; `expose -h FQDN` takes `-h` as the host name.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use weft_tests::docker::{DOCKER, Dockerd};
use weft_tests::{Host, run_test, wait_until};

/// Attaches a fresh namespace with `net:default` on `h`; its address and ethwe MTU.
fn probe(h: &Host, name: &str) -> Result<(String, u32)> {
    let c = h.container_alloc(name, &["net:default"])?;
    Ok((c.ip().to_string(), c.mtu()?))
}

#[test]
fn every_weave_2_8_1_launch_flag_parses() {
    run_test("flags", |net| {
        let h = net.host(1)?;
        let out = h.weft(&[
            "launch",
            "--password",
            "s3cret",
            "--trusted-subnets",
            "192.0.2.0/24",
            "--host",
            "0.0.0.0",
            "--name",
            "02:00:00:00:00:01",
            "--nickname",
            "flags1",
            "--no-restart",
            "--no-discovery",
            "--no-dns",
            "--dns-domain",
            "weave.local.",
            "--dns-listen-address",
            "127.0.0.1:5353",
            "--dns-ttl",
            "5",
            "--dns-fallback-timeout",
            "3s",
            "--resolv-conf",
            "/etc/resolv.conf",
            "--ipalloc-init",
            "consensus=1",
            "--ipalloc-range",
            "10.32.0.0/12",
            "--ipalloc-default-subnet",
            "10.32.5.0/24",
            "--plugin=false",
            "--proxy=false",
            "-H",
            "unix:///run/weave-flags-test.sock",
            "--without-dns",
            "--no-multicast-route",
            "--no-rewrite-hosts",
            "--no-default-ipalloc",
            "--hostname-from-label",
            "app",
            "--hostname-match",
            "^aws-[0-9]+-(.*)$",
            "--hostname-replacement",
            "my-app-$1",
            "--rewrite-inspect",
            "--log-level=warning",
            "--token",
            "abc",
            "--no-fastdp",
            "--metrics-addr",
            "127.0.0.1:9100",
            "--status-addr",
            "127.0.0.1:6782",
            "--conn-limit",
            "30",
            "--mtu",
            "1400",
            "--port",
            "6783",
            "--expect-npc=false",
            "192.0.2.12",
        ])?;
        ensure!(
            out.success(),
            "launch with Weave's flags: {out}\n{}",
            h.log()
        );
        ensure!(
            out.stdout.trim() == "02:00:00:00:00:01",
            "launch printed {:?}, not the peer name",
            out.stdout
        );
        ensure!(!out.stderr.contains("unexpected argument"), "{out}");
        let status = h.weft_ok(&["status"])?;
        ensure!(
            status.contains("flags1") && status.contains("enabled"),
            "status after launch with --password and --nickname:\n{status}"
        );
        // The default subnet and the MTU took effect.
        let (ip, mtu) = probe(&h, "p1")?;
        ensure!(ip.starts_with("10.32.5."), "net:default gave {ip}");
        ensure!(mtu == 1400, "ethwe MTU {mtu}");
        // Flags without effect are noted, at a level --log-level=warning shows; info is not.
        let log = h.log();
        for flag in ["--no-restart", "--token"] {
            ensure!(
                log.lines()
                    .any(|l| l.contains(" WARN ") && l.contains(flag)),
                "no note of {flag} in the log (with --log-level=warning):\n{log}"
            );
        }
        let after_start: Vec<&str> = log.lines().skip_while(|l| !l.contains("noted")).collect();
        ensure!(
            !after_start.iter().any(|l| l.contains(" INFO ")),
            "--log-level=warning still logs info lines:\n{log}"
        );
        h.weft_ok(&["stop"])?;

        // Weave's single-dash long forms and 1.x spellings.
        let out = h.weft(&[
            "launch",
            "-password",
            "s3cret",
            "-iprange",
            "10.40.0.0/16",
            "-nickname",
            "flags2",
            "-nodiscovery",
            "-initpeercount",
            "1",
            "--proxy=false",
        ])?;
        ensure!(out.success(), "launch with single-dash flags: {out}");
        ensure!(
            out.stderr
                .contains("-iprange is deprecated; please use --ipalloc-range"),
            "no deprecation warning: {out}"
        );
        let (ip, _) = probe(&h, "p2")?;
        ensure!(ip.starts_with("10.40."), "-iprange 10.40.0.0/16 gave {ip}");
        let status = h.weft_ok(&["status"])?;
        ensure!(status.contains("flags2"), "-nickname ignored:\n{status}");
        h.weft_ok(&["stop"])?;

        // launch-router with 1.x's flags, launch-proxy with the proxy's.
        let out = h.weft(&[
            "launch-router",
            "--no-restart",
            "--log-level=debug",
            "--ipalloc-range=10.48.0.0/16",
            "--init-peer-count=1",
        ])?;
        ensure!(out.success(), "launch-router: {out}");
        let log_before = h.log().len();
        let out = h.weft(&[
            "launch-proxy",
            "--no-restart",
            "--rewrite-inspect",
            "--no-default-ipalloc",
            "--without-dns",
            "--hostname-match=(.*)",
            "-H",
            &format!("unix://{}", net.dir().join("p.sock").display()),
            "--docker-api",
            &format!("unix://{}", net.dir().join("no-docker.sock").display()),
        ])?;
        ensure!(out.success(), "launch-proxy: {out}");
        ensure!(
            h.log()[log_before..].contains("--no-restart"),
            "launch-proxy's --no-restart not noted:\n{}",
            h.log()
        );
        h.weft_ok(&["stop"])?;
        Ok(())
    });
}

#[test]
fn weave_environment_variables() {
    run_test("envs", |net| {
        let h = net.host(1)?;
        let out = h
            .weft_cmd(&["launch", "--proxy=false"])?
            .env("WEAVE_PASSWORD", "s3cret")
            .env("WEAVE_MTU", "1410")
            .env("WEAVE_NO_FASTDP", "1")
            .env("IPALLOC_RANGE", "10.44.0.0/16")
            .env("CONN_LIMIT", "5")
            .env("CHECKPOINT_DISABLE", "1")
            .env("WEAVE_STATUS_ADDR", "127.0.0.1:6790")
            .run()?;
        ensure!(out.success(), "launch with Weave's variables: {out}");
        let status = h.weft_ok(&["status"])?;
        ensure!(
            status
                .lines()
                .any(|l| l.contains("Encryption") && l.contains("enabled")),
            "WEAVE_PASSWORD did not enable encryption:\n{status}"
        );
        let (ip, mtu) = probe(&h, "e1")?;
        ensure!(
            ip.starts_with("10.44."),
            "IPALLOC_RANGE=10.44.0.0/16 gave {ip}"
        );
        ensure!(mtu == 1410, "WEAVE_MTU=1410 gave an ethwe MTU of {mtu}");
        let log = h.log();
        ensure!(
            log.contains("CHECKPOINT_DISABLE"),
            "CHECKPOINT_DISABLE not noted in the log:\n{log}"
        );
        // WEAVE_NO_FASTDP took effect: the router listens on sleeve's port only.
        ensure!(
            log.contains("udp/6783 (sleeve)") && !log.contains("(fastdp)"),
            "WEAVE_NO_FASTDP=1 left the fast path on:\n{log}"
        );
        ensure!(!log.contains("s3cret"), "the password is in the log");
        // WEAVE_DEBUG traces what the command does, as Weave's `set -x`.
        let out = h.weft_cmd(&["status"])?.env("WEAVE_DEBUG", "1").run_ok()?;
        ensure!(
            out.stderr.contains("GET http://127.0.0.1:6784/status"),
            "WEAVE_DEBUG printed no trace: {out}"
        );
        h.weft_ok(&["stop"])?;
        Ok(())
    });
}

#[test]
fn proxy_on_tcp_and_bare_paths_and_expose_h() {
    run_test("pxtcp", |net| {
        let h = net.host(1)?;
        let d = Dockerd::start(&h)?;
        let bare = net.dir().join("bare.sock");
        h.weft_ok(&["launch-router"])?;
        let out = h.weft(&[
            "launch-proxy",
            "-H",
            "tcp://127.0.0.1:12375",
            "-H",
            &bare.display().to_string(),
            "-H=:12376",
            "--docker-api",
            &d.socket_url(),
        ])?;
        ensure!(out.success(), "launch-proxy -H tcp -H path: {out}");
        for host in ["tcp://127.0.0.1:12375", "tcp://127.0.0.1:12376"] {
            let v = h
                .exec(&[
                    DOCKER,
                    "-H",
                    host,
                    "version",
                    "--format",
                    "{{.Server.Version}}",
                ])?
                .ok()
                .with_context(|| format!("docker -H {host} through the proxy"))?;
            ensure!(!v.stdout.trim().is_empty(), "{v}");
        }
        let via_path = h
            .exec(&[
                DOCKER,
                "-H",
                &format!("unix://{}", bare.display()),
                "ps",
                "-q",
            ])?
            .ok()?;
        ensure!(via_path.success(), "{via_path}");
        ensure!(
            h.log()
                .contains("tcp://0.0.0.0:12376, which is not a loopback address"),
            "no warning for the non-loopback listener:\n{}",
            h.log()
        );
        let env = h.weft_ok(&["env"])?;
        ensure!(
            env.starts_with("export DOCKER_HOST=tcp://127.0.0.1:12375"),
            "weave env: {env}"
        );
        // expose -h FQDN: -h is the name, not help.
        let out = h.weft(&["expose", "net:10.32.9.0/24", "-h", "host1.weave.local"])?;
        ensure!(
            out.success() && out.stdout.trim().starts_with("10.32.9."),
            "expose -h: {out}"
        );
        wait_until(
            "the exposed address on the bridge",
            Duration::from_secs(5),
            Duration::from_millis(50),
            || {
                let a = h
                    .exec(&["ip", "-4", "-o", "addr", "show", "dev", "weave"])?
                    .stdout;
                ensure!(a.contains("10.32.9."), "{a}");
                Ok(())
            },
        )?;
        h.weft_ok(&["stop"])?;
        drop(d);
        Ok(())
    });
}
