//! Distributed mode (`--features distributed`): the sample project on a
//! Ballista cluster gives byte-identical exports to the embedded engine, on an
//! in-process cluster and on real scheduler and executor processes on loopback.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{audience, edit_config, files_under, sample_copy};

const AS_OF: &str = "2025-07-01T00:00:00Z";

/// Run the sample at the fixed as-of with run id `r1` and extra arguments:
/// (exit code, stdout, stderr).
fn try_run_sample(dir: &Path, extra: &[&str]) -> (i32, String, String) {
    try_run_sample_env(dir, extra, &[])
}

/// [`try_run_sample`] with extra environment variables.
fn try_run_sample_env(dir: &Path, extra: &[&str], env: &[(&str, &Path)]) -> (i32, String, String) {
    let project = dir.to_str().expect("utf-8");
    let mut args = vec![
        "--quiet",
        "run",
        "--project",
        project,
        "--as-of",
        AS_OF,
        "--run-id",
        "r1",
    ];
    args.extend_from_slice(extra);
    if env.is_empty() {
        return audience(&args);
    }
    let out = Command::new(env!("CARGO_BIN_EXE_audience"))
        .args(&args)
        .envs(env.iter().copied())
        .output()
        .expect("run audience");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn run_sample(dir: &Path, extra: &[&str]) {
    let (code, out, err) = try_run_sample(dir, extra);
    assert_eq!(code, 0, "run {extra:?} failed:\n{out}\n{err}");
}

/// Every exported file (data, manifests, `_SUCCESS`) with its bytes.
fn exports(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let root = dir.join("out/exports");
    let files = files_under(&root);
    assert!(
        files.iter().any(|f| f.ends_with("manifest.json")),
        "no exports under {}",
        root.display()
    );
    files
        .into_iter()
        .map(|f| {
            let bytes = std::fs::read(root.join(&f)).expect("read export");
            (f, bytes)
        })
        .collect()
}

fn assert_same_exports(embedded: &Path, cluster: &Path) {
    let (a, b) = (exports(embedded), exports(cluster));
    let names = |v: &[(String, Vec<u8>)]| v.iter().map(|(f, _)| f.clone()).collect::<Vec<_>>();
    assert_eq!(names(&a), names(&b), "the same files");
    for ((f, x), (_, y)) in a.iter().zip(&b) {
        assert!(
            x == y,
            "{f} differs between the embedded and the cluster run"
        );
    }
    // And the same profiles: identical identity maps.
    let map = |d: &Path| {
        std::fs::read(d.join("state/runs/r1/identity_map.parquet")).expect("identity map")
    };
    assert!(map(embedded) == map(cluster), "identity maps differ");
}

/// The rounds of connected components run on the cluster, from the graph health.
fn component_rounds(dir: &Path, run: &str) -> Option<u64> {
    let health: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join(format!("state/runs/{run}/graph_health.json")))
            .expect("graph health"),
    )
    .expect("health json");
    health["component_rounds"].as_u64()
}

/// Two copies of the sample; `plain` drops its unique namespace, so that the
/// components are computed on the cluster rather than by the constrained stitch.
fn two_samples(plain: bool) -> (tempfile::TempDir, tempfile::TempDir) {
    let (a, b) = (sample_copy(), sample_copy());
    if plain {
        for d in [&a, &b] {
            edit_config(d.path(), "unique = true", "unique = false");
        }
    }
    (a, b)
}

#[test]
fn cluster_in_process_exports_match_embedded() {
    // As shipped: crm_id is unique, so the stitch is constrained (done by the client).
    let (embedded, cluster) = two_samples(false);
    run_sample(embedded.path(), &[]);
    run_sample(cluster.path(), &["--engine", "ballista"]);
    assert_same_exports(embedded.path(), cluster.path());
    assert_eq!(
        component_rounds(cluster.path(), "r1"),
        None,
        "constrained: no rounds"
    );
    // Plain stitching: the components come from SQL rounds on the cluster.
    let (embedded, cluster) = two_samples(true);
    run_sample(embedded.path(), &[]);
    run_sample(cluster.path(), &["--engine", "ballista"]);
    assert_same_exports(embedded.path(), cluster.path());
    let rounds = component_rounds(cluster.path(), "r1").expect("rounds recorded");
    assert!((2..=12).contains(&rounds), "{rounds} rounds");
    eprintln!("connected components on the in-process cluster: {rounds} rounds");
}

/// Every entry (files and directories) under `dir`, relative.
fn entries(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).expect("read dir").flatten() {
            let p = e.path();
            out.push(p.strip_prefix(base).expect("under").display().to_string());
            if p.is_dir() {
                walk(base, &p, out);
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Shuffle files hold customer data: an in-process cluster keeps them in a
/// private directory of its own and removes it when the run ends, also when
/// SIGINT stops the run after its identity stage (which used the cluster).
#[test]
fn cluster_in_process_leaves_no_shuffle_files() {
    // Plain stitching, so that the components' rounds shuffle on the cluster.
    let (dir, _) = two_samples(true);
    let tmp = tempfile::tempdir().expect("tmp");
    let env = [("TMPDIR", tmp.path())];
    let (code, out, err) = try_run_sample_env(dir.path(), &["--engine", "ballista"], &env);
    assert_eq!(code, 0, "{out}{err}");
    let project = dir.path().to_str().expect("utf-8");
    let (stopped, err2) = crate::support::stop_run(
        project,
        "r2",
        "merge+segments",
        "INT",
        &["--engine", "ballista"],
        &env,
    );
    assert_eq!(stopped, Some(130), "{err2}");
    for run in ["r1", "r2"] {
        assert!(
            component_rounds(dir.path(), run).is_some(),
            "{run}: the components ran on the cluster"
        );
    }
    assert_eq!(
        entries(tmp.path()),
        Vec::<String>::new(),
        "nothing left in TMPDIR"
    );
}

/// `audience query` on an in-process cluster stopped by SIGINT mid-query
/// exits with 130 and leaves no shuffle directory.
#[test]
fn cluster_query_stopped_by_sigint_leaves_no_shuffle_files() {
    let dir = sample_copy();
    let tmp = tempfile::tempdir().expect("tmp");
    let project = dir.path().to_str().expect("utf-8");
    // Long enough to be under way when the signal comes.
    let sql = "SELECT count(*) FROM events a, events b, events c";
    let child = Command::new(env!("CARGO_BIN_EXE_audience"))
        .args(["query", "--project", project, "--engine", "ballista", sql])
        .env("TMPDIR", tmp.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let started = Instant::now();
    while entries(tmp.path()).is_empty() && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!entries(tmp.path()).is_empty(), "the cluster started");
    std::thread::sleep(Duration::from_millis(500));
    crate::support::send(&child, "INT");
    let out = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert_eq!(entries(tmp.path()), Vec::<String>::new(), "{err}");
}

/// A partitioned dataset (escaped and NULL folder values) reads the same on
/// an in-process cluster as embedded: its table travels to the scheduler
/// as its files and values, and filters on its partition column choose
/// among them there too.
#[test]
fn cluster_reads_partitioned_datasets_like_embedded() {
    let dir = sample_copy();
    crate::support::partition_purchases(
        dir.path(),
        &["source=web%3Ashop", "source=__HIVE_DEFAULT_PARTITION__"],
    );
    let project = dir.path().to_str().expect("utf-8");
    let query = |engine: &str, sql: &str| {
        let (code, out, err) = audience(&[
            "query",
            "--project",
            project,
            "--as-of",
            AS_OF,
            "--engine",
            engine,
            "--format",
            "csv",
            sql,
        ]);
        assert_eq!(code, 0, "{engine}: {sql}: {err}");
        out
    };
    for sql in [
        "SELECT source, count(*) AS n FROM events WHERE dataset = 'purchases' GROUP BY source ORDER BY source",
        "SELECT count(*) AS n FROM events WHERE source = 'web:shop'",
    ] {
        let embedded = query("embedded", sql);
        assert!(embedded.lines().count() > 1, "{sql}: {embedded}");
        assert_eq!(query("ballista", sql), embedded, "{sql}");
    }
    let grouped = query(
        "embedded",
        "SELECT source, count(*) AS n FROM events WHERE dataset = 'purchases' GROUP BY source ORDER BY source",
    );
    let counts: Vec<&str> = grouped.lines().skip(1).collect();
    assert_eq!(counts.len(), 2, "{grouped}");
    assert!(
        counts.iter().any(|l| l.starts_with("web:shop,")),
        "{grouped}"
    );
    assert!(counts.iter().any(|l| l.starts_with(",")), "NULL: {grouped}");
}

/// A child process killed when dropped.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn spawn(args: &[&str], log: &Path, env: &[(&str, &Path)]) -> Proc {
    let file = std::fs::File::create(log).expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_audience"))
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .expect("start cluster process");
    Proc(child)
}

/// A scheduler process on a free loopback port, logging to `logs`, once it listens.
fn start_scheduler(logs: &Path) -> (Proc, SocketAddr) {
    let sched: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let log = logs.join("scheduler.log");
    let proc = spawn(
        &["cluster", "scheduler", "--bind", &sched.to_string()],
        &log,
        &[],
    );
    wait_for(sched, "the scheduler", &log);
    (proc, sched)
}

/// An executor process of `sched` with `extra` arguments, logging to
/// `logs/<name>.log`, once it listens.
fn start_executor(
    sched: SocketAddr,
    logs: &Path,
    name: &str,
    extra: &[&str],
    env: &[(&str, &Path)],
) -> Proc {
    let (port, grpc) = (free_port(), free_port());
    let log = logs.join(format!("{name}.log"));
    let (sched, port_s, grpc_s) = (sched.to_string(), port.to_string(), grpc.to_string());
    let mut args = vec![
        "cluster",
        "executor",
        "--scheduler",
        &sched,
        "--port",
        &port_s,
        "--grpc-port",
        &grpc_s,
    ];
    args.extend_from_slice(extra);
    let proc = spawn(&args, &log, env);
    wait_for(
        format!("127.0.0.1:{port}").parse().expect("addr"),
        name,
        &log,
    );
    proc
}

fn wait_for(addr: SocketAddr, what: &str, log: &Path) {
    let start = Instant::now();
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{what} did not listen on {addr}: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn cluster_processes_on_loopback_export_like_embedded() {
    let logs = tempfile::tempdir().expect("logs");
    let (_scheduler, sched) = start_scheduler(logs.path());
    let mut executors = Vec::new();
    for i in 0..2 {
        let work = logs.path().join(format!("work-{i}"));
        std::fs::create_dir_all(&work).expect("work dir");
        let work = work.to_str().expect("utf-8");
        executors.push(start_executor(
            sched,
            logs.path(),
            &format!("executor-{i}"),
            &["--concurrent-tasks", "2", "--work-dir", work],
            &[],
        ));
    }
    let (embedded, cluster) = two_samples(true);
    run_sample(embedded.path(), &[]);
    let url = format!("df://{sched}");
    run_sample(
        cluster.path(),
        &["--engine", "ballista", "--scheduler", &url],
    );
    assert_same_exports(embedded.path(), cluster.path());
    let rounds = component_rounds(cluster.path(), "r1").expect("rounds recorded");
    eprintln!("connected components on scheduler + 2 executor processes: {rounds} rounds");
}

/// An executor started without `--work-dir` keeps its shuffle files in a
/// private directory (mode 0700) and removes it when it is stopped.
#[test]
fn cluster_executor_default_work_dir_is_private_and_removed() {
    use std::os::unix::fs::PermissionsExt;
    let logs = tempfile::tempdir().expect("logs");
    let tmp = tempfile::tempdir().expect("tmp");
    let (_scheduler, sched) = start_scheduler(logs.path());
    let mut executor = start_executor(
        sched,
        logs.path(),
        "executor",
        &[],
        &[("TMPDIR", tmp.path())],
    );
    let log = logs.path().join("executor.log");
    let (dir, _) = two_samples(true);
    run_sample(
        dir.path(),
        &[
            "--engine",
            "ballista",
            "--scheduler",
            &format!("df://{sched}"),
        ],
    );
    let work: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("tmp")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(work.len(), 1, "one work directory: {work:?}");
    assert!(
        work[0]
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("audience-shuffle-")),
        "{work:?}"
    );
    let mode = std::fs::metadata(&work[0])
        .expect("work dir")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "private to the executor's user");
    assert!(
        !entries(&work[0]).is_empty(),
        "the rounds shuffled through it"
    );
    // Stopped like Ctrl-C: the executor shuts down and removes its directory.
    let pid = i32::try_from(executor.0.id()).expect("pid");
    // SAFETY: `pid` is our own child process, still running.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let start = Instant::now();
    while executor.0.try_wait().expect("wait").is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the executor did not stop on SIGINT: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        entries(tmp.path()),
        Vec::<String>::new(),
        "nothing left in TMPDIR: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

#[test]
fn cluster_unreachable_scheduler_is_a_clear_error() {
    let dir = sample_copy();
    let url = format!("df://127.0.0.1:{}", free_port());
    let (code, _, err) = try_run_sample(dir.path(), &["--engine", "ballista", "--scheduler", &url]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("127.0.0.1"), "names the scheduler: {err}");
    let (code, _, err) = try_run_sample(dir.path(), &["--engine", "spark"]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown engine mode `spark`"), "{err}");
}

#[test]
fn cluster_sessions_keep_the_memory_limit_in_both_engines() {
    use audience::config::{EngineMode, Project};
    use datafusion::execution::memory_pool::MemoryLimit;
    let dir = sample_copy();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for mode in [
        EngineMode::Embedded,
        EngineMode::Ballista { scheduler: None },
    ] {
        let mut project = Project::load(dir.path()).expect("sample");
        project.engine.memory_limit = Some(64 << 20);
        project.engine.mode = mode.clone();
        let ctx = rt
            .block_on(audience::engine::session(&project, crate::support::as_of()))
            .expect("session");
        // The in-process cluster's executor runs tasks on this same runtime.
        assert!(
            matches!(ctx.runtime_env().memory_pool.memory_limit(), MemoryLimit::Finite(n) if n == 64 << 20),
            "{mode:?}: the memory limit bounds query execution (beyond it, sorts and aggregations spill)"
        );
        assert_eq!(
            audience::engine::cluster(&ctx).is_some(),
            mode != EngineMode::Embedded
        );
    }
}
