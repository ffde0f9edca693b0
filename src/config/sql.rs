//! Segment and feature SQL files: header, read-only check, dependencies.
//!
//! A file is one query. Leading `-- key: value` lines form its header
//! (`name`, `description`, `policy`, `class`). The file name without `.sql` is
//! the model's id, and other queries read it under that name.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use datafusion::sql::parser::{DFParser, Statement as DFStatement};
use datafusion::sql::resolve::resolve_table_references;
use datafusion::sql::sqlparser::ast::Statement;
use datafusion::sql::sqlparser::dialect::GenericDialect;

use super::{BUILTIN_RELATIONS, Class, is_identifier};
use crate::error::{Problems, one_of};

/// Whether a SQL file is a feature or a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ModelKind {
    /// A reusable per-profile relation, in `sql/features/`.
    Feature,
    /// An audience, in `sql/segments/`: returns `profile_id`s.
    Segment,
}

impl ModelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::Feature => "feature",
            ModelKind::Segment => "segment",
        }
    }
}

/// One SQL file.
#[derive(Debug, Clone)]
pub struct SqlModel {
    pub id: String,
    pub kind: ModelKind,
    /// Path relative to the project root, for messages.
    pub file: String,
    pub name: String,
    pub description: Option<String>,
    /// Merge policy named in the header; `None` means the class default.
    pub policy: Option<String>,
    pub class: Class,
    /// The whole file, header included, so line numbers match the file.
    pub sql: String,
    /// Features and segments this query reads, sorted.
    pub depends_on: Vec<String>,
}

const HEADER_KEYS: [&str; 4] = ["name", "description", "policy", "class"];

fn list_sql(
    root: &Path,
    dir: &str,
    problems: &mut Problems,
    required: bool,
) -> Vec<(String, String)> {
    let full = root.join(dir);
    let entries = match std::fs::read_dir(&full) {
        Ok(e) => e,
        Err(_) if !required => return Vec::new(),
        Err(e) => {
            problems.push(super::FILE, "project.segments", format!("segments folder `{dir}` cannot be read ({e}); create it with one .sql file per segment, or set project.segments"));
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("sql") {
            continue;
        }
        let rel = format!(
            "{}/{}",
            dir.trim_end_matches('/'),
            entry.file_name().to_string_lossy()
        );
        match std::fs::read_to_string(&path) {
            Ok(text) => out.push((rel, text)),
            Err(e) => problems.push(&rel, "", format!("cannot read: {e}")),
        }
    }
    out.sort();
    out
}

/// Load, parse and order every feature and segment.
pub(super) fn load_models(
    root: &Path,
    segments_dir: &str,
    features_dir: &str,
    policies: &[&str],
    problems: &mut Problems,
) -> Vec<SqlModel> {
    let mut models = Vec::new();
    for (kind, dir, required) in [
        (ModelKind::Feature, features_dir, false),
        (ModelKind::Segment, segments_dir, true),
    ] {
        for (file, text) in list_sql(root, dir, problems, required) {
            if let Some(m) = parse_model(kind, &file, text, policies, problems) {
                models.push(m);
            }
        }
    }
    let mut ids = BTreeMap::new();
    for m in &models {
        if BUILTIN_RELATIONS.contains(&m.id.as_str()) {
            problems.push(
                &m.file,
                "",
                format!("`{}` is a built-in relation; rename the file", m.id),
            );
        }
        if let Some(other) = ids.insert(m.id.clone(), m.file.clone()) {
            problems.push(&m.file, "", format!("id `{}` is also used by `{other}`; ids must be unique across features and segments", m.id));
        }
    }
    // Unknown relations.
    let known: Vec<&str> = BUILTIN_RELATIONS
        .iter()
        .copied()
        .chain(ids.keys().map(String::as_str))
        .collect();
    for m in &mut models {
        for dep in std::mem::take(&mut m.depends_on) {
            if BUILTIN_RELATIONS.contains(&dep.as_str()) {
                continue;
            }
            if ids.contains_key(&dep) {
                m.depends_on.push(dep);
            } else {
                problems.push(
                    &m.file,
                    "",
                    format!(
                        "unknown relation `{dep}`: {}",
                        one_of(&dep, known.iter().copied())
                    ),
                );
            }
        }
    }
    order(models, problems)
}

/// Topological order (Kahn's, ties by id); a cycle is a problem naming its files.
fn order(models: Vec<SqlModel>, problems: &mut Problems) -> Vec<SqlModel> {
    let mut remaining: BTreeMap<String, SqlModel> =
        models.into_iter().map(|m| (m.id.clone(), m)).collect();
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut out = Vec::new();
    loop {
        let ready: Vec<String> = remaining
            .values()
            .filter(|m| m.depends_on.iter().all(|d| done.contains(d)))
            .map(|m| m.id.clone())
            .collect();
        if ready.is_empty() {
            break;
        }
        for id in ready {
            if let Some(m) = remaining.remove(&id) {
                done.insert(id);
                out.push(m);
            }
        }
    }
    if !remaining.is_empty() {
        let files: Vec<&str> = remaining.values().map(|m| m.file.as_str()).collect();
        let first = &remaining
            .values()
            .next()
            .map(|m| m.file.clone())
            .unwrap_or_default();
        problems.push(
            first,
            "",
            format!(
                "dependency cycle between {}: break the cycle",
                files.join(", ")
            ),
        );
        out.extend(remaining.into_values());
    }
    out
}

fn parse_model(
    kind: ModelKind,
    file: &str,
    sql: String,
    policies: &[&str],
    problems: &mut Problems,
) -> Option<SqlModel> {
    let stem = Path::new(file).file_stem()?.to_string_lossy().into_owned();
    if !is_identifier(&stem) {
        problems.push(
            file,
            "",
            format!(
                "file name `{stem}` is the {} id and must be lower-case letters, digits and `_`",
                kind.as_str()
            ),
        );
    }
    let mut header = BTreeMap::new();
    for (i, line) in sql.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() {
            continue;
        }
        let Some(rest) = t.strip_prefix("--") else {
            break;
        };
        let Some((key, value)) = rest.split_once(':') else {
            continue;
        };
        let key = key.trim();
        if key.contains(' ') {
            continue; // an ordinary comment
        }
        if !HEADER_KEYS.contains(&key) {
            problems.push(
                file,
                format!("line {}", i + 1),
                format!("unknown header key `{key}`: {}", one_of(key, HEADER_KEYS)),
            );
            continue;
        }
        header.insert(key.to_string(), value.trim().to_string());
    }
    let class = match header.get("class").map(String::as_str) {
        None | Some("customer") => Class::Customer,
        Some("prospect") => Class::Prospect,
        Some(other) => {
            problems.push(
                file,
                "header `class`",
                format!("unknown class `{other}`: valid values are `customer`, `prospect`"),
            );
            Class::Customer
        }
    };
    let policy = header.get("policy").cloned();
    if let Some(p) = &policy
        && !policies.contains(&p.as_str())
    {
        problems.push(
            file,
            "header `policy`",
            format!(
                "unknown merge policy `{p}`: {}",
                one_of(p, policies.iter().copied())
            ),
        );
    }
    let depends_on = match check_query(&sql) {
        Ok(deps) => deps,
        Err((line, msg)) => {
            problems.push(
                file,
                line.map(|l| format!("line {l}")).unwrap_or_default(),
                msg,
            );
            Vec::new()
        }
    };
    Some(SqlModel {
        name: header.get("name").cloned().unwrap_or_else(|| stem.clone()),
        description: header.get("description").cloned(),
        id: stem,
        kind,
        file: file.to_string(),
        policy,
        class,
        sql,
        depends_on,
    })
}

/// Check that `sql` is exactly one read-only query and return the relations it reads.
/// On error, the line (when known) and the message.
pub fn check_query(sql: &str) -> Result<Vec<String>, (Option<usize>, String)> {
    let mut statements =
        DFParser::parse_sql_with_dialect(sql, &GenericDialect {}).map_err(|e| {
            let msg = e.to_string();
            let line = line_of(&msg).or_else(|| {
                msg.contains("found: EOF")
                    .then(|| sql.trim_end().lines().count())
            });
            (
                line,
                format!(
                    "SQL does not parse: {}",
                    msg.trim_start_matches("SQL error: ")
                ),
            )
        })?;
    if statements.len() != 1 {
        return Err((
            None,
            format!(
                "expected exactly one SELECT query, found {} statements",
                statements.len()
            ),
        ));
    }
    let statement = statements
        .pop_front()
        .ok_or((None, "empty SQL file: write one SELECT query".to_string()))?;
    match &statement {
        DFStatement::Statement(s) if matches!(**s, Statement::Query(_)) => {}
        other => {
            let kind = match other {
                DFStatement::CreateExternalTable(_) => "CREATE EXTERNAL TABLE".to_string(),
                DFStatement::CopyTo(_) => "COPY".to_string(),
                DFStatement::Statement(s) => s
                    .to_string()
                    .split_whitespace()
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" "),
                _ => "this statement".to_string(),
            };
            return Err((
                None,
                format!("only a read-only SELECT query is allowed; `{kind}` is refused"),
            ));
        }
    }
    let (tables, _ctes) =
        resolve_table_references(&statement, true).map_err(|e| (None, e.to_string()))?;
    let mut deps = BTreeSet::new();
    for t in tables {
        if t.schema().is_some() || t.catalog().is_some() {
            return Err((
                None,
                format!(
                    "`{t}`: only plain relation names are allowed (profiles, events, identities, features, segments)"
                ),
            ));
        }
        deps.insert(t.table().to_string());
    }
    Ok(deps.into_iter().collect())
}

/// sqlparser messages end with "at Line: 3, Column: 5".
fn line_of(msg: &str) -> Option<usize> {
    let rest = msg.split("Line: ").nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_sql_must_be_read_only() {
        assert!(check_query("SELECT profile_id FROM profiles").is_ok());
        for bad in [
            "DROP TABLE profiles",
            "COPY profiles TO '/tmp/x.csv'",
            "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'",
            "INSERT INTO profiles VALUES (1)",
            "SELECT 1; SELECT 2",
        ] {
            assert!(check_query(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn segment_dependencies_found_from_sql() {
        let deps = check_query("WITH x AS (SELECT * FROM high_value) SELECT profile_id FROM x JOIN purchase_stats USING (profile_id)").unwrap();
        assert_eq!(
            deps,
            vec!["high_value".to_string(), "purchase_stats".to_string()]
        );
    }

    #[test]
    fn segment_parse_error_has_line() {
        let err = check_query("-- name: x\nSELECT profile_id\nFROM profiles WHERE (").unwrap_err();
        assert_eq!(err.0, Some(3), "{}", err.1);
        let err =
            check_query("-- name: x\nSELECT profile_id\nFROM profiles WHERE WHERE x = 1\nAND y")
                .unwrap_err();
        assert_eq!(err.0, Some(3), "{}", err.1);
    }
}
