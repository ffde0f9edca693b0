//! Encoding export rows into files: CSV, JSON lines, Parquet, and the
//! Microsoft Advertising bulk file.
//!
//! CSV and JSON are encoded in chunks of rows on all cores; with gzip each
//! chunk becomes its own gzip member, so a file is a valid multi-member gzip
//! stream (as pigz and BGZF write) that every gzip reader decompresses whole.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

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

/// The rows of `batches` split by `rows_per_file` (always at least one file,
/// so an empty segment still gets a file with its header).
pub fn split(batches: &[RecordBatch], rows_per_file: Option<u64>) -> Vec<Vec<RecordBatch>> {
    groups(batches, rows_per_file.map_or(usize::MAX, |n| n as usize))
}

/// Consecutive slices of `batches` holding at most `limit` rows each, in order
/// (one empty group when there are no rows).
fn groups(batches: &[RecordBatch], limit: usize) -> Vec<Vec<RecordBatch>> {
    let mut out: Vec<Vec<RecordBatch>> = vec![Vec::new()];
    let mut in_group = 0usize;
    for b in batches {
        let mut off = 0;
        while off < b.num_rows() {
            if in_group == limit {
                out.push(Vec::new());
                in_group = 0;
            }
            let n = (b.num_rows() - off).min(limit - in_group);
            if let Some(g) = out.last_mut() {
                g.push(b.slice(off, n));
            }
            in_group += n;
            off += n;
        }
    }
    out
}

/// A consumer of a file's bytes, in order.
pub type Sink<'a> = dyn FnMut(Bytes) -> Result<()> + Send + 'a;

/// Encode one file's rows, handing its bytes to `sink` in order as they are
/// ready (CSV/JSON chunk by chunk, Parquet every few MiB), so that uploading
/// overlaps encoding. Returns the row count.
///
/// # Errors
/// [`Error::Internal`] when an encoder fails; what `sink` returns.
pub fn encode_into(
    d: &Destination,
    segment_list_id: Option<i64>,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    threads: usize,
    sink: &mut Sink<'_>,
) -> Result<u64> {
    let rows = batches.iter().map(|b| b.num_rows() as u64).sum();
    let gzip = d.compression == Compression::Gzip;
    match (&d.format, d.kind) {
        (_, DestinationKind::MicrosoftAdvertising) => {
            let id = segment_list_id
                .ok_or_else(|| Error::Internal("customer list id vanished".into()))?;
            sink(microsoft_bulk(id, batches)?)?;
        }
        (Format::Csv(o), _) => chunked(batches, threads, gzip, sink, |i, rows, out| {
            csv_chunk(o, schema, i == 0, rows, out)
        })?,
        (Format::Json, _) => chunked(batches, threads, gzip, sink, |_, rows, out| {
            json_chunk(rows, out)
        })?,
        (Format::Parquet, _) => parquet_file(d.compression, schema, batches, sink)?,
    }
    Ok(rows)
}

/// Encoded chunks waiting for their turn, and how many were handed on.
struct Slots {
    done: Vec<Option<Result<Bytes>>>,
    emitted: usize,
}

/// Encode chunks on `threads` threads (and gzip each when asked); this thread
/// hands them to `sink` in order. Workers stay at most a few chunks ahead.
fn chunked(
    batches: &[RecordBatch],
    threads: usize,
    gzip: bool,
    sink: &mut Sink<'_>,
    encode: impl Fn(usize, &[RecordBatch], &mut Vec<u8>) -> Result<()> + Sync,
) -> Result<()> {
    let chunks = groups(batches, CHUNK_ROWS);
    let threads = threads.clamp(1, chunks.len().max(1));
    let window = threads * 4;
    let next = AtomicUsize::new(0);
    let state = Mutex::new(Slots {
        done: (0..chunks.len()).map(|_| None).collect(),
        emitted: 0,
    });
    let ready = Condvar::new();
    let failed = std::sync::atomic::AtomicBool::new(false);
    let work = || {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(rows) = chunks.get(i) else { break };
            // Wait until the chunk is within the window of the emitter.
            {
                let Ok(mut st) = state.lock() else { return };
                while i >= st.emitted + window && !failed.load(Ordering::Relaxed) {
                    let Ok(s) = ready.wait(st) else { return };
                    st = s;
                }
            }
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
            if let Ok(mut st) = state.lock() {
                st.done[i] = Some(r);
            }
            ready.notify_all();
        }
    };
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(work);
        }
        let result = (|| {
            for i in 0..chunks.len() {
                let chunk = {
                    let mut st = state
                        .lock()
                        .map_err(|_| Error::Internal("encoder thread panicked".into()))?;
                    loop {
                        if let Some(c) = st.done[i].take() {
                            st.emitted = i + 1;
                            break c;
                        }
                        st = ready
                            .wait(st)
                            .map_err(|_| Error::Internal("encoder thread panicked".into()))?;
                    }
                };
                ready.notify_all();
                sink(chunk?)?;
            }
            Ok(())
        })();
        if result.is_err() {
            // Let waiting workers finish; nothing more is handed on.
            failed.store(true, Ordering::Relaxed);
            next.store(chunks.len(), Ordering::Relaxed);
            ready.notify_all();
        }
        result
    })
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

/// Hands on a Parquet writer's output every [`FLUSH_BYTES`].
struct SinkWriter<'a, 'b> {
    buf: Vec<u8>,
    sink: &'a mut Sink<'b>,
}

const FLUSH_BYTES: usize = 8 << 20;

impl SinkWriter<'_, '_> {
    fn hand_on(&mut self) -> std::io::Result<()> {
        let b = Bytes::from(std::mem::take(&mut self.buf));
        (self.sink)(b).map_err(|e| std::io::Error::other(e.to_string()))
    }
}

impl Write for SinkWriter<'_, '_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= FLUSH_BYTES {
            self.hand_on()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn parquet_file(
    c: Compression,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    sink: &mut Sink<'_>,
) -> Result<()> {
    let codec = match c {
        Compression::None => PqCompression::UNCOMPRESSED,
        Compression::Gzip => PqCompression::GZIP(GzipLevel::default()),
        Compression::Zstd => PqCompression::ZSTD(ZstdLevel::default()),
        Compression::Snappy => PqCompression::SNAPPY,
        Compression::Lz4 => PqCompression::LZ4_RAW,
    };
    let props = WriterProperties::builder()
        .set_compression(codec)
        // Row groups of 1Mi rows (as pyarrow): each is handed on when complete.
        .set_max_row_group_row_count(Some(1 << 20))
        .set_created_by(format!("audience {}", crate::VERSION))
        .build();
    let pq = |e: parquet::errors::ParquetError| Error::Internal(format!("Parquet encoding: {e}"));
    let mut out = SinkWriter {
        buf: Vec::new(),
        sink,
    };
    {
        let mut w = ArrowWriter::try_new(&mut out, schema.clone(), Some(props)).map_err(pq)?;
        for b in batches {
            w.write(b).map_err(pq)?;
        }
        w.close().map_err(pq)?;
    }
    if !out.buf.is_empty() {
        out.hand_on()
            .map_err(|e| Error::Internal(format!("Parquet output: {e}")))?;
    }
    Ok(())
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
