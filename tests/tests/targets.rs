//! Integration tests (root, network namespaces): the target list.
//!
//! - `weft forget B` on A while B is down stops A redialling: B relaunched without A as a
//!   target stays unconnected to A, and A's target list is empty.
//! - `weft connect --replace C` replaces the whole list (status and `targets.json` agree).
//! - `weft launch --resume` after `weft stop` dials the kept list without any peer argument.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use weft_tests::mesh::{connections, lines_for, targets, wait_established_with};
use weft_tests::{Host, cmd::pid_alive, run_test, wait_until};

/// The addresses kept in `<state-dir>/targets.json`.
fn targets_file(h: &Host) -> Result<Vec<String>> {
    let p = h.state_dir().join("targets.json");
    read_list(&p)
}

fn read_list(p: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} holds {text:?}", p.display()))
}

/// Fails if `h` lists anything (live or being dialled) with `other`'s address.
fn no_connection(h: &Host, other: &Host) -> Result<()> {
    let (conns, text) = connections(h)?;
    ensure!(
        lines_for(&conns, other.addr()).is_empty(),
        "host {} lists a connection with host {} ({}):\n{text}",
        h.n(),
        other.n(),
        other.addr()
    );
    Ok(())
}

/// `ip:6783` of a host, as the target list prints it.
fn target_of(h: &Host) -> String {
    format!("{}:6783", h.addr())
}

#[test]
fn forget_stops_redialling() {
    run_test("forget", |net| {
        let a = net.host(1)?;
        let b = net.host(2)?;
        b.launch(&[])?;
        a.launch(&[&b])?;
        wait_established_with(&a, &b, Duration::from_secs(20))?;
        ensure!(
            targets(&a)? == [target_of(&b)],
            "A's targets: {:?}",
            targets(&a)?
        );
        ensure!(
            targets_file(&a)? == [target_of(&b)],
            "A's targets.json: {:?}",
            targets_file(&a)?
        );

        // B goes away; A starts redialling it.
        let b_pid = b.router_pid()?;
        b.weft_ok(&["stop"])?;
        wait_until(
            "B's router to exit",
            Duration::from_secs(10),
            Duration::from_millis(50),
            || {
                ensure!(!pid_alive(b_pid), "still alive");
                Ok(())
            },
        )?;
        wait_until(
            "A to notice B is gone",
            Duration::from_secs(10),
            Duration::from_millis(100),
            || {
                let (conns, text) = connections(&a)?;
                ensure!(
                    !lines_for(&conns, b.addr())
                        .iter()
                        .any(|c| c.state == "established"),
                    "still established:\n{text}"
                );
                Ok(())
            },
        )?;
        a.weft_ok(&["forget", &b.addr().to_string()])?;
        let t = targets(&a)?;
        ensure!(t.is_empty(), "A's targets after forget: {t:?}");
        ensure!(
            targets_file(&a)?.is_empty(),
            "A's targets.json after forget: {:?}",
            targets_file(&a)?
        );

        // B comes back knowing nothing of A. A must not dial it (forgotten, and nobody gossips
        // B's address to A).
        b.launch(&[])?;
        std::thread::sleep(Duration::from_secs(10));
        no_connection(&a, &b)?;
        no_connection(&b, &a)?;
        let t = targets(&a)?;
        ensure!(t.is_empty(), "A's targets 10 s later: {t:?}");
        let v = a.status_json()?;
        ensure!(
            v["targets"].as_array().is_some_and(Vec::is_empty),
            "A's status --json targets: {}",
            v["targets"]
        );
        // And the log says why: a dial attempt after the forget would show up as a new
        // connection line, checked above; the router is still alive.
        ensure!(pid_alive(a.router_pid()?), "A's router died");
        Ok(())
    });
}

#[test]
fn connect_replace_and_resume() {
    run_test("replace", |net| {
        let a = net.host(1)?;
        let b = net.host(2)?;
        let c = net.host(3)?;
        b.launch(&[])?;
        c.launch(&[])?;
        a.launch(&[&b])?;
        wait_established_with(&a, &b, Duration::from_secs(20))?;

        // `connect` without --replace adds.
        a.weft_ok(&["connect", &c.addr().to_string()])?;
        let mut t = targets(&a)?;
        t.sort();
        let mut want = vec![target_of(&b), target_of(&c)];
        want.sort();
        ensure!(
            t == want,
            "A's targets after connect C: {t:?}, expected {want:?}"
        );
        wait_established_with(&a, &c, Duration::from_secs(20))?;

        // `connect --replace` leaves exactly the given list, in status and on disk.
        a.weft_ok(&["connect", "--replace", &c.addr().to_string()])?;
        let t = targets(&a)?;
        ensure!(
            t == [target_of(&c)],
            "A's targets after connect --replace C: {t:?}"
        );
        let f = targets_file(&a)?;
        ensure!(
            f == [target_of(&c)],
            "A's targets.json after connect --replace C: {f:?}"
        );
        let v = a.status_json()?;
        ensure!(
            v["targets"] == serde_json::json!([target_of(&c)]),
            "A's status --json targets: {}",
            v["targets"]
        );

        // Stop A and B (so that nothing but the kept list can lead A anywhere), then resume.
        a.weft_ok(&["stop"])?;
        b.weft_ok(&["stop"])?;
        wait_until(
            "C to notice A is gone",
            Duration::from_secs(15),
            Duration::from_millis(100),
            || {
                let (conns, text) = connections(&c)?;
                ensure!(
                    !lines_for(&conns, a.addr())
                        .iter()
                        .any(|l| l.state == "established"),
                    "still established:\n{text}"
                );
                Ok(())
            },
        )?;
        a.launch_args(&["--nickname", "host1", "--resume"])?;
        wait_established_with(&a, &c, Duration::from_secs(20))?;
        let t = targets(&a)?;
        ensure!(t == [target_of(&c)], "A's targets after --resume: {t:?}");
        ensure!(
            targets_file(&a)? == [target_of(&c)],
            "targets.json changed by --resume"
        );
        // B (stopped) was not a target any more: A does not dial it.
        let (conns, text) = connections(&a)?;
        ensure!(
            lines_for(&conns, b.addr()).is_empty(),
            "A dials B although --replace removed it:\n{text}"
        );

        // --resume with peers given is refused.
        a.weft_ok(&["stop"])?;
        let out = a.weft(&["launch", "--resume", &b.addr().to_string()])?;
        ensure!(
            !out.success(),
            "`weft launch --resume PEER` was accepted:\n{out}"
        );
        Ok(())
    });
}
