//! Integration test (root, network namespaces, a real dockerd per slave host): the seed
//! scenario, a Chronos-style cluster run through the Docker API proxy.
//!
//! Three slave hosts each run dockerd and weft (router + proxy, `--rewrite-inspect
//! --no-default-ipalloc`); a master host runs weft only. Every host names every other as a
//! peer. On each slave a web server container is started through the proxy with
//! `WEAVE_CIDR=net:10.32.1.0/24`. Checked as a user would:
//!
//! - the three containers reach each other by IP (ping, and HTTP with wget from inside, through
//!   `docker exec` via the proxy);
//! - `weft expose net:10.32.1.0/24` on the master lets it fetch `/ping` from all three;
//! - `docker inspect` shows the weave address and MAC (the ones `ethwe` has inside);
//! - `docker restart` keeps the address (and the server is reachable again);
//! - `docker rm -f` gives the address back to IPAM at once (`GET /ip` on the router no longer
//!   lists the container) and the next container on that host gets the same lowest address.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use weft_tests::docker::{Dockerd, IMAGE, PING_BODY, docker_via, ethwe_cidrs, launch_proxy};
use weft_tests::{Host, mesh::launch_with, run_test, wait_established, wait_until};

const CIDR_ENV: &str = "WEAVE_CIDR=net:10.32.1.0/24";

/// One slave: its dockerd (dropped first), the host and the proxy socket.
struct Slave {
    /// Held for its Drop (before the test net's).
    _dockerd: Dockerd,
    host: Host,
    sock: std::path::PathBuf,
}

impl Slave {
    fn docker_ok(&self, args: &[&str]) -> Result<String> {
        let out = docker_via(&self.sock, args)?
            .ok()
            .with_context(|| format!("through the proxy on host {}", self.host.n()))?;
        Ok(out.stdout.trim().to_owned())
    }

    /// Starts the web server container `web` and returns its full id.
    fn run_web(&self) -> Result<String> {
        self.docker_ok(&[
            "run", "-d", "--name", "web", "-e", CIDR_ENV, IMAGE, "httpd", "-f", "-p", "80", "-h",
            "/www",
        ])
    }

    /// The single address of `web`'s ethwe (`a.b.c.d/24`).
    fn web_cidr(&self) -> Result<String> {
        let cidrs = ethwe_cidrs(&self.sock, "web")?;
        match cidrs.as_slice() {
            [c] if c.starts_with("10.32.1.") && c.ends_with("/24") => Ok(c.clone()),
            _ => bail!(
                "web on host {} has ethwe addresses {cidrs:?}",
                self.host.n()
            ),
        }
    }
}

fn ip_of(cidr: &str) -> &str {
    cidr.split('/').next().unwrap_or(cidr)
}

/// Fetches `http://ip/ping` from the host's own namespace (python3 urllib, 2 s limit).
fn host_get(h: &Host, ip: &str) -> Result<String> {
    let script = format!(
        "import urllib.request\n\
         print(urllib.request.urlopen('http://{ip}/ping', timeout=2).read().decode(), end='')"
    );
    let out = h.exec(&["python3", "-c", &script])?.ok()?;
    Ok(out.stdout)
}

#[test]
fn chronos_seed_scenario_through_the_proxy() {
    run_test("chrono", |net| {
        let hosts: Vec<Host> = (1..=4).map(|k| net.host(k)).collect::<Result<_>>()?;
        // Slaves first (hosts 1..3), each with its dockerd; the master (host 4) runs weft only.
        let mut slaves = Vec::new();
        for h in &hosts[..3] {
            let peers: Vec<&Host> = hosts.iter().filter(|o| o.n() != h.n()).collect();
            let dockerd = Dockerd::start(h)?;
            let sock = launch_proxy(h, &dockerd, &[], &peers)?;
            slaves.push(Slave {
                _dockerd: dockerd,
                host: h.clone(),
                sock,
            });
        }
        let master = &hosts[3];
        let peers: Vec<&Host> = hosts[..3].iter().collect();
        launch_with(master, &["--no-proxy"], &peers)?;
        let refs: Vec<&Host> = hosts.iter().collect();
        wait_established(&refs, Duration::from_secs(30))?;

        // One web server per slave, each with its own address in the subnet.
        let mut ids = Vec::new();
        let mut cidrs = Vec::new();
        for s in &slaves {
            ids.push(s.run_web()?);
            cidrs.push(s.web_cidr()?);
        }
        let mut distinct = cidrs.clone();
        distinct.sort();
        distinct.dedup();
        ensure!(distinct.len() == 3, "containers share addresses: {cidrs:?}");

        // inspect shows the weave address and MAC that ethwe has inside.
        for (s, cidr) in slaves.iter().zip(&cidrs) {
            let shown = s.docker_ok(&[
                "inspect",
                "-f",
                "{{.NetworkSettings.IPAddress}}/{{.NetworkSettings.IPPrefixLen}} {{.NetworkSettings.MacAddress}}",
                "web",
            ])?;
            let mac = s.docker_ok(&["exec", "web", "cat", "/sys/class/net/ethwe/address"])?;
            ensure!(
                shown == format!("{cidr} {mac}"),
                "host {}: docker inspect shows {shown:?}, ethwe has {cidr} {mac}",
                s.host.n()
            );
        }

        // The containers reach each other: ping and HTTP, from inside, via the proxy.
        for (i, s) in slaves.iter().enumerate() {
            for (j, cidr) in cidrs.iter().enumerate() {
                if i == j {
                    continue;
                }
                let ip = ip_of(cidr);
                wait_until(
                    &format!("web on host {} to ping {ip}", s.host.n()),
                    Duration::from_secs(20),
                    Duration::from_millis(200),
                    || s.docker_ok(&["exec", "web", "ping", "-c", "1", "-W", "1", ip]),
                )?;
                // (busybox-static's `wget -T` crashes; `timeout` bounds it instead.)
                let url = format!("http://{ip}/ping");
                let body =
                    s.docker_ok(&["exec", "web", "timeout", "5", "wget", "-q", "-O", "-", &url])?;
                ensure!(
                    body == PING_BODY,
                    "web {} got {body:?} from {ip}",
                    s.host.n()
                );
            }
        }

        // The master exposes itself on the subnet and fetches /ping from every server.
        ensure!(
            host_get(master, ip_of(&cidrs[0])).is_err(),
            "the master reaches {} before `weft expose`",
            cidrs[0]
        );
        let exposed = master.weft_ok(&["expose", "net:10.32.1.0/24"])?;
        ensure!(
            exposed.trim().starts_with("10.32.1.")
                && !cidrs.iter().any(|c| ip_of(c) == exposed.trim()),
            "weft expose printed {exposed:?} (containers {cidrs:?})"
        );
        for cidr in &cidrs {
            let body = wait_until(
                &format!("the master to GET http://{}/ping", ip_of(cidr)),
                Duration::from_secs(20),
                Duration::from_millis(200),
                || host_get(master, ip_of(cidr)),
            )?;
            ensure!(body == PING_BODY, "master got {body:?} from {cidr}");
        }

        // docker restart keeps the address, and the server answers again.
        let s1 = &slaves[0];
        s1.docker_ok(&["restart", "web"])?;
        let after = s1.web_cidr()?;
        ensure!(
            after == cidrs[0],
            "after docker restart web has {after}, before {}",
            cidrs[0]
        );
        let shown = s1.docker_ok(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", "web"])?;
        ensure!(
            shown == ip_of(&after),
            "after restart docker inspect shows {shown}"
        );
        let body = wait_until(
            "the master to reach the restarted server",
            Duration::from_secs(20),
            Duration::from_millis(200),
            || host_get(master, ip_of(&after)),
        )?;
        ensure!(body == PING_BODY, "restarted server answered {body:?}");

        // docker rm -f gives the address back at once.
        let owned = s1.host.ipam_owned()?;
        ensure!(
            owned
                .iter()
                .any(|(id, a)| id == &ids[0] && a.contains(&cidrs[0])),
            "GET /ip on host 1 does not list {} with {}: {owned:?}",
            ids[0],
            cidrs[0]
        );
        s1.docker_ok(&["rm", "-f", "web"])?;
        wait_until(
            "the removed container's address to be released",
            Duration::from_secs(10),
            Duration::from_millis(100),
            || {
                let owned = s1.host.ipam_owned()?;
                if owned.iter().any(|(id, _)| id == &ids[0]) {
                    bail!("GET /ip still lists {}: {owned:?}", ids[0]);
                }
                Ok(())
            },
        )?;
        let new_id = s1.run_web()?;
        let again = s1.web_cidr()?;
        ensure!(
            again == cidrs[0],
            "the next container ({}) got {again}, not the freed {}",
            &new_id[..12],
            cidrs[0]
        );
        // The other servers were not disturbed.
        for cidr in &cidrs[1..] {
            ensure!(
                host_get(master, ip_of(cidr))? == PING_BODY,
                "{cidr} after the rm"
            );
        }
        drop(slaves);
        Ok(())
    });
}
