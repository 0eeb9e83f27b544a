//! `weft-wait`: the first process of a container the weft proxy joins to the network.
//!
//! The proxy bind-mounts this static binary at `/w/w` and prepends it to the container's
//! entrypoint. It waits until the container's `ethwe` interface is fully configured (the route
//! `224.0.0.0/4 dev ethwe` is the last thing `attach` adds, after the addresses and link-up),
//! then replaces itself with the original entrypoint and command, keeping the environment and
//! pid 1. So the application never starts without its overlay address.
//!
//! Built by `proxy/build.rs` straight with rustc as a static executable (the container may
//! have no libc at all) and embedded in the weft binary; it reads only `/proc/net/route`.
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

/// The interface the proxy gives a container.
const ETHWE: &str = "ethwe";

fn main() -> ExitCode {
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if args.is_empty() {
        eprintln!("weft-wait: no command to run");
        return ExitCode::from(127);
    }
    // Mounted at /w-nomcast, the waiter serves containers that get no multicast route: it then
    // waits for ethwe's connected route (the addresses are in place before ethwe goes up).
    let nomcast = std::env::args_os()
        .next()
        .is_some_and(|a| a.to_string_lossy().starts_with("/w-nomcast/"));
    let start = Instant::now();
    let mut warned = false;
    while !network_ready(nomcast) {
        if !warned && start.elapsed() > Duration::from_secs(30) {
            eprintln!("weft-wait: still waiting for {ETHWE} after 30 s; is the weft proxy running?");
            warned = true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let program = args.remove(0);
    let err = Command::new(&program).args(&args).exec();
    eprintln!("weft-wait: cannot run {}: {err}", program.to_string_lossy());
    ExitCode::from(if err.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 })
}

/// True once `/proc/net/route` has `224.0.0.0/4` on `ethwe` (with `any_route`: any route on
/// `ethwe`).
fn network_ready(any_route: bool) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/route") else {
        return false;
    };
    table.lines().skip(1).any(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        cols.len() > 7
            && cols[0] == ETHWE
            && (any_route
                || (hex_addr(cols[1]) == Some(Ipv4Addr::new(224, 0, 0, 0))
                    && hex_addr(cols[7]) == Some(Ipv4Addr::new(240, 0, 0, 0))))
    })
}

/// `/proc/net/route` prints addresses as the in-memory (network order) bytes read as a native
/// integer in hex.
fn hex_addr(s: &str) -> Option<Ipv4Addr> {
    u32::from_str_radix(s, 16)
        .ok()
        .map(|v| Ipv4Addr::from(v.to_ne_bytes()))
}
