//! Layer: driver. The daemon's control socket, `<run-dir>/control.sock` (mode 0600): how the
//! launch and stop verbs ask the running daemon to start or stop its router, proxy or Docker
//! network plugin.
//!
//! One request per connection, one JSON line each way. The router's HTTP API cannot carry
//! this: it does not exist while only the proxy runs. The password travels in the request,
//! hence the socket's mode.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::Global;
use crate::launch::{PluginSpec, ProxySpec, RouterSpec};

/// The socket's file name in the run directory.
pub(crate) const SOCKET: &str = "control.sock";

/// The control socket of the daemon for `global`'s run directory.
pub(crate) fn socket(global: &Global) -> PathBuf {
    global.run_dir.join(SOCKET)
}

/// What the CLI asks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub(crate) enum Request {
    /// Start these parts. A part that already runs with the same spec is fine (Weave 1.x's
    /// launch verbs were idempotent); with another spec it is an error.
    Start {
        router: Option<Box<RouterSpec>>,
        proxy: Option<Box<ProxySpec>>,
        /// A proxy that fails to start is only a warning (Weave 2's implied proxy).
        proxy_optional: bool,
        /// The router must not be running yet (Weave 2's `launch`).
        exclusive: bool,
        /// The Docker network plugin.
        #[serde(default)]
        plugin: Option<Box<PluginSpec>>,
    },
    /// Stop these parts; the daemon exits when none is left.
    Stop {
        router: bool,
        proxy: bool,
        #[serde(default)]
        plugin: bool,
    },
    /// What runs.
    Status,
}

/// What the daemon answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub(crate) enum Response {
    /// The parts run: the router's peer name and the proxy's addresses, if they run.
    Started {
        router: Option<String>,
        proxy: Option<Vec<String>>,
        /// The network plugin's socket, if it runs.
        #[serde(default)]
        plugin: Option<String>,
    },
    /// Which parts were running (and are stopped now).
    Stopped {
        router: bool,
        proxy: bool,
        #[serde(default)]
        plugin: bool,
    },
    /// What runs, with the specs.
    Status(Box<DaemonStatus>),
    /// The request failed.
    Error { error: String },
}

/// What a daemon runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct DaemonStatus {
    /// The daemon's pid.
    pub(crate) pid: u32,
    /// The router's spec, while it runs.
    pub(crate) router: Option<RouterSpec>,
    /// The proxy's spec, while it runs.
    pub(crate) proxy: Option<ProxySpec>,
    /// The network plugin's spec, while it runs.
    #[serde(default)]
    pub(crate) plugin: Option<PluginSpec>,
}

/// No daemon answers on the control socket.
#[derive(Debug)]
pub(crate) struct NotRunning(pub(crate) std::io::Error);

impl std::fmt::Display for NotRunning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "weft is not running ({})", self.0)
    }
}

impl std::error::Error for NotRunning {}

/// Whether `e` says that no daemon runs.
pub(crate) fn is_not_running(e: &anyhow::Error) -> bool {
    e.downcast_ref::<NotRunning>().is_some()
}

/// Sends one request and reads the answer. Starting the router may wait for a password to be
/// stretched and the bridge to be made, so the answer may take a while.
pub(crate) fn send(global: &Global, req: &Request) -> anyhow::Result<Response> {
    let path = socket(global);
    let mut stream = UnixStream::connect(&path).map_err(NotRunning)?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .with_context(|| format!("writing to {}", path.display()))?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .with_context(|| format!("reading the answer on {}", path.display()))?;
    if answer.trim().is_empty() {
        anyhow::bail!(
            "the weft daemon closed {} without answering",
            path.display()
        );
    }
    serde_json::from_str(&answer).with_context(|| format!("the weft daemon answered {answer:?}"))
}

/// What the daemon runs; `None` when no daemon runs.
pub(crate) fn status(global: &Global) -> anyhow::Result<Option<DaemonStatus>> {
    match send(global, &Request::Status) {
        Ok(Response::Status(s)) => Ok(Some(*s)),
        Ok(other) => anyhow::bail!("unexpected answer from the weft daemon: {other:?}"),
        Err(e) if is_not_running(&e) => Ok(None),
        Err(e) => Err(e),
    }
}
