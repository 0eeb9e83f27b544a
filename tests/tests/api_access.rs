//! Integration test (root, network namespaces): a local user other than root cannot change
//! the network through the HTTP API on 127.0.0.1:6784 (IPAM writes, expose/hide, connect and
//! forget, peer removal, consensus start, DNS writes), but can still read status, report and
//! metrics; root, as Weave's scripts call the API (`curl` to 127.0.0.1:6784), and the CLI keep
//! working.

use std::time::Duration;

use anyhow::ensure;
use weft_tests::local::{curl, nobody};
use weft_tests::{mesh, run_test};

#[test]
fn nobody_is_refused_every_change_and_still_reads() {
    run_test("apiacc", |net| {
        let h = net.host(1)?;
        h.launch_args(&["--nickname", "host1"])?;
        let c1 = h.container_alloc("c1", &["net:default"])?;
        let ident = c1.ns();
        let targets_before = mesh::targets(&h)?;
        let changes: [(&str, String, Option<&str>); 12] = [
            ("DELETE", format!("/ip/{ident}"), None),
            ("DELETE", format!("/ip/{ident}/{}", c1.ip()), None),
            ("POST", "/ip/evil".into(), None),
            ("POST", "/ip/evil/10.32.8.0/24".into(), None),
            ("PUT", "/ip/evil/10.32.9.9/12".into(), None),
            ("POST", "/expose/10.32.7.7/12".into(), None),
            ("DELETE", "/expose/10.32.7.7/12".into(), None),
            ("POST", "/connect".into(), Some("peer=192.0.2.99")),
            ("POST", "/forget".into(), Some("peer=192.0.2.99")),
            ("DELETE", "/peer".into(), None),
            ("DELETE", "/peer/host2".into(), None),
            ("GET", "/ring".into(), None),
        ];
        for (method, path, form) in &changes {
            let (code, body) = curl(&h, true, method, path, *form)?;
            ensure!(
                code == 403 && body.contains("only root"),
                "{method} {path} as nobody answered {code}: {body}"
            );
        }
        // A DNS write (weaveDNS's API) is refused the same way.
        let (code, _) = curl(
            &h,
            true,
            "PUT",
            "/name/c1/10.32.0.9",
            Some("fqdn=c1.weave.local"),
        )?;
        ensure!(code == 403, "PUT /name as nobody answered {code}");
        // Nothing changed: root's container keeps its address, nothing exposed, same targets,
        // IPAM still owns the range.
        let (code, body) = curl(&h, false, "GET", &format!("/ip/{ident}"), None)?;
        ensure!(
            code == 200 && body.contains(&c1.ip().to_string()),
            "{code} {body}"
        );
        let ps = h.weft_ok(&["ps", "weave:expose"])?;
        ensure!(!ps.contains("10.32.7.7"), "exposed by nobody: {ps}");
        ensure!(
            mesh::targets(&h)? == targets_before,
            "targets changed by nobody"
        );
        let st = h.weft_ok(&["status", "ipam"])?;
        ensure!(st.contains("100.0%"), "range handed away by nobody:\n{st}");
        // Reads stay open, through curl and through the CLI.
        for path in [
            "/status",
            "/status/ipam",
            "/report?format=%7B%7B.Router.Name%7D%7D",
            "/metrics",
            "/ip",
        ] {
            let (code, body) = curl(&h, true, "GET", path, None)?;
            ensure!(
                code == 200 && !body.is_empty(),
                "GET {path} as nobody: {code} {body}"
            );
        }
        let bin = net.weft_bin()?.display().to_string();
        let out = nobody(&h, &[bin.as_str(), "status"], Duration::from_secs(20))?;
        ensure!(
            out.success() && out.stdout.contains("Version"),
            "weft status as nobody: {out}"
        );
        let out = nobody(
            &h,
            &[bin.as_str(), "rmpeer", "--force", "host2"],
            Duration::from_secs(20),
        )?;
        ensure!(
            !out.success() && out.stderr.contains("only root"),
            "weft rmpeer as nobody: {out}"
        );
        // Root, the way Weave's scripts call it, and the CLI still change things.
        let (code, body) = curl(&h, false, "POST", "/ip/rootc", None)?;
        ensure!(
            code == 200 && body.starts_with("10.32."),
            "root POST /ip: {code} {body}"
        );
        let (code, body) = curl(&h, false, "DELETE", "/ip/rootc", None)?;
        ensure!(code == 204, "root DELETE /ip: {code} {body}");
        h.weft_ok(&["connect", "192.0.2.99"])?;
        ensure!(
            mesh::targets(&h)?
                .iter()
                .any(|t| t.starts_with("192.0.2.99"))
        );
        h.weft_ok(&["forget", "192.0.2.99"])?;
        let c2 = h.container_alloc("c2", &["net:default"])?;
        ensure!(c2.ip() != c1.ip());
        h.weft_ok(&["detach", c1.ns()])?;
        Ok(())
    });
}
