//! Multi-host test harness (test layer, needs root): hosts and containers built from Linux
//! network namespaces, running the real `weft` binary.
//!
//! - [`browser`]: headless Chromium driven through ChromeDriver inside a host's namespace.
//! - [`cmd`]: running `ip`, `weft`, `ping`, ... with time limits and descriptive failures, plus
//!   [`wait_until`].
//! - [`net`]: [`TestNet`] (an underlay bridge in its own namespace), [`Host`] (a namespace on
//!   the underlay with its own weft run/state dirs) and [`Container`] (a namespace attached with
//!   `weft attach`). Everything is removed on drop, also when a test panics.
//! - [`status`]: reading `weft status` output.
//! - [`mesh`]: multi-hop helpers (launch options, underlay blocks, per-peer connection checks,
//!   intact TCP transfers).
//! - [`cni`]: running weft's CNI plugins as a container runtime does (env + stdin).
//! - [`dns`]: weaveDNS helpers (a fake upstream resolver, `dig`, a query flood).
//! - [`docker`]: a real `dockerd` per host (own data root and socket, busybox image), for the
//!   Docker API proxy tests.
//! - [`nspawn`]: a machine booted by real systemd (`systemd-nspawn`) inside a host's
//!   namespace, for the systemd unit and package tests.
//! - [`private`]: a host with its own mount namespace, so weft and a stock dockerd run on their
//!   default paths (the user's scripts, verbatim).
//! - [`local`]: requests as `nobody`, a tiny tmpfs state directory, a process's memory and
//!   descriptors, and the connection flooding tool.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use std::time::Duration;
//! let net = weft_tests::TestNet::new("doc")?;
//! let (h1, h2) = (net.host(1)?, net.host(2)?);
//! h1.launch(&[])?;
//! h2.launch(&[&h1])?;
//! let c1 = h1.container("c1", "10.32.0.1/12")?;
//! let c2 = h2.container("c2", "10.32.0.2/12")?;
//! c1.wait_ping(c2.ip(), Duration::from_secs(20))?;
//! # Ok(()) }
//! ```
//!
//! The weft binary is `$WEFT_BIN`, else `weft` in the cargo profile directory the test runs
//! from; build it first with `cargo build --workspace --bins`.

pub mod browser;
pub mod cmd;
pub mod cni;
pub mod dns;
pub mod docker;
pub mod local;
pub mod mesh;
pub mod net;
pub mod nspawn;
pub mod private;
pub mod status;

pub use cmd::{Cmd, Output, wait_until};
pub use net::{
    Container, Host, Pair, PingStats, TestNet, clean_up_on_signal, cleanup_stale, find_weft_bin,
    wait_established,
};

/// Runs one namespace test: builds a [`TestNet`] with the given prefix hint, runs `body`, and on
/// an error prints the routers' log tails before panicking with the error chain.
pub fn run_test(hint: &str, body: impl FnOnce(&TestNet) -> anyhow::Result<()>) {
    let net = match TestNet::new(hint) {
        Ok(n) => n,
        Err(e) => panic!("setting up the test network failed: {e:?}"),
    };
    if let Err(e) = body(&net) {
        net.dump_logs();
        panic!("{e:?}");
    }
}

/// Median of a slice (`None` if empty). NaNs sort last.
pub fn median(xs: &[f64]) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_even() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }

    #[test]
    fn parse_ping_output() {
        let out = "PING 10.32.0.2 (10.32.0.2) 56(84) bytes of data.\n\
            64 bytes from 10.32.0.2: icmp_seq=1 ttl=64 time=0.412 ms\n\
            64 bytes from 10.32.0.2: icmp_seq=2 ttl=64 time=1.05 ms\n\
            \n--- 10.32.0.2 ping statistics ---\n\
            3 packets transmitted, 2 received, 33.3333% packet loss, time 2003ms\n";
        let s = net::parse_ping(out).unwrap();
        assert_eq!(s.transmitted, 3);
        assert_eq!(s.received, 2);
        assert_eq!(s.rtts_ms, vec![0.412, 1.05]);
        let errs = "3 packets transmitted, 0 received, +3 errors, 100% packet loss, time 2040ms";
        let s = net::parse_ping(errs).unwrap();
        assert_eq!((s.transmitted, s.received), (3, 0));
    }

    #[test]
    fn parse_connections() {
        let text = "-> 192.0.2.12:6783     established  aa:bb:cc:dd:ee:02(host2)\n\
                    <- 192.0.2.13:41234    pending      aa:bb:cc:dd:ee:03(host3)\n\
                    -> 192.0.2.14:6783     failed       connection refused, retry: 2s\n";
        let c = status::parse_connections(text);
        assert_eq!(c.len(), 3);
        assert!(c[0].outbound && c[0].state == "established" && c[0].address == "192.0.2.12:6783");
        assert!(c[0].info.contains("(host2)"));
        assert!(!c[1].outbound && c[1].state == "pending");
        assert_eq!(c[2].state, "failed");
    }
}
