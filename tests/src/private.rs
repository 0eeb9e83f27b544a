//! Test-support layer: a [`Host`] with its own **mount namespace**, so weft and Docker run on
//! their *default* paths there (`/run/weft`, `/var/run/weave/weave.sock`,
//! `/var/run/docker.sock`, `/var/lib/weft`, `/var/lib/docker`, `/etc/weave`) without touching
//! the machine's, and without any `WEFT_*` variable: what a user's scripts see on a real host.
//!
//! [`PrivateHost::start`] runs a holder process in the host's network namespace under
//! `unshare --mount --propagation private`, which bind-mounts directories of the test's temp
//! dir over `/run`, `/var/lib/weft`, `/var/lib/docker`, `/etc/weave` and where `weave setup`
//! installs (`/usr/local/bin`, `/etc/systemd/system`, `/etc/default`, and the CNI plugins and
//! configuration: `/opt/cni`, `/etc/cni`) (mount points the machine lacks are created, empty),
//! then sleeps. Every command then enters both namespaces (`nsenter -t HOLDER -m -n`), with a
//! `weave` symlink to the weft binary first on `PATH`. [`PrivateHost::start_dockerd`] runs a
//! stock `dockerd` there: default socket and data root, its default bridge `docker0` (with
//! `--bip` on a documentation range) and iptables on, and imports [`crate::docker::IMAGE`].
//!
//! [`PrivateHost::start_podman`] makes podman (CNI backend) usable there too.
//!
//! Dropping it removes the containers, stops dockerd, kills what is left in the host's
//! namespace (weft, containerd, shims, podman's conmons and their containers) and the holder; the private mounts
//! vanish with the mount namespace, and the directory is removed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::cmd::{self, Cmd, Output, wait_until};
use crate::docker::{DOCKER, IMAGE, image_tar, processes, require_docker};
use crate::net::Host;

/// Address of `docker0` in every private host (its own namespace, so they may repeat).
pub const DOCKER_BIP: &str = "198.51.100.1/24";

/// The directories bind-mounted over the machine's: (inside the namespace, under the root).
/// `weave setup` installs the command, the unit, the options file and the CNI plugins and
/// configuration into the last five.
const BINDS: [(&str, &str); 9] = [
    ("/run", "run"),
    ("/var/lib/weft", "var-lib-weft"),
    ("/var/lib/docker", "var-lib-docker"),
    ("/etc/weave", "etc-weave"),
    ("/usr/local/bin", "usr-local-bin"),
    ("/etc/systemd/system", "etc-systemd-system"),
    ("/etc/default", "etc-default"),
    ("/opt/cni", "opt-cni"),
    ("/etc/cni", "etc-cni"),
];

/// A host namespace with a private mount namespace (see the module documentation).
#[derive(Debug)]
pub struct PrivateHost {
    host: Host,
    root: PathBuf,
    holder: Option<Child>,
    holder_pid: u32,
    dockerd: Option<Child>,
    /// [`PrivateHost::start_podman`] ran.
    podman: bool,
}

impl PrivateHost {
    /// Makes the private mount namespace for `host` (no weft, no Docker yet).
    pub fn start(host: &Host) -> Result<Self> {
        let root = host
            .run_dir()
            .parent()
            .context("host run dir has no parent")?
            .join("private");
        for (inside, dir) in BINDS {
            fs::create_dir_all(root.join(dir))?;
            if !Path::new(inside).exists() {
                fs::create_dir_all(inside)
                    .with_context(|| format!("creating the mount point {inside}"))?;
            }
        }
        let bin = root.join("bin");
        fs::create_dir_all(&bin)?;
        std::os::unix::fs::symlink(host.weft_bin()?, bin.join("weave"))?;
        let ready = root.join("ready");
        let mut script = String::from("set -e\n");
        for (inside, dir) in BINDS {
            script.push_str(&format!(
                "mount --bind '{}' '{inside}'\n",
                root.join(dir).display()
            ));
        }
        script.push_str(&format!(
            "echo ok > '{}'\nexec sleep 100000\n",
            ready.display()
        ));
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", host.ns()))
            .args(["unshare", "--mount", "--propagation", "private", "sh", "-c"])
            .arg(&script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(root.join("holder.err"))?)
            .spawn()
            .context("starting the mount-namespace holder")?;
        let holder_pid = child.id();
        let mut me = Self {
            host: host.clone(),
            root,
            holder: Some(child),
            holder_pid,
            dockerd: None,
            podman: false,
        };
        wait_until(
            "the private mounts",
            Duration::from_secs(10),
            Duration::from_millis(20),
            || {
                if let Some(st) = me.holder.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                    bail!(
                        "the holder exited ({st}): {}",
                        fs::read_to_string(me.root.join("holder.err")).unwrap_or_default()
                    );
                }
                ready.exists().then_some(()).context("not yet")
            },
        )?;
        Ok(me)
    }

    /// The host (network namespace, underlay address).
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// Where this host's `/etc/weave` really is (to write init script configuration).
    pub fn etc_weave(&self) -> PathBuf {
        self.root.join("etc-weave")
    }

    /// Where this host's `/run` really is.
    pub fn run_root(&self) -> PathBuf {
        self.root.join("run")
    }

    /// The weft daemon's log (`/run/weft/weft.log` inside).
    pub fn weft_log(&self) -> String {
        fs::read_to_string(self.run_root().join("weft/weft.log")).unwrap_or_default()
    }

    /// `sh -c SCRIPT` inside both namespaces, `PATH` starting with the `weave` symlink, no
    /// `WEFT_*` or `DOCKER_HOST` variables; 60 s limit.
    pub fn sh_cmd(&self, script: &str) -> Cmd {
        let path = format!(
            "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            self.root.join("bin").display()
        );
        Cmd::new("nsenter")
            .args(["-t", &self.holder_pid.to_string(), "-m", "-n"])
            .args([
                "env",
                "-u",
                "WEFT_RUN_DIR",
                "-u",
                "WEFT_STATE_DIR",
                "-u",
                "WEAVE_HTTP_ADDR",
                "-u",
                "DOCKER_HOST",
                "-u",
                "WEFT_BIN",
            ])
            .arg(format!("PATH={path}"))
            .args(["sh", "-c", script])
    }

    /// Runs [`PrivateHost::sh_cmd`]; the output whatever the status.
    pub fn sh(&self, script: &str) -> Result<Output> {
        self.sh_cmd(script).run()
    }

    /// Runs [`PrivateHost::sh_cmd`] and fails (with weft's log) unless it exits 0; stdout.
    pub fn sh_ok(&self, script: &str) -> Result<String> {
        let out = self.sh(script)?;
        if out.success() {
            return Ok(out.stdout);
        }
        bail!(
            "on host {}: {out}\n--- /run/weft/weft.log (tail) ---\n{}",
            self.host.n(),
            cmd::tail(&self.weft_log(), 30)
        )
    }

    /// Waits (20 s at most) until `CLI exec CONTAINER ping -c1 TARGET` succeeds: `cli` is
    /// `docker`'s or `podman`'s path, `target` an address or a name.
    pub fn wait_ping(&self, cli: &str, container: &str, target: &str) -> Result<()> {
        wait_until(
            &format!("{container} to ping {target}"),
            Duration::from_secs(20),
            Duration::from_millis(300),
            || {
                self.sh(&format!("{cli} exec {container} ping -c1 -W1 {target}"))?
                    .ok()
                    .map(drop)
            },
        )
    }

    /// Starts a stock `dockerd` (default paths, default bridge, iptables on) and imports the
    /// busybox image.
    pub fn start_dockerd(&mut self) -> Result<()> {
        let dockerd = require_docker()?;
        let log = fs::File::create(self.root.join("dockerd.log"))?;
        let child = Command::new("nsenter")
            .args(["-t", &self.holder_pid.to_string(), "-m", "-n"])
            .arg(&dockerd)
            .arg(format!("--bip={DOCKER_BIP}"))
            .arg("--ip6tables=false")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting dockerd")?;
        self.dockerd = Some(child);
        wait_until(
            &format!("dockerd on host {} to answer", self.host.n()),
            Duration::from_secs(40),
            Duration::from_millis(200),
            || {
                if let Some(st) = self
                    .dockerd
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten())
                {
                    bail!("dockerd exited ({st}):\n{}", self.dockerd_log_tail(20));
                }
                self.sh(&format!(
                    "{DOCKER} version --format '{{{{.Server.Version}}}}'"
                ))?
                .ok()
                .map(drop)
            },
        )?;
        let tar = image_tar(&self.root)?;
        self.sh_ok(&format!(
            "{DOCKER} import '{}' {IMAGE} >/dev/null",
            tar.display()
        ))?;
        let _ = fs::remove_file(&tar);
        Ok(())
    }

    /// Makes podman usable here, as a user with the CNI backend has it: `/etc/containers` and
    /// `/var/lib/containers` of this host only (the CNI network backend, plugins from
    /// `/opt/cni/bin` then Debian's `/usr/lib/cni`, configurations in `/etc/cni/net.d`; the
    /// `vfs` storage driver), its own `/dev/shm` (podman's lock memory), and [`IMAGE`] imported.
    /// The container limits are set to what this machine allows: podman's defaults (`nofile`
    /// and `nproc` of 1048576) exceed its hard limits, and runc then fails with "error setting
    /// rlimit type 7: operation not permitted".
    pub fn start_podman(&mut self) -> Result<()> {
        let etc = self.root.join("etc-containers");
        let lib = self.root.join("var-lib-containers");
        fs::create_dir_all(&etc)?;
        fs::create_dir_all(&lib)?;
        fs::write(
            etc.join("policy.json"),
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )?;
        fs::write(
            etc.join("storage.conf"),
            "[storage]\n\
             driver = \"vfs\"\n\
             runroot = \"/run/containers/storage\"\n\
             graphroot = \"/var/lib/containers/storage\"\n",
        )?;
        fs::write(
            etc.join("containers.conf"),
            "[containers]\n\
             default_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
             [network]\n\
             network_backend = \"cni\"\n\
             cni_plugin_dirs = [\"/opt/cni/bin\", \"/usr/lib/cni\"]\n\
             network_config_dir = \"/etc/cni/net.d\"\n",
        )?;
        for inside in ["/etc/containers", "/var/lib/containers"] {
            if !Path::new(inside).exists() {
                fs::create_dir_all(inside)
                    .with_context(|| format!("creating the mount point {inside}"))?;
            }
        }
        self.sh_ok(&format!(
            "mount --bind '{}' /etc/containers && mount --bind '{}' /var/lib/containers && \
             mount -t tmpfs -o size=16m tmpfs /dev/shm",
            etc.display(),
            lib.display()
        ))?;
        self.podman = true;
        let tar = image_tar(&self.root)?;
        self.sh_ok(&format!(
            "podman import -q '{}' {IMAGE} >/dev/null",
            tar.display()
        ))?;
        let _ = fs::remove_file(&tar);
        Ok(())
    }

    /// The last lines of dockerd's log.
    pub fn dockerd_log_tail(&self, n: usize) -> String {
        let text = fs::read_to_string(self.root.join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.contains("module=grpc"))
            .collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    fn cleanup(&mut self) {
        if self.dockerd.is_some() {
            let _ = self.sh(&format!(
                "ids=$({DOCKER} ps -aq); [ -z \"$ids\" ] || {DOCKER} rm -f $ids >/dev/null"
            ));
        }
        if self.podman {
            // Before weft stops: removing a container runs the CNI DEL, which needs the router.
            let _ = self.sh("podman rm -a -f -t 0 >/dev/null 2>&1");
        }
        // weft first (it may still be attaching), then dockerd with a grace period.
        let _ = self.sh("weave stop >/dev/null 2>&1");
        if let Some(mut d) = self.dockerd.take() {
            let _ = cmd::kill(d.id(), "TERM");
            let stopped = wait_until(
                "dockerd to exit",
                Duration::from_secs(15),
                Duration::from_millis(50),
                || d.try_wait()?.context("running"),
            );
            if stopped.is_err() {
                // Our own child, killed by its id.
                let _ = d.kill();
                let _ = d.wait();
            }
        }
        // Whatever is left in this host's network namespace, and the containers under its
        // shims and podman's conmons (they live in namespaces of their own).
        let ours = crate::net::netns_pids(self.host.ns());
        let procs = processes();
        for shim in procs.iter().filter(|p| {
            ours.contains(&p.pid)
                && (p.cmdline.contains("containerd-shim")
                    || p.cmdline
                        .split(' ')
                        .next()
                        .is_some_and(|a| a.ends_with("conmon")))
        }) {
            for c in procs.iter().filter(|c| c.ppid == shim.pid) {
                let _ = cmd::kill(c.pid, "KILL");
            }
        }
        for pid in ours {
            if pid != self.holder_pid {
                let _ = cmd::kill(pid, "KILL");
            }
        }
        if let Some(mut h) = self.holder.take() {
            // Our own child, killed by its id.
            let _ = h.kill();
            let _ = h.wait();
        }
    }
}

impl Drop for PrivateHost {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "\n===== weft log, host {} (last 40 lines) =====\n{}\n===== dockerd log =====\n{}",
                self.host.n(),
                cmd::tail(&self.weft_log(), 40),
                self.dockerd_log_tail(15)
            );
        }
        self.cleanup();
        if std::env::var_os("WEFT_TEST_KEEP_DIR").is_none() {
            // The container layers were mounted in the private namespace only, now gone.
            let _ = fs::remove_dir_all(&self.root);
        }
    }
}
