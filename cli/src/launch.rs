//! Layer: driver. Starting and stopping weft's parts as Weave's verbs do: `launch` (router and
//! proxy, Weave 2), `launch-router` and `launch-proxy` (Weave 1.x: separately, in either
//! order), `stop`, `stop-router`, `stop-proxy`, `reset`; and `env` / `config`, which point the
//! docker client at the proxy.
//!
//! The flags are Weave 2.8.1's (its script and `weaver`), plus weft's own; every one of them
//! parses. Flags weft has no use for are accepted and noted in the log ([`notes`]); a few that
//! would change what the network is (`--awsvpc`, proxy TLS, another bridge name) are refused
//! with the reason. Both parts run in one daemon process ([`crate::daemon`]); the CLI checks
//! the host first ([`crate::checks`]), starts the daemon if needed and asks it, through the
//! control socket ([`crate::control`]), to start or stop a part.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args};
use serde::{Deserialize, Serialize};
use weft_router::config::{DEFAULT_PORT, DEFAULT_RANGE};

use crate::control::{self, Request, Response};
use crate::{Global, http, runtime};

/// Deprecated single-dash spellings Weave warned about, and what to use instead.
pub(crate) const DEPRECATED: [(&str, &str); 5] = [
    ("nickname", "nickname"),
    ("nodiscovery", "no-discovery"),
    ("iprange", "ipalloc-range"),
    ("ipsubnet", "ipalloc-default-subnet"),
    ("initpeercount", "ipalloc-init"),
];

/// The router's flags (Weave's `launch` / `launch-router`, weaver's flags).
#[derive(Debug, Clone, Default, Args, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct RouterArgs {
    /// Peers to connect to, as `IP[:port]` or `host[:port]`.
    pub(crate) peers: Vec<String>,
    /// Peer name (48 bits, written like a MAC); by default derived once and kept.
    #[arg(long, env = "WEFT_NAME")]
    pub(crate) name: Option<String>,
    /// Human-readable name of this peer (default: the hostname).
    #[arg(long)]
    pub(crate) nickname: Option<String>,
    /// TCP control port; the UDP data port is this plus one.
    #[arg(long, env = "WEAVE_PORT", default_value_t = DEFAULT_PORT)]
    pub(crate) port: u16,
    /// Address to bind the control and data sockets to (default: all).
    #[arg(long)]
    pub(crate) host: Option<IpAddr>,
    /// Overlay MTU for the bridge and every container interface (default 1376).
    #[arg(long, env = "WEAVE_MTU")]
    pub(crate) mtu: Option<u32>,
    /// Dial only the given targets, not peers learned from gossip.
    #[arg(long, alias = "nodiscovery", action = ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_missing_value = "true", default_value = "false",
          value_parser = BoolishValueParser::new())]
    pub(crate) no_discovery: bool,
    /// Most control connections (0: unlimited).
    #[arg(long, env = "CONN_LIMIT", default_value_t = 200)]
    pub(crate) conn_limit: usize,
    /// Reuse the target list kept from the last run (no peers may be given).
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false",
          value_parser = BoolishValueParser::new())]
    pub(crate) resume: bool,
    /// The range IPAM allocates from (default 10.32.0.0/12; "" disables IPAM).
    #[arg(long, alias = "iprange", env = "IPALLOC_RANGE", value_name = "CIDR")]
    pub(crate) ipalloc_range: Option<String>,
    /// The subnet `net:default` allocates in (default: the whole range).
    #[arg(long, alias = "ipsubnet", value_name = "CIDR")]
    pub(crate) ipalloc_default_subnet: Option<String>,
    /// How the range is first divided: consensus[=N], seed=NAME,... or observer.
    #[arg(long, env = "IPALLOC_INIT")]
    pub(crate) ipalloc_init: Option<String>,
    /// Weave 1.x: the number of peers for consensus (now --ipalloc-init consensus=N).
    #[arg(long, hide = true, aliases = ["initpeercount", "init-peer-count"])]
    pub(crate) init_peer_count: Option<usize>,
    /// Encrypt every connection with this network password (prefer --password-file: a
    /// command line is visible in `ps`).
    #[arg(long, env = "WEAVE_PASSWORD", hide_env_values = true)]
    pub(crate) password: Option<String>,
    /// Read the network password from this file (one trailing newline is ignored).
    #[arg(long, conflicts_with = "password")]
    pub(crate) password_file: Option<PathBuf>,
    /// Comma-separated CIDRs of peers trusted to carry the data plane in the clear.
    #[arg(long)]
    pub(crate) trusted_subnets: Option<String>,
    /// Weave's minimum mesh protocol version (weft speaks its own protocol; noted).
    #[arg(long)]
    pub(crate) min_protocol_version: Option<u8>,
    /// Do not run weaveDNS.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false",
          value_parser = BoolishValueParser::new())]
    pub(crate) no_dns: bool,
    /// weaveDNS domain (default weave.local.).
    #[arg(long)]
    pub(crate) dns_domain: Option<String>,
    /// weaveDNS listen address (ADDR:PORT).
    #[arg(long)]
    pub(crate) dns_listen_address: Option<String>,
    /// weaveDNS TTL of answers, in seconds.
    #[arg(long)]
    pub(crate) dns_ttl: Option<u32>,
    /// weaveDNS fallback timeout (Go duration, e.g. 5s).
    #[arg(long)]
    pub(crate) dns_fallback_timeout: Option<String>,
    /// Start even if the stored IP allocation state cannot be read: rebuild it from the
    /// previous state, the addresses in use on this host and the other peers.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false",
          value_parser = BoolishValueParser::new())]
    pub(crate) ipam_recover: bool,
    /// Resolver configuration for weaveDNS's fallback servers (default /etc/resolv.conf).
    #[arg(long)]
    pub(crate) resolv_conf: Option<PathBuf>,
    /// Queries per second one client address may send to weaveDNS (0: no limit; weft's own).
    #[arg(long)]
    pub(crate) dns_rate_limit: Option<u32>,

    /// Kernel features the data plane must not use even if the kernel has them (comma-separated:
    /// tap-vnet-hdr, tso, udp-gso, udp-gro, vxlan-external, ebpf); it falls back as on a kernel
    /// without them.
    #[arg(long, env = "WEFT_DISABLE_FEATURES", value_name = "FEATURES")]
    pub(crate) disable_features: Option<String>,
    /// Use only the userspace data path ("sleeve"), never the kernel fast path (Weave's flag).
    #[arg(long, env = "WEAVE_NO_FASTDP", action = ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_missing_value = "true", default_value = "false",
          value_parser = BoolishValueParser::new())]
    pub(crate) no_fastdp: bool,
    /// Run the userspace data path's thread on the real-time scheduler (SCHED_FIFO) with this
    /// priority, 1-99; 0 (the default): the ordinary scheduler. On hosts whose cores are busy,
    /// packets through the userspace path then wait less for the router (latency under load),
    /// at a cost in throughput when the router itself is the bottleneck. weft's own.
    #[arg(long, env = "WEFT_DATAPATH_PRIORITY", default_value_t = 0,
          value_parser = clap::value_parser!(u8).range(0..=99))]
    pub(crate) datapath_priority: u8,
    /// Threads for the userspace data path, each with its own TAP queue and UDP socket (flows
    /// stay on one thread, so in order); 0 (the default): one per CPU, at most 8. weft's own.
    #[arg(long, env = "WEFT_DATAPATH_THREADS", default_value_t = 0,
          value_parser = clap::value_parser!(u16).range(0..=64))]
    pub(crate) datapath_threads: u16,
    /// No express lane: sparse flows (pings, health checks, handshakes) share the userspace
    /// data path's queues with bulk traffic instead of skipping them (needs eBPF). weft's own.
    #[arg(long, env = "WEFT_NO_EXPRESS", action = ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_missing_value = "true", default_value = "false",
          value_parser = BoolishValueParser::new())]
    pub(crate) no_express: bool,
    /// The highest control protocol to speak, to behave like an older weft (a mesh being
    /// upgraded, or a test of one): 4 leaves out partial checksums on the data path.
    #[arg(long, env = "WEFT_PROTOCOL_MAX", hide = true,
          default_value_t = weft_wire::control::PROTOCOL_MAX,
          value_parser = clap::value_parser!(u8).range(
              i64::from(weft_wire::control::PROTOCOL_MIN)..=i64::from(weft_wire::control::PROTOCOL_MAX)))]
    pub(crate) protocol_max: u8,
    /// Weave's non-bridged fast datapath (noted).
    #[arg(long, env = "WEAVE_NO_BRIDGED_FASTDP", action = ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_missing_value = "true", default_value = "false",
          value_parser = BoolishValueParser::new())]
    pub(crate) no_bridged_fastdp: bool,
    /// Read-only status and metrics listener (default 127.0.0.1:6782; "" for none).
    #[arg(long, env = "WEAVE_STATUS_ADDR")]
    pub(crate) status_addr: Option<String>,
    /// A listener for `/metrics` only.
    #[arg(long, env = "WEAVE_METRICS_ADDR")]
    pub(crate) metrics_addr: Option<String>,
    /// Weave Cloud token (the service is gone; noted).
    #[arg(long)]
    pub(crate) token: Option<String>,
    /// Weave Cloud discovery URL (noted).
    #[arg(long)]
    pub(crate) peer_discovery_url: Option<String>,
    /// Weave Cloud advertised address (noted).
    #[arg(long)]
    pub(crate) advertise_address: Option<String>,
    /// AWS VPC routing instead of an overlay (not supported by weft).
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false",
          value_parser = BoolishValueParser::new())]
    pub(crate) awsvpc: bool,
    /// Kubernetes' no-masquerade-for-local-traffic mode (noted).
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false",
          value_parser = BoolishValueParser::new())]
    pub(crate) no_masq_local: bool,
    /// weave-npc hooks (noted).
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false",
          value_parser = BoolishValueParser::new())]
    pub(crate) expect_npc: bool,
    /// Per-packet debug logging (noted).
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false",
          value_parser = BoolishValueParser::new())]
    pub(crate) pkt_debug: bool,
    /// Go profiling output (noted).
    #[arg(long)]
    pub(crate) profile: Option<String>,
    /// Capture buffer size in MB (noted).
    #[arg(long)]
    pub(crate) bufsz: Option<u32>,
    /// Weave's database prefix (weft keeps state in --state-dir; noted).
    #[arg(long)]
    pub(crate) db_prefix: Option<String>,
    /// Weave's path to the host file system (noted).
    #[arg(long)]
    pub(crate) host_root: Option<String>,
    /// Weave's path to the host's /proc (noted).
    #[arg(long)]
    pub(crate) proc_path: Option<String>,
    /// The Docker bridge (for DNS and `docker-bridge-ip`; default docker0).
    #[arg(long, env = "DOCKER_BRIDGE")]
    pub(crate) docker_bridge: Option<String>,
    /// The weave bridge's name (weft's is always `weave`).
    #[arg(long)]
    pub(crate) weave_bridge: Option<String>,
    /// Weave's ODP datapath name (noted).
    #[arg(long)]
    pub(crate) datapath: Option<String>,
    /// Run the Docker network plugin (`docker run --net=weave`) and create the network
    /// `weave`; off unless asked for (see the README).
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub(crate) plugin: Option<bool>,
    /// Weave's Docker plugin v2 (noted).
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false",
          value_parser = BoolishValueParser::new())]
    pub(crate) plugin_v2: bool,
    /// Weave's Docker plugin v2 multicast (noted).
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false",
          value_parser = BoolishValueParser::new())]
    pub(crate) plugin_v2_multicast: bool,
    /// The Docker network plugin's socket (default /run/docker/plugins/weave.sock; its file
    /// name is the driver's name).
    #[arg(long)]
    pub(crate) plugin_socket: Option<String>,
    /// Weave's plugin mesh socket (noted).
    #[arg(long)]
    pub(crate) plugin_mesh_socket: Option<String>,
}

/// The Docker API proxy's flags (Weave's names); also read from `WEAVEPROXY_OPTIONS`.
#[derive(Debug, Clone, Default, Args, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct ProxyArgs {
    /// Where the Docker API proxy listens: unix:///PATH, /PATH, tcp://IP:PORT or :PORT (repeatable;
    /// default unix:///var/run/weave/weave.sock).
    #[arg(short = 'H', value_name = "ENDPOINT")]
    pub(crate) listen: Vec<String>,
    /// Show the weave address in `docker inspect` (NetworkSettings.IPAddress).
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false",
          value_parser = BoolishValueParser::new())]
    pub(crate) rewrite_inspect: bool,
    /// Join only containers that have WEAVE_CIDR set.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false",
          value_parser = BoolishValueParser::new())]
    pub(crate) no_default_ipalloc: bool,
    /// Leave joined containers' /etc/hosts as Docker wrote it.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false",
          value_parser = BoolishValueParser::new())]
    pub(crate) no_rewrite_hosts: bool,
    /// Containers never use weaveDNS.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false",
          value_parser = BoolishValueParser::new())]
    pub(crate) without_dns: bool,
    /// Do not add the multicast route to joined containers' `ethwe`.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false",
          value_parser = BoolishValueParser::new())]
    pub(crate) no_multicast_route: bool,
    /// Take containers' host names from this label.
    #[arg(long)]
    pub(crate) hostname_from_label: Option<String>,
    /// Regular expression applied to container names for their host names.
    #[arg(long)]
    pub(crate) hostname_match: Option<String>,
    /// Replacement for --hostname-match (e.g. `my-app-$1`).
    #[arg(long)]
    pub(crate) hostname_replacement: Option<String>,
    /// Proxy TLS (not supported by weft's proxy).
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false",
          value_parser = BoolishValueParser::new())]
    pub(crate) tls: bool,
    /// Proxy TLS with client verification (not supported).
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false",
          value_parser = BoolishValueParser::new())]
    pub(crate) tlsverify: bool,
    /// Proxy TLS CA (not supported).
    #[arg(long)]
    pub(crate) tlscacert: Option<String>,
    /// Proxy TLS certificate (not supported).
    #[arg(long)]
    pub(crate) tlscert: Option<String>,
    /// Proxy TLS key (not supported).
    #[arg(long)]
    pub(crate) tlskey: Option<String>,
    /// Do not copy dockerd's TLS settings (weft never does).
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false",
          value_parser = BoolishValueParser::new())]
    pub(crate) no_detect_tls: bool,
    /// Run the Docker API proxy (`--proxy=false`: do not; default: when Docker is found).
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub(crate) proxy: Option<bool>,
    /// Do not run the Docker API proxy.
    #[arg(long)]
    pub(crate) no_proxy: bool,
}

/// Flags every launch verb takes.
#[derive(Debug, Clone, Default, Args, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct CommonArgs {
    /// Log level: debug, info, warning, error (Weave's), or a tracing filter.
    #[arg(long, env = "WEFT_LOG")]
    pub(crate) log_level: Option<String>,
    /// Weave's "no Docker restart policy" (weft is not run by Docker; noted).
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false",
          value_parser = BoolishValueParser::new())]
    pub(crate) no_restart: bool,
    /// Run in this process instead of in the background (for systemd and other supervisors).
    #[arg(long)]
    #[serde(skip)]
    pub(crate) foreground: bool,
}

/// Arguments of `weave launch`.
#[derive(Debug, Clone, Args)]
pub(crate) struct LaunchArgs {
    #[command(flatten)]
    pub(crate) router: RouterArgs,
    #[command(flatten)]
    pub(crate) proxy: ProxyArgs,
    #[command(flatten)]
    pub(crate) common: CommonArgs,
}

/// Arguments of `weave launch-router`.
#[derive(Debug, Clone, Args)]
pub(crate) struct LaunchRouterArgs {
    #[command(flatten)]
    pub(crate) router: RouterArgs,
    #[command(flatten)]
    pub(crate) common: CommonArgs,
}

/// Arguments of `weave launch-proxy`.
#[derive(Debug, Clone, Args)]
pub(crate) struct LaunchProxyArgs {
    #[command(flatten)]
    pub(crate) proxy: ProxyArgs,
    #[command(flatten)]
    pub(crate) common: CommonArgs,
}

/// `WEAVEPROXY_OPTIONS` parsed as proxy flags (as the init scripts pass them).
#[derive(Debug, clap::Parser)]
#[command(no_binary_name = true)]
struct ProxyOptionsEnv {
    #[command(flatten)]
    proxy: ProxyArgs,
    #[command(flatten)]
    common: CommonArgs,
    #[arg(long)]
    docker_api: Option<String>,
}

/// What the daemon is asked to start the router with.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct RouterSpec {
    pub(crate) args: RouterArgs,
    pub(crate) common: CommonArgs,
    /// The Docker endpoint (for container lifecycle), as text.
    pub(crate) docker_api: String,
    /// Whether `--ipalloc-range` (or `IPALLOC_RANGE`) was given (an overlap with a host route
    /// is then only a warning).
    pub(crate) range_given: bool,
}

/// What the daemon is asked to start the Docker network plugin with.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct PluginSpec {
    /// The plugin socket.
    pub(crate) socket: String,
    /// The Docker endpoint, as text.
    pub(crate) docker_api: String,
    /// The network to create once it serves (Weave's `weave`).
    pub(crate) network: Option<String>,
}

/// Arguments of `weave launch-plugin` (Weave 1.x).
#[derive(Debug, Clone, Args)]
pub(crate) struct LaunchPluginArgs {
    /// The plugin socket (default /run/docker/plugins/weave.sock).
    #[arg(long)]
    pub(crate) plugin_socket: Option<String>,
    #[command(flatten)]
    pub(crate) common: CommonArgs,
    /// Other arguments of Weave 1.x's plugin container (accepted and ignored).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    pub(crate) rest: Vec<String>,
}

fn plugin_spec(global: &Global, socket: Option<&str>) -> anyhow::Result<PluginSpec> {
    let socket = socket
        .filter(|s| !s.is_empty())
        .unwrap_or(weft_proxy::plugin::DEFAULT_SOCKET)
        .to_owned();
    if !socket.starts_with('/') {
        bail!("--plugin-socket {socket}: give an absolute path");
    }
    Ok(PluginSpec {
        socket,
        docker_api: docker_text(global, None)?,
        network: Some(weft_proxy::plugin::DEFAULT_NETWORK.to_owned()),
    })
}

/// What the daemon is asked to start the proxy with.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct ProxySpec {
    pub(crate) args: ProxyArgs,
    pub(crate) common: CommonArgs,
    /// The Docker endpoint the proxy forwards to, as text.
    pub(crate) docker_api: String,
}

impl ProxyArgs {
    /// Adds the flags given in `WEAVEPROXY_OPTIONS`; returns a `--docker-api` found there.
    fn merge_env(&mut self, common: &mut CommonArgs) -> anyhow::Result<Option<String>> {
        let Ok(opts) = std::env::var("WEAVEPROXY_OPTIONS") else {
            return Ok(None);
        };
        let parsed = <ProxyOptionsEnv as clap::Parser>::try_parse_from(opts.split_whitespace())
            .map_err(|e| anyhow::anyhow!("WEAVEPROXY_OPTIONS='{opts}': {e}"))?;
        let env = parsed.proxy;
        for l in env.listen {
            if !self.listen.contains(&l) {
                self.listen.push(l);
            }
        }
        self.rewrite_inspect |= env.rewrite_inspect;
        self.no_default_ipalloc |= env.no_default_ipalloc;
        self.no_rewrite_hosts |= env.no_rewrite_hosts;
        self.without_dns |= env.without_dns;
        self.no_multicast_route |= env.no_multicast_route;
        self.hostname_from_label = self.hostname_from_label.take().or(env.hostname_from_label);
        self.hostname_match = self.hostname_match.take().or(env.hostname_match);
        self.hostname_replacement = self
            .hostname_replacement
            .take()
            .or(env.hostname_replacement);
        self.tls |= env.tls;
        self.tlsverify |= env.tlsverify;
        self.proxy = self.proxy.or(env.proxy);
        self.no_proxy |= env.no_proxy;
        common.no_restart |= parsed.common.no_restart;
        common.log_level = common.log_level.take().or(parsed.common.log_level);
        Ok(parsed.docker_api)
    }

    /// Refuses what the weft proxy cannot do, saying so.
    pub(crate) fn check(&self) -> anyhow::Result<()> {
        if self.tls || self.tlsverify || self.tlscert.is_some() || self.tlskey.is_some() {
            bail!(
                "the weft proxy does not terminate TLS (--tls, --tlsverify, --tlscert, --tlskey): \
                 let it listen on a unix socket or a loopback address (-H 127.0.0.1:12375) and \
                 put a TLS-terminating forwarder in front of it for remote clients"
            );
        }
        for l in &self.listen {
            weft_proxy::parse_endpoint(l).context("-H")?;
        }
        Ok(())
    }

    /// Whether the user asked for the proxy in a way that makes failing to start it an error.
    fn explicit(&self) -> bool {
        self.proxy == Some(true) || !self.listen.is_empty()
    }

    /// Whether `launch` (Weave 2) runs the proxy: on unless `--proxy=false`/`--no-proxy`, and
    /// (unless asked for explicitly) only when Docker is there.
    fn wanted(&self, docker: &weft_proxy::Endpoint) -> bool {
        if self.no_proxy || self.proxy == Some(false) {
            return false;
        }
        self.explicit()
            || match docker {
                weft_proxy::Endpoint::Unix(p) => p.exists(),
                weft_proxy::Endpoint::Tcp(_) => true,
            }
    }
}

/// The proxy's default listening address, as Weave's script picks it: the unix socket when
/// the user's Docker client uses a unix socket (or the default), else TCP port 12375.
pub(crate) fn default_listen() -> String {
    match std::env::var("DOCKER_HOST") {
        Ok(h) if h.starts_with("tcp://") => {
            format!("tcp://0.0.0.0:{}", weft_proxy::DEFAULT_TCP_PORT)
        }
        _ => format!("unix://{}", weft_proxy::DEFAULT_LISTEN),
    }
}

/// Flags that change nothing in weft, with why; the daemon logs them at start.
pub(crate) fn notes(router: Option<&RouterArgs>, common: &CommonArgs) -> Vec<String> {
    let mut out = Vec::new();
    if common.no_restart {
        out.push(
            "--no-restart: weft is not run by Docker (no restart policy to drop); noted".to_owned(),
        );
    }
    let Some(r) = router else {
        return out;
    };
    let flag = |on: bool, name: &str, why: &str| on.then(|| format!("{name}: {why}; noted"));
    let noted = [
        flag(
            r.no_bridged_fastdp,
            "--no-bridged-fastdp",
            "weft's fast path is always bridged",
        ),
        flag(
            r.token.is_some() || r.peer_discovery_url.is_some() || r.advertise_address.is_some(),
            "--token / --peer-discovery-url / --advertise-address",
            "the Weave Cloud discovery service is gone",
        ),
        flag(
            r.plugin_v2 || r.plugin_v2_multicast,
            "--plugin-v2",
            "weft's Docker network plugin is the legacy one (--plugin), not a managed plugin",
        ),
        flag(
            r.plugin_mesh_socket.is_some(),
            "--plugin-mesh-socket",
            "weft's Docker network plugin has one socket (--plugin-socket)",
        ),
        flag(
            r.min_protocol_version.is_some(),
            "--min-protocol-version",
            "weft speaks its own protocol versions",
        ),
        flag(
            r.no_masq_local || r.expect_npc,
            "--no-masq-local / --expect-npc",
            "Kubernetes modes weft does not have",
        ),
        flag(
            r.pkt_debug || r.profile.is_some() || r.bufsz.is_some(),
            "--pkt-debug / --profile / --bufsz",
            "Weave debugging knobs",
        ),
        flag(
            r.db_prefix.is_some() || r.host_root.is_some() || r.proc_path.is_some(),
            "--db-prefix / --host-root / --proc-path",
            "weft keeps its state in --state-dir and runs on the host",
        ),
        flag(
            r.datapath.is_some(),
            "--datapath",
            "weft has no ODP datapath",
        ),
    ];
    out.extend(noted.into_iter().flatten());
    if std::env::var_os("CHECKPOINT_DISABLE").is_some() {
        out.push("CHECKPOINT_DISABLE: weft never checks for new versions; noted".to_owned());
    }
    out
}

impl RouterArgs {
    /// Refuses what weft cannot do, saying so.
    pub(crate) fn check(&self) -> anyhow::Result<()> {
        if self.awsvpc {
            bail!("--awsvpc (routing through AWS VPC route tables) is not supported by weft");
        }
        if let Some(b) = self.weave_bridge.as_deref().filter(|b| *b != "weave") {
            bail!("--weave-bridge {b}: weft's bridge is always named 'weave'");
        }
        if let Some(f) = &self.disable_features {
            weft_router::features::parse_disabled(f)
                .map_err(|e| anyhow::anyhow!("--disable-features: {e}"))?;
        }
        if self.resume && !self.peers.is_empty() {
            bail!("--resume reuses the stored peers; it cannot be combined with peers");
        }
        if let Some(m) = self.mtu {
            if !(576..=65535).contains(&m) {
                bail!("--mtu {m} is out of range (576..=65535)");
            }
        }
        Ok(())
    }

    /// The allocation range, `None` when IPAM is off.
    pub(crate) fn range(&self) -> anyhow::Result<Option<ipnet::Ipv4Net>> {
        let r = self.ipalloc_range.as_deref().unwrap_or(DEFAULT_RANGE);
        if r.is_empty() {
            return Ok(None);
        }
        r.parse::<ipnet::Ipv4Net>()
            .map(Some)
            .with_context(|| format!("--ipalloc-range '{r}' is not a CIDR like 10.32.0.0/12"))
    }
}

/// Which parts a stop verb stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Parts {
    pub(crate) router: bool,
    pub(crate) proxy: bool,
    pub(crate) plugin: bool,
}

impl Parts {
    pub(crate) const ALL: Self = Self {
        router: true,
        proxy: true,
        plugin: true,
    };
    pub(crate) const ROUTER: Self = Self {
        router: true,
        proxy: false,
        plugin: false,
    };
    pub(crate) const PROXY: Self = Self {
        router: false,
        proxy: true,
        plugin: false,
    };
    pub(crate) const PLUGIN: Self = Self {
        router: false,
        proxy: false,
        plugin: true,
    };
}

fn docker_text(global: &Global, from_env: Option<String>) -> anyhow::Result<String> {
    let ep = match global.docker_api.clone().or(from_env) {
        Some(a) => weft_proxy::parse_endpoint(&a)?,
        None => weft_proxy::default_docker_api()?,
    };
    Ok(ep.to_string())
}

fn router_spec(
    global: &Global,
    args: RouterArgs,
    common: CommonArgs,
) -> anyhow::Result<RouterSpec> {
    args.check()?;
    let range_given = args.ipalloc_range.is_some();
    Ok(RouterSpec {
        args,
        common,
        docker_api: docker_text(global, None)?,
        range_given,
    })
}

fn proxy_spec(
    global: &Global,
    mut args: ProxyArgs,
    mut common: CommonArgs,
) -> anyhow::Result<ProxySpec> {
    let env_docker = args.merge_env(&mut common)?;
    args.check()?;
    if args.listen.is_empty() {
        args.listen.push(default_listen());
    }
    Ok(ProxySpec {
        args,
        common,
        docker_api: docker_text(global, env_docker)?,
    })
}

/// `weave launch`: the router and (unless `--proxy=false`, or no Docker) the proxy.
pub(crate) fn launch(global: &Global, args: LaunchArgs) -> anyhow::Result<ExitCode> {
    let LaunchArgs {
        router,
        proxy,
        common,
    } = args;
    let docker = global.docker()?;
    let want_proxy = {
        let mut p = proxy.clone();
        let mut c = common.clone();
        p.merge_env(&mut c)?;
        p.wanted(&docker)
    };
    let plugin = if router.plugin == Some(true) {
        Some(Box::new(plugin_spec(
            global,
            router.plugin_socket.as_deref(),
        )?))
    } else {
        None
    };
    let router = router_spec(global, router, common.clone())?;
    let explicit_proxy = proxy.explicit();
    let proxy = if want_proxy {
        Some(proxy_spec(global, proxy, common.clone())?)
    } else {
        None
    };
    start(
        global,
        Request::Start {
            router: Some(Box::new(router)),
            proxy: proxy.map(Box::new),
            proxy_optional: !explicit_proxy,
            exclusive: true,
            plugin,
        },
        common.foreground,
    )
}

/// `weave launch-plugin` (Weave 1.x): the Docker network plugin alone (it waits for a router
/// for each call that needs one).
pub(crate) fn launch_plugin(global: &Global, args: LaunchPluginArgs) -> anyhow::Result<ExitCode> {
    if !args.rest.is_empty() {
        tracing::debug!("launch-plugin: ignoring {:?}", args.rest);
    }
    let plugin = plugin_spec(global, args.plugin_socket.as_deref())?;
    start(
        global,
        Request::Start {
            router: None,
            proxy: None,
            proxy_optional: false,
            exclusive: false,
            plugin: Some(Box::new(plugin)),
        },
        args.common.foreground,
    )
}

/// `weave launch-router`.
pub(crate) fn launch_router(global: &Global, args: LaunchRouterArgs) -> anyhow::Result<ExitCode> {
    let foreground = args.common.foreground;
    let router = router_spec(global, args.router, args.common)?;
    start(
        global,
        Request::Start {
            router: Some(Box::new(router)),
            proxy: None,
            proxy_optional: false,
            exclusive: false,
            plugin: None,
        },
        foreground,
    )
}

/// `weave launch-proxy`.
pub(crate) fn launch_proxy(global: &Global, args: LaunchProxyArgs) -> anyhow::Result<ExitCode> {
    let foreground = args.common.foreground;
    let proxy = proxy_spec(global, args.proxy, args.common)?;
    start(
        global,
        Request::Start {
            router: None,
            proxy: Some(Box::new(proxy)),
            proxy_optional: false,
            exclusive: false,
            plugin: None,
        },
        foreground,
    )
}

/// Checks the host, then has the daemon (started now if none runs) start the parts; prints
/// what Weave prints (the peer name for the router, the proxy's address for the proxy alone).
fn start(global: &Global, req: Request, foreground: bool) -> anyhow::Result<ExitCode> {
    let Request::Start { router, .. } = &req else {
        bail!("not a start request");
    };
    if let Some(r) = router {
        // Nothing is changed on the host when these fail.
        let rt = runtime()?;
        let running = control::status(global)
            .ok()
            .flatten()
            .is_some_and(|s| s.router.is_some());
        if !running {
            rt.block_on(crate::checks::before_router(global, r))?;
        }
    }
    if foreground {
        return crate::daemon::foreground(global, req);
    }
    let log = global.run_dir.join(crate::daemon::LOG_FILE);
    let offset = std::fs::metadata(&log).map_or(0, |m| m.len());
    let resp = match control::send(global, &req) {
        Err(e) if control::is_not_running(&e) => {
            crate::daemon::spawn(global)?;
            control::send(global, &req)
        }
        other => other,
    };
    let resp = resp.map_err(|e| e.context(log_since(&log, offset)))?;
    match resp {
        Response::Started {
            router,
            proxy,
            plugin,
        } => {
            if let Some(name) = router {
                println!("{name}");
            } else if let Some(p) = proxy.and_then(|p| p.into_iter().next()) {
                println!("{p}");
            } else if let Some(p) = plugin {
                println!("{p}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Response::Error { error } => bail!("{error}{}", log_since(&log, offset)),
        other => bail!("unexpected answer from the weft daemon: {other:?}"),
    }
}

/// The log lines written since `offset` (this launch's), as an indented block.
pub(crate) fn log_since(path: &std::path::Path, offset: u64) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return String::new();
    };
    let start = usize::try_from(offset).unwrap_or(0).min(bytes.len());
    let text = String::from_utf8_lossy(&bytes[start..]);
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        return String::new();
    }
    let shown = &lines[lines.len().saturating_sub(20)..];
    format!(
        "\nlog of this launch ({}):\n{}",
        path.display(),
        shown.join("\n")
    )
}

/// `weave stop`, `stop-router`, `stop-proxy`, `stop-plugin`: what is not running is said on
/// stderr (as Weave's "Weave is not running."), which is not an error.
pub(crate) fn stop(global: &Global, parts: Parts) -> anyhow::Result<ExitCode> {
    let not_running = |router: bool, proxy: bool, plugin: bool| {
        let stopped_any = router || (parts.proxy && proxy) || (parts.plugin && plugin);
        if parts.router && !stopped_any {
            eprintln!("Weave is not running.");
        } else if parts.proxy && !parts.router && !proxy {
            eprintln!("Proxy is not running.");
        } else if parts.plugin && !parts.router && !parts.proxy && !plugin {
            eprintln!("Plugin is not running.");
        }
    };
    let req = Request::Stop {
        router: parts.router,
        proxy: parts.proxy,
        plugin: parts.plugin,
    };
    // When the stop leaves nothing running, the daemon exits, and `stop` returns only once it
    // is gone (as `weave stop` returns once the container is), so the next `launch` never
    // meets a daemon on its way out.
    let daemon_pid = control::status(global).ok().flatten().map(|s| s.pid);
    match control::send(global, &req) {
        Ok(Response::Stopped {
            router,
            proxy,
            plugin,
        }) => {
            not_running(router, proxy, plugin);
            if let Some(pid) = daemon_pid {
                wait_for_exit(global, pid);
            }
            Ok(ExitCode::SUCCESS)
        }
        Ok(Response::Error { error }) => bail!("{error}"),
        Ok(other) => bail!("unexpected answer from the weft daemon: {other:?}"),
        Err(e) if control::is_not_running(&e) => {
            // A router from before the daemon (or a daemon that stopped answering).
            let killed = parts.router && crate::daemon::kill_stale(global)?;
            not_running(killed, false, false);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(e),
    }
}

/// Waits (at most 5 s) for daemon `pid` to exit, if it is exiting: once its control socket
/// no longer answers, no part of it runs any more.
fn wait_for_exit(global: &Global, pid: u32) {
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if let Ok(Some(s)) = control::status(global) {
            if s.router.is_some() || s.proxy.is_some() || s.plugin.is_some() {
                return; // Still serving the parts that were not stopped.
            }
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let gone = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
            .is_none_or(|state| state == 'Z' || state == 'X');
        if gone {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Arguments of `weave reset`.
#[derive(Debug, Args)]
pub(crate) struct ResetArgs {
    /// Reset even though the router is not running (its IP ranges are not handed over).
    #[arg(long)]
    force: bool,
}

/// `weave reset [--force]`: hand our IP ranges to a live peer (as Weave's `DELETE /peer`),
/// stop, and remove the bridge, its interfaces, the firewall rules and the stored state.
pub(crate) fn reset(global: &Global, args: ResetArgs) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    let running = control::status(global)
        .ok()
        .flatten()
        .is_some_and(|s| s.router.is_some());
    if running {
        let leave = rt.block_on(http::request(
            global.http_addr,
            hyper::Method::DELETE,
            "/peer",
            false,
        ));
        if let Ok((code, body)) = leave {
            if code.is_success() {
                eprint!("{body}");
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    } else if !args.force && global.state_dir.join("ipam.json").exists() {
        eprintln!("ERROR: weave is not running; unable to remove from cluster.");
        eprintln!("Re-launch weave before reset or use --force to override.");
        return Ok(ExitCode::FAILURE);
    }
    let _ = stop_quietly(global);
    rt.block_on(async {
        use weft_router::config::{BRIDGE, TAP};
        let nl = weft_sys::netlink::Netlink::new()?;
        if let Some(bridge) = nl.link_index(BRIDGE).await? {
            for (index, name) in nl.links_with_master(bridge).await? {
                if name.starts_with("vethwe") {
                    nl.delete_link(index).await?;
                }
            }
            nl.delete_link(bridge).await?;
        }
        if let Some(tap) = nl.link_index(TAP).await? {
            nl.delete_link(tap).await?;
        }
        // The kernel fast path's devices (a killed router leaves them).
        weft_router::fastdp::remove_leftovers(&nl).await?;
        // Container ends whose bridge went first.
        for (index, name) in nl.links().await? {
            if name.starts_with(weft_sys::plumb::HOST_PREFIX) {
                let _ = nl.delete_link(index).await;
            }
        }
        // The masquerade and forward rules that `expose` added, chains included.
        if let Err(e) = weft_sys::firewall::remove_chains(BRIDGE) {
            eprintln!("weft: removing firewall rules: {e}");
        }
        anyhow::Ok(())
    })?;
    for file in [
        "peer-name",
        "short-id",
        "ipam.json",
        "targets.json",
        "exposed.json",
        "waiter/w",
    ] {
        let path = global.state_dir.join(file);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Stops everything, saying nothing.
fn stop_quietly(global: &Global) -> anyhow::Result<()> {
    match control::send(
        global,
        &Request::Stop {
            router: true,
            proxy: true,
            plugin: true,
        },
    ) {
        Ok(_) => Ok(()),
        Err(e) if control::is_not_running(&e) => crate::daemon::kill_stale(global).map(drop),
        Err(e) => Err(e),
    }
}

/// What `weave env` reads: the running proxy's addresses (written when it starts).
pub(crate) const PROXY_FILE: &str = "proxy.json";

/// The running proxy's addresses, first one first (`None`: no proxy runs).
pub(crate) fn proxy_addrs(global: &Global) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(global.run_dir.join(PROXY_FILE)).ok()?;
    let info: serde_json::Value = serde_json::from_str(&text).ok()?;
    let list: Vec<String> = info["listen"]
        .as_array()?
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    (!list.is_empty()).then_some(list)
}

/// The proxy address a client on this host uses (Weave's `proxy_addr`: 0.0.0.0 becomes
/// `PROXY_HOST`, default 127.0.0.1).
fn client_proxy_addr(global: &Global) -> Option<String> {
    let first = proxy_addrs(global)?.into_iter().next()?;
    let host = std::env::var("PROXY_HOST")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "127.0.0.1".to_owned());
    Some(first.replace("0.0.0.0", &host))
}

/// Arguments of `weave env`.
#[derive(Debug, Args)]
pub(crate) struct EnvArgs {
    /// Print the line that points the docker client back where it was.
    #[arg(long)]
    restore: bool,
}

/// `weave env [--restore]`, as Weave's script prints them.
pub(crate) fn env(global: &Global, args: EnvArgs) -> anyhow::Result<ExitCode> {
    if args.restore {
        return match std::env::var("ORIG_DOCKER_HOST") {
            Ok(orig) => {
                println!("DOCKER_HOST={orig}");
                Ok(ExitCode::SUCCESS)
            }
            Err(_) => {
                eprintln!(
                    "Nothing to restore. This is most likely because there was no preceding \
                     invocation of 'eval $(weave env)' in this shell."
                );
                Ok(ExitCode::FAILURE)
            }
        };
    }
    let Some(addr) = client_proxy_addr(global) else {
        eprintln!("The weave proxy is not running: launch it with 'weave launch-proxy'.");
        return Ok(ExitCode::FAILURE);
    };
    let current = std::env::var("DOCKER_HOST").unwrap_or_default();
    if addr == current {
        println!("export DOCKER_HOST={addr}");
    } else {
        println!("export DOCKER_HOST={addr} ORIG_DOCKER_HOST={current}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `weave config`: `-H=<proxy address>`.
pub(crate) fn config(global: &Global) -> anyhow::Result<ExitCode> {
    match client_proxy_addr(global) {
        Some(addr) => {
            println!("-H={addr}");
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!("The weave proxy is not running: launch it with 'weave launch-proxy'.");
            Ok(ExitCode::FAILURE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[command(subcommand)]
        c: C,
    }

    #[derive(Debug, clap::Subcommand)]
    enum C {
        Launch(LaunchArgs),
    }

    fn parse(args: &[&str]) -> LaunchArgs {
        let mut v = vec!["t", "launch"];
        v.extend_from_slice(args);
        match T::try_parse_from(v)
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
            .c
        {
            C::Launch(a) => a,
        }
    }

    #[test]
    fn go_style_booleans_never_take_the_next_word() {
        let a = parse(&["--no-dns", "192.0.2.12", "192.0.2.13"]);
        assert!(a.router.no_dns);
        assert_eq!(a.router.peers, ["192.0.2.12", "192.0.2.13"]);
        let a = parse(&["--plugin=false", "--proxy=false", "--no-restart"]);
        assert_eq!(a.router.plugin, Some(false));
        assert_eq!(a.proxy.proxy, Some(false));
        assert!(a.common.no_restart);
        let a = parse(&["--proxy", "--rewrite-inspect=true", "--no-default-ipalloc"]);
        assert_eq!(a.proxy.proxy, Some(true));
        assert!(a.proxy.rewrite_inspect && a.proxy.no_default_ipalloc);
    }

    #[test]
    fn weave_spellings() {
        let a = parse(&[
            "--iprange",
            "10.2.0.0/16",
            "--ipsubnet=10.2.1.0/24",
            "--nodiscovery",
            "--log-level=warning",
            "-H",
            "tcp://127.0.0.1:12375",
            "-H=unix:///run/x.sock",
            "--token",
            "t",
        ]);
        assert_eq!(a.router.ipalloc_range.as_deref(), Some("10.2.0.0/16"));
        assert_eq!(
            a.router.ipalloc_default_subnet.as_deref(),
            Some("10.2.1.0/24")
        );
        assert!(a.router.no_discovery);
        assert_eq!(a.common.log_level.as_deref(), Some("warning"));
        assert_eq!(
            a.proxy.listen,
            ["tcp://127.0.0.1:12375", "unix:///run/x.sock"]
        );
        let notes = notes(Some(&a.router), &a.common);
        assert!(notes.iter().any(|n| n.contains("--token")), "{notes:?}");
    }

    #[test]
    fn refusals_say_why() {
        let a = parse(&["--awsvpc"]);
        assert!(a.router.check().unwrap_err().to_string().contains("awsvpc"));
        let a = parse(&["--tls"]);
        assert!(a.proxy.check().unwrap_err().to_string().contains("TLS"));
        let a = parse(&["--weave-bridge", "other"]);
        assert!(a.router.check().is_err());
        let a = parse(&["--resume", "192.0.2.1"]);
        assert!(a.router.check().is_err());
    }

    #[test]
    fn specs_round_trip_through_json() {
        let a = parse(&["--password", "s3cret", "--mtu", "1400", "192.0.2.1"]);
        let spec = RouterSpec {
            args: a.router,
            common: a.common,
            docker_api: "unix:///var/run/docker.sock".into(),
            range_given: false,
        };
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<RouterSpec>(&json).unwrap(), spec);
    }
}
