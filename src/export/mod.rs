//! Stage 5: exports. Segment memberships → full files in destinations, with
//! the publish protocol (SPEC §7).
//!
//! Two phases. **Prepare**, for every destination and segment: members (less
//! oversized profiles) joined to their profiles in `profile_id` order, then
//! consent, field mapping and transforms, mandatory fields, the dedup key and
//! `max_profiles` ([`rows`]). A limit exceeded with `on_limit = "fail"` stops the
//! run here, before any file of any destination is written. **Publish**, per
//! destination: any `_SUCCESS` of this run id is removed; the data files are
//! encoded ([`encode`]) and uploaded ([`publish`]), encoding the next file while
//! the previous one uploads; then `<run_id>/manifest.json`; then
//! `<run_id>/_SUCCESS`. A failure or a kill before the end leaves no
//! `_SUCCESS` (and no manifest) for the run; re-running the run id rewrites the
//! same files with the same bytes.

pub mod encode;
pub mod publish;
pub mod rows;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use object_store::ObjectStoreExt;

use crate::config::{Destination, DestinationKind, NormaliserKind, Project};
use crate::engine::Batches;
use crate::engine::storage::put;
use crate::error::{Error, Result, one_of};
use crate::segment::Membership;

pub use rows::{Counts, Delta};

/// One file in a manifest.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ManifestFile {
    /// Relative to the destination URL.
    pub path: String,
    pub segment: String,
    /// 1-based part number within the segment.
    pub part: u32,
    /// `full`, or `entered`/`exited` for delta files.
    #[serde(default)]
    pub delta: Delta,
    pub rows: u64,
    pub bytes: u64,
    pub sha256: String,
}

/// What happened to one segment's members in one destination.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SegmentExport {
    pub segment: String,
    #[serde(flatten)]
    pub counts: Counts,
}

/// `manifest.json`, written after the data files and before `_SUCCESS`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ExportManifest {
    pub run_id: String,
    pub as_of: String,
    pub destination: String,
    pub kind: String,
    pub format: String,
    pub compression: String,
    pub files: Vec<ManifestFile>,
    pub segments: Vec<SegmentExport>,
    pub config_sha256: String,
    pub sql_sha256: String,
    pub engine_version: String,
    /// Storage writes repeated after a transient error.
    #[serde(default)]
    pub retries: u64,
}

impl ExportManifest {
    /// Rows exported in full files (delta files not counted).
    pub fn rows(&self) -> u64 {
        self.files
            .iter()
            .filter(|f| f.delta == Delta::Full)
            .map(|f| f.rows)
            .sum()
    }
}

/// Profiles of each merge policy, as the export reads them.
pub type ProfilesByPolicy = BTreeMap<String, Batches>;

/// Check that every column a destination reads (fields, consent attribute) is
/// an exportable column of its class's profiles, before any row is read; each
/// bad name is reported once.
pub fn check_fields(project: &Project, datasets: &[crate::ingest::Ingested]) -> Result<()> {
    let mut problems = crate::error::Problems::default();
    for d in &project.destinations {
        let exportable = crate::merge::exportable_columns(project, datasets, d.class);
        for (i, f) in d.fields.iter().enumerate() {
            if let crate::config::Source::Column(c) = &f.source
                && !exportable.contains(c)
            {
                problems.push(
                    crate::config::CONFIG_FILE,
                    format!("destinations.{}.fields[{i}]", d.name),
                    format!(
                        "`{c}` is not an exportable {} profile column: {}",
                        d.class.as_str(),
                        one_of(c, exportable.iter().map(String::as_str))
                    ),
                );
            }
        }
        if let Some(c) = &d.consent
            && !exportable.contains(&c.attribute)
        {
            problems.push(
                crate::config::CONFIG_FILE,
                format!("consent.{}.attribute", c.purpose),
                format!(
                    "`{}` (consent for destination `{}`) is not a {} profile attribute: {}",
                    c.attribute,
                    d.name,
                    d.class.as_str(),
                    one_of(&c.attribute, exportable.iter().map(String::as_str))
                ),
            );
        }
    }
    problems.into_result()
}

/// What the exports read: memberships, each policy's profiles, and the
/// profiles excluded from every export (oversized).
pub struct Audiences<'a> {
    pub memberships: &'a [Membership],
    pub profiles: &'a ProfilesByPolicy,
    pub oversized: &'a std::collections::BTreeSet<String>,
    /// Members per segment in the baseline run (the previous successful run
    /// by as-of), for delta files; `None` when there is none.
    pub baseline: Option<&'a crate::segment::history::Members>,
}

impl Audiences<'_> {
    fn membership(&self, segment: &str) -> Result<&Membership> {
        self.memberships
            .iter()
            .find(|m| m.segment == segment)
            .ok_or_else(|| Error::Internal(format!("segment {segment} has no membership")))
    }
}

/// The run an export belongs to.
pub struct RunInfo<'a> {
    pub run_id: &'a str,
    /// Also the `{date}`, `{time}` and `{as_of}` tokens of file names, so that
    /// re-running a run id at its as-of writes the same names.
    pub as_of: DateTime<Utc>,
    /// Stops the export between files and parts.
    pub interrupt: &'a crate::run::interrupt::Interrupt,
}

/// Everything prepared for one destination.
struct Ready<'a> {
    d: &'a Destination,
    segments: Vec<rows::Prepared>,
}

impl Ready<'_> {
    /// The counts of each segment's full file.
    fn segment_counts(&self) -> Vec<SegmentExport> {
        self.segments
            .iter()
            .filter(|p| p.delta == Delta::Full)
            .map(|p| SegmentExport {
                segment: p.segment.clone(),
                counts: p.counts.clone(),
            })
            .collect()
    }
}

/// A file a run would write.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PlannedFile {
    pub path: String,
    pub segment: String,
    pub delta: Delta,
    pub rows: u64,
}

/// What a run would export to one destination.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PlannedExport {
    pub destination: String,
    pub url: String,
    pub files: Vec<PlannedFile>,
    pub segments: Vec<SegmentExport>,
}

impl PlannedExport {
    /// Rows a run would export in full files (delta files not counted).
    pub fn rows(&self) -> u64 {
        self.files
            .iter()
            .filter(|f| f.delta == Delta::Full)
            .map(|f| f.rows)
            .sum()
    }
}

/// Everything [`export`] would write, prepared the same way (limits and pack
/// checks included), with nothing written.
///
/// # Errors
/// As [`export`]'s preparation.
pub async fn plan(
    ctx: &SessionContext,
    project: &Project,
    run: &RunInfo<'_>,
    audiences: &Audiences<'_>,
) -> Result<Vec<PlannedExport>> {
    let mut out = Vec::new();
    for d in &project.destinations {
        let r = prepare_destination(ctx, project, d, audiences).await?;
        let files = jobs(project, d, &r, run)?
            .into_iter()
            .map(|j| PlannedFile {
                path: j.rel,
                segment: j.segment.to_string(),
                delta: j.delta,
                rows: j.batches.iter().map(|b| b.num_rows() as u64).sum(),
            })
            .collect();
        out.push(PlannedExport {
            destination: d.name.clone(),
            url: d.location.display(),
            files,
            segments: r.segment_counts(),
        });
    }
    Ok(out)
}

/// Export every destination, adding each manifest to `published` once the
/// destination's `_SUCCESS` is written.
///
/// # Errors
/// [`Error::Export`] when a limit or a pack check fails (nothing is written);
/// [`Error::Storage`] when a write fails after its retries (that destination
/// has no `_SUCCESS` for this run); [`Error::Engine`] when building rows fails;
/// [`Error::Interrupted`] when the run's interrupt is raised (checked between
/// files and parts; the destination being written has no `_SUCCESS`).
pub async fn export(
    ctx: &SessionContext,
    project: &Project,
    run: &RunInfo<'_>,
    audiences: &Audiences<'_>,
    published: &mut Vec<ExportManifest>,
    mut progress: impl FnMut(&str),
) -> Result<()> {
    // Phase 1: every destination's rows, so limits fail before any write.
    let mut ready = Vec::new();
    for d in &project.destinations {
        progress(&format!("{}: preparing", d.name));
        ready.push(
            run.interrupt
                .race(prepare_destination(ctx, project, d, audiences))
                .await?,
        );
    }
    // Suppressions go beside the run record, never to the destination.
    write_suppressions(project, run.run_id, &ready).await?;
    for r in &ready {
        progress(&format!("{}: writing", r.d.name));
        published.push(publish_destination(project, r, run, &mut progress).await?);
    }
    Ok(())
}

async fn prepare_destination<'a>(
    ctx: &SessionContext,
    project: &Project,
    d: &'a Destination,
    audiences: &Audiences<'_>,
) -> Result<Ready<'a>> {
    let phone = project
        .namespaces
        .iter()
        .find(|n| n.normaliser == NormaliserKind::Phone);
    let mut segments = Vec::new();
    if d.kind == DestinationKind::ProfileSnapshot {
        let (members, policy) = snapshot_members(project, d, audiences)?;
        let (schema, batches) = audiences
            .profiles
            .get(&policy)
            .ok_or_else(|| Error::Internal(format!("no profiles for policy {policy}")))?;
        let all = profile_ids(batches)?;
        let chosen: Vec<&str> = match &members {
            Some(m) => m.iter().map(String::as_str).collect(),
            None => all.iter().map(String::as_str).collect(),
        };
        let kept: Vec<&str> = chosen
            .iter()
            .copied()
            .filter(|p| !audiences.oversized.contains(*p))
            .collect();
        let counts = Counts {
            members: chosen.len() as u64,
            excluded_oversized: (chosen.len() - kept.len()) as u64,
            ..Counts::default()
        };
        let joined = member_rows(ctx, d, &kept, schema.clone(), batches.clone()).await?;
        segments.push(rows::prepare(d, SNAPSHOT, phone, &joined, counts)?);
        return Ok(Ready { d, segments });
    }
    for seg in &d.segments {
        let m = audiences.membership(seg)?;
        let (schema, batches) = audiences
            .profiles
            .get(&m.policy)
            .ok_or_else(|| Error::Internal(format!("no profiles for policy {}", m.policy)))?;
        let members: Vec<&str> = m
            .members
            .iter()
            .filter(|p| !audiences.oversized.contains(*p))
            .collect();
        let counts = Counts {
            members: m.members.len() as u64,
            excluded_oversized: (m.members.len() - members.len()) as u64,
            ..Counts::default()
        };
        let joined = member_rows(ctx, d, &members, schema.clone(), batches.clone()).await?;
        let p = rows::prepare(d, seg, phone, &joined, counts)?;
        check_pack(d, &p)?;
        segments.push(p);
        if d.deltas {
            let before = audiences.baseline.and_then(|b| b.get(seg));
            let now: std::collections::BTreeSet<&str> = members.iter().copied().collect();
            let entered: Vec<&str> = members
                .iter()
                .copied()
                .filter(|p| before.is_none_or(|b| !b.contains(*p)))
                .collect();
            let exited: Vec<&str> = before
                .map(|b| {
                    b.iter()
                        .map(String::as_str)
                        .filter(|p| !now.contains(p) && !audiences.oversized.contains(*p))
                        .collect()
                })
                .unwrap_or_default();
            // Deltas follow the full file's rules, but the limit is the full file's.
            let mut unlimited = d.clone();
            unlimited.max_profiles = None;
            for (delta, ids) in [(Delta::Entered, entered), (Delta::Exited, exited)] {
                let joined = member_rows(ctx, d, &ids, schema.clone(), batches.clone()).await?;
                let counts = Counts {
                    members: ids.len() as u64,
                    ..Counts::default()
                };
                let mut p = rows::prepare(&unlimited, seg, phone, &joined, counts)?;
                p.delta = delta;
                // Suppressions are reported once, for the full file.
                p.suppressions.clear();
                segments.push(p);
            }
        }
    }
    Ok(Ready { d, segments })
}

/// The name a profile snapshot's files and counts go by (its `{segment}`).
pub const SNAPSHOT: &str = "profiles";

/// A snapshot's profiles: the members of its segments (`None`: every profile
/// of the class), and the merge policy whose profiles it reads.
fn snapshot_members(
    project: &Project,
    d: &Destination,
    audiences: &Audiences<'_>,
) -> Result<(Option<std::collections::BTreeSet<String>>, String)> {
    let mut policy = project.default_policy(d.class).map(|p| p.name.clone());
    if d.segments.is_empty() {
        let policy = policy.ok_or_else(|| Error::Export {
            destination: d.name.clone(),
            message: format!("no default merge policy for class `{}`", d.class.as_str()),
        })?;
        return Ok((None, policy));
    }
    let mut members = std::collections::BTreeSet::new();
    for seg in &d.segments {
        let m = audiences.membership(seg)?;
        match &policy {
            Some(p) if p != &m.policy && d.segments.first() != Some(seg) => {
                return Err(Error::Export {
                    destination: d.name.clone(),
                    message: format!(
                        "segments `{}` and `{seg}` read different merge policies; a snapshot reads one",
                        d.segments[0]
                    ),
                });
            }
            _ => policy = Some(m.policy.clone()),
        }
        members.extend(m.members.iter().map(str::to_string));
    }
    let policy = policy.ok_or_else(|| Error::Internal("snapshot without a policy".into()))?;
    Ok((Some(members), policy))
}

fn profile_ids(batches: &[RecordBatch]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for b in batches {
        let col = b
            .column_by_name("profile_id")
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .ok_or_else(|| Error::Internal("profiles lack profile_id".into()))?;
        out.extend(col.iter().flatten().map(str::to_string));
    }
    Ok(out)
}

/// A pack's checks on its rows before anything is published.
fn check_pack(d: &Destination, p: &rows::Prepared) -> Result<()> {
    let fail = |message: String| Error::Export {
        destination: d.name.clone(),
        message,
    };
    if let Some(cap) = d.kind.cap()
        && p.counts.rows > cap
    {
        return Err(fail(format!(
            "segment `{}` has {} rows, above the {} cap of {cap}",
            p.segment,
            p.counts.rows,
            d.kind.as_str()
        )));
    }
    match d.kind {
        DestinationKind::MicrosoftAdvertising => {
            for b in &p.batches {
                if !rows::all_sha256_hex(b.column(0).as_ref()) || b.column(0).null_count() > 0 {
                    return Err(fail(format!(
                        "segment `{}`: a customer list item is not a 64-character lower-case hex SHA-256",
                        p.segment
                    )));
                }
            }
        }
        DestinationKind::Dotdigital => {
            let names: Vec<&str> = p
                .schema
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect();
            if names.first() != Some(&"Email") || names.get(1) != Some(&"EmailType") {
                return Err(fail(format!(
                    "columns {names:?} do not start with Email, EmailType"
                )));
            }
            for b in &p.batches {
                let emails = b.column(0).as_any().downcast_ref::<StringArray>();
                if emails.is_none_or(|e| e.iter().any(|v| v.is_none_or(|v| !v.contains('@')))) {
                    return Err(fail(format!(
                        "segment `{}`: an `Email` value is not an e-mail address",
                        p.segment
                    )));
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// One file to write: where, and its rows.
struct Job<'a> {
    segment: &'a str,
    delta: Delta,
    part: u32,
    rel: String,
    batches: Vec<RecordBatch>,
    schema: datafusion::arrow::datatypes::SchemaRef,
}

async fn publish_destination(
    project: &Project,
    r: &Ready<'_>,
    run: &RunInfo<'_>,
    progress: &mut impl FnMut(&str),
) -> Result<ExportManifest> {
    let d = r.d;
    crate::run::pause_point(&format!("export:{}", d.name), run.interrupt).await?;
    let store = d.location.store()?;
    let run_dir = d.location.join(run.run_id);
    let success = run_dir.join("_SUCCESS");
    for stale in [&success, &run_dir.join("manifest.json")] {
        match store.delete(&stale.path()).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(Error::storage(stale.display())(e)),
        }
    }
    let jobs = jobs(project, d, r, run)?;
    let threads = project.engine.threads();
    let policy = publish::RetryPolicy {
        retries: project.engine.storage_retries,
        ..publish::RetryPolicy::default()
    };
    let crash_after: Option<usize> = std::env::var("AUDIENCE_CRASH_AFTER_FILES")
        .ok()
        .and_then(|v| v.parse().ok());
    let mut files = Vec::new();
    let mut retries = 0u64;
    for j in &jobs {
        run.interrupt.check()?;
        let list_id = d.customer_list_ids.get(j.segment).copied();
        let (dest, schema, batches) = (d.clone(), j.schema.clone(), j.batches.clone());
        let loc = d.location.join(&j.rel);
        let w = publish::write_file(
            store.as_ref(),
            &loc,
            Arc::new(move |sink: &mut encode::Sink<'_>| {
                encode::encode_into(&dest, list_id, &schema, &batches, threads, sink)
            }),
            policy,
            &mut retries,
            run.interrupt,
        )
        .await?;
        progress(&format!("{}: {} ({} rows)", d.name, j.rel, w.rows));
        files.push(ManifestFile {
            path: j.rel.clone(),
            segment: j.segment.to_string(),
            part: j.part,
            delta: j.delta,
            rows: w.rows,
            bytes: w.bytes,
            sha256: w.sha256,
        });
        if crash_after == Some(files.len()) {
            // Crash testing: die by SIGKILL mid-export.
            crate::run::kill_self();
        }
    }
    let manifest = ExportManifest {
        run_id: run.run_id.to_string(),
        as_of: run.as_of.to_rfc3339_opts(SecondsFormat::Secs, true),
        destination: d.name.clone(),
        kind: d.kind.as_str().into(),
        format: d.format_name().into(),
        compression: d.compression.as_str().into(),
        files,
        segments: r.segment_counts(),
        config_sha256: project.config_hash.clone(),
        sql_sha256: project.sql_hash.clone(),
        engine_version: crate::VERSION.to_string(),
        retries,
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Internal(e.to_string()))?;
    let mut n = 0;
    publish::upload(
        store.as_ref(),
        &run_dir.join("manifest.json"),
        &[Bytes::from(json)],
        policy,
        &mut n,
    )
    .await?;
    publish::upload(store.as_ref(), &success, &[Bytes::new()], policy, &mut n).await?;
    Ok(manifest)
}

/// The files of one destination: each segment's rows split by `rows_per_file`,
/// with rendered names (checked to stay inside the destination and to differ).
fn jobs<'a>(
    project: &Project,
    d: &Destination,
    r: &'a Ready<'_>,
    run: &RunInfo<'_>,
) -> Result<Vec<Job<'a>>> {
    let date = run.as_of.format("%Y%m%d").to_string();
    let time = run.as_of.format("%H%M%S").to_string();
    let as_of = run.as_of.format("%Y%m%dT%H%M%SZ").to_string();
    let mut out: Vec<Job<'a>> = Vec::new();
    for p in &r.segments {
        let name = project.segments().find(|m| m.id == p.segment).map_or_else(
            || p.segment.clone(),
            |m| crate::config::destination::safe_name(&m.name),
        );
        let parts = encode::split(&p.batches, d.rows_per_file);
        let several = parts.len() > 1;
        for (k, batches) in parts.into_iter().enumerate() {
            let part = if several {
                format!("-{:05}", k + 1)
            } else {
                String::new()
            };
            let full = crate::config::destination::render(
                &d.file_name,
                &crate::config::destination::TemplateValues {
                    destination: &d.name,
                    segment: &p.segment,
                    segment_name: &name,
                    run_id: run.run_id,
                    date: &date,
                    time: &time,
                    as_of: &as_of,
                    text: &d.file_text,
                    part: &part,
                    ext: d.extension(),
                },
            )
            .map_err(|m| Error::Export {
                destination: d.name.clone(),
                message: m,
            })?;
            let rel = delta_name(&full, p.delta, d.extension());
            if rel.ends_with("/_SUCCESS") || rel == "_SUCCESS" || rel.ends_with("manifest.json") {
                return Err(Error::Export {
                    destination: d.name.clone(),
                    message: format!(
                        "file name `{rel}` would overwrite the publish protocol's own files"
                    ),
                });
            }
            if let Some(dup) = out.iter().find(|j| j.rel == rel) {
                return Err(Error::Export {
                    destination: d.name.clone(),
                    message: format!(
                        "segments `{}` and `{}` both render to `{rel}`: add `{{segment}}` or `{{part}}` to `file_name`",
                        dup.segment, p.segment
                    ),
                });
            }
            out.push(Job {
                segment: &p.segment,
                delta: p.delta,
                part: k as u32 + 1,
                rel,
                batches,
                schema: p.schema.clone(),
            });
        }
    }
    Ok(out)
}

/// A delta file's name: `.entered`/`.exited` before the extension (or at the end).
fn delta_name(full: &str, delta: Delta, ext: &str) -> String {
    if delta == Delta::Full {
        return full.to_string();
    }
    match full.strip_suffix(&format!(".{ext}")) {
        Some(stem) => format!("{stem}.{}.{ext}", delta.as_str()),
        None => format!("{full}.{}", delta.as_str()),
    }
}

/// `runs/<run_id>/suppressions.parquet` in the state location: destination,
/// segment, profile id and reason of every profile left out for consent.
async fn write_suppressions(project: &Project, run_id: &str, ready: &[Ready<'_>]) -> Result<()> {
    let mut dest = Vec::new();
    let mut seg = Vec::new();
    let mut ids = Vec::new();
    let mut reasons = Vec::new();
    for r in ready {
        for p in &r.segments {
            for s in &p.suppressions {
                dest.push(r.d.name.as_str());
                seg.push(p.segment.as_str());
                ids.push(s.profile_id.as_str());
                reasons.push(s.reason.as_str());
            }
        }
    }
    if ready.iter().all(|r| r.d.consent.is_none()) {
        return Ok(());
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("destination", DataType::Utf8, false),
        Field::new("segment", DataType::Utf8, false),
        Field::new("profile_id", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(dest)),
            Arc::new(StringArray::from(seg)),
            Arc::new(StringArray::from(ids)),
            Arc::new(StringArray::from(reasons)),
        ],
    )
    .map_err(|e| Error::Internal(e.to_string()))?;
    let buf = crate::identity::store::parquet_bytes(&[batch], &schema)?;
    let loc = project
        .state
        .join(&format!("runs/{run_id}/suppressions.parquet"));
    let store = loc.store()?;
    put(store.as_ref(), &loc, buf).await
}

/// Profile rows of `members` with the columns `d` reads, sorted by `profile_id`.
async fn member_rows(
    ctx: &SessionContext,
    d: &Destination,
    members: &[&str],
    schema: Arc<Schema>,
    batches: Vec<RecordBatch>,
) -> Result<Vec<RecordBatch>> {
    let ms = Arc::new(Schema::new(vec![Field::new(
        "member_id",
        DataType::Utf8,
        false,
    )]));
    let mb = RecordBatch::try_new(
        ms.clone(),
        vec![Arc::new(StringArray::from_iter_values(members.iter()))],
    )
    .map_err(|e| Error::Internal(e.to_string()))?;
    let members = ctx
        .read_table(Arc::new(
            MemTable::try_new(ms, vec![vec![mb]]).map_err(Error::engine("export"))?,
        ))
        .map_err(Error::engine("export"))?;
    let profiles = ctx
        .read_table(Arc::new(
            MemTable::try_new(schema, vec![batches]).map_err(Error::engine("export"))?,
        ))
        .map_err(Error::engine("export"))?;
    let mut cols = d.source_columns();
    cols.insert("profile_id");
    let mut cols: Vec<datafusion::logical_expr::Expr> = cols
        .into_iter()
        .map(datafusion::logical_expr::ident)
        .collect();
    let mut df = profiles
        .join(
            members,
            datafusion::common::JoinType::LeftSemi,
            &["profile_id"],
            &["member_id"],
            None,
        )
        .map_err(Error::engine("export"))?;
    // Identity lists (snapshots): every value of the namespace, sorted.
    for (i, ns) in d.identity_lists().into_iter().enumerate() {
        let key = format!("__list_pid_{i}");
        let name = format!("identities.{ns}");
        let lists = ctx
            .sql(&format!(
                "SELECT profile_id AS {key}, array_agg(arrow_cast(value, 'Utf8') ORDER BY value) AS \"{name}\" FROM __identity_map WHERE class = '{}' AND namespace = {} GROUP BY profile_id",
                d.class.as_str(),
                crate::merge::string_literal(ns)
            ))
            .await
            .map_err(Error::engine("export"))?;
        df = df
            .join(
                lists,
                datafusion::common::JoinType::Left,
                &["profile_id"],
                &[key.as_str()],
                None,
            )
            .map_err(Error::engine("export"))?;
        cols.push(datafusion::logical_expr::ident(name));
    }
    let df = Ok(df)
        .and_then(|df: datafusion::dataframe::DataFrame| {
            df.sort(vec![
                datafusion::logical_expr::ident("profile_id").sort(true, false),
            ])
        })
        .and_then(|df| df.select(cols))
        .map_err(Error::engine("export"))?;
    df.collect().await.map_err(Error::engine("export"))
}
