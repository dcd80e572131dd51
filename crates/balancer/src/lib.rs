//! # fulcrum-balancer
//!
//! Owns `fulcrum balance`: a load-aware L7 load balancer. Listeners (HTTP/1.1 and HTTP/2,
//! plain or TLS) accept requests; routes map path prefixes to target groups; each group's
//! policy picks a worker using local knowledge (in-flight requests, latency, failures) and the
//! workers' load reports (in-band headers, `/load` polls, or CloudWatch-style averages); the
//! request is forwarded on a pooled connection — HTTP/1.1 or HTTP/2, plain or TLS, as the
//! group says (`transport.rs`, `upstream.rs`, `upstream_h2.rs`) — with timeouts, bounded
//! retries and passive ejection, while active health checks run in the background. An admin listener serves
//! metrics, a status document and a live status page.
//!
//! The request path is `proxy.rs` (accept, route, relay, record) → `forward.rs` (send, retry)
//! → `route.rs` (the decision — rate limit, listener rules of `rules.rs`, prefix routes — and
//! the pick, or a place in the group's line, `line.rs`), whose pick is a `policy.rs` policy.
//! Each proxy thread runs its own runtime; `spread.rs` decides which one serves a new
//! connection. Per-worker state lives in `fleet.rs`; configuration and its validation in
//! `config/`; the per-request access log in `access_log.rs`, client rate limits in
//! `rate_limit.rs`.
//!
//! It does not own the workers themselves (`fulcrum-worker`), the load-report format
//! (`fulcrum-telemetry`), or where anything runs (`fulcrum-deploy`, `fulcrum-aws`).

mod access_log;
mod admin;
mod buffers;
mod client;
mod clock;
pub mod config;
mod discovery;
mod drain;
mod errors;
pub mod extension;
mod fleet;
mod forward;
mod h2;
mod h2_channel;
mod health;
pub mod http1;
mod line;
mod metrics;
mod policy;
mod probe;
mod proxy;
mod proxy_h2;
mod rate_limit;
mod rewrite;
mod route;
mod rules;
mod spread;
mod state;
mod telemetry;
mod tls;
pub mod transport;
mod upstream;
mod upstream_h2;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

pub use config::{
    AccessLogFormat, AccessLogSettings, Config, ConfigError, Policy, QuickConfig, TelemetrySource,
};
pub use extension::{CloudwatchCpu, DiscoveredWorker, Discovery, DiscoveryProvider, Extensions};
pub use policy::cpu_aware_cost;
pub use tls::install_crypto_provider;

use crate::config::TelemetrySource as Source;
use crate::fleet::{Fleet, Worker};
use crate::route::Router;
use crate::state::Shared;

/// How often a discovery provider is asked, unless its configuration says.
const DISCOVERY_INTERVAL: Duration = Duration::from_secs(10);

/// Where the configuration comes from; only a file can be reloaded.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    File(PathBuf),
    Flags(QuickConfig),
}

impl ConfigSource {
    pub fn load(&self) -> Result<Config, ConfigError> {
        match self {
            ConfigSource::File(p) => Config::load(p),
            ConfigSource::Flags(q) => q.build(),
        }
    }
}

struct Balancer {
    shared: Arc<Shared>,
    source: ConfigSource,
    extensions: Extensions,
    generation: AtomicU64,
    /// Tasks of the generation in force: discovery watchers, the AWS CloudWatch reader.
    generation_tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// Checks that every provider a configuration names is plugged in and accepts its settings.
fn check_extensions(config: &Config, ext: &Extensions, file: &str) -> Result<(), ConfigError> {
    let missing = |message: String| ConfigError {
        file: file.to_owned(),
        line: 0,
        column: 0,
        message,
    };
    for g in &config.target_groups {
        if let Some(d) = &g.discovery {
            let name = d.provider.as_str();
            let Some(provider) = ext.discovery.get(name) else {
                return Err(missing(format!(
                    "target group `{}`: discovery provider `{name}` is not available in this build \
                     (the AWS provider needs `--features aws`)",
                    g.name
                )));
            };
            provider
                .create(&d.settings)
                .map_err(|e| missing(format!("target group `{}`: discovery: {e}", g.name)))?;
        }
    }
    if config.sources_in_use().contains(&Source::Cloudwatch)
        && config.telemetry.cloudwatch_source == config::CloudwatchSource::Aws
        && ext.cloudwatch.is_none()
    {
        return Err(missing(
            "telemetry.cloudwatch_source = \"aws\" needs the AWS provider (`--features aws`)"
                .into(),
        ));
    }
    Ok(())
}

impl Balancer {
    /// Makes `config` the one in force: a new router generation, worker tasks to match, and
    /// workers no longer named drained then forgotten.
    fn install(self: &Arc<Self>, config: Config) {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let router = Router::build(Arc::new(config), &self.shared.fleet, generation);
        // A group that keeps its discovery source keeps what discovery found: its watcher
        // restarts below and would re-read the same list, but until it has, the new group
        // would have none of them — requests in between would find no worker, and
        // `sync_workers` would start draining (and could forget) every discovered worker.
        let old = self.shared.router.load_full();
        for group in &router.groups {
            if let Some(before) = old.group(&group.name).filter(|b| b.same_discovery(group)) {
                group.set_discovered(before.discovered());
            }
        }
        self.shared.router.store(Arc::new(router));
        self.shared.metrics.config_generation.set(generation as i64);
        self.restart_generation_tasks();
        self.sync_workers();
    }

    fn restart_generation_tasks(self: &Arc<Self>) {
        let mut tasks = self.generation_tasks.lock().expect("never poisoned");
        for t in tasks.drain(..) {
            t.abort();
        }
        let router = self.shared.router.load_full();
        for group in &router.groups {
            let apply = {
                let (this, group) = (self.clone(), group.clone());
                move |found: Vec<DiscoveredWorker>| {
                    let workers = found
                        .iter()
                        .map(|d| {
                            let (w, _) = this
                                .shared
                                .fleet
                                .get_or_add(d.addr, group.settings.max_in_flight_per_worker);
                            if let (Some(id), None) = (&d.instance_id, w.identity()) {
                                w.note_identity(id.as_bytes(), None);
                            }
                            w
                        })
                        .collect();
                    group.set_discovered(workers);
                    this.sync_workers();
                }
            };
            if let Some(path) = group.settings.discovery_file.clone() {
                let apply = apply.clone();
                tasks.push(discovery::watch_file(
                    path,
                    Duration::from_millis(500),
                    move |addrs| {
                        apply(
                            addrs
                                .into_iter()
                                .map(|a| DiscoveredWorker {
                                    addr: a.0,
                                    instance_id: None,
                                })
                                .collect(),
                        )
                    },
                ));
            }
            if let Some(d) = &group.settings.discovery {
                let name = d.provider.as_str();
                let interval = d.interval.unwrap_or(DISCOVERY_INTERVAL);
                // Checked at load: the provider exists and accepts these settings.
                let found = self
                    .extensions
                    .discovery
                    .get(name)
                    .and_then(|p| p.create(&d.settings).ok());
                if let Some(found) = found {
                    tasks.push(discovery::poll_provider(
                        found,
                        interval,
                        group.name.clone(),
                        apply,
                    ));
                }
            }
        }
        let config = &router.config;
        if config.sources_in_use().contains(&Source::Cloudwatch)
            && config.telemetry.cloudwatch_source == config::CloudwatchSource::Aws
        {
            if let Some(cw) = self.extensions.cloudwatch.clone() {
                tasks.push(telemetry::spawn_cloudwatch_aws(
                    self.shared.router.clone(),
                    cw,
                ));
            }
        }
    }

    /// Starts background tasks for workers that lack this generation's, and drains workers no
    /// group names any more: no new picks, in-flight requests finish, then they are forgotten.
    fn sync_workers(self: &Arc<Self>) {
        let router = self.shared.router.load_full();
        let config = &router.config;
        let referenced = router.workers();
        for w in &referenced {
            w.set_draining(false);
            if w.task_generation() == router.generation {
                continue;
            }
            w.stop_tasks();
            let group = router
                .groups
                .iter()
                .find(|g| g.workers().iter().any(|x| x.addr == w.addr))
                .cloned();
            let health = group
                .as_ref()
                .map(|g| g.settings.health.clone())
                .unwrap_or_default();
            let transport = group
                .as_ref()
                .map(|g| g.settings.transport.clone())
                .unwrap_or_default();
            w.set_transport(&transport);
            let on_refused = {
                let (shared, worker) = (self.shared.clone(), w.clone());
                move || {
                    if let Some(group) = &group {
                        forward::eject_refused(&shared, group, &worker);
                    }
                }
            };
            w.add_task(health::spawn(
                w.clone(),
                health,
                transport.clone(),
                on_refused,
            ));
            for source in config.sources_in_use() {
                match source {
                    Source::Inband => {}
                    Source::Poll => w.add_task(telemetry::spawn_poll(
                        w.clone(),
                        config.telemetry.poll_interval,
                        transport.clone(),
                    )),
                    // Real CloudWatch is read by one task for all workers (see above).
                    Source::Cloudwatch
                        if config.telemetry.cloudwatch_source == config::CloudwatchSource::Aws => {}
                    Source::Cloudwatch => w.add_task(telemetry::spawn_cloudwatch_emulation(
                        w.clone(),
                        config.telemetry.cloudwatch_period,
                        transport.clone(),
                    )),
                }
            }
            w.set_task_generation(router.generation);
        }
        for w in self.shared.fleet.all() {
            if referenced.iter().any(|r| r.addr == w.addr) || w.is_draining() {
                continue;
            }
            tracing::info!(worker = %w.addr, in_flight = w.in_flight(), "worker removed; draining");
            w.set_draining(true);
            let this = self.clone();
            let limit = config.shutdown_timeout;
            tokio::spawn(async move { this.finish_drain(w, limit).await });
        }
    }

    async fn finish_drain(&self, w: Arc<Worker>, limit: Duration) {
        let deadline = Instant::now() + limit;
        while w.in_flight() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if w.is_draining() {
            self.shared.fleet.remove(w.addr);
            tracing::info!(worker = %w.addr, "worker drained and removed");
        }
    }

    /// Re-reads the configuration; an invalid one is logged and the old one kept.
    fn reload(self: &Arc<Self>) {
        let ConfigSource::File(path) = &self.source else {
            tracing::warn!("SIGHUP: the configuration came from flags; nothing to reload");
            return;
        };
        match Config::load(path).and_then(|c| {
            check_extensions(&c, &self.extensions, &path.display().to_string())?;
            Ok(c)
        }) {
            Ok(new) => {
                let old = self.shared.router.load().config.clone();
                if new.listeners != old.listeners
                    || new.admin != old.admin
                    || new.threads != old.threads
                {
                    tracing::warn!(
                        "listener, admin and thread changes take effect only after a restart"
                    );
                }
                self.install(new);
                self.shared
                    .metrics
                    .config_reloads
                    .get_or_create(&metrics::ReloadLabels { result: "ok" })
                    .inc();
                tracing::info!(file = %path.display(), generation = self.generation.load(Ordering::Relaxed), "configuration reloaded");
            }
            Err(e) => {
                self.shared
                    .metrics
                    .config_reloads
                    .get_or_create(&metrics::ReloadLabels { result: "rejected" })
                    .inc();
                tracing::error!(error = %e, "configuration rejected; keeping the one in force");
            }
        }
        // Every SIGHUP reopens the access log, whatever became of the reload: logrotate has
        // moved the file and signals so that lines go to a new one.
        let log = &self.shared.router.load().config.access_log;
        if log.enabled {
            self.shared.access_log.reopen(&log.path);
        }
    }
}

/// The access log's writer, on the configured file (stdout while off, so that turning it on in a
/// reload has a writer to send to and an off log creates no file).
fn start_access_log(
    settings: &config::AccessLogSettings,
    metrics: &metrics::Metrics,
) -> anyhow::Result<Arc<access_log::AccessLog>> {
    let path = if settings.enabled {
        settings.path.as_path()
    } else {
        std::path::Path::new("-")
    };
    let log = access_log::AccessLog::start(
        path,
        metrics.access_log_lines.clone(),
        metrics.access_log_dropped.clone(),
    )
    .with_context(|| format!("cannot open the access log {}", path.display()))?;
    Ok(Arc::new(log))
}

/// A balancer whose sockets are bound, ready to serve.
pub struct BoundBalancer {
    balancer: Arc<Balancer>,
    /// Runtime threads serving client connections (this one included).
    threads: usize,
    listeners: Vec<(TcpListener, Option<TlsAcceptor>)>,
    admin: Option<TcpListener>,
    /// Installed at bind, before any address is announced: a SIGHUP sent as soon as the
    /// balancer says it listens must reload it, not kill it (the default action).
    hangup: tokio::signal::unix::Signal,
}

impl BoundBalancer {
    /// Validates the configuration and binds every listener; nothing is served yet, and any
    /// failure leaves nothing behind.
    pub async fn bind(
        source: ConfigSource,
        extensions: Extensions,
    ) -> anyhow::Result<BoundBalancer> {
        install_crypto_provider();
        let config = source.load()?;
        let file = match &source {
            ConfigSource::File(p) => p.display().to_string(),
            ConfigSource::Flags(_) => "command line".into(),
        };
        check_extensions(&config, &extensions, &file)?;
        let mut listeners = Vec::new();
        for l in &config.listeners {
            let tls = l.tls.as_ref().map(tls::acceptor).transpose()?;
            let listener = listen(l.address, config.limits.max_connections)
                .with_context(|| format!("cannot listen on {}", l.address))?;
            listeners.push((listener, tls));
        }
        let admin = match config.admin {
            Some(a) => Some(
                TcpListener::bind(a)
                    .await
                    .with_context(|| format!("cannot listen on {a} (admin)"))?,
            ),
            None => None,
        };
        let fleet = Fleet::default();
        let router = Arc::new(ArcSwap::from_pointee(Router::build(
            Arc::new(config),
            &fleet,
            0,
        )));
        let metrics = metrics::Metrics::new(router.clone());
        let access_log = start_access_log(&router.load().config.access_log, &metrics)?;
        let balancer = Arc::new(Balancer {
            shared: Arc::new(Shared::new(router, fleet, metrics, access_log)),
            source,
            extensions,
            generation: AtomicU64::new(0),
            generation_tasks: Mutex::new(Vec::new()),
        });
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("cannot install the SIGHUP handler")?;
        Ok(BoundBalancer {
            balancer,
            threads: 1,
            listeners,
            admin,
            hangup,
        })
    }

    /// Bound listener addresses, with whether each is TLS.
    pub fn addresses(&self) -> Vec<(SocketAddr, bool)> {
        self.listeners
            .iter()
            .map(|(l, tls)| (l.local_addr().expect("bound"), tls.is_some()))
            .collect()
    }

    pub fn admin_address(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|a| a.local_addr().expect("bound"))
    }

    /// Serves until `shutdown`; then stops accepting and drains in-flight requests (bounded by
    /// `shutdown_timeout`). SIGHUP reloads a file configuration.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        let BoundBalancer {
            balancer,
            threads,
            listeners,
            admin,
            hangup: mut hup,
        } = self;
        let config = balancer.shared.router.load().config.clone();
        balancer.install((*config).clone());
        let shared = balancer.shared.clone();
        let (drained_tx, drained_rx) = tokio::sync::watch::channel(false);
        let (mut seats, mut inboxes) = spread::Spread::<proxy::Handoff>::over(threads);
        let (others, other_inboxes) = (seats.split_off(1), inboxes.split_off(1));
        let (seat, inbox) = (seats.remove(0), inboxes.remove(0));
        let extra = spawn_proxy_threads(&shared, &listeners, others, other_inboxes, drained_rx)?;
        let mut accepts = vec![tokio::spawn(proxy::take_handoffs(shared.clone(), inbox))];
        for (listener, tls) in listeners {
            accepts.push(tokio::spawn(proxy::accept_loop(
                shared.clone(),
                listener,
                tls,
                seat.clone(),
            )));
        }
        if let Some(admin) = admin {
            let stopping = shared.clone();
            tokio::spawn(admin::serve(shared.clone(), admin, started, async move {
                stopping.drain.stopping().await
            }));
        }

        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = hup.recv() => balancer.reload(),
            }
        }

        drain(&shared, accepts, extra, drained_tx).await;
        Ok(())
    }
}

/// A proxy thread, and the signal that its accept loops have stopped.
type ProxyThread = (
    std::thread::JoinHandle<()>,
    tokio::sync::oneshot::Receiver<()>,
);

/// Thread-per-core, as nginx's worker processes: every extra thread runs its own
/// single-threaded runtime accepting on a duplicate of each listening socket (and taking the
/// connections other threads hand it, `spread.rs`), so a client connection and the worker
/// connections it uses stay on one thread and one reactor. Each keeps driving its connections
/// until `drained` says every one has gone.
fn spawn_proxy_threads(
    shared: &Arc<Shared>,
    listeners: &[(TcpListener, Option<TlsAcceptor>)],
    seats: Vec<spread::Seat<proxy::Handoff>>,
    inboxes: Vec<spread::Inbox<proxy::Handoff>>,
    drained: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Vec<ProxyThread>> {
    let mut extra = Vec::new();
    for (seat, inbox) in seats.into_iter().zip(inboxes) {
        let index = seat.index;
        let mut dups = Vec::new();
        for (listener, tls) in listeners {
            dups.push((duplicate(listener)?, tls.clone()));
        }
        let (shared, mut drained) = (shared.clone(), drained.clone());
        let (accepting_tx, accepting_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("fulcrum-proxy-{index}"))
            .spawn(move || {
                spread::set_this_thread(index);
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a proxy runtime");
                rt.block_on(async move {
                    let mut loops = vec![tokio::spawn(proxy::take_handoffs(shared.clone(), inbox))];
                    for (l, tls) in dups {
                        let l = TcpListener::from_std(l).expect("a duplicated listener registers");
                        let seat = seat.clone();
                        loops.push(tokio::spawn(proxy::accept_loop(
                            shared.clone(),
                            l,
                            tls,
                            seat,
                        )));
                    }
                    for l in loops {
                        let _ = l.await;
                    }
                    let _ = accepting_tx.send(());
                    let _ = drained.wait_for(|d| *d).await;
                    shared.access_log.flush_local();
                });
            })
            .context("cannot start a proxy thread")?;
        extra.push((thread, accepting_rx));
    }
    Ok(extra)
}

/// Stops accepting, waits (bounded by `shutdown_timeout`) for every connection to finish,
/// then lets the proxy threads go.
async fn drain(
    shared: &Arc<Shared>,
    accepts: Vec<tokio::task::JoinHandle<()>>,
    extra: Vec<ProxyThread>,
    drained_tx: tokio::sync::watch::Sender<bool>,
) {
    tracing::info!("shutting down: no new connections; draining in-flight requests");
    shared.drain.begin();
    for a in accepts {
        let _ = a.await;
    }
    let mut threads = Vec::new();
    for (thread, accepting) in extra {
        let _ = accepting.await;
        threads.push(thread);
    }
    let limit = shared.router.load().config.shutdown_timeout;
    tokio::select! {
        _ = shared.drain.drained() => tracing::info!("drained; exiting"),
        _ = tokio::time::sleep(limit) => tracing::warn!(?limit, "drain timed out; exiting with requests in flight"),
    }
    let _ = drained_tx.send(true);
    // This thread's lines; the proxy threads hand theirs over as they end.
    shared.access_log.flush_local();
    let log = shared.access_log.clone();
    tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
        // The last requests' lines, unless the log's destination is stuck.
        log.flush(Duration::from_secs(2));
    })
    .await
    .ok();
}

/// Another handle on the same listening socket, for another thread's runtime to accept on.
fn duplicate(listener: &TcpListener) -> anyhow::Result<std::net::TcpListener> {
    use std::os::fd::AsFd as _;
    let fd = listener
        .as_fd()
        .try_clone_to_owned()
        .context("cannot duplicate a listening socket")?;
    let l = std::net::TcpListener::from(fd);
    l.set_nonblocking(true)?;
    Ok(l)
}

/// A listening socket whose accept queue holds up to `max_connections` pending connections
/// (the kernel caps it at `net.core.somaxconn`). `TcpListener::bind` uses 128, like the
/// standard library: a burst of a few hundred connects on a busy machine overflows it, and
/// the kernel then drops the handshakes' last ACKs, so clients that believe they are connected
/// wait for SYN-ACK retransmissions (1 s, 3 s, 7 s...) before the balancer even sees them.
fn listen(addr: SocketAddr, max_connections: usize) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As `TcpListener::bind` does: a restart may bind while old connections sit in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(max_connections.clamp(128, 65_535) as u32)
}

/// Runs `fulcrum balance` to completion: binds, announces its addresses on stdout, serves until
/// SIGTERM or SIGINT, drains, returns.
pub fn run(
    source: ConfigSource,
    threads: Option<usize>,
    extensions: Extensions,
) -> anyhow::Result<()> {
    let config = source.load()?;
    let threads = threads
        .or(config.threads)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    // The main thread's runtime also runs the admin listener and every background task; the
    // other threads only serve client connections.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(async {
        let mut bound = BoundBalancer::bind(source, extensions).await?;
        bound.threads = threads;
        // Handlers first, addresses second: whoever reads the addresses may signal at once.
        let shutdown = termination();
        for (addr, tls) in bound.addresses() {
            println!(
                "fulcrum balance listening on {}://{addr}",
                if tls { "https" } else { "http" }
            );
        }
        if let Some(a) = bound.admin_address() {
            println!("fulcrum balance admin on http://{a}");
        }
        bound.serve(shutdown).await
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// Installs the SIGTERM and SIGINT handlers now; the future resolves on the first of either.
fn termination() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    }
}
