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

/// Mark runs recorded as `running` whose process is gone (no live run lock)
/// as failed, saying so in their error; `current` is left alone. Their files
/// were never published: a destination without `_SUCCESS` for a run is not a
/// published export, and the next run writes its own.
///
/// # Errors
/// [`Error::Storage`] when the ledger cannot be read or written.
pub async fn mark_dead_runs(project: &Project, current: &str) -> Result<Vec<String>> {
    let mut marked = Vec::new();
    for mut r in list(project).await? {
        if r.run_id == current
            || r.status != crate::run::RunStatus::Running
            || crate::run::lock::run_alive(project, &r.run_id).await?
        {
            continue;
        }
        tracing::warn!(run = %r.run_id, "marking a run that died as failed");
        r.status = crate::run::RunStatus::Failed;
        r.finished_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        r.error = Some(format!(
            "the run died before finishing (found by run `{current}`); nothing it wrote was published"
        ));
        let json = serde_json::to_vec_pretty(&r).map_err(|e| Error::Internal(e.to_string()))?;
        store::put(&store::run_dir(project, &r.run_id).join("run.json"), json).await?;
        marked.push(r.run_id);
    }
    Ok(marked)
}
