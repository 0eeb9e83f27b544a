//! `ipambench`: allocations per second through the router's HTTP API on one host, now that
//! every allocation is stored (written and fsynced) before it is answered.
//!
//! One host namespace, one router (`--weft-bin`, or the one `locate_weft` finds), its state
//! directory on the test net's disk. After a first allocation (consensus of one), each run
//! makes `--sequential` allocations one after the other, then `--concurrent` at once (one
//! thread and one connection each, all released together); each request opens its own
//! connection, as `weft attach` and `curl` do. Prints the rates of every run (concurrent
//! requests that fail are counted and left out of the rate) and the median, while holding
//! `flock /tmp/netbench.lock` (so other benches do not run at the same time).
//!
//! ```text
//! cargo build --release -p weft-cli -p weft-benches
//! sudo target/release/ipambench                      # this tree's router
//! sudo target/release/ipambench --weft-bin OLD/weft  # another build, same method
//! ```

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use clap::Parser;
use weft_benches::{BenchLock, locate_weft};
use weft_sys::netns::NetNs;
use weft_tests::TestNet;

#[derive(Debug, Parser)]
#[command(about = "IPAM allocations per second through the HTTP API, one host")]
struct Args {
    /// The weft binary to measure.
    #[arg(long)]
    weft_bin: Option<PathBuf>,
    /// Sequential allocations per run.
    #[arg(long, default_value_t = 1000)]
    sequential: usize,
    /// Concurrent allocations per run.
    #[arg(long, default_value_t = 300)]
    concurrent: usize,
    /// Runs.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Shared lock taken around the measurements.
    #[arg(long, default_value = "/tmp/netbench.lock")]
    lock: PathBuf,
}

fn main() {
    weft_tests::clean_up_on_signal();
    if let Err(e) = run(Args::parse()) {
        eprintln!("ipambench: {e:#}");
        std::process::exit(1);
    }
}

/// `POST /ip/{id}` on a fresh connection: the status code.
fn allocate(id: &str) -> Result<u16> {
    let mut s = TcpStream::connect("127.0.0.1:6784")?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        s,
        "POST /ip/{id} HTTP/1.1\r\nHost: 127.0.0.1:6784\r\nContent-Length: 0\r\n\
         Connection: close\r\n\r\n"
    )?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    reply
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no HTTP status in {reply:?}"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn run(args: Args) -> Result<()> {
    let weft = locate_weft(args.weft_bin.as_deref(), "ipambench")?;
    eprintln!("ipambench: measuring {}", weft.display());
    let net = TestNet::with_weft_bin("ipbench", Some(weft))?;
    let h = net.host(1)?;
    h.launch_args(&["--nickname", "bench"])?;
    let ns = NetNs::from_name(h.ns())?;
    let _lock = BenchLock::take(&args.lock, "ipambench")?;
    let (seq, conc) = (args.sequential, args.concurrent);
    let runs = args.runs.max(1);
    let rates = ns.run_in(move || -> Result<Vec<(f64, f64)>> {
        ensure!(allocate("warmup")? == 200, "the first allocation failed");
        let mut out = Vec::new();
        for r in 0..runs {
            let t = Instant::now();
            for i in 0..seq {
                let code = allocate(&format!("s{r}-{i}"))?;
                ensure!(code == 200, "sequential allocation {i}: HTTP {code}");
            }
            let sequential = seq as f64 / t.elapsed().as_secs_f64();
            let barrier = Barrier::new(conc + 1);
            let (t, failed) = std::thread::scope(|s| -> Result<(Duration, usize)> {
                let handles: Vec<_> = (0..conc)
                    .map(|i| {
                        let barrier = &barrier;
                        s.spawn(move || {
                            barrier.wait();
                            allocate(&format!("c{r}-{i}"))
                        })
                    })
                    .collect();
                barrier.wait();
                let t = Instant::now();
                let mut failed = 0;
                for h in handles {
                    let got = h.join().map_err(|_| anyhow::anyhow!("thread panicked"))?;
                    if !matches!(got, Ok(200)) {
                        failed += 1;
                    }
                }
                Ok((t.elapsed(), failed))
            })?;
            if failed > 0 {
                eprintln!("run {r}: {failed} of {conc} concurrent allocations failed");
            }
            let concurrent = (conc - failed) as f64 / t.as_secs_f64();
            eprintln!(
                "run {r}: {seq} sequential at {sequential:.0}/s, {conc} concurrent at \
                 {concurrent:.0}/s"
            );
            out.push((sequential, concurrent));
        }
        Ok(out)
    })??;
    let seq_med = median(rates.iter().map(|r| r.0).collect());
    let conc_med = median(rates.iter().map(|r| r.1).collect());
    println!(
        "ipambench: median of {runs} runs: {seq} sequential allocations {seq_med:.0}/s, {conc} \
         concurrent {conc_med:.0}/s"
    );
    Ok(())
}
