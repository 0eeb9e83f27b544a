//! proxybench (measurement driver, needs root and Docker): what the weft Docker API proxy costs
//! a docker client, against the same dockerd reached straight through its own socket.
//!
//! One host namespace runs a real dockerd and weft (router + proxy, `--no-default-ipalloc`),
//! built with the `weft-tests` harness. Measured, interleaved (direct and proxy alternate, so
//! drift hits both alike), while holding `flock /tmp/netbench.lock`:
//!
//! - `docker run --rm weft-bb true` wall time: direct; through the proxy without `WEAVE_CIDR`
//!   (pure pass-through); through the proxy with `WEAVE_CIDR=net:default` (allocate + attach +
//!   the waiter in the container). Median and min–max of `--runs` each.
//! - `docker cp C:/big - > /dev/null` of a `--cp-mib` MiB file: the tar stream straight from
//!   dockerd and through the proxy, median MB/s over `--cp-rounds`, and the CPU time the weft
//!   process spends per GB passed through.
//!
//! Prints a markdown table; `--out` gets the raw figures as JSON.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde_json::json;
use weft_benches::{BenchLock, cpu_seconds, locate_weft, spread, timed_docker};
use weft_tests::docker::{Dockerd, IMAGE, docker_cmd, launch_proxy};
use weft_tests::{TestNet, median};

/// Docker API proxy bench: added latency of `docker run` and `docker cp` throughput.
#[derive(Debug, Parser)]
#[command(name = "proxybench")]
struct Args {
    /// `docker run --rm` runs per variant.
    #[arg(long, default_value_t = 20)]
    runs: u32,
    /// Size of the file copied out with `docker cp` (MiB).
    #[arg(long, default_value_t = 500)]
    cp_mib: u32,
    /// `docker cp` rounds per path.
    #[arg(long, default_value_t = 3)]
    cp_rounds: u32,
    /// JSON output file (default `bench-results/proxybench-<unix time>.json`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Shared lock taken around the measurements.
    #[arg(long, default_value = "/tmp/netbench.lock")]
    lock: PathBuf,
    /// weft binary (default: $WEFT_BIN, else `weft` next to this executable, else
    /// target/release/weft, else target/debug/weft).
    #[arg(long)]
    weft_bin: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy)]
enum Variant {
    Direct,
    ProxyPass,
    ProxyJoin,
}

impl Variant {
    const ALL: [Self; 3] = [Self::Direct, Self::ProxyPass, Self::ProxyJoin];

    fn label(self) -> &'static str {
        match self {
            Self::Direct => "direct to dockerd",
            Self::ProxyPass => "proxy, not joined (no WEAVE_CIDR)",
            Self::ProxyJoin => "proxy, joined (WEAVE_CIDR=net:default)",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::ProxyPass => "proxy_pass",
            Self::ProxyJoin => "proxy_join",
        }
    }
}

fn main() {
    weft_tests::clean_up_on_signal();
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("proxybench: {e:?}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<()> {
    if args.runs == 0 || args.cp_rounds == 0 {
        bail!("--runs and --cp-rounds must be at least 1");
    }
    let weft_bin = locate_weft(args.weft_bin.as_deref(), "proxybench")?;
    eprintln!("proxybench: weft binary {}", weft_bin.display());
    let net = TestNet::with_weft_bin("pbench", Some(weft_bin.clone()))?;
    let h = net.host(1)?;
    let dockerd = Dockerd::start(&h)?;
    let res = (|| {
        let proxy = launch_proxy(&h, &dockerd, &[], &[])?;
        measure(args, &dockerd, &proxy, h.router_pid()?)
    })();
    if res.is_err() {
        eprintln!("{}", net.logs_report(30));
    }
    drop(dockerd);
    let (lat, cp) = res?;

    let table = render(args, &lat, &cp);
    println!("{table}");
    let out = args.out.clone().unwrap_or_else(|| {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        PathBuf::from(format!("bench-results/proxybench-{t}.json"))
    });
    let doc = json!({
        "suite": {
            "runs": args.runs,
            "cp_mib": args.cp_mib,
            "cp_rounds": args.cp_rounds,
            "weft_bin": weft_bin.display().to_string(),
            "docker": weft_tests::Cmd::new(weft_tests::docker::DOCKER).arg("--version").run().map(|o| o.stdout.trim().to_owned()).unwrap_or_default(),
            "nproc": std::thread::available_parallelism().map_or(0, |n| n.get()),
        },
        "run_ms": Variant::ALL.iter().zip(&lat).map(|(v, xs)| (v.key().to_owned(), json!(xs))).collect::<serde_json::Map<_, _>>(),
        "cp_mb_per_s": { "direct": cp.direct, "proxy": cp.proxy },
        "cp_weft_cpu_s_per_gb": cp.weft_cpu_s_per_gb,
        "table_markdown": table,
    });
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(&out, serde_json::to_string_pretty(&doc)?)
        .with_context(|| format!("writing {}", out.display()))?;
    eprintln!("proxybench: wrote {}", out.display());
    Ok(())
}

/// `docker cp` figures.
#[derive(Debug, Default)]
struct Copies {
    /// MB/s straight from dockerd.
    direct: Vec<f64>,
    /// MB/s through the proxy.
    proxy: Vec<f64>,
    /// CPU seconds the weft process spent per GB passed through.
    weft_cpu_s_per_gb: Vec<f64>,
}

type Measured = ([Vec<f64>; 3], Copies);

fn measure(args: &Args, dockerd: &Dockerd, proxy: &Path, weft_pid: u32) -> Result<Measured> {
    let direct = dockerd.socket().to_path_buf();
    let sock_for = |v: Variant| match v {
        Variant::Direct => direct.as_path(),
        _ => proxy,
    };
    let run_args = |v: Variant| -> Vec<&'static str> {
        match v {
            Variant::ProxyJoin => {
                vec!["run", "--rm", "-e", "WEAVE_CIDR=net:default", IMAGE, "true"]
            }
            _ => vec!["run", "--rm", IMAGE, "true"],
        }
    };

    // The big file, written once (outside the lock).
    eprintln!("proxybench: writing {} MiB into a container", args.cp_mib);
    let script = format!(
        "dd if=/dev/urandom of=/tmp/big bs=1M count={} 2>/dev/null && echo done",
        args.cp_mib
    );
    docker_cmd(
        &direct,
        &["run", "--name", "big", IMAGE, "sh", "-c", &script],
    )
    .timeout(Duration::from_secs(600))
    .run_ok()?;

    let _lock = BenchLock::take(&args.lock, "proxybench")?;
    // Warm-up: one of each (the first allocation also settles IPAM).
    for v in Variant::ALL {
        timed_docker(sock_for(v), &run_args(v), None)?;
    }
    let mut lat: [Vec<f64>; 3] = Default::default();
    for i in 0..args.runs {
        // Rotate the order every round.
        for k in 0..3 {
            let idx = (k + i as usize) % 3;
            let v = Variant::ALL[idx];
            lat[idx].push(timed_docker(sock_for(v), &run_args(v), None)?);
        }
    }
    for (v, xs) in Variant::ALL.iter().zip(&lat) {
        eprintln!(
            "proxybench:   docker run --rm, {}: median {:.1} ms",
            v.label(),
            median(xs).unwrap_or(f64::NAN)
        );
    }

    let clk_tck: f64 = weft_tests::Cmd::new("getconf")
        .arg("CLK_TCK")
        .run_ok()
        .ok()
        .and_then(|o| o.stdout.trim().parse().ok())
        .unwrap_or(100.0);
    let mut cp = Copies::default();
    let bytes = u64::from(args.cp_mib) << 20;
    let cp_args = ["cp", "big:/tmp/big", "-"];
    let sink = Path::new("/dev/null");
    for round in 0..args.cp_rounds {
        let order: [(bool, &Path); 2] = if round % 2 == 0 {
            [(false, direct.as_path()), (true, proxy)]
        } else {
            [(true, proxy), (false, direct.as_path())]
        };
        for (via_proxy, sock) in order {
            let cpu0 = cpu_seconds(&[weft_pid], clk_tck)
                .with_context(|| format!("reading /proc/{weft_pid}/stat"))?;
            let ms = timed_docker(sock, &cp_args, Some(sink))?;
            let cpu = cpu_seconds(&[weft_pid], clk_tck)
                .with_context(|| format!("reading /proc/{weft_pid}/stat"))?
                - cpu0;
            let mbps = bytes as f64 / 1e6 / (ms / 1e3);
            eprintln!(
                "proxybench:   docker cp {} MiB {}: {:.0} MB/s",
                args.cp_mib,
                if via_proxy {
                    "through the proxy"
                } else {
                    "direct"
                },
                mbps
            );
            if via_proxy {
                cp.proxy.push(mbps);
                cp.weft_cpu_s_per_gb.push(cpu / (bytes as f64 / 1e9));
            } else {
                cp.direct.push(mbps);
            }
        }
    }
    Ok((lat, cp))
}

fn render(args: &Args, lat: &[Vec<f64>; 3], cp: &Copies) -> String {
    let base = median(&lat[0]).unwrap_or(f64::NAN);
    let mut s = format!(
        "| `docker run --rm {IMAGE} true` ({} runs each, interleaved) | wall ms, median (min–max) | added vs direct (median) |\n|---|---|---|\n",
        args.runs
    );
    for (v, xs) in Variant::ALL.iter().zip(lat) {
        let m = median(xs).unwrap_or(f64::NAN);
        let added = match v {
            Variant::Direct => "–".to_owned(),
            _ => format!("{:+.1} ms", m - base),
        };
        s.push_str(&format!(
            "| {} | {} | {added} |\n",
            v.label(),
            spread(xs, 1)
        ));
    }
    let (d, p) = (
        median(&cp.direct).unwrap_or(f64::NAN),
        median(&cp.proxy).unwrap_or(f64::NAN),
    );
    s.push_str(&format!(
        "\n| `docker cp C:/big - > /dev/null`, {} MiB ({} rounds each) | MB/s, median (min–max) | proxy / direct |\n|---|---|---|\n",
        args.cp_mib, args.cp_rounds
    ));
    s.push_str(&format!(
        "| direct to dockerd | {} | – |\n",
        spread(&cp.direct, 0)
    ));
    s.push_str(&format!(
        "| through the proxy | {} | {:.2} |\n",
        spread(&cp.proxy, 0),
        p / d
    ));
    s.push_str(&format!(
        "\nweft process CPU while passing the copy through: {} s per GB (median (min–max)).\n",
        spread(&cp.weft_cpu_s_per_gb, 2)
    ));
    s
}
