//! The run ledger (`audience runs`).

use crate::support::{audience, sample_copy};

#[test]
fn runs_ledger_lists_history_newest_first_and_shows_one() {
    let dir = sample_copy();
    let project = dir.path().to_string_lossy().into_owned();
    let (code, out, _) = audience(&["runs", "--project", &project]);
    assert_eq!(code, 0);
    assert!(out.contains("No runs"), "{out}");
    for (id, as_of) in [
        ("first", "2025-05-01T00:00:00Z"),
        ("second", "2025-07-01T00:00:00Z"),
    ] {
        let (code, _, err) = audience(&[
            "--quiet",
            "run",
            "--project",
            &project,
            "--as-of",
            as_of,
            "--run-id",
            id,
        ]);
        assert_eq!(code, 0, "{err}");
    }
    // A failed run is in the ledger too, with its error.
    std::fs::write(
        dir.path().join("sql/segments/broken.sql"),
        "SELECT profile_id FROM nowhere",
    )
    .expect("write");
    let (code, _, _) = audience(&["--quiet", "run", "--project", &project, "--run-id", "third"]);
    assert_eq!(code, 2);
    std::fs::remove_file(dir.path().join("sql/segments/broken.sql")).expect("rm");

    let (code, out, err) = audience(&["runs", "--project", &project, "--json"]);
    assert_eq!(code, 0, "{err}");
    let records: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let ids: Vec<&str> = records
        .iter()
        .filter_map(|r| r["run_id"].as_str())
        .collect();
    assert_eq!(
        &ids[ids.len() - 2..],
        ["second", "first"],
        "newest first: {ids:?}"
    );
    assert!(
        records
            .iter()
            .all(|r| r["status"] == "succeeded" || r["error"].is_string())
    );
    let (code, out, _) = audience(&["runs", "--project", &project, "--limit", "1"]);
    assert_eq!(code, 0);
    assert_eq!(
        out.lines()
            .filter(|l| l.starts_with("first") || l.starts_with("second"))
            .count(),
        1,
        "{out}"
    );

    let (code, out, _) = audience(&["runs", "--project", &project, "show", "first", "--json"]);
    assert_eq!(code, 0);
    let r: serde_json::Value = serde_json::from_str(&out).expect("record");
    assert_eq!(r["as_of"], "2025-05-01T00:00:00Z");
    assert!(r["exports"].as_array().is_some_and(|e| !e.is_empty()));
    let (code, _, err) = audience(&["runs", "--project", &project, "show", "frist"]);
    assert_eq!(code, 2);
    assert!(err.contains("did you mean `first`?"), "{err}");
}
