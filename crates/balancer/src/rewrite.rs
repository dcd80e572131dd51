//! The heads workers and clients get: written as bytes straight from the parsed fields, no
//! header map in between.
//!
//! Towards a worker: hop-by-hop fields go (those RFC 9110 §7.6.1 names and those the
//! `Connection` field names), `Host` is the effective authority, the forwarding lists
//! (`X-Forwarded-For`, `Forwarded`, `Via`) keep every element the client sent with this hop's
//! appended, `X-Forwarded-Proto` and `X-Request-Id` are set, and the framing is fulcrum's own
//! (`Content-Length`, or `Transfer-Encoding` with every coding the client applied).
//! Towards a client: hop-by-hop fields and the worker's load report go, `Via` is appended,
//! `X-Request-Id` set, and the framing follows how fulcrum relays the body.

use crate::config::rules::HeaderEdits;
use crate::http1::Field;

/// Field names a proxy never forwards (RFC 9110 §7.6.1), lowercase. `Trailer` is not among
/// them any more (RFC 9110 §6.6.2): trailers pass, so does the field that announces them. `Transfer-Encoding` and
/// `Content-Length` are rewritten from the parsed framing rather than copied.
const HOP_BY_HOP: [&[u8]; 8] = [
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"transfer-encoding",
    b"upgrade",
    b"proxy-authenticate",
    b"proxy-authorization",
];

/// How a message's body is framed on the way out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutFraming<'a> {
    /// No body, and no framing field (GET, 204, 304...).
    None,
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: <codings>` (ending in `chunked`).
    Chunked(&'a [u8]),
    /// Framing fields exactly as the peer sent them (a response to HEAD announces the length
    /// of a body it does not carry).
    AsSent,
    /// No framing field: the body ends when the connection closes.
    Close,
    /// `Transfer-Encoding: <codings>` not ending in `chunked`: the body, still coded, ends when
    /// the connection closes (RFC 9112 §6.3).
    CodedUntilClose(&'a [u8]),
}

/// This hop's part of the forwarding fields, rendered once per client connection.
pub struct Hop {
    /// The client's address as `X-Forwarded-For` carries it.
    pub client_ip: String,
    /// `for=...;proto=...`: the start of this hop's `Forwarded` element.
    pub forwarded_for: String,
    pub proto: &'static str,
    /// The listener's port, for `X-Forwarded-Port`.
    pub port: Option<u16>,
}

impl Hop {
    pub fn new(peer: std::net::SocketAddr, port: Option<u16>, tls: bool) -> Hop {
        let ip = peer.ip();
        let proto = if tls { "https" } else { "http" };
        let for_ = match ip {
            std::net::IpAddr::V4(v4) => v4.to_string(),
            std::net::IpAddr::V6(v6) => format!("\"[{v6}]\""),
        };
        Hop {
            client_ip: ip.to_string(),
            forwarded_for: format!("for={for_};proto={proto}"),
            proto,
            port,
        }
    }
}

/// A request head for a worker.
pub struct RequestParts<'a> {
    pub method: &'a [u8],
    /// Path and query (origin form).
    pub target: &'a [u8],
    pub host: Option<&'a [u8]>,
    /// The client's version, for `Via` ("1.1", "1.0" or "2").
    pub version: &'static str,
    pub request_id: &'a [u8],
    pub framing: OutFraming<'a>,
    /// The `Upgrade` value to pass on (a WebSocket handshake), if any.
    pub upgrade: Option<&'a [u8]>,
    /// A listener rule's changes to the request's fields.
    pub edits: Option<&'a HeaderEdits>,
}

/// Writes the head a worker gets for a request whose fields are `fields` (name, value pairs).
pub fn request_head<'f>(
    out: &mut Vec<u8>,
    parts: &RequestParts<'_>,
    fields: impl Iterator<Item = (&'f [u8], &'f [u8])> + Clone,
    hop: &Hop,
) {
    out.extend_from_slice(parts.method);
    out.push(b' ');
    out.extend_from_slice(parts.target);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    // RFC 9112 §3.2: an HTTP/1.1 request always carries Host, empty when the target has no
    // authority (an HTTP/1.0 client may have sent none).
    line(out, b"host", parts.host.unwrap_or_default());
    let named = connection_tokens(fields.clone());
    for (name, value) in fields.clone() {
        if is_hop_by_hop(name, &named)
            || is_list(name)
            || eq(name, b"host")
            || eq(name, b"content-length")
            || eq(name, b"x-request-id")
            || eq(name, b"x-forwarded-proto")
            || eq(name, b"x-forwarded-host")
            || eq(name, b"x-forwarded-port")
            || parts.edits.is_some_and(|e| e.drops(name))
        {
            continue;
        }
        line(out, name, value);
    }
    edited(out, parts.edits);
    list_line(out, b"x-forwarded-for", fields.clone(), |out| {
        out.extend_from_slice(hop.client_ip.as_bytes())
    });
    list_line(out, b"forwarded", fields.clone(), |out| {
        out.extend_from_slice(hop.forwarded_for.as_bytes());
        if let Some(h) = parts.host {
            out.extend_from_slice(b";host=\"");
            out.extend(h.iter().copied().filter(|b| *b != b'"' && *b != b'\\'));
            out.push(b'"');
        }
    });
    list_line(out, b"via", fields, |out| {
        out.extend_from_slice(parts.version.as_bytes());
        out.extend_from_slice(b" fulcrum");
    });
    line(out, b"x-forwarded-proto", hop.proto.as_bytes());
    if let Some(h) = parts.host.filter(|h| !h.is_empty()) {
        line(out, b"x-forwarded-host", h);
    }
    if let Some(port) = hop.port {
        line(
            out,
            b"x-forwarded-port",
            itoa::Buffer::new().format(port).as_bytes(),
        );
    }
    line(out, b"x-request-id", parts.request_id);
    if let Some(u) = parts.upgrade {
        line(out, b"connection", b"upgrade");
        line(out, b"upgrade", u);
    }
    framing(out, parts.framing);
    out.extend_from_slice(b"\r\n");
}

/// A response head for a client.
pub struct ResponseParts<'a> {
    pub status: u16,
    pub reason: &'a [u8],
    pub request_id: &'a [u8],
    pub framing: OutFraming<'a>,
    /// Keep the worker's `endpoint-load-metrics` (`telemetry.forward_load_header`).
    pub forward_load_header: bool,
    /// Tell the client this connection closes after the response.
    pub close: bool,
    /// A listener rule's changes to the response's fields.
    pub edits: Option<&'a HeaderEdits>,
    /// A `101 Switching Protocols`: `Connection: upgrade` and the `Upgrade` field pass.
    pub upgrade: bool,
}

/// Writes the head of an interim (1xx) response as a client gets it: the worker's end-to-end
/// fields (`Link` of a 103, say), no framing, no hop-by-hop field.
pub fn interim_head<'f>(
    out: &mut Vec<u8>,
    status: u16,
    fields: impl Iterator<Item = (&'f [u8], &'f [u8])> + Clone,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    out.push(b' ');
    let reason = http::StatusCode::from_u16(status).ok();
    let reason = reason.and_then(|s| s.canonical_reason()).unwrap_or("");
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    let named = connection_tokens(fields.clone());
    for (name, value) in fields {
        let framing_field = eq(name, b"content-length") || eq(name, b"transfer-encoding");
        if !is_hop_by_hop(name, &named) && !framing_field {
            line(out, name, value);
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes the head a client gets for a worker's response whose fields are `fields`.
pub fn response_head<'f>(
    out: &mut Vec<u8>,
    parts: &ResponseParts<'_>,
    fields: impl Iterator<Item = (&'f [u8], &'f [u8])> + Clone,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(parts.status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.reason);
    out.extend_from_slice(b"\r\n");
    let named = connection_tokens(fields.clone());
    for (name, value) in fields.clone() {
        let framing_field = eq(name, b"content-length") || eq(name, b"transfer-encoding");
        let passes_upgrade = parts.upgrade && eq(name, b"upgrade");
        if (is_hop_by_hop(name, &named) && !passes_upgrade)
            || framing_field
            || eq(name, b"via")
            || eq(name, b"x-request-id")
            || (!parts.forward_load_header && eq(name, b"endpoint-load-metrics"))
            || parts.edits.is_some_and(|e| e.drops(name))
        {
            continue;
        }
        line(out, name, value);
    }
    edited(out, parts.edits);
    list_line(out, b"via", fields.clone(), |out| {
        out.extend_from_slice(b"1.1 fulcrum")
    });
    line(out, b"x-request-id", parts.request_id);
    if parts.upgrade {
        line(out, b"connection", b"upgrade");
    } else if parts.close {
        line(out, b"connection", b"close");
    }
    match parts.framing {
        // A response to HEAD announces, as the worker sent them, the framing of a body it
        // does not carry.
        OutFraming::AsSent => {
            for (name, value) in fields {
                if eq(name, b"content-length") || eq(name, b"transfer-encoding") {
                    line(out, name, value);
                }
            }
        }
        f => framing(out, f),
    }
    out.extend_from_slice(b"\r\n");
}

/// The fields a rule sets or adds.
fn edited(out: &mut Vec<u8>, edits: Option<&HeaderEdits>) {
    for (name, value) in edits.iter().flat_map(|e| e.written()) {
        line(out, name.as_bytes(), value.as_bytes());
    }
}

/// The forwarding lists a request carries, which this hop appends to.
fn is_list(name: &[u8]) -> bool {
    eq(name, b"x-forwarded-for") || eq(name, b"forwarded") || eq(name, b"via")
}

/// Writes one `name` line holding every element the client sent over all its `name` lines (RFC
/// 9110 §5.3: several lines are one comma-separated list), then this hop's, written by `ours`.
fn list_line<'f>(
    out: &mut Vec<u8>,
    name: &[u8],
    fields: impl Iterator<Item = (&'f [u8], &'f [u8])>,
    ours: impl FnOnce(&mut Vec<u8>),
) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    for (n, value) in fields {
        if eq(n, name) && !value.is_empty() {
            out.extend_from_slice(value);
            out.extend_from_slice(b", ");
        }
    }
    ours(out);
    out.extend_from_slice(b"\r\n");
}

fn framing(out: &mut Vec<u8>, f: OutFraming<'_>) {
    match f {
        OutFraming::None | OutFraming::Close | OutFraming::AsSent => {}
        OutFraming::Length(n) => line(
            out,
            b"content-length",
            itoa::Buffer::new().format(n).as_bytes(),
        ),
        OutFraming::Chunked(codings) | OutFraming::CodedUntilClose(codings) => {
            line(out, b"transfer-encoding", codings)
        }
    }
}

fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn eq(name: &[u8], lower: &[u8]) -> bool {
    name.eq_ignore_ascii_case(lower)
}

/// The field names the `Connection` fields list (lowercased on comparison), beyond the
/// standard hop-by-hop ones. Most messages have no `Connection` field at all.
fn connection_tokens<'f>(fields: impl Iterator<Item = (&'f [u8], &'f [u8])>) -> Vec<&'f [u8]> {
    let mut named = Vec::new();
    for (name, value) in fields {
        if eq(name, b"connection") {
            named.extend(
                value
                    .split(|b| *b == b',')
                    .map(|t| t.trim_ascii())
                    .filter(|t| !t.is_empty()),
            );
        }
    }
    named
}

fn is_hop_by_hop(name: &[u8], named: &[&[u8]]) -> bool {
    HOP_BY_HOP.iter().any(|h| eq(name, h)) || named.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// The (name, value) pairs of parsed fields, over the buffer they were parsed from.
/// A header map's fields as name and value bytes, for the functions here.
pub fn header_pairs(headers: &http::HeaderMap) -> Vec<(&[u8], &[u8])> {
    let pairs = headers.iter();
    pairs
        .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
        .collect()
}

/// The fields of a head this module wrote (start line skipped), as name and value.
pub fn head_fields(head: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    head.split(|b| *b == b'\n').skip(1).filter_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|b| *b == b':')?;
        Some((&line[..colon], line[colon + 1..].trim_ascii()))
    })
}

pub fn pairs<'b>(
    fields: &'b [Field],
    buf: &'b [u8],
) -> impl Iterator<Item = (&'b [u8], &'b [u8])> + Clone {
    fields
        .iter()
        .map(move |f| (f.name.of(buf), f.value.of(buf)))
}

/// The first value of field `name`, if any.
pub fn find<'b>(fields: &[Field], buf: &'b [u8], name: &[u8]) -> Option<&'b [u8]> {
    fields
        .iter()
        .find(|f| eq(f.name.of(buf), name))
        .map(|f| f.value.of(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop() -> Hop {
        Hop::new("198.51.100.7:5555".parse().unwrap(), None, false)
    }

    fn text(out: &[u8]) -> String {
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn requests_lose_hop_by_hop_fields_and_gain_this_hop() {
        let fields: Vec<(&[u8], &[u8])> = vec![
            (b"Host", b"client.example"),
            (b"Connection", b"keep-alive, x-secret"),
            (b"X-Secret", b"1"),
            (b"Keep-Alive", b"timeout=5"),
            (b"TE", b"trailers"),
            (b"X-Forwarded-For", b"203.0.113.9"),
            (b"x-forwarded-for", b"192.0.2.1"),
            (b"Via", b"1.0 edge"),
            (b"X-Request-Id", b"spoofed"),
            (b"Accept", b"*/*"),
            (b"Content-Length", b"5"),
        ];
        let mut out = Vec::new();
        request_head(
            &mut out,
            &RequestParts {
                method: b"POST",
                target: b"/a?b=1",
                host: Some(b"client.example"),
                version: "1.1",
                request_id: b"00ab",
                framing: OutFraming::Length(5),
                upgrade: None,
                edits: None,
            },
            fields.iter().copied(),
            &hop(),
        );
        let t = text(&out);
        assert!(
            t.starts_with("POST /a?b=1 HTTP/1.1\r\nhost: client.example\r\n"),
            "{t}"
        );
        for gone in ["Connection", "X-Secret", "Keep-Alive", "TE:", "spoofed"] {
            assert!(!t.contains(gone), "{gone} forwarded: {t}");
        }
        assert!(t.contains("Accept: */*\r\n"));
        assert!(
            t.contains("x-forwarded-for: 203.0.113.9, 192.0.2.1, 198.51.100.7\r\n"),
            "{t}"
        );
        assert!(t.contains("forwarded: for=198.51.100.7;proto=http;host=\"client.example\"\r\n"));
        assert!(t.contains("via: 1.0 edge, 1.1 fulcrum\r\n"), "{t}");
        assert!(t.contains("x-request-id: 00ab\r\n"));
        assert!(t.ends_with("content-length: 5\r\n\r\n"), "{t}");
        assert_eq!(t.matches("content-length").count(), 1);
    }

    #[test]
    fn request_codings_before_chunked_are_kept_and_upgrades_pass() {
        let fields: Vec<(&[u8], &[u8])> = vec![
            (b"Transfer-Encoding", b"gzip, chunked"),
            (b"Connection", b"Upgrade"),
            (b"Upgrade", b"websocket"),
            (b"Sec-WebSocket-Key", b"k"),
        ];
        let mut out = Vec::new();
        request_head(
            &mut out,
            &RequestParts {
                method: b"GET",
                target: b"/ws",
                host: Some(b"h"),
                version: "1.1",
                request_id: b"1",
                framing: OutFraming::Chunked(b"gzip, chunked"),
                upgrade: Some(b"websocket"),
                edits: None,
            },
            fields.iter().copied(),
            &hop(),
        );
        let t = text(&out);
        assert!(t.contains("transfer-encoding: gzip, chunked\r\n"), "{t}");
        assert!(
            t.contains("connection: upgrade\r\nupgrade: websocket\r\n"),
            "{t}"
        );
        assert!(t.contains("Sec-WebSocket-Key: k\r\n"));
        assert_eq!(
            t.to_ascii_lowercase().matches("upgrade: websocket").count(),
            1
        );
    }

    #[test]
    fn responses_lose_hop_by_hop_and_the_load_report_and_get_framed_anew() {
        let fields: Vec<(&[u8], &[u8])> = vec![
            (b"Content-Length", b"10"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Connection", b"keep-alive"),
            (b"endpoint-load-metrics", b"TEXT cpu_utilization=0.5"),
            (b"x-fulcrum-instance", b"i-1"),
            (b"Via", b"1.1 worker"),
        ];
        let mut out = Vec::new();
        response_head(
            &mut out,
            &ResponseParts {
                status: 200,
                reason: b"OK",
                request_id: b"id",
                framing: OutFraming::Chunked(b"chunked"),
                forward_load_header: false,
                close: false,
                upgrade: false,
                edits: None,
            },
            fields.iter().copied(),
        );
        let t = text(&out);
        assert!(t.starts_with("HTTP/1.1 200 OK\r\n"));
        // Both framing fields came in; only the chunked one goes out (RFC 9112 §6.3 rule 3).
        assert!(!t.to_ascii_lowercase().contains("content-length"), "{t}");
        assert!(t.contains("transfer-encoding: chunked\r\n"));
        assert!(
            !t.contains("endpoint-load-metrics") && !t.contains("Connection"),
            "{t}"
        );
        assert!(t.contains("x-fulcrum-instance: i-1\r\n"));
        assert!(t.contains("via: 1.1 worker, 1.1 fulcrum\r\n"));
        assert!(t.ends_with("\r\n\r\n"));
    }

    #[test]
    fn a_head_response_keeps_its_announced_length() {
        let fields: Vec<(&[u8], &[u8])> = vec![(b"Content-Length", b"1234")];
        let mut out = Vec::new();
        response_head(
            &mut out,
            &ResponseParts {
                status: 200,
                reason: b"OK",
                request_id: b"id",
                framing: OutFraming::AsSent,
                forward_load_header: false,
                close: true,
                upgrade: false,
                edits: None,
            },
            fields.iter().copied(),
        );
        let t = text(&out);
        assert!(
            t.contains("Content-Length: 1234\r\n") && t.contains("connection: close\r\n"),
            "{t}"
        );
    }
}
