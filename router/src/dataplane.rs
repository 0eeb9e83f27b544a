//! Layer: driver. The data-plane thread: it owns the TAP queue, the UDP data socket and all
//! packet buffers, and runs the forwarding engine over batches.
//!
//! One wake-up of the loop: `poll` on both descriptors; drain control commands; read up to
//! [`TAP_BUDGET`] frames from the TAP, encapsulating each into the send batch (flushed with one
//! `sendmmsg` when full and at the end); receive up to [`UDP_BUDGET`] batches with `recvmmsg`,
//! writing delivered frames to the TAP. Nothing is allocated per frame. Counters are copied out
//! a few times a second, so the packet path shares no atomics with the API.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;
use weft_mesh::Instant;
use weft_overlay::heartbeat::Heartbeat;
use weft_overlay::{
    Counters, DatagramDecision, Engine, EngineConfig, ForwardingTable, Relay, TapDecision,
    emit_vxlan_header,
};
use weft_sys::tap::Tap;
use weft_sys::udp::{BATCH, BatchUdp, RecvBatch, SendBatch};

/// Frames read from the TAP per wake-up before the socket gets a turn.
pub const TAP_BUDGET: usize = 256;
/// `recvmmsg` batches per wake-up before the TAP gets a turn.
pub const UDP_BUDGET: usize = 4;
/// Size of one datagram slot: a 9000-byte jumbo frame, its Ethernet and VXLAN headers, slack.
const SLOT: usize = 9216;
/// How often counters are published.
const PUBLISH_EVERY: Duration = Duration::from_millis(200);
/// How often MAC entries are aged.
const EXPIRE_EVERY: Duration = Duration::from_secs(10);

/// A command from the control plane.
#[derive(Debug)]
pub enum DpCommand {
    /// The topology changed: forward with this table from now on.
    SetTable(Box<ForwardingTable>),
    /// Stop the thread.
    Shutdown,
}

/// An event for the control plane.
#[derive(Debug, Clone, Copy)]
pub enum DpEvent {
    /// A data-path heartbeat arrived.
    Heartbeat {
        /// The sender's short id.
        src: u16,
        /// Its content.
        heartbeat: Heartbeat,
    },
}

/// The clock the data plane and the control plane share: time since the router started,
/// as the sans-IO crates' [`Instant`].
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    epoch: std::time::Instant,
}

impl Clock {
    /// A clock starting now.
    pub fn start() -> Self {
        Self {
            epoch: std::time::Instant::now(),
        }
    }

    /// The current time.
    pub fn now(&self) -> Instant {
        Instant::ZERO + self.epoch.elapsed()
    }

    /// The std instant of a sans-IO instant (for timers).
    pub fn to_std(&self, t: Instant) -> std::time::Instant {
        self.epoch + t.saturating_duration_since(Instant::ZERO)
    }
}

/// Start the data-plane thread.
pub fn spawn(
    tap: Tap,
    udp: BatchUdp,
    config: EngineConfig,
    clock: Clock,
    commands: Receiver<DpCommand>,
    events: UnboundedSender<DpEvent>,
    publish: impl FnMut(&Counters) + Send + 'static,
) -> io::Result<JoinHandle<()>> {
    tap.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("weft-dataplane".into())
        .spawn(move || {
            let mut dp = DataPlane::new(tap, udp, Engine::new(config), clock, events);
            dp.run(&commands, publish);
        })
}

struct DataPlane {
    tap: Tap,
    udp: BatchUdp,
    engine: Engine,
    clock: Clock,
    events: UnboundedSender<DpEvent>,
    tap_buf: Vec<u8>,
    send: SendBatch,
    recv: RecvBatch,
    /// Datagrams sent since the engine's counter was last updated.
    sent: u64,
}

impl DataPlane {
    fn new(
        tap: Tap,
        udp: BatchUdp,
        engine: Engine,
        clock: Clock,
        events: UnboundedSender<DpEvent>,
    ) -> Self {
        Self {
            tap,
            udp,
            engine,
            clock,
            events,
            tap_buf: vec![0; 65536],
            send: SendBatch::new(BATCH, SLOT),
            recv: RecvBatch::new(BATCH, SLOT),
            sent: 0,
        }
    }

    fn run(&mut self, commands: &Receiver<DpCommand>, mut publish: impl FnMut(&Counters)) {
        let mut ready = [false; 2];
        let mut last_publish = self.clock.now();
        let mut last_expire = last_publish;
        loop {
            let polled = weft_sys::poll::wait_readable(
                &[self.tap.as_fd(), self.udp.as_fd()],
                Some(Duration::from_millis(100)),
                &mut ready,
            );
            if let Err(e) = polled {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!("data plane: poll failed: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
                ready = [false; 2];
            }
            loop {
                match commands.try_recv() {
                    Ok(DpCommand::SetTable(table)) => self.engine.set_table(*table),
                    Ok(DpCommand::Shutdown) | Err(TryRecvError::Disconnected) => {
                        publish(self.engine.counters());
                        return;
                    }
                    Err(TryRecvError::Empty) => break,
                }
            }
            let now = self.clock.now();
            if ready[0] {
                self.tap_to_peers(now);
            }
            if ready[1] {
                self.peers_to_tap(now);
            }
            if now.saturating_duration_since(last_expire) >= EXPIRE_EVERY {
                self.engine.expire(now);
                last_expire = now;
            }
            if now.saturating_duration_since(last_publish) >= PUBLISH_EVERY {
                publish(self.engine.counters());
                last_publish = now;
            }
        }
    }

    /// Frames from the local bridge go out to peers.
    fn tap_to_peers(&mut self, now: Instant) {
        for _ in 0..TAP_BUDGET {
            let n = match self.tap.recv(&mut self.tap_buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!("data plane: reading the TAP failed: {e}");
                    break;
                }
            };
            let frame = &self.tap_buf[..n];
            if frame.len() + weft_wire::vxlan::HEADER_LEN > SLOT {
                continue;
            }
            match self.engine.on_tap_frame(frame, now) {
                TapDecision::Drop | TapDecision::Local => {}
                TapDecision::Unicast { dst, via } => {
                    let src = self.engine.local_short_id();
                    push(&mut self.send, via.addr, src, dst, frame);
                }
                TapDecision::Flood => {
                    let src = self.engine.local_short_id();
                    for &peer in self.engine.flood_targets() {
                        if self.send.is_full() {
                            self.sent += flush(&self.udp, &mut self.send);
                        }
                        push(&mut self.send, peer.addr, src, peer.short_id, frame);
                    }
                }
            }
            if self.send.is_full() {
                self.sent += flush(&self.udp, &mut self.send);
            }
        }
        self.sent += flush(&self.udp, &mut self.send);
        self.engine.count_sent(std::mem::take(&mut self.sent));
    }

    /// Datagrams from peers go to the local bridge.
    fn peers_to_tap(&mut self, now: Instant) {
        for _ in 0..UDP_BUDGET {
            let count = match self.udp.recv_batch(&mut self.recv) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    break;
                }
                Err(e) => {
                    // ICMP errors from earlier sends surface here (ECONNREFUSED); not fatal.
                    tracing::debug!("data plane: receive failed: {e}");
                    break;
                }
            };
            for i in 0..count {
                if self.recv.truncated(i) {
                    self.engine.count_truncated();
                    continue;
                }
                let datagram = self.recv.datagram(i);
                let from = self.recv.source(i);
                match self.engine.on_datagram(datagram, from, now) {
                    DatagramDecision::Drop => {}
                    DatagramDecision::Heartbeat { src, heartbeat } => {
                        let _ = self.events.send(DpEvent::Heartbeat { src, heartbeat });
                    }
                    DatagramDecision::Forward { deliver, relay } => {
                        if let Some(range) = deliver {
                            match self.tap.send(&datagram[range]) {
                                Ok(_) => self.engine.count_delivered(1),
                                Err(e) => {
                                    tracing::debug!("data plane: writing the TAP failed: {e}")
                                }
                            }
                        }
                        match relay {
                            Relay::None => {}
                            Relay::Next(next) => {
                                if self.send.is_full() {
                                    self.sent += flush(&self.udp, &mut self.send);
                                }
                                self.send.push_with(next.addr, |buf| {
                                    buf[..datagram.len()].copy_from_slice(datagram);
                                    datagram.len()
                                });
                            }
                            Relay::Tree { source } => {
                                let inner = &datagram[weft_wire::vxlan::HEADER_LEN..];
                                for child in self.engine.table().broadcast_children(source) {
                                    if self.send.is_full() {
                                        self.sent += flush(&self.udp, &mut self.send);
                                    }
                                    push(&mut self.send, child.addr, source, child.short_id, inner);
                                }
                            }
                        }
                    }
                }
            }
            if count < BATCH {
                break;
            }
        }
        self.sent += flush(&self.udp, &mut self.send);
        self.engine.count_sent(std::mem::take(&mut self.sent));
    }
}

/// Queue `frame` in a VXLAN datagram from peer `src` to peer `dst`, sent to `to`.
fn push(send: &mut SendBatch, to: SocketAddr, src: u16, dst: u16, frame: &[u8]) {
    send.push_with(to, |buf| {
        let h = emit_vxlan_header(src, dst, buf);
        buf[h..h + frame.len()].copy_from_slice(frame);
        h + frame.len()
    });
}

/// Send the batch; returns how many datagrams went out.
fn flush(udp: &BatchUdp, send: &mut SendBatch) -> u64 {
    if send.is_empty() {
        return 0;
    }
    let sent = match udp.send_batch(send) {
        Ok(n) => n as u64,
        Err(e) => {
            tracing::debug!("data plane: send failed: {e}");
            0
        }
    };
    send.clear();
    sent
}
