//! Layer: driver. The DNS server's sockets: UDP and TCP on each listen address, the upstream
//! servers of the host's resolv.conf, and the forwarding of queries to them.
//!
//! Where it listens: `--dns-listen-address` if given; else the Docker bridge's address, port 53
//! (as Weave's launch script sets it); else every address of the weave bridge (containers with
//! only `ethwe` reach the host there). Both are followed: a Docker bridge that appears after
//! launch (dockerd started later) is taken up, and so are the addresses `weft expose` adds and
//! removes.
//!
//! Bounded work: a token bucket per client address is checked before a datagram is parsed
//! ([`weft_dns::limit`]), at most [`MAX_FORWARDS`] forwarded queries wait for upstreams at once,
//! at most [`MAX_TCP_CONNS`] TCP clients are served, each idle at most [`TCP_IDLE`]. Whatever
//! is refused is counted in `dns_dropped`; nothing queues without bound.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::runtime::Handle;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use weft_dns::limit::Limiter;
use weft_dns::query::{Decision, Forward, ReplyKind, Transport};
use weft_sys::udp::{BatchUdp, RecvBatch};

use super::{DnsCounters, DnsService};

/// Forwarded queries waiting for upstreams at once.
pub const MAX_FORWARDS: usize = 256;
/// TCP clients served at once.
pub const MAX_TCP_CONNS: usize = 64;
/// How long a TCP client may stay silent.
pub const TCP_IDLE: Duration = Duration::from_secs(10);
/// How often the weave bridge's addresses are checked when following them.
const FOLLOW_EVERY: Duration = Duration::from_secs(1);
/// Datagrams taken per `recvmmsg`.
const UDP_BATCH: usize = 32;
/// Largest query accepted over UDP (longer ones are counted as malformed).
const UDP_BUF: usize = 4096;
/// How often the UDP thread looks whether it should stop.
const UDP_POLL: Duration = Duration::from_millis(200);
/// How often resolv.conf is looked at again.
const RESOLV_EVERY: Duration = Duration::from_secs(5);

/// The running server's shared pieces.
#[derive(Debug)]
struct Server {
    svc: Arc<DnsService>,
    limiter: Mutex<Limiter>,
    forwards: Arc<Semaphore>,
    tcp_conns: Arc<Semaphore>,
}

/// What resolv.conf said when last read.
#[derive(Debug, Default)]
pub struct ResolvCache {
    checked: Option<std::time::Instant>,
    modified: Option<SystemTime>,
    servers: Vec<SocketAddr>,
}

/// What to do with a query that was not dropped.
enum Action {
    Reply(Vec<u8>),
    Forward(Forward),
}

/// Binds what can be bound now (an explicit address, or the Docker bridge's) and returns the
/// task serving DNS until aborted. Fails when an explicit address cannot be bound.
pub async fn start(svc: Arc<DnsService>) -> anyhow::Result<JoinHandle<()>> {
    let weave_bridge = svc.weave_bridge.clone();
    let server = Arc::new(Server {
        limiter: Mutex::new(Limiter::new(svc.config.rate_limit)),
        forwards: Arc::new(Semaphore::new(MAX_FORWARDS)),
        tcp_conns: Arc::new(Semaphore::new(MAX_TCP_CONNS)),
        svc,
    });
    if let Some(addr) = server.svc.config.listen {
        let tasks = bind(&server, addr)
            .await
            .with_context(|| format!("listening for DNS queries on {addr}"))?;
        set_listening(&server.svc, vec![addr]);
        tracing::info!("DNS server for {} on {addr}", server.svc.names().domain());
        return Ok(tokio::spawn(async move {
            // The socket tasks run until this one is aborted with them.
            let _guard = AbortAll(tasks);
            std::future::pending::<()>().await;
        }));
    }
    // The Docker bridge's address, if there is one now, must be bindable (as for Weave).
    let mut bound = HashMap::new();
    if let Some(ip) = bridge_v4(&server.svc.config.docker_bridge)
        .await
        .first()
        .copied()
    {
        let addr = SocketAddr::new(IpAddr::V4(ip), 53);
        let tasks = bind(&server, addr)
            .await
            .with_context(|| format!("listening for DNS queries on {addr}"))?;
        set_listening(&server.svc, vec![addr]);
        tracing::info!("DNS server for {} on {addr}", server.svc.names().domain());
        bound.insert(ip, AbortAll(tasks));
    } else {
        tracing::info!(
            "no Docker bridge {}: DNS listens on the addresses of bridge {weave_bridge} (weft \
             expose) until there is one",
            server.svc.config.docker_bridge
        );
    }
    Ok(tokio::spawn(follow(server, weave_bridge, bound)))
}

/// Aborts the tasks when dropped (with the task holding it).
struct AbortAll(Vec<JoinHandle<()>>);

impl Drop for AbortAll {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

fn set_listening(svc: &DnsService, addrs: Vec<SocketAddr>) {
    *svc.listening.lock().unwrap_or_else(|e| e.into_inner()) = addrs;
}

/// Listens, port 53, on the Docker bridge's address when it has one, else on every IPv4
/// address of the weave bridge `bridge`, as they come and go.
async fn follow(server: Arc<Server>, bridge: String, mut bound: HashMap<Ipv4Addr, AbortAll>) {
    loop {
        let docker = bridge_v4(&server.svc.config.docker_bridge).await;
        let now: Vec<Ipv4Addr> = match docker.first() {
            Some(ip) => vec![*ip],
            None => bridge_v4(&bridge).await,
        };
        bound.retain(|ip, _| now.contains(ip));
        for ip in now {
            if bound.contains_key(&ip) {
                continue;
            }
            let addr = SocketAddr::new(IpAddr::V4(ip), 53);
            match bind(&server, addr).await {
                Ok(tasks) => {
                    tracing::info!("DNS server for {} on {addr}", server.svc.names().domain());
                    bound.insert(ip, AbortAll(tasks));
                }
                Err(e) => tracing::warn!("cannot listen for DNS queries on {addr}: {e:#}"),
            }
        }
        let mut addrs: Vec<SocketAddr> = bound
            .keys()
            .map(|ip| SocketAddr::new(IpAddr::V4(*ip), 53))
            .collect();
        addrs.sort();
        set_listening(&server.svc, addrs);
        tokio::time::sleep(FOLLOW_EVERY).await;
    }
}

/// The IPv4 addresses of link `name` (none if it does not exist).
pub async fn bridge_v4(name: &str) -> Vec<Ipv4Addr> {
    let Ok(nl) = weft_sys::netlink::Netlink::new() else {
        return Vec::new();
    };
    let Ok(Some(index)) = nl.link_index(name).await else {
        return Vec::new();
    };
    nl.addresses(index)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter_map(|a| match a.addr() {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(_) => None,
        })
        .collect()
}

/// The address containers are told to use (`weft dns-args`, the proxy's `--dns`, the CNI
/// result): the one listened on, or for a wildcard listen address (or none bound yet) the
/// Docker bridge's, else the weave bridge's first.
pub async fn advertised(svc: &DnsService) -> Option<SocketAddr> {
    let weave_bridge = svc.weave_bridge.as_str();
    let listening = svc.listening();
    if let Some(a) = listening.iter().find(|a| !a.ip().is_unspecified()) {
        return Some(*a);
    }
    // Nothing bound yet: following the bridges, it binds port 53 of the address found below
    // within FOLLOW_EVERY (an address exposed a moment ago, as a CNI ADD does, counts).
    let port = listening.first().map_or(53, SocketAddr::port);
    let ip = match bridge_v4(&svc.config.docker_bridge).await.first() {
        Some(ip) => *ip,
        None => *bridge_v4(weave_bridge).await.first()?,
    };
    Some(SocketAddr::new(IpAddr::V4(ip), port))
}

async fn bind(server: &Arc<Server>, addr: SocketAddr) -> anyhow::Result<Vec<JoinHandle<()>>> {
    // 4 MiB buffers absorb bursts; recvmmsg takes what queued up in one call.
    let udp = Arc::new(BatchUdp::bind(addr).context("UDP")?);
    udp.set_read_timeout(Some(UDP_POLL))?;
    let tcp = TcpListener::bind(addr).await.context("TCP")?;
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let (server, udp, stop) = (server.clone(), udp.clone(), stop.clone());
        let rt = Handle::current();
        std::thread::Builder::new()
            .name(format!("dns-udp-{addr}"))
            .spawn(move || serve_udp(&server, &udp, &stop, &rt))
            .context("starting the DNS UDP thread")?
    };
    // The thread stops when this task is aborted (with the server).
    let udp_guard = tokio::spawn(async move {
        struct Stop(Arc<AtomicBool>, Option<std::thread::JoinHandle<()>>);
        impl Drop for Stop {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
                drop(self.1.take());
            }
        }
        let _stop = Stop(stop, Some(thread));
        std::future::pending::<()>().await;
    });
    Ok(vec![
        udp_guard,
        tokio::spawn(serve_tcp(server.clone(), tcp)),
    ])
}

/// The UDP side, on its own thread: batches of datagrams answered in place; forwarded
/// queries become tasks on `rt`.
fn serve_udp(server: &Arc<Server>, sock: &Arc<BatchUdp>, stop: &AtomicBool, rt: &Handle) {
    let mut batch = RecvBatch::new(UDP_BATCH, UDP_BUF);
    while !stop.load(Ordering::Relaxed) {
        let n = match sock.recv_batch(&mut batch) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) => {
                tracing::debug!("DNS UDP receive: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        for i in 0..n {
            let src = batch.source(i);
            if batch.truncated(i) {
                // Bigger than any query has reason to be.
                DnsCounters::bump(&server.svc.counters.queries);
                DnsCounters::bump(&server.svc.counters.malformed);
                continue;
            }
            let Some(action) = server.decide(src, batch.datagram(i), Transport::Udp) else {
                continue;
            };
            match action {
                Action::Reply(bytes) => {
                    // A full socket buffer drops the reply, as the network would.
                    let _ = sock.send_to(&bytes, src);
                }
                Action::Forward(fwd) => {
                    let Ok(permit) = server.forwards.clone().try_acquire_owned() else {
                        DnsCounters::bump(&server.svc.counters.dropped);
                        continue;
                    };
                    let (server, sock) = (server.clone(), sock.clone());
                    rt.spawn(async move {
                        let reply = server.forward(&fwd, Transport::Udp).await;
                        let _ = sock.send_to(&reply, src);
                        drop(permit);
                    });
                }
            }
        }
    }
}

async fn serve_tcp(server: Arc<Server>, listener: TcpListener) {
    loop {
        let (stream, src) = match listener.accept().await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!("DNS TCP accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(permit) = server.tcp_conns.clone().try_acquire_owned() else {
            DnsCounters::bump(&server.svc.counters.dropped);
            drop(stream);
            continue;
        };
        let server = server.clone();
        tokio::spawn(async move {
            if let Err(e) = server.serve_conn(stream, src).await {
                tracing::debug!("DNS TCP client {src}: {e}");
            }
            drop(permit);
        });
    }
}

impl Server {
    /// Counts, limits and decides; `None` when nothing is sent back.
    fn decide(&self, src: SocketAddr, bytes: &[u8], transport: Transport) -> Option<Action> {
        let c = &self.svc.counters;
        DnsCounters::bump(&c.queries);
        let allowed = self
            .limiter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .allow(self.svc.clock.now(), src.ip());
        if !allowed {
            DnsCounters::bump(&c.dropped);
            return None;
        }
        let decision = {
            let names = self.svc.names();
            self.svc
                .responder
                .decide(&names, bytes, transport, rand::random())
        };
        match &decision {
            Decision::Reply(r) => DnsCounters::bump(match r.kind {
                ReplyKind::Answer => &c.local_answers,
                ReplyKind::NxDomain => &c.nxdomain,
                ReplyKind::Error => &c.malformed,
            }),
            Decision::Forward(_) => DnsCounters::bump(&c.forwarded),
            Decision::Drop => DnsCounters::bump(&c.malformed),
        }
        match decision {
            Decision::Reply(r) => Some(Action::Reply(r.bytes)),
            Decision::Forward(f) => Some(Action::Forward(f)),
            Decision::Drop => None,
        }
    }

    async fn serve_conn(&self, mut stream: TcpStream, src: SocketAddr) -> std::io::Result<()> {
        let _ = stream.set_nodelay(true);
        loop {
            let mut len = [0u8; 2];
            match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) if e.kind() == ErrorKind::UnexpectedEof => return Ok(()),
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(()),
            }
            let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
            match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut msg)).await {
                Ok(r) => r?,
                Err(_) => return Ok(()),
            };
            let reply = match self.decide(src, &msg, Transport::Tcp) {
                None => continue,
                Some(Action::Reply(bytes)) => bytes,
                Some(Action::Forward(fwd)) => {
                    let Ok(_permit) = self.forwards.try_acquire() else {
                        DnsCounters::bump(&self.svc.counters.dropped);
                        continue;
                    };
                    self.forward(&fwd, Transport::Tcp).await
                }
            };
            let Ok(n) = u16::try_from(reply.len()) else {
                continue;
            };
            stream.write_all(&n.to_be_bytes()).await?;
            stream.write_all(&reply).await?;
        }
    }

    /// Asks each upstream in turn (each gets the fallback timeout); SERVFAIL when none answers.
    async fn forward(&self, fwd: &Forward, transport: Transport) -> Vec<u8> {
        let timeout = self.svc.config.fallback_timeout;
        for server in upstream_servers(&self.svc) {
            let id: u16 = rand::random();
            let query = fwd.upstream_query(id);
            let result = match transport {
                Transport::Udp => {
                    tokio::time::timeout(timeout, ask_udp(server, &query, fwd, id)).await
                }
                Transport::Tcp => {
                    tokio::time::timeout(timeout, ask_tcp(server, &query, fwd, id)).await
                }
            };
            match result {
                Ok(Ok(reply)) => return reply,
                Ok(Err(e)) => tracing::debug!("upstream {server} for {}: {e:#}", fwd.question()),
                Err(_) => tracing::debug!("upstream {server} for {}: timed out", fwd.question()),
            }
        }
        DnsCounters::bump(&self.svc.counters.upstream_failures);
        fwd.servfail()
    }
}

async fn ask_udp(
    server: SocketAddr,
    query: &[u8],
    fwd: &Forward,
    id: u16,
) -> anyhow::Result<Vec<u8>> {
    let local: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(local).await?;
    sock.connect(server).await?;
    sock.send(query).await?;
    let mut buf = vec![0u8; 65536];
    loop {
        let n = sock.recv(&mut buf).await?;
        // Anything else arriving on this port (a late or forged reply) is ignored.
        if let Ok(reply) = fwd.relay(id, &buf[..n]) {
            return Ok(reply);
        }
    }
}

async fn ask_tcp(
    server: SocketAddr,
    query: &[u8],
    fwd: &Forward,
    id: u16,
) -> anyhow::Result<Vec<u8>> {
    let mut s = TcpStream::connect(server).await?;
    let n = u16::try_from(query.len())?;
    s.write_all(&n.to_be_bytes()).await?;
    s.write_all(query).await?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut buf).await?;
    Ok(fwd.relay(id, &buf)?)
}

/// The upstream servers: resolv.conf's (`--resolv-conf`), read again when it changes (looked
/// at every few seconds), never one of our own listen addresses.
pub fn upstream_servers(svc: &DnsService) -> Vec<SocketAddr> {
    let path = &svc.config.resolv_conf;
    let mut cache = svc.resolv.lock().unwrap_or_else(|e| e.into_inner());
    let due = cache.checked.is_none_or(|t| t.elapsed() >= RESOLV_EVERY);
    if due {
        cache.checked = Some(std::time::Instant::now());
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if modified != cache.modified || modified.is_none() {
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    let own: Vec<IpAddr> = svc.listening().iter().map(SocketAddr::ip).collect();
                    cache.servers = weft_dns::resolv::nameservers(&text, &own);
                    cache.modified = modified;
                }
                Err(e) => {
                    tracing::warn!("reading {}: {e}", path.display());
                    cache.servers.clear();
                }
            }
        }
    }
    cache.servers.clone()
}
