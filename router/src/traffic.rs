//! Layer: driver. Per-link traffic: bytes and datagrams the data plane sent to and received
//! from each neighbour (by underlay address), for the topology page's link rates and the
//! `weft_link_*` metrics.
//!
//! The forwarding engine counts in each neighbour's record ([`weft_overlay::LinkTraffic`]);
//! the data plane copies them into its [`LinkTraffic`] and hands that over with its counters a
//! few times a second. Bytes are UDP payload bytes (VXLAN header and frame; sent bytes without
//! the sealing overhead); relayed datagrams count on both of the relay's links. A link on the
//! kernel fast path adds its device's counters ([`LinkTraffic::add_fastdp`]).

use std::collections::HashMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// One neighbour's traffic since the router started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkCounters {
    /// Bytes sent to it.
    pub tx_bytes: u64,
    /// Datagrams sent to it.
    pub tx_datagrams: u64,
    /// Bytes received from it.
    pub rx_bytes: u64,
    /// Datagrams received from it.
    pub rx_datagrams: u64,
}

/// Every neighbour's [`LinkCounters`].
#[derive(Debug, Clone, Default)]
pub struct LinkTraffic {
    links: HashMap<IpAddr, LinkCounters>,
}

impl LinkTraffic {
    /// The neighbour at `ip` has exchanged `t` so far (the engine's count).
    pub fn set(&mut self, ip: IpAddr, t: weft_overlay::LinkTraffic) {
        self.links.insert(
            ip,
            LinkCounters {
                tx_bytes: t.tx_bytes,
                tx_datagrams: t.tx_datagrams,
                rx_bytes: t.rx_bytes,
                rx_datagrams: t.rx_datagrams,
            },
        );
    }

    /// Adds what the kernel fast path's device for the neighbour at `ip` carried (frames as
    /// they entered and left the device, so bytes without the VXLAN/UDP/IP headers).
    pub fn add_fastdp(&mut self, ip: IpAddr, s: &weft_sys::netlink::LinkStats) {
        let c = self.links.entry(ip).or_default();
        c.tx_bytes += s.tx_bytes;
        c.tx_datagrams += s.tx_packets;
        c.rx_bytes += s.rx_bytes;
        c.rx_datagrams += s.rx_packets;
    }

    /// Adds `other`'s counts (another data-plane thread's) to these.
    pub fn add(&mut self, other: &Self) {
        for (ip, o) in other.iter() {
            let c = self.links.entry(ip).or_default();
            c.tx_bytes += o.tx_bytes;
            c.tx_datagrams += o.tx_datagrams;
            c.rx_bytes += o.rx_bytes;
            c.rx_datagrams += o.rx_datagrams;
        }
    }

    /// The counters of the neighbour at `ip` (zero if nothing was exchanged).
    pub fn get(&self, ip: IpAddr) -> LinkCounters {
        self.links.get(&ip).copied().unwrap_or_default()
    }

    /// Every neighbour, by address.
    pub fn iter(&self) -> impl Iterator<Item = (IpAddr, LinkCounters)> + '_ {
        self.links.iter().map(|(ip, c)| (*ip, *c))
    }
}

/// One link in `GET /status` (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkReport {
    /// The neighbour's underlay address.
    pub address: String,
    /// Its peer name, if a connection or the topology says who it is.
    #[serde(default)]
    pub peer: String,
    /// Its nickname, if known.
    #[serde(default)]
    pub nickname: String,
    /// What was exchanged with it.
    #[serde(flatten)]
    pub counters: LinkCounters,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_neighbour() {
        let a: IpAddr = [192, 0, 2, 11].into();
        let b: IpAddr = [192, 0, 2, 12].into();
        let mut t = LinkTraffic::default();
        t.set(
            a,
            weft_overlay::LinkTraffic {
                tx_bytes: 1500,
                tx_datagrams: 3,
                ..Default::default()
            },
        );
        t.set(
            b,
            weft_overlay::LinkTraffic {
                rx_bytes: 64,
                rx_datagrams: 1,
                ..Default::default()
            },
        );
        assert_eq!(
            t.get(a),
            LinkCounters {
                tx_bytes: 1500,
                tx_datagrams: 3,
                ..LinkCounters::default()
            }
        );
        assert_eq!(t.get(b).rx_bytes, 64);
        assert_eq!(t.iter().count(), 2);
        assert_eq!(t.get([192, 0, 2, 99].into()), LinkCounters::default());
    }
}
