//! Layer: pure logic. The decisions a control-connection handshake makes, as pure functions.
//!
//! The handshake has two steps, both symmetric (each side does the same thing at once):
//!
//! 1. Each side writes a [`Hello`] with the range of protocol versions it speaks. The version
//!    used is the highest both speak: `min(max_a, max_b)`, provided it is at least
//!    `max(min_a, min_b)`; otherwise the ranges do not overlap ([`negotiate`]).
//! 2. Each side sends [`Features`] as its first framed message. The remote's announcement is
//!    validated and checked against our own identity ([`check_features`]): the same name and
//!    uid means we dialled ourself, the same name with another uid is a collision.
//!
//! [`Connection`](crate::Connection) drives these steps; keeping them here lets them be tested
//! (and reused by a future simulator) without a connection around them.

use weft_wire::control::{Features, Hello};

use crate::connection::{CloseReason, ProtocolError};
use crate::identity::{LocalPeer, PeerName, PeerUid, RemotePeer, ShortId};

/// Picks the protocol version for a connection, or explains why there is none.
pub fn negotiate(ours: Hello, theirs: Hello) -> Result<u8, CloseReason> {
    let version = ours.max_version.min(theirs.max_version);
    let floor = ours.min_version.max(theirs.min_version);
    // An empty local range (a misconfiguration) fails here too: version <= ours.max < ours.min.
    if version >= floor && version >= 1 {
        Ok(version)
    } else {
        Err(CloseReason::VersionMismatch {
            ours: (ours.min_version, ours.max_version),
            theirs: (theirs.min_version, theirs.max_version),
        })
    }
}

/// Builds the [`Features`] we announce on a connection whose local id is `conn_id`.
pub fn local_features(local: &LocalPeer, conn_id: u64) -> Features {
    Features {
        name: local.name.get(),
        nickname: local.nickname.clone(),
        short_id: local.short_id.get(),
        uid: local.uid.0,
        conn_id,
        data_port: local.data_port,
        fastdp_port: local.fastdp_port,
    }
}

/// Validates the remote's [`Features`] and checks them against our own identity.
pub fn check_features(local: &LocalPeer, features: &Features) -> Result<RemotePeer, CloseReason> {
    let name = PeerName::new(features.name)
        .ok_or(CloseReason::ProtocolError(ProtocolError::InvalidPeerName))?;
    let short_id = ShortId::new(features.short_id)
        .ok_or(CloseReason::ProtocolError(ProtocolError::InvalidShortId))?;
    let uid = PeerUid(features.uid);
    if name == local.name {
        return Err(if uid == local.uid {
            CloseReason::ConnectToSelf
        } else {
            CloseReason::NameCollision { name }
        });
    }
    Ok(RemotePeer {
        name,
        nickname: features.nickname.clone(),
        short_id,
        uid,
        data_port: features.data_port,
        fastdp_port: features.fastdp_port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(min_version: u8, max_version: u8) -> Hello {
        Hello {
            min_version,
            max_version,
        }
    }

    #[test]
    fn negotiation() {
        assert_eq!(negotiate(hello(1, 1), hello(1, 1)), Ok(1));
        assert_eq!(negotiate(hello(1, 3), hello(2, 5)), Ok(3));
        assert_eq!(negotiate(hello(2, 5), hello(1, 3)), Ok(3));
        assert_eq!(negotiate(hello(1, 2), hello(2, 2)), Ok(2));
        assert_eq!(
            negotiate(hello(1, 1), hello(2, 3)),
            Err(CloseReason::VersionMismatch {
                ours: (1, 1),
                theirs: (2, 3)
            })
        );
        // A broken local range never negotiates.
        assert!(negotiate(hello(3, 2), hello(1, 5)).is_err());
        assert!(negotiate(hello(0, 0), hello(0, 0)).is_err());
    }

    fn local() -> LocalPeer {
        LocalPeer {
            name: PeerName::from_mac([0x02, 0, 0, 0, 0, 1]),
            nickname: "a".into(),
            short_id: ShortId::from_masked(1),
            uid: PeerUid(100),
            data_port: 6783,
            fastdp_port: 6784,
        }
    }

    #[test]
    fn features_checks() {
        let me = local();
        let mut f = local_features(&me, 9);
        assert_eq!(check_features(&me, &f), Err(CloseReason::ConnectToSelf));
        f.uid = 101;
        assert_eq!(
            check_features(&me, &f),
            Err(CloseReason::NameCollision { name: me.name })
        );
        f.name = 0x02_00_00_00_00_02;
        f.nickname = "b".into();
        let remote = check_features(&me, &f).unwrap();
        assert_eq!(remote.name.to_string(), "02:00:00:00:00:02");
        assert_eq!(remote.nickname, "b");
        assert_eq!(remote.uid, PeerUid(101));
        f.short_id = 4096;
        assert_eq!(
            check_features(&me, &f),
            Err(CloseReason::ProtocolError(ProtocolError::InvalidShortId))
        );
        f.short_id = 1;
        f.name = 1 << 48;
        assert_eq!(
            check_features(&me, &f),
            Err(CloseReason::ProtocolError(ProtocolError::InvalidPeerName))
        );
    }
}
