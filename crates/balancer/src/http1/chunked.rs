//! The chunked transfer coding (RFC 9112 §7.1): a push decoder that checks a chunked body byte
//! by byte and says where its data is and where it ends, so the proxy can forward the bytes as
//! they are or pass on only the data; and the two pieces the proxy needs to chunk a body itself.
//!
//! `chunk-size` may not be followed by whitespace unless a `;` extension follows: RFC 9112
//! allows BWS only before `;` (`5 \r\n` is refused), and parsers that take it disagree on what
//! comes next.

use super::grammar::is_tchar;
use super::Span;

/// Bytes a chunk-size line (extensions included, CRLF excluded) may take.
pub const MAX_LINE_BYTES: usize = 4 * 1024;
/// Bytes the trailer section may take, final CRLF included.
pub const MAX_TRAILER_BYTES: usize = 8 * 1024;
/// The last chunk with an empty trailer section: what ends a body the proxy chunks.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";
/// What follows each chunk's data.
pub const CHUNK_DATA_END: &[u8] = b"\r\n";

/// Writes the chunk-size line for a chunk of `len` bytes (`len` in hex, CRLF). A zero-length
/// chunk would end the body, so `len == 0` writes nothing: end a body with [`LAST_CHUNK`].
pub fn encode_chunk_header(len: usize, out: &mut Vec<u8>) {
    if len == 0 {
        return;
    }
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4);
    for i in (0..digits).rev() {
        out.push(b"0123456789abcdef"[(len >> (i * 4)) & 0xf]);
    }
    out.extend_from_slice(b"\r\n");
}

/// Why a chunked body is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkError {
    /// A chunk-size that is empty, not hexadecimal, or followed by whitespace without `;`.
    BadSize,
    /// A chunk extension that is not `;name[=token|"quoted"]`.
    BadExtension,
    /// A framing line ending in a bare LF or a CR not followed by LF.
    BadLineEnding,
    /// Chunk data not followed by exactly CRLF.
    BadDataEnd,
    /// A trailer field line with invalid syntax, obs-fold, or a framing or routing field.
    BadTrailer,
    /// A chunk-size line longer than [`MAX_LINE_BYTES`].
    LineTooLong,
    /// A trailer section longer than [`MAX_TRAILER_BYTES`].
    TrailersTooLarge,
    /// A chunk-size beyond 64 bits, or data beyond the decoder's `max_data`: the
    /// proxy answers 413 to a request.
    TooLarge,
}

impl ChunkError {
    /// A stable code for logs and error answers.
    pub fn code(&self) -> &'static str {
        match self {
            ChunkError::BadSize => "bad_chunk_size",
            ChunkError::BadExtension => "bad_chunk_extension",
            ChunkError::BadLineEnding => "bad_chunk_line_ending",
            ChunkError::BadDataEnd => "bad_chunk_data_end",
            ChunkError::BadTrailer => "bad_trailer",
            ChunkError::LineTooLong => "chunk_line_too_long",
            ChunkError::TrailersTooLarge => "trailers_too_large",
            ChunkError::TooLarge => "body_too_large",
        }
    }

    /// What is wrong, in a sentence.
    pub fn message(&self) -> &'static str {
        match self {
            ChunkError::BadSize => "a chunk size is not hexadecimal digits followed by `;` or CRLF",
            ChunkError::BadExtension => "a chunk extension is not `;name[=token|\"quoted\"]`",
            ChunkError::BadLineEnding => "a framing line ends in a bare LF or CR, not CRLF",
            ChunkError::BadDataEnd => "chunk data is not followed by CRLF",
            ChunkError::BadTrailer => "a trailer field line is malformed or names a framing field",
            ChunkError::LineTooLong => "a chunk-size line is longer than 4 KiB",
            ChunkError::TrailersTooLarge => "the trailer section is longer than 8 KiB",
            ChunkError::TooLarge => "the body has more data than allowed",
        }
    }

    /// Whether the body is refused for its size (413 for a request) rather than its syntax.
    pub fn is_too_large(&self) -> bool {
        *self == ChunkError::TooLarge
    }
}

impl std::fmt::Display for ChunkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for ChunkError {}

/// What one [`ChunkedDecoder::feed`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkStep {
    /// Bytes of the input taken (framing and data): forward `input[..consumed]` to relay the
    /// body as it is.
    pub consumed: usize,
    /// Chunk data within `input[..consumed]`: at most one run per call.
    pub data: Option<Span>,
    /// The body ended at `input[consumed]`: the last chunk, trailers and final CRLF are taken.
    pub done: bool,
}

/// Where the decoder is in the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Size,
    /// Whitespace after the size: only `;` may follow.
    SizeSpace,
    ExtNameStart,
    ExtName,
    /// Whitespace after a name: `=` or `;` may follow.
    ExtAfterName,
    ExtValueStart,
    ExtToken,
    ExtQuoted,
    ExtQuotedPair,
    ExtAfterQuoted,
    /// Whitespace after a value: only `;` may follow.
    ExtAfterValue,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    EndLf,
    Done,
}

/// Trailer field names that must not arrive after the body (RFC 9110 §6.5.1): a next hop
/// that merges trailers into the head would frame or route by them.
const FORBIDDEN_TRAILERS: [&[u8]; 3] = [b"content-length", b"transfer-encoding", b"host"];
const TRAILER_NAME_KEPT: usize = 17;

/// Validates one chunked body, fed in pieces of any size.
#[derive(Clone, Debug)]
pub struct ChunkedDecoder {
    state: State,
    max_data: u64,
    data_bytes: u64,
    /// The chunk-size being read, then the data left of the chunk.
    size: u64,
    digits: u8,
    line_bytes: usize,
    trailer_bytes: usize,
    trailers: bool,
    /// The start of the current trailer field's name, to refuse framing fields.
    trailer_name: [u8; TRAILER_NAME_KEPT],
    trailer_name_len: usize,
    failed: Option<ChunkError>,
}

impl ChunkedDecoder {
    /// A decoder that refuses bodies with more than `max_data` bytes of chunk data.
    pub fn new(max_data: u64) -> ChunkedDecoder {
        ChunkedDecoder {
            state: State::Size,
            max_data,
            data_bytes: 0,
            size: 0,
            digits: 0,
            line_bytes: 0,
            trailer_bytes: 0,
            trailers: false,
            trailer_name: [0; TRAILER_NAME_KEPT],
            trailer_name_len: 0,
            failed: None,
        }
    }

    /// Takes the next bytes of the body. Call again with `input[consumed..]` until all of it
    /// is consumed or `done`; bytes after `done` belong to the next message. Once an error is
    /// returned, every later call returns it again.
    pub fn feed(&mut self, input: &[u8]) -> Result<ChunkStep, ChunkError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        // Spans are u32; a longer input is simply taken in several calls.
        let input = &input[..input.len().min(u32::MAX as usize)];
        let mut i = 0;
        while i < input.len() && self.state != State::Done {
            if self.state == State::Data {
                return Ok(self.take_data(input, i));
            }
            if let Err(e) = self.step(input[i]) {
                self.failed = Some(e);
                return Err(e);
            }
            i += 1;
        }
        Ok(ChunkStep {
            consumed: i,
            data: None,
            done: self.state == State::Done,
        })
    }

    /// Whether the body had trailer fields.
    pub fn trailers(&self) -> bool {
        self.trailers
    }

    /// Chunk data bytes taken so far.
    pub fn data_bytes(&self) -> u64 {
        self.data_bytes
    }

    /// Whether the whole body has been taken.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    fn take_data(&mut self, input: &[u8], at: usize) -> ChunkStep {
        let run = (input.len() - at).min(usize::try_from(self.size).unwrap_or(usize::MAX));
        self.size -= run as u64;
        self.data_bytes += run as u64;
        if self.size == 0 {
            self.state = State::DataCr;
        }
        ChunkStep {
            consumed: at + run,
            data: Some(Span::new(at, at + run)),
            done: false,
        }
    }

    /// Takes one framing byte.
    fn step(&mut self, b: u8) -> Result<(), ChunkError> {
        use State as S;
        match self.state {
            S::Size | S::SizeSpace | S::SizeLf => self.size_line(b),
            S::DataCr | S::DataLf => self.data_end(b),
            S::TrailerStart | S::TrailerName | S::TrailerValue | S::TrailerLf | S::EndLf => {
                self.trailer(b)
            }
            S::Data | S::Done => unreachable!("feed handles data and the end"),
            _ => self.extension(b),
        }
    }

    fn size_line(&mut self, b: u8) -> Result<(), ChunkError> {
        self.count_line_byte()?;
        match (self.state, b) {
            (State::Size, _) if b.is_ascii_hexdigit() => self.size_digit(b)?,
            (State::Size, b' ' | b'\t') if self.digits > 0 => self.state = State::SizeSpace,
            (State::Size, b';') if self.digits > 0 => self.state = State::ExtNameStart,
            (State::Size, b'\r') if self.digits > 0 => self.state = State::SizeLf,
            (State::SizeSpace, b' ' | b'\t') => {}
            (State::SizeSpace, b';') => self.state = State::ExtNameStart,
            (State::SizeLf, b'\n') => self.start_chunk(),
            (_, b'\n') | (State::SizeLf, _) => return Err(ChunkError::BadLineEnding),
            _ => return Err(ChunkError::BadSize),
        }
        Ok(())
    }

    fn count_line_byte(&mut self) -> Result<(), ChunkError> {
        self.line_bytes += 1;
        // The CRLF is not part of the line's length.
        match self.line_bytes > MAX_LINE_BYTES + 2 {
            true => Err(ChunkError::LineTooLong),
            false => Ok(()),
        }
    }

    fn size_digit(&mut self, b: u8) -> Result<(), ChunkError> {
        let digit = (b as char).to_digit(16).unwrap_or_default();
        // Leading zeros are allowed (`1*HEXDIG`) and change nothing: the size overflows only
        // by its value. The line-length limit bounds a run of zeros.
        if self.size > u64::MAX >> 4 {
            return Err(ChunkError::TooLarge);
        }
        self.digits = self.digits.saturating_add(1);
        self.size = self.size << 4 | u64::from(digit);
        // Refuse as soon as the size is too big, before its data is waited for.
        match self.size > self.max_data - self.data_bytes {
            true => Err(ChunkError::TooLarge),
            false => Ok(()),
        }
    }

    /// The chunk-size line has ended.
    fn start_chunk(&mut self) {
        self.state = match self.size {
            0 => State::TrailerStart,
            _ => State::Data,
        };
        self.digits = 0;
        self.line_bytes = 0;
    }

    /// `chunk-ext = *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] )`, RFC 9112 §7.1.1.
    fn extension(&mut self, b: u8) -> Result<(), ChunkError> {
        use State as S;
        self.count_line_byte()?;
        let space = b == b' ' || b == b'\t';
        self.state = match (self.state, b) {
            (S::ExtNameStart | S::ExtAfterName | S::ExtValueStart | S::ExtAfterValue, _)
                if space =>
            {
                self.state
            }
            (S::ExtName | S::ExtToken | S::ExtAfterQuoted, _) if space => match self.state {
                S::ExtName => S::ExtAfterName,
                _ => S::ExtAfterValue,
            },
            (S::ExtNameStart, _) if is_tchar(b) => S::ExtName,
            (S::ExtName, _) if is_tchar(b) => S::ExtName,
            (S::ExtName | S::ExtAfterName, b'=') => S::ExtValueStart,
            (S::ExtValueStart, b'"') => S::ExtQuoted,
            (S::ExtValueStart | S::ExtToken, _) if is_tchar(b) => S::ExtToken,
            (S::ExtQuoted, b'"') => S::ExtAfterQuoted,
            (S::ExtQuoted, b'\\') => S::ExtQuotedPair,
            (S::ExtQuoted, _) if is_qdtext(b) => S::ExtQuoted,
            (S::ExtQuotedPair, _) if is_qdtext(b) || b == b'"' || b == b'\\' => S::ExtQuoted,
            (
                S::ExtName | S::ExtAfterName | S::ExtToken | S::ExtAfterQuoted | S::ExtAfterValue,
                b';',
            ) => S::ExtNameStart,
            (S::ExtName | S::ExtToken | S::ExtAfterQuoted, b'\r') => S::SizeLf,
            (_, b'\n') => return Err(ChunkError::BadLineEnding),
            _ => return Err(ChunkError::BadExtension),
        };
        Ok(())
    }

    fn data_end(&mut self, b: u8) -> Result<(), ChunkError> {
        self.state = match (self.state, b) {
            (State::DataCr, b'\r') => State::DataLf,
            (State::DataLf, b'\n') => State::Size,
            _ => return Err(ChunkError::BadDataEnd),
        };
        Ok(())
    }

    /// `trailer-section = *( field-line CRLF )` then CRLF (RFC 9112 §7.1.2).
    fn trailer(&mut self, b: u8) -> Result<(), ChunkError> {
        use State as S;
        self.trailer_bytes += 1;
        if self.trailer_bytes > MAX_TRAILER_BYTES {
            return Err(ChunkError::TrailersTooLarge);
        }
        self.state = match (self.state, b) {
            (S::TrailerStart, b'\r') => S::EndLf,
            (S::TrailerStart | S::TrailerName, _) if is_tchar(b) => {
                self.keep_name_byte(b);
                S::TrailerName
            }
            (S::TrailerName, b':') => self.end_trailer_name()?,
            (S::TrailerValue, b'\r') => S::TrailerLf,
            (S::TrailerValue, _) if is_field_vchar(b) || b == b' ' || b == b'\t' => S::TrailerValue,
            (S::TrailerLf, b'\n') => S::TrailerStart,
            (S::EndLf, b'\n') => S::Done,
            (S::TrailerLf | S::EndLf, _) | (_, b'\n') => return Err(ChunkError::BadLineEnding),
            // Includes whitespace at a line's start (obs-fold) and before a colon.
            _ => return Err(ChunkError::BadTrailer),
        };
        Ok(())
    }

    fn keep_name_byte(&mut self, b: u8) {
        if let Some(slot) = self.trailer_name.get_mut(self.trailer_name_len) {
            *slot = b;
        }
        self.trailer_name_len += 1;
    }

    fn end_trailer_name(&mut self) -> Result<State, ChunkError> {
        let len = std::mem::take(&mut self.trailer_name_len);
        let kept = &self.trailer_name[..len.min(TRAILER_NAME_KEPT)];
        if len <= TRAILER_NAME_KEPT
            && FORBIDDEN_TRAILERS
                .iter()
                .any(|f| kept.eq_ignore_ascii_case(f))
        {
            return Err(ChunkError::BadTrailer);
        }
        self.trailers = true;
        Ok(State::TrailerValue)
    }
}

/// `qdtext` (RFC 9110 §5.6.4): what a quoted-string holds besides `"` and `\`.
fn is_qdtext(b: u8) -> bool {
    matches!(b, b'\t' | b' ' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e | 0x80..)
}

/// `field-vchar` (RFC 9110 §5.5): visible ASCII or obs-text.
fn is_field_vchar(b: u8) -> bool {
    matches!(b, 0x21..=0x7e | 0x80..)
}

#[cfg(test)]
mod tests;
