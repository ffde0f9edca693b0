//! The SQL of one merge policy: which attributes the fused winners aggregate
//! resolves (method, `most_recent`, `least_recent`, `precedence`, field
//! groups), which stock aggregates resolve the rest (`min`, `max`, `collect`,
//! `most_frequent`), and the columns of the unified profile, provenance included.

use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;

use super::string_literal;
use super::winners::{Order, Slot};
use crate::config::{AttributeRule, MergeMethod, MergePolicy};
use crate::error::{Problems, Result, one_of};
use crate::identity::quote;
use crate::ingest::Ingested;

/// A policy's merge, ready to become SQL.
#[derive(Debug)]
pub(crate) struct Plan {
    pub slots: Vec<Slot>,
    /// Arguments of the winners aggregate after (time, dataset), one per slot.
    args: Vec<String>,
    /// Other aggregates of the per-profile query.
    aggs: Vec<String>,
    /// `most_frequent` subqueries, joined by profile.
    ctes: Vec<String>,
    /// Output columns after the profile skeleton's.
    columns: Vec<String>,
    /// Typed empty lists for `collect` attributes of profiles with no value.
    pub params: Vec<ScalarValue>,
}

impl Plan {
    /// # Errors
    /// [`Error::Config`] when a rule, group or provenance entry names an
    /// attribute that no profile dataset of the class has.
    ///
    /// `id_ns` (stitching off only): namespaces whose preferred value and list
    /// are merged from the records' normalised identities (`__id_<k>` columns).
    pub fn new(
        policy: &MergePolicy,
        attrs: &[(String, DataType)],
        named: &[&Ingested],
        id_ns: &[&str],
    ) -> Result<Plan> {
        let path = format!("merge_policies.{}", policy.name);
        let names: Vec<&str> = attrs.iter().map(|(a, _)| a.as_str()).collect();
        let mut problems = Problems::default();
        let mut check = |attr: &str, at: String| {
            if !names.contains(&attr) {
                problems.push(
                    "audience.toml",
                    at,
                    format!(
                        "no {} profile dataset has a column `{attr}`: {}",
                        policy.class.as_str(),
                        one_of(attr, names.iter().copied())
                    ),
                );
            }
        };
        for a in policy.rules.keys() {
            check(a, format!("{path}.attributes.{a}"));
        }
        for (g, fields) in &policy.groups {
            for f in fields {
                check(f, format!("{path}.groups.{g}"));
            }
        }
        if let crate::config::Provenance::Some(list) = &policy.provenance {
            for a in list {
                check(a, format!("{path}.provenance"));
            }
        }
        problems.into_result()?;

        let ranks = |list: &[String]| -> Vec<Option<u32>> {
            named
                .iter()
                .map(|d| {
                    list.iter()
                        .position(|n| n == &d.dataset.name)
                        .map(|p| p as u32)
                })
                .collect()
        };
        let method_order = match policy.method {
            MergeMethod::Timestamp => Order::MostRecent,
            MergeMethod::Precedence => Order::Precedence(ranks(&policy.precedence)),
        };
        let source = |slot: usize| {
            let whens: String = named
                .iter()
                .enumerate()
                .map(|(i, d)| format!(" WHEN {i} THEN {}", string_literal(&d.dataset.name)))
                .collect();
            format!("CASE m.\"__w\"['s{slot}__ds']{whens} END")
        };
        let mut plan = Plan {
            slots: Vec::new(),
            args: Vec::new(),
            aggs: Vec::new(),
            ctes: Vec::new(),
            columns: Vec::new(),
            params: Vec::new(),
        };
        for (k, ns) in id_ns.iter().enumerate() {
            // Preferred value: the most recent (ties: dataset, smallest value); and every value.
            let s = plan.slots.len();
            plan.slots.push(Slot {
                name: format!("s{s}"),
                order: Order::MostRecent,
            });
            let col = format!("__id_{k}");
            plan.args.push(quote(&col));
            plan.columns
                .push(format!("m.\"__w\"['s{s}'] AS {}", quote(ns)));
            plan.collect(&col, &format!("{ns}_all"), &DataType::Utf8);
        }
        let mut group_slot: Vec<(String, usize)> = Vec::new();
        for (attr, t) in attrs {
            let q = quote(attr);
            let group = policy
                .groups
                .iter()
                .find(|(_, fields)| fields.contains(attr));
            let rule = policy.rule(attr);
            let slot = if let Some((g, fields)) = group {
                let slot = match group_slot.iter().find(|(n, _)| n == g) {
                    Some((_, s)) => *s,
                    None => {
                        let s = plan.slots.len();
                        plan.slots.push(Slot {
                            name: format!("s{s}"),
                            order: method_order.clone(),
                        });
                        let members: Vec<String> = fields
                            .iter()
                            .map(|f| format!("{}, {}", string_literal(f), quote(f)))
                            .collect();
                        plan.args
                            .push(format!("named_struct({})", members.join(", ")));
                        group_slot.push((g.clone(), s));
                        s
                    }
                };
                plan.columns.push(format!(
                    "m.\"__w\"['s{slot}'][{}] AS {q}",
                    string_literal(attr)
                ));
                Some(slot)
            } else {
                let order = match rule.map(|r| r.rule) {
                    None => Some(method_order.clone()),
                    Some(AttributeRule::MostRecent) => Some(Order::MostRecent),
                    Some(AttributeRule::LeastRecent) => Some(Order::LeastRecent),
                    Some(AttributeRule::Precedence) => Some(Order::Precedence(ranks(
                        rule.map(|r| r.precedence.as_slice()).unwrap_or_default(),
                    ))),
                    Some(_) => None,
                };
                match order {
                    Some(order) => {
                        let s = plan.slots.len();
                        plan.slots.push(Slot {
                            name: format!("s{s}"),
                            order,
                        });
                        plan.args.push(q.clone());
                        plan.columns.push(format!("m.\"__w\"['s{s}'] AS {q}"));
                        Some(s)
                    }
                    None => {
                        plan.other_rule(attr, t, rule.map(|r| r.rule));
                        None
                    }
                }
            };
            if let Some(s) = slot
                && policy.has_provenance(attr)
            {
                plan.columns.push(format!(
                    "{} AS {}",
                    source(s),
                    quote(&format!("{attr}__source"))
                ));
                plan.columns.push(format!(
                    "m.\"__w\"['s{s}__ts'] AS {}",
                    quote(&format!("{attr}__updated_at"))
                ));
            }
        }
        Ok(plan)
    }

    /// `min`, `max`, `collect` and `most_frequent`: stock aggregates.
    fn other_rule(&mut self, attr: &str, t: &DataType, rule: Option<AttributeRule>) {
        let q = quote(attr);
        match rule {
            Some(AttributeRule::Min) => {
                self.aggs.push(format!("min({q}) AS {q}"));
                self.columns.push(format!("m.{q} AS {q}"));
            }
            Some(AttributeRule::Max) => {
                self.aggs.push(format!("max({q}) AS {q}"));
                self.columns.push(format!("m.{q} AS {q}"));
            }
            Some(AttributeRule::Collect) => {
                self.aggs.push(format!(
                    "array_sort(array_agg(DISTINCT {q}) FILTER (WHERE {q} IS NOT NULL)) AS {q}"
                ));
                self.params
                    .push(ScalarValue::List(ScalarValue::new_list_nullable(&[], t)));
                self.columns
                    .push(format!("coalesce(m.{q}, ${}) AS {q}", self.params.len()));
            }
            _ => {
                // most_frequent: count per value; ties: most recent occurrence, then smallest value.
                let name = format!("__mf{}", self.ctes.len());
                self.ctes.push(format!(
                    "{name} AS (SELECT profile_id, first_value(v ORDER BY n DESC, last DESC, v ASC) AS v \
                     FROM (SELECT profile_id, {q} AS v, count(*) AS n, max(__ts) AS last FROM __recs \
                     WHERE {q} IS NOT NULL GROUP BY profile_id, {q}) GROUP BY profile_id)"
                ));
                self.columns.push(format!("{name}.v AS {q}"));
            }
        }
    }

    /// `out`: the sorted distinct non-null values of column `col` (`[]` when none).
    fn collect(&mut self, col: &str, out: &str, t: &DataType) {
        let (q, o) = (quote(col), quote(out));
        self.aggs.push(format!(
            "array_sort(array_agg(DISTINCT {q}) FILTER (WHERE {q} IS NOT NULL)) AS {o}"
        ));
        self.params
            .push(ScalarValue::List(ScalarValue::new_list_nullable(&[], t)));
        self.columns
            .push(format!("coalesce(m.{o}, ${}) AS {o}", self.params.len()));
    }

    /// The query: the profile skeleton `base` left-joined with the merged
    /// attributes; without `base` (stitching off), the merged records alone.
    pub fn sql(&self, winners_fn: &str, base: Option<&str>) -> String {
        let mut per_profile = vec!["profile_id".to_string()];
        if !self.slots.is_empty() {
            per_profile.push(format!(
                "{}(__ts, __ds, {}) AS \"__w\"",
                quote(winners_fn),
                self.args.join(", ")
            ));
        }
        per_profile.extend(self.aggs.iter().cloned());
        let mut with = vec![format!(
            "m AS (SELECT {} FROM __recs GROUP BY profile_id)",
            per_profile.join(", ")
        )];
        with.extend(self.ctes.iter().cloned());
        let key = if base.is_some() { "b" } else { "m" };
        let joins: String = (0..self.ctes.len())
            .map(|i| format!(" LEFT JOIN __mf{i} ON {key}.profile_id = __mf{i}.profile_id"))
            .collect();
        let mut cols = vec![match base {
            Some(_) => "b.*".to_string(),
            None => "m.profile_id".to_string(),
        }];
        cols.extend(self.columns.iter().cloned());
        let from = match base {
            Some(base) => format!("{base} b LEFT JOIN m ON b.profile_id = m.profile_id"),
            None => "m".to_string(),
        };
        format!(
            "WITH {} SELECT {} FROM {from}{joins} ORDER BY {key}.profile_id",
            with.join(", "),
            cols.join(", ")
        )
    }
}
