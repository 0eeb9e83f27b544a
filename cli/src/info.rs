//! Layer: driver. Small verbs that print what scripts read: `version`, `prime`, `dns-args`,
//! `docker-bridge-ip` (Weave 2.8.1's shapes and exit codes: an HTTP 404 from the router exits
//! 4, any other failure 1).

use std::io::Write;
use std::process::ExitCode;

use hyper::StatusCode;
use ipnet::IpNet;

use crate::{Global, http, runtime};

/// weft's version, where Weave prints its own.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `weave version`: `weave script X` and `weave Y` (the running router's version, else this
/// binary's, as Weave falls back to `weaver --version`).
pub(crate) fn version(global: &Global) -> anyhow::Result<ExitCode> {
    println!("weave script {VERSION}");
    let running = runtime()?
        .block_on(http::get(global.http_addr, "/report", true))
        .ok()
        .filter(|(code, _)| code.is_success())
        .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
        .and_then(|v| {
            v["Version"]
                .as_str()
                .or(v["version"].as_str())
                .map(str::to_owned)
        });
    println!("weave {}", running.unwrap_or_else(|| VERSION.to_owned()));
    Ok(ExitCode::SUCCESS)
}

/// Weave's `http_call` result: 2xx prints the body to stdout (exit 0), 404 exits 4 quietly,
/// anything else prints the body to stderr (exit 1).
fn http_exit(code: StatusCode, body: &str) -> ExitCode {
    if code.is_success() {
        print!("{body}");
        let _ = std::io::stdout().flush();
        ExitCode::SUCCESS
    } else if code == StatusCode::NOT_FOUND {
        ExitCode::from(4)
    } else {
        eprint!("{body}");
        ExitCode::FAILURE
    }
}

/// `weave prime`: `GET /ring`, which returns once this peer has a share of the range.
pub(crate) fn prime(global: &Global) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    let (code, body) = rt.block_on(async {
        // Consensus may take a while; no time limit beyond the client's own.
        http::get(global.http_addr, "/ring", false).await
    })?;
    Ok(http_exit(code, &body))
}

/// `weave docker-bridge-ip`: the IPv4 address of the Docker bridge (`DOCKER_BRIDGE`, default
/// `docker0`), without a newline, as Weave's `weaveutil bridge-ip` prints it.
pub(crate) fn docker_bridge_ip() -> anyhow::Result<ExitCode> {
    let name = std::env::var("DOCKER_BRIDGE")
        .ok()
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| "docker0".to_owned());
    let ip = runtime()?.block_on(async {
        let nl = weft_sys::netlink::Netlink::new()?;
        let Some(index) = nl.link_index(&name).await? else {
            anyhow::bail!("Bridge {name} not found");
        };
        nl.addresses(index)
            .await?
            .into_iter()
            .find_map(|a| match a {
                IpNet::V4(n) => Some(n.addr()),
                IpNet::V6(_) => None,
            })
            .ok_or_else(|| anyhow::anyhow!("Bridge {name} has no IPv4 address"))
    })?;
    print!("{ip}");
    let _ = std::io::stdout().flush();
    Ok(ExitCode::SUCCESS)
}
