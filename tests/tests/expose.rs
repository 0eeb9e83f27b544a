//! Integration tests (root, network namespaces): `weft expose` gives a host an address on the
//! overlay, reaching containers on other hosts (ping and TCP); `weft hide` takes it away again,
//! rules and all; a router restart puts exposed addresses back; `weft ps` lists the bridge and
//! the containers.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use weft_tests::{Container, Host, run_test, wait_established, wait_until};

const EXPOSED: &str = "10.32.1.254/24";
const EXPOSED_IP: &str = "10.32.1.254";

/// One ping from the host's own namespace.
fn host_ping(h: &Host, dst: &str) -> Result<()> {
    h.exec(&["ping", "-n", "-c", "1", "-W", "1", dst])?
        .ok()
        .with_context(|| format!("ping from host {} to {dst}", h.n()))?;
    Ok(())
}

/// The IPv4 addresses on the host's bridge, as `ip -br` prints them.
fn bridge_addrs(h: &Host) -> Result<String> {
    Ok(
        h.exec(&["ip", "-4", "-br", "addr", "show", "dev", "weave"])?
            .ok()?
            .stdout,
    )
}

/// `iptables -t TABLE -S CHAIN` on the host ("" when the chain does not exist).
fn chain(h: &Host, table: &str, name: &str) -> Result<String> {
    Ok(h.exec(&["iptables", "-w", "-t", table, "-S", name])?.stdout)
}

/// Starts a one-shot TCP server in the container that answers "hello from NAME" and records the
/// peer's address in the container's namespace (printed on stdout).
fn tcp_request(h: &Host, c: &Container) -> Result<String> {
    let server = format!(
        "import socket\n\
         s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('{ip}', 8080)); s.listen(1); s.settimeout(20)\n\
         conn, peer = s.accept()\n\
         conn.sendall(b'hello from {name} to ' + peer[0].encode())\n\
         conn.close()\n",
        ip = c.ip(),
        name = c.name()
    );
    let ns = c.ns().to_owned();
    let handle = std::thread::spawn(move || {
        weft_tests::cmd::ns_exec(&ns, ["python3", "-c", &server], Duration::from_secs(30))
    });
    let client = format!(
        "import socket, time\n\
         for i in range(100):\n    \
             try:\n        \
                 s = socket.create_connection(('{ip}', 8080), timeout=2); break\n    \
             except OSError:\n        \
                 time.sleep(0.1)\n\
         else:\n    \
             raise SystemExit('no connection')\n\
         print(s.recv(100).decode())\n",
        ip = c.ip()
    );
    let out = h.exec(&["python3", "-c", &client])?;
    let server_out = handle
        .join()
        .map_err(|_| anyhow::anyhow!("server thread panicked"))??;
    ensure!(out.success(), "TCP client on host {}: {out}", h.n());
    ensure!(
        server_out.success(),
        "TCP server in {}: {server_out}",
        c.name()
    );
    Ok(out.stdout.trim().to_owned())
}

/// A process in a network namespace of its own (`unshare -n sleep`), killed on drop.
struct Sleeper(std::process::Child);

impl Sleeper {
    fn spawn() -> Result<Self> {
        let child = std::process::Command::new("unshare")
            .args(["-n", "sleep", "120"])
            .spawn()
            .context("spawning unshare -n sleep")?;
        let s = Self(child);
        let pid = s.pid();
        // Wait until it runs in its own namespace.
        wait_until(
            "the sleeper to enter its namespace",
            Duration::from_secs(5),
            Duration::from_millis(20),
            || {
                let mine = std::fs::read_link("/proc/self/ns/net")?;
                let its = std::fs::read_link(format!("/proc/{pid}/ns/net"))?;
                ensure!(mine != its, "still in the test's namespace");
                Ok(())
            },
        )?;
        Ok(s)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// MAC of `ethwe` in its namespace.
    fn ethwe_mac(&self) -> Result<String> {
        let pid = self.pid().to_string();
        let out = weft_tests::Cmd::new("nsenter")
            .args(["-t", &pid, "-n", "ip", "-j", "link", "show", "dev", "ethwe"])
            .run_ok()?;
        let v: serde_json::Value = serde_json::from_str(&out.stdout)?;
        v[0]["address"]
            .as_str()
            .map(str::to_ascii_lowercase)
            .with_context(|| format!("no address in {}", out.stdout))
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn expose_hide_restart_and_ps() {
    run_test("expose", |net| {
        // Host 1 is the "master": router only, no containers. Hosts 2..4 have one each.
        let master = net.host(1)?;
        master.launch(&[])?;
        let mut hosts = vec![master.clone()];
        for n in 2..=4 {
            let h = net.host(n)?;
            h.launch(&[&master])?;
            hosts.push(h);
        }
        let refs: Vec<&Host> = hosts.iter().collect();
        wait_established(&refs, Duration::from_secs(30))?;
        let mut ctrs = Vec::new();
        for (i, h) in hosts.iter().enumerate().skip(1) {
            ctrs.push(h.container(&format!("c{i}"), &format!("10.32.1.{i}/24"))?);
        }

        // Before expose the master has no route into the overlay.
        ensure!(
            host_ping(&master, &ctrs[0].ip().to_string()).is_err(),
            "master reached {} before expose",
            ctrs[0].ip()
        );

        let out = master.weft_ok(&["expose", EXPOSED])?;
        ensure!(
            out.trim() == EXPOSED_IP,
            "weft expose printed {out:?}, expected {EXPOSED_IP:?}"
        );
        ensure!(
            bridge_addrs(&master)?.contains(EXPOSED),
            "{EXPOSED} not on the bridge: {}",
            bridge_addrs(&master)?
        );
        let nat = chain(&master, "nat", "WEAVE")?;
        ensure!(
            nat.contains("-A WEAVE ! -s 10.32.1.0/24 -d 10.32.1.0/24 -j MASQUERADE")
                && nat.contains("-A WEAVE -s 10.32.1.0/24 ! -d 10.32.1.0/24 -j MASQUERADE")
                && nat.contains("-A WEAVE -s 10.32.1.0/24 -d 224.0.0.0/4 -j RETURN"),
            "nat/WEAVE after expose:\n{nat}"
        );
        let filter = chain(&master, "filter", "WEAVE-EXPOSE")?;
        ensure!(
            filter.contains("-A WEAVE-EXPOSE -d 10.32.1.0/24 -j ACCEPT"),
            "filter/WEAVE-EXPOSE after expose:\n{filter}"
        );
        // Exposing again changes nothing (no duplicate rules).
        master.weft_ok(&["expose", &format!("ip:{EXPOSED}")])?;
        let again = chain(&master, "nat", "WEAVE")?;
        ensure!(again == nat, "second expose changed nat/WEAVE:\n{again}");

        // The master reaches every container: ping and a TCP request.
        for c in &ctrs {
            let ip = c.ip().to_string();
            wait_until(
                &format!("master to ping {ip}"),
                Duration::from_secs(20),
                Duration::from_millis(200),
                || host_ping(&master, &ip),
            )?;
            let reply = tcp_request(&master, c)?;
            ensure!(
                reply == format!("hello from {} to {EXPOSED_IP}", c.name()),
                "TCP reply from {}: {reply:?}",
                c.name()
            );
        }
        // And a container reaches the exposed address.
        ctrs[1].wait_ping(EXPOSED_IP.parse()?, Duration::from_secs(10))?;

        // `weft ps` on the master: the bridge line with its MAC and the exposed address.
        let ps = master.weft_ok(&["ps"])?;
        let bridge_mac = master
            .exec(&["cat", "/sys/class/net/weave/address"])?
            .ok()?
            .stdout
            .trim()
            .to_owned();
        ensure!(
            ps.lines()
                .any(|l| l == format!("weave:expose {bridge_mac} {EXPOSED}")),
            "weft ps on the master printed:\n{ps}"
        );
        // On a container host: its container by namespace name, with MAC and address.
        let h2 = &hosts[1];
        let c = &ctrs[0];
        let ps = h2.weft_ok(&["ps"])?;
        let want = format!("{} {} {}", c.ns(), c.mac()?, c.cidr());
        ensure!(
            ps.lines().any(|l| l == want),
            "weft ps on host 2 lacks {want:?}:\n{ps}"
        );
        ensure!(
            ps.lines().any(|l| l.starts_with("weave:expose ")),
            "weft ps on host 2 lacks the weave:expose line:\n{ps}"
        );
        // Asking for one container lists only it.
        let one = h2.weft_ok(&["ps", c.ns()])?;
        ensure!(one.trim() == want, "weft ps {} printed {one:?}", c.ns());

        // A container attached by pid is listed under its pid.
        let sleeper = Sleeper::spawn()?;
        let pid = sleeper.pid().to_string();
        let h3 = &hosts[2];
        h3.weft_ok(&["attach", "10.32.1.9/24", &pid])?;
        let mac = sleeper.ethwe_mac()?;
        let ps = h3.weft_ok(&["ps"])?;
        let want = format!("{pid} {mac} 10.32.1.9/24");
        ensure!(
            ps.lines().any(|l| l == want),
            "weft ps on host 3 lacks {want:?}:\n{ps}"
        );
        drop(sleeper);

        // Hide: the address and the rules go, and the containers are out of reach.
        let out = master.weft_ok(&["hide"])?;
        ensure!(out.trim() == EXPOSED_IP, "weft hide printed {out:?}");
        ensure!(
            !bridge_addrs(&master)?.contains(EXPOSED_IP),
            "{EXPOSED_IP} still on the bridge after hide: {}",
            bridge_addrs(&master)?
        );
        let nat = chain(&master, "nat", "WEAVE")?;
        ensure!(
            !nat.contains("10.32.1.0/24"),
            "nat/WEAVE after hide:\n{nat}"
        );
        let filter = chain(&master, "filter", "WEAVE-EXPOSE")?;
        ensure!(
            !filter.contains("10.32.1.0/24"),
            "filter/WEAVE-EXPOSE after hide:\n{filter}"
        );
        for c in &ctrs {
            ensure!(
                host_ping(&master, &c.ip().to_string()).is_err(),
                "master still reaches {} after hide",
                c.ip()
            );
        }
        // Hiding an address that is not exposed succeeds and changes nothing (Weave's `hide`
        // is idempotent, as `ip addr del` users expect).
        let out = master.weft(&["hide", EXPOSED])?;
        ensure!(out.success(), "hiding twice failed: {out}");
        let on_bridge = master
            .exec(&["ip", "-4", "-o", "addr", "show", "dev", "weave"])?
            .ok()?;
        ensure!(
            !on_bridge.stdout.contains("10.32.1.254"),
            "the second hide put something back: {}",
            on_bridge.stdout
        );

        // Restart: expose, stop the router, lose the address and the rules (as after a
        // firewall reload), launch again: both are back and the containers reachable.
        master.weft_ok(&["expose", EXPOSED])?;
        master.weft_ok(&["stop"])?;
        master
            .exec(&["ip", "addr", "del", EXPOSED, "dev", "weave"])?
            .ok()?;
        master
            .exec(&["iptables", "-w", "-t", "nat", "-F", "WEAVE"])?
            .ok()?;
        master
            .exec(&["iptables", "-w", "-t", "filter", "-F", "WEAVE-EXPOSE"])?
            .ok()?;
        master.launch(&hosts[1..].iter().collect::<Vec<_>>())?;
        wait_until(
            "the exposed address to be back on the bridge",
            Duration::from_secs(10),
            Duration::from_millis(100),
            || {
                let a = bridge_addrs(&master)?;
                if a.contains(EXPOSED) {
                    Ok(())
                } else {
                    bail!("bridge addresses: {a}")
                }
            },
        )?;
        let nat = chain(&master, "nat", "WEAVE")?;
        ensure!(
            nat.lines().filter(|l| l.contains("10.32.1.0/24")).count() == 3,
            "nat/WEAVE after restart:\n{nat}"
        );
        let filter = chain(&master, "filter", "WEAVE-EXPOSE")?;
        ensure!(
            filter.contains("-A WEAVE-EXPOSE -d 10.32.1.0/24 -j ACCEPT"),
            "filter/WEAVE-EXPOSE after restart:\n{filter}"
        );
        wait_established(&refs, Duration::from_secs(30))?;
        for c in &ctrs {
            let ip = c.ip().to_string();
            wait_until(
                &format!("master to ping {ip} after restart"),
                Duration::from_secs(20),
                Duration::from_millis(200),
                || host_ping(&master, &ip),
            )?;
        }
        Ok(())
    });
}

#[test]
fn without_masquerade_adds_no_nat_rules() {
    run_test("expnat", |net| {
        let h = net.host(1)?;
        h.launch(&[])?;
        let out = h.weft_ok(&["expose", "--without-masquerade", "10.32.2.254/24"])?;
        ensure!(out.trim() == "10.32.2.254", "weft expose printed {out:?}");
        let nat = chain(&h, "nat", "WEAVE")?;
        ensure!(!nat.contains("10.32.2.0/24"), "nat/WEAVE:\n{nat}");
        let filter = chain(&h, "filter", "WEAVE-EXPOSE")?;
        ensure!(
            filter.contains("-A WEAVE-EXPOSE -d 10.32.2.0/24 -j ACCEPT"),
            "filter/WEAVE-EXPOSE:\n{filter}"
        );
        // Without IPAM a net: form cannot be satisfied: a clear error and a non-zero exit.
        let out = h.weft(&["expose", "net:10.40.0.0/16"])?;
        if out.success() {
            // IPAM is there: it allocated in that subnet.
            ensure!(out.stdout.trim().starts_with("10.40."), "{out}");
        } else {
            ensure!(!out.stderr.trim().is_empty(), "no error text: {out}");
        }
        // A malformed address is refused by the router with 400, and the CLI fails.
        let bad = h.exec(&[
            "python3",
            "-c",
            "import urllib.request as u\n\
             r = u.Request('http://127.0.0.1:6784/expose/10.32.2.254/40', method='POST')\n\
             try:\n    u.urlopen(r)\nexcept Exception as e:\n    print(e.code)\n",
        ])?;
        ensure!(bad.stdout.trim() == "400", "POST with /40: {bad}");
        h.weft_ok(&["hide", "10.32.2.254/24"])?;
        let filter = chain(&h, "filter", "WEAVE-EXPOSE")?;
        ensure!(!filter.contains("10.32.2.0/24"), "after hide:\n{filter}");
        Ok(())
    });
}

#[test]
fn expose_allocates_from_ipam_and_hide_releases() {
    run_test("expipam", |net| {
        let h = net.host(1)?;
        h.launch(&[])?;
        let owned = |h: &Host| -> Result<String> {
            let out = h.exec(&[
                "python3",
                "-c",
                "import urllib.request as u\n\
                 print(u.urlopen('http://127.0.0.1:6784/ip/weave:expose').read().decode())\n",
            ])?;
            Ok(out.ok()?.stdout.trim().to_owned())
        };
        // No address given: net:default, allocated by IPAM for weave:expose.
        let ip = h.weft_ok(&["expose"])?.trim().to_owned();
        let addr: std::net::Ipv4Addr = ip
            .parse()
            .with_context(|| format!("weft expose printed {ip:?}"))?;
        ensure!(
            addr.octets()[0] == 10 && (32..48).contains(&addr.octets()[1]),
            "{addr} is not in the default range 10.32.0.0/12"
        );
        let held = owned(&h)?;
        ensure!(held.starts_with(&format!("{ip}/")), "IPAM holds {held:?}");
        ensure!(bridge_addrs(&h)?.contains(&ip), "{}", bridge_addrs(&h)?);
        // Hiding it takes it off the bridge and gives it back to IPAM.
        let out = h.weft_ok(&["hide"])?;
        ensure!(out.trim() == ip, "weft hide printed {out:?}");
        ensure!(owned(&h)?.is_empty(), "IPAM still holds {}", owned(&h)?);
        ensure!(!bridge_addrs(&h)?.contains(&ip), "{}", bridge_addrs(&h)?);
        Ok(())
    });
}
