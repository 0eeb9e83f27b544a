//! Layer: driver. IPAM in the router: the sans-IO [`weft_ipam::Ipam`] gets its messages over
//! channel 1 of the control connections (a [`ChannelRouter`] floods broadcasts and routes
//! unicasts hop by hop), its snapshot is kept in `<state-dir>/ipam.json` after every change, and
//! Weave's `/ip` HTTP API drives it (`POST /ip/{id}`, `POST /ip/{id}/{net}/{len}`,
//! `PUT /ip/{id}/{ip}/{len}`, `GET /ip[/{id}]`, `DELETE /ip/{id}[/{ip}]`, `DELETE /peer[/{name}]`).
//!
//! Allocations may wait (for consensus, or for another peer to donate space): the handler
//! registers a one-shot channel under the request id and the control loop completes it when the
//! state machine reports the request done. A client that goes away cancels its request.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use ipnet::Ipv4Net;
use tokio::sync::oneshot;
use weft_ipam::{Ipam, IpamError, RequestId, Snapshot};
use weft_mesh::{ChannelRouter, PeerName};

use crate::state::Shared;

/// The gossip channel IPAM messages travel on.
pub const IPAM_CHANNEL: u8 = 1;

/// Identifier under which the host's own (exposed) addresses are kept.
pub const EXPOSE_IDENT: &str = "weave:expose";

/// The result a waiting HTTP request gets.
pub type Outcome = Result<Vec<Ipv4Net>, IpamError>;

/// IPAM's part of the router state.
#[derive(Debug)]
pub struct IpamDriver {
    /// The state machine.
    pub ipam: Ipam,
    /// Flooding and routing of its messages.
    pub channel: ChannelRouter,
    /// HTTP requests waiting for their allocation or claim.
    pub pending: HashMap<RequestId, oneshot::Sender<Outcome>>,
    /// Where the snapshot is kept.
    pub snapshot_file: PathBuf,
}

impl IpamDriver {
    /// Keep the snapshot on disk (called after every change the state machine reports).
    pub fn persist(&self) {
        match serde_json::to_vec(&self.ipam.snapshot()) {
            Ok(json) => {
                if let Err(e) = crate::identity::write_atomic(&self.snapshot_file, &json) {
                    tracing::error!(
                        "cannot keep IPAM state in {}: {e}",
                        self.snapshot_file.display()
                    );
                }
            }
            Err(e) => tracing::error!("cannot encode IPAM state: {e}"),
        }
    }
}

/// Load the snapshot kept by the last run into `ipam`. A snapshot that belongs to another peer
/// name or another range is set aside (renamed) with a warning, never mixed in.
pub fn restore(ipam: &mut Ipam, file: &Path) {
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            tracing::warn!("cannot read IPAM state {}: {e}", file.display());
            return;
        }
    };
    let result = serde_json::from_slice::<Snapshot>(&bytes)
        .map_err(|e| format!("not a valid IPAM snapshot: {e}"))
        .and_then(|s| ipam.restore(s).map_err(|e| e.to_string()));
    match result {
        Ok(()) => tracing::info!("restored IPAM state from {}", file.display()),
        Err(reason) => {
            let aside = file.with_extension(format!(
                "json.discarded-{}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
            ));
            let _ = std::fs::rename(file, &aside);
            tracing::warn!(
                "IPAM state in {} set aside as {}: {reason}",
                file.display(),
                aside.display()
            );
        }
    }
}

/// The `/ip` and `/peer` routes.
pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/ip", get(list))
        .route(
            "/ip/{id}",
            post(allocate_default).get(lookup).delete(release_all),
        )
        .route("/ip/{id}/{ip}", delete(release_one))
        .route(
            "/ip/{id}/{a}/{b}",
            post(allocate_in).put(claim).get(lookup_in),
        )
        .route("/ring", get(ring))
        .route("/peer", delete(leave))
        .route("/peer/{name}", delete(rmpeer))
}

fn error_status(e: &IpamError) -> StatusCode {
    match e {
        IpamError::Cancelled => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    }
}

/// A request the API refuses: the status and the message the client sees.
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

fn no_ipam() -> Refusal {
    Refusal(
        StatusCode::NOT_FOUND,
        "IPAM is disabled on this router (--ipalloc-range \"\")\n".to_owned(),
    )
}

fn check_ident(id: &str) -> Result<(), Refusal> {
    let ok = !id.is_empty()
        && id.len() <= 256
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Refusal(
            StatusCode::BAD_REQUEST,
            format!("invalid identifier '{id}'\n"),
        ))
    }
}

fn parse_net(a: &str, b: &str) -> Result<Ipv4Net, Refusal> {
    let text = format!("{a}/{b}");
    text.parse::<Ipv4Net>().map_err(|_| {
        Refusal(
            StatusCode::BAD_REQUEST,
            format!(
                "'{text}' is not an IPv4 address with a prefix length
"
            ),
        )
    })
}

/// Cancels the request if the HTTP client goes away before it completes.
struct CancelOnDrop<'a> {
    shared: &'a Shared,
    id: RequestId,
    done: bool,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if !self.done {
            let mut state = self.shared.lock();
            if let Some(drv) = state.ipam.as_mut() {
                drv.pending.remove(&self.id);
                drv.ipam.cancel(self.id);
            }
        }
    }
}

/// Start a request with `start`, then wait for its outcome.
async fn request(
    shared: &Shared,
    start: impl FnOnce(&mut Ipam, weft_mesh::Instant) -> RequestId,
) -> Result<Outcome, Refusal> {
    let (tx, rx) = oneshot::channel();
    let id = {
        let mut state = shared.lock();
        let now = shared.clock.now();
        let Some(drv) = state.ipam.as_mut() else {
            return Err(no_ipam());
        };
        let id = start(&mut drv.ipam, now);
        drv.pending.insert(id, tx);
        id
    };
    shared.wake.notify_one();
    let mut guard = CancelOnDrop {
        shared,
        id,
        done: false,
    };
    let outcome = rx.await.unwrap_or(Err(IpamError::Cancelled));
    guard.done = true;
    Ok(outcome)
}

fn addresses_response(outcome: Outcome) -> Response {
    match outcome {
        Ok(addrs) => {
            let text: Vec<String> = addrs.iter().map(ToString::to_string).collect();
            (StatusCode::OK, text.join(" ")).into_response()
        }
        Err(e) => (error_status(&e), format!("{e}\n")).into_response(),
    }
}

async fn allocate_default(
    State(shared): State<Arc<Shared>>,
    UrlPath(id): UrlPath<String>,
) -> Response {
    if let Err(r) = check_ident(&id) {
        return r.into_response();
    }
    match request(&shared, |ipam, now| ipam.allocate(now, &id, None)).await {
        Ok(outcome) => addresses_response(outcome),
        Err(r) => r.into_response(),
    }
}

async fn allocate_in(
    State(shared): State<Arc<Shared>>,
    UrlPath((id, a, b)): UrlPath<(String, String, String)>,
) -> Response {
    if let Err(r) = check_ident(&id) {
        return r.into_response();
    }
    let subnet = match parse_net(&a, &b) {
        Ok(n) => n,
        Err(r) => return r.into_response(),
    };
    if subnet.trunc() != subnet {
        return (
            StatusCode::BAD_REQUEST,
            format!(
                "{subnet} is not a subnet address (did you mean {}?)\n",
                subnet.trunc()
            ),
        )
            .into_response();
    }
    match request(&shared, |ipam, now| ipam.allocate(now, &id, Some(subnet))).await {
        Ok(outcome) => addresses_response(outcome),
        Err(r) => r.into_response(),
    }
}

async fn claim(
    State(shared): State<Arc<Shared>>,
    UrlPath((id, a, b)): UrlPath<(String, String, String)>,
) -> Response {
    if let Err(r) = check_ident(&id) {
        return r.into_response();
    }
    let addr = match parse_net(&a, &b) {
        Ok(n) => n,
        Err(r) => return r.into_response(),
    };
    match request(&shared, |ipam, now| ipam.claim(now, &id, addr)).await {
        Ok(Ok(_)) => StatusCode::NO_CONTENT.into_response(),
        Ok(Err(e)) => (error_status(&e), format!("Unable to claim: {e}\n")).into_response(),
        Err(r) => r.into_response(),
    }
}

async fn lookup(State(shared): State<Arc<Shared>>, UrlPath(id): UrlPath<String>) -> Response {
    let state = shared.lock();
    let Some(drv) = state.ipam.as_ref() else {
        return no_ipam().into_response();
    };
    addresses_response(Ok(drv.ipam.lookup(&id)))
}

async fn lookup_in(
    State(shared): State<Arc<Shared>>,
    UrlPath((id, a, b)): UrlPath<(String, String, String)>,
) -> Response {
    let subnet = match parse_net(&a, &b) {
        Ok(n) => n.trunc(),
        Err(r) => return r.into_response(),
    };
    let state = shared.lock();
    let Some(drv) = state.ipam.as_ref() else {
        return no_ipam().into_response();
    };
    let addrs = drv
        .ipam
        .lookup(&id)
        .into_iter()
        .filter(|a| subnet.contains(&a.addr()))
        .collect();
    addresses_response(Ok(addrs))
}

async fn list(State(shared): State<Arc<Shared>>) -> Response {
    let state = shared.lock();
    let Some(drv) = state.ipam.as_ref() else {
        return no_ipam().into_response();
    };
    let owned: Vec<serde_json::Value> = drv
        .ipam
        .owned()
        .into_iter()
        .map(|(id, addrs)| {
            let addrs: Vec<String> = addrs.iter().map(ToString::to_string).collect();
            serde_json::json!({ "containerid": id, "addrs": addrs })
        })
        .collect();
    axum::Json(serde_json::json!({ "owned": owned })).into_response()
}

fn release(shared: &Shared, id: &str, addr: Option<Ipv4Addr>) -> Response {
    let mut state = shared.lock();
    let Some(drv) = state.ipam.as_mut() else {
        return no_ipam().into_response();
    };
    let freed = drv.ipam.release(id, addr);
    drop(state);
    shared.wake.notify_one();
    if addr.is_some() && freed.is_empty() {
        return (
            StatusCode::NOT_FOUND,
            format!("{id} holds no such address\n"),
        )
            .into_response();
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn release_all(State(shared): State<Arc<Shared>>, UrlPath(id): UrlPath<String>) -> Response {
    release(&shared, &id, None)
}

async fn release_one(
    State(shared): State<Arc<Shared>>,
    UrlPath((id, ip)): UrlPath<(String, String)>,
) -> Response {
    match ip.parse::<Ipv4Addr>() {
        Ok(addr) => release(&shared, &id, Some(addr)),
        Err(_) => (
            StatusCode::BAD_REQUEST,
            format!("'{ip}' is not an IPv4 address\n"),
        )
            .into_response(),
    }
}

/// `GET /ring` (`weave prime`): start initialisation if needed and answer once this peer has
/// a ring.
async fn ring(State(shared): State<Arc<Shared>>) -> Response {
    {
        let mut state = shared.lock();
        let now = shared.clock.now();
        let Some(drv) = state.ipam.as_mut() else {
            return no_ipam().into_response();
        };
        drv.ipam.prime(now);
    }
    shared.wake.notify_one();
    loop {
        {
            let state = shared.lock();
            if let Some(drv) = state.ipam.as_ref() {
                if !drv.ipam.ring().is_empty() {
                    return (StatusCode::OK, format!("{}\n", drv.ipam.status().state))
                        .into_response();
                }
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// `DELETE /peer`: hand our ranges to a live peer before leaving (`weft reset`).
async fn leave(State(shared): State<Arc<Shared>>) -> Response {
    let heir = {
        let mut state = shared.lock();
        let now = shared.clock.now();
        let Some(drv) = state.ipam.as_mut() else {
            return no_ipam().into_response();
        };
        drv.ipam.shutdown(now)
    };
    shared.wake.notify_one();
    match heir {
        Some(h) => (StatusCode::OK, format!("IP ranges handed over to {h}\n")).into_response(),
        None => (StatusCode::OK, "no live peer to hand IP ranges to\n").into_response(),
    }
}

/// `DELETE /peer/{name-or-nickname}`: take over a dead peer's ranges (`weft rmpeer`).
async fn rmpeer(State(shared): State<Arc<Shared>>, UrlPath(name): UrlPath<String>) -> Response {
    let result = {
        let mut state = shared.lock();
        let now = shared.clock.now();
        // A dead peer may already be gone from the topology; IPAM remembers the nicknames of
        // the peers owning ranges.
        let peer = name.parse::<PeerName>().ok().or_else(|| {
            state
                .mesh
                .topology()
                .peers()
                .find(|p| p.nickname == name)
                .map(|p| p.name)
                .or_else(|| {
                    state
                        .ipam
                        .as_ref()
                        .and_then(|d| d.ipam.peer_by_nickname(&name))
                })
        });
        let Some(peer) = peer else {
            return (StatusCode::NOT_FOUND, format!("unknown peer '{name}'\n")).into_response();
        };
        let Some(drv) = state.ipam.as_mut() else {
            return no_ipam().into_response();
        };
        drv.ipam.rmpeer(now, peer).map(|n| (n, peer))
    };
    shared.wake.notify_one();
    match result {
        Ok((n, peer)) => {
            (StatusCode::OK, format!("{n} IPs taken over from {peer}\n")).into_response()
        }
        Err(e) => (StatusCode::CONFLICT, format!("{e}\n")).into_response(),
    }
}
