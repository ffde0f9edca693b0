//! Shared plumbing: the DataFusion session, object-store registry and UDFs.
//!
//! Every stage plans its work on a [`SessionContext`] made by [`session`]: the
//! memory limit and parallelism from `[engine]`, every store the project reads
//! or writes registered, and the time functions fixed to the run's as-of.

#[cfg(feature = "distributed")]
pub mod cluster;
pub mod storage;
pub mod udf;
pub mod wide;

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;

use chrono::{DateTime, Utc};
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::disk_manager::DiskManagerBuilder;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::config::{EngineMode, Project};
use crate::error::{Error, Result};
use storage::Location;

/// Cap glibc's malloc arenas at the number of cores (glibc's default is eight
/// per core). The engine allocates on many threads (tokio workers, interning,
/// phone parsing, Parquet encoding), and each extra arena kept its freed
/// memory: the identity stage's peak at 1M people was 1.73 GB with the
/// default, 1.35 GB with two arenas, at the same speed. Call it first thing
/// in `main`, before any thread starts; `MALLOC_ARENA_MAX` in the
/// environment still wins.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        let cores = std::thread::available_parallelism()
            .map_or(2, std::num::NonZero::get)
            .max(2);
        // SAFETY: `mallopt` sets one of the allocator's tunables and has no
        // other effect; it is called before the program starts threads.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, i32::try_from(cores).unwrap_or(i32::MAX));
        }
    }
}

/// End the process quietly when its standard output is closed (SIGPIPE's
/// default), instead of Rust's panic on the failed print: for commands that
/// only print.
pub fn end_on_closed_output() {
    #[cfg(unix)]
    // SAFETY: restores the default disposition of one signal, before the
    // program starts threads.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Give the allocator's free pages back to the system (glibc keeps freed
/// memory below its heap's top resident). For after a phase frees large
/// buffers made of many small allocations, before the next phase's peak.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only returns free memory to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A materialised relation: its schema and batches.
pub type Batches = (SchemaRef, Vec<RecordBatch>);

/// Set on a session whose queries run on a cluster ([`EngineMode::Ballista`]):
/// what embedded mode keeps in one process goes through shared storage under
/// `scratch` (in the project's state location) instead.
#[derive(Debug)]
pub struct Cluster {
    pub scratch: Location,
}

/// The [`Cluster`] settings of a session, when it runs on a cluster.
pub fn cluster(ctx: &SessionContext) -> Option<Arc<Cluster>> {
    ctx.state().config().get_extension::<Cluster>()
}

/// Every store by URL: those registered on the session, else the one
/// [`storage::store_for`] opens from the environment. Cluster processes use it
/// too, so an executor reads and writes the same buckets as the client.
#[derive(Debug, Default)]
pub struct Stores {
    registered: datafusion::execution::object_store::DefaultObjectStoreRegistry,
}

impl datafusion::execution::object_store::ObjectStoreRegistry for Stores {
    fn register_store(
        &self,
        url: &url::Url,
        store: Arc<dyn object_store::ObjectStore>,
    ) -> Option<Arc<dyn object_store::ObjectStore>> {
        self.registered.register_store(url, store)
    }

    fn get_store(
        &self,
        url: &url::Url,
    ) -> datafusion::error::Result<Arc<dyn object_store::ObjectStore>> {
        self.registered.get_store(url).or_else(|_| {
            let store = storage::store_for(url)
                .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
            self.registered.register_store(url, store.clone());
            Ok(store)
        })
    }
}

/// The runtime of a session or cluster process: the memory limit (beyond it,
/// sorts and aggregations spill to local disk) and every store.
///
/// # Errors
/// When DataFusion refuses the runtime settings.
pub fn runtime(
    memory_limit: Option<usize>,
) -> Result<Arc<datafusion::execution::runtime_env::RuntimeEnv>> {
    let mut runtime = RuntimeEnvBuilder::new()
        .with_disk_manager_builder(DiskManagerBuilder::default())
        .with_object_store_registry(Arc::new(Stores::default()));
    if let Some(limit) = memory_limit {
        runtime = runtime.with_memory_pool(Arc::new(FairSpillPool::new(limit)));
    }
    runtime.build_arc().map_err(Error::engine("engine setup"))
}

/// Build a session for `project` whose time functions return `as_of`, on the
/// engine `[engine] mode` names (embedded, or a Ballista cluster).
///
/// # Errors
/// [`Error::Storage`] when a store cannot be configured from the environment;
/// [`Error::Config`] when the cluster cannot be reached (or this build has no
/// distributed mode).
pub async fn session(project: &Project, as_of: DateTime<Utc>) -> Result<SessionContext> {
    let mut config = SessionConfig::new()
        .with_information_schema(false)
        .with_batch_size(8192);
    if let Some(n) = project.engine.target_partitions {
        config = config.with_target_partitions(n);
    }
    // A dataset folder is read at any depth (`ingest` lists it so; the table
    // of a hive-partitioned dataset lists it again).
    config
        .options_mut()
        .execution
        .listing_table_ignore_subdirectory = false;
    let runtime = runtime(project.engine.memory_limit)?;
    let ctx = match &project.engine.mode {
        EngineMode::Embedded => {
            let state = SessionStateBuilder::new()
                .with_config(config)
                .with_runtime_env(runtime)
                .with_default_features()
                .build();
            SessionContext::new_with_state(state)
        }
        EngineMode::Ballista { scheduler } => {
            let scratch = project.state.join(&format!(
                "scratch/{}",
                Utc::now().format("%Y%m%dT%H%M%S%.9fZ")
            ));
            let config = config.with_extension(Arc::new(Cluster { scratch }));
            connect(config, runtime, scheduler.as_deref()).await?
        }
    };
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

#[cfg(feature = "distributed")]
async fn connect(
    config: SessionConfig,
    runtime: Arc<datafusion::execution::runtime_env::RuntimeEnv>,
    scheduler: Option<&str>,
) -> Result<SessionContext> {
    cluster::connect(config, runtime, scheduler).await
}

#[cfg(not(feature = "distributed"))]
async fn connect(
    _config: SessionConfig,
    _runtime: Arc<datafusion::execution::runtime_env::RuntimeEnv>,
    _scheduler: Option<&str>,
) -> Result<SessionContext> {
    let mut p = crate::error::Problems::default();
    p.push(
        crate::config::CONFIG_FILE,
        "engine.mode",
        "this build of audience has no distributed mode: build it with `cargo build --release --features distributed`, or set mode = \"embedded\"",
    );
    Err(Error::Config(p))
}

/// Register the store serving `loc` on the session.
pub fn register_store(ctx: &SessionContext, loc: &Location) -> Result<()> {
    ctx.register_object_store(&loc.store_url(), loc.store()?);
    Ok(())
}
