//! Layer: pure logic. Broadcast and unicast delivery for gossip channels other than the
//! topology (IPAM rides on it), over the direct control connections of a partially connected
//! mesh.
//!
//! A message is wrapped in an [`Envelope`] naming its origin, its destination (none for a
//! broadcast) and a per-origin sequence number. A broadcast is flooded: every peer delivers it
//! once and passes it on to all its neighbours but the one it came from; the (origin, sequence)
//! pairs seen recently make later copies harmless. A unicast follows the unicast routes hop by
//! hop. Flooding costs one copy per link, which is fine for the rare messages it carries (ring
//! changes, consensus rounds) and, unlike a broadcast tree, does not depend on every peer
//! having the same view of the topology.

use std::collections::{HashSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::{PeerName, Routes};

/// How many (origin, sequence) pairs are remembered to drop duplicate broadcasts.
const SEEN_CAPACITY: usize = 4096;

/// A channel message as it travels between peers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// The peer that sent it first.
    pub origin: PeerName,
    /// The peer it is for; `None` for a broadcast.
    pub dest: Option<PeerName>,
    /// Per-origin sequence number (broadcast de-duplication).
    pub seq: u64,
    /// The channel's own message.
    pub payload: Vec<u8>,
}

/// Why an incoming envelope was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// The bytes are not an envelope.
    #[error("malformed channel envelope")]
    Malformed,
    /// The envelope claims to come from us: a loop, or a forgery.
    #[error("channel envelope claims to originate here")]
    FromSelf,
}

/// What to do with an incoming envelope.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Handled {
    /// Deliver this payload from this origin to the local channel.
    pub deliver: Option<(PeerName, Vec<u8>)>,
    /// Send these encoded envelopes to these neighbours.
    pub forward: Vec<(PeerName, Vec<u8>)>,
}

/// Wraps, floods and routes one channel's messages for the local peer.
#[derive(Debug)]
pub struct ChannelRouter {
    local: PeerName,
    next_seq: u64,
    seen: HashSet<(PeerName, u64)>,
    order: VecDeque<(PeerName, u64)>,
}

impl ChannelRouter {
    /// A router for the local peer. `first_seq` should differ between runs of the process
    /// (e.g. derived from the peer's uid) so a restarted peer's broadcasts are not taken for
    /// old ones.
    pub fn new(local: PeerName, first_seq: u64) -> Self {
        Self {
            local,
            next_seq: first_seq,
            seen: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    /// Send `payload` to `dest` (a unicast, along the routes) or to everyone (`None`).
    /// Returns the encoded envelopes and the neighbours to send them to; empty when `dest` is
    /// unreachable.
    pub fn send(
        &mut self,
        dest: Option<PeerName>,
        payload: Vec<u8>,
        neighbours: &[PeerName],
        routes: &Routes,
    ) -> Vec<(PeerName, Vec<u8>)> {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        let env = Envelope {
            origin: self.local,
            dest,
            seq,
            payload,
        };
        self.remember(self.local, seq);
        self.route(&env, None, neighbours, routes)
    }

    /// Handle an envelope received from the neighbour `from`.
    pub fn handle(
        &mut self,
        from: PeerName,
        bytes: &[u8],
        neighbours: &[PeerName],
        routes: &Routes,
    ) -> Result<Handled, ChannelError> {
        let env: Envelope = postcard::from_bytes(bytes).map_err(|_| ChannelError::Malformed)?;
        if env.origin == self.local {
            // Our own broadcast coming back round a cycle is a harmless duplicate; a unicast
            // from ourselves is a routing loop or a forgery.
            return match env.dest {
                None => Ok(Handled::default()),
                Some(_) => Err(ChannelError::FromSelf),
            };
        }
        match env.dest {
            Some(dest) if dest == self.local => Ok(Handled {
                deliver: Some((env.origin, env.payload)),
                forward: Vec::new(),
            }),
            Some(_) => Ok(Handled {
                deliver: None,
                forward: self.route(&env, Some(from), neighbours, routes),
            }),
            None => {
                if !self.remember(env.origin, env.seq) {
                    return Ok(Handled::default());
                }
                let forward = self.route(&env, Some(from), neighbours, routes);
                Ok(Handled {
                    deliver: Some((env.origin, env.payload)),
                    forward,
                })
            }
        }
    }

    /// Where an envelope goes from here, never back to the neighbour it came from.
    fn route(
        &self,
        env: &Envelope,
        came_from: Option<PeerName>,
        neighbours: &[PeerName],
        routes: &Routes,
    ) -> Vec<(PeerName, Vec<u8>)> {
        let targets: Vec<PeerName> = match env.dest {
            None => neighbours
                .iter()
                .copied()
                .filter(|n| Some(*n) != came_from && *n != env.origin)
                .collect(),
            Some(dest) => {
                let hop = if neighbours.contains(&dest) {
                    Some(dest)
                } else {
                    routes.next_hop(dest)
                };
                hop.filter(|h| Some(*h) != came_from).into_iter().collect()
            }
        };
        if targets.is_empty() {
            return Vec::new();
        }
        // An envelope always encodes: it holds only integers and bytes.
        let Ok(bytes) = postcard::to_allocvec(env) else {
            return Vec::new();
        };
        targets.into_iter().map(|t| (t, bytes.clone())).collect()
    }

    /// Record (origin, seq); false if it was already seen.
    fn remember(&mut self, origin: PeerName, seq: u64) -> bool {
        if !self.seen.insert((origin, seq)) {
            return false;
        }
        self.order.push_back((origin, seq));
        if self.order.len() > SEEN_CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ConnSummary, PeerSummary, ShortId, Topology};

    fn name(i: u64) -> PeerName {
        PeerName::new(0x0200_0000_0000 + i).unwrap()
    }

    /// Topology of a line 1 – 2 – 3 as seen by `local`.
    fn line_routes(local: u64) -> Routes {
        let summary = |i: u64, conns: &[u64]| PeerSummary {
            name: name(i),
            nickname: format!("p{i}"),
            uid: i,
            version: 1,
            short_id: ShortId::new(i as u16).unwrap(),
            connections: conns
                .iter()
                .map(|&c| ConnSummary {
                    remote: name(c),
                    address: format!("192.0.2.{c}:6783"),
                    outbound: c > i,
                    established: true,
                })
                .collect(),
        };
        let all = [summary(1, &[2]), summary(2, &[1, 3]), summary(3, &[2])];
        let mut topo = Topology::new(all[(local - 1) as usize].clone());
        let others: Vec<PeerSummary> = all
            .iter()
            .filter(|s| s.name != name(local))
            .cloned()
            .collect();
        topo.merge(&others).unwrap();
        Routes::compute(&topo)
    }

    #[test]
    fn broadcast_reaches_everyone_once_and_never_goes_back() {
        let (r1, r2, r3) = (line_routes(1), line_routes(2), line_routes(3));
        let mut c1 = ChannelRouter::new(name(1), 100);
        let mut c2 = ChannelRouter::new(name(2), 200);
        let mut c3 = ChannelRouter::new(name(3), 300);
        let out = c1.send(None, b"ring".to_vec(), &[name(2)], &r1);
        assert_eq!(out.len(), 1);
        let at2 = c2
            .handle(name(1), &out[0].1, &[name(1), name(3)], &r2)
            .unwrap();
        assert_eq!(at2.deliver, Some((name(1), b"ring".to_vec())));
        assert_eq!(
            at2.forward.iter().map(|f| f.0).collect::<Vec<_>>(),
            vec![name(3)]
        );
        let at3 = c3
            .handle(name(2), &at2.forward[0].1, &[name(2)], &r3)
            .unwrap();
        assert_eq!(at3.deliver, Some((name(1), b"ring".to_vec())));
        assert!(at3.forward.is_empty());
        // A second copy is not delivered again.
        assert_eq!(
            c2.handle(name(3), &out[0].1, &[name(1), name(3)], &r2)
                .unwrap(),
            Handled::default()
        );
        // In a triangle, B never sends A's broadcast back to A, nor to C it came from.
        let mut c2b = ChannelRouter::new(name(2), 900);
        let tri = c2b
            .handle(name(3), &out[0].1, &[name(1), name(3)], &r2)
            .unwrap();
        assert!(tri.forward.is_empty(), "{:?}", tri.forward);
    }

    #[test]
    fn unicast_is_routed_hop_by_hop() {
        let (r1, r2, r3) = (line_routes(1), line_routes(2), line_routes(3));
        let mut c1 = ChannelRouter::new(name(1), 1);
        let mut c2 = ChannelRouter::new(name(2), 1);
        let mut c3 = ChannelRouter::new(name(3), 1);
        let out = c1.send(Some(name(3)), b"ask".to_vec(), &[name(2)], &r1);
        assert_eq!(out.iter().map(|f| f.0).collect::<Vec<_>>(), vec![name(2)]);
        let at2 = c2
            .handle(name(1), &out[0].1, &[name(1), name(3)], &r2)
            .unwrap();
        assert!(at2.deliver.is_none());
        assert_eq!(
            at2.forward.iter().map(|f| f.0).collect::<Vec<_>>(),
            vec![name(3)]
        );
        let at3 = c3
            .handle(name(2), &at2.forward[0].1, &[name(2)], &r3)
            .unwrap();
        assert_eq!(at3.deliver, Some((name(1), b"ask".to_vec())));
        // Unreachable destination: nothing to send.
        assert!(
            c1.send(Some(name(9)), b"x".to_vec(), &[name(2)], &r1)
                .is_empty()
        );
    }

    #[test]
    fn bad_envelopes_are_refused() {
        let r2 = line_routes(2);
        let mut c2 = ChannelRouter::new(name(2), 1);
        assert_eq!(
            c2.handle(name(1), &[0xff, 0xff, 0xff], &[name(1)], &r2),
            Err(ChannelError::Malformed)
        );
        let echo = postcard::to_allocvec(&Envelope {
            origin: name(2),
            dest: None,
            seq: 5,
            payload: vec![],
        })
        .unwrap();
        assert_eq!(
            c2.handle(name(1), &echo, &[name(1)], &r2),
            Ok(Handled::default())
        );
        let forged = postcard::to_allocvec(&Envelope {
            origin: name(2),
            dest: Some(name(3)),
            seq: 6,
            payload: vec![],
        })
        .unwrap();
        assert_eq!(
            c2.handle(name(1), &forged, &[name(1)], &r2),
            Err(ChannelError::FromSelf)
        );
    }
}
