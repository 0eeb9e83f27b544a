//! Layer: driver. weaveDNS in the router: the sans-IO [`weft_dns::Names`] gets its gossip over
//! channel [`DNS_CHANNEL`] of the control connections (flooded and routed by a
//! [`ChannelRouter`], as IPAM's), keeps this peer's own entries in `<state-dir>/dns.json`, and
//! answers queries on UDP and TCP ([`server`]); `/name`, `/domain`, `/dns-address`,
//! `/dns-address-port` and `/status/dns` are its HTTP API ([`api`]); [`client`] is the side the
//! CLI and the Docker proxy use.
//!
//! The control plane reaches it through a handful of hooks ([`poll`], [`poll_timeout`],
//! [`on_envelope`], [`neighbour_up`], [`peers_changed`], [`forget_peer`]), called where IPAM's
//! are: the only places they take DNS's own lock in the router ([`crate::state::DnsState`]).
//! Queries never take that lock, only the names' own.

pub mod api;
pub mod client;
pub mod server;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use weft_dns::{Names, Now, Outgoing, Responder};
use weft_mesh::{ChannelRouter, Instant, PeerName, Routes};

use crate::dataplane::Clock;
use crate::state::{DnsEntryReport, DnsReport, DnsState};

/// The gossip channel DNS entries travel on.
pub const DNS_CHANNEL: u8 = 2;

/// Identifier of names registered for addresses outside any container (`dns-add IP -h NAME`).
pub const EXTERN_IDENT: &str = "weave:extern";

/// DNS settings (`--dns-*`, `--resolv-conf`).
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// Where to listen; `None`: the Docker bridge's address, else each address of the weave
    /// bridge (as `weft expose` adds them), port 53.
    pub listen: Option<SocketAddr>,
    /// The domain served.
    pub domain: String,
    /// TTL of answers (seconds).
    pub ttl: u32,
    /// Where the upstream servers are read from.
    pub resolv_conf: PathBuf,
    /// How long each upstream server gets to answer.
    pub fallback_timeout: Duration,
    /// Queries per second one client address may cause (0: no limit).
    pub rate_limit: u32,
    /// The Docker bridge whose address is the default listen address.
    pub docker_bridge: String,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            listen: None,
            domain: weft_dns::DEFAULT_DOMAIN.to_owned(),
            ttl: weft_dns::DEFAULT_TTL,
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            fallback_timeout: Duration::from_secs(5),
            rate_limit: DEFAULT_RATE_LIMIT,
            docker_bridge: "docker0".to_owned(),
        }
    }
}

/// Default per-client query rate limit.
pub const DEFAULT_RATE_LIMIT: u32 = 1000;

/// Query counters (exported as `weft_dns_*_total`).
#[derive(Debug, Default)]
pub struct DnsCounters {
    /// Queries received (UDP datagrams and TCP messages).
    pub queries: AtomicU64,
    /// Answered from the names.
    pub local_answers: AtomicU64,
    /// NXDOMAIN for names in the domain.
    pub nxdomain: AtomicU64,
    /// Sent to the upstream servers.
    pub forwarded: AtomicU64,
    /// Forwarded queries no upstream answered (SERVFAIL).
    pub upstream_failures: AtomicU64,
    /// Malformed queries (FORMERR, NOTIMP, or ignored).
    pub malformed: AtomicU64,
    /// Queries dropped: over a client's rate, too many in flight, too many TCP connections.
    pub dropped: AtomicU64,
}

impl DnsCounters {
    /// Adds one to `c`.
    pub fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// (name, value) of every counter.
    pub fn fields(&self) -> [(&'static str, u64); 7] {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("dns_queries", g(&self.queries)),
            ("dns_local_answers", g(&self.local_answers)),
            ("dns_nxdomain", g(&self.nxdomain)),
            ("dns_forwarded", g(&self.forwarded)),
            ("dns_upstream_failures", g(&self.upstream_failures)),
            ("dns_malformed", g(&self.malformed)),
            ("dns_dropped", g(&self.dropped)),
        ]
    }
}

/// What the DNS server, the API and the control plane share.
#[derive(Debug)]
pub struct DnsService {
    /// Settings.
    pub config: DnsConfig,
    /// The entries.
    names: Mutex<Names>,
    /// Answers queries.
    pub responder: Responder,
    /// Counters.
    pub counters: DnsCounters,
    /// The addresses the server listens on now.
    pub listening: Mutex<Vec<SocketAddr>>,
    /// The router's clock.
    pub clock: Clock,
    /// The upstream servers as last read.
    resolv: Mutex<server::ResolvCache>,
    /// The weave bridge (whose addresses are listened on when there is no Docker bridge).
    pub weave_bridge: String,
}

impl DnsService {
    /// A service for peer `local` next to bridge `weave_bridge`, with the own entries kept in
    /// `state_file` put back.
    pub fn new(
        config: DnsConfig,
        local: PeerName,
        clock: Clock,
        state_file: &Path,
        weave_bridge: &str,
    ) -> anyhow::Result<Self> {
        let now = wall(clock.now());
        let mut names = Names::new(local, &config.domain, now)
            .map_err(|e| anyhow::anyhow!("--dns-domain: {e}"))?;
        match std::fs::read(state_file) {
            Ok(bytes) => match serde_json::from_slice::<Vec<weft_dns::Entry>>(&bytes) {
                Ok(kept) => {
                    let n = names.restore(now, kept);
                    tracing::info!("restored {n} DNS entries from {}", state_file.display());
                }
                Err(e) => tracing::warn!("ignoring {}: {e}", state_file.display()),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("cannot read {}: {e}", state_file.display()),
        }
        Ok(Self {
            responder: Responder::new(config.ttl),
            config,
            names: Mutex::new(names),
            counters: DnsCounters::default(),
            listening: Mutex::new(Vec::new()),
            clock,
            resolv: Mutex::default(),
            weave_bridge: weave_bridge.to_owned(),
        })
    }

    /// The names, locked (a poisoned lock still holds the best state there is).
    pub fn names(&self) -> MutexGuard<'_, Names> {
        self.names.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The time now, as [`Names`] takes it.
    pub fn now(&self) -> Now {
        wall(self.clock.now())
    }

    /// Where the server listens now.
    pub fn listening(&self) -> Vec<SocketAddr> {
        self.listening
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// DNS's part of the router state.
#[derive(Debug)]
pub struct DnsDriver {
    /// Shared with the server and the API.
    pub service: Arc<DnsService>,
    /// Flooding and routing of its gossip.
    pub channel: ChannelRouter,
    /// Where the own entries are kept.
    pub state_file: PathBuf,
}

/// `now` with the wall-clock second.
pub fn wall(mono: Instant) -> Now {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Now { mono, unix }
}

// ---- control-plane hooks (called from control.rs where IPAM's are; issue 12's Node takes
// ---- them over as its DNS channel registration) ----

/// Runs the timers, keeps the own entries on disk when they changed, and returns the gossip
/// to send: (neighbour, encoded envelope).
pub fn poll(
    state: &mut DnsState,
    now: Instant,
    neighbours: &[PeerName],
    routes: &Routes,
) -> Vec<(PeerName, Vec<u8>)> {
    let Some(drv) = state.dns.as_mut() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut names = drv.service.names();
    names.handle_timeout(wall(now));
    while let Some(o) = names.poll_transmit() {
        let (dest, payload) = match o {
            Outgoing::Broadcast(p) => (None, p),
            Outgoing::Unicast(peer, p) => (Some(peer), p),
        };
        out.extend(drv.channel.send(dest, payload, neighbours, routes));
    }
    if names.take_own_changed() {
        persist(&drv.state_file, &names.own_entries());
    }
    out
}

/// When [`poll`] wants to run next.
pub fn poll_timeout(state: &DnsState) -> Option<Instant> {
    state
        .dns
        .as_ref()
        .and_then(|d| d.service.names().poll_timeout())
}

/// An envelope arrived on [`DNS_CHANNEL`] from neighbour `from`: deliver it, and return what
/// to pass on. `Err` is a message for the log (the caller counts it).
pub fn on_envelope(
    state: &mut DnsState,
    now: Instant,
    from: PeerName,
    bytes: &[u8],
    neighbours: &[PeerName],
    routes: &Routes,
) -> Result<Vec<(PeerName, Vec<u8>)>, String> {
    let Some(drv) = state.dns.as_mut() else {
        return Ok(Vec::new());
    };
    let handled = drv
        .channel
        .handle(from, bytes, neighbours, routes)
        .map_err(|e| e.to_string())?;
    let mut result = Ok(handled.forward);
    if let Some((origin, payload)) = handled.deliver {
        if let Err(e) = drv
            .service
            .names()
            .handle_message(wall(now), origin, &payload)
        {
            result = result.and(Err(format!("from {origin}: {e}")));
        }
    }
    result
}

/// A connection to `peer` is ready: it gets our whole state.
pub fn neighbour_up(state: &DnsState, peer: PeerName) {
    if let Some(drv) = state.dns.as_ref() {
        drv.service.names().neighbour_up(peer);
    }
}

/// The topology changed.
pub fn peers_changed(state: &DnsState, now: Instant, known: &[PeerName], reachable: &[PeerName]) {
    if let Some(drv) = state.dns.as_ref() {
        drv.service
            .names()
            .peers_changed(wall(now), known, reachable);
    }
}

/// `rmpeer`: drop `peer`'s entries here and everywhere. Returns how many were dropped here
/// (none while the peer is reachable: it is not dead).
pub fn forget_peer(state: &DnsState, now: Instant, peer: PeerName, reachable: bool) -> usize {
    if reachable {
        return 0;
    }
    state
        .dns
        .as_ref()
        .map_or(0, |d| d.service.names().forget_peer(wall(now), peer))
}

/// Entries kept on disk as JSON.
fn persist(file: &Path, entries: &[weft_dns::Entry]) {
    match serde_json::to_vec(entries) {
        Ok(json) => {
            if let Err(e) = crate::identity::write_atomic(file, &json) {
                tracing::error!("cannot keep DNS entries in {}: {e}", file.display());
            }
        }
        Err(e) => tracing::error!("cannot encode DNS entries: {e}"),
    }
}

// ---- status and report ----

/// The `DNS` section of the report, if DNS runs.
pub fn status(state: &DnsState) -> Option<DnsReport> {
    let svc = state.dns.as_ref()?.service.clone();
    let entries = svc
        .names()
        .entries()
        .map(|e| DnsEntryReport {
            hostname: e.hostname.clone(),
            origin: e.origin.to_string(),
            container_id: e.container.clone(),
            address: e.addr.to_string(),
            version: e.version,
            tombstone: e.tombstone,
        })
        .collect();
    let listening = svc.listening();
    Some(DnsReport {
        domain: svc.names().domain().to_owned(),
        upstream: server::upstream_servers(&svc)
            .iter()
            .map(|a| a.ip().to_string())
            .collect(),
        address: listening
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        ttl: svc.config.ttl,
        entries,
    })
}

/// Counters and the `weave_dns_entries` gauge (this peer's live entries), if DNS runs.
pub fn metrics(state: &DnsState) -> Option<(Vec<(&'static str, u64)>, usize)> {
    let svc = &state.dns.as_ref()?.service;
    let names = svc.names();
    Some((
        svc.counters.fields().to_vec(),
        names.live_from(names.local()),
    ))
}
