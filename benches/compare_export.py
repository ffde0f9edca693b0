#!/usr/bin/env python3
"""Peers for benches/export.rs on the same file (benches/data/export_<rows>.parquet).

DuckDB COPY to CSV, CSV gzip and Parquet (zstd, snappy), and pyarrow's CSV and
Parquet writers; the table is loaded into memory first (not timed), as in the
Rust benchmark. Prints one JSON line per case: wall and CPU seconds (this
process), output bytes, MB/s, rows/s.

    python3 -m venv /tmp/benchvenv && /tmp/benchvenv/bin/pip install duckdb pyarrow
    /tmp/benchvenv/bin/python benches/compare_export.py 1000000 10000000
"""
import json
import os
import resource
import sys
import tempfile
import time

import duckdb
import pyarrow.csv as pc
import pyarrow.parquet as pq

HERE = os.path.dirname(os.path.abspath(__file__))


def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed(case, rows, out, fn):
    c0, t0 = cpu(), time.perf_counter()
    fn()
    wall, c = time.perf_counter() - t0, cpu() - c0
    size = os.path.getsize(out)
    print(json.dumps({
        "case": case, "rows": rows, "bytes_out": size, "wall_s": round(wall, 3),
        "cpu_s": round(c, 2), "mb_per_s": round(size / 1e6 / wall, 1),
        "rows_per_s": round(rows / wall),
    }), flush=True)
    os.remove(out)


def main():
    for rows in [int(a) for a in sys.argv[1:]] or [1000000]:
        src = os.path.join(HERE, "data", f"export_{rows}.parquet")
        table = pq.read_table(src)
        con = duckdb.connect()
        con.execute(f"CREATE TABLE t AS SELECT * FROM read_parquet('{src}')")
        tmp = tempfile.mkdtemp(dir=os.path.join(HERE, "data"))
        p = lambda name: os.path.join(tmp, name)
        timed(f"duckdb/csv/{rows}", rows, p("a.csv"),
              lambda: con.execute(f"COPY t TO '{p('a.csv')}' (FORMAT csv, HEADER)"))
        timed(f"duckdb/csv_gzip/{rows}", rows, p("a.csv.gz"),
              lambda: con.execute(f"COPY t TO '{p('a.csv.gz')}' (FORMAT csv, HEADER, COMPRESSION gzip)"))
        timed(f"duckdb/parquet_zstd/{rows}", rows, p("a.parquet"),
              lambda: con.execute(f"COPY t TO '{p('a.parquet')}' (FORMAT parquet, COMPRESSION zstd)"))
        timed(f"duckdb/parquet_snappy/{rows}", rows, p("b.parquet"),
              lambda: con.execute(f"COPY t TO '{p('b.parquet')}' (FORMAT parquet, COMPRESSION snappy)"))
        timed(f"pyarrow/csv/{rows}", rows, p("c.csv"), lambda: pc.write_csv(table, p("c.csv")))
        timed(f"pyarrow/parquet_zstd/{rows}", rows, p("c.parquet"),
              lambda: pq.write_table(table, p("c.parquet"), compression="zstd"))
        timed(f"pyarrow/parquet_snappy/{rows}", rows, p("d.parquet"),
              lambda: pq.write_table(table, p("d.parquet"), compression="snappy"))
        os.rmdir(tmp)


if __name__ == "__main__":
    main()
