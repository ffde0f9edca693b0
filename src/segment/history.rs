//! Membership history (SPEC §6): each run stores `memberships.parquet` in its
//! run folder: one row per (segment, profile) with status `realized` (a member
//! now, not in the baseline), `existing` (a member in both) or `exited` (in the
//! baseline, not now), sorted by segment then profile id.
//!
//! The baseline is the previous successful run *by as-of*: the successful run
//! with the latest as-of before this run's (ties: the later finish). Scheduled
//! runs move forward, so it is simply the previous run; a re-run at a past
//! as-of compares with what came before that as-of, so it reproduces its
//! memberships byte for byte.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use datafusion::arrow::array::{Array, AsArray, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};

use super::Membership;
use crate::config::Project;
use crate::error::{Error, Result};
use crate::identity::store;

/// Members per segment of a baseline run.
pub type Members = BTreeMap<String, BTreeSet<String>>;

/// Status counts of one segment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StatusCounts {
    pub realized: u64,
    pub existing: u64,
    pub exited: u64,
}

/// The baseline run for a run at `as_of` (never `run_id` itself), with its members.
///
/// # Errors
/// [`Error::Storage`] when the state cannot be listed or read.
pub async fn baseline(
    project: &Project,
    as_of: DateTime<Utc>,
    run_id: &str,
) -> Result<Option<(String, Members)>> {
    let runs = project.state.join("runs");
    let store_ = runs.store()?;
    let listing = match store_.list_with_delimiter(Some(&runs.path())).await {
        Ok(l) => l,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(Error::storage(runs.display())(e)),
    };
    let mut best: Option<(DateTime<Utc>, String, String)> = None;
    for dir in listing.common_prefixes {
        let Some(id) = dir.filename().map(str::to_string) else {
            continue;
        };
        if id == run_id {
            continue;
        }
        let Some(bytes) = store::get(&store::run_dir(project, &id).join("run.json")).await? else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            continue;
        };
        // A `--segment` run holds only some segments: never a baseline.
        let partial = v["segment_subset"]
            .as_array()
            .is_some_and(|a| !a.is_empty());
        let succeeded = v["status"].as_str() == Some("succeeded") && !partial;
        let Some(at) = v["as_of"]
            .as_str()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.with_timezone(&Utc))
        else {
            continue;
        };
        let finished = v["finished_at"].as_str().unwrap_or_default().to_string();
        if succeeded
            && at < as_of
            && best
                .as_ref()
                .is_none_or(|(b_at, b_fin, _)| (at, &finished) > (*b_at, b_fin))
        {
            best = Some((at, finished, id));
        }
    }
    let Some((_, _, id)) = best else {
        return Ok(None);
    };
    let Some(bytes) = store::get(&store::run_dir(project, &id).join("memberships.parquet")).await?
    else {
        // A run from before membership history: no baseline.
        return Ok(None);
    };
    let mut members = Members::new();
    for b in store::read_parquet(bytes, "memberships.parquet")? {
        let col = |n: &str| {
            b.column_by_name(n)
                .and_then(|c| c.as_string_opt::<i32>())
                .cloned()
                .ok_or_else(|| Error::Internal(format!("memberships.parquet lacks {n}")))
        };
        let (seg, pid, status) = (col("segment")?, col("profile_id")?, col("status")?);
        for i in 0..b.num_rows() {
            if status.is_valid(i) && status.value(i) != "exited" {
                members
                    .entry(seg.value(i).to_string())
                    .or_default()
                    .insert(pid.value(i).to_string());
            }
        }
    }
    Ok(Some((id, members)))
}

/// Rows of the memberships file and the counts per segment.
pub fn statuses(
    current: &[Membership],
    baseline: Option<&Members>,
) -> (RecordBatch, BTreeMap<String, StatusCounts>) {
    let empty = BTreeSet::new();
    let (mut seg, mut pid, mut status) = (Vec::new(), Vec::new(), Vec::new());
    let mut counts = BTreeMap::new();
    let mut sorted: Vec<&Membership> = current.iter().collect();
    sorted.sort_by(|a, b| a.segment.cmp(&b.segment));
    for m in sorted {
        let before = baseline.and_then(|b| b.get(&m.segment)).unwrap_or(&empty);
        let now: BTreeSet<&str> = m.members.iter().collect();
        let mut c = StatusCounts::default();
        let mut rows: Vec<(&str, &'static str)> = Vec::with_capacity(now.len());
        for &p in &now {
            if before.contains(p) {
                c.existing += 1;
                rows.push((p, "existing"));
            } else {
                c.realized += 1;
                rows.push((p, "realized"));
            }
        }
        for p in before.iter().filter(|p| !now.contains(p.as_str())) {
            c.exited += 1;
            rows.push((p.as_str(), "exited"));
        }
        rows.sort_unstable();
        for (p, s) in rows {
            seg.push(m.segment.clone());
            pid.push(p.to_string());
            status.push(s);
        }
        counts.insert(m.segment.clone(), c);
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("segment", DataType::Utf8, false),
        Field::new("profile_id", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(seg)),
            Arc::new(StringArray::from(pid)),
            Arc::new(StringArray::from(status)),
        ],
    )
    .unwrap_or_else(|_| RecordBatch::new_empty(Arc::new(Schema::empty())));
    (batch, counts)
}

/// Write the memberships of run `run_id`; returns the counts per segment.
///
/// # Errors
/// [`Error::Storage`] when the file cannot be written.
pub async fn write(
    project: &Project,
    run_id: &str,
    current: &[Membership],
    baseline: Option<&Members>,
) -> Result<BTreeMap<String, StatusCounts>> {
    let (batch, counts) = statuses(current, baseline);
    let mut buf = Vec::new();
    {
        let props = parquet::file::properties::WriterProperties::builder()
            .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
            .build();
        let mut w = parquet::arrow::ArrowWriter::try_new(&mut buf, batch.schema(), Some(props))
            .map_err(|e| Error::Internal(format!("memberships: {e}")))?;
        w.write(&batch)
            .map_err(|e| Error::Internal(format!("memberships: {e}")))?;
        w.close()
            .map_err(|e| Error::Internal(format!("memberships: {e}")))?;
    }
    store::put(
        &store::run_dir(project, run_id).join("memberships.parquet"),
        buf,
    )
    .await?;
    Ok(counts)
}
