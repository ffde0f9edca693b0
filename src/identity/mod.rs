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
pub mod explain;
pub mod graph;
pub mod ids;
pub mod normalise;
pub mod sql_normaliser;
pub mod store;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, ListBuilder, RecordBatch, StringArray, StringBuilder,
    TimestampMicrosecondArray, TimestampMicrosecondBuilder,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::logical_expr::{Expr, ident};
use datafusion::prelude::SessionContext;
use futures::StreamExt;

use crate::config::{Class, Project};
use crate::engine::udf::timestamp_type;
use crate::error::{Error, Result};
use crate::ingest::Ingested;
use graph::{IdentityGraph, LinkStatus, Quarantine};
use normalise::{Normaliser, Reject};

/// Rejected rows kept as a sample per dataset.
pub const SAMPLE_PER_DATASET: usize = 100;

/// Counts and samples of rejected values and rows.
#[derive(Debug, Default, Clone)]
pub struct Rejections {
    /// `(dataset, column, reason)` → count. Reasons: `too_long`, `blocked`,
    /// `invalid` (a value); `null_timestamp`, `no_valid_identity` (a row).
    pub counts: BTreeMap<(String, String, String), u64>,
    /// Sampled rejected rows: identity columns, timestamp, and why.
    pub sample: Vec<serde_json::Value>,
    sampled: HashMap<String, usize>,
}

impl Rejections {
    fn add(
        &mut self,
        dataset: &str,
        column: &str,
        reason: &str,
        row: impl FnOnce() -> serde_json::Value,
    ) {
        *self
            .counts
            .entry((dataset.to_string(), column.to_string(), reason.to_string()))
            .or_default() += 1;
        let n = self.sampled.entry(dataset.to_string()).or_default();
        if *n < SAMPLE_PER_DATASET {
            *n += 1;
            let mut v = row();
            if let Some(o) = v.as_object_mut() {
                o.insert("_dataset".into(), dataset.into());
                o.insert("_column".into(), column.into());
                o.insert("_reason".into(), reason.into());
            }
            self.sample.push(v);
        }
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

/// Output of the identity stage.
#[derive(Debug, Clone)]
pub struct Stitched {
    /// `class, namespace, value, profile_id, first_seen, last_seen, datasets`,
    /// sorted by class, namespace (priority order), value.
    pub identity_map: RecordBatch,
    /// Per class: `profile_id`, then per namespace (by name) `<ns>` (preferred value) and `<ns>_all` (sorted list).
    pub profiles: BTreeMap<Class, RecordBatch>,
    /// Per class: `key` (`namespace:value`), `profile_id`.
    pub keys: BTreeMap<Class, RecordBatch>,
    /// Per class: keys of quarantined identities (records skip them when choosing a profile).
    pub quarantined_keys: BTreeMap<Class, BTreeSet<String>>,
    /// Every distinct link with its status: `class, anchor_namespace, anchor_value,
    /// other_namespace, other_value, linked_at, dataset, status, reason`.
    pub links: RecordBatch,
    /// `class, namespace, value, profile_id, degree, reason`.
    pub quarantined: RecordBatch,
    /// Profiles with more identities than `identity.max_identities`: excluded from exports.
    pub oversized: BTreeSet<String>,
    pub health: GraphHealth,
    pub rejections: Rejections,
    pub rows_read: BTreeMap<String, u64>,
}

impl Stitched {
    /// The cut links (a view of [`Stitched::links`]).
    pub fn cut_links(&self) -> Result<RecordBatch> {
        filter_status(&self.links, |s| s.starts_with("cut"))
    }
}

fn filter_status(batch: &RecordBatch, keep: impl Fn(&str) -> bool) -> Result<RecordBatch> {
    let status = batch
        .column_by_name("status")
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .ok_or_else(|| Error::Internal("links batch has no status column".into()))?;
    let mask: datafusion::arrow::array::BooleanArray = (0..status.len())
        .map(|i| Some(keep(status.value(i))))
        .collect();
    datafusion::arrow::compute::filter_record_batch(batch, &mask)
        .map_err(|e| Error::Internal(e.to_string()))
}

/// Stitch identities across every dataset.
///
/// `previous` is the previous successful run's identity map, whose profile ids
/// carry over (see [`ids`]).
///
/// # Errors
/// [`Error::Input`] when reading a dataset fails.
pub async fn stitch(
    ctx: &SessionContext,
    project: &Project,
    datasets: &[Ingested],
    previous: Option<&[RecordBatch]>,
    mut progress: impl FnMut(u64),
) -> Result<Stitched> {
    let mut graph = IdentityGraph::new();
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
                    Normaliser::new(&project.namespaces[idx]),
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
        let df = ctx
            .table(d.table.as_str())
            .await
            .and_then(|t| t.select(select))
            .map_err(Error::engine("identity"))?;
        let mut stream = df
            .execute_stream()
            .await
            .map_err(Error::engine("identity"))?;
        let mut rows = 0u64;
        while let Some(batch) = stream.next().await {
            let batch = batch
                .map_err(|e| Error::input(&ds.name, None, None, format!("reading failed: {e}")))?;
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
            let mut interned: Vec<u32> = Vec::with_capacity(cols.len());
            for row in 0..batch.num_rows() {
                if ts.is_null(row) {
                    rejections.add(&ds.name, &ds.timestamp, "null_timestamp", || row_json(row));
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
                            rejections
                                .add(&ds.name, column, Reject::Invalid.as_str(), || row_json(row));
                            continue;
                        }
                        Some(n) => n.value(row),
                    };
                    match norm.apply(raw) {
                        Ok(v) => found.push((*ns as u16, v)),
                        Err(r) => rejections.add(&ds.name, column, r.as_str(), || row_json(row)),
                    }
                }
                if found.is_empty() {
                    rejections.add(&ds.name, "*", "no_valid_identity", || row_json(row));
                    continue;
                }
                if found.len() > 1 {
                    found.sort();
                    found.dedup();
                }
                interned.clear();
                for (ns, v) in &found {
                    interned.push(graph.intern(ds.class, *ns, v, t, ds_index));
                }
                for &other in &interned[1..] {
                    graph.link(interned[0], other, t, ds_index);
                }
            }
            rows += batch.num_rows() as u64;
            total_rows += batch.num_rows() as u64;
            progress(total_rows);
        }
        rows_read.insert(ds.name.clone(), rows);
    }
    let names: Vec<&str> = datasets.iter().map(|d| d.dataset.name.as_str()).collect();
    build_outputs(project, graph, &names, previous, rejections, rows_read)
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

/// Read a previous identity map into ids of this run's identities.
fn previous_ids(
    graph: &IdentityGraph,
    project: &Project,
    batches: &[RecordBatch],
) -> Result<ids::Previous> {
    let mut prev = ids::Previous::default();
    let mut name_index: HashMap<String, u32> = HashMap::new();
    for b in batches {
        let col = |n: &str| -> Result<StringArray> {
            b.column_by_name(n)
                .map(to_strings)
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
            let class = match class.value(i) {
                "prospect" => Class::Prospect,
                _ => Class::Customer,
            };
            let Some(ns_idx) = project
                .namespaces
                .iter()
                .position(|n| n.name == ns.value(i))
            else {
                continue;
            };
            let p = pid.value(i);
            let idx = match name_index.get(p) {
                Some(&k) => k,
                None => {
                    let k = prev.names.len() as u32;
                    prev.names.push(p.to_string());
                    prev.all.insert(p.to_string());
                    name_index.insert(p.to_string(), k);
                    k
                }
            };
            if let Some(id) = graph.get(class, ns_idx as u16, value.value(i)) {
                prev.by_identity.insert(id, idx);
            }
        }
    }
    Ok(prev)
}

fn size_bucket(n: u64) -> usize {
    match n {
        0..=4 => n.saturating_sub(1) as usize,
        5..=9 => 4,
        10..=49 => 5,
        50..=99 => 6,
        100..=999 => 7,
        _ => 8,
    }
}
const BUCKETS: [&str; 9] = [
    "1", "2", "3", "4", "5-9", "10-49", "50-99", "100-999", "1000+",
];

fn ts_array(values: impl Iterator<Item = i64>) -> ArrayRef {
    let mut b = TimestampMicrosecondBuilder::new().with_timezone("UTC");
    for v in values {
        b.append_value(v);
    }
    Arc::new(b.finish())
}

fn batch(fields: Vec<Field>, arrays: Vec<ArrayRef>) -> Result<RecordBatch> {
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
        .map_err(|e| Error::Internal(e.to_string()))
}

fn build_outputs(
    project: &Project,
    mut graph: IdentityGraph,
    dataset_names: &[&str],
    previous: Option<&[RecordBatch]>,
    rejections: Rejections,
    rows_read: BTreeMap<String, u64>,
) -> Result<Stitched> {
    let ns_names: Vec<&str> = project.namespaces.iter().map(|n| n.name.as_str()).collect();
    let n = graph.len();
    let (order, rank) = graph.ranks();
    // Rules by namespace index; never-link identities that occur in the data.
    let rules: Vec<graph::NsRules> = project
        .namespaces
        .iter()
        .map(|ns| graph::NsRules {
            unique: ns.unique,
            max_links: ns.max_links,
        })
        .collect();
    let lookup = |g: &IdentityGraph, (ns, value): &(String, String)| -> Vec<u32> {
        let Some(idx) = ns_names.iter().position(|n| n == ns) else {
            return Vec::new();
        };
        [Class::Customer, Class::Prospect]
            .iter()
            .filter_map(|c| g.get(*c, idx as u16, value))
            .collect()
    };
    let never_values: Vec<u32> = project
        .identity
        .never_link_values
        .iter()
        .flat_map(|v| lookup(&graph, v))
        .collect();
    let mut never_pairs = Vec::new();
    for (a, b) in &project.identity.never_link_pairs {
        for x in lookup(&graph, a) {
            for y in lookup(&graph, b) {
                if graph.class[x as usize] == graph.class[y as usize] {
                    never_pairs.push((x, y));
                }
            }
        }
    }
    let allow = |id: u32| {
        project.namespaces[graph.ns[id as usize] as usize]
            .allow
            .contains(graph.value(id))
    };
    let allowed: Vec<bool> = (0..n as u32).map(allow).collect();
    let st = graph.stitch(
        &rules,
        &never_values,
        &never_pairs,
        &|id| allowed[id as usize],
        &rank,
    );
    let prev = previous
        .map(|b| previous_ids(&graph, project, b))
        .transpose()?;
    let pid_of_root = ids::assign(&graph, &ns_names, &st.roots, &order, prev.as_ref());
    let pid = |i: u32| pid_of_root[&st.roots[i as usize]].as_str();

    // Component sizes, oversized, histogram, largest.
    let mut sizes: HashMap<u32, u64> = HashMap::new();
    for &r in &st.roots {
        *sizes.entry(r).or_default() += 1;
    }
    let oversized: BTreeSet<String> = match project.identity.max_identities {
        Some(max) => sizes
            .iter()
            .filter(|(_, s)| **s > max)
            .map(|(r, _)| pid_of_root[r].clone())
            .collect(),
        None => BTreeSet::new(),
    };
    let mut health = GraphHealth {
        identities: n as u64,
        links: st.links.len() as u64,
        oversized: oversized.len() as u64,
        ..Default::default()
    };
    let mut hist = [0u64; 9];
    for (r, s) in &sizes {
        hist[size_bucket(*s)] += 1;
        *health
            .profiles
            .entry(graph.class[*r as usize].as_str().to_string())
            .or_default() += 1;
    }
    health.size_histogram = BUCKETS
        .iter()
        .zip(hist)
        .map(|(b, c)| (b.to_string(), c))
        .collect();
    let mut big: Vec<(u64, &str, u32)> = sizes
        .iter()
        .map(|(r, s)| (*s, pid_of_root[r].as_str(), *r))
        .collect();
    big.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    big.truncate(10);
    for (s, p, r) in &big {
        let mut by_ns = BTreeMap::new();
        for i in 0..n {
            if st.roots[i] == *r {
                *by_ns
                    .entry(ns_names[graph.ns[i] as usize].to_string())
                    .or_default() += 1;
            }
        }
        health.largest.push(LargeProfile {
            profile_id: p.to_string(),
            class: graph.class[*r as usize].as_str().into(),
            identities: *s,
            by_namespace: by_ns,
            oversized: oversized.contains(*p),
        });
    }
    for l in &st.links {
        match l.status {
            LinkStatus::Used => health.links_used += 1,
            LinkStatus::Quarantined => health.links_dropped_quarantine += 1,
            LinkStatus::CutUnique(_) | LinkStatus::CutNeverLink => health.links_cut += 1,
        }
    }
    health.quarantined = st.quarantine.iter().filter(|q| q.is_some()).count() as u64;

    // Identity map, in rank order.
    let ds_lists = {
        let mut b = ListBuilder::new(StringBuilder::new());
        for &i in &order {
            for d in graph.datasets_of(i) {
                b.values().append_value(dataset_names[d as usize]);
            }
            b.append(true);
        }
        Arc::new(b.finish()) as ArrayRef
    };
    let ts_field = |name: &str| Field::new(name, timestamp_type(), false);
    let identity_map = batch(
        vec![
            Field::new("class", DataType::Utf8, false),
            Field::new("namespace", DataType::Utf8, false),
            Field::new("value", DataType::Utf8, false),
            Field::new("profile_id", DataType::Utf8, false),
            ts_field("first_seen"),
            ts_field("last_seen"),
            Field::new("datasets", ds_lists.data_type().clone(), false),
        ],
        vec![
            Arc::new(StringArray::from_iter_values(
                order.iter().map(|&i| graph.class[i as usize].as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                order
                    .iter()
                    .map(|&i| ns_names[graph.ns[i as usize] as usize]),
            )),
            Arc::new(StringArray::from_iter_values(
                order.iter().map(|&i| graph.value(i)),
            )),
            Arc::new(StringArray::from_iter_values(order.iter().map(|&i| pid(i)))),
            ts_array(order.iter().map(|&i| graph.first_seen[i as usize])),
            ts_array(order.iter().map(|&i| graph.last_seen[i as usize])),
            ds_lists,
        ],
    )?;

    // Links with their status.
    let status = |l: &graph::Link| match l.status {
        LinkStatus::Used => ("used", None),
        LinkStatus::Quarantined => (
            "dropped_quarantined",
            Some("an endpoint is quarantined".to_string()),
        ),
        LinkStatus::CutUnique(ns) => (
            "cut_unique",
            Some(format!(
                "would put two `{}` values in one profile",
                ns_names[ns as usize]
            )),
        ),
        LinkStatus::CutNeverLink => (
            "cut_never_link",
            Some("would join the two sides of a never-link rule".to_string()),
        ),
    };
    let ls = &st.links;
    let links = batch(
        vec![
            Field::new("class", DataType::Utf8, false),
            Field::new("anchor_namespace", DataType::Utf8, false),
            Field::new("anchor_value", DataType::Utf8, false),
            Field::new("other_namespace", DataType::Utf8, false),
            Field::new("other_value", DataType::Utf8, false),
            Field::new("linked_at", timestamp_type(), false),
            Field::new("dataset", DataType::Utf8, false),
            Field::new("status", DataType::Utf8, false),
            Field::new("reason", DataType::Utf8, true),
        ],
        vec![
            Arc::new(StringArray::from_iter_values(
                ls.iter().map(|l| graph.class[l.anchor as usize].as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                ls.iter()
                    .map(|l| ns_names[graph.ns[l.anchor as usize] as usize]),
            )),
            Arc::new(StringArray::from_iter_values(
                ls.iter().map(|l| graph.value(l.anchor)),
            )),
            Arc::new(StringArray::from_iter_values(
                ls.iter()
                    .map(|l| ns_names[graph.ns[l.other as usize] as usize]),
            )),
            Arc::new(StringArray::from_iter_values(
                ls.iter().map(|l| graph.value(l.other)),
            )),
            ts_array(ls.iter().map(|l| l.ts)),
            Arc::new(StringArray::from_iter_values(
                ls.iter().map(|l| dataset_names[l.dataset as usize]),
            )),
            Arc::new(StringArray::from_iter_values(
                ls.iter().map(|l| status(l).0),
            )),
            Arc::new(StringArray::from(
                ls.iter().map(|l| status(l).1).collect::<Vec<_>>(),
            )),
        ],
    )?;

    // Quarantined identities.
    let q: Vec<u32> = order
        .iter()
        .copied()
        .filter(|&i| st.quarantine[i as usize].is_some())
        .collect();
    let reason = |i: u32| match st.quarantine[i as usize] {
        Some(Quarantine::MaxLinks) => format!(
            "linked to {} distinct identities, more than max_links = {}",
            st.degree[i as usize],
            rules[graph.ns[i as usize] as usize]
                .max_links
                .unwrap_or_default()
        ),
        _ => "named by a never-link rule".to_string(),
    };
    let quarantined = batch(
        vec![
            Field::new("class", DataType::Utf8, false),
            Field::new("namespace", DataType::Utf8, false),
            Field::new("value", DataType::Utf8, false),
            Field::new("profile_id", DataType::Utf8, false),
            Field::new("degree", DataType::UInt64, false),
            Field::new("reason", DataType::Utf8, false),
        ],
        vec![
            Arc::new(StringArray::from_iter_values(
                q.iter().map(|&i| graph.class[i as usize].as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                q.iter().map(|&i| ns_names[graph.ns[i as usize] as usize]),
            )),
            Arc::new(StringArray::from_iter_values(
                q.iter().map(|&i| graph.value(i)),
            )),
            Arc::new(StringArray::from_iter_values(q.iter().map(|&i| pid(i)))),
            Arc::new(datafusion::arrow::array::UInt64Array::from_iter_values(
                q.iter().map(|&i| u64::from(st.degree[i as usize])),
            )),
            Arc::new(StringArray::from_iter_values(q.iter().map(|&i| reason(i)))),
        ],
    )?;
    let mut quarantined_keys: BTreeMap<Class, BTreeSet<String>> = BTreeMap::new();
    for &i in &q {
        quarantined_keys
            .entry(graph.class[i as usize])
            .or_default()
            .insert(format!(
                "{}:{}",
                ns_names[graph.ns[i as usize] as usize],
                graph.value(i)
            ));
    }

    // Per class: profile skeletons and anchor keys.
    let mut by_ns_name: Vec<usize> = (0..ns_names.len()).collect();
    by_ns_name.sort_by_key(|&i| ns_names[i]);
    let mut profiles = BTreeMap::new();
    let mut keys = BTreeMap::new();
    for class in project.classes() {
        let mut members: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
        for &i in &order {
            if graph.class[i as usize] == class {
                members.entry(pid(i)).or_default().push(i);
            }
        }
        let mut fields = vec![Field::new("profile_id", DataType::Utf8, false)];
        let mut pid_b = StringBuilder::new();
        let mut pref: Vec<StringBuilder> = ns_names.iter().map(|_| StringBuilder::new()).collect();
        let mut all: Vec<ListBuilder<StringBuilder>> = ns_names
            .iter()
            .map(|_| ListBuilder::new(StringBuilder::new()))
            .collect();
        for (p, idents) in &members {
            pid_b.append_value(p);
            for &k in &by_ns_name {
                // Members are in rank order, so values of one namespace come sorted.
                let vals: Vec<u32> = idents
                    .iter()
                    .copied()
                    .filter(|&i| graph.ns[i as usize] as usize == k)
                    .collect();
                let best = vals.iter().copied().max_by(|&a, &b| {
                    graph.last_seen[a as usize]
                        .cmp(&graph.last_seen[b as usize])
                        .then_with(|| graph.value(b).cmp(graph.value(a)))
                });
                pref[k].append_option(best.map(|b| graph.value(b)));
                for v in vals {
                    all[k].values().append_value(graph.value(v));
                }
                all[k].append(true);
            }
        }
        let mut arrays: Vec<ArrayRef> = vec![Arc::new(pid_b.finish())];
        for &k in &by_ns_name {
            fields.push(Field::new(ns_names[k], DataType::Utf8, true));
            arrays.push(Arc::new(pref[k].finish()));
            let list: ArrayRef = Arc::new(all[k].finish());
            fields.push(Field::new(
                format!("{}_all", ns_names[k]),
                list.data_type().clone(),
                true,
            ));
            arrays.push(list);
        }
        profiles.insert(class, batch(fields, arrays)?);

        let mut kb = StringBuilder::new();
        let mut pb = StringBuilder::new();
        for &i in &order {
            if graph.class[i as usize] == class {
                kb.append_value(format!(
                    "{}:{}",
                    ns_names[graph.ns[i as usize] as usize],
                    graph.value(i)
                ));
                pb.append_value(pid(i));
            }
        }
        keys.insert(
            class,
            batch(
                vec![
                    Field::new("key", DataType::Utf8, false),
                    Field::new("profile_id", DataType::Utf8, false),
                ],
                vec![Arc::new(kb.finish()), Arc::new(pb.finish())],
            )?,
        );
    }
    Ok(Stitched {
        identity_map,
        profiles,
        keys,
        quarantined_keys,
        links,
        quarantined,
        oversized,
        health,
        rejections,
        rows_read,
    })
}
