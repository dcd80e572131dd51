//! The provider's errors. Each says what failed and what to do next; an AWS API error keeps
//! the service's code so callers can tell "already gone" from "not allowed".

use std::path::PathBuf;

use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};

#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    /// An AWS API call failed.
    #[error("{action} failed: {message}{}", hint(code.as_deref()))]
    Api {
        action: String,
        code: Option<String>,
        message: String,
    },
    /// The state file cannot be read or written.
    #[error("state {}: {message}", path.display())]
    State { path: PathBuf, message: String },
    /// A local file (private key, binary) cannot be read or written.
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    /// A waiter ran out of time.
    #[error("timed out after {waited:?} waiting for {what}; {advice}")]
    Timeout {
        what: String,
        waited: std::time::Duration,
        advice: String,
    },
    /// A flag, setting or situation that needs the operator.
    #[error("{0}")]
    Usage(String),
}

impl AwsError {
    /// Wraps an SDK error with the action that failed.
    pub fn api<E, R>(action: impl Into<String>, e: SdkError<E, R>) -> AwsError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug + 'static,
    {
        let code = e.code().map(str::to_owned);
        let message = match (e.code(), e.message()) {
            (Some(c), Some(m)) => format!("{c}: {m}"),
            (Some(c), None) => c.to_owned(),
            _ => aws_sdk_ec2::error::DisplayErrorContext(&e).to_string(),
        };
        AwsError::Api {
            action: action.into(),
            code,
            message,
        }
    }

    /// The AWS error code, for API errors.
    pub fn code(&self) -> Option<&str> {
        match self {
            AwsError::Api { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// Whether the error says the resource does not exist (any service's spelling).
    pub fn is_not_found(&self) -> bool {
        self.code().is_some_and(|c| {
            c.ends_with(".NotFound")
                || c.ends_with("NotFound")
                || matches!(c, "NoSuchEntity" | "NoSuchBucket" | "ParameterNotFound")
        })
    }
}

/// What to do about the common error codes.
fn hint(code: Option<&str>) -> &'static str {
    match code {
        Some(
            "AuthFailure"
            | "UnrecognizedClientException"
            | "InvalidClientTokenId"
            | "SignatureDoesNotMatch"
            | "InvalidAccessKeyId",
        ) => {
            " (check your AWS credentials: `aws configure`, AWS_PROFILE, or the session \
             credentials AWS Academy shows under \"AWS Details\")"
        }
        Some("ExpiredToken" | "ExpiredTokenException" | "RequestExpired") => {
            " (your session credentials expired: fetch new ones and rerun; the state file \
             remembers what exists)"
        }
        Some("UnauthorizedOperation" | "AccessDenied" | "AccessDeniedException") => {
            " (these credentials lack the permission; docs/aws.md lists what fulcrum needs; on \
             AWS Academy pass `--instance-profile LabInstanceProfile`)"
        }
        Some("InvalidInstanceType" | "Unsupported") => {
            " (this instance type is not offered in this region or zone: pick another type in \
             the topology or another --region)"
        }
        Some("VcpuLimitExceeded" | "InstanceLimitExceeded") => {
            " (the account's instance quota is too small for the topology: lower the counts or \
             ask AWS for a higher quota)"
        }
        _ => "",
    }
}

pub type Result<T, E = AwsError> = std::result::Result<T, E>;
