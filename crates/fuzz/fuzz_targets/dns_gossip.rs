//! Fuzz weaveDNS gossip: `weft_dns::Names::handle_message` on arbitrary payloads from a peer.
//! Checks: no panic; this peer's own live entries are still there and still live afterwards
//! (gossip may add others' entries, never delete ours); the table stays within its bound.
//!
//! Input layout: byte 0 picks the sender (peer 2, 3, or ourselves as a forgery); the rest is
//! split at each 0xfe byte into several payloads.
#![no_main]

use std::net::Ipv4Addr;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use weft_dns::{Names, Now};
use weft_mesh::{Instant, PeerName};

fuzz_target!(|data: &[u8]| {
    let [who, rest @ ..] = data else {
        return;
    };
    let name = |v: u64| PeerName::new(0x0200_0000_0000 + v).expect("48-bit");
    let mut now = Now {
        mono: Instant::from_duration(Duration::from_secs(5)),
        unix: 1_700_000_000,
    };
    let mut names = Names::new(name(1), "weave.local.", now).expect("valid domain");
    for i in 0..5u8 {
        names
            .add(now, &format!("h{i}.weave.local"), "c", Ipv4Addr::new(10, 32, 0, i))
            .expect("valid entry");
    }
    let from = name(1 + u64::from(who % 3));
    for payload in rest.split(|b| *b == 0xfe) {
        let _ = names.handle_message(now, from, payload);
        now.mono = now.mono + Duration::from_secs(7);
        names.handle_timeout(now);
        while names.poll_transmit().is_some() {}
    }
    for i in 0..5u8 {
        // Others may register the same name; ours must still be among the answers.
        let got = names.lookup(&format!("h{i}.weave.local"));
        assert!(got.contains(&Ipv4Addr::new(10, 32, 0, i)), "own entry h{i} lost: {got:?}");
    }
    assert!(names.len() <= weft_dns::names::MAX_ENTRIES);
});
