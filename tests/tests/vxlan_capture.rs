//! Integration tests (root, network namespaces): weft's data packets on the underlay are real
//! VXLAN as tshark decodes it: UDP 6784, VNI = src short id | dst short id << 12, and the inner
//! frame is the container's own (its ethwe MAC, ICMP inside).

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use weft_tests::{Cmd, cmd, run_test, wait_until};

/// One captured packet: tab-separated tshark fields, each possibly "outer,inner".
#[derive(Debug)]
struct Captured {
    ip_src: Vec<String>,
    vni: Option<u32>,
    eth_src: Vec<String>,
    ip_proto: Vec<String>,
    icmp_type: Vec<String>,
    line: String,
}

const FIELDS: [&str; 7] = [
    "ip.src",
    "ip.dst",
    "udp.dstport",
    "vxlan.vni",
    "eth.src",
    "ip.proto",
    "icmp.type",
];

fn parse_line(line: &str) -> Captured {
    let cols: Vec<&str> = line.split('\t').collect();
    let list = |i: usize| -> Vec<String> {
        cols.get(i)
            .map(|c| {
                c.split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| s.to_ascii_lowercase())
                    .collect()
            })
            .unwrap_or_default()
    };
    Captured {
        ip_src: list(0),
        vni: cols
            .get(3)
            .and_then(|v| v.split(',').next()?.trim().parse().ok()),
        eth_src: list(4),
        ip_proto: list(5),
        icmp_type: list(6),
        line: line.to_owned(),
    }
}

#[test]
fn underlay_packets_decode_as_vxlan() {
    run_test("vxlan", |net| {
        let p = net.pair()?;
        let (sid1, sid2) = (u32::from(p.h1.short_id()?), u32::from(p.h2.short_id()?));
        ensure!(
            sid1 < 4096 && sid2 < 4096,
            "short ids out of range: {sid1} {sid2}"
        );
        let (mac1, mac2) = (p.c1.mac()?, p.c2.mac()?);
        let out = net.dir().join("tshark.out");
        let err = net.dir().join("tshark.err");
        let mut tshark_cmd = Cmd::new("ip").args([
            "netns",
            "exec",
            net.underlay_ns(),
            "tshark",
            "-l",
            "-n",
            "-i",
            &p.h1.underlay_port(),
            "-f",
            "udp port 6784",
            "-d",
            "udp.port==6784,vxlan",
            "-a",
            "duration:60",
            "-c",
            "1000",
            "-T",
            "fields",
            "-E",
            "separator=/t",
        ]);
        for f in FIELDS {
            tshark_cmd = tshark_cmd.args(["-e", f]);
        }
        let mut tshark = tshark_cmd.spawn_to(&out, &err)?;
        let capture = (|| -> Result<String> {
            wait_until(
                "tshark to start capturing",
                Duration::from_secs(30),
                Duration::from_millis(100),
                || {
                    let e = std::fs::read_to_string(&err).unwrap_or_default();
                    if e.contains("Capturing on") {
                        return Ok(());
                    }
                    if let Some(st) = tshark.try_wait()? {
                        bail!("tshark exited early with {st}: {e}");
                    }
                    bail!("not yet: {e}")
                },
            )?;
            let s = p.c1.ping(p.c2.ip(), 10, 0.2)?;
            ensure!(
                s.received >= 8,
                "only {}/10 pings answered during capture",
                s.received
            );
            // ip netns exec execs tshark, so this pid is tshark itself: SIGINT makes it flush.
            cmd::kill(tshark.id(), "INT")?;
            wait_until(
                "tshark to exit",
                Duration::from_secs(15),
                Duration::from_millis(50),
                || tshark.try_wait()?.context("running"),
            )?;
            Ok(std::fs::read_to_string(&out)?)
        })();
        let _ = tshark.kill();
        let _ = tshark.wait();
        let text = capture?;
        let pkts: Vec<Captured> = text
            .lines()
            .filter(|l| !l.is_empty())
            .map(parse_line)
            .collect();
        ensure!(
            !pkts.is_empty(),
            "tshark captured nothing; stderr: {}",
            std::fs::read_to_string(&err)?
        );
        let icmp: Vec<&Captured> = pkts
            .iter()
            .filter(|c| c.ip_proto.len() >= 2 && c.ip_proto[1] == "1")
            .collect();
        let (h1, h2) = (p.h1.addr().to_string(), p.h2.addr().to_string());
        let check = |from: &str, vni: u32, mac: &str, icmp_type: &str| {
            icmp.iter()
                .filter(|c| {
                    c.ip_src.first().map(String::as_str) == Some(from)
                        && c.icmp_type.first().map(String::as_str) == Some(icmp_type)
                })
                .map(|c| {
                    if c.vni != Some(vni) || c.eth_src.get(1).map(String::as_str) != Some(mac) {
                        bail!(
                            "packet from {from} has vni {:?} (want {vni}) and inner eth src {:?} \
                             (want {mac}): {}",
                            c.vni,
                            c.eth_src.get(1),
                            c.line
                        );
                    }
                    Ok(())
                })
                .collect::<Result<Vec<()>>>()
                .map(|v| v.len())
        };
        let requests = check(&h1, sid1 | (sid2 << 12), &mac1, "8")?;
        let replies = check(&h2, sid2 | (sid1 << 12), &mac2, "0")?;
        ensure!(
            requests >= 8 && replies >= 8,
            "expected ≥8 VXLAN-decoded echo requests and replies, got {requests} and {replies}; \
             capture:\n{}",
            cmd::tail(&text, 40)
        );
        Ok(())
    });
}
