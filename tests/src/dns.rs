//! Test-support layer: weaveDNS helpers. A fake upstream DNS server in a test namespace (never
//! a real outside resolver), `dig` in a namespace with its answers parsed, and a bounded query
//! flood.
//!
//! [`FakeUpstream`] runs a small python3 server on UDP and TCP port 53 of its namespace: every
//! `A` question gets `203.0.113.77` ([`UPSTREAM_ANSWER`]), except names starting with `big`,
//! which get 60 addresses in 203.0.113.0/24 (too many for 512 bytes: truncated over UDP).
//! It counts the queries it answered in a file. Dropping it kills the server (its own child).

use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::cmd::{Cmd, Output, wait_until};
use crate::net::Host;

/// What [`FakeUpstream`] answers for every ordinary name.
pub const UPSTREAM_ANSWER: &str = "203.0.113.77";

/// A fake upstream DNS server inside a namespace.
#[derive(Debug)]
pub struct FakeUpstream {
    child: Option<Child>,
    ns: String,
    count_file: PathBuf,
}

const FAKE_DNS: &str = r#"
import socket, struct, sys, threading
count_file = sys.argv[1]
count = [0]
lock = threading.Lock()
def answer(q):
    if len(q) < 12 or q[2] & 0x80:
        return None
    i = 12
    labels = []
    while i < len(q) and q[i] != 0:
        n = q[i]
        labels.append(q[i+1:i+1+n].decode('ascii', 'replace'))
        i += 1 + n
    i += 1
    if i + 4 > len(q):
        return None
    qtype, = struct.unpack('>H', q[i:i+2])
    question = q[12:i+4]
    name = '.'.join(labels).lower()
    addrs = []
    if qtype == 1:
        addrs = [bytes([203, 0, 113, k]) for k in range(1, 61)] if name.startswith('big') else [bytes([203, 0, 113, 77])]
    flags = 0x8180 | (q[2] & 0x01) << 8
    body = b''.join(b'\xc0\x0c' + struct.pack('>HHIH', 1, 1, 60, 4) + a for a in addrs)
    with lock:
        count[0] += 1
        open(count_file, 'w').write(str(count[0]))
    return (q[:2], flags, question, addrs, body)
def encode(a, truncate):
    qid, flags, question, addrs, body = a
    if truncate:
        return qid + struct.pack('>HHHHH', flags | 0x0200, 1, 0, 0, 0) + question
    return qid + struct.pack('>HHHHH', flags, 1, len(addrs), 0, 0) + question + body
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(('0.0.0.0', 53))
    while True:
        q, src = s.recvfrom(65535)
        a = answer(q)
        if a is None:
            continue
        r = encode(a, False)
        if len(r) > 512:
            r = encode(a, True)
        s.sendto(r, src)
def tcp_conn(c):
    try:
        while True:
            h = c.recv(2, socket.MSG_WAITALL)
            if len(h) < 2:
                return
            n, = struct.unpack('>H', h)
            q = c.recv(n, socket.MSG_WAITALL)
            a = answer(q)
            if a is None:
                return
            r = encode(a, False)
            c.sendall(struct.pack('>H', len(r)) + r)
    finally:
        c.close()
def tcp():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(('0.0.0.0', 53))
    s.listen(16)
    while True:
        c, _ = s.accept()
        threading.Thread(target=tcp_conn, args=(c,), daemon=True).start()
threading.Thread(target=tcp, daemon=True).start()
open(count_file, 'w').write('0')
udp()
"#;

impl FakeUpstream {
    /// Starts the server in namespace `ns`; `dir` holds its query counter. Waits until it
    /// answers.
    pub fn start(ns: &str, dir: &std::path::Path, addr: &str) -> Result<Self> {
        let count_file = dir.join(format!("fake-dns-{ns}.count"));
        let _ = std::fs::remove_file(&count_file);
        let log = dir.join(format!("fake-dns-{ns}.log"));
        let child = Cmd::new("ip")
            .args(["netns", "exec", ns, "python3", "-c", FAKE_DNS])
            .arg(&count_file)
            .spawn_to(&log, &log)
            .context("starting the fake upstream DNS server")?;
        let up = Self {
            child: Some(child),
            ns: ns.to_owned(),
            count_file,
        };
        wait_until(
            "the fake upstream DNS server to answer",
            Duration::from_secs(10),
            Duration::from_millis(100),
            || {
                let a = dig(
                    ns,
                    &[
                        &format!("@{addr}"),
                        "+short",
                        "+time=1",
                        "+tries=1",
                        "probe.example.test",
                    ],
                )?;
                if a.stdout.trim() == UPSTREAM_ANSWER {
                    Ok(())
                } else {
                    bail!("answered {:?}", a.stdout)
                }
            },
        )?;
        Ok(up)
    }

    /// Queries answered so far.
    pub fn answered(&self) -> u64 {
        std::fs::read_to_string(&self.count_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Stops the server (the upstream is "down" from then on).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Our own child, killed by its id (`ip netns exec` execs python3 in place).
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The namespace it runs in.
    pub fn ns(&self) -> &str {
        &self.ns
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The nameserver address `weft dns-args` gives on `h` (what containers use).
pub fn dns_address(h: &Host) -> Result<String> {
    let args = h.weft_ok(&["dns-args"])?;
    args.split_whitespace()
        .find_map(|w| w.strip_prefix("--dns="))
        .map(str::to_owned)
        .with_context(|| format!("weft dns-args printed {args:?}"))
}

/// Runs `dig ARGS` inside namespace `ns` (20 s limit), whatever its exit status.
pub fn dig(ns: &str, args: &[&str]) -> Result<Output> {
    Cmd::new("ip")
        .args(["netns", "exec", ns, "dig"])
        .args(args)
        .timeout(Duration::from_secs(20))
        .run()
}

/// A `dig` answer, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigAnswer {
    /// `NOERROR`, `NXDOMAIN`, `SERVFAIL`, ...
    pub status: String,
    /// The header flags (`qr`, `aa`, `tc`, ...).
    pub flags: Vec<String>,
    /// The answer section's data fields, in order (addresses, PTR targets).
    pub answers: Vec<String>,
}

/// `dig @SERVER NAME [TYPE] EXTRA...` in `ns`, parsed; fails when dig gets no answer.
pub fn query(ns: &str, server: &str, name: &str, extra: &[&str]) -> Result<DigAnswer> {
    let at = format!("@{server}");
    let mut args = vec![
        at.as_str(),
        name,
        "+time=2",
        "+tries=1",
        "+nocmd",
        "+nostats",
    ];
    args.extend_from_slice(extra);
    let out = dig(ns, &args)?;
    parse_dig(&out.stdout).with_context(|| format!("{out}"))
}

/// Parses dig's default output.
pub fn parse_dig(text: &str) -> Result<DigAnswer> {
    let status = text
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .context("dig printed no status (no answer)")?
        .to_owned();
    let flags = text
        .split(";; flags: ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .map(|s| s.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    let mut answers = Vec::new();
    let mut in_answer = false;
    for line in text.lines() {
        if line.starts_with(";; ANSWER SECTION") {
            in_answer = true;
            continue;
        }
        if in_answer {
            if line.trim().is_empty() || line.starts_with(";;") {
                in_answer = false;
                continue;
            }
            if let Some(data) = line.split_whitespace().nth(4) {
                answers.push(data.to_owned());
            }
        }
    }
    Ok(DigAnswer {
        status,
        flags,
        answers,
    })
}

/// Sends `count` A queries for `name` from namespace `ns` to `server` (port 53) as fast as
/// python3 can, without waiting for answers; returns how long it took.
pub fn flood(ns: &str, server: &str, name: &str, count: u32) -> Result<Duration> {
    let script = format!(
        "import socket, struct\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.setblocking(False)\n\
         q = b''.join(bytes([len(l)]) + l.encode() for l in '{name}'.split('.') if l) + b'\\x00'\n\
         sent = 0\n\
         for i in range({count}):\n\
         \u{20}   try:\n\
         \u{20}       s.sendto(struct.pack('>HHHHHH', i & 0xffff, 0x0100, 1, 0, 0, 0) + q + b'\\x00\\x01\\x00\\x01', ('{server}', 53))\n\
         \u{20}       sent += 1\n\
         \u{20}   except BlockingIOError:\n\
         \u{20}       pass\n\
         \u{20}   try:\n\
         \u{20}       s.recv(4096)\n\
         \u{20}   except BlockingIOError:\n\
         \u{20}       pass\n\
         print(sent)\n"
    );
    let started = std::time::Instant::now();
    Cmd::new("ip")
        .args(["netns", "exec", ns, "python3", "-c", &script])
        .timeout(Duration::from_secs(120))
        .run_ok()?;
    Ok(started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dig_output() {
        let text = ";; Got answer:\n\
            ;; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: 1\n\
            ;; flags: qr aa rd ra; QUERY: 1, ANSWER: 2, AUTHORITY: 0, ADDITIONAL: 1\n\n\
            ;; QUESTION SECTION:\n;chronos1.weave.local.\t\tIN\tA\n\n\
            ;; ANSWER SECTION:\n\
            chronos1.weave.local.\t1\tIN\tA\t10.32.1.2\n\
            chronos1.weave.local.\t1\tIN\tA\t10.32.1.1\n\n";
        let a = parse_dig(text).unwrap();
        assert_eq!(a.status, "NOERROR");
        assert_eq!(a.flags, ["qr", "aa", "rd", "ra"]);
        assert_eq!(a.answers, ["10.32.1.2", "10.32.1.1"]);
        assert!(parse_dig(";; connection timed out; no servers could be reached").is_err());
    }
}
