//! The worker's Prometheus metrics.

use std::sync::atomic::AtomicU64;

use fulcrum_telemetry::LoadTracker;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteStatus {
    pub route: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: &'static str,
}

type HistogramFamily = Family<RouteLabel, Histogram, fn() -> Histogram>;

pub struct WorkerMetrics {
    registry: Registry,
    requests: Family<RouteStatus, Counter>,
    latency: HistogramFamily,
    cpu_utilization: Gauge<f64, AtomicU64>,
    cpu_cores: Gauge<f64, AtomicU64>,
    in_flight: Gauge,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~1.6 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 15))
}

impl WorkerMetrics {
    pub fn new(instance_id: &str, cluster: u32) -> WorkerMetrics {
        let mut registry = Registry::with_prefix_and_labels(
            "fulcrum_worker",
            [
                ("instance".into(), instance_id.to_owned().into()),
                ("cluster".into(), cluster.to_string().into()),
            ]
            .into_iter(),
        );
        let requests = Family::<RouteStatus, Counter>::default();
        let latency: HistogramFamily = Family::new_with_constructor(latency_histogram);
        let cpu_utilization = Gauge::<f64, AtomicU64>::default();
        let cpu_cores = Gauge::<f64, AtomicU64>::default();
        let in_flight = Gauge::default();
        registry.register(
            "requests",
            "Requests served, by route and status",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request to response headers, by route",
            latency.clone(),
        );
        registry.register(
            "cpu_utilization",
            "CPU used over the sampling window, as a fraction of the CPU allowed",
            cpu_utilization.clone(),
        );
        registry.register(
            "cpu_cores",
            "CPU this worker may use, in cores (its cgroup quota or the machine's cores)",
            cpu_cores.clone(),
        );
        registry.register("in_flight", "Requests in flight", in_flight.clone());
        WorkerMetrics {
            registry,
            requests,
            latency,
            cpu_utilization,
            cpu_cores,
            in_flight,
        }
    }

    pub fn record(&self, route: &'static str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RouteStatus { route, status })
            .inc();
        self.latency
            .get_or_create(&RouteLabel { route })
            .observe(seconds);
    }

    /// Renders the registry, refreshing the gauges from the load tracker first.
    pub fn encode(&self, load: &LoadTracker) -> String {
        self.cpu_utilization.set(load.cpu_utilization());
        self.cpu_cores.set(load.cpu_cores());
        self.in_flight.set(load.in_flight() as i64);
        let mut out = String::with_capacity(4096);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
