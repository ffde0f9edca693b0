//! `audience validate`.

use crate::error::Result;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub project: super::ProjectArg,
}

pub fn run(args: Args) -> Result<i32> {
    let project = args.project.load()?;
    let segments = project.segments().count();
    println!(
        "{}: ok ({} namespaces, {} datasets, {} merge policies, {} features, {} segments, {} destinations)",
        project.root.display(),
        project.namespaces.len(),
        project.datasets.len(),
        project.policies.len(),
        project.models.len() - segments,
        segments,
        project.destinations.len()
    );
    Ok(0)
}
