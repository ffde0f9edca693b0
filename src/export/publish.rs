//! Writing export files to object storage: whole-object puts for small files,
//! multipart uploads (parts uploaded concurrently) for large ones, each retried
//! with exponential backoff when the store reports a transient error.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};

use crate::engine::storage::Location;
use crate::error::{Error, Result};

/// Files at least this large go by multipart upload.
pub const MULTIPART_THRESHOLD: u64 = 16 << 20;
/// Part size of multipart uploads (above S3's 5 MiB minimum).
pub const PART_SIZE: usize = 8 << 20;
/// Parts in flight at once.
const PART_CONCURRENCY: usize = 4;

/// How storage writes are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts after the first.
    pub retries: usize,
    pub first_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retries: 5,
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
        }
    }
}

/// Whether a store error may go away when the request is repeated. Errors that
/// say the request itself is wrong (not found, denied, bad path, unsupported) are final.
pub fn is_transient(e: &object_store::Error) -> bool {
    !matches!(
        e,
        object_store::Error::NotFound { .. }
            | object_store::Error::InvalidPath { .. }
            | object_store::Error::NotSupported { .. }
            | object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. }
            | object_store::Error::NotModified { .. }
            | object_store::Error::NotImplemented { .. }
            | object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. }
            | object_store::Error::UnknownConfigurationKey { .. }
    )
}

/// Upload `chunks` (concatenated) to `loc`, retrying transient failures; the
/// number of retries made is added to `retried`.
///
/// # Errors
/// [`Error::Storage`] naming the location when the last attempt fails or the
/// error is not transient.
pub async fn upload(
    store: &dyn ObjectStore,
    loc: &Location,
    chunks: &[Bytes],
    policy: RetryPolicy,
    retried: &mut u64,
) -> Result<()> {
    let total: u64 = chunks.iter().map(|c| c.len() as u64).sum();
    let path = loc.path();
    let backoff = ExponentialBuilder::default()
        .with_min_delay(policy.first_delay)
        .with_max_delay(policy.max_delay)
        .with_max_times(policy.retries)
        .with_jitter();
    let attempt = || async {
        if total < MULTIPART_THRESHOLD {
            let payload: PutPayload = chunks.iter().cloned().collect();
            store.put(&path, payload).await.map(|_| ())
        } else {
            let upload = store.put_multipart(&path).await?;
            let mut w = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
            for c in chunks {
                if let Err(e) = w.wait_for_capacity(PART_CONCURRENCY).await {
                    let _ = w.abort().await;
                    return Err(e);
                }
                w.put(c.clone());
            }
            w.finish().await.map(|_| ())
        }
    };
    let mut count = 0u64;
    let r = attempt
        .retry(backoff)
        .when(is_transient)
        .notify(|e, after| {
            count += 1;
            tracing::warn!(location = %loc.display(), error = %e, retry_in = ?after, "storage write failed; retrying");
        })
        .await;
    *retried += count;
    r.map_err(Error::storage(loc.display()))
}
