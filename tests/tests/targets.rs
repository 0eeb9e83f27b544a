//! Integration tests (root, network namespaces): the target list.
//!
//! - `weft forget B` on A while B is down stops A redialling: B relaunched without A as a
//!   target stays unconnected to A, and A's target list is empty.
//! - `weft connect --replace C` replaces the whole list (status and `targets.json` agree).
//! - `weft launch --resume` after `weft stop` dials the kept list without any peer argument.
//! - A refused target is redialled with growing, jittered gaps (2 s × 1.5), not in a loop.
//! - `--conn-limit 1` dials only one of two targets; accepted connections beyond the limit are
//!   refused as in Weave.

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

/// `ip:6783` of a host, as the target list is kept (`targets.json`, `status --json`).
fn target_of(h: &Host) -> String {
    format!("{}:6783", h.addr())
}

/// A host's target as `weft status targets` prints it: as given, without the default port
/// (Weave's shape).
fn shown(h: &Host) -> String {
    h.addr().to_string()
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
            targets(&a)? == [shown(&b)],
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
        let dial_needle = format!("connection to {}", target_of(&b));
        let dials_at_forget = a.log().matches(&dial_needle).count();
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
        // Nor did A try and fail: no new line about B's address in its log.
        let dials_after = a.log().matches(&dial_needle).count();
        ensure!(
            dials_after == dials_at_forget,
            "A's log mentions {dial_needle:?} {dials_at_forget} times at the forget and \
             {dials_after} times 10 s later:\n{}",
            weft_tests::cmd::tail(&a.log(), 20)
        );
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
        let mut want = vec![shown(&b), shown(&c)];
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
            t == [shown(&c)],
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
        ensure!(t == [shown(&c)], "A's targets after --resume: {t:?}");
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

#[test]
fn conn_limit_caps_dialling() {
    run_test("climit", |net| {
        let a = net.host(1)?;
        let b = net.host(2)?;
        let c = net.host(3)?;
        b.launch_args(&["--nickname", "host2", "--no-discovery"])?;
        c.launch_args(&["--nickname", "host3", "--no-discovery"])?;
        a.launch_args(&[
            "--nickname",
            "host1",
            "--conn-limit",
            "1",
            &b.addr().to_string(),
            &c.addr().to_string(),
        ])?;
        // One of the two targets gets connected; the other is never dialled while the limit is
        // taken.
        wait_until(
            "A to establish one connection",
            Duration::from_secs(20),
            Duration::from_millis(100),
            || {
                let n = weft_tests::mesh::established_count(&a)?;
                ensure!(n >= 1, "{n} established");
                Ok(())
            },
        )?;
        std::thread::sleep(Duration::from_secs(5));
        let (conns, text) = connections(&a)?;
        let live = conns
            .iter()
            .filter(|l| matches!(l.state.as_str(), "established" | "pending"))
            .count();
        ensure!(
            live == 1,
            "A with --conn-limit 1 has {live} live connections:\n{text}"
        );
        let (bc, _) = connections(&b)?;
        let (cc, _) = connections(&c)?;
        ensure!(
            bc.len() + cc.len() == 1,
            "B and C together see {} connections, expected 1 (A's limit):\nB: {bc:?}\nC: {cc:?}",
            bc.len() + cc.len()
        );
        Ok(())
    });
}

#[test]
fn conn_limit_caps_accepted_connections() {
    run_test("climin", |net| {
        let a = net.host(1)?;
        let b = net.host(2)?;
        let c = net.host(3)?;
        a.launch_args(&["--nickname", "host1", "--conn-limit", "1", "--no-discovery"])?;
        b.launch_args(&[
            "--nickname",
            "host2",
            "--no-discovery",
            &a.addr().to_string(),
        ])?;
        wait_established_with(&a, &b, Duration::from_secs(20))?;
        c.launch_args(&[
            "--nickname",
            "host3",
            "--no-discovery",
            &a.addr().to_string(),
        ])?;
        std::thread::sleep(Duration::from_secs(5));
        let (conns, text) = connections(&a)?;
        let live = conns
            .iter()
            .filter(|l| matches!(l.state.as_str(), "established" | "pending"))
            .count();
        ensure!(
            live == 1,
            "A with --conn-limit 1 accepted {live} connections (Weave refuses inbound \
             connections beyond the limit):\n{text}"
        );
        Ok(())
    });
}

/// Seconds since midnight of a log line's RFC 3339 timestamp (`2026-11-22T15:24:22.348463Z`).
fn log_secs(line: &str) -> Option<f64> {
    let t = line
        .split_whitespace()
        .next()?
        .split_once('T')?
        .1
        .trim_end_matches('Z');
    let mut parts = t.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

#[test]
fn refused_target_is_redialled_with_backoff() {
    run_test("backoff", |net| {
        let a = net.host(1)?;
        let b = net.host(2)?; // no router: every dial is refused
        a.launch(&[&b])?;
        let watch = Duration::from_secs(16);
        std::thread::sleep(watch);
        let (conns, text) = connections(&a)?;
        let line = lines_for(&conns, b.addr())
            .into_iter()
            .next()
            .with_context(|| format!("no line for B:\n{text}"))?;
        ensure!(
            line.outbound
                && matches!(line.state.as_str(), "retrying" | "connecting")
                && (line.state != "retrying" || line.line.contains("retry in")),
            "unexpected line for the refused target: {}",
            line.line
        );
        let needle = format!("connection to {}", target_of(&b));
        let log = a.log();
        let times: Vec<f64> = log
            .lines()
            .filter(|l| l.contains(&needle) && l.to_ascii_lowercase().contains("refused"))
            .filter_map(log_secs)
            .collect();
        let gaps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
        eprintln!(
            "{} refused dials in {watch:?}, gaps {gaps:.2?}",
            times.len()
        );
        // Gaps are uniform in [i/2, 3i/2] with i = 2 s, 3 s, 4.5 s, 6.75 s ...: within 16 s
        // that is at least 4 and at most 7 attempts.
        ensure!(
            (4..=7).contains(&times.len()),
            "{} dial attempts in {watch:?} (expected 4..=7); gaps {gaps:?}\n{}",
            times.len(),
            weft_tests::cmd::tail(&log, 30)
        );
        let mut i = 2.0f64;
        for (k, g) in gaps.iter().enumerate() {
            ensure!(
                *g >= i / 2.0 - 0.2 && *g <= i * 1.5 + 0.5,
                "gap {k} is {g:.2} s, outside [{:.2}, {:.2}] (backoff 2 s x 1.5 with jitter); \
                 gaps {gaps:.2?}",
                i / 2.0,
                i * 1.5
            );
            i *= 1.5;
        }
        Ok(())
    });
}
