//! opsbench (measurement driver, needs root): what running weft costs a host (issue 15).
//!
//! - **Binary size**: the weft binary as built and stripped (`strip -o` to a temp file), and what
//!   `file` says about its linking.
//! - **Start-up time to a serving API**: `--runs` times, a fresh host namespace each (so the
//!   bridge and TAP are made every time): from spawning `weft launch` to the first `200` from
//!   `GET /status` on 127.0.0.1:6784 inside the namespace (polled every 2 ms by a thread that
//!   entered it). Median, min–max.
//! - **RSS**: the daemon's `VmRSS` (from `/proc/PID/status`) with one peer connected and idle for
//!   5 s, then after `--containers` containers (namespaces attached with `weft attach
//!   net:default`, each pinging a container on the peer once, so the MAC table and IPAM hold
//!   them) and 5 s more.
//!
//! Takes `flock /tmp/netbench.lock` around the measurements; prints a markdown table.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use weft_benches::{BenchLock, locate_weft};
use weft_sys::netns::NetNs;
use weft_tests::{Cmd, Host, TestNet, median, wait_established};

/// Operations bench: binary size, start-up time, memory.
#[derive(Debug, Parser)]
#[command(name = "opsbench")]
struct Args {
    /// Start-ups to time.
    #[arg(long, default_value_t = 10)]
    runs: u32,
    /// Containers for the loaded RSS figure.
    #[arg(long, default_value_t = 50)]
    containers: u32,
    /// Shared lock taken around the measurements.
    #[arg(long, default_value = "/tmp/netbench.lock")]
    lock: PathBuf,
    /// weft binary (default: $WEFT_BIN, else `weft` next to this executable, else
    /// target/release/weft).
    #[arg(long)]
    weft_bin: Option<PathBuf>,
}

fn main() {
    weft_tests::clean_up_on_signal();
    if let Err(e) = run(&Args::parse()) {
        eprintln!("opsbench: {e:?}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<()> {
    let bin = locate_weft(args.weft_bin.as_deref(), "opsbench")?;
    let (size, stripped, kind) = sizes(&bin)?;
    println!("weft binary: {}", bin.display());
    println!("| figure | value |\n|---|---|");
    println!("| binary size | {:.1} MiB ({size} bytes) |", mib(size));
    println!("| stripped | {:.1} MiB ({stripped} bytes) |", mib(stripped));
    println!("| linking | {kind} |");
    let _lock = BenchLock::take(&args.lock, "opsbench")?;
    let net = TestNet::with_weft_bin("ops", Some(bin.clone()))?;
    let mut times = Vec::new();
    for k in 1..=args.runs {
        let h = net.host(u8::try_from(k).context("too many runs")?)?;
        times.push(startup(&h)?);
        h.weft_ok(&["stop"])?;
    }
    let ms: Vec<f64> = times.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    let (lo, hi) = ms
        .iter()
        .fold((f64::MAX, 0.0f64), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
    println!(
        "| start-up to a serving API (median of {}) | {:.0} ms ({lo:.0}–{hi:.0}) |",
        args.runs,
        median(&ms).unwrap_or(f64::NAN)
    );
    drop(net);

    let net = TestNet::with_weft_bin("opsrss", Some(bin))?;
    let (h1, h2) = (net.host(1)?, net.host(2)?);
    h1.launch(&[])?;
    h2.launch(&[&h1])?;
    wait_established(&[&h1, &h2], Duration::from_secs(30))?;
    let peer = h2.container_alloc("p", &["net:default"])?;
    std::thread::sleep(Duration::from_secs(5));
    let idle = rss_kib(h1.router_pid()?)?;
    println!(
        "| RSS idle (one peer) | {:.1} MiB ({idle} KiB) |",
        f64::from(idle) / 1024.0
    );
    for i in 0..args.containers {
        let c = h1.container_alloc(&format!("c{i}"), &["net:default"])?;
        c.wait_ping(peer.ip(), Duration::from_secs(10))?;
    }
    std::thread::sleep(Duration::from_secs(5));
    let loaded = rss_kib(h1.router_pid()?)?;
    println!(
        "| RSS with {} containers | {:.1} MiB ({loaded} KiB) |",
        args.containers,
        f64::from(loaded) / 1024.0
    );
    Ok(())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Size, stripped size and `file`'s word on linking.
fn sizes(bin: &Path) -> Result<(u64, u64, String)> {
    let size = std::fs::metadata(bin)?.len();
    let tmp = std::env::temp_dir().join(format!("opsbench-strip-{}", std::process::id()));
    Cmd::new("strip")
        .arg("-o")
        .arg(&tmp)
        .arg(bin)
        .run_ok()
        .context("strip (binutils)")?;
    let stripped = std::fs::metadata(&tmp)?.len();
    let _ = std::fs::remove_file(&tmp);
    let file = Cmd::new("file").args(["-b"]).arg(bin).run_ok()?.stdout;
    let kind = file
        .split(", ")
        .find(|w| w.contains("linked"))
        .unwrap_or("?")
        .to_owned();
    Ok((size, stripped, kind))
}

/// From spawning `weft launch` on `h` to a `200` from `GET /status` there.
fn startup(h: &Host) -> Result<Duration> {
    let ns = NetNs::from_name(h.ns())?;
    let dir = h.run_dir().to_path_buf();
    let start = Instant::now();
    let mut launch = h
        .weft_cmd(&["launch", "--nickname", "ops"])?
        .spawn_to(&dir.join("launch.out"), &dir.join("launch.err"))?;
    let served = ns.run_in(move || -> Result<Duration> {
        loop {
            if status_ok() {
                return Ok(start.elapsed());
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!("no answer from GET /status within 30 s");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    })??;
    let st = launch.wait()?;
    if !st.success() {
        bail!(
            "weft launch failed ({st}): {}",
            std::fs::read_to_string(dir.join("launch.err")).unwrap_or_default()
        );
    }
    Ok(served)
}

/// Whether `GET /status` on 127.0.0.1:6784 (in the calling thread's namespace) answers 200.
fn status_ok() -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(
        &"127.0.0.1:6784".parse().expect("an address literal"),
        Duration::from_millis(200),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}

/// `VmRSS` of `pid`, in KiB.
fn rss_kib(pid: u32) -> Result<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}
