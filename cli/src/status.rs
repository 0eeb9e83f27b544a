//! Layer: driver. `weft status [peers|connections|targets] [--json]`, and the verbs that change
//! the router's targets: `weft connect [--replace] PEER...`, `weft forget PEER...`.

use std::process::ExitCode;

use clap::Args;

use crate::{Global, http, runtime};

/// Arguments of `weft status`.
#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Which report: peers, connections or targets (default: the summary).
    sub: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub(crate) fn status(global: &Global, args: StatusArgs) -> anyhow::Result<ExitCode> {
    let path = match &args.sub {
        Some(sub) => format!("/status/{sub}"),
        None => "/status".to_owned(),
    };
    let (code, body) = runtime()?.block_on(http::get(global.http_addr, &path, args.json))?;
    if code.is_success() {
        print!("{body}");
        if args.json && !body.ends_with('\n') {
            println!();
        }
        if args.sub.is_none() && !args.json {
            print!("{}", proxy_section(global));
        }
        Ok(ExitCode::SUCCESS)
    } else if code == hyper::StatusCode::NOT_FOUND {
        eprint!("{body}");
        eprintln!("usage: weft status [peers|connections|targets] [--json]");
        // Weave's script maps 404 to exit code 4.
        Ok(ExitCode::from(4))
    } else {
        eprint!("{body}");
        Ok(ExitCode::FAILURE)
    }
}

/// Weave's proxy block of the status summary, from what the running proxy wrote at launch.
fn proxy_section(global: &Global) -> String {
    let path = global.run_dir.join(crate::daemon::PROXY_FILE);
    let Some(info) = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
    else {
        return String::new();
    };
    let mut out = String::from("\n        Service: proxy\n");
    for addr in info["listen"].as_array().into_iter().flatten() {
        if let Some(a) = addr.as_str() {
            out.push_str(&format!("        Address: {a}\n"));
        }
    }
    out
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
    /// Peers (name or nickname) whose IP ranges this peer takes over.
    #[arg(required = true)]
    peers: Vec<String>,
}

pub(crate) fn rmpeer(global: &Global, args: RmpeerArgs) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    let mut failed = false;
    for peer in &args.peers {
        let path = format!("/peer/{}", http::form_escape(peer));
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
