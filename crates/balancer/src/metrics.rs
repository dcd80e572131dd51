//! The balancer's Prometheus metrics: counters updated on the request path, and per-worker
//! state (in-flight, health, telemetry and its age, latency estimate, pool) read at scrape time.

use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::config::TelemetrySource;
use crate::fleet::{now_us, Health};
use crate::route::Router;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: Arc<String>,
    pub target_group: Arc<String>,
    pub worker: Arc<String>,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: Arc<String>,
    pub target_group: Arc<String>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    pub target_group: Arc<String>,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabels {
    pub target_group: Arc<String>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabels {
    pub worker: Arc<String>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    worker: Arc<String>,
    source: &'static str,
}

type LatencyFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: LatencyFamily,
    pub errors: Family<ErrorLabels, Counter>,
    pub client_protocol_errors: Family<ErrorLabels, Counter>,
    pub retries: Family<RetryLabels, Counter>,
    pub retries_denied: Family<GroupLabels, Counter>,
    pub ejections: Family<WorkerLabels, Counter>,
    pub connections_open: Gauge,
    pub connections_accepted: Counter,
    pub connections_rejected: Counter,
    pub config_reloads: Family<ReloadLabels, Counter>,
    pub config_generation: Gauge<i64>,
    pub tunnels_opened: Counter,
    pub tunnels_open: Gauge,
    pub tunnel_bytes: Counter,
    pub abandoned: Family<ErrorLabels, Counter>,
    pub access_log_lines: Counter,
    pub access_log_dropped: Counter,
    pub rules_matched: Family<RuleLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    pub rule: Arc<String>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub result: &'static str,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~13 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

impl Metrics {
    pub fn new(router: Arc<ArcSwap<Router>>) -> Metrics {
        let mut metrics = Metrics {
            registry: Registry::with_prefix("fulcrum_balancer"),
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            errors: Family::default(),
            client_protocol_errors: Family::default(),
            retries: Family::default(),
            retries_denied: Family::default(),
            ejections: Family::default(),
            connections_open: Gauge::default(),
            connections_accepted: Counter::default(),
            connections_rejected: Counter::default(),
            config_reloads: Family::default(),
            config_generation: Gauge::default(),
            tunnels_opened: Counter::default(),
            tunnels_open: Gauge::default(),
            tunnel_bytes: Counter::default(),
            abandoned: Family::default(),
            access_log_lines: Counter::default(),
            access_log_dropped: Counter::default(),
            rules_matched: Family::default(),
        };
        let mut registry = std::mem::take(&mut metrics.registry);
        metrics.register_requests(&mut registry);
        metrics.register_connections(&mut registry);
        metrics.register_config(&mut registry);
        registry.register_collector(Box::new(FleetCollector { router }));
        metrics.registry = registry;
        metrics
    }

    fn register_requests(&self, registry: &mut Registry) {
        registry.register(
            "requests",
            "Proxied requests by route, target group, worker and the worker's status code",
            self.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from a request's arrival to its response headers, by route",
            self.latency.clone(),
        );
        registry.register(
            "errors",
            "Error answers given by the balancer itself, by error code",
            self.errors.clone(),
        );
        registry.register(
            "client_protocol_errors",
            "Client connections ended before a request reached a route, by error: the codec's \
             rejections (bad_request, ambiguous_length, bad_host, ... answered with JSON), \
             header_timeout (closed: no complete request head in time), tls_handshake, h2 \
             (an HTTP/2 protocol error)",
            self.client_protocol_errors.clone(),
        );
        registry.register(
            "abandoned",
            "Requests given up after the worker answered, by whose fault: client_gone, \
             client_write_idle, client_body_idle, worker_body_idle, worker_body_error",
            self.abandoned.clone(),
        );
        registry.register(
            "retries",
            "Retries by target group and reason",
            self.retries.clone(),
        );
        registry.register(
            "retries_denied",
            "Retries refused because the target group's retry budget was spent",
            self.retries_denied.clone(),
        );
        registry.register(
            "ejections",
            "Passive ejections by worker",
            self.ejections.clone(),
        );
    }

    fn register_connections(&self, registry: &mut Registry) {
        registry.register(
            "connections_open",
            "Client connections open",
            self.connections_open.clone(),
        );
        registry.register(
            "connections_accepted",
            "Client connections accepted",
            self.connections_accepted.clone(),
        );
        registry.register(
            "connections_rejected",
            "Client connections closed at once because max_connections was reached",
            self.connections_rejected.clone(),
        );
        registry.register(
            "tunnels_opened",
            "Upgraded connections (WebSocket and other 101 answers) tunnelled to a worker",
            self.tunnels_opened.clone(),
        );
        registry.register(
            "tunnels_open",
            "Tunnels open now",
            self.tunnels_open.clone(),
        );
        registry.register(
            "tunnel_bytes",
            "Bytes carried by tunnels, both directions",
            self.tunnel_bytes.clone(),
        );
    }

    fn register_config(&self, registry: &mut Registry) {
        registry.register(
            "config_reloads",
            "Configuration reloads by result",
            self.config_reloads.clone(),
        );
        registry.register(
            "config_generation",
            "Generation of the configuration in use",
            self.config_generation.clone(),
        );
        registry.register(
            "rules_matched",
            "Requests each listener rule matched (its `name`, `rule-PRIORITY` without one)",
            self.rules_matched.clone(),
        );
        registry.register(
            "access_log_lines",
            "Access log lines written",
            self.access_log_lines.clone(),
        );
        registry.register(
            "access_log_dropped",
            "Access log lines dropped because the writer fell behind (requests never wait)",
            self.access_log_dropped.clone(),
        );
    }

    pub fn rule_matched(&self, rule: &Arc<String>) {
        self.rules_matched
            .get_or_create(&RuleLabels { rule: rule.clone() })
            .inc();
    }

    pub fn error(&self, error: &'static str) {
        self.errors.get_or_create(&ErrorLabels { error }).inc();
    }

    pub fn client_protocol_error(&self, error: &'static str) {
        self.client_protocol_errors
            .get_or_create(&ErrorLabels { error })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Reads per-worker state at scrape time, so the request path pays nothing for it.
struct FleetCollector {
    router: Arc<ArcSwap<Router>>,
}

impl std::fmt::Debug for FleetCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FleetCollector")
    }
}

impl Collector for FleetCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let router = self.router.load();
        let workers = router.workers();
        let now = now_us();
        encode_worker_gauges(&mut encoder, &workers, now)?;
        encode_picks_and_latency(&mut encoder, &workers, now)?;
        encode_readings(&mut encoder, &workers, now)?;
        encode_queues(&mut encoder, &router)
    }
}

type Workers = [Arc<crate::fleet::Worker>];
/// A figure each worker has: its metric's name, help, and how to read it.
type WorkerGauge<'a> = (&'a str, &'a str, &'a dyn Fn(&crate::fleet::Worker) -> i64);
/// A figure of each telemetry reading: name, help, and how to read it.
type ReadingGauge = (
    &'static str,
    &'static str,
    fn(&crate::fleet::Reading) -> f64,
);

fn worker_label(w: &crate::fleet::Worker) -> WorkerLabels {
    WorkerLabels {
        worker: w.label.clone(),
    }
}

/// One gauge per worker for each of its state figures.
fn encode_worker_gauges(
    encoder: &mut DescriptorEncoder,
    workers: &Workers,
    now: u64,
) -> Result<(), std::fmt::Error> {
    let gauges: [WorkerGauge; 6] = [
        (
            "worker_in_flight",
            "Requests in flight to each worker",
            &|w| w.in_flight() as i64,
        ),
        (
            "worker_healthy",
            "1 if the worker is eligible (healthy or not yet checked, not ejected, not draining)",
            &|w| w.is_available(now) as i64,
        ),
        (
            "worker_health_check_failing",
            "1 if active health checks mark the worker unhealthy",
            &|w| (w.health() == Health::Unhealthy) as i64,
        ),
        (
            "worker_ejected",
            "1 while the worker is passively ejected",
            &|w| w.is_ejected(now) as i64,
        ),
        (
            "worker_pool_connections",
            "Open connections to each worker",
            &|w| w.pool.open() as i64,
        ),
        (
            "worker_h2_connection_open",
            "1 while an HTTP/2 connection to the worker is open (target groups with protocol h2)",
            &|w| w.h2.is_open() as i64,
        ),
    ];
    for (name, help, value) in gauges {
        let mut fam = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for w in workers {
            ConstGauge::new(value(w)).encode(fam.encode_family(&worker_label(w))?)?;
        }
    }
    Ok(())
}

fn encode_picks_and_latency(
    encoder: &mut DescriptorEncoder,
    workers: &Workers,
    now: u64,
) -> Result<(), std::fmt::Error> {
    let mut picks = encoder.encode_descriptor(
        "worker_picks",
        "Times each worker was chosen by a policy (retries included)",
        None,
        MetricType::Counter,
    )?;
    for w in workers {
        ConstCounter::new(w.picks()).encode(picks.encode_family(&worker_label(w))?)?;
    }
    let mut ewma = encoder.encode_descriptor(
        "worker_latency_ewma_seconds",
        "Peak-EWMA latency estimate of each worker",
        None,
        MetricType::Gauge,
    )?;
    for w in workers {
        ConstGauge::new(w.ewma_us(now) / 1e6).encode(ewma.encode_family(&worker_label(w))?)?;
    }
    Ok(())
}

/// Each worker's latest reading from every telemetry source: its CPU, and how old it is.
fn encode_readings(
    encoder: &mut DescriptorEncoder,
    workers: &Workers,
    now: u64,
) -> Result<(), std::fmt::Error> {
    let figures: [ReadingGauge; 2] = [
        (
            "worker_cpu_utilization",
            "Latest CPU utilization reading of each worker, by telemetry source",
            |r| r.cpu_utilization,
        ),
        (
            "worker_telemetry_age_seconds",
            "Age of the latest reading of each worker, by telemetry source",
            |r| r.age.as_secs_f64(),
        ),
    ];
    for (name, help, figure) in figures {
        let mut fam = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for w in workers {
            for source in TelemetrySource::ALL {
                if let Some(r) = w.slot(source).read(now) {
                    let labels = SourceLabels {
                        worker: w.label.clone(),
                        source: source.name(),
                    };
                    ConstGauge::new(figure(&r)).encode(fam.encode_family(&labels)?)?;
                }
            }
        }
    }
    Ok(())
}

fn encode_queues(encoder: &mut DescriptorEncoder, router: &Router) -> Result<(), std::fmt::Error> {
    let mut queued = encoder.encode_descriptor(
        "target_group_queued",
        "Requests waiting for a free worker slot, by target group",
        None,
        MetricType::Gauge,
    )?;
    for g in &router.groups {
        let labels = GroupLabels {
            target_group: g.label.clone(),
        };
        ConstGauge::new(g.queued() as i64).encode(queued.encode_family(&labels)?)?;
    }
    Ok(())
}
