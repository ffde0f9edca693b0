#!/usr/bin/env python3
"""Peer for the segment benchmark: DuckDB on the same files and SQL.

`cargo bench --bench segments` writes benches/data/seg_<N>/ (profiles.parquet,
events.parquet, sql/features/event_stats.sql and 50 sql/segments/*.sql). This
script runs the same SQL on DuckDB (with `as_of()` as a macro) and prints one
JSON line per case:

* duckdb-event-aggregates: the feature (windowed event aggregates per profile)
  materialised;
* duckdb-together: the feature once, then every layer of segments as one
  `UNION ALL` query materialising (segment, profile_id) memberships;
* duckdb-one-by-one: each segment as its own query, with what it reads inlined
  as CTEs (so the feature is recomputed per segment).

Usage: python3 benches/compare_segments.py benches/data/seg_1000000 [--skip-one-by-one]
Needs: pip install duckdb (optional; not part of the tests).
"""
import json
import os
import re
import resource
import sys
import time


def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def report(case, t0, c0, **extra):
    print(json.dumps({
        "case": case,
        "wall_s": round(time.time() - t0, 2),
        "cpu_s": round(cpu() - c0, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        **extra,
    }), flush=True)


def main(d):
    import duckdb

    people = os.path.basename(d.rstrip("/")).removeprefix("seg_")
    con = duckdb.connect()
    con.execute("CREATE MACRO as_of() AS TIMESTAMPTZ '2025-07-01 00:00:00+00'")
    con.execute(f"CREATE VIEW profiles AS SELECT * FROM read_parquet('{d}/profiles.parquet')")
    con.execute(f"CREATE VIEW events AS SELECT * FROM read_parquet('{d}/events.parquet')")
    feature = open(f"{d}/sql/features/event_stats.sql").read()
    segs = {}
    for f in sorted(os.listdir(f"{d}/sql/segments")):
        segs[f[:-4]] = open(f"{d}/sql/segments/{f}").read()
    deps = {s: [t for t in segs if re.search(rf"\b{t}\b", q) and t != s] for s, q in segs.items()}

    t0, c0 = time.time(), cpu()
    con.execute(f"CREATE TEMP TABLE event_stats AS {feature}")
    report(f"peer/duckdb-event-aggregates/{people}", t0, c0)

    # Together: layers of UNION ALL, each materialised once.
    t0, c0 = time.time(), cpu()
    con.execute("DROP TABLE event_stats")
    con.execute(f"CREATE TEMP TABLE event_stats AS {feature}")
    done, members = set(), 0
    while len(done) < len(segs):
        layer = [s for s in segs if s not in done and all(x in done for x in deps[s])]
        union = " UNION ALL ".join(
            f"SELECT DISTINCT '{s}' AS segment, profile_id FROM ({segs[s]})" for s in layer
        )
        con.execute(f"CREATE TEMP TABLE layer_{len(done)} AS SELECT * FROM ({union}) WHERE profile_id IN (SELECT profile_id FROM profiles)")
        for s in layer:
            con.execute(f"CREATE TEMP TABLE {s} AS SELECT profile_id FROM layer_{len(done)} WHERE segment = '{s}'")
        members += con.execute(f"SELECT count(*) FROM layer_{len(done)}").fetchone()[0]
        done.update(layer)
    report(f"peer/duckdb-together/{people}", t0, c0, segments=len(segs), members=members)
    for s in segs:
        con.execute(f"DROP TABLE {s}")
    con.execute("DROP TABLE event_stats")

    if "--skip-one-by-one" in sys.argv:
        return
    # One by one: each segment alone, what it reads inlined.
    t0, c0 = time.time(), cpu()
    members = 0
    for s in segs:
        order, seen = [], set()

        def visit(x):
            if x in seen:
                return
            seen.add(x)
            for y in deps[x]:
                visit(y)
            order.append(x)

        visit(s)
        ctes = [f"event_stats AS ({feature})"] + [f"{x} AS ({segs[x]})" for x in order[:-1]]
        q = f"WITH {', '.join(ctes)} SELECT count(DISTINCT profile_id) FROM ({segs[s]}) WHERE profile_id IN (SELECT profile_id FROM profiles)"
        members += con.execute(q).fetchone()[0]
    report(f"peer/duckdb-one-by-one/{people}", t0, c0, segments=len(segs), members=members)


if __name__ == "__main__":
    main(sys.argv[1])
