//! Layer: driver. The `weft` command (it also answers to the name `weave`, so existing scripts
//! keep working). `main` normalises Weave's argument spellings, parses, maps errors to Weave's
//! exit codes and dispatches; each subcommand lives in its own module:
//!
//! - [`launch`]: the launch flags of Weave 2.8.1 and 1.x, `launch`, `launch-router`,
//!   `launch-proxy`, `stop*`, `reset`, `env`, `config`;
//! - [`daemon`]: the weft daemon (router and proxy as separately started and stopped parts of
//!   one process) and [`control`], the socket the CLI drives it through;
//! - [`attach`]: `attach`, `detach` (through the one attach path, [`weft_router::attach`]);
//! - [`target`]: resolving a container argument (Docker name or id, netns name, pid);
//! - [`expose`]: `expose`, `hide`, `ps`; [`status`]: `status`, `connect`, `forget`, `rmpeer`;
//! - [`info`]: `version`, `prime`, `dns-args`, `docker-bridge-ip`;
//! - [`legacy`]: Weave 1.x verbs (`run`, `start`, `restart`, `launch-dns`, ...);
//! - [`setup`]: `setup` (and the [`systemd`] unit it installs); [`logs`]: `logs`;
//!   [`checks`]: first-run checks (root, the bridge, the range);
//! - [`cni`]: the CNI plugins, when the binary runs as `weave-net` or `weave-ipam`.
#![forbid(unsafe_code)]

mod attach;
mod checks;
mod cni;
mod control;
mod daemon;
mod dns;
mod expose;
mod http;
mod info;
mod launch;
mod legacy;
mod logcap;
mod logs;
mod report;
mod setup;
mod status;
mod systemd;
mod target;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

/// weft: an overlay network for containers (a drop-in for Weave Net's `weave`).
#[derive(Debug, Parser)]
#[command(name = "weft", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Options every subcommand shares; each can also come from the environment, so several
/// routers (one per network namespace) can run side by side.
#[derive(Debug, Clone, Args)]
struct Global {
    /// Directory for the control socket, the pid file and the log.
    #[arg(long, global = true, env = "WEFT_RUN_DIR", default_value = "/run/weft")]
    run_dir: PathBuf,
    /// Directory for persistent state (peer name, short id, IPAM).
    #[arg(
        long,
        global = true,
        env = "WEFT_STATE_DIR",
        default_value = "/var/lib/weft"
    )]
    state_dir: PathBuf,
    /// Address of the router's HTTP API.
    #[arg(
        long,
        global = true,
        env = "WEAVE_HTTP_ADDR",
        default_value = "127.0.0.1:6784"
    )]
    http_addr: SocketAddr,
    /// The Docker daemon (for container names and ids, the proxy and container lifecycle):
    /// unix:///PATH or tcp://IP:PORT; default DOCKER_HOST, else unix:///var/run/docker.sock.
    #[arg(long, global = true, value_name = "ENDPOINT")]
    docker_api: Option<String>,
}

impl Global {
    /// The Docker endpoint: `--docker-api`, else `DOCKER_HOST`, else Docker's socket.
    fn docker(&self) -> anyhow::Result<weft_proxy::Endpoint> {
        match &self.docker_api {
            Some(a) => weft_proxy::parse_endpoint(a).map_err(|e| e.context("--docker-api")),
            None => weft_proxy::default_docker_api(),
        }
    }
}

// Parsed once per run; the launch verbs' many flags make their variants large, which costs
// nothing here.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Prepare this host for weft: directories, the container waiter, the `weave` name and
    /// the systemd unit (offline, idempotent); `--remove` undoes it.
    Setup(setup::SetupArgs),
    /// Show the router's log, wherever it goes (the journal under systemd): Weave's
    /// `docker logs weave`.
    Logs(logs::LogsArgs),
    /// Print the version of this command and of the running router.
    Version,
    /// Start the router and the Docker API proxy (Weave 2's launch), dialling the peers.
    Launch(launch::LaunchArgs),
    /// Start only the router (Weave 1.x); picks up a proxy that already runs.
    LaunchRouter(launch::LaunchRouterArgs),
    /// Start only the Docker API proxy (Weave 1.x); it works before the router runs.
    LaunchProxy(launch::LaunchProxyArgs),
    /// Weave 1.x: weaveDNS is part of the router in weft (nothing to start).
    LaunchDns(legacy::Ignored),
    /// Start only the Docker network plugin (Weave 1.x): `docker run --net=weave`.
    LaunchPlugin(launch::LaunchPluginArgs),
    /// Stop the router and the proxy; the bridge and container interfaces stay.
    Stop,
    /// Stop only the router (the proxy keeps serving).
    StopRouter,
    /// Stop only the Docker API proxy.
    StopProxy,
    /// Weave 1.x: weaveDNS stops with the router in weft.
    StopDns(legacy::Ignored),
    /// Stop only the Docker network plugin.
    StopPlugin(legacy::Ignored),
    /// Leave the network: hand IP ranges over, stop, remove the bridge and stored state.
    Reset(launch::ResetArgs),
    /// Attach a container (Docker name or id, netns name, or pid) with the given addresses.
    Attach(attach::AttachArgs),
    /// Detach a container: remove the given addresses, or its whole interface.
    Detach(attach::DetachArgs),
    /// Show the router's status: `weave status [peers|connections|targets|ipam|dns]`.
    Status(status::StatusArgs),
    /// Print the router's report (Weave's JSON), or a Go template over it: `report -f TEMPLATE`.
    Report(report::ReportArgs),
    /// Add peers to connect to (kept across restarts with `launch --resume`).
    Connect(status::ConnectArgs),
    /// Stop (re)dialling these peers; connections that are up stay up.
    Forget(status::ForgetArgs),
    /// Take over the IP ranges of a dead peer (by name or nickname).
    Rmpeer(status::RmpeerArgs),
    /// Give the host an address on the bridge: `weave expose [ADDR...] [-h FQDN]`.
    Expose(expose::ExposeArgs),
    /// Take exposed addresses off the bridge (all when none are given).
    Hide(expose::HideArgs),
    /// List the bridge (`weave:expose`) and the attached containers with MAC and addresses.
    Ps(expose::PsArgs),
    /// Register a container's name in weaveDNS: `dns-add [IP...] CONTAINER [-h FQDN]`, or
    /// `dns-add IP... -h FQDN` for addresses outside any container.
    #[command(disable_help_flag = true)]
    DnsAdd(dns::EditArgs),
    /// Remove names from weaveDNS (same arguments as dns-add).
    #[command(disable_help_flag = true)]
    DnsRemove(dns::EditArgs),
    /// Look a name up in weaveDNS.
    DnsLookup(dns::LookupArgs),
    /// Print the shell line that points the docker client at the proxy (`eval $(weave env)`).
    Env(launch::EnvArgs),
    /// Weave 1.x name of `env`.
    ProxyEnv(launch::EnvArgs),
    /// Print `-H=<proxy address>` for `docker $(weave config) ...`.
    Config,
    /// Weave 1.x name of `config`.
    ProxyConfig,
    /// Print `--dns=... --dns-search=...` for a manual `docker run`.
    DnsArgs(legacy::Ignored),
    /// Print the Docker bridge's IPv4 address.
    DockerBridgeIp,
    /// Wait until this peer has a share of the IP range (forcing consensus if needed).
    Prime,
    /// Weave 1.x: `docker run -d` and attach the new container.
    Run(legacy::RunArgs),
    /// Weave 1.x: `docker start` and attach the container.
    Start(legacy::StartArgs),
    /// Weave 1.x: `docker restart` keeping the container's addresses.
    Restart(legacy::RestartArgs),
    /// The weft daemon (started by the launch verbs; not for direct use).
    #[command(hide = true)]
    Daemon(daemon::DaemonArgs),
}

/// Launch-type verbs whose flags Weave (Go's flag package) also accepts with one dash.
const GO_FLAG_VERBS: [&str; 4] = ["launch", "launch-router", "launch-proxy", "launch-plugin"];

/// Weave's single-dash long flags (`-password`, `-iprange`) become clap's `--password`,
/// `--iprange`: a token `-name[=value]` after a launch verb is rewritten when `--name` is one
/// of that verb's long flags or aliases. Deprecated spellings are reported as Weave did.
fn normalize_args(args: Vec<String>) -> Vec<String> {
    let cmd = Cli::command();
    let Some(pos) = args
        .iter()
        .skip(1)
        .position(|a| GO_FLAG_VERBS.contains(&a.as_str()))
        .map(|p| p + 1)
    else {
        return args;
    };
    let Some(sub) = cmd.find_subcommand(&args[pos]) else {
        return args;
    };
    let mut longs: Vec<String> = Vec::new();
    for a in sub.get_arguments() {
        longs.extend(a.get_long().map(str::to_owned));
        longs.extend(a.get_all_aliases().into_iter().flatten().map(str::to_owned));
    }
    for a in cmd.get_arguments() {
        longs.extend(a.get_long().map(str::to_owned));
    }
    let mut out: Vec<String> = args[..=pos].to_vec();
    let mut rest = args[pos + 1..].iter();
    for a in rest.by_ref() {
        if a == "--" {
            out.push(a.clone());
            break;
        }
        let single = a.len() > 2 && a.starts_with('-') && !a.starts_with("--");
        let name = if single {
            a[1..].split('=').next().unwrap_or_default()
        } else {
            ""
        };
        if single && longs.iter().any(|l| l == name) {
            if launch::DEPRECATED.iter().any(|(old, _)| *old == name) || name == "password" {
                let instead = launch::DEPRECATED
                    .iter()
                    .find(|(old, _)| *old == name)
                    .map_or(name, |(_, new)| new);
                eprintln!("Warning: -{name} is deprecated; please use --{instead}");
            }
            out.push(format!("-{a}"));
        } else {
            out.push(a.clone());
        }
    }
    out.extend(rest.cloned());
    out
}

fn main() -> ExitCode {
    // Installed as CNI plugins too: the runtime runs them by name, with no arguments.
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if let Some(p) = std::path::Path::new(&argv0)
        .file_name()
        .and_then(|n| cni::Plugin::from_name(&n.to_string_lossy()))
    {
        return cni::main(p);
    }
    let args = normalize_args(std::env::args().collect());
    let invoked = std::path::Path::new(args.first().map_or("weft", String::as_str))
        .file_name()
        .map_or_else(|| "weft".to_owned(), |n| n.to_string_lossy().into_owned());
    let matches = Cli::command().try_get_matches_from(&args);
    let cli = match matches.and_then(|m| Cli::from_arg_matches(&m)) {
        Ok(cli) => cli,
        Err(e) => return parse_error(&e, &invoked, &args),
    };
    if std::env::var_os("WEAVE_DEBUG").is_some_and(|v| !v.is_empty())
        && !matches!(cli.command, Command::Daemon(_))
    {
        // Weave's WEAVE_DEBUG traces what the script does (`set -x`); weft traces its calls.
        let _ = tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .try_init();
    }
    if let Err(e) = checks::require_root_for(command_name(&cli.command)) {
        eprintln!("{invoked}: {e:#}");
        return ExitCode::FAILURE;
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{invoked}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Weave's answers to bad command lines: an unknown command is "Unknown weave command", a
/// usage error prints the usage; both exit 1 (help and version exit 0).
fn parse_error(e: &clap::Error, invoked: &str, args: &[String]) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        ErrorKind::InvalidSubcommand => {
            let cmd = args
                .iter()
                .skip(1)
                .find(|a| !a.starts_with('-'))
                .map_or("", String::as_str);
            eprintln!("Unknown {invoked} command '{cmd}'");
            eprintln!("{}", Cli::command().render_usage());
            ExitCode::FAILURE
        }
        _ => {
            let _ = e.print();
            ExitCode::FAILURE
        }
    }
}

/// The subcommand's name as typed (for the root check).
fn command_name(c: &Command) -> &'static str {
    match c {
        Command::Setup(_) => "setup",
        Command::Launch(_) => "launch",
        Command::LaunchRouter(_) => "launch-router",
        Command::LaunchProxy(_) => "launch-proxy",
        Command::LaunchPlugin(_) => "launch-plugin",
        Command::StopPlugin(_) => "stop-plugin",
        Command::Stop => "stop",
        Command::StopRouter => "stop-router",
        Command::StopProxy => "stop-proxy",
        Command::Reset(_) => "reset",
        Command::Attach(_) => "attach",
        Command::Detach(_) => "detach",
        Command::Expose(_) => "expose",
        Command::Hide(_) => "hide",
        Command::Run(_) => "run",
        Command::Start(_) => "start",
        Command::Restart(_) => "restart",
        Command::Daemon(_) => "daemon",
        _ => "",
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let g = &cli.global;
    match cli.command {
        Command::Setup(args) => setup::setup(g, args),
        Command::Logs(args) => logs::logs(g, args),
        Command::Version => info::version(g),
        Command::Launch(args) => launch::launch(g, args),
        Command::LaunchRouter(args) => launch::launch_router(g, args),
        Command::LaunchProxy(args) => launch::launch_proxy(g, args),
        Command::LaunchDns(_) => legacy::launch_dns(),
        Command::LaunchPlugin(args) => launch::launch_plugin(g, args),
        Command::Stop => launch::stop(g, launch::Parts::ALL),
        Command::StopRouter => launch::stop(g, launch::Parts::ROUTER),
        Command::StopProxy => launch::stop(g, launch::Parts::PROXY),
        Command::StopDns(_) => legacy::stop_dns(),
        Command::StopPlugin(_) => launch::stop(g, launch::Parts::PLUGIN),
        Command::Reset(args) => launch::reset(g, args),
        Command::Attach(args) => attach::attach(g, args),
        Command::Detach(args) => attach::detach(g, args),
        Command::Status(args) => status::status(g, args),
        Command::Report(args) => report::report(g, args),
        Command::Connect(args) => status::connect(g, args),
        Command::Forget(args) => status::forget(g, args),
        Command::Rmpeer(args) => status::rmpeer(g, args),
        Command::Expose(args) => expose::expose(g, args),
        Command::Hide(args) => expose::hide(g, args),
        Command::Ps(args) => expose::ps(g, args),
        Command::Env(args) => launch::env(g, args),
        Command::ProxyEnv(args) => {
            eprintln!("Warning: proxy-env is deprecated; please use 'weave env'");
            launch::env(g, args)
        }
        Command::Config => launch::config(g),
        Command::ProxyConfig => {
            eprintln!("Warning: proxy-config is deprecated; please use 'weave config'");
            launch::config(g)
        }
        Command::DnsAdd(args) => dns::add(g, args),
        Command::DnsRemove(args) => dns::remove(g, args),
        Command::DnsLookup(args) => dns::lookup(g, args),
        Command::DnsArgs(_) => dns::args(g),
        Command::DockerBridgeIp => info::docker_bridge_ip(),
        Command::Prime => info::prime(g),
        Command::Run(args) => legacy::run(g, args),
        Command::Start(args) => legacy::start(g, args),
        Command::Restart(args) => legacy::restart(g, args),
        Command::Daemon(args) => daemon::main(g, args),
    }
}

/// A current-thread tokio runtime for one command.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn single_dash_long_flags() {
        assert_eq!(
            normalize_args(v(&[
                "weave",
                "launch",
                "-password",
                "s",
                "-iprange=10.2.0.0/16",
                "-H",
                "unix:///x",
                "192.0.2.1"
            ])),
            v(&[
                "weave",
                "launch",
                "--password",
                "s",
                "--iprange=10.2.0.0/16",
                "-H",
                "unix:///x",
                "192.0.2.1"
            ])
        );
        // Other verbs, short flags and values are left alone.
        let other = v(&["weave", "expose", "-h", "x.weave.local"]);
        assert_eq!(normalize_args(other.clone()), other);
        let value = v(&["weave", "launch", "--nickname", "-odd"]);
        assert_eq!(normalize_args(value.clone()), value);
        // Empty values (`--status-addr ""`) and a lone dash pass through.
        let empty = v(&["weave", "launch", "--status-addr", "", "-"]);
        assert_eq!(normalize_args(empty.clone()), empty);
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
