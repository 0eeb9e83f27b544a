//! netbench (measurement driver, needs root): container-to-container throughput and latency
//! through weft, the kernel's own VXLAN and bare veth routing, in the same run, on the same
//! namespace topology (two hosts on an underlay bridge, one container each).
//!
//! Each round builds a fresh topology per target (the order rotates every round), waits for a
//! first ping, then measures iperf3 TCP with 1 and 4 streams, a 20 x 0.2 s ping, pings every
//! 50 ms while one TCP stream runs (latency under load: median and p90), and 64-byte UDP
//! offered at a fixed packet rate (the share lost), each while holding
//! `flock /tmp/netbench.lock` (the lock every benchmark on this machine takes). The table shows
//! medians over rounds with the min–max spread and weft's ratio to the others; `--out` gets
//! every record as JSON.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use serde::Serialize;
use serde_json::{Value, json};
use weft_benches::{BenchLock, busy_pct, cpu_seconds, locate_weft, machine_ticks};
use weft_tests::cmd::{self, Cmd, ip, ns_exec, ns_sh, wait_until};
use weft_tests::net::UNDERLAY_DEV;
use weft_tests::{Container, Host, TestNet, median};

/// Overlay-network benchmark: weft vs kernel VXLAN vs bare veth.
#[derive(Debug, Parser)]
#[command(name = "netbench")]
struct Args {
    /// iperf3 duration per measured run (seconds).
    #[arg(short = 't', long, default_value_t = 8)]
    duration: u32,
    /// Interleaved rounds; the table reports medians over them.
    #[arg(short, long, default_value_t = 3)]
    rounds: u32,
    /// Pings (0.2 s apart) for the RTT median.
    #[arg(long, default_value_t = 20)]
    pings: u32,
    /// Comma-separated targets out of weft, weft-1t, weft-rt, weft-noexp, weft-fastdp, weft-enc,
    /// weft-enc-1t, weft-enc-noexp, kvxlan, kvxlan-fw, veth (all but weft-1t, weft-rt,
    /// weft-noexp, weft-enc-1t and weft-enc-noexp by default).
    #[arg(
        long,
        default_value = "weft,weft-fastdp,weft-enc,kvxlan,kvxlan-fw,veth"
    )]
    targets: String,
    /// JSON output file (default `bench-results/netbench-<unix time>.json`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Shared lock taken around every measured run.
    #[arg(long, default_value = "/tmp/netbench.lock")]
    lock: PathBuf,
    /// weft binary (default: $WEFT_BIN, else target/release/weft, else target/debug/weft).
    #[arg(long)]
    weft_bin: Option<PathBuf>,
    /// Seconds of unmeasured TCP before the measured runs (0 = none).
    #[arg(long, default_value_t = 2)]
    warmup: u32,
    /// Interval of the pings sent during a TCP stream (seconds; 0 = skip that test).
    #[arg(long, default_value_t = 0.05)]
    loaded_ping_interval: f64,
    /// Packets per second of the small-packet UDP test (0 = skip it).
    #[arg(long, default_value_t = 200_000)]
    udp_pps: u64,
    /// UDP payload length of the small-packet test (bytes).
    #[arg(long, default_value_t = 64)]
    udp_len: u32,
    /// Receive buffer the small-packet test's server asks for (`iperf3 -w`, bytes; 0 = the
    /// system's default, 208 KiB here: 256 datagrams, 1.3 ms at 200 kpps).
    #[arg(long, default_value_t = 0)]
    udp_rcvbuf: u32,
    /// Overlay MTU for the weft targets (`--mtu`; default weft's 1376). 1450 gives them
    /// kvxlan's, so a comparison measures the data path, not the frame size.
    #[arg(long)]
    weft_mtu: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// weft's userspace path (launched with --no-fastdp).
    Weft,
    /// The userspace path on one data-plane thread (`--datapath-threads 1`).
    Weft1t,
    /// The userspace path with its data-plane threads on SCHED_FIFO (`--datapath-priority 10`).
    WeftRt,
    /// The userspace path without the express lane (`--no-express`).
    WeftNoexp,
    /// weft's kernel fast path (a VXLAN device per peer, the default).
    WeftFastdp,
    /// weft with a password: every datagram sealed.
    WeftEnc,
    /// weft with a password on one data-plane thread.
    WeftEnc1t,
    /// weft with a password, without the express lane.
    WeftEncNoexp,
    Kvxlan,
    /// kvxlan on hosts with the firewall a weft host has: the FORWARD rules weft adds for its
    /// bridge (Weave's, with a conntrack match), here for `kbr`.
    KvxlanFw,
    Veth,
}

impl Target {
    fn parse(s: &str) -> Result<Self> {
        match s.trim() {
            "weft" => Ok(Self::Weft),
            "weft-1t" => Ok(Self::Weft1t),
            "weft-rt" => Ok(Self::WeftRt),
            "weft-noexp" => Ok(Self::WeftNoexp),
            "weft-fastdp" => Ok(Self::WeftFastdp),
            "weft-enc" => Ok(Self::WeftEnc),
            "weft-enc-1t" => Ok(Self::WeftEnc1t),
            "weft-enc-noexp" => Ok(Self::WeftEncNoexp),
            "kvxlan" => Ok(Self::Kvxlan),
            "kvxlan-fw" => Ok(Self::KvxlanFw),
            "veth" => Ok(Self::Veth),
            other => {
                bail!(
                    "unknown target {other:?} (known: weft, weft-1t, weft-rt, weft-noexp, weft-fastdp, \
                     weft-enc, weft-enc-1t, weft-enc-noexp, kvxlan, kvxlan-fw, veth)"
                )
            }
        }
    }

    /// A target that runs weft routers.
    fn is_weft(self) -> bool {
        matches!(
            self,
            Self::Weft
                | Self::Weft1t
                | Self::WeftRt
                | Self::WeftNoexp
                | Self::WeftFastdp
                | Self::WeftEnc
                | Self::WeftEnc1t
                | Self::WeftEncNoexp
        )
    }

    fn name(self) -> &'static str {
        match self {
            Self::Weft => "weft",
            Self::Weft1t => "weft-1t",
            Self::WeftRt => "weft-rt",
            Self::WeftNoexp => "weft-noexp",
            Self::WeftFastdp => "weft-fastdp",
            Self::WeftEnc => "weft-enc",
            Self::WeftEnc1t => "weft-enc-1t",
            Self::WeftEncNoexp => "weft-enc-noexp",
            Self::Kvxlan => "kvxlan",
            Self::KvxlanFw => "kvxlan-fw",
            Self::Veth => "veth",
        }
    }

    fn desc(self) -> &'static str {
        match self {
            Self::Weft => "weft router, userspace path (--no-fastdp; VXLAN over UDP 6783), bridged",
            Self::Weft1t => "weft's userspace path on one data-plane thread (--datapath-threads 1)",
            Self::WeftRt => "weft's userspace path, data-plane threads SCHED_FIFO 10",
            Self::WeftNoexp => "weft's userspace path without the express lane (--no-express)",
            Self::WeftFastdp => "weft router, kernel fast path (VXLAN device per peer, UDP 6784)",
            Self::WeftEnc => "weft router with --password (every datagram sealed, AEAD per hop)",
            Self::WeftEnc1t => "weft with --password on one data-plane thread",
            Self::WeftEncNoexp => "weft with --password, without the express lane",
            Self::Kvxlan => "kernel VXLAN VNI 42, UDP 4789, bridged, static FDB",
            Self::KvxlanFw => {
                "kvxlan with weft's FORWARD rules for the bridge (conntrack on, as on a weft host)"
            }
            Self::Veth => "bare underlay, routed, no encapsulation (physical limit)",
        }
    }
}

/// One measured result.
#[derive(Debug, Clone, Serialize)]
struct Record {
    target: &'static str,
    round: u32,
    test: &'static str,
    mtu: Option<u32>,
    gbps: Option<f64>,
    bytes: Option<u64>,
    retransmits: Option<u64>,
    rtts_ms: Option<Vec<f64>>,
    rtt_ms_median: Option<f64>,
    rtt_ms_p90: Option<f64>,
    /// Small-packet UDP: packets per second offered (as sent) and the share lost (percent).
    udp_pps_sent: Option<f64>,
    udp_loss_pct: Option<f64>,
    /// Of those sent, the share the receiving socket dropped because it was full (percent; the
    /// server namespace's `UdpRcvbufErrors`): lost past the overlay, in the application.
    udp_rcvbuf_pct: Option<f64>,
    tunnel_cpu_s: Option<f64>,
    /// Share of the whole machine busy during the run (percent, `/proc/stat`): near 100, the
    /// figure is what the cores allow.
    busy_pct: Option<f64>,
    cpu_s_per_gb: Option<f64>,
    wall_s: f64,
    reason: Option<String>,
}

impl Record {
    fn new(target: Target, round: u32, test: &'static str) -> Self {
        Self {
            target: target.name(),
            round,
            test,
            mtu: None,
            gbps: None,
            bytes: None,
            retransmits: None,
            rtts_ms: None,
            rtt_ms_median: None,
            rtt_ms_p90: None,
            udp_pps_sent: None,
            udp_loss_pct: None,
            udp_rcvbuf_pct: None,
            tunnel_cpu_s: None,
            busy_pct: None,
            cpu_s_per_gb: None,
            wall_s: 0.0,
            reason: None,
        }
    }
}

/// A built topology for one target: client container, server address, tunnel processes.
struct Setup {
    net: TestNet,
    client: Container,
    server: Container,
    mtu: u32,
    tunnel_pids: Vec<u32>,
}

const IPERF_PORT: &str = "5201";

fn main() {
    weft_tests::clean_up_on_signal();
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("netbench: {e:?}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<()> {
    let targets: Vec<Target> = args
        .targets
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(Target::parse)
        .collect::<Result<_>>()?;
    if targets.is_empty() {
        bail!("no targets");
    }
    for tool in ["ip", "bridge", "iperf3", "ping", "flock"] {
        Cmd::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .run_ok()
            .with_context(|| format!("missing tool {tool} (run .ci/install)"))?;
    }
    let weft_bin = if targets.iter().any(|t| t.is_weft()) {
        Some(locate_weft(args.weft_bin.as_deref(), "netbench")?)
    } else {
        None
    };
    if let Some(b) = &weft_bin {
        eprintln!("netbench: weft binary {}", b.display());
    }
    let clk_tck: f64 = Cmd::new("getconf")
        .arg("CLK_TCK")
        .run_ok()
        .ok()
        .and_then(|o| o.stdout.trim().parse().ok())
        .unwrap_or(100.0);
    let out = args.out.clone().unwrap_or_else(|| {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        PathBuf::from(format!("bench-results/netbench-{t}.json"))
    });

    let mut records = Vec::new();
    for round in 1..=args.rounds {
        let n = targets.len();
        for k in 0..n {
            let target = targets[(k + round as usize - 1) % n];
            eprintln!("netbench: round {round}/{}: {}", args.rounds, target.name());
            match measure_target(args, target, round, weft_bin.as_deref(), clk_tck) {
                Ok(mut rs) => {
                    for r in &rs {
                        log_record(r);
                    }
                    records.append(&mut rs);
                }
                Err(e) => {
                    eprintln!("netbench: {} round {round} failed: {e:#}", target.name());
                    let mut r = Record::new(target, round, "error");
                    r.reason = Some(format!("{e:#}"));
                    records.push(r);
                }
            }
        }
    }

    let table = render_table(&targets, &records, args);
    println!("{table}");
    let doc = json!({
        "suite": {
            "duration_s": args.duration,
            "rounds": args.rounds,
            "pings": args.pings,
            "targets": targets.iter().map(|t| json!({"name": t.name(), "desc": t.desc()})).collect::<Vec<_>>(),
            "weft_bin": weft_bin.as_ref().map(|p| p.display().to_string()),
            "kernel": Cmd::new("uname").arg("-r").run().map(|o| o.stdout.trim().to_owned()).unwrap_or_default(),
            "iperf3": Cmd::new("iperf3").arg("--version").run().map(|o| o.stdout.lines().next().unwrap_or("").to_owned()).unwrap_or_default(),
            "nproc": std::thread::available_parallelism().map_or(0, |n| n.get()),
        },
        "summary": summary_json(&targets, &records),
        "records": records,
        "table_markdown": table,
    });
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(&out, serde_json::to_string_pretty(&doc)?)
        .with_context(|| format!("writing {}", out.display()))?;
    eprintln!("netbench: wrote {}", out.display());
    if records.iter().any(|r| r.test == "error") {
        bail!("some runs failed (see the records with test = \"error\")");
    }
    Ok(())
}

fn measure_target(
    args: &Args,
    target: Target,
    round: u32,
    weft_bin: Option<&Path>,
    clk_tck: f64,
) -> Result<Vec<Record>> {
    let setup = build(target, weft_bin.map(Path::to_path_buf), args.weft_mtu)?;
    let res = measure(args, target, round, &setup, clk_tck);
    if res.is_err() && target.is_weft() {
        eprintln!("{}", setup.net.logs_report(30));
    }
    drop(setup);
    res
}

fn build(target: Target, weft_bin: Option<PathBuf>, weft_mtu: Option<u32>) -> Result<Setup> {
    let mtu_arg = weft_mtu.map(|m| m.to_string());
    let mut mtu_opts: Vec<&str> = Vec::new();
    if let Some(m) = &mtu_arg {
        mtu_opts.extend(["--mtu", m.as_str()]);
    }
    let net = TestNet::with_weft_bin(&format!("nb{}", &target.name()[..2]), weft_bin)?;
    let (client, server, mtu, tunnel_pids) = match target {
        Target::Weft | Target::Weft1t | Target::WeftRt | Target::WeftNoexp | Target::WeftFastdp => {
            let h1 = net.host(1)?;
            let h2 = net.host(2)?;
            let mut opts = mtu_opts.clone();
            let sleeve = target != Target::WeftFastdp;
            if sleeve {
                opts.push("--no-fastdp");
            }
            if target == Target::WeftRt {
                opts.extend(["--datapath-priority", "10"]);
            }
            if target == Target::Weft1t {
                opts.extend(["--datapath-threads", "1"]);
            }
            if target == Target::WeftNoexp {
                opts.push("--no-express");
            }
            weft_tests::mesh::launch_with(&h1, &opts, &[])?;
            weft_tests::mesh::launch_with(&h2, &opts, &[&h1])?;
            weft_tests::wait_established(&[&h1, &h2], Duration::from_secs(30))?;
            let want = if sleeve { "sleeve" } else { "fastdp" };
            for h in [&h1, &h2] {
                wait_until(
                    &format!("host {}'s connection on {want}", h.n()),
                    Duration::from_secs(15),
                    Duration::from_millis(100),
                    || {
                        let text = h.weft_ok(&["status", "connections"])?;
                        anyhow::ensure!(text.contains(&format!(" {want} ")), "{text}");
                        Ok(())
                    },
                )?;
            }
            let c1 = h1.container("c1", "10.32.0.1/12")?;
            let c2 = h2.container("c2", "10.32.0.2/12")?;
            let mtu = c1.mtu()?;
            let pids = vec![h1.router_pid()?, h2.router_pid()?];
            (c1, c2, mtu, pids)
        }
        Target::WeftEnc | Target::WeftEnc1t | Target::WeftEncNoexp => {
            let h1 = net.host(1)?;
            let h2 = net.host(2)?;
            let mut pw = vec!["--password", "netbench password"];
            if target == Target::WeftEnc1t {
                pw.extend(["--datapath-threads", "1"]);
            }
            if target == Target::WeftEncNoexp {
                pw.push("--no-express");
            }
            pw.extend_from_slice(&mtu_opts);
            weft_tests::mesh::launch_with(&h1, &pw, &[])?;
            weft_tests::mesh::launch_with(&h2, &pw, &[&h1])?;
            weft_tests::wait_established(&[&h1, &h2], Duration::from_secs(30))?;
            let c1 = h1.container("c1", "10.32.0.1/12")?;
            let c2 = h2.container("c2", "10.32.0.2/12")?;
            let mtu = c1.mtu()?;
            let pids = vec![h1.router_pid()?, h2.router_pid()?];
            (c1, c2, mtu, pids)
        }
        Target::Kvxlan | Target::KvxlanFw => {
            let h1 = net.host(1)?;
            let h2 = net.host(2)?;
            let c1 = kvxlan_side(&net, &h1, &h2, 1)?;
            let c2 = kvxlan_side(&net, &h2, &h1, 2)?;
            if target == Target::KvxlanFw {
                for h in [&h1, &h2] {
                    for rule in weft_sys::firewall::forward_rules("kbr") {
                        Cmd::new("ip")
                            .args(["netns", "exec", h.ns(), weft_sys::firewall::IPTABLES])
                            .args(rule.args(weft_sys::firewall::Op::Add))
                            .timeout(Duration::from_secs(10))
                            .run_ok()?;
                    }
                }
            }
            (c1, c2, 1450, vec![])
        }
        Target::Veth => {
            let h1 = net.host(1)?;
            let h2 = net.host(2)?;
            let c1 = routed_side(&net, &h1, &h2, 1)?;
            let c2 = routed_side(&net, &h2, &h1, 2)?;
            (c1, c2, 1500, vec![])
        }
    };
    client.wait_ping(server.ip(), Duration::from_secs(30))?;
    Ok(Setup {
        net,
        client,
        server,
        mtu,
        tunnel_pids,
    })
}

fn kvxlan_mac(i: u8) -> String {
    format!("02:50:42:00:0{i}:02")
}

/// One side of the kernel-VXLAN target, as in the shared bench's kvxlan.sh: bridge `kbr` in
/// the host holding the container veth and vxlan `kvx` (VNI 42, UDP 4789, no learning), with
/// the all-zeros FDB entry to the peer VTEP and the peer container's MAC pinned.
fn kvxlan_side(net: &TestNet, h: &Host, peer: &Host, i: u8) -> Result<Container> {
    let ns = net.netns(&format!("c{i}"))?;
    let hn = h.ns();
    let mtu = "1450";
    ip([
        "-n",
        hn,
        "link",
        "add",
        "kbr",
        "type",
        "bridge",
        "stp_state",
        "0",
        "forward_delay",
        "0",
    ])?;
    ip(["-n", hn, "link", "set", "kbr", "mtu", mtu, "up"])?;
    ip([
        "-n", hn, "link", "add", "kvc", "type", "veth", "peer", "name", "eth0", "netns", &ns,
    ])?;
    ip([
        "-n",
        &ns,
        "link",
        "set",
        "eth0",
        "address",
        &kvxlan_mac(i),
        "mtu",
        mtu,
        "up",
    ])?;
    let cidr = format!("10.32.0.{i}/12");
    ip(["-n", &ns, "addr", "add", &cidr, "dev", "eth0"])?;
    ip([
        "-n", hn, "link", "set", "kvc", "mtu", mtu, "master", "kbr", "up",
    ])?;
    let local = h.addr().to_string();
    let remote = peer.addr().to_string();
    ip([
        "-n",
        hn,
        "link",
        "add",
        "kvx",
        "type",
        "vxlan",
        "id",
        "42",
        "local",
        &local,
        "dstport",
        "4789",
        "dev",
        UNDERLAY_DEV,
        "nolearning",
    ])?;
    ip([
        "-n", hn, "link", "set", "kvx", "mtu", mtu, "master", "kbr", "up",
    ])?;
    let peer_mac = kvxlan_mac(if i == 1 { 2 } else { 1 });
    let bridge = |a: &[&str]| -> Result<()> {
        Cmd::new("bridge")
            .args(["-n", hn])
            .args(a)
            .timeout(Duration::from_secs(10))
            .run_ok()?;
        Ok(())
    };
    bridge(&[
        "fdb",
        "append",
        "00:00:00:00:00:00",
        "dev",
        "kvx",
        "dst",
        &remote,
        "self",
        "permanent",
    ])?;
    bridge(&[
        "fdb",
        "add",
        &peer_mac,
        "dev",
        "kvx",
        "dst",
        &remote,
        "self",
        "permanent",
    ])?;
    bridge(&["fdb", "add", &peer_mac, "dev", "kvx", "master", "static"])?;
    Container::from_ns(&format!("c{i}"), &ns, &cidr)
}

/// One side of the bare-veth target: container `10.32.<i>.2/24` behind gateway `10.32.<i>.1`
/// on the host, plain IPv4 forwarding across the underlay, no encapsulation.
fn routed_side(net: &TestNet, h: &Host, peer: &Host, i: u8) -> Result<Container> {
    let ns = net.netns(&format!("c{i}"))?;
    let hn = h.ns();
    ip([
        "-n", hn, "link", "add", "kvc", "type", "veth", "peer", "name", "eth0", "netns", &ns,
    ])?;
    let cidr = format!("10.32.{i}.2/24");
    ip(["-n", &ns, "link", "set", "eth0", "mtu", "1500", "up"])?;
    ip(["-n", &ns, "addr", "add", &cidr, "dev", "eth0"])?;
    ip([
        "-n",
        &ns,
        "route",
        "add",
        "10.32.0.0/12",
        "via",
        &format!("10.32.{i}.1"),
    ])?;
    ip([
        "-n",
        hn,
        "addr",
        "add",
        &format!("10.32.{i}.1/24"),
        "dev",
        "kvc",
    ])?;
    ip(["-n", hn, "link", "set", "kvc", "mtu", "1500", "up"])?;
    let j = if i == 1 { 2 } else { 1 };
    ip([
        "-n",
        hn,
        "route",
        "add",
        &format!("10.32.{j}.0/24"),
        "via",
        &peer.addr().to_string(),
        "dev",
        UNDERLAY_DEV,
    ])?;
    ns_exec(
        hn,
        ["sysctl", "-qw", "net.ipv4.ip_forward=1"],
        Duration::from_secs(5),
    )?
    .ok()?;
    Container::from_ns(&format!("c{i}"), &ns, &cidr)
}

fn measure(
    args: &Args,
    target: Target,
    round: u32,
    s: &Setup,
    clk_tck: f64,
) -> Result<Vec<Record>> {
    let dir = s.net.dir();
    let server_ip = s.server.ip().to_string();
    let mut server = Cmd::new("ip")
        .args([
            "netns",
            "exec",
            s.server.ns(),
            "iperf3",
            "-s",
            "-B",
            &server_ip,
            "-p",
            IPERF_PORT,
        ])
        .spawn_to(
            &dir.join("iperf3-server.out"),
            &dir.join("iperf3-server.err"),
        )?;
    let res = (|| {
        wait_until(
            "iperf3 server to listen",
            Duration::from_secs(10),
            Duration::from_millis(50),
            || {
                let o = ns_sh(
                    s.server.ns(),
                    &format!("ss -ltnH 'sport = :{IPERF_PORT}'"),
                    Duration::from_secs(5),
                )?;
                if o.trim().is_empty() {
                    bail!("not yet")
                }
                Ok(())
            },
        )?;
        let mut out = Vec::new();
        if args.warmup > 0 {
            let _lock = BenchLock::take(&args.lock, "netbench")?;
            iperf(s, args.warmup, 1)?;
        }
        for (test, streams) in [("tcp1", 1), ("tcp4", 4)] {
            let _lock = BenchLock::take(&args.lock, "netbench")?;
            let cpu0 = cpu_seconds(&s.tunnel_pids, clk_tck);
            let machine0 = machine_ticks();
            let t0 = Instant::now();
            let v = iperf(s, args.duration, streams)?;
            let wall = t0.elapsed().as_secs_f64();
            let cpu1 = cpu_seconds(&s.tunnel_pids, clk_tck);
            let machine1 = machine_ticks();
            let mut r = Record::new(target, round, test);
            r.mtu = Some(s.mtu);
            r.wall_s = wall;
            let bytes = v["end"]["sum_received"]["bytes"].as_u64();
            r.bytes = bytes;
            r.gbps = v["end"]["sum_received"]["bits_per_second"]
                .as_f64()
                .map(|b| b / 1e9);
            r.retransmits = v["end"]["sum_sent"]["retransmits"].as_u64();
            r.busy_pct = machine0.zip(machine1).and_then(|(a, b)| busy_pct(a, b));
            if let (Some(a), Some(b)) = (cpu0, cpu1) {
                r.tunnel_cpu_s = Some(b - a);
                r.cpu_s_per_gb = bytes
                    .filter(|&b| b > 0)
                    .map(|by| (b - a) / (by as f64 / 1e9));
            }
            out.push(r);
            std::thread::sleep(Duration::from_secs(1));
        }
        let lock = BenchLock::take(&args.lock, "netbench")?;
        let t0 = Instant::now();
        let p = s.client.ping(s.server.ip(), args.pings, 0.2)?;
        let mut r = Record::new(target, round, "ping");
        r.mtu = Some(s.mtu);
        r.wall_s = t0.elapsed().as_secs_f64();
        r.rtt_ms_median = median(&p.rtts_ms);
        if r.rtt_ms_median.is_none() {
            bail!("ping: no replies ({}/{} )", p.received, p.transmitted);
        }
        r.rtts_ms = Some(p.rtts_ms);
        out.push(r);
        drop(lock);
        if args.loaded_ping_interval > 0.0 {
            let _lock = BenchLock::take(&args.lock, "netbench")?;
            out.push(loaded_ping(args, target, round, s)?);
            std::thread::sleep(Duration::from_secs(1));
        }
        if args.udp_pps > 0 {
            let _lock = BenchLock::take(&args.lock, "netbench")?;
            out.push(small_udp(args, target, round, s)?);
        }
        for pid in &s.tunnel_pids {
            if !cmd::pid_alive(*pid) {
                bail!("tunnel process {pid} died during the measurements");
            }
        }
        Ok(out)
    })();
    let _ = server.kill();
    let _ = server.wait();
    res
}

/// Pings every `--loaded-ping-interval` while one TCP stream runs (from its second second to
/// one second before its end): what interactive traffic feels behind bulk data.
fn loaded_ping(args: &Args, target: Target, round: u32, s: &Setup) -> Result<Record> {
    let secs = args.duration.max(4);
    let count = ((f64::from(secs) - 2.0) / args.loaded_ping_interval).max(1.0) as u32;
    let t0 = Instant::now();
    let (stream, pings) = std::thread::scope(|scope| {
        let stream = scope.spawn(|| iperf(s, secs, 1));
        std::thread::sleep(Duration::from_secs(1));
        let pings = s
            .client
            .ping(s.server.ip(), count, args.loaded_ping_interval);
        (stream.join(), pings)
    });
    let stream = stream.map_err(|_| anyhow!("the iperf3 thread panicked"))??;
    let p = pings?;
    let mut r = Record::new(target, round, "ping_loaded");
    r.mtu = Some(s.mtu);
    r.wall_s = t0.elapsed().as_secs_f64();
    r.gbps = stream["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9);
    r.rtt_ms_median = median(&p.rtts_ms);
    r.rtt_ms_p90 = percentile(&p.rtts_ms, 0.9);
    if r.rtt_ms_median.is_none() {
        bail!(
            "ping under load: no replies ({}/{})",
            p.received,
            p.transmitted
        );
    }
    // Pings lost behind the stream count as the slowest answers.
    r.reason = (p.received < p.transmitted).then(|| {
        format!(
            "{} of {} pings lost",
            p.transmitted - p.received,
            p.transmitted
        )
    });
    r.rtts_ms = Some(p.rtts_ms);
    Ok(r)
}

/// `q`-quantile (nearest rank) of `xs`.
fn percentile(xs: &[f64], q: f64) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

/// `--udp-len`-byte UDP datagrams offered at `--udp-pps` for `--duration` seconds: the share
/// the server did not receive.
fn small_udp(args: &Args, target: Target, round: u32, s: &Setup) -> Result<Record> {
    let bits = args.udp_pps * u64::from(args.udp_len) * 8;
    let t0 = Instant::now();
    // Datagrams the server's socket dropped because its buffer was full.
    let rcvbuf_errors = |ns: &str| -> Result<u64> {
        cmd::nstat(ns)?
            .get("UdpRcvbufErrors")
            .copied()
            .ok_or_else(|| anyhow!("no UdpRcvbufErrors in {ns}'s nstat"))
    };
    let full0 = rcvbuf_errors(s.server.ns())?;
    let window: Vec<String> = if args.udp_rcvbuf > 0 {
        vec!["-w".into(), args.udp_rcvbuf.to_string()]
    } else {
        Vec::new()
    };
    let o = Cmd::new("ip")
        .args(["netns", "exec", s.client.ns(), "iperf3", "-c"])
        .arg(s.server.ip().to_string())
        .args(["-p", IPERF_PORT, "--connect-timeout", "5000", "-J", "-u"])
        .args(["-l", &args.udp_len.to_string(), "-b", &bits.to_string()])
        .args(["-t", &args.duration.to_string()])
        .args(window)
        .timeout(Duration::from_secs(u64::from(args.duration) + 30))
        .run()?;
    let full = rcvbuf_errors(s.server.ns())?.saturating_sub(full0);
    let v: Value =
        serde_json::from_str(&o.stdout).map_err(|e| anyhow!("iperf3 -J output: {e}; {o}"))?;
    let sum = &v["end"]["sum"];
    let (Some(packets), Some(lost), Some(secs)) = (
        sum["packets"].as_u64(),
        sum["lost_packets"].as_u64(),
        sum["seconds"].as_f64(),
    ) else {
        bail!("iperf3 -u failed: {} ({o})", v["error"]);
    };
    let mut r = Record::new(target, round, "udp_small");
    r.mtu = Some(s.mtu);
    r.wall_s = t0.elapsed().as_secs_f64();
    r.udp_pps_sent = (secs > 0.0).then(|| packets as f64 / secs);
    r.udp_loss_pct = (packets > 0).then(|| lost as f64 * 100.0 / packets as f64);
    r.udp_rcvbuf_pct = (packets > 0).then(|| full as f64 * 100.0 / packets as f64);
    Ok(r)
}

fn iperf(s: &Setup, secs: u32, streams: u32) -> Result<Value> {
    let o = Cmd::new("ip")
        .args(["netns", "exec", s.client.ns(), "iperf3", "-c"])
        .arg(s.server.ip().to_string())
        .args(["-p", IPERF_PORT, "--connect-timeout", "5000", "-J", "-t"])
        .arg(secs.to_string())
        .arg("-P")
        .arg(streams.to_string())
        .timeout(Duration::from_secs(u64::from(secs) + 30))
        .run()?;
    let v: Value =
        serde_json::from_str(&o.stdout).map_err(|e| anyhow!("iperf3 -J output: {e}; {o}"))?;
    if v["end"]["sum_received"]["bytes"].as_u64().is_none() {
        bail!("iperf3 failed: {} ({o})", v["error"]);
    }
    Ok(v)
}

/// Summed utime+stime of the given processes (all threads), in seconds.
fn log_record(r: &Record) {
    match r.test {
        "ping" => eprintln!(
            "netbench:   {} ping median {:.3} ms",
            r.target,
            r.rtt_ms_median.unwrap_or(f64::NAN)
        ),
        "ping_loaded" => eprintln!(
            "netbench:   {} ping during a TCP stream ({:.3} Gbit/s): median {:.3} ms, p90 {:.3} ms{}",
            r.target,
            r.gbps.unwrap_or(f64::NAN),
            r.rtt_ms_median.unwrap_or(f64::NAN),
            r.rtt_ms_p90.unwrap_or(f64::NAN),
            r.reason
                .as_deref()
                .map(|l| format!(" ({l})"))
                .unwrap_or_default()
        ),
        "udp_small" => eprintln!(
            "netbench:   {} UDP small packets: {:.0} pps sent, {:.2} % lost ({:.2} % at the \
             receiving socket)",
            r.target,
            r.udp_pps_sent.unwrap_or(f64::NAN),
            r.udp_loss_pct.unwrap_or(f64::NAN),
            r.udp_rcvbuf_pct.unwrap_or(f64::NAN)
        ),
        _ => eprintln!(
            "netbench:   {} {} {:.3} Gbit/s{}{}",
            r.target,
            r.test,
            r.gbps.unwrap_or(f64::NAN),
            r.cpu_s_per_gb
                .map(|c| format!(", tunnel CPU {c:.1} s/GB"))
                .unwrap_or_default(),
            r.busy_pct
                .map(|b| format!(", machine {b:.0} % busy"))
                .unwrap_or_default()
        ),
    }
}

/// A table of `target`'s medians divided by each of `others`' (empty if there are none).
fn ratio_table(records: &[Record], target: Target, others: &[Target]) -> String {
    if others.is_empty() {
        return String::new();
    }
    let mut s = format!(
        "\n| {} ÷ | TCP 1 stream | TCP 4 streams | ping RTT | ping under load p90 |\n\
         |---|--:|--:|--:|--:|\n",
        target.name()
    );
    for &o in others {
        let ratio = |test: &str| match (
            median(&values(records, target, test)),
            median(&values(records, o, test)),
        ) {
            (Some(w), Some(x)) if x > 0.0 => format!("{:.2}×", w / x),
            _ => "–".to_owned(),
        };
        s += &format!(
            "| {} | {} | {} | {} | {} |\n",
            o.name(),
            ratio("tcp1"),
            ratio("tcp4"),
            ratio("ping"),
            ratio("ping_loaded_p90")
        );
    }
    s
}

fn values(records: &[Record], target: Target, test: &str) -> Vec<f64> {
    records
        .iter()
        .filter(|r| r.target == target.name() && r.test == record_test(test))
        .filter_map(|r| match test {
            "ping" | "ping_loaded" => r.rtt_ms_median,
            "ping_loaded_p90" => r.rtt_ms_p90,
            "udp_loss" => r.udp_loss_pct,
            "udp_rcvbuf" => r.udp_rcvbuf_pct,
            "udp_pps" => r.udp_pps_sent,
            "tcp1_busy" | "tcp4_busy" => r.busy_pct,
            _ => r.gbps,
        })
        .collect()
}

/// The record a table column reads: `ping_loaded_p90` is a figure of the `ping_loaded`
/// records, `udp_loss`, `udp_rcvbuf` and `udp_pps` of the `udp_small` ones, `tcpN_busy` of
/// the `tcpN` ones.
fn record_test(column: &str) -> &str {
    match column {
        "ping_loaded_p90" => "ping_loaded",
        "udp_loss" | "udp_rcvbuf" | "udp_pps" => "udp_small",
        "tcp1_busy" => "tcp1",
        "tcp4_busy" => "tcp4",
        other => other,
    }
}

fn stat(xs: &[f64]) -> Option<(f64, f64, f64)> {
    let m = median(xs)?;
    let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Some((m, lo, hi))
}

fn cell(xs: &[f64], digits: usize) -> String {
    match stat(xs) {
        Some((m, lo, hi)) => format!("{m:.digits$} ({lo:.digits$}–{hi:.digits$})"),
        None => "–".to_owned(),
    }
}

fn cpu_per_gb(records: &[Record], target: Target) -> Option<f64> {
    let (mut cpu, mut gb) = (0.0, 0.0);
    for r in records
        .iter()
        .filter(|r| r.target == target.name() && (r.test == "tcp1" || r.test == "tcp4"))
    {
        cpu += r.tunnel_cpu_s?;
        gb += r.bytes? as f64 / 1e9;
    }
    (gb > 0.0).then(|| cpu / gb)
}

fn summary_json(targets: &[Target], records: &[Record]) -> Value {
    let mut m = serde_json::Map::new();
    for &t in targets {
        let s = |test: &str| {
            stat(&values(records, t, test))
                .map(|(m, lo, hi)| json!({"median": m, "min": lo, "max": hi}))
        };
        m.insert(
            t.name().to_owned(),
            json!({
                "tcp1_gbps": s("tcp1"),
                "tcp4_gbps": s("tcp4"),
                "tcp1_machine_busy_pct": s("tcp1_busy"),
                "tcp4_machine_busy_pct": s("tcp4_busy"),
                "ping_ms": s("ping"),
                "ping_loaded_ms": s("ping_loaded"),
                "ping_loaded_p90_ms": s("ping_loaded_p90"),
                "udp_small_pps_sent": s("udp_pps"),
                "udp_small_loss_pct": s("udp_loss"),
                "udp_small_rcvbuf_full_pct": s("udp_rcvbuf"),
                "tunnel_cpu_s_per_gb": cpu_per_gb(records, t),
                "mtu": records.iter().find(|r| r.target == t.name()).and_then(|r| r.mtu),
            }),
        );
    }
    Value::Object(m)
}

fn render_table(targets: &[Target], records: &[Record], args: &Args) -> String {
    let mut s = format!(
        "netbench: {} round(s), iperf3 -t {}, {} pings; median (min–max) over rounds\n\n\
         | target | MTU | TCP 1 stream Gbit/s | TCP 4 streams Gbit/s | ping RTT ms | tunnel CPU s/GB | machine busy % 1 / 4 streams |\n\
         |---|--:|--:|--:|--:|--:|--:|\n",
        args.rounds, args.duration, args.pings
    );
    for &t in targets {
        let mtu = records
            .iter()
            .find(|r| r.target == t.name())
            .and_then(|r| r.mtu)
            .map_or("–".to_owned(), |m| m.to_string());
        let busy = |column: &str| {
            median(&values(records, t, column)).map_or("–".to_owned(), |b| format!("{b:.0}"))
        };
        s += &format!(
            "| {} | {mtu} | {} | {} | {} | {} | {} / {} |\n",
            t.name(),
            cell(&values(records, t, "tcp1"), 3),
            cell(&values(records, t, "tcp4"), 3),
            cell(&values(records, t, "ping"), 3),
            cpu_per_gb(records, t).map_or("–".to_owned(), |c| format!("{c:.1}")),
            busy("tcp1_busy"),
            busy("tcp4_busy"),
        );
    }
    s += &format!(
        "\n| target | ping during 1 TCP stream: median ms | p90 ms | UDP {} B offered at {} pps{}: sent pps | lost % | of which the receiving socket's % |\n\
         |---|--:|--:|--:|--:|--:|\n",
        args.udp_len,
        args.udp_pps,
        if args.udp_rcvbuf > 0 {
            format!(" (receive buffer {} B)", args.udp_rcvbuf)
        } else {
            String::new()
        }
    );
    for &t in targets {
        s += &format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            t.name(),
            cell(&values(records, t, "ping_loaded"), 3),
            cell(&values(records, t, "ping_loaded_p90"), 3),
            cell(&values(records, t, "udp_pps"), 0),
            cell(&values(records, t, "udp_loss"), 2),
            cell(&values(records, t, "udp_rcvbuf"), 2),
        );
    }
    if targets.contains(&Target::Weft) {
        let others: Vec<Target> = targets
            .iter()
            .copied()
            .filter(|t| *t != Target::Weft)
            .collect();
        s += &ratio_table(records, Target::Weft, &others);
    }
    // Issue 13's goals: the fast path against the kernel's own VXLAN (≥ 0.95× throughput,
    // RTT ≤ 1.1×, p90 under load ≤ 1.5×), bare and on a host with weft's firewall.
    if targets.contains(&Target::WeftFastdp) {
        let baselines: Vec<Target> = [Target::Kvxlan, Target::KvxlanFw]
            .into_iter()
            .filter(|t| targets.contains(t))
            .collect();
        s += &ratio_table(records, Target::WeftFastdp, &baselines);
    }
    let errors: Vec<String> = records
        .iter()
        .filter(|r| r.test == "error")
        .map(|r| {
            format!(
                "- {} round {}: {}",
                r.target,
                r.round,
                r.reason.as_deref().unwrap_or("")
            )
        })
        .collect();
    if !errors.is_empty() {
        s += &format!("\nfailed runs:\n{}\n", errors.join("\n"));
    }
    s
}
