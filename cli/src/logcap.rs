//! Layer: driver. The daemon log's cap: `weft launch` starts the router with its output going
//! to `<run-dir>/weft.log`; once that file passes [`MAX_LOG`] it becomes `weft.log.1`
//! (replacing the previous one) and the router writes to a fresh `weft.log`. So the log never
//! takes more than about twice [`MAX_LOG`], whatever floods it (its repeated lines are also
//! rate-limited at the source).

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Size at which the log is rotated.
pub(crate) const MAX_LOG: u64 = 10 << 20;
/// How often the running router checks its log's size.
const CHECK_EVERY: Duration = Duration::from_secs(2);

/// `weft.log.1` for `weft.log`.
pub(crate) fn rotated(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".1");
    path.with_file_name(name)
}

/// Moves `path` to `<path>.1` if it is larger than `max`. Returns whether it did.
pub(crate) fn rotate_if_large(path: &Path, max: u64) -> std::io::Result<bool> {
    match std::fs::metadata(path) {
        Ok(m) if m.len() > max => {
            std::fs::rename(path, rotated(path))?;
            Ok(true)
        }
        Ok(_) => Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// In the router (whose stdout and stderr are `path`): rotates the log when it passes
/// [`MAX_LOG`] and points stdout and stderr at the fresh file. Runs on its own thread.
pub(crate) fn spawn(path: PathBuf) {
    let shown = path.display().to_string();
    let spawned = std::thread::Builder::new()
        .name("log-cap".into())
        .spawn(move || {
            loop {
                std::thread::sleep(CHECK_EVERY);
                if let Err(e) = rotate(&path) {
                    tracing::warn!("rotating {}: {e}", path.display());
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot watch the size of {shown}: {e}");
    }
}

fn rotate(path: &Path) -> std::io::Result<()> {
    if !rotate_if_large(path, MAX_LOG)? {
        return Ok(());
    }
    let fresh = OpenOptions::new().create(true).append(true).open(path)?;
    nix::unistd::dup2_stdout(&fresh)?;
    nix::unistd::dup2_stderr(&fresh)?;
    tracing::info!(
        "log rotated: the previous {} MiB are in {}",
        MAX_LOG >> 20,
        rotated(path).display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_only_past_the_cap() {
        let dir = std::env::temp_dir().join(format!("weft-logcap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("weft.log");
        assert!(!rotate_if_large(&log, 10).unwrap(), "no log yet");
        std::fs::write(&log, b"0123456789").unwrap();
        assert!(!rotate_if_large(&log, 10).unwrap());
        std::fs::write(&log, b"0123456789a").unwrap();
        assert!(rotate_if_large(&log, 10).unwrap());
        assert!(!log.exists());
        assert_eq!(
            std::fs::read(dir.join("weft.log.1")).unwrap(),
            b"0123456789a"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
