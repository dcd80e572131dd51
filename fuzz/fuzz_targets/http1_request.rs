//! The HTTP/1.1 request codec on arbitrary bytes from a client: a head is refused, incomplete
//! or accepted, never a panic; whatever is accepted frames its body exactly one way, the same
//! however the bytes arrive; and a chunked body that follows decodes the same in any pieces.
#![no_main]

use fulcrum_balancer::http1::{
    parse_request, BodyLength, ChunkedDecoder, Field, Limits, RequestHead, Span, TargetForm,
    Version,
};
use libfuzzer_sys::fuzz_target;

/// Small, so the fuzzer reaches every limit.
const LIMITS: Limits = Limits {
    max_head_bytes: 1024,
    max_headers: 12,
    max_uri_bytes: 128,
};

fuzz_target!(|data: &[u8]| {
    let mut fields = Vec::new();
    let whole = parse_request(data, &LIMITS, &mut fields);
    let whole_fields = fields.clone();
    // The same bytes in two pieces: the first piece alone is incomplete, or answered the same.
    for cut in [data.len() / 3, data.len() / 2, data.len() * 7 / 8] {
        match parse_request(&data[..cut], &LIMITS, &mut fields) {
            Ok(None) => {}
            prefix => {
                assert_eq!(prefix, whole, "first {cut} bytes");
                assert_eq!(fields, whole_fields);
            }
        }
    }
    let Ok(Some(head)) = whole else {
        return;
    };
    check_head(data, &head, &whole_fields);
    // The head alone, and the head one byte short.
    let alone = parse_request(&data[..head.head_len], &LIMITS, &mut fields);
    assert_eq!(alone, Ok(Some(head.clone())));
    let short = parse_request(&data[..head.head_len - 1], &LIMITS, &mut fields);
    assert_eq!(short, Ok(None));
    if head.body == BodyLength::Chunked {
        check_chunked(&data[head.head_len..]);
    }
});

fn check_head(data: &[u8], head: &RequestHead, fields: &[Field]) {
    let head_bytes = &data[..head.head_len];
    assert!(head.head_len <= LIMITS.max_head_bytes);
    assert!(head_bytes.ends_with(b"\r\n\r\n"));
    assert_crlf_only(head_bytes);
    assert!(fields.len() <= LIMITS.max_headers);
    let spans = fields.iter().flat_map(|f| [f.name, f.value]);
    let optional = [head.host, head.upgrade, head.transfer_codings]
        .into_iter()
        .flatten();
    for span in spans.chain(optional).chain([head.target]) {
        assert!(span.start <= span.end && span.end as usize <= head.head_len);
    }
    check_target(data, head);
    check_framing(data, head, fields);
    let hosts = count(data, fields, "host");
    assert!(hosts <= 1 && (hosts == 1 || head.version == Version::Http10));
    if head.upgrade.is_some() {
        assert!(head.connection.upgrade && head.version == Version::Http11);
    }
}

fn check_target(data: &[u8], head: &RequestHead) {
    let target = head.target.of(data);
    assert!(!target.is_empty() && target.len() <= LIMITS.max_uri_bytes);
    assert!(target.iter().all(|&b| b.is_ascii_graphic() && b != b'#'));
    match head.target_form {
        TargetForm::Authority => assert_eq!(head.method.as_str(), "CONNECT"),
        TargetForm::Asterisk => assert!(head.method.as_str() == "OPTIONS" && target == b"*"),
        TargetForm::Origin => assert_eq!(target[0], b'/'),
        TargetForm::Absolute {
            authority,
            path_and_query,
        } => {
            assert_eq!(head.host, Some(authority));
            assert!(!authority.is_empty() && !authority.of(data).contains(&b'@'));
            assert_eq!(path_and_query.end, head.target.end);
            let scheme = &target[..target.iter().position(|&b| b == b':').unwrap()];
            assert!(scheme.eq_ignore_ascii_case(b"http") || scheme.eq_ignore_ascii_case(b"https"));
        }
    }
    if head.method.as_str() == "CONNECT" {
        assert_eq!(head.target_form, TargetForm::Authority);
    }
}

/// Never both Transfer-Encoding and Content-Length; every Content-Length says the same number.
fn check_framing(data: &[u8], head: &RequestHead, fields: &[Field]) {
    let te = count(data, fields, "transfer-encoding");
    let cl = count(data, fields, "content-length");
    assert!(te == 0 || cl == 0, "both framings accepted");
    assert_eq!(usize::from(head.content_length_fields), cl);
    for field in fields {
        let name = field.name.of(data);
        assert!(!name.eq_ignore_ascii_case(b"content_length"));
        assert!(!name.eq_ignore_ascii_case(b"transfer_encoding"));
    }
    match head.body {
        BodyLength::Chunked => {
            assert!(te == 1 && head.version == Version::Http11);
            let codings = head
                .transfer_codings
                .expect("chunked has its codings")
                .of(data);
            let last = codings.rsplit(|&b| b == b',').next().unwrap();
            assert!(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        }
        BodyLength::Length(n) => {
            assert!(te == 0 && cl >= 1);
            for field in fields.iter().filter(|f| f.is(data, "content-length")) {
                for element in field.value.of(data).split(|&b| b == b',') {
                    assert_eq!(std::str::from_utf8(element).unwrap().trim().parse(), Ok(n));
                }
            }
        }
        BodyLength::None => assert!(te == 0 && cl == 0),
    }
}

fn count(data: &[u8], fields: &[Field], name: &str) -> usize {
    fields.iter().filter(|f| f.is(data, name)).count()
}

/// Every LF follows a CR and every CR precedes an LF.
fn assert_crlf_only(bytes: &[u8]) {
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\n' => assert!(i > 0 && bytes[i - 1] == b'\r', "bare LF at {i}"),
            b'\r' => assert_eq!(bytes.get(i + 1), Some(&b'\n'), "bare CR at {i}"),
            _ => {}
        }
    }
}

/// The body decodes the same whole and in two pieces (cut where its first byte says).
fn check_chunked(body: &[u8]) {
    let whole = decode(body, &[]);
    let cut = body
        .first()
        .map_or(0, |&b| usize::from(b) % (body.len() + 1));
    assert_eq!(decode(body, &[cut]), whole, "cut at {cut}");
}

type Decoded = (Vec<u8>, Option<usize>, Option<&'static str>);

fn decode(body: &[u8], cuts: &[usize]) -> Decoded {
    let mut decoder = ChunkedDecoder::new(4096);
    let mut data = Vec::new();
    let mut offset = 0;
    for end in cuts.iter().copied().chain([body.len()]) {
        while offset < end {
            let input = &body[offset..end];
            let step = match decoder.feed(input) {
                Ok(step) => step,
                Err(e) => return (data, None, Some(e.code())),
            };
            data.extend_from_slice(step.data.map_or(&[][..], |s: Span| s.of(input)));
            offset += step.consumed;
            if step.done {
                assert!(data.len() <= 4096);
                return (data, Some(offset), None);
            }
        }
    }
    (data, None, None)
}
