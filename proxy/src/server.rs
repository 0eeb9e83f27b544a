//! Listening sockets (unix and TCP), the per-request dispatch and the pass-through.

use std::convert::Infallible;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::{TcpListener, UnixListener};

use crate::attach::{Attacher, short};
use crate::upstream::{Docker, Unreachable, error_response};
use crate::{Body, BoxError, Config, Endpoint, RouterSlot, full, waiter};
use weft_dockerapi::rewrite as create;
use weft_dockerapi::route::{Route, classify};
use weft_router::guard::{self, ApiLimits, Caller, ConnLimiter};

/// Largest JSON body the proxy reads to edit (create, exec, inspect answers).
const JSON_LIMIT: usize = 32 << 20;

/// A bound proxy, ready to [`Proxy::serve`].
#[derive(Debug)]
pub struct Proxy {
    listeners: Vec<Listener>,
    inner: Arc<Inner>,
}

/// One listening socket.
#[derive(Debug)]
enum Listener {
    Unix(PathBuf, UnixListener),
    Tcp(std::net::SocketAddr, TcpListener),
}

#[derive(Debug)]
struct Inner {
    config: Config,
    docker: Docker,
    attacher: Attacher,
}

/// Installs the waiter and binds every listening socket (replacing stale socket files; a unix
/// socket gets the owner and mode of Docker's own socket when that exists). A TCP address that
/// is not loopback is served with a warning: anyone who reaches it controls Docker.
pub fn bind(config: Config, router: RouterSlot) -> anyhow::Result<Proxy> {
    waiter::install(&config.waiter_dir)?;
    let mut listeners = Vec::new();
    for endpoint in &config.listen {
        match endpoint {
            Endpoint::Unix(path) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                }
                if path.exists() {
                    if std::os::unix::net::UnixStream::connect(path).is_ok() {
                        anyhow::bail!("{} is in use by another proxy", path.display());
                    }
                    std::fs::remove_file(path)
                        .with_context(|| format!("removing {}", path.display()))?;
                }
                let l = UnixListener::bind(path)
                    .with_context(|| format!("listening on unix://{}", path.display()))?;
                if let Endpoint::Unix(docker) = &config.docker_api {
                    copy_owner_and_mode(docker, path);
                }
                listeners.push(Listener::Unix(path.clone(), l));
            }
            Endpoint::Tcp(addr) => {
                let std_listener = std::net::TcpListener::bind(addr)
                    .with_context(|| format!("listening on tcp://{addr}"))?;
                std_listener.set_nonblocking(true)?;
                let l = TcpListener::from_std(std_listener)?;
                if !addr.ip().is_loopback() {
                    tracing::warn!(
                        "the Docker API proxy listens on tcp://{addr}, which is not a loopback \
                         address: whoever reaches it controls Docker on this host"
                    );
                }
                listeners.push(Listener::Tcp(l.local_addr()?, l));
            }
        }
    }
    let docker = Docker::new(config.docker_api.clone());
    let attacher = Attacher::new(docker.clone(), &config, router);
    Ok(Proxy {
        listeners,
        inner: Arc::new(Inner {
            config,
            docker,
            attacher,
        }),
    })
}

fn copy_owner_and_mode(from: &Path, to: &Path) {
    let Ok(meta) = std::fs::metadata(from) else {
        return;
    };
    if let Err(e) = std::os::unix::fs::chown(to, Some(meta.uid()), Some(meta.gid())) {
        tracing::warn!("chown {}: {e}", to.display());
    }
    let mode = meta.permissions().mode() & 0o7777;
    if let Err(e) = std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode)) {
        tracing::warn!("chmod {}: {e}", to.display());
    }
}

impl Proxy {
    /// The endpoints listened on (TCP ones with the port actually bound).
    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.listeners
            .iter()
            .map(|l| match l {
                Listener::Unix(p, _) => Endpoint::Unix(p.clone()),
                Listener::Tcp(a, _) => Endpoint::Tcp(*a),
            })
            .collect()
    }

    /// The proxy's attacher (for [`crate::lifecycle`]).
    pub fn attacher(&self) -> Attacher {
        self.inner.attacher.clone()
    }

    /// Serves until `shutdown` completes, then removes the socket files.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let inner = self.inner;
        let mut tasks = tokio::task::JoinSet::new();
        let mut paths = Vec::new();
        for listener in self.listeners {
            let inner = inner.clone();
            match listener {
                Listener::Unix(path, l) => {
                    tracing::info!("proxy listening on unix://{}", path.display());
                    paths.push(path);
                    tasks.spawn(accept_loop(l, inner));
                }
                Listener::Tcp(addr, l) => {
                    tracing::info!("proxy listening on tcp://{addr}");
                    tasks.spawn(accept_loop(l, inner));
                }
            }
        }
        shutdown.await;
        tasks.abort_all();
        for p in paths {
            let _ = std::fs::remove_file(p);
        }
        Ok(())
    }
}

/// Connection caps and the header timeout of the proxy's listeners (per client uid; bodies are
/// streamed to Docker, so they have no timeout here).
const LIMITS: ApiLimits = ApiLimits {
    per_caller: 64,
    total: 512,
    root: 1024,
    header_timeout: Duration::from_secs(30),
    body_timeout: Duration::MAX,
    max_body: usize::MAX,
};

/// A listener the proxy accepts clients on, and who a client is (for the connection caps).
trait Accept: Send + 'static {
    type Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static;
    fn accept(&self) -> impl Future<Output = std::io::Result<(Self::Stream, Caller)>> + Send;
}

impl Accept for UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn accept(&self) -> std::io::Result<(Self::Stream, Caller)> {
        let (s, _) = Self::accept(self).await?;
        let caller = match s.peer_cred() {
            Ok(c) => Caller::Local { uid: c.uid() },
            Err(_) => Caller::Unknown(std::net::Ipv4Addr::UNSPECIFIED.into()),
        };
        Ok((s, caller))
    }
}

impl Accept for TcpListener {
    type Stream = tokio::net::TcpStream;
    /// A TCP client counts by its address (whoever reaches the port controls Docker anyway).
    async fn accept(&self) -> std::io::Result<(Self::Stream, Caller)> {
        let (s, peer) = Self::accept(self).await?;
        Ok((s, Caller::Unknown(peer.ip())))
    }
}

async fn accept_loop(listener: impl Accept, inner: Arc<Inner>) {
    let limiter = ConnLimiter::new(LIMITS);
    loop {
        let (stream, caller) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("proxy accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(ticket) = limiter.admit(caller, "proxy") else {
            continue;
        };
        let inner = inner.clone();
        tokio::spawn(async move {
            let _ticket = ticket;
            let svc = service_fn(move |req| {
                let inner = inner.clone();
                async move { Ok::<_, Infallible>(handle(&inner, req).await) }
            });
            if let Err(e) = guard::http1(&LIMITS)
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades()
                .await
            {
                tracing::debug!("proxy client connection: {e}");
            }
        });
    }
}

/// Dispatches one request; never fails (errors become Docker-style error responses).
async fn handle(inner: &Inner, req: Request<Incoming>) -> Response<Body> {
    let route = classify(req.method().as_str(), req.uri().path());
    let result = match route {
        Route::Create => on_create(inner, req).await,
        Route::Start(id) => on_start(inner, req, &id).await,
        Route::Inspect(id) if inner.config.rewrite_inspect => on_inspect(inner, req, &id).await,
        Route::ExecCreate(id) => on_exec(inner, req, &id).await,
        Route::Inspect(_) | Route::Other => forward(inner, req).await,
    };
    result.unwrap_or_else(|e| {
        if let Some(u) = e.downcast_ref::<Unreachable>() {
            return error_response(StatusCode::BAD_GATEWAY, &u.to_string());
        }
        tracing::warn!("proxy: {e:#}");
        error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("weft proxy: {e:#}"),
        )
    })
}

fn wants_upgrade(req: &Request<Incoming>) -> bool {
    req.headers().contains_key(header::UPGRADE)
}

/// Passes a request through untouched; upgraded (hijacked) connections are spliced both ways.
async fn forward(inner: &Inner, mut req: Request<Incoming>) -> anyhow::Result<Response<Body>> {
    let client_upgrade = wants_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
    let req = req.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed());
    let mut resp = inner.docker.send(req).await?;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                match tokio::try_join!(client_upgrade, upstream_upgrade) {
                    Ok((client, upstream)) => {
                        let mut client = TokioIo::new(client);
                        let mut upstream = TokioIo::new(upstream);
                        if let Err(e) =
                            tokio::io::copy_bidirectional(&mut client, &mut upstream).await
                        {
                            tracing::debug!("hijacked stream: {e}");
                        }
                    }
                    Err(e) => tracing::debug!("upgrade failed: {e}"),
                }
            });
        }
    }
    Ok(resp.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed()))
}

/// Reads a request body (bounded) and returns the head and the bytes.
async fn read_body(req: Request<Incoming>) -> anyhow::Result<(hyper::http::request::Parts, Bytes)> {
    let (parts, body) = req.into_parts();
    let bytes = Limited::new(body, JSON_LIMIT)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading the request body: {e}"))?
        .to_bytes();
    Ok((parts, bytes))
}

/// Sends a request whose body the proxy has (maybe) rewritten.
async fn send_with_body(
    inner: &Inner,
    mut parts: hyper::http::request::Parts,
    body: Vec<u8>,
) -> anyhow::Result<Response<Body>> {
    parts.headers.remove(header::TRANSFER_ENCODING);
    parts.headers.insert(
        header::CONTENT_LENGTH,
        header::HeaderValue::from(body.len()),
    );
    let req = Request::from_parts(parts, full(body));
    let resp = inner.docker.send(req).await?;
    Ok(resp.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed()))
}

async fn on_create(inner: &Inner, req: Request<Incoming>) -> anyhow::Result<Response<Body>> {
    let (parts, bytes) = read_body(req).await?;
    let Ok(mut body) = serde_json::from_slice::<Value>(&bytes) else {
        // Not JSON: Docker will say what is wrong with it.
        return send_with_body(inner, parts, bytes.to_vec()).await;
    };
    match create::decide(&body, inner.config.no_default_ipalloc) {
        Ok(None) => return send_with_body(inner, parts, bytes.to_vec()).await,
        Ok(Some(_)) => {}
        Err(msg) => {
            return Ok(error_response(
                StatusCode::BAD_REQUEST,
                &format!("weft: {msg}"),
            ));
        }
    }
    let image_config = if create::needs_image(&body) {
        let image = body["Image"].as_str().unwrap_or_default().to_owned();
        match inner.docker.image_config(&image).await? {
            Some(c) => Some(c),
            // The docker CLI pulls the image on this answer and creates again.
            None => {
                return Ok(error_response(
                    StatusCode::NOT_FOUND,
                    &format!("No such image: {image}"),
                ));
            }
        }
    } else {
        None
    };
    let dir = inner.config.waiter_dir.to_string_lossy().into_owned();
    if let Err(msg) = create::rewrite_create_with(
        &mut body,
        image_config.as_ref(),
        &dir,
        inner.config.multicast_route,
    ) {
        return Ok(error_response(StatusCode::BAD_REQUEST, &msg));
    }
    if !inner.config.without_dns {
        dns_create(inner, parts.uri.query(), &mut body).await;
    }
    send_with_body(inner, parts, serde_json::to_vec(&body)?).await
}

/// weaveDNS hook (issue 11): the joining container gets a hostname from its name and
/// weaveDNS as its resolver (nothing when the router runs `--no-dns`).
async fn dns_create(inner: &Inner, query: Option<&str>, body: &mut Value) {
    let Some(router) = inner.attacher.router_now() else {
        tracing::info!("weaveDNS: no router running yet; the container keeps its resolver");
        return;
    };
    let Some(domain) = router.dns_domain() else {
        return;
    };
    let name = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("name="))
        .unwrap_or("")
        .trim_start_matches("%2F")
        .trim_start_matches('/');
    let hostname = inner.config.hostname.hostname(name, body);
    let addr = router.dns_address().await.map(|a| a.ip().to_string());
    if addr.is_none() {
        tracing::warn!(
            "weaveDNS: the container keeps its resolver: DNS listens nowhere containers reach \
             (no Docker bridge, no address on the weave bridge)"
        );
    }
    weft_dockerapi::dns::rewrite_create(body, &hostname, &domain, addr.as_deref());
}

async fn on_start(
    inner: &Inner,
    req: Request<Incoming>,
    id: &str,
) -> anyhow::Result<Response<Body>> {
    // Docker's `start` event for this container is left to this call.
    let _in_flight = match inner.docker.inspect(id).await? {
        Some(i) => i["Id"].as_str().map(|full| inner.attacher.api_start(full)),
        None => None,
    };
    let resp = forward(inner, req).await?;
    if !resp.status().is_success() {
        return Ok(resp);
    }
    // Keep Docker's (empty) answer; it goes back once the network is plumbed.
    let (parts, body) = resp.into_parts();
    let bytes = body
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading Docker's start answer: {e}"))?
        .to_bytes();
    match inner.attacher.attach(id).await {
        Ok(_) => Ok(Response::from_parts(parts, full(bytes))),
        Err(e) => {
            tracing::warn!(container = %short(id), "attach failed, stopping it: {e:#}");
            inner.attacher.fail(id).await;
            Ok(error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!(
                    "weft: could not attach container {} to the weave network: {e:#}",
                    short(id)
                ),
            ))
        }
    }
}

async fn on_inspect(
    inner: &Inner,
    req: Request<Incoming>,
    id: &str,
) -> anyhow::Result<Response<Body>> {
    let resp = forward(inner, req).await?;
    if resp.status() != StatusCode::OK {
        return Ok(resp);
    }
    let (mut parts, body) = resp.into_parts();
    let bytes = body
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading Docker's inspect answer: {e}"))?
        .to_bytes();
    let Ok(mut v) = serde_json::from_slice::<Value>(&bytes) else {
        return Ok(Response::from_parts(parts, full(bytes)));
    };
    let full_id = v["Id"].as_str().unwrap_or(id).to_owned();
    let shown = match inner.attacher.joined(&full_id).await {
        Some(j) => j.addrs.first().map(|a| (*a, j.mac)),
        // Not attached by this proxy (yet): a joined container that kept its ethwe across a
        // router or proxy restart still shows its weave address from the first request on.
        None => ethwe_of_running(&v).await,
    };
    let Some((first, mac)) = shown else {
        return Ok(Response::from_parts(parts, full(bytes)));
    };
    create::rewrite_inspect(&mut v, first, mac);
    let out = serde_json::to_vec(&v)?;
    parts.headers.remove(header::TRANSFER_ENCODING);
    parts
        .headers
        .insert(header::CONTENT_LENGTH, header::HeaderValue::from(out.len()));
    Ok(Response::from_parts(parts, full(out)))
}

/// The first address and MAC of `ethwe` in a running proxy-joined container, read from its
/// network namespace.
async fn ethwe_of_running(inspect: &Value) -> Option<(ipnet::Ipv4Net, [u8; 6])> {
    if !create::is_joined(inspect) || inspect["State"]["Running"].as_bool() != Some(true) {
        return None;
    }
    let pid = u32::try_from(inspect["State"]["Pid"].as_u64()?).ok()?;
    let ns = weft_sys::netns::NetNs::from_pid(pid).ok()?;
    let (mac, addrs) = weft_router::attach::ethwe(&ns).await.ok()??;
    addrs.first().map(|a| (*a, mac))
}

async fn on_exec(
    inner: &Inner,
    req: Request<Incoming>,
    id: &str,
) -> anyhow::Result<Response<Body>> {
    let (parts, bytes) = read_body(req).await?;
    let waiter = match inner.docker.inspect(id).await {
        Ok(Some(i)) => match create::decide_inspected(&i, inner.config.no_default_ipalloc) {
            Ok(Some(_)) => create::waiter_of(&i),
            _ => None,
        },
        _ => None,
    };
    let Some(waiter) = waiter else {
        return send_with_body(inner, parts, bytes.to_vec()).await;
    };
    let Ok(mut body) = serde_json::from_slice::<Value>(&bytes) else {
        return send_with_body(inner, parts, bytes.to_vec()).await;
    };
    create::rewrite_exec_with(&mut body, waiter);
    send_with_body(inner, parts, serde_json::to_vec(&body)?).await
}
