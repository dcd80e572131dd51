//! The balancer's configuration: the TOML schema, the quick command-line form, and validation
//! that points at the file, line and column of every mistake.
//!
//! A config is parsed and validated whole before anything uses it, so the balancer never starts
//! (or reloads into) a half-valid configuration.

use std::collections::{BTreeMap, HashSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

/// A configuration mistake, located.
/// `line` and `column` are 1-based; 0 means the mistake is not in a file (command-line flags).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl ConfigError {
    /// Reads a configuration file, or says which one could not be read and why.
    pub fn read(path: &Path) -> Result<String, ConfigError> {
        std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            line: 0,
            column: 0,
            message: format!("cannot read: {e}"),
        })
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            )
        }
    }
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listeners: Vec<Listener>,
    pub admin: Option<SocketAddr>,
    pub threads: Option<usize>,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub telemetry: TelemetrySettings,
    pub routes: Vec<Route>,
    pub target_groups: Vec<TargetGroup>,
    /// Listener rules, by priority: checked before the prefix routes.
    pub rules: Vec<rules::Rule>,
    /// Longest wait for in-flight requests after SIGTERM.
    pub shutdown_timeout: Duration,
    pub access_log: AccessLogSettings,
    /// Per-client rate limit (`[rate_limit]`), if any.
    pub rate_limit: Option<RateLimitSettings>,
}

/// A token bucket per client: `requests_per_second` refill, `burst` capacity.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitSettings {
    pub requests_per_second: f64,
    pub burst: u32,
    pub key: RateLimitKey,
    /// Buckets kept at most; beyond, the least recently seen are evicted.
    pub max_clients: usize,
}

/// What tells clients apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimitKey {
    /// The source address.
    Source,
    /// A header's value (lowercase name), e.g. an API key; the source address without one.
    Header(String),
}

/// The per-request access log (`[access_log]`): on by default, as nginx's is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogSettings {
    pub enabled: bool,
    pub format: AccessLogFormat,
    /// `-` for stdout, else a file appended to (relative paths from the config file's
    /// directory), reopened on every SIGHUP for logrotate.
    pub path: PathBuf,
}

impl Default for AccessLogSettings {
    fn default() -> Self {
        AccessLogSettings {
            enabled: true,
            format: AccessLogFormat::Json,
            path: PathBuf::from("-"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AccessLogFormat {
    /// One JSON object per line, every field present.
    #[default]
    Json,
    /// Space-separated fields in the order of ALB's access logs, then fulcrum's own.
    Text,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub address: SocketAddr,
    pub tls: Option<Tls>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tls {
    Files { cert: PathBuf, key: PathBuf },
    SelfSigned,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
// `default`: a `[timeouts]` table that sets one timeout keeps the default of the other, as
// every other table does.
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// Reading a request's headers (slowloris); on HTTP/1 it also bounds keep-alive idle time.
    #[serde(with = "humantime_serde")]
    pub client_header: Duration,
    /// How long a client connection may stay open with no request in flight, HTTP/2 included
    /// (zero: no limit).
    #[serde(with = "humantime_serde")]
    pub client_idle: Duration,
    /// Longest time a whole request may take, from its headers to the end of the response head.
    #[serde(with = "humantime_serde")]
    pub request: Duration,
    /// Longest wait for the next bytes of a request body the client is sending.
    #[serde(with = "humantime_serde")]
    pub client_body_idle: Duration,
    /// Longest wait for a client to take more of a response (it stopped reading).
    #[serde(with = "humantime_serde")]
    pub client_write_idle: Duration,
    /// An upgraded connection (WebSocket) with no bytes either way this long is closed.
    #[serde(with = "humantime_serde")]
    pub tunnel_idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            client_header: Duration::from_secs(30),
            // ALB's default idle timeout.
            client_idle: Duration::from_secs(60),
            request: Duration::from_secs(60),
            client_body_idle: Duration::from_secs(30),
            client_write_idle: Duration::from_secs(30),
            // ALB's idle timeout applies to WebSocket connections too.
            tunnel_idle: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// All request header names and values together.
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_uri_bytes: usize,
    /// Default body limit for routes that do not set their own.
    pub max_body_bytes: u64,
    /// Open client connections; beyond it new connections are closed at once.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            max_uri_bytes: 8 * 1024,
            max_body_bytes: 10 * 1024 * 1024,
            max_connections: 10_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySettings {
    /// How often the `poll` source asks each worker for `/load`.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// A CPU reading older than this is stale: policies stop trusting it.
    #[serde(with = "humantime_serde")]
    pub stale_after: Duration,
    /// Period of the emulated CloudWatch source (CloudWatch's own minimum for EC2 is 60 s).
    #[serde(with = "humantime_serde")]
    pub cloudwatch_period: Duration,
    /// Sources to collect for every worker even if no target group's policy reads them, so
    /// the status page shows them and policies can be switched at runtime without a cold start.
    pub collect: Vec<TelemetrySource>,
    /// Forward the workers' `endpoint-load-metrics` header to clients (it is consumed otherwise).
    pub forward_load_header: bool,
    /// Where the `cloudwatch` source reads from: a local emulation, or AWS CloudWatch itself
    /// (available when the binary is built with the AWS provider).
    pub cloudwatch_source: CloudwatchSource,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CloudwatchSource {
    Emulated,
    Aws,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        TelemetrySettings {
            poll_interval: Duration::from_millis(250),
            stale_after: Duration::from_secs(2),
            cloudwatch_period: Duration::from_secs(60),
            collect: Vec::new(),
            forward_load_header: false,
            cloudwatch_source: CloudwatchSource::Emulated,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub prefix: String,
    /// Index into [`Config::target_groups`].
    pub target_group: usize,
    pub max_body_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    RoundRobin,
    LeastOutstanding,
    P2cEwma,
    LowestCpu,
    CpuAware,
    CapacityWeighted,
    ConsistentHash,
}

impl Policy {
    pub const ALL: [Policy; 7] = [
        Policy::RoundRobin,
        Policy::LeastOutstanding,
        Policy::P2cEwma,
        Policy::LowestCpu,
        Policy::CpuAware,
        Policy::CapacityWeighted,
        Policy::ConsistentHash,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Policy::RoundRobin => "round-robin",
            Policy::LeastOutstanding => "least-outstanding",
            Policy::P2cEwma => "p2c-ewma",
            Policy::LowestCpu => "lowest-cpu",
            Policy::CpuAware => "cpu-aware",
            Policy::CapacityWeighted => "capacity-weighted",
            Policy::ConsistentHash => "consistent-hash",
        }
    }

    pub fn from_name(s: &str) -> Option<Policy> {
        Policy::ALL.into_iter().find(|p| p.name() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TelemetrySource {
    /// The `endpoint-load-metrics` header on each worker response.
    Inband,
    /// `GET /load` on each worker every `poll_interval`.
    Poll,
    /// CloudWatch `CPUUtilization`: emulated locally (60 s windows, published one window late),
    /// or read from AWS by the AWS provider.
    Cloudwatch,
}

impl TelemetrySource {
    pub const ALL: [TelemetrySource; 3] = [
        TelemetrySource::Inband,
        TelemetrySource::Poll,
        TelemetrySource::Cloudwatch,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TelemetrySource::Inband => "inband",
            TelemetrySource::Poll => "poll",
            TelemetrySource::Cloudwatch => "cloudwatch",
        }
    }

    pub fn from_name(s: &str) -> Option<TelemetrySource> {
        TelemetrySource::ALL.into_iter().find(|p| p.name() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WhenAllUnhealthy {
    /// Send to every worker as if healthy (ALB's behaviour).
    FailOpen,
    /// Answer 503 at once.
    Reject,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TargetGroup {
    pub name: String,
    pub policy: Policy,
    pub telemetry: TelemetrySource,
    pub workers: Vec<WorkerAddr>,
    /// Workers are also read from this JSON file, watched for changes.
    pub discovery_file: Option<PathBuf>,
    /// Workers are also listed by a discovery provider: `provider` names it, `interval` says how
    /// often to ask (default 10 s), the other keys are the provider's own.
    pub discovery: Option<file::DiscoverySpec>,
    pub health: HealthCheck,
    pub outlier: OutlierDetection,
    pub retry: RetryPolicy,
    pub max_in_flight_per_worker: usize,
    pub queue: usize,
    pub queue_timeout: Duration,
    pub connect_timeout: Duration,
    /// Waiting for a worker's response headers, from the end of the request body.
    pub response_timeout: Duration,
    /// Longest wait for the next bytes of a worker's response body.
    pub worker_body_idle: Duration,
    /// Idle pooled connections to workers are closed after this.
    pub pool_idle_timeout: Duration,
    pub when_all_unhealthy: WhenAllUnhealthy,
    /// Per-worker weights (1 when not listed), honoured by every policy.
    pub weights: std::collections::HashMap<SocketAddr, u32>,
    /// A new or returning worker's weight ramps up linearly over this long (0: at once).
    pub slow_start: Duration,
    /// What the `consistent-hash` policy hashes.
    pub hash_key: AffinityKey,
    /// Sticky sessions by cookie, if on.
    pub stickiness: Option<Stickiness>,
    /// How the workers are reached: TLS or not, HTTP/1.1 or HTTP/2.
    pub transport: Transport,
}

/// Sticky sessions: a cookie of the balancer's names the worker a client stays with (while
/// it is available), whatever the policy would pick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stickiness {
    /// The balancer's cookie.
    pub cookie: String,
    /// Only stick once the worker's response sets this cookie of the application's (ALB's
    /// application-based stickiness); `None`: stick from the first response.
    pub app_cookie: Option<String>,
    /// The cookie's `Max-Age`.
    pub duration: Duration,
}

/// Where a request's affinity key comes from; the source address when the request has none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AffinityKey {
    Source,
    /// A header's value (lowercase name).
    Header(String),
    /// A cookie's value.
    Cookie(String),
}

impl AffinityKey {
    /// `source`, `header:NAME` or `cookie:NAME`.
    pub fn parse(s: &str) -> Result<AffinityKey, String> {
        let named = |name: &str| !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic());
        match s.split_once(':') {
            None if s == "source" => Ok(AffinityKey::Source),
            Some(("header", n)) if named(n) => Ok(AffinityKey::Header(n.to_ascii_lowercase())),
            Some(("cookie", n)) if named(n) => Ok(AffinityKey::Cookie(n.to_owned())),
            _ => Err(format!(
                "hash_key `{s}`: use `source`, `header:NAME` or `cookie:NAME`"
            )),
        }
    }
}

/// A worker's address as configured (`127.0.0.1:9001`, `http://127.0.0.1:9001`, or
/// `https://…`: the scheme itself is the target group's, see [`Transport`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerAddr(pub SocketAddr);

impl std::fmt::Display for WorkerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl WorkerAddr {
    /// Parses `host:port`, `http://host:port` or `https://host:port`; names are resolved
    /// once, here.
    pub fn parse(s: &str) -> Result<WorkerAddr, String> {
        let rest = Self::without_scheme(s).trim_end_matches('/');
        if rest.contains('/') {
            return Err(format!("`{s}`: a worker address has no path"));
        }
        if let Ok(a) = rest.parse::<SocketAddr>() {
            return Ok(WorkerAddr(a));
        }
        let mut addrs = rest
            .to_socket_addrs()
            .map_err(|e| format!("`{s}` is not host:port ({e})"))?;
        addrs
            .next()
            .map(WorkerAddr)
            .ok_or_else(|| format!("`{s}` resolves to no address"))
    }

    fn without_scheme(s: &str) -> &str {
        s.strip_prefix("http://")
            .or_else(|| s.strip_prefix("https://"))
            .unwrap_or(s)
    }

    /// The host name written in an address, if it is a name and not an IP address.
    fn written_name(s: &str) -> Option<&str> {
        let rest = Self::without_scheme(s).trim_end_matches('/');
        let host = rest.rsplit_once(':').map_or(rest, |(h, _)| h);
        let is_ip = host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok();
        (!is_ip && !host.is_empty()).then_some(host)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheck {
    pub path: String,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            path: "/health".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            healthy_threshold: 2,
            unhealthy_threshold: 2,
        }
    }
}

/// Passive ejection: workers that keep failing are taken out for a while.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierDetection {
    /// Consecutive failures (connect errors, resets, timeouts, 5xx) that eject a worker. A
    /// refused connection (nothing listening) ejects at once.
    pub consecutive_failures: u32,
    /// Ejection lasts `base_ejection × n` for the n-th ejection in a row, capped at 30 × base.
    #[serde(with = "humantime_serde")]
    pub base_ejection: Duration,
    /// At most this share of a target group is ejected at once.
    pub max_ejected_percent: u32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(1),
            max_ejected_percent: 50,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Tries per request, the first included.
    pub max_attempts: u32,
    /// Retries may add at most this percentage of the recent request rate...
    pub budget_percent: u32,
    /// ...but at least this many retries per second are always allowed.
    pub min_retries_per_second: u32,
    /// Idempotent requests are also retried after a timeout or a 502/503/504 from a worker.
    pub retry_idempotent_on_status: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            budget_percent: 20,
            min_retries_per_second: 10,
            retry_idempotent_on_status: true,
        }
    }
}

pub mod file;
mod quick;
pub mod rules;

use crate::transport::{TlsSettings, Transport};
pub use file::BalancerFile;
use file::{AccessLogSpec, ListenerSpec, RouteSpec, TargetGroupSpec, TlsSpec};
pub use quick::QuickConfig;

/// The policy a target group gets when its configuration names none.
pub const DEFAULT_POLICY: Policy = Policy::CapacityWeighted;

pub(crate) fn default_policy() -> Policy {
    DEFAULT_POLICY
}
pub(crate) fn default_source() -> TelemetrySource {
    TelemetrySource::Inband
}
pub(crate) fn default_max_in_flight() -> usize {
    128
}
pub(crate) fn default_queue() -> usize {
    1024
}
pub(crate) fn default_queue_timeout() -> Duration {
    Duration::from_secs(1)
}
pub(crate) fn default_connect_timeout() -> Duration {
    Duration::from_secs(1)
}
pub(crate) fn default_response_timeout() -> Duration {
    Duration::from_secs(10)
}
pub(crate) fn default_pool_idle() -> Duration {
    Duration::from_secs(60)
}
pub(crate) fn default_when_all_unhealthy() -> WhenAllUnhealthy {
    WhenAllUnhealthy::FailOpen
}

/// `@all` in a target group's workers: every worker of every other group.
pub const ALL_WORKERS: &str = "@all";

/// Turns byte spans of a TOML text into located errors; shared with the topology parser.
pub struct Locator<'a> {
    file: &'a str,
    text: &'a str,
}

impl<'a> Locator<'a> {
    pub fn new(file: &'a str, text: &'a str) -> Locator<'a> {
        Locator { file, text }
    }

    /// A TOML syntax or schema error, located.
    pub fn toml_error(&self, e: toml::de::Error) -> ConfigError {
        let message = e.message().trim().to_owned();
        match e.span() {
            Some(span) => self.at(span, message),
            None => ConfigError {
                file: self.file.to_owned(),
                line: 1,
                column: 1,
                message,
            },
        }
    }

    pub fn at(&self, span: std::ops::Range<usize>, message: impl Into<String>) -> ConfigError {
        let start = span.start.min(self.text.len());
        let before = &self.text[..start];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        ConfigError {
            file: self.file.to_owned(),
            line,
            column,
            message: message.into(),
        }
    }
}

impl Config {
    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = ConfigError::read(path)?;
        Config::parse(&text, &path.display().to_string(), path.parent())
    }

    /// Validates TOML text; `file` names it in errors, relative paths resolve against `base`.
    pub fn parse(text: &str, file: &str, base: Option<&Path>) -> Result<Config, ConfigError> {
        let loc = Locator::new(file, text);
        let raw: BalancerFile = toml::from_str(text).map_err(|e| loc.toml_error(e))?;
        Config::from_file(raw, &loc, base)
    }

    /// Validates a configuration file's value, section by section; `loc` turns its positions
    /// into `file:line:column` errors, relative paths resolve against `base`.
    pub fn from_file(
        raw: BalancerFile,
        loc: &Locator,
        base: Option<&Path>,
    ) -> Result<Config, ConfigError> {
        let resolve = |p: PathBuf| match base {
            Some(b) if p.is_relative() => b.join(p),
            _ => p,
        };
        let listeners = listeners(&raw.listeners, loc, &resolve)?;
        let admin = raw
            .admin
            .as_ref()
            .map(|a| parse_addr(&a.address, loc))
            .transpose()?;
        if let Some(t) = &raw.threads {
            if !(1..=256).contains(t.get_ref()) {
                return Err(loc.at(t.span(), "threads must be between 1 and 256"));
            }
        }
        let (names, target_groups) = target_groups(&raw, loc, &resolve)?;
        let rules = rules::rules(&raw.rules, &names, loc)?;
        let routes = routes(&raw, &names, loc, !rules.is_empty())?;
        check_limits(&raw, loc)?;
        let access_log = access_log(&raw.access_log, loc, &resolve)?;
        let rate_limit = raw
            .rate_limit
            .as_ref()
            .map(|r| rate_limit(r, loc))
            .transpose()?;
        Ok(Config {
            listeners,
            admin,
            threads: raw.threads.map(|t| t.into_inner()),
            timeouts: raw.timeouts,
            limits: raw.limits,
            telemetry: raw.telemetry,
            routes,
            target_groups,
            rules,
            shutdown_timeout: raw.shutdown_timeout,
            access_log,
            rate_limit,
        })
    }

    /// The telemetry sources some target group reads or the settings ask to collect.
    pub fn sources_in_use(&self) -> Vec<TelemetrySource> {
        let mut s: Vec<TelemetrySource> = self
            .target_groups
            .iter()
            .map(|g| g.telemetry)
            .chain(self.telemetry.collect.iter().copied())
            .collect();
        s.sort_by_key(|t| t.name());
        s.dedup();
        s
    }
}

fn listeners(
    specs: &[Spanned<ListenerSpec>],
    loc: &Locator,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
) -> Result<Vec<Listener>, ConfigError> {
    let mut listeners = Vec::new();
    for l in specs {
        let address = parse_addr(&l.get_ref().address, loc)?;
        let tls = match &l.get_ref().tls {
            None => None,
            Some(TlsSpec {
                self_signed: true,
                cert: None,
                key: None,
            }) => Some(Tls::SelfSigned),
            Some(TlsSpec {
                self_signed: false,
                cert: Some(c),
                key: Some(k),
            }) => Some(Tls::Files {
                cert: resolve(c.clone()),
                key: resolve(k.clone()),
            }),
            Some(_) => {
                return Err(loc.at(
                    l.span(),
                    "tls needs either `cert` and `key` (PEM files) or `self_signed = true`",
                ))
            }
        };
        listeners.push(Listener { address, tls });
    }
    if listeners.is_empty() {
        return Err(loc.at(0..0, "no [[listener]]: the balancer needs at least one"));
    }
    Ok(listeners)
}

/// Every target group, by name, with `@all` expanded once every explicit list is known.
fn target_groups(
    raw: &BalancerFile,
    loc: &Locator,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
) -> Result<(BTreeMap<String, usize>, Vec<TargetGroup>), ConfigError> {
    let mut names = BTreeMap::new();
    let mut groups = Vec::new();
    for g in &raw.target_groups {
        let group = target_group(g, raw, loc, resolve)?;
        if names.insert(group.name.clone(), groups.len()).is_some() {
            return Err(loc.at(
                g.get_ref().name.span(),
                format!("target group `{}` is defined twice", group.name),
            ));
        }
        let has_all = g
            .get_ref()
            .workers
            .iter()
            .any(|w| w.get_ref() == ALL_WORKERS);
        groups.push((has_all, group));
    }
    let mut explicit: Vec<WorkerAddr> = groups
        .iter()
        .filter(|(has_all, _)| !has_all)
        .flat_map(|(_, g)| g.workers.iter().cloned())
        .collect();
    explicit.sort();
    explicit.dedup();
    let groups: Vec<TargetGroup> = groups
        .into_iter()
        .map(|(has_all, mut g)| {
            if has_all {
                for w in &explicit {
                    if !g.workers.contains(w) {
                        g.workers.push(w.clone());
                    }
                }
            }
            g
        })
        .collect();
    one_transport_per_worker(&groups, raw, loc)?;
    Ok((names, groups))
}

/// A worker address in two groups must be reached the same way from both: its pooled
/// connections and its health checks are shared.
fn one_transport_per_worker(
    groups: &[TargetGroup],
    raw: &BalancerFile,
    loc: &Locator,
) -> Result<(), ConfigError> {
    let mut seen: BTreeMap<&WorkerAddr, &TargetGroup> = BTreeMap::new();
    for (i, g) in groups.iter().enumerate() {
        for w in &g.workers {
            let first = *seen.entry(w).or_insert(g);
            if first.transport != g.transport {
                let way = |t: &Transport| format!("{} {}", t.scheme(), t.protocol.name());
                let (a, b) = (way(&first.transport), way(&g.transport));
                let differ = if a == b {
                    "TLS settings".to_owned()
                } else {
                    format!("{a} / {b}")
                };
                return Err(loc.at(
                    raw.target_groups[i].span(),
                    format!(
                        "worker {w} is in target groups `{}` and `{}`, which reach it differently ({differ}): one address speaks one way, so give both the same `protocol` and `tls`",
                        first.name, g.name,
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn target_group(
    g: &Spanned<TargetGroupSpec>,
    raw: &BalancerFile,
    loc: &Locator,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
) -> Result<TargetGroup, ConfigError> {
    let fg = g.get_ref();
    let name = fg.name.get_ref().clone();
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(loc.at(
            fg.name.span(),
            format!(
                "target group name `{name}` must be non-empty letters, digits, `-`, `_` or `.`"
            ),
        ));
    }
    let workers = group_workers(fg, loc)?;
    if fg.workers.is_empty() && fg.discovery_file.is_none() && fg.discovery.is_none() {
        return Err(loc.at(
            g.span(),
            format!("target group `{name}` has no `workers`, `discovery_file` or `discovery`"),
        ));
    }
    check_group_settings(fg, raw, loc, g.span())?;
    Ok(TargetGroup {
        name,
        policy: fg.policy,
        telemetry: fg.telemetry,
        workers,
        discovery_file: fg.discovery_file.clone().map(resolve),
        discovery: fg.discovery.as_ref().map(|d| d.get_ref().clone()),
        health: fg.health.clone(),
        outlier: fg.outlier.clone(),
        retry: fg.retry.clone(),
        max_in_flight_per_worker: fg.max_in_flight_per_worker,
        queue: fg.queue,
        queue_timeout: fg.queue_timeout,
        connect_timeout: fg.connect_timeout,
        response_timeout: fg.response_timeout,
        worker_body_idle: fg.worker_body_idle,
        pool_idle_timeout: fg.pool_idle_timeout,
        when_all_unhealthy: fg.when_all_unhealthy,
        weights: weights(fg, loc, g.span())?,
        slow_start: fg.slow_start,
        hash_key: AffinityKey::parse(&fg.hash_key).map_err(|m| loc.at(g.span(), m))?,
        stickiness: fg
            .stickiness
            .as_ref()
            .map(|s| stickiness(s, loc))
            .transpose()?,
        transport: worker_transport(fg, loc, resolve, g.span())?,
    })
}

/// How a group reaches its workers: TLS when its workers are written `https://` or it has a
/// `tls` table, with the files read and checked now.
fn worker_transport(
    fg: &TargetGroupSpec,
    loc: &Locator,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
    span: std::ops::Range<usize>,
) -> Result<Transport, ConfigError> {
    let written = |scheme: &str| fg.workers.iter().find(|w| w.get_ref().starts_with(scheme));
    let (https, http) = (written("https://"), written("http://"));
    if let (Some(a), Some(_)) = (https, http) {
        return Err(loc.at(
            a.span(),
            "a target group's workers are all `https://` or all `http://`, not both",
        ));
    }
    if let (Some(_), Some(w)) = (&fg.tls, http) {
        return Err(loc.at(
            w.span(),
            format!(
                "`{}` is plain HTTP but the group has a `tls` table; write `https://` or drop the scheme",
                w.get_ref()
            ),
        ));
    }
    if fg.tls.is_none() && https.is_none() {
        return Ok(Transport::plain(fg.protocol));
    }
    let spec = fg
        .tls
        .as_ref()
        .map(|t| t.get_ref().clone())
        .unwrap_or_default();
    let tls_span = fg.tls.as_ref().map_or(span, |t| t.span());
    let mut names: Vec<&str> = fg
        .workers
        .iter()
        .filter_map(|w| WorkerAddr::written_name(w.get_ref()))
        .collect();
    names.sort();
    names.dedup();
    let server_name = match (spec.server_name, names.as_slice()) {
        (Some(n), _) => Some(n),
        (None, []) => None,
        (None, [one]) => Some(one.to_string()),
        (None, many) => {
            return Err(loc.at(
                tls_span,
                format!(
                    "the workers are named differently ({}): set tls.server_name, the name their certificates carry",
                    many.join(", ")
                ),
            ))
        }
    };
    let settings = TlsSettings {
        ca_file: spec.ca_file.map(resolve),
        server_name,
        client_cert: spec.client_cert.map(resolve),
        client_key: spec.client_key.map(resolve),
        insecure: spec.insecure,
    };
    if settings.insecure && settings.ca_file.is_some() {
        return Err(loc.at(
            tls_span,
            "tls: `insecure = true` trusts anything; drop ca_file or insecure",
        ));
    }
    Transport::with_tls(fg.protocol, settings).map_err(|e| loc.at(tls_span, format!("tls: {e:#}")))
}

/// A group's explicit workers (`@all` is expanded later), each once.
fn group_workers(fg: &TargetGroupSpec, loc: &Locator) -> Result<Vec<WorkerAddr>, ConfigError> {
    let mut workers = Vec::new();
    let mut seen = HashSet::new();
    for w in &fg.workers {
        if w.get_ref() == ALL_WORKERS {
            continue;
        }
        let addr = WorkerAddr::parse(w.get_ref()).map_err(|m| loc.at(w.span(), m))?;
        if !seen.insert(addr.clone()) {
            return Err(loc.at(w.span(), format!("worker {addr} is listed twice")));
        }
        workers.push(addr);
    }
    Ok(workers)
}

fn stickiness(
    spec: &Spanned<file::StickinessSpec>,
    loc: &Locator,
) -> Result<Stickiness, ConfigError> {
    let s = spec.get_ref();
    let token = |n: &str| {
        !n.is_empty()
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    let cookie = match (&s.cookie, &s.app_cookie) {
        (Some(c), None) => c.clone(),
        (None, Some(_)) => "fulcrum-sticky-app".to_owned(),
        _ => return Err(loc.at(
            spec.span(),
            "stickiness needs one of `cookie` (the balancer's) or `app_cookie` (the application's)",
        )),
    };
    if !token(&cookie) || s.app_cookie.as_deref().is_some_and(|a| !token(a)) {
        return Err(loc.at(
            spec.span(),
            "stickiness: a cookie name is a token like `lb-sticky`",
        ));
    }
    if !(Duration::from_secs(1)..=Duration::from_secs(7 * 24 * 3600)).contains(&s.duration) {
        return Err(loc.at(spec.span(), "stickiness duration is within 1s..=7days"));
    }
    Ok(Stickiness {
        cookie,
        app_cookie: s.app_cookie.clone(),
        duration: s.duration,
    })
}

/// `weights = { "ADDR" = N }`: each address a worker's (listed or discovered later), N in
/// 1..=1000.
fn weights(
    fg: &TargetGroupSpec,
    loc: &Locator,
    span: std::ops::Range<usize>,
) -> Result<std::collections::HashMap<SocketAddr, u32>, ConfigError> {
    let mut out = std::collections::HashMap::new();
    for (addr, weight) in &fg.weights {
        let a =
            WorkerAddr::parse(addr).map_err(|m| loc.at(span.clone(), format!("weights: {m}")))?;
        if !(1..=1000).contains(weight) {
            return Err(loc.at(
                span,
                format!("weights: {addr} = {weight}; a weight is within 1..=1000"),
            ));
        }
        out.insert(a.0, *weight);
    }
    let slow = fg.slow_start;
    if !slow.is_zero() && !(Duration::from_secs(1)..=Duration::from_secs(900)).contains(&slow) {
        return Err(loc.at(span, "slow_start is 0s (off) or within 1s..=900s"));
    }
    Ok(out)
}

fn check_group_settings(
    fg: &TargetGroupSpec,
    raw: &BalancerFile,
    loc: &Locator,
    span: std::ops::Range<usize>,
) -> Result<(), ConfigError> {
    if let Some(d) = &fg.discovery {
        if d.get_ref().provider.is_empty() {
            return Err(loc.at(d.span(), "discovery needs `provider = \"NAME\"`"));
        }
    }
    check_health(&fg.health, loc, span.clone())?;
    if fg.max_in_flight_per_worker == 0 {
        return Err(loc.at(span, "max_in_flight_per_worker must be at least 1"));
    }
    if fg.retry.max_attempts == 0 {
        return Err(loc.at(
            span,
            "retry.max_attempts must be at least 1 (the first try)",
        ));
    }
    if fg.outlier.max_ejected_percent > 100 {
        return Err(loc.at(span, "outlier.max_ejected_percent must be at most 100"));
    }
    if fg.telemetry == TelemetrySource::Cloudwatch && raw.telemetry.cloudwatch_period.is_zero() {
        return Err(loc.at(span, "telemetry.cloudwatch_period must be positive"));
    }
    Ok(())
}

fn routes(
    raw: &BalancerFile,
    names: &BTreeMap<String, usize>,
    loc: &Locator,
    has_rules: bool,
) -> Result<Vec<Route>, ConfigError> {
    let mut routes = Vec::new();
    let mut prefixes = HashSet::new();
    for r in &raw.routes {
        let fr: &RouteSpec = r.get_ref();
        let prefix = fr.prefix.get_ref().clone();
        if !prefix.starts_with('/') {
            return Err(loc.at(
                fr.prefix.span(),
                format!("route prefix `{prefix}` must start with `/`"),
            ));
        }
        if !prefixes.insert(prefix.clone()) {
            return Err(loc.at(
                fr.prefix.span(),
                format!("route prefix `{prefix}` is defined twice"),
            ));
        }
        let group = fr.target_group.get_ref();
        let Some(&idx) = names.get(group) else {
            let known: Vec<&str> = names.keys().map(String::as_str).collect();
            let defined = if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            };
            return Err(loc.at(
                fr.target_group.span(),
                format!("unknown target group `{group}` (defined: {defined})"),
            ));
        };
        routes.push(Route {
            prefix,
            target_group: idx,
            max_body_bytes: fr.max_body_bytes.unwrap_or(raw.limits.max_body_bytes),
        });
    }
    if routes.is_empty() && !has_rules {
        return Err(loc.at(0..0, "no [[route]] or [[rule]]: nothing would be served"));
    }
    Ok(routes)
}

fn rate_limit(
    spec: &Spanned<file::RateLimitSpec>,
    loc: &Locator,
) -> Result<RateLimitSettings, ConfigError> {
    let r = spec.get_ref();
    let bad = |m: &str| Err(loc.at(spec.span(), format!("rate_limit: {m}")));
    if !(r.requests_per_second.is_finite() && r.requests_per_second > 0.0) {
        return bad("requests_per_second must be above 0");
    }
    if r.burst == 0 {
        return bad("burst must be at least 1");
    }
    if !(16..=10_000_000).contains(&r.max_clients) {
        return bad("max_clients must be within 16..=10000000");
    }
    let key = match r.key.as_str() {
        "source" => RateLimitKey::Source,
        k => match k.strip_prefix("header:") {
            Some(name) if !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic()) => {
                RateLimitKey::Header(name.to_ascii_lowercase())
            }
            _ => return bad("key is `source` or `header:NAME`"),
        },
    };
    Ok(RateLimitSettings {
        requests_per_second: r.requests_per_second,
        burst: r.burst,
        key,
        max_clients: r.max_clients,
    })
}

fn access_log(
    spec: &AccessLogSpec,
    loc: &Locator,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
) -> Result<AccessLogSettings, ConfigError> {
    let path = match &spec.path {
        None => PathBuf::from("-"),
        Some(p) if p.get_ref() == "-" => PathBuf::from("-"),
        Some(p) if p.get_ref().is_empty() => {
            return Err(loc.at(
                p.span(),
                "access_log.path is empty: give a file, or `-` for stdout",
            ))
        }
        Some(p) => {
            let path = resolve(PathBuf::from(p.get_ref()));
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
            if let Some(dir) = dir.filter(|d| !d.is_dir()) {
                return Err(loc.at(
                    p.span(),
                    format!(
                        "access_log.path: the directory {} does not exist",
                        dir.display()
                    ),
                ));
            }
            path
        }
    };
    Ok(AccessLogSettings {
        enabled: spec.enabled,
        format: spec.format,
        path,
    })
}

fn check_limits(raw: &BalancerFile, loc: &Locator) -> Result<(), ConfigError> {
    let l = &raw.limits;
    if l.max_headers == 0 || l.max_header_bytes < 1024 || l.max_uri_bytes < 64 {
        return Err(loc.at(
            0..0,
            "limits too small: max_headers ≥ 1, max_header_bytes ≥ 1024, max_uri_bytes ≥ 64",
        ));
    }
    if raw.telemetry.poll_interval < Duration::from_millis(10) {
        return Err(loc.at(0..0, "telemetry.poll_interval must be at least 10ms"));
    }
    Ok(())
}

fn parse_addr(s: &Spanned<String>, loc: &Locator) -> Result<SocketAddr, ConfigError> {
    s.get_ref().parse().map_err(|_| {
        loc.at(
            s.span(),
            format!("`{}` is not an IP:port address", s.get_ref()),
        )
    })
}

fn check_health(
    h: &HealthCheck,
    loc: &Locator,
    span: std::ops::Range<usize>,
) -> Result<(), ConfigError> {
    if !h.path.starts_with('/') {
        return Err(loc.at(
            span,
            format!("health.path `{}` must start with `/`", h.path),
        ));
    }
    if h.interval < Duration::from_millis(10) || h.timeout.is_zero() {
        return Err(loc.at(
            span,
            "health.interval must be ≥ 10ms and health.timeout positive",
        ));
    }
    if h.healthy_threshold == 0 || h.unhealthy_threshold == 0 {
        return Err(loc.at(span, "health thresholds must be at least 1"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[listener]]
address = "127.0.0.1:8080"

[admin]
address = "127.0.0.1:9900"

[[route]]
prefix = "/cluster1"
target_group = "c1"

[[route]]
prefix = "/"
target_group = "all"

[[target_group]]
name = "c1"
policy = "round-robin"
workers = ["127.0.0.1:9001", "http://127.0.0.1:9002"]

[[target_group]]
name = "c2"
workers = ["127.0.0.1:9101"]
[target_group.health]
interval = "250ms"

[[target_group]]
name = "all"
workers = ["@all"]
"#;

    #[test]
    fn parses_a_good_file_and_expands_all() {
        let c = Config::parse(GOOD, "b.toml", None).unwrap();
        assert_eq!(c.listeners[0].address, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.admin, Some("127.0.0.1:9900".parse().unwrap()));
        assert_eq!(c.target_groups[0].policy, Policy::RoundRobin);
        assert_eq!(c.target_groups[1].policy, Policy::CapacityWeighted);
        assert_eq!(
            c.target_groups[1].health.interval,
            Duration::from_millis(250)
        );
        assert_eq!(c.target_groups[2].workers.len(), 3);
        assert_eq!(c.routes[1].target_group, 2);
        assert_eq!(c.routes[0].max_body_bytes, Limits::default().max_body_bytes);
    }

    fn err(text: &str) -> ConfigError {
        Config::parse(text, "b.toml", None).unwrap_err()
    }

    #[test]
    fn errors_point_at_file_line_and_column() {
        let e = err(&GOOD.replace("policy = \"round-robin\"", "policy = \"fastest\""));
        assert_eq!((e.line, e.column), (18, 10), "{e}");
        assert!(e.message.contains("unknown variant `fastest`"), "{e}");
        assert!(e.message.contains("cpu-aware"), "{e}");
        assert!(e.to_string().starts_with("b.toml:18:10: "), "{e}");

        let e = err(&GOOD.replace("target_group = \"c1\"", "target_group = \"c3\""));
        assert_eq!((e.line, e.column), (10, 16), "{e}");
        assert!(
            e.message
                .contains("unknown target group `c3` (defined: all, c1, c2)"),
            "{e}"
        );

        let e = err(&GOOD.replace("\"127.0.0.1:9101\"", "\"127.0.0.1:notaport\""));
        assert_eq!((e.line, e.column), (23, 12), "{e}");
        assert!(e.message.contains("is not host:port"), "{e}");

        let e = err(&GOOD.replace("interval = \"250ms\"", "interval = \"soon\""));
        assert_eq!((e.line, e.column), (25, 12), "{e}");

        let e = err(&GOOD.replace("[admin]", "[admn]"));
        assert!(e.message.contains("unknown field `admn`"), "{e}");

        let e = err(&GOOD.replace("prefix = \"/\"", "prefix = \"nope\""));
        assert!(e.message.contains("must start with `/`"), "{e}");

        let e = err("[[listener]\naddress = 1");
        assert_eq!(e.line, 1, "{e}");

        let e = err(&GOOD.replace("address = \"127.0.0.1:8080\"", "address = \"localhost\""));
        assert_eq!((e.line, e.column), (3, 11), "{e}");
    }

    #[test]
    fn a_table_that_sets_one_field_keeps_the_defaults_of_the_others() {
        let c = Config::parse(
            &format!("{GOOD}\n[timeouts]\nclient_header = \"1s\"\nclient_idle = \"0s\"\n"),
            "b.toml",
            None,
        )
        .unwrap();
        assert_eq!(c.timeouts.client_header, Duration::from_secs(1));
        assert_eq!(c.timeouts.client_idle, Duration::ZERO);
        assert_eq!(c.timeouts.request, Timeouts::default().request);
    }

    #[test]
    fn quick_form_builds_the_same_config() {
        let q = QuickConfig {
            listen: vec!["127.0.0.1:8080".into()],
            routes: vec![
                "/cluster1=http://127.0.0.1:9001,http://127.0.0.1:9002".into(),
                "/cluster2=http://127.0.0.1:9101".into(),
                "/=@all".into(),
            ],
            policy: Some(Policy::LowestCpu),
            admin: Some("127.0.0.1:9900".into()),
            ..Default::default()
        };
        let c = q.build().unwrap();
        assert_eq!(c.target_groups.len(), 3);
        assert_eq!(c.target_groups[2].name, "root");
        assert_eq!(c.target_groups[2].workers.len(), 3);
        assert!(c
            .target_groups
            .iter()
            .all(|g| g.policy == Policy::LowestCpu));
        let bad = QuickConfig {
            listen: vec!["127.0.0.1:8080".into()],
            routes: vec!["/x".into()],
            ..Default::default()
        };
        assert!(bad.build().unwrap_err().message.contains("PREFIX=WORKER"));
        // Written out as TOML and read back, the same configuration.
        let text = q.to_file().unwrap().to_toml();
        assert_eq!(Config::parse(&text, "b.toml", None).unwrap(), c, "{text}");
    }
}
