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
use datafusion::arrow::array::{Array, AsArray, RecordBatch, StringBuilder};
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
    let (mut seg, mut pid, mut status) = (
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
    );
    let mut counts = BTreeMap::new();
    let mut sorted: Vec<&Membership> = current.iter().collect();
    sorted.sort_by(|a, b| a.segment.cmp(&b.segment));
    for m in sorted {
        let before = baseline.and_then(|b| b.get(&m.segment)).unwrap_or(&empty);
        // Members come sorted and distinct from evaluation; sort if not.
        let mut now: Vec<&str> = m.members.iter().collect();
        if !now.is_sorted_by(|a, b| a < b) {
            now.sort_unstable();
            now.dedup();
        }
        let mut c = StatusCounts::default();
        // One merge of two sorted lists, in profile id order.
        let (mut a, mut b) = (now.into_iter().peekable(), before.iter().peekable());
        loop {
            let (p, s) = match (a.peek(), b.peek()) {
                (None, None) => break,
                (Some(&x), Some(y)) if x == y.as_str() => {
                    b.next();
                    a.next();
                    c.existing += 1;
                    (x, "existing")
                }
                (Some(&x), Some(y)) if x > y.as_str() => {
                    c.exited += 1;
                    (b.next().map_or("", String::as_str), "exited")
                }
                (None, Some(_)) => {
                    c.exited += 1;
                    (b.next().map_or("", String::as_str), "exited")
                }
                (Some(&x), _) => {
                    a.next();
                    c.realized += 1;
                    (x, "realized")
                }
            };
            seg.append_value(&m.segment);
            pid.append_value(p);
            status.append_value(s);
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
            Arc::new(seg.finish()),
            Arc::new(pid.finish()),
            Arc::new(status.finish()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Class;

    #[test]
    fn segments_statuses_match_set_differences() {
        let mut seed = 7u64;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize
        };
        for round in 0..50 {
            let pick = |next: &mut dyn FnMut() -> usize| -> BTreeSet<String> {
                (0..next() % 40)
                    .map(|_| format!("p{:02}", next() % 60))
                    .collect()
            };
            let (now, before) = (pick(&mut next), pick(&mut next));
            let current = vec![Membership {
                segment: "s".into(),
                class: Class::Customer,
                policy: "default".into(),
                members: super::super::MemberIds(
                    datafusion::arrow::array::StringArray::from_iter_values(now.iter()),
                ),
            }];
            let baseline: Members = if round % 5 == 0 {
                Members::new()
            } else {
                BTreeMap::from([("s".to_string(), before.clone())])
            };
            let before = baseline.get("s").cloned().unwrap_or_default();
            let (batch, counts) = statuses(&current, Some(&baseline));
            let mut expected: Vec<(String, &str)> = now
                .iter()
                .map(|p| {
                    (
                        p.clone(),
                        if before.contains(p) {
                            "existing"
                        } else {
                            "realized"
                        },
                    )
                })
                .chain(before.difference(&now).map(|p| (p.clone(), "exited")))
                .collect();
            expected.sort();
            let (pid, status) = (
                batch.column(1).as_string::<i32>(),
                batch.column(2).as_string::<i32>(),
            );
            let got: Vec<(String, &str)> = (0..batch.num_rows())
                .map(|i| (pid.value(i).to_string(), status.value(i)))
                .collect();
            assert_eq!(got, expected, "round {round}");
            let c = counts["s"];
            assert_eq!(c.existing, now.intersection(&before).count() as u64);
            assert_eq!(c.realized, now.difference(&before).count() as u64);
            assert_eq!(c.exited, before.difference(&now).count() as u64);
        }
    }
}
