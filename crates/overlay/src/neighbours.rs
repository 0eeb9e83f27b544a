//! Layer: pure logic. The engine's per-neighbour records: everything the data path keeps about
//! one neighbour (by underlay address) in one place: the table's entry for it, its encryption
//! link, the longest inner frame its path takes, and the traffic exchanged with it.
//!
//! Records live in a slab and are named by a [`LinkId`]. A received datagram's sender is found
//! once, by one hash of its address ([`Engine::link_at`](crate::Engine::link_at)); a send finds
//! its neighbour's record by the short id of the table entry it goes to (an array index, no
//! hash). Records are never freed, so a [`LinkId`] stays valid, and a neighbour's traffic
//! counts since the router started; there is one per address the control plane ever named
//! (in a table, a link or a path limit), never one per sender heard from.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::PeerEntry;
use crate::links::Link;

/// A neighbour's record in the engine (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LinkId(u32);

/// Traffic exchanged with one neighbour since the router started. Bytes are UDP payload bytes
/// (VXLAN header and frame; received bytes include the sealing overhead); relayed datagrams
/// count on both of the relay's links.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkTraffic {
    /// Bytes sent to it.
    pub tx_bytes: u64,
    /// Datagrams sent to it.
    pub tx_datagrams: u64,
    /// Bytes received from it.
    pub rx_bytes: u64,
    /// Datagrams received from it.
    pub rx_datagrams: u64,
}

/// One neighbour, by underlay address.
#[derive(Debug)]
pub(crate) struct Neighbour {
    pub(crate) ip: IpAddr,
    /// The current table's neighbour at this address; `None`: not a neighbour now.
    pub(crate) peer: Option<PeerEntry>,
    /// How traffic with it is protected; `None`: no link (no keys yet).
    pub(crate) link: Option<Link>,
    /// The longest inner frame its path takes; `None`: no limit known.
    pub(crate) max_frame: Option<u16>,
    /// Its data path takes segments whose checksum is left partial (`CSUM_PARTIAL`): the
    /// connection of its link settled on a protocol version that has them.
    pub(crate) partial_csum: bool,
    pub(crate) traffic: LinkTraffic,
}

/// Every neighbour's record.
#[derive(Debug)]
pub(crate) struct Neighbours {
    records: Vec<Neighbour>,
    by_ip: HashMap<IpAddr, LinkId>,
    /// Short id → the record of the current table's neighbour with that short id.
    by_short: Vec<Option<LinkId>>,
    /// A copy of a datagram while it is tried under new keys (see [`Link::open`]).
    scratch: Vec<u8>,
}

impl Neighbours {
    pub(crate) fn new(short_ids: usize) -> Self {
        Self {
            records: Vec::new(),
            by_ip: HashMap::new(),
            by_short: vec![None; short_ids],
            scratch: Vec::new(),
        }
    }

    /// The record of `ip`, if the control plane ever named it.
    pub(crate) fn at(&self, ip: IpAddr) -> Option<LinkId> {
        self.by_ip.get(&ip).copied()
    }

    /// The record of the current table's neighbour with this short id (by slot).
    pub(crate) fn by_short(&self, slot: usize) -> Option<LinkId> {
        self.by_short.get(slot).copied().flatten()
    }

    /// The record of `ip`, made if missing.
    pub(crate) fn ensure(&mut self, ip: IpAddr) -> LinkId {
        if let Some(&id) = self.by_ip.get(&ip) {
            return id;
        }
        // A neighbour per address the control plane named: far below u32::MAX.
        let id = LinkId(u32::try_from(self.records.len()).unwrap_or(u32::MAX));
        self.records.push(Neighbour {
            ip,
            peer: None,
            link: None,
            max_frame: None,
            partial_csum: false,
            traffic: LinkTraffic::default(),
        });
        self.by_ip.insert(ip, id);
        id
    }

    pub(crate) fn get(&self, id: LinkId) -> &Neighbour {
        &self.records[id.0 as usize]
    }

    pub(crate) fn get_mut(&mut self, id: LinkId) -> &mut Neighbour {
        &mut self.records[id.0 as usize]
    }

    /// The record and the scratch buffer for opening its datagrams.
    pub(crate) fn get_mut_with_scratch(&mut self, id: LinkId) -> (&mut Neighbour, &mut Vec<u8>) {
        (&mut self.records[id.0 as usize], &mut self.scratch)
    }

    /// Forget which records the previous table's neighbours were.
    pub(crate) fn clear_table(&mut self) {
        for r in &mut self.records {
            r.peer = None;
        }
        self.by_short.fill(None);
    }

    /// Record `peer` (at `slot`) as the table's neighbour `id` stands for.
    pub(crate) fn set_short(&mut self, slot: usize, id: LinkId) {
        if let Some(s) = self.by_short.get_mut(slot) {
            *s = Some(id);
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Neighbour> + '_ {
        self.records.iter()
    }
}
