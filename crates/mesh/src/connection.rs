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
//!   negotiate a version (see [`handshake`]). Then we queue our [`KeyHello`]: whether we have a
//!   password, whether we trust the peer's address, a fresh X25519 public key.
//! - `AwaitingKey`: we wait for the peer's key hello. A password on one side only closes the
//!   connection with [`CloseReason::EncryptionMismatch`] (on both sides). Without passwords we
//!   queue our `Features` in the clear. With them, we derive the keys (see
//!   [`weft_crypto::handshake`]), queue our key confirmation, and from then on every frame we
//!   send is sealed; we queue our `Features` sealed.
//! - `AwaitingConfirm`: the peer's confirmation must match, or the connection closes with
//!   [`CloseReason::WrongPassword`]. Every frame received afterwards must open, or the
//!   connection closes with [`CloseReason::AuthFailed`].
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

use weft_crypto::Cipher;
use weft_crypto::control::{ControlError, ControlOpener, ControlSealer};
use weft_crypto::handshake::{
    self as keys, CONFIRM_LEN, DataKeys, Ephemeral, KEY_HELLO_LEN, KeyHello, SessionKeys,
    Transcript,
};
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
    /// Encryption and trust for this connection.
    pub security: Security,
}

/// How a connection protects its traffic.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Security {
    /// The network key and this connection's ephemeral randomness; `None`: no password.
    pub encryption: Option<Encryption>,
    /// We trust the peer's address (`--trusted-subnets`): if the peer trusts ours too, the data
    /// plane between us is not encrypted (control traffic still is).
    pub trusts_peer: bool,
    /// We have AES hardware instructions (AES-256-GCM is used if both sides have them).
    pub aes: bool,
}

/// What an encrypted connection needs.
#[derive(Clone, PartialEq, Eq)]
pub struct Encryption {
    /// The stretched network password.
    pub psk: weft_crypto::Psk,
    /// 32 fresh random bytes for this connection's X25519 key pair. Never reuse them.
    pub ephemeral_random: [u8; 32],
}

impl std::fmt::Debug for Encryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Encryption(..)")
    }
}

/// How an established connection is protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Protection {
    /// Control frames are sealed.
    pub control: bool,
    /// The cipher sealing data-plane datagrams; `None`: the data plane is in the clear.
    pub data: Option<Cipher>,
}

impl Default for ConnConfig {
    fn default() -> Self {
        Self {
            min_version: control::PROTOCOL_MIN,
            max_version: control::PROTOCOL_MAX,
            hello_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            security: Security::default(),
        }
    }
}

/// Where a connection is in its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConnState {
    /// Waiting for the peer's 6-byte hello.
    AwaitingHello,
    /// Version agreed; waiting for the peer's key hello.
    AwaitingKey,
    /// Keys derived; waiting for the peer's key confirmation.
    AwaitingConfirm,
    /// Keys agreed (or no encryption); waiting for the peer's `Features`.
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
    /// One side has a password and the other does not.
    #[error("{}", if *we_have_password {
        "password specified, but peer requested an unencrypted connection"
    } else {
        "peer requested an encrypted connection, but no password was specified"
    })]
    EncryptionMismatch {
        /// Whether we are the side with the password.
        we_have_password: bool,
    },
    /// The peer's key confirmation did not match: its password differs from ours.
    #[error(
        "wrong password: the peer's password differs from ours (or the handshake was tampered with)"
    )]
    WrongPassword,
    /// A sealed control frame failed authentication.
    #[error(
        "control message failed authentication (forged, corrupted, replayed, reordered or dropped)"
    )]
    AuthFailed,
    /// The control channel's sequence numbers ran out.
    #[error("control sequence numbers exhausted")]
    KeysExhausted,
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
    /// The key hello has flags this version does not know.
    #[error("invalid key hello")]
    InvalidKeyHello,
    /// The peer's X25519 public key is a low-order point.
    #[error("weak public key in key hello")]
    WeakPublicKey,
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
    /// Our key hello and key pair.
    local_key: KeyHello,
    ephemeral: Option<Ephemeral>,
    /// A fixed-size handshake piece (key hello, confirmation) as far as it has arrived.
    piece: Vec<u8>,
    /// The agreed keys while the confirmation is outstanding.
    keys: Option<SessionKeys>,
    sealer: Option<ControlSealer>,
    opener: Option<ControlOpener>,
    protection: Option<Protection>,
    data_keys: Option<DataKeys>,
    scratch: Vec<u8>,
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
        let ephemeral = config
            .security
            .encryption
            .as_ref()
            .map(|e| Ephemeral::from_random(e.ephemeral_random));
        let local_key = KeyHello {
            encrypted: ephemeral.is_some(),
            trusts_peer: config.security.trusts_peer,
            aes: config.security.aes,
            public: ephemeral.as_ref().map_or([0; 32], Ephemeral::public),
        };
        Self {
            local_key,
            ephemeral,
            piece: Vec::new(),
            keys: None,
            sealer: None,
            opener: None,
            protection: None,
            data_keys: None,
            scratch: Vec::new(),
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
        while matches!(
            self.state,
            ConnState::AwaitingKey | ConnState::AwaitingConfirm
        ) {
            let need = if self.state == ConnState::AwaitingKey {
                KEY_HELLO_LEN
            } else {
                CONFIRM_LEN
            };
            let take = (need - self.piece.len()).min(data.len());
            self.piece.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.piece.len() < need {
                return;
            }
            let piece = std::mem::take(&mut self.piece);
            if self.state == ConnState::AwaitingKey {
                self.handle_key_hello(&piece);
            } else {
                self.handle_confirm(&piece);
            }
            if self.state == ConnState::Closed {
                return;
            }
        }
        match &mut self.opener {
            Some(opener) => opener.push(data),
            None => self.decoder.push(data),
        }
        self.handle_frames(now);
    }

    /// Fires timers due at `now`: handshake timeout, idle timeout, heartbeats.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            ConnState::AwaitingHello
            | ConnState::AwaitingKey
            | ConnState::AwaitingConfirm
            | ConnState::AwaitingFeatures => {
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
            ConnState::AwaitingHello
            | ConnState::AwaitingKey
            | ConnState::AwaitingConfirm
            | ConnState::AwaitingFeatures => Some(self.handshake_deadline),
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

    /// How the connection is protected, once the key hellos were exchanged.
    pub fn protection(&self) -> Option<Protection> {
        self.protection
    }

    /// The data-plane keys, once `Ready`, if the data plane is encrypted. Returned once: the
    /// driver hands them to the data plane.
    pub fn take_data_keys(&mut self) -> Option<DataKeys> {
        if self.state == ConnState::Ready {
            self.data_keys.take()
        } else {
            None
        }
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
                self.state = ConnState::AwaitingKey;
                self.outgoing.extend_from_slice(&self.local_key.emit());
            }
            Err(reason) => self.close_with(reason),
        }
    }

    /// The peer's key hello is in: check that both sides agree on encryption, derive keys.
    fn handle_key_hello(&mut self, bytes: &[u8]) {
        let Ok(theirs) = KeyHello::parse(bytes) else {
            self.close_with(CloseReason::ProtocolError(ProtocolError::InvalidKeyHello));
            return;
        };
        let ours = self.local_key;
        if ours.encrypted != theirs.encrypted {
            self.close_with(CloseReason::EncryptionMismatch {
                we_have_password: ours.encrypted,
            });
            return;
        }
        let features = Message::Features(handshake::local_features(&self.local, self.conn_id));
        let (Some(ephemeral), Some(enc)) = (&self.ephemeral, &self.config.security.encryption)
        else {
            self.protection = Some(Protection {
                control: false,
                data: None,
            });
            self.state = ConnState::AwaitingFeatures;
            self.write_frame(&features);
            return;
        };
        let our_hello = Hello {
            min_version: self.config.min_version,
            max_version: self.config.max_version,
        }
        .emit();
        let our_key = ours.emit();
        let (hello_out, hello_in, key_out, key_in) = if self.outbound {
            (&our_hello[..], &self.hello[..], &our_key[..], bytes)
        } else {
            (&self.hello[..], &our_hello[..], bytes, &our_key[..])
        };
        let transcript = Transcript {
            hello_out,
            hello_in,
            key_out,
            key_in,
        };
        let Ok(session) = keys::derive(
            self.outbound,
            &enc.psk,
            ephemeral,
            &theirs,
            &ours,
            &transcript,
        ) else {
            self.close_with(CloseReason::ProtocolError(ProtocolError::WeakPublicKey));
            return;
        };
        // The key pair is spent: forget the secret.
        self.ephemeral = None;
        self.outgoing.extend_from_slice(&session.confirmation());
        let (sealer, opener) = session.control(MAX_FRAME);
        self.sealer = Some(sealer);
        self.opener = Some(opener);
        self.data_keys = session.data();
        self.protection = Some(Protection {
            control: true,
            data: self.data_keys.as_ref().map(DataKeys::cipher),
        });
        self.keys = Some(session);
        self.state = ConnState::AwaitingConfirm;
        self.write_frame(&features);
    }

    /// The peer's key confirmation is in.
    fn handle_confirm(&mut self, bytes: &[u8]) {
        let ok = self
            .keys
            .take()
            .is_some_and(|k| k.check_confirmation(bytes).is_ok());
        if ok {
            self.state = ConnState::AwaitingFeatures;
        } else {
            self.close_with(CloseReason::WrongPassword);
        }
    }

    /// The next received message, plain or sealed.
    fn next_message(&mut self) -> Result<Option<Message>, CloseReason> {
        let Some(opener) = &mut self.opener else {
            return match self.decoder.next() {
                Ok(m) => Ok(m),
                Err(FrameError::Malformed) => Err(CloseReason::Malformed),
                Err(FrameError::TooLarge(_)) => Err(CloseReason::TooLarge),
            };
        };
        match opener.next() {
            Ok(Some(body)) => control::decode_body(&body)
                .map(Some)
                .map_err(|_| CloseReason::Malformed),
            Ok(None) => Ok(None),
            Err(ControlError::Auth) => Err(CloseReason::AuthFailed),
            Err(ControlError::TooLarge(_)) => Err(CloseReason::TooLarge),
            Err(ControlError::TooShort(_)) => Err(CloseReason::Malformed),
            Err(ControlError::Exhausted) => Err(CloseReason::KeysExhausted),
        }
    }

    /// Frames `msg` into the outgoing buffer, sealed once keys are agreed.
    fn write_frame(&mut self, msg: &Message) {
        let Some(sealer) = &mut self.sealer else {
            control::encode_frame(msg, &mut self.outgoing);
            return;
        };
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        control::encode_frame(msg, &mut scratch);
        let body = scratch.get(control::FRAME_HEADER_LEN..).unwrap_or_default();
        let sealed = sealer.seal_frame(body, &mut self.outgoing);
        // Keep the room for the next frame, unless a big one made it big: a node has one
        // per connection.
        if scratch.capacity() <= 64 * 1024 {
            self.scratch = scratch;
        }
        if sealed.is_err() {
            self.close_with(CloseReason::KeysExhausted);
        }
    }

    /// Decodes and handles every complete frame buffered so far.
    fn handle_frames(&mut self, now: Instant) {
        while self.state != ConnState::Closed {
            match self.next_message() {
                Ok(Some(msg)) => self.handle_message(now, msg),
                Ok(None) => break,
                Err(reason) => self.close_with(reason),
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
            // Frames are only decoded once the handshake pieces are in and while not closed.
            (
                ConnState::AwaitingHello
                | ConnState::AwaitingKey
                | ConnState::AwaitingConfirm
                | ConnState::Closed,
                _,
            ) => {}
        }
    }

    /// Frames `msg` into the outgoing buffer and pushes the heartbeat deadline back.
    fn queue(&mut self, now: Instant, msg: &Message) {
        self.write_frame(msg);
        self.next_heartbeat = now + self.heartbeat_interval();
    }

    fn close_with(&mut self, reason: CloseReason) {
        if self.state == ConnState::Closed {
            return;
        }
        self.state = ConnState::Closed;
        // Free whatever partial frame was buffered, and the keys.
        self.decoder = FrameDecoder::new();
        self.opener = None;
        self.keys = None;
        self.ephemeral = None;
        self.data_keys = None;
        self.events.push_back(Event::Closed(reason));
    }

    fn heartbeat_interval(&self) -> Duration {
        self.config.heartbeat_interval.max(Duration::from_millis(1))
    }

    fn idle_deadline(&self) -> Instant {
        self.last_recv + self.config.idle_timeout
    }
}
