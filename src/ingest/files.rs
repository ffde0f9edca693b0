//! A dataset's table: exactly the Parquet files ingest listed and validated,
//! each with its Hive partition values, read without listing anything again.
//!
//! DataFusion's `ListingTable` would list the dataset's folder again (and
//! read `.parquet` files in `_temporary/` folders that the listing skips), or,
//! given each file as a URL, ask the store for every file at every scan. Its
//! partition pruning also looks for a filtered value's folder under the
//! unescaped name, so it misses folders that Spark escapes
//! (`source=web%3Ashop` for `web:shop`). Here the files and their values are
//! fixed when the dataset is ingested: a scan keeps the files whose values
//! pass the filters on partition columns, and reads them with DataFusion's
//! Parquet source. Each file carries the statistics of its footer (read once
//! by ingest) and exact ones for its partition values, so DataFusion can
//! skip files and single-valued columns as with its own tables.
//!
//! The table travels to a Ballista scheduler through our codec
//! (`engine::cluster`) as its `FilesSpec`, without the statistics.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::stats::Precision;
use datafusion::common::{ColumnStatistics, DFSchema, ScalarValue, Statistics};
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{PartitionedFile, helpers};
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder};
use datafusion::datasource::table_schema::TableSchema;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use object_store::ObjectMeta;

/// The folder value Hive and Spark write for a NULL partition value
/// (`key=__HIVE_DEFAULT_PARTITION__`).
pub const HIVE_NULL: &str = "__HIVE_DEFAULT_PARTITION__";

/// Exactly these Parquet files of one store, with their partition values
/// (string columns after the files' own; [`HIVE_NULL`] is NULL).
#[derive(Debug, Clone)]
pub struct ExactFiles {
    store: ObjectStoreUrl,
    file_schema: SchemaRef,
    partitions: Vec<FieldRef>,
    schema: SchemaRef,
    files: Vec<ExactFile>,
}

/// One file of an [`ExactFiles`] table.
#[derive(Debug, Clone)]
pub struct ExactFile {
    pub meta: ObjectMeta,
    /// One per partition column.
    pub values: Vec<String>,
    /// Of the file's own columns, when known.
    pub stats: Option<Arc<Statistics>>,
}

/// What an [`ExactFiles`] table is, serialisable (its schema travels beside it).
#[cfg(feature = "distributed")]
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct FilesSpec {
    pub store: String,
    pub partitions: Vec<String>,
    pub files: Vec<FileSpec>,
}

/// One file of a [`FilesSpec`].
#[cfg(feature = "distributed")]
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct FileSpec {
    /// The object's path in the store, as listed.
    pub path: String,
    pub size: u64,
    pub last_modified: chrono::DateTime<chrono::Utc>,
    pub e_tag: Option<String>,
    pub version: Option<String>,
    pub values: Vec<String>,
}

impl ExactFiles {
    /// The table of `files` in the store at `store` (`file:///`,
    /// `s3://bucket/`), whose columns are `file_schema`'s then one string
    /// column per name in `partitions` (each file gives one value for each).
    ///
    /// # Errors
    /// When `store` is not a store URL, or a file has not one value per
    /// partition column.
    pub fn new(
        store: &str,
        file_schema: SchemaRef,
        partitions: &[String],
        files: Vec<ExactFile>,
    ) -> DfResult<Self> {
        if let Some(f) = files.iter().find(|f| f.values.len() != partitions.len()) {
            return Err(DataFusionError::Internal(format!(
                "{}: {} partition columns expected",
                f.meta.location,
                partitions.len()
            )));
        }
        let partitions: Vec<FieldRef> = partitions
            .iter()
            .map(|p| Arc::new(Field::new(p, DataType::Utf8, true)))
            .collect();
        let mut fields: Vec<FieldRef> = file_schema.fields().iter().cloned().collect();
        fields.extend(partitions.iter().cloned());
        Ok(ExactFiles {
            store: ObjectStoreUrl::parse(store)?,
            file_schema,
            partitions,
            schema: Arc::new(Schema::new(fields)),
            files,
        })
    }

    #[cfg(feature = "distributed")]
    pub fn spec(&self) -> FilesSpec {
        FilesSpec {
            store: self.store.as_str().to_string(),
            partitions: self.partitions.iter().map(|f| f.name().clone()).collect(),
            files: self
                .files
                .iter()
                .map(|f| FileSpec {
                    path: f.meta.location.to_string(),
                    size: f.meta.size,
                    last_modified: f.meta.last_modified,
                    e_tag: f.meta.e_tag.clone(),
                    version: f.meta.version.clone(),
                    values: f.values.clone(),
                })
                .collect(),
        }
    }

    /// The table a [`FilesSpec`] describes, whose columns are `schema`'s.
    ///
    /// # Errors
    /// When the spec does not fit `schema` or names an unusable path.
    #[cfg(feature = "distributed")]
    pub fn from_spec(spec: FilesSpec, schema: &SchemaRef) -> DfResult<Self> {
        let own = schema
            .fields()
            .len()
            .checked_sub(spec.partitions.len())
            .ok_or_else(|| DataFusionError::Internal("dataset table: bad schema".into()))?;
        let file_schema = Arc::new(Schema::new(schema.fields()[..own].to_vec()));
        let files = spec
            .files
            .into_iter()
            .map(|f| {
                let location = object_store::path::Path::parse(&f.path)
                    .map_err(|e| DataFusionError::External(Box::new(e)))?;
                let meta = ObjectMeta {
                    location,
                    last_modified: f.last_modified,
                    size: f.size,
                    e_tag: f.e_tag,
                    version: f.version,
                };
                Ok(ExactFile {
                    meta,
                    values: f.values,
                    stats: None,
                })
            })
            .collect::<DfResult<_>>()?;
        ExactFiles::new(&spec.store, file_schema, &spec.partitions, files)
    }

    /// Whether `filter` reads partition columns only: it then chooses files.
    fn on_partitions(&self, filter: &Expr) -> bool {
        let names: Vec<&str> = self.partitions.iter().map(|f| f.name().as_str()).collect();
        !names.is_empty() && helpers::expr_applicable_for_cols(&names, filter)
    }
}

#[async_trait]
impl TableProvider for ExactFiles {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// Filters on partition columns alone are applied exactly, by choosing
    /// files; the others are left to DataFusion.
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| {
                if self.on_partitions(f) {
                    TableProviderFilterPushDown::Exact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let on_partitions: Vec<Expr> = filters
            .iter()
            .filter(|f| self.on_partitions(f))
            .cloned()
            .collect();
        let values_schema = DFSchema::try_from(Schema::new(self.partitions.clone()))?;
        let mut files = Vec::with_capacity(self.files.len());
        for f in &self.files {
            let mut file = PartitionedFile::from(f.meta.clone());
            file.partition_values = f
                .values
                .iter()
                .map(|v| ScalarValue::Utf8((v != HIVE_NULL).then(|| v.clone())))
                .collect();
            file.statistics = f
                .stats
                .as_ref()
                .map(|s| Arc::new(with_values(s, &file.partition_values)));
            if let Some(file) =
                helpers::filter_partitioned_file(file, &on_partitions, &values_schema)?
            {
                files.push(file);
            }
        }
        if files.is_empty() {
            let schema = match projection {
                Some(p) => Arc::new(self.schema.project(p)?),
                None => self.schema.clone(),
            };
            return Ok(Arc::new(EmptyExec::new(schema)));
        }
        let known: Option<Vec<&Statistics>> =
            files.iter().map(|f| f.statistics.as_deref()).collect();
        let stats = match known {
            Some(all) => Statistics::try_merge_iter(all, &self.schema)?,
            None => Statistics::new_unknown(&self.schema),
        };
        let groups = FileGroup::new(files).split_files(state.config().target_partitions());
        let format = ParquetFormat::default();
        let source = format.file_source(
            TableSchema::builder(self.file_schema.clone())
                .with_table_partition_cols(self.partitions.clone())
                .build(),
        );
        let config = FileScanConfigBuilder::new(self.store.clone(), source)
            .with_file_groups(groups)
            .with_statistics(stats)
            .with_projection_indices(projection.cloned())?
            .with_limit(limit)
            .build();
        format.create_physical_plan(state, config).await
    }
}

/// A file's statistics (of its own columns) with those of its partition
/// columns: every row holds the folder's value, or is NULL for
/// [`HIVE_NULL`] (DataFusion's `PartitionedFile::with_statistics` would say
/// no row is NULL).
fn with_values(file: &Statistics, values: &[ScalarValue]) -> Statistics {
    let mut stats = file.clone();
    for v in values {
        let rows = stats.num_rows;
        stats.column_statistics.push(if v.is_null() {
            ColumnStatistics {
                null_count: rows,
                distinct_count: Precision::Exact(0),
                ..ColumnStatistics::new_unknown()
            }
        } else {
            ColumnStatistics {
                null_count: Precision::Exact(0),
                min_value: Precision::Exact(v.clone()),
                max_value: Precision::Exact(v.clone()),
                distinct_count: Precision::Exact(1),
                ..ColumnStatistics::new_unknown()
            }
        });
    }
    stats
}
