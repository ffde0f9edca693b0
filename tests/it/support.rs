//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};

/// The committed sample project.
pub fn sample_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/sample")
}

/// A fresh copy of the sample project (config, SQL and data; no outputs).
pub fn sample_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    copy_tree(&sample_dir(), dir.path());
    dir
}

pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read sample") {
        let entry = entry.expect("entry");
        let name = entry.file_name();
        if name == "state" || name == "out" {
            continue;
        }
        let src = entry.path();
        let dst = to.join(&name);
        if src.is_dir() {
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).expect("copy");
        }
    }
}

/// Move the sample's `data/purchases/part-00000.parquet` into Hive
/// partition `folders` (a copy in each, e.g. `source=web`); returns the
/// file's bytes.
pub fn partition_purchases(project: &Path, folders: &[&str]) -> Vec<u8> {
    let purchases = project.join("data/purchases");
    let file = std::fs::read(purchases.join("part-00000.parquet")).expect("read");
    for folder in folders {
        std::fs::create_dir_all(purchases.join(folder)).expect("mkdir");
        std::fs::write(purchases.join(folder).join("part-00000.parquet"), &file).expect("write");
    }
    std::fs::remove_file(purchases.join("part-00000.parquet")).expect("rm");
    file
}

/// Replace `from` by `to` in the project's audience.toml (the text must be there).
pub fn edit_config(dir: &Path, from: &str, to: &str) {
    let path = dir.join("audience.toml");
    let text = std::fs::read_to_string(&path).expect("read config");
    assert!(text.contains(from), "config does not contain {from:?}");
    std::fs::write(&path, text.replacen(from, to, 1)).expect("write config");
}

/// Run the `audience` binary; returns (exit code, stdout, stderr).
pub fn audience(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_audience"))
        .args(args)
        .output()
        .expect("run audience");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn as_of() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339("2025-07-01T00:00:00Z")
        .expect("time")
        .with_timezone(&chrono::Utc)
}

/// Every file under `dir`, relative, sorted.
pub fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(base, &p, out);
                } else if let Ok(rel) = p.strip_prefix(base) {
                    out.push(rel.to_string_lossy().into_owned());
                }
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// A run's record (`state/runs/<id>/run.json`) as JSON.
pub fn run_record(project: &Path, run_id: &str) -> serde_json::Value {
    let path = project.join(format!("state/runs/{run_id}/run.json"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).expect("run record JSON")
}

/// Give `destinations.<name>` the cron `schedule`.
pub fn schedule_destination(project: &Path, name: &str, schedule: &str) {
    let header = format!("[destinations.{name}]\n");
    edit_config(
        project,
        &header,
        &format!("{header}schedule = \"{schedule}\"\n"),
    );
}

/// Start `audience run` (with `extra` arguments and `env`) paused at `at`
/// (`AUDIENCE_PAUSE_AT`), send it `signal` (`INT`, `TERM`) once it says so,
/// and return its exit code and stderr.
pub fn stop_run(
    project: &str,
    id: &str,
    at: &str,
    signal: &str,
    extra: &[&str],
    env: &[(&str, &Path)],
) -> (Option<i32>, String) {
    use std::io::Read;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_audience"))
        .args([
            "--quiet",
            "run",
            "--project",
            project,
            "--run-id",
            id,
            "--as-of",
            "2025-07-01T00:00:00Z",
        ])
        .args(extra)
        .envs(env.iter().copied())
        .env("AUDIENCE_PAUSE_AT", at)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let (mut stderr, mut seen) = wait_paused(&mut child, at);
    send(&child, signal);
    stderr.read_to_string(&mut seen).expect("read");
    let status = child.wait().expect("wait");
    (status.code(), seen)
}

/// Read `child`'s stderr until it says `paused at <at>` (`AUDIENCE_PAUSE_AT`):
/// the reader, for the rest, and what was read.
pub fn wait_paused(
    child: &mut std::process::Child,
    at: &str,
) -> (std::io::BufReader<std::process::ChildStderr>, String) {
    use std::io::BufRead;
    let mut stderr = std::io::BufReader::new(child.stderr.take().expect("stderr"));
    let mut seen = String::new();
    let mut line = String::new();
    while stderr.read_line(&mut line).expect("read") > 0 {
        seen.push_str(&line);
        if line.trim() == format!("paused at {at}") {
            return (stderr, seen);
        }
        line.clear();
    }
    panic!("{at}: never paused: {seen}");
}

/// Send `signal` (`INT`, `TERM`) to `child`.
pub fn send(child: &std::process::Child, signal: &str) {
    let killed = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
}
