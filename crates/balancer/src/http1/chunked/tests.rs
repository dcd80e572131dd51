use super::*;

/// What a decoder made of one body: the data, where it ended (if it did), or its error.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    data: Vec<u8>,
    end: Option<usize>,
    error: Option<ChunkError>,
    trailers: bool,
}

/// Feeds `body` in pieces cut at `cuts` (ascending offsets), as a proxy would.
fn decode_split(body: &[u8], max_data: u64, cuts: &[usize]) -> Outcome {
    let mut decoder = ChunkedDecoder::new(max_data);
    let mut out = Outcome {
        data: Vec::new(),
        end: None,
        error: None,
        trailers: false,
    };
    let mut offset = 0;
    for piece_end in cuts.iter().copied().chain([body.len()]) {
        let piece_end = piece_end.max(offset);
        while offset < piece_end {
            let input = &body[offset..piece_end];
            match decoder.feed(input) {
                Err(e) => {
                    out.error = Some(e);
                    assert_eq!(decoder.feed(input), Err(e), "errors stay");
                    return out;
                }
                Ok(step) => {
                    assert!(step.consumed <= input.len());
                    if let Some(span) = step.data {
                        assert!(span.end as usize <= step.consumed);
                        out.data.extend_from_slice(span.of(input));
                    }
                    offset += step.consumed;
                    if step.done {
                        out.end = Some(offset);
                        out.trailers = decoder.trailers();
                        assert_eq!(decoder.data_bytes(), out.data.len() as u64);
                        return out;
                    }
                }
            }
        }
    }
    out
}

/// Decodes `body` whole, byte by byte, and in pseudo-random pieces; all must agree.
fn decode(body: &[u8], max_data: u64) -> Outcome {
    let whole = decode_split(body, max_data, &[]);
    let bytes: Vec<usize> = (1..body.len()).collect();
    assert_eq!(decode_split(body, max_data, &bytes), whole, "byte by byte");
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64 ^ body.len() as u64;
    for _ in 0..20 {
        let mut cuts: Vec<usize> = (0..4)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed % (body.len() as u64 + 1)) as usize
            })
            .collect();
        cuts.sort_unstable();
        assert_eq!(decode_split(body, max_data, &cuts), whole, "cuts {cuts:?}");
    }
    whole
}

fn data(body: &[u8]) -> Vec<u8> {
    let out = decode(body, u64::MAX);
    assert_eq!((out.error, out.end), (None, Some(body.len())), "{body:?}");
    out.data
}

fn error(body: &[u8]) -> ChunkError {
    decode(body, u64::MAX)
        .error
        .unwrap_or_else(|| panic!("{:?} was accepted", String::from_utf8_lossy(body)))
}

#[test]
fn one_chunk() {
    assert_eq!(data(b"5\r\nhello\r\n0\r\n\r\n"), b"hello");
}

#[test]
fn several_chunks_and_hex_sizes() {
    let body = b"3\r\nabc\r\nA\r\n0123456789\r\n00f\r\n0123456789abcde\r\n0\r\n\r\n";
    assert_eq!(data(body), b"abc01234567890123456789abcde");
    assert_eq!(data(b"0000000000000000\r\n\r\n"), b"");
}

#[test]
fn empty_body() {
    let out = decode(LAST_CHUNK, 0);
    assert_eq!((out.data.len(), out.end, out.trailers), (0, Some(5), false));
}

#[test]
fn bytes_after_the_end_are_left() {
    let body = b"1\r\nx\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
    let out = decode(body, u64::MAX);
    assert_eq!((out.data, out.end), (b"x".to_vec(), Some(11)));
}

#[test]
fn extensions() {
    for line in [
        "5;a",
        "5;a=b",
        "5 ;a",
        "5\t; a = b ;c",
        "5;a=\"quoted; \\\"x\\\" \"",
        "5;a=\"\";b=c",
        "5;a=b;c=d;e",
        "5;!#$%&'*+-.^_`|~=x",
    ] {
        let body = format!("{line}\r\nhello\r\n0;last\r\n\r\n");
        assert_eq!(data(body.as_bytes()), b"hello", "{line}");
    }
}

#[test]
fn trailers() {
    let body = b"1\r\nx\r\n0\r\nX-Checksum: abc\r\nX-Other:\r\n\r\n";
    let out = decode(body, u64::MAX);
    assert_eq!(
        (out.end, out.trailers, out.error),
        (Some(body.len()), true, None)
    );
    assert!(!decode(b"0\r\n\r\n", 0).trailers);
}

#[test]
fn bad_sizes() {
    for body in [
        "0x5\r\nhello\r\n0\r\n\r\n",
        "-1\r\n",
        "+1\r\n",
        "\r\n",
        ";a\r\n",
        "g\r\n",
        " 5\r\n",
    ] {
        assert_eq!(error(body.as_bytes()), ChunkError::BadSize, "{body:?}");
    }
}

#[test]
fn whitespace_after_the_size_needs_an_extension() {
    // RFC 9112 §7.1.1 allows BWS only before `;`.
    assert_eq!(error(b"5 \r\nhello\r\n0\r\n\r\n"), ChunkError::BadSize);
    assert_eq!(error(b"5\t\r\nhello\r\n0\r\n\r\n"), ChunkError::BadSize);
    assert_eq!(error(b"0 \r\n\r\n"), ChunkError::BadSize);
}

#[test]
fn sizes_too_large() {
    assert_eq!(error(b"ffffffffffffffffff\r\n"), ChunkError::TooLarge);
    // Leading zeros are digits like any other, but they do not make a size large.
    assert_eq!(data(b"00000000000000005\r\nhello\r\n0\r\n\r\n"), b"hello");
    assert_eq!(decode(b"ffffffffffffffff\r\n", u64::MAX).error, None);
    assert_eq!(
        decode(b"5\r\nhello\r\n0\r\n\r\n", 4).error,
        Some(ChunkError::TooLarge)
    );
    let two = b"3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n";
    assert_eq!(decode(two, 5).error, Some(ChunkError::TooLarge));
    assert_eq!(decode(two, 6).data, b"abcdef");
    assert!(ChunkError::TooLarge.is_too_large());
}

#[test]
fn bad_line_endings() {
    for body in [
        "5\nhello\r\n0\r\n\r\n",
        "5\r\rhello\r\n0\r\n\r\n",
        "5;a\nhello\r\n",
        "5;a=b\n",
        "1\r\nx\r\n0\n\r\n",
        "1\r\nx\r\n0\r\n\n",
        "1\r\nx\r\n0\r\n\r\r",
        "0\r\nX: y\n\r\n",
        "0\r\nX: y\rz\r\n\r\n",
    ] {
        assert_eq!(
            error(body.as_bytes()),
            ChunkError::BadLineEnding,
            "{body:?}"
        );
    }
}

#[test]
fn data_must_end_in_crlf() {
    for body in [
        "5\r\nhello\n0\r\n\r\n",
        "5\r\nhelloXX0\r\n\r\n",
        "5\r\nhello\r0\r\n\r\n",
        "3\r\nhello\r\n",
    ] {
        assert_eq!(error(body.as_bytes()), ChunkError::BadDataEnd, "{body:?}");
    }
}

#[test]
fn bad_extensions() {
    for line in [
        "5;",
        "5; ",
        "5;a ",
        "5;a=",
        "5;a= ",
        "5;a=b ",
        "5;=b",
        "5;a=b c",
        "5;a=\"x",
        "5;a=\"x\" y",
        "5;a@b",
        "5;a=\"\x01\"",
    ] {
        let body = format!("{line}\r\nhello\r\n0\r\n\r\n");
        assert_eq!(error(body.as_bytes()), ChunkError::BadExtension, "{line:?}");
    }
}

#[test]
fn bad_trailers() {
    for trailer in [
        " X: y\r\n",
        "X : y\r\n",
        ": y\r\n",
        "X\r\n",
        "X: a\x01b\r\n",
        "X: a\x7f\r\n",
        "X: a\r\n folded\r\n",
        "Content-Length: 5\r\n",
        "transfer-encoding: chunked\r\n",
        "HOST: a\r\n",
    ] {
        let body = format!("0\r\n{trailer}\r\n");
        assert_eq!(
            error(body.as_bytes()),
            ChunkError::BadTrailer,
            "{trailer:?}"
        );
    }
    // Longer names that merely start like a framing field are fine.
    assert_eq!(data(b"0\r\nContent-Length-Extra: 1\r\n\r\n"), b"");
}

#[test]
fn line_and_trailer_limits() {
    let long_ext = format!("5;a={}\r\nhello\r\n0\r\n\r\n", "b".repeat(MAX_LINE_BYTES));
    assert_eq!(error(long_ext.as_bytes()), ChunkError::LineTooLong);
    let at_limit = format!(
        "5;a={}\r\nhello\r\n0\r\n\r\n",
        "b".repeat(MAX_LINE_BYTES - 4)
    );
    assert_eq!(data(at_limit.as_bytes()), b"hello");
    let trailer = format!("0\r\nX: {}\r\n\r\n", "v".repeat(MAX_TRAILER_BYTES));
    assert_eq!(error(trailer.as_bytes()), ChunkError::TrailersTooLarge);
}

#[test]
fn encode_chunk_headers() {
    let mut out = Vec::new();
    for len in [1, 15, 16, 255, 4096, 0x1234_5678] {
        out.clear();
        encode_chunk_header(len, &mut out);
        assert_eq!(out, format!("{len:x}\r\n").into_bytes());
    }
    out.clear();
    encode_chunk_header(0, &mut out);
    assert!(out.is_empty());
    let mut body = Vec::new();
    encode_chunk_header(11, &mut body);
    body.extend_from_slice(b"hello world");
    body.extend_from_slice(CHUNK_DATA_END);
    body.extend_from_slice(LAST_CHUNK);
    assert_eq!(data(&body), b"hello world");
}
