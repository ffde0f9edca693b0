//! The identity stage's outputs: profile ids, graph health, the profile
//! skeletons, and the identity map, links, cut links and quarantined identities
//! streamed to Parquet in the run folder in chunks (memory stays near the graph's).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, ListArray, ListBuilder, RecordBatch, StringArray, StringBuilder,
    TimestampMicrosecondBuilder, UInt64Array,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use object_store::buffered::BufWriter;
use parquet::arrow::AsyncArrowWriter;
use parquet::arrow::async_writer::AsyncFileWriter;
use tokio::io::AsyncWriteExt;

use super::graph::{self, AHEAD, IdentityGraph, Link, LinkStatus, Quarantine, prefetch};
use super::lookup::IdentityLookup;
use super::{GraphHealth, LargeProfile, Rejections, Stitched, ids, previous_ids, store};
use crate::config::{Class, Project};
use crate::engine::storage::Location;
use crate::engine::udf::timestamp_type;
use crate::error::{Error, Result};

/// Rows per Parquet row group: what a writer holds encoded before it hands
/// the group to the store.
const ROW_GROUP: usize = 1 << 18;
/// Rows per batch built and encoded: a quarter of a row group, so that the
/// Arrow columns of two outputs written at once stay small beside the graph.
const CHUNK: usize = 1 << 16;
/// Bytes per part of a multipart upload (object stores want at least 5 MiB)
/// and parts in flight per file: each part is held until it is stored.
const PART: usize = 10 << 20;
const PARTS_IN_FLIGHT: usize = 2;

const BUCKETS: [&str; 9] = [
    "1", "2", "3", "4", "5-9", "10-49", "50-99", "100-999", "1000+",
];

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

fn ts_array(values: impl Iterator<Item = i64>) -> ArrayRef {
    let mut b =
        TimestampMicrosecondBuilder::with_capacity(values.size_hint().0).with_timezone("UTC");
    for v in values {
        b.append_value(v);
    }
    Arc::new(b.finish())
}

/// A string column sized before it is filled: Arrow's buffers are 64-byte
/// aligned, which the system allocator cannot grow in place, so each
/// doubling of a builder would copy the whole column.
/// Values in no order (a link's other end) are each asked for ahead.
fn strings<'a>(values: impl Iterator<Item = &'a str>) -> ArrayRef {
    let values: Vec<&str> = values.collect();
    let bytes = values.iter().map(|v| v.len()).sum();
    let mut b = StringBuilder::with_capacity(values.len(), bytes);
    for (j, v) in values.iter().enumerate() {
        if let Some(next) = values.get(j + AHEAD) {
            prefetch(next.as_ptr());
        }
        b.append_value(v);
    }
    Arc::new(b.finish())
}

/// The class, namespace and value columns of identities `ids`, each
/// identity located once ([`IdentityGraph::identities`]).
fn identity_columns(graph: &IdentityGraph, ns_names: &[&str], ids: &[u32]) -> [ArrayRef; 3] {
    let found = graph.identities(ids);
    let [ns, value] = ns_value_columns(ns_names, &found);
    [strings(found.iter().map(|f| f.0.as_str())), ns, value]
}

/// The namespace and value columns of identities already located.
fn ns_value_columns(ns_names: &[&str], found: &[(Class, u16, &str)]) -> [ArrayRef; 2] {
    [
        strings(found.iter().map(|f| ns_names[f.1 as usize])),
        strings(found.iter().map(|f| f.2)),
    ]
}

/// Each finished row group handed to the store as it is, not copied into the
/// upload's buffer (as writing through `AsyncWrite` does), and no more than
/// [`PARTS_IN_FLIGHT`] parts waiting to be stored.
struct Upload(BufWriter);

impl AsyncFileWriter for Upload {
    fn write(
        &mut self,
        bytes: bytes::Bytes,
    ) -> futures::future::BoxFuture<'_, parquet::errors::Result<()>> {
        Box::pin(async move {
            self.0
                .put(bytes)
                .await
                .map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))
        })
    }

    fn complete(&mut self) -> futures::future::BoxFuture<'_, parquet::errors::Result<()>> {
        Box::pin(async move {
            AsyncWriteExt::shutdown(&mut self.0)
                .await
                .map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))
        })
    }
}

/// How a [`Sink`] writes its columns, by name (see [`Sink::open`]).
#[derive(Default)]
struct Columns<'a> {
    /// (Nearly) one value per row: no dictionary.
    unique: &'a [&'a str],
    /// What the rows are in order of: the only min/max statistics.
    sorted: &'a [&'a str],
    /// Delta-encoded (strings by whether they are sorted).
    delta: &'a [&'a str],
}

/// A Parquet file written batch by batch through the object store.
struct Sink {
    writer: AsyncArrowWriter<Upload>,
    loc: Location,
    rows: usize,
    opened: std::time::Instant,
}

impl Sink {
    /// `unique` columns hold (nearly) one value per row (values, ids,
    /// times): written without a dictionary, which would only be built to be
    /// given up. Pages are compressed with zstd at level 1: at 1M people the
    /// identity map and links take 2.5x less room for about a tenth more
    /// writing time. Only the `sorted` columns (what the rows are in order
    /// of) carry min/max statistics: they let a reader skip row groups, where
    /// another column's would span nearly every value in every group, and
    /// computing them compares each value twice.
    ///
    /// `delta` columns are written with a delta encoding: strings in order
    /// as `DELTA_BYTE_ARRAY` (each value without the prefix it shares with
    /// the one before), other strings as `DELTA_LENGTH_BYTE_ARRAY` (all
    /// lengths first, then the bytes: for profile ids, which all have the
    /// same length, zstd then sees only their characters), times as
    /// `DELTA_BINARY_PACKED`, not compressed: zstd took a fifth of the
    /// identity map's writing time and gained only 1.15x on the plain bytes
    /// of its times, which are in no order; their bit-packed differences
    /// take less room than that, and zstd finds nothing more in them.
    fn open(loc: Location, schema: SchemaRef, columns: Columns) -> Result<Sink> {
        use parquet::basic::{Compression, Encoding};
        use parquet::file::properties::EnabledStatistics;
        use parquet::schema::types::ColumnPath;
        let Columns {
            unique,
            sorted,
            delta,
        } = columns;
        let store = loc.store()?;
        let mut b = parquet::file::properties::WriterProperties::builder()
            .set_compression(Compression::ZSTD(Default::default()))
            .set_max_row_group_row_count(Some(ROW_GROUP));
        for c in unique {
            b = b.set_column_dictionary_enabled(ColumnPath::from(*c), false);
        }
        for f in schema
            .fields()
            .iter()
            .filter(|f| delta.contains(&f.name().as_str()))
        {
            let path = ColumnPath::from(f.name().as_str());
            b = match f.data_type() {
                DataType::Utf8 if sorted.contains(&f.name().as_str()) => {
                    b.set_column_encoding(path, Encoding::DELTA_BYTE_ARRAY)
                }
                DataType::Utf8 => b.set_column_encoding(path, Encoding::DELTA_LENGTH_BYTE_ARRAY),
                _ => b
                    .set_column_encoding(path.clone(), Encoding::DELTA_BINARY_PACKED)
                    .set_column_compression(path, Compression::UNCOMPRESSED),
            };
        }
        for f in schema.fields() {
            if sorted.contains(&f.name().as_str()) {
                continue;
            }
            let path = match f.data_type() {
                DataType::List(_) => vec![f.name().clone(), "list".into(), "item".into()],
                _ => vec![f.name().clone()],
            };
            b = b.set_column_statistics_enabled(ColumnPath::new(path), EnabledStatistics::None);
        }
        let props = b.build();
        let upload =
            BufWriter::with_capacity(store, loc.path(), PART).with_max_concurrency(PARTS_IN_FLIGHT);
        let writer = AsyncArrowWriter::try_new(Upload(upload), schema, Some(props))
            .map_err(|e| Error::Internal(format!("{}: {e}", loc.display())))?;
        Ok(Sink {
            writer,
            loc,
            rows: 0,
            opened: std::time::Instant::now(),
        })
    }
    async fn write(&mut self, schema: &SchemaRef, arrays: Vec<ArrayRef>) -> Result<()> {
        let batch = RecordBatch::try_new(schema.clone(), arrays)
            .map_err(|e| Error::Internal(e.to_string()))?;
        self.rows += batch.num_rows();
        self.writer
            .write(&batch)
            .await
            .map_err(|e| Error::Internal(format!("writing {}: {e}", self.loc.display())))
    }
    /// Finish the file; logs its rows and how long it took (debug).
    async fn close(self) -> Result<()> {
        self.writer
            .close()
            .await
            .map_err(|e| Error::Internal(format!("writing {}: {e}", self.loc.display())))?;
        tracing::debug!(
            rows = self.rows,
            secs = self.opened.elapsed().as_secs_f64(),
            file = %self.loc.display(),
            "identity: output written"
        );
        Ok(())
    }
}

fn identity_map_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("class", DataType::Utf8, false),
        Field::new("namespace", DataType::Utf8, false),
        Field::new("value", DataType::Utf8, false),
        Field::new("profile_id", DataType::Utf8, false),
        Field::new("first_seen", timestamp_type(), false),
        Field::new("last_seen", timestamp_type(), false),
        Field::new(
            "datasets",
            DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true))),
            false,
        ),
    ]))
}

fn links_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("class", DataType::Utf8, false),
        Field::new("anchor_namespace", DataType::Utf8, false),
        Field::new("anchor_value", DataType::Utf8, false),
        Field::new("other_namespace", DataType::Utf8, false),
        Field::new("other_value", DataType::Utf8, false),
        Field::new("linked_at", timestamp_type(), false),
        Field::new("dataset", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, true),
    ]))
}

fn status_of(l: &Link, ns_names: &[&str]) -> (&'static str, Option<String>) {
    match l.status {
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
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The identity map, in rank order, chunk by chunk.
async fn write_identity_map(
    graph: &IdentityGraph,
    (profile_of, profile_ids): (&[u32], &ids::ProfileIds),
    ns_names: &[&str],
    dataset_names: &[&str],
    loc: Location,
) -> Result<()> {
    let schema = identity_map_schema();
    let mut sink = Sink::open(
        loc,
        schema.clone(),
        Columns {
            unique: &["value", "profile_id", "first_seen", "last_seen"],
            sorted: &["class", "namespace", "value"],
            delta: &["value", "profile_id", "first_seen", "last_seen"],
        },
    )?;
    let n = graph.len() as u32;
    for start in (0..n).step_by(CHUNK) {
        let chunk = start..n.min(start + CHUNK as u32);
        let rows = chunk.len();
        let mut ds =
            ListBuilder::with_capacity(StringBuilder::with_capacity(rows, rows * 16), rows);
        for i in chunk.clone() {
            for d in graph.datasets_of(i) {
                ds.values().append_value(dataset_names[d as usize]);
            }
            ds.append(true);
        }
        sink.write(
            &schema,
            [
                identity_columns(graph, ns_names, &chunk.clone().collect::<Vec<_>>()).to_vec(),
                vec![
                    strings(
                        chunk
                            .clone()
                            .map(|i| profile_ids.get(profile_of[i as usize])),
                    ),
                    ts_array(chunk.clone().map(|i| graph.first_seen(i))),
                    ts_array(chunk.map(|i| graph.last_seen(i))),
                    Arc::new(ds.finish()),
                ],
            ]
            .concat(),
        )
        .await?;
    }
    sink.close().await
}

async fn write_links(
    g: &IdentityGraph,
    links: &[Link],
    ns_names: &[&str],
    datasets: &[&str],
    loc: Location,
    keep: impl Fn(&Link) -> bool,
) -> Result<()> {
    let schema = links_schema();
    // A link's time stays zstd-compressed: the links of one record sit
    // together (sorted by anchor) and share it.
    let mut sink = Sink::open(
        loc,
        schema.clone(),
        Columns {
            unique: &["anchor_value", "other_value", "linked_at"],
            sorted: &["class", "anchor_namespace", "anchor_value"],
            delta: &["anchor_value"],
        },
    )?;
    for chunk in links.chunks(CHUNK) {
        let chunk: Vec<&Link> = chunk.iter().filter(|l| keep(l)).collect();
        if chunk.is_empty() {
            continue;
        }
        let st: Vec<(&str, Option<String>)> =
            chunk.iter().map(|l| status_of(l, ns_names)).collect();
        let ends = |end: fn(&Link) -> u32| chunk.iter().map(|&l| end(l)).collect::<Vec<u32>>();
        let [class, anchor_ns, anchor_value] = identity_columns(g, ns_names, &ends(|l| l.anchor));
        // A link's ends share a class: only the anchor's is written.
        let others = g.identities(&ends(|l| l.other));
        let [other_ns, other_value] = ns_value_columns(ns_names, &others);
        sink.write(
            &schema,
            vec![
                class,
                anchor_ns,
                anchor_value,
                other_ns,
                other_value,
                ts_array(chunk.iter().map(|l| l.ts)),
                strings(chunk.iter().map(|l| datasets[l.dataset as usize])),
                strings(st.iter().map(|s| s.0)),
                Arc::new(StringArray::from(
                    st.iter().map(|s| s.1.clone()).collect::<Vec<_>>(),
                )),
            ],
        )
        .await?;
    }
    sink.close().await
}

/// Stitch the graph, assign ids, write the outputs under `out`, and return what later stages need.
#[allow(clippy::too_many_arguments)]
pub(super) async fn finish(
    ctx: &datafusion::prelude::SessionContext,
    project: &Project,
    mut graph: IdentityGraph,
    phones: Vec<super::normalise::PhoneCache>,
    dataset_names: &[&str],
    previous: Option<&Location>,
    rejections: Rejections,
    rows_read: BTreeMap<String, u64>,
    out: &Location,
) -> Result<Stitched> {
    let ns_names: Vec<&str> = project.namespaces.iter().map(|n| n.name.as_str()).collect();
    let n = graph.len();
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
                if graph.class(x) == graph.class(y) {
                    never_pairs.push((x, y));
                }
            }
        }
    }
    let allowed: Vec<bool> = (0..n as u32)
        .map(|id| {
            project.namespaces[graph.ns(id) as usize]
                .allow
                .contains(graph.value(id))
        })
        .collect();
    let mut st = graph.mark(&rules, &never_values, &|id| allowed[id as usize]);
    drop(allowed);
    // On a cluster, plain components are computed there (iterative SQL rounds);
    // the constrained stitch needs every link in time order and runs here.
    let mut rounds = None;
    let components = match crate::engine::cluster(ctx) {
        Some(c) if !IdentityGraph::is_constrained(&rules, &never_pairs) => {
            let used = st
                .links
                .iter()
                .filter(|l| l.status == graph::LinkStatus::Used)
                .map(|l| (l.anchor, l.other));
            let cc =
                super::components::components(ctx, n, used, &c.scratch.join("components")).await?;
            rounds = Some(cc.rounds);
            Some(cc.roots)
        }
        _ => None,
    };
    graph.join(&mut st, &rules, &never_pairs, components);
    tracing::debug!("identity: stitched");
    let prev = match previous {
        Some(loc) => Some(previous_ids(ctx, &graph, project, loc).await?),
        None => None,
    };
    let ids::Profiles {
        of: profile_of,
        ids: profile_ids,
    } = ids::assign(&graph, &ns_names, &st.roots, prev.as_ref());
    drop(prev);
    tracing::debug!(
        profiles = profile_ids.len(),
        "identity: profile ids assigned"
    );
    let profile_class: Vec<Class> = {
        let mut c = vec![Class::Customer; profile_ids.len()];
        for (i, &p) in profile_of.iter().enumerate() {
            c[p as usize] = graph.class(i as u32);
        }
        c
    };
    let np = profile_ids.len();
    let mut sizes = vec![0u64; np];
    for &p in &profile_of {
        sizes[p as usize] += 1;
    }
    let oversized: BTreeSet<String> = match project.identity.max_identities {
        Some(max) => (0..np)
            .filter(|&p| sizes[p] > max)
            .map(|p| profile_ids.get(p as u32).to_string())
            .collect(),
        None => BTreeSet::new(),
    };

    // Graph health.
    let mut health = GraphHealth {
        identities: n as u64,
        links: st.links.len() as u64,
        oversized: oversized.len() as u64,
        component_rounds: rounds,
        ..Default::default()
    };
    let mut hist = [0u64; 9];
    let mut per_class: BTreeMap<Class, u64> = BTreeMap::new();
    for p in 0..np {
        hist[size_bucket(sizes[p])] += 1;
        *per_class.entry(profile_class[p]).or_default() += 1;
    }
    health.profiles = per_class
        .into_iter()
        .map(|(c, k)| (c.as_str().to_string(), k))
        .collect();
    health.size_histogram = BUCKETS
        .iter()
        .zip(hist)
        .map(|(b, c)| (b.to_string(), c))
        .collect();
    // The ten largest profiles (ties: smallest id).
    let mut big: Vec<u32> = (0..np as u32).collect();
    let larger = |a: &u32, b: &u32| {
        sizes[*b as usize]
            .cmp(&sizes[*a as usize])
            .then_with(|| profile_ids.get(*a).cmp(profile_ids.get(*b)))
    };
    if big.len() > 10 {
        big.select_nth_unstable_by(10, larger);
        big.truncate(10);
    }
    big.sort_unstable_by(larger);
    let mut by_ns: HashMap<u32, BTreeMap<String, u64>> =
        big.iter().map(|&p| (p, BTreeMap::new())).collect();
    let mut in_big = vec![false; np];
    for &p in &big {
        in_big[p as usize] = true;
    }
    for (i, p) in profile_of.iter().enumerate() {
        if in_big[*p as usize]
            && let Some(m) = by_ns.get_mut(p)
        {
            *m.entry(ns_names[graph.ns(i as u32) as usize].to_string())
                .or_default() += 1;
        }
    }
    for &p in &big {
        let id = profile_ids.get(p);
        health.largest.push(LargeProfile {
            profile_id: id.to_string(),
            class: profile_class[p as usize].as_str().into(),
            identities: sizes[p as usize],
            by_namespace: by_ns.remove(&p).unwrap_or_default(),
            oversized: oversized.contains(id),
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
    drop((sizes, in_big));
    // What stitching and the ids freed goes back to the system before the
    // outputs' buffers are made (glibc keeps it otherwise).
    crate::engine::trim_heap();

    // The identity map and the links are encoded side by side (each on a
    // task of its own), then the small cut-links file here.
    let graph = Arc::new(graph);
    let links = Arc::new(std::mem::take(&mut st.links));
    let names: Arc<(Vec<String>, Vec<String>)> = Arc::new((
        ns_names.iter().map(|n| n.to_string()).collect(),
        dataset_names.iter().map(|n| n.to_string()).collect(),
    ));
    let pids = Arc::new((profile_of, profile_ids));
    let map_task = {
        let (g, n, p, loc) = (
            graph.clone(),
            names.clone(),
            pids.clone(),
            out.join("identity_map.parquet"),
        );
        tokio::spawn(async move {
            write_identity_map(&g, (&p.0, &p.1), &strs(&n.0), &strs(&n.1), loc).await
        })
    };
    let links_task = {
        let (g, l, n, loc) = (
            graph.clone(),
            links.clone(),
            names.clone(),
            out.join("links.parquet"),
        );
        tokio::spawn(
            async move { write_links(&g, &l, &strs(&n.0), &strs(&n.1), loc, |_| true).await },
        )
    };
    write_links(
        &graph,
        &links,
        &ns_names,
        dataset_names,
        out.join("cut_links.parquet"),
        |l| {
            matches!(
                l.status,
                LinkStatus::CutUnique(_) | LinkStatus::CutNeverLink
            )
        },
    )
    .await?;
    for task in [map_task, links_task] {
        task.await
            .map_err(|e| Error::Internal(format!("writing identity outputs: {e}")))??;
    }
    drop(links);
    let (Ok(mut graph), Ok((profile_of, profile_ids))) =
        (Arc::try_unwrap(graph), Arc::try_unwrap(pids))
    else {
        return Err(Error::Internal("identity outputs still in use".into()));
    };
    tracing::debug!("identity: identity map and links written");
    let pid = |i: u32| profile_ids.get(profile_of[i as usize]);

    // Quarantined identities.
    let q: Vec<u32> = (0..n as u32)
        .filter(|&i| st.quarantine[i as usize].is_some())
        .collect();
    let reason = |i: u32| match st.quarantine[i as usize] {
        Some(Quarantine::MaxLinks) => format!(
            "linked to {} distinct identities, more than max_links = {}",
            st.degree.get(&i).copied().unwrap_or_default(),
            rules[graph.ns(i) as usize].max_links.unwrap_or_default()
        ),
        _ => "named by a never-link rule".to_string(),
    };
    let q_schema = Arc::new(Schema::new(vec![
        Field::new("class", DataType::Utf8, false),
        Field::new("namespace", DataType::Utf8, false),
        Field::new("value", DataType::Utf8, false),
        Field::new("profile_id", DataType::Utf8, false),
        Field::new("degree", DataType::UInt64, false),
        Field::new("reason", DataType::Utf8, false),
    ]));
    let mut sink = Sink::open(
        out.join("quarantined.parquet"),
        q_schema.clone(),
        Columns {
            sorted: &["class", "namespace", "value"],
            ..Columns::default()
        },
    )?;
    sink.write(
        &q_schema,
        [
            identity_columns(&graph, &ns_names, &q).to_vec(),
            vec![
                strings(q.iter().map(|&i| pid(i))),
                Arc::new(UInt64Array::from_iter_values(q.iter().map(|&i| {
                    u64::from(st.degree.get(&i).copied().unwrap_or_default())
                }))),
                strings(
                    q.iter()
                        .map(|&i| reason(i))
                        .collect::<Vec<_>>()
                        .iter()
                        .map(String::as_str),
                ),
            ],
        ]
        .concat(),
    )
    .await?;
    sink.close().await?;
    let health_json =
        serde_json::to_vec_pretty(&health).map_err(|e| Error::Internal(e.to_string()))?;
    store::put(&out.join("graph_health.json"), health_json).await?;
    let mut lines = Vec::new();
    for line in rejections.sample_lines() {
        lines.extend_from_slice(line.as_bytes());
        lines.push(b'\n');
    }
    store::put(&out.join("rejected_sample.jsonl"), lines).await?;
    // What the skeletons and lookups do not need is freed before the
    // skeletons are built, the stage's peak at scale.
    let quarantined: Vec<bool> = st.quarantine.iter().map(Option::is_some).collect();
    drop(st);
    graph.free_history();
    // The writers' buffers and the freed history go back to the system: the
    // skeletons, made next, would otherwise add their peak to what the
    // allocator kept from the outputs'.
    crate::engine::trim_heap();

    let profiles = skeletons(
        project,
        &graph,
        &ns_names,
        &profile_of,
        &profile_ids,
        &profile_class,
    )?;
    tracing::debug!("identity: profile skeletons built");
    graph.shrink();
    let lookup = Arc::new(IdentityLookup::new(
        graph,
        profile_of,
        quarantined,
        profile_ids,
        phones,
    ));
    Ok(Stitched {
        lookup,
        profiles,
        oversized,
        health,
        rejections,
        rows_read,
        outputs: out.clone(),
    })
}

/// Per class, one row per profile sorted by id: `profile_id`, then per
/// namespace (by name) the preferred value (last seen most recently; ties:
/// the smallest) and the sorted list of values.
///
/// Ids are ranks, so one class's identities of one namespace are one range
/// of ids, in value order. Each namespace's columns are built from that range
/// read front to back (values copied straight to their place in the list
/// column), not profile by profile (several random reads per identity), with
/// namespaces shared among the cores.
fn skeletons(
    project: &Project,
    graph: &IdentityGraph,
    ns_names: &[&str],
    profile_of: &[u32],
    profile_ids: &ids::ProfileIds,
    profile_class: &[Class],
) -> Result<BTreeMap<Class, Vec<RecordBatch>>> {
    let np = profile_ids.len();
    let mut by_ns_name: Vec<usize> = (0..ns_names.len()).collect();
    by_ns_name.sort_by_key(|&i| ns_names[i]);
    let too_big = |what: &str| {
        Error::Internal(format!(
            "profile skeletons: more than 2 GiB of {what} in one namespace column"
        ))
    };
    let mut out = BTreeMap::new();
    let mut out_pos = vec![u32::MAX; np];
    for class in project.classes() {
        // Sorted by id: the first 16 bytes as an integer key, whole ids
        // (then the index) only where keys are equal.
        let key = |p: u32| {
            let id = profile_ids.get(p).as_bytes();
            let mut k = [0u8; 16];
            k[..id.len().min(16)].copy_from_slice(&id[..id.len().min(16)]);
            u128::from_be_bytes(k)
        };
        let mut profs: Vec<(u128, u32)> = (0..np as u32)
            .filter(|&p| profile_class[p as usize] == class)
            .map(|p| (key(p), p))
            .collect();
        profs.sort_unstable();
        for run in profs.chunk_by_mut(|a, b| a.0 == b.0) {
            run.sort_by(|a, b| {
                profile_ids
                    .get(a.1)
                    .cmp(profile_ids.get(b.1))
                    .then(a.1.cmp(&b.1))
            });
        }
        let profs: Vec<u32> = profs.into_iter().map(|(_, p)| p).collect();
        for (q, &p) in profs.iter().enumerate() {
            out_pos[p as usize] = q as u32;
        }
        let m = profs.len();
        let out_pos = &out_pos;
        // Namespace `k`'s preferred-value and list columns.
        let column = |k: usize| -> Result<(ArrayRef, ArrayRef)> {
            let ids = graph.ns_ids(class, k as u16);
            let profile = |i: u32| out_pos[profile_of[i as usize] as usize] as usize;
            // Every pass below reads each id's profile, its place and the
            // graph's columns at random (ranks of one namespace are spread
            // over every partition): each is asked for ahead, in stages.
            let ahead =
                |i: u32, by: usize| (i as usize + by < ids.end as usize).then(|| i + by as u32);
            let ask_profile = |i: u32| {
                if let Some(k) = ahead(i, AHEAD) {
                    prefetch(
                        out_pos
                            .as_ptr()
                            .wrapping_add(profile_of[k as usize] as usize),
                    );
                }
            };
            // List offsets: identities per profile, in output order.
            let mut offsets = vec![0i32; m + 1];
            for i in ids.clone() {
                ask_profile(i);
                if let Some(k) = ahead(i, AHEAD / 2) {
                    prefetch(offsets.as_ptr().wrapping_add(profile(k) + 1));
                }
                offsets[profile(i) + 1] += 1;
            }
            for q in 0..m {
                offsets[q + 1] += offsets[q];
            }
            // Each identity's place in the list values (rank order within a
            // profile), its value's length there, and each profile's
            // preferred place (strictly later last-seen wins, so on ties the
            // first, i.e. the smallest value).
            let mut fill = offsets.clone();
            let mut slot = vec![0u32; ids.len()];
            let mut ends = vec![0i32; ids.len() + 1];
            let mut best: Vec<(i64, u32)> = vec![(i64::MIN, u32::MAX); m];
            for (j, i) in ids.clone().enumerate() {
                ask_profile(i);
                if let Some(k) = ahead(i, AHEAD) {
                    graph.prefetch_identity(k);
                }
                if let Some(k) = ahead(i, AHEAD / 2) {
                    let q = profile(k);
                    prefetch(fill.as_ptr().wrapping_add(q));
                    prefetch(best.as_ptr().wrapping_add(q));
                }
                let q = profile(i);
                let s = fill[q] as u32;
                fill[q] += 1;
                slot[j] = s;
                ends[s as usize + 1] =
                    i32::try_from(graph.value(i).len()).map_err(|_| too_big("values"))?;
                let seen = graph.last_seen(i);
                if best[q].1 == u32::MAX || seen > best[q].0 {
                    best[q] = (seen, s);
                }
            }
            drop(fill);
            for s in 0..ids.len() {
                ends[s + 1] = ends[s]
                    .checked_add(ends[s + 1])
                    .ok_or_else(|| too_big("values"))?;
            }
            let mut bytes = vec![0u8; ends[ids.len()] as usize];
            for (j, i) in ids.clone().enumerate() {
                if let Some(k) = ahead(i, AHEAD) {
                    graph.prefetch_identity(k);
                    prefetch(ends.as_ptr().wrapping_add(slot[j + AHEAD] as usize));
                }
                if let Some(k) = ahead(i, AHEAD / 2) {
                    graph.prefetch_value(k);
                    prefetch(
                        bytes
                            .as_ptr()
                            .wrapping_add(ends[slot[j + AHEAD / 2] as usize] as usize),
                    );
                }
                let s = slot[j] as usize;
                bytes[ends[s] as usize..ends[s + 1] as usize]
                    .copy_from_slice(graph.value(i).as_bytes());
            }
            drop(slot);
            let values = StringArray::try_new(OffsetBuffer::new(ends.into()), bytes.into(), None)
                .map_err(|e| Error::Internal(format!("profile skeletons: {e}")))?;
            let pref: StringArray = best
                .iter()
                .map(|&(_, s)| (s != u32::MAX).then(|| values.value(s as usize)))
                .collect();
            let all = ListArray::try_new(
                Arc::new(Field::new_list_field(DataType::Utf8, true)),
                OffsetBuffer::new(offsets.into()),
                Arc::new(values),
                None,
            )
            .map_err(|e| Error::Internal(format!("profile skeletons: {e}")))?;
            Ok((Arc::new(pref), Arc::new(all)))
        };
        // Namespaces taken in turn by as many threads as there are cores.
        let next = std::sync::atomic::AtomicUsize::new(0);
        let threads = std::thread::available_parallelism()
            .map_or(1, std::num::NonZero::get)
            .min(ns_names.len())
            .max(1);
        let mut built: Vec<(usize, Result<(ArrayRef, ArrayRef)>)> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| {
                        let mut mine = Vec::new();
                        loop {
                            let j = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some(&k) = by_ns_name.get(j) else {
                                return mine;
                            };
                            mine.push((j, column(k)));
                        }
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        });
        built.sort_by_key(|b| b.0);
        let mut fields = vec![Field::new("profile_id", DataType::Utf8, false)];
        let mut arrays: Vec<ArrayRef> = vec![strings(profs.iter().map(|&p| profile_ids.get(p)))];
        for (j, b) in built {
            let (pref, all) = b?;
            let name = ns_names[by_ns_name[j]];
            fields.push(Field::new(name, DataType::Utf8, true));
            fields.push(Field::new(
                format!("{name}_all"),
                all.data_type().clone(),
                true,
            ));
            arrays.extend([pref, all]);
        }
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
            .map_err(|e| Error::Internal(e.to_string()))?;
        out.insert(class, vec![batch]);
    }
    Ok(out)
}
