//! Integration tests (root, network namespaces): IP address management across hosts.
//!
//! - three hosts allocate 100 addresses each at the same moment: 300 distinct addresses in
//!   10.32.0.0/12, and containers attached with `net:default` ping across hosts;
//! - a router stopped (or SIGKILLed) and launched again keeps its containers' addresses and does
//!   not hand them out again;
//! - `weft rmpeer` of a host gone for good takes over its space (a second rmpeer elsewhere is
//!   refused or takes nothing), and that space is then allocated without duplicates;
//! - the seed scenario's network half: a router-only host exposes `net:10.32.1.0/24` and reaches
//!   IPAM-attached containers on three other hosts by ping and TCP until `weft hide`;
//! - bad input (outside the range, malformed CIDR, subnet too small, subnet exhausted): a clear
//!   error, nothing allocated, nothing lost;
//! - a peer waiting for a consensus quorum says so in `weft status ipam`, drops a request whose
//!   client gave up, and allocates once the quorum is there.
//!
//! Two measurement tests print allocation rates and the time from the first allocation to
//! consensus for 3 and 12 peers (`--nocapture` shows the figures).
//!
//! The router's HTTP API (127.0.0.1:6784 in each host namespace) is driven with a small python3
//! urllib script (curl is not installed), run inside the host namespace.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Barrier;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use weft_tests::cmd::ns_exec;
use weft_tests::mesh::{addr_ip, connections, launch_with, peer_entry};
use weft_tests::{Container, Host, TestNet, run_test, wait_established, wait_until};

/// Sends `count` requests `METHOD TEMPLATE` (with `{i}` replaced by 0..count) to the router,
/// from a pool of `threads` threads (sequentially when 1); prints JSON
/// `{"elapsed": s, "results": [[code, body, seconds], ...]}` (code 0: no HTTP answer).
const PY_HTTP: &str = r#"
import json, sys, time, urllib.request, urllib.error
from concurrent.futures import ThreadPoolExecutor

def req(method, path, timeout):
    r = urllib.request.Request('http://127.0.0.1:6784' + path, method=method)
    t = time.monotonic()
    try:
        with urllib.request.urlopen(r, timeout=timeout) as f:
            code, body = f.status, f.read().decode()
    except urllib.error.HTTPError as e:
        code, body = e.code, e.read().decode()
    except Exception as e:
        code, body = 0, repr(e)
    return [code, body, time.monotonic() - t]

method, tmpl = sys.argv[1], sys.argv[2]
count, threads, timeout = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
one = lambda i: req(method, tmpl.replace('{i}', str(i)), timeout)
t0 = time.monotonic()
if threads <= 1:
    res = [one(i) for i in range(count)]
else:
    with ThreadPoolExecutor(threads) as ex:
        res = list(ex.map(one, range(count)))
print(json.dumps({'elapsed': time.monotonic() - t0, 'results': res}))
"#;

/// One HTTP answer from the router.
#[derive(Debug, Clone)]
struct Reply {
    /// Status code (0: no answer, e.g. a timeout; `body` then says why).
    code: u16,
    body: String,
    secs: f64,
}

impl Reply {
    fn ok(&self) -> bool {
        (200..300).contains(&self.code)
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {:?} ({:.2}s)",
            self.code,
            self.body.trim(),
            self.secs
        )
    }
}

/// Runs [`PY_HTTP`] in `h`'s namespace; each request may take up to `per_request`.
fn http_many(
    h: &Host,
    method: &str,
    tmpl: &str,
    count: usize,
    threads: usize,
    per_request: Duration,
) -> Result<(Vec<Reply>, Duration)> {
    let limit =
        per_request * u32::try_from(count.div_ceil(threads.max(1)))? + Duration::from_secs(30);
    let args = [
        "python3".to_owned(),
        "-c".into(),
        PY_HTTP.into(),
        method.into(),
        tmpl.into(),
        count.to_string(),
        threads.to_string(),
        per_request.as_secs_f64().to_string(),
    ];
    let out = ns_exec(h.ns(), &args, limit)?;
    ensure!(out.success(), "http script on host {}: {out}", h.n());
    let v: Value = serde_json::from_str(out.stdout.trim())
        .with_context(|| format!("http script output: {}", out.stdout))?;
    let results = v["results"]
        .as_array()
        .context("no results")?
        .iter()
        .map(|r| Reply {
            code: r[0]
                .as_u64()
                .and_then(|c| u16::try_from(c).ok())
                .unwrap_or(0),
            body: r[1].as_str().unwrap_or("").to_owned(),
            secs: r[2].as_f64().unwrap_or(0.0),
        })
        .collect();
    let elapsed = Duration::from_secs_f64(v["elapsed"].as_f64().unwrap_or(0.0));
    Ok((results, elapsed))
}

/// One request `METHOD PATH` to `h`'s router (120 s limit).
fn http(h: &Host, method: &str, path: &str) -> Result<Reply> {
    let (mut r, _) = http_many(h, method, path, 1, 1, Duration::from_secs(120))?;
    r.pop().context("no reply")
}

/// `a.b.c.d/len` parsed.
fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8)> {
    let (a, l) = s
        .trim()
        .split_once('/')
        .with_context(|| format!("{s:?} has no prefix length"))?;
    Ok((
        a.parse().with_context(|| format!("{s:?}"))?,
        l.parse().with_context(|| format!("{s:?}"))?,
    ))
}

/// True if `ip` lies in `net/len`.
fn within(ip: Ipv4Addr, net: Ipv4Addr, len: u8) -> bool {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(ip) & mask == u32::from(net) & mask
}

/// The single address an allocation answered, checked to be inside `net/len` with prefix
/// length `want_len`.
fn allocated(r: &Reply, net: Ipv4Addr, len: u8, want_len: u8) -> Result<Ipv4Addr> {
    ensure!(r.ok(), "allocation failed: {r}");
    let (ip, l) = parse_cidr(&r.body)?;
    ensure!(
        l == want_len && within(ip, net, len),
        "allocation answered {:?}, expected an address in {net}/{len} with /{want_len}",
        r.body
    );
    Ok(ip)
}

/// `GET /ip` on `h`: identifier → addresses (`a.b.c.d/len`), sorted.
fn owned(h: &Host) -> Result<BTreeMap<String, Vec<String>>> {
    let r = http(h, "GET", "/ip")?;
    ensure!(r.ok(), "GET /ip on host {}: {r}", h.n());
    let v: Value = serde_json::from_str(&r.body).with_context(|| format!("GET /ip: {r}"))?;
    let mut map = BTreeMap::new();
    for e in v["owned"].as_array().context("no \"owned\" array")? {
        let id = e["containerid"]
            .as_str()
            .context("no containerid")?
            .to_owned();
        let mut addrs: Vec<String> = e["addrs"]
            .as_array()
            .context("no addrs")?
            .iter()
            .map(|a| {
                a.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| a.to_string())
            })
            .collect();
        addrs.sort();
        map.insert(id, addrs);
    }
    Ok(map)
}

/// `GET /ip/{id}` on `h`: the addresses, sorted.
fn lookup(h: &Host, id: &str) -> Result<Vec<String>> {
    let r = http(h, "GET", &format!("/ip/{id}"))?;
    ensure!(r.ok(), "GET /ip/{id} on host {}: {r}", h.n());
    let mut v: Vec<String> = r.body.split_whitespace().map(str::to_owned).collect();
    v.sort();
    Ok(v)
}

/// `weft status ipam --json` on `h`.
fn ipam_status(h: &Host) -> Result<Value> {
    let out = h.weft_ok(&["status", "ipam", "--json"])?;
    serde_json::from_str(&out).with_context(|| format!("status ipam --json: {out}"))
}

/// Sends the very first allocation (`POST /ip/first` on `hosts[0]`) while every host polls
/// `weft status ipam` in its own thread; returns when the allocation was answered and when each
/// host first reported "ready", both measured from just before the request.
fn first_allocation_and_ready(hosts: &[Host]) -> Result<(Duration, Vec<Duration>)> {
    for h in hosts {
        let v = ipam_status(h)?;
        ensure!(
            v["status"] != "ready",
            "host {} ready before any allocation: {v}",
            h.n()
        );
    }
    let t0 = Instant::now();
    std::thread::scope(|s| {
        let pollers: Vec<_> = hosts
            .iter()
            .map(|h| {
                s.spawn(move || {
                    wait_until(
                        &format!("IPAM to be ready on host {}", h.n()),
                        Duration::from_secs(60),
                        Duration::from_millis(50),
                        || {
                            let v = ipam_status(h)?;
                            ensure!(v["status"] == "ready", "{v}");
                            Ok(t0.elapsed())
                        },
                    )
                })
            })
            .collect();
        let r = http(&hosts[0], "POST", "/ip/first");
        let first = t0.elapsed();
        allocated(&r?, RANGE, 12, 12)?;
        let ready = pollers
            .into_iter()
            .map(|t| t.join().map_err(|_| anyhow::anyhow!("poller panicked"))?)
            .collect::<Result<Vec<_>>>()?;
        Ok((first, ready))
    })
}

/// Hosts 1..=n, each launched with `opts` and every other host as target, all connections
/// established.
fn mutual_mesh(net: &TestNet, n: u8, opts: &[&str]) -> Result<Vec<Host>> {
    let hosts: Vec<Host> = (1..=n).map(|k| net.host(k)).collect::<Result<_>>()?;
    for h in &hosts {
        let others: Vec<&Host> = hosts.iter().filter(|o| o.n() != h.n()).collect();
        launch_with(h, opts, &others)?;
    }
    let refs: Vec<&Host> = hosts.iter().collect();
    wait_established(&refs, Duration::from_secs(30))?;
    Ok(hosts)
}

static NS_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A fresh container namespace (`<prefix>ci<k>`), not attached.
fn container_ns(net: &TestNet) -> Result<String> {
    let k = NS_COUNTER.fetch_add(1, Ordering::Relaxed) + 1;
    net.netns(&format!("ci{k}"))
}

/// IPv4 addresses (`a.b.c.d/len`) on `ethwe` in namespace `ns`.
fn ethwe_addrs(ns: &str) -> Result<Vec<String>> {
    let out = weft_tests::cmd::ip(["-j", "-4", "-n", ns, "addr", "show", "dev", "ethwe"])?;
    let v: Value = serde_json::from_str(&out).with_context(|| format!("ip -j addr: {out}"))?;
    Ok(v[0]["addr_info"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| {
            Some(format!(
                "{}/{}",
                a["local"].as_str()?,
                a["prefixlen"].as_u64()?
            ))
        })
        .collect())
}

/// Creates a container namespace and runs `weft attach SPECS... NS` on `h`; checks that the
/// printed address is the one on `ethwe`.
fn attach(net: &TestNet, h: &Host, label: &str, specs: &[&str]) -> Result<Container> {
    let ns = container_ns(net)?;
    let mut args = vec!["attach"];
    args.extend_from_slice(specs);
    args.push(&ns);
    let out = h
        .weft_ok(&args)
        .with_context(|| format!("attaching {label} on host {}", h.n()))?;
    let ip = out
        .split_whitespace()
        .next()
        .with_context(|| format!("weft attach printed nothing: {out:?}"))?;
    let addrs = ethwe_addrs(&ns)?;
    let cidr = addrs
        .iter()
        .find(|a| a.split('/').next() == Some(ip))
        .with_context(|| format!("weft attach printed {ip}, ethwe has {addrs:?}"))?;
    Container::from_ns(label, &ns, cidr)
}

/// Runs `f` on every host at the same moment (one thread each); results in host order.
fn on_all_at_once<T: Send>(
    hosts: &[Host],
    f: impl Fn(&Host) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    let barrier = Barrier::new(hosts.len());
    std::thread::scope(|s| {
        let handles: Vec<_> = hosts
            .iter()
            .map(|h| {
                let (f, barrier) = (&f, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    f(h)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|t| t.join().map_err(|_| anyhow::anyhow!("thread panicked"))?)
            .collect()
    })
}

const RANGE: Ipv4Addr = Ipv4Addr::new(10, 32, 0, 0);

#[test]
fn three_hosts_allocate_300_distinct_addresses_at_once() {
    run_test("ipall", |net| {
        let hosts = mutual_mesh(net, 3, &[])?;
        let t0 = Instant::now();
        let per_host = on_all_at_once(&hosts, |h| {
            http_many(
                h,
                "POST",
                &format!("/ip/h{}c{{i}}", h.n()),
                100,
                100,
                Duration::from_secs(120),
            )
        })?;
        let took = t0.elapsed();
        let mut all = BTreeSet::new();
        for (h, (replies, elapsed)) in hosts.iter().zip(&per_host) {
            let slowest = replies.iter().map(|r| r.secs).fold(0.0, f64::max);
            eprintln!(
                "host {}: 100 allocations in {elapsed:.2?} (slowest request {slowest:.2}s)",
                h.n()
            );
            let mut mine = BTreeMap::new();
            for (i, r) in replies.iter().enumerate() {
                let ip = allocated(r, RANGE, 12, 12)
                    .with_context(|| format!("host {} request h{}c{i}", h.n(), h.n()))?;
                ensure!(
                    all.insert(ip),
                    "{ip} handed out twice (again to h{}c{i})",
                    h.n()
                );
                mine.insert(format!("h{}c{i}", h.n()), vec![format!("{ip}/12")]);
            }
            // The router's own list agrees with what it answered.
            let listed = owned(h)?;
            ensure!(
                listed == mine,
                "host {}: GET /ip lists {} entries that differ from the 100 answers:\n{listed:?}",
                h.n(),
                listed.len()
            );
        }
        ensure!(all.len() == 300, "{} distinct addresses", all.len());
        eprintln!(
            "300 concurrent allocations on 3 hosts (consensus included) in {took:.2?}: \
             {:.0}/s",
            300.0 / took.as_secs_f64()
        );
        // Idempotent per identifier.
        let again = http(&hosts[0], "POST", "/ip/h1c7")?;
        let first = &owned(&hosts[0])?["h1c7"];
        ensure!(
            again.ok() && vec![again.body.trim().to_owned()] == *first,
            "POST /ip/h1c7 again answered {again}, first time {first:?}"
        );
        // Everyone agrees the ring is ready and split among three.
        for h in &hosts {
            let v = ipam_status(h)?;
            ensure!(v["status"] == "ready", "host {}: {v}", h.n());
            let peers = v["peers"].as_array().context("no peers")?;
            ensure!(
                peers.len() == 3 && peers.iter().all(|p| p["owned"].as_u64() > Some(0)),
                "host {} ring: {v}",
                h.n()
            );
        }

        // A sample of containers, attached with net:default, ping across hosts.
        let mut ctrs: Vec<Vec<Container>> = Vec::new();
        for h in &hosts {
            let mut v = Vec::new();
            for j in 0..2 {
                let c = attach(net, h, &format!("h{}x{j}", h.n()), &["net:default"])?;
                let (ip, len) = parse_cidr(c.cidr())?;
                ensure!(
                    len == 12 && within(ip, RANGE, 12),
                    "{} got {}",
                    c.name(),
                    c.cidr()
                );
                ensure!(all.insert(ip), "{} got {ip}, already handed out", c.name());
                v.push(c);
            }
            ctrs.push(v);
        }
        for (i, src) in ctrs.iter().flatten().enumerate() {
            for (j, dsts) in ctrs.iter().enumerate() {
                if j == i / 2 {
                    continue;
                }
                let dst = &dsts[i % 2];
                src.wait_ping(dst.ip(), Duration::from_secs(20))?;
            }
        }
        Ok(())
    });
}

/// Stops or kills host 1's router, launches it again with the same arguments, and checks
/// that `ctrs` keep their addresses (in IPAM and on `ethwe`), that the router does not hand
/// them out again, and that a container on host 2 is reachable again.
fn restart_keeps(
    net: &TestNet,
    hosts: &[Host],
    ctrs: &mut Vec<Container>,
    remote: &Container,
    kill: bool,
) -> Result<()> {
    let h1 = &hosts[0];
    let before: Vec<Vec<String>> = ctrs
        .iter()
        .map(|c| lookup(h1, c.ns()))
        .collect::<Result<_>>()?;
    for (c, b) in ctrs.iter().zip(&before) {
        ensure!(
            *b == vec![c.cidr().to_owned()],
            "{}: IPAM has {b:?}",
            c.name()
        );
    }
    if kill {
        h1.kill_router()?;
    } else {
        h1.weft_ok(&["stop"])?;
    }
    let others: Vec<&Host> = hosts[1..].iter().collect();
    let t0 = Instant::now();
    launch_with(h1, &[], &others)?;
    let how = if kill { "SIGKILL" } else { "weft stop" };
    // IPAM is ready at once: the ring came from disk, no new consensus.
    let v = ipam_status(h1)?;
    ensure!(
        v["status"] == "ready",
        "after {how} + launch: status ipam {v}"
    );
    for (c, b) in ctrs.iter().zip(&before) {
        let now = lookup(h1, c.ns())?;
        ensure!(
            now == *b,
            "after {how}: {} had {b:?}, now {now:?}",
            c.name()
        );
        let on_if = ethwe_addrs(c.ns())?;
        ensure!(
            on_if == *b,
            "after {how}: {} has {on_if:?} on ethwe",
            c.name()
        );
    }
    let refs: Vec<&Host> = hosts.iter().collect();
    wait_established(&refs, Duration::from_secs(30))?;
    ctrs[0].wait_ping(remote.ip(), Duration::from_secs(20))?;
    eprintln!(
        "after {how}: reachable again {:.1?} after launch",
        t0.elapsed()
    );
    // A new container gets an address nobody has (no reuse of the kept ones).
    let c = attach(
        net,
        h1,
        &format!("new-after-{}", ctrs.len()),
        &["net:10.32.1.0/24"],
    )?;
    let (ip, len) = parse_cidr(c.cidr())?;
    ensure!(
        len == 24 && within(ip, Ipv4Addr::new(10, 32, 1, 0), 24),
        "{}",
        c.cidr()
    );
    let taken: Vec<&str> = ctrs
        .iter()
        .map(Container::cidr)
        .chain([remote.cidr()])
        .collect();
    ensure!(
        !taken.contains(&c.cidr()),
        "after {how} a new container got {}, already in use: {taken:?}",
        c.cidr()
    );
    ctrs.push(c);
    Ok(())
}

#[test]
fn restarted_router_keeps_container_addresses() {
    run_test("iprest", |net| {
        let hosts = mutual_mesh(net, 3, &[])?;
        let (h1, h2) = (&hosts[0], &hosts[1]);
        let mut ctrs = Vec::new();
        for j in 0..3 {
            ctrs.push(attach(net, h1, &format!("a{j}"), &["net:10.32.1.0/24"])?);
        }
        let remote = attach(net, h2, "b0", &["net:10.32.1.0/24"])?;
        ctrs[0].wait_ping(remote.ip(), Duration::from_secs(20))?;
        let stored = h1.state_dir().join("ipam.json");
        ensure!(stored.is_file(), "no {}", stored.display());

        restart_keeps(net, &hosts, &mut ctrs, &remote, false)?;
        restart_keeps(net, &hosts, &mut ctrs, &remote, true)?;
        // All addresses in the subnet, over both hosts, distinct.
        let mut seen = BTreeSet::new();
        for h in &hosts {
            for (id, addrs) in owned(h)? {
                for a in addrs {
                    ensure!(seen.insert(a.clone()), "{a} owned twice (again by {id})");
                }
            }
        }
        ensure!(seen.len() == 6, "owned addresses: {seen:?}");
        Ok(())
    });
}

/// One peer in `weft status ipam --json`.
#[derive(Debug, Clone)]
struct RingPeer {
    nickname: String,
    owned: u64,
    percent: f64,
    reachable: bool,
}

/// `weft status ipam --json` peers by peer name.
fn ring_view(h: &Host) -> Result<BTreeMap<String, RingPeer>> {
    let v = ipam_status(h)?;
    Ok(v["peers"]
        .as_array()
        .context("no peers")?
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or("").to_owned(),
                RingPeer {
                    nickname: p["nickname"].as_str().unwrap_or("").to_owned(),
                    owned: p["owned"].as_u64().unwrap_or(0),
                    percent: p["percent"].as_f64().unwrap_or(0.0),
                    reachable: p["reachable"].as_bool().unwrap_or(false),
                },
            )
        })
        .collect())
}

#[test]
fn rmpeer_takes_over_a_dead_peers_space() {
    run_test("iprm", |net| {
        let hosts = mutual_mesh(net, 3, &[])?;
        let (h1, h2, h3) = (&hosts[0], &hosts[1], &hosts[2]);
        // Consensus, and one address on each host.
        let mut firsts = Vec::new();
        for h in &hosts {
            let r = http(h, "POST", &format!("/ip/first{}", h.n()))?;
            firsts.push(allocated(&r, RANGE, 12, 12)?);
        }
        // The lowest free address of host 3 starts its own range; the /24 after the one it lies
        // in belongs wholly to host 3 (each of three owns about a third of the /12).
        let s3 = Ipv4Addr::from((u32::from(firsts[2]) & 0xffff_ff00) + 256);
        let subnet = format!("{s3}/24");
        eprintln!("first addresses {firsts:?}; host 3's subnet {subnet}");
        let h3_peer = h3.peer_name()?;
        let view = ring_view(h1)?;
        eprintln!("ring on host 1 before: {view:?}");
        ensure!(
            view.get(&h3_peer)
                .is_some_and(|p| p.owned > 0 && p.reachable && p.nickname == "host3"),
            "host 3 ({h3_peer}) owns nothing / unreachable: {view:?}"
        );
        // While host 3 is alive, rmpeer is refused.
        let out = h1.weft(&["rmpeer", "host3"])?;
        ensure!(
            !out.success() && !out.stderr.trim().is_empty(),
            "rmpeer of a live peer: {out}"
        );
        // Host 3 goes for good: killed, its state deleted.
        h3.kill_router()?;
        std::fs::remove_dir_all(h3.state_dir())?;
        for h in [h1, h2] {
            wait_until(
                &format!("host {} to see host 3 unreachable", h.n()),
                Duration::from_secs(60),
                Duration::from_millis(200),
                || {
                    let v = ring_view(h)?;
                    ensure!(v.get(&h3_peer).is_some_and(|p| !p.reachable), "{v:?}");
                    Ok(())
                },
            )?;
        }
        // As an operator would (minutes later): the mesh has forgotten the dead peer by now;
        // IPAM still knows it (its ranges and nickname).
        wait_until(
            "host 1's mesh to drop host 3",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || {
                let v = h1.status_json()?;
                ensure!(peer_entry(&v, &h3_peer).is_none(), "{}", v["peers"]);
                Ok(())
            },
        )?;
        eprintln!(
            "ring on host 1 once its mesh dropped host 3: {:?}",
            ring_view(h1)?
        );
        // Host 3 was reachable a minute ago: it might only be partitioned away, so a plain
        // rmpeer is refused; the operator who knows it is gone for good forces it.
        let out = h1.weft(&["rmpeer", "host3"])?;
        ensure!(
            !out.success() && out.stderr.contains("--force"),
            "rmpeer of a peer seen a minute ago: {out}"
        );
        // By nickname here, by peer name on host 2 below: both forms are accepted.
        let out = h1.weft_ok(&["rmpeer", "--force", "host3"])?;
        eprintln!("rmpeer host3 on host 1: {}", out.trim());
        let n: u64 = out
            .split_whitespace()
            .next()
            .and_then(|w| w.parse().ok())
            .with_context(|| format!("rmpeer printed {out:?}"))?;
        ensure!(
            n > 0 && out.contains("taken over"),
            "rmpeer printed {out:?}"
        );
        // Host 2 learns of the takeover; a second rmpeer there is refused or takes nothing.
        wait_until(
            "host 2 to see host 3's space taken over",
            Duration::from_secs(20),
            Duration::from_millis(100),
            || {
                let v = ring_view(h2)?;
                ensure!(v.get(&h3_peer).is_none_or(|p| p.owned == 0), "{v:?}");
                let rest: f64 = v
                    .iter()
                    .filter(|(n, _)| **n != h3_peer)
                    .map(|(_, p)| p.percent)
                    .sum();
                ensure!((rest - 100.0).abs() < 0.5, "{v:?}");
                Ok(())
            },
        )?;
        let out = h2.weft(&["rmpeer", "--force", &h3_peer])?;
        eprintln!("second rmpeer {h3_peer} on host 2: {out}");
        if out.success() {
            ensure!(
                out.stdout.trim().starts_with("0 "),
                "second rmpeer took something: {out}"
            );
        } else {
            ensure!(
                !out.stderr.trim().is_empty(),
                "refused without a message: {out}"
            );
        }
        for h in [h1, h2] {
            let v = ring_view(h)?;
            let owned_sum: f64 = v
                .iter()
                .filter(|(n, _)| **n != h3_peer)
                .map(|(_, p)| p.percent)
                .sum();
            ensure!(
                (owned_sum - 100.0).abs() < 0.5,
                "host {}: hosts 1 and 2 own {owned_sum}%: {v:?}",
                h.n()
            );
        }
        // Host 3's former subnet is allocated from both remaining hosts at once.
        let per_host = on_all_at_once(&hosts[..2], |h| {
            http_many(
                h,
                "POST",
                &format!("/ip/h{}s{{i}}/{s3}/24", h.n()),
                100,
                20,
                Duration::from_secs(60),
            )
        })?;
        let mut all = BTreeSet::new();
        for (h, (replies, elapsed)) in hosts.iter().zip(&per_host) {
            eprintln!(
                "host {}: 100 allocations in {subnet} in {elapsed:.2?}",
                h.n()
            );
            for r in replies {
                let ip = allocated(r, s3, 24, 24).with_context(|| format!("host {}", h.n()))?;
                ensure!(all.insert(ip), "{ip} handed out twice");
            }
        }
        // No duplicate over everything both hosts own.
        let mut seen = BTreeSet::new();
        for h in [h1, h2] {
            for (id, addrs) in owned(h)? {
                for a in addrs {
                    ensure!(
                        seen.insert(a.clone()),
                        "{a} owned twice (again by {id} on host {})",
                        h.n()
                    );
                }
            }
        }
        ensure!(
            seen.len() == 202,
            "{} addresses owned: {seen:?}",
            seen.len()
        );
        Ok(())
    });
}

/// One ping from a host's own namespace.
fn host_ping(h: &Host, dst: Ipv4Addr) -> Result<()> {
    h.exec(&["ping", "-n", "-c", "1", "-W", "1", &dst.to_string()])?
        .ok()
        .with_context(|| format!("ping from host {} to {dst}", h.n()))?;
    Ok(())
}

/// A one-shot TCP server in `c` answering "hi NAME", and a client on `h`; the answer.
fn tcp_request(h: &Host, c: &Container) -> Result<String> {
    let server = format!(
        "import socket\n\
         s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('{ip}', 8081)); s.listen(1); s.settimeout(20)\n\
         conn, peer = s.accept(); conn.sendall(b'hi {name}'); conn.close()\n",
        ip = c.ip(),
        name = c.name()
    );
    let ns = c.ns().to_owned();
    let server = std::thread::spawn(move || {
        ns_exec(&ns, ["python3", "-c", &server], Duration::from_secs(30))
    });
    let client = format!(
        "import socket, time\n\
         for i in range(100):\n    \
             try:\n        s = socket.create_connection(('{ip}', 8081), timeout=2); break\n    \
             except OSError:\n        time.sleep(0.1)\n\
         else:\n    raise SystemExit('no connection')\n\
         print(s.recv(100).decode())\n",
        ip = c.ip()
    );
    let out = h.exec(&["python3", "-c", &client])?;
    let server = server
        .join()
        .map_err(|_| anyhow::anyhow!("server thread panicked"))??;
    ensure!(out.success(), "TCP client on host {}: {out}", h.n());
    ensure!(server.success(), "TCP server in {}: {server}", c.name());
    Ok(out.stdout.trim().to_owned())
}

#[test]
fn seed_scenario_expose_reaches_ipam_containers() {
    run_test("ipseed", |net| {
        // Host 1 is the "master" (router only); hosts 2..4 each attach one container.
        let hosts = mutual_mesh(net, 4, &[])?;
        let master = &hosts[0];
        let mut ctrs = Vec::new();
        for h in &hosts[1..] {
            let c = attach(net, h, &format!("seed{}", h.n()), &["net:10.32.1.0/24"])?;
            let (ip, len) = parse_cidr(c.cidr())?;
            ensure!(
                len == 24 && within(ip, Ipv4Addr::new(10, 32, 1, 0), 24),
                "{}",
                c.cidr()
            );
            ctrs.push(c);
        }
        let distinct: BTreeSet<Ipv4Addr> = ctrs.iter().map(Container::ip).collect();
        ensure!(
            distinct.len() == 3,
            "containers share addresses: {distinct:?}"
        );
        ensure!(
            host_ping(master, ctrs[0].ip()).is_err(),
            "master reaches {} before expose",
            ctrs[0].ip()
        );
        let out = master.weft_ok(&["expose", "net:10.32.1.0/24"])?;
        let exposed: Ipv4Addr = out
            .trim()
            .parse()
            .with_context(|| format!("weft expose printed {out:?}"))?;
        ensure!(
            within(exposed, Ipv4Addr::new(10, 32, 1, 0), 24) && !distinct.contains(&exposed),
            "exposed address {exposed} (containers {distinct:?})"
        );
        ensure!(
            owned(master)?.get("weave:expose") == Some(&vec![format!("{exposed}/24")]),
            "master's IPAM: {:?}",
            owned(master)?
        );
        for c in &ctrs {
            wait_until(
                &format!("master to ping {}", c.ip()),
                Duration::from_secs(20),
                Duration::from_millis(200),
                || host_ping(master, c.ip()),
            )?;
            let reply = tcp_request(master, c)?;
            ensure!(reply == format!("hi {}", c.name()), "TCP reply {reply:?}");
        }
        let out = master.weft_ok(&["hide"])?;
        eprintln!("weft hide printed {:?}", out.trim());
        for c in &ctrs {
            ensure!(
                host_ping(master, c.ip()).is_err(),
                "master still reaches {} after hide",
                c.ip()
            );
        }
        ensure!(
            !owned(master)?.contains_key("weave:expose"),
            "weave:expose still allocated after hide: {:?}",
            owned(master)?
        );
        Ok(())
    });
}

#[test]
fn bad_input_is_refused_and_allocates_nothing() {
    run_test("ipbad", |net| {
        // Two peers, so an exhausted subnet also means asking the other for space.
        let hosts = mutual_mesh(net, 2, &[])?;
        let (h, h2) = (hosts[0].clone(), &hosts[1]);
        // Some allocations first, to check nothing is lost.
        let keep = attach(net, &h, "keep", &["net:default"])?;
        let r = http(&h, "POST", "/ip/keep2/10.32.2.0/24")?;
        allocated(&r, Ipv4Addr::new(10, 32, 2, 0), 24, 24)?;
        let before = owned(&h)?;
        ensure!(before.len() == 2, "{before:?}");

        // HTTP: outside the range.
        let r = http(&h, "POST", "/ip/x/10.99.0.0/24")?;
        ensure!(
            (400..500).contains(&r.code) && r.body.contains("outside"),
            "POST /ip/x/10.99.0.0/24: {r}"
        );
        // HTTP: malformed.
        for path in [
            "/ip/x/10.32.1.0/33",
            "/ip/x/10.32.1/24",
            "/ip/x/10.32.1.5/24",
            "/ip/x/10.32.1.0/31",
            "/ip/x/10.32.1.0/32",
            "/ip/x%20y",
        ] {
            let r = http(&h, "POST", path)?;
            ensure!(
                (400..500).contains(&r.code) && !r.body.trim().is_empty(),
                "POST {path}: {r}"
            );
            eprintln!("POST {path}: {r}");
        }
        let r = http(&h, "PUT", "/ip/x/10.32.1.300/24")?;
        ensure!((400..500).contains(&r.code), "PUT of 10.32.1.300: {r}");

        // CLI: malformed CIDR, subnet too small, nonsense: non-zero exit with a message, and
        // the container namespace gets no interface.
        for spec in [
            "net:10.32.1.0",
            "net:10.32.1.0/31",
            "net:10.32.1.0/33",
            "net:10.32.1.7/24",
            "net:bogus",
            "net:10.99.0.0/24",
        ] {
            let ns = container_ns(net)?;
            let out = h.weft(&["attach", spec, &ns])?;
            eprintln!(
                "weft attach {spec}: exit {:?}: {}",
                out.status,
                out.stderr.trim()
            );
            ensure!(
                !out.success() && !out.stderr.trim().is_empty(),
                "weft attach {spec}: {out}"
            );
            ensure!(
                ethwe_addrs(&ns).is_err() || ethwe_addrs(&ns)?.is_empty(),
                "{spec}: ethwe made anyway"
            );
        }
        ensure!(owned(&h)? == before, "failures allocated: {:?}", owned(&h)?);

        // Exhausted subnet: a /29 has 6 usable addresses.
        let (replies, _) = http_many(
            &h,
            "POST",
            "/ip/ex{i}/10.32.3.0/29",
            6,
            1,
            Duration::from_secs(30),
        )?;
        let mut got = BTreeSet::new();
        for r in &replies {
            got.insert(allocated(r, Ipv4Addr::new(10, 32, 3, 0), 29, 29)?);
        }
        ensure!(got.len() == 6, "{got:?}");
        let order: Vec<&str> = replies.iter().map(|r| r.body.trim()).collect();
        eprintln!("6 allocations in 10.32.3.0/29, in order: {order:?}");
        eprintln!("{}", h.weft_ok(&["status", "ipam"])?);
        let t0 = Instant::now();
        let r = http_many(
            &h,
            "POST",
            "/ip/ex7/10.32.3.0/29",
            1,
            1,
            Duration::from_secs(60),
        )?
        .0
        .remove(0);
        let waited = t0.elapsed();
        eprintln!("7th allocation in a /29: {r} after {waited:.1?}");
        ensure!(r.code != 0, "7th allocation in a /29 got no answer: {r}");
        ensure!(
            (400..600).contains(&r.code) && !r.body.trim().is_empty(),
            "7th allocation in a /29: {r}"
        );
        // The other peer owns none of it and cannot get any donated.
        let t0 = Instant::now();
        let r = http_many(
            h2,
            "POST",
            "/ip/ex9/10.32.3.0/29",
            1,
            1,
            Duration::from_secs(60),
        )?
        .0
        .remove(0);
        let waited = t0.elapsed();
        eprintln!("the /29 full, from host 2: {r} after {waited:.1?}");
        ensure!(
            r.code != 0,
            "allocation on host 2 in the full /29 got no answer: {r}"
        );
        ensure!(
            (400..600).contains(&r.code) && !r.body.trim().is_empty(),
            "allocation on host 2 in the full /29: {r}"
        );
        ensure!(owned(h2)?.is_empty(), "host 2 owns {:?}", owned(h2)?);
        // The CLI too, with a good spec before the bad one: both released.
        let ns = container_ns(net)?;
        let out = h.weft(&["attach", "net:10.32.4.0/24", "net:10.32.3.0/29", &ns])?;
        eprintln!("weft attach in the full /29: {out}");
        ensure!(
            !out.success() && !out.stderr.trim().is_empty(),
            "attach into a full /29: {out}"
        );
        let now = owned(&h)?;
        let now_without_ex: BTreeMap<_, _> = now
            .iter()
            .filter(|(k, _)| !k.starts_with("ex"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        ensure!(now_without_ex == before, "after the failures: {now:?}");
        let ex: BTreeSet<&String> = now.keys().filter(|k| k.starts_with("ex")).collect();
        ensure!(
            ex.len() == 6 && !ex.contains(&"ex7".to_owned()),
            "exhausted-subnet entries: {ex:?}"
        );
        // Earlier allocations intact, in IPAM and on the interface; a release frees one slot.
        ensure!(
            lookup(&h, keep.ns())? == vec![keep.cidr().to_owned()],
            "keep lost"
        );
        ensure!(
            ethwe_addrs(keep.ns())? == vec![keep.cidr().to_owned()],
            "keep's ethwe"
        );
        let r = http(&h, "DELETE", "/ip/ex2")?;
        ensure!(r.ok(), "DELETE /ip/ex2: {r}");
        let r = http(&h, "POST", "/ip/ex8/10.32.3.0/29")?;
        let ip = allocated(&r, Ipv4Addr::new(10, 32, 3, 0), 29, 29)?;
        // The only free address is the one ex2 gave back.
        let freed = parse_cidr(&replies[2].body)?.0;
        ensure!(
            ip == freed,
            "after releasing ex2 ({freed}) the next allocation got {ip}"
        );
        Ok(())
    });
}

/// Sequential allocations per second on one host (ids `tag{i}`), over `n` requests.
fn sequential_rate(h: &Host, tag: &str, n: usize) -> Result<f64> {
    let (replies, elapsed) = http_many(
        h,
        "POST",
        &format!("/ip/{tag}{{i}}"),
        n,
        1,
        Duration::from_secs(30),
    )?;
    for r in &replies {
        allocated(r, RANGE, 12, 12)?;
    }
    Ok(n as f64 / elapsed.as_secs_f64())
}

#[test]
fn measure_three_peers() {
    run_test("ipm3", |net| {
        let hosts = mutual_mesh(net, 3, &[])?;
        let (first, ready) = first_allocation_and_ready(&hosts)?;
        eprintln!(
            "MEASURE 3 peers: first allocation answered after {first:.3?}; each host \
             reported ready after {ready:.3?} (polled every 50 ms)"
        );
        for h in &hosts {
            http(h, "POST", &format!("/ip/warm{}", h.n()))?;
        }
        let seq = sequential_rate(&hosts[0], "seq", 500)?;
        eprintln!("MEASURE one peer, sequential: {seq:.0} allocations/s");
        let (replies, elapsed) = http_many(
            &hosts[0],
            "POST",
            "/ip/conc{i}",
            300,
            16,
            Duration::from_secs(60),
        )?;
        ensure!(replies.iter().all(Reply::ok), "concurrent failures");
        eprintln!(
            "MEASURE one peer, 16 concurrent clients: {:.0} allocations/s",
            300.0 / elapsed.as_secs_f64()
        );
        let t0 = Instant::now();
        let per_host = on_all_at_once(&hosts, |h| {
            http_many(
                h,
                "POST",
                &format!("/ip/all{}x{{i}}", h.n()),
                300,
                16,
                Duration::from_secs(60),
            )
        })?;
        let took = t0.elapsed();
        let slowest = per_host.iter().map(|(_, e)| *e).max().unwrap_or_default();
        let mut all = BTreeSet::new();
        for (replies, _) in &per_host {
            for r in replies {
                ensure!(all.insert(allocated(r, RANGE, 12, 12)?), "duplicate {r}");
            }
        }
        eprintln!(
            "MEASURE three peers at once, 16 clients each: 900 allocations in {slowest:.2?} \
             ({:.0}/s; {took:.2?} including python start-up)",
            900.0 / slowest.as_secs_f64()
        );
        let seq_again = sequential_rate(&hosts[1], "seqb", 500)?;
        eprintln!("MEASURE host 2 sequential after 1800 allocations: {seq_again:.0}/s");
        // What the client and HTTP cost alone: sequential lookups.
        let (replies, elapsed) = http_many(
            &hosts[0],
            "GET",
            "/ip/seq{i}",
            500,
            1,
            Duration::from_secs(30),
        )?;
        ensure!(replies.iter().all(Reply::ok), "lookups failed");
        eprintln!(
            "MEASURE baseline, sequential GET /ip/ID: {:.0}/s",
            500.0 / elapsed.as_secs_f64()
        );
        for h in &hosts {
            let size = std::fs::metadata(h.state_dir().join("ipam.json"))?.len();
            eprintln!("host {}: ipam.json is {size} bytes", h.n());
        }
        // How the sequential rate changes as a peer holds more addresses (the snapshot is
        // rewritten on every change).
        let h1 = &hosts[0];
        for batch in 0..4 {
            let held = owned(h1)?.len();
            let rate = sequential_rate(h1, &format!("grow{batch}x"), 500)?;
            let size = std::fs::metadata(h1.state_dir().join("ipam.json"))?.len();
            eprintln!(
                "MEASURE host 1 sequential with {held} addresses held: {rate:.0}/s \
                 (ipam.json {size} bytes after)"
            );
        }
        Ok(())
    });
}

#[test]
fn measure_twelve_peers_consensus() {
    run_test("ipm12", |net| {
        const N: u8 = 12;
        let hosts: Vec<Host> = (1..=N).map(|k| net.host(k)).collect::<Result<_>>()?;
        let quorum = format!("consensus={N}");
        for i in 0..hosts.len() {
            let peers: Vec<&Host> = if i == 0 { vec![] } else { vec![&hosts[i - 1]] };
            launch_with(&hosts[i], &["--ipalloc-init", &quorum], &peers)?;
        }
        wait_until(
            "a full mesh of 12",
            Duration::from_secs(90),
            Duration::from_millis(250),
            || {
                for h in &hosts {
                    let (conns, text) = connections(h)?;
                    let n = hosts
                        .iter()
                        .filter(|o| o.n() != h.n())
                        .filter(|o| {
                            conns.iter().any(|c| {
                                c.state == "established"
                                    && addr_ip(&c.address) == o.addr().to_string()
                            })
                        })
                        .count();
                    ensure!(
                        n == usize::from(N) - 1,
                        "host {}: {n} established\n{text}",
                        h.n()
                    );
                }
                Ok(())
            },
        )?;
        let v = ipam_status(&hosts[5])?;
        eprintln!("host 6 before any allocation: {v}");
        let (first, ready) = first_allocation_and_ready(&hosts)?;
        let last = ready.iter().max().copied().unwrap_or_default();
        eprintln!(
            "MEASURE 12 peers: first allocation answered after {first:.3?}; last host ready \
             after {last:.3?}; per host {ready:.2?} (polled every 50 ms)"
        );
        // At least a quorum (12/2+1) took a share in the initial division, and the shares add
        // up. The others get space by donation when they first allocate.
        let v = ipam_status(&hosts[11])?;
        let peers = v["peers"].as_array().context("no peers")?;
        let pct: f64 = peers.iter().filter_map(|p| p["percent"].as_f64()).sum();
        let shares: Vec<String> = peers
            .iter()
            .map(|p| {
                format!(
                    "{}={}%",
                    p["nickname"].as_str().unwrap_or("?"),
                    p["percent"]
                )
            })
            .collect();
        eprintln!(
            "initial division among {} peers: {}",
            peers.len(),
            shares.join(" ")
        );
        ensure!(
            peers.len() > usize::from(N) / 2 && (pct - 100.0).abs() < 0.5,
            "ring on host 12: {v}"
        );
        let t0 = Instant::now();
        let all = on_all_at_once(&hosts, |h| {
            let r = http(h, "POST", &format!("/ip/one{}", h.n()))?;
            allocated(&r, RANGE, 12, 12)
        })?;
        eprintln!(
            "MEASURE 12 peers allocating one address each at once: {:.2?}",
            t0.elapsed()
        );
        let distinct: BTreeSet<_> = all.iter().collect();
        ensure!(distinct.len() == all.len(), "duplicates among {all:?}");
        wait_until(
            "host 1 to see every peer owning space",
            Duration::from_secs(10),
            Duration::from_millis(100),
            || {
                let v = ipam_status(&hosts[0])?;
                let owners = v["peers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| p["owned"].as_u64() > Some(0))
                    .count();
                ensure!(owners == usize::from(N), "{owners} peers own space: {v}");
                Ok(())
            },
        )?;
        Ok(())
    });
}

#[test]
fn waiting_for_consensus_is_visible_and_resolves() {
    run_test("ipwait", |net| {
        // Host 1 alone, told to expect three peers: quorum 2 cannot be reached yet.
        let h1 = net.host(1)?;
        let h2 = net.host(2)?;
        launch_with(&h1, &["--ipalloc-init", "consensus=3"], &[])?;
        let (r, _) = http_many(&h1, "POST", "/ip/early", 1, 1, Duration::from_secs(2))?;
        ensure!(
            r[0].code == 0,
            "allocation without a quorum answered: {}",
            r[0]
        );
        let text = h1.weft_ok(&["status"])?;
        ensure!(
            text.contains("\n         Status: awaiting consensus (quorum: 2, known: 1)\n"),
            "`weft status` while waiting:\n{text}"
        );
        // No ring yet: `status ipam` prints nothing, as Weave's.
        let text = h1.weft_ok(&["status", "ipam"])?;
        ensure!(text.is_empty(), "`weft status ipam` while waiting:\n{text}");
        // The abandoned request is not left behind.
        wait_until(
            "the abandoned request to be dropped",
            Duration::from_secs(5),
            Duration::from_millis(100),
            || {
                let v = ipam_status(&h1)?;
                ensure!(v["pending"] == 0, "{v}");
                Ok(())
            },
        )?;
        ensure!(
            owned(&h1)?.is_empty(),
            "early request left {:?}",
            owned(&h1)?
        );
        // A second peer arrives: the quorum is there and allocation proceeds.
        launch_with(&h2, &["--ipalloc-init", "consensus=3"], &[&h1])?;
        wait_established(&[&h1, &h2], Duration::from_secs(30))?;
        let r = http(&h1, "POST", "/ip/late")?;
        allocated(&r, RANGE, 12, 12)?;
        for h in [&h1, &h2] {
            let v = ipam_status(h)?;
            ensure!(v["status"] == "ready", "host {}: {v}", h.n());
        }
        Ok(())
    });
}
