//! Layer: driver. Starting and stopping the router: network setup, tasks, pid file.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use tokio::net::TcpListener;
use weft_ipam::{Ipam, IpamConfig};
use weft_mesh::{ConnMakerConfig, Instant, LocalPeer, PeerSummary, PeerUid};
use weft_node::{Node, NodeConfig};
use weft_overlay::{EngineConfig, MacTable};
use weft_sys::netlink::Netlink;
use weft_sys::tap::{Tap, TapOptions};
use weft_sys::udp::{BatchUdp, Steering};
use weft_wire::control::{PROTOCOL_MAX, PROTOCOL_MIN};

use crate::config::{Config, parse_peer};
use crate::control::Control;
use crate::dataplane::{self, Clock, DpCommand};
use crate::state::{DnsState, IpamState, RouterInfo, Shared};
use crate::{api, identity};

/// Run the router until `shutdown` completes.
///
/// Creates the bridge (if absent) and the TAP on it, binds the control listener, the data socket
/// and the HTTP API, writes the pid file, dials the configured peers, and serves until shutdown.
/// On the way out it stops the data plane and removes the pid file; the bridge stays, so local
/// traffic between containers keeps flowing (as `weave stop` leaves it).
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    run_with(config, shutdown, |_| {}).await
}

/// [`run`], calling `ready` with a [`crate::Handle`] once the router serves (for the parts of
/// the daemon that reach it in-process: the Docker proxy and lifecycle follower).
pub async fn run_with(
    config: Config,
    shutdown: impl Future<Output = ()>,
    ready: impl FnOnce(crate::Handle),
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.run_dir)
        .with_context(|| format!("creating run directory {}", config.run_dir.display()))?;
    let pid_file = config.pid_file();
    if let Some(pid) = running_pid(&pid_file) {
        bail!(
            "weft is already running (pid {pid}, pid file {})",
            pid_file.display()
        );
    }
    let id = identity::load(&config.state_dir, config.name).with_context(|| {
        format!(
            "loading the peer identity from {}",
            config.state_dir.display()
        )
    })?;
    let uid: u64 = rand::random();
    let security = link_security(&config).await?;

    // The bridge and the TAP on it.
    let nl = Netlink::new().context("opening netlink")?;
    let bridge = nl
        .ensure_bridge(&config.bridge, config.mtu, Some(id.name.to_mac()))
        .await
        .with_context(|| format!("creating bridge {}", config.bridge))?;
    // Kernel features (issue 15): probed once; the TAP and the UDP socket below are opened
    // with what may be used.
    let features = crate::features::Features::detect(&config.disabled_features);
    let mut threads = config.datapath_threads();
    // The express lane (crate::dataplane): one more TAP queue and thread for sparse flows,
    // when eBPF may steer the TAP's queues.
    let want_express = config.express && features.allowed(weft_sys::probe::Feature::Ebpf);
    // One TAP queue per data-plane thread; a kernel that refuses a multi-queue TAP gets one
    // thread and no express lane.
    let queues = threads + usize::from(want_express);
    let mut taps = match open_tap_queues(&config.tap, features.tap_options(), queues) {
        Ok(taps) => taps,
        Err(e) if queues > 1 => {
            tracing::warn!(
                "opening TAP {} with {queues} queues failed ({e:#}); running the data plane \
                 on one thread, without the express lane",
                config.tap
            );
            threads = 1;
            open_tap_queues(&config.tap, features.tap_options(), 1)?
        }
        Err(e) => return Err(e),
    };
    let mut express = taps.len() > threads;
    // The steering program's pin map, for the bulk threads (with the express lane).
    let mut pins = None;
    if express {
        match steer_express(&taps, threads) {
            Ok(p) => pins = Some(p),
            Err(e) => {
                tracing::warn!(
                    "express lane off: steering TAP {}'s queues with eBPF failed ({e}); sparse \
                     flows share the queues of bulk traffic",
                    config.tap
                );
                express = false;
                taps.truncate(threads);
            }
        }
    }
    let tap_index = nl
        .link_index(&config.tap)
        .await?
        .with_context(|| format!("TAP {} vanished", config.tap))?;
    nl.set_mtu(tap_index, config.mtu).await?;
    nl.set_master(tap_index, bridge).await?;
    nl.set_up(tap_index).await?;
    // The bridge's MTU follows its smallest port; set it again now the TAP is in.
    nl.set_mtu(bridge, config.mtu).await?;
    // The kernel fast path (crate::fastdp): a killed router's devices go first; with it, the
    // TAP is an isolated port (frames the kernel path delivered never reach userspace).
    let fastdp_on = config.fastdp_port != 0;
    match crate::fastdp::remove_leftovers(&nl).await {
        Ok(0) => {}
        Ok(n) => tracing::info!("removed {n} fast-path devices left by an earlier router"),
        Err(e) => tracing::warn!("removing old fast-path devices: {e:#}"),
    }
    nl.set_isolated(tap_index, fastdp_on)
        .await
        .context("setting the TAP's bridge port isolation")?;
    // Weave's FORWARD rules for the bridge: with bridged traffic handed to iptables (Docker
    // turns `bridge-nf-call-iptables` on) and Docker's FORWARD policy DROP, containers on the
    // bridge would otherwise reach each other by ARP only.
    let bridge_name = config.bridge.clone();
    match tokio::task::spawn_blocking(move || weft_sys::firewall::ensure_forward(&bridge_name))
        .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(
            "adding the FORWARD rules for {}: {e} (containers may not reach each other when \
             bridged traffic passes iptables)",
            config.bridge
        ),
        Err(e) => tracing::warn!("adding the FORWARD rules: {e}"),
    }

    // One socket per data-plane thread, steered by the stream byte of weft's VXLAN header; a
    // kernel without SO_REUSEPORT steering gets one thread.
    let data_addr = SocketAddr::new(config.host, config.data_port);
    let steer = |express: bool| Steering {
        stream_at: weft_wire::vxlan::STREAM_OFFSET as u32,
        express: express.then_some((
            weft_wire::vxlan::WEFT_FLAGS_OFFSET as u32,
            weft_wire::vxlan::EXPRESS,
        )),
    };
    let udp = match BatchUdp::bind_group(data_addr, threads, steer(express)) {
        Ok(udp) => udp,
        Err(e) if threads > 1 || express => {
            tracing::warn!(
                "binding {} UDP sockets to {data_addr} failed ({e}); running the data plane \
                 on one thread, without the express lane",
                threads + usize::from(express)
            );
            threads = 1;
            // The steering program's choice is taken modulo the queues left: one.
            express = false;
            taps.truncate(1);
            BatchUdp::bind_group(data_addr, 1, steer(false))
                .with_context(|| format!("binding UDP {data_addr}"))?
        }
        Err(e) => return Err(e).with_context(|| format!("binding UDP {data_addr}")),
    };
    for u in &udp {
        features.apply_to_udp(u);
    }
    let kernel_features = features.report(taps[0].options(), express);
    crate::features::Features::log(&kernel_features);
    let listener = TcpListener::bind(SocketAddr::new(config.host, config.port))
        .await
        .with_context(|| format!("binding TCP {}:{}", config.host, config.port))?;
    let http = TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("binding the HTTP API on {}", config.http_addr))?;
    let read_only = api::bind_read_only(&config).await?;

    let clock = Clock::start();
    let (dp_tx, dp_rx) = dataplane::Commands::new(threads + usize::from(express));
    let (ev_tx, ev_rx) = tokio::sync::mpsc::unbounded_channel();
    let (node_tx, node_rx) = tokio::sync::mpsc::unbounded_channel();
    // Targets: the ones given, or with --resume the ones kept from the last run.
    let targets_file = config.targets_file();
    let target_strings = if config.resume {
        load_targets(&targets_file)?
    } else {
        config.peers.clone()
    };
    let mut targets = Vec::new();
    for t in &target_strings {
        targets.push(parse_peer(t, config.port).map_err(anyhow::Error::msg)?);
    }
    let summary = PeerSummary {
        name: id.name,
        nickname: config.nickname.clone(),
        uid,
        version: 1,
        short_id: id.short_id,
        connections: Vec::new(),
    };
    let node_config = NodeConfig {
        connmaker: ConnMakerConfig {
            discovery: config.discovery,
            conn_limit: config.conn_limit,
            port: config.port,
            ..ConnMakerConfig::default()
        },
        // Probe each link's path up to a whole overlay frame.
        pmtu_max_frame: u16::try_from(config.mtu + 14).unwrap_or(u16::MAX),
        fastdp: fastdp_on,
        ..NodeConfig::default()
    };
    let mut node = Node::new(summary, node_config, uid, Instant::ZERO);
    node.register_channel(crate::ipam::IPAM_CHANNEL);
    node.register_channel(crate::dns::DNS_CHANNEL);
    node.add_targets(Instant::ZERO, &targets);
    save_targets(&targets_file, &node.connmaker().direct_targets())?;
    let ipam = match config.ipalloc_range {
        Some(universe) => {
            let ipam_config = IpamConfig {
                universe,
                default_subnet: config.ipalloc_default_subnet.unwrap_or(universe),
                init: config.ipalloc_init.clone(),
            };
            let mut ipam = Ipam::new(
                id.name,
                config.nickname.clone(),
                ipam_config,
                uid,
                Instant::ZERO,
            )
            .map_err(|e| anyhow::anyhow!("IPAM: {e}"))?;
            let files = crate::ipam::StateFiles::in_dir(&config.state_dir);
            crate::ipam::open(&mut ipam, &files, config.ipam_recover)?;
            ipam.set_quorum_hint(node.connmaker().direct_targets().len() + 1);
            let mut drv = crate::ipam::IpamDriver::new(ipam, files);
            // Before anything is answered: every address in use on this host is claimed.
            crate::recover::claim_in_use(&mut drv, &config).await;
            drv.commit_now(Instant::ZERO)
                .context("storing the addresses in use on this host")?;
            Some(drv)
        }
        None => None,
    };
    // weaveDNS (issue 11): its own entries come back from dns.json.
    let dns = match &config.dns {
        Some(dns_config) => {
            let state_file = config.state_dir.join("dns.json");
            let service = crate::dns::DnsService::new(
                dns_config.clone(),
                id.name,
                clock,
                &state_file,
                &config.bridge,
            )?;
            Some(crate::dns::DnsDriver {
                service: Arc::new(service),
                channel: weft_mesh::ChannelRouter::new(id.name, uid ^ 0xd05),
                state_file,
            })
        }
        None => None,
    };
    let dns_service = dns.as_ref().map(|d| d.service.clone());
    let commit_wanted = ipam.as_ref().map(|d| d.commit_wanted.clone());
    let ipam_state = IpamState {
        // IPAM off here, but other peers' IPAM messages may need to cross this peer.
        ipam_relay: ipam
            .is_none()
            .then(|| weft_mesh::ChannelRouter::new(id.name, uid)),
        ipam,
        ipam_errors: 0,
    };
    let dns_state = DnsState { dns, dns_errors: 0 };
    let (fastdp, fastdp_rx) = if fastdp_on {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let protocol_max = config.protocol_max.clamp(PROTOCOL_MIN, PROTOCOL_MAX);
    let shared = Arc::new(Shared {
        info: RouterInfo {
            name: id.name.to_string(),
            nickname: config.nickname.clone(),
            short_id: id.short_id.get(),
            uid,
            port: config.port,
            data_port: config.data_port,
            fastdp_port: config.fastdp_port,
            mtu: config.mtu,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            protocol_min: PROTOCOL_MIN,
            protocol_max,
            discovery: config.discovery,
            encryption: security.psk.is_some(),
            trusted_subnets: config
                .trusted_subnets
                .iter()
                .map(ToString::to_string)
                .collect(),
            kernel_features,
            datapath_threads: threads,
            express_lane: express,
        },
        ipam: Mutex::new(ipam_state),
        dns: Mutex::new(dns_state),
        published: Mutex::default(),
        view: Mutex::new(Arc::new(crate::control::empty_view(&node))),
        node: node_tx,
        dataplane: dp_tx.clone(),
        fastdp,
        wake: tokio::sync::Notify::new(),
        targets_file,
        state_dir: config.state_dir.clone(),
        run_dir: config.run_dir.clone(),
        clock,
    });
    if let Some(rx) = fastdp_rx {
        crate::fastdp::spawn(
            Netlink::new().context("opening netlink for the fast path")?,
            crate::fastdp::FastConfig {
                bridge,
                port: config.fastdp_port,
                mtu: config.mtu,
                local: match config.host {
                    std::net::IpAddr::V4(a) if !a.is_unspecified() => Some(a),
                    _ => None,
                },
            },
            ev_tx.clone(),
            rx,
            shared.clone(),
        );
    }
    let publish = {
        let shared = shared.clone();
        move |i: usize, c: &weft_overlay::Counters, t: &crate::traffic::LinkTraffic| {
            shared.published().set_thread(i, c, t);
        }
    };
    let engine_config = EngineConfig {
        local_short_id: id.short_id.get(),
        mac_max_age: MacTable::DEFAULT_MAX_AGE,
        stream: 0,
        share_macs: false,
        express: false,
    };
    let queues = taps
        .into_iter()
        .zip(udp)
        .map(|(tap, udp)| dataplane::Queue { tap, udp })
        .collect();
    let dp = dataplane::spawn(
        queues,
        security.psk.is_some(),
        engine_config,
        clock,
        dp_rx,
        ev_tx,
        publish,
        config.datapath_priority,
        pins.filter(|_| express),
    )
    .context("starting the data plane")?;

    let local = LocalPeer {
        name: id.name,
        nickname: config.nickname.clone(),
        short_id: id.short_id,
        uid: PeerUid(uid),
        data_port: config.data_port,
        fastdp_port: config.fastdp_port,
    };
    let mut control = Control::new(shared.clone(), local, clock, config.conn_limit, security);
    control.conn_config.max_version = protocol_max;
    let control = Arc::new(control);
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(control.clone().listen(listener));
    tasks.spawn(crate::gate::flush_summaries(control.gate.clone(), clock));
    tasks.spawn(control.clone().run(node, node_rx, ev_rx));
    if let Some(wanted) = commit_wanted {
        tasks.spawn(crate::ipam::persister(shared.clone(), wanted));
    }
    tasks.spawn(crate::arpwatch::run(shared.clone(), config.bridge.clone()));
    // Put exposed addresses and their iptables rules back (weave-reference.md §3).
    if let Err(e) = crate::expose::reexpose(&shared).await {
        tracing::warn!("re-exposing addresses: {e:#}");
    }
    let dns_task = match dns_service {
        Some(svc) => Some(crate::dns::server::start(svc).await?),
        None => None,
    };
    let app = api::router(shared.clone());
    tasks.spawn(crate::guard::serve(
        http,
        app,
        crate::guard::ApiLimits::default(),
    ));
    for (listener, metrics_only) in read_only {
        tasks.spawn(api::serve_read_only(shared.clone(), listener, metrics_only));
    }

    identity::write_atomic(&pid_file, format!("{}\n", std::process::id()).as_bytes())
        .with_context(|| format!("writing {}", pid_file.display()))?;
    tracing::info!(
        "weft router {}({}) short id {} listening on tcp/{} udp/{} (sleeve){}, API on http://{}",
        id.name,
        config.nickname,
        id.short_id.get(),
        config.port,
        config.data_port,
        if fastdp_on {
            format!(" udp/{} (fastdp)", config.fastdp_port)
        } else {
            String::new()
        },
        config.http_addr
    );

    let (stopped_tx, stopped_rx) = tokio::sync::watch::channel(false);
    ready(crate::Handle::new(
        shared.clone(),
        config.bridge.clone(),
        stopped_rx,
    ));

    shutdown.await;
    tracing::info!("shutting down");
    let _ = stopped_tx.send(true);
    tasks.abort_all();
    if let Some(t) = dns_task {
        t.abort();
    }
    if let Some(fast) = &shared.fastdp {
        // Its devices go: nothing would program them any more.
        let (tx, rx) = tokio::sync::oneshot::channel();
        if fast.send(crate::fastdp::FastCmd::Shutdown(tx)).is_ok() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), rx).await;
        }
    }
    let _ = dp_tx.send(DpCommand::Shutdown);
    let _ = tokio::task::spawn_blocking(move || {
        for t in dp {
            let _ = t.join();
        }
    })
    .await;
    let _ = std::fs::remove_file(&pid_file);
    Ok(())
}

/// Steer the TAP's queues for the express lane: `taps[..bulk]` are the bulk threads' queues,
/// `taps[bulk]` the express lane's (see [`weft_sys::steer`]).
fn steer_express(taps: &[Tap], bulk: usize) -> std::io::Result<weft_sys::steer::FlowPins> {
    let bulk = u32::try_from(bulk).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    let steering = weft_sys::steer::TapSteering::load(&weft_sys::steer::SteeringParams::new(bulk))?;
    steering.attach(&taps[0])?;
    Ok(steering.pins())
}

/// Open `queues` queues of the TAP (multi-queue when more than one), with `opts` as
/// [`open_tap`] does.
fn open_tap_queues(name: &str, opts: TapOptions, queues: usize) -> anyhow::Result<Vec<Tap>> {
    let opts = TapOptions {
        multi_queue: queues > 1,
        ..opts
    };
    let mut taps = vec![open_tap(name, opts)?];
    for i in 1..queues {
        let q = taps[0]
            .open_queue()
            .with_context(|| format!("opening queue {i} of TAP {name}"))?;
        taps.push(q);
    }
    Ok(taps)
}

/// Open the TAP with `opts` (at best a vnet header, checksum offload and TSO for IPv4 and
/// IPv6, so the data plane reads and writes TCP super-frames); if the device refuses them, as
/// a plain TAP.
fn open_tap(name: &str, opts: TapOptions) -> anyhow::Result<Tap> {
    match Tap::open_with(name, opts) {
        Ok(tap) => Ok(tap),
        Err(e) if !opts.vnet_hdr => Err(e).with_context(|| format!("opening TAP {name}")),
        Err(e) => {
            tracing::warn!("opening TAP {name} with offloads failed ({e}); opening it without");
            Tap::open(name, opts.multi_queue).with_context(|| format!("opening TAP {name}"))
        }
    }
}

/// The pid in `pid_file` if that process is alive and is a weft router.
///
/// A killed router whose parent does not reap it (a container's pid 1, some VMs' init) stays a
/// zombie with a `/proc` entry, so the process state is checked too, and a reused pid is
/// recognised by its command line.
pub fn running_pid(pid_file: &std::path::Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    if pid == std::process::id() {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state follows the command name, which is in parentheses and may contain spaces.
    let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
    if matches!(state, "Z" | "X" | "x") {
        return None;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let is_router = cmdline.split(|&b| b == 0).any(|arg| arg == b"--foreground");
    is_router.then_some(pid)
}

/// The target list kept by the last run (`--resume`).
pub fn load_targets(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a list of targets", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Keep the target list for `--resume`.
pub fn save_targets(path: &std::path::Path, targets: &[SocketAddr]) -> anyhow::Result<()> {
    let list: Vec<String> = targets.iter().map(ToString::to_string).collect();
    let json = serde_json::to_vec_pretty(&list)?;
    identity::write_atomic(path, &json).with_context(|| format!("writing {}", path.display()))
}

/// Stretch the password (once: Argon2id costs a few hundred milliseconds on purpose) and note
/// whether this CPU has AES instructions.
async fn link_security(config: &Config) -> anyhow::Result<crate::control::LinkSecurity> {
    let psk = match config.password.clone() {
        None => None,
        Some(password) => {
            let started = std::time::Instant::now();
            let psk = tokio::task::spawn_blocking(move || {
                weft_crypto::stretch(&password.0, weft_crypto::StretchParams::DEFAULT)
            })
            .await
            .context("stretching the password")?
            .context("--password")?;
            tracing::info!(
                "encryption enabled: password stretched with Argon2id in {} ms",
                started.elapsed().as_millis()
            );
            // Sealing adds a counter and a tag to every datagram.
            let outer = config.mtu as usize
                + 14
                + weft_wire::vxlan::HEADER_LEN
                + weft_crypto::data::OVERHEAD
                + 28;
            if outer > 1500 {
                tracing::warn!(
                    "with encryption, a full-size frame makes a {outer}-byte underlay packet: more \
                     than a 1500-byte underlay MTU carries without fragmenting; consider --mtu {}",
                    config.mtu as usize - (outer - 1500)
                );
            }
            Some(psk)
        }
    };
    Ok(crate::control::LinkSecurity {
        psk,
        trusted: config.trusted_subnets.clone(),
        aes: aes_hardware(),
    })
}

/// Whether AES-256-GCM is fast here (AES and carry-less multiply instructions).
fn aes_hardware() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("aes") && std::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}
