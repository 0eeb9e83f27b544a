//! Layer: driver. First-run checks, made before anything on the host changes, each failing
//! with what was found and what to do (weave-reference.md §1.2 and the Weave script's checks):
//!
//! - privileged verbs need root or `CAP_NET_ADMIN`;
//! - a link named `weave` must be a bridge, and one weft did not make (another MAC, no TAP)
//!   must not have another MTU or addresses of its own;
//! - the default allocation range must not overlap a route of the host ("Default
//!   --ipalloc-range 10.32.0.0/12 overlaps with existing route on host"); an explicitly given
//!   range only warns, as in Weave.

use std::net::Ipv4Addr;

use anyhow::bail;
use ipnet::{IpNet, Ipv4Net};
use weft_router::config::{BRIDGE, DEFAULT_MTU, TAP};
use weft_sys::netlink::Netlink;

use crate::Global;
use crate::launch::RouterSpec;

/// Verbs that change the host's network or start and stop weft.
const PRIVILEGED: [&str; 16] = [
    "setup",
    "launch",
    "launch-router",
    "launch-proxy",
    "stop",
    "stop-router",
    "stop-proxy",
    "reset",
    "attach",
    "detach",
    "expose",
    "hide",
    "run",
    "start",
    "restart",
    "daemon",
];

/// `CAP_NET_ADMIN`'s bit in the capability sets.
const CAP_NET_ADMIN: u32 = 12;

/// Fails for a privileged verb unless this process is root or has `CAP_NET_ADMIN`.
pub(crate) fn require_root_for(verb: &str) -> anyhow::Result<()> {
    if !PRIVILEGED.contains(&verb) || privileged() {
        return Ok(());
    }
    bail!(
        "weave must be run as 'root': '{verb}' changes the host's network (it needs root or \
         the CAP_NET_ADMIN capability); nothing was changed"
    )
}

fn privileged() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .map(str::to_owned)
    };
    let euid_root = field("Uid:")
        .and_then(|u| u.split_whitespace().nth(1).map(|e| e == "0"))
        .unwrap_or(false);
    let net_admin = field("CapEff:")
        .and_then(|c| u64::from_str_radix(&c, 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_NET_ADMIN) != 0);
    euid_root || net_admin
}

/// The checks before the router starts (see the module documentation).
pub(crate) async fn before_router(global: &Global, spec: &RouterSpec) -> anyhow::Result<()> {
    check_bridge(global, spec).await?;
    if let Some(range) = spec.args.range()? {
        let routes = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
        let clashes = overlapping_routes(&routes, range, BRIDGE);
        if let Some((iface, net)) = clashes.first() {
            if spec.range_given {
                eprintln!(
                    "WARNING: Specified --ipalloc-range {range} overlaps with existing route on \
                     host ({net} dev {iface}).\nUnless this is deliberate, you must pick another \
                     range and set it on all hosts."
                );
            } else {
                bail!(
                    "Default --ipalloc-range {range} overlaps with existing route on host ({net} \
                     dev {iface}).\nYou must pick another range and set it on all hosts: launch \
                     with --ipalloc-range CIDR (or IPALLOC_RANGE=CIDR). Nothing was changed."
                );
            }
        }
    }
    Ok(())
}

/// Routes of `/proc/net/route` text that overlap `range`, other than the default route and
/// routes on `own` (the weave bridge itself): (interface, destination).
pub(crate) fn overlapping_routes(table: &str, range: Ipv4Net, own: &str) -> Vec<(String, Ipv4Net)> {
    let hex = |s: &str| {
        u32::from_str_radix(s, 16)
            .ok()
            .map(|v| Ipv4Addr::from(v.to_le_bytes()))
    };
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 8 || cols[0] == own {
                return None;
            }
            let (dest, mask) = (hex(cols[1])?, hex(cols[7])?);
            let prefix = u32::from(mask).leading_ones();
            if prefix == 0 {
                return None;
            }
            let net = Ipv4Net::new(dest, u8::try_from(prefix).ok()?).ok()?.trunc();
            (net.contains(&range.network()) || range.contains(&net.network()))
                .then(|| (cols[0].to_owned(), net))
        })
        .collect()
}

/// Our peer name as a MAC (the bridge weft makes has it): `--name`, else the stored one.
fn our_mac(global: &Global, spec: &RouterSpec) -> Option<[u8; 6]> {
    let text = spec.args.name.clone().or_else(|| {
        std::fs::read_to_string(global.state_dir.join("peer-name"))
            .ok()
            .map(|s| s.trim().to_owned())
    })?;
    text.parse::<weft_mesh::PeerName>().ok().map(|n| n.to_mac())
}

async fn check_bridge(global: &Global, spec: &RouterSpec) -> anyhow::Result<()> {
    let nl = Netlink::new()?;
    let Some(index) = nl.link_index(BRIDGE).await? else {
        return Ok(());
    };
    let Some(link) = nl.link(index).await? else {
        return Ok(());
    };
    if link.kind.as_deref() != Some("bridge") {
        bail!(
            "there is a network interface '{BRIDGE}' here that is not a bridge (it is a {}); \
             weft needs that name for its bridge: remove it ('ip link del {BRIDGE}') and launch \
             again. Nothing was changed.",
            link.kind.as_deref().unwrap_or("link of unknown kind")
        );
    }
    let has_tap = nl
        .links_with_master(index)
        .await?
        .iter()
        .any(|(_, name)| name == TAP);
    let ours = has_tap || (link.mac.is_some() && link.mac == our_mac(global, spec));
    if ours {
        return Ok(());
    }
    let exposed: Vec<Ipv4Net> =
        weft_router::expose::load(&weft_router::expose::exposed_file(&global.state_dir))
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.cidr)
            .collect();
    let foreign: Vec<String> = nl
        .addresses(index)
        .await?
        .into_iter()
        .filter_map(|a| match a {
            IpNet::V4(n) if !n.addr().is_link_local() && !exposed.contains(&n) => {
                Some(n.to_string())
            }
            _ => None,
        })
        .collect();
    let want_mtu = spec.args.mtu.unwrap_or(DEFAULT_MTU);
    let mtu = link.mtu.unwrap_or(want_mtu);
    if mtu != want_mtu || !foreign.is_empty() {
        let addrs = if foreign.is_empty() {
            "no addresses".to_owned()
        } else {
            format!("addresses {}", foreign.join(", "))
        };
        bail!(
            "there is a bridge '{BRIDGE}' here that weft did not make (MTU {mtu}, {addrs}; weft \
             wants MTU {want_mtu} and addresses only from 'weave expose'): remove it ('ip link \
             del {BRIDGE}') and launch again. Nothing was changed."
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
        eth0\t00000000\t010011AC\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
        eth0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n\
        ul0\t0000280A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n\
        weave\t0001200A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";

    #[test]
    fn routes_overlapping_the_range() {
        let range: Ipv4Net = "10.32.0.0/12".parse().unwrap();
        // 10.40.0.0/16 is inside 10.32.0.0/12; the default route and weave's own are ignored.
        assert_eq!(
            overlapping_routes(TABLE, range, "weave"),
            vec![("ul0".to_owned(), "10.40.0.0/16".parse().unwrap())]
        );
        let other: Ipv4Net = "10.96.0.0/12".parse().unwrap();
        assert!(overlapping_routes(TABLE, other, "weave").is_empty());
        // A route wider than the range overlaps too.
        let wide = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n\
                    eth1\t0000000A\t00000000\t0001\t0\t0\t0\t000000FF\n";
        assert_eq!(overlapping_routes(wide, range, "weave").len(), 1);
    }

    #[test]
    fn unprivileged_verbs_need_no_root() {
        assert!(require_root_for("status").is_ok());
        assert!(require_root_for("version").is_ok());
    }
}
