//! S3 with Object Lock, through aws-sdk-s3: every PUT create-only (`If-None-Match: *`), with
//! its SHA-256 checksum, in COMPLIANCE mode with its retain-until date; the bucket's lock
//! configuration checked before anything is shipped.

use super::config::ArchiveConfig;
use super::error::ArchiveError;
use super::store::{to_unix, ArchiveStore, ListedVersion, ObjectInfo, PutResult};
use async_trait::async_trait;
use std::time::{Duration, SystemTime};

/// S3 with Object Lock, through aws-sdk-s3.
pub struct S3Store {
    pub(super) client: aws_sdk_s3::Client,
    pub(super) bucket: String,
    pub(super) prefix: String,
}

impl S3Store {
    /// A client from the standard AWS configuration chain (environment, profile, instance
    /// role), with the config's region, profile, endpoint and addressing on top.
    pub async fn connect(cfg: &ArchiveConfig) -> Self {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(region) = &cfg.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(profile) = &cfg.profile {
            loader = loader.profile_name(profile);
        }
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            .operation_attempt_timeout(Duration::from_secs(cfg.request_timeout_secs))
            .build();
        let shared = loader.timeout_config(timeouts).load().await;
        let mut builder =
            aws_sdk_s3::config::Builder::from(&shared).force_path_style(cfg.force_path_style);
        if let Some(endpoint) = &cfg.endpoint_url {
            builder = builder.endpoint_url(endpoint);
        }
        S3Store {
            client: aws_sdk_s3::Client::from_conf(builder.build()),
            bucket: cfg.bucket.clone(),
            prefix: cfg.prefix.clone(),
        }
    }

    /// Map an SDK error: transport problems are `Unreachable`, answers are `Request`.
    pub(super) fn error<E>(&self, key: &str, err: aws_sdk_s3::error::SdkError<E>) -> ArchiveError
    where
        E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
    {
        use aws_sdk_s3::error::SdkError;
        match &err {
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => ArchiveError::Unreachable {
                target: self.target(),
                detail: aws_sdk_s3::error::DisplayErrorContext(&err).to_string(),
            },
            _ => ArchiveError::Request {
                key: key.to_string(),
                status: err.raw_response().map_or(0, |r| r.status().as_u16()),
                detail: match err.as_service_error() {
                    Some(service) => format!(
                        "{}: {}",
                        service.code().unwrap_or("error"),
                        service.message().unwrap_or("")
                    ),
                    None => aws_sdk_s3::error::DisplayErrorContext(&err).to_string(),
                },
            },
        }
    }
}

impl S3Store {
    /// GET an object's bytes, or a `Range` of them (`bytes=A-B`).
    async fn get_bytes(&self, key: &str, range: Option<String>) -> Result<Vec<u8>, ArchiveError> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .set_range(range)
            .send()
            .await
            .map_err(|e| self.error(key, e))?;
        let body = out
            .body
            .collect()
            .await
            .map_err(|e| ArchiveError::Unreachable {
                target: self.target(),
                detail: e.to_string(),
            })?;
        Ok(body.into_bytes().to_vec())
    }
}

#[async_trait]
impl ArchiveStore for S3Store {
    fn target(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    fn is_worm(&self) -> bool {
        true
    }

    async fn check_ready(&self) -> Result<(), ArchiveError> {
        let answer = self
            .client
            .get_object_lock_configuration()
            .bucket(&self.bucket)
            .send()
            .await;
        let not_locked = |detail: String| ArchiveError::NotLocked {
            bucket: self.bucket.clone(),
            detail,
        };
        match answer {
            Ok(out) => {
                let enabled = out
                    .object_lock_configuration()
                    .and_then(|c| c.object_lock_enabled())
                    .is_some_and(|e| *e == aws_sdk_s3::types::ObjectLockEnabled::Enabled);
                if enabled {
                    Ok(())
                } else {
                    Err(not_locked(
                        "Object Lock is not enabled on the bucket".into(),
                    ))
                }
            }
            Err(e) => match self.error(&self.bucket, e) {
                // Only S3's definite answer that the bucket has no lock configuration means
                // "cannot be the archive"; throttling, 5xx, a missing permission or a wrong
                // region are errors to fix or wait out, not a verdict on the bucket.
                ArchiveError::Request { status, detail, .. }
                    if detail.starts_with("ObjectLockConfigurationNotFoundError") =>
                {
                    Err(not_locked(format!(
                        "no Object Lock configuration ({status}: {detail}); create the bucket \
                         with Object Lock enabled"
                    )))
                }
                other => Err(other),
            },
        }
    }

    async fn put_new(
        &self,
        key: &str,
        bytes: Vec<u8>,
        sha256: &str,
        retain_until: SystemTime,
    ) -> Result<PutResult, ArchiveError> {
        let answer = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(aws_sdk_s3::primitives::ByteStream::from(bytes))
            .checksum_sha256(sha256)
            .if_none_match("*")
            .object_lock_mode(aws_sdk_s3::types::ObjectLockMode::Compliance)
            .object_lock_retain_until_date(aws_sdk_s3::primitives::DateTime::from_secs(to_unix(
                retain_until,
            )))
            .send()
            .await;
        match answer {
            Ok(_) => Ok(PutResult::Created),
            Err(e) => match self.error(key, e) {
                // 412: `If-None-Match: *` found the key. (409 is what some servers answer while
                // a concurrent upload of the same key is in progress: also "it is there".)
                ArchiveError::Request {
                    status: 412 | 409, ..
                } => Ok(PutResult::AlreadyExists),
                other => Err(other),
            },
        }
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, ArchiveError> {
        let answer = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
            .send()
            .await;
        match answer {
            Ok(out) => Ok(Some(ObjectInfo {
                sha256: out.checksum_sha256().map(str::to_string),
                lock_mode: out.object_lock_mode().map(|m| m.as_str().to_string()),
                retain_until: out.object_lock_retain_until_date().map(|d| d.secs()),
                version_id: out.version_id().map(str::to_string),
                last_modified: out.last_modified().map(|d| d.secs()),
            })),
            Err(e) => match self.error(key, e) {
                ArchiveError::Request { status: 404, .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    async fn get(&self, key: &str) -> Result<Vec<u8>, ArchiveError> {
        self.get_bytes(key, None).await
    }

    async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Vec<u8>, ArchiveError> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let range = format!("bytes={start}-{}", start + len - 1);
        self.get_bytes(key, Some(range)).await
    }

    async fn list_versions(&self, prefix: &str) -> Result<Vec<ListedVersion>, ArchiveError> {
        let mut out = Vec::new();
        let mut key_marker: Option<String> = None;
        let mut version_marker: Option<String> = None;
        loop {
            let page = self
                .client
                .list_object_versions()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.clone())
                .set_version_id_marker(version_marker.clone())
                .send()
                .await
                .map_err(|e| self.error(prefix, e))?;
            for v in page.versions() {
                out.push(ListedVersion {
                    key: v.key().unwrap_or_default().to_string(),
                    version_id: v.version_id().map(str::to_string),
                    is_latest: v.is_latest().unwrap_or(false),
                    is_delete_marker: false,
                });
            }
            for m in page.delete_markers() {
                out.push(ListedVersion {
                    key: m.key().unwrap_or_default().to_string(),
                    version_id: m.version_id().map(str::to_string),
                    is_latest: m.is_latest().unwrap_or(false),
                    is_delete_marker: true,
                });
            }
            if page.is_truncated() == Some(true) {
                key_marker = page.next_key_marker().map(str::to_string);
                version_marker = page.next_version_id_marker().map(str::to_string);
            } else {
                break;
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}
