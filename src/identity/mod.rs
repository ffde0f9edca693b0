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
//! Profile ids: 32 hex characters of SHA-256 over the class and the component's
//! earliest-seen identity (ties: namespace priority, namespace name, value). The
//! same input gives byte-identical ids.

pub mod anchor;
pub mod graph;
pub mod normalise;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, ListBuilder, RecordBatch, StringArray, StringBuilder,
    TimestampMicrosecondArray, TimestampMicrosecondBuilder,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use sha2::{Digest, Sha256};

use crate::config::{Class, Project};
use crate::engine::udf::timestamp_type;
use crate::error::{Error, Result};
use crate::ingest::Ingested;
use graph::IdentityGraph;
use normalise::Normaliser;

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

/// Output of the identity stage.
#[derive(Debug, Clone)]
pub struct Stitched {
    /// `class, namespace, value, profile_id, first_seen, last_seen`, sorted by class, namespace, value.
    pub identity_map: RecordBatch,
    /// Per class: `profile_id`, then per namespace (by name) `<ns>` (preferred value) and `<ns>_all` (sorted list).
    pub profiles: BTreeMap<Class, RecordBatch>,
    /// Per class: `key` (`namespace:value`), `profile_id`.
    pub keys: BTreeMap<Class, RecordBatch>,
    pub rejections: Rejections,
    pub rows_read: BTreeMap<String, u64>,
    pub identities: u64,
    pub links: u64,
}

/// Stitch identities across every dataset.
///
/// # Errors
/// [`Error::Engine`] when reading a dataset fails.
pub async fn stitch(
    ctx: &SessionContext,
    project: &Project,
    datasets: &[Ingested],
    mut progress: impl FnMut(u64),
) -> Result<Stitched> {
    let mut graph = IdentityGraph::default();
    let mut rejections = Rejections::default();
    let mut rows_read = BTreeMap::new();
    let mut total_rows = 0u64;
    for d in datasets {
        let ds = &d.dataset;
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
        let mut select: Vec<String> = cols.iter().map(|(_, c, _)| quote(c)).collect();
        select.push(quote(&ds.timestamp));
        let sql = format!("SELECT {} FROM {}", select.join(", "), quote(&d.table));
        let df = ctx.sql(&sql).await.map_err(Error::engine("identity"))?;
        let mut stream = df
            .execute_stream()
            .await
            .map_err(Error::engine("identity"))?;
        let mut rows = 0u64;
        let mut found: Vec<(u16, String)> = Vec::new();
        while let Some(batch) = stream.next().await {
            let batch = batch
                .map_err(|e| Error::input(&ds.name, None, None, format!("reading failed: {e}")))?;
            let ids: Vec<StringArray> = (0..cols.len())
                .map(|i| to_strings(batch.column(i)))
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
            for row in 0..batch.num_rows() {
                if ts.is_null(row) {
                    rejections.add(&ds.name, &ds.timestamp, "null_timestamp", || row_json(row));
                    continue;
                }
                let t = ts.value(row);
                found.clear();
                for ((ns, column, norm), arr) in cols.iter().zip(&ids) {
                    if arr.is_null(row) {
                        continue;
                    }
                    match norm.apply(arr.value(row)) {
                        Ok(v) => found.push((*ns as u16, v)),
                        Err(r) => rejections.add(&ds.name, column, r.as_str(), || row_json(row)),
                    }
                }
                if found.is_empty() {
                    rejections.add(&ds.name, "*", "no_valid_identity", || row_json(row));
                    continue;
                }
                found.sort();
                found.dedup();
                let anchor = graph.intern(ds.class, found[0].0, &found[0].1, t);
                for (ns, v) in &found[1..] {
                    let id = graph.intern(ds.class, *ns, v, t);
                    graph.union(anchor, id);
                }
            }
            rows += batch.num_rows() as u64;
            total_rows += batch.num_rows() as u64;
            progress(total_rows);
        }
        rows_read.insert(ds.name.clone(), rows);
    }
    build_outputs(project, graph, rejections, rows_read)
}

/// Quote an identifier for SQL.
pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
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

/// The profile id of a component represented by `(class, namespace, value)`.
pub fn profile_id(class: Class, namespace: &str, value: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"audience-profile-v1\x1f");
    h.update(class.as_str().as_bytes());
    h.update([0x1f]);
    h.update(namespace.as_bytes());
    h.update([0x1f]);
    h.update(value.as_bytes());
    hex::encode(&h.finalize()[..16])
}

fn build_outputs(
    project: &Project,
    mut graph: IdentityGraph,
    rejections: Rejections,
    rows_read: BTreeMap<String, u64>,
) -> Result<Stitched> {
    let roots = graph.components();
    let ns_names: Vec<&str> = project.namespaces.iter().map(|n| n.name.as_str()).collect();
    let ids = &graph.identities;
    // Representative per root: earliest first seen, then namespace order, then value.
    let mut rep: HashMap<u32, u32> = HashMap::new();
    for (i, id) in ids.iter().enumerate() {
        let r = roots[i];
        let better = match rep.get(&r) {
            None => true,
            Some(&j) => {
                let o = &ids[j as usize];
                (id.first_seen, id.ns, &id.value) < (o.first_seen, o.ns, &o.value)
            }
        };
        if better {
            rep.insert(r, i as u32);
        }
    }
    let pid_of_root: HashMap<u32, String> = rep
        .iter()
        .map(|(r, i)| {
            let id = &ids[*i as usize];
            (
                *r,
                profile_id(id.class, ns_names[id.ns as usize], &id.value),
            )
        })
        .collect();

    // Identity map, sorted by class, namespace name, value.
    let mut order: Vec<u32> = (0..ids.len() as u32).collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (&ids[a as usize], &ids[b as usize]);
        (x.class, ns_names[x.ns as usize], &x.value).cmp(&(
            y.class,
            ns_names[y.ns as usize],
            &y.value,
        ))
    });
    let ts_field = |name: &str| Field::new(name, timestamp_type(), false);
    let map_schema = Arc::new(Schema::new(vec![
        Field::new("class", DataType::Utf8, false),
        Field::new("namespace", DataType::Utf8, false),
        Field::new("value", DataType::Utf8, false),
        Field::new("profile_id", DataType::Utf8, false),
        ts_field("first_seen"),
        ts_field("last_seen"),
    ]));
    let pid = |i: u32| pid_of_root[&roots[i as usize]].as_str();
    let ts_col = |f: &dyn Fn(u32) -> i64| -> ArrayRef {
        let mut b = TimestampMicrosecondBuilder::with_capacity(order.len()).with_timezone("UTC");
        for &i in &order {
            b.append_value(f(i));
        }
        Arc::new(b.finish())
    };
    let identity_map = RecordBatch::try_new(
        map_schema,
        vec![
            Arc::new(StringArray::from_iter_values(
                order.iter().map(|&i| ids[i as usize].class.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                order.iter().map(|&i| ns_names[ids[i as usize].ns as usize]),
            )),
            Arc::new(StringArray::from_iter_values(
                order.iter().map(|&i| ids[i as usize].value.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(order.iter().map(|&i| pid(i)))),
            ts_col(&|i| ids[i as usize].first_seen),
            ts_col(&|i| ids[i as usize].last_seen),
        ],
    )
    .map_err(|e| Error::Internal(e.to_string()))?;

    // Per class: profile skeletons and anchor keys.
    let mut by_ns_name: Vec<usize> = (0..ns_names.len()).collect();
    by_ns_name.sort_by_key(|&i| ns_names[i]);
    let mut profiles = BTreeMap::new();
    let mut keys = BTreeMap::new();
    for class in project.classes() {
        // profile_id -> per namespace: Vec<identity index>
        let mut members: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
        for (i, id) in ids.iter().enumerate() {
            if id.class == class {
                members.entry(pid(i as u32)).or_default().push(i as u32);
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
            for &n in &by_ns_name {
                let mut vals: Vec<&crate::identity::graph::Identity> = idents
                    .iter()
                    .map(|&i| &ids[i as usize])
                    .filter(|x| x.ns as usize == n)
                    .collect();
                let best = vals.iter().max_by(|a, b| {
                    a.last_seen
                        .cmp(&b.last_seen)
                        .then_with(|| b.value.cmp(&a.value))
                });
                pref[n].append_option(best.map(|b| b.value.as_str()));
                vals.sort_by(|a, b| a.value.cmp(&b.value));
                for v in vals {
                    all[n].values().append_value(&v.value);
                }
                all[n].append(true);
            }
        }
        let mut arrays: Vec<ArrayRef> = vec![Arc::new(pid_b.finish())];
        for &n in &by_ns_name {
            fields.push(Field::new(ns_names[n], DataType::Utf8, true));
            arrays.push(Arc::new(pref[n].finish()));
            let list: ArrayRef = Arc::new(all[n].finish());
            fields.push(Field::new(
                format!("{}_all", ns_names[n]),
                list.data_type().clone(),
                true,
            ));
            arrays.push(list);
        }
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
            .map_err(|e| Error::Internal(e.to_string()))?;
        profiles.insert(class, batch);

        let mut kb = StringBuilder::new();
        let mut pb = StringBuilder::new();
        for (i, id) in ids.iter().enumerate() {
            if id.class == class {
                kb.append_value(format!("{}:{}", ns_names[id.ns as usize], id.value));
                pb.append_value(pid(i as u32));
            }
        }
        let ks = Arc::new(Schema::new(vec![
            Field::new("key", DataType::Utf8, false),
            Field::new("profile_id", DataType::Utf8, false),
        ]));
        keys.insert(
            class,
            RecordBatch::try_new(ks, vec![Arc::new(kb.finish()), Arc::new(pb.finish())])
                .map_err(|e| Error::Internal(e.to_string()))?,
        );
    }
    Ok(Stitched {
        identity_map,
        profiles,
        keys,
        rejections,
        rows_read,
        identities: graph.len() as u64,
        links: graph.links,
    })
}
