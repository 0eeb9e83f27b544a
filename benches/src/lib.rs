//! What the benchmark drivers (`netbench`, `proxybench`, `pluginbench`, ...) share: the
//! machine-wide bench lock, finding the weft binary under test, a process's CPU time, timing one
//! docker CLI command, and the median (min–max) cell of a table.

use std::fs;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use weft_tests::median;
use weft_tests::net::target_dir;

/// The weft binary to measure: `explicit` (`--weft-bin`), else `$WEFT_BIN`, else `weft` next to
/// this executable, else the target directory's release, then debug build (with a warning,
/// prefixed by `who`).
pub fn locate_weft(explicit: Option<&Path>, who: &str) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return fs::canonicalize(p).with_context(|| format!("--weft-bin {}", p.display()));
    }
    if let Some(p) = std::env::var_os("WEFT_BIN") {
        return fs::canonicalize(&p).with_context(|| format!("WEFT_BIN={p:?}"));
    }
    // Next to this executable (`target*/release/`), then the usual target directory.
    if let Some(dir) = std::env::current_exe()?.parent() {
        let p = dir.join("weft");
        if p.is_file() {
            return Ok(p);
        }
    }
    if let Some(t) = target_dir() {
        for profile in ["release", "debug"] {
            let p = t.join(profile).join("weft");
            if p.is_file() {
                if profile == "debug" {
                    eprintln!(
                        "{who}: WARNING: using the debug build; build the release one with \
                         `cargo build --release -p weft-cli` for meaningful figures"
                    );
                }
                return Ok(p);
            }
        }
    }
    bail!("no weft binary: build it (`cargo build --release -p weft-cli`) or pass --weft-bin")
}

/// User plus system CPU seconds of the processes `pids` (`None` if one cannot be read).
pub fn cpu_seconds(pids: &[u32], clk_tck: f64) -> Option<f64> {
    let mut ticks = 0u64;
    for pid in pids {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after "(comm) ": state is field 3, utime/stime are fields 14/15.
        let rest = stat.rsplit_once(") ")?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        ticks += f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    }
    Some(ticks as f64 / clk_tck)
}

/// The machine's CPU time so far, from the `cpu` line of `/proc/stat`: (all ticks, idle ticks),
/// I/O wait counted as idle. Two readings give the share of the machine that was busy in
/// between ([`busy_pct`]).
pub fn machine_ticks() -> Option<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    parse_machine_ticks(&stat)
}

fn parse_machine_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]: guest time is already
    // inside user and nice.
    let all = f.iter().take(8).sum();
    let idle = f.get(3)? + f.get(4)?;
    Some((all, idle))
}

/// Percent of the machine busy between two [`machine_ticks`] readings.
pub fn busy_pct(before: (u64, u64), after: (u64, u64)) -> Option<f64> {
    let all = after.0.checked_sub(before.0)?;
    let idle = after.1.checked_sub(before.1)?;
    (all > 0).then(|| (all - idle.min(all)) as f64 * 100.0 / all as f64)
}

/// `flock LOCK` held by a helper process for as long as this value lives.
pub struct BenchLock {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl BenchLock {
    /// Waits (at most 30 minutes) for `flock path`; `who` names the caller in messages.
    pub fn take(path: &Path, who: &str) -> Result<Self> {
        let started = Instant::now();
        let mut child = Command::new("flock")
            .args(["-w", "1800"])
            .arg(path)
            .args(["sh", "-c", "echo locked; exec cat >/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting flock")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("flock stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        if line.trim() != "locked" {
            let _ = child.kill();
            let _ = child.wait();
            bail!("could not take {} within 30 minutes", path.display());
        }
        if started.elapsed() > Duration::from_secs(1) {
            eprintln!(
                "{who}: waited {:.0?} for {}",
                started.elapsed(),
                path.display()
            );
        }
        Ok(Self { child, stdin })
    }
}

impl Drop for BenchLock {
    fn drop(&mut self) {
        // Closing stdin ends `cat`, which releases the lock.
        if let Some(mut s) = self.stdin.take() {
            let _ = s.flush();
        }
        let _ = self.child.wait();
    }
}

/// Wall time of one docker CLI command against the daemon (or proxy) on `sock` (ms), its stdout
/// to `stdout` (default `/dev/null`); fails if it fails. Waits with a blocking `wait` (no
/// polling), so the figure is the command's own.
pub fn timed_docker(sock: &Path, args: &[&str], stdout: Option<&Path>) -> Result<f64> {
    let mut c = Command::new(weft_tests::docker::DOCKER);
    c.arg("-H")
        .arg(format!("unix://{}", sock.display()))
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    match stdout {
        Some(p) => c.stdout(fs::File::create(p)?),
        None => c.stdout(Stdio::null()),
    };
    let t = Instant::now();
    let out = c
        .output()
        .with_context(|| format!("running docker {args:?}"))?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    if !out.status.success() {
        bail!(
            "docker {args:?} via {} exited with {}: {}",
            sock.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(ms)
}

/// `median (min–max)` of `xs` with `digits` decimals, `–` when empty.
pub fn spread(xs: &[f64], digits: usize) -> String {
    let min = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    match median(xs) {
        Some(m) => format!("{m:.digits$} ({min:.digits$}–{max:.digits$})"),
        None => "–".to_owned(),
    }
}

#[cfg(test)]
mod machine_tests {
    use super::*;

    #[test]
    fn busy_share_comes_from_the_cpu_line_without_guest_time() {
        let a = "cpu  100 0 50 800 50 0 0 0 40 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n";
        let b = "cpu  250 0 100 850 50 0 100 0 90 0\n";
        let (t0, t1) = (
            parse_machine_ticks(a).unwrap(),
            parse_machine_ticks(b).unwrap(),
        );
        assert_eq!(t0, (1000, 850));
        // 350 ticks passed (the guest column's 50 not counted again), 50 of them idle.
        let busy = busy_pct(t0, t1).unwrap();
        assert!((busy - 300.0 * 100.0 / 350.0).abs() < 1e-9, "{busy}");
        assert_eq!(busy_pct(t1, t0), None);
        assert_eq!(parse_machine_ticks("intr 5\n"), None);
    }
}
