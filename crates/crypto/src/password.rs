//! The network password, stretched once with Argon2id into a pre-shared key.

use ring::digest;

use crate::KEY_LEN;

/// The pre-shared key every connection's key agreement mixes in: the stretched password.
#[derive(Clone, PartialEq, Eq)]
pub struct Psk(pub(crate) [u8; KEY_LEN]);

impl std::fmt::Debug for Psk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Psk(..)")
    }
}

impl Psk {
    /// A key given as bytes (tests, or a key stretched elsewhere).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }
}

/// Argon2id cost parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StretchParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over the memory.
    pub iterations: u32,
}

impl StretchParams {
    /// What the router uses: 64 MiB, 3 passes (RFC 9106's second recommended option), a few
    /// hundred milliseconds once at start, and as much per guess for an attacker.
    pub const DEFAULT: Self = Self {
        memory_kib: 64 * 1024,
        iterations: 3,
    };
    /// Cheap parameters for unit tests only.
    pub const TEST: Self = Self {
        memory_kib: 64,
        iterations: 1,
    };
}

/// Why a password could not be stretched.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StretchError {
    /// The password is empty.
    #[error("the password is empty")]
    Empty,
    /// Argon2 refused the parameters or input.
    #[error("stretching the password failed: {0}")]
    Argon2(String),
}

/// Domain string the fixed salt is derived from. A fixed salt is what lets every peer derive the
/// same key; the password is still stretched, and a precomputed table would be for weft only.
const SALT_DOMAIN: &[u8] = b"weft network password salt v1";

/// Stretches `password` with Argon2id under `params` into the network's [`Psk`].
pub fn stretch(password: &[u8], params: StretchParams) -> Result<Psk, StretchError> {
    if password.is_empty() {
        return Err(StretchError::Empty);
    }
    let salt = digest::digest(&digest::SHA256, SALT_DOMAIN);
    let argon_params = argon2::Params::new(params.memory_kib, params.iterations, 1, Some(KEY_LEN))
        .map_err(|e| StretchError::Argon2(e.to_string()))?;
    let argon = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon_params,
    );
    let mut out = [0u8; KEY_LEN];
    argon
        .hash_password_into(password, &salt.as_ref()[..16], &mut out)
        .map_err(|e| StretchError::Argon2(e.to_string()))?;
    Ok(Psk(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stretching_is_deterministic_and_password_dependent() {
        let a = stretch(b"secret", StretchParams::TEST).unwrap();
        let b = stretch(b"secret", StretchParams::TEST).unwrap();
        let c = stretch(b"secreT", StretchParams::TEST).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a.0, [0; KEY_LEN]);
        // The cost parameters change the key too.
        let d = stretch(
            b"secret",
            StretchParams {
                memory_kib: 128,
                iterations: 1,
            },
        )
        .unwrap();
        assert_ne!(a, d);
        assert_eq!(stretch(b"", StretchParams::TEST), Err(StretchError::Empty));
        assert_eq!(format!("{a:?}"), "Psk(..)");
    }
}
