//! The answers the balancer gives itself: a stable code for each way a request can fail, the
//! status it is answered with, and the JSON body every such answer carries (`error`,
//! `message`, `request_id`; never a worker's address).

use http::StatusCode;

/// Why the balancer answered a request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    // Refused by the HTTP/1.1 codec before any route (counted as client protocol errors).
    BadRequest,
    BadContentLength,
    AmbiguousLength,
    BadTransferEncoding,
    UnsupportedTransferCoding,
    MissingHost,
    DuplicateHost,
    BadHost,
    VersionNotSupported,
    // The configured limits, the route.
    UriTooLong,
    HeadersTooLarge,
    TooManyHeaders,
    BodyTooLarge,
    BadRequestBody,
    ClientBodyIdle,
    NoRoute,
    RateLimited,
    // Workers.
    Overloaded,
    NoHealthyWorkers,
    WorkerUnreachable,
    WorkerError,
    WorkerTimeout,
    RequestTimeout,
}

impl ErrorCode {
    /// Every code, for tables and tests.
    pub const ALL: [ErrorCode; 23] = [
        ErrorCode::BadRequest,
        ErrorCode::BadContentLength,
        ErrorCode::AmbiguousLength,
        ErrorCode::BadTransferEncoding,
        ErrorCode::UnsupportedTransferCoding,
        ErrorCode::MissingHost,
        ErrorCode::DuplicateHost,
        ErrorCode::BadHost,
        ErrorCode::VersionNotSupported,
        ErrorCode::UriTooLong,
        ErrorCode::HeadersTooLarge,
        ErrorCode::TooManyHeaders,
        ErrorCode::BodyTooLarge,
        ErrorCode::BadRequestBody,
        ErrorCode::ClientBodyIdle,
        ErrorCode::NoRoute,
        ErrorCode::RateLimited,
        ErrorCode::Overloaded,
        ErrorCode::NoHealthyWorkers,
        ErrorCode::WorkerUnreachable,
        ErrorCode::WorkerError,
        ErrorCode::WorkerTimeout,
        ErrorCode::RequestTimeout,
    ];

    /// The `error` field of the answer and the metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::BadContentLength => "bad_content_length",
            ErrorCode::AmbiguousLength => "ambiguous_length",
            ErrorCode::BadTransferEncoding => "bad_transfer_encoding",
            ErrorCode::UnsupportedTransferCoding => "unsupported_transfer_coding",
            ErrorCode::MissingHost => "missing_host",
            ErrorCode::DuplicateHost => "duplicate_host",
            ErrorCode::BadHost => "bad_host",
            ErrorCode::VersionNotSupported => "version_not_supported",
            ErrorCode::UriTooLong => "uri_too_long",
            ErrorCode::HeadersTooLarge => "headers_too_large",
            ErrorCode::TooManyHeaders => "too_many_headers",
            ErrorCode::BodyTooLarge => "body_too_large",
            ErrorCode::BadRequestBody => "bad_request_body",
            ErrorCode::ClientBodyIdle => "client_body_idle",
            ErrorCode::NoRoute => "no_route",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::NoHealthyWorkers => "no_healthy_workers",
            ErrorCode::WorkerUnreachable => "worker_unreachable",
            ErrorCode::WorkerError => "worker_error",
            ErrorCode::WorkerTimeout => "worker_timeout",
            ErrorCode::RequestTimeout => "request_timeout",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::UnsupportedTransferCoding => StatusCode::NOT_IMPLEMENTED,
            ErrorCode::VersionNotSupported => StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            ErrorCode::UriTooLong => StatusCode::URI_TOO_LONG,
            ErrorCode::HeadersTooLarge | ErrorCode::TooManyHeaders => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            ErrorCode::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::ClientBodyIdle => StatusCode::REQUEST_TIMEOUT,
            ErrorCode::NoRoute => StatusCode::NOT_FOUND,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Overloaded | ErrorCode::NoHealthyWorkers => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::WorkerUnreachable | ErrorCode::WorkerError => StatusCode::BAD_GATEWAY,
            ErrorCode::WorkerTimeout | ErrorCode::RequestTimeout => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// The code for one of the codec's refusals (its codes are these codes' names).
    pub fn from_codec(code: &str) -> ErrorCode {
        ErrorCode::ALL
            .into_iter()
            .find(|c| c.as_str() == code)
            .unwrap_or(ErrorCode::BadRequest)
    }
}

/// An answer the balancer gives itself.
#[derive(Debug)]
pub struct ProxyError {
    pub code: ErrorCode,
    pub message: String,
    pub retry_after: Option<u32>,
}

impl ProxyError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ProxyError {
        ProxyError {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn status(&self) -> StatusCode {
        self.code.status()
    }

    /// With `Retry-After: seconds`.
    pub fn retry_after(mut self, seconds: u32) -> ProxyError {
        self.retry_after = Some(seconds);
        self
    }

    /// The answer's JSON body for the request `id`.
    pub fn body(&self, id: &str) -> Vec<u8> {
        let body = serde_json::json!({
            "error": self.code.as_str(),
            "message": self.message,
            "request_id": id,
        });
        serde_json::to_vec(&body).expect("JSON values serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_have_distinct_names_and_the_codecs_map_onto_them() {
        let mut names: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ErrorCode::ALL.len());
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_codec(c.as_str()), c);
        }
        assert_eq!(
            ErrorCode::from_codec("something new"),
            ErrorCode::BadRequest
        );
        assert_eq!(ErrorCode::VersionNotSupported.status().as_u16(), 505);
        assert_eq!(ErrorCode::UnsupportedTransferCoding.status().as_u16(), 501);
    }

    #[test]
    fn answers_are_json_with_code_message_and_id() {
        let e = ProxyError::new(ErrorCode::Overloaded, "busy").retry_after(1);
        let j: serde_json::Value = serde_json::from_slice(&e.body("abc")).unwrap();
        assert_eq!(j["error"], "overloaded");
        assert_eq!(j["request_id"], "abc");
        assert_eq!(e.status().as_u16(), 503);
        assert_eq!(e.retry_after, Some(1));
    }
}
