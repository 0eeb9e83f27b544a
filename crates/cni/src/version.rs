//! The CNI versions weft speaks, and what each allows.

use serde_json::{Value, json};

use crate::error::{CniError, Code};

/// Every version weft reads configurations of and writes results in, oldest first.
pub const SUPPORTED: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The version weft answers in when it has nothing else to go by (an error before the
/// configuration could be read).
pub const LATEST: &str = "1.0.0";

/// A supported version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    /// 0.3.0
    V030,
    /// 0.3.1
    V031,
    /// 0.4.0 (adds CHECK and `prevResult` on DEL)
    V040,
    /// 1.0.0 (IP entries lose `version`)
    V100,
    /// 1.1.0 (adds GC and STATUS, interface `mtu`)
    V110,
}

impl Version {
    /// Parses a `cniVersion` value; an unknown or missing one is error 1.
    pub fn parse(s: &str) -> Result<Self, CniError> {
        Ok(match s {
            "0.3.0" => Self::V030,
            "0.3.1" => Self::V031,
            "0.4.0" => Self::V040,
            "1.0.0" => Self::V100,
            "1.1.0" => Self::V110,
            other => {
                return Err(CniError::new(
                    Code::IncompatibleVersion,
                    format!(
                        "incompatible CNI versions: weave-net speaks {}, the configuration asks \
                         for {other:?}",
                        SUPPORTED.join(", ")
                    ),
                ));
            }
        })
    }

    /// As written in `cniVersion`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V030 => "0.3.0",
            Self::V031 => "0.3.1",
            Self::V040 => "0.4.0",
            Self::V100 => "1.0.0",
            Self::V110 => "1.1.0",
        }
    }

    /// Whether IP entries of results carry `"version": "4"` (before 1.0.0).
    pub fn ip_has_version(self) -> bool {
        self < Self::V100
    }

    /// Whether CHECK exists (0.4.0 on).
    pub fn has_check(self) -> bool {
        self >= Self::V040
    }

    /// Whether GC and STATUS exist (1.1.0 on).
    pub fn has_gc(self) -> bool {
        self >= Self::V110
    }
}

/// The answer to `VERSION`.
pub fn version_answer(cni_version: &str) -> Value {
    json!({ "cniVersion": cni_version, "supportedVersions": SUPPORTED })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        for s in SUPPORTED {
            assert_eq!(Version::parse(s).unwrap().as_str(), s);
        }
        let e = Version::parse("0.2.0").unwrap_err();
        assert_eq!(e.code, Code::IncompatibleVersion);
        assert!(e.msg.contains("0.2.0"), "{e}");
        assert!(Version::V040.has_check() && !Version::V031.has_check());
        assert!(Version::V110.has_gc() && !Version::V100.has_gc());
        assert!(Version::V040.ip_has_version() && !Version::V100.ip_has_version());
        assert_eq!(
            version_answer("1.0.0")["supportedVersions"][4],
            json!("1.1.0")
        );
    }
}
