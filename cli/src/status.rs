//! Layer: driver. `weft status [peers|connections|targets] [--json]`.

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
