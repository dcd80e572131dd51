//! What a run sends: one request's parts (method, path, body), and its HTTP/2 form, built
//! once per target and cloned for every send. The HTTP/1.1 form is serialized by `client.rs`;
//! this module knows nothing of connections.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};

/// One request of a target, before it is serialized.
pub struct RequestParts<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub body: &'a [u8],
}

/// Fields HTTP/2 does not carry (RFC 9113 §8.2.2): they describe an HTTP/1.1 connection.
const CONNECTION_SPECIFIC: [&str; 5] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
];

/// One request of a target as HTTP/2 sends it, built once: every send clones it (the URI and
/// the method share their bytes; the field map is a small copy).
#[derive(Clone, Debug)]
pub struct Template {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Template {
    /// The request for `parts` to `scheme://authority`, with the run's extra `headers`; an
    /// error (one line) when HTTP/2 cannot carry it.
    pub fn new(
        scheme: &str,
        authority: &str,
        headers: &[(String, String)],
        parts: &RequestParts<'_>,
    ) -> Result<Template, String> {
        let method = Method::from_bytes(parts.method.as_bytes())
            .map_err(|_| format!("method `{}` is not a token", parts.method))?;
        let uri = Uri::try_from(format!("{scheme}://{authority}{}", parts.path))
            .map_err(|e| format!("`{}`: {e}", parts.path))?;
        let mut map = HeaderMap::new();
        let own_agent = headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("user-agent"));
        if !own_agent {
            map.insert(
                http::header::USER_AGENT,
                HeaderValue::from_static("fulcrum-bench"),
            );
        }
        for (name, value) in headers {
            map.append(field_name(name, value)?, field_value(name, value)?);
        }
        // As over HTTP/1.1: a body, or a method that defines one, says how long it is.
        if !parts.body.is_empty() || matches!(parts.method, "POST" | "PUT" | "PATCH") {
            map.insert(http::header::CONTENT_LENGTH, parts.body.len().into());
        }
        Ok(Template {
            method,
            uri,
            headers: map,
            body: Bytes::copy_from_slice(parts.body),
        })
    }

    pub(crate) fn request(&self) -> http::Request<()> {
        let mut r = http::Request::new(());
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.headers_mut() = self.headers.clone();
        r
    }
}

fn field_name(name: &str, value: &str) -> Result<HeaderName, String> {
    let lower = name.to_ascii_lowercase();
    if CONNECTION_SPECIFIC.contains(&lower.as_str()) || (lower == "te" && value != "trailers") {
        return Err(format!(
            "header `{name}` is connection-specific: HTTP/2 does not carry it"
        ));
    }
    HeaderName::from_bytes(lower.as_bytes()).map_err(|_| format!("header `{name}`: bad name"))
}

fn field_value(name: &str, value: &str) -> Result<HeaderValue, String> {
    HeaderValue::from_str(value).map_err(|_| format!("header `{name}`: bad value"))
}
