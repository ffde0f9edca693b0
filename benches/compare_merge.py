#!/usr/bin/env python3
"""Peer for the merge benchmark: DuckDB on the same Parquet file.

`cargo bench --bench merge` writes benches/data/merge_<N>.parquet (pid, ts,
ds, a01..a12). This script resolves every attribute per profile the way the
issue measured DuckDB's best formulation: `arg_max(attr, (ts, -ds)) FILTER
(WHERE attr IS NOT NULL)` (the most recent non-null value, ties by dataset),
materialised into a table, and prints one JSON line.

Usage: python3 benches/compare_merge.py benches/data/merge_1000000.parquet
Needs: pip install duckdb (optional; not part of the tests).
"""
import json
import resource
import sys
import time


def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main(path):
    import duckdb

    con = duckdb.connect()
    cols = [c[0] for c in con.execute(f"DESCRIBE SELECT * FROM read_parquet('{path}')").fetchall()]
    attrs = [c for c in cols if c.startswith("a")]
    records = con.execute(f"SELECT count(*) FROM read_parquet('{path}')").fetchone()[0]
    aggs = ", ".join(
        f"arg_max({a}, struct_pack(t := ts, d := -ds::BIGINT)) FILTER (WHERE {a} IS NOT NULL) AS {a}"
        for a in attrs
    )
    t0, c0 = time.time(), cpu()
    con.execute(
        f"CREATE TEMP TABLE merged AS SELECT pid, {aggs} FROM read_parquet('{path}') GROUP BY pid"
    )
    profiles = con.execute("SELECT count(*) FROM merged").fetchone()[0]
    wall = time.time() - t0
    print(json.dumps({
        "case": f"peer/duckdb-arg_max/{records}",
        "records": records,
        "profiles": profiles,
        "attributes": len(attrs),
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu() - c0, 2),
        "records_per_s": round(records / wall),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
