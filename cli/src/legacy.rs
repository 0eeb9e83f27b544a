//! Layer: driver. Weave 1.x verbs that scripts of that era still call: `run`, `start` and
//! `restart` (a docker command, then the container attached, as the 1.x script did them),
//! `launch-dns` / `stop-dns` (weaveDNS is part of the router: a message and exit 0, as Weave
//! 1.5 answered). (`launch-plugin` / `stop-plugin` start and stop the Docker network plugin:
//! see [`crate::launch`].)

use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context, bail};
use clap::Args;
use weft_router::attach::AddrSpec;

use crate::attach::{AttachOptions, attach_target, show_addrs};
use crate::{Global, runtime};

/// Any arguments (accepted and ignored).
#[derive(Debug, Args)]
pub(crate) struct Ignored {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    args: Vec<String>,
}

/// `weave launch-dns`.
pub(crate) fn launch_dns() -> anyhow::Result<ExitCode> {
    eprintln!(
        "The 'launch-dns' command has been removed; DNS is launched as part of 'launch' and \
         'launch-router'."
    );
    Ok(ExitCode::SUCCESS)
}

/// `weave stop-dns`.
pub(crate) fn stop_dns() -> anyhow::Result<ExitCode> {
    eprintln!(
        "The 'stop-dns' command has been removed; DNS is stopped as part of 'stop' and \
         'stop-router'."
    );
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `weave run`.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// `[--without-dns] [--no-rewrite-hosts] [--no-multicast-route] [ADDR...]` then the
    /// arguments of `docker run`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 1.., required = true)]
    args: Vec<String>,
}

/// Arguments of `weave start`.
#[derive(Debug, Args)]
pub(crate) struct StartArgs {
    /// `[ADDR...] CONTAINER`.
    #[arg(required = true, num_args = 1..)]
    args: Vec<String>,
}

/// Arguments of `weave restart`.
#[derive(Debug, Args)]
pub(crate) struct RestartArgs {
    /// The container.
    container: String,
}

/// `docker ARGS` (the docker client, pointed at `--docker-api` if given); its stdout.
fn docker(global: &Global, args: &[String]) -> anyhow::Result<String> {
    let mut cmd = Command::new("docker");
    if let Some(api) = &global.docker_api {
        cmd.arg("-H").arg(api);
    }
    let out = cmd
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("running the docker client (is it installed?)")?;
    if !out.status.success() {
        bail!(
            "docker {} failed ({})",
            args.first().map_or("", String::as_str),
            out.status
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Leading address specs of `args`, and where the rest starts.
fn leading_specs(args: &[String]) -> (Vec<AddrSpec>, usize) {
    let mut specs = Vec::new();
    for (i, a) in args.iter().enumerate() {
        match a.parse::<AddrSpec>() {
            Ok(s) if a.contains('/') || a == "net:default" => specs.push(s),
            _ => return (specs, i),
        }
    }
    (specs, args.len())
}

/// `weave run`: `docker run -d` (with `WEAVE_CIDR=none`, so a proxy leaves it alone), then
/// attach the new container; prints its id.
pub(crate) fn run(global: &Global, args: RunArgs) -> anyhow::Result<ExitCode> {
    let mut rewrite_hosts = true;
    let mut multicast_route = true;
    let mut without_dns = false;
    let mut i = 0;
    while let Some(a) = args.args.get(i) {
        match a.as_str() {
            "--without-dns" => without_dns = true,
            "--with-dns" => without_dns = false,
            "--no-rewrite-hosts" => rewrite_hosts = false,
            "--no-multicast-route" => multicast_route = false,
            _ => break,
        }
        i += 1;
    }
    let (specs, n) = leading_specs(&args.args[i..]);
    let mut docker_args = vec![
        "run".to_owned(),
        "-e".to_owned(),
        "WEAVE_CIDR=none".to_owned(),
        "-d".to_owned(),
    ];
    docker_args.extend(args.args[i + n..].iter().cloned());
    let id = docker(global, &docker_args)?;
    runtime()?.block_on(attach_target(
        global,
        &id,
        &specs,
        AttachOptions {
            rewrite_hosts,
            add_hosts: &[],
            multicast_route,
            register_dns: !without_dns,
        },
    ))?;
    println!("{id}");
    Ok(ExitCode::SUCCESS)
}

/// `weave start [ADDR...] CONTAINER`: `docker start`, then attach; prints docker's output.
pub(crate) fn start(global: &Global, args: StartArgs) -> anyhow::Result<ExitCode> {
    let (specs, n) = leading_specs(&args.args);
    let [container] = &args.args[n..] else {
        bail!("usage: weave start [ADDR...] CONTAINER");
    };
    let out = docker(global, &["start".to_owned(), container.clone()])?;
    runtime()?.block_on(attach_target(
        global,
        container,
        &specs,
        AttachOptions::PLAIN,
    ))?;
    println!("{out}");
    Ok(ExitCode::SUCCESS)
}

/// `weave restart CONTAINER`: `docker restart`, then attach with the addresses it had (its
/// IPAM ident is its id, so IPAM gives the same ones back); prints docker's output.
pub(crate) fn restart(global: &Global, args: RestartArgs) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    let before = rt.block_on(async {
        let t = crate::target::resolve(global, &args.container).await?;
        weft_router::attach::ethwe_addresses(&t.netns).await
    })?;
    let out = docker(global, &["restart".to_owned(), args.container.clone()])?;
    let specs: Vec<AddrSpec> = before.iter().map(|c| AddrSpec::Address(*c)).collect();
    if !specs.is_empty() {
        let got = rt.block_on(attach_target(
            global,
            &args.container,
            &specs,
            AttachOptions::PLAIN,
        ))?;
        tracing::debug!("re-attached with {}", show_addrs(&got));
    }
    println!("{out}");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_arguments() {
        let args: Vec<String> = ["net:10.32.1.0/24", "10.32.2.5/24", "-p", "80:80", "img"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let (specs, n) = leading_specs(&args);
        assert_eq!(specs.len(), 2);
        assert_eq!(&args[n..], ["-p", "80:80", "img"]);
        // A bare word is docker's (an image name), never an address.
        let (specs, n) = leading_specs(&["busybox".to_owned()]);
        assert!(specs.is_empty());
        assert_eq!(n, 0);
    }
}
