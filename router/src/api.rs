//! Layer: driver. The HTTP API on 127.0.0.1:6784, after Weave's: `GET /status` (text, or
//! weft's JSON when asked with `Accept: application/json`), `/status/peers`,
//! `/status/connections`, `/status/targets`, `/status/ipam`, `/status/dns`, `/report` (Weave's
//! JSON, or a Go template's output with `?format=`), `/metrics` (Prometheus), `/ipinfo/*`,
//! `/proxyaddrs`, `/domain`, and the calls that change things (`/connect`, `/forget`, expose,
//! IPAM). The read-only part is also served on the status listener (127.0.0.1:6782 by
//! default, `--status-addr`) and `/metrics` alone on `--metrics-addr`.
//!
//! Every output is a function of one [`StatusReport`] snapshot ([`build_report`]); the Weave
//! shapes are made from it in [`crate::report`] and [`crate::metrics`].

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use weft_mesh::{PeerName, TargetState};

use crate::config::{Config, ListenAddr, PROXY_FILE, parse_peer};
use crate::control::{NodeInput, TargetChange};
use crate::report;
use crate::state::{
    BroadcastRouteReport, ClaimReport, ConflictReport, ConnState, ConnectionReport,
    ConsensusReport, IpamEntryReport, IpamPeerReport, IpamReport, PeerConnReport, PeerReport,
    RouteReport, Shared, StatusReport,
};

/// The API's routes.
pub fn router(shared: Arc<Shared>) -> Router {
    read_only()
        .route("/connect", post(connect))
        .route("/forget", post(forget))
        .route("/ipinfo/defaultsubnet", get(default_subnet))
        .route("/ipinfo/tracker", get(tracker))
        .route("/proxyaddrs", get(proxy_addrs))
        .route("/domain", get(domain))
        .merge(crate::expose::routes())
        .merge(crate::ipam::routes())
        .merge(crate::dns::api::routes())
        .merge(crate::topology::routes())
        .with_state(shared)
}

/// What the status listener serves: reports only, every one `GET` (anything else is refused).
fn read_only() -> Router<Arc<Shared>> {
    Router::new()
        .route("/status", get(status))
        .route("/status/{sub}", get(status_sub))
        .route("/report", get(report))
        .route("/metrics", get(metrics))
}

/// A bound status or metrics listener.
#[derive(Debug)]
pub enum Listener {
    /// On a TCP address.
    Tcp(tokio::net::TcpListener),
    /// On a unix socket.
    Unix(tokio::net::UnixListener),
}

/// The extra read-only listeners `config` asks for, bound (so a busy address fails the launch):
/// each with whether it serves `/metrics` only.
pub async fn bind_read_only(config: &Config) -> anyhow::Result<Vec<(Listener, bool)>> {
    let mut out = Vec::new();
    for (addr, metrics_only) in [(&config.status_addr, false), (&config.metrics_addr, true)] {
        let Some(addr) = addr else { continue };
        let what = if metrics_only { "metrics" } else { "status" };
        let l =
            match addr {
                ListenAddr::Tcp(a) => Listener::Tcp(
                    tokio::net::TcpListener::bind(a)
                        .await
                        .with_context(|| format!("binding the {what} listener on {a}"))?,
                ),
                ListenAddr::Unix(p) => {
                    // A socket left by an earlier run (never anything else).
                    use std::os::unix::fs::FileTypeExt as _;
                    if std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket()) {
                        let _ = std::fs::remove_file(p);
                    }
                    Listener::Unix(tokio::net::UnixListener::bind(p).with_context(|| {
                        format!("binding the {what} listener on {}", p.display())
                    })?)
                }
            };
        tracing::info!("listening for {what} requests on {addr}");
        out.push((l, metrics_only));
    }
    Ok(out)
}

/// Serves a listener from [`bind_read_only`] until the task is aborted.
pub async fn serve_read_only(shared: Arc<Shared>, listener: Listener, metrics_only: bool) {
    let app = if metrics_only {
        Router::new().route("/metrics", get(metrics))
    } else {
        read_only()
    }
    .with_state(shared);
    match listener {
        // Capped and timed out like the main API (every method but GET is refused anyway).
        Listener::Tcp(l) => crate::guard::serve(l, app, crate::guard::ApiLimits::default()).await,
        Listener::Unix(l) => {
            if let Err(e) = axum::serve(l, app).await {
                tracing::error!("status listener stopped: {e}");
            }
        }
    }
}

fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"))
}

fn json(report: &impl serde::Serialize) -> Response {
    match serde_json::to_string_pretty(report) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

async fn status(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let r = build_report(&shared);
    if wants_json(&headers) {
        json(&r)
    } else {
        text(report::render_status(&report::weave_status(&r)))
    }
}

/// Weave's status code for a report whose component is off (its template fails on the nil
/// component); the body says which.
fn component_off(what: &str) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, format!("{what}\n")).into_response()
}

const IPAM_OFF: &str = "IPAM is disabled on this router (--ipalloc-range \"\")";
const DNS_OFF: &str = "weaveDNS is not running on this router";

async fn status_sub(
    State(shared): State<Arc<Shared>>,
    axum::extract::Path(sub): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    let r = build_report(&shared);
    let as_json = wants_json(&headers);
    let w = report::weave_status(&r);
    match sub.as_str() {
        "peers" if as_json => json(&r.peers),
        "peers" => text(report::render_peers(&w)),
        "connections" if as_json => json(&r.connections),
        "connections" => text(report::render_connections(&w)),
        "targets" if as_json => json(&r.targets),
        "targets" => text(report::render_targets(&w)),
        "ipam" => match (&r.ipam, report::render_ipam(&w)) {
            (Some(i), _) if as_json => json(i),
            // Weave's lines, then weft's about the store and duplicates (none while all is well).
            (Some(i), Some(t)) => text(t + &crate::ipam::health_lines(i)),
            (_, Some(t)) => text(t),
            _ => component_off(IPAM_OFF),
        },
        "dns" => match (&r.dns, report::render_dns(&w)) {
            (Some(d), _) if as_json => json(d),
            (_, Some(t)) => text(t),
            _ => component_off(DNS_OFF),
        },
        _ => (
            StatusCode::NOT_FOUND,
            format!("unknown status report '{sub}'\n"),
        )
            .into_response(),
    }
}

/// `GET /report`: Weave's JSON with `Accept: application/json`; otherwise exactly one
/// `format=TEMPLATE` parameter, a Go template run over the same report. A template that does
/// not parse or run is a 400 with the reason.
async fn report(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let w = report::weave_status(&build_report(&shared));
    if wants_json(&headers) {
        return (
            [(header::CONTENT_TYPE, "application/json")],
            report::to_json(&w),
        )
            .into_response();
    }
    let formats: Vec<String> = parse_form(query.unwrap_or_default().as_bytes())
        .into_iter()
        .filter(|(k, _)| k == "format")
        .map(|(_, v)| v)
        .collect();
    let [format] = formats.as_slice() else {
        return (
            StatusCode::BAD_REQUEST,
            "error: must supply one format parameter\n",
        )
            .into_response();
    };
    match report::execute(&w, format) {
        Ok(out) => text(out),
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let r = build_report(&shared);
    let mut body = crate::metrics::render(&r, &report::weave_status(&r));
    body.push_str(&crate::ipam::metrics(&shared));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "404 page not found\n").into_response()
}

/// `GET /ipinfo/defaultsubnet`: the subnet `net:default` allocates in (404 without IPAM).
async fn default_subnet(State(shared): State<Arc<Shared>>) -> Response {
    match build_report(&shared).ipam {
        Some(i) => text(i.default_subnet),
        None => not_found(),
    }
}

/// `GET /ipinfo/tracker`: the IPAM tracker's name; weft has only the default one, which Weave
/// prints as an empty line.
async fn tracker(State(shared): State<Arc<Shared>>) -> Response {
    match build_report(&shared).ipam {
        Some(_) => text("\n".to_owned()),
        None => not_found(),
    }
}

/// `GET /proxyaddrs`: the Docker API proxy's addresses, one per line (404 without a proxy).
async fn proxy_addrs(State(shared): State<Arc<Shared>>) -> Response {
    match build_report(&shared).proxy {
        Some(addrs) => text(addrs.iter().map(|a| format!("{a}\n")).collect()),
        None => not_found(),
    }
}

/// `GET /domain`: weaveDNS's domain (404 while DNS is not running).
async fn domain(State(shared): State<Arc<Shared>>) -> Response {
    match build_report(&shared).dns {
        Some(d) => text(d.domain),
        None => not_found(),
    }
}

/// `POST /connect` with form values `peer=ADDR` (repeatable) and `replace=true`: add direct
/// targets (or replace the list), keep the list on disk, dial at once.
async fn connect(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    change_targets(&shared, &body, true).await
}

/// `POST /forget` with form values `peer=ADDR`: stop dialling these targets (live connections
/// stay up, as in Weave).
async fn forget(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    change_targets(&shared, &body, false).await
}

async fn change_targets(shared: &Shared, body: &[u8], connect: bool) -> Response {
    let form = parse_form(body);
    let mut addrs = Vec::new();
    let mut errors = Vec::new();
    for (key, value) in &form {
        if key == "peer" {
            match parse_peer(value, shared.info.port) {
                Ok(a) => addrs.push(a),
                Err(e) => errors.push(e),
            }
        }
    }
    if !errors.is_empty() {
        return (StatusCode::BAD_REQUEST, format!("{}\n", errors.join("\n"))).into_response();
    }
    let replace = form.iter().any(|(k, v)| k == "replace" && v == "true");
    let change = match (connect, replace) {
        (true, true) => TargetChange::Replace,
        (true, false) => TargetChange::Add,
        (false, _) => TargetChange::Forget,
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    let input = NodeInput::Targets {
        change,
        addrs,
        reply,
    };
    if shared.node.send(input).is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "router shutting down\n").into_response();
    }
    let Ok(targets) = answer.await else {
        return (StatusCode::SERVICE_UNAVAILABLE, "router shutting down\n").into_response();
    };
    if let Err(e) = crate::run::save_targets(&shared.targets_file, &targets) {
        return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n")).into_response();
    }
    StatusCode::NO_CONTENT.into_response()
}

/// Decode an `application/x-www-form-urlencoded` body into its pairs, keeping repeated keys.
pub fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    fn decode(s: &[u8]) -> String {
        let mut out = Vec::with_capacity(s.len());
        let mut i = 0;
        while i < s.len() {
            match s[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < s.len() => {
                    let hex = std::str::from_utf8(&s[i + 1..i + 3]).ok();
                    match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                        Some(b) => {
                            out.push(b);
                            i += 2;
                        }
                        None => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    body.split(|&b| b == b'&')
        .filter(|part| !part.is_empty())
        .map(|part| match part.iter().position(|&b| b == b'=') {
            Some(eq) => (decode(&part[..eq]), decode(&part[eq + 1..])),
            None => (decode(part), String::new()),
        })
        .collect()
}

/// Build the status report from the shared state.
pub fn build_report(shared: &Shared) -> StatusReport {
    let info = &shared.info;
    let proxy = proxy_listen(&shared.run_dir);
    let view = shared.view();
    let topo = &view.topology;
    let routes = &view.routes;
    let local = topo.local_name();
    let label = |name: PeerName| match topo.peer(name) {
        Some(p) => format!("{}({})", p.name, p.nickname),
        None => name.to_string(),
    };
    let path_to = |name: PeerName| -> String {
        if name == local {
            return String::new();
        }
        match routes.path(name) {
            Some(path) if path.len() <= 1 => "direct".to_owned(),
            Some(path) => format!("via {}", label(path[0])),
            None => "unreachable".to_owned(),
        }
    };
    let peers: Vec<PeerReport> = topo
        .peers()
        .map(|p| PeerReport {
            name: p.name.to_string(),
            nickname: p.nickname.clone(),
            short_id: p.short_id.get(),
            uid: p.uid,
            version: p.version,
            connections: p
                .connections
                .iter()
                .map(|c| PeerConnReport {
                    name: c.remote.to_string(),
                    nickname: topo
                        .peer(c.remote)
                        .map(|r| r.nickname.clone())
                        .unwrap_or_default(),
                    address: c.address.clone(),
                    outbound: c.outbound,
                    established: c.established,
                })
                .collect(),
            path: path_to(p.name),
        })
        .collect();
    let mut connections = Vec::new();
    for rec in &view.conns {
        let (name, nickname, path) = match rec.remote {
            Some(n) => (n.to_string(), rec.nickname.clone(), "direct".to_owned()),
            None => (String::new(), String::new(), String::new()),
        };
        let info = if rec.remote.is_some() && !rec.carrier {
            "duplicate, closing".to_owned()
        } else if rec.state == ConnState::Established && !rec.path_up {
            "data path down (no heartbeats)".to_owned()
        } else {
            // Why a connection that could use the kernel fast path does not (nothing when
            // this router runs without one, as Weave with --no-fastdp prints nothing).
            rec.fastdp_reason
                .filter(|r| *r != weft_node::FASTDP_OFF_HERE)
                .unwrap_or_default()
                .to_owned()
        };
        // Past the handshake: the kernel fast path, or weft's userspace path.
        let overlay = match (&rec.remote, rec.fastdp) {
            (None, _) => "",
            (Some(_), true) => "fastdp",
            (Some(_), false) => "sleeve",
        };
        connections.push(ConnectionReport {
            address: rec.address.to_string(),
            outbound: rec.outbound,
            state: rec.state,
            info,
            name,
            nickname,
            path,
            encrypted: rec.protection.map(|p| p.data.is_some()),
            control_encrypted: rec.protection.map(|p| p.control),
            cipher: rec
                .protection
                .and_then(|p| p.data)
                .map(|c| c.name().to_owned())
                .unwrap_or_default(),
            overlay: overlay.to_owned(),
            path_mtu: rec.path_mtu,
        });
    }
    // Targets with no live connection show their dialling state, and how the peer at that
    // address is reached meanwhile, if the topology knows it.
    for (addr, _direct, tstate) in view.targets.iter().cloned() {
        if view.conns.iter().any(|r| r.address.ip() == addr.ip()) {
            continue;
        }
        let (st, info) = match tstate {
            TargetState::Idle => (ConnState::Connecting, String::new()),
            TargetState::Connecting => (ConnState::Connecting, String::new()),
            TargetState::Connected => continue,
            TargetState::Retrying { error, next } => {
                let wait = next.saturating_duration_since(shared.clock.now());
                (
                    ConnState::Retrying,
                    format!("{error}, retry in {:.1}s", wait.as_secs_f64()),
                )
            }
            TargetState::Failed { error } => (ConnState::Failed, format!("{error}, retry: never")),
        };
        let peer = peer_at(topo, addr.ip());
        let (name, nickname, path) = match peer {
            Some(n) => (
                n.to_string(),
                topo.peer(n).map(|p| p.nickname.clone()).unwrap_or_default(),
                path_to(n),
            ),
            None => (String::new(), String::new(), String::new()),
        };
        connections.push(ConnectionReport {
            address: addr.to_string(),
            outbound: true,
            state: st,
            info,
            name,
            nickname,
            path,
            encrypted: None,
            control_encrypted: None,
            cipher: String::new(),
            overlay: String::new(),
            path_mtu: None,
        });
    }
    let (mut counters, links) = {
        let published = shared.published();
        let counters: BTreeMap<String, u64> = (published.counters.fields().iter())
            .map(|(name, _, v)| ((*name).to_owned(), *v))
            .collect();
        let mut counters = counters;
        let mut traffic = published.link_traffic.clone();
        let mut fast = weft_sys::netlink::LinkStats::default();
        for (ip, s) in &published.fastdp_traffic {
            traffic.add_fastdp(*ip, s);
            fast += *s;
        }
        for (name, v) in [
            ("fastdp_rx_packets", fast.rx_packets),
            ("fastdp_tx_packets", fast.tx_packets),
            ("fastdp_rx_bytes", fast.rx_bytes),
            ("fastdp_tx_bytes", fast.tx_bytes),
            ("fastdp_rx_dropped", fast.rx_dropped),
            ("fastdp_tx_dropped", fast.tx_dropped),
        ] {
            counters.insert(name.to_owned(), v);
        }
        (counters, link_reports(&traffic, &view))
    };
    counters.insert(
        "control_handshake_failures".into(),
        view.stats.handshake_failures,
    );
    counters.insert("gossip_errors".into(), view.stats.gossip_errors);
    counters.insert("data_paths_down".into(), view.stats.paths_down);
    counters.insert("data_paths_up".into(), view.stats.paths_up);
    counters.insert("fastdp_switches_up".into(), view.stats.fastdp_up);
    counters.insert("fastdp_switches_down".into(), view.stats.fastdp_down);
    let g = view.gossip;
    counters.insert("gossip_bytes_sent".into(), g.bytes_sent);
    counters.insert("gossip_bytes_received".into(), g.bytes_received);
    counters.insert("gossip_messages_sent".into(), g.messages_sent);
    counters.insert("gossip_messages_received".into(), g.messages_received);
    let dns = shared.dns();
    if let Some((dns_counters, _)) = crate::dns::metrics(&dns) {
        counters.extend(dns_counters.into_iter().map(|(k, v)| (k.to_owned(), v)));
        counters.insert("dns_gossip_errors".into(), dns.dns_errors);
    }
    let dns_report = crate::dns::status(&dns);
    drop(dns);
    let ipam = (shared.ipam().ipam.as_ref()).map(|drv| ipam_report(&drv.ipam.status()));
    StatusReport {
        name: info.name.clone(),
        nickname: info.nickname.clone(),
        short_id: topo.local().short_id.get(),
        uid: info.uid,
        version: info.version.clone(),
        protocol: format!("weft {}..{}", info.protocol_min, info.protocol_max),
        port: info.port,
        data_port: info.data_port,
        fastdp_port: info.fastdp_port,
        mtu: info.mtu,
        encryption: info.encryption,
        peers,
        connections,
        targets: view
            .direct_targets
            .iter()
            .map(ToString::to_string)
            .collect(),
        discovery: info.discovery,
        counters,
        protocol_min: info.protocol_min,
        protocol_max: info.protocol_max,
        trusted_subnets: info.trusted_subnets.clone(),
        terminations: view.terminations,
        unicast_routes: routes
            .reachable()
            .filter_map(|dest| {
                routes.next_hop(dest).map(|via| RouteReport {
                    dest: dest.to_string(),
                    via: via.to_string(),
                })
            })
            .collect(),
        broadcast_routes: std::iter::once(local)
            .chain(routes.reachable())
            .map(|source| BroadcastRouteReport {
                source: source.to_string(),
                via: routes
                    .broadcast_children(source)
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
            })
            .collect(),
        ipam,
        dns: dns_report,
        proxy,
        kernel_features: info.kernel_features.clone(),
        datapath_threads: info.datapath_threads,
        express_lane: info.express_lane,
        links,
    }
}

/// Traffic per neighbour, named by the connection at its address (or the topology).
fn link_reports(
    traffic: &crate::traffic::LinkTraffic,
    view: &crate::state::NodeView,
) -> Vec<crate::traffic::LinkReport> {
    let topo = &view.topology;
    let mut links: Vec<crate::traffic::LinkReport> = traffic
        .iter()
        .map(|(ip, counters)| {
            let conn = view
                .conns
                .iter()
                .find(|r| r.address.ip() == ip && r.remote.is_some());
            let peer = conn.and_then(|r| r.remote).or_else(|| peer_at(topo, ip));
            crate::traffic::LinkReport {
                address: ip.to_string(),
                peer: peer.map(|p| p.to_string()).unwrap_or_default(),
                nickname: peer
                    .and_then(|p| topo.peer(p))
                    .map(|p| p.nickname.clone())
                    .unwrap_or_default(),
                counters,
            }
        })
        .collect();
    links.sort_by(|a, b| a.address.cmp(&b.address));
    links
}

/// The running proxy's addresses, from the file it keeps in the run directory.
fn proxy_listen(run_dir: &std::path::Path) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(run_dir.join(PROXY_FILE)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let addrs = v["listen"].as_array()?;
    Some(
        addrs
            .iter()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect(),
    )
}

/// IPAM's state for the report.
fn ipam_report(st: &weft_ipam::IpamStatus) -> IpamReport {
    use weft_ipam::IpamState;
    let consensus = match st.state {
        IpamState::AwaitingConsensus { quorum, known } => Some(ConsensusReport {
            elector: true,
            quorum,
            known,
        }),
        IpamState::Priming => Some(ConsensusReport {
            elector: false,
            quorum: 0,
            known: 0,
        }),
        _ => None,
    };
    IpamReport {
        status: st.state.to_string(),
        range: st.range.to_string(),
        range_size: 1u64 << (32 - u32::from(st.range.prefix_len())),
        default_subnet: st.default_subnet.to_string(),
        pending: st.pending,
        allocated: st.allocated,
        consensus,
        peers: st
            .peers
            .iter()
            .map(|p| IpamPeerReport {
                name: p.peer.to_string(),
                nickname: p.nickname.clone(),
                owned: p.owned,
                free: p.free,
                percent: p.percent,
                reachable: p.reachable,
            })
            .collect(),
        entries: st
            .ranges
            .iter()
            .map(|r| IpamEntryReport {
                token: r.start.to_string(),
                size: r.size,
                peer: r.owner.to_string(),
                nickname: r.nickname.clone().unwrap_or_default(),
                reachable: r.reachable,
                version: r.version,
                free: r.free,
            })
            .collect(),
        pending_allocates: st
            .pending_allocates
            .iter()
            .map(|(ident, subnet)| format!("{ident} {subnet}"))
            .collect(),
        pending_claims: st
            .pending_claims
            .iter()
            .map(|(ident, cidr)| ClaimReport {
                ident: ident.clone(),
                cidr: cidr.to_string(),
            })
            .collect(),
        store_error: st.store_error.clone(),
        orphans: st.orphans,
        conflicts: st
            .conflicts
            .iter()
            .map(|c| ConflictReport {
                addr: c.addr.to_string(),
                detail: c.detail.clone(),
            })
            .collect(),
    }
}

/// The peer the topology says lives at `ip` (some peer reports a connection to it there).
fn peer_at(topo: &weft_mesh::Topology, ip: std::net::IpAddr) -> Option<PeerName> {
    topo.peers()
        .flat_map(|p| p.connections.iter())
        .find_map(|c| {
            let addr: std::net::SocketAddr = c.address.parse().ok()?;
            (addr.ip() == ip).then_some(c.remote)
        })
}

/// The word `weft status connections` prints for a state.
pub fn state_name(state: ConnState) -> &'static str {
    match state {
        ConnState::Connecting => "connecting",
        ConnState::Retrying => "retrying",
        ConnState::Pending => "pending",
        ConnState::Established => "established",
        ConnState::Failed => "failed",
    }
}
