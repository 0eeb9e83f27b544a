//! The decisions of the CNI plugins, as pure functions: the IPAM identifier of an attachment,
//! the routes a container gets, the result ADD prints, what CHECK compares and what GC releases.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};

use crate::conf::Attachment;
use crate::error::{CniError, Code};
use crate::result::{CniResult, Dns, Interface, IpConfig, Route, mac_string};

/// The prefix of every IPAM identifier a CNI attachment holds addresses under.
pub const IDENT_PREFIX: &str = "cni:";

/// The IPAM identifier of attachment (`network`, `container_id`, `ifname`):
/// `cni:NETWORK:CONTAINER:IFNAME`. Distinct from Docker container ids (which the router prunes
/// when Docker no longer runs the container) and from other networks' attachments (which GC of
/// this network must not touch). All three parts are checked already (letters, digits, `_.-`).
pub fn ident(network: &str, container_id: &str, ifname: &str) -> String {
    format!("{IDENT_PREFIX}{network}:{container_id}:{ifname}")
}

/// The parts of an identifier made by [`ident`]: (network, container, interface).
pub fn parse_ident(ident: &str) -> Option<(&str, &str, &str)> {
    let rest = ident.strip_prefix(IDENT_PREFIX)?;
    let mut parts = rest.split(':');
    let (n, c, i) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || n.is_empty() || c.is_empty() || i.is_empty() {
        return None;
    }
    Some((n, c, i))
}

/// GC: the identifiers among `owned` that belong to `network` but to no attachment in
/// `valid`. Identifiers of other networks, and anything not made by [`ident`], are kept.
pub fn gc_releases<'a>(
    owned: impl IntoIterator<Item = &'a str>,
    network: &str,
    valid: &[Attachment],
) -> Vec<String> {
    owned
        .into_iter()
        .filter(|id| match parse_ident(id) {
            Some((n, c, i)) => {
                n == network && !valid.iter().any(|a| a.container_id == c && a.ifname == i)
            }
            None => false,
        })
        .map(str::to_owned)
        .collect()
}

/// One route to add in the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSpec {
    /// Destination.
    pub dst: Ipv4Net,
    /// Next hop (`None`: on-link).
    pub gw: Option<Ipv4Addr>,
}

fn v4(ip: IpAddr, what: &str) -> Result<Ipv4Addr, CniError> {
    match ip {
        IpAddr::V4(a) => Ok(a),
        IpAddr::V6(_) => Err(ipv6(what)),
    }
}

fn ipv6(what: &str) -> CniError {
    CniError::new(
        Code::UnsupportedField,
        format!("{what}: weft's network is IPv4 only"),
    )
}

/// The routes of an attachment with address `addr` (Weave's `setupRoutes`): with no routes
/// from IPAM, a default route through `gateway` (and, when the gateway is outside `addr`'s
/// subnet, an on-link route to it first); else each IPAM route, through its own next hop or
/// `gateway`. Without a gateway and without routes, none.
pub fn routes(
    addr: Ipv4Net,
    gateway: Option<Ipv4Addr>,
    ipam_routes: &[Route],
) -> Result<Vec<RouteSpec>, CniError> {
    let mut out = Vec::new();
    if ipam_routes.is_empty() {
        let Some(gw) = gateway else {
            return Ok(out);
        };
        if !addr.trunc().contains(&gw) {
            out.push(RouteSpec {
                dst: Ipv4Net::from(gw),
                gw: None,
            });
        }
        out.push(RouteSpec {
            dst: Ipv4Net::default(),
            gw: Some(gw),
        });
        return Ok(out);
    }
    for r in ipam_routes {
        let IpNet::V4(dst) = r.dst else {
            return Err(ipv6(&format!("route {}", r.dst)));
        };
        let gw = match r.gw {
            Some(g) => Some(v4(g, &format!("route {} via {g}", r.dst))?),
            None => gateway,
        };
        out.push(RouteSpec {
            dst: dst.trunc(),
            gw,
        });
    }
    Ok(out)
}

/// What ADD found and made, to turn into its result.
#[derive(Debug, Clone)]
pub struct Added<'a> {
    /// The container's interface.
    pub ifname: &'a str,
    /// Its MAC.
    pub mac: [u8; 6],
    /// Its MTU.
    pub mtu: u32,
    /// The namespace path (`CNI_NETNS`).
    pub sandbox: &'a str,
    /// Its addresses.
    pub addrs: &'a [Ipv4Net],
    /// The gateway.
    pub gateway: Option<Ipv4Addr>,
    /// The routes added.
    pub routes: &'a [RouteSpec],
    /// Resolver settings.
    pub dns: Dns,
}

/// The result of ADD.
pub fn add_result(a: &Added<'_>) -> CniResult {
    CniResult {
        interfaces: vec![Interface {
            name: a.ifname.to_owned(),
            mac: mac_string(a.mac),
            mtu: Some(a.mtu),
            sandbox: a.sandbox.to_owned(),
        }],
        ips: a
            .addrs
            .iter()
            .map(|n| IpConfig {
                address: IpNet::V4(*n),
                gateway: a.gateway.map(IpAddr::V4),
                interface: Some(0),
            })
            .collect(),
        routes: a
            .routes
            .iter()
            .map(|r| Route {
                dst: IpNet::V4(r.dst),
                gw: r.gw.map(IpAddr::V4),
            })
            .collect(),
        dns: a.dns.clone(),
    }
}

/// The resolver settings of a result: the configuration's `dns`, with weaveDNS's server and
/// domain added when it runs (`weave_dns`: its address and domain).
pub fn merge_dns(conf: &Dns, weave_dns: Option<(Ipv4Addr, &str)>) -> Dns {
    let mut dns = conf.clone();
    if let Some((addr, domain)) = weave_dns {
        let addr = addr.to_string();
        if !dns.nameservers.contains(&addr) {
            dns.nameservers.insert(0, addr);
        }
        let domain = domain.trim_end_matches('.').to_owned();
        if !domain.is_empty() && !dns.search.contains(&domain) {
            dns.search.insert(0, domain);
        }
    }
    dns
}

/// What CHECK found in the container (`None` from the driver when the interface is missing).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observed {
    /// The interface's MAC.
    pub mac: [u8; 6],
    /// Its IPv4 addresses.
    pub addrs: Vec<Ipv4Net>,
    /// IPv4 routes through it: (destination, next hop).
    pub routes: Vec<(Ipv4Net, Option<Ipv4Addr>)>,
}

fn check_failed(msg: String) -> CniError {
    CniError::new(Code::CheckFailed, msg)
}

/// CHECK: whether the container's interface `ifname` (as `observed`) is as `prev` says: the
/// interface with that name in this sandbox and its MAC, every address on it, every route.
/// `held`: the addresses weft's IPAM holds for the attachment (`None` when another IPAM
/// plugin gave them; that plugin checks its own).
pub fn check(
    prev: &CniResult,
    ifname: &str,
    sandbox: &str,
    observed: Option<&Observed>,
    held: Option<&[Ipv4Net]>,
) -> Result<(), CniError> {
    let Some(seen) = observed else {
        return Err(check_failed(format!(
            "interface {ifname} is missing in {sandbox}"
        )));
    };
    let index = prev
        .interfaces
        .iter()
        .position(|i| i.name == ifname && (i.sandbox.is_empty() || i.sandbox == sandbox))
        .ok_or_else(|| {
            check_failed(format!(
                "prevResult names no interface {ifname} in {sandbox}"
            ))
        })?;
    let want_mac = &prev.interfaces[index].mac;
    if !want_mac.is_empty() && !want_mac.eq_ignore_ascii_case(&mac_string(seen.mac)) {
        return Err(check_failed(format!(
            "interface {ifname} has MAC {}, prevResult says {want_mac}",
            mac_string(seen.mac)
        )));
    }
    for ip in &prev.ips {
        if ip.interface.is_some_and(|i| i != index) {
            continue;
        }
        let IpNet::V4(want) = ip.address else {
            return Err(ipv6(&format!("address {}", ip.address)));
        };
        if !seen.addrs.contains(&want) {
            return Err(check_failed(format!(
                "interface {ifname} lacks {want} (it has {})",
                list(&seen.addrs)
            )));
        }
        if let Some(held) = held {
            if !held.iter().any(|h| h.addr() == want.addr()) {
                return Err(check_failed(format!(
                    "weft's IPAM no longer holds {want} for this attachment"
                )));
            }
        }
    }
    for r in &prev.routes {
        let IpNet::V4(dst) = r.dst else {
            return Err(ipv6(&format!("route {}", r.dst)));
        };
        let found = seen.routes.iter().any(|(d, gw)| {
            *d == dst.trunc()
                && match r.gw {
                    Some(IpAddr::V4(g)) => *gw == Some(g),
                    _ => true,
                }
        });
        if !found {
            return Err(check_failed(format!(
                "route to {dst} is missing on {ifname}"
            )));
        }
    }
    Ok(())
}

fn list(addrs: &[Ipv4Net]) -> String {
    if addrs.is_empty() {
        return "none".to_owned();
    }
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn idents_round_trip() {
        let id = ident("weave", "abc123", "eth0");
        assert_eq!(id, "cni:weave:abc123:eth0");
        assert_eq!(parse_ident(&id), Some(("weave", "abc123", "eth0")));
        assert_eq!(parse_ident("weave:expose"), None);
        assert_eq!(parse_ident("cni:a:b"), None);
        assert_eq!(parse_ident("cni:a:b:c:d"), None);
        assert_eq!(parse_ident(&"ab".repeat(32)), None);
    }

    #[test]
    fn gc_keeps_valid_and_foreign() {
        let owned = [
            "cni:weave:c1:eth0",
            "cni:weave:c2:eth0",
            "cni:weave:c1:eth1",
            "cni:other:c9:eth0",
            "weave:expose",
            "0123456789abcdef",
        ];
        let valid = [Attachment {
            container_id: "c1".into(),
            ifname: "eth0".into(),
        }];
        assert_eq!(
            gc_releases(owned, "weave", &valid),
            ["cni:weave:c2:eth0", "cni:weave:c1:eth1"]
        );
        assert!(gc_releases(owned, "none", &[]).is_empty());
    }

    #[test]
    fn weaves_routes() {
        // The bridge in the container's subnet: just the default route.
        let r = routes(net("10.32.0.5/12"), Some("10.32.0.1".parse().unwrap()), &[]).unwrap();
        assert_eq!(
            r,
            [RouteSpec {
                dst: net("0.0.0.0/0"),
                gw: Some("10.32.0.1".parse().unwrap())
            }]
        );
        // A gateway outside the subnet gets an on-link route first.
        let r = routes(net("10.40.1.5/24"), Some("10.32.0.1".parse().unwrap()), &[]).unwrap();
        assert_eq!(r[0].dst, net("10.32.0.1/32"));
        assert_eq!(r[0].gw, None);
        assert_eq!(r[1].dst, net("0.0.0.0/0"));
        // IPAM routes win; their own next hop or the gateway.
        let ipam = [
            Route {
                dst: "10.50.0.0/16".parse().unwrap(),
                gw: None,
            },
            Route {
                dst: "10.60.0.9/16".parse().unwrap(),
                gw: Some("10.32.0.9".parse().unwrap()),
            },
        ];
        let r = routes(
            net("10.32.0.5/12"),
            Some("10.32.0.1".parse().unwrap()),
            &ipam,
        )
        .unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].gw, Some("10.32.0.1".parse().unwrap()));
        assert_eq!(r[1].dst, net("10.60.0.0/16"));
        assert_eq!(r[1].gw, Some("10.32.0.9".parse().unwrap()));
        assert!(routes(net("10.32.0.5/12"), None, &[]).unwrap().is_empty());
        let v6 = [Route {
            dst: "fd00::/8".parse().unwrap(),
            gw: None,
        }];
        assert_eq!(
            routes(net("10.32.0.5/12"), None, &v6).unwrap_err().code,
            Code::UnsupportedField
        );
    }

    #[test]
    fn check_compares_everything() {
        let addrs = [net("10.32.0.5/12")];
        let rs = routes(addrs[0], Some("10.32.0.1".parse().unwrap()), &[]).unwrap();
        let prev = add_result(&Added {
            ifname: "eth0",
            mac: [2, 1, 2, 3, 4, 5],
            mtu: 1376,
            sandbox: "/run/netns/p",
            addrs: &addrs,
            gateway: Some("10.32.0.1".parse().unwrap()),
            routes: &rs,
            dns: Dns::default(),
        });
        let good = Observed {
            mac: [2, 1, 2, 3, 4, 5],
            addrs: addrs.to_vec(),
            routes: vec![
                (net("10.32.0.0/12"), None),
                (net("0.0.0.0/0"), Some("10.32.0.1".parse().unwrap())),
            ],
        };
        check(&prev, "eth0", "/run/netns/p", Some(&good), Some(&addrs)).unwrap();
        check(&prev, "eth0", "/run/netns/p", Some(&good), None).unwrap();
        let fails = |o: Option<&Observed>, held: Option<&[Ipv4Net]>, ifname: &str| {
            let e = check(&prev, ifname, "/run/netns/p", o, held).unwrap_err();
            assert_eq!(e.code, Code::CheckFailed);
            e.msg
        };
        assert!(fails(None, None, "eth0").contains("missing"));
        assert!(fails(Some(&good), None, "eth1").contains("no interface"));
        let other_mac = Observed {
            mac: [2, 9, 9, 9, 9, 9],
            ..good.clone()
        };
        assert!(fails(Some(&other_mac), None, "eth0").contains("MAC"));
        let no_addr = Observed {
            addrs: vec![],
            ..good.clone()
        };
        assert!(fails(Some(&no_addr), None, "eth0").contains("lacks"));
        assert!(fails(Some(&good), Some(&[]), "eth0").contains("no longer holds"));
        let no_route = Observed {
            routes: vec![],
            ..good
        };
        assert!(fails(Some(&no_route), None, "eth0").contains("route"));
    }

    #[test]
    fn dns_merge() {
        let conf = Dns {
            search: vec!["corp.example".into()],
            ..Dns::default()
        };
        let d = merge_dns(&conf, Some(("172.17.0.1".parse().unwrap(), "weave.local.")));
        assert_eq!(d.nameservers, ["172.17.0.1"]);
        assert_eq!(d.search, ["weave.local", "corp.example"]);
        assert_eq!(merge_dns(&conf, None), conf);
    }
}
