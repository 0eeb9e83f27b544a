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
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use weft_mesh::PeerName;

use crate::state::{ConnState, ConnectionReport, PeerReport, Shared, StatusReport};

/// The API's routes.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/status/{sub}", get(status_sub))
        .route("/report", get(report))
        .route("/metrics", get(metrics))
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

/// Build the status report from the shared state.
pub fn build_report(shared: &Shared) -> StatusReport {
    let info = &shared.info;
    let state = shared.lock();
    let mut peers = vec![PeerReport {
        name: info.name.clone(),
        nickname: info.nickname.clone(),
        short_id: info.short_id,
        uid: info.uid,
    }];
    let mut connections = Vec::new();
    for rec in state.conns.values() {
        let (name, nickname) = match rec.remote {
            Some(r) => (peer_name(r.name), rec.nickname.clone()),
            None => (String::new(), String::new()),
        };
        if let Some(r) = rec.remote {
            if !peers.iter().any(|p| p.name == name) {
                peers.push(PeerReport {
                    name: name.clone(),
                    nickname: nickname.clone(),
                    short_id: r.short_id,
                    uid: r.uid,
                });
            }
        }
        connections.push(ConnectionReport {
            address: rec.address.to_string(),
            outbound: rec.outbound,
            state: rec.state,
            info: String::new(),
            name,
            nickname,
        });
    }
    // Targets with no live connection show their dialling state.
    for t in state.targets.values() {
        let live = state
            .conns
            .values()
            .any(|r| r.address.ip() == t.address.ip());
        if !live && t.state != ConnState::Established {
            connections.push(ConnectionReport {
                address: t.address.to_string(),
                outbound: true,
                state: t.state,
                info: t.info.clone(),
                name: String::new(),
                nickname: String::new(),
            });
        }
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
    StatusReport {
        name: info.name.clone(),
        nickname: info.nickname.clone(),
        short_id: info.short_id,
        uid: info.uid,
        version: info.version.clone(),
        protocol: format!("weft {}..{}", info.protocol_min, info.protocol_max),
        port: info.port,
        data_port: info.data_port,
        mtu: info.mtu,
        encryption: false,
        peers,
        connections,
        targets: state.targets.keys().cloned().collect(),
        counters,
    }
}

fn peer_name(name: u64) -> String {
    PeerName::new(name)
        .map(|n| n.to_string())
        .unwrap_or_else(|| format!("{name:x}"))
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
    let _ = writeln!(out, "        Targets: {}", r.targets.len());
    let _ = writeln!(out, "    Connections: {conns}");
    let _ = writeln!(out, "          Peers: {}", r.peers.len());
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
        }
        if !c.info.is_empty() {
            let _ = write!(line, " {}", c.info);
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

/// `weft status peers`: each peer as we know it.
pub fn render_peers(r: &StatusReport) -> String {
    let mut out = String::new();
    for p in &r.peers {
        let _ = writeln!(out, "{}({}) short id {}", p.name, p.nickname, p.short_id);
        if p.name == r.name {
            for c in &r.connections {
                if !c.name.is_empty() {
                    let dir = if c.outbound { "->" } else { "<-" };
                    let _ = writeln!(
                        out,
                        "   {dir} {:<21} {}({}) {}",
                        c.address,
                        c.name,
                        c.nickname,
                        state_name(c.state)
                    );
                }
            }
        }
    }
    out
}

/// `weft status targets`: one target per line.
pub fn render_targets(r: &StatusReport) -> String {
    r.targets.iter().map(|t| format!("{t}\n")).collect()
}
