use std::net::Ipv4Addr;

use proptest::prelude::*;

use super::*;

fn name(i: u64) -> PeerName {
    PeerName::new(0x0200_0000_0000 + i).unwrap()
}

fn at(secs: u64) -> Now {
    Now {
        mono: Instant::from_duration(Duration::from_secs(secs)),
        unix: 1_700_000_000 + secs,
    }
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 32, 1, last)
}

fn names(i: u64) -> Names {
    Names::new(name(i), "weave.local.", at(0)).unwrap()
}

/// Delivers every queued message of `from` to `to` (as if flooded / unicast to it).
fn deliver(from: &mut Names, to: &mut Names, now: Now) {
    while let Some(out) = from.poll_transmit() {
        let bytes = match out {
            Outgoing::Broadcast(b) => b,
            Outgoing::Unicast(p, b) if p == to.local() => b,
            Outgoing::Unicast(..) => continue,
        };
        to.handle_message(now, from.local(), &bytes).unwrap();
    }
}

#[test]
fn add_lookup_delete_and_gossip() {
    let (mut a, mut b) = (names(1), names(2));
    assert!(a.add(at(1), "chronos1.weave.local", "c1", ip(1)).unwrap());
    assert!(!a.add(at(1), "chronos1.weave.local.", "c1", ip(1)).unwrap());
    a.add(at(1), "chronos1.weave.local.", "c2", ip(2)).unwrap();
    deliver(&mut a, &mut b, at(1));
    let mut got = b.lookup("CHRONOS1.Weave.Local");
    got.sort();
    assert_eq!(got, vec![ip(1), ip(2)]);
    assert_eq!(b.reverse(ip(2)), Some("chronos1.weave.local."));
    assert_eq!(a.delete(at(2), None, Some("c1"), None), 1);
    deliver(&mut a, &mut b, at(2));
    assert_eq!(b.lookup("chronos1.weave.local."), vec![ip(2)]);
    assert_eq!(b.reverse(ip(1)), None);
    // Re-adding revives the tombstone with a higher version.
    a.add(at(3), "chronos1.weave.local.", "c1", ip(1)).unwrap();
    deliver(&mut a, &mut b, at(3));
    assert_eq!(b.lookup("chronos1.weave.local.").len(), 2);
    let e = b.entries().find(|e| e.container == "c1").unwrap();
    assert_eq!((e.version, e.tombstone), (2, 0));
    // Only our own entries are deleted here.
    assert_eq!(b.delete(at(4), None, None, None), 0);
}

#[test]
fn registrations_outside_the_domain_are_refused() {
    let mut a = names(1);
    assert!(matches!(
        a.add(at(1), "x.example.com", "c", ip(1)),
        Err(DnsError::NotInDomain { .. })
    ));
    assert!(matches!(
        a.add(at(1), "bad name.weave.local", "c", ip(1)),
        Err(DnsError::InvalidName(_))
    ));
    assert_eq!(
        a.add(at(1), "x.weave.local", "", ip(1)),
        Err(DnsError::InvalidContainer)
    );
    assert!(Names::new(name(1), "", at(0)).is_err());
    assert!(a.poll_transmit().is_none());
}

#[test]
fn full_state_on_connect_reaches_the_other_side_of_the_link() {
    // a – b already connected; c joins by connecting to b only.
    let (mut a, mut b, mut c) = (names(1), names(2), names(3));
    a.add(at(1), "a.weave.local", "ca", ip(1)).unwrap();
    deliver(&mut a, &mut b, at(1));
    c.add(at(1), "c.weave.local", "cc", ip(3)).unwrap();
    while c.poll_transmit().is_some() {} // nobody to hear it yet
    b.neighbour_up(name(3));
    c.neighbour_up(name(2));
    deliver(&mut b, &mut c, at(2));
    deliver(&mut c, &mut b, at(2));
    // b learned c's entry from a full state, and passes it on to a.
    deliver(&mut b, &mut a, at(2));
    assert_eq!(a.lookup("c.weave.local"), vec![ip(3)]);
    assert_eq!(c.lookup("a.weave.local"), vec![ip(1)]);
}

#[test]
fn own_entries_from_gossip_are_overruled() {
    let (mut a, mut b) = (names(1), names(2));
    a.add(at(1), "x.weave.local", "c1", ip(1)).unwrap();
    deliver(&mut a, &mut b, at(1));
    // a restarts without its state; b's full state brings a's old entry back to a.
    let mut a2 = names(1);
    b.neighbour_up(name(1));
    deliver(&mut b, &mut a2, at(5));
    assert!(a2.lookup("x.weave.local").is_empty());
    assert!(a2.take_own_changed());
    deliver(&mut a2, &mut b, at(5));
    assert!(
        b.lookup("x.weave.local").is_empty(),
        "b still resolves a's stale entry"
    );
    // Registering it again wins over the tombstone everywhere.
    a2.add(at(6), "x.weave.local", "c1", ip(1)).unwrap();
    deliver(&mut a2, &mut b, at(6));
    assert_eq!(b.lookup("x.weave.local"), vec![ip(1)]);
    // A restored peer overrules a newer-looking copy of its entry with a higher version.
    let mut a3 = names(1);
    a3.restore(
        at(7),
        vec![Entry {
            hostname: "x.weave.local.".into(),
            container: "c1".into(),
            origin: name(1),
            addr: ip(1),
            version: 0,
            tombstone: 0,
        }],
    );
    b.neighbour_up(name(1));
    deliver(&mut b, &mut a3, at(7));
    let mine = a3.own_entries();
    assert_eq!(mine.len(), 1);
    assert!(mine[0].version > 2 && mine[0].tombstone == 0, "{mine:?}");
}

#[test]
fn tombstones_expire_after_thirty_minutes() {
    let (mut a, mut b) = (names(1), names(2));
    a.add(at(1), "x.weave.local", "c1", ip(1)).unwrap();
    a.delete(at(2), Some("X.weave.local"), None, None);
    deliver(&mut a, &mut b, at(2));
    assert_eq!(b.len(), 1);
    b.handle_timeout(at(2 + 29 * 60));
    assert_eq!(b.len(), 1);
    b.handle_timeout(at(2 + 31 * 60));
    assert_eq!(b.len(), 0);
    // A stale live copy arriving before expiry does not revive it.
    let mut c = names(3);
    a.add(at(3), "y.weave.local", "c2", ip(2)).unwrap();
    let stale: Vec<Outgoing> = std::iter::from_fn(|| a.poll_transmit()).collect();
    a.delete(at(4), None, Some("c2"), None);
    deliver(&mut a, &mut c, at(4));
    for o in stale {
        if let Outgoing::Broadcast(bytes) = o {
            c.handle_message(at(5), name(1), &bytes).unwrap();
        }
    }
    assert!(c.lookup("y.weave.local").is_empty());
}

#[test]
fn departed_peers_lose_their_entries() {
    let (mut a, mut b, mut c) = (names(1), names(2), names(3));
    a.add(at(1), "a.weave.local", "ca", ip(1)).unwrap();
    let out: Vec<Outgoing> = std::iter::from_fn(|| a.poll_transmit()).collect();
    for n in [&mut b, &mut c] {
        for o in &out {
            if let Outgoing::Broadcast(bytes) = o {
                n.handle_message(at(1), name(1), bytes).unwrap();
            }
        }
        n.peers_changed(
            at(1),
            &[name(1), name(2), name(3)],
            &[name(1), name(2), name(3)],
        );
    }
    // Gone from the topology: kept for 30 minutes, then dropped.
    c.peers_changed(at(10), &[name(2), name(3)], &[name(2), name(3)]);
    c.handle_timeout(at(10 + 29 * 60));
    assert_eq!(c.lookup("a.weave.local"), vec![ip(1)]);
    c.handle_timeout(at(10 + 31 * 60));
    assert!(c.lookup("a.weave.local").is_empty());
    // rmpeer on b: dropped at once on b, and on every peer that hears of it.
    let mut d = names(4);
    for o in &out {
        if let Outgoing::Broadcast(bytes) = o {
            d.handle_message(at(1), name(1), bytes).unwrap();
        }
    }
    assert_eq!(b.forget_peer(at(20), name(1)), 1);
    assert!(b.lookup("a.weave.local").is_empty());
    deliver(&mut b, &mut d, at(20));
    assert!(d.lookup("a.weave.local").is_empty());
    // A late copy is refused while the peer stays away...
    for o in &out {
        if let Outgoing::Broadcast(bytes) = o {
            d.handle_message(at(21), name(2), bytes).unwrap();
        }
    }
    assert!(d.lookup("a.weave.local").is_empty());
    assert_eq!(d.refused(), 1);
    // ...and welcome once it is back.
    d.peers_changed(at(22), &[name(1)], &[name(1)]);
    for o in &out {
        if let Outgoing::Broadcast(bytes) = o {
            d.handle_message(at(23), name(1), bytes).unwrap();
        }
    }
    assert_eq!(d.lookup("a.weave.local"), vec![ip(1)]);
}

#[test]
fn garbage_gossip_is_refused_without_harm() {
    let mut a = names(1);
    a.add(at(1), "x.weave.local", "c", ip(1)).unwrap();
    for bytes in [&[][..], &[0xff; 7][..], &[0, 1, 2, 3][..]] {
        let _ = a.handle_message(at(2), name(2), bytes);
    }
    assert_eq!(a.lookup("x.weave.local"), vec![ip(1)]);
    // Valid framing, invalid content: counted, not stored.
    let bad = postcard::to_allocvec(&Message::Entries {
        full: false,
        entries: vec![Entry {
            hostname: "no trailing dot".into(),
            container: "c".into(),
            origin: name(2),
            addr: ip(9),
            version: 0,
            tombstone: 0,
        }],
    })
    .unwrap();
    a.handle_message(at(2), name(2), &bad).unwrap();
    assert_eq!((a.len(), a.refused()), (1, 1));
}

#[test]
fn own_state_survives_a_restart() {
    let mut a = names(1);
    a.add(at(1), "x.weave.local", "c1", ip(1)).unwrap();
    a.add(at(1), "y.weave.local", "c2", ip(2)).unwrap();
    a.delete(at(2), None, Some("c2"), None);
    let kept = a.own_entries();
    let mut again = names(1);
    assert_eq!(again.restore(at(0), kept.clone()), 2);
    assert_eq!(again.own_entries(), kept);
    assert_eq!(again.lookup("x.weave.local"), vec![ip(1)]);
    assert_eq!(again.live_from(name(1)), 1);
}

// ---- merge properties ----

fn arb_entry() -> impl Strategy<Value = Entry> {
    (
        0u8..3,
        1u64..4,
        0u8..2,
        0u8..3,
        0u64..4,
        prop::bool::ANY,
        1u64..3,
    )
        .prop_map(|(h, o, c, a, version, dead, t)| Entry {
            hostname: format!("h{h}.weave.local."),
            container: format!("c{c}"),
            origin: name(o),
            addr: ip(a),
            version,
            tombstone: if dead { 1_700_000_000 + t } else { 0 },
        })
}

/// The observable state: every entry with its stamp, in order.
fn state(n: &Names) -> Vec<Entry> {
    n.entries().cloned().collect()
}

fn apply(n: &mut Names, batch: &[Entry]) {
    let msg = Message::Entries {
        full: false,
        entries: batch.to_vec(),
    };
    let bytes = postcard::to_allocvec(&msg).unwrap();
    // Sent by a peer that is none of the origins, so no entry is "ours" (peer 9).
    n.handle_message(at(1), name(8), &bytes).unwrap();
}

proptest! {
    #[test]
    fn merge_is_commutative(xs in prop::collection::vec(arb_entry(), 0..20),
                            ys in prop::collection::vec(arb_entry(), 0..20)) {
        let (mut p, mut q) = (names(9), names(9));
        apply(&mut p, &xs);
        apply(&mut p, &ys);
        apply(&mut q, &ys);
        apply(&mut q, &xs);
        prop_assert_eq!(state(&p), state(&q));
    }

    #[test]
    fn merge_is_idempotent_and_order_free(xs in prop::collection::vec(arb_entry(), 0..30),
                                          seed in any::<u64>()) {
        let mut p = names(9);
        apply(&mut p, &xs);
        let once = state(&p);
        apply(&mut p, &xs);
        prop_assert_eq!(&state(&p), &once);
        // Any order, one at a time.
        let mut shuffled = xs.clone();
        let mut rng = weft_mesh::rng::Rng::new(seed);
        for i in (1..shuffled.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            shuffled.swap(i, j);
        }
        let mut q = names(9);
        for e in &shuffled {
            apply(&mut q, std::slice::from_ref(e));
        }
        prop_assert_eq!(state(&q), once);
    }

    #[test]
    fn merge_entry_keeps_the_maximum(a in arb_entry(), v in 0u64..4, t in 0u64..3) {
        let mut b = a.clone();
        b.version = v;
        b.tombstone = if t == 0 { 0 } else { 1_700_000_000 + t };
        let mut x = a.clone();
        let mut y = b.clone();
        merge_entry(&mut x, &b);
        merge_entry(&mut y, &a);
        prop_assert_eq!(&x, &y);
        prop_assert_eq!(x.stamp(), a.stamp().max(b.stamp()));
        prop_assert!(!merge_entry(&mut x, &a) && !merge_entry(&mut x, &b));
    }
}
