//! Layer: pure logic. [`Ipam`], the sans-IO IP allocation state machine of one peer.
//!
//! It owns the [`Ring`], this peer's allocations (address → container ident), the pending
//! allocate/claim requests, the consensus state and its timers. The driver (the router) feeds
//! it requests, peer-set changes, received payloads and timeouts; it sends what
//! [`Ipam::poll_transmit`] yields ([`Dest::Broadcast`] floods to every peer, [`Dest::Unicast`]
//! goes to one peer) and answers the completions [`Ipam::poll_event`] yields.
//!
//! **Durable before visible.** Every change of what must survive a restart (the ring, our
//! allocations) is only shown to anyone once the driver has stored it: [`Ipam::poll_commit`]
//! hands out a [`Commit`] (a [`Snapshot`] of everything so far) and every payload and completion
//! produced since the last stored state is held back until the driver reports with
//! [`Ipam::stored`] that the snapshot is on disk. If it could not be stored, the state machine
//! rolls back to the last stored state: held payloads are dropped, held successful completions
//! become [`IpamError::NotStored`] (nothing was handed out, nothing released), and
//! [`IpamStatus::store_error`] says why until a store succeeds again. One commit is in flight at
//! a time; whatever changes meanwhile goes into the next one, so concurrent requests share one
//! write (group commit).
//!
//! Behaviour, after Weave's `ipam`:
//!
//! - **Lazy initialisation.** Nothing happens until the first allocate, claim or
//!   [`Ipam::prime`]. Then, with [`InitMode::Seed`] the ring is divided among the seeds (done
//!   at construction: every seed computes the same ring); with [`InitMode::Observer`] we
//!   broadcast a ring request every 5 s until some peer's ring arrives; with
//!   [`InitMode::Consensus`] the electors run **single-decree Paxos** over broadcast: the value
//!   is the set of electors that promised to the successful proposer (at least a quorum of
//!   `N/2 + 1`), and every peer that learns it (a quorum of `Accepted` messages) divides the
//!   universe among that set with [`Ring::claim_for_peers`]. Paxos guarantees every peer
//!   adopts the same set even when their views differ. Proposers defer to a higher ballot and
//!   re-propose every 5 s (with jitter) until a ring exists. A peer that receives a ring adopts
//!   it and stops voting.
//! - **Ring gossip.** The ring is broadcast after every structural change, one second after
//!   free-count changes (batched), when new peers become reachable and every
//!   [`GOSSIP_INTERVAL`]. A received ring that lacks something ours has is answered with ours.
//! - **Allocation.** The lowest free host address of the subnet (network and broadcast
//!   excluded) in ranges we own. When we have none, we ask a reachable peer that advertises free
//!   space there (weighted random by that space) to donate; it gives its largest free chunk in
//!   the subnet, or the upper half of it when the chunk is more than half its free space, or
//!   denies. Requests are retried every [`RETRY_INTERVAL`]; when every peer with space in the
//!   subnet has denied, pending allocations fail with [`IpamError::Exhausted`].
//! - **Claims.** An address we own is recorded; one owned by another peer is requested from it
//!   (single-address donation), at most [`CLAIM_ATTEMPTS`] times; one outside the universe is
//!   recorded without coordination.
//! - **Dead containers.** [`Ipam::container_died`] marks an ident dead: its addresses are kept
//!   [`DEAD_TIMEOUT`] for a restart ([`Ipam::container_started`], or a new request by the same
//!   ident, revives it), then released; an explicit claim of one of them by another ident takes
//!   it at once. [`Ipam::container_destroyed`] releases everything immediately.
//! - **Leaving.** [`Ipam::shutdown`] hands all our ranges to an heir; [`Ipam::rmpeer`] takes a
//!   dead peer's ranges, refusing when that is unsafe (and, without `force`, for a peer seen
//!   within [`RMPEER_GRACE`]: it may only be partitioned away).
//! - **Conflicting claims after a heal.** The ring merge is a join, so every peer ends with the
//!   same ring. Addresses we handed out in a range the merge gave to another peer are kept and
//!   asked back from the new owner, address by address (a claim); when the owner has handed the
//!   same address out too, ours is released here (the range's owner keeps it) and the duplicate
//!   is reported ([`IpamEvent::Conflict`], [`IpamStatus::conflicts`], [`IpamStats::conflicts`]).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use weft_mesh::{Instant, PeerName};

use crate::error::IpamError;
use crate::msg::{Ballot, Envelope, Message};
use crate::ring::{Ring, net_bounds};
use weft_mesh::rng::Rng;

/// How often pending space requests, claims, ring requests and consensus are retried.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(5);
/// How often the whole ring is broadcast even without changes.
pub const GOSSIP_INTERVAL: Duration = Duration::from_secs(30);
/// Free-count changes (allocations) are batched this long before the ring is broadcast.
pub const FREE_BATCH_DELAY: Duration = Duration::from_secs(1);
/// A claim of an address owned by an unresponsive peer gives up after this many requests.
pub const CLAIM_ATTEMPTS: u32 = 5;
/// Format version of [`Snapshot`].
pub const SNAPSHOT_VERSION: u32 = 1;
/// A container reported dead keeps its addresses this long (for a restart), unless another
/// ident claims one of them explicitly first.
pub const DEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// rmpeer of a peer seen (reachable, or heard from) less than this long ago is refused unless
/// forced: it may be alive on the other side of a partition.
pub const RMPEER_GRACE: Duration = Duration::from_secs(300);
/// How many reported conflicts [`IpamStatus::conflicts`] keeps (the most recent ones).
pub const MAX_CONFLICTS: usize = 32;

/// How the ring is created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InitMode {
    /// Electors agree on the initial peer set by consensus. `quorum` is the expected number of
    /// peers `N` (`--ipalloc-init consensus=N`); the quorum is `N/2 + 1`. `None`: `N` comes
    /// from [`Ipam::set_quorum_hint`] (targets + 1), or 1 if never given.
    Consensus {
        /// The expected number of peers `N` (not the quorum itself).
        quorum: Option<usize>,
    },
    /// The ring is divided among these peers at once; every peer must be given the same list.
    Seed(Vec<PeerName>),
    /// Never votes and owns nothing at first; gets the ring from other peers.
    Observer,
}

/// Identifies an allocate or claim request in [`IpamEvent::Done`].
pub type RequestId = u64;

/// Where a payload goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    /// Every peer (the router floods it).
    Broadcast,
    /// One peer (routed hop by hop).
    Unicast(PeerName),
}

/// What the driver must act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IpamEvent {
    /// A request completed (once its outcome is stored): the address of an allocate or claim,
    /// nothing for [`Ipam::sync`].
    Done {
        /// The request.
        id: RequestId,
        /// The addresses, or why not.
        result: Result<Vec<Ipv4Net>, IpamError>,
    },
    /// An address was found in use twice (stored before it is yielded): log it.
    Conflict(Conflict),
}

/// A snapshot the driver must store (write and sync) before anything that depends on it is
/// yielded; report the outcome with [`Ipam::stored`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    /// Pass it back to [`Ipam::stored`].
    pub id: u64,
    /// What to store.
    pub snapshot: Snapshot,
}

/// An address found in use twice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The address.
    pub addr: Ipv4Addr,
    /// What happened, for people.
    pub detail: String,
    /// When it was found.
    pub at: Instant,
}

/// Configuration of an [`Ipam`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpamConfig {
    /// The allocation range (`--ipalloc-range`).
    pub universe: Ipv4Net,
    /// The subnet used when an allocation names none (`--ipalloc-default-subnet`).
    pub default_subnet: Ipv4Net,
    /// How the ring is created.
    pub init: InitMode,
}

/// Where initialisation and allocation stand, for `weft status ipam`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IpamState {
    /// Nothing asked for an address yet: no ring.
    Idle,
    /// Waiting for consensus on the initial ring.
    AwaitingConsensus {
        /// Votes needed.
        quorum: usize,
        /// Electors heard from so far (ourselves included).
        known: usize,
    },
    /// Observer waiting for another peer's ring.
    Priming,
    /// Ring present, nothing waiting.
    Ready,
    /// Allocations wait for another peer to donate space.
    WaitingForSpace,
    /// Allocations wait, and every peer with space is unreachable.
    AllOwnersUnreachable,
    /// [`Ipam::shutdown`] ran.
    ShutDown,
}

impl fmt::Display for IpamState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Idle => f.write_str("idle"),
            Self::AwaitingConsensus { quorum, known } => {
                write!(f, "awaiting consensus: quorum {quorum}, known {known}")
            }
            Self::Priming => f.write_str("priming: waiting for a ring from another peer"),
            Self::Ready => f.write_str("ready"),
            Self::WaitingForSpace => f.write_str("waiting for IP(s) to become available"),
            Self::AllOwnersUnreachable => f.write_str(
                "all IP ranges owned by unreachable peers - use 'rmpeer' if they are dead",
            ),
            Self::ShutDown => f.write_str("shut down"),
        }
    }
}

/// One peer's share of the ring.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerShare {
    /// The peer.
    pub peer: PeerName,
    /// Its nickname, if known.
    pub nickname: Option<String>,
    /// Addresses it owns.
    pub owned: u64,
    /// Of those, free as it last reported.
    pub free: u64,
    /// `owned` as a percentage of the universe.
    pub percent: f64,
    /// Whether it is reachable now (always true for ourselves).
    pub reachable: bool,
}

/// IPAM status for `weft status ipam`.
#[derive(Clone, Debug, PartialEq)]
pub struct IpamStatus {
    /// Initialisation / allocation state.
    pub state: IpamState,
    /// The allocation range.
    pub range: Ipv4Net,
    /// The default subnet.
    pub default_subnet: Ipv4Net,
    /// Ring owners, largest share first.
    pub peers: Vec<PeerShare>,
    /// Allocate/claim requests waiting.
    pub pending: usize,
    /// Addresses allocated on this peer.
    pub allocated: usize,
    /// Why the last attempt to store the state failed, while storing fails.
    pub store_error: Option<String>,
    /// Our allocations in ranges another peer now owns, being asked back.
    pub orphans: usize,
    /// Duplicates found, most recent last (at most [`MAX_CONFLICTS`]).
    pub conflicts: Vec<Conflict>,
    /// The ring's ranges in address order (Weave's `IPAM.Entries`).
    pub ranges: Vec<RangeStatus>,
    /// Allocations waiting: the container ident and the subnet asked for.
    pub pending_allocates: Vec<(String, Ipv4Net)>,
    /// Claims waiting: the container ident and the address (with its prefix) claimed.
    pub pending_claims: Vec<(String, Ipv4Net)>,
}

/// One range of the ring, for status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeStatus {
    /// First address.
    pub start: Ipv4Addr,
    /// Number of addresses.
    pub size: u64,
    /// The peer that owns it.
    pub owner: PeerName,
    /// The owner's nickname, if known.
    pub nickname: Option<String>,
    /// The owner is ourselves or reachable.
    pub reachable: bool,
    /// The range's version.
    pub version: u32,
    /// Free addresses in it, as its owner last reported.
    pub free: u32,
}

/// Message counters (for the harness and metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IpamStats {
    /// Payloads handed to the driver.
    pub messages_sent: u64,
    /// Bytes in those payloads.
    pub bytes_sent: u64,
    /// Payloads received (valid or not).
    pub messages_received: u64,
    /// Payloads refused with an error.
    pub errors: u64,
    /// Snapshots that could not be stored.
    pub store_failures: u64,
    /// Addresses found in use twice.
    pub conflicts: u64,
}

/// One address this peer has handed out.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct OwnedAddress {
    /// The container (or `weave:expose`, or the address itself for anonymous callers).
    pub ident: String,
    /// The address with its subnet's prefix length.
    pub addr: Ipv4Net,
}

/// Everything IPAM persists.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// [`SNAPSHOT_VERSION`].
    pub version: u32,
    /// Our peer name.
    pub peer: PeerName,
    /// The allocation range.
    pub universe: Ipv4Net,
    /// The ring.
    pub ring: Ring,
    /// Our allocations.
    pub owned: Vec<OwnedAddress>,
    /// While there is no ring: what this peer promised and accepted in the consensus on the
    /// first one, so that neither a restart nor a failed store can make it vote twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acceptor: Option<Acceptor>,
}

/// A consensus acceptor's memory (see [`Snapshot::acceptor`]). Ballots are (round, proposer).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Acceptor {
    /// The highest ballot promised.
    pub promised: Option<(u64, PeerName)>,
    /// The value accepted last, with its ballot.
    pub accepted: Option<((u64, PeerName), Vec<PeerName>)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    Consensus,
    Priming,
    Ready,
    ShutDown,
}

#[derive(Clone, Debug)]
enum Kind {
    Allocate { subnet: Ipv4Net },
    Claim { addr: Ipv4Net },
}

#[derive(Clone, Debug)]
struct Pending {
    id: RequestId,
    ident: String,
    kind: Kind,
}

/// An outstanding request for space in one subnet.
#[derive(Clone, Debug, Default)]
struct Ask {
    /// Donor asked and when.
    outstanding: Option<(PeerName, Instant)>,
    /// Donors that denied since the last retry tick.
    denied: BTreeSet<PeerName>,
    /// Every peer with space is unreachable.
    unreachable: bool,
}

/// One of our allocations in a range another peer owns now, asked back from it.
#[derive(Clone, Debug)]
struct OrphanAsk {
    /// When we last asked (`None`: not yet).
    at: Option<Instant>,
}

#[derive(Clone, Debug)]
struct ClaimAsk {
    owner: PeerName,
    at: Instant,
    attempts: u32,
}

#[derive(Clone, Debug)]
struct Proposal {
    ballot: Ballot,
    promises: BTreeMap<PeerName, Option<(Ballot, Vec<PeerName>)>>,
    accept_sent: bool,
}

#[derive(Clone, Debug, Default)]
struct Paxos {
    promised: Option<Ballot>,
    accepted: Option<(Ballot, Vec<PeerName>)>,
    proposal: Option<Proposal>,
    max_round: u64,
    /// Learner: per ballot, the value and who accepted it.
    votes: BTreeMap<Ballot, (Vec<PeerName>, BTreeSet<PeerName>)>,
    /// Electors heard from (for status).
    heard: BTreeSet<PeerName>,
    /// When to (re)propose.
    propose_at: Option<Instant>,
}

/// The IP allocation state machine of one peer. See the module documentation.
#[derive(Debug)]
pub struct Ipam {
    local: PeerName,
    nickname: String,
    config: IpamConfig,
    rng: Rng,
    ring: Ring,
    phase: Phase,
    allocs: BTreeMap<u32, (String, u8)>,
    /// The allocated addresses as maximal runs `start -> end` (exclusive), so the lowest free
    /// address is found in O(log n).
    runs: BTreeMap<u32, u64>,
    by_ident: BTreeMap<String, BTreeSet<u32>>,
    /// Idents reported dead, and when (their addresses go after [`DEAD_TIMEOUT`]).
    dead: BTreeMap<String, Instant>,
    pending: Vec<Pending>,
    next_id: RequestId,
    known: BTreeSet<PeerName>,
    reachable: BTreeSet<PeerName>,
    nicknames: BTreeMap<PeerName, String>,
    quorum_hint: Option<usize>,
    paxos: Paxos,
    asks: BTreeMap<Ipv4Net, Ask>,
    claim_asks: BTreeMap<u32, ClaimAsk>,
    retry_at: Option<Instant>,
    prime_at: Option<Instant>,
    gossip_at: Option<Instant>,
    free_at: Option<Instant>,
    ring_dirty: bool,
    /// Payloads, each tagged with the change count it depends on.
    out: VecDeque<(u64, Dest, Vec<u8>)>,
    /// Completions and reports, tagged likewise.
    events: VecDeque<(u64, IpamEvent)>,
    stats: IpamStats,
    /// Changes made so far (the tag of everything produced now).
    changes: u64,
    /// Changes known to be stored: outputs tagged up to this are released.
    stored: u64,
    /// The last stored state, to roll back to.
    committed: Snapshot,
    /// Whether the last stored state was after [`Ipam::shutdown`].
    committed_shut_down: bool,
    /// The commit being stored.
    in_flight: Option<(u64, Snapshot, bool)>,
    store_error: Option<String>,
    /// When each peer was last reachable or heard from.
    last_seen: BTreeMap<PeerName, Instant>,
    orphans: BTreeMap<u32, OrphanAsk>,
    /// Reported conflicts, tagged like outputs.
    conflicts: VecDeque<(u64, Conflict)>,
}

fn host_range(subnet: Ipv4Net) -> (u32, u64) {
    let (s, e) = net_bounds(subnet);
    (s + 1, e - 1)
}

fn to_u32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

impl Ipam {
    /// A new IPAM for peer `local`. Fails if the universe or default subnet is unusable.
    pub fn new(
        local: PeerName,
        nickname: String,
        config: IpamConfig,
        seed: u64,
        now: Instant,
    ) -> Result<Self, IpamError> {
        let u = config.universe;
        if u != u.trunc() {
            return Err(IpamError::NotNetwork {
                subnet: u,
                network: u.trunc(),
            });
        }
        if u.prefix_len() == 0 || net_bounds(u).1 > u64::from(u32::MAX) {
            return Err(IpamError::InvalidRange {
                range: u,
                reason: "it must not include 255.255.255.255",
            });
        }
        if u.prefix_len() > 30 {
            return Err(IpamError::SubnetTooSmall { subnet: u });
        }
        let d = config.default_subnet;
        if !u.contains(&d) {
            return Err(IpamError::DefaultSubnetOutside {
                subnet: d,
                range: u,
            });
        }
        if d.prefix_len() > 30 {
            return Err(IpamError::SubnetTooSmall { subnet: d });
        }
        if d != d.trunc() {
            return Err(IpamError::NotNetwork {
                subnet: d,
                network: d.trunc(),
            });
        }
        let mut ring = Ring::new(u);
        let mut phase = Phase::Idle;
        if let InitMode::Seed(seeds) = &config.init {
            if seeds.is_empty() {
                return Err(IpamError::NotReady("the seed list is empty"));
            }
            ring.claim_for_peers(seeds);
            phase = Phase::Ready;
        }
        let mut nicknames = BTreeMap::new();
        nicknames.insert(local, nickname.clone());
        let baseline = Snapshot {
            version: SNAPSHOT_VERSION,
            peer: local,
            universe: u,
            ring: ring.clone(),
            owned: Vec::new(),
            acceptor: None,
        };
        Ok(Self {
            local,
            nickname,
            config,
            rng: Rng::new(seed),
            ring,
            phase,
            allocs: BTreeMap::new(),
            runs: BTreeMap::new(),
            by_ident: BTreeMap::new(),
            dead: BTreeMap::new(),
            pending: Vec::new(),
            next_id: 1,
            known: BTreeSet::new(),
            reachable: BTreeSet::new(),
            nicknames,
            quorum_hint: None,
            paxos: Paxos::default(),
            asks: BTreeMap::new(),
            claim_asks: BTreeMap::new(),
            retry_at: None,
            prime_at: None,
            gossip_at: Some(now + GOSSIP_INTERVAL),
            free_at: None,
            ring_dirty: false,
            out: VecDeque::new(),
            events: VecDeque::new(),
            stats: IpamStats::default(),
            changes: 0,
            stored: 0,
            // A seeded ring follows from the configuration alone: nothing to store yet.
            committed: baseline,
            committed_shut_down: false,
            in_flight: None,
            store_error: None,
            last_seen: BTreeMap::new(),
            orphans: BTreeMap::new(),
            conflicts: VecDeque::new(),
        })
    }

    /// Our peer name.
    pub fn local(&self) -> PeerName {
        self.local
    }

    /// The ring.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// Message counters.
    pub fn stats(&self) -> IpamStats {
        self.stats
    }

    /// Whether `addr` is one of our allocations in a range another peer owns now (being asked
    /// back from it).
    pub fn is_orphan(&self, addr: Ipv4Addr) -> bool {
        self.orphans.contains_key(&u32::from(addr))
    }

    /// The peer with this nickname (for `rmpeer NICK`), if exactly one is known.
    pub fn peer_by_nickname(&self, nickname: &str) -> Option<PeerName> {
        let mut it = self.nicknames.iter().filter(|(_, n)| *n == nickname);
        let first = it.next().map(|(p, _)| *p);
        if it.next().is_some() { None } else { first }
    }

    fn is_elector(&self) -> bool {
        matches!(self.config.init, InitMode::Consensus { .. })
    }

    fn quorum(&self) -> usize {
        let n = match self.config.init {
            InitMode::Consensus { quorum: Some(n) } => n,
            _ => self.quorum_hint.unwrap_or(1),
        };
        n.max(1) / 2 + 1
    }

    /// The peers the mesh knows (reachable or not) and those reachable now.
    pub fn peers_changed(&mut self, now: Instant, known: &[PeerName], reachable: &[PeerName]) {
        let reachable: BTreeSet<PeerName> = reachable
            .iter()
            .copied()
            .filter(|p| *p != self.local)
            .collect();
        let new_peer = reachable.difference(&self.reachable).next().is_some();
        // Reachable now, or until now: seen.
        for p in reachable.union(&self.reachable) {
            self.last_seen.insert(*p, now);
        }
        self.known = known.iter().copied().filter(|p| *p != self.local).collect();
        self.known.extend(reachable.iter().copied());
        self.reachable = reachable;
        if new_peer && !self.ring.is_empty() && self.phase != Phase::ShutDown {
            self.ring_dirty = true;
        }
        // Requests waiting on a donor that just went away are retried elsewhere now.
        let gone: Vec<Ipv4Net> = self
            .asks
            .iter()
            .filter(|(_, a)| {
                a.outstanding
                    .is_some_and(|(d, _)| !self.reachable.contains(&d))
            })
            .map(|(s, _)| *s)
            .collect();
        for s in gone {
            if let Some(a) = self.asks.get_mut(&s) {
                a.outstanding = None;
            }
        }
        if new_peer && self.phase == Phase::Priming {
            self.send(
                Dest::Broadcast,
                Message::RingRequest {
                    nickname: self.nickname.clone(),
                },
            );
        }
        self.try_pending(now);
    }

    /// For [`InitMode::Consensus`] without an explicit `N`: the number of peers expected
    /// (targets + 1). The quorum is `n/2 + 1`.
    pub fn set_quorum_hint(&mut self, n: usize) {
        self.quorum_hint = Some(n);
    }

    /// Starts initialisation if it has not started (as `GET /ring` does).
    pub fn prime(&mut self, now: Instant) {
        self.ensure_init(now);
    }

    fn ensure_init(&mut self, now: Instant) {
        if !self.ring.is_empty() || self.phase == Phase::ShutDown {
            return;
        }
        match self.config.init {
            InitMode::Seed(_) => {}
            InitMode::Observer => {
                if self.phase != Phase::Priming {
                    self.phase = Phase::Priming;
                    self.send(
                        Dest::Broadcast,
                        Message::RingRequest {
                            nickname: self.nickname.clone(),
                        },
                    );
                    self.prime_at = Some(now + RETRY_INTERVAL);
                }
            }
            InitMode::Consensus { .. } => {
                if self.phase != Phase::Consensus {
                    self.phase = Phase::Consensus;
                    self.propose(now);
                }
            }
        }
    }

    fn jitter(&mut self, max_ms: u64) -> Duration {
        Duration::from_millis(self.rng.below(max_ms))
    }

    fn propose(&mut self, now: Instant) {
        let round = self.paxos.max_round + 1;
        self.paxos.max_round = round;
        let ballot = Ballot {
            round,
            proposer: self.local,
        };
        self.paxos.proposal = Some(Proposal {
            ballot,
            promises: BTreeMap::new(),
            accept_sent: false,
        });
        let j = self.jitter(1000);
        self.paxos.propose_at = Some(now + RETRY_INTERVAL + j);
        self.send(Dest::Broadcast, Message::Prepare { ballot });
        // We are an acceptor too.
        self.on_prepare(now, self.local, ballot);
    }

    fn on_prepare(&mut self, now: Instant, from: PeerName, ballot: Ballot) {
        self.paxos.heard.insert(from);
        self.paxos.max_round = self.paxos.max_round.max(ballot.round);
        if self.paxos.promised.is_none_or(|p| ballot >= p) {
            if self.paxos.promised != Some(ballot) {
                // The promise is stored before anyone hears of it.
                self.paxos.promised = Some(ballot);
                self.mark_changed();
            }
            let accepted = self.paxos.accepted.clone();
            if from == self.local {
                self.on_promise(now, from, ballot, accepted);
            } else {
                self.send(Dest::Unicast(from), Message::Promise { ballot, accepted });
            }
            // Defer to a higher proposer.
            if self
                .paxos
                .proposal
                .as_ref()
                .is_some_and(|p| p.ballot < ballot)
            {
                self.paxos.proposal = None;
                let j = self.jitter(1000);
                self.paxos.propose_at = Some(now + RETRY_INTERVAL + j);
            }
        } else if let Some(promised) = self.paxos.promised {
            if from == self.local {
                self.on_nack(now, ballot, promised);
            } else {
                self.send(Dest::Unicast(from), Message::Nack { ballot, promised });
            }
        }
    }

    fn on_nack(&mut self, now: Instant, ballot: Ballot, promised: Ballot) {
        self.paxos.max_round = self.paxos.max_round.max(promised.round);
        if self
            .paxos
            .proposal
            .as_ref()
            .is_some_and(|p| p.ballot == ballot)
        {
            self.paxos.proposal = None;
            let j = self.jitter(1000);
            self.paxos.propose_at = Some(now + RETRY_INTERVAL + j);
        }
    }

    fn on_promise(
        &mut self,
        now: Instant,
        from: PeerName,
        ballot: Ballot,
        accepted: Option<(Ballot, Vec<PeerName>)>,
    ) {
        self.paxos.heard.insert(from);
        let quorum = self.quorum();
        let Some(p) = self.paxos.proposal.as_mut() else {
            return;
        };
        if p.ballot != ballot || p.accept_sent {
            return;
        }
        p.promises.insert(from, accepted);
        if p.promises.len() < quorum {
            return;
        }
        p.accept_sent = true;
        let value = p
            .promises
            .values()
            .flatten()
            .max_by_key(|(b, _)| *b)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| p.promises.keys().copied().collect());
        self.send(
            Dest::Broadcast,
            Message::Accept {
                ballot,
                value: value.clone(),
            },
        );
        self.on_accept(now, self.local, ballot, value);
    }

    fn on_accept(&mut self, now: Instant, from: PeerName, ballot: Ballot, value: Vec<PeerName>) {
        self.paxos.heard.insert(from);
        if self.paxos.promised.is_none_or(|p| ballot >= p) {
            self.paxos.promised = Some(ballot);
            self.paxos.accepted = Some((ballot, value.clone()));
            self.mark_changed();
            self.send(
                Dest::Broadcast,
                Message::Accepted {
                    ballot,
                    value: value.clone(),
                },
            );
            self.on_accepted(now, self.local, ballot, value);
        } else if let Some(promised) = self.paxos.promised {
            if from != self.local {
                self.send(Dest::Unicast(from), Message::Nack { ballot, promised });
            }
        }
    }

    fn on_accepted(&mut self, now: Instant, from: PeerName, ballot: Ballot, value: Vec<PeerName>) {
        if !self.ring.is_empty() {
            return;
        }
        if from != self.local {
            self.paxos.heard.insert(from);
        }
        let quorum = self.quorum();
        let (v, voters) = self
            .paxos
            .votes
            .entry(ballot)
            .or_insert_with(|| (value.clone(), BTreeSet::new()));
        if *v != value {
            // Same ballot, different value: impossible from honest peers; ignore the vote.
            return;
        }
        voters.insert(from);
        if voters.len() >= quorum {
            let value = v.clone();
            self.ring.claim_for_peers(&value);
            self.became_ready(now);
        }
    }

    fn became_ready(&mut self, now: Instant) {
        self.phase = Phase::Ready;
        self.paxos = Paxos::default();
        self.prime_at = None;
        self.ring_dirty = true;
        self.mark_changed();
        self.recount_free();
        self.try_pending(now);
    }

    /// Something that must be stored changed: everything produced from now on waits for it.
    fn mark_changed(&mut self) {
        self.changes += 1;
    }

    fn send(&mut self, dest: Dest, msg: Message) {
        let bytes = Envelope {
            universe: self.config.universe,
            msg,
        }
        .encode();
        self.out.push_back((self.changes, dest, bytes));
    }

    fn ring_msg(&self) -> Message {
        Message::Ring {
            nickname: self.nickname.clone(),
            ring: self.ring.clone(),
        }
    }

    fn validate_subnet(&self, subnet: Ipv4Net) -> Result<(), IpamError> {
        let range = self.config.universe;
        if !range.contains(&subnet) {
            return Err(IpamError::OutsideRange {
                addr: subnet,
                range,
            });
        }
        if subnet.prefix_len() > 30 {
            return Err(IpamError::SubnetTooSmall { subnet });
        }
        if subnet != subnet.trunc() {
            return Err(IpamError::NotNetwork {
                subnet,
                network: subnet.trunc(),
            });
        }
        Ok(())
    }

    fn done(&mut self, id: RequestId, result: Result<Vec<Ipv4Net>, IpamError>) {
        self.events
            .push_back((self.changes, IpamEvent::Done { id, result }));
    }

    /// A request that completes (with no addresses) once everything changed so far is stored,
    /// or fails with [`IpamError::NotStored`]: what a release, rmpeer or shutdown answers with.
    pub fn sync(&mut self) -> RequestId {
        let id = self.next_id;
        self.next_id += 1;
        self.done(id, Ok(Vec::new()));
        id
    }

    /// Allocates the lowest free host address of `subnet` (the default subnet if `None`) for
    /// `ident`, or returns the one `ident` already has there. Completes via
    /// [`IpamEvent::Done`], at once when possible (also for invalid input).
    pub fn allocate(&mut self, now: Instant, ident: &str, subnet: Option<Ipv4Net>) -> RequestId {
        let id = self.next_id;
        self.next_id += 1;
        if self.phase == Phase::ShutDown {
            self.done(id, Err(IpamError::NotReady("IPAM has shut down")));
            return id;
        }
        self.dead.remove(ident);
        let subnet = subnet.unwrap_or(self.config.default_subnet);
        if let Err(e) = self.validate_subnet(subnet) {
            self.done(id, Err(e));
            return id;
        }
        self.pending.push(Pending {
            id,
            ident: ident.to_owned(),
            kind: Kind::Allocate { subnet },
        });
        self.ensure_init(now);
        self.try_pending(now);
        id
    }

    /// Claims the specific address `addr` (with its prefix length) for `ident`. Outside the
    /// universe it is recorded without coordination; owned by another peer, that peer is asked
    /// to give it up. Completes via [`IpamEvent::Done`].
    pub fn claim(&mut self, now: Instant, ident: &str, addr: Ipv4Net) -> RequestId {
        let id = self.next_id;
        self.next_id += 1;
        if self.phase == Phase::ShutDown {
            self.done(id, Err(IpamError::NotReady("IPAM has shut down")));
            return id;
        }
        self.dead.remove(ident);
        let a = u32::from(addr.addr());
        if !self.config.universe.contains(&addr.addr()) {
            let r = self.record(ident, a, addr.prefix_len(), now);
            self.done(id, r.map(|()| vec![addr]));
            return id;
        }
        self.pending.push(Pending {
            id,
            ident: ident.to_owned(),
            kind: Kind::Claim { addr },
        });
        self.ensure_init(now);
        self.try_pending(now);
        id
    }

    /// Records `a` for `ident` (idempotent for the same ident).
    fn record(&mut self, ident: &str, a: u32, prefix: u8, now: Instant) -> Result<(), IpamError> {
        if let Some((who, _)) = self.allocs.get(&a) {
            if who == ident {
                return Ok(());
            }
            if !self.dead.contains_key(who) {
                return Err(IpamError::AddressInUse {
                    addr: Ipv4Addr::from(a),
                    ident: who.clone(),
                });
            }
            // Held for a dead container's restart: an explicit claim takes it at once.
            let who = who.clone();
            self.release(&who, Some(Ipv4Addr::from(a)));
            if !self.by_ident.contains_key(&who) {
                self.dead.remove(&who);
            }
        }
        self.allocs.insert(a, (ident.to_owned(), prefix));
        self.runs_insert(a);
        self.by_ident.entry(ident.to_owned()).or_default().insert(a);
        self.adjust_free(a, false, now);
        self.mark_changed();
        Ok(())
    }

    /// Updates the free count of our entry containing `a` after an allocation or release.
    fn adjust_free(&mut self, a: u32, released: bool, now: Instant) {
        let Some(i) = self.ring.index_of(a) else {
            return;
        };
        let e = &self.ring.entries()[i];
        if e.owner != self.local {
            return;
        }
        let size = to_u32(self.ring.range_size(i));
        let free = if released {
            e.free.saturating_add(1).min(size)
        } else {
            e.free.saturating_sub(1)
        };
        if self.ring.set_free(i, free) && self.free_at.is_none() {
            self.free_at = Some(now + FREE_BATCH_DELAY);
        }
    }

    /// Recomputes the free counts of all our entries from our allocations.
    fn recount_free(&mut self) {
        let mut changed = false;
        for i in 0..self.ring.entries().len() {
            let e = &self.ring.entries()[i];
            if e.owner != self.local {
                continue;
            }
            let (start, end) = (e.token, self.ring.range_end(i));
            let used = self
                .allocs
                .range(start..)
                .take_while(|(a, _)| u64::from(**a) < end)
                .count() as u64;
            let free = to_u32(self.ring.range_size(i).saturating_sub(used));
            changed |= self.ring.set_free(i, free);
        }
        if changed {
            self.ring_dirty = true;
            self.mark_changed();
        }
    }

    /// Frees `addr` of `ident`, or all of `ident`'s addresses (cancelling its pending requests)
    /// if `None`. Returns what was freed.
    pub fn release(&mut self, ident: &str, addr: Option<Ipv4Addr>) -> Vec<Ipv4Net> {
        let addrs: Vec<u32> = match addr {
            Some(a) => {
                let a = u32::from(a);
                if self.allocs.get(&a).is_some_and(|(who, _)| who == ident) {
                    vec![a]
                } else {
                    Vec::new()
                }
            }
            None => self
                .by_ident
                .get(ident)
                .map(|s| s.iter().copied().collect())
                .unwrap_or_default(),
        };
        let mut freed = Vec::new();
        for a in addrs {
            if let Some((_, prefix)) = self.allocs.remove(&a) {
                self.orphans.remove(&a);
                self.runs_remove(a);
                freed.push(net(a, prefix));
                if let Some(s) = self.by_ident.get_mut(ident) {
                    s.remove(&a);
                    if s.is_empty() {
                        self.by_ident.remove(ident);
                    }
                }
                if let Some(i) = self.ring.index_of(a) {
                    let e = &self.ring.entries()[i];
                    if e.owner == self.local {
                        let size = to_u32(self.ring.range_size(i));
                        let free = e.free.saturating_add(1).min(size);
                        self.ring.set_free(i, free);
                        self.ring_dirty = true;
                    }
                }
                self.mark_changed();
            }
        }
        if addr.is_none() {
            self.cancel_pending_of(ident);
        }
        freed
    }

    /// Completes `ident`'s pending requests with [`IpamError::Cancelled`].
    fn cancel_pending_of(&mut self, ident: &str) {
        let (cancel, keep): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| p.ident == ident);
        self.pending = keep;
        for p in cancel {
            self.done(p.id, Err(IpamError::Cancelled));
        }
    }

    /// The addresses `ident` has on this peer.
    pub fn lookup(&self, ident: &str) -> Vec<Ipv4Net> {
        self.by_ident
            .get(ident)
            .map(|s| {
                s.iter()
                    .filter_map(|a| self.allocs.get(a).map(|(_, p)| net(*a, *p)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every allocation on this peer, by ident (for `GET /ip` and `weft ps`).
    pub fn owned(&self) -> BTreeMap<String, Vec<Ipv4Net>> {
        self.by_ident
            .keys()
            .map(|ident| (ident.clone(), self.lookup(ident)))
            .collect()
    }

    /// The container `ident` stopped: its addresses are kept for [`DEAD_TIMEOUT`] (a restart
    /// gets them back), then released; meanwhile an explicit claim by another ident takes one
    /// at once. Its pending requests are cancelled. Nothing happens for an ident without
    /// addresses.
    pub fn container_died(&mut self, now: Instant, ident: &str) {
        if self.by_ident.contains_key(ident) {
            self.dead.insert(ident.to_owned(), now);
        }
        self.cancel_pending_of(ident);
    }

    /// The container `ident` runs (again): it keeps its addresses.
    pub fn container_started(&mut self, ident: &str) {
        self.dead.remove(ident);
    }

    /// The container `ident` is gone for good: everything it has is released now.
    pub fn container_destroyed(&mut self, ident: &str) -> Vec<Ipv4Net> {
        self.dead.remove(ident);
        self.release(ident, None)
    }

    /// Whether `ident` was reported dead and still holds addresses.
    pub fn is_dead(&self, ident: &str) -> bool {
        self.dead.contains_key(ident)
    }

    /// Cancels a pending request; it completes with [`IpamError::Cancelled`].
    pub fn cancel(&mut self, id: RequestId) {
        if let Some(pos) = self.pending.iter().position(|p| p.id == id) {
            self.pending.remove(pos);
            self.done(id, Err(IpamError::Cancelled));
        }
    }

    /// The lowest free host address of `subnet` in ranges we own.
    fn lowest_free(&self, subnet: Ipv4Net) -> Option<u32> {
        let (lo, hi) = host_range(subnet);
        for (s, e) in self.ring.owned_ranges_u64(self.local) {
            let (s, e) = (u64::from(s).max(u64::from(lo)), e.min(hi));
            if s >= e {
                continue;
            }
            let mut cand = s;
            if let Some((_, &end)) = self.runs.range(..=to_u32(cand)).next_back() {
                // Runs are maximal, so the end of the run holding `cand` is free.
                cand = cand.max(end);
            }
            if cand < e {
                return Some(to_u32(cand));
            }
        }
        None
    }

    fn runs_insert(&mut self, a: u32) {
        let (mut start, mut end) = (a, u64::from(a) + 1);
        if let Some((&s, &e)) = self.runs.range(..=a).next_back() {
            if e >= u64::from(a) {
                start = s;
                end = end.max(e);
                self.runs.remove(&s);
            }
        }
        if let Ok(next) = u32::try_from(end) {
            if let Some(e) = self.runs.remove(&next) {
                end = e;
            }
        }
        self.runs.insert(start, end);
    }

    fn runs_remove(&mut self, a: u32) {
        let Some((&s, &e)) = self.runs.range(..=a).next_back() else {
            return;
        };
        if e <= u64::from(a) {
            return;
        }
        self.runs.remove(&s);
        if s < a {
            self.runs.insert(s, u64::from(a));
        }
        if u64::from(a) + 1 < e {
            self.runs.insert(a + 1, e);
        }
    }

    /// Our free chunks `[start, end)` within `subnet`'s host range.
    fn free_chunks(&self, subnet: Ipv4Net) -> Vec<(u32, u64)> {
        let (lo, hi) = host_range(subnet);
        let mut out = Vec::new();
        for (s, e) in self.ring.owned_ranges_u64(self.local) {
            let (s, e) = (u64::from(s).max(u64::from(lo)), e.min(hi));
            if s >= e {
                continue;
            }
            let mut cand = s;
            for (&a, _) in self.allocs.range(to_u32(s)..) {
                let a = u64::from(a);
                if a >= e {
                    break;
                }
                if a > cand {
                    out.push((to_u32(cand), a));
                }
                cand = a + 1;
            }
            if cand < e {
                out.push((to_u32(cand), e));
            }
        }
        out
    }

    /// Other owners' advertised free space in `subnet`'s host range (estimated: an entry's
    /// free count capped by its overlap with the subnet).
    fn space_elsewhere(&self, subnet: Ipv4Net) -> BTreeMap<PeerName, u64> {
        let (lo, hi) = host_range(subnet);
        let mut out: BTreeMap<PeerName, u64> = BTreeMap::new();
        for (i, e) in self.ring.entries().iter().enumerate() {
            if e.owner == self.local {
                continue;
            }
            let s = u64::from(e.token).max(u64::from(lo));
            let end = self.ring.range_end(i).min(hi);
            if s >= end {
                continue;
            }
            let est = u64::from(e.free).min(end - s);
            if est > 0 {
                *out.entry(e.owner).or_default() += est;
            }
        }
        out
    }

    /// Serves what pending requests can be served and asks for what is missing.
    fn try_pending(&mut self, now: Instant) {
        if self.ring.is_empty() || self.phase == Phase::ShutDown {
            return;
        }
        let mut need: BTreeSet<Ipv4Net> = BTreeSet::new();
        let pending = std::mem::take(&mut self.pending);
        let mut keep = Vec::new();
        for p in pending {
            match p.kind {
                Kind::Allocate { subnet } => {
                    let existing = self.by_ident.get(&p.ident).and_then(|s| {
                        s.iter()
                            .copied()
                            .find(|a| subnet.contains(&Ipv4Addr::from(*a)))
                    });
                    if let Some(a) = existing {
                        self.done(p.id, Ok(vec![net(a, subnet.prefix_len())]));
                    } else if let Some(a) = self.lowest_free(subnet) {
                        let r = self.record(&p.ident, a, subnet.prefix_len(), now);
                        self.done(p.id, r.map(|()| vec![net(a, subnet.prefix_len())]));
                    } else {
                        need.insert(subnet);
                        keep.push(p);
                    }
                }
                Kind::Claim { addr } => {
                    let a = u32::from(addr.addr());
                    match self.ring.owner(a) {
                        Some(o) if o == self.local => {
                            self.claim_asks.remove(&a);
                            let r = self.record(&p.ident, a, addr.prefix_len(), now);
                            self.done(p.id, r.map(|()| vec![addr]));
                        }
                        Some(owner) => {
                            let ask = self.claim_asks.get(&a).cloned();
                            let due = ask
                                .as_ref()
                                .is_none_or(|c| c.owner != owner || now >= c.at + RETRY_INTERVAL);
                            let attempts = ask.as_ref().map_or(0, |c| c.attempts);
                            if !due {
                                keep.push(p);
                            } else if attempts >= CLAIM_ATTEMPTS {
                                self.claim_asks.remove(&a);
                                self.done(
                                    p.id,
                                    Err(IpamError::OwnerUnreachable {
                                        addr: addr.addr(),
                                        peer: owner,
                                    }),
                                );
                            } else {
                                self.claim_asks.insert(
                                    a,
                                    ClaimAsk {
                                        owner,
                                        at: now,
                                        attempts: attempts + 1,
                                    },
                                );
                                self.send(
                                    Dest::Unicast(owner),
                                    Message::ClaimRequest { addr: addr.addr() },
                                );
                                keep.push(p);
                            }
                        }
                        // Inside the universe and the ring is non-empty: always owned.
                        None => keep.push(p),
                    }
                }
            }
        }
        // Requests completed above may have been joined by ones queued meanwhile (none are,
        // but keep the order stable anyway).
        keep.append(&mut self.pending);
        self.pending = keep;
        self.asks.retain(|s, _| need.contains(s));
        for subnet in need {
            self.request_space(now, subnet);
        }
        if !self.pending.is_empty() && self.retry_at.is_none() {
            self.retry_at = Some(now + RETRY_INTERVAL);
        }
    }

    fn request_space(&mut self, now: Instant, subnet: Ipv4Net) {
        let ask = self.asks.entry(subnet).or_default().clone();
        if ask
            .outstanding
            .is_some_and(|(_, at)| now < at + RETRY_INTERVAL)
        {
            return;
        }
        let space = self.space_elsewhere(subnet);
        let candidates: Vec<(PeerName, u64)> = space
            .into_iter()
            .filter(|(p, _)| !ask.denied.contains(p))
            .collect();
        if candidates.is_empty() {
            // Nobody advertises space we have not been refused: the subnet is full.
            self.asks.remove(&subnet);
            let (fail, keep): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut self.pending)
                .into_iter()
                .partition(|p| matches!(p.kind, Kind::Allocate { subnet: s } if s == subnet));
            self.pending = keep;
            for p in fail {
                self.done(p.id, Err(IpamError::Exhausted { subnet }));
            }
            return;
        }
        let live: Vec<(PeerName, u64)> = candidates
            .into_iter()
            .filter(|(p, _)| self.reachable.contains(p))
            .collect();
        let total: u64 = live.iter().map(|(_, w)| *w).sum();
        let a = self.asks.entry(subnet).or_default();
        if total == 0 {
            a.outstanding = None;
            a.unreachable = true;
            return;
        }
        a.unreachable = false;
        let mut pick = self.rng.below(total);
        let mut donor = live[0].0;
        for (p, w) in &live {
            if pick < *w {
                donor = *p;
                break;
            }
            pick -= w;
        }
        if let Some(a) = self.asks.get_mut(&subnet) {
            a.outstanding = Some((donor, now));
        }
        self.send(Dest::Unicast(donor), Message::SpaceRequest { subnet });
    }

    /// Merges a received ring. Returns whether ours changed.
    fn merge_ring(&mut self, now: Instant, ring: &Ring) -> Result<bool, IpamError> {
        if self.phase == Phase::ShutDown {
            return Ok(false);
        }
        let was_empty = self.ring.is_empty();
        let before = self.ring.owned_ranges_u64(self.local);
        let changed = self.ring.merge(ring)?;
        if changed {
            self.mark_changed();
            if was_empty {
                self.became_ready(now);
            } else {
                self.find_orphans(now, &before);
                self.recount_free();
                self.try_pending(now);
            }
        }
        Ok(changed)
    }

    /// After a merge: our allocations in ranges we owned before and another peer owns now are
    /// kept and asked back from their new owner; allocations back in our ranges are settled.
    fn find_orphans(&mut self, now: Instant, before: &[(u32, u64)]) {
        let local = self.local;
        let mut lost = Vec::new();
        for &(s, e) in before {
            for (&a, _) in self.allocs.range(s..) {
                if u64::from(a) >= e {
                    break;
                }
                if self.ring.owner(a).is_some_and(|o| o != local) && !self.orphans.contains_key(&a)
                {
                    lost.push(a);
                }
            }
        }
        for a in lost {
            self.orphans.insert(a, OrphanAsk { at: None });
        }
        self.orphans
            .retain(|a, _| self.ring.owner(*a).is_some_and(|o| o != local));
        self.ask_orphans(now);
    }

    /// Asks the owners for the orphans not asked for within [`RETRY_INTERVAL`].
    fn ask_orphans(&mut self, now: Instant) {
        let due: Vec<(u32, PeerName)> = self
            .orphans
            .iter()
            .filter(|(_, o)| o.at.is_none_or(|t| now >= t + RETRY_INTERVAL))
            .filter_map(|(a, _)| self.ring.owner(*a).map(|o| (*a, o)))
            .collect();
        for (a, owner) in due {
            if let Some(o) = self.orphans.get_mut(&a) {
                o.at = Some(now);
            }
            self.send(
                Dest::Unicast(owner),
                Message::ClaimRequest {
                    addr: Ipv4Addr::from(a),
                },
            );
        }
        if !self.orphans.is_empty() && self.retry_at.is_none() {
            self.retry_at = Some(now + RETRY_INTERVAL);
        }
    }

    /// The owner of orphan `a` has handed it out too: it stays theirs (they own the range),
    /// ours is released and the duplicate reported.
    fn lose_orphan(&mut self, now: Instant, a: u32, owner: PeerName) {
        self.orphans.remove(&a);
        let Some((ident, _)) = self.allocs.get(&a).cloned() else {
            return;
        };
        self.release(&ident, Some(Ipv4Addr::from(a)));
        let who = self
            .nicknames
            .get(&owner)
            .map_or_else(|| owner.to_string(), |n| format!("{owner}({n})"));
        self.record_conflict(
            self.changes,
            now,
            Ipv4Addr::from(a),
            format!(
                "handed out twice: to {ident} here and by peer {who}, which owns its range \
                 since the partition healed; released here, {who} keeps it"
            ),
        );
    }

    /// Reports a duplicate address the driver found (on the bridge): it depends on nothing
    /// unstored, so it is yielded as soon as what is already waiting is.
    pub fn report_conflict(&mut self, now: Instant, addr: Ipv4Addr, detail: String) {
        self.record_conflict(self.stored, now, addr, detail);
    }

    /// Records a duplicate address, reported once the state tagged `tag` is stored.
    fn record_conflict(&mut self, tag: u64, now: Instant, addr: Ipv4Addr, detail: String) {
        let c = Conflict {
            addr,
            detail,
            at: now,
        };
        self.conflicts.push_back((tag, c.clone()));
        while self.conflicts.len() > MAX_CONFLICTS {
            self.conflicts.pop_front();
        }
        self.events.push_back((tag, IpamEvent::Conflict(c)));
    }

    /// Handles a payload from peer `from`. Errors are for counting/logging (and possibly
    /// dropping the connection); nothing allocated is ever lost.
    pub fn handle_message(
        &mut self,
        now: Instant,
        from: PeerName,
        payload: &[u8],
    ) -> Result<(), IpamError> {
        self.stats.messages_received += 1;
        let r = self.handle_inner(now, from, payload);
        if r.is_err() {
            self.stats.errors += 1;
        }
        r
    }

    fn handle_inner(
        &mut self,
        now: Instant,
        from: PeerName,
        payload: &[u8],
    ) -> Result<(), IpamError> {
        let env = Envelope::decode(payload).ok_or(IpamError::Decode)?;
        if env.universe != self.config.universe {
            return Err(crate::MergeError::Universe {
                ours: self.config.universe,
                theirs: env.universe,
            }
            .into());
        }
        if from == self.local {
            return Err(IpamError::InvalidMessage("message from ourselves"));
        }
        self.last_seen.insert(from, now);
        if self.phase == Phase::ShutDown {
            return Ok(());
        }
        match env.msg {
            Message::Ring { nickname, ring } => {
                self.nicknames.insert(from, nickname);
                self.merge_ring(now, &ring)?;
                if !self.ring.is_empty() && self.ring != ring {
                    // The sender lacks something we know.
                    self.send(Dest::Unicast(from), self.ring_msg());
                }
            }
            Message::RingRequest { nickname } => {
                self.nicknames.insert(from, nickname);
                if !self.ring.is_empty() {
                    self.send(Dest::Unicast(from), self.ring_msg());
                } else if self.is_elector() {
                    self.ensure_init(now);
                }
            }
            Message::Prepare { ballot } => {
                if !self.ring.is_empty() {
                    self.send(Dest::Unicast(from), self.ring_msg());
                } else if self.is_elector() {
                    if ballot.proposer != from {
                        return Err(IpamError::InvalidMessage("ballot of another proposer"));
                    }
                    self.on_prepare(now, from, ballot);
                }
            }
            Message::Promise { ballot, accepted } => {
                if self.ring.is_empty() && self.is_elector() {
                    self.on_promise(now, from, ballot, accepted);
                }
            }
            Message::Nack { ballot, promised } => {
                if self.ring.is_empty() && self.is_elector() {
                    self.on_nack(now, ballot, promised);
                }
            }
            Message::Accept { ballot, value } => {
                check_value(&value)?;
                if !self.ring.is_empty() {
                    self.send(Dest::Unicast(from), self.ring_msg());
                } else if self.is_elector() {
                    self.on_accept(now, from, ballot, value);
                }
            }
            Message::Accepted { ballot, value } => {
                check_value(&value)?;
                self.on_accepted(now, from, ballot, value);
            }
            Message::SpaceRequest { subnet } => {
                self.validate_subnet(subnet).map_err(|_| {
                    IpamError::InvalidMessage("space request for an invalid subnet")
                })?;
                self.donate(now, from, subnet);
            }
            Message::Donated { ring } => {
                for a in self.asks.values_mut() {
                    if a.outstanding.is_some_and(|(d, _)| d == from) {
                        a.outstanding = None;
                    }
                }
                self.merge_ring(now, &ring)?;
                self.try_pending(now);
            }
            Message::SpaceDenied { subnet, ring } => {
                if let Some(a) = self.asks.get_mut(&subnet) {
                    a.denied.insert(from);
                    if a.outstanding.is_some_and(|(d, _)| d == from) {
                        a.outstanding = None;
                    }
                }
                self.merge_ring(now, &ring)?;
                self.try_pending(now);
            }
            Message::ClaimRequest { addr } => self.on_claim_request(now, from, addr),
            Message::ClaimDenied { addr, in_use, ring } => {
                let a = u32::from(addr);
                self.merge_ring(now, &ring)?;
                if self.orphans.contains_key(&a) {
                    if in_use && self.ring.owner(a) == Some(from) {
                        self.lose_orphan(now, a, from);
                    } else if let Some(o) = self.orphans.get_mut(&a) {
                        // Not the owner (yet): ask again at the next retry.
                        o.at = None;
                    }
                }
                if in_use {
                    self.claim_asks.remove(&a);
                    let (fail, keep): (Vec<Pending>, Vec<Pending>) =
                        std::mem::take(&mut self.pending).into_iter().partition(
                            |p| matches!(p.kind, Kind::Claim { addr: c } if c.addr() == addr),
                        );
                    self.pending = keep;
                    for p in fail {
                        self.done(p.id, Err(IpamError::OwnedByOther { addr, peer: from }));
                    }
                } else if let Some(c) = self.claim_asks.get_mut(&a) {
                    // Not the owner (our ring was stale): ask the right one now.
                    c.at = Instant::ZERO;
                }
                self.try_pending(now);
            }
        }
        Ok(())
    }

    fn donate(&mut self, now: Instant, to: PeerName, subnet: Ipv4Net) {
        let chunks = if self.ring.is_empty() {
            Vec::new()
        } else {
            self.free_chunks(subnet)
        };
        let total: u64 = chunks.iter().map(|(s, e)| e - u64::from(*s)).sum();
        let best = chunks
            .iter()
            .copied()
            .max_by_key(|(s, e)| (e - u64::from(*s), std::cmp::Reverse(*s)));
        let Some((s, e)) = best else {
            self.send(
                Dest::Unicast(to),
                Message::SpaceDenied {
                    subnet,
                    ring: self.ring.clone(),
                },
            );
            return;
        };
        let len = e - u64::from(s);
        let start = if len * 2 > total {
            e - len.div_ceil(2)
        } else {
            u64::from(s)
        };
        if self.ring.give(to_u32(start), e, self.local, to) {
            self.recount_free();
            self.ring_dirty = true;
            self.mark_changed();
            self.send(
                Dest::Unicast(to),
                Message::Donated {
                    ring: self.ring.clone(),
                },
            );
            let _ = now;
        } else {
            self.send(
                Dest::Unicast(to),
                Message::SpaceDenied {
                    subnet,
                    ring: self.ring.clone(),
                },
            );
        }
    }

    fn on_claim_request(&mut self, now: Instant, from: PeerName, addr: Ipv4Addr) {
        let a = u32::from(addr);
        let ours = self.ring.owner(a) == Some(self.local);
        if ours
            && !self.allocs.contains_key(&a)
            && self.ring.give(a, u64::from(a) + 1, self.local, from)
        {
            self.recount_free();
            self.ring_dirty = true;
            self.mark_changed();
            self.send(
                Dest::Unicast(from),
                Message::Donated {
                    ring: self.ring.clone(),
                },
            );
            self.try_pending(now);
        } else {
            self.send(
                Dest::Unicast(from),
                Message::ClaimDenied {
                    addr,
                    in_use: ours,
                    ring: self.ring.clone(),
                },
            );
        }
    }

    /// Runs the timers that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.phase == Phase::ShutDown {
            return;
        }
        if self.gossip_at.is_some_and(|t| t <= now) {
            self.gossip_at = Some(now + GOSSIP_INTERVAL);
            if !self.ring.is_empty() {
                self.ring_dirty = true;
            }
        }
        if self.free_at.is_some_and(|t| t <= now) {
            self.free_at = None;
            self.ring_dirty = true;
        }
        if self.prime_at.is_some_and(|t| t <= now) {
            if self.phase == Phase::Priming && self.ring.is_empty() {
                self.prime_at = Some(now + RETRY_INTERVAL);
                self.send(
                    Dest::Broadcast,
                    Message::RingRequest {
                        nickname: self.nickname.clone(),
                    },
                );
            } else {
                self.prime_at = None;
            }
        }
        if self.paxos.propose_at.is_some_and(|t| t <= now) {
            self.paxos.propose_at = None;
            if self.phase == Phase::Consensus && self.ring.is_empty() {
                self.propose(now);
            }
        }
        if self.retry_at.is_some_and(|t| t <= now) {
            self.retry_at = None;
            for a in self.asks.values_mut() {
                a.denied.clear();
            }
            self.try_pending(now);
            self.ask_orphans(now);
        }
        let expired: Vec<String> = self
            .dead
            .iter()
            .filter(|(_, died)| **died + DEAD_TIMEOUT <= now)
            .map(|(ident, _)| ident.clone())
            .collect();
        for ident in expired {
            self.dead.remove(&ident);
            self.release(&ident, None);
        }
    }

    /// When [`Ipam::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.phase == Phase::ShutDown {
            return None;
        }
        [
            self.gossip_at,
            self.free_at,
            self.prime_at,
            self.paxos.propose_at,
            self.retry_at,
            self.dead.values().min().map(|died| *died + DEAD_TIMEOUT),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The next payload to send (only once the state it depends on is stored).
    pub fn poll_transmit(&mut self) -> Option<(Dest, Vec<u8>)> {
        if self.ring_dirty && self.out.is_empty() && self.changes == self.stored {
            self.ring_dirty = false;
            if !self.ring.is_empty() {
                self.send(Dest::Broadcast, self.ring_msg());
            }
        }
        if self
            .out
            .front()
            .is_none_or(|(tag, _, _)| *tag > self.stored)
        {
            return None;
        }
        let (_, dest, bytes) = self.out.pop_front()?;
        self.stats.messages_sent += 1;
        self.stats.bytes_sent += bytes.len() as u64;
        Some((dest, bytes))
    }

    /// The next completion or report (only once the state it depends on is stored).
    pub fn poll_event(&mut self) -> Option<IpamEvent> {
        if self
            .events
            .front()
            .is_none_or(|(tag, _)| *tag > self.stored)
        {
            return None;
        }
        let (_, ev) = self.events.pop_front()?;
        if matches!(ev, IpamEvent::Conflict(_)) {
            self.stats.conflicts += 1;
        }
        Some(ev)
    }

    /// The state to store now, if anything changed since the last stored state and no commit
    /// is in flight. Store it (written and synced, atomically) and report with
    /// [`Ipam::stored`]; until then, nothing that depends on it is yielded.
    pub fn poll_commit(&mut self) -> Option<Commit> {
        if self.in_flight.is_some() || self.changes == self.stored {
            return None;
        }
        let snapshot = self.snapshot();
        let shut_down = self.phase == Phase::ShutDown;
        self.in_flight = Some((self.changes, snapshot.clone(), shut_down));
        Some(Commit {
            id: self.changes,
            snapshot,
        })
    }

    /// Whether a commit is waiting to be taken with [`Ipam::poll_commit`].
    pub fn wants_commit(&self) -> bool {
        self.in_flight.is_none() && self.changes != self.stored
    }

    /// The driver stored commit `id` (`Ok`), or could not (`Err` with the reason, shown to
    /// users): then everything since the last stored state is rolled back, held payloads are
    /// dropped and held successful completions fail with [`IpamError::NotStored`].
    pub fn stored(&mut self, now: Instant, id: u64, result: Result<(), String>) {
        let Some((flight, snapshot, shut_down)) = self.in_flight.take() else {
            return;
        };
        if flight != id {
            self.in_flight = Some((flight, snapshot, shut_down));
            return;
        }
        match result {
            Ok(()) => {
                self.stored = id;
                self.committed = snapshot;
                self.committed_shut_down = shut_down;
                self.store_error = None;
            }
            Err(reason) => {
                self.stats.store_failures += 1;
                self.rollback(now, &reason);
                self.store_error = Some(reason);
            }
        }
    }

    /// Back to the last stored state (a store failed).
    fn rollback(&mut self, now: Instant, reason: &str) {
        let snap = self.committed.clone();
        self.ring = snap.ring;
        if self.ring.is_empty() {
            // The proposer and learner may have counted this peer's own undone promises and
            // votes: they start over; the acceptor keeps what anyone may have heard of.
            let max_round = self.paxos.max_round;
            self.paxos = Paxos::default();
            self.paxos.max_round = max_round;
            self.set_acceptor(snap.acceptor.as_ref());
        }
        self.allocs.clear();
        self.runs.clear();
        self.by_ident.clear();
        self.load_owned(snap.owned);
        let local = self.local;
        let ring = &self.ring;
        let allocs = &self.allocs;
        self.orphans
            .retain(|a, _| allocs.contains_key(a) && ring.owner(*a).is_some_and(|o| o != local));
        self.phase = if self.committed_shut_down {
            Phase::ShutDown
        } else if self.ring.is_empty() {
            Phase::Idle
        } else {
            Phase::Ready
        };
        let stored = self.stored;
        // Payloads and reports about the undone changes go; completions that depended on them
        // fail (successes become "not stored"; refusals stand).
        self.out.retain(|(tag, _, _)| *tag <= stored);
        self.events
            .retain(|(tag, ev)| *tag <= stored || !matches!(ev, IpamEvent::Conflict(_)));
        self.conflicts.retain(|(tag, _)| *tag <= stored);
        for (tag, ev) in &mut self.events {
            if *tag <= stored {
                continue;
            }
            *tag = stored;
            if let IpamEvent::Done { result, .. } = ev {
                if result.is_ok() {
                    *result = Err(IpamError::NotStored(reason.to_owned()));
                }
            }
        }
        self.changes = stored;
        self.ring_dirty = !self.ring.is_empty();
        if self.ring.is_empty() && !self.pending.is_empty() {
            // Initialisation was undone: start it again (only payloads, nothing to store).
            self.ensure_init(now);
        }
    }

    /// Status for `weft status ipam`.
    pub fn status(&self) -> IpamStatus {
        let state = match self.phase {
            Phase::Idle => IpamState::Idle,
            Phase::Consensus => IpamState::AwaitingConsensus {
                quorum: self.quorum(),
                known: self.paxos.heard.len().max(1),
            },
            Phase::Priming => IpamState::Priming,
            Phase::ShutDown => IpamState::ShutDown,
            Phase::Ready if self.pending.is_empty() => IpamState::Ready,
            Phase::Ready => {
                if !self.asks.is_empty() && self.asks.values().all(|a| a.unreachable) {
                    IpamState::AllOwnersUnreachable
                } else {
                    IpamState::WaitingForSpace
                }
            }
        };
        let total = self.ring.end() - u64::from(self.ring.start());
        let mut shares: BTreeMap<PeerName, (u64, u64)> = BTreeMap::new();
        for (i, e) in self.ring.entries().iter().enumerate() {
            let s = shares.entry(e.owner).or_default();
            s.0 += self.ring.range_size(i);
            s.1 += u64::from(e.free);
        }
        let mut peers: Vec<PeerShare> = shares
            .into_iter()
            .map(|(peer, (owned, free))| PeerShare {
                peer,
                nickname: self.nicknames.get(&peer).cloned(),
                owned,
                free,
                percent: owned as f64 * 100.0 / total as f64,
                reachable: peer == self.local || self.reachable.contains(&peer),
            })
            .collect();
        peers.sort_by(|a, b| b.owned.cmp(&a.owned).then(a.peer.cmp(&b.peer)));
        let ranges = self
            .ring
            .entries()
            .iter()
            .enumerate()
            .map(|(i, e)| RangeStatus {
                start: Ipv4Addr::from(e.token),
                size: self.ring.range_size(i),
                owner: e.owner,
                nickname: self.nicknames.get(&e.owner).cloned(),
                reachable: e.owner == self.local || self.reachable.contains(&e.owner),
                version: e.version,
                free: e.free,
            })
            .collect();
        let mut pending_allocates = Vec::new();
        let mut pending_claims = Vec::new();
        for p in &self.pending {
            match p.kind {
                Kind::Allocate { subnet } => pending_allocates.push((p.ident.clone(), subnet)),
                Kind::Claim { addr } => pending_claims.push((p.ident.clone(), addr)),
            }
        }
        IpamStatus {
            state,
            range: self.config.universe,
            default_subnet: self.config.default_subnet,
            peers,
            pending: self.pending.len(),
            allocated: self.allocs.len(),
            ranges,
            pending_allocates,
            pending_claims,
            store_error: self.store_error.clone(),
            orphans: self.orphans.len(),
            conflicts: self
                .conflicts
                .iter()
                .filter(|(tag, _)| *tag <= self.stored)
                .map(|(_, c)| c.clone())
                .collect(),
        }
    }

    /// Leaving (`weft reset`): gives all our ranges to an heir (a reachable peer owning ranges,
    /// else any reachable peer, else any other ring owner, else any known peer), broadcasts the
    /// ring, cancels pending requests and stops. Returns the heir.
    pub fn shutdown(&mut self, now: Instant) -> Option<PeerName> {
        let _ = now;
        if self.phase == Phase::ShutDown {
            return None;
        }
        let owners: BTreeSet<PeerName> = self
            .ring
            .entries()
            .iter()
            .map(|e| e.owner)
            .filter(|p| *p != self.local)
            .collect();
        let heir = owners
            .iter()
            .find(|p| self.reachable.contains(p))
            .or_else(|| self.reachable.iter().next())
            .or_else(|| owners.iter().next())
            .or_else(|| self.known.iter().next())
            .copied();
        for p in std::mem::take(&mut self.pending) {
            self.done(p.id, Err(IpamError::Cancelled));
        }
        if let Some(h) = heir {
            if self.ring.transfer(self.local, h) > 0 {
                self.send(Dest::Broadcast, self.ring_msg());
                self.send(Dest::Unicast(h), self.ring_msg());
            }
        }
        self.phase = Phase::ShutDown;
        self.ring_dirty = false;
        self.mark_changed();
        heir
    }

    /// rmpeer: takes over the ranges of `peer`, which must be gone for good. Refuses if it is
    /// reachable, if another peer already took it over, if it is unknown, or (unless `force`)
    /// if it was seen within [`RMPEER_GRACE`]. Returns the number of addresses taken over.
    pub fn rmpeer(&mut self, now: Instant, peer: PeerName, force: bool) -> Result<u32, IpamError> {
        if peer == self.local {
            return Err(IpamError::RemoveSelf);
        }
        if self.ring.is_empty() {
            return Err(IpamError::NotReady("no ring yet"));
        }
        if self.phase == Phase::ShutDown {
            return Err(IpamError::NotReady("IPAM has shut down"));
        }
        if self.reachable.contains(&peer) {
            return Err(IpamError::PeerReachable(peer));
        }
        if let Some(&(_, by)) = self.ring.removed().iter().find(|r| r.0 == peer) {
            return Err(IpamError::AlreadyTakenOver { peer, by });
        }
        if let Some(&seen) = self.last_seen.get(&peer) {
            let ago = now.saturating_duration_since(seen);
            if !force && ago < RMPEER_GRACE {
                return Err(IpamError::RecentlySeen {
                    peer,
                    secs: ago.as_secs(),
                });
            }
        }
        let owns = self.ring.entries().iter().any(|e| e.owner == peer);
        if !owns {
            let heard = self.known.contains(&peer)
                || self.nicknames.contains_key(&peer)
                || self.ring.seeds().contains(&peer);
            return if heard {
                Ok(0)
            } else {
                Err(IpamError::UnknownPeer(peer))
            };
        }
        let n = self.ring.transfer(peer, self.local);
        self.ring.mark_removed(peer, self.local);
        self.recount_free();
        self.ring_dirty = true;
        self.mark_changed();
        self.try_pending(now);
        Ok(n)
    }

    /// Everything to persist.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            version: SNAPSHOT_VERSION,
            peer: self.local,
            universe: self.config.universe,
            ring: self.ring.clone(),
            owned: self
                .allocs
                .iter()
                .map(|(a, (ident, p))| OwnedAddress {
                    ident: ident.clone(),
                    addr: net(*a, *p),
                })
                .collect(),
            acceptor: self.acceptor(),
        }
    }

    /// The acceptor's memory, while there is no ring and it has promised something.
    fn acceptor(&self) -> Option<Acceptor> {
        if !self.ring.is_empty() || self.paxos.promised.is_none() {
            return None;
        }
        let b = |b: Ballot| (b.round, b.proposer);
        Some(Acceptor {
            promised: self.paxos.promised.map(b),
            accepted: self.paxos.accepted.clone().map(|(x, v)| (b(x), v)),
        })
    }

    /// Takes the acceptor's memory back (from a stored state).
    fn set_acceptor(&mut self, a: Option<&Acceptor>) {
        let b = |(round, proposer): (u64, PeerName)| Ballot { round, proposer };
        self.paxos.promised = a.and_then(|a| a.promised).map(b);
        self.paxos.accepted = a.and_then(|a| a.accepted.clone()).map(|(x, v)| (b(x), v));
        if let Some(p) = self.paxos.promised {
            self.paxos.max_round = self.paxos.max_round.max(p.round);
        }
    }

    /// Restores persisted state (at startup). Refuses state of another peer name, another
    /// universe or an unknown format, changing nothing.
    pub fn restore(&mut self, s: Snapshot) -> Result<(), IpamError> {
        if s.version != SNAPSHOT_VERSION {
            return Err(IpamError::SnapshotVersion(s.version));
        }
        if s.peer != self.local {
            return Err(IpamError::WrongPeer {
                stored: s.peer,
                ours: self.local,
            });
        }
        if s.universe != self.config.universe || s.ring.universe() != self.config.universe {
            return Err(IpamError::WrongUniverse {
                stored: s.universe,
                ours: self.config.universe,
            });
        }
        s.ring.validate()?;
        let mut ring = self.ring.clone();
        ring.merge(&s.ring)?;
        self.ring = ring;
        if self.ring.is_empty() {
            self.set_acceptor(s.acceptor.as_ref());
        }
        self.load_owned(s.owned);
        if !self.ring.is_empty()
            && matches!(self.phase, Phase::Idle | Phase::Consensus | Phase::Priming)
        {
            self.phase = Phase::Ready;
            self.paxos = Paxos::default();
        }
        self.recount_free();
        // Allocations in ranges another peer owns now (a state kept from before a takeover).
        let local = self.local;
        let orphans: Vec<u32> = self
            .allocs
            .keys()
            .copied()
            .filter(|a| self.ring.owner(*a).is_some_and(|o| o != local))
            .collect();
        for a in orphans {
            self.orphans.insert(a, OrphanAsk { at: None });
        }
        if !self.orphans.is_empty() && self.retry_at.is_none() {
            self.retry_at = Some(Instant::ZERO);
        }
        // What was just read from disk is stored.
        self.stored = self.changes;
        self.committed = self.snapshot();
        self.committed_shut_down = false;
        Ok(())
    }

    /// Adds `owned` to our allocations (skipping addresses already recorded).
    fn load_owned(&mut self, owned: Vec<OwnedAddress>) {
        for o in owned {
            let a = u32::from(o.addr.addr());
            if self.allocs.contains_key(&a) {
                continue;
            }
            self.allocs
                .insert(a, (o.ident.clone(), o.addr.prefix_len()));
            self.runs_insert(a);
            self.by_ident.entry(o.ident).or_default().insert(a);
        }
    }
}

fn check_value(value: &[PeerName]) -> Result<(), IpamError> {
    if value.is_empty() || value.windows(2).any(|w| w[0] >= w[1]) {
        return Err(IpamError::InvalidMessage(
            "consensus value not a sorted set of peers",
        ));
    }
    Ok(())
}

fn net(a: u32, prefix: u8) -> Ipv4Net {
    // `prefix` comes from an Ipv4Net (<= 32); fall back to /32 defensively.
    Ipv4Net::new(Ipv4Addr::from(a), prefix).unwrap_or_else(|_| Ipv4Net::from(Ipv4Addr::from(a)))
}
