//! Test harness: two [`Connection`]s wired back to back in memory, on a virtual clock.
//!
//! In the spirit of quinn-proto's `tests/util.rs`: no sockets, no real time. [`Pair::drive`]
//! shuttles bytes until both sides are quiet; [`Pair::advance_to`] moves the clock forward,
//! firing each side's timers at exactly the instant it asked for.

use std::time::Duration;

use crate::{
    ConnConfig, ConnState, Connection, Event, Instant, LocalPeer, PeerName, PeerUid, ShortId,
};

pub(super) fn peer(last: u8, uid: u64) -> LocalPeer {
    LocalPeer {
        name: PeerName::from_mac([0x02, 0, 0, 0, 0, last]),
        nickname: format!("host-{last}"),
        short_id: ShortId::from_masked(u16::from(last)),
        uid: PeerUid(uid),
        data_port: 6784,
        fastdp_port: 0,
    }
}

/// One end of the pair plus what it has emitted.
pub(super) struct Side {
    pub(super) conn: Connection,
    /// Every event, stamped with the virtual time it was polled at.
    pub(super) events: Vec<(Instant, Event)>,
    /// Drop everything this side transmits (it "stops talking").
    pub(super) mute: bool,
    /// Total bytes this side has transmitted (including dropped ones).
    pub(super) sent: usize,
}

impl Side {
    fn new(conn: Connection) -> Self {
        Self {
            conn,
            events: Vec::new(),
            mute: false,
            sent: 0,
        }
    }

    fn collect(&mut self, now: Instant) {
        while let Some(e) = self.conn.poll_event() {
            self.events.push((now, e));
        }
    }

    /// Events without their time stamps.
    pub(super) fn events(&self) -> Vec<Event> {
        self.events.iter().map(|(_, e)| e.clone()).collect()
    }

    /// The close event and when it happened, if any.
    pub(super) fn closed(&self) -> Option<(Instant, crate::CloseReason)> {
        self.events.iter().find_map(|(t, e)| match e {
            Event::Closed(r) => Some((*t, r.clone())),
            _ => None,
        })
    }

    pub(super) fn state(&self) -> ConnState {
        self.conn.state()
    }
}

pub(super) struct Pair {
    pub(super) now: Instant,
    /// The dialling side.
    pub(super) a: Side,
    /// The accepting side.
    pub(super) b: Side,
    /// Largest slice handed to `handle_bytes` at once (1 = byte by byte).
    pub(super) chunk: usize,
}

impl Pair {
    pub(super) fn new(a: LocalPeer, b: LocalPeer) -> Self {
        Self::with_config(a, ConnConfig::default(), b, ConnConfig::default())
    }

    pub(super) fn with_config(
        a: LocalPeer,
        a_cfg: ConnConfig,
        b: LocalPeer,
        b_cfg: ConnConfig,
    ) -> Self {
        let now = Instant::ZERO;
        Self {
            now,
            a: Side::new(Connection::new(a, true, 0x1111_2222_3333_4444, now, a_cfg)),
            b: Side::new(Connection::new(b, false, 0x0f0f_0f0f_5555_6666, now, b_cfg)),
            chunk: usize::MAX,
        }
    }

    /// Moves bytes from `from` to `to` once; true if anything was sent.
    fn transfer(now: Instant, chunk: usize, from: &mut Side, to: &mut Side) -> bool {
        let mut buf = Vec::new();
        if !from.conn.poll_transmit(&mut buf) {
            return false;
        }
        from.sent += buf.len();
        if !from.mute {
            for piece in buf.chunks(chunk.max(1)) {
                to.conn.handle_bytes(now, piece);
            }
        }
        true
    }

    /// Shuttles bytes both ways until neither side has anything to send.
    pub(super) fn drive(&mut self) {
        loop {
            let ab = Self::transfer(self.now, self.chunk, &mut self.a, &mut self.b);
            let ba = Self::transfer(self.now, self.chunk, &mut self.b, &mut self.a);
            self.a.collect(self.now);
            self.b.collect(self.now);
            if !ab && !ba {
                break;
            }
        }
    }

    /// Advances virtual time to `until`, waking each side at its own deadlines on the way.
    pub(super) fn advance_to(&mut self, until: Instant) {
        self.drive();
        loop {
            let next = [self.a.conn.poll_timeout(), self.b.conn.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            let Some(next) = next.filter(|t| *t <= until) else {
                break;
            };
            self.now = self.now.max(next);
            for side in [&mut self.a, &mut self.b] {
                if side.conn.poll_timeout().is_some_and(|t| t <= self.now) {
                    side.conn.handle_timeout(self.now);
                }
            }
            self.drive();
        }
        self.now = self.now.max(until);
    }

    pub(super) fn advance(&mut self, d: Duration) {
        self.advance_to(self.now + d);
    }
}
