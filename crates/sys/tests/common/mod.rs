//! Test-support layer for weft-sys's root tests: a network namespace made for one test and
//! deleted on drop, the root check, and running async netlink code inside a namespace.
//! Shared by `root.rs` and `offload.rs` (each uses part of it).
#![allow(dead_code)]

use std::future::Future;
use std::process::Command;

use weft_sys::netns::NetNs;

/// A network namespace made for one test, deleted on drop.
pub(crate) struct TestNs {
    pub(crate) name: String,
}

impl TestNs {
    /// `ip netns add <prefix>-<pid>-<tag>`; the prefix keeps test binaries apart.
    pub(crate) fn new(prefix: &str, tag: &str) -> Self {
        let name = format!("{prefix}-{}-{tag}", std::process::id());
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("run ip netns add");
        assert!(st.success(), "ip netns add {name} failed");
        Self { name }
    }

    pub(crate) fn ns(&self) -> NetNs {
        NetNs::from_name(&self.name).expect("open test netns")
    }

    /// `ip -n NAME ARGS...` standard output (for cross-checking what netlink did).
    pub(crate) fn ip(&self, args: &[&str]) -> String {
        String::from_utf8_lossy(&self.ip_output(args).stdout).into_owned()
    }

    /// `ip -n NAME ARGS...` standard output followed by standard error (for messages).
    pub(crate) fn ip_all(&self, args: &[&str]) -> String {
        let out = self.ip_output(args);
        let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
        s.push_str(&String::from_utf8_lossy(&out.stderr));
        s
    }

    fn ip_output(&self, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .output()
            .expect("run ip")
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

pub(crate) fn is_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        true
    } else {
        eprintln!("skipping: needs root");
        false
    }
}

/// Runs an async body on a current-thread runtime, on a thread inside `ns`.
pub(crate) fn block_on_in<T, F, Fut>(ns: &NetNs, f: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
{
    ns.run_in(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f())
    })
    .expect("enter test netns")
}
