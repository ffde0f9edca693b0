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
