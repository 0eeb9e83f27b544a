//! Listening sockets, the per-request dispatch and pass-through, and the event follower.

use std::convert::Infallible;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::UnixListener;

use crate::attach::{Attacher, short};
use crate::upstream::{Docker, Unreachable, error_response};
use crate::{Body, BoxError, Config, full, waiter};
use weft_dockerapi::events::split_json_stream;
use weft_dockerapi::rewrite as create;
use weft_dockerapi::route::{Route, classify};

/// Largest JSON body the proxy reads to edit (create, exec, inspect answers).
const JSON_LIMIT: usize = 32 << 20;

/// A bound proxy, ready to [`Proxy::serve`].
#[derive(Debug)]
pub struct Proxy {
    listeners: Vec<(PathBuf, UnixListener)>,
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: Config,
    docker: Docker,
    attacher: Attacher,
}

/// Installs the waiter and binds every listening socket (replacing stale socket files; the
/// socket gets the owner and mode of Docker's own socket when that exists).
pub fn bind(config: Config) -> anyhow::Result<Proxy> {
    waiter::install(&config.waiter_dir)?;
    let mut listeners = Vec::new();
    for path in &config.listen {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                anyhow::bail!("{} is in use by another proxy", path.display());
            }
            std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
        }
        let l = UnixListener::bind(path)
            .with_context(|| format!("listening on unix://{}", path.display()))?;
        copy_owner_and_mode(&config.docker_api, path);
        listeners.push((path.clone(), l));
    }
    let docker = Docker::new(&config.docker_api);
    let attacher = Attacher::new(docker.clone(), &config);
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
    /// The sockets listened on.
    pub fn sockets(&self) -> Vec<PathBuf> {
        self.listeners.iter().map(|(p, _)| p.clone()).collect()
    }

    /// Serves until `shutdown` completes, then removes the socket files.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let inner = self.inner;
        let mut tasks = tokio::task::JoinSet::new();
        let mut paths = Vec::new();
        for (path, listener) in self.listeners {
            tracing::info!("proxy listening on unix://{}", path.display());
            paths.push(path);
            let inner = inner.clone();
            tasks.spawn(accept_loop(listener, inner));
        }
        tasks.spawn(follow_events(inner.clone()));
        {
            let inner = inner.clone();
            tasks.spawn(async move { inner.attacher.reattach_all().await });
        }
        shutdown.await;
        tasks.abort_all();
        for p in paths {
            let _ = std::fs::remove_file(p);
        }
        Ok(())
    }
}

async fn accept_loop(listener: UnixListener, inner: Arc<Inner>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("proxy accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let inner = inner.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let inner = inner.clone();
                async move { Ok::<_, Infallible>(handle(&inner, req).await) }
            });
            if let Err(e) = http1::Builder::new()
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
    if let Err(msg) = create::rewrite_create(&mut body, image_config.as_ref(), &dir) {
        return Ok(error_response(StatusCode::BAD_REQUEST, &msg));
    }
    send_with_body(inner, parts, serde_json::to_vec(&body)?).await
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
    let Some(joined) = inner.attacher.joined(&full_id).await else {
        return Ok(Response::from_parts(parts, full(bytes)));
    };
    let Some(first) = joined.addrs.first() else {
        return Ok(Response::from_parts(parts, full(bytes)));
    };
    create::rewrite_inspect(&mut v, *first, joined.mac);
    let out = serde_json::to_vec(&v)?;
    parts.headers.remove(header::TRANSFER_ENCODING);
    parts
        .headers
        .insert(header::CONTENT_LENGTH, header::HeaderValue::from(out.len()));
    Ok(Response::from_parts(parts, full(out)))
}

async fn on_exec(
    inner: &Inner,
    req: Request<Incoming>,
    id: &str,
) -> anyhow::Result<Response<Body>> {
    let (parts, bytes) = read_body(req).await?;
    let joined = match inner.docker.inspect(id).await {
        Ok(Some(i)) => matches!(
            create::decide_inspected(&i, inner.config.no_default_ipalloc),
            Ok(Some(_))
        ),
        _ => false,
    };
    if !joined {
        return send_with_body(inner, parts, bytes.to_vec()).await;
    }
    let Ok(mut body) = serde_json::from_slice::<Value>(&bytes) else {
        return send_with_body(inner, parts, bytes.to_vec()).await;
    };
    create::rewrite_exec(&mut body);
    send_with_body(inner, parts, serde_json::to_vec(&body)?).await
}

/// Follows Docker's container events for the lifecycle the proxy does not see as calls:
/// restarts Docker does by itself, deaths and removals. Resubscribes with backoff.
async fn follow_events(inner: Arc<Inner>) {
    let mut delay = Duration::from_millis(500);
    loop {
        match inner.docker.events().await {
            Ok(mut body) => {
                delay = Duration::from_millis(500);
                let mut buf = Vec::new();
                while let Some(frame) = body.frame().await {
                    let Ok(frame) = frame else { break };
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    buf.extend_from_slice(&data);
                    for ev in split_json_stream(&mut buf) {
                        on_event(&inner, &ev).await;
                    }
                }
                tracing::info!("Docker event stream ended; resubscribing");
            }
            Err(e) => tracing::debug!("Docker events: {e:#}"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

async fn on_event(inner: &Arc<Inner>, ev: &Value) {
    let action = ev["Action"]
        .as_str()
        .or(ev["status"].as_str())
        .unwrap_or_default();
    let Some(id) = ev["Actor"]["ID"].as_str().or(ev["id"].as_str()) else {
        return;
    };
    let id = id.to_owned();
    match action {
        "start" if inner.attacher.in_api_start(&id) => {}
        "start" => {
            let attacher = inner.attacher.clone();
            tokio::spawn(async move {
                match attacher.attach(&id).await {
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(container = %short(&id), "attach after start failed, stopping it: {e:#}");
                        attacher.fail(&id).await;
                    }
                }
            });
        }
        "die" => inner.attacher.died(&id),
        "destroy" => {
            let attacher = inner.attacher.clone();
            tokio::spawn(async move { attacher.destroyed(&id).await });
        }
        _ => {}
    }
}
