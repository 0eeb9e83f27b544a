//! Test-support layer: a Debian machine booted by real systemd in `systemd-nspawn` (Debian's
//! systemd-container), inside one of the test's host network namespaces, for the tests of
//! weft's systemd unit and Debian package.
//!
//! The root file system is made offline in the test's temp dir from the machine's own files:
//! the host's `/usr` is the lower layer of an overlay (`--overlay=/usr:UPPER:/usr`), so the
//! container boots the host's systemd and whatever it writes under `/usr` (`weft setup`'s
//! `/usr/local/bin/weft`, a package's `/usr/bin/weft`) lands in `UPPER`, never on the host;
//! `/etc` holds just what a boot needs (os-release, the user database, an empty machine id)
//! and `/var` is the container's own (with an empty dpkg database for package tests). This
//! needs neither a network nor debootstrap, and boots in a few seconds. nspawn runs with
//! `--register=no --keep-unit` (the test machine's init is not systemd, so there is no bus to
//! register with), `--network-namespace-path` of the host's namespace (so the machine is that
//! host on the underlay), `CAP_NET_ADMIN` and `/dev/net/tun`.
//!
//! Commands run inside with `nsenter` into the container's namespaces. Dropping the
//! [`Machine`] powers it off (SIGTERM to nspawn, then SIGKILL), and the directory goes with
//! the test's temp dir.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::cmd::{Cmd, Output, wait_until};
use crate::net::Host;

/// `PATH` inside the machine.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A booted machine (see the module documentation).
#[derive(Debug)]
pub struct Machine {
    root: PathBuf,
    upper: PathBuf,
    nspawn: Option<Child>,
    leader: u32,
    name: String,
}

/// Fails with what to install when systemd-nspawn is missing.
pub fn require_nspawn() -> Result<()> {
    if !Path::new("/usr/bin/systemd-nspawn").exists() {
        bail!("systemd-nspawn is missing: install Debian's systemd-container (.ci/install does)");
    }
    Ok(())
}

impl Machine {
    /// Builds the root file system under `dir` and boots it in `host`'s network namespace;
    /// returns once systemd inside reports a running (or degraded) system. `binds` are
    /// read-only bind mounts (host path, path inside).
    pub fn boot(host: &Host, dir: &Path, name: &str, binds: &[(&Path, &str)]) -> Result<Self> {
        require_nspawn()?;
        let root = dir.join("rootfs");
        let upper = dir.join("usr-upper");
        make_rootfs(&root)?;
        fs::create_dir_all(&upper)?;
        let log = dir.join("nspawn.log");
        let mut cmd = Command::new("systemd-nspawn");
        cmd.arg("--quiet")
            .arg(format!("--directory={}", root.display()))
            .arg(format!("--machine={name}"))
            .args(["--register=no", "--keep-unit", "--boot"])
            .arg(format!("--overlay=/usr:{}:/usr", upper.display()))
            .arg(format!("--network-namespace-path=/run/netns/{}", host.ns()))
            .arg("--capability=CAP_NET_ADMIN")
            .arg("--bind=/dev/net/tun");
        for (from, to) in binds {
            cmd.arg(format!("--bind-ro={}:{to}", from.display()));
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(fs::File::create(&log)?)
            .stderr(fs::File::create(dir.join("nspawn.err"))?)
            .spawn()
            .context("starting systemd-nspawn")?;
        let nspawn_pid = child.id();
        let mut m = Self {
            root,
            upper,
            nspawn: Some(child),
            leader: 0,
            name: name.to_owned(),
        };
        m.leader = wait_until(
            "the container's init",
            Duration::from_secs(20),
            Duration::from_millis(50),
            || {
                if let Some(st) = m.nspawn.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                    bail!(
                        "systemd-nspawn exited ({st}):\n{}\n{}",
                        fs::read_to_string(&log).unwrap_or_default(),
                        fs::read_to_string(dir.join("nspawn.err")).unwrap_or_default()
                    );
                }
                descendant_named(nspawn_pid, "systemd").context("no init yet")
            },
        )?;
        wait_until(
            "systemd inside the machine to finish booting",
            Duration::from_secs(60),
            Duration::from_millis(200),
            || {
                let out = m.sh("systemctl is-system-running")?;
                match out.stdout.trim() {
                    "running" | "degraded" => Ok(()),
                    other => bail!("is-system-running: {other:?}"),
                }
            },
        )?;
        Ok(m)
    }

    /// The machine's name (also its hostname).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The root directory on the host.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The overlay's upper directory: everything written under the machine's `/usr`.
    pub fn usr_upper(&self) -> &Path {
        &self.upper
    }

    /// Runs `sh -c SCRIPT` inside the machine (all its namespaces, `PATH` set), 120 s limit;
    /// the output whatever the exit status.
    pub fn sh(&self, script: &str) -> Result<Output> {
        Cmd::new("nsenter")
            .arg(format!("--target={}", self.leader))
            .args(["--mount", "--uts", "--ipc", "--net", "--pid", "--cgroup"])
            .args(["--", "/usr/bin/env", "-i"])
            .arg(format!("PATH={PATH}"))
            .args(["HOME=/root", "LANG=C.UTF-8", "/bin/sh", "-c", script])
            .timeout(Duration::from_secs(120))
            .run()
    }

    /// Like [`Machine::sh`], failing unless the script exits 0; returns stdout.
    pub fn sh_ok(&self, script: &str) -> Result<String> {
        Ok(self.sh(script)?.ok()?.stdout)
    }

    /// `systemctl show -p PROP --value UNIT`.
    pub fn unit_property(&self, unit: &str, prop: &str) -> Result<String> {
        Ok(self
            .sh_ok(&format!("systemctl show -p {prop} --value {unit}"))?
            .trim()
            .to_owned())
    }

    /// Powers the machine off and waits for nspawn to exit (SIGKILL after 20 s).
    pub fn poweroff(&mut self) -> Result<()> {
        let Some(mut child) = self.nspawn.take() else {
            return Ok(());
        };
        // nspawn turns SIGTERM into an orderly shutdown of the container.
        let _ = crate::cmd::kill(child.id(), "TERM");
        let done = wait_until(
            "the machine to power off",
            Duration::from_secs(20),
            Duration::from_millis(100),
            || match child.try_wait()? {
                Some(_) => Ok(()),
                None => bail!("still running"),
            },
        );
        if done.is_err() {
            let _ = child.kill();
            let _ = child.wait();
        }
        done
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let _ = self.poweroff();
    }
}

/// The first descendant of `pid` (breadth-first) whose command name is `comm`.
fn descendant_named(pid: u32, comm: &str) -> Option<u32> {
    let mut queue = vec![pid];
    while let Some(p) = queue.pop() {
        let children =
            fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default();
        for c in children
            .split_whitespace()
            .filter_map(|c| c.parse::<u32>().ok())
        {
            let name = fs::read_to_string(format!("/proc/{c}/comm")).unwrap_or_default();
            if name.trim() == comm {
                return Some(c);
            }
            queue.push(c);
        }
    }
    None
}

/// The minimal root (see the module documentation).
fn make_rootfs(root: &Path) -> Result<()> {
    for d in [
        "etc",
        "usr",
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "var/lib/dpkg/triggers",
        "var/lib/dpkg/alternatives",
        "var/log",
        "var/tmp",
        "var/cache",
        "run",
        "tmp",
        "root",
        "proc",
        "sys",
        "dev",
        "opt",
        "etc/systemd/system/multi-user.target.wants",
        "home",
    ] {
        fs::create_dir_all(root.join(d))?;
    }
    for d in ["bin", "lib", "lib64", "sbin"] {
        let link = root.join(d);
        if fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("usr/{d}"), &link)?;
        }
    }
    // nspawn looks for os-release before the overlay is mounted over /usr.
    fs::copy("/usr/lib/os-release", root.join("etc/os-release"))?;
    fs::create_dir_all(root.join("usr/lib"))?;
    fs::copy("/usr/lib/os-release", root.join("usr/lib/os-release"))?;
    for f in ["passwd", "group", "shadow", "gshadow", "nsswitch.conf"] {
        let src = Path::new("/etc").join(f);
        if src.exists() {
            fs::copy(&src, root.join("etc").join(f))?;
        }
    }
    fs::write(root.join("etc/machine-id"), "")?;
    fs::write(root.join("etc/hosts"), "127.0.0.1 localhost\n")?;
    fs::write(root.join("var/lib/dpkg/status"), "")?;
    fs::write(root.join("var/lib/dpkg/available"), "")?;
    Ok(())
}
