//! Writing export files to object storage: whole-object puts for small files,
//! multipart uploads (parts uploaded concurrently) for large ones, each retried
//! with exponential backoff when the store reports a transient error.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder, Retryable};
use bytes::Bytes;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};

use sha2::{Digest, Sha256};

use crate::engine::storage::Location;
use crate::error::{Error, Result};
use crate::export::encode::Sink;
use crate::run::interrupt::Interrupt;

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

/// A file written by [`write_file`].
#[derive(Debug, Clone)]
pub struct Written {
    pub rows: u64,
    pub bytes: u64,
    pub sha256: String,
}

/// How one streamed attempt at a file ended badly.
enum Failure {
    /// The encoder failed, or the run was interrupted: not retried.
    Final(Error),
    /// The store failed.
    Store(object_store::Error),
}

/// The encoder of one file: called once per attempt, handing bytes to the sink.
pub type Encoder = dyn Fn(&mut Sink<'_>) -> Result<u64> + Send + Sync;

/// Encode and upload one file at once: `encode` runs on a blocking thread and
/// hands its bytes on as they are ready; a multipart upload starts as soon as
/// [`MULTIPART_THRESHOLD`] bytes are ready and sends parts while encoding goes
/// on (smaller files go in one put at the end). Only a small file's bytes are
/// held; when an attempt fails with a transient store error, the file is
/// encoded and uploaded again, up to `policy.retries` times with exponential
/// backoff.
///
/// # Errors
/// What `encode` returns (an open multipart upload is then aborted);
/// [`Error::Storage`] naming `loc` when the upload fails for good;
/// [`Error::Interrupted`] as soon as `interrupt` is raised (an open multipart
/// upload is aborted; a small file is not written).
pub async fn write_file(
    store: &dyn ObjectStore,
    loc: &Location,
    encode: Arc<Encoder>,
    policy: RetryPolicy,
    retried: &mut u64,
    interrupt: &Interrupt,
) -> Result<Written> {
    let mut delays = ExponentialBuilder::default()
        .with_min_delay(policy.first_delay)
        .with_max_delay(policy.max_delay)
        .with_max_times(policy.retries)
        .with_jitter()
        .build();
    loop {
        match attempt(store, loc, encode.clone(), interrupt).await {
            Ok(w) => return Ok(w),
            Err(Failure::Final(e)) => return Err(e),
            Err(Failure::Store(e)) => match delays.next() {
                Some(after) if is_transient(&e) => {
                    *retried += 1;
                    tracing::warn!(location = %loc.display(), error = %e, retry_in = ?after, "storage write failed; writing the file again");
                    interrupt
                        .race(async {
                            tokio::time::sleep(after).await;
                            Ok(())
                        })
                        .await?;
                }
                _ => return Err(Error::storage(loc.display())(e)),
            },
        }
    }
}

/// One streamed attempt at a file.
async fn attempt(
    store: &dyn ObjectStore,
    loc: &Location,
    encode: Arc<Encoder>,
    interrupt: &Interrupt,
) -> std::result::Result<Written, Failure> {
    let path = loc.path();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let encoder = tokio::task::spawn_blocking(move || {
        let mut hasher = Sha256::new();
        let mut bytes = 0u64;
        let rows = encode(&mut |b: Bytes| {
            hasher.update(&b);
            bytes += b.len() as u64;
            tx.blocking_send(b)
                .map_err(|_| Error::Internal("the upload stopped reading".into()))
        })?;
        Ok::<_, Error>(Written {
            rows,
            bytes,
            sha256: hex::encode(hasher.finalize()),
        })
    });
    // Bytes are held only until the multipart upload starts.
    let mut held: Vec<Bytes> = Vec::new();
    let mut buffered = 0u64;
    let mut streaming: Option<WriteMultipart> = None;
    let mut failure: Option<object_store::Error> = None;
    let mut stopped = None;
    loop {
        let c = tokio::select! {
            biased;
            s = interrupt.raised_signal() => {
                stopped = Some(s);
                break;
            }
            c = rx.recv() => match c {
                Some(c) => c,
                None => break,
            },
        };
        buffered += c.len() as u64;
        let r = match &mut streaming {
            Some(w) => w
                .wait_for_capacity(PART_CONCURRENCY)
                .await
                .map(|()| w.put(c)),
            None => {
                held.push(c);
                if buffered >= MULTIPART_THRESHOLD {
                    store.put_multipart(&path).await.map(|u| {
                        let mut w = WriteMultipart::new_with_chunk_size(u, PART_SIZE);
                        for c in held.drain(..) {
                            w.put(c);
                        }
                        streaming = Some(w);
                    })
                } else {
                    Ok(())
                }
            }
        };
        if let Err(e) = r {
            failure = Some(e);
            break;
        }
    }
    drop(rx); // an encoder still running stops at its next chunk
    let encoded = encoder
        .await
        .map_err(|e| Error::Internal(format!("encoder task: {e}")));
    let failure = match (stopped, failure) {
        (Some(s), _) => Some(Failure::Final(Error::Interrupted(s))),
        (None, e) => e.map(Failure::Store),
    };
    if let Some(f) = failure {
        if let Some(w) = streaming {
            let _ = w.abort().await;
        }
        return Err(f);
    }
    let written = match encoded.and_then(|r| r) {
        Ok(w) => w,
        Err(e) => {
            if let Some(w) = streaming {
                let _ = w.abort().await;
            }
            return Err(Failure::Final(e));
        }
    };
    let done = match streaming {
        Some(w) => w.finish().await.map(|_| ()),
        None => store
            .put(&path, held.into_iter().collect::<PutPayload>())
            .await
            .map(|_| ()),
    };
    done.map(|()| written).map_err(Failure::Store)
}
