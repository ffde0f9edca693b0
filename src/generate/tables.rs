//! Column builders and rolling Parquet writers for the generator.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use super::ROWS_PER_FILE;
use crate::error::{Error, Result};

/// Rows per record batch.
const BATCH_ROWS: usize = 65_536;

/// One cell of a generated row.
pub enum V<'a> {
    S(Option<&'a str>),
    T(Option<i64>),
    F(Option<f64>),
    I(Option<i64>),
    B(Option<bool>),
}

enum Col {
    S(StringBuilder),
    T(TimestampMicrosecondBuilder),
    F(Float64Builder),
    I(Int64Builder),
    B(BooleanBuilder),
}

impl Col {
    fn new(dt: &DataType) -> Col {
        match dt {
            DataType::Utf8 => Col::S(StringBuilder::new()),
            DataType::Timestamp(..) => {
                Col::T(TimestampMicrosecondBuilder::new().with_timezone("UTC"))
            }
            DataType::Float64 => Col::F(Float64Builder::new()),
            DataType::Int64 => Col::I(Int64Builder::new()),
            _ => Col::B(BooleanBuilder::new()),
        }
    }
    fn finish(&mut self) -> ArrayRef {
        match self {
            Col::S(b) => Arc::new(b.finish()),
            Col::T(b) => Arc::new(b.finish()),
            Col::F(b) => Arc::new(b.finish()),
            Col::I(b) => Arc::new(b.finish()),
            Col::B(b) => Arc::new(b.finish()),
        }
    }
}

/// A dataset being generated: builders plus a Parquet writer that rolls files.
pub struct Table {
    name: &'static str,
    dir: PathBuf,
    schema: SchemaRef,
    cols: Vec<Col>,
    rows_in_batch: usize,
    rows_in_file: usize,
    rows: u64,
    files: usize,
    writer: Option<ArrowWriter<File>>,
}

impl Table {
    fn new(data: &Path, name: &'static str, fields: &[(&str, DataType)]) -> Result<Table> {
        let schema = Arc::new(Schema::new(
            fields
                .iter()
                .map(|(n, t)| Field::new(*n, t.clone(), true))
                .collect::<Vec<_>>(),
        ));
        let dir = data.join(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(Error::io(dir.display().to_string()))?;
        }
        std::fs::create_dir_all(&dir).map_err(Error::io(dir.display().to_string()))?;
        let cols = schema
            .fields()
            .iter()
            .map(|f| Col::new(f.data_type()))
            .collect();
        Ok(Table {
            name,
            dir,
            schema,
            cols,
            rows_in_batch: 0,
            rows_in_file: 0,
            rows: 0,
            files: 0,
            writer: None,
        })
    }

    /// Append one row; values in schema order and of the schema's types.
    pub fn row(&mut self, values: &[V]) -> Result<()> {
        for (col, v) in self.cols.iter_mut().zip(values) {
            match (col, v) {
                (Col::S(b), V::S(x)) => b.append_option(*x),
                (Col::T(b), V::T(x)) => b.append_option(*x),
                (Col::F(b), V::F(x)) => b.append_option(*x),
                (Col::I(b), V::I(x)) => b.append_option(*x),
                (Col::B(b), V::B(x)) => b.append_option(*x),
                _ => {
                    return Err(Error::Internal(format!(
                        "generator row for `{}` does not match its schema",
                        self.name
                    )));
                }
            }
        }
        self.rows_in_batch += 1;
        if self.rows_in_batch >= BATCH_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.rows_in_batch == 0 {
            return Ok(());
        }
        let arrays: Vec<ArrayRef> = self.cols.iter_mut().map(Col::finish).collect();
        let batch = RecordBatch::try_new(self.schema.clone(), arrays)
            .map_err(|e| Error::Internal(e.to_string()))?;
        let path = self.dir.join(format!("part-{:05}.parquet", self.files));
        if self.writer.is_none() {
            let file = File::create(&path).map_err(Error::io(path.display().to_string()))?;
            let props = WriterProperties::builder()
                .set_compression(Compression::SNAPPY)
                .build();
            let w = ArrowWriter::try_new(file, self.schema.clone(), Some(props))
                .map_err(|e| Error::Internal(e.to_string()))?;
            self.writer = Some(w);
        }
        if let Some(w) = self.writer.as_mut() {
            w.write(&batch).map_err(|e| Error::Io {
                path: path.display().to_string(),
                source: std::io::Error::other(e),
            })?;
        }
        self.rows += self.rows_in_batch as u64;
        self.rows_in_file += self.rows_in_batch;
        self.rows_in_batch = 0;
        if self.rows_in_file >= ROWS_PER_FILE {
            self.close_file()?;
        }
        Ok(())
    }

    fn close_file(&mut self) -> Result<()> {
        if let Some(w) = self.writer.take() {
            w.close().map_err(|e| Error::Io {
                path: self.dir.display().to_string(),
                source: std::io::Error::other(e),
            })?;
            self.files += 1;
            self.rows_in_file = 0;
        }
        Ok(())
    }

    /// Flush and close; returns `(name, rows, files)`.
    pub fn finish(mut self) -> Result<(String, u64, usize)> {
        self.flush()?;
        if self.rows == 0 {
            // An empty dataset still gets one file, so its schema is declared.
            let path = self.dir.join("part-00000.parquet");
            let file = File::create(&path).map_err(Error::io(path.display().to_string()))?;
            let w = ArrowWriter::try_new(file, self.schema.clone(), None)
                .map_err(|e| Error::Internal(e.to_string()))?;
            self.writer = Some(w);
        }
        self.close_file()?;
        Ok((self.name.to_string(), self.rows, self.files))
    }
}

/// Every generated dataset.
pub struct Tables {
    pub crm: Table,
    pub loyalty: Table,
    pub signups: Table,
    pub web: Table,
    pub purchases: Table,
    pub prospects: Table,
}

/// Create the datasets' folders (emptied first) and builders.
pub fn all(data: &Path) -> Result<Tables> {
    use DataType::{Boolean, Float64, Int64, Utf8};
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Ok(Tables {
        crm: Table::new(
            data,
            "crm",
            &[
                ("crm_id", Utf8),
                ("email", Utf8),
                ("phone", Utf8),
                ("first_name", Utf8),
                ("last_name", Utf8),
                ("gender", Utf8),
                ("city", Utf8),
                ("postal_code", Utf8),
                ("address_line", Utf8),
                ("email_opt_in", Boolean),
                ("updated_at", ts.clone()),
            ],
        )?,
        loyalty: Table::new(
            data,
            "loyalty",
            &[
                ("loyalty_id", Utf8),
                ("email", Utf8),
                ("phone", Utf8),
                ("first_name", Utf8),
                ("last_name", Utf8),
                ("city", Utf8),
                ("postal_code", Utf8),
                ("address_line", Utf8),
                ("loyalty_tier", Utf8),
                ("points", Int64),
                ("updated_at", ts.clone()),
            ],
        )?,
        signups: Table::new(
            data,
            "web_signups",
            &[
                ("email", Utf8),
                ("cookie_id", Utf8),
                ("first_name", Utf8),
                ("city", Utf8),
                ("email_opt_in", Boolean),
                ("signed_up_at", ts.clone()),
            ],
        )?,
        web: Table::new(
            data,
            "web_events",
            &[
                ("cookie_id", Utf8),
                ("email", Utf8),
                ("event_type", Utf8),
                ("page", Utf8),
                ("event_time", ts.clone()),
            ],
        )?,
        purchases: Table::new(
            data,
            "purchases",
            &[
                ("crm_id", Utf8),
                ("email", Utf8),
                ("event_type", Utf8),
                ("order_id", Utf8),
                ("revenue", Float64),
                ("channel", Utf8),
                ("purchased_at", ts.clone()),
            ],
        )?,
        prospects: Table::new(
            data,
            "prospects",
            &[
                ("email", Utf8),
                ("first_name", Utf8),
                ("last_name", Utf8),
                ("city", Utf8),
                ("list_source", Utf8),
                ("updated_at", ts),
            ],
        )?,
    })
}
