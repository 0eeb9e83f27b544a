//! The `CNI_*` environment a runtime runs a plugin with, checked for the command it names.
//!
//! ADD and CHECK need `CNI_CONTAINERID`, `CNI_NETNS` and `CNI_IFNAME`; DEL needs the container
//! and interface (the namespace may be gone: an empty `CNI_NETNS` only releases addresses);
//! VERSION, GC and STATUS need nothing. A container id is what the spec allows (a letter or
//! digit, then letters, digits, `_`, `.`, `-`), an interface name what Linux allows and weft
//! can name an IPAM identifier after (at most 15 of letters, digits, `_`, `.`, `-`).

use crate::error::{CniError, Code};

/// `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach.
    Add,
    /// Detach (idempotent).
    Del,
    /// Verify an attachment.
    Check,
    /// Report the versions spoken.
    Version,
    /// Release what the runtime no longer knows (1.1.0).
    Gc,
    /// Whether ADD can succeed now (1.1.0).
    Status,
}

impl Command {
    /// Parses `CNI_COMMAND`.
    pub fn parse(s: &str) -> Result<Self, CniError> {
        Ok(match s {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "VERSION" => Self::Version,
            "GC" => Self::Gc,
            "STATUS" => Self::Status,
            other => {
                return Err(CniError::new(
                    Code::InvalidEnv,
                    format!("unknown CNI_COMMAND {other:?}"),
                ));
            }
        })
    }

    /// As written in `CNI_COMMAND`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
            Self::Check => "CHECK",
            Self::Version => "VERSION",
            Self::Gc => "GC",
            Self::Status => "STATUS",
        }
    }
}

/// One invocation's environment, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID` ("" for VERSION, GC, STATUS).
    pub container_id: String,
    /// `CNI_NETNS` ("" when not given).
    pub netns: String,
    /// `CNI_IFNAME` ("" for VERSION, GC, STATUS).
    pub ifname: String,
    /// `CNI_ARGS` as key/value pairs.
    pub args: Vec<(String, String)>,
    /// `CNI_PATH`: where other plugins (an IPAM plugin) are.
    pub path: Vec<String>,
}

/// Longest Linux interface name.
const IFNAMSIZ: usize = 15;

/// Whether `id` is a container id the spec allows.
pub fn valid_container_id(id: &str) -> bool {
    let mut b = id.bytes();
    b.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && b.all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(&c))
}

/// Whether `name` is an interface name weft accepts.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= IFNAMSIZ
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(&c))
}

/// Parses `CNI_ARGS` (`K=V;K2=V2`).
pub fn parse_args(s: &str) -> Result<Vec<(String, String)>, CniError> {
    s.split(';')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| {
                    CniError::new(
                        Code::InvalidEnv,
                        format!("CNI_ARGS: {kv:?} is not KEY=VALUE"),
                    )
                })
        })
        .collect()
}

impl Invocation {
    /// Reads the environment through `var` (a variable's value, `None` when unset).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let command = var("CNI_COMMAND")
            .ok_or_else(|| CniError::new(Code::InvalidEnv, "CNI_COMMAND is not set"))?;
        let command = Command::parse(&command)?;
        let get = |name: &str| var(name).unwrap_or_default();
        let inv = Self {
            command,
            container_id: get("CNI_CONTAINERID"),
            netns: get("CNI_NETNS"),
            ifname: get("CNI_IFNAME"),
            args: parse_args(&get("CNI_ARGS"))?,
            path: get("CNI_PATH")
                .split(':')
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect(),
        };
        inv.check()?;
        Ok(inv)
    }

    fn check(&self) -> Result<(), CniError> {
        let missing = |name: &str| {
            CniError::new(
                Code::InvalidEnv,
                format!("{name} must be set for {}", self.command.as_str()),
            )
        };
        let (needs_id, needs_netns) = match self.command {
            Command::Add | Command::Check => (true, true),
            Command::Del => (true, false),
            Command::Version | Command::Gc | Command::Status => return Ok(()),
        };
        if needs_id {
            if self.container_id.is_empty() {
                return Err(missing("CNI_CONTAINERID"));
            }
            if !valid_container_id(&self.container_id) {
                return Err(CniError::new(
                    Code::InvalidEnv,
                    format!(
                        "CNI_CONTAINERID {:?}: a container id is letters, digits, '_', '.' and \
                         '-', starting with a letter or digit",
                        self.container_id
                    ),
                ));
            }
            if self.ifname.is_empty() {
                return Err(missing("CNI_IFNAME"));
            }
            if !valid_ifname(&self.ifname) {
                return Err(CniError::new(
                    Code::InvalidEnv,
                    format!(
                        "CNI_IFNAME {:?}: weave-net takes interface names of at most 15 letters, \
                         digits, '_', '.' and '-'",
                        self.ifname
                    ),
                ));
            }
        }
        if needs_netns && self.netns.is_empty() {
            return Err(missing("CNI_NETNS"));
        }
        Ok(())
    }

    /// The value of `key` in `CNI_ARGS`.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let owned: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| {
            owned
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn add_needs_everything() {
        let ok = Invocation::from_vars(vars(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc123"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=web"),
            ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
        ]))
        .unwrap();
        assert_eq!(ok.command, Command::Add);
        assert_eq!(ok.arg("K8S_POD_NAME"), Some("web"));
        assert_eq!(ok.path, ["/opt/cni/bin", "/usr/lib/cni"]);
        let e = Invocation::from_vars(vars(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc123"),
            ("CNI_IFNAME", "eth0"),
        ]))
        .unwrap_err();
        assert_eq!(e.code, Code::InvalidEnv);
        assert!(e.msg.contains("CNI_NETNS"), "{e}");
    }

    #[test]
    fn del_without_netns_and_version_without_anything() {
        let del = Invocation::from_vars(vars(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
        ]))
        .unwrap();
        assert_eq!(del.netns, "");
        let v = Invocation::from_vars(vars(&[("CNI_COMMAND", "VERSION")])).unwrap();
        assert_eq!(v.command, Command::Version);
    }

    #[test]
    fn bad_values_are_env_errors() {
        for pairs in [
            vec![("CNI_COMMAND", "BOGUS")],
            vec![],
            vec![
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "-x"),
                ("CNI_IFNAME", "eth0"),
            ],
            vec![
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "x"),
                ("CNI_IFNAME", "a/b"),
            ],
            vec![
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "x"),
                ("CNI_IFNAME", "a-very-long-interface"),
            ],
            vec![("CNI_COMMAND", "GC"), ("CNI_ARGS", "novalue")],
        ] {
            let e = Invocation::from_vars(vars(&pairs)).unwrap_err();
            assert_eq!(e.code, Code::InvalidEnv, "{pairs:?}");
        }
    }
}
