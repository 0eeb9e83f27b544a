//! Layer: pure logic. Who a peer is: its name, short id and incarnation uid.
//!
//! A [`PeerName`] is a 48-bit number printed like a MAC address. It is stable across restarts
//! (derived from the machine's ids, or given by the user). A [`ShortId`] is the 12-bit number the
//! data plane puts in VXLAN VNIs. A [`PeerUid`] is random per process, so a restarted peer (same
//! name, new uid) can be told from the old one, and a connection to ourself (same name, same uid)
//! from a name collision (same name, different uid).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Salt hashed in front of the machine ids by [`PeerName::derive`]. Changing it renames every
/// peer, so it is fixed forever.
const DERIVE_SALT: &[u8] = b"weft-peer-name-v1:";

/// A peer's 48-bit name, printed like a MAC address (`aa:bb:cc:dd:ee:ff`).
///
/// Serialized as its `u64` value; deserializing a value wider than 48 bits fails.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct PeerName(u64);

/// Why a string is not a peer name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PeerNameError {
    /// The text is not six colon-separated hex bytes (optionally abbreviated with `::`).
    #[error("invalid peer name: expected six hex bytes like aa:bb:cc:dd:ee:ff")]
    Syntax,
}

impl PeerName {
    /// Largest valid name value (`ff:ff:ff:ff:ff:ff`).
    pub const MAX: u64 = (1 << 48) - 1;

    /// The name with value `value`, or `None` if it does not fit in 48 bits.
    pub const fn new(value: u64) -> Option<Self> {
        if value > Self::MAX {
            None
        } else {
            Some(Self(value))
        }
    }

    /// The name whose six bytes are `mac`, most significant first.
    pub const fn from_mac(mac: [u8; 6]) -> Self {
        let [a, b, c, d, e, f] = mac;
        Self(u64::from_be_bytes([0, 0, a, b, c, d, e, f]))
    }

    /// Derives a stable name from the host's ids.
    ///
    /// The name is the first six bytes of SHA-256 over a fixed weft salt followed by
    /// `machine_id` then `product_uuid`, with the locally-administered bit set and the multicast
    /// bit cleared, so it is a valid unicast MAC that cannot clash with a real NIC's.
    pub fn derive(machine_id: &[u8], product_uuid: &[u8]) -> Self {
        let mut hash = Sha256::new();
        hash.update(DERIVE_SALT);
        hash.update(machine_id);
        hash.update(product_uuid);
        let digest = hash.finalize();
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&digest[..6]);
        mac[0] = (mac[0] | 0x02) & !0x01;
        Self::from_mac(mac)
    }

    /// The 48-bit value, as carried on the wire.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The six bytes, most significant first.
    pub const fn to_mac(self) -> [u8; 6] {
        let [_, _, a, b, c, d, e, f] = self.0.to_be_bytes();
        [a, b, c, d, e, f]
    }
}

impl fmt::Display for PeerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.to_mac();
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for PeerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerName({self})")
    }
}

impl FromStr for PeerName {
    type Err = PeerNameError;

    /// Accepts `aa:bb:cc:dd:ee:ff` (one or two hex digits per byte, any case) and, as Weave
    /// does, an IPv6-style `::` standing for one or more zero bytes: `::1` is
    /// `00:00:00:00:00:01`, `aa::1` is `aa:00:00:00:00:01`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        fn groups(part: &str) -> Result<Vec<u8>, PeerNameError> {
            if part.is_empty() {
                return Ok(Vec::new());
            }
            part.split(':')
                .map(|g| {
                    if g.is_empty() || g.len() > 2 || !g.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(PeerNameError::Syntax);
                    }
                    u8::from_str_radix(g, 16).map_err(|_| PeerNameError::Syntax)
                })
                .collect()
        }

        let bytes = match s.split_once("::") {
            Some((left, right)) => {
                let left = groups(left)?;
                let right = groups(right)?;
                if left.len() + right.len() > 5 {
                    return Err(PeerNameError::Syntax);
                }
                let mut bytes = left;
                bytes.resize(6 - right.len(), 0);
                bytes.extend(right);
                bytes
            }
            None => groups(s)?,
        };
        let mac: [u8; 6] = bytes.try_into().map_err(|_| PeerNameError::Syntax)?;
        Ok(Self::from_mac(mac))
    }
}

/// A peer's 12-bit short id (0..4096), used in VXLAN VNIs.
///
/// Serialized as its `u16` value; deserializing a value wider than 12 bits fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u16", into = "u16")]
pub struct ShortId(u16);

/// A number does not fit the 48 bits of a [`PeerName`] or the 12 bits of a [`ShortId`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("value out of range")]
pub struct OutOfRange;

impl TryFrom<u64> for PeerName {
    type Error = OutOfRange;

    fn try_from(value: u64) -> Result<Self, OutOfRange> {
        Self::new(value).ok_or(OutOfRange)
    }
}

impl From<PeerName> for u64 {
    fn from(name: PeerName) -> Self {
        name.get()
    }
}

impl TryFrom<u16> for ShortId {
    type Error = OutOfRange;

    fn try_from(value: u16) -> Result<Self, OutOfRange> {
        Self::new(value).ok_or(OutOfRange)
    }
}

impl From<ShortId> for u16 {
    fn from(id: ShortId) -> Self {
        id.get()
    }
}

impl ShortId {
    /// Largest valid short id.
    pub const MAX: u16 = 0x0fff;

    /// The short id `value`, or `None` if it does not fit in 12 bits.
    pub const fn new(value: u16) -> Option<Self> {
        if value > Self::MAX {
            None
        } else {
            Some(Self(value))
        }
    }

    /// The low 12 bits of `value` as a short id (for turning random numbers into ids).
    pub const fn from_masked(value: u16) -> Self {
        Self(value & Self::MAX)
    }

    /// The 12-bit value.
    pub const fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for ShortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A random id for one incarnation of a peer; a restarted peer picks a new one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerUid(pub u64);

impl fmt::Display for PeerUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Who we are, as announced to every peer we connect to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalPeer {
    /// Our stable name.
    pub name: PeerName,
    /// Human-friendly name, usually the host name.
    pub nickname: String,
    /// Our short id for VXLAN VNIs.
    pub short_id: ShortId,
    /// Random id of this process.
    pub uid: PeerUid,
    /// UDP port we receive VXLAN traffic on.
    pub data_port: u16,
    /// UDP port of our kernel fast path (0: none).
    pub fastdp_port: u16,
}

/// What a remote peer announced about itself on a control connection (already validated).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemotePeer {
    /// The peer's name.
    pub name: PeerName,
    /// The peer's nickname, as sent (not trusted for anything).
    pub nickname: String,
    /// The peer's short id.
    pub short_id: ShortId,
    /// The peer's incarnation id.
    pub uid: PeerUid,
    /// UDP port the peer receives VXLAN traffic on.
    pub data_port: u16,
    /// UDP port of the peer's kernel fast path (0: none).
    pub fastdp_port: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        let n = PeerName::from_mac([0xaa, 0xbb, 0x0c, 0x00, 0xee, 0xff]);
        assert_eq!(n.to_string(), "aa:bb:0c:00:ee:ff");
        assert_eq!("aa:bb:0c:00:ee:ff".parse(), Ok(n));
        assert_eq!("AA:BB:c:0:EE:FF".parse(), Ok(n));
        assert_eq!(n.get(), 0xaabb_0c00_eeff);
        assert_eq!(PeerName::new(n.get()), Some(n));
        assert_eq!(n.to_mac(), [0xaa, 0xbb, 0x0c, 0x00, 0xee, 0xff]);
        assert_eq!(format!("{n:?}"), "PeerName(aa:bb:0c:00:ee:ff)");
        for v in [0, 1, PeerName::MAX, 0x0123_4567_89ab] {
            let n = PeerName::new(v).unwrap();
            assert_eq!(n.to_string().parse(), Ok(n));
        }
    }

    #[test]
    fn parse_abbreviations() {
        let p = |s: &str| s.parse::<PeerName>().map(PeerName::get);
        assert_eq!(p("::1"), Ok(1));
        assert_eq!(p("::"), Ok(0));
        assert_eq!(p("aa::"), Ok(0xaa00_0000_0000));
        assert_eq!(p("aa::1"), Ok(0xaa00_0000_0001));
        assert_eq!(p("1:2::3"), Ok(0x0102_0000_0003));
        assert_eq!(p("1:2:3:4::5"), Ok(0x0102_0304_0005));
        for bad in [
            "",
            ":",
            ":::",
            "::1::",
            "1:2:3:4:5:6::",
            "1:2:3:4:5::6",
            "aa:bb:cc:dd:ee",
            "aa:bb:cc:dd:ee:ff:00",
            "aaa:bb:cc:dd:ee:ff",
            "gg:bb:cc:dd:ee:ff",
            "aa:bb:cc:dd:ee:",
            "+a:bb:cc:dd:ee:ff",
            "aa-bb-cc-dd-ee-ff",
        ] {
            assert_eq!(
                bad.parse::<PeerName>(),
                Err(PeerNameError::Syntax),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn new_rejects_more_than_48_bits() {
        assert_eq!(PeerName::new(1 << 48), None);
        assert_eq!(PeerName::new(u64::MAX), None);
    }

    #[test]
    fn derive_is_stable_and_unicast_local() {
        let a = PeerName::derive(b"0123456789abcdef", b"4c4c4544-0042");
        assert_eq!(a, PeerName::derive(b"0123456789abcdef", b"4c4c4544-0042"));
        assert_ne!(a, PeerName::derive(b"0123456789abcdef", b"4c4c4544-0043"));
        assert_ne!(a, PeerName::derive(b"0123456789abcdee", b"4c4c4544-0042"));
        for (m, p) in [(&b""[..], &b""[..]), (b"x", b"y"), (b"machine", b"")] {
            let mac = PeerName::derive(m, p).to_mac();
            assert_eq!(mac[0] & 0x02, 0x02, "locally administered");
            assert_eq!(mac[0] & 0x01, 0, "unicast");
        }
        // Pin the derivation (value computed independently with Python's hashlib): changing the
        // salt or the input order would silently rename every peer.
        assert_eq!(
            PeerName::derive(b"weft", b"test").to_string(),
            "be:a0:43:ec:c3:ab"
        );
    }

    #[test]
    fn short_id() {
        assert_eq!(ShortId::new(4095).map(ShortId::get), Some(4095));
        assert_eq!(ShortId::new(4096), None);
        assert_eq!(ShortId::from_masked(0xffff).get(), 0x0fff);
        assert_eq!(ShortId::from_masked(0x1234).get(), 0x0234);
    }
}
