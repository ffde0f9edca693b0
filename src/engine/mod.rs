//! Shared plumbing: the DataFusion session, object-store registry and UDFs.
//!
//! Every stage plans its work on a [`SessionContext`] made by [`session`]: the
//! memory limit and parallelism from `[engine]`, every store the project reads
//! or writes registered, and the time functions fixed to the run's as-of.

pub mod storage;
pub mod udf;

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;

use chrono::{DateTime, Utc};
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::disk_manager::DiskManagerBuilder;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::config::Project;
use crate::error::{Error, Result};
use storage::Location;

/// A materialised relation: its schema and batches.
pub type Batches = (SchemaRef, Vec<RecordBatch>);

/// Build a session for `project` whose time functions return `as_of`.
///
/// # Errors
/// [`Error::Storage`] when a store cannot be configured from the environment.
pub fn session(project: &Project, as_of: DateTime<Utc>) -> Result<SessionContext> {
    let mut config = SessionConfig::new()
        .with_information_schema(false)
        .with_batch_size(8192);
    if let Some(n) = project.engine.target_partitions {
        config = config.with_target_partitions(n);
    }
    let mut runtime =
        RuntimeEnvBuilder::new().with_disk_manager_builder(DiskManagerBuilder::default());
    if let Some(limit) = project.engine.memory_limit {
        runtime = runtime.with_memory_pool(Arc::new(FairSpillPool::new(limit)));
    }
    let runtime = runtime.build_arc().map_err(Error::engine("engine setup"))?;
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_default_features()
        .build();
    let ctx = SessionContext::new_with_state(state);
    // Each store is opened with what uses it named, so a missing credential says where it is needed.
    const HINT: &str = "credentials and endpoints come from the environment (AWS_*, GOOGLE_*, AZURE_*) or the cloud's provider chain";
    for d in &project.datasets {
        register_store(&ctx, &d.location).map_err(|e| {
            Error::input(
                &d.name,
                None,
                None,
                format!("cannot open `{}`: {e}; {HINT}", d.location),
            )
        })?;
    }
    for d in &project.destinations {
        register_store(&ctx, &d.location).map_err(|e| Error::Export {
            destination: d.name.clone(),
            message: format!("cannot open `{}`: {e}; {HINT}", d.location),
        })?;
    }
    register_store(&ctx, &project.state)?;
    udf::register_time_functions(&ctx, as_of);
    Ok(ctx)
}

/// Register the store serving `loc` on the session.
pub fn register_store(ctx: &SessionContext, loc: &Location) -> Result<()> {
    ctx.register_object_store(&loc.store_url(), loc.store()?);
    Ok(())
}
