//! Layer: driver. The `weft` command (it also answers to the name `weave`, so existing scripts
//! keep working). `main` parses arguments and maps errors to exit codes; each subcommand lives
//! in its own module and talks to the router's HTTP API, to the kernel (attach/detach), or
//! starts the router.
#![forbid(unsafe_code)]

mod attach;
mod daemon;
mod expose;
mod http;
mod status;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

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
    /// Directory for the pid file and the log.
    #[arg(long, global = true, env = "WEFT_RUN_DIR", default_value = "/run/weft")]
    run_dir: PathBuf,
    /// Directory for persistent state (peer name, short id).
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
}

// Parsed once per run; `launch`'s many flags make its variant large, which costs nothing here.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Start the router (creating the bridge `weave`), dialling the given peers.
    Launch(daemon::LaunchArgs),
    /// Stop the router; the bridge and container interfaces stay, so local traffic keeps working.
    Stop,
    /// Stop the router and remove the bridge, its interfaces and the stored state.
    Reset,
    /// Attach a container (a network namespace name or a pid) with the given addresses.
    Attach(attach::AttachArgs),
    /// Detach a container: remove the given addresses, or its whole interface.
    Detach(attach::DetachArgs),
    /// Show the router's status: `weft status [peers|connections|targets]`.
    Status(status::StatusArgs),
    /// Add peers to connect to (kept across restarts with `launch --resume`).
    Connect(status::ConnectArgs),
    /// Stop (re)dialling these peers; connections that are up stay up.
    Forget(status::ForgetArgs),
    /// Take over the IP ranges of a dead peer (by name or nickname).
    Rmpeer(status::RmpeerArgs),
    /// Give the host an address on the bridge: `weft expose [ADDR...] [--without-masquerade]`.
    Expose(expose::ExposeArgs),
    /// Take exposed addresses off the bridge (all when none are given).
    Hide(expose::HideArgs),
    /// List the bridge (`weave:expose`) and the attached containers with MAC and addresses.
    Ps(expose::PsArgs),
    /// Print the shell line that points the docker client at the proxy (`eval $(weft env)`).
    Env {
        /// Print the line that points it back where it was.
        #[arg(long)]
        restore: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("weft: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Launch(args) => daemon::launch(&cli.global, args),
        Command::Stop => daemon::stop(&cli.global),
        Command::Reset => daemon::reset(&cli.global),
        Command::Attach(args) => attach::attach(&cli.global, args),
        Command::Detach(args) => attach::detach(&cli.global, args),
        Command::Status(args) => status::status(&cli.global, args),
        Command::Connect(args) => status::connect(&cli.global, args),
        Command::Forget(args) => status::forget(&cli.global, args),
        Command::Rmpeer(args) => status::rmpeer(&cli.global, args),
        Command::Expose(args) => expose::expose(&cli.global, args),
        Command::Hide(args) => expose::hide(&cli.global, args),
        Command::Ps(args) => expose::ps(&cli.global, args),
        Command::Env { restore } => daemon::env(&cli.global, restore),
    }
}

/// A current-thread tokio runtime for one command.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}
