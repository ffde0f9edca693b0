//! Project configuration: `audience.toml` plus the SQL files, loaded and
//! validated as a whole before any data is read.
//!
//! [`Project::load`] parses the raw TOML ([`raw`]), validates every section
//! (unknown keys, wrong types, unknown dataset/namespace/segment names, SQL that
//! is not a read-only query, dependency cycles) and returns either a validated
//! [`Project`] or [`Error::Config`] listing every problem found, each with its
//! file and key path.

pub mod raw;
mod sql;
pub use sql::check_query;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

pub mod destination;
pub use destination::{
    Compression, ConsentRule, Destination, DestinationKind, FieldMap, Format, FormatKind, OnLimit,
    Source, Transform,
};
pub use raw::{AttributeRule, Class, DatasetKind, MergeMethod, NormaliserKind, Stitching};
pub use sql::{ModelKind, SqlModel};

use crate::engine::storage::Location;
use crate::error::{Error, Problems, Result, one_of};

/// The name of the project file inside a project folder.
pub const CONFIG_FILE: &str = "audience.toml";

/// Relations every segment and feature query can read, besides features and segments.
pub const BUILTIN_RELATIONS: [&str; 3] = ["profiles", "events", "identities"];

/// A validated identity namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Namespace {
    pub name: String,
    pub normaliser: NormaliserKind,
    pub priority: u32,
    /// Region for national phone numbers (phone only).
    pub default_region: Option<String>,
    /// User-declared blocked values, trimmed (and lower-cased for e-mail).
    pub blocked: BTreeSet<String>,
    /// Blocked patterns, as written (compiled by the normaliser).
    pub blocked_patterns: Vec<String>,
    /// For the `sql` normaliser: the expression over `value`.
    pub expression: Option<String>,
    pub unique: bool,
    pub max_links: Option<u64>,
    /// Normalised values exempt from hub quarantine.
    pub allow: BTreeSet<String>,
}

/// Graph-wide identity rules (`[identity]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct IdentityRules {
    pub max_identities: Option<u64>,
    /// Normalised `(namespace, value)` pairs that never share a profile.
    pub never_link_pairs: Vec<((String, String), (String, String))>,
    /// Normalised identities never linked to anything.
    pub never_link_values: Vec<(String, String)>,
}

/// A validated dataset.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub name: String,
    pub kind: DatasetKind,
    pub class: Class,
    pub location: Location,
    /// The `path` as written in the config, for messages.
    pub path: String,
    pub timestamp: String,
    pub event_type: Option<String>,
    /// `(column, namespace)`, sorted by column.
    pub identities: Vec<(String, String)>,
    pub attributes: Option<Vec<String>>,
    /// `(column, attribute)`: columns that feed an attribute (or property) of another name.
    pub rename: Vec<(String, String)>,
}

impl Dataset {
    /// The attribute (or property) name of a column.
    pub fn attribute_name<'a>(&'a self, column: &'a str) -> &'a str {
        self.rename
            .iter()
            .find(|(c, _)| c == column)
            .map_or(column, |(_, a)| a.as_str())
    }
}

/// A validated merge policy.
#[derive(Debug, Clone)]
pub struct MergePolicy {
    pub name: String,
    pub class: Class,
    pub default: bool,
    pub method: MergeMethod,
    pub precedence: Vec<String>,
    /// Per-attribute rules overriding the method, by attribute.
    pub rules: BTreeMap<String, AttrRule>,
    /// Field groups by name: fields taken together from one winning record.
    pub groups: Vec<(String, Vec<String>)>,
    /// Which attributes carry `<attr>__source` and `<attr>__updated_at`.
    pub provenance: Provenance,
    /// `Graph`: stitched profiles; `None`: a profile per highest-priority identity of each record.
    pub stitching: Stitching,
}

/// One attribute's rule; `precedence` lists datasets for `AttributeRule::Precedence`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttrRule {
    pub rule: AttributeRule,
    pub precedence: Vec<String>,
}

/// Provenance columns of a policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Provenance {
    #[default]
    None,
    /// Every attribute whose rule picks one record.
    All,
    Some(BTreeSet<String>),
}

impl AttributeRule {
    pub fn as_str(self) -> &'static str {
        match self {
            AttributeRule::MostRecent => "most_recent",
            AttributeRule::LeastRecent => "least_recent",
            AttributeRule::Precedence => "precedence",
            AttributeRule::MostFrequent => "most_frequent",
            AttributeRule::Min => "min",
            AttributeRule::Max => "max",
            AttributeRule::Collect => "collect",
        }
    }

    /// Whether the rule picks one record (so provenance is defined).
    pub fn picks_a_record(self) -> bool {
        matches!(
            self,
            AttributeRule::MostRecent | AttributeRule::LeastRecent | AttributeRule::Precedence
        )
    }
}

impl MergePolicy {
    /// The rule of an attribute outside any group, `None` when the method decides.
    pub fn rule(&self, attr: &str) -> Option<&AttrRule> {
        self.rules.get(attr)
    }

    /// Whether `attr` (an attribute or a group field) carries provenance columns.
    pub fn has_provenance(&self, attr: &str) -> bool {
        let picks = self.rules.get(attr).is_none_or(|r| r.rule.picks_a_record());
        picks
            && match &self.provenance {
                Provenance::None => false,
                Provenance::All => true,
                Provenance::Some(s) => s.contains(attr),
            }
    }
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub memory_limit: Option<usize>,
    pub target_partitions: Option<usize>,
    /// Retries of a transient storage write failure.
    pub storage_retries: usize,
    /// Where queries run.
    pub mode: EngineMode,
}

/// Where a run's queries run (`[engine] mode`, `--engine`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum EngineMode {
    /// In this process (DataFusion).
    #[default]
    Embedded,
    /// On a Ballista cluster: the scheduler at `df://host:port`, or an
    /// in-process cluster when `None`.
    Ballista { scheduler: Option<String> },
}

impl EngineMode {
    /// Parse `mode` and `scheduler` as written in `[engine]` or on the command line.
    ///
    /// # Errors
    /// A message naming the bad value and the choices.
    pub fn parse(mode: &str, scheduler: Option<&str>) -> std::result::Result<Self, String> {
        match mode {
            "embedded" if scheduler.is_some() => {
                Err("a scheduler is only used with mode = \"ballista\"".into())
            }
            "embedded" => Ok(EngineMode::Embedded),
            "ballista" => {
                if let Some(s) = scheduler {
                    let url = url::Url::parse(s).map_err(|e| {
                        format!("scheduler `{s}` is not a URL ({e}); write df://host:port")
                    })?;
                    if url.scheme() != "df" || url.host_str().is_none_or(str::is_empty) {
                        return Err(format!("scheduler `{s}` must look like df://host:port"));
                    }
                }
                Ok(EngineMode::Ballista {
                    scheduler: scheduler.map(str::to_string),
                })
            }
            other => Err(format!(
                "unknown engine mode `{other}`: {}",
                crate::error::one_of(other, ["embedded", "ballista"])
            )),
        }
    }
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            memory_limit: None,
            target_partitions: None,
            storage_retries: 5,
            mode: EngineMode::Embedded,
        }
    }
}

impl EngineSettings {
    /// Threads for the engine's own parallel work: `target_partitions`, else the cores.
    pub fn threads(&self) -> usize {
        self.target_partitions.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
        })
    }
}

/// A validated project: everything a run needs, with no data read yet.
#[derive(Debug, Clone)]
pub struct Project {
    pub root: PathBuf,
    pub name: String,
    pub state: Location,
    pub engine: EngineSettings,
    pub identity: IdentityRules,
    /// Sorted by (priority, name): the anchor order.
    pub namespaces: Vec<Namespace>,
    /// Sorted by name.
    pub datasets: Vec<Dataset>,
    pub policies: Vec<MergePolicy>,
    pub destinations: Vec<Destination>,
    /// Data-usage labels: attribute or namespace → labels.
    pub labels: BTreeMap<String, BTreeSet<String>>,
    /// Marketing actions → labels they forbid.
    pub marketing_actions: BTreeMap<String, BTreeSet<String>>,
    /// Features and segments in dependency order (a model comes after what it reads).
    pub models: Vec<SqlModel>,
    /// SHA-256 of `audience.toml`.
    pub config_hash: String,
    /// SHA-256 over every SQL file (path and content, in path order).
    pub sql_hash: String,
}

impl Project {
    /// Load and validate the project in `dir`.
    ///
    /// # Errors
    /// [`Error::Config`] with every problem found; [`Error::Io`] when the project
    /// folder or its config file cannot be read at all.
    pub fn load(dir: &Path) -> Result<Project> {
        let root = std::path::absolute(dir).map_err(Error::io(dir.display().to_string()))?;
        let config_path = root.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&config_path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                let mut p = Problems::default();
                p.push(
                    &config_path.display().to_string(),
                    "",
                    format!("no {CONFIG_FILE} here; pass the project folder with --project DIR"),
                );
                Error::Config(p)
            } else {
                Error::io(config_path.display().to_string())(e)
            }
        })?;
        let mut problems = Problems::default();
        let project = validate(&root, &text, &mut problems);
        problems.into_result()?;
        project
            .ok_or_else(|| Error::Internal("validation returned no project and no problem".into()))
    }

    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.namespaces.iter().find(|n| n.name == name)
    }

    pub fn dataset(&self, name: &str) -> Option<&Dataset> {
        self.datasets.iter().find(|d| d.name == name)
    }

    /// The default merge policy of a class.
    pub fn default_policy(&self, class: Class) -> Option<&MergePolicy> {
        self.policies.iter().find(|p| p.class == class && p.default)
    }

    pub fn policy(&self, name: &str) -> Option<&MergePolicy> {
        self.policies.iter().find(|p| p.name == name)
    }

    pub fn segments(&self) -> impl Iterator<Item = &SqlModel> {
        self.models.iter().filter(|m| m.kind == ModelKind::Segment)
    }

    /// The classes that have at least one dataset.
    pub fn classes(&self) -> BTreeSet<Class> {
        self.datasets.iter().map(|d| d.class).collect()
    }
}

const FILE: &str = CONFIG_FILE;
const TOP_KEYS: [&str; 10] = [
    "project",
    "engine",
    "identity",
    "namespaces",
    "datasets",
    "merge_policies",
    "destinations",
    "consent",
    "labels",
    "marketing_actions",
];

/// Deserialize one value, recording a problem with its full key path on failure.
fn de<T: DeserializeOwned>(value: toml::Value, prefix: &str, problems: &mut Problems) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(v) => Some(v),
        Err(err) => {
            let inner = err.path().to_string();
            let mut path = if inner == "." {
                prefix.to_string()
            } else {
                format!("{prefix}.{inner}")
            };
            let (message, key) = explain_serde_message(&err.inner().to_string());
            // serde_path_to_error already ends the path with an unknown key; add it otherwise.
            if let Some(key) = key.filter(|k| !path.ends_with(&format!(".{k}"))) {
                path = format!("{path}.{key}");
            }
            problems.push(FILE, path, message);
            None
        }
    }
}

/// Turn serde's "unknown field `x`, expected one of `a`, `b`" into our message with
/// a suggestion; returns the unknown key to append to the path, if any.
fn explain_serde_message(msg: &str) -> (String, Option<String>) {
    let ticked: Vec<&str> = msg.split('`').skip(1).step_by(2).collect();
    for (prefix, what) in [("unknown field `", "key"), ("unknown variant `", "value")] {
        if msg.starts_with(prefix) && !ticked.is_empty() {
            let name = ticked[0];
            let valid = &ticked[1..];
            let text = format!(
                "unknown {what} `{name}`: {}",
                one_of(name, valid.iter().copied())
                    .replace("valid values", &format!("valid {what}s"))
            );
            return (text, (what == "key").then(|| name.to_string()));
        }
    }
    if let Some(rest) = msg.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or_default();
        return (format!("missing required key `{name}`"), None);
    }
    (msg.to_string(), None)
}

fn table_entries(
    top: &mut toml::Table,
    key: &str,
    problems: &mut Problems,
) -> Vec<(String, toml::Value)> {
    match top.remove(key) {
        None => Vec::new(),
        Some(toml::Value::Table(t)) => t.into_iter().collect(),
        Some(other) => {
            problems.push(
                FILE,
                key,
                format!(
                    "expected a table of named entries, found a {}",
                    other.type_str()
                ),
            );
            Vec::new()
        }
    }
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn check_identifier(name: &str, path: &str, what: &str, problems: &mut Problems) {
    if !is_identifier(name) {
        problems.push(
            FILE,
            path,
            format!("{what} name `{name}` must be lower-case letters, digits and `_`, starting with a letter or `_`"),
        );
    }
}

/// Parse `namespace:value` and normalise the value; a problem at `path` otherwise.
fn parse_identity(
    text: &str,
    path: &str,
    namespaces: &[Namespace],
    problems: &mut Problems,
) -> Option<(String, String)> {
    let Some((ns, value)) = text.split_once(':') else {
        problems.push(
            FILE,
            path,
            format!("`{text}` is not an identity: write `namespace:value`"),
        );
        return None;
    };
    let Some(namespace) = namespaces.iter().find(|n| n.name == ns) else {
        let names: Vec<&str> = namespaces.iter().map(|n| n.name.as_str()).collect();
        problems.push(
            FILE,
            path,
            format!(
                "unknown namespace `{ns}`: {}",
                one_of(ns, names.iter().copied())
            ),
        );
        return None;
    };
    match crate::identity::normalise::Normaliser::new(namespace).apply(value) {
        Ok(v) => Some((ns.to_string(), v.into_owned())),
        Err(r) => {
            problems.push(
                FILE,
                path,
                format!("`{value}` is not a valid {ns} value ({})", r.as_str()),
            );
            None
        }
    }
}

fn identity_rules(
    raw: raw::RawIdentity,
    namespaces: &[Namespace],
    problems: &mut Problems,
) -> IdentityRules {
    if raw.max_identities == Some(0) {
        problems.push(FILE, "identity.max_identities", "must be at least 1");
    }
    let mut rules = IdentityRules {
        max_identities: raw.max_identities,
        ..Default::default()
    };
    for (i, rule) in raw.never_link.iter().enumerate() {
        let a = parse_identity(
            &rule.a,
            &format!("identity.never_link[{i}].a"),
            namespaces,
            problems,
        );
        match &rule.b {
            None => rules.never_link_values.extend(a),
            Some(b) => {
                let b = parse_identity(
                    b,
                    &format!("identity.never_link[{i}].b"),
                    namespaces,
                    problems,
                );
                if let (Some(a), Some(b)) = (a, b) {
                    if a == b {
                        problems.push(
                            FILE,
                            format!("identity.never_link[{i}]"),
                            "`a` and `b` are the same identity",
                        );
                    } else {
                        rules.never_link_pairs.push((a, b));
                    }
                }
            }
        }
    }
    rules
}

/// Parse sizes like `8GiB`, `512MiB`, `1000000`.
pub fn parse_size(text: &str) -> Option<usize> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num.parse().ok()?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some((num * mult) as usize)
}

fn validate(root: &Path, text: &str, problems: &mut Problems) -> Option<Project> {
    let mut top: toml::Table = match toml::from_str(text) {
        Ok(t) => t,
        Err(e) => {
            let location = e
                .span()
                .map(|s| {
                    format!(
                        "line {}",
                        text[..s.start.min(text.len())].matches('\n').count() + 1
                    )
                })
                .unwrap_or_default();
            problems.push(
                FILE,
                location,
                format!("not valid TOML: {}", e.message().trim()),
            );
            return None;
        }
    };
    for key in top.keys() {
        if !TOP_KEYS.contains(&key.as_str()) {
            problems.push(
                FILE,
                key.as_str(),
                format!("unknown section `{key}`: {}", one_of(key, TOP_KEYS)),
            );
        }
    }

    let section: raw::RawProjectSection = top
        .remove("project")
        .and_then(|v| de(v, "project", problems))
        .unwrap_or_default();
    let engine_raw: raw::RawEngine = top
        .remove("engine")
        .and_then(|v| de(v, "engine", problems))
        .unwrap_or_default();
    let mut engine = EngineSettings {
        memory_limit: None,
        target_partitions: engine_raw.target_partitions,
        storage_retries: engine_raw.storage_retries.unwrap_or(5),
        mode: EngineMode::Embedded,
    };
    match EngineMode::parse(
        engine_raw.mode.as_deref().unwrap_or("embedded"),
        engine_raw.scheduler.as_deref(),
    ) {
        Ok(m) => engine.mode = m,
        Err(e) => problems.push(FILE, "engine.mode", e),
    }
    if let Some(limit) = &engine_raw.memory_limit {
        match parse_size(limit) {
            Some(n) if n > 0 => engine.memory_limit = Some(n),
            _ => problems.push(
                FILE,
                "engine.memory_limit",
                format!("`{limit}` is not a size; write e.g. \"8GiB\" or \"512MiB\""),
            ),
        }
    }
    if engine.target_partitions == Some(0) {
        problems.push(FILE, "engine.target_partitions", "must be at least 1");
    }

    // Namespaces.
    let mut namespaces = Vec::new();
    for (name, value) in table_entries(&mut top, "namespaces", problems) {
        let path = format!("namespaces.{name}");
        check_identifier(&name, &path, "namespace", problems);
        let Some(ns) = de::<raw::RawNamespace>(value, &path, problems) else {
            continue;
        };
        if ns.priority == 0 {
            problems.push(
                FILE,
                format!("{path}.priority"),
                "priority starts at 1 (the highest)",
            );
        }
        match (ns.normaliser, &ns.default_region) {
            (NormaliserKind::Phone, Some(region))
                if crate::identity::normalise::phone_region(region).is_none() =>
            {
                problems.push(
                    FILE,
                    format!("{path}.default_region"),
                    format!(
                        "`{region}` is not a known ISO 3166 region code (e.g. `GB`, `US`, `DE`)"
                    ),
                );
            }
            (NormaliserKind::Phone, _) => {}
            (_, Some(_)) => problems.push(
                FILE,
                format!("{path}.default_region"),
                "only phone namespaces take a default_region",
            ),
            _ => {}
        }
        let mut blocked = BTreeSet::new();
        for b in &ns.blocked {
            blocked.insert(crate::identity::normalise::canonical_blocked(
                ns.normaliser,
                b,
            ));
        }
        for (i, pat) in ns.blocked_patterns.iter().enumerate() {
            if let Err(e) = regex::Regex::new(pat) {
                problems.push(
                    FILE,
                    format!("{path}.blocked_patterns[{i}]"),
                    format!("not a valid regular expression: {e}"),
                );
            }
        }
        if ns.max_links == Some(0) {
            problems.push(
                FILE,
                format!("{path}.max_links"),
                "must be at least 1 (an identity with more distinct links is quarantined)",
            );
        }
        if !ns.allow.is_empty() && ns.max_links.is_none() {
            problems.push(
                FILE,
                format!("{path}.allow"),
                "an allow-list only matters with max_links; set max_links or remove allow",
            );
        }
        match (ns.normaliser, &ns.expression) {
            (NormaliserKind::Sql, None) => problems.push(
                FILE,
                format!("{path}.expression"),
                "normaliser = \"sql\" needs an expression over `value`, e.g. \"upper(value)\"",
            ),
            (NormaliserKind::Sql, Some(e)) => {
                if let Err(msg) = crate::identity::sql_normaliser::check(e) {
                    problems.push(FILE, format!("{path}.expression"), msg);
                }
            }
            (_, Some(_)) => problems.push(
                FILE,
                format!("{path}.expression"),
                "only normaliser = \"sql\" takes an expression",
            ),
            _ => {}
        }
        let mut namespace = Namespace {
            name,
            expression: ns.expression,
            normaliser: ns.normaliser,
            priority: ns.priority,
            default_region: ns.default_region,
            blocked,
            blocked_patterns: ns.blocked_patterns,
            unique: ns.unique,
            max_links: ns.max_links,
            allow: BTreeSet::new(),
        };
        let normaliser = crate::identity::normalise::Normaliser::new(&namespace);
        let mut allow = BTreeSet::new();
        for (i, a) in ns.allow.iter().enumerate() {
            match normaliser.apply(a) {
                Ok(v) => {
                    allow.insert(v.into_owned());
                }
                Err(r) => problems.push(
                    FILE,
                    format!("{path}.allow[{i}]"),
                    format!(
                        "`{a}` is not a valid {} value ({})",
                        namespace.name,
                        r.as_str()
                    ),
                ),
            }
        }
        namespace.allow = allow;
        namespaces.push(namespace);
    }
    namespaces.sort_by(|a, b| (a.priority, &a.name).cmp(&(b.priority, &b.name)));
    let ns_names: Vec<&str> = namespaces.iter().map(|n| n.name.as_str()).collect();
    let identity = match top
        .remove("identity")
        .and_then(|v| de::<raw::RawIdentity>(v, "identity", problems))
    {
        Some(raw) => identity_rules(raw, &namespaces, problems),
        None => IdentityRules::default(),
    };

    // Datasets.
    let mut datasets = Vec::new();
    let dataset_entries = table_entries(&mut top, "datasets", problems);
    if dataset_entries.is_empty() {
        problems.push(
            FILE,
            "datasets",
            "no datasets declared; add at least one [datasets.<name>] table",
        );
    }
    for (name, value) in dataset_entries {
        let path = format!("datasets.{name}");
        check_identifier(&name, &path, "dataset", problems);
        let Some(ds) = de::<raw::RawDataset>(value, &path, problems) else {
            continue;
        };
        if ds.identities.is_empty() {
            problems.push(
                FILE,
                format!("{path}.identities"),
                "declare at least one identity column: `column = \"namespace\"`",
            );
        }
        for (column, ns) in &ds.identities {
            if !ns_names.contains(&ns.as_str()) {
                problems.push(
                    FILE,
                    format!("{path}.identities.{column}"),
                    format!(
                        "unknown namespace `{ns}`: {}",
                        one_of(ns, ns_names.iter().copied())
                    ),
                );
            }
            if column == &ds.timestamp {
                problems.push(
                    FILE,
                    format!("{path}.identities.{column}"),
                    "the timestamp column cannot also be an identity column",
                );
            }
        }
        match (ds.kind, &ds.event_type) {
            (DatasetKind::Event, None) => problems.push(
                FILE,
                format!("{path}.event_type"),
                "event datasets need `event_type`, the column holding the event type",
            ),
            (DatasetKind::Profile, Some(_)) => problems.push(
                FILE,
                format!("{path}.event_type"),
                "only event datasets have an event_type column",
            ),
            _ => {}
        }
        if let (DatasetKind::Event, Some(_)) = (ds.kind, &ds.attributes) {
            problems.push(FILE, format!("{path}.attributes"), "event datasets have properties, not attributes: every other column is an event property");
        }
        if let Some(attrs) = &ds.attributes {
            for a in attrs {
                if ds.identities.contains_key(a) || a == &ds.timestamp {
                    problems.push(
                        FILE,
                        format!("{path}.attributes"),
                        format!("`{a}` is an identity or timestamp column, not an attribute"),
                    );
                }
            }
        }
        let mut targets = BTreeSet::new();
        for (column, attr) in &ds.rename {
            let at = format!("{path}.rename.{column}");
            if ds.identities.contains_key(column)
                || column == &ds.timestamp
                || ds.event_type.as_ref() == Some(column)
            {
                problems.push(
                    FILE,
                    &at,
                    format!("`{column}` is an identity, timestamp or event type column; only attribute and property columns are renamed"),
                );
            }
            if attr.is_empty() || attr.starts_with("__") {
                problems.push(
                    FILE,
                    &at,
                    "an attribute name must not be empty or start with `__`",
                );
            }
            if !targets.insert(attr.as_str()) {
                problems.push(
                    FILE,
                    &at,
                    format!("two columns are renamed to `{attr}`; an attribute has one source column per dataset"),
                );
            }
            if ds.identities.contains_key(attr) || attr == &ds.timestamp {
                problems.push(
                    FILE,
                    &at,
                    format!("`{attr}` is already an identity or timestamp column of this dataset"),
                );
            }
        }
        let location = match Location::parse(&ds.path, root) {
            Ok(l) => l,
            Err(msg) => {
                problems.push(FILE, format!("{path}.path"), msg);
                continue;
            }
        };
        datasets.push(Dataset {
            name,
            kind: ds.kind,
            class: ds.class,
            location,
            path: ds.path,
            timestamp: ds.timestamp,
            event_type: ds.event_type,
            identities: ds.identities.into_iter().collect(),
            attributes: ds.attributes,
            rename: ds.rename.into_iter().collect(),
        });
    }
    datasets.sort_by(|a, b| a.name.cmp(&b.name));
    let ds_names: Vec<&str> = datasets.iter().map(|d| d.name.as_str()).collect();

    // Merge policies.
    let mut policies = Vec::new();
    for (name, value) in table_entries(&mut top, "merge_policies", problems) {
        let path = format!("merge_policies.{name}");
        check_identifier(&name, &path, "merge policy", problems);
        let Some(p) = de::<raw::RawMergePolicy>(value, &path, problems) else {
            continue;
        };
        let check_datasets = |list: &[String], at: &str, problems: &mut Problems| {
            for (i, d) in list.iter().enumerate() {
                match datasets.iter().find(|x| &x.name == d) {
                    None => problems.push(
                        FILE,
                        format!("{at}[{i}]"),
                        format!(
                            "unknown dataset `{d}`: {}",
                            one_of(d, ds_names.iter().copied())
                        ),
                    ),
                    Some(x) if x.class != p.class || x.kind != DatasetKind::Profile => problems
                        .push(
                            FILE,
                            format!("{at}[{i}]"),
                            format!(
                                "dataset `{d}` is not a {} profile dataset, so it cannot feed this policy",
                                p.class.as_str()
                            ),
                        ),
                    _ => {}
                }
            }
        };
        check_datasets(&p.precedence, &format!("{path}.precedence"), problems);
        let mut rules = BTreeMap::new();
        for (attr, v) in &p.attributes {
            let at = format!("{path}.attributes.{attr}");
            let rule = match v {
                toml::Value::String(_) => {
                    de::<raw::AttributeRule>(v.clone(), &at, problems).map(|rule| AttrRule {
                        rule,
                        precedence: Vec::new(),
                    })
                }
                _ => de::<raw::RawAttributeRule>(v.clone(), &at, problems).map(|r| AttrRule {
                    rule: r.rule,
                    precedence: r.precedence,
                }),
            };
            let Some(rule) = rule else { continue };
            check_datasets(&rule.precedence, &format!("{at}.precedence"), problems);
            match rule.rule {
                AttributeRule::Precedence if rule.precedence.is_empty() => problems.push(
                    FILE,
                    &at,
                    "rule = \"precedence\" needs `precedence = [datasets...]`, e.g. { rule = \"precedence\", precedence = [\"crm\"] }",
                ),
                AttributeRule::Precedence => {}
                _ if !rule.precedence.is_empty() => problems.push(
                    FILE,
                    format!("{at}.precedence"),
                    "precedence is used only with rule = \"precedence\"",
                ),
                _ => {}
            }
            rules.insert(attr.clone(), rule);
        }
        let mut grouped: BTreeMap<&str, &str> = BTreeMap::new();
        for (g, fields) in &p.groups {
            let at = format!("{path}.groups.{g}");
            check_identifier(g, &at, "field group", problems);
            if fields.is_empty() {
                problems.push(FILE, &at, "a field group needs at least one field");
            }
            for f in fields {
                if let Some(other) = grouped.insert(f, g) {
                    problems.push(
                        FILE,
                        &at,
                        format!("field `{f}` is already in group `{other}`; a field belongs to one group"),
                    );
                }
                if rules.contains_key(f) {
                    problems.push(
                        FILE,
                        &at,
                        format!("field `{f}` also has a rule in `attributes`; a group's fields all come from the group's winning record, so remove one"),
                    );
                }
            }
        }
        let provenance = match &p.provenance {
            None | Some(toml::Value::Boolean(false)) => Provenance::None,
            Some(toml::Value::Boolean(true)) => Provenance::All,
            Some(v) => {
                match de::<Vec<String>>(v.clone(), &format!("{path}.provenance"), problems) {
                    Some(list) => {
                        for a in &list {
                            if let Some(r) = rules.get(a)
                                && !r.rule.picks_a_record()
                            {
                                problems.push(
                                FILE,
                                format!("{path}.provenance"),
                                format!("attribute `{a}` uses rule `{}`, which does not pick one record, so it has no source or time; remove it from provenance", r.rule.as_str()),
                            );
                            }
                        }
                        Provenance::Some(list.into_iter().collect())
                    }
                    None => Provenance::None,
                }
            }
        };
        match p.method {
            MergeMethod::Precedence if p.precedence.is_empty() => problems.push(
                FILE,
                format!("{path}.precedence"),
                "method = \"precedence\" needs an ordered list of datasets",
            ),
            MergeMethod::Timestamp if !p.precedence.is_empty() => problems.push(
                FILE,
                format!("{path}.precedence"),
                "precedence is used only with method = \"precedence\"",
            ),
            _ => {}
        }
        policies.push(MergePolicy {
            name,
            class: p.class,
            default: p.default,
            method: p.method,
            precedence: p.precedence,
            rules,
            groups: p.groups.into_iter().collect(),
            provenance,
            stitching: p.stitching,
        });
    }
    policies.sort_by(|a, b| a.name.cmp(&b.name));
    let classes: BTreeSet<Class> = datasets.iter().map(|d| d.class).collect();
    for class in &classes {
        let defaults: Vec<&str> = policies
            .iter()
            .filter(|p| p.class == *class && p.default)
            .map(|p| p.name.as_str())
            .collect();
        if defaults.len() > 1 {
            problems.push(
                FILE,
                "merge_policies",
                format!(
                    "{} {} policies are marked default ({}); mark exactly one",
                    defaults.len(),
                    class.as_str(),
                    defaults.join(", ")
                ),
            );
        }
    }
    // A class with datasets and no policy at all gets an implicit timestamp policy.
    for class in &classes {
        if !policies.iter().any(|p| p.class == *class) {
            policies.push(MergePolicy {
                name: format!("{}_default", class.as_str()),
                class: *class,
                default: true,
                method: MergeMethod::Timestamp,
                precedence: Vec::new(),
                rules: BTreeMap::new(),
                groups: Vec::new(),
                provenance: Provenance::None,
                stitching: Stitching::Graph,
            });
        } else if !policies.iter().any(|p| p.class == *class && p.default) {
            problems.push(
                FILE,
                "merge_policies",
                format!(
                    "no default {} merge policy: set `default = true` on one",
                    class.as_str()
                ),
            );
        }
    }

    // SQL models.
    let segments_dir = section
        .segments
        .clone()
        .unwrap_or_else(|| "sql/segments".into());
    let features_dir = section
        .features
        .clone()
        .unwrap_or_else(|| "sql/features".into());
    let policy_names: Vec<&str> = policies.iter().map(|p| p.name.as_str()).collect();
    let models = sql::load_models(root, &segments_dir, &features_dir, &policy_names, problems);
    for m in &models {
        if let Some(policy) = &m.policy
            && let Some(p) = policies.iter().find(|p| &p.name == policy)
            && p.class != m.class
        {
            problems.push(
                &m.file,
                "header `policy`",
                format!(
                    "merge policy `{policy}` is for {} profiles but this {} is {}",
                    p.class.as_str(),
                    m.kind.as_str(),
                    m.class.as_str()
                ),
            );
        }
        if m.kind == ModelKind::Segment && !classes.contains(&m.class) {
            problems.push(
                &m.file,
                "header `class`",
                format!(
                    "no {} datasets are declared, so a {} segment has no profiles",
                    m.class.as_str(),
                    m.class.as_str()
                ),
            );
        }
    }
    // Destinations, consent, labels, marketing actions.
    let ns_owned: Vec<String> = namespaces.iter().map(|n| n.name.clone()).collect();
    let exports = destination::parse(
        &mut top,
        root,
        &models,
        &ns_owned,
        namespaces
            .iter()
            .any(|n| n.normaliser == NormaliserKind::Phone),
        problems,
    );
    let destinations = exports.destinations;

    let state = match Location::parse(section.state.as_deref().unwrap_or("state"), root) {
        Ok(l) => Some(l),
        Err(msg) => {
            problems.push(FILE, "project.state", msg);
            None
        }
    };
    let name = section.name.clone().unwrap_or_else(|| {
        root.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "project".into())
    });

    let config_hash = hex::encode(Sha256::digest(text.as_bytes()));
    let mut h = Sha256::new();
    for m in &models {
        h.update(m.file.as_bytes());
        h.update([0]);
        h.update(m.sql.as_bytes());
        h.update([0]);
    }
    let sql_hash = hex::encode(h.finalize());

    Some(Project {
        root: root.to_path_buf(),
        name,
        state: state?,
        engine,
        identity,
        namespaces,
        datasets,
        policies,
        destinations,
        labels: exports.labels,
        marketing_actions: exports.actions,
        models,
        config_hash,
        sql_hash,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_sizes_parse() {
        assert_eq!(parse_size("8GiB"), Some(8 << 30));
        assert_eq!(parse_size("512 MiB"), Some(512 << 20));
        assert_eq!(parse_size("1000"), Some(1000));
        assert_eq!(parse_size("lots"), None);
    }

    #[test]
    fn config_explains_unknown_keys() {
        let (msg, key) = explain_serde_message(
            "unknown field `pth`, expected one of `kind`, `path`, `timestamp`",
        );
        assert_eq!(key.as_deref(), Some("pth"));
        assert!(msg.contains("did you mean `path`?"), "{msg}");
    }
}
