//! Getting the fulcrum binary onto instances that have no Rust toolchain: a private S3 bucket
//! of the deployment (public access blocked, tagged), the binary uploaded once per build, and
//! a presigned GET URL that user data fetches. The URL grants reading that one object, for
//! [`URL_LIFETIME`]; it carries a signature, never a secret key.

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    BucketLocationConstraint, CreateBucketConfiguration, PublicAccessBlockConfiguration, Tag,
    Tagging,
};

use crate::error::{AwsError, Result};
use crate::tags;

pub const OBJECT_KEY: &str = "fulcrum";
/// Long enough for instances to boot and fetch, short enough to be worthless soon after.
pub const URL_LIFETIME: Duration = Duration::from_secs(3600);
/// Object metadata that tells whether the uploaded binary is this one.
const FINGERPRINT: &str = "fulcrum-fingerprint";

/// A new bucket name: the deployment's prefix and a random suffix (names are global).
pub fn new_bucket_name(deployment: &str) -> String {
    format!(
        "{}{:08x}",
        tags::bucket_prefix(deployment),
        fastrand::u32(..)
    )
}

/// Creates the bucket if it does not exist yet: private, tagged.
pub async fn ensure_bucket(
    s3: &aws_sdk_s3::Client,
    region: &str,
    deployment: &str,
    bucket: &str,
) -> Result<()> {
    let exists = match s3.head_bucket().bucket(bucket).send().await {
        Ok(_) => true,
        Err(e) => {
            let e = AwsError::api(format!("HeadBucket {bucket}"), e);
            // HeadBucket has no body, so a missing bucket shows as a bare 404.
            if e.is_not_found() || e.to_string().contains("NotFound") {
                false
            } else {
                return Err(e);
            }
        }
    };
    if !exists {
        let mut create = s3.create_bucket().bucket(bucket);
        // us-east-1 is the one region that rejects its own name as a location constraint.
        if region != "us-east-1" {
            create = create.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(region))
                    .build(),
            );
        }
        match create.send().await {
            Ok(_) => {}
            Err(e) => {
                let e = AwsError::api(format!("CreateBucket {bucket}"), e);
                if e.code() != Some("BucketAlreadyOwnedByYou") {
                    return Err(e);
                }
            }
        }
    }
    s3.put_public_access_block()
        .bucket(bucket)
        .public_access_block_configuration(
            PublicAccessBlockConfiguration::builder()
                .block_public_acls(true)
                .ignore_public_acls(true)
                .block_public_policy(true)
                .restrict_public_buckets(true)
                .build(),
        )
        .send()
        .await
        .map_err(|e| AwsError::api(format!("PutPublicAccessBlock {bucket}"), e))?;
    let tag = Tag::builder()
        .key(tags::DEPLOYMENT)
        .value(deployment)
        .build()
        .expect("key and value are set");
    s3.put_bucket_tagging()
        .bucket(bucket)
        .tagging(
            Tagging::builder()
                .tag_set(tag)
                .build()
                .expect("tag set is set"),
        )
        .send()
        .await
        .map_err(|e| AwsError::api(format!("PutBucketTagging {bucket}"), e))?;
    Ok(())
}

/// Identifies a build of the binary cheaply (size and modification time), so `up` uploads it
/// only when it changed.
fn fingerprint(binary: &Path) -> Result<String> {
    let m = std::fs::metadata(binary).map_err(|e| AwsError::File {
        path: binary.to_owned(),
        message: format!("cannot read the fulcrum binary to ship: {e}"),
    })?;
    Ok(format!("{}-{}.{}", m.len(), m.mtime(), m.mtime_nsec()))
}

/// Uploads the binary unless the same build is there already; returns whether it uploaded.
pub async fn upload(s3: &aws_sdk_s3::Client, bucket: &str, binary: &Path) -> Result<bool> {
    let print = fingerprint(binary)?;
    if let Ok(head) = s3.head_object().bucket(bucket).key(OBJECT_KEY).send().await {
        if head
            .metadata()
            .and_then(|m| m.get(FINGERPRINT))
            .is_some_and(|f| *f == print)
        {
            return Ok(false);
        }
    }
    let body = ByteStream::from_path(binary)
        .await
        .map_err(|e| AwsError::File {
            path: binary.to_owned(),
            message: format!("cannot read the fulcrum binary to ship: {e}"),
        })?;
    s3.put_object()
        .bucket(bucket)
        .key(OBJECT_KEY)
        .body(body)
        .content_type("application/octet-stream")
        .metadata(FINGERPRINT, print)
        .send()
        .await
        .map_err(|e| AwsError::api(format!("PutObject s3://{bucket}/{OBJECT_KEY}"), e))?;
    Ok(true)
}

/// A presigned GET URL for the binary.
pub async fn presigned_url(s3: &aws_sdk_s3::Client, bucket: &str) -> Result<String> {
    let config = aws_sdk_s3::presigning::PresigningConfig::expires_in(URL_LIFETIME)
        .map_err(|e| AwsError::Usage(format!("presigning: {e}")))?;
    let req = s3
        .get_object()
        .bucket(bucket)
        .key(OBJECT_KEY)
        .presigned(config)
        .await
        .map_err(|e| AwsError::api(format!("presigning s3://{bucket}/{OBJECT_KEY}"), e))?;
    Ok(req.uri().to_owned())
}

/// Empties and deletes the bucket; a bucket already gone is fine.
pub async fn remove_bucket(s3: &aws_sdk_s3::Client, bucket: &str) -> Result<()> {
    let gone = |e: &AwsError| e.code() == Some("NoSuchBucket");
    loop {
        let listed = match s3.list_object_versions().bucket(bucket).send().await {
            Ok(l) => l,
            Err(e) => {
                let e = AwsError::api(format!("ListObjectVersions {bucket}"), e);
                if gone(&e) {
                    return Ok(());
                }
                return Err(e);
            }
        };
        let mut ids = Vec::new();
        for v in listed.versions() {
            ids.push((v.key().unwrap_or_default(), v.version_id()));
        }
        for m in listed.delete_markers() {
            ids.push((m.key().unwrap_or_default(), m.version_id()));
        }
        if ids.is_empty() {
            break;
        }
        let objects = ids
            .into_iter()
            .map(|(k, v)| {
                aws_sdk_s3::types::ObjectIdentifier::builder()
                    .key(k)
                    .set_version_id(v.filter(|v| *v != "null").map(str::to_owned))
                    .build()
                    .expect("key is set")
            })
            .collect::<Vec<_>>();
        s3.delete_objects()
            .bucket(bucket)
            .delete(
                aws_sdk_s3::types::Delete::builder()
                    .set_objects(Some(objects))
                    .quiet(true)
                    .build()
                    .expect("objects are set"),
            )
            .send()
            .await
            .map_err(|e| AwsError::api(format!("DeleteObjects {bucket}"), e))?;
        if !listed.is_truncated().unwrap_or(false) {
            break;
        }
    }
    match s3.delete_bucket().bucket(bucket).send().await {
        Ok(_) => Ok(()),
        Err(e) => {
            let e = AwsError::api(format!("DeleteBucket {bucket}"), e);
            if gone(&e) {
                Ok(())
            } else {
                Err(e)
            }
        }
    }
}

/// The deployment's buckets, found by name prefix and tag (for `down --by-tag`).
pub async fn find_buckets(s3: &aws_sdk_s3::Client, deployment: &str) -> Result<Vec<String>> {
    let listed = s3
        .list_buckets()
        .send()
        .await
        .map_err(|e| AwsError::api("ListBuckets", e))?;
    let prefix = tags::bucket_prefix(deployment);
    let mut out = Vec::new();
    for b in listed.buckets() {
        let Some(name) = b.name() else { continue };
        if !name.starts_with(&prefix) {
            continue;
        }
        let Ok(t) = s3.get_bucket_tagging().bucket(name).send().await else {
            continue;
        };
        if t.tag_set()
            .iter()
            .any(|t| t.key() == tags::DEPLOYMENT && t.value() == deployment)
        {
            out.push(name.to_owned());
        }
    }
    Ok(out)
}
