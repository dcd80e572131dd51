//! Listener rules (`[[rule]]`), as ALB has them: conditions on host, path, method, headers,
//! query and source address, checked in priority order before the prefix routes; the first
//! rule that matches decides — forward (to one target group, or weighted across several),
//! redirect, or a fixed response — and may edit request and response headers.
//!
//! This file holds the schema and its validation into typed values; matching a request is
//! `rules.rs` at the crate's root.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::{ConfigError, Locator};

/// One `[[rule]]` as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Lower first; unique.
    pub priority: Spanned<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host: Vec<Spanned<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub path: Vec<Spanned<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub method: Vec<Spanned<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source: Vec<Spanned<String>>,
    /// How the client reached the balancer: `http` or `https` (e.g. to redirect only plain
    /// requests to HTTPS).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub protocol: Vec<Spanned<String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub header: BTreeMap<String, Vec<String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query: BTreeMap<String, Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward: Option<Spanned<ForwardSpec>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Spanned<Redirect>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed_response: Option<Spanned<FixedResponse>>,
    #[serde(default, skip_serializing_if = "HeaderEdits::is_empty")]
    pub request_headers: HeaderEdits,
    #[serde(default, skip_serializing_if = "HeaderEdits::is_empty")]
    pub response_headers: HeaderEdits,
}

/// `forward = "group"`, or weighted: `forward = [{ target_group = "blue", weight = 9 }, ...]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum ForwardSpec {
    One(String),
    Weighted(Vec<WeightedSpec>),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedSpec {
    pub target_group: String,
    pub weight: u32,
}

/// Where a redirect sends the client. Each part may use `#{protocol}`, `#{host}`, `#{port}`,
/// `#{path}` and `#{query}` (the request's own); a part left out keeps the request's.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    /// 301, 302, 303, 307 or 308.
    #[serde(default = "default_redirect_status")]
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
}

fn default_redirect_status() -> u16 {
    301
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FixedResponse {
    pub status: u16,
    #[serde(default = "default_content_type")]
    pub content_type: String,
    #[serde(default)]
    pub body: String,
}

fn default_content_type() -> String {
    "text/plain".into()
}

/// Header changes: `remove` these, `set` these (replacing any), `add` these (beside any).
/// Names are matched without regard to case.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderEdits {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
}

impl HeaderEdits {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    /// Whether the field `name` is removed or replaced.
    pub fn drops(&self, name: &[u8]) -> bool {
        let is = |n: &String| n.as_bytes().eq_ignore_ascii_case(name);
        self.remove.iter().any(is) || self.set.keys().any(is)
    }

    /// The fields to write: the set ones, then the added ones.
    pub fn written(&self) -> impl Iterator<Item = (&str, &str)> {
        self.set
            .iter()
            .chain(&self.add)
            .map(|(n, v)| (n.as_str(), v.as_str()))
    }
}

/// A validated rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub priority: u32,
    pub conditions: Conditions,
    pub action: Action,
    pub request_headers: HeaderEdits,
    pub response_headers: HeaderEdits,
}

/// Every listed condition must hold; within one, any listed value will do.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Conditions {
    pub host: Vec<Pattern>,
    pub path: Vec<Pattern>,
    pub method: Vec<String>,
    pub source: Vec<Cidr>,
    pub protocol: Vec<String>,
    pub header: Vec<(String, Vec<Pattern>)>,
    pub query: Vec<(String, Vec<Pattern>)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Target groups (indexes into [`super::Config::target_groups`]) with their weights.
    Forward(Vec<(usize, u32)>),
    Redirect(Redirect),
    Fixed(FixedResponse),
}

/// A wildcard pattern: `*` any run of characters, `?` exactly one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: Vec<u8>,
    ignore_case: bool,
}

impl Pattern {
    pub fn new(text: &str, ignore_case: bool) -> Pattern {
        Pattern {
            text: text.as_bytes().to_vec(),
            ignore_case,
        }
    }

    /// Glob matching with one point to back up to (the last `*`): linear in practice.
    pub fn matches(&self, s: &[u8]) -> bool {
        let (p, eq) = (&self.text, |a: u8, b: u8| {
            a == b || (self.ignore_case && a.eq_ignore_ascii_case(&b))
        });
        let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
        while j < s.len() {
            if i < p.len() && (p[i] == b'?' || (p[i] != b'*' && eq(p[i], s[j]))) {
                i += 1;
                j += 1;
            } else if i < p.len() && p[i] == b'*' {
                star = Some(i);
                mark = j;
                i += 1;
            } else if let Some(st) = star {
                i = st + 1;
                mark += 1;
                j = mark;
            } else {
                return false;
            }
        }
        p[i..].iter().all(|c| *c == b'*')
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.text))
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.bits)
    }
}

/// An address block, `10.0.0.0/8` or `2001:db8::/32`; a bare address is a block of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let net: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{s}` is not an address block like 10.0.0.0/8"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) => b
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("`{s}`: the prefix length must be 0..={max}"))?,
        };
        Ok(Cidr { net, bits })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 client on a dual-stack socket arrives as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - self.bits as u32).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - self.bits as u32).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// Checks every `[[rule]]` against the target groups (`names`); sorted by priority.
pub fn rules(
    specs: &[Spanned<RuleSpec>],
    names: &BTreeMap<String, usize>,
    loc: &Locator,
) -> Result<Vec<Rule>, ConfigError> {
    let mut out = Vec::new();
    let mut priorities = HashSet::new();
    for spec in specs {
        let r = spec.get_ref();
        let priority = *r.priority.get_ref();
        if !(1..=50_000).contains(&priority) || !priorities.insert(priority) {
            return Err(loc.at(
                r.priority.span(),
                format!("rule priority {priority} must be within 1..=50000 and used once"),
            ));
        }
        let action = action(r, spec.span(), names, loc)?;
        for edits in [&r.request_headers, &r.response_headers] {
            check_edits(edits, spec.span(), loc)?;
        }
        out.push(Rule {
            name: r.name.clone().unwrap_or_else(|| format!("rule-{priority}")),
            priority,
            conditions: conditions(r, loc)?,
            action,
            request_headers: r.request_headers.clone(),
            response_headers: r.response_headers.clone(),
        });
    }
    out.sort_by_key(|r| r.priority);
    Ok(out)
}

fn conditions(r: &RuleSpec, loc: &Locator) -> Result<Conditions, ConfigError> {
    for p in &r.path {
        if !p.get_ref().starts_with('/') {
            return Err(loc.at(p.span(), "a path pattern must start with `/`"));
        }
    }
    let mut method = Vec::new();
    for m in &r.method {
        let text = m.get_ref();
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_uppercase() || b == b'-') {
            return Err(loc.at(m.span(), format!("`{text}` is not a method like GET")));
        }
        method.push(text.clone());
    }
    let mut source = Vec::new();
    for s in &r.source {
        source.push(Cidr::parse(s.get_ref()).map_err(|e| loc.at(s.span(), e))?);
    }
    for p in &r.protocol {
        if !["http", "https"].contains(&p.get_ref().as_str()) {
            return Err(loc.at(p.span(), "protocol: `http` or `https`"));
        }
    }
    let patterns = |list: &Vec<String>, ignore_case| {
        list.iter()
            .map(|p| Pattern::new(p, ignore_case))
            .collect::<Vec<_>>()
    };
    Ok(Conditions {
        host: r
            .host
            .iter()
            .map(|h| Pattern::new(h.get_ref(), true))
            .collect(),
        path: r
            .path
            .iter()
            .map(|p| Pattern::new(p.get_ref(), false))
            .collect(),
        method,
        source,
        protocol: r.protocol.iter().map(|p| p.get_ref().clone()).collect(),
        header: r
            .header
            .iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), patterns(v, true)))
            .collect(),
        query: r
            .query
            .iter()
            .map(|(k, v)| (k.clone(), patterns(v, false)))
            .collect(),
    })
}

fn action(
    r: &RuleSpec,
    span: std::ops::Range<usize>,
    names: &BTreeMap<String, usize>,
    loc: &Locator,
) -> Result<Action, ConfigError> {
    match (&r.forward, &r.redirect, &r.fixed_response) {
        (Some(f), None, None) => forward(f, names, loc),
        (None, Some(redirect), None) => {
            let status = redirect.get_ref().status;
            if ![301, 302, 303, 307, 308].contains(&status) {
                return Err(loc.at(
                    redirect.span(),
                    format!("redirect status {status}: use 301, 302, 303, 307 or 308"),
                ));
            }
            if let Some(p) = &redirect.get_ref().protocol {
                if !["http", "https", "#{protocol}"].contains(&p.as_str()) {
                    return Err(loc.at(redirect.span(), "redirect protocol: http or https"));
                }
            }
            Ok(Action::Redirect(redirect.get_ref().clone()))
        }
        (None, None, Some(fixed)) => {
            let f = fixed.get_ref();
            if !(200..=599).contains(&f.status) || f.content_type.contains(['\r', '\n']) {
                return Err(loc.at(
                    fixed.span(),
                    "fixed_response: status within 200..=599, content_type on one line",
                ));
            }
            Ok(Action::Fixed(f.clone()))
        }
        _ => Err(loc.at(
            span,
            "a rule needs exactly one of `forward`, `redirect` or `fixed_response`",
        )),
    }
}

fn forward(
    f: &Spanned<ForwardSpec>,
    names: &BTreeMap<String, usize>,
    loc: &Locator,
) -> Result<Action, ConfigError> {
    let targets: Vec<(&str, u32)> = match f.get_ref() {
        ForwardSpec::One(g) => vec![(g, 1)],
        ForwardSpec::Weighted(list) => list
            .iter()
            .map(|w| (w.target_group.as_str(), w.weight))
            .collect(),
    };
    if targets.is_empty() || targets.iter().all(|(_, w)| *w == 0) {
        return Err(loc.at(
            f.span(),
            "forward needs a target group with a weight above 0",
        ));
    }
    let mut out = Vec::new();
    for (group, weight) in targets {
        let Some(&idx) = names.get(group) else {
            let known: Vec<&str> = names.keys().map(String::as_str).collect();
            return Err(loc.at(
                f.span(),
                format!(
                    "unknown target group `{group}` (defined: {})",
                    known.join(", ")
                ),
            ));
        };
        if weight > 999 {
            return Err(loc.at(f.span(), "forward weights must be within 0..=999"));
        }
        out.push((idx, weight));
    }
    Ok(Action::Forward(out))
}

fn check_edits(
    edits: &HeaderEdits,
    span: std::ops::Range<usize>,
    loc: &Locator,
) -> Result<(), ConfigError> {
    let names = edits
        .remove
        .iter()
        .chain(edits.set.keys())
        .chain(edits.add.keys());
    for name in names {
        let token = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        // What the balancer itself frames and forwards is not an operator's to change.
        let reserved = ["host", "content-length", "transfer-encoding", "connection"]
            .iter()
            .any(|r| r.eq_ignore_ascii_case(name));
        if !token || reserved {
            return Err(loc.at(
                span.clone(),
                format!("header `{name}`: not a field name a rule may change"),
            ));
        }
    }
    for value in edits.set.values().chain(edits.add.values()) {
        if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(loc.at(span.clone(), "a header value must be on one line"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_as_alb_documents() {
        let host = Pattern::new("*.example.com", true);
        assert!(host.matches(b"api.Example.COM"));
        assert!(!host.matches(b"example.com"));
        let path = Pattern::new("/v?/items/*", false);
        assert!(path.matches(b"/v2/items/7"));
        assert!(path.matches(b"/v2/items/"));
        assert!(!path.matches(b"/v10/items/7"));
        assert!(!Pattern::new("/API/*", false).matches(b"/api/x"));
        assert!(Pattern::new("*a*b*", false).matches(b"xxaxxbxx"));
        assert!(!Pattern::new("*a*b", false).matches(b"xxbxxa"));
        assert!(Pattern::new("*", false).matches(b""));
    }

    #[test]
    fn address_blocks_contain_their_addresses() {
        let net = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("2001:db8::/32")
            .unwrap()
            .contains("2001:db8:1::1".parse().unwrap()));
        assert!(Cidr::parse("127.0.0.1")
            .unwrap()
            .contains("127.0.0.1".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("ten/8").is_err());
    }
}
