//! Encoding export rows into files: CSV, JSON lines, Parquet, and the
//! Microsoft Advertising bulk file.
//!
//! CSV and JSON are encoded in chunks of rows on all cores; with gzip each
//! chunk becomes its own gzip member, so a file is a valid multi-member gzip
//! stream (as pigz and BGZF write) that every gzip reader decompresses whole.
//! Parquet row groups have their columns encoded on all cores and appended in
//! order. Either way the bytes do not depend on the number of threads.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

use bytes::Bytes;
use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::SchemaRef;
use flate2::Compression as GzLevel;
use flate2::write::GzEncoder;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_writer::{ArrowColumnChunk, ArrowColumnWriter, compute_leaves};
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
        (Format::Parquet, _) => {
            parquet_file(
                d.compression,
                schema,
                batches,
                threads,
                ROW_GROUP_ROWS,
                sink,
            )?;
        }
    }
    Ok(rows)
}

/// Results waiting for their turn, and how many were handed on.
struct Slots<T> {
    done: Vec<Option<Result<T>>>,
    emitted: usize,
}

/// Run `work(0..n)` on `threads` threads, which take the next index as they
/// finish one and stay at most `window` ahead of the emitter; this thread hands
/// the results to `emit` in index order as soon as each is ready. The first
/// error (of `work` or `emit`) stops the rest and is returned.
fn in_order<T: Send>(
    n: usize,
    threads: usize,
    window: usize,
    work: impl Fn(usize) -> Result<T> + Sync,
    mut emit: impl FnMut(T) -> Result<()>,
) -> Result<()> {
    let threads = threads.clamp(1, n.max(1));
    let next = AtomicUsize::new(0);
    let state = Mutex::new(Slots {
        done: (0..n).map(|_| None).collect(),
        emitted: 0,
    });
    let ready = Condvar::new();
    let failed = std::sync::atomic::AtomicBool::new(false);
    let worker = || {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= n {
                break;
            }
            // Wait until the item is within the window of the emitter.
            {
                let Ok(mut st) = state.lock() else { return };
                while i >= st.emitted + window && !failed.load(Ordering::Relaxed) {
                    let Ok(s) = ready.wait(st) else { return };
                    st = s;
                }
            }
            if failed.load(Ordering::Relaxed) {
                break;
            }
            let r = work(i);
            if let Ok(mut st) = state.lock() {
                st.done[i] = Some(r);
            }
            ready.notify_all();
        }
    };
    let poisoned = || Error::Internal("encoder thread panicked".into());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(worker);
        }
        let result = (|| {
            for i in 0..n {
                let item = {
                    let mut st = state.lock().map_err(|_| poisoned())?;
                    loop {
                        if let Some(c) = st.done[i].take() {
                            st.emitted = i + 1;
                            break c;
                        }
                        st = ready.wait(st).map_err(|_| poisoned())?;
                    }
                };
                ready.notify_all();
                emit(item?)?;
            }
            Ok(())
        })();
        if result.is_err() {
            // Let waiting workers finish; nothing more is handed on.
            failed.store(true, Ordering::Relaxed);
            next.store(n, Ordering::Relaxed);
            ready.notify_all();
        }
        result
    })
}

/// Encode chunks of rows on `threads` threads (and gzip each when asked); this
/// thread hands them to `sink` in order. Workers stay at most a few chunks ahead.
fn chunked(
    batches: &[RecordBatch],
    threads: usize,
    gzip: bool,
    sink: &mut Sink<'_>,
    encode: impl Fn(usize, &[RecordBatch], &mut Vec<u8>) -> Result<()> + Sync,
) -> Result<()> {
    let chunks = groups(batches, CHUNK_ROWS);
    let encode_chunk = |i: usize| {
        let mut buf = Vec::new();
        encode(i, &chunks[i], &mut buf)?;
        if gzip {
            let mut gz = GzEncoder::new(Vec::with_capacity(buf.len() / 3), GzLevel::new(6));
            gz.write_all(&buf)
                .map_err(|e| Error::Internal(format!("gzip: {e}")))?;
            buf = gz
                .finish()
                .map_err(|e| Error::Internal(format!("gzip: {e}")))?;
        }
        Ok(Bytes::from(buf))
    };
    in_order(chunks.len(), threads, threads * 4, encode_chunk, |b| {
        sink(b)
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

/// Rows per Parquet row group (as pyarrow); each is handed on when complete.
const ROW_GROUP_ROWS: usize = 1 << 20;

/// Encode a Parquet file row group by row group; within a row group the
/// columns are encoded on `threads` threads (each column chunk on its own, so
/// the bytes do not depend on the thread count) and appended in order, so
/// that a file's bytes flow to the upload column by column.
fn parquet_file(
    c: Compression,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    threads: usize,
    row_group_rows: usize,
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
        .set_max_row_group_row_count(Some(row_group_rows))
        .set_created_by(format!("audience {}", crate::VERSION))
        .build();
    let pq = |e: parquet::errors::ParquetError| Error::Internal(format!("Parquet encoding: {e}"));
    let mut out = SinkWriter {
        buf: Vec::new(),
        sink,
    };
    {
        let (mut file, factory) = ArrowWriter::try_new(&mut out, schema.clone(), Some(props))
            .and_then(ArrowWriter::into_serialized_writer)
            .map_err(pq)?;
        let row_groups = groups(batches, row_group_rows);
        for (index, rows) in row_groups.iter().enumerate() {
            if rows.is_empty() {
                continue;
            }
            let writers = factory.create_column_writers(index).map_err(pq)?;
            // One leaf per field for the flat schemas exports write.
            if writers.len() != schema.fields().len() {
                return Err(Error::Internal("nested columns in a Parquet export".into()));
            }
            let writers: Vec<Mutex<Option<ArrowColumnWriter>>> =
                writers.into_iter().map(|w| Mutex::new(Some(w))).collect();
            let encode_column = |i: usize| -> Result<ArrowColumnChunk> {
                let mut w = writers[i]
                    .lock()
                    .ok()
                    .and_then(|mut w| w.take())
                    .ok_or_else(|| Error::Internal("column writer taken twice".into()))?;
                for b in rows {
                    for leaf in compute_leaves(schema.field(i), b.column(i)).map_err(pq)? {
                        w.write(&leaf).map_err(pq)?;
                    }
                }
                w.close().map_err(pq)
            };
            // Column chunks are appended (and their bytes handed on) in order
            // as they are ready, while later columns are still being encoded.
            let mut group = file.next_row_group().map_err(pq)?;
            in_order(
                writers.len(),
                threads,
                writers.len(),
                encode_column,
                |chunk| chunk.append_to_row_group(&mut group).map_err(pq),
            )?;
            group.close().map_err(pq)?;
        }
        file.close().map_err(pq)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{ArrayRef, Int64Array};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use std::sync::Arc;

    fn batches() -> (SchemaRef, Vec<RecordBatch>) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("n", DataType::Int64, true),
            Field::new("city", DataType::Utf8, true),
        ]));
        let batch = |from: i64, rows: i64| {
            let cols: Vec<ArrayRef> = vec![
                Arc::new(StringArray::from_iter_values(
                    (from..from + rows).map(|i| format!("p{i:06}")),
                )),
                Arc::new(Int64Array::from_iter(
                    (from..from + rows).map(|i| (i % 7 != 0).then_some(i * 3)),
                )),
                Arc::new(StringArray::from_iter(
                    (from..from + rows).map(|i| (i % 5 != 0).then(|| format!("city {}", i % 13))),
                )),
            ];
            RecordBatch::try_new(schema.clone(), cols).expect("batch")
        };
        (
            schema.clone(),
            vec![batch(0, 700), batch(700, 1100), batch(1800, 700)],
        )
    }

    fn encode_parquet(threads: usize) -> Vec<u8> {
        let (schema, b) = batches();
        let mut out = Vec::new();
        parquet_file(
            Compression::Zstd,
            &schema,
            &b,
            threads,
            1000,
            &mut |c: Bytes| {
                out.extend_from_slice(&c);
                Ok(())
            },
        )
        .expect("encode");
        out
    }

    #[test]
    fn parquet_columns_encoded_in_parallel_read_back_row_group_by_row_group() {
        let one = encode_parquet(1);
        for threads in [2, 3, 8] {
            assert_eq!(
                encode_parquet(threads),
                one,
                "{threads} threads: same bytes"
            );
        }
        let reader = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(one)).expect("parquet");
        assert_eq!(reader.metadata().num_row_groups(), 3, "2,500 rows by 1,000");
        let read: Vec<RecordBatch> = reader
            .build()
            .expect("reader")
            .map(|b| b.expect("batch"))
            .collect();
        let (schema, expected) = batches();
        let got = datafusion::arrow::compute::concat_batches(&schema, &read).expect("concat");
        let want = datafusion::arrow::compute::concat_batches(&schema, &expected).expect("concat");
        assert_eq!(got, want);
    }

    #[test]
    fn parquet_of_no_rows_is_a_valid_empty_file() {
        let (schema, _) = batches();
        let mut out = Vec::new();
        parquet_file(
            Compression::Snappy,
            &schema,
            &[],
            2,
            1000,
            &mut |c: Bytes| {
                out.extend_from_slice(&c);
                Ok(())
            },
        )
        .expect("encode");
        let reader = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(out)).expect("parquet");
        assert_eq!(reader.metadata().num_row_groups(), 0);
        assert_eq!(reader.schema().fields().len(), 3);
    }

    #[test]
    fn in_order_hands_results_on_in_order_and_stops_at_the_first_error() {
        let mut seen = Vec::new();
        in_order(
            50,
            4,
            3,
            |i| Ok(i * 2),
            |v| {
                seen.push(v);
                Ok(())
            },
        )
        .expect("all");
        assert_eq!(seen, (0..50).map(|i| i * 2).collect::<Vec<_>>());
        let mut seen = Vec::new();
        let r = in_order(
            50,
            4,
            3,
            |i| {
                if i == 7 {
                    Err(Error::Internal("seven".into()))
                } else {
                    Ok(i)
                }
            },
            |v| {
                seen.push(v);
                Ok(())
            },
        );
        assert!(matches!(r, Err(Error::Internal(m)) if m == "seven"));
        assert_eq!(seen, (0..7).collect::<Vec<_>>());
    }
}
