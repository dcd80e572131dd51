//! Who this worker is: `--instance-id`, else EC2 instance metadata, else a stable local id.

use std::hash::{Hash, Hasher};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The SDK's own variable for the metadata endpoint; set it to talk to an emulator.
pub const IMDS_ENDPOINT_ENV: &str = "AWS_EC2_METADATA_SERVICE_ENDPOINT";
const IMDS_DEFAULT: &str = "http://169.254.169.254";
const IMDS_TIMEOUT: Duration = Duration::from_secs(1);

/// Where an instance id came from, reported in logs and `/load`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdOrigin {
    Flag,
    Ec2Metadata,
    Generated,
}

/// Resolves the instance id. Instance metadata is asked only when this looks like EC2 (the
/// DMI vendor says Amazon) or an endpoint is configured, so a laptop never waits on a
/// link-local address that does not answer.
pub async fn resolve(flag: Option<String>, cluster: u32, port: u16) -> (String, IdOrigin) {
    if let Some(id) = flag {
        return (id, IdOrigin::Flag);
    }
    let endpoint = std::env::var(IMDS_ENDPOINT_ENV).ok();
    if endpoint.is_some() || looks_like_ec2() {
        let base = endpoint.unwrap_or_else(|| IMDS_DEFAULT.to_owned());
        match tokio::time::timeout(IMDS_TIMEOUT, imds_instance_id(&base)).await {
            Ok(Ok(id)) => return (id, IdOrigin::Ec2Metadata),
            Ok(Err(e)) => tracing::warn!(endpoint = %base, error = %e, "instance metadata failed"),
            Err(_) => tracing::warn!(endpoint = %base, "instance metadata timed out after 1 s"),
        }
    }
    (generated_id(cluster, port), IdOrigin::Generated)
}

fn looks_like_ec2() -> bool {
    [
        "/sys/class/dmi/id/sys_vendor",
        "/sys/class/dmi/id/bios_vendor",
    ]
    .iter()
    .filter_map(|p| std::fs::read_to_string(p).ok())
    .any(|v| v.contains("Amazon"))
}

/// IMDSv2: a session token first (PUT), then the id with the token.
async fn imds_instance_id(base: &str) -> anyhow::Result<String> {
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http::<Empty<Bytes>>();
    let base = base.trim_end_matches('/');
    let token_req = http::Request::put(format!("{base}/latest/api/token"))
        .header("x-aws-ec2-metadata-token-ttl-seconds", "60")
        .body(Empty::new())?;
    let resp = client.request(token_req).await?;
    anyhow::ensure!(
        resp.status().is_success(),
        "token request: {}",
        resp.status()
    );
    let token = resp.into_body().collect().await?.to_bytes();
    let id_req = http::Request::get(format!("{base}/latest/meta-data/instance-id"))
        .header(
            "x-aws-ec2-metadata-token",
            std::str::from_utf8(&token)?.trim(),
        )
        .body(Empty::new())?;
    let resp = client.request(id_req).await?;
    anyhow::ensure!(resp.status().is_success(), "instance-id: {}", resp.status());
    let body = resp.into_body().collect().await?.to_bytes();
    let id = std::str::from_utf8(&body)?.trim().to_owned();
    anyhow::ensure!(
        !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_graphic()),
        "instance-id is not a plain token"
    );
    Ok(id)
}

/// A stable id shaped like an EC2 one (`i-` and 17 hex digits), from the host, cluster and port:
/// the same worker gets the same id across restarts.
pub fn generated_id(cluster: u32, port: u16) -> String {
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let mut h = std::hash::DefaultHasher::new();
    (host.trim(), cluster, port).hash(&mut h);
    format!("i-0{:016x}", h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_stable_and_ec2_shaped() {
        let a = generated_id(1, 9001);
        assert_eq!(a, generated_id(1, 9001));
        assert_ne!(a, generated_id(2, 9001));
        assert_ne!(a, generated_id(1, 9002));
        assert_eq!(a.len(), 19);
        assert!(a.starts_with("i-0") && a[2..].bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
