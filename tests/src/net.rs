//! Test-support layer: hosts and containers built from Linux network namespaces.
//!
//! A [`TestNet`] owns every namespace whose name starts with its prefix: an underlay namespace
//! `<p>ul` holding bridge `br0`, one namespace per [`Host`] (`<p>h<n>`, address
//! `192.0.2.<10+n>/24` on `ul0`, veth to the underlay bridge) and one per [`Container`]
//! (`<p>c<n>`, attached with `weft attach`). Nothing is created in the root namespace. Dropping
//! the `TestNet` (also while a test panics) kills the routers and every other process left in
//! its namespaces, deletes the namespaces and removes the temporary directory.

use std::fmt::Write as _;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use crate::cmd::{self, Cmd, Output, ip, ns_exec, wait_until};

/// Name of the bridge inside the underlay namespace.
pub const UNDERLAY_BRIDGE: &str = "br0";
/// Name of each host's underlay interface.
pub const UNDERLAY_DEV: &str = "ul0";
/// Name weft gives the container interface.
pub const CONTAINER_DEV: &str = "ethwe";

/// Serialises namespace tests inside one test binary: the machine has two cores and routers
/// compete for them, so parallel topologies would make timing-based checks flaky. Set
/// `WEFT_TEST_PARALLEL=1` to skip it.
static SERIAL: Mutex<()> = Mutex::new(());
static NET_COUNTER: AtomicUsize = AtomicUsize::new(0);
/// The prefixes of this process's test networks not yet dropped (see [`clean_up_on_signal`]).
static LIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// Set once a signal's cleanup has begun: from then on that cleanup owns every network.
static SIGNALLED: AtomicBool = AtomicBool::new(false);

/// State shared between a [`TestNet`] and the hosts and containers made from it.
#[derive(Debug)]
struct Shared {
    prefix: String,
    dir: PathBuf,
    weft_bin: Option<PathBuf>,
    containers: AtomicUsize,
    /// (host label, run dir) of every host, for log dumps and router clean-up.
    hosts: Mutex<Vec<(String, PathBuf)>>,
}

/// A private set of network namespaces: an underlay plus hosts and containers.
#[derive(Debug)]
pub struct TestNet {
    shared: Arc<Shared>,
    underlay: String,
    _serial: Option<MutexGuard<'static, ()>>,
}

/// A "machine": a network namespace on the underlay with its own weft run and state dirs.
#[derive(Debug, Clone)]
pub struct Host {
    shared: Arc<Shared>,
    n: u8,
    ns: String,
    addr: Ipv4Addr,
    run_dir: PathBuf,
    state_dir: PathBuf,
}

/// A "container": a network namespace attached to a host's weft bridge.
#[derive(Debug, Clone)]
pub struct Container {
    name: String,
    ns: String,
    ip: Ipv4Addr,
    cidr: String,
    host: Option<Host>,
}

/// Result of a `ping` run.
#[derive(Debug, Clone, PartialEq)]
pub struct PingStats {
    /// Echo requests sent.
    pub transmitted: u32,
    /// Echo replies received.
    pub received: u32,
    /// Round-trip times in milliseconds, in arrival order.
    pub rtts_ms: Vec<f64>,
}

impl TestNet {
    /// Builds a fresh underlay for one test. `hint` (a few letters) goes into the prefix to make
    /// leftovers recognisable. Fails with a clear message when not running as root.
    pub fn new(hint: &str) -> Result<Self> {
        Self::with_weft_bin(hint, None)
    }

    /// Like [`TestNet::new`] but with an explicit weft binary (default: [`find_weft_bin`]).
    pub fn with_weft_bin(hint: &str, weft_bin: Option<PathBuf>) -> Result<Self> {
        require_root()?;
        let serial = if std::env::var_os("WEFT_TEST_PARALLEL").is_some() {
            None
        } else {
            Some(SERIAL.lock().unwrap_or_else(|e| e.into_inner()))
        };
        let n = NET_COUNTER.fetch_add(1, Ordering::Relaxed);
        let hint: String = hint
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(6)
            .collect();
        let prefix = format!("wt{}{hint}{n}-", std::process::id() % 1000);
        cleanup_stale(&prefix)?;
        LIVE.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(prefix.clone());
        let dir = std::env::temp_dir().join(format!("{prefix}{}", rand::random::<u32>()));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let net = Self {
            shared: Arc::new(Shared {
                prefix: prefix.clone(),
                dir,
                weft_bin: weft_bin.or_else(|| find_weft_bin().ok()),
                containers: AtomicUsize::new(0),
                hosts: Mutex::new(Vec::new()),
            }),
            underlay: format!("{prefix}ul"),
            _serial: serial,
        };
        // From here on Drop cleans up whatever was created.
        net.add_netns(&net.underlay)
            .context("needs root / CAP_NET_ADMIN")?;
        ip([
            "-n",
            &net.underlay,
            "link",
            "add",
            UNDERLAY_BRIDGE,
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        ])?;
        ip(["-n", &net.underlay, "link", "set", UNDERLAY_BRIDGE, "up"])?;
        Ok(net)
    }

    /// The namespace-name prefix owned by this net (e.g. `wt123two0-`).
    pub fn prefix(&self) -> &str {
        &self.shared.prefix
    }

    /// The underlay namespace (holds bridge [`UNDERLAY_BRIDGE`] and one port per host, named
    /// `h<n>`).
    pub fn underlay_ns(&self) -> &str {
        &self.underlay
    }

    /// This net's temporary directory (removed on drop).
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The weft binary in use.
    pub fn weft_bin(&self) -> Result<&Path> {
        self.shared.weft_bin()
    }

    /// Creates namespace `name` (must start with [`TestNet::prefix`]) with `lo` up and IPv6
    /// switched off (keeps captures free of router solicitations and MLD).
    pub fn add_netns(&self, name: &str) -> Result<()> {
        if !name.starts_with(self.prefix()) {
            bail!(
                "namespace {name} does not carry this net's prefix {}",
                self.prefix()
            );
        }
        create_netns(name)
    }

    /// A fresh namespace `<prefix><suffix>` (lo up), e.g. for a bare container in a bench.
    pub fn netns(&self, suffix: &str) -> Result<String> {
        let name = format!("{}{suffix}", self.prefix());
        self.add_netns(&name)?;
        Ok(name)
    }

    /// Host number `n` (1..=200): namespace `<p>h<n>`, `ul0` = `192.0.2.<10+n>/24`, joined to
    /// the underlay bridge. No router is started.
    pub fn host(&self, n: u8) -> Result<Host> {
        if !(1..=200).contains(&n) {
            bail!("host number {n} out of range 1..=200");
        }
        let ns = format!("{}h{n}", self.prefix());
        let addr = Ipv4Addr::new(192, 0, 2, 10 + n);
        self.add_netns(&ns)?;
        let port = format!("h{n}");
        ip([
            "-n",
            &self.underlay,
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            UNDERLAY_DEV,
            "netns",
            &ns,
        ])?;
        ip([
            "-n",
            &self.underlay,
            "link",
            "set",
            &port,
            "master",
            UNDERLAY_BRIDGE,
            "up",
        ])?;
        ip([
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            UNDERLAY_DEV,
        ])?;
        ip(["-n", &ns, "link", "set", UNDERLAY_DEV, "mtu", "1500", "up"])?;
        let base = self.shared.dir.join(format!("h{n}"));
        let run_dir = base.join("run");
        let state_dir = base.join("state");
        fs::create_dir_all(&run_dir)?;
        fs::create_dir_all(&state_dir)?;
        self.shared
            .hosts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((format!("h{n} ({addr})"), run_dir.clone()));
        Ok(Host {
            shared: self.shared.clone(),
            n,
            ns,
            addr,
            run_dir,
            state_dir,
        })
    }

    /// Prints the tail of every host's router log to stderr (shown by `cargo test` on failure).
    pub fn dump_logs(&self) {
        eprintln!("{}", self.logs_report(80));
    }

    /// The last `lines` lines of every host's router log, as one string.
    pub fn logs_report(&self, lines: usize) -> String {
        let hosts = self.shared.hosts.lock().unwrap_or_else(|e| e.into_inner());
        let mut s = String::new();
        for (label, run_dir) in hosts.iter() {
            let log = run_dir.join("weft.log");
            let body = fs::read_to_string(&log).unwrap_or_else(|e| format!("(unreadable: {e})"));
            let _ = write!(
                s,
                "\n===== router log {label}: {} (last {lines} lines) =====\n{}\n",
                log.display(),
                cmd::tail(&body, lines)
            );
        }
        s
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        if SIGNALLED.load(Ordering::SeqCst) {
            // The signal's cleanup removes this network and ends the process; whatever this
            // thread would do next (report the killed run as failed) must not happen.
            loop {
                std::thread::park();
            }
        }
        if std::thread::panicking() {
            self.dump_logs();
        }
        // Routers first (via their pid files), then anything else still inside our namespaces.
        let hosts = self.shared.hosts.lock().unwrap_or_else(|e| e.into_inner());
        for (_, run_dir) in hosts.iter() {
            if let Some(pid) = read_pid(&run_dir.join("weft.pid")) {
                if pid_in_our_netns(pid, self.prefix()) {
                    let _ = cmd::kill(pid, "KILL");
                }
            }
        }
        drop(hosts);
        if let Err(e) = cleanup_stale(self.prefix()) {
            eprintln!("weft-tests: cleanup of {} failed: {e:#}", self.prefix());
        }
        if std::env::var_os("WEFT_TEST_KEEP_DIR").is_none() {
            let _ = fs::remove_dir_all(&self.shared.dir);
        }
        LIVE.lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|p| p != self.prefix());
    }
}

/// On SIGINT or SIGTERM (Ctrl-C during a benchmark, or `kill`), removes what every test network
/// of this process still holds (its processes, namespaces and temporary directory), as dropping
/// it would have, then exits with status 130. Without this, an interrupted run leaves its
/// routers running until a later run happens to use the same prefix. Call it once, early in a
/// benchmark's `main`.
pub fn clean_up_on_signal() {
    std::thread::spawn(|| {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
        else {
            return;
        };
        let got = rt.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            let mut int = signal(SignalKind::interrupt()).ok()?;
            let mut term = signal(SignalKind::terminate()).ok()?;
            tokio::select! {
                _ = int.recv() => Some("SIGINT"),
                _ = term.recv() => Some("SIGTERM"),
            }
        });
        let Some(sig) = got else { return };
        SIGNALLED.store(true, Ordering::SeqCst);
        let prefixes = LIVE.lock().unwrap_or_else(|e| e.into_inner()).clone();
        eprintln!(
            "weft-tests: {sig}: removing {} test network(s) before exiting",
            prefixes.len()
        );
        for prefix in &prefixes {
            if let Err(e) = cleanup_stale(prefix) {
                eprintln!("weft-tests: cleanup of {prefix} failed: {e:#}");
            }
            if let Ok(entries) = fs::read_dir(std::env::temp_dir()) {
                for e in entries.flatten() {
                    if e.file_name().to_string_lossy().starts_with(prefix.as_str()) {
                        let _ = fs::remove_dir_all(e.path());
                    }
                }
            }
        }
        std::process::exit(130);
    });
}

impl Shared {
    fn weft_bin(&self) -> Result<&Path> {
        self.weft_bin.as_deref().ok_or_else(|| {
            anyhow!(
                "weft binary not found: set WEFT_BIN or build it first \
                 (`cargo build --workspace --bins`, or `cargo build --release -p weft-cli`)"
            )
        })
    }
}

impl Host {
    /// Host number.
    pub fn n(&self) -> u8 {
        self.n
    }

    /// Namespace name.
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// The weft binary its net uses.
    pub fn weft_bin(&self) -> Result<&Path> {
        self.shared.weft_bin()
    }

    /// Underlay address (`192.0.2.<10+n>`).
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// Name of this host's port on the underlay bridge (inside [`TestNet::underlay_ns`]).
    pub fn underlay_port(&self) -> String {
        format!("h{}", self.n)
    }

    /// `WEFT_RUN_DIR` of this host.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// `WEFT_STATE_DIR` of this host.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The router log, `<run-dir>/weft.log`.
    pub fn log_path(&self) -> PathBuf {
        self.run_dir.join("weft.log")
    }

    /// The router log's content ("" if missing).
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Runs a command inside this host's namespace (60 s limit); output whatever the status.
    pub fn exec<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Result<Output> {
        ns_exec(&self.ns, args, cmd::DEFAULT_TIMEOUT)
    }

    /// The `ip netns exec <ns> env WEFT_RUN_DIR=.. WEFT_STATE_DIR=.. weft ARGS` command.
    pub fn weft_cmd<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Result<Cmd> {
        self.weft_cmd_with(self.shared.weft_bin()?, args)
    }

    /// Like [`Host::weft_cmd`] but running `program` (e.g. a `weave` symlink) instead.
    pub fn weft_cmd_with<S: AsRef<std::ffi::OsStr>>(
        &self,
        program: &Path,
        args: &[S],
    ) -> Result<Cmd> {
        Ok(Cmd::new("ip")
            .args(["netns", "exec", &self.ns, "env"])
            .arg(format!("WEFT_RUN_DIR={}", self.run_dir.display()))
            .arg(format!("WEFT_STATE_DIR={}", self.state_dir.display()))
            .arg(program)
            .args(args))
    }

    /// Runs `weft ARGS` on this host; the output whatever the exit status.
    pub fn weft<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Result<Output> {
        self.weft_cmd(args)?.run()
    }

    /// Runs `weft ARGS` and fails (with the router log's tail) unless it exits 0; returns stdout.
    pub fn weft_ok<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Result<String> {
        let out = self.weft(args)?;
        if out.success() {
            return Ok(out.stdout);
        }
        bail!(
            "on host {} ({}): {out}\n--- {} (tail) ---\n{}",
            self.n,
            self.ns,
            self.log_path().display(),
            cmd::tail(&self.log(), 30)
        )
    }

    /// `weft launch --nickname host<n>` with the given peers' underlay addresses.
    pub fn launch(&self, peers: &[&Self]) -> Result<()> {
        let nick = format!("host{}", self.n);
        let mut args: Vec<String> = vec!["--nickname".into(), nick];
        args.extend(peers.iter().map(|h| h.addr.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.launch_args(&args)
    }

    /// `weft launch ARGS` (peers and options as given). With `WEFT_TEST_NO_FASTDP=1` in the
    /// environment, `--no-fastdp` is added: `.ci/run` runs the core namespace tests a second
    /// time that way, so both data paths pass them.
    pub fn launch_args(&self, args: &[&str]) -> Result<()> {
        let mut v = vec!["launch"];
        if no_fastdp_pass() {
            v.push("--no-fastdp");
        }
        v.extend_from_slice(args);
        self.weft_ok(&v)
            .with_context(|| format!("weft launch on host {}", self.n))?;
        Ok(())
    }

    /// PID of the router from `<run-dir>/weft.pid`.
    pub fn router_pid(&self) -> Result<u32> {
        let p = self.run_dir.join("weft.pid");
        read_pid(&p).ok_or_else(|| anyhow!("no readable pid in {}", p.display()))
    }

    /// Kills the router with SIGKILL (via its pid file) and waits until it is gone.
    pub fn kill_router(&self) -> Result<u32> {
        let pid = self.router_pid()?;
        if !pid_in_our_netns(pid, self.shared.prefix.as_str()) {
            bail!("pid {pid} from the pid file is not a process in this test's namespaces");
        }
        cmd::kill(pid, "KILL")?;
        wait_until(
            &format!("router pid {pid} to exit"),
            Duration::from_secs(10),
            Duration::from_millis(20),
            || {
                if cmd::pid_alive(pid) {
                    bail!("still alive")
                }
                Ok(())
            },
        )?;
        Ok(pid)
    }

    /// `GET /ip` on this host's router: (ident, addresses) of every allocation.
    pub fn ipam_owned(&self) -> Result<Vec<(String, Vec<String>)>> {
        let script = "import urllib.request\n\
                      print(urllib.request.urlopen('http://127.0.0.1:6784/ip', timeout=5).read().decode())";
        let out = self.exec(&["python3", "-c", script])?.ok()?;
        let v: Value = serde_json::from_str(out.stdout.trim())
            .with_context(|| format!("GET /ip answered {:?}", out.stdout))?;
        Ok(v["owned"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                let id = e["containerid"].as_str().unwrap_or("").to_owned();
                let addrs = e["addrs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a.as_str().map(str::to_owned))
                    .collect();
                (id, addrs)
            })
            .collect())
    }

    /// `weft status --json`, parsed.
    pub fn status_json(&self) -> Result<Value> {
        let out = self.weft_ok(&["status", "--json"])?;
        serde_json::from_str(&out).with_context(|| format!("`weft status --json` printed {out:?}"))
    }

    /// This router's 12-bit short id (from `weft status --json`).
    pub fn short_id(&self) -> Result<u16> {
        let v = self.status_json()?;
        v["short_id"]
            .as_u64()
            .and_then(|x| u16::try_from(x).ok())
            .ok_or_else(|| anyhow!("no numeric short_id in {v}"))
    }

    /// This router's peer name (`aa:bb:..`, from `weft status --json`).
    pub fn peer_name(&self) -> Result<String> {
        let v = self.status_json()?;
        v["name"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no name in {v}"))
    }

    /// One counter from `weft status --json` (`counters.<name>`).
    pub fn counter(&self, name: &str) -> Result<u64> {
        let v = self.status_json()?;
        v["counters"][name]
            .as_u64()
            .ok_or_else(|| anyhow!("no numeric counters.{name} in {}", v["counters"]))
    }

    /// Counter `name` once the data plane has published everything it counted: the data
    /// plane publishes its counters every 200 ms, so a read right after traffic can be one
    /// period behind. Reads until two reads 500 ms apart agree (at most 10 s).
    pub fn settled_counter(&self, name: &str) -> Result<u64> {
        let mut last = self.counter(name)?;
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(500));
            let now = self.counter(name)?;
            if now == last {
                return Ok(now);
            }
            last = now;
        }
        Ok(last)
    }

    /// Creates a container namespace `<p>c<k>` and attaches it with `weft attach CIDR NS`.
    pub fn container(&self, name: &str, cidr: &str) -> Result<Container> {
        let k = self.shared.containers.fetch_add(1, Ordering::Relaxed) + 1;
        let ns = format!("{}c{k}", self.shared.prefix);
        create_netns(&ns)?;
        self.weft_ok(&["attach", cidr, &ns])
            .with_context(|| format!("attaching container {name} ({ns}) on host {}", self.n))?;
        Ok(Container {
            name: name.to_owned(),
            ns,
            ip: parse_cidr_ip(cidr)?,
            cidr: cidr.to_owned(),
            host: Some(self.clone()),
        })
    }
}

impl Host {
    /// A container attached with address specs the router's IPAM resolves (`net:default`,
    /// `net:CIDR`, ...): the address is read back from what `weft attach` printed and from
    /// `ethwe`.
    pub fn container_alloc(&self, name: &str, specs: &[&str]) -> Result<Container> {
        let k = self.shared.containers.fetch_add(1, Ordering::Relaxed) + 1;
        let ns = format!("{}c{k}", self.shared.prefix);
        create_netns(&ns)?;
        let mut args = vec!["attach"];
        args.extend_from_slice(specs);
        args.push(&ns);
        let out = self
            .weft_ok(&args)
            .with_context(|| format!("attaching container {name} ({ns}) on host {}", self.n))?;
        let printed = out
            .split_whitespace()
            .next()
            .context("weft attach printed no address")?;
        let shown = ip(["-n", &ns, "-4", "-o", "addr", "show", "ethwe"])?;
        let cidr = shown
            .split_whitespace()
            .find(|w| w.split('/').next() == Some(printed))
            .with_context(|| format!("weft attach printed {printed}, ethwe shows {shown:?}"))?
            .to_owned();
        Ok(Container {
            name: name.to_owned(),
            ip: parse_cidr_ip(&cidr)?,
            cidr,
            ns,
            host: Some(self.clone()),
        })
    }
}

impl Container {
    /// A container handle for a namespace built by other means (benches).
    pub fn from_ns(name: &str, ns: &str, cidr: &str) -> Result<Self> {
        Ok(Self {
            name: name.to_owned(),
            ns: ns.to_owned(),
            ip: parse_cidr_ip(cidr)?,
            cidr: cidr.to_owned(),
            host: None,
        })
    }

    /// Label given at creation.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Namespace name.
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// Overlay address.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// Address with prefix length, as attached.
    pub fn cidr(&self) -> &str {
        &self.cidr
    }

    /// The host it is attached to (`None` for [`Container::from_ns`]).
    pub fn host(&self) -> Option<&Host> {
        self.host.as_ref()
    }

    /// Runs a command inside the container (60 s limit); output whatever the status.
    pub fn exec<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Result<Output> {
        ns_exec(&self.ns, args, cmd::DEFAULT_TIMEOUT)
    }

    /// One ping with a 1 s wait; `Ok` if a reply came.
    pub fn ping_once(&self, dst: Ipv4Addr) -> Result<()> {
        let d = dst.to_string();
        ns_exec(
            &self.ns,
            ["ping", "-n", "-c", "1", "-W", "1", d.as_str()],
            Duration::from_secs(5),
        )?
        .ok()
        .with_context(|| format!("ping {} -> {dst}", self.name))?;
        Ok(())
    }

    /// Waits until a ping to `dst` succeeds.
    pub fn wait_ping(&self, dst: Ipv4Addr, timeout: Duration) -> Result<()> {
        wait_until(
            &format!("{} ({}) to reach {dst}", self.name, self.ip),
            timeout,
            Duration::from_millis(100),
            || self.ping_once(dst),
        )
    }

    /// `ping -c count -i interval -W 1 dst`, parsed (a run with losses is not an error).
    pub fn ping(&self, dst: Ipv4Addr, count: u32, interval: f64) -> Result<PingStats> {
        let limit = Duration::from_secs_f64(count as f64 * interval + 10.0);
        let out = ns_exec(
            &self.ns,
            [
                "ping".to_owned(),
                "-n".into(),
                "-c".into(),
                count.to_string(),
                "-i".into(),
                interval.to_string(),
                "-W".into(),
                "1".into(),
                dst.to_string(),
            ],
            limit,
        )?;
        parse_ping(&out.stdout).with_context(|| format!("{out}"))
    }

    /// MAC address of the container's `ethwe`.
    pub fn mac(&self) -> Result<String> {
        self.link_mac(CONTAINER_DEV)
    }

    /// MAC address of interface `dev` in the container.
    pub fn link_mac(&self, dev: &str) -> Result<String> {
        let out = ip(["-j", "-n", &self.ns, "link", "show", "dev", dev])?;
        let v: Value = serde_json::from_str(&out)?;
        v[0]["address"]
            .as_str()
            .map(str::to_ascii_lowercase)
            .ok_or_else(|| anyhow!("no address for {dev} in {}: {out}", self.ns))
    }

    /// MTU of the container's `ethwe`.
    pub fn mtu(&self) -> Result<u32> {
        let out = ip(["-j", "-n", &self.ns, "link", "show", "dev", CONTAINER_DEV])?;
        let v: Value = serde_json::from_str(&out)?;
        v[0]["mtu"]
            .as_u64()
            .map(|m| m as u32)
            .ok_or_else(|| anyhow!("no mtu in {out}"))
    }

    /// The link-layer address the container's neighbour table holds for `dst`, if any.
    pub fn neigh(&self, dst: Ipv4Addr) -> Result<Option<String>> {
        let out = ip(["-j", "-n", &self.ns, "neigh", "show", &dst.to_string()])?;
        let v: Value = serde_json::from_str(if out.trim().is_empty() { "[]" } else { &out })?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .find_map(|e| e["lladdr"].as_str().map(str::to_ascii_lowercase)))
    }
}

/// Parses `ping` output into [`PingStats`].
pub fn parse_ping(out: &str) -> Result<PingStats> {
    let mut rtts_ms = Vec::new();
    for line in out.lines() {
        if let Some(i) = line.find("time=") {
            let v = line[i + 5..].split_whitespace().next().unwrap_or("");
            if let Ok(x) = v.parse::<f64>() {
                rtts_ms.push(x);
            }
        }
    }
    let summary = out
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .ok_or_else(|| anyhow!("no ping summary line in output"))?;
    let nums: Vec<u32> = summary
        .split(',')
        .filter_map(|part| part.split_whitespace().next()?.parse().ok())
        .collect();
    match nums.as_slice() {
        [tx, rx, ..] => Ok(PingStats {
            transmitted: *tx,
            received: *rx,
            rtts_ms,
        }),
        _ => bail!("cannot parse ping summary {summary:?}"),
    }
}

/// Creates namespace `name` with `lo` up and IPv6 switched off.
fn create_netns(name: &str) -> Result<()> {
    ip(["netns", "add", name])?;
    ip(["-n", name, "link", "set", "lo", "up"])?;
    // Best effort: fails harmlessly on kernels booted without IPv6.
    let _ = ns_exec(
        name,
        [
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ],
        Duration::from_secs(5),
    );
    Ok(())
}

fn parse_cidr_ip(cidr: &str) -> Result<Ipv4Addr> {
    let a = cidr.split('/').next().unwrap_or(cidr);
    a.parse()
        .with_context(|| format!("{cidr:?} is not an IPv4 CIDR"))
}

fn read_pid(p: &Path) -> Option<u32> {
    fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// True if `pid` lives in one of the namespaces named `<prefix>*` (so killing it cannot hit
/// anything outside the test).
fn pid_in_our_netns(pid: u32, prefix: &str) -> bool {
    netns_with_prefix(prefix)
        .unwrap_or_default()
        .iter()
        .any(|ns| netns_pids(ns).contains(&pid))
}

fn netns_with_prefix(prefix: &str) -> Result<Vec<String>> {
    let out = ip(["netns", "list"])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_owned)
        .collect())
}

/// The pids in namespace `ns`.
pub(crate) fn netns_pids(ns: &str) -> Vec<u32> {
    ip(["netns", "pids", ns])
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Removes leftovers of runs with this prefix (e.g. of a killed test): SIGKILLs every process
/// inside a namespace named `<prefix>*`, then deletes those namespaces.
pub fn cleanup_stale(prefix: &str) -> Result<()> {
    if prefix.len() < 3 {
        bail!("refusing to clean up with a prefix as short as {prefix:?}");
    }
    let names = netns_with_prefix(prefix)?;
    for ns in &names {
        for pid in netns_pids(ns) {
            let _ = cmd::kill(pid, "KILL");
        }
    }
    for ns in &names {
        for pid in netns_pids(ns) {
            let _ = wait_until(
                "process exit",
                Duration::from_secs(5),
                Duration::from_millis(20),
                || {
                    if cmd::pid_alive(pid) {
                        bail!("pid {pid} alive")
                    }
                    Ok(())
                },
            );
        }
    }
    // Containers first, so their veths vanish before the hosts' bridges.
    let mut errs = Vec::new();
    let mut ordered = names.clone();
    ordered.sort_by_key(|n| !n[prefix.len()..].starts_with('c'));
    for ns in &ordered {
        if let Err(e) = ip(["netns", "del", ns]) {
            errs.push(format!("{ns}: {e:#}"));
        }
    }
    if !errs.is_empty() {
        bail!("could not delete namespaces: {}", errs.join("; "));
    }
    Ok(())
}

fn require_root() -> Result<()> {
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|u| u.parse::<u32>().ok());
    if euid != Some(0) {
        bail!(
            "these tests build network namespaces, veths and bridges: they need root / \
             CAP_NET_ADMIN (run them as root, e.g. `sudo -E cargo test -p weft-tests`)"
        );
    }
    Ok(())
}

/// Locates the weft binary: `$WEFT_BIN`, else `weft` next to the running executable or in its
/// parent directory (tests run from `target/<profile>/deps`, binaries from `target/<profile>`).
pub fn find_weft_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("WEFT_BIN") {
        let p = PathBuf::from(p);
        let p = fs::canonicalize(&p).with_context(|| format!("WEFT_BIN={}", p.display()))?;
        return Ok(p);
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(2) {
        let cand = dir.join("weft");
        if cand.is_file() {
            return Ok(cand);
        }
    }
    bail!(
        "no weft binary next to {} (set WEFT_BIN or run `cargo build --workspace --bins`)",
        exe.display()
    )
}

/// The cargo target directory the running executable lives in (`.../target`), if recognisable.
pub fn target_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    exe.ancestors()
        .skip(1)
        .find(|d| d.file_name().is_some_and(|n| n == "target"))
        .map(Path::to_path_buf)
}

/// Two hosts with routers connected to each other and one container on each
/// (`10.32.0.1/12` on host 1, `10.32.0.2/12` on host 2) that can already ping each other.
#[derive(Debug, Clone)]
pub struct Pair {
    /// Host 1 (launched first, no peers).
    pub h1: Host,
    /// Host 2 (launched with host 1 as its peer).
    pub h2: Host,
    /// Container on host 1.
    pub c1: Container,
    /// Container on host 2.
    pub c2: Container,
}

impl TestNet {
    /// Builds a [`Pair`]: hosts 1 and 2, `weft launch` on both (host 2 names host 1), both
    /// connections established, a container on each, and a first ping through.
    pub fn pair(&self) -> Result<Pair> {
        let h1 = self.host(1)?;
        let h2 = self.host(2)?;
        h1.launch(&[])?;
        h2.launch(&[&h1])?;
        wait_established(&[&h1, &h2], Duration::from_secs(30))?;
        let c1 = h1.container("c1", "10.32.0.1/12")?;
        let c2 = h2.container("c2", "10.32.0.2/12")?;
        c1.wait_ping(c2.ip(), Duration::from_secs(20))?;
        Ok(Pair { h1, h2, c1, c2 })
    }

    /// Hosts 1..=n, launched in Weave's documented order (host k names hosts 1..k), all
    /// connections established, and container `c<k>` = `10.32.0.<k>/12` on host k.
    pub fn mesh(&self, n: u8) -> Result<(Vec<Host>, Vec<Container>)> {
        let mut hosts = Vec::new();
        for k in 1..=n {
            let h = self.host(k)?;
            let peers: Vec<&Host> = hosts.iter().collect();
            h.launch(&peers)?;
            hosts.push(h);
        }
        let refs: Vec<&Host> = hosts.iter().collect();
        wait_established(&refs, Duration::from_secs(30))?;
        let mut ctrs = Vec::new();
        for (i, h) in hosts.iter().enumerate() {
            let k = i + 1;
            ctrs.push(h.container(&format!("c{k}"), &format!("10.32.0.{k}/12"))?);
        }
        Ok((hosts, ctrs))
    }
}

/// True in the pass of the namespace tests that runs every router with `--no-fastdp`
/// (`WEFT_TEST_NO_FASTDP=1`).
pub fn no_fastdp_pass() -> bool {
    std::env::var("WEFT_TEST_NO_FASTDP").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Waits until every host's `weft status connections` lists exactly `hosts.len() - 1`
/// connections and all of them are `established`.
pub fn wait_established(hosts: &[&Host], timeout: Duration) -> Result<()> {
    let want = hosts.len() - 1;
    for h in hosts {
        wait_until(
            &format!("{want} established connection(s) on host {}", h.n()),
            timeout,
            Duration::from_millis(200),
            || {
                let text = h.weft_ok(&["status", "connections"])?;
                let conns = crate::status::parse_connections(&text);
                let ok = conns.len() == want && conns.iter().all(|c| c.state == "established");
                if ok {
                    Ok(())
                } else {
                    bail!("`weft status connections` printed:\n{text}")
                }
            },
        )?;
    }
    Ok(())
}
