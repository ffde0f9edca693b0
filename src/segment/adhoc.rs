//! Ad-hoc read-only SQL over the relations a segment sees (`audience query`,
//! and the SQL logic tests): the run evaluated at an as-of with nothing
//! written, one merge policy's relations made current, every feature
//! evaluated, every segment registered by id.

use chrono::{DateTime, Utc};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::prelude::SessionContext;

use crate::config::{Class, Project};
use crate::error::{Error, Problems, Result, one_of};

fn bad(msg: String) -> Error {
    let mut p = Problems::default();
    p.push("query", "", msg);
    Error::Config(p)
}

/// The policy named, or the class default.
///
/// # Errors
/// [`Error::Config`] for an unknown policy.
pub fn policy_name(project: &Project, policy: Option<&str>, class: Class) -> Result<String> {
    match policy {
        Some(p) => project.policy(p).map(|x| x.name.clone()).ok_or_else(|| {
            bad(format!(
                "unknown merge policy `{p}`: {}",
                one_of(p, project.policies.iter().map(|x| x.name.as_str()))
            ))
        }),
        None => project
            .default_policy(class)
            .map(|x| x.name.clone())
            .ok_or_else(|| bad(format!("no {} merge policy", class.as_str()))),
    }
}

/// Evaluate the run at `as_of` and make `policy`'s relations current.
///
/// # Errors
/// What a run would report.
pub async fn prepare(
    project: &Project,
    policy: &str,
    as_of: DateTime<Utc>,
) -> Result<SessionContext> {
    let mut ev = crate::run::evaluate(project, as_of).await?;
    let class = project
        .policy(policy)
        .map(|p| p.class)
        .unwrap_or(Class::Customer);
    let mut group = match ev.groups.remove(policy) {
        Some(g) => g,
        None => crate::run::build_group(&ev.ctx, project, &ev.datasets, class, policy).await?,
    };
    super::activate_all(&ev.ctx, project, &mut group).await?;
    Ok(ev.ctx)
}

/// Run one read-only query with the checks a segment file gets: a single
/// SELECT, over known relations only (profiles, events, identities, features,
/// segments), no DDL, DML, `COPY` or external tables.
///
/// # Errors
/// [`Error::Sql`] (file `query`) or [`Error::Config`] naming what is wrong.
pub async fn run_sql(
    ctx: &SessionContext,
    project: &Project,
    sql: &str,
) -> Result<Vec<RecordBatch>> {
    check(project, sql)?;
    let sql_error = |e: datafusion::error::DataFusionError| Error::Sql {
        file: "query".into(),
        line: None,
        message: e.to_string(),
    };
    ctx.sql_with_options(sql, super::read_only())
        .await
        .map_err(sql_error)?
        .collect()
        .await
        .map_err(sql_error)
}

/// The checks of [`run_sql`] alone, cheap enough to run before evaluating anything.
///
/// # Errors
/// [`Error::Sql`] or [`Error::Config`] naming what is wrong.
pub fn check(project: &Project, sql: &str) -> Result<()> {
    let reads = crate::config::check_query(sql).map_err(|(line, msg)| Error::Sql {
        file: "query".into(),
        line,
        message: msg,
    })?;
    let mut known: Vec<&str> = vec!["profiles", "events", "identities"];
    known.extend(project.models.iter().map(|m| m.id.as_str()));
    for r in &reads {
        if !known.contains(&r.as_str()) {
            return Err(bad(format!(
                "unknown relation `{r}`: {}",
                one_of(r, known.iter().copied())
            )));
        }
    }
    Ok(())
}
