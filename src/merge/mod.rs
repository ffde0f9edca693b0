//! Stage 3: merge. Records of a class → one unified profile per component.
//!
//! Consumes the ingested profile datasets and the identity stage's anchor keys.
//! Each record joins its profile through its anchor identity; each attribute
//! then takes one value per profile by the policy's method:
//!
//! * `timestamp`: the most recent non-null value; ties by dataset name, then the
//!   smallest value;
//! * `precedence`: the first listed dataset with a non-null value; within it, the
//!   most recent; ties by the smallest value. Unlisted datasets are not considered.
//!
//! Nulls never win over a value. Produces the `profiles` relation: the identity
//! skeleton (`profile_id`, each namespace's preferred value and `<ns>_all` list)
//! left-joined with the merged attributes, so profiles known only from events
//! are present with null attributes. Also builds the `events` relation.

use std::sync::Arc;

mod plan;
pub mod profile;
pub mod winners;

use plan::Plan;

use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::ScalarValue;
use datafusion::datasource::MemTable;
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::{Expr, cast, ident, lit};
use datafusion::prelude::{DataFrame, SessionContext};

use crate::config::{Class, DatasetKind, MergePolicy, Project, Stitching};
use crate::engine::Batches;
use crate::engine::udf::timestamp_type;
use crate::error::{Error, Result};
use crate::identity::{Stitched, anchor};
use crate::ingest::{Ingested, class_columns};

/// Columns every `events` row has, before its properties.
pub const EVENT_COLUMNS: [&str; 4] = ["profile_id", "dataset", "event_type", "event_time"];

/// Register the identity stage's results on the session: the profile
/// functions of each class and the profile skeletons (`__base_<class>`).
pub fn register_identity_tables(
    ctx: &SessionContext,
    project: &Project,
    stitched: &Stitched,
) -> Result<()> {
    for class in project.classes() {
        for mode in [
            anchor::Mode::Graph,
            anchor::Mode::Record,
            anchor::Mode::Normalise,
            anchor::Mode::IdOf,
        ] {
            ctx.register_udf(anchor::udf(
                class,
                mode,
                &project.namespaces,
                stitched.lookup.clone(),
                &stitched.outputs,
            ));
        }
    }
    for (class, batches) in &stitched.profiles {
        let schema = batches
            .first()
            .map(RecordBatch::schema)
            .ok_or_else(|| Error::Internal("no profile skeleton batch".into()))?;
        register_batches(
            ctx,
            &format!("__base_{}", class.as_str()),
            schema,
            batches.clone(),
        )?;
    }
    Ok(())
}

/// Columns of a class's profiles that a flat file can hold under every merge
/// policy of the class: `profile_id`, each namespace's preferred value, every
/// attribute that is not a list, struct or map (nor a `collect` list), and the
/// provenance columns every policy has (the `<ns>_all` lists are not exportable).
pub fn exportable_columns(project: &Project, datasets: &[Ingested], class: Class) -> Vec<String> {
    let nested = |t: &DataType| {
        matches!(
            t,
            DataType::List(_) | DataType::LargeList(_) | DataType::Struct(_) | DataType::Map(..)
        )
    };
    let policies: Vec<&MergePolicy> = project
        .policies
        .iter()
        .filter(|p| p.class == class)
        .collect();
    let mut out: Vec<String> = std::iter::once("profile_id".to_string())
        .chain(project.namespaces.iter().map(|n| n.name.clone()))
        .collect();
    for (a, t) in class_columns(datasets, class, DatasetKind::Profile) {
        let collected = policies.iter().any(|p| {
            p.rule(&a)
                .is_some_and(|r| r.rule == crate::config::AttributeRule::Collect)
        });
        if nested(&t) || collected {
            continue;
        }
        let provenance = !policies.is_empty() && policies.iter().all(|p| p.has_provenance(&a));
        out.push(a.clone());
        if provenance {
            out.push(format!("{a}__source"));
            out.push(format!("{a}__updated_at"));
        }
    }
    out
}

/// A SQL string literal.
pub(crate) fn string_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Register one batch as a table, replacing any table of that name.
pub fn register_batch(ctx: &SessionContext, name: &str, batch: RecordBatch) -> Result<()> {
    register_batches(ctx, name, batch.schema(), vec![batch])
}

/// Register batches as a table, replacing any table of that name.
pub fn register_batches(
    ctx: &SessionContext,
    name: &str,
    schema: Arc<Schema>,
    batches: Vec<RecordBatch>,
) -> Result<()> {
    let table = MemTable::try_new(schema, vec![batches]).map_err(Error::engine("register"))?;
    ctx.deregister_table(name)
        .map_err(Error::engine("register"))?;
    ctx.register_table(name, Arc::new(table))
        .map_err(Error::engine("register"))?;
    Ok(())
}

/// The function that gives a row its profile id under a stitching mode.
fn profile_mode(stitching: Stitching) -> anchor::Mode {
    match stitching {
        Stitching::Graph => anchor::Mode::Graph,
        Stitching::None => anchor::Mode::Record,
    }
}

/// Records (or events) of `d` joined to their profile ids.
async fn attributed(
    ctx: &SessionContext,
    project: &Project,
    d: &Ingested,
    stitching: Stitching,
) -> Result<DataFrame> {
    let ds = &d.dataset;
    let args = identity_args(project, d, None)?;
    let profile_fn = ctx
        .udf(&anchor::name(ds.class, profile_mode(stitching)))
        .map_err(Error::engine("merge"))?;
    ctx.table(d.table.as_str())
        .await
        .and_then(|df| df.with_column("profile_id", profile_fn.call(args)))
        .and_then(|df| {
            let by_as_of = crate::engine::udf::by_as_of(ctx, ident(&ds.timestamp))?;
            df.filter(by_as_of.and(ident("profile_id").is_not_null()))
        })
        .map_err(Error::engine("merge"))
}

/// `(namespace literal, column)` argument pairs of `d`'s identity columns (of
/// namespace `only`, when given).
fn identity_args(project: &Project, d: &Ingested, only: Option<&str>) -> Result<Vec<Expr>> {
    let ds = &d.dataset;
    let mut args = Vec::new();
    for (column, ns) in &ds.identities {
        if only.is_some_and(|o| o != ns) {
            continue;
        }
        let namespace = project
            .namespace(ns)
            .ok_or_else(|| Error::Internal(format!("namespace {ns} vanished")))?;
        args.push(lit(ns.as_str()));
        args.push(crate::identity::sql_normaliser::column_expr(
            namespace, column,
        )?);
    }
    Ok(args)
}

fn typed(d: &Ingested, name: &str, t: &DataType) -> Result<Expr> {
    Ok(if d.columns.iter().any(|(c, _)| c == name) {
        cast(ident(name), t.clone()).alias(name)
    } else {
        lit(ScalarValue::try_from(t).map_err(Error::engine("merge"))?).alias(name)
    })
}

/// Build the unified profiles of `policy`, collected and sorted by `profile_id`.
///
/// # Errors
/// [`Error::Input`] when an attribute name collides with `profile_id` or an
/// identity column of the profile; [`Error::Engine`] when execution fails.
pub async fn profiles(
    ctx: &SessionContext,
    project: &Project,
    datasets: &[Ingested],
    policy: &MergePolicy,
) -> Result<Batches> {
    let class = policy.class;
    let attrs = class_columns(datasets, class, DatasetKind::Profile);
    let base = format!("__base_{}", class.as_str());
    let base_schema = ctx
        .table(base.as_str())
        .await
        .map_err(Error::engine("merge"))?
        .schema()
        .as_arrow()
        .clone();
    for (a, _) in &attrs {
        if base_schema.field_with_name(a).is_ok() {
            let ds = datasets
                .iter()
                .find(|d| d.dataset.class == class && d.columns.iter().any(|(c, _)| c == a))
                .map(|d| d.dataset.name.clone())
                .unwrap_or_default();
            return Err(Error::input(
                &ds,
                None,
                Some(a),
                "attribute name collides with `profile_id` or an identity column of the profile (`<namespace>` or `<namespace>_all`); rename the column or list `attributes` explicitly",
            ));
        }
    }
    // Every profile dataset of the class, in name order: the dataset index is
    // the tie order, and precedence lists rank by it.
    let mut named: Vec<&Ingested> = datasets
        .iter()
        .filter(|d| d.dataset.class == class && d.dataset.kind == DatasetKind::Profile)
        .collect();
    named.sort_by(|a, b| a.dataset.name.cmp(&b.dataset.name));
    // Stitching off: profiles come from the records alone, and each namespace's
    // value and list are merged like attributes from the records' identities.
    let unstitched = policy.stitching == Stitching::None;
    let id_ns: Vec<&str> = if unstitched {
        project.namespaces.iter().map(|n| n.name.as_str()).collect()
    } else {
        Vec::new()
    };
    let plan = Plan::new(policy, &attrs, &named, &id_ns)?;
    let mut union: Option<DataFrame> = None;
    if !attrs.is_empty() || unstitched {
        let normalise = ctx
            .udf(&anchor::name(class, anchor::Mode::Normalise))
            .map_err(Error::engine("merge"))?;
        for (i, d) in named.iter().enumerate() {
            let mut exprs = vec![
                ident("profile_id"),
                cast(ident(&d.dataset.timestamp), timestamp_type()).alias("__ts"),
                lit(i as u32).alias("__ds"),
            ];
            for (k, ns) in id_ns.iter().enumerate() {
                let args = identity_args(project, d, Some(ns))?;
                exprs.push(
                    if args.is_empty() {
                        lit(ScalarValue::Utf8(None))
                    } else {
                        normalise.call(args)
                    }
                    .alias(format!("__id_{k}")),
                );
            }
            for (a, t) in &attrs {
                exprs.push(typed(d, a, t)?);
            }
            let df = attributed(ctx, project, d, policy.stitching)
                .await?
                .select(exprs)
                .map_err(Error::engine("merge"))?;
            union = Some(match union {
                None => df,
                Some(u) => u.union(df).map_err(Error::engine("merge"))?,
            });
        }
    }
    let sql = match union {
        Some(u) => {
            ctx.deregister_table("__recs")
                .map_err(Error::engine("merge"))?;
            ctx.register_table("__recs", u.into_view())
                .map_err(Error::engine("merge"))?;
            let fn_name = format!("__merge_{}", policy.name);
            ctx.register_udaf(winners::udaf(&fn_name, plan.slots.clone()));
            plan.sql(&fn_name, (!unstitched).then_some(base.as_str()))
        }
        None if unstitched => format!("SELECT * FROM {base} WHERE false"),
        None => format!("SELECT * FROM {base} ORDER BY profile_id"),
    };
    let mut df = ctx.sql(&sql).await.map_err(Error::engine("merge"))?;
    if !plan.params.is_empty() {
        df = df
            .with_param_values(plan.params.clone())
            .map_err(Error::engine("merge"))?;
    }
    let schema = Arc::new(df.schema().as_arrow().clone());
    let batches = df.collect().await.map_err(Error::engine("merge"))?;
    Ok((schema, batches))
}

/// The `events` relation of a class: every event dataset's rows with their
/// profile id, dataset name, event type, event time and properties (NULL where
/// a dataset lacks a property).
pub async fn events(
    ctx: &SessionContext,
    project: &Project,
    datasets: &[Ingested],
    class: Class,
    stitching: Stitching,
) -> Result<DataFrame> {
    let props = class_columns(datasets, class, DatasetKind::Event);
    for (p, _) in &props {
        if EVENT_COLUMNS.contains(&p.as_str()) {
            let ds = datasets
                .iter()
                .find(|d| d.dataset.class == class && d.columns.iter().any(|(c, _)| c == p))
                .map(|d| d.dataset.name.clone())
                .unwrap_or_default();
            return Err(Error::input(
                &ds,
                None,
                Some(p),
                format!(
                    "event property name is reserved in `events` ({}); rename the column",
                    EVENT_COLUMNS.join(", ")
                ),
            ));
        }
    }
    let mut union: Option<DataFrame> = None;
    let mut evs: Vec<&Ingested> = datasets
        .iter()
        .filter(|d| d.dataset.class == class && d.dataset.kind == DatasetKind::Event)
        .collect();
    evs.sort_by(|a, b| a.dataset.name.cmp(&b.dataset.name));
    for d in evs {
        let et = d
            .dataset
            .event_type
            .as_deref()
            .ok_or_else(|| Error::Internal("event dataset without event_type".into()))?;
        let mut exprs = vec![
            ident("profile_id"),
            lit(d.dataset.name.as_str()).alias("dataset"),
            cast(ident(et), DataType::Utf8).alias("event_type"),
            cast(ident(&d.dataset.timestamp), timestamp_type()).alias("event_time"),
        ];
        for (p, t) in &props {
            exprs.push(typed(d, p, t)?);
        }
        let df = attributed(ctx, project, d, stitching)
            .await?
            .select(exprs)
            .map_err(Error::engine("events"))?;
        union = Some(match union {
            None => df,
            Some(u) => u.union(df).map_err(Error::engine("events"))?,
        });
    }
    match union {
        Some(u) => Ok(u),
        None => {
            let mut fields = vec![
                Field::new("profile_id", DataType::Utf8, false),
                Field::new("dataset", DataType::Utf8, false),
                Field::new("event_type", DataType::Utf8, true),
                Field::new("event_time", timestamp_type(), true),
            ];
            fields.extend(props.iter().map(|(p, t)| Field::new(p, t.clone(), true)));
            let schema = Arc::new(Schema::new(fields));
            let t = MemTable::try_new(schema, vec![vec![]]).map_err(Error::engine("events"))?;
            ctx.read_table(Arc::new(t)).map_err(Error::engine("events"))
        }
    }
}
