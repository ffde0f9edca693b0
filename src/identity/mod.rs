//! Stage 2: identity stitching.
//!
//! Consumes the ingested datasets (identity columns and timestamps only).
//! Every value is normalised by its namespace ([`normalise`]); rejected values
//! are counted per dataset, column and reason, and sampled. Each row's anchor
//! (its highest-priority identity; ties by namespace name, then value) is linked
//! to each of its other identities; connected components are the profiles.
//!
//! Produces [`Stitched`]: the identity map, each class's profile skeleton (one
//! row per component with each namespace's preferred value and full list), and
//! the lookup from anchor key to profile id used to attribute records and events.
//!
//! Graph rules (quarantine, unique namespaces, never-link) are in [`graph`];
//! profile ids and how they carry over between runs in [`ids`].

pub mod anchor;
pub mod components;
pub mod explain;
pub mod graph;
pub mod ids;
pub mod lookup;
pub mod normalise;
mod output;
pub mod sql_normaliser;
pub mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::error::Result as DFResult;
use datafusion::logical_expr::{Expr, ident};
use datafusion::prelude::SessionContext;
use futures::StreamExt;

use crate::config::{Class, Project};
use crate::engine::storage::Location;
use crate::engine::udf::timestamp_type;
use crate::error::{Error, Result};
use crate::ingest::Ingested;
use graph::{GraphBuilder, IdentityGraph};
use normalise::{Normaliser, Reject};

/// Rejected rows kept as a sample per dataset.
pub const SAMPLE_PER_DATASET: usize = 100;

/// Counts and samples of rejected values and rows.
#[derive(Debug, Default, Clone)]
pub struct Rejections {
    /// `(dataset, column, reason)` → count. Reasons: `too_long`, `blocked`,
    /// `invalid` (a value); `null_timestamp`, `no_valid_identity` (a row).
    pub counts: BTreeMap<(String, String, String), u64>,
    /// Per dataset, the sampled rejected rows (identity columns, timestamp,
    /// and why) as JSON lines, each under its row's stable key: the rows with
    /// the smallest keys are kept, so the sample does not depend on the order
    /// a dataset's batches arrive in (its partitions are read side by side).
    samples: BTreeMap<String, BTreeSet<(u64, String)>>,
}

impl Rejections {
    /// Count a rejection; `key` is a hash of the row's contents that does
    /// not change between runs, `row` the row as JSON (built only when the
    /// row may enter the sample).
    fn add(
        &mut self,
        dataset: &str,
        column: &str,
        reason: &str,
        key: u64,
        row: impl FnOnce() -> serde_json::Value,
    ) {
        *self
            .counts
            .entry((dataset.to_string(), column.to_string(), reason.to_string()))
            .or_default() += 1;
        let sample = self.samples.entry(dataset.to_string()).or_default();
        if sample.len() >= SAMPLE_PER_DATASET && sample.last().is_some_and(|(k, _)| *k < key) {
            return;
        }
        let mut v = row();
        if let Some(o) = v.as_object_mut() {
            o.insert("_dataset".into(), dataset.into());
            o.insert("_column".into(), column.into());
            o.insert("_reason".into(), reason.into());
        }
        sample.insert((key, v.to_string()));
        if sample.len() > SAMPLE_PER_DATASET {
            sample.pop_last();
        }
    }

    /// The sampled rows as JSON lines, dataset by dataset (by name).
    pub fn sample_lines(&self) -> impl Iterator<Item = &str> {
        self.samples
            .values()
            .flat_map(|s| s.iter().map(|(_, line)| line.as_str()))
    }

    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }
}

/// Graph health: what a data engineer checks after a run.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct GraphHealth {
    pub identities: u64,
    pub links: u64,
    pub links_used: u64,
    pub links_cut: u64,
    pub links_dropped_quarantine: u64,
    pub quarantined: u64,
    pub oversized: u64,
    /// Profiles per class.
    pub profiles: BTreeMap<String, u64>,
    /// `(bucket, profiles)` by number of identities: 1, 2, 3, 4, 5-9, 10-49, 50-99, 100-999, 1000+.
    pub size_histogram: Vec<(String, u64)>,
    /// The largest profiles, biggest first (ties: profile id).
    pub largest: Vec<LargeProfile>,
    /// On a cluster: the rounds of large-star/small-star that found the components.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component_rounds: Option<u32>,
}

/// One of the largest profiles.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LargeProfile {
    pub profile_id: String,
    pub class: String,
    pub identities: u64,
    pub by_namespace: BTreeMap<String, u64>,
    pub oversized: bool,
}

/// Output of the identity stage. The large outputs (identity map, links) are
/// written to the run folder in chunks rather than kept in memory.
#[derive(Debug, Clone)]
pub struct Stitched {
    /// Identity → profile lookup used to attribute records and events.
    pub lookup: Arc<lookup::IdentityLookup>,
    /// Per class: `profile_id`, then per namespace (by name) `<ns>` (preferred value) and `<ns>_all` (sorted list).
    pub profiles: BTreeMap<Class, Vec<RecordBatch>>,
    /// Profiles with more identities than `identity.max_identities`: excluded from exports.
    pub oversized: BTreeSet<String>,
    pub health: GraphHealth,
    pub rejections: Rejections,
    pub rows_read: BTreeMap<String, u64>,
    /// Where the identity outputs of this run were written.
    pub outputs: Location,
}

/// Stitch identities across every dataset.
///
/// `previous` is the previous successful run's identity map, whose profile ids
/// carry over (see [`ids`]); the outputs are written under `out` (see [`store`]).
///
/// # Errors
/// [`Error::Input`] when reading a dataset fails.
pub async fn stitch(
    ctx: &SessionContext,
    project: &Project,
    datasets: &[Ingested],
    previous: Option<&Location>,
    out: &Location,
    mut progress: impl FnMut(u64),
) -> Result<Stitched> {
    let threads = project.engine.threads();
    let mut graph = GraphBuilder::new(datasets.len(), threads);
    let phones: Vec<normalise::PhoneCache> = project
        .namespaces
        .iter()
        .map(|_| normalise::PhoneCache::default())
        .collect();
    let mut rejections = Rejections::default();
    let mut rows_read = BTreeMap::new();
    let mut total_rows = 0u64;
    for (ds_index, d) in datasets.iter().enumerate() {
        let ds = &d.dataset;
        let ds_index = ds_index as u16;
        let cols: Vec<(usize, &str, Normaliser)> = ds
            .identities
            .iter()
            .map(|(column, ns)| {
                let idx = project
                    .namespaces
                    .iter()
                    .position(|n| &n.name == ns)
                    .ok_or_else(|| Error::Internal(format!("namespace {ns} vanished")))?;
                Ok((
                    idx,
                    column.as_str(),
                    Normaliser::new(&project.namespaces[idx]).with_cache(&phones[idx]),
                ))
            })
            .collect::<Result<_>>()?;
        // Raw identity columns, the timestamp, then one column per SQL-normalised identity.
        let mut select: Vec<Expr> = cols.iter().map(|(_, c, _)| ident(*c)).collect();
        select.push(ident(&ds.timestamp));
        let mut sql_col: Vec<Option<usize>> = Vec::with_capacity(cols.len());
        for (ns, c, _) in &cols {
            if project.namespaces[*ns].expression.is_some() {
                sql_col.push(Some(select.len()));
                select.push(sql_normaliser::column_expr(&project.namespaces[*ns], c)?);
            } else {
                sql_col.push(None);
            }
        }
        // Time travel: rows after the as-of do not exist for this run (NULL times are kept, to be rejected).
        let by_as_of = crate::engine::udf::by_as_of(ctx, ident(&ds.timestamp))
            .map_err(Error::engine("identity"))?;
        let df = ctx
            .table(d.table.as_str())
            .await
            .and_then(|t| t.filter(ident(&ds.timestamp).is_null().or(by_as_of)))
            .and_then(|t| t.select(select))
            .map_err(Error::engine("identity"))?;
        let mut stream = df
            .execute_stream()
            .await
            .map_err(Error::engine("identity"))?;
        let mut rows = 0u64;
        // Phone numbers new to this run are parsed side by side on the phone
        // threads, a batch ahead: the next batch's while this one is
        // normalised (the cache then holds this batch's).
        let start_warm =
            |next: &Option<DFResult<RecordBatch>>| -> Result<Vec<normalise::Warming<'_>>> {
                let mut warming = Vec::new();
                let Some(Ok(batch)) = next else {
                    return Ok(warming);
                };
                for (i, ((_, _, norm), sql)) in cols.iter().zip(&sql_col).enumerate() {
                    if sql.is_none() {
                        let arr = StrCol::new(batch.column(i))?;
                        let raws = (0..batch.num_rows()).filter(|&r| !arr.is_null(r));
                        warming.extend(norm.start_warm(raws.map(|r| arr.value(r)), threads));
                    }
                }
                Ok(warming)
            };
        let mut next = stream.next().await;
        let mut warming = start_warm(&next)?;
        while let Some(batch) = next {
            let batch = batch
                .map_err(|e| Error::input(&ds.name, None, None, format!("reading failed: {e}")))?;
            warming.into_iter().for_each(normalise::Warming::finish);
            next = stream.next().await;
            warming = start_warm(&next)?;
            let ids: Vec<StrCol> = (0..cols.len())
                .map(|i| StrCol::new(batch.column(i)))
                .collect::<Result<_>>()?;
            let normalised: Vec<Option<StrCol>> = sql_col
                .iter()
                .map(|c| c.map(|c| StrCol::new(batch.column(c))).transpose())
                .collect::<Result<_>>()?;
            let ts_arr = cast(batch.column(cols.len()), &timestamp_type())
                .map_err(|e| Error::Internal(e.to_string()))?;
            let ts = ts_arr
                .as_any()
                .downcast_ref::<TimestampMicrosecondArray>()
                .ok_or_else(|| Error::Internal("timestamp cast".into()))?;
            // A hash of the row that does not depend on the run (SipHash
            // with fixed keys): which rejected rows are sampled.
            let row_key = |row: usize| {
                use std::hash::{Hash, Hasher};
                let mut h = std::hash::DefaultHasher::new();
                for a in &ids {
                    (!a.is_null(row)).then(|| a.value(row)).hash(&mut h);
                }
                (!ts.is_null(row)).then(|| ts.value(row)).hash(&mut h);
                h.finish()
            };
            let row_json = |row: usize| {
                let mut m = serde_json::Map::new();
                for ((_, c, _), a) in cols.iter().zip(&ids) {
                    m.insert(
                        c.to_string(),
                        if a.is_null(row) {
                            serde_json::Value::Null
                        } else {
                            a.value(row).chars().take(200).collect::<String>().into()
                        },
                    );
                }
                let t = (!ts.is_null(row))
                    .then(|| chrono::DateTime::from_timestamp_micros(ts.value(row)))
                    .flatten();
                m.insert(
                    ds.timestamp.clone(),
                    t.map(|t| t.to_rfc3339().into())
                        .unwrap_or(serde_json::Value::Null),
                );
                serde_json::Value::Object(m)
            };
            let mut found: Vec<(u16, std::borrow::Cow<'_, str>)> = Vec::with_capacity(cols.len());
            for row in 0..batch.num_rows() {
                if ts.is_null(row) {
                    rejections.add(
                        &ds.name,
                        &ds.timestamp,
                        "null_timestamp",
                        row_key(row),
                        || row_json(row),
                    );
                    continue;
                }
                let t = ts.value(row);
                found.clear();
                for (((ns, column, norm), arr), sql) in cols.iter().zip(&ids).zip(&normalised) {
                    if arr.is_null(row) {
                        continue;
                    }
                    let raw = match sql {
                        None => arr.value(row),
                        Some(n) if n.is_null(row) => {
                            rejections.add(
                                &ds.name,
                                column,
                                Reject::Invalid.as_str(),
                                row_key(row),
                                || row_json(row),
                            );
                            continue;
                        }
                        Some(n) => n.value(row),
                    };
                    match norm.apply(raw) {
                        Ok(v) => found.push((*ns as u16, v)),
                        Err(r) => {
                            rejections
                                .add(&ds.name, column, r.as_str(), row_key(row), || row_json(row))
                        }
                    }
                }
                if found.is_empty() {
                    rejections.add(&ds.name, "*", "no_valid_identity", row_key(row), || {
                        row_json(row)
                    });
                    continue;
                }
                if found.len() > 1 {
                    found.sort();
                    found.dedup();
                }
                graph.add_row(
                    ds.class,
                    t,
                    ds_index,
                    found.iter().map(|(ns, v)| (*ns, &**v)),
                )?;
            }
            rows += batch.num_rows() as u64;
            total_rows += batch.num_rows() as u64;
            progress(total_rows);
        }
        rows_read.insert(ds.name.clone(), rows);
    }
    let names: Vec<&str> = datasets.iter().map(|d| d.dataset.name.as_str()).collect();
    tracing::debug!(rows = total_rows, "identity: rows read, interning the rest");
    let graph = graph.finish()?;
    tracing::debug!(
        identities = graph.len(),
        links = graph.link_count(),
        value_bytes = graph.value_bytes(),
        "identity: graph built"
    );
    output::finish(
        ctx, project, graph, phones, &names, previous, rejections, rows_read, out,
    )
    .await
}

/// Quote an identifier for SQL.
pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A string column read without copying (Utf8, LargeUtf8, Utf8View), or
/// another type cast to Utf8 once.
pub(crate) enum StrCol {
    Utf8(StringArray),
    Large(datafusion::arrow::array::LargeStringArray),
    View(datafusion::arrow::array::StringViewArray),
}

impl StrCol {
    pub(crate) fn new(a: &ArrayRef) -> Result<Self> {
        use datafusion::arrow::array::AsArray;
        Ok(match a.data_type() {
            DataType::Utf8 => StrCol::Utf8(a.as_string::<i32>().clone()),
            DataType::LargeUtf8 => StrCol::Large(a.as_string::<i64>().clone()),
            DataType::Utf8View => StrCol::View(a.as_string_view().clone()),
            _ => StrCol::Utf8(to_strings(a)?),
        })
    }

    pub(crate) fn is_null(&self, i: usize) -> bool {
        match self {
            StrCol::Utf8(a) => a.is_null(i),
            StrCol::Large(a) => a.is_null(i),
            StrCol::View(a) => a.is_null(i),
        }
    }

    pub(crate) fn value(&self, i: usize) -> &str {
        match self {
            StrCol::Utf8(a) => a.value(i),
            StrCol::Large(a) => a.value(i),
            StrCol::View(a) => a.value(i),
        }
    }
}

/// Any identity column as UTF-8 strings.
pub(crate) fn to_strings(a: &ArrayRef) -> Result<StringArray> {
    let c = cast(a, &DataType::Utf8)
        .map_err(|e| Error::Internal(format!("identity column to string: {e}")))?;
    c.as_any()
        .downcast_ref::<StringArray>()
        .cloned()
        .ok_or_else(|| Error::Internal("string cast".into()))
}

/// Read a previous identity map (streamed, batch by batch) into the previous
/// ids of this run's identities.
pub(crate) async fn previous_ids(
    ctx: &SessionContext,
    graph: &IdentityGraph,
    project: &Project,
    loc: &Location,
) -> Result<ids::Previous> {
    let mut stream = ctx
        .read_parquet(
            loc.url().as_str(),
            datafusion::prelude::ParquetReadOptions::default(),
        )
        .await
        .and_then(|df| df.select_columns(&["class", "namespace", "value", "profile_id"]))
        .map_err(Error::engine("identity"))?
        .execute_stream()
        .await
        .map_err(Error::engine("identity"))?;
    let mut prev = ids::Previous {
        by_identity: vec![u32::MAX; graph.len()],
        ..Default::default()
    };
    while let Some(b) = stream.next().await {
        let b = b.map_err(|e| {
            Error::Internal(format!(
                "cannot read the previous identity map {}: {e}",
                loc.display()
            ))
        })?;
        let col = |n: &str| -> Result<StrCol> {
            b.column_by_name(n)
                .map(StrCol::new)
                .transpose()?
                .ok_or_else(|| Error::Internal(format!("previous identity map has no {n} column")))
        };
        let (class, ns, value, pid) = (
            col("class")?,
            col("namespace")?,
            col("value")?,
            col("profile_id")?,
        );
        for i in 0..b.num_rows() {
            let class = if class.value(i) == "prospect" {
                Class::Prospect
            } else {
                Class::Customer
            };
            let pid = pid.value(i);
            if pid.is_empty() {
                continue;
            }
            let k = prev.ids.intern(pid);
            let Some(ns_idx) = project
                .namespaces
                .iter()
                .position(|n| n.name == ns.value(i))
            else {
                continue;
            };
            let Some(id) = graph.get(class, ns_idx as u16, value.value(i)) else {
                continue;
            };
            prev.by_identity[id as usize] = k;
        }
    }
    Ok(prev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejected_sample_does_not_depend_on_arrival_order() {
        // 250 rejected rows (more than the sample holds), in two orders.
        let rows: Vec<u64> = (0..250u64)
            .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .collect();
        let sample = |order: &[u64]| {
            let mut r = Rejections::default();
            for &k in order {
                r.add(
                    "crm",
                    "email",
                    "blocked",
                    k,
                    || serde_json::json!({ "email": k.to_string() }),
                );
            }
            assert_eq!(r.total(), 250);
            r.sample_lines().map(str::to_string).collect::<Vec<_>>()
        };
        let forward = sample(&rows);
        let backward = sample(&rows.iter().rev().copied().collect::<Vec<_>>());
        assert_eq!(forward.len(), SAMPLE_PER_DATASET);
        assert_eq!(forward, backward);
        // The rows kept are those with the smallest keys.
        let mut keys = rows.clone();
        keys.sort_unstable();
        for k in &keys[..SAMPLE_PER_DATASET] {
            assert!(
                forward.iter().any(|l| l.contains(&format!("\"{k}\""))),
                "{k} kept"
            );
        }
    }
}
