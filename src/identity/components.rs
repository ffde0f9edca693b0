//! Connected components as iterative SQL rounds, for engines where no single
//! process sees the whole graph (the Ballista cluster).
//!
//! The algorithm is large-star / small-star (Kiveris, Lattanzi, Mirrokni,
//! Rastogi and Vassilvitskii, "Connected Components in MapReduce and Beyond",
//! SoCC 2014), as GraphFrames runs it. Edges are kept oriented `src > dst`.
//!
//! * **Large-star**: for every node `u` with neighbourhood `N(u)`, let
//!   `m = min(N(u) ∪ {u})`; each neighbour `v > u` is linked to `m` instead.
//! * **Small-star**: for every node `u` with smaller neighbours `N'(u)`, let
//!   `m = min(N'(u) ∪ {u})`; every node of `N'(u) ∪ {u}` other than `m` is linked to `m`.
//!
//! Both keep the components; a pair of rounds that changes nothing leaves every
//! component a star around its smallest node. Each round is a query whose
//! result is written as Parquet under a scratch location (shared storage, read
//! by the next round), so the cluster never holds more than one round's edges
//! per node. The number of rounds grows as O(log² n) in the worst case and is
//! reported.

use std::sync::Arc;

use datafusion::arrow::array::{Array, RecordBatch, UInt32Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::engine::storage::Location;
use crate::error::{Error, Result};

/// More pairs of rounds than any graph of 2³² nodes needs: O(log² n) ≈ 1,024,
/// and far fewer in practice (about 2 log n).
const MAX_ROUNDS: u32 = 1_024;

/// Edges per Parquet file written for the first round, so that a cluster
/// reads them in parallel.
const EDGES_PER_FILE: usize = 1 << 22;

/// The result of [`components`].
#[derive(Debug, Clone)]
pub struct Components {
    /// For every node, the smallest node of its component.
    pub roots: Vec<u32>,
    /// Pairs of (large-star, small-star) rounds run, the last one confirming convergence.
    pub rounds: u32,
}

/// The connected components of nodes `0..n` joined by `edges`, computed by
/// queries on `ctx` (embedded or on a cluster), with each round's edges
/// written under `scratch` (which must be readable by every executor).
/// The scratch files are removed at the end.
///
/// # Errors
/// [`Error::Engine`] when a round fails; [`Error::Storage`] when the scratch
/// location cannot be written.
pub async fn components(
    ctx: &SessionContext,
    n: usize,
    edges: impl Iterator<Item = (u32, u32)>,
    scratch: &Location,
) -> Result<Components> {
    let store = scratch.store()?;
    crate::engine::register_store(ctx, scratch)?;
    let result = run_rounds(ctx, n, edges, scratch, store.as_ref()).await;
    // The rounds are scratch whatever happened.
    let tables = ctx
        .catalog("datafusion")
        .and_then(|c| c.schema("public"))
        .map(|s| s.table_names())
        .unwrap_or_default();
    for t in tables.iter().filter(|t| t.starts_with("__cc_")) {
        let _ = ctx.deregister_table(t.as_str());
    }
    if let Ok(found) = store
        .list(Some(&scratch.path()))
        .try_collect::<Vec<_>>()
        .await
    {
        for m in found {
            let _ = store.delete(&m.location).await;
        }
    }
    result
}

fn edge_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("src", DataType::UInt32, true),
        Field::new("dst", DataType::UInt32, true),
    ]))
}

async fn run_rounds(
    ctx: &SessionContext,
    n: usize,
    edges: impl Iterator<Item = (u32, u32)>,
    scratch: &Location,
    store: &dyn ObjectStore,
) -> Result<Components> {
    // Round 0: the edges, oriented, as Parquet files.
    let first = scratch.join("round-0/");
    let mut written = 0usize;
    let mut file = 0usize;
    let (mut src, mut dst) = (Vec::new(), Vec::new());
    let mut edges = edges.peekable();
    while edges.peek().is_some() || file == 0 {
        src.clear();
        dst.clear();
        for (a, b) in edges.by_ref().take(EDGES_PER_FILE) {
            if a != b {
                src.push(a.max(b));
                dst.push(a.min(b));
            }
        }
        let batch = RecordBatch::try_new(
            edge_schema(),
            vec![
                Arc::new(UInt32Array::from(std::mem::take(&mut src))),
                Arc::new(UInt32Array::from(std::mem::take(&mut dst))),
            ],
        )
        .map_err(|e| Error::Internal(e.to_string()))?;
        written += batch.num_rows();
        let bytes = crate::identity::store::parquet_bytes(&[batch], &edge_schema())?;
        crate::engine::storage::put(
            store,
            &first.join(&format!("part-{file:05}.parquet")),
            bytes,
        )
        .await?;
        file += 1;
    }
    tracing::debug!(edges = written, files = file, "components: round 0 written");
    register(ctx, "__cc_0", &first).await?;

    let mut current = "__cc_0".to_string();
    let mut rounds = 0u32;
    loop {
        rounds += 1;
        if rounds > MAX_ROUNDS {
            return Err(Error::Internal(format!(
                "connected components did not converge in {MAX_ROUNDS} rounds"
            )));
        }
        let large = format!("__cc_{rounds}_large");
        materialise(ctx, &large_star(&current), scratch, &large).await?;
        let small = format!("__cc_{rounds}");
        materialise(ctx, &small_star(&large), scratch, &small).await?;
        let changed = count(
            ctx,
            &format!(
                "SELECT COUNT(*) FROM (SELECT src, dst FROM {small} EXCEPT SELECT src, dst FROM {current})"
            ),
        )
        .await?;
        let (before, after) = (
            count(ctx, &format!("SELECT COUNT(*) FROM {current}")).await?,
            count(ctx, &format!("SELECT COUNT(*) FROM {small}")).await?,
        );
        ctx.deregister_table(large.as_str())
            .map_err(Error::engine("components"))?;
        if current != "__cc_0" {
            ctx.deregister_table(current.as_str())
                .map_err(Error::engine("components"))?;
        }
        current = small;
        tracing::debug!(round = rounds, edges = after, changed, "components: round");
        if changed == 0 && before == after {
            break;
        }
    }
    // Converged: every edge is (node, smallest node of its component).
    let mut roots: Vec<u32> = (0..n as u32).collect();
    let batches = ctx
        .sql(&format!("SELECT src, dst FROM {current}"))
        .await
        .map_err(Error::engine("components"))?
        .collect()
        .await
        .map_err(Error::engine("components"))?;
    for b in &batches {
        let (s, d) = (column(b, 0)?, column(b, 1)?);
        for i in 0..b.num_rows() {
            let (s, d) = (s.value(i) as usize, d.value(i));
            let slot = roots
                .get_mut(s)
                .ok_or_else(|| Error::Internal(format!("components: node {s} out of range")))?;
            *slot = d;
        }
    }
    Ok(Components { roots, rounds })
}

fn column(b: &RecordBatch, i: usize) -> Result<&UInt32Array> {
    b.column(i)
        .as_any()
        .downcast_ref::<UInt32Array>()
        .ok_or_else(|| Error::Internal("components: edge columns are UInt32".into()))
}

/// Large-star over oriented edges `t` (`src > dst`): each node's larger
/// neighbours go to the smallest of its neighbourhood and itself.
fn large_star(t: &str) -> String {
    format!(
        "WITH nb AS (SELECT src AS u, dst AS v FROM {t} UNION ALL SELECT dst AS u, src AS v FROM {t}), \
         m AS (SELECT u, MIN(v) AS mv FROM nb GROUP BY u) \
         SELECT DISTINCT nb.v AS src, CASE WHEN m.mv < nb.u THEN m.mv ELSE nb.u END AS dst \
         FROM nb JOIN m ON nb.u = m.u WHERE nb.v > nb.u"
    )
}

/// Small-star over oriented edges `t`: each node and its smaller neighbours
/// go to the smallest of them.
fn small_star(t: &str) -> String {
    format!(
        "WITH m AS (SELECT src AS u, MIN(dst) AS mv FROM {t} GROUP BY src) \
         SELECT {t}.dst AS src, m.mv AS dst FROM {t} JOIN m ON {t}.src = m.u WHERE {t}.dst <> m.mv \
         UNION SELECT u AS src, mv AS dst FROM m"
    )
}

/// Run `sql`, write its result as Parquet under `scratch/<name>/`, and register it as `name`.
async fn materialise(
    ctx: &SessionContext,
    sql: &str,
    scratch: &Location,
    name: &str,
) -> Result<()> {
    let dir = scratch.join(&format!("{name}/"));
    ctx.sql(sql)
        .await
        .map_err(Error::engine("components"))?
        .write_parquet(dir.url().as_str(), DataFrameWriteOptions::new(), None)
        .await
        .map_err(Error::engine("components"))?;
    register(ctx, name, &dir).await
}

async fn register(ctx: &SessionContext, name: &str, dir: &Location) -> Result<()> {
    let schema = edge_schema();
    let options = ParquetReadOptions::default().schema(&schema);
    ctx.register_parquet(name, dir.url().as_str(), options)
        .await
        .map_err(Error::engine("components"))
}

async fn count(ctx: &SessionContext, sql: &str) -> Result<u64> {
    let batches = ctx
        .sql(sql)
        .await
        .map_err(Error::engine("components"))?
        .collect()
        .await
        .map_err(Error::engine("components"))?;
    let v = batches
        .first()
        .filter(|b| b.num_rows() == 1)
        .and_then(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<datafusion::arrow::array::Int64Array>()
                .map(|a| a.value(0))
        })
        .ok_or_else(|| Error::Internal("components: a count returned no row".into()))?;
    Ok(v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(n: usize, edges: &[(u32, u32)]) -> Vec<u32> {
        let mut parent: Vec<u32> = (0..n as u32).collect();
        fn find(p: &mut [u32], mut x: u32) -> u32 {
            while p[x as usize] != x {
                x = p[x as usize];
            }
            x
        }
        for &(a, b) in edges {
            let (ra, rb) = (find(&mut parent, a), find(&mut parent, b));
            // The smaller root wins, so every root is its component's minimum.
            if ra < rb {
                parent[rb as usize] = ra;
            } else {
                parent[ra as usize] = rb;
            }
        }
        (0..n as u32).map(|i| find(&mut parent, i)).collect()
    }

    async fn run(n: usize, edges: &[(u32, u32)]) -> Components {
        let dir = tempfile::tempdir().unwrap();
        let scratch = Location::parse("cc/", dir.path()).unwrap();
        let ctx = SessionContext::new();
        let got = components(&ctx, n, edges.iter().copied(), &scratch)
            .await
            .unwrap();
        fn files(d: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
                if e.path().is_dir() {
                    files(&e.path(), out);
                } else {
                    out.push(e.path());
                }
            }
        }
        let mut left = Vec::new();
        files(&dir.path().join("cc"), &mut left);
        assert!(left.is_empty(), "scratch rounds are removed: {left:?}");
        got
    }

    #[tokio::test]
    async fn sql_rounds_label_each_component_with_its_smallest_node() {
        // Two chains written backwards, a cycle, a self loop and an isolated node.
        let edges = [
            (5, 4),
            (4, 3),
            (3, 2),
            (9, 8),
            (8, 7),
            (7, 9),
            (6, 6),
            (2, 1),
        ];
        let got = run(11, &edges).await;
        assert_eq!(got.roots, vec![0, 1, 1, 1, 1, 1, 6, 7, 7, 7, 10]);
        assert!(got.rounds >= 2, "a chain needs more than one round");
        let none = run(3, &[]).await;
        assert_eq!(none.roots, vec![0, 1, 2]);
        assert_eq!(none.rounds, 1);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        #[test]
        fn sql_rounds_agree_with_union_find(
            n in 1usize..120,
            raw in proptest::collection::vec((0u32..120, 0u32..120), 0..200),
        ) {
            let edges: Vec<(u32, u32)> = raw
                .into_iter()
                .map(|(a, b)| (a % n as u32, b % n as u32))
                .collect();
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let got = rt.block_on(run(n, &edges));
            proptest::prop_assert_eq!(got.roots, reference(n, &edges));
            // Rounds stay logarithmic-ish: well under the cap on small graphs.
            proptest::prop_assert!(got.rounds <= 2 * (usize::BITS - n.leading_zeros()) + 2, "{} rounds for {n} nodes", got.rounds);
        }
    }
}
