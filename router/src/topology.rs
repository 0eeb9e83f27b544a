//! Layer: driver. `GET /` on the HTTP API: a page that draws the mesh live, for a person to
//! look at (`topology.html`, embedded in the binary).
//!
//! The page loads nothing from anywhere else (no scripts, fonts or styles from the network;
//! the response's Content-Security-Policy forbids it), so it works offline and behind any
//! firewall. It polls `GET /status` with `Accept: application/json` every second and redraws:
//! every peer the topology knows (this one highlighted, with its short id, its share of the
//! IPAM ring as a ring and a percentage, and its weaveDNS entry count), every connection peers
//! report (established, pending, or this peer's retrying and failed ones, with the data path,
//! `sleeve`, and whether it is encrypted), routes relayed through a third peer, dialled targets
//! nobody answers at, and the traffic rate of each of this peer's links (from the per-link
//! byte counters, [`crate::traffic`]). Elements carry `data-*` attributes (`data-name`,
//! `data-state`, ...) so tests and scripts can read the picture from the DOM.

use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::state::Shared;

/// The page.
static PAGE: &str = include_str!("topology.html");

/// What the page may load: only its own inline script and style, and `/status` from here.
const CSP: &str = "default-src 'none'; connect-src 'self'; script-src 'unsafe-inline'; \
                   style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'";

/// The route: `GET /`.
pub fn routes() -> Router<Arc<Shared>> {
    Router::new().route("/", get(page))
}

async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for needle in ["http://", "https://", "//cdn", "@import", "<link", "src=\""] {
            let hits: Vec<&str> = PAGE
                .lines()
                .filter(|l| l.contains(needle) && !l.contains("http://www.w3.org/2000/svg"))
                .collect();
            assert!(hits.is_empty(), "{needle}: {hits:?}");
        }
        assert!(PAGE.contains("fetch(\"/status\""));
    }
}
