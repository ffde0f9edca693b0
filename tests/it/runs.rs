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
    crate::support::schedule_destination(dir.path(), "crm_lists", "0 6 * * *");
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
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_audience"))
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

/// A destination held by a live run is refused with a clear message; a lock
/// left by a dead process is taken over.
#[test]
fn runs_never_overlap_on_a_destination() {
    let dir = sample_copy();
    let project = dir.path().to_string_lossy().into_owned();
    let locks = dir.path().join("state/locks");
    std::fs::create_dir_all(&locks).expect("mkdir");
    let holder = |pid: u32, lease_secs: i64| {
        let now = chrono::Utc::now();
        serde_json::json!({
            "run_id": "other-run", "host": audience::run::lock::host(), "pid": pid,
            "acquired_at": now.to_rfc3339(),
            "lease_until": (now + chrono::Duration::seconds(lease_secs)).to_rfc3339(),
        })
        .to_string()
    };
    // Held by a live process (this test) with a valid lease.
    std::fs::write(
        locks.join("destination.crm_lists.lock"),
        holder(std::process::id(), 600),
    )
    .expect("lock");
    let (code, _, err) = audience(&[
        "--quiet",
        "run",
        "--project",
        &project,
        "--run-id",
        "blocked",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("destination `crm_lists`")
            && err.contains("run `other-run`")
            && err.contains("never overlap"),
        "{err}"
    );
    assert!(
        !dir.path().join("state/runs/blocked").exists(),
        "a refused run starts nothing"
    );
    assert!(
        !locks.join("run.blocked.lock").exists(),
        "and holds nothing"
    );
    // Held by a process that is gone: taken over.
    let gone = std::process::Command::new("true").spawn().expect("spawn");
    let pid = gone.id();
    let _ = gone.wait_with_output();
    std::fs::write(locks.join("destination.crm_lists.lock"), holder(pid, 600)).expect("lock");
    let (code, _, err) = audience(&["--quiet", "run", "--project", &project, "--run-id", "after"]);
    assert_eq!(code, 0, "{err}");
    let left: Vec<_> = std::fs::read_dir(&locks).expect("locks").collect();
    assert!(left.is_empty(), "locks released at the end");
}

/// A run killed at several points: the next run marks it failed, nothing of
/// it is published, and the next run succeeds.
#[test]
fn runs_killed_midway_are_marked_failed_by_the_next_run() {
    let dir = sample_copy();
    let project = dir.path().to_string_lossy().into_owned();
    for stage in ["ingest", "identity", "export"] {
        let id = format!("killed-at-{stage}");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_audience"))
            .args([
                "--quiet",
                "run",
                "--project",
                &project,
                "--run-id",
                &id,
                "--as-of",
                "2025-07-01T00:00:00Z",
            ])
            .env("AUDIENCE_CRASH_AT", stage)
            .output()
            .expect("run");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(out.status.signal(), Some(9), "{stage}: killed by SIGKILL");
        let rec = crate::support::run_record(dir.path(), &id);
        assert_eq!(rec["status"], "running", "{stage}: left as running");
        let published: Vec<String> = crate::support::files_under(&dir.path().join("out"))
            .into_iter()
            .filter(|f| f.contains(&id) && f.ends_with("_SUCCESS"))
            .collect();
        assert!(
            published.is_empty(),
            "{stage}: nothing published: {published:?}"
        );
        let next = format!("after-{stage}");
        let (code, _, err) = audience(&[
            "--quiet",
            "run",
            "--project",
            &project,
            "--run-id",
            &next,
            "--as-of",
            "2025-07-01T00:00:00Z",
        ]);
        assert_eq!(code, 0, "{stage}: {err}");
        let rec = crate::support::run_record(dir.path(), &id);
        assert_eq!(rec["status"], "failed", "{stage}: marked failed");
        assert!(
            rec["error"].as_str().is_some_and(|e| e.contains("died")),
            "{rec}"
        );
    }
    // The ledger shows all six, three failed and three succeeded.
    let (_, out, _) = audience(&["runs", "--project", &project, "--json"]);
    let statuses: Vec<String> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("json")["status"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| *s == "failed").count(),
        3,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| *s == "succeeded").count(),
        3,
        "{statuses:?}"
    );
}

/// `run --dry-run` writes nothing, and plans exactly the files a run writes.
#[test]
fn runs_dry_run_writes_nothing_and_matches_the_real_run() {
    let dir = sample_copy();
    let project = dir.path().to_string_lossy().into_owned();
    let args = [
        "--quiet",
        "run",
        "--project",
        &project,
        "--as-of",
        "2025-07-01T00:00:00Z",
        "--run-id",
        "same",
    ];
    let mut dry: Vec<&str> = args.to_vec();
    dry.extend(["--dry-run", "--json"]);
    let (code, out, err) = audience(&dry);
    assert_eq!(code, 0, "{err}");
    assert!(
        !dir.path().join("out").exists() && !dir.path().join("state").exists(),
        "nothing written"
    );
    let plan: serde_json::Value = serde_json::from_str(&out).expect("json");
    let (code, _, err) = audience(&args);
    assert_eq!(code, 0, "{err}");
    let rec = crate::support::run_record(dir.path(), "same");
    let files = |v: &serde_json::Value, key: &str| -> Vec<(String, String, u64)> {
        let mut out: Vec<(String, String, u64)> = v[key]
            .as_array()
            .expect("list")
            .iter()
            .flat_map(|e| {
                let d = e["destination"].as_str().unwrap_or_default().to_string();
                e["files"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(move |f| {
                        (
                            d.clone(),
                            f["path"].as_str().unwrap_or_default().to_string(),
                            f["rows"].as_u64().unwrap_or_default(),
                        )
                    })
            })
            .collect();
        out.sort();
        out
    };
    assert_eq!(files(&plan, "exports"), files(&rec, "exports"));
    assert!(!files(&plan, "exports").is_empty());
}

/// `--fail-on-rejected`: a complete run, then exit code 1 when values were rejected.
#[test]
fn runs_fail_on_rejected_exits_with_one() {
    let dir = sample_copy();
    let project = dir.path().to_string_lossy().into_owned();
    let (code, _, err) = audience(&[
        "--quiet",
        "run",
        "--project",
        &project,
        "--run-id",
        "warn",
        "--fail-on-rejected",
    ]);
    assert_eq!(code, 1, "the sample has dirty identifiers: {err}");
    assert!(err.contains("rejected"), "{err}");
    let rec = crate::support::run_record(dir.path(), "warn");
    assert_eq!(
        rec["status"], "succeeded",
        "the run itself completed and published"
    );
    let (code, _, _) = audience(&["--quiet", "run", "--project", &project, "--run-id", "plain"]);
    assert_eq!(code, 0);
}

/// Two processes started at once on the same destinations: exactly one runs,
/// the other exits with code 2 naming the run that holds the lock.
#[test]
fn runs_two_processes_at_once_one_runs() {
    let dir = sample_copy();
    let project = dir.path().to_string_lossy().into_owned();
    let spawn = |id: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_audience"))
            .args(["--quiet", "run", "--project", &project, "--run-id", id])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn")
    };
    let (a, b) = (spawn("race-a"), spawn("race-b"));
    let (a, b) = (
        a.wait_with_output().expect("a"),
        b.wait_with_output().expect("b"),
    );
    let codes = [a.status.code(), b.status.code()];
    assert!(
        codes.contains(&Some(0)) && codes.contains(&Some(2)),
        "{codes:?}"
    );
    let loser = if a.status.code() == Some(2) { &a } else { &b };
    let err = String::from_utf8_lossy(&loser.stderr);
    assert!(err.contains("never overlap"), "{err}");
    let runs: Vec<_> = std::fs::read_dir(dir.path().join("state/runs"))
        .expect("runs")
        .flatten()
        .filter(|e| e.path().is_dir())
        .collect();
    assert_eq!(runs.len(), 1, "only the winner has a record");
}

/// `--dry-run --compare-to-last`: what a run would change, writing nothing.
#[test]
fn runs_dry_run_compares_with_the_last_run() {
    let dir = sample_copy();
    let project = dir.path().to_string_lossy().into_owned();
    let (code, _, err) = audience(&[
        "--quiet",
        "run",
        "--project",
        &project,
        "--as-of",
        "2025-05-01T00:00:00Z",
        "--run-id",
        "may",
    ]);
    assert_eq!(code, 0, "{err}");
    let before = crate::support::files_under(dir.path());
    let (code, out, err) = audience(&[
        "--quiet",
        "run",
        "--project",
        &project,
        "--as-of",
        "2025-07-01T00:00:00Z",
        "--dry-run",
        "--compare-to-last",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        crate::support::files_under(dir.path()),
        before,
        "nothing written"
    );
    let plan: serde_json::Value = serde_json::from_str(&out).expect("json");
    let c = &plan["compared"];
    assert_eq!(c["run_id"], "may");
    assert!(
        c["profiles_merged"].as_u64().is_some_and(|n| n > 0),
        "later data merges profiles: {c}"
    );
    for s in c["segments"].as_array().expect("segments") {
        let (b, n) = (
            s["members_before"].as_u64().expect("before"),
            s["members_now"].as_u64().expect("now"),
        );
        let (e, x) = (
            s["entered"].as_u64().expect("in"),
            s["exited"].as_u64().expect("out"),
        );
        assert_eq!(b + e - x, n, "{s}");
    }
    let rec = crate::support::run_record(dir.path(), "may");
    for e in c["exports"].as_array().expect("exports") {
        let d = e["destination"].as_str().expect("name");
        let then: u64 = rec["exports"]
            .as_array()
            .expect("exports")
            .iter()
            .filter(|m| m["destination"] == d)
            .flat_map(|m| m["files"].as_array().cloned().unwrap_or_default())
            .map(|f| f["rows"].as_u64().unwrap_or(0))
            .sum();
        assert_eq!(e["rows_before"].as_u64(), Some(then), "{d}");
    }
}

/// `--segment`: only that segment is evaluated and exported, and the run is
/// never the membership baseline of the next one.
#[test]
fn runs_segment_subset_exports_only_it() {
    let dir = sample_copy();
    let project = dir.path().to_string_lossy().into_owned();
    let run = |id: &str, as_of: &str, extra: &[&str]| {
        let mut args = vec![
            "--quiet",
            "run",
            "--project",
            &project,
            "--as-of",
            as_of,
            "--run-id",
            id,
        ];
        args.extend_from_slice(extra);
        let (code, _, err) = audience(&args);
        assert_eq!(code, 0, "{err}");
        crate::support::run_record(dir.path(), id)
    };
    run("base", "2025-05-01T00:00:00Z", &[]);
    let sub = run("sub", "2025-07-01T00:00:00Z", &["--segment", "high_value"]);
    assert_eq!(sub["segment_subset"], serde_json::json!(["high_value"]));
    let segs: Vec<&str> = sub["segments"]
        .as_array()
        .expect("segments")
        .iter()
        .filter_map(|s| s["segment"].as_str())
        .collect();
    assert_eq!(segs, ["high_value"]);
    for m in sub["exports"].as_array().expect("exports") {
        for f in m["files"].as_array().expect("files") {
            assert_eq!(f["segment"], "high_value", "{m}");
        }
        assert_ne!(m["destination"], "profile_archive");
        assert_ne!(m["destination"], "prospect_lists");
    }
    let next = run("next", "2025-07-02T00:00:00Z", &[]);
    assert_eq!(
        next["membership_baseline"], "base",
        "a subset run is not a baseline"
    );
    let (code, _, err) = audience(&[
        "run",
        "--project",
        &project,
        "--segment",
        "hig_value",
        "--dry-run",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("did you mean `high_value`?"), "{err}");
}

/// The sample with `crm_lists` on a 06:00 schedule, seen before that slot:
/// the project and its path.
fn scheduled_sample() -> (tempfile::TempDir, String) {
    let dir = sample_copy();
    crate::support::schedule_destination(dir.path(), "crm_lists", "0 6 * * *");
    std::fs::create_dir_all(dir.path().join("state")).expect("mkdir");
    std::fs::write(
        dir.path().join("state/schedules.json"),
        r#"{"destinations":{"crm_lists":{"schedule":"0 6 * * *","since":"2025-07-01T00:00:00Z"}}}"#,
    )
    .expect("seen");
    let project = dir.path().to_string_lossy().into_owned();
    (dir, project)
}

/// `audience schedule` on `project` with its clock just after the 06:00 slot.
fn scheduler_at_slot(project: &str, env: &[(&str, &str)]) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_audience"))
        .args(["--quiet", "schedule", "--project", project, "--poll", "1"])
        .args(["--now", "2025-07-01T06:00:30Z"])
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn")
}

/// SIGTERM while a scheduled run is under way: the run finishes and publishes,
/// then the scheduler stops without starting another.
#[test]
fn runs_scheduler_finishes_the_current_run_on_sigterm() {
    let (dir, project) = scheduled_sample();
    let child = scheduler_at_slot(&project, &[]);
    // Wait for the run to start, then ask the scheduler to stop.
    let runs = dir.path().join("state/runs");
    for _ in 0..400 {
        if std::fs::read_dir(&runs).is_ok_and(|mut d| d.next().is_some()) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    crate::support::send(&child, "TERM");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, listing, _) = audience(&["runs", "--project", &project, "--json"]);
    let records: Vec<serde_json::Value> = listing
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(records.len(), 1, "one scheduled run, no other started");
    assert_eq!(records[0]["status"], "succeeded");
    assert_eq!(records[0]["trigger"], "schedule");
    let id = records[0]["run_id"].as_str().expect("id");
    assert!(
        dir.path()
            .join(format!("out/exports/crm_lists/{id}/_SUCCESS"))
            .exists(),
        "published"
    );
}

/// Locks in a bucket: the conditional create refuses a second holder on the
/// S3 and Azure emulators too (state shared by several machines).
#[test]
fn runs_locks_hold_in_buckets() {
    for var in ["AUDIENCE_TEST_S3_URL", "AUDIENCE_TEST_AZ_URL"] {
        let Some(base) = crate::exports::emulator(var) else {
            continue;
        };
        let dir = sample_copy();
        crate::support::edit_config(
            dir.path(),
            "state = \"state\"",
            &format!("state = \"{base}/locks-{}\"", std::process::id()),
        );
        let project = audience::config::Project::load(dir.path()).expect("valid");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("rt");
        rt.block_on(async {
            let dests = vec!["crm_lists".to_string()];
            let mut first = audience::run::lock::acquire(&project, "one", &dests)
                .await
                .expect("first holder");
            let second = audience::run::lock::acquire(&project, "two", &dests).await;
            let err = second.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(
                err.contains("run `one`") && err.contains("never overlap"),
                "{var}: {err}"
            );
            assert!(
                audience::run::lock::run_alive(&project, "one")
                    .await
                    .expect("read")
            );
            first.release().await;
            let mut again = audience::run::lock::acquire(&project, "two", &dests)
                .await
                .expect("free again");
            again.release().await;
        });
    }
}

/// SIGINT or SIGTERM stops `audience run`: it exits with 128 + the signal,
/// its record says `failed` with the signal at once (the next run has nothing
/// to mark), its locks are released, and only destinations whose `_SUCCESS`
/// it wrote before the signal are published, all listed in its record.
#[test]
fn runs_stopped_by_a_signal_record_it_and_release_their_locks() {
    let dir = sample_copy();
    let project = dir.path().to_string_lossy().into_owned();
    let locks = dir.path().join("state/locks");
    let published = |id: &str| -> Vec<String> {
        let mut names: Vec<String> = crate::support::files_under(&dir.path().join("out/exports"))
            .into_iter()
            .filter(|f| f.contains(id) && f.ends_with("_SUCCESS"))
            .filter_map(|f| f.split('/').next().map(str::to_string))
            .collect();
        names.sort();
        names
    };
    for (at, signal, code) in [
        ("identity", "INT", 130),
        ("merge+segments", "TERM", 143),
        ("export:crm_parquet", "TERM", 143),
    ] {
        let id = format!("stopped-{}", at.replace([':', '+'], "-"));
        let (status, err) = crate::support::stop_run(&project, &id, at, signal, &[], &[]);
        assert_eq!(status, Some(code), "{at}: {err}");
        assert!(
            err.contains(&format!("interrupted by SIG{signal}")),
            "{at}: {err}"
        );
        let rec = crate::support::run_record(dir.path(), &id);
        assert_eq!(rec["status"], "failed", "{at}: {rec}");
        assert!(
            rec["error"]
                .as_str()
                .is_some_and(|e| e.contains("interrupted by")),
            "{at}: {rec}"
        );
        let left: Vec<_> = std::fs::read_dir(&locks)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{at}: locks released: {left:?}");
        let mut listed: Vec<String> = rec["exports"]
            .as_array()
            .expect("exports")
            .iter()
            .filter_map(|e| e["destination"].as_str().map(str::to_string))
            .collect();
        listed.sort();
        assert_eq!(
            listed,
            published(&id),
            "{at}: the record lists what is published"
        );
        if at.starts_with("export:") {
            assert!(
                !listed.is_empty(),
                "destinations before crm_parquet are published"
            );
            assert!(!listed.contains(&"crm_parquet".to_string()), "{listed:?}");
        } else {
            assert!(listed.is_empty(), "{at}: nothing published: {listed:?}");
        }
    }
    // The next run finds nothing to mark failed, and succeeds.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_audience"))
        .args(["run", "--project", &project, "--run-id", "after-stops"])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("marking a run that died"), "{err}");
}

/// The scheduler's first SIGTERM during a run waits for the run; a second
/// one stops the run cleanly (record failed with the signal, locks
/// released, nothing published), and the scheduler then exits 0.
#[test]
fn runs_scheduler_second_signal_stops_the_current_run() {
    use std::io::Read;
    let (dir, project) = scheduled_sample();
    let mut child = scheduler_at_slot(&project, &[("AUDIENCE_PAUSE_AT", "export")]);
    let (mut stderr, mut seen) = crate::support::wait_paused(&mut child, "export");
    crate::support::send(&child, "TERM");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "the first signal waits for the run"
    );
    crate::support::send(&child, "TERM");
    stderr.read_to_string(&mut seen).expect("read");
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0), "{seen}");
    let (_, listing, _) = audience(&["runs", "--project", &project, "--json"]);
    let records: Vec<serde_json::Value> = listing
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(records.len(), 1, "{listing}");
    assert_eq!(records[0]["status"], "failed", "{listing}");
    let id = records[0]["run_id"].as_str().expect("id");
    let rec = crate::support::run_record(dir.path(), id);
    assert!(
        rec["error"]
            .as_str()
            .is_some_and(|e| e.contains("interrupted by SIGTERM")),
        "{rec}"
    );
    assert!(
        !dir.path()
            .join(format!("out/exports/crm_lists/{id}/_SUCCESS"))
            .exists()
    );
    let locks: Vec<_> = std::fs::read_dir(dir.path().join("state/locks"))
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(locks.is_empty(), "locks released");
}
