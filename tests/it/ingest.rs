//! Bad input stops the run before anything is written, naming dataset, file and column.

use std::sync::Arc;

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};

use crate::support::{audience, files_under, sample_copy};

fn run(dir: &std::path::Path) -> (i32, String) {
    let (code, out, err) = audience(&[
        "--quiet",
        "run",
        "--project",
        dir.to_str().expect("utf-8"),
        "--as-of",
        "2025-07-01",
    ]);
    (code, format!("{out}{err}"))
}

#[test]
fn ingest_missing_files_named_and_nothing_written() {
    let dir = sample_copy();
    std::fs::remove_dir_all(dir.path().join("data/loyalty")).expect("rm");
    let (code, out) = run(dir.path());
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("dataset `loyalty`: no Parquet files at"),
        "{out}"
    );
    assert!(
        files_under(&dir.path().join("out")).is_empty(),
        "nothing exported"
    );
}

#[test]
fn ingest_missing_column_named_with_file() {
    let dir = sample_copy();
    // Replace the crm data with a file lacking the declared `updated_at` column.
    let crm = dir.path().join("data/crm");
    std::fs::remove_dir_all(&crm).expect("rm");
    std::fs::create_dir_all(&crm).expect("mkdir");
    let schema = Arc::new(Schema::new(vec![
        Field::new("crm_id", DataType::Utf8, true),
        Field::new("email", DataType::Utf8, true),
        Field::new("phone", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(vec!["C1"])),
            Arc::new(StringArray::from(vec!["a@b.com"])),
            Arc::new(StringArray::from(vec![None::<&str>])),
        ],
    )
    .expect("batch");
    let file = std::fs::File::create(crm.join("part-0.parquet")).expect("create");
    let mut w = parquet::arrow::ArrowWriter::try_new(file, schema, None).expect("writer");
    w.write(&batch).expect("write");
    w.close().expect("close");
    let (code, out) = run(dir.path());
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("dataset `crm`, file `file:///"), "{out}");
    assert!(
        out.contains("part-0.parquet`, column `updated_at`: column not found"),
        "{out}"
    );
    assert!(
        files_under(&dir.path().join("out")).is_empty(),
        "nothing exported"
    );
}

#[test]
fn ingest_wrong_type_named() {
    let dir = sample_copy();
    let p = dir.path().join("audience.toml");
    let text = std::fs::read_to_string(&p).expect("read");
    // `points` is an integer column: declaring it the timestamp is a type error.
    std::fs::write(
        &p,
        text.replacen(
            "timestamp = \"updated_at\"\nidentities = { loyalty_id",
            "timestamp = \"points\"\nidentities = { loyalty_id",
            1,
        ),
    )
    .expect("write");
    let (code, out) = run(dir.path());
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("dataset `loyalty`, file"), "{out}");
    assert!(
        out.contains("column `points`: has type Int64, but a timestamp or date is expected"),
        "{out}"
    );
}

/// Datasets, destinations and state behind object-store URLs (`memory://` here;
/// the same code paths serve s3://, gs:// and az://).
#[test]
fn ingest_reads_and_writes_object_store_urls() {
    use audience::engine::storage::store_for;
    use object_store::{ObjectStoreExt, PutPayload};
    let dir = sample_copy();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("rt");
    let input = store_for(&url::Url::parse("memory://ingest-test/").expect("url")).expect("store");
    rt.block_on(async {
        for f in crate::support::files_under(&dir.path().join("data")) {
            let bytes = std::fs::read(dir.path().join("data").join(&f)).expect("read");
            input
                .put(
                    &object_store::path::Path::from(format!("lake/{f}")),
                    PutPayload::from(bytes),
                )
                .await
                .expect("put");
        }
    });
    std::fs::remove_dir_all(dir.path().join("data")).expect("rm local data");
    let cfg = dir.path().join("audience.toml");
    let text = std::fs::read_to_string(&cfg).expect("read");
    let text = text
        .replace("path = \"data/", "path = \"memory://ingest-test/lake/")
        .replace(
            "url = \"out/exports/",
            "url = \"memory://ingest-out/exports/",
        )
        .replace("state = \"state\"", "state = \"memory://ingest-state/\"");
    std::fs::write(&cfg, text).expect("write");
    let project = audience::config::Project::load(dir.path()).expect("valid");
    let record = rt
        .block_on(
            audience::run::Pipeline::new(project)
                .with_as_of(crate::support::as_of())
                .with_run_id("mem")
                .expect("id")
                .run(),
        )
        .expect("run over memory:// succeeds");
    assert!(
        record.inputs.iter().all(|d| d
            .files
            .iter()
            .all(|f| f.path.starts_with("memory://ingest-test/lake/"))),
        "{:?}",
        record.inputs
    );
    let out = store_for(&url::Url::parse("memory://ingest-out/").expect("url")).expect("store");
    let state = store_for(&url::Url::parse("memory://ingest-state/").expect("url")).expect("store");
    rt.block_on(async {
        out.head(&object_store::path::Path::from(
            "exports/crm_lists/mem/_SUCCESS",
        ))
        .await
        .expect("_SUCCESS in the bucket");
        out.head(&object_store::path::Path::from(
            "exports/crm_lists/mem/high_value.csv",
        ))
        .await
        .expect("file in the bucket");
        state
            .head(&object_store::path::Path::from("runs/mem/run.json"))
            .await
            .expect("run record in the state bucket");
    });
    // Same members as the local run.
    let local = sample_copy();
    let project = audience::config::Project::load(local.path()).expect("valid");
    let local_record = rt
        .block_on(
            audience::run::Pipeline::new(project)
                .with_as_of(crate::support::as_of())
                .run(),
        )
        .expect("local run");
    let counts = |r: &audience::run::RunRecord| {
        r.segments
            .iter()
            .map(|s| (s.segment.clone(), s.members))
            .collect::<Vec<_>>()
    };
    assert_eq!(counts(&record), counts(&local_record));
}

/// A segment's member count in `audience run`'s output.
fn members(out: &str, segment: &str) -> u64 {
    let line = out
        .lines()
        .find(|l| l.contains(&format!("segment {segment} ")))
        .unwrap_or_else(|| panic!("no line for {segment}: {out}"));
    line.split_whitespace()
        .nth(2)
        .expect("count")
        .replace(',', "")
        .parse()
        .expect("number")
}

/// The run record that `audience run` printed the path of.
fn printed_record(out: &str) -> serde_json::Value {
    let path = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("record "))
        .unwrap_or_else(|| panic!("no record line: {out}"));
    serde_json::from_slice(&std::fs::read(path.trim()).expect("record")).expect("json")
}

/// `key=value` folders become columns, one value per folder, and files that
/// a listing skips inside them (an unfinished write, a staging folder)
/// are not read.
#[test]
fn ingest_hive_partitions_become_columns() {
    let dir = sample_copy();
    let purchases = dir.path().join("data/purchases");
    crate::support::partition_purchases(dir.path(), &["source=shop", "source=web"]);
    for (id, source) in [("shop_buyers", "shop"), ("web_buyers", "web")] {
        std::fs::write(
            dir.path().join(format!("sql/segments/{id}.sql")),
            format!("SELECT profile_id FROM events WHERE source = '{source}'"),
        )
        .expect("write");
    }
    let (code, out) = run(dir.path());
    assert_eq!(code, 0, "{out}");
    let shop = members(&out, "shop_buyers");
    assert!(shop > 100, "{out}");
    assert_eq!(members(&out, "web_buyers"), shop, "{out}");
    let rows = |r: &serde_json::Value| {
        r["stages"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["stage"] == "identity"))
            .map(|s| s["counts"]["rows"].clone())
            .expect("identity rows")
    };
    let purchase_files = |r: &serde_json::Value| {
        r["inputs"]
            .as_array()
            .and_then(|d| d.iter().find(|d| d["dataset"] == "purchases"))
            .and_then(|d| d["files"].as_array())
            .map(Vec::len)
            .expect("purchases inputs")
    };
    let before = printed_record(&out);
    assert_eq!(purchase_files(&before), 2);
    for decoy in [
        "source=shop/_temporary/0/part-00009.parquet",
        "source=shop/.staging/part-00008.parquet",
        "source=web/_SUCCESS/part-00007.parquet",
    ] {
        let to = purchases.join(decoy);
        std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        std::fs::copy(purchases.join("source=shop/part-00000.parquet"), to).expect("cp");
    }
    let (code, out) = run(dir.path());
    assert_eq!(code, 0, "{out}");
    let after = printed_record(&out);
    assert_eq!(purchase_files(&after), 2, "{out}");
    assert_eq!(rows(&after), rows(&before), "no decoy rows read");
    assert_eq!(members(&out, "shop_buyers"), shop);
}

/// A folder of this process in the emulator that `var` names (`None` when
/// it is not set, outside CI): its URL, its store and its path there.
fn emulator_lake(
    var: &str,
    name: &str,
) -> Option<(String, Arc<dyn object_store::ObjectStore>, String)> {
    let base = crate::exports::emulator(var)?;
    let lake = format!("{base}/{name}-{}", std::process::id());
    let url = url::Url::parse(&lake).expect("url");
    let store = audience::engine::storage::store_for(&url).expect("store");
    let prefix = url.path().trim_matches('/').to_string();
    Some((lake, store, prefix))
}

/// Partition folder names carry Hive's escapes (`%3A` for `:`, `%25` for
/// `%`, as Spark writes them) and its NULL marker: segments that filter on
/// the decoded values find their rows, on local disk and in buckets
/// (DataFusion's own listing of the folder would look for `source=web:shop/`
/// and find none).
#[test]
fn ingest_hive_escaped_partition_values_are_decoded_everywhere() {
    use object_store::{ObjectStoreExt, PutPayload};
    const FOLDERS: [&str; 3] = [
        "source=web%3Ashop",
        "source=100%25",
        "source=__HIVE_DEFAULT_PARTITION__",
    ];
    let dir = sample_copy();
    let file = crate::support::partition_purchases(dir.path(), &FOLDERS);
    for (id, source) in [
        ("colon_buyers", "= 'web:shop'"),
        ("percent_buyers", "= '100%'"),
        // Spark's folder for a NULL value.
        ("null_buyers", "IS NULL AND dataset = 'purchases'"),
        ("marker_buyers", "LIKE '%HIVE%'"),
    ] {
        std::fs::write(
            dir.path().join(format!("sql/segments/{id}.sql")),
            format!("SELECT profile_id FROM events WHERE source {source}"),
        )
        .expect("write");
    }
    let check = |what: &str| {
        let (code, out) = run(dir.path());
        assert_eq!(code, 0, "{what}: {out}");
        let colon = members(&out, "colon_buyers");
        assert!(colon > 100, "{what}: {out}");
        assert_eq!(members(&out, "percent_buyers"), colon, "{what}: {out}");
        assert_eq!(members(&out, "null_buyers"), colon, "{what}: {out}");
        assert_eq!(members(&out, "marker_buyers"), 0, "{what}: {out}");
        let identity = &printed_record(&out)["stages"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["stage"] == "identity").cloned())
            .expect("identity stage")["counts"];
        (colon, identity["rows"].clone())
    };
    let local = check("local disk");
    // A file name with an escape, in a dataset without partitions, is read.
    let crm = dir.path().join("data/crm");
    std::fs::rename(crm.join("part-00000.parquet"), crm.join("part%3A0.parquet")).expect("mv");
    assert_eq!(check("local disk, crm/part%3A0.parquet"), local);
    // In buckets: the keys hold the escapes as written.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("rt");
    for var in ["AUDIENCE_TEST_S3_URL", "AUDIENCE_TEST_AZ_URL"] {
        let Some((lake, store, prefix)) = emulator_lake(var, "escaped") else {
            continue;
        };
        let put = |key: &str, bytes: &[u8]| {
            let path = object_store::path::Path::parse(format!("{prefix}/{key}")).expect("key");
            rt.block_on(store.put(&path, PutPayload::from(bytes.to_vec())))
                .unwrap_or_else(|e| panic!("{var}: put {key}: {e}"));
        };
        for folder in FOLDERS {
            put(&format!("purchases/{folder}/part-00000.parquet"), &file);
        }
        put(
            "crm/part%3A0.parquet",
            &std::fs::read(crm.join("part%3A0.parquet")).expect("read"),
        );
        let config = dir.path().join("audience.toml");
        let text = std::fs::read_to_string(&config).expect("config");
        let mut edited = text.clone();
        for ds in ["purchases", "crm"] {
            let local_path = format!("path = \"data/{ds}/\"");
            edited = edited.replace(&local_path, &format!("path = \"{lake}/{ds}/\""));
        }
        std::fs::write(&config, edited).expect("write");
        assert_eq!(check(var), local, "{var}");
        std::fs::write(&config, text).expect("write");
    }
}

#[test]
fn ingest_mixed_partition_layout_is_an_error() {
    let dir = sample_copy();
    let purchases = dir.path().join("data/purchases");
    std::fs::create_dir_all(purchases.join("source=shop")).expect("mkdir");
    std::fs::copy(
        purchases.join("part-00000.parquet"),
        purchases.join("source=shop/part-00001.parquet"),
    )
    .expect("cp");
    let (code, out) = run(dir.path());
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("dataset `purchases`, file"), "{out}");
    assert!(
        out.contains("every file needs the same `key=value` folders"),
        "{out}"
    );
}

#[test]
fn ingest_unknown_export_field_stops_before_writing() {
    let dir = sample_copy();
    crate::support::edit_config(
        dir.path(),
        "fields = [\"profile_id\", \"email\", \"first_name\", \"city\"]",
        "fields = [\"profile_id\", \"emial\", \"email_all\"]",
    );
    let (code, out) = run(dir.path());
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("destinations.prospect_lists.fields[1]: `emial` is not an exportable prospect profile column: did you mean `email`?"), "{out}");
    assert!(
        out.contains("destinations.prospect_lists.fields[2]: `email_all` is not an exportable"),
        "{out}"
    );
    assert!(
        files_under(&dir.path().join("out")).is_empty(),
        "nothing exported"
    );
}

#[test]
fn ingest_missing_bucket_credentials_named_without_secrets() {
    let dir = sample_copy();
    crate::support::edit_config(
        dir.path(),
        "path = \"data/crm/\"",
        "path = \"s3://audience-test-bucket/crm/\"",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_audience"))
        .args([
            "--quiet",
            "run",
            "--project",
            dir.path().to_str().expect("utf-8"),
        ])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env("AWS_SECRET_ACCESS_KEY", "sekrit-value-never-printed")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT", "http://127.0.0.1:9")
        .env("AWS_ALLOW_HTTP", "true")
        .output()
        .expect("run");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("dataset `crm`: cannot open `s3://audience-test-bucket/crm/`"),
        "{text}"
    );
    assert!(text.contains("Missing AccessKeyId"), "{text}");
    assert!(
        !text.contains("sekrit-value"),
        "a secret was printed: {text}"
    );
    assert!(
        files_under(&dir.path().join("out")).is_empty(),
        "nothing exported"
    );
}

/// Run the project as run `r1`: (exit code, stdout, stderr).
fn run_r1(dir: &std::path::Path) -> (i32, String, String) {
    let project = dir.to_str().expect("utf-8");
    audience(&[
        "--quiet",
        "run",
        "--project",
        project,
        "--as-of",
        "2025-07-01",
        "--run-id",
        "r1",
    ])
}

/// The input files the run record lists for `dataset`, relative to the project.
fn inputs(dir: &std::path::Path, dataset: &str) -> Vec<String> {
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("state/runs/r1/run.json")).expect("run record"),
    )
    .expect("json");
    let root = format!("file://{}/", dir.display());
    record["inputs"]
        .as_array()
        .expect("inputs")
        .iter()
        .filter(|d| d["dataset"] == dataset)
        .flat_map(|d| d["files"].as_array().expect("files").iter())
        .map(|f| f["path"].as_str().expect("path").replace(&root, ""))
        .collect()
}

/// A folder is read at any depth, skipping `.`/`_` names and folders; a
/// pattern (`*`, `?`, `[...]`) keeps the files below its folder that match.
#[test]
fn ingest_folders_at_any_depth_and_wildcards() {
    let dir = sample_copy();
    let data = dir.path().join("data");
    let mv = |from: &str, to: &str| {
        let to = data.join(to);
        std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        std::fs::rename(data.join(from), to).expect("mv");
    };
    let decoy = |to: &str| {
        // Another dataset's file: read by mistake, it would fail the schema check.
        let to = data.join(to);
        std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        std::fs::copy(data.join("prospects/part-00000.parquet"), to).expect("cp");
    };
    mv("crm/part-00000.parquet", "crm/2025/07/part-00000.parquet");
    decoy("crm/_temporary/0/part-00009.parquet");
    decoy("crm/2025/.staging/part-00008.parquet");
    decoy("crm/2025/_SUCCESS.parquet");
    decoy("loyalty/other.parquet");
    decoy("loyalty/part-000001.parquet");
    decoy("web_events/old/x.parquet.bak");
    mv(
        "web_events/part-00000.parquet",
        "web_events/day=1/part-00000.parquet",
    );
    let edit = |from: &str, to: &str| crate::support::edit_config(dir.path(), from, to);
    edit(
        "path = \"data/loyalty/\"",
        "path = \"data/loyalty/part-?????.parquet\"",
    );
    edit(
        "path = \"data/web_signups/\"",
        "path = \"data/web_signups/*.parquet\"",
    );
    edit(
        "path = \"data/purchases/\"",
        "path = \"data/purchases/part-[0-9]*\"",
    );
    edit("path = \"data/web_events/\"", "path = \"data/web_events\"");
    let (code, out, err) = run_r1(dir.path());
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        inputs(dir.path(), "crm"),
        ["data/crm/2025/07/part-00000.parquet"]
    );
    assert_eq!(
        inputs(dir.path(), "loyalty"),
        ["data/loyalty/part-00000.parquet"]
    );
    assert_eq!(
        inputs(dir.path(), "web_signups"),
        ["data/web_signups/part-00000.parquet"]
    );
    assert_eq!(
        inputs(dir.path(), "purchases"),
        ["data/purchases/part-00000.parquet"]
    );
    assert_eq!(
        inputs(dir.path(), "web_events"),
        ["data/web_events/day=1/part-00000.parquet"]
    );
    // A pattern that matches nothing is the missing-files error.
    edit("part-?????.parquet", "part-?.parquet");
    let (code, out) = run(dir.path());
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("dataset `loyalty`: no Parquet files at"),
        "{out}"
    );
}

/// The same listing rules in buckets (S3 and Azure emulators): a folder at
/// any depth, `?` and `*` patterns, `_`/`.` folders skipped.
#[test]
fn ingest_wildcards_and_depth_in_buckets() {
    use object_store::{ObjectStoreExt, PutPayload};
    for var in ["AUDIENCE_TEST_S3_URL", "AUDIENCE_TEST_AZ_URL"] {
        let Some((lake, store, prefix)) = emulator_lake(var, "lake") else {
            continue;
        };
        let dir = sample_copy();
        let data = dir.path().join("data");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("rt");
        let put = |from: &str, to: &str| {
            let bytes = std::fs::read(data.join(from)).expect("read");
            rt.block_on(store.put(
                &object_store::path::Path::from(format!("{prefix}/{to}")),
                PutPayload::from(bytes),
            ))
            .unwrap_or_else(|e| panic!("{var}: put {to}: {e}"));
        };
        for ds in [
            "crm",
            "loyalty",
            "web_signups",
            "web_events",
            "purchases",
            "prospects",
        ] {
            let to = match ds {
                "crm" => "crm/2025/07/part-00000.parquet".to_string(),
                _ => format!("{ds}/part-00000.parquet"),
            };
            put(&format!("{ds}/part-00000.parquet"), &to);
        }
        // Decoys: another dataset's schema, which would fail the checks if read.
        put(
            "prospects/part-00000.parquet",
            "crm/_temporary/0/part-00009.parquet",
        );
        put(
            "prospects/part-00000.parquet",
            "loyalty/part-000001.parquet",
        );
        put("prospects/part-00000.parquet", "web_signups/other.bin");
        let edit = |from: &str, to: &str| crate::support::edit_config(dir.path(), from, to);
        for ds in ["crm", "web_events", "purchases", "prospects"] {
            edit(
                &format!("path = \"data/{ds}/\""),
                &format!("path = \"{lake}/{ds}/\""),
            );
        }
        edit(
            "path = \"data/loyalty/\"",
            &format!("path = \"{lake}/loyalty/part-?????.parquet\""),
        );
        edit(
            "path = \"data/web_signups/\"",
            &format!("path = \"{lake}/web_signups/*.parquet\""),
        );
        std::fs::remove_dir_all(&data).expect("rm local data");
        let (code, out, err) = run_r1(dir.path());
        assert_eq!(code, 0, "{var}: {out}{err}");
        let files = |ds: &str| inputs(dir.path(), ds);
        assert_eq!(
            files("crm"),
            [format!("{lake}/crm/2025/07/part-00000.parquet")],
            "{var}"
        );
        assert_eq!(
            files("loyalty"),
            [format!("{lake}/loyalty/part-00000.parquet")],
            "{var}"
        );
        assert_eq!(
            files("web_signups"),
            [format!("{lake}/web_signups/part-00000.parquet")],
            "{var}"
        );
    }
}
