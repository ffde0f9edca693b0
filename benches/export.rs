//! Export benchmark: `export/<format>/<target>/<rows>`.
//!
//! Generates (once, under `benches/data/`) `export_<rows>.parquet`: 14 columns
//! like an activation file (a 32-hex profile id, ten text columns: e-mail,
//! names, city, postcode, phone, gender, tier, country; two integers, a float,
//! a timestamp). Then, in a child process per case, loads it into memory (not
//! timed) and times the export path: encoding with the engine's encoders on
//! all cores and uploading through `object_store` with the engine's upload
//! (multipart above 16 MiB). Reports output MB/s, rows/s, wall and CPU seconds
//! and peak RSS.
//!
//! * formats: `csv`, `csv_gzip` (multi-member gzip compressed in parallel),
//!   `parquet_zstd`, `parquet_snappy`;
//! * targets: `local` (a folder under `benches/data/out`), and `s3` when
//!   `AUDIENCE_TEST_S3_URL` is set (run under `scripts/emulators.sh`: moto on loopback),
//!   with `s3-upload`: the same file encoded beforehand, only its upload timed
//!   (what the store takes in on this machine: the ceiling of the `s3` case).
//!
//! `benches/compare_export.py` runs DuckDB `COPY` and pyarrow on the same file.
//! Scales: `AUDIENCE_BENCH_ROWS=1000000,10000000` (default `1000000`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{
    ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use audience::config::destination::CsvOptions;
use audience::config::{Class, Compression, Destination, DestinationKind, Format, OnLimit};
use audience::engine::storage::Location;
use audience::export::{encode, publish};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rand::{RngExt, SeedableRng};

mod common;
use common::{cpu_seconds, data_dir, peak_rss_mb};

const TEXT: [&str; 10] = [
    "email",
    "first_name",
    "last_name",
    "city",
    "postcode",
    "phone",
    "gender",
    "tier",
    "country",
    "address",
];

fn schema() -> Arc<Schema> {
    let mut f = vec![Field::new("profile_id", DataType::Utf8, false)];
    f.extend(TEXT.iter().map(|n| Field::new(*n, DataType::Utf8, true)));
    f.push(Field::new("points", DataType::Int64, true));
    f.push(Field::new("orders", DataType::Int64, true));
    f.push(Field::new("revenue", DataType::Float64, true));
    f.push(Field::new(
        "last_seen",
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        true,
    ));
    Arc::new(Schema::new(f))
}

fn ensure_data(rows: u64) -> PathBuf {
    let path = data_dir().join(format!("export_{rows}.parquet"));
    if path.exists() {
        return path;
    }
    eprintln!("generating {rows} rows into {}", path.display());
    std::fs::create_dir_all(data_dir()).expect("mkdir");
    let first = [
        "Olivia", "Noah", "Amelia", "George", "Isla", "Arthur", "Ava", "Muhammad", "Freya", "Leo",
    ];
    let last = [
        "Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Johnson", "Davies", "Patel",
        "Wright",
    ];
    let cities = [
        "London",
        "Manchester",
        "Leeds",
        "Bristol",
        "Glasgow",
        "Cardiff",
        "Belfast",
        "York",
    ];
    let tiers = ["bronze", "silver", "gold", "platinum"];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
    let file = std::fs::File::create(&path).expect("create");
    let mut w = ArrowWriter::try_new(file, schema(), None).expect("writer");
    let batch = 65_536u64;
    let mut done = 0u64;
    while done < rows {
        let n = batch.min(rows - done) as usize;
        let ids: Vec<u64> = (0..n).map(|i| done + i as u64).collect();
        let mut cols: Vec<ArrayRef> = vec![Arc::new(StringArray::from_iter_values(
            ids.iter().map(|i| {
                format!(
                    "{:032x}",
                    (*i).wrapping_mul(0x9E37_79B9_7F4A_7C15) as u128 * 31 + *i as u128
                )
            }),
        ))];
        let pick = |rng: &mut rand_chacha::ChaCha8Rng, xs: &[&str]| {
            xs[rng.random_range(0..xs.len())].to_string()
        };
        let mut text: Vec<Vec<Option<String>>> = vec![Vec::with_capacity(n); TEXT.len()];
        for i in &ids {
            let f = pick(&mut rng, &first);
            let l = pick(&mut rng, &last);
            let vals = [
                format!(
                    "{}.{}{}@example-mail.co.uk",
                    f.to_lowercase(),
                    l.to_lowercase(),
                    i
                ),
                f,
                l,
                pick(&mut rng, &cities),
                format!(
                    "{}{} {}{}",
                    ["M", "LS", "BS", "G"][(*i % 4) as usize],
                    i % 20,
                    i % 9,
                    ["AA", "BD", "XY"][(*i % 3) as usize]
                ),
                format!("+447{:09}", rng.random_range(0..1_000_000_000u64)),
                pick(&mut rng, &["F", "M", "X"]),
                pick(&mut rng, &tiers),
                "GB".to_string(),
                format!(
                    "{} {} Street, Flat {}",
                    i % 300,
                    pick(&mut rng, &last),
                    i % 40
                ),
            ];
            for (k, v) in vals.into_iter().enumerate() {
                text[k].push(if rng.random_range(0..10) == 0 {
                    None
                } else {
                    Some(v)
                });
            }
        }
        for t in text {
            cols.push(Arc::new(StringArray::from(t)));
        }
        cols.push(Arc::new(Int64Array::from_iter(
            (0..n).map(|_| Some(rng.random_range(0..100_000i64))),
        )));
        cols.push(Arc::new(Int64Array::from_iter(
            (0..n).map(|_| Some(rng.random_range(0..50i64))),
        )));
        cols.push(Arc::new(Float64Array::from_iter(
            (0..n).map(|_| Some(rng.random_range(0..1_000_000i64) as f64 / 100.0)),
        )));
        cols.push(Arc::new(
            TimestampMicrosecondArray::from_iter(
                (0..n).map(|_| {
                    Some(1_700_000_000_000_000 + rng.random_range(0..40_000_000_000_000i64))
                }),
            )
            .with_timezone("UTC"),
        ));
        w.write(&RecordBatch::try_new(schema(), cols).expect("batch"))
            .expect("write");
        done += n as u64;
    }
    w.close().expect("close");
    path
}

fn destination(format: &str, url: &str) -> Destination {
    let (format, compression) = match format {
        "csv" => (Format::Csv(CsvOptions::default()), Compression::None),
        "csv_gzip" => (Format::Csv(CsvOptions::default()), Compression::Gzip),
        "parquet_zstd" => (Format::Parquet, Compression::Zstd),
        "parquet_snappy" => (Format::Parquet, Compression::Snappy),
        other => panic!("unknown format {other}"),
    };
    Destination {
        name: "bench".into(),
        location: Location::parse(url, Path::new("/")).expect("url"),
        kind: DestinationKind::CloudStorage,
        format,
        compression,
        file_name: "{run_id}/{segment}.{ext}".into(),
        file_text: String::new(),
        rows_per_file: None,
        segments: vec!["all".into()],
        class: Class::Customer,
        fields: Vec::new(),
        mandatory: Vec::new(),
        dedup_key: Vec::new(),
        max_profiles: None,
        on_limit: OnLimit::Fail,
        consent: None,
        marketing_actions: Vec::new(),
        customer_list_ids: Default::default(),
        deltas: false,
        schedule: None,
    }
}

fn child(path: &Path, variant: &str) {
    let (format, target) = variant.split_once('/').expect("format/target");
    let file = std::fs::File::open(path).expect("data");
    let batches: Vec<RecordBatch> = ParquetRecordBatchReaderBuilder::try_new(file)
        .expect("parquet")
        .with_batch_size(65_536)
        .build()
        .expect("reader")
        .map(|b| b.expect("batch"))
        .collect();
    let schema = batches[0].schema();
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let base = match target {
        "local" => {
            let dir = data_dir().join("out");
            std::fs::create_dir_all(&dir).expect("mkdir");
            format!("file://{}", dir.display())
        }
        "s3" | "s3-upload" => std::env::var("AUDIENCE_TEST_S3_URL").expect("AUDIENCE_TEST_S3_URL"),
        other => panic!("unknown target {other}"),
    };
    let d = destination(format, &format!("{base}/bench"));
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("rt");
    // `s3-upload`: the file is encoded first (not timed) and only its upload
    // is timed: the store's own ceiling on this machine.
    let encoded: Option<Arc<Vec<bytes::Bytes>>> = (target == "s3-upload").then(|| {
        let mut chunks = Vec::new();
        encode::encode_into(&d, None, &schema, &batches, threads, &mut |b| {
            chunks.push(b);
            Ok(())
        })
        .expect("encode");
        Arc::new(chunks)
    });
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let loc = d
        .location
        .join(&format!("{format}_{rows}.{}", d.extension()));
    let store = loc.store().expect("store");
    let mut retried = 0;
    let dest = d.clone();
    let w = rt
        .block_on(publish::write_file(
            store.as_ref(),
            &loc,
            Arc::new(move |sink: &mut encode::Sink<'_>| match &encoded {
                Some(chunks) => {
                    for c in chunks.iter() {
                        sink(c.clone())?;
                    }
                    Ok(rows as u64)
                }
                None => encode::encode_into(&dest, None, &schema, &batches, threads, sink),
            }),
            publish::RetryPolicy::default(),
            &mut retried,
            &audience::run::interrupt::Interrupt::default(),
        ))
        .expect("export");
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let bytes = w.bytes;
    println!(
        "{}",
        serde_json::json!({
            "case": format!("export/{variant}/{rows}"),
            "rows": rows,
            "bytes_out": bytes,
            "wall_s": (wall * 1000.0).round() / 1000.0,
            "cpu_s": (cpu * 100.0).round() / 100.0,
            "mb_per_s": ((bytes as f64 / 1e6 / wall) * 10.0).round() / 10.0,
            "rows_per_s": (rows as f64 / wall).round(),
            "peak_rss_mb": peak_rss_mb().round(),
        })
    );
    if target == "local" {
        let _ = std::fs::remove_file(loc.display());
    }
}

fn main() {
    if let Some((dir, variant)) = common::child() {
        child(&dir, &variant);
        return;
    }
    let filter = common::filter();
    let mut targets = vec!["local"];
    if std::env::var("AUDIENCE_TEST_S3_URL").is_ok() {
        targets.extend(["s3", "s3-upload"]);
    } else {
        eprintln!(
            "AUDIENCE_TEST_S3_URL not set: local target only (run under scripts/emulators.sh for S3)"
        );
    }
    for rows in common::scales("AUDIENCE_BENCH_ROWS", "1000000") {
        let path = ensure_data(rows);
        for format in ["csv", "csv_gzip", "parquet_zstd", "parquet_snappy"] {
            for target in &targets {
                let variant = format!("{format}/{target}");
                let case = format!("export/{variant}/{rows}");
                if filter.as_ref().is_some_and(|f| !case.contains(f.as_str())) {
                    continue;
                }
                common::run_child(&case, &path, &variant);
            }
        }
    }
}
