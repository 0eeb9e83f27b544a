//! Layer: driver. weaveDNS from the command line, as Weave's `weave` script has it:
//!
//! - `weft dns-add [IP...] CONTAINER [-h FQDN]`: the container's name (its hostname and
//!   domainname, or FQDN) on the given addresses, or on its `ethwe` addresses;
//!   `weft dns-add IP... -h FQDN`: a name for addresses outside any container (`weave:extern`);
//! - `weft dns-remove` with the same arguments takes them away;
//! - `weft dns-lookup NAME`: asks the DNS server (as `dig +short` would);
//! - `weft dns-args`: what `docker run` needs to use weaveDNS (`--dns=ADDR --dns-search=DOMAIN`);
//! - `weft attach`'s registration ([`register_attached`]) and `weft detach`'s removal.
//!
//! Containers are named the Docker way (name or id) and looked up as every verb does
//! ([`crate::target`]).

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use weft_proxy::upstream::Container;
use weft_router::dns::{EXTERN_IDENT, client};
use weft_sys::netns::NetNs;

use crate::{Global, runtime};

/// `--dns-listen-address`: `IP[:PORT]` (port 53 when not given).
pub(crate) fn parse_listen(a: &str) -> anyhow::Result<SocketAddr> {
    if let Ok(sa) = a.parse::<SocketAddr>() {
        return Ok(sa);
    }
    match a.parse::<std::net::IpAddr>() {
        Ok(ip) => Ok(SocketAddr::new(ip, 53)),
        Err(_) => bail!("--dns-listen-address '{a}' is not IP[:PORT]"),
    }
}

/// Arguments of `weft dns-add` and `weft dns-remove`.
#[derive(Debug, Args)]
pub(crate) struct EditArgs {
    /// Addresses, then the container (name or id); the container may be left out when
    /// `-h FQDN` is given (a name for addresses outside any container).
    args: Vec<String>,
    /// The name (default: the container's hostname and domainname).
    #[arg(short = 'h', long = "fqdn", value_name = "FQDN")]
    fqdn: Option<String>,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
}

/// The addresses on `ethwe` inside the container's network namespace.
async fn ethwe_addrs(c: &Container) -> anyhow::Result<Vec<Ipv4Addr>> {
    let Some(pid) = c.pid.filter(|_| c.running) else {
        bail!("container {} is not running", c.short_id());
    };
    let ns = NetNs::from_pid(pid).with_context(|| format!("opening the netns of {pid}"))?;
    let nl = weft_sys::netlink::Netlink::in_netns(&ns)?;
    let Some(index) = nl.link_index("ethwe").await? else {
        bail!("container {} is not attached to weave", c.short_id());
    };
    Ok(nl
        .addresses(index)
        .await?
        .into_iter()
        .filter_map(|a| match a.addr() {
            std::net::IpAddr::V4(ip) => Some(ip),
            std::net::IpAddr::V6(_) => None,
        })
        .collect())
}

/// What `dns-add`/`dns-remove` work on.
struct Target {
    ident: String,
    ips: Vec<Ipv4Addr>,
    fqdn: Option<String>,
}

async fn target(global: &Global, args: &EditArgs, verb: &str) -> anyhow::Result<Target> {
    let mut ips = Vec::new();
    let mut rest = args.args.iter().peekable();
    while let Some(ip) = rest.peek().and_then(|a| a.parse::<Ipv4Addr>().ok()) {
        ips.push(ip);
        rest.next();
    }
    let container = rest.next();
    if let Some(extra) = rest.next() {
        bail!("unexpected argument '{extra}'; usage: weft {verb} [IP...] [CONTAINER] [-h FQDN]");
    }
    let fqdn = args.fqdn.as_deref().map(weft_dns::entry::fqdn);
    let Some(name) = container else {
        if ips.is_empty() || fqdn.is_none() {
            bail!("usage: weft {verb} [IP...] CONTAINER [-h FQDN] | weft {verb} IP... -h FQDN");
        }
        return Ok(Target {
            ident: EXTERN_IDENT.to_owned(),
            ips,
            fqdn,
        });
    };
    let Some(c) = crate::target::docker_container(global, name).await? else {
        bail!("no such container: {name}");
    };
    if ips.is_empty() && verb == "dns-add" {
        ips = ethwe_addrs(&c).await?;
    }
    Ok(Target {
        fqdn: fqdn.or_else(|| c.fqdn()),
        ident: c.id,
        ips,
    })
}

/// `weft dns-add`.
pub(crate) fn add(global: &Global, args: EditArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let t = target(global, &args, "dns-add").await?;
        let Some(fqdn) = t.fqdn else {
            bail!("the container has no name with a domain (hostname.domainname); give one with -h FQDN");
        };
        for ip in &t.ips {
            client::register(global.http_addr, &t.ident, *ip, &fqdn).await?;
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `weft dns-remove`.
pub(crate) fn remove(global: &Global, args: EditArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let t = target(global, &args, "dns-remove").await?;
        // Without -h, every name of the container (on the given addresses) goes.
        let fqdn = args.fqdn.as_deref().map(weft_dns::entry::fqdn);
        if t.ips.is_empty() {
            client::deregister(global.http_addr, &t.ident, None, fqdn.as_deref()).await?;
        }
        for ip in &t.ips {
            client::deregister(global.http_addr, &t.ident, Some(*ip), fqdn.as_deref()).await?;
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `weft dns-lookup`.
#[derive(Debug, Args)]
pub(crate) struct LookupArgs {
    /// The name (an unqualified one is looked up in the domain).
    name: String,
}

/// `weft dns-lookup NAME`: the addresses, one per line (as `dig +short`).
pub(crate) fn lookup(global: &Global, args: LookupArgs) -> anyhow::Result<ExitCode> {
    let server = runtime()?.block_on(client::address(global.http_addr, "/dns-address-port"))?;
    let server: SocketAddr = server
        .parse()
        .with_context(|| format!("the router gave '{server}' as its DNS address"))?;
    let id: u16 = rand_id();
    let query = weft_dns::query::a_query(&args.name, id).map_err(anyhow::Error::msg)?;
    let sock = UdpSocket::bind(if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = vec![0u8; 65536];
    for _ in 0..3 {
        sock.send_to(&query, server)?;
        let Ok(n) = sock.recv(&mut buf) else {
            continue;
        };
        let (_rcode, addrs) =
            weft_dns::query::a_answers(&buf[..n], id).map_err(anyhow::Error::msg)?;
        for a in addrs {
            println!("{a}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    bail!("no answer from the DNS server at {server}")
}

fn rand_id() -> u16 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (t ^ std::process::id()) as u16
}

/// `weft dns-args`: `--dns=ADDR --dns-search=DOMAIN`, or nothing when the router runs
/// without DNS.
pub(crate) fn args(global: &Global) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let Some(domain) = client::domain(global.http_addr).await? else {
            return anyhow::Ok(());
        };
        let addr = client::address(global.http_addr, "/dns-address").await?;
        print!("--dns={addr} --dns-search={domain}");
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `weft attach`'s registration: when the target is a Docker container (`container`, as
/// [`crate::target::resolve`] found it, or the running one whose pid `target` is) with a name
/// in a domain, that name on `addrs`. Anything else registers nothing.
pub(crate) async fn register_attached(
    global: &Global,
    target: &str,
    container: Option<&Container>,
    addrs: &[Ipv4Addr],
) {
    let Some(c) = attached_container(global, target, container).await else {
        return;
    };
    let Some(fqdn) = c.fqdn() else {
        return;
    };
    for ip in addrs {
        if let Err(e) = client::register(global.http_addr, &c.id, *ip, &fqdn).await {
            eprintln!("weft: {e:#}");
        }
    }
}

/// `weft detach`'s counterpart: the container's names on `addrs` (all when empty) go.
pub(crate) async fn deregister_detached(
    global: &Global,
    target: &str,
    container: Option<&Container>,
    addrs: &[Ipv4Addr],
) {
    let Some(c) = attached_container(global, target, container).await else {
        return;
    };
    if addrs.is_empty() {
        let _ = client::deregister(global.http_addr, &c.id, None, None).await;
    }
    for ip in addrs {
        let _ = client::deregister(global.http_addr, &c.id, Some(*ip), None).await;
    }
}

/// The Docker container an attach target is: the one it was resolved to, else the running
/// container whose pid `target` is.
async fn attached_container(
    global: &Global,
    target: &str,
    container: Option<&Container>,
) -> Option<Container> {
    if let Some(c) = container {
        return Some(c.clone());
    }
    let pid: u32 = target.parse().ok()?;
    let docker = crate::target::docker(global).ok()?;
    for id in docker.running().await.ok()? {
        if let Ok(Some(c)) = docker.container(&id).await {
            if c.pid == Some(pid) {
                return Some(c);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(
            parse_listen("192.0.2.1").unwrap(),
            "192.0.2.1:53".parse().unwrap()
        );
        assert_eq!(
            parse_listen("192.0.2.1:5353").unwrap(),
            "192.0.2.1:5353".parse().unwrap()
        );
        assert!(parse_listen("nope").is_err());
    }
}
