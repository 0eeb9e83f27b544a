//! Layer: driver (pure functions). Weave's report and status outputs, built from a
//! [`StatusReport`], so scripts written for Weave read weft unchanged.
//!
//! - [`WeaveStatus`] is `GET /report`'s JSON, field for field the structs Weave serialises
//!   (`prog/weaver/http.go` `WeaveStatus`, mesh's `Status`, `ipam.Status`, `nameserver.Status`,
//!   `proxy.Status`). Fields are named exactly as Go names them, hence the non-snake-case
//!   fields. weft fills what it has; it leaves out `Router.Interface`, `Router.CaptureStats` and
//!   `Router.MACs` (pcap and MAC-cache internals of Weave's router) and `Plugin` (weft has no
//!   Docker network plugin). Empty lists are `[]` where Go would write `null`.
//! - [`execute`] runs a Go template (`weave report -f`, `/report?format=`) over it.
//! - The `render_*` functions print `weave status [peers|connections|targets|ipam|dns]` as
//!   Weave's templates do, character for character (trailing spaces included). A connection's
//!   data path is `sleeve` (Weave's word for its userspace encapsulation, which weft's data
//!   plane is) or `fastdp` (a kernel path).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use weft_gotmpl::{Funcs, Template, Value};

use crate::state::StatusReport;

/// `GET /report` (Weave's `WeaveStatus`).
#[allow(non_snake_case)]
#[derive(Debug, Clone, Serialize)]
pub struct WeaveStatus {
    /// Every component started.
    pub Ready: bool,
    /// weft's version.
    pub Version: String,
    /// The update check (weft never checks).
    pub VersionCheck: VersionCheck,
    /// The router.
    pub Router: RouterStatus,
    /// IPAM, unless disabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub IPAM: Option<IpamStatus>,
    /// weaveDNS, when it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub DNS: Option<DnsStatus>,
    /// The Docker API proxy, when it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub Proxy: Option<ProxyStatus>,
}

/// Weave's `VersionCheck`.
#[allow(non_snake_case)]
#[derive(Debug, Clone, Serialize)]
pub struct VersionCheck {
    /// Checking for updates is on (never, for weft).
    pub Enabled: bool,
    /// The last check worked.
    pub Success: bool,
    /// A newer version found.
    pub NewVersion: String,
    /// When the next check is due (Go's zero time).
    pub NextCheckAt: String,
}

/// Weave's `NetworkRouterStatus` (mesh's `Status`).
#[allow(non_snake_case)]
#[derive(Debug, Clone, Serialize)]
pub struct RouterStatus {
    /// `weft`.
    pub Protocol: String,
    /// Lowest protocol version spoken.
    pub ProtocolMinVersion: u32,
    /// Highest protocol version spoken.
    pub ProtocolMaxVersion: u32,
    /// A password is set.
    pub Encryption: bool,
    /// Peers learned from gossip are dialled.
    pub PeerDiscovery: bool,
    /// Peer name.
    pub Name: String,
    /// Nickname.
    pub NickName: String,
    /// TCP control port.
    pub Port: u16,
    /// Every peer known.
    pub Peers: Vec<PeerStatus>,
    /// First hop to each reachable peer.
    pub UnicastRoutes: Vec<UnicastRoute>,
    /// Where each peer's broadcasts are passed on.
    pub BroadcastRoutes: Vec<BroadcastRoute>,
    /// Connections and targets being dialled.
    pub Connections: Vec<LocalConnectionStatus>,
    /// Connections that ended.
    pub TerminationCount: u64,
    /// Direct targets (`launch` peers, `connect`).
    pub Targets: Vec<String>,
    /// Per overlay diagnostics (`{"sleeve": null}`: the userspace path has none).
    pub OverlayDiagnostics: BTreeMap<String, Option<()>>,
    /// `--trusted-subnets`.
    pub TrustedSubnets: Vec<String>,
    /// weft's own: what the kernel offers the data plane and what it uses.
    pub KernelFeatures: Vec<KernelFeature>,
    /// weft's own: the kernel fast path's UDP port (0: `--no-fastdp`).
    pub FastdpPort: u16,
    /// weft's own: threads of the userspace data path.
    #[serde(default)]
    pub DatapathThreads: usize,
    /// weft's own: the userspace data path has an express lane for sparse flows.
    #[serde(default)]
    pub ExpressLane: bool,
}

/// weft's own: one kernel feature (see [`crate::features`]).
#[allow(non_snake_case)]
#[derive(Debug, Clone, Serialize)]
pub struct KernelFeature {
    /// `tap-vnet-hdr`, `tso`, `udp-gso`, `udp-gro`, `vxlan-external`, `ebpf`.
    pub Name: String,
    /// The kernel offers it (`null`: could not tell).
    pub Available: Option<bool>,
    /// The data plane uses it.
    pub Used: bool,
    /// Why not, when not used.
    pub Note: String,
}

/// mesh's `PeerStatus`.
#[allow(non_snake_case)]
#[derive(Debug, Clone, Serialize)]
pub struct PeerStatus {
    /// Peer name.
    pub Name: String,
    /// Nickname.
    pub NickName: String,
    /// Process UID.
    pub UID: u64,
    /// Short id.
    pub ShortID: u16,
    /// Version of its topology record.
    pub Version: u64,
    /// Its connections, as it reports them.
    pub Connections: Vec<PeerConnectionStatus>,
}

/// mesh's `connectionStatus`.
#[allow(non_snake_case)]
#[derive(Debug, Clone, Serialize)]
pub struct PeerConnectionStatus {
    /// Remote peer.
    pub Name: String,
    /// Remote nickname.
    pub NickName: String,
    /// Remote address.
    pub Address: String,
    /// Dialled by the reporting peer.
    pub Outbound: bool,
    /// The data path works both ways.
    pub Established: bool,
}

/// mesh's `unicastRouteStatus`.
#[allow(non_snake_case)]
#[derive(Debug, Clone, Serialize)]
pub struct UnicastRoute {
    /// Destination.
    pub Dest: String,
    /// First hop.
    pub Via: String,
}

/// mesh's `broadcastRouteStatus`.
#[allow(non_snake_case)]
#[derive(Debug, Clone, Serialize)]
pub struct BroadcastRoute {
    /// Originating peer.
    pub Source: String,
    /// Neighbours passed to.
    pub Via: Vec<String>,
}

/// mesh's `LocalConnectionStatus`.
#[allow(non_snake_case)]
#[derive(Debug, Clone, Serialize)]
pub struct LocalConnectionStatus {
    /// Remote TCP address.
    pub Address: String,
    /// We dialled it.
    pub Outbound: bool,
    /// `established`, `pending`, `retrying`, `failed` or `connecting`.
    pub State: String,
    /// Data path and peer, or why it failed.
    pub Info: String,
    /// `name` (`sleeve`/`fastdp`), `mtu`, `encrypted`; `null` for a target not connected.
    pub Attrs: Option<BTreeMap<String, serde_json::Value>>,
}

/// Weave's `ipam.Status`.
#[allow(non_snake_case)]
#[derive(Debug, Clone, Serialize)]
pub struct IpamStatus {
    /// Consensus on the first ring, while it runs.
    pub Paxos: Option<PaxosStatus>,
    /// The allocation range.
    pub Range: String,
    /// Addresses in it.
    pub RangeNumIPs: u64,
    /// Addresses allocated here.
    pub ActiveIPs: usize,
    /// The default subnet.
    pub DefaultSubnet: String,
    /// The ring's ranges.
    pub Entries: Vec<EntryStatus>,
    /// Claims waiting.
    pub PendingClaims: Vec<ClaimStatus>,
    /// Allocations waiting (`IDENT SUBNET`).
    pub PendingAllocates: Vec<String>,
}

/// Weave's `paxos.Status`.
#[allow(non_snake_case)]
#[derive(Debug, Clone, Serialize)]
pub struct PaxosStatus {
    /// This peer votes.
    pub Elector: bool,
    /// Electors heard from.
    pub KnownNodes: usize,
    /// Votes needed.
    pub Quorum: usize,
}

/// Weave's `ipam.EntryStatus`.
#[allow(non_snake_case)]
#[derive(Debug, Clone, Serialize)]
pub struct EntryStatus {
    /// First address.
    pub Token: String,
    /// Addresses.
    pub Size: u64,
    /// Owner.
    pub Peer: String,
    /// Owner's nickname.
    pub Nickname: String,
    /// The owner is known (ourselves or reachable).
    pub IsKnownPeer: bool,
    /// Version.
    pub Version: u32,
}

/// Weave's `ipam.ClaimStatus`.
#[allow(non_snake_case)]
#[derive(Debug, Clone, Serialize)]
pub struct ClaimStatus {
    /// Container.
    pub Ident: String,
    /// The address claimed.
    pub CIDR: Cidr,
}

/// Weave's `address.CIDR`.
#[allow(non_snake_case)]
#[derive(Debug, Clone, Serialize)]
pub struct Cidr {
    /// Address.
    pub Addr: String,
    /// Prefix length.
    pub PrefixLen: u8,
}

/// Weave's `nameserver.Status`.
#[allow(non_snake_case)]
#[derive(Debug, Clone, Serialize)]
pub struct DnsStatus {
    /// Domain.
    pub Domain: String,
    /// Upstream servers.
    pub Upstream: Vec<String>,
    /// Listening address.
    pub Address: String,
    /// TTL.
    pub TTL: u32,
    /// Records.
    pub Entries: Vec<DnsEntryStatus>,
}

/// Weave's `nameserver.EntryStatus`.
#[allow(non_snake_case)]
#[derive(Debug, Clone, Serialize)]
pub struct DnsEntryStatus {
    /// Host name.
    pub Hostname: String,
    /// Peer that added it.
    pub Origin: String,
    /// Container.
    pub ContainerID: String,
    /// Address.
    pub Address: String,
    /// Version.
    pub Version: u64,
    /// Deletion time (0: live).
    pub Tombstone: u64,
}

/// Weave's `proxy.Status`.
#[allow(non_snake_case)]
#[derive(Debug, Clone, Serialize)]
pub struct ProxyStatus {
    /// Listening addresses (`unix:///var/run/weave/weave.sock`).
    pub Addresses: Vec<String>,
}

/// A connection or target as Weave's connection maker reports it.
fn connection_status(
    r: &StatusReport,
    c: &crate::state::ConnectionReport,
) -> LocalConnectionStatus {
    let state = crate::api::state_name(c.state).to_owned();
    let live = !c.overlay.is_empty();
    let (info, attrs) = if live {
        let encrypted = c.encrypted == Some(true);
        let mut info = format!("{:<6} {}({})", c.overlay, c.name, c.nickname);
        if r.encryption {
            let word = if encrypted {
                "encrypted"
            } else {
                "unencrypted"
            };
            info = format!("{word:<11} {info}");
        }
        if !c.info.is_empty() {
            let _ = write!(info, " {}", c.info);
        }
        let mut attrs = BTreeMap::new();
        attrs.insert(
            "name".to_owned(),
            serde_json::Value::from(c.overlay.clone()),
        );
        // Like Weave's sleeve: the MTU this connection carries, as probing found it.
        let mtu = c.path_mtu.map_or(r.mtu, |p| r.mtu.min(u32::from(p)));
        attrs.insert("mtu".to_owned(), serde_json::Value::from(mtu));
        if encrypted {
            attrs.insert("encrypted".to_owned(), serde_json::Value::from(true));
        }
        (info, Some(attrs))
    } else {
        let mut info = c.info.clone();
        // A target not reachable directly may still be reached through other peers.
        if c.path.starts_with("via") || c.path == "unreachable" {
            if !info.is_empty() {
                info.push(' ');
            }
            let _ = write!(info, "[{}]", c.path);
        }
        (info, None)
    };
    LocalConnectionStatus {
        Address: c.address.clone(),
        Outbound: c.outbound,
        State: state,
        Info: info,
        Attrs: attrs,
    }
}

/// A target as Weave shows it: as given, which for weft's resolved addresses means without
/// the port when it is the control port.
fn target_text(t: &str, port: u16) -> String {
    match t.parse::<std::net::SocketAddr>() {
        Ok(a) if a.port() == port => a.ip().to_string(),
        _ => t.to_owned(),
    }
}

/// Weave's report from weft's. Peers are listed ourselves first (Weave's order is a Go map's).
pub fn weave_status(r: &StatusReport) -> WeaveStatus {
    let mut peers: Vec<&crate::state::PeerReport> = r.peers.iter().collect();
    peers.sort_by_key(|p| p.name != r.name);
    let peers = peers
        .into_iter()
        .map(|p| PeerStatus {
            Name: p.name.clone(),
            NickName: p.nickname.clone(),
            UID: p.uid,
            ShortID: p.short_id,
            Version: p.version,
            Connections: p
                .connections
                .iter()
                .map(|c| PeerConnectionStatus {
                    Name: c.name.clone(),
                    NickName: c.nickname.clone(),
                    Address: c.address.clone(),
                    Outbound: c.outbound,
                    Established: c.established,
                })
                .collect(),
        })
        .collect();
    let router = RouterStatus {
        Protocol: "weft".to_owned(),
        ProtocolMinVersion: u32::from(r.protocol_min),
        ProtocolMaxVersion: u32::from(r.protocol_max),
        Encryption: r.encryption,
        PeerDiscovery: r.discovery,
        Name: r.name.clone(),
        NickName: r.nickname.clone(),
        Port: r.port,
        Peers: peers,
        UnicastRoutes: r
            .unicast_routes
            .iter()
            .map(|u| UnicastRoute {
                Dest: u.dest.clone(),
                Via: u.via.clone(),
            })
            .collect(),
        BroadcastRoutes: r
            .broadcast_routes
            .iter()
            .map(|b| BroadcastRoute {
                Source: b.source.clone(),
                Via: b.via.clone(),
            })
            .collect(),
        Connections: r
            .connections
            .iter()
            .map(|c| connection_status(r, c))
            .collect(),
        TerminationCount: r.terminations,
        Targets: r.targets.iter().map(|t| target_text(t, r.port)).collect(),
        OverlayDiagnostics: if r.fastdp_port != 0 {
            BTreeMap::from([("fastdp".to_owned(), None), ("sleeve".to_owned(), None)])
        } else {
            BTreeMap::from([("sleeve".to_owned(), None)])
        },
        FastdpPort: r.fastdp_port,
        DatapathThreads: r.datapath_threads,
        ExpressLane: r.express_lane,
        TrustedSubnets: r.trusted_subnets.clone(),
        KernelFeatures: r
            .kernel_features
            .iter()
            .map(|f| KernelFeature {
                Name: f.name.clone(),
                Available: f.available,
                Used: f.used,
                Note: f.note.clone(),
            })
            .collect(),
    };
    let ipam = r.ipam.as_ref().map(|i| IpamStatus {
        Paxos: i.consensus.map(|c| PaxosStatus {
            Elector: c.elector,
            KnownNodes: c.known,
            Quorum: c.quorum,
        }),
        Range: i.range.clone(),
        RangeNumIPs: i.range_size,
        ActiveIPs: i.allocated,
        DefaultSubnet: i.default_subnet.clone(),
        Entries: i
            .entries
            .iter()
            .map(|e| EntryStatus {
                Token: e.token.clone(),
                Size: e.size,
                Peer: e.peer.clone(),
                Nickname: e.nickname.clone(),
                IsKnownPeer: e.reachable,
                Version: e.version,
            })
            .collect(),
        PendingClaims: i
            .pending_claims
            .iter()
            .map(|c| {
                let (addr, len) = c.cidr.split_once('/').unwrap_or((&c.cidr, "32"));
                ClaimStatus {
                    Ident: c.ident.clone(),
                    CIDR: Cidr {
                        Addr: addr.to_owned(),
                        PrefixLen: len.parse().unwrap_or(32),
                    },
                }
            })
            .collect(),
        PendingAllocates: i.pending_allocates.clone(),
    });
    let dns = r.dns.as_ref().map(|d| DnsStatus {
        Domain: d.domain.clone(),
        Upstream: d.upstream.clone(),
        Address: d.address.clone(),
        TTL: d.ttl,
        Entries: d
            .entries
            .iter()
            .map(|e| DnsEntryStatus {
                Hostname: e.hostname.clone(),
                Origin: e.origin.clone(),
                ContainerID: e.container_id.clone(),
                Address: e.address.clone(),
                Version: e.version,
                Tombstone: e.tombstone,
            })
            .collect(),
    });
    WeaveStatus {
        Ready: true,
        Version: r.version.clone(),
        VersionCheck: VersionCheck {
            Enabled: false,
            Success: false,
            NewVersion: String::new(),
            NextCheckAt: "0001-01-01T00:00:00Z".to_owned(),
        },
        Router: router,
        IPAM: ipam,
        DNS: dns,
        Proxy: r.proxy.as_ref().map(|a| ProxyStatus {
            Addresses: a.clone(),
        }),
    }
}

/// `GET /report` with `Accept: application/json`: indented by four spaces, as Go's
/// `json.MarshalIndent(status, "", "    ")`.
pub fn to_json(w: &WeaveStatus) -> String {
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    // Serialising plain structs of strings, numbers and maps with string keys cannot fail.
    let _ = w.serialize(&mut ser);
    String::from_utf8(out).unwrap_or_default()
}

/// The report as templates see it: components that are off are there as nil (Go's nil
/// pointers), so `{{if .DNS}}` works rather than failing on a missing field; a target's
/// `Attrs` is an empty map (Go's nil map, which reads as empty: `{{.Attrs.name}}` is
/// `<no value>`, not an error).
pub fn template_data(w: &WeaveStatus) -> Value {
    let mut v = Value::from_json(&to_json(w)).unwrap_or(Value::Nil);
    for key in ["IPAM", "DNS", "Proxy", "Plugin"] {
        if v.get(key).is_none() {
            v.insert(key, Value::Nil);
        }
    }
    let conns = v.get_mut("Router").and_then(|r| r.get_mut("Connections"));
    if let Some(Value::List(conns)) = conns {
        for c in conns {
            if c.get("Attrs") == Some(&Value::Nil) {
                c.insert("Attrs", Value::Object(Vec::new()));
            }
        }
    }
    v
}

/// Parses `format` and runs it over the report (`weave report -f`, `/report?format=`), with
/// Weave's `json` function.
pub fn execute(w: &WeaveStatus, format: &str) -> Result<String, weft_gotmpl::Error> {
    let funcs = Funcs::new().with("json", weft_gotmpl::json);
    let t = Template::parse_with("format", format, funcs)?;
    t.execute(&template_data(w))
}

fn enabled(b: bool) -> &'static str {
    if b { "enabled" } else { "disabled" }
}

/// Weave's `printList`: comma-separated, or `none`.
fn print_list(l: &[String]) -> String {
    if l.is_empty() {
        "none".to_owned()
    } else {
        l.join(", ")
    }
}

/// `N established, M pending, ...` in Weave's order, for the counts present.
fn print_counts(counts: &BTreeMap<&str, usize>, order: &[&str]) -> String {
    order
        .iter()
        .filter_map(|k| counts.get(k).map(|n| format!("{n} {k}")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The IPAM line of the summary, as Weave's template decides it.
fn ipam_state(i: &IpamStatus) -> String {
    if !i.Entries.is_empty() {
        let all_unreachable = !i.Entries.iter().any(|e| e.Size > 0 && e.IsKnownPeer);
        if all_unreachable {
            "all IP ranges owned by unreachable peers - use 'rmpeer' if they are dead".to_owned()
        } else if !i.PendingAllocates.is_empty() {
            "waiting for IP(s) to become available".to_owned()
        } else {
            "ready".to_owned()
        }
    } else {
        match &i.Paxos {
            Some(p) if p.Elector => format!(
                "awaiting consensus (quorum: {}, known: {})",
                p.Quorum, p.KnownNodes
            ),
            Some(_) => "priming".to_owned(),
            None => "idle".to_owned(),
        }
    }
}

/// `weave status` (the router's part; the script adds a blank line before and after).
pub fn render_status(w: &WeaveStatus) -> String {
    let r = &w.Router;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "        Version: {} (version check update disabled)",
        w.Version
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "        Service: router");
    let versions = if r.ProtocolMinVersion == r.ProtocolMaxVersion {
        r.ProtocolMaxVersion.to_string()
    } else {
        format!("{}..{}", r.ProtocolMinVersion, r.ProtocolMaxVersion)
    };
    let _ = writeln!(out, "       Protocol: {} {versions}", r.Protocol);
    let _ = writeln!(out, "           Name: {}({})", r.Name, r.NickName);
    let _ = writeln!(out, "     Encryption: {}", enabled(r.Encryption));
    let _ = writeln!(out, "  PeerDiscovery: {}", enabled(r.PeerDiscovery));
    let _ = writeln!(out, "        Targets: {}", r.Targets.len());
    let mut counts = BTreeMap::new();
    for c in &r.Connections {
        *counts.entry(c.State.as_str()).or_insert(0) += 1;
    }
    let conns = print_counts(
        &counts,
        &["established", "pending", "retrying", "failed", "connecting"],
    );
    let _ = write!(out, "    Connections: {}", r.Connections.len());
    if !conns.is_empty() {
        let _ = write!(out, " ({conns})");
    }
    out.push('\n');
    let mut peer_counts = BTreeMap::new();
    for c in r.Peers.iter().flat_map(|p| &p.Connections) {
        let k = if c.Established {
            "established"
        } else {
            "pending"
        };
        *peer_counts.entry(k).or_insert(0) += 1;
    }
    let pc = print_counts(&peer_counts, &["established", "pending"]);
    let _ = write!(out, "          Peers: {}", r.Peers.len());
    if !pc.is_empty() {
        let _ = write!(out, " (with {pc} connections)");
    }
    out.push('\n');
    let _ = writeln!(out, " TrustedSubnets: {}", print_list(&r.TrustedSubnets));
    if !r.KernelFeatures.is_empty() {
        // weft's own line: the data path and the kernel features it uses or goes without.
        let features = r.KernelFeatures.iter().map(|f| (f.Name.as_str(), f.Used));
        let fast = if r.FastdpPort != 0 {
            format!("fastdp (kernel VXLAN per peer, udp/{}), ", r.FastdpPort)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "       DataPath: {fast}{}",
            crate::features::summary(features, r.DatapathThreads, r.ExpressLane)
        );
    }
    if let Some(i) = &w.IPAM {
        let _ = writeln!(out);
        let _ = writeln!(out, "        Service: ipam");
        let _ = writeln!(out, "         Status: {}", ipam_state(i));
        let _ = writeln!(out, "          Range: {}", i.Range);
        let _ = writeln!(out, "  DefaultSubnet: {}", i.DefaultSubnet);
    }
    if let Some(d) = &w.DNS {
        let live = d.Entries.iter().filter(|e| e.Tombstone == 0).count();
        let _ = writeln!(out);
        let _ = writeln!(out, "        Service: dns");
        let _ = writeln!(out, "         Domain: {}", d.Domain);
        let _ = writeln!(out, "       Upstream: {}", print_list(&d.Upstream));
        let _ = writeln!(out, "            TTL: {}", d.TTL);
        let _ = writeln!(out, "        Entries: {live}");
    }
    if let Some(p) = &w.Proxy {
        let _ = writeln!(out);
        let _ = writeln!(out, "        Service: proxy");
        let _ = writeln!(out, "        Address: {}", print_list(&p.Addresses));
    }
    out
}

fn arrow(outbound: bool) -> &'static str {
    if outbound { "->" } else { "<-" }
}

/// `weave status connections`: direction, address, state, info, attributes.
pub fn render_connections(w: &WeaveStatus) -> String {
    let mut out = String::new();
    for c in &w.Router.Connections {
        let mut attrs = String::new();
        for (k, v) in c.Attrs.iter().flatten() {
            if k != "name" {
                let v = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                let _ = write!(attrs, "{k}={v}");
            }
        }
        let _ = writeln!(
            out,
            "{} {:<21} {:<11} {} {attrs}",
            arrow(c.Outbound),
            c.Address,
            c.State,
            c.Info
        );
    }
    out
}

/// `weave status peers`: each peer, then its connections as it reports them.
pub fn render_peers(w: &WeaveStatus) -> String {
    let mut out = String::new();
    for p in &w.Router.Peers {
        let _ = writeln!(out, "{}({})", p.Name, p.NickName);
        for c in &p.Connections {
            let who = format!("{}({})", c.Name, c.NickName);
            let state = if c.Established {
                "established"
            } else {
                "pending"
            };
            let _ = writeln!(
                out,
                "   {} {:<21} {who:<37} {state}",
                arrow(c.Outbound),
                c.Address
            );
        }
    }
    out
}

/// `weave status targets`: one per line.
pub fn render_targets(w: &WeaveStatus) -> String {
    w.Router.Targets.iter().map(|t| format!("{t}\n")).collect()
}

/// `weave status ipam`: each owner's share of the range, ourselves first with our active
/// count; nothing while IPAM is idle. `None` when IPAM is off.
pub fn render_ipam(w: &WeaveStatus) -> Option<String> {
    let i = w.IPAM.as_ref()?;
    // Per owner: addresses, nickname and reachability (of its first range, as Weave).
    let mut owners: BTreeMap<&str, (u64, &str, bool)> = BTreeMap::new();
    for e in &i.Entries {
        owners
            .entry(&e.Peer)
            .or_insert((0, &e.Nickname, e.IsKnownPeer))
            .0 += e.Size;
    }
    let mut out = String::new();
    let mut line = |name: &str, nick: &str, ips: u64, info: &str| {
        // Weave computes the share in float32.
        let pct = ips as f32 * 100.0 / i.RangeNumIPs as f32;
        let who = format!("{name}({nick})");
        let _ = writeln!(out, "{who:<37} {ips:>8} IPs ({pct:04.1}% of total) {info}");
    };
    let local = w.Router.Name.as_str();
    if let Some((ips, nick, _)) = owners.get(local) {
        line(local, nick, *ips, &format!("({} active)", i.ActiveIPs));
    }
    for (name, (ips, nick, reachable)) in &owners {
        if *name != local {
            line(
                name,
                nick,
                *ips,
                if *reachable { "" } else { "- unreachable!" },
            );
        }
    }
    Some(out)
}

/// `weave status dns`: live records, short name, address, container, origin. `None` when
/// weaveDNS is not running.
pub fn render_dns(w: &WeaveStatus) -> Option<String> {
    let d = w.DNS.as_ref()?;
    let suffix = format!(".{}", d.Domain);
    let mut out = String::new();
    for e in d.Entries.iter().filter(|e| e.Tombstone == 0) {
        let host = e.Hostname.strip_suffix(&suffix).unwrap_or(&e.Hostname);
        let id: String = e.ContainerID.chars().take(12).collect();
        let _ = writeln!(out, "{host:<12} {:<15} {id:>12} {}", e.Address, e.Origin);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{
        ConnState, ConnectionReport, IpamEntryReport, IpamReport, PeerConnReport, PeerReport,
    };

    fn report() -> StatusReport {
        StatusReport {
            name: "8a:3e:3e:3e:3e:3e".into(),
            nickname: "nicknamington".into(),
            short_id: 1,
            uid: 7,
            version: "0.1.0".into(),
            protocol: "weft 1..2".into(),
            port: 6783,
            data_port: 6783,
            fastdp_port: 6784,
            mtu: 1376,
            encryption: false,
            peers: vec![
                PeerReport {
                    name: "8a:3e:3e:3e:3e:3e".into(),
                    nickname: "nicknamington".into(),
                    short_id: 1,
                    uid: 7,
                    version: 3,
                    connections: vec![PeerConnReport {
                        name: "aa:bb:cc:dd:ee:02".into(),
                        nickname: "host2".into(),
                        address: "192.0.2.2:6783".into(),
                        outbound: true,
                        established: true,
                    }],
                    path: String::new(),
                },
                PeerReport {
                    name: "aa:bb:cc:dd:ee:02".into(),
                    nickname: "host2".into(),
                    short_id: 2,
                    uid: 8,
                    version: 2,
                    connections: vec![],
                    path: "direct".into(),
                },
            ],
            connections: vec![
                ConnectionReport {
                    address: "192.0.2.2:6783".into(),
                    outbound: true,
                    state: ConnState::Established,
                    info: String::new(),
                    name: "aa:bb:cc:dd:ee:02".into(),
                    nickname: "host2".into(),
                    path: "direct".into(),
                    encrypted: Some(false),
                    control_encrypted: Some(false),
                    cipher: String::new(),
                    overlay: "sleeve".into(),
                    path_mtu: None,
                },
                ConnectionReport {
                    address: "192.0.2.3:6783".into(),
                    outbound: true,
                    state: ConnState::Retrying,
                    info: "connection refused, retry in 1.0s".into(),
                    name: String::new(),
                    nickname: String::new(),
                    path: String::new(),
                    encrypted: None,
                    control_encrypted: None,
                    cipher: String::new(),
                    overlay: String::new(),
                    path_mtu: None,
                },
            ],
            targets: vec!["192.0.2.2:6783".into(), "192.0.2.3:6783".into()],
            discovery: true,
            counters: BTreeMap::new(),
            protocol_min: 1,
            protocol_max: 2,
            trusted_subnets: vec![],
            terminations: 2,
            unicast_routes: vec![],
            broadcast_routes: vec![],
            ipam: Some(IpamReport {
                status: "ready".into(),
                range: "10.32.0.0/12".into(),
                range_size: 1 << 20,
                default_subnet: "10.32.0.0/12".into(),
                pending: 0,
                allocated: 3,
                consensus: None,
                peers: vec![],
                entries: vec![
                    IpamEntryReport {
                        token: "10.32.0.0".into(),
                        size: 1 << 19,
                        peer: "8a:3e:3e:3e:3e:3e".into(),
                        nickname: "nicknamington".into(),
                        reachable: true,
                        version: 1,
                        free: 10,
                    },
                    IpamEntryReport {
                        token: "10.40.0.0".into(),
                        size: 1 << 19,
                        peer: "aa:bb:cc:dd:ee:02".into(),
                        nickname: "host2".into(),
                        reachable: false,
                        version: 1,
                        free: 10,
                    },
                ],
                pending_allocates: vec![],
                pending_claims: vec![],
                store_error: None,
                orphans: 0,
                conflicts: vec![],
            }),
            dns: None,
            proxy: Some(vec!["unix:///var/run/weave/weave.sock".into()]),
            kernel_features: Vec::new(),
            datapath_threads: 2,
            express_lane: true,
            links: Vec::new(),
        }
    }

    #[test]
    fn summary_is_weaves_shape() {
        let w = weave_status(&report());
        assert_eq!(
            render_status(&w),
            "        Version: 0.1.0 (version check update disabled)\n\
             \n        Service: router\n       Protocol: weft 1..2\n\
             \x20          Name: 8a:3e:3e:3e:3e:3e(nicknamington)\n     Encryption: disabled\n\
             \x20 PeerDiscovery: enabled\n        Targets: 2\n\
             \x20   Connections: 2 (1 established, 1 retrying)\n\
             \x20         Peers: 2 (with 1 established connections)\n TrustedSubnets: none\n\
             \n        Service: ipam\n         Status: ready\n          Range: 10.32.0.0/12\n\
             \x20 DefaultSubnet: 10.32.0.0/12\n\
             \n        Service: proxy\n        Address: unix:///var/run/weave/weave.sock\n"
        );
    }

    #[test]
    fn sub_reports_are_weaves_shape() {
        let w = weave_status(&report());
        assert_eq!(
            render_connections(&w),
            "-> 192.0.2.2:6783        established sleeve aa:bb:cc:dd:ee:02(host2) mtu=1376\n\
             -> 192.0.2.3:6783        retrying    connection refused, retry in 1.0s \n"
        );
        assert_eq!(
            render_peers(&w),
            "8a:3e:3e:3e:3e:3e(nicknamington)\n   -> 192.0.2.2:6783        \
             aa:bb:cc:dd:ee:02(host2)              established\naa:bb:cc:dd:ee:02(host2)\n"
        );
        assert_eq!(render_targets(&w), "192.0.2.2\n192.0.2.3\n");
        assert_eq!(
            render_ipam(&w).unwrap(),
            "8a:3e:3e:3e:3e:3e(nicknamington)        524288 IPs (50.0% of total) (3 active)\n\
             aa:bb:cc:dd:ee:02(host2)                524288 IPs (50.0% of total) - unreachable!\n"
        );
        assert_eq!(render_dns(&w), None);
    }

    #[test]
    fn encrypted_connections_say_so() {
        let mut r = report();
        r.encryption = true;
        r.connections[0].encrypted = Some(true);
        let w = weave_status(&r);
        assert!(
            render_connections(&w).starts_with(
                "-> 192.0.2.2:6783        established encrypted   sleeve aa:bb:cc:dd:ee:02(host2) \
                 encrypted=truemtu=1376\n"
            ),
            "{}",
            render_connections(&w)
        );
    }

    #[test]
    fn templates_run_over_the_report() {
        let w = weave_status(&report());
        assert_eq!(
            execute(&w, "{{.Router.Name}}({{.Router.NickName}})").unwrap(),
            "8a:3e:3e:3e:3e:3e(nicknamington)"
        );
        assert_eq!(
            execute(&w, "{{.IPAM.DefaultSubnet}}").unwrap(),
            "10.32.0.0/12"
        );
        assert_eq!(
            execute(&w, "{{range .Router.Connections}}{{.Attrs.name}};{{end}}").unwrap(),
            "sleeve;<no value>;"
        );
        assert_eq!(
            execute(&w, "{{if .DNS}}dns{{else}}none{{end}}").unwrap(),
            "none"
        );
        assert_eq!(
            execute(&w, "{{json .Proxy}}").unwrap(),
            r#"{"Addresses":["unix:///var/run/weave/weave.sock"]}"#
        );
        assert!(execute(&w, "{{.Router.Nmae}}").is_err());
        assert!(execute(&w, "{{.DNS.Domain}}").is_err());
        // The JSON has Weave's top-level fields and leaves the absent components out.
        let v: serde_json::Value = serde_json::from_str(&to_json(&w)).unwrap();
        for k in [
            "Ready",
            "Version",
            "VersionCheck",
            "Router",
            "IPAM",
            "Proxy",
        ] {
            assert!(v.get(k).is_some(), "{k} missing");
        }
        assert!(v.get("DNS").is_none());
        assert_eq!(
            v["Router"]["Connections"][1]["Attrs"],
            serde_json::Value::Null
        );
        assert_eq!(v["IPAM"]["RangeNumIPs"], 1 << 20);
    }
}
