//! CNI results: what ADD prints, what an IPAM plugin answers, what CHECK and DEL get back as
//! `prevResult`. Parsed from any supported version (0.3.0 to 1.1.0: the same shape, IP entries
//! with or without `version`), written in the version the configuration asked for.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{Map, Value, json};
use weft_wire::ethernet::Address;

use crate::error::{CniError, Code};
use crate::version::Version;

/// An interface of a result.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Interface {
    /// Its name.
    pub name: String,
    /// Its MAC, `aa:bb:cc:dd:ee:ff` ("" if unknown).
    pub mac: String,
    /// Its MTU (written from 1.1.0 on).
    pub mtu: Option<u32>,
    /// The namespace path it is in ("" for the host's).
    pub sandbox: String,
}

/// An address of a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    /// The address with its prefix length.
    pub address: IpNet,
    /// The gateway, if any.
    pub gateway: Option<IpAddr>,
    /// Index into the interfaces, if given.
    pub interface: Option<usize>,
}

/// A route of a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination.
    pub dst: IpNet,
    /// Next hop (`None`: the default gateway, or on-link).
    pub gw: Option<IpAddr>,
}

/// Resolver settings of a result (or of a configuration's `dns`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dns {
    /// Name servers.
    pub nameservers: Vec<String>,
    /// Local domain.
    pub domain: String,
    /// Search domains.
    pub search: Vec<String>,
    /// Resolver options.
    pub options: Vec<String>,
}

impl Dns {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_empty()
            && self.search.is_empty()
            && self.options.is_empty()
    }

    /// Parses a `dns` object (a missing or `null` one is empty).
    pub fn parse(v: &Value) -> Result<Self, CniError> {
        if v.is_null() {
            return Ok(Self::default());
        }
        if !v.is_object() {
            return Err(decode("dns must be an object"));
        }
        Ok(Self {
            nameservers: strings(&v["nameservers"], "dns.nameservers")?,
            domain: opt_str(&v["domain"], "dns.domain")?
                .unwrap_or_default()
                .to_owned(),
            search: strings(&v["search"], "dns.search")?,
            options: strings(&v["options"], "dns.options")?,
        })
    }

    /// As JSON (empty fields left out).
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        if !self.nameservers.is_empty() {
            m.insert("nameservers".into(), json!(self.nameservers));
        }
        if !self.domain.is_empty() {
            m.insert("domain".into(), json!(self.domain));
        }
        if !self.search.is_empty() {
            m.insert("search".into(), json!(self.search));
        }
        if !self.options.is_empty() {
            m.insert("options".into(), json!(self.options));
        }
        Value::Object(m)
    }
}

/// A result.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CniResult {
    /// Interfaces.
    pub interfaces: Vec<Interface>,
    /// Addresses.
    pub ips: Vec<IpConfig>,
    /// Routes.
    pub routes: Vec<Route>,
    /// Resolver settings.
    pub dns: Dns,
}

fn decode(msg: impl Into<String>) -> CniError {
    CniError::new(Code::Decode, msg)
}

fn opt_str<'a>(v: &'a Value, what: &str) -> Result<Option<&'a str>, CniError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        _ => Err(decode(format!("{what} must be a string"))),
    }
}

fn strings(v: &Value, what: &str) -> Result<Vec<String>, CniError> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(a) => a
            .iter()
            .map(|s| {
                s.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| decode(format!("{what} must hold strings")))
            })
            .collect(),
        _ => Err(decode(format!("{what} must be a list of strings"))),
    }
}

fn list<'a>(v: &'a Value, what: &str) -> Result<&'a [Value], CniError> {
    match v {
        Value::Null => Ok(&[]),
        Value::Array(a) => Ok(a),
        _ => Err(decode(format!("{what} must be a list"))),
    }
}

/// Parses `a.b.c.d/len` (or an IPv6 CIDR).
pub fn parse_net(v: &Value, what: &str) -> Result<IpNet, CniError> {
    let s = opt_str(v, what)?.ok_or_else(|| decode(format!("{what} is missing")))?;
    s.parse().map_err(|_| {
        decode(format!(
            "{what} {s:?} is not an address with a prefix length"
        ))
    })
}

/// Parses an optional address.
pub fn parse_ip(v: &Value, what: &str) -> Result<Option<IpAddr>, CniError> {
    opt_str(v, what)?
        .map(|s| {
            s.parse()
                .map_err(|_| decode(format!("{what} {s:?} is not an IP address")))
        })
        .transpose()
}

/// Parses a list of routes (`[{"dst": CIDR, "gw": IP}]`).
pub fn parse_routes(v: &Value, what: &str) -> Result<Vec<Route>, CniError> {
    list(v, what)?
        .iter()
        .map(|r| {
            Ok(Route {
                dst: parse_net(&r["dst"], &format!("{what}[].dst"))?,
                gw: parse_ip(&r["gw"], &format!("{what}[].gw"))?,
            })
        })
        .collect()
}

impl CniResult {
    /// Parses a result of any supported version.
    pub fn parse(v: &Value) -> Result<Self, CniError> {
        if !v.is_object() {
            return Err(decode("a result must be a JSON object"));
        }
        let interfaces = list(&v["interfaces"], "interfaces")?
            .iter()
            .map(|i| {
                Ok(Interface {
                    name: opt_str(&i["name"], "interfaces[].name")?
                        .unwrap_or_default()
                        .to_owned(),
                    mac: opt_str(&i["mac"], "interfaces[].mac")?
                        .unwrap_or_default()
                        .to_owned(),
                    mtu: i["mtu"].as_u64().and_then(|m| u32::try_from(m).ok()),
                    sandbox: opt_str(&i["sandbox"], "interfaces[].sandbox")?
                        .unwrap_or_default()
                        .to_owned(),
                })
            })
            .collect::<Result<Vec<_>, CniError>>()?;
        let ips = list(&v["ips"], "ips")?
            .iter()
            .map(|ip| {
                let interface = match &ip["interface"] {
                    Value::Null => None,
                    n => Some(
                        n.as_u64()
                            .and_then(|n| usize::try_from(n).ok())
                            .filter(|n| *n < interfaces.len())
                            .ok_or_else(|| {
                                decode("ips[].interface must index one of the interfaces")
                            })?,
                    ),
                };
                Ok(IpConfig {
                    address: parse_net(&ip["address"], "ips[].address")?,
                    gateway: parse_ip(&ip["gateway"], "ips[].gateway")?,
                    interface,
                })
            })
            .collect::<Result<Vec<_>, CniError>>()?;
        Ok(Self {
            interfaces,
            ips,
            routes: parse_routes(&v["routes"], "routes")?,
            dns: Dns::parse(&v["dns"])?,
        })
    }

    /// As JSON in `version`.
    pub fn to_json(&self, version: Version) -> Value {
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut o = json!({ "name": i.name });
                if !i.mac.is_empty() {
                    o["mac"] = json!(i.mac);
                }
                if let (Some(mtu), true) = (i.mtu, version >= Version::V110) {
                    o["mtu"] = json!(mtu);
                }
                if !i.sandbox.is_empty() {
                    o["sandbox"] = json!(i.sandbox);
                }
                o
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut o = json!({ "address": ip.address.to_string() });
                if version.ip_has_version() {
                    o["version"] = json!(if ip.address.addr().is_ipv4() {
                        "4"
                    } else {
                        "6"
                    });
                }
                if let Some(g) = ip.gateway {
                    o["gateway"] = json!(g.to_string());
                }
                if let Some(i) = ip.interface {
                    o["interface"] = json!(i);
                }
                o
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| {
                let mut o = json!({ "dst": r.dst.to_string() });
                if let Some(g) = r.gw {
                    o["gw"] = json!(g.to_string());
                }
                o
            })
            .collect();
        let mut out = json!({ "cniVersion": version.as_str() });
        if !interfaces.is_empty() {
            out["interfaces"] = Value::Array(interfaces);
        }
        out["ips"] = Value::Array(ips);
        if !routes.is_empty() {
            out["routes"] = Value::Array(routes);
        }
        out["dns"] = self.dns.to_json();
        out
    }
}

/// Formats a MAC as CNI writes it.
pub fn mac_string(mac: [u8; 6]) -> String {
    Address::from(mac).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: "02:11:22:33:44:55".into(),
                mtu: Some(1376),
                sandbox: "/run/netns/p1".into(),
            }],
            ips: vec![IpConfig {
                address: "10.32.0.2/12".parse().unwrap(),
                gateway: Some("10.32.0.1".parse().unwrap()),
                interface: Some(0),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: None,
            }],
            dns: Dns {
                nameservers: vec!["172.17.0.1".into()],
                search: vec!["weave.local".into()],
                ..Dns::default()
            },
        }
    }

    #[test]
    fn written_per_version() {
        let r = sample();
        let v1 = r.to_json(Version::V100);
        assert_eq!(
            v1,
            json!({
                "cniVersion": "1.0.0",
                "interfaces": [{"name": "eth0", "mac": "02:11:22:33:44:55", "sandbox": "/run/netns/p1"}],
                "ips": [{"address": "10.32.0.2/12", "gateway": "10.32.0.1", "interface": 0}],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dns": {"nameservers": ["172.17.0.1"], "search": ["weave.local"]}
            })
        );
        let v04 = r.to_json(Version::V040);
        assert_eq!(v04["ips"][0]["version"], json!("4"));
        assert_eq!(
            r.to_json(Version::V110)["interfaces"][0]["mtu"],
            json!(1376)
        );
        // Round trip from every version.
        for v in [Version::V030, Version::V040, Version::V100, Version::V110] {
            let mut back = CniResult::parse(&r.to_json(v)).unwrap();
            if v < Version::V110 {
                back.interfaces[0].mtu = Some(1376);
            }
            assert_eq!(back, r, "{v:?}");
        }
    }

    #[test]
    fn host_local_answer() {
        // What Debian's host-local 1.1.1 prints for a 0.4.0 configuration.
        let text = r#"{"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.40.1.2/24","gateway":"10.40.1.1"}],"dns":{}}"#;
        let r = CniResult::parse(&serde_json::from_str(text).unwrap()).unwrap();
        assert_eq!(r.ips[0].address, "10.40.1.2/24".parse::<IpNet>().unwrap());
        assert_eq!(r.ips[0].interface, None);
        assert!(r.dns.is_empty());
    }

    #[test]
    fn bad_results_are_decode_errors() {
        for text in [
            "[]",
            r#"{"ips": {}}"#,
            r#"{"ips": [{"address": "10.0.0.1"}]}"#,
            r#"{"ips": [{"address": "10.0.0.1/8", "interface": 3}]}"#,
            r#"{"routes": [{"dst": 5}]}"#,
            r#"{"dns": {"nameservers": "x"}}"#,
        ] {
            let e = CniResult::parse(&serde_json::from_str(text).unwrap()).unwrap_err();
            assert_eq!(e.code, Code::Decode, "{text}");
        }
        assert_eq!(mac_string([2, 0, 0, 0, 0xab, 1]), "02:00:00:00:ab:01");
    }
}
