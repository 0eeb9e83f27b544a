//! The network configuration on stdin: Weave's `weave-net` fields, and what `weave-ipam`
//! reads of it.
//!
//! ```json
//! { "cniVersion": "1.0.0", "name": "weave", "type": "weave-net", "hairpinMode": true,
//!   "ipam": { "type": "weave-ipam", "subnet": "10.32.1.0/24" } }
//! ```
//!
//! `bridge` (default `weave`), `hairpinMode` (default true, as Weave), `mtu` (default: the
//! router's), `ipam` (type `weave-ipam` or none: weft's own IPAM, with optional `subnet`,
//! `gateway` and `routes`; any other type is run as a separate plugin), `dns` (merged with
//! weaveDNS's), `prevResult` (CHECK and DEL), `cni.dev/valid-attachments` (GC). Weave's
//! `isGateway` and `ipMasq` are refused, as Weave did. Unknown fields are ignored.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};
use serde_json::Value;

use crate::error::{CniError, Code};
use crate::result::{CniResult, Dns, Route, parse_ip, parse_routes};
use crate::version::Version;

/// weft's own IPAM plugin type.
pub const WEAVE_IPAM: &str = "weave-ipam";
/// The plugin type of weft's network plugin.
pub const WEAVE_NET: &str = "weave-net";
/// The bridge weft attaches to.
pub const DEFAULT_BRIDGE: &str = "weave";

/// Where addresses come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ipam {
    /// weft's IPAM (type `weave-ipam`, or no `ipam`).
    Weave {
        /// Allocate in this subnet (default: the router's default subnet).
        subnet: Option<Ipv4Net>,
        /// A gateway to put in the result.
        gateway: Option<IpAddr>,
        /// Routes to put in the result.
        routes: Vec<Route>,
    },
    /// Another plugin (`host-local`, `static`, ...), run from `CNI_PATH`.
    Delegate {
        /// Its type (the binary's name).
        plugin: String,
    },
}

/// One attachment the runtime still has (GC's `cni.dev/valid-attachments`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// Container id.
    pub container_id: String,
    /// Interface name.
    pub ifname: String,
}

/// A parsed configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConf {
    /// `cniVersion`.
    pub version: Version,
    /// `name`.
    pub name: String,
    /// `type`.
    pub plugin: String,
    /// `bridge`.
    pub bridge: String,
    /// `hairpinMode`.
    pub hairpin: bool,
    /// `isGateway` (refused by `weave-net`, see [`NetConf::check_weave_net`]).
    pub is_gateway: bool,
    /// `ipMasq` (refused by `weave-net`).
    pub ip_masq: bool,
    /// `mtu` (`None`: the router's).
    pub mtu: Option<u32>,
    /// `ipam`.
    pub ipam: Ipam,
    /// `dns`.
    pub dns: Dns,
    /// `prevResult`, parsed.
    pub prev_result: Option<CniResult>,
    /// `cni.dev/valid-attachments` (`None` when absent).
    pub valid_attachments: Option<Vec<Attachment>>,
}

fn invalid(msg: impl Into<String>) -> CniError {
    CniError::new(Code::InvalidConfig, msg)
}

fn decode(msg: impl Into<String>) -> CniError {
    CniError::new(Code::Decode, msg)
}

/// The `cniVersion` of a configuration, read leniently, so that an error about the rest of it
/// can be answered in the version the runtime speaks (the latest when even that is unreadable).
pub fn peek_version(bytes: &[u8]) -> &'static str {
    serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|v| v["cniVersion"].as_str().map(str::to_owned))
        .and_then(|s| Version::parse(&s).ok())
        .map_or(crate::version::LATEST, Version::as_str)
}

fn opt_bool(v: &Value, what: &str) -> Result<Option<bool>, CniError> {
    match v {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(*b)),
        _ => Err(decode(format!("{what} must be true or false"))),
    }
}

fn opt_str<'a>(v: &'a Value, what: &str) -> Result<Option<&'a str>, CniError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        _ => Err(decode(format!("{what} must be a string"))),
    }
}

/// Whether `name` is a network name the spec allows.
pub fn valid_name(name: &str) -> bool {
    crate::env::valid_container_id(name)
}

impl NetConf {
    /// Parses the configuration on stdin.
    pub fn parse(bytes: &[u8]) -> Result<Self, CniError> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| {
            decode("the network configuration is not valid JSON").with_details(e.to_string())
        })?;
        if !v.is_object() {
            return Err(decode("the network configuration must be a JSON object"));
        }
        let version = Version::parse(
            opt_str(&v["cniVersion"], "cniVersion")?
                .ok_or_else(|| invalid("cniVersion is missing"))?,
        )?;
        let name = opt_str(&v["name"], "name")?
            .ok_or_else(|| invalid("name is missing"))?
            .to_owned();
        if !valid_name(&name) {
            return Err(invalid(format!(
                "name {name:?}: a network name is letters, digits, '_', '.' and '-', starting \
                 with a letter or digit"
            )));
        }
        let plugin = opt_str(&v["type"], "type")?
            .ok_or_else(|| invalid("type is missing"))?
            .to_owned();
        let bridge = opt_str(&v["bridge"], "bridge")?
            .unwrap_or(DEFAULT_BRIDGE)
            .to_owned();
        let mtu = match &v["mtu"] {
            Value::Null => None,
            m => Some(
                m.as_u64()
                    .and_then(|m| u32::try_from(m).ok())
                    .filter(|m| (576..=65535).contains(m))
                    .ok_or_else(|| invalid("mtu must be a number from 576 to 65535"))?,
            ),
        };
        let prev_result = match &v["prevResult"] {
            Value::Null => None,
            p => Some(CniResult::parse(p).map_err(|e| {
                CniError::new(e.code, format!("prevResult: {}", e.msg)).with_details(e.details)
            })?),
        };
        Ok(Self {
            version,
            name,
            plugin,
            bridge,
            hairpin: opt_bool(&v["hairpinMode"], "hairpinMode")?.unwrap_or(true),
            is_gateway: opt_bool(&v["isGateway"], "isGateway")?.unwrap_or(false),
            ip_masq: opt_bool(&v["ipMasq"], "ipMasq")?.unwrap_or(false),
            mtu,
            ipam: parse_ipam(&v["ipam"])?,
            dns: Dns::parse(&v["dns"])?,
            prev_result,
            valid_attachments: parse_attachments(&v["cni.dev/valid-attachments"])?,
        })
    }
}

impl NetConf {
    /// What `weave-net` refuses, as Weave did: `isGateway` and `ipMasq` (they belong to the
    /// `bridge` plugin; `weave-ipam` under that plugin takes such configurations).
    pub fn check_weave_net(&self) -> Result<(), CniError> {
        if self.is_gateway {
            return Err(CniError::new(
                Code::UnsupportedField,
                "isGateway: weave-net does not make the bridge a gateway (it routes containers \
                 through the bridge's exposed address)",
            ));
        }
        if self.ip_masq {
            return Err(CniError::new(
                Code::UnsupportedField,
                "ipMasq: weave-net does not masquerade (use 'weave expose')",
            ));
        }
        Ok(())
    }
}

fn parse_ipam(v: &Value) -> Result<Ipam, CniError> {
    if v.is_null() {
        return Ok(Ipam::Weave {
            subnet: None,
            gateway: None,
            routes: Vec::new(),
        });
    }
    if !v.is_object() {
        return Err(decode("ipam must be an object"));
    }
    let kind = opt_str(&v["type"], "ipam.type")?.unwrap_or("");
    if !kind.is_empty() && kind != WEAVE_IPAM {
        if kind.contains('/') || kind.starts_with('.') {
            return Err(invalid(format!(
                "ipam.type {kind:?} must be a plugin name, not a path"
            )));
        }
        return Ok(Ipam::Delegate {
            plugin: kind.to_owned(),
        });
    }
    let subnet = match opt_str(&v["subnet"], "ipam.subnet")? {
        None | Some("") => None,
        Some(s) => Some(match s.parse::<IpNet>() {
            Ok(IpNet::V4(n)) => n.trunc(),
            Ok(IpNet::V6(_)) => {
                return Err(CniError::new(
                    Code::UnsupportedField,
                    format!("ipam.subnet {s}: weft's network is IPv4 only"),
                ));
            }
            Err(_) => return Err(invalid(format!("ipam.subnet {s:?} is not a CIDR"))),
        }),
    };
    Ok(Ipam::Weave {
        subnet,
        gateway: parse_ip(&v["gateway"], "ipam.gateway")?,
        routes: parse_routes(&v["routes"], "ipam.routes")?,
    })
}

fn parse_attachments(v: &Value) -> Result<Option<Vec<Attachment>>, CniError> {
    let list = match v {
        Value::Null => return Ok(None),
        Value::Array(a) => a,
        _ => return Err(decode("cni.dev/valid-attachments must be a list")),
    };
    list.iter()
        .map(|a| {
            let field = |k: &str| {
                opt_str(&a[k], &format!("cni.dev/valid-attachments[].{k}"))?
                    .map(str::to_owned)
                    .ok_or_else(|| decode(format!("cni.dev/valid-attachments[].{k} is missing")))
            };
            Ok(Attachment {
                container_id: field("containerID")?,
                ifname: field("ifname")?,
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weaves_conflist_entry() {
        let c = NetConf::parse(
            br#"{"cniVersion":"0.3.0","name":"weave","type":"weave-net","hairpinMode":true}"#,
        )
        .unwrap();
        assert_eq!(c.version, Version::V030);
        assert_eq!(c.bridge, "weave");
        assert!(c.hairpin);
        assert_eq!(
            c.ipam,
            Ipam::Weave {
                subnet: None,
                gateway: None,
                routes: vec![]
            }
        );
        assert_eq!(c.valid_attachments, None);
    }

    #[test]
    fn ipam_choices() {
        let c = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"w","type":"weave-net","hairpinMode":false,
                 "ipam":{"type":"weave-ipam","subnet":"10.32.1.7/24",
                         "routes":[{"dst":"10.40.0.0/16"}]}}"#,
        )
        .unwrap();
        assert!(!c.hairpin);
        let Ipam::Weave { subnet, routes, .. } = c.ipam else {
            panic!("weave ipam")
        };
        assert_eq!(subnet, Some("10.32.1.0/24".parse().unwrap()));
        assert_eq!(routes.len(), 1);
        let c = NetConf::parse(
            br#"{"cniVersion":"0.4.0","name":"w","type":"weave-net",
                 "ipam":{"type":"host-local","ranges":[[{"subnet":"10.40.1.0/24"}]]}}"#,
        )
        .unwrap();
        assert_eq!(
            c.ipam,
            Ipam::Delegate {
                plugin: "host-local".into()
            }
        );
    }

    #[test]
    fn refusals() {
        let cases: [(&[u8], Code); 9] = [
            (b"{not json", Code::Decode),
            (b"[1]", Code::Decode),
            (
                br#"{"cniVersion":"0.2.0","name":"w","type":"weave-net"}"#,
                Code::IncompatibleVersion,
            ),
            (br#"{"name":"w","type":"weave-net"}"#, Code::InvalidConfig),
            (
                br#"{"cniVersion":"1.0.0","name":"w","type":"weave-net","isGateway":true}"#,
                Code::UnsupportedField,
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"w","type":"weave-net","mtu":20}"#,
                Code::InvalidConfig,
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"w","type":"weave-net","ipam":{"type":"../x"}}"#,
                Code::InvalidConfig,
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"w","type":"weave-net","ipam":{"subnet":"fd00::/64"}}"#,
                Code::UnsupportedField,
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"w","type":"weave-net","prevResult":{"ips":5}}"#,
                Code::Decode,
            ),
        ];
        for (text, code) in cases {
            let e = NetConf::parse(text)
                .and_then(|c| c.check_weave_net())
                .unwrap_err();
            assert_eq!(e.code, code, "{}: {e}", String::from_utf8_lossy(text));
        }
        assert_eq!(peek_version(b"{bad"), "1.0.0");
        assert_eq!(peek_version(br#"{"cniVersion":"0.4.0","x":}"#), "1.0.0");
        assert_eq!(peek_version(br#"{"cniVersion":"0.4.0"}"#), "0.4.0");
    }

    #[test]
    fn gc_attachments() {
        let c = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"w","type":"weave-net",
                 "cni.dev/valid-attachments":[{"containerID":"a1","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(
            c.valid_attachments,
            Some(vec![Attachment {
                container_id: "a1".into(),
                ifname: "eth0".into()
            }])
        );
    }
}
