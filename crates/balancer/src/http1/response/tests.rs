use super::*;

/// Parses `raw` whole, and checks that every prefix is incomplete or gets the same answer.
fn parse_for(raw: &[u8], method: &Method) -> Result<Option<ResponseHead>, ResponseError> {
    let mut fields = Vec::new();
    let whole = parse_response(raw, method, &mut fields);
    for cut in 0..raw.len() {
        match parse_response(&raw[..cut], method, &mut fields) {
            Ok(None) => {}
            prefix => assert_eq!(prefix, whole, "prefix of {cut} bytes of {raw:?}"),
        }
    }
    whole
}

fn head_for(raw: &[u8], method: &Method) -> ResponseHead {
    match parse_for(raw, method) {
        Ok(Some(head)) => head,
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(raw)),
    }
}

fn head(raw: &[u8]) -> ResponseHead {
    head_for(raw, &Method::GET)
}

fn body(raw: &[u8]) -> ResponseBody {
    head(raw).body
}

fn refused(raw: &[u8]) -> &'static str {
    match parse_for(raw, &Method::GET) {
        Err(e) => e.code,
        other => panic!(
            "{:?} was not refused: {other:?}",
            String::from_utf8_lossy(raw)
        ),
    }
}

/// A 200 response with `fields` (each ending in CRLF).
fn ok(fields: &str) -> Vec<u8> {
    format!("HTTP/1.1 200 OK\r\n{fields}\r\n").into_bytes()
}

#[test]
fn content_length_response() {
    let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: w\r\n\r\nhello";
    let mut fields = Vec::new();
    let h = parse_response(raw, &Method::GET, &mut fields)
        .unwrap()
        .unwrap();
    assert_eq!(
        (h.status, h.version, h.body),
        (200, Version::Http11, ResponseBody::Length(5))
    );
    assert_eq!(&raw[h.head_len..], b"hello");
    assert_eq!(
        (
            h.content_length_fields,
            h.had_content_length_and_transfer_encoding
        ),
        (1, false)
    );
    assert_eq!(fields.len(), 2);
    assert!(fields[1].is(raw, "server"));
}

#[test]
fn chunked_response() {
    let raw = ok("Transfer-Encoding: gzip, chunked\r\n");
    let h = head(&raw);
    assert_eq!(h.body, ResponseBody::Chunked);
    assert_eq!(h.transfer_codings.unwrap().of(&raw), b"gzip, chunked");
    // Unknown codings are the client's business: the proxy passes them on.
    assert_eq!(
        body(&ok("Transfer-Encoding: br, chunked\r\n")),
        ResponseBody::Chunked
    );
}

#[test]
fn transfer_encoding_overrides_content_length() {
    let h = head(&ok("Content-Length: 10\r\nTransfer-Encoding: chunked\r\n"));
    assert_eq!(h.body, ResponseBody::Chunked);
    assert!(h.had_content_length_and_transfer_encoding);
}

#[test]
fn transfer_encoding_not_ending_in_chunked_reads_until_close() {
    assert_eq!(
        body(&ok("Transfer-Encoding: gzip\r\n")),
        ResponseBody::UntilClose
    );
    assert_eq!(
        body(&ok("Transfer-Encoding: chunked, gzip\r\n")),
        ResponseBody::UntilClose
    );
    let h = head(&ok("Transfer-Encoding: gzip\r\nContent-Length: 3\r\n"));
    assert_eq!(h.body, ResponseBody::UntilClose);
    assert!(h.had_content_length_and_transfer_encoding);
}

#[test]
fn no_framing_reads_until_close() {
    assert_eq!(body(&ok("")), ResponseBody::UntilClose);
    assert_eq!(body(b"HTTP/1.0 200 OK\r\n\r\n"), ResponseBody::UntilClose);
}

#[test]
fn responses_without_a_body() {
    let with_length = "Content-Length: 100\r\n";
    for status in [
        "100 Continue",
        "101 Switching Protocols",
        "103 Early Hints",
        "204 No Content",
        "304 Not Modified",
    ] {
        let raw = format!("HTTP/1.1 {status}\r\n{with_length}\r\n");
        assert_eq!(body(raw.as_bytes()), ResponseBody::None, "{status}");
    }
    assert_eq!(
        head_for(&ok(with_length), &Method::HEAD).body,
        ResponseBody::None
    );
    assert_eq!(
        head_for(&ok("Transfer-Encoding: chunked\r\n"), &Method::HEAD).body,
        ResponseBody::None
    );
    assert_eq!(head_for(&ok(""), &Method::CONNECT).body, ResponseBody::None);
    let refused = b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 2\r\n\r\n";
    assert_eq!(
        head_for(refused, &Method::CONNECT).body,
        ResponseBody::Length(2)
    );
}

#[test]
fn connection_options() {
    let h = head(&ok("Connection: close\r\nContent-Length: 0\r\n"));
    assert!(h.connection.close && !h.connection.persistent(h.version));
    let h = head(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n");
    assert!(h.connection.persistent(h.version));
    let h = head(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    );
    assert!(h.connection.upgrade);
}

#[test]
fn reason_phrase_may_be_empty_or_missing() {
    assert_eq!(
        head(b"HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n").status,
        200
    );
    assert_eq!(
        head(b"HTTP/1.1 404\r\nContent-Length: 0\r\n\r\n").status,
        404
    );
}

#[test]
fn identical_content_lengths_fold() {
    let h = head(&ok("Content-Length: 3\r\nContent-Length: 3, 3\r\n"));
    assert_eq!(
        (h.body, h.content_length_fields),
        (ResponseBody::Length(3), 2)
    );
}

#[test]
fn interim_then_final_response() {
    let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    let first = head(raw);
    assert_eq!((first.status, first.head_len), (100, 25));
    assert_eq!(head(&raw[first.head_len..]).status, 200);
}

#[test]
fn refuses_bare_line_endings_and_obs_fold() {
    assert_eq!(
        refused(b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n"),
        "bad_response"
    );
    assert_eq!(
        refused(b"HTTP/1.1 200 OK\r\nContent-Length: 0\n\n"),
        "bad_response"
    );
    assert_eq!(
        refused(b"HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n"),
        "bad_response"
    );
    assert_eq!(refused(&ok("X: a\r\n b\r\n")), "bad_response");
    assert_eq!(refused(&ok("Content-Length : 0\r\n")), "bad_response");
    assert_eq!(refused(&ok("X: a\0\r\n")), "bad_response");
}

#[test]
fn refuses_empty_lines_before_the_status_line() {
    assert_eq!(refused(b"\r\nHTTP/1.1 200 OK\r\n\r\n"), "bad_response");
    assert_eq!(refused(b"\nHTTP/1.1 200 OK\r\n\r\n"), "bad_response");
}

#[test]
fn refuses_bad_content_length_even_without_a_body() {
    assert_eq!(refused(&ok("Content-Length: +5\r\n")), "bad_response");
    assert_eq!(refused(&ok("Content-Length: 5, 6\r\n")), "bad_response");
    assert_eq!(
        refused(&ok("Content-Length: 5\r\nContent-Length: 6\r\n")),
        "bad_response"
    );
    assert_eq!(
        refused(b"HTTP/1.1 204 No Content\r\nContent-Length: x\r\n\r\n"),
        "bad_response"
    );
    let mut fields = Vec::new();
    let head_response = parse_response(&ok("Content-Length: -1\r\n"), &Method::HEAD, &mut fields);
    assert_eq!(head_response.unwrap_err().code, "bad_response");
}

#[test]
fn refuses_ambiguous_transfer_encoding() {
    assert_eq!(
        refused(&ok("Transfer-Encoding: chunked, chunked\r\n")),
        "bad_response"
    );
    assert_eq!(
        refused(&ok("Transfer-Encoding: chunked;x=1\r\n")),
        "bad_response"
    );
    assert_eq!(
        refused(&ok("Transfer-Encoding: chunked,\r\n")),
        "bad_response"
    );
    assert_eq!(
        refused(&ok("Transfer_Encoding: chunked\r\n")),
        "bad_response"
    );
    let split = ok("Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n");
    assert_eq!(refused(&split), "bad_response");
    assert_eq!(
        refused(b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
        "bad_response"
    );
}

#[test]
fn refuses_malformed_status_lines() {
    for line in [
        "HTTP/2.0 200 OK",
        "HTTP/1.2 200 OK",
        "HTTP/1.1 600 Nope",
        "HTTP/1.1 099 Low",
        "HTTP/1.1 20 OK",
        "HTTP/1.1 2000 OK",
        "HTTP/1.1  200 OK",
        "http/1.1 200 OK",
        "HTTP/1.1 200 OK\x01",
    ] {
        assert_eq!(
            refused(format!("{line}\r\n\r\n").as_bytes()),
            "bad_response",
            "{line:?}"
        );
    }
}

#[test]
fn head_too_large() {
    let mut raw = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
    raw.resize(MAX_RESPONSE_HEAD_BYTES, b'a');
    let mut fields = Vec::new();
    let e = parse_response(&raw, &Method::GET, &mut fields).unwrap_err();
    assert_eq!(e.code, "response_head_too_large");
    assert_eq!(
        parse_response(&raw[..raw.len() - 1], &Method::GET, &mut fields),
        Ok(None)
    );
    let many = ok(&"X: y\r\n".repeat(crate::http1::MAX_FIELDS + 1));
    assert_eq!(refused(&many), "response_head_too_large");
}
