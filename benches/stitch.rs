//! Identity stitching benchmark: `identity/<variant>/<people>`.
//!
//! For each scale it generates a project (once, under `benches/data/`), then,
//! in a child process per case so that peak memory is the case's own, runs
//! ingest plus the identity stage (Parquet decoding, normalisation, interning,
//! links, stitching, Arrow outputs) and reports links per second, wall and CPU
//! seconds, peak RSS, and the memory model of the issue (1.3 x distinct identity
//! bytes + 24 B per identity + 8 B per link) for comparison. It also writes the
//! string links (`links_for_peers.parquet`) that `benches/compare_stitch.py`
//! runs DuckDB and scipy on.
//!
//! Variants: `plain` (no unique namespace, no hub limit: connected components),
//! `links-only` (like for like with the peers: components of the string links
//! file, from Parquet to a label per identity), `floor` (the reference
//! floor on the same file: one thread, radix-partitioned interning, union-find,
//! no rank order, times or link deduplication), and `constrained` (the
//! generated config: unique crm_id, cookie max_links).
//!
//! Scales: `AUDIENCE_BENCH_PEOPLE=1000000,5000000,10000000` (default `1000000`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use arrow::array::Array;

use audience::config::Project;
use audience::generate::{GenerateOptions, generate};

mod common;
use common::{cpu_seconds, data_dir, peak_rss_mb};

fn ensure_project(people: u64) -> PathBuf {
    let dir = data_dir().join(format!("p{people}"));
    if !dir.join("audience.toml").exists() {
        eprintln!("generating {people} people into {}", dir.display());
        let opts = GenerateOptions {
            people,
            out: dir.clone(),
            seed: 42,
            events_per_person: 10,
            end: chrono::DateTime::parse_from_rfc3339("2025-07-01T00:00:00Z")
                .expect("date")
                .to_utc(),
        };
        generate(&opts, |_| Ok(())).expect("generate");
    }
    dir
}

fn child(dir: &Path, variant: &str) {
    let mut project = Project::load(dir).expect("project");
    if variant == "plain" {
        for ns in &mut project.namespaces {
            ns.unique = false;
            ns.max_links = None;
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("rt");
    let out_dir = dir.join(format!("bench_out_{variant}"));
    std::fs::create_dir_all(&out_dir).expect("out dir");
    let out = audience::engine::storage::Location::parse(out_dir.to_str().expect("utf-8"), dir)
        .expect("location");
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    let stitched = rt.block_on(async {
        let ctx = audience::engine::session(&project, chrono::Utc::now())
            .await
            .expect("session");
        let datasets = audience::ingest::ingest(&ctx, &project)
            .await
            .expect("ingest");
        audience::identity::stitch(&ctx, &project, &datasets, None, &out, |_| {})
            .await
            .expect("stitch")
    });
    let (wall, cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
    let h = &stitched.health;
    let model = 1.3 * stitched.lookup.value_bytes() as f64
        + 24.0 * h.identities as f64
        + 8.0 * h.links as f64;
    let rows: u64 = stitched.rows_read.values().sum();
    println!(
        "{{\"case\":\"identity/{variant}/{}\",\"rows\":{rows},\"identities\":{},\"links\":{},\"cut\":{},\"quarantined\":{},\"wall_s\":{wall:.2},\"cpu_s\":{cpu:.2},\"links_per_s\":{:.0},\"peak_rss_mb\":{:.0},\"model_mb\":{:.0}}}",
        scale_name(dir),
        h.identities,
        h.links,
        h.links_cut,
        h.quarantined,
        h.links as f64 / wall,
        peak_rss_mb(),
        model / 1e6,
    );
    if variant == "plain" {
        // String links for the peers in compare_stitch.py: `namespace:value` pairs (untimed).
        let file = std::fs::File::open(out_dir.join("links.parquet")).expect("links output");
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .expect("parquet")
            .build()
            .expect("reader");
        let mut writer: Option<parquet::arrow::ArrowWriter<std::fs::File>> = None;
        for l in reader {
            let l = l.expect("batch");
            let s = |n: &str| {
                l.column_by_name(n)
                    .expect("column")
                    .as_any()
                    .downcast_ref::<arrow::array::StringArray>()
                    .expect("utf8")
                    .clone()
            };
            let join = |a: &str, b: &str| -> arrow::array::ArrayRef {
                let (a, b) = (s(a), s(b));
                std::sync::Arc::new(arrow::array::StringArray::from_iter_values(
                    (0..l.num_rows()).map(|i| format!("{}:{}", a.value(i), b.value(i))),
                ))
            };
            let batch = arrow::record_batch::RecordBatch::try_from_iter(vec![
                ("src", join("anchor_namespace", "anchor_value")),
                ("dst", join("other_namespace", "other_value")),
            ])
            .expect("batch");
            let w = writer.get_or_insert_with(|| {
                parquet::arrow::ArrowWriter::try_new(
                    std::fs::File::create(dir.join("links_for_peers.parquet")).expect("create"),
                    batch.schema(),
                    None,
                )
                .expect("writer")
            });
            w.write(&batch).expect("write");
        }
        if let Some(w) = writer {
            w.close().expect("close");
        }
    }
}

/// The scale in a project directory's name (`p1000000` → `1000000`).
fn scale_name(dir: &Path) -> &str {
    dir.file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("?")
        .trim_start_matches('p')
}

/// The string links file's two columns (`src`, `dst`), batch by batch, in
/// DataFusion's batch size (the reader's default is 1,024 rows).
fn peer_links(
    dir: &Path,
) -> impl Iterator<Item = (arrow::array::StringArray, arrow::array::StringArray)> {
    let file =
        std::fs::File::open(dir.join("links_for_peers.parquet")).expect("run the plain case first");
    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .expect("parquet")
        .with_batch_size(8192)
        .build()
        .expect("reader")
        .map(|batch| {
            let batch = batch.expect("batch");
            let col = |i: usize| {
                batch
                    .column(i)
                    .as_any()
                    .downcast_ref::<arrow::array::StringArray>()
                    .expect("utf8")
                    .clone()
            };
            (col(0), col(1))
        })
}

/// Like for like with the peers: connected components from the string links
/// file (Parquet decoding, interning, union-find, a label per identity).
fn child_links(dir: &Path) {
    use audience::identity::graph::{GraphBuilder, NsRules};
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let mut b = GraphBuilder::new(1, threads);
    let mut links = 0u64;
    for (src, dst) in peer_links(dir) {
        for i in 0..src.len() {
            b.add_row(
                audience::config::Class::Customer,
                0,
                0,
                [(0, src.value(i)), (0, dst.value(i))],
            )
            .expect("add");
            links += 1;
        }
    }
    let mut g = b.finish().expect("finish");
    let phase = t0.elapsed().as_secs_f64();
    let st = g.stitch(&[NsRules::default()], &[], &[], &|_| false);
    let labels = arrow::array::UInt32Array::from(st.roots);
    let (wall, cpu, peak) = (
        t0.elapsed().as_secs_f64(),
        cpu_seconds() - cpu0,
        peak_rss_mb(),
    );
    if std::env::var_os("AUDIENCE_BENCH_PHASES").is_some() {
        // Not part of the like-for-like figures: profile ids for these
        // components, as the identity stage assigns them (fresh ids).
        let t1 = Instant::now();
        let p = audience::identity::ids::assign(&g, &["id"], labels.values(), None);
        eprintln!(
            "intern+links {phase:.2}s, stitch {:.2}s; then profile ids {:.2}s ({} profiles)",
            wall - phase,
            t1.elapsed().as_secs_f64(),
            p.ids.len()
        );
    }
    println!(
        "{{\"case\":\"identity/links-only/{}\",\"links\":{links},\"identities\":{},\"wall_s\":{wall:.2},\"cpu_s\":{cpu:.2},\"links_per_s\":{:.0},\"peak_rss_mb\":{:.0}}}",
        scale_name(dir),
        labels.len(),
        links as f64 / wall,
        peak,
    );
}

/// The reference floor, measured here on the same file as
/// `links-only`: one thread; Parquet decoding, radix-partitioned interning
/// (every occurrence hashed and buffered in one of 256 partitions, then each
/// partition interned in its own hash table), union-find, a label per
/// identity. No rank order, no link deduplication, no times or datasets:
/// what stitching costs at least, not what the product does.
fn child_floor(dir: &Path) {
    use std::hash::BuildHasher;
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    #[derive(Default)]
    struct Part {
        hashes: Vec<u64>,
        occurrence: Vec<u32>,
        ends: Vec<u32>,
        bytes: Vec<u8>,
    }
    let hasher = hashbrown::DefaultHashBuilder::default();
    let mut parts: Vec<Part> = (0..256).map(|_| Part::default()).collect();
    let mut occurrences = 0u32;
    for (src, dst) in peer_links(dir) {
        for i in 0..src.len() {
            for v in [src.value(i), dst.value(i)] {
                let h = hasher.hash_one(v.as_bytes());
                let p = &mut parts[(h >> 56) as usize];
                p.hashes.push(h);
                p.occurrence.push(occurrences);
                p.bytes.extend_from_slice(v.as_bytes());
                p.ends.push(p.bytes.len() as u32);
                occurrences += 1;
            }
        }
    }
    let read = t0.elapsed().as_secs_f64();
    // Each partition interned in cache: ids by partition, then first appearance.
    let mut ids = vec![0u32; occurrences as usize];
    let mut n = 0u32;
    for p in &parts {
        let mut table = hashbrown::HashTable::<(u32, u32)>::with_capacity(p.hashes.len() / 2);
        let value = |k: usize| {
            let start = if k == 0 { 0 } else { p.ends[k - 1] as usize };
            &p.bytes[start..p.ends[k] as usize]
        };
        for (k, &h) in p.hashes.iter().enumerate() {
            let v = value(k);
            let id = match table.find(h, |&(first, _)| value(first as usize) == v) {
                Some(&(_, id)) => id,
                None => {
                    table.insert_unique(h, (k as u32, n), |&(first, _)| {
                        hasher.hash_one(value(first as usize))
                    });
                    n += 1;
                    n - 1
                }
            };
            ids[p.occurrence[k] as usize] = id;
        }
    }
    drop(parts);
    let interned = t0.elapsed().as_secs_f64();
    // Union-find, linking the larger root under the smaller, with path halving.
    let mut parent: Vec<u32> = (0..n).collect();
    let find = |parent: &mut [u32], mut x: u32| {
        while parent[x as usize] != x {
            let up = parent[parent[x as usize] as usize];
            parent[x as usize] = up;
            x = up;
        }
        x
    };
    for pair in ids.chunks_exact(2) {
        let (a, b) = (find(&mut parent, pair[0]), find(&mut parent, pair[1]));
        if a != b {
            parent[a.max(b) as usize] = a.min(b);
        }
    }
    for i in 0..n as usize {
        parent[i] = parent[parent[i] as usize];
    }
    let labels = arrow::array::UInt32Array::from(parent);
    let links = u64::from(occurrences / 2);
    let (wall, cpu, peak) = (
        t0.elapsed().as_secs_f64(),
        cpu_seconds() - cpu0,
        peak_rss_mb(),
    );
    if std::env::var_os("AUDIENCE_BENCH_PHASES").is_some() {
        eprintln!(
            "read and partitioned {read:.2}s, interned {:.2}s, union-find and labels {:.2}s",
            interned - read,
            wall - interned
        );
    }
    let components = labels
        .values()
        .iter()
        .enumerate()
        .filter(|&(i, &r)| i as u32 == r)
        .count();
    println!(
        "{{\"case\":\"identity/floor/{}\",\"links\":{links},\"identities\":{},\"components\":{components},\"wall_s\":{wall:.2},\"cpu_s\":{cpu:.2},\"links_per_s\":{:.0},\"peak_rss_mb\":{:.0}}}",
        scale_name(dir),
        labels.len(),
        links as f64 / wall,
        peak,
    );
}

fn main() {
    if let Some((dir, variant)) = common::child() {
        common::phases();
        if variant == "links-only" {
            child_links(&dir);
        } else if variant == "floor" {
            child_floor(&dir);
        } else {
            child(&dir, &variant);
        }
        return;
    }
    let filter = common::filter();
    for people in common::scales("AUDIENCE_BENCH_PEOPLE", "1000000") {
        let dir = ensure_project(people);
        for variant in ["plain", "links-only", "floor", "constrained"] {
            let case = format!("identity/{variant}/{people}");
            if filter.as_ref().is_some_and(|f| !case.contains(f.as_str())) {
                continue;
            }
            common::run_child(&case, &dir, variant);
        }
    }
}
