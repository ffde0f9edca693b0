//! `audience query "SELECT ..."`: ad-hoc read-only SQL over the relations a
//! segment sees, for people writing segments.

use chrono::{DateTime, Utc};
use datafusion::arrow::record_batch::RecordBatch;

use crate::config::{Class, Project};
use crate::error::{Error, Problems, Result, one_of};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub project: super::ProjectArg,
    /// One read-only SELECT over profiles, events, identities, features and segments.
    pub sql: String,
    /// The merge policy whose profiles the query reads (default: the class's default).
    #[arg(long)]
    pub policy: Option<String>,
    /// Read prospects instead of customers (ignored with --policy).
    #[arg(long)]
    pub prospect: bool,
    /// The as-of time (RFC 3339 or a date); default: now.
    #[arg(long, value_parser = super::parse_time)]
    pub as_of: Option<DateTime<Utc>>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

fn bad(msg: String) -> Error {
    let mut p = Problems::default();
    p.push("query", "", msg);
    Error::Config(p)
}

pub async fn run(args: Args) -> Result<i32> {
    let project = Project::load(&args.project.project)?;
    // The same checks as a segment file: one read-only query over known relations.
    let reads = crate::config::check_query(&args.sql).map_err(|(line, msg)| Error::Sql {
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
    let class = if args.prospect {
        Class::Prospect
    } else {
        Class::Customer
    };
    let policy = match &args.policy {
        Some(p) => project
            .policy(p)
            .ok_or_else(|| {
                bad(format!(
                    "unknown merge policy `{p}`: {}",
                    one_of(p, project.policies.iter().map(|x| x.name.as_str()))
                ))
            })?
            .clone(),
        None => project
            .default_policy(class)
            .ok_or_else(|| bad(format!("no {} merge policy", class.as_str())))?
            .clone(),
    };
    let batches = query(
        &project,
        &args.sql,
        &policy.name,
        args.as_of.unwrap_or_else(Utc::now),
    )
    .await?;
    print(&batches, args.format)?;
    Ok(0)
}

/// Evaluate the run at `as_of` (nothing written) and run `sql` over `policy`'s relations.
///
/// # Errors
/// [`Error::Sql`] (file `query`) when the query fails; what a run reports otherwise.
pub async fn query(
    project: &Project,
    sql: &str,
    policy: &str,
    as_of: DateTime<Utc>,
) -> Result<Vec<RecordBatch>> {
    let mut ev = crate::run::evaluate(project, as_of).await?;
    let class = project
        .policy(policy)
        .map(|p| p.class)
        .unwrap_or(Class::Customer);
    let mut group = match ev.groups.remove(policy) {
        Some(g) => g,
        None => crate::run::build_group(&ev.ctx, project, &ev.datasets, class, policy).await?,
    };
    crate::segment::activate_all(&ev.ctx, project, &mut group).await?;
    let sql_error = |e: datafusion::error::DataFusionError| Error::Sql {
        file: "query".into(),
        line: None,
        message: e.to_string(),
    };
    ev.ctx
        .sql_with_options(sql, crate::segment::read_only())
        .await
        .map_err(sql_error)?
        .collect()
        .await
        .map_err(sql_error)
}

fn print(batches: &[RecordBatch], format: Format) -> Result<()> {
    let io = |e: datafusion::arrow::error::ArrowError| Error::Internal(e.to_string());
    match format {
        Format::Table => {
            println!(
                "{}",
                datafusion::arrow::util::pretty::pretty_format_batches(batches).map_err(io)?
            );
        }
        Format::Csv => {
            let mut w = datafusion::arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(std::io::stdout());
            for b in batches {
                w.write(b).map_err(io)?;
            }
        }
        Format::Json => {
            let mut w = datafusion::arrow::json::LineDelimitedWriter::new(std::io::stdout());
            for b in batches {
                w.write(b).map_err(io)?;
            }
            w.finish().map_err(io)?;
        }
    }
    Ok(())
}
