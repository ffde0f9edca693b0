//! Merge benchmark: `merge/<variant>/<records>`.
//!
//! Generates (once, under `benches/data/`) a Parquet file of profile records:
//! `pid` (a 16-hex profile id; records / 3.75 profiles, as 6M records into
//! 1.6M profiles), `ts`, `ds` (one of 3 datasets), eight string and four
//! integer attributes, each null 30% of the time. Then, in a child process per
//! case, resolves every attribute per profile (most recent non-null value, ties
//! by dataset) and reports records per second, wall and CPU seconds and peak RSS:
//!
//! * `fused`: the engine's winners aggregate (one `GroupsAccumulator` for all
//!   attributes) in a DataFusion `GROUP BY pid`;
//! * `stock`: DataFusion's `first_value(a ORDER BY ts DESC, ds) IGNORE NULLS`
//!   per attribute, for comparison (1M records only unless
//!   `AUDIENCE_BENCH_STOCK=all`: it is about 10x slower).
//!
//! `benches/compare_merge.py` runs DuckDB's `arg_max ... FILTER` formulation on
//! the same file. Scales: `AUDIENCE_BENCH_RECORDS=1000000,5000000,10000000`
//! (default `1000000`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{
    ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray, UInt32Array,
};
use arrow::datatypes::{DataType, Field, Schema};
use audience::merge::winners::{Order, Slot, udaf};
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use futures::StreamExt;
use rand::{RngExt, SeedableRng};

mod common;
use common::{cpu_seconds, data_dir, peak_rss_mb};

const STRINGS: usize = 8;
const INTS: usize = 4;

fn attrs() -> Vec<String> {
    (1..=STRINGS + INTS).map(|i| format!("a{i:02}")).collect()
}

fn ensure_data(records: u64) -> PathBuf {
    let path = data_dir().join(format!("merge_{records}.parquet"));
    if path.exists() {
        return path;
    }
    eprintln!("generating {records} records into {}", path.display());
    std::fs::create_dir_all(data_dir()).expect("mkdir");
    let mut fields = vec![
        Field::new("pid", DataType::Utf8, false),
        Field::new("ts", audience::engine::udf::timestamp_type(), false),
        Field::new("ds", DataType::UInt32, false),
    ];
    for (i, a) in attrs().iter().enumerate() {
        let t = if i < STRINGS {
            DataType::Utf8
        } else {
            DataType::Int64
        };
        fields.push(Field::new(a, t, true));
    }
    let schema = Arc::new(Schema::new(fields));
    let tmp = path.with_extension("tmp");
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&tmp).expect("create"),
        schema.clone(),
        None,
    )
    .expect("writer");
    let profiles = (records * 4 / 15).max(1);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
    let start = 1_719_792_000_000_000i64; // 2024-07-01
    let mut done = 0u64;
    while done < records {
        let n = (records - done).min(65_536) as usize;
        let pids: Vec<u64> = (0..n).map(|_| rng.random_range(0..profiles)).collect();
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(pids.iter().map(|p| {
                format!("{:016x}", p.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            }))),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(
                    (0..n).map(|_| start + rng.random_range(0..365 * 86_400i64) * 1_000_000),
                )
                .with_timezone("UTC"),
            ),
            Arc::new(UInt32Array::from_iter_values(
                (0..n).map(|_| rng.random_range(0..3u32)),
            )),
        ];
        for i in 0..STRINGS + INTS {
            let present: Vec<bool> = (0..n).map(|_| rng.random_bool(0.7)).collect();
            if i < STRINGS {
                cols.push(Arc::new(StringArray::from_iter(present.iter().map(|&p| {
                    p.then(|| format!("value-{i}-{}", rng.random_range(0..5000u32)))
                }))));
            } else {
                cols.push(Arc::new(Int64Array::from_iter(
                    present
                        .iter()
                        .map(|&p| p.then(|| rng.random_range(0..1_000_000i64))),
                )));
            }
        }
        w.write(&RecordBatch::try_new(schema.clone(), cols).expect("batch"))
            .expect("write");
        done += n as u64;
    }
    w.close().expect("close");
    std::fs::rename(&tmp, &path).expect("rename");
    path
}

fn child(path: &Path, variant: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("rt");
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    let names = attrs();
    let profiles = rt.block_on(async {
        let ctx = SessionContext::new();
        ctx.register_parquet(
            "t",
            path.to_str().expect("utf-8"),
            ParquetReadOptions::default(),
        )
        .await
        .expect("register");
        let sql = if variant == "fused" {
            ctx.register_udaf(udaf(
                "winners",
                (0..names.len())
                    .map(|i| Slot {
                        name: format!("s{i}"),
                        order: Order::MostRecent,
                    })
                    .collect(),
            ));
            format!(
                "SELECT pid, winners(ts, ds, {}) AS w FROM t GROUP BY pid",
                names.join(", ")
            )
        } else {
            let aggs: Vec<String> = names
                .iter()
                .map(|a| format!("first_value({a} ORDER BY ts DESC, ds ASC) IGNORE NULLS AS {a}"))
                .collect();
            format!("SELECT pid, {} FROM t GROUP BY pid", aggs.join(", "))
        };
        let mut stream = ctx
            .sql(&sql)
            .await
            .expect("sql")
            .execute_stream()
            .await
            .expect("execute");
        let mut profiles = 0usize;
        while let Some(b) = stream.next().await {
            profiles += b.expect("batch").num_rows();
        }
        profiles
    });
    let (wall, cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
    let records = parquet::file::reader::FileReader::metadata(
        &parquet::file::serialized_reader::SerializedFileReader::new(
            std::fs::File::open(path).expect("open"),
        )
        .expect("reader"),
    )
    .file_metadata()
    .num_rows();
    println!(
        "{{\"case\":\"merge/{variant}/{records}\",\"records\":{records},\"profiles\":{profiles},\"attributes\":{},\"wall_s\":{wall:.2},\"cpu_s\":{cpu:.2},\"records_per_s\":{:.0},\"peak_rss_mb\":{:.0}}}",
        names.len(),
        records as f64 / wall,
        peak_rss_mb(),
    );
}

fn main() {
    if let Some((path, variant)) = common::child() {
        child(&path, &variant);
        return;
    }
    let filter = common::filter();
    let stock_all = std::env::var("AUDIENCE_BENCH_STOCK").is_ok_and(|v| v == "all");
    for records in common::scales("AUDIENCE_BENCH_RECORDS", "1000000") {
        let path = ensure_data(records);
        for variant in ["fused", "stock"] {
            if variant == "stock" && records > 1_000_000 && !stock_all {
                continue;
            }
            let case = format!("merge/{variant}/{records}");
            if filter.as_ref().is_some_and(|f| !case.contains(f.as_str())) {
                continue;
            }
            common::run_child(&case, &path, variant);
        }
    }
}
