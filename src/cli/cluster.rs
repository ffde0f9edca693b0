//! `audience cluster scheduler|executor`: the processes of a Ballista cluster
//! that knows our functions, plan codecs and stores (the stock Ballista
//! binaries know only built-in functions). Built with `--features distributed`.

use std::net::{IpAddr, SocketAddr};

use crate::error::Result;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub role: Role,
}

#[derive(Debug, clap::Subcommand)]
pub enum Role {
    /// The scheduler: plans jobs into stages and hands tasks to executors.
    Scheduler {
        /// Address to listen on; clients use `df://<host>:<port>`.
        #[arg(long, default_value = "127.0.0.1:50050")]
        bind: SocketAddr,
        /// Host name executors and clients reach this scheduler by (default: the bind address).
        #[arg(long)]
        external_host: Option<String>,
    },
    /// An executor: runs tasks for the scheduler; needs the same storage credentials as the client.
    Executor(ExecutorArgs),
}

#[derive(Debug, clap::Args)]
pub struct ExecutorArgs {
    /// The scheduler's address.
    #[arg(long, default_value = "127.0.0.1:50050")]
    pub scheduler: SocketAddr,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: IpAddr,
    /// Port of the Arrow Flight service (shuffle data).
    #[arg(long, default_value_t = 50051)]
    pub port: u16,
    /// Port of the gRPC service (tasks).
    #[arg(long, default_value_t = 50052)]
    pub grpc_port: u16,
    /// Tasks run at once (default: the number of cores).
    #[arg(long)]
    pub concurrent_tasks: Option<usize>,
    /// Folder for shuffle files (default: a private temporary folder, removed when the executor stops).
    #[arg(long)]
    pub work_dir: Option<String>,
    /// Memory for query execution, e.g. `8GiB`; beyond it sorts and aggregations spill to disk.
    #[arg(long)]
    pub memory_limit: Option<String>,
}

#[cfg(feature = "distributed")]
pub async fn run(args: Args) -> Result<i32> {
    use crate::engine::cluster;
    match args.role {
        Role::Scheduler {
            bind,
            external_host,
        } => cluster::scheduler(bind, external_host).await?,
        Role::Executor(a) => {
            let memory_limit = match &a.memory_limit {
                None => None,
                Some(m) => Some(crate::config::parse_size(m).ok_or_else(|| {
                    let mut p = crate::error::Problems::default();
                    p.push(
                        "command line",
                        "--memory-limit",
                        format!("`{m}` is not a size; write e.g. 8GiB or 512MiB"),
                    );
                    crate::error::Error::Config(p)
                })?),
            };
            let concurrent_tasks = a
                .concurrent_tasks
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            cluster::executor(cluster::ExecutorOptions {
                scheduler: a.scheduler,
                bind: a.bind,
                port: a.port,
                grpc_port: a.grpc_port,
                concurrent_tasks,
                work_dir: a.work_dir,
                memory_limit,
            })
            .await?
        }
    }
    Ok(0)
}

#[cfg(not(feature = "distributed"))]
pub async fn run(_args: Args) -> Result<i32> {
    let mut p = crate::error::Problems::default();
    p.push(
        "command line",
        "cluster",
        "this build of audience has no distributed mode: build it with `cargo build --release --features distributed`",
    );
    Err(crate::error::Error::Config(p))
}
