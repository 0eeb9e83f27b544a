//! Integration tests (root, network namespaces): three hosts in a full mesh.

use std::time::Duration;

use anyhow::ensure;
use weft_tests::{run_test, status::parse_connections};

#[test]
fn three_hosts_full_mesh() {
    run_test("three", |net| {
        let (hosts, ctrs) = net.mesh(3)?;
        // Every ordered container pair pings.
        for a in &ctrs {
            for b in &ctrs {
                if a.ns() != b.ns() {
                    a.wait_ping(b.ip(), Duration::from_secs(20))?;
                }
            }
        }
        // And every host reports both of its connections established, to the other two.
        for h in &hosts {
            let text = h.weft_ok(&["status", "connections"])?;
            let conns = parse_connections(&text);
            ensure!(
                conns.len() == 2 && conns.iter().all(|c| c.state == "established"),
                "host {}: expected 2 established connections, got:\n{text}",
                h.n()
            );
            for other in hosts.iter().filter(|o| o.n() != h.n()) {
                let ip = other.addr().to_string();
                ensure!(
                    conns
                        .iter()
                        .any(|c| c.address.split(':').next() == Some(ip.as_str())),
                    "host {}: no connection with host {} ({ip}):\n{text}",
                    h.n(),
                    other.n()
                );
            }
            // The JSON view knows the other two peers.
            let v = h.status_json()?;
            for other in hosts.iter().filter(|o| o.n() != h.n()) {
                let name = other.peer_name()?;
                let known = v["peers"]
                    .as_array()
                    .is_some_and(|ps| ps.iter().any(|p| p["name"] == name.as_str()));
                ensure!(
                    known,
                    "host {}: peer {name} missing from {}",
                    h.n(),
                    v["peers"]
                );
            }
        }
        Ok(())
    });
}
