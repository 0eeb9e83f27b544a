//! Integration tests (root, network namespaces): hostile input from a host on the underlay that
//! runs no weft. Garbage, truncated, oversized and spoofed datagrams to UDP 6783 (sleeve) and broken or
//! half-finished handshakes on TCP 6783 must be dropped and counted, never crash the router,
//! and never stop forwarding between the real hosts.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use weft_tests::{Cmd, Host, cmd::pid_alive, run_test, wait_until};

/// The attacker, run with python3 inside the attacker's namespace.
/// argv: target-ip target-short-id known-short-ids(comma) seconds
const ATTACK_PY: &str = r#"
import json, os, random, socket, struct, sys, time
target, dst_sid, known, secs = sys.argv[1], int(sys.argv[2]), [int(x) for x in sys.argv[3].split(',')], float(sys.argv[4])
rng = random.Random(6784)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sent = {}
def send(kind, data):
    try:
        udp.sendto(data, (target, 6783))
        sent[kind] = sent.get(kind, 0) + 1
    except OSError as e:
        sent[kind + '_error'] = str(e)
def vx(vni, payload, flags=0x08):
    return struct.pack('!B3xI', flags, (vni & 0xffffff) << 8) + payload
def unknown_sid():
    while True:
        s = rng.randrange(4096)
        if s not in known:
            return s
def arp_broadcast():
    src = bytes([2]) + os.urandom(5)
    arp = struct.pack('!HHBBH', 1, 0x0800, 6, 4, 1) + src + bytes([10, 32, 9, 9]) + bytes(6) + bytes([10, 32, 0, 1])
    return b'\xff' * 6 + src + b'\x08\x06' + arp
def frame():
    return bytes([2]) + os.urandom(5) + bytes([2]) + os.urandom(5) + b'\x08\x00' + os.urandom(rng.randrange(0, 200))
held = []
def tcp(kind, data, keep=False):
    try:
        s = socket.create_connection((target, 6783), timeout=2)
        if data:
            s.sendall(data)
        sent[kind] = sent.get(kind, 0) + 1
        if keep:
            held.append(s)
        else:
            time.sleep(0.05)
            s.close()
    except OSError as e:
        sent[kind + '_error'] = str(e)
hello = b'weft' + bytes([1, 1])
deadline = time.time() + secs
rounds = 0
while time.time() < deadline:
    for _ in range(40):
        send('random', os.urandom(rng.randrange(0, 1600)))
        send('truncated_header', vx(known[0] | (dst_sid << 12), b'')[: rng.randrange(0, 8)])
        send('no_i_flag', vx(known[0] | (dst_sid << 12), frame(), flags=0x00))
        send('reserved_bits', struct.pack('!BBBBI', 0x08, 0xff, 0xff, 0xff, ((known[0] | (dst_sid << 12)) << 8) | 0xff) + frame())
        send('unknown_peer', vx(unknown_sid() | (dst_sid << 12), arp_broadcast()))
        send('spoofed_known_peer', vx(known[0] | (dst_sid << 12), arp_broadcast()))
        send('wrong_dst', vx(known[0] | (unknown_sid() << 12), frame()))
        send('short_inner', vx(known[0] | (dst_sid << 12), os.urandom(rng.randrange(0, 14))))
        send('bogus_heartbeat', vx(known[0] | (dst_sid << 12), bytes(14) + os.urandom(16)))
        send('empty', b'')
    send('oversized', os.urandom(65000))
    if rounds % 5 == 0:
        tcp('tcp_garbage', os.urandom(4096))
        tcp('tcp_http', b'GET /status HTTP/1.1\r\nHost: x\r\n\r\n')
        tcp('tcp_bad_version', b'weft' + bytes([200, 255]))
        tcp('tcp_huge_length', hello + struct.pack('!I', 0xffffffff))
        tcp('tcp_garbage_frame', hello + struct.pack('!I', 64) + os.urandom(64))
        tcp('tcp_half_frame', hello + struct.pack('!I', 100) + os.urandom(10), keep=True)
        tcp('tcp_partial_hello', b'we', keep=True)
        tcp('tcp_silent', b'', keep=True)
    rounds += 1
    time.sleep(0.05)
for s in held:
    s.close()
print(json.dumps(sent, sort_keys=True))
"#;

const COUNTERS: [&str; 4] = [
    "udp_rx_dropped_malformed",
    "udp_rx_dropped_unknown_peer",
    "udp_rx_dropped_other",
    "control_handshake_failures",
];

fn counters(h: &Host) -> Result<[u64; 4]> {
    let mut v = [0; 4];
    for (i, name) in COUNTERS.iter().enumerate() {
        v[i] = h.counter(name)?;
    }
    Ok(v)
}

#[test]
fn hostile_underlay_input_is_dropped_and_counted() {
    run_test("bad", |net| {
        let p = net.pair()?;
        let attacker = net.host(9)?;
        let script = net.dir().join("attack.py");
        std::fs::write(&script, ATTACK_PY)?;
        let pids = [p.h1.router_pid()?, p.h2.router_pid()?];
        let before = counters(&p.h1)?;

        // Ping through the overlay for the whole attack.
        let ping_out = net.dir().join("ping.out");
        let mut ping = Cmd::new("ip")
            .args([
                "netns",
                "exec",
                p.c1.ns(),
                "ping",
                "-n",
                "-c",
                "40",
                "-i",
                "0.25",
                "-W",
                "1",
            ])
            .arg(p.c2.ip().to_string())
            .spawn_to(&ping_out, &net.dir().join("ping.err"))?;
        let known = format!("{},{}", p.h2.short_id()?, p.h1.short_id()?);
        let attack = Cmd::new("ip")
            .args(["netns", "exec", attacker.ns(), "python3"])
            .arg(&script)
            .args([
                p.h1.addr().to_string(),
                p.h1.short_id()?.to_string(),
                known,
                "8".into(),
            ])
            .timeout(Duration::from_secs(90))
            .run()?;
        let ping_status = wait_until(
            "the ping during the attack to finish",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || ping.try_wait()?.context("running"),
        );
        if ping_status.is_err() {
            let _ = ping.kill();
            let _ = ping.wait();
        }
        let attack = attack.ok()?;
        eprintln!("attacker sent: {}", attack.stdout.trim());
        ping_status?;
        let during = weft_tests::net::parse_ping(&std::fs::read_to_string(&ping_out)?)?;

        for (h, pid) in [(&p.h1, pids[0]), (&p.h2, pids[1])] {
            ensure!(pid_alive(pid), "router on host {} (pid {pid}) died", h.n());
            let log = h.log();
            ensure!(
                !log.is_empty(),
                "router log {} is empty",
                h.log_path().display()
            );
            ensure!(
                !log.contains("panicked"),
                "router log on host {} mentions a panic:\n{}",
                h.n(),
                weft_tests::cmd::tail(&log, 40)
            );
        }
        ensure!(
            during.received * 2 >= during.transmitted,
            "only {}/{} pings answered during the attack",
            during.received,
            during.transmitted
        );
        p.c1.wait_ping(p.c2.ip(), Duration::from_secs(10))?;
        let after_ping = p.c2.ping(p.c1.ip(), 5, 0.2)?;
        ensure!(
            after_ping.received >= 4,
            "after the attack only {}/5 pings",
            after_ping.received
        );

        let after = counters(&p.h1)?;
        let report = COUNTERS
            .iter()
            .zip(before.iter().zip(after.iter()))
            .map(|(n, (b, a))| format!("{n}: {b} -> {a}"))
            .collect::<Vec<_>>()
            .join(", ");
        eprintln!("counters on host 1: {report}");
        ensure!(
            after[0] > before[0],
            "malformed-datagram drops did not increase: {report}"
        );
        ensure!(
            after[1] + after[2] > before[1] + before[2],
            "well-formed datagrams from an unknown sender were not counted as dropped: {report}"
        );
        ensure!(
            after[3] > before[3],
            "bad handshakes were not counted: {report}"
        );
        Ok(())
    });
}
