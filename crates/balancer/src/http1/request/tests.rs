use super::*;

/// Parses `raw` whole with `limits`, and checks that every prefix of it is either incomplete
/// or gets exactly the same answer (the head delivered in two pieces, the first of any length).
fn parse_with(raw: &[u8], limits: &Limits) -> Result<Option<RequestHead>, RequestError> {
    let mut fields = vec![Field {
        name: Span::default(),
        value: Span::default(),
    }];
    let whole = parse_request(raw, limits, &mut fields);
    let whole_fields = fields.clone();
    for cut in 0..raw.len() {
        match parse_request(&raw[..cut], limits, &mut fields) {
            Ok(None) => {}
            prefix => {
                assert_eq!(prefix, whole, "prefix of {cut} bytes of {raw:?}");
                assert_eq!(fields, whole_fields);
            }
        }
    }
    whole
}

fn parse(raw: &[u8]) -> Result<Option<RequestHead>, RequestError> {
    parse_with(raw, &Limits::default())
}

fn head(raw: &[u8]) -> RequestHead {
    match parse(raw) {
        Ok(Some(head)) => head,
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(raw)),
    }
}

fn code(raw: &[u8]) -> &'static str {
    match parse(raw) {
        Err(e) => e.code,
        other => panic!(
            "{:?} was not refused: {other:?}",
            String::from_utf8_lossy(raw)
        ),
    }
}

/// A request with `fields` (each ending in CRLF) after a GET request line.
fn get(fields: &str) -> Vec<u8> {
    format!("GET / HTTP/1.1\r\n{fields}\r\n").into_bytes()
}

fn at(raw: &[u8], span: Option<Span>) -> Option<&str> {
    span.map(|s| std::str::from_utf8(s.of(raw)).unwrap())
}

#[test]
fn origin_form_get() {
    let raw = b"GET /a/b?c=d&e HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n";
    let mut fields = Vec::new();
    let head = parse_request(raw, &Limits::default(), &mut fields)
        .unwrap()
        .unwrap();
    assert_eq!(head.method, Method::GET);
    assert_eq!(head.target.of(raw), b"/a/b?c=d&e");
    assert_eq!(head.target_form, TargetForm::Origin);
    assert_eq!(head.version, Version::Http11);
    assert_eq!(head.head_len, raw.len());
    assert_eq!(head.body, BodyLength::None);
    assert_eq!(at(raw, head.host), Some("example.com"));
    assert_eq!(head.connection, ConnectionOptions::default());
    assert!(head.connection.persistent(head.version));
    assert_eq!(
        (head.upgrade, head.expect_continue, head.transfer_codings),
        (None, false, None)
    );
    assert_eq!(fields.len(), 2);
    assert!(fields[1].is(raw, "accept"));
    assert_eq!(fields[1].value.of(raw), b"*/*");
}

#[test]
fn content_length_body() {
    let raw = b"POST /submit HTTP/1.1\r\nHost: a\r\nContent-Length:  5 \r\n\r\nhello";
    let head = head(raw);
    assert_eq!(head.method, Method::POST);
    assert_eq!(head.body, BodyLength::Length(5));
    assert_eq!(head.content_length_fields, 1);
    assert_eq!(&raw[head.head_len..], b"hello");
}

#[test]
fn identical_content_lengths_fold_into_one() {
    let h = head(&get(
        "Host: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n",
    ));
    assert_eq!(
        (h.body, h.content_length_fields),
        (BodyLength::Length(5), 2)
    );
    let h = head(&get("Host: a\r\nContent-Length: 5,5 , 5\r\n"));
    assert_eq!(
        (h.body, h.content_length_fields),
        (BodyLength::Length(5), 1)
    );
    assert_eq!(
        head(&get("Host: a\r\nContent-Length: 0\r\n")).body,
        BodyLength::Length(0)
    );
}

#[test]
fn chunked_body() {
    let raw = get("Host: a\r\nTransfer-Encoding: chunked\r\n");
    let h = head(&raw);
    assert_eq!(h.body, BodyLength::Chunked);
    assert_eq!(at(&raw, h.transfer_codings), Some("chunked"));
    assert!(!h.codings_before_chunked);
}

#[test]
fn transfer_encoding_is_case_insensitive_and_trimmed() {
    for te in ["CHUNKED", "Chunked", "chunked ", "\tchunked", "  chunked\t"] {
        let raw = get(&format!("Host: a\r\nTransfer-Encoding:{te}\r\n"));
        assert_eq!(head(&raw).body, BodyLength::Chunked, "{te:?}");
    }
}

#[test]
fn codings_before_chunked_are_reported_as_received() {
    let raw = get("Host: a\r\nTransfer-Encoding: gzip ,  chunked\r\n");
    let h = head(&raw);
    assert_eq!(h.body, BodyLength::Chunked);
    assert_eq!(at(&raw, h.transfer_codings), Some("gzip ,  chunked"));
    assert!(h.codings_before_chunked);
    for coding in ["x-gzip", "deflate", "compress", "x-compress"] {
        let raw = get(&format!(
            "Host: a\r\nTransfer-Encoding: {coding}, chunked\r\n"
        ));
        assert_eq!(head(&raw).body, BodyLength::Chunked, "{coding}");
    }
}

#[test]
fn absolute_form_authority_replaces_host() {
    let raw = b"GET http://api.example:8080/p?q=1 HTTP/1.1\r\nHost: other.example\r\n\r\n";
    let h = head(raw);
    let TargetForm::Absolute {
        authority,
        path_and_query,
    } = h.target_form
    else {
        panic!("{:?}", h.target_form);
    };
    assert_eq!(authority.of(raw), b"api.example:8080");
    assert_eq!(path_and_query.of(raw), b"/p?q=1");
    assert_eq!(at(raw, h.host), Some("api.example:8080"));
}

#[test]
fn absolute_form_without_path() {
    let raw = b"GET HTTPS://[::1]:8443 HTTP/1.1\r\nHost: x\r\n\r\n";
    let h = head(raw);
    let TargetForm::Absolute { path_and_query, .. } = h.target_form else {
        panic!("{:?}", h.target_form);
    };
    assert!(path_and_query.is_empty());
    assert_eq!(at(raw, h.host), Some("[::1]:8443"));
    let raw = b"GET http://a?x=1 HTTP/1.1\r\nHost: a\r\n\r\n";
    let TargetForm::Absolute { path_and_query, .. } = head(raw).target_form else {
        panic!("not absolute");
    };
    assert_eq!(path_and_query.of(raw), b"?x=1");
}

#[test]
fn connect_and_options_forms() {
    let raw = b"CONNECT db.example:5432 HTTP/1.1\r\nHost: db.example:5432\r\n\r\n";
    let h = head(raw);
    assert_eq!(
        (h.method, h.target_form),
        (Method::CONNECT, TargetForm::Authority)
    );
    assert_eq!(h.target.of(raw), b"db.example:5432");
    let h = head(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(h.target_form, TargetForm::Asterisk);
    assert_eq!(
        head(b"OPTIONS /x HTTP/1.1\r\nHost: a\r\n\r\n").target_form,
        TargetForm::Origin
    );
}

#[test]
fn extension_methods_are_tokens() {
    assert_eq!(
        head(b"PURGE /x HTTP/1.1\r\nHost: a\r\n\r\n")
            .method
            .as_str(),
        "PURGE"
    );
    let raw = b"VERY-LONG-EXTENSION-METHOD /x HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_eq!(head(raw).method.as_str(), "VERY-LONG-EXTENSION-METHOD");
}

#[test]
fn http10_needs_no_host() {
    let h = head(b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!((h.version, h.host), (Version::Http10, None));
    assert!(!h.connection.persistent(h.version));
    let h = head(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
    assert!(h.connection.keep_alive && h.connection.persistent(h.version));
}

#[test]
fn empty_host_names_no_authority() {
    assert_eq!(head(&get("Host:\r\n")).host, None);
    assert_eq!(head(&get("Host:   \r\n")).host, None);
}

#[test]
fn valid_hosts() {
    for host in [
        "example.com",
        "example.com:8080",
        "EXAMPLE.com.",
        "127.0.0.1:80",
        "[::1]:80",
        "[2001:db8::7]",
        "[::ffff:192.0.2.1]",
        "xn--bcher-kva.example",
        "a%41b",
        "h:0",
        "h:65535",
    ] {
        let raw = get(&format!("Host: {host}\r\n"));
        assert_eq!(at(&raw, head(&raw).host), Some(host));
    }
}

#[test]
fn leading_empty_lines_are_skipped() {
    let raw = b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let h = head(raw);
    assert_eq!(h.head_len, raw.len());
    assert_eq!(h.target.of(raw), b"/");
}

#[test]
fn connection_options() {
    let h = head(&get("Host: a\r\nConnection: close\r\n"));
    assert!(h.connection.close && !h.connection.persistent(h.version));
    let raw =
        get("Host: a\r\nConnection: keep-alive, , Upgrade, x-custom\r\nUpgrade: websocket\r\n");
    let h = head(&raw);
    assert_eq!(
        h.connection,
        ConnectionOptions {
            close: false,
            keep_alive: true,
            upgrade: true
        }
    );
    assert_eq!(at(&raw, h.upgrade), Some("websocket"));
}

#[test]
fn upgrade_needs_the_connection_option_and_http11() {
    assert_eq!(
        head(&get("Host: a\r\nUpgrade: websocket\r\n")).upgrade,
        None
    );
    let raw = b"GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";
    assert_eq!(head(raw).upgrade, None);
}

#[test]
fn expect_continue() {
    assert!(
        head(&get(
            "Host: a\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n"
        ))
        .expect_continue
    );
    assert!(!head(b"PUT / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n").expect_continue);
    assert!(!head(&get("Host: a\r\nExpect: something-else\r\n")).expect_continue);
}

#[test]
fn field_values_may_hold_tabs_and_obs_text() {
    let raw = get("Host: a\r\nX-Note: caf\u{e9}\tend\r\n");
    let mut fields = Vec::new();
    parse_request(&raw, &Limits::default(), &mut fields)
        .unwrap()
        .unwrap();
    assert_eq!(fields[1].value.of(&raw), "caf\u{e9}\tend".as_bytes());
}

#[test]
fn what_follows_the_head_is_not_examined() {
    let raw = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\n\r\x00GET";
    assert_eq!(head(raw).head_len, 27);
}

#[test]
fn a_head_fed_byte_by_byte_is_incomplete_until_its_last_byte() {
    let raw = b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n";
    let mut fields = Vec::new();
    let whole = parse_request(raw, &Limits::default(), &mut fields).unwrap();
    for cut in 0..raw.len() {
        assert_eq!(
            parse_request(&raw[..cut], &Limits::default(), &mut fields),
            Ok(None)
        );
    }
    assert!(whole.is_some());
}

#[test]
fn fields_reuse_the_callers_vector() {
    let mut fields = Vec::with_capacity(8);
    let raw = get("Host: a\r\nB: c\r\n");
    parse_request(&raw, &Limits::default(), &mut fields).unwrap();
    let capacity = fields.capacity();
    parse_request(&raw, &Limits::default(), &mut fields).unwrap();
    assert_eq!((fields.len(), fields.capacity()), (2, capacity));
    parse_request(b"GET", &Limits::default(), &mut fields).unwrap();
    assert!(fields.is_empty());
}

// ---- Refusals: one class each, with its exact code.

#[test]
fn bare_lf_anywhere_in_the_head() {
    assert_eq!(code(b"GET / HTTP/1.1\nHost: a\r\n\r\n"), "bad_request");
    assert_eq!(code(b"GET / HTTP/1.1\r\nHost: a\n\r\n"), "bad_request");
    assert_eq!(code(b"GET / HTTP/1.1\r\nHost: a\r\n\n"), "bad_request");
    assert_eq!(code(b"GET / HTTP/1.1\n\n"), "bad_request");
    assert_eq!(code(b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"), "bad_request");
}

#[test]
fn bare_cr_anywhere_in_the_head() {
    assert_eq!(code(b"GET / HTTP/1.1\rHost: a\r\n\r\n"), "bad_request");
    assert_eq!(code(b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n"), "bad_request");
    assert_eq!(code(b"GET / HTTP/1.1\r\nHost: a\r\n\r\r\n"), "bad_request");
}

#[test]
fn obs_fold() {
    assert_eq!(code(&get("Host: a\r\nX: b\r\n c\r\n")), "bad_request");
    assert_eq!(code(&get("Host: a\r\nX: b\r\n\tc\r\n")), "bad_request");
    assert_eq!(code(&get(" Host: a\r\n")), "bad_request");
}

#[test]
fn malformed_field_lines() {
    assert_eq!(code(&get("Host : a\r\n")), "bad_request");
    assert_eq!(code(&get("Host\t: a\r\n")), "bad_request");
    assert_eq!(code(&get(": a\r\nHost: a\r\n")), "bad_request");
    assert_eq!(code(&get("Host: a\r\nNo-Colon\r\n")), "bad_request");
    assert_eq!(code(&get("Host: a\r\nX(y): z\r\n")), "bad_request");
    assert_eq!(code(&get("Host: a\r\nX: nul\0byte\r\n")), "bad_request");
    assert_eq!(code(&get("Host: a\r\nX: bell\x07\r\n")), "bad_request");
    assert_eq!(code(&get("Host: a\r\nX: del\x7f\r\n")), "bad_request");
}

#[test]
fn malformed_request_lines() {
    for line in [
        "GET  / HTTP/1.1",
        "GET /  HTTP/1.1",
        "GET / HTTP/1.1 ",
        " GET / HTTP/1.1",
        "GET\t/ HTTP/1.1",
        "GET /",
        "GET / HTTP/1.1 extra",
        "G(T / HTTP/1.1",
        "GET / http/1.1",
        "GET / HTTP/1.10",
        "GET / HTTP/11.1",
        "GET / HTTP/1",
    ] {
        assert_eq!(
            code(format!("{line}\r\nHost: a\r\n\r\n").as_bytes()),
            "bad_request",
            "{line}"
        );
    }
}

#[test]
fn targets_outside_rfc_3986() {
    for target in [
        "/a\"b",
        "/a<b>",
        "/a{b}",
        "/a|b",
        "/a\\b",
        "/a^b",
        "/a`b",
        "/a#frag",
        "/%zz",
        "/%4",
        "/caf\u{e9}",
        "/[x]",
        "ftp://a/b",
        "http:/a",
        "http//a",
        "a/b",
        "http://u@a/",
        "http:///x",
        "http://a b",
        "http://a:99999/",
        "*x",
    ] {
        let raw = format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(code(raw.as_bytes()), "bad_request", "{target}");
    }
}

#[test]
fn method_and_target_form_must_match() {
    assert_eq!(code(b"GET * HTTP/1.1\r\nHost: a\r\n\r\n"), "bad_request");
    assert_eq!(
        code(b"CONNECT / HTTP/1.1\r\nHost: a\r\n\r\n"),
        "bad_request"
    );
    assert_eq!(
        code(b"CONNECT example.com HTTP/1.1\r\nHost: a\r\n\r\n"),
        "bad_request"
    );
    assert_eq!(
        code(b"CONNECT http://a:1/ HTTP/1.1\r\nHost: a\r\n\r\n"),
        "bad_request"
    );
    assert_eq!(
        code(b"GET a.example:80 HTTP/1.1\r\nHost: a\r\n\r\n"),
        "bad_request"
    );
}

#[test]
fn uri_too_long() {
    let limits = Limits {
        max_uri_bytes: 16,
        ..Limits::default()
    };
    let ok = b"GET /123456789012345 HTTP/1.1\r\nHost: a\r\n\r\n";
    assert!(parse_with(ok, &limits).unwrap().is_some());
    let long = b"GET /1234567890123456 HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_eq!(parse_with(long, &limits).unwrap_err().code, "uri_too_long");
    // Known as soon as the target has passed the limit.
    let mut fields = Vec::new();
    let partial = parse_request(b"GET /1234567890123456", &limits, &mut fields);
    assert_eq!(partial.unwrap_err().status, 414);
    // Whatever follows an overlong target, every prefix gets the same answer.
    let then_bare_lf = b"GET /1234567890123456 HTTP/1.1\nHost: a\r\n\r\n";
    assert_eq!(
        parse_with(then_bare_lf, &limits).unwrap_err().code,
        "uri_too_long"
    );
    let then_bad_field = b"GET /1234567890123456 HTTP/1.1\r\nHo st: a\r\n\r\n";
    assert_eq!(
        parse_with(then_bad_field, &limits).unwrap_err().code,
        "uri_too_long"
    );
}

#[test]
fn head_larger_than_the_limit() {
    let limits = Limits {
        max_head_bytes: 64,
        ..Limits::default()
    };
    let padded = |n: usize| get(&format!("Host: a\r\nX-Padding: {}\r\n", "p".repeat(n)));
    let fits = padded(24);
    assert_eq!(fits.len(), 64);
    assert!(parse_with(&fits, &limits).unwrap().is_some());
    let raw = padded(25);
    let e = parse_with(&raw, &limits).unwrap_err();
    assert_eq!((e.status, e.code), (431, "headers_too_large"));
    // Incomplete is only an answer while the buffer is shorter than the limit.
    assert!(parse_with(&raw[..63], &limits).unwrap().is_none());
    assert_eq!(parse_with(&raw[..64], &limits).unwrap_err().status, 431);
}

#[test]
fn too_many_headers() {
    let limits = Limits {
        max_headers: 2,
        ..Limits::default()
    };
    assert!(parse_with(&get("Host: a\r\nB: 1\r\n"), &limits)
        .unwrap()
        .is_some());
    let e = parse_with(&get("Host: a\r\nB: 1\r\nC: 2\r\n"), &limits).unwrap_err();
    assert_eq!((e.status, e.code), (431, "too_many_headers"));
}

#[test]
fn bad_content_length() {
    for value in [
        "+5",
        "-1",
        "0x5",
        "5, 6",
        "5,,5",
        "",
        "5 5",
        "1e3",
        "18446744073709551616",
        "٣",
    ] {
        let raw = get(&format!("Host: a\r\nContent-Length: {value}\r\n"));
        assert_eq!(code(&raw), "bad_content_length", "{value:?}");
    }
    let raw = get("Host: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n");
    assert_eq!(code(&raw), "bad_content_length");
}

#[test]
fn missing_host() {
    assert_eq!(code(&get("")), "missing_host");
    assert_eq!(code(b"GET http://a/ HTTP/1.1\r\n\r\n"), "missing_host");
}

#[test]
fn duplicate_host() {
    assert_eq!(code(&get("Host: a\r\nHost: a\r\n")), "duplicate_host");
    assert_eq!(code(&get("Host: a\r\nHost: b\r\n")), "duplicate_host");
    assert_eq!(
        code(b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n"),
        "duplicate_host"
    );
}

#[test]
fn bad_host() {
    for host in [
        "a b",
        "a@b",
        "user:pw@a",
        "example.com:99999",
        "example.com:",
        "example.com:8o",
        "example.com:80:80",
        ":80",
        "[::1",
        "[zz]",
        "[::1]x",
        "::1",
        "a, b",
        "a,b",
        "a/b",
        "caf\u{e9}",
    ] {
        assert_eq!(
            code(&get(&format!("Host: {host}\r\n"))),
            "bad_host",
            "{host:?}"
        );
    }
    // A bad Host is refused even when an absolute-form target replaces it.
    assert_eq!(
        code(b"GET http://a/ HTTP/1.1\r\nHost: a b\r\n\r\n"),
        "bad_host"
    );
}

#[test]
fn version_not_supported() {
    for version in ["HTTP/2.0", "HTTP/1.2", "HTTP/0.9", "HTTP/3.0"] {
        let raw = format!("GET / {version}\r\nHost: a\r\n\r\n");
        let e = parse(raw.as_bytes()).unwrap_err();
        assert_eq!(
            (e.status, e.code),
            (505, "version_not_supported"),
            "{version}"
        );
    }
}

#[test]
fn bad_connection() {
    assert_eq!(
        code(&get("Host: a\r\nConnection: close, Content-Length\r\n")),
        "bad_connection"
    );
    assert_eq!(
        code(&get("Host: a\r\nConnection: transfer-encoding\r\n")),
        "bad_connection"
    );
    assert_eq!(
        code(&get("Host: a\r\nConnection: host\r\n")),
        "bad_connection"
    );
    assert_eq!(
        code(&get("Host: a\r\nConnection: keep alive\r\n")),
        "bad_connection"
    );
}

// ---- Smuggling classes.

#[test]
fn smuggling_cl_te_and_te_cl() {
    let cl_te = get("Host: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n");
    assert_eq!(code(&cl_te), "ambiguous_length");
    let te_cl = get("Host: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n");
    assert_eq!(code(&te_cl), "ambiguous_length");
    let te_cl_10 = b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n";
    assert_eq!(code(te_cl_10), "ambiguous_length");
}

#[test]
fn smuggling_te_te_obfuscations() {
    let refused = [
        ("Transfer-Encoding: xchunked\r\n", "bad_transfer_encoding"),
        ("Transfer-Encoding: chunkedx\r\n", "bad_transfer_encoding"),
        ("Transfer-Encoding : chunked\r\n", "bad_request"),
        (
            "Transfer-Encoding: chunked, identity\r\n",
            "bad_transfer_encoding",
        ),
        ("Transfer-Encoding: gzip\r\n chunked\r\n", "bad_request"),
        (
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n",
            "bad_transfer_encoding",
        ),
        (
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            "bad_transfer_encoding",
        ),
        (
            "Transfer-Encoding: chunked, chunked\r\n",
            "bad_transfer_encoding",
        ),
        (
            "Transfer-Encoding: \"chunked\"\r\n",
            "bad_transfer_encoding",
        ),
        (
            "Transfer-Encoding: chunked;q=1\r\n",
            "bad_transfer_encoding",
        ),
        ("Transfer-Encoding: chunked,\r\n", "bad_transfer_encoding"),
        ("Transfer-Encoding: ,chunked\r\n", "bad_transfer_encoding"),
        ("Transfer-Encoding:\r\n", "bad_transfer_encoding"),
        ("Transfer-Encoding: gzip\r\n", "bad_transfer_encoding"),
        ("Transfer-Encoding: chunked\x0b\r\n", "bad_request"),
        (
            "Transfer_Encoding: chunked\r\nContent-Length: 1\r\n",
            "bad_request",
        ),
    ];
    for (te, expected) in refused {
        assert_eq!(code(&get(&format!("Host: a\r\n{te}"))), expected, "{te:?}");
    }
    // A tab is optional whitespace: this one is chunked, not an obfuscation.
    let tab = head(&get("Host: a\r\nTransfer-Encoding:\tchunked\r\n"));
    assert_eq!(tab.body, BodyLength::Chunked);
}

#[test]
fn transfer_codings_split_over_lines_are_refused() {
    let raw = get("Host: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n");
    assert_eq!(code(&raw), "bad_transfer_encoding");
}

#[test]
fn transfer_encoding_on_http10() {
    let raw = b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(code(raw), "bad_transfer_encoding");
}

#[test]
fn unsupported_transfer_coding() {
    for te in [
        "br, chunked",
        "identity, chunked",
        "x-custom, gzip, chunked",
    ] {
        let e = parse(&get(&format!("Host: a\r\nTransfer-Encoding: {te}\r\n"))).unwrap_err();
        assert_eq!(
            (e.status, e.code),
            (501, "unsupported_transfer_coding"),
            "{te}"
        );
    }
}

// ---- Inputs the fuzzer found.

/// httparse refuses the first bytes before the bare LF that comes later: a client that sent
/// only those bytes got httparse's answer, so the whole head must get it too.
#[test]
fn fuzz_earliest_refusal_wins_over_a_later_bare_lf() {
    let raw = b"\xb1\xb2TIONS * HTTP/1.0\r\nConnection: Upgrade, blose\n\rprhttp://api.example:80agUde: wepbsocket\r\n\r\n";
    assert_eq!(code(raw), "bad_request");
    let limits = Limits {
        max_headers: 1,
        ..Limits::default()
    };
    let many_then_bare = get("Host: a\r\nB: c\r\nD: e\n");
    assert_eq!(
        parse_with(&many_then_bare, &limits).unwrap_err().code,
        "too_many_headers"
    );
    let version_then_bare = b"GET / HTTP/2.0\r\nHost: a\n\r\n";
    assert_eq!(code(version_then_bare), "version_not_supported");
}
