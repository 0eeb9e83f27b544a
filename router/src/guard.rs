//! Layer: driver. The HTTP API's front door: who may change the network, and how much of the
//! router one caller may hold.
//!
//! # Who may change the network
//!
//! Weave's API on 127.0.0.1:6784 trusted every local process. weft accepts a change (every
//! method but `GET`/`HEAD`/`OPTIONS`, and `GET /ring`, which starts IPAM's consensus) only from
//! **root**; reads (`/status*`, `/report`, `/metrics`, `GET /ip`, `GET /expose`, ...) stay
//! open to every local user. A refused request gets `403` and a message saying why.
//!
//! The caller is identified by the kernel, not by anything it sends: for each accepted TCP
//! connection the router looks up the *client's* socket (the 4-tuple seen from its side) with an
//! exact `NETLINK_SOCK_DIAG` query ([`weft_sys::sockdiag`]), which reports the uid that created
//! that socket. This was chosen over the alternatives because:
//!
//! - It keeps every existing client working unchanged. Weave's own scripts and users' scripts
//!   `curl http://127.0.0.1:6784/...` as root; the CLI, the Docker proxy and the plugins use
//!   the same TCP address. A root-only unix socket would protect only clients that were changed
//!   to use it, and TCP would still need a rule; one rule for every client is simpler to get
//!   right.
//! - It cannot be forged: the uid is fixed by the kernel when the client creates the socket.
//!   The lookup happens once, when the connection is accepted (the client is still connected;
//!   its 4-tuple cannot be reused while the router's end is open). A client that closes its end
//!   early leaves a TIME_WAIT or orphaned socket, which the kernel reports with uid 0 and no
//!   inode: such a connection counts as *unknown*, never as root. A process in a user namespace
//!   shows up with its uid as the host sees it (its "root" is not root here).
//! - It costs one netlink round trip per connection (tens of microseconds), and falls back to
//!   reading `/proc/net/tcp` where sock_diag is unavailable.
//!
//! Callers that are not local (the API bound to a non-loopback address with `--http-addr`)
//! have no uid here: they may read, never change. The router's own in-process clients (the
//! Docker proxy run by the same `weft launch`) run as root and pass.
//!
//! # How much one caller may hold
//!
//! Each connection is admitted against caps ([`weft_mesh::admission::Admission`]) before
//! anything is spent on it: at most [`ApiLimits::per_caller`] open connections per non-root
//! uid (or per address for callers without one) and [`ApiLimits::total`] for all of them
//! together; root has its own allowance ([`ApiLimits::root`]), so no other user can lock root
//! out. A refused connection is closed at once (its log line is rate-limited). An admitted one
//! must send its request head within [`ApiLimits::header_timeout`] (also between requests on a
//! kept-alive connection, so idle connections are closed) and its body within
//! [`ApiLimits::body_timeout`] and [`ApiLimits::max_body`]; each connection's read buffer is
//! capped. So 20,000 idle connections from `nobody` cost the router a few dozen sockets and
//! tasks, and everything they held is freed when they are closed.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tower::ServiceExt as _;
use weft_mesh::admission::{Admission, Caps, LogLimiter, Refused};
use weft_sys::sockdiag::SockDiag;

/// The caps and timeouts of a listener.
#[derive(Debug, Clone, Copy)]
pub struct ApiLimits {
    /// Open connections per non-root caller.
    pub per_caller: usize,
    /// Open connections of all non-root callers together.
    pub total: usize,
    /// Open connections of root.
    pub root: usize,
    /// Time to send a request head (and to start the next one on a kept-alive connection).
    pub header_timeout: Duration,
    /// Time to send a request body.
    pub body_timeout: Duration,
    /// Largest request body.
    pub max_body: usize,
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self {
            per_caller: 64,
            total: 512,
            root: 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            max_body: 1 << 20,
        }
    }
}

/// Who is at the other end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Caller {
    /// A local process of this user.
    Local {
        /// Its uid.
        uid: u32,
    },
    /// Not identified (remote, or its socket already closed): may only read.
    Unknown(IpAddr),
}

impl Caller {
    /// Whether this caller may change the network.
    pub fn may_change(&self) -> bool {
        matches!(self, Self::Local { uid: 0 })
    }
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Local { uid } => write!(f, "uid {uid}"),
            Self::Unknown(ip) => write!(f, "{ip} (no local user identified)"),
        }
    }
}

/// Counts a listener's open connections per caller against [`ApiLimits`]; shared by the API
/// and the Docker proxy.
#[derive(Debug)]
pub struct ConnLimiter {
    limits: ApiLimits,
    inner: Mutex<LimiterState>,
}

#[derive(Debug)]
struct LimiterState {
    others: Admission<Caller>,
    root: Admission<Caller>,
    log: LogLimiter<Caller>,
}

/// An admitted connection; the count drops when this is dropped.
#[derive(Debug)]
pub struct Ticket {
    limiter: Arc<ConnLimiter>,
    caller: Caller,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut st = self.limiter.lock();
        if self.caller.may_change() {
            st.root.release(&self.caller);
        } else {
            st.others.release(&self.caller);
        }
    }
}

impl ConnLimiter {
    /// A limiter with these caps.
    pub fn new(limits: ApiLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            inner: Mutex::new(LimiterState {
                others: Admission::new(Caps {
                    per_key: limits.per_caller,
                    total: limits.total,
                }),
                root: Admission::new(Caps {
                    per_key: limits.root,
                    total: limits.root,
                }),
                log: LogLimiter::new(Duration::from_secs(60), 3, 256),
            }),
        })
    }

    /// The caps.
    pub fn limits(&self) -> ApiLimits {
        self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LimiterState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a connection of `caller`, or refuses it (logging at most a few lines a minute
    /// per caller, with a count of the rest).
    pub fn admit(self: &Arc<Self>, caller: Caller, what: &str) -> Result<Ticket, Refused> {
        let now = weft_mesh::Instant::from_duration(process_clock());
        let mut st = self.lock();
        let admitted = if caller.may_change() {
            st.root.admit(&caller)
        } else {
            st.others.admit(&caller)
        };
        for s in st.log.take_summaries(now) {
            match s.key {
                Some(c) => tracing::warn!("{what}: {} more connections of {c} refused", s.count),
                None => tracing::warn!("{what}: {} more connections refused", s.count),
            }
        }
        match admitted {
            Ok(()) => Ok(Ticket {
                limiter: self.clone(),
                caller,
            }),
            Err(e) => {
                if st.log.check(now, &caller) {
                    tracing::warn!("{what}: refusing a connection of {caller}: {e}");
                }
                Err(e)
            }
        }
    }
}

/// Time since the process started (for the log limiter's windows).
fn process_clock() -> Duration {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed()
}

/// An HTTP/1 server connection builder with the limits' header timeout and a capped read
/// buffer.
pub fn http1(limits: &ApiLimits) -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(64 * 1024)
        .keep_alive(true);
    b
}

/// Serves the API on `listener` with the access rule and the caps (replaces `axum::serve`).
pub async fn serve(listener: TcpListener, app: Router, limits: ApiLimits) {
    let limiter = ConnLimiter::new(limits);
    let app = app.layer(axum::middleware::from_fn_with_state(limits, guard_request));
    let mut diag = SockDiag::new();
    if !diag.uses_netlink() {
        tracing::warn!("sock_diag is unavailable: API callers are identified via /proc/net/tcp");
    }
    let mut accept_errors = LogLimiter::new(Duration::from_secs(60), 3, 4);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors, most likely: wait for some to be freed.
                let now = weft_mesh::Instant::from_duration(process_clock());
                if accept_errors.check(now, &()) {
                    tracing::warn!("HTTP API accept failed: {e}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let caller = match stream.local_addr() {
            Ok(local) => identify(&mut diag, peer, local),
            Err(_) => Caller::Unknown(peer.ip()),
        };
        let Ok(ticket) = limiter.admit(caller, "HTTP API") else {
            drop(stream);
            continue;
        };
        let app = app.clone();
        tokio::spawn(async move {
            let _ticket = ticket;
            let svc = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(caller);
                app.clone().oneshot(req.map(Body::new))
            });
            if let Err(e) = http1(&limits)
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!("HTTP API connection of {caller}: {e}");
            }
        });
    }
}

/// The caller behind a connection accepted from `peer` at `local`.
fn identify(diag: &mut SockDiag, peer: SocketAddr, local: SocketAddr) -> Caller {
    if !peer.ip().is_loopback() && peer.ip() != local.ip() {
        return Caller::Unknown(peer.ip());
    }
    match diag.tcp_owner(peer, local) {
        Ok(Some(o)) if o.is_live() => Caller::Local { uid: o.uid },
        Ok(_) => Caller::Unknown(peer.ip()),
        Err(e) => {
            tracing::debug!("identifying the API caller at {peer}: {e}");
            Caller::Unknown(peer.ip())
        }
    }
}

/// Whether a request changes the network.
pub fn is_change(method: &Method, path: &str) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) || path == "/ring"
}

/// Refuses changes from callers other than root; reads bodies within the limits.
async fn guard_request(
    axum::extract::State(limits): axum::extract::State<ApiLimits>,
    req: Request,
    next: Next,
) -> Response {
    let caller = req.extensions().get::<Caller>().copied();
    if is_change(req.method(), req.uri().path()) && !caller.is_some_and(|c| c.may_change()) {
        let who = caller.map_or_else(|| "an unidentified caller".to_owned(), |c| c.to_string());
        return (
            StatusCode::FORBIDDEN,
            format!(
                "weft: {} {} changes the network; only root may do that (this request came \
                 from {who})\n",
                req.method(),
                req.uri().path()
            ),
        )
            .into_response();
    }
    let (parts, body) = req.into_parts();
    let bytes = match tokio::time::timeout(
        limits.body_timeout,
        axum::body::to_bytes(body, limits.max_body),
    )
    .await
    {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("weft: request body refused: {e}\n"),
            )
                .into_response();
        }
        Err(_) => {
            return (
                StatusCode::REQUEST_TIMEOUT,
                "weft: the request body did not arrive in time\n",
            )
                .into_response();
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_changes_the_network() {
        for (m, p) in [
            (Method::POST, "/ip/c1"),
            (Method::PUT, "/ip/c1/10.32.0.5/12"),
            (Method::DELETE, "/ip/c1"),
            (Method::DELETE, "/peer"),
            (Method::DELETE, "/peer/host3"),
            (Method::POST, "/connect"),
            (Method::POST, "/forget"),
            (Method::POST, "/expose/10.32.0.1/12"),
            (Method::DELETE, "/expose/10.32.0.1/12"),
            (Method::PUT, "/name/c1/10.32.0.5"),
            (Method::PATCH, "/anything"),
            (Method::GET, "/ring"),
        ] {
            assert!(is_change(&m, p), "{m} {p}");
        }
        for p in [
            "/status",
            "/status/ipam",
            "/report",
            "/metrics",
            "/ip",
            "/ip/c1",
            "/expose",
        ] {
            assert!(!is_change(&Method::GET, p), "GET {p}");
        }
        assert!(Caller::Local { uid: 0 }.may_change());
        assert!(!Caller::Local { uid: 65534 }.may_change());
        assert!(!Caller::Unknown("127.0.0.1".parse().unwrap()).may_change());
    }

    #[test]
    fn root_has_its_own_allowance() {
        let l = ConnLimiter::new(ApiLimits {
            per_caller: 2,
            total: 3,
            root: 2,
            ..ApiLimits::default()
        });
        let nobody = Caller::Local { uid: 65534 };
        let daemon = Caller::Local { uid: 1 };
        let root = Caller::Local { uid: 0 };
        let a = l.admit(nobody, "t").unwrap();
        let _b = l.admit(nobody, "t").unwrap();
        assert!(l.admit(nobody, "t").is_err());
        let _c = l.admit(daemon, "t").unwrap();
        assert!(l.admit(daemon, "t").is_err(), "total reached");
        let _r1 = l.admit(root, "t").unwrap();
        let _r2 = l.admit(root, "t").unwrap();
        assert!(l.admit(root, "t").is_err());
        drop(a);
        assert!(l.admit(daemon, "t").is_ok(), "freed when the ticket goes");
    }
}
