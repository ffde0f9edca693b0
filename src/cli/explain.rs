//! `audience explain`.

use crate::error::Result;
use crate::identity::explain::explain;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub project: super::ProjectArg,
    /// The identity, `namespace:value` (the value as written or normalised).
    pub identity: String,
    #[command(flatten)]
    pub class: super::ClassArg,
    /// A run id; default: the latest successful run.
    #[arg(long)]
    pub run: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: Args) -> Result<i32> {
    let project = args.project.load()?;
    let class = args.class.class();
    let e = explain(&project, &args.identity, class, args.run.as_deref()).await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&e).map_err(|e| crate::Error::Internal(e.to_string()))?
        );
    } else {
        print!("{e}");
    }
    Ok(0)
}
