//! Integration tests (root, network namespaces): what scripts written for Weave read from weft.
//! `weave report -f` with the templates Weave's docs, tests and script use; `weave status` and
//! its sub-reports in Weave's shapes, read the way scripts read them (grep, cut, awk); the
//! HTTP paths (`/report?format=`, `/ipinfo/*`, `/proxyaddrs`, `/domain`); the read-only
//! status listener on 127.0.0.1:6782; and `/metrics` under Weave's names, checked with
//! Prometheus' own `promtool check metrics`.
//!
//! Every command runs inside the host's namespace through a `weave` symlink to the weft binary
//! on `PATH`, under `sh -c`, as a user's script would.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use weft_tests::cmd::Cmd;
use weft_tests::{Host, Output, TestNet, run_test, wait_until};

const PASSWORD: &str = "weave outputs test password";
const H1_NAME: &str = "8a:3e:3e:3e:3e:3e";

/// A directory holding a `weave` symlink to the weft binary (for `PATH`).
fn weave_dir(net: &TestNet) -> Result<PathBuf> {
    let dir = net.dir().join("bin");
    if !dir.join("weave").exists() {
        std::fs::create_dir_all(&dir)?;
        std::os::unix::fs::symlink(net.weft_bin()?, dir.join("weave"))?;
    }
    Ok(dir)
}

/// `sh -c SCRIPT` in `h`'s namespace with `weave` on `PATH` and the host's weft directories;
/// the output whatever the exit status.
fn sh(net: &TestNet, h: &Host, script: &str) -> Result<Output> {
    let path = format!(
        "PATH={}:{}",
        weave_dir(net)?.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Cmd::new("ip")
        .args(["netns", "exec", h.ns(), "env"])
        .arg(format!("WEFT_RUN_DIR={}", h.run_dir().display()))
        .arg(format!("WEFT_STATE_DIR={}", h.state_dir().display()))
        .arg(path)
        .args(["sh", "-c", script])
        .timeout(Duration::from_secs(30))
        .run()
}

/// Like [`sh`], failing unless the script exits 0; its stdout.
fn sh_ok(net: &TestNet, h: &Host, script: &str) -> Result<String> {
    Ok(sh(net, h, script)?.ok()?.stdout)
}

/// `weave report -f TEMPLATE` on `h` (the template passed in single quotes, as scripts do).
fn report_f(net: &TestNet, h: &Host, template: &str) -> Result<String> {
    ensure!(
        !template.contains('\''),
        "test templates avoid single quotes"
    );
    sh_ok(net, h, &format!("weave report -f '{template}'"))
}

/// `curl` against `h`'s loopback: status code and body.
fn curl(h: &Host, args: &[&str]) -> Result<(u16, String)> {
    let mut cmd = Cmd::new("ip").args(["netns", "exec", h.ns(), "curl", "-s", "-S"]);
    cmd = cmd.args(["-o", "-", "-w", "\n%{http_code}"]).args(args);
    let out = cmd.timeout(Duration::from_secs(15)).run()?.ok()?;
    let (body, code) = out
        .stdout
        .rsplit_once('\n')
        .context("curl printed no status code")?;
    Ok((
        code.trim().parse().context("curl's status code")?,
        body.to_owned(),
    ))
}

/// `GET /report?format=TEMPLATE` on `h`'s loopback port `port`, as Weave's script sends it.
fn report_http(h: &Host, port: u16, template: &str) -> Result<(u16, String)> {
    let url = format!("http://127.0.0.1:{port}/report");
    curl(
        h,
        &[
            "-G",
            "--data-urlencode",
            &format!("format={template}"),
            &url,
        ],
    )
}

/// Waits until `h`'s report lists a connection to `addr` in state `established`.
fn wait_connection(net: &TestNet, h: &Host, addr: &str) -> Result<()> {
    wait_until(
        &format!(
            "host {} to report an established connection to {addr}",
            h.n()
        ),
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let out = report_f(
                net,
                h,
                r#"{{range .Router.Connections}}{{.Address}} {{.State}}{{"\n"}}{{end}}"#,
            )?;
            if out.lines().any(|l| l == format!("{addr} established")) {
                Ok(())
            } else {
                bail!("connections: {out:?}")
            }
        },
    )
}

/// The value after `KEY: ` in `weave status`, as Weave's own test reads it
/// (`grep -oP '(?<= KEY: ).*'`).
fn status_field(net: &TestNet, h: &Host, key: &str) -> Result<String> {
    Ok(sh_ok(
        net,
        h,
        &format!("weave status | grep -oP '(?<= {key}: ).*'"),
    )?
    .trim_end()
    .to_owned())
}

#[test]
fn report_templates_and_status_shapes_as_scripts_read_them() {
    run_test("wout", |net| {
        let h1 = net.host(1)?;
        let h2 = net.host(2)?;
        let h3 = net.host(3)?; // no router: dials to it are refused
        // `--no-dns` as the user's Ansible role launches: no `.DNS` in the report.
        h1.launch_args(&[
            "--no-dns",
            "--name",
            H1_NAME,
            "--nickname",
            "nicknamington",
            "--password",
            PASSWORD,
            "--ipalloc-default-subnet",
            "10.32.0.0/16",
            "--trusted-subnets",
            "198.51.100.0/24",
            &h2.addr().to_string(),
            &h3.addr().to_string(),
        ])?;
        // Host 2 only listens, so the one connection is host 1's outbound one.
        h2.launch_args(&["--nickname", "host2", "--password", PASSWORD])?;
        let h2_addr = format!("{}:6783", h2.addr());
        wait_connection(net, &h1, &h2_addr)?;

        // Weave's test/700_status_and_report: each report value equals the status line.
        let name = report_f(net, &h1, "{{.Router.Name}}({{.Router.NickName}})")?;
        ensure!(name == format!("{H1_NAME}(nicknamington)"), "{name:?}");
        ensure!(status_field(net, &h1, "Name")? == name);
        wait_until(
            "both peers to report their connection",
            Duration::from_secs(20),
            Duration::from_millis(200),
            || {
                let peers = report_f(net, &h1, "{{len .Router.Peers}}")?;
                let line = status_field(net, &h1, "Peers")?;
                ensure!(
                    peers == "2" && line == "2 (with 2 established connections)",
                    "{peers:?} / {line:?}"
                );
                Ok(())
            },
        )?;
        let subnet = report_f(net, &h1, "{{.IPAM.DefaultSubnet}}")?;
        ensure!(subnet == "10.32.0.0/16", "{subnet:?}");
        ensure!(status_field(net, &h1, "DefaultSubnet")? == subnet);
        ensure!(status_field(net, &h1, "Range")? == "10.32.0.0/12");
        ensure!(report_f(net, &h1, "{{.VersionCheck.Enabled}}")? == "false");
        ensure!(status_field(net, &h1, "Encryption")? == "enabled");
        ensure!(status_field(net, &h1, "TrustedSubnets")? == "198.51.100.0/24");
        ensure!(report_f(net, &h1, "{{json .Router.TrustedSubnets}}")? == r#"["198.51.100.0/24"]"#);
        let misc = report_f(
            net,
            &h1,
            r#"{{if .DNS}}dns{{else}}nodns{{end}} {{printf "%-6s|" .Router.Protocol}} {{.Router.Port}} {{with .IPAM}}{{.RangeNumIPs}}{{end}}"#,
        )?;
        ensure!(misc == "nodns weft  | 6783 1048576", "{misc:?}");

        // Targets: as given (IP, no port), the same from the report and from `status targets`.
        let targets = sh_ok(
            net,
            &h1,
            r#"weave report -f '{{range .Router.Targets}}{{.}}{{"\n"}}{{end}}' | sort"#,
        )?;
        ensure!(
            targets == format!("{}\n{}\n", h2.addr(), h3.addr()),
            "{targets:?}"
        );
        ensure!(sh_ok(net, &h1, "weave status targets | sort")? == targets);

        // Connections: the refused target and the live link, with data path and attributes.
        let conns = report_f(
            net,
            &h1,
            r#"{{range .Router.Connections}}{{.Address}} {{.State}} {{.Attrs.name}} {{.Attrs.encrypted}}{{"\n"}}{{end}}"#,
        )?;
        ensure!(
            conns.contains(&format!("{h2_addr} established sleeve true\n")),
            "{conns}"
        );
        ensure!(
            conns
                .lines()
                .any(|l| l.starts_with(&format!("{}:6783 ", h3.addr()))
                    && (l.contains(" retrying ") || l.contains(" connecting "))
                    && l.ends_with("<no value> <no value>")),
            "{conns}"
        );
        // `status connections` read as Weave's tests read it.
        let second = sh_ok(
            net,
            &h1,
            "weave status connections | tr -s ' ' | cut -d ' ' -f 2 | sort",
        )?;
        ensure!(
            second == format!("{h2_addr}\n{}:6783\n", h3.addr()),
            "{second:?}"
        );
        sh_ok(
            net,
            &h1,
            "weave status connections | grep -P 'encrypted *sleeve'",
        )?;
        sh_ok(
            net,
            &h1,
            "weave status connections | grep -q 'encrypted=truemtu=1376'",
        )?;
        let text = sh_ok(net, &h1, "weave status connections")?;
        let live = text
            .lines()
            .find(|l| l.contains(&h2_addr))
            .context("no line for host 2")?;
        ensure!(
            live.starts_with(&format!("-> {h2_addr:<21} established encrypted   sleeve "))
                && live.contains("(host2) "),
            "{live:?}"
        );

        // Peers: each peer, then its connections; grep finds the nickname.
        sh_ok(net, &h1, "weave status peers | grep -q nicknamington")?;
        let peers = sh_ok(net, &h1, "weave status peers")?;
        ensure!(
            peers.starts_with(&format!("{H1_NAME}(nicknamington)\n   -> {h2_addr:<21} ")),
            "{peers}"
        );

        // IPAM: idle (nothing printed) until the first allocation, then each owner's share.
        ensure!(sh_ok(net, &h1, "weave status ipam")?.is_empty());
        ensure!(status_field(net, &h1, "Status")? == "idle");
        let c = h1.container_alloc("c1", &["net:default"])?;
        ensure!(c.cidr().ends_with("/16"), "allocated {}", c.cidr());
        ensure!(status_field(net, &h1, "Status")? == "ready");
        let ipam = sh_ok(net, &h1, "weave status ipam")?;
        let first = ipam.lines().next().context("empty `status ipam`")?;
        ensure!(
            first.starts_with(&format!("{:<37} ", format!("{H1_NAME}(nicknamington)")))
                && first.ends_with("% of total) (1 active)"),
            "{ipam}"
        );
        let fields = sh_ok(net, &h1, "weave status ipam | awk '{print $1, $3}'")?;
        ensure!(
            fields.lines().all(|l| l.ends_with(" IPs")) && fields.lines().count() >= 1,
            "{fields}"
        );
        ensure!(report_f(net, &h1, "{{.IPAM.ActiveIPs}}")? == "1");
        let sizes = report_f(
            net,
            &h1,
            r#"{{range .IPAM.Entries}}{{.Size}}{{"\n"}}{{end}}"#,
        )?;
        let total: u64 = sizes.lines().map(|l| l.parse::<u64>().unwrap_or(0)).sum();
        ensure!(
            total == 1 << 20,
            "entries cover {total} addresses:\n{sizes}"
        );

        // The whole report as JSON, in Weave's layout.
        let json = sh_ok(net, &h1, "weave report")?;
        let v: serde_json::Value = serde_json::from_str(&json).with_context(|| json.clone())?;
        ensure!(
            v["Ready"] == true && v["Router"]["Name"] == H1_NAME,
            "{json}"
        );
        ensure!(v["Router"]["Encryption"] == true && v["Router"]["PeerDiscovery"] == true);
        ensure!(v["IPAM"]["Range"] == "10.32.0.0/12" && v["IPAM"]["ActiveIPs"] == 1);
        ensure!(v.get("DNS").is_none() && v.get("Proxy").is_none(), "{json}");
        let live = v["Router"]["Connections"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["Address"] == h2_addr.as_str()))
            .context("no connection to host 2 in the JSON")?;
        ensure!(
            live["Attrs"]["name"] == "sleeve"
                && live["Attrs"]["mtu"] == 1376
                && live["Attrs"]["encrypted"] == true
                && live["State"] == "established"
                && live["Outbound"] == true,
            "{live}"
        );

        // The summary is framed by blank lines, as Weave's script prints it.
        let summary = sh_ok(net, &h1, "weave status")?;
        for sub in ["connections", "peers", "ipam", "targets"] {
            eprintln!(
                "$ weave status {sub}\n{}",
                sh_ok(net, &h1, &format!("weave status {sub}"))?
            );
        }
        eprintln!("$ weave status\n{summary}");
        ensure!(
            summary.starts_with("\n        Version: ")
                && summary.contains("\n        Service: router\n       Protocol: weft ")
                && summary.ends_with("\n\n"),
            "{summary:?}"
        );

        // Templates that cannot be evaluated: exit 1, the reason on stderr, nothing on stdout.
        for (template, reason) in [
            ("{{.Router.Nmae}}", "can't evaluate field Nmae"),
            ("{{range .Router.Peers}}", "unexpected EOF"),
            (
                "{{nosuchfunc .Router}}",
                "function \"nosuchfunc\" not defined",
            ),
            ("{{.DNS.Domain}}", "nil pointer evaluating"),
        ] {
            let out = sh(net, &h1, &format!("weave report -f '{template}'"))?;
            ensure!(
                out.status.and_then(|s| s.code()) == Some(1)
                    && out.stdout.is_empty()
                    && out.stderr.contains(reason),
                "{template}: {out}"
            );
        }
        // Sub-reports weft cannot give, and unknown ones.
        let out = sh(net, &h1, "weave status dns")?;
        ensure!(
            !out.success() && out.stderr.contains("weaveDNS is not running"),
            "{out}"
        );
        let out = sh(net, &h1, "weave status bogus")?;
        ensure!(
            out.status.and_then(|s| s.code()) == Some(1)
                && out
                    .stderr
                    .contains("Invalid 'weave status' sub-command: bogus"),
            "{out}"
        );
        Ok(())
    });
}

/// Lines `promtool check metrics` printed other than the lint Weave's own metric names draw.
fn promtool_problems(metrics: &str, dir: &Path) -> Result<Vec<String>> {
    let file = dir.join("metrics.txt");
    std::fs::write(&file, metrics)?;
    let out = Cmd::new("promtool")
        .args(["check", "metrics"])
        .stdin_file(&file)
        .timeout(Duration::from_secs(30))
        .run()?;
    // Exit 1 is a parse error; 3 means lint problems only.
    let code = out.status.and_then(|s| s.code());
    ensure!(matches!(code, Some(0 | 3)), "promtool failed: {out}");
    // Weave's name, kept for its dashboards: a gauge with a "_count" suffix.
    let inherited = "weave_ipam_unreachable_count non-histogram and non-summary metrics \
                     should not have \"_count\" suffix";
    Ok(format!("{}\n{}", out.stdout, out.stderr)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != inherited)
        .map(str::to_owned)
        .collect())
}

/// The value of the sample `name` (with labels, exactly as written) in an exposition.
fn sample(metrics: &str, name: &str) -> Option<String> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ').map(str::to_owned))
}

#[test]
fn http_paths_status_listener_and_metrics() {
    run_test("wlst", |net| {
        let h1 = net.host(1)?;
        let h2 = net.host(2)?;
        let h3 = net.host(3)?;
        let sock = h1.run_dir().join("weave-test.sock");
        let sock_url = format!("unix://{}", sock.display());
        h1.launch_args(&[
            "--nickname",
            "host1",
            "--proxy",
            "-H",
            &sock_url,
            "--metrics-addr",
            "127.0.0.1:16789",
        ])?;
        // The status listener moved through Weave's environment variable.
        h2.weft_cmd(&["launch", "--nickname", "host2", &h1.addr().to_string()])?
            .env("WEAVE_STATUS_ADDR", "127.0.0.1:16782")
            .run_ok()?;
        // Switched off, and metrics alone on a unix socket.
        let metrics_sock = h3.run_dir().join("metrics.sock");
        h3.launch_args(&[
            "--no-dns",
            "--nickname",
            "host3",
            "--status-addr",
            "",
            "--metrics-addr",
            &metrics_sock.display().to_string(),
        ])?;
        // Host 2 dialled host 1, which sees the connection from an ephemeral port.
        wait_connection(net, &h2, &format!("{}:6783", h1.addr()))?;
        wait_until(
            "host 1 to see host 2's connection established",
            Duration::from_secs(30),
            Duration::from_millis(200),
            || {
                let s = report_f(net, &h1, "{{range .Router.Connections}}{{.State}} {{end}}")?;
                ensure!(s == "established ", "{s:?}");
                Ok(())
            },
        )?;

        // Weave's informational paths.
        ensure!(
            curl(&h1, &["http://127.0.0.1:6784/ipinfo/defaultsubnet"])?
                == (200, "10.32.0.0/12".into())
        );
        ensure!(curl(&h1, &["http://127.0.0.1:6784/ipinfo/tracker"])? == (200, "\n".into()));
        ensure!(
            curl(&h1, &["http://127.0.0.1:6784/proxyaddrs"])? == (200, format!("{sock_url}\n"))
        );
        ensure!(curl(&h2, &["http://127.0.0.1:6784/proxyaddrs"])?.0 == 404);
        ensure!(curl(&h1, &["http://127.0.0.1:6784/domain"])? == (200, "weave.local.".into()));
        ensure!(curl(&h3, &["http://127.0.0.1:6784/domain"])?.0 == 404);
        let summary = sh_ok(net, &h1, "weave status")?;
        ensure!(
            summary.contains(&format!(
                "\n        Service: proxy\n        Address: {sock_url}\n"
            )),
            "{summary}"
        );

        // /report: JSON on request, a template with one format parameter, else 400.
        let (code, body) = curl(&h1, &["http://127.0.0.1:6784/report"])?;
        ensure!(
            code == 400 && body.contains("must supply one format parameter"),
            "{code} {body}"
        );
        let (code, body) = report_http(&h1, 6784, "{{.Router.NickName}} {{len .Router.Peers}}")?;
        ensure!(code == 200 && body == "host1 2", "{code} {body:?}");
        let (code, body) = report_http(&h1, 6784, "{{.Nope}}")?;
        ensure!(
            code == 400 && body.contains("can't evaluate field Nope"),
            "{code} {body}"
        );
        let (code, body) = curl(
            &h1,
            &[
                "-H",
                "Accept: application/json",
                "http://127.0.0.1:6784/report",
            ],
        )?;
        let v: serde_json::Value = serde_json::from_str(&body).with_context(|| body.clone())?;
        ensure!(
            code == 200 && v["Proxy"]["Addresses"][0] == sock_url.as_str(),
            "{body}"
        );

        // The status listener: the same reports, read-only.
        let (code, body) = curl(&h1, &["http://127.0.0.1:6782/status"])?;
        ensure!(code == 200 && body.contains("Name: "), "{code} {body}");
        ensure!(body == curl(&h1, &["http://127.0.0.1:6784/status"])?.1);
        for path in [
            "/status/peers",
            "/status/connections",
            "/status/targets",
            "/metrics",
        ] {
            let (code, _) = curl(&h1, &[&format!("http://127.0.0.1:6782{path}")])?;
            ensure!(code == 200, "GET 6782{path}: {code}");
        }
        let (code, body) = report_http(&h1, 6782, "{{.Router.Name}}")?;
        ensure!(code == 200 && body == h1.peer_name()?, "{code} {body}");
        let before = sh_ok(net, &h1, "weave status targets")?;
        for (method, path) in [
            ("POST", "/connect"),
            ("POST", "/forget"),
            ("POST", "/status"),
            ("DELETE", "/peer"),
            ("POST", "/ip/x"),
            ("POST", "/expose/10.32.9.9/12"),
        ] {
            let (code, _) = curl(
                &h1,
                &[
                    "-X",
                    method,
                    "-d",
                    "peer=192.0.2.99",
                    &format!("http://127.0.0.1:6782{path}"),
                ],
            )?;
            ensure!(
                matches!(code, 404 | 405),
                "{method} 6782{path} answered {code}"
            );
        }
        ensure!(
            sh_ok(net, &h1, "weave status targets")? == before,
            "targets changed"
        );
        ensure!(!sh_ok(net, &h1, "ip addr show weave")?.contains("10.32.9.9"));
        // The metrics-only listener.
        ensure!(curl(&h1, &["http://127.0.0.1:16789/metrics"])?.0 == 200);
        ensure!(curl(&h1, &["http://127.0.0.1:16789/status"])?.0 == 404);
        let sock = metrics_sock.display().to_string();
        let (code, body) = curl(&h3, &["--unix-socket", &sock, "http://weave/metrics"])?;
        ensure!(
            code == 200 && body.contains("\nweave_max_ips 1048576\n"),
            "{code} {body}"
        );
        ensure!(curl(&h3, &["--unix-socket", &sock, "http://weave/status"])?.0 == 404);
        // WEAVE_STATUS_ADDR moved h2's; --status-addr "" turned h3's off.
        ensure!(curl(&h2, &["http://127.0.0.1:16782/status"])?.0 == 200);
        for h in [&h2, &h3] {
            let out = Cmd::new("ip")
                .args([
                    "netns",
                    "exec",
                    h.ns(),
                    "curl",
                    "-s",
                    "http://127.0.0.1:6782/status",
                ])
                .timeout(Duration::from_secs(10))
                .run()?;
            // curl exit 7: connection refused.
            ensure!(
                out.status.and_then(|s| s.code()) == Some(7),
                "host {}: {out}",
                h.n()
            );
        }

        // Metrics: Weave's names and labels beside weft's, and promtool accepts them.
        h1.container_alloc("c1", &["net:default"])?;
        let metrics = curl(&h1, &["http://127.0.0.1:6784/metrics"])?.1;
        for (name, want) in [
            (
                r#"weave_connections{encryption="",state="established",type="fastdp"}"#,
                Some("1"),
            ),
            (
                r#"weave_connections{encryption="yes",state="established",type="fastdp"}"#,
                Some("0"),
            ),
            (r#"weave_ips{state="local-used"}"#, Some("1")),
            ("weave_max_ips", Some("1048576")),
            ("weave_ipam_unreachable_count", Some("0")),
            ("weave_ipam_unreachable_percentage", Some("0")),
            ("weave_ipam_pending_allocates", Some("0")),
            ("weave_ipam_pending_claims", Some("0")),
            ("weave_connection_terminations_total", None),
            ("weft_peers", Some("2")),
            ("weft_udp_rx_datagrams_total", None),
        ] {
            let got = sample(&metrics, name);
            ensure!(
                got.is_some() && want.is_none_or(|w| got.as_deref() == Some(w)),
                "{name}: {got:?}, want {want:?}\n{metrics}"
            );
        }
        ensure!(metrics.contains("# TYPE weave_connection_terminations_total counter\n"));
        eprintln!("$ curl /metrics\n{metrics}");
        let problems = promtool_problems(&metrics, net.dir())?;
        ensure!(problems.is_empty(), "promtool: {problems:#?}\n{metrics}");
        // The status listener serves the same exposition.
        let on_6782 = curl(&h1, &["http://127.0.0.1:6782/metrics"])?.1;
        ensure!(sample(&on_6782, "weave_max_ips").as_deref() == Some("1048576"));

        // A connection that ends is counted.
        h2.kill_router()?;
        wait_until(
            "host 1 to count the terminated connection",
            Duration::from_secs(40),
            Duration::from_millis(500),
            || {
                let m = curl(&h1, &["http://127.0.0.1:6784/metrics"])?.1;
                let n: u64 = sample(&m, "weave_connection_terminations_total")
                    .context("no terminations sample")?
                    .parse()?;
                let r = report_f(net, &h1, "{{.Router.TerminationCount}}")?;
                ensure!(n >= 1 && r == n.to_string(), "metric {n}, report {r}");
                Ok(())
            },
        )?;
        Ok(())
    });
}
