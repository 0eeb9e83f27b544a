//! Layer: driver. What weft needs of systemd, without linking it: the unit file `weft setup`
//! installs ([`unit()`]), readiness and stop notices to the service manager ([`notify`], the
//! `sd_notify` datagram protocol on `$NOTIFY_SOCKET`), and whether the daemon's output goes to
//! the journal ([`journal_unit`]), so `weft logs` knows where to look.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The unit's name.
pub(crate) const UNIT: &str = "weft.service";

/// The first line of every unit `weft setup` writes: what `setup --remove` recognises.
pub(crate) const UNIT_MARK: &str = "# weft.service, written by `weft setup`";

/// The unit file for the weft binary at `exe`.
///
/// `Type=notify`: the daemon says `READY=1` once the router (and the proxy, when Docker is
/// there) serve. Options come from `/etc/default/weft`, then `/etc/weave/*.conf` (the files
/// Weave 1.x's init scripts sourced for `WEAVE_OPTIONS`, `WEAVE_PEERS` and
/// `WEAVEPROXY_OPTIONS`; the proxy's options are read from the environment by `launch`).
/// `Restart=always` replaces Docker's restart policy; a `weave stop` (the daemon then exits
/// with status 0) is not undone by a restart. Output goes to the journal.
pub(crate) fn unit(exe: &Path) -> String {
    let exe = exe.display();
    format!(
        "{UNIT_MARK} {version}; `weft setup --remove` removes it.\n\
         [Unit]\n\
         Description=weft overlay network for containers (Weave Net drop-in): router and Docker API proxy\n\
         After=network-online.target docker.service\n\
         Wants=network-online.target\n\
         \n\
         [Service]\n\
         Type=notify\n\
         NotifyAccess=main\n\
         Environment=WEAVE_OPTIONS= WEAVE_PEERS=\n\
         EnvironmentFile=-/etc/default/weft\n\
         EnvironmentFile=-/etc/weave/*.conf\n\
         ExecStart={exe} launch --foreground $WEAVE_OPTIONS $WEAVE_PEERS\n\
         Restart=always\n\
         RestartSec=2\n\
         RestartPreventExitStatus=0\n\
         TimeoutStartSec=120\n\
         TimeoutStopSec=30\n\
         KillMode=mixed\n\
         LimitNOFILE=65536\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        version = env!("CARGO_PKG_VERSION"),
    )
}

/// The options file `weft setup` writes if there is none (`/etc/default/weft`).
pub(crate) const DEFAULTS: &str = "\
# Options for weft.service (systemd reads this file, then /etc/weave/*.conf, as Weave's init
# scripts did). After a change: systemctl restart weft
#
# Peers to connect to (addresses or host names, space-separated):
#WEAVE_PEERS=\"192.0.2.11 192.0.2.12\"
# Other `weave launch` options:
#WEAVE_OPTIONS=\"--no-dns --ipalloc-range 10.32.0.0/12\"
# Options of the Docker API proxy:
#WEAVEPROXY_OPTIONS=\"--rewrite-inspect\"
# Encrypt the network (or put --password-file in WEAVE_OPTIONS):
#WEAVE_PASSWORD=
";

/// Sends `state` (e.g. `READY=1`) to the service manager, if one asked for notices
/// (`$NOTIFY_SOCKET`, a path or an abstract `@name`); errors are logged, never fatal.
pub(crate) fn notify(state: &str) {
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let addr = if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        SocketAddr::from_abstract_name(name.as_bytes())
    } else {
        SocketAddr::from_pathname(&path)
    };
    let sent = addr.and_then(|addr| UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr));
    if let Err(e) = sent {
        tracing::warn!("telling systemd {state:?} on {path}: {e}");
    }
}

/// The unit whose journal receives this process's standard output, if it does: systemd sets
/// `$JOURNAL_STREAM` to the device and inode of that stream, and the unit is the last
/// `.service` in the process's cgroup path.
pub(crate) fn journal_unit() -> Option<String> {
    let stream = std::env::var("JOURNAL_STREAM").ok()?;
    let (dev, ino) = stream.split_once(':')?;
    let out = std::fs::metadata("/proc/self/fd/1").ok()?;
    if out.dev().to_string() != dev || out.ino().to_string() != ino {
        return None;
    }
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    Some(unit_of_cgroup(&cgroup).unwrap_or_else(|| UNIT.to_owned()))
}

/// The service a `/proc/PID/cgroup` text places the process in.
fn unit_of_cgroup(text: &str) -> Option<String> {
    // cgroup v2 (`0::/system.slice/weft.service`) or v1's `name=systemd` hierarchy.
    let line = text
        .lines()
        .find(|l| l.starts_with("0::"))
        .filter(|l| l.contains(".service"))
        .or_else(|| text.lines().find(|l| l.contains(":name=systemd:")))?;
    line.rsplit(':')
        .next()?
        .split('/')
        .rev()
        .find(|c| c.ends_with(".service"))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_runs_the_given_binary_in_the_foreground() {
        let u = unit(Path::new("/usr/bin/weft"));
        assert!(u.starts_with(UNIT_MARK));
        assert!(u.contains(
            "\nExecStart=/usr/bin/weft launch --foreground $WEAVE_OPTIONS $WEAVE_PEERS\n"
        ));
        for line in [
            "Type=notify",
            "Restart=always",
            "EnvironmentFile=-/etc/weave/*.conf",
        ] {
            assert!(u.lines().any(|l| l == line), "{line} missing:\n{u}");
        }
    }

    #[test]
    fn units_from_cgroups() {
        assert_eq!(
            unit_of_cgroup("0::/system.slice/weft.service\n").as_deref(),
            Some("weft.service")
        );
        assert_eq!(
            unit_of_cgroup("9:name=systemd:/system.slice/weave-net.service\n0::/\n").as_deref(),
            Some("weave-net.service")
        );
        assert_eq!(unit_of_cgroup("0::/user.slice/session-1.scope\n"), None);
    }
}
