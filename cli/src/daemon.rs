//! Layer: driver. The weft daemon: one process per host that runs the router, the Docker API
//! proxy and the Docker network plugin as parts, each started and stopped on its own (Weave
//! 1.x's `launch-router` / `launch-proxy` / `launch-plugin` / `stop-router` / `stop-proxy` /
//! `stop-plugin`, in any order) or together (`launch [--plugin]`, `stop`). The plugin, like
//! the proxy, reaches IPAM through the router slot, in-process.
//!
//! Design. One task (the "actor") owns the daemon's state and handles, one at a time, the
//! requests arriving on the control socket ([`crate::control`]) and the ends of its parts. The
//! parts share two slots: the running router's [`Handle`] (`None` while no router runs) and
//! the proxy's [`Attacher`]. The proxy reaches IPAM through the router slot, in-process; while
//! it is empty the proxy waits, bounded, for a router. Docker's container events are followed
//! for as long as either part runs ([`weft_proxy::lifecycle::follow`]), and every router start
//! prunes the addresses of containers that went away meanwhile and has the proxy re-attach the
//! running ones. The daemon exits when its last part stops (or, when started empty, if no
//! request comes), and on SIGTERM/SIGINT. Its log is `<run-dir>/weft.log`.

use std::fs::OpenOptions;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot, watch};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, reload};
use weft_proxy::attach::Attacher;
use weft_router::Handle;
use weft_router::config::{BRIDGE, DEFAULT_MTU, TAP};
use weft_router::run::running_pid;

use crate::Global;
use crate::control::{self, DaemonStatus, Request, Response};
use crate::launch::{PluginSpec, ProxySpec, RouterSpec, notes};

/// The daemon's log, in the run directory.
pub(crate) const LOG_FILE: &str = "weft.log";

pub(crate) use crate::launch::PROXY_FILE;

/// How long a daemon started without parts waits for its first request.
const IDLE_EXIT: Duration = Duration::from_secs(30);

/// Arguments of the hidden `weft daemon` verb.
#[derive(Debug, Args)]
pub(crate) struct DaemonArgs {
    /// Marks the daemon's command line (what `running_pid` recognises).
    #[arg(long)]
    foreground: bool,
    /// The file stdout and stderr go to, rotated when it grows large (set by `spawn`).
    #[arg(long, hide = true)]
    log_file: Option<std::path::PathBuf>,
}

/// Starts a daemon in the background and waits until its control socket answers.
pub(crate) fn spawn(global: &Global) -> anyhow::Result<()> {
    std::fs::create_dir_all(&global.run_dir)
        .with_context(|| format!("creating {}", global.run_dir.display()))?;
    let log_path = global.run_dir.join(LOG_FILE);
    if let Err(e) = crate::logcap::rotate_if_large(&log_path, crate::logcap::MAX_LOG) {
        eprintln!("weft: rotating {}: {e}", log_path.display());
    }
    let offset = std::fs::metadata(&log_path).map_or(0, |m| m.len());
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let exe = std::env::current_exe().context("finding the weft executable")?;
    let mut cmd = Command::new(exe);
    cmd.arg("--run-dir")
        .arg(&global.run_dir)
        .arg("--state-dir")
        .arg(&global.state_dir)
        .arg("--http-addr")
        .arg(global.http_addr.to_string());
    if let Some(d) = &global.docker_api {
        cmd.arg("--docker-api").arg(d);
    }
    let mut child = cmd
        .arg("daemon")
        .arg("--foreground")
        .arg("--log-file")
        .arg(&log_path)
        // The password reaches the router through the control socket, never the environment.
        .env_remove("WEAVE_PASSWORD")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting the weft daemon")?;
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "the weft daemon exited during start-up ({status}){}",
                crate::launch::log_since(&log_path, offset)
            );
        }
        if control::status(global).is_ok_and(|s| s.is_some()) {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            bail!(
                "the weft daemon did not answer on {} within 10 s{}",
                control::socket(global).display(),
                crate::launch::log_since(&log_path, offset)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `weft daemon --foreground`: a daemon that waits for requests (its output goes to
/// `<run-dir>/weft.log`, see [`spawn`], rotated when it grows large).
pub(crate) fn main(global: &Global, args: DaemonArgs) -> anyhow::Result<ExitCode> {
    let log = match args.log_file {
        Some(path) => {
            crate::logcap::spawn(path.clone());
            crate::logs::Where::File(path)
        }
        None => crate::logs::Where::File(global.run_dir.join(LOG_FILE)),
    };
    serve(global, None, log)
}

/// `weft launch* --foreground`: the daemon in this process, starting with `req`.
pub(crate) fn foreground(global: &Global, req: Request) -> anyhow::Result<ExitCode> {
    if control::status(global)?.is_some() {
        bail!(
            "a weft daemon already runs for {}; use the launch verbs without --foreground",
            global.run_dir.display()
        );
    }
    let log = match crate::systemd::journal_unit() {
        Some(unit) => crate::logs::Where::Journal(unit),
        None => crate::logs::Where::Stderr(std::process::id()),
    };
    serve(global, Some(req), log)
}

fn serve(
    global: &Global,
    first: Option<Request>,
    log: crate::logs::Where,
) -> anyhow::Result<ExitCode> {
    let (filter, reload) = reload::Layer::new(EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_ansi(false);
    if matches!(log, crate::logs::Where::Journal(_)) {
        // The journal stamps every line itself.
        tracing_subscriber::registry()
            .with(filter)
            .with(fmt.without_time())
            .init();
    } else {
        tracing_subscriber::registry().with(filter).with(fmt).init();
    }
    log.record(&global.run_dir);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(global.clone(), first, reload))
}

type Reload = reload::Handle<EnvFilter, tracing_subscriber::Registry>;

/// A running part.
struct Part<S> {
    spec: S,
    generation: u64,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

/// Which part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Router,
    Proxy,
    Plugin,
}

impl Which {
    /// The part's name in log lines.
    fn name(self) -> &'static str {
        match self {
            Self::Router => "router",
            Self::Proxy => "proxy",
            Self::Plugin => "plugin",
        }
    }
}

/// Completes when a part is asked to stop (see [`Daemon::spawn_part`]).
type Stopped = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// What the actor hears besides requests.
enum Event {
    /// A part's task ended (stopped, or failed).
    Ended { part: Which, generation: u64 },
}

struct Daemon {
    global: Global,
    reload: Reload,
    router_tx: watch::Sender<Option<Handle>>,
    proxy_tx: watch::Sender<Option<Attacher>>,
    router: Option<Part<RouterSpec>>,
    proxy: Option<Part<ProxySpec>>,
    proxy_endpoints: Vec<String>,
    plugin_tx: watch::Sender<Option<weft_proxy::plugin::Hook>>,
    plugin: Option<Part<PluginSpec>>,
    follower: Option<(String, tokio::task::JoinHandle<()>)>,
    events: mpsc::UnboundedSender<Event>,
    generation: u64,
    /// A part ended without being asked to stop.
    failed: bool,
}

async fn run(global: Global, first: Option<Request>, reload: Reload) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&global.run_dir)
        .with_context(|| format!("creating {}", global.run_dir.display()))?;
    let sock_path = control::socket(&global);
    if sock_path.exists() {
        if std::os::unix::net::UnixStream::connect(&sock_path).is_ok() {
            bail!("a weft daemon already answers on {}", sock_path.display());
        }
        std::fs::remove_file(&sock_path)
            .with_context(|| format!("removing {}", sock_path.display()))?;
    }
    let listener = UnixListener::bind(&sock_path)
        .with_context(|| format!("listening on {}", sock_path.display()))?;
    std::fs::set_permissions(&sock_path, std::fs::Permissions::from_mode(0o600))?;
    let (req_tx, mut req_rx) = mpsc::unbounded_channel::<(Request, oneshot::Sender<Response>)>();
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
    let answering = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let accept = tokio::spawn(accept_loop(listener, req_tx, answering.clone()));
    let mut d = Daemon {
        global: global.clone(),
        reload,
        router_tx: watch::channel(None).0,
        proxy_tx: watch::channel(None).0,
        router: None,
        proxy: None,
        proxy_endpoints: Vec::new(),
        plugin_tx: watch::channel(None).0,
        plugin: None,
        follower: None,
        events: ev_tx,
        generation: 0,
        failed: false,
    };
    tracing::info!(
        "weft daemon {} started (pid {})",
        env!("CARGO_PKG_VERSION"),
        std::process::id()
    );
    if let Some(req) = first {
        let resp = d.handle(req).await;
        if let Response::Error { error } = &resp {
            eprintln!("weft: {error}");
            accept.abort();
            let _ = std::fs::remove_file(&sock_path);
            return Ok(ExitCode::FAILURE);
        }
        // Under systemd (Type=notify): the parts serve.
        crate::systemd::notify("READY=1");
    }
    let signal = shutdown_signal();
    tokio::pin!(signal);
    let idle = tokio::time::sleep(IDLE_EXIT);
    tokio::pin!(idle);
    let mut ever_ran = d.running();
    loop {
        if ever_ran && !d.running() {
            break;
        }
        tokio::select! {
            Some((req, reply)) = req_rx.recv() => {
                // After a start, failed or not, the daemon lives only while a part runs.
                ever_ran |= matches!(req, Request::Start { .. });
                let resp = d.handle(req).await;
                let _ = reply.send(resp);
            }
            Some(ev) = ev_rx.recv() => d.on_event(ev),
            () = &mut signal => {
                tracing::info!("signalled: stopping");
                crate::systemd::notify("STOPPING=1");
                d.stop(true, true, true).await;
                break;
            }
            () = &mut idle, if !ever_ran => {
                tracing::info!("no request within {IDLE_EXIT:?}; exiting");
                break;
            }
        }
    }
    accept.abort();
    if let Some((_, f)) = d.follower.take() {
        f.abort();
    }
    let _ = std::fs::remove_file(&sock_path);
    // The last answer (to the stop that emptied the daemon) must reach its client.
    let deadline = Instant::now() + Duration::from_secs(2);
    while answering.load(std::sync::atomic::Ordering::SeqCst) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tracing::info!("weft daemon exits");
    if d.failed {
        // A part ended on its own (not by a stop request): a supervisor should restart it.
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Counts a connection being answered while it lives.
struct Answering(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Answering {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

async fn accept_loop(
    listener: UnixListener,
    requests: mpsc::UnboundedSender<(Request, oneshot::Sender<Response>)>,
    answering: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let requests = requests.clone();
        answering.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let guard = Answering(answering.clone());
        tokio::spawn(async move {
            let _guard = guard;
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            if BufReader::new(read).read_line(&mut line).await.is_err() {
                return;
            }
            let resp = match serde_json::from_str::<Request>(&line) {
                Ok(req) => {
                    let (tx, rx) = oneshot::channel();
                    if requests.send((req, tx)).is_err() {
                        return;
                    }
                    rx.await.unwrap_or(Response::Error {
                        error: "the weft daemon is exiting".to_owned(),
                    })
                }
                Err(e) => Response::Error {
                    error: format!("bad request: {e}"),
                },
            };
            if let Ok(mut text) = serde_json::to_string(&resp) {
                text.push('\n');
                let _ = write.write_all(text.as_bytes()).await;
            }
        });
    }
}

/// Two specs are the same launch when they serialise alike (the password included).
fn same<T: serde::Serialize>(a: &T, b: &T) -> bool {
    serde_json::to_string(a).ok() == serde_json::to_string(b).ok()
}

impl Daemon {
    /// Whether any part runs.
    fn running(&self) -> bool {
        self.router.is_some() || self.proxy.is_some() || self.plugin.is_some()
    }

    async fn handle(&mut self, req: Request) -> Response {
        match req {
            Request::Status => Response::Status(Box::new(DaemonStatus {
                pid: std::process::id(),
                router: self.router.as_ref().map(|p| p.spec.clone()),
                proxy: self.proxy.as_ref().map(|p| p.spec.clone()),
                plugin: self.plugin.as_ref().map(|p| p.spec.clone()),
            })),
            Request::Stop {
                router,
                proxy,
                plugin,
            } => {
                let (r, p, g) = self.stop(router, proxy, plugin).await;
                Response::Stopped {
                    router: r,
                    proxy: p,
                    plugin: g,
                }
            }
            Request::Start {
                router,
                proxy,
                proxy_optional,
                exclusive,
                plugin,
            } => match self
                .start(
                    router.map(|r| *r),
                    proxy.map(|p| *p),
                    proxy_optional,
                    exclusive,
                )
                .await
            {
                Ok((router, proxy)) => {
                    self.failed = false;
                    match self.start_plugin_part(plugin.map(|p| *p)).await {
                        Ok(plugin) => Response::Started {
                            router,
                            proxy,
                            plugin,
                        },
                        Err(e) => {
                            tracing::error!("{e:#}");
                            Response::Error {
                                error: format!("{e:#}"),
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::error!("{e:#}");
                    Response::Error {
                        error: format!("{e:#}"),
                    }
                }
            },
        }
    }

    fn set_log_level(&self, level: Option<&str>) {
        let Some(level) = level else { return };
        let filter = weft_router::config::log_filter(level);
        match EnvFilter::try_new(&filter) {
            Ok(f) => {
                if let Err(e) = self.reload.reload(f) {
                    tracing::warn!("changing the log level: {e}");
                }
            }
            Err(e) => tracing::warn!("invalid --log-level '{level}': {e}"),
        }
    }

    async fn start(
        &mut self,
        router: Option<RouterSpec>,
        proxy: Option<ProxySpec>,
        proxy_optional: bool,
        exclusive: bool,
    ) -> anyhow::Result<(Option<String>, Option<Vec<String>>)> {
        let mut name = None;
        if let Some(spec) = router {
            self.set_log_level(spec.common.log_level.as_deref());
            match &self.router {
                Some(_) if exclusive => {
                    bail!("weft is already running; you can stop it with 'weave stop'")
                }
                Some(p) if same(&p.spec, &spec) => {}
                Some(_) => bail!(
                    "the router is already running with different arguments; you can stop it \
                     with 'weave stop-router'"
                ),
                None => self.start_router(spec).await?,
            }
            name = self
                .router_tx
                .borrow()
                .as_ref()
                .map(|h| h.peer_name().to_owned());
        }
        let mut endpoints = None;
        if let Some(spec) = proxy {
            if self.proxy.is_none() {
                self.set_log_level(spec.common.log_level.as_deref());
            }
            match &self.proxy {
                Some(p) if exclusive || same(&p.spec, &spec) => {}
                Some(_) => bail!(
                    "the proxy is already running with different arguments; you can stop it \
                     with 'weave stop-proxy'"
                ),
                None => match self.start_proxy(spec).await {
                    Ok(()) => {}
                    Err(e) if proxy_optional => {
                        tracing::warn!("not starting the Docker API proxy: {e:#}");
                    }
                    Err(e) => return Err(e.context("starting the Docker API proxy")),
                },
            }
            if self.proxy.is_some() {
                endpoints = Some(self.proxy_endpoints.clone());
            }
        }
        Ok((name, endpoints))
    }

    fn next_generation(&mut self) -> u64 {
        self.generation += 1;
        self.generation
    }

    async fn start_router(&mut self, spec: RouterSpec) -> anyhow::Result<()> {
        let config = router_config(&self.global, &spec)?;
        // Warnings, so they show at Weave's usual --log-level=warning too.
        for n in notes(Some(&spec.args), &spec.common) {
            tracing::warn!("{n}");
        }
        let dns = &spec.args;
        if dns.dns_domain.is_some()
            || dns.dns_listen_address.is_some()
            || dns.dns_ttl.is_some()
            || dns.resolv_conf.is_some()
        {
            tracing::info!("weaveDNS options noted: {:?}", config.dns);
        }
        let generation = self.next_generation();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = oneshot::channel::<Handle>();
        let (done_tx, done_rx) = oneshot::channel::<anyhow::Error>();
        let slot = self.router_tx.clone();
        let events = self.events.clone();
        let task = tokio::spawn(async move {
            let stopped = async {
                let _ = stop_rx.await;
            };
            let result = weft_router::run_with(config, stopped, |h| {
                slot.send_replace(Some(h.clone()));
                let _ = ready_tx.send(h);
            })
            .await;
            slot.send_replace(None);
            match result {
                Ok(()) => tracing::info!("router stopped"),
                Err(e) => {
                    tracing::error!("router failed: {e:#}");
                    let _ = done_tx.send(e);
                }
            }
            let _ = events.send(Event::Ended {
                part: Which::Router,
                generation,
            });
        });
        let Ok(handle) = ready_rx.await else {
            let e = done_rx
                .await
                .unwrap_or_else(|_| anyhow::anyhow!("the router stopped during start-up"));
            let _ = task.await;
            return Err(e);
        };
        self.router = Some(Part {
            spec: spec.clone(),
            generation,
            stop: Some(stop_tx),
            task,
        });
        self.ensure_follower();
        let docker = weft_proxy::upstream::Docker::new(weft_proxy::parse_endpoint(
            &self.follower_endpoint(),
        )?);
        let attacher = self.proxy_tx.borrow().clone();
        tokio::spawn(async move {
            weft_proxy::lifecycle::router_started(&docker, &handle, attacher.as_ref()).await;
        });
        Ok(())
    }

    async fn start_proxy(&mut self, spec: ProxySpec) -> anyhow::Result<()> {
        let config = proxy_config(&self.global, &spec)?;
        for n in notes(None, &spec.common) {
            tracing::warn!("{n}");
        }
        let proxy = weft_proxy::bind(config, self.router_tx.subscribe())?;
        let endpoints: Vec<String> = proxy.endpoints().iter().map(ToString::to_string).collect();
        let attacher = proxy.attacher();
        let info = serde_json::json!({ "listen": endpoints });
        let file = self.global.run_dir.join(PROXY_FILE);
        if let Err(e) = std::fs::write(&file, info.to_string()) {
            tracing::warn!("writing {}: {e}", file.display());
        }
        self.proxy_tx.send_replace(Some(attacher.clone()));
        self.proxy =
            Some(self.spawn_part(Which::Proxy, spec.clone(), |stopped| proxy.serve(stopped)));
        self.proxy_endpoints = endpoints;
        self.ensure_follower();
        if self.router_tx.borrow().is_some() {
            tokio::spawn(async move { attacher.reattach_all().await });
        }
        Ok(())
    }

    /// The Docker endpoint the lifecycle follower uses: the proxy's, else the router's, else
    /// the plugin's.
    fn follower_endpoint(&self) -> String {
        self.proxy
            .as_ref()
            .map(|p| p.spec.docker_api.clone())
            .or_else(|| self.router.as_ref().map(|r| r.spec.docker_api.clone()))
            .or_else(|| self.plugin.as_ref().map(|p| p.spec.docker_api.clone()))
            .unwrap_or_else(|| format!("unix://{}", weft_proxy::DEFAULT_DOCKER_API))
    }

    /// Starts the network plugin if asked and not running; the socket it serves on.
    async fn start_plugin_part(
        &mut self,
        spec: Option<PluginSpec>,
    ) -> anyhow::Result<Option<String>> {
        if let Some(spec) = spec {
            match &self.plugin {
                Some(p) if same(&p.spec, &spec) => {}
                Some(_) => bail!(
                    "the plugin is already running with different arguments; you can stop it \
                     with 'weave stop-plugin'"
                ),
                None => self
                    .start_plugin(spec)
                    .await
                    .context("starting the Docker network plugin")?,
            }
        }
        Ok(self.plugin.as_ref().map(|p| p.spec.socket.clone()))
    }

    async fn start_plugin(&mut self, spec: PluginSpec) -> anyhow::Result<()> {
        let docker = weft_proxy::upstream::Docker::new(
            weft_proxy::parse_endpoint(&spec.docker_api).context("--docker-api")?,
        );
        let config = weft_proxy::plugin::Config {
            socket: std::path::PathBuf::from(&spec.socket),
            docker,
            network: spec.network.clone(),
        };
        let plugin = weft_proxy::plugin::bind(config, self.router_tx.subscribe())?;
        self.plugin_tx.send_replace(Some(plugin.hook()));
        self.plugin = Some(self.spawn_part(Which::Plugin, spec, |stopped| plugin.serve(stopped)));
        self.ensure_follower();
        Ok(())
    }

    /// Runs a part (the proxy or the plugin) as a task: `serve` gets the future that completes
    /// on a stop request; a failure is logged, and the end is reported as [`Event::Ended`].
    fn spawn_part<S, F>(
        &mut self,
        which: Which,
        spec: S,
        serve: impl FnOnce(Stopped) -> F,
    ) -> Part<S>
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let generation = self.next_generation();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let events = self.events.clone();
        let serving = serve(Box::pin(async {
            let _ = stop_rx.await;
        }));
        let task = tokio::spawn(async move {
            if let Err(e) = serving.await {
                tracing::error!("{} failed: {e:#}", which.name());
            }
            let _ = events.send(Event::Ended {
                part: which,
                generation,
            });
        });
        Part {
            spec,
            generation,
            stop: Some(stop_tx),
            task,
        }
    }

    /// Follows Docker's events on the current endpoint (restarting on another one).
    fn ensure_follower(&mut self) {
        let want = self.follower_endpoint();
        if self.follower.as_ref().is_some_and(|(ep, _)| *ep == want) {
            return;
        }
        if let Some((_, old)) = self.follower.take() {
            old.abort();
        }
        let Ok(endpoint) = weft_proxy::parse_endpoint(&want) else {
            return;
        };
        let docker = weft_proxy::upstream::Docker::new(endpoint);
        let task = tokio::spawn(weft_proxy::lifecycle::follow(
            docker,
            self.router_tx.subscribe(),
            self.proxy_tx.subscribe(),
            self.plugin_tx.subscribe(),
        ));
        self.follower = Some((want, task));
    }

    /// Stops the named parts; returns which of them were running.
    async fn stop(&mut self, router: bool, proxy: bool, plugin: bool) -> (bool, bool, bool) {
        let mut was = (false, false, false);
        if plugin {
            // First: removing its network may need the router (addresses go back).
            if let Some(mut p) = self.plugin.take() {
                was.2 = true;
                if let Some(s) = p.stop.take() {
                    let _ = s.send(());
                }
                let _ = p.task.await;
                self.plugin_tx.send_replace(None);
            }
        }
        if router {
            if let Some(mut p) = self.router.take() {
                was.0 = true;
                if let Some(s) = p.stop.take() {
                    let _ = s.send(());
                }
                let _ = p.task.await;
                self.router_tx.send_replace(None);
            }
        }
        if proxy {
            if let Some(mut p) = self.proxy.take() {
                was.1 = true;
                if let Some(s) = p.stop.take() {
                    let _ = s.send(());
                }
                let _ = p.task.await;
                self.proxy_tx.send_replace(None);
                self.proxy_endpoints.clear();
                let _ = std::fs::remove_file(self.global.run_dir.join(PROXY_FILE));
                tracing::info!("proxy stopped");
            }
        }
        if self.running() {
            self.ensure_follower();
        }
        was
    }

    fn on_event(&mut self, ev: Event) {
        let Event::Ended { part, generation } = ev;
        match part {
            Which::Router => {
                if self
                    .router
                    .as_ref()
                    .is_some_and(|p| p.generation == generation)
                {
                    self.router = None;
                    self.router_tx.send_replace(None);
                    self.failed = true;
                }
            }
            Which::Proxy => {
                if self
                    .proxy
                    .as_ref()
                    .is_some_and(|p| p.generation == generation)
                {
                    self.failed = true;
                    self.proxy = None;
                    self.proxy_tx.send_replace(None);
                    let _ = std::fs::remove_file(self.global.run_dir.join(PROXY_FILE));
                }
            }
            Which::Plugin => {
                if self
                    .plugin
                    .as_ref()
                    .is_some_and(|p| p.generation == generation)
                {
                    self.failed = true;
                    self.plugin = None;
                    self.plugin_tx.send_replace(None);
                }
            }
        }
    }
}

/// The router's configuration from a launch spec.
fn router_config(global: &Global, spec: &RouterSpec) -> anyhow::Result<weft_router::Config> {
    let a = &spec.args;
    let nickname = match &a.nickname {
        Some(n) => n.clone(),
        None => nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "weft".to_owned()),
    };
    let ipalloc_range = a.range()?;
    let default_subnet = a
        .ipalloc_default_subnet
        .as_deref()
        .map(|s| {
            s.parse::<ipnet::Ipv4Net>()
                .with_context(|| format!("--ipalloc-default-subnet '{s}' is not a CIDR"))
        })
        .transpose()?;
    if let (Some(range), Some(subnet)) = (ipalloc_range, default_subnet) {
        if !range.contains(&subnet) {
            bail!("--ipalloc-default-subnet {subnet} is not inside --ipalloc-range {range}");
        }
    }
    let init = match (&a.ipalloc_init, a.init_peer_count) {
        (Some(i), _) => i.clone(),
        (None, Some(n)) => format!("consensus={n}"),
        (None, None) => "consensus".to_owned(),
    };
    let ipalloc_init =
        weft_router::config::parse_ipalloc_init(&init).map_err(anyhow::Error::msg)?;
    let password = read_password(a.password.as_deref(), a.password_file.as_deref())?;
    let trusted_subnets =
        weft_router::config::parse_trusted_subnets(a.trusted_subnets.as_deref().unwrap_or(""))
            .map_err(anyhow::Error::msg)?;
    let name = a
        .name
        .as_deref()
        .map(|n| {
            n.parse().map_err(|_| {
                anyhow::anyhow!("--name '{n}' is not a peer name like aa:bb:cc:dd:ee:ff")
            })
        })
        .transpose()?;
    let listen = |flag: &str, v: Option<&str>, default: Option<&str>| match v
        .or(default)
        .filter(|s| !s.is_empty())
    {
        None => Ok(None),
        Some(s) => s
            .parse::<weft_router::config::ListenAddr>()
            .map(Some)
            .map_err(|e| anyhow::anyhow!("{flag}: {e}")),
    };
    let dns = if a.no_dns {
        None
    } else {
        let mut dns = weft_router::dns::DnsConfig::default();
        if let Some(d) = &a.dns_domain {
            dns.domain = weft_dns::entry::fqdn(d);
        }
        dns.listen = a
            .dns_listen_address
            .as_deref()
            .map(crate::dns::parse_listen)
            .transpose()?;
        if let Some(t) = a.dns_ttl {
            dns.ttl = t;
        }
        if let Some(t) = &a.dns_fallback_timeout {
            dns.fallback_timeout = parse_go_duration(t).with_context(|| {
                format!("--dns-fallback-timeout '{t}' is not a duration like 5s")
            })?;
        }
        if let Some(r) = &a.resolv_conf {
            dns.resolv_conf = r.clone();
        }
        if let Some(r) = a.dns_rate_limit {
            dns.rate_limit = r;
        }
        if let Some(b) = &a.docker_bridge {
            dns.docker_bridge = b.clone();
        }
        Some(dns)
    };
    let port = a.port;
    Ok(weft_router::Config {
        name,
        nickname,
        host: a
            .host
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
        port,
        // Weave's ports: sleeve on the control port's number (UDP), fastdp on the next.
        data_port: port,
        fastdp_port: if a.no_fastdp {
            0
        } else {
            port.checked_add(1)
                .context("--port 65535 leaves no fast-path port (or give --no-fastdp)")?
        },
        datapath_priority: a.datapath_priority,
        datapath_threads: usize::from(a.datapath_threads),
        express: !a.no_express,
        protocol_max: a.protocol_max,
        http_addr: global.http_addr,
        mtu: a.mtu.unwrap_or(DEFAULT_MTU),
        state_dir: global.state_dir.clone(),
        run_dir: global.run_dir.clone(),
        peers: a.peers.clone(),
        bridge: BRIDGE.to_owned(),
        tap: TAP.to_owned(),
        discovery: !a.no_discovery,
        conn_limit: a.conn_limit,
        resume: a.resume,
        ipalloc_range,
        ipalloc_default_subnet: default_subnet,
        ipalloc_init,
        ipam_recover: a.ipam_recover,
        docker_api: match global.docker() {
            Ok(weft_proxy::Endpoint::Unix(path)) => Some(path),
            _ => None,
        },
        password,
        trusted_subnets,
        status_addr: listen(
            "--status-addr",
            a.status_addr.as_deref(),
            Some("127.0.0.1:6782"),
        )?,
        metrics_addr: listen("--metrics-addr", a.metrics_addr.as_deref(), None)?,
        dns,
        disabled_features: weft_router::features::parse_disabled(
            a.disable_features.as_deref().unwrap_or(""),
        )
        .map_err(|e| anyhow::anyhow!("--disable-features: {e}"))?,
    })
}

/// A Go duration as Weave's flags take them (`5s`, `500ms`, `1m30s`, `2h`).
fn parse_go_duration(s: &str) -> anyhow::Result<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        bail!("empty duration");
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(digits);
        let value: f64 = num.parse().with_context(|| format!("'{s}'"))?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let secs = match unit {
            "ns" => value / 1e9,
            "us" | "µs" => value / 1e6,
            "ms" => value / 1e3,
            "s" => value,
            "m" => value * 60.0,
            "h" => value * 3600.0,
            _ => bail!("unknown unit '{unit}' in '{s}'"),
        };
        total += Duration::from_secs_f64(secs);
        rest = next;
    }
    Ok(total)
}

/// The proxy's configuration from a launch spec.
fn proxy_config(global: &Global, spec: &ProxySpec) -> anyhow::Result<weft_proxy::Config> {
    let docker_api = weft_proxy::parse_endpoint(&spec.docker_api).context("--docker-api")?;
    let listen = spec
        .args
        .listen
        .iter()
        .map(|l| weft_proxy::parse_endpoint(l).context("-H"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if listen.contains(&docker_api) {
        bail!(
            "the proxy would forward to itself: the Docker endpoint {docker_api} is one of its \
             -H addresses (is DOCKER_HOST pointing at the proxy? run 'eval $(weave env \
             --restore)' first)"
        );
    }
    Ok(weft_proxy::Config {
        listen,
        docker_api,
        rewrite_inspect: spec.args.rewrite_inspect,
        no_default_ipalloc: spec.args.no_default_ipalloc,
        rewrite_hosts: !spec.args.no_rewrite_hosts,
        multicast_route: !spec.args.no_multicast_route,
        waiter_dir: global.state_dir.join("waiter"),
        without_dns: spec.args.without_dns,
        hostname: weft_proxy::HostnameRule::new(
            spec.args.hostname_from_label.clone(),
            spec.args.hostname_match.as_deref().unwrap_or("(.*)"),
            spec.args.hostname_replacement.as_deref().unwrap_or("$1"),
        )
        .map_err(anyhow::Error::msg)
        .context("--hostname-match")?,
    })
}

/// The password from `--password`/`WEAVE_PASSWORD` or `--password-file`.
fn read_password(
    given: Option<&str>,
    file: Option<&std::path::Path>,
) -> anyhow::Result<Option<weft_router::config::Password>> {
    let bytes = match (given, file) {
        (Some(p), _) => p.as_bytes().to_vec(),
        (None, Some(path)) => {
            let mut b = std::fs::read(path)
                .with_context(|| format!("reading --password-file {}", path.display()))?;
            if b.ends_with(b"\n") {
                b.pop();
                if b.ends_with(b"\r") {
                    b.pop();
                }
            }
            b
        }
        (None, None) => return Ok(None),
    };
    if bytes.is_empty() {
        bail!("the password is empty");
    }
    Ok(Some(weft_router::config::Password(bytes)))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the daemon would never stop cleanly; run until killed.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Stops a router whose pid file is left but whose daemon does not answer (SIGTERM, then
/// SIGKILL after 10 s); true if there was one.
pub(crate) fn kill_stale(global: &Global) -> anyhow::Result<bool> {
    let pid_file = global.run_dir.join("weft.pid");
    let Some(pid) = running_pid(&pid_file) else {
        return Ok(false);
    };
    let pid = Pid::from_raw(i32::try_from(pid).context("pid out of range")?);
    kill(pid, Signal::SIGTERM).context("signalling the router")?;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if kill(pid, None).is_err() {
            return Ok(true);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = kill(pid, Signal::SIGKILL);
    let _ = std::fs::remove_file(&pid_file);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(
            parse_go_duration("500ms").unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(parse_go_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert!(parse_go_duration("5").is_err());
        assert!(parse_go_duration("fast").is_err());
    }
}
