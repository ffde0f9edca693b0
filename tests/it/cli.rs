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
