//! Merge policy rules end to end (SPEC §5), and the fused winners aggregate
//! against a row-by-row reference on random inputs.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema};
use audience::merge::winners::{Order, Slot, udaf};
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext};
use proptest::prelude::*;

use super::identity::{Rows, run, write_dataset};
use super::support::audience;

/// A project with one namespace (email) and three profile datasets, `crm`,
/// `loyalty` and `shop`; `policy` is the merge policy section; the `out`
/// destination exports `fields` of segment `everyone`; segments `extra` too.
fn merge_project(
    dir: &Path,
    policy: &str,
    fields: &[&str],
    data: [&Rows; 3],
    segments: &[(&str, &str)],
) {
    for (name, rows) in ["crm", "loyalty", "shop"].iter().zip(data) {
        write_dataset(dir, name, rows, false);
    }
    std::fs::create_dir_all(dir.join("sql/segments")).expect("mkdir");
    std::fs::write(
        dir.join("sql/segments/everyone.sql"),
        "SELECT profile_id FROM profiles",
    )
    .expect("write");
    for (id, sql) in segments {
        std::fs::write(dir.join(format!("sql/segments/{id}.sql")), sql).expect("write");
    }
    let mut segs = vec!["everyone".to_string()];
    segs.extend(segments.iter().map(|(id, _)| id.to_string()));
    let datasets: String = ["crm", "loyalty", "shop"]
        .iter()
        .map(|d| {
            format!(
                "[datasets.{d}]\nkind = \"profile\"\npath = \"data/{d}/\"\ntimestamp = \"ts\"\nidentities = {{ email = \"email\" }}\n\n"
            )
        })
        .collect();
    let config = format!(
        "[namespaces.email]\nnormaliser = \"email\"\npriority = 1\n\n{datasets}{policy}\n\n[destinations.out]\nurl = \"out\"\nsegments = {segs:?}\nfields = {fields:?}\n"
    );
    std::fs::write(dir.join("audience.toml"), config).expect("write config");
}

/// A segment's export: email → (field → value), blank for null.
fn exported(dir: &Path, run_id: &str, segment: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let text = std::fs::read_to_string(dir.join("out").join(run_id).join(format!("{segment}.csv")))
        .expect("export");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    lines
        .map(|l| {
            let row: BTreeMap<String, String> = header
                .iter()
                .zip(l.split(','))
                .map(|(h, v)| (h.to_string(), v.trim_matches('"').to_string()))
                .collect();
            (row["email"].clone(), row)
        })
        .collect()
}

fn rows<'a>(columns: &'a [&'a str], rows: Vec<(Vec<Option<&'a str>>, i64)>) -> Rows<'a> {
    Rows { columns, rows }
}

const A: &str = "ann@example.com";
const B: &str = "bob@example.com";
const C: &str = "cat@example.com";

#[test]
fn merge_timestamp_newest_non_null_wins_with_documented_ties() {
    let dir = tempfile::tempdir().expect("tmp");
    let cols = &["email", "city"][..];
    merge_project(
        dir.path(),
        "",
        &["email", "city"],
        [
            // crm: ann's newest city is null (nulls never win); bob ties with shop on time.
            &rows(
                cols,
                vec![
                    (vec![Some(A), Some("Leeds")], 3),
                    (vec![Some(A), None], 9),
                    (vec![Some(B), Some("York")], 5),
                    (vec![Some(C), Some("Zennor")], 4),
                    (vec![Some(C), Some("Bath")], 4),
                ],
            ),
            &rows(cols, vec![(vec![Some(A), Some("Derby")], 2)]),
            &rows(cols, vec![(vec![Some(B), Some("Acle")], 5)]),
        ],
        &[],
    );
    run(dir.path(), "r1");
    let got = exported(dir.path(), "r1", "everyone");
    assert_eq!(got[A]["city"], "Leeds", "a newer null does not win");
    assert_eq!(
        got[B]["city"], "York",
        "same time: the first dataset in name order (crm before shop)"
    );
    assert_eq!(
        got[C]["city"], "Bath",
        "same time and dataset: the smallest value"
    );
}

#[test]
fn merge_precedence_first_listed_dataset_then_newest() {
    let dir = tempfile::tempdir().expect("tmp");
    let cols = &["email", "city", "tier"][..];
    merge_project(
        dir.path(),
        "[merge_policies.p]\ndefault = true\nmethod = \"precedence\"\nprecedence = [\"loyalty\", \"crm\"]",
        &["email", "city", "tier"],
        [
            &rows(
                cols,
                vec![
                    (vec![Some(A), Some("Leeds"), None], 9),
                    (vec![Some(B), Some("York"), None], 1),
                ],
            ),
            &rows(
                cols,
                vec![
                    (vec![Some(A), Some("Derby"), None], 1),
                    (vec![Some(A), Some("Ely"), None], 2),
                    (vec![Some(B), None, None], 5),
                ],
            ),
            // shop is not listed: never considered, even when it is the only source.
            &rows(cols, vec![(vec![Some(A), Some("Acle"), Some("gold")], 20)]),
        ],
        &[],
    );
    run(dir.path(), "r1");
    let got = exported(dir.path(), "r1", "everyone");
    assert_eq!(
        got[A]["city"], "Ely",
        "first listed dataset, most recent within it"
    );
    assert_eq!(
        got[B]["city"], "York",
        "a null in the first dataset falls through to the next"
    );
    assert_eq!(got[A]["tier"], "", "unlisted datasets are not considered");
}

#[test]
fn merge_attribute_rules_override_the_method() {
    let dir = tempfile::tempdir().expect("tmp");
    let cols = &["email", "first", "low", "high", "fav", "tag", "src"][..];
    merge_project(
        dir.path(),
        r#"[merge_policies.p]
default = true
[merge_policies.p.attributes]
first = "least_recent"
low = "min"
high = "max"
fav = "most_frequent"
tag = "collect"
src = { rule = "precedence", precedence = ["shop"] }"#,
        &["email", "first", "low", "high", "fav", "src"],
        [
            &rows(
                cols,
                vec![
                    (
                        vec![
                            Some(A),
                            Some("a1"),
                            Some("5"),
                            Some("5"),
                            Some("tea"),
                            Some("x"),
                            Some("crm"),
                        ],
                        1,
                    ),
                    (
                        vec![Some(A), None, Some("2"), None, Some("gin"), Some("y"), None],
                        3,
                    ),
                    (
                        vec![Some(B), Some("b1"), None, None, Some("tea"), None, None],
                        2,
                    ),
                ],
            ),
            &rows(
                cols,
                vec![
                    (
                        vec![
                            Some(A),
                            Some("a0"),
                            Some("7"),
                            Some("9"),
                            Some("gin"),
                            Some("x"),
                            None,
                        ],
                        1,
                    ),
                    (
                        vec![Some(B), Some("b2"), None, None, Some("cola"), None, None],
                        2,
                    ),
                ],
            ),
            &rows(
                cols,
                vec![
                    (
                        vec![
                            Some(A),
                            Some("a2"),
                            None,
                            None,
                            Some("tea"),
                            None,
                            Some("shop"),
                        ],
                        0,
                    ),
                    (vec![Some(B), None, None, None, None, None, None], 9),
                ],
            ),
        ],
        &[
            (
                "tags_xy",
                "SELECT profile_id FROM profiles WHERE array_to_string(tag, '|') = 'x|y'",
            ),
            (
                "no_tags",
                "SELECT profile_id FROM profiles WHERE cardinality(tag) = 0",
            ),
        ],
    );
    run(dir.path(), "r1");
    let got = exported(dir.path(), "r1", "everyone");
    assert_eq!(
        got[A]["first"], "a2",
        "least_recent: the oldest non-null value"
    );
    assert_eq!(got[A]["low"], "2", "min");
    assert_eq!(got[A]["high"], "9", "max (of non-null values)");
    assert_eq!(
        got[A]["fav"], "gin",
        "most_frequent: tea and gin twice each; tie: the most recent occurrence (gin, day 3)"
    );
    assert_eq!(
        got[B]["fav"], "cola",
        "most_frequent tie at one each, same time: the smallest value"
    );
    assert_eq!(
        got[A]["src"], "shop",
        "precedence rule: only the listed dataset"
    );
    assert_eq!(got[B]["src"], "", "no listed dataset has a value");
    let xy = exported(dir.path(), "r1", "tags_xy");
    assert_eq!(
        xy.keys().collect::<Vec<_>>(),
        vec![A],
        "collect: sorted distinct values"
    );
    let none = exported(dir.path(), "r1", "no_tags");
    assert_eq!(
        none.keys().collect::<Vec<_>>(),
        vec![B],
        "collect: [] when no value"
    );
}

#[test]
fn merge_field_groups_come_from_one_record() {
    let dir = tempfile::tempdir().expect("tmp");
    let cols = &["email", "line", "town", "zip", "phone_pref"][..];
    merge_project(
        dir.path(),
        r#"[merge_policies.p]
default = true
provenance = ["town", "phone_pref"]
[merge_policies.p.groups]
address = ["line", "town", "zip"]"#,
        &[
            "email",
            "line",
            "town",
            "zip",
            "town__source",
            "town__updated_at",
            "phone_pref",
            "phone_pref__source",
        ],
        [
            &rows(
                cols,
                vec![
                    // The newest record with any address field wins, its nulls included.
                    (
                        vec![
                            Some(A),
                            Some("1 High St"),
                            Some("Leeds"),
                            Some("LS1"),
                            Some("sms"),
                        ],
                        1,
                    ),
                    (vec![Some(A), None, None, None, None], 8),
                ],
            ),
            &rows(
                cols,
                vec![(vec![Some(A), Some("2 Low Rd"), None, Some("DE1"), None], 5)],
            ),
            &rows(
                cols,
                vec![(vec![Some(B), None, Some("York"), None, None], 2)],
            ),
        ],
        &[],
    );
    run(dir.path(), "r1");
    let got = exported(dir.path(), "r1", "everyone");
    let a = &got[A];
    assert_eq!(
        (a["line"].as_str(), a["town"].as_str(), a["zip"].as_str()),
        ("2 Low Rd", "", "DE1"),
        "fields are never mixed across records: town stays null"
    );
    assert_eq!(
        a["town__source"], "loyalty",
        "provenance of the group's record"
    );
    assert!(
        a["town__updated_at"].starts_with("1970-01-06"),
        "time of the winning record: {}",
        a["town__updated_at"]
    );
    assert_eq!(a["phone_pref"], "sms");
    assert_eq!(a["phone_pref__source"], "crm");
    assert_eq!(got[B]["town"], "York");
}

#[test]
fn merge_policy_errors_name_the_key() {
    let dir = tempfile::tempdir().expect("tmp");
    let cols = &["email", "city"][..];
    let one = rows(cols, vec![(vec![Some(A), Some("Leeds")], 1)]);
    merge_project(
        dir.path(),
        r#"[merge_policies.p]
default = true
provenance = ["city"]
[merge_policies.p.attributes]
city = "min"
[merge_policies.p.groups]
addr = ["city"]"#,
        &["email"],
        [&one, &one, &one],
        &[],
    );
    let (code, _, err) = audience(&["validate", "--project", dir.path().to_str().expect("utf8")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("merge_policies.p.groups.addr"), "{err}");
    assert!(err.contains("also has a rule"), "{err}");
    assert!(err.contains("merge_policies.p.provenance"), "{err}");
    // An attribute no dataset has is named with the policy key when the run starts.
    merge_project(
        dir.path(),
        "[merge_policies.p]\ndefault = true\n[merge_policies.p.attributes]\ncitty = \"max\"",
        &["email"],
        [&one, &one, &one],
        &[],
    );
    let (code, _, err) = audience(&[
        "--quiet",
        "run",
        "--project",
        dir.path().to_str().expect("utf8"),
        "--as-of",
        "2025-07-01T00:00:00Z",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("merge_policies.p.attributes.citty"), "{err}");
    assert!(err.contains("did you mean `city`"), "{err}");
}

// ---- The fused aggregate against a row-by-row reference ----

/// (group, time, dataset, value, second field) records.
type Rec = (u8, i64, u32, Option<u8>, Option<u8>);

fn recs() -> impl Strategy<Value = Vec<Rec>> {
    prop::collection::vec(
        (
            0u8..6,
            0i64..4,
            0u32..3,
            prop::option::of(0u8..4),
            prop::option::of(0u8..3),
        ),
        0..60,
    )
}

fn order() -> impl Strategy<Value = Order> {
    prop_oneof![
        Just(Order::MostRecent),
        Just(Order::LeastRecent),
        prop::collection::vec(prop::option::of(0u32..3), 3).prop_map(Order::Precedence),
    ]
}

/// Better-first key of a candidate; `None` when the dataset is not considered.
fn key(order: &Order, ts: i64, ds: u32) -> Option<(i64, i64, i64)> {
    match order {
        Order::MostRecent => Some((-ts, i64::from(ds), 0)),
        Order::LeastRecent => Some((ts, i64::from(ds), 0)),
        Order::Precedence(r) => r[ds as usize].map(|r| (i64::from(r), -ts, i64::from(ds))),
    }
}

/// Reference: per group, the best candidate by (key, value), row by row.
#[allow(clippy::type_complexity)]
fn reference(
    recs: &[Rec],
    order: &Order,
    value: impl Fn(&Rec) -> Option<(Option<u8>, Option<u8>)>,
) -> BTreeMap<u8, ((i64, i64, i64), (Option<u8>, Option<u8>), i64, u32)> {
    let mut best: BTreeMap<u8, ((i64, i64, i64), (Option<u8>, Option<u8>), i64, u32)> =
        BTreeMap::new();
    for r in recs {
        let Some(v) = value(r) else { continue };
        let Some(k) = key(order, r.1, r.2) else {
            continue;
        };
        let better = best
            .get(&r.0)
            .is_none_or(|(bk, bv, _, _)| (k, v) < (*bk, *bv));
        if better {
            best.insert(r.0, (k, v, r.1, r.2));
        }
    }
    best
}

fn check(recs: &[Rec], single: &Order, group: &Order) -> Result<(), TestCaseError> {
    let str_of = |v: Option<u8>| v.map(|v| format!("v{v}"));
    let schema = Arc::new(Schema::new(vec![
        Field::new("g", DataType::Utf8, false),
        Field::new("ts", audience::engine::udf::timestamp_type(), false),
        Field::new("ds", DataType::UInt32, false),
        Field::new("a", DataType::Utf8, true),
        Field::new("b", DataType::Utf8, true),
    ]));
    let batch = |part: &[Rec]| -> RecordBatch {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                part.iter().map(|r| format!("g{}", r.0)),
            )),
            Arc::new(
                arrow::array::TimestampMicrosecondArray::from_iter_values(part.iter().map(|r| r.1))
                    .with_timezone("UTC"),
            ),
            Arc::new(UInt32Array::from_iter_values(part.iter().map(|r| r.2))),
            Arc::new(StringArray::from_iter(part.iter().map(|r| str_of(r.3)))),
            Arc::new(StringArray::from_iter(part.iter().map(|r| str_of(r.4)))),
        ];
        RecordBatch::try_new(schema.clone(), cols).expect("batch")
    };
    // Three partitions of small batches: partial states are merged.
    let parts: Vec<Vec<RecordBatch>> = (0..3)
        .map(|p| {
            let mine: Vec<Rec> = recs.iter().skip(p).step_by(3).copied().collect();
            mine.chunks(4).map(batch).collect()
        })
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("rt");
    let got = rt.block_on(async {
        let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(3));
        ctx.register_table(
            "t",
            Arc::new(MemTable::try_new(schema.clone(), parts).expect("mem")),
        )
        .expect("register");
        ctx.register_udaf(udaf(
            "w",
            vec![
                Slot {
                    name: "s0".into(),
                    order: single.clone(),
                },
                Slot {
                    name: "s1".into(),
                    order: group.clone(),
                },
            ],
        ));
        ctx.sql("SELECT g, w(ts, ds, a, named_struct('a', a, 'b', b)) AS w FROM t GROUP BY g")
            .await
            .expect("sql")
            .collect()
            .await
            .expect("collect")
    });
    let mut single_got = BTreeMap::new();
    let mut group_got = BTreeMap::new();
    for b in &got {
        let g = b.column(0).as_string::<i32>();
        let w = b.column(1).as_struct();
        let col = |n: &str| w.column_by_name(n).expect("field").clone();
        let (s0, s0t, s0d) = (col("s0"), col("s0__ts"), col("s0__ds"));
        let (s1, s1t, s1d) = (col("s1"), col("s1__ts"), col("s1__ds"));
        let s0 = s0.as_string::<i32>();
        let s1 = s1.as_struct();
        let s1a = s1.column(0).as_string::<i32>();
        let s1b = s1.column(1).as_string::<i32>();
        let ts = |a: &ArrayRef, i: usize| {
            a.as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                .value(i)
        };
        let ds = |a: &ArrayRef, i: usize| a.as_primitive::<arrow::datatypes::UInt32Type>().value(i);
        for i in 0..b.num_rows() {
            let gid: u8 = g.value(i)[1..].parse().expect("group");
            if s0d.is_valid(i) {
                single_got.insert(gid, (s0.value(i).to_string(), ts(&s0t, i), ds(&s0d, i)));
            }
            if s1d.is_valid(i) {
                let f =
                    |a: &arrow::array::StringArray| a.is_valid(i).then(|| a.value(i).to_string());
                group_got.insert(gid, ((f(s1a), f(s1b)), ts(&s1t, i), ds(&s1d, i)));
            }
        }
    }
    let want_single: BTreeMap<u8, (String, i64, u32)> =
        reference(recs, single, |r| r.3.map(|a| (Some(a), None)))
            .into_iter()
            .map(|(g, (_, v, t, d))| (g, (format!("v{}", v.0.unwrap_or(0)), t, d)))
            .collect();
    prop_assert_eq!(single_got, want_single);
    // Field group: a candidate when any field is set; ties: the smaller struct, nulls first.
    type Won = ((Option<String>, Option<String>), i64, u32);
    let want_group: BTreeMap<u8, Won> = reference(recs, group, |r| {
        (r.3.is_some() || r.4.is_some()).then_some((r.3, r.4))
    })
    .into_iter()
    .map(|(g, (_, v, t, d))| (g, ((str_of(v.0), str_of(v.1)), t, d)))
    .collect();
    prop_assert_eq!(group_got, want_group);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(150))]

    #[test]
    fn merge_winners_match_row_by_row_reference(recs in recs(), single in order(), group in order()) {
        check(&recs, &single, &group)?;
    }
}

#[test]
fn merge_renamed_columns_feed_attributes_and_types_must_agree() {
    let dir = tempfile::tempdir().expect("tmp");
    merge_project(
        dir.path(),
        "",
        &["email", "city"],
        [
            &rows(&["email", "city"], vec![(vec![Some(A), Some("Leeds")], 1)]),
            &rows(
                &["email", "town_name"],
                vec![(vec![Some(A), Some("Derby")], 2)],
            ),
            &rows(&["email", "city"], vec![(vec![Some(B), Some("York")], 1)]),
        ],
        &[],
    );
    super::support::edit_config(
        dir.path(),
        "[datasets.loyalty]\n",
        "[datasets.loyalty]\nrename = { town_name = \"city\" }\n",
    );
    run(dir.path(), "r1");
    let got = exported(dir.path(), "r1", "everyone");
    assert_eq!(got[A]["city"], "Derby", "loyalty's town_name feeds city");

    // The same attribute with two types is an error naming both datasets and the column.
    let shop = dir.path().join("data/shop/part-0.parquet");
    let schema = Arc::new(Schema::new(vec![
        Field::new("email", DataType::Utf8, true),
        Field::new("town_name", DataType::Int64, true),
        Field::new("ts", audience::engine::udf::timestamp_type(), true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(vec![B])),
            Arc::new(arrow::array::Int64Array::from(vec![7])),
            Arc::new(arrow::array::TimestampMicrosecondArray::from(vec![0]).with_timezone("UTC")),
        ],
    )
    .expect("batch");
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&shop).expect("create"),
        schema,
        None,
    )
    .expect("writer");
    w.write(&batch).expect("write");
    w.close().expect("close");
    super::support::edit_config(
        dir.path(),
        "[datasets.shop]\n",
        "[datasets.shop]\nrename = { town_name = \"city\" }\n",
    );
    let (code, _, err) = audience(&[
        "--quiet",
        "run",
        "--project",
        dir.path().to_str().expect("utf8"),
        "--as-of",
        "2025-07-01T00:00:00Z",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("town_name")
            && err.contains("`city`")
            && err.contains("crm")
            && err.contains("shop"),
        "{err}"
    );
    let runs: Vec<String> = std::fs::read_dir(dir.path().join("out"))
        .expect("out")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(runs, vec!["r1"], "nothing is exported by the failed run");
}

#[test]
fn merge_stitching_none_keys_each_record_by_its_best_identity() {
    let dir = tempfile::tempdir().expect("tmp");
    let cols = &["email", "member", "city"][..];
    merge_project(
        dir.path(),
        "[merge_policies.graph]\ndefault = true\n\n[merge_policies.flat]\nstitching = \"none\"",
        &["email", "member", "city"],
        [
            &rows(cols, vec![(vec![Some(A), Some("M1"), Some("Leeds")], 1)]),
            &rows(cols, vec![(vec![None, Some("M1"), Some("Derby")], 2)]),
            &rows(cols, vec![(vec![Some(B), None, Some("York")], 1)]),
        ],
        &[
            (
                "flat_all",
                "-- policy: flat\nSELECT profile_id FROM profiles",
            ),
            (
                "flat_members",
                "-- policy: flat\nSELECT profile_id FROM identities WHERE namespace = 'member'",
            ),
            (
                "flat_visitors",
                "-- policy: flat\nSELECT profile_id FROM events",
            ),
            ("visitors", "SELECT profile_id FROM events"),
        ],
    );
    write_dataset(
        dir.path(),
        "web",
        &rows(&["member"], vec![(vec![Some("M1")], 3)]),
        true,
    );
    let text = std::fs::read_to_string(dir.path().join("audience.toml")).expect("config");
    let text = text
        .replace(
            "identities = { email = \"email\" }",
            "identities = { email = \"email\", member = \"member\" }",
        )
        .replace(
            "[namespaces.email]",
            "[namespaces.member]\nnormaliser = \"id\"\npriority = 2\n\n[namespaces.email]",
        )
        .replace(
            "[destinations.out]",
            "[datasets.web]\nkind = \"event\"\npath = \"data/web/\"\ntimestamp = \"ts\"\nevent_type = \"event_type\"\nidentities = { member = \"member\" }\n\n[destinations.out]",
        );
    std::fs::write(dir.path().join("audience.toml"), text).expect("write");
    run(dir.path(), "r1");
    let graph = exported(dir.path(), "r1", "everyone");
    assert_eq!(
        graph.len(),
        2,
        "stitched: ann and M1 are one profile, bob another"
    );
    assert_eq!(graph[A]["city"], "Derby");
    let flat = exported(dir.path(), "r1", "flat_all");
    assert_eq!(
        flat.len(),
        3,
        "unstitched: a profile per best identity (ann's e-mail, M1, bob's e-mail): {flat:?}"
    );
    assert_eq!(flat[A]["city"], "Leeds", "only ann's own record");
    assert_eq!(
        flat[A]["member"], "M1",
        "identities of the record are listed"
    );
    assert_eq!(
        flat[""]["member"], "M1",
        "the member-only record is its own profile"
    );
    assert_eq!(flat[""]["city"], "Derby");
    let members = exported(dir.path(), "r1", "flat_members");
    assert_eq!(
        members.keys().collect::<Vec<_>>(),
        vec![""],
        "`identities` under stitching none: each identity is keyed by itself"
    );
    let flat_visitors = exported(dir.path(), "r1", "flat_visitors");
    assert_eq!(
        flat_visitors.keys().collect::<Vec<_>>(),
        vec![""],
        "events under stitching none: the profile keyed by the event's best identity (M1)"
    );
    let visitors = exported(dir.path(), "r1", "visitors");
    assert_eq!(
        visitors.keys().collect::<Vec<_>>(),
        vec![A],
        "stitched: the event joins ann's profile"
    );
}

#[test]
fn merge_profile_command_shows_winners_sources_and_losers() {
    let dir = tempfile::tempdir().expect("tmp");
    let cols = &["email", "city", "tier"][..];
    merge_project(
        dir.path(),
        "[merge_policies.p]\ndefault = true\nmethod = \"precedence\"\nprecedence = [\"loyalty\", \"crm\"]\n[merge_policies.p.attributes]\ntier = \"max\"",
        &["email", "city"],
        [
            &rows(cols, vec![(vec![Some(A), Some("Leeds"), Some("gold")], 9)]),
            &rows(cols, vec![(vec![Some(A), Some("Ely"), Some("silver")], 2)]),
            &rows(cols, vec![(vec![Some(B), Some("York"), None], 1)]),
        ],
        &[],
    );
    let project = dir.path().to_str().expect("utf8");
    let (code, out, err) = audience(&[
        "profile",
        "--project",
        project,
        "--as-of",
        "2025-07-01",
        "--json",
        "email: Ann@Example.com",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["policy"], "p");
    assert_eq!(
        v["identities"]["email"][0], A,
        "the identity is normalised first"
    );
    let attr = |name: &str| {
        v["attributes"]
            .as_array()
            .expect("attributes")
            .iter()
            .find(|a| a["attribute"] == name)
            .cloned()
            .expect("attribute")
    };
    let city = attr("city");
    assert_eq!(city["value"], "Ely");
    assert_eq!(city["source"], "loyalty", "precedence: loyalty first");
    assert!(
        city["updated_at"]
            .as_str()
            .expect("time")
            .starts_with("1970-01-03")
    );
    let lost: Vec<(&str, &str, bool)> = city["candidates"]
        .as_array()
        .expect("candidates")
        .iter()
        .map(|c| {
            (
                c["value"].as_str().unwrap_or_default(),
                c["dataset"].as_str().unwrap_or_default(),
                c["winner"].as_bool().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        lost,
        vec![("Leeds", "crm", false), ("Ely", "loyalty", true)]
    );
    let tier = attr("tier");
    assert_eq!(
        (tier["value"].as_str(), tier["rule"].as_str()),
        (Some("silver"), Some("max"))
    );

    let (code, _, err) = audience(&["profile", "--project", project, "email:nobody@example.com"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("no customer record or event has email:nobody@example.com"),
        "{err}"
    );
}
