//! Segment benchmark: `segments/<variant>/<people>`.
//!
//! Generates (once, under `benches/data/seg_<people>/`) `profiles.parquet`
//! (profile_id, tier, points, city, email_opt_in) and `events.parquet`
//! (profile_id, event_type, event_time, amount; 12 events per person over a
//! year), and a project of 50 segments and one feature (`event_stats`,
//! windowed event aggregates per profile): 20 profile predicates, 20 predicates
//! over the feature, 10 segments of segments. Then, in a child process each:
//!
//! * `event-aggregates`: the feature alone, materialised;
//! * `together`: the engine's `segment::evaluate` over all 50 (the feature once,
//!   each layer of segments as one `UNION ALL` query);
//! * `one-by-one`: the same, one segment (with what it reads) per evaluation.
//!
//! `benches/compare_segments.py` runs the same SQL on DuckDB. Scales:
//! `AUDIENCE_BENCH_SEG_PEOPLE=1000000,10000000` (default `1000000`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema};
use audience::config::{Class, ModelKind, Project};
use audience::segment::{self, Group};
use datafusion::datasource::MemTable;
use datafusion::prelude::ParquetReadOptions;
use rand::{RngExt, SeedableRng};

mod common;
use common::{cpu_seconds, data_dir, peak_rss_mb};

const AS_OF: &str = "2025-07-01T00:00:00Z";
const TIERS: [&str; 4] = ["bronze", "silver", "gold", "platinum"];

fn write_parquet(path: &Path, schema: Arc<Schema>, mut next: impl FnMut() -> Option<RecordBatch>) {
    let tmp = path.with_extension("tmp");
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&tmp).expect("create"),
        schema,
        None,
    )
    .expect("writer");
    while let Some(b) = next() {
        w.write(&b).expect("write");
    }
    w.close().expect("close");
    std::fs::rename(tmp, path).expect("rename");
}

/// Person `i`'s profile id, made as the engine makes one (12 characters).
fn pid(i: u64) -> String {
    audience::identity::ids::fresh_id(Class::Customer, "id", &i.to_string(), 0).0
}

/// The 50 segments and the feature, as (kind folder, id, SQL).
fn models() -> Vec<(&'static str, String, String)> {
    let mut m = vec![(
        "features",
        "event_stats".to_string(),
        "SELECT profile_id,
  count(*) FILTER (WHERE event_type = 'page_view' AND event_time > as_of() - INTERVAL '7 days') AS views_7d,
  count(*) FILTER (WHERE event_type = 'page_view' AND event_time > as_of() - INTERVAL '30 days') AS views_30d,
  count(*) FILTER (WHERE event_type = 'purchase' AND event_time > as_of() - INTERVAL '30 days') AS purchases_30d,
  coalesce(sum(amount) FILTER (WHERE event_type = 'purchase' AND event_time > as_of() - INTERVAL '90 days'), 0) AS revenue_90d
FROM events
WHERE event_time <= as_of()
GROUP BY profile_id"
            .to_string(),
    )];
    for i in 0..20 {
        m.push((
            "segments",
            format!("p{i:02}"),
            format!(
                "SELECT profile_id FROM profiles WHERE tier = '{}' AND points > {} AND (email_opt_in OR city <> 'c{}')",
                TIERS[i % 4],
                i * 150,
                i % 7
            ),
        ));
    }
    let metrics = [
        "views_7d >= 2",
        "views_30d >= 5",
        "purchases_30d >= 1",
        "revenue_90d > 100",
    ];
    for i in 0..20 {
        m.push((
            "segments",
            format!("e{i:02}"),
            format!(
                "SELECT profile_id FROM event_stats WHERE {} AND views_30d + purchases_30d >= {}",
                metrics[i % 4],
                i / 4
            ),
        ));
    }
    for i in 0..10 {
        m.push((
            "segments",
            format!("x{i:02}"),
            format!("SELECT profile_id FROM p{i:02} WHERE profile_id IN (SELECT profile_id FROM e{:02})", i + 5),
        ));
    }
    m
}

fn ensure_data(people: u64) -> PathBuf {
    let dir = data_dir().join(format!("seg_{people}"));
    let profiles = dir.join("profiles.parquet");
    let events = dir.join("events.parquet");
    std::fs::create_dir_all(dir.join("sql/segments")).expect("mkdir");
    std::fs::create_dir_all(dir.join("sql/features")).expect("mkdir");
    for (kind, id, sql) in models() {
        std::fs::write(dir.join(format!("sql/{kind}/{id}.sql")), sql).expect("sql");
    }
    std::fs::write(
        dir.join("audience.toml"),
        "[project]\nname = \"segments-bench\"\n\n[namespaces.id]\nnormaliser = \"id\"\npriority = 1\n\n[datasets.events]\nkind = \"event\"\npath = \"events.parquet\"\ntimestamp = \"event_time\"\nevent_type = \"event_type\"\nidentities = { profile_id = \"id\" }\n",
    )
    .expect("config");
    if profiles.exists() && events.exists() {
        return dir;
    }
    eprintln!("generating {people} people into {}", dir.display());
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let schema = Arc::new(Schema::new(vec![
        Field::new("profile_id", DataType::Utf8, false),
        Field::new("tier", DataType::Utf8, true),
        Field::new("points", DataType::Int64, true),
        Field::new("city", DataType::Utf8, true),
        Field::new("email_opt_in", DataType::Boolean, true),
    ]));
    let mut done = 0u64;
    write_parquet(&profiles, schema.clone(), || {
        if done >= people {
            return None;
        }
        let n = (people - done).min(65_536);
        let ids: Vec<u64> = (done..done + n).collect();
        done += n;
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(ids.iter().map(|&i| pid(i)))),
            Arc::new(StringArray::from_iter(ids.iter().map(|_| {
                rng.random_bool(0.9)
                    .then(|| TIERS[rng.random_range(0..4usize)])
            }))),
            Arc::new(Int64Array::from_iter(ids.iter().map(|_| {
                rng.random_bool(0.95).then(|| rng.random_range(0..5000i64))
            }))),
            Arc::new(StringArray::from_iter_values(
                ids.iter()
                    .map(|_| format!("c{}", rng.random_range(0..7u32))),
            )),
            Arc::new(BooleanArray::from_iter(
                ids.iter().map(|_| Some(rng.random_bool(0.6))),
            )),
        ];
        Some(RecordBatch::try_new(schema.clone(), cols).expect("batch"))
    });
    let schema = Arc::new(Schema::new(vec![
        Field::new("profile_id", DataType::Utf8, false),
        Field::new("event_type", DataType::Utf8, false),
        Field::new("event_time", audience::engine::udf::timestamp_type(), false),
        Field::new("amount", DataType::Float64, true),
    ]));
    let end = chrono::DateTime::parse_from_rfc3339(AS_OF)
        .expect("as-of")
        .timestamp_micros();
    let total = people * 12;
    let mut done = 0u64;
    write_parquet(&events, schema.clone(), || {
        if done >= total {
            return None;
        }
        let n = (total - done).min(262_144) as usize;
        done += n as u64;
        let who: Vec<u64> = (0..n).map(|_| rng.random_range(0..people)).collect();
        let purchase: Vec<bool> = (0..n).map(|_| rng.random_bool(0.15)).collect();
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(who.iter().map(|&i| pid(i)))),
            Arc::new(StringArray::from_iter_values(
                purchase
                    .iter()
                    .map(|&p| if p { "purchase" } else { "page_view" }),
            )),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(
                    (0..n).map(|_| end - rng.random_range(0..365 * 86_400i64) * 1_000_000),
                )
                .with_timezone("UTC"),
            ),
            Arc::new(Float64Array::from_iter(
                purchase
                    .iter()
                    .map(|&p| p.then(|| rng.random_range(1..300u32) as f64)),
            )),
        ];
        Some(RecordBatch::try_new(schema.clone(), cols).expect("batch"))
    });
    dir
}

/// A session at the bench's as-of with the events registered.
async fn session(project: &Project, dir: &Path) -> datafusion::prelude::SessionContext {
    let as_of = chrono::DateTime::parse_from_rfc3339(AS_OF)
        .expect("as-of")
        .with_timezone(&chrono::Utc);
    let ctx = audience::engine::session(project, as_of)
        .await
        .expect("session");
    ctx.register_parquet(
        "events",
        dir.join("events.parquet").to_str().expect("utf-8"),
        ParquetReadOptions::default(),
    )
    .await
    .expect("events");
    ctx
}

/// Evaluate `project`'s segments over the generated tables; returns members per segment.
async fn evaluate(project: &Project, dir: &Path) -> std::collections::BTreeMap<String, usize> {
    let ctx = session(project, dir).await;
    let profiles_df = ctx
        .read_parquet(
            dir.join("profiles.parquet").to_str().expect("utf-8"),
            ParquetReadOptions::default(),
        )
        .await
        .expect("profiles");
    let schema = Arc::new(profiles_df.schema().as_arrow().clone());
    let batches = profiles_df.collect().await.expect("collect");
    let events = ctx.table_provider("events").await.expect("events table");
    let identities = Arc::new(
        MemTable::try_new(
            Arc::new(Schema::new(vec![Field::new(
                "profile_id",
                DataType::Utf8,
                true,
            )])),
            vec![vec![]],
        )
        .expect("mem"),
    );
    let profiles = (schema, batches);
    let (memberships, _) = segment::evaluate(&ctx, project, |class: Class, policy: String| {
        let (profiles, events, identities) = (profiles.clone(), events.clone(), identities.clone());
        async move {
            Ok(Group {
                class,
                policy,
                profiles,
                events,
                identities,
                features: Default::default(),
                feature_runs: 0,
            })
        }
    })
    .await
    .expect("evaluate");
    memberships
        .iter()
        .map(|m| (m.segment.clone(), m.members.len()))
        .collect()
}

/// The feature alone (windowed event aggregates per profile), materialised.
async fn event_aggregates(project: &Project, dir: &Path) -> usize {
    let ctx = session(project, dir).await;
    let profiles = ctx
        .read_parquet(
            dir.join("profiles.parquet").to_str().expect("utf-8"),
            ParquetReadOptions::default(),
        )
        .await
        .expect("profiles")
        .count()
        .await
        .expect("count");
    // The session the engine's segment stage runs features on.
    let ctx = segment::stage_session(&ctx, &project.engine, profiles);
    let feature = project
        .models
        .iter()
        .find(|m| m.kind == ModelKind::Feature)
        .expect("feature");
    ctx.sql(&feature.sql)
        .await
        .expect("sql")
        .collect()
        .await
        .expect("collect")
        .iter()
        .map(|b| b.num_rows())
        .sum()
}

fn child(dir: &Path, variant: &str) {
    let project = Project::load(dir).expect("project");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("rt");
    let segments = project
        .models
        .iter()
        .filter(|m| m.kind == ModelKind::Segment)
        .count();
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    let members = if variant == "together" {
        rt.block_on(evaluate(&project, dir)).values().sum()
    } else if variant == "event-aggregates" {
        rt.block_on(event_aggregates(&project, dir))
    } else {
        let mut total = 0;
        for seg in project
            .models
            .iter()
            .filter(|m| m.kind == ModelKind::Segment)
        {
            // The segment and what it reads, transitively.
            let mut keep = std::collections::BTreeSet::from([seg.id.clone()]);
            let mut stack = seg.depends_on.clone();
            while let Some(d) = stack.pop() {
                if keep.insert(d.clone())
                    && let Some(m) = project.models.iter().find(|m| m.id == d)
                {
                    stack.extend(m.depends_on.clone());
                }
            }
            let mut one = project.clone();
            one.models.retain(|m| keep.contains(&m.id));
            total += rt
                .block_on(evaluate(&one, dir))
                .get(&seg.id)
                .copied()
                .unwrap_or_default();
        }
        total
    };
    let (wall, cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
    let people: u64 = dir
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.trim_start_matches("seg_").parse().ok())
        .unwrap_or(0);
    println!(
        "{{\"case\":\"segments/{variant}/{people}\",\"segments\":{segments},\"members\":{members},\"wall_s\":{wall:.2},\"cpu_s\":{cpu:.2},\"peak_rss_mb\":{:.0}}}",
        peak_rss_mb()
    );
}

fn main() {
    if let Some((dir, variant)) = common::child() {
        child(&dir, &variant);
        return;
    }
    let filter = common::filter();
    for people in common::scales("AUDIENCE_BENCH_SEG_PEOPLE", "1000000") {
        let dir = ensure_data(people);
        for variant in ["event-aggregates", "together", "one-by-one"] {
            let case = format!("segments/{variant}/{people}");
            if filter.as_ref().is_some_and(|f| !case.contains(f.as_str())) {
                continue;
            }
            common::run_child(&case, &dir, variant);
        }
    }
}
