//! Identity outputs in the state location, and the previous run's id map.
//!
//! Per run, in `<state>/runs/<run_id>/`: `identity_map.parquet`,
//! `links.parquet` (every distinct link with its status), `cut_links.parquet`,
//! `quarantined.parquet`, `graph_health.json`, `rejected_sample.jsonl`. After a
//! successful run, `<state>/identity/latest.json` names it: its identity map
//! carries profile ids into the next run, and `audience explain` reads it.

use bytes::Bytes;
use datafusion::arrow::record_batch::RecordBatch;
use object_store::ObjectStoreExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::config::Project;
use crate::engine::storage::Location;
use crate::error::{Error, Result};

/// The run folder of `run_id`.
pub fn run_dir(project: &Project, run_id: &str) -> Location {
    project.state.join(&format!("runs/{run_id}"))
}

fn latest_pointer(project: &Project) -> Location {
    project.state.join("identity/latest.json")
}

/// Write bytes to a location.
pub async fn put(loc: &Location, bytes: impl Into<Bytes>) -> Result<()> {
    crate::engine::storage::put(loc.store()?.as_ref(), loc, bytes.into()).await
}

/// Read a location; `None` when it does not exist.
pub async fn get(loc: &Location) -> Result<Option<Bytes>> {
    let store = loc.store()?;
    match store.get(&loc.path()).await {
        Ok(r) => Ok(Some(
            r.bytes().await.map_err(Error::storage(loc.display()))?,
        )),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(Error::storage(loc.display())(e)),
    }
}

/// Parquet bytes as batches.
pub fn read_parquet(bytes: Bytes, what: &str) -> Result<Vec<RecordBatch>> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.build())
        .map_err(|e| Error::Internal(format!("cannot read {what}: {e}")))?;
    reader
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Internal(format!("cannot read {what}: {e}")))
}

/// Batches as the bytes of one Parquet file (default properties).
pub fn parquet_bytes(
    batches: &[RecordBatch],
    schema: &datafusion::arrow::datatypes::SchemaRef,
) -> Result<Bytes> {
    let pq = |e: parquet::errors::ParquetError| Error::Internal(format!("writing Parquet: {e}"));
    let mut buf = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut buf, schema.clone(), None).map_err(pq)?;
    for b in batches {
        w.write(b).map_err(pq)?;
    }
    w.close().map_err(pq)?;
    Ok(Bytes::from(buf))
}

/// Name `run_id` as the latest successful run.
pub async fn mark_latest(project: &Project, run_id: &str) -> Result<()> {
    let json = serde_json::json!({ "run_id": run_id });
    put(&latest_pointer(project), json.to_string()).await
}

/// The latest successful run id, if any.
pub async fn latest_run(project: &Project) -> Result<Option<String>> {
    let Some(bytes) = get(&latest_pointer(project)).await? else {
        return Ok(None);
    };
    let v: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Internal(format!("identity/latest.json is not JSON: {e}")))?;
    Ok(v.get("run_id").and_then(|r| r.as_str()).map(str::to_string))
}

/// The previous successful run's identity map, if any.
pub async fn previous_map(project: &Project) -> Result<Option<Location>> {
    let Some(run) = latest_run(project).await? else {
        return Ok(None);
    };
    let loc = run_dir(project, &run).join("identity_map.parquet");
    let store = loc.store()?;
    match store.head(&loc.path()).await {
        Ok(_) => Ok(Some(loc)),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(Error::storage(loc.display())(e)),
    }
}
