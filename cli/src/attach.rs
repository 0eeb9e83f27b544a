//! Layer: driver. `weave attach [ADDR...] [OPTIONS] CONTAINER` and
//! `weave detach [ADDR...] CONTAINER`, through the one attach path
//! ([`weft_router::attach`]), with IPAM reached over the router's HTTP API.
//!
//! CONTAINER is a Docker container name or id, a network namespace name or a pid
//! ([`crate::target`]). ADDR is Weave's: `net:default` (the default), `net:CIDR` (allocate in
//! that subnet), `ip:CIDR` or a bare `CIDR` (claim that address); for `detach`, `net:CIDR`
//! means every address in that subnet. Both print the addresses, as Weave does.

use std::process::ExitCode;

use anyhow::bail;
use clap::Args;
use ipnet::Ipv4Net;
use weft_router::attach::{AddrSpec, AttachRequest, DetachWhat};
use weft_router::client::Http;
use weft_router::config::{BRIDGE, DEFAULT_MTU};

use crate::{Global, runtime, target};

/// Arguments of `weave attach`.
#[derive(Debug, Args)]
pub(crate) struct AttachArgs {
    /// Addresses (net:default, net:CIDR, ip:CIDR, CIDR; default net:default), then the
    /// container: a Docker container name or id, a network namespace name, or a pid.
    #[arg(required = true, num_args = 1..)]
    args: Vec<String>,
    /// Do not register the container in weaveDNS.
    #[arg(long)]
    without_dns: bool,
    /// Write the container's /etc/hosts with its name on its weave address.
    #[arg(long)]
    rewrite_hosts: bool,
    /// Extra /etc/hosts entries (`name:ip`, with --rewrite-hosts).
    #[arg(long, value_name = "NAME:IP")]
    add_host: Vec<String>,
    /// Do not add the multicast route on `ethwe`.
    #[arg(long)]
    no_multicast_route: bool,
}

/// Arguments of `weave detach`.
#[derive(Debug, Args)]
pub(crate) struct DetachArgs {
    /// Addresses to remove (all when none; net:CIDR: all in that subnet), then the container.
    #[arg(required = true, num_args = 1..)]
    args: Vec<String>,
}

/// Split the arguments into address specs and the target.
pub(crate) fn split(args: &[String]) -> anyhow::Result<(Vec<AddrSpec>, &str)> {
    let Some((target, addrs)) = args.split_last() else {
        bail!("missing CONTAINER")
    };
    let specs = addrs
        .iter()
        .map(|a| a.parse().map_err(anyhow::Error::from))
        .collect::<anyhow::Result<Vec<AddrSpec>>>()?;
    Ok((specs, target))
}

/// The overlay MTU: the running router's, else `WEAVE_MTU`, else the default.
pub(crate) async fn mtu(global: &Global) -> u32 {
    match weft_router::client::mtu(global.http_addr).await {
        Some(mtu) => mtu,
        None => std::env::var("WEAVE_MTU")
            .ok()
            .and_then(|m| m.parse().ok())
            .unwrap_or(DEFAULT_MTU),
    }
}

/// Space-separated addresses without prefix lengths, as Weave prints them.
pub(crate) fn show_addrs(cidrs: &[Ipv4Net]) -> String {
    cidrs
        .iter()
        .map(|c| c.addr().to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

pub(crate) fn attach(global: &Global, args: AttachArgs) -> anyhow::Result<ExitCode> {
    let (specs, target) = split(&args.args)?;
    let attached = runtime()?.block_on(attach_target(
        global,
        target,
        &specs,
        AttachOptions {
            rewrite_hosts: args.rewrite_hosts,
            add_hosts: &args.add_host,
            multicast_route: !args.no_multicast_route,
            register_dns: !args.without_dns,
        },
    ))?;
    println!("{}", show_addrs(&attached));
    Ok(ExitCode::SUCCESS)
}

/// What `attach` may do besides the interface.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttachOptions<'a> {
    /// Rewrite the container's /etc/hosts (Docker containers only).
    pub(crate) rewrite_hosts: bool,
    /// Extra hosts entries for the rewrite.
    pub(crate) add_hosts: &'a [String],
    /// Add the multicast route.
    pub(crate) multicast_route: bool,
    /// Register a Docker container's name in weaveDNS on its new addresses.
    pub(crate) register_dns: bool,
}

impl AttachOptions<'_> {
    /// Weave's defaults: /etc/hosts left alone, the multicast route added, the name in DNS.
    pub(crate) const PLAIN: Self = Self {
        rewrite_hosts: false,
        add_hosts: &[],
        multicast_route: true,
        register_dns: true,
    };
}

/// Attaches `target` with `specs`; returns the addresses it asked for.
pub(crate) async fn attach_target(
    global: &Global,
    target: &str,
    specs: &[AddrSpec],
    opts: AttachOptions<'_>,
) -> anyhow::Result<Vec<Ipv4Net>> {
    let t = target::resolve(global, target).await?;
    let ipam = Http {
        api: global.http_addr,
    };
    let mtu = mtu(global).await;
    let req = AttachRequest {
        multicast_route: opts.multicast_route,
        ..AttachRequest::ethwe(&t.netns, t.pid, specs, mtu, &t.ident, BRIDGE)
    };
    let container = t.container.clone();
    let attached = weft_router::attach::attach(&ipam, req, |addrs| {
        let Some(c) = container.as_ref().filter(|_| opts.rewrite_hosts) else {
            return;
        };
        let Some(path) = &c.hosts_path else {
            return;
        };
        let mut inspect = c.inspect.clone();
        if !opts.add_hosts.is_empty() {
            let mut extra: Vec<serde_json::Value> = inspect["HostConfig"]["ExtraHosts"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            extra.extend(opts.add_hosts.iter().map(|h| serde_json::json!(h)));
            inspect["HostConfig"]["ExtraHosts"] = serde_json::Value::Array(extra);
        }
        let text = weft_dockerapi::hosts::hosts_file(&inspect, addrs);
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("weft: rewriting {}: {e}", path.display());
        }
    })
    .await?;
    if opts.register_dns {
        let v4: Vec<std::net::Ipv4Addr> = attached.addrs.iter().map(|a| a.addr()).collect();
        crate::dns::register_attached(global, target, t.container.as_ref(), &v4).await;
    }
    Ok(attached.addrs)
}

pub(crate) fn detach(global: &Global, args: DetachArgs) -> anyhow::Result<ExitCode> {
    let (specs, target) = split(&args.args)?;
    let removed = runtime()?.block_on(async {
        let t = target::resolve(global, target).await?;
        let ipam = Http {
            api: global.http_addr,
        };
        let what = if specs.is_empty() {
            DetachWhat::All
        } else {
            DetachWhat::Specs {
                specs: &specs,
                default_subnet: default_subnet(global).await,
            }
        };
        let removed = weft_router::attach::detach(&ipam, &t.netns, &t.ident, what).await?;
        // And the container's names on those addresses.
        let v4: Vec<std::net::Ipv4Addr> = removed.iter().map(|a| a.addr()).collect();
        crate::dns::deregister_detached(global, target, t.container.as_ref(), &v4).await;
        anyhow::Ok(removed)
    })?;
    println!("{}", show_addrs(&removed));
    Ok(ExitCode::SUCCESS)
}

/// The router's default subnet (`GET /ipinfo/defaultsubnet`), if it says.
async fn default_subnet(global: &Global) -> Option<Ipv4Net> {
    let (code, body) = crate::http::get(global.http_addr, "/ipinfo/defaultsubnet", false)
        .await
        .ok()?;
    if !code.is_success() {
        return None;
    }
    body.trim().parse().ok()
}
