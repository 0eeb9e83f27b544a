//! Layer: OS. Network namespaces held open by file descriptor.
//!
//! Owns the namespace fds and the one place that calls `setns(2)`: [`NetNs::run_in`] runs code
//! on a fresh OS thread that has entered the namespace, so no tokio worker or pooled thread is
//! ever switched (see crates.md §3). Holding the fd keeps the namespace alive and pins it
//! against pid reuse.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::cvt;

/// Where `ip netns add NAME` bind-mounts named namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// A network namespace held open by fd.
#[derive(Debug)]
pub struct NetNs {
    fd: OwnedFd,
    dev: u64,
    inode: u64,
}

impl NetNs {
    /// Opens a namespace file (`/proc/…/ns/net` or a bind mount of one).
    pub fn from_path(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref();
        let file: File = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", path.display())))?;
        let meta = file.metadata()?;
        Ok(Self {
            fd: file.into(),
            dev: meta.dev(),
            inode: meta.ino(),
        })
    }

    /// The calling thread's namespace (`/proc/thread-self/ns/net`).
    pub fn current() -> io::Result<Self> {
        Self::from_path("/proc/thread-self/ns/net")
    }

    /// A named namespace, `/run/netns/NAME` (as made by `ip netns add`).
    pub fn from_name(name: &str) -> io::Result<Self> {
        if !valid_netns_name(name) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid network namespace name {name:?}"),
            ));
        }
        Self::from_path(Path::new(NETNS_RUN_DIR).join(name))
    }

    /// The namespace of process `pid` (`/proc/PID/ns/net`).
    pub fn from_pid(pid: u32) -> io::Result<Self> {
        Self::from_path(format!("/proc/{pid}/ns/net"))
    }

    /// "name or pid", as the CLI's TARGET argument: all digits means a pid, else a netns name.
    pub fn from_target(target: &str) -> io::Result<Self> {
        match parse_target(target) {
            Target::Pid(pid) => Self::from_pid(pid),
            Target::Name(name) => Self::from_name(name),
        }
    }

    /// The namespace's inode number (what `ip netns identify` / `readlink` show as `net:[N]`).
    pub fn inode(&self) -> u64 {
        self.inode
    }

    /// Whether both handles refer to the same namespace.
    pub fn same_as(&self, other: &Self) -> bool {
        self.inode == other.inode && self.dev == other.dev
    }

    /// Another fd on the same namespace.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            fd: self.fd.try_clone()?,
            dev: self.dev,
            inode: self.inode,
        })
    }

    /// Runs `f` on a fresh OS thread that has `setns()`'d into this namespace, joins it and
    /// returns its value. The calling thread never switches. A panic in `f` is resumed on the
    /// calling thread.
    pub fn run_in<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> io::Result<T> {
        let fd = self.fd.as_fd();
        let joined = std::thread::scope(|s| {
            std::thread::Builder::new()
                .name(format!("netns-{}", self.inode))
                .spawn_scoped(s, move || -> io::Result<T> {
                    enter(fd)?;
                    Ok(f())
                })
                .map(|h| h.join())
        })?;
        match joined {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

/// Moves the calling thread into the network namespace `fd`.
fn enter(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: setns only reads the fd number; the fd is borrowed, hence open, for the call.
    // It affects only the calling thread, which run_in created for this purpose and which ends
    // right after `f`.
    cvt(unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) })
        .map(drop)
        .map_err(|e| io::Error::new(e.kind(), format!("setns(CLONE_NEWNET): {e}")))
}

impl AsFd for NetNs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for NetNs {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// A parsed TARGET argument.
#[derive(Debug, PartialEq, Eq)]
enum Target<'a> {
    Pid(u32),
    Name(&'a str),
}

fn parse_target(target: &str) -> Target<'_> {
    if !target.is_empty() && target.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(pid) = target.parse() {
            return Target::Pid(pid);
        }
    }
    Target::Name(target)
}

/// A netns name must be one path component.
fn valid_netns_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(parse_target("1234"), Target::Pid(1234));
        assert_eq!(parse_target("c1"), Target::Name("c1"));
        assert_eq!(parse_target("12a"), Target::Name("12a"));
        assert_eq!(parse_target(""), Target::Name(""));
        // Too large for a pid: treated as a name (which then fails to open).
        assert_eq!(parse_target("99999999999"), Target::Name("99999999999"));
    }

    #[test]
    fn names() {
        assert!(valid_netns_name("wsys-1-a"));
        assert!(!valid_netns_name("../etc"));
        assert!(!valid_netns_name(".."));
        assert!(!valid_netns_name(""));
        assert!(NetNs::from_name("a/b").is_err());
    }

    #[test]
    fn current_and_self() {
        let here = NetNs::current().unwrap();
        let me = NetNs::from_pid(std::process::id()).unwrap();
        assert!(here.same_as(&me));
        assert_ne!(here.inode(), 0);
        // run_in into our own namespace needs CAP_SYS_ADMIN; as a user it reports an error.
        match here.run_in(|| NetNs::current().unwrap().inode()) {
            Ok(inode) => assert_eq!(inode, here.inode()),
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::PermissionDenied),
        }
    }

    #[test]
    fn run_in_propagates_panics() {
        let here = NetNs::current().unwrap();
        if here.run_in(|| ()).is_err() {
            return; // not privileged
        }
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            here.run_in(|| panic!("boom")).ok();
        }));
        assert!(r.is_err());
    }
}
