//! `audience query "SELECT ..."`: ad-hoc read-only SQL over the relations a
//! segment sees, for people writing segments.

use chrono::{DateTime, Utc};
use datafusion::arrow::record_batch::RecordBatch;

use crate::error::{Error, Result};
use crate::segment::adhoc;

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
    #[command(flatten)]
    pub class: super::ClassArg,
    /// The as-of time (RFC 3339 or a date); default: now.
    #[arg(long, value_parser = super::parse_time)]
    pub as_of: Option<DateTime<Utc>>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

pub async fn run(args: Args) -> Result<i32> {
    let project = args.project.load()?;
    let class = args.class.class();
    let policy = adhoc::policy_name(&project, args.policy.as_deref(), class)?;
    // Cheap checks first: a bad query fails before the run is evaluated.
    adhoc::check(&project, &args.sql)?;
    let ctx = adhoc::prepare(&project, &policy, args.as_of.unwrap_or_else(Utc::now)).await?;
    let batches = adhoc::run_sql(&ctx, &project, &args.sql).await?;
    print(&batches, args.format)?;
    Ok(0)
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
