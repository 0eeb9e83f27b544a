//! Layer: driver (pure functions). `GET /metrics`: the Prometheus text exposition (format
//! 0.0.4) of Weave's metrics, under Weave's names and labels (`prog/weaver/metrics.go`), so
//! existing dashboards and alerts keep working, followed by weft's own (`weft_*`).
//!
//! Weave's names are kept as they are even where Prometheus' naming lint would differ
//! (`weave_ipam_unreachable_count` is a gauge, not a summary's count). As Weave, families with
//! no sample (IPAM off, no connections) are left out; `weave_flows` (fast datapath flows)
//! never appears, as weft's data path is userspace.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::report::WeaveStatus;
use crate::state::{ConnState, StatusReport};

/// One metric family: help, type and samples (`name{labels} value` lines).
struct Family {
    help: String,
    kind: &'static str,
    samples: Vec<String>,
}

/// Families by name (the exposition lists them sorted, as Go's client does).
#[derive(Default)]
struct Exposition {
    families: BTreeMap<String, Family>,
}

impl Exposition {
    fn add(&mut self, name: &str, kind: &'static str, help: &str, labels: &str, value: String) {
        let f = self
            .families
            .entry(name.to_owned())
            .or_insert_with(|| Family {
                help: help.to_owned(),
                kind,
                samples: Vec::new(),
            });
        f.samples.push(format!("{name}{labels} {value}"));
    }

    fn render(&self, out: &mut String) {
        for (name, f) in &self.families {
            let _ = writeln!(out, "# HELP {name} {}", f.help);
            let _ = writeln!(out, "# TYPE {name} {}", f.kind);
            for s in &f.samples {
                let _ = writeln!(out, "{s}");
            }
        }
    }
}

/// A float as Prometheus' text format writes it.
fn float(f: f64) -> String {
    if f.is_nan() {
        "NaN".to_owned()
    } else if f.is_infinite() {
        if f > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        format!("{f}")
    }
}

/// Weave's metrics, from its report.
fn weave(w: &WeaveStatus, out: &mut String) {
    let mut e = Exposition::default();
    // Connections by state, data path and encryption; both encryption values for every
    // (state, type) seen, as Weave.
    let mut counts: BTreeMap<(&str, &str), (u64, u64)> = BTreeMap::new();
    for c in &w.Router.Connections {
        let kind = c
            .Attrs
            .as_ref()
            .and_then(|a| a.get("name"))
            .and_then(|n| n.as_str())
            .unwrap_or("unknown");
        let encrypted = c
            .Attrs
            .as_ref()
            .and_then(|a| a.get("encrypted"))
            .is_some_and(|v| v == &serde_json::Value::Bool(true));
        let slot = counts.entry((c.State.as_str(), kind)).or_default();
        if encrypted {
            slot.0 += 1;
        } else {
            slot.1 += 1;
        }
    }
    let mut samples = BTreeMap::new();
    for ((state, kind), (yes, no)) in counts {
        samples.insert(("yes", state, kind), yes);
        samples.insert(("", state, kind), no);
    }
    for ((enc, state, kind), n) in samples {
        e.add(
            "weave_connections",
            "gauge",
            "Number of peer-to-peer connections.",
            &format!("{{encryption=\"{enc}\",state=\"{state}\",type=\"{kind}\"}}"),
            n.to_string(),
        );
    }
    e.add(
        "weave_connection_terminations_total",
        "counter",
        "Number of peer-to-peer connections terminated.",
        "",
        w.Router.TerminationCount.to_string(),
    );
    if let Some(i) = &w.IPAM {
        e.add(
            "weave_ips",
            "gauge",
            "Number of IP addresses.",
            "{state=\"local-used\"}",
            i.ActiveIPs.to_string(),
        );
        e.add(
            "weave_max_ips",
            "gauge",
            "Size of IP address space used by allocator.",
            "",
            i.RangeNumIPs.to_string(),
        );
        // Per owner, reachability as its first range says (Weave's summariseIpamStats).
        let mut owners: BTreeMap<&str, (u64, bool)> = BTreeMap::new();
        for entry in &i.Entries {
            owners
                .entry(&entry.Peer)
                .or_insert((0, entry.IsKnownPeer))
                .0 += entry.Size;
        }
        let unreachable: Vec<u64> = owners
            .values()
            .filter(|(_, reachable)| !reachable)
            .map(|(ips, _)| *ips)
            .collect();
        e.add(
            "weave_ipam_unreachable_count",
            "gauge",
            "Number of unreachable peers.",
            "",
            unreachable.len().to_string(),
        );
        let pct = unreachable.iter().sum::<u64>() as f64 * 100.0 / i.RangeNumIPs.max(1) as f64;
        e.add(
            "weave_ipam_unreachable_percentage",
            "gauge",
            "Percentage of IP addresses owned  by unreachable peers.",
            "",
            float(pct),
        );
        e.add(
            "weave_ipam_pending_allocates",
            "gauge",
            "Number of pending allocates.",
            "",
            i.PendingAllocates.len().to_string(),
        );
        e.add(
            "weave_ipam_pending_claims",
            "gauge",
            "Number of pending claims.",
            "",
            i.PendingClaims.len().to_string(),
        );
    }
    if let Some(d) = &w.DNS {
        let ours = d
            .Entries
            .iter()
            .filter(|x| x.Tombstone == 0 && x.Origin == w.Router.Name)
            .count();
        e.add(
            "weave_dns_entries",
            "gauge",
            "Number of DNS entries.",
            "",
            ours.to_string(),
        );
    }
    e.render(out);
}

/// weft's own metrics: every data-plane and control-plane counter, connections by state,
/// peers known.
fn weft(r: &StatusReport, out: &mut String) {
    let mut e = Exposition::default();
    let help: BTreeMap<&str, &str> = weft_overlay::Counters::default()
        .fields()
        .iter()
        .map(|(name, help, _)| (*name, *help))
        .collect();
    for (name, value) in &r.counters {
        let h = help
            .get(name.as_str())
            .copied()
            .unwrap_or(match name.as_str() {
                "control_handshake_failures" => {
                    "Control connections closed before the handshake finished."
                }
                "gossip_errors" => "Gossip payloads refused as malformed or invalid.",
                "data_paths_down" => {
                    "Direct data paths taken out of the routes (no heartbeats for 3 s)."
                }
                "data_paths_up" => "Direct data paths back in the routes (heartbeats again).",
                "fastdp_switches_up" => {
                    "Connections whose traffic moved onto the kernel fast path."
                }
                "fastdp_switches_down" => {
                    "Connections whose traffic fell back from the kernel fast path to sleeve."
                }
                "fastdp_rx_packets" => "Frames received through the kernel fast path.",
                "fastdp_tx_packets" => "Frames sent through the kernel fast path.",
                "fastdp_rx_bytes" => "Bytes of frames received through the kernel fast path.",
                "fastdp_tx_bytes" => "Bytes of frames sent through the kernel fast path.",
                "fastdp_rx_dropped" => "Frames the kernel fast path's devices dropped on receive.",
                "fastdp_tx_dropped" => "Frames the kernel fast path's devices dropped on send.",
                "gossip_bytes_sent" => "Gossip bytes sent.",
                "gossip_bytes_received" => "Gossip bytes received.",
                "gossip_messages_sent" => "Gossip messages sent.",
                "gossip_messages_received" => "Gossip messages received.",
                _ => "A weft counter.",
            });
        e.add(
            &format!("weft_{name}_total"),
            "counter",
            h,
            "",
            value.to_string(),
        );
    }
    for st in [
        ConnState::Connecting,
        ConnState::Retrying,
        ConnState::Pending,
        ConnState::Established,
        ConnState::Failed,
    ] {
        let n = r.connections.iter().filter(|c| c.state == st).count();
        e.add(
            "weft_connections",
            "gauge",
            "Control connections and dialled targets by state.",
            &format!("{{state=\"{}\"}}", crate::api::state_name(st)),
            n.to_string(),
        );
    }
    for l in &r.links {
        let labels = format!(
            "{{address=\"{}\",peer=\"{}\",nickname=\"{}\"}}",
            l.address,
            l.peer,
            l.nickname.replace(['\\', '"', '\n'], "_")
        );
        for (name, help, v) in [
            (
                "weft_link_tx_bytes_total",
                "Bytes sent to a neighbour.",
                l.counters.tx_bytes,
            ),
            (
                "weft_link_rx_bytes_total",
                "Bytes received from a neighbour.",
                l.counters.rx_bytes,
            ),
            (
                "weft_link_tx_datagrams_total",
                "Datagrams sent to a neighbour.",
                l.counters.tx_datagrams,
            ),
            (
                "weft_link_rx_datagrams_total",
                "Datagrams received from a neighbour.",
                l.counters.rx_datagrams,
            ),
        ] {
            e.add(name, "counter", help, &labels, v.to_string());
        }
    }
    e.add(
        "weft_peers",
        "gauge",
        "Peers known, ourselves included.",
        "",
        r.peers.len().to_string(),
    );
    e.render(out);
}

/// The whole exposition: Weave's metrics, then weft's.
pub fn render(r: &StatusReport, w: &WeaveStatus) -> String {
    let mut out = String::new();
    weave(w, &mut out);
    weft(r, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_as_prometheus_writes_them() {
        assert_eq!(float(50.0), "50");
        assert_eq!(float(12.5), "12.5");
        assert_eq!(float(f64::NAN), "NaN");
    }
}
