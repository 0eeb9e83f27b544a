//! Layer: driver. IPAM in the router: the sans-IO [`weft_ipam::Ipam`] gets its messages over
//! channel 1 of the control connections (a [`ChannelRouter`] floods broadcasts and routes
//! unicasts hop by hop), its state is kept in `<state-dir>/ipam.json`, and Weave's `/ip` HTTP
//! API drives it (`POST /ip/{id}`, `POST /ip/{id}/{net}/{len}`, `PUT /ip/{id}/{ip}/{len}`,
//! `GET /ip[/{id}]`, `DELETE /ip/{id}[/{ip}]`, `DELETE /peer[/{name}][?force=true]`), plus
//! `GET /ipam` (the ring, the store's health and the duplicates found, as JSON).
//!
//! # Durable before visible
//!
//! The state machine holds back every answer and every message that depends on a change until
//! the change is stored ([`Ipam::poll_commit`] / [`Ipam::stored`]). The [`persister`] task does
//! the storing, outside IPAM's lock: it takes the commit, writes the snapshot to
//! `ipam.json.tmp`, fsyncs it, moves the current `ipam.json` to `ipam.json.prev` (so the
//! previous good state is always beside the current one), renames the new file into place and
//! fsyncs the directory; only then does the state machine release what waited. While one write
//! is under way, later changes pile up and go into the next write together (group commit): the
//! cost of an fsync is shared by every request that arrived meanwhile. When the write fails
//! (read-only or full disk) the state machine rolls back; waiting requests get 503 with the
//! reason, nothing is handed out, `weft status ipam` and `/metrics` say the store is failing
//! until a write succeeds again, and the half-written `ipam.json.tmp` is removed.
//!
//! # Start-up
//!
//! [`open`] reads `ipam.json`. A file that cannot be read or parsed is never discarded: the
//! router refuses to start, naming the file and `--ipam-recover`; with that flag the file is
//! kept aside as `ipam.json.corrupt-<time>`, `ipam.json.prev` is used if it can be read, and
//! what is missing is rebuilt from the host ([`crate::recover`]) and from the other peers'
//! rings. A crash between the two renames leaves only `ipam.json.prev`, which is then the last
//! stored state and is used as such. State of another peer or another range is set aside with
//! a warning, as before (it is readable; it is just not ours).
//!
//! Allocations may wait (for consensus, or for another peer to donate space): the handler
//! registers a one-shot channel under the request id and the control loop completes it when the
//! state machine reports the request done (stored). A client that goes away cancels its
//! request.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::bail;
use axum::Router;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use ipnet::Ipv4Net;
use serde::Deserialize;
use tokio::sync::{Notify, oneshot};
use weft_ipam::{Ipam, IpamError, IpamEvent, RequestId, Snapshot};
use weft_mesh::{ChannelRouter, PeerName, Routes};

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
    /// HTTP requests waiting for their outcome.
    pub pending: HashMap<RequestId, oneshot::Sender<Outcome>>,
    /// Where the state is kept.
    pub files: StateFiles,
    /// Wakes the [`persister`] when a commit is due.
    pub commit_wanted: Arc<Notify>,
}

impl IpamDriver {
    /// A driver around `ipam`, keeping its state in `files`.
    pub fn new(ipam: Ipam, files: StateFiles) -> Self {
        let channel = ChannelRouter::new(ipam.local(), rand::random());
        Self {
            ipam,
            channel,
            pending: HashMap::new(),
            files,
            commit_wanted: Arc::new(Notify::new()),
        }
    }

    /// What the state machine released: payloads (as channel envelopes, per neighbour),
    /// completions (to the waiting requests) and duplicates (logged). Asks the persister for a
    /// commit when one is due. Call it after every input.
    pub fn drain(&mut self, neighbours: &[PeerName], routes: &Routes) -> Vec<(PeerName, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some((dest, payload)) = self.ipam.poll_transmit() {
            let dest = match dest {
                weft_ipam::Dest::Broadcast => None,
                weft_ipam::Dest::Unicast(p) => Some(p),
            };
            out.extend(self.channel.send(dest, payload, neighbours, routes));
        }
        while let Some(event) = self.ipam.poll_event() {
            match event {
                IpamEvent::Done { id, result } => {
                    if let Some(tx) = self.pending.remove(&id) {
                        let _ = tx.send(result);
                    }
                }
                IpamEvent::Conflict(c) => {
                    tracing::warn!("duplicate address {}: {}", c.addr, c.detail);
                }
            }
        }
        if self.ipam.wants_commit() {
            self.commit_wanted.notify_one();
        }
        out
    }

    /// Stores everything pending now, in the calling thread (at start-up, before anything is
    /// served).
    pub fn commit_now(&mut self, now: weft_mesh::Instant) -> anyhow::Result<()> {
        while let Some(c) = self.ipam.poll_commit() {
            let result = self.files.write(&c.snapshot).map_err(|e| e.to_string());
            let failed = result.clone().err();
            self.ipam.stored(now, c.id, result);
            if let Some(e) = failed {
                bail!("{e}");
            }
        }
        Ok(())
    }
}

/// `ipam.json`, the previous good state beside it, and the temporary file of a write.
#[derive(Debug, Clone)]
pub struct StateFiles {
    /// `ipam.json`.
    pub current: PathBuf,
    /// `ipam.json.prev`: the state before the current one.
    pub prev: PathBuf,
    /// `ipam.json.tmp`: a write in progress.
    pub tmp: PathBuf,
}

impl StateFiles {
    /// The files in `state_dir`.
    pub fn in_dir(state_dir: &Path) -> Self {
        Self {
            current: state_dir.join("ipam.json"),
            prev: state_dir.join("ipam.json.prev"),
            tmp: state_dir.join("ipam.json.tmp"),
        }
    }

    /// Writes `snapshot` durably: the temporary file written and fsynced, the current file
    /// moved to `.prev`, the new one renamed into place, the directory fsynced. On failure the
    /// temporary file is removed and the error names the file.
    pub fn write(&self, snapshot: &Snapshot) -> std::io::Result<()> {
        let json = serde_json::to_vec(snapshot).map_err(std::io::Error::other)?;
        self.write_bytes(&json)
    }

    fn write_bytes(&self, bytes: &[u8]) -> std::io::Result<()> {
        let named = |what: &str, path: &Path, e: std::io::Error| {
            std::io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
        };
        let written = (|| {
            let mut f = std::fs::File::create(&self.tmp)?;
            f.write_all(bytes)?;
            f.sync_all()
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&self.tmp);
            return Err(named("cannot write", &self.tmp, e));
        }
        if self.current.exists() {
            if let Err(e) = std::fs::rename(&self.current, &self.prev) {
                let _ = std::fs::remove_file(&self.tmp);
                return Err(named("cannot keep the previous state in", &self.prev, e));
            }
        }
        std::fs::rename(&self.tmp, &self.current)
            .map_err(|e| named("cannot rename into", &self.current, e))?;
        if let Some(dir) = self.current.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| named("cannot sync", dir, e))?;
        }
        Ok(())
    }
}

/// Why a stored state could not be used.
enum LoadError {
    /// Not readable or not a snapshot (or of a format we do not know): never discarded.
    Unreadable(String),
    /// Readable, but another peer's or another range's: set aside.
    Foreign(String),
}

fn load(ipam: &mut Ipam, file: &Path) -> Result<bool, LoadError> {
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(LoadError::Unreadable(e.to_string())),
    };
    let snapshot = serde_json::from_slice::<Snapshot>(&bytes)
        .map_err(|e| LoadError::Unreadable(format!("not a valid IPAM snapshot: {e}")))?;
    match ipam.restore(snapshot) {
        Ok(()) => Ok(true),
        Err(e @ IpamError::SnapshotVersion(_)) => Err(LoadError::Unreadable(e.to_string())),
        Err(e) => Err(LoadError::Foreign(e.to_string())),
    }
}

fn set_aside(file: &Path, tag: &str) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let aside = file.with_file_name(format!("{name}.{tag}-{secs}"));
    let _ = std::fs::rename(file, &aside);
    aside
}

/// Loads the stored state into `ipam` (see the module documentation). Returns an error, and
/// the router must not start, when `ipam.json` cannot be read and `recover` is not set.
pub fn open(ipam: &mut Ipam, files: &StateFiles, recover: bool) -> anyhow::Result<()> {
    let current = if files.current.exists() {
        &files.current
    } else {
        // A crash between the two renames of a write: `.prev` is the last stored state.
        &files.prev
    };
    match load(ipam, current) {
        Ok(true) => {
            tracing::info!("restored IPAM state from {}", current.display());
            Ok(())
        }
        Ok(false) => Ok(()),
        Err(LoadError::Foreign(reason)) => {
            let aside = set_aside(current, "discarded");
            tracing::warn!(
                "IPAM state in {} set aside as {}: {reason}",
                current.display(),
                aside.display()
            );
            Ok(())
        }
        Err(LoadError::Unreadable(reason)) if !recover => {
            let prev = if current != &files.prev && files.prev.exists() {
                format!(" The state before it is in {}.", files.prev.display())
            } else {
                String::new()
            };
            bail!(
                "the IPAM state in {} cannot be read ({reason}). Refusing to start: without it, \
                 addresses still in use could be handed out again.{prev} Start with \
                 --ipam-recover to rebuild it from the previous state, from the addresses in \
                 use on this host and from the other peers (the unreadable file is kept).",
                current.display()
            )
        }
        Err(LoadError::Unreadable(reason)) => {
            let aside = set_aside(current, "corrupt");
            tracing::warn!(
                "--ipam-recover: the IPAM state in {} cannot be read ({reason}); kept as {}",
                current.display(),
                aside.display()
            );
            if current != &files.prev {
                match load(ipam, &files.prev) {
                    Ok(true) => tracing::warn!(
                        "--ipam-recover: restored the previous IPAM state from {}",
                        files.prev.display()
                    ),
                    Ok(false) => {}
                    Err(LoadError::Unreadable(r) | LoadError::Foreign(r)) => tracing::warn!(
                        "--ipam-recover: the previous state {} cannot be used either: {r}",
                        files.prev.display()
                    ),
                }
            }
            tracing::warn!(
                "--ipam-recover: rebuilding the rest from the addresses in use on this host and \
                 from the other peers"
            );
            Ok(())
        }
    }
}

/// Stores what IPAM wants stored, one commit at a time, outside IPAM's lock; wakes the
/// control loop to hand out what each store released. Runs for the router's lifetime.
pub async fn persister(shared: Arc<Shared>, wanted: Arc<Notify>) {
    loop {
        wanted.notified().await;
        loop {
            let commit = {
                let mut state = shared.ipam();
                match state.ipam.as_mut() {
                    Some(drv) => drv.ipam.poll_commit().map(|c| (c, drv.files.clone())),
                    None => None,
                }
            };
            let Some((commit, files)) = commit else {
                break;
            };
            let written = tokio::task::spawn_blocking(move || files.write(&commit.snapshot))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            {
                let mut state = shared.ipam();
                let now = shared.clock.now();
                if let Some(drv) = state.ipam.as_mut() {
                    let was_failing = drv.ipam.status().store_error;
                    match &written {
                        Ok(()) if was_failing.is_some() => {
                            tracing::info!(
                                "IPAM state stored again in {}",
                                drv.files.current.display()
                            );
                        }
                        Ok(()) => {}
                        Err(e) if was_failing.as_deref() != Some(e.to_string().as_str()) => {
                            tracing::error!(
                                "IPAM state not stored, changes undone and requests refused: {e}"
                            );
                        }
                        Err(_) => {}
                    }
                    drv.ipam
                        .stored(now, commit.id, written.map_err(|e| e.to_string()));
                }
            }
            shared.wake.notify_one();
        }
    }
}

/// The `/ip`, `/peer`, `/ring` and `/ipam` routes.
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
        .route("/ipam", get(detail))
        .route("/peer", delete(leave))
        .route("/peer/{name}", delete(rmpeer))
}

fn error_status(e: &IpamError) -> StatusCode {
    match e {
        IpamError::Cancelled | IpamError::NotStored(_) => StatusCode::SERVICE_UNAVAILABLE,
        IpamError::PeerReachable(_)
        | IpamError::RecentlySeen { .. }
        | IpamError::AlreadyTakenOver { .. }
        | IpamError::UnknownPeer(_)
        | IpamError::RemoveSelf => StatusCode::CONFLICT,
        _ => StatusCode::BAD_REQUEST,
    }
}

fn error_response(e: &IpamError) -> Response {
    (error_status(e), format!("{e}\n")).into_response()
}

/// A request the API refuses: the status and the message the client sees.
pub(crate) struct Refusal(pub(crate) StatusCode, pub(crate) String);

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
            format!("'{text}' is not an IPv4 address with a prefix length\n"),
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
            let mut state = self.shared.ipam();
            if let Some(drv) = state.ipam.as_mut() {
                drv.pending.remove(&self.id);
                drv.ipam.cancel(self.id);
            }
        }
    }
}

/// Start a request with `start` (which returns its id and whatever else the handler needs),
/// then wait for its outcome: it arrives once the change is stored.
async fn request<T>(
    shared: &Shared,
    start: impl FnOnce(
        &mut crate::state::IpamState,
        weft_mesh::Instant,
    ) -> Result<(RequestId, T), Refusal>,
) -> Result<(Outcome, T), Refusal> {
    let (tx, rx) = oneshot::channel();
    let (id, extra) = {
        let mut state = shared.ipam();
        let now = shared.clock.now();
        if state.ipam.is_none() {
            return Err(no_ipam());
        }
        let (id, extra) = start(&mut state, now)?;
        let Some(drv) = state.ipam.as_mut() else {
            return Err(no_ipam());
        };
        drv.pending.insert(id, tx);
        if drv.ipam.wants_commit() {
            drv.commit_wanted.notify_one();
        }
        (id, extra)
    };
    shared.wake.notify_one();
    let mut guard = CancelOnDrop {
        shared,
        id,
        done: false,
    };
    let outcome = rx.await.unwrap_or(Err(IpamError::Cancelled));
    guard.done = true;
    Ok((outcome, extra))
}

/// [`request`] for the state machine alone (also the in-process [`crate::Handle`]'s way in).
pub(crate) async fn ipam_request(
    shared: &Shared,
    start: impl FnOnce(&mut Ipam, weft_mesh::Instant) -> RequestId,
) -> Result<Outcome, Refusal> {
    request(shared, |state, now| match state.ipam.as_mut() {
        Some(drv) => Ok((start(&mut drv.ipam, now), ())),
        None => Err(no_ipam()),
    })
    .await
    .map(|(o, ())| o)
}

fn addresses_response(outcome: Outcome) -> Response {
    match outcome {
        Ok(addrs) => {
            let text: Vec<String> = addrs.iter().map(ToString::to_string).collect();
            (StatusCode::OK, text.join(" ")).into_response()
        }
        Err(e) => error_response(&e),
    }
}

async fn allocate_default(
    State(shared): State<Arc<Shared>>,
    UrlPath(id): UrlPath<String>,
) -> Response {
    if let Err(r) = check_ident(&id) {
        return r.into_response();
    }
    match ipam_request(&shared, |ipam, now| ipam.allocate(now, &id, None)).await {
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
    match ipam_request(&shared, |ipam, now| ipam.allocate(now, &id, Some(subnet))).await {
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
    match ipam_request(&shared, |ipam, now| ipam.claim(now, &id, addr)).await {
        Ok(Ok(_)) => StatusCode::NO_CONTENT.into_response(),
        Ok(Err(e)) => (error_status(&e), format!("Unable to claim: {e}\n")).into_response(),
        Err(r) => r.into_response(),
    }
}

async fn lookup(State(shared): State<Arc<Shared>>, UrlPath(id): UrlPath<String>) -> Response {
    let state = shared.ipam();
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
    let state = shared.ipam();
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
    let state = shared.ipam();
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

async fn release(shared: &Shared, id: &str, addr: Option<Ipv4Addr>) -> Response {
    let started = request(shared, |state, _| match state.ipam.as_mut() {
        Some(drv) => {
            let freed = drv.ipam.release(id, addr);
            Ok((drv.ipam.sync(), freed))
        }
        None => Err(no_ipam()),
    })
    .await;
    match started {
        Ok((Ok(_), freed)) if addr.is_some() && freed.is_empty() => (
            StatusCode::NOT_FOUND,
            format!("{id} holds no such address\n"),
        )
            .into_response(),
        Ok((Ok(_), _)) => StatusCode::NO_CONTENT.into_response(),
        Ok((Err(e), _)) => error_response(&e),
        Err(r) => r.into_response(),
    }
}

async fn release_all(State(shared): State<Arc<Shared>>, UrlPath(id): UrlPath<String>) -> Response {
    release(&shared, &id, None).await
}

async fn release_one(
    State(shared): State<Arc<Shared>>,
    UrlPath((id, ip)): UrlPath<(String, String)>,
) -> Response {
    match ip.parse::<Ipv4Addr>() {
        Ok(addr) => release(&shared, &id, Some(addr)).await,
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
        let mut state = shared.ipam();
        let now = shared.clock.now();
        let Some(drv) = state.ipam.as_mut() else {
            return no_ipam().into_response();
        };
        drv.ipam.prime(now);
    }
    shared.wake.notify_one();
    loop {
        {
            let state = shared.ipam();
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

/// `GET /ipam`: the ring entry by entry, the store's health, orphans and duplicates (JSON).
async fn detail(State(shared): State<Arc<Shared>>) -> Response {
    let state = shared.ipam();
    let Some(drv) = state.ipam.as_ref() else {
        return no_ipam().into_response();
    };
    let st = drv.ipam.status();
    let ring = drv.ipam.ring();
    let entries: Vec<serde_json::Value> = ring
        .entries()
        .iter()
        .map(|e| {
            serde_json::json!({
                "token": Ipv4Addr::from(e.token).to_string(),
                "owner": e.owner.to_string(),
                "version": e.version,
                "free": e.free,
            })
        })
        .collect();
    let removed: Vec<serde_json::Value> = ring
        .removed()
        .iter()
        .map(|(p, by)| serde_json::json!({ "peer": p.to_string(), "by": by.to_string() }))
        .collect();
    let stats = drv.ipam.stats();
    axum::Json(serde_json::json!({
        "range": st.range.to_string(),
        "entries": entries,
        "removed": removed,
        "store": {
            "file": drv.files.current.display().to_string(),
            "error": st.store_error,
            "failures": stats.store_failures,
        },
        "orphans": st.orphans,
        "conflicts": conflicts_json(&st.conflicts),
        "duplicates_found": stats.conflicts,
    }))
    .into_response()
}

/// The duplicates of a status, as JSON.
pub fn conflicts_json(conflicts: &[weft_ipam::Conflict]) -> serde_json::Value {
    conflicts
        .iter()
        .map(|c| serde_json::json!({ "addr": c.addr.to_string(), "detail": c.detail }))
        .collect()
}

/// `weft status ipam` lines about the store and duplicates (none while all is well).
pub fn health_lines(r: &crate::state::IpamReport) -> String {
    let mut out = String::new();
    if let Some(e) = &r.store_error {
        out.push_str(&format!("     StateStore: FAILING: {e}\n"));
    }
    if r.orphans > 0 {
        out.push_str(&format!(
            "        Orphans: {} (addresses in ranges another peer took, being asked back)\n",
            r.orphans
        ));
    }
    for c in &r.conflicts {
        out.push_str(&format!("      Duplicate: {} {}\n", c.addr, c.detail));
    }
    out
}

/// The store's and the duplicate finder's metrics (Prometheus text).
pub fn metrics(shared: &Shared) -> String {
    let state = shared.ipam();
    let Some(drv) = state.ipam.as_ref() else {
        return String::new();
    };
    let st = drv.ipam.status();
    let stats = drv.ipam.stats();
    format!(
        "# HELP weft_ipam_store_failing 1 while the IPAM state cannot be stored (requests fail).\n\
         # TYPE weft_ipam_store_failing gauge\n\
         weft_ipam_store_failing {}\n\
         # HELP weft_ipam_store_failures_total Attempts to store the IPAM state that failed.\n\
         # TYPE weft_ipam_store_failures_total counter\n\
         weft_ipam_store_failures_total {}\n\
         # HELP weft_ipam_duplicates_total Addresses found in use twice (ring conflicts after a heal, \
         ARP conflicts on the bridge).\n\
         # TYPE weft_ipam_duplicates_total counter\n\
         weft_ipam_duplicates_total {}\n\
         # HELP weft_ipam_orphans Our allocations in ranges another peer took, being asked back.\n\
         # TYPE weft_ipam_orphans gauge\n\
         weft_ipam_orphans {}\n",
        u8::from(st.store_error.is_some()),
        stats.store_failures,
        stats.conflicts,
        st.orphans
    )
}

/// `DELETE /peer`: hand our ranges to a live peer before leaving (`weft reset`).
async fn leave(State(shared): State<Arc<Shared>>) -> Response {
    let started = request(&shared, |state, now| match state.ipam.as_mut() {
        Some(drv) => {
            let heir = drv.ipam.shutdown(now);
            Ok((drv.ipam.sync(), heir))
        }
        None => Err(no_ipam()),
    })
    .await;
    match started {
        Ok((Ok(_), Some(h))) => {
            (StatusCode::OK, format!("IP ranges handed over to {h}\n")).into_response()
        }
        Ok((Ok(_), None)) => {
            (StatusCode::OK, "no live peer to hand IP ranges to\n").into_response()
        }
        Ok((Err(e), _)) => error_response(&e),
        Err(r) => r.into_response(),
    }
}

/// Query of `DELETE /peer/{name}`.
#[derive(Debug, Default, Deserialize)]
struct RmpeerQuery {
    #[serde(default)]
    force: Option<String>,
}

/// `DELETE /peer/{name-or-nickname}[?force=true]`: take over a dead peer's ranges
/// (`weft rmpeer [--force]`).
async fn rmpeer(
    State(shared): State<Arc<Shared>>,
    UrlPath(name): UrlPath<String>,
    Query(q): Query<RmpeerQuery>,
) -> Response {
    let force = q.force.as_deref().is_some_and(|v| v == "true" || v == "1");
    let view = shared.view();
    let started = request(&shared, |state, now| {
        // A dead peer may already be gone from the topology; IPAM remembers the nicknames of
        // the peers owning ranges.
        let peer = name.parse::<PeerName>().ok().or_else(|| {
            view.topology
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
            return Err(Refusal(
                StatusCode::NOT_FOUND,
                format!("unknown peer '{name}'\n"),
            ));
        };
        let Some(drv) = state.ipam.as_mut() else {
            return Err(no_ipam());
        };
        let n = drv
            .ipam
            .rmpeer(now, peer, force)
            .map_err(|e| Refusal(error_status(&e), format!("{e}\n")))?;
        if force {
            tracing::warn!("rmpeer --force: took over {n} addresses of {peer}");
        }
        Ok((drv.ipam.sync(), (n, peer)))
    })
    .await;
    if let Ok((_, (_, peer))) = &started {
        // The peer's weaveDNS names go too, here and on every peer.
        let reachable = view.routes.path(*peer).is_some();
        let now = shared.clock.now();
        let names = crate::dns::forget_peer(&shared.dns(), now, *peer, reachable);
        if names > 0 {
            tracing::info!("rmpeer {peer}: dropped its {names} DNS entries");
        }
    }
    match started {
        Ok((Ok(_), (n, peer))) => {
            (StatusCode::OK, format!("{n} IPs taken over from {peer}\n")).into_response()
        }
        Ok((Err(e), _)) => error_response(&e),
        Err(r) => r.into_response(),
    }
}
