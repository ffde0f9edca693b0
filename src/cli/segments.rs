//! `audience segments`: each segment's members and the change since the
//! previous run, from the latest run's record, or evaluated now at `--as-of`.

use chrono::{DateTime, Utc};

use crate::config::Project;
use crate::error::{Error, Problems, Result};
use crate::run::SegmentCount;
use crate::segment::history;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub project: super::ProjectArg,
    /// Evaluate the segments at this as-of (nothing is written) and compare
    /// with the previous successful run before it; default: show the latest run.
    #[arg(long, value_parser = super::parse_time)]
    pub as_of: Option<DateTime<Utc>>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, serde::Serialize)]
struct Report {
    /// The run shown, or `null` when evaluated with `--as-of`.
    run_id: Option<String>,
    as_of: String,
    /// The run the changes are relative to.
    baseline: Option<String>,
    segments: Vec<SegmentCount>,
}

pub async fn run(args: Args) -> Result<i32> {
    let project = args.project.load()?;
    let report = match args.as_of {
        None => latest(&project).await?,
        Some(as_of) => {
            let ev = crate::run::evaluate(&project, as_of).await?;
            let baseline = history::baseline(&project, as_of, "").await?;
            let (_, counts) = history::statuses(&ev.memberships, baseline.as_ref().map(|(_, m)| m));
            Report {
                run_id: None,
                as_of: as_of.to_rfc3339(),
                baseline: baseline.map(|(id, _)| id),
                segments: SegmentCount::all(&ev.memberships, &counts),
            }
        }
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| Error::Internal(e.to_string()))?
        );
        return Ok(0);
    }
    match &report.run_id {
        Some(id) => println!("run {id} (as-of {})", report.as_of),
        None => println!("evaluated at as-of {} (nothing written)", report.as_of),
    }
    match &report.baseline {
        Some(b) => println!("changes since run {b}"),
        None => println!("no earlier successful run: every member is new"),
    }
    let w = report
        .segments
        .iter()
        .map(|s| s.segment.len())
        .max()
        .unwrap_or(7)
        .max(7);
    println!(
        "{:<w$}  {:<8}  {:>10}  {:>10}  {:>10}  {:>10}",
        "segment", "class", "members", "realized", "existing", "exited"
    );
    for s in &report.segments {
        println!(
            "{:<w$}  {:<8}  {:>10}  {:>10}  {:>10}  {:>10}",
            s.segment, s.class, s.members, s.realized, s.existing, s.exited
        );
    }
    Ok(0)
}

async fn latest(project: &Project) -> Result<Report> {
    let Some(run_id) = crate::identity::store::latest_run(project).await? else {
        let mut p = Problems::default();
        p.push(
            "segments",
            "",
            "no successful run yet: run `audience run`, or pass --as-of to evaluate now",
        );
        return Err(Error::Config(p));
    };
    let loc = crate::identity::store::run_dir(project, &run_id).join("run.json");
    let bytes = crate::identity::store::get(&loc)
        .await?
        .ok_or_else(|| Error::Internal(format!("{} is missing", loc.display())))?;
    let v: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Internal(format!("{}: {e}", loc.display())))?;
    let segments: Vec<SegmentCount> = serde_json::from_value(v["segments"].clone())
        .map_err(|e| Error::Internal(format!("{}: {e}", loc.display())))?;
    Ok(Report {
        run_id: Some(run_id),
        as_of: v["as_of"].as_str().unwrap_or_default().to_string(),
        baseline: v["membership_baseline"].as_str().map(str::to_string),
        segments,
    })
}
