//! Layer: driver. The TCP control plane: a listener, one dialler per target with jittered
//! backoff, and one task per connection that drives a [`weft_mesh::Connection`] over a
//! `TcpStream`. It also sends the UDP data-path heartbeats of each connection and turns the
//! heartbeats the data plane receives into acknowledgements, so that a connection becomes
//! `established` only once UDP works both ways.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use weft_mesh::{CloseReason, ConnConfig, Connection, Event, LocalPeer};
use weft_overlay::PeerEntry;
use weft_overlay::heartbeat::Heartbeat;
use weft_sys::udp::BatchUdp;
use weft_wire::control::Message;

use crate::config::parse_peer;
use crate::dataplane::{Clock, DpCommand, DpEvent};
use crate::state::{ConnCommand, ConnRecord, ConnState, RemoteInfo, Shared, TargetRecord};

/// UDP heartbeat interval until the remote acknowledges our heartbeats.
const HEARTBEAT_FAST: Duration = Duration::from_millis(500);
/// UDP heartbeat interval afterwards.
const HEARTBEAT_SLOW: Duration = Duration::from_secs(10);
/// First retry delay of a dialler; grows ×1.5 per failure up to [`BACKOFF_MAX`].
const BACKOFF_START: Duration = Duration::from_secs(2);
const BACKOFF_MAX: Duration = Duration::from_secs(360);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The control plane's shared context.
#[derive(Debug)]
pub struct Control {
    /// State shared with the API.
    pub shared: Arc<Shared>,
    /// Who we are.
    pub local: LocalPeer,
    /// The router's clock.
    pub clock: Clock,
    /// A handle on the data socket, for heartbeats.
    pub udp: BatchUdp,
    /// Connection timers and versions.
    pub conn_config: ConnConfig,
    /// The TCP port peers listen on by default.
    pub default_port: u16,
    next_id: AtomicU64,
}

/// How a connection ended.
#[derive(Debug)]
struct Outcome {
    reason: String,
    /// The handshake completed before it ended.
    was_ready: bool,
    /// Retrying cannot help (connected to ourself, name collision).
    permanent: bool,
}

impl Control {
    /// A control plane for `local`.
    pub fn new(
        shared: Arc<Shared>,
        local: LocalPeer,
        clock: Clock,
        udp: BatchUdp,
        default_port: u16,
    ) -> Self {
        Self {
            shared,
            local,
            clock,
            udp,
            conn_config: ConnConfig::default(),
            default_port,
            next_id: AtomicU64::new(1),
        }
    }

    /// Accept inbound connections forever.
    pub async fn listen(self: Arc<Self>, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((stream, addr)) => {
                    let this = self.clone();
                    tokio::spawn(async move {
                        let outcome = this.drive(stream, addr, false).await;
                        tracing::info!("connection from {addr} closed: {}", outcome.reason);
                    });
                }
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Keep a connection to `target` up: dial, run it, and redial with jittered backoff.
    pub async fn dial(self: Arc<Self>, target: String) {
        let mut backoff = BACKOFF_START;
        loop {
            let addr = match parse_peer(&target, self.default_port) {
                Ok(a) => a,
                Err(e) => {
                    self.set_target(&target, None, ConnState::Retrying, e);
                    tokio::time::sleep(jitter(backoff)).await;
                    backoff = (backoff.mul_f64(1.5)).min(BACKOFF_MAX);
                    continue;
                }
            };
            if self.connected_to(addr.ip()) {
                // Suspended while a connection to that address is up (either direction).
                self.set_target(&target, Some(addr), ConnState::Established, String::new());
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            self.set_target(&target, Some(addr), ConnState::Connecting, String::new());
            let outcome =
                match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
                    Ok(Ok(stream)) => self.drive(stream, addr, true).await,
                    Ok(Err(e)) => Outcome {
                        reason: e.to_string(),
                        was_ready: false,
                        permanent: false,
                    },
                    Err(_) => Outcome {
                        reason: "connect timed out".into(),
                        was_ready: false,
                        permanent: false,
                    },
                };
            tracing::info!("connection to {addr} ended: {}", outcome.reason);
            if outcome.permanent {
                self.set_target(&target, Some(addr), ConnState::Failed, outcome.reason);
                return;
            }
            if outcome.was_ready {
                backoff = BACKOFF_START;
            }
            let delay = jitter(backoff);
            self.set_target(
                &target,
                Some(addr),
                ConnState::Retrying,
                format!("{}, retry in {:.1}s", outcome.reason, delay.as_secs_f64()),
            );
            tokio::time::sleep(delay).await;
            backoff = (backoff.mul_f64(1.5)).min(BACKOFF_MAX);
        }
    }

    /// Turn data-plane events into connection state.
    pub async fn pump(self: Arc<Self>, mut events: mpsc::UnboundedReceiver<DpEvent>) {
        while let Some(event) = events.recv().await {
            let DpEvent::Heartbeat { src, heartbeat } = event;
            let mut state = self.shared.lock();
            let Some(rec) = state.conns.values_mut().find(|r| {
                r.conn_uid == Some(heartbeat.conn_uid)
                    && r.remote
                        .is_some_and(|p| p.name == heartbeat.sender && p.short_id == src)
            }) else {
                continue;
            };
            if !rec.heartbeat_received {
                rec.heartbeat_received = true;
                let _ = rec.commands.send(ConnCommand::SendDataPathAck);
                update_state(rec);
            }
        }
    }

    fn connected_to(&self, ip: IpAddr) -> bool {
        self.shared
            .lock()
            .conns
            .values()
            .any(|r| r.address.ip() == ip && r.remote.is_some())
    }

    fn set_target(&self, target: &str, addr: Option<SocketAddr>, st: ConnState, info: String) {
        let mut state = self.shared.lock();
        let rec = state
            .targets
            .entry(target.to_owned())
            .or_insert_with(|| TargetRecord {
                address: addr.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
                state: st,
                info: String::new(),
            });
        if let Some(a) = addr {
            rec.address = a;
        }
        rec.state = st;
        rec.info = info;
    }

    /// Run one connection until it ends.
    async fn drive(&self, stream: TcpStream, address: SocketAddr, outbound: bool) -> Outcome {
        let _ = stream.set_nodelay(true);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, mut commands) = mpsc::unbounded_channel();
        self.shared.lock().conns.insert(
            id,
            ConnRecord {
                address,
                outbound,
                state: ConnState::Connecting,
                remote: None,
                nickname: String::new(),
                conn_uid: None,
                heartbeat_received: false,
                ack_received: false,
                owns_dataplane_peer: false,
                commands: tx,
            },
        );
        let outcome = self
            .run_connection(id, stream, address, outbound, &mut commands)
            .await;
        self.unregister(id, &outcome);
        outcome
    }

    async fn run_connection(
        &self,
        id: u64,
        stream: TcpStream,
        address: SocketAddr,
        outbound: bool,
        commands: &mut mpsc::UnboundedReceiver<ConnCommand>,
    ) -> Outcome {
        let conn_id: u64 = rand::rng().random();
        let now = self.clock.now();
        let mut conn = Connection::new(
            self.local.clone(),
            outbound,
            conn_id,
            now,
            self.conn_config.clone(),
        );
        let (mut rd, mut wr) = stream.into_split();
        let mut buf = vec![0u8; 64 * 1024];
        let mut out = Vec::new();
        let mut ready: Option<(RemoteInfo, u64)> = None;
        let mut next_heartbeat: Option<weft_mesh::Instant> = None;
        let mut acked = false;
        loop {
            out.clear();
            while conn.poll_transmit(&mut out) {}
            if !out.is_empty() {
                if let Err(e) = wr.write_all(&out).await {
                    return Outcome {
                        reason: format!("write failed: {e}"),
                        was_ready: ready.is_some(),
                        permanent: false,
                    };
                }
            }
            while let Some(event) = conn.poll_event() {
                match event {
                    Event::Ready {
                        remote,
                        conn_uid,
                        version,
                    } => {
                        let info = RemoteInfo {
                            name: remote.name.get(),
                            short_id: remote.short_id.get(),
                            uid: remote.uid.0,
                            data_addr: SocketAddr::new(address.ip(), remote.data_port),
                        };
                        tracing::info!(
                            "connection {} {address} ready: {}({}) protocol {version}",
                            if outbound { "to" } else { "from" },
                            remote.name,
                            remote.nickname
                        );
                        if let Err(reason) = self.on_ready(id, info, &remote.nickname, conn_uid) {
                            conn.close(CloseReason::Local);
                            return Outcome {
                                reason: reason.into(),
                                was_ready: true,
                                permanent: false,
                            };
                        }
                        ready = Some((info, conn_uid));
                        next_heartbeat = Some(self.clock.now());
                    }
                    Event::DataPathAck { conn_uid } => {
                        if ready.is_some_and(|(_, uid)| uid == conn_uid) && !acked {
                            acked = true;
                            let mut state = self.shared.lock();
                            if let Some(rec) = state.conns.get_mut(&id) {
                                rec.ack_received = true;
                                update_state(rec);
                            }
                        }
                    }
                    Event::Message(_) => {}
                    Event::Closed(reason) => {
                        let permanent = matches!(
                            reason,
                            CloseReason::ConnectToSelf | CloseReason::NameCollision { .. }
                        );
                        if permanent || !matches!(reason, CloseReason::Local) {
                            tracing::warn!("connection with {address}: {reason}");
                        }
                        // Whatever the state machine queued before closing (our hello, so the
                        // peer can report a version mismatch too) still goes out.
                        out.clear();
                        while conn.poll_transmit(&mut out) {}
                        if !out.is_empty() {
                            let _ =
                                tokio::time::timeout(Duration::from_secs(1), wr.write_all(&out))
                                    .await;
                        }
                        let _ = wr.shutdown().await;
                        return Outcome {
                            reason: reason.to_string(),
                            was_ready: ready.is_some(),
                            permanent,
                        };
                    }
                }
            }
            let deadline = [conn.poll_timeout(), next_heartbeat]
                .into_iter()
                .flatten()
                .min();
            let sleep = async {
                match deadline {
                    Some(t) => tokio::time::sleep_until(self.clock.to_std(t).into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = rd.read(&mut buf) => match r {
                    Ok(0) => return Outcome {
                        reason: "connection closed by peer".into(),
                        was_ready: ready.is_some(),
                        permanent: false,
                    },
                    Ok(n) => conn.handle_bytes(self.clock.now(), &buf[..n]),
                    Err(e) => return Outcome {
                        reason: format!("read failed: {e}"),
                        was_ready: ready.is_some(),
                        permanent: false,
                    },
                },
                _ = sleep => {
                    let now = self.clock.now();
                    conn.handle_timeout(now);
                    if let (Some(due), Some((remote, conn_uid))) = (next_heartbeat, ready) {
                        if now >= due {
                            self.send_heartbeat(remote, conn_uid);
                            let every = if acked { HEARTBEAT_SLOW } else { HEARTBEAT_FAST };
                            next_heartbeat = Some(now + every);
                        }
                    }
                }
                cmd = commands.recv() => match cmd {
                    Some(ConnCommand::SendDataPathAck) => {
                        if let Some((_, conn_uid)) = ready {
                            let _ = conn.send(self.clock.now(), &Message::DataPathAck { conn_uid });
                        }
                    }
                    Some(ConnCommand::Close(reason)) => {
                        conn.close(CloseReason::Local);
                        return Outcome { reason: reason.into(), was_ready: ready.is_some(), permanent: false };
                    }
                    None => {
                        conn.close(CloseReason::Local);
                        return Outcome { reason: "router shutting down".into(), was_ready: ready.is_some(), permanent: false };
                    }
                },
            }
        }
    }

    fn send_heartbeat(&self, remote: RemoteInfo, conn_uid: u64) {
        let mut buf = [0u8; 64];
        let hb = Heartbeat {
            conn_uid,
            sender: self.local.name.get(),
        };
        let n = weft_overlay::emit_heartbeat_datagram(
            self.local.short_id.get(),
            remote.short_id,
            hb,
            &mut buf,
        );
        if let Err(e) = self.udp.send_to(&buf[..n], remote.data_addr) {
            tracing::debug!("heartbeat to {} failed: {e}", remote.data_addr);
        }
    }

    /// Register a ready connection: resolve duplicates and hand the peer to the data plane.
    fn on_ready(
        &self,
        id: u64,
        info: RemoteInfo,
        nickname: &str,
        conn_uid: u64,
    ) -> Result<(), &'static str> {
        let mut state = self.shared.lock();
        if info.short_id == self.local.short_id.get() {
            tracing::warn!(
                "peer {} uses our short id {}; traffic to it will fail until one restarts",
                weft_mesh::PeerName::new(info.name)
                    .map(|n| n.to_string())
                    .unwrap_or_default(),
                info.short_id
            );
        }
        // Two connections to one peer (both sides dialled): both ends keep the one with the
        // smaller connection UID, so they agree without talking.
        let other = state
            .conns
            .iter()
            .find(|(k, r)| {
                **k != id && r.remote.is_some_and(|p| p.name == info.name) && r.conn_uid.is_some()
            })
            .map(|(k, r)| (*k, r.conn_uid.unwrap_or(u64::MAX)));
        if let Some((other_id, other_uid)) = other {
            if other_uid < conn_uid {
                return Err("duplicate connection (keeping the other one)");
            }
            if let Some(o) = state.conns.get_mut(&other_id) {
                o.owns_dataplane_peer = false;
                let _ = o.commands.send(ConnCommand::Close(
                    "duplicate connection (keeping the other one)",
                ));
            }
        }
        let Some(rec) = state.conns.get_mut(&id) else {
            return Err("connection vanished");
        };
        rec.remote = Some(info);
        rec.nickname = nickname.to_owned();
        rec.conn_uid = Some(conn_uid);
        rec.state = ConnState::Pending;
        rec.owns_dataplane_peer = true;
        let _ = self.shared.dataplane.send(DpCommand::AddPeer(PeerEntry {
            short_id: info.short_id,
            name: info.name,
            addr: info.data_addr,
        }));
        Ok(())
    }

    fn unregister(&self, id: u64, outcome: &Outcome) {
        let mut state = self.shared.lock();
        let Some(rec) = state.conns.remove(&id) else {
            return;
        };
        if rec.remote.is_none() {
            state.handshake_failures += 1;
            tracing::info!("handshake with {} failed: {}", rec.address, outcome.reason);
        }
        if !rec.owns_dataplane_peer {
            return;
        }
        let Some(remote) = rec.remote else { return };
        // Hand the peer to another live connection to it, or take it out of the data plane.
        if let Some(next) = state
            .conns
            .values_mut()
            .find(|r| r.remote.is_some_and(|p| p.name == remote.name))
        {
            next.owns_dataplane_peer = true;
            if let Some(p) = next.remote {
                let _ = self.shared.dataplane.send(DpCommand::AddPeer(PeerEntry {
                    short_id: p.short_id,
                    name: p.name,
                    addr: p.data_addr,
                }));
            }
        } else {
            let _ = self.shared.dataplane.send(DpCommand::RemovePeer {
                short_id: remote.short_id,
                name: remote.name,
            });
        }
    }
}

fn update_state(rec: &mut ConnRecord) {
    if rec.remote.is_some() {
        rec.state = if rec.heartbeat_received && rec.ack_received {
            ConnState::Established
        } else {
            ConnState::Pending
        };
    }
}

/// A delay drawn uniformly from [d/2, 3d/2], so restarted peers do not redial in lockstep.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::rng().random_range(0.5..1.5))
}
