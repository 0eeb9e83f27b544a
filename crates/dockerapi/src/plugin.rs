//! Docker's (legacy, libnetwork "remote") network plugin protocol, sans-IO: what Docker posts to
//! `/run/docker/plugins/weave.sock` and what the plugin answers, as Weave's plugin (`weave`
//! network driver and IPAM driver on one socket) spoke it.
//!
//! Every call is `POST /<Receiver>.<Method>` with a JSON body; the answer is JSON, `{}` for
//! "done" and `{"Err": "..."}` for a failure. [`parse`] turns a call into a [`Call`]; the
//! answer builders ([`activate`], [`join`], ...) make the bodies. Pools are named as Weave
//! named them (`weave-<subnet>-<range>`, see [`pool_id`]), so a pool carries what a later
//! address request needs; the pool's gateway is reported as the subnet's own address (Weave's
//! fake gateway: Docker then asks no gateway address and adds no default route for it).

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde_json::{Value, json};
use weft_wire::ethernet::Address;

/// The media type of every answer.
pub const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";
/// The network option that adds the multicast route (Weave's).
pub const MULTICAST_OPTION: &str = "works.weave.multicast";
/// The interface name prefix inside containers (Docker appends a number: `ethwe0`).
pub const DST_PREFIX: &str = "ethwe";
/// The IPAM driver's address spaces.
pub const LOCAL_SPACE: &str = "weavelocal";
/// The IPAM driver's global address space.
pub const GLOBAL_SPACE: &str = "weaveglobal";

/// A call from Docker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `Plugin.Activate`.
    Activate,
    /// `NetworkDriver.GetCapabilities`.
    NetCapabilities,
    /// `NetworkDriver.CreateNetwork`.
    CreateNetwork {
        /// The network's id.
        network_id: String,
        /// Whether the multicast route was asked for (`None`: the option was absent).
        multicast: Option<bool>,
    },
    /// `NetworkDriver.DeleteNetwork`.
    DeleteNetwork {
        /// The network's id.
        network_id: String,
    },
    /// `NetworkDriver.CreateEndpoint`.
    CreateEndpoint {
        /// The network.
        network_id: String,
        /// The endpoint.
        endpoint_id: String,
        /// The MAC Docker chose, if any.
        mac: Option<[u8; 6]>,
    },
    /// `NetworkDriver.DeleteEndpoint`.
    DeleteEndpoint {
        /// The endpoint.
        endpoint_id: String,
    },
    /// `NetworkDriver.EndpointOperInfo`.
    EndpointInfo,
    /// `NetworkDriver.Join`.
    Join {
        /// The network.
        network_id: String,
        /// The endpoint.
        endpoint_id: String,
    },
    /// `NetworkDriver.Leave`.
    Leave,
    /// Calls answered with `{}` (discovery, external connectivity, swarm allocation).
    Ignored,
    /// `IpamDriver.GetCapabilities`.
    IpamCapabilities,
    /// `IpamDriver.GetDefaultAddressSpaces`.
    AddressSpaces,
    /// `IpamDriver.RequestPool`.
    RequestPool {
        /// The pool asked for (`None`: weft's default subnet).
        pool: Option<Ipv4Net>,
        /// A sub-range to allocate from.
        sub_pool: Option<Ipv4Net>,
    },
    /// `IpamDriver.ReleasePool`.
    ReleasePool,
    /// `IpamDriver.RequestAddress`.
    RequestAddress {
        /// The pool.
        pool: Pool,
        /// A specific address asked for.
        address: Option<Ipv4Addr>,
    },
    /// `IpamDriver.ReleaseAddress`.
    ReleaseAddress {
        /// The pool.
        pool: Pool,
        /// The address.
        address: Ipv4Addr,
    },
}

/// A pool, as [`pool_id`] names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    /// The subnet containers' addresses are in.
    pub subnet: Ipv4Net,
    /// The range addresses are allocated from (the subnet, or a sub-pool).
    pub range: Ipv4Net,
}

impl Pool {
    /// Whether `addr` is the fake gateway this pool reported (the subnet's own address).
    pub fn is_fake_gateway(&self, addr: Ipv4Addr) -> bool {
        addr == self.subnet.network()
    }
}

/// The pool id of (`subnet`, `range`): `weave-<subnet>-<range>`.
pub fn pool_id(subnet: Ipv4Net, range: Ipv4Net) -> String {
    format!("weave-{}-{}", subnet.trunc(), range.trunc())
}

/// Parses a pool id made by [`pool_id`].
pub fn parse_pool_id(id: &str) -> Result<Pool, String> {
    let bad = || format!("unrecognised pool id {id:?}");
    let rest = id.strip_prefix("weave-").ok_or_else(bad)?;
    let (subnet, range) = rest.split_once('-').ok_or_else(bad)?;
    let subnet: Ipv4Net = subnet.parse().map_err(|_| bad())?;
    let range: Ipv4Net = range.parse().map_err(|_| bad())?;
    // pool_id writes networks without host bits; anything else was not made by it.
    if subnet != subnet.trunc() || range != range.trunc() {
        return Err(bad());
    }
    Ok(Pool { subnet, range })
}

/// The prefix of the IPAM identifiers of the plugin's addresses.
pub const IDENT_PREFIX: &str = "docker-plugin:";

/// The IPAM identifier of one address request (Docker names no container or endpoint when it
/// asks for an address): `docker-plugin:<nonce as hex>`. Not a Docker container id, so the
/// router's pruning of removed containers leaves it alone; released by address.
pub fn ident(nonce: u64) -> String {
    format!("{IDENT_PREFIX}{nonce:016x}")
}

/// The veth names of an endpoint: host end `vethwl<id[..9]>`, container end `vethwg<id[..9]>`
/// (Weave's; 15 characters at most).
pub fn veth_names(endpoint_id: &str) -> (String, String) {
    let short: String = endpoint_id.chars().take(9).collect();
    (format!("vethwl{short}"), format!("vethwg{short}"))
}

fn str_field<'a>(v: &'a Value, key: &str) -> Result<&'a str, String> {
    v[key]
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("{key} is missing"))
}

/// An endpoint or network id: hex (Docker's) or at least letters, digits, `_` and `-`.
fn id_field(v: &Value, key: &str) -> Result<String, String> {
    let s = str_field(v, key)?;
    if s.len() > 128
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(format!("{key} {s:?} is not an id"));
    }
    Ok(s.to_owned())
}

fn opt_net(v: &Value, key: &str) -> Result<Option<Ipv4Net>, String> {
    match v[key].as_str().filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => s
            .parse::<Ipv4Net>()
            .map(|n| Some(n.trunc()))
            .map_err(|_| format!("{key} {s:?} is not an IPv4 CIDR")),
    }
}

/// Parses a MAC written `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// The multicast option of a network's options: Docker passes `--opt` values under
/// `com.docker.network.generic` (from `CreateNetwork`), or flat (from `docker network
/// inspect`'s `Options`). An empty value means on (`--opt works.weave.multicast`).
pub fn multicast_option(options: &Value) -> Result<Option<bool>, String> {
    let generic = &options["com.docker.network.generic"];
    let v = if generic.is_object() {
        &generic[MULTICAST_OPTION]
    } else {
        &options[MULTICAST_OPTION]
    };
    match v {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(*b)),
        Value::String(s) if s.is_empty() => Ok(Some(true)),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "1" | "t" | "true" => Ok(Some(true)),
            "0" | "f" | "false" => Ok(Some(false)),
            _ => Err(format!(
                "unrecognised value {s:?} for option {MULTICAST_OPTION}"
            )),
        },
        _ => Err(format!("option {MULTICAST_OPTION} must be true or false")),
    }
}

/// Parses one call: the request path and its JSON body.
pub fn parse(path: &str, body: &[u8]) -> Result<Call, String> {
    let method = path.trim_start_matches('/');
    if method == "Plugin.Activate" {
        return Ok(Call::Activate);
    }
    let v: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Object(serde_json::Map::new())
    } else {
        serde_json::from_slice(body).map_err(|e| format!("{method}: the body is not JSON: {e}"))?
    };
    if !v.is_object() {
        return Err(format!("{method}: the body must be a JSON object"));
    }
    let call = match method {
        "NetworkDriver.GetCapabilities" => Call::NetCapabilities,
        "NetworkDriver.CreateNetwork" => Call::CreateNetwork {
            network_id: id_field(&v, "NetworkID")?,
            multicast: multicast_option(&v["Options"])?,
        },
        "NetworkDriver.DeleteNetwork" => Call::DeleteNetwork {
            network_id: id_field(&v, "NetworkID")?,
        },
        "NetworkDriver.CreateEndpoint" => Call::CreateEndpoint {
            network_id: id_field(&v, "NetworkID")?,
            endpoint_id: id_field(&v, "EndpointID")?,
            mac: match v["Interface"]["MacAddress"]
                .as_str()
                .filter(|s| !s.is_empty())
            {
                None => None,
                Some(s) => Some(parse_mac(s).ok_or_else(|| format!("MacAddress {s:?}"))?),
            },
        },
        "NetworkDriver.DeleteEndpoint" => Call::DeleteEndpoint {
            endpoint_id: id_field(&v, "EndpointID")?,
        },
        "NetworkDriver.EndpointOperInfo" => Call::EndpointInfo,
        "NetworkDriver.Join" => Call::Join {
            network_id: id_field(&v, "NetworkID")?,
            endpoint_id: id_field(&v, "EndpointID")?,
        },
        "NetworkDriver.Leave" => Call::Leave,
        "NetworkDriver.DiscoverNew"
        | "NetworkDriver.DiscoverDelete"
        | "NetworkDriver.ProgramExternalConnectivity"
        | "NetworkDriver.RevokeExternalConnectivity"
        | "NetworkDriver.AllocateNetwork"
        | "NetworkDriver.FreeNetwork"
        | "IpamDriver.DiscoverNew"
        | "IpamDriver.DiscoverDelete" => Call::Ignored,
        "IpamDriver.GetCapabilities" => Call::IpamCapabilities,
        "IpamDriver.GetDefaultAddressSpaces" => Call::AddressSpaces,
        "IpamDriver.RequestPool" => {
            if v["V6"].as_bool() == Some(true) {
                return Err("weft's network is IPv4 only (no IPv6 pools)".to_owned());
            }
            Call::RequestPool {
                pool: opt_net(&v, "Pool")?,
                sub_pool: opt_net(&v, "SubPool")?,
            }
        }
        "IpamDriver.ReleasePool" => Call::ReleasePool,
        "IpamDriver.RequestAddress" => Call::RequestAddress {
            pool: parse_pool_id(str_field(&v, "PoolID")?)?,
            address: match v["Address"].as_str().filter(|s| !s.is_empty()) {
                None => None,
                Some(s) => Some(
                    s.split('/')
                        .next()
                        .unwrap_or(s)
                        .parse()
                        .map_err(|_| format!("Address {s:?} is not an IPv4 address"))?,
                ),
            },
        },
        "IpamDriver.ReleaseAddress" => Call::ReleaseAddress {
            pool: parse_pool_id(str_field(&v, "PoolID")?)?,
            address: {
                let s = str_field(&v, "Address")?;
                s.split('/')
                    .next()
                    .unwrap_or(s)
                    .parse()
                    .map_err(|_| format!("Address {s:?} is not an IPv4 address"))?
            },
        },
        other => return Err(format!("unknown plugin call {other:?}")),
    };
    Ok(call)
}

/// `Plugin.Activate`'s answer.
pub fn activate() -> Value {
    json!({ "Implements": ["NetworkDriver", "IpamDriver"] })
}

/// `NetworkDriver.GetCapabilities`'s answer (a local-scope driver).
pub fn net_capabilities() -> Value {
    json!({ "Scope": "local", "ConnectivityScope": "local" })
}

/// `IpamDriver.GetCapabilities`'s answer.
pub fn ipam_capabilities() -> Value {
    json!({ "RequiresMACAddress": false, "RequiresRequestReplay": false })
}

/// `IpamDriver.GetDefaultAddressSpaces`'s answer.
pub fn address_spaces() -> Value {
    json!({ "LocalDefaultAddressSpace": LOCAL_SPACE, "GlobalDefaultAddressSpace": GLOBAL_SPACE })
}

/// `RequestPool`'s answer for (`subnet`, `range`), with Weave's fake gateway.
pub fn pool(subnet: Ipv4Net, range: Ipv4Net) -> Value {
    json!({
        "PoolID": pool_id(subnet, range),
        "Pool": subnet.trunc().to_string(),
        "Data": { "com.docker.network.gateway": subnet.trunc().to_string() },
    })
}

/// `RequestAddress`'s answer: the address with the pool's subnet prefix length.
pub fn address(addr: Ipv4Addr, pool: &Pool) -> Value {
    let cidr = Ipv4Net::new(addr, pool.subnet.prefix_len()).unwrap_or_else(|_| Ipv4Net::from(addr));
    json!({ "Address": cidr.to_string(), "Data": {} })
}

/// `CreateEndpoint`'s answer: the MAC, unless Docker chose it.
pub fn create_endpoint(mac: Option<[u8; 6]>) -> Value {
    match mac {
        Some(m) => json!({ "Interface": { "MacAddress": Address::from(m).to_string() } }),
        None => json!({}),
    }
}

/// `Join`'s answer: the interface to move in (`src_name`, renamed `ethwe<N>`), with the route
/// `224.0.0.0/4` on it when the network asks for multicast.
pub fn join(src_name: &str, multicast: bool) -> Value {
    let mut v = json!({
        "InterfaceName": { "SrcName": src_name, "DstPrefix": DST_PREFIX },
    });
    if multicast {
        // RouteType 1: connected (no next hop).
        v["StaticRoutes"] = json!([{ "Destination": "224.0.0.0/4", "RouteType": 1 }]);
    }
    v
}

/// `EndpointOperInfo`'s answer.
pub fn endpoint_info() -> Value {
    json!({ "Value": {} })
}

/// The answer for "done".
pub fn empty() -> Value {
    json!({})
}

/// A failure.
pub fn error(msg: &str) -> Value {
    json!({ "Err": msg })
}

/// The body of `POST /networks/create` for the network created at launch (Weave's default
/// network): driver and IPAM driver `weave`, multicast on.
pub fn default_network(name: &str, driver: &str) -> Value {
    json!({
        "Name": name,
        "CheckDuplicate": true,
        "Driver": driver,
        "IPAM": { "Driver": driver },
        "Options": { MULTICAST_OPTION: "true" },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn pool_ids_round_trip() {
        let id = pool_id(net("10.32.0.0/12"), net("10.32.4.0/24"));
        assert_eq!(id, "weave-10.32.0.0/12-10.32.4.0/24");
        let p = parse_pool_id(&id).unwrap();
        assert_eq!(p.subnet, net("10.32.0.0/12"));
        assert_eq!(p.range, net("10.32.4.0/24"));
        assert!(p.is_fake_gateway("10.32.0.0".parse().unwrap()));
        assert!(parse_pool_id("weavepool").is_err());
        assert!(parse_pool_id("weave-x-y").is_err());
        // Host bits set (found by the fuzzer): not an id pool_id makes.
        assert!(parse_pool_id("weave-10.32.0.0/12-9.32.4.0/14").is_err());
    }

    #[test]
    fn docker_calls() {
        assert_eq!(parse("/Plugin.Activate", b"").unwrap(), Call::Activate);
        let c = parse(
            "/NetworkDriver.CreateNetwork",
            br#"{"NetworkID":"abc","Options":{"com.docker.network.generic":{"works.weave.multicast":"true"}},"IPv4Data":[{"Pool":"10.32.0.0/12"}]}"#,
        )
        .unwrap();
        assert_eq!(
            c,
            Call::CreateNetwork {
                network_id: "abc".into(),
                multicast: Some(true)
            }
        );
        let c = parse(
            "/NetworkDriver.CreateEndpoint",
            br#"{"NetworkID":"n","EndpointID":"0123456789abcdef","Interface":{"Address":"10.32.0.2/12","MacAddress":""}}"#,
        )
        .unwrap();
        assert_eq!(
            c,
            Call::CreateEndpoint {
                network_id: "n".into(),
                endpoint_id: "0123456789abcdef".into(),
                mac: None
            }
        );
        let c = parse(
            "/IpamDriver.RequestAddress",
            br#"{"PoolID":"weave-10.32.0.0/12-10.32.0.0/12","Address":"","Options":{}}"#,
        )
        .unwrap();
        assert!(matches!(c, Call::RequestAddress { address: None, .. }));
        let c = parse(
            "/IpamDriver.ReleaseAddress",
            br#"{"PoolID":"weave-10.32.0.0/12-10.32.0.0/12","Address":"10.32.0.7"}"#,
        )
        .unwrap();
        assert!(
            matches!(c, Call::ReleaseAddress { address, .. } if address == Ipv4Addr::new(10, 32, 0, 7))
        );
        assert_eq!(
            parse(
                "/IpamDriver.RequestPool",
                br#"{"AddressSpace":"weavelocal","Pool":"","SubPool":"","V6":false}"#
            )
            .unwrap(),
            Call::RequestPool {
                pool: None,
                sub_pool: None
            }
        );
    }

    #[test]
    fn bad_calls_say_why() {
        for (path, body) in [
            ("/NetworkDriver.Bogus", &b"{}"[..]),
            ("/NetworkDriver.Join", b"{not json"),
            ("/NetworkDriver.Join", b"[1]"),
            ("/NetworkDriver.Join", br#"{"NetworkID":"n"}"#),
            (
                "/NetworkDriver.Join",
                br#"{"NetworkID":"n","EndpointID":"../x"}"#,
            ),
            ("/IpamDriver.RequestPool", br#"{"V6":true}"#),
            ("/IpamDriver.RequestPool", br#"{"Pool":"fd00::/64"}"#),
            (
                "/IpamDriver.RequestAddress",
                br#"{"PoolID":"weave-10.32.0.0/12-10.32.0.0/12","Address":"x"}"#,
            ),
            (
                "/NetworkDriver.CreateNetwork",
                br#"{"NetworkID":"n","Options":{"works.weave.multicast":"maybe"}}"#,
            ),
            (
                "/NetworkDriver.CreateEndpoint",
                br#"{"NetworkID":"n","EndpointID":"e","Interface":{"MacAddress":"zz"}}"#,
            ),
        ] {
            assert!(
                parse(path, body).is_err(),
                "{path} {}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn answers() {
        assert_eq!(activate()["Implements"][1], "IpamDriver");
        let p = pool(net("10.32.0.0/12"), net("10.32.0.0/12"));
        assert_eq!(p["Data"]["com.docker.network.gateway"], "10.32.0.0/12");
        let pool = parse_pool_id(p["PoolID"].as_str().unwrap()).unwrap();
        assert_eq!(
            address("10.32.0.5".parse().unwrap(), &pool)["Address"],
            "10.32.0.5/12"
        );
        let j = join("vethwg0123", true);
        assert_eq!(j["InterfaceName"]["DstPrefix"], "ethwe");
        assert_eq!(j["StaticRoutes"][0]["Destination"], "224.0.0.0/4");
        assert!(join("x", false).get("StaticRoutes").is_none());
        assert_eq!(
            create_endpoint(Some([2, 0, 0, 0, 0, 1]))["Interface"]["MacAddress"],
            "02:00:00:00:00:01"
        );
        assert_eq!(veth_names("0123456789abcdef").0, "vethwl012345678");
        assert_eq!(
            multicast_option(&json!({"works.weave.multicast": ""})),
            Ok(Some(true))
        );
        assert_eq!(multicast_option(&json!({})), Ok(None));
        assert_eq!(
            parse_mac("02:11:22:33:44:55"),
            Some([2, 0x11, 0x22, 0x33, 0x44, 0x55])
        );
        assert_eq!(parse_mac("02:11:22:33:44"), None);
    }
}
