//! Layer: driver. `weft expose`, `weft hide` and `weft ps` (weave-reference.md §1.1, §3).
//!
//! `expose` gets addresses for the ident `weave:expose` from IPAM (allocating for `net:` forms,
//! claiming for `ip:`/bare CIDRs) and asks the router to put them on the bridge
//! (`POST /expose/{ip}/{len}`); `hide` undoes both. `ps` reads the kernel directly: the
//! bridge's MAC and addresses, and for every `vethwepl*` port the namespace at its other end.

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use hyper::{Method, StatusCode};
use ipnet::{IpNet, Ipv4Net};
use weft_router::config::BRIDGE;
use weft_router::expose::Exposed;
use weft_sys::netlink::Netlink;
use weft_sys::netns::{NETNS_RUN_DIR, NetNs};
use weft_sys::plumb::{ETHWE, HOST_PREFIX, veth_id};

use crate::{Global, http, runtime};

/// The IPAM ident of the bridge's addresses.
pub(crate) const EXPOSE_ID: &str = "weave:expose";

/// Arguments of `weft expose`.
#[derive(Debug, Args)]
pub(crate) struct ExposeArgs {
    /// Addresses: `net:default` (the default), `net:CIDR` (allocate in that subnet),
    /// `ip:CIDR` or a bare CIDR (this address).
    addrs: Vec<String>,
    /// Do not masquerade traffic between the host and the overlay.
    #[arg(long)]
    without_masquerade: bool,
}

/// Arguments of `weft hide`.
#[derive(Debug, Args)]
pub(crate) struct HideArgs {
    /// Addresses to take off the bridge (all exposed ones when none are given).
    addrs: Vec<String>,
}

/// Arguments of `weft ps`.
#[derive(Debug, Args)]
pub(crate) struct PsArgs {
    /// Containers (namespace names or pids, or `weave:expose`) to list; all when none.
    containers: Vec<String>,
}

/// One address argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Addr {
    /// `net:default`: allocate in the default subnet.
    NetDefault,
    /// `net:CIDR`: allocate in this subnet.
    Net(Ipv4Net),
    /// `ip:CIDR` or a bare CIDR: this address.
    Ip(Ipv4Net),
}

/// Parses `net:default`, `net:CIDR`, `ip:CIDR` or `CIDR`.
pub(crate) fn parse_addr(s: &str) -> anyhow::Result<Addr> {
    let cidr = |c: &str| {
        c.parse::<Ipv4Net>().with_context(|| {
            format!("'{c}' is not an IPv4 address with a prefix length (like 10.32.0.5/12)")
        })
    };
    if s == "net:default" {
        Ok(Addr::NetDefault)
    } else if let Some(net) = s.strip_prefix("net:") {
        Ok(Addr::Net(cidr(net)?.trunc()))
    } else {
        Ok(Addr::Ip(cidr(s.strip_prefix("ip:").unwrap_or(s))?))
    }
}

/// `"{ip}/{len}"` for a URL path.
fn path_cidr(c: Ipv4Net) -> String {
    format!("{}/{}", c.addr(), c.prefix_len())
}

/// `POST /expose/{ip}/{len}`, with `?skipNAT=true` when not masquerading.
pub(crate) fn expose_path(c: Ipv4Net, skip_nat: bool) -> String {
    let q = if skip_nat { "?skipNAT=true" } else { "" };
    format!("/expose/{}{q}", path_cidr(c))
}

/// The `/ip` request that gets `addr` for `weave:expose`: method and path.
pub(crate) fn ipam_request(addr: Addr) -> (Method, String) {
    match addr {
        Addr::NetDefault => (Method::POST, format!("/ip/{EXPOSE_ID}")),
        Addr::Net(n) => (Method::POST, format!("/ip/{EXPOSE_ID}/{}", path_cidr(n))),
        Addr::Ip(c) => (Method::PUT, format!("/ip/{EXPOSE_ID}/{}", path_cidr(c))),
    }
}

/// Space-separated addresses without prefix lengths, as Weave prints them.
pub(crate) fn show_ips(cidrs: &[Ipv4Net]) -> String {
    cidrs
        .iter()
        .map(|c| c.addr().to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A router error as the message to print.
fn http_error(what: &str, code: StatusCode, body: &str) -> anyhow::Error {
    let body = body.trim();
    if body.is_empty() {
        anyhow::anyhow!("{what}: the router answered {code}")
    } else {
        anyhow::anyhow!("{what}: {body} ({code})")
    }
}

/// Gets the address for `addr` from IPAM. Without IPAM (404) an explicit address is used as is
/// and a `net:` form is an error.
async fn allocate(global: &Global, addr: Addr) -> anyhow::Result<Ipv4Net> {
    let (method, path) = ipam_request(addr);
    let (code, body) = http::request(global.http_addr, method, &path, false).await?;
    match addr {
        Addr::Ip(c) if code.is_success() || code == StatusCode::NOT_FOUND => Ok(c),
        Addr::Ip(c) => Err(http_error(&format!("claiming {c}"), code, &body)),
        _ if code == StatusCode::NOT_FOUND => bail!(
            "IPAM is not enabled on this router; give an explicit address (like 10.32.0.254/12)"
        ),
        _ if code.is_success() => body.trim().parse::<Ipv4Net>().with_context(|| {
            format!(
                "IPAM answered {:?}, not an address with prefix length",
                body.trim()
            )
        }),
        _ => Err(http_error("allocating an address", code, &body)),
    }
}

pub(crate) fn expose(global: &Global, args: ExposeArgs) -> anyhow::Result<ExitCode> {
    let addrs = if args.addrs.is_empty() {
        vec![Addr::NetDefault]
    } else {
        args.addrs
            .iter()
            .map(|a| parse_addr(a))
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    let exposed = runtime()?.block_on(async {
        let mut out = Vec::new();
        for addr in addrs {
            let cidr = allocate(global, addr).await?;
            let path = expose_path(cidr, args.without_masquerade);
            let (code, body) = http::request(global.http_addr, Method::POST, &path, false).await?;
            if !code.is_success() {
                return Err(http_error(&format!("exposing {cidr}"), code, &body));
            }
            out.push(cidr);
        }
        anyhow::Ok(out)
    })?;
    println!("{}", show_ips(&exposed));
    Ok(ExitCode::SUCCESS)
}

/// What the router has exposed (`GET /expose`).
async fn exposed(global: &Global) -> anyhow::Result<Vec<Ipv4Net>> {
    let (code, body) = http::get(global.http_addr, "/expose", true).await?;
    if !code.is_success() {
        return Err(http_error("listing exposed addresses", code, &body));
    }
    let list: Vec<Exposed> =
        serde_json::from_str(&body).with_context(|| format!("GET /expose answered {body:?}"))?;
    Ok(list.into_iter().map(|e| e.cidr).collect())
}

/// What IPAM holds for `weave:expose` (`None` without IPAM).
async fn ipam_owned(global: &Global) -> anyhow::Result<Option<Vec<Ipv4Net>>> {
    let path = format!("/ip/{EXPOSE_ID}");
    let (code, body) = http::get(global.http_addr, &path, false).await?;
    if code == StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !code.is_success() {
        return Err(http_error("looking up the exposed addresses", code, &body));
    }
    let cidrs = body
        .split_whitespace()
        .map(|c| c.parse::<Ipv4Net>())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("GET {path} answered {body:?}"))?;
    Ok(Some(cidrs))
}

/// The addresses `hide ARGS` means, given what is exposed and what IPAM owns.
pub(crate) fn hide_targets(
    addrs: &[Addr],
    exposed: &[Ipv4Net],
    owned: Option<&[Ipv4Net]>,
) -> Vec<Ipv4Net> {
    if addrs.is_empty() {
        return exposed.to_vec();
    }
    let mut out: Vec<Ipv4Net> = Vec::new();
    for a in addrs {
        let found: Vec<Ipv4Net> = match *a {
            Addr::Ip(c) => vec![c],
            Addr::Net(n) => exposed
                .iter()
                .filter(|c| n.contains(&c.addr()))
                .copied()
                .collect(),
            Addr::NetDefault => match owned {
                Some(owned) => exposed
                    .iter()
                    .filter(|c| owned.iter().any(|o| o.addr() == c.addr()))
                    .copied()
                    .collect(),
                None => exposed.to_vec(),
            },
        };
        for c in found {
            if !out.contains(&c) {
                out.push(c);
            }
        }
    }
    out
}

pub(crate) fn hide(global: &Global, args: HideArgs) -> anyhow::Result<ExitCode> {
    let addrs = args
        .addrs
        .iter()
        .map(|a| parse_addr(a))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let hidden = runtime()?.block_on(async {
        let exposed = exposed(global).await?;
        let owned = if addrs.contains(&Addr::NetDefault) {
            ipam_owned(global).await?
        } else {
            None
        };
        let targets = hide_targets(&addrs, &exposed, owned.as_deref());
        for c in &targets {
            let path = format!("/expose/{}", path_cidr(*c));
            let (code, body) =
                http::request(global.http_addr, Method::DELETE, &path, false).await?;
            if !code.is_success() {
                return Err(http_error(&format!("hiding {c}"), code, &body));
            }
            let path = format!("/ip/{EXPOSE_ID}/{}", c.addr());
            let (code, body) =
                http::request(global.http_addr, Method::DELETE, &path, false).await?;
            if !code.is_success() && code != StatusCode::NOT_FOUND {
                return Err(http_error(&format!("releasing {c}"), code, &body));
            }
        }
        anyhow::Ok(targets)
    })?;
    if !hidden.is_empty() {
        println!("{}", show_ips(&hidden));
    }
    Ok(ExitCode::SUCCESS)
}

/// A MAC address as `aa:bb:cc:dd:ee:ff`.
pub(crate) fn fmt_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// One `ps` line: id, MAC, CIDRs.
pub(crate) fn ps_line(id: &str, mac: Option<[u8; 6]>, cidrs: &[Ipv4Net]) -> String {
    let mut line = id.to_owned();
    if let Some(mac) = mac {
        line.push(' ');
        line.push_str(&fmt_mac(mac));
    }
    for c in cidrs {
        line.push(' ');
        line.push_str(&c.to_string());
    }
    line
}

fn ipv4(addrs: Vec<IpNet>) -> Vec<Ipv4Net> {
    addrs
        .into_iter()
        .filter_map(|n| match n {
            IpNet::V4(n) if !n.addr().is_link_local() => Some(n),
            _ => None,
        })
        .collect()
}

/// The container end of host veth `host_index`: its `ethwe` MAC and addresses, if `ns` is it.
async fn container_end(
    ns: &NetNs,
    host_index: u32,
) -> anyhow::Result<Option<([u8; 6], Vec<Ipv4Net>)>> {
    let nl = Netlink::in_netns(ns)?;
    let Some(ethwe) = nl.link_index(ETHWE).await? else {
        return Ok(None);
    };
    let Some(link) = nl.link(ethwe).await? else {
        return Ok(None);
    };
    if link.peer_index != Some(host_index) || !link.peer_in_other_netns {
        return Ok(None);
    }
    let Some(mac) = link.mac else {
        return Ok(None);
    };
    Ok(Some((mac, ipv4(nl.addresses(ethwe).await?))))
}

/// Named namespaces (`/run/netns/*`).
fn named_netns() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(NETNS_RUN_DIR) else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

/// The Docker container a process belongs to, as Docker's 12-character short id: the
/// 64-hex-digit segment of its cgroup path (`/docker/<id>` or `docker-<id>.scope`).
fn docker_id(pid: u32) -> Option<String> {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    docker_id_in(&cgroups)
}

fn docker_id_in(cgroups: &str) -> Option<String> {
    cgroups
        .lines()
        .flat_map(|line| line.split(['/', '-', '.', ':']))
        .find(|seg| seg.len() == 64 && seg.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(|id| id[..12].to_owned())
}

/// Finds the container behind host veth `name` (index `index`): the id in the name is the pid
/// it was attached for, or the low digits of its namespace's inode (see `plumb::veth_id`).
/// Returns the target as given to `weft attach` (pid or namespace name), MAC and addresses.
async fn find_container(
    host: &NetNs,
    index: u32,
    name: &str,
    netns_names: &[String],
) -> anyhow::Result<Option<(String, [u8; 6], Vec<Ipv4Net>)>> {
    let Some(id) = name
        .strip_prefix(HOST_PREFIX)
        .and_then(|s| s.parse::<u32>().ok())
    else {
        return Ok(None);
    };
    if let Ok(ns) = NetNs::from_pid(id) {
        if !ns.same_as(host) {
            if let Some((mac, addrs)) = container_end(&ns, index).await? {
                let shown = docker_id(id).unwrap_or_else(|| id.to_string());
                return Ok(Some((shown, mac, addrs)));
            }
        }
    }
    for n in netns_names {
        let Ok(ns) = NetNs::from_name(n) else {
            continue;
        };
        if veth_id(None, ns.inode()) != id || ns.same_as(host) {
            continue;
        }
        if let Some((mac, addrs)) = container_end(&ns, index).await? {
            return Ok(Some((n.clone(), mac, addrs)));
        }
    }
    Ok(None)
}

pub(crate) fn ps(_global: &Global, args: PsArgs) -> anyhow::Result<ExitCode> {
    let wanted = |id: &str| args.containers.is_empty() || args.containers.iter().any(|c| c == id);
    let lines = runtime()?.block_on(async {
        let nl = Netlink::new()?;
        let Some(bridge) = nl.link_index(BRIDGE).await? else {
            bail!("there is no bridge '{BRIDGE}' here; run 'weft launch' first");
        };
        let mut lines = Vec::new();
        if wanted(EXPOSE_ID) {
            let mac = nl.link_mac(bridge).await?;
            let cidrs = ipv4(nl.addresses(bridge).await?);
            lines.push(ps_line(EXPOSE_ID, mac, &cidrs));
        }
        let host = NetNs::current().context("opening the current network namespace")?;
        let names = named_netns();
        let mut ports = nl.links_with_master(bridge).await?;
        ports.sort_by(|a, b| a.1.cmp(&b.1));
        for (index, name) in ports {
            if !name.starts_with(HOST_PREFIX) {
                continue;
            }
            match find_container(&host, index, &name, &names).await? {
                Some((id, mac, cidrs)) if wanted(&id) => {
                    lines.push(ps_line(&id, Some(mac), &cidrs));
                }
                Some(_) => {}
                // No namespace found for it: show the port, so it is not silently missing.
                None if args.containers.is_empty() => lines.push(name),
                None => {}
            }
        }
        anyhow::Ok(lines)
    })?;
    for l in lines {
        println!("{l}");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_ids_from_cgroup_paths() {
        let id = "3f2a9c0d1e4b".to_owned() + &"a".repeat(52);
        let v1 = format!("12:pids:/docker/{id}\n0::/docker/{id}\n");
        assert_eq!(docker_id_in(&v1).as_deref(), Some("3f2a9c0d1e4b"));
        let v2 = format!("0::/system.slice/docker-{id}.scope\n");
        assert_eq!(docker_id_in(&v2).as_deref(), Some("3f2a9c0d1e4b"));
        assert_eq!(docker_id_in("0::/user.slice/session-1.scope\n"), None);
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn address_forms() {
        assert_eq!(parse_addr("net:default").unwrap(), Addr::NetDefault);
        assert_eq!(
            parse_addr("net:10.32.5.9/24").unwrap(),
            Addr::Net(net("10.32.5.0/24"))
        );
        assert_eq!(
            parse_addr("ip:10.32.1.254/24").unwrap(),
            Addr::Ip(net("10.32.1.254/24"))
        );
        assert_eq!(
            parse_addr("10.32.1.254/24").unwrap(),
            Addr::Ip(net("10.32.1.254/24"))
        );
        assert!(parse_addr("10.32.1.254").is_err());
        assert!(parse_addr("net:nonsense").is_err());
    }

    #[test]
    fn request_paths() {
        assert_eq!(
            ipam_request(Addr::NetDefault),
            (Method::POST, "/ip/weave:expose".to_string())
        );
        assert_eq!(
            ipam_request(Addr::Net(net("10.40.0.0/16"))),
            (Method::POST, "/ip/weave:expose/10.40.0.0/16".to_string())
        );
        assert_eq!(
            ipam_request(Addr::Ip(net("10.32.1.254/24"))),
            (Method::PUT, "/ip/weave:expose/10.32.1.254/24".to_string())
        );
        assert_eq!(
            expose_path(net("10.32.1.254/24"), false),
            "/expose/10.32.1.254/24"
        );
        assert_eq!(
            expose_path(net("10.32.1.254/24"), true),
            "/expose/10.32.1.254/24?skipNAT=true"
        );
    }

    #[test]
    fn what_hide_removes() {
        let exposed = [net("10.32.1.254/24"), net("10.40.0.1/16")];
        assert_eq!(hide_targets(&[], &exposed, None), exposed.to_vec());
        assert_eq!(
            hide_targets(&[Addr::Net(net("10.40.0.0/16"))], &exposed, None),
            vec![net("10.40.0.1/16")]
        );
        assert_eq!(
            hide_targets(&[Addr::Ip(net("10.50.0.1/24"))], &exposed, None),
            vec![net("10.50.0.1/24")]
        );
        let owned = [net("10.40.0.1/16")];
        assert_eq!(
            hide_targets(&[Addr::NetDefault], &exposed, Some(&owned)),
            vec![net("10.40.0.1/16")]
        );
        assert_eq!(
            hide_targets(&[Addr::NetDefault, Addr::NetDefault], &exposed, None),
            exposed.to_vec()
        );
    }

    #[test]
    fn output_formats() {
        assert_eq!(
            show_ips(&[net("10.32.1.254/24"), net("10.40.0.1/16")]),
            "10.32.1.254 10.40.0.1"
        );
        assert_eq!(
            ps_line(
                "weave:expose",
                Some([0x6a, 0x01, 0x02, 0x0a, 0xbb, 0xff]),
                &[net("10.32.1.254/24")]
            ),
            "weave:expose 6a:01:02:0a:bb:ff 10.32.1.254/24"
        );
        assert_eq!(ps_line("ctr", None, &[]), "ctr");
    }
}
