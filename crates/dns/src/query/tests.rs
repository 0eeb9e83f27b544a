use std::net::Ipv4Addr;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use weft_mesh::{Instant, PeerName};

use super::*;
use crate::{Names, Now};

fn now() -> Now {
    Now {
        mono: Instant::from_duration(Duration::from_secs(1)),
        unix: 1_700_000_000,
    }
}

fn setup() -> (Names, Responder) {
    let mut n = Names::new(
        PeerName::new(0x0200_0000_0001).unwrap(),
        "weave.local",
        now(),
    )
    .unwrap();
    n.add(
        now(),
        "chronos1.weave.local",
        "c1",
        Ipv4Addr::new(10, 32, 1, 1),
    )
    .unwrap();
    n.add(
        now(),
        "chronos1.weave.local",
        "c2",
        Ipv4Addr::new(10, 32, 1, 2),
    )
    .unwrap();
    n.add(now(), "solo.weave.local", "c3", Ipv4Addr::new(10, 32, 1, 3))
        .unwrap();
    (n, Responder::new(1))
}

fn query(name: &str, rtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(0x1234)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

fn reply(d: Decision) -> Message {
    match d {
        Decision::Reply(r) => Message::from_vec(&r.bytes).unwrap(),
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn addrs(m: &Message) -> Vec<Ipv4Addr> {
    m.answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

#[test]
fn a_records_all_addresses_shuffled_case_insensitive() {
    let (n, r) = setup();
    let mut orders = std::collections::HashSet::new();
    for seed in 0..20 {
        let m = reply(r.decide(
            &n,
            &query("ChRoNoS1.WEAVE.local.", RecordType::A, None),
            Transport::Udp,
            seed,
        ));
        assert_eq!(m.id(), 0x1234);
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert!(m.authoritative() && m.recursion_available() && m.recursion_desired());
        assert_eq!(m.answers()[0].ttl(), 1);
        assert_eq!(m.answers()[0].name().to_ascii(), "ChRoNoS1.WEAVE.local.");
        let a = addrs(&m);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            [Ipv4Addr::new(10, 32, 1, 1), Ipv4Addr::new(10, 32, 1, 2)]
        );
        orders.insert(a);
    }
    assert_eq!(orders.len(), 2, "the order never changes");
}

#[test]
fn unknown_names_other_types_and_single_labels() {
    let (n, r) = setup();
    let m = reply(r.decide(
        &n,
        &query("nobody.weave.local.", RecordType::A, None),
        Transport::Udp,
        1,
    ));
    assert_eq!(m.response_code(), ResponseCode::NXDomain);
    let m = reply(r.decide(
        &n,
        &query("solo.weave.local.", RecordType::AAAA, None),
        Transport::Udp,
        1,
    ));
    assert_eq!(m.response_code(), ResponseCode::NoError);
    assert!(m.answers().is_empty());
    // A single label gets the domain appended (Weave).
    let m = reply(r.decide(&n, &query("solo.", RecordType::A, None), Transport::Udp, 1));
    assert_eq!(addrs(&m), [Ipv4Addr::new(10, 32, 1, 3)]);
    // The domain itself is ours too: never asked upstream.
    let m = reply(r.decide(
        &n,
        &query("weave.local.", RecordType::SOA, None),
        Transport::Udp,
        1,
    ));
    assert_eq!(m.response_code(), ResponseCode::NXDomain);
    // Names elsewhere go upstream.
    assert!(matches!(
        r.decide(
            &n,
            &query("example.com.", RecordType::A, None),
            Transport::Udp,
            1
        ),
        Decision::Forward(_)
    ));
}

#[test]
fn reverse_lookup() {
    let (n, r) = setup();
    let m = reply(r.decide(
        &n,
        &query("3.1.32.10.in-addr.arpa.", RecordType::PTR, None),
        Transport::Udp,
        1,
    ));
    match m.answers()[0].data() {
        RData::PTR(p) => assert_eq!(p.0.to_ascii(), "solo.weave.local."),
        other => panic!("{other:?}"),
    }
    // An address nobody has goes upstream.
    assert!(matches!(
        r.decide(
            &n,
            &query("9.9.32.10.in-addr.arpa.", RecordType::PTR, None),
            Transport::Udp,
            1
        ),
        Decision::Forward(_)
    ));
    assert_eq!(
        arpa_addr("1.2.3.4.in-addr.arpa."),
        Some(Ipv4Addr::new(4, 3, 2, 1))
    );
    assert_eq!(arpa_addr("2.3.4.in-addr.arpa."), None);
    assert_eq!(arpa_addr("256.2.3.4.in-addr.arpa."), None);
    assert_eq!(arpa_addr("1.1.2.3.4.in-addr.arpa."), None);
}

#[test]
fn large_answers_are_truncated_over_udp_only() {
    let mut n = Names::new(
        PeerName::new(0x0200_0000_0001).unwrap(),
        "weave.local",
        now(),
    )
    .unwrap();
    for i in 0..100u8 {
        n.add(
            now(),
            "many.weave.local",
            &format!("c{i}"),
            Ipv4Addr::new(10, 32, 2, i),
        )
        .unwrap();
    }
    let r = Responder::new(1);
    let q = query("many.weave.local.", RecordType::A, None);
    let Decision::Reply(udp) = r.decide(&n, &q, Transport::Udp, 1) else {
        panic!()
    };
    assert!(udp.bytes.len() <= MIN_UDP);
    let m = Message::from_vec(&udp.bytes).unwrap();
    assert!(m.truncated() && !m.answers().is_empty() && m.answers().len() < 100);
    let Decision::Reply(tcp) = r.decide(&n, &q, Transport::Tcp, 1) else {
        panic!()
    };
    let m = Message::from_vec(&tcp.bytes).unwrap();
    assert!(!m.truncated());
    assert_eq!(m.answers().len(), 100);
    // A client announcing a big EDNS buffer gets everything over UDP, with an OPT back.
    let q = query("many.weave.local.", RecordType::A, Some(4096));
    let m = reply(r.decide(&n, &q, Transport::Udp, 1));
    assert_eq!(m.answers().len(), 100);
    assert!(m.extensions().is_some());
}

#[test]
fn malformed_and_odd_queries() {
    let (n, r) = setup();
    // Too short for a header: nothing.
    assert!(matches!(
        r.decide(&n, &[1, 2, 3], Transport::Udp, 1),
        Decision::Drop
    ));
    // A response is never answered.
    let mut resp = query("solo.weave.local.", RecordType::A, None);
    resp[2] |= 0x80;
    assert!(matches!(
        r.decide(&n, &resp, Transport::Udp, 1),
        Decision::Drop
    ));
    // Truncated question: FORMERR under the same id.
    let q = query("solo.weave.local.", RecordType::A, None);
    let Decision::Reply(rep) = r.decide(&n, &q[..q.len() - 3], Transport::Udp, 1) else {
        panic!()
    };
    assert_eq!(rep.kind, ReplyKind::Error);
    assert_eq!(&rep.bytes[..2], &[0x12, 0x34]);
    assert_eq!(rep.bytes[3] & 0x0f, 1);
    // Two questions: FORMERR; another opcode: NOTIMP.
    let mut two = Message::from_vec(&q).unwrap();
    two.add_query(Query::query(Name::from_ascii("x.").unwrap(), RecordType::A));
    assert_eq!(
        reply(r.decide(&n, &two.to_vec().unwrap(), Transport::Udp, 1)).response_code(),
        ResponseCode::FormErr
    );
    let mut status = Message::from_vec(&q).unwrap();
    status.set_op_code(OpCode::Status);
    assert_eq!(
        reply(r.decide(&n, &status.to_vec().unwrap(), Transport::Udp, 1)).response_code(),
        ResponseCode::NotImp
    );
}

#[test]
fn forwarding_relays_matching_replies_only() {
    let (n, r) = setup();
    let q = query("example.com.", RecordType::A, None);
    let Decision::Forward(f) = r.decide(&n, &q, Transport::Udp, 1) else {
        panic!()
    };
    let up = f.upstream_query(0x9999);
    assert_eq!(&up[..2], &[0x99, 0x99]);
    assert_eq!(&up[2..], &q[2..]);
    // The upstream answers.
    let mut ans = Message::from_vec(&up).unwrap();
    ans.set_message_type(MessageType::Response);
    ans.add_answer(Record::from_rdata(
        Name::from_ascii("example.com.").unwrap(),
        60,
        RData::A(A(Ipv4Addr::new(203, 0, 113, 7))),
    ));
    let bytes = ans.to_vec().unwrap();
    let out = Message::from_vec(&f.relay(0x9999, &bytes).unwrap()).unwrap();
    assert_eq!(out.id(), 0x1234);
    assert_eq!(addrs(&out), [Ipv4Addr::new(203, 0, 113, 7)]);
    // Wrong id, not a response, or another question: refused.
    assert_eq!(f.relay(0x9998, &bytes), Err(RelayError::Mismatch));
    assert_eq!(f.relay(0x9999, &up), Err(RelayError::Mismatch));
    assert_eq!(f.relay(0x9999, &bytes[..5]), Err(RelayError::Malformed));
    let other = query("example.org.", RecordType::A, None);
    let mut o = Message::from_vec(&other).unwrap();
    o.set_id(0x9999).set_message_type(MessageType::Response);
    assert_eq!(
        f.relay(0x9999, &o.to_vec().unwrap()),
        Err(RelayError::Mismatch)
    );
    // SERVFAIL under the client's id.
    let sf = Message::from_vec(&f.servfail()).unwrap();
    assert_eq!(
        (sf.id(), sf.response_code()),
        (0x1234, ResponseCode::ServFail)
    );
    assert_eq!(sf.queries().len(), 1);
}

#[test]
fn too_big_upstream_replies_are_truncated_for_udp_clients() {
    let (n, r) = setup();
    let q = query("big.example.com.", RecordType::A, None);
    let Decision::Forward(f) = r.decide(&n, &q, Transport::Udp, 1) else {
        panic!()
    };
    let mut ans = Message::from_vec(&f.upstream_query(7)).unwrap();
    ans.set_message_type(MessageType::Response);
    for i in 0..60u8 {
        ans.add_answer(Record::from_rdata(
            Name::from_ascii("big.example.com.").unwrap(),
            60,
            RData::A(A(Ipv4Addr::new(203, 0, 113, i))),
        ));
    }
    let bytes = ans.to_vec().unwrap();
    assert!(bytes.len() > MIN_UDP);
    let out = Message::from_vec(&f.relay(7, &bytes).unwrap()).unwrap();
    assert!(out.truncated() && out.answers().is_empty());
    assert_eq!(out.id(), 0x1234);
}
