//! Test-support layer: a real Docker daemon per [`Host`], for the Docker API proxy tests.
//!
//! [`Dockerd::start`] runs `dockerd` inside the host's network namespace (entered with
//! `nsenter --net`, not `ip netns exec`, which remounts `/sys` and leaves dockerd without
//! cgroups) with its data root, exec root, socket, pid file and log under
//! `<TestNet dir>/h<n>/docker/`, no bridge and no iptables rules, and imports a busybox image
//! [`IMAGE`] built from the static `/usr/bin/busybox` (every applet linked into `/bin`, a
//! `/www/ping` file for `httpd`). Every docker CLI call is the Debian client [`DOCKER`].
//!
//! Dropping a [`Dockerd`] removes its containers, stops the daemon (SIGTERM, SIGKILL after 15 s),
//! kills containerd and shim processes whose command line names its directories (and the
//! containers under those shims), unmounts whatever is still mounted below its directory and
//! removes it. Keep the value inside the [`crate::run_test`] closure: it then drops (also when
//! the test panics) before the [`crate::TestNet`], whose clean-up would SIGKILL the daemon and
//! leave container mounts behind.
//!
//! A missing `dockerd` or docker client is an error naming the packages to install
//! (`docker.io busybox-static`, see `.ci/install`): the tests fail, they do not skip.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::cmd::{self, Cmd, Output, wait_until};
use crate::net::Host;

/// The docker client every test uses (Debian's `docker.io`, API 1.41).
pub const DOCKER: &str = "/usr/bin/docker";
/// The busybox image every [`Dockerd`] holds.
pub const IMAGE: &str = "weft-bb:latest";
/// Content of `/www/ping` in [`IMAGE`] (served by `httpd -h /www`).
pub const PING_BODY: &str = "pong";

/// Where `dockerd` may live (Debian installs it in `/usr/sbin`).
const DOCKERD_PATHS: [&str; 3] = [
    "/usr/sbin/dockerd",
    "/usr/bin/dockerd",
    "/usr/local/bin/dockerd",
];
/// The static busybox from `busybox-static`.
const BUSYBOX: &str = "/usr/bin/busybox";
/// Time for a new daemon to answer `docker version`.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Time for a daemon to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// A `dockerd` running in one host's network namespace.
#[derive(Debug)]
pub struct Dockerd {
    host_label: String,
    ns: String,
    dockerd: PathBuf,
    dir: PathBuf,
    sock: PathBuf,
    child: Option<Child>,
}

/// Fails with a message naming the packages when `dockerd`, the docker client or the static
/// busybox is missing; returns the `dockerd` path.
pub fn require_docker() -> Result<PathBuf> {
    let dockerd = DOCKERD_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file());
    let mut missing = Vec::new();
    if dockerd.is_none() {
        missing.push(format!("dockerd (looked in {})", DOCKERD_PATHS.join(", ")));
    }
    if !Path::new(DOCKER).is_file() {
        missing.push(format!("the docker client {DOCKER}"));
    }
    if !Path::new(BUSYBOX).is_file() {
        missing.push(format!("the static busybox {BUSYBOX}"));
    }
    if !missing.is_empty() {
        bail!(
            "the Docker proxy tests need a real Docker: missing {}; install the Debian packages \
             `docker.io busybox-static` (`.ci/install` does)",
            missing.join(", ")
        );
    }
    Ok(dockerd.unwrap_or_default())
}

impl Dockerd {
    /// Starts `dockerd` in `host`'s namespace, waits until it answers and imports [`IMAGE`].
    pub fn start(host: &Host) -> Result<Self> {
        let dockerd = require_docker()?;
        let base = host
            .run_dir()
            .parent()
            .context("host run dir has no parent")?
            .to_path_buf();
        let dir = base.join("docker");
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut d = Self {
            host_label: format!("h{} ({})", host.n(), host.ns()),
            ns: host.ns().to_owned(),
            dockerd,
            sock: dir.join("docker.sock"),
            dir,
            child: None,
        };
        // From here on Drop cleans up.
        d.spawn()?;
        d.import_image()
            .with_context(|| format!("importing {IMAGE} into dockerd on {}", d.host_label))?;
        Ok(d)
    }

    /// Starts the daemon process (on the same directories) and waits until it answers.
    fn spawn(&mut self) -> Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .with_context(|| format!("opening {}", self.log_path().display()))?;
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.ns))
            .arg(&self.dockerd)
            .arg("--data-root")
            .arg(self.dir.join("data"))
            .arg("--exec-root")
            .arg(self.dir.join("exec"))
            .arg("-H")
            .arg(format!("unix://{}", self.sock.display()))
            .arg("--pidfile")
            .arg(self.dir.join("docker.pid"))
            .args([
                "--bridge=none",
                "--iptables=false",
                "--ip6tables=false",
                "--ip-forward=false",
                "--ip-masq=false",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = c
            .spawn()
            .with_context(|| format!("starting dockerd in {}", self.ns))?;
        self.child = Some(child);
        let started = Instant::now();
        wait_until(
            &format!("dockerd on {} to answer `docker version`", self.host_label),
            START_TIMEOUT,
            Duration::from_millis(100),
            || {
                if let Some(c) = self.child.as_mut() {
                    if let Some(st) = c.try_wait()? {
                        bail!(
                            "dockerd exited with {st}; log tail:\n{}",
                            cmd::tail(&self.log_without_grpc(), 20)
                        );
                    }
                }
                self.docker(&["version", "--format", "{{.Server.Version}}"])?
                    .ok()
                    .map(drop)
            },
        )
        .map_err(|e| {
            // A daemon that exited is reported by the closure; keep the log visible either way.
            e.context(format!(
                "dockerd log {} (last lines):\n{}",
                self.log_path().display(),
                cmd::tail(&self.log_without_grpc(), 20)
            ))
        })?;
        eprintln!(
            "weft-tests: dockerd on {} up in {:.1?} (pid {})",
            self.host_label,
            started.elapsed(),
            self.pid().unwrap_or(0)
        );
        Ok(())
    }

    /// Builds the busybox root file system and imports it as [`IMAGE`] (one tar, one import).
    fn import_image(&self) -> Result<()> {
        let tar = image_tar(&self.dir)?;
        self.docker_ok(&["import", &tar.display().to_string(), IMAGE])?;
        let _ = fs::remove_file(&tar);
        Ok(())
    }

    /// The daemon's socket path.
    pub fn socket(&self) -> &Path {
        &self.sock
    }

    /// `unix://<socket>`, as `-H` / `--docker-api` take it.
    pub fn socket_url(&self) -> String {
        format!("unix://{}", self.sock.display())
    }

    /// The directory holding data root, exec root, socket, pid file and log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The daemon log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("dockerd.log")
    }

    /// The daemon log ("" if unreadable).
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The daemon log without its gRPC connection chatter (for failure messages).
    pub fn log_without_grpc(&self) -> String {
        self.log()
            .lines()
            .filter(|l| !l.contains("module=grpc"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The running daemon's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `docker -H unix://<this daemon> ARGS` (60 s limit), whatever the exit status.
    pub fn docker<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Result<Output> {
        docker_via(&self.sock, args)
    }

    /// Like [`Dockerd::docker`] but fails unless it exits 0; returns stdout.
    pub fn docker_ok<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Result<String> {
        Ok(self.docker(args)?.ok()?.stdout)
    }

    /// Stops the daemon: SIGTERM, wait up to 15 s, then SIGKILL. Containers still running are
    /// stopped by dockerd itself. The directories stay, so [`Dockerd::restart`] can bring it
    /// back with its images and containers.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = child.id();
        if child.try_wait()?.is_none() {
            let _ = cmd::kill(pid, "TERM");
            let gone = wait_until(
                &format!("dockerd pid {pid} to exit after SIGTERM"),
                STOP_TIMEOUT,
                Duration::from_millis(50),
                || child.try_wait()?.context("still running"),
            );
            if gone.is_err() {
                eprintln!("weft-tests: dockerd pid {pid} ignored SIGTERM for {STOP_TIMEOUT:?}");
                // Our own child, killed by its id.
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        ensure!(
            !self.sock.exists() || self.docker(&["version"]).is_ok_and(|o| !o.success()),
            "dockerd socket {} still answers after the daemon exited",
            self.sock.display()
        );
        Ok(())
    }

    /// Starts the daemon again after [`Dockerd::stop`] (same directories, same socket).
    pub fn restart(&mut self) -> Result<()> {
        ensure!(self.child.is_none(), "dockerd is still running");
        self.spawn()
    }

    /// Removes every container (running or not) with `docker rm -f`.
    pub fn remove_all_containers(&self) -> Result<()> {
        let ids = self.docker_ok(&["ps", "-aq"])?;
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if ids.is_empty() {
            return Ok(());
        }
        let mut args = vec!["rm", "-f"];
        args.extend(ids);
        self.docker_ok(&args)?;
        Ok(())
    }

    /// Kills containerd and shim processes that name this daemon's directory on their command
    /// line, and the containers under those shims. Returns what it killed, for messages.
    fn kill_leftovers(&self) -> Vec<String> {
        let needle = self.dir.display().to_string();
        let procs = processes();
        let mut killed = Vec::new();
        // Only Docker's own daemons: weft's command line names the dockerd socket too.
        let ours: Vec<&Proc> = procs
            .iter()
            .filter(|p| {
                let prog = p.cmdline.split(' ').next().unwrap_or("");
                let base = prog.rsplit('/').next().unwrap_or(prog);
                (base.starts_with("containerd") || base == "dockerd") && p.cmdline.contains(&needle)
            })
            .collect();
        // Containers first (the children of our shims), then the shims and daemons.
        for shim in ours
            .iter()
            .filter(|p| p.cmdline.contains("containerd-shim"))
        {
            for c in procs.iter().filter(|c| c.ppid == shim.pid) {
                if cmd::kill(c.pid, "KILL").is_ok() {
                    killed.push(format!("{} (container under shim {})", c.pid, shim.pid));
                }
            }
        }
        for p in &ours {
            if cmd::kill(p.pid, "KILL").is_ok() {
                killed.push(format!("{} `{}`", p.pid, p.cmdline));
            }
        }
        for p in &ours {
            let _ = wait_until(
                "leftover process exit",
                Duration::from_secs(5),
                Duration::from_millis(20),
                || {
                    if cmd::pid_alive(p.pid) {
                        bail!("alive")
                    }
                    Ok(())
                },
            );
        }
        killed
    }

    /// Lazily unmounts everything mounted at or below this daemon's directory, deepest first.
    fn unmount_all(&self) -> Vec<String> {
        let mut points = mounts_under(&self.dir);
        points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        let mut done = Vec::new();
        for p in points {
            if Cmd::new("umount")
                .arg("-l")
                .arg(&p)
                .timeout(Duration::from_secs(10))
                .run_ok()
                .is_ok()
            {
                done.push(p.display().to_string());
            }
        }
        done
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if panicking {
            eprintln!(
                "\n===== dockerd log {}: {} (last 30 lines) =====\n{}",
                self.host_label,
                self.log_path().display(),
                cmd::tail(&self.log_without_grpc(), 30)
            );
        }
        if self.child.is_some() {
            if let Err(e) = self.remove_all_containers() {
                eprintln!(
                    "weft-tests: removing containers of dockerd on {}: {e:#}",
                    self.host_label
                );
            }
        }
        if let Err(e) = self.stop() {
            eprintln!("weft-tests: stopping dockerd on {}: {e:#}", self.host_label);
        }
        let killed = self.kill_leftovers();
        let unmounted = self.unmount_all();
        if !killed.is_empty() || !unmounted.is_empty() {
            let mut s = format!("weft-tests: clean-up after dockerd on {}:", self.host_label);
            for k in &killed {
                let _ = write!(s, "\n  killed {k}");
            }
            for u in &unmounted {
                let _ = write!(s, "\n  unmounted {u}");
            }
            eprintln!("{s}");
        }
        if std::env::var_os("WEFT_TEST_KEEP_DIR").is_none() {
            if let Err(e) = fs::remove_dir_all(&self.dir) {
                eprintln!("weft-tests: removing {}: {e}", self.dir.display());
            }
        }
    }
}

/// `docker -H unix://<sock> ARGS` (60 s limit), whatever the exit status.
pub fn docker_via<S: AsRef<std::ffi::OsStr>>(sock: &Path, args: &[S]) -> Result<Output> {
    docker_cmd(sock, args).run()
}

/// The `docker -H unix://<sock> ARGS` command, to adjust (timeout, stdin) or spawn.
pub fn docker_cmd<S: AsRef<std::ffi::OsStr>>(sock: &Path, args: &[S]) -> Cmd {
    Cmd::new(DOCKER)
        .arg("-H")
        .arg(format!("unix://{}", sock.display()))
        .args(args)
}

/// Builds [`IMAGE`]'s root file system under `dir` and packs it as `dir/rootfs.tar` (for
/// `docker import`); returns the tar's path.
pub fn image_tar(dir: &Path) -> Result<PathBuf> {
    let rootfs = dir.join("rootfs");
    build_rootfs(&rootfs)?;
    let tar = dir.join("rootfs.tar");
    Cmd::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .run_ok()?;
    let _ = fs::remove_dir_all(&rootfs);
    Ok(tar)
}

/// Writes the busybox root file system of [`IMAGE`] into `root` (replacing it).
pub fn build_rootfs(root: &Path) -> Result<()> {
    let _ = fs::remove_dir_all(root);
    for d in ["bin", "etc", "tmp", "www", "root"] {
        fs::create_dir_all(root.join(d))?;
    }
    let bb = root.join("bin/busybox");
    fs::copy(BUSYBOX, &bb).with_context(|| format!("copying {BUSYBOX}"))?;
    let list = Cmd::new(BUSYBOX).arg("--list").run_ok()?.stdout;
    for applet in list.split_whitespace() {
        if applet == "busybox" || applet.contains('/') {
            continue;
        }
        symlink("busybox", root.join("bin").join(applet))
            .with_context(|| format!("linking applet {applet}"))?;
    }
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    fs::write(root.join("www/ping"), PING_BODY)?;
    let mut perms = fs::metadata(root.join("tmp"))?.permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o1777);
    fs::set_permissions(root.join("tmp"), perms)?;
    Ok(())
}

/// `weft launch` on `h` with the Docker proxy in front of `dockerd`: listening on
/// `<run dir>/weave.sock`, with `--rewrite-inspect --no-default-ipalloc`, then `extra` options and
/// the peers' underlay addresses. Returns the proxy socket.
pub fn launch_proxy(
    h: &Host,
    dockerd: &Dockerd,
    extra: &[&str],
    peers: &[&Host],
) -> Result<PathBuf> {
    let sock = proxy_socket(h);
    let listen = format!("unix://{}", sock.display());
    let upstream = dockerd.socket_url();
    let mut opts = vec![
        "-H",
        listen.as_str(),
        "--docker-api",
        upstream.as_str(),
        "--rewrite-inspect",
        "--no-default-ipalloc",
    ];
    opts.extend_from_slice(extra);
    crate::mesh::launch_with(h, &opts, peers)?;
    ensure!(
        sock.exists(),
        "`weft launch` returned but the proxy socket {} does not exist",
        sock.display()
    );
    Ok(sock)
}

/// Where [`launch_proxy`] puts the proxy socket of `h`.
pub fn proxy_socket(h: &Host) -> PathBuf {
    h.run_dir().join("weave.sock")
}

/// The `a.b.c.d/len` words following `inet` in `ip -4 addr` output.
pub fn inet_cidrs(ip_addr_output: &str) -> Vec<String> {
    let words: Vec<&str> = ip_addr_output.split_whitespace().collect();
    words
        .windows(2)
        .filter(|w| w[0] == "inet")
        .map(|w| w[1].to_owned())
        .collect()
}

/// The interface names in `ip -o link` output (`3: ethwe@if4: <...>` gives `ethwe`).
pub fn link_names(ip_link_output: &str) -> Vec<String> {
    ip_link_output
        .lines()
        .filter_map(|l| {
            let (idx, rest) = l.split_once(": ")?;
            idx.trim().parse::<u32>().ok()?;
            let name = rest.split(':').next()?;
            Some(name.split('@').next().unwrap_or(name).to_owned())
        })
        .collect()
}

/// The IPv4 addresses (`a.b.c.d/len`) on `ethwe` in a running container, read with
/// `docker exec CONTAINER ip -4 addr show dev ethwe` through `sock`. Empty when the container
/// has no `ethwe`.
pub fn ethwe_cidrs(sock: &Path, container: &str) -> Result<Vec<String>> {
    let links = docker_via(sock, &["exec", container, "ip", "-o", "link"])?.ok()?;
    if !link_names(&links.stdout).iter().any(|n| n == "ethwe") {
        return Ok(Vec::new());
    }
    let out = docker_via(
        sock,
        &[
            "exec", container, "ip", "-4", "addr", "show", "dev", "ethwe",
        ],
    )?
    .ok()?;
    Ok(inet_cidrs(&out.stdout))
}

/// Runs `docker -H unix://<sock> ARGS` with stdout going to `out` (for binary output such as
/// `docker cp C:PATH -`), within `timeout`. The returned [`Output`] has an empty `stdout`.
pub fn docker_to_file<S: AsRef<std::ffi::OsStr>>(
    sock: &Path,
    args: &[S],
    out: &Path,
    timeout: Duration,
) -> Result<Output> {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let c = docker_cmd(sock, args);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let err = std::env::temp_dir().join(format!("weft-docker-{}-{n}.err", std::process::id()));
    let started = Instant::now();
    let mut child = c.spawn_to(&out.to_path_buf(), &err)?;
    let status = wait_until(
        &format!("`{}` to finish", c.display()),
        timeout,
        Duration::from_millis(20),
        || child.try_wait()?.context("still running"),
    );
    let status = match status {
        Ok(s) => Some(s),
        Err(_) => {
            // Our own child, killed by its id.
            let _ = child.kill();
            let _ = child.wait();
            None
        }
    };
    let stderr = fs::read_to_string(&err).unwrap_or_default();
    let _ = fs::remove_file(&err);
    Ok(Output {
        cmd: format!("{} > {}", c.display(), out.display()),
        status,
        stdout: String::new(),
        stderr,
        elapsed: started.elapsed(),
    })
}

/// The sha256 of a file, as `sha256sum` prints it.
pub fn sha256_file(p: &Path) -> Result<String> {
    let out = Cmd::new("sha256sum").arg(p).run_ok()?.stdout;
    out.split_whitespace()
        .next()
        .map(str::to_owned)
        .with_context(|| format!("sha256sum printed {out:?}"))
}

/// Drives a command on a pseudo-terminal (python3's `pty`): waits until the command has
/// printed `wait_for`, types `input`, then reads until the command exits (at most `timeout`).
/// The [`Output`]'s `stdout` is everything the terminal showed; its status the command's.
pub fn run_in_pty(
    argv: &[String],
    wait_for: &str,
    input: &str,
    timeout: Duration,
) -> Result<Output> {
    Cmd::new("python3")
        .arg("-c")
        .arg(PTY_DRIVER)
        .arg(wait_for)
        .arg(input)
        .arg(timeout.as_secs_f64().to_string())
        .args(argv)
        .timeout(timeout + Duration::from_secs(5))
        .run()
}

/// The python3 side of [`run_in_pty`]: `driver WAIT_FOR INPUT TIMEOUT ARGV...`.
const PTY_DRIVER: &str = r#"
import os, pty, select, sys, time
wait_for, data, limit = sys.argv[1].encode(), sys.argv[2].encode(), float(sys.argv[3])
argv = sys.argv[4:]
pid, fd = pty.fork()
if pid == 0:
    os.execvp(argv[0], argv)
out, sent, deadline = b'', False, time.monotonic() + limit
while time.monotonic() < deadline:
    if not sent and wait_for in out:
        os.write(fd, data)
        sent = True
    r, _, _ = select.select([fd], [], [], 0.2)
    if r:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
else:
    os.kill(pid, 9)
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors='replace'))
if not sent:
    sys.stdout.write('\n[pty driver: never saw %r, typed nothing]\n' % wait_for.decode())
sys.exit(os.waitstatus_to_exitcode(status) if sent else 99)
"#;

/// One process from `/proc`.
#[derive(Debug, Clone)]
pub(crate) struct Proc {
    pub(crate) pid: u32,
    pub(crate) ppid: u32,
    /// Arguments joined by spaces ("" for kernel threads and zombies).
    pub(crate) cmdline: String,
}

/// Every process in `/proc`.
pub(crate) fn processes() -> Vec<Proc> {
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (_, rest) = stat.rsplit_once(") ")?;
        let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
        let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmdline = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        Some(Proc { pid, ppid, cmdline })
    })
    .collect()
}

/// Mount points at or below `dir`, from `/proc/mounts` (octal escapes decoded).
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = fs::read_to_string("/proc/mounts").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|m| PathBuf::from(unescape_mount(m)))
        .filter(|m| m.starts_with(dir))
        .collect()
}

/// Decodes the `\040`-style octal escapes of `/proc/mounts`.
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).and_then(|d| {
            d.iter()
                .try_fold(0u32, |acc, c| {
                    (b'0'..=b'7')
                        .contains(c)
                        .then(|| acc * 8 + u32::from(c - b'0'))
                })
                .and_then(|v| u8::try_from(v).ok())
        });
        if let (b'\\', Some(v)) = (b[i], octal) {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_names_from_ip_o_link() {
        let out = "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue\\    link/loopback 00:00\n\
                   2: ul0@weave: <BROADCAST> mtu 1500\\    link/ether ee:35\n\
                   4: vethwe-tap: <BROADCAST> mtu 1376\n\
                   5: ethwe@if6: <BROADCAST,UP> mtu 1376\n";
        assert_eq!(link_names(out), ["lo", "ul0", "vethwe-tap", "ethwe"]);
    }

    #[test]
    fn mount_escapes() {
        assert_eq!(unescape_mount(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape_mount(r"/tmp/plain"), "/tmp/plain");
        assert_eq!(unescape_mount(r"/x\134"), "/x\\");
    }
}
