//! Integration tests (root, network namespaces): the binary answers to the name `weave`.

use anyhow::{Context, ensure};
use weft_tests::run_test;

#[test]
fn weave_symlink_behaves_like_weft() {
    run_test("alias", |net| {
        let h = net.host(1)?;
        let weave = net.dir().join("weave");
        std::os::unix::fs::symlink(net.weft_bin()?, &weave)?;
        // Launch through the alias, then ask both names.
        h.weft_cmd_with(&weave, &["launch"])?.run_ok()?;
        let name = h.peer_name()?;
        let via_weave = h.weft_cmd_with(&weave, &["status"])?.run_ok()?.stdout;
        let via_weft = h.weft_ok(&["status"])?;
        ensure!(
            via_weave.contains(&name) && via_weft.contains(&name),
            "peer name {name} missing from `weave status`:\n{via_weave}\nor `weft status`:\n{via_weft}"
        );
        let json = h
            .weft_cmd_with(&weave, &["status", "--json"])?
            .run_ok()?
            .stdout;
        let v: serde_json::Value = serde_json::from_str(&json)
            .with_context(|| format!("`weave status --json`: {json}"))?;
        ensure!(
            v["name"] == name.as_str(),
            "weave status --json name {} != {name}",
            v["name"]
        );
        // Lines common to both outputs must agree (counters may move in between).
        let first = |s: &str| s.lines().next().unwrap_or("").to_owned();
        ensure!(first(&via_weave) == first(&via_weft), "first lines differ");
        h.weft_cmd_with(&weave, &["stop"])?.run_ok()?;
        Ok(())
    });
}
