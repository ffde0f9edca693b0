//! The raw `audience.toml`, as written by users. Field doc comments are the
//! configuration reference (`docs/config.md` repeats them with examples).
//!
//! Raw values are validated into [`crate::config::Project`] by
//! [`crate::config::Project::load`], which reports every problem together.

use std::collections::BTreeMap;

use serde::Deserialize;

/// `[project]`: where the project's SQL and state live.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawProjectSection {
    /// A name for the project, shown in run records and manifests. Default: the folder name.
    pub name: Option<String>,
    /// Folder of segment SQL files, one audience per file, relative to the project. Default `sql/segments`.
    pub segments: Option<String>,
    /// Folder of feature SQL files, relative to the project. Default `sql/features`.
    pub features: Option<String>,
    /// State location: run records, identity maps, memberships. A folder relative to
    /// the project, an absolute path, or a bucket URL. Default `state`.
    pub state: Option<String>,
}

/// `[engine]`: how the embedded engine runs.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawEngine {
    /// Memory limit for query execution, e.g. `"8GiB"` or `"512MiB"`. Beyond it,
    /// sorts and aggregations spill to local disk. Default: no limit.
    pub memory_limit: Option<String>,
    /// Parallelism (partitions per scan and shuffle). Default: the number of cores.
    pub target_partitions: Option<usize>,
    /// Retries of a failed storage write (transient errors only), with
    /// exponential backoff from 100 ms. Default 5.
    pub storage_retries: Option<usize>,
    /// `"embedded"` (default) or `"ballista"`: where queries run.
    pub mode: Option<String>,
    /// Ballista only: the scheduler, `df://host:port`. Without it, an
    /// in-process cluster (scheduler and executor in this process) is started.
    pub scheduler: Option<String>,
}

/// How an identity namespace normalises its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NormaliserKind {
    /// Trim, lower-case; reject without exactly one `@`, an empty local part, or a domain without a dot.
    Email,
    /// E.164 via libphonenumber, with `default_region` for national numbers.
    Phone,
    /// Trim.
    Id,
    /// A SQL expression over `value` (e.g. `regexp_replace(upper(value), '[^A-Z0-9]', '')`),
    /// then trim; a NULL result rejects the value as invalid.
    Sql,
}

/// `[namespaces.<name>]`: an identity namespace.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNamespace {
    /// Normaliser: `email`, `phone`, `id` or `sql`.
    pub normaliser: NormaliserKind,
    /// For `normaliser = "sql"`: the expression, reading the raw value as `value`.
    pub expression: Option<String>,
    /// Priority, 1 is highest. A record's anchor is its highest-priority identity
    /// (person ids such as crm_id outrank e-mail and phone, which outrank cookies).
    pub priority: u32,
    /// Region for phone numbers written without a country code (ISO 3166 code, e.g. `GB`, `US`). Phone only.
    pub default_region: Option<String>,
    /// Extra blocked values (compared after trimming, and lower-casing for e-mail), beside the built-in ones.
    #[serde(default)]
    pub blocked: Vec<String>,
    /// Regular expressions; a value matching any is blocked (matched after trimming, and lower-casing for e-mail).
    #[serde(default)]
    pub blocked_patterns: Vec<String>,
    /// A unified profile holds at most one value of this namespace (e.g. one crm_id).
    /// Links that would join two values are cut, newest links first.
    #[serde(default)]
    pub unique: bool,
    /// An identity directly linked to more than this many distinct identities is
    /// quarantined (a shared device, a call-centre e-mail): none of its links is used.
    pub max_links: Option<u64>,
    /// Values exempt from hub quarantine (as written; normalised like any value).
    #[serde(default)]
    pub allow: Vec<String>,
}

/// `[identity]`: graph-wide identity rules.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    /// A profile with more identities than this is flagged oversized, excluded
    /// from exports and reported. Default: no cap.
    pub max_identities: Option<u64>,
    /// Never-link rules, applied to all history on every run.
    #[serde(default)]
    pub never_link: Vec<RawNeverLink>,
}

/// `[[identity.never_link]]`: `a` and `b` never end up in one profile; with no
/// `b`, `a` is never linked to anything. Identities are written `namespace:value`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNeverLink {
    pub a: String,
    pub b: Option<String>,
}

/// The kind of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatasetKind {
    /// One row is one record about one person from one source.
    Profile,
    /// One row is one event (page view, purchase, e-mail open).
    Event,
}

/// The class of a dataset, merge policy or segment.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Default, serde::Serialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// Customers: stitched together across every customer dataset.
    #[default]
    Customer,
    /// Prospects: never stitched with customers; own profiles, segments and exports.
    Prospect,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Customer => "customer",
            Class::Prospect => "prospect",
        }
    }
}

/// `[datasets.<name>]`: a Parquet dataset.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDataset {
    /// `profile` or `event`.
    pub kind: DatasetKind,
    /// `customer` (default) or `prospect`.
    #[serde(default)]
    pub class: Class,
    /// Parquet file, folder (read recursively) or glob; a path relative to the
    /// project, an absolute path, or an `s3://`, `gs://`, `az://` URL.
    pub path: String,
    /// Timestamp column: for profiles, when the source last updated the record; for events, the event time.
    pub timestamp: String,
    /// Event type column. Event datasets only, and required there.
    pub event_type: Option<String>,
    /// Identity columns: `column = "namespace"`.
    pub identities: std::collections::BTreeMap<String, String>,
    /// Attribute columns (profile datasets). Default: every column that is not an identity or the timestamp.
    pub attributes: Option<Vec<String>>,
    /// Attribute (or event property) names for columns named otherwise: `column = "attribute"`.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
}

/// How a merge policy picks each attribute's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MergeMethod {
    /// The most recent non-null value wins.
    #[default]
    Timestamp,
    /// The first dataset in `precedence` with a non-null value wins; within a dataset, the most recent.
    Precedence,
}

/// `[merge_policies.<name>]`: how unified profiles are resolved.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMergePolicy {
    /// `customer` (default) or `prospect`.
    #[serde(default)]
    pub class: Class,
    /// Whether this is the default policy of its class (exactly one per class that has datasets).
    #[serde(default)]
    pub default: bool,
    /// `timestamp` (default) or `precedence`.
    #[serde(default)]
    pub method: MergeMethod,
    /// Ordered dataset names for `method = "precedence"`. Datasets not listed are not considered.
    #[serde(default)]
    pub precedence: Vec<String>,
    /// Per-attribute rules overriding the method: `attr = "rule"` or
    /// `attr = { rule = "precedence", precedence = [...] }`.
    #[serde(default)]
    pub attributes: BTreeMap<String, toml::Value>,
    /// Field groups: `name = ["field", ...]`, taken together from one winning record.
    #[serde(default)]
    pub groups: BTreeMap<String, Vec<String>>,
    /// Attributes (or `true` for all that support it) that carry `<attr>__source`
    /// and `<attr>__updated_at`.
    #[serde(default)]
    pub provenance: Option<toml::Value>,
    /// `graph` (default): profiles are the identity graph's; `none`: each record
    /// belongs to the profile keyed by its highest-priority identity.
    #[serde(default)]
    pub stitching: Stitching,
}

/// Whether a merge policy uses the identity graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Stitching {
    #[default]
    Graph,
    None,
}

/// How one attribute is resolved, overriding the policy's method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttributeRule {
    MostRecent,
    LeastRecent,
    Precedence,
    MostFrequent,
    Min,
    Max,
    Collect,
}

/// `attributes.<attr> = { rule = ..., precedence = [...] }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAttributeRule {
    pub rule: AttributeRule,
    #[serde(default)]
    pub precedence: Vec<String>,
}
