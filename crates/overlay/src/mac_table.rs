//! Layer: pure logic. The MAC table: which peer owns which Ethernet address, learned from
//! traffic ("flood and learn", as Weave does) and aged out after a while without traffic.

use std::collections::HashMap;
use std::time::Duration;

use weft_mesh::Instant;

/// Who owns a MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Owner {
    /// A container (or the host) on our own bridge.
    Local,
    /// A container behind the peer with this short id.
    Peer(u16),
}

/// What [`MacTable::learn`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// The address was not known.
    New,
    /// The address was known with the same owner; its age was reset.
    Refreshed,
    /// The address was known with another owner, which it now replaces.
    Moved {
        /// The previous owner.
        from: Owner,
    },
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    owner: Owner,
    last_seen: Instant,
    /// When this table's own traffic last showed the address ([`MacTable::learn`]); `None` if
    /// only a sibling table told it ([`MacTable::import`]).
    seen_here: Option<Instant>,
}

/// MAC address → owner, with ageing driven by the caller's clock.
#[derive(Debug, Clone)]
pub struct MacTable {
    entries: HashMap<[u8; 6], Entry>,
    max_age: Duration,
}

impl MacTable {
    /// Weave's ageing time: longer than the usual ARP cache lifetime.
    pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(600);

    /// An empty table whose entries expire `max_age` after they were last seen.
    pub fn new(max_age: Duration) -> Self {
        Self {
            entries: HashMap::new(),
            max_age,
        }
    }

    /// Record that `mac` was seen as a source behind `owner` at `now`.
    pub fn learn(&mut self, mac: [u8; 6], owner: Owner, now: Instant) -> Learned {
        let fresh = Entry {
            owner,
            last_seen: now,
            seen_here: Some(now),
        };
        match self.entries.get_mut(&mac) {
            Some(entry) if entry.owner == owner => {
                entry.last_seen = now;
                entry.seen_here = Some(now);
                Learned::Refreshed
            }
            Some(entry) => {
                let from = entry.owner;
                *entry = fresh;
                Learned::Moved { from }
            }
            None => {
                self.entries.insert(mac, fresh);
                Learned::New
            }
        }
    }

    /// Record what a sibling table (another data-plane thread's) learned: `mac` was seen
    /// behind `owner` at `now`. Unlike [`learn`](Self::learn) this does not count as seen
    /// here, so it is never passed back ([`seen_here_since`](Self::seen_here_since)).
    pub fn import(&mut self, mac: [u8; 6], owner: Owner, now: Instant) {
        match self.entries.get_mut(&mac) {
            Some(entry) if entry.owner == owner => {
                entry.last_seen = entry.last_seen.max(now);
            }
            _ => {
                self.entries.insert(
                    mac,
                    Entry {
                        owner,
                        last_seen: now,
                        seen_here: None,
                    },
                );
            }
        }
    }

    /// The addresses this table's own traffic showed at or after `since`, with their owners.
    pub fn seen_here_since(&self, since: Instant) -> impl Iterator<Item = ([u8; 6], Owner)> + '_ {
        self.entries
            .iter()
            .filter(move |(_, e)| e.seen_here.is_some_and(|t| t >= since))
            .map(|(mac, e)| (*mac, e.owner))
    }

    /// The owner of `mac`, if it was seen within the ageing time.
    pub fn lookup(&self, mac: &[u8; 6], now: Instant) -> Option<Owner> {
        let entry = self.entries.get(mac)?;
        (now.saturating_duration_since(entry.last_seen) < self.max_age).then_some(entry.owner)
    }

    /// Remove entries not seen within the ageing time; returns how many went.
    pub fn expire(&mut self, now: Instant) -> usize {
        let before = self.entries.len();
        let max_age = self.max_age;
        self.entries
            .retain(|_, e| now.saturating_duration_since(e.last_seen) < max_age);
        before - self.entries.len()
    }

    /// Forget every address behind `peer` (the peer went away).
    pub fn forget_peer(&mut self, peer: u16) -> usize {
        let before = self.entries.len();
        self.entries.retain(|_, e| e.owner != Owner::Peer(peer));
        before - self.entries.len()
    }

    /// Number of entries (expired ones included until [`expire`](Self::expire) runs).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the table holds no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every entry with its owner and when it was last seen.
    pub fn iter(&self) -> impl Iterator<Item = ([u8; 6], Owner, Instant)> + '_ {
        self.entries
            .iter()
            .map(|(mac, e)| (*mac, e.owner, e.last_seen))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 6] = [2, 0, 0, 0, 0, 1];

    #[test]
    fn learns_refreshes_moves_and_ages() {
        let mut t = MacTable::new(Duration::from_secs(10));
        let t0 = Instant::ZERO;
        assert_eq!(t.learn(A, Owner::Local, t0), Learned::New);
        assert_eq!(t.lookup(&A, t0), Some(Owner::Local));
        let t5 = t0 + Duration::from_secs(5);
        assert_eq!(t.learn(A, Owner::Local, t5), Learned::Refreshed);
        assert_eq!(
            t.learn(A, Owner::Peer(7), t5),
            Learned::Moved { from: Owner::Local }
        );
        // Refreshed at 5 s, so still alive at 14 s and gone at 15 s.
        assert_eq!(
            t.lookup(&A, t0 + Duration::from_secs(14)),
            Some(Owner::Peer(7))
        );
        assert_eq!(t.lookup(&A, t0 + Duration::from_secs(15)), None);
        assert_eq!(t.expire(t0 + Duration::from_secs(14)), 0);
        assert_eq!(t.expire(t0 + Duration::from_secs(15)), 1);
        assert!(t.is_empty());
    }

    #[test]
    fn imported_entries_live_and_move_but_are_never_passed_back() {
        let mut t = MacTable::new(Duration::from_secs(10));
        let t0 = Instant::ZERO;
        let s = |n| t0 + Duration::from_secs(n);
        t.import(A, Owner::Peer(3), t0);
        assert_eq!(t.lookup(&A, s(9)), Some(Owner::Peer(3)));
        assert_eq!(t.seen_here_since(t0).count(), 0, "told, not seen");
        // A newer import refreshes it, an older one does not age it back.
        t.import(A, Owner::Peer(3), s(5));
        t.import(A, Owner::Peer(3), s(1));
        assert_eq!(t.lookup(&A, s(14)), Some(Owner::Peer(3)));
        assert_eq!(t.lookup(&A, s(15)), None);
        // Seen here: passed on from then.
        t.learn(A, Owner::Peer(3), s(6));
        assert_eq!(
            t.seen_here_since(s(6)).collect::<Vec<_>>(),
            [(A, Owner::Peer(3))]
        );
        assert_eq!(t.seen_here_since(s(7)).count(), 0);
        // A move told by a sibling replaces the owner.
        t.import(A, Owner::Local, s(8));
        assert_eq!(t.lookup(&A, s(8)), Some(Owner::Local));
        assert_eq!(t.seen_here_since(t0).count(), 0);
    }

    #[test]
    fn forget_peer_only_removes_that_peer() {
        let mut t = MacTable::new(MacTable::DEFAULT_MAX_AGE);
        let now = Instant::ZERO;
        t.learn(A, Owner::Peer(1), now);
        t.learn([2, 0, 0, 0, 0, 2], Owner::Peer(2), now);
        t.learn([2, 0, 0, 0, 0, 3], Owner::Local, now);
        assert_eq!(t.forget_peer(1), 1);
        assert_eq!(t.len(), 2);
        assert_eq!(t.lookup(&A, now), None);
    }
}
