//! The balancer's configuration file as a typed value: what `balancer.toml` holds, field for
//! field. The quick flags, the local deployment, the AWS provider and the experiment build one
//! of these as a value and hand it over (or write it with [`BalancerFile::to_toml`] for a
//! process to read); TOML text exists only at the edges. Positions (`Spanned`) let the
//! validator in [`super::Config::from_file`] point at the line and column of a mistake; a value
//! built in code carries empty spans.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

pub use super::rules::{FixedResponse, ForwardSpec, HeaderEdits, Redirect, RuleSpec, WeightedSpec};
use super::{
    default_connect_timeout, default_max_in_flight, default_policy, default_pool_idle,
    default_queue, default_queue_timeout, default_response_timeout, default_source,
    default_when_all_unhealthy, AccessLogFormat, HealthCheck, Limits, OutlierDetection, Policy,
    RetryPolicy, TelemetrySettings, TelemetrySource, Timeouts, WhenAllUnhealthy,
};

/// A whole balancer configuration file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BalancerFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<Spanned<usize>>,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<Spanned<ListenerSpec>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<AdminSpec>,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub telemetry: TelemetrySettings,
    #[serde(default, rename = "route")]
    pub routes: Vec<Spanned<RouteSpec>>,
    #[serde(default, rename = "target_group")]
    pub target_groups: Vec<Spanned<TargetGroupSpec>>,
    #[serde(default, rename = "rule", skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Spanned<RuleSpec>>,
    #[serde(default = "default_shutdown", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    #[serde(default)]
    pub access_log: AccessLogSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<Spanned<RateLimitSpec>>,
}

/// `[rate_limit]`: a token bucket per client.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    pub requests_per_second: f64,
    pub burst: u32,
    /// `source` (default) or `header:NAME`.
    #[serde(default = "default_rate_key")]
    pub key: String,
    #[serde(default = "default_max_clients")]
    pub max_clients: usize,
}

fn default_rate_key() -> String {
    "source".into()
}

fn default_max_clients() -> usize {
    100_000
}

/// `[access_log]`: one line per request, on unless `enabled = false`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLogSpec {
    pub enabled: bool,
    pub format: AccessLogFormat,
    /// A file, or `-` (the default) for stdout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<Spanned<String>>,
}

impl Default for AccessLogSpec {
    fn default() -> Self {
        AccessLogSpec {
            enabled: true,
            format: AccessLogFormat::Json,
            path: None,
        }
    }
}

fn default_shutdown() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSpec {
    pub address: Spanned<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub self_signed: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSpec {
    pub address: Spanned<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    pub prefix: Spanned<String>,
    pub target_group: Spanned<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
}

/// Where a target group's discovered workers come from: a provider plugged in by an
/// extension (the AWS provider's `ec2`), polled every `interval`, with settings only the
/// provider reads.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct DiscoverySpec {
    pub provider: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub interval: Option<Duration>,
    #[serde(flatten)]
    pub settings: toml::Table,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TargetGroupSpec {
    pub name: Spanned<String>,
    #[serde(default = "default_policy")]
    pub policy: Policy,
    #[serde(default = "default_source")]
    pub telemetry: TelemetrySource,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workers: Vec<Spanned<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<Spanned<DiscoverySpec>>,
    #[serde(default)]
    pub health: HealthCheck,
    #[serde(default)]
    pub outlier: OutlierDetection,
    #[serde(default)]
    pub retry: RetryPolicy,
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight_per_worker: usize,
    #[serde(default = "default_queue")]
    pub queue: usize,
    #[serde(default = "default_queue_timeout", with = "humantime_serde")]
    pub queue_timeout: Duration,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(default = "default_response_timeout", with = "humantime_serde")]
    pub response_timeout: Duration,
    #[serde(default = "default_response_timeout", with = "humantime_serde")]
    pub worker_body_idle: Duration,
    #[serde(default = "default_pool_idle", with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    #[serde(default = "default_when_all_unhealthy")]
    pub when_all_unhealthy: WhenAllUnhealthy,
    /// Per-worker weights by address (1 when not listed).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub weights: std::collections::BTreeMap<String, u32>,
    /// A new or returning worker's weight ramps up linearly over this long.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Duration::is_zero"
    )]
    pub slow_start: Duration,
    /// What `consistent-hash` hashes: `source` (default), `header:NAME` or `cookie:NAME`.
    #[serde(default = "default_hash_key", skip_serializing_if = "is_source")]
    pub hash_key: String,
    /// Sticky sessions by cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stickiness: Option<Spanned<StickinessSpec>>,
    /// The HTTP version spoken to the workers: `http1` (default) or `h2`.
    #[serde(default, skip_serializing_if = "is_http1")]
    pub protocol: crate::transport::WorkerProtocol,
    /// TLS to the workers (also on when they are written `https://`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Spanned<WorkerTlsSpec>>,
}

fn is_http1(p: &crate::transport::WorkerProtocol) -> bool {
    *p == crate::transport::WorkerProtocol::Http1
}

/// `[target_group.tls]`: how to trust the workers and what to show them.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerTlsSpec {
    /// PEM file of the CAs to trust; the system's roots when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// SNI and the name checked in the certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
}

fn default_hash_key() -> String {
    "source".into()
}

fn is_source(key: &String) -> bool {
    key == "source"
}

/// `stickiness = { cookie = "NAME", duration = "1h" }` (a cookie of the balancer's) or
/// `{ app_cookie = "NAME", duration = "1h" }` (stick once the application sets its own).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StickinessSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_cookie: Option<String>,
    #[serde(default = "default_sticky_duration", with = "humantime_serde")]
    pub duration: Duration,
}

fn default_sticky_duration() -> Duration {
    Duration::from_secs(24 * 3600)
}

/// A value with no position: built in code, not read from a file.
pub fn unplaced<T>(value: T) -> Spanned<T> {
    Spanned::new(0..0, value)
}

impl BalancerFile {
    /// A file with no listener, route or group yet, every setting at its default.
    pub fn new() -> BalancerFile {
        BalancerFile {
            threads: None,
            listeners: Vec::new(),
            admin: None,
            timeouts: Timeouts::default(),
            limits: Limits::default(),
            telemetry: TelemetrySettings::default(),
            routes: Vec::new(),
            target_groups: Vec::new(),
            rules: Vec::new(),
            shutdown_timeout: default_shutdown(),
            access_log: AccessLogSpec::default(),
            rate_limit: None,
        }
    }

    pub fn listen(&mut self, address: impl Into<String>, tls: Option<TlsSpec>) -> &mut Self {
        self.listeners.push(unplaced(ListenerSpec {
            address: unplaced(address.into()),
            tls,
        }));
        self
    }

    pub fn admin(&mut self, address: impl Into<String>) -> &mut Self {
        self.admin = Some(AdminSpec {
            address: unplaced(address.into()),
        });
        self
    }

    /// A route from `prefix` to the target group named `group`.
    pub fn route(&mut self, prefix: impl Into<String>, group: impl Into<String>) -> &mut Self {
        self.routes.push(unplaced(RouteSpec {
            prefix: unplaced(prefix.into()),
            target_group: unplaced(group.into()),
            max_body_bytes: None,
        }));
        self
    }

    pub fn group(&mut self, group: TargetGroupSpec) -> &mut Self {
        self.target_groups.push(unplaced(group));
        self
    }

    /// The TOML text of this file, for a process to read.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a configuration value always serializes")
    }
}

impl Default for BalancerFile {
    fn default() -> BalancerFile {
        BalancerFile::new()
    }
}

impl TargetGroupSpec {
    /// A group named `name` with every setting at its default and no worker yet.
    pub fn new(name: impl Into<String>) -> TargetGroupSpec {
        TargetGroupSpec {
            name: unplaced(name.into()),
            policy: default_policy(),
            telemetry: default_source(),
            workers: Vec::new(),
            discovery_file: None,
            discovery: None,
            health: HealthCheck::default(),
            outlier: OutlierDetection::default(),
            retry: RetryPolicy::default(),
            max_in_flight_per_worker: default_max_in_flight(),
            queue: default_queue(),
            queue_timeout: default_queue_timeout(),
            connect_timeout: default_connect_timeout(),
            response_timeout: default_response_timeout(),
            worker_body_idle: default_response_timeout(),
            pool_idle_timeout: default_pool_idle(),
            when_all_unhealthy: default_when_all_unhealthy(),
            weights: Default::default(),
            slow_start: Duration::ZERO,
            hash_key: default_hash_key(),
            stickiness: None,
            protocol: Default::default(),
            tls: None,
        }
    }

    pub fn workers<S: Into<String>>(mut self, workers: impl IntoIterator<Item = S>) -> Self {
        self.workers = workers.into_iter().map(|w| unplaced(w.into())).collect();
        self
    }
}
