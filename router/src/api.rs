//! Layer: driver. The HTTP API on 127.0.0.1:6784, after Weave's: `GET /status` (text, or JSON
//! when asked with `Accept: application/json`), `/status/peers`, `/status/connections`,
//! `/status/targets`, `/report` (JSON) and `/metrics` (Prometheus text format).
//!
//! The text renderers are plain functions of a [`StatusReport`], so the CLI prints the same
//! text from the JSON it fetched.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use weft_mesh::{PeerName, TargetState};

use crate::config::parse_peer;
use crate::state::{ConnState, ConnectionReport, PeerConnReport, PeerReport, Shared, StatusReport};

/// The API's routes.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/status/{sub}", get(status_sub))
        .route("/report", get(report))
        .route("/metrics", get(metrics))
        .route("/connect", post(connect))
        .route("/forget", post(forget))
        .merge(crate::expose::routes())
        .merge(crate::ipam::routes())
        .with_state(shared)
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

async fn status(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let report = build_report(&shared);
    if wants_json(&headers) {
        json(&report)
    } else {
        render_status(&report).into_response()
    }
}

async fn report(State(shared): State<Arc<Shared>>) -> Response {
    json(&build_report(&shared))
}

async fn status_sub(
    State(shared): State<Arc<Shared>>,
    axum::extract::Path(sub): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    let report = build_report(&shared);
    let as_json = wants_json(&headers);
    match sub.as_str() {
        "peers" if as_json => json(&report.peers),
        "peers" => render_peers(&report).into_response(),
        "connections" if as_json => json(&report.connections),
        "connections" => render_connections(&report).into_response(),
        "targets" if as_json => json(&report.targets),
        "targets" => render_targets(&report).into_response(),
        "ipam" => {
            let state = shared.lock();
            match state.ipam.as_ref() {
                Some(drv) => {
                    let st = drv.ipam.status();
                    if as_json {
                        json(&ipam_json(&st))
                    } else {
                        render_ipam(&st).into_response()
                    }
                }
                None => {
                    (StatusCode::NOT_FOUND, "IPAM is disabled on this router\n").into_response()
                }
            }
        }
        _ => (
            StatusCode::NOT_FOUND,
            format!("unknown status report '{sub}'\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let report = build_report(&shared);
    let mut out = String::new();
    for (name, value) in &report.counters {
        let _ = writeln!(out, "# TYPE weft_{name} counter");
        let _ = writeln!(out, "weft_{name}_total {value}");
    }
    let mut by_state: BTreeMap<&str, u64> = BTreeMap::new();
    for c in &report.connections {
        *by_state.entry(state_name(c.state)).or_default() += 1;
    }
    let _ = writeln!(out, "# HELP weft_connections Control connections by state.");
    let _ = writeln!(out, "# TYPE weft_connections gauge");
    for st in ["connecting", "retrying", "pending", "established", "failed"] {
        let n = by_state.get(st).copied().unwrap_or(0);
        let _ = writeln!(out, "weft_connections{{state=\"{st}\"}} {n}");
    }
    let _ = writeln!(out, "# TYPE weft_peers gauge");
    let _ = writeln!(out, "weft_peers {}", report.peers.len());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// `POST /connect` with form values `peer=ADDR` (repeatable) and `replace=true`: add direct
/// targets (or replace the list), keep the list on disk, dial at once.
async fn connect(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    change_targets(&shared, &body, true)
}

/// `POST /forget` with form values `peer=ADDR`: stop dialling these targets (live connections
/// stay up, as in Weave).
async fn forget(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    change_targets(&shared, &body, false)
}

fn change_targets(shared: &Shared, body: &[u8], connect: bool) -> Response {
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
    let targets = {
        let mut state = shared.lock();
        let now = shared.clock.now();
        match (connect, replace) {
            (true, true) => state.connmaker.replace_targets(now, &addrs),
            (true, false) => state.connmaker.add_targets(now, &addrs),
            (false, _) => state.connmaker.forget_targets(&addrs),
        }
        state.connmaker.direct_targets()
    };
    shared.wake.notify_one();
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
    let state = shared.lock();
    let topo = state.mesh.topology();
    let routes = state.mesh.routes();
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
    for rec in state.conns.values() {
        let (name, nickname, path) = match rec.remote.and_then(|r| PeerName::new(r.name)) {
            Some(n) => (n.to_string(), rec.nickname.clone(), "direct".to_owned()),
            None => (String::new(), String::new(), String::new()),
        };
        let info = if rec.remote.is_some() && !rec.owns_dataplane_peer {
            "duplicate, closing".to_owned()
        } else {
            String::new()
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
        });
    }
    // Targets with no live connection show their dialling state, and how the peer at that
    // address is reached meanwhile, if the topology knows it.
    for (addr, _direct, tstate) in state.connmaker.targets() {
        if state.conns.values().any(|r| r.address.ip() == addr.ip()) {
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
        });
    }
    let mut counters: BTreeMap<String, u64> = state
        .counters
        .fields()
        .iter()
        .map(|(name, _, v)| ((*name).to_owned(), *v))
        .collect();
    counters.insert(
        "control_handshake_failures".into(),
        state.handshake_failures,
    );
    counters.insert("gossip_errors".into(), state.gossip_errors);
    let g = state.mesh.stats();
    counters.insert("gossip_bytes_sent".into(), g.bytes_sent);
    counters.insert("gossip_bytes_received".into(), g.bytes_received);
    counters.insert("gossip_messages_sent".into(), g.messages_sent);
    counters.insert("gossip_messages_received".into(), g.messages_received);
    StatusReport {
        name: info.name.clone(),
        nickname: info.nickname.clone(),
        short_id: topo.local().short_id.get(),
        uid: info.uid,
        version: info.version.clone(),
        protocol: format!("weft {}..{}", info.protocol_min, info.protocol_max),
        port: info.port,
        data_port: info.data_port,
        mtu: info.mtu,
        encryption: info.encryption,
        peers,
        connections,
        targets: state
            .connmaker
            .direct_targets()
            .iter()
            .map(ToString::to_string)
            .collect(),
        discovery: info.discovery,
        counters,
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

/// `weft status`.
pub fn render_status(r: &StatusReport) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &r.connections {
        *counts.entry(state_name(c.state)).or_default() += 1;
    }
    let detail: Vec<String> = ["established", "pending", "retrying", "failed", "connecting"]
        .iter()
        .filter_map(|s| counts.get(s).map(|n| format!("{n} {s}")))
        .collect();
    let conns = if detail.is_empty() {
        format!("{}", r.connections.len())
    } else {
        format!("{} ({})", r.connections.len(), detail.join(", "))
    };
    let mut out = String::new();
    let _ = writeln!(out, "        Version: weft {}", r.version);
    let _ = writeln!(out);
    let _ = writeln!(out, "        Service: router");
    let _ = writeln!(out, "       Protocol: {}", r.protocol);
    let _ = writeln!(out, "           Name: {}({})", r.name, r.nickname);
    let _ = writeln!(
        out,
        "     Encryption: {}",
        if r.encryption { "enabled" } else { "disabled" }
    );
    let _ = writeln!(
        out,
        "  PeerDiscovery: {}",
        if r.discovery { "enabled" } else { "disabled" }
    );
    let _ = writeln!(out, "        Targets: {}", r.targets.len());
    let _ = writeln!(out, "    Connections: {conns}");
    let established: usize = r
        .peers
        .iter()
        .map(|p| p.connections.iter().filter(|c| c.established).count())
        .sum();
    let _ = writeln!(
        out,
        "          Peers: {} (with {established} established connections)",
        r.peers.len()
    );
    let _ = writeln!(out, "            MTU: {}", r.mtu);
    let _ = writeln!(
        out,
        "   Data (VXLAN): udp/{} (short id {})",
        r.data_port, r.short_id
    );
    out
}

/// `weft status connections`: direction, address, state, peer, details.
pub fn render_connections(r: &StatusReport) -> String {
    let mut out = String::new();
    for c in &r.connections {
        let dir = if c.outbound { "->" } else { "<-" };
        let peer = if c.name.is_empty() {
            String::new()
        } else {
            format!("{}({})", c.name, c.nickname)
        };
        let mut line = format!("{dir} {:<21} {:<11} {peer}", c.address, state_name(c.state));
        if c.state == ConnState::Established || c.state == ConnState::Pending {
            let _ = write!(line, " mtu={}", r.mtu);
            match (c.encrypted, c.control_encrypted) {
                (Some(true), _) => line.push_str(" encrypted"),
                // Trusted peers: the data plane is in the clear, control traffic is not.
                (Some(false), Some(true)) => line.push_str(" unencrypted (control encrypted)"),
                (Some(false), _) => line.push_str(" unencrypted"),
                (None, _) => {}
            }
        }
        if !c.info.is_empty() {
            let _ = write!(line, " {}", c.info);
        }
        // A target we cannot reach directly may still be reached through other peers.
        if c.path.starts_with("via") || c.path == "unreachable" {
            let _ = write!(line, " [{}]", c.path);
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

/// `weft status peers`: each peer as we know it.
pub fn render_peers(r: &StatusReport) -> String {
    let mut out = String::new();
    for p in &r.peers {
        let path = if p.path.is_empty() {
            String::new()
        } else {
            format!(" {}", p.path)
        };
        let _ = writeln!(
            out,
            "{}({}) short id {}{path}",
            p.name, p.nickname, p.short_id
        );
        for c in &p.connections {
            let dir = if c.outbound { "->" } else { "<-" };
            let state = if c.established {
                "established"
            } else {
                "pending"
            };
            let _ = writeln!(
                out,
                "   {dir} {:<21} {}({}) {state}",
                c.address, c.name, c.nickname
            );
        }
    }
    out
}

/// `weft status targets`: one target per line.
pub fn render_targets(r: &StatusReport) -> String {
    r.targets.iter().map(|t| format!("{t}\n")).collect()
}

fn ipam_json(st: &weft_ipam::IpamStatus) -> serde_json::Value {
    let peers: Vec<serde_json::Value> = st
        .peers
        .iter()
        .map(|p| {
            serde_json::json!({
                "name": p.peer.to_string(),
                "nickname": p.nickname,
                "owned": p.owned,
                "free": p.free,
                "percent": p.percent,
                "reachable": p.reachable,
            })
        })
        .collect();
    serde_json::json!({
        "status": st.state.to_string(),
        "range": st.range.to_string(),
        "default_subnet": st.default_subnet.to_string(),
        "pending": st.pending,
        "allocated": st.allocated,
        "peers": peers,
    })
}

/// `weft status ipam`: state, range, and each peer's share of it.
pub fn render_ipam(st: &weft_ipam::IpamStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "        Service: ipam");
    let _ = writeln!(out, "         Status: {}", st.state);
    let _ = writeln!(out, "          Range: {}", st.range);
    let _ = writeln!(out, "  DefaultSubnet: {}", st.default_subnet);
    let _ = writeln!(
        out,
        "      Allocated: {} (pending {})",
        st.allocated, st.pending
    );
    for p in &st.peers {
        let nick = p.nickname.as_deref().unwrap_or("");
        let who = format!("{}({nick})", p.peer);
        let reach = if p.reachable { "" } else { " - unreachable!" };
        let _ = writeln!(
            out,
            "{who:<37} {:>8} IPs ({:.1}% of total){reach}",
            p.owned, p.percent
        );
    }
    out
}
