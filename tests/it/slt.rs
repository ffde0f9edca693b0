//! SQL logic tests (`tests/slt/*.slt`) of segment semantics and query errors,
//! on the fixture project `tests/slt/project` with data written here.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema};
use audience::config::Project;
use audience::segment::adhoc;
use datafusion::prelude::SessionContext;
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType};

/// Seconds since the epoch of an RFC 3339 time.
fn t(s: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(s)
        .expect("time")
        .timestamp_micros()
}

fn write(dir: &Path, name: &str, columns: Vec<(&str, ArrayRef)>) {
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
            .collect::<Vec<_>>(),
    ));
    let batch = RecordBatch::try_new(
        schema.clone(),
        columns.into_iter().map(|(_, a)| a).collect(),
    )
    .expect("batch");
    let folder = dir.join("data").join(name);
    std::fs::create_dir_all(&folder).expect("mkdir");
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(folder.join("part-0.parquet")).expect("create"),
        schema,
        None,
    )
    .expect("writer");
    w.write(&batch).expect("write");
    w.close().expect("close");
}

fn strings(v: &[Option<&str>]) -> ArrayRef {
    Arc::new(StringArray::from(v.to_vec()))
}

fn times(v: &[&str]) -> ArrayRef {
    Arc::new(
        TimestampMicrosecondArray::from(v.iter().map(|s| t(s)).collect::<Vec<_>>())
            .with_timezone("UTC"),
    )
}

fn fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tmp");
    super::support::copy_tree(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/slt/project"),
        dir.path(),
    );
    let day1 = "2025-01-01T00:00:00Z";
    write(
        dir.path(),
        "crm",
        vec![
            (
                "crm_id",
                strings(&[Some("C1"), Some("C2"), Some("C3"), Some("C4"), Some("C5")]),
            ),
            (
                "email",
                strings(&[
                    Some("ann@x.com"),
                    Some("bob@x.com"),
                    Some("cat@x.com"),
                    Some("dan@x.com"),
                    Some("eve@x.com"),
                ]),
            ),
            (
                "tier",
                strings(&[
                    Some("gold"),
                    Some("silver"),
                    None,
                    Some("gold"),
                    Some("bronze"),
                ]),
            ),
            (
                "spend",
                Arc::new(Int64Array::from(vec![
                    Some(500),
                    Some(50),
                    None,
                    None,
                    Some(900),
                ])),
            ),
            ("ts", times(&[day1; 5])),
        ],
    );
    let events = [
        ("ann@x.com", "view", "2025-06-24T00:00:00Z"),
        ("bob@x.com", "view", "2025-06-24T00:00:01Z"),
        ("cat@x.com", "view", "2025-06-23T23:59:59Z"),
        ("dan@x.com", "view", "2025-07-01T00:00:00Z"),
        ("eve@x.com", "view", "2025-07-01T00:00:01Z"),
        ("ann@x.com", "purchase", "2025-06-01T00:00:00Z"),
        ("ann@x.com", "purchase", "2025-06-20T00:00:00Z"),
        ("bob@x.com", "purchase", "2025-05-01T00:00:00Z"),
        ("cat@x.com", "purchase", "2025-03-01T00:00:00Z"),
    ];
    write(
        dir.path(),
        "web",
        vec![
            (
                "email",
                strings(&events.iter().map(|e| Some(e.0)).collect::<Vec<_>>()),
            ),
            (
                "event_type",
                strings(&events.iter().map(|e| Some(e.1)).collect::<Vec<_>>()),
            ),
            ("ts", times(&events.iter().map(|e| e.2).collect::<Vec<_>>())),
        ],
    );
    dir
}

#[derive(Clone)]
struct Db {
    ctx: SessionContext,
    project: Arc<Project>,
}

#[derive(Debug)]
struct DbError(String);

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DbError {}

#[async_trait::async_trait]
impl AsyncDB for Db {
    type Error = DbError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, DbError> {
        let batches = adhoc::run_sql(&self.ctx, &self.project, sql)
            .await
            .map_err(|e| DbError(e.to_string()))?;
        let mut rows = Vec::new();
        let mut types = Vec::new();
        for b in &batches {
            types = b
                .schema()
                .fields()
                .iter()
                .map(|f| match f.data_type() {
                    DataType::Int8
                    | DataType::Int16
                    | DataType::Int32
                    | DataType::Int64
                    | DataType::UInt32
                    | DataType::UInt64 => DefaultColumnType::Integer,
                    DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 => {
                        DefaultColumnType::Text
                    }
                    _ => DefaultColumnType::Any,
                })
                .collect();
            for i in 0..b.num_rows() {
                rows.push(
                    b.columns()
                        .iter()
                        .map(|c| {
                            if c.is_null(i) {
                                "NULL".to_string()
                            } else {
                                arrow::util::display::array_value_to_string(c, i)
                                    .unwrap_or_default()
                            }
                        })
                        .collect(),
                );
            }
        }
        Ok(DBOutput::Rows { types, rows })
    }

    async fn shutdown(&mut self) {}
}

#[test]
fn slt_segment_semantics_and_errors() {
    let dir = fixture();
    let project = Arc::new(Project::load(dir.path()).expect("fixture project"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let as_of = chrono::DateTime::parse_from_rfc3339("2025-07-01T00:00:00Z")
            .expect("as-of")
            .with_timezone(&chrono::Utc);
        let policy =
            adhoc::policy_name(&project, None, audience::config::Class::Customer).expect("policy");
        let ctx = adhoc::prepare(&project, &policy, as_of)
            .await
            .expect("evaluate");
        let db = Db {
            ctx,
            project: project.clone(),
        };
        let files = ["segments.slt", "errors.slt"];
        for f in files {
            let db = db.clone();
            let mut runner = sqllogictest::Runner::new(move || {
                let db = db.clone();
                async move { Ok::<_, DbError>(db) }
            });
            runner
                .run_file_async(
                    Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("tests/slt")
                        .join(f),
                )
                .await
                .unwrap_or_else(|e| panic!("{f}: {e}"));
        }
    });
}
