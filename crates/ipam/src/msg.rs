//! Layer: pure logic. The IPAM messages peers exchange (postcard-encoded payloads of the IPAM
//! gossip channel): ring gossip, the consensus (single-decree Paxos) messages, and space and
//! claim requests with their answers.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use weft_mesh::PeerName;

use crate::ring::Ring;

/// A Paxos ballot: a round number, ties broken by the proposer's name.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Ballot {
    pub(crate) round: u64,
    pub(crate) proposer: PeerName,
}

/// Every payload: the sender's allocation range (peers with different ranges never vote
/// together or merge) and the message.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub(crate) struct Envelope {
    pub(crate) universe: Ipv4Net,
    pub(crate) msg: Message,
}

/// One IPAM message.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub(crate) enum Message {
    /// The sender's ring (broadcast after changes and periodically, unicast in answers).
    Ring { nickname: String, ring: Ring },
    /// An observer (or a peer priming) asks for a ring; electors without one start consensus.
    RingRequest { nickname: String },
    /// Paxos phase 1a.
    Prepare { ballot: Ballot },
    /// Paxos phase 1b, unicast to the proposer.
    Promise {
        ballot: Ballot,
        accepted: Option<(Ballot, Vec<PeerName>)>,
    },
    /// The acceptor has promised a higher ballot.
    Nack { ballot: Ballot, promised: Ballot },
    /// Paxos phase 2a.
    Accept {
        ballot: Ballot,
        value: Vec<PeerName>,
    },
    /// Paxos phase 2b, broadcast so every peer learns.
    Accepted {
        ballot: Ballot,
        value: Vec<PeerName>,
    },
    /// Please donate free space in `subnet`.
    SpaceRequest { subnet: Ipv4Net },
    /// Answer to a space or claim request: the donor's ring, which now names the requester as
    /// owner of the donated range.
    Donated { ring: Ring },
    /// The sender has no free space in `subnet`.
    SpaceDenied { subnet: Ipv4Net, ring: Ring },
    /// Please give up the single address `addr`.
    ClaimRequest { addr: Ipv4Addr },
    /// Refusal of a claim: the address is in use (`in_use`) or not the sender's.
    ClaimDenied {
        addr: Ipv4Addr,
        in_use: bool,
        ring: Ring,
    },
}

impl Envelope {
    pub(crate) fn encode(&self) -> Vec<u8> {
        // Encoding into a Vec only fails on allocation failure or for types serde cannot
        // represent; ours are plain data.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        postcard::from_bytes(bytes).ok()
    }
}
