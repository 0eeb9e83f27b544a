//! Test-support layer: running external commands (`ip`, `weft`, `ping`, ...) with a timeout.
//!
//! Output goes to files, never to pipes, so a daemon that inherits stdout (as a backgrounded
//! router may) can never make the caller hang waiting for end-of-file. Every failure message
//! carries the full command line, exit status and both output streams.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, File};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Default time limit for one command.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The result of one finished (or timed-out) command.
#[derive(Debug, Clone)]
pub struct Output {
    /// The command line, shell-quoted for display.
    pub cmd: String,
    /// Exit status; `None` if the command was killed because it ran out of time.
    pub status: Option<ExitStatus>,
    /// Everything written to stdout (lossy UTF-8).
    pub stdout: String,
    /// Everything written to stderr (lossy UTF-8).
    pub stderr: String,
    /// How long the command ran.
    pub elapsed: Duration,
}

impl Output {
    /// True when the command exited with status 0.
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// `Ok(self)` on success, else an error describing command, status and output.
    pub fn ok(self) -> Result<Self> {
        if self.success() {
            Ok(self)
        } else {
            bail!("{self}")
        }
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(s) => write!(f, "`{}` exited with {s}", self.cmd)?,
            None => write!(
                f,
                "`{}` timed out after {:?} and was killed",
                self.cmd, self.elapsed
            )?,
        }
        write!(f, " after {:.1?}", self.elapsed)?;
        let out = self.stdout.trim_end();
        let err = self.stderr.trim_end();
        if !out.is_empty() {
            write!(f, "\n--- stdout ---\n{}", tail(out, 60))?;
        }
        if !err.is_empty() {
            write!(f, "\n--- stderr ---\n{}", tail(err, 60))?;
        }
        Ok(())
    }
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n")
}

/// A command to run, built like [`std::process::Command`] but always with a time limit.
#[derive(Debug, Clone)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    timeout: Duration,
    stdin: Option<PathBuf>,
}

impl Cmd {
    /// A command running `program`.
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Self {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            envs: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            stdin: None,
        }
    }

    /// Appends one argument.
    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.args.push(a.as_ref().to_owned());
        self
    }

    /// Appends several arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable for the child.
    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Self {
        self.envs
            .push((k.as_ref().to_owned(), v.as_ref().to_owned()));
        self
    }

    /// Sets the time limit (default [`DEFAULT_TIMEOUT`]).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Feeds the given file to the child's stdin (default: `/dev/null`).
    pub fn stdin_file(mut self, p: impl Into<PathBuf>) -> Self {
        self.stdin = Some(p.into());
        self
    }

    /// The command line, for messages.
    pub fn display(&self) -> String {
        let mut s = quote(&self.program);
        for a in &self.args {
            s.push(' ');
            s.push_str(&quote(a));
        }
        s
    }

    /// Starts the command in the background with stdout and stderr going to the given files.
    pub fn spawn_to(&self, stdout: &PathBuf, stderr: &PathBuf) -> Result<std::process::Child> {
        let out = File::create(stdout).with_context(|| format!("creating {}", stdout.display()))?;
        let err = File::create(stderr).with_context(|| format!("creating {}", stderr.display()))?;
        let stdin = match &self.stdin {
            Some(p) => {
                Stdio::from(File::open(p).with_context(|| format!("opening {}", p.display()))?)
            }
            None => Stdio::null(),
        };
        let mut c = Command::new(&self.program);
        c.args(&self.args).stdin(stdin).stdout(out).stderr(err);
        for (k, v) in &self.envs {
            c.env(k, v);
        }
        c.spawn()
            .with_context(|| format!("cannot start `{}`", self.display()))
    }

    /// Runs the command to completion (or until the time limit, then kills it).
    ///
    /// Returns `Err` only if the command could not be started; a non-zero exit or a timeout is
    /// reported in [`Output`]. Use [`Cmd::run_ok`] to turn those into errors too.
    pub fn run(&self) -> Result<Output> {
        let (out_path, err_path) = scratch_pair();
        let started = Instant::now();
        let res = (|| {
            let mut child = self.spawn_to(&out_path, &err_path)?;
            let mut sleep = Duration::from_millis(2);
            let status = loop {
                if let Some(st) = child.try_wait()? {
                    break Some(st);
                }
                if started.elapsed() >= self.timeout {
                    // Our own child, killed by its id.
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                thread::sleep(sleep);
                sleep = (sleep * 2).min(Duration::from_millis(50));
            };
            Ok(Output {
                cmd: self.display(),
                status,
                stdout: read_lossy(&out_path),
                stderr: read_lossy(&err_path),
                elapsed: started.elapsed(),
            })
        })();
        let _ = fs::remove_file(&out_path);
        let _ = fs::remove_file(&err_path);
        res
    }

    /// Runs the command and fails unless it exits with status 0; returns its output.
    pub fn run_ok(&self) -> Result<Output> {
        self.run()?.ok()
    }
}

fn read_lossy(p: &PathBuf) -> String {
    fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn scratch_pair() -> (PathBuf, PathBuf) {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let base = std::env::temp_dir();
    let id = format!("weft-cmd-{}-{n}", std::process::id());
    (
        base.join(format!("{id}.out")),
        base.join(format!("{id}.err")),
    )
}

fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c))
    {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Runs `ip ARGS...` (10 s limit) and returns its stdout, failing on a non-zero exit.
pub fn ip<I, S>(args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Ok(Cmd::new("ip")
        .args(args)
        .timeout(Duration::from_secs(10))
        .run_ok()?
        .stdout)
}

/// Runs `ip netns exec NS ARGS...` with the given limit; the output, whatever the exit status.
pub fn ns_exec<I, S>(ns: &str, args: I, timeout: Duration) -> Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Cmd::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .timeout(timeout)
        .run()
}

/// Runs `sh -c SCRIPT` inside namespace `ns` and fails unless it exits 0; returns stdout.
pub fn ns_sh(ns: &str, script: &str, timeout: Duration) -> Result<String> {
    Ok(ns_exec(ns, ["sh", "-c", script], timeout)?.ok()?.stdout)
}

/// The kernel's network counters in namespace `ns` (`nstat -az --json`: `TcpExt*`, `Tcp*`,
/// `Udp*`, `Ip*`, ... as absolute values), by name.
pub fn nstat(ns: &str) -> Result<std::collections::HashMap<String, u64>> {
    let out = Cmd::new("ip")
        .args(["netns", "exec", ns, "nstat", "-az", "--json"])
        .run_ok()?;
    let v: serde_json::Value =
        serde_json::from_str(&out.stdout).with_context(|| format!("nstat: {out}"))?;
    Ok(v["kernel"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
        .collect())
}

/// Polls `f` every `poll` until it returns `Ok`, or fails after `timeout` with a message naming
/// `what` and the last error `f` returned.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    poll: Duration,
    mut f: impl FnMut() -> Result<T>,
) -> Result<T> {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) => {
                if start.elapsed() >= timeout {
                    bail!("timed out after {timeout:?} waiting for {what}; last attempt: {e:#}");
                }
            }
        }
        thread::sleep(poll);
    }
}

/// Sends `signal` (e.g. `"KILL"`, `"INT"`) to process `pid` with kill(1).
pub fn kill(pid: u32, signal: &str) -> Result<()> {
    Cmd::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .timeout(Duration::from_secs(5))
        .run_ok()?;
    Ok(())
}

/// True while `pid` exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the parenthesised command name, which may contain spaces.
        Ok(s) => s
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}
