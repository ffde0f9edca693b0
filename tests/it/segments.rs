//! Segment membership history (SPEC §6): realized, existing, exited against
//! the previous successful run by as-of, and reproducible re-runs.

use std::collections::BTreeMap;
use std::path::Path;

use arrow::array::AsArray;

use super::identity::{Rows, profile_ids, project, run_at};

const DAY: i64 = 86_400;

fn at(day: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(day * DAY, 0).expect("time")
}

/// (segment, profile id) → status, from a run's memberships file.
fn memberships(dir: &Path, run_id: &str) -> BTreeMap<(String, String), String> {
    let bytes = std::fs::read(
        dir.join("state/runs")
            .join(run_id)
            .join("memberships.parquet"),
    )
    .expect("memberships file");
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        bytes::Bytes::from(bytes),
    )
    .expect("parquet")
    .build()
    .expect("reader");
    let mut out = BTreeMap::new();
    for b in reader {
        let b = b.expect("batch");
        let col = |n: &str| {
            b.column_by_name(n)
                .expect("column")
                .as_string::<i32>()
                .clone()
        };
        let (s, p, st) = (col("segment"), col("profile_id"), col("status"));
        for i in 0..b.num_rows() {
            out.insert(
                (s.value(i).to_string(), p.value(i).to_string()),
                st.value(i).to_string(),
            );
        }
    }
    out
}

#[test]
fn segments_membership_history_realized_existing_exited() {
    let dir = tempfile::tempdir().expect("tmp");
    // Ann and Bob from day 1; Bob's name changes on day 5; Cat arrives on day 5.
    let crm = Rows {
        columns: &["crm_id", "email", "name"],
        rows: vec![
            (vec![Some("C1"), Some("ann@x.com"), Some("x")], 1),
            (vec![Some("C2"), Some("bob@x.com"), Some("x")], 1),
            (vec![Some("C2"), Some("bob@x.com"), Some("y")], 5),
            (vec![Some("C3"), Some("cat@x.com"), Some("x")], 5),
        ],
    };
    let web = Rows {
        columns: &["cookie", "email"],
        rows: vec![(vec![Some("ck1"), Some("ann@x.com")], 1)],
    };
    let prospects = Rows {
        columns: &["email", "name"],
        rows: vec![(vec![Some("p@x.com"), Some("P")], 1)],
    };
    project(dir.path(), "", "", &crm, &web, &prospects);
    std::fs::write(
        dir.path().join("sql/segments/named_x.sql"),
        "SELECT profile_id FROM profiles WHERE name = 'x'",
    )
    .expect("segment");

    let r1 = run_at(dir.path(), "r1", at(2));
    let first = memberships(dir.path(), "r1");
    assert!(
        first.values().all(|s| s == "realized"),
        "no baseline: all new"
    );
    assert_eq!(r1.membership_baseline, None);

    let r2 = run_at(dir.path(), "r2", at(10));
    assert_eq!(r2.membership_baseline.as_deref(), Some("r1"));
    let ids = profile_ids(dir.path(), "r2");
    let id = |e: &str| ids[&format!("customer/email:{e}")].clone();
    let second = memberships(dir.path(), "r2");
    let status = |p: &str| second[&("named_x".to_string(), id(p))].as_str();
    assert_eq!(status("ann@x.com"), "existing");
    assert_eq!(status("cat@x.com"), "realized");
    assert_eq!(status("bob@x.com"), "exited", "bob's name is no longer x");
    let count = r2
        .segments
        .iter()
        .find(|s| s.segment == "named_x")
        .expect("segment count");
    assert_eq!(
        (count.members, count.realized, count.existing, count.exited),
        (2, 1, 1, 1)
    );

    // A re-run at the first as-of compares with what came before it (nothing),
    // so its memberships are byte for byte the first run's.
    run_at(dir.path(), "r3", at(2));
    let file = |r: &str| {
        std::fs::read(
            dir.path()
                .join("state/runs")
                .join(r)
                .join("memberships.parquet"),
        )
        .expect("file")
    };
    assert_eq!(file("r3"), file("r1"));
    // And the next run after r2 compares with r2 (the latest as-of before it), not r3.
    let r4 = run_at(dir.path(), "r4", at(11));
    assert_eq!(r4.membership_baseline.as_deref(), Some("r2"));
    assert!(
        !memberships(dir.path(), "r4").contains_key(&("named_x".to_string(), id("bob@x.com"))),
        "an exited member is not carried into later runs"
    );
}

#[test]
fn segments_and_query_commands() {
    use super::support::{audience, sample_copy};
    let dir = sample_copy();
    let p = dir.path().to_str().expect("utf8");
    let (code, _, err) = audience(&["segments", "--project", p]);
    assert_eq!(code, 2, "no run yet: {err}");
    assert!(err.contains("no successful run yet"), "{err}");
    for as_of in ["2025-06-01", "2025-07-01"] {
        let (code, _, err) = audience(&["--quiet", "run", "--project", p, "--as-of", as_of]);
        assert_eq!(code, 0, "{err}");
    }
    let (code, out, err) = audience(&["segments", "--project", p, "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert!(
        v["baseline"].is_string(),
        "compared with the first run: {v}"
    );
    let high = v["segments"]
        .as_array()
        .expect("segments")
        .iter()
        .find(|s| s["segment"] == "high_value")
        .expect("high_value");
    let n = |k: &str| high[k].as_u64().expect("count");
    assert_eq!(n("members"), n("realized") + n("existing"));

    // Evaluated at the latest as-of without writing: the same members as that run.
    let runs_before = std::fs::read_dir(dir.path().join("state/runs"))
        .expect("runs")
        .count();
    let (code, out, err) = audience(&[
        "segments",
        "--project",
        p,
        "--as-of",
        "2025-07-01",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let again: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(again["segments"], v["segments"]);
    assert_eq!(
        std::fs::read_dir(dir.path().join("state/runs"))
            .expect("runs")
            .count(),
        runs_before,
        "nothing written"
    );

    // Ad-hoc queries see the segments and features, as CSV.
    let (code, out, err) = audience(&[
        "query",
        "--project",
        p,
        "--as-of",
        "2025-07-01",
        "--format",
        "csv",
        "SELECT count(*) AS n FROM high_value",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), format!("n\n{}", n("members")));
    for (sql, msg) in [
        ("DROP TABLE profiles", "is refused"),
        ("SELECT * FROM __ds_crm", "unknown relation `__ds_crm`"),
        ("COPY profiles TO '/tmp/x.csv'", "is refused"),
        ("SELECT nme FROM profiles", "profiles.first_name"),
    ] {
        let (code, _, err) = audience(&["query", "--project", p, "--as-of", "2025-07-01", sql]);
        assert_eq!(code, 2, "{sql}: {err}");
        assert!(err.contains(msg), "{sql}: {err}");
    }
}

#[test]
fn segments_features_are_computed_once_per_policy() {
    let dir = super::support::sample_copy();
    let readers = std::fs::read_dir(dir.path().join("sql/segments"))
        .expect("segments")
        .filter(|e| {
            std::fs::read_to_string(e.as_ref().expect("entry").path())
                .expect("sql")
                .contains("purchase_stats")
        })
        .count();
    assert!(
        readers >= 2,
        "the sample has several segments reading the feature"
    );
    let record = run_at(dir.path(), "r1", super::support::as_of());
    let stage = record
        .stages
        .iter()
        .find(|s| s.stage == "segments")
        .expect("segments stage");
    assert_eq!(
        stage.counts["feature_queries"], 1,
        "one feature, one policy: computed once for {readers} segments"
    );
}
