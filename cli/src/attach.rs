//! Layer: driver. `weft attach CIDR... TARGET` and `weft detach [CIDR...] TARGET`: give a
//! container (a network namespace, named or by pid) an `ethwe` interface on the bridge.

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use ipnet::Ipv4Net;
use weft_router::config::{BRIDGE, DEFAULT_MTU};
use weft_sys::netns::NetNs;

use crate::{Global, http, runtime};

/// Arguments of `weft attach`.
#[derive(Debug, Args)]
pub(crate) struct AttachArgs {
    /// Addresses with prefix length (e.g. 10.32.0.5/12), then the target: a network
    /// namespace name (/run/netns/NAME) or a process id.
    #[arg(required = true, num_args = 2..)]
    args: Vec<String>,
}

/// Arguments of `weft detach`.
#[derive(Debug, Args)]
pub(crate) struct DetachArgs {
    /// Addresses to remove (all when none), then the target.
    #[arg(required = true, num_args = 1..)]
    args: Vec<String>,
}

fn split(args: &[String]) -> anyhow::Result<(Vec<Ipv4Net>, &str)> {
    let Some((target, addrs)) = args.split_last() else {
        bail!("missing TARGET")
    };
    let addrs = addrs
        .iter()
        .map(|a| {
            let a = a.strip_prefix("ip:").unwrap_or(a);
            a.parse::<Ipv4Net>().with_context(|| {
                format!("'{a}' is not an IPv4 address with a prefix length (like 10.32.0.5/12)")
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((addrs, target))
}

/// The overlay MTU: the running router's, else `WEAVE_MTU`, else the default.
async fn mtu(global: &Global) -> u32 {
    if let Ok((code, body)) = http::get(global.http_addr, "/status", true).await {
        if code.is_success() {
            if let Some(mtu) = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["mtu"].as_u64())
                .and_then(|m| u32::try_from(m).ok())
            {
                return mtu;
            }
        }
    }
    std::env::var("WEAVE_MTU")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(DEFAULT_MTU)
}

pub(crate) fn attach(global: &Global, args: AttachArgs) -> anyhow::Result<ExitCode> {
    let (addrs, target) = split(&args.args)?;
    if addrs.is_empty() {
        bail!(
            "weft attach needs at least one address (IPAM allocation comes with a later release)"
        );
    }
    let ns = NetNs::from_target(target)
        .with_context(|| format!("no container or namespace '{target}'"))?;
    let id_hint = target.parse::<u32>().ok();
    let attached = runtime()?.block_on(async {
        let nl = weft_sys::netlink::Netlink::new()?;
        if nl.link_index(BRIDGE).await?.is_none() {
            bail!("there is no bridge '{BRIDGE}' here; run 'weft launch' first");
        }
        let mtu = mtu(global).await;
        Ok(weft_sys::plumb::attach(BRIDGE, &ns, id_hint, &addrs, mtu).await?)
    })?;
    let ips: Vec<String> = attached
        .addrs
        .iter()
        .map(|a| a.addr().to_string())
        .collect();
    println!("{}", ips.join(" "));
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn detach(_global: &Global, args: DetachArgs) -> anyhow::Result<ExitCode> {
    let (addrs, target) = split(&args.args)?;
    let ns = NetNs::from_target(target)
        .with_context(|| format!("no container or namespace '{target}'"))?;
    runtime()?.block_on(async {
        let which = if addrs.is_empty() {
            None
        } else {
            Some(addrs.as_slice())
        };
        weft_sys::plumb::detach(&ns, which).await
    })?;
    Ok(ExitCode::SUCCESS)
}
