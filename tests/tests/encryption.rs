//! Integration tests (root, network namespaces): encryption with a shared password.
//!
//! - With a password, nothing a container sends (nor a peer's nickname, which travels in the
//!   control messages) is visible in a capture of the underlay, on TCP 6783 or UDP 6783/6784; without
//!   one, both are (so the capture would notice); with mutually trusted subnets only the data
//!   plane is in the clear.
//! - An attacker on the underlay link replays captured datagrams, flips bits in them, forges
//!   some and injects plaintext VXLAN: nothing reaches the container, the drops are counted,
//!   and the real traffic goes on.
//! - A wrong password, or a password on one side only, keeps peers apart with a clear message
//!   in the log and in `weft status connections`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use weft_tests::mesh::{connections, launch_with, lines_for, wait_established_with};
use weft_tests::{Cmd, Container, Host, TestNet, cmd, run_test, wait_until};

const PASSWORD: &str = "correct horse battery staple";
const MARKER: &str = "WEFT-SECRET-MARKER-7c1d";
const NICK_MARKER: &str = "nick-secret-4b2e";

/// Records every frame on an interface: `<u32 length><frame>` records. argv: iface outfile.
const SNIFF_PY: &str = r#"
import socket, struct, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind((sys.argv[1], 0))
out = open(sys.argv[2], 'wb')
print('ready', flush=True)
while True:
    f = s.recv(65535)
    out.write(struct.pack('!I', len(f)) + f)
    out.flush()
"#;

/// Receives UDP on PORT and TCP on PORT+1 for SECS seconds; writes "U <hex>" per datagram and
/// "T <bytes> <marker seen>" per closed TCP connection. argv: port secs outfile marker.
const SINK_PY: &str = r#"
import select, socket, sys, time
port, secs, out, marker = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4].encode()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(('0.0.0.0', port))
t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); t.bind(('0.0.0.0', port + 1)); t.listen(4)
f = open(out, 'w')
print('ready', flush=True)
deadline = time.time() + secs
conns = {}
while time.time() < deadline:
    r, _, _ = select.select([u, t] + list(conns), [], [], 0.2)
    for x in r:
        if x is u:
            d, _ = u.recvfrom(65535)
            f.write('U ' + d.hex() + '\n'); f.flush()
        elif x is t:
            c, _ = t.accept(); conns[c] = b''
        else:
            d = x.recv(65536)
            if d:
                conns[x] += d
            else:
                f.write('T %d %d\n' % (len(conns[x]), conns[x].count(marker))); f.flush()
                del conns[x]; x.close()
"#;

/// Sends N datagrams "<marker>-<i>" to DST:PORT every INTERVAL s, then (if TCPBYTES > 0) the
/// marker repeated over TCP to DST:PORT+1. argv: dst port n interval marker tcpbytes.
const SEND_PY: &str = r#"
import socket, sys, time
dst, port, n, interval, marker, tcp = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5], int(sys.argv[6])
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(n):
    u.sendto(('%s-%d' % (marker, i)).encode(), (dst, port))
    time.sleep(interval)
if tcp:
    c = socket.create_connection((dst, port + 1), timeout=10)
    data = marker.encode() * (tcp // len(marker) + 1)
    c.sendall(data[:tcp]); c.close()
print('sent', flush=True)
"#;

/// On the underlay side of a host's link. Mode `capture` records datagrams from SRC to
/// DST:6783 (sleeve: encrypted connections never use the kernel fast path) into CAPFILE; the other modes send every recorded datagram towards DST again:
/// `replay` unchanged (but for the UDP checksum), `flip` with one bit flipped, `forged` with its sealed part replaced by
/// random bytes; `plain` sends plaintext VXLAN frames carrying "INJECTED" to a container.
/// argv: mode iface src dst capfile capture_secs inner_dst_mac inner_src_mac inner_dst_ip
/// inner_src_ip port
const ATTACK_PY: &str = r#"
import json, os, random, socket, struct, sys, time
mode, iface, src, dst, capfile, secs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], float(sys.argv[6])
dmac, smac = bytes.fromhex(sys.argv[7].replace(':', '')), bytes.fromhex(sys.argv[8].replace(':', ''))
dip, sip, port = socket.inet_aton(sys.argv[9]), socket.inet_aton(sys.argv[10]), int(sys.argv[11])
rng = random.Random(6784)
S, D = socket.inet_aton(src), socket.inet_aton(dst)
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind((iface, 0)); s.settimeout(0.2)
def csum(b):
    if len(b) % 2: b += b'\0'
    t = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    while t >> 16: t = (t & 0xffff) + (t >> 16)
    return (~t) & 0xffff
if mode == 'capture':
    captured = []
    deadline = time.time() + secs
    while time.time() < deadline and len(captured) < 150:
        try:
            f, addr = s.recvfrom(65535)
        except socket.timeout:
            continue
        if addr[2] != socket.PACKET_OUTGOING: continue
        if len(f) < 34 or f[12:14] != b'\x08\x00': continue
        ihl = (f[14] & 15) * 4
        ip = f[14:]
        if ip[9] != 17 or ip[12:16] != S or ip[16:20] != D: continue
        if struct.unpack('!H', ip[ihl + 2:ihl + 4])[0] != 6783: continue
        if len(f) < 14 + ihl + 8 + 8 + 24: continue
        captured.append(f.hex())
    json.dump(captured, open(capfile, 'w'))
    print(json.dumps({'captured': len(captured)}), flush=True)
    sys.exit(0)
captured = [bytes.fromhex(h) for h in json.load(open(capfile))]
sent = 0
def emit(f):
    global sent
    s.send(f); sent += 1; time.sleep(0.002)
def ihl_of(f):
    return (f[14] & 15) * 4
def zero_udp_csum(b, ihl):
    b[14 + ihl + 6:14 + ihl + 8] = b'\0\0'
for f in captured:
    ihl = ihl_of(f)
    if mode == 'replay':
        # The same datagram. The capture is taken before checksum offload filled in the UDP
        # checksum, so send it with none (0), as the other modes do.
        b = bytearray(f)
        zero_udp_csum(b, ihl)
        emit(bytes(b))
    elif mode == 'flip':
        b = bytearray(f)
        i = rng.randrange(14 + ihl + 8, len(b))
        b[i] ^= 1 << rng.randrange(8)
        zero_udp_csum(b, ihl)
        emit(bytes(b))
    elif mode == 'forged':
        b = bytearray(f)
        off = 14 + ihl + 8 + 8
        b[off:] = os.urandom(len(b) - off)
        zero_udp_csum(b, ihl)
        emit(bytes(b))
if mode == 'plain' and captured:
    f = captured[0]
    ihl = ihl_of(f)
    vx = f[14 + ihl + 8:14 + ihl + 16]
    for i in range(20):
        payload = b'INJECTED-%d' % i
        udp = struct.pack('!HHHH', 40000, port, 8 + len(payload), 0) + payload
        iph = bytearray(struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(udp), i, 0, 64, 17, 0, sip, dip))
        iph[10:12] = struct.pack('!H', csum(bytes(iph)))
        inner = dmac + smac + b'\x08\x00' + bytes(iph) + udp
        upay = vx + inner
        oip = bytearray(f[14:14 + ihl])
        oip[2:4] = struct.pack('!H', ihl + 8 + len(upay)); oip[10:12] = b'\0\0'
        oip[10:12] = struct.pack('!H', csum(bytes(oip)))
        oudp = struct.pack('!HHHH', 6783, 6783, 8 + len(upay), 0)
        emit(f[:14] + bytes(oip) + oudp + upay)
print(json.dumps({mode: sent}), flush=True)
"#;

fn write_script(net: &TestNet, name: &str, text: &str) -> Result<PathBuf> {
    let p = net.dir().join(name);
    std::fs::write(&p, text)?;
    Ok(p)
}

/// Starts `python3 script args` in namespace `ns`, waits for it to print `ready_word`.
fn spawn_py(
    net: &TestNet,
    ns: &str,
    script: &Path,
    args: &[String],
    tag: &str,
    ready_word: &str,
) -> Result<(std::process::Child, PathBuf)> {
    let out = net.dir().join(format!("{tag}.out"));
    let err = net.dir().join(format!("{tag}.err"));
    let mut child = Cmd::new("ip")
        .args(["netns", "exec", ns, "python3", "-u"])
        .arg(script)
        .args(args)
        .spawn_to(&out, &err)?;
    let started = wait_until(
        &format!("{tag} to start"),
        Duration::from_secs(15),
        Duration::from_millis(50),
        || {
            if let Some(st) = child.try_wait()? {
                bail!(
                    "{tag} exited with {st}: {}",
                    std::fs::read_to_string(&err).unwrap_or_default()
                );
            }
            let o = std::fs::read_to_string(&out).unwrap_or_default();
            ensure!(o.contains(ready_word), "not yet");
            Ok(())
        },
    );
    if let Err(e) = started {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    Ok((child, out))
}

/// Our own child: stop it and reap it.
fn stop(mut child: std::process::Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// What a capture of the underlay held.
#[derive(Debug, Default)]
struct Seen {
    tcp_frames: usize,
    udp_frames: usize,
    marker_in_tcp: bool,
    marker_in_udp: bool,
    nick_in_tcp: bool,
    nick_in_udp: bool,
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Classify the frames of a `SNIFF_PY` capture file.
fn analyse(file: &Path) -> Result<Seen> {
    let data = std::fs::read(file)?;
    let mut seen = Seen::default();
    let mut rest = &data[..];
    while rest.len() >= 4 {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let Some(frame) = rest.get(4..4 + len) else {
            break;
        };
        rest = &rest[4 + len..];
        if frame.len() < 34 || frame[12..14] != [0x08, 0x00] {
            continue;
        }
        let ip = &frame[14..];
        let ihl = usize::from(ip[0] & 15) * 4;
        let Some(l4) = ip.get(ihl..) else { continue };
        if l4.len() < 4 {
            continue;
        }
        let sport = u16::from_be_bytes([l4[0], l4[1]]);
        let dport = u16::from_be_bytes([l4[2], l4[3]]);
        let (marker, nick) = (contains(frame, MARKER), contains(frame, NICK_MARKER));
        match ip[9] {
            6 if sport == 6783 || dport == 6783 => {
                seen.tcp_frames += 1;
                seen.marker_in_tcp |= marker;
                seen.nick_in_tcp |= nick;
            }
            // Sleeve (6783/udp) or the kernel fast path (6784/udp): both carry frames.
            17 if [6783, 6784].contains(&sport) || [6783, 6784].contains(&dport) => {
                seen.udp_frames += 1;
                seen.marker_in_udp |= marker;
                seen.nick_in_udp |= nick;
            }
            _ => {}
        }
    }
    Ok(seen)
}

/// Launches host 1 (nickname carrying [`NICK_MARKER`]) with `opts1`, captures its underlay link
/// while host 2 joins with `opts2` and containers exchange the marker over UDP and TCP; checks
/// that the marker arrived, and returns what the capture saw.
fn marker_run(net: &TestNet, opts1: &[&str], opts2: &[&str]) -> Result<(Host, Host, Seen)> {
    let h1 = net.host(1)?;
    let h2 = net.host(2)?;
    let mut a1 = vec!["--nickname", NICK_MARKER];
    a1.extend_from_slice(opts1);
    h1.launch_args(&a1)?;
    let sniff = write_script(net, "sniff.py", SNIFF_PY)?;
    let cap = net.dir().join("underlay.cap");
    let (sniffer, _) = spawn_py(
        net,
        net.underlay_ns(),
        &sniff,
        &[h1.underlay_port(), cap.display().to_string()],
        "sniff",
        "ready",
    )?;
    let res = (|| -> Result<()> {
        launch_with(&h2, opts2, &[&h1])?;
        wait_established_with(&h1, &h2, Duration::from_secs(30))?;
        wait_established_with(&h2, &h1, Duration::from_secs(30))?;
        let c1 = h1.container("c1", "10.32.0.1/12")?;
        let c2 = h2.container("c2", "10.32.0.2/12")?;
        c2.wait_ping(c1.ip(), Duration::from_secs(20))?;
        exchange_marker(net, &c2, &c1)
    })();
    stop(sniffer);
    res?;
    let seen = analyse(&cap)?;
    eprintln!("capture: {seen:?}");
    ensure!(
        seen.tcp_frames > 0 && seen.udp_frames > 0,
        "the capture saw no control or no data traffic: {seen:?}"
    );
    Ok((h1, h2, seen))
}

/// Container `from` sends the marker to `to` in 20 datagrams and 64 KiB of TCP; checks it
/// arrived.
fn exchange_marker(net: &TestNet, from: &Container, to: &Container) -> Result<()> {
    let sink = write_script(net, "sink.py", SINK_PY)?;
    let send = write_script(net, "send.py", SEND_PY)?;
    let got = net.dir().join("sink.txt");
    let (sink_child, _) = spawn_py(
        net,
        to.ns(),
        &sink,
        &[
            "7777".into(),
            "20".into(),
            got.display().to_string(),
            MARKER.into(),
        ],
        "sink",
        "ready",
    )?;
    let res = (|| -> Result<()> {
        Cmd::new("ip")
            .args(["netns", "exec", from.ns(), "python3"])
            .arg(&send)
            .args([&to.ip().to_string(), "7777", "20", "0.01", MARKER, "65536"])
            .timeout(Duration::from_secs(30))
            .run_ok()?;
        wait_until(
            "the marker to arrive over UDP and TCP",
            Duration::from_secs(15),
            Duration::from_millis(100),
            || {
                let text = std::fs::read_to_string(&got).unwrap_or_default();
                let udp = text.lines().filter(|l| l.starts_with("U ")).count();
                let tcp_ok = text.lines().any(|l| l.starts_with("T 65536 "));
                ensure!(udp >= 15 && tcp_ok, "received so far:\n{text}");
                Ok(())
            },
        )?;
        Ok(())
    })();
    stop(sink_child);
    res
}

fn password_file(net: &TestNet, pw: &str) -> Result<String> {
    let p = net.dir().join("password");
    // A trailing newline, as an editor writes it; it is not part of the password.
    std::fs::write(&p, format!("{pw}\n"))?;
    Ok(p.display().to_string())
}

#[test]
fn with_a_password_the_underlay_shows_no_marker() {
    run_test("encm", |net| {
        let file = password_file(net, PASSWORD)?;
        let (h1, h2, seen) =
            marker_run(net, &["--password-file", &file], &["--password", PASSWORD])?;
        ensure!(
            !seen.marker_in_udp && !seen.marker_in_tcp,
            "marker visible on the underlay: {seen:?}"
        );
        ensure!(
            !seen.nick_in_tcp && !seen.nick_in_udp,
            "nickname visible on the underlay: {seen:?}"
        );
        for h in [&h1, &h2] {
            let status = h.status_json()?;
            ensure!(status["encryption"] == true, "encryption not reported");
            let text = h.weft_ok(&["status"])?;
            ensure!(text.contains("Encryption: enabled"), "{text}");
            let (_, conns) = connections(h)?;
            ensure!(
                conns.contains("established") && conns.contains(" encrypted"),
                "connection not shown as encrypted on host {}:\n{conns}",
                h.n()
            );
            let json: serde_json::Value =
                serde_json::from_str(&h.weft_ok(&["status", "connections", "--json"])?)?;
            ensure!(
                json[0]["encrypted"] == true && json[0]["control_encrypted"] == true,
                "{json}"
            );
        }
        // The daemon got the password without it showing on its command line.
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", h2.router_pid()?))?;
        ensure!(
            !contains(&cmdline, PASSWORD),
            "password visible in the router's command line"
        );
        ensure!(
            h1.log().contains("encrypted (aes-256-gcm)")
                || h1.log().contains("encrypted (chacha20-poly1305)"),
            "log does not say how the connection is encrypted:\n{}",
            cmd::tail(&h1.log(), 20)
        );
        Ok(())
    });
}

/// The control experiment for the test above: the same capture without a password sees both.
#[test]
fn without_a_password_the_underlay_shows_the_marker() {
    run_test("encp", |net| {
        let (_, _, seen) = marker_run(net, &[], &[])?;
        ensure!(
            seen.marker_in_udp && seen.nick_in_tcp,
            "the capture should see plaintext: {seen:?}"
        );
        Ok(())
    });
}

#[test]
fn trusted_subnets_leave_only_the_data_plane_in_the_clear() {
    run_test("enct", |net| {
        let opts = ["--password", PASSWORD, "--trusted-subnets", "192.0.2.0/24"];
        let (h1, _, seen) = marker_run(net, &opts, &opts)?;
        ensure!(seen.marker_in_udp, "data plane should be clear: {seen:?}");
        ensure!(
            !seen.nick_in_tcp && !seen.marker_in_tcp,
            "control traffic must stay encrypted: {seen:?}"
        );
        let (_, conns) = connections(&h1)?;
        // Weave's words for a trusted link: `unencrypted`, and no `encrypted=true` attribute;
        // its data plane in the clear may take the kernel fast path, as with Weave.
        ensure!(
            conns.contains(" unencrypted fastdp ") && !conns.contains("encrypted=true"),
            "status should show the unencrypted data plane:\n{conns}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&h1.weft_ok(&["status", "connections", "--json"])?)?;
        ensure!(
            json[0]["encrypted"] == false && json[0]["control_encrypted"] == true,
            "{json}"
        );
        Ok(())
    });
}

/// Waits until host `h`'s connection line for `other` shows `text`.
fn wait_conn_text(h: &Host, other: &Host, text: &str) -> Result<String> {
    wait_until(
        &format!("host {} to report '{text}'", h.n()),
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            let (lines, raw) = connections(h)?;
            let l = lines_for(&lines, other.addr());
            match l.iter().find(|c| c.line.contains(text)) {
                Some(c) => Ok(c.line.clone()),
                None => bail!("status connections:\n{raw}"),
            }
        },
    )
}

#[test]
fn wrong_or_missing_password_cannot_join() {
    run_test("encw", |net| {
        let h1 = net.host(1)?;
        let h2 = net.host(2)?;
        let h3 = net.host(3)?;
        // Each dials the others, so both ends of each refused pair report it.
        launch_with(&h1, &["--password", PASSWORD], &[&h2, &h3])?;
        launch_with(&h2, &["--password", "another password"], &[&h1])?;
        launch_with(&h3, &[], &[&h1])?;
        let wrong = "wrong password";
        for (a, b) in [(&h1, &h2), (&h2, &h1)] {
            let line = wait_conn_text(a, b, wrong)?;
            eprintln!("host {}: {line}", a.n());
            ensure!(line.contains("retrying"), "{line}");
            ensure!(a.log().contains(wrong), "log of host {}", a.n());
        }
        let line = wait_conn_text(
            &h1,
            &h3,
            "password specified, but peer requested an unencrypted connection",
        )?;
        eprintln!("host 1: {line}");
        let line = wait_conn_text(
            &h3,
            &h1,
            "peer requested an encrypted connection, but no password was specified",
        )?;
        eprintln!("host 3: {line}");
        // Nobody got in: no established connection, no peer but ourselves.
        for h in [&h1, &h2, &h3] {
            let (lines, raw) = connections(h)?;
            ensure!(
                !lines
                    .iter()
                    .any(|c| c.state == "established" || c.state == "pending"),
                "host {} has a connection:\n{raw}",
                h.n()
            );
            let peers = h.status_json()?["peers"].as_array().map_or(0, Vec::len);
            ensure!(peers == 1, "host {} knows {peers} peers", h.n());
            ensure!(h.counter("control_handshake_failures")? > 0);
        }
        Ok(())
    });
}

#[test]
fn replayed_flipped_forged_and_injected_datagrams_are_dropped() {
    run_test("enca", |net| {
        let h1 = net.host(1)?;
        let h2 = net.host(2)?;
        launch_with(&h1, &["--password", PASSWORD], &[])?;
        launch_with(&h2, &["--password", PASSWORD], &[&h1])?;
        wait_established_with(&h1, &h2, Duration::from_secs(30))?;
        wait_established_with(&h2, &h1, Duration::from_secs(30))?;
        let c1 = h1.container("c1", "10.32.0.1/12")?;
        let c2 = h2.container("c2", "10.32.0.2/12")?;
        c2.wait_ping(c1.ip(), Duration::from_secs(20))?;
        let sink = write_script(net, "sink.py", SINK_PY)?;
        let send = write_script(net, "send.py", SEND_PY)?;
        let attack = write_script(net, "attack.py", ATTACK_PY)?;
        let got = net.dir().join("sink.txt");
        let (sink_child, _) = spawn_py(
            net,
            c1.ns(),
            &sink,
            &[
                "7777".into(),
                "40".into(),
                got.display().to_string(),
                MARKER.into(),
            ],
            "sink",
            "ready",
        )?;
        let res = (|| -> Result<String> {
            // Real traffic for the whole attack: 600 numbered datagrams, 30 ms apart.
            let sender = Cmd::new("ip")
                .args(["netns", "exec", c2.ns(), "python3"])
                .arg(&send)
                .args([&c1.ip().to_string(), "7777", "600", "0.03", "SEQ", "0"])
                .spawn_to(&net.dir().join("sender.out"), &net.dir().join("sender.err"))?;
            let capfile = net.dir().join("captured.json");
            let attack = |mode: &str| -> Result<u64> {
                let out = Cmd::new("ip")
                    .args(["netns", "exec", net.underlay_ns(), "python3"])
                    .arg(&attack)
                    .args([
                        mode.to_owned(),
                        h1.underlay_port(),
                        h2.addr().to_string(),
                        h1.addr().to_string(),
                        capfile.display().to_string(),
                        "4".into(),
                        c1.mac()?,
                        c2.mac()?,
                        c1.ip().to_string(),
                        c2.ip().to_string(),
                        "7777".into(),
                    ])
                    .timeout(Duration::from_secs(60))
                    .run_ok()?;
                let v: serde_json::Value = serde_json::from_str(
                    out.stdout
                        .lines()
                        .last()
                        .context("attacker printed nothing")?,
                )?;
                eprintln!("attacker: {v}");
                v.as_object()
                    .and_then(|o| o.values().next())
                    .and_then(serde_json::Value::as_u64)
                    .context("attacker report")
            };
            let captured = attack("capture")?;
            ensure!(captured >= 20, "captured only {captured} datagrams");
            // Each kind of attack, with the drops it must cause.
            // Drops: (failed authentication, replays).
            let drops = || -> Result<(u64, u64)> {
                Ok((
                    h1.counter("udp_rx_dropped_auth")?,
                    h1.counter("udp_rx_dropped_replay")?,
                ))
            };
            let wait_drops = |what: &str, ok: &dyn Fn((u64, u64)) -> bool| {
                wait_until(
                    &format!("the {what} datagrams to be counted as dropped"),
                    Duration::from_secs(5),
                    Duration::from_millis(100),
                    || {
                        let d = drops()?;
                        ensure!(ok(d), "drops (auth, replay) = {d:?}");
                        Ok(d)
                    },
                )
            };
            let (a0, r0) = drops()?;
            let n = attack("replay")?;
            let (mut auth, mut replay) = wait_drops("replayed", &|(_, r)| r >= r0 + n)?;
            // A flipped bit outside the counter leaves a counter already seen: such a datagram
            // is refused by the replay window before it is even opened. Either way it is a drop.
            for mode in ["flip", "forged", "plain"] {
                let n = attack(mode)?;
                let before = auth + replay;
                (auth, replay) = wait_drops(mode, &|(a, r)| a + r >= before + n)?;
            }
            ensure!(auth >= a0 + n, "forged datagrams must fail authentication");
            eprintln!("dropped: auth {auth}, replay {replay}");
            let mut sender = sender;
            wait_until(
                "the sender to finish",
                Duration::from_secs(60),
                Duration::from_millis(200),
                || sender.try_wait()?.context("running"),
            )?;
            Ok(String::new())
        })();
        // Give the last datagrams a moment, then stop the sink.
        std::thread::sleep(Duration::from_secs(1));
        stop(sink_child);
        res?;
        let text = std::fs::read_to_string(&got)?;
        let mut seqs = std::collections::BTreeMap::<u64, u32>::new();
        for line in text.lines() {
            let Some(hex) = line.strip_prefix("U ") else {
                continue;
            };
            let bytes: Vec<u8> = (0..hex.len() / 2)
                .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(0))
                .collect();
            let s = String::from_utf8_lossy(&bytes).into_owned();
            ensure!(!s.contains("INJECTED"), "an injected datagram arrived: {s}");
            let seq = s
                .strip_prefix("SEQ-")
                .and_then(|x| x.parse::<u64>().ok())
                .with_context(|| format!("a datagram the sender never sent arrived: {s:?}"))?;
            *seqs.entry(seq).or_default() += 1;
        }
        let dups: Vec<_> = seqs.iter().filter(|(_, c)| **c > 1).collect();
        ensure!(dups.is_empty(), "replayed datagrams arrived: {dups:?}");
        ensure!(
            seqs.len() >= 570,
            "real traffic suffered: only {} of 600 datagrams arrived",
            seqs.len()
        );

        // The connection is still up and the data path still works.
        c1.wait_ping(c2.ip(), Duration::from_secs(10))?;
        ensure!(weft_tests::mesh::established_with(&h1, &h2)?);
        Ok(())
    });
}

/// A–B–C with the underlay between A and C blocked, all with the password: B opens each
/// datagram and seals it again for the next hop, so bulk data arrives intact and nothing fails
/// authentication on the way.
#[test]
fn relays_open_and_reseal_per_hop() {
    run_test("encr", |net| {
        let a = net.host(1)?;
        let b = net.host(2)?;
        let c = net.host(3)?;
        weft_tests::mesh::block_underlay(&a, &c)?;
        let pw = ["--password", PASSWORD];
        launch_with(&a, &pw, &[])?;
        launch_with(&b, &pw, &[&a])?;
        launch_with(&c, &pw, &[&b])?;
        wait_established_with(&a, &b, Duration::from_secs(20))?;
        wait_established_with(&c, &b, Duration::from_secs(20))?;
        let ca = a.container("ca", "10.32.0.1/12")?;
        let cc = c.container("cc", "10.32.0.3/12")?;
        ca.wait_ping(cc.ip(), Duration::from_secs(30))?;
        let relayed0 = b.settled_counter("relayed_datagrams")?;
        let took = weft_tests::mesh::transfer_intact(net, &ca, &cc, 20)?;
        eprintln!("20 MiB A -> C through B, encrypted per hop, in {took:.1?}");
        let relayed = b.settled_counter("relayed_datagrams")? - relayed0;
        ensure!(relayed > 10_000, "B relayed only {relayed} datagrams");
        for h in [&a, &b, &c] {
            let auth = h.counter("udp_rx_dropped_auth")?;
            let replay = h.counter("udp_rx_dropped_replay")?;
            ensure!(
                auth == 0,
                "host {} dropped {auth} datagrams as unauthentic",
                h.n()
            );
            eprintln!("host {}: replay drops {replay}", h.n());
        }
        Ok(())
    });
}
