//! Fuzz the proxy's Docker API logic (`weft_dockerapi`) on what a Docker client or daemon may
//! send: event streams cut into arbitrary chunks, create/exec/inspect bodies, WEAVE_CIDR values
//! and request paths, and network plugin calls (first line the path, the rest the body). Checks: no panic; the event splitter never grows its buffer without
//! bound; a create body that rewrites successfully runs the waiter first and mounts it.
//!
//! Input layout: byte 0 is flags (bit 0: --no-default-ipalloc); the rest is split at each 0xff
//! byte into the chunks of one event stream, and the whole rest is also tried as one JSON body,
//! one WEAVE_CIDR value and one request line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use weft_dockerapi::{events, plugin, rewrite, route};

fuzz_target!(|data: &[u8]| {
    let [flags, rest @ ..] = data else {
        return;
    };
    let no_default = flags & 1 == 1;

    let mut buf = Vec::new();
    let mut values = Vec::new();
    for chunk in rest.split(|&b| b == 0xff) {
        buf.extend_from_slice(chunk);
        values.extend(events::split_json_stream(&mut buf));
        assert!(buf.len() <= rest.len());
    }
    if let Ok(v) = serde_json::from_slice::<Value>(rest) {
        values.push(v);
    }
    for v in values {
        let _ = rewrite::decide(&v, no_default);
        let _ = rewrite::decide_inspected(&v, no_default);
        let _ = rewrite::needs_image(&v);
        let mut body = v.clone();
        if rewrite::rewrite_create(&mut body, Some(&v), "/wd").is_ok() {
            assert_eq!(body["Entrypoint"][0], rewrite::WAITER);
            let binds = body["HostConfig"]["Binds"].as_array().expect("binds list");
            assert!(binds.iter().any(|b| b == "/wd:/w:ro"));
        }
        let mut nomcast = v.clone();
        if rewrite::rewrite_create_with(&mut nomcast, Some(&v), "/wd", false).is_ok() {
            assert_eq!(nomcast["Entrypoint"][0], rewrite::WAITER_NOMCAST);
            let inspected =
                serde_json::json!({ "Config": { "Entrypoint": nomcast["Entrypoint"] } });
            assert_eq!(
                rewrite::waiter_of(&inspected),
                Some(rewrite::WAITER_NOMCAST)
            );
        }
        let _ = rewrite::waiter_of(&v);
        let mut exec = v.clone();
        rewrite::rewrite_exec(&mut exec);
        rewrite::rewrite_exec_with(&mut exec, rewrite::WAITER_NOMCAST);
        let mut inspect = v;
        rewrite::rewrite_inspect(&mut inspect, "10.32.1.1/24".parse().expect("cidr"), [2; 6]);
        if inspect.is_object() {
            assert_eq!(inspect["NetworkSettings"]["IPAddress"], "10.32.1.1");
        }
    }

    let text = String::from_utf8_lossy(rest);
    let _ = weft_ipam::spec::parse_specs(&text);
    let (method, path) = text.split_once(' ').unwrap_or(("GET", &text));
    let _ = route::classify(method, path);
    // The network plugin protocol: the first line as the call's path, the rest as its body.
    let (call, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (String::from_utf8_lossy(&rest[..i]).into_owned(), &rest[i + 1..]),
        None => (String::new(), rest),
    };
    if let Ok(plugin::Call::RequestAddress { pool, .. }) = plugin::parse(&call, body) {
        assert_eq!(
            plugin::parse_pool_id(&plugin::pool_id(pool.subnet, pool.range)),
            Ok(pool)
        );
    }
    let _ = plugin::parse_pool_id(&text);
    let _ = plugin::multicast_option(&serde_json::from_slice(rest).unwrap_or_default());
});
