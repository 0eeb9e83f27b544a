//! Layer: driver. The router's configuration, as the CLI builds it from flags and environment.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use weft_mesh::PeerName;

/// Overlay MTU used when none is given (Weave's fast-datapath default).
pub const DEFAULT_MTU: u32 = 1376;
/// TCP control port; the UDP data port is this plus one.
pub const DEFAULT_PORT: u16 = 6783;
/// The default allocation range, as in Weave.
pub const DEFAULT_RANGE: &str = "10.32.0.0/12";
/// Name of the bridge every container and the TAP join.
pub const BRIDGE: &str = "weave";
/// Name of the TAP device the router reads frames from.
pub const TAP: &str = "vethwe-tap";

/// Everything the daemon needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// Peer name given with `--name`; otherwise loaded from the state directory or derived.
    pub name: Option<PeerName>,
    /// Human-readable name (hostname by default).
    pub nickname: String,
    /// Address the control listener and the data socket bind to.
    pub host: IpAddr,
    /// TCP control port.
    pub port: u16,
    /// UDP data port (VXLAN).
    pub data_port: u16,
    /// HTTP API address.
    pub http_addr: SocketAddr,
    /// Overlay MTU for the bridge and every container interface.
    pub mtu: u32,
    /// Where persistent state lives (peer name, short id).
    pub state_dir: PathBuf,
    /// Where the pid file lives.
    pub run_dir: PathBuf,
    /// Peers to dial (`IP[:port]`).
    pub peers: Vec<String>,
    /// Bridge name.
    pub bridge: String,
    /// TAP name.
    pub tap: String,
    /// Dial peers learned from gossip, not only the targets.
    pub discovery: bool,
    /// Most control connections (0: unlimited).
    pub conn_limit: usize,
    /// Reuse the target list kept in the state directory (instead of `peers`).
    pub resume: bool,
    /// The range IPAM allocates from; `None` disables IPAM.
    pub ipalloc_range: Option<ipnet::Ipv4Net>,
    /// The subnet `net:default` allocates in (the whole range if not given).
    pub ipalloc_default_subnet: Option<ipnet::Ipv4Net>,
    /// How the ring is first divided.
    pub ipalloc_init: weft_ipam::InitMode,
    /// The network password; `None`: connections are not encrypted.
    pub password: Option<Password>,
    /// Peers at these addresses are trusted: if they trust us too, the data plane between us
    /// is in the clear (control traffic is still encrypted).
    pub trusted_subnets: Vec<ipnet::IpNet>,
}

/// A secret that is never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(pub Vec<u8>);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(..)")
    }
}

/// Parse `--trusted-subnets`: comma-separated CIDRs (empty: none).
pub fn parse_trusted_subnets(s: &str) -> Result<Vec<ipnet::IpNet>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| {
            c.parse::<ipnet::IpNet>()
                .map_err(|_| format!("invalid CIDR '{c}' in --trusted-subnets"))
        })
        .collect()
}

impl Default for Config {
    fn default() -> Self {
        Self {
            name: None,
            nickname: String::from("weft"),
            host: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: DEFAULT_PORT,
            data_port: DEFAULT_PORT + 1,
            http_addr: SocketAddr::from(([127, 0, 0, 1], 6784)),
            mtu: DEFAULT_MTU,
            state_dir: PathBuf::from("/var/lib/weft"),
            run_dir: PathBuf::from("/run/weft"),
            peers: Vec::new(),
            bridge: BRIDGE.to_owned(),
            tap: TAP.to_owned(),
            discovery: true,
            conn_limit: 200,
            resume: false,
            ipalloc_range: Some(DEFAULT_RANGE.parse().expect("a valid CIDR literal")),
            ipalloc_default_subnet: None,
            ipalloc_init: weft_ipam::InitMode::Consensus { quorum: None },
            password: None,
            trusted_subnets: Vec::new(),
        }
    }
}

impl Config {
    /// The pid file of the daemon.
    pub fn pid_file(&self) -> PathBuf {
        self.run_dir.join("weft.pid")
    }

    /// Where the target list is kept (for `--resume`).
    pub fn targets_file(&self) -> PathBuf {
        self.state_dir.join("targets.json")
    }
}

/// Parse a peer argument `host[:port]` into a socket address (port defaults to `default_port`).
pub fn parse_peer(peer: &str, default_port: u16) -> Result<SocketAddr, String> {
    if let Ok(addr) = peer.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(ip) = peer.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, default_port));
    }
    let (host, port) = match peer.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("invalid port in peer '{peer}'"))?,
        ),
        None => (peer, default_port),
    };
    use std::net::ToSocketAddrs;
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve peer '{peer}': {e}"))?
        .next()
        .ok_or_else(|| format!("peer '{peer}' has no address"))
}

/// Parse `--ipalloc-init`: `consensus[=N]`, `seed=NAME,...` or `observer`.
pub fn parse_ipalloc_init(s: &str) -> Result<weft_ipam::InitMode, String> {
    use weft_ipam::InitMode;
    if s == "observer" {
        return Ok(InitMode::Observer);
    }
    if s == "consensus" {
        return Ok(InitMode::Consensus { quorum: None });
    }
    if let Some(n) = s.strip_prefix("consensus=") {
        let n: usize = n
            .parse()
            .map_err(|_| format!("invalid quorum count in '{s}'"))?;
        if n == 0 {
            return Err("--ipalloc-init consensus=N needs N of at least 1".into());
        }
        return Ok(InitMode::Consensus { quorum: Some(n) });
    }
    if let Some(list) = s.strip_prefix("seed=") {
        let names = list
            .split(',')
            .map(|n| {
                n.parse::<PeerName>()
                    .map_err(|_| format!("invalid peer name '{n}' in '{s}'"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if names.is_empty() {
            return Err("--ipalloc-init seed= needs at least one peer name".into());
        }
        return Ok(InitMode::Seed(names));
    }
    Err(format!(
        "invalid --ipalloc-init '{s}': expected consensus[=N], seed=NAME,... or observer"
    ))
}
