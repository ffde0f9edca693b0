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
