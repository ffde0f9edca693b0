//! `audience explain`: why an identity is in its profile.
//!
//! Reads a run's identity outputs (the latest successful run by default): the
//! profile of the identity, all its identities, and for each the shortest path
//! of used links from the asked identity (each link with its dataset and record
//! time); links of the profile that were cut or dropped, with the reason; and
//! the quarantine reason when the identity is a hub.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;

use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::arrow::util::display::array_value_to_string;

use super::normalise::Normaliser;
use super::store;
use crate::config::{Class, Project};
use crate::error::{Error, Problems, Result, one_of};

/// One link on a path.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Step {
    pub from: String,
    pub to: String,
    pub dataset: String,
    pub linked_at: String,
}

/// An identity of the profile and how it joined.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Member {
    pub identity: String,
    pub first_seen: String,
    pub last_seen: String,
    pub datasets: String,
    /// Links from the asked identity to this one (empty for the asked identity itself).
    pub path: Vec<Step>,
}

/// A link touching the profile that was not used.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Unused {
    pub from: String,
    pub to: String,
    pub dataset: String,
    pub linked_at: String,
    pub status: String,
    pub reason: String,
}

/// The answer of `audience explain`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Explanation {
    pub run_id: String,
    pub identity: String,
    pub class: String,
    pub profile_id: String,
    pub quarantined: Option<String>,
    pub members: Vec<Member>,
    pub unused_links: Vec<Unused>,
}

type Row = BTreeMap<String, String>;

fn rows(batches: &[RecordBatch]) -> Result<Vec<Row>> {
    let mut out = Vec::new();
    for b in batches {
        for i in 0..b.num_rows() {
            let mut r = Row::new();
            for (f, c) in b.schema().fields().iter().zip(b.columns()) {
                let v = if c.is_null(i) {
                    String::new()
                } else {
                    array_value_to_string(c, i).map_err(|e| Error::Internal(e.to_string()))?
                };
                r.insert(f.name().clone(), v);
            }
            out.push(r);
        }
    }
    Ok(out)
}

async fn read_rows(project: &Project, run: &str, file: &str) -> Result<Vec<Row>> {
    let loc = store::run_dir(project, run).join(file);
    let bytes = store::get(&loc).await?.ok_or_else(|| {
        let mut p = Problems::default();
        p.push(&loc.display(), "", format!("run `{run}` has no {file}; run `audience run` first, or pass --run with a run that finished"));
        Error::Config(p)
    })?;
    rows(&store::read_parquet(bytes, &loc.display())?)
}

/// Parse `namespace:value` (value as written or normalised) into the namespace
/// and the normalised value. `what` names the command in messages.
///
/// # Errors
/// [`Error::Config`] for a missing colon, an unknown namespace or an invalid value.
pub fn parse_identity<'p>(
    project: &'p Project,
    identity: &str,
    what: &str,
) -> Result<(&'p crate::config::Namespace, String)> {
    let bad = |msg: String| {
        let mut p = Problems::default();
        p.push(what, "", msg);
        Error::Config(p)
    };
    let (ns_name, raw) = identity.split_once(':').ok_or_else(|| {
        bad(format!(
            "`{identity}` is not an identity: write `namespace:value`"
        ))
    })?;
    let names: Vec<&str> = project.namespaces.iter().map(|n| n.name.as_str()).collect();
    let ns = project.namespace(ns_name).ok_or_else(|| {
        bad(format!(
            "unknown namespace `{ns_name}`: {}",
            one_of(ns_name, names.iter().copied())
        ))
    })?;
    let value = Normaliser::new(ns)
        .apply(raw)
        .map_err(|r| {
            bad(format!(
                "`{raw}` is not a valid {ns_name} value ({})",
                r.as_str()
            ))
        })?
        .into_owned();
    Ok((ns, value))
}

/// Explain `identity` (`namespace:value`, the value as written or normalised).
///
/// # Errors
/// [`Error::Config`] for an unknown namespace, an invalid value, no finished run,
/// or an identity the run did not see.
pub async fn explain(
    project: &Project,
    identity: &str,
    class: Class,
    run: Option<&str>,
) -> Result<Explanation> {
    let bad = |msg: String| {
        let mut p = Problems::default();
        p.push("explain", "", msg);
        Error::Config(p)
    };
    let (ns, value) = parse_identity(project, identity, "explain")?;
    let ns_name = ns.name.as_str();
    let key = format!("{ns_name}:{value}");
    let run_id = match run {
        Some(r) => r.to_string(),
        None => store::latest_run(project)
            .await?
            .ok_or_else(|| bad("no successful run yet: run `audience run` first".into()))?,
    };
    let map = read_rows(project, &run_id, "identity_map.parquet").await?;
    let class_s = class.as_str();
    let id_of = |r: &Row| format!("{}:{}", r["namespace"], r["value"]);
    let me = map
        .iter()
        .find(|r| r["class"] == class_s && r["namespace"] == ns_name && r["value"] == value)
        .ok_or_else(|| {
            bad(format!(
                "{class_s} identity `{key}` was not seen in run `{run_id}`"
            ))
        })?;
    let profile_id = me["profile_id"].clone();
    let members: Vec<&Row> = map
        .iter()
        .filter(|r| r["class"] == class_s && r["profile_id"] == profile_id)
        .collect();
    let links = read_rows(project, &run_id, "links.parquet").await?;
    let in_profile: HashMap<String, &Row> = members.iter().map(|r| (id_of(r), *r)).collect();
    let mut adj: HashMap<String, Vec<(String, Step)>> = HashMap::new();
    let mut unused = Vec::new();
    for l in links.iter().filter(|l| l["class"] == class_s) {
        let a = format!("{}:{}", l["anchor_namespace"], l["anchor_value"]);
        let b = format!("{}:{}", l["other_namespace"], l["other_value"]);
        if !in_profile.contains_key(&a) && !in_profile.contains_key(&b) {
            continue;
        }
        let step = |from: &str, to: &str| Step {
            from: from.to_string(),
            to: to.to_string(),
            dataset: l["dataset"].clone(),
            linked_at: l["linked_at"].clone(),
        };
        if l["status"] == "used" {
            adj.entry(a.clone())
                .or_default()
                .push((b.clone(), step(&a, &b)));
            adj.entry(b.clone())
                .or_default()
                .push((a.clone(), step(&b, &a)));
        } else {
            unused.push(Unused {
                from: a,
                to: b,
                dataset: l["dataset"].clone(),
                linked_at: l["linked_at"].clone(),
                status: l["status"].clone(),
                reason: l["reason"].clone(),
            });
        }
    }
    // Shortest paths from the asked identity (neighbours in sorted order: deterministic).
    for v in adj.values_mut() {
        v.sort_by(|x, y| x.0.cmp(&y.0));
    }
    let mut path: HashMap<String, Vec<Step>> = HashMap::from([(key.clone(), Vec::new())]);
    let mut queue = VecDeque::from([key.clone()]);
    while let Some(x) = queue.pop_front() {
        let here = path[&x].clone();
        for (y, step) in adj.get(&x).map(Vec::as_slice).unwrap_or_default() {
            if !path.contains_key(y) {
                let mut p = here.clone();
                p.push(step.clone());
                path.insert(y.clone(), p);
                queue.push_back(y.clone());
            }
        }
    }
    let quarantined = read_rows(project, &run_id, "quarantined.parquet")
        .await?
        .into_iter()
        .find(|q| q["class"] == class_s && q["namespace"] == ns_name && q["value"] == value)
        .map(|q| q["reason"].clone());
    let mut out_members: Vec<Member> = members
        .iter()
        .map(|r| Member {
            identity: id_of(r),
            first_seen: r["first_seen"].clone(),
            last_seen: r["last_seen"].clone(),
            datasets: r["datasets"].clone(),
            path: path.get(&id_of(r)).cloned().unwrap_or_default(),
        })
        .collect();
    out_members.sort_by(|a, b| (a.path.len(), &a.identity).cmp(&(b.path.len(), &b.identity)));
    Ok(Explanation {
        run_id,
        identity: key,
        class: class_s.into(),
        profile_id,
        quarantined,
        members: out_members,
        unused_links: unused,
    })
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} ({}) is in profile {} (run {})",
            self.identity, self.class, self.profile_id, self.run_id
        )?;
        if let Some(q) = &self.quarantined {
            writeln!(f, "  quarantined: {q}; none of its links is used")?;
        }
        writeln!(f, "{} identities:", self.members.len())?;
        for m in &self.members {
            writeln!(
                f,
                "  {}  (first seen {}, last seen {}, in {})",
                m.identity, m.first_seen, m.last_seen, m.datasets
            )?;
            for s in &m.path {
                writeln!(
                    f,
                    "      via {} -> {}  [{} at {}]",
                    s.from, s.to, s.dataset, s.linked_at
                )?;
            }
        }
        if !self.unused_links.is_empty() {
            writeln!(f, "links not used:")?;
            for u in &self.unused_links {
                writeln!(
                    f,
                    "  {} -> {}  [{} at {}]: {} ({})",
                    u.from, u.to, u.dataset, u.linked_at, u.status, u.reason
                )?;
            }
        }
        Ok(())
    }
}
