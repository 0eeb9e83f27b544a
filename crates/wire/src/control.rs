//! Layer: wire (sans-IO). The control-protocol codec spoken on TCP port 6783.
//!
//! A control connection starts with each side writing a 6-byte [`Hello`] at once: the magic
//! `b"weft"`, then the lowest and highest protocol version it speaks. After the hellos, each side
//! writes length-prefixed frames: a `u32` big-endian length, then that many bytes holding one
//! postcard-encoded [`Message`]. A frame body may not exceed [`MAX_FRAME`] bytes.
//!
//! Since protocol version 2, a key exchange sits between the hellos and the frames: each side
//! writes a 34-byte key hello and, when both have a password, a 32-byte key confirmation; then
//! every frame is sealed (`weft_crypto::handshake` and `weft_crypto::control` own those bytes,
//! [`decode_body`] decodes an opened body).
//!
//! Protocol version 3 changed no byte of this codec but the topology gossip payload carried
//! in [`Message::Gossip`] (per-peer versioned deltas, digests, wants and summaries, see
//! `weft_mesh::gossip`), which version 2 peers cannot read: the two do not connect.
//!
//! Protocol version 4 changed the data path's keys (not this codec). Version 5 changed no byte
//! here either: a version-5 peer's data path takes segments whose inner checksum is left
//! partial (`weft_wire::vxlan::CSUM_PARTIAL`), so a connection that settles on 5 or later may
//! carry them ([`PARTIAL_CSUM_SINCE`]); a version-4 peer gets complete checksums, as before.
//!
//! This module owns only the bytes: [`Hello::emit`]/[`Hello::parse`], [`encode_frame`] and the
//! incremental [`FrameDecoder`]. What the messages mean (version negotiation, the features
//! exchange, heartbeats) belongs to the connection state machine in `weft-mesh`.
//!
//! **Panic contract:** nothing here panics on any input. Bad input yields [`HelloError`] or
//! [`FrameError`].

use serde::{Deserialize, Serialize};

/// The first four bytes each side writes on a control connection.
pub const MAGIC: [u8; 4] = *b"weft";

/// Length of the hello: [`MAGIC`], then min and max version bytes.
pub const HELLO_LEN: usize = 6;

/// Lowest control-protocol version this build speaks.
pub const PROTOCOL_MIN: u8 = 4;

/// Highest control-protocol version this build speaks.
pub const PROTOCOL_MAX: u8 = 5;

/// The lowest protocol version whose peers take datagrams with
/// [`CSUM_PARTIAL`](crate::vxlan::CSUM_PARTIAL) set.
pub const PARTIAL_CSUM_SINCE: u8 = 5;

/// Largest frame body (the postcard bytes, not counting the 4-byte length prefix) a peer may
/// send. Longer frames are rejected by [`FrameDecoder`] before they are buffered.
pub const MAX_FRAME: usize = 1 << 20;

/// Size of the big-endian length prefix in front of every frame.
pub const FRAME_HEADER_LEN: usize = 4;

/// The 6-byte greeting each side writes first: magic plus the range of versions it speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Lowest protocol version the sender speaks (at least 1).
    pub min_version: u8,
    /// Highest protocol version the sender speaks (at least `min_version`).
    pub max_version: u8,
}

/// Why a received hello was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    /// Fewer than [`HELLO_LEN`] bytes were given.
    #[error("hello truncated: need {HELLO_LEN} bytes")]
    Truncated,
    /// The first four bytes are not [`MAGIC`]: the peer does not speak weft.
    #[error("bad magic: the peer does not speak the weft control protocol")]
    BadMagic,
    /// The version range is empty (`min > max`) or includes the invalid version 0.
    #[error("invalid protocol version range {min}..{max}")]
    InvalidRange {
        /// The announced minimum version.
        min: u8,
        /// The announced maximum version.
        max: u8,
    },
}

impl Hello {
    /// The hello this build sends: [`PROTOCOL_MIN`]..=[`PROTOCOL_MAX`].
    pub const CURRENT: Self = Self {
        min_version: PROTOCOL_MIN,
        max_version: PROTOCOL_MAX,
    };

    /// Parses a hello from the first [`HELLO_LEN`] bytes of `data`; later bytes are ignored.
    pub fn parse(data: &[u8]) -> Result<Self, HelloError> {
        let Some(bytes) = data.get(..HELLO_LEN) else {
            return Err(HelloError::Truncated);
        };
        if bytes[..4] != MAGIC {
            return Err(HelloError::BadMagic);
        }
        let (min, max) = (bytes[4], bytes[5]);
        if min == 0 || min > max {
            return Err(HelloError::InvalidRange { min, max });
        }
        Ok(Self {
            min_version: min,
            max_version: max,
        })
    }

    /// Returns the 6 bytes to write on the connection.
    pub fn emit(&self) -> [u8; HELLO_LEN] {
        let [m0, m1, m2, m3] = MAGIC;
        [m0, m1, m2, m3, self.min_version, self.max_version]
    }
}

/// Every message on an established control connection.
///
/// Append-only: never reorder or remove variants, because postcard encodes the variant index.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Who the sender is; the first message each way, and only then.
    Features(Features),
    /// Keep-alive, sent when nothing else was sent for a while.
    Heartbeat,
    /// "Your UDP heartbeats for this connection reach me."
    DataPathAck {
        /// The connection UID the heartbeats carried.
        conn_uid: u64,
    },
    /// Reserved for the mesh issue: gossip on a named channel.
    Gossip {
        /// Which gossip channel (topology, IPAM, ...) the payload belongs to.
        channel: u8,
        /// Channel-specific bytes.
        payload: Vec<u8>,
    },
}

/// What a peer announces about itself in its first message.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Features {
    /// 48-bit peer name (printed like a MAC address).
    pub name: u64,
    /// Human-friendly name, usually the host name.
    pub nickname: String,
    /// 12-bit short id used in VXLAN VNIs.
    pub short_id: u16,
    /// Random id of this incarnation of the peer (new on every restart).
    pub uid: u64,
    /// Random id of this connection on the sender's side; XORed with the other side's.
    pub conn_id: u64,
    /// UDP port the sender receives VXLAN traffic on in userspace ("sleeve").
    pub data_port: u16,
    /// UDP port of the sender's kernel fast path ("fastdp"); 0: it has none (protocol 4).
    pub fastdp_port: u16,
}

/// Appends one frame to `out`: the `u32` big-endian body length, then the postcard bytes.
///
/// The encoder does not enforce [`MAX_FRAME`]; a receiver rejects larger frames, so callers
/// that send variable-sized payloads should check [`encoded_len`] first.
pub fn encode_frame(msg: &Message, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    // Serializing into a Vec cannot fail: every field of `Message` has a known length and the
    // writer never runs out of space. Should that ever change, the partial frame is removed so
    // the stream stays well formed.
    if postcard::to_extend(msg, Appender(out)).is_err() {
        out.truncate(start);
        return;
    }
    let body_len = out.len() - start - FRAME_HEADER_LEN;
    // A body over 4 GiB cannot be produced from a message held in memory on the 32/64-bit
    // targets weft builds for; saturate rather than wrap if it ever were.
    let len = u32::try_from(body_len).unwrap_or(u32::MAX);
    out[start..start + FRAME_HEADER_LEN].copy_from_slice(&len.to_be_bytes());
}

/// Lets postcard append to a borrowed `Vec` (it wants an `Extend` by value).
struct Appender<'a>(&'a mut Vec<u8>);

impl Extend<u8> for Appender<'_> {
    fn extend<I: IntoIterator<Item = u8>>(&mut self, iter: I) {
        self.0.extend(iter);
    }
}

/// Length of the frame body (without the 4-byte prefix) `msg` encodes to.
pub fn encoded_len(msg: &Message) -> usize {
    postcard::experimental::serialized_size(msg).unwrap_or(usize::MAX)
}

/// Decodes one frame body (the postcard bytes, without the length prefix): exactly one
/// [`Message`], no trailing bytes. Used for bodies that arrive sealed.
pub fn decode_body(body: &[u8]) -> Result<Message, FrameError> {
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(body.len()));
    }
    match postcard::take_from_bytes::<Message>(body) {
        Ok((msg, [])) => Ok(msg),
        _ => Err(FrameError::Malformed),
    }
}

/// Why a [`FrameDecoder`] stopped. Once returned, the decoder keeps returning it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A frame header announced a body longer than [`MAX_FRAME`] bytes.
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    /// A frame body is not exactly one valid postcard-encoded [`Message`].
    #[error("malformed control message")]
    Malformed,
}

/// A decoder's buffer, once emptied, keeps at most this much room for the next frames.
const KEEP_CAPACITY: usize = 64 * 1024;

/// Incremental decoder: push bytes as they arrive, pop whole messages.
///
/// The decoder never panics and never buffers more than one frame's worth of bytes beyond
/// what was pushed: a header announcing more than [`MAX_FRAME`] bytes is rejected as soon as
/// its four bytes are in. After the first error every later call returns the same error and
/// pushed bytes are discarded.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    /// Bytes received but not yet decoded start at `buf[start..]`.
    buf: Vec<u8>,
    /// Read position in `buf`; everything before it was consumed.
    start: usize,
    /// The sticky error, once one occurred.
    error: Option<FrameError>,
}

impl FrameDecoder {
    /// Creates an empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes. Bytes pushed after an error are dropped.
    pub fn push(&mut self, data: &[u8]) {
        if self.error.is_some() || data.is_empty() {
            return;
        }
        if self.start == self.buf.len() {
            // Everything so far was consumed: reuse the allocation from the start.
            self.buf.clear();
            self.start = 0;
        } else if self.start > 0 && self.start >= self.buf.len() / 2 {
            // Compact so the buffer does not grow without bound over a long connection.
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
        // Fail a too-large header right away, so its body is never accumulated.
        if let Some(len) = self.header() {
            if len > MAX_FRAME {
                self.fail(FrameError::TooLarge(len));
            }
        }
    }

    /// Pops the next complete message: `Ok(None)` if more bytes are needed.
    // Named as the brief specifies; it is not an `Iterator` because it returns errors and
    // `Ok(None)` means "not yet", not "finished".
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Message>, FrameError> {
        if let Some(err) = self.error {
            return Err(err);
        }
        let Some(len) = self.header() else {
            return Ok(None);
        };
        if len > MAX_FRAME {
            return Err(self.fail(FrameError::TooLarge(len)));
        }
        let body_start = self.start + FRAME_HEADER_LEN;
        let Some(body) = self.buf.get(body_start..body_start + len) else {
            return Ok(None);
        };
        match postcard::take_from_bytes::<Message>(body) {
            Ok((msg, [])) => {
                self.start = body_start + len;
                if self.start == self.buf.len() && self.buf.capacity() > KEEP_CAPACITY {
                    // All consumed: give a big frame's room back rather than hold it for the
                    // connection's life (a node has a decoder per connection).
                    self.buf = Vec::new();
                    self.start = 0;
                }
                Ok(Some(msg))
            }
            // Trailing bytes inside the frame are as bad as a short frame.
            Ok(_) | Err(_) => Err(self.fail(FrameError::Malformed)),
        }
    }

    /// Number of bytes pushed but not yet consumed by [`next`](Self::next).
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The sticky error, if the decoder has failed.
    pub fn error(&self) -> Option<FrameError> {
        self.error
    }

    /// Length announced by the header at the read position, if all four bytes are in.
    fn header(&self) -> Option<usize> {
        let bytes = self.buf.get(self.start..self.start + FRAME_HEADER_LEN)?;
        let len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        // u32 always fits in usize on the 32- and 64-bit targets weft supports.
        Some(len as usize)
    }

    /// Records `err` as sticky, frees the buffer and returns `err`.
    fn fail(&mut self, err: FrameError) -> FrameError {
        self.error = Some(err);
        self.buf = Vec::new();
        self.start = 0;
        err
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features() -> Features {
        Features {
            name: 0x02_11_22_33_44_55,
            nickname: "host-a".into(),
            short_id: 0xabc,
            uid: 0x1234_5678_9abc_def0,
            conn_id: u64::MAX,
            data_port: 6783,
            fastdp_port: 6784,
        }
    }

    fn all_messages() -> Vec<Message> {
        vec![
            Message::Features(features()),
            Message::Heartbeat,
            Message::DataPathAck { conn_uid: 7 },
            Message::DataPathAck { conn_uid: u64::MAX },
            Message::Gossip {
                channel: 3,
                payload: vec![],
            },
            Message::Gossip {
                channel: 255,
                payload: (0..=255).collect(),
            },
        ]
    }

    fn decode_all(dec: &mut FrameDecoder) -> Result<Vec<Message>, FrameError> {
        let mut out = Vec::new();
        while let Some(m) = dec.next()? {
            out.push(m);
        }
        Ok(out)
    }

    #[test]
    fn a_big_frame_does_not_keep_its_room_once_decoded() {
        let big = Message::Gossip {
            channel: 0,
            payload: vec![7; 300 * 1024],
        };
        let mut bytes = Vec::new();
        encode_frame(&big, &mut bytes);
        encode_frame(&Message::Heartbeat, &mut bytes);
        let mut dec = FrameDecoder::new();
        for piece in bytes.chunks(1460) {
            dec.push(piece);
        }
        assert_eq!(decode_all(&mut dec), Ok(vec![big, Message::Heartbeat]));
        assert!(
            dec.buf.capacity() <= KEEP_CAPACITY,
            "{}",
            dec.buf.capacity()
        );
        // Small frames still decode, in pieces.
        let mut bytes = Vec::new();
        encode_frame(&Message::Heartbeat, &mut bytes);
        dec.push(&bytes[..3]);
        assert_eq!(dec.next(), Ok(None));
        dec.push(&bytes[3..]);
        assert_eq!(decode_all(&mut dec), Ok(vec![Message::Heartbeat]));
    }

    #[test]
    fn hello_round_trip() {
        let bytes = Hello::CURRENT.emit();
        assert_eq!(&bytes, b"weft\x04\x05");
        assert_eq!(Hello::parse(&bytes), Ok(Hello::CURRENT));
        let h = Hello {
            min_version: 2,
            max_version: 9,
        };
        assert_eq!(Hello::parse(&h.emit()), Ok(h));
    }

    #[test]
    fn hello_errors() {
        assert_eq!(Hello::parse(b"weft\x01"), Err(HelloError::Truncated));
        assert_eq!(Hello::parse(b"weave\x01"), Err(HelloError::BadMagic));
        assert_eq!(
            Hello::parse(b"weft\x03\x02"),
            Err(HelloError::InvalidRange { min: 3, max: 2 })
        );
        assert_eq!(
            Hello::parse(b"weft\x00\x02"),
            Err(HelloError::InvalidRange { min: 0, max: 2 })
        );
        // Trailing bytes are the caller's business.
        assert_eq!(Hello::parse(b"weft\x04\x05rest"), Ok(Hello::CURRENT));
    }

    #[test]
    fn round_trip_every_variant() {
        for msg in all_messages() {
            let mut buf = Vec::new();
            encode_frame(&msg, &mut buf);
            let body_len = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
            assert_eq!(body_len, buf.len() - 4);
            assert_eq!(body_len, encoded_len(&msg));
            let mut dec = FrameDecoder::new();
            dec.push(&buf);
            assert_eq!(dec.next(), Ok(Some(msg)));
            assert_eq!(dec.next(), Ok(None));
            assert_eq!(dec.buffered(), 0);
        }
    }

    #[test]
    fn encode_appends() {
        let mut buf = b"prefix".to_vec();
        encode_frame(&Message::Heartbeat, &mut buf);
        assert_eq!(&buf[..6], b"prefix");
        assert_eq!(&buf[6..], &[0, 0, 0, 1, 1]);
    }

    #[test]
    fn split_at_every_byte_boundary() {
        let msgs = all_messages();
        let mut stream = Vec::new();
        for m in &msgs {
            encode_frame(m, &mut stream);
        }
        for split in 0..=stream.len() {
            let mut dec = FrameDecoder::new();
            dec.push(&stream[..split]);
            let mut got = decode_all(&mut dec).unwrap();
            dec.push(&stream[split..]);
            got.extend(decode_all(&mut dec).unwrap());
            assert_eq!(got, msgs, "split at {split}");
        }
        // And one byte at a time.
        let mut dec = FrameDecoder::new();
        let mut got = Vec::new();
        for b in &stream {
            dec.push(std::slice::from_ref(b));
            got.extend(decode_all(&mut dec).unwrap());
        }
        assert_eq!(got, msgs);
    }

    #[test]
    fn too_large_rejected_before_body() {
        let mut dec = FrameDecoder::new();
        let len = (MAX_FRAME + 1) as u32;
        dec.push(&len.to_be_bytes()[..3]);
        assert_eq!(dec.next(), Ok(None));
        dec.push(&len.to_be_bytes()[3..]);
        assert_eq!(dec.error(), Some(FrameError::TooLarge(MAX_FRAME + 1)));
        assert_eq!(dec.buffered(), 0);
        dec.push(&[0; 1000]);
        assert_eq!(dec.buffered(), 0, "bytes after an error are dropped");
        assert_eq!(dec.next(), Err(FrameError::TooLarge(MAX_FRAME + 1)));
        assert_eq!(dec.next(), Err(FrameError::TooLarge(MAX_FRAME + 1)));

        let mut dec = FrameDecoder::new();
        dec.push(&u32::MAX.to_be_bytes());
        assert_eq!(dec.next(), Err(FrameError::TooLarge(u32::MAX as usize)));
    }

    #[test]
    fn max_frame_is_accepted() {
        // A gossip payload whose frame body is exactly MAX_FRAME bytes.
        let overhead = encoded_len(&Message::Gossip {
            channel: 0,
            payload: vec![0; MAX_FRAME - 16],
        }) - (MAX_FRAME - 16);
        let msg = Message::Gossip {
            channel: 0,
            payload: vec![0xaa; MAX_FRAME - overhead],
        };
        assert_eq!(encoded_len(&msg), MAX_FRAME);
        let mut buf = Vec::new();
        encode_frame(&msg, &mut buf);
        let mut dec = FrameDecoder::new();
        dec.push(&buf);
        assert_eq!(dec.next(), Ok(Some(msg)));
    }

    #[test]
    fn garbage_is_malformed_and_sticky() {
        let mut dec = FrameDecoder::new();
        // Length 3, variant index 200 does not exist.
        dec.push(&[0, 0, 0, 3, 200, 1, 2]);
        assert_eq!(dec.next(), Err(FrameError::Malformed));
        let mut ok = Vec::new();
        encode_frame(&Message::Heartbeat, &mut ok);
        dec.push(&ok);
        assert_eq!(dec.next(), Err(FrameError::Malformed));

        // An empty frame is not a message.
        let mut dec = FrameDecoder::new();
        dec.push(&[0, 0, 0, 0]);
        assert_eq!(dec.next(), Err(FrameError::Malformed));

        // A string that is not UTF-8.
        let mut buf = Vec::new();
        encode_frame(&Message::Features(features()), &mut buf);
        let pos = buf.windows(6).position(|w| w == b"host-a").unwrap();
        buf[pos] = 0xff;
        let mut dec = FrameDecoder::new();
        dec.push(&buf);
        assert_eq!(dec.next(), Err(FrameError::Malformed));
    }

    #[test]
    fn trailing_bytes_inside_frame_are_malformed() {
        let mut buf = Vec::new();
        encode_frame(&Message::DataPathAck { conn_uid: 5 }, &mut buf);
        let len = u32::from_be_bytes(buf[..4].try_into().unwrap());
        buf[..4].copy_from_slice(&(len + 1).to_be_bytes());
        buf.push(0);
        let mut dec = FrameDecoder::new();
        dec.push(&buf);
        assert_eq!(dec.next(), Err(FrameError::Malformed));
    }

    #[test]
    fn truncated_body_inside_frame_is_malformed() {
        let mut buf = Vec::new();
        encode_frame(&Message::Features(features()), &mut buf);
        let len = u32::from_be_bytes(buf[..4].try_into().unwrap());
        buf[..4].copy_from_slice(&(len - 1).to_be_bytes());
        buf.pop();
        let mut dec = FrameDecoder::new();
        dec.push(&buf);
        assert_eq!(dec.next(), Err(FrameError::Malformed));
    }

    #[test]
    fn long_stream_does_not_grow_buffer() {
        let mut frame = Vec::new();
        encode_frame(&Message::DataPathAck { conn_uid: 1 }, &mut frame);
        let mut dec = FrameDecoder::new();
        for _ in 0..10_000 {
            // Push a frame and a half, decode what is whole.
            dec.push(&frame);
            dec.push(&frame[..3]);
            assert!(dec.next().unwrap().is_some());
            dec.push(&frame[3..]);
            decode_all(&mut dec).unwrap();
        }
        assert_eq!(dec.buffered(), 0);
        assert!(dec.buf.capacity() < 1024);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            chunks in proptest::collection::vec(proptest::collection::vec(0u8..=255, 0..64), 0..16)
        ) {
            let mut dec = FrameDecoder::new();
            let mut failed = None;
            for c in &chunks {
                dec.push(c);
                loop {
                    match dec.next() {
                        Ok(Some(m)) => {
                            proptest::prop_assert!(failed.is_none());
                            let mut again = Vec::new();
                            encode_frame(&m, &mut again);
                            let mut d2 = FrameDecoder::new();
                            d2.push(&again);
                            proptest::prop_assert_eq!(d2.next(), Ok(Some(m)));
                        }
                        Ok(None) => break,
                        Err(e) => {
                            if let Some(prev) = failed {
                                proptest::prop_assert_eq!(prev, e);
                            }
                            failed = Some(e);
                            break;
                        }
                    }
                }
            }
        }
    }
}
