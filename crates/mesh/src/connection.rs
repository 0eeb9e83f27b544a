//! Layer: pure logic. The state machine for one TCP control connection, quinn-style.
//!
//! A [`Connection`] owns no socket and reads no clock. Its driver (the router, a simulator or a
//! test) feeds it what arrived with [`handle_bytes`](Connection::handle_bytes), wakes it at
//! [`poll_timeout`](Connection::poll_timeout) with [`handle_timeout`](Connection::handle_timeout),
//! writes out whatever [`poll_transmit`](Connection::poll_transmit) yields and acts on
//! [`poll_event`](Connection::poll_event). Every call takes `now`, so the same code runs on real
//! and virtual time.
//!
//! Lifecycle ([`ConnState`]):
//!
//! - `AwaitingHello`: our [`Hello`] is queued at construction; we wait for the peer's 6 bytes and
//!   negotiate a version (see [`handshake`]). Then we queue our `Features`.
//! - `AwaitingFeatures`: the peer's first frame must be `Features`; it is checked against our
//!   identity (connect-to-self, name collision). Both steps together must finish within
//!   [`ConnConfig::hello_timeout`].
//! - `Ready`: [`Event::Ready`] was emitted. We send a `Heartbeat` whenever we sent nothing for
//!   [`ConnConfig::heartbeat_interval`], and close with [`CloseReason::IdleTimeout`] if nothing
//!   arrived for [`ConnConfig::idle_timeout`].
//! - `Closed`: exactly one [`Event::Closed`] was emitted. Later input is ignored. Bytes queued
//!   before the close (e.g. our hello) can still be drained, so the peer learns *why* (it sees
//!   our version range, say) before the driver shuts the socket.
//!
//! Any input, however malformed, ends in an [`Event::Closed`], never a panic.

use std::collections::VecDeque;
use std::time::Duration;

use weft_wire::control::{
    self, FrameDecoder, FrameError, HELLO_LEN, Hello, HelloError, MAGIC, MAX_FRAME, Message,
};

use crate::handshake;
use crate::identity::{LocalPeer, PeerName, RemotePeer};
use crate::time::Instant;

/// Tunables for a control connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnConfig {
    /// Lowest protocol version we accept.
    pub min_version: u8,
    /// Highest protocol version we speak.
    pub max_version: u8,
    /// Time allowed from construction until the hello and features exchange is complete.
    pub hello_timeout: Duration,
    /// Send a heartbeat after this long without sending anything. Zero is treated as 1 ms.
    pub heartbeat_interval: Duration,
    /// Close the connection after this long without receiving anything.
    pub idle_timeout: Duration,
}

impl Default for ConnConfig {
    fn default() -> Self {
        Self {
            min_version: control::PROTOCOL_MIN,
            max_version: control::PROTOCOL_MAX,
            hello_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// Where a connection is in its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConnState {
    /// Waiting for the peer's 6-byte hello.
    AwaitingHello,
    /// Version agreed; waiting for the peer's `Features`.
    AwaitingFeatures,
    /// Handshake complete; messages flow.
    Ready,
    /// Finished; see the [`Event::Closed`] reason.
    Closed,
}

/// Why a connection closed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CloseReason {
    /// The version ranges of the two sides do not overlap.
    #[error(
        "protocol version mismatch: we speak {}..{}, peer speaks {}..{}",
        ours.0, ours.1, theirs.0, theirs.1
    )]
    VersionMismatch {
        /// Our (min, max) versions.
        ours: (u8, u8),
        /// The peer's (min, max) versions.
        theirs: (u8, u8),
    },
    /// The peer's first bytes were not the weft magic.
    #[error("peer does not speak the weft control protocol (bad magic)")]
    BadMagic,
    /// The peer has our name and our uid: we connected to ourself.
    #[error("cannot connect to ourself")]
    ConnectToSelf,
    /// The peer has our name but another uid: two peers share a name.
    #[error("peer name collision: another peer is also called {name}")]
    NameCollision {
        /// The shared name.
        name: PeerName,
    },
    /// The peer broke the protocol in a well-formed way.
    #[error("protocol error: {0}")]
    ProtocolError(ProtocolError),
    /// The hello and features exchange did not finish within the hello timeout.
    #[error("handshake did not complete in time")]
    HelloTimeout,
    /// Nothing was received within the idle timeout.
    #[error("peer went silent: nothing received within the idle timeout")]
    IdleTimeout,
    /// The peer sent a frame that is not a valid message.
    #[error("peer sent a malformed control message")]
    Malformed,
    /// The peer announced a frame larger than the limit.
    #[error("peer sent a control frame larger than {MAX_FRAME} bytes")]
    TooLarge,
    /// We closed it ([`Connection::close`]).
    #[error("closed locally")]
    Local,
}

/// Ways a peer can break the protocol with well-formed bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The peer's hello announced an empty or zero version range.
    #[error("invalid version range {min}..{max} in hello")]
    InvalidVersionRange {
        /// Announced minimum.
        min: u8,
        /// Announced maximum.
        max: u8,
    },
    /// The peer's first message was not `Features`.
    #[error("first message was not Features")]
    ExpectedFeatures,
    /// The peer sent `Features` again after the handshake.
    #[error("Features sent twice")]
    DuplicateFeatures,
    /// The announced peer name does not fit in 48 bits.
    #[error("peer name wider than 48 bits")]
    InvalidPeerName,
    /// The announced short id does not fit in 12 bits.
    #[error("short id wider than 12 bits")]
    InvalidShortId,
}

/// Why [`Connection::send`] refused a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The connection is not `Ready` (handshake pending or closed).
    #[error("connection is not ready")]
    NotReady,
    /// `Features` is sent by the handshake itself and may not be sent again.
    #[error("Features is sent by the handshake only")]
    Reserved,
    /// The encoded message would exceed [`MAX_FRAME`] bytes.
    #[error("message of {0} bytes exceeds the {MAX_FRAME}-byte frame limit")]
    TooLarge(usize),
}

/// Something the driver should know about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The handshake completed.
    Ready {
        /// What the peer announced.
        remote: RemotePeer,
        /// Local conn id XOR remote conn id: the same on both ends.
        conn_uid: u64,
        /// Negotiated protocol version.
        version: u8,
    },
    /// The peer reports that our UDP heartbeats for `conn_uid` reach it.
    DataPathAck {
        /// The connection UID the peer saw in our heartbeats.
        conn_uid: u64,
    },
    /// Any other message (gossip, ...), for the layer above.
    Message(Message),
    /// The connection is finished; no more events follow.
    Closed(CloseReason),
}

/// One TCP control connection, as a sans-IO state machine.
#[derive(Debug)]
pub struct Connection {
    config: ConnConfig,
    local: LocalPeer,
    /// Whether we dialled (true) or accepted (false). The protocol is symmetric; this is for
    /// the driver's bookkeeping and for logs.
    outbound: bool,
    /// Our random half of the connection UID.
    conn_id: u64,
    state: ConnState,
    /// The peer's hello, as far as it has arrived.
    hello: [u8; HELLO_LEN],
    hello_len: usize,
    /// Framed input after the hello.
    decoder: FrameDecoder,
    /// Bytes waiting for `poll_transmit`.
    outgoing: Vec<u8>,
    events: VecDeque<Event>,
    remote: Option<RemotePeer>,
    conn_uid: Option<u64>,
    version: Option<u8>,
    /// When the handshake must be complete.
    handshake_deadline: Instant,
    /// When we last received any byte.
    last_recv: Instant,
    /// When we next owe the peer a heartbeat (meaningful once `Ready`).
    next_heartbeat: Instant,
}

impl Connection {
    /// Starts a connection and queues our hello for transmission.
    ///
    /// `conn_id` should be random; the connection UID both sides agree on is our `conn_id`
    /// XOR the peer's.
    pub fn new(
        local: LocalPeer,
        outbound: bool,
        conn_id: u64,
        now: Instant,
        config: ConnConfig,
    ) -> Self {
        let hello = Hello {
            min_version: config.min_version,
            max_version: config.max_version,
        };
        let mut outgoing = Vec::with_capacity(256);
        outgoing.extend_from_slice(&hello.emit());
        Self {
            handshake_deadline: now + config.hello_timeout,
            last_recv: now,
            next_heartbeat: now,
            config,
            local,
            outbound,
            conn_id,
            state: ConnState::AwaitingHello,
            hello: [0; HELLO_LEN],
            hello_len: 0,
            decoder: FrameDecoder::new(),
            outgoing,
            events: VecDeque::new(),
            remote: None,
            conn_uid: None,
            version: None,
        }
    }

    /// Processes bytes received from the peer. Protocol errors close the connection and
    /// surface as [`Event::Closed`]; bytes after the close are ignored.
    pub fn handle_bytes(&mut self, now: Instant, mut data: &[u8]) {
        if self.state == ConnState::Closed || data.is_empty() {
            return;
        }
        self.last_recv = self.last_recv.max(now);
        if self.state == ConnState::AwaitingHello {
            let take = (HELLO_LEN - self.hello_len).min(data.len());
            let end = self.hello_len + take;
            self.hello[self.hello_len..end].copy_from_slice(&data[..take]);
            self.hello_len = end;
            data = &data[take..];
            // Check the magic as it arrives: an HTTP client or port scanner is turned away on
            // its first byte rather than after six.
            let magic = end.min(MAGIC.len());
            if self.hello[..magic] != MAGIC[..magic] {
                self.close_with(CloseReason::BadMagic);
                return;
            }
            if self.hello_len < HELLO_LEN {
                return;
            }
            self.handle_hello();
            if self.state == ConnState::Closed {
                return;
            }
        }
        self.decoder.push(data);
        self.handle_frames(now);
    }

    /// Fires timers due at `now`: handshake timeout, idle timeout, heartbeats.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            ConnState::AwaitingHello | ConnState::AwaitingFeatures => {
                if now >= self.handshake_deadline {
                    self.close_with(CloseReason::HelloTimeout);
                }
            }
            ConnState::Ready => {
                if now >= self.idle_deadline() {
                    self.close_with(CloseReason::IdleTimeout);
                } else if now >= self.next_heartbeat {
                    self.queue(now, &Message::Heartbeat);
                }
            }
            ConnState::Closed => {}
        }
    }

    /// Appends queued bytes to `out`; returns false if there were none.
    ///
    /// Bytes queued before the connection closed are still returned after it closed.
    #[must_use]
    pub fn poll_transmit(&mut self, out: &mut Vec<u8>) -> bool {
        if self.outgoing.is_empty() {
            return false;
        }
        if out.is_empty() {
            // Hand over our buffer instead of copying.
            std::mem::swap(out, &mut self.outgoing);
        } else {
            out.append(&mut self.outgoing);
        }
        true
    }

    /// The next event for the driver, if any.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Queues `msg` for the peer. Only allowed once `Ready`, and never for `Features`.
    pub fn send(&mut self, now: Instant, msg: &Message) -> Result<(), SendError> {
        if self.state != ConnState::Ready {
            return Err(SendError::NotReady);
        }
        if matches!(msg, Message::Features(_)) {
            return Err(SendError::Reserved);
        }
        let len = control::encoded_len(msg);
        if len > MAX_FRAME {
            return Err(SendError::TooLarge(len));
        }
        self.queue(now, msg);
        Ok(())
    }

    /// Closes the connection with `reason` (normally [`CloseReason::Local`]). Emits
    /// [`Event::Closed`] unless already closed.
    pub fn close(&mut self, reason: CloseReason) {
        self.close_with(reason);
    }

    /// When the driver must call [`handle_timeout`](Self::handle_timeout) next; `None` once
    /// closed.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            ConnState::AwaitingHello | ConnState::AwaitingFeatures => Some(self.handshake_deadline),
            ConnState::Ready => Some(self.next_heartbeat.min(self.idle_deadline())),
            ConnState::Closed => None,
        }
    }

    /// Where the connection is in its lifecycle.
    pub fn state(&self) -> ConnState {
        self.state
    }

    /// What the peer announced, once `Ready` (kept after close).
    pub fn remote(&self) -> Option<&RemotePeer> {
        self.remote.as_ref()
    }

    /// Local conn id XOR remote conn id, once `Ready`; the same on both ends.
    pub fn conn_uid(&self) -> Option<u64> {
        self.conn_uid
    }

    /// The negotiated protocol version, once the hellos were exchanged.
    pub fn version(&self) -> Option<u8> {
        self.version
    }

    /// Whether we dialled this connection.
    pub fn is_outbound(&self) -> bool {
        self.outbound
    }

    /// Our half of the connection UID.
    pub fn conn_id(&self) -> u64 {
        self.conn_id
    }

    /// Our identity as announced on this connection.
    pub fn local(&self) -> &LocalPeer {
        &self.local
    }

    /// The peer's hello is complete in `self.hello`: negotiate and send our features.
    fn handle_hello(&mut self) {
        let theirs = match Hello::parse(&self.hello) {
            Ok(hello) => hello,
            Err(HelloError::BadMagic | HelloError::Truncated) => {
                // Not reachable: the magic was checked byte by byte and all six bytes are in.
                self.close_with(CloseReason::BadMagic);
                return;
            }
            Err(HelloError::InvalidRange { min, max }) => {
                let err = ProtocolError::InvalidVersionRange { min, max };
                self.close_with(CloseReason::ProtocolError(err));
                return;
            }
        };
        let ours = Hello {
            min_version: self.config.min_version,
            max_version: self.config.max_version,
        };
        match handshake::negotiate(ours, theirs) {
            Ok(version) => {
                self.version = Some(version);
                self.state = ConnState::AwaitingFeatures;
                let features = handshake::local_features(&self.local, self.conn_id);
                control::encode_frame(&Message::Features(features), &mut self.outgoing);
            }
            Err(reason) => self.close_with(reason),
        }
    }

    /// Decodes and handles every complete frame buffered so far.
    fn handle_frames(&mut self, now: Instant) {
        while self.state != ConnState::Closed {
            match self.decoder.next() {
                Ok(Some(msg)) => self.handle_message(now, msg),
                Ok(None) => break,
                Err(FrameError::Malformed) => self.close_with(CloseReason::Malformed),
                Err(FrameError::TooLarge(_)) => self.close_with(CloseReason::TooLarge),
            }
        }
    }

    fn handle_message(&mut self, now: Instant, msg: Message) {
        match (self.state, msg) {
            (ConnState::AwaitingFeatures, Message::Features(features)) => {
                match handshake::check_features(&self.local, &features) {
                    Ok(remote) => {
                        let conn_uid = self.conn_id ^ features.conn_id;
                        let version = self.version.unwrap_or(self.config.max_version);
                        self.state = ConnState::Ready;
                        self.remote = Some(remote.clone());
                        self.conn_uid = Some(conn_uid);
                        self.next_heartbeat = now + self.heartbeat_interval();
                        self.events.push_back(Event::Ready {
                            remote,
                            conn_uid,
                            version,
                        });
                    }
                    Err(reason) => self.close_with(reason),
                }
            }
            (ConnState::AwaitingFeatures, _) => {
                self.close_with(CloseReason::ProtocolError(ProtocolError::ExpectedFeatures));
            }
            (ConnState::Ready, Message::Features(_)) => {
                self.close_with(CloseReason::ProtocolError(ProtocolError::DuplicateFeatures));
            }
            (ConnState::Ready, Message::Heartbeat) => {}
            (ConnState::Ready, Message::DataPathAck { conn_uid }) => {
                self.events.push_back(Event::DataPathAck { conn_uid });
            }
            (ConnState::Ready, msg @ Message::Gossip { .. }) => {
                self.events.push_back(Event::Message(msg));
            }
            // Frames are only decoded once the hello is in and while not closed.
            (ConnState::AwaitingHello | ConnState::Closed, _) => {}
        }
    }

    /// Frames `msg` into the outgoing buffer and pushes the heartbeat deadline back.
    fn queue(&mut self, now: Instant, msg: &Message) {
        control::encode_frame(msg, &mut self.outgoing);
        self.next_heartbeat = now + self.heartbeat_interval();
    }

    fn close_with(&mut self, reason: CloseReason) {
        if self.state == ConnState::Closed {
            return;
        }
        self.state = ConnState::Closed;
        // Free whatever partial frame was buffered.
        self.decoder = FrameDecoder::new();
        self.events.push_back(Event::Closed(reason));
    }

    fn heartbeat_interval(&self) -> Duration {
        self.config.heartbeat_interval.max(Duration::from_millis(1))
    }

    fn idle_deadline(&self) -> Instant {
        self.last_recv + self.config.idle_timeout
    }
}
