//! The HTTP/1.1 response codec on arbitrary bytes from a worker, answering each kind of
//! request (the first byte picks the method): a head is refused, incomplete or accepted, never
//! a panic; whatever is accepted has one body framing, as RFC 9112 §6.3 orders them, the same
//! however the bytes arrive.
#![no_main]

use fulcrum_balancer::http1::response::MAX_RESPONSE_HEAD_BYTES;
use fulcrum_balancer::http1::{parse_response, Field, ResponseBody, ResponseHead, Version};
use http::Method;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&selector, data)) = input.split_first() else {
        return;
    };
    let method = match selector % 4 {
        0 => Method::GET,
        1 => Method::HEAD,
        2 => Method::CONNECT,
        _ => Method::POST,
    };
    let mut fields = Vec::new();
    let whole = parse_response(data, &method, &mut fields);
    for cut in [data.len() / 3, data.len() / 2, data.len() * 7 / 8] {
        match parse_response(&data[..cut], &method, &mut fields) {
            Ok(None) => {}
            prefix => assert_eq!(prefix, whole, "first {cut} bytes"),
        }
    }
    let Ok(Some(head)) = whole else {
        return;
    };
    parse_response(data, &method, &mut fields).unwrap();
    check_head(data, &head, &fields);
    check_body(data, &head, &fields, &method);
    let alone = parse_response(&data[..head.head_len], &method, &mut fields);
    assert_eq!(alone, Ok(Some(head)));
    let short = parse_response(&data[..head.head_len - 1], &method, &mut fields);
    assert_eq!(short, Ok(None));
});

fn check_head(data: &[u8], head: &ResponseHead, fields: &[Field]) {
    let head_bytes = &data[..head.head_len];
    assert!(head.head_len <= MAX_RESPONSE_HEAD_BYTES);
    assert!(head_bytes.starts_with(b"HTTP/1.") && head_bytes.ends_with(b"\r\n\r\n"));
    for (i, &b) in head_bytes.iter().enumerate() {
        match b {
            b'\n' => assert!(i > 0 && head_bytes[i - 1] == b'\r', "bare LF at {i}"),
            b'\r' => assert_eq!(head_bytes.get(i + 1), Some(&b'\n'), "bare CR at {i}"),
            _ => {}
        }
    }
    assert!((100..=599).contains(&head.status));
    let spans = fields.iter().flat_map(|f| [f.name, f.value]);
    for span in spans.chain(head.transfer_codings) {
        assert!(span.start <= span.end && span.end as usize <= head.head_len);
    }
}

/// RFC 9112 §6.3 in order: no body, then Transfer-Encoding, then Content-Length, then close.
fn check_body(data: &[u8], head: &ResponseHead, fields: &[Field], method: &Method) {
    let te = fields
        .iter()
        .filter(|f| f.is(data, "transfer-encoding"))
        .count();
    let cl = fields
        .iter()
        .filter(|f| f.is(data, "content-length"))
        .count();
    assert_eq!(usize::from(head.content_length_fields), cl);
    assert_eq!(
        head.had_content_length_and_transfer_encoding,
        te > 0 && cl > 0
    );
    // Several Transfer-Encoding lines are refused where a body follows (one span each).
    assert!(te == 0 || head.version == Version::Http11);
    let bodiless = *method == Method::HEAD
        || head.status < 200
        || head.status == 204
        || head.status == 304
        || (*method == Method::CONNECT && head.status < 300);
    match head.body {
        ResponseBody::None => assert!(bodiless),
        ResponseBody::Chunked => assert!(!bodiless && te == 1 && head.transfer_codings.is_some()),
        ResponseBody::Length(_) => assert!(!bodiless && te == 0 && cl >= 1),
        ResponseBody::UntilClose => assert!(!bodiless && te <= 1 && (te == 1 || cl == 0)),
    }
}
