//! Layer: driver. `weft logs` (what `docker logs weave` was): the daemon's log wherever it goes.
//!
//! The daemon notes where its output goes in `<run-dir>/log-where` when it starts
//! ([`Where::record`]): the journal of its systemd unit (`launch --foreground` under systemd),
//! `<run-dir>/weft.log` (the launch verbs' background daemon), or the standard error of a
//! foreground daemon outside systemd (a terminal or another supervisor, which keeps it). The
//! note outlives the daemon, so the log of one that died can still be read.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

use crate::Global;

/// The note's file name in the run directory.
const NOTE: &str = "log-where";

/// Where the daemon's log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Where {
    /// The journal, under this unit.
    Journal(String),
    /// This file.
    File(PathBuf),
    /// The standard error of the daemon with this pid.
    Stderr(u32),
}

impl Where {
    fn to_line(&self) -> String {
        match self {
            Self::Journal(unit) => format!("journal {unit}"),
            Self::File(path) => format!("file {}", path.display()),
            Self::Stderr(pid) => format!("stderr {pid}"),
        }
    }

    fn parse(line: &str) -> Option<Self> {
        let (kind, rest) = line.trim().split_once(' ')?;
        match kind {
            "journal" => Some(Self::Journal(rest.to_owned())),
            "file" => Some(Self::File(PathBuf::from(rest))),
            "stderr" => rest.parse().ok().map(Self::Stderr),
            _ => None,
        }
    }

    /// Notes this in `run_dir` (a failure is only logged: the daemon runs anyway).
    pub(crate) fn record(&self, run_dir: &Path) {
        let path = run_dir.join(NOTE);
        let line = format!("{}\n", self.to_line());
        let written = std::fs::create_dir_all(run_dir)
            .and_then(|()| weft_router::identity::write_atomic(&path, line.as_bytes()));
        if let Err(e) = written {
            tracing::warn!("writing {}: {e}", path.display());
        }
    }

    /// What the daemon for `run_dir` noted; else its log file, if there is one.
    fn find(run_dir: &Path) -> Option<Self> {
        let noted = std::fs::read_to_string(run_dir.join(NOTE))
            .ok()
            .and_then(|t| Self::parse(&t));
        noted.or_else(|| {
            let file = run_dir.join(crate::daemon::LOG_FILE);
            file.exists().then_some(Self::File(file))
        })
    }
}

/// Arguments of `weft logs`.
#[derive(Debug, Args)]
pub(crate) struct LogsArgs {
    /// Keep printing lines as they are written.
    #[arg(short, long)]
    follow: bool,
    /// Only the last N lines.
    #[arg(short = 'n', long, value_name = "N")]
    tail: Option<usize>,
}

/// `weft logs [-f] [--tail N]`.
pub(crate) fn logs(global: &Global, args: LogsArgs) -> anyhow::Result<ExitCode> {
    match Where::find(&global.run_dir) {
        Some(Where::Journal(unit)) => {
            let mut cmd = std::process::Command::new("journalctl");
            cmd.args(["--no-pager", "-u", &unit]);
            if let Some(n) = args.tail {
                cmd.arg(format!("--lines={n}"));
            }
            if args.follow {
                cmd.arg("--follow");
            }
            let status = cmd
                .status()
                .with_context(|| format!("running journalctl for {unit}"))?;
            Ok(if status.success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Some(Where::File(path)) => {
            print_file(&path, args.tail, args.follow)?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Where::Stderr(pid)) => bail!(
            "the weft daemon (pid {pid}) was launched with --foreground outside systemd: its log \
             is its standard error, kept by whatever started it"
        ),
        None => bail!(
            "no weft log for {}: weft has not run here (launch it, or systemctl start weft)",
            global.run_dir.display()
        ),
    }
}

/// Prints the file (its last `tail` lines), preceded by the part rotated away from it
/// (`<path>.1`, see [`crate::logcap`]), then, with `follow`, what is appended to it.
fn print_file(path: &Path, tail: Option<usize>, follow: bool) -> anyhow::Result<()> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let (text, before) = with_rotated(path, &mut f)?;
    let start = match tail {
        None => 0,
        Some(n) => last_lines_start(&text, n),
    };
    let mut out = std::io::stdout().lock();
    out.write_all(&text[start..])?;
    out.flush()?;
    if !follow {
        return Ok(());
    }
    let mut pos = (text.len() - before) as u64;
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let len = std::fs::metadata(path).map_or(0, |m| m.len());
        if len < pos {
            // Truncated or replaced: start over from its beginning.
            f = std::fs::File::open(path)?;
            pos = 0;
        }
        f.seek(SeekFrom::Start(pos))?;
        let mut more = Vec::new();
        f.read_to_end(&mut more)?;
        pos += more.len() as u64;
        out.write_all(&more)?;
        out.flush()?;
    }
}

/// The rotated part of the log at `path` (if any) followed by `f`, the open log, read to its
/// end; and the rotated part's length.
fn with_rotated(path: &Path, f: &mut std::fs::File) -> std::io::Result<(Vec<u8>, usize)> {
    let mut text = std::fs::read(crate::logcap::rotated(path)).unwrap_or_default();
    let before = text.len();
    f.read_to_end(&mut text)?;
    Ok((text, before))
}

/// Where the last `n` lines of `text` start.
fn last_lines_start(text: &[u8], n: usize) -> usize {
    if n == 0 {
        return text.len();
    }
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    body.iter()
        .enumerate()
        .rev()
        .filter(|(_, b)| **b == b'\n')
        .nth(n - 1)
        .map_or(0, |(i, _)| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_round_trip() {
        for w in [
            Where::Journal("weft.service".into()),
            Where::File("/run/weft/weft.log".into()),
            Where::Stderr(42),
        ] {
            assert_eq!(Where::parse(&w.to_line()), Some(w));
        }
        assert_eq!(Where::parse("carrier pigeon"), None);
    }

    #[test]
    fn a_rotated_log_comes_first() {
        let dir = std::env::temp_dir().join(format!("weft-logs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("weft.log");
        std::fs::write(&log, b"new\n").unwrap();
        let read = |log: &Path| with_rotated(log, &mut std::fs::File::open(log).unwrap()).unwrap();
        assert_eq!(read(&log), (b"new\n".to_vec(), 0));
        std::fs::write(dir.join("weft.log.1"), b"old\n").unwrap();
        assert_eq!(read(&log), (b"old\nnew\n".to_vec(), 4));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tails() {
        let t = b"a\nb\nc\n";
        assert_eq!(&t[last_lines_start(t, 2)..], b"b\nc\n");
        assert_eq!(&t[last_lines_start(t, 9)..], t);
        assert_eq!(&t[last_lines_start(t, 0)..], b"");
        assert_eq!(&b"a\nb"[last_lines_start(b"a\nb", 1)..], b"b");
    }
}
