//! Layer: driver. The data-plane threads: each owns one TAP queue, one UDP data socket and all
//! its packet buffers, and runs its own forwarding engine over batches.
//!
//! **Threads** (`--datapath-threads N`): the TAP is multi-queue and the data port is `N`
//! sockets bound to it with `SO_REUSEPORT`, one queue and one socket per thread. A flow stays
//! on one TAP queue (the kernel's hash, or the express lane's steering below), so on one
//! thread; the thread writes its index, its *stream*,
//! into every datagram's VXLAN header, and the receiving router's sockets are steered by that
//! byte (stream mod its thread count, [`BatchUdp::bind_group`]), so a flow is received by one
//! thread too, and written to one TAP queue: in order end to end. With a password each thread
//! seals with its own stream's keys and counters ([`weft_crypto::data`]); every thread opens
//! every stream. Everything the control plane says goes to every thread ([`Commands`]); each
//! engine learns MAC addresses from its own share of the traffic and passes what it learned
//! to the others ([`Engine::take_learned`]), and counters are summed when published. One
//! thread is the single-threaded data plane of before: stream 0, no sharing.
//!
//! **The express lane** (on unless `--no-express`, needs eBPF): one more thread after the bulk
//! ones, with the TAP's last queue and the socket group's last socket, for *sparse* flows: a
//! ping, a health check, a heartbeat, a DNS query, a TCP handshake. An eBPF program steers the
//! TAP's queues: it meters every flow, sends one that stays under a small budget to the
//! express queue and every other flow to a bulk queue, and moves a flow between the two only
//! where it cannot overtake its own frames ([`weft_sys::steer`] has the rules and the
//! figures). A flow gets its bulk queue when it first becomes busy, and keeps it: the queue its
//! other direction was received on if this host has seen that (each bulk thread pins the
//! flows it delivers to its own queue, `Pinner`), else the next bulk queue in turn, so a few
//! busy flows spread evenly over the threads and a connection's two directions share one
//! thread on each host. The express
//! thread sends with [`weft_wire::vxlan::EXPRESS`] in the header, and the receiving router's
//! socket filter hands such datagrams to its own express socket, whatever the stream byte
//! ([`BatchUdp::bind_group`]); so a sparse flow skips the bulk queues on both hosts (the TAP's
//! on the sending one, the socket's on the receiving one), where a bulk TCP stream keeps
//! milliseconds of data. The thread runs at nice [`EXPRESS_NICE`]: it handles little traffic,
//! and on a busy host a sparse frame then waits neither behind bulk frames nor for the thread's
//! turn on a core. Its engine is one more stream (its index), with its own keys.
//!
//! One wake-up of the loop: `poll` on both descriptors; drain control commands; read up to
//! [`TAP_BUDGET`] frames from the TAP, encapsulating each into the send path; receive up to
//! [`UDP_BUDGET`] batches with `recvmmsg`, writing delivered frames to the TAP. Nothing is
//! allocated per frame. Counters are copied out a few times a second, so the packet path shares
//! no atomics with the API.
//!
//! **Offloads** (when the TAP was opened with a vnet header, see `run.rs`): a TAP read may be a
//! TCP super-frame of up to 64 KiB (TSO) or a frame whose L4 checksum is left to us. The engine
//! decides once per read (every segment has the super-frame's Ethernet header), then the
//! [`Segmenter`] writes each segment, behind its VXLAN header, straight into a [`GsoBatch`]
//! slot: one `sendmsg` with `UDP_SEGMENT` carries a run of equal-size datagrams to one peer.
//! Single frames join a run too when they follow one of the same size to the same peer (small
//! packets of one flow, a stream's ACKs: one trip through the kernel's UDP stack and the
//! underlay for the whole run); a frame whose run another interrupts after one datagram goes
//! through the [`SendBatch`] (`sendmmsg`), as do relayed datagrams. The batch is always sent
//! before the run, which only ever holds later datagrams, so datagrams leave in the order
//! their frames were read.
//! Received datagrams come in with UDP GRO (one slot may hold a run of datagrams from one
//! sender); the frames delivered locally go through the [`Coalescer`], which merges consecutive
//! segments of one TCP flow, or datagrams of one UDP flow, into a super-frame written with one
//! TAP write. A kernel that refuses a UDP super-frame (before Linux 6.2) gets a warning, loses
//! that super-frame (counted in `tap_tx_dropped`) and UDP datagrams one by one from then on.
//! The coalescer is emptied at the end of every receive batch, so no frame waits across a
//! `poll`.
//!
//! **Per neighbour**, everything lives in the engine's record of it (a [`LinkId`]): its
//! encryption link, its path limit and its traffic. A received slot's sender is looked up once
//! ([`Engine::link_at`], one hash for a whole GRO run) and every datagram in it is handed to
//! [`Engine::on_received`] with that id; a send finds its neighbour's record from the table
//! entry it goes to ([`Engine::link_to`], an array index).
//!
//! **Encryption** (with a password): the engine seals every datagram sent to a neighbour and
//! opens every datagram received from it, in place in the batch buffers, one segment at a time
//! (sealing adds the same 24 bytes to each segment of a GSO run, so runs stay equal-sized).
//! Relayed datagrams are opened and sealed again for the next hop. Datagrams that fail
//! authentication or replay checks are counted and go no further.
//!
//! **The socket** is non-blocking. A full send queue does not block inside `sendmsg`: the batch
//! waits (`poll` for `POLLOUT`, at most [`SEND_WAIT`] at a time, as long as room keeps coming)
//! and goes on where it stopped; what is left after a wait that brought no room is dropped and
//! counted (`udp_tx_dropped_queue_full`), as are datagrams the kernel refuses
//! (`udp_tx_dropped_error`). Receiving stops when nothing more is queued.
//!
//! **Path MTU**: the control plane tells the thread, per neighbour, the longest inner frame the
//! underlay path takes ([`DpCommand::SetPathMtu`]). A TAP read whose segments are longer goes
//! the way [`weft_overlay::pmtu`] says: an IPv4 packet with DF is answered with an ICMP
//! "fragmentation needed" written back to the TAP (once per read, the read dropped), one
//! without DF is sent as IPv4 fragments, one datagram each, anything else is dropped. Reads
//! within the limit, and relayed datagrams, are untouched.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::mpsc::{Receiver, SendError, Sender, TryRecvError};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;
use weft_mesh::Instant;
use weft_overlay::heartbeat::Heartbeat;
use weft_overlay::offload::{
    Coalescer, Csum, Push, Segmenter, VNET_HDR_LEN, VnetHdr, complete_partial, prepare_partial,
};
use weft_overlay::pmtu::{self, FRAG_NEEDED_MAX_LEN, Fragmenter, Oversize};
use weft_overlay::{
    Counters, DatagramDecision, Engine, EngineConfig, ForwardingTable, LinkId, Owner, PeerEntry,
    Relay, TapDecision, emit_vxlan_header,
};
use weft_sys::steer::FlowPins;
use weft_sys::tap::{MAX_VNET_FRAME, Tap};
use weft_sys::udp::{
    BATCH, BatchUdp, Flushed, GRO_BUF_SIZE, GSO_MAX_SEGMENTS, GsoBatch, RecvBatch, SendBatch,
};
use weft_wire::flow;
use weft_wire::vxlan::{self, HEADER_LEN as VXLAN_HLEN};

use crate::traffic::LinkTraffic;
use weft_overlay::links::MAX_OVERHEAD;

/// The nice value of the express lane's thread (unless `--datapath-priority` puts every
/// data-plane thread on the real-time scheduler): it handles only sparse flows, so favouring it
/// costs bulk traffic almost nothing, and it runs as soon as a sparse frame arrives instead of
/// waiting for its turn on a busy core.
pub const EXPRESS_NICE: i32 = -20;
/// Reads from the TAP per wake-up before the socket gets a turn (a read may be a 64 KiB
/// super-frame, so this is also a bound of about 4 MiB).
pub const TAP_BUDGET: usize = 64;
/// `recvmmsg` batches per wake-up before the TAP gets a turn.
pub const UDP_BUDGET: usize = 4;
/// Size of one datagram slot: a 9000-byte jumbo frame, its Ethernet and VXLAN headers, slack.
const SLOT: usize = 9216;
/// Receive slots when UDP GRO is on: each is [`GRO_BUF_SIZE`] (64 KiB), 2 MiB in all.
const GRO_SLOTS: usize = 32;
/// The vnet header of an ordinary, fully checksummed frame written to the TAP.
const PLAIN_VNET_HDR: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];
/// How often counters are published.
const PUBLISH_EVERY: Duration = Duration::from_millis(200);
/// How often MAC entries are aged.
const EXPIRE_EVERY: Duration = Duration::from_secs(10);
/// The longest one wait for room in a full send queue; a wait that brings none drops the rest
/// of the batch.
pub const SEND_WAIT: Duration = Duration::from_millis(20);

/// A command from the control plane.
#[derive(Debug, Clone)]
pub enum DpCommand {
    /// The topology changed: forward with this table from now on.
    SetTable(Box<ForwardingTable>),
    /// Protect traffic with the neighbour at `ip` as connection `conn_uid` agreed: sealed with
    /// these keys, or in the clear when `None`.
    SetLink {
        /// The neighbour's underlay address.
        ip: IpAddr,
        /// The connection that agreed the keys.
        conn_uid: u64,
        /// The keys; `None`: in the clear.
        keys: Option<Box<weft_crypto::handshake::DataKeys>>,
        /// The neighbour takes segments whose checksum is left partial.
        partial_csum: bool,
    },
    /// Connection `conn_uid` to the neighbour at `ip` ended.
    RemoveLink {
        /// The neighbour's underlay address.
        ip: IpAddr,
        /// The connection that ended.
        conn_uid: u64,
    },
    /// From now on, an inner Ethernet frame (a segment, Ethernet header included, VXLAN header
    /// and crypto overhead excluded) longer than `max_frame` does not fit the path to the
    /// neighbour at underlay address `ip`; `None`: no limit known.
    SetPathMtu {
        /// The neighbour's underlay address.
        ip: IpAddr,
        /// The longest inner frame that fits; `None`: no limit.
        max_frame: Option<u16>,
    },
    /// Send this VXLAN datagram (a heartbeat), sealed if the link says so (by thread 0).
    Send {
        /// Where to.
        to: SocketAddr,
        /// The plain datagram.
        datagram: Vec<u8>,
    },
    /// Stop the threads.
    Shutdown,
}

/// The control plane's line to the data-plane threads: a datagram to send goes to thread 0,
/// everything else to every thread.
#[derive(Debug, Clone)]
pub struct Commands {
    threads: Vec<Sender<DpCommand>>,
}

impl Commands {
    /// Lines to `threads` data-plane threads (at least one), and each thread's end.
    pub fn new(threads: usize) -> (Self, Vec<Receiver<DpCommand>>) {
        let (threads, ends) = (0..threads.max(1))
            .map(|_| std::sync::mpsc::channel())
            .unzip();
        (Self { threads }, ends)
    }

    /// Send `cmd` to the threads that take it.
    pub fn send(&self, cmd: DpCommand) -> Result<(), SendError<DpCommand>> {
        match cmd {
            DpCommand::Send { .. } => send_to_all(&self.threads[..1], cmd),
            _ => send_to_all(&self.threads, cmd),
        }
    }
}

/// Send `msg` to each of `to` (copies to all but the last, which gets `msg` itself); stops at
/// the first closed line. Nothing to send to: `Ok`.
fn send_to_all<T: Clone>(to: &[Sender<T>], msg: T) -> Result<(), SendError<T>> {
    let Some((last, rest)) = to.split_last() else {
        return Ok(());
    };
    for t in rest {
        t.send(msg.clone())?;
    }
    last.send(msg)
}

/// MAC addresses one thread's engine learned, for the others ([`Engine::take_learned`]).
type LearnedMacs = Vec<([u8; 6], Owner)>;

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
    /// A heartbeat arrived through the kernel fast path ([`crate::fastdp`]).
    FastHeartbeat {
        /// The neighbour whose device it came in on.
        from: weft_mesh::PeerName,
        /// Its content.
        heartbeat: Heartbeat,
    },
    /// A unicast frame from a fast-path neighbour came over sleeve: point the bridge's entry
    /// for its source MAC at the neighbour's fast-path port
    /// ([`weft_overlay::Engine::take_fastdp_hints`]).
    FastMac {
        /// The neighbour's short id.
        remote: u16,
        /// The MAC.
        mac: [u8; 6],
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

/// One data-plane thread's TAP queue and UDP socket.
pub struct Queue {
    /// The TAP queue.
    pub tap: Tap,
    /// The socket (one of a [`BatchUdp::bind_group`]: its index is the thread's).
    pub udp: BatchUdp,
}

/// Start one data-plane thread per queue; thread `i` gets `commands[i]` (see
/// [`Commands::new`]) and publishes its counters as `publish(i, ..)`.
///
/// If the TAP was opened with a vnet header ([`Tap::vnet_hdr`]), reads are taken apart with the
/// [`Segmenter`] and deliveries coalesced; UDP GRO is switched on for the sockets when the kernel
/// has it. With `steering` (the express lane's program attached to the TAP), the last queue is
/// the express lane's and, with two bulk threads or more, each bulk thread pins the flows it
/// delivers (`Pinner`).
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    queues: Vec<Queue>,
    encrypted: bool,
    config: EngineConfig,
    clock: Clock,
    commands: Vec<Receiver<DpCommand>>,
    events: UnboundedSender<DpEvent>,
    publish: impl Fn(usize, &Counters, &LinkTraffic) + Send + Clone + 'static,
    priority: u8,
    steering: Option<FlowPins>,
) -> io::Result<Vec<JoinHandle<()>>> {
    let n = queues.len();
    let express = steering.is_some();
    let (mac_tx, mac_rx): (Vec<Sender<LearnedMacs>>, Vec<Receiver<LearnedMacs>>) =
        (0..n).map(|_| std::sync::mpsc::channel()).unzip();
    let mut handles = Vec::with_capacity(n);
    for (i, ((q, commands), macs)) in queues.into_iter().zip(commands).zip(mac_rx).enumerate() {
        let Queue { tap, udp } = q;
        tap.set_nonblocking(true)?;
        udp.set_nonblocking(true)?;
        let gro = match udp.set_gro(true) {
            Ok(on) => on,
            Err(e) => {
                tracing::warn!("data plane: enabling UDP GRO failed: {e}");
                false
            }
        };
        if i == 0 {
            tracing::debug!(
                threads = n,
                vnet_hdr = tap.vnet_hdr(),
                gro,
                gso_segments = udp.max_gso_segments(),
                "data plane offloads"
            );
        }
        let siblings = Siblings {
            macs,
            others: mac_tx
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .map(|(_, tx)| tx.clone())
                .collect(),
        };
        let is_express = express && i + 1 == n;
        let config = EngineConfig {
            // At most 64 threads and the express lane (the clamp of --datapath-threads), and
            // receivers accept 64 streams, so this fits.
            stream: u8::try_from(i).unwrap_or(u8::MAX),
            share_macs: n > 1,
            express: is_express,
            ..config
        };
        let events = events.clone();
        let publish = publish.clone();
        // A bulk thread pins the flows it delivers to its own queue (not the express lane;
        // with one bulk thread there is nothing to choose).
        let bulk_threads = n - usize::from(express);
        let pinner = steering
            .as_ref()
            .filter(|_| !is_express && bulk_threads > 1)
            .map(|pins| Pinner::new(pins.clone(), i as u32));
        let name = if is_express {
            "weft-express"
        } else {
            "weft-dataplane"
        };
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                if is_express && priority == 0 {
                    if let Err(e) = weft_sys::sched::set_nice(EXPRESS_NICE) {
                        tracing::warn!(
                            "express lane: nice {EXPRESS_NICE} refused ({e}); sparse flows \
                             wait for the CPU like bulk ones"
                        );
                    }
                }
                if priority > 0 {
                    match weft_sys::sched::set_realtime(priority) {
                        Ok(()) => tracing::info!(
                            "data plane {i}: real-time priority {priority} (SCHED_FIFO)"
                        ),
                        Err(e) => tracing::warn!(
                            "data plane {i}: real-time priority {priority} refused ({e}); \
                             running on the ordinary scheduler"
                        ),
                    }
                }
                let engine = if encrypted {
                    Engine::with_sealing(config)
                } else {
                    Engine::new(config)
                };
                let mut dp = DataPlane::new(tap, udp, engine, clock, events, gro, siblings, pinner);
                dp.run(&commands, |c: &Counters, t: &LinkTraffic| publish(i, c, t));
            })?;
        handles.push(handle);
    }
    Ok(handles)
}

/// A thread's lines to the other data-plane threads.
struct Siblings {
    /// What the others learned.
    macs: Receiver<LearnedMacs>,
    /// To each other thread.
    others: Vec<Sender<LearnedMacs>>,
}

/// How often a flow's pin is renewed while its frames keep arriving (the map is an LRU).
const PIN_REFRESH: Duration = Duration::from_secs(1);
/// Entries of a thread's cache of flows it pinned recently (a power of two).
const PIN_CACHE: usize = 256;

/// A bulk thread's side of the bulk-queue pairing (with the express lane): the flows whose
/// frames this thread delivers to the TAP are pinned to its own TAP queue in the steering
/// program's map ([`FlowPins`]), so the other direction of each flow, once the program moves
/// it to a bulk queue, is read by this thread too. The sending router chose the thread (its
/// thread's stream steered the datagrams here), so the two hosts agree on it: a TCP stream's
/// data and its ACKs pass through one thread on each host, which writes the ACKs and then reads
/// the data they let out in the same loop, without waking another thread (where both hosts
/// chose before seeing the other's choice, the program settles both on the same queue:
/// [`weft_sys::steer`], *Bulk queues*). The pin is one system call per flow (renewed every
/// [`PIN_REFRESH`]), skipped through a small cache keyed by the flow hash; it is taken from
/// the first frame delivered from each received batch slot (a GRO slot is usually one
/// super-frame of one flow).
struct Pinner {
    pins: FlowPins,
    queue: u32,
    /// (flow hash, renew after), direct-mapped by the hash's low bits.
    recent: Box<[(u32, Instant); PIN_CACHE]>,
    warned: bool,
}

impl Pinner {
    fn new(pins: FlowPins, queue: u32) -> Self {
        Self {
            pins,
            queue,
            recent: Box::new([(0, Instant::ZERO); PIN_CACHE]),
            warned: false,
        }
    }

    /// `frame` (an Ethernet frame) is being delivered by this thread at `now`.
    fn note(&mut self, frame: &[u8], now: Instant) {
        let Some(h) = flow::hash(frame) else { return };
        let e = &mut self.recent[h as usize & (PIN_CACHE - 1)];
        if e.0 == h && now < e.1 {
            return;
        }
        *e = (h, now + PIN_REFRESH);
        if let Err(err) = self.pins.pin(h, self.queue) {
            if !self.warned {
                tracing::warn!(
                    "data plane: pinning a flow to queue {} failed: {err}",
                    self.queue
                );
                self.warned = true;
            }
        }
    }
}

/// What the driver counts itself (the offload counters of [`Counters`]), merged into the
/// engine's counters when they are published.
#[derive(Debug, Default)]
struct DriverCounters {
    tap_rx_superframes: u64,
    tap_rx_segments: u64,
    tap_rx_offload_dropped: u64,
    tap_tx_superframes: u64,
    tap_tx_coalesced: u64,
    tap_tx_dropped: u64,
    tap_tx_csum_partial: u64,
    /// Partial-checksum frames that are not TCP or UDP (added to the engine's count).
    udp_rx_dropped_malformed: u64,
    udp_tx_dropped_crypto: u64,
    udp_tx_dropped_queue_full: u64,
    udp_tx_dropped_error: u64,
    pmtu_frag_needed_sent: u64,
    pmtu_frames_fragmented: u64,
    pmtu_fragments_sent: u64,
    pmtu_dropped: u64,
}

struct DataPlane {
    tap: Tap,
    /// Frames carry a vnet header (the TAP was opened with `IFF_VNET_HDR`).
    vnet: bool,
    udp: BatchUdp,
    engine: Engine,
    clock: Clock,
    events: UnboundedSender<DpEvent>,
    tap_buf: Vec<u8>,
    /// Single datagrams (ordinary frames, relays), sent with `sendmmsg`.
    send: SendBatch,
    /// Runs of equal-size segments for one peer, sent with one `UDP_SEGMENT` `sendmsg`.
    gso: GsoBatch,
    recv: RecvBatch,
    /// Receive-side coalescing of TCP segments (used only with a vnet header).
    coalescer: Coalescer,
    /// Datagrams sent since the engine's counter was last updated.
    sent: u64,
    /// Frames written to the TAP since the engine's counter was last updated.
    delivered: u64,
    counters: DriverCounters,
    /// The engine's per-neighbour traffic as last published (for the topology page and
    /// `weft_link_*` metrics).
    traffic: LinkTraffic,
    /// One segment of a read to be fragmented.
    frag_buf: Vec<u8>,
    /// An ICMP "fragmentation needed" frame on its way to the TAP.
    icmp_buf: [u8; FRAG_NEEDED_MAX_LEN],
    siblings: Siblings,
    /// With the express lane, a bulk thread's pins (see [`Pinner`]).
    pinner: Option<Pinner>,
}

impl DataPlane {
    #[allow(clippy::too_many_arguments)]
    fn new(
        tap: Tap,
        udp: BatchUdp,
        engine: Engine,
        clock: Clock,
        events: UnboundedSender<DpEvent>,
        gro: bool,
        siblings: Siblings,
        pinner: Option<Pinner>,
    ) -> Self {
        let vnet = tap.vnet_hdr();
        let recv = if gro {
            RecvBatch::new(GRO_SLOTS, GRO_BUF_SIZE)
        } else {
            RecvBatch::new(BATCH, SLOT)
        };
        Self {
            tap,
            vnet,
            udp,
            engine,
            clock,
            events,
            tap_buf: vec![0; MAX_VNET_FRAME],
            send: SendBatch::new(BATCH, SLOT),
            gso: GsoBatch::new(GSO_MAX_SEGMENTS, SLOT),
            recv,
            coalescer: Coalescer::new(if vnet { Coalescer::DEFAULT_MAX_LEN } else { 0 }),
            sent: 0,
            delivered: 0,
            counters: DriverCounters::default(),
            traffic: LinkTraffic::default(),
            frag_buf: vec![0; SLOT],
            icmp_buf: [0; FRAG_NEEDED_MAX_LEN],
            siblings,
            pinner,
        }
    }

    /// The engine's counters with the driver's own filled in.
    fn counters(&self) -> Counters {
        let d = &self.counters;
        // The express lane's thread: what it read and received is the express lane's.
        let express = self.engine.config().express;
        Counters {
            tap_rx_superframes: d.tap_rx_superframes,
            tap_rx_segments: d.tap_rx_segments,
            tap_rx_offload_dropped: d.tap_rx_offload_dropped,
            tap_tx_superframes: d.tap_tx_superframes,
            tap_tx_coalesced: d.tap_tx_coalesced,
            tap_tx_dropped: d.tap_tx_dropped,
            tap_tx_csum_partial: d.tap_tx_csum_partial,
            udp_rx_dropped_malformed: self.engine.counters().udp_rx_dropped_malformed
                + d.udp_rx_dropped_malformed,
            udp_tx_dropped_crypto: d.udp_tx_dropped_crypto,
            udp_tx_dropped_queue_full: d.udp_tx_dropped_queue_full,
            udp_tx_dropped_error: d.udp_tx_dropped_error,
            pmtu_frag_needed_sent: d.pmtu_frag_needed_sent,
            pmtu_frames_fragmented: d.pmtu_frames_fragmented,
            pmtu_fragments_sent: d.pmtu_fragments_sent,
            pmtu_dropped: d.pmtu_dropped,
            express_tap_rx_frames: if express {
                self.engine.counters().tap_rx_frames
            } else {
                0
            },
            express_udp_rx_datagrams: if express {
                self.engine.counters().udp_rx_datagrams
            } else {
                0
            },
            ..*self.engine.counters()
        }
    }

    /// Publish the counters and the per-neighbour traffic.
    fn publish(&mut self, publish: &mut impl FnMut(&Counters, &LinkTraffic)) {
        for (ip, t) in self.engine.link_traffic() {
            self.traffic.set(ip, t);
        }
        publish(&self.counters(), &self.traffic);
    }

    fn run(
        &mut self,
        commands: &Receiver<DpCommand>,
        mut publish: impl FnMut(&Counters, &LinkTraffic),
    ) {
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
                    Ok(DpCommand::SetLink {
                        ip,
                        conn_uid,
                        keys,
                        partial_csum,
                    }) => {
                        self.engine
                            .set_link(ip, conn_uid, keys.as_deref(), partial_csum);
                    }
                    Ok(DpCommand::RemoveLink { ip, conn_uid }) => {
                        self.engine.remove_link(ip, conn_uid);
                    }
                    Ok(DpCommand::SetPathMtu { ip, max_frame }) => {
                        self.engine.set_path_mtu(ip, max_frame);
                    }
                    Ok(DpCommand::Send { to, datagram }) => {
                        let mut tx =
                            Tx::new(&self.udp, &mut self.send, &mut self.gso, &mut self.engine);
                        let link = tx.engine.link_at(to.ip());
                        tx.datagram(to, link, &datagram);
                        tx.finish(&mut self.counters, &mut self.sent);
                    }
                    Ok(DpCommand::Shutdown) | Err(TryRecvError::Disconnected) => {
                        self.publish(&mut publish);
                        return;
                    }
                    Err(TryRecvError::Empty) => break,
                }
            }
            let now = self.clock.now();
            while let Ok(macs) = self.siblings.macs.try_recv() {
                self.engine.import_macs(&macs, now);
            }
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
            self.share_learned();
            if now.saturating_duration_since(last_publish) >= PUBLISH_EVERY {
                self.publish(&mut publish);
                last_publish = now;
            }
        }
    }

    /// Pass what the engine learned on to the other threads (nothing with one thread).
    fn share_learned(&mut self) {
        if self.siblings.others.is_empty() {
            return;
        }
        let learned: LearnedMacs = self.engine.take_learned().collect();
        if !learned.is_empty() {
            // A sibling that ended is shutting down too: nothing to tell it.
            let _ = send_to_all(&self.siblings.others, learned);
        }
    }

    /// Frames from the local bridge go out to peers.
    fn tap_to_peers(&mut self, now: Instant) {
        let mut tx = Tx::new(&self.udp, &mut self.send, &mut self.gso, &mut self.engine);
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
            let read = &self.tap_buf[..n];
            let (hdr, frame) = if self.vnet {
                match VnetHdr::parse(read) {
                    Ok(hdr) => (hdr, &read[VNET_HDR_LEN..]),
                    Err(_) => {
                        self.counters.tap_rx_offload_dropped += 1;
                        continue;
                    }
                }
            } else {
                (VnetHdr::NONE, read)
            };
            // One decision for the whole read: every segment of a super-frame carries its
            // Ethernet header.
            let decision = tx.engine.on_tap_frame(frame, now);
            if matches!(decision, TapDecision::Drop | TapDecision::Local) {
                continue;
            }
            let seg = match Segmenter::new(hdr, frame) {
                Ok(seg) if seg.segment_len_max() + VXLAN_HLEN + MAX_OVERHEAD <= SLOT => seg,
                Ok(_) => {
                    self.counters.tap_rx_offload_dropped += 1;
                    continue;
                }
                Err(e) => {
                    tracing::trace!("data plane: TAP frame refused by the segmenter: {e}");
                    self.counters.tap_rx_offload_dropped += 1;
                    continue;
                }
            };
            let segments = seg.remaining() as u64;
            if segments > 1 {
                self.counters.tap_rx_superframes += 1;
                self.counters.tap_rx_segments += segments;
            }
            let wire = frame.len() + segments as usize * VXLAN_HLEN;
            // The smallest limit of a path this read needs a "fragmentation needed" for.
            let mut frag_needed: Option<u16> = None;
            let mut limited = Limited {
                frame,
                seg_len: seg.segment_len_max(),
                wire,
                segments: segments as usize,
                scratch: &mut self.frag_buf,
                counters: &mut self.counters,
                frag_needed: &mut frag_needed,
            };
            match decision {
                TapDecision::Unicast { dst, via } => {
                    let partial = tx.engine.partial_csum_to(&via, dst);
                    limited.forward(&mut tx, seg, via, dst, partial);
                }
                TapDecision::Flood => {
                    // By index: sending borrows the engine (the targets do not change).
                    for i in 0..tx.engine.flood_targets().len() {
                        let peer = tx.engine.flood_targets()[i];
                        limited.forward(&mut tx, seg.clone(), peer, peer.short_id, false);
                    }
                }
                TapDecision::Drop | TapDecision::Local => {}
            }
            if let Some(max) = frag_needed {
                match pmtu::frag_needed(frame, max, &mut self.icmp_buf) {
                    Some(n) => {
                        let icmp = &self.icmp_buf[..n];
                        let written = if self.vnet {
                            self.tap.send_vectored(&PLAIN_VNET_HDR, icmp)
                        } else {
                            self.tap.send(icmp)
                        };
                        if write_ok(written, 1, &mut self.counters) {
                            self.counters.pmtu_frag_needed_sent += 1;
                        }
                    }
                    None => self.counters.pmtu_dropped += 1,
                }
            }
        }
        tx.finish(&mut self.counters, &mut self.sent);
        self.engine.count_sent(std::mem::take(&mut self.sent));
    }

    /// Datagrams from peers go to the local bridge.
    fn peers_to_tap(&mut self, now: Instant) {
        let mut rx = Rx {
            tap: &self.tap,
            vnet: self.vnet,
            coalescer: &mut self.coalescer,
            delivered: &mut self.delivered,
            counters: &mut self.counters,
        };
        let mut tx = Tx::new(&self.udp, &mut self.send, &mut self.gso, &mut self.engine);
        for _ in 0..UDP_BUDGET {
            // The socket is non-blocking: this takes what is queued, or nothing.
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
                let from = self.recv.source(i);
                let stride = self.recv.stride(i);
                let total = self.recv.segments(i).len();
                // A truncated slot's last datagram is cut off; the ones before it are whole.
                let whole = total - usize::from(self.recv.truncated(i));
                if whole < total {
                    tx.engine.count_truncated();
                }
                // The sender, once for the whole slot (a GRO slot is a run from one sender).
                let link = tx.engine.link_at(from.ip());
                let slot = self.recv.datagram_mut(i);
                // The same split as `segments`: runs of `stride` bytes, the last one shorter.
                let stride = if stride == 0 {
                    slot.len().max(1)
                } else {
                    stride
                };
                let mut pin = self.pinner.as_mut();
                for buf in slot.chunks_mut(stride).take(whole) {
                    let received = tx.engine.on_received(link, buf, now);
                    match received.decision {
                        DatagramDecision::Drop => {}
                        DatagramDecision::Heartbeat { src, heartbeat } => {
                            let _ = self.events.send(DpEvent::Heartbeat { src, heartbeat });
                        }
                        DatagramDecision::Forward { deliver, relay } => {
                            if let Some(range) = deliver {
                                let csum = if vxlan::csum_partial(&buf[received.plain.clone()]) {
                                    Csum::Partial
                                } else {
                                    Csum::Complete
                                };
                                if let Some(p) = pin.take() {
                                    // The first frame delivered from this slot.
                                    p.note(&buf[range.clone()], now);
                                }
                                rx.deliver(&mut buf[range], csum);
                            }
                            let datagram = &buf[received.plain];
                            match relay {
                                Relay::None => {}
                                Relay::Next(next) => tx.relay(next, datagram),
                                Relay::Tree { source } => {
                                    let inner = &datagram[VXLAN_HLEN..];
                                    let children = tx.engine.table().broadcast_children(source);
                                    // By index: sending borrows the engine.
                                    for j in 0..children.len() {
                                        let child = tx.engine.table().broadcast_children(source)[j];
                                        tx.relay_copy(child, source, inner);
                                    }
                                }
                            }
                        }
                    }
                }
            }
            // Never hold frames across a poll wait.
            rx.flush();
            // MACs to point at fast-path ports: once per batch, not per datagram.
            for (remote, mac) in tx.engine.take_fastdp_hints() {
                let _ = self.events.send(DpEvent::FastMac { remote, mac });
            }
            if count < self.recv.capacity() {
                break;
            }
        }
        tx.finish(&mut self.counters, &mut self.sent);
        self.engine.count_sent(std::mem::take(&mut self.sent));
        self.engine
            .count_delivered(std::mem::take(&mut self.delivered));
    }
}

/// The limit of the path of `link` if a segment of `len` bytes does not fit it.
fn over_limit(engine: &Engine, link: Option<LinkId>, len: usize) -> Option<u16> {
    let max = engine.path_mtu(link?)?;
    (!pmtu::fits(len, Some(max))).then_some(max)
}

/// One TAP read on its way to its targets: as it is, or, for a neighbour whose path it does
/// not fit, by the slow path.
struct Limited<'a> {
    /// The frame as read (a super-frame for TSO), after the vnet header.
    frame: &'a [u8],
    /// Its longest segment.
    seg_len: usize,
    /// Bytes it puts on the wire per target, and its segments (for the link traffic).
    wire: usize,
    segments: usize,
    /// Room for one segment ([`SLOT`] bytes, at least `segment_len_max`).
    scratch: &'a mut [u8],
    counters: &'a mut DriverCounters,
    /// Set (to the smallest such limit) when the read is to be answered with an ICMP
    /// "fragmentation needed"; the caller writes it once the read has gone to every target.
    frag_needed: &'a mut Option<u16>,
}

impl Limited<'_> {
    /// Send `seg` (of `self.frame`) to the neighbour `peer` in datagrams for `dst`; with
    /// `partial` ([`Engine::partial_csum_to`]), leaving the checksums partial if the read allows
    /// it and it fits the path.
    fn forward(
        &mut self,
        tx: &mut Tx<'_>,
        mut seg: Segmenter<'_>,
        peer: PeerEntry,
        dst: u16,
        partial: bool,
    ) {
        let link = tx.engine.link_to(&peer);
        let src = tx.engine.local_short_id();
        match over_limit(tx.engine, link, self.seg_len) {
            None => {
                if let Some(l) = link {
                    tx.engine.count_link_tx(l, self.wire, self.segments);
                }
                if partial {
                    seg.leave_checksums_partial();
                }
                tx.frame(seg, peer.addr, link, src, dst);
            }
            Some(max) => self.send(tx, seg, peer.addr, link, src, dst, max),
        }
    }

    /// Handle `seg` (of `self.frame`) for `to`, whose path takes frames of at most `max` bytes.
    #[allow(clippy::too_many_arguments)]
    fn send(
        &mut self,
        tx: &mut Tx<'_>,
        mut seg: Segmenter<'_>,
        to: SocketAddr,
        link: Option<LinkId>,
        src: u16,
        dst: u16,
        max: u16,
    ) {
        match pmtu::oversize(self.frame) {
            Oversize::FragNeeded => {
                *self.frag_needed = Some(self.frag_needed.map_or(max, |m| m.min(max)));
            }
            Oversize::Drop => self.counters.pmtu_dropped += 1,
            Oversize::Fragment => {
                if tx.engine.sender(link).is_err() {
                    tx.unsealable += seg.remaining() as u64;
                    return;
                }
                // Each segment (a non-DF TCP super-frame has several) is cut on its own.
                while let Some(n) = seg.next_into(self.scratch) {
                    let mut cut = match Fragmenter::new(&self.scratch[..n], max) {
                        Ok(cut) => cut,
                        Err(e) => {
                            tracing::trace!("data plane: frame not fragmented: {e}");
                            self.counters.pmtu_dropped += 1;
                            continue;
                        }
                    };
                    self.counters.pmtu_frames_fragmented += 1;
                    self.counters.pmtu_fragments_sent += tx.fragments(&mut cut, to, link, src, dst);
                }
            }
        }
    }
}

/// The send side, borrowed from the [`DataPlane`] for one pass: single datagrams go into
/// `send`, runs of equal-size datagrams into `gso` (which only ever holds datagrams that came
/// after everything in `send`, and is sent after it), so
/// datagrams leave in order. The engine seals them for the neighbour's link.
struct Tx<'a> {
    udp: &'a BatchUdp,
    send: &'a mut SendBatch,
    gso: &'a mut GsoBatch,
    engine: &'a mut Engine,
    /// Datagrams sent.
    sent: u64,
    /// Datagrams not sent because the neighbour has no keys (yet).
    unsealable: u64,
    /// Datagrams dropped because the send queue stayed full.
    queue_full: u64,
    /// Datagrams the kernel refused.
    failed: u64,
    /// Relayed frames too big for the next link, added to the `pmtu_*` counters.
    relay_pmtu: RelayPmtu,
}

/// What [`Tx::relay_oversize`] did, for the `pmtu_*` counters.
#[derive(Debug, Default)]
struct RelayPmtu {
    frag_needed_sent: u64,
    frames_fragmented: u64,
    fragments_sent: u64,
    dropped: u64,
}

impl<'a> Tx<'a> {
    fn new(
        udp: &'a BatchUdp,
        send: &'a mut SendBatch,
        gso: &'a mut GsoBatch,
        engine: &'a mut Engine,
    ) -> Self {
        Self {
            udp,
            send,
            gso,
            engine,
            sent: 0,
            unsealable: 0,
            queue_full: 0,
            failed: 0,
            relay_pmtu: RelayPmtu::default(),
        }
    }

    /// Flush everything and add up what happened.
    fn finish(mut self, counters: &mut DriverCounters, sent: &mut u64) {
        self.flush_all();
        *sent += self.sent;
        counters.udp_tx_dropped_crypto += self.unsealable;
        counters.udp_tx_dropped_queue_full += self.queue_full;
        counters.udp_tx_dropped_error += self.failed;
        let r = &self.relay_pmtu;
        counters.pmtu_frag_needed_sent += r.frag_needed_sent;
        counters.pmtu_frames_fragmented += r.frames_fragmented;
        counters.pmtu_fragments_sent += r.fragments_sent;
        counters.pmtu_dropped += r.dropped;
    }

    /// Send what `seg` yields, each segment in a VXLAN datagram from `src` to `dst`, to `to`
    /// (the neighbour `link`), flagged [`vxlan::CSUM_PARTIAL`] if the segmenter leaves the
    /// checksums partial.
    fn frame(
        &mut self,
        mut seg: Segmenter<'_>,
        to: SocketAddr,
        link: Option<LinkId>,
        src: u16,
        dst: u16,
    ) {
        if self.engine.sender(link).is_err() {
            self.unsealable += seg.remaining() as u64;
            return;
        }
        let partial = seg.is_partial();
        let header = move |buf: &mut [u8]| {
            let h = emit_vxlan_header(src, dst, buf);
            if partial {
                vxlan::set_csum_partial(buf);
            }
            h
        };
        if seg.remaining() <= 1 {
            self.run(to, link, |buf| {
                let h = header(buf);
                // The caller checked segment_len_max() + VXLAN_HLEN <= SLOT.
                h + seg.next_into(&mut buf[h..]).unwrap_or(0)
            });
            return;
        }
        self.flush_send();
        while seg.remaining() > 0 {
            let engine = &mut *self.engine;
            let pushed = self.gso.push_with(to, |buf| {
                engine.build(link, buf, |buf| {
                    let h = header(buf);
                    h + seg.next_into(&mut buf[h..]).unwrap_or(0)
                })
            });
            // Refused (another destination, or closed): send the run and offer it again.
            if !pushed || self.gso.is_closed() {
                self.flush_gso();
            }
        }
    }

    /// Relay a whole plain datagram, unchanged, to the neighbour `next`.
    fn relay(&mut self, next: PeerEntry, datagram: &[u8]) {
        let link = self.engine.link_to(&next);
        if let (Some(max), Some((vni, frame))) = (
            over_limit(self.engine, link, datagram.len().saturating_sub(VXLAN_HLEN)),
            vxlan::parse_header(datagram),
        ) {
            let (src, dst) = vxlan::split_vni(vni);
            self.relay_oversize(next, link, src, dst, frame, max);
            return;
        }
        if let Some(l) = link {
            self.engine.count_link_tx(l, datagram.len(), 1);
        }
        self.datagram(next.addr, link, datagram);
    }

    /// A frame from peer `src` to `dst` that this host relays is too big for the path to the
    /// neighbour `next` (frames of at most `max` bytes): as for the host's own frames, a DF
    /// IPv4 (or any IPv6) packet is answered with an ICMP "fragmentation needed" (or "Packet
    /// Too Big"), sent back towards `src` as if from `dst` (so `src` learns nothing wrong about
    /// where `dst`'s MACs are); other IPv4 is fragmented here; the rest is dropped and counted.
    fn relay_oversize(
        &mut self,
        next: PeerEntry,
        link: Option<LinkId>,
        src: u16,
        dst: u16,
        frame: &[u8],
        max: u16,
    ) {
        match pmtu::oversize(frame) {
            Oversize::FragNeeded => {
                let mut icmp = [0u8; FRAG_NEEDED_MAX_LEN];
                let (Some(n), Some(back)) = (
                    pmtu::frag_needed(frame, max, &mut icmp),
                    self.engine.table().next_hop(src),
                ) else {
                    self.relay_pmtu.dropped += 1;
                    return;
                };
                let back_link = self.engine.link_to(&back);
                if let Some(l) = back_link {
                    self.engine.count_link_tx(l, VXLAN_HLEN + n, 1);
                }
                self.single(back.addr, back_link, |buf| {
                    let h = emit_vxlan_header(dst, src, buf);
                    buf[h..h + n].copy_from_slice(&icmp[..n]);
                    h + n
                });
                self.relay_pmtu.frag_needed_sent += 1;
            }
            Oversize::Fragment => {
                let Ok(mut cut) = Fragmenter::new(frame, max) else {
                    self.relay_pmtu.dropped += 1;
                    return;
                };
                self.relay_pmtu.frames_fragmented += 1;
                self.relay_pmtu.fragments_sent +=
                    self.fragments(&mut cut, next.addr, link, src, dst);
            }
            Oversize::Drop => self.relay_pmtu.dropped += 1,
        }
    }

    /// Send every piece `cut` yields to `to` (the neighbour `link`), each in a VXLAN datagram
    /// from `src` to `dst`; returns how many.
    fn fragments(
        &mut self,
        cut: &mut Fragmenter<'_>,
        to: SocketAddr,
        link: Option<LinkId>,
        src: u16,
        dst: u16,
    ) -> u64 {
        let pieces = cut.remaining();
        for _ in 0..pieces {
            let mut len = 0;
            self.single(to, link, |buf| {
                let h = emit_vxlan_header(src, dst, buf);
                // A fragment is never longer than what is cut, which fits a slot.
                len = h + cut.next_into(&mut buf[h..]).unwrap_or(0);
                len
            });
            if let Some(l) = link {
                self.engine.count_link_tx(l, len, 1);
            }
        }
        pieces as u64
    }

    /// Relay a copy of a flooded frame from `source` to the broadcast child `child`.
    fn relay_copy(&mut self, child: PeerEntry, source: u16, frame: &[u8]) {
        let link = self.engine.link_to(&child);
        if let Some(max) = over_limit(self.engine, link, frame.len()) {
            self.relay_oversize(child, link, source, child.short_id, frame, max);
            return;
        }
        if let Some(l) = link {
            self.engine.count_link_tx(l, frame.len() + VXLAN_HLEN, 1);
        }
        if frame.len() + VXLAN_HLEN + MAX_OVERHEAD > SLOT {
            return;
        }
        self.single(child.addr, link, |buf| {
            let h = emit_vxlan_header(source, child.short_id, buf);
            buf[h..h + frame.len()].copy_from_slice(frame);
            h + frame.len()
        });
    }

    /// Queue a whole datagram, unchanged, for `to` (the neighbour `link`, if it is one).
    fn datagram(&mut self, to: SocketAddr, link: Option<LinkId>, datagram: &[u8]) {
        if datagram.len() + MAX_OVERHEAD > SLOT {
            return;
        }
        self.single(to, link, |buf| {
            buf[..datagram.len()].copy_from_slice(datagram);
            datagram.len()
        });
    }

    /// Queue one datagram written by `f` (a frame read from the TAP) as part of a run for
    /// `to`: consecutive datagrams of one size to one neighbour (small packets of one flow,
    /// a stream's ACKs) leave in one `UDP_SEGMENT` send, one trip through the kernel's stack
    /// instead of one per datagram. A run another datagram interrupts after one datagram goes
    /// into the `sendmmsg` batch instead ([`end_run`](Self::end_run)).
    fn run(&mut self, to: SocketAddr, link: Option<LinkId>, f: impl FnOnce(&mut [u8]) -> usize) {
        if self.engine.sender(link).is_err() {
            self.unsealable += 1;
            return;
        }
        // At most twice: a datagram the batch set aside becomes a run of its own.
        while self.gso.is_closed() || self.gso.dest().is_some_and(|d| d != to) {
            self.end_run();
        }
        let engine = &mut *self.engine;
        let pushed = self.gso.push_with(to, |buf| engine.build(link, buf, f));
        debug_assert!(
            pushed,
            "an open run for this destination takes the datagram"
        );
    }

    /// End the current run: one datagram alone joins the `sendmmsg` batch (after the
    /// datagrams already there, which it follows); a longer run is sent, after that batch.
    fn end_run(&mut self) {
        match (self.gso.segments(), self.gso.dest()) {
            (1, Some(dest)) => {
                if self.send.is_full() {
                    self.flush_send();
                }
                self.send.push(dest, self.gso.data());
                self.gso.clear();
            }
            (0, _) => self.gso.clear(),
            _ => {
                self.flush_send();
                self.flush_gso();
            }
        }
    }

    /// Queue one datagram written by `f` in the `sendmmsg` batch.
    fn single(&mut self, to: SocketAddr, link: Option<LinkId>, f: impl FnOnce(&mut [u8]) -> usize) {
        if self.engine.sender(link).is_err() {
            self.unsealable += 1;
            return;
        }
        // Everything in the run came before this datagram.
        while !self.gso.is_empty() {
            self.end_run();
        }
        if self.send.is_full() {
            self.flush_send();
        }
        let engine = &mut *self.engine;
        self.send.push_with(to, |buf| engine.build(link, buf, f));
    }

    fn flush_send(&mut self) {
        if self.send.is_empty() {
            return;
        }
        let done = self.udp.flush_batch(self.send, SEND_WAIT);
        self.count(done);
    }

    fn flush_gso(&mut self) {
        if self.gso.is_empty() {
            return;
        }
        let done = self.udp.flush_gso_batch(self.gso, SEND_WAIT);
        self.count(done);
    }

    fn count(&mut self, done: Flushed) {
        self.sent += done.sent as u64;
        self.queue_full += done.dropped_full as u64;
        self.failed += done.failed as u64;
    }

    /// Send everything: the `sendmmsg` batch first (a run in the GSO batch came after it).
    fn flush_all(&mut self) {
        self.flush_send();
        self.flush_gso();
    }
}

/// The TAP write side, borrowed from the [`DataPlane`] for one receive pass.
struct Rx<'a> {
    tap: &'a Tap,
    vnet: bool,
    coalescer: &'a mut Coalescer,
    delivered: &'a mut u64,
    counters: &'a mut DriverCounters,
}

impl Rx<'_> {
    /// Deliver one frame to the bridge, through the coalescer when frames carry a vnet header.
    /// A frame whose checksum its sender left partial is completed here when there is no vnet
    /// header, and otherwise always written with NEEDS_CSUM; one that is not TCP or UDP is
    /// dropped as malformed.
    fn deliver(&mut self, frame: &mut [u8], csum: Csum) {
        let partial = csum == Csum::Partial;
        if !self.vnet {
            let len = if partial {
                match complete_partial(frame) {
                    Ok(len) => len,
                    Err(_) => {
                        self.counters.udp_rx_dropped_malformed += 1;
                        return;
                    }
                }
            } else {
                frame.len()
            };
            self.counters.tap_tx_csum_partial += u64::from(partial);
            let frame = &frame[..len];
            self.write(|tap| tap.send(frame), 1);
            return;
        }
        let merged = match self.coalescer.push(frame, csum) {
            Push::Merged => true,
            Push::FlushFirst => {
                self.flush();
                self.coalescer.push(frame, csum) == Push::Merged
            }
            Push::NotMergeable => {
                self.flush();
                false
            }
        };
        if merged {
            self.counters.tap_tx_csum_partial += u64::from(partial);
        } else if !partial {
            self.write_plain(frame);
        } else {
            match prepare_partial(frame) {
                Ok((hdr, len)) => {
                    self.counters.tap_tx_csum_partial += 1;
                    let mut h = [0u8; VNET_HDR_LEN];
                    hdr.emit(&mut h);
                    let frame = &frame[..len];
                    self.write(|tap| tap.send_vectored(&h, frame), 1);
                }
                Err(_) => self.counters.udp_rx_dropped_malformed += 1,
            }
        }
    }

    /// Write the pending super-frame, if any.
    fn flush(&mut self) {
        let segments = u64::from(self.coalescer.pending_segments());
        let udp = self.coalescer.holds_udp_run();
        let Some(buf) = self.coalescer.take() else {
            return;
        };
        let written = self.tap.send(buf);
        if udp
            && written
                .as_ref()
                .is_err_and(|e| e.kind() == io::ErrorKind::InvalidInput)
        {
            tracing::warn!(
                "data plane: the kernel refused a UDP super-frame on the TAP (before Linux \
                 6.2?); UDP datagrams are written one by one from now on"
            );
            self.coalescer.set_udp(false);
        }
        if write_ok(written, segments, self.counters) {
            *self.delivered += segments;
            if segments > 1 {
                self.counters.tap_tx_superframes += 1;
                self.counters.tap_tx_coalesced += segments;
            }
        }
    }

    /// Write one frame as is, behind an all-zero vnet header.
    fn write_plain(&mut self, frame: &[u8]) {
        self.write(|tap| tap.send_vectored(&PLAIN_VNET_HDR, frame), 1);
    }

    fn write(&mut self, f: impl FnOnce(&Tap) -> io::Result<usize>, frames: u64) {
        if write_ok(f(self.tap), frames, self.counters) {
            *self.delivered += frames;
        }
    }
}

/// Whether a TAP write worked; a failure is logged and its frames counted as dropped.
fn write_ok(result: io::Result<usize>, frames: u64, counters: &mut DriverCounters) -> bool {
    match result {
        Ok(_) => true,
        Err(e) => {
            tracing::debug!("data plane: writing the TAP failed: {e}");
            counters.tap_tx_dropped += frames;
            false
        }
    }
}
