//! Encoding export rows into files: CSV, JSON lines, Parquet, and the
//! Microsoft Advertising bulk file.
//!
//! CSV and JSON are encoded in chunks of rows on all cores; with gzip each
//! chunk becomes its own gzip member, so a file is a valid multi-member gzip
//! stream (as pigz and BGZF write) that every gzip reader decompresses whole.

use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::SchemaRef;
use flate2::Compression as GzLevel;
use flate2::write::GzEncoder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression as PqCompression, GzipLevel, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::config::destination::CsvOptions;
use crate::config::{Compression, Destination, DestinationKind, Format};
use crate::error::{Error, Result};

/// Rows per encoding chunk (one gzip member each).
const CHUNK_ROWS: usize = 32_768;

/// One encoded file: its bytes in order (concatenate them) and its row count.
pub struct Encoded {
    pub chunks: Vec<Bytes>,
    pub rows: u64,
}

impl Encoded {
    pub fn len(&self) -> u64 {
        self.chunks.iter().map(|c| c.len() as u64).sum()
    }
}

/// The rows of `batches` split by `rows_per_file` (always at least one file,
/// so an empty segment still gets a file with its header).
pub fn split(batches: &[RecordBatch], rows_per_file: Option<u64>) -> Vec<Vec<RecordBatch>> {
    let limit = rows_per_file.map_or(usize::MAX, |n| n as usize);
    let mut files: Vec<Vec<RecordBatch>> = vec![Vec::new()];
    let mut in_file = 0usize;
    for b in batches {
        let mut off = 0;
        while off < b.num_rows() {
            if in_file == limit {
                files.push(Vec::new());
                in_file = 0;
            }
            let n = (b.num_rows() - off).min(limit - in_file);
            if let Some(f) = files.last_mut() {
                f.push(b.slice(off, n));
            }
            in_file += n;
            off += n;
        }
    }
    files
}

/// Encode one file's rows as the destination's format.
///
/// # Errors
/// [`Error::Internal`] when an encoder fails.
pub fn encode(
    d: &Destination,
    segment_list_id: Option<i64>,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    threads: usize,
) -> Result<Encoded> {
    let rows = batches.iter().map(|b| b.num_rows() as u64).sum();
    let gzip = d.compression == Compression::Gzip;
    let chunks = match (&d.format, d.kind) {
        (_, DestinationKind::MicrosoftAdvertising) => {
            let id = segment_list_id
                .ok_or_else(|| Error::Internal("customer list id vanished".into()))?;
            vec![microsoft_bulk(id, batches)?]
        }
        (Format::Csv(o), _) => chunked(batches, threads, gzip, |i, rows, out| {
            csv_chunk(o, schema, i == 0, rows, out)
        })?,
        (Format::Json, _) => chunked(batches, threads, gzip, |_, rows, out| json_chunk(rows, out))?,
        (Format::Parquet, _) => vec![parquet_file(d.compression, schema, batches)?],
    };
    Ok(Encoded { chunks, rows })
}

/// Slices of at most [`CHUNK_ROWS`] rows, in order.
fn chunks_of(batches: &[RecordBatch]) -> Vec<Vec<RecordBatch>> {
    let mut out: Vec<Vec<RecordBatch>> = vec![Vec::new()];
    let mut n = 0;
    for b in batches {
        let mut off = 0;
        while off < b.num_rows() {
            if n == CHUNK_ROWS {
                out.push(Vec::new());
                n = 0;
            }
            let take = (b.num_rows() - off).min(CHUNK_ROWS - n);
            if let Some(c) = out.last_mut() {
                c.push(b.slice(off, take));
            }
            n += take;
            off += take;
        }
    }
    out
}

/// Encode chunks on `threads` threads (and gzip each when asked), keeping their order.
fn chunked(
    batches: &[RecordBatch],
    threads: usize,
    gzip: bool,
    encode: impl Fn(usize, &[RecordBatch], &mut Vec<u8>) -> Result<()> + Sync,
) -> Result<Vec<Bytes>> {
    let chunks = chunks_of(batches);
    let next = AtomicUsize::new(0);
    let out: Mutex<Vec<Option<Result<Bytes>>>> =
        Mutex::new((0..chunks.len()).map(|_| None).collect());
    let work = || {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(rows) = chunks.get(i) else { break };
            let r = (|| {
                let mut buf = Vec::new();
                encode(i, rows, &mut buf)?;
                if gzip {
                    let mut gz = GzEncoder::new(Vec::with_capacity(buf.len() / 3), GzLevel::new(6));
                    gz.write_all(&buf)
                        .map_err(|e| Error::Internal(format!("gzip: {e}")))?;
                    buf = gz
                        .finish()
                        .map_err(|e| Error::Internal(format!("gzip: {e}")))?;
                }
                Ok(Bytes::from(buf))
            })();
            if let Ok(mut o) = out.lock() {
                o[i] = Some(r);
            }
        }
    };
    std::thread::scope(|s| {
        for _ in 1..threads.clamp(1, chunks.len().max(1)) {
            s.spawn(work);
        }
        work();
    });
    out.into_inner()
        .map_err(|_| Error::Internal("encoder thread panicked".into()))?
        .into_iter()
        .map(|c| c.unwrap_or_else(|| Err(Error::Internal("chunk not encoded".into()))))
        .collect()
}

fn arrow_err(what: &'static str) -> impl Fn(datafusion::arrow::error::ArrowError) -> Error {
    move |e| Error::Internal(format!("{what} encoding: {e}"))
}

fn csv_chunk(
    o: &CsvOptions,
    schema: &SchemaRef,
    first: bool,
    rows: &[RecordBatch],
    out: &mut Vec<u8>,
) -> Result<()> {
    let mut b = datafusion::arrow::csv::WriterBuilder::new()
        .with_header(first && o.header)
        .with_delimiter(o.delimiter as u8)
        .with_quote(o.quote as u8)
        .with_null(o.null.clone());
    if let Some(e) = o.escape {
        b = b.with_escape(e as u8).with_double_quote(false);
    }
    let mut w = b.build(out);
    if rows.is_empty() {
        // The header alone.
        w.write(&RecordBatch::new_empty(schema.clone()))
            .map_err(arrow_err("CSV"))?;
    }
    for r in rows {
        w.write(r).map_err(arrow_err("CSV"))?;
    }
    Ok(())
}

fn json_chunk(rows: &[RecordBatch], out: &mut Vec<u8>) -> Result<()> {
    let mut w = datafusion::arrow::json::LineDelimitedWriter::new(out);
    for r in rows {
        w.write(r).map_err(arrow_err("JSON"))?;
    }
    w.finish().map_err(arrow_err("JSON"))
}

fn parquet_file(c: Compression, schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Bytes> {
    let codec = match c {
        Compression::None => PqCompression::UNCOMPRESSED,
        Compression::Gzip => PqCompression::GZIP(GzipLevel::default()),
        Compression::Zstd => PqCompression::ZSTD(ZstdLevel::default()),
        Compression::Snappy => PqCompression::SNAPPY,
        Compression::Lz4 => PqCompression::LZ4_RAW,
    };
    let props = WriterProperties::builder()
        .set_compression(codec)
        .set_max_row_group_row_count(Some(1 << 20))
        .set_created_by(format!("audience {}", crate::VERSION))
        .build();
    let mut buf = Vec::new();
    let mut w = ArrowWriter::try_new(&mut buf, schema.clone(), Some(props))
        .map_err(|e| Error::Internal(format!("Parquet encoding: {e}")))?;
    for b in batches {
        w.write(b)
            .map_err(|e| Error::Internal(format!("Parquet encoding: {e}")))?;
    }
    w.close()
        .map_err(|e| Error::Internal(format!("Parquet encoding: {e}")))?;
    Ok(Bytes::from(buf))
}

/// Microsoft Advertising bulk upload header.
pub const MICROSOFT_HEADER: &str = "Type,Status,Id,Parent Id,Client Id,Modified Time,Name,Description,Scope,Audience,Action Type,Sub Type,Text";

/// A Customer Match bulk file: the format version, the customer list with
/// action `Replace`, then one `Customer List Item` per hashed e-mail.
fn microsoft_bulk(list_id: i64, batches: &[RecordBatch]) -> Result<Bytes> {
    let mut out = String::new();
    out.push_str(MICROSOFT_HEADER);
    out.push('\n');
    out.push_str("Format Version,,,,,,6.0,,,,,,\n");
    out.push_str(&format!("Customer List,,{list_id},,,,,,,,Replace,,\n"));
    for b in batches {
        let col = b
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| Error::Internal("hashed e-mails are not text".into()))?;
        for v in col.iter().flatten() {
            out.push_str(&format!(
                "Customer List Item,,,{list_id},,,,,,,,Email,{v}\n"
            ));
        }
    }
    Ok(Bytes::from(out))
}
