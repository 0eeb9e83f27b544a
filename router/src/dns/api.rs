//! Layer: driver. weaveDNS's HTTP API, after Weave's (`nameserver/http.go`):
//!
//! - `PUT /name/{container}/{ip}` with form value `fqdn=NAME` (in the body or the query string;
//!   Weave's `check-alive` is accepted and ignored: the proxy removes names when containers die);
//! - `DELETE /name/{container}/{ip}`, `DELETE /name/{container}`, `DELETE /name`, each narrowed
//!   by an optional `fqdn=NAME`;
//! - `GET /name`: every entry as JSON; `GET /dns-address` (what containers use as their
//!   nameserver) and `GET /dns-address-port`.
//!
//! With `--no-dns` every one of them answers 404, which `weave dns-args` takes as "no DNS".
//! `GET /domain` and `GET /status/dns` are served with the other reports ([`crate::api`]).

use std::net::Ipv4Addr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};

use super::DnsService;
use crate::state::Shared;

/// The DNS routes.
pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/name", get(list).delete(delete_all))
        .route("/name/{container}", axum::routing::delete(delete_container))
        .route("/name/{container}/{ip}", put(add).delete(delete_one))
        .route("/dns-address", get(address))
        .route("/dns-address-port", get(address_port))
}

/// A request the API refuses: the status and the message the client sees.
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

fn service(shared: &Shared) -> Result<Arc<DnsService>, Refusal> {
    shared
        .dns()
        .dns
        .as_ref()
        .map(|d| d.service.clone())
        .ok_or_else(|| {
            Refusal(
                StatusCode::NOT_FOUND,
                "DNS is disabled on this router (--no-dns)\n".to_owned(),
            )
        })
}

/// Form values from the query string and the body (`fqdn`, `check-alive`).
fn form(query: Option<&str>, body: &[u8]) -> Vec<(String, String)> {
    let mut v = crate::api::parse_form(query.unwrap_or("").as_bytes());
    v.extend(crate::api::parse_form(body));
    v
}

fn value<'a>(form: &'a [(String, String)], key: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, v)| k == key && !v.is_empty())
        .map(|(_, v)| v.as_str())
}

fn parse_ip(ip: &str) -> Result<Ipv4Addr, Refusal> {
    ip.parse().map_err(|_| {
        Refusal(
            StatusCode::BAD_REQUEST,
            format!("'{ip}' is not an IPv4 address\n"),
        )
    })
}

async fn add(
    State(shared): State<Arc<Shared>>,
    Path((container, ip)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let svc = match service(&shared) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let addr = match parse_ip(&ip) {
        Ok(a) => a,
        Err(r) => return r.into_response(),
    };
    let form = form(query.as_deref(), &body);
    let Some(fqdn) = value(&form, "fqdn") else {
        return (StatusCode::BAD_REQUEST, "missing fqdn=NAME\n").into_response();
    };
    let result = svc.names().add(svc.now(), fqdn, &container, addr);
    shared.wake.notify_one();
    match result {
        Ok(changed) => {
            if changed {
                tracing::info!("DNS: {container} registered {fqdn} -> {addr}");
            }
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

fn delete(
    shared: &Shared,
    container: Option<&str>,
    ip: Option<&str>,
    query: Option<&str>,
    body: &[u8],
) -> Response {
    let svc = match service(shared) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let addr = match ip.map(parse_ip).transpose() {
        Ok(a) => a,
        Err(r) => return r.into_response(),
    };
    let form = form(query, body);
    let fqdn = value(&form, "fqdn");
    let n = svc.names().delete(svc.now(), fqdn, container, addr);
    shared.wake.notify_one();
    if n > 0 {
        tracing::info!(
            "DNS: removed {n} entries (container {}, address {}, name {})",
            container.unwrap_or("*"),
            ip.unwrap_or("*"),
            fqdn.unwrap_or("*")
        );
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn delete_one(
    State(shared): State<Arc<Shared>>,
    Path((container, ip)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    delete(
        &shared,
        Some(&container),
        Some(&ip),
        query.as_deref(),
        &body,
    )
}

async fn delete_container(
    State(shared): State<Arc<Shared>>,
    Path(container): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    delete(&shared, Some(&container), None, query.as_deref(), &body)
}

async fn delete_all(
    State(shared): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    delete(&shared, None, None, query.as_deref(), &body)
}

async fn list(State(shared): State<Arc<Shared>>) -> Response {
    let svc = match service(&shared) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let entries: Vec<serde_json::Value> = svc
        .names()
        .entries()
        .map(|e| {
            serde_json::json!({
                "ContainerID": e.container,
                "Origin": e.origin.to_string(),
                "Addr": e.addr.to_string(),
                "Hostname": e.hostname,
                "Version": e.version,
                "Tombstone": e.tombstone,
            })
        })
        .collect();
    axum::Json(entries).into_response()
}

async fn advertised(shared: &Shared) -> Result<std::net::SocketAddr, Refusal> {
    let svc = service(shared)?;
    super::server::advertised(&svc).await.ok_or_else(|| {
        Refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "DNS is not reachable from containers yet: no bridge {} and no address on the \
                 weave bridge (give it one with 'weft expose')\n",
                svc.config.docker_bridge
            ),
        )
    })
}

async fn address(State(shared): State<Arc<Shared>>) -> Response {
    match advertised(&shared).await {
        Ok(a) => a.ip().to_string().into_response(),
        Err(r) => r.into_response(),
    }
}

async fn address_port(State(shared): State<Arc<Shared>>) -> Response {
    match advertised(&shared).await {
        Ok(a) => a.to_string().into_response(),
        Err(r) => r.into_response(),
    }
}
