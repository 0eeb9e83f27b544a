//! dnsbench (measurement driver, needs root; `--docker` needs Docker too): how fast weaveDNS
//! answers, and how soon a new container's name resolves on another host.
//!
//! Built with the `weft-tests` harness, holding `flock /tmp/netbench.lock`:
//!
//! - host 1 runs weft (`--no-proxy`, DNS on its underlay address, `--dns-rate-limit 0` so one
//!   client address may go flat out), host 2 is the client namespace, host 200 runs the fake
//!   upstream resolver (python3, in the test namespace);
//! - `dnsbench client` (this binary, re-run inside host 2's namespace) sends A queries in a
//!   closed loop from `--threads` sockets for `--secs` seconds and reports answers per second
//!   and the latency percentiles. Measured: a weave name with 1 thread (latency) and with
//!   `--threads` threads (queries per second); a forwarded name with 1 thread; the fake upstream
//!   asked directly (the baseline the forwarded figure contains);
//! - `--docker`: two hosts with dockerd and the proxy; `--runs` times, `docker run -d -h
//!   tN.weave.local` on host 1 while `dnsbench poll` in host 2's namespace asks host 2's DNS
//!   every 5 ms: the time from starting `docker run` to the first answer (median, min, max).
//!
//! Prints a markdown table; `--out` gets the raw figures as JSON.

use std::fs;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use serde_json::{Value, json};
use weft_benches::{BenchLock, locate_weft};
use weft_tests::docker::{Dockerd, IMAGE, docker_via, launch_proxy};
use weft_tests::mesh::launch_with;
use weft_tests::{Cmd, TestNet, median, wait_established};

/// weaveDNS bench: queries per second, latency, and docker run → resolvable elsewhere.
#[derive(Debug, Parser)]
#[command(name = "dnsbench")]
struct Args {
    #[command(subcommand)]
    mode: Option<Mode>,
    /// Seconds per load run.
    #[arg(long, default_value_t = 5)]
    secs: u64,
    /// Client threads (sockets) for the queries-per-second run.
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// Also measure docker run → resolvable on another host (needs Docker).
    #[arg(long)]
    docker: bool,
    /// Containers started for the docker measurement.
    #[arg(long, default_value_t = 20)]
    runs: u32,
    /// JSON output file (default `bench-results/dnsbench-<unix time>.json`).
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

#[derive(Debug, Subcommand)]
enum Mode {
    /// (internal) Closed-loop A queries; prints JSON figures.
    Client {
        #[arg(long)]
        server: SocketAddr,
        #[arg(long)]
        name: String,
        #[arg(long, default_value_t = 1)]
        threads: usize,
        #[arg(long, default_value_t = 5)]
        secs: u64,
    },
    /// (internal) Asks every 5 ms until `name` resolves; prints the Unix time in ms.
    Poll {
        #[arg(long)]
        server: SocketAddr,
        #[arg(long)]
        name: String,
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
}

fn main() {
    weft_tests::clean_up_on_signal();
    let args = Args::parse();
    let result = match &args.mode {
        Some(Mode::Client {
            server,
            name,
            threads,
            secs,
        }) => client(*server, name, *threads, Duration::from_secs(*secs)),
        Some(Mode::Poll {
            server,
            name,
            timeout,
        }) => poll(*server, name, Duration::from_secs(*timeout)),
        None => run(&args),
    };
    if let Err(e) = result {
        eprintln!("dnsbench: {e:?}");
        std::process::exit(1);
    }
}

/// One query and its answer's addresses (empty: none, or no answer within `timeout`).
fn ask(sock: &UdpSocket, name: &str, id: u16, buf: &mut [u8]) -> Result<Option<usize>> {
    let q = weft_dns::query::a_query(name, id).map_err(anyhow::Error::msg)?;
    sock.send(&q)?;
    loop {
        match sock.recv(buf) {
            Ok(n) => match weft_dns::query::a_answers(&buf[..n], id) {
                Ok((_, addrs)) => return Ok(Some(addrs.len())),
                Err(_) => continue, // a late answer to an earlier query
            },
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn client(server: SocketAddr, name: &str, threads: usize, secs: Duration) -> Result<()> {
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let name = name.to_owned();
            std::thread::spawn(move || -> Result<(Vec<u32>, u64)> {
                let sock = UdpSocket::bind("0.0.0.0:0")?;
                sock.connect(server)?;
                sock.set_read_timeout(Some(Duration::from_secs(1)))?;
                let mut buf = vec![0u8; 4096];
                let mut lat = Vec::new();
                let mut lost = 0;
                let mut id = (t as u16).wrapping_mul(7919);
                let end = Instant::now() + secs;
                while Instant::now() < end {
                    id = id.wrapping_add(1);
                    let t0 = Instant::now();
                    match ask(&sock, &name, id, &mut buf)? {
                        Some(n) if n > 0 => lat.push(t0.elapsed().as_micros() as u32),
                        _ => lost += 1,
                    }
                }
                Ok((lat, lost))
            })
        })
        .collect();
    let mut lat = Vec::new();
    let mut lost = 0;
    for h in handles {
        let (l, x) = h
            .join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
        lat.extend(l);
        lost += x;
    }
    let wall = started.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return f64::NAN;
        }
        let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
        f64::from(lat[i]) / 1000.0
    };
    println!(
        "{}",
        json!({
            "answered": lat.len(),
            "lost": lost,
            "qps": lat.len() as f64 / wall,
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
        })
    );
    Ok(())
}

fn poll(server: SocketAddr, name: &str, timeout: Duration) -> Result<()> {
    let sock = UdpSocket::bind("0.0.0.0:0")?;
    sock.connect(server)?;
    sock.set_read_timeout(Some(Duration::from_millis(50)))?;
    let mut buf = vec![0u8; 4096];
    let end = Instant::now() + timeout;
    let mut id = 1u16;
    while Instant::now() < end {
        id = id.wrapping_add(1);
        if let Some(n) = ask(&sock, name, id, &mut buf)? {
            if n > 0 {
                println!("{}", unix_ms());
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    bail!("{name} did not resolve within {timeout:?}")
}

fn unix_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// Runs `dnsbench ARGS` inside namespace `ns`; returns its stdout.
fn in_ns(ns: &str, args: &[String], limit: Duration) -> Result<String> {
    let me = std::env::current_exe()?;
    Ok(Cmd::new("ip")
        .args(["netns", "exec", ns])
        .arg(me)
        .args(args)
        .timeout(limit)
        .run_ok()?
        .stdout)
}

fn load(ns: &str, server: &str, name: &str, threads: usize, secs: u64) -> Result<Value> {
    let args: Vec<String> = [
        "client",
        "--server",
        &format!("{server}:53"),
        "--name",
        name,
        "--threads",
        &threads.to_string(),
        "--secs",
        &secs.to_string(),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let out = in_ns(ns, &args, Duration::from_secs(secs + 30))?;
    serde_json::from_str(out.trim()).with_context(|| format!("client printed {out:?}"))
}

fn run(args: &Args) -> Result<()> {
    let weft_bin = locate_weft(args.weft_bin.as_deref(), "dnsbench")?;
    eprintln!("dnsbench: weft binary {}", weft_bin.display());
    let _lock = BenchLock::take(&args.lock, "dnsbench")?;
    let mut doc = json!({
        "suite": {
            "secs": args.secs,
            "threads": args.threads,
            "weft_bin": weft_bin.display().to_string(),
            "nproc": std::thread::available_parallelism().map_or(0, |n| n.get()),
        }
    });
    let mut table = String::from(
        "| measurement | answers/s | p50 ms | p99 ms | lost |\n|---|---|---|---|---|\n",
    );
    {
        let net = TestNet::with_weft_bin("dnsb", Some(weft_bin.clone()))?;
        let (h1, h2) = (net.host(1)?, net.host(2)?);
        let up = net.host(200)?;
        let _upstream = weft_tests::dns::FakeUpstream::start(up.ns(), net.dir(), "127.0.0.1")?;
        let resolv = net.dir().join("resolv.conf");
        fs::write(&resolv, "nameserver 192.0.2.210\n")?;
        let server = h1.addr().to_string();
        launch_with(
            &h1,
            &[
                "--no-proxy",
                "--dns-listen-address",
                &format!("{server}:53"),
                "--dns-rate-limit",
                "0",
                "--resolv-conf",
                &resolv.display().to_string(),
            ],
            &[],
        )?;
        h1.weft_ok(&[
            "dns-add",
            "10.32.9.9",
            "10.32.9.10",
            "-h",
            "bench.weave.local",
        ])?;
        let runs = [
            (
                "weave name, 1 client",
                server.as_str(),
                "bench.weave.local",
                1,
            ),
            (
                "weave name, N clients",
                server.as_str(),
                "bench.weave.local",
                args.threads,
            ),
            (
                "forwarded name, 1 client",
                server.as_str(),
                "www.example.test",
                1,
            ),
            (
                "fake upstream asked directly, 1 client",
                "192.0.2.210",
                "www.example.test",
                1,
            ),
        ];
        let mut figures = serde_json::Map::new();
        for (label, srv, name, threads) in runs {
            let v = load(h2.ns(), srv, name, threads, args.secs)?;
            let label = label.replace('N', &args.threads.to_string());
            table.push_str(&format!(
                "| {label} | {:.0} | {:.3} | {:.3} | {} |\n",
                v["qps"].as_f64().unwrap_or(f64::NAN),
                v["p50_ms"].as_f64().unwrap_or(f64::NAN),
                v["p99_ms"].as_f64().unwrap_or(f64::NAN),
                v["lost"]
            ));
            figures.insert(label, v);
        }
        doc["queries"] = Value::Object(figures);
    }
    if args.docker {
        let (xs, run_ms) = docker_to_resolvable(&weft_bin, args.runs)?;
        let m = median(&xs).unwrap_or(f64::NAN);
        let min = xs.iter().copied().fold(f64::INFINITY, f64::min);
        let max = xs.iter().copied().fold(0.0, f64::max);
        table.push_str(&format!(
            "\n`docker run` on host 1 → name resolves on host 2 ({} runs): median {m:.0} ms \
             (min {min:.0}, max {max:.0}); `docker run -d` itself: median {:.0} ms\n",
            xs.len(),
            median(&run_ms).unwrap_or(f64::NAN)
        ));
        doc["docker_run_to_resolvable_ms"] = json!(xs);
        doc["docker_run_ms"] = json!(run_ms);
    }
    println!("{table}");
    doc["table_markdown"] = json!(table);
    let out = args.out.clone().unwrap_or_else(|| {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        PathBuf::from(format!("bench-results/dnsbench-{t}.json"))
    });
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(&out, serde_json::to_string_pretty(&doc)?)
        .with_context(|| format!("writing {}", out.display()))?;
    eprintln!("dnsbench: wrote {}", out.display());
    Ok(())
}

/// (docker run start → resolvable on host 2, docker run duration), in ms, `runs` times.
fn docker_to_resolvable(weft_bin: &std::path::Path, runs: u32) -> Result<(Vec<f64>, Vec<f64>)> {
    let net = TestNet::with_weft_bin("dnsbd", Some(weft_bin.to_path_buf()))?;
    let (h1, h2) = (net.host(1)?, net.host(2)?);
    let d1 = Dockerd::start(&h1)?;
    let d2 = Dockerd::start(&h2)?;
    let res = (|| {
        let sock1 = launch_proxy(&h1, &d1, &[], &[&h2])?;
        launch_proxy(&h2, &d2, &[], &[&h1])?;
        wait_established(&[&h1, &h2], Duration::from_secs(30))?;
        h1.weft_ok(&["expose", "net:10.32.1.0/24"])?;
        h2.weft_ok(&["expose", "net:10.32.1.0/24"])?;
        let dns2 = weft_tests::wait_until(
            "host 2's DNS address",
            Duration::from_secs(10),
            Duration::from_millis(100),
            || weft_tests::dns::dns_address(&h2),
        )?;
        let mut xs = Vec::new();
        let mut run_ms = Vec::new();
        for i in 0..runs {
            let name = format!("t{i}");
            let fqdn = format!("{name}.weave.local");
            let me = std::env::current_exe()?;
            let mut poller = Cmd::new("ip")
                .args(["netns", "exec", h2.ns()])
                .arg(me)
                .args(["poll", "--server", &format!("{dns2}:53"), "--name", &fqdn])
                .spawn_to(&net.dir().join("poll.out"), &net.dir().join("poll.err"))?;
            std::thread::sleep(Duration::from_millis(100));
            let t0 = unix_ms();
            let started = Instant::now();
            docker_via(
                &sock1,
                &[
                    "run",
                    "-d",
                    "--name",
                    &name,
                    "-h",
                    &fqdn,
                    "-e",
                    "WEAVE_CIDR=net:10.32.1.0/24",
                    IMAGE,
                    "sleep",
                    "600",
                ],
            )?
            .ok()?;
            run_ms.push(started.elapsed().as_secs_f64() * 1000.0);
            let status = poller.wait()?;
            let out = fs::read_to_string(net.dir().join("poll.out"))?;
            if !status.success() {
                bail!(
                    "poll for {fqdn} failed: {}",
                    fs::read_to_string(net.dir().join("poll.err"))?
                );
            }
            let t1: f64 = out
                .trim()
                .parse()
                .with_context(|| format!("poll printed {out:?}"))?;
            xs.push(t1 - t0);
            docker_via(&sock1, &["rm", "-f", &name])?.ok()?;
        }
        Ok((xs, run_ms))
    })();
    drop(d2);
    drop(d1);
    if res.is_err() {
        eprintln!("{}", net.logs_report(30));
    }
    res
}
