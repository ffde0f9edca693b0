//! `audience run`.

use chrono::{DateTime, Utc};

use crate::config::Project;
use crate::error::Result;
use crate::run::Pipeline;
use crate::run::progress::{Progress, thousands};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub project: super::ProjectArg,
    /// The as-of time every relative window uses (RFC 3339 or a date). Default: now, to the second.
    #[arg(long, value_parser = super::parse_time)]
    pub as_of: Option<DateTime<Utc>>,
    /// Re-use a run id: re-running it rewrites the same files. Default: a new id.
    #[arg(long)]
    pub run_id: Option<String>,
}

pub async fn run(args: Args, quiet: bool) -> Result<i32> {
    let project = Project::load(&args.project.project)?;
    let state = project.state.display();
    let mut pipeline = Pipeline::new(project).with_progress(Progress::new(quiet));
    if let Some(t) = args.as_of {
        pipeline = pipeline.with_as_of(t);
    }
    if let Some(id) = &args.run_id {
        pipeline = pipeline.with_run_id(id)?;
    }
    let record = pipeline.run().await?;
    println!("run {} succeeded (as-of {})", record.run_id, record.as_of);
    let mut segments: Vec<_> = record.segments.iter().collect();
    segments.sort_by(|a, b| a.segment.cmp(&b.segment));
    for s in segments {
        println!(
            "  segment {:<28} {:>10} members",
            s.segment,
            thousands(s.members)
        );
    }
    for e in &record.exports {
        let rows: u64 = e.files.iter().map(|f| f.rows).sum();
        println!(
            "  export  {:<28} {:>10} rows in {} files",
            e.destination,
            thousands(rows),
            e.files.len()
        );
    }
    println!("  record  {state}/runs/{}/run.json", record.run_id);
    Ok(0)
}
