//! Response heads from workers (RFC 9112 §4, §6.3). A worker's head that is malformed or
//! ambiguous is an error for the proxy to answer with 502, never a parse it guesses at.

use http::Method;
use httparse::{ParserConfig, Status};

use super::head::{field_name, field_slots, find_head_end, record_fields, BareLineEnd, Framing};
use super::{ConnectionOptions, Field, Span, Version};

/// Bytes a response head may take, final CRLFCRLF included.
pub const MAX_RESPONSE_HEAD_BYTES: usize = 64 * 1024;

/// How a response's body is delimited (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseBody {
    /// No body: a response to HEAD, 1xx (101 included: the caller handles the switch), 204,
    /// 304, or 2xx to CONNECT (the connection becomes a tunnel).
    None,
    Length(u64),
    Chunked,
    /// Read until the worker closes the connection (which then cannot be reused).
    UntilClose,
}

/// A parsed response head; spans point into the buffer given to [`parse_response`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub version: Version,
    /// Bytes of the head, final CRLFCRLF included: the body starts here.
    pub head_len: usize,
    pub body: ResponseBody,
    pub connection: ConnectionOptions,
    /// Content-Length came with Transfer-Encoding: Transfer-Encoding decides, and a proxy
    /// relaying the response must not forward the Content-Length (RFC 9112 §6.3, rule 3).
    pub had_content_length_and_transfer_encoding: bool,
    /// When the body is chunked, the Transfer-Encoding value as received, one field line
    /// (codings split over several lines are refused: one span could not hold them).
    pub transfer_codings: Option<Span>,
    /// How many Content-Length field lines there were (all equal; a proxy sends one).
    pub content_length_fields: u8,
}

/// Why a worker's response head is unusable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseError {
    pub code: &'static str,
    pub message: &'static str,
}

impl std::fmt::Display for ResponseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ResponseError {}

const fn bad_response(message: &'static str) -> ResponseError {
    ResponseError {
        code: "bad_response",
        message,
    }
}

const TOO_LARGE: ResponseError = ResponseError {
    code: "response_head_too_large",
    message: "the response head is not complete within 64 KiB or has too many field lines",
};

/// Parses the response head at the start of `buf`, for a request with `request_method`.
///
/// `Ok(None)`: the head has not fully arrived; call again with more bytes. As with requests,
/// the result depends only on the head's bytes, however they are split. `fields` is cleared and
/// filled with the head's field lines.
pub fn parse_response(
    buf: &[u8],
    request_method: &Method,
    fields: &mut Vec<Field>,
) -> Result<Option<ResponseHead>, ResponseError> {
    fields.clear();
    let window = &buf[..buf.len().min(MAX_RESPONSE_HEAD_BYTES)];
    let Some((line, head_len)) = parse_head(window, fields)? else {
        return match buf.len() >= MAX_RESPONSE_HEAD_BYTES {
            true => Err(TOO_LARGE),
            false => Ok(None),
        };
    };
    let framing = read_framing(window, fields)?;
    let body = response_body(line, request_method, &framing)?;
    Ok(Some(ResponseHead {
        status: line.status,
        version: line.version,
        head_len,
        body,
        connection: framing.connection,
        had_content_length_and_transfer_encoding: framing.codings.is_some()
            && framing.content_length.is_some(),
        transfer_codings: framing
            .last_transfer_encoding
            .filter(|_| matches!(body, ResponseBody::Chunked | ResponseBody::UntilClose)),
        content_length_fields: framing.content_length_fields,
    }))
}

/// The status line and fields of the head in `window`, with the head's length; `None` while
/// it is incomplete.
fn parse_head(
    window: &[u8],
    fields: &mut Vec<Field>,
) -> Result<Option<(StatusLine, usize)>, ResponseError> {
    // httparse skips empty lines before a status line; after a response they mean the previous
    // body was longer than its framing said, so the connection is out of step.
    if matches!(window.first(), Some(b'\r' | b'\n')) {
        return Err(bad_response("an empty line precedes the status line"));
    }
    let end = match find_head_end(window, 0) {
        Ok(end) => end,
        Err(BareLineEnd { at }) => return Err(bare_line_end(&window[..=at])),
    };
    let mut slots = field_slots();
    let mut parsed = httparse::Response::new(&mut []);
    let scanned = &window[..end.unwrap_or(window.len())];
    // The default configuration: every leniency stays off.
    let config = ParserConfig::default();
    match config.parse_response_with_uninit_headers(&mut parsed, scanned, &mut slots) {
        Ok(Status::Complete(n)) if Some(n) == end => {}
        Ok(Status::Partial) if end.is_none() => return Ok(None),
        Ok(_) => return Err(bad_response("the head's end is ambiguous")),
        Err(e) => return Err(refusal(e)),
    }
    record_fields(window, parsed.headers, fields);
    let status = parsed.code.unwrap_or_default();
    if !(100..=599).contains(&status) {
        return Err(bad_response("the status code is not between 100 and 599"));
    }
    let version = match parsed.version {
        Some(1) => Version::Http11,
        _ => Version::Http10,
    };
    Ok(Some((
        StatusLine { status, version },
        end.unwrap_or_default(),
    )))
}

/// The answer to a head whose first line ending that is not CRLF is the last byte of `upto`:
/// whatever httparse refuses before it, so that the answer is the same when only `upto` has
/// arrived.
fn bare_line_end(upto: &[u8]) -> ResponseError {
    let mut slots = field_slots();
    let mut parsed = httparse::Response::new(&mut []);
    match ParserConfig::default().parse_response_with_uninit_headers(&mut parsed, upto, &mut slots)
    {
        Err(e) => refusal(e),
        Ok(_) => bad_response("a line of the head ends in a bare LF or CR, not CRLF"),
    }
}

fn refusal(error: httparse::Error) -> ResponseError {
    match error {
        httparse::Error::TooManyHeaders => TOO_LARGE,
        _ => bad_response("the status line or a field line is malformed"),
    }
}

fn read_framing(buf: &[u8], fields: &[Field]) -> Result<Framing, ResponseError> {
    let mut framing = Framing::default();
    for field in fields {
        let name = field_name(field.name.of(buf));
        framing
            .add(name, field.value.of(buf), field.value)
            .map_err(|_| {
                bad_response("Content-Length, Transfer-Encoding or Connection is malformed")
            })?;
    }
    Ok(framing)
}

#[derive(Clone, Copy)]
struct StatusLine {
    status: u16,
    version: Version,
}

/// RFC 9112 §6.3, in its order. The framing fields were already checked for syntax, so a
/// malformed Content-Length is an error even where the body is known to be empty.
fn response_body(
    line: StatusLine,
    method: &Method,
    framing: &Framing,
) -> Result<ResponseBody, ResponseError> {
    let status = line.status;
    if framing.codings.is_some() && line.version == Version::Http10 {
        // §6.1: the framing of an HTTP/1.0 message with Transfer-Encoding is faulty.
        return Err(bad_response("Transfer-Encoding in an HTTP/1.0 response"));
    }
    let tunnel = *method == Method::CONNECT && (200..300).contains(&status);
    if *method == Method::HEAD || status < 200 || status == 204 || status == 304 || tunnel {
        return Ok(ResponseBody::None);
    }
    match (framing.codings, framing.content_length) {
        (Some(c), _) if c.chunked > 1 => Err(bad_response("chunked appears more than once")),
        (Some(_), _) if framing.transfer_encoding_fields > 1 => Err(bad_response(
            "transfer codings split over several Transfer-Encoding field lines",
        )),
        (Some(c), _) if c.is_chunked() => Ok(ResponseBody::Chunked),
        (Some(_), _) => Ok(ResponseBody::UntilClose),
        (None, Some(n)) => Ok(ResponseBody::Length(n)),
        (None, None) => Ok(ResponseBody::UntilClose),
    }
}

#[cfg(test)]
mod tests;
