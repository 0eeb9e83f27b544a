//! Integration tests (root, network and mount namespaces, a real dockerd per host): weft's
//! Docker network plugin. Each host has a private mount namespace ([`PrivateHost`]), so its
//! dockerd finds the plugin where Docker looks, `/run/docker/plugins/weave.sock`.
//!
//! - two hosts, `weave launch --plugin`: the network `weave` exists (made at launch), `docker run
//!   --net=weave` containers get addresses from weft's IPAM (listed in the router's `/ip`) and
//!   ping across hosts by address and by name (weaveDNS as the resolver, as Weave's plugin
//!   documentation has it); removing a container gives its address back; a second network
//!   (`docker network create -d weave`) works and `docker network rm` leaves no address behind;
//! - the proxy and the plugin together on one host: a proxy-joined container (`WEAVE_CIDR`) and
//!   a `--net=weave` container created through the proxy each get one weave interface with
//!   distinct addresses, and reach each other;
//! - `weave stop-plugin` removes the network made at launch and the socket.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use weft_tests::docker::{DOCKER, IMAGE};
use weft_tests::private::{DOCKER_BIP, PrivateHost};
use weft_tests::{run_test, wait_until};

/// The `docker-plugin:` allocations in the router's `/ip`: addresses.
fn plugin_addrs(p: &PrivateHost) -> Result<Vec<String>> {
    let out = p.sh_ok("curl -s http://127.0.0.1:6784/ip")?;
    let v: serde_json::Value =
        serde_json::from_str(out.trim()).with_context(|| format!("GET /ip: {out:?}"))?;
    Ok(v["owned"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| {
            e["containerid"]
                .as_str()
                .is_some_and(|i| i.starts_with("docker-plugin:"))
        })
        .flat_map(|e| e["addrs"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect())
}

fn docker(p: &PrivateHost, args: &str) -> Result<String> {
    Ok(p.sh_ok(&format!("{DOCKER} {args}"))?.trim().to_owned())
}

/// The container's address on network `net`.
fn ip_on(p: &PrivateHost, c: &str, net: &str) -> Result<String> {
    let ip = docker(
        p,
        &format!("inspect -f '{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}' {c}"),
    )?;
    ensure!(!ip.is_empty(), "{c} has no address on {net}");
    Ok(ip)
}

fn wait_ping(p: &PrivateHost, c: &str, ip: &str) -> Result<()> {
    p.wait_ping(DOCKER, c, ip)
}

fn wait_network(p: &PrivateHost, name: &str) -> Result<()> {
    wait_until(
        &format!("Docker network {name}"),
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let out = docker(p, "network ls --format '{{.Name}} {{.Driver}}'")?;
            ensure!(out.lines().any(|l| l == format!("{name} weave")), "{out}");
            Ok(())
        },
    )
}

#[test]
fn net_weave_containers_on_two_hosts() {
    run_test("dplug", |net| {
        let (h1, h2) = (net.host(1)?, net.host(2)?);
        let mut p1 = PrivateHost::start(&h1)?;
        let mut p2 = PrivateHost::start(&h2)?;
        p1.start_dockerd()?;
        p2.start_dockerd()?;
        p1.sh_ok("weave launch --plugin --proxy=false")?;
        p2.sh_ok(&format!(
            "weave launch --plugin --proxy=false {}",
            h1.addr()
        ))?;
        ensure!(
            p1.sh("test -S /run/docker/plugins/weave.sock")?.success(),
            "no plugin socket"
        );
        wait_network(&p1, "weave")?;
        wait_network(&p2, "weave")?;

        // weaveDNS as Weave's plugin documentation has it: the Docker bridge's address as the
        // resolver, `weave.local` to search.
        docker(
            &p1,
            &format!(
                "run -d --name c1 --net=weave --dns {dns} --dns-search weave.local {IMAGE} sleep 300",
                dns = DOCKER_BIP.split('/').next().unwrap_or_default()
            ),
        )?;
        docker(
            &p2,
            &format!("run -d --name c2 --net=weave {IMAGE} sleep 300"),
        )?;
        let (ip1, ip2) = (ip_on(&p1, "c1", "weave")?, ip_on(&p2, "c2", "weave")?);
        ensure!(ip1 != ip2, "both got {ip1}");
        ensure!(ip1.starts_with("10.3"), "{ip1} is not from weft's range");
        ensure!(
            plugin_addrs(&p1)?
                .iter()
                .any(|a| a.starts_with(&format!("{ip1}/"))),
            "{:?}",
            plugin_addrs(&p1)?
        );
        // Docker named the interface from the plugin's prefix, with weft's MTU.
        let link = docker(&p1, "exec c1 ip -o link show ethwe0")?;
        ensure!(link.contains("mtu 1376"), "{link}");
        // The network made at launch asks for the multicast route.
        let routes = docker(&p1, "exec c1 ip route")?;
        ensure!(routes.contains("224.0.0.0/4 dev ethwe0"), "{routes}");
        wait_ping(&p1, "c1", &ip2)?;
        wait_ping(&p2, "c2", &ip1)?;
        // By name: c2's name, registered by host 2's plugin, resolves on host 1 (weaveDNS
        // gossip) to its address on weave, and answers.
        wait_until(
            "c1 to resolve c2 through weaveDNS",
            Duration::from_secs(20),
            Duration::from_millis(300),
            || {
                let out = docker(&p1, "exec c1 nslookup c2.weave.local")?;
                ensure!(out.contains(&ip2), "{out}");
                Ok(())
            },
        )?;
        wait_ping(&p1, "c1", "c2")?;

        // Removing the container gives its address back.
        docker(&p1, "rm -f c1")?;
        wait_until(
            "c1's address to be released",
            Duration::from_secs(10),
            Duration::from_millis(200),
            || {
                let held = plugin_addrs(&p1)?;
                ensure!(
                    !held.iter().any(|a| a.starts_with(&format!("{ip1}/"))),
                    "{held:?}"
                );
                Ok(())
            },
        )?;

        // A network of one's own, removed afterwards.
        docker(
            &p1,
            "network create -d weave --ipam-driver weave --subnet 10.32.200.0/24 w2",
        )?;
        docker(&p1, &format!("run -d --name c3 --net=w2 {IMAGE} sleep 300"))?;
        let ip3 = ip_on(&p1, "c3", "w2")?;
        ensure!(ip3.starts_with("10.32.200."), "{ip3}");
        docker(&p1, "rm -f c3")?;
        docker(&p1, "network rm w2")?;
        ensure!(
            plugin_addrs(&p1)?.is_empty(),
            "left behind: {:?}",
            plugin_addrs(&p1)?
        );

        // stop-plugin removes the network made at launch and the socket.
        p1.sh_ok("weave stop-plugin")?;
        let nets = docker(&p1, "network ls --format '{{.Name}}'")?;
        ensure!(!nets.lines().any(|l| l == "weave"), "{nets}");
        ensure!(
            !p1.sh("test -e /run/docker/plugins/weave.sock")?.success(),
            "socket left behind"
        );
        Ok(())
    });
}

#[test]
fn proxy_and_plugin_together() {
    run_test("dplugpx", |net| {
        let h1 = net.host(1)?;
        let mut p1 = PrivateHost::start(&h1)?;
        p1.start_dockerd()?;
        p1.sh_ok("weave launch --plugin")?;
        wait_network(&p1, "weave")?;
        let proxy = "-H unix:///var/run/weave/weave.sock";
        docker(
            &p1,
            &format!("{proxy} run -d --name pc -e WEAVE_CIDR=net:default {IMAGE} sleep 300"),
        )?;
        docker(
            &p1,
            &format!("{proxy} run -d --name nc --net=weave {IMAGE} sleep 300"),
        )?;
        // The proxy's container has ethwe; the plugin's has ethwe0 and not also ethwe.
        let pc_links = docker(&p1, "exec pc ip -o link")?;
        let nc_links = docker(&p1, "exec nc ip -o link")?;
        ensure!(
            pc_links.contains("ethwe@") && !pc_links.contains("ethwe0"),
            "{pc_links}"
        );
        ensure!(
            nc_links.contains("ethwe0@") && !nc_links.contains(" ethwe@"),
            "{nc_links}"
        );
        let pc_ip = docker(&p1, "exec pc ip -4 -o addr show dev ethwe")?;
        let pc_ip = pc_ip
            .split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|c| c.split('/').next())
            .context("pc has no address")?
            .to_owned();
        let nc_ip = ip_on(&p1, "nc", "weave")?;
        ensure!(pc_ip != nc_ip, "both got {pc_ip}");
        wait_ping(&p1, "nc", &pc_ip)?;
        wait_ping(&p1, "pc", &nc_ip)?;
        docker(&p1, "rm -f pc nc")?;
        ensure!(
            plugin_addrs(&p1)?.is_empty(),
            "left behind: {:?}",
            plugin_addrs(&p1)?
        );
        Ok(())
    });
}
