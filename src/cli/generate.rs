//! `audience generate`.

use std::path::PathBuf;

use chrono::{DateTime, Utc};

use crate::error::Result;
use crate::generate::{GenerateOptions, generate};
use crate::run::progress::{Progress, thousands};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Number of people.
    #[arg(long)]
    pub people: u64,
    /// Output folder; its audience.toml, sql/ files and data/ sets are
    /// replaced once the whole project is written (until then it is built in
    /// a hidden folder inside, and a stopped or failed generation leaves the
    /// folder as it was).
    #[arg(long)]
    pub out: PathBuf,
    /// Random seed: the same seed and size give the same files.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Average events (web events and purchases) per person.
    #[arg(long, default_value_t = 10)]
    pub events_per_person: u32,
    /// End of the generated year of activity (exclusive), RFC 3339 or a date.
    #[arg(long, value_parser = super::parse_time, default_value = "2025-07-01")]
    pub end: DateTime<Utc>,
}

pub fn run(args: Args, quiet: bool) -> Result<i32> {
    let opts = GenerateOptions {
        people: args.people,
        out: args.out.clone(),
        seed: args.seed,
        events_per_person: args.events_per_person,
        end: args.end,
    };
    // SIGINT or SIGTERM stops after the current block of people, and the
    // output folder is left as it was.
    let stop = crate::run::interrupt::Interrupt::listen()?;
    let stage = Progress::new(quiet).stage("generate");
    let summary = generate(&opts, |n| {
        stage.update(format!("{} people", thousands(n)));
        stop.check()
    })?;
    stage.finish(&format!("{} people", thousands(summary.people)));
    for (name, rows, files) in &summary.datasets {
        println!(
            "  {name:<12} {:>12} rows in {files} files",
            thousands(*rows)
        );
    }
    println!("project written to {}", args.out.display());
    Ok(0)
}
