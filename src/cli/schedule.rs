//! `audience schedule`: a long-lived process that runs destinations at their
//! cron slots (UTC). It re-reads the project before each check, so a saved
//! config takes effect at its next slot and never runs an export by itself.
//! SIGINT or SIGTERM while waiting stops it at once; during a run, the run
//! finishes (and publishes, or fails cleanly) and then the process stops. A
//! second signal during that run stops the run as `audience run` stops on its
//! first (see [`crate::run::interrupt`]), and then the process.

use std::time::Duration;

use chrono::Utc;

use crate::error::{Error, Result};
use crate::run::interrupt::{Interrupt, Signal};
use crate::run::progress::Progress;
use crate::run::{Pipeline, Trigger, schedule};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub project: super::ProjectArg,
    /// Longest wait between checks, in seconds (a changed config is picked up by then).
    #[arg(long, default_value_t = 60)]
    pub poll: u64,
    /// A fixed clock (for tests and replays): every check happens at this time
    /// and runs take it as their as-of. Default: the wall clock.
    #[arg(long, value_parser = super::parse_time)]
    pub now: Option<chrono::DateTime<Utc>>,
}

pub async fn run(args: Args, quiet: bool) -> Result<i32> {
    use tokio::signal::unix::{SignalKind, signal};
    let io = |e: std::io::Error| Error::Internal(format!("installing signal handlers: {e}"));
    let mut term = signal(SignalKind::terminate()).map_err(io)?;
    let mut int = signal(SignalKind::interrupt()).map_err(io)?;
    tracing::info!(project = %args.project.project.display(), "scheduler started");
    // A signal came during a run: stop once it ends.
    let mut stop = false;
    loop {
        let now = args.now.unwrap_or_else(Utc::now);
        let mut wait = Duration::from_secs(args.poll.max(1));
        match args.project.load() {
            Err(e) => {
                tracing::error!(error = %e, "project invalid; nothing runs until it is fixed")
            }
            Ok(project) => {
                let statuses = schedule::statuses(&project, now).await?;
                let due: Vec<String> = statuses
                    .iter()
                    .filter(|s| s.due)
                    .map(|s| s.destination.clone())
                    .collect();
                if !due.is_empty() {
                    tracing::info!(destinations = ?due, "running due destinations");
                    let mut pipeline = Pipeline::new(project);
                    if let Some(t) = args.now {
                        pipeline = pipeline.with_as_of(t);
                    }
                    let interrupt = Interrupt::default();
                    let pipeline = pipeline
                        .with_progress(Progress::new(quiet))
                        .with_trigger(Trigger::Schedule)
                        .with_destinations(&due)?
                        .with_interrupt(interrupt.clone());
                    let id = pipeline.run_id().to_string();
                    let run = pipeline.run();
                    tokio::pin!(run);
                    let result = loop {
                        let sig = tokio::select! {
                            r = &mut run => break r,
                            _ = term.recv() => Signal::Term,
                            _ = int.recv() => Signal::Int,
                        };
                        if stop {
                            tracing::warn!(run = %id, signal = sig.name(), "stopping the run in progress");
                            interrupt.raise(sig);
                        } else {
                            stop = true;
                            tracing::warn!(run = %id, signal = sig.name(), "the scheduler stops after the run in progress (a second signal stops the run)");
                        }
                    };
                    match result {
                        Ok(_) => tracing::info!(run = %id, "scheduled run succeeded"),
                        Err(e) => tracing::error!(run = %id, error = %e, "scheduled run failed"),
                    }
                    if stop {
                        break;
                    }
                    wait = Duration::ZERO; // check again at once: a slot may have passed
                } else if let Some(next) = statuses.iter().filter_map(|s| s.next).min() {
                    let until = (next - now).to_std().unwrap_or(Duration::ZERO);
                    wait = wait.min(until + Duration::from_millis(200));
                }
            }
        }
        tokio::select! {
            biased; // a signal wins over the next check
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    tracing::info!("scheduler stopped");
    println!("scheduler stopped");
    Ok(0)
}
