//! One AWS session: the SDK's configuration (standard credential chain, region, retries) and
//! a client per service. `AWS_ENDPOINT_URL` (the SDK's own variable) points every client at
//! an emulator without any code here knowing.

use aws_config::meta::region::RegionProviderChain;
use aws_config::{BehaviorVersion, Region, SdkConfig};

use crate::error::{AwsError, Result};

pub struct Session {
    pub region: String,
    pub ec2: aws_sdk_ec2::Client,
    pub iam: aws_sdk_iam::Client,
    pub s3: aws_sdk_s3::Client,
    pub ssm: aws_sdk_ssm::Client,
}

/// The SDK configuration: `explicit` region first, then the SDK's chain (AWS_REGION, the
/// profile, instance metadata), then `fallback`.
pub async fn sdk_config(explicit: Option<&str>, fallback: Option<&str>) -> Result<SdkConfig> {
    let chain = RegionProviderChain::first_try(explicit.map(|r| Region::new(r.to_owned())))
        .or_default_provider()
        .or_else(fallback.map(|r| Region::new(r.to_owned())));
    let config = aws_config::defaults(BehaviorVersion::latest())
        .region(chain)
        // Throttling and transient 5xx are retried with the SDK's jittered backoff.
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(5))
        .load()
        .await;
    if config.region().is_none() {
        return Err(AwsError::Usage(
            "no AWS region: pass --region, set AWS_REGION, or set `region` in the topology's [aws]"
                .into(),
        ));
    }
    Ok(config)
}

impl Session {
    pub async fn connect(explicit: Option<&str>, fallback: Option<&str>) -> Result<Session> {
        let config = sdk_config(explicit, fallback).await?;
        let region = config
            .region()
            .map(|r| r.to_string())
            .expect("checked above");
        let s3_config = aws_sdk_s3::config::Builder::from(&config)
            // Only what S3 requires: the binary is streamed from disk, and trailing checksums
            // over a stream are not understood by every S3-compatible endpoint.
            .request_checksum_calculation(
                aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
            )
            .build();
        Ok(Session {
            region,
            ec2: aws_sdk_ec2::Client::new(&config),
            iam: aws_sdk_iam::Client::new(&config),
            s3: aws_sdk_s3::Client::from_conf(s3_config),
            ssm: aws_sdk_ssm::Client::new(&config),
        })
    }
}
