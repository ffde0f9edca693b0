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

use crate::config::{Class, ModelKind, Project, SqlModel};
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
    pub members: Vec<String>,
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

/// Options that make segment SQL read-only.
pub fn read_only() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
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
/// tagged with their id, semi-joined once with the policy's `profiles`, and
/// executed together, so shared scans and the membership output happen in one
/// pass instead of one query per segment. Features are evaluated once per
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
    let mut members_of: BTreeMap<String, Vec<String>> = BTreeMap::new();
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
        for m in todo {
            feats.insert(m.id.clone(), run_feature(ctx, m).await?);
            *runs.entry(policy.clone()).or_default() += 1;
        }
        for (id, members) in run_segments(ctx, segs).await? {
            let schema = Arc::new(Schema::new(vec![Field::new(
                "profile_id",
                DataType::Utf8,
                false,
            )]));
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(StringArray::from_iter_values(members.iter()))],
            )
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
    for m in todo {
        g.features.insert(m.id.clone(), run_feature(ctx, m).await?);
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
async fn run_segments(
    ctx: &SessionContext,
    segs: &[&SqlModel],
) -> Result<BTreeMap<String, Vec<String>>> {
    use datafusion::logical_expr::{JoinType, cast, col, lit};
    let mut union: Option<datafusion::prelude::DataFrame> = None;
    for seg in segs {
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
                lit(seg.id.as_str()).alias("__segment"),
                cast(col("profile_id"), DataType::Utf8).alias("__member"),
            ])
            .map_err(|e| sql_error(seg, e))?;
        union = Some(match union {
            None => tagged,
            Some(u) => u.union(tagged).map_err(|e| sql_error(seg, e))?,
        });
    }
    let mut out: BTreeMap<String, Vec<String>> =
        segs.iter().map(|s| (s.id.clone(), Vec::new())).collect();
    let Some(union) = union else {
        return Ok(out);
    };
    let files: Vec<&str> = segs.iter().map(|s| s.file.as_str()).collect();
    let together = |e: datafusion::error::DataFusionError| Error::Sql {
        file: files.join(", "),
        line: None,
        message: e.to_string(),
    };
    let profiles = ctx
        .table("profiles")
        .await
        .and_then(|p| p.select(vec![col("profile_id").alias("__profile")]))
        .map_err(together)?;
    // Distinct and sorted by the engine: members arrive in order, once each.
    let batches = union
        .join(
            profiles,
            JoinType::LeftSemi,
            &["__member"],
            &["__profile"],
            None,
        )
        .and_then(|d| d.distinct())
        .and_then(|d| {
            d.sort(vec![
                col("__segment").sort(true, false),
                col("__member").sort(true, false),
            ])
        })
        .map_err(together)?
        .collect()
        .await
        .map_err(together)?;
    for b in &batches {
        let seg = crate::identity::to_strings(b.column(0))?;
        let member = crate::identity::to_strings(b.column(1))?;
        let mut current: Option<(&str, &mut Vec<String>)> = None;
        for i in 0..b.num_rows() {
            if seg.is_null(i) || member.is_null(i) {
                continue;
            }
            let s = seg.value(i);
            if current.as_ref().is_none_or(|(c, _)| *c != s) {
                current = out.get_mut(s).map(|v| (s, v));
            }
            if let Some((_, v)) = current.as_mut() {
                v.push(member.value(i).to_string());
            }
        }
    }
    Ok(out)
}
