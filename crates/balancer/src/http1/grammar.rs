//! The character classes and small productions of RFC 9110 and RFC 3986 the codec checks
//! values against.

use std::net::Ipv6Addr;

/// `tchar` (RFC 9110 §5.6.2): the characters of a token.
pub(super) fn is_tchar(b: u8) -> bool {
    matches!(b,
        b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9'
        | b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+'
        | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~')
}

pub(super) fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}

/// `OWS` (RFC 9110 §5.6.3).
pub(super) fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

pub(super) fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if !is_ows(*first) {
            break;
        }
        s = rest;
    }
    while let [rest @ .., last] = s {
        if !is_ows(*last) {
            break;
        }
        s = rest;
    }
    s
}

/// The elements of a comma-separated list value (RFC 9110 §5.6.1), OWS trimmed; empty
/// elements are kept so each caller decides whether they are an error.
pub(super) fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(trim_ows)
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn is_sub_delim(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
    )
}

/// Whether every `%` in `s` starts a `pct-encoded` triplet and every other byte passes `allowed`.
fn all_chars(s: &[u8], allowed: impl Fn(u8) -> bool) -> bool {
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            let triplet = s.get(i + 1..i + 3);
            if !triplet.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                return false;
            }
            i += 3;
        } else if allowed(s[i]) {
            i += 1;
        } else {
            return false;
        }
    }
    true
}

/// `path-abempty [ "?" query ]` (RFC 3986 §3.3, §3.4): what follows the authority of an
/// absolute-form target, and (starting with `/`) an origin-form target.
pub(super) fn is_path_and_query(s: &[u8]) -> bool {
    let (path, query) = match s.iter().position(|&b| b == b'?') {
        Some(q) => (&s[..q], Some(&s[q + 1..])),
        None => (s, None),
    };
    let pchar = |b: u8| is_unreserved(b) || is_sub_delim(b) || b == b':' || b == b'@';
    let path_ok =
        (path.is_empty() || path[0] == b'/') && all_chars(path, |b| pchar(b) || b == b'/');
    path_ok && query.is_none_or(|q| all_chars(q, |b| pchar(b) || b == b'/' || b == b'?'))
}

/// What a `uri-host [ ":" port ]` value holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Authority {
    /// An empty value (RFC 9110 §7.2 allows it when the target URI has no authority).
    Empty,
    Valid,
    Invalid,
}

/// Checks `uri-host [ ":" port ]` (RFC 9110 §7.2, RFC 3986 §3.2.2–3.2.3): a bracketed IPv6
/// address, or a reg-name (which covers IPv4 dotted quads); a port is 1 to 5 digits ≤ 65535.
/// An empty port (`host:`) is refused although RFC 3986 allows it: nothing sends it and
/// recipients disagree on what it means. userinfo (`a@b`) is not part of this grammar.
pub(super) fn authority(s: &[u8], port_required: bool) -> Authority {
    if s.is_empty() && !port_required {
        return Authority::Empty;
    }
    let (host, port) = split_port(s);
    let host_ok = if host.first() == Some(&b'[') {
        is_ipv6_literal(host)
    } else {
        // A comma is a sub-delim, but in a Host value it reads as two Host lines combined.
        !host.is_empty() && all_chars(host, |b| is_unreserved(b) || (is_sub_delim(b) && b != b','))
    };
    let port_ok = match port {
        Some(p) => is_port(p),
        None => !port_required,
    };
    if host_ok && port_ok {
        Authority::Valid
    } else {
        Authority::Invalid
    }
}

/// Splits `host:port` at the colon after the host (a bracketed IPv6 address holds colons).
fn split_port(s: &[u8]) -> (&[u8], Option<&[u8]>) {
    let host_end = if s.first() == Some(&b'[') {
        s.iter().position(|&b| b == b']').map_or(s.len(), |i| i + 1)
    } else {
        s.iter().position(|&b| b == b':').unwrap_or(s.len())
    };
    match &s[host_end..] {
        [] => (s, None),
        [b':', port @ ..] => (&s[..host_end], Some(port)),
        // Bytes after `]` that are not a port: let the host check fail on the whole.
        _ => (s, None),
    }
}

/// `"[" IPv6address "]"`; IPvFuture and zone identifiers have no use in HTTP and are refused.
fn is_ipv6_literal(host: &[u8]) -> bool {
    let Some(inner) = host.strip_prefix(b"[").and_then(|h| h.strip_suffix(b"]")) else {
        return false;
    };
    std::str::from_utf8(inner).is_ok_and(|a| a.parse::<Ipv6Addr>().is_ok())
}

fn is_port(p: &[u8]) -> bool {
    (1..=5).contains(&p.len())
        && p.iter().all(u8::is_ascii_digit)
        && p.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0')) <= 65_535
}
