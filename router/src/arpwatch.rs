//! Layer: driver. Watches the bridge's ARP traffic for an address in use twice: reads ARP
//! frames from an `AF_PACKET` socket on the bridge ([`weft_sys::packet::ArpSocket`]), feeds
//! them to the sans-IO [`weft_ipam::ArpWatch`], sends the probes it asks for from the bridge's
//! MAC, and reports the conflicts it finds as IPAM duplicates (`weft status ipam`, the
//! `weft_ipam_duplicates_total` metric, a log line).

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use weft_ipam::{ArpSeen, ArpWatch};
use weft_sys::netlink::Netlink;
use weft_sys::packet::{ArpSocket, AsyncArpSocket};
use weft_wire::arp;
use weft_wire::ethernet::{Address, EtherType, Frame};

use crate::state::Shared;

/// How often the bridge's own addresses are read again.
const REFRESH: Duration = Duration::from_secs(10);

/// Runs for the router's lifetime (returns if the bridge cannot be watched, after saying so).
pub async fn run(shared: Arc<Shared>, bridge: String) {
    let opened = async {
        let nl = Netlink::new()?;
        let index = nl
            .link_index(&bridge)
            .await?
            .ok_or_else(|| anyhow::anyhow!("no bridge {bridge}"))?;
        let mac = nl
            .link_mac(index)
            .await?
            .ok_or_else(|| anyhow::anyhow!("{bridge} has no MAC address"))?;
        let sock = AsyncArpSocket::new(ArpSocket::open(index)?)?;
        anyhow::Ok((nl, index, mac, sock))
    }
    .await;
    let (nl, index, mac, sock) = match opened {
        Ok(x) => x,
        Err(e) => {
            tracing::warn!("not watching {bridge} for duplicate addresses: {e:#}");
            return;
        }
    };
    let mut watch = ArpWatch::new();
    let mut refresh = tokio::time::interval(REFRESH);
    let mut buf = vec![0u8; 2048];
    loop {
        let wake = watch
            .poll_timeout()
            .map_or(REFRESH, |t| t.saturating_duration_since(shared.clock.now()));
        tokio::select! {
            got = sock.recv(&mut buf) => match got {
                Ok(n) => {
                    if let Some(seen) = parse(&buf[..n]) {
                        tracing::trace!(?seen, "ARP on {bridge}");
                        watch.observe(shared.clock.now(), seen);
                    }
                }
                Err(e) => {
                    tracing::warn!("reading ARP from {bridge}: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            },
            _ = tokio::time::sleep(wake) => watch.handle_timeout(shared.clock.now()),
            _ = refresh.tick() => {
                let addrs: Vec<Ipv4Addr> = nl
                    .addresses(index)
                    .await
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|a| match a {
                        IpNet::V4(n) => Some(n.addr()),
                        IpNet::V6(_) => None,
                    })
                    .collect();
                watch.set_bridge(mac, &addrs);
            }
        }
        let now = shared.clock.now();
        while let Some(ip) = watch.poll_probe(now) {
            let mut frame = [0u8; arp::GRATUITOUS_FRAME_LEN];
            tracing::debug!("probing {ip} on {bridge}");
            if arp::emit_request(&mut frame, Address(mac), Ipv4Addr::UNSPECIFIED, ip).is_ok() {
                if let Err(e) = sock.send(&frame) {
                    tracing::debug!("ARP probe for {ip} on {bridge}: {e}");
                }
            }
        }
        while let Some(c) = watch.poll_conflict() {
            let macs: Vec<String> = c.macs.iter().map(|m| Address(*m).to_string()).collect();
            let detail = format!(
                "answered ARP for it from {} different MACs: {} (seen on {bridge})",
                macs.len(),
                macs.join(", ")
            );
            let mut state = shared.ipam();
            match state.ipam.as_mut() {
                Some(drv) => {
                    drv.ipam.report_conflict(now, c.addr, detail);
                    drop(state);
                    shared.wake.notify_one();
                }
                None => tracing::warn!("duplicate address {}: {detail}", c.addr),
            }
        }
    }
}

/// The ARP packet in an Ethernet frame, if it is one.
fn parse(frame: &[u8]) -> Option<ArpSeen> {
    let f = Frame::new_checked(frame).ok()?;
    if f.ethertype() != EtherType::Arp {
        return None;
    }
    let p = arp::Packet::new_checked(f.payload()).ok()?;
    let arp::Repr::EthernetIpv4 {
        source_hardware_addr,
        source_protocol_addr,
        target_protocol_addr,
        ..
    } = arp::Repr::parse(&p).ok()?;
    Some(ArpSeen {
        sender_mac: source_hardware_addr.0,
        sender_ip: source_protocol_addr,
        target_ip: target_protocol_addr,
    })
}
