//! Layer: driver. The TCP control plane: a listener, dials decided by the sans-IO
//! [`weft_mesh::ConnMaker`] (targets, discovery, backoff, connection limit), one task per
//! connection driving a [`weft_mesh::Connection`] over a `TcpStream`, and a control loop that
//! runs the topology gossip ([`weft_mesh::Mesh`]) and hands the data plane a new forwarding table
//! whenever the routes change.
//!
//! It also sends the UDP data-path heartbeats of each connection and turns the heartbeats the
//! data plane receives into acknowledgements, so that a connection becomes `established` only
//! once UDP works both ways.
//!
//! With a password, every connection gets fresh X25519 randomness and the stretched password
//! ([`LinkSecurity`]); when its handshake completes, the data-plane keys it agreed (or "in the
//! clear" for mutually trusted peers) are installed in the data plane before the peer appears
//! in the forwarding table, and heartbeats are sent through the data plane so they are sealed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use weft_mesh::{
    CloseReason, ConnConfig, Connection, Encryption, Event, LocalPeer, MeshEvent, PeerName,
    Protection, Security, TOPOLOGY_CHANNEL,
};
use weft_overlay::heartbeat::Heartbeat;
use weft_overlay::{ForwardingTable, PeerEntry};
use weft_sys::udp::BatchUdp;
use weft_wire::control::Message;

use crate::dataplane::{Clock, DpCommand, DpEvent};
use crate::state::{ConnCommand, ConnRecord, ConnState, RemoteInfo, Shared, State};

/// UDP heartbeat interval until the remote acknowledges our heartbeats.
const HEARTBEAT_FAST: Duration = Duration::from_millis(500);
/// UDP heartbeat interval afterwards.
const HEARTBEAT_SLOW: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The control plane's shared context.
#[derive(Debug)]
pub struct Control {
    /// State shared with the API.
    pub shared: Arc<Shared>,
    /// Who we are (the short id may change later; the mesh's topology has the current one).
    pub local: LocalPeer,
    /// The router's clock.
    pub clock: Clock,
    /// A handle on the data socket, for heartbeats.
    pub udp: BatchUdp,
    /// Connection timers and versions.
    pub conn_config: ConnConfig,
    /// Most control connections, accepted ones included (0: unlimited).
    pub conn_limit: usize,
    /// Password and trusted subnets.
    pub security: LinkSecurity,
    /// Which accepted connections get a handshake ([`crate::gate`]).
    pub gate: Arc<crate::gate::ControlGate>,
    next_id: AtomicU64,
}

/// What every connection's encryption is made from.
#[derive(Debug, Clone, Default)]
pub struct LinkSecurity {
    /// The stretched network password; `None`: no encryption.
    pub psk: Option<weft_crypto::Psk>,
    /// Peers at these addresses are trusted (`--trusted-subnets`).
    pub trusted: Vec<ipnet::IpNet>,
    /// This host has AES instructions.
    pub aes: bool,
}

impl LinkSecurity {
    /// The security of one new connection with `peer`: fresh ephemeral randomness each time.
    fn for_peer(&self, peer: std::net::IpAddr) -> Security {
        Security {
            encryption: self.psk.as_ref().map(|psk| Encryption {
                psk: psk.clone(),
                // ThreadRng is a CSPRNG seeded from the OS.
                ephemeral_random: rand::rng().random(),
            }),
            trusts_peer: self.trusted.iter().any(|n| n.contains(&peer)),
            aes: self.aes,
        }
    }
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

impl Outcome {
    fn new(reason: impl Into<String>, was_ready: bool) -> Self {
        Self {
            reason: reason.into(),
            was_ready,
            permanent: false,
        }
    }
}

impl Control {
    /// A control plane for `local`.
    pub fn new(
        shared: Arc<Shared>,
        local: LocalPeer,
        clock: Clock,
        udp: BatchUdp,
        conn_limit: usize,
        security: LinkSecurity,
    ) -> Self {
        Self {
            conn_limit,
            security,
            shared,
            local,
            clock,
            udp,
            conn_config: ConnConfig::default(),
            gate: Arc::default(),
            next_id: AtomicU64::new(1),
        }
    }

    /// Accept inbound connections forever.
    pub async fn listen(self: Arc<Self>, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((stream, addr)) => {
                    let now = self.clock.now();
                    if !self.gate.admit(&self.shared, now, addr, self.conn_limit) {
                        drop(stream);
                        continue;
                    }
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

    /// The control loop: runs the mesh's timers, sends what it wants sent, installs new routes,
    /// and starts the dials the connection maker asks for.
    pub async fn run(self: Arc<Self>) {
        loop {
            let (deadline, dials) = {
                let mut state = self.shared.lock();
                let now = self.clock.now();
                state.mesh.handle_timeout(now);
                self.drain_mesh(&mut state);
                if let Some(drv) = state.ipam.as_mut() {
                    drv.ipam.handle_timeout(now);
                }
                self.drain_ipam(&mut state);
                // DNS hook (issue 11): timers, gossip out, own entries kept on disk.
                let neighbours = Self::neighbour_names(&state);
                let out = crate::dns::poll(&mut state, now, &neighbours);
                Self::send_channel(&state, crate::dns::DNS_CHANNEL, out);
                let current = state.conns.len();
                let dials = state.connmaker.poll_dial(now, current);
                let ipam_timeout = state.ipam.as_ref().and_then(|d| d.ipam.poll_timeout());
                let deadline = [
                    state.mesh.poll_timeout(),
                    state.connmaker.poll_timeout(),
                    ipam_timeout,
                    crate::dns::poll_timeout(&state),
                ]
                .into_iter()
                .flatten()
                .min();
                (deadline, dials)
            };
            for addr in dials {
                tokio::spawn(self.clone().dial(addr));
            }
            let sleep = async {
                match deadline {
                    Some(t) => tokio::time::sleep_until(self.clock.to_std(t).into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = sleep => {}
                _ = self.shared.wake.notified() => {}
            }
        }
    }

    /// Send what the mesh queued, and act on its events.
    fn drain_mesh(&self, state: &mut State) {
        let mut out = Vec::new();
        while let Some(transmit) = state.mesh.poll_transmit() {
            out.push(transmit);
        }
        Self::send_channel(state, TOPOLOGY_CHANNEL, out);
        let mut changed = false;
        while let Some(event) = state.mesh.poll_event() {
            match event {
                MeshEvent::TopologyChanged => changed = true,
                MeshEvent::PeerRemoved(name) => {
                    tracing::info!("removed unreachable peer {name}");
                    changed = true;
                }
                MeshEvent::ShortIdChanged(id) => {
                    tracing::warn!(
                        "short id collision: this peer now uses short id {}",
                        id.get()
                    );
                    // Keep it, so a restart does not bring the collision back.
                    let file = self.shared.state_dir.join("short-id");
                    let text = format!("{}\n", id.get());
                    if let Err(e) = crate::identity::write_atomic(&file, text.as_bytes()) {
                        tracing::warn!("cannot keep the new short id in {}: {e}", file.display());
                    }
                    changed = true;
                }
            }
        }
        if changed {
            let now = self.clock.now();
            let State {
                mesh,
                connmaker,
                ipam,
                ..
            } = state;
            connmaker.update_from_topology(now, mesh.topology());
            if let Some(drv) = ipam.as_mut() {
                let known: Vec<PeerName> = mesh.topology().peers().map(|p| p.name).collect();
                let reachable: Vec<PeerName> = mesh.routes().reachable().collect();
                drv.ipam.peers_changed(now, &known, &reachable);
                drv.ipam
                    .set_quorum_hint(connmaker.direct_targets().len() + 1);
            }
            crate::dns::peers_changed(state, now);
            self.publish_table(state);
        }
    }

    /// The peers we have a registered (handshake done) connection with.
    fn neighbour_names(state: &State) -> Vec<PeerName> {
        state
            .conns
            .values()
            .filter(|r| r.owns_dataplane_peer)
            .filter_map(|r| r.remote.and_then(|p| PeerName::new(p.name)))
            .collect()
    }

    /// Send channel envelopes to neighbours.
    fn send_channel(state: &State, channel: u8, out: Vec<(PeerName, Vec<u8>)>) {
        for (peer, payload) in out {
            let conn = state
                .conns
                .values()
                .find(|r| r.owns_dataplane_peer && r.remote.is_some_and(|p| p.name == peer.get()));
            if let Some(conn) = conn {
                let _ = conn
                    .commands
                    .send(ConnCommand::Send(Message::Gossip { channel, payload }));
            }
        }
    }

    /// Send what IPAM released, complete finished requests (its persister stores first).
    fn drain_ipam(&self, state: &mut State) {
        let neighbours = Self::neighbour_names(state);
        let Some(drv) = state.ipam.as_mut() else {
            return;
        };
        let out = drv.drain(&neighbours, state.mesh.routes());
        Self::send_channel(state, crate::ipam::IPAM_CHANNEL, out);
    }

    /// Dial `addr` once and run the connection; tell the connection maker how it went.
    async fn dial(self: Arc<Self>, addr: SocketAddr) {
        let outcome = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => self.drive(stream, addr, true).await,
            Ok(Err(e)) => Outcome::new(e.to_string(), false),
            Err(_) => Outcome::new("connect timed out", false),
        };
        tracing::info!("connection to {addr} ended: {}", outcome.reason);
        {
            let mut state = self.shared.lock();
            let now = self.clock.now();
            if outcome.permanent || outcome.was_ready {
                state
                    .connmaker
                    .disconnected(now, addr, Some(outcome.reason), outcome.permanent);
            } else {
                state.connmaker.dial_failed(now, addr, outcome.reason);
            }
        }
        self.shared.wake.notify_one();
    }

    /// Turn data-plane events into connection state.
    pub async fn pump(self: Arc<Self>, mut events: mpsc::UnboundedReceiver<DpEvent>) {
        while let Some(event) = events.recv().await {
            // The engine already checked that the VNI's source short id is the sender's as the
            // topology knows it now (it changes when a collision is resolved, so the short id
            // announced in the handshake may be stale): match on the connection and the name.
            let DpEvent::Heartbeat { src: _, heartbeat } = event;
            let mut state = self.shared.lock();
            let Some(rec) = state.conns.values_mut().find(|r| {
                r.conn_uid == Some(heartbeat.conn_uid)
                    && r.remote.is_some_and(|p| p.name == heartbeat.sender)
            }) else {
                continue;
            };
            if !rec.heartbeat_received {
                rec.heartbeat_received = true;
                let _ = rec.commands.send(ConnCommand::SendDataPathAck);
                self.update_state(&mut state, heartbeat.conn_uid);
            }
        }
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
                protection: None,
                data_keys: None,
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
        let local = self.current_local();
        let mut config = self.conn_config.clone();
        config.security = self.security.for_peer(address.ip());
        let mut conn = Connection::new(local, outbound, conn_id, now, config);
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
                    return Outcome::new(format!("write failed: {e}"), ready.is_some());
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
                        let protection = conn.protection();
                        let keys = conn.take_data_keys();
                        tracing::info!(
                            "connection {} {address} ready: {}({}) protocol {version}, {}",
                            if outbound { "to" } else { "from" },
                            remote.name,
                            remote.nickname,
                            describe(protection)
                        );
                        {
                            let mut state = self.shared.lock();
                            if let Some(rec) = state.conns.get_mut(&id) {
                                rec.protection = protection;
                                rec.data_keys = keys;
                            }
                        }
                        if let Err(reason) =
                            self.on_ready(id, info, &remote.nickname, conn_uid, address, outbound)
                        {
                            conn.close(CloseReason::Local);
                            return Outcome::new(reason, true);
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
                            }
                            self.update_state(&mut state, conn_uid);
                        }
                    }
                    Event::Message(Message::Gossip { channel, payload }) => {
                        if let Some((remote, _)) = ready {
                            self.on_gossip(remote, channel, &payload);
                        }
                    }
                    Event::Message(_) => {}
                    Event::Closed(reason) => {
                        let permanent = matches!(
                            reason,
                            CloseReason::ConnectToSelf | CloseReason::NameCollision { .. }
                        );
                        if !matches!(reason, CloseReason::Local) {
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
                    Ok(0) => return Outcome::new("connection closed by peer", ready.is_some()),
                    Ok(n) => conn.handle_bytes(self.clock.now(), &buf[..n]),
                    Err(e) => return Outcome::new(format!("read failed: {e}"), ready.is_some()),
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
                            let msg = Message::DataPathAck { conn_uid };
                            if let Err(e) = conn.send(self.clock.now(), &msg) {
                                tracing::debug!("cannot acknowledge heartbeats on {address}: {e}");
                            }
                        }
                    }
                    Some(ConnCommand::Send(msg)) => {
                        if let Err(e) = conn.send(self.clock.now(), &msg) {
                            tracing::warn!("cannot send to {address}: {e}");
                        }
                    }
                    Some(ConnCommand::Close(reason)) => {
                        conn.close(CloseReason::Local);
                        return Outcome::new(reason, ready.is_some());
                    }
                    None => {
                        conn.close(CloseReason::Local);
                        return Outcome::new("router shutting down", ready.is_some());
                    }
                },
            }
        }
    }

    /// Our identity as it is now (the short id changes when a collision is resolved).
    fn current_local(&self) -> LocalPeer {
        let mut local = self.local.clone();
        local.short_id = self.shared.lock().mesh.topology().local().short_id;
        local
    }

    fn on_gossip(&self, remote: RemoteInfo, channel: u8, payload: &[u8]) {
        let Some(from) = PeerName::new(remote.name) else {
            return;
        };
        if channel == crate::ipam::IPAM_CHANNEL {
            self.on_ipam_envelope(from, payload);
            return;
        }
        if channel == crate::dns::DNS_CHANNEL {
            self.on_dns_envelope(from, payload);
            return;
        }
        if channel != TOPOLOGY_CHANNEL {
            return;
        }
        {
            let mut state = self.shared.lock();
            let now = self.clock.now();
            if let Err(e) = state.mesh.handle_gossip(now, from, payload) {
                state.gossip_errors += 1;
                tracing::warn!("gossip from {from}: {e}");
            }
        }
        self.shared.wake.notify_one();
    }

    fn on_ipam_envelope(&self, from: PeerName, bytes: &[u8]) {
        {
            let mut state = self.shared.lock();
            let now = self.clock.now();
            let neighbours = Self::neighbour_names(&state);
            let State {
                ipam,
                mesh,
                ipam_errors,
                ipam_relay,
                ..
            } = &mut *state;
            let Some(drv) = ipam.as_mut() else {
                // IPAM off here: relay only (broadcasts flood on, unicasts follow the routes).
                let Some(relay) = ipam_relay.as_mut() else {
                    return;
                };
                match relay.handle(from, bytes, &neighbours, mesh.routes()) {
                    Ok(h) => Self::send_channel(&state, crate::ipam::IPAM_CHANNEL, h.forward),
                    Err(e) => {
                        *ipam_errors += 1;
                        tracing::warn!("IPAM message from {from}: {e}");
                    }
                }
                return;
            };
            let handled = match drv.channel.handle(from, bytes, &neighbours, mesh.routes()) {
                Ok(h) => h,
                Err(e) => {
                    *ipam_errors += 1;
                    tracing::warn!("IPAM message from {from}: {e}");
                    return;
                }
            };
            if let Some((origin, payload)) = handled.deliver {
                if let Err(e) = drv.ipam.handle_message(now, origin, &payload) {
                    *ipam_errors += 1;
                    tracing::warn!("IPAM message from {origin}: {e}");
                }
            }
            Self::send_channel(&state, crate::ipam::IPAM_CHANNEL, handled.forward);
        }
        self.shared.wake.notify_one();
    }

    /// DNS hook (issue 11): a DNS gossip envelope from neighbour `from`.
    fn on_dns_envelope(&self, from: PeerName, bytes: &[u8]) {
        {
            let mut state = self.shared.lock();
            let now = self.clock.now();
            let neighbours = Self::neighbour_names(&state);
            match crate::dns::on_envelope(&mut state, now, from, bytes, &neighbours) {
                Ok(forward) => Self::send_channel(&state, crate::dns::DNS_CHANNEL, forward),
                Err(e) => {
                    state.dns_errors += 1;
                    tracing::warn!("DNS gossip from {from}: {e}");
                }
            }
        }
        self.shared.wake.notify_one();
    }

    fn send_heartbeat(&self, remote: RemoteInfo, conn_uid: u64) {
        let (local_short, remote_short) = {
            let state = self.shared.lock();
            let topo = state.mesh.topology();
            let remote_short = PeerName::new(remote.name)
                .and_then(|n| topo.peer(n))
                .map_or(remote.short_id, |p| p.short_id.get());
            (topo.local().short_id.get(), remote_short)
        };
        let mut buf = [0u8; 64];
        let hb = Heartbeat {
            conn_uid,
            sender: self.local.name.get(),
        };
        let n = weft_overlay::emit_heartbeat_datagram(local_short, remote_short, hb, &mut buf);
        if self.security.psk.is_some() {
            // Sealed by the data plane, with the connection's keys.
            let _ = self.shared.dataplane.send(DpCommand::Send {
                to: remote.data_addr,
                datagram: buf[..n].to_vec(),
            });
            return;
        }
        if let Err(e) = self.udp.send_to(&buf[..n], remote.data_addr) {
            tracing::debug!("heartbeat to {} failed: {e}", remote.data_addr);
        }
    }

    /// Register a ready connection: resolve duplicates, tell the mesh and the connection maker.
    fn on_ready(
        &self,
        id: u64,
        info: RemoteInfo,
        nickname: &str,
        conn_uid: u64,
        address: SocketAddr,
        outbound: bool,
    ) -> Result<(), &'static str> {
        let Some(name) = PeerName::new(info.name) else {
            return Err("peer name out of range");
        };
        let mut state = self.shared.lock();
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
        self.install_link(rec, info, conn_uid);
        rec.remote = Some(info);
        rec.nickname = nickname.to_owned();
        rec.conn_uid = Some(conn_uid);
        rec.state = ConnState::Pending;
        rec.owns_dataplane_peer = true;
        let now = self.clock.now();
        let short = weft_mesh::ShortId::from_masked(info.short_id);
        state.connmaker.connected(address, name);
        if other.is_some() {
            // The mesh already counts a connection to this peer; refresh it.
            state.mesh.connection_down(now, name);
        }
        state.mesh.connection_up(
            now,
            name,
            (nickname.to_owned(), info.uid, short),
            address.to_string(),
            outbound,
        );
        // DNS hook (issue 11): the new neighbour gets our whole name table.
        crate::dns::neighbour_up(&mut state, name);
        self.publish_table(&state);
        drop(state);
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Tell the data plane how to protect traffic with the peer of `rec` (before the peer shows
    /// up in a forwarding table): sealed with the connection's keys, or in the clear.
    fn install_link(&self, rec: &ConnRecord, info: RemoteInfo, conn_uid: u64) {
        if self.security.psk.is_none() {
            return;
        }
        let _ = self.shared.dataplane.send(DpCommand::SetLink {
            ip: info.data_addr.ip(),
            conn_uid,
            keys: rec.data_keys.clone().map(Box::new),
        });
    }

    /// Re-evaluate a connection's state after a heartbeat or an acknowledgement.
    fn update_state(&self, state: &mut State, conn_uid: u64) {
        let Some(rec) = state
            .conns
            .values_mut()
            .find(|r| r.conn_uid == Some(conn_uid))
        else {
            return;
        };
        if rec.remote.is_none() || rec.state == ConnState::Established {
            return;
        }
        if rec.heartbeat_received && rec.ack_received {
            rec.state = ConnState::Established;
            let owner = rec.owns_dataplane_peer;
            if let (true, Some(name)) = (owner, rec.remote.and_then(|p| PeerName::new(p.name))) {
                state.mesh.connection_established(self.clock.now(), name);
                self.publish_table(state);
                self.shared.wake.notify_one();
            }
        }
    }

    fn unregister(&self, id: u64, outcome: &Outcome) {
        let mut state = self.shared.lock();
        let Some(rec) = state.conns.remove(&id) else {
            return;
        };
        if rec.remote.is_none() {
            state.handshake_failures += 1;
            tracing::info!("handshake with {} failed: {}", rec.address, outcome.reason);
            return;
        }
        let now = self.clock.now();
        if !rec.outbound {
            state
                .connmaker
                .disconnected(now, rec.address, Some(outcome.reason.clone()), false);
        }
        if !rec.owns_dataplane_peer {
            return;
        }
        let Some(remote) = rec.remote else { return };
        let Some(name) = PeerName::new(remote.name) else {
            return;
        };
        if let Some(uid) = rec.conn_uid {
            let _ = self.shared.dataplane.send(DpCommand::RemoveLink {
                ip: remote.data_addr.ip(),
                conn_uid: uid,
            });
        }
        // Hand the peer to another live connection to it, if there is one.
        let next = state
            .conns
            .values_mut()
            .find(|r| r.remote.is_some_and(|p| p.name == remote.name));
        let replacement = next.map(|next| {
            if let (Some(info), Some(uid)) = (next.remote, next.conn_uid) {
                self.install_link(next, info, uid);
            }
            next.owns_dataplane_peer = true;
            (
                next.address,
                next.outbound,
                next.nickname.clone(),
                next.remote,
                next.state,
            )
        });
        state.mesh.connection_down(now, name);
        if let Some((address, outbound, nickname, Some(info), st)) = replacement {
            let short = weft_mesh::ShortId::from_masked(info.short_id);
            state.mesh.connection_up(
                now,
                name,
                (nickname, info.uid, short),
                address.to_string(),
                outbound,
            );
            if st == ConnState::Established {
                state.mesh.connection_established(now, name);
            }
        }
        self.publish_table(&state);
        drop(state);
        self.shared.wake.notify_one();
    }

    /// Give the data plane a new forwarding table: neighbours from the ready connections, next
    /// hops and broadcast trees from the mesh's routes.
    fn publish_table(&self, state: &State) {
        let topo = state.mesh.topology();
        let routes = state.mesh.routes();
        let short_of = |name: PeerName| topo.peer(name).map(|p| p.short_id.get());
        let local_short = topo.local().short_id.get();
        let mut table = ForwardingTable::new(local_short);
        // Neighbours whose data path we confirmed ourselves: until the peer's own gossip says
        // so too (routes need both ends to report the link), they are still reached directly.
        let mut direct = Vec::new();
        for rec in state.conns.values().filter(|r| r.owns_dataplane_peer) {
            let Some(p) = rec.remote else { continue };
            let short = PeerName::new(p.name)
                .and_then(short_of)
                .unwrap_or(p.short_id);
            table.add_neighbour(PeerEntry {
                short_id: short,
                name: p.name,
                addr: p.data_addr,
            });
            if rec.state == ConnState::Established {
                direct.push(short);
            }
        }
        let local = topo.local_name();
        for peer in topo.peers() {
            if peer.name == local {
                continue;
            }
            table.add_known(peer.short_id.get(), peer.name.get());
            if let Some(via) = routes.next_hop(peer.name).and_then(short_of) {
                table.set_next_hop(peer.short_id.get(), via);
            }
        }
        for &short in &direct {
            table.set_next_hop(short, short);
        }
        for peer in topo.peers() {
            let mut children: Vec<u16> = routes
                .broadcast_children(peer.name)
                .iter()
                .filter_map(|&c| short_of(c))
                .collect();
            if peer.name == local {
                for &short in &direct {
                    if !children.contains(&short) {
                        children.push(short);
                    }
                }
            }
            table.set_children(peer.short_id.get(), &children);
        }
        let _ = self
            .shared
            .dataplane
            .send(DpCommand::SetTable(Box::new(table)));
    }
}

/// How a connection is protected, for logs.
fn describe(p: Option<Protection>) -> String {
    match p {
        Some(Protection {
            control: true,
            data: Some(cipher),
        }) => format!("encrypted ({})", cipher.name()),
        Some(Protection {
            control: true,
            data: None,
        }) => "control encrypted, data plane unencrypted (trusted)".to_owned(),
        _ => "unencrypted".to_owned(),
    }
}
