//! Integration test (root, network namespaces, systemd-nspawn): weft under real systemd
//! (issue 15).
//!
//! Host 1 is a Debian machine booted by systemd in `systemd-nspawn` ([`weft_tests::nspawn`]),
//! hosts 2 and 3 are plain namespaces. Inside the machine, as an administrator would:
//! `weft setup` (from the build, bind-mounted at `/opt/weft-build/weft`) installs
//! `/usr/local/bin/weft`, the `weave` name, `weft.service` and `/etc/default/weft`, and a
//! second run changes nothing; the seed's `/etc/weave/weave.conf` (`WEAVE_OPTIONS`,
//! `WEAVE_PEERS`) configures it; `systemctl enable --now weft` returns once the router serves
//! (Type=notify). Then:
//! - hosts 2 and 3 connect to it, and containers on host 1 and host 2 ping each other;
//! - SIGKILL to the daemon: systemd restarts it (NRestarts 1, a new pid), peers reconnect and
//!   the containers ping again;
//! - `weave logs` inside the machine shows both runs from the journal;
//! - `systemctl stop weft` stops it cleanly (exit status 0, not killed, "weft daemon exits" in
//!   the journal, no weft process left);
//! - `weave stop` on a running unit is not undone by `Restart=always`;
//! - `weft setup --remove` removes the unit, both names and the options file: nothing of weft
//!   is left under the machine's `/usr` or `/etc`.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use weft_tests::mesh::{launch_with, wait_established_with};
use weft_tests::nspawn::{Machine, require_nspawn};
use weft_tests::{run_test, wait_until};

/// The journal of the unit, for failure messages.
fn journal(m: &Machine) -> String {
    m.sh("journalctl --no-pager -u weft -n 60")
        .map(|o| o.stdout)
        .unwrap_or_default()
}

fn wait_active(m: &Machine, what: &str, pred: impl Fn(&str, &str, &str) -> bool) -> Result<()> {
    wait_until(
        what,
        Duration::from_secs(40),
        Duration::from_millis(200),
        || {
            let state = m.unit_property("weft", "ActiveState")?;
            let pid = m.unit_property("weft", "MainPID")?;
            let restarts = m.unit_property("weft", "NRestarts")?;
            if pred(&state, &pid, &restarts) {
                Ok(())
            } else {
                bail!("ActiveState={state} MainPID={pid} NRestarts={restarts}")
            }
        },
    )
}

#[test]
fn weft_service_starts_restarts_after_sigkill_and_stops_cleanly() {
    run_test("unit", |net| {
        require_nspawn()?;
        let (h1, h2, h3) = (net.host(1)?, net.host(2)?, net.host(3)?);
        let bin = net.weft_bin()?.to_path_buf();
        let dir = net.dir().join("machine");
        std::fs::create_dir_all(&dir)?;
        let mut m = Machine::boot(&h1, &dir, "weftbox", &[(&bin, "/opt/weft-build/weft")])?;
        let r = (|| -> Result<()> {
            // Installed as an administrator would.
            let said = m.sh_ok("/opt/weft-build/weft setup 2>&1")?;
            for want in [
                "/usr/local/bin/weft",
                "/usr/local/bin/weave",
                "weft.service",
            ] {
                ensure!(said.contains(want), "setup did not mention {want}:\n{said}");
            }
            let again = m.sh_ok("weave setup 2>&1")?;
            ensure!(
                again.trim().is_empty(),
                "a second setup changed things:\n{again}"
            );
            ensure!(
                m.sh_ok("readlink /usr/local/bin/weave")?.trim() == "weft",
                "weave is not a link to weft"
            );
            let unit = m.sh_ok("systemctl cat weft")?;
            ensure!(
                unit.contains("ExecStart=/usr/local/bin/weft launch --foreground"),
                "{unit}"
            );
            m.sh_ok("test -f /etc/default/weft")?;
            // The seed's configuration file, as its init scripts sourced it.
            std::fs::create_dir_all(m.root().join("etc/weave"))?;
            std::fs::write(
                m.root().join("etc/weave/weave.conf"),
                "WEAVE_OPTIONS=\"--nickname boxed --no-dns\"\nWEAVE_PEERS=\"\"\n",
            )?;
            // Type=notify: this returns once the daemon said READY=1.
            m.sh_ok("systemctl enable --now weft")?;
            ensure!(
                m.unit_property("weft", "ActiveState")? == "active",
                "weft.service is not active after start"
            );
            let status = m.sh_ok("weave status")?;
            eprintln!("weave status inside the machine:\n{status}");
            ensure!(status.contains("(boxed)"), "options not read:\n{status}");
            let pid1 = m.unit_property("weft", "MainPID")?;

            launch_with(&h2, &[], &[&h1])?;
            launch_with(&h3, &[], &[&h1])?;
            for h in [&h2, &h3] {
                wait_established_with(h, &h1, Duration::from_secs(30))?;
            }
            let c1 = h1.container("c1", "10.32.0.1/12")?;
            let c2 = h2.container("c2", "10.32.0.2/12")?;
            c1.wait_ping(c2.ip(), Duration::from_secs(20))?;

            // SIGKILL: systemd restarts it.
            m.sh_ok(&format!("kill -KILL {pid1}"))?;
            wait_active(&m, "a restart after SIGKILL", |s, pid, n| {
                s == "active" && pid != pid1 && pid != "0" && n == "1"
            })?;
            for h in [&h2, &h3] {
                wait_established_with(h, &h1, Duration::from_secs(30))?;
            }
            c1.wait_ping(c2.ip(), Duration::from_secs(20))?;
            c2.wait_ping(c1.ip(), Duration::from_secs(20))?;

            // The log of both runs, from the journal.
            let logs = m.sh_ok("weave logs")?;
            let starts = logs.matches("weft daemon 0.").count();
            eprintln!("weave logs (tail):\n{}", weft_tests::cmd::tail(&logs, 12));
            ensure!(
                starts >= 2,
                "weave logs shows {starts} daemon start(s):\n{logs}"
            );
            let tail = m.sh_ok("weft logs --tail 3")?;
            ensure!(tail.lines().count() <= 4, "--tail 3 printed:\n{tail}");

            // A clean stop.
            m.sh_ok("systemctl stop weft")?;
            let (state, result) = (
                m.unit_property("weft", "ActiveState")?,
                m.unit_property("weft", "Result")?,
            );
            let (code, status) = (
                m.unit_property("weft", "ExecMainCode")?,
                m.unit_property("weft", "ExecMainStatus")?,
            );
            // ExecMainCode 1 = CLD_EXITED (not killed by a signal).
            ensure!(
                state == "inactive" && result == "success" && code == "1" && status == "0",
                "after systemctl stop: ActiveState={state} Result={result} ExecMainCode={code} \
                 ExecMainStatus={status}"
            );
            ensure!(
                journal(&m).contains("weft daemon exits"),
                "the daemon did not exit by itself"
            );
            let left = m.sh("pgrep -x weft")?;
            ensure!(!left.success(), "weft processes left: {}", left.stdout);

            // `weave stop` is not undone by Restart=always.
            m.sh_ok("systemctl start weft")?;
            let restarts = m.unit_property("weft", "NRestarts")?;
            m.sh_ok("weave stop")?;
            wait_active(&m, "the unit to stop after weave stop", |s, _, _| {
                s == "inactive"
            })?;
            std::thread::sleep(Duration::from_secs(3));
            ensure!(
                m.unit_property("weft", "ActiveState")? == "inactive"
                    && m.unit_property("weft", "NRestarts")? == restarts,
                "weave stop was undone by a restart"
            );

            // setup --remove leaves nothing of weft behind.
            m.sh_ok("weft setup --remove 2>&1")?;
            let left = m.sh(
                "ls -d /usr/local/bin/weft /usr/local/bin/weave /etc/systemd/system/weft.service \
                 /etc/default/weft /etc/systemd/system/multi-user.target.wants/weft.service \
                 2>/dev/null",
            )?;
            ensure!(
                left.stdout.trim().is_empty(),
                "left after setup --remove:\n{}",
                left.stdout
            );
            let upper = weft_tests::Cmd::new("find")
                .arg(m.usr_upper())
                .args(["-name", "wea*", "-o", "-name", "weft*"])
                .run_ok()?
                .stdout;
            ensure!(upper.trim().is_empty(), "left under /usr:\n{upper}");
            Ok(())
        })();
        if let Err(e) = r {
            let j = journal(&m);
            let _ = m.poweroff();
            return Err(e).with_context(|| format!("journal of weft.service:\n{j}"));
        }
        m.poweroff()
    });
}
