//! Stage 5: exports. Segment memberships → full files in destinations, with
//! the publish protocol.
//!
//! For each destination: every segment's complete membership joined to its
//! profiles, the configured fields in order, one row per member sorted by
//! `profile_id`, written as `<run_id>/<segment>.csv`. Publish protocol: any
//! `_SUCCESS` of this run id is removed first; then the data files; then
//! `<run_id>/manifest.json` (per file: path, segment, rows, bytes, SHA-256; run
//! id, as-of, config and SQL hashes, engine version); then `<run_id>/_SUCCESS`.
//! A failure before the end leaves no `_SUCCESS`.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use object_store::ObjectStoreExt;
use sha2::{Digest, Sha256};

use crate::config::{Destination, FormatKind, Project};
use crate::engine::Batches;
use crate::engine::storage::put;
use crate::error::{Error, Result, one_of};
use crate::segment::Membership;

/// One file in a manifest.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ManifestFile {
    /// Relative to the destination URL.
    pub path: String,
    pub segment: String,
    pub rows: u64,
    pub bytes: u64,
    pub sha256: String,
    /// Members left out because their profile is oversized (`identity.max_identities`).
    pub excluded_oversized: u64,
}

/// `manifest.json`, written after the data files and before `_SUCCESS`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ExportManifest {
    pub run_id: String,
    pub as_of: String,
    pub destination: String,
    pub format: String,
    pub files: Vec<ManifestFile>,
    pub config_sha256: String,
    pub sql_sha256: String,
    pub engine_version: String,
}

/// Profiles of each merge policy, as the export reads them.
pub type ProfilesByPolicy = BTreeMap<String, Batches>;

/// Check that every destination's fields are exportable columns of its class's
/// profiles, before any row is read; each bad field is reported once.
pub fn check_fields(project: &Project, datasets: &[crate::ingest::Ingested]) -> Result<()> {
    let mut problems = crate::error::Problems::default();
    for d in &project.destinations {
        let Some(class) = d
            .segments
            .iter()
            .find_map(|s| project.segments().find(|m| &m.id == s).map(|m| m.class))
        else {
            continue;
        };
        let exportable = crate::merge::exportable_columns(project, datasets, class);
        for (i, f) in d.fields.iter().enumerate() {
            if !exportable.contains(f) {
                problems.push(
                    crate::config::CONFIG_FILE,
                    format!("destinations.{}.fields[{i}]", d.name),
                    format!(
                        "`{f}` is not an exportable {} profile column: {}",
                        class.as_str(),
                        one_of(f, exportable.iter().map(String::as_str))
                    ),
                );
            }
        }
    }
    problems.into_result()
}

/// Export every destination. Returns the manifests written.
///
/// # Errors
/// [`Error::Storage`] when a write fails (the destination then has no `_SUCCESS`
/// for this run); [`Error::Engine`] when building rows fails.
pub async fn export(
    ctx: &SessionContext,
    project: &Project,
    run_id: &str,
    as_of: DateTime<Utc>,
    audiences: &Audiences<'_>,
    mut progress: impl FnMut(&str),
) -> Result<Vec<ExportManifest>> {
    let mut manifests = Vec::new();
    for d in &project.destinations {
        progress(&d.name);
        manifests.push(export_one(ctx, project, d, run_id, as_of, audiences).await?);
    }
    Ok(manifests)
}

/// What the exports read: memberships, each policy's profiles, and the
/// profiles excluded from every export (oversized).
pub struct Audiences<'a> {
    pub memberships: &'a [Membership],
    pub profiles: &'a ProfilesByPolicy,
    pub oversized: &'a std::collections::BTreeSet<String>,
}

async fn export_one(
    ctx: &SessionContext,
    project: &Project,
    d: &Destination,
    run_id: &str,
    as_of: DateTime<Utc>,
    audiences: &Audiences<'_>,
) -> Result<ExportManifest> {
    let store = d.location.store()?;
    let run_dir = d.location.join(run_id);
    let success = run_dir.join("_SUCCESS");
    match store.delete(&success.path()).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(Error::storage(success.display())(e)),
    }
    let mut files = Vec::new();
    for seg in &d.segments {
        let m = audiences
            .memberships
            .iter()
            .find(|m| &m.segment == seg)
            .ok_or_else(|| Error::Internal(format!("segment {seg} has no membership")))?;
        let (schema, batches) = audiences
            .profiles
            .get(&m.policy)
            .ok_or_else(|| Error::Internal(format!("no profiles for policy {}", m.policy)))?;
        let members: Vec<&str> = m
            .members
            .iter()
            .map(String::as_str)
            .filter(|p| !audiences.oversized.contains(*p))
            .collect();
        let excluded_oversized = (m.members.len() - members.len()) as u64;
        let (row_schema, rows) =
            member_rows(ctx, d, &members, schema.clone(), batches.clone()).await?;
        let (bytes, n) = match d.format {
            FormatKind::Csv => to_csv(&row_schema, &rows)?,
        };
        let rel = format!("{run_id}/{seg}.csv");
        let sha = hex::encode(Sha256::digest(&bytes));
        let len = bytes.len() as u64;
        put(store.as_ref(), &d.location.join(&rel), bytes).await?;
        files.push(ManifestFile {
            path: rel,
            segment: seg.clone(),
            rows: n,
            bytes: len,
            sha256: sha,
            excluded_oversized,
        });
    }
    let manifest = ExportManifest {
        run_id: run_id.to_string(),
        as_of: as_of.to_rfc3339_opts(SecondsFormat::Secs, true),
        destination: d.name.clone(),
        format: "csv".into(),
        files,
        config_sha256: project.config_hash.clone(),
        sql_sha256: project.sql_hash.clone(),
        engine_version: crate::VERSION.to_string(),
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Internal(e.to_string()))?;
    put(
        store.as_ref(),
        &run_dir.join("manifest.json"),
        Bytes::from(json),
    )
    .await?;
    put(store.as_ref(), &success, Bytes::new()).await?;
    Ok(manifest)
}

/// The destination's fields for each member, sorted by `profile_id`.
async fn member_rows(
    ctx: &SessionContext,
    d: &Destination,
    members: &[&str],
    schema: Arc<Schema>,
    batches: Vec<RecordBatch>,
) -> Result<Batches> {
    let ms = Arc::new(Schema::new(vec![Field::new(
        "member_id",
        DataType::Utf8,
        false,
    )]));
    let mb = RecordBatch::try_new(
        ms.clone(),
        vec![Arc::new(StringArray::from_iter_values(members.iter()))],
    )
    .map_err(|e| Error::Internal(e.to_string()))?;
    let members = ctx
        .read_table(Arc::new(
            MemTable::try_new(ms, vec![vec![mb]]).map_err(Error::engine("export"))?,
        ))
        .map_err(Error::engine("export"))?;
    let profiles = ctx
        .read_table(Arc::new(
            MemTable::try_new(schema, vec![batches]).map_err(Error::engine("export"))?,
        ))
        .map_err(Error::engine("export"))?;
    let cols: Vec<datafusion::logical_expr::Expr> = d
        .fields
        .iter()
        .map(datafusion::logical_expr::ident)
        .collect();
    let df = profiles
        .join(
            members,
            datafusion::common::JoinType::LeftSemi,
            &["profile_id"],
            &["member_id"],
            None,
        )
        .and_then(|df| {
            df.sort(vec![
                datafusion::logical_expr::ident("profile_id").sort(true, false),
            ])
        })
        .and_then(|df| df.select(cols))
        .map_err(Error::engine("export"))?;
    let schema = Arc::new(df.schema().as_arrow().clone());
    let batches = df.collect().await.map_err(Error::engine("export"))?;
    Ok((schema, batches))
}

/// CSV with a header line, also when there are no members.
fn to_csv(schema: &Arc<Schema>, batches: &[RecordBatch]) -> Result<(Bytes, u64)> {
    let mut buf = Vec::new();
    let mut rows = 0u64;
    {
        let mut w = datafusion::arrow::csv::WriterBuilder::new()
            .with_header(true)
            .build(&mut buf);
        let empty = [RecordBatch::new_empty(schema.clone())];
        let batches = if batches.is_empty() {
            &empty[..]
        } else {
            batches
        };
        for b in batches {
            rows += b.num_rows() as u64;
            w.write(b)
                .map_err(|e| Error::Internal(format!("CSV encoding: {e}")))?;
        }
    }
    Ok((Bytes::from(buf), rows))
}
