//! The request-target (RFC 9112 §3.2): which of the four forms it has, checked against the
//! method and against RFC 3986's characters.

use http::Method;

use super::grammar::{authority, is_path_and_query, Authority};
use super::Span;

/// The form of a request-target (RFC 9112 §3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetForm {
    /// `/path?query`.
    Origin,
    /// `http://authority/path?query`; `path_and_query` may be empty (meaning `/`) or start
    /// with `?`.
    Absolute {
        authority: Span,
        path_and_query: Span,
    },
    /// `host:port`, for CONNECT.
    Authority,
    /// `*`, for OPTIONS.
    Asterisk,
}

const MALFORMED: &str =
    "the request-target is not a valid origin-, absolute-, authority- or asterisk-form";

/// The form of `target`, which starts at offset `at` of the head. CONNECT takes only
/// authority-form, `*` only OPTIONS; every other request is origin- or absolute-form.
pub(super) fn classify(
    method: &Method,
    target: &[u8],
    at: usize,
) -> Result<TargetForm, &'static str> {
    if method == Method::CONNECT {
        return match authority(target, true) {
            Authority::Valid => Ok(TargetForm::Authority),
            _ => Err("CONNECT needs an authority-form target (host:port)"),
        };
    }
    match target.first() {
        Some(b'*') if target.len() == 1 => match *method == Method::OPTIONS {
            true => Ok(TargetForm::Asterisk),
            false => Err("only OPTIONS may have `*` as its target"),
        },
        Some(b'/') if is_path_and_query(target) => Ok(TargetForm::Origin),
        Some(b'/') => Err("the request-target has characters RFC 3986 does not allow there"),
        _ => absolute(target, at),
    }
}

/// `http://authority/path?query` (or https). The authority must be a valid non-empty host
/// (RFC 9110 §4.2.1 says to reject an empty one) without userinfo (§4.2.4: treat as an error).
fn absolute(target: &[u8], at: usize) -> Result<TargetForm, &'static str> {
    let colon = target.iter().position(|&b| b == b':').ok_or(MALFORMED)?;
    let scheme = &target[..colon];
    if !scheme.eq_ignore_ascii_case(b"http") && !scheme.eq_ignore_ascii_case(b"https") {
        return Err(match is_scheme(scheme) {
            true => "an absolute-form target must be an http or https URI",
            false => MALFORMED,
        });
    }
    let rest = target[colon + 1..].strip_prefix(b"//").ok_or(MALFORMED)?;
    let authority_len = rest
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(rest.len());
    let host = &rest[..authority_len];
    if host.contains(&b'@') {
        return Err("the target's authority has userinfo");
    }
    if authority(host, false) != Authority::Valid {
        return Err("the target's authority is not a valid host[:port]");
    }
    if !is_path_and_query(&rest[authority_len..]) {
        return Err("the request-target has characters RFC 3986 does not allow there");
    }
    let authority_start = at + colon + 3;
    let path_start = authority_start + authority_len;
    Ok(TargetForm::Absolute {
        authority: Span::new(authority_start, path_start),
        path_and_query: Span::new(path_start, at + target.len()),
    })
}

/// `scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )` (RFC 3986 §3.1).
fn is_scheme(s: &[u8]) -> bool {
    s.first().is_some_and(u8::is_ascii_alphabetic)
        && s.iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}
