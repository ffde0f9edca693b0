//! Destination schedules: a cron expression in UTC (parsed by `croner`) or
//! `manual`, and which destinations are due.
//!
//! A destination is **due** at `now` when a slot of its schedule falls in
//! `(from, now]`, where `from` is the later of its last successful export (the
//! latest as-of of a succeeded run that exported it) and
//! the time its schedule was first seen (`state/schedules.json`). So saving a
//! config never runs an export: a new or changed schedule fires at its next
//! slot. Missed slots run once, not once per missed slot.

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::{DateTime, Utc};

use crate::config::Project;
use crate::error::{Error, Result};
use crate::identity::store;

/// A parsed schedule.
#[derive(Debug, Clone)]
pub enum Schedule {
    Manual,
    Cron(Box<croner::Cron>),
}

/// Parse `manual` or a cron expression (five fields, minute granularity; UTC).
///
/// # Errors
/// A message saying what is wrong, for the caller to locate.
pub fn parse(text: &str) -> std::result::Result<Schedule, String> {
    let t = text.trim();
    if t == "manual" {
        return Ok(Schedule::Manual);
    }
    if t.split_whitespace().count() != 5 {
        return Err(format!(
            "`{t}` is not a cron expression: write five fields (minute hour day month weekday, UTC), e.g. \"0 6 * * *\", or \"manual\""
        ));
    }
    croner::Cron::from_str(t)
        .map(|c| Schedule::Cron(Box::new(c)))
        .map_err(|e| format!("`{t}` is not a cron expression: {e}"))
}

/// The latest slot at or before `now`, if any.
fn last_slot(cron: &croner::Cron, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    cron.find_previous_occurrence(&now, true).ok()
}

/// Whether `schedule` is due at `now` with nothing fired since `from`.
pub fn is_due(schedule: &Schedule, from: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    match schedule {
        Schedule::Manual => false,
        Schedule::Cron(c) => last_slot(c, now).is_some_and(|s| s > from),
    }
}

/// The next slot after `from` (when the scheduler should wake up), if any.
pub fn next_slot(schedule: &Schedule, from: DateTime<Utc>) -> Option<DateTime<Utc>> {
    match schedule {
        Schedule::Manual => None,
        Schedule::Cron(c) => c.find_next_occurrence(&from, false).ok(),
    }
}

/// `state/schedules.json`: per destination, the schedule text and when it was first seen.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Seen {
    pub destinations: BTreeMap<String, SeenSchedule>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SeenSchedule {
    pub schedule: String,
    pub since: DateTime<Utc>,
}

/// One destination's schedule state at `now`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    pub destination: String,
    pub schedule: String,
    /// The later of the last successful export and the schedule's first sighting.
    pub from: DateTime<Utc>,
    pub last_success: Option<DateTime<Utc>>,
    pub due: bool,
    pub next: Option<DateTime<Utc>>,
}

/// Schedules and the ledger at `now`: each destination's status. New or
/// changed schedules are recorded as seen at `now` (and are not due).
///
/// # Errors
/// Storage errors reading the ledger or writing `schedules.json`; a schedule
/// that does not parse (validation catches it first).
pub async fn statuses(project: &Project, now: DateTime<Utc>) -> Result<Vec<Status>> {
    let loc = project.state.join("schedules.json");
    let mut seen: Seen = match store::get(&loc).await? {
        Some(b) => serde_json::from_slice(&b).unwrap_or_default(),
        None => Seen::default(),
    };
    let mut last: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
    for r in crate::run::ledger::list(project).await? {
        if r.status != crate::run::RunStatus::Succeeded {
            continue;
        }
        // The as-of of a run is its point in time (a scheduled run's is its start).
        let Ok(t) = DateTime::parse_from_rfc3339(&r.as_of) else {
            continue;
        };
        for e in &r.exports {
            let t = t.with_timezone(&Utc);
            let slot = last.entry(e.destination.clone()).or_insert(t);
            *slot = (*slot).max(t);
        }
    }
    let mut changed = false;
    let mut out = Vec::new();
    for d in &project.destinations {
        let text = d.schedule.clone().unwrap_or_else(|| "manual".into());
        let schedule = parse(&text).map_err(|m| Error::Export {
            destination: d.name.clone(),
            message: m,
        })?;
        let entry = seen.destinations.entry(d.name.clone());
        let s = entry.or_insert_with(|| {
            changed = true;
            SeenSchedule {
                schedule: text.clone(),
                since: now,
            }
        });
        if s.schedule != text {
            *s = SeenSchedule {
                schedule: text.clone(),
                since: now,
            };
            changed = true;
        }
        let last_success = last.get(&d.name).copied();
        let from = last_success.map_or(s.since, |l| l.max(s.since));
        out.push(Status {
            destination: d.name.clone(),
            schedule: text,
            from,
            last_success,
            due: is_due(&schedule, from, now),
            next: next_slot(&schedule, from.max(now)),
        });
    }
    if changed {
        let json = serde_json::to_vec_pretty(&seen).map_err(|e| Error::Internal(e.to_string()))?;
        store::put(&loc, json).await?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn schedule_due_and_missed_slots() {
        let daily = parse("0 6 * * *").expect("cron");
        let since = t("2025-01-01T00:00:00Z");
        assert!(!is_due(&daily, since, t("2025-01-01T05:59:59Z")));
        assert!(is_due(&daily, since, t("2025-01-01T06:00:00Z")));
        // Ran at 06:01: not due again until the next slot.
        let ran = t("2025-01-01T06:01:00Z");
        assert!(!is_due(&daily, ran, t("2025-01-01T23:00:00Z")));
        // Two slots missed: due (once: after one run it is not due again).
        assert!(is_due(&daily, ran, t("2025-01-03T07:00:00Z")));
        assert!(!is_due(
            &daily,
            t("2025-01-03T07:00:05Z"),
            t("2025-01-03T07:30:00Z")
        ));
        assert_eq!(next_slot(&daily, ran), Some(t("2025-01-02T06:00:00Z")));
        // Manual never fires.
        let manual = parse("manual").expect("manual");
        assert!(!is_due(&manual, since, t("2030-01-01T00:00:00Z")));
        assert!(next_slot(&manual, since).is_none());
        assert!(parse("every day").is_err());
        assert!(parse("61 * * * *").is_err());
    }
}
