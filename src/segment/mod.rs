//! Stage 4: segments. SQL audiences over unified profiles and events, at the
//! run's as-of time.
//!
//! Consumes the validated models (features and segments in dependency order)
//! and, per (class, merge policy) a segment uses, that policy's `profiles`, the
//! class's `events` and `identities`. Features are evaluated once per policy
//! group and kept in memory; each segment once, its members kept under its id
//! so other segments can read it. Produces one [`Membership`] per segment: the
//! sorted, distinct profile ids that are profiles of its class.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use datafusion::arrow::array::{Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::execution::context::SQLOptions;
use datafusion::prelude::SessionContext;

use crate::config::{Class, EngineSettings, ModelKind, Project, SqlModel};
use crate::engine::Batches;
use crate::error::{Error, Result};
use crate::merge::register_batches;

pub mod adhoc;
pub mod history;

/// A segment's members at one as-of.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Membership {
    pub segment: String,
    pub class: Class,
    /// The merge policy whose profiles the segment read.
    pub policy: String,
    /// Sorted, distinct profile ids.
    pub members: MemberIds,
}

/// A segment's members: sorted, distinct profile ids, in one Arrow array.
#[derive(Debug, Clone)]
pub struct MemberIds(StringArray);

impl Default for MemberIds {
    fn default() -> Self {
        MemberIds(StringArray::from(Vec::<&str>::new()))
    }
}

impl MemberIds {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The ids, in order.
    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        self.0.iter().flatten()
    }

    pub fn array(&self) -> &StringArray {
        &self.0
    }
}

impl serde::Serialize for MemberIds {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

/// The relations of one policy group, registered before its models run.
pub struct Group {
    pub class: Class,
    pub policy: String,
    pub profiles: Batches,
    pub events: Arc<dyn datafusion::catalog::TableProvider>,
    pub identities: Arc<dyn datafusion::catalog::TableProvider>,
    /// Features evaluated for this group, by id.
    pub features: BTreeMap<String, Batches>,
    /// How many feature queries ran for this group (each feature once).
    pub feature_runs: usize,
}

impl Group {
    /// How many profiles the group's policy has.
    pub fn profile_count(&self) -> usize {
        self.profiles.1.iter().map(RecordBatch::num_rows).sum()
    }
}

/// Options that make segment SQL read-only.
pub fn read_only() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

/// Groups each partition of a per-profile aggregate should hold: DataFusion
/// keeps 32 bytes a group in its table, so 16Ki groups are about the 512 KiB
/// of one core's L2 cache here. Measured on the segment bench (1M profiles,
/// 12M events): 16Ki groups a partition was fastest of 4Ki to 64Ki.
const GROUPS_PER_PARTITION: usize = 16 * 1024;

/// At most this many partitions after the shuffle: beyond it each batch is
/// cut into pieces so small that the shuffle costs more than the cache saves
/// (at 10M profiles, with 32Ki-row batches, 128 partitions were about 10%
/// faster than 64; 256 and 512 slower, and took twice the memory).
const MAX_PARTITIONS: usize = 128;

/// Rows of a batch for each partition after the shuffle, at least (as far
/// as [`MAX_BATCH`] allows): a shuffle into 64 partitions with 32Ki-row
/// batches was 8-10% faster than with 8Ki rows at 1M and 10M profiles (the
/// pieces' per-batch costs), for about 200 MB more at 10M.
const SHUFFLE_PIECE: usize = 512;

/// Rows of a batch in the segment stage, at most.
const MAX_BATCH: usize = 32 * 1024;

/// The session the segment stage plans features and segments on, for a
/// policy of `profiles` profiles: `ctx` itself, or (embedded, with
/// `[engine] target_partitions` unset) a session over the same relations whose
/// final aggregates shuffle into enough partitions that a feature's
/// `GROUP BY profile_id` over events works on cache-sized hash tables
/// ([`crate::engine::wide`]), with batches large enough for that shuffle
/// (`benches/README.md` has the measurements).
pub fn stage_session(
    ctx: &SessionContext,
    engine: &EngineSettings,
    profiles: usize,
) -> SessionContext {
    let cores = ctx.copied_config().target_partitions();
    let partitions = profiles
        .div_ceil(GROUPS_PER_PARTITION)
        .next_power_of_two()
        .min(MAX_PARTITIONS);
    if partitions <= cores
        || engine.target_partitions.is_some()
        || crate::engine::cluster(ctx).is_some()
    {
        return ctx.clone();
    }
    let mut state = ctx.state();
    // The shuffle cuts every batch into `partitions` pieces: larger batches
    // keep the pieces at SHUFFLE_PIECE rows or more.
    let batch = (partitions * SHUFFLE_PIECE)
        .min(MAX_BATCH)
        .max(state.config().batch_size());
    *state.config_mut() = state.config().clone().with_batch_size(batch);
    tracing::debug!(
        profiles,
        partitions,
        batch,
        "segments: per-profile aggregates shuffled into more partitions than cores"
    );
    let state = datafusion::execution::SessionStateBuilder::new_from_existing(state)
        .with_physical_optimizer_rule(Arc::new(crate::engine::wide::WideAggregates { partitions }))
        .build();
    SessionContext::new_with_state(state)
}

/// The policy a model uses: its header's, or its class default.
pub fn policy_of(project: &Project, m: &SqlModel) -> Result<String> {
    match &m.policy {
        Some(p) => Ok(p.clone()),
        None => project
            .default_policy(m.class)
            .map(|p| p.name.clone())
            .ok_or_else(|| {
                Error::Internal(format!(
                    "no default {} policy after validation",
                    m.class.as_str()
                ))
            }),
    }
}

fn activate(ctx: &SessionContext, g: &Group, features: &BTreeMap<String, Batches>) -> Result<()> {
    register_batches(ctx, "profiles", g.profiles.0.clone(), g.profiles.1.clone())?;
    ctx.deregister_table("identities")
        .map_err(Error::engine("segments"))?;
    ctx.register_table("identities", g.identities.clone())
        .map_err(Error::engine("segments"))?;
    ctx.deregister_table("events")
        .map_err(Error::engine("segments"))?;
    ctx.register_table("events", g.events.clone())
        .map_err(Error::engine("segments"))?;
    for (id, (schema, batches)) in features {
        register_batches(ctx, id, schema.clone(), batches.clone())?;
    }
    Ok(())
}

fn sql_error(m: &SqlModel, e: impl std::fmt::Display) -> Error {
    let message = e.to_string();
    // Point at the line of the first name the message quotes, when it is in the file.
    let line = message
        .split(['`', '"', '\''])
        .skip(1)
        .step_by(2)
        .filter_map(|name| {
            let short = name.rsplit('.').next().unwrap_or(name);
            (!short.is_empty()).then(|| {
                m.sql
                    .lines()
                    .position(|l| !l.trim_start().starts_with("--") && l.contains(short))
            })?
        })
        .next()
        .map(|i| i + 1);
    Error::Sql {
        file: m.file.clone(),
        line,
        message,
    }
}

/// Evaluate every segment (and the features they read) in dependency order.
///
/// Segments are evaluated in layers: a segment's layer is one more than the
/// deepest segment it reads (0 when it reads none). The segments of one layer
/// and merge policy run as **one query**: each is planned on its own (so a
/// planning error names its file), then all are combined with `UNION ALL`,
/// tagged with their index, and executed together; the rows are marked in one
/// bitmap per segment over the policy's sorted `profiles` as they stream, so
/// shared scans and the membership output happen in one pass instead of one
/// query per segment. Features are evaluated once per
/// policy, before the first layer that needs them.
///
/// `group` builds the relations of a (class, policy) pair on first use; the
/// groups built are returned beside the memberships.
///
/// # Errors
/// [`Error::Sql`] naming the file (and line, when known) for a query that fails
/// to plan or run, or that returns no `profile_id` column.
pub async fn evaluate<F, Fut>(
    ctx: &SessionContext,
    project: &Project,
    mut group: F,
) -> Result<(Vec<Membership>, BTreeMap<String, Group>)>
where
    F: FnMut(Class, String) -> Fut,
    Fut: std::future::Future<Output = Result<Group>>,
{
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    let mut features: BTreeMap<String, BTreeMap<String, Batches>> = BTreeMap::new();
    let mut runs: BTreeMap<String, usize> = BTreeMap::new();
    let mut active: Option<String> = None;
    let by_id: BTreeMap<&str, &SqlModel> =
        project.models.iter().map(|m| (m.id.as_str(), m)).collect();
    // Layer of each segment (models are in dependency order).
    let mut layer: BTreeMap<&str, usize> = BTreeMap::new();
    for m in project
        .models
        .iter()
        .filter(|m| m.kind == ModelKind::Segment)
    {
        let l = m
            .depends_on
            .iter()
            .filter_map(|d| layer.get(d.as_str()).map(|l| l + 1))
            .max()
            .unwrap_or(0);
        layer.insert(m.id.as_str(), l);
    }
    let mut batches: BTreeMap<(usize, String), Vec<&SqlModel>> = BTreeMap::new();
    for m in project
        .models
        .iter()
        .filter(|m| m.kind == ModelKind::Segment)
    {
        let policy = policy_of(project, m)?;
        batches
            .entry((layer[m.id.as_str()], policy))
            .or_default()
            .push(m);
    }
    let mut members_of: BTreeMap<String, MemberIds> = BTreeMap::new();
    // Each policy's profile ids, indexed once for all its layers.
    let mut indexes: BTreeMap<String, Arc<ProfileIndex>> = BTreeMap::new();
    for ((_, policy), segs) in &batches {
        if !groups.contains_key(policy) {
            let g = group(segs[0].class, policy.clone()).await?;
            groups.insert(policy.clone(), g);
        }
        let g = &groups[policy];
        let feats = features.entry(policy.clone()).or_default();
        if active.as_deref() != Some(policy.as_str()) {
            activate(ctx, g, feats)?;
            active = Some(policy.clone());
        }
        // Features these segments need, transitively, in dependency order.
        let mut needed = BTreeSet::new();
        let mut stack: Vec<&str> = segs
            .iter()
            .flat_map(|s| s.depends_on.iter().map(String::as_str))
            .collect();
        while let Some(id) = stack.pop() {
            if let Some(m) = by_id.get(id)
                && m.kind == ModelKind::Feature
                && needed.insert(id)
            {
                stack.extend(m.depends_on.iter().map(String::as_str));
            }
        }
        let todo: Vec<&SqlModel> = project
            .models
            .iter()
            .filter(|m| needed.contains(m.id.as_str()) && !feats.contains_key(&m.id))
            .collect();
        let stage = stage_session(ctx, &project.engine, g.profile_count());
        for m in todo {
            feats.insert(m.id.clone(), run_feature(&stage, m).await?);
            *runs.entry(policy.clone()).or_default() += 1;
        }
        let index = match indexes.get(policy) {
            Some(ix) => Arc::clone(ix),
            None => {
                let ix = Arc::new(ProfileIndex::new(&g.profiles.1)?);
                indexes.insert(policy.clone(), Arc::clone(&ix));
                ix
            }
        };
        let workers = ctx.copied_config().target_partitions();
        for (id, members) in run_segments(&stage, segs, index, workers).await? {
            let schema = Arc::new(Schema::new(vec![Field::new(
                "profile_id",
                DataType::Utf8,
                false,
            )]));
            let batch =
                RecordBatch::try_new(schema.clone(), vec![Arc::new(members.array().clone())])
                    .map_err(|e| Error::Internal(e.to_string()))?;
            register_batches(ctx, &id, schema, vec![batch])?;
            members_of.insert(id, members);
        }
    }
    let mut out = Vec::new();
    for seg in project
        .models
        .iter()
        .filter(|m| m.kind == ModelKind::Segment)
    {
        out.push(Membership {
            segment: seg.id.clone(),
            class: seg.class,
            policy: policy_of(project, seg)?,
            members: members_of.remove(&seg.id).unwrap_or_default(),
        });
    }
    for (policy, f) in features {
        if let Some(g) = groups.get_mut(&policy) {
            g.features = f;
            g.feature_runs = runs.get(&policy).copied().unwrap_or_default();
        }
    }
    Ok((out, groups))
}

/// Make `g`'s relations current and evaluate every feature it has not yet
/// (for ad-hoc queries, which may read any feature).
///
/// # Errors
/// [`Error::Sql`] naming the feature file when one fails.
pub async fn activate_all(ctx: &SessionContext, project: &Project, g: &mut Group) -> Result<()> {
    activate(ctx, g, &g.features)?;
    let todo: Vec<&SqlModel> = project
        .models
        .iter()
        .filter(|m| m.kind == ModelKind::Feature && !g.features.contains_key(&m.id))
        .collect();
    let stage = stage_session(ctx, &project.engine, g.profile_count());
    for m in todo {
        g.features
            .insert(m.id.clone(), run_feature(&stage, m).await?);
        g.feature_runs += 1;
    }
    Ok(())
}

/// Evaluate a feature once and register its rows under its id.
async fn run_feature(ctx: &SessionContext, m: &SqlModel) -> Result<Batches> {
    let df = ctx
        .sql_with_options(&m.sql, read_only())
        .await
        .map_err(|e| sql_error(m, e))?;
    let schema = Arc::new(df.schema().as_arrow().clone());
    let batches = df.collect().await.map_err(|e| sql_error(m, e))?;
    register_batches(ctx, &m.id, schema.clone(), batches.clone())?;
    Ok((schema, batches))
}

/// Members of several segments of one policy, in one query: sorted, distinct
/// profile ids that are profiles of the active policy, by segment id.
///
/// The segments' rows stream through once: each member is looked up among
/// the policy's profiles (`ids`, sorted by `profile_id`) and
/// marked in the segment's bitmap over the profiles; reading the bitmaps in
/// order gives each segment's members sorted and distinct, with no join,
/// `DISTINCT` or sort of the (segment, member) rows.
async fn run_segments(
    ctx: &SessionContext,
    segs: &[&SqlModel],
    ids: Arc<ProfileIndex>,
    workers: usize,
) -> Result<BTreeMap<String, MemberIds>> {
    use datafusion::logical_expr::{cast, col, lit};
    let mut union: Option<datafusion::prelude::DataFrame> = None;
    for (index, seg) in segs.iter().enumerate() {
        let df = ctx
            .sql_with_options(&seg.sql, read_only())
            .await
            .map_err(|e| sql_error(seg, e))?;
        let cols: Vec<String> = df
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        if !cols.iter().any(|c| c == "profile_id") {
            return Err(Error::Sql {
                file: seg.file.clone(),
                line: None,
                message: format!(
                    "a segment must return a `profile_id` column; this query returns: {}",
                    cols.join(", ")
                ),
            });
        }
        let tagged = df
            .select(vec![
                lit(index as u32).alias("__segment"),
                cast(col("profile_id"), DataType::Utf8).alias("__member"),
            ])
            .map_err(|e| sql_error(seg, e))?;
        union = Some(match union {
            None => tagged,
            Some(u) => u.union(tagged).map_err(|e| sql_error(seg, e))?,
        });
    }
    let Some(union) = union else {
        return Ok(segs
            .iter()
            .map(|s| (s.id.clone(), MemberIds::default()))
            .collect());
    };
    let files: Vec<&str> = segs.iter().map(|s| s.file.as_str()).collect();
    let together = |e: datafusion::error::DataFusionError| Error::Sql {
        file: files.join(", "),
        line: None,
        message: e.to_string(),
    };
    // Output partitions are shared out among `workers` tasks, each marking
    // its own bitmaps; the bitmaps are then joined.
    let streams = union.execute_stream_partitioned().await.map_err(together)?;
    let workers = workers.clamp(1, streams.len().max(1));
    let queue = Arc::new(std::sync::Mutex::new(streams));
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (ids, queue, n) = (ids.clone(), queue.clone(), segs.len());
            tokio::spawn(async move {
                let mut marked: Vec<Bitmap> = (0..n).map(|_| Bitmap::new(ids.len())).collect();
                loop {
                    let next = queue.lock().ok().and_then(|mut q| q.pop());
                    let Some(mut stream) = next else { break };
                    while let Some(b) = futures::StreamExt::next(&mut stream).await {
                        mark(&b?, &ids, &mut marked)?;
                    }
                }
                Ok::<_, datafusion::error::DataFusionError>(marked)
            })
        })
        .collect();
    let mut marked: Vec<Bitmap> = segs.iter().map(|_| Bitmap::new(ids.len())).collect();
    for t in tasks {
        let part = t
            .await
            .map_err(|e| Error::Internal(format!("segment worker: {e}")))?
            .map_err(together)?;
        for (all, p) in marked.iter_mut().zip(&part) {
            all.or(p);
        }
    }
    segs.iter()
        .zip(&marked)
        .map(|(seg, bits)| Ok((seg.id.clone(), ids.take(bits)?)))
        .collect()
}

/// Mark each row's member (column 1) in the bitmap of its segment (column 0),
/// when the member is a profile.
fn mark(
    b: &RecordBatch,
    ids: &ProfileIndex,
    marked: &mut [Bitmap],
) -> datafusion::error::Result<()> {
    let seg = b
        .column(0)
        .as_any()
        .downcast_ref::<datafusion::arrow::array::UInt32Array>()
        .ok_or_else(|| {
            datafusion::error::DataFusionError::Internal("segment tag is not UInt32".into())
        })?;
    let member = b
        .column(1)
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| datafusion::error::DataFusionError::Internal("member is not Utf8".into()))?;
    for i in 0..b.num_rows() {
        if seg.is_null(i) || member.is_null(i) {
            continue;
        }
        if let (Some(bits), Some(row)) = (
            marked.get_mut(seg.value(i) as usize),
            ids.position(member.value(i)),
        ) {
            bits.set(row);
        }
    }
    Ok(())
}

/// The profile ids of a policy, sorted and distinct, with a hash table from
/// an id to its position.
struct ProfileIndex {
    ids: StringArray,
    table: hashbrown::HashTable<u32>,
    hasher: hashbrown::DefaultHashBuilder,
}

impl ProfileIndex {
    fn new(batches: &[RecordBatch]) -> Result<Self> {
        let arrays = batches
            .iter()
            .map(|b| {
                b.column_by_name("profile_id")
                    .ok_or_else(|| Error::Internal("profiles without profile_id".into()))
                    .and_then(crate::identity::to_strings)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self::of(&arrays))
    }

    fn of(arrays: &[StringArray]) -> Self {
        let mut sorted: Vec<&str> = arrays.iter().flat_map(|c| c.iter().flatten()).collect();
        if !sorted.is_sorted_by(|a, b| a < b) {
            sorted.sort_unstable();
            sorted.dedup();
        }
        let ids = StringArray::from_iter_values(sorted);
        let hasher = hashbrown::DefaultHashBuilder::default();
        let hash = |s: &str| std::hash::BuildHasher::hash_one(&hasher, s);
        let mut table = hashbrown::HashTable::with_capacity(ids.len());
        for i in 0..ids.len() {
            table.insert_unique(hash(ids.value(i)), i as u32, |&j| {
                hash(ids.value(j as usize))
            });
        }
        ProfileIndex { ids, table, hasher }
    }

    fn len(&self) -> usize {
        self.ids.len()
    }

    fn position(&self, id: &str) -> Option<usize> {
        let h = std::hash::BuildHasher::hash_one(&self.hasher, id);
        self.table
            .find(h, |&j| self.ids.value(j as usize) == id)
            .map(|&j| j as usize)
    }

    /// The ids whose positions are set in `bits`, in order.
    fn take(&self, bits: &Bitmap) -> Result<MemberIds> {
        let rows: datafusion::arrow::array::UInt32Array =
            bits.ones().map(|r| r as u32).collect::<Vec<u32>>().into();
        let taken = datafusion::arrow::compute::take(&self.ids, &rows, None)
            .map_err(|e| Error::Internal(format!("members: {e}")))?;
        taken
            .as_any()
            .downcast_ref::<StringArray>()
            .cloned()
            .map(MemberIds)
            .ok_or_else(|| Error::Internal("members are not Utf8".into()))
    }
}

/// One bit per profile.
struct Bitmap(Vec<u64>);

impl Bitmap {
    fn new(bits: usize) -> Self {
        Bitmap(vec![0; bits.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn or(&mut self, other: &Bitmap) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a |= b;
        }
    }
    /// The set bits, in increasing order.
    fn ones(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().enumerate().flat_map(|(w, &word)| {
            let mut bits = word;
            std::iter::from_fn(move || {
                (bits != 0).then(|| {
                    let b = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    w * 64 + b
                })
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shuffle a `GROUP BY profile_id` gets on `ctx`, and its batch size.
    async fn shuffle_of(ctx: &SessionContext) -> (String, usize) {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "profile_id",
            DataType::Utf8,
            true,
        )]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(StringArray::from(vec!["a", "b", "a"]))],
        )
        .expect("batch");
        let table = datafusion::datasource::MemTable::try_new(
            schema,
            vec![vec![batch.clone()], vec![batch]],
        )
        .expect("table");
        ctx.register_table("ev", Arc::new(table)).ok();
        let plan = ctx
            .sql("SELECT profile_id, count(*) AS n FROM ev GROUP BY profile_id")
            .await
            .expect("sql")
            .create_physical_plan()
            .await
            .expect("plan");
        let text = datafusion::physical_plan::displayable(plan.as_ref())
            .indent(false)
            .to_string();
        let hash = text
            .lines()
            .find_map(|l| l.split("partitioning=").nth(1))
            .map(|p| p.split(", input").next().unwrap_or(p).to_string())
            .unwrap_or_default();
        (hash, ctx.copied_config().batch_size())
    }

    #[tokio::test]
    async fn segment_stage_widens_per_profile_aggregates_only_when_it_may() {
        let ctx = SessionContext::new_with_config(
            datafusion::prelude::SessionConfig::new()
                .with_target_partitions(2)
                .with_batch_size(8192),
        );
        let auto = EngineSettings::default();
        // Small: as many partitions as the session has.
        let small = stage_session(&ctx, &auto, 20_000);
        assert_eq!(
            shuffle_of(&small).await,
            ("Hash([profile_id@0], 2)".to_string(), 8192)
        );
        // 100k profiles: 8 partitions (16Ki groups each), batches unchanged.
        let mid = stage_session(&ctx, &auto, 100_000);
        assert_eq!(
            shuffle_of(&mid).await,
            ("Hash([profile_id@0], 8)".to_string(), 8192)
        );
        // 10M profiles: at most 128 partitions, 32Ki-row batches.
        let big = stage_session(&ctx, &auto, 10_000_000);
        assert_eq!(
            shuffle_of(&big).await,
            ("Hash([profile_id@0], 128)".to_string(), 32768)
        );
        // The original session is untouched, and sees what the stage registers.
        assert_eq!(shuffle_of(&ctx).await.0, "Hash([profile_id@0], 2)");
        big.register_table("seen", big.table_provider("ev").await.expect("ev"))
            .expect("register");
        assert!(ctx.table_exist("seen").expect("lookup"));
        // `[engine] target_partitions` set: used as is.
        let fixed = EngineSettings {
            target_partitions: Some(2),
            ..EngineSettings::default()
        };
        let kept = stage_session(&ctx, &fixed, 10_000_000);
        assert_eq!(
            shuffle_of(&kept).await,
            ("Hash([profile_id@0], 2)".to_string(), 8192)
        );
    }

    #[test]
    fn segment_bitmap_gives_set_positions_in_order_once() {
        let mut b = Bitmap::new(200);
        for i in [130, 0, 63, 64, 199, 63, 5] {
            b.set(i);
        }
        assert_eq!(b.ones().collect::<Vec<_>>(), vec![0, 5, 63, 64, 130, 199]);
        assert_eq!(Bitmap::new(0).ones().count(), 0);
    }

    #[test]
    fn segment_profile_index_sorts_what_is_not_sorted() {
        let arrays = vec![
            StringArray::from(vec![Some("p3"), None, Some("p1")]),
            StringArray::from(vec!["p2", "p1"]),
        ];
        let ix = ProfileIndex::of(&arrays);
        assert_eq!(ix.len(), 3);
        let mut all = Bitmap::new(ix.len());
        (0..3).for_each(|r| all.set(r));
        assert_eq!(
            ix.take(&all).expect("take").iter().collect::<Vec<_>>(),
            vec!["p1", "p2", "p3"]
        );
        assert_eq!(ix.position("p2"), Some(1));
        assert_eq!(ix.position("p9"), None);
        let sorted = vec![StringArray::from(vec!["a", "b", "c"])];
        assert_eq!(ProfileIndex::of(&sorted).position("c"), Some(2));
    }
}
