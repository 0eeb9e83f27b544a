//! Fuzz the weaveDNS query path: `weft_dns::Responder::decide` on arbitrary datagrams against a
//! table of names, then, for a query it forwards, `Forward::relay` on arbitrary upstream
//! replies. Checks: no panic; a reply carries the query's id and fits the transport (4096
//! bytes over UDP, 65535 over TCP); a relayed reply too; the names are untouched.
//!
//! Input layout: byte 0 picks the transport (bit 0) and the shuffle seed; bytes 1..3 are the
//! query's length (big endian, clamped); the query follows, then the upstream's reply.
#![no_main]

use std::net::Ipv4Addr;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use weft_dns::query::{Decision, MAX_TCP, MAX_UDP, Transport};
use weft_dns::{Names, Now, Responder};
use weft_mesh::{Instant, PeerName};

fuzz_target!(|data: &[u8]| {
    let [flags, hi, lo, rest @ ..] = data else {
        return;
    };
    let now = Now {
        mono: Instant::from_duration(Duration::from_secs(5)),
        unix: 1_700_000_000,
    };
    let local = PeerName::new(0x0200_0000_0001).expect("48-bit");
    let mut names = Names::new(local, "weave.local.", now).expect("valid domain");
    for i in 0..40u8 {
        let host = if i < 30 { "many.weave.local" } else { "one.weave.local" };
        names
            .add(now, host, &format!("c{i}"), Ipv4Addr::new(10, 32, 1, i))
            .expect("valid entry");
    }
    while names.poll_transmit().is_some() {}
    let before: Vec<_> = names.entries().cloned().collect();
    let split = (usize::from(*hi) << 8 | usize::from(*lo)).min(rest.len());
    let (query, reply) = rest.split_at(split);
    let transport = if flags & 1 == 0 { Transport::Udp } else { Transport::Tcp };
    let limit = if transport == Transport::Udp { MAX_UDP } else { MAX_TCP };
    match Responder::new(1).decide(&names, query, transport, u64::from(*flags)) {
        Decision::Reply(r) => {
            assert!(r.bytes.len() >= 12 && r.bytes.len() <= limit, "reply of {} bytes", r.bytes.len());
            assert_eq!(r.bytes[..2], query[..2], "reply under another id");
            assert!(r.bytes[2] & 0x80 != 0, "reply without QR");
        }
        Decision::Forward(f) => {
            let up = f.upstream_query(0x5a5a);
            assert_eq!(up.len(), query.len());
            if let Ok(out) = f.relay(0x5a5a, reply) {
                assert!(out.len() <= limit, "relayed {} bytes", out.len());
                assert_eq!(out[..2], query[..2], "relayed under another id");
            }
            let sf = f.servfail();
            assert_eq!(sf[..2], query[..2]);
        }
        Decision::Drop => {}
    }
    let after: Vec<_> = names.entries().cloned().collect();
    assert_eq!(before, after, "a query changed the names");
});
