//! fulcrum's HTTP/1.1 message codec (RFC 9112, with RFC 9110 where it decides).
//!
//! It owns the parsing and framing of HTTP/1.1 heads and bodies: where a request or response
//! head ends, what its start line and fields say, how long its body is, and where a chunked
//! body ends. It rejects every ambiguity a smuggling attack needs (bare LF or CR, obs-fold,
//! Content-Length together with Transfer-Encoding, duplicate or malformed lengths, chunked that
//! is not the final coding, Host that is missing, repeated or malformed) rather than guessing
//! what another parser on the path would do.
//!
//! It does no I/O: the proxy reads bytes, hands them to [`parse_request`], [`parse_response`]
//! or a [`ChunkedDecoder`], and acts on the answer. Heads are described by [`Span`]s into the
//! caller's buffer and the fields go into a `Vec<Field>` the caller reuses, so the common path
//! allocates nothing. It does not route, pick workers, or decide which fields a proxy rewrites
//! or drops (beyond flagging what RFC 9112 says must not be forwarded as is).

pub mod chunked;
mod grammar;
mod head;
pub mod request;
pub mod response;
mod target;

pub use chunked::{encode_chunk_header, ChunkError, ChunkStep, ChunkedDecoder, LAST_CHUNK};
pub use request::{parse_request, Limits, RequestError, RequestHead};
pub use response::{parse_response, ResponseBody, ResponseError, ResponseHead};
pub use target::TargetForm;

/// Field lines one head may hold at most, whatever a caller's limit says: httparse fills a
/// fixed array on the stack, so parsing never allocates for them.
pub const MAX_FIELDS: usize = 256;

/// A byte range in the buffer a head (or chunk) was parsed from. `u32` keeps [`Field`] `Copy`
/// and small; heads are far shorter than 4 GiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    pub(crate) fn new(start: usize, end: usize) -> Span {
        Span {
            start: start as u32,
            end: end as u32,
        }
    }

    /// The bytes this span covers in `buf` (the buffer it was parsed from).
    pub fn of<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.start as usize..self.end as usize]
    }

    pub fn len(&self) -> usize {
        (self.end - self.start) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

/// One header field line: its name and its value (optional whitespace around it excluded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: Span,
    pub value: Span,
}

impl Field {
    /// Whether this field is called `name` (field names are case-insensitive).
    pub fn is(&self, buf: &[u8], name: &str) -> bool {
        self.name.of(buf).eq_ignore_ascii_case(name.as_bytes())
    }
}

/// How long a request body is (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyLength {
    /// No Content-Length and no Transfer-Encoding: there is no body.
    None,
    /// Exactly this many bytes follow the head (`Length(0)` came from `Content-Length: 0`).
    Length(u64),
    /// A chunked body follows: feed it to a [`ChunkedDecoder`].
    Chunked,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// Connection-level facts of a message: the `close`, `keep-alive` and `upgrade` options of its
/// Connection field (other options are the proxy's to strip as hop-by-hop fields).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectionOptions {
    pub close: bool,
    pub keep_alive: bool,
    pub upgrade: bool,
}

impl ConnectionOptions {
    /// Whether the connection stays open after this message (RFC 9112 §9.3): HTTP/1.1 unless
    /// `close`; HTTP/1.0 only with `keep-alive` and without `close`.
    pub fn persistent(&self, version: Version) -> bool {
        match version {
            Version::Http11 => !self.close,
            Version::Http10 => self.keep_alive && !self.close,
        }
    }
}
