//! The binary: exit codes and output of `run` and `generate`.

use crate::support::{audience, sample_copy};

#[test]
fn cli_run_sample_prints_summary() {
    let dir = sample_copy();
    let (code, out, err) = audience(&[
        "--quiet",
        "run",
        "--project",
        dir.path().to_str().expect("utf-8"),
        "--as-of",
        "2025-07-01T00:00:00Z",
        "--run-id",
        "cli",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("run cli succeeded (as-of 2025-07-01T00:00:00Z)"),
        "{out}"
    );
    assert!(out.contains("segment high_value"), "{out}");
}

#[test]
fn cli_bad_as_of_is_an_error() {
    let (code, _out, err) = audience(&["run", "--as-of", "yesterday"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is not a time"), "{err}");
}

#[test]
fn cli_generate_is_deterministic() {
    let a = tempfile::tempdir().expect("tmp");
    let b = tempfile::tempdir().expect("tmp");
    let (pa, pb) = (a.path().join("proj"), b.path().join("proj"));
    for d in [&pa, &pb] {
        let (code, out, err) = audience(&[
            "--quiet",
            "generate",
            "--people",
            "500",
            "--seed",
            "3",
            "--out",
            d.to_str().expect("utf-8"),
        ]);
        assert_eq!(code, 0, "{out}{err}");
    }
    let fa = crate::support::files_under(&pa);
    assert_eq!(fa, crate::support::files_under(&pb));
    for f in &fa {
        assert!(
            std::fs::read(pa.join(f)).expect("a") == std::fs::read(pb.join(f)).expect("b"),
            "{f} differs"
        );
    }
    // The generated project is valid as it is.
    let (code, out, err) = audience(&["validate", "--project", pa.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{out}{err}");
}

/// A project in a folder whose name holds a `%` escape, braces and brackets:
/// its state and exports are written inside it and read back from there
/// (they went to `a%2541` while the run read `a%41`, and the run failed),
/// and its datasets' relative paths are not patterns (`[c]` is no wildcard
/// there). A pattern in a dataset's own path still is one.
#[test]
fn cli_project_path_with_escapes_runs_in_place() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("a%41 {b}[c]");
    crate::support::copy_tree(&crate::support::sample_dir(), &dir);
    crate::support::edit_config(
        &dir,
        "path = \"data/loyalty/\"",
        "path = \"data/loyalty/part-?????.parquet\"",
    );
    let p = dir.to_str().expect("utf-8");
    for (id, as_of) in [("r1", "2025-07-01"), ("r2", "2025-07-02")] {
        let (code, out, err) = audience(&[
            "--quiet",
            "run",
            "--project",
            p,
            "--as-of",
            as_of,
            "--run-id",
            id,
        ]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(
            dir.join(format!("state/runs/{id}/identity_map.parquet"))
                .exists()
        );
    }
    // Everything was written inside the project folder.
    let siblings: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(siblings.len(), 1, "{siblings:?}");
    // The second run read the first one's state.
    let r2 = crate::support::run_record(&dir, "r2");
    assert_eq!(r2["membership_baseline"], "r1", "{r2}");
    let loyalty: Vec<_> = r2["inputs"]
        .as_array()
        .expect("inputs")
        .iter()
        .filter(|d| d["dataset"] == "loyalty")
        .flat_map(|d| d["files"].as_array().expect("files").clone())
        .collect();
    assert_eq!(loyalty.len(), 1, "{r2}");
}

/// Every file under `dir` with its bytes (not a generation's staging folder).
fn contents(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    crate::support::files_under(dir)
        .into_iter()
        .filter(|f| !f.starts_with(audience::generate::STAGING))
        .map(|f| {
            let bytes = std::fs::read(dir.join(&f)).expect("read");
            (f, bytes)
        })
        .collect()
}

/// `audience generate` over an existing project, stopped once it has begun
/// writing: by SIGINT (exit 130, nothing left behind) or SIGKILL (its hidden
/// staging folder left, which the next generation removes). Either way the
/// project's files are as they were.
#[test]
fn cli_generate_stopped_leaves_the_folder_as_it_was() {
    let dir = tempfile::tempdir().expect("tmp");
    let proj = dir.path().join("proj");
    let p = proj.to_str().expect("utf-8");
    let small = [
        "--quiet", "generate", "--people", "300", "--seed", "3", "--out", p,
    ];
    let (code, out, err) = audience(&small);
    assert_eq!(code, 0, "{out}{err}");
    let before = contents(&proj);
    let staging = proj.join(audience::generate::STAGING);
    for signal in ["INT", "KILL"] {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_audience"))
            .args(["--quiet", "generate", "--people", "20000000", "--out", p])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        // Stopped once its first data file is being written.
        let first = staging.join("data/crm/part-00000.parquet");
        let t0 = std::time::Instant::now();
        while !first.exists() {
            assert!(t0.elapsed().as_secs() < 120, "no {}", first.display());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        crate::support::send(&child, signal);
        let out = child.wait_with_output().expect("wait");
        let err = String::from_utf8_lossy(&out.stderr);
        if signal == "INT" {
            assert_eq!(out.status.code(), Some(130), "{err}");
            assert!(!staging.exists(), "staging folder left after SIGINT");
        } else {
            assert!(staging.exists(), "a killed generation cannot clean up");
        }
        assert!(contents(&proj) == before, "{signal}: the project changed");
    }
    // The next generation removes what the killed one left.
    let (code, out, err) = audience(&small);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!staging.exists());
    assert!(contents(&proj) == before);
}

/// Run `audience` with its standard output closed from the start, as
/// `audience ... | head -0` would: its exit status and stderr.
fn with_output_closed(args: &[&str]) -> (std::process::ExitStatus, String) {
    use std::io::Read;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_audience"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stdout.take());
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read");
    (child.wait().expect("wait"), err)
}

/// A closed output (`| head`) is no panic: a run still finishes and exits 0;
/// a command that only prints ends quietly, as `cat` does (SIGPIPE).
#[test]
fn cli_closed_output_is_no_panic() {
    use std::os::unix::process::ExitStatusExt;
    let dir = sample_copy();
    let project = dir.path().to_str().expect("utf-8");
    let (status, err) = with_output_closed(&["--quiet", "run", "--project", project]);
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let (_, listing, _) = audience(&["runs", "--project", project, "--json"]);
    assert!(listing.contains("succeeded"), "{listing}");
    for args in [
        vec!["runs", "--project", project],
        vec!["validate", "--project", project],
    ] {
        let (status, err) = with_output_closed(&args);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(
            // SIGPIPE is 13 on Linux; 0 if it printed before the pipe closed.
            status.signal() == Some(13) || status.code() == Some(0),
            "{args:?}: {status:?} {err}"
        );
    }
}
