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
use ipnet::Ipv4Net;
use weft_router::config::BRIDGE;
use weft_router::expose::Exposed;
use weft_sys::netlink::Netlink;
use weft_sys::netns::NetNs;
use weft_sys::plumb::ipv4_addrs;
use weft_wire::ethernet::Address;

use crate::{Global, http, runtime};

/// The IPAM ident of the bridge's addresses.
pub(crate) const EXPOSE_ID: &str = "weave:expose";

/// Arguments of `weave expose` (`-h` is the host name to register, as in Weave, not help).
#[derive(Debug, Args)]
#[command(disable_help_flag = true)]
pub(crate) struct ExposeArgs {
    /// Addresses: `net:default` (the default), `net:CIDR` (allocate in that subnet),
    /// `ip:CIDR` or a bare CIDR (this address).
    addrs: Vec<String>,
    /// Register the exposed addresses in weaveDNS under this name.
    #[arg(short = 'h', value_name = "FQDN")]
    fqdn: Option<String>,
    /// Do not masquerade traffic between the host and the overlay.
    #[arg(long)]
    without_masquerade: bool,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
}

/// Arguments of `weft hide`.
#[derive(Debug, Args)]
pub(crate) struct HideArgs {
    /// Addresses to take off the bridge (all exposed ones when none are given).
    addrs: Vec<String>,
}

/// Arguments of `weave ps`.
#[derive(Debug, Args)]
pub(crate) struct PsArgs {
    /// Containers (Docker names or ids, namespace names or pids, or `weave:expose`) to list;
    /// all when none.
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
async fn allocate(api: std::net::SocketAddr, addr: Addr) -> anyhow::Result<Ipv4Net> {
    let (method, path) = ipam_request(addr);
    let (code, body) = http::request(api, method, &path, false).await?;
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

/// Gets `addr` for `weave:expose` from IPAM and has the router put it on the bridge (and
/// masquerade, unless `skip_nat`); returns the address. `weave expose`, and the CNI plugin
/// when the bridge has no address to route containers through.
pub(crate) async fn expose_one(
    api: std::net::SocketAddr,
    addr: Addr,
    skip_nat: bool,
) -> anyhow::Result<Ipv4Net> {
    let cidr = allocate(api, addr).await?;
    let path = expose_path(cidr, skip_nat);
    let (code, body) = http::request(api, Method::POST, &path, false).await?;
    if !code.is_success() {
        return Err(http_error(&format!("exposing {cidr}"), code, &body));
    }
    Ok(cidr)
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
            out.push(expose_one(global.http_addr, addr, args.without_masquerade).await?);
        }
        anyhow::Ok(out)
    })?;
    if let Some(fqdn) = &args.fqdn {
        // weaveDNS registration (`PUT /name/weave:expose/IP`); without DNS on the router (404)
        // the name is only noted.
        runtime()?.block_on(async {
            for c in &exposed {
                let path = format!("/name/{EXPOSE_ID}/{}", c.addr());
                let form = format!("fqdn={}", http::form_escape(fqdn));
                match http::send_form(global.http_addr, Method::PUT, &path, form).await {
                    Ok((code, _)) if code.is_success() => {}
                    Ok((StatusCode::NOT_FOUND, _)) => {
                        tracing::debug!("no weaveDNS on the router; -h {fqdn} not registered");
                    }
                    Ok((code, body)) => eprintln!(
                        "weft: registering {fqdn} for {}: {} ({code})",
                        c.addr(),
                        body.trim()
                    ),
                    Err(e) => eprintln!("weft: registering {fqdn}: {e:#}"),
                }
            }
        });
    }
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
            // Not exposed (404): nothing to take off, as `ip addr del` users expect of Weave.
            if !code.is_success() && code != StatusCode::NOT_FOUND {
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

/// One `ps` line: id, MAC, CIDRs.
pub(crate) fn ps_line(id: &str, mac: Option<[u8; 6]>, cidrs: &[Ipv4Net]) -> String {
    let mut line = id.to_owned();
    if let Some(mac) = mac {
        line.push(' ');
        line.push_str(&Address::from(mac).to_string());
    }
    for c in cidrs {
        line.push(' ');
        line.push_str(&c.to_string());
    }
    line
}

/// One container's weave interface, as `ps` lists it.
struct Listed {
    /// Network namespace inode of the container.
    inode: u64,
    /// Who it is: Docker's short id, a namespace name or a pid.
    id: String,
    mac: [u8; 6],
    cidrs: Vec<Ipv4Net>,
}

/// Every namespace attached to the bridge, from its `vethwepl*` ports (see
/// [`weft_sys::plumb::attached`]); a port whose namespace is not found is listed by its name.
async fn attached_namespaces() -> anyhow::Result<Vec<Listed>> {
    let (found, unresolved) = weft_sys::plumb::attached(BRIDGE).await?;
    let mut out: Vec<(String, Listed)> = found
        .into_iter()
        .map(|c| {
            let id = match &c.docker_id {
                Some(d) => d[..12].to_owned(),
                None => c.target,
            };
            let l = Listed {
                inode: c.netns_inode,
                id,
                mac: c.mac,
                cidrs: c.addrs,
            };
            (c.port, l)
        })
        .collect();
    // No namespace found for it: show the port, so it is not silently missing.
    out.extend(unresolved.into_iter().map(|port| {
        let l = Listed {
            inode: 0,
            id: port.clone(),
            mac: [0; 6],
            cidrs: Vec::new(),
        };
        (port, l)
    }));
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out.into_iter().map(|(_, l)| l).collect())
}

/// `weave ps [CONTAINER...]`: `weave:expose` with the bridge's MAC and addresses, then every
/// attached container (running Docker containers by short id, `--net=container:X` sharers
/// included, in `docker ps` order; then namespaces attached by name or pid) with MAC and
/// addresses. With arguments, only those, each shown as given (Docker names cut to 12
/// characters, as Weave prints them).
pub(crate) fn ps(global: &Global, args: PsArgs) -> anyhow::Result<ExitCode> {
    let lines = runtime()?.block_on(async {
        let nl = Netlink::new()?;
        let Some(bridge) = nl.link_index(BRIDGE).await? else {
            // Weave prints nothing when there is no bridge.
            return anyhow::Ok(Vec::new());
        };
        let bridge_line = || async {
            let mac = nl.link_mac(bridge).await?;
            let cidrs = ipv4_addrs(nl.addresses(bridge).await?);
            anyhow::Ok(ps_line(EXPOSE_ID, mac, &cidrs))
        };
        let attached = attached_namespaces().await?;
        let mut lines = Vec::new();
        if args.containers.is_empty() {
            lines.push(bridge_line().await?);
            let mut shown_inodes = Vec::new();
            let docker = crate::target::docker(global)?;
            for id in docker.running().await.unwrap_or_default() {
                let Ok(Some(c)) = docker.container(&id).await else {
                    continue;
                };
                let Some(inode) = c
                    .pid
                    .and_then(|p| NetNs::from_pid(p).ok())
                    .map(|n| n.inode())
                else {
                    continue;
                };
                if let Some(l) = attached.iter().find(|l| l.inode == inode && l.inode != 0) {
                    lines.push(ps_line(c.short_id(), Some(l.mac), &l.cidrs));
                    shown_inodes.push(inode);
                }
            }
            for l in &attached {
                if l.inode == 0 {
                    lines.push(l.id.clone());
                } else if !shown_inodes.contains(&l.inode) {
                    lines.push(ps_line(&l.id, Some(l.mac), &l.cidrs));
                }
            }
            return Ok(lines);
        }
        for arg in &args.containers {
            if arg == EXPOSE_ID {
                lines.push(bridge_line().await?);
                continue;
            }
            let inode = match crate::target::docker_container(global, arg).await? {
                Some(c) => {
                    let inode = c
                        .pid
                        .and_then(|p| NetNs::from_pid(p).ok())
                        .map(|n| n.inode());
                    let shown: String = arg.chars().take(12).collect();
                    if let Some(l) = attached.iter().find(|l| Some(l.inode) == inode) {
                        lines.push(ps_line(&shown, Some(l.mac), &l.cidrs));
                    }
                    continue;
                }
                None => NetNs::from_target(arg).ok().map(|n| n.inode()),
            };
            if let Some(l) = attached.iter().find(|l| Some(l.inode) == inode) {
                lines.push(ps_line(arg, Some(l.mac), &l.cidrs));
            }
        }
        Ok(lines)
    })?;
    for l in lines {
        println!("{l}");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

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
