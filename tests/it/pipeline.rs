//! The whole pipeline on the sample project, checked against the independent
//! reference in `reference.rs`.

use std::collections::{BTreeMap, BTreeSet};

use audience::config::Project;
use audience::export::ExportManifest;
use audience::run::{Pipeline, RunStatus};
use sha2::{Digest, Sha256};

use crate::reference;
use crate::support::{as_of, files_under, sample_copy};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Rows of a CSV export as header → value maps (the sample has no quoted fields).
fn read_csv(path: &std::path::Path) -> Vec<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).expect("csv");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    lines
        .map(|l| {
            assert!(!l.contains('"'), "unexpected quoting in {l}");
            header
                .iter()
                .map(|h| h.to_string())
                .zip(l.split(',').map(str::to_string))
                .collect()
        })
        .collect()
}

#[test]
fn pipeline_sample_exports_match_reference() {
    let dir = sample_copy();
    let project = Project::load(dir.path()).expect("valid sample");
    let record = rt()
        .block_on(
            Pipeline::new(project)
                .with_as_of(as_of())
                .with_run_id("test-run")
                .expect("id")
                .run(),
        )
        .expect("run succeeds");
    assert_eq!(record.status, RunStatus::Succeeded);

    let (customers, prospects) = reference::expected(dir.path(), as_of().timestamp_micros());
    let exports = dir.path().join("out/exports");
    for (dest, expected) in [("crm_lists", &customers), ("prospect_lists", &prospects)] {
        let run_dir = exports.join(dest).join("test-run");
        assert!(run_dir.join("_SUCCESS").exists(), "{dest} has no _SUCCESS");
        let manifest: ExportManifest = serde_json::from_slice(
            &std::fs::read(run_dir.join("manifest.json")).expect("manifest"),
        )
        .expect("manifest json");
        assert_eq!(manifest.run_id, "test-run");
        assert_eq!(manifest.as_of, "2025-07-01T00:00:00Z");
        for f in &manifest.files {
            let bytes =
                std::fs::read(exports.join(dest).join(&f.path)).expect("file in manifest exists");
            assert_eq!(f.bytes, bytes.len() as u64);
            assert_eq!(f.sha256, hex::encode(Sha256::digest(&bytes)));
            let rows = read_csv(&exports.join(dest).join(&f.path));
            assert_eq!(f.rows, rows.len() as u64);
            let want = &expected.segments[&f.segment];
            assert!(
                !want.is_empty(),
                "sample segment {} should have members to be a meaningful test",
                f.segment
            );
            let got: Vec<String> = rows.iter().map(|r| r["profile_id"].clone()).collect();
            let mut sorted = got.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(
                got, sorted,
                "{}: rows sorted by profile_id, one per member",
                f.segment
            );
            let got: BTreeSet<String> = got.into_iter().collect();
            assert_eq!(&got, want, "members of {}", f.segment);
            for r in &rows {
                let (email, city, tier) = &expected.profiles[&r["profile_id"]];
                assert_eq!(
                    r["email"],
                    email.clone().unwrap_or_default(),
                    "preferred email of {}",
                    r["profile_id"]
                );
                assert_eq!(
                    r["city"],
                    city.clone().unwrap_or_default(),
                    "merged city of {}",
                    r["profile_id"]
                );
                if let Some(t) = r.get("loyalty_tier") {
                    assert_eq!(
                        t,
                        &tier.clone().unwrap_or_default(),
                        "merged tier of {}",
                        r["profile_id"]
                    );
                }
            }
        }
        let segs: Vec<&str> = manifest.files.iter().map(|f| f.segment.as_str()).collect();
        assert_eq!(
            segs.len(),
            expected.segments.len(),
            "{dest} exports every configured segment"
        );
    }
    // The run record and the identity map are in the state folder.
    let state = dir.path().join("state/runs/test-run");
    assert!(state.join("run.json").exists());
    assert!(state.join("identity_map.parquet").exists());
    assert!(
        record
            .rejections
            .iter()
            .any(|r| r.dataset == "crm" && r.column == "email"),
        "dirty e-mails are counted: {:?}",
        record.rejections
    );
}

#[test]
fn pipeline_same_input_gives_identical_files() {
    let a = sample_copy();
    let b = sample_copy();
    for d in [&a, &b] {
        let project = Project::load(d.path()).expect("valid");
        rt().block_on(
            Pipeline::new(project)
                .with_as_of(as_of())
                .with_run_id("same")
                .expect("id")
                .run(),
        )
        .expect("run");
    }
    let fa = files_under(&a.path().join("out"));
    assert_eq!(fa, files_under(&b.path().join("out")));
    assert!(!fa.is_empty());
    for f in &fa {
        assert!(
            std::fs::read(a.path().join("out").join(f)).expect("a")
                == std::fs::read(b.path().join("out").join(f)).expect("b"),
            "{f} differs"
        );
    }
    // The run's own outputs too (identity map, links, health, rejected
    // sample, ...), all but the run record (it holds wall-clock times).
    let runs = "state/runs/same";
    let fs = files_under(&a.path().join(runs));
    assert_eq!(fs, files_under(&b.path().join(runs)));
    assert!(fs.iter().any(|f| f == "identity_map.parquet"), "{fs:?}");
    assert!(fs.iter().any(|f| f == "rejected_sample.jsonl"), "{fs:?}");
    for f in fs.iter().filter(|f| f.as_str() != "run.json") {
        assert!(
            std::fs::read(a.path().join(runs).join(f)).expect("a")
                == std::fs::read(b.path().join(runs).join(f)).expect("b"),
            "{runs}/{f} differs"
        );
    }
}
