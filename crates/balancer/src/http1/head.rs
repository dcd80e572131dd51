//! What request and response heads share: where a head ends, httparse's fields as spans, and
//! the fields that frame a message (Content-Length, Transfer-Encoding, Connection).

use std::mem::MaybeUninit;

use super::grammar::{is_token, list_elements};
use super::{ConnectionOptions, Field, Span, MAX_FIELDS};

/// Slots httparse fills with a head's fields; on the stack, so parsing allocates nothing.
pub(super) type FieldSlots<'b> = [MaybeUninit<httparse::Header<'b>>; MAX_FIELDS];

pub(super) fn field_slots<'b>() -> FieldSlots<'b> {
    [MaybeUninit::uninit(); MAX_FIELDS]
}

/// A line ending that is not CRLF: a bare LF (which httparse accepts as a line end) or a CR
/// followed by anything but LF, at offset `at`.
#[derive(Debug)]
pub(super) struct BareLineEnd {
    pub at: usize,
}

/// Skips the empty lines RFC 9112 §2.2 lets a server ignore before a request line.
pub(super) fn skip_empty_lines(buf: &[u8]) -> usize {
    let mut start = 0;
    while buf[start..].starts_with(b"\r\n") {
        start += 2;
    }
    start
}

/// Finds the end of the head whose start line begins at `start`: the length up to and
/// including the empty line, or `None` if it has not arrived. Every line ending before it must
/// be CRLF, so httparse and every parser behind us agree where each line ends.
pub(super) fn find_head_end(buf: &[u8], start: usize) -> Result<Option<usize>, BareLineEnd> {
    let mut line_start = start;
    let mut i = start;
    while i < buf.len() {
        match buf[i] {
            b'\n' => return Err(BareLineEnd { at: i }),
            b'\r' => {
                match buf.get(i + 1) {
                    None => return Ok(None),
                    Some(b'\n') => {}
                    Some(_) => return Err(BareLineEnd { at: i }),
                }
                if i == line_start && i > start {
                    return Ok(Some(i + 2));
                }
                i += 2;
                line_start = i;
            }
            _ => i += 1,
        }
    }
    Ok(None)
}

/// The span of `part`, a slice httparse returned from `buf`.
pub(super) fn span_in(buf: &[u8], part: &[u8]) -> Span {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    Span::new(start, start + part.len())
}

/// Replaces `fields` with the spans of httparse's fields (reusing the vector's capacity).
pub(super) fn record_fields(buf: &[u8], parsed: &[httparse::Header<'_>], fields: &mut Vec<Field>) {
    fields.clear();
    fields.extend(parsed.iter().map(|h| Field {
        name: span_in(buf, h.name.as_bytes()),
        value: span_in(buf, h.value),
    }));
}

/// The fields the codec interprets; everything else is the proxy's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum FieldName {
    ContentLength,
    TransferEncoding,
    Connection,
    Host,
    Upgrade,
    Expect,
    /// `Content_Length` or `Transfer_Encoding`: servers that map `_` to `-` (CGI-style
    /// environments) would frame by a field the proxy did not.
    FramingLookalike,
    Other,
}

pub(super) fn field_name(name: &[u8]) -> FieldName {
    let is = |known: &str| name.eq_ignore_ascii_case(known.as_bytes());
    // Dispatch on length first: most fields are none of these.
    match name.len() {
        4 if is("host") => FieldName::Host,
        6 if is("expect") => FieldName::Expect,
        7 if is("upgrade") => FieldName::Upgrade,
        10 if is("connection") => FieldName::Connection,
        14 if is("content-length") => FieldName::ContentLength,
        17 if is("transfer-encoding") => FieldName::TransferEncoding,
        14 if is_lookalike(name, b"content-length") => FieldName::FramingLookalike,
        17 if is_lookalike(name, b"transfer-encoding") => FieldName::FramingLookalike,
        _ => FieldName::Other,
    }
}

/// Whether `name` is `known` with some of its hyphens written as underscores.
fn is_lookalike(name: &[u8], known: &[u8]) -> bool {
    let same = |(&n, &k): (&u8, &u8)| n.eq_ignore_ascii_case(&k) || (n == b'_' && k == b'-');
    name.len() == known.len() && name.iter().zip(known).all(same)
}

/// The transfer codings of a message, across all its Transfer-Encoding field lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Codings {
    /// How many times `chunked` appears.
    pub chunked: u8,
    /// Whether `chunked` is the final coding.
    pub chunked_last: bool,
    /// Whether a coding other than `chunked` appears (before it, when the list is chunked).
    pub others: bool,
    /// Whether a coding is neither chunked nor one of the registered compressions.
    pub unknown: bool,
}

impl Codings {
    /// Adds one Transfer-Encoding field line's codings. Each element must be a bare token:
    /// an empty element (`chunked,`) or a parameter (`chunked;q=1`) is refused, since parsers
    /// disagree on both and no registered coding takes parameters.
    fn add(&mut self, value: &[u8]) -> Result<(), FramingError> {
        for coding in list_elements(value) {
            if !is_token(coding) {
                return Err(FramingError::TransferEncoding);
            }
            let chunked = coding.eq_ignore_ascii_case(b"chunked");
            self.chunked = self.chunked.saturating_add(u8::from(chunked));
            self.chunked_last = chunked;
            self.others |= !chunked;
            self.unknown |= !chunked && !is_compression(coding);
        }
        Ok(())
    }

    /// Whether the list is `chunked` alone, or ends with it once after other codings.
    pub fn is_chunked(&self) -> bool {
        self.chunked == 1 && self.chunked_last
    }
}

/// The codings of the HTTP Transfer Coding registry a proxy can pass on (RFC 9112 §7).
fn is_compression(coding: &[u8]) -> bool {
    ["gzip", "x-gzip", "deflate", "compress", "x-compress"]
        .iter()
        .any(|c| coding.eq_ignore_ascii_case(c.as_bytes()))
}

/// Why the framing fields of a head are unusable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum FramingError {
    ContentLength,
    TransferEncoding,
    Connection,
    Lookalike,
}

/// What the framing fields of a head say, before request or response rules apply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Framing {
    pub content_length: Option<u64>,
    pub content_length_fields: u8,
    pub codings: Option<Codings>,
    pub transfer_encoding_fields: u8,
    /// The value of the last Transfer-Encoding field line (the one holding the final coding).
    pub last_transfer_encoding: Option<Span>,
    pub connection: ConnectionOptions,
}

impl Framing {
    /// Takes in one field line if it is a framing field; returns whether it was.
    pub fn add(&mut self, name: FieldName, value: &[u8], span: Span) -> Result<bool, FramingError> {
        match name {
            FieldName::ContentLength => {
                let length = content_length(value, self.content_length)?;
                self.content_length = Some(length);
                self.content_length_fields = self.content_length_fields.saturating_add(1);
            }
            FieldName::TransferEncoding => {
                self.codings.get_or_insert_default().add(value)?;
                self.transfer_encoding_fields = self.transfer_encoding_fields.saturating_add(1);
                self.last_transfer_encoding = Some(span);
            }
            FieldName::Connection => add_connection_options(value, &mut self.connection)?,
            FieldName::FramingLookalike => return Err(FramingError::Lookalike),
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// One Content-Length field line's value (RFC 9110 §8.6): `1*DIGIT`, or a list of identical
/// ones (`5, 5`), equal to any earlier line's. No sign, no hex, no empty element, no overflow.
fn content_length(value: &[u8], earlier: Option<u64>) -> Result<u64, FramingError> {
    let mut length = earlier;
    for element in list_elements(value) {
        let n = decimal(element).ok_or(FramingError::ContentLength)?;
        if length.is_some_and(|l| l != n) {
            return Err(FramingError::ContentLength);
        }
        length = Some(n);
    }
    length.ok_or(FramingError::ContentLength)
}

fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        if !d.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Adds one Connection field line's options (RFC 9110 §7.6.1): a list of tokens, empty
/// elements ignored. Naming a framing field or Host is refused: a proxy strips the fields a
/// Connection names, and stripping those would change how the next hop frames or routes the
/// message.
fn add_connection_options(
    value: &[u8],
    options: &mut ConnectionOptions,
) -> Result<(), FramingError> {
    for option in list_elements(value).filter(|o| !o.is_empty()) {
        if !is_token(option) {
            return Err(FramingError::Connection);
        }
        let is = |name: &str| option.eq_ignore_ascii_case(name.as_bytes());
        if is("content-length") || is("transfer-encoding") || is("host") {
            return Err(FramingError::Connection);
        }
        options.close |= is("close");
        options.keep_alive |= is("keep-alive");
        options.upgrade |= is("upgrade");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_end_is_the_first_empty_line() {
        assert_eq!(
            find_head_end(b"GET / HTTP/1.1\r\n\r\nX", 0).unwrap(),
            Some(18)
        );
        assert_eq!(
            find_head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\n", 0).unwrap(),
            Some(24)
        );
        assert_eq!(
            find_head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r", 0).unwrap(),
            None
        );
        assert!(find_head_end(b"GET / HTTP/1.1\nA: b\r\n\r\n", 0).is_err());
        assert!(find_head_end(b"GET / HTTP/1.1\r\nA: b\rc\r\n\r\n", 0).is_err());
    }

    #[test]
    fn content_length_values() {
        assert_eq!(content_length(b"0", None), Ok(0));
        assert_eq!(content_length(b"007", None), Ok(7));
        assert_eq!(content_length(b"5, 5,5", None), Ok(5));
        assert_eq!(content_length(b"18446744073709551615", None), Ok(u64::MAX));
        for bad in [
            &b"+5"[..],
            b"-1",
            b"0x5",
            b"5, 6",
            b"5,",
            b"",
            b"5 5",
            b"18446744073709551616",
        ] {
            assert_eq!(
                content_length(bad, None),
                Err(FramingError::ContentLength),
                "{bad:?}"
            );
        }
        assert_eq!(
            content_length(b"6", Some(5)),
            Err(FramingError::ContentLength)
        );
    }

    #[test]
    fn codings_across_lines() {
        let mut c = Codings::default();
        c.add(b"gzip").unwrap();
        c.add(b"Chunked").unwrap();
        assert!(c.is_chunked() && c.others && !c.unknown);
        let mut c = Codings::default();
        c.add(b"chunked").unwrap();
        c.add(b"gzip").unwrap();
        assert!(!c.is_chunked() && c.chunked == 1);
        assert_eq!(
            Codings::default().add(b"chunked;a=b"),
            Err(FramingError::TransferEncoding)
        );
    }
}
