//! Fuzz the topology gossip receiver: `weft_mesh::Mesh::handle_gossip` on arbitrary payloads
//! from two neighbours, with timers fired in between.
//!
//! Input layout: the data is split at each 0xfe byte into payloads; the first byte of each
//! picks the sending neighbour (bit 0) and whether the clock advances 100 ms before it
//! (bit 1). A few well-formed payloads (records, a delta, a digest, a want, a summary) come
//! first so the fuzzer starts from a populated topology. Checks: no panic; our own record
//! keeps our uid and connection list; no topology ever holds a peer listing itself; every
//! message the mesh sends decodes; once the input ends and the timers run out, the mesh is
//! silent (nothing scheduled, nothing to send).
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use weft_mesh::{
    Change, ConnSummary, GossipConfig, Instant, Mesh, PeerName, PeerSummary, Record, ShortId,
    TopologyGossip,
};

fn name(n: u64) -> PeerName {
    PeerName::new(0x0200_0000_0000 + n).expect("48-bit")
}

fn summary(n: u64, version: u64, conns: &[u64]) -> PeerSummary {
    PeerSummary {
        name: name(n),
        nickname: format!("h{n}"),
        uid: n * 10,
        version,
        short_id: ShortId::from_masked(n as u16),
        connections: conns
            .iter()
            .map(|&r| ConnSummary {
                remote: name(r),
                address: format!("192.0.2.{r}:6783"),
                outbound: true,
                established: true,
            })
            .collect(),
    }
}

fn seeds() -> Vec<TopologyGossip> {
    vec![
        TopologyGossip::Records(vec![
            Record::full(&summary(2, 3, &[1, 4])),
            Record::full(&summary(4, 1, &[2])),
        ]),
        TopologyGossip::Records(vec![Record {
            name: name(2),
            uid: 20,
            version: 4,
            base: 3,
            ident: None,
            changes: vec![Change::Remove(name(4)), Change::Up(name(1))],
        }]),
        TopologyGossip::Digest {
            entries: vec![(name(2), 9), (name(5), 1), (name(1), 1)],
            reply: true,
        },
        TopologyGossip::Want(vec![(name(1), 1, 10), (name(2), 0, 0)]),
        TopologyGossip::Summary(42),
    ]
}

fuzz_target!(|data: &[u8]| {
    let mut now = Instant::ZERO;
    let local = summary(1, 1, &[]);
    let mut mesh = Mesh::new(local, GossipConfig::default(), 7, now);
    for n in [2u64, 3] {
        mesh.connection_up(
            now,
            name(n),
            (format!("h{n}"), n * 10, ShortId::from_masked(n as u16)),
            format!("192.0.2.{n}:6783"),
            n == 2,
        );
    }
    let conns = mesh.topology().local().connections.clone();
    let mut payloads: Vec<(u8, Vec<u8>)> = seeds()
        .iter()
        .map(|m| (0, postcard::to_allocvec(m).expect("encodes")))
        .collect();
    payloads.extend(
        data.split(|b| *b == 0xfe)
            .filter_map(|p| p.split_first().map(|(h, rest)| (*h, rest.to_vec()))),
    );
    let check = |mesh: &mut Mesh| {
        let t = mesh.topology();
        assert_eq!(t.local().uid, 10);
        assert_eq!(t.local().connections, conns);
        for p in t.peers() {
            assert!(p.connections.iter().all(|c| c.remote != p.name));
        }
        while let Some((_, payload)) = mesh.poll_transmit() {
            assert!(postcard::from_bytes::<TopologyGossip>(&payload).is_ok());
        }
        while mesh.poll_event().is_some() {}
    };
    for (head, payload) in payloads {
        if head & 2 == 2 {
            now += Duration::from_millis(100);
            mesh.handle_timeout(now);
        }
        let from = if head & 1 == 0 { name(2) } else { name(3) };
        let _ = mesh.handle_gossip(now, from, &payload);
        check(&mut mesh);
    }
    // Nobody answers any more: the timers run out and the mesh goes quiet.
    for _ in 0..100 {
        let Some(t) = mesh.poll_timeout() else { break };
        now = t.max(now);
        mesh.handle_timeout(now);
        check(&mut mesh);
    }
    assert_eq!(mesh.poll_timeout(), None);
});
