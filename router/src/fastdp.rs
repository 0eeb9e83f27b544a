//! The kernel fast path ("fastdp", issue 13): design note. Not built yet; this branch holds the
//! note and the netlink pieces it needs (`weft_sys::netlink::Netlink::{add_vxlan_peer,
//! add_vxlan_default, set_isolated}`).
//!
//! # What it is for
//!
//! Between two hosts that reach each other directly, frames should cross in the kernel, as
//! Weave's fastdp did: no copy into userspace, GSO/GRO and checksums offloaded, the router's
//! CPU near zero. weft's userspace path ("sleeve") stays the fallback per connection (blocked
//! port, too-small path, encryption, an old peer) and carries relayed traffic.
//!
//! # The shape: one plain VXLAN device per fastdp peer
//!
//! weft's VNI names both ends (`src | dst << 12`), so it differs by direction. A plain
//! (non-`external`) VXLAN device receives one VNI, but each forwarding-database entry may carry
//! its own VNI for what the device sends. So one device per peer serves both directions with
//! weft's VNIs unchanged (checked by hand between two namespaces, session 22):
//!
//! ```text
//! host A (short id 1), peer B (short id 2) at 192.0.2.2:
//!   ip link add vxwe-002 type vxlan id 4098 dstport 6784 local 192.0.2.1 nolearning df set
//!       (4098 = 2 | 1 << 12: what B sends to A)
//!   bridge fdb replace 00:00:00:00:00:00 dev vxwe-002 dst 192.0.2.2 vni 8193 self permanent
//!       (8193 = 1 | 2 << 12: what A sends to B)
//!   ip link set vxwe-002 master weave isolated on mtu <overlay MTU> up
//! ```
//!
//! All such devices share the kernel's one UDP socket on 6784 (Weave's fastdp port) and are
//! demultiplexed by VNI. This needs neither Open vSwitch nor tc flower nor `act_tunnel_key`
//! (all absent here) nor eBPF (no clang/aya build, no BPF objects to pin and clean up); it is
//! the same kernel code as the `kvxlan` netbench target, so the same speed is expected.
//!
//! # Frames
//!
//! - The bridge learns which port a MAC is behind. Frames from a fastdp peer arrive on its
//!   device, so its containers' MACs are learned there and unicast to them goes straight into
//!   the kernel path. MACs of peers reached through userspace (sleeve or relayed) are learned on
//!   the TAP.
//! - Every `vxwe-*` port and the TAP are `isolated`: isolated ports exchange nothing with each
//!   other, only with the containers' ports. So a frame received from one peer is never sent
//!   on to another peer by the bridge (split horizon: broadcast exactly once per host), and
//!   frames the kernel path delivered never reach userspace as if they were local.
//! - A local broadcast (or unknown unicast) is flooded by the bridge to every fastdp peer's
//!   device and to the TAP; the userspace engine then sends it only to the peers not served by
//!   a fastdp device (its flood targets minus fastdp neighbours; hosts behind a relay get it
//!   through the sleeve broadcast tree as today). Relaying stays in userspace.
//!
//! # Choosing the path, per connection
//!
//! A connection uses fastdp when both ends announce it in the handshake features and MTU-sized
//! probes cross the kernel path both ways; else sleeve, with the reason in `status connections`
//! (`fastdp` / `sleeve` and why, as Weave printed). Heartbeats and path-MTU probes of a fastdp
//! connection go through the kernel path itself: the router sends them as Ethernet frames to a
//! reserved link-local group address (`01:80:c2:00:00:0x`, never forwarded by a bridge) on an
//! `AF_PACKET` socket bound to the peer's device, and reads the peer's on the same socket, so
//! the node's existing heartbeat and path-MTU logic judge the kernel path. When
//! they stop, the node falls back to sleeve (the device's FDB entry is removed, the engine's
//! flood set takes the peer back); when they return, fastdp again. `--no-fastdp` /
//! `WEAVE_NO_FASTDP` keep today's behaviour. Encrypted connections stay on sleeve: the kernel
//! here has no ESP/GCM in XFRM and no WireGuard; where present, a per-peer XFRM policy keyed
//! from the handshake's data keys (or a WireGuard device per peer) would be a third
//! implementation of the data-path seam.
//!
//! # Ports
//!
//! The kernel socket takes UDP 6784; sleeve moves to 6783/udp (Weave's), which the handshake
//! already announces (`data_port`). A peer without fastdp keeps talking sleeve to our sleeve
//! port.
//!
//! # Lifecycle
//!
//! Devices live in the router's network namespace, so two routers never share one. At start
//! the router deletes every `vxwe-*` it finds (a SIGKILLed router's leftovers); `reset`
//! deletes them; `stop` leaves local traffic (the bridge) working. Counters: each device's
//! netlink statistics (packets, bytes, drops) give weave_flows-style per-peer metrics.
