//! `audience profile`.

use chrono::{DateTime, Utc};

use crate::error::Result;
use crate::merge::profile::profile;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub project: super::ProjectArg,
    /// An identity of the profile, `namespace:value` (as written or normalised).
    pub identity: String,
    /// The merge policy (default: the class's default policy).
    #[arg(long)]
    pub policy: Option<String>,
    #[command(flatten)]
    pub class: super::ClassArg,
    /// Resolve the profile as of this time (RFC 3339 or a date); default: now.
    #[arg(long, value_parser = super::parse_time)]
    pub as_of: Option<DateTime<Utc>>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: Args) -> Result<i32> {
    let project = args.project.load()?;
    let class = args.class.class();
    let report = profile(
        &project,
        &args.identity,
        class,
        args.policy.as_deref(),
        args.as_of.unwrap_or_else(Utc::now),
    )
    .await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report)
                .map_err(|e| crate::Error::Internal(e.to_string()))?
        );
    } else {
        print!("{report}");
    }
    Ok(0)
}
