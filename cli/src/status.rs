//! Layer: driver. `weft status [peers|connections|targets|ipam|dns] [--json]` (Weave's text,
//! printed as Weave's script prints it), the status listener's launch flags, and the verbs that
//! change the router's targets: `weft connect [--replace] PEER...`, `weft forget PEER...`.

use std::process::ExitCode;

use clap::Args;

use crate::{Global, http, runtime};

/// Arguments of `weft status`.
#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Which report: peers, connections, targets, ipam or dns (default: the summary).
    sub: Option<String>,
    /// Print weft's JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// The name this program was run as (`weave` or `weft`), for messages.
fn program() -> String {
    std::env::args_os()
        .next()
        .as_deref()
        .and_then(|p| std::path::Path::new(p).file_name())
        .map_or_else(|| "weft".to_owned(), |n| n.to_string_lossy().into_owned())
}

pub(crate) fn status(global: &Global, args: StatusArgs) -> anyhow::Result<ExitCode> {
    let path = match &args.sub {
        Some(sub) => format!("/status/{sub}"),
        None => "/status".to_owned(),
    };
    let (code, body) = runtime()?.block_on(http::get(global.http_addr, &path, args.json))?;
    if code.is_success() {
        // Weave's script frames the summary with blank lines.
        let framed = args.sub.is_none() && !args.json;
        if framed {
            println!();
        }
        print!("{body}");
        if args.json && !body.ends_with('\n') {
            println!();
        }
        if framed {
            println!();
        }
        Ok(ExitCode::SUCCESS)
    } else if code == hyper::StatusCode::NOT_FOUND {
        let prog = program();
        eprintln!(
            "Invalid '{prog} status' sub-command: {}",
            args.sub.unwrap_or_default()
        );
        eprintln!("usage: {prog} status [targets | connections | peers | dns | ipam] [--json]");
        Ok(ExitCode::FAILURE)
    } else {
        eprint!("{body}");
        Ok(ExitCode::FAILURE)
    }
}

/// Arguments of `weft connect`.
#[derive(Debug, Args)]
pub(crate) struct ConnectArgs {
    /// Forget every current target first.
    #[arg(long)]
    replace: bool,
    /// Peers as `IP[:port]` or `host[:port]`.
    peers: Vec<String>,
}

/// Arguments of `weft forget`.
#[derive(Debug, Args)]
pub(crate) struct ForgetArgs {
    /// Peers as given to `launch` or `connect`.
    #[arg(required = true)]
    peers: Vec<String>,
}

pub(crate) fn connect(global: &Global, args: ConnectArgs) -> anyhow::Result<ExitCode> {
    let mut form = String::new();
    for p in &args.peers {
        form.push_str(&format!("peer={}&", http::form_escape(p)));
    }
    if args.replace {
        form.push_str("replace=true");
    }
    post_form(global, "/connect", form)
}

pub(crate) fn forget(global: &Global, args: ForgetArgs) -> anyhow::Result<ExitCode> {
    let form: Vec<String> = args
        .peers
        .iter()
        .map(|p| format!("peer={}", http::form_escape(p)))
        .collect();
    post_form(global, "/forget", form.join("&"))
}

fn post_form(global: &Global, path: &str, form: String) -> anyhow::Result<ExitCode> {
    let (code, body) = runtime()?.block_on(http::post_form(global.http_addr, path, form))?;
    if code.is_success() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprint!("{body}");
        Ok(ExitCode::FAILURE)
    }
}

/// Arguments of `weft rmpeer`.
#[derive(Debug, Args)]
pub(crate) struct RmpeerArgs {
    /// Also when the peer was seen a short while ago (it may only be partitioned away: only
    /// for a peer known to be gone for good).
    #[arg(long)]
    force: bool,
    /// Peers (name or nickname) whose IP ranges this peer takes over.
    #[arg(required = true)]
    peers: Vec<String>,
}

pub(crate) fn rmpeer(global: &Global, args: RmpeerArgs) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    let mut failed = false;
    for peer in &args.peers {
        let mut path = format!("/peer/{}", http::form_escape(peer));
        if args.force {
            path.push_str("?force=true");
        }
        let (code, body) = rt.block_on(http::request(
            global.http_addr,
            hyper::Method::DELETE,
            &path,
            false,
        ))?;
        if code.is_success() {
            print!("{body}");
        } else {
            eprint!("{body}");
            failed = true;
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
