//! Layer: driver. Which kernel features the data plane uses: what [`weft_sys::probe`] found,
//! less what the operator ruled out (`--disable-features`, `WEFT_DISABLE_FEATURES`), said once
//! in the log and kept for `weft status` and the report.
//!
//! The userspace data plane uses four of them and falls back without each:
//! - `tap-vnet-hdr`: without it the TAP carries plain frames (no checksum offload, no TSO);
//! - `tso`: without it the kernel segments TCP before the TAP (a vnet header, no super-frames);
//! - `udp-gso`: without it every datagram is its own `sendmmsg` entry;
//! - `udp-gro`: without it every datagram is its own receive slot.
//!
//! `ebpf` also steers the TAP's queues for the express lane (see [`crate::dataplane`]):
//! without it sparse flows share the bulk queues. `vxlan-external` is what a kernel fast path
//! needs; it is reported and not used by the userspace path.
//!
//! The hooks are where the TAP and the UDP socket are opened ([`crate::run()`]):
//! [`Features::tap_options`] picks the TAP's options and [`Features::apply_to_udp`] rules out
//! GSO/GRO on the socket before the data plane starts.

use serde::{Deserialize, Serialize};
use weft_sys::probe::{Feature, KernelFeatures, Probe};
use weft_sys::tap::{Offload, TapOptions};
use weft_sys::udp::BatchUdp;

/// One feature as `GET /status` (JSON) and `/report` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureReport {
    /// The feature's name (`tap-vnet-hdr`, `tso`, `udp-gso`, `udp-gro`, `vxlan-external`,
    /// `ebpf`).
    pub name: String,
    /// The kernel offers it (`None`: the probe could not tell).
    pub available: Option<bool>,
    /// The data plane uses it.
    pub used: bool,
    /// Why it is not used, when it is not.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

/// The data plane's use of kernel features.
#[derive(Debug, Clone)]
pub struct Features {
    probed: KernelFeatures,
    disabled: Vec<Feature>,
}

/// Features the userspace data plane uses when it can.
const USED_BY_USERSPACE: [Feature; 4] = [
    Feature::TapVnetHdr,
    Feature::Tso,
    Feature::UdpGso,
    Feature::UdpGro,
];

impl Features {
    /// Probes the kernel; `disabled` are the features ruled out by the operator.
    pub fn detect(disabled: &[Feature]) -> Self {
        Self::new(weft_sys::probe::probe(), disabled)
    }

    /// From probe results (for tests).
    pub fn new(probed: KernelFeatures, disabled: &[Feature]) -> Self {
        Self {
            probed,
            disabled: disabled.to_vec(),
        }
    }

    /// Whether the operator left `f` to be used (not in `--disable-features`).
    pub fn allowed(&self, f: Feature) -> bool {
        !self.disabled.contains(&f)
    }

    /// Whether the data plane may use `f`: the kernel has it, nothing ruled it out, and what
    /// it builds on (TSO on the vnet header) is used too.
    pub fn uses(&self, f: Feature) -> bool {
        if !USED_BY_USERSPACE.contains(&f)
            || self.disabled.contains(&f)
            || !self.probed.get(f).available()
        {
            return false;
        }
        f != Feature::Tso || self.uses(Feature::TapVnetHdr)
    }

    /// How to open the TAP.
    pub fn tap_options(&self) -> TapOptions {
        let vnet_hdr = self.uses(Feature::TapVnetHdr);
        let tso = self.uses(Feature::Tso);
        TapOptions {
            multi_queue: false,
            vnet_hdr,
            offload: Offload {
                csum: vnet_hdr,
                tso4: tso,
                tso6: tso,
            },
        }
    }

    /// Rules out on `udp` what the data plane must not use (before it starts).
    pub fn apply_to_udp(&self, udp: &BatchUdp) {
        if !self.uses(Feature::UdpGso) {
            udp.disable_gso();
        }
        if !self.uses(Feature::UdpGro) {
            udp.disable_gro();
        }
    }

    /// Every feature, for the status outputs. `tap` is the options the TAP was actually opened
    /// with (it may have fallen back further than asked); `express`: the express lane runs,
    /// its queues steered by an eBPF program.
    pub fn report(&self, tap: TapOptions, express: bool) -> Vec<FeatureReport> {
        Feature::ALL
            .into_iter()
            .map(|f| {
                let probe = self.probed.get(f);
                let mut used = self.uses(f);
                match f {
                    Feature::TapVnetHdr => used &= tap.vnet_hdr,
                    Feature::Tso => used &= tap.offload.tso4,
                    Feature::Ebpf => used = express,
                    _ => {}
                }
                let note = if used {
                    String::new()
                } else if self.disabled.contains(&f) {
                    "disabled by --disable-features".to_owned()
                } else if f == Feature::Ebpf {
                    match probe {
                        Probe::Available => "the express lane is off".to_owned(),
                        Probe::Missing(why) | Probe::Unknown(why) => why.clone(),
                    }
                } else if !USED_BY_USERSPACE.contains(&f) {
                    match probe {
                        Probe::Available => "not used by the userspace data path".to_owned(),
                        Probe::Missing(why) | Probe::Unknown(why) => why.clone(),
                    }
                } else {
                    match probe {
                        Probe::Missing(why) | Probe::Unknown(why) => why.clone(),
                        Probe::Available if f == Feature::Tso => {
                            "needs tap-vnet-hdr, which is not used".to_owned()
                        }
                        Probe::Available => "the device refused it".to_owned(),
                    }
                };
                FeatureReport {
                    name: f.name().to_owned(),
                    available: match probe {
                        Probe::Available => Some(true),
                        Probe::Missing(_) => Some(false),
                        Probe::Unknown(_) => None,
                    },
                    used,
                    note,
                }
            })
            .collect()
    }

    /// Logs what was found and what the data plane falls back from: a warning for each
    /// feature the userspace path would use but cannot.
    pub fn log(report: &[FeatureReport]) {
        let list = |pick: &dyn Fn(&FeatureReport) -> bool| {
            let names: Vec<&str> = report
                .iter()
                .filter(|r| pick(r))
                .map(|r| r.name.as_str())
                .collect();
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(" ")
            }
        };
        tracing::info!(
            "kernel features: available: {}; used by the data plane: {}",
            list(&|r| r.available == Some(true)),
            list(&|r| r.used)
        );
        for r in report {
            let userspace = USED_BY_USERSPACE.iter().any(|f| f.name() == r.name);
            if userspace && !r.used {
                tracing::warn!("data plane falls back: no {} ({})", r.name, r.note);
            }
        }
    }
}

/// Parses `--disable-features`: comma- or space-separated feature names.
pub fn parse_disabled(s: &str) -> Result<Vec<Feature>, String> {
    s.split([',', ' '])
        .filter(|n| !n.trim().is_empty())
        .map(|n| {
            Feature::parse(n).ok_or_else(|| {
                let known: Vec<&str> = Feature::ALL.iter().map(|f| f.name()).collect();
                format!(
                    "unknown kernel feature '{}' (known: {})",
                    n.trim(),
                    known.join(", ")
                )
            })
        })
        .collect()
}

/// `weave status`'s one-line summary: `sleeve (userspace) with vnet-hdr tso udp-gso udp-gro;
/// without ...`, with `, N threads` after `userspace` when the data plane runs on several and
/// `, express lane` when it has one.
pub fn summary<'a>(
    features: impl IntoIterator<Item = (&'a str, bool)>,
    threads: usize,
    express: bool,
) -> String {
    let (used, unused): (Vec<_>, Vec<_>) = features.into_iter().partition(|(_, used)| *used);
    let used: Vec<&str> = used.into_iter().map(|(name, _)| name).collect();
    let fallbacks: Vec<&str> = unused
        .into_iter()
        .map(|(name, _)| name)
        .filter(|name| USED_BY_USERSPACE.iter().any(|f| f.name() == *name))
        .collect();
    let mut threads = if threads > 1 {
        format!(", {threads} threads")
    } else {
        String::new()
    };
    if express {
        threads.push_str(", express lane");
    }
    let mut s = format!(
        "sleeve (userspace{threads}) with {}",
        if used.is_empty() {
            "no offloads".to_owned()
        } else {
            used.join(" ")
        }
    );
    if !fallbacks.is_empty() {
        s.push_str(&format!("; without {}", fallbacks.join(" ")));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(p: &Probe) -> KernelFeatures {
        KernelFeatures {
            tap_vnet_hdr: p.clone(),
            tso: p.clone(),
            udp_gso: p.clone(),
            udp_gro: p.clone(),
            vxlan_external: p.clone(),
            ebpf: p.clone(),
        }
    }

    #[test]
    fn everything_available_uses_the_userspace_four() {
        let f = Features::new(all(&Probe::Available), &[]);
        let tap = f.tap_options();
        assert!(tap.vnet_hdr && tap.offload.csum && tap.offload.tso4 && tap.offload.tso6);
        let r = f.report(tap, false);
        let used: Vec<&str> = r.iter().filter(|r| r.used).map(|r| &*r.name).collect();
        assert_eq!(used, ["tap-vnet-hdr", "tso", "udp-gso", "udp-gro"]);
        let vx = r.iter().find(|r| r.name == "vxlan-external").unwrap();
        assert_eq!(vx.available, Some(true));
        assert!(vx.note.contains("not used"), "{vx:?}");
        let ebpf = r.iter().find(|r| r.name == "ebpf").unwrap();
        assert_eq!(ebpf.note, "the express lane is off");
        assert_eq!(
            summary(r.iter().map(|f| (f.name.as_str(), f.used)), 1, false),
            "sleeve (userspace) with tap-vnet-hdr tso udp-gso udp-gro"
        );
        assert_eq!(
            summary(r.iter().map(|f| (f.name.as_str(), f.used)), 4, false),
            "sleeve (userspace, 4 threads) with tap-vnet-hdr tso udp-gso udp-gro"
        );
        // With the express lane, eBPF steers the TAP's queues.
        let r = f.report(tap, true);
        assert!(
            r.iter()
                .any(|r| r.name == "ebpf" && r.used && r.note.is_empty())
        );
        assert_eq!(
            summary(r.iter().map(|f| (f.name.as_str(), f.used)), 2, true),
            "sleeve (userspace, 2 threads, express lane) with tap-vnet-hdr tso udp-gso udp-gro ebpf"
        );
    }

    #[test]
    fn disabling_the_vnet_header_takes_tso_with_it() {
        let f = Features::new(all(&Probe::Available), &[Feature::TapVnetHdr]);
        let tap = f.tap_options();
        assert_eq!(tap, TapOptions::default());
        let r = f.report(tap, false);
        let tso = r.iter().find(|r| r.name == "tso").unwrap();
        assert!(!tso.used);
        assert!(tso.note.contains("tap-vnet-hdr"), "{tso:?}");
        let vnet = r.iter().find(|r| r.name == "tap-vnet-hdr").unwrap();
        assert_eq!(vnet.note, "disabled by --disable-features");
        assert_eq!(
            summary(r.iter().map(|f| (f.name.as_str(), f.used)), 1, false),
            "sleeve (userspace) with udp-gso udp-gro; without tap-vnet-hdr tso"
        );
    }

    #[test]
    fn missing_features_fall_back_with_the_reason() {
        let mut k = all(&Probe::Available);
        k.tso = Probe::Missing("EINVAL".into());
        k.udp_gro = Probe::Unknown("no socket".into());
        let f = Features::new(k, &[]);
        let tap = f.tap_options();
        assert!(tap.vnet_hdr && tap.offload.csum && !tap.offload.tso4);
        let r = f.report(tap, true);
        let gro = r.iter().find(|r| r.name == "udp-gro").unwrap();
        assert_eq!((gro.available, gro.used), (None, false));
        assert_eq!(gro.note, "no socket");
        // The TAP fell back to no header at all although the probe said yes.
        let r = f.report(TapOptions::default(), true);
        let vnet = r.iter().find(|r| r.name == "tap-vnet-hdr").unwrap();
        assert_eq!(vnet.note, "the device refused it");
    }

    #[test]
    fn parse_the_flag() {
        assert_eq!(
            parse_disabled("tso, udp-gro").unwrap(),
            [Feature::Tso, Feature::UdpGro]
        );
        assert_eq!(parse_disabled("").unwrap(), []);
        let e = parse_disabled("tso,warp").unwrap_err();
        assert!(e.contains("'warp'") && e.contains("udp-gso"), "{e}");
    }
}
