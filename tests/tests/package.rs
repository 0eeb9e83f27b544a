//! Integration test (root, systemd-nspawn): the Debian package (issue 15) installs with
//! `dpkg -i`, runs under systemd, and `dpkg --purge` leaves nothing behind.
//!
//! The package is `$WEFT_DEB` (what `.ci/package` built in CI: the static musl binary, which
//! is then checked to be static) or, without it, one `.ci/package --bin <test binary> --fast`
//! makes now. It is installed in a machine booted by systemd ([`weft_tests::nspawn`]; its
//! `/usr` is an overlay over the host's, so nothing reaches the machine running the test), in
//! a private root, as a user would:
//! - `dpkg -i` installs `/usr/bin/weft`, the `weave` name, `weft.service` and the conffile
//!   `/etc/default/weft`; postinst's `weft setup` writes no unit of its own;
//! - configured through `/etc/default/weft`, `systemctl enable --now weft` starts it (the
//!   nickname from the file shows in `weave status`);
//! - `dpkg --purge weft` stops and disables it, and afterwards the machine's files are what they
//!   were before the install (dpkg's and systemd's own bookkeeping aside): no binary, link,
//!   unit, enablement link, options file or state directory is left.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use weft_tests::cmd::Cmd;
use weft_tests::nspawn::{Machine, require_nspawn};
use weft_tests::run_test;

/// Paths under the machine's root (host side, `/usr` excluded: it is the overlay, checked
/// through its upper directory) that are not bookkeeping.
fn snapshot(root: &Path) -> Result<BTreeSet<String>> {
    let out = Cmd::new("find")
        .arg(root)
        .args(["-mindepth", "1"])
        .timeout(Duration::from_secs(30))
        .run_ok()?
        .stdout;
    let skip = [
        "usr",
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "var/lib/dpkg",
        "var/log",
        "var/cache",
        "var/lib/systemd",
        "var/tmp",
    ];
    Ok(out
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{}/", root.display())))
        .filter(|p| {
            !skip
                .iter()
                .any(|s| *p == *s || p.starts_with(&format!("{s}/")))
        })
        .map(str::to_owned)
        .collect())
}

/// Files and links (not directories) in the overlay's upper directory.
fn upper_files(m: &Machine) -> Result<String> {
    Ok(Cmd::new("find")
        .arg(m.usr_upper())
        .args(["-not", "-type", "d"])
        .run_ok()?
        .stdout)
}

fn the_package(net: &weft_tests::TestNet) -> Result<(PathBuf, bool)> {
    if let Some(deb) = std::env::var_os("WEFT_DEB") {
        return Ok((PathBuf::from(deb), true));
    }
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = net.dir().join("deb");
    let built = Cmd::new(repo.join(".ci/package"))
        .arg("--bin")
        .arg(net.weft_bin()?)
        .arg("--fast")
        .arg("--out")
        .arg(&out)
        .timeout(Duration::from_secs(300))
        .run_ok()?;
    let deb = built
        .stdout
        .lines()
        .last()
        .context(".ci/package printed no file name")?;
    Ok((PathBuf::from(deb.trim()), false))
}

#[test]
fn dpkg_installs_runs_and_purges_without_leftovers() {
    run_test("pkg", |net| {
        require_nspawn()?;
        let (deb, from_ci) = the_package(net)?;
        let h1 = net.host(1)?;
        let dir = net.dir().join("machine");
        std::fs::create_dir_all(&dir)?;
        let mut m = Machine::boot(&h1, &dir, "weftpkg", &[(&deb, "/opt/weft.deb")])?;
        let r = (|| -> Result<()> {
            let before = snapshot(m.root())?;
            ensure!(
                upper_files(&m)?.trim().is_empty(),
                "the overlay is not empty at start"
            );

            let installed = m.sh_ok("dpkg -i /opt/weft.deb 2>&1")?;
            ensure!(
                installed.contains("systemctl enable --now weft"),
                "postinst did not say how to start it:\n{installed}"
            );
            m.sh_ok("dpkg -s weft | grep -qx 'Status: install ok installed'")?;
            ensure!(m.sh_ok("readlink /usr/bin/weave")?.trim() == "weft");
            m.sh_ok("weave version")?;
            if from_ci {
                let ldd = m.sh("ldd /usr/bin/weft 2>&1")?;
                ensure!(
                    ldd.stdout.contains("statically linked")
                        || ldd.stdout.contains("not a dynamic executable"),
                    "the packaged weft is not static: {}",
                    ldd.stdout
                );
            }
            let unit = m.sh_ok("systemctl cat weft")?;
            ensure!(
                unit.contains("/lib/systemd/system/weft.service")
                    && unit.contains("ExecStart=/usr/bin/weft launch --foreground"),
                "{unit}"
            );
            ensure!(
                !m.root().join("etc/systemd/system/weft.service").exists(),
                "postinst's weft setup wrote a unit beside the package's"
            );
            m.sh_ok("test -f /etc/default/weft && test -f /var/lib/weft/waiter/w")?;

            std::fs::write(
                m.root().join("etc/default/weft"),
                "WEAVE_OPTIONS=\"--nickname packaged --no-dns\"\n",
            )?;
            m.sh_ok("systemctl enable --now weft")?;
            let status = m.sh_ok("weave status")?;
            ensure!(status.contains("(packaged)"), "{status}");

            let purged = m.sh_ok("dpkg --purge weft 2>&1")?;
            let state = m.sh("systemctl is-active weft")?.stdout;
            ensure!(
                state.trim() != "active",
                "still {state} after purge:\n{purged}"
            );
            let left = m.sh("pgrep -x weft")?;
            ensure!(
                !left.success(),
                "weft still runs after purge: {}",
                left.stdout
            );
            let after = snapshot(m.root())?;
            let added: Vec<&String> = after.difference(&before).collect();
            ensure!(added.is_empty(), "left behind after purge: {added:?}");
            let upper = upper_files(&m)?;
            ensure!(
                upper.trim().is_empty(),
                "left under /usr after purge:\n{upper}"
            );
            Ok(())
        })();
        if let Err(e) = r {
            let j = m
                .sh("journalctl --no-pager -n 40")
                .map(|o| o.stdout)
                .unwrap_or_default();
            let _ = m.poweroff();
            return Err(e).with_context(|| format!("machine journal:\n{j}"));
        }
        m.poweroff()
    });
}
