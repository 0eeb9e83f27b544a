//! Test tool: opens many TCP connections to one address the way an abusive local user or a
//! misbehaving remote host would, and reports what the server did with them (JSON on stdout).
//!
//! ```text
//! weft-conn-flood idle      ADDR COUNT SECONDS   # open COUNT connections, send nothing, hold them
//! weft-conn-flood slowloris ADDR COUNT SECONDS   # open COUNT, send a request head one byte a second
//! weft-conn-flood reopen    ADDR COUNT SECONDS   # keep COUNT idle connections open, reopening any
//!                                                # the server closes (and each after 1 s)
//! ```
//!
//! Output: `{"opened":N,"connect_errors":E,"open_at_end":M,"closed_by_server":K}` where
//! `open_at_end` counts the connections the server still had open when the time was up.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: weft-conn-flood idle|slowloris|reopen ADDR COUNT SECONDS");
        std::process::exit(2);
    }
    let addr: SocketAddr = args[2].parse().expect("ADDR ip:port");
    let count: usize = args[3].parse().expect("COUNT");
    let secs: u64 = args[4].parse().expect("SECONDS");
    let until = Instant::now() + Duration::from_secs(secs);
    let report = match args[1].as_str() {
        "idle" => hold(addr, count, until, false),
        "slowloris" => hold(addr, count, until, true),
        "reopen" => reopen(addr, count, until),
        other => {
            eprintln!("unknown mode {other}");
            std::process::exit(2);
        }
    };
    println!(
        "{{\"opened\":{},\"connect_errors\":{},\"open_at_end\":{},\"closed_by_server\":{}}}",
        report.opened, report.connect_errors, report.open_at_end, report.closed_by_server
    );
}

#[derive(Default)]
struct Report {
    opened: usize,
    connect_errors: usize,
    open_at_end: usize,
    closed_by_server: usize,
}

fn connect(addr: SocketAddr) -> Option<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_nonblocking(true).ok()?;
    Some(s)
}

/// Whether the server has closed (or reset) this connection.
fn closed(mut s: &TcpStream) -> bool {
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

fn hold(addr: SocketAddr, count: usize, until: Instant, slow: bool) -> Report {
    let mut r = Report::default();
    let mut conns = Vec::with_capacity(count);
    for _ in 0..count {
        match connect(addr) {
            Some(s) => {
                r.opened += 1;
                conns.push(Some(s));
            }
            None => r.connect_errors += 1,
        }
    }
    let head = b"GET /status HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut sent = 0;
    while Instant::now() < until {
        for c in conns.iter_mut() {
            let Some(s) = c else { continue };
            let gone =
                closed(s) || (slow && sent < head.len() && s.write(&head[sent..=sent]).is_err());
            if gone {
                r.closed_by_server += 1;
                *c = None;
            }
        }
        sent += 1;
        std::thread::sleep(
            Duration::from_secs(1).min(until.saturating_duration_since(Instant::now())),
        );
    }
    r.open_at_end = conns.iter().flatten().filter(|s| !closed(s)).count();
    r
}

fn reopen(addr: SocketAddr, count: usize, until: Instant) -> Report {
    let mut r = Report::default();
    let mut conns: Vec<Option<(TcpStream, Instant)>> = (0..count).map(|_| None).collect();
    while Instant::now() < until {
        for c in conns.iter_mut() {
            let expired = match c {
                Some((s, at)) => closed(s) || at.elapsed() > Duration::from_secs(1),
                None => true,
            };
            if expired {
                if c.take().is_some() {
                    r.closed_by_server += 1;
                }
                match connect(addr) {
                    Some(s) => {
                        r.opened += 1;
                        *c = Some((s, Instant::now()));
                    }
                    None => r.connect_errors += 1,
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    r.open_at_end = conns.iter().flatten().filter(|(s, _)| !closed(s)).count();
    r
}
