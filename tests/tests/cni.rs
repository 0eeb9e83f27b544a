//! Integration tests (root, network namespaces): weft's CNI plugins driven as a container
//! runtime drives them (the `CNI_*` environment, the configuration on stdin), on two hosts
//! with a pod-like namespace each.
//!
//! - `weave-net` with weft's IPAM: ADD gives each pod an address and `eth0` (routes through the
//!   bridge, which gets exposed), the pods ping each other across hosts, CHECK with the ADD
//!   result passes (and fails once the address is gone), DEL removes the interface and releases
//!   the address (gone from the router's `/ip`), DEL twice is fine; a configuration that is not
//!   JSON, or names a bad subnet, gives a CNI error and allocates nothing; VERSION lists 1.0.0.
//! - `weave-net` with Debian's `host-local` as IPAM (0.4.0 configuration): addresses from
//!   host-local's range (nothing in weft's IPAM), ping across hosts, CHECK, DEL gives the
//!   address back to host-local, DEL twice; `weave-ipam` under the reference `bridge`-less
//!   flow: ADD/DEL alone.
//! - podman (4.x, its CNI backend) on two private hosts after `weave setup`: `podman run
//!   --network weave` containers get addresses from weft's IPAM (held for the container),
//!   ping each other across hosts, and `podman rm` releases the address.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use weft_tests::cni::{Invocation, Plugins, first_address, parse_answer, with_prev_result};
use weft_tests::docker::IMAGE;
use weft_tests::private::PrivateHost;
use weft_tests::{Host, run_test, wait_established, wait_until};

const WEAVE_CONF: &str =
    r#"{"cniVersion":"1.0.0","name":"weave","type":"weave-net","hairpinMode":true}"#;

/// The idents in the router's `/ip`.
fn idents(h: &Host) -> Result<Vec<(String, Vec<String>)>> {
    h.ipam_owned()
}

fn held_by(h: &Host, ident: &str) -> Result<Vec<String>> {
    Ok(idents(h)?
        .into_iter()
        .filter(|(i, _)| i == ident)
        .flat_map(|(_, a)| a)
        .collect())
}

/// `ip -4 -o addr show dev IF` words after `inet` in namespace `ns`.
fn addrs_in(ns: &str, ifname: &str) -> Result<Vec<String>> {
    let out = weft_tests::cmd::ns_exec(
        ns,
        ["ip", "-4", "-o", "addr", "show", "dev", ifname],
        Duration::from_secs(10),
    )?;
    if !out.success() {
        return Ok(Vec::new());
    }
    Ok(weft_tests::docker::inet_cidrs(&out.stdout))
}

fn has_link(ns: &str, ifname: &str) -> Result<bool> {
    Ok(
        weft_tests::cmd::ns_exec(ns, ["ip", "link", "show", ifname], Duration::from_secs(10))?
            .success(),
    )
}

fn ping(ns: &str, cidr: &str) -> Result<()> {
    let ip = cidr.split('/').next().unwrap_or(cidr).to_owned();
    wait_until(
        &format!("{ns} to ping {ip}"),
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            weft_tests::cmd::ns_exec(ns, ["ping", "-c1", "-W1", &ip], Duration::from_secs(5))?
                .ok()
                .map(drop)
        },
    )
}

fn netns_path(ns: &str) -> String {
    format!("/run/netns/{ns}")
}

/// The error JSON of a failed invocation: (code, msg).
fn cni_error(out: &weft_tests::Output) -> Result<(u64, String)> {
    ensure!(!out.success(), "expected a CNI error, got success: {out}");
    let v = parse_answer(&out.stdout)?.with_context(|| format!("no error JSON: {out}"))?;
    let code = v["code"]
        .as_u64()
        .with_context(|| format!("no code in {v}"))?;
    Ok((code, v["msg"].as_str().unwrap_or_default().to_owned()))
}

#[test]
fn weave_net_with_weft_ipam_on_two_hosts() {
    run_test("cni", |net| {
        let (h1, h2) = (net.host(1)?, net.host(2)?);
        h1.launch(&[])?;
        h2.launch(&[&h1])?;
        wait_established(&[&h1, &h2], Duration::from_secs(20))?;
        let cni = Plugins::new(net)?;
        let (p1, p2) = (net.netns("pod1")?, net.netns("pod2")?);
        let (n1, n2) = (netns_path(&p1), netns_path(&p2));

        let v = cni
            .run_ok(
                &h1,
                "weave-net",
                &Invocation::new("VERSION", "", ""),
                WEAVE_CONF,
            )?
            .context("VERSION printed nothing")?;
        let versions = v["supportedVersions"].to_string();
        ensure!(
            versions.contains("\"1.0.0\"") && versions.contains("\"0.4.0\""),
            "{v}"
        );

        let r1 = cni
            .run_ok(
                &h1,
                "weave-net",
                &Invocation::new("ADD", "pod1", &n1),
                WEAVE_CONF,
            )?
            .context("ADD printed nothing")?;
        let r2 = cni
            .run_ok(
                &h2,
                "weave-net",
                &Invocation::new("ADD", "pod2", &n2),
                WEAVE_CONF,
            )?
            .context("ADD printed nothing")?;
        let (a1, a2) = (first_address(&r1)?, first_address(&r2)?);
        ensure!(r1["cniVersion"] == "1.0.0", "{r1}");
        ensure!(r1["interfaces"][0]["name"] == "eth0", "{r1}");
        ensure!(r1["interfaces"][0]["sandbox"] == n1.as_str(), "{r1}");
        ensure!(
            r1["ips"][0].get("version").is_none(),
            "1.0.0 has no version: {r1}"
        );
        ensure!(a1.starts_with("10.3") && a1.ends_with("/12"), "{r1}");
        ensure!(addrs_in(&p1, "eth0")? == [a1.clone()], "pod1's eth0");
        ensure!(addrs_in(&p2, "eth0")? == [a2.clone()], "pod2's eth0");
        // Weave's routes: the default route through the bridge, which got an address.
        let gw = r1["ips"][0]["gateway"]
            .as_str()
            .with_context(|| format!("no gateway in {r1}"))?
            .to_owned();
        ensure!(
            r1["routes"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r["dst"] == "0.0.0.0/0")),
            "{r1}"
        );
        let bridge = weft_tests::cmd::ns_exec(
            h1.ns(),
            ["ip", "-4", "-o", "addr", "show", "dev", "weave"],
            Duration::from_secs(10),
        )?
        .ok()?
        .stdout;
        ensure!(bridge.contains(&format!("inet {gw}/")), "bridge: {bridge}");
        let routes =
            weft_tests::cmd::ns_sh(&p1, "ip -4 route show default", Duration::from_secs(10))?;
        ensure!(routes.contains(&format!("via {gw} dev eth0")), "{routes}");
        // weaveDNS runs: the result carries it.
        ensure!(
            r1["dns"]["search"].to_string().contains("weave.local"),
            "{r1}"
        );
        let ident1 = "cni:weave:pod1:eth0";
        ensure!(held_by(&h1, ident1)? == [a1.clone()], "{:?}", idents(&h1)?);

        ping(&p1, &a2)?;
        ping(&p2, &a1)?;
        // hairpinMode: the pod's bridge port sends frames back out where they came from (a pod
        // reaching itself through a service address); the only such port on h1.
        let ports = weft_tests::cmd::ns_sh(
            h1.ns(),
            "ip -d link show master weave",
            Duration::from_secs(10),
        )?;
        ensure!(
            ports.matches("hairpin on").count() == 1,
            "one hairpin port expected: {ports}"
        );
        // The pod reaches its host through the exposed bridge.
        ping(&p1, &gw)?;

        let check1 = with_prev_result(WEAVE_CONF, &r1)?;
        let out = cni.run_ok(
            &h1,
            "weave-net",
            &Invocation::new("CHECK", "pod1", &n1),
            &check1,
        )?;
        ensure!(out.is_none(), "CHECK printed {out:?}");
        // CHECK is not a formality: without the address it fails.
        let ip2 = cni.run(
            &h2,
            "weave-net",
            &Invocation::new("CHECK", "pod2", &n2),
            &with_prev_result(WEAVE_CONF, &r2)?,
        )?;
        ensure!(ip2.success(), "CHECK pod2: {ip2}");
        weft_tests::cmd::ns_sh(
            &p2,
            &format!("ip addr del {a2} dev eth0"),
            Duration::from_secs(10),
        )?;
        let bad = cni.run(
            &h2,
            "weave-net",
            &Invocation::new("CHECK", "pod2", &n2),
            &with_prev_result(WEAVE_CONF, &r2)?,
        )?;
        let (code, msg) = cni_error(&bad)?;
        ensure!(code == 102 && msg.contains("lacks"), "{code} {msg}");

        let del1 = with_prev_result(WEAVE_CONF, &r1)?;
        cni.run_ok(
            &h1,
            "weave-net",
            &Invocation::new("DEL", "pod1", &n1),
            &del1,
        )?;
        ensure!(!has_link(&p1, "eth0")?, "eth0 still in pod1 after DEL");
        ensure!(held_by(&h1, ident1)?.is_empty(), "{:?}", idents(&h1)?);
        // Again, and once more without the namespace (as after the pod is gone).
        cni.run_ok(
            &h1,
            "weave-net",
            &Invocation::new("DEL", "pod1", &n1),
            &del1,
        )?;
        cni.run_ok(&h1, "weave-net", &Invocation::new("DEL", "pod1", ""), &del1)?;
        cni.run_ok(
            &h2,
            "weave-net",
            &Invocation::new("DEL", "pod2", &n2),
            WEAVE_CONF,
        )?;
        ensure!(
            held_by(&h2, "cni:weave:pod2:eth0")?.is_empty(),
            "{:?}",
            idents(&h2)?
        );

        // Bad configurations: a CNI error, nothing allocated, no interface.
        let p3 = net.netns("pod3")?;
        let n3 = netns_path(&p3);
        let before = idents(&h1)?;
        let out = cni.run(
            &h1,
            "weave-net",
            &Invocation::new("ADD", "pod3", &n3),
            "{\"cniVersion\": \"1.0.0\", ",
        )?;
        let (code, _) = cni_error(&out)?;
        ensure!(code == 6, "not JSON: code {code}: {out}");
        let bad_subnet = r#"{"cniVersion":"1.0.0","name":"weave","type":"weave-net","ipam":{"type":"weave-ipam","subnet":"10.32.300.0/24"}}"#;
        let out = cni.run(
            &h1,
            "weave-net",
            &Invocation::new("ADD", "pod3", &n3),
            bad_subnet,
        )?;
        let (code, msg) = cni_error(&out)?;
        ensure!(
            code == 7 && msg.contains("subnet"),
            "bad subnet: {code} {msg}"
        );
        let old = r#"{"cniVersion":"0.2.0","name":"weave","type":"weave-net"}"#;
        let (code, _) =
            cni_error(&cni.run(&h1, "weave-net", &Invocation::new("ADD", "pod3", &n3), old)?)?;
        ensure!(code == 1, "0.2.0: code {code}");
        ensure!(
            idents(&h1)? == before,
            "something was allocated: {:?}",
            idents(&h1)?
        );
        ensure!(!has_link(&p3, "eth0")?, "pod3 got an interface");
        Ok(())
    });
}

#[test]
fn weave_net_with_host_local_ipam() {
    run_test("cnihl", |net| {
        let (h1, h2) = (net.host(1)?, net.host(2)?);
        h1.launch(&[])?;
        h2.launch(&[&h1])?;
        wait_established(&[&h1, &h2], Duration::from_secs(20))?;
        let cni = Plugins::new(net)?;
        let data = net.dir().join("host-local");
        let conf = |n: u8| -> String {
            serde_json::json!({
                "cniVersion": "0.4.0",
                "name": "hl",
                "type": "weave-net",
                "ipam": {
                    "type": "host-local",
                    "dataDir": data.join(format!("h{n}")).display().to_string(),
                    "ranges": [[{
                        "subnet": "10.44.0.0/24",
                        "rangeStart": format!("10.44.0.{}", 10 * n),
                        "rangeEnd": format!("10.44.0.{}", 10 * n + 9),
                        "gateway": "10.44.0.1"
                    }]]
                }
            })
            .to_string()
        };
        let (p1, p2) = (net.netns("hl1")?, net.netns("hl2")?);
        let (n1, n2) = (netns_path(&p1), netns_path(&p2));
        let before = idents(&h1)?;
        let r1 = cni
            .run_ok(
                &h1,
                "weave-net",
                &Invocation::new("ADD", "hlpod1", &n1),
                &conf(1),
            )?
            .context("ADD printed nothing")?;
        let r2 = cni
            .run_ok(
                &h2,
                "weave-net",
                &Invocation::new("ADD", "hlpod2", &n2),
                &conf(2),
            )?
            .context("ADD printed nothing")?;
        let (a1, a2) = (first_address(&r1)?, first_address(&r2)?);
        ensure!(a1 == "10.44.0.10/24" && a2 == "10.44.0.20/24", "{a1} {a2}");
        ensure!(
            r1["ips"][0]["version"] == "4",
            "0.4.0 results have version: {r1}"
        );
        ensure!(r1["ips"][0]["gateway"] == "10.44.0.1", "{r1}");
        ensure!(addrs_in(&p1, "eth0")? == [a1.clone()], "pod1's eth0");
        // host-local recorded it; weft's IPAM did not.
        ensure!(
            data.join("h1/hl/10.44.0.10").exists(),
            "host-local has no record"
        );
        ensure!(
            idents(&h1)? == before,
            "weft's IPAM changed: {:?}",
            idents(&h1)?
        );
        ping(&p1, &a2)?;
        ping(&p2, &a1)?;

        let check = with_prev_result(&conf(1), &r1)?;
        cni.run_ok(
            &h1,
            "weave-net",
            &Invocation::new("CHECK", "hlpod1", &n1),
            &check,
        )?;
        cni.run_ok(
            &h1,
            "weave-net",
            &Invocation::new("DEL", "hlpod1", &n1),
            &check,
        )?;
        ensure!(!has_link(&p1, "eth0")?, "eth0 still in pod1 after DEL");
        ensure!(
            !data.join("h1/hl/10.44.0.10").exists(),
            "host-local still holds it"
        );
        cni.run_ok(
            &h1,
            "weave-net",
            &Invocation::new("DEL", "hlpod1", &n1),
            &check,
        )?;
        // A new ADD works again (host-local hands out the next address of its range).
        let again = cni
            .run_ok(
                &h1,
                "weave-net",
                &Invocation::new("ADD", "hlpod1", &n1),
                &conf(1),
            )?
            .context("ADD printed nothing")?;
        ensure!(first_address(&again)? == "10.44.0.11/24", "{again}");
        cni.run_ok(
            &h1,
            "weave-net",
            &Invocation::new("DEL", "hlpod1", &n1),
            &conf(1),
        )?;
        cni.run_ok(
            &h2,
            "weave-net",
            &Invocation::new("DEL", "hlpod2", &n2),
            &conf(2),
        )?;
        Ok(())
    });
}

#[test]
fn weave_ipam_alone() {
    run_test("cniipam", |net| {
        let h1 = net.host(1)?;
        h1.launch(&[])?;
        let cni = Plugins::new(net)?;
        let conf = r#"{"cniVersion":"1.1.0","name":"br","type":"bridge","isGateway":true,"ipam":{"type":"weave-ipam","subnet":"10.32.5.0/24","routes":[{"dst":"0.0.0.0/0"}]}}"#;
        let r = cni
            .run_ok(
                &h1,
                "weave-ipam",
                &Invocation::new("ADD", "c1", "/run/netns/none"),
                conf,
            )?
            .context("ADD printed nothing")?;
        let a = first_address(&r)?;
        ensure!(a.starts_with("10.32.5.") && a.ends_with("/24"), "{r}");
        ensure!(r["routes"][0]["dst"] == "0.0.0.0/0", "{r}");
        ensure!(
            held_by(&h1, "cni:br:c1:eth0")? == [a.clone()],
            "{:?}",
            idents(&h1)?
        );
        // The same attachment again gets the same address.
        let again = cni
            .run_ok(
                &h1,
                "weave-ipam",
                &Invocation::new("ADD", "c1", "/run/netns/none"),
                conf,
            )?
            .context("ADD printed nothing")?;
        ensure!(first_address(&again)? == a, "{again}");
        cni.run_ok(
            &h1,
            "weave-ipam",
            &Invocation::new("CHECK", "c1", "/run/netns/none"),
            &with_prev_result(conf, &r)?,
        )?;
        // GC with no valid attachments releases it; another network's stays.
        let other = conf.replace("\"name\":\"br\"", "\"name\":\"other\"");
        cni.run_ok(
            &h1,
            "weave-ipam",
            &Invocation::new("ADD", "c2", "/run/netns/none"),
            &other,
        )?;
        let gc: Value = {
            let mut v: Value = serde_json::from_str(conf)?;
            v["cni.dev/valid-attachments"] = serde_json::json!([]);
            v
        };
        cni.run_ok(
            &h1,
            "weave-ipam",
            &Invocation::new("GC", "", ""),
            &gc.to_string(),
        )?;
        ensure!(
            held_by(&h1, "cni:br:c1:eth0")?.is_empty(),
            "{:?}",
            idents(&h1)?
        );
        ensure!(
            !held_by(&h1, "cni:other:c2:eth0")?.is_empty(),
            "{:?}",
            idents(&h1)?
        );
        cni.run_ok(&h1, "weave-ipam", &Invocation::new("DEL", "c2", ""), &other)?;
        cni.run_ok(&h1, "weave-ipam", &Invocation::new("DEL", "c2", ""), &other)?;
        ensure!(
            held_by(&h1, "cni:other:c2:eth0")?.is_empty(),
            "{:?}",
            idents(&h1)?
        );
        // weave-net refuses the bridge plugin's fields, as Weave did.
        let out = cni.run(
            &h1,
            "weave-net",
            &Invocation::new("ADD", "c3", "/run/netns/none"),
            conf,
        )?;
        match parse_answer(&out.stdout)? {
            Some(v) if v["code"] == 2 => {}
            other => bail!("isGateway: {other:?} {out}"),
        }
        Ok(())
    });
}

/// A podman container's address on `eth0` (without the prefix length).
fn podman_ip(p: &PrivateHost, c: &str) -> Result<String> {
    let out = p.sh_ok(&format!("podman exec {c} ip -4 -o addr show dev eth0"))?;
    let cidr = weft_tests::docker::inet_cidrs(&out)
        .into_iter()
        .next()
        .with_context(|| format!("{c} has no address: {out}"))?;
    Ok(cidr.split('/').next().unwrap_or_default().to_owned())
}

#[test]
fn podman_on_the_weave_conflist() {
    run_test("cnipod", |net| {
        let (h1, h2) = (net.host(1)?, net.host(2)?);
        let mut p1 = PrivateHost::start(&h1)?;
        let mut p2 = PrivateHost::start(&h2)?;
        p1.sh_ok("weave setup && weave launch-router")?;
        p2.sh_ok(&format!("weave setup && weave launch-router {}", h1.addr()))?;
        wait_established(&[&h1, &h2], Duration::from_secs(20))?;
        p1.start_podman()?;
        p2.start_podman()?;
        // podman sees the network `weave setup` wrote.
        let nets = p1.sh_ok("podman network ls --format '{{.Name}} {{.Driver}}'")?;
        ensure!(nets.lines().any(|l| l == "weave weave-net"), "{nets}");

        // podman's default capabilities leave out NET_RAW, which busybox's ping needs.
        let id1 = p1
            .sh_ok(&format!(
                "podman run -d --name pod1 --network weave --cap-add NET_RAW {IMAGE} sleep 300"
            ))?
            .trim()
            .to_owned();
        p2.sh_ok(&format!(
            "podman run -d --name pod2 --network weave --cap-add NET_RAW {IMAGE} sleep 300"
        ))?;
        let (ip1, ip2) = (podman_ip(&p1, "pod1")?, podman_ip(&p2, "pod2")?);
        ensure!(ip1 != ip2, "both got {ip1}");
        // weave-net's identifier: network, container id, interface.
        let ident = format!("cni:weave:{id1}:eth0");
        let held = held_by(&h1, &ident)?;
        ensure!(
            held.iter().any(|a| a.starts_with(&format!("{ip1}/"))),
            "{ident} holds {held:?} in weft's IPAM, not {ip1}: {:?}",
            idents(&h1)?
        );
        p1.wait_ping("podman", "pod1", &ip2)?;
        p2.wait_ping("podman", "pod2", &ip1)?;

        // Removing the container runs DEL: the address goes back.
        p1.sh_ok("podman rm -f -t 0 pod1")?;
        let held = held_by(&h1, &ident)?;
        ensure!(held.is_empty(), "{ident} still holds {held:?}");
        Ok(())
    });
}
