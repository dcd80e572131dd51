//! Routing: from a request to a decision — the client's rate limit, the first listener rule
//! that matches (forward, weighted forward, redirect, fixed response), else the longest prefix
//! route — and from a target group to one worker's in-flight slot (a sticky cookie's worker
//! first, then the group's policy), waiting in a bounded queue when every worker is at its cap.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::rules::{Action, FixedResponse, HeaderEdits, Redirect, Rule};
use crate::config::{AffinityKey, Config, Policy, TargetGroup, TelemetrySource, WhenAllUnhealthy};
use crate::errors::{ErrorCode, ProxyError};
use crate::fleet::{now_us, CapacitySignal, Fleet, InFlight, Worker};
use crate::line::Line;
use crate::policy::{self, Affinity, PickContext};
use crate::rate_limit::RateLimiter;
use crate::rules::{RequestView, RuleAnswer};

/// A routing table and its target groups: one immutable generation of the configuration.
/// Requests hold the generation they started with; a reload swaps in a new one.
pub struct Router {
    pub generation: u64,
    pub config: Arc<Config>,
    routes: Vec<RouteEntry>,
    /// Listener rules, by priority; checked before `routes`.
    pub rules: Vec<RuleEntry>,
    /// Per-client token buckets, checked before the rules (`[rate_limit]`); a reload starts
    /// them full again.
    pub rate_limiter: Option<RateLimiter>,
    pub groups: Vec<Arc<Group>>,
}

pub struct RouteEntry {
    pub prefix: String,
    /// The prefix, shared by metric label sets without copying.
    pub label: Arc<String>,
    pub group: Arc<Group>,
    pub max_body_bytes: u64,
}

/// FNV-1a: a stable hash of a key (the same in every balancer process, so replicas agree).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// `read` of the value of the request's cookie `name` (from any of its `Cookie` fields).
fn cookie<T>(req: &RequestView<'_>, name: &[u8], read: impl Fn(&[u8]) -> Option<T>) -> Option<T> {
    let mut found = None;
    req.headers.any_value("cookie", &mut |v| {
        found = cookie_value(v, name).and_then(&read);
        found.is_some()
    });
    found
}

/// The value of cookie `name` in a `Cookie` field (`a=1; b=2`).
fn cookie_value<'v>(field: &'v [u8], name: &[u8]) -> Option<&'v [u8]> {
    field.split(|b| *b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|b| *b == b'=')?;
        (&pair[..eq] == name).then(|| &pair[eq + 1..])
    })
}

// ───────────────────────────── listener rules ─────────────────────────────

/// A rule of one router generation, its forward targets resolved to target groups.
pub struct RuleEntry {
    pub rule: Rule,
    /// Forward targets and their weights (empty for a redirect or fixed response).
    pub targets: Vec<(RouteEntry, u32)>,
    /// Shared by the metric label sets of the requests this rule matches.
    pub label: Arc<String>,
    /// Requests this rule matched in this generation, for the status page.
    pub matched: AtomicU64,
}

/// What the balancer does with a request.
pub enum Decision<'r> {
    /// Forward along `route`; `rule` is the rule that chose it, if any (its header edits).
    Forward {
        route: &'r RouteEntry,
        rule: Option<&'r RuleEntry>,
    },
    Redirect(&'r RuleEntry, &'r Redirect),
    Fixed(&'r RuleEntry, &'r FixedResponse),
}

impl<'r> Decision<'r> {
    pub fn rule(&self) -> Option<&'r RuleEntry> {
        match *self {
            Decision::Forward { rule, .. } => rule,
            Decision::Redirect(r, _) | Decision::Fixed(r, _) => Some(r),
        }
    }

    /// Header edits for the request the worker gets, and for the response the client gets.
    pub fn edits(&self) -> (Option<&'r HeaderEdits>, Option<&'r HeaderEdits>) {
        let rule = self.rule().map(|r| &r.rule);
        (
            rule.map(|r| &r.request_headers).filter(|e| !e.is_empty()),
            rule.map(|r| &r.response_headers).filter(|e| !e.is_empty()),
        )
    }
}

impl RuleEntry {
    /// The rule as the status document shows it.
    pub fn status(&self) -> serde_json::Value {
        let r = &self.rule;
        let c = &r.conditions;
        let mut when = Vec::new();
        let list = |name: &str, items: Vec<String>| format!("{name} {}", items.join(" | "));
        let patterns =
            |p: &[crate::config::rules::Pattern]| p.iter().map(|p| p.to_string()).collect();
        if !c.host.is_empty() {
            when.push(list("host", patterns(&c.host)));
        }
        if !c.path.is_empty() {
            when.push(list("path", patterns(&c.path)));
        }
        if !c.method.is_empty() {
            when.push(list("method", c.method.clone()));
        }
        if !c.source.is_empty() {
            when.push(list(
                "source",
                c.source.iter().map(|n| n.to_string()).collect(),
            ));
        }
        if !c.protocol.is_empty() {
            when.push(list("protocol", c.protocol.clone()));
        }
        for (name, p) in &c.header {
            when.push(list(&format!("header {name}"), patterns(p)));
        }
        for (key, p) in &c.query {
            when.push(list(&format!("query {key}"), patterns(p)));
        }
        let total: u32 = self.targets.iter().map(|(_, w)| w).sum();
        let then = match &r.action {
            Action::Forward(_) => format!(
                "forward {}",
                self.targets
                    .iter()
                    .map(|(route, w)| format!(
                        "{} {:.0}%",
                        route.group.name,
                        100.0 * *w as f64 / total.max(1) as f64
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Action::Redirect(to) => format!("redirect {}", to.status),
            Action::Fixed(f) => format!("fixed response {}", f.status),
        };
        serde_json::json!({
            "priority": r.priority,
            "name": r.name,
            "when": if when.is_empty() { "always".to_owned() } else { when.join("; ") },
            "then": then,
            "matched": self.matched.load(Ordering::Relaxed),
        })
    }
}

impl RuleEntry {
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        crate::rules::conditions_hold(&self.rule.conditions, req)
    }

    /// This rule's decision for a request it matched.
    pub fn decide(&self) -> Decision<'_> {
        self.matched.fetch_add(1, Ordering::Relaxed);
        match &self.rule.action {
            Action::Forward(_) => Decision::Forward {
                route: self.pick_target(),
                rule: Some(self),
            },
            Action::Redirect(r) => Decision::Redirect(self, r),
            Action::Fixed(f) => Decision::Fixed(self, f),
        }
    }

    /// One forward target, chosen by weight.
    fn pick_target(&self) -> &RouteEntry {
        let total: u32 = self.targets.iter().map(|(_, w)| w).sum();
        let mut ticket = fastrand::u32(0..total.max(1));
        for (route, weight) in &self.targets {
            if ticket < *weight {
                return route;
            }
            ticket -= weight;
        }
        &self.targets[0].0
    }
}

impl<'r> Decision<'r> {
    /// The status of a rule's own answer (0 for a forward: the worker's decides).
    pub fn answer_status(&self) -> u16 {
        self.answer().map_or(0, |a| a.status())
    }

    /// What the rule answers itself, unless this is a forward.
    pub fn answer(&self) -> Option<RuleAnswer<'r>> {
        match *self {
            Decision::Forward { .. } => None,
            Decision::Redirect(_, r) => Some(RuleAnswer::Redirect(r)),
            Decision::Fixed(_, f) => Some(RuleAnswer::Fixed(f)),
        }
    }
}

/// A rule with its forward targets as routes: `rule:NAME` in metrics and the access log.
fn rule_entry(rule: &Rule, groups: &[Arc<Group>], max_body_bytes: u64) -> RuleEntry {
    let label = Arc::new(format!("rule:{}", rule.name));
    let targets = match &rule.action {
        Action::Forward(targets) => targets
            .iter()
            .filter(|(_, weight)| *weight > 0)
            .map(|&(group, weight)| {
                let route = RouteEntry {
                    prefix: label.to_string(),
                    label: label.clone(),
                    group: groups[group].clone(),
                    max_body_bytes,
                };
                (route, weight)
            })
            .collect(),
        _ => Vec::new(),
    };
    RuleEntry {
        rule: rule.clone(),
        targets,
        label,
        matched: Default::default(),
    }
}

/// Whether `prefix` covers `path`, on segment boundaries: `/cluster1` covers `/cluster1` and
/// `/cluster1/x` but not `/cluster10`; a prefix ending in `/` covers everything below it.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix.ends_with('/') {
        return path.starts_with(prefix);
    }
    path.starts_with(prefix) && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/'))
}

impl Router {
    /// Builds a generation from a validated config, reusing the fleet's workers.
    pub fn build(config: Arc<Config>, fleet: &Fleet, generation: u64) -> Router {
        let groups: Vec<Arc<Group>> = config
            .target_groups
            .iter()
            .map(|g| Arc::new(Group::new(g.clone(), fleet, config.telemetry.stale_after)))
            .collect();
        let mut routes: Vec<RouteEntry> = config
            .routes
            .iter()
            .map(|r| RouteEntry {
                prefix: r.prefix.clone(),
                label: Arc::new(r.prefix.clone()),
                group: groups[r.target_group].clone(),
                max_body_bytes: r.max_body_bytes,
            })
            .collect();
        // Longest prefix first, as ALB evaluates its most specific rule first.
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        let rules = config
            .rules
            .iter()
            .map(|rule| rule_entry(rule, &groups, config.limits.max_body_bytes))
            .collect();
        let rate_limiter = config.rate_limit.clone().map(RateLimiter::new);
        Router {
            generation,
            config,
            routes,
            rules,
            rate_limiter,
            groups,
        }
    }

    /// A client over its rate limit gets 429 with how long to wait; else the first rule `req`
    /// matches decides, and without one the longest matching prefix route.
    pub fn decide(&self, req: &RequestView<'_>) -> Result<Decision<'_>, ProxyError> {
        if let Some(limiter) = &self.rate_limiter {
            if let Err(limited) = limiter.check(req.source, req.headers, now_us()) {
                let mut e = ProxyError::new(
                    ErrorCode::RateLimited,
                    format!(
                        "over the rate limit of {} requests per second",
                        limiter.settings().requests_per_second
                    ),
                );
                e.retry_after = Some(limited.retry_after_s);
                return Err(e);
            }
        }
        self.decide_route(req).ok_or_else(|| {
            ProxyError::new(
                ErrorCode::NoRoute,
                format!("no route matches `{}`", req.path),
            )
        })
    }

    fn decide_route(&self, req: &RequestView<'_>) -> Option<Decision<'_>> {
        if let Some(rule) = self.rules.iter().find(|r| r.matches(req)) {
            return Some(rule.decide());
        }
        self.route(req.path)
            .map(|route| Decision::Forward { route, rule: None })
    }

    pub fn route(&self, path: &str) -> Option<&RouteEntry> {
        self.routes.iter().find(|r| prefix_matches(&r.prefix, path))
    }

    pub fn routes(&self) -> &[RouteEntry] {
        &self.routes
    }

    pub fn group(&self, name: &str) -> Option<&Arc<Group>> {
        self.groups.iter().find(|g| g.name == name)
    }

    /// Every worker some group of this generation names.
    pub fn workers(&self) -> Vec<Arc<Worker>> {
        let mut all: Vec<Arc<Worker>> = self
            .groups
            .iter()
            .flat_map(|g| g.workers().iter().cloned().collect::<Vec<_>>())
            .collect();
        all.sort_by_key(|w| w.addr);
        all.dedup_by_key(|w| w.addr);
        all
    }
}

/// Why no worker could be had for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PickError {
    /// Every worker of the group is unhealthy or ejected (and the group rejects).
    NoHealthyWorkers,
    /// Every worker is at its in-flight cap and the queue is full or the wait timed out.
    Overloaded,
    /// A retry found no worker it had not already tried.
    NoOtherWorker,
    /// The request's own deadline passed while it waited.
    Deadline,
}

pub struct Group {
    pub name: String,
    pub label: Arc<String>,
    pub settings: TargetGroup,
    policy: AtomicU8,
    telemetry: AtomicU8,
    static_workers: Vec<Arc<Worker>>,
    workers: ArcSwap<Vec<Arc<Worker>>>,
    rr: AtomicUsize,
    weighted: policy::CapacityWeighted,
    queued: AtomicUsize,
    line: Line,
    pub budget: RetryBudget,
    stale_after_us: u64,
}

impl Group {
    fn new(settings: TargetGroup, fleet: &Fleet, stale_after: Duration) -> Group {
        let static_workers: Vec<Arc<Worker>> = settings
            .workers
            .iter()
            .map(|a| {
                let (w, _) = fleet.get_or_add(a.0, settings.max_in_flight_per_worker);
                w.set_max_in_flight(settings.max_in_flight_per_worker);
                w
            })
            .collect();
        Group {
            name: settings.name.clone(),
            label: Arc::new(settings.name.clone()),
            policy: AtomicU8::new(settings.policy as u8),
            telemetry: AtomicU8::new(settings.telemetry as u8),
            workers: ArcSwap::from_pointee(static_workers.clone()),
            static_workers,
            rr: AtomicUsize::new(0),
            weighted: policy::CapacityWeighted::default(),
            queued: AtomicUsize::new(0),
            line: Line::default(),
            budget: RetryBudget::new(
                settings.retry.budget_percent,
                settings.retry.min_retries_per_second,
            ),
            stale_after_us: stale_after.as_micros() as u64,
            settings,
        }
    }

    /// What this request brings to this group's pick: the worker its sticky cookie names, and
    /// the hash of its `hash_key` for `consistent-hash` (its source address when the header or
    /// cookie is missing).
    pub fn affinity(&self, req: &RequestView<'_>) -> Affinity {
        let sticky = self.settings.stickiness.as_ref().and_then(|s| {
            cookie(req, s.cookie.as_bytes(), |v| {
                u64::from_str_radix(std::str::from_utf8(v).ok()?, 16).ok()
            })
        });
        if self.policy() != Policy::ConsistentHash {
            return Affinity { key: None, sticky };
        }
        let hash = |bytes: &[u8]| policy::mix(fnv1a(bytes));
        let found = match &self.settings.hash_key {
            AffinityKey::Source => None,
            AffinityKey::Header(name) => {
                let mut h = None;
                req.headers.any_value(name, &mut |v| {
                    h = Some(hash(v));
                    true
                });
                h
            }
            AffinityKey::Cookie(name) => cookie(req, name.as_bytes(), |v| Some(hash(v))),
        };
        let source = || match req.source {
            std::net::IpAddr::V4(v4) => hash(&v4.octets()),
            std::net::IpAddr::V6(v6) => hash(&v6.octets()),
        };
        Affinity {
            key: Some(found.unwrap_or_else(source)),
            sticky,
        }
    }

    /// The `Set-Cookie` value that keeps the client on `worker`, which just answered: when the
    /// group has stickiness and, for application-based stickiness, the worker's response set
    /// the application's cookie (`sets_cookie` says whether it set the one named).
    pub fn sticky_cookie(
        &self,
        worker: SocketAddr,
        sets_cookie: impl Fn(&[u8]) -> bool,
    ) -> Option<String> {
        let s = self.settings.stickiness.as_ref()?;
        if s.app_cookie
            .as_ref()
            .is_some_and(|app| !sets_cookie(app.as_bytes()))
        {
            return None;
        }
        Some(format!(
            "{}={:016x}; Max-Age={}; Path=/; HttpOnly",
            s.cookie,
            policy::worker_token(worker),
            s.duration.as_secs()
        ))
    }

    pub fn policy(&self) -> Policy {
        Policy::ALL[self.policy.load(Ordering::Relaxed) as usize]
    }

    pub fn telemetry(&self) -> TelemetrySource {
        TelemetrySource::ALL[self.telemetry.load(Ordering::Relaxed) as usize]
    }

    /// Switches policy and telemetry source at runtime (admin API); takes effect for the next
    /// pick. Lasts until the next reload.
    pub fn switch(&self, policy: Policy, telemetry: TelemetrySource) {
        self.policy.store(policy as u8, Ordering::Relaxed);
        self.telemetry.store(telemetry as u8, Ordering::Relaxed);
    }

    pub fn workers(&self) -> arc_swap::Guard<Arc<Vec<Arc<Worker>>>> {
        self.workers.load()
    }

    /// The workers discovery added to the configured ones.
    pub fn discovered(&self) -> Vec<Arc<Worker>> {
        self.workers()
            .iter()
            .filter(|w| !self.static_workers.iter().any(|s| s.addr == w.addr))
            .cloned()
            .collect()
    }

    /// Whether `other` finds its workers where this group does.
    pub fn same_discovery(&self, other: &Group) -> bool {
        self.settings.discovery_file == other.settings.discovery_file
            && self.settings.discovery == other.settings.discovery
    }

    /// Replaces the discovered part of the group: static workers plus `discovered`.
    pub fn set_discovered(&self, discovered: Vec<Arc<Worker>>) {
        let mut all = self.static_workers.clone();
        for w in discovered {
            if !all.iter().any(|s| s.addr == w.addr) {
                all.push(w);
            }
        }
        self.workers.store(Arc::new(all));
    }

    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Whether `candidate` may be ejected: within the cap, and never the group's last
    /// available worker (ejection must not empty a group; health checks decide that).
    pub fn may_eject(&self, candidate: &Worker, now: u64) -> bool {
        let ws = self.workers();
        let ejected = ws.iter().filter(|w| w.is_ejected(now)).count();
        let cap = (ws.len() * self.settings.outlier.max_ejected_percent as usize / 100).max(1);
        let another = ws
            .iter()
            .any(|w| w.addr != candidate.addr && w.is_available(now));
        ejected < cap && another
    }

    /// Whether some worker of the group could take traffic (health and ejection permitting).
    pub fn any_available(&self) -> bool {
        let now = now_us();
        self.workers().iter().any(|w| w.is_available(now))
    }

    /// Whether a worker outside `tried` is available to take a retry.
    pub fn has_untried(&self, tried: &[SocketAddr]) -> bool {
        let now = now_us();
        self.workers()
            .iter()
            .any(|w| untried(w, tried) && w.is_available(now))
    }

    /// Claims an in-flight slot on a worker chosen by the group's policy, excluding `tried`.
    /// When every eligible worker is at its cap the request waits in line (`line.rs`; bounded
    /// by the queue size and `queue_timeout`, and by the request's own deadline) for a slot to
    /// free. A retry waits beside the line, not in it: it avoids a worker the line may be
    /// waiting for.
    pub async fn acquire(
        &self,
        tried: &[SocketAddr],
        affinity: Affinity,
        signal: &CapacitySignal,
        request_deadline: tokio::time::Instant,
    ) -> Result<InFlight, PickError> {
        let first_try = tried.is_empty();
        // With others waiting, a new request goes behind them rather than taking the slot the
        // front of the line was woken for.
        if !(first_try && self.queued.load(Ordering::Relaxed) > 0) {
            match self.try_pick(tried, affinity) {
                Attempt::Got(f) => return Ok(f),
                Attempt::Failed(e) => return Err(e),
                Attempt::Full => {}
            }
        }
        if self.queued.fetch_add(1, Ordering::Relaxed) >= self.settings.queue {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(PickError::Overloaded);
        }
        signal.waiting.fetch_add(1, Ordering::Relaxed);
        // Undone however the wait ends, the request's future dropped included (its client
        // went away): a count left behind would fill the queue for good.
        let _queued = Queued {
            group: self,
            signal,
        };
        let queue_deadline = tokio::time::Instant::now() + self.settings.queue_timeout;
        let deadline = queue_deadline.min(request_deadline);
        let timed_out = || {
            if deadline == queue_deadline {
                PickError::Overloaded
            } else {
                PickError::Deadline
            }
        };
        let place = first_try.then(|| self.line.join());
        let result = loop {
            if let Some(place) = &place {
                if tokio::time::timeout_at(deadline, place.front())
                    .await
                    .is_err()
                {
                    break Err(timed_out());
                }
            }
            let freed = signal.notify.notified();
            tokio::pin!(freed);
            // Register before re-checking, so a slot freed in between is not missed.
            freed.as_mut().enable();
            match self.try_pick(tried, affinity) {
                Attempt::Got(f) => break Ok(f),
                Attempt::Failed(e) => break Err(e),
                Attempt::Full => {}
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                break Err(timed_out());
            }
        };
        result
    }

    fn try_pick(&self, tried: &[SocketAddr], affinity: Affinity) -> Attempt {
        let workers = self.workers();
        let now = now_us();
        let mut candidates: Vec<&Arc<Worker>> = Vec::with_capacity(workers.len());
        let mut untried_available = false;
        let mut any_untried = false;
        for w in workers.iter() {
            if !untried(w, tried) {
                continue;
            }
            any_untried = true;
            if w.is_available(now) {
                untried_available = true;
                if w.has_capacity() {
                    candidates.push(w);
                }
            }
        }
        if candidates.is_empty() {
            if untried_available {
                return Attempt::Full;
            }
            if !any_untried {
                return Attempt::Failed(if tried.is_empty() {
                    PickError::NoHealthyWorkers
                } else {
                    PickError::NoOtherWorker
                });
            }
            // Nothing healthy is left to try.
            let none_healthy = !workers.iter().any(|w| w.is_available(now));
            if !(none_healthy && self.settings.when_all_unhealthy == WhenAllUnhealthy::FailOpen) {
                return Attempt::Failed(PickError::NoHealthyWorkers);
            }
            candidates.extend(
                workers
                    .iter()
                    .filter(|w| !tried.contains(&w.addr) && !w.is_draining() && w.has_capacity()),
            );
            if candidates.is_empty() {
                return Attempt::Full;
            }
        }
        let ctx = PickContext {
            policy: self.policy(),
            source: self.telemetry(),
            stale_after_us: self.stale_after_us,
            now,
            rr: &self.rr,
            weighted: &self.weighted,
            weights: &self.settings.weights,
            slow_start_us: self.settings.slow_start.as_micros() as u64,
            affinity,
        };
        let i = policy::pick(&candidates, &ctx);
        Attempt::Got(candidates[i].begin())
    }
}

/// A request counted as waiting in a group's queue.
struct Queued<'a> {
    group: &'a Group,
    signal: &'a CapacitySignal,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.signal.waiting.fetch_sub(1, Ordering::Relaxed);
        self.group.queued.fetch_sub(1, Ordering::Relaxed);
    }
}

enum Attempt {
    Got(InFlight),
    Full,
    Failed(PickError),
}

/// A retry budget over a 10-second sliding window (Finagle's, Envoy's): retries may add at most
/// `percent` of the requests seen in the window, and at least `min_per_second` are always
/// allowed, so a sick group is not hammered by its own retries.
pub struct RetryBudget {
    percent: u64,
    min_per_window: u64,
    buckets: [Bucket; WINDOW_SECS],
}

const WINDOW_SECS: usize = 10;

#[derive(Default)]
struct Bucket {
    second: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

impl RetryBudget {
    pub fn new(percent: u32, min_per_second: u32) -> RetryBudget {
        RetryBudget {
            percent: percent as u64,
            min_per_window: min_per_second as u64 * WINDOW_SECS as u64,
            buckets: Default::default(),
        }
    }

    fn bucket(&self, second: u64) -> &Bucket {
        let b = &self.buckets[second as usize % WINDOW_SECS];
        let seen = b.second.load(Ordering::Acquire);
        if seen != second
            && b.second
                .compare_exchange(seen, second, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // This thread rotated the bucket: start it empty. (A count racing with the
            // rotation may be lost; the budget is an estimate either way.)
            b.requests.store(0, Ordering::Relaxed);
            b.retries.store(0, Ordering::Relaxed);
        }
        b
    }

    fn window(&self, now_s: u64) -> (u64, u64) {
        self.buckets
            .iter()
            .filter(|b| now_s.saturating_sub(b.second.load(Ordering::Acquire)) < WINDOW_SECS as u64)
            .fold((0, 0), |(q, r), b| {
                (
                    q + b.requests.load(Ordering::Relaxed),
                    r + b.retries.load(Ordering::Relaxed),
                )
            })
    }

    pub fn on_request(&self) {
        self.bucket(now_us() / 1_000_000)
            .requests
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget if there is room.
    pub fn try_retry(&self) -> bool {
        let now_s = now_us() / 1_000_000;
        let (requests, retries) = self.window(now_s);
        let allowed = (requests * self.percent / 100).max(self.min_per_window);
        if retries >= allowed {
            return false;
        }
        self.bucket(now_s).retries.fetch_add(1, Ordering::Relaxed);
        true
    }
}

/// A worker a request may still go to: not tried by it yet, and not being drained.
fn untried(w: &Worker, tried: &[SocketAddr]) -> bool {
    !tried.contains(&w.addr) && !w.is_draining()
}

/// Whether a response's fields set the cookie `name`.
fn sets_cookie<'f>(mut fields: impl Iterator<Item = (&'f [u8], &'f [u8])>, name: &[u8]) -> bool {
    fields.any(|(n, v)| {
        n.eq_ignore_ascii_case(b"set-cookie")
            && v.trim_ascii_start().starts_with(name)
            && v.trim_ascii_start().get(name.len()) == Some(&b'=')
    })
}

/// A rule's response edits (if any) plus the sticky cookie for `worker`, which answered with
/// `fields`, when its group sets one.
pub fn sticky_edits<'f>(
    route: &RouteEntry,
    worker: SocketAddr,
    fields: impl Iterator<Item = (&'f [u8], &'f [u8])> + Clone,
    edits: Option<&HeaderEdits>,
) -> Option<HeaderEdits> {
    let cookie = route
        .group
        .sticky_cookie(worker, |name| sets_cookie(fields.clone(), name))?;
    let mut e = edits.cloned().unwrap_or_default();
    e.add.insert("set-cookie".into(), cookie);
    Some(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches("/cluster1", "/cluster1"));
        assert!(prefix_matches("/cluster1", "/cluster1/x"));
        assert!(!prefix_matches("/cluster1", "/cluster10"));
        assert!(prefix_matches("/api/", "/api/v1"));
        assert!(!prefix_matches("/api/", "/api"));
    }

    #[test]
    fn discovered_workers_are_those_beyond_the_configured_ones() {
        let text = "[[listener]]\naddress = \"127.0.0.1:0\"\n\
                    [[route]]\nprefix = \"/\"\ntarget_group = \"g\"\n\
                    [[target_group]]\nname = \"g\"\nworkers = [\"127.0.0.1:9001\"]\n\
                    discovery_file = \"w.json\"\n";
        let config = Arc::new(Config::parse(text, "b.toml", None).unwrap());
        let fleet = Fleet::default();
        let old = Router::build(config.clone(), &fleet, 1);
        let (found, _) = fleet.get_or_add("127.0.0.1:9002".parse().unwrap(), 8);
        old.groups[0].set_discovered(vec![found]);
        assert_eq!(old.groups[0].workers().len(), 2);
        let discovered: Vec<SocketAddr> =
            old.groups[0].discovered().iter().map(|w| w.addr).collect();
        assert_eq!(discovered, vec!["127.0.0.1:9002".parse().unwrap()]);

        let new = Router::build(config, &fleet, 2);
        assert!(new.groups[0].same_discovery(&old.groups[0]));
        let moved = &new.groups[0];
        moved.set_discovered(old.groups[0].discovered());
        assert_eq!(moved.workers().len(), 2);
        assert!(Arc::ptr_eq(
            &moved.workers()[1],
            &old.groups[0].workers()[1]
        ));
    }

    #[test]
    fn retry_budget_allows_the_minimum_then_a_share() {
        let b = RetryBudget::new(20, 1);
        // 10-second window: 10 retries guaranteed.
        assert_eq!((0..50).filter(|_| b.try_retry()).count(), 10);
        for _ in 0..100 {
            b.on_request();
        }
        // 20% of 100 = 20 allowed in the window, 10 already used.
        assert_eq!((0..50).filter(|_| b.try_retry()).count(), 10);
    }
}
