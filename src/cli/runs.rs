//! `audience runs`: the run ledger, newest first; `audience runs show ID`: one run.

use crate::config::Project;
use crate::error::{Error, Result};
use crate::export::ExportManifest;
use crate::run::ledger;
use crate::run::progress::thousands;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub project: super::ProjectArg,
    /// At most this many runs (newest first).
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// JSON instead of text (list: one record per line; show: the whole record).
    #[arg(long)]
    pub json: bool,
    /// `show ID`: one run's whole record.
    #[arg(num_args = 0..=2, value_names = ["show", "ID"])]
    pub show: Vec<String>,
}

pub async fn run(args: Args) -> Result<i32> {
    let project = args.project.load()?;
    match args.show.as_slice() {
        [] => list(&project, args.limit, args.json).await,
        [verb, id] if verb == "show" => show(&project, id, args.json).await,
        other => {
            let mut p = crate::error::Problems::default();
            p.push(
                "audience runs",
                other.join(" "),
                "expected `audience runs [--limit N] [--json]` or `audience runs show ID [--json]`",
            );
            Err(Error::Config(p))
        }
    }
}

async fn list(project: &Project, limit: usize, json: bool) -> Result<i32> {
    let runs = ledger::list(project).await?;
    if json {
        for r in runs.iter().take(limit) {
            println!(
                "{}",
                serde_json::to_string(r).map_err(|e| Error::Internal(e.to_string()))?
            );
        }
        return Ok(0);
    }
    if runs.is_empty() {
        println!("No runs in {}.", project.state.join("runs").display());
        return Ok(0);
    }
    println!(
        "{:<28} {:<9} {:<8} {:<20} {:<24} {:>9} {:>12}",
        "run", "status", "trigger", "as-of", "started", "seconds", "export rows"
    );
    for r in runs.iter().take(limit) {
        let secs: f64 = r.stages.iter().map(|s| s.seconds).sum();
        let rows: u64 = r.exports.iter().map(ExportManifest::rows).sum();
        println!(
            "{:<28} {:<9} {:<8} {:<20} {:<24} {:>9.1} {:>12}",
            r.run_id,
            format!("{:?}", r.status).to_lowercase(),
            format!("{:?}", r.trigger).to_lowercase(),
            r.as_of,
            r.started_at,
            secs,
            thousands(rows)
        );
        if let Some(e) = &r.error {
            println!("    error: {}", e.lines().next().unwrap_or_default());
        }
    }
    if runs.len() > limit {
        println!("({} older runs; --limit to see more)", runs.len() - limit);
    }
    Ok(0)
}

async fn show(project: &Project, id: &str, json: bool) -> Result<i32> {
    let Some(r) = ledger::get(project, id).await? else {
        let known: Vec<String> = ledger::list(project)
            .await?
            .into_iter()
            .map(|r| r.run_id)
            .collect();
        let mut p = crate::error::Problems::default();
        p.push(
            "audience runs show",
            id,
            format!(
                "no run `{id}` in {}: {}",
                project.state.join("runs").display(),
                crate::error::one_of(id, known.iter().map(String::as_str))
            ),
        );
        return Err(Error::Config(p));
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&r).map_err(|e| Error::Internal(e.to_string()))?
        );
        return Ok(0);
    }
    println!("run      {}", r.run_id);
    println!("status   {:?}", r.status);
    println!("trigger  {:?}", r.trigger);
    println!("as-of    {}", r.as_of);
    println!("started  {}  finished {}", r.started_at, r.finished_at);
    println!(
        "config   {}  sql {}",
        &r.config_sha256[..12.min(r.config_sha256.len())],
        &r.sql_sha256[..12.min(r.sql_sha256.len())]
    );
    for i in &r.inputs {
        let bytes: u64 = i.files.iter().map(|f| f.size).sum();
        println!(
            "input    {:<20} {} files, {} bytes",
            i.dataset,
            i.files.len(),
            thousands(bytes)
        );
    }
    for s in &r.stages {
        let counts: Vec<String> = s
            .counts
            .iter()
            .map(|(k, v)| format!("{k}={}", thousands(*v)))
            .collect();
        println!(
            "stage    {:<16} {:>8.2} s  {}",
            s.stage,
            s.seconds,
            counts.join(" ")
        );
    }
    for s in &r.segments {
        println!(
            "segment  {:<28} {:>10} members ({} realized, {} existing, {} exited)",
            s.segment,
            thousands(s.members),
            thousands(s.realized),
            thousands(s.existing),
            thousands(s.exited)
        );
    }
    for e in &r.exports {
        println!(
            "export   {:<28} {:>10} rows in {} files",
            e.destination,
            thousands(e.rows()),
            e.files.len()
        );
    }
    if let Some(e) = &r.error {
        println!("error    {e}");
    }
    Ok(0)
}
