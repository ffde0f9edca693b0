//! `audience run`.

use chrono::{DateTime, Utc};

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
    /// Export only this destination (repeatable). Default: every destination.
    #[arg(long = "destination", value_name = "NAME")]
    pub destinations: Vec<String>,
    /// Evaluate only this segment (repeatable) and what it reads; export only
    /// its files. Such a run never becomes the membership baseline of another.
    #[arg(long = "segment", value_name = "ID")]
    pub segments: Vec<String>,
    /// Run the destinations whose schedule has a slot since their last
    /// successful export (missed slots run once); nothing when none is due.
    /// For cron, Kubernetes CronJobs or Airflow.
    #[arg(long, conflicts_with = "destinations")]
    pub due: bool,
    /// Validate, evaluate and prepare every export, then print the segments and
    /// the files a run would write with their rows; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Exit with code 1 (after a complete run) when any identity value was
    /// rejected (invalid or blocked), so an orchestrator can flag dirty inputs.
    #[arg(long)]
    pub fail_on_rejected: bool,
    /// With --dry-run: what the run would change against the last successful
    /// run (profiles merged or split, segment entries and exits, export rows).
    #[arg(long, requires = "dry_run")]
    pub compare_to_last: bool,
    /// With --dry-run: one JSON document instead of text.
    #[arg(long, requires = "dry_run")]
    pub json: bool,
    /// The clock for `--due` (and the default as-of): for tests and replays. Default: now.
    #[arg(long, value_parser = super::parse_time, requires = "due")]
    pub now: Option<DateTime<Utc>>,
}

pub async fn run(args: Args, quiet: bool) -> Result<i32> {
    let project = args.project.load()?;
    let state = project.state.display();
    let mut destinations = args.destinations.clone();
    let mut trigger = crate::run::Trigger::Manual;
    let now = args.now.unwrap_or_else(Utc::now);
    if args.due {
        let statuses = crate::run::schedule::statuses(&project, now).await?;
        destinations = statuses
            .iter()
            .filter(|s| s.due)
            .map(|s| s.destination.clone())
            .collect();
        if destinations.is_empty() {
            let next = statuses
                .iter()
                .filter_map(|s| s.next.map(|n| (n, &s.destination)))
                .min();
            match next {
                Some((t, d)) => println!("nothing due; next: {d} at {}", t.to_rfc3339()),
                None => println!("nothing due; no destination has a cron schedule"),
            }
            return Ok(0);
        }
        trigger = crate::run::Trigger::Due;
    }
    let mut pipeline = Pipeline::new(project)
        .with_progress(Progress::new(quiet))
        .with_trigger(trigger);
    if !destinations.is_empty() {
        pipeline = pipeline.with_destinations(&destinations)?;
    }
    if !args.segments.is_empty() {
        pipeline = pipeline.with_segments(&args.segments)?;
    }
    match (args.as_of, args.now) {
        (Some(t), _) | (None, Some(t)) => pipeline = pipeline.with_as_of(t),
        (None, None) => {}
    }

    if let Some(id) = &args.run_id {
        pipeline = pipeline.with_run_id(id)?;
    }
    if args.dry_run {
        return dry_run(pipeline, args.json, args.compare_to_last).await;
    }
    // SIGINT/SIGTERM stop the run cleanly from here on (a dry run writes nothing).
    let pipeline = pipeline.with_interrupt(crate::run::interrupt::Interrupt::listen()?);
    let record = pipeline.run().await?;
    // The summary of a run that is done: a closed stdout (`| head`) is no error.
    let mut summary = format!("run {} succeeded (as-of {})\n", record.run_id, record.as_of);
    let mut segments: Vec<_> = record.segments.iter().collect();
    segments.sort_by(|a, b| a.segment.cmp(&b.segment));
    for s in segments {
        summary.push_str(&format!(
            "  segment {:<28} {:>10} members\n",
            s.segment,
            thousands(s.members)
        ));
    }
    for e in &record.exports {
        summary.push_str(&format!(
            "  export  {:<28} {:>10} rows in {} files\n",
            e.destination,
            thousands(e.rows()),
            e.files.len()
        ));
    }
    summary.push_str(&format!(
        "  record  {state}/runs/{}/run.json\n",
        record.run_id
    ));
    let _ = std::io::Write::write_all(&mut std::io::stdout(), summary.as_bytes());
    let rejected: u64 = record.rejections.iter().map(|r| r.count).sum();
    if args.fail_on_rejected && rejected > 0 {
        eprintln!(
            "warning: {} identity values were rejected (see the run record's `rejections` and rejected_sample.jsonl beside it); exiting with 1 as --fail-on-rejected asks",
            thousands(rejected)
        );
        return Ok(1);
    }
    Ok(0)
}

async fn dry_run(pipeline: Pipeline, json: bool, compare: bool) -> Result<i32> {
    let mut plan = pipeline.dry_run(compare).await?;
    plan.segments.sort_by(|a, b| a.segment.cmp(&b.segment));
    if let Some(c) = &mut plan.compared {
        c.segments.sort_by(|a, b| a.segment.cmp(&b.segment));
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&plan)
                .map_err(|e| crate::error::Error::Internal(e.to_string()))?
        );
        return Ok(0);
    }
    println!("dry run (as-of {}): nothing was written", plan.as_of);
    for s in &plan.segments {
        println!(
            "  segment {:<28} {:>10} members ({} realized, {} exited since the baseline run)",
            s.segment,
            thousands(s.members),
            thousands(s.realized),
            thousands(s.exited)
        );
    }
    for e in &plan.exports {
        println!("  export  {} → {}", e.destination, e.url);
        for f in &e.files {
            println!(
                "          would write {:<48} {:>10} rows",
                f.path,
                thousands(f.rows)
            );
        }
        for s in &e.segments {
            let c = &s.counts;
            let skipped: u64 = c.skipped_mandatory.values().sum();
            if c.suppressed_consent + skipped + c.deduplicated + c.truncated + c.excluded_oversized
                > 0
            {
                println!(
                    "          {}: {} suppressed (consent), {} missing mandatory fields, {} duplicates, {} truncated, {} oversized",
                    s.segment,
                    c.suppressed_consent,
                    skipped,
                    c.deduplicated,
                    c.truncated,
                    c.excluded_oversized
                );
            }
        }
    }
    match (&plan.compared, compare) {
        (Some(c), _) => print_comparison(c),
        (None, true) => println!("  no successful run to compare with"),
        (None, false) => {}
    }
    Ok(0)
}

fn print_comparison(c: &crate::run::Comparison) {
    println!("  against the last successful run {}:", c.run_id);
    println!(
        "    profiles {} → {}: {} would gather identities of several, {} would split",
        thousands(c.profiles_before),
        thousands(c.profiles_now),
        thousands(c.profiles_merged),
        thousands(c.profiles_split)
    );
    for s in &c.segments {
        let before = s
            .members_before
            .map_or_else(|| "new".to_string(), thousands);
        println!(
            "    segment {:<28} {:>10} → {:>10} members (+{} −{})",
            s.segment,
            before,
            thousands(s.members_now),
            thousands(s.entered),
            thousands(s.exited)
        );
    }
    for e in &c.exports {
        let before = e.rows_before.map_or_else(|| "new".to_string(), thousands);
        println!(
            "    export  {:<28} {:>10} → {:>10} rows",
            e.destination,
            before,
            thousands(e.rows_now)
        );
    }
}
