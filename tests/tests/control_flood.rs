//! Integration test (root, network namespaces): a remote host that keeps reopening 400 idle
//! connections to a router's control port (TCP 6783) neither fills the router's log (under
//! 1 MB a minute, with summary lines instead of a line per refusal) nor keeps a real new peer
//! from joining (within 2 s).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use weft_tests::cmd::Cmd;
use weft_tests::local::flood_bin;
use weft_tests::mesh::established_with;
use weft_tests::run_test;

#[test]
fn reopening_flood_on_the_control_port_keeps_the_log_small_and_lets_peers_join() {
    run_test("ctlfld", |net| {
        let h1 = net.host(1)?;
        let h2 = net.host(2)?;
        let attacker = net.host(3)?;
        h1.launch_args(&["--nickname", "host1"])?;
        let target = format!("{}:6783", h1.addr());
        let out: PathBuf = net.dir().join("flood.json");
        let err: PathBuf = net.dir().join("flood.err");
        let mut flood = Cmd::new("ip")
            .args(["netns", "exec", attacker.ns()])
            .arg(flood_bin()?)
            .args(["reopen", &target, "400", "80"])
            .spawn_to(&out, &err)?;
        std::thread::sleep(Duration::from_secs(5));
        let log_start = std::fs::metadata(h1.log_path())?.len();
        let minute = Instant::now();
        // A real peer joins while the flood goes on.
        h2.launch_args(&["--nickname", "host2", &h1.addr().to_string()])?;
        let launched = Instant::now();
        let joined = loop {
            if established_with(&h1, &h2)? && established_with(&h2, &h1)? {
                break launched.elapsed();
            }
            ensure!(
                launched.elapsed() < Duration::from_secs(30),
                "host 2 did not join host 1 within 30 s under the flood"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        eprintln!(
            "host 2 joined in {:.2} s during the flood",
            joined.as_secs_f64()
        );
        // The log over one minute of flood.
        std::thread::sleep(Duration::from_secs(60).saturating_sub(minute.elapsed()));
        let grown = std::fs::metadata(h1.log_path())?
            .len()
            .saturating_sub(log_start);
        let status = flood.wait()?;
        let report = std::fs::read_to_string(&out)?;
        eprintln!("flood: {report} ({status}); host 1's log grew {grown} bytes in a minute");
        let v: serde_json::Value =
            serde_json::from_str(report.trim()).with_context(|| format!("{report:?}"))?;
        ensure!(
            v["opened"].as_u64() >= Some(4000),
            "the flood did not get going: {report}"
        );
        ensure!(
            grown < 1_000_000,
            "host 1's log grew {grown} bytes in a minute of flood"
        );
        let log = h1.log();
        ensure!(
            log.contains("more connections from 192.0.2.13"),
            "no summary line for the refused connections:\n{}",
            weft_tests::cmd::tail(&log, 20)
        );
        ensure!(
            joined < Duration::from_secs(2),
            "host 2 took {:.1} s to join during the flood",
            joined.as_secs_f64()
        );
        Ok(())
    });
}
