//! Listener rules at request time: which rule a request matches (host, path, method, headers,
//! query, source address), and what it decides — a target group (picked by weight when
//! several), a redirect, or a fixed response. The schema and its validation are in
//! `config/rules.rs`; the prefix routes every unmatched request falls through to are in
//! `route.rs`.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::config::rules::{Action, Conditions, FixedResponse, HeaderEdits, Redirect, Rule};
use crate::route::RouteEntry;

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

/// Field values by name, however the protocol holds them.
pub trait HeaderSource {
    /// Whether any value of the field `name` (lowercase) satisfies `check`.
    fn any_value(&self, name: &str, check: &mut dyn FnMut(&[u8]) -> bool) -> bool;
}

impl HeaderSource for http::HeaderMap {
    fn any_value(&self, name: &str, check: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        self.get_all(name).iter().any(|v| check(v.as_bytes()))
    }
}

/// What rules look at in a request.
pub struct RequestView<'a> {
    /// The `Host` (or `:authority`), port included if sent.
    pub host: Option<&'a [u8]>,
    pub path: &'a str,
    /// After the `?`, without it.
    pub query: &'a [u8],
    pub method: &'a str,
    pub source: IpAddr,
    /// `http` or `https`: how the client reached the balancer.
    pub protocol: &'a str,
    pub headers: &'a dyn HeaderSource,
}

impl RuleEntry {
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        conditions_hold(&self.rule.conditions, req)
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

fn conditions_hold(c: &Conditions, req: &RequestView<'_>) -> bool {
    let host = req.host.map(host_without_port).unwrap_or_default();
    (c.host.is_empty() || c.host.iter().any(|p| p.matches(host)))
        && (c.path.is_empty() || c.path.iter().any(|p| p.matches(req.path.as_bytes())))
        && (c.method.is_empty() || c.method.iter().any(|m| m == req.method))
        && (c.source.is_empty() || c.source.iter().any(|n| n.contains(req.source)))
        && (c.protocol.is_empty() || c.protocol.iter().any(|p| p == req.protocol))
        && c.header.iter().all(|(name, patterns)| {
            req.headers
                .any_value(name, &mut |v| patterns.iter().any(|p| p.matches(v)))
        })
        && c.query.iter().all(|(key, patterns)| {
            query_pairs(req.query)
                .any(|(k, v)| k == key.as_bytes() && patterns.iter().any(|p| p.matches(v)))
        })
}

/// `host[:port]` → `host` (an IPv6 literal keeps its brackets).
pub fn host_without_port(host: &[u8]) -> &[u8] {
    match host.iter().rposition(|b| *b == b':') {
        Some(i) if !host[i..].contains(&b']') => &host[..i],
        _ => host,
    }
}

/// `a=1&b=2` as pairs, as sent (not percent-decoded: patterns are written as sent too).
fn query_pairs(query: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    query
        .split(|b| *b == b'&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.iter().position(|b| *b == b'=') {
            Some(i) => (&p[..i], &p[i + 1..]),
            None => (p, &b""[..]),
        })
}

impl Decision<'_> {
    /// The status of a rule's own answer (0 for a forward: the worker's decides).
    pub fn answer_status(&self) -> u16 {
        match self {
            Decision::Forward { .. } => 0,
            Decision::Redirect(_, r) => r.status,
            Decision::Fixed(_, f) => f.status,
        }
    }
}

/// A rule's own answer (a redirect or a fixed response) as an HTTP/1.1 message, head and
/// body, through the same response rewriting as a worker's (`via`, `x-request-id`, the rule's
/// header edits). Empty for a forward.
pub fn answer(
    decision: &Decision<'_>,
    from: &RedirectFrom<'_>,
    request_id: &[u8],
    close: bool,
    edits: Option<&HeaderEdits>,
) -> Vec<u8> {
    let location;
    let (status, field, body): (u16, (&[u8], &[u8]), &[u8]) = match decision {
        Decision::Forward { .. } => return Vec::new(),
        Decision::Redirect(_, r) => {
            location = crate::rules::location(r, from);
            (r.status, (b"location", location.as_bytes()), b"")
        }
        Decision::Fixed(_, f) => (
            f.status,
            (b"content-type", f.content_type.as_bytes()),
            f.body.as_bytes(),
        ),
    };
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let mut out = Vec::with_capacity(256 + body.len());
    crate::rewrite::response_head(
        &mut out,
        &crate::rewrite::ResponseParts {
            status,
            reason: reason.as_bytes(),
            request_id,
            framing: crate::rewrite::OutFraming::Length(body.len() as u64),
            forward_load_header: false,
            close,
            upgrade: false,
            edits,
        },
        std::iter::once(field),
    );
    out.extend_from_slice(body);
    out
}

/// The parts of a request a redirect's `#{...}` placeholders stand for.
pub struct RedirectFrom<'a> {
    /// `http` or `https`: how the client reached the balancer.
    pub protocol: &'a str,
    pub host: &'a [u8],
    /// The listener's port.
    pub port: u16,
    pub path: &'a str,
    pub query: &'a [u8],
}

/// The `Location` of a redirect.
pub fn location(r: &Redirect, from: &RedirectFrom<'_>) -> String {
    let host = String::from_utf8_lossy(host_without_port(from.host));
    let query = String::from_utf8_lossy(from.query);
    let port = from.port.to_string();
    let fill = |part: &Option<String>, own: &str| -> String {
        match part {
            None => own.to_owned(),
            Some(p) => p
                .replace("#{protocol}", from.protocol)
                .replace("#{host}", &host)
                .replace("#{port}", &port)
                .replace("#{path}", from.path)
                .replace("#{query}", &query),
        }
    };
    let protocol = fill(&r.protocol, from.protocol);
    // A protocol change without a port moves to that protocol's default port, as ALB does.
    let port = match (&r.port, protocol == from.protocol) {
        (None, false) => String::new(),
        _ => fill(&r.port, &port),
    };
    let default_port = matches!(
        (protocol.as_str(), port.as_str()),
        ("http", "80") | ("https", "443") | (_, "")
    );
    let mut out = format!("{protocol}://{}", fill(&r.host, &host));
    if !default_port {
        out.push(':');
        out.push_str(&port);
    }
    out.push_str(&fill(&r.path, from.path));
    let query = fill(&r.query, &query);
    if !query.is_empty() {
        out.push('?');
        out.push_str(&query);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from() -> RedirectFrom<'static> {
        RedirectFrom {
            protocol: "http",
            host: b"shop.example:8080",
            port: 8080,
            path: "/cart",
            query: b"id=7",
        }
    }

    #[test]
    fn http_to_https_keeps_host_path_and_query_on_the_default_port() {
        let r = Redirect {
            status: 301,
            protocol: Some("https".into()),
            host: None,
            port: None,
            path: None,
            query: None,
        };
        assert_eq!(location(&r, &from()), "https://shop.example/cart?id=7");
        let with_port = Redirect {
            port: Some("8443".into()),
            ..r.clone()
        };
        assert_eq!(
            location(&with_port, &from()),
            "https://shop.example:8443/cart?id=7"
        );
        let moved = Redirect {
            protocol: None,
            path: Some("/new#{path}".into()),
            query: Some(String::new()),
            ..r
        };
        assert_eq!(
            location(&moved, &from()),
            "http://shop.example:8080/new/cart"
        );
    }

    #[test]
    fn hosts_lose_their_port_and_queries_split_into_pairs() {
        assert_eq!(host_without_port(b"a.example:80"), b"a.example");
        assert_eq!(host_without_port(b"[::1]:80"), b"[::1]");
        assert_eq!(host_without_port(b"[::1]"), b"[::1]");
        let pairs: Vec<_> = query_pairs(b"a=1&&b&c=x=y").collect();
        assert_eq!(pairs, [(&b"a"[..], &b"1"[..]), (b"b", b""), (b"c", b"x=y")]);
    }
}
