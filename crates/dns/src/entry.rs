//! One name entry as it is stored and gossiped, and the merge rule between two copies.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use weft_mesh::PeerName;

/// Longest hostname accepted (RFC 1035 presentation limit, with the trailing dot).
pub const MAX_HOSTNAME: usize = 254;
/// Longest container identifier accepted.
pub const MAX_CONTAINER: usize = 256;

/// One name → address mapping, owned by the peer that registered it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Fully qualified name as registered (trailing dot, case kept).
    pub hostname: String,
    /// The container (or `weave:extern`, ...) it belongs to.
    pub container: String,
    /// The peer that registered it; only that peer changes it.
    pub origin: PeerName,
    /// The address the name resolves to.
    pub addr: Ipv4Addr,
    /// Bumped by the origin on every change.
    pub version: u64,
    /// Wall-clock second the origin deleted it; 0 while it is live.
    pub tombstone: u64,
}

/// What identifies an entry (everything but its version and tombstone); ordered by the
/// lowercased hostname first so lookups are range scans.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    /// Lowercased hostname.
    pub lower: String,
    /// Hostname as registered.
    pub hostname: String,
    /// Origin peer.
    pub origin: PeerName,
    /// Container identifier.
    pub container: String,
    /// Address.
    pub addr: Ipv4Addr,
}

impl Entry {
    /// The entry's identity.
    pub fn key(&self) -> Key {
        Key {
            lower: self.hostname.to_ascii_lowercase(),
            hostname: self.hostname.clone(),
            origin: self.origin,
            container: self.container.clone(),
            addr: self.addr,
        }
    }

    /// Whether the entry is deleted.
    pub fn is_tombstone(&self) -> bool {
        self.tombstone != 0
    }

    /// The part that merging compares.
    pub fn stamp(&self) -> (u64, u64) {
        (self.version, self.tombstone)
    }

    /// Whether the strings are within limits (gossip from a peer is checked too).
    pub fn is_valid(&self) -> bool {
        valid_hostname(&self.hostname)
            && !self.container.is_empty()
            && self.container.len() <= MAX_CONTAINER
    }
}

/// Merge `incoming` into `current` (two copies of the same entry): the larger (version,
/// tombstone) wins. Returns whether `current` changed. Commutative, associative and idempotent
/// over the entry's state, so peers agree whatever order copies arrive in.
pub fn merge_entry(current: &mut Entry, incoming: &Entry) -> bool {
    debug_assert_eq!(current.key(), incoming.key());
    if incoming.stamp() > current.stamp() {
        current.version = incoming.version;
        current.tombstone = incoming.tombstone;
        true
    } else {
        false
    }
}

/// A hostname weft accepts: a fully qualified name (trailing dot) of labels of 1 to 63 letters,
/// digits, `-` or `_`, at most [`MAX_HOSTNAME`] bytes.
pub fn valid_hostname(name: &str) -> bool {
    let Some(body) = name.strip_suffix('.') else {
        return false;
    };
    !body.is_empty()
        && name.len() <= MAX_HOSTNAME
        && body.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// `name` with a trailing dot.
pub fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_owned()
    } else {
        format!("{name}.")
    }
}

/// Whether fully qualified `name` lies in fully qualified `domain` (case-insensitive), the
/// domain itself excluded.
pub fn in_domain(name: &str, domain: &str) -> bool {
    let (n, d) = (name.as_bytes(), domain.as_bytes());
    n.len() > d.len() + 1
        && n[n.len() - d.len()..].eq_ignore_ascii_case(d)
        && n[n.len() - d.len() - 1] == b'.'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames() {
        assert!(valid_hostname("chronos1.weave.local."));
        assert!(valid_hostname("A_b-1.weave.local."));
        assert!(!valid_hostname("chronos1.weave.local"));
        assert!(!valid_hostname("."));
        assert!(!valid_hostname("a..b."));
        assert!(!valid_hostname("a b.c."));
        assert!(!valid_hostname(&format!("{}.x.", "a".repeat(64))));
        assert!(!valid_hostname(&format!("{}.", "a.".repeat(130))));
        assert!(in_domain("x.weave.local.", "weave.local."));
        assert!(in_domain("X.y.WEAVE.Local.", "weave.local."));
        assert!(!in_domain("weave.local.", "weave.local."));
        assert!(!in_domain("xweave.local.", "weave.local."));
        assert!(!in_domain("x.example.com.", "weave.local."));
        assert_eq!(fqdn("a.b"), "a.b.");
        assert_eq!(fqdn("a.b."), "a.b.");
    }
}
