//! The run ledger: every run's record (`runs/<run_id>/run.json` in the state
//! location), listed newest first.

use crate::config::Project;
use crate::error::{Error, Result};
use crate::identity::store;
use crate::run::RunRecord;

/// Every readable run record, newest first (by start time, then run id). A
/// record that cannot be read or parsed is skipped with a warning naming it.
///
/// # Errors
/// [`Error::Storage`] when the state location cannot be listed.
pub async fn list(project: &Project) -> Result<Vec<RunRecord>> {
    let runs = project.state.join("runs");
    let s = runs.store()?;
    let listing = match s.list_with_delimiter(Some(&runs.path())).await {
        Ok(l) => l,
        Err(object_store::Error::NotFound { .. }) => return Ok(Vec::new()),
        Err(e) => return Err(Error::storage(runs.display())(e)),
    };
    let mut out = Vec::new();
    for dir in listing.common_prefixes {
        let Some(id) = dir.filename() else { continue };
        if let Some(r) = get(project, id).await? {
            out.push(r);
        }
    }
    out.sort_by(|a, b| (&b.started_at, &b.run_id).cmp(&(&a.started_at, &a.run_id)));
    Ok(out)
}

/// One run's record; `None` when there is none (or it cannot be parsed, with a warning).
///
/// # Errors
/// [`Error::Storage`] when reading fails.
pub async fn get(project: &Project, run_id: &str) -> Result<Option<RunRecord>> {
    let loc = store::run_dir(project, run_id).join("run.json");
    let Some(bytes) = store::get(&loc).await? else {
        return Ok(None);
    };
    match serde_json::from_slice::<RunRecord>(&bytes) {
        Ok(r) => Ok(Some(r)),
        Err(e) => {
            tracing::warn!(record = %loc.display(), error = %e, "unreadable run record skipped");
            Ok(None)
        }
    }
}
