//! Layer: pure logic. One neighbour's encryption state, kept in the engine's per-neighbour
//! record (see [`Engine::set_link`](crate::Engine::set_link)): whether its datagrams are sealed
//! (and with which [`TxSession`]/[`RxSession`]) or travel in the clear (trusted subnets, or no
//! password at all), and opening/sealing datagrams in the data plane's own buffers without
//! copying the payload. The control plane installs and removes links only through the node's
//! `SetLink`/`RemoveLink` actions.
//!
//! A sealed datagram is `[VXLAN header][counter][ciphertext][tag]` (see
//! [`weft_crypto::data`]); the VXLAN header stays in the clear as associated data. After
//! opening, the header is moved next to the plaintext so the engine sees an ordinary VXLAN
//! datagram.

use std::ops::Range;

use weft_crypto::data::{COUNTER_LEN, OVERHEAD, OpenError, RxSession, TxSession};
use weft_crypto::handshake::DataKeys;
use weft_wire::vxlan::HEADER_LEN as VXLAN_HLEN;

/// Extra bytes a datagram to anyone may need (the sealing overhead).
pub const MAX_OVERHEAD: usize = OVERHEAD;

/// How traffic with one neighbour is protected.
// One per neighbour, used per datagram: kept inline rather than boxed.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Link {
    /// In the clear (both sides trust each other).
    Plain { conn_uid: u64 },
    /// Sealed.
    Sealed {
        conn_uid: u64,
        tx: TxSession,
        rx: RxSession,
        /// The previous connection's receiving session, for datagrams still in flight when a
        /// connection to the same peer replaced it; dropped once the new keys opened one.
        old_rx: Option<RxSession>,
    },
}

/// Why a received datagram was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// From an address with no link: not a neighbour (yet).
    Unknown,
    /// Failed authentication (forged, corrupted, or unsealed where sealing is required).
    Auth,
    /// A replay.
    Replay,
}

/// A password is set and the neighbour has no keys (yet): do not send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoLink;

impl Link {
    /// The link of connection `conn_uid`: sealed with `keys`, or in the clear when `None`.
    /// `previous` is the link it replaces: if that was another connection's sealed link, its
    /// receiving session stays usable until the new keys opened a datagram.
    /// It seals as stream `stream` (the engine's; see [`weft_crypto::data`]).
    pub(crate) fn new(
        conn_uid: u64,
        keys: Option<&DataKeys>,
        previous: Option<Self>,
        stream: u8,
    ) -> Self {
        let old_rx = match previous {
            Some(Self::Sealed {
                conn_uid: old, rx, ..
            }) if old != conn_uid => Some(rx),
            _ => None,
        };
        match keys {
            Some(k) => {
                let (tx, rx) = k.sessions(stream);
                Self::Sealed {
                    conn_uid,
                    tx,
                    rx,
                    old_rx,
                }
            }
            None => Self::Plain { conn_uid },
        }
    }

    /// The connection that agreed this link.
    pub(crate) fn conn_uid(&self) -> u64 {
        match self {
            Self::Plain { conn_uid } | Self::Sealed { conn_uid, .. } => *conn_uid,
        }
    }

    /// Whether datagrams are sealed.
    pub(crate) fn is_sealed(&self) -> bool {
        matches!(self, Self::Sealed { .. })
    }

    /// The session to seal with; `None`: in the clear.
    pub(crate) fn sender(&mut self) -> Option<&mut TxSession> {
        match self {
            Self::Plain { .. } => None,
            Self::Sealed { tx, .. } => Some(tx),
        }
    }

    /// Open a received datagram in place; returns the range of `datagram` that holds the plain
    /// VXLAN datagram (header and frame). `scratch` keeps a copy while the new keys are tried,
    /// so the old ones can try it too (it grows to the longest datagram once, then is reused).
    pub(crate) fn open(
        &mut self,
        datagram: &mut [u8],
        scratch: &mut Vec<u8>,
    ) -> Result<Range<usize>, Refused> {
        let (rx, old_rx) = match self {
            Self::Plain { .. } => return Ok(0..datagram.len()),
            Self::Sealed { rx, old_rx, .. } => (rx, old_rx),
        };
        let stream = weft_wire::vxlan::stream_of(datagram);
        let opened = match old_rx {
            None => rx.open(datagram, VXLAN_HLEN, stream),
            Some(old) => {
                scratch.clear();
                scratch.extend_from_slice(datagram);
                match rx.open(datagram, VXLAN_HLEN, stream) {
                    Ok(r) => {
                        *old_rx = None;
                        Ok(r)
                    }
                    Err(OpenError::Auth) => {
                        datagram.copy_from_slice(scratch);
                        old.open(datagram, VXLAN_HLEN, stream)
                    }
                    Err(e) => Err(e),
                }
            }
        };
        match opened {
            Ok(payload) => {
                // [hdr][ctr][payload] -> [..][hdr][payload]
                datagram.copy_within(0..VXLAN_HLEN, COUNTER_LEN);
                Ok(COUNTER_LEN..payload.end)
            }
            Err(OpenError::Replay) => Err(Refused::Replay),
            Err(OpenError::Auth | OpenError::Truncated) => Err(Refused::Auth),
        }
    }
}

/// Write a datagram into `buf` with `f` (which writes a VXLAN header and payload at the start of
/// the slice it gets and returns the length), put `stream` (the sending engine's, see
/// [`EngineConfig::stream`](crate::EngineConfig::stream)) and the weft `flags` it sets for all
/// it sends ([`vxlan::EXPRESS`](weft_wire::vxlan::EXPRESS)) into its header, and seal it with
/// `tx` (a session of that stream) if given. Returns the datagram's length; 0 if it could not
/// be sealed.
pub fn build(
    tx: Option<&mut TxSession>,
    stream: u8,
    flags: u8,
    buf: &mut [u8],
    f: impl FnOnce(&mut [u8]) -> usize,
) -> usize {
    let Some(tx) = tx else {
        let n = f(buf);
        if n >= VXLAN_HLEN {
            buf[weft_wire::vxlan::STREAM_OFFSET] = stream;
            buf[weft_wire::vxlan::WEFT_FLAGS_OFFSET] |= flags;
        }
        return n;
    };
    debug_assert_eq!(tx.stream(), stream, "sealing session of another stream");
    let Some(inner) = buf.len().checked_sub(OVERHEAD) else {
        return 0;
    };
    // Write [hdr][payload] shifted by the counter's length, then move the header in front:
    // [hdr][(counter)][payload] is the layout the sealer wants.
    let n = f(&mut buf[COUNTER_LEN..COUNTER_LEN + inner]);
    if n < VXLAN_HLEN {
        return 0;
    }
    buf.copy_within(COUNTER_LEN..COUNTER_LEN + VXLAN_HLEN, 0);
    buf[weft_wire::vxlan::STREAM_OFFSET] = stream;
    buf[weft_wire::vxlan::WEFT_FLAGS_OFFSET] |= flags;
    tx.seal(buf, VXLAN_HLEN, n - VXLAN_HLEN).unwrap_or(0)
}
