//! Layer: OS. What the running kernel offers a data plane, found out by trying each thing once
//! (a version number says little: distributions backport, and containers and seccomp take
//! away).
//!
//! [`probe`] runs on a short-lived thread that moves into a scratch network namespace of its
//! own (`unshare(CLONE_NEWNET)`), so the TAP and VXLAN devices it makes never appear on the
//! host and vanish with the thread. Where no scratch namespace can be made (no
//! `CAP_SYS_ADMIN`), the TAP probes run in the caller's namespace under a unique name, and
//! the VXLAN probe reports that it could not tell. Each [`Feature`] has a name (what flags and
//! status outputs use) and each probe a [`Probe`] result with the reason when it is missing.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{FromRawFd, OwnedFd};

use crate::tap::{Offload, Tap, TapOptions};
use crate::udp::BatchUdp;

/// A kernel feature a data plane may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Feature {
    /// TAP frames behind a `virtio_net_hdr` (`IFF_VNET_HDR`) with checksum offload.
    TapVnetHdr,
    /// TCP segmentation offload on the TAP (`TUN_F_TSO4`/`TUN_F_TSO6`): 64 KiB super-frames.
    Tso,
    /// UDP segmentation offload (`UDP_SEGMENT`): one send, many datagrams.
    UdpGso,
    /// UDP receive offload (`UDP_GRO`): one receive, many datagrams.
    UdpGro,
    /// A VXLAN device in external (collect-metadata) mode, as a kernel fast path would use.
    VxlanExternal,
    /// Loading eBPF programs (a `SCHED_CLS` program, as a tc fast path would load).
    Ebpf,
}

impl Feature {
    /// Every feature, in the order outputs list them.
    pub const ALL: [Self; 6] = [
        Self::TapVnetHdr,
        Self::Tso,
        Self::UdpGso,
        Self::UdpGro,
        Self::VxlanExternal,
        Self::Ebpf,
    ];

    /// The name flags, logs and status outputs use.
    pub fn name(self) -> &'static str {
        match self {
            Self::TapVnetHdr => "tap-vnet-hdr",
            Self::Tso => "tso",
            Self::UdpGso => "udp-gso",
            Self::UdpGro => "udp-gro",
            Self::VxlanExternal => "vxlan-external",
            Self::Ebpf => "ebpf",
        }
    }

    /// The feature called `name` (as [`name`](Self::name) spells it; `vnet-hdr`, `gso` and
    /// `gro` are accepted too).
    pub fn parse(name: &str) -> Option<Self> {
        let name = name.trim().to_ascii_lowercase().replace('_', "-");
        Self::ALL
            .into_iter()
            .find(|f| f.name() == name)
            .or(match name.as_str() {
                "vnet-hdr" | "vnethdr" => Some(Self::TapVnetHdr),
                "gso" => Some(Self::UdpGso),
                "gro" => Some(Self::UdpGro),
                "vxlan" => Some(Self::VxlanExternal),
                "bpf" => Some(Self::Ebpf),
                _ => None,
            })
    }
}

impl std::fmt::Display for Feature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// The kernel did it.
    Available,
    /// The kernel refused; why.
    Missing(String),
    /// The probe itself could not run; why.
    Unknown(String),
}

impl Probe {
    /// Whether the kernel did it.
    pub fn available(&self) -> bool {
        matches!(self, Self::Available)
    }

    fn from_result(r: io::Result<()>) -> Self {
        match r {
            Ok(()) => Self::Available,
            Err(e) => Self::Missing(e.to_string()),
        }
    }
}

/// Every probe's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelFeatures {
    /// [`Feature::TapVnetHdr`].
    pub tap_vnet_hdr: Probe,
    /// [`Feature::Tso`].
    pub tso: Probe,
    /// [`Feature::UdpGso`].
    pub udp_gso: Probe,
    /// [`Feature::UdpGro`].
    pub udp_gro: Probe,
    /// [`Feature::VxlanExternal`].
    pub vxlan_external: Probe,
    /// [`Feature::Ebpf`].
    pub ebpf: Probe,
}

impl KernelFeatures {
    /// The result for `feature`.
    pub fn get(&self, feature: Feature) -> &Probe {
        match feature {
            Feature::TapVnetHdr => &self.tap_vnet_hdr,
            Feature::Tso => &self.tso,
            Feature::UdpGso => &self.udp_gso,
            Feature::UdpGro => &self.udp_gro,
            Feature::VxlanExternal => &self.vxlan_external,
            Feature::Ebpf => &self.ebpf,
        }
    }
}

/// Probes every [`Feature`] (a few milliseconds; needs `CAP_NET_ADMIN` for the TAP and
/// VXLAN probes and `CAP_BPF` or `CAP_SYS_ADMIN` for eBPF, else those report why).
pub fn probe() -> KernelFeatures {
    let probed = std::thread::Builder::new()
        .name("weft-probe".into())
        .spawn(probe_on_this_thread)
        .map(|h| h.join());
    match probed {
        Ok(Ok(features)) => features,
        Ok(Err(_)) | Err(_) => {
            let why = Probe::Unknown("the probe thread failed".to_owned());
            KernelFeatures {
                tap_vnet_hdr: why.clone(),
                tso: why.clone(),
                udp_gso: why.clone(),
                udp_gro: why.clone(),
                vxlan_external: why.clone(),
                ebpf: why,
            }
        }
    }
}

/// The probes, on a thread of their own (which may leave the caller's namespace).
fn probe_on_this_thread() -> KernelFeatures {
    // Only this thread moves: the network namespace is per thread.
    let scratch = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET);
    let tap_name = if scratch.is_ok() {
        "wprobe0".to_owned()
    } else {
        format!("wprobe{}", std::process::id() % 100_000_000)
    };
    let (tap_vnet_hdr, tso) = probe_tap(&tap_name);
    let vxlan_external = match &scratch {
        Ok(()) => probe_vxlan_external(),
        Err(e) => Probe::Unknown(format!("no scratch network namespace to try it in: {e}")),
    };
    KernelFeatures {
        tap_vnet_hdr,
        tso,
        udp_gso: probe_udp_gso(),
        udp_gro: probe_udp_gro(),
        vxlan_external,
        ebpf: probe_ebpf(),
    }
}

/// Opens a throwaway TAP with a vnet header and checksum offload, then with TSO too.
fn probe_tap(name: &str) -> (Probe, Probe) {
    let open = |offload: Offload| {
        Tap::open_with(
            name,
            TapOptions {
                multi_queue: false,
                vnet_hdr: true,
                offload,
            },
        )
        .map(drop)
    };
    if let Err(e) = Tap::open(name, false) {
        let why = match e.raw_os_error() {
            Some(libc::EPERM) => Probe::Unknown(format!("opening a TAP needs CAP_NET_ADMIN: {e}")),
            _ => Probe::Missing(format!("no TAP device: {e}")),
        };
        return (why.clone(), why);
    }
    let csum = Offload {
        csum: true,
        ..Offload::default()
    };
    let vnet = Probe::from_result(open(csum));
    let tso = if vnet.available() {
        Probe::from_result(open(Offload::ALL))
    } else {
        Probe::Missing("needs the vnet header".to_owned())
    };
    (vnet, tso)
}

/// Whether the kernel knows `UDP_SEGMENT` (what [`BatchUdp::bind`] checks).
fn probe_udp_gso() -> Probe {
    match BatchUdp::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))) {
        Ok(s) if s.max_gso_segments() > 1 => Probe::Available,
        Ok(_) => Probe::Missing("the kernel does not know UDP_SEGMENT (Linux < 4.18)".to_owned()),
        Err(e) => Probe::Unknown(format!("opening a UDP socket: {e}")),
    }
}

/// Whether a UDP socket takes `UDP_GRO`.
fn probe_udp_gro() -> Probe {
    match BatchUdp::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))) {
        Ok(s) => match s.set_gro(true) {
            Ok(true) => Probe::Available,
            Ok(false) => {
                Probe::Missing("the kernel does not know UDP_GRO (Linux < 5.0)".to_owned())
            }
            Err(e) => Probe::Missing(format!("UDP_GRO: {e}")),
        },
        Err(e) => Probe::Unknown(format!("opening a UDP socket: {e}")),
    }
}

/// Creates a VXLAN device in external mode (and brings it up, which binds its UDP socket) in
/// the scratch namespace the calling thread is in.
fn probe_vxlan_external() -> Probe {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return Probe::Unknown(format!("no runtime for netlink: {e}")),
    };
    rt.block_on(async {
        let nl = match crate::netlink::Netlink::new() {
            Ok(nl) => nl,
            Err(e) => return Probe::Unknown(e.to_string()),
        };
        match nl.add_vxlan_external("wprobevx", 4789).await {
            Ok(index) => match nl.set_up(index).await {
                Ok(()) => Probe::Available,
                Err(e) => Probe::Missing(e.to_string()),
            },
            Err(e) => Probe::Missing(e.to_string()),
        }
    })
}

/// `bpf(2)` command: load a program.
pub(crate) const BPF_PROG_LOAD: libc::c_long = 5;
/// Program type of a tc classifier, what a kernel fast path would attach.
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;

/// The `BPF_PROG_LOAD` part of `union bpf_attr`, up to `expected_attach_type` (the kernel
/// treats a shorter attribute as zero-extended). Also used by [`crate::steer`].
#[repr(C)]
pub(crate) struct ProgLoadAttr {
    pub(crate) prog_type: u32,
    pub(crate) insn_cnt: u32,
    pub(crate) insns: u64,
    pub(crate) license: u64,
    pub(crate) log_level: u32,
    pub(crate) log_size: u32,
    pub(crate) log_buf: u64,
    pub(crate) kern_version: u32,
    pub(crate) prog_flags: u32,
    pub(crate) prog_name: [u8; 16],
    pub(crate) prog_ifindex: u32,
    pub(crate) expected_attach_type: u32,
}

/// Loads the smallest eBPF program (`r0 = 0; exit`) as a tc classifier and closes it.
fn probe_ebpf() -> Probe {
    // struct bpf_insn { u8 code; u8 regs; i16 off; i32 imm } little-endian:
    // BPF_ALU64 | BPF_MOV | BPF_K (0xb7) r0 = 0, then BPF_JMP | BPF_EXIT (0x95).
    #[cfg(target_endian = "little")]
    let insns: [u64; 2] = [0xb7, 0x95];
    #[cfg(target_endian = "big")]
    let insns: [u64; 2] = [0xb7 << 56, 0x95 << 56];
    let license = c"GPL";
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_SCHED_CLS,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name: [0; 16],
        prog_ifindex: 0,
        expected_attach_type: 0,
    };
    // SAFETY: `attr` is a live, properly laid out prefix of `union bpf_attr` whose size is
    // passed; the pointers in it (instructions, license) point to live memory of the stated
    // lengths for the whole call; the log buffer is null with size 0. The kernel only reads
    // them and returns a new fd or -1.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &raw const attr,
            size_of::<ProgLoadAttr>(),
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EPERM | libc::EACCES) => {
                Probe::Missing(format!("loading eBPF programs is not permitted: {e}"))
            }
            Some(libc::ENOSYS) => Probe::Missing("no bpf(2) system call".to_owned()),
            _ => Probe::Missing(format!("BPF_PROG_LOAD: {e}")),
        };
    }
    match std::os::fd::RawFd::try_from(r) {
        Ok(fd) => {
            // SAFETY: a successful BPF_PROG_LOAD returns a new fd that nothing else owns; it
            // is closed (the program unloaded) right here.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
            Probe::Available
        }
        Err(_) => Probe::Unknown(format!("bpf(2) returned {r}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for f in Feature::ALL {
            assert_eq!(Feature::parse(f.name()), Some(f));
        }
        assert_eq!(Feature::parse("GSO"), Some(Feature::UdpGso));
        assert_eq!(Feature::parse("tap_vnet_hdr"), Some(Feature::TapVnetHdr));
        assert_eq!(Feature::parse("warp-drive"), None);
    }

    #[test]
    fn probing_reports_every_feature_and_never_panics() {
        let k = probe();
        eprintln!("{k:#?}");
        for f in Feature::ALL {
            // As an ordinary user the privileged probes say why they could not tell.
            match k.get(f) {
                Probe::Available => {}
                Probe::Missing(why) | Probe::Unknown(why) => assert!(!why.is_empty(), "{f}"),
            }
        }
        // Every kernel this runs on has had UDP_SEGMENT since 4.18.
        assert!(k.udp_gso.available(), "{:?}", k.udp_gso);
    }
}
