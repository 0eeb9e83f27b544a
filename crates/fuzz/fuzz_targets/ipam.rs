//! Fuzz `weft_ipam::Ipam::handle_message`: arbitrary payloads from a peer to an initialised
//! IPAM that has allocations and claims. Checks: no panic, and every allocation made before is
//! still there afterwards (a message may cost us free space, never an address in use; one in a
//! range a message gave to another peer is kept and asked back).
//!
//! Input layout: byte 0 picks the sender (peer 2, 3 or an unknown one) and whether a timeout
//! runs between messages; the rest is split at each 0xfe byte into several payloads.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use weft_ipam::{InitMode, Ipam, IpamConfig};
use weft_mesh::{Instant, PeerName};

fuzz_target!(|data: &[u8]| {
    let [flags, rest @ ..] = data else {
        return;
    };
    let name = |v: u64| PeerName::new(0x0200_0000_0000 + v).expect("48-bit");
    let config = IpamConfig {
        universe: "10.32.0.0/24".parse().expect("cidr"),
        default_subnet: "10.32.0.0/24".parse().expect("cidr"),
        init: InitMode::Seed(vec![name(1), name(2)]),
    };
    let universe = config.universe;
    let mut now = Instant::ZERO;
    let mut ipam = Ipam::new(name(1), "one".into(), config, 7, now).expect("valid config");
    ipam.peers_changed(now, &[name(2), name(3)], &[name(2)]);
    for k in 0..5 {
        ipam.allocate(now, &format!("c{k}"), None);
    }
    ipam.claim(now, "claimed", "10.32.0.100/24".parse().expect("cidr"));
    ipam.claim(now, "outside", "192.168.0.1/24".parse().expect("cidr"));
    store(&mut ipam, now);
    while ipam.poll_event().is_some() {}
    while ipam.poll_transmit().is_some() {}
    let before = ipam.owned();
    assert_eq!(before.len(), 7);
    let from = name(2 + u64::from(flags % 3));
    for payload in rest.split(|b| *b == 0xfe) {
        let _ = ipam.handle_message(now, from, payload);
        if flags & 0x80 != 0 {
            now += Duration::from_secs(6);
            ipam.handle_timeout(now);
        }
        store(&mut ipam, now);
        while ipam.poll_transmit().is_some() {}
        while ipam.poll_event().is_some() {}
    }
    let after = ipam.owned();
    for (ident, addrs) in &before {
        assert_eq!(after.get(ident), Some(addrs), "allocation of {ident} lost");
    }
    assert_eq!(ipam.status().allocated, 7);
    // Addresses in use inside the range still lie in ranges we own.
    let ranges = ipam.ring().owned_ranges(name(1));
    for addrs in after.values() {
        for a in addrs.iter().filter(|a| universe.contains(&a.addr())) {
            let x = u32::from(a.addr());
            assert!(
                ranges.iter().any(|&(s, e)| s <= x && x < e) || ipam.is_orphan(a.addr()),
                "{a} given away"
            );
        }
    }
});

fn store(ipam: &mut Ipam, now: Instant) {
    while let Some(c) = ipam.poll_commit() {
        ipam.stored(now, c.id, Ok(()));
    }
}
