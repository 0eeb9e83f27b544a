//! The single hot-path parse error.

/// A packet or message is malformed: truncated, a length field disagrees with the buffer, or a
/// value is out of range. Deliberately carries no detail: why a frame is bad does not change what
/// happens to it (it is dropped and counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed packet")]
pub struct Error;
