//! Layer: driver. `weft launch`, `weft stop`, `weft reset`: starting the router in the
//! background (or in the foreground under a supervisor), stopping it, and removing what it made.

use std::fs::OpenOptions;
use std::net::IpAddr;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use weft_mesh::PeerName;
use weft_router::Config;
use weft_router::config::{BRIDGE, DEFAULT_MTU, DEFAULT_PORT, TAP};
use weft_router::run::running_pid;

use crate::{Global, http, runtime};

/// Arguments of `weft launch`.
#[derive(Debug, Clone, Args)]
pub(crate) struct LaunchArgs {
    /// Peers to connect to, as `IP[:port]` or `host[:port]`.
    peers: Vec<String>,
    /// Peer name (48 bits, written like a MAC); by default derived once and kept.
    #[arg(long, env = "WEFT_NAME")]
    name: Option<PeerName>,
    /// Human-readable name of this peer (default: the hostname).
    #[arg(long)]
    nickname: Option<String>,
    /// TCP control port; the UDP data port is this plus one.
    #[arg(long, env = "WEAVE_PORT", default_value_t = DEFAULT_PORT)]
    port: u16,
    /// Address to bind the control and data sockets to (default: all).
    #[arg(long, default_value = "0.0.0.0")]
    host: IpAddr,
    /// Overlay MTU for the bridge and every container interface.
    #[arg(long, env = "WEAVE_MTU", default_value_t = DEFAULT_MTU)]
    mtu: u32,
    /// Log level (error, warn, info, debug, trace) or a tracing filter.
    #[arg(long, env = "WEFT_LOG", default_value = "info")]
    log_level: String,
    /// Run in this process instead of in the background (for systemd and other supervisors).
    #[arg(long)]
    foreground: bool,
    /// Dial only the given targets, not peers learned from gossip.
    #[arg(long)]
    no_discovery: bool,
    /// Most control connections (0: unlimited).
    #[arg(long, env = "CONN_LIMIT", default_value_t = 200)]
    conn_limit: usize,
    /// Reuse the target list kept from the last run (no peers may be given).
    #[arg(long, conflicts_with = "peers")]
    resume: bool,
    /// The range IPAM allocates from ("" disables IPAM).
    #[arg(long, env = "IPALLOC_RANGE", default_value = weft_router::config::DEFAULT_RANGE)]
    ipalloc_range: String,
    /// The subnet `net:default` allocates in (default: the whole range).
    #[arg(long)]
    ipalloc_default_subnet: Option<ipnet::Ipv4Net>,
    /// How the range is first divided: consensus[=N], seed=NAME,... or observer.
    #[arg(long, env = "IPALLOC_INIT", default_value = "consensus")]
    ipalloc_init: String,
    /// Encrypt every connection with this network password (prefer --password-file: a
    /// command line is visible in `ps`).
    #[arg(long, env = "WEAVE_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Read the network password from this file (one trailing newline is ignored).
    #[arg(long, conflicts_with = "password")]
    password_file: Option<std::path::PathBuf>,
    /// Comma-separated CIDRs of peers trusted to carry the data plane in the clear.
    #[arg(long, default_value = "")]
    trusted_subnets: String,
}

pub(crate) fn launch(global: &Global, args: LaunchArgs) -> anyhow::Result<ExitCode> {
    if args.mtu < 576 || args.mtu > 65535 {
        bail!("--mtu {} is out of range (576..=65535)", args.mtu);
    }
    if args.foreground {
        return foreground(global, args);
    }
    let rt = runtime()?;
    if rt
        .block_on(http::get(global.http_addr, "/status", true))
        .is_ok()
    {
        bail!(
            "a weft router is already running (its API answers on {})",
            global.http_addr
        );
    }
    if let Some(pid) = running_pid(&global.run_dir.join("weft.pid")) {
        bail!("a weft router is already running (pid {pid})");
    }
    std::fs::create_dir_all(&global.run_dir)
        .with_context(|| format!("creating {}", global.run_dir.display()))?;
    let log_path = global.run_dir.join("weft.log");
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let exe = std::env::current_exe().context("finding the weft executable")?;
    let mut child = Command::new(exe)
        .arg("--run-dir")
        .arg(&global.run_dir)
        .arg("--state-dir")
        .arg(&global.state_dir)
        .arg("--http-addr")
        .arg(global.http_addr.to_string())
        .arg("launch")
        .arg("--foreground")
        .args(launch_flags(&args))
        .args(&args.peers)
        // The password reaches the router through its environment, never its command line.
        .env_remove("WEAVE_PASSWORD")
        .envs(args.password.as_ref().map(|p| ("WEAVE_PASSWORD", p)))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting the router")?;
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            let tail = log_tail(&log_path, 15);
            bail!("the router exited during start-up ({status}); last log lines:\n{tail}");
        }
        if let Ok((code, body)) = rt.block_on(http::get(global.http_addr, "/status", true)) {
            if code.is_success() {
                let name = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["name"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                println!("{name}");
                return Ok(ExitCode::SUCCESS);
            }
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let tail = log_tail(&log_path, 15);
            bail!(
                "the router did not answer on {} within 20 s; last log lines:\n{tail}",
                global.http_addr
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn launch_flags(args: &LaunchArgs) -> Vec<String> {
    let mut flags = vec![
        "--port".to_owned(),
        args.port.to_string(),
        "--host".to_owned(),
        args.host.to_string(),
        "--mtu".to_owned(),
        args.mtu.to_string(),
        "--log-level".to_owned(),
        args.log_level.clone(),
    ];
    if let Some(name) = args.name {
        flags.extend(["--name".to_owned(), name.to_string()]);
    }
    flags.extend(["--conn-limit".to_owned(), args.conn_limit.to_string()]);
    if args.no_discovery {
        flags.push("--no-discovery".to_owned());
    }
    if args.resume {
        flags.push("--resume".to_owned());
    }
    flags.push(format!("--ipalloc-range={}", args.ipalloc_range));
    flags.push(format!("--ipalloc-init={}", args.ipalloc_init));
    if let Some(n) = args.ipalloc_default_subnet {
        flags.extend(["--ipalloc-default-subnet".to_owned(), n.to_string()]);
    }
    if let Some(nick) = &args.nickname {
        flags.extend(["--nickname".to_owned(), nick.clone()]);
    }
    if let Some(file) = &args.password_file {
        flags.extend(["--password-file".to_owned(), file.display().to_string()]);
    }
    flags.push(format!("--trusted-subnets={}", args.trusted_subnets));
    flags
}

fn foreground(global: &Global, args: LaunchArgs) -> anyhow::Result<ExitCode> {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .with_context(|| format!("invalid --log-level '{}'", args.log_level))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .init();
    let nickname = match args.nickname {
        Some(n) => n,
        None => nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "weft".to_owned()),
    };
    let ipalloc_range = if args.ipalloc_range.is_empty() {
        None
    } else {
        Some(
            args.ipalloc_range
                .parse::<ipnet::Ipv4Net>()
                .with_context(|| {
                    format!(
                        "--ipalloc-range '{}' is not a CIDR like 10.32.0.0/12",
                        args.ipalloc_range
                    )
                })?,
        )
    };
    if let (Some(range), Some(subnet)) = (ipalloc_range, args.ipalloc_default_subnet) {
        if !range.contains(&subnet) {
            bail!("--ipalloc-default-subnet {subnet} is not inside --ipalloc-range {range}");
        }
    }
    let ipalloc_init =
        weft_router::config::parse_ipalloc_init(&args.ipalloc_init).map_err(anyhow::Error::msg)?;
    let password = read_password(args.password.as_deref(), args.password_file.as_deref())?;
    let trusted_subnets = weft_router::config::parse_trusted_subnets(&args.trusted_subnets)
        .map_err(anyhow::Error::msg)?;
    let config = Config {
        name: args.name,
        nickname,
        host: args.host,
        port: args.port,
        data_port: args
            .port
            .checked_add(1)
            .context("--port 65535 leaves no data port")?,
        http_addr: global.http_addr,
        mtu: args.mtu,
        state_dir: global.state_dir.clone(),
        run_dir: global.run_dir.clone(),
        peers: args.peers,
        bridge: BRIDGE.to_owned(),
        tap: TAP.to_owned(),
        discovery: !args.no_discovery,
        conn_limit: args.conn_limit,
        resume: args.resume,
        ipalloc_range,
        ipalloc_default_subnet: args.ipalloc_default_subnet,
        ipalloc_init,
        password,
        trusted_subnets,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(weft_router::run(config, shutdown_signal()))?;
    Ok(ExitCode::SUCCESS)
}

/// The password from `--password`/`WEAVE_PASSWORD` or `--password-file`.
fn read_password(
    given: Option<&str>,
    file: Option<&std::path::Path>,
) -> anyhow::Result<Option<weft_router::config::Password>> {
    let bytes = match (given, file) {
        (Some(p), _) => p.as_bytes().to_vec(),
        (None, Some(path)) => {
            let mut b = std::fs::read(path)
                .with_context(|| format!("reading --password-file {}", path.display()))?;
            if b.ends_with(b"\n") {
                b.pop();
                if b.ends_with(b"\r") {
                    b.pop();
                }
            }
            b
        }
        (None, None) => return Ok(None),
    };
    if bytes.is_empty() {
        bail!("the password is empty");
    }
    Ok(Some(weft_router::config::Password(bytes)))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the router would never stop cleanly; run until killed.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

fn log_tail(path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Stop the router if it runs; true if one was stopped.
fn stop_router(global: &Global) -> anyhow::Result<bool> {
    let pid_file = global.run_dir.join("weft.pid");
    let Some(pid) = running_pid(&pid_file) else {
        return Ok(false);
    };
    let pid = Pid::from_raw(i32::try_from(pid).context("pid out of range")?);
    kill(pid, Signal::SIGTERM).context("signalling the router")?;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if kill(pid, None).is_err() {
            return Ok(true);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = kill(pid, Signal::SIGKILL);
    let _ = std::fs::remove_file(&pid_file);
    Ok(true)
}

pub(crate) fn stop(global: &Global) -> anyhow::Result<ExitCode> {
    if !stop_router(global)? {
        eprintln!("weft is not running");
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn reset(global: &Global) -> anyhow::Result<ExitCode> {
    // Hand our IP ranges to a live peer first, so the space is not orphaned (as Weave's
    // `DELETE /peer`); then give the message a moment to leave.
    let rt = runtime()?;
    let leave = rt.block_on(http::request(
        global.http_addr,
        hyper::Method::DELETE,
        "/peer",
        false,
    ));
    if let Ok((code, body)) = leave {
        if code.is_success() {
            eprint!("{body}");
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    stop_router(global)?;
    runtime()?.block_on(async {
        let nl = weft_sys::netlink::Netlink::new()?;
        if let Some(bridge) = nl.link_index(BRIDGE).await? {
            for (index, name) in nl.links_with_master(bridge).await? {
                if name.starts_with("vethwe") {
                    nl.delete_link(index).await?;
                }
            }
            nl.delete_link(bridge).await?;
        }
        if let Some(tap) = nl.link_index(TAP).await? {
            nl.delete_link(tap).await?;
        }
        // The masquerade and forward rules that `expose` added, chains included.
        if let Err(e) = weft_sys::firewall::remove_chains(BRIDGE) {
            eprintln!("weft: removing firewall rules: {e}");
        }
        anyhow::Ok(())
    })?;
    for file in [
        "peer-name",
        "short-id",
        "ipam.json",
        "targets.json",
        "exposed.json",
    ] {
        let path = global.state_dir.join(file);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
    Ok(ExitCode::SUCCESS)
}
