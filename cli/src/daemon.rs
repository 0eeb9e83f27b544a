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
    #[command(flatten)]
    proxy: ProxyArgs,
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

/// The Docker API proxy's flags (Weave's names); also read from `WEAVEPROXY_OPTIONS`.
#[derive(Debug, Clone, Default, Args, PartialEq, Eq)]
pub(crate) struct ProxyArgs {
    /// Where the Docker API proxy listens (unix:///PATH, repeatable; default
    /// unix:///var/run/weave/weave.sock).
    #[arg(short = 'H', value_name = "unix:///PATH")]
    listen: Vec<String>,
    /// The Docker daemon the proxy forwards to.
    #[arg(long, value_name = "unix:///PATH")]
    docker_api: Option<String>,
    /// Show the weave address in `docker inspect` (NetworkSettings.IPAddress).
    #[arg(long)]
    rewrite_inspect: bool,
    /// Join only containers that have WEAVE_CIDR set.
    #[arg(long)]
    no_default_ipalloc: bool,
    /// Leave joined containers' /etc/hosts as Docker wrote it.
    #[arg(long)]
    no_rewrite_hosts: bool,
    /// Run the proxy even if no Docker socket is found at launch.
    #[arg(long, conflicts_with = "no_proxy")]
    proxy: bool,
    /// Do not run the Docker API proxy.
    #[arg(long)]
    no_proxy: bool,
}

/// `WEAVEPROXY_OPTIONS` parsed as proxy flags (as Weave's launch script does).
#[derive(Debug, clap::Parser)]
#[command(no_binary_name = true)]
struct ProxyOptionsEnv {
    #[command(flatten)]
    proxy: ProxyArgs,
}

impl ProxyArgs {
    /// Adds the flags given in `WEAVEPROXY_OPTIONS`.
    fn merge_env(&mut self) -> anyhow::Result<()> {
        let Ok(opts) = std::env::var("WEAVEPROXY_OPTIONS") else {
            return Ok(());
        };
        let env = <ProxyOptionsEnv as clap::Parser>::try_parse_from(opts.split_whitespace())
            .map_err(|e| anyhow::anyhow!("WEAVEPROXY_OPTIONS='{opts}': {e}"))?
            .proxy;
        for l in env.listen {
            if !self.listen.contains(&l) {
                self.listen.push(l);
            }
        }
        self.docker_api = self.docker_api.take().or(env.docker_api);
        self.rewrite_inspect |= env.rewrite_inspect;
        self.no_default_ipalloc |= env.no_default_ipalloc;
        self.no_rewrite_hosts |= env.no_rewrite_hosts;
        self.proxy |= env.proxy;
        self.no_proxy |= env.no_proxy;
        Ok(())
    }

    /// The proxy configuration, or `None` when it is not to run. `explicit` tells whether the
    /// user asked for it (then failing to start it is an error).
    fn config(&self, global: &Global) -> anyhow::Result<Option<(weft_proxy::Config, bool)>> {
        let docker_api = weft_proxy::parse_unix_addr(
            self.docker_api
                .as_deref()
                .unwrap_or(weft_proxy::DEFAULT_DOCKER_API),
        )
        .context("--docker-api")?;
        let explicit = self.proxy || !self.listen.is_empty();
        if self.no_proxy || !(explicit || docker_api.exists()) {
            return Ok(None);
        }
        let listen = if self.listen.is_empty() {
            vec![weft_proxy::DEFAULT_LISTEN.into()]
        } else {
            self.listen
                .iter()
                .map(|l| weft_proxy::parse_unix_addr(l).context("-H"))
                .collect::<anyhow::Result<_>>()?
        };
        Ok(Some((
            weft_proxy::Config {
                listen,
                docker_api,
                rewrite_inspect: self.rewrite_inspect,
                no_default_ipalloc: self.no_default_ipalloc,
                rewrite_hosts: !self.no_rewrite_hosts,
                router_api: global.http_addr,
                waiter_dir: global.state_dir.join("waiter"),
                bridge: BRIDGE.to_owned(),
            },
            explicit,
        )))
    }

    fn flags(&self) -> Vec<String> {
        let mut f = Vec::new();
        for l in &self.listen {
            f.extend(["-H".to_owned(), l.clone()]);
        }
        if let Some(d) = &self.docker_api {
            f.push(format!("--docker-api={d}"));
        }
        for (on, name) in [
            (self.rewrite_inspect, "--rewrite-inspect"),
            (self.no_default_ipalloc, "--no-default-ipalloc"),
            (self.no_rewrite_hosts, "--no-rewrite-hosts"),
            (self.proxy, "--proxy"),
            (self.no_proxy, "--no-proxy"),
        ] {
            if on {
                f.push(name.to_owned());
            }
        }
        f
    }
}

/// What `weft env` reads: the running proxy's sockets (written at launch into the run dir).
pub(crate) const PROXY_FILE: &str = "proxy.json";

pub(crate) fn launch(global: &Global, mut args: LaunchArgs) -> anyhow::Result<ExitCode> {
    args.proxy.merge_env()?;
    let proxy = args.proxy.config(global)?;
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
            let proxy_up = proxy.as_ref().is_none_or(|(p, explicit)| {
                !explicit
                    || p.listen
                        .iter()
                        .all(|l| std::os::unix::net::UnixStream::connect(l).is_ok())
            });
            if code.is_success() && proxy_up {
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
    flags.extend(args.proxy.flags());
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
    let proxy = args.proxy.config(global)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run_router_and_proxy(global, config, proxy))?;
    Ok(ExitCode::SUCCESS)
}

/// Runs the router and (if configured) the Docker API proxy until SIGTERM/SIGINT.
async fn run_router_and_proxy(
    global: &Global,
    config: Config,
    proxy: Option<(weft_proxy::Config, bool)>,
) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let proxy_file = global.run_dir.join(PROXY_FILE);
    let _ = std::fs::remove_file(&proxy_file);
    let mut proxy_task = None;
    if let Some((cfg, explicit)) = proxy {
        match weft_proxy::bind(cfg) {
            Ok(p) => {
                let sockets: Vec<String> = p
                    .sockets()
                    .iter()
                    .map(|s| format!("unix://{}", s.display()))
                    .collect();
                let info = serde_json::json!({ "listen": sockets });
                if let Err(e) = std::fs::write(&proxy_file, info.to_string()) {
                    tracing::warn!("writing {}: {e}", proxy_file.display());
                }
                proxy_task = Some(tokio::spawn(p.serve(stopped(stop_rx.clone()))));
            }
            Err(e) if explicit => return Err(e.context("starting the Docker API proxy")),
            Err(e) => tracing::warn!("not starting the Docker API proxy: {e:#}"),
        }
    }
    let signal = tokio::spawn({
        let stop_tx = stop_tx.clone();
        async move {
            shutdown_signal().await;
            let _ = stop_tx.send(true);
        }
    });
    let result = weft_router::run(config, stopped(stop_rx)).await;
    let _ = stop_tx.send(true);
    signal.abort();
    if let Some(t) = proxy_task {
        match t.await {
            Ok(Err(e)) => tracing::warn!("proxy: {e:#}"),
            Err(e) => tracing::warn!("proxy task: {e}"),
            Ok(Ok(())) => {}
        }
    }
    let _ = std::fs::remove_file(&proxy_file);
    result
}

/// `weft env [--restore]`: the shell line that points the docker client at the proxy.
pub(crate) fn env(global: &Global, restore: bool) -> anyhow::Result<ExitCode> {
    let current = std::env::var("DOCKER_HOST").unwrap_or_default();
    if restore {
        match std::env::var("ORIG_DOCKER_HOST") {
            Ok(orig) if !orig.is_empty() => println!("export DOCKER_HOST={orig}"),
            _ => println!("unset DOCKER_HOST"),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let path = global.run_dir.join(PROXY_FILE);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("the weft proxy is not running (no {})", path.display()))?;
    let info: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    let Some(first) = info["listen"].get(0).and_then(|v| v.as_str()) else {
        bail!("the weft proxy is not listening anywhere");
    };
    println!("export DOCKER_HOST={first} ORIG_DOCKER_HOST={current}");
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
        "waiter/w",
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
