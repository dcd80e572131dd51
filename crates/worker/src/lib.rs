//! # fulcrum-worker
//!
//! Owns the demo service that runs on every instance of every cluster (the seed's FastAPI app,
//! done properly): its routes (`/`, `/clusterN`, `/health`, `/load`, `/metrics`), the real CPU
//! work per request (measured against the thread CPU clock), the instance's identity, and its
//! graceful drain.
//!
//! It does not own how CPU is measured or how load is reported (that vocabulary is
//! `fulcrum-telemetry`'s), nor where workers run or with what quota (`fulcrum-deploy`).

mod instance;
mod metrics;
mod service;
mod work;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use fulcrum_telemetry::{CpuMeter, LoadTracker};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

pub use instance::{generated_id, IdOrigin, IMDS_ENDPOINT_ENV};
pub use service::{CLUSTER_HEADER, INSTANCE_HEADER};
pub use work::CpuWork;

/// Everything `fulcrum worker` can be told.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub cluster: u32,
    pub bind: IpAddr,
    /// 0 picks a free port; the bound address is reported by [`BoundWorker::local_addr`].
    pub port: u16,
    pub instance_id: Option<String>,
    /// CPU work per request on `/` and `/clusterN`, in microseconds of CPU time.
    pub work_us: u64,
    /// Upper bound for `?work_us=`; larger asks get a 400.
    pub max_work_us: u64,
    /// Runtime threads; `None` = the cores this process may use.
    pub threads: Option<usize>,
    /// How often the load sampler reads the CPU counters.
    pub sample_every: Duration,
    /// The window `/load` and the in-band report average over.
    pub load_window: Duration,
    /// After SIGTERM, keep accepting this long with `/health` at 503, so balancers notice.
    pub drain_delay: Duration,
    /// After that, wait at most this long for in-flight requests.
    pub drain_timeout: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            cluster: 1,
            bind: IpAddr::from([127, 0, 0, 1]),
            port: 0,
            instance_id: None,
            work_us: 1000,
            max_work_us: 100_000,
            threads: None,
            sample_every: Duration::from_millis(100),
            load_window: Duration::from_millis(1000),
            drain_delay: Duration::ZERO,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// A worker whose socket is bound and whose work is calibrated, ready to serve.
pub struct BoundWorker {
    listener: TcpListener,
    worker: Arc<service::Worker>,
    config: WorkerConfig,
}

impl BoundWorker {
    /// Binds the listener first (so a port in use fails fast), then resolves the instance id
    /// and calibrates the CPU work.
    pub async fn bind(config: WorkerConfig) -> anyhow::Result<BoundWorker> {
        let addr = SocketAddr::new(config.bind, config.port);
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr()?;
        let (instance_id, origin) =
            instance::resolve(config.instance_id.clone(), config.cluster, local.port()).await;
        let meter = CpuMeter::detect();
        let parallel = meter.cores().ceil() as usize;
        let work = CpuWork::calibrate(parallel);
        tracing::info!(
            instance_id,
            id_origin = ?origin,
            cluster = config.cluster,
            cpu_cores = meter.cores(),
            cpu_capacity = ?meter.origin(),
            work_us = config.work_us,
            rounds_per_us = work.rounds_per_us(),
            "worker ready"
        );
        let load = LoadTracker::start(meter, config.sample_every, config.load_window);
        let worker = Arc::new(service::Worker::new(
            instance_id,
            config.cluster,
            config.work_us,
            config.max_work_us,
            work,
            load,
        ));
        Ok(BoundWorker {
            listener,
            worker,
            config,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn instance_id(&self) -> &str {
        &self.worker.instance_id
    }

    /// Serves until `shutdown` resolves, then drains: `/health` turns 503, accepting stops
    /// after the drain delay, and in-flight requests get up to the drain timeout to finish.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let BoundWorker {
            listener,
            worker,
            config,
        } = self;
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let mut http = hyper::server::conn::http1::Builder::new();
        http.keep_alive(true);
        let stop_accepting = {
            let worker = worker.clone();
            async move {
                shutdown.await;
                worker.draining.store(true, Ordering::Relaxed);
                tracing::info!(delay = ?config.drain_delay, "draining");
                tokio::time::sleep(config.drain_delay).await;
            }
        };
        tokio::pin!(stop_accepting);
        loop {
            tokio::select! {
                biased;
                _ = &mut stop_accepting => break,
                accepted = listener.accept() => {
                    let stream = match accepted {
                        Ok((stream, _)) => stream,
                        Err(e) => {
                            // Out of descriptors and the like: back off instead of spinning.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let w = worker.clone();
                    let svc = hyper::service::service_fn(move |req| service::handle(w.clone(), req));
                    let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), svc));
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                    });
                }
            }
        }
        drop(listener);
        tokio::select! {
            _ = graceful.shutdown() => tracing::info!("drained; exiting"),
            _ = tokio::time::sleep(config.drain_timeout) => {
                tracing::warn!(timeout = ?config.drain_timeout, "drain timed out; exiting with requests in flight");
            }
        }
        Ok(())
    }
}

/// Runs `fulcrum worker` to completion: binds, announces the address on stdout, serves until
/// SIGTERM or SIGINT, drains, returns.
pub fn run(config: WorkerConfig) -> anyhow::Result<()> {
    let threads = config
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let runtime = build_runtime(threads)?;
    let result = runtime.block_on(async {
        let bound = BoundWorker::bind(config).await?;
        println!("fulcrum worker listening on http://{}", bound.local_addr());
        bound.serve(termination()).await
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

fn build_runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Resolves on the first SIGTERM or SIGINT.
pub async fn termination() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
