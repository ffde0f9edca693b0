//! Locks with leases in the state location, so that two runs of the same
//! destination never overlap, across processes and machines sharing a state
//! bucket, and so that a run that died can be told from one that is running.
//!
//! A lock is an object `locks/<name>.lock` created with a conditional put
//! (`PutMode::Create`: it fails when the object exists, on local disk, S3,
//! Azure and GCS alike) holding its holder: run id, host, pid, and a lease end.
//! The holder renews the lease every [`RENEW`]; it deletes the lock when done.
//! A lock is **stale** when its lease has ended, or when its holder ran on this
//! host and that process is gone; a stale lock is taken over.
//!
//! Every run holds `locks/run.<run_id>.lock` (its liveness) and one
//! `locks/destination.<name>.lock` per destination it exports.

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::config::Project;
use crate::engine::storage::Location;
use crate::error::{Error, Result};

/// How long a lock stays valid without renewal.
pub const LEASE: Duration = Duration::from_secs(60);
/// How often a holder renews its leases.
pub const RENEW: Duration = Duration::from_secs(15);

/// Who holds a lock.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Holder {
    pub run_id: String,
    pub host: String,
    pub pid: u32,
    pub acquired_at: DateTime<Utc>,
    pub lease_until: DateTime<Utc>,
}

impl Holder {
    fn new(run_id: &str) -> Holder {
        let now = Utc::now();
        Holder {
            run_id: run_id.to_string(),
            host: host(),
            pid: std::process::id(),
            acquired_at: now,
            lease_until: now + chrono::Duration::from_std(LEASE).unwrap_or_default(),
        }
    }

    /// Whether the holder is gone: its lease ended, or it ran here and its process exited.
    pub fn is_stale(&self, now: DateTime<Utc>) -> bool {
        self.lease_until < now
            || (self.host == host()
                && std::path::Path::new("/proc").exists()
                && !std::path::Path::new(&format!("/proc/{}", self.pid)).exists())
    }
}

/// This machine's name, for lock holders.
pub fn host() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into())
}

fn lock_location(project: &Project, name: &str) -> Location {
    project.state.join(&format!("locks/{name}.lock"))
}

/// The holder of a lock, if it is held.
///
/// # Errors
/// [`Error::Storage`] when reading fails.
pub async fn holder(project: &Project, name: &str) -> Result<Option<Holder>> {
    let loc = lock_location(project, name);
    Ok(crate::identity::store::get(&loc)
        .await?
        .and_then(|b| serde_json::from_slice(&b).ok()))
}

/// Locks held by one run; renewed in the background until released.
pub struct Locks {
    locations: Vec<Location>,
    /// `true` once released; the renewer checks it under the lock.
    released: std::sync::Arc<std::sync::Mutex<bool>>,
}

/// Take the run's own lock and one per destination, in name order. When a
/// destination is held by a live run, nothing is taken.
///
/// # Errors
/// [`Error::Export`] naming the destination and the run holding it;
/// [`Error::Storage`] when the state location cannot be written.
pub async fn acquire(project: &Project, run_id: &str, destinations: &[String]) -> Result<Locks> {
    let mut names = vec![format!("run.{run_id}")];
    let mut dests: Vec<&String> = destinations.iter().collect();
    dests.sort();
    names.extend(dests.iter().map(|d| format!("destination.{d}")));
    let mut locks = Locks {
        locations: Vec::new(),
        released: std::sync::Arc::new(std::sync::Mutex::new(false)),
    };
    for name in &names {
        match take(project, name, run_id).await {
            Ok(loc) => {
                locks.locations.push(loc);
            }
            Err(e) => {
                locks.release().await;
                return Err(e);
            }
        }
    }
    // Renew on a thread of its own, so that engine work keeping the runtime's
    // threads busy can never starve the lease.
    let locations = locks.locations.clone();
    let run_id = run_id.to_string();
    let released = locks.released.clone();
    std::thread::Builder::new()
        .name("audience-lock-renewer".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                tracing::error!("lock renewer could not start; leases will run out");
                return;
            };
            loop {
                std::thread::sleep(RENEW);
                let Ok(done) = released.lock() else { return };
                if *done {
                    return;
                }
                for loc in &locations {
                    rt.block_on(renew(loc, &run_id));
                }
            }
        })
        .map_err(|e| Error::Internal(format!("starting the lock renewer: {e}")))?;
    Ok(locks)
}

/// Extend a held lock's lease (best effort: a failure is logged, the next renewal retries).
async fn renew(loc: &Location, run_id: &str) {
    let mut h = Holder::new(run_id);
    if let Ok(Some(b)) = crate::identity::store::get(loc).await
        && let Ok(old) = serde_json::from_slice::<Holder>(&b)
    {
        if old.run_id != run_id {
            tracing::error!(lock = %loc.display(), holder = %old.run_id, "lock taken over by another run; not renewing it");
            return;
        }
        h.acquired_at = old.acquired_at;
    }
    match serde_json::to_vec(&h) {
        Ok(json) => {
            if let Err(e) = crate::identity::store::put(loc, json).await {
                tracing::warn!(lock = %loc.display(), error = %e, "lock renewal failed; retrying");
            }
        }
        Err(e) => tracing::warn!(error = %e, "lock renewal failed"),
    }
}

async fn take(project: &Project, name: &str, run_id: &str) -> Result<Location> {
    let loc = lock_location(project, name);
    let store = loc.store()?;
    for _ in 0..3 {
        let json =
            serde_json::to_vec(&Holder::new(run_id)).map_err(|e| Error::Internal(e.to_string()))?;
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match store
            .put_opts(&loc.path(), PutPayload::from(Bytes::from(json)), opts)
            .await
        {
            Ok(_) => return Ok(loc),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => {
                let current = holder(project, name).await?;
                match current {
                    Some(h) if !h.is_stale(Utc::now()) => {
                        let what = name.strip_prefix("destination.").unwrap_or(name);
                        return Err(Error::Export {
                            destination: what.to_string(),
                            message: format!(
                                "run `{}` (pid {} on {}, since {}) is exporting it; two runs of a destination never overlap. Wait for it to finish; if that process is gone, its lock expires at {}",
                                h.run_id,
                                h.pid,
                                h.host,
                                h.acquired_at.to_rfc3339(),
                                h.lease_until.to_rfc3339()
                            ),
                        });
                    }
                    stale => {
                        if let Some(h) = stale {
                            tracing::warn!(lock = %loc.display(), run = %h.run_id, "taking over a stale lock (its run is gone)");
                        }
                        match store.delete(&loc.path()).await {
                            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                            Err(e) => return Err(Error::storage(loc.display())(e)),
                        }
                    }
                }
            }
            Err(e) => return Err(Error::storage(loc.display())(e)),
        }
    }
    Err(Error::Export {
        destination: name.to_string(),
        message: "could not take its lock: another run keeps taking it".into(),
    })
}

impl Locks {
    /// Stop renewing and delete the locks.
    pub async fn release(&mut self) {
        // Stop the renewer first (it checks the flag under this lock), so it
        // cannot write a lock back after it is deleted.
        let flag = self.released.clone();
        if let Ok(mut done) = flag.lock() {
            *done = true;
        }
        for loc in self.locations.drain(..) {
            if let Ok(store) = loc.store() {
                let _ = store.delete(&loc.path()).await;
            }
        }
    }
}

/// Whether the run `run_id` is alive: it holds its run lock and the lock is not stale.
///
/// # Errors
/// [`Error::Storage`] when reading fails.
pub async fn run_alive(project: &Project, run_id: &str) -> Result<bool> {
    Ok(holder(project, &format!("run.{run_id}"))
        .await?
        .is_some_and(|h| !h.is_stale(Utc::now())))
}
