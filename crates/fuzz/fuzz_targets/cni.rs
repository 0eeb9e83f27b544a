//! Fuzz the CNI plugins' input parsing (`weft_cni`) on what a container runtime may pass: a
//! network configuration on stdin, a result (an IPAM plugin's answer, a `prevResult`), and the
//! `CNI_*` environment. Checks: no panic; an accepted configuration's `prevResult` written in
//! its version parses back to the same result; an error always has a code and prints as JSON.
//!
//! Input layout: the bytes are tried whole as a configuration and as a result; then split at
//! each newline into `KEY=VALUE` lines for the environment.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_cni::conf::{NetConf, peek_version};
use weft_cni::env::Invocation;
use weft_cni::plan;
use weft_cni::result::CniResult;

fuzz_target!(|data: &[u8]| {
    let version = peek_version(data);
    match NetConf::parse(data) {
        Ok(conf) => {
            if let Some(prev) = &conf.prev_result {
                let again = CniResult::parse(&prev.to_json(conf.version)).expect("re-parse");
                assert_eq!(again.ips, prev.ips);
                assert_eq!(again.routes, prev.routes);
            }
            if let Some(valid) = &conf.valid_attachments {
                let id = plan::ident(&conf.name, "c1", "eth0");
                let _ = plan::gc_releases([id.as_str()], &conf.name, valid);
            }
        }
        Err(e) => {
            let j = e.to_json(version);
            assert!(j["code"].as_u64().is_some_and(|c| c > 0));
        }
    }
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Ok(r) = CniResult::parse(&v) {
            for ip in &r.ips {
                if let ipnet::IpNet::V4(a) = ip.address {
                    let _ = plan::routes(a, None, &r.routes);
                }
            }
        }
    }
    let text = String::from_utf8_lossy(data);
    let lines: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .collect();
    let _ = Invocation::from_vars(|name| {
        lines
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    });
    let _ = plan::parse_ident(&text);
});
