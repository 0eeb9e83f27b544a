//! The README's first two commands (issue 15), as a new user runs them: from a fresh `git
//! clone` of this commit.
//!
//! The first, `.ci/demo`, runs in the clone within a time bound: it installs what the demo
//! needs (nothing, where CI installed it already), builds weft and the demo in release mode and
//! runs the demo with Docker (root, network namespaces), which must succeed and print its ping
//! matrix (every container answering every other), the master's HTTP checks answered and `weft
//! status`. To keep CI within its time, the clone builds into this build's target directory
//! (`CARGO_TARGET_DIR`): the dependencies are reused, the workspace is compiled from the
//! clone's sources. The second command is `.ci/run`, which is what CI itself runs from its own
//! fresh clone (running it again from here would run this test again).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use weft_tests::cmd::Cmd;
use weft_tests::run_test;

/// The demo from a clone: build (dependencies reused) and run.
const BOUND: Duration = Duration::from_secs(25 * 60);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The commands of the README's first `sh` block, comments cut off.
fn readme_commands() -> Result<Vec<String>> {
    let text = std::fs::read_to_string(repo().join("README.md"))?;
    let block = text
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .context("no ```sh block in README.md")?;
    Ok(block
        .lines()
        .map(|l| l.split(" #").next().unwrap_or("").trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect())
}

#[test]
fn the_first_two_lines_are_the_demo_and_ci() -> Result<()> {
    let cmds = readme_commands()?;
    ensure!(
        text_starts_with_block()?,
        "README.md must start with the commands"
    );
    ensure!(cmds.len() >= 2, "{cmds:?}");
    ensure!(cmds[0] == ".ci/demo", "first command: {:?}", cmds[0]);
    ensure!(cmds[1] == ".ci/run", "second command: {:?}", cmds[1]);
    for script in ["demo", "run", "install"] {
        let meta = std::fs::metadata(repo().join(".ci").join(script))?;
        use std::os::unix::fs::PermissionsExt;
        ensure!(
            meta.permissions().mode() & 0o111 != 0,
            ".ci/{script} is not executable"
        );
    }
    Ok(())
}

fn text_starts_with_block() -> Result<bool> {
    Ok(std::fs::read_to_string(repo().join("README.md"))?.starts_with("```sh\n"))
}

#[test]
fn the_demo_runs_from_a_fresh_clone() {
    run_test("readme", |net| {
        let cmds = readme_commands()?;
        let head = Cmd::new("git")
            .arg("-C")
            .arg(repo())
            .args(["rev-parse", "HEAD"])
            .run_ok()?
            .stdout;
        let clone = net.dir().join("clone");
        Cmd::new("git")
            .args(["clone", "--quiet", "--no-checkout"])
            .arg(repo())
            .arg(&clone)
            .timeout(Duration::from_secs(120))
            .run_ok()?;
        Cmd::new("git")
            .arg("-C")
            .arg(&clone)
            .args(["checkout", "--quiet", head.trim()])
            .run_ok()?;
        let target = weft_tests::net::target_dir().context("no cargo target directory")?;
        let out = Cmd::new("sh")
            .args(["-c", &format!("cd '{}' && {}", clone.display(), cmds[0])])
            .env("CARGO_TARGET_DIR", &target)
            .timeout(BOUND)
            .run()?;
        eprintln!("{} took {:.0?}", cmds[0], out.elapsed);
        let out = out.ok()?;
        let text = &out.stdout;
        ensure!(
            text.contains("ping matrix") && text.contains("$ weft status"),
            "the demo did not show its ping matrix and status:\n{text}"
        );
        // Every cell of the matrix: 3/3 replies (the diagonal is a dash).
        let cells: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("ping matrix"))
            .take_while(|l| !l.starts_with("$ weft expose"))
            .filter(|l| l.starts_with("| ") && !l.starts_with("| from"))
            .flat_map(|l| l.split('|').skip(2))
            .map(str::trim)
            .filter(|c| !c.is_empty() && *c != "–")
            .collect();
        ensure!(cells.len() == 6, "ping matrix cells {cells:?} in:\n{text}");
        ensure!(
            cells.iter().all(|c| c.starts_with("3/3")),
            "not every container answered every other: {cells:?}"
        );
        ensure!(
            !text.contains("NO answer"),
            "the master's HTTP check failed:\n{text}"
        );
        Ok(())
    });
}
