//! The identity stage's outputs: profile ids, graph health, the profile
//! skeletons, and the identity map, links, cut links and quarantined identities
//! streamed to Parquet in the run folder in chunks (memory stays near the graph's).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, ListBuilder, RecordBatch, StringArray, StringBuilder, TimestampMicrosecondBuilder,
    UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use object_store::buffered::BufWriter;
use parquet::arrow::AsyncArrowWriter;

use super::graph::{self, IdentityGraph, Link, LinkStatus, Quarantine};
use super::lookup::IdentityLookup;
use super::{GraphHealth, LargeProfile, Rejections, Stitched, ids, previous_ids, store};
use crate::config::{Class, Project};
use crate::engine::storage::Location;
use crate::engine::udf::timestamp_type;
use crate::error::{Error, Result};

/// Rows per written batch and per Parquet row group (what a writer holds
/// encoded before it flushes; two outputs are written at once).
const CHUNK: usize = 1 << 18;

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
    let mut b = TimestampMicrosecondBuilder::new().with_timezone("UTC");
    for v in values {
        b.append_value(v);
    }
    Arc::new(b.finish())
}

fn strings<'a>(values: impl Iterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(values))
}

/// The class, namespace and value columns of identities `ids`.
fn identity_columns(graph: &IdentityGraph, ns_names: &[&str], ids: &[u32]) -> [ArrayRef; 3] {
    [
        strings(ids.iter().map(|&i| graph.class(i).as_str())),
        strings(ids.iter().map(|&i| ns_names[graph.ns(i) as usize])),
        strings(ids.iter().map(|&i| graph.value(i))),
    ]
}

/// A Parquet file written batch by batch through the object store.
struct Sink {
    writer: AsyncArrowWriter<BufWriter>,
    loc: Location,
}

impl Sink {
    fn open(loc: Location, schema: SchemaRef) -> Result<Sink> {
        let store = loc.store()?;
        let props = parquet::file::properties::WriterProperties::builder()
            .set_max_row_group_row_count(Some(CHUNK))
            .build();
        let writer =
            AsyncArrowWriter::try_new(BufWriter::new(store, loc.path()), schema, Some(props))
                .map_err(|e| Error::Internal(format!("{}: {e}", loc.display())))?;
        Ok(Sink { writer, loc })
    }
    async fn write(&mut self, schema: &SchemaRef, arrays: Vec<ArrayRef>) -> Result<()> {
        let batch = RecordBatch::try_new(schema.clone(), arrays)
            .map_err(|e| Error::Internal(e.to_string()))?;
        self.writer
            .write(&batch)
            .await
            .map_err(|e| Error::Internal(format!("writing {}: {e}", self.loc.display())))
    }
    async fn close(self) -> Result<()> {
        self.writer
            .close()
            .await
            .map_err(|e| Error::Internal(format!("writing {}: {e}", self.loc.display())))?;
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
    (profile_of, profile_ids): (&[u32], &[String]),
    ns_names: &[&str],
    dataset_names: &[&str],
    loc: Location,
) -> Result<()> {
    let schema = identity_map_schema();
    let mut sink = Sink::open(loc, schema.clone())?;
    let order: Vec<u32> = (0..graph.len() as u32).collect();
    for chunk in order.chunks(CHUNK) {
        let mut ds = ListBuilder::new(StringBuilder::new());
        for &i in chunk {
            for d in graph.datasets_of(i) {
                ds.values().append_value(dataset_names[d as usize]);
            }
            ds.append(true);
        }
        sink.write(
            &schema,
            [
                identity_columns(graph, ns_names, chunk).to_vec(),
                vec![
                    strings(
                        chunk
                            .iter()
                            .map(|&i| profile_ids[profile_of[i as usize] as usize].as_str()),
                    ),
                    ts_array(chunk.iter().map(|&i| graph.first_seen(i))),
                    ts_array(chunk.iter().map(|&i| graph.last_seen(i))),
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
    let mut sink = Sink::open(loc, schema.clone())?;
    let kept: Vec<&Link> = links.iter().filter(|l| keep(l)).collect();
    for chunk in kept.chunks(CHUNK) {
        let st: Vec<(&str, Option<String>)> =
            chunk.iter().map(|l| status_of(l, ns_names)).collect();
        sink.write(
            &schema,
            vec![
                strings(chunk.iter().map(|l| g.class(l.anchor).as_str())),
                strings(chunk.iter().map(|l| ns_names[g.ns(l.anchor) as usize])),
                strings(chunk.iter().map(|l| g.value(l.anchor))),
                strings(chunk.iter().map(|l| ns_names[g.ns(l.other) as usize])),
                strings(chunk.iter().map(|l| g.value(l.other))),
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
    // Ids are ranks: rank order is id order.
    let order: Vec<u32> = (0..n as u32).collect();
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
    } = ids::assign(&graph, &ns_names, &st.roots, &order, prev.as_ref());
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
            .map(|p| profile_ids[p].clone())
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
            .then_with(|| profile_ids[*a as usize].cmp(&profile_ids[*b as usize]))
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
        let id = &profile_ids[p as usize];
        health.largest.push(LargeProfile {
            profile_id: id.clone(),
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
    let (Ok(mut graph), Ok(links), Ok((profile_of, profile_ids))) = (
        Arc::try_unwrap(graph),
        Arc::try_unwrap(links),
        Arc::try_unwrap(pids),
    ) else {
        return Err(Error::Internal("identity outputs still in use".into()));
    };
    st.links = links;
    tracing::debug!("identity: identity map and links written");
    let pid = |i: u32| profile_ids[profile_of[i as usize] as usize].as_str();

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
    let mut sink = Sink::open(out.join("quarantined.parquet"), q_schema.clone())?;
    sink.write(
        &q_schema,
        [
            identity_columns(&graph, &ns_names, &q).to_vec(),
            vec![
                strings(q.iter().map(|&i| pid(i))),
                Arc::new(UInt64Array::from_iter_values(
                    q.iter().map(|&i| u64::from(st.degree[i as usize])),
                )),
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
    for v in &rejections.sample {
        lines.extend(serde_json::to_vec(v).map_err(|e| Error::Internal(e.to_string()))?);
        lines.push(b'\n');
    }
    store::put(&out.join("rejected_sample.jsonl"), lines).await?;

    let profiles = skeletons(
        project,
        &graph,
        &ns_names,
        &order,
        &profile_of,
        &profile_ids,
        &profile_class,
    )?;
    tracing::debug!("identity: profile skeletons built");
    let quarantined: Vec<bool> = st.quarantine.iter().map(Option::is_some).collect();
    drop(st);
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

/// Per class, one row per profile sorted by id (in two batches): `profile_id`, then per namespace
/// (by name) the preferred value (last seen most recently; ties: the smallest)
/// and the sorted list of values.
fn skeletons(
    project: &Project,
    graph: &IdentityGraph,
    ns_names: &[&str],
    order: &[u32],
    profile_of: &[u32],
    profile_ids: &[String],
    profile_class: &[Class],
) -> Result<BTreeMap<Class, Vec<RecordBatch>>> {
    let np = profile_ids.len();
    // Identities per profile, in rank order (CSR).
    let mut start = vec![0usize; np + 1];
    for &p in profile_of {
        start[p as usize + 1] += 1;
    }
    for p in 0..np {
        start[p + 1] += start[p];
    }
    let mut fill = start.clone();
    let mut members = vec![0u32; profile_of.len()];
    for &i in order {
        let p = profile_of[i as usize] as usize;
        members[fill[p]] = i;
        fill[p] += 1;
    }
    drop(fill);
    let mut by_ns_name: Vec<usize> = (0..ns_names.len()).collect();
    by_ns_name.sort_by_key(|&i| ns_names[i]);
    let mut out = BTreeMap::new();
    for class in project.classes() {
        // Sorted by id: the first 16 bytes as an integer key, whole ids
        // (then the index) only where keys are equal.
        let key = |p: u32| {
            let id = profile_ids[p as usize].as_bytes();
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
                profile_ids[a.1 as usize]
                    .cmp(&profile_ids[b.1 as usize])
                    .then(a.1.cmp(&b.1))
            });
        }
        let profs: Vec<u32> = profs.into_iter().map(|(_, p)| p).collect();
        // Columns built for each half of the profiles side by side, then joined.
        let build = |profs: &[u32]| -> Vec<ArrayRef> {
            let mut pref: Vec<StringBuilder> =
                ns_names.iter().map(|_| StringBuilder::new()).collect();
            let mut all: Vec<ListBuilder<StringBuilder>> = ns_names
                .iter()
                .map(|_| ListBuilder::new(StringBuilder::new()))
                .collect();
            for &p in profs {
                let idents = &members[start[p as usize]..start[p as usize + 1]];
                for &k in &by_ns_name {
                    let mut best: Option<u32> = None;
                    for &i in idents.iter().filter(|&&i| graph.ns(i) as usize == k) {
                        all[k].values().append_value(graph.value(i));
                        let better = best.is_none_or(|b| {
                            let (li, lb) = (graph.last_seen(i), graph.last_seen(b));
                            li > lb || (li == lb && graph.value(i) < graph.value(b))
                        });
                        if better {
                            best = Some(i);
                        }
                    }
                    all[k].append(true);
                    pref[k].append_option(best.map(|b| graph.value(b)));
                }
            }
            let mut arrays: Vec<ArrayRef> = vec![strings(
                profs.iter().map(|&p| profile_ids[p as usize].as_str()),
            )];
            for &k in &by_ns_name {
                arrays.push(Arc::new(pref[k].finish()));
                arrays.push(Arc::new(all[k].finish()));
            }
            arrays
        };
        let (lo, hi) = profs.split_at(profs.len() / 2);
        let (a, b) = std::thread::scope(|s| {
            let first = s.spawn(|| build(lo));
            let second = build(hi);
            (first.join(), second)
        });
        let a = a.map_err(|_| Error::Internal("profile skeleton thread failed".into()))?;
        let mut fields = vec![Field::new("profile_id", DataType::Utf8, false)];
        for (j, &k) in by_ns_name.iter().enumerate() {
            fields.push(Field::new(ns_names[k], DataType::Utf8, true));
            fields.push(Field::new(
                format!("{}_all", ns_names[k]),
                a[2 + 2 * j].data_type().clone(),
                true,
            ));
        }
        // The halves stay two batches (in id order), not copied into one.
        let schema = Arc::new(Schema::new(fields));
        let batches = [a, b]
            .into_iter()
            .map(|arrays| RecordBatch::try_new(schema.clone(), arrays))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Internal(e.to_string()))?;
        out.insert(class, batches);
    }
    Ok(out)
}
