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
/// Where the read-only status listener is by default (Weave's `WEAVE_STATUS_ADDR` default).
pub const DEFAULT_STATUS_ADDR: &str = "127.0.0.1:6782";
/// The file in the run directory where a running Docker API proxy lists its addresses
/// (`{"listen": ["unix:///..."]}`); the router reports them (`/proxyaddrs`, `status`).
pub const PROXY_FILE: &str = "proxy.json";

/// Where an extra HTTP listener binds: `IP:PORT`, `:PORT` (every address), or an absolute
/// path for a unix socket (as Weave's `--status-addr` and `--metrics-addr`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A unix socket path.
    Unix(PathBuf),
}

impl std::str::FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.starts_with('/') {
            return Ok(Self::Unix(PathBuf::from(s)));
        }
        parse_socket_addr(s)
            .map(Self::Tcp)
            .map_err(|_| format!("invalid address '{s}': expected IP:PORT, :PORT or /path"))
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(a) => write!(f, "{a}"),
            Self::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

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
    /// UDP data port of the userspace path, "sleeve" (VXLAN; Weave's 6783/udp).
    pub data_port: u16,
    /// UDP port of the kernel fast path (VXLAN; Weave's 6784/udp); 0: no fast path
    /// (`--no-fastdp`).
    pub fastdp_port: u16,
    /// `SCHED_FIFO` priority of the userspace data path's thread (`--datapath-priority`); 0:
    /// the ordinary scheduler.
    pub datapath_priority: u8,
    /// Run the userspace data path's express lane for sparse flows (off: `--no-express`).
    pub express: bool,
    /// Userspace data-plane threads (`--datapath-threads`), each with its own TAP queue and
    /// UDP socket; 0: one per CPU the router may run on, at most [`AUTO_THREADS_MAX`].
    pub datapath_threads: usize,
    /// The highest control-protocol version to speak (`WEFT_PROTOCOL_MAX`; at least
    /// `PROTOCOL_MIN`): below `PROTOCOL_MAX` only to behave like an older router, for a mesh
    /// being upgraded or a test of one.
    pub protocol_max: u8,
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
    /// Start even if `ipam.json` cannot be read: rebuild it from the previous state, the host
    /// and the other peers (`--ipam-recover`).
    pub ipam_recover: bool,
    /// Docker's API socket, asked at start-up which containers use which addresses (when it
    /// exists; `None`: the default `/var/run/docker.sock`).
    pub docker_api: Option<PathBuf>,
    /// The network password; `None`: connections are not encrypted.
    pub password: Option<Password>,
    /// Peers at these addresses are trusted: if they trust us too, the data plane between us
    /// is in the clear (control traffic is still encrypted).
    pub trusted_subnets: Vec<ipnet::IpNet>,
    /// weaveDNS settings; `None`: no DNS (`--no-dns`).
    pub dns: Option<crate::dns::DnsConfig>,
    /// The read-only status listener (`/status*`, `/report`, `/metrics`), if any.
    pub status_addr: Option<ListenAddr>,
    /// A listener serving only `/metrics`, if any.
    pub metrics_addr: Option<ListenAddr>,
    /// Kernel features the data plane must not use (`--disable-features`), even if the kernel
    /// has them.
    pub disabled_features: Vec<weft_sys::probe::Feature>,
}

/// Turns a `--log-level` value into a tracing filter: Weave's (logrus) spellings `debug`,
/// `info`, `warning`, `error` (also `warn`, `trace`, `fatal`, `panic`), case-insensitively; any
/// other value is taken as a tracing filter directive (e.g. `weft_router=debug,info`).
pub fn log_filter(level: &str) -> String {
    match level.trim().to_ascii_lowercase().as_str() {
        "warning" | "warn" => "warn".to_owned(),
        "fatal" | "panic" | "error" => "error".to_owned(),
        "debug" => "debug".to_owned(),
        "trace" => "trace".to_owned(),
        "info" | "" => "info".to_owned(),
        _ => level.trim().to_owned(),
    }
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
            data_port: DEFAULT_PORT,
            fastdp_port: DEFAULT_PORT + 1,
            datapath_priority: 0,
            datapath_threads: 0,
            express: true,
            protocol_max: weft_wire::control::PROTOCOL_MAX,
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
            ipam_recover: false,
            docker_api: None,
            password: None,
            trusted_subnets: Vec::new(),
            dns: Some(crate::dns::DnsConfig::default()),
            status_addr: None,
            metrics_addr: None,
            disabled_features: Vec::new(),
        }
    }
}

/// The most data-plane threads chosen by default (more can be asked for).
pub const AUTO_THREADS_MAX: usize = 8;
/// The most data-plane threads at all (streams are a byte, receivers accept 64).
pub const THREADS_MAX: usize = 64;

impl Config {
    /// How many data-plane threads to run: [`Config::datapath_threads`], or for 0 the CPUs
    /// this process may use (its affinity mask), at most [`AUTO_THREADS_MAX`].
    pub fn datapath_threads(&self) -> usize {
        match self.datapath_threads {
            0 => std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(AUTO_THREADS_MAX),
            n => n.min(THREADS_MAX),
        }
    }

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

/// Parse a listen address as Weave's `--status-addr`/`--metrics-addr`/`-H tcp://` take it:
/// `IP:PORT`, `:PORT` (all addresses) or `tcp://` followed by either.
pub fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    let t = s.strip_prefix("tcp://").unwrap_or(s);
    if let Some(port) = t.strip_prefix(':') {
        let port: u16 = port
            .parse()
            .map_err(|_| format!("invalid port in address '{s}'"))?;
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
    }
    t.parse()
        .map_err(|_| format!("'{s}' is not an address like 127.0.0.1:6782 or :6782"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weave_log_levels() {
        assert_eq!(log_filter("warning"), "warn");
        assert_eq!(log_filter("WARNING"), "warn");
        assert_eq!(log_filter("debug"), "debug");
        assert_eq!(log_filter("error"), "error");
        assert_eq!(log_filter("info"), "info");
        assert_eq!(log_filter("weft_router=debug"), "weft_router=debug");
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(
            parse_socket_addr("127.0.0.1:6782"),
            Ok("127.0.0.1:6782".parse().unwrap())
        );
        assert_eq!(
            parse_socket_addr(":6782"),
            Ok("0.0.0.0:6782".parse().unwrap())
        );
        assert_eq!(
            parse_socket_addr("tcp://127.0.0.1:12375"),
            Ok("127.0.0.1:12375".parse().unwrap())
        );
        assert!(parse_socket_addr("localhost").is_err());
    }
}
