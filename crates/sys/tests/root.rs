//! Tests that need root: TAP, netlink, namespaces, veth plumbing, batched UDP in a netns.
//!
//! Every test creates its own network namespaces named `wsys-<pid>-<tag>` with `ip netns add`,
//! does all its work inside them, and deletes them in `Drop` (also when a test panics). The
//! root namespace's links and addresses are never touched. Without root the tests print a
//! note and return.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::process::Command;
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net};
use weft_sys::netlink::{Error, Netlink};
use weft_sys::netns::NetNs;
use weft_sys::plumb;
use weft_sys::poll::wait_readable;
use weft_sys::tap::Tap;
use weft_sys::udp::{BATCH, BatchUdp, RecvBatch, SendBatch};

mod common;
use common::{TestNs, block_on_in, is_root};

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

async fn lo_up(nl: &Netlink) {
    let lo = nl.link_index("lo").await.unwrap().expect("lo exists");
    nl.set_up(lo).await.unwrap();
}

/// Reads frames from the queues in `taps` until `want` accepts one (returning its value) or
/// 5 s pass. (A multi-queue TAP spreads frames over its queues by flow hash.)
fn read_until<T>(taps: &[&Tap], what: &str, mut want: impl FnMut(&[u8]) -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = vec![0u8; 65536];
    let mut seen: Vec<String> = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no {what} on the TAP; saw {seen:#?}");
        let fds: Vec<_> = taps.iter().map(|t| t.as_fd()).collect();
        let mut ready = vec![false; fds.len()];
        if wait_readable(&fds, Some(left), &mut ready).unwrap() == 0 {
            continue;
        }
        for (tap, _) in taps.iter().zip(&ready).filter(|(_, r)| **r) {
            let n = match tap.recv(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => panic!("tap recv: {e}"),
            };
            seen.push(summary(&buf[..n]));
            if let Some(v) = want(&buf[..n]) {
                return v;
            }
        }
    }
}

/// Short hex of a frame's first 42 bytes, for failure messages.
fn summary(f: &[u8]) -> String {
    let head: Vec<String> = f.iter().take(42).map(|b| format!("{b:02x}")).collect();
    format!("{} bytes: {}", f.len(), head.join(""))
}

/// ARP fields of an Ethernet frame: (oper, sender mac, sender ip, target ip).
fn arp(f: &[u8]) -> Option<(u16, [u8; 6], Ipv4Addr, Ipv4Addr)> {
    if f.len() < 42 || f[12..14] != [0x08, 0x06] {
        return None;
    }
    let oper = u16::from_be_bytes([f[20], f[21]]);
    let sha: [u8; 6] = f[22..28].try_into().ok()?;
    let spa = Ipv4Addr::new(f[28], f[29], f[30], f[31]);
    let tpa = Ipv4Addr::new(f[38], f[39], f[40], f[41]);
    Some((oper, sha, spa, tpa))
}

fn arp_reply(src_mac: [u8; 6], src_ip: Ipv4Addr, dst_mac: [u8; 6], dst_ip: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&[0x08, 0x06]);
    f[14..22].copy_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 2]);
    f[22..28].copy_from_slice(&src_mac);
    f[28..32].copy_from_slice(&src_ip.octets());
    f[32..38].copy_from_slice(&dst_mac);
    f[38..42].copy_from_slice(&dst_ip.octets());
    f
}

/// A TAP on a bridge sees a namespace attached with `plumb::attach`: its gratuitous ARP, its
/// ARP request, and (after we answer through the TAP) its UDP datagram.
#[test]
fn tap_bridge_attach_traffic() {
    if !is_root() {
        return;
    }
    let r = TestNs::new("wsys", "tap-r");
    let c = TestNs::new("wsys", "tap-c");
    let c_ns = c.ns();
    let c_name = c.name.clone();
    block_on_in(&r.ns(), move || async move {
        let nl = Netlink::new().unwrap();
        lo_up(&nl).await;
        let br_mac = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
        let br = nl.ensure_bridge("weave", 1376, Some(br_mac)).await.unwrap();
        // Idempotent.
        assert_eq!(
            nl.ensure_bridge("weave", 1376, Some(br_mac)).await.unwrap(),
            br
        );
        let info = nl.link(br).await.unwrap().unwrap();
        assert_eq!(info.mtu, Some(1376));
        assert_eq!(info.mac, Some(br_mac));
        assert!(info.up);

        let tap = Tap::open("weft-tap0", true).unwrap();
        assert_eq!(tap.name(), "weft-tap0");
        let queue2 = tap.open_queue().unwrap();
        tap.set_nonblocking(true).unwrap();
        queue2.set_nonblocking(true).unwrap();
        let taps = [&tap, &queue2];
        let t = nl
            .link_index("weft-tap0")
            .await
            .unwrap()
            .expect("tap exists");
        nl.set_mtu(t, 1376).await.unwrap();
        nl.set_master(t, br).await.unwrap();
        nl.set_up(t).await.unwrap();

        let ip = Ipv4Addr::new(10, 32, 0, 5);
        let att = plumb::attach("weave", &c_ns, None, &[net("10.32.0.5/12")], 1376)
            .await
            .unwrap();
        assert!(att.host_ifname.starts_with("vethwepl"), "{att:?}");
        assert!(att.host_ifname.len() <= 15);
        assert_eq!(att.addrs, vec![net("10.32.0.5/12")]);
        let mut ports: Vec<String> = nl
            .links_with_master(br)
            .await
            .unwrap()
            .into_iter()
            .map(|(_, n)| n)
            .collect();
        ports.sort();
        let mut expect = vec![att.host_ifname.clone(), "weft-tap0".to_string()];
        expect.sort();
        assert_eq!(ports, expect);

        // 1. The gratuitous ARP sent by attach comes out of the TAP.
        read_until(&taps, "gratuitous ARP", |f| {
            (arp(f) == Some((1, att.mac, ip, ip)) && f[0..6] == [0xff; 6]).then_some(())
        });

        // 2. A datagram from the namespace to an unknown overlay address makes it ARP.
        let peer_ip = Ipv4Addr::new(10, 32, 0, 9);
        let peer_mac = [0x02, 0x00, 0x00, 0x00, 0x00, 0x09];
        NetNs::from_name(&c_name)
            .unwrap()
            .run_in(move || {
                let s = UdpSocket::bind((ip, 0)).unwrap();
                s.send_to(b"hello weft", (peer_ip, 7777)).unwrap();
            })
            .unwrap();
        read_until(&taps, "ARP request for 10.32.0.9", |f| {
            (arp(f) == Some((1, att.mac, ip, peer_ip))).then_some(())
        });

        // 3. Answer through the TAP; the queued datagram then comes out addressed to us.
        let reply = arp_reply(peer_mac, peer_ip, att.mac, ip);
        assert_eq!(tap.send(&reply).unwrap(), 42);
        read_until(&taps, "UDP datagram to 10.32.0.9", |f| {
            let is_it = f.len() >= 42
                && f[0..6] == peer_mac
                && f[6..12] == att.mac
                && f[12..14] == [0x08, 0x00]
                && f[23] == 17
                && f[30..34] == peer_ip.octets()
                && f.ends_with(b"hello weft");
            is_it.then_some(())
        });

        plumb::detach(&c_ns, None).await.unwrap();
        assert_eq!(
            nl.links_with_master(br).await.unwrap(),
            vec![(t, "weft-tap0".to_string())]
        );
    });
    // The TAP was not persistent: it went away with its fds.
    assert!(!r.ip(&["link"]).contains("weft-tap0"));
}

/// 64 datagrams through sendmmsg/recvmmsg on loopback in a namespace; failing destinations are
/// skipped without losing the rest of the batch.
#[test]
fn udp_batches_in_netns() {
    if !is_root() {
        return;
    }
    let u = TestNs::new("wsys", "udp");
    block_on_in(&u.ns(), || async {
        let nl = Netlink::new().unwrap();
        lo_up(&nl).await;
    });
    u.ns()
        .run_in(|| {
            let rx = BatchUdp::bind("127.0.0.1:0".parse().unwrap()).unwrap();
            let rx2 = rx.try_clone().unwrap();
            let tx = BatchUdp::bind("127.0.0.1:0".parse().unwrap()).unwrap();
            // SO_RCVBUFFORCE worked (the kernel reports double the requested size).
            let rcvbuf = socket2::SockRef::from(&rx).recv_buffer_size().unwrap();
            assert!(rcvbuf >= 4 << 20, "rcvbuf {rcvbuf}");
            rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let to = rx.local_addr().unwrap();
            let from = tx.local_addr().unwrap();

            let mut sb = SendBatch::new(BATCH, 1500);
            let mut rb = RecvBatch::new(BATCH, 1500);
            let collect = |rb: &mut RecvBatch, want: usize, sock: &BatchUdp| {
                let mut got = Vec::new();
                while got.len() < want {
                    let n = sock.recv_batch(rb).unwrap();
                    for i in 0..n {
                        assert_eq!(rb.source(i), from);
                        assert!(!rb.truncated(i));
                        let d = rb.datagram(i);
                        assert_eq!(d.len(), 1400);
                        assert!(d[2..].iter().all(|&b| b == d[1]));
                        got.push(u16::from_be_bytes([d[0], d[1]]));
                    }
                }
                got
            };

            // A full batch, all to one receiver.
            for i in 0..BATCH as u16 {
                assert!(sb.push_with(to, |buf| {
                    buf[..1400].fill(i as u8);
                    buf[..2].copy_from_slice(&i.to_be_bytes());
                    1400
                }));
            }
            assert!(sb.is_full());
            assert_eq!(tx.send_batch(&sb).unwrap(), BATCH);
            let got = collect(&mut rb, BATCH, &rx);
            assert_eq!(got, (0..BATCH as u16).collect::<Vec<_>>());

            // Two slots go to an unroutable address: skipped and counted, the rest arrives.
            sb.clear();
            let nowhere: SocketAddr = "203.0.113.1:6784".parse().unwrap();
            for i in 0..BATCH as u16 {
                let dest = if i == 10 || i == 40 { nowhere } else { to };
                assert!(sb.push_with(dest, |buf| {
                    buf[..1400].fill(i as u8);
                    buf[..2].copy_from_slice(&i.to_be_bytes());
                    1400
                }));
            }
            let report = tx.send_batch_report(&sb).unwrap();
            assert_eq!(report.sent, BATCH - 2);
            assert_eq!(report.failed, 2);
            assert_eq!(
                report.last_error.unwrap().raw_os_error(),
                Some(libc::ENETUNREACH)
            );
            let got = collect(&mut rb, BATCH - 2, &rx2);
            let want: Vec<u16> = (0..BATCH as u16).filter(|&i| i != 10 && i != 40).collect();
            assert_eq!(got, want);

            // Nothing more: the read timeout gives WouldBlock.
            rx.set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            let e = rx.recv_batch(&mut rb).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
        })
        .unwrap();
}

/// attach → re-attach (adds addresses) → partial detach → detach leaves no links behind.
#[test]
fn attach_detach_leaves_no_links() {
    if !is_root() {
        return;
    }
    let r = TestNs::new("wsys", "att-r");
    let c = TestNs::new("wsys", "att-c");
    let c_ns = c.ns();
    let r_ns = r.ns();
    let c_name = c.name.clone();
    let (mac, host_if) = block_on_in(&r.ns(), move || async move {
        let nl = Netlink::new().unwrap();
        let br = nl.ensure_bridge("weave", 1376, None).await.unwrap();

        // The host namespace itself is refused.
        let err = plumb::attach("weave", &r_ns, None, &[net("10.32.1.5/12")], 1376)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Invalid { .. }), "{err}");
        // A missing bridge is an error and leaves nothing behind.
        let err = plumb::attach("nobridge", &c_ns, Some(778), &[net("10.32.1.5/12")], 1376)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("nobridge"), "{err}");
        assert_eq!(nl.link_index("vethwepl778").await.unwrap(), None);
        // A failure half-way (veth MTU above 65535) removes the pair again.
        let err = plumb::attach("weave", &c_ns, Some(779), &[net("10.32.1.5/12")], 70000)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("set mtu"), "{err}");
        assert_eq!(nl.link_index("vethwepl779").await.unwrap(), None);
        assert_eq!(nl.link_index("vethwepg779").await.unwrap(), None);

        let att = plumb::attach(
            "weave",
            &c_ns,
            Some(777),
            &[net("10.32.1.5/12"), net("10.32.1.6/12")],
            1376,
        )
        .await
        .unwrap();
        assert_eq!(att.host_ifname, "vethwepl777");
        assert_eq!(att.mac[0] & 0x03, 0x02, "local unicast mac");
        let host_end = nl.link_index("vethwepl777").await.unwrap().unwrap();
        let host_info = nl.link(host_end).await.unwrap().unwrap();
        assert_eq!(host_info.master, Some(br));
        assert_eq!(host_info.mtu, Some(1376));
        assert!(host_info.up);

        let cn = Netlink::in_netns(&c_ns).unwrap();
        let ethwe = cn.link_index("ethwe").await.unwrap().expect("ethwe");
        let info = cn.link(ethwe).await.unwrap().unwrap();
        assert_eq!(info.mac, Some(att.mac));
        assert_eq!(info.mtu, Some(1376));
        assert!(info.up);
        let lo = cn.link_index("lo").await.unwrap().unwrap();
        assert!(cn.link(lo).await.unwrap().unwrap().up);
        let mut v4: Vec<IpNet> = cn
            .addresses(ethwe)
            .await
            .unwrap()
            .into_iter()
            .filter(|n| matches!(n, IpNet::V4(_)))
            .collect();
        v4.sort();
        assert_eq!(
            v4,
            vec![
                "10.32.1.5/12".parse::<IpNet>().unwrap(),
                "10.32.1.6/12".parse().unwrap()
            ]
        );

        // Attaching again only adds the new address.
        let again = plumb::attach("weave", &c_ns, Some(999), &[net("10.32.1.7/12")], 1376)
            .await
            .unwrap();
        assert_eq!(again.mac, att.mac);
        assert_eq!(again.host_ifname, "vethwepl777");
        assert_eq!(again.addrs.len(), 3);
        assert_eq!(nl.links_with_master(br).await.unwrap().len(), 1);

        // Removing some addresses keeps ethwe.
        plumb::detach(&c_ns, Some(&[net("10.32.1.5/12")]))
            .await
            .unwrap();
        assert_eq!(cn.link_index("ethwe").await.unwrap(), Some(ethwe));
        // Removing the rest deletes it, and the host end with it.
        plumb::detach(&c_ns, Some(&[net("10.32.1.6/12"), net("10.32.1.7/12")]))
            .await
            .unwrap();
        assert_eq!(cn.link_index("ethwe").await.unwrap(), None);
        assert_eq!(nl.link_index("vethwepl777").await.unwrap(), None);
        assert!(nl.links_with_master(br).await.unwrap().is_empty());
        // Detaching again is a no-op.
        plumb::detach(&c_ns, None).await.unwrap();

        // attach with an id from the netns inode, then detach everything.
        let att = plumb::attach("weave", &c_ns, None, &[net("10.32.1.8/12")], 1376)
            .await
            .unwrap();
        let id = plumb::veth_id(None, c_ns.inode());
        assert_eq!(att.host_ifname, plumb::veth_names(id).0);
        let _ = c_name;
        (att.mac, att.host_ifname)
    });
    // Cross-check with iproute2 before the final detach.
    let route = c.ip(&["-4", "route", "show", "224.0.0.0/4"]);
    assert!(route.contains("dev ethwe"), "multicast route: {route:?}");
    let link = c.ip(&["link", "show", "ethwe"]);
    let mac_text = mac.map(|b| format!("{b:02x}")).join(":");
    assert!(link.contains(&mac_text), "{link}");
    assert!(r.ip(&["link"]).contains(&host_if));

    let c_ns = c.ns();
    block_on_in(&r.ns(), move || async move {
        plumb::detach(&c_ns, None).await.unwrap();
    });
    let links = r.ip(&["-o", "link"]);
    assert!(!links.contains("vethwe"), "{links}");
    assert!(!c.ip(&["-o", "link"]).contains("ethwe"));
}

/// Namespace handles: by name, by target string, run_in lands there; in_netns from outside.
#[test]
fn netns_handles() {
    if !is_root() {
        return;
    }
    let n = TestNs::new("wsys", "ns");
    let a = NetNs::from_name(&n.name).unwrap();
    let b = NetNs::from_target(&n.name).unwrap();
    assert!(a.same_as(&b));
    let here = NetNs::current().unwrap();
    assert!(!a.same_as(&here));
    let inside = a.run_in(|| NetNs::current().unwrap().inode()).unwrap();
    assert_eq!(inside, a.inode());
    // The calling thread did not move.
    assert!(NetNs::current().unwrap().same_as(&here));

    // A process inside the namespace is found by pid (TARGET all digits).
    let mut child = Command::new("ip")
        .args(["netns", "exec", &n.name, "sleep", "10"])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let by_pid = loop {
        let ns = NetNs::from_target(&child.id().to_string()).unwrap();
        if ns.same_as(&a) || Instant::now() > deadline {
            break ns;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(by_pid.same_as(&a));

    // A netlink handle made from this (root-namespace) thread talks to the test namespace.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let links = rt.block_on(async {
        let nl = Netlink::in_netns(&a).unwrap();
        nl.links().await.unwrap()
    });
    assert_eq!(links.len(), 1);
    assert_eq!(links[0].1, "lo");
}

/// `send_gratuitous_arps` puts the 42-byte frame on the wire: a packet socket sees it arrive at
/// the far end of a veth pair.
#[test]
fn gratuitous_arp_on_wire() {
    if !is_root() {
        return;
    }
    let g = TestNs::new("wsys", "garp");
    block_on_in(&g.ns(), || async {
        let nl = Netlink::new().unwrap();
        let (a, b) = nl.add_veth("wsa", "wsb").await.unwrap();
        nl.set_up(a).await.unwrap();
        nl.set_up(b).await.unwrap();
        let mac = nl.link_mac(a).await.unwrap().unwrap();
        let rx = socket2::Socket::new(
            socket2::Domain::PACKET,
            socket2::Type::RAW,
            Some(socket2::Protocol::from(i32::from(
                (libc::ETH_P_ALL as u16).to_be(),
            ))),
        )
        .unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let ip = Ipv4Addr::new(10, 32, 3, 3);
        plumb::send_gratuitous_arps(a, mac, &[ip]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 2048];
        loop {
            assert!(Instant::now() < deadline, "no ARP seen");
            let (n, from) = rx.recv_from(&mut buf).unwrap();
            // SAFETY: recv_from initialised the first n bytes.
            let f: Vec<u8> = buf[..n]
                .iter()
                .map(|b| unsafe { b.assume_init() })
                .collect();
            // SAFETY: a packet socket reports a sockaddr_ll, which fits in the storage.
            let ll = unsafe { from.as_ptr().cast::<libc::sockaddr_ll>().read_unaligned() };
            // Only the copy received on the far end counts, not our own outgoing one.
            if ll.sll_ifindex != b as i32 || ll.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            if let Some(x) = arp(&f) {
                assert_eq!(x, (1, mac, ip, ip));
                assert_eq!(f, plumb::gratuitous_arp(mac, ip));
                break;
            }
        }
    });
}

/// A leftover pair with our name is replaced; a name held by a live attachment is not stolen.
#[test]
fn veth_name_leftovers_and_collisions() {
    if !is_root() {
        return;
    }
    let r = TestNs::new("wsys", "col-r");
    let c1 = TestNs::new("wsys", "col-c1");
    let c2 = TestNs::new("wsys", "col-c2");
    let (c1_ns, c2_ns) = (c1.ns(), c2.ns());
    block_on_in(&r.ns(), move || async move {
        let nl = Netlink::new().unwrap();
        let br = nl.ensure_bridge("weave", 65535, None).await.unwrap();
        assert_eq!(nl.link(br).await.unwrap().unwrap().mtu, Some(65535));
        // Half-made pair from an earlier failed attach.
        nl.add_veth("vethwepl555", "vethwepg555").await.unwrap();
        let a1 = plumb::attach("weave", &c1_ns, Some(555), &[net("10.32.2.1/12")], 65535)
            .await
            .unwrap();
        assert_eq!(a1.host_ifname, "vethwepl555");
        // Same id for another namespace: gets a different host name, c1 keeps its link.
        let a2 = plumb::attach("weave", &c2_ns, Some(555), &[net("10.32.2.2/12")], 65535)
            .await
            .unwrap();
        assert_ne!(a2.host_ifname, "vethwepl555");
        assert!(a2.host_ifname.starts_with("vethwepl"));
        let mut ports: Vec<String> = nl
            .links_with_master(br)
            .await
            .unwrap()
            .into_iter()
            .map(|(_, n)| n)
            .collect();
        ports.sort();
        let mut want = vec![a1.host_ifname.clone(), a2.host_ifname.clone()];
        want.sort();
        assert_eq!(ports, want);
        plumb::detach(&c1_ns, None).await.unwrap();
        plumb::detach(&c2_ns, None).await.unwrap();
        assert!(nl.links_with_master(br).await.unwrap().is_empty());
        let left: Vec<String> = nl
            .links()
            .await
            .unwrap()
            .into_iter()
            .map(|(_, n)| n)
            .collect();
        assert_eq!(left.len(), 2, "{left:?}"); // lo and weave
    });
}
