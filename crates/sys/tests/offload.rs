//! Root tests for the offload side of weft-sys: a vnet-header TAP with TSO behind a bridge,
//! and UDP GSO sends / GRO receives.
//!
//! Every test makes its own network namespaces named `wsys2-<pid>-<tag>` with `ip netns add`,
//! works only inside them, and deletes them in `Drop` (also when a test panics). Overlay
//! addresses appear only inside those namespaces. Without root the tests print a note and
//! return.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use weft_sys::netlink::Netlink;
use weft_sys::poll::wait_readable;
use weft_sys::tap::{
    MAX_VNET_FRAME, Offload, Tap, TapOptions, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN,
    VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4, VNET_HDR_LEN,
};
use weft_sys::udp::{BatchUdp, GRO_BUF_SIZE, GSO_MAX_SEGMENTS, GsoBatch, RecvBatch};

mod common;
use common::{TestNs, block_on_in, is_root};

async fn link(nl: &Netlink, name: &str) -> u32 {
    nl.link_index(name)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{name} exists"))
}

fn ipnet(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// The fields of a `virtio_net_hdr` (little-endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct VnetHdr {
    flags: u8,
    gso_type: u8,
    hdr_len: u16,
    gso_size: u16,
    csum_start: u16,
    csum_offset: u16,
}

fn vnet(b: &[u8]) -> VnetHdr {
    let le = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
    VnetHdr {
        flags: b[0],
        gso_type: b[1],
        hdr_len: le(2),
        gso_size: le(4),
        csum_start: le(6),
        csum_offset: le(8),
    }
}

/// What the relay saw coming out of TAP A (the bridge side).
#[derive(Debug, Default)]
struct RelayStats {
    frames_a: usize,
    tcp4_gso_frames: usize,
    largest_frame: usize,
    first_gso: Option<(VnetHdr, usize)>,
    frames_b: usize,
    gso_b: usize,
}

/// Copies frames (virtio header included) between the two TAPs until `stop`; frames from A go
/// to B with `send_vectored` (header and frame as separate parts), frames from B go to A with
/// `send`.
fn relay(a: &Tap, b: &Tap, stop: &AtomicBool) -> RelayStats {
    let mut st = RelayStats::default();
    let mut buf = vec![0u8; MAX_VNET_FRAME];
    let mut ready = [false; 2];
    while !stop.load(Ordering::Relaxed) {
        let fds = [a.as_fd(), b.as_fd()];
        if wait_readable(&fds, Some(Duration::from_millis(50)), &mut ready).unwrap() == 0 {
            continue;
        }
        if ready[0] {
            loop {
                let n = match a.recv(&mut buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("tap a recv: {e}"),
                };
                assert!(n >= VNET_HDR_LEN, "short read {n}");
                let h = vnet(&buf[..VNET_HDR_LEN]);
                let frame_len = n - VNET_HDR_LEN;
                st.frames_a += 1;
                st.largest_frame = st.largest_frame.max(frame_len);
                if h.gso_type & !VIRTIO_NET_HDR_GSO_ECN == VIRTIO_NET_HDR_GSO_TCPV4 {
                    st.tcp4_gso_frames += 1;
                    st.first_gso.get_or_insert((h, frame_len));
                }
                let (hdr, frame) = buf[..n].split_at(VNET_HDR_LEN);
                match b.send_vectored(hdr, frame) {
                    Ok(w) => assert_eq!(w, n),
                    Err(e) => panic!("tap b write of {h:?} ({frame_len} bytes): {e}"),
                }
            }
        }
        if ready[1] {
            loop {
                let n = match b.recv(&mut buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("tap b recv: {e}"),
                };
                st.frames_b += 1;
                if buf[1] != VIRTIO_NET_HDR_GSO_NONE {
                    st.gso_b += 1;
                }
                assert_eq!(a.send(&buf[..n]).unwrap(), n);
            }
        }
    }
    st
}

/// The byte at offset `i` of the test stream.
fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

/// ns C --veth--> [bridge in ns R] --> TAP A (vnet_hdr, TSO) ==relay==> TAP B (vnet_hdr, TSO,
/// in ns S, holding 10.32.0.2). A 1 MB TCP stream from C to S must come out of TAP A as TCP
/// super-frames (gso_type TCPV4, longer than the 1500-byte MTU), and written unchanged into
/// TAP B (header + frame via writev) it must reach the listener intact.
#[test]
fn tap_tso_frames_through_bridge() {
    if !is_root() {
        return;
    }
    const TOTAL: usize = 1 << 20;
    let r = TestNs::new("wsys2", "tso-r");
    let c = TestNs::new("wsys2", "tso-c");
    let s = TestNs::new("wsys2", "tso-s");
    let opts = TapOptions {
        multi_queue: false,
        vnet_hdr: true,
        offload: Offload::ALL,
    };

    // ns R: bridge, veth to C, TAP A on the bridge.
    let c_ns = c.ns();
    let tap_a = block_on_in(&r.ns(), move || async move {
        let nl = Netlink::new().unwrap();
        let br = nl.ensure_bridge("br0", 1500, None).await.unwrap();
        let (vr, vc) = nl.add_veth("vr", "vc").await.unwrap();
        nl.move_to_netns(vc, &c_ns).await.unwrap();
        nl.set_master(vr, br).await.unwrap();
        nl.set_up(vr).await.unwrap();
        let tap = Tap::open_with("wtapa", opts).unwrap();
        assert!(tap.vnet_hdr());
        assert_eq!(tap.options(), opts);
        let t = link(&nl, "wtapa").await;
        nl.set_master(t, br).await.unwrap();
        nl.set_up(t).await.unwrap();
        tap
    });
    // ns C: the sender.
    block_on_in(&c.ns(), || async {
        let nl = Netlink::new().unwrap();
        let lo = link(&nl, "lo").await;
        nl.set_up(lo).await.unwrap();
        let vc = link(&nl, "vc").await;
        nl.add_address(vc, ipnet("10.32.0.1/12")).await.unwrap();
        nl.set_up(vc).await.unwrap();
    });
    // ns S: TAP B holds the listener's address.
    let tap_b = block_on_in(&s.ns(), move || async move {
        let nl = Netlink::new().unwrap();
        let lo = link(&nl, "lo").await;
        nl.set_up(lo).await.unwrap();
        let tap = Tap::open_with("wtapb", opts).unwrap();
        let t = link(&nl, "wtapb").await;
        nl.add_address(t, ipnet("10.32.0.2/12")).await.unwrap();
        nl.set_up(t).await.unwrap();
        tap
    });
    assert!(
        r.ip_all(&["-d", "link", "show", "wtapa"])
            .contains("vnet_hdr on")
    );
    tap_a.set_nonblocking(true).unwrap();
    tap_b.set_nonblocking(true).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let relay_thread = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || relay(&tap_a, &tap_b, &stop))
    };
    // Stops the relay even if an assertion below panics.
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let _stop_guard = StopOnDrop(Arc::clone(&stop));

    let s_ns = s.ns();
    let server = std::thread::spawn(move || {
        s_ns.run_in(|| {
            let l = TcpListener::bind((Ipv4Addr::new(10, 32, 0, 2), 5001)).unwrap();
            l.set_nonblocking(true).unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            let (mut conn, _) = loop {
                match l.accept() {
                    Ok(x) => break x,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        assert!(Instant::now() < deadline, "no connection");
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            };
            conn.set_nonblocking(false).unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut got = Vec::with_capacity(TOTAL);
            conn.read_to_end(&mut got).unwrap();
            got
        })
        .unwrap()
    });
    let sent_in = Instant::now();
    c.ns()
        .run_in(|| {
            let to = SocketAddr::from((Ipv4Addr::new(10, 32, 0, 2), 5001));
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut conn = loop {
                match TcpStream::connect_timeout(&to, Duration::from_secs(2)) {
                    Ok(c) => break c,
                    // The listener may not be up yet.
                    Err(e) if Instant::now() < deadline => {
                        eprintln!("connect: {e}; retrying");
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(e) => panic!("connect: {e}"),
                }
            };
            conn.set_write_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let data: Vec<u8> = (0..TOTAL).map(pattern).collect();
            conn.write_all(&data).unwrap();
            conn.shutdown(std::net::Shutdown::Write).unwrap();
        })
        .unwrap();
    let got = server.join().unwrap();
    let elapsed = sent_in.elapsed();
    stop.store(true, Ordering::Relaxed);
    let st = relay_thread.join().unwrap();
    eprintln!("relay: {st:?}; 1 MB in {elapsed:?}");

    assert_eq!(got.len(), TOTAL);
    assert!(got.iter().enumerate().all(|(i, &b)| b == pattern(i)));
    assert!(
        st.tcp4_gso_frames >= 1,
        "no TCPv4 super-frame came out of the TAP: {st:?}"
    );
    assert!(st.largest_frame > 1514, "{st:?}");
    let (h, len) = st.first_gso.unwrap();
    assert!(len > 1514, "{h:?} {len}");
    assert_ne!(h.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, "{h:?}");
    // Ethernet (14) + IPv4 without options (20); TCP checksum at offset 16.
    assert_eq!((h.csum_start, h.csum_offset), (34, 16), "{h:?}");
    assert!(h.gso_size > 0 && h.gso_size <= 1460, "{h:?}");
}

/// `open_queue` keeps the vnet options (also from a thread outside the device's namespace);
/// the header flag belongs to the device, so opening a queue without it is refused.
#[test]
fn vnet_multi_queue() {
    if !is_root() {
        return;
    }
    let q = TestNs::new("wsys2", "mq");
    let opts = TapOptions {
        multi_queue: true,
        vnet_hdr: true,
        offload: Offload {
            csum: true,
            tso4: true,
            tso6: false,
        },
    };
    let t = q
        .ns()
        .run_in(move || Tap::open_with("wmq0", opts))
        .unwrap()
        .unwrap();
    // This thread is in the root namespace: the queue must still be opened in q.
    let t2 = t.open_queue().unwrap();
    assert!(t2.vnet_hdr());
    assert_eq!(t2.options(), opts);
    let link = q.ip_all(&["-d", "link", "show", "wmq0"]);
    assert!(
        link.contains("vnet_hdr on multi_queue numqueues 2"),
        "{link}"
    );
    // A single-queue open of a multi-queue device is refused by the kernel; a multi-queue
    // open without the header by us (the kernel would hand it headers anyway).
    assert!(q.ns().run_in(|| Tap::open("wmq0", false)).unwrap().is_err());
    let e = q
        .ns()
        .run_in(|| Tap::open("wmq0", true))
        .unwrap()
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");
    let link = q.ip_all(&["-d", "link", "show", "wmq0"]);
    assert!(link.contains("numqueues 2"), "{link}");
}

/// Collects every datagram of `want` from `rx`: returns (slots read, datagrams in order).
fn collect(rx: &BatchUdp, rb: &mut RecvBatch, want: usize) -> (usize, Vec<Vec<u8>>, usize) {
    let mut slots = 0;
    let mut coalesced = 0;
    let mut out = Vec::new();
    while out.len() < want {
        let n = rx.recv_batch(rb).unwrap();
        for i in 0..n {
            assert!(!rb.truncated(i));
            slots += 1;
            let segs: Vec<&[u8]> = rb.segments(i).collect();
            if segs.len() > 1 {
                coalesced += 1;
                assert_eq!(rb.stride(i), segs[0].len());
            } else {
                assert_eq!(rb.stride(i), rb.datagram(i).len());
            }
            out.extend(segs.into_iter().map(<[u8]>::to_vec));
        }
    }
    (slots, out, coalesced)
}

/// `count` segments of `size` bytes, segment `i` filled with `i` and starting with `i` as u16.
fn run(count: usize, size: usize, last: usize) -> Vec<u8> {
    let mut v = Vec::new();
    for i in 0..count {
        let len = if i + 1 == count { last } else { size };
        let mut s = vec![i as u8; len];
        s[..2].copy_from_slice(&(i as u16).to_be_bytes());
        v.extend(s);
    }
    v
}

fn check_run(got: &[Vec<u8>], count: usize, size: usize, last: usize) {
    assert_eq!(got.len(), count);
    for (i, d) in got.iter().enumerate() {
        let len = if i + 1 == count { last } else { size };
        assert_eq!(d.len(), len, "datagram {i}");
        assert_eq!(u16::from_be_bytes([d[0], d[1]]), i as u16);
        assert!(d[2..].iter().all(|&b| b == i as u8));
    }
}

/// UDP GSO on loopback: 20 × 1400 bytes in one `sendmsg` arrive as 20 datagrams with GRO off,
/// and as fewer, coalesced reads with GRO on that `segments` splits back. Also: a shorter last
/// segment, runs longer than one GSO call, IPv6, `GsoBatch`, and the fallback after the kernel
/// refuses a segment size above the MTU.
#[test]
fn udp_gso_gro_loopback() {
    if !is_root() {
        return;
    }
    let u = TestNs::new("wsys2", "gso");
    block_on_in(&u.ns(), || async {
        let nl = Netlink::new().unwrap();
        let lo = link(&nl, "lo").await;
        nl.set_up(lo).await.unwrap();
    });
    u.ns()
        .run_in(|| {
            let rx = BatchUdp::bind("127.0.0.1:0".parse().unwrap()).unwrap();
            let tx = BatchUdp::bind("127.0.0.1:0".parse().unwrap()).unwrap();
            rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let to = rx.local_addr().unwrap();
            assert_eq!(tx.max_gso_segments(), GSO_MAX_SEGMENTS);
            let mut rb = RecvBatch::new(64, GRO_BUF_SIZE);

            // GRO off: the kernel splits the super-datagram for the receiver.
            let data = run(20, 1400, 1400);
            assert_eq!(tx.send_gso(to, &data, 1400).unwrap(), 20 * 1400);
            let (slots, got, coalesced) = collect(&rx, &mut rb, 20);
            assert_eq!((slots, coalesced), (20, 0));
            check_run(&got, 20, 1400, 1400);

            // GRO on: fewer reads, split back by segments().
            assert!(rx.set_gro(true).unwrap());
            assert_eq!(tx.send_gso(to, &data, 1400).unwrap(), 20 * 1400);
            let (slots, got, coalesced) = collect(&rx, &mut rb, 20);
            eprintln!("GRO on: 20 datagrams in {slots} slot(s)");
            assert!(slots < 20 && coalesced >= 1, "{slots} slots");
            check_run(&got, 20, 1400, 1400);

            // A shorter last segment.
            let data = run(20, 1400, 333);
            assert_eq!(tx.send_gso(to, &data, 1400).unwrap(), data.len());
            let (_, got, _) = collect(&rx, &mut rb, 20);
            check_run(&got, 20, 1400, 333);

            // More than one GSO call's worth: 150 × 200 bytes (64 per call).
            let data = run(150, 200, 200);
            assert_eq!(tx.send_gso(to, &data, 200).unwrap(), data.len());
            let (_, got, _) = collect(&rx, &mut rb, 150);
            check_run(&got, 150, 200, 200);

            // GsoBatch: 20 pushes, one send.
            let mut g = GsoBatch::new(tx.max_gso_segments(), 1500);
            for i in 0..20usize {
                assert!(g.push_with(to, |buf| {
                    buf[..1400].fill(i as u8);
                    buf[..2].copy_from_slice(&(i as u16).to_be_bytes());
                    1400
                }));
            }
            assert!(!g.is_closed());
            assert_eq!(tx.send_gso_batch(&mut g).unwrap(), 20);
            assert!(g.is_empty());
            let (_, got, _) = collect(&rx, &mut rb, 20);
            check_run(&got, 20, 1400, 1400);

            // A truncating slot: the coalesced run is cut and flagged.
            let mut small = RecvBatch::new(4, 3000);
            assert_eq!(tx.send_gso(to, &run(20, 1400, 1400), 1400).unwrap(), 28000);
            let n = rx.recv_batch(&mut small).unwrap();
            assert!(n >= 1);
            assert!(small.truncated(0));
            assert_eq!((small.datagram(0).len(), small.stride(0)), (3000, 1400));
            let segs: Vec<usize> = small.segments(0).map(<[u8]>::len).collect();
            assert_eq!(segs, vec![1400, 1400, 200]);
            rx.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            while rx.recv_batch(&mut rb).is_ok() {}
            rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();

            // IPv6: up to 65527 bytes per call.
            let rx6 = BatchUdp::bind("[::1]:0".parse().unwrap()).unwrap();
            rx6.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let tx6 = BatchUdp::bind("[::1]:0".parse().unwrap()).unwrap();
            let data = run(100, 1400, 1400);
            assert_eq!(
                tx6.send_gso(rx6.local_addr().unwrap(), &data, 1400)
                    .unwrap(),
                data.len()
            );
            let (_, got, _) = collect(&rx6, &mut rb, 100);
            check_run(&got, 100, 1400, 1400);
        })
        .unwrap();

    // With a 1500-byte loopback MTU, 2000-byte segments are refused (EMSGSIZE): those go out
    // one by one (fragmented, since the socket allows fragmentation), GSO stays on. Then
    // SO_NO_CHECK makes the kernel refuse GSO itself (EINVAL): it is switched off for the
    // socket (and its clones) and the datagrams still go out.
    block_on_in(&u.ns(), || async {
        let nl = Netlink::new().unwrap();
        let lo = link(&nl, "lo").await;
        nl.set_mtu(lo, 1500).await.unwrap();
    });
    u.ns()
        .run_in(|| {
            let rx = BatchUdp::bind("127.0.0.1:0".parse().unwrap()).unwrap();
            let tx = BatchUdp::bind("127.0.0.1:0".parse().unwrap()).unwrap();
            let clone = tx.try_clone().unwrap();
            rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let to = rx.local_addr().unwrap();
            let mut rb = RecvBatch::new(64, 4096);
            let data = run(10, 2000, 2000);
            assert_eq!(tx.send_gso(to, &data, 2000).unwrap(), data.len());
            assert_eq!(tx.max_gso_segments(), GSO_MAX_SEGMENTS);
            let (_, got, _) = collect(&rx, &mut rb, 10);
            check_run(&got, 10, 2000, 2000);

            let one: libc::c_int = 1;
            // SAFETY: SO_NO_CHECK reads one int from the pointer, which points to a live c_int
            // of the length passed; the fd is the open socket `tx`.
            let r = unsafe {
                libc::setsockopt(
                    tx.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_NO_CHECK,
                    (&raw const one).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            assert_eq!(r, 0);
            let data = run(10, 1000, 1000);
            assert_eq!(tx.send_gso(to, &data, 1000).unwrap(), data.len());
            assert_eq!(tx.max_gso_segments(), 1);
            assert_eq!(clone.max_gso_segments(), 1, "shared with clones");
            let (_, got, _) = collect(&rx, &mut rb, 10);
            check_run(&got, 10, 1000, 1000);
            // Later sends use the fallback directly.
            let data = run(5, 1000, 10);
            assert_eq!(tx.send_gso(to, &data, 1000).unwrap(), data.len());
            let (_, got, _) = collect(&rx, &mut rb, 5);
            check_run(&got, 5, 1000, 10);
        })
        .unwrap();
}
