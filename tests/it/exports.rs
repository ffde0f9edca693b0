//! Exports (SPEC §7): one contract suite run against local files and real
//! emulators on loopback (S3: moto, Azure Blob: Azurite; started by
//! `scripts/emulators.sh`), files read back by an independent reader
//! (pyarrow), plus fault, crash, pack, activation and governance tests.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use audience::config::Project;
use audience::engine::storage::{Location, register_store};
use audience::export::ExportManifest;
use audience::run::{Pipeline, RunRecord};
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::path::Path as StorePath;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use sha2::{Digest, Sha256};

use crate::reference;
use crate::support::{as_of, audience, edit_config, files_under, sample_copy};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// An emulator's URL from `scripts/emulators.sh`; under CI (`AUDIENCE_TEST_STRICT`)
/// a missing emulator fails the test instead of skipping it.
pub fn emulator(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            let strict = std::env::var("AUDIENCE_TEST_STRICT").is_ok_and(|v| !v.is_empty());
            assert!(
                !strict,
                "{var} is not set: run the tests through scripts/test.sh (it starts the emulators)"
            );
            eprintln!("skipping: {var} not set (run through scripts/test.sh)");
            None
        }
    }
}

/// The sample project with its destinations replaced by `destinations`.
fn project_with(destinations: &str) -> tempfile::TempDir {
    let dir = sample_copy();
    let path = dir.path().join("audience.toml");
    let text = std::fs::read_to_string(&path).expect("config");
    let cut = text
        .find("[destinations.")
        .expect("sample has destinations");
    std::fs::write(&path, format!("{}{destinations}", &text[..cut])).expect("write");
    dir
}

fn run(dir: &Path, run_id: &str) -> audience::error::Result<RunRecord> {
    let project = Project::load(dir).expect("valid project");
    rt().block_on(
        Pipeline::new(project)
            .with_as_of(as_of())
            .with_run_id(run_id)
            .expect("id")
            .run(),
    )
}

fn fetch(url: &str) -> Option<Bytes> {
    let loc = Location::parse(url, Path::new("/")).expect("url");
    let store = loc.store().expect("store");
    rt().block_on(async {
        match store.get(&loc.path()).await {
            Ok(r) => Some(r.bytes().await.expect("body")),
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => panic!("reading {url}: {e}"),
        }
    })
}

/// Parse files with pyarrow (an independent reader) and return, per file, its
/// rows as JSON objects of the columns asked for.
fn pyarrow_rows(specs: &serde_json::Value) -> BTreeMap<String, Vec<serde_json::Value>> {
    let python = std::env::var("AUDIENCE_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = r#"
import json, sys
import pyarrow as pa, pyarrow.csv as pc, pyarrow.json as pj, pyarrow.parquet as pq
out = {}
for s in json.load(sys.stdin):
    p, fmt, cols = s["path"], s["format"], s["columns"]
    if fmt == "csv":
        t = pc.read_csv(p,
            parse_options=pc.ParseOptions(delimiter=s["delimiter"], quote_char=s["quote"]),
            convert_options=pc.ConvertOptions(null_values=[s["null"]], strings_can_be_null=True,
                column_types={c: pa.string() for c in cols}))
    elif fmt == "json":
        t = pj.read_json(p)
    else:
        t = pq.read_table(p)
    out[p] = t.select(cols).to_pylist() if t.num_rows else []
print(json.dumps(out))
"#;
    let mut child = std::process::Command::new(&python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{python}: {e} (run through scripts/test.sh for pyarrow)"));
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(specs.to_string().as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("python");
    assert!(
        out.status.success(),
        "pyarrow reader failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

const CONTRACT_SEGMENTS: [&str; 3] = ["high_value", "gold_lapsed", "prospects_london"];

/// The contract: every format and option against one store base URL.
fn contract(base: &str) {
    let base = base.trim_end_matches('/');
    let nonce = format!("{}", std::process::id());
    let destinations = format!(
        r#"
[destinations.c_csv]
url = "{base}/{nonce}/csv"
csv = {{ delimiter = ";", quote = "'", null = "NULL" }}
rows_per_file = 10
segments = ["high_value", "gold_lapsed"]
fields = ["profile_id", "email", "city"]

[destinations.c_csv_gz]
url = "{base}/{nonce}/csv_gz"
compression = "gzip"
segments = ["high_value", "gold_lapsed"]
fields = ["profile_id", "email", "city"]

[destinations.c_parquet_zstd]
url = "{base}/{nonce}/pq_zstd"
format = "parquet"
segments = ["high_value", "gold_lapsed"]
fields = ["profile_id", "email", "city", "points"]

[destinations.c_parquet_snappy]
url = "{base}/{nonce}/pq_snappy"
format = "parquet"
compression = "snappy"
file_name = "{{as_of}}/{{text}}-{{segment_name}}.{{ext}}"
file_text = "audience"
segments = ["high_value", "gold_lapsed"]
fields = ["profile_id", "email", "city"]

[destinations.c_json_gz]
url = "{base}/{nonce}/json_gz"
format = "json"
compression = "gzip"
segments = ["prospects_london"]
fields = ["profile_id", "email", "city"]
"#
    );
    let dir = project_with(&destinations);
    let record = run(dir.path(), "contract-run").expect("run succeeds");
    let (customers, prospects) = reference::expected(dir.path(), as_of().timestamp_micros());
    let scratch = tempfile::tempdir().expect("tmp");
    let mut specs = Vec::new();
    let mut by_file: BTreeMap<String, (String, String)> = BTreeMap::new(); // local → (dest, segment)
    assert_eq!(record.exports.len(), 5);
    for m in &record.exports {
        let dest_url = format!(
            "{base}/{nonce}/{}",
            m.destination
                .trim_start_matches("c_")
                .replace("parquet", "pq")
        );
        // Publish protocol: manifest and _SUCCESS of this run, manifest == record.
        let manifest: ExportManifest = serde_json::from_slice(
            &fetch(&format!("{dest_url}/contract-run/manifest.json")).expect("manifest"),
        )
        .expect("manifest json");
        assert_eq!(manifest.files.len(), m.files.len());
        assert!(fetch(&format!("{dest_url}/contract-run/_SUCCESS")).is_some());
        for f in &m.files {
            let bytes = fetch(&format!("{dest_url}/{}", f.path)).expect("file in manifest exists");
            assert_eq!(f.bytes, bytes.len() as u64, "{}", f.path);
            assert_eq!(f.sha256, hex::encode(Sha256::digest(&bytes)), "{}", f.path);
            let local =
                scratch
                    .path()
                    .join(format!("{}-{}", m.destination, f.path.replace('/', "_")));
            std::fs::write(&local, &bytes).expect("write");
            let local = local.to_string_lossy().into_owned();
            let (delimiter, quote, null_text) = if m.destination == "c_csv" {
                (";", "'", "NULL")
            } else {
                (",", "\"", "")
            };
            specs.push(serde_json::json!({
                "path": local, "format": m.format, "columns": ["profile_id", "email"],
                "delimiter": delimiter, "quote": quote, "null": null_text,
            }));
            by_file.insert(local, (m.destination.clone(), f.segment.clone()));
        }
        if m.destination == "c_csv" {
            // 10 rows per file: every file but the last of a segment is full.
            for seg in ["high_value", "gold_lapsed"] {
                let parts: Vec<_> = m.files.iter().filter(|f| f.segment == seg).collect();
                let n = customers.segments[seg].len() as u64;
                assert_eq!(parts.len() as u64, n.div_ceil(10), "{seg} parts");
                assert!(parts.iter().rev().skip(1).all(|p| p.rows == 10));
                assert!(parts[0].path.ends_with("-00001.csv"), "{}", parts[0].path);
            }
        }
        if m.destination == "c_parquet_snappy" {
            assert!(
                m.files
                    .iter()
                    .all(|f| f.path.starts_with("20250701T000000Z/audience-")),
                "{:?}",
                m.files
            );
        }
    }
    let rows = pyarrow_rows(&serde_json::Value::Array(specs));
    // Per destination and segment: rows in file order, then compared with the reference.
    let mut got: BTreeMap<(String, String), Vec<serde_json::Value>> = BTreeMap::new();
    let mut order: Vec<String> = by_file.keys().cloned().collect();
    order.sort(); // part numbers sort in order
    for f in order {
        got.entry(by_file[&f].clone())
            .or_default()
            .extend(rows[&f].iter().cloned());
    }
    for ((dest, seg), rows) in &got {
        let expected = if seg == "prospects_london" {
            &prospects
        } else {
            &customers
        };
        let want: Vec<String> = expected.segments[seg].iter().cloned().collect();
        let ids: Vec<String> = rows
            .iter()
            .map(|r| r["profile_id"].as_str().expect("id").to_string())
            .collect();
        assert_eq!(
            ids, want,
            "{dest}/{seg}: one row per member, sorted by profile_id"
        );
        for r in rows {
            let id = r["profile_id"].as_str().expect("id");
            let email = expected.profiles[id].0.clone();
            assert_eq!(
                r["email"].as_str().map(str::to_string),
                email,
                "{dest}/{seg} email of {id}"
            );
        }
    }
    assert!(
        CONTRACT_SEGMENTS
            .iter()
            .all(|s| got.keys().any(|(_, g)| g == s))
    );
}

#[test]
fn export_contract_local_files() {
    let out = tempfile::tempdir().expect("tmp");
    contract(&format!("file://{}", out.path().display()));
}

#[test]
fn export_contract_s3_emulator() {
    if let Some(url) = emulator("AUDIENCE_TEST_S3_URL") {
        contract(&format!("{url}/contract"));
    }
}

#[test]
fn export_contract_azure_emulator() {
    if let Some(url) = emulator("AUDIENCE_TEST_AZ_URL") {
        contract(&format!("{url}/contract"));
    }
}

/// GCS: no emulator here accepts object_store's writes, so configuration and
/// URL handling are what is verified.
#[test]
fn export_gcs_urls_and_configuration() {
    let loc = Location::parse("gs://my-bucket/exports/crm/", Path::new("/")).expect("gs url");
    assert_eq!(loc.store_url().as_str(), "gs://my-bucket/");
    assert_eq!(
        loc.join("run-1/a.csv").path().as_ref(),
        "exports/crm/run-1/a.csv"
    );
    assert!(Location::parse("gs:///exports", Path::new("/")).is_err());
    let dir = project_with(
        "[destinations.g]\nurl = \"gs://my-bucket/exports\"\nsegments = [\"high_value\"]\n",
    );
    let p = Project::load(dir.path()).expect("a gs:// destination validates");
    assert_eq!(p.destinations[0].location.scheme(), "gs");
}

/// A store that fails chosen writes: the first `fail_first` puts whose path
/// contains `matching`, or every one of them when `fail_first` is `usize::MAX`.
#[derive(Debug)]
struct Faulty {
    inner: InMemory,
    matching: String,
    fail_first: usize,
    failed: AtomicUsize,
}

impl fmt::Display for Faulty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Faulty({})", self.matching)
    }
}

impl Faulty {
    fn fail(&self, location: &StorePath) -> object_store::Result<()> {
        if location.as_ref().contains(&self.matching)
            && self.failed.fetch_add(1, Ordering::SeqCst) < self.fail_first
        {
            return Err(object_store::Error::Generic {
                store: "faulty",
                source: "injected failure: connection reset".into(),
            });
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl ObjectStore for Faulty {
    async fn put_opts(
        &self,
        location: &StorePath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.fail(location)?;
        self.inner.put_opts(location, payload, opts).await
    }
    async fn put_multipart_opts(
        &self,
        location: &StorePath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.fail(location)?;
        self.inner.put_multipart_opts(location, opts).await
    }
    async fn get_opts(
        &self,
        location: &StorePath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }
    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<StorePath>>,
    ) -> BoxStream<'static, object_store::Result<StorePath>> {
        self.inner.delete_stream(locations)
    }
    fn list(
        &self,
        prefix: Option<&StorePath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }
    async fn list_with_delimiter(
        &self,
        prefix: Option<&StorePath>,
    ) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy_opts(
        &self,
        from: &StorePath,
        to: &StorePath,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

fn faulty_project(name: &str, matching: &str, fail_first: usize) -> tempfile::TempDir {
    register_store(
        &format!("memory://{name}"),
        Arc::new(Faulty {
            inner: InMemory::new(),
            matching: matching.into(),
            fail_first,
            failed: AtomicUsize::new(0),
        }),
    )
    .expect("register");
    project_with(&format!(
        "[destinations.f]\nurl = \"memory://{name}/out\"\nsegments = [\"high_value\", \"gold_lapsed\"]\nfields = [\"profile_id\", \"email\"]\n"
    ))
}

#[test]
fn export_retries_transient_storage_errors() {
    let dir = faulty_project("faulty-transient", "gold_lapsed", 3);
    let record = run(dir.path(), "retry-run").expect("retries get the file through");
    let m = &record.exports[0];
    assert_eq!(m.retries, 3, "three injected failures, three retries");
    assert!(fetch("memory://faulty-transient/out/retry-run/_SUCCESS").is_some());
    let f = m
        .files
        .iter()
        .find(|f| f.segment == "gold_lapsed")
        .expect("file");
    let bytes = fetch(&format!("memory://faulty-transient/out/{}", f.path)).expect("file");
    assert_eq!(f.sha256, hex::encode(Sha256::digest(&bytes)));
}

#[test]
fn export_permanent_failure_leaves_no_manifest() {
    let dir = faulty_project("faulty-permanent", "gold_lapsed", usize::MAX);
    let err = run(dir.path(), "fail-run").expect_err("the write never succeeds");
    let msg = err.to_string();
    assert!(
        msg.contains("gold_lapsed"),
        "the error names the file: {msg}"
    );
    assert!(fetch("memory://faulty-permanent/out/fail-run/manifest.json").is_none());
    assert!(fetch("memory://faulty-permanent/out/fail-run/_SUCCESS").is_none());
    // The run record says so.
    let rec: RunRecord = serde_json::from_slice(
        &std::fs::read(dir.path().join("state/runs/fail-run/run.json")).expect("record"),
    )
    .expect("json");
    assert_eq!(rec.status, audience::run::RunStatus::Failed);
}

#[test]
fn export_killed_midway_leaves_no_success_and_rerun_succeeds() {
    let dir = project_with(
        "[destinations.k]\nurl = \"out/k\"\nsegments = [\"high_value\", \"gold_lapsed\", \"newsletter_optin\"]\nfields = [\"profile_id\", \"email\"]\n",
    );
    let project = dir.path().to_string_lossy().into_owned();
    let args = [
        "--quiet",
        "run",
        "--project",
        &project,
        "--as-of",
        "2025-07-01T00:00:00Z",
        "--run-id",
        "kill-run",
    ];
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_audience"))
        .args(args)
        .env("AUDIENCE_CRASH_AFTER_FILES", "1")
        .output()
        .expect("run");
    assert!(!out.status.success(), "the process died");
    let run_dir = dir.path().join("out/k/kill-run");
    let files = files_under(&run_dir);
    assert_eq!(
        files.len(),
        1,
        "one data file written before the kill: {files:?}"
    );
    assert!(!run_dir.join("_SUCCESS").exists() && !run_dir.join("manifest.json").exists());
    let (code, _, err) = audience(&args);
    assert_eq!(code, 0, "{err}");
    let files = files_under(&run_dir);
    assert!(
        files.contains(&"_SUCCESS".to_string()) && files.contains(&"manifest.json".to_string()),
        "{files:?}"
    );
    assert_eq!(files.len(), 5);
}

#[test]
fn export_same_run_id_rewrites_identical_files() {
    let dir = project_with(
        r#"
[destinations.a]
url = "out/a"
compression = "gzip"
segments = ["high_value", "newsletter_optin"]
fields = ["profile_id", "email", "city"]

[destinations.b]
url = "out/b"
format = "parquet"
segments = ["high_value", "newsletter_optin"]
fields = ["profile_id", "email", "points"]
"#,
    );
    let first = run(dir.path(), "same").expect("run");
    let bytes: Vec<Vec<u8>> = files_under(&dir.path().join("out"))
        .iter()
        .map(|f| std::fs::read(dir.path().join("out").join(f)).expect("read"))
        .collect();
    let second = run(dir.path(), "same").expect("rerun");
    let again: Vec<Vec<u8>> = files_under(&dir.path().join("out"))
        .iter()
        .map(|f| std::fs::read(dir.path().join("out").join(f)).expect("read"))
        .collect();
    assert_eq!(
        bytes, again,
        "same run id and as-of: byte-identical files, manifest included"
    );
    let shas = |r: &RunRecord| -> Vec<String> {
        r.exports
            .iter()
            .flat_map(|m| m.files.iter().map(|f| f.sha256.clone()))
            .collect()
    };
    assert_eq!(shas(&first), shas(&second));
}

/// Rows of a CSV export file (no quoting in these tests).
fn csv_rows(path: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(path)
        .expect("csv")
        .lines()
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

#[test]
fn export_microsoft_advertising_pack() {
    let dir = project_with(
        r#"
[destinations.ms]
kind = "microsoft_advertising"
url = "out/ms"
segments = ["high_value", "gold_lapsed"]
customer_list_ids = { high_value = 111, gold_lapsed = 222 }
"#,
    );
    let record = run(dir.path(), "ms").expect("run");
    let (customers, _) = reference::expected(dir.path(), as_of().timestamp_micros());
    for (seg, id) in [("high_value", "111"), ("gold_lapsed", "222")] {
        let rows = csv_rows(&dir.path().join(format!("out/ms/ms/{seg}.csv")));
        assert_eq!(
            rows[0].join(","),
            audience::export::encode::MICROSOFT_HEADER
        );
        assert_eq!(rows[1][0], "Format Version");
        assert_eq!(rows[2][0], "Customer List");
        assert_eq!(rows[2][2], id);
        assert_eq!(rows[2][10], "Replace");
        let hashes: BTreeSet<String> = rows[3..]
            .iter()
            .map(|r| {
                assert_eq!(r[0], "Customer List Item");
                assert_eq!(r[3], id, "parent is the list");
                assert_eq!(r[11], "Email");
                r[12].clone()
            })
            .collect();
        let want: BTreeSet<String> = customers.segments[seg]
            .iter()
            .filter_map(|p| customers.profiles[p].0.clone())
            .map(|e| hex::encode(Sha256::digest(e.trim().to_lowercase().as_bytes())))
            .collect();
        assert!(!want.is_empty());
        assert_eq!(
            hashes, want,
            "{seg}: SHA-256 of each member's trimmed lower-cased e-mail"
        );
        assert!(hashes.iter().all(|h| {
            h.len() == 64
                && h.bytes()
                    .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        }));
        let counts = &record.exports[0]
            .segments
            .iter()
            .find(|s| s.segment == seg)
            .expect("seg")
            .counts;
        let without_email = customers.segments[seg]
            .iter()
            .filter(|p| customers.profiles[*p].0.is_none())
            .count() as u64;
        assert_eq!(
            counts.skipped_mandatory.get("Email").copied().unwrap_or(0),
            without_email
        );
    }
}

#[test]
fn export_dotdigital_pack_with_consent_and_dedup() {
    let dir = project_with(
        r#"
[destinations.dd]
kind = "dotdigital"
url = "out/dd"
segments = ["high_value"]
purpose = "email_marketing"
fields = [
    { target = "Email", source = "email" },
    { target = "FIRSTNAME", source = "first_name" },
    { target = "POSTCODE", source = "postal_code", transforms = ["trim", "upper"] },
]
dedup_key = ["Email"]
"#,
    );
    let record = run(dir.path(), "dd").expect("run");
    let rows = csv_rows(&dir.path().join("out/dd/dd/high_value.csv"));
    assert_eq!(rows[0], ["Email", "EmailType", "FIRSTNAME", "POSTCODE"]);
    assert!(
        rows[1..]
            .iter()
            .all(|r| r[1] == "Html" && r[0].contains('@'))
    );
    let emails: BTreeSet<&String> = rows[1..].iter().map(|r| &r[0]).collect();
    assert_eq!(
        emails.len(),
        rows.len() - 1,
        "dedup key: one row per e-mail"
    );
    let c = &record.exports[0].segments[0].counts;
    assert!(
        c.suppressed_consent > 0,
        "the sample has high-value profiles without opt-in"
    );
    assert_eq!(
        c.rows + c.suppressed_consent + c.skipped_mandatory.values().sum::<u64>() + c.deduplicated,
        c.members
    );
    // Suppressions: beside the run record, with reasons; not in the destination.
    let sup = dir.path().join("state/runs/dd/suppressions.parquet");
    let file = std::fs::File::open(&sup).expect("suppression file");
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .expect("parquet")
        .build()
        .expect("reader");
    let mut n = 0;
    for b in reader {
        let b = b.expect("batch");
        let reasons = b.column_by_name("reason").expect("reason");
        let reasons = reasons
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .expect("text");
        assert!(
            reasons
                .iter()
                .flatten()
                .all(|r| r.contains("email_marketing"))
        );
        n += b.num_rows() as u64;
    }
    assert_eq!(n, c.suppressed_consent);
    assert!(
        files_under(&dir.path().join("out"))
            .iter()
            .all(|f| !f.contains("suppress"))
    );
}

#[test]
fn export_max_profiles_fail_writes_nothing_and_truncate_keeps_first() {
    let dest = |on_limit: &str| {
        format!(
            "[destinations.a]\nurl = \"out/a\"\nsegments = [\"high_value\"]\n\n[destinations.b]\nurl = \"out/b\"\nsegments = [\"newsletter_optin\"]\nmax_profiles = 5\non_limit = \"{on_limit}\"\n"
        )
    };
    let dir = project_with(&dest("fail"));
    let err = run(dir.path(), "lim").expect_err("limit exceeded");
    let msg = err.to_string();
    assert!(
        msg.contains("destination `b`") && msg.contains("max_profiles = 5"),
        "{msg}"
    );
    assert!(
        files_under(&dir.path().join("out")).is_empty(),
        "nothing written, not even destination a"
    );

    let dir = project_with(&dest("truncate"));
    let record = run(dir.path(), "lim").expect("truncate");
    let (customers, _) = reference::expected(dir.path(), as_of().timestamp_micros());
    let rows = csv_rows(&dir.path().join("out/b/lim/newsletter_optin.csv"));
    let want: Vec<String> = customers.segments["newsletter_optin"]
        .iter()
        .take(5)
        .cloned()
        .collect();
    let got: Vec<String> = rows[1..].iter().map(|r| r[0].clone()).collect();
    assert_eq!(got, want, "the first 5 by profile_id");
    let b = record
        .exports
        .iter()
        .find(|m| m.destination == "b")
        .expect("b");
    assert_eq!(
        b.segments[0].counts.truncated,
        customers.segments["newsletter_optin"].len() as u64 - 5
    );
}

/// Validation refusals: exit code 2, each naming the key and the fix.
#[test]
fn export_config_refusals() {
    let cases: [(&str, &str); 7] = [
        (
            "[destinations.x]\nurl = \"out\"\nfile_name = \"../{segment}.csv\"\nsegments = [\"high_value\"]\n",
            "destinations.x.file_name",
        ),
        (
            "[destinations.x]\nurl = \"out\"\nfile_name = \"/etc/{segment}.csv\"\nsegments = [\"high_value\"]\n",
            "must be a relative path",
        ),
        (
            "[destinations.x]\nkind = \"dotdigital\"\nurl = \"out\"\nsegments = [\"prospects_london\"]\n",
            "a prospect audience may only go to a `cloud_storage` destination",
        ),
        (
            "[destinations.x]\nurl = \"out\"\nsegments = [\"high_value\"]\nmarketing_actions = [\"advertising\"]\nfields = [\"profile_id\", \"phone\"]\n",
            "`phone` carries data-usage label `contact_phone`, which marketing action `advertising` forbids",
        ),
        (
            "[destinations.x]\nkind = \"microsoft_advertising\"\nurl = \"out\"\nsegments = [\"high_value\"]\ncustomer_list_ids = { high_value = 1 }\nmax_profiles = 600000\n",
            "above the `microsoft_advertising` cap of 500000",
        ),
        (
            "[destinations.x]\nurl = \"out\"\nsegments = [\"high_value\"]\npurpose = \"sms\"\n",
            "no `[consent.sms]` rule",
        ),
        (
            "[destinations.x]\nurl = \"out\"\nsegments = [\"high_value\", \"gold_lapsed\"]\nfile_name = \"{run_id}/all.csv\"\n",
            "put `{segment}` in the file name",
        ),
    ];
    for (dest, want) in cases {
        let dir = project_with(dest);
        let (code, _, err) = audience(&["validate", "--project", &dir.path().to_string_lossy()]);
        assert_eq!(code, 2, "{dest}\n{err}");
        assert!(err.contains(want), "{dest}\nwanted {want:?} in:\n{err}");
    }
    // A long template.
    let long = format!("{}{{segment}}.csv", "x".repeat(260));
    let dir = project_with(&format!(
        "[destinations.x]\nurl = \"out\"\nsegments = [\"high_value\"]\nfile_name = \"{long}\"\n"
    ));
    let (code, _, err) = audience(&["validate", "--project", &dir.path().to_string_lossy()]);
    assert_eq!(code, 2);
    assert!(err.contains("longer than 255"), "{err}");
    // Credentials never come from the config: an unknown key is refused.
    let dir = project_with(
        "[destinations.x]\nurl = \"s3://b/x\"\naccess_key = \"AKIA\"\nsegments = [\"high_value\"]\n",
    );
    let (code, _, err) = audience(&["validate", "--project", &dir.path().to_string_lossy()]);
    assert_eq!(code, 2);
    assert!(err.contains("access_key"), "{err}");
    let _ = edit_config;
}

#[test]
fn export_profile_snapshot_with_identity_lists() {
    let dir = project_with(
        r#"
[destinations.snap]
kind = "profile_snapshot"
url = "out/snap"
format = "parquet"
fields = ["profile_id", "email", "city", { target = "emails", source = "identities.email" }]

[destinations.snap_hv]
kind = "profile_snapshot"
url = "out/snap_hv"
format = "json"
segments = ["high_value", "gold_lapsed"]
fields = ["profile_id", "loyalty_tier"]
"#,
    );
    let record = run(dir.path(), "snap").expect("run");
    let (customers, _) = reference::expected(dir.path(), as_of().timestamp_micros());
    let file =
        std::fs::File::open(dir.path().join("out/snap/snap/profiles.parquet")).expect("snapshot");
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .expect("parquet")
        .build()
        .expect("reader");
    let mut ids = Vec::new();
    for b in reader {
        let b = b.expect("batch");
        let pid = b.column_by_name("profile_id").expect("id");
        let pid = pid
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .expect("text");
        let emails = b.column_by_name("emails").expect("identity list");
        let emails = emails
            .as_any()
            .downcast_ref::<arrow::array::ListArray>()
            .expect("list");
        for i in 0..b.num_rows() {
            ids.push(pid.value(i).to_string());
            if let Some(e) = &customers.profiles[pid.value(i)].0 {
                let list = emails.value(i);
                let list = list
                    .as_any()
                    .downcast_ref::<arrow::array::StringArray>()
                    .expect("text");
                let values: Vec<&str> = list.iter().flatten().collect();
                assert!(
                    values.contains(&e.as_str()),
                    "{} lists its e-mails",
                    pid.value(i)
                );
                assert!(values.windows(2).all(|w| w[0] < w[1]), "sorted, distinct");
            }
        }
    }
    let want: Vec<String> = customers.profiles.keys().cloned().collect();
    assert_eq!(ids, want, "every customer profile, sorted by profile_id");
    let hv = record
        .exports
        .iter()
        .find(|m| m.destination == "snap_hv")
        .expect("hv");
    let union: BTreeSet<&String> = customers.segments["high_value"]
        .iter()
        .chain(&customers.segments["gold_lapsed"])
        .collect();
    assert_eq!(
        hv.files[0].rows,
        union.len() as u64,
        "profiles of either segment, once each"
    );
}

/// Files above the multipart threshold go up in parts, to each emulator.
#[test]
fn export_multipart_upload_to_emulators() {
    use audience::export::publish::{MULTIPART_THRESHOLD, RetryPolicy, upload};
    let local = tempfile::tempdir().expect("tmp");
    let mut bases = vec![format!("file://{}", local.path().display())];
    bases.extend(emulator("AUDIENCE_TEST_S3_URL"));
    bases.extend(emulator("AUDIENCE_TEST_AZ_URL"));
    // 20 MiB in uneven chunks, deterministic content.
    let mut chunks = Vec::new();
    let mut total = 0u64;
    let mut x: u64 = 1;
    while total <= MULTIPART_THRESHOLD + (4 << 20) {
        let n = 3_000_000 + (x % 1_000_000) as usize;
        let chunk: Vec<u8> = (0..n).map(|i| (i as u64).wrapping_mul(x) as u8).collect();
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        total += n as u64;
        chunks.push(Bytes::from(chunk));
    }
    let whole: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
    for base in bases {
        let url = format!("{base}/multipart/big.bin");
        let loc = Location::parse(&url, Path::new("/")).expect("url");
        let store = loc.store().expect("store");
        let mut retried = 0;
        rt().block_on(upload(
            store.as_ref(),
            &loc,
            &chunks,
            RetryPolicy::default(),
            &mut retried,
        ))
        .unwrap_or_else(|e| panic!("{url}: {e}"));
        let back = fetch(&url).expect("uploaded");
        assert_eq!(back.len(), whole.len(), "{url}");
        assert!(back.as_ref() == whole.as_slice(), "{url}: same bytes");
    }
}

/// An interrupt during a multipart upload stops it and aborts it: the write
/// fails with the signal, no object appears, and the S3 emulator holds no
/// open upload (an upload dropped without its abort stays listed there).
#[test]
fn export_interrupted_multipart_upload_is_aborted() {
    use audience::error::Error;
    use audience::export::publish::{MULTIPART_THRESHOLD, RetryPolicy, write_file};
    use audience::run::interrupt::{Interrupt, Signal};
    let local = tempfile::tempdir().expect("tmp");
    let mut bases = vec![format!("file://{}", local.path().display())];
    let s3 = emulator("AUDIENCE_TEST_S3_URL");
    bases.extend(s3.clone());
    bases.extend(emulator("AUDIENCE_TEST_AZ_URL"));
    for base in bases {
        let url = format!("{base}/interrupted/big.bin");
        let loc = Location::parse(&url, Path::new("/")).expect("url");
        let store = loc.store().expect("store");
        let stop = Interrupt::default();
        let raise = stop.clone();
        // 1 MiB chunks: the signal comes once the multipart upload has parts.
        let raise_at = (MULTIPART_THRESHOLD >> 20) as usize + 10;
        let sent = Arc::new(AtomicUsize::new(0));
        let counted = sent.clone();
        let encode = Arc::new(move |sink: &mut audience::export::encode::Sink<'_>| {
            let chunk = Bytes::from(vec![7u8; 1 << 20]);
            for i in 0..raise_at * 4 {
                if i == raise_at {
                    raise.raise(Signal::Term);
                }
                sink(chunk.clone())?;
                counted.fetch_add(1, Ordering::SeqCst);
            }
            Ok(0)
        });
        let mut retried = 0;
        let r = rt().block_on(write_file(
            store.as_ref(),
            &loc,
            encode,
            RetryPolicy::default(),
            &mut retried,
            &stop,
        ));
        assert!(
            matches!(r, Err(Error::Interrupted(Signal::Term))),
            "{url}: {r:?}"
        );
        assert!(
            sent.load(Ordering::SeqCst) < raise_at * 2,
            "{url}: encoding stopped soon after the signal"
        );
        assert!(fetch(&url).is_none(), "{url}: no object");
    }
    assert!(files_under(local.path()).is_empty(), "nothing left on disk");
    if s3.is_some() {
        let python = std::env::var("AUDIENCE_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let out = std::process::Command::new(python)
            .args([
                "-c",
                "import boto3, os\n\
                 c = boto3.client('s3', endpoint_url=os.environ['AWS_ENDPOINT'], region_name='us-east-1')\n\
                 print(len(c.list_multipart_uploads(Bucket='audience-test', Prefix='interrupted/').get('Uploads', [])))",
            ])
            .output()
            .expect("python");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "0",
            "no open multipart upload on the S3 emulator"
        );
    }
}

#[test]
fn export_destinations_catalog_lists_kinds_and_last_export() {
    let dir = sample_copy();
    let project = dir.path().to_string_lossy().into_owned();
    let (code, out, err) = audience(&["destinations", "--project", &project, "--json"]);
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).expect("json");
    let kinds: Vec<&str> = doc["kinds"]
        .as_array()
        .expect("kinds")
        .iter()
        .filter_map(|k| k["kind"].as_str())
        .collect();
    assert_eq!(
        kinds,
        [
            "cloud_storage",
            "microsoft_advertising",
            "dotdigital",
            "profile_snapshot"
        ]
    );
    assert!(
        doc["destinations"]
            .as_array()
            .expect("list")
            .iter()
            .all(|d| d["last_export"].is_null())
    );
    run(dir.path(), "cat-run").expect("run");
    let (_, out, _) = audience(&["destinations", "--project", &project, "--json"]);
    let doc: serde_json::Value = serde_json::from_str(&out).expect("json");
    let bing = doc["destinations"]
        .as_array()
        .expect("list")
        .iter()
        .find(|d| d["name"] == "bing_ads")
        .expect("bing_ads");
    assert_eq!(bing["last_export"]["run_id"], "cat-run");
    assert_eq!(bing["last_export"]["files"], 2);
}

#[test]
fn export_delta_files_hold_entered_and_exited_members() {
    let dir = project_with(
        "[destinations.dl]\nurl = \"out/dl\"\ndeltas = true\nsegments = [\"high_value\", \"gold_lapsed\", \"browsed_not_bought\"]\nfields = [\"profile_id\", \"email\"]\n\n[destinations.all]\nkind = \"profile_snapshot\"\nurl = \"out/all\"\n",
    );
    let at = |s: &str| {
        chrono::DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&chrono::Utc)
    };
    let run_at = |id: &str, t: &str| {
        let project = Project::load(dir.path()).expect("valid");
        rt().block_on(
            Pipeline::new(project)
                .with_as_of(at(t))
                .with_run_id(id)
                .expect("id")
                .run(),
        )
        .expect("run")
    };
    let ids = |path: &Path| -> BTreeSet<String> {
        csv_rows(path)[1..].iter().map(|r| r[0].clone()).collect()
    };
    let first = run_at("d1", "2025-03-01T00:00:00Z");
    // No baseline: everyone entered, nobody exited.
    for seg in ["high_value", "gold_lapsed"] {
        let base = dir.path().join("out/dl/d1");
        assert_eq!(
            ids(&base.join(format!("{seg}.entered.csv"))),
            ids(&base.join(format!("{seg}.csv")))
        );
        assert!(ids(&base.join(format!("{seg}.exited.csv"))).is_empty());
    }
    assert!(
        first
            .exports
            .iter()
            .find(|m| m.destination == "dl")
            .expect("dl")
            .files
            .iter()
            .any(|f| f.delta == audience::export::Delta::Entered)
    );
    let second = run_at("d2", "2025-07-01T00:00:00Z");
    assert_eq!(second.membership_baseline.as_deref(), Some("d1"));
    // Profiles that merged into others since d1 no longer exist: exited rows come
    // from current profiles.
    let existing = ids(&dir.path().join("out/all/d2/profiles.csv"));
    let mut changes = 0;
    for seg in ["high_value", "gold_lapsed", "browsed_not_bought"] {
        let (a, b) = (dir.path().join("out/dl/d1"), dir.path().join("out/dl/d2"));
        let (before, now) = (
            ids(&a.join(format!("{seg}.csv"))),
            ids(&b.join(format!("{seg}.csv"))),
        );
        let entered = ids(&b.join(format!("{seg}.entered.csv")));
        let exited = ids(&b.join(format!("{seg}.exited.csv")));
        assert_eq!(
            entered,
            now.difference(&before).cloned().collect(),
            "{seg} entered"
        );
        let gone: BTreeSet<String> = before.difference(&now).cloned().collect();
        assert_eq!(
            exited,
            gone.intersection(&existing).cloned().collect(),
            "{seg} exited"
        );
        changes += entered.len() + exited.len();
    }
    assert!(
        changes > 0,
        "the sample's segments change between the two as-ofs"
    );
}
