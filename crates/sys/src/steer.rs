//! Layer: OS. An eBPF TAP queue steering program: an express lane for sparse flows.
//!
//! # Why
//!
//! The router's data plane reads a multi-queue TAP with N bulk threads (queues `0..N`) and
//! one express thread (queue N). Without steering, a ping, a health check, a heartbeat, a DNS
//! query or a TCP handshake can land behind hundreds of kilobytes of bulk TCP data queued for
//! the same thread, and waits for all of it to be encrypted and sent. This module builds,
//! loads and attaches (`TUNSETSTEERINGEBPF`) a `SOCKET_FILTER` program that the kernel runs on
//! every frame the TAP transmits towards us; the TAP takes its return value modulo the number
//! of queues as the frame's queue. Sparse flows go to the express queue, busy flows to a bulk
//! queue of their own, and a busy flow stays on one queue (but for the one move described
//! under *Bulk queues*), so it is not reordered.
//!
//! # The classifier
//!
//! 1. **Flow hash** `h` of the frame as the TAP transmits it (starting at the Ethernet
//!    header): [`weft_wire::flow::hash`], which has the fields and the mixing; the program is
//!    built from its constants and the tests check the two agree. It is **symmetric**: both
//!    directions of a connection hash alike, so they are one flow here.
//! 2. **Length**: `skb->len` (the `__sk_buff` `len`), the whole frame including its Ethernet
//!    header on the TAP path; a TSO super-frame is one skb of up to 64 KiB.
//! 3. **Per-flow meter** in an LRU hash map of [`FLOW_ENTRIES`] entries (key `h`; value:
//!    window start, bytes in the window, demoted-until and the previous frame's time as
//!    `u64`s, then the flow's bulk queue; times are `bpf_ktime_get_ns` nanoseconds): a new
//!    flow's window starts now; a window older than
//!    [`window_ns`](SteeringParams::window_ns) restarts at zero bytes; then `len` is added.
//!    A frame shorter than [`min_charge`](SteeringParams::min_charge) counts as that many
//!    bytes, in this meter and the global one, so budgets bound the packet rate too.
//!    More than [`flow_budget`](SteeringParams::flow_budget) bytes in the window demote the
//!    flow until now + [`hold_ns`](SteeringParams::hold_ns) (at a pause, see below).
//! 4. **Global meter** (an array map of one entry: window start, bytes) of the bytes sent
//!    express by all flows together: a frame that would take it over
//!    [`global_budget`](SteeringParams::global_budget) in the current window demotes its
//!    flow instead, so a crowd of individually sparse flows cannot flood the express lane.
//! 5. A demoted flow (now < demoted-until) returns its bulk queue (below); any other frame
//!    is counted in the global meter and returns `express_queue`.
//!
//! # Changing lanes without reordering
//!
//! A flow's frames stay in order as long as it stays on one queue; it changes queue only
//! where its earlier frames cannot still be waiting on the other one.
//! - **Express to bulk**: a flow that goes over its budget while on the express queue moves
//!   only at a pause, when its previous frame is at least [`gap_ns`](SteeringParams::gap_ns)
//!   old (1 ms: the express lane, which has a thread of its own at a high priority, has
//!   forwarded it by then), and stays express until then; a flow that never pauses moves
//!   once it has gone [`grace`](SteeringParams::grace) bytes over its budget, or when the
//!   global budget is spent, and only then may its first bulk frames overtake its last
//!   express ones (once). A bulk TCP stream sends its first 64 KiB or so express (like a
//!   new flow under fq_codel) and usually moves without a pause, so it may see that one
//!   reordering, which TCP absorbs; a burst of datagrams that pauses (the common shape of
//!   small-packet traffic) moves in order.
//! - **Bulk to express** is the dangerous direction: a frame sent express while the flow's
//!   previous frames still wait in a long bulk queue would overtake all of them. So a
//!   demotion lasts [`hold_ns`](SteeringParams::hold_ns) and is extended every time the flow
//!   goes over its budget again: a flow comes back to the express queue only after it has
//!   been sparse for long enough that its bulk queue has drained.
//!
//! # Bulk queues
//!
//! A flow gets its bulk queue at its first demotion and keeps it for as long as its entry
//! lives (a flow the LRU map evicts at once, under a flood of new flows, takes
//! `h % bulk_queues`). Two things matter: that a few busy flows spread evenly over the bulk
//! threads, and that both directions of a connection pass through one thread on each host
//! (that thread writes a stream's ACKs and then reads, in the same loop, the data they let
//! the container send, without waking another thread; measured with the two crossed: a fifth
//! more CPU per byte). A hash gives the second for free (it is symmetric) but not the first:
//! 4 flows on 2 queues left one idle 1 time in 8 and put 3 on one half the time (measured:
//! 9.5-9.8 instead of 12.2-12.5 Gbit/s when all 4 shared a thread). So:
//! - **pinned**: the router's bulk thread that delivers a flow's other direction (which the
//!   sending router placed) pins the flow to its own queue in the pin map (an LRU hash of
//!   [`FLOW_ENTRIES`] entries, `h` to queue, [`FlowPins::pin`]). A flow pinned at its first
//!   demotion takes that queue, settled;
//! - **in turn**: else the next bulk queue in turn (a counter in the global map's entry),
//!   marked as taken in turn. Both hosts may have placed a connection so before either saw
//!   the other's choice (each direction's first frames go express); such a flow checks the
//!   pin map at each frame and, once there is a pin, settles on the smaller of its queue and
//!   the pin: both hosts reach the same one. A flow moved so may see one reordering, at its
//!   start, like a flow leaving the express lane without a pause.
//!
//! # Notes
//!
//! - The program reads the frame with the classic-BPF style `LD_ABS`/`LD_IND` loads at
//!   `SKF_LL_OFF + offset`, i.e. relative to the MAC header, which is where `skb->data` is on
//!   the TAP's transmit path and which is also set under `BPF_PROG_TEST_RUN` (where
//!   `skb->data` is at the network header instead), so [`TapSteering::test_run`] runs the
//!   same classifier. A load past the end of the frame (a truncated header) ends the program
//!   with return value 0: queue 0, meters untouched.
//!   The tests check both paths: the queues picked match a Rust reference of the hash
//!   computed from the frames, under `BPF_PROG_TEST_RUN` and as read from a real multi-queue
//!   TAP, and truncated headers give 0.
//! - Under `BPF_PROG_TEST_RUN`, `skb->len` does not count the 14-byte Ethernet header (on
//!   the TAP path it does), and the kernel only takes frames of 14 bytes up to about a page
//!   (3.7 KB with 4 KiB pages), with a whole IPv4 (34 bytes) or IPv6 (54 bytes) header when
//!   the ethertype says so.
//! - The meters are updated without atomics: CPUs racing on one flow may lose a few bytes.
//!   They are approximate by design.
//! - The tun driver (as of Linux 6.x) truncates the return value to 16 bits before taking it
//!   modulo the number of queues, so queue numbers must be below 65536 (a TAP has at most
//!   256 queues anyway).
//! - The parameters are immediates in the program: change them by loading a new one.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use crate::probe::{BPF_PROG_LOAD, ProgLoadAttr};
use crate::tap::Tap;
use weft_wire::flow;

/// Entries of the per-flow LRU map: flows beyond that evict the least recently seen.
pub const FLOW_ENTRIES: u32 = 4096;

/// Parameters of the steering program, baked into it as immediates when it is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SteeringParams {
    /// Number of bulk queues (at least 1): demoted flows go to `h % bulk_queues`.
    pub bulk_queues: u32,
    /// The express queue (below 65536; usually `bulk_queues`).
    pub express_queue: u32,
    /// Length of a meter window, in nanoseconds.
    pub window_ns: u64,
    /// Bytes a flow may send per window and stay express.
    pub flow_budget: u32,
    /// How long a demotion lasts after the flow last went over its budget, in nanoseconds.
    pub hold_ns: u64,
    /// Bytes all flows together may send express per window.
    pub global_budget: u32,
    /// The least a frame counts for in both meters: shorter frames count as this many
    /// bytes, so a budget is also a packet rate (with the defaults, 8 frames per window and
    /// flow, 128 in all). Without it a stream of small frames, such as the ACKs of a bulk
    /// TCP stream running at a few Gbit/s, would stay under a byte budget and load the
    /// express lane.
    pub min_charge: u32,
    /// A flow still on the express queue that goes over its budget moves to its bulk queue
    /// only at a pause: when its previous frame is at least this old (nanoseconds), so the
    /// frames it sent express have left the express lane before the first bulk one is read.
    pub gap_ns: u64,
    /// ... or, for a flow that never pauses, once it has gone this many bytes over its
    /// budget in the window (then its first bulk frames may overtake its last express ones,
    /// once).
    pub grace: u32,
}

impl SteeringParams {
    /// Default window: 10 ms.
    pub const WINDOW_NS: u64 = 10_000_000;
    /// Default per-flow budget: 4 KiB per window.
    pub const FLOW_BUDGET: u32 = 4096;
    /// Default hold: 50 ms.
    pub const HOLD_NS: u64 = 50_000_000;
    /// Default global budget: 64 KiB per window.
    pub const GLOBAL_BUDGET: u32 = 65_536;
    /// Default least charge of a frame: 512 bytes.
    pub const MIN_CHARGE: u32 = 512;
    /// Default pause before a flow leaves the express queue: 1 ms.
    pub const GAP_NS: u64 = 1_000_000;
    /// Default bytes a flow may go over its budget while waiting for a pause: 60 KiB.
    pub const GRACE: u32 = 61_440;

    /// `bulk_queues` bulk queues, the express queue right after them (`express_queue =
    /// bulk_queues`) and the default meters.
    pub fn new(bulk_queues: u32) -> Self {
        Self {
            bulk_queues,
            express_queue: bulk_queues,
            window_ns: Self::WINDOW_NS,
            flow_budget: Self::FLOW_BUDGET,
            hold_ns: Self::HOLD_NS,
            global_budget: Self::GLOBAL_BUDGET,
            min_charge: Self::MIN_CHARGE,
            gap_ns: Self::GAP_NS,
            grace: Self::GRACE,
        }
    }

    /// Rejects parameters the program cannot implement.
    fn check(&self) -> io::Result<()> {
        let invalid = |msg: &str| Err(io::Error::new(io::ErrorKind::InvalidInput, msg.to_owned()));
        if self.bulk_queues == 0 || self.bulk_queues > 1 << 16 {
            return invalid("steering: bulk_queues must be 1..=65536");
        }
        if self.express_queue > u32::from(u16::MAX) {
            return invalid("steering: express_queue must be below 65536");
        }
        Ok(())
    }
}

/// A loaded steering program and its three maps. Dropping it closes our descriptors; a TAP
/// it was attached to keeps the program (and with it the maps) until the device goes away or
/// another program is attached.
#[derive(Debug)]
pub struct TapSteering {
    prog: OwnedFd,
    /// Our references to the meters' maps; the loaded program holds its own, so these only
    /// keep the maps ours for as long as the program is.
    _flows: OwnedFd,
    _global: OwnedFd,
    pins: FlowPins,
    insn_cnt: usize,
}

/// The program's maps, as the fds its `LD_IMM64` instructions name.
#[derive(Clone, Copy)]
struct Maps {
    flows: RawFd,
    global: RawFd,
    pins: RawFd,
}

/// The steering program's pin map, shared by the data-plane threads: a receiving thread pins
/// the flows whose frames it writes to the TAP to its own queue, so that the other direction
/// of each flow, once bulk, is read by the same thread (see the module doc).
#[derive(Debug, Clone)]
pub struct FlowPins {
    map: Arc<OwnedFd>,
    bulk_queues: u32,
}

impl FlowPins {
    /// Pins the flow of hash `hash` ([`flow::hash`]) to bulk queue `queue` (below the number
    /// of bulk queues): the program gives it that queue if it is not bulk yet, or the smaller
    /// of its own and this one if it took a queue in turn (see the module doc). One
    /// `bpf(BPF_MAP_UPDATE_ELEM)`; the map keeps the [`FLOW_ENTRIES`] most recent pins.
    pub fn pin(&self, hash: u32, queue: u32) -> io::Result<()> {
        if queue >= self.bulk_queues {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("no bulk queue {queue} (there are {})", self.bulk_queues),
            ));
        }
        let mut attr = MapElemAttr {
            map_fd: fd_u32(self.map.as_raw_fd()),
            _pad: 0,
            key: std::ptr::from_ref(&hash) as u64,
            value: std::ptr::from_ref(&queue) as u64,
            flags: BPF_ANY,
        };
        // SAFETY: `attr` is the `BPF_MAP_UPDATE_ELEM` layout; `key` and `value` point to the
        // 4-byte `hash` and `queue` (the map's key and value sizes), borrowed for the whole
        // call and only read by the kernel.
        unsafe { bpf(BPF_MAP_UPDATE_ELEM, &mut attr) }
            .map(drop)
            .map_err(|e| io::Error::new(e.kind(), format!("BPF_MAP_UPDATE_ELEM: {e}")))
    }
}

impl TapSteering {
    /// Creates the maps and loads the program for `p` (needs `CAP_BPF` or
    /// `CAP_SYS_ADMIN`). A program the verifier rejects gives an error with the verifier's
    /// log (from a second load with a log buffer).
    pub fn load(p: &SteeringParams) -> io::Result<Self> {
        p.check()?;
        let flows = create_map(
            BPF_MAP_TYPE_LRU_HASH,
            4,
            FLOW_VALUE_SIZE,
            FLOW_ENTRIES,
            b"weft_steer_flow",
        )?;
        let global = create_map(
            BPF_MAP_TYPE_ARRAY,
            4,
            GLOBAL_VALUE_SIZE,
            1,
            b"weft_steer_glob",
        )?;
        let pins = create_map(
            BPF_MAP_TYPE_LRU_HASH,
            4,
            4,
            FLOW_ENTRIES,
            b"weft_steer_pins",
        )?;
        let maps = Maps {
            flows: flows.as_raw_fd(),
            global: global.as_raw_fd(),
            pins: pins.as_raw_fd(),
        };
        let insns = program(p, maps)?;
        let prog = load_prog(&insns)?;
        Ok(Self {
            prog,
            _flows: flows,
            _global: global,
            pins: FlowPins {
                map: Arc::new(pins),
                bulk_queues: p.bulk_queues,
            },
            insn_cnt: insns.len(),
        })
    }

    /// Attaches the program to `tap`'s device (`TUNSETSTEERINGEBPF`, for all its queues).
    pub fn attach(&self, tap: &Tap) -> io::Result<()> {
        tap.set_steering_prog(Some(self.prog.as_fd()))
    }

    /// Runs the program once on `frame` (an Ethernet frame) with `BPF_PROG_TEST_RUN` and
    /// returns its return value, the queue it picks before the TAP's modulo. The meters (the
    /// same ones the attached program uses) see `frame.len() - 14` bytes: the kernel's
    /// `skb->len` there excludes the Ethernet header. The kernel refuses (`EINVAL`) frames
    /// longer than about a page and IPv4/IPv6 frames without a whole IP header; shorter
    /// than 14 bytes gives `InvalidInput`. For tests and diagnostics.
    pub fn test_run(&self, frame: &[u8]) -> io::Result<u32> {
        if frame.len() < ETH_HLEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "BPF_PROG_TEST_RUN needs at least an Ethernet header (14 bytes)",
            ));
        }
        let mut attr = TestRunAttr {
            prog_fd: fd_u32(self.prog.as_raw_fd()),
            data_size_in: u32::try_from(frame.len())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too long"))?,
            data_in: frame.as_ptr() as u64,
            repeat: 1,
            ..TestRunAttr::default()
        };
        // SAFETY: `attr` is the `BPF_PROG_TEST_RUN` layout; `data_in` points to `frame`
        // (`data_size_in` bytes), borrowed for the whole call and only read by the kernel;
        // the output and context pointers are null with size 0. The kernel writes `retval`
        // and `duration` into `attr`.
        unsafe { bpf(BPF_PROG_TEST_RUN, &mut attr) }?;
        Ok(attr.retval)
    }

    /// The program's pin map.
    pub fn pins(&self) -> FlowPins {
        self.pins.clone()
    }

    /// Number of eBPF instructions in the program (an `LD_IMM64` counts as two).
    pub fn insn_count(&self) -> usize {
        self.insn_cnt
    }
}

impl AsFd for TapSteering {
    /// The program's fd.
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.prog.as_fd()
    }
}

// ---- bpf(2) ----

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
/// `BPF_MAP_UPDATE_ELEM` flag: create or replace.
const BPF_ANY: u64 = 0;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_LRU_HASH: u32 = 9;
const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;

/// Value of the per-flow map: window start (ns), bytes in the window, demoted until (ns), the
/// previous frame (ns), the bulk queue (`u32`, [`NO_QUEUE`] until the first demotion) and 4
/// bytes of padding.
const FLOW_VALUE_SIZE: u32 = 40;
/// Where the flow's bulk queue is in its map value.
const FLOW_QUEUE_OFFSET: i16 = 32;
/// A flow without a bulk queue yet.
const NO_QUEUE: u32 = u32::MAX;
/// The bit of a flow's bulk queue that says it was taken in turn, not settled by a pin.
const TURN: u32 = 1 << 31;
/// Value of the global map: window start (ns), bytes in the window, the number of bulk
/// queues handed out in turn.
const GLOBAL_VALUE_SIZE: u32 = 24;
const ETH_HLEN: usize = 14;

/// The `BPF_MAP_CREATE` part of `union bpf_attr`, up to `map_name`.
#[repr(C)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

/// The `BPF_MAP_*_ELEM` part of `union bpf_attr`.
#[repr(C)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// The `BPF_PROG_TEST_RUN` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// An fd as the `u32` the `bpf(2)` attributes carry (fds are never negative here).
fn fd_u32(fd: RawFd) -> u32 {
    u32::try_from(fd).unwrap_or(u32::MAX)
}

/// `bpf(cmd, attr, size_of::<T>())`; returns the non-negative result.
///
/// # Safety
///
/// `T` must be the `#[repr(C)]` layout of `cmd`'s part of `union bpf_attr` (or a prefix of
/// it), and every pointer inside `attr` must be null or point to memory that is valid, for
/// the whole call, for the reads and writes `cmd` makes through it (of the sizes the
/// attribute states).
unsafe fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, exclusive `T` of the size passed, which the kernel reads and
    // may write back; the pointers inside it are valid as the caller promised.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, &raw mut *attr, size_of::<T>()) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Takes ownership of the fd a successful `bpf(2)` call returned.
fn owned_fd(r: libc::c_long) -> io::Result<OwnedFd> {
    let fd = RawFd::try_from(r)
        .map_err(|_| io::Error::other(format!("bpf(2) returned {r}, not an fd")))?;
    // SAFETY: a successful BPF_MAP_CREATE/BPF_PROG_LOAD returns a new fd (opened with
    // O_CLOEXEC) that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn create_map(
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    name: &[u8; 15],
) -> io::Result<OwnedFd> {
    let mut map_name = [0u8; 16];
    map_name[..15].copy_from_slice(name);
    let mut attr = MapCreateAttr {
        map_type,
        key_size,
        value_size,
        max_entries,
        map_flags: 0,
        inner_map_fd: 0,
        numa_node: 0,
        map_name,
    };
    // SAFETY: `attr` is the `BPF_MAP_CREATE` layout and holds no pointers.
    unsafe { bpf(BPF_MAP_CREATE, &mut attr) }
        .and_then(owned_fd)
        .map_err(|e| io::Error::new(e.kind(), format!("BPF_MAP_CREATE: {e}")))
}

/// Loads `insns` as a socket filter; on failure, loads again with a log buffer and puts the
/// verifier's log (its last 8 KiB) into the error.
fn load_prog(insns: &[Insn]) -> io::Result<OwnedFd> {
    let license = c"GPL";
    let mut prog_name = [0u8; 16];
    prog_name[..10].copy_from_slice(b"weft_steer");
    let attr = |log: &mut [u8]| ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_SOCKET_FILTER,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: u32::from(!log.is_empty()),
        log_size: log.len() as u32,
        log_buf: if log.is_empty() {
            0
        } else {
            log.as_mut_ptr() as u64
        },
        kern_version: 0,
        prog_flags: 0,
        prog_name,
        prog_ifindex: 0,
        expected_attach_type: 0,
    };
    let mut a = attr(&mut []);
    // SAFETY: `a` is the `BPF_PROG_LOAD` layout; `insns` (`insn_cnt` instructions) and the
    // NUL-terminated license outlive the call and are only read; no log buffer.
    let e = match unsafe { bpf(BPF_PROG_LOAD, &mut a) } {
        Ok(r) => return owned_fd(r),
        Err(e) => e,
    };
    let mut log = vec![0u8; 1 << 20];
    let mut a = attr(&mut log);
    // SAFETY: as above, plus the log buffer: `log` lives for the call and the kernel writes
    // at most `log_size` (its length) bytes into it.
    if let Ok(r) = unsafe { bpf(BPF_PROG_LOAD, &mut a) } {
        // Loaded after all (the first failure was transient): keep it.
        return owned_fd(r);
    }
    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
    let text = String::from_utf8_lossy(&log[end.saturating_sub(8192)..end]);
    let msg = if text.trim().is_empty() {
        format!("BPF_PROG_LOAD of the TAP steering program: {e}")
    } else {
        format!("BPF_PROG_LOAD of the TAP steering program: {e}; verifier log:\n{text}")
    };
    Err(io::Error::new(e.kind(), msg))
}

// ---- a tiny eBPF assembler ----

/// `struct bpf_insn`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct Insn {
    code: u8,
    /// `dst_reg:4, src_reg:4` bitfields.
    regs: u8,
    off: i16,
    imm: i32,
}

impl Insn {
    fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Self {
        #[cfg(target_endian = "little")]
        let regs = dst | src << 4;
        #[cfg(target_endian = "big")]
        let regs = dst << 4 | src;
        Self {
            code,
            regs,
            off,
            imm,
        }
    }
}

// Instruction classes, sizes, modes, operations.
const BPF_LD: u8 = 0x00;
const BPF_LDX: u8 = 0x01;
const BPF_STX: u8 = 0x03;
const BPF_ALU: u8 = 0x04;
const BPF_JMP: u8 = 0x05;
const BPF_ALU64: u8 = 0x07;
const BPF_W: u8 = 0x00;
const BPF_H: u8 = 0x08;
const BPF_B: u8 = 0x10;
const BPF_DW: u8 = 0x18;
const BPF_IMM: u8 = 0x00;
const BPF_ABS: u8 = 0x20;
const BPF_IND: u8 = 0x40;
const BPF_MEM: u8 = 0x60;
const BPF_K: u8 = 0x00;
const BPF_X: u8 = 0x08;
const ADD: u8 = 0x00;
const SUB: u8 = 0x10;
const MUL: u8 = 0x20;
const AND: u8 = 0x50;
const LSH: u8 = 0x60;
const RSH: u8 = 0x70;
const OR: u8 = 0x40;
const MOD: u8 = 0x90;
const XOR: u8 = 0xa0;
const MOV: u8 = 0xb0;
const JA: u8 = 0x00;
const JEQ: u8 = 0x10;
const JGT: u8 = 0x20;
const JGE: u8 = 0x30;
const JNE: u8 = 0x50;
const CALL: u8 = 0x80;
const EXIT: u8 = 0x90;
const JLT: u8 = 0xa0;
const JLE: u8 = 0xb0;
/// `LD_IMM64` source register: the immediate is a map fd.
const BPF_PSEUDO_MAP_FD: u8 = 1;
/// Helper ids.
const BPF_FUNC_MAP_LOOKUP_ELEM: i32 = 1;
const BPF_FUNC_MAP_UPDATE_ELEM: i32 = 2;
const BPF_FUNC_KTIME_GET_NS: i32 = 5;
/// `bpf_map_update_elem` flag: only create.
const BPF_NOEXIST: i32 = 1;
/// Classic-BPF load offset base: relative to the MAC header.
const SKF_LL_OFF: i32 = -0x200000;

/// Where the program keeps the flow hash (the key of the flow and pin maps) on its stack.
const FLOW_KEY: i16 = -4;
/// Where it keeps the global map's key (0).
const GLOBAL_KEY: i16 = -8;
/// Where it builds a new flow's map value: the [`FLOW_VALUE_SIZE`] bytes below the global key.
const NEW_FLOW: i16 = GLOBAL_KEY - FLOW_VALUE_SIZE as i16;

const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R5: u8 = 5;
const R6: u8 = 6;
const R7: u8 = 7;
const R8: u8 = 8;
const R9: u8 = 9;
const FP: u8 = 10;

/// A jump target.
#[derive(Clone, Copy)]
struct Label(usize);

/// Emits instructions and resolves forward and backward jumps to labels.
#[derive(Default)]
struct Asm {
    insns: Vec<Insn>,
    labels: Vec<Option<usize>>,
    /// (index of a jump instruction, its target).
    fixups: Vec<(usize, Label)>,
}

impl Asm {
    fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    fn bind(&mut self, l: Label) {
        self.labels[l.0] = Some(self.insns.len());
    }

    fn emit(&mut self, code: u8, dst: u8, src: u8, off: i16, imm: i32) {
        self.insns.push(Insn::new(code, dst, src, off, imm));
    }

    /// `dst op= imm` on 64 bits.
    fn alu64_imm(&mut self, op: u8, dst: u8, imm: i32) {
        self.emit(BPF_ALU64 | op | BPF_K, dst, 0, 0, imm);
    }

    /// `dst op= src` on 64 bits.
    fn alu64_reg(&mut self, op: u8, dst: u8, src: u8) {
        self.emit(BPF_ALU64 | op | BPF_X, dst, src, 0, 0);
    }

    /// `dst op= imm` on 32 bits (the upper half of `dst` is cleared).
    fn alu32_imm(&mut self, op: u8, dst: u8, imm: u32) {
        // The immediate's bits are what a 32-bit operation uses.
        self.emit(BPF_ALU | op | BPF_K, dst, 0, 0, imm as i32);
    }

    /// `dst op= src` on 32 bits.
    fn alu32_reg(&mut self, op: u8, dst: u8, src: u8) {
        self.emit(BPF_ALU | op | BPF_X, dst, src, 0, 0);
    }

    /// `dst = imm` (64 bits, two instruction slots).
    fn ld_imm64(&mut self, dst: u8, imm: u64) {
        self.emit(BPF_LD | BPF_DW | BPF_IMM, dst, 0, 0, imm as u32 as i32);
        self.emit(0, 0, 0, 0, (imm >> 32) as u32 as i32);
    }

    /// `dst = map` (a map fd, resolved by the kernel to the map).
    fn ld_map(&mut self, dst: u8, fd: RawFd) {
        self.emit(BPF_LD | BPF_DW | BPF_IMM, dst, BPF_PSEUDO_MAP_FD, 0, fd);
        self.emit(0, 0, 0, 0, 0);
    }

    /// `dst = *(size *)(src + off)`.
    fn ldx(&mut self, size: u8, dst: u8, src: u8, off: i16) {
        self.emit(BPF_LDX | size | BPF_MEM, dst, src, off, 0);
    }

    /// `*(size *)(dst + off) = src`.
    fn stx(&mut self, size: u8, dst: u8, off: i16, src: u8) {
        self.emit(BPF_STX | size | BPF_MEM, dst, src, off, 0);
    }

    /// `r0 = frame[off]` (big-endian, `size` bytes) relative to the MAC header; `r6` must
    /// hold the context; clobbers `r1`-`r5`; past the end the program returns 0.
    fn ld_frame(&mut self, size: u8, off: i32) {
        self.emit(BPF_LD | size | BPF_ABS, 0, 0, 0, SKF_LL_OFF + off);
    }

    /// Like [`ld_frame`](Self::ld_frame) at `src + off`.
    fn ld_frame_ind(&mut self, size: u8, src: u8, off: i32) {
        self.emit(BPF_LD | size | BPF_IND, 0, src, 0, SKF_LL_OFF + off);
    }

    /// `if dst op imm goto l` (64-bit comparison, imm sign-extended).
    fn jmp_imm(&mut self, op: u8, dst: u8, imm: i32, l: Label) {
        self.fixups.push((self.insns.len(), l));
        self.emit(BPF_JMP | op | BPF_K, dst, 0, 0, imm);
    }

    /// `if dst op src goto l` (64-bit comparison).
    fn jmp_reg(&mut self, op: u8, dst: u8, src: u8, l: Label) {
        self.fixups.push((self.insns.len(), l));
        self.emit(BPF_JMP | op | BPF_X, dst, src, 0, 0);
    }

    fn ja(&mut self, l: Label) {
        self.jmp_imm(JA, 0, 0, l);
    }

    fn call(&mut self, helper: i32) {
        self.emit(BPF_JMP | CALL, 0, 0, 0, helper);
    }

    fn exit(&mut self) {
        self.emit(BPF_JMP | EXIT, 0, 0, 0, 0);
    }

    /// Mixes the 32-bit word in `r0` into the hash in `r7` (clobbers `r0`):
    /// `h = (h ^ w) * 0x9e3779b1; h ^= h >> 15`.
    fn mix(&mut self) {
        self.alu32_reg(XOR, R7, R0);
        self.alu32_imm(MUL, R7, flow::MUL);
        self.alu32_reg(MOV, R0, R7);
        self.alu32_imm(RSH, R0, 15);
        self.alu32_reg(XOR, R7, R0);
    }

    /// Mixes the unordered pair of 32-bit words in `r9` and `r0` into the hash in `r7`, the
    /// same whichever is which (clobbers `r0` and `r8`): their XOR, then their sum.
    fn mix_pair(&mut self) {
        self.alu32_reg(MOV, R8, R0);
        self.alu32_reg(XOR, R0, R9);
        self.mix();
        self.alu32_reg(MOV, R0, R8);
        self.alu32_reg(ADD, R0, R9);
        self.mix();
    }

    /// Mixes the two 16-bit ports in `r0` (source high, destination low) into the hash in
    /// `r7` as an unordered pair (clobbers `r0`, `r8`, `r9`).
    fn mix_ports(&mut self) {
        self.alu32_reg(MOV, R9, R0);
        self.alu32_imm(RSH, R9, 16);
        self.alu32_imm(AND, R0, 0xffff);
        self.mix_pair();
    }

    /// One meter's window (the map value `{window start, bytes}` at `val`, with `r6` = now
    /// and `r8` = the frame's charge): a window older than `window_ns` restarts now at zero
    /// bytes; then `r1` = the window's bytes plus the charge (not stored). Clobbers `r1`-`r3`.
    fn window_add(&mut self, val: u8, window_ns: u64) {
        let same_window = self.label();
        self.ldx(BPF_DW, R1, val, 0); // window start
        self.alu64_reg(MOV, R2, R6);
        self.alu64_reg(SUB, R2, R1);
        self.ld_imm64(R3, window_ns);
        self.jmp_reg(JLT, R2, R3, same_window);
        self.stx(BPF_DW, val, 0, R6);
        self.alu64_imm(MOV, R1, 0);
        self.stx(BPF_DW, val, 8, R1);
        self.bind(same_window);
        self.ldx(BPF_DW, R1, val, 8);
        self.alu64_reg(ADD, R1, R8);
    }

    /// `r0` = the entry of `map` whose key is on the stack at `FP + key` (or 0).
    fn lookup(&mut self, map: RawFd, key: i16) {
        self.ld_map(R1, map);
        self.alu64_reg(MOV, R2, FP);
        self.alu64_imm(ADD, R2, i32::from(key));
        self.call(BPF_FUNC_MAP_LOOKUP_ELEM);
    }

    /// `r0` = the global map's one entry (key 0, stored at `FP + GLOBAL_KEY`).
    fn lookup_global(&mut self, global: RawFd) {
        self.alu64_imm(MOV, R1, 0);
        self.stx(BPF_W, FP, GLOBAL_KEY, R1);
        self.lookup(global, GLOBAL_KEY);
    }

    /// murmur3's `fmix32` on `r7` (clobbers `r0`).
    fn finish_hash(&mut self) {
        for (shift, mul) in [
            (16, Some(flow::FMIX_1)),
            (13, Some(flow::FMIX_2)),
            (16, None),
        ] {
            self.alu32_reg(MOV, R0, R7);
            self.alu32_imm(RSH, R0, shift);
            self.alu32_reg(XOR, R7, R0);
            if let Some(m) = mul {
                self.alu32_imm(MUL, R7, m);
            }
        }
    }

    fn finish(mut self) -> io::Result<Vec<Insn>> {
        for (at, l) in std::mem::take(&mut self.fixups) {
            let target = self.labels[l.0].ok_or_else(|| io::Error::other("unbound label"))?;
            let off = target as i64 - at as i64 - 1;
            self.insns[at].off =
                i16::try_from(off).map_err(|_| io::Error::other("jump too far"))?;
        }
        Ok(self.insns)
    }
}

/// The steering program for `p`, with the three maps' fds.
///
/// Registers: `r6` the context (needed by the frame loads) until the length is read, then
/// `now`; `r7` the flow hash; `r8` a scratch for the header walk, then `len`, then the queue
/// a flow took in turn; `r9` the flow's map value. Stack: [`FLOW_KEY`] the flow hash,
/// [`GLOBAL_KEY`] the global key, [`NEW_FLOW`] a new flow's value (up to the global key).
fn program(p: &SteeringParams, maps: Maps) -> io::Result<Vec<Insn>> {
    let Maps {
        flows,
        global,
        pins,
    } = maps;
    let mut a = Asm::default();
    let hashed = a.label();
    let ipv4 = a.label();
    let ipv4_ports = a.label();
    let ipv6 = a.label();
    let ipv6_ports = a.label();
    let have_flow = a.label();
    let within_budget = a.label();
    let demote = a.label();
    let global_over = a.label();
    let express = a.label();
    let bulk = a.label();
    let bulk_hash = a.label();
    let first = a.label();
    let in_turn = a.label();
    let settle = a.label();
    let unpinned = a.label();
    let done = a.label();

    // ---- 1. the flow hash, into r7 ----
    a.alu64_reg(MOV, R6, R1);
    a.ld_frame(BPF_H, 12); // ethertype
    a.alu64_reg(MOV, R8, R0);
    a.alu32_imm(MOV, R7, flow::SEED);
    a.mix();
    a.jmp_imm(JEQ, R8, 0x0800, ipv4);
    a.jmp_imm(JEQ, R8, 0x86dd, ipv6);
    a.ja(hashed);

    a.bind(ipv4);
    a.ld_frame(BPF_W, 14 + 12); // source
    a.alu32_reg(MOV, R9, R0);
    a.ld_frame(BPF_W, 14 + 16); // destination
    a.mix_pair();
    a.ld_frame(BPF_B, 14 + 9); // protocol
    a.alu64_reg(MOV, R8, R0);
    a.mix();
    a.jmp_imm(JEQ, R8, 6, ipv4_ports);
    a.jmp_imm(JNE, R8, 17, hashed);
    a.bind(ipv4_ports);
    a.ld_frame(BPF_H, 14 + 6); // flags and fragment offset
    a.alu32_imm(AND, R0, 0x3fff); // MF and the offset
    a.jmp_imm(JNE, R0, 0, hashed);
    a.ld_frame(BPF_B, 14); // version and IHL
    a.alu32_imm(AND, R0, 0xf);
    a.alu32_imm(LSH, R0, 2);
    a.alu64_reg(MOV, R8, R0);
    a.ld_frame_ind(BPF_W, R8, 14); // both ports
    a.mix_ports();
    a.ja(hashed);

    a.bind(ipv6);
    for i in 0..4 {
        a.ld_frame(BPF_W, 14 + 8 + 4 * i); // source
        a.alu32_reg(MOV, R9, R0);
        a.ld_frame(BPF_W, 14 + 24 + 4 * i); // destination
        a.mix_pair();
    }
    a.ld_frame(BPF_B, 14 + 6); // next header
    a.alu64_reg(MOV, R8, R0);
    a.mix();
    a.jmp_imm(JEQ, R8, 6, ipv6_ports);
    a.jmp_imm(JNE, R8, 17, hashed);
    a.bind(ipv6_ports);
    a.ld_frame(BPF_W, 14 + 40);
    a.mix_ports();

    a.bind(hashed);
    a.finish_hash();

    // ---- 2. the length, the time, the flow's meter ----
    a.ldx(BPF_W, R8, R6, 0); // __sk_buff.len
    // A frame counts for at least min_charge bytes.
    let charged = a.label();
    a.ld_imm64(R1, u64::from(p.min_charge));
    a.jmp_reg(JGE, R8, R1, charged);
    a.alu64_reg(MOV, R8, R1);
    a.bind(charged);
    a.stx(BPF_W, FP, FLOW_KEY, R7);
    a.call(BPF_FUNC_KTIME_GET_NS);
    a.alu64_reg(MOV, R6, R0);
    a.lookup(flows, FLOW_KEY);
    a.jmp_imm(JNE, R0, 0, have_flow);
    // A new flow: insert {window start now, 0 bytes, not demoted, no previous frame, no bulk
    // queue yet} and look it up again (the common path below then counts this frame).
    a.stx(BPF_DW, FP, NEW_FLOW, R6);
    a.alu64_imm(MOV, R1, 0);
    for at in [8, 16, 24] {
        a.stx(BPF_DW, FP, NEW_FLOW + at, R1);
    }
    a.alu64_imm(MOV, R1, -1); // all ones: the queue (its low half) is NO_QUEUE
    a.stx(BPF_DW, FP, NEW_FLOW + FLOW_QUEUE_OFFSET, R1);
    a.ld_map(R1, flows);
    a.alu64_reg(MOV, R2, FP);
    a.alu64_imm(ADD, R2, i32::from(FLOW_KEY));
    a.alu64_reg(MOV, R3, FP);
    a.alu64_imm(ADD, R3, i32::from(NEW_FLOW));
    a.alu64_imm(MOV, R4, BPF_NOEXIST);
    a.call(BPF_FUNC_MAP_UPDATE_ELEM);
    a.lookup(flows, FLOW_KEY);
    a.jmp_imm(JEQ, R0, 0, bulk_hash); // evicted already: treat it as busy

    a.bind(have_flow);
    a.alu64_reg(MOV, R9, R0);
    a.window_add(R9, p.window_ns);
    a.stx(BPF_DW, R9, 8, R1);
    a.ldx(BPF_DW, R4, R9, 24); // the flow's previous frame
    a.stx(BPF_DW, R9, 24, R6);
    a.ld_imm64(R2, u64::from(p.flow_budget));
    a.jmp_reg(JLE, R1, R2, within_budget);
    // Over its budget. Already on its bulk queue: the demotion is extended.
    a.ldx(BPF_DW, R3, R9, 16);
    a.jmp_reg(JLT, R6, R3, demote);
    // Still express: it leaves at a pause, or once past the grace.
    a.alu64_reg(MOV, R5, R6);
    a.alu64_reg(SUB, R5, R4);
    a.ld_imm64(R3, p.gap_ns);
    a.jmp_reg(JGE, R5, R3, demote);
    a.ld_imm64(R2, u64::from(p.flow_budget) + u64::from(p.grace));
    a.jmp_reg(JLE, R1, R2, within_budget);
    a.bind(demote);
    a.ld_imm64(R1, p.hold_ns);
    a.alu64_reg(ADD, R1, R6);
    a.stx(BPF_DW, R9, 16, R1);
    a.bind(within_budget);
    a.ldx(BPF_DW, R1, R9, 16); // demoted until
    a.jmp_reg(JLT, R6, R1, bulk);

    // ---- 3. the global meter ----
    a.lookup_global(global);
    a.jmp_imm(JEQ, R0, 0, express); // cannot happen (an array's entry always exists)
    a.window_add(R0, p.window_ns);
    a.ld_imm64(R2, u64::from(p.global_budget));
    a.jmp_reg(JGT, R1, R2, global_over);
    a.stx(BPF_DW, R0, 8, R1);

    a.bind(express);
    a.alu32_imm(MOV, R0, p.express_queue);
    a.exit();

    a.bind(global_over);
    a.ld_imm64(R1, p.hold_ns);
    a.alu64_reg(ADD, R1, R6);
    a.stx(BPF_DW, R9, 16, R1);

    // ---- 4. the flow's bulk queue (r9 = its entry; see "Bulk queues" above) ----
    a.bind(bulk);
    a.ldx(BPF_W, R0, R9, FLOW_QUEUE_OFFSET);
    a.ld_imm64(R1, u64::from(NO_QUEUE));
    a.jmp_reg(JEQ, R0, R1, first);
    a.alu32_reg(MOV, R1, R0);
    a.alu32_imm(RSH, R1, 31);
    a.jmp_imm(JEQ, R1, 0, done); // settled
    // Taken in turn: settle on the smaller of it and the pin, once there is one.
    a.alu32_reg(MOV, R8, R0);
    a.alu32_imm(AND, R8, !TURN);
    a.lookup(pins, FLOW_KEY);
    a.jmp_imm(JEQ, R0, 0, unpinned);
    a.ldx(BPF_W, R0, R0, 0);
    a.alu32_imm(MOD, R0, p.bulk_queues);
    a.jmp_reg(JLT, R0, R8, settle);
    a.alu32_reg(MOV, R0, R8);
    a.bind(settle);
    a.stx(BPF_W, R9, FLOW_QUEUE_OFFSET, R0);
    a.ja(done);
    a.bind(unpinned);
    a.alu32_reg(MOV, R0, R8);
    a.ja(done);
    // A first demotion: the pinned queue, settled ...
    a.bind(first);
    a.lookup(pins, FLOW_KEY);
    a.jmp_imm(JEQ, R0, 0, in_turn);
    a.ldx(BPF_W, R0, R0, 0);
    a.alu32_imm(MOD, R0, p.bulk_queues);
    a.stx(BPF_W, R9, FLOW_QUEUE_OFFSET, R0);
    a.ja(done);
    // ... or the next one in turn (the global entry's counter; racing CPUs may both take
    // one), marked as such.
    a.bind(in_turn);
    a.lookup_global(global);
    a.jmp_imm(JEQ, R0, 0, bulk_hash); // cannot happen (an array's entry always exists)
    a.ldx(BPF_DW, R1, R0, 16);
    a.alu64_reg(MOV, R2, R1);
    a.alu64_imm(ADD, R2, 1);
    a.stx(BPF_DW, R0, 16, R2);
    a.alu32_reg(MOV, R0, R1);
    a.alu32_imm(MOD, R0, p.bulk_queues);
    a.alu32_reg(MOV, R1, R0);
    a.alu32_imm(OR, R1, TURN);
    a.stx(BPF_W, R9, FLOW_QUEUE_OFFSET, R1);
    a.bind(done);
    a.exit();

    // Without an entry (the LRU map evicted it at once): by the hash.
    a.bind(bulk_hash);
    a.alu32_reg(MOV, R0, R7);
    a.alu32_imm(MOD, R0, p.bulk_queues);
    a.exit();

    a.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr, UdpSocket};
    use std::time::{Duration, Instant};

    fn need_root() {
        if !nix::unistd::geteuid().is_root() {
            panic!("needs root (eBPF and TAP devices; CI runs the tests as root or through sudo)");
        }
    }

    /// Params that make the meters deterministic within a test: 10 s windows and holds.
    fn slow(bulk_queues: u32) -> SteeringParams {
        SteeringParams {
            window_ns: 10_000_000_000,
            hold_ns: 10_000_000_000,
            min_charge: 0,
            grace: 0,
            ..SteeringParams::new(bulk_queues)
        }
    }

    fn load(p: &SteeringParams) -> TapSteering {
        need_root();
        TapSteering::load(p).unwrap_or_else(|e| panic!("{e}"))
    }

    // ---- frames ----

    const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];

    fn eth(ethertype: u16) -> Vec<u8> {
        let mut f = Vec::with_capacity(64);
        f.extend_from_slice(&MAC_B);
        f.extend_from_slice(&MAC_A);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f
    }

    /// An IPv4 frame of `len` bytes in all (at least 38) with `proto`, ports and the
    /// flags/fragment-offset field.
    fn v4(
        len: usize,
        proto: u8,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        ports: (u16, u16),
        frag: u16,
    ) -> Vec<u8> {
        let mut f = eth(0x0800);
        let total = (len - 14) as u16;
        f.extend_from_slice(&[0x45, 0]);
        f.extend_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&frag.to_be_bytes());
        f.extend_from_slice(&[64, proto, 0, 0]);
        f.extend_from_slice(&src.octets());
        f.extend_from_slice(&dst.octets());
        f.extend_from_slice(&ports.0.to_be_bytes());
        f.extend_from_slice(&ports.1.to_be_bytes());
        f.resize(len, 0xab);
        f
    }

    fn tcp4(len: usize, sport: u16) -> Vec<u8> {
        v4(
            len,
            6,
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
            (sport, 80),
            0,
        )
    }

    fn tcp6(len: usize, sport: u16) -> Vec<u8> {
        let mut f = eth(0x86dd);
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&((len - 54) as u16).to_be_bytes());
        f.extend_from_slice(&[6, 64]);
        f.extend_from_slice(&"fd00::1".parse::<Ipv6Addr>().unwrap().octets());
        f.extend_from_slice(&"fd00::2".parse::<Ipv6Addr>().unwrap().octets());
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&443u16.to_be_bytes());
        f.resize(len, 0xcd);
        f
    }

    fn arp() -> Vec<u8> {
        let mut f = eth(0x0806);
        f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&MAC_A);
        f.extend_from_slice(&[10, 0, 0, 1]);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&[10, 0, 0, 2]);
        f
    }

    /// Params under which every frame of more than 0 bytes is demoted at once (to one of
    /// 65536 bulk queues).
    fn always_bulk() -> SteeringParams {
        SteeringParams {
            bulk_queues: 1 << 16,
            express_queue: 7,
            flow_budget: 0,
            ..slow(1)
        }
    }

    #[test]
    fn program_size() {
        let maps = Maps {
            flows: 0,
            global: 0,
            pins: 0,
        };
        let insns = program(&SteeringParams::new(4), maps).unwrap();
        eprintln!("steering program: {} instructions", insns.len());
        assert!(insns.len() < 4096);
    }

    #[test]
    fn steer_a_rejected_program_reports_the_verifier_log() {
        need_root();
        // `exit` with r0 never written.
        let mut a = Asm::default();
        a.exit();
        let e = load_prog(&a.finish().unwrap()).unwrap_err().to_string();
        assert!(e.contains("verifier log") && e.contains("R0"), "{e}");
    }

    #[test]
    fn params_are_checked() {
        assert!(TapSteering::load(&SteeringParams::new(0)).is_err());
        let p = SteeringParams {
            express_queue: 70_000,
            ..SteeringParams::new(4)
        };
        assert_eq!(
            TapSteering::load(&p).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }

    #[test]
    fn steer_hash_matches_the_reference_for_every_kind_of_frame() {
        let s = load(&always_bulk());
        let mut frames = vec![arp(), tcp6(100, 1), tcp6(100, 2)];
        for sport in 0..16 {
            frames.push(tcp4(100, 1000 + sport));
            // UDP; a fragment (no ports); an options header (IHL 6); another protocol.
            let (a, b) = (
                Ipv4Addr::new(10, 1, 0, sport as u8),
                Ipv4Addr::new(10, 2, 0, 1),
            );
            frames.push(v4(100, 17, a, b, (53, sport), 0));
            frames.push(v4(100, 17, a, b, (53, sport), 0x2000));
            frames.push(v4(100, 1, a, b, (53, sport), 0));
            let mut opts = v4(100, 6, a, b, (53, sport), 0);
            opts[14] = 0x46;
            frames.push(opts);
        }
        // The program's hash is `flow::hash`: each flow, pinned under `flow::hash` to a queue
        // of its own before its first frame, is given that queue (its first frame demotes
        // it). Frames of one flow (same hash) keep the first one's queue.
        let pins = s.pins();
        let mut pinned = std::collections::HashMap::new();
        for (i, f) in frames.iter().enumerate() {
            let h = flow::hash(f).unwrap();
            let want = *pinned.entry(h).or_insert_with(|| {
                let q = 100 + i as u32;
                pins.pin(h, q).unwrap();
                q
            });
            assert_eq!(s.test_run(f).unwrap(), want, "{f:02x?}");
        }
        // Both directions of a connection are one flow to the program (IPv4 and IPv6).
        let q = |f: &[u8]| s.test_run(f).unwrap();
        let (a, b) = (Ipv4Addr::new(10, 1, 0, 1), Ipv4Addr::new(10, 2, 0, 1));
        for sport in 0..16 {
            assert_eq!(
                q(&v4(100, 6, a, b, (40_000 + sport, 80), 0)),
                q(&v4(100, 6, b, a, (80, 40_000 + sport), 0))
            );
        }
        let mut back = tcp6(100, 7);
        let (src, rest) = back[22..54].split_at_mut(16);
        src.swap_with_slice(rest);
        back[54..58].copy_from_slice(&[1, 187, 0, 7]);
        assert_eq!(q(&tcp6(100, 7)), q(&back));
        assert!(pins.pin(1, 1 << 16).is_err(), "past the bulk queues");
    }

    #[test]
    fn flow_hash_is_symmetric_and_counts_ports_for_tcp_and_udp_only() {
        let h = |f: Vec<u8>| flow::hash(&f).unwrap();
        let (a, b, c) = (
            Ipv4Addr::new(10, 1, 0, 1),
            Ipv4Addr::new(10, 2, 0, 1),
            Ipv4Addr::new(10, 3, 0, 1),
        );
        assert_ne!(
            h(v4(100, 17, a, b, (1, 2), 0)),
            h(v4(100, 17, a, b, (1, 3), 0))
        );
        assert_ne!(
            h(v4(100, 6, a, b, (1, 2), 0)),
            h(v4(100, 17, a, b, (1, 2), 0))
        );
        // A fragment, or another protocol: no ports.
        assert_eq!(
            h(v4(100, 17, a, b, (1, 2), 1)),
            h(v4(100, 17, a, b, (1, 3), 1))
        );
        assert_eq!(
            h(v4(100, 1, a, b, (1, 2), 0)),
            h(v4(100, 1, a, b, (1, 3), 0))
        );
        assert_ne!(h(tcp6(100, 1)), h(tcp6(100, 2)));
        // Symmetric, and the pair of addresses counts, not each one.
        assert_eq!(
            h(v4(100, 6, a, b, (40_000, 80), 0)),
            h(v4(100, 6, b, a, (80, 40_000), 0))
        );
        assert_ne!(
            h(v4(100, 6, a, b, (1, 2), 0)),
            h(v4(100, 6, a, c, (1, 2), 0))
        );
        let mut back = tcp6(100, 7);
        let (src, rest) = back[22..54].split_at_mut(16);
        src.swap_with_slice(rest);
        back[54..58].copy_from_slice(&[1, 187, 0, 7]);
        assert_eq!(h(tcp6(100, 7)), h(back));
        // Loads past the end.
        assert_eq!(flow::hash(&tcp4(100, 1)[..36]), None);
        assert_eq!(flow::hash(&[0; 13]), None);
    }

    #[test]
    fn steer_same_flow_same_queue() {
        let s = load(&slow(4));
        for _ in 0..20 {
            assert_eq!(s.test_run(&tcp4(100, 5555)).unwrap(), 4);
        }
        let s = load(&SteeringParams {
            flow_budget: 0,
            ..slow(4)
        });
        let q = s.test_run(&tcp4(1500, 5555)).unwrap();
        assert!(q < 4);
        for _ in 0..20 {
            assert_eq!(s.test_run(&tcp4(1500, 5555)).unwrap(), q);
        }
    }

    #[test]
    fn steer_small_frames_count_for_the_least_charge() {
        // With the default least charge (512 bytes) and budget (4096), a flow of 100-byte
        // frames is express for 8 frames in a window, then demoted: a rate, not only bytes.
        let s = load(&SteeringParams {
            min_charge: SteeringParams::MIN_CHARGE,
            ..slow(4)
        });
        for i in 0..8 {
            assert_eq!(s.test_run(&tcp4(100, 7000)).unwrap(), 4, "frame {i}");
        }
        let q = s.test_run(&tcp4(100, 7000)).unwrap();
        assert!(q < 4, "the 9th frame: {q}");
        assert_eq!(s.test_run(&tcp4(100, 7001)).unwrap(), 4, "another flow");
    }

    #[test]
    fn steer_a_flow_leaves_the_express_queue_at_a_pause() {
        // Over its budget without a pause it stays express (its frames stay in order behind
        // one another); the first frame after a pause of gap_ns goes bulk, and so does the
        // rest (held).
        let s = load(&SteeringParams {
            grace: SteeringParams::GRACE,
            gap_ns: 20_000_000,
            global_budget: u32::MAX,
            ..slow(4)
        });
        for i in 0..4 {
            // 4 x 3000 bytes: over the 4096 budget from the second on, within the grace.
            assert_eq!(s.test_run(&tcp4(3000, 8000)).unwrap(), 4, "frame {i}");
        }
        std::thread::sleep(Duration::from_millis(30));
        let q = s.test_run(&tcp4(100, 8000)).unwrap();
        assert!(q < 4, "after a pause: {q}");
        assert_eq!(s.test_run(&tcp4(100, 8000)).unwrap(), q, "held");
        // A flow that never pauses leaves once past budget + grace (64 KiB with these).
        let mut sent = 0;
        while s.test_run(&tcp4(3000, 8001)).unwrap() == 4 {
            sent += 2986;
            assert!(
                sent <= 4096 + 61_440 + 2986,
                "still express after {sent} bytes"
            );
        }
        assert!(sent > 4096 + 61_440 - 2986, "left after {sent} bytes");
    }

    #[test]
    fn steer_sparse_flows_go_express() {
        let s = load(&slow(4));
        for i in 0..20 {
            // 20 flows of 10 frames of 100 bytes: 1 KiB per flow, 20 KiB in all.
            for _ in 0..10 {
                assert_eq!(s.test_run(&tcp4(100, 2000 + i)).unwrap(), 4);
            }
        }
        assert_eq!(s.test_run(&arp()).unwrap(), 4, "ARP");
        assert_eq!(s.test_run(&tcp6(100, 1)).unwrap(), 4, "IPv6");
    }

    #[test]
    fn steer_a_busy_flow_is_demoted_and_held() {
        need_root();
        // TEST_RUN takes at most about a page, so no 9000-byte frame here: 3000-byte frames
        // (2986 bytes counted) go over the 4096-byte budget at the second.
        let p = slow(4);
        let s = load(&p);
        assert_eq!(s.test_run(&tcp4(3000, 7)).unwrap(), 4);
        let bulk = s.test_run(&tcp4(3000, 7)).unwrap();
        assert!(bulk < 4, "{bulk}");
        // Held: small frames of the same flow follow it to the bulk queue.
        for _ in 0..5 {
            assert_eq!(s.test_run(&tcp4(60, 7)).unwrap(), bulk);
        }
        // Other flows are unaffected.
        assert_eq!(s.test_run(&tcp4(60, 8)).unwrap(), 4);
        // A single frame over the budget demotes at once; an IPv6 flow too.
        let s = load(&SteeringParams {
            flow_budget: 1000,
            ..p
        });
        assert!(s.test_run(&tcp4(1100, 9)).unwrap() < 4);
        let v6 = s.test_run(&tcp6(1100, 9)).unwrap();
        assert!(v6 < 4);
        assert_eq!(s.test_run(&tcp6(100, 9)).unwrap(), v6);
        // The hold expires: with a 1 ms hold and window, a sparse flow comes back.
        let s = load(&SteeringParams {
            flow_budget: 1000,
            window_ns: 1_000_000,
            hold_ns: 1_000_000,
            ..p
        });
        assert!(s.test_run(&tcp4(1100, 9)).unwrap() < 4);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(s.test_run(&tcp4(100, 9)).unwrap(), 4);
    }

    #[test]
    fn steer_flows_spread_over_the_bulk_queues() {
        let s = load(&SteeringParams {
            flow_budget: 0,
            ..slow(4)
        });
        let mut hit = [0u32; 4];
        for i in 0..64 {
            let q = s.test_run(&tcp4(1500, 30_000 + i)).unwrap();
            assert!(q < 4, "{q}");
            hit[q as usize] += 1;
        }
        assert_eq!(hit, [16; 4], "64 flows over 4 bulk queues");
    }

    #[test]
    fn steer_bulk_flows_take_the_bulk_queues_in_turn_and_keep_them() {
        let s = load(&SteeringParams {
            flow_budget: 1000,
            ..slow(4)
        });
        // Express frames do not take a turn; each flow's first demotion does.
        for i in 0..8u16 {
            assert_eq!(s.test_run(&tcp4(100, 100 + i)).unwrap(), 4);
        }
        let first: Vec<u32> = (0..8u16)
            .map(|i| s.test_run(&tcp4(1500, 100 + i)).unwrap())
            .collect();
        assert_eq!(first, [0, 1, 2, 3, 0, 1, 2, 3]);
        // Each keeps its queue, whatever the others do.
        for i in (0..8u16).rev() {
            assert_eq!(s.test_run(&tcp4(60, 100 + i)).unwrap(), u32::from(i % 4));
        }
        // A flow pinned before its first demotion takes its pin, settled (and the turns go
        // on where they were).
        let pins = s.pins();
        let pin = |sport: u16, q: u32| pins.pin(flow::hash(&tcp4(60, sport)).unwrap(), q).unwrap();
        pin(200, 3);
        assert_eq!(s.test_run(&tcp4(1500, 200)).unwrap(), 3);
        pin(200, 1);
        assert_eq!(s.test_run(&tcp4(1500, 200)).unwrap(), 3, "settled");
        assert_eq!(s.test_run(&tcp4(1500, 201)).unwrap(), 0);
        // A flow that took its queue in turn settles on the smaller of it and a pin that
        // comes later: the other host took the other one, and both hosts reach the same.
        pin(103, 1);
        assert_eq!(s.test_run(&tcp4(1500, 103)).unwrap(), 1, "3 and the pin 1");
        pin(103, 2);
        assert_eq!(s.test_run(&tcp4(1500, 103)).unwrap(), 1, "settled");
        pin(102, 3);
        assert_eq!(s.test_run(&tcp4(1500, 102)).unwrap(), 2, "2 and the pin 3");
        pin(102, 0);
        assert_eq!(s.test_run(&tcp4(1500, 102)).unwrap(), 2, "settled");
        // Without a pin it keeps its turn.
        assert_eq!(s.test_run(&tcp4(1500, 101)).unwrap(), 1);
    }

    #[test]
    fn steer_global_budget_demotes() {
        let s = load(&SteeringParams {
            global_budget: 1000,
            flow_budget: 100_000,
            ..slow(4)
        });
        // 586 + 586 > 1000: the second flow's frame is demoted, and so are its next frames.
        assert_eq!(s.test_run(&tcp4(600, 1)).unwrap(), 4);
        let bulk2 = s.test_run(&tcp4(600, 2)).unwrap();
        assert!(bulk2 < 4, "{bulk2}");
        assert_eq!(s.test_run(&tcp4(60, 2)).unwrap(), bulk2);
        // What still fits goes express: 586 + 286 <= 1000.
        assert_eq!(s.test_run(&tcp4(300, 3)).unwrap(), 4);
    }

    #[test]
    fn steer_truncated_and_garbage_frames() {
        let s = load(&slow(4));
        // TEST_RUN itself refuses an IPv4 frame without a whole IPv4 header and an IPv6 one
        // without a whole IPv6 header (EINVAL), so the truncations tried are past those.
        // A load past the end returns 0 (queue 0) and touches no meter: ports cut off, ...
        let full = tcp4(100, 1);
        for len in 34..38 {
            assert_eq!(s.test_run(&full[..len]).unwrap(), 0, "{len}");
        }
        // ... an IHL pointing past the end, ...
        let mut far = full[..60].to_vec();
        far[14] = 0x4f;
        assert_eq!(s.test_run(&far).unwrap(), 0);
        // ... IPv6 ports cut off.
        let full6 = tcp6(100, 1);
        for len in 54..58 {
            assert_eq!(s.test_run(&full6[..len]).unwrap(), 0, "{len}");
        }
        // Other short frames: the ethertype alone.
        assert_eq!(s.test_run(&eth(0x1234)).unwrap(), 4);
        assert!(s.test_run(&full[..10]).is_err(), "TEST_RUN needs 14 bytes");
        // Pseudo-random garbage of many lengths, some of it posing as IPv4 or IPv6: no error.
        let mut x = 0x1234_5678_u32;
        for len in 14..600 {
            let mut f: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            match len % 3 {
                1 if len >= 34 => f[12..14].copy_from_slice(&[8, 0]),
                2 if len >= 54 => f[12..14].copy_from_slice(&[0x86, 0xdd]),
                _ if matches!(f[12..14], [8, 0] | [0x86, 0xdd]) => f[12] = 0x99,
                _ => {}
            }
            let q = s.test_run(&f).unwrap();
            assert!(q <= 4, "{f:02x?}");
        }
    }

    /// A real 3-queue TAP (2 bulk + express) in a scratch namespace: small datagrams are read
    /// from the express queue, a burst of one flow from the bulk queue its hash picks, and
    /// the TAP path counts the Ethernet header in `len`.
    #[test]
    fn steer_real_tap() {
        need_root();
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
            real_tap();
        })
        .join()
        .unwrap();
    }

    fn real_tap() {
        let q0 = Tap::open("wsteer0", true).unwrap();
        let q1 = q0.open_queue().unwrap();
        let q2 = q0.open_queue().unwrap();
        let p = SteeringParams {
            flow_budget: 1000,
            ..slow(2)
        };
        let s = TapSteering::load(&p).unwrap();
        s.attach(&q1).unwrap();
        let pins = s.pins();
        drop(s); // the device keeps the program
        let ip = |args: &[&str]| {
            let st = std::process::Command::new("ip")
                .args(args)
                .status()
                .unwrap();
            assert!(st.success(), "ip {args:?}");
        };
        ip(&["addr", "add", "10.77.0.1/24", "dev", "wsteer0"]);
        ip(&["link", "set", "wsteer0", "up"]);
        ip(&[
            "neigh",
            "add",
            "10.77.0.2",
            "lladdr",
            "02:00:00:00:00:02",
            "dev",
            "wsteer0",
            "nud",
            "permanent",
        ]);
        let queues = [q0, q1, q2];
        for q in &queues {
            q.set_nonblocking(true).unwrap();
        }

        let bind = || UdpSocket::bind("10.77.0.1:0").unwrap();
        let port = |s: &UdpSocket| s.local_addr().unwrap().port();
        let to = "10.77.0.2:9999";
        // UDP/IPv4 frames have 42 bytes of headers.
        let small = bind();
        for _ in 0..3 {
            small.send_to(&[1; 58], to).unwrap(); // 100-byte frames: express
        }
        // A frame of exactly the budget stays express, one byte more of the same flow is
        // over it: the TAP path counts the whole frame, Ethernet header included.
        let edge = bind();
        edge.send_to(&[2; 1000 - 42], to).unwrap();
        edge.send_to(&[2; 1], to).unwrap();
        // A burst: over the budget at its first frame, and held on its bulk queue.
        let busy = bind();
        busy.send_to(&[3; 1001 - 42], to).unwrap();
        for _ in 0..19 {
            busy.send_to(&[3; 1400], to).unwrap();
        }
        // 16 busy flows: 8 pinned to bulk queue 1 under `flow::hash` of a frame with their
        // addresses and ports (so it is the program's hash on the TAP path too), 8 taking the
        // bulk queues in turn (the edge flow took queue 0, the burst queue 1).
        let spread: Vec<UdpSocket> = (0..16).map(|_| bind()).collect();
        let (me, peer) = (Ipv4Addr::new(10, 77, 0, 1), Ipv4Addr::new(10, 77, 0, 2));
        for s in &spread[..8] {
            let f = v4(100, 17, me, peer, (port(s), 9999), 0);
            pins.pin(flow::hash(&f).unwrap(), 1).unwrap();
        }
        for s in &spread {
            s.send_to(&[4; 1100], to).unwrap();
        }
        let want_frames = 3 + 2 + 20 + 16;

        let mut got: Vec<(usize, Vec<u8>)> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = vec![0u8; 65_536];
        while got.len() < want_frames && Instant::now() < deadline {
            for (i, q) in queues.iter().enumerate() {
                while let Ok(n) = q.recv(&mut buf) {
                    let f = &buf[..n];
                    // Only our datagrams (not IPv6 router solicitations and the like).
                    let ours = n >= 42
                        && f[12..14] == [8, 0]
                        && f[23] == 17
                        && f[36..38] == 9999u16.to_be_bytes();
                    if ours {
                        got.push((i, f.to_vec()));
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(got.len(), want_frames, "{got:?}");
        let mut edge_seen = Vec::new();
        let mut unpinned_hit = [0; 2];
        for (q, f) in &got {
            let sport = u16::from_be_bytes([f[34], f[35]]);
            if sport == port(&small) {
                assert_eq!(*q, 2, "a small datagram not on the express queue");
            } else if sport == port(&edge) {
                edge_seen.push((f.len(), *q));
            } else if sport == port(&busy) {
                assert_eq!(*q, 1, "the burst's frame of {} bytes", f.len());
            } else if spread[..8].iter().any(|s| port(s) == sport) {
                assert_eq!(*q, 1, "a pinned flow");
            } else {
                assert!(*q < 2, "an unpinned busy flow on queue {q}");
                unpinned_hit[*q] += 1;
            }
        }
        // (Read queue by queue, so in no particular order.)
        edge_seen.sort_unstable_by_key(|&(len, _)| std::cmp::Reverse(len));
        assert_eq!(edge_seen, [(1000, 2), (43, 0)]);
        assert_eq!(
            unpinned_hit,
            [4, 4],
            "8 busy flows over the 2 bulk queues in turn"
        );
    }
}
