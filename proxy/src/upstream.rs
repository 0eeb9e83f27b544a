//! The connection to the real Docker daemon: one fresh connection per request (unix socket or
//! TCP, as Weave's proxy does), with upgrades enabled so hijacked streams can be spliced, and a
//! few JSON calls of the proxy's own (inspect, kill, list, events).
//!
//! [`Docker::container`] is the one place that turns a Docker container name or id into what
//! weft needs to act on it (full id, pid, so its network namespace, hostname, hosts file):
//! `weave attach`/`detach`/`ps`/`dns-*` and the proxy all resolve containers through it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::{TcpStream, UnixStream};

use crate::{Body, Endpoint};

/// Could not reach the Docker daemon at all (as opposed to Docker answering with an error).
#[derive(Debug)]
pub struct Unreachable {
    /// The endpoint tried.
    pub endpoint: Endpoint,
    /// What went wrong.
    pub error: std::io::Error,
}

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "weft proxy: cannot connect to the Docker daemon at {}: {}. Is dockerd running?",
            self.endpoint, self.error
        )
    }
}

impl std::error::Error for Unreachable {}

/// The upstream Docker daemon.
#[derive(Debug, Clone)]
pub struct Docker {
    endpoint: Endpoint,
}

/// A Docker container, as weft needs it (from `GET /containers/{name-or-id}/json`).
#[derive(Debug, Clone)]
pub struct Container {
    /// Full id (64 hex digits): the container's IPAM ident.
    pub id: String,
    /// Name, without Docker's leading `/`.
    pub name: String,
    /// Pid of its process while it runs (its network namespace is `/proc/PID/ns/net`).
    pub pid: Option<u32>,
    /// Whether it runs (and is not restarting).
    pub running: bool,
    /// `Config.Hostname`.
    pub hostname: String,
    /// `Config.Domainname`.
    pub domainname: String,
    /// The host path of its `/etc/hosts` (`HostsPath`), if Docker manages one.
    pub hosts_path: Option<PathBuf>,
    /// `HostConfig.NetworkMode` (`container:ID` for a container sharing another's namespace).
    pub network_mode: String,
    /// The whole inspect answer.
    pub inspect: Value,
}

impl Container {
    /// Reads the fields from an inspect answer; `None` if it has no `Id`.
    pub fn from_inspect(inspect: Value) -> Option<Self> {
        let id = inspect["Id"].as_str()?.to_owned();
        let running = inspect["State"]["Running"].as_bool() == Some(true)
            && inspect["State"]["Restarting"].as_bool() != Some(true);
        let pid = inspect["State"]["Pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p != 0 && running);
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        Some(Self {
            id,
            name: text(&inspect["Name"]).trim_start_matches('/').to_owned(),
            pid,
            running,
            hostname: text(&inspect["Config"]["Hostname"]),
            domainname: text(&inspect["Config"]["Domainname"]),
            hosts_path: inspect["HostsPath"]
                .as_str()
                .filter(|p| !p.is_empty())
                .map(PathBuf::from),
            network_mode: text(&inspect["HostConfig"]["NetworkMode"]),
            inspect,
        })
    }

    /// Docker's 12-character short id.
    pub fn short_id(&self) -> &str {
        crate::attach::short(&self.id)
    }

    /// The fully qualified name Weave registers in DNS (`hostname.domainname`), if that is a
    /// name with a domain.
    pub fn fqdn(&self) -> Option<String> {
        weft_dockerapi::dns::container_fqdn(&self.inspect)
    }
}

impl Docker {
    /// Docker at this endpoint.
    pub fn new(endpoint: Endpoint) -> Self {
        Self { endpoint }
    }

    /// Docker at this unix socket.
    pub fn unix(socket: impl Into<PathBuf>) -> Self {
        Self::new(Endpoint::Unix(socket.into()))
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Resolves a container name, full id or unique id prefix (anything `docker inspect`
    /// takes); `None` if Docker knows no such container.
    pub async fn container(&self, name_or_id: &str) -> anyhow::Result<Option<Container>> {
        if name_or_id.is_empty() || name_or_id.contains(['/', '?', '#', '%', ' ']) {
            return Ok(None);
        }
        Ok(self
            .inspect(name_or_id)
            .await?
            .and_then(Container::from_inspect))
    }

    /// Sends one request on a fresh connection. Upgrades (hijacked streams) work on the
    /// returned response. `Err` only when the daemon cannot be reached or the connection breaks.
    pub async fn send(&self, req: Request<Body>) -> anyhow::Result<Response<Incoming>> {
        let unreachable = |error| Unreachable {
            endpoint: self.endpoint.clone(),
            error,
        };
        match &self.endpoint {
            Endpoint::Unix(path) => {
                let stream = UnixStream::connect(path).await.map_err(unreachable)?;
                Self::exchange(stream, req).await
            }
            Endpoint::Tcp(addr) => {
                let stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
                    .await
                    .map_err(|_| unreachable(std::io::ErrorKind::TimedOut.into()))?
                    .map_err(unreachable)?;
                Self::exchange(stream, req).await
            }
        }
    }

    async fn exchange<S>(stream: S, req: Request<Body>) -> anyhow::Result<Response<Incoming>>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP handshake with the Docker daemon")?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!("upstream connection: {e}");
            }
        });
        Ok(sender.send_request(req).await?)
    }

    /// A request of the proxy's own, with a JSON body or none; returns status and the parsed
    /// body (`Null` when empty or not JSON). Bounded by `limit`.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        limit: Duration,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "docker");
        let body: Body = match body {
            Some(v) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                crate::full(serde_json::to_vec(v)?)
            }
            None => Empty::new().map_err(|n| match n {}).boxed(),
        };
        let fut = async {
            let resp = self.send(req.body(body)?).await?;
            let status = resp.status();
            let bytes = resp.into_body().collect().await?.to_bytes();
            let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            anyhow::Ok((status, value))
        };
        tokio::time::timeout(limit, fut)
            .await
            .with_context(|| format!("the Docker daemon did not answer {path} in {limit:?}"))?
    }

    /// `GET /containers/{id}/json`; `None` if there is no such container.
    pub async fn inspect(&self, id: &str) -> anyhow::Result<Option<Value>> {
        let (status, v) = self
            .call(
                Method::GET,
                &format!("/containers/{id}/json"),
                None,
                TIMEOUT,
            )
            .await?;
        match status {
            StatusCode::OK => Ok(Some(v)),
            StatusCode::NOT_FOUND => Ok(None),
            s => bail!("inspecting container {id}: {s} {}", message(&v)),
        }
    }

    /// `GET /images/{name}/json`'s `Config`; `None` if there is no such image.
    pub async fn image_config(&self, name: &str) -> anyhow::Result<Option<Value>> {
        let (status, mut v) = self
            .call(Method::GET, &format!("/images/{name}/json"), None, TIMEOUT)
            .await?;
        match status {
            StatusCode::OK => Ok(Some(v["Config"].take())),
            StatusCode::NOT_FOUND => Ok(None),
            s => bail!("inspecting image {name}: {s} {}", message(&v)),
        }
    }

    /// Kills a container (after a failed attach), bounded in time so a hung daemon cannot hold
    /// the proxy (Weave #2032).
    pub async fn kill(&self, id: &str) -> anyhow::Result<()> {
        let (status, v) = self
            .call(
                Method::POST,
                &format!("/containers/{id}/kill"),
                None,
                TIMEOUT,
            )
            .await?;
        if !status.is_success() && status != StatusCode::CONFLICT {
            bail!("killing container {id}: {status} {}", message(&v));
        }
        Ok(())
    }

    /// Ids of the running containers.
    pub async fn running(&self) -> anyhow::Result<Vec<String>> {
        self.list("/containers/json").await
    }

    /// Ids of all containers, running or not.
    pub async fn all(&self) -> anyhow::Result<Vec<String>> {
        self.list("/containers/json?all=1").await
    }

    async fn list(&self, path: &str) -> anyhow::Result<Vec<String>> {
        let (status, v) = self.call(Method::GET, path, None, TIMEOUT).await?;
        if !status.is_success() {
            bail!("listing containers: {status} {}", message(&v));
        }
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c["Id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Opens the container event stream.
    pub async fn events(&self) -> anyhow::Result<Incoming> {
        let filter = r#"{"type":["container"],"event":["start","die","destroy"]}"#;
        let path = format!(
            "/events?filters={}",
            weft_router::client::form_escape(filter)
        );
        let req = Request::builder()
            .method(Method::GET)
            .uri(path)
            .header(header::HOST, "docker")
            .body(Empty::new().map_err(|n| match n {}).boxed())?;
        let resp = self.send(req).await?;
        if !resp.status().is_success() {
            bail!("subscribing to Docker events: {}", resp.status());
        }
        Ok(resp.into_body())
    }
}

/// How long the proxy's own calls may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Docker's error message in an error body.
pub fn message(v: &Value) -> String {
    v["message"].as_str().unwrap_or_default().to_owned()
}

/// A Docker-style error response (`{"message": ...}`), which the docker CLI prints as
/// "Error response from daemon: ...".
pub fn error_response(status: StatusCode, msg: &str) -> Response<Body> {
    let body = serde_json::json!({ "message": msg }).to_string();
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(crate::full(body))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).map_err(|n| match n {}).boxed()))
}
