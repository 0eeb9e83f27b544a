//! Layer: driver. The CNI plugins `weave-net` and `weave-ipam`: the weft binary run under those
//! names (installed by `weft setup` into the CNI bin directory, chosen by `argv[0]` as the
//! `weave` name is). A container runtime runs them with the `CNI_*` environment and the network
//! configuration on stdin; they print a result or a CNI error on stdout.
//!
//! What to do is decided in the sans-IO crate [`weft_cni`] (parsing, versions, routes, CHECK,
//! GC); this module does the I/O: the namespace, the one attach path
//! ([`weft_router::attach::attach`], with the interface named `CNI_IFNAME`, hairpin mode and
//! routes), weft's IPAM over the router's HTTP API ([`weft_router::client::Http`]; the plugin
//! is its own process), or another IPAM plugin (`host-local`, ...) run from `CNI_PATH`, whose
//! addresses go through the attach path as given ([`weft_router::attach::Given`]).
//!
//! - ADD: addresses (weft IPAM: identifier `cni:NETWORK:CONTAINER:IFNAME`, in the `ipam`
//!   subnet or the default one), the interface, routes (Weave's: with none from IPAM, a default
//!   route through the bridge's address, exposing the bridge first if it has none), and a result
//!   with the interface, addresses, routes and weaveDNS's server and domain when DNS runs.
//! - DEL: the interface goes (if the namespace is still there) and the addresses are released;
//!   repeating it is fine.
//! - CHECK: the interface, MAC, addresses and routes of `prevResult` are there, and weft's IPAM
//!   still holds the addresses (another IPAM plugin is asked to CHECK its own).
//! - GC: addresses of this network's attachments the runtime no longer lists are released.
//! - STATUS: whether the router answers. VERSION: the versions spoken.
//!
//! The router is `WEAVE_HTTP_ADDR` (default 127.0.0.1:6784), as for the `weave` command.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command as Process, ExitCode, Stdio};

use ipnet::{IpNet, Ipv4Net};
use weft_cni::conf::{Ipam, NetConf, peek_version};
use weft_cni::env::{Command, Invocation};
use weft_cni::plan::{self, Added, Observed};
use weft_cni::result::CniResult;
use weft_cni::version::{Version, version_answer};
use weft_cni::{CniError, Code};
use weft_router::attach::{self, AddrSpec, AttachRequest, DetachWhat, Given, IpamAccess};
use weft_router::client::Http;
use weft_sys::netlink::Netlink;
use weft_sys::netns::NetNs;

/// Which plugin the binary was run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plugin {
    /// `weave-net`: the network plugin.
    Net,
    /// `weave-ipam`: the IPAM plugin.
    Ipam,
}

impl Plugin {
    /// The plugin `argv[0]` names, if any.
    pub(crate) fn from_name(invoked: &str) -> Option<Self> {
        match invoked {
            "weave-net" => Some(Self::Net),
            "weave-ipam" => Some(Self::Ipam),
            _ => None,
        }
    }
}

/// The router's API address.
fn api() -> SocketAddr {
    std::env::var("WEAVE_HTTP_ADDR")
        .ok()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 6784)))
}

/// Runs one CNI invocation and exits as CNI wants: the answer on stdout, 0 or 1.
pub(crate) fn main(plugin: Plugin) -> ExitCode {
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        return fail(
            weft_cni::version::LATEST,
            &CniError::new(Code::Io, format!("reading stdin: {e}")),
        );
    }
    let version = peek_version(&stdin);
    match run(plugin, &stdin) {
        Ok(Some(answer)) => {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{answer}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => fail(version, &e),
    }
}

fn fail(version: &str, e: &CniError) -> ExitCode {
    let _ = writeln!(std::io::stdout().lock(), "{}", e.to_json(version));
    eprintln!("weave-cni: {e}");
    ExitCode::FAILURE
}

fn run(plugin: Plugin, stdin: &[u8]) -> Result<Option<serde_json::Value>, CniError> {
    let inv = Invocation::from_vars(|k| std::env::var(k).ok())?;
    if inv.command == Command::Version {
        return Ok(Some(version_answer(peek_version(stdin))));
    }
    let conf = NetConf::parse(stdin)?;
    match inv.command {
        Command::Check if !conf.version.has_check() => {
            return Err(CniError::new(
                Code::IncompatibleVersion,
                format!(
                    "CHECK needs cniVersion 0.4.0 or later, not {}",
                    conf.version.as_str()
                ),
            ));
        }
        Command::Gc | Command::Status if !conf.version.has_gc() => {
            return Err(CniError::new(
                Code::IncompatibleVersion,
                format!(
                    "{} needs cniVersion 1.1.0 or later, not {}",
                    inv.command.as_str(),
                    conf.version.as_str()
                ),
            ));
        }
        _ => {}
    }
    if plugin == Plugin::Net {
        conf.check_weave_net()?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::new(Code::Io, format!("starting a runtime: {e}")))?;
    let ctx = Ctx {
        inv: &inv,
        conf: &conf,
        stdin,
        api: Http { api: api() },
    };
    rt.block_on(async {
        match (plugin, inv.command) {
            (Plugin::Net, Command::Add) => ctx.net_add().await.map(Some),
            (Plugin::Net, Command::Del) => ctx.net_del().await.map(|()| None),
            (Plugin::Net, Command::Check) => ctx.net_check().await.map(|()| None),
            (Plugin::Ipam, Command::Add) => ctx.ipam_add().await.map(Some),
            (Plugin::Ipam, Command::Del) => ctx.ipam_release().await.map(|()| None),
            (Plugin::Ipam, Command::Check) => ctx.ipam_check().await.map(|()| None),
            (_, Command::Gc) => ctx.gc().await.map(|()| None),
            (_, Command::Status) => ctx.status().await.map(|()| None),
            (_, Command::Version) => Ok(Some(version_answer(conf.version.as_str()))),
        }
    })
}

/// One invocation's inputs.
struct Ctx<'a> {
    inv: &'a Invocation,
    conf: &'a NetConf,
    stdin: &'a [u8],
    api: Http,
}

fn ipam_error(e: &anyhow::Error) -> CniError {
    CniError::new(Code::Ipam, format!("{e:#}"))
}

fn no_router(e: &anyhow::Error) -> CniError {
    CniError::new(
        Code::TryAgainLater,
        "the weft router does not answer; start it with 'weave launch'",
    )
    .with_details(format!("{e:#}"))
}

fn interface_error(e: &anyhow::Error) -> CniError {
    CniError::new(Code::Interface, format!("{e:#}"))
}

fn open_netns(path: &str) -> Result<NetNs, CniError> {
    NetNs::from_path(path).map_err(|e| {
        CniError::new(
            Code::UnknownContainer,
            format!("cannot open the network namespace {path}: {e}"),
        )
    })
}

impl Ctx<'_> {
    fn ident(&self) -> String {
        plan::ident(&self.conf.name, &self.inv.container_id, &self.inv.ifname)
    }

    /// Checks that the router answers (weft IPAM needs it); what IPAM holds for `ident`.
    async fn reachable(&self, ident: &str) -> Result<Option<Vec<Ipv4Net>>, CniError> {
        self.api.lookup(ident).await.map_err(|e| no_router(&e))
    }

    async fn net_add(&self) -> Result<serde_json::Value, CniError> {
        let netns = open_netns(&self.inv.netns)?;
        let ident = self.ident();
        let (specs, gateway, ipam_routes, delegated) = match &self.conf.ipam {
            Ipam::Weave {
                subnet,
                gateway,
                routes,
            } => {
                self.reachable(&ident).await?;
                let subnet = match subnet {
                    Some(s) => *s,
                    None => self.default_subnet().await?,
                };
                (
                    vec![AddrSpec::Subnet(subnet)],
                    gateway.map(|g| v4(g, "ipam.gateway")).transpose()?,
                    routes.clone(),
                    None,
                )
            }
            Ipam::Delegate { plugin } => {
                let got = self.delegate(plugin, Command::Add)?.unwrap_or_default();
                let result = CniResult::parse(&got)
                    .map_err(|e| CniError::new(e.code, format!("{plugin}'s result: {}", e.msg)))?;
                let mut specs = Vec::new();
                let mut gateway = None;
                for ip in &result.ips {
                    let IpNet::V4(a) = ip.address else {
                        self.undo_delegate(plugin);
                        return Err(CniError::new(
                            Code::UnsupportedField,
                            format!("{plugin} gave {}: weft's network is IPv4 only", ip.address),
                        ));
                    };
                    specs.push(AddrSpec::Address(a));
                    gateway = gateway.or(ip.gateway.and_then(|g| v4(g, "gateway").ok()));
                }
                if specs.is_empty() {
                    self.undo_delegate(plugin);
                    return Err(CniError::new(
                        Code::Ipam,
                        format!("{plugin} gave no address"),
                    ));
                }
                (specs, gateway, result.routes, Some(plugin.as_str()))
            }
        };
        let first = match specs[0] {
            AddrSpec::Subnet(n) | AddrSpec::Address(n) => n,
            AddrSpec::DefaultSubnet => Ipv4Net::default(),
        };
        let outcome = async {
            let gateway = match gateway {
                Some(g) => Some(g),
                None if ipam_routes.is_empty() => self.bridge_gateway(first, delegated).await?,
                None => None,
            };
            let routes = plan::routes(first, gateway, &ipam_routes)?;
            let route_pairs: Vec<(Ipv4Net, Option<Ipv4Addr>)> =
                routes.iter().map(|r| (r.dst, r.gw)).collect();
            let mtu = match self.conf.mtu {
                Some(m) => m,
                None => weft_router::client::mtu(self.api.api)
                    .await
                    .unwrap_or(weft_router::config::DEFAULT_MTU),
            };
            let req = AttachRequest {
                multicast_route: false,
                ifname: &self.inv.ifname,
                hairpin: self.conf.hairpin,
                routes: &route_pairs,
                ..AttachRequest::ethwe(&netns, None, &specs, mtu, &ident, &self.conf.bridge)
            };
            let attached = match delegated {
                None => attach::attach(&self.api, req, |_| {}).await,
                Some(_) => attach::attach(&Given, req, |_| {}).await,
            }
            .map_err(|e| interface_error(&e))?;
            let weave_dns = self.weave_dns().await;
            let dns = plan::merge_dns(
                &self.conf.dns,
                weave_dns.as_ref().map(|(a, d)| (*a, d.as_str())),
            );
            let result = plan::add_result(&Added {
                ifname: &self.inv.ifname,
                mac: attached.mac,
                mtu,
                sandbox: &self.inv.netns,
                addrs: &attached.addrs,
                gateway,
                routes: &routes,
                dns,
            });
            Ok::<_, CniError>(result.to_json(self.conf.version))
        }
        .await;
        if outcome.is_err() {
            match delegated {
                Some(plugin) => self.undo_delegate(plugin),
                None => {
                    // attach gives back what it took; a failure before it (routes, gateway)
                    // took nothing.
                }
            }
        }
        outcome
    }

    /// After a failed ADD, the delegated IPAM plugin's DEL (best effort).
    fn undo_delegate(&self, plugin: &str) {
        if let Err(e) = self.delegate(plugin, Command::Del) {
            eprintln!("weave-cni: releasing through {plugin} after a failed ADD: {e}");
        }
    }

    async fn default_subnet(&self) -> Result<Ipv4Net, CniError> {
        let (code, body) = weft_router::client::get(self.api.api, "/ipinfo/defaultsubnet", false)
            .await
            .map_err(|e| no_router(&e))?;
        if code == hyper::StatusCode::NOT_FOUND {
            return Err(CniError::new(
                Code::InvalidConfig,
                "IPAM is disabled on this router (--ipalloc-range \"\"): give weave-net another \
                 IPAM plugin (\"ipam\": {\"type\": \"host-local\", ...})",
            ));
        }
        body.trim().parse().map_err(|_| {
            CniError::new(
                Code::Ipam,
                format!("the router's default subnet is {:?}", body.trim()),
            )
        })
    }

    /// Weave's gateway: an address of the bridge (one in `subnet` if it has one), exposing the
    /// bridge first when it has none and weft's IPAM gives the addresses; `None` when the
    /// bridge has no address and another IPAM plugin gives them.
    async fn bridge_gateway(
        &self,
        subnet: Ipv4Net,
        delegated: Option<&str>,
    ) -> Result<Option<Ipv4Addr>, CniError> {
        let nl = Netlink::new().map_err(|e| interface_error(&e.into()))?;
        let Some(index) = nl
            .link_index(&self.conf.bridge)
            .await
            .map_err(|e| interface_error(&e.into()))?
        else {
            return Err(CniError::new(
                Code::Interface,
                format!(
                    "there is no bridge '{}' here; run 'weave launch' first",
                    self.conf.bridge
                ),
            ));
        };
        let addrs = weft_sys::plumb::ipv4_addrs(
            nl.addresses(index)
                .await
                .map_err(|e| interface_error(&e.into()))?,
        );
        let subnet = subnet.trunc();
        if let Some(a) = addrs
            .iter()
            .find(|a| subnet.contains(&a.addr()))
            .or(addrs.first())
        {
            return Ok(Some(a.addr()));
        }
        if delegated.is_some() {
            return Ok(None);
        }
        let cidr = crate::expose::expose_one(self.api.api, crate::expose::Addr::Net(subnet), false)
            .await
            .map_err(|e| {
                CniError::new(Code::Ipam, "exposing the bridge as the containers' gateway")
                    .with_details(format!("{e:#}"))
            })?;
        Ok(Some(cidr.addr()))
    }

    /// weaveDNS's address and domain, when the router runs it.
    async fn weave_dns(&self) -> Option<(Ipv4Addr, String)> {
        let domain = weft_router::dns::client::domain(self.api.api)
            .await
            .ok()??;
        let addr = weft_router::dns::client::address(self.api.api, "/dns-address")
            .await
            .ok()?;
        Some((addr.parse().ok()?, domain))
    }

    async fn net_del(&self) -> Result<(), CniError> {
        let ident = self.ident();
        if !self.inv.netns.is_empty() {
            // A namespace that is gone took the interface with it.
            if let Ok(netns) = NetNs::from_path(&self.inv.netns) {
                attach::detach_if(&Given, &netns, &self.inv.ifname, &ident, DetachWhat::All)
                    .await
                    .map_err(|e| interface_error(&e))?;
            }
        }
        match &self.conf.ipam {
            Ipam::Weave { .. } => self.ipam_release().await,
            Ipam::Delegate { plugin } => self.delegate(plugin, Command::Del).map(drop),
        }
    }

    async fn net_check(&self) -> Result<(), CniError> {
        let prev = self.conf.prev_result.as_ref().ok_or_else(|| {
            CniError::new(
                Code::InvalidConfig,
                "CHECK needs prevResult in the configuration",
            )
        })?;
        let netns = open_netns(&self.inv.netns)?;
        let held = match &self.conf.ipam {
            Ipam::Weave { .. } => Some(self.reachable(&self.ident()).await?.unwrap_or_default()),
            Ipam::Delegate { plugin } => {
                self.delegate(plugin, Command::Check)?;
                None
            }
        };
        let seen = weft_sys::plumb::inspect(&netns, &self.inv.ifname)
            .await
            .map_err(|e| interface_error(&e.into()))?
            .map(|i| Observed {
                mac: i.mac,
                addrs: i.addrs,
                routes: i.routes,
            });
        plan::check(
            prev,
            &self.inv.ifname,
            &self.inv.netns,
            seen.as_ref(),
            held.as_deref(),
        )
    }

    async fn ipam_add(&self) -> Result<serde_json::Value, CniError> {
        let Ipam::Weave {
            subnet,
            gateway,
            routes,
        } = &self.conf.ipam
        else {
            return Err(CniError::new(
                Code::InvalidConfig,
                "weave-ipam runs as the configuration's ipam (\"ipam\": {\"type\": \"weave-ipam\"})",
            ));
        };
        let ident = self.ident();
        self.reachable(&ident).await?;
        let spec = subnet.map_or(AddrSpec::DefaultSubnet, AddrSpec::Subnet);
        let addrs = attach::acquire(&self.api, &ident, &[spec])
            .await
            .map_err(|e| ipam_error(&e))?;
        let result = CniResult {
            ips: addrs
                .iter()
                .map(|a| weft_cni::result::IpConfig {
                    address: IpNet::V4(*a),
                    gateway: *gateway,
                    interface: None,
                })
                .collect(),
            routes: routes.clone(),
            dns: self.conf.dns.clone(),
            ..CniResult::default()
        };
        Ok(result.to_json(self.conf.version))
    }

    async fn ipam_release(&self) -> Result<(), CniError> {
        let ident = self.ident();
        self.reachable(&ident).await?;
        self.api
            .release(&ident, None)
            .await
            .map_err(|e| ipam_error(&e))
    }

    async fn ipam_check(&self) -> Result<(), CniError> {
        let held = self.reachable(&self.ident()).await?.unwrap_or_default();
        if held.is_empty() {
            return Err(CniError::new(
                Code::CheckFailed,
                format!("weft's IPAM holds no address for {}", self.ident()),
            ));
        }
        if let Some(prev) = &self.conf.prev_result {
            for ip in &prev.ips {
                if !held.iter().any(|h| IpNet::V4(*h) == ip.address) {
                    return Err(CniError::new(
                        Code::CheckFailed,
                        format!("weft's IPAM no longer holds {}", ip.address),
                    ));
                }
            }
        }
        Ok(())
    }

    async fn gc(&self) -> Result<(), CniError> {
        let valid = self.conf.valid_attachments.clone().unwrap_or_default();
        if let Ipam::Delegate { plugin } = &self.conf.ipam {
            // Only a plugin that speaks 1.1.0 knows GC.
            if self.delegate_speaks(plugin, Version::V110) {
                self.delegate(plugin, Command::Gc)?;
            }
            return Ok(());
        }
        let (code, body) = weft_router::client::get(self.api.api, "/ip", true)
            .await
            .map_err(|e| no_router(&e))?;
        if code == hyper::StatusCode::NOT_FOUND {
            return Ok(());
        }
        let list: serde_json::Value = serde_json::from_str(&body)
            .map_err(|e| CniError::new(Code::Ipam, format!("the router's /ip answer: {e}")))?;
        let owned: Vec<&str> = list["owned"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["containerid"].as_str())
            .collect();
        for ident in plan::gc_releases(owned, &self.conf.name, &valid) {
            self.api
                .release(&ident, None)
                .await
                .map_err(|e| ipam_error(&e))?;
            eprintln!("weave-cni: GC released the addresses of {ident}");
        }
        Ok(())
    }

    async fn status(&self) -> Result<(), CniError> {
        if let Ipam::Delegate { .. } = self.conf.ipam {
            return Ok(());
        }
        weft_router::client::get(self.api.api, "/status", true)
            .await
            .map(drop)
            .map_err(|e| {
                CniError::new(Code::NotAvailable, "the weft router does not answer")
                    .with_details(format!("{e:#}"))
            })
    }

    /// Runs IPAM plugin `plugin` from `CNI_PATH` for `command`, with this invocation's
    /// environment and configuration; its result (`None` when it printed nothing), or its
    /// error passed on.
    fn delegate(
        &self,
        plugin: &str,
        command: Command,
    ) -> Result<Option<serde_json::Value>, CniError> {
        let bin = find_plugin(&self.inv.path, plugin)?;
        let mut child = Process::new(&bin)
            .env("CNI_COMMAND", command.as_str())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| CniError::new(Code::Io, format!("running {}: {e}", bin.display())))?;
        if let Some(mut input) = child.stdin.take() {
            input
                .write_all(self.stdin)
                .map_err(|e| CniError::new(Code::Io, format!("writing to {plugin}: {e}")))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| CniError::new(Code::Io, format!("waiting for {plugin}: {e}")))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let value = if text.trim().is_empty() {
            None
        } else {
            Some(
                serde_json::from_str::<serde_json::Value>(&text).map_err(|e| {
                    CniError::new(
                        Code::Decode,
                        format!("{plugin} printed something that is not JSON: {e}"),
                    )
                })?,
            )
        };
        if out.status.success() {
            return Ok(value);
        }
        let v = value.unwrap_or_default();
        let code = v["code"]
            .as_u64()
            .and_then(|c| u32::try_from(c).ok())
            .unwrap_or(999);
        let msg = v["msg"].as_str().unwrap_or("failed without a message");
        Err(
            CniError::new(Code::Plugin(code), format!("{plugin}: {msg}"))
                .with_details(v["details"].as_str().unwrap_or_default()),
        )
    }

    /// Whether `plugin` says (VERSION) it speaks `version`.
    fn delegate_speaks(&self, plugin: &str, version: Version) -> bool {
        let Ok(Some(v)) = self.delegate(plugin, Command::Version) else {
            return false;
        };
        v["supportedVersions"]
            .as_array()
            .is_some_and(|l| l.iter().any(|s| s.as_str() == Some(version.as_str())))
    }
}

fn v4(ip: std::net::IpAddr, what: &str) -> Result<Ipv4Addr, CniError> {
    match ip {
        std::net::IpAddr::V4(a) => Ok(a),
        std::net::IpAddr::V6(_) => Err(CniError::new(
            Code::UnsupportedField,
            format!("{what} {ip}: weft's network is IPv4 only"),
        )),
    }
}

/// The binary of plugin `name` in the `CNI_PATH` directories.
fn find_plugin(path: &[String], name: &str) -> Result<PathBuf, CniError> {
    path.iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::new(
                Code::InvalidConfig,
                format!(
                    "IPAM plugin {name:?} not found in CNI_PATH ({})",
                    path.join(":")
                ),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_names() {
        assert_eq!(Plugin::from_name("weave-net"), Some(Plugin::Net));
        assert_eq!(Plugin::from_name("weave-ipam"), Some(Plugin::Ipam));
        assert_eq!(Plugin::from_name("weave"), None);
    }

    #[test]
    fn plugins_are_found_on_the_path() {
        let dir = std::env::temp_dir().join(format!("weft-cni-find-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("host-local"), "").unwrap();
        let path = vec!["/nonexistent".to_owned(), dir.display().to_string()];
        assert_eq!(
            find_plugin(&path, "host-local").unwrap(),
            dir.join("host-local")
        );
        let e = find_plugin(&path, "static").unwrap_err();
        assert_eq!(e.code, Code::InvalidConfig);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
