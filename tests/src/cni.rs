//! Test-support layer: driving weft's CNI plugins as a container runtime does, with the
//! `CNI_*` environment and the network configuration on stdin, inside a [`Host`]'s namespace.
//!
//! [`Plugins::new`] makes a CNI bin directory in the test's directory holding `weave-net` and
//! `weave-ipam` (symlinks to the weft binary under test), searched before Debian's reference
//! plugins ([`REFERENCE_DIR`], package `containernetworking-plugins`: `host-local`, ...).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::cmd::{Cmd, Output};
use crate::net::{Host, TestNet};

/// Where Debian's `containernetworking-plugins` installs the reference plugins.
pub const REFERENCE_DIR: &str = "/usr/lib/cni";

/// A CNI bin directory with weft's plugins.
#[derive(Debug, Clone)]
pub struct Plugins {
    dir: PathBuf,
    scratch: PathBuf,
}

/// Fails, naming the package, when the reference plugins are missing.
pub fn require_reference_plugins() -> Result<()> {
    if !Path::new(REFERENCE_DIR).join("host-local").is_file() {
        bail!(
            "the CNI tests need Debian's reference plugins in {REFERENCE_DIR}: install the \
             package `containernetworking-plugins` (`.ci/install` does)"
        );
    }
    Ok(())
}

impl Plugins {
    /// Makes `<net dir>/cni-bin` with `weave-net` and `weave-ipam`.
    pub fn new(net: &TestNet) -> Result<Self> {
        require_reference_plugins()?;
        let dir = net.dir().join("cni-bin");
        std::fs::create_dir_all(&dir)?;
        let weft = net.weft_bin()?;
        for name in ["weave-net", "weave-ipam"] {
            let link = dir.join(name);
            if !link.exists() {
                std::os::unix::fs::symlink(weft, &link)
                    .with_context(|| format!("linking {}", link.display()))?;
            }
        }
        let scratch = net.dir().join("cni-stdin");
        std::fs::create_dir_all(&scratch)?;
        Ok(Self { dir, scratch })
    }

    /// The bin directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `CNI_PATH`: weft's plugins, then the reference ones.
    pub fn cni_path(&self) -> String {
        format!("{}:{REFERENCE_DIR}", self.dir.display())
    }

    /// Runs `plugin` on `host` as a runtime does: `CNI_COMMAND=command`, the container id,
    /// namespace path (`""`: none), interface name, and `conf` on stdin. The output whatever
    /// the exit status.
    pub fn run(
        &self,
        host: &Host,
        plugin: &str,
        inv: &Invocation<'_>,
        conf: &str,
    ) -> Result<Output> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let stdin = self
            .scratch
            .join(format!("conf-{}", N.fetch_add(1, Ordering::Relaxed)));
        std::fs::write(&stdin, conf)?;
        let out = Cmd::new("ip")
            .args(["netns", "exec", host.ns(), "env"])
            .arg(format!("CNI_COMMAND={}", inv.command))
            .arg(format!("CNI_CONTAINERID={}", inv.container_id))
            .arg(format!("CNI_NETNS={}", inv.netns))
            .arg(format!("CNI_IFNAME={}", inv.ifname))
            .arg(format!("CNI_PATH={}", self.cni_path()))
            .arg("CNI_ARGS=IgnoreUnknown=1")
            .arg(self.dir.join(plugin))
            .stdin_file(&stdin)
            .timeout(Duration::from_secs(60))
            .run();
        let _ = std::fs::remove_file(&stdin);
        out
    }

    /// [`Plugins::run`] that must exit 0 with a JSON answer (or nothing); the answer.
    pub fn run_ok(
        &self,
        host: &Host,
        plugin: &str,
        inv: &Invocation<'_>,
        conf: &str,
    ) -> Result<Option<Value>> {
        let out = self.run(host, plugin, inv, conf)?;
        if !out.success() {
            bail!("{plugin} {} failed: {out}", inv.command);
        }
        parse_answer(&out.stdout)
    }
}

/// One invocation's `CNI_*` values.
#[derive(Debug, Clone, Copy)]
pub struct Invocation<'a> {
    /// `CNI_COMMAND`.
    pub command: &'a str,
    /// `CNI_CONTAINERID`.
    pub container_id: &'a str,
    /// `CNI_NETNS` (a path, or "").
    pub netns: &'a str,
    /// `CNI_IFNAME`.
    pub ifname: &'a str,
}

impl<'a> Invocation<'a> {
    /// `command` for container `container_id` in namespace `/run/netns/<ns>` on `eth0`.
    pub fn new(command: &'a str, container_id: &'a str, netns: &'a str) -> Self {
        Self {
            command,
            container_id,
            netns,
            ifname: "eth0",
        }
    }
}

/// The JSON a plugin printed (`None` for nothing).
pub fn parse_answer(stdout: &str) -> Result<Option<Value>> {
    let t = stdout.trim();
    if t.is_empty() {
        return Ok(None);
    }
    serde_json::from_str(t)
        .map(Some)
        .with_context(|| format!("the plugin printed {t:?}, not JSON"))
}

/// The configuration with `prevResult` set to `result` (for CHECK and DEL).
pub fn with_prev_result(conf: &str, result: &Value) -> Result<String> {
    let mut v: Value = serde_json::from_str(conf)?;
    v["prevResult"] = result.clone();
    Ok(v.to_string())
}

/// The first address of a result (`a.b.c.d/len`).
pub fn first_address(result: &Value) -> Result<String> {
    result["ips"][0]["address"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no ips[0].address in {result}"))
}
