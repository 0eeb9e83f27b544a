//! Layer: driver. Per-link traffic: bytes and datagrams the data plane sent to and received
//! from each neighbour (by underlay address), for the topology page's link rates and the
//! `weft_link_*` metrics.
//!
//! The data plane counts into its own [`LinkTraffic`] (a map lookup per run of datagrams to
//! one neighbour, no allocation once the neighbour is known) and hands a copy over with its
//! counters a few times a second. Bytes are UDP payload bytes (VXLAN header and frame,
//! without the sealing overhead); relayed datagrams count on both of the relay's links.

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
    /// `datagrams` datagrams of `bytes` bytes in all went to `to`.
    pub fn sent(&mut self, to: IpAddr, bytes: usize, datagrams: usize) {
        let c = self.links.entry(to).or_default();
        c.tx_bytes += bytes as u64;
        c.tx_datagrams += datagrams as u64;
    }

    /// `datagrams` datagrams of `bytes` bytes in all came from `from`.
    pub fn received(&mut self, from: IpAddr, bytes: usize, datagrams: usize) {
        let c = self.links.entry(from).or_default();
        c.rx_bytes += bytes as u64;
        c.rx_datagrams += datagrams as u64;
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
        t.sent(a, 1000, 2);
        t.sent(a, 500, 1);
        t.received(b, 64, 1);
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
