//! Layer: driver. `weft report [-f TEMPLATE]`: the router's report as Weave's JSON, or a Go
//! template evaluated over it by the router (`GET /report?format=`), printed exactly as the
//! router returns it (no newline added, as Weave's script prints it). A template the router
//! cannot parse or run prints its reason on stderr and exits 1.

use std::process::ExitCode;

use clap::Args;

use crate::{Global, http, runtime};

/// Arguments of `weft report`.
#[derive(Debug, Args)]
pub(crate) struct ReportArgs {
    /// A Go template to evaluate over the report, e.g. '{{.Router.Name}}'.
    #[arg(short = 'f', long = "format", value_name = "TEMPLATE")]
    format: Option<String>,
}

pub(crate) fn report(global: &Global, args: ReportArgs) -> anyhow::Result<ExitCode> {
    let (path, json) = match &args.format {
        Some(f) => (format!("/report?format={}", http::form_escape(f)), false),
        None => ("/report".to_owned(), true),
    };
    let (code, body) = runtime()?.block_on(http::get(global.http_addr, &path, json))?;
    if code.is_success() {
        print!("{body}");
        Ok(ExitCode::SUCCESS)
    } else if code == hyper::StatusCode::NOT_FOUND {
        // Weave's script maps 404 to exit code 4.
        Ok(ExitCode::from(4))
    } else {
        eprint!("{body}");
        Ok(ExitCode::FAILURE)
    }
}
