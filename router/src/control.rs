//! Layer: driver. The TCP control plane around a [`weft_node::Node`]: one task owns the node
//! and does what it asks ([`Action`]s: send on a connection, close, dial, program the data
//! path, send a heartbeat through it, hand gossip to IPAM and DNS); a listener and dialers run
//! one task per connection, each driving a [`weft_mesh::Connection`] over a `TcpStream` and
//! reporting its events to the node task by message ([`NodeInput`]). The API reads the
//! snapshot the node task publishes ([`crate::state::NodeView`]) and changes targets by
//! message. No rule about connections, duplicates, establishment, liveness or routes lives
//! here: they are the node's.
//!
//! With a password, every connection gets fresh X25519 randomness and the stretched password
//! ([`LinkSecurity`]); the data-plane keys it agreed reach the data plane through the node's
//! [`Action::SetLink`], before the peer can appear in a forwarding table.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use weft_mesh::{
    CloseReason, ConnConfig, Connection, Encryption, Event, Instant, LocalPeer, PeerName,
    Protection, Security,
};
use weft_node::{Action, ConnId, Node, Remote};
use weft_wire::control::Message;

use crate::dataplane::{Clock, DpCommand, DpEvent};
use crate::state::{ConnCommand, ConnState, ConnView, IpamState, NodeView, RoutesView, Shared};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the node task hears from connection tasks and the API.
#[derive(Debug)]
pub enum NodeInput {
    /// A connection's TCP is up; its handshake starts.
    Connecting {
        /// The connection.
        id: ConnId,
        /// The remote address.
        address: SocketAddr,
        /// We dialled it.
        outbound: bool,
        /// Where its commands go.
        commands: mpsc::UnboundedSender<ConnCommand>,
    },
    /// A dial failed before a connection existed.
    DialFailed {
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// A connection's handshake completed.
    Ready {
        /// The connection.
        id: ConnId,
        /// The remote.
        remote: Remote,
        /// Its UID.
        conn_uid: u64,
        /// The data-plane keys agreed.
        keys: Option<weft_crypto::handshake::DataKeys>,
        /// How it is protected.
        protection: Option<Protection>,
    },
    /// The remote acknowledged our heartbeats.
    Ack {
        /// The connection.
        id: ConnId,
        /// The UID the ack names.
        conn_uid: u64,
    },
    /// Gossip arrived.
    Gossip {
        /// The connection.
        id: ConnId,
        /// The channel.
        channel: u8,
        /// The bytes.
        payload: Vec<u8>,
    },
    /// A connection ended.
    Closed {
        /// The connection.
        id: ConnId,
        /// Why.
        reason: String,
        /// Never dial this address again.
        permanent: bool,
    },
    /// Change the targets; the reply is the direct target list afterwards.
    Targets {
        /// How.
        change: TargetChange,
        /// Which.
        addrs: Vec<SocketAddr>,
        /// The direct targets afterwards.
        reply: oneshot::Sender<Vec<SocketAddr>>,
    },
}

/// How [`NodeInput::Targets`] changes the targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetChange {
    /// `weft connect`.
    Add,
    /// `weft connect --replace`.
    Replace,
    /// `weft forget`.
    Forget,
}

/// The control plane's shared context.
#[derive(Debug)]
pub struct Control {
    /// State shared with the API.
    pub shared: Arc<Shared>,
    /// Who we are (the short id may change later; the node's view has the current one).
    pub local: LocalPeer,
    /// The router's clock.
    pub clock: Clock,
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

/// The node task's record of a connection task.
#[derive(Debug)]
struct ConnTask {
    commands: mpsc::UnboundedSender<ConnCommand>,
    protection: Option<Protection>,
}

impl Control {
    /// A control plane for `local`.
    pub fn new(
        shared: Arc<Shared>,
        local: LocalPeer,
        clock: Clock,
        conn_limit: usize,
        security: LinkSecurity,
    ) -> Self {
        Self {
            conn_limit,
            security,
            shared,
            local,
            clock,
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

    /// The node task: owns `node`, feeds it what connection tasks, the data plane and the API
    /// report, runs its timers (and IPAM's and DNS's), and does what it asks.
    pub async fn run(
        self: Arc<Self>,
        mut node: Node,
        mut inputs: mpsc::UnboundedReceiver<NodeInput>,
        mut events: mpsc::UnboundedReceiver<DpEvent>,
    ) {
        let mut tasks: BTreeMap<ConnId, ConnTask> = BTreeMap::new();
        let mut events_open = true;
        let mut changed = true;
        loop {
            let now = self.clock.now();
            if node.poll_timeout().is_some_and(|t| t <= now) {
                node.handle_timeout(now);
            }
            self.poll_channels(&mut node, now);
            changed |= self.execute(&mut node, &mut tasks);
            if std::mem::take(&mut changed) {
                self.shared.set_view(view(&node, &tasks));
            }
            let deadline = {
                let ipam_timeout =
                    (self.shared.ipam().ipam.as_ref()).and_then(|d| d.ipam.poll_timeout());
                let dns_timeout = crate::dns::poll_timeout(&self.shared.dns());
                [node.poll_timeout(), ipam_timeout, dns_timeout]
                    .into_iter()
                    .flatten()
                    .min()
            };
            let sleep = async {
                match deadline {
                    Some(t) => tokio::time::sleep_until(self.clock.to_std(t).into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                input = inputs.recv() => {
                    let Some(input) = input else { return };
                    self.on_input(&mut node, &mut tasks, input);
                    // Take whatever else is queued before doing the work it caused.
                    while let Ok(input) = inputs.try_recv() {
                        self.on_input(&mut node, &mut tasks, input);
                    }
                    changed = true;
                }
                event = events.recv(), if events_open => match event {
                    Some(DpEvent::Heartbeat { heartbeat, .. }) => {
                        node.handle_heartbeat(self.clock.now(), heartbeat);
                    }
                    Some(DpEvent::FastHeartbeat { from, heartbeat }) => {
                        node.handle_fast_heartbeat(self.clock.now(), from, heartbeat);
                    }
                    Some(DpEvent::FastMac { remote, mac }) => {
                        self.fastdp(crate::fastdp::FastCmd::PointMac { remote, mac });
                    }
                    None => events_open = false,
                },
                _ = sleep => {}
                _ = self.shared.wake.notified() => {}
            }
        }
    }

    fn on_input(&self, node: &mut Node, tasks: &mut BTreeMap<ConnId, ConnTask>, input: NodeInput) {
        let now = self.clock.now();
        match input {
            NodeInput::Connecting {
                id,
                address,
                outbound,
                commands,
            } => {
                tasks.insert(
                    id,
                    ConnTask {
                        commands,
                        protection: None,
                    },
                );
                node.handle_connecting(now, id, address, outbound);
            }
            NodeInput::DialFailed { addr, reason } => node.handle_dial_failed(now, addr, reason),
            NodeInput::Ready {
                id,
                remote,
                conn_uid,
                keys,
                protection,
            } => {
                if let Some(t) = tasks.get_mut(&id) {
                    t.protection = protection;
                }
                node.handle_ready(now, id, remote, conn_uid, keys);
            }
            NodeInput::Ack { id, conn_uid } => node.handle_ack(now, id, conn_uid),
            NodeInput::Gossip {
                id,
                channel,
                payload,
            } => node.handle_gossip(now, id, channel, payload),
            NodeInput::Closed {
                id,
                reason,
                permanent,
            } => {
                tasks.remove(&id);
                node.handle_closed(now, id, reason, permanent);
            }
            NodeInput::Targets {
                change,
                addrs,
                reply,
            } => {
                match change {
                    TargetChange::Add => node.add_targets(now, &addrs),
                    TargetChange::Replace => node.replace_targets(now, &addrs),
                    TargetChange::Forget => node.forget_targets(now, &addrs),
                }
                let _ = reply.send(node.connmaker().direct_targets());
            }
        }
    }

    /// Do what the node asks; true if anything happened (the snapshot is then published).
    fn execute(self: &Arc<Self>, node: &mut Node, tasks: &mut BTreeMap<ConnId, ConnTask>) -> bool {
        let mut any = false;
        let mut table_changed = false;
        while let Some(action) = node.poll_action() {
            any = true;
            let now = self.clock.now();
            match action {
                Action::Send { conn, message } => {
                    if let Some(t) = tasks.get(&conn) {
                        let _ = t.commands.send(ConnCommand::Send(message));
                    }
                }
                Action::Close { conn, reason } => {
                    if let Some(t) = tasks.get(&conn) {
                        let _ = t.commands.send(ConnCommand::Close(reason));
                    }
                }
                Action::Dial(addr) => {
                    tokio::spawn(self.clone().dial(addr));
                }
                Action::SetLink {
                    ip,
                    conn_uid,
                    keys,
                    partial_csum,
                } => {
                    let _ = self.shared.dataplane.send(DpCommand::SetLink {
                        ip,
                        conn_uid,
                        keys: keys.map(Box::new),
                        partial_csum,
                    });
                }
                Action::SetPathMtu { ip, max_frame } => {
                    if let Some(n) = max_frame {
                        tracing::info!(
                            "path to {ip} carries frames of at most {n} bytes (MTU {})",
                            n.saturating_sub(14)
                        );
                    } else {
                        tracing::info!("path to {ip} carries full-size frames");
                    }
                    let _ = self
                        .shared
                        .dataplane
                        .send(DpCommand::SetPathMtu { ip, max_frame });
                }
                Action::RemoveLink { ip, conn_uid } => {
                    let _ = self
                        .shared
                        .dataplane
                        .send(DpCommand::RemoveLink { ip, conn_uid });
                }
                // Built once, after the actions of this pass (see below).
                Action::TableChanged => table_changed = true,
                Action::Heartbeat {
                    to,
                    src,
                    dst,
                    heartbeat,
                } => {
                    // Always through the data plane: sealed like traffic, lost like traffic.
                    let datagram = weft_overlay::heartbeat_datagram(src, dst, heartbeat);
                    let _ = self.shared.dataplane.send(DpCommand::Send { to, datagram });
                }
                Action::FastPath {
                    peer,
                    local,
                    remote,
                    addr,
                    mode,
                } => self.fastdp(crate::fastdp::FastCmd::Set {
                    peer,
                    local,
                    remote,
                    addr,
                    mode,
                }),
                Action::FastHeartbeat { peer, heartbeat } => {
                    self.fastdp(crate::fastdp::FastCmd::Send { peer, heartbeat });
                }
                Action::Gossip {
                    channel,
                    from,
                    payload,
                } => self.on_channel_gossip(node, now, channel, from, &payload),
                Action::NeighbourUp(peer) => {
                    // DNS hook (issue 11): the new neighbour gets our whole name table.
                    crate::dns::neighbour_up(&self.shared.dns(), peer);
                }
                Action::PeersChanged => {
                    let known: Vec<PeerName> =
                        node.mesh().topology().peers().map(|p| p.name).collect();
                    let reachable: Vec<PeerName> = node.mesh().routes().reachable().collect();
                    if let Some(drv) = self.shared.ipam().ipam.as_mut() {
                        drv.ipam.peers_changed(now, &known, &reachable);
                        drv.ipam
                            .set_quorum_hint(node.connmaker().direct_targets().len() + 1);
                    }
                    crate::dns::peers_changed(&self.shared.dns(), now, &known, &reachable);
                }
                Action::PersistShortId(id) => {
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
                }
            }
        }
        if table_changed {
            let table = Box::new(node.forwarding_table());
            let _ = self.shared.dataplane.send(DpCommand::SetTable(table));
        }
        any
    }

    /// Hand `cmd` to the kernel fast path (the node only asks for one when it is on).
    fn fastdp(&self, cmd: crate::fastdp::FastCmd) {
        if let Some(tx) = &self.shared.fastdp {
            let _ = tx.send(cmd);
        }
    }

    /// IPAM's and DNS's timers and output.
    fn poll_channels(&self, node: &mut Node, now: Instant) {
        let neighbours = node.neighbours();
        let routes = node.mesh().routes();
        let mut out = Vec::new();
        if let Some(drv) = self.shared.ipam().ipam.as_mut() {
            drv.ipam.handle_timeout(now);
            for (to, p) in drv.drain(&neighbours, routes) {
                out.push((crate::ipam::IPAM_CHANNEL, to, p));
            }
        }
        // DNS hook (issue 11): timers, gossip out, own entries kept on disk.
        for (to, p) in crate::dns::poll(&mut self.shared.dns(), now, &neighbours, routes) {
            out.push((crate::dns::DNS_CHANNEL, to, p));
        }
        for (channel, to, payload) in out {
            node.send_gossip(channel, to, payload);
        }
    }

    /// Gossip for IPAM or DNS from neighbour `from`.
    fn on_channel_gossip(
        &self,
        node: &mut Node,
        now: Instant,
        channel: u8,
        from: PeerName,
        bytes: &[u8],
    ) {
        let neighbours = node.neighbours();
        let routes = node.mesh().routes();
        let forward = if channel == crate::ipam::IPAM_CHANNEL {
            on_ipam_envelope(
                &mut self.shared.ipam(),
                now,
                from,
                bytes,
                &neighbours,
                routes,
            )
        } else if channel == crate::dns::DNS_CHANNEL {
            let mut dns = self.shared.dns();
            match crate::dns::on_envelope(&mut dns, now, from, bytes, &neighbours, routes) {
                Ok(forward) => forward,
                Err(e) => {
                    dns.dns_errors += 1;
                    tracing::warn!("DNS gossip from {from}: {e}");
                    Vec::new()
                }
            }
        } else {
            Vec::new()
        };
        for (to, payload) in forward {
            node.send_gossip(channel, to, payload);
        }
    }

    /// Dial `addr` once and run the connection.
    async fn dial(self: Arc<Self>, addr: SocketAddr) {
        let outcome = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => self.drive(stream, addr, true).await,
            Ok(Err(e)) => {
                self.tell(NodeInput::DialFailed {
                    addr,
                    reason: e.to_string(),
                });
                Outcome::new(e.to_string(), false)
            }
            Err(_) => {
                self.tell(NodeInput::DialFailed {
                    addr,
                    reason: "connect timed out".into(),
                });
                Outcome::new("connect timed out", false)
            }
        };
        tracing::info!("connection to {addr} ended: {}", outcome.reason);
    }

    fn tell(&self, input: NodeInput) {
        let _ = self.shared.node.send(input);
    }

    /// Run one connection until it ends.
    async fn drive(&self, stream: TcpStream, address: SocketAddr, outbound: bool) -> Outcome {
        let _ = stream.set_nodelay(true);
        let id = ConnId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let (tx, mut commands) = mpsc::unbounded_channel();
        self.tell(NodeInput::Connecting {
            id,
            address,
            outbound,
            commands: tx,
        });
        let outcome = self
            .run_connection(id, stream, address, outbound, &mut commands)
            .await;
        if !outcome.was_ready {
            tracing::info!("handshake with {address} failed: {}", outcome.reason);
        }
        self.tell(NodeInput::Closed {
            id,
            reason: outcome.reason.clone(),
            permanent: outcome.permanent,
        });
        outcome
    }

    async fn run_connection(
        &self,
        id: ConnId,
        stream: TcpStream,
        address: SocketAddr,
        outbound: bool,
        commands: &mut mpsc::UnboundedReceiver<ConnCommand>,
    ) -> Outcome {
        let conn_id: u64 = rand::rng().random();
        let now = self.clock.now();
        let mut local = self.local.clone();
        local.short_id = self.shared.view().topology.local().short_id;
        let mut config = self.conn_config.clone();
        config.security = self.security.for_peer(address.ip());
        let mut conn = Connection::new(local, outbound, conn_id, now, config);
        let (mut rd, mut wr) = stream.into_split();
        let mut buf = vec![0u8; 64 * 1024];
        let mut out = Vec::new();
        let mut ready = false;
        loop {
            out.clear();
            while conn.poll_transmit(&mut out) {}
            if !out.is_empty() {
                if let Err(e) = wr.write_all(&out).await {
                    return Outcome::new(format!("write failed: {e}"), ready);
                }
            }
            while let Some(event) = conn.poll_event() {
                match event {
                    Event::Ready {
                        remote,
                        conn_uid,
                        version,
                    } => {
                        let protection = conn.protection();
                        tracing::info!(
                            "connection {} {address} ready: {}({}) protocol {version}, {}",
                            if outbound { "to" } else { "from" },
                            remote.name,
                            remote.nickname,
                            describe(protection)
                        );
                        self.tell(NodeInput::Ready {
                            id,
                            remote: Remote {
                                name: remote.name,
                                nickname: remote.nickname.clone(),
                                uid: remote.uid.0,
                                short_id: remote.short_id,
                                data_addr: SocketAddr::new(address.ip(), remote.data_port),
                                fastdp_addr: (remote.fastdp_port != 0)
                                    .then(|| SocketAddr::new(address.ip(), remote.fastdp_port)),
                                version,
                            },
                            conn_uid,
                            keys: conn.take_data_keys(),
                            protection,
                        });
                        ready = true;
                    }
                    Event::DataPathAck { conn_uid } => {
                        self.tell(NodeInput::Ack { id, conn_uid });
                    }
                    Event::Message(Message::Gossip { channel, payload }) => {
                        if ready {
                            self.tell(NodeInput::Gossip {
                                id,
                                channel,
                                payload,
                            });
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
                            was_ready: ready,
                            permanent,
                        };
                    }
                }
            }
            let deadline = conn.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(t) => tokio::time::sleep_until(self.clock.to_std(t).into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = rd.read(&mut buf) => match r {
                    Ok(0) => return Outcome::new("connection closed by peer", ready),
                    Ok(n) => conn.handle_bytes(self.clock.now(), &buf[..n]),
                    Err(e) => return Outcome::new(format!("read failed: {e}"), ready),
                },
                _ = sleep => conn.handle_timeout(self.clock.now()),
                cmd = commands.recv() => match cmd {
                    Some(ConnCommand::Send(msg)) => {
                        if let Err(e) = conn.send(self.clock.now(), &msg) {
                            tracing::warn!("cannot send to {address}: {e}");
                        }
                    }
                    Some(ConnCommand::Close(reason)) => {
                        conn.close(CloseReason::Local);
                        return Outcome::new(reason, ready);
                    }
                    None => {
                        conn.close(CloseReason::Local);
                        return Outcome::new("router shutting down", ready);
                    }
                },
            }
        }
    }
}

/// An IPAM envelope from neighbour `from`: deliver it (or only relay it, with IPAM off here);
/// returns what to pass on.
fn on_ipam_envelope(
    state: &mut IpamState,
    now: Instant,
    from: PeerName,
    bytes: &[u8],
    neighbours: &[PeerName],
    routes: &weft_mesh::Routes,
) -> Vec<(PeerName, Vec<u8>)> {
    let IpamState {
        ipam,
        ipam_errors,
        ipam_relay,
    } = state;
    let Some(drv) = ipam.as_mut() else {
        // IPAM off here: relay only (broadcasts flood on, unicasts follow the routes).
        let Some(relay) = ipam_relay.as_mut() else {
            return Vec::new();
        };
        return match relay.handle(from, bytes, neighbours, routes) {
            Ok(h) => h.forward,
            Err(e) => {
                *ipam_errors += 1;
                tracing::warn!("IPAM message from {from}: {e}");
                Vec::new()
            }
        };
    };
    let handled = match drv.channel.handle(from, bytes, neighbours, routes) {
        Ok(h) => h,
        Err(e) => {
            *ipam_errors += 1;
            tracing::warn!("IPAM message from {from}: {e}");
            return Vec::new();
        }
    };
    if let Some((origin, payload)) = handled.deliver {
        if let Err(e) = drv.ipam.handle_message(now, origin, &payload) {
            *ipam_errors += 1;
            tracing::warn!("IPAM message from {origin}: {e}");
        }
    }
    handled.forward
}

/// The snapshot of a node before the control task runs.
pub fn empty_view(node: &Node) -> NodeView {
    view(node, &BTreeMap::new())
}

/// The snapshot the API reads.
fn view(node: &Node, tasks: &BTreeMap<ConnId, ConnTask>) -> NodeView {
    let mesh = node.mesh();
    let routes = mesh.routes();
    let topology = mesh.topology().clone();
    let mut rv = RoutesView::default();
    for dest in routes.reachable() {
        if let Some(path) = routes.path(dest) {
            rv.paths.insert(dest, path);
        }
    }
    for p in topology.peers() {
        let children = routes.broadcast_children(p.name);
        if !children.is_empty() {
            rv.broadcast.insert(p.name, children.to_vec());
        }
    }
    let conns = node
        .connections()
        .map(|c| ConnView {
            address: c.address,
            outbound: c.outbound,
            state: match c.state {
                weft_node::ConnState::Connecting => ConnState::Connecting,
                weft_node::ConnState::Pending => ConnState::Pending,
                weft_node::ConnState::Established => ConnState::Established,
            },
            remote: c.remote.map(|r| r.name),
            nickname: c.remote.map(|r| r.nickname.clone()).unwrap_or_default(),
            carrier: c.carrier,
            path_up: c.path_up,
            path_mtu: c.path_mtu,
            fastdp: c.fastdp,
            fastdp_reason: c.fastdp_reason,
            protection: tasks.get(&c.id).and_then(|t| t.protection),
        })
        .collect();
    let cm = node.connmaker();
    NodeView {
        topology,
        routes: rv,
        conns,
        targets: cm.targets(),
        direct_targets: cm.direct_targets(),
        terminations: cm.terminations(),
        stats: node.stats(),
        gossip: mesh.stats(),
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
