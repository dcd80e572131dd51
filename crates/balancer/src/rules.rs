//! Listener rules at request time: what a rule looks at in a request (`RequestView`, any
//! protocol's fields through `HeaderSource`), whether its conditions hold, and the answers a
//! rule gives itself (a redirect's `Location`, a fixed response). The schema and its
//! validation are in `config/rules.rs`; the rules of a router generation, their forward
//! targets and the decision for a request are in `route.rs`, beside the prefix routes every
//! unmatched request falls through to.

use std::net::IpAddr;

use crate::config::rules::{Conditions, FixedResponse, HeaderEdits, Redirect};

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

/// Whether every condition of a rule holds for `req`.
pub fn conditions_hold(c: &Conditions, req: &RequestView<'_>) -> bool {
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

/// What a rule answers itself, instead of forwarding.
#[derive(Clone, Copy)]
pub enum RuleAnswer<'r> {
    Redirect(&'r Redirect),
    Fixed(&'r FixedResponse),
}

impl RuleAnswer<'_> {
    pub fn status(&self) -> u16 {
        match self {
            RuleAnswer::Redirect(r) => r.status,
            RuleAnswer::Fixed(f) => f.status,
        }
    }
}

/// A rule's own answer as an HTTP/1.1 message, head and body, through the same response
/// rewriting as a worker's (`via`, `x-request-id`, the rule's header edits).
pub fn answer(
    answer: RuleAnswer<'_>,
    from: &RedirectFrom<'_>,
    request_id: &[u8],
    close: bool,
    edits: Option<&HeaderEdits>,
) -> Vec<u8> {
    let location;
    let (field, body): ((&[u8], &[u8]), &[u8]) = match answer {
        RuleAnswer::Redirect(r) => {
            location = self::location(r, from);
            ((b"location", location.as_bytes()), b"")
        }
        RuleAnswer::Fixed(f) => (
            (b"content-type", f.content_type.as_bytes()),
            f.body.as_bytes(),
        ),
    };
    let status = answer.status();
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
