//! pluginbench (measurement driver, needs root, Docker and the CNI reference plugins): what
//! weft's plugins cost a runtime.
//!
//! - CNI: one host namespace with a weft router; `weave-net` (weft's IPAM) run as a runtime
//!   runs it, ADD into a pod namespace then DEL (with the ADD result as `prevResult`),
//!   `--cni-runs` times. The timing loop runs inside the host namespace (this executable
//!   re-run there with the hidden `--cni-loop`), so each figure is one plugin process from
//!   spawn to exit, nothing of `ip netns exec`.
//! - Docker: another host with a private mount namespace, a stock dockerd and `weave launch
//!   --plugin` (router, proxy and plugin); `docker run --rm weft-bb true` wall time straight to
//!   dockerd on the default bridge, with `--net=weave` (the plugin: IPAM, endpoint, join, and
//!   release on removal), and through the proxy with `WEAVE_CIDR=net:default` (allocate, attach,
//!   the waiter in the container), `--docker-runs` each, interleaved in rotating order.
//!
//! Measurements hold `flock /tmp/netbench.lock`. Prints a markdown table; `--out` gets the raw
//! figures as JSON.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use serde_json::{Value, json};
use weft_benches::{BenchLock, locate_weft, spread, timed_docker};
use weft_tests::cni::{Plugins, parse_answer, with_prev_result};
use weft_tests::docker::{DOCKER, IMAGE};
use weft_tests::private::PrivateHost;
use weft_tests::{TestNet, median};

/// The network configuration `weft setup` writes, less `portmap` (not measured here).
const CONF: &str = r#"{"cniVersion":"1.0.0","name":"weave","type":"weave-net","hairpinMode":true}"#;

/// CNI ADD/DEL latency and `docker run` with the network plugin against the proxy.
#[derive(Debug, Parser)]
#[command(name = "pluginbench")]
struct Args {
    /// CNI ADD+DEL rounds.
    #[arg(long, default_value_t = 50)]
    cni_runs: u32,
    /// `docker run --rm` runs per variant.
    #[arg(long, default_value_t = 20)]
    docker_runs: u32,
    /// JSON output file (default `bench-results/pluginbench-<unix time>.json`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Shared lock taken around the measurements.
    #[arg(long, default_value = "/tmp/netbench.lock")]
    lock: PathBuf,
    /// weft binary (default: $WEFT_BIN, else `weft` next to this executable, else
    /// target/release/weft, else target/debug/weft).
    #[arg(long)]
    weft_bin: Option<PathBuf>,
    /// Internal: the timing loop, run inside the host namespace (see the module docs).
    #[arg(long, hide = true, num_args = 3, value_names = ["PLUGIN", "CNI_PATH", "NETNS"])]
    cni_loop: Option<Vec<String>>,
}

fn main() {
    weft_tests::clean_up_on_signal();
    let args = Args::parse();
    let r = match &args.cni_loop {
        Some(v) => cni_loop(&v[0], &v[1], &v[2], args.cni_runs),
        None => run(&args),
    };
    if let Err(e) = r {
        eprintln!("pluginbench: {e:?}");
        std::process::exit(1);
    }
}

/// The `docker run` variants.
#[derive(Debug, Clone, Copy)]
enum Variant {
    Direct,
    Plugin,
    Proxy,
}

impl Variant {
    const ALL: [Self; 3] = [Self::Direct, Self::Plugin, Self::Proxy];

    fn label(self) -> &'static str {
        match self {
            Self::Direct => "direct, default bridge only",
            Self::Plugin => "`--net=weave` (network plugin)",
            Self::Proxy => "proxy, `WEAVE_CIDR=net:default`",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Plugin => "plugin",
            Self::Proxy => "proxy",
        }
    }
}

fn run(args: &Args) -> Result<()> {
    ensure!(
        args.cni_runs > 0 && args.docker_runs > 0,
        "--cni-runs and --docker-runs must be at least 1"
    );
    let weft_bin = locate_weft(args.weft_bin.as_deref(), "pluginbench")?;
    eprintln!("pluginbench: weft binary {}", weft_bin.display());
    let net = TestNet::with_weft_bin("plbench", Some(weft_bin.clone()))?;
    let res = measure(args, &net);
    if res.is_err() {
        eprintln!("{}", net.logs_report(30));
    }
    let (add, del, docker) = res?;

    let table = render(args, &add, &del, &docker);
    println!("{table}");
    let out = args.out.clone().unwrap_or_else(|| {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        PathBuf::from(format!("bench-results/pluginbench-{t}.json"))
    });
    let doc = json!({
        "suite": {
            "cni_runs": args.cni_runs,
            "docker_runs": args.docker_runs,
            "weft_bin": weft_bin.display().to_string(),
            "docker": weft_tests::Cmd::new(DOCKER).arg("--version").run().map(|o| o.stdout.trim().to_owned()).unwrap_or_default(),
            "nproc": std::thread::available_parallelism().map_or(0, |n| n.get()),
        },
        "cni_add_ms": add,
        "cni_del_ms": del,
        "docker_run_ms": Variant::ALL.iter().zip(&docker).map(|(v, xs)| (v.key().to_owned(), json!(xs))).collect::<serde_json::Map<_, _>>(),
        "table_markdown": table,
    });
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(&out, serde_json::to_string_pretty(&doc)?)
        .with_context(|| format!("writing {}", out.display()))?;
    eprintln!("pluginbench: wrote {}", out.display());
    Ok(())
}

type Measured = (Vec<f64>, Vec<f64>, [Vec<f64>; 3]);

fn measure(args: &Args, net: &TestNet) -> Result<Measured> {
    // CNI host: a router, a pod namespace.
    let h1 = net.host(1)?;
    h1.launch(&[])?;
    let plugins = Plugins::new(net)?;
    let pod = net.netns("pod")?;
    // Docker host: its own mount namespace, dockerd, weft with the plugin and the proxy.
    let h2 = net.host(2)?;
    let mut p2 = PrivateHost::start(&h2)?;
    p2.start_dockerd()?;
    p2.sh_ok("weave launch --plugin")?;
    let docker_sock = p2.run_root().join("docker.sock");
    let proxy_sock = p2.run_root().join("weave/weave.sock");
    weft_tests::wait_until(
        "the Docker network 'weave'",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let out = p2.sh_ok(&format!("{DOCKER} network ls --format '{{{{.Name}}}}'"))?;
            ensure!(out.lines().any(|l| l == "weave"), "{out}");
            Ok(())
        },
    )?;

    let _lock = BenchLock::take(&args.lock, "pluginbench")?;
    eprintln!("pluginbench: CNI ADD/DEL x {}", args.cni_runs);
    let exe = std::env::current_exe()?;
    let out = weft_tests::Cmd::new("ip")
        .args(["netns", "exec", h1.ns()])
        .arg(&exe)
        .arg("--cni-runs")
        .arg(args.cni_runs.to_string())
        .arg("--cni-loop")
        .arg(plugins.dir().join("weave-net"))
        .arg(plugins.cni_path())
        .arg(format!("/run/netns/{pod}"))
        .timeout(Duration::from_secs(600))
        .run_ok()?;
    let v: Value = serde_json::from_str(out.stdout.trim())
        .with_context(|| format!("the CNI loop printed {:?}", out.stdout))?;
    let floats = |k: &str| -> Vec<f64> {
        v[k].as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_f64)
            .collect()
    };
    let (add, del) = (floats("add_ms"), floats("del_ms"));
    ensure!(
        add.len() == args.cni_runs as usize && del.len() == add.len(),
        "{v}"
    );

    eprintln!(
        "pluginbench: docker run --rm x {} per variant",
        args.docker_runs
    );
    let run = |v: Variant| -> Result<f64> {
        let (sock, extra): (&Path, &[&str]) = match v {
            Variant::Direct => (&docker_sock, &[]),
            Variant::Plugin => (&docker_sock, &["--net=weave"]),
            Variant::Proxy => (&proxy_sock, &["-e", "WEAVE_CIDR=net:default"]),
        };
        let mut a = vec!["run", "--rm"];
        a.extend_from_slice(extra);
        a.extend([IMAGE, "true"]);
        timed_docker(sock, &a, None)
    };
    // Warm-up: one of each (the first allocation also settles IPAM).
    for v in Variant::ALL {
        run(v)?;
    }
    let mut docker: [Vec<f64>; 3] = Default::default();
    for i in 0..args.docker_runs as usize {
        for k in 0..3 {
            let idx = (k + i) % 3;
            docker[idx].push(run(Variant::ALL[idx])?);
        }
    }
    Ok((add, del, docker))
}

/// Inside the host namespace: `runs` rounds of ADD then DEL of `plugin` for namespace
/// `netns`; prints `{"add_ms": [...], "del_ms": [...]}`.
fn cni_loop(plugin: &str, cni_path: &str, netns: &str, runs: u32) -> Result<()> {
    let mut add = Vec::new();
    let mut del = Vec::new();
    for i in 0..runs {
        let id = format!("bench{i}");
        let (ms, out) = invoke(plugin, cni_path, "ADD", &id, netns, CONF)?;
        add.push(ms);
        let result = parse_answer(&out)?.context("ADD printed nothing")?;
        let conf = with_prev_result(CONF, &result)?;
        let (ms, _) = invoke(plugin, cni_path, "DEL", &id, netns, &conf)?;
        del.push(ms);
    }
    println!("{}", json!({ "add_ms": add, "del_ms": del }));
    Ok(())
}

/// One plugin run as a runtime does it: (wall ms from spawn to exit, stdout).
fn invoke(
    plugin: &str,
    cni_path: &str,
    command: &str,
    id: &str,
    netns: &str,
    conf: &str,
) -> Result<(f64, String)> {
    let t = Instant::now();
    let mut child = Command::new(plugin)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {plugin}"))?;
    child
        .stdin
        .take()
        .context("plugin stdin")?
        .write_all(conf.as_bytes())?;
    let out = child.wait_with_output()?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{command} failed ({}): {stdout} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok((ms, stdout))
}

fn render(args: &Args, add: &[f64], del: &[f64], docker: &[Vec<f64>; 3]) -> String {
    let mut s = format!(
        "| CNI `weave-net` (weft IPAM), {} rounds | ms, median (min–max) |\n|---|---|\n",
        args.cni_runs
    );
    s.push_str(&format!(
        "| ADD | {} |\n| DEL | {} |\n",
        spread(add, 1),
        spread(del, 1)
    ));
    let base = median(&docker[0]).unwrap_or(f64::NAN);
    s.push_str(&format!(
        "\n| `docker run --rm {IMAGE} true` ({} runs each, interleaved) | wall ms, median (min–max) | added vs direct (median) |\n|---|---|---|\n",
        args.docker_runs
    ));
    for (v, xs) in Variant::ALL.iter().zip(docker) {
        let added = match v {
            Variant::Direct => "–".to_owned(),
            _ => format!("{:+.1} ms", median(xs).unwrap_or(f64::NAN) - base),
        };
        s.push_str(&format!(
            "| {} | {} | {added} |\n",
            v.label(),
            spread(xs, 1)
        ));
    }
    s
}
