//! Identity rules end to end on small hand-made projects (SPEC §4).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use audience::config::Project;
use audience::run::{Pipeline, RunRecord};

const DAY: i64 = 86_400_000_000;

/// Rows of a dataset: identity/attribute cells by column, and a day number.
pub struct Rows<'a> {
    pub columns: &'a [&'a str],
    pub rows: Vec<(Vec<Option<&'a str>>, i64)>,
}

pub fn write_dataset(dir: &Path, name: &str, rows: &Rows, event: bool) {
    let mut fields: Vec<Field> = rows
        .columns
        .iter()
        .map(|c| Field::new(*c, DataType::Utf8, true))
        .collect();
    fields.push(Field::new(
        "ts",
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        true,
    ));
    if event {
        fields.push(Field::new("event_type", DataType::Utf8, true));
    }
    let mut arrays: Vec<ArrayRef> = (0..rows.columns.len())
        .map(|c| {
            Arc::new(StringArray::from(
                rows.rows
                    .iter()
                    .map(|(cells, _)| cells[c])
                    .collect::<Vec<_>>(),
            )) as ArrayRef
        })
        .collect();
    arrays.push(Arc::new(
        TimestampMicrosecondArray::from(rows.rows.iter().map(|(_, d)| d * DAY).collect::<Vec<_>>())
            .with_timezone("UTC"),
    ));
    if event {
        arrays.push(Arc::new(StringArray::from(vec!["visit"; rows.rows.len()])));
    }
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).expect("batch");
    let folder = dir.join("data").join(name);
    std::fs::create_dir_all(&folder).expect("mkdir");
    let file = std::fs::File::create(folder.join("part-0.parquet")).expect("create");
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).expect("writer");
    w.write(&batch).expect("write");
    w.close().expect("close");
}

/// A project with namespaces crm_id (1), email (2), cookie (3); a `crm` profile
/// dataset (crm_id, email, name), a `web` event dataset (cookie, email), and a
/// `prospects` dataset (email, name). `extra` is appended to the config.
pub fn project(dir: &Path, extra_ns: &str, extra: &str, crm: &Rows, web: &Rows, prospects: &Rows) {
    write_dataset(dir, "crm", crm, false);
    write_dataset(dir, "web", web, true);
    write_dataset(dir, "prospects", prospects, false);
    std::fs::create_dir_all(dir.join("sql/segments")).expect("mkdir");
    std::fs::write(
        dir.join("sql/segments/everyone.sql"),
        "SELECT profile_id FROM profiles",
    )
    .expect("write");
    std::fs::write(
        dir.join("sql/segments/visitors.sql"),
        "SELECT profile_id FROM events",
    )
    .expect("write");
    std::fs::write(
        dir.join("sql/segments/all_prospects.sql"),
        "-- class: prospect\nSELECT profile_id FROM profiles",
    )
    .expect("write");
    let config = format!(
        r#"
[namespaces.crm_id]
normaliser = "id"
priority = 1
{extra_ns}

[namespaces.email]
normaliser = "email"
priority = 2

[namespaces.cookie]
normaliser = "id"
priority = 3
max_links = 2
allow = ["ck_ok"]

[datasets.crm]
kind = "profile"
path = "data/crm/"
timestamp = "ts"
identities = {{ crm_id = "crm_id", email = "email" }}

[datasets.web]
kind = "event"
path = "data/web/"
timestamp = "ts"
event_type = "event_type"
identities = {{ cookie = "cookie", email = "email" }}

[datasets.prospects]
kind = "profile"
class = "prospect"
path = "data/prospects/"
timestamp = "ts"
identities = {{ email = "email" }}

[destinations.out]
url = "out"
segments = ["everyone", "visitors"]
fields = ["profile_id", "crm_id", "email", "name"]
{extra}
"#
    );
    std::fs::write(dir.join("audience.toml"), config).expect("write config");
}

pub fn run(dir: &Path, run_id: &str) -> RunRecord {
    run_at(dir, run_id, crate::support::as_of())
}

pub fn run_at(dir: &Path, run_id: &str, as_of: chrono::DateTime<chrono::Utc>) -> RunRecord {
    let project = Project::load(dir).expect("valid project");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(
        Pipeline::new(project)
            .with_as_of(as_of)
            .with_run_id(run_id)
            .expect("id")
            .run(),
    )
    .expect("run")
}

fn read(dir: &Path, run_id: &str, file: &str) -> Vec<BTreeMap<String, String>> {
    let bytes = std::fs::read(dir.join("state/runs").join(run_id).join(file)).expect("output file");
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        bytes::Bytes::from(bytes),
    )
    .expect("parquet")
    .build()
    .expect("reader");
    let mut out = Vec::new();
    for b in reader {
        let b = b.expect("batch");
        for i in 0..b.num_rows() {
            let mut row = BTreeMap::new();
            for (f, c) in b.schema().fields().iter().zip(b.columns()) {
                let v = if c.is_null(i) {
                    String::new()
                } else {
                    arrow::util::display::array_value_to_string(c, i).expect("display")
                };
                row.insert(f.name().clone(), v);
            }
            out.push(row);
        }
    }
    out
}

/// `namespace:value` (and class) → profile id, from a run's identity map.
pub fn profile_ids(dir: &Path, run_id: &str) -> BTreeMap<String, String> {
    read(dir, run_id, "identity_map.parquet")
        .into_iter()
        .map(|r| {
            (
                format!("{}/{}:{}", r["class"], r["namespace"], r["value"]),
                r["profile_id"].clone(),
            )
        })
        .collect()
}

fn same(ids: &BTreeMap<String, String>, a: &str, b: &str) -> bool {
    ids[&format!("customer/{a}")] == ids[&format!("customer/{b}")]
}

fn rows<'a>(columns: &'a [&'a str], rows: Vec<(Vec<Option<&'a str>>, i64)>) -> Rows<'a> {
    Rows { columns, rows }
}

fn no_prospects() -> Rows<'static> {
    rows(
        &["email", "name"],
        vec![(vec![Some("p@x.com"), Some("P")], 1)],
    )
}

fn no_web() -> Rows<'static> {
    rows(
        &["cookie", "email"],
        vec![(vec![Some("ck_lonely"), None], 1)],
    )
}

#[test]
fn identity_plain_components_join_through_events() {
    let dir = tempfile::tempdir().expect("tmp");
    let crm = rows(
        &["crm_id", "email", "name"],
        vec![
            (vec![Some("C1"), Some("A@x.com "), Some("Ann")], 1),
            (vec![Some("C2"), Some("b@x.com"), Some("Bo")], 2),
        ],
    );
    // A login event links an anonymous cookie to Ann's e-mail.
    let web = rows(
        &["cookie", "email"],
        vec![
            (vec![Some("ck1"), None], 3),
            (vec![Some("ck1"), Some("a@x.com")], 4),
            (vec![Some("ck9"), None], 5),
        ],
    );
    project(dir.path(), "", "", &crm, &web, &no_prospects());
    let rec = run(dir.path(), "r1");
    let ids = profile_ids(dir.path(), "r1");
    assert!(same(&ids, "crm_id:C1", "email:a@x.com"));
    assert!(
        same(&ids, "crm_id:C1", "cookie:ck1"),
        "events link the cookie to the person"
    );
    assert!(!same(&ids, "crm_id:C1", "crm_id:C2"));
    // The anonymous cookie ck9 is a profile of its own, with null attributes.
    let everyone = rec
        .segments
        .iter()
        .find(|s| s.segment == "everyone")
        .expect("segment");
    assert_eq!(everyone.members, 3, "C1+a+ck1, C2+b, ck9");
    assert!(
        ids.values().all(|p| p.len() == 12
            && p.bytes()
                .all(|c| c.is_ascii_digit() || (c.is_ascii_lowercase() && !b"ilou".contains(&c)))),
        "ids are hashes"
    );
}

#[test]
fn identity_unique_namespace_cuts_older_link() {
    let dir = tempfile::tempdir().expect("tmp");
    let crm = rows(
        &["crm_id", "email", "name"],
        vec![
            (vec![Some("C1"), Some("shared@x.com"), Some("Old")], 1),
            (vec![Some("C2"), Some("shared@x.com"), Some("New")], 2),
        ],
    );
    project(
        dir.path(),
        "unique = true",
        "",
        &crm,
        &no_web(),
        &no_prospects(),
    );
    run(dir.path(), "r1");
    let ids = profile_ids(dir.path(), "r1");
    assert!(
        same(&ids, "crm_id:C2", "email:shared@x.com"),
        "the newest link is applied first"
    );
    assert!(
        !same(&ids, "crm_id:C1", "email:shared@x.com"),
        "the older link would put two crm_ids in one profile"
    );
    let cut = read(dir.path(), "r1", "cut_links.parquet");
    assert_eq!(cut.len(), 1, "{cut:?}");
    assert_eq!(
        (
            cut[0]["anchor_value"].as_str(),
            cut[0]["other_value"].as_str(),
            cut[0]["status"].as_str()
        ),
        ("C1", "shared@x.com", "cut_unique")
    );
    assert!(
        cut[0]["reason"].contains("two `crm_id` values"),
        "{:?}",
        cut[0]
    );
}

#[test]
fn identity_without_unique_namespace_joins_all() {
    let dir = tempfile::tempdir().expect("tmp");
    let crm = rows(
        &["crm_id", "email", "name"],
        vec![
            (vec![Some("C1"), Some("shared@x.com"), Some("Old")], 1),
            (vec![Some("C2"), Some("shared@x.com"), Some("New")], 2),
        ],
    );
    project(dir.path(), "", "", &crm, &no_web(), &no_prospects());
    run(dir.path(), "r1");
    let ids = profile_ids(dir.path(), "r1");
    assert!(
        same(&ids, "crm_id:C1", "crm_id:C2"),
        "plain connected components"
    );
}

#[test]
fn identity_hub_quarantined_unless_allowed() {
    let dir = tempfile::tempdir().expect("tmp");
    let crm = rows(
        &["crm_id", "email", "name"],
        vec![(vec![Some("C1"), Some("a@x.com"), Some("A")], 1)],
    );
    // ck_hub links three e-mails (> max_links = 2); ck_ok does too but is allow-listed.
    let web = rows(
        &["cookie", "email"],
        vec![
            (vec![Some("ck_hub"), Some("a@x.com")], 1),
            (vec![Some("ck_hub"), Some("b@x.com")], 2),
            (vec![Some("ck_hub"), Some("c@x.com")], 3),
            (vec![Some("ck_ok"), Some("d@x.com")], 1),
            (vec![Some("ck_ok"), Some("e@x.com")], 2),
            (vec![Some("ck_ok"), Some("f@x.com")], 3),
        ],
    );
    project(dir.path(), "", "", &crm, &web, &no_prospects());
    run(dir.path(), "r1");
    let ids = profile_ids(dir.path(), "r1");
    assert!(
        !same(&ids, "email:a@x.com", "email:b@x.com"),
        "a hub does not join people"
    );
    assert!(
        !same(&ids, "cookie:ck_hub", "email:a@x.com"),
        "a quarantined identity stays a profile of its own"
    );
    assert!(
        same(&ids, "email:d@x.com", "email:e@x.com")
            && same(&ids, "email:e@x.com", "email:f@x.com"),
        "allow-listed"
    );
    let q = read(dir.path(), "r1", "quarantined.parquet");
    assert_eq!(q.len(), 1, "{q:?}");
    assert_eq!(
        (q[0]["value"].as_str(), q[0]["degree"].as_str()),
        ("ck_hub", "3")
    );
    assert!(q[0]["reason"].contains("max_links = 2"), "{q:?}");
}

#[test]
fn identity_records_belong_to_highest_non_quarantined_identity() {
    let dir = tempfile::tempdir().expect("tmp");
    let crm = rows(
        &["crm_id", "email", "name"],
        vec![(vec![Some("C1"), Some("a@x.com"), Some("A")], 1)],
    );
    // callcentre@x.com is an e-mail hub (max_links = 2 on email): the event carrying it and
    // ck1 belongs to ck1's profile, not the hub's.
    let web = rows(
        &["cookie", "email"],
        vec![
            (vec![Some("ck1"), Some("callcentre@x.com")], 1),
            (vec![Some("ck2"), Some("callcentre@x.com")], 1),
            (vec![Some("ck3"), Some("callcentre@x.com")], 1),
        ],
    );
    project(dir.path(), "", "", &crm, &web, &no_prospects());
    let cfg = dir.path().join("audience.toml");
    let text = std::fs::read_to_string(&cfg).expect("read").replace(
        "normaliser = \"email\"\npriority = 2",
        "normaliser = \"email\"\npriority = 2\nmax_links = 2",
    );
    std::fs::write(&cfg, text).expect("write");
    let rec = run(dir.path(), "r1");
    let ids = profile_ids(dir.path(), "r1");
    let visitors = rec
        .segments
        .iter()
        .find(|s| s.segment == "visitors")
        .expect("segment");
    assert_eq!(
        visitors.members, 3,
        "each event goes to its cookie's profile"
    );
    let csv = std::fs::read_to_string(dir.path().join("out/r1/visitors.csv")).expect("export");
    for ck in ["ck1", "ck2", "ck3"] {
        assert!(
            csv.contains(&ids[&format!("customer/cookie:{ck}")]),
            "{ck} profile among visitors: {csv}"
        );
    }
    assert!(
        !csv.contains(&ids["customer/email:callcentre@x.com"]),
        "not the hub's profile"
    );
}

#[test]
fn identity_never_link_rules_apply_to_history() {
    let dir = tempfile::tempdir().expect("tmp");
    let crm = rows(
        &["crm_id", "email", "name"],
        vec![
            (vec![Some("C1"), Some("a@x.com"), Some("A")], 1),
            (vec![Some("C2"), Some("ops@shop.com"), Some("Ops")], 1),
        ],
    );
    let web = rows(
        &["cookie", "email"],
        vec![
            (vec![Some("ck1"), Some("a@x.com")], 2),
            (vec![Some("ck2"), Some("ops@shop.com")], 2),
        ],
    );
    let rules = "[[identity.never_link]]\na = \"crm_id:C1\"\nb = \"cookie:ck1\"\n\n[[identity.never_link]]\na = \"email:OPS@shop.com\"\n";
    project(dir.path(), "", rules, &crm, &web, &no_prospects());
    run(dir.path(), "r1");
    let ids = profile_ids(dir.path(), "r1");
    // Newest first: a@x.com joins ck1 (day 2); C1 (day 1) would then share a profile with ck1.
    assert!(same(&ids, "email:a@x.com", "cookie:ck1"));
    assert!(
        !same(&ids, "crm_id:C1", "cookie:ck1"),
        "a never-link pair never shares a profile"
    );
    assert!(
        !same(&ids, "crm_id:C2", "email:ops@shop.com")
            && !same(&ids, "cookie:ck2", "email:ops@shop.com"),
        "a never-link value links to nothing"
    );
    let links = read(dir.path(), "r1", "links.parquet");
    let status = |a: &str, b: &str| {
        links
            .iter()
            .find(|l| l["anchor_value"] == a && l["other_value"] == b)
            .map(|l| l["status"].clone())
            .expect("link")
    };
    assert_eq!(status("C1", "a@x.com"), "cut_never_link");
    assert_eq!(status("a@x.com", "ck1"), "used");
    assert_eq!(status("C2", "ops@shop.com"), "dropped_quarantined");
    let q = read(dir.path(), "r1", "quarantined.parquet");
    assert!(
        q.iter()
            .any(|r| r["value"] == "ops@shop.com" && r["reason"].contains("never-link")),
        "{q:?}"
    );
}

#[test]
fn identity_prospects_never_stitch_with_customers() {
    let dir = tempfile::tempdir().expect("tmp");
    let crm = rows(
        &["crm_id", "email", "name"],
        vec![(vec![Some("C1"), Some("same@x.com"), Some("Cust")], 1)],
    );
    let prospects = rows(
        &["email", "name"],
        vec![(vec![Some("same@x.com"), Some("Pros")], 1)],
    );
    project(dir.path(), "", "", &crm, &no_web(), &prospects);
    let rec = run(dir.path(), "r1");
    let ids = profile_ids(dir.path(), "r1");
    assert_ne!(
        ids["customer/email:same@x.com"],
        ids["prospect/email:same@x.com"]
    );
    assert_eq!(
        rec.segments
            .iter()
            .find(|s| s.segment == "all_prospects")
            .expect("seg")
            .members,
        1
    );
}

#[test]
fn identity_oversized_profiles_flagged_and_not_exported() {
    let dir = tempfile::tempdir().expect("tmp");
    let crm = rows(
        &["crm_id", "email", "name"],
        vec![
            (vec![Some("C1"), Some("a@x.com"), Some("A")], 1),
            (vec![Some("C2"), Some("b@x.com"), Some("B")], 1),
        ],
    );
    let web = rows(
        &["cookie", "email"],
        vec![(vec![Some("ck1"), Some("a@x.com")], 2)],
    );
    project(
        dir.path(),
        "",
        "[identity]\nmax_identities = 2\n",
        &crm,
        &web,
        &no_prospects(),
    );
    let rec = run(dir.path(), "r1");
    let ids = profile_ids(dir.path(), "r1");
    let big = &ids["customer/crm_id:C1"];
    let everyone = &rec.exports[0]
        .segments
        .iter()
        .find(|s| s.segment == "everyone")
        .expect("segment");
    assert_eq!(everyone.counts.excluded_oversized, 1);
    let csv = std::fs::read_to_string(dir.path().join("out/r1/everyone.csv")).expect("csv");
    assert!(
        !csv.contains(big.as_str()),
        "oversized profile not exported"
    );
    assert!(csv.contains(ids["customer/crm_id:C2"].as_str()));
    let health: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("state/runs/r1/graph_health.json")).expect("health"),
    )
    .expect("json");
    assert_eq!(health["oversized"], 1);
    assert_eq!(health["largest"][0]["profile_id"], big.as_str());
    assert_eq!(health["largest"][0]["oversized"], true);
}

#[test]
fn identity_ids_carry_forward_as_input_grows() {
    let dir = tempfile::tempdir().expect("tmp");
    let crm1 = rows(
        &["crm_id", "email", "name"],
        vec![
            (vec![Some("C1"), Some("a@x.com"), Some("A")], 5),
            (vec![Some("C2"), Some("b@x.com"), Some("B")], 5),
            (vec![Some("C3"), Some("c@x.com"), Some("C")], 5),
        ],
    );
    let web1 = rows(
        &["cookie", "email"],
        vec![(vec![Some("ck3"), Some("c@x.com")], 6)],
    );
    project(dir.path(), "", "", &crm1, &web1, &no_prospects());
    run(dir.path(), "r1");
    let before = profile_ids(dir.path(), "r1");
    // Run 2: a's profile grows with an earlier-seen cookie (which would change a fresh id);
    // b and c merge through a cookie; c's profile has more identities, so its id survives.
    let web2 = rows(
        &["cookie", "email"],
        vec![
            (vec![Some("ck3"), Some("c@x.com")], 6),
            (vec![Some("ck0"), Some("a@x.com")], 1),
            (vec![Some("ck_bc"), Some("b@x.com")], 7),
            (vec![Some("ck_bc"), Some("c@x.com")], 7),
        ],
    );
    project(dir.path(), "", "", &crm1, &web2, &no_prospects());
    run(dir.path(), "r2");
    let after = profile_ids(dir.path(), "r2");
    assert_eq!(
        after["customer/crm_id:C1"], before["customer/crm_id:C1"],
        "a component that only grows keeps its id"
    );
    assert_eq!(after["customer/cookie:ck0"], before["customer/crm_id:C1"]);
    assert_eq!(
        after["customer/crm_id:C2"], before["customer/crm_id:C3"],
        "on a merge the id carried by most identities survives"
    );
    assert_eq!(after["customer/crm_id:C3"], before["customer/crm_id:C3"]);
    // Run 3: a never-link rule splits the merged profile. Links apply newest first, so the
    // older (C3, c@x.com) link is the one cut: C3 is left alone, and the larger part
    // {C2, b, c, ck3, ck_bc} keeps the id. C3's fresh id would hash to the old id (C3 was
    // that profile's representative), so it is salted: no id of an earlier run is reused.
    let rule = "[[identity.never_link]]\na = \"crm_id:C2\"\nb = \"crm_id:C3\"\n";
    project(dir.path(), "", rule, &crm1, &web2, &no_prospects());
    run(dir.path(), "r3");
    let split = profile_ids(dir.path(), "r3");
    let kept = &before["customer/crm_id:C3"];
    assert_eq!(
        &split["customer/crm_id:C2"], kept,
        "the larger part keeps the id"
    );
    assert_eq!(&split["customer/email:c@x.com"], kept);
    assert_ne!(&split["customer/crm_id:C3"], kept);
    assert_ne!(
        split["customer/crm_id:C3"], before["customer/crm_id:C2"],
        "a retired id is not reused"
    );
    assert_ne!(split["customer/crm_id:C3"], before["customer/crm_id:C1"]);
    // The same input again gives the same ids.
    run(dir.path(), "r4");
    assert_eq!(profile_ids(dir.path(), "r4"), split);
}

/// Ids of earlier versions (32 hex characters) in the previous identity map
/// are carried forward as they are; new profiles get 12-character ids.
#[test]
fn identity_ids_of_earlier_versions_carry_forward() {
    let dir = tempfile::tempdir().expect("tmp");
    let crm = rows(
        &["crm_id", "email", "name"],
        vec![
            (vec![Some("C1"), Some("a@x.com"), Some("A")], 5),
            (vec![Some("C2"), Some("b@x.com"), Some("B")], 5),
        ],
    );
    project(dir.path(), "", "", &crm, &no_web(), &no_prospects());
    run(dir.path(), "r1");
    // Rewrite r1's identity map as an earlier version wrote it.
    let path = dir.path().join("state/runs/r1/identity_map.parquet");
    let file = std::fs::File::open(&path).expect("map");
    let batches: Vec<RecordBatch> =
        parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(file, 1024)
            .expect("reader")
            .collect::<Result<_, _>>()
            .expect("batches");
    let legacy = |id: &str| format!("{:0>32}", hex::encode(id));
    let mut w = None;
    for b in &batches {
        let at = b.schema().index_of("profile_id").expect("column");
        let old = b
            .column(at)
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("utf8");
        let mut cols = b.columns().to_vec();
        cols[at] = Arc::new(StringArray::from_iter(old.iter().map(|v| v.map(legacy)))) as ArrayRef;
        let nb = RecordBatch::try_new(b.schema(), cols).expect("batch");
        w.get_or_insert_with(|| {
            parquet::arrow::ArrowWriter::try_new(
                std::fs::File::create(dir.path().join("map.tmp")).expect("tmp"),
                b.schema(),
                None,
            )
            .expect("writer")
        })
        .write(&nb)
        .expect("write");
    }
    w.expect("rows").close().expect("close");
    std::fs::rename(dir.path().join("map.tmp"), &path).expect("rename");
    let before = profile_ids(dir.path(), "r1");
    assert!(before.values().all(|id| id.len() == 32));
    // Run 2: C1's profile grows, C3 is new.
    let crm2 = rows(
        &["crm_id", "email", "name"],
        vec![
            (vec![Some("C1"), Some("a@x.com"), Some("A")], 5),
            (vec![Some("C2"), Some("b@x.com"), Some("B")], 5),
            (vec![Some("C3"), Some("c@x.com"), Some("C")], 5),
        ],
    );
    let web = rows(
        &["cookie", "email"],
        vec![(vec![Some("ck1"), Some("a@x.com")], 6)],
    );
    project(dir.path(), "", "", &crm2, &web, &no_prospects());
    run(dir.path(), "r2");
    let after = profile_ids(dir.path(), "r2");
    assert_eq!(after["customer/crm_id:C1"], before["customer/crm_id:C1"]);
    assert_eq!(after["customer/cookie:ck1"], before["customer/crm_id:C1"]);
    assert_eq!(after["customer/crm_id:C2"], before["customer/crm_id:C2"]);
    assert_eq!(
        after["customer/crm_id:C3"].len(),
        12,
        "a new profile gets a new id"
    );
}

#[test]
fn identity_rejections_counted_per_dataset_column_reason() {
    let dir = tempfile::tempdir().expect("tmp");
    let long = "x".repeat(1025) + "@x.com";
    let crm = Rows {
        columns: &["crm_id", "email", "name"],
        rows: vec![
            (vec![Some("C1"), Some("unknown"), Some("A")], 1),
            (vec![Some("C2"), Some("not-an-email"), Some("B")], 1),
            (vec![Some("C3"), Some(long.as_str()), Some("C")], 1),
            (vec![Some("none"), Some("n/a"), Some("D")], 1),
            (vec![Some("C5"), None, Some("E")], 1),
        ],
    };
    project(dir.path(), "", "", &crm, &no_web(), &no_prospects());
    // One more crm file with a null timestamp.
    let schema = Arc::new(Schema::new(vec![
        Field::new("crm_id", DataType::Utf8, true),
        Field::new("email", DataType::Utf8, true),
        Field::new("name", DataType::Utf8, true),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
    ]));
    let b = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(vec![Some("C6")])),
            Arc::new(StringArray::from(vec![Some("f@x.com")])),
            Arc::new(StringArray::from(vec![Some("F")])),
            Arc::new(TimestampMicrosecondArray::from(vec![None::<i64>]).with_timezone("UTC")),
        ],
    )
    .expect("batch");
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(dir.path().join("data/crm/part-1.parquet")).expect("f"),
        schema,
        None,
    )
    .expect("w");
    w.write(&b).expect("write");
    w.close().expect("close");
    let rec = run(dir.path(), "r1");
    let count = |column: &str, reason: &str| {
        rec.rejections
            .iter()
            .find(|r| r.dataset == "crm" && r.column == column && r.reason == reason)
            .map(|r| r.count)
            .unwrap_or(0)
    };
    assert_eq!(count("email", "blocked"), 1);
    assert_eq!(count("email", "invalid"), 2, "not-an-email and n/a");
    assert_eq!(count("email", "too_long"), 1);
    assert_eq!(count("crm_id", "blocked"), 1);
    assert_eq!(count("*", "no_valid_identity"), 1);
    assert_eq!(count("ts", "null_timestamp"), 1);
    // A null identity cell is simply absent: C5 is a profile, not a rejection.
    let ids = profile_ids(dir.path(), "r1");
    assert!(ids.contains_key("customer/crm_id:C5"));
    let sample = std::fs::read_to_string(dir.path().join("state/runs/r1/rejected_sample.jsonl"))
        .expect("sample");
    assert_eq!(sample.lines().count(), 7, "{sample}");
    assert!(
        sample.contains("\"_reason\":\"null_timestamp\""),
        "{sample}"
    );
}

#[test]
fn identity_explain_shows_paths_cuts_and_quarantine() {
    let dir = tempfile::tempdir().expect("tmp");
    let crm = rows(
        &["crm_id", "email", "name"],
        vec![(vec![Some("C1"), Some("a@x.com"), Some("A")], 1)],
    );
    let web = rows(
        &["cookie", "email"],
        vec![
            (vec![Some("ck1"), Some("a@x.com")], 2),
            (vec![Some("ck_hub"), Some("a@x.com")], 3),
            (vec![Some("ck_hub"), Some("b@x.com")], 3),
            (vec![Some("ck_hub"), Some("c@x.com")], 3),
        ],
    );
    let rule = "[[identity.never_link]]\na = \"crm_id:C1\"\nb = \"cookie:ck1\"\n";
    project(dir.path(), "", rule, &crm, &web, &no_prospects());
    run(dir.path(), "r1");
    let p = dir.path().to_str().expect("utf-8");
    let (code, out, err) = crate::support::audience(&["explain", "--project", p, "email: A@X.com"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("email:a@x.com (customer) is in profile"),
        "{out}"
    );
    assert!(
        out.contains("via email:a@x.com -> cookie:ck1  [web at 1970-01-03T00:00:00Z]"),
        "{out}"
    );
    assert!(out.contains("crm_id:C1 -> email:a@x.com  [crm at 1970-01-02T00:00:00Z]: cut_never_link (would join the two sides of a never-link rule)"), "{out}");
    assert!(out.contains("email:a@x.com -> cookie:ck_hub"), "{out}");
    assert!(out.contains("dropped_quarantined"), "{out}");
    let (code, out, _) = crate::support::audience(&["explain", "--project", p, "cookie:ck_hub"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("quarantined: linked to 3 distinct identities, more than max_links = 2"),
        "{out}"
    );
    let (code, _, err) = crate::support::audience(&["explain", "--project", p, "emial:a@x.com"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("unknown namespace `emial`: did you mean `email`?"),
        "{err}"
    );
}

#[test]
fn identity_sql_normaliser_runs_in_the_engine() {
    let dir = tempfile::tempdir().expect("tmp");
    let crm = rows(
        &["crm_id", "email", "name"],
        vec![
            (vec![Some("c-1"), Some("a@x.com"), Some("A")], 1),
            (vec![Some(" C1 "), Some("b@x.com"), Some("B")], 2),
            (vec![Some("#"), Some("c@x.com"), Some("C")], 3),
        ],
    );
    project(dir.path(), "", "", &crm, &no_web(), &no_prospects());
    let cfg = dir.path().join("audience.toml");
    let text = std::fs::read_to_string(&cfg).expect("read").replacen(
        "normaliser = \"id\"\npriority = 1",
        "normaliser = \"sql\"\nexpression = \"nullif(regexp_replace(upper(value), '[^A-Z0-9]', '', 'g'), '')\"\npriority = 1",
        1,
    );
    std::fs::write(&cfg, text).expect("write");
    let rec = run(dir.path(), "r1");
    let ids = profile_ids(dir.path(), "r1");
    assert!(
        same(&ids, "email:a@x.com", "email:b@x.com"),
        "c-1 and ' C1 ' normalise to C1: {ids:?}"
    );
    assert!(ids.contains_key("customer/crm_id:C1"));
    let invalid = rec
        .rejections
        .iter()
        .find(|r| r.column == "crm_id" && r.reason == "invalid")
        .map(|r| r.count);
    assert_eq!(
        invalid,
        Some(1),
        "a NULL result rejects the value: {:?}",
        rec.rejections
    );
    // The anchor function applies the same expression: both records feed one profile.
    let everyone = std::fs::read_to_string(dir.path().join("out/r1/everyone.csv")).expect("csv");
    assert!(
        everyone
            .lines()
            .any(|l| l.contains(",C1,") && l.ends_with(",B")),
        "most recent name wins in the joined profile: {everyone}"
    );
}

#[test]
fn identity_sql_normaliser_validated() {
    let dir = tempfile::tempdir().expect("tmp");
    project(
        dir.path(),
        "",
        "",
        &rows(&["crm_id", "email", "name"], vec![]),
        &no_web(),
        &no_prospects(),
    );
    let cfg = dir.path().join("audience.toml");
    let base = std::fs::read_to_string(&cfg).expect("read");
    for (expr, msg) in [
        ("upper(", "not a valid SQL expression"),
        ("upper(name)", "No field named name. Valid fields are value"),
        ("(SELECT 1)", "cannot contain a subquery"),
        ("upper('x')", "does not read `value`"),
    ] {
        let text = base.replacen(
            "normaliser = \"id\"\npriority = 1",
            &format!("normaliser = \"sql\"\nexpression = \"{expr}\"\npriority = 1"),
            1,
        );
        std::fs::write(&cfg, text).expect("write");
        let (code, out, err) = crate::support::audience(&[
            "validate",
            "--project",
            dir.path().to_str().expect("utf-8"),
        ]);
        assert_eq!(code, 2, "{expr}: {out}{err}");
        assert!(
            err.contains("namespaces.crm_id.expression") && err.contains(msg),
            "{expr}: {err}"
        );
    }
}

#[test]
fn identity_rows_after_as_of_are_ignored() {
    let dir = tempfile::tempdir().expect("tmp");
    let crm = rows(
        &["crm_id", "email", "name"],
        vec![
            (vec![Some("C1"), Some("a@x.com"), Some("Old")], 1),
            (vec![Some("C1"), Some("b@x.com"), Some("New")], 5),
        ],
    );
    let web = rows(
        &["cookie", "email"],
        vec![
            (vec![Some("ck1"), Some("a@x.com")], 2),
            (vec![Some("ck2"), Some("a@x.com")], 6),
        ],
    );
    project(dir.path(), "", "", &crm, &web, &no_prospects());
    let day3 = chrono::DateTime::from_timestamp_micros(3 * DAY).expect("time");
    let rec = run_at(dir.path(), "past", day3);
    let ids = profile_ids(dir.path(), "past");
    assert!(same(&ids, "crm_id:C1", "cookie:ck1"));
    assert!(
        !ids.contains_key("customer/email:b@x.com") && !ids.contains_key("customer/cookie:ck2"),
        "identities first seen after the as-of do not exist yet: {ids:?}"
    );
    let everyone = std::fs::read_to_string(dir.path().join("out/past/everyone.csv")).expect("csv");
    assert!(
        everyone.contains(",Old"),
        "attributes as of day 3: {everyone}"
    );
    assert_eq!(
        rec.segments
            .iter()
            .find(|s| s.segment == "visitors")
            .map(|s| s.members),
        Some(1)
    );
    // The same as-of again, after more data landed: the same audiences.
    run_at(dir.path(), "now", crate::support::as_of());
    run_at(dir.path(), "past_again", day3);
    assert_eq!(
        std::fs::read(dir.path().join("out/past/everyone.csv")).expect("a"),
        std::fs::read(dir.path().join("out/past_again/everyone.csv")).expect("b")
    );
}

#[test]
fn identity_profile_skeletons_list_values_and_prefer_the_latest() {
    let dir = tempfile::tempdir().expect("tmp");
    // C1 has three e-mails: two last seen on day 5 (the smaller value is
    // preferred), one on day 3. C2 has no cookie; the cookie ck9 has no e-mail.
    let crm = rows(
        &["crm_id", "email", "name"],
        vec![
            (vec![Some("C1"), Some("z@x.com"), Some("Ann")], 5),
            (vec![Some("C1"), Some("m@x.com"), Some("Ann")], 3),
            (vec![Some("C1"), Some("a@x.com"), Some("Ann")], 5),
            (vec![Some("C2"), Some("b@x.com"), Some("Bo")], 2),
        ],
    );
    let web = rows(
        &["cookie", "email"],
        vec![
            (vec![Some("ck2"), Some("m@x.com")], 1),
            (vec![Some("ck1"), Some("m@x.com")], 1),
            (vec![Some("ck9"), None], 1),
        ],
    );
    project(dir.path(), "", "", &crm, &web, &no_prospects());
    let project = Project::load(dir.path()).expect("project");
    let out = audience::engine::storage::Location::parse(
        dir.path().join("out").to_str().expect("utf-8"),
        dir.path(),
    )
    .expect("location");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("rt");
    let stitched = rt.block_on(async {
        let ctx = audience::engine::session(&project, crate::support::as_of())
            .await
            .expect("session");
        let datasets = audience::ingest::ingest(&ctx, &project)
            .await
            .expect("ingest");
        audience::identity::stitch(&ctx, &project, &datasets, None, &out, |_| {})
            .await
            .expect("stitch")
    });
    let batches = &stitched.profiles[&audience::config::Class::Customer];
    let mut rows: Vec<Vec<String>> = Vec::new();
    for b in batches {
        let schema = b.schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(
            names,
            [
                "profile_id",
                "cookie",
                "cookie_all",
                "crm_id",
                "crm_id_all",
                "email",
                "email_all"
            ],
            "columns by namespace name"
        );
        for i in 0..b.num_rows() {
            rows.push(
                b.columns()[1..]
                    .iter()
                    .map(|c| {
                        if c.is_null(i) {
                            "null".to_string()
                        } else {
                            arrow::util::display::array_value_to_string(c, i).expect("display")
                        }
                    })
                    .collect(),
            );
        }
        let ids = b
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("ids");
        let ids: Vec<&str> = ids.iter().map(Option::unwrap_or_default).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "sorted by profile id");
    }
    rows.sort();
    let row = |cells: [&str; 6]| cells.iter().map(|c| c.to_string()).collect::<Vec<_>>();
    assert_eq!(
        rows,
        vec![
            row([
                "ck1",
                "[ck1, ck2]",
                "C1",
                "[C1]",
                "a@x.com",
                "[a@x.com, m@x.com, z@x.com]"
            ]),
            row(["ck9", "[ck9]", "null", "[]", "null", "[]"]),
            row(["null", "[]", "C2", "[C2]", "b@x.com", "[b@x.com]"]),
        ]
    );
}

/// Min/max statistics only on the columns the rows are sorted by (readers
/// skip row groups on those); the others' would span every group. Sorted
/// values, profile ids and the identity map's times are delta-encoded, the
/// times uncompressed.
#[test]
fn identity_outputs_keep_statistics_of_sorted_columns_only_and_delta_encode() {
    use parquet::basic::{Compression, Encoding};
    let dir = tempfile::tempdir().expect("tmp");
    let crm = rows(
        &["crm_id", "email", "name"],
        vec![
            (vec![Some("C1"), Some("a@x.com"), Some("A")], 5),
            (vec![Some("C2"), Some("b@x.com"), Some("B")], 6),
        ],
    );
    project(dir.path(), "", "", &crm, &no_web(), &no_prospects());
    run(dir.path(), "r1");
    for (file, sorted, delta_strings, delta_lengths, delta_times) in [
        (
            "identity_map.parquet",
            &["class", "namespace", "value"],
            &["value"][..],
            &["profile_id"][..],
            &["first_seen", "last_seen"][..],
        ),
        (
            "links.parquet",
            &["class", "anchor_namespace", "anchor_value"],
            &["anchor_value"][..],
            &[][..],
            &[][..],
        ),
    ] {
        let f = std::fs::File::open(dir.path().join("state/runs/r1").join(file)).expect("file");
        let meta = parquet::file::reader::FileReader::metadata(
            &parquet::file::serialized_reader::SerializedFileReader::new(f).expect("parquet"),
        )
        .clone();
        let group = meta.row_group(0);
        let mut with = Vec::new();
        for c in group.columns() {
            let name = c.column_path().string();
            if c.statistics().is_some_and(|s| s.min_bytes_opt().is_some()) {
                with.push(name.clone());
            }
            let encodings: Vec<Encoding> = c.encodings().collect();
            let (strings, times) = (
                delta_strings.contains(&name.as_str()),
                delta_times.contains(&name.as_str()),
            );
            assert_eq!(
                encodings.contains(&Encoding::DELTA_BYTE_ARRAY),
                strings,
                "{file} {name}: {encodings:?}"
            );
            assert_eq!(
                encodings.contains(&Encoding::DELTA_LENGTH_BYTE_ARRAY),
                delta_lengths.contains(&name.as_str()),
                "{file} {name}: {encodings:?}"
            );
            assert_eq!(
                encodings.contains(&Encoding::DELTA_BINARY_PACKED),
                times,
                "{file} {name}: {encodings:?}"
            );
            let compression = if times {
                Compression::UNCOMPRESSED
            } else {
                Compression::ZSTD(Default::default())
            };
            assert_eq!(c.compression(), compression, "{file} {name}");
        }
        assert_eq!(with, sorted, "{file}");
    }
}
