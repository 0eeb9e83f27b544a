//! CNI errors: the well-known codes of the spec and weft's own (100 and up), printed as the
//! error JSON a runtime reads from stdout.

use serde_json::{Value, json};

/// An error code (spec 1.0.0, "Error"). 1–99 are the spec's; 100 and up are weft's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// 1: the configuration's `cniVersion` is not one weft speaks.
    IncompatibleVersion,
    /// 2: a field weft does not support (`isGateway`, `ipMasq`, IPv6 addresses).
    UnsupportedField,
    /// 3: the container (or its network namespace) does not exist.
    UnknownContainer,
    /// 4: a `CNI_*` variable is missing or invalid.
    InvalidEnv,
    /// 5: an I/O failure (stdin, an IPAM plugin binary).
    Io,
    /// 6: the configuration or a result could not be decoded.
    Decode,
    /// 7: the configuration is well-formed but wrong.
    InvalidConfig,
    /// 11: try again later (the router is not running).
    TryAgainLater,
    /// 50: STATUS: the plugin cannot add containers now (no router).
    NotAvailable,
    /// Another plugin's code, passed on (a delegated IPAM plugin's error).
    Plugin(u32),
    /// 100: IPAM refused or failed.
    Ipam,
    /// 101: the interface could not be set up or removed.
    Interface,
    /// 102: CHECK found the attachment not as the previous result says.
    CheckFailed,
}

impl Code {
    /// The number printed as `code`.
    pub fn number(self) -> u32 {
        match self {
            Self::IncompatibleVersion => 1,
            Self::UnsupportedField => 2,
            Self::UnknownContainer => 3,
            Self::InvalidEnv => 4,
            Self::Io => 5,
            Self::Decode => 6,
            Self::InvalidConfig => 7,
            Self::TryAgainLater => 11,
            Self::NotAvailable => 50,
            Self::Plugin(n) => n,
            Self::Ipam => 100,
            Self::Interface => 101,
            Self::CheckFailed => 102,
        }
    }
}

/// A CNI error: code, message and (optional) details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    /// The code.
    pub code: Code,
    /// A short message.
    pub msg: String,
    /// Longer details ("" for none).
    pub details: String,
}

impl CniError {
    /// An error with a message and no details.
    pub fn new(code: Code, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// The same error with details.
    #[must_use]
    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// The error JSON for a runtime that sent configuration version `cni_version`.
    pub fn to_json(&self, cni_version: &str) -> Value {
        let mut v = json!({
            "cniVersion": cni_version,
            "code": self.code.number(),
            "msg": self.msg,
        });
        if !self.details.is_empty() {
            v["details"] = Value::String(self.details.clone());
        }
        v
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {})", self.msg, self.code.number())?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json() {
        let e = CniError::new(Code::Decode, "bad config").with_details("line 1");
        assert_eq!(
            e.to_json("1.0.0"),
            json!({"cniVersion": "1.0.0", "code": 6, "msg": "bad config", "details": "line 1"})
        );
        let e = CniError::new(Code::TryAgainLater, "no router");
        assert_eq!(
            e.to_json("0.4.0"),
            json!({"cniVersion": "0.4.0", "code": 11, "msg": "no router"})
        );
        assert_eq!(e.to_string(), "no router (code 11)");
    }
}
