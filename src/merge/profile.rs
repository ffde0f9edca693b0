//! `audience profile <namespace>:<value>`: one unified profile, attribute by
//! attribute: the winning value, its source dataset and time, and every other
//! candidate value with where and when it was seen.
//!
//! The profile is derived from the inputs at the as-of exactly as a run would
//! (ingest, identity graph with the latest run's ids carried over, merge), with
//! the identity outputs kept in memory: nothing is written.

use std::collections::BTreeMap;
use std::fmt;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::TimestampMicrosecondType;
use datafusion::arrow::util::display::array_value_to_string;
use serde::Serialize;

use crate::config::{
    AttributeRule, Class, DatasetKind, MergeMethod, Project, Provenance, Stitching,
};
use crate::error::{Error, Problems, Result, one_of};
use crate::identity::anchor;
use crate::ingest::class_columns;

/// One candidate value of an attribute.
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    pub value: String,
    pub dataset: String,
    pub time: String,
    /// Whether this record gave the winning value.
    pub winner: bool,
}

/// One attribute of the profile.
#[derive(Debug, Clone, Serialize)]
pub struct AttributeReport {
    pub attribute: String,
    /// How it is resolved: the method or the attribute's rule, or its group.
    pub rule: String,
    pub value: Option<String>,
    pub source: Option<String>,
    pub updated_at: Option<String>,
    /// Every non-null value of the profile's records, newest first.
    pub candidates: Vec<Candidate>,
}

/// A unified profile with its evidence.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileReport {
    pub profile_id: String,
    pub class: String,
    pub policy: String,
    pub as_of: String,
    /// Namespace → its identities in the profile (preferred value first).
    pub identities: BTreeMap<String, Vec<String>>,
    pub attributes: Vec<AttributeReport>,
}

fn bad(msg: String) -> Error {
    let mut p = Problems::default();
    p.push("profile", "", msg);
    Error::Config(p)
}

fn cell(b: &RecordBatch, col: &str, row: usize) -> Option<String> {
    let a = b.column_by_name(col)?;
    if a.is_null(row) {
        return None;
    }
    if let Some(t) = a.as_primitive_opt::<TimestampMicrosecondType>() {
        return chrono::DateTime::from_timestamp_micros(t.value(row)).map(|t| t.to_rfc3339());
    }
    array_value_to_string(a, row).ok()
}

/// Build the report of the profile holding `identity` under `policy` (default:
/// the class default) at `as_of`.
///
/// # Errors
/// [`Error::Config`] for a bad identity, an unknown policy or an identity the
/// inputs do not have; what a run would report for bad inputs.
pub async fn profile(
    project: &Project,
    identity: &str,
    class: Class,
    policy: Option<&str>,
    as_of: chrono::DateTime<chrono::Utc>,
) -> Result<ProfileReport> {
    let (ns, value) = crate::identity::explain::parse_identity(project, identity, "profile")?;
    let policy = match policy {
        Some(name) => project.policy(name).ok_or_else(|| {
            bad(format!(
                "unknown merge policy `{name}`: {}",
                one_of(name, project.policies.iter().map(|p| p.name.as_str()))
            ))
        })?,
        None => project
            .default_policy(class)
            .ok_or_else(|| bad(format!("no {} merge policy", class.as_str())))?,
    };
    let class = policy.class;
    let (ctx, datasets, stitched) = crate::run::stitch_in_memory(project, as_of).await?;
    let ns_idx = project
        .namespaces
        .iter()
        .position(|n| n.name == ns.name)
        .unwrap_or_default();
    let profile_id = match policy.stitching {
        Stitching::Graph => stitched
            .lookup
            .get(class, ns_idx as u16, &value)
            .map(|(_, p)| stitched.lookup.profile_id(p).to_string()),
        Stitching::None => Some(anchor::unstitched_id(class, &ns.name, &value)),
    }
    .ok_or_else(|| {
        bad(format!(
            "no {} record or event has {}:{value} at {}",
            class.as_str(),
            ns.name,
            as_of.to_rfc3339()
        ))
    })?;

    // Every provenance column, whatever the policy says, to show sources and times.
    let mut shown = policy.clone();
    shown.provenance = Provenance::All;
    let (_, batches) = super::profiles(&ctx, project, &datasets, &shown).await?;
    let found = batches.iter().find_map(|b| {
        let ids = b.column_by_name("profile_id")?.as_string_opt::<i32>()?;
        (0..b.num_rows())
            .find(|&i| ids.value(i) == profile_id)
            .map(|i| (b, i))
    });
    let Some((batch, row)) = found else {
        return Err(bad(format!(
            "{}:{value} has no {} profile under policy `{}` (stitching off: only identities that key a profile record have one)",
            ns.name,
            class.as_str(),
            policy.name
        )));
    };
    let mut identities = BTreeMap::new();
    for n in &project.namespaces {
        let all = batch
            .column_by_name(&format!("{}_all", n.name))
            .filter(|a| a.is_valid(row))
            .map(|a| a.as_list::<i32>().value(row));
        let mut values: Vec<String> = all
            .map(|l| {
                (0..l.len())
                    .filter_map(|i| array_value_to_string(&l, i).ok())
                    .collect()
            })
            .unwrap_or_default();
        if let Some(pref) = cell(batch, &n.name, row) {
            values.retain(|v| v != &pref);
            values.insert(0, pref);
        }
        if !values.is_empty() {
            identities.insert(n.name.clone(), values);
        }
    }

    // Candidate records: the merge input of this profile.
    let mut named: Vec<&str> = datasets
        .iter()
        .filter(|d| d.dataset.class == class && d.dataset.kind == DatasetKind::Profile)
        .map(|d| d.dataset.name.as_str())
        .collect();
    named.sort_unstable();
    let attrs = class_columns(&datasets, class, DatasetKind::Profile);
    let recs = if attrs.is_empty() && policy.stitching == Stitching::Graph {
        Vec::new()
    } else {
        ctx.sql(&format!(
            "SELECT * FROM __recs WHERE profile_id = {} ORDER BY __ts DESC, __ds",
            crate::merge::string_literal(&profile_id)
        ))
        .await
        .map_err(Error::engine("profile"))?
        .collect()
        .await
        .map_err(Error::engine("profile"))?
    };
    let mut attributes = Vec::new();
    for (attr, _) in &attrs {
        let group = policy.groups.iter().find(|(_, f)| f.contains(attr));
        let rule = match (group, policy.rule(attr)) {
            (Some((g, _)), _) => format!("group `{g}` ({})", method(policy)),
            (None, Some(r)) if r.rule == AttributeRule::Precedence => {
                format!("precedence {:?}", r.precedence)
            }
            (None, Some(r)) => r.rule.as_str().to_string(),
            (None, None) => method(policy),
        };
        let value = cell(batch, attr, row);
        let source = cell(batch, &format!("{attr}__source"), row);
        let updated_at = cell(batch, &format!("{attr}__updated_at"), row);
        let mut candidates = Vec::new();
        for b in &recs {
            for i in 0..b.num_rows() {
                let Some(v) = cell(b, attr, i) else { continue };
                let ds = b
                    .column_by_name("__ds")
                    .and_then(|a| a.as_primitive_opt::<datafusion::arrow::datatypes::UInt32Type>())
                    .map(|a| a.value(i) as usize)
                    .and_then(|d| named.get(d))
                    .map(|d| d.to_string())
                    .unwrap_or_default();
                let time = cell(b, "__ts", i).unwrap_or_default();
                let winner = match (&source, &updated_at) {
                    (Some(s), Some(t)) => s == &ds && t == &time && value.as_ref() == Some(&v),
                    _ => value.as_ref() == Some(&v),
                };
                candidates.push(Candidate {
                    value: v,
                    dataset: ds,
                    time,
                    winner,
                });
            }
        }
        attributes.push(AttributeReport {
            attribute: attr.clone(),
            rule,
            value,
            source,
            updated_at,
            candidates,
        });
    }
    Ok(ProfileReport {
        profile_id,
        class: class.as_str().to_string(),
        policy: policy.name.clone(),
        as_of: as_of.to_rfc3339(),
        identities,
        attributes,
    })
}

fn method(policy: &crate::config::MergePolicy) -> String {
    match policy.method {
        MergeMethod::Timestamp => "most recent".to_string(),
        MergeMethod::Precedence => format!("precedence {:?}", policy.precedence),
    }
}

impl fmt::Display for ProfileReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "profile {} ({}, policy {}, as-of {})",
            self.profile_id, self.class, self.policy, self.as_of
        )?;
        writeln!(f, "identities:")?;
        for (ns, values) in &self.identities {
            writeln!(f, "  {ns}: {}", values.join(", "))?;
        }
        writeln!(f, "attributes:")?;
        for a in &self.attributes {
            let from = match (&a.source, &a.updated_at) {
                (Some(s), Some(t)) => format!("  from {s} at {t}"),
                _ => String::new(),
            };
            writeln!(
                f,
                "  {} = {}  [{}]{from}",
                a.attribute,
                a.value.as_deref().unwrap_or("NULL"),
                a.rule
            )?;
            for c in &a.candidates {
                if !c.winner {
                    writeln!(f, "      lost: {} ({} at {})", c.value, c.dataset, c.time)?;
                }
            }
        }
        Ok(())
    }
}
