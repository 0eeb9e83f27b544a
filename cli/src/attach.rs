//! Layer: driver. `weft attach [ADDR...] TARGET` and `weft detach [ADDR...] TARGET`: give a
//! container (a network namespace, named or by pid) an `ethwe` interface on the bridge.
//!
//! ADDR is Weave's: `net:default` (the default when none is given), `net:CIDR` (allocate in
//! that subnet), `ip:CIDR` or a bare `CIDR` (claim that address). Allocations and claims go
//! through the router's IPAM (`/ip`) under the target as identifier; an address outside the
//! allocation range is used as given.

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use hyper::Method;
use ipnet::Ipv4Net;
use weft_router::config::{BRIDGE, DEFAULT_MTU};
use weft_sys::netns::NetNs;

pub(crate) use weft_router::client::{AddrSpec, acquire};

use crate::{Global, http, runtime};

/// Arguments of `weft attach`.
#[derive(Debug, Args)]
pub(crate) struct AttachArgs {
    /// Addresses (net:default, net:CIDR, ip:CIDR, CIDR; default net:default), then the target:
    /// a network namespace name (/run/netns/NAME) or a process id.
    #[arg(required = true, num_args = 1..)]
    args: Vec<String>,
}

/// Arguments of `weft detach`.
#[derive(Debug, Args)]
pub(crate) struct DetachArgs {
    /// Addresses to remove (all when none), then the target.
    #[arg(required = true, num_args = 1..)]
    args: Vec<String>,
}

/// Split the arguments into address specs and the target.
pub(crate) fn split(args: &[String]) -> anyhow::Result<(Vec<AddrSpec>, &str)> {
    let Some((target, addrs)) = args.split_last() else {
        bail!("missing TARGET")
    };
    let specs = addrs
        .iter()
        .map(|a| a.parse().map_err(anyhow::Error::from))
        .collect::<anyhow::Result<Vec<AddrSpec>>>()?;
    Ok((specs, target))
}

/// The router's IPAM identifier for a target.
fn ident(target: &str) -> String {
    target
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.:-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The overlay MTU: the running router's, else `WEAVE_MTU`, else the default.
async fn mtu(global: &Global) -> u32 {
    match weft_router::client::mtu(global.http_addr).await {
        Some(mtu) => mtu,
        None => std::env::var("WEAVE_MTU")
            .ok()
            .and_then(|m| m.parse().ok())
            .unwrap_or(DEFAULT_MTU),
    }
}

pub(crate) fn attach(global: &Global, args: AttachArgs) -> anyhow::Result<ExitCode> {
    let (mut specs, target) = split(&args.args)?;
    if specs.is_empty() {
        specs.push(AddrSpec::DefaultSubnet);
    }
    let ns = NetNs::from_target(target)
        .with_context(|| format!("no container or namespace '{target}'"))?;
    let id_hint = target.parse::<u32>().ok();
    let id = ident(target);
    let attached = runtime()?.block_on(async {
        let nl = weft_sys::netlink::Netlink::new()?;
        if nl.link_index(BRIDGE).await?.is_none() {
            bail!("there is no bridge '{BRIDGE}' here; run 'weft launch' first");
        }
        let addrs = acquire(global.http_addr, &id, &specs).await?;
        let mtu = mtu(global).await;
        match weft_sys::plumb::attach(BRIDGE, &ns, id_hint, &addrs, mtu).await {
            Ok(a) => Ok(a),
            Err(e) => {
                for a in &addrs {
                    let path = format!("/ip/{id}/{}", a.addr());
                    let _ = http::request(global.http_addr, Method::DELETE, &path, false).await;
                }
                Err(e.into())
            }
        }
    })?;
    let ips: Vec<String> = attached
        .addrs
        .iter()
        .map(|a| a.addr().to_string())
        .collect();
    println!("{}", ips.join(" "));
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn detach(global: &Global, args: DetachArgs) -> anyhow::Result<ExitCode> {
    let (specs, target) = split(&args.args)?;
    let addrs: Vec<Ipv4Net> = specs
        .iter()
        .map(|s| match s {
            AddrSpec::Address(a) => Ok(*a),
            _ => bail!("weft detach takes addresses (ip:CIDR or CIDR), not subnets"),
        })
        .collect::<anyhow::Result<_>>()?;
    let ns = NetNs::from_target(target)
        .with_context(|| format!("no container or namespace '{target}'"))?;
    let id = ident(target);
    runtime()?.block_on(async {
        let which = if addrs.is_empty() {
            None
        } else {
            Some(addrs.as_slice())
        };
        weft_sys::plumb::detach(&ns, which).await?;
        // Release them in IPAM too (nothing to do if the router is not running).
        let _ = weft_router::client::release(global.http_addr, &id, &addrs).await;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
