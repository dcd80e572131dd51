//! Request heads (RFC 9112 §2–§3, §6): the request line, the fields that decide routing and
//! framing, and the checks that keep a request from being read two ways.

use http::Method;
use httparse::{ParserConfig, Status};

use super::grammar::{self, is_tchar, list_elements, Authority};
use super::head::{
    field_name, field_slots, find_head_end, record_fields, skip_empty_lines, span_in, BareLineEnd,
    FieldName, Framing, FramingError,
};
use super::target::{self, TargetForm};
use super::{BodyLength, ConnectionOptions, Field, Span, Version, MAX_FIELDS};

/// How much of a request head the proxy reads before giving up on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of the whole head, final CRLFCRLF included (431 beyond it).
    pub max_head_bytes: usize,
    /// Field lines (431 beyond it); at most [`MAX_FIELDS`] whatever is set.
    pub max_headers: usize,
    /// Bytes of the request-target (414 beyond it).
    pub max_uri_bytes: usize,
}

impl Default for Limits {
    /// nginx's default buffers hold 8 KiB lines and 32 KiB heads; Envoy allows 100 fields.
    fn default() -> Limits {
        Limits {
            max_head_bytes: 32 * 1024,
            max_headers: 100,
            max_uri_bytes: 8 * 1024,
        }
    }
}

/// A parsed request head; spans point into the buffer given to [`parse_request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    pub method: Method,
    pub target: Span,
    pub target_form: TargetForm,
    pub version: Version,
    /// Bytes of the head, from the first byte of the buffer (empty lines before the request
    /// line included) to the final CRLFCRLF included: the body starts here.
    pub head_len: usize,
    pub body: BodyLength,
    /// The authority to use: absolute-form's authority if any (RFC 9112 §3.2.2: it replaces
    /// Host, so a proxy writes this and drops the Host it received), else the Host field's
    /// value; `None` when neither names one (HTTP/1.0 without Host, or an empty Host).
    pub host: Option<Span>,
    pub connection: ConnectionOptions,
    /// The Upgrade field's value, only on HTTP/1.1 when Connection has the `upgrade` option.
    pub upgrade: Option<Span>,
    /// `Expect: 100-continue` on HTTP/1.1 (RFC 9110 §10.1.1 says to ignore it on HTTP/1.0).
    pub expect_continue: bool,
    /// When the body is chunked, the Transfer-Encoding value as received (`gzip, chunked`): a
    /// proxy forwards the codings before `chunked`, never drops them. It is one field line:
    /// codings split over several lines are refused, as one span could not hold them.
    pub transfer_codings: Option<Span>,
    /// Whether a coding precedes `chunked` (so de-chunking alone does not yield the content).
    pub codings_before_chunked: bool,
    /// How many Content-Length field lines there were (all equal; a proxy sends one).
    pub content_length_fields: u8,
}

/// Why a request head is refused: the status to answer with, a stable code and a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestError {
    pub status: u16,
    pub code: &'static str,
    pub message: &'static str,
}

impl RequestError {
    const fn new(status: u16, code: &'static str, message: &'static str) -> RequestError {
        RequestError {
            status,
            code,
            message,
        }
    }
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for RequestError {}

const fn bad_request(message: &'static str) -> RequestError {
    RequestError::new(400, "bad_request", message)
}

const fn bad_transfer_encoding(message: &'static str) -> RequestError {
    RequestError::new(400, "bad_transfer_encoding", message)
}

const URI_TOO_LONG: RequestError = RequestError::new(
    414,
    "uri_too_long",
    "the request-target is longer than the limit",
);
const HEADERS_TOO_LARGE: RequestError = RequestError::new(
    431,
    "headers_too_large",
    "the request head is not complete within the limit",
);
const TOO_MANY_HEADERS: RequestError = RequestError::new(
    431,
    "too_many_headers",
    "the request has more field lines than the limit",
);
const VERSION_NOT_SUPPORTED: RequestError = RequestError::new(
    505,
    "version_not_supported",
    "only HTTP/1.0 and HTTP/1.1 are served over HTTP/1",
);

/// Parses the request head at the start of `buf`.
///
/// `Ok(None)`: the head has not fully arrived (and `buf` is shorter than
/// `limits.max_head_bytes`); call again with more bytes. The answer depends only on the head's
/// bytes: the same head delivered in any number of pieces gives the same result, and whatever
/// follows the head (the body, a pipelined request) is not looked at. `fields` is cleared and
/// filled with the head's field lines.
pub fn parse_request(
    buf: &[u8],
    limits: &Limits,
    fields: &mut Vec<Field>,
) -> Result<Option<RequestHead>, RequestError> {
    fields.clear();
    // Never look past the limit, so a head's verdict does not depend on what follows it.
    let window = &buf[..buf.len().min(limits.max_head_bytes).min(u32::MAX as usize)];
    let start = skip_empty_lines(window);
    // First, so an overlong target is a 414 however much of it (and of what follows) has
    // arrived: every check after this one could fail on a byte after the target.
    if target_run(window, start, limits.max_uri_bytes) > limits.max_uri_bytes {
        return Err(URI_TOO_LONG);
    }
    let end = match find_head_end(window, start) {
        Ok(end) => end,
        Err(BareLineEnd { at }) => return Err(bare_line_end(&window[..=at], start, limits)),
    };
    let mut slots = field_slots();
    let slots = &mut slots[..limits.max_headers.min(MAX_FIELDS)];
    let mut parsed = httparse::Request::new(&mut []);
    let scanned = &window[..end.unwrap_or(window.len())];
    // The default configuration: every leniency (obs-fold, spaces before colons, multiple
    // spaces in the request line, invalid fields ignored) stays off.
    match ParserConfig::default().parse_request_with_uninit_headers(&mut parsed, scanned, slots) {
        Ok(Status::Complete(n)) if Some(n) == end => {}
        Ok(Status::Partial) if end.is_none() => return incomplete(buf, limits),
        Ok(_) => return Err(bad_request("the head's end is ambiguous")),
        Err(e) => return refusal(e, &window[start..]).map_or_else(|| incomplete(buf, limits), Err),
    }
    record_fields(window, parsed.headers, fields);
    let head = RequestLine::of(window, &parsed)?;
    interpret(window, head, end.unwrap_or_default(), fields).map(Some)
}

/// The length of the request-target's first bytes: httparse's target characters after
/// `token SP`, counted up to one past `max`.
fn target_run(window: &[u8], start: usize, max: usize) -> usize {
    let line = &window[start..];
    let method_len = line.iter().take_while(|&&b| is_tchar(b)).count();
    if method_len == 0 || line.get(method_len) != Some(&b' ') {
        return 0;
    }
    line[method_len + 1..]
        .iter()
        .take(max.saturating_add(1))
        .take_while(|&&b| matches!(b, 0x21..=0x7e | 0x80..))
        .count()
}

fn incomplete(buf: &[u8], limits: &Limits) -> Result<Option<RequestHead>, RequestError> {
    match buf.len() >= limits.max_head_bytes {
        true => Err(HEADERS_TOO_LARGE),
        false => Ok(None),
    }
}

/// The answer to a head whose first line ending that is not CRLF is the last byte of `upto`:
/// whatever httparse refuses before it, so that the answer is the same when only `upto` has
/// arrived.
fn bare_line_end(upto: &[u8], start: usize, limits: &Limits) -> RequestError {
    let bare = bad_request("a line of the head ends in a bare LF or CR, not CRLF");
    let mut slots = field_slots();
    let slots = &mut slots[..limits.max_headers.min(MAX_FIELDS)];
    let mut parsed = httparse::Request::new(&mut []);
    match ParserConfig::default().parse_request_with_uninit_headers(&mut parsed, upto, slots) {
        Err(e) => refusal(e, &upto[start..]).unwrap_or(bare),
        Ok(_) => bare,
    }
}

/// The error for what httparse refused in a head whose start line is `line`; `None` when it
/// is a version that may still become a well-formed one.
fn refusal(error: httparse::Error, line: &[u8]) -> Option<RequestError> {
    use httparse::Error as E;
    Some(match error {
        E::TooManyHeaders => TOO_MANY_HEADERS,
        E::Version => match version_shape(line) {
            VersionShape::Incomplete => return None,
            VersionShape::Other => VERSION_NOT_SUPPORTED,
            VersionShape::Malformed => bad_request("the request line's HTTP version is malformed"),
        },
        E::HeaderName => bad_request(
            "a field line has an invalid name, whitespace before its colon, or is an obs-fold",
        ),
        E::HeaderValue => bad_request("a field value holds a control character"),
        E::Token | E::NewLine | E::Status => {
            bad_request("the request line is not `method SP request-target SP HTTP-version CRLF`")
        }
    })
}

/// What the version of a request line httparse refused looks like.
enum VersionShape {
    /// A prefix of `HTTP/d.d CR`: wait for more.
    Incomplete,
    /// `HTTP/d.d` that is neither 1.0 nor 1.1 (httparse takes those).
    Other,
    Malformed,
}

/// httparse stops at the version, so the request line so far is `method SP target SP ...`.
fn version_shape(line: &[u8]) -> VersionShape {
    let mut spaces = line.iter().enumerate().filter(|(_, &b)| b == b' ');
    let Some((second, _)) = spaces.nth(1) else {
        return VersionShape::Malformed;
    };
    let version = &line[second + 1..];
    for (i, &b) in version.iter().take(9).enumerate() {
        let expected = match i {
            0..=4 => b == b"HTTP/"[i],
            5 | 7 => b.is_ascii_digit(),
            6 => b == b'.',
            _ => b == b'\r',
        };
        if !expected {
            return VersionShape::Malformed;
        }
    }
    match version.len() >= 9 {
        true => VersionShape::Other,
        false => VersionShape::Incomplete,
    }
}

/// The request line httparse found.
struct RequestLine {
    method: Method,
    target: Span,
    version: Version,
}

impl RequestLine {
    fn of(buf: &[u8], parsed: &httparse::Request<'_, '_>) -> Result<RequestLine, RequestError> {
        let (Some(method), Some(path)) = (parsed.method, parsed.path) else {
            return Err(bad_request("the request line is incomplete"));
        };
        Ok(RequestLine {
            // Any token is a method (RFC 9110 §9.1); httparse checked the characters.
            method: Method::from_bytes(method.as_bytes())
                .map_err(|_| bad_request("the method is not a token"))?,
            target: span_in(buf, path.as_bytes()),
            version: match parsed.version {
                Some(1) => Version::Http11,
                _ => Version::Http10,
            },
        })
    }
}

fn interpret(
    buf: &[u8],
    line: RequestLine,
    head_len: usize,
    fields: &[Field],
) -> Result<RequestHead, RequestError> {
    let target_form = target::classify(
        &line.method,
        line.target.of(buf),
        line.target.start as usize,
    )
    .map_err(bad_request)?;
    let facts = RequestFields::read(buf, fields)?;
    let host = facts.authority(buf, line.version, target_form)?;
    let body = facts.body(line.version)?;
    let http11 = line.version == Version::Http11;
    let codings = facts.framing.codings.unwrap_or_default();
    Ok(RequestHead {
        method: line.method,
        target: line.target,
        target_form,
        version: line.version,
        head_len,
        body,
        host,
        connection: facts.framing.connection,
        upgrade: facts
            .upgrade
            .filter(|_| http11 && facts.framing.connection.upgrade),
        expect_continue: http11 && facts.expect_continue,
        transfer_codings: facts
            .framing
            .last_transfer_encoding
            .filter(|_| body == BodyLength::Chunked),
        codings_before_chunked: codings.others,
        content_length_fields: facts.framing.content_length_fields,
    })
}

/// What a request's fields say about routing and framing.
#[derive(Default)]
struct RequestFields {
    framing: Framing,
    host: Option<Span>,
    host_fields: u8,
    upgrade: Option<Span>,
    expect_continue: bool,
}

impl RequestFields {
    fn read(buf: &[u8], fields: &[Field]) -> Result<RequestFields, RequestError> {
        let mut facts = RequestFields::default();
        for field in fields {
            let (name, value) = (field_name(field.name.of(buf)), field.value.of(buf));
            if facts
                .framing
                .add(name, value, field.value)
                .map_err(framing_error)?
            {
                continue;
            }
            match name {
                FieldName::Host => {
                    facts.host_fields = facts.host_fields.saturating_add(1);
                    facts.host.get_or_insert(field.value);
                }
                // Upgrade is a list; its lines are forwarded, so only the first is reported.
                FieldName::Upgrade => _ = facts.upgrade.get_or_insert(field.value),
                FieldName::Expect => {
                    facts.expect_continue |=
                        list_elements(value).any(|e| e.eq_ignore_ascii_case(b"100-continue"));
                }
                _ => {}
            }
        }
        Ok(facts)
    }

    /// RFC 9112 §3.2: exactly one valid Host on HTTP/1.1 (at most one on HTTP/1.0), even when
    /// an absolute-form target's authority then replaces it.
    fn authority(
        &self,
        buf: &[u8],
        version: Version,
        form: TargetForm,
    ) -> Result<Option<Span>, RequestError> {
        match (self.host_fields, version) {
            (0, Version::Http11) => return Err(MISSING_HOST),
            (2.., _) => return Err(DUPLICATE_HOST),
            _ => {}
        }
        let host = match self.host.map(|h| (h, grammar::authority(h.of(buf), false))) {
            Some((_, Authority::Invalid)) => return Err(BAD_HOST),
            Some((h, Authority::Valid)) => Some(h),
            Some((_, Authority::Empty)) | None => None,
        };
        Ok(match form {
            TargetForm::Absolute { authority, .. } => Some(authority),
            _ => host,
        })
    }

    /// RFC 9112 §6.1, §6.3.
    fn body(&self, version: Version) -> Result<BodyLength, RequestError> {
        let framing = &self.framing;
        match (framing.codings, framing.content_length) {
            (Some(_), Some(_)) => Err(AMBIGUOUS_LENGTH),
            (Some(_), None) if version == Version::Http10 => Err(bad_transfer_encoding(
                "Transfer-Encoding in an HTTP/1.0 request",
            )),
            (Some(c), None) if !c.is_chunked() => Err(bad_transfer_encoding(
                "chunked must be the final transfer coding, and appear once",
            )),
            (Some(_), None) if framing.transfer_encoding_fields > 1 => Err(bad_transfer_encoding(
                "transfer codings split over several Transfer-Encoding field lines",
            )),
            (Some(c), None) if c.unknown => Err(UNSUPPORTED_TRANSFER_CODING),
            (Some(_), None) => Ok(BodyLength::Chunked),
            (None, Some(n)) => Ok(BodyLength::Length(n)),
            (None, None) => Ok(BodyLength::None),
        }
    }
}

const MISSING_HOST: RequestError = RequestError::new(
    400,
    "missing_host",
    "an HTTP/1.1 request needs a Host field",
);
const DUPLICATE_HOST: RequestError = RequestError::new(
    400,
    "duplicate_host",
    "the request has more than one Host field line",
);
const BAD_HOST: RequestError =
    RequestError::new(400, "bad_host", "the Host field is not `host[:port]`");
const AMBIGUOUS_LENGTH: RequestError = RequestError::new(
    400,
    "ambiguous_length",
    "the request has both Transfer-Encoding and Content-Length",
);
const UNSUPPORTED_TRANSFER_CODING: RequestError = RequestError::new(
    501,
    "unsupported_transfer_coding",
    "a transfer coding is not chunked, gzip, deflate or compress",
);

fn framing_error(error: FramingError) -> RequestError {
    match error {
        FramingError::ContentLength => RequestError::new(
            400,
            "bad_content_length",
            "Content-Length is not one decimal number (or its field lines disagree)",
        ),
        FramingError::TransferEncoding => {
            bad_transfer_encoding("Transfer-Encoding is not a list of transfer codings")
        }
        FramingError::Lookalike => {
            bad_request("a field is named like Content-Length or Transfer-Encoding with `_`")
        }
        FramingError::Connection => RequestError::new(
            400,
            "bad_connection",
            "Connection is not a list of tokens, or names a framing field or Host",
        ),
    }
}

#[cfg(test)]
mod tests;
