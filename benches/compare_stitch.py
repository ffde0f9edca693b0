#!/usr/bin/env python3
"""Peers for the stitching benchmark, on the same string links.

`cargo bench --bench stitch` writes benches/data/p<N>/links_for_peers.parquet
(columns src, dst: `namespace:value` strings, one row per distinct link). This
script runs connected components on it two ways and prints one JSON line each:

* scipy: pyarrow dictionary encoding of the strings, then
  scipy.sparse.csgraph.connected_components;
* duckdb: string -> integer encoding in SQL, then label propagation with
  `WITH RECURSIVE ... USING KEY` (DuckDB >= 1.3).

Usage: python3 benches/compare_stitch.py benches/data/p1000000 [--skip-duckdb]
Needs: pip install duckdb scipy pyarrow numpy (optional; not part of the tests).
"""
import json
import resource
import sys
import time


def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def report(case, links, t0, c0, components):
    wall = time.time() - t0
    print(json.dumps({
        "case": case,
        "links": links,
        "components": int(components),
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu() - c0, 2),
        "links_per_s": round(links / wall),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }), flush=True)


def scipy_cc(path, people):
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    t0, c0 = time.time(), cpu()
    t = pq.read_table(path, columns=["src", "dst"])
    m = t.num_rows
    both = pa.chunked_array(t["src"].chunks + t["dst"].chunks)
    enc = pc.dictionary_encode(both).combine_chunks()
    n = len(enc.dictionary)
    idx = enc.indices.to_numpy(zero_copy_only=False)
    g = coo_matrix((np.ones(m, dtype=np.int8), (idx[:m], idx[m:])), shape=(n, n)).tocsr()
    k, _labels = connected_components(g, directed=False)
    report(f"peer/pyarrow+scipy/{people}", m, t0, c0, k)


def duckdb_cc(path, people):
    import duckdb

    t0, c0 = time.time(), cpu()
    con = duckdb.connect()
    con.execute("SET preserve_insertion_order = false")
    con.execute(f"CREATE TABLE links AS SELECT src, dst FROM read_parquet('{path}')")
    m = con.execute("SELECT count(*) FROM links").fetchone()[0]
    con.execute("CREATE TABLE ids AS SELECT v, row_number() OVER () AS id FROM (SELECT src AS v FROM links UNION SELECT dst FROM links)")
    con.execute("""CREATE TABLE e AS
        SELECT a.id AS s, b.id AS d FROM links JOIN ids a ON a.v = links.src JOIN ids b ON b.v = links.dst""")
    con.execute("CREATE TABLE e2 AS SELECT s, d FROM e UNION ALL SELECT d, s FROM e")
    k = con.execute("""
        WITH RECURSIVE cc(id, comp) USING KEY (id) AS (
            SELECT id, id FROM ids
            UNION
            SELECT e2.d AS id, min(cc.comp) AS comp
            FROM cc JOIN e2 ON cc.id = e2.s
            JOIN recurring.cc AS r ON r.id = e2.d
            GROUP BY e2.d
            HAVING min(cc.comp) < min(r.comp)
        )
        SELECT count(DISTINCT comp) FROM cc""").fetchone()[0]
    report(f"peer/duckdb-sql/{people}", m, t0, c0, k)


def main():
    project = sys.argv[1].rstrip("/")
    people = project.rsplit("/p", 1)[-1]
    path = f"{project}/links_for_peers.parquet"
    scipy_cc(path, people)
    if "--skip-duckdb" not in sys.argv:
        duckdb_cc(path, people)


if __name__ == "__main__":
    main()
