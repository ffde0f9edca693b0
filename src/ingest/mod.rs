//! Stage 1: ingest. Datasets → validated tables registered on the session.
//!
//! Consumes the validated [`Project`]; lists every dataset's Parquet files,
//! reads each file's schema and checks it against the declaration before any
//! row is read or anything written. Produces one [`Ingested`] per dataset,
//! registered on the session as `__ds_<name>` over exactly the listed files.
//!
//! Invariants: every declared column exists in every file with an accepted
//! type; no column changes type between files; a dataset with no files is an
//! error, not an empty table.

pub mod files;

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::prelude::SessionContext;
use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectMeta, ObjectStoreExt as _};

use crate::config::{Class, Dataset, DatasetKind, Project};
use crate::error::{Error, Result};

/// One input file, as recorded in the run record.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InputFile {
    pub path: String,
    pub size: u64,
    pub last_modified: String,
    pub etag: Option<String>,
}

/// A dataset after ingest.
#[derive(Debug, Clone)]
pub struct Ingested {
    pub dataset: Dataset,
    /// Name of the registered table.
    pub table: String,
    pub schema: SchemaRef,
    pub files: Vec<InputFile>,
    /// Attribute columns (profile datasets) or property columns (event datasets).
    pub columns: Vec<(String, DataType)>,
}

/// Whether a column's type is accepted for its role.
type TypeCheck = fn(&DataType) -> bool;

fn is_string(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

fn is_identity_type(t: &DataType) -> bool {
    is_string(t) || t.is_integer()
}

fn is_timestamp_type(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Timestamp(..) | DataType::Date32 | DataType::Date64
    )
}

/// The table name a dataset is registered under.
pub fn table_name(dataset: &str) -> String {
    format!("__ds_{dataset}")
}

/// Ingest every dataset of `project`.
///
/// # Errors
/// [`Error::Input`] naming dataset, file and column for a missing path, a
/// missing column, a column of the wrong type, or a type that drifts between files.
pub async fn ingest(ctx: &SessionContext, project: &Project) -> Result<Vec<Ingested>> {
    let mut out = Vec::with_capacity(project.datasets.len());
    for ds in &project.datasets {
        out.push(ingest_one(ctx, ds).await?);
    }
    check_attribute_types(&out)?;
    Ok(out)
}

/// The dataset's Parquet files, sorted: the file its path names; every
/// `.parquet` (or `.parq`) file below a folder, at any depth; or every file
/// below the folder before the first wildcard that matches the pattern
/// (DataFusion's rules: `*` also crosses `/`, and `key=value` folders are
/// left out of the match). Names starting with `.` or `_` are skipped, and so
/// is everything in folders named that way (`_temporary/`, `.spark-staging/`).
async fn list_files(
    ctx: &SessionContext,
    ds: &Dataset,
) -> Result<(ListingTableUrl, Vec<ObjectMeta>)> {
    let url = match ds.location.glob() {
        None => ListingTableUrl::parse(ds.location.url().as_str()),
        Some((folder, pattern)) => {
            ListingTableUrl::parse(folder.url().as_str()).and_then(|u| u.with_glob(&pattern))
        }
    }
    .map_err(|e| {
        Error::input(
            &ds.name,
            None,
            None,
            format!("path `{}` is not usable: {e}", ds.path),
        )
    })?;
    let store = ctx
        .runtime_env()
        .object_store(url.object_store())
        .map_err(Error::engine("ingest"))?;
    let cannot_list = |e: object_store::Error| {
        Error::input(
            &ds.name,
            None,
            None,
            format!(
                "cannot list `{}`: {e}; check datasets.{}.path and that this process may read it (credentials come from the environment: AWS_*, GOOGLE_*, AZURE_*, or the provider chain)",
                ds.location, ds.name
            ),
        )
    };
    let prefix = url.prefix();
    let single = url.get_glob().is_none() && !url.is_collection();
    let head = if single {
        match store.head(prefix).await {
            Ok(m) => Some(m),
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => return Err(cannot_list(e)),
        }
    } else {
        None
    };
    let mut files: Vec<ObjectMeta> = match head {
        Some(m) => vec![m],
        // A folder (named with or without its trailing `/`) or a pattern.
        None => store
            .list(Some(prefix))
            .try_filter(|m| {
                let below = below(prefix, m).unwrap_or_default();
                let hidden = below
                    .iter()
                    .any(|p| p.starts_with('.') || p.starts_with('_'));
                let keep = !hidden
                    && match url.get_glob() {
                        Some(_) => url.contains(&m.location, false),
                        None => below.last().is_some_and(|name| {
                            name.ends_with(".parquet") || name.ends_with(".parq")
                        }),
                    };
                std::future::ready(keep)
            })
            .try_collect()
            .await
            .or_else(|e| match e {
                object_store::Error::NotFound { .. } => Ok(Vec::new()),
                e => Err(cannot_list(e)),
            })?,
    };
    files.sort_by(|a, b| a.location.cmp(&b.location));
    if files.is_empty() {
        return Err(Error::input(
            &ds.name,
            None,
            None,
            format!(
                "no Parquet files at `{}` (path `{}`): check datasets.{}.path and that the files exist and end in .parquet",
                ds.location, ds.path, ds.name
            ),
        ));
    }
    Ok((url, files))
}

async fn ingest_one(ctx: &SessionContext, ds: &Dataset) -> Result<Ingested> {
    let (url, files) = list_files(ctx, ds).await?;
    let store = ctx
        .runtime_env()
        .object_store(url.object_store())
        .map_err(Error::engine("ingest"))?;
    let format = ParquetFormat::default();
    let state = ctx.state();
    let store_prefix = url.object_store().as_str().to_string();
    let file_url = |m: &ObjectMeta| format!("{store_prefix}{}", m.location);
    let schemas: Vec<SchemaRef> = futures::stream::iter(files.iter())
        .map(|m| {
            let (format, state, store) = (&format, &state, &store);
            async move {
                format
                    .infer_schema(state as &dyn Session, store, std::slice::from_ref(m))
                    .await
                    .map_err(|e| {
                        Error::input(
                            &ds.name,
                            Some(&file_url(m)),
                            None,
                            format!("cannot read the Parquet schema: {e}"),
                        )
                    })
            }
        })
        .buffered(8)
        .try_collect()
        .await?;

    // Declared columns, in every file, with accepted types.
    let mut declared: Vec<(&str, &str, TypeCheck)> = ds
        .identities
        .iter()
        .map(|(c, _)| {
            (
                c.as_str(),
                "a string or integer identity",
                is_identity_type as TypeCheck,
            )
        })
        .collect();
    declared.push((
        ds.timestamp.as_str(),
        "a timestamp or date",
        is_timestamp_type,
    ));
    if let Some(et) = &ds.event_type {
        declared.push((et.as_str(), "a string event type", is_string));
    }
    if let Some(attrs) = &ds.attributes {
        for a in attrs {
            declared.push((a.as_str(), "any type", |_| true));
        }
    }
    let partitions = partition_columns(ds, &url, &files, &file_url)?;
    let first = &schemas[0];
    for (meta, schema) in files.iter().zip(&schemas) {
        let file = file_url(meta);
        for (col, expected, ok) in &declared {
            let partition = partitions
                .iter()
                .any(|p| p == col)
                .then(|| Arc::new(Field::new(*col, DataType::Utf8, true)));
            match schema
                .field_with_name(col)
                .map(|f| Arc::new(f.clone()))
                .or(partition.ok_or(()))
            {
                Err(_) => {
                    let names: Vec<&str> =
                        schema.fields().iter().map(|f| f.name().as_str()).collect();
                    return Err(Error::input(
                        &ds.name,
                        Some(&file),
                        Some(col),
                        format!(
                            "column not found: {}",
                            crate::error::one_of(col, names.iter().copied())
                                .replace("valid values", "the file's columns")
                        ),
                    ));
                }
                Ok(f) if !ok(f.data_type()) => {
                    return Err(Error::input(
                        &ds.name,
                        Some(&file),
                        Some(col),
                        format!("has type {}, but {expected} is expected", f.data_type()),
                    ));
                }
                Ok(_) => {}
            }
        }
        // Drift: every column has one type, and the same columns, in every file.
        for f in schema.fields() {
            match first.field_with_name(f.name()) {
                Ok(g) if g.data_type() != f.data_type() => {
                    return Err(Error::input(
                        &ds.name,
                        Some(&file),
                        Some(f.name()),
                        format!(
                            "schema drift: type {} here but {} in `{}`; rewrite the files with one type",
                            f.data_type(),
                            g.data_type(),
                            file_url(&files[0])
                        ),
                    ));
                }
                Err(_) => {
                    return Err(Error::input(
                        &ds.name,
                        Some(&file),
                        Some(f.name()),
                        format!(
                            "schema drift: column is missing from `{}`",
                            file_url(&files[0])
                        ),
                    ));
                }
                Ok(_) => {}
            }
        }
        if schema.fields().len() != first.fields().len() {
            let missing = first
                .fields()
                .iter()
                .find(|g| schema.field_with_name(g.name()).is_err())
                .map(|g| g.name().clone())
                .unwrap_or_default();
            return Err(Error::input(
                &ds.name,
                Some(&file),
                Some(&missing),
                format!(
                    "schema drift: column is present in `{}` but not here",
                    file_url(&files[0])
                ),
            ));
        }
    }

    let file_schema: SchemaRef = Arc::new(Schema::new(first.fields().clone()));
    let mut all_fields: Vec<Field> = first.fields().iter().map(|f| f.as_ref().clone()).collect();
    all_fields.extend(
        partitions
            .iter()
            .map(|p| Field::new(p, DataType::Utf8, true)),
    );
    let schema: SchemaRef = Arc::new(Schema::new(all_fields));
    let is_special = |name: &str| {
        ds.identities.iter().any(|(c, _)| c == name)
            || name == ds.timestamp
            || ds.event_type.as_deref() == Some(name)
    };
    let columns: Vec<(String, DataType)> = match (&ds.attributes, ds.kind) {
        (Some(attrs), _) => attrs
            .iter()
            .filter_map(|a| {
                schema
                    .field_with_name(a)
                    .ok()
                    .map(|f| (a.clone(), f.data_type().clone()))
            })
            .collect(),
        (None, _) => schema
            .fields()
            .iter()
            .filter(|f| !is_special(f.name()))
            .map(|f| (f.name().clone(), f.data_type().clone()))
            .collect(),
    };

    // Each file's statistics (row count, min/max) from its footer, which the
    // schema check above read and DataFusion keeps: no request to the store.
    let stats: Vec<_> = futures::stream::iter(files.iter())
        .map(|m| {
            let (format, state, store, schema) = (&format, &state, &store, &file_schema);
            async move {
                format
                    .infer_stats(state as &dyn Session, store, schema.clone(), m)
                    .await
                    .map(Arc::new)
                    .map_err(|e| {
                        Error::input(
                            &ds.name,
                            Some(&file_url(m)),
                            None,
                            format!("cannot read the Parquet statistics: {e}"),
                        )
                    })
            }
        })
        .buffered(8)
        .try_collect()
        .await?;
    // Exactly the files validated above (and recorded in the run record),
    // with their partition values and statistics.
    let exact: Vec<files::ExactFile> = files
        .iter()
        .zip(stats)
        .map(|(m, stats)| files::ExactFile {
            meta: m.clone(),
            values: if partitions.is_empty() {
                Vec::new()
            } else {
                partition_folders(&url, m)
                    .into_iter()
                    .map(|(_, v)| v)
                    .collect()
            },
            stats: Some(stats),
        })
        .collect();
    let table: Arc<dyn TableProvider> = Arc::new(
        files::ExactFiles::new(&store_prefix, file_schema.clone(), &partitions, exact)
            .map_err(Error::engine("ingest"))?,
    );
    let name = table_name(&ds.name);
    let columns = if ds.rename.is_empty() {
        ctx.register_table(name.as_str(), table)
            .map_err(Error::engine("ingest"))?;
        columns
    } else {
        // Renamed columns: the dataset's table is a view with the attribute names.
        for (column, attr) in &ds.rename {
            if !columns.iter().any(|(c, _)| c == column) {
                return Err(Error::input(
                    &ds.name,
                    None,
                    Some(column),
                    format!(
                        "`rename.{column}` names no attribute or property column: {}",
                        crate::error::one_of(column, columns.iter().map(|(c, _)| c.as_str()))
                    ),
                ));
            }
            if columns.iter().any(|(c, _)| c == attr) && !ds.rename.iter().any(|(c, _)| c == attr) {
                return Err(Error::input(
                    &ds.name,
                    None,
                    Some(column),
                    format!(
                        "renamed to `{attr}`, which is already a column of this dataset; rename that one too or pick another name"
                    ),
                ));
            }
        }
        let raw = format!("__raw_{}", ds.name);
        ctx.register_table(raw.as_str(), table)
            .map_err(Error::engine("ingest"))?;
        let exprs: Vec<datafusion::logical_expr::Expr> = schema
            .fields()
            .iter()
            .map(|f| {
                let attr = ds.attribute_name(f.name());
                datafusion::logical_expr::ident(f.name()).alias(attr)
            })
            .collect();
        let view = ctx
            .table(raw.as_str())
            .await
            .and_then(|t| t.select(exprs))
            .map_err(Error::engine("ingest"))?
            .into_view();
        ctx.register_table(name.as_str(), view)
            .map_err(Error::engine("ingest"))?;
        columns
            .into_iter()
            .map(|(c, t)| (ds.attribute_name(&c).to_string(), t))
            .collect()
    };

    let files = files
        .iter()
        .map(|m| InputFile {
            path: file_url(m),
            size: m.size,
            last_modified: m.last_modified.to_rfc3339(),
            etag: m.e_tag.clone(),
        })
        .collect();
    Ok(Ingested {
        dataset: ds.clone(),
        table: name,
        schema,
        files,
        columns,
    })
}

/// The path segments of `m` below `prefix` (its folders, then its name).
fn below(prefix: &object_store::path::Path, m: &ObjectMeta) -> Option<Vec<String>> {
    m.location
        .prefix_match(prefix)
        .map(|parts| parts.map(|p| p.as_ref().to_string()).collect())
        .filter(|parts: &Vec<String>| !parts.is_empty())
}

/// A file's `key=value` folders below the dataset path, in order: keys, and
/// values with Hive's escapes decoded (as DataFusion decodes them).
fn partition_folders(url: &ListingTableUrl, m: &ObjectMeta) -> Vec<(String, String)> {
    let parts = below(url.prefix(), m).unwrap_or_default();
    let dirs = &parts[..parts.len().saturating_sub(1)];
    dirs.iter()
        .filter_map(|d| d.split_once('='))
        .map(|(k, v)| (k.to_string(), percent_decoded(v).into_owned()))
        .collect()
}

/// `s` percent-decoded once (kept as it is when that is not UTF-8).
fn percent_decoded(s: &str) -> std::borrow::Cow<'_, str> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .unwrap_or(std::borrow::Cow::Borrowed(s))
}

/// Hive-style partition columns (`key=value` folders below the dataset path), the
/// same keys in the same order for every file; empty when the files are not partitioned.
fn partition_columns(
    ds: &Dataset,
    url: &ListingTableUrl,
    files: &[ObjectMeta],
    file_url: &dyn Fn(&ObjectMeta) -> String,
) -> Result<Vec<String>> {
    let keys_of = |m: &ObjectMeta| -> Vec<String> {
        partition_folders(url, m)
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    };
    let first = keys_of(&files[0]);
    for m in &files[1..] {
        let keys = keys_of(m);
        if keys != first {
            return Err(Error::input(
                &ds.name,
                Some(&file_url(m)),
                None,
                format!(
                    "partition folders ({}) differ from `{}` ({}); every file needs the same `key=value` folders",
                    keys.join("/"),
                    file_url(&files[0]),
                    first.join("/")
                ),
            ));
        }
    }
    Ok(first)
}

/// An attribute (or property) name has one type across the datasets of a class.
fn check_attribute_types(datasets: &[Ingested]) -> Result<()> {
    for a in datasets {
        for b in datasets {
            if a.dataset.name >= b.dataset.name
                || a.dataset.class != b.dataset.class
                || a.dataset.kind != b.dataset.kind
            {
                continue;
            }
            for (name, ta) in &a.columns {
                if let Some((_, tb)) = b.columns.iter().find(|(n, _)| n == name)
                    && !same_logical_type(ta, tb)
                {
                    let column = b
                        .dataset
                        .rename
                        .iter()
                        .find(|(_, t)| t == name)
                        .map_or(name.as_str(), |(c, _)| c.as_str());
                    return Err(Error::input(
                        &b.dataset.name,
                        None,
                        Some(column),
                        format!(
                            "feeds attribute `{name}` with type {tb}, but dataset `{}` feeds it with {ta}; an attribute must have one type across datasets (cast one of them, or rename it)",
                            a.dataset.name
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Types that differ only in string representation count as the same.
fn same_logical_type(a: &DataType, b: &DataType) -> bool {
    a == b || (is_string(a) && is_string(b))
}

/// The unified attributes of a class: name and type, sorted by name.
pub fn class_columns(
    datasets: &[Ingested],
    class: Class,
    kind: DatasetKind,
) -> Vec<(String, DataType)> {
    let mut cols: Vec<(String, DataType)> = Vec::new();
    for d in datasets
        .iter()
        .filter(|d| d.dataset.class == class && d.dataset.kind == kind)
    {
        for (n, t) in &d.columns {
            if !cols.iter().any(|(m, _)| m == n) {
                let t = if is_string(t) {
                    DataType::Utf8
                } else {
                    t.clone()
                };
                cols.push((n.clone(), t));
            }
        }
    }
    cols.sort_by(|a, b| a.0.cmp(&b.0));
    cols
}
