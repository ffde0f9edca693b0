//! Distributed mode: the same pipeline on a DataFusion Ballista cluster.
//!
//! A run's session is a Ballista client ([`connect`]): every query plan goes to
//! the scheduler, which splits it into stages that executors run. What the
//! stock Ballista processes cannot know is carried by our codecs ([`Codec`],
//! set on the client, the scheduler and every executor):
//!
//! * our functions travel with their definition: the as-of time functions
//!   with their value, the profile functions with the URL of the run's identity
//!   outputs (an executor rebuilds the identity lookup from them on first use,
//!   like a broadcast), the merge aggregates with their slots;
//! * in-memory tables (profile skeletons, merged profiles, features and
//!   segment results) travel inside the plan as Arrow IPC;
//! * a dataset's table travels as its list of files and partition values.
//!
//! Stores are opened from the URL in every process ([`super::Stores`]), with
//! credentials from that process's environment. Our scheduler and executor
//! entry points are [`scheduler`] and [`executor`] (`audience cluster ...`).

use std::net::SocketAddr;
use std::sync::Arc;

use ballista::prelude::{SessionConfigExt, SessionContextExt};
use ballista_core::serde::{BallistaLogicalExtensionCodec, BallistaPhysicalExtensionCodec};
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::TableProvider;
use datafusion::common::{DataFusionError, TableReference};
use datafusion::datasource::MemTable;
use datafusion::error::Result as DfResult;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::execution::{SessionState, SessionStateBuilder, TaskContext};
use datafusion::logical_expr::{AggregateUDF, Extension, LogicalPlan, ScalarUDF};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};

use crate::error::{Error, Result};

/// Our payloads start with this, so they are never mistaken for Ballista's.
const MAGIC: &[u8] = b"AUDIENCE1";

/// What our codec writes for a function or table (JSON after [`MAGIC`]; a
/// table's batches follow as Arrow IPC streams, one per partition).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
enum Payload {
    Fixed(super::udf::FixedSpec),
    Profile(crate::identity::anchor::Spec),
    Winners {
        name: String,
        slots: Vec<crate::merge::winners::Slot>,
    },
    /// A memory table: the IPC length of each partition.
    Table {
        partitions: Vec<u64>,
    },
    /// A dataset's files ([`crate::ingest::files::ExactFiles`]).
    Files(crate::ingest::files::FilesSpec),
}

fn write_payload(p: &Payload, buf: &mut Vec<u8>) -> DfResult<()> {
    buf.extend_from_slice(MAGIC);
    let json = serde_json::to_vec(p).map_err(|e| DataFusionError::External(Box::new(e)))?;
    buf.extend_from_slice(&(json.len() as u64).to_le_bytes());
    buf.extend_from_slice(&json);
    Ok(())
}

/// Our payload and the bytes after it, or `None` when `buf` is not ours.
fn read_payload(buf: &[u8]) -> DfResult<Option<(Payload, &[u8])>> {
    let Some(rest) = buf.strip_prefix(MAGIC) else {
        return Ok(None);
    };
    let bad = || DataFusionError::Internal("truncated audience plan payload".into());
    let (len, rest) = rest.split_first_chunk::<8>().ok_or_else(bad)?;
    let len = usize::try_from(u64::from_le_bytes(*len)).map_err(|_| bad())?;
    let (json, rest) = rest.split_at_checked(len).ok_or_else(bad)?;
    let p = serde_json::from_slice(json).map_err(|e| DataFusionError::External(Box::new(e)))?;
    Ok(Some((p, rest)))
}

fn encode_udf(f: &ScalarUDF, buf: &mut Vec<u8>) -> DfResult<()> {
    if let Some(spec) = crate::identity::anchor::spec_of(f) {
        write_payload(&Payload::Profile(spec.clone()), buf)
    } else if let Some(spec) = super::udf::fixed_spec_of(f) {
        write_payload(&Payload::Fixed(spec), buf)
    } else {
        Ok(())
    }
}

fn decode_udf(name: &str, buf: &[u8]) -> DfResult<Option<Arc<ScalarUDF>>> {
    Ok(match read_payload(buf)? {
        Some((Payload::Profile(spec), _)) => {
            Some(Arc::new(crate::identity::anchor::from_spec(spec)))
        }
        Some((Payload::Fixed(spec), _)) => Some(Arc::new(super::udf::from_fixed_spec(&spec))),
        Some(_) => {
            return Err(DataFusionError::Internal(format!(
                "{name}: the plan carries a payload that is not a scalar function"
            )));
        }
        None => None,
    })
}

fn encode_udaf(f: &AggregateUDF, buf: &mut Vec<u8>) -> DfResult<()> {
    match crate::merge::winners::spec_of(f) {
        Some((name, slots)) => write_payload(&Payload::Winners { name, slots }, buf),
        None => Ok(()),
    }
}

fn decode_udaf(name: &str, buf: &[u8]) -> DfResult<Option<Arc<AggregateUDF>>> {
    Ok(match read_payload(buf)? {
        Some((Payload::Winners { name, slots }, _)) => {
            Some(Arc::new(crate::merge::winners::udaf(&name, slots)))
        }
        Some(_) => {
            return Err(DataFusionError::Internal(format!(
                "{name}: the plan carries a payload that is not an aggregate"
            )));
        }
        None => None,
    })
}

fn encode_table(t: &MemTable, buf: &mut Vec<u8>) -> DfResult<()> {
    let schema = t.schema();
    let mut streams = Vec::with_capacity(t.batches.len());
    for part in &t.batches {
        let batches = part.try_read().map_err(|_| {
            DataFusionError::Internal("a memory table is being written while planned".into())
        })?;
        let mut ipc = Vec::new();
        {
            let mut w = StreamWriter::try_new(&mut ipc, &schema)?;
            for b in batches.iter() {
                w.write(b)?;
            }
            w.finish()?;
        }
        streams.push(ipc);
    }
    let partitions = streams.iter().map(|s| s.len() as u64).collect();
    write_payload(&Payload::Table { partitions }, buf)?;
    for s in streams {
        buf.extend_from_slice(&s);
    }
    Ok(())
}

fn decode_table(
    buf: &[u8],
    schema: datafusion::arrow::datatypes::SchemaRef,
) -> DfResult<Option<Arc<dyn TableProvider>>> {
    let (partitions, mut rest) = match read_payload(buf)? {
        Some((Payload::Table { partitions }, rest)) => (partitions, rest),
        Some((Payload::Files(spec), _)) => {
            let files = crate::ingest::files::ExactFiles::from_spec(spec, &schema)?;
            return Ok(Some(Arc::new(files)));
        }
        _ => return Ok(None),
    };
    let mut parts: Vec<Vec<RecordBatch>> = Vec::with_capacity(partitions.len());
    for len in partitions {
        let (ipc, tail) = rest
            .split_at_checked(len as usize)
            .ok_or_else(|| DataFusionError::Internal("truncated memory table in plan".into()))?;
        rest = tail;
        let reader = StreamReader::try_new(std::io::Cursor::new(ipc), None)?;
        parts.push(reader.collect::<std::result::Result<_, _>>()?);
    }
    Ok(Some(Arc::new(MemTable::try_new(schema, parts)?)))
}

/// Ballista's codecs, plus our functions and in-memory tables (see the module doc).
#[derive(Debug, Default)]
pub struct Codec {
    logical: BallistaLogicalExtensionCodec,
    physical: BallistaPhysicalExtensionCodec,
}

impl LogicalExtensionCodec for Codec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[LogicalPlan],
        ctx: &TaskContext,
    ) -> DfResult<Extension> {
        self.logical.try_decode(buf, inputs, ctx)
    }
    fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> DfResult<()> {
        self.logical.try_encode(node, buf)
    }
    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        table_ref: &TableReference,
        schema: datafusion::arrow::datatypes::SchemaRef,
        ctx: &TaskContext,
    ) -> DfResult<Arc<dyn TableProvider>> {
        match decode_table(buf, schema.clone())? {
            Some(t) => Ok(t),
            None => self
                .logical
                .try_decode_table_provider(buf, table_ref, schema, ctx),
        }
    }
    fn try_encode_table_provider(
        &self,
        table_ref: &TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> DfResult<()> {
        if let Some(t) = node.downcast_ref::<MemTable>() {
            encode_table(t, buf)
        } else if let Some(f) = node.downcast_ref::<crate::ingest::files::ExactFiles>() {
            write_payload(&Payload::Files(f.spec()), buf)
        } else {
            self.logical.try_encode_table_provider(table_ref, node, buf)
        }
    }
    fn try_decode_file_format(
        &self,
        buf: &[u8],
        ctx: &TaskContext,
    ) -> DfResult<Arc<dyn datafusion::datasource::file_format::FileFormatFactory>> {
        self.logical.try_decode_file_format(buf, ctx)
    }
    fn try_encode_file_format(
        &self,
        buf: &mut Vec<u8>,
        node: Arc<dyn datafusion::datasource::file_format::FileFormatFactory>,
    ) -> DfResult<()> {
        self.logical.try_encode_file_format(buf, node)
    }
    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> DfResult<Arc<ScalarUDF>> {
        match decode_udf(name, buf)? {
            Some(f) => Ok(f),
            None => self.logical.try_decode_udf(name, buf),
        }
    }
    fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> DfResult<()> {
        encode_udf(node, buf)
    }
    fn try_decode_udaf(&self, name: &str, buf: &[u8]) -> DfResult<Arc<AggregateUDF>> {
        match decode_udaf(name, buf)? {
            Some(f) => Ok(f),
            None => self.logical.try_decode_udaf(name, buf),
        }
    }
    fn try_encode_udaf(&self, node: &AggregateUDF, buf: &mut Vec<u8>) -> DfResult<()> {
        encode_udaf(node, buf)
    }
}

impl PhysicalExtensionCodec for Codec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.physical.try_decode(buf, inputs, ctx, converter)
    }
    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<()> {
        self.physical.try_encode(node, buf, converter)
    }
    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> DfResult<Arc<ScalarUDF>> {
        match decode_udf(name, buf)? {
            Some(f) => Ok(f),
            None => self.physical.try_decode_udf(name, buf),
        }
    }
    fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> DfResult<()> {
        encode_udf(node, buf)
    }
    fn try_decode_udaf(&self, name: &str, buf: &[u8]) -> DfResult<Arc<AggregateUDF>> {
        match decode_udaf(name, buf)? {
            Some(f) => Ok(f),
            None => self.physical.try_decode_udaf(name, buf),
        }
    }
    fn try_encode_udaf(&self, node: &AggregateUDF, buf: &mut Vec<u8>) -> DfResult<()> {
        encode_udaf(node, buf)
    }
}

/// `config` with our codecs, as every cluster process needs it.
fn with_codecs(config: SessionConfig) -> SessionConfig {
    let codec = Arc::new(Codec::default());
    config
        .with_ballista_logical_extension_codec(codec.clone())
        .with_ballista_physical_extension_codec(codec)
}

/// A session whose queries run on the scheduler at `scheduler` (`df://host:port`),
/// or on an in-process cluster (scheduler and executor in this process) when `None`.
///
/// # Errors
/// [`Error::Config`] when the scheduler URL is unusable or the in-process cluster cannot start.
pub async fn connect(
    config: SessionConfig,
    runtime: Arc<RuntimeEnv>,
    scheduler: Option<&str>,
) -> Result<SessionContext> {
    let config = with_codecs(config.upgrade_for_ballista());
    let state = |config: SessionConfig| {
        SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime.clone())
            .with_default_features()
            .build()
    };
    let problem = |e: DataFusionError| {
        let mut p = crate::error::Problems::default();
        p.push(
            crate::config::CONFIG_FILE,
            "engine.scheduler",
            format!(
                "cannot use the Ballista cluster {}: {e}",
                scheduler.unwrap_or("(in-process)")
            ),
        );
        Error::Config(p)
    };
    match scheduler {
        Some(url) => {
            reachable(url)
                .await
                .map_err(|e| problem(DataFusionError::Configuration(e)))?;
            SessionContext::remote_with_state(url, state(config))
                .await
                .map_err(problem)
        }
        None => {
            let (url, shuffle) = in_process(&state(config.clone())).await.map_err(problem)?;
            // The client's session keeps the shuffle directory until it is
            // dropped; the in-process cluster's copy of the state does not.
            let config = config.with_extension(Arc::new(shuffle));
            SessionContext::remote_with_state(&url, state(config))
                .await
                .map_err(problem)
        }
    }
}

/// The shuffle files of an in-process cluster: a private directory (mode
/// 0700) under the system's temporary directory, removed with the session.
/// (Ballista's own in-process executor leaves its files behind, readable by
/// everyone.)
///
/// A session whose query was stopped midway (an interrupted run) may still be
/// held by that query's tasks when the command ends: every directory not yet
/// removed is removed by [`remove_shuffle_dirs`] before the process exits.
#[derive(Debug)]
pub struct ShuffleDir(tempfile::TempDir);

/// The [`ShuffleDir`]s of this process not yet removed.
static SHUFFLE_DIRS: std::sync::Mutex<Vec<std::path::PathBuf>> = std::sync::Mutex::new(Vec::new());

fn shuffle_dirs() -> std::sync::MutexGuard<'static, Vec<std::path::PathBuf>> {
    SHUFFLE_DIRS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Remove every [`ShuffleDir`] of this process still there: called when the
/// command ends, after the runtime has stopped its tasks.
///
/// Tasks of a stopped query may still be writing there. Each directory is
/// first renamed, so that no new file can be made under its old path, then
/// removed: removing it in place raced with those writers ("Directory not
/// empty") and left files behind.
pub fn remove_shuffle_dirs() {
    for dir in shuffle_dirs().drain(..) {
        let mut gone = dir.clone().into_os_string();
        gone.push(".removing");
        let gone = std::path::PathBuf::from(gone);
        // A writer that makes its folders again (`create_dir_all`) may bring
        // the old path back, or add to the tree while it is removed: both
        // are taken away again, a few times.
        let mut last = None;
        for attempt in 0..5 {
            if !dir.exists() && !gone.exists() {
                last = None;
                break;
            }
            if attempt > 0 {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let _ = std::fs::rename(&dir, &gone);
            last = [&gone, &dir]
                .into_iter()
                .filter_map(|d| std::fs::remove_dir_all(d).err())
                .find(|e| e.kind() != std::io::ErrorKind::NotFound);
        }
        if let Some(e) = last {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a shuffle directory");
        }
    }
}

impl ShuffleDir {
    fn new() -> std::io::Result<Self> {
        let mut builder = tempfile::Builder::new();
        builder.prefix("audience-shuffle-");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            builder.permissions(std::fs::Permissions::from_mode(0o700));
        }
        let dir = builder.tempdir()?;
        shuffle_dirs().push(dir.path().to_path_buf());
        Ok(ShuffleDir(dir))
    }

    /// Where the shuffle files are.
    pub fn path(&self) -> &std::path::Path {
        self.0.path()
    }
}

impl Drop for ShuffleDir {
    fn drop(&mut self) {
        // The directory itself goes with the `TempDir`.
        shuffle_dirs().retain(|d| d != self.0.path());
    }
}

/// Start a scheduler and one executor in this process, the executor's files
/// in a fresh [`ShuffleDir`]: the scheduler's URL and the directory.
async fn in_process(state: &SessionState) -> DfResult<(String, ShuffleDir)> {
    use ballista_core::serde::protobuf::{
        ExecutorRegistration, scheduler_grpc_client::SchedulerGrpcClient,
    };
    use ballista_core::serde::scheduler::{
        ExecutorOperatingSystemSpecification, ExecutorSpecification,
    };
    use ballista_core::utils::{GrpcServerConfig, create_grpc_server, create_grpc_server_incoming};
    use ballista_executor::{executor::Executor, flight_service::BallistaFlightService};
    let config_err = |what: &str, e: &dyn std::fmt::Display| {
        DataFusionError::Configuration(format!("in-process cluster: {what}: {e}"))
    };
    let shuffle = ShuffleDir::new().map_err(|e| {
        config_err(
            "cannot create a shuffle directory under the system's temporary directory (TMPDIR)",
            &e,
        )
    })?;
    let work_dir = shuffle
        .path()
        .to_str()
        .ok_or_else(|| {
            config_err(
                "the temporary directory is not UTF-8",
                &shuffle.path().display(),
            )
        })?
        .to_string();
    let addr = ballista_scheduler::standalone::new_standalone_scheduler_from_state(state)
        .await
        .map_err(|e| config_err("scheduler", &e))?;
    let scheduler_url = format!("http://localhost:{}", addr.port());
    let started = std::time::Instant::now();
    let scheduler = loop {
        match SchedulerGrpcClient::connect(scheduler_url.clone()).await {
            Ok(client) => break client,
            Err(e) if started.elapsed() > std::time::Duration::from_secs(10) => {
                return Err(config_err("the scheduler does not answer", &e));
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    };
    // The executor's flight service, on a port the system picks.
    let grpc = GrpcServerConfig::default();
    let incoming = create_grpc_server_incoming(([127, 0, 0, 1], 0).into(), &grpc)
        .map_err(|e| config_err("executor port", &e))?;
    let port = incoming
        .local_addr()
        .map_err(|e| config_err("executor port", &e))?
        .port();
    let vcores = state.config().ballista_standalone_parallelism();
    let registration = ExecutorRegistration {
        id: ballista_core::ids::new_instance_id(),
        host: Some("localhost".into()),
        port: u32::from(port),
        grpc_port: 0,
        specification: Some(
            ExecutorSpecification::default()
                .with_vcores(vcores as u32)
                .into(),
        ),
        os_info: Some(ExecutorOperatingSystemSpecification::default().into()),
        ballista_protocol_version: ballista_core::BALLISTA_PROTOCOL_VERSION,
    };
    let config = state.config().clone();
    let runtime = state.runtime_env().clone();
    let executor = Arc::new(Executor::with_default_execution_engine(
        registration,
        &work_dir,
        Arc::new(move |_| Ok(runtime.clone())),
        Arc::new(move || config.clone()),
        Arc::new(state.into()),
        Arc::new(ballista_executor::metrics::LoggingMetricsCollector::default()),
        vcores,
    ));
    let flight = arrow_flight::flight_service_server::FlightServiceServer::new(
        BallistaFlightService::new(work_dir),
    );
    let limit = state.config().ballista_grpc_client_max_message_size();
    let flight = flight
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    tokio::spawn(
        create_grpc_server(&grpc)
            .add_service(flight)
            .serve_with_incoming(incoming),
    );
    let codec: ballista_core::serde::BallistaCodec = ballista_core::serde::BallistaCodec::new(
        state.config().ballista_logical_extension_codec(),
        state.config().ballista_physical_extension_codec(),
    );
    tokio::spawn(ballista_executor::execution_loop::poll_loop(
        scheduler,
        executor,
        codec,
        None,
        None,
        ballista_executor::health::ExecutorHealth::new(),
    ));
    Ok((format!("df://localhost:{}", addr.port()), shuffle))
}

/// Whether a scheduler listens at `url` (`df://host:port`), tried for 10 s.
async fn reachable(url: &str) -> std::result::Result<(), String> {
    let u = url::Url::parse(url).map_err(|e| e.to_string())?;
    let host = u.host_str().unwrap_or_default().to_string();
    let port = u.port().unwrap_or(50050);
    let attempt = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await;
    match attempt {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!(
            "nothing answers at {host}:{port} ({e}); start a scheduler with `audience cluster scheduler --bind {host}:{port}`"
        )),
        Err(_) => Err(format!("no answer from {host}:{port} within 10 s")),
    }
}

/// The session state a cluster process plans and runs tasks with: our codecs
/// and stores, the memory limit.
fn process_state(config: SessionConfig, runtime: Arc<RuntimeEnv>) -> SessionState {
    SessionStateBuilder::new()
        .with_config(with_codecs(config))
        .with_runtime_env(runtime)
        .with_default_features()
        .build()
}

/// Run a scheduler on `bind` until the process is stopped.
///
/// # Errors
/// When the address cannot be bound or the scheduler fails.
pub async fn scheduler(bind: SocketAddr, external_host: Option<String>) -> Result<()> {
    use ballista_scheduler::cluster::BallistaCluster;
    use ballista_scheduler::config::SchedulerConfig;
    let runtime = super::runtime(None)?;
    let codec = Arc::new(Codec::default());
    let mut config = SchedulerConfig {
        bind_host: bind.ip().to_string(),
        bind_port: bind.port(),
        external_host: external_host.unwrap_or_else(|| bind.ip().to_string()),
        ..Default::default()
    };
    config.override_logical_codec = Some(codec.clone());
    config.override_physical_codec = Some(codec);
    config.override_config_producer =
        Some(Arc::new(|| with_codecs(SessionConfig::new_with_ballista())));
    config.override_session_builder = Some(Arc::new(move |c: SessionConfig| {
        Ok(process_state(c, runtime.clone()))
    }));
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(|e| Error::Internal(format!("scheduler: {e}")))?;
    ballista_scheduler::scheduler_process::start_server(cluster, bind, Arc::new(config))
        .await
        .map_err(|e| Error::Internal(format!("scheduler: {e}")))
}

/// Executor settings (`audience cluster executor`).
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    pub scheduler: SocketAddr,
    pub bind: std::net::IpAddr,
    pub port: u16,
    pub grpc_port: u16,
    pub concurrent_tasks: usize,
    pub work_dir: Option<String>,
    pub memory_limit: Option<usize>,
}

/// Run an executor that registers with the scheduler, until the process is stopped.
///
/// # Errors
/// When the executor cannot start or loses its scheduler.
pub async fn executor(o: ExecutorOptions) -> Result<()> {
    use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
    let runtime = super::runtime(o.memory_limit)?;
    let codec = Arc::new(Codec::default());
    // Without `--work-dir`, a private directory removed when the executor
    // stops (Ballista's default leaves the files behind, readable by everyone).
    let (work_dir, _shuffle) = match o.work_dir {
        Some(dir) => (dir, None),
        None => {
            let shuffle = ShuffleDir::new().map_err(|e| {
                Error::Internal(format!(
                    "executor: cannot create a work directory under the system's temporary directory (TMPDIR; or pass --work-dir): {e}"
                ))
            })?;
            let dir = shuffle.path().to_str().map(str::to_string).ok_or_else(|| {
                Error::Internal(
                    "executor: the temporary directory is not UTF-8; pass --work-dir".into(),
                )
            })?;
            (dir, Some(shuffle))
        }
    };
    let mut config = ExecutorProcessConfig {
        scheduler_host: o.scheduler.ip().to_string(),
        scheduler_port: o.scheduler.port(),
        bind_host: o.bind.to_string(),
        port: o.port,
        grpc_port: o.grpc_port,
        vcores: o.concurrent_tasks,
        work_dir: Some(work_dir),
        scheduler_connect_timeout_seconds: 30,
        ..Default::default()
    };
    config.override_logical_codec = Some(codec.clone());
    config.override_physical_codec = Some(codec);
    config.override_config_producer =
        Some(Arc::new(|| with_codecs(SessionConfig::new_with_ballista())));
    config.override_runtime_producer = Some(Arc::new(move |_| Ok(runtime.clone())));
    start_executor_process(Arc::new(config))
        .await
        .map_err(|e| Error::Internal(format!("executor: {e}")))
}
