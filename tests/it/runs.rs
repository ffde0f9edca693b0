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

/// `run --due` with an injected clock: no run on config save, a slot fires
/// once, missed slots run once, a changed schedule waits for its next slot.
#[test]
fn runs_due_follows_schedules_with_an_injected_clock() {
    let dir = sample_copy();
    crate::support::edit_config(
        dir.path(),
        "[destinations.crm_lists]\n",
        "[destinations.crm_lists]\nschedule = \"0 6 * * *\"\n",
    );
    let project = dir.path().to_string_lossy().into_owned();
    let due = |now: &str| {
        let (code, out, err) = audience(&[
            "--quiet",
            "run",
            "--project",
            &project,
            "--due",
            "--now",
            now,
        ]);
        assert_eq!(code, 0, "{err}");
        out
    };
    let runs = || -> Vec<serde_json::Value> {
        let (_, out, _) = audience(&["runs", "--project", &project, "--json"]);
        out.lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect()
    };
    // The schedule is first seen now: saving a config runs nothing.
    assert!(
        due("2025-07-01T05:00:00Z").contains("nothing due; next: crm_lists at 2025-07-01T06:00:00")
    );
    assert!(due("2025-07-01T05:59:59Z").contains("nothing due"));
    assert!(runs().is_empty());
    // The slot fires once.
    assert!(due("2025-07-01T06:00:00Z").contains("succeeded"));
    let r = runs();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["trigger"], "due");
    assert_eq!(r[0]["as_of"], "2025-07-01T06:00:00Z");
    let dests: Vec<&str> = r[0]["exports"]
        .as_array()
        .expect("exports")
        .iter()
        .filter_map(|e| e["destination"].as_str())
        .collect();
    assert_eq!(dests, ["crm_lists"], "only the due destination");
    assert!(due("2025-07-01T12:00:00Z").contains("nothing due"));
    // Three slots missed: one run.
    assert!(due("2025-07-04T09:00:00Z").contains("succeeded"));
    assert!(due("2025-07-04T09:10:00Z").contains("nothing due"));
    assert_eq!(runs().len(), 2);
    // A changed schedule is seen anew: its slot 09:30 lies before, so nothing runs.
    crate::support::edit_config(
        dir.path(),
        "schedule = \"0 6 * * *\"",
        "schedule = \"30 9 * * *\"",
    );
    assert!(
        due("2025-07-04T09:40:00Z").contains("nothing due; next: crm_lists at 2025-07-05T09:30:00")
    );
    assert_eq!(runs().len(), 2);
    // A bad schedule is a config error.
    crate::support::edit_config(
        dir.path(),
        "schedule = \"30 9 * * *\"",
        "schedule = \"daily\"",
    );
    let (code, _, err) = audience(&["validate", "--project", &project]);
    assert_eq!(code, 2);
    assert!(err.contains("destinations.crm_lists.schedule"), "{err}");
}

/// `audience schedule` stops cleanly on SIGTERM while waiting.
#[test]
fn runs_scheduler_stops_on_sigterm() {
    let dir = sample_copy();
    let project = dir.path().to_string_lossy().into_owned();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_audience"))
        .args(["--quiet", "schedule", "--project", &project, "--poll", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    // Wait until it has checked once (schedules.json written), then stop it.
    let seen = dir.path().join("state/schedules.json");
    for _ in 0..200 {
        if seen.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(seen.exists(), "the scheduler checked the schedules");
    let pid = child.id().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let out = child.wait_with_output().expect("wait");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("scheduler stopped"));
    assert!(
        !dir.path().join("state/runs").exists(),
        "no schedule: nothing ran"
    );
}
