//! Integration test (root, network namespaces): an address configured by hand on a second
//! container, already held by another one on the bridge, is found from the ARP traffic (the
//! second container's gratuitous ARP, then the bridge's probe answered by both) and reported:
//! in `weft status ipam`, in `/metrics` and in the log. Containers attached normally (each
//! announcing its own address) are not reported.

use std::time::Duration;

use anyhow::ensure;
use weft_tests::cmd::{ip, ns_exec};
use weft_tests::local::curl;
use weft_tests::{run_test, wait_until};

/// Sends one gratuitous ARP for `addr` out of `ethwe` in `ns`.
const GARP: &str = r#"
import socket, sys
ip = socket.inet_aton(sys.argv[1])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
s.bind(("ethwe", 0))
mac = s.getsockname()[4]
s.send(b"\xff" * 6 + mac + b"\x08\x06" + b"\x00\x01\x08\x00\x06\x04\x00\x01"
       + mac + ip + b"\x00" * 6 + ip)
"#;

#[test]
fn an_address_on_two_containers_is_reported() {
    run_test("arpdup", |net| {
        let h = net.host(1)?;
        h.launch_args(&["--nickname", "host1"])?;
        let c1 = h.container_alloc("c1", &["net:default"])?;
        let c2 = h.container_alloc("c2", &["net:default"])?;
        c1.wait_ping(c2.ip(), Duration::from_secs(10))?;
        // Normal attaches (each announcing its address) are not conflicts.
        std::thread::sleep(Duration::from_secs(2));
        let st = h.weft_ok(&["status", "ipam"])?;
        ensure!(
            !st.contains("Duplicate"),
            "reported without a duplicate:\n{st}"
        );
        // c2 takes c1's address by hand and announces it.
        ip(["-n", c2.ns(), "addr", "add", c1.cidr(), "dev", "ethwe"])?;
        let addr = c1.ip().to_string();
        ns_exec(
            c2.ns(),
            ["python3", "-c", GARP, addr.as_str()],
            Duration::from_secs(10),
        )?
        .ok()?;
        wait_until(
            "the duplicate to be reported",
            Duration::from_secs(15),
            Duration::from_millis(200),
            || {
                let st = h.weft_ok(&["status", "ipam"])?;
                ensure!(st.contains(&format!("Duplicate: {addr} ")), "{st}");
                Ok(())
            },
        )?;
        let (_, metrics) = curl(&h, false, "GET", "/metrics", None)?;
        ensure!(
            metrics.contains("weft_ipam_duplicates_total 1"),
            "metrics:\n{metrics}"
        );
        let m1 = c1.mac()?;
        let m2 = c2.mac()?;
        let log = h.log();
        let line = log
            .lines()
            .find(|l| l.contains(&format!("duplicate address {addr}")))
            .unwrap_or_default();
        ensure!(
            line.contains(&m1) && line.contains(&m2),
            "the log does not name both MACs ({m1}, {m2}): {line:?}"
        );
        Ok(())
    });
}
