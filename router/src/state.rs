//! Layer: driver. State shared between the router's tasks and the HTTP API: the connection
//! registry, the targets, and the last copy of the data-plane counters. Also the status report
//! types the API serialises (the CLI reads them back).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use weft_mesh::{ConnMaker, Mesh};
use weft_overlay::Counters;

use crate::dataplane::DpCommand;

/// What a connection task can be told to do.
#[derive(Debug)]
pub enum ConnCommand {
    /// Tell the remote its UDP heartbeats reach us.
    SendDataPathAck,
    /// Send this message (gossip).
    Send(weft_wire::control::Message),
    /// Close the connection with this reason (e.g. a duplicate).
    Close(&'static str),
}

/// A connection's life, as `weft status connections` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnState {
    /// Dialling, or TCP up and the handshake under way.
    Connecting,
    /// The last attempt failed; another one is scheduled.
    Retrying,
    /// Handshake done, data path not yet confirmed both ways.
    Pending,
    /// Handshake done and UDP heartbeats confirmed in both directions.
    Established,
    /// Failed and will not be retried.
    Failed,
}

/// What the remote announced in its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteInfo {
    /// Peer name.
    pub name: u64,
    /// Short id.
    pub short_id: u16,
    /// Process UID.
    pub uid: u64,
    /// Where its data port is.
    pub data_addr: SocketAddr,
}

/// One live TCP control connection.
#[derive(Debug)]
pub struct ConnRecord {
    /// The remote TCP address.
    pub address: SocketAddr,
    /// We dialled it.
    pub outbound: bool,
    /// Current state.
    pub state: ConnState,
    /// Remote identity once the handshake is done.
    pub remote: Option<RemoteInfo>,
    /// The remote's nickname.
    pub nickname: String,
    /// Connection UID (same on both ends) once the handshake is done.
    pub conn_uid: Option<u64>,
    /// We received the remote's UDP heartbeat.
    pub heartbeat_received: bool,
    /// The remote acknowledged our UDP heartbeats.
    pub ack_received: bool,
    /// This connection registered its peer with the data plane.
    pub owns_dataplane_peer: bool,
    /// How the connection is protected, once its handshake completed.
    pub protection: Option<weft_mesh::Protection>,
    /// The data-plane keys it agreed (kept so another connection to the same peer can hand
    /// the peer back to this one).
    pub data_keys: Option<weft_crypto::handshake::DataKeys>,
    /// Channel to the connection's task.
    pub commands: mpsc::UnboundedSender<ConnCommand>,
}

/// The mutable part of the router's state.
#[derive(Debug)]
pub struct State {
    /// Live control connections by local id.
    pub conns: BTreeMap<u64, ConnRecord>,
    /// The topology gossip state machine (peers, their connections, routes).
    pub mesh: Mesh,
    /// Which addresses to dial (targets, discovery, backoff).
    pub connmaker: ConnMaker,
    /// Last copy of the data-plane counters.
    pub counters: Counters,
    /// Control connections closed before their handshake finished.
    pub handshake_failures: u64,
    /// Gossip payloads refused as malformed or invalid.
    pub gossip_errors: u64,
    /// IPAM, unless disabled with `--ipalloc-range ""`.
    pub ipam: Option<crate::ipam::IpamDriver>,
    /// IPAM messages refused as malformed or invalid.
    pub ipam_errors: u64,
}

impl State {
    /// A fresh state around a mesh and a connection maker.
    pub fn new(mesh: Mesh, connmaker: ConnMaker) -> Self {
        Self {
            conns: BTreeMap::new(),
            mesh,
            connmaker,
            counters: Counters::default(),
            handshake_failures: 0,
            gossip_errors: 0,
            ipam: None,
            ipam_errors: 0,
        }
    }
}

/// Everything the tasks share.
#[derive(Debug)]
pub struct Shared {
    /// Static facts about this router.
    pub info: RouterInfo,
    /// The mutable state.
    pub state: Mutex<State>,
    /// Commands to the data-plane thread.
    pub dataplane: std::sync::mpsc::Sender<DpCommand>,
    /// Wakes the control loop after the mesh or the connection maker got input.
    pub wake: tokio::sync::Notify,
    /// Where the target list is kept.
    pub targets_file: std::path::PathBuf,
    /// The state directory (identity, targets).
    pub state_dir: std::path::PathBuf,
    /// The router's clock.
    pub clock: crate::dataplane::Clock,
}

impl Shared {
    /// Lock the state. A poisoned lock means a task panicked while holding it; the state is
    /// still the best information there is, so keep serving it.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Static facts about this router.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouterInfo {
    /// Peer name, printed as a MAC.
    pub name: String,
    /// Nickname.
    pub nickname: String,
    /// Short id.
    pub short_id: u16,
    /// Process UID.
    pub uid: u64,
    /// TCP control port.
    pub port: u16,
    /// UDP data port.
    pub data_port: u16,
    /// Overlay MTU.
    pub mtu: u32,
    /// weft's version.
    pub version: String,
    /// Protocol versions spoken.
    pub protocol_min: u8,
    /// Protocol versions spoken.
    pub protocol_max: u8,
    /// Peer discovery is on.
    pub discovery: bool,
    /// A password is set.
    #[serde(default)]
    pub encryption: bool,
}

/// `GET /status` as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    /// Peer name.
    pub name: String,
    /// Nickname.
    pub nickname: String,
    /// Short id.
    pub short_id: u16,
    /// Process UID.
    pub uid: u64,
    /// weft's version.
    pub version: String,
    /// Protocol range.
    pub protocol: String,
    /// TCP control port.
    pub port: u16,
    /// UDP data port.
    pub data_port: u16,
    /// Overlay MTU.
    pub mtu: u32,
    /// Whether a password is set (connections are encrypted).
    pub encryption: bool,
    /// Known peers, ourselves first.
    pub peers: Vec<PeerReport>,
    /// Connections and dialling targets.
    pub connections: Vec<ConnectionReport>,
    /// Direct targets (persisted; `weft connect` / `weft forget`).
    pub targets: Vec<String>,
    /// Peer discovery (dialling addresses learned from gossip) is on.
    pub discovery: bool,
    /// Data-plane and control-plane counters.
    pub counters: BTreeMap<String, u64>,
}

/// A peer in the status report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerReport {
    /// Peer name.
    pub name: String,
    /// Nickname.
    pub nickname: String,
    /// Short id.
    pub short_id: u16,
    /// Process UID.
    pub uid: u64,
    /// Topology version of the peer's record.
    pub version: u64,
    /// The peer's connections as it reports them.
    pub connections: Vec<PeerConnReport>,
    /// How we reach it: empty for ourselves, "direct", "via NAME(NICK)", or "unreachable".
    pub path: String,
}

/// A connection as a peer reports it in its gossip.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerConnReport {
    /// The remote peer.
    pub name: String,
    /// Its nickname, if known.
    pub nickname: String,
    /// The address as the reporting peer sees it.
    pub address: String,
    /// The reporting peer dialled it.
    pub outbound: bool,
    /// Data path confirmed both ways.
    pub established: bool,
}

/// A connection in the status report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectionReport {
    /// Remote TCP address.
    pub address: String,
    /// We dialled it.
    pub outbound: bool,
    /// State.
    pub state: ConnState,
    /// Error or detail.
    pub info: String,
    /// Remote peer name, once known.
    pub name: String,
    /// Remote nickname, once known.
    pub nickname: String,
    /// How the remote peer is reached: "direct", "via NAME(NICK)", or empty when unknown.
    pub path: String,
    /// The data plane with this peer is encrypted (once the handshake completed).
    #[serde(default)]
    pub encrypted: Option<bool>,
    /// Control traffic with this peer is encrypted (once the handshake completed).
    #[serde(default)]
    pub control_encrypted: Option<bool>,
    /// The data plane's cipher, if encrypted.
    #[serde(default)]
    pub cipher: String,
}
