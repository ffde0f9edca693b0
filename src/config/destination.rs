//! `[destinations.<name>]`, `[consent.<purpose>]`, `[labels]` and
//! `[marketing_actions.<action>]`: what is exported where, in which format, to
//! whom it may go. Validated as a whole with the rest of `audience.toml`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;

use crate::config::{Class, SqlModel};
use crate::engine::storage::Location;
use crate::error::{Problems, one_of};

use super::{CONFIG_FILE as FILE, check_identifier, de, table_entries};

/// What a destination produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DestinationKind {
    /// CSV, Parquet or JSON lines files in a bucket or folder, with the fields you map.
    #[default]
    CloudStorage,
    /// Microsoft Advertising Customer Match bulk file: one customer list per
    /// segment, `Replace`, SHA-256 of trimmed lower-cased e-mails.
    MicrosoftAdvertising,
    /// DotDigital address-book contact import CSV: `Email`, `EmailType`, data fields.
    Dotdigital,
    /// The unified profile table itself (all profiles of a class, or of chosen
    /// segments), for BI and archiving.
    ProfileSnapshot,
}

impl DestinationKind {
    pub const ALL: [&'static str; 4] = [
        "cloud_storage",
        "microsoft_advertising",
        "dotdigital",
        "profile_snapshot",
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DestinationKind::CloudStorage => "cloud_storage",
            DestinationKind::MicrosoftAdvertising => "microsoft_advertising",
            DestinationKind::Dotdigital => "dotdigital",
            DestinationKind::ProfileSnapshot => "profile_snapshot",
        }
    }

    /// Most profiles one export (one segment's file set) may hold.
    pub fn cap(self) -> Option<u64> {
        match self {
            DestinationKind::MicrosoftAdvertising => Some(500_000),
            DestinationKind::Dotdigital => Some(1_000_000),
            _ => None,
        }
    }
}

/// Export file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FormatKind {
    /// Comma-separated values (options in `csv`).
    #[default]
    Csv,
    /// Apache Parquet (codec in `compression`).
    Parquet,
    /// JSON lines: one object per row.
    Json,
}

impl FormatKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FormatKind::Csv => "csv",
            FormatKind::Parquet => "parquet",
            FormatKind::Json => "json",
        }
    }
}

/// Compression of an export file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    None,
    /// CSV and JSON: a multi-member gzip file compressed on all cores. Parquet: gzip pages.
    Gzip,
    /// Parquet only (the Parquet default).
    Zstd,
    /// Parquet only.
    Snappy,
    /// Parquet only.
    Lz4,
}

impl Compression {
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
        }
    }
}

/// What happens when an export has more profiles than `max_profiles`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnLimit {
    /// The run fails before any file of any destination is written.
    #[default]
    Fail,
    /// Keep the first `max_profiles` rows in the file order (by `profile_id`).
    Truncate,
}

/// A field transform, applied in the order written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transform {
    Trim,
    Lower,
    Upper,
    /// Phone number to E.164 (the `phone` namespace's default region); NULL when not a number.
    E164,
    /// SHA-256 as 64 lower-case hex characters of the value as it stands
    /// (identity values are already normalised).
    Sha256,
}

/// CSV options.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvOptions {
    /// One character. Default `,`.
    #[serde(default = "comma")]
    pub delimiter: char,
    /// One character. Default `"`.
    #[serde(default = "dquote")]
    pub quote: char,
    /// One character used to escape the quote inside quoted values; default:
    /// the quote is doubled.
    pub escape: Option<char>,
    /// Write a header line. Default `true`.
    #[serde(default = "yes")]
    pub header: bool,
    /// Text written for NULL. Default empty.
    #[serde(default)]
    pub null: String,
}

fn comma() -> char {
    ','
}
fn dquote() -> char {
    '"'
}
fn yes() -> bool {
    true
}

impl Default for CsvOptions {
    fn default() -> Self {
        CsvOptions {
            delimiter: ',',
            quote: '"',
            escape: None,
            header: true,
            null: String::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum RawField {
    Name(String),
    Mapped(RawMapping),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMapping {
    target: String,
    source: Option<String>,
    value: Option<String>,
    #[serde(default)]
    transforms: Vec<Transform>,
}

/// `[destinations.<name>]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDestination {
    url: String,
    #[serde(default)]
    kind: DestinationKind,
    format: Option<FormatKind>,
    compression: Option<Compression>,
    csv: Option<CsvOptions>,
    file_name: Option<String>,
    file_text: Option<String>,
    rows_per_file: Option<u64>,
    #[serde(default)]
    segments: Vec<String>,
    class: Option<Class>,
    fields: Option<Vec<RawField>>,
    #[serde(default)]
    mandatory: Vec<String>,
    #[serde(default)]
    dedup_key: Vec<String>,
    max_profiles: Option<u64>,
    #[serde(default)]
    on_limit: OnLimit,
    purpose: Option<String>,
    #[serde(default)]
    marketing_actions: Vec<String>,
    #[serde(default)]
    customer_list_ids: BTreeMap<String, i64>,
    #[serde(default)]
    deltas: bool,
    schedule: Option<String>,
}

/// `[consent.<purpose>]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConsent {
    attribute: String,
    granted: Option<Vec<String>>,
}

/// `[marketing_actions.<action>]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAction {
    #[serde(default)]
    forbidden_labels: Vec<String>,
    description: Option<String>,
}

/// Where a field's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A profile column: `profile_id`, an attribute, an identity namespace, a provenance column.
    Column(String),
    /// All identities of the profile in a namespace (profile snapshots only).
    IdentityList(String),
    /// The same text on every row.
    Constant(String),
}

/// One output column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldMap {
    pub target: String,
    pub source: Source,
    pub transforms: Vec<Transform>,
}

/// A consent rule: profiles whose `attribute` is not one of `granted` are suppressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentRule {
    pub purpose: String,
    pub attribute: String,
    /// Lower-cased.
    pub granted: BTreeSet<String>,
}

/// Values that grant consent when `granted` is not given (compared lower-cased).
pub const DEFAULT_GRANTED: [&str; 6] = ["true", "yes", "y", "1", "granted", "opt_in"];

/// A validated file format.
#[derive(Debug, Clone)]
pub enum Format {
    Csv(CsvOptions),
    Parquet,
    Json,
}

/// A validated destination.
#[derive(Debug, Clone)]
pub struct Destination {
    pub name: String,
    pub location: Location,
    pub kind: DestinationKind,
    pub format: Format,
    pub compression: Compression,
    /// The file-name template, relative to the destination.
    pub file_name: String,
    pub file_text: String,
    pub rows_per_file: Option<u64>,
    /// Segments exported (for a profile snapshot: the profiles kept, all when empty).
    pub segments: Vec<String>,
    pub class: Class,
    pub fields: Vec<FieldMap>,
    pub mandatory: Vec<String>,
    pub dedup_key: Vec<String>,
    pub max_profiles: Option<u64>,
    pub on_limit: OnLimit,
    pub consent: Option<ConsentRule>,
    pub marketing_actions: Vec<String>,
    pub customer_list_ids: BTreeMap<String, i64>,
    /// Also write entered/exited delta files beside each full file.
    pub deltas: bool,
    /// A cron expression (UTC) or `manual`; `None` is `manual`.
    pub schedule: Option<String>,
}

impl Destination {
    pub fn format_name(&self) -> &'static str {
        match self.format {
            Format::Csv(_) => "csv",
            Format::Parquet => "parquet",
            Format::Json => "json",
        }
    }

    /// File extension, compression included.
    pub fn extension(&self) -> &'static str {
        match (&self.format, self.compression) {
            (Format::Csv(_), Compression::Gzip) => "csv.gz",
            (Format::Csv(_), _) => "csv",
            (Format::Json, Compression::Gzip) => "jsonl.gz",
            (Format::Json, _) => "jsonl",
            (Format::Parquet, _) => "parquet",
        }
    }

    /// Namespaces exported as identity lists.
    pub fn identity_lists(&self) -> Vec<&str> {
        self.fields
            .iter()
            .filter_map(|f| match &f.source {
                Source::IdentityList(ns) => Some(ns.as_str()),
                _ => None,
            })
            .collect()
    }

    /// Every column the export reads from the profiles.
    pub fn source_columns(&self) -> BTreeSet<&str> {
        let mut cols: BTreeSet<&str> = self
            .fields
            .iter()
            .filter_map(|f| match &f.source {
                Source::Column(c) => Some(c.as_str()),
                _ => None,
            })
            .collect();
        if let Some(c) = &self.consent {
            cols.insert(c.attribute.as_str());
        }
        cols
    }
}

/// Tokens of file-name templates.
pub const TOKENS: [&str; 10] = [
    "destination",
    "segment",
    "segment_name",
    "run_id",
    "date",
    "time",
    "as_of",
    "text",
    "part",
    "ext",
];

/// Longest file name (template or rendered path), in characters.
pub const MAX_FILE_NAME: usize = 255;

/// The default file-name template.
pub const DEFAULT_FILE_NAME: &str = "{run_id}/{segment}{part}.{ext}";

/// Values a template is rendered with.
pub struct TemplateValues<'a> {
    pub destination: &'a str,
    pub segment: &'a str,
    pub segment_name: &'a str,
    pub run_id: &'a str,
    pub date: &'a str,
    pub time: &'a str,
    pub as_of: &'a str,
    pub text: &'a str,
    pub part: &'a str,
    pub ext: &'a str,
}

/// Render a validated template. The result is checked again: at most
/// [`MAX_FILE_NAME`] characters, no empty, `.` or `..` component, relative.
///
/// # Errors
/// A message naming the rendered path and what is wrong with it.
pub fn render(template: &str, v: &TemplateValues<'_>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("unclosed `{{` in `{template}`"))?;
        let token = &rest[open + 1..open + close];
        out.push_str(match token {
            "destination" => v.destination,
            "segment" => v.segment,
            "segment_name" => v.segment_name,
            "run_id" => v.run_id,
            "date" => v.date,
            "time" => v.time,
            "as_of" => v.as_of,
            "text" => v.text,
            "part" => v.part,
            "ext" => v.ext,
            other => return Err(format!("unknown token `{{{other}}}`")),
        });
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    check_path(&out).map_err(|m| format!("file name `{out}` {m}"))?;
    Ok(out)
}

/// A relative object path that stays under its prefix.
fn check_path(p: &str) -> Result<(), String> {
    if p.chars().count() > MAX_FILE_NAME {
        return Err(format!("is longer than {MAX_FILE_NAME} characters"));
    }
    if p.starts_with('/') || p.contains('\\') || p.contains(':') {
        return Err(
            "must be a relative path with `/` separators (no `\\`, `:` or leading `/`)".into(),
        );
    }
    if p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err("must not contain empty, `.` or `..` path components".into());
    }
    if p.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

/// File-name-safe form of free text (segment names): letters, digits, `.`, `_`, `-`.
pub fn safe_name(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect::<String>()
        .trim_matches('.')
        .to_string()
}

fn check_template(t: &str, path: &str, problems: &mut Problems) {
    if t.chars().count() > MAX_FILE_NAME {
        problems.push(
            FILE,
            path,
            format!("is longer than {MAX_FILE_NAME} characters"),
        );
        return;
    }
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            problems.push(FILE, path, format!("unclosed `{{` in `{t}`"));
            return;
        };
        let token = &rest[open + 1..open + close];
        if !TOKENS.contains(&token) {
            problems.push(
                FILE,
                path,
                format!("unknown token `{{{token}}}`: {}", one_of(token, TOKENS)),
            );
        }
        rest = &rest[open + close + 1..];
    }
    // Render with sample values to catch `..`, absolute paths and the like.
    let sample = TemplateValues {
        destination: "d",
        segment: "s",
        segment_name: "s",
        run_id: "r",
        date: "20250101",
        time: "000000",
        as_of: "20250101T000000Z",
        text: "t",
        part: "",
        ext: "csv",
    };
    if let Err(m) = render(t, &sample) {
        problems.push(
            FILE,
            path,
            format!("{m}: a file name must stay inside the destination"),
        );
    }
}

/// Fixed columns of the DotDigital pack.
pub const DOTDIGITAL_FIELDS: [&str; 5] =
    ["FIRSTNAME", "LASTNAME", "FULLNAME", "GENDER", "POSTCODE"];

/// Everything the export sections define.
pub struct Parsed {
    pub destinations: Vec<Destination>,
    /// Attribute or namespace → labels.
    pub labels: BTreeMap<String, BTreeSet<String>>,
    /// Marketing action → forbidden labels.
    pub actions: BTreeMap<String, BTreeSet<String>>,
}

/// Validate the export sections; `models` are the validated features and segments.
pub(super) fn parse(
    top: &mut toml::Table,
    root: &Path,
    models: &[SqlModel],
    namespaces: &[String],
    has_phone: bool,
    problems: &mut Problems,
) -> Parsed {
    // Labels: `[labels] email = ["PII"]`.
    let mut labels: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, value) in table_entries(top, "labels", problems) {
        if let Some(list) = de::<Vec<String>>(value, &format!("labels.{name}"), problems) {
            labels.insert(name, list.into_iter().collect());
        }
    }
    let mut actions: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, value) in table_entries(top, "marketing_actions", problems) {
        let path = format!("marketing_actions.{name}");
        check_identifier(&name, &path, "marketing action", problems);
        if let Some(a) = de::<RawAction>(value, &path, problems) {
            let _ = a.description;
            actions.insert(name, a.forbidden_labels.into_iter().collect());
        }
    }
    let mut consents: BTreeMap<String, ConsentRule> = BTreeMap::new();
    for (name, value) in table_entries(top, "consent", problems) {
        let path = format!("consent.{name}");
        check_identifier(&name, &path, "consent purpose", problems);
        if let Some(c) = de::<RawConsent>(value, &path, problems) {
            let granted: BTreeSet<String> = match c.granted {
                Some(g) if g.is_empty() => {
                    problems.push(
                        FILE,
                        format!("{path}.granted"),
                        "list at least one value that grants consent",
                    );
                    BTreeSet::new()
                }
                Some(g) => g.iter().map(|v| v.trim().to_lowercase()).collect(),
                None => DEFAULT_GRANTED.iter().map(|s| (*s).to_string()).collect(),
            };
            consents.insert(
                name.clone(),
                ConsentRule {
                    purpose: name,
                    attribute: c.attribute,
                    granted,
                },
            );
        }
    }

    let segment_ids: Vec<&str> = models
        .iter()
        .filter(|m| m.kind == super::ModelKind::Segment)
        .map(|m| m.id.as_str())
        .collect();
    let mut destinations = Vec::new();
    for (name, value) in table_entries(top, "destinations", problems) {
        let path = format!("destinations.{name}");
        check_identifier(&name, &path, "destination", problems);
        let Some(d) = de::<RawDestination>(value, &path, problems) else {
            continue;
        };
        if let Some(dest) = destination(
            name,
            d,
            &path,
            root,
            models,
            &segment_ids,
            namespaces,
            has_phone,
            &consents,
            problems,
        ) {
            check_labels(&dest, &path, &labels, &actions, problems);
            destinations.push(dest);
        }
    }
    destinations.sort_by(|a, b| a.name.cmp(&b.name));
    Parsed {
        destinations,
        labels,
        actions,
    }
}

#[allow(clippy::too_many_arguments)]
fn destination(
    name: String,
    d: RawDestination,
    path: &str,
    root: &Path,
    models: &[SqlModel],
    segment_ids: &[&str],
    namespaces: &[String],
    has_phone: bool,
    consents: &BTreeMap<String, ConsentRule>,
    problems: &mut Problems,
) -> Option<Destination> {
    let before = problems.len();
    let kind = d.kind;
    let snapshot = kind == DestinationKind::ProfileSnapshot;
    if d.segments.is_empty() && !snapshot {
        problems.push(
            FILE,
            format!("{path}.segments"),
            "list at least one segment to export",
        );
    }
    let mut seg_classes = BTreeSet::new();
    for (i, s) in d.segments.iter().enumerate() {
        if !segment_ids.contains(&s.as_str()) {
            problems.push(
                FILE,
                format!("{path}.segments[{i}]"),
                format!(
                    "unknown segment `{s}`: {}",
                    one_of(s, segment_ids.iter().copied())
                ),
            );
        } else if let Some(m) = models.iter().find(|m| &m.id == s) {
            seg_classes.insert(m.class);
        }
    }
    if seg_classes.len() > 1 {
        problems.push(
            FILE,
            format!("{path}.segments"),
            "mixes customer and prospect segments; use one destination per class",
        );
    }
    let class = match (d.class, seg_classes.iter().next()) {
        (Some(c), Some(s)) if c != *s => {
            problems.push(
                FILE,
                format!("{path}.class"),
                format!(
                    "is `{}` but the segments are {} segments",
                    c.as_str(),
                    s.as_str()
                ),
            );
            c
        }
        (Some(c), _) => c,
        (None, Some(s)) => *s,
        (None, None) => Class::Customer,
    };
    if d.class.is_some() && !snapshot {
        problems.push(
            FILE,
            format!("{path}.class"),
            "only a `profile_snapshot` destination takes `class`; other destinations take their segments' class",
        );
    }
    if class == Class::Prospect
        && !matches!(
            kind,
            DestinationKind::CloudStorage | DestinationKind::ProfileSnapshot
        )
    {
        problems.push(
            FILE,
            format!("{path}.kind"),
            format!(
                "a prospect audience may only go to a `cloud_storage` destination, not `{}`",
                kind.as_str()
            ),
        );
    }

    // Format and compression: the packs fix theirs.
    let packed = matches!(
        kind,
        DestinationKind::MicrosoftAdvertising | DestinationKind::Dotdigital
    );
    if packed {
        for (set, key) in [
            (d.format.is_some(), "format"),
            (d.compression.is_some(), "compression"),
            (d.csv.is_some(), "csv"),
        ] {
            if set {
                problems.push(
                    FILE,
                    format!("{path}.{key}"),
                    format!(
                        "the `{}` pack fixes its file format (CSV); remove `{key}`",
                        kind.as_str()
                    ),
                );
            }
        }
    }
    let format_kind = d.format.unwrap_or_default();
    let format = match format_kind {
        FormatKind::Csv => {
            let o = d.csv.clone().unwrap_or_default();
            for (c, key) in [
                (Some(o.delimiter), "delimiter"),
                (Some(o.quote), "quote"),
                (o.escape, "escape"),
            ] {
                if let Some(c) = c
                    && (!c.is_ascii() || c == '\n' || c == '\r')
                {
                    problems.push(
                        FILE,
                        format!("{path}.csv.{key}"),
                        format!("`{c}` must be one ASCII character other than a line break"),
                    );
                }
            }
            if o.delimiter == o.quote {
                problems.push(
                    FILE,
                    format!("{path}.csv"),
                    "the delimiter and the quote must differ",
                );
            }
            Format::Csv(o)
        }
        FormatKind::Parquet | FormatKind::Json => {
            if d.csv.is_some() {
                problems.push(
                    FILE,
                    format!("{path}.csv"),
                    format!(
                        "CSV options do not apply to format `{}`",
                        format_kind.as_str()
                    ),
                );
            }
            if format_kind == FormatKind::Parquet {
                Format::Parquet
            } else {
                Format::Json
            }
        }
    };
    let compression = match (format_kind, d.compression) {
        (FormatKind::Parquet, None) => Compression::Zstd,
        (_, None) => Compression::None,
        (FormatKind::Parquet, Some(c)) => c,
        (_, Some(c @ (Compression::None | Compression::Gzip))) => c,
        (f, Some(c)) => {
            problems.push(
                FILE,
                format!("{path}.compression"),
                format!(
                    "`{}` is for Parquet; {} files take `none` or `gzip`",
                    c.as_str(),
                    f.as_str()
                ),
            );
            Compression::None
        }
    };

    // File names.
    let file_name = d.file_name.unwrap_or_else(|| DEFAULT_FILE_NAME.to_string());
    check_template(&file_name, &format!("{path}.file_name"), problems);
    let file_text = d.file_text.unwrap_or_default();
    if let Err(m) =
        check_path(&file_text).or_else(|e| if file_text.is_empty() { Ok(()) } else { Err(e) })
    {
        problems.push(FILE, format!("{path}.file_text"), m);
    } else if file_text.contains('/') {
        problems.push(FILE, format!("{path}.file_text"), "must not contain `/`");
    }
    let per_segment = !snapshot && d.segments.len() > 1;
    if per_segment && !file_name.contains("{segment}") && !file_name.contains("{segment_name}") {
        problems.push(
            FILE,
            format!("{path}.file_name"),
            "exports several segments: put `{segment}` in the file name so their files differ",
        );
    }
    if d.rows_per_file == Some(0) {
        problems.push(FILE, format!("{path}.rows_per_file"), "must be at least 1");
    }
    if d.rows_per_file.is_some() && kind == DestinationKind::MicrosoftAdvertising {
        problems.push(
            FILE,
            format!("{path}.rows_per_file"),
            "a Customer Match file replaces its whole list: one file per segment (the 500,000 cap fits one file)",
        );
    } else if d.rows_per_file.is_some() && !file_name.contains("{part}") {
        problems.push(
            FILE,
            format!("{path}.file_name"),
            "`rows_per_file` splits files: put `{part}` in the file name",
        );
    }

    // Fields.
    let fields = fields(kind, d.fields, path, namespaces, problems);
    if matches!(format, Format::Csv(_)) {
        for (i, f) in fields.iter().enumerate() {
            if matches!(f.source, Source::IdentityList(_)) {
                problems.push(
                    FILE,
                    format!("{path}.fields[{i}]"),
                    "identity lists are lists: export them as `parquet` or `json`",
                );
            }
        }
    }
    if !has_phone {
        for (i, f) in fields.iter().enumerate() {
            if f.transforms.contains(&Transform::E164) {
                problems.push(
                    FILE,
                    format!("{path}.fields[{i}].transforms"),
                    "`e164` needs a namespace with `normaliser = \"phone\"` (its default region reads national numbers)",
                );
            }
        }
    }
    let targets: Vec<&str> = fields.iter().map(|f| f.target.as_str()).collect();
    for (key, list) in [("mandatory", &d.mandatory), ("dedup_key", &d.dedup_key)] {
        for (i, t) in list.iter().enumerate() {
            if !targets.contains(&t.as_str()) {
                problems.push(
                    FILE,
                    format!("{path}.{key}[{i}]"),
                    format!(
                        "`{t}` is not an output field: {}",
                        one_of(t, targets.iter().copied())
                    ),
                );
            }
        }
    }
    let mut mandatory = d.mandatory.clone();
    let email_target = match kind {
        DestinationKind::MicrosoftAdvertising | DestinationKind::Dotdigital => Some("Email"),
        _ => None,
    };
    if let Some(e) = email_target
        && !mandatory.iter().any(|m| m == e)
    {
        mandatory.insert(0, e.to_string());
    }
    let max_profiles = match (d.max_profiles, kind.cap()) {
        (Some(m), Some(cap)) if m > cap => {
            problems.push(
                FILE,
                format!("{path}.max_profiles"),
                format!(
                    "{m} is above the `{}` cap of {cap} profiles per export",
                    kind.as_str()
                ),
            );
            Some(cap)
        }
        (Some(0), _) => {
            problems.push(FILE, format!("{path}.max_profiles"), "must be at least 1");
            None
        }
        (m, cap) => m.or(cap),
    };
    let consent = match &d.purpose {
        None => None,
        Some(p) => match consents.get(p) {
            Some(c) => Some(c.clone()),
            None => {
                problems.push(
                    FILE,
                    format!("{path}.purpose"),
                    format!(
                        "no `[consent.{p}]` rule: {}",
                        one_of(p, consents.keys().map(String::as_str))
                    ),
                );
                None
            }
        },
    };
    if let Some(text) = &d.schedule
        && let Err(m) = crate::run::schedule::parse(text)
    {
        problems.push(FILE, format!("{path}.schedule"), m);
    }
    if d.deltas && kind != DestinationKind::CloudStorage {
        problems.push(
            FILE,
            format!("{path}.deltas"),
            "delta files are written for `cloud_storage` destinations only",
        );
    }
    if kind == DestinationKind::MicrosoftAdvertising {
        for s in &d.segments {
            if !d.customer_list_ids.contains_key(s) {
                problems.push(
                    FILE,
                    format!("{path}.customer_list_ids"),
                    format!("give the Microsoft Advertising customer list id of segment `{s}` (e.g. `{s} = 123456789`)"),
                );
            }
        }
        for k in d.customer_list_ids.keys() {
            if !d.segments.contains(k) {
                problems.push(
                    FILE,
                    format!("{path}.customer_list_ids.{k}"),
                    format!("`{k}` is not a segment of this destination"),
                );
            }
        }
    } else if !d.customer_list_ids.is_empty() {
        problems.push(
            FILE,
            format!("{path}.customer_list_ids"),
            "only a `microsoft_advertising` destination takes customer list ids",
        );
    }
    let location = match Location::parse(&d.url, root) {
        Ok(l) => Some(l),
        Err(msg) => {
            problems.push(FILE, format!("{path}.url"), msg);
            None
        }
    };
    if problems.len() > before {
        return None;
    }
    Some(Destination {
        name,
        location: location?,
        kind,
        format: if packed {
            Format::Csv(CsvOptions::default())
        } else {
            format
        },
        compression: if packed {
            Compression::None
        } else {
            compression
        },
        file_name,
        file_text,
        rows_per_file: d.rows_per_file,
        segments: d.segments,
        class,
        fields,
        mandatory,
        dedup_key: d.dedup_key,
        max_profiles,
        on_limit: d.on_limit,
        consent,
        marketing_actions: d.marketing_actions,
        customer_list_ids: d.customer_list_ids,
        deltas: d.deltas,
        schedule: d.schedule,
    })
}

/// The output fields of a destination; packs fill in and check theirs.
fn fields(
    kind: DestinationKind,
    raw: Option<Vec<RawField>>,
    path: &str,
    namespaces: &[String],
    problems: &mut Problems,
) -> Vec<FieldMap> {
    let default_email = || {
        vec![RawField::Mapped(RawMapping {
            target: "Email".into(),
            source: Some("email".into()),
            value: None,
            transforms: Vec::new(),
        })]
    };
    let raw = match (kind, raw) {
        (_, Some(r)) => r,
        (DestinationKind::MicrosoftAdvertising | DestinationKind::Dotdigital, None) => {
            default_email()
        }
        (_, None) => vec![RawField::Name("profile_id".into())],
    };
    if raw.is_empty() {
        problems.push(FILE, format!("{path}.fields"), "list at least one field");
    }
    let mut out: Vec<FieldMap> = Vec::new();
    for (i, f) in raw.into_iter().enumerate() {
        let at = format!("{path}.fields[{i}]");
        let (target, source, transforms) = match f {
            RawField::Name(n) => (n.clone(), Source::Column(n), Vec::new()),
            RawField::Mapped(m) => {
                let source = match (m.source, m.value) {
                    (Some(s), None) => match s.strip_prefix("identities.") {
                        Some(ns) => {
                            if !namespaces.iter().any(|n| n == ns) {
                                problems.push(
                                    FILE,
                                    format!("{at}.source"),
                                    format!(
                                        "unknown namespace `{ns}`: {}",
                                        one_of(ns, namespaces.iter().map(String::as_str))
                                    ),
                                );
                            }
                            if kind != DestinationKind::ProfileSnapshot {
                                problems.push(
                                    FILE,
                                    format!("{at}.source"),
                                    "identity lists (`identities.<namespace>`) go to `profile_snapshot` destinations only",
                                );
                            }
                            Source::IdentityList(ns.to_string())
                        }
                        None => Source::Column(s),
                    },
                    (None, Some(v)) => Source::Constant(v),
                    _ => {
                        problems.push(
                            FILE,
                            at.clone(),
                            "give either `source` (a profile column) or `value` (a constant)",
                        );
                        continue;
                    }
                };
                (m.target, source, m.transforms)
            }
        };
        if target.is_empty() || target.chars().any(char::is_control) {
            problems.push(
                FILE,
                format!("{at}.target"),
                "a column name must be non-empty text",
            );
        }
        if out.iter().any(|o| o.target == target) {
            problems.push(
                FILE,
                format!("{path}.fields"),
                format!("field `{target}` is listed twice"),
            );
        }
        if matches!(source, Source::IdentityList(_)) && !transforms.is_empty() {
            problems.push(
                FILE,
                format!("{at}.transforms"),
                "identity lists take no transforms",
            );
        }
        out.push(FieldMap {
            target,
            source,
            transforms,
        });
    }
    match kind {
        DestinationKind::MicrosoftAdvertising => {
            if out.len() != 1 || out[0].target != "Email" {
                problems.push(
                    FILE,
                    format!("{path}.fields"),
                    "a `microsoft_advertising` destination exports one field, `Email` (e.g. `fields = [{ target = \"Email\", source = \"email\" }]`); the pack trims, lower-cases and hashes it",
                );
            }
            // The pack's normalisation: trim, lower-case, SHA-256.
            for f in &mut out {
                for t in [Transform::Trim, Transform::Lower] {
                    if !f.transforms.contains(&t) {
                        f.transforms.push(t);
                    }
                }
                f.transforms.retain(|t| *t != Transform::Sha256);
                f.transforms.push(Transform::Sha256);
            }
        }
        DestinationKind::Dotdigital => {
            if out.first().map(|f| f.target.as_str()) != Some("Email") {
                problems.push(
                    FILE,
                    format!("{path}.fields"),
                    "a `dotdigital` destination's first field is `Email`",
                );
            }
            for (i, f) in out.iter().enumerate().skip(1) {
                let ok = f
                    .target
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
                    && f.target != "EMAILTYPE";
                if !ok {
                    problems.push(
                        FILE,
                        format!("{path}.fields[{i}].target"),
                        format!(
                            "DotDigital data fields are upper-case (e.g. {}); `{}` is not",
                            DOTDIGITAL_FIELDS.join(", "),
                            f.target
                        ),
                    );
                }
            }
            if let Some(e) = out.first_mut() {
                for t in [Transform::Trim, Transform::Lower] {
                    if !e.transforms.contains(&t) {
                        e.transforms.push(t);
                    }
                }
            }
            out.insert(
                1.min(out.len()),
                FieldMap {
                    target: "EmailType".into(),
                    source: Source::Constant("Html".into()),
                    transforms: Vec::new(),
                },
            );
        }
        _ => {}
    }
    out
}

/// Refuse an activation that would send a label one of its marketing actions forbids.
fn check_labels(
    d: &Destination,
    path: &str,
    labels: &BTreeMap<String, BTreeSet<String>>,
    actions: &BTreeMap<String, BTreeSet<String>>,
    problems: &mut Problems,
) {
    for (i, a) in d.marketing_actions.iter().enumerate() {
        let Some(forbidden) = actions.get(a) else {
            problems.push(
                FILE,
                format!("{path}.marketing_actions[{i}]"),
                format!(
                    "unknown marketing action `{a}`: {}",
                    one_of(a, actions.keys().map(String::as_str))
                ),
            );
            continue;
        };
        for (j, f) in d.fields.iter().enumerate() {
            let src = match &f.source {
                Source::Column(c) | Source::IdentityList(c) => c,
                Source::Constant(_) => continue,
            };
            let base = src
                .strip_suffix("__source")
                .or_else(|| src.strip_suffix("__updated_at"))
                .unwrap_or(src);
            let Some(ls) = labels.get(base) else { continue };
            if let Some(l) = ls.intersection(forbidden).next() {
                problems.push(
                    FILE,
                    format!("{path}.fields[{j}]"),
                    format!(
                        "`{src}` carries data-usage label `{l}`, which marketing action `{a}` forbids: remove the field or the action"
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values<'a>(text: &'a str, segment: &'a str) -> TemplateValues<'a> {
        TemplateValues {
            destination: "d",
            segment,
            segment_name: "n",
            run_id: "r1",
            date: "20250701",
            time: "120000",
            as_of: "20250701T000000Z",
            text,
            part: "",
            ext: "csv",
        }
    }

    #[test]
    fn templates_stay_inside_the_destination() {
        assert_eq!(
            render(DEFAULT_FILE_NAME, &values("", "s")).unwrap(),
            "r1/s.csv"
        );
        assert_eq!(
            render("{date}/{text}_{segment}.{ext}", &values("x", "s")).unwrap(),
            "20250701/x_s.csv"
        );
        for bad in [
            "../{segment}.csv",
            "/abs/{segment}",
            "a//b",
            "a/./b",
            "c:\\x",
        ] {
            assert!(render(bad, &values("", "s")).is_err(), "{bad}");
        }
        assert!(render("{text}/x", &values("..", "s")).is_err());
        let long = "x".repeat(300);
        assert!(render(&long, &values("", "s")).is_err());
        assert!(render("{nope}", &values("", "s")).is_err());
        assert_eq!(safe_name("VIP / Gold!"), "VIP___Gold_");
        assert_eq!(safe_name(".."), "");
    }
}
