//! The command line: one file per subcommand, all calling the library.

pub mod cluster;
pub mod destinations;
pub mod explain;
pub mod generate;
pub mod profile;
pub mod query;
pub mod run;
pub mod runs;
pub mod schedule;
pub mod segments;
pub mod validate;

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand, ValueEnum};

use crate::error::Result;

/// Batch audience engine: identity stitching, merge policies, SQL segments and
/// full-file exports, over Parquet on local disk or in buckets.
#[derive(Debug, Parser)]
#[command(name = "audience", version, about, long_about = None)]
pub struct Cli {
    /// Log format when stderr is not a terminal (or with --quiet).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "AUDIENCE_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// No progress spinners.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The project folder argument shared by subcommands, and where its queries run.
#[derive(Debug, clap::Args)]
pub struct ProjectArg {
    /// Project folder holding audience.toml.
    #[arg(long, short = 'p', default_value = ".", env = "AUDIENCE_PROJECT")]
    pub project: PathBuf,
    /// Where queries run, instead of `[engine] mode`: `embedded` or `ballista`.
    #[arg(long, env = "AUDIENCE_ENGINE", value_name = "MODE")]
    pub engine: Option<String>,
    /// The Ballista scheduler, `df://host:port`, instead of `[engine] scheduler`
    /// (with `--engine ballista`; without one, an in-process cluster is started).
    #[arg(long, env = "AUDIENCE_SCHEDULER", value_name = "URL")]
    pub scheduler: Option<String>,
}

impl ProjectArg {
    /// Load and validate the project, with the engine chosen on the command line.
    ///
    /// # Errors
    /// What [`crate::config::Project::load`] reports; a bad `--engine`/`--scheduler` (exit 2).
    pub fn load(&self) -> Result<crate::config::Project> {
        let mut project = crate::config::Project::load(&self.project)?;
        if self.engine.is_some() || self.scheduler.is_some() {
            let mode = match (&self.engine, &project.engine.mode) {
                (Some(m), _) => m.as_str(),
                (None, crate::config::EngineMode::Embedded) => "embedded",
                (None, crate::config::EngineMode::Ballista { .. }) => "ballista",
            };
            project.engine.mode = crate::config::EngineMode::parse(mode, self.scheduler.as_deref())
                .map_err(|e| {
                    let mut p = crate::error::Problems::default();
                    p.push("command line", "--engine", e);
                    crate::error::Error::Config(p)
                })?;
        }
        Ok(project)
    }
}

/// `--prospect`: work on prospects instead of customers.
#[derive(Debug, clap::Args)]
pub struct ClassArg {
    /// Prospects instead of customers (a `--policy`, where there is one, decides instead).
    #[arg(long)]
    pub prospect: bool,
}

impl ClassArg {
    pub fn class(&self) -> crate::config::Class {
        if self.prospect {
            crate::config::Class::Prospect
        } else {
            crate::config::Class::Customer
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check audience.toml and the SQL files; print every problem (exit 2 when any).
    Validate(validate::Args),
    /// Run the whole pipeline: ingest, stitch, merge, segments, exports.
    ///
    /// SIGINT or SIGTERM stops it cleanly: the record says `failed`, locks are
    /// released, an open upload is aborted; exit 130 or 143. A second signal
    /// exits at once.
    Run(run::Args),
    /// Write a synthetic project of any size (deterministic for a seed).
    Generate(generate::Args),
    /// Show an identity's profile, all its identities, and the links that joined them.
    Explain(explain::Args),
    /// Show an identity's unified profile: each attribute's winner, its source and time, and the losing values.
    Profile(profile::Args),
    /// Each segment's members and the change since the previous run (latest run, or evaluated at --as-of).
    Segments(segments::Args),
    /// Ad-hoc read-only SQL over the relations segments see, as a table, CSV or JSON lines.
    Query(query::Args),
    /// The destination catalog (kinds, packs, options) and the configured destinations with their last export.
    Destinations(destinations::Args),
    /// The run ledger, newest first; `audience runs show ID` shows one run's record.
    Runs(runs::Args),
    /// A long-lived scheduler: runs destinations at their cron slots (UTC) until SIGTERM/SIGINT.
    ///
    /// A run in progress finishes first; a second signal stops it cleanly.
    Schedule(schedule::Args),
    /// Run a process of a Ballista cluster (scheduler or executor) for `--engine ballista`.
    Cluster(cluster::Args),
}

/// Parse an RFC 3339 time or a date (midnight UTC).
pub fn parse_time(s: &str) -> std::result::Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d
            .and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc())
            .unwrap_or_default());
    }
    Err(format!(
        "`{s}` is not a time: use RFC 3339 (2025-06-30T00:00:00Z) or a date (2025-06-30)"
    ))
}

impl Command {
    /// Whether the command only reads and prints: it may end as soon as its
    /// output is closed (`audience runs | head`), as `cat` does.
    pub fn only_prints(&self) -> bool {
        match self {
            Command::Validate(_)
            | Command::Explain(_)
            | Command::Profile(_)
            | Command::Segments(_)
            | Command::Query(_)
            | Command::Destinations(_)
            | Command::Runs(_) => true,
            Command::Run(a) => a.dry_run,
            Command::Generate(_) | Command::Schedule(_) | Command::Cluster(_) => false,
        }
    }
}

/// For a command that writes nothing: on SIGINT or SIGTERM, remove this
/// process's temporary files (an in-process cluster's shuffle directory) and
/// exit with 128 + the signal's number. Needs a Tokio runtime.
///
/// # Errors
/// [`crate::error::Error::Internal`] when the handlers cannot be installed.
pub fn exit_on_signal() -> Result<()> {
    use crate::run::interrupt::Interrupt;
    let stop = Interrupt::listen()?;
    tokio::spawn(async move {
        let sig = stop.raised_signal().await;
        #[cfg(feature = "distributed")]
        crate::engine::cluster::remove_shuffle_dirs();
        std::process::exit(sig.exit_code());
    });
    Ok(())
}

/// Run the parsed command; returns the exit code.
pub async fn dispatch(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Validate(a) => validate::run(a),
        Command::Run(a) => run::run(a, cli.quiet).await,
        Command::Generate(a) => generate::run(a, cli.quiet),
        Command::Explain(a) => explain::run(a).await,
        Command::Profile(a) => profile::run(a).await,
        Command::Segments(a) => segments::run(a).await,
        Command::Query(a) => query::run(a).await,
        Command::Destinations(a) => destinations::run(a).await,
        Command::Runs(a) => runs::run(a).await,
        Command::Schedule(a) => schedule::run(a, cli.quiet).await,
        Command::Cluster(a) => cluster::run(a).await,
    }
}
