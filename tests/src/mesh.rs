//! Test-support layer: helpers for multi-hop mesh tests (relays, discovery, targets).
//!
//! Owns nothing itself: it launches routers with extra options, blocks underlay paths with
//! iptables inside host namespaces (removed with the namespaces), reads connection and peer
//! state from `weft status`, and moves a file through the overlay with `nc`, comparing
//! checksums.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::cmd::{ns_sh, wait_until};
use crate::net::{Container, Host, TestNet};
use crate::status::{ConnLine, parse_connections};

/// `weft launch --nickname host<n> OPTS... PEERS...` (peers as their underlay addresses).
pub fn launch_with(h: &Host, opts: &[&str], peers: &[&Host]) -> Result<()> {
    let mut args: Vec<String> = vec!["--nickname".into(), format!("host{}", h.n())];
    args.extend(opts.iter().map(|s| (*s).to_owned()));
    args.extend(peers.iter().map(|p| p.addr().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    h.launch_args(&args)
}

/// Drops every underlay packet between `a` and `b`, in both hosts' namespaces (INPUT and
/// OUTPUT on each side). The rules vanish with the namespaces.
pub fn block_underlay(a: &Host, b: &Host) -> Result<()> {
    for (h, other) in [(a, b), (b, a)] {
        let o = other.addr().to_string();
        for rule in [["-A", "INPUT", "-s"], ["-A", "OUTPUT", "-d"]] {
            let mut args = vec!["iptables", "-w"];
            args.extend_from_slice(&rule);
            args.extend_from_slice(&[o.as_str(), "-j", "DROP"]);
            h.exec(&args)?
                .ok()
                .with_context(|| format!("blocking {o} on host {}", h.n()))?;
        }
    }
    Ok(())
}

/// Undoes [`block_underlay`] (the partition heals).
pub fn unblock_underlay(a: &Host, b: &Host) -> Result<()> {
    for (h, other) in [(a, b), (b, a)] {
        let o = other.addr().to_string();
        for rule in [["-D", "INPUT", "-s"], ["-D", "OUTPUT", "-d"]] {
            let mut args = vec!["iptables", "-w"];
            args.extend_from_slice(&rule);
            args.extend_from_slice(&[o.as_str(), "-j", "DROP"]);
            h.exec(&args)?
                .ok()
                .with_context(|| format!("unblocking {o} on host {}", h.n()))?;
        }
    }
    Ok(())
}

/// `weft status connections` on `h`, parsed, with the raw text for messages.
pub fn connections(h: &Host) -> Result<(Vec<ConnLine>, String)> {
    let text = h.weft_ok(&["status", "connections"])?;
    Ok((parse_connections(&text), text))
}

/// The IP part of a `ip:port` address as printed by `weft status`.
pub fn addr_ip(address: &str) -> &str {
    address.rsplit_once(':').map_or(address, |(ip, _)| ip)
}

/// The lines of `conns` whose remote address is `ip` (any port, either direction).
pub fn lines_for(conns: &[ConnLine], ip: Ipv4Addr) -> Vec<&ConnLine> {
    let ip = ip.to_string();
    conns.iter().filter(|c| addr_ip(&c.address) == ip).collect()
}

/// True if `h` lists an established connection with `other`'s underlay address.
pub fn established_with(h: &Host, other: &Host) -> Result<bool> {
    let (conns, _) = connections(h)?;
    Ok(lines_for(&conns, other.addr())
        .iter()
        .any(|c| c.state == "established"))
}

/// Waits until `h` lists an established connection with `other`'s address.
pub fn wait_established_with(h: &Host, other: &Host, timeout: Duration) -> Result<()> {
    wait_until(
        &format!(
            "host {} to list an established connection with host {} ({})",
            h.n(),
            other.n(),
            other.addr()
        ),
        timeout,
        Duration::from_millis(100),
        || {
            let (conns, text) = connections(h)?;
            if lines_for(&conns, other.addr())
                .iter()
                .any(|c| c.state == "established")
            {
                Ok(())
            } else {
                bail!("`weft status connections` printed:\n{text}")
            }
        },
    )
}

/// Number of established connections `h` lists.
pub fn established_count(h: &Host) -> Result<usize> {
    let (conns, _) = connections(h)?;
    Ok(conns.iter().filter(|c| c.state == "established").count())
}

/// The entry for peer `name` in `weft status --json`'s `peers` array.
pub fn peer_entry<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status["peers"]
        .as_array()?
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
}

/// `weft status targets` on `h`, one target per element.
pub fn targets(h: &Host) -> Result<Vec<String>> {
    Ok(h.weft_ok(&["status", "targets"])?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

/// Sends `mib` MiB of random data from container `from` to `to` over TCP with `nc` and checks
/// that it arrives complete and unchanged (sha256). Returns the transfer time.
pub fn transfer_intact(
    net: &TestNet,
    from: &Container,
    to: &Container,
    mib: u32,
) -> Result<Duration> {
    let dir = net.dir();
    let tag = format!("{}-{}", from.name(), to.name());
    let src = dir.join(format!("payload-{tag}.bin"));
    let dst = dir.join(format!("received-{tag}.bin"));
    crate::Cmd::new("sh")
        .args([
            "-c",
            &format!("head -c {mib}M /dev/urandom > '{}'", src.display()),
        ])
        .run_ok()?;
    let port = "5001";
    let server =
        crate::Cmd::new("ip").args(["netns", "exec", to.ns(), "nc", "-d", "-l", "-p", port]);
    let mut child = server.spawn_to(&dst, &dir.join(format!("nc-server-{tag}.err")))?;
    let res = (|| {
        let to_ns = to.ns().to_owned();
        wait_until(
            &format!("nc to listen in {}", to.name()),
            Duration::from_secs(10),
            Duration::from_millis(50),
            || {
                let out = ns_sh(
                    &to_ns,
                    &format!("ss -ltnH 'sport = :{port}'"),
                    Duration::from_secs(5),
                )?;
                if out.trim().is_empty() {
                    bail!("not listening yet")
                }
                Ok(())
            },
        )?;
        let send = crate::Cmd::new("ip")
            .args(["netns", "exec", from.ns(), "nc", "-N"])
            .args([to.ip().to_string().as_str(), port])
            .stdin_file(&src)
            .timeout(Duration::from_secs(240))
            .run()?;
        let server_status = wait_until(
            "the receiving nc to exit",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || child.try_wait()?.context("still running"),
        )?;
        let send = send
            .ok()
            .with_context(|| format!("sending {mib} MiB with nc"))?;
        ensure!(
            server_status.success(),
            "receiving nc exited with {server_status}"
        );
        check_same(&src, &dst, u64::from(mib) * 1024 * 1024, send.elapsed)?;
        Ok(send.elapsed)
    })();
    if let Ok(None) = child.try_wait() {
        // Our own child, killed by its id.
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = std::fs::remove_file(&src);
    let _ = std::fs::remove_file(&dst);
    res
}

fn check_same(src: &Path, dst: &Path, want_len: u64, took: Duration) -> Result<()> {
    let sums = crate::Cmd::new("sha256sum")
        .arg(src)
        .arg(dst)
        .run_ok()?
        .stdout;
    let hashes: Vec<&str> = sums
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let got_len = std::fs::metadata(dst)?.len();
    ensure!(
        hashes.len() == 2 && hashes[0] == hashes[1],
        "checksums differ (received {got_len} of {want_len} bytes in {took:.1?}):\n{sums}"
    );
    ensure!(
        got_len == want_len,
        "received {got_len} bytes, sent {want_len}"
    );
    Ok(())
}
