//! Integration test (root, network namespaces, a stock dockerd per slave on its default
//! paths): the motivating user's Ansible role for Weave 1.x, verbatim, on default paths.
//!
//! Four hosts, each with a private mount namespace ([`weft_tests::private`]) so `/run`,
//! `/var/lib/weft`, `/var/lib/docker` and `/etc/weave` are its own: three Mesos slaves (a
//! stock dockerd: `docker0` on its default bridge, iptables on) and a master (no Docker). On
//! every node the role runs, as root, with no `WEFT_*` variable:
//!
//! ```text
//! weave setup
//! weave launch-proxy --rewrite-inspect --no-default-ipalloc   # init script "weaveproxy", first
//! weave launch-router --no-dns PEER PEER PEER                  # init script "weave"
//! weave expose net:10.32.1.0/24
//! ```
//!
//! (the init scripts read `WEAVEPROXY_OPTIONS`, `WEAVE_OPTIONS` and `WEAVE_PEERS` from
//! `/etc/weave/*.conf` and stop with `weave stop-proxy` / `weave stop-router`). Each slave then
//! runs a Mesos-shaped container through the proxy socket: `--net bridge -p 31001:8081/tcp
//! --entrypoint /bin/sh ... -c "... --hostname $(hostname -i)"` with
//! `WEAVE_CIDR=net:10.32.1.0/24`. Checked as a user would:
//!
//! - the instance's `hostname -i` is its weave address, and `docker inspect` shows it;
//! - instances reach each other's HTTP servers on their weave addresses;
//! - the master reaches each one after its `weave expose`;
//! - Marathon's HTTP check on SLAVE:31001 (Docker's port mapping) answers;
//! - the init scripts' stop and start, in both orders (router first on one slave, the role's
//!   order on another), keep every address, and `docker inspect` through the proxy shows the
//!   weave address on the first request after `launch-proxy` (before the router is back, too).

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use weft_tests::docker::{DOCKER, IMAGE, PING_BODY};
use weft_tests::private::PrivateHost;
use weft_tests::{Host, run_test, wait_until};

const SUBNET: &str = "10.32.1.0/24";
const HOST_PORT: u16 = 31001;
const PROXY: &str = "unix:///var/run/weave/weave.sock";

/// Writes the role's configuration and init scripts into the host's `/etc/weave`.
fn install_role(ph: &PrivateHost, peers: &[String]) -> Result<()> {
    let etc = ph.etc_weave();
    std::fs::write(
        etc.join("weave.conf"),
        format!(
            "WEAVE_OPTIONS=\"--no-dns\"\nWEAVE_PEERS=\"{}\"\n",
            peers.join(" ")
        ),
    )?;
    std::fs::write(
        etc.join("weaveproxy.conf"),
        "WEAVEPROXY_OPTIONS=\"--rewrite-inspect --no-default-ipalloc\"\n",
    )?;
    std::fs::write(
        etc.join("weave.init"),
        "#!/bin/sh\n. /etc/weave/weave.conf\ncase \"$1\" in\n  \
         start) weave launch-router $WEAVE_OPTIONS $WEAVE_PEERS ;;\n  \
         stop) weave stop-router ;;\nesac\n",
    )?;
    std::fs::write(
        etc.join("weaveproxy.init"),
        "#!/bin/sh\n. /etc/weave/weaveproxy.conf\ncase \"$1\" in\n  \
         start) weave launch-proxy $WEAVEPROXY_OPTIONS ;;\n  \
         stop) weave stop-proxy ;;\nesac\n",
    )?;
    Ok(())
}

/// The role, in its order.
const ROLE: &str = "set -e\n\
    weave setup\n\
    sh /etc/weave/weaveproxy.init start\n\
    sh /etc/weave/weave.init start\n\
    weave expose net:10.32.1.0/24\n";

/// `docker -H <proxy> ARGS` on a slave; stdout trimmed.
fn docker(ph: &PrivateHost, args: &str) -> Result<String> {
    Ok(ph
        .sh_ok(&format!("{DOCKER} -H {PROXY} {args}"))?
        .trim()
        .to_owned())
}

/// The Mesos slave's `docker run` for an instance named `name`.
fn mesos_run(ph: &PrivateHost, name: &str) -> Result<String> {
    // As Mesos' Docker containerizer builds it: the app gets its address from `hostname -i`.
    let app = "serve() { echo \"$4\" > /www/hostname; exec httpd -f -p \"$2\" -h /www; }; \
               serve --port 8081 --hostname $(hostname -i)";
    docker(
        ph,
        &format!(
            "run -d --net bridge -p {HOST_PORT}:8081/tcp -e WEAVE_CIDR=net:{SUBNET} \
             -e MESOS_TASK_ID={name} --entrypoint /bin/sh --name {name} {IMAGE} -c '{app}'"
        ),
    )
}

/// The instance's `ethwe` address (`a.b.c.d`), read inside it.
fn ethwe_ip(ph: &PrivateHost, name: &str) -> Result<String> {
    let out = docker(ph, &format!("exec {name} ip -4 -o addr show dev ethwe"))?;
    let cidr = out
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .with_context(|| format!("no inet on {name}'s ethwe: {out}"))?;
    ensure!(
        cidr.starts_with("10.32.1.") && cidr.ends_with("/24"),
        "{name}'s ethwe has {cidr}, not an address of {SUBNET}"
    );
    Ok(cidr.split('/').next().unwrap_or_default().to_owned())
}

/// `docker inspect -f {{.NetworkSettings.IPAddress}}` through the proxy.
fn inspect_ip(ph: &PrivateHost, name: &str) -> Result<String> {
    docker(
        ph,
        &format!("inspect -f '{{{{.NetworkSettings.IPAddress}}}}' {name}"),
    )
}

/// An HTTP GET from a host's own namespace (python3, 3 s limit); the body.
fn http_get(ph: &PrivateHost, url: &str) -> Result<String> {
    ph.sh_ok(&format!(
        "python3 -c \"import urllib.request; print(urllib.request.urlopen('{url}', timeout=3).read().decode().strip())\""
    ))
    .map(|s| s.trim().to_owned())
}

/// Waits until `weave status connections` on `ph` lists `n` established connections.
fn wait_connections(ph: &PrivateHost, n: usize) -> Result<()> {
    wait_until(
        &format!("{n} established connections on host {}", ph.host().n()),
        Duration::from_secs(40),
        Duration::from_millis(300),
        || {
            let text = ph.sh_ok("weave status connections")?;
            let up = weft_tests::status::parse_connections(&text)
                .iter()
                .filter(|c| c.state == "established")
                .count();
            ensure!(up == n, "{text}");
            Ok(())
        },
    )
}

/// Every instance fetches every other's `/hostname` over the overlay and gets its address.
fn instances_reach_each_other(slaves: &[PrivateHost], ips: &[String]) -> Result<()> {
    for (i, s) in slaves.iter().enumerate() {
        for (j, ip) in ips.iter().enumerate() {
            if i == j {
                continue;
            }
            let got = wait_until(
                &format!("instance {i} to fetch http://{ip}:8081/hostname"),
                Duration::from_secs(20),
                Duration::from_millis(250),
                || {
                    docker(
                        s,
                        &format!("exec inst{i} timeout 5 wget -q -O - http://{ip}:8081/hostname"),
                    )
                },
            )?;
            ensure!(
                got == *ip,
                "instance {j} answered {got:?} for its hostname, its address is {ip}"
            );
        }
    }
    Ok(())
}

fn master_reaches_all(master: &PrivateHost, ips: &[String]) -> Result<()> {
    for ip in ips {
        let got = wait_until(
            &format!("the master to fetch http://{ip}:8081/hostname"),
            Duration::from_secs(20),
            Duration::from_millis(250),
            || http_get(master, &format!("http://{ip}:8081/hostname")),
        )?;
        ensure!(got == *ip, "{ip} answered {got:?}");
    }
    Ok(())
}

#[test]
fn the_ansible_role_verbatim_on_default_paths() {
    run_test("role", |net| {
        let hosts: Vec<Host> = (1..=4).map(|k| net.host(k)).collect::<Result<_>>()?;
        let mut nodes = Vec::new();
        for h in &hosts {
            let mut ph = PrivateHost::start(h)?;
            if h.n() <= 3 {
                ph.start_dockerd()?;
            }
            let peers: Vec<String> = hosts
                .iter()
                .filter(|o| o.n() != h.n())
                .map(|o| o.addr().to_string())
                .collect();
            install_role(&ph, &peers)?;
            nodes.push(ph);
        }
        // The role on every node at once (as Ansible runs a play on its hosts), as root, no
        // WEFT_* variables. (`expose` allocates, so it waits for the IPAM consensus of the
        // peers the others launch.)
        let outs: Vec<Result<weft_tests::Output>> = std::thread::scope(|scope| {
            let runs: Vec<_> = nodes
                .iter()
                .map(|ph| {
                    scope.spawn(move || ph.sh_cmd(ROLE).timeout(Duration::from_secs(90)).run())
                })
                .collect();
            runs.into_iter()
                .map(|r| {
                    r.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("role thread panicked")))
                })
                .collect()
        });
        for (ph, out) in nodes.iter().zip(outs) {
            let out = out?;
            ensure!(
                out.success(),
                "the role failed on host {}: {out}\n{}",
                ph.host().n(),
                ph.weft_log()
            );
            ensure!(
                !out.stderr.contains("unrecognized") && !out.stderr.contains("Unknown"),
                "the role's commands were not all understood on host {}:\n{out}",
                ph.host().n()
            );
        }
        for ph in &nodes {
            wait_connections(ph, 3)?;
        }
        // Default paths: the proxy socket, weft's state and run directory.
        let s1 = &nodes[0];
        s1.sh_ok(
            "test -S /var/run/weave/weave.sock && test -S /run/weft/control.sock && \
             test -f /var/lib/weft/peer-name && test -x /var/lib/weft/waiter/w",
        )
        .context("weft is not on its default paths")?;

        // Mesos-shaped containers through each slave's proxy.
        let (slaves, master) = nodes.split_at(3);
        let master = &master[0];
        let mut ips = Vec::new();
        for (i, s) in slaves.iter().enumerate() {
            let id = mesos_run(s, &format!("inst{i}"))?;
            ensure!(id.len() == 64, "docker run printed {id:?}");
            let ip = ethwe_ip(s, &format!("inst{i}"))?;
            let hostname_i = wait_until(
                "the instance to write its hostname",
                Duration::from_secs(10),
                Duration::from_millis(100),
                || docker(s, &format!("exec inst{i} cat /www/hostname")),
            )?;
            ensure!(
                hostname_i == ip,
                "on slave {}: `hostname -i` in the instance gave {hostname_i:?}, its weave \
                 address is {ip}",
                s.host().n()
            );
            let shown = inspect_ip(s, &format!("inst{i}"))?;
            ensure!(shown == ip, "docker inspect shows {shown}, ethwe has {ip}");
            ips.push(ip);
        }
        let mut distinct = ips.clone();
        distinct.sort();
        distinct.dedup();
        ensure!(distinct.len() == 3, "instances share addresses: {ips:?}");
        instances_reach_each_other(slaves, &ips)?;
        master_reaches_all(master, &ips)?;
        // Marathon's health check: the slave's host port, through Docker's port mapping.
        for s in slaves {
            let url = format!("http://{}:{HOST_PORT}/ping", s.host().addr());
            let got = wait_until(
                &format!("the master to GET {url}"),
                Duration::from_secs(20),
                Duration::from_millis(250),
                || http_get(master, &url),
            )?;
            ensure!(got == PING_BODY, "{url} answered {got:?}");
        }

        // Slave 1: the init scripts stop, then start router first, proxy second.
        let s = &slaves[0];
        s.sh_ok("sh /etc/weave/weave.init stop && sh /etc/weave/weaveproxy.init stop")?;
        ensure!(
            s.sh("test -S /var/run/weave/weave.sock")?
                .status
                .is_some_and(|st| !st.success()),
            "the proxy socket is still there after stop-proxy"
        );
        s.sh_ok("sh /etc/weave/weave.init start")?;
        s.sh_ok("sh /etc/weave/weaveproxy.init start")?;
        let first = inspect_ip(s, "inst0")?;
        ensure!(
            first == ips[0],
            "slave 1: the first inspect after relaunch shows {first}, not {}",
            ips[0]
        );
        // Slave 2: the role's order, inspect before the router is back too.
        let s = &slaves[1];
        s.sh_ok("sh /etc/weave/weave.init stop && sh /etc/weave/weaveproxy.init stop")?;
        s.sh_ok("sh /etc/weave/weaveproxy.init start")?;
        let first = inspect_ip(s, "inst1")?;
        ensure!(
            first == ips[1],
            "slave 2: the first inspect after launch-proxy (no router yet) shows {first}, not {}",
            ips[1]
        );
        s.sh_ok("sh /etc/weave/weave.init start")?;
        let again = inspect_ip(s, "inst1")?;
        ensure!(
            again == ips[1],
            "slave 2: inspect after launch-router shows {again}"
        );
        for s in &slaves[..2] {
            wait_connections(s, 3)?;
        }
        // Addresses kept, and everything reachable as before.
        for (i, s) in slaves.iter().enumerate() {
            let ip = ethwe_ip(s, &format!("inst{i}"))?;
            ensure!(
                ip == ips[i],
                "instance {i} has {ip} after the relaunch, had {}",
                ips[i]
            );
        }
        instances_reach_each_other(slaves, &ips)?;
        master_reaches_all(master, &ips)?;
        // IPAM still holds each address under its container id (nothing released meanwhile).
        for (i, s) in slaves.iter().enumerate() {
            let id = docker(s, &format!("inspect -f '{{{{.Id}}}}' inst{i}"))?;
            let owned = http_get(s, "http://127.0.0.1:6784/ip")?;
            ensure!(
                owned.contains(&id) && owned.contains(&format!("{}/24", ips[i])),
                "slave {}: GET /ip does not list {id} with {}: {owned}",
                s.host().n(),
                ips[i]
            );
        }
        if nodes.iter().any(|n| n.weft_log().contains("panicked")) {
            bail!("a weft daemon panicked");
        }
        drop(nodes);
        Ok(())
    });
}
