//! Integration tests (root, network namespaces): control-connection handshakes that must fail,
//! and how they are reported. A router dialling its own address gives up for good ("cannot
//! connect to ourself"), two routers sharing a peer name refuse each other ("peer name
//! collision"), and a peer speaking another protocol version is retried with the version ranges
//! in the status line, after our own hello went out so the other side can report it too.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use weft_tests::status::{ConnLine, parse_connections};
use weft_tests::{Cmd, Host, cmd, cmd::pid_alive, run_test, wait_until};

/// `weft status connections` on `h`, parsed, with the raw text for messages.
fn connections(h: &Host) -> Result<(Vec<ConnLine>, String)> {
    let text = h.weft_ok(&["status", "connections"])?;
    Ok((parse_connections(&text), text))
}

/// Waits until `weft status connections` on `h` has a line for `addr` in state `state` whose
/// text contains `needle`; returns that line.
fn wait_conn_line(
    h: &Host,
    addr: &str,
    state: &str,
    needle: &str,
    timeout: Duration,
) -> Result<ConnLine> {
    wait_until(
        &format!("host {}: connection {addr} {state} with {needle:?}", h.n()),
        timeout,
        Duration::from_millis(100),
        || {
            let (conns, text) = connections(h)?;
            conns
                .into_iter()
                .find(|c| c.address == addr && c.state == state && c.line.contains(needle))
                .with_context(|| format!("`weft status connections` printed:\n{text}"))
        },
    )
}

#[test]
fn connect_to_self_fails_permanently() {
    run_test("self", |net| {
        let h1 = net.host(1)?;
        let own = format!("{}", h1.addr());
        h1.launch_args(&["--nickname", "host1", &own])?;
        let pid = h1.router_pid()?;
        let target = format!("{own}:6783");
        let line = wait_conn_line(
            &h1,
            &target,
            "failed",
            "cannot connect to ourself",
            Duration::from_secs(15),
        )?;
        eprintln!("status line: {}", line.line);
        ensure!(line.outbound, "the failed target is not outbound: {line:?}");
        ensure!(
            h1.log().contains("cannot connect to ourself"),
            "router log does not mention the connection to ourself:\n{}",
            cmd::tail(&h1.log(), 30)
        );

        // Give the inbound half of the self-connection time to log its end, then watch the log:
        // a permanent failure means no redial, so nothing more is written.
        std::thread::sleep(Duration::from_millis(500));
        let before = h1.log().lines().count();
        std::thread::sleep(Duration::from_secs(5));
        let log = h1.log();
        let after = log.lines().count();
        ensure!(
            after == before,
            "router log grew from {before} to {after} lines without anything happening \
             (a redial?):\n{}",
            cmd::tail(&log, after.saturating_sub(before) + 5)
        );
        ensure!(pid_alive(pid), "router (pid {pid}) died");
        // Still answering, still one failed target and nothing else.
        let (conns, text) = connections(&h1)?;
        ensure!(
            conns.len() == 1 && conns[0].state == "failed",
            "after 5 s `weft status connections` printed:\n{text}"
        );
        ensure!(
            !log.contains("panicked"),
            "router log mentions a panic:\n{}",
            cmd::tail(&log, 30)
        );
        Ok(())
    });
}

#[test]
fn peer_name_collision_is_refused_on_both_sides() {
    run_test("coll", |net| {
        let h1 = net.host(1)?;
        let h2 = net.host(2)?;
        h1.launch(&[])?;
        let name = h1.peer_name()?;
        let h1_addr = h1.addr().to_string();
        h2.launch_args(&["--nickname", "host2", "--name", &name, &h1_addr])?;
        let got = h2.peer_name()?;
        ensure!(
            got == name,
            "host 2 runs as {got}, not as the requested {name}"
        );
        let line = wait_conn_line(
            &h2,
            &format!("{h1_addr}:6783"),
            "failed",
            "peer name collision",
            Duration::from_secs(15),
        )?;
        eprintln!("host 2 status line: {}", line.line);
        wait_until(
            "host 1's log to mention the collision",
            Duration::from_secs(5),
            Duration::from_millis(100),
            || {
                let log = h1.log();
                if log.contains("peer name collision") {
                    Ok(())
                } else {
                    bail!("log tail:\n{}", cmd::tail(&log, 20))
                }
            },
        )?;
        ensure!(
            h2.log().contains("peer name collision"),
            "host 2's log does not mention the collision:\n{}",
            cmd::tail(&h2.log(), 20)
        );
        // Neither side keeps a connection to the other.
        let (c1, t1) = connections(&h1)?;
        ensure!(
            c1.iter()
                .all(|c| c.state != "established" && c.state != "pending"),
            "host 1 still lists a live connection:\n{t1}"
        );
        for h in [&h1, &h2] {
            let pid = h.router_pid()?;
            ensure!(pid_alive(pid), "router on host {} (pid {pid}) died", h.n());
        }
        Ok(())
    });
}

/// A fake peer: accepts on TCP 6783, sends a hello with versions 6..7 (above ours), and prints (hex) the
/// first 6 bytes each dialler sends. argv: seconds to run.
const FAKE_PEER_PY: &str = r#"
import socket, sys, time
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(('0.0.0.0', 6783))
srv.listen(8)
srv.settimeout(0.5)
print('listening', flush=True)
deadline = time.time() + float(sys.argv[1])
while time.time() < deadline:
    try:
        c, addr = srv.accept()
    except socket.timeout:
        continue
    c.settimeout(3)
    try:
        c.sendall(b'weft' + bytes([6, 7]))
        got = b''
        while len(got) < 6:
            chunk = c.recv(6 - len(got))
            if not chunk:
                break
            got += chunk
        print('from %s got %s' % (addr[0], got.hex()), flush=True)
    except OSError as e:
        print('from %s error %s' % (addr[0], e), flush=True)
    finally:
        c.close()
"#;

#[test]
fn protocol_version_mismatch_is_reported_and_retried() {
    run_test("vers", |net| {
        let h1 = net.host(1)?;
        let fake = net.host(9)?;
        let script = net.dir().join("fake_peer.py");
        std::fs::write(&script, FAKE_PEER_PY)?;
        let out = net.dir().join("fake_peer.out");
        let err = net.dir().join("fake_peer.err");
        let mut child = Cmd::new("ip")
            .args(["netns", "exec", fake.ns(), "python3", "-u"])
            .arg(&script)
            .arg("60")
            .spawn_to(&out, &err)?;
        let res = (|| -> Result<()> {
            wait_until(
                "the fake peer to listen",
                Duration::from_secs(10),
                Duration::from_millis(50),
                || {
                    if let Some(st) = child.try_wait()? {
                        bail!(
                            "fake peer exited with {st}: {}",
                            std::fs::read_to_string(&err).unwrap_or_default()
                        );
                    }
                    let o = std::fs::read_to_string(&out).unwrap_or_default();
                    ensure!(o.contains("listening"), "not yet");
                    Ok(())
                },
            )?;
            let fake_addr = fake.addr().to_string();
            h1.launch_args(&["--nickname", "host1", &fake_addr])?;
            let line = wait_conn_line(
                &h1,
                &format!("{fake_addr}:6783"),
                "retrying",
                "protocol version mismatch: we speak 4..5, peer speaks 6..7",
                Duration::from_secs(15),
            )?;
            eprintln!("status line: {}", line.line);
            // b"weft", min version 4, max version 5.
            let want = format!("from {} got 776566740405", h1.addr());
            wait_until(
                "the fake peer to receive the router's hello",
                Duration::from_secs(5),
                Duration::from_millis(100),
                || {
                    let o = std::fs::read_to_string(&out).unwrap_or_default();
                    ensure!(o.contains(&want), "fake peer printed:\n{o}");
                    Ok(())
                },
            )?;
            ensure!(
                h1.log().contains("protocol version mismatch"),
                "router log does not mention the mismatch:\n{}",
                cmd::tail(&h1.log(), 20)
            );
            let pid = h1.router_pid()?;
            ensure!(pid_alive(pid), "router (pid {pid}) died");
            Ok(())
        })();
        // Our own child, killed by its id.
        let _ = child.kill();
        let _ = child.wait();
        res
    });
}
