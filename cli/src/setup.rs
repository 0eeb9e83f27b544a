//! Layer: driver. `weave setup`: prepares this host for weft, offline and idempotently (Weave's
//! setup pulled images; weft has nothing to download), and `weave setup --remove` undoes it.
//!
//! [`prepare`] makes the run and state directories and `/var/run/weave` (where the proxy's
//! socket goes), installs the static waiter that joined containers start with, and checks that
//! the kernel offers what the router needs. [`install`] puts weft on the host:
//! - the command: a binary outside the system's bin directories is installed as
//!   `/usr/local/bin/weft` (hard-linked, else copied); the other of the names `weft` and
//!   `weave` becomes a symlink beside it (a file already there under that name, such as
//!   Weave's own script, is kept as `NAME.before-weft` and put back by `--remove`);
//! - `weft.service` in `/etc/systemd/system` (unless a package installed one), see
//!   [`crate::systemd::unit`]; systemd is asked to reload, the unit is neither enabled nor
//!   started (`systemctl enable --now weft` does that);
//! - `/etc/default/weft`, commented-out options, if there is none;
//! - the CNI plugins, as Weave's `setup` did ([`install_cni`]): this binary as `weave-net` and
//!   `weave-ipam` in `/opt/cni/bin`, and `/etc/cni/net.d/10-weave.conflist` unless there is one.
//!
//! What it made is listed in `<state-dir>/setup.json`; `--remove` stops and disables the
//! unit and removes exactly those things (the options file only while unchanged). A package
//! (see `.ci/package`) ships the unit and the names itself and runs `weft setup` only for
//! [`prepare`].

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::Global;
use crate::systemd::{self, UNIT, UNIT_MARK};

/// Where Weave's proxy socket lives (and weft's, by default).
const WEAVE_RUN_DIR: &str = "/var/run/weave";
/// Directories a command may be installed in already.
const SYSTEM_BIN_DIRS: [&str; 6] = [
    "/usr/local/bin",
    "/usr/local/sbin",
    "/usr/bin",
    "/usr/sbin",
    "/bin",
    "/sbin",
];
/// Where `setup` installs the command when it runs from elsewhere.
const INSTALL_DIR: &str = "/usr/local/bin";
/// The unit `setup` writes.
const UNIT_FILE: &str = "/etc/systemd/system/weft.service";
/// Units a package installs (`setup` leaves those alone).
const PACKAGE_UNITS: [&str; 2] = [
    "/lib/systemd/system/weft.service",
    "/usr/lib/systemd/system/weft.service",
];
/// The options file the unit reads first.
const DEFAULTS_FILE: &str = "/etc/default/weft";
/// The record of what `setup` installed, in the state directory.
const MANIFEST: &str = "setup.json";
/// The suffix of a file `setup` moved out of the way.
const BACKUP_SUFFIX: &str = ".before-weft";

/// Arguments of `weave setup`.
#[derive(Debug, Args)]
pub(crate) struct SetupArgs {
    /// Undo `setup`: stop and disable weft.service, remove it, the `weave` name and what else
    /// `setup` installed (stored state stays; `weave reset` removes that).
    #[arg(long)]
    remove: bool,
    /// Print the systemd unit for a weft binary installed at EXE, and exit (for packages).
    #[arg(long, value_name = "EXE", conflicts_with = "remove")]
    print_unit: Option<PathBuf>,
    /// Print the default options file (/etc/default/weft), and exit (for packages).
    #[arg(long, conflicts_with = "remove")]
    print_defaults: bool,
}

/// One thing `setup` put on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Installed {
    path: PathBuf,
    /// What was there before, moved aside.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    backup: Option<PathBuf>,
}

/// `<state-dir>/setup.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Manifest {
    installed: Vec<Installed>,
}

impl Manifest {
    fn load(global: &Global) -> anyhow::Result<Self> {
        let path = global.state_dir.join(MANIFEST);
        match std::fs::read(&path) {
            Ok(b) => {
                serde_json::from_slice(&b).with_context(|| format!("reading {}", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn save(&self, global: &Global) -> anyhow::Result<()> {
        let path = global.state_dir.join(MANIFEST);
        if self.installed.is_empty() {
            return match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
                _ => Ok(()),
            };
        }
        let json = serde_json::to_vec_pretty(self)?;
        weft_router::identity::write_atomic(&path, &json)
            .with_context(|| format!("writing {}", path.display()))
    }

    fn record(&mut self, item: Installed) {
        if !self.installed.iter().any(|i| i.path == item.path) {
            self.installed.push(item);
        }
    }
}

/// `weave setup [--remove]`.
pub(crate) fn setup(global: &Global, args: SetupArgs) -> anyhow::Result<ExitCode> {
    if let Some(exe) = &args.print_unit {
        print!("{}", systemd::unit(exe));
        return Ok(ExitCode::SUCCESS);
    }
    if args.print_defaults {
        print!("{}", systemd::DEFAULTS);
        return Ok(ExitCode::SUCCESS);
    }
    if args.remove {
        for line in remove(global)? {
            eprintln!("{line}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    for warning in prepare(global)? {
        eprintln!("WARNING: {warning}");
    }
    for line in install(global)? {
        eprintln!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Makes what weft needs; returns warnings about what the host lacks.
pub(crate) fn prepare(global: &Global) -> anyhow::Result<Vec<String>> {
    for dir in [
        global.run_dir.as_path(),
        global.state_dir.as_path(),
        Path::new(WEAVE_RUN_DIR),
    ] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    weft_proxy::waiter::install(&global.state_dir.join("waiter"))?;
    let mut warnings = Vec::new();
    if !Path::new("/dev/net/tun").exists() {
        warnings
            .push("/dev/net/tun is missing: the router needs TUN/TAP (modprobe tun)".to_owned());
    }
    if !Path::new("/sys/module/bridge").exists() && !Path::new("/sys/class/net/weave").exists() {
        // Built in or loaded on demand on most kernels; only a hint.
        tracing::debug!("the bridge module is not loaded yet (it loads on demand)");
    }
    Ok(warnings)
}

/// Where Weave put CNI plugins and their configuration (`WEAVE_CNI_PLUGIN_DIR` and
/// `WEAVE_CNI_CONF_DIR` override, as in Weave's `setup-cni`).
const CNI_BIN_DIR: &str = "/opt/cni/bin";
const CNI_CONF_DIR: &str = "/etc/cni/net.d";
/// Weave's network configuration list.
const CONFLIST: &str = "10-weave.conflist";

/// Installs the CNI plugins (this binary as `weave-net` and `weave-ipam` in the CNI bin dir)
/// and writes Weave's `10-weave.conflist` unless one is there, recording in `manifest` what it
/// made (directories included, so `--remove` takes away only what it made); returns what it
/// did and warnings.
fn install_cni(manifest: &mut Manifest) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let env_dir = |var: &str, default: &str| {
        std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map_or_else(|| PathBuf::from(default), Into::into)
    };
    let bin_dir = env_dir("WEAVE_CNI_PLUGIN_DIR", CNI_BIN_DIR);
    let conf_dir = env_dir("WEAVE_CNI_CONF_DIR", CNI_CONF_DIR);
    let exe = std::env::current_exe().context("finding the weft executable")?;
    let mut said = Vec::new();
    create_dirs(&bin_dir, manifest)?;
    for name in ["weave-net", "weave-ipam"] {
        let dest = bin_dir.join(name);
        if same_content(&exe, &dest) {
            continue;
        }
        // A copy, not a link: runtimes may run plugins from another mount namespace.
        let tmp = bin_dir.join(format!(".{name}.tmp"));
        std::fs::copy(&exe, &tmp)
            .with_context(|| format!("copying {} to {}", exe.display(), tmp.display()))?;
        std::fs::rename(&tmp, &dest).with_context(|| format!("installing {}", dest.display()))?;
        manifest.record(Installed {
            path: dest.clone(),
            backup: None,
        });
        said.push(format!("installed the CNI plugin {}", dest.display()));
    }
    create_dirs(&conf_dir, manifest)?;
    let conflist = conf_dir.join(CONFLIST);
    if conflist.exists() {
        tracing::debug!("{} exists; left as it is", conflist.display());
    } else {
        std::fs::write(&conflist, conflist_text())
            .with_context(|| format!("writing {}", conflist.display()))?;
        manifest.record(Installed {
            path: conflist.clone(),
            backup: None,
        });
        said.push(format!("wrote {}", conflist.display()));
    }
    let mut warnings = Vec::new();
    if !Path::new("/usr/lib/cni/portmap").exists() && !bin_dir.join("portmap").exists() {
        warnings.push(format!(
            "{} chains the 'portmap' plugin, which is not installed (Debian: \
             containernetworking-plugins)",
            conflist.display()
        ));
    }
    Ok((said, warnings))
}

/// Creates `dir` and its missing parents, recording each one made (outermost first).
fn create_dirs(dir: &Path, manifest: &mut Manifest) -> anyhow::Result<()> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
    for d in missing.into_iter().rev() {
        std::fs::create_dir(d).with_context(|| format!("creating {}", d.display()))?;
        manifest.record(Installed {
            path: d.to_path_buf(),
            backup: None,
        });
    }
    Ok(())
}

/// Weave's `10-weave.conflist`: `weave-net` with hairpin mode, then `portmap`.
fn conflist_text() -> String {
    let v = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "weave",
        "disableCheck": true,
        "plugins": [
            { "name": "weave", "type": "weave-net", "hairpinMode": true },
            { "type": "portmap", "capabilities": { "portMappings": true }, "snat": true }
        ]
    });
    let mut text = serde_json::to_string_pretty(&v).unwrap_or_default();
    text.push('\n');
    text
}

/// Installs the command names, the unit, the options file and the CNI plugins; returns what it
/// did.
fn install(global: &Global) -> anyhow::Result<Vec<String>> {
    let mut manifest = Manifest::load(global)?;
    let mut said = Vec::new();
    let exe = std::env::current_exe()
        .and_then(std::fs::canonicalize)
        .context("finding the weft executable")?;
    let in_system_dir = exe
        .parent()
        .is_some_and(|d| SYSTEM_BIN_DIRS.iter().any(|s| Path::new(s) == d));
    let (bin_dir, installed) = if in_system_dir {
        let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
        (dir, exe.clone())
    } else {
        let dest = Path::new(INSTALL_DIR).join("weft");
        if install_binary(&exe, &dest, &mut manifest)? {
            said.push(format!("installed {} as {}", exe.display(), dest.display()));
        }
        (PathBuf::from(INSTALL_DIR), dest)
    };
    let file_name = installed
        .file_name()
        .context("the executable has no file name")?
        .to_owned();
    for name in ["weft", "weave"] {
        let link = bin_dir.join(name);
        if link == installed {
            continue;
        }
        if ensure_symlink(&link, Path::new(&file_name), &mut manifest)? {
            said.push(format!(
                "{} -> {}",
                link.display(),
                file_name.to_string_lossy()
            ));
        }
    }
    let weft = bin_dir.join("weft");
    // A package's unit is left as it is.
    let packaged = PACKAGE_UNITS.iter().any(|p| Path::new(p).exists());
    if !packaged
        && write_if_changed(
            Path::new(UNIT_FILE),
            &systemd::unit(&weft),
            true,
            &mut manifest,
        )?
    {
        said.push(format!(
            "wrote {UNIT_FILE}: systemctl enable --now weft (options in {DEFAULTS_FILE}, \
             /etc/weave/*.conf)"
        ));
        daemon_reload();
    }
    if !Path::new(DEFAULTS_FILE).exists()
        && write_if_changed(
            Path::new(DEFAULTS_FILE),
            systemd::DEFAULTS,
            false,
            &mut manifest,
        )?
    {
        said.push(format!("wrote {DEFAULTS_FILE}"));
    }
    let (cni_said, cni_warnings) = install_cni(&mut manifest)?;
    said.extend(cni_said);
    said.extend(cni_warnings.into_iter().map(|w| format!("WARNING: {w}")));
    manifest.save(global)?;
    Ok(said)
}

/// Installs `exe` as `dest` (a hard link when both are on one file system, else a copy);
/// true if it changed anything.
fn install_binary(exe: &Path, dest: &Path, manifest: &mut Manifest) -> anyhow::Result<bool> {
    if same_content(exe, dest) {
        return Ok(false);
    }
    let dir = dest.parent().context("no directory to install into")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let backup = set_aside(dest, manifest)?;
    let tmp = dir.join(format!(".weft.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    if std::fs::hard_link(exe, &tmp).is_err() {
        std::fs::copy(exe, &tmp)
            .with_context(|| format!("copying {} to {}", exe.display(), tmp.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    }
    std::fs::rename(&tmp, dest).with_context(|| format!("installing {}", dest.display()))?;
    manifest.record(Installed {
        path: dest.to_path_buf(),
        backup,
    });
    Ok(true)
}

/// Whether two files hold the same bytes (false if either is missing).
fn same_content(a: &Path, b: &Path) -> bool {
    let (Ok(ma), Ok(mb)) = (std::fs::metadata(a), std::fs::metadata(b)) else {
        return false;
    };
    {
        use std::os::unix::fs::MetadataExt;
        if ma.dev() == mb.dev() && ma.ino() == mb.ino() {
            return true;
        }
    }
    ma.len() == mb.len() && matches!((std::fs::read(a), std::fs::read(b)), (Ok(x), Ok(y)) if x == y)
}

/// Makes `link` a symlink to `target`; true if it changed anything.
fn ensure_symlink(link: &Path, target: &Path, manifest: &mut Manifest) -> anyhow::Result<bool> {
    if std::fs::read_link(link).is_ok_and(|t| t == target) {
        return Ok(false);
    }
    let backup = set_aside(link, manifest)?;
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("linking {} to {}", link.display(), target.display()))?;
    manifest.record(Installed {
        path: link.to_path_buf(),
        backup,
    });
    Ok(true)
}

/// Writes `text` to `path` unless it holds it already; a file there that `setup` did not write
/// (a unit without weft's mark, when `ours_marked`) is refused. True if it wrote.
fn write_if_changed(
    path: &Path,
    text: &str,
    ours_marked: bool,
    manifest: &mut Manifest,
) -> anyhow::Result<bool> {
    match std::fs::read_to_string(path) {
        Ok(old) if old == text => return Ok(false),
        Ok(old) if ours_marked && !old.starts_with(UNIT_MARK) => bail!(
            "{} exists and was not written by weft setup; move it away first",
            path.display()
        ),
        _ => {}
    }
    let dir = path.parent().context("no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".weft-setup.{}", std::process::id()));
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    manifest.record(Installed {
        path: path.to_path_buf(),
        backup: None,
    });
    Ok(true)
}

/// Moves a file that is in the way to `PATH.before-weft` (once); returns where it went.
fn set_aside(path: &Path, manifest: &Manifest) -> anyhow::Result<Option<PathBuf>> {
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(None);
    }
    if let Some(i) = manifest.installed.iter().find(|i| i.path == path) {
        // Ours from an earlier run: replace it, keep the first backup.
        std::fs::remove_file(path).with_context(|| format!("replacing {}", path.display()))?;
        return Ok(i.backup.clone());
    }
    let mut backup = path.as_os_str().to_owned();
    backup.push(BACKUP_SUFFIX);
    let backup = PathBuf::from(backup);
    std::fs::rename(path, &backup)
        .with_context(|| format!("moving {} to {}", path.display(), backup.display()))?;
    Ok(Some(backup))
}

/// Whether systemd runs this host (its runtime directory exists).
fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// `systemctl ARGS` when systemd runs; failures are reported, not fatal.
fn systemctl(args: &[&str]) -> Option<std::process::Output> {
    if !systemd_running() {
        return None;
    }
    match std::process::Command::new("systemctl").args(args).output() {
        Ok(out) => Some(out),
        Err(e) => {
            eprintln!("weft: systemctl {}: {e}", args.join(" "));
            None
        }
    }
}

fn daemon_reload() {
    if let Some(out) = systemctl(&["daemon-reload"]) {
        if !out.status.success() {
            eprintln!(
                "weft: systemctl daemon-reload: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
}

/// `setup --remove`: returns what it did.
fn remove(global: &Global) -> anyhow::Result<Vec<String>> {
    let mut manifest = Manifest::load(global)?;
    let mut said = Vec::new();
    let unit_is_ours = manifest
        .installed
        .iter()
        .any(|i| i.path == Path::new(UNIT_FILE));
    if unit_is_ours {
        if let Some(out) = systemctl(&["disable", "--now", UNIT]) {
            if out.status.success() {
                said.push(format!("stopped and disabled {UNIT}"));
            }
        }
    }
    // Newest first, so a backup is restored after what replaced it is gone.
    while let Some(item) = manifest.installed.pop() {
        let path = item.path.clone();
        let path = path.as_path();
        let remove = if path == Path::new(DEFAULTS_FILE) {
            // The administrator's edits stay.
            std::fs::read_to_string(path).is_ok_and(|t| t == systemd::DEFAULTS)
        } else if path == Path::new(UNIT_FILE) {
            std::fs::read_to_string(path).is_ok_and(|t| t.starts_with(UNIT_MARK))
        } else {
            true
        };
        if path.is_dir() {
            // A directory setup made (for the CNI files): only while empty.
            if std::fs::remove_dir(path).is_ok() {
                said.push(format!("removed {}", path.display()));
            }
        } else if !remove {
            said.push(format!("kept {} (changed since setup)", path.display()));
        } else {
            match std::fs::remove_file(path) {
                Ok(()) => said.push(format!("removed {}", path.display())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    manifest.installed.push(item);
                    manifest.save(global)?;
                    return Err(e).with_context(|| format!("removing {}", path.display()));
                }
            }
        }
        if let Some(backup) = &item.backup {
            if std::fs::symlink_metadata(path).is_err() && std::fs::rename(backup, path).is_ok() {
                said.push(format!("restored {}", path.display()));
            }
        }
    }
    manifest.save(global)?;
    if unit_is_ours {
        daemon_reload();
    }
    let waiter = global.state_dir.join("waiter");
    let _ = std::fs::remove_file(waiter.join("w"));
    for dir in [waiter.as_path(), Path::new(WEAVE_RUN_DIR), &global.run_dir] {
        // Only while empty: a running router's or proxy's files stay.
        let _ = std::fs::remove_dir(dir);
    }
    Ok(said)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflist_is_weaves() {
        let v: serde_json::Value = serde_json::from_str(&conflist_text()).unwrap();
        assert_eq!(v["name"], "weave");
        assert_eq!(v["plugins"][0]["type"], "weave-net");
        assert_eq!(v["plugins"][0]["hairpinMode"], true);
        // The first plugin's configuration is one weave-net parses.
        let mut first = v["plugins"][0].clone();
        first["cniVersion"] = v["cniVersion"].clone();
        let conf = weft_cni::conf::NetConf::parse(first.to_string().as_bytes()).unwrap();
        conf.check_weave_net().unwrap();
        assert!(conf.hairpin);
    }
}
