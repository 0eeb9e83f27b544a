//! Test-support layer: what a local user, a small disk or a flooding host does to a router.
//!
//! - [`curl`]: one HTTP request to a host's router API with `curl`, as root or as `nobody`
//!   (`setpriv --reuid=65534 --regid=65534 --clear-groups`), returning the status and body;
//! - [`Tmpfs`]: a small tmpfs mounted over a test's own directory (a full or read-only state
//!   directory), unmounted on drop;
//! - [`rss_kib`], [`open_fds`]: a process's resident memory and open descriptors;
//! - [`flood_bin`]: the `weft-conn-flood` tool built with the tests.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::cmd::{Cmd, Output, ns_exec};
use crate::net::Host;

/// The `setpriv` prefix that runs a command as `nobody` with no supplementary groups.
pub const AS_NOBODY: [&str; 4] = [
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
];

/// A command line run inside `h`'s namespace as `nobody`.
pub fn nobody<S: AsRef<str>>(h: &Host, args: &[S], timeout: Duration) -> Result<Output> {
    let mut v: Vec<&str> = AS_NOBODY.to_vec();
    v.extend(args.iter().map(AsRef::as_ref));
    ns_exec(h.ns(), &v, timeout)
}

/// `curl -X METHOD http://127.0.0.1:6784PATH` in `h`'s namespace (as `nobody` if asked), with
/// an optional form body; returns the HTTP status (0 if none) and the body.
pub fn curl(
    h: &Host,
    as_nobody: bool,
    method: &str,
    path: &str,
    form: Option<&str>,
) -> Result<(u16, String)> {
    let url = format!("http://127.0.0.1:6784{path}");
    let mut args: Vec<String> = Vec::new();
    if as_nobody {
        args.extend(AS_NOBODY.iter().map(|s| (*s).to_owned()));
    }
    args.extend(
        [
            "curl",
            "-s",
            "-m",
            "20",
            "-w",
            "\n%{http_code}",
            "-X",
            method,
        ]
        .iter()
        .map(|s| (*s).to_owned()),
    );
    if let Some(f) = form {
        args.extend(["--data".to_owned(), f.to_owned()]);
    }
    args.push(url);
    let out = ns_exec(h.ns(), &args, Duration::from_secs(30))?;
    let text = out.stdout.trim_end();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", text));
    let code = code.trim().parse().unwrap_or(0);
    Ok((code, body.to_owned()))
}

/// A tmpfs of `size` (e.g. `"64k"`) mounted over `dir` (which must belong to the test), with
/// mode 0755; unmounted (lazily) on drop.
#[derive(Debug)]
pub struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts it. `dir` must exist.
    pub fn mount(dir: &Path, size: &str) -> Result<Self> {
        Cmd::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size},mode=0755"))
            .arg("tmpfs")
            .arg(dir)
            .run_ok()
            .with_context(|| format!("mounting a tmpfs on {}", dir.display()))?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    /// Remounts it read-only (`ro = true`) or read-write.
    pub fn set_read_only(&self, ro: bool) -> Result<()> {
        let opt = if ro { "remount,ro" } else { "remount,rw" };
        Cmd::new("mount")
            .args(["-o", opt])
            .arg(&self.dir)
            .run_ok()?;
        Ok(())
    }

    /// Fills it up with a file `name` until the disk is full; returns the bytes written.
    pub fn fill(&self, name: &str) -> Result<u64> {
        use std::io::Write as _;
        let mut f = fs::File::create(self.dir.join(name))?;
        let chunk = [0u8; 1024];
        let mut n = 0u64;
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(k) => n += k as u64,
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => return Err(e.into()),
            }
        }
        let _ = f.sync_all();
        Ok(n)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Cmd::new("umount").arg("-l").arg(&self.dir).run();
    }
}

fn status_field(pid: u32, field: &str) -> Result<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {field} for pid {pid}"))
}

/// Resident memory of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    status_field(pid, "VmRSS:")
}

/// Open file descriptors of `pid`.
pub fn open_fds(pid: u32) -> Result<usize> {
    Ok(fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// The `weft-conn-flood` tool: next to the running test executable's profile directory (it is
/// built with the tests' crate), or `$WEFT_FLOOD_BIN`.
pub fn flood_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("WEFT_FLOOD_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(2) {
        let cand = dir.join("weft-conn-flood");
        if cand.is_file() {
            return Ok(cand);
        }
    }
    bail!(
        "weft-conn-flood not found next to {} (cargo build --workspace --bins)",
        exe.display()
    )
}
