//! Layer: pure logic. The errors IPAM reports: user-facing messages for the HTTP API and CLI.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use weft_mesh::PeerName;

use crate::ring::MergeError;

/// Why an IPAM operation failed. The messages are shown to users as they are.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    /// An address or subnet lies (partly) outside the allocation range.
    #[error("{addr} is outside the allocation range {range}")]
    OutsideRange {
        /// What was asked for.
        addr: Ipv4Net,
        /// The allocation range.
        range: Ipv4Net,
    },
    /// A subnet has fewer than 4 addresses (no room for hosts besides network and broadcast).
    #[error(
        "subnet {subnet} is too small: a subnet needs at least 4 addresses (prefix /30 or shorter)"
    )]
    SubnetTooSmall {
        /// What was asked for.
        subnet: Ipv4Net,
    },
    /// A subnet was given with host bits set.
    #[error("{subnet} is not a network address (did you mean {network}?)")]
    NotNetwork {
        /// What was asked for.
        subnet: Ipv4Net,
        /// The network it lies in.
        network: Ipv4Net,
    },
    /// The configured default subnet is not inside the allocation range.
    #[error("default subnet {subnet} is not inside the allocation range {range}")]
    DefaultSubnetOutside {
        /// The default subnet.
        subnet: Ipv4Net,
        /// The allocation range.
        range: Ipv4Net,
    },
    /// The allocation range cannot be used (it must be smaller than the whole address space and
    /// must not include 255.255.255.255).
    #[error("invalid allocation range {range}: {reason}")]
    InvalidRange {
        /// The range.
        range: Ipv4Net,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The address is already allocated to another container.
    #[error("address {addr} is already owned by {ident}")]
    AddressInUse {
        /// The address.
        addr: Ipv4Addr,
        /// Who has it.
        ident: String,
    },
    /// The address belongs to another peer, which refused to give it up.
    #[error("address {addr} is owned by other peer {peer}")]
    OwnedByOther {
        /// The address.
        addr: Ipv4Addr,
        /// Its owner.
        peer: PeerName,
    },
    /// The address belongs to another peer that did not answer.
    #[error("address {addr} is owned by peer {peer}, which did not answer; try again later")]
    OwnerUnreachable {
        /// The address.
        addr: Ipv4Addr,
        /// Its owner.
        peer: PeerName,
    },
    /// No free address is left in the subnet anywhere in the network.
    #[error("no free addresses left in {subnet}")]
    Exhausted {
        /// The subnet.
        subnet: Ipv4Net,
    },
    /// The request was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// IPAM has no ring yet (consensus not reached), or has shut down.
    #[error("IP allocation is not ready: {0}")]
    NotReady(&'static str),
    /// A ring received from a peer could not be merged.
    #[error(transparent)]
    Merge(#[from] MergeError),
    /// A message from a peer could not be decoded.
    #[error("malformed IPAM message")]
    Decode,
    /// A message from a peer decoded but makes no sense.
    #[error("invalid IPAM message: {0}")]
    InvalidMessage(&'static str),
    /// Stored state belongs to another peer.
    #[error("stored IPAM state belongs to peer {stored}, not to this peer {ours}")]
    WrongPeer {
        /// The name in the stored state.
        stored: PeerName,
        /// Our name.
        ours: PeerName,
    },
    /// Stored state is for another allocation range.
    #[error("stored IPAM state is for allocation range {stored}, not {ours}")]
    WrongUniverse {
        /// The range in the stored state.
        stored: Ipv4Net,
        /// Our range.
        ours: Ipv4Net,
    },
    /// Stored state has a format version we do not understand.
    #[error("stored IPAM state has unsupported format version {0}")]
    SnapshotVersion(u32),
    /// rmpeer of a peer that is still reachable.
    #[error("peer {0} is still reachable; rmpeer is only for peers that are gone for good")]
    PeerReachable(PeerName),
    /// rmpeer of a peer whose ranges another peer already took over.
    #[error("peer {peer} was already removed by {by}; its ranges were taken over")]
    AlreadyTakenOver {
        /// The removed peer.
        peer: PeerName,
        /// Who took it over.
        by: PeerName,
    },
    /// rmpeer of a peer IPAM knows nothing about.
    #[error("unknown peer {0}")]
    UnknownPeer(PeerName),
    /// rmpeer of ourselves.
    #[error("cannot rmpeer this peer itself; use reset")]
    RemoveSelf,
    /// rmpeer (not forced) of a peer seen a short while ago.
    #[error(
        "peer {peer} was reachable {secs} s ago: it may be alive on the other side of a \
         partition, and taking its ranges would hand its addresses out twice; if it is gone \
         for good, use rmpeer --force"
    )]
    RecentlySeen {
        /// The peer.
        peer: PeerName,
        /// Seconds since it was last seen.
        secs: u64,
    },
    /// The change could not be stored; it was undone.
    #[error(
        "the IP allocation state could not be stored ({0}); nothing was handed out or released"
    )]
    NotStored(String),
}
